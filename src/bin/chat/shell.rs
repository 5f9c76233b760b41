//! The shell every subcommand runs its session in: a thread for SIGINT/SIGTERM, a thread for
//! the session, and main waiting for whichever ends it first.

use std::convert::Infallible;
use std::io::{self, IsTerminal, Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::conn::Conn;
use crate::input::{read_line_limited, trim_line_end, LineRead};

/// Starts the signal thread, which sends `signal()` for every SIGINT or SIGTERM, and the
/// session thread (named `name`, `what` in an error), which runs `session` with the sender.
/// Returns what main waits on, or the exit status when a thread cannot start (the reason is
/// printed).
pub(crate) fn start<E: Send + 'static>(
    signal: impl Fn() -> E + Send + 'static,
    (name, what): (&str, &str),
    session: impl FnOnce(Sender<E>) + Send + 'static,
) -> Result<Receiver<E>, ExitCode> {
    let fail = |why: String| {
        eprintln!("chat: {why}");
        ExitCode::FAILURE
    };
    let (tx, rx) = mpsc::channel();
    // Installed before the connect so that Ctrl-C at any moment takes the same clean path
    // instead of the default kill.
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    let signal_tx = tx.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if signal_tx.send(signal()).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| fail(format!("cannot start the signal thread: {e}")))?;
    // The connect may block for long; doing it off the main thread keeps main free to react
    // to a signal meanwhile.
    thread::Builder::new()
        .name(name.into())
        .spawn(move || session(tx))
        .map_err(|e| fail(format!("cannot start the {what}: {e}")))?;
    Ok(rx)
}

/// Lets the session thread finish the line it is printing so that output does not stop
/// mid-line: waits at most `grace` for the event `done` recognises.
pub(crate) fn wait_for<E>(rx: &Receiver<E>, grace: Duration, done: impl Fn(&E) -> bool) {
    let deadline = Instant::now() + grace;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) if done(&event) => return,
            Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// What the session thread gets from standard input.
pub(crate) enum Stdin {
    /// A line typed, without its line end.
    Line(Vec<u8>),
    LineTooLong,
    End,
    Failed(String),
}

/// Reads standard input line by line, skipping lines over `max` bytes, and sends each as
/// `wrap` makes it, until its end, a read error or nobody listening.
pub(crate) fn read_lines<I>(tx: &Sender<I>, max: usize, wrap: impl Fn(Stdin) -> I) {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        let next = match read_line_limited(&mut input, &mut line, max) {
            Ok(LineRead::Line) => Stdin::Line(trim_line_end(&line).to_vec()),
            Ok(LineRead::TooLong) => Stdin::LineTooLong,
            Ok(LineRead::Eof) => Stdin::End,
            Err(e) => Stdin::Failed(format!("chat: cannot read standard input: {e}")),
        };
        let last = matches!(next, Stdin::End | Stdin::Failed(_));
        if tx.send(wrap(next)).is_err() || last {
            return;
        }
    }
}

/// What main hears from a subcommand's threads: the connection to close, the one event that
/// ends the session, and the session thread's last word. `J` is what a protocol hands main
/// once joined so that main can end the membership itself ([`Finish::joined_end`]); the
/// subcommands that need nothing of the kind leave it uninhabited.
pub(crate) enum Event<J = Infallible> {
    /// The connection is up; main needs it to close it whatever ends the session.
    Connected(Arc<Conn>),
    /// Joined: what main needs to end the membership if the session cannot.
    Joined(J),
    /// SIGINT or SIGTERM: the user asked to leave, so it is a normal end.
    Signal,
    /// The session is over with exit status 0: end of input, `/quit`, signed out, left.
    Ended,
    /// The server closed the connection; the text says so to the user (exit status 0).
    Closed(String),
    /// Anything that ends the session with exit status 1; the text is shown as is.
    Failed(String),
    /// The session thread has returned; nothing more will be printed.
    SessionDone,
}

impl<J> Event<J> {
    /// The server closed the connection, in the words every subcommand uses.
    pub(crate) fn closed_by_server() -> Self {
        Event::Closed("chat: connection closed by the server".into())
    }
}

/// Runs `session` on its own thread beside the signal thread, then [`finish`]es: the session
/// returns its end, and is done once that is sent.
pub(crate) fn run<J: Send + 'static>(
    session: impl FnOnce(&Sender<Event<J>>) -> Event<J> + Send + 'static,
    how: Finish<'_, J>,
) -> ExitCode {
    let started = start(
        || Event::Signal,
        ("session", "session thread"),
        move |tx| {
            let end = session(&tx);
            let _ = tx.send(end);
            let _ = tx.send(Event::SessionDone);
        },
    );
    match started {
        Ok(rx) => finish(&rx, how),
        Err(code) => code,
    }
}

/// What differs between the subcommands in how main ends a session.
pub(crate) struct Finish<'a, J> {
    /// How long the session thread may take to finish the line it prints after its end.
    pub grace: Duration,
    /// Set where the session itself must act on a signal (MATOU signs out): main passes the
    /// signal on and waits `grace` for the session's own end, instead of ending at once.
    pub forward_signal: Option<&'a dyn Fn()>,
    /// Ends a joined membership that the session did not end itself, given the outcome (OCM
    /// says goodbye); the connection is then left alone.
    pub joined_end: &'a dyn Fn(&J, &Event<J>),
}

impl<J> Finish<'_, J> {
    /// A session main ends by closing its connection.
    pub(crate) fn closing(grace: Duration) -> Self {
        Finish {
            grace,
            forward_signal: None,
            joined_end: &|_, _| {},
        }
    }
}

/// Waits for the event that ends the session, ends the membership or shuts the connection
/// down, gives the session thread its grace to finish its line, and reports. Shutdown rather
/// than drop: the other threads hold the socket too, and shutdown both sends the FIN now and
/// wakes a blocked read or write.
pub(crate) fn finish<J>(rx: &Receiver<Event<J>>, how: Finish<'_, J>) -> ExitCode {
    let mut stream = None;
    let mut joined = None;
    let mut signal_deadline: Option<Instant> = None;
    let outcome = loop {
        let event = match signal_deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        };
        match event {
            Ok(Event::Connected(connected)) => stream = Some(connected),
            Ok(Event::Joined(j)) => joined = Some(j),
            Ok(Event::Signal) if how.forward_signal.is_some() => {
                if let (None, Some(forward)) = (signal_deadline, how.forward_signal) {
                    // If the session is stuck (connecting, writing), leave without it.
                    forward();
                    signal_deadline = Some(Instant::now() + how.grace);
                }
            }
            Ok(event) => break event,
            Err(RecvTimeoutError::Timeout) => break Event::Ended,
            // Every sender is gone without a word: nothing sensible is left to do but stop.
            Err(RecvTimeoutError::Disconnected) => {
                break Event::Failed("chat: internal error: all worker threads ended".into())
            }
        }
    };
    let session_done = matches!(outcome, Event::SessionDone);
    if let Some(joined) = &joined {
        (how.joined_end)(joined, &outcome);
    } else if let Some(stream) = &stream {
        let _ = stream.shutdown(Shutdown::Both);
    }
    if !session_done && (joined.is_some() || stream.is_some()) {
        wait_for(rx, how.grace, |event| matches!(event, Event::SessionDone));
    }
    let _ = io::stdout().flush();
    if (signal_deadline.is_some() || matches!(outcome, Event::Signal)) && io::stderr().is_terminal()
    {
        // The terminal echoed `^C` without a newline; give the shell prompt its own line.
        eprintln!();
    }
    match outcome {
        Event::Closed(message) => {
            eprintln!("{message}");
            ExitCode::SUCCESS
        }
        Event::Failed(message) => failed(&message),
        Event::Signal
        | Event::Ended
        | Event::SessionDone
        | Event::Connected(_)
        | Event::Joined(_) => ExitCode::SUCCESS,
    }
}

/// A session that ended with exit status 1; `message` is shown as is.
pub(crate) fn failed(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

/// One read from the server into `pending` (through `buf`): `Ok(true)` to go on, `Ok(false)`
/// when the server closed the connection, or why it was lost, in words for the user.
pub(crate) fn read_more(
    stream: &Conn,
    buf: &mut [u8],
    pending: &mut BytesMut,
    addr: &str,
) -> Result<bool, String> {
    match (&*stream).read(buf) {
        Ok(0) => Ok(false),
        Ok(n) => {
            pending.extend_from_slice(&buf[..n]);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
        // The server dropping a connection with our bytes still unread shows as a reset: it is
        // the server closing all the same.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(format!("chat: connection to {addr} lost: {e}")),
    }
}
