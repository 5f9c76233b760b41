//! The shell every subcommand runs its session in: a thread for SIGINT/SIGTERM, a thread for
//! the session, and main waiting for whichever ends it first.

use std::io::{self, IsTerminal, Read};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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

/// Waits for the event that ends the session (the first `connection` does not take), then
/// shuts the connection it was handed down, if any, and gives the session thread `grace` to
/// finish its line (until `done`). Shutdown rather than drop: the other threads hold the socket
/// too, and shutdown both sends the FIN now and wakes a blocked read or write. `orphaned` is
/// the end when every sender is gone without a word.
pub(crate) fn await_end<E>(
    rx: &Receiver<E>,
    grace: Duration,
    connection: impl Fn(E) -> Result<Arc<TcpStream>, E>,
    done: impl Fn(&E) -> bool,
    orphaned: impl FnOnce(String) -> E,
) -> E {
    let mut stream = None;
    let outcome = loop {
        match rx.recv().map(&connection) {
            Ok(Ok(connected)) => stream = Some(connected),
            Ok(Err(event)) => break event,
            Err(_) => break orphaned("chat: internal error: all worker threads ended".into()),
        }
    };
    if let Some(stream) = &stream {
        let _ = stream.shutdown(Shutdown::Both);
        if !done(&outcome) {
            wait_for(rx, grace, done);
        }
    }
    outcome
}

/// A session the user ended with SIGINT or SIGTERM: exit status 0, and the shell prompt on a
/// line of its own (the terminal echoed `^C` without a newline).
pub(crate) fn signalled() -> ExitCode {
    if io::stderr().is_terminal() {
        eprintln!();
    }
    ExitCode::SUCCESS
}

/// A session that ended with exit status 1; `message` is shown as is.
pub(crate) fn failed(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

/// One read from the server into `pending` (through `buf`): `Ok(true)` to go on, `Ok(false)`
/// when the server closed the connection, or why it was lost, in words for the user.
pub(crate) fn read_more(
    stream: &TcpStream,
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
