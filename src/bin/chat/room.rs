//! The ROOM client (protocol notes: the ROOM section of docs/PROTOCOLS.md, seed 002).
//!
//! ROOM is an unframed byte stream, so the only structure the client can rely on is the one the
//! original client.py relied on: the server's `alias?` arrives alone, everything else is shown
//! one read per line, and every typed line goes out as one `<nick>: <line>` write.
//!
//! Threads rather than an event loop: a terminal client has exactly two blocking inputs (the
//! socket and stdin) and std cannot wait on both at once, so each gets a thread, and a third
//! turns signals into events. The main thread only waits for the first event that ends the
//! session, closes the connection and picks the exit status, which keeps every exit path in
//! one place.

use std::io::{self, IsTerminal, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::input::{display_addr, read_line_limited, trim_line_end, LineRead};

/// What the server sends, alone, when it wants the nick.
const ALIAS_REQUEST: &[u8] = b"alias?";

/// The same prompt as the original client, so users of both see the same thing.
const NICK_PROMPT: &str = "Escolha um nick para voce >>> ";

/// The server takes the first chunk it reads, at most 1024 bytes, as the alias; a longer nick
/// would be cut there and the rest relayed to the room as a message.
const MAX_NICK_BYTES: usize = 1024;

/// Generous for a chat line, and keeps a runaway paste or a binary piped into stdin from
/// growing memory without bound.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Large enough that one server write normally arrives as one read, hence as one printed line.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// After the session ends, how long the socket reader may take to finish printing the chunk it
/// holds. Bounded because it may be stuck writing to a stdout nobody reads.
const READER_GRACE: Duration = Duration::from_secs(1);

pub const LONG_ABOUT: &str = "Join the ROOM nickname chat room.\n\n\
    Connects to the server, answers its `alias?` request with the nick, then prints everything \
    the server sends (join and leave notices, other members' messages, and your own messages \
    echoed back), one received chunk per line. Each line typed on standard input is sent to the \
    room as `<nick>: <line>`; lines typed before the server has accepted the nick are held and \
    sent once it has. Lines longer than 65536 bytes are refused with a message on stderr.\n\n\
    Bytes that are not valid UTF-8 are shown as U+FFFD. When standard output is a terminal, \
    control characters in received text are also shown as U+FFFD, so another member cannot \
    send escape sequences to your terminal.\n\n\
    The session ends on end of input (Ctrl-D), Ctrl-C or SIGTERM (exit status 0), when the \
    server closes the connection (exit status 0, with a message on stderr), or on a connection \
    error (exit status 1).";

/// Arguments of `chat room`.
#[derive(Args, Debug)]
pub struct RoomArgs {
    /// Nickname shown to the room; if omitted, it is asked for on the terminal
    #[arg(long, value_parser = parse_nick)]
    nick: Option<String>,

    /// Server host name or IP address
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Server TCP port of the ROOM protocol
    #[arg(long, default_value_t = 55555, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
}

/// Rejects what the server could not use as an alias, before any connection is made.
fn parse_nick(nick: &str) -> Result<String, String> {
    if nick.is_empty() {
        return Err("the nick must not be empty".into());
    }
    // The server strips trailing CR/LF from the alias while our messages would keep them, so
    // the room would see two different names for one user.
    if nick.contains(['\r', '\n']) {
        return Err("the nick must not contain a line break".into());
    }
    if nick.len() > MAX_NICK_BYTES {
        return Err(format!(
            "the nick must be at most {MAX_NICK_BYTES} bytes long"
        ));
    }
    Ok(nick.to_owned())
}

/// Everything that can end the session, plus the one event that does not (`Connected`).
enum Event {
    /// The connection is up; main needs it to close it whatever ends the session.
    Connected(Arc<TcpStream>),
    /// SIGINT or SIGTERM: the user asked to leave, so it is a normal end.
    Signal,
    StdinEof,
    ServerClosed,
    /// Anything that ends the session with exit status 1; the text is shown as is.
    Failed(String),
    /// The socket reader has returned; nothing more will be printed.
    ReaderDone,
}

pub fn run(args: RoomArgs) -> ExitCode {
    let (tx, rx) = mpsc::channel();

    // Installed before the prompt and the connect so that Ctrl-C at any moment takes the same
    // clean path instead of the default kill.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("chat: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal_tx = tx.clone();
    let spawned = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if signal_tx.send(Event::Signal).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("chat: cannot start the signal thread: {e}");
        return ExitCode::FAILURE;
    }

    // The prompt and the connect may block for long; doing them off the main thread keeps main
    // free to react to a signal meanwhile.
    let session_tx = tx.clone();
    let spawned = thread::Builder::new()
        .name("stdin".into())
        .spawn(move || session(args, &session_tx));
    if let Err(e) = spawned {
        eprintln!("chat: cannot start the input thread: {e}");
        return ExitCode::FAILURE;
    }
    drop(tx);

    finish(&rx)
}

/// Waits for the event that ends the session, closes the connection and reports.
fn finish(rx: &Receiver<Event>) -> ExitCode {
    let mut stream = None;
    let outcome = loop {
        match rx.recv() {
            Ok(Event::Connected(s)) => stream = Some(s),
            Ok(event) => break event,
            // Every sender is gone without a word: nothing sensible is left to do but stop.
            Err(_) => break Event::Failed("chat: internal error: all worker threads ended".into()),
        }
    };

    if let Some(stream) = &stream {
        // Shutdown rather than drop: the reader thread holds the socket too, and shutdown both
        // sends the FIN now and wakes that thread's blocked read.
        let _ = stream.shutdown(Shutdown::Both);
        if !matches!(outcome, Event::ReaderDone) {
            wait_for_reader(rx);
        }
    }
    let _ = io::stdout().flush();

    match outcome {
        Event::Signal => {
            // The terminal echoed `^C` without a newline; give the shell prompt its own line.
            if io::stderr().is_terminal() {
                eprintln!();
            }
            ExitCode::SUCCESS
        }
        Event::StdinEof | Event::ReaderDone | Event::Connected(_) => ExitCode::SUCCESS,
        Event::ServerClosed => {
            eprintln!("chat: connection closed by the server");
            ExitCode::SUCCESS
        }
        Event::Failed(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Lets the reader finish the chunk it is printing so that output does not stop mid-line.
fn wait_for_reader(rx: &Receiver<Event>) {
    let deadline = Instant::now() + READER_GRACE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::ReaderDone) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The input thread: asks for the nick if needed, connects, starts the socket reader, then
/// sends typed lines until stdin ends.
fn session(args: RoomArgs, tx: &Sender<Event>) {
    let addr = display_addr(&args.host, args.port);
    let nick = match args.nick {
        Some(nick) => nick,
        None => match prompt_nick() {
            Ok(nick) => nick,
            Err(message) => {
                let _ = tx.send(Event::Failed(message));
                return;
            }
        },
    };

    let stream = match TcpStream::connect((args.host.as_str(), args.port)) {
        Ok(stream) => stream,
        Err(e) => {
            let _ = tx.send(Event::Failed(format!(
                "chat: cannot connect to {addr}: {e}"
            )));
            return;
        }
    };
    // Each typed line should reach the server as its own chunk, as the room shows one chunk
    // per line; Nagle would merge lines typed or pasted in quick succession. Failing to set it
    // only costs that nicety.
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    if tx.send(Event::Connected(Arc::clone(&stream))).is_err() {
        return;
    }

    let gate = Arc::new(Gate::default());
    let reader = {
        let (stream, gate, tx) = (Arc::clone(&stream), Arc::clone(&gate), tx.clone());
        let nick = nick.clone().into_bytes();
        let addr = addr.clone();
        thread::Builder::new()
            .name("socket".into())
            .spawn(move || read_server(&stream, &nick, &gate, &tx, &addr))
    };
    if let Err(e) = reader {
        let _ = tx.send(Event::Failed(format!(
            "chat: cannot start the socket thread: {e}"
        )));
        return;
    }

    send_lines(&stream, &nick, &gate, tx, &addr);
}

/// Asks on the terminal like the original client; the error is the message to show.
fn prompt_nick() -> Result<String, String> {
    let stdin = io::stdin();
    // Re-asking only makes sense to a person; from a pipe, a bad first line is an error rather
    // than a reason to eat the lines meant as messages.
    let interactive = stdin.is_terminal();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        eprint!("{NICK_PROMPT}");
        let _ = io::stderr().flush();
        let read = read_line_limited(&mut input, &mut line, MAX_LINE_BYTES)
            .map_err(|e| format!("chat: cannot read the nick: {e}"))?;
        if !interactive {
            // No terminal echoed the answer and its Enter, so end the prompt's line here.
            eprintln!();
        }
        let problem = match read {
            LineRead::Eof => return Err("chat: no nick given".into()),
            LineRead::TooLong => format!("the nick must be at most {MAX_NICK_BYTES} bytes long"),
            LineRead::Line => match String::from_utf8(trim_line_end(&line).to_vec()) {
                Ok(nick) => match parse_nick(&nick) {
                    Ok(nick) => return Ok(nick),
                    Err(problem) => problem,
                },
                Err(_) => "the nick must be valid UTF-8".into(),
            },
        };
        if !interactive {
            return Err(format!("chat: {problem}"));
        }
        eprintln!("chat: {problem}");
    }
}

/// Sends each stdin line as one `<nick>: <line>` write.
fn send_lines(stream: &TcpStream, nick: &str, gate: &Gate, tx: &Sender<Event>, addr: &str) {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        match read_line_limited(&mut input, &mut line, MAX_LINE_BYTES) {
            Ok(LineRead::Line) => {}
            Ok(LineRead::TooLong) => {
                eprintln!("chat: line longer than {MAX_LINE_BYTES} bytes not sent");
                continue;
            }
            Ok(LineRead::Eof) => {
                let _ = tx.send(Event::StdinEof);
                return;
            }
            Err(e) => {
                let _ = tx.send(Event::Failed(format!(
                    "chat: cannot read standard input: {e}"
                )));
                return;
            }
        }
        // Sending before the server has taken the nick would let the line merge into the alias
        // chunk; if the connection is gone, the reader has already said why.
        if !gate.wait_open() {
            return;
        }
        let message = compose_message(nick, trim_line_end(&line));
        if let Err(e) = (&*stream).write_all(&message) {
            let _ = tx.send(Event::Failed(format!(
                "chat: connection to {addr} lost: {e}"
            )));
            return;
        }
    }
}

/// The socket thread: its last act is always `ReaderDone`, which main waits for before exiting.
fn read_server(stream: &TcpStream, nick: &[u8], gate: &Gate, tx: &Sender<Event>, addr: &str) {
    let end = receive(stream, nick, gate, addr);
    gate.shut();
    let _ = tx.send(end);
    let _ = tx.send(Event::ReaderDone);
}

fn receive(stream: &TcpStream, nick: &[u8], gate: &Gate, addr: &str) -> Event {
    let stdout = io::stdout();
    let sanitize = stdout.is_terminal();
    let mut handshake = Handshake::default();
    let mut actions = Vec::new();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let (n, end) = match (&*stream).read(&mut buf) {
            Ok(0) => {
                handshake.on_eof(&mut actions);
                (0, Some(Event::ServerClosed))
            }
            Ok(n) => (n, None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                handshake.on_eof(&mut actions);
                (
                    0,
                    Some(Event::Failed(format!(
                        "chat: connection to {addr} lost: {e}"
                    ))),
                )
            }
        };
        handshake.on_data(&buf[..n], &mut actions);
        for action in actions.drain(..) {
            match action {
                Action::SendNick => {
                    if let Err(e) = (&*stream).write_all(nick) {
                        return Event::Failed(format!("chat: cannot send the nick to {addr}: {e}"));
                    }
                }
                Action::Joined => gate.open(),
                Action::Show(chunk) => {
                    let text = render_chunk(&chunk, sanitize);
                    let mut out = stdout.lock();
                    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                        return Event::Failed(format!(
                            "chat: cannot write to standard output: {e}"
                        ));
                    }
                }
            }
        }
        if let Some(end) = end {
            return end;
        }
    }
}

/// Holds typed lines back until the server has accepted the nick.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum GateState {
    #[default]
    Waiting,
    Open,
    Shut,
}

impl Gate {
    fn open(&self) {
        self.set(GateState::Open);
    }

    fn shut(&self) {
        self.set(GateState::Shut);
    }

    fn set(&self, new: GateState) {
        // A poisoned lock only means another thread panicked; the state itself is still valid.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = new;
        self.changed.notify_all();
    }

    /// True once lines may be sent, false if the connection ended first.
    fn wait_open(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while *state == GateState::Waiting {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *state == GateState::Open
    }
}

/// Where the conversation with the server stands.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connected, the server has not asked for the nick yet.
    #[default]
    AwaitingRequest,
    /// The nick went out; the server either asks again (empty alias) or says we joined.
    NickSent,
    /// In the room: everything received is a notice or a message.
    Member,
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    SendNick,
    /// Typed lines may flow from now on.
    Joined,
    Show(Vec<u8>),
}

/// Decides what each received chunk means. Kept free of I/O so it can be tested alone.
#[derive(Default)]
struct Handshake {
    phase: Phase,
    /// Bytes that so far match the start of `alias?`, kept until it is clear whether the whole
    /// request arrives (TCP may in principle split even six bytes).
    pending: Vec<u8>,
}

impl Handshake {
    fn on_data(&mut self, data: &[u8], actions: &mut Vec<Action>) {
        if data.is_empty() {
            return;
        }
        // Only the server asks for the alias, and only before we join. The original client
        // answered a member's message `alias?` too, leaking the nick as a chat line; a member
        // sees it as the text it is.
        if self.phase == Phase::Member {
            actions.push(Action::Show(data.to_vec()));
            return;
        }
        self.pending.extend_from_slice(data);
        if self.pending == ALIAS_REQUEST {
            self.pending.clear();
            self.phase = Phase::NickSent;
            actions.push(Action::SendNick);
            return;
        }
        if ALIAS_REQUEST.starts_with(&self.pending) {
            return;
        }
        // The server sends nothing but `alias?` before the alias arrives, so anything else
        // after the nick went out means we are in. Before that, it is shown (as the original
        // does) but does not release typed lines: they would become the alias.
        if self.phase == Phase::NickSent {
            self.phase = Phase::Member;
            actions.push(Action::Joined);
        }
        actions.push(Action::Show(std::mem::take(&mut self.pending)));
    }

    /// The stream ended: a partial request that never completed is still something the server
    /// said, so it is shown.
    fn on_eof(&mut self, actions: &mut Vec<Action>) {
        if !self.pending.is_empty() {
            actions.push(Action::Show(std::mem::take(&mut self.pending)));
        }
    }
}

/// One received chunk as one line of text, like the original's `print(msg)`.
fn render_chunk(chunk: &[u8], sanitize: bool) -> String {
    let text = String::from_utf8_lossy(chunk);
    let mut line: String = if sanitize {
        text.chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }
            })
            .collect()
    } else {
        text.into_owned()
    };
    if !line.ends_with('\n') {
        line.push('\n');
    }
    line
}

/// `<nick>: <line>`, always UTF-8 on the wire even if the terminal sent something else.
fn compose_message(nick: &str, line: &[u8]) -> Vec<u8> {
    format!("{nick}: {}", String::from_utf8_lossy(line)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(handshake: &mut Handshake, data: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        handshake.on_data(data, &mut actions);
        actions
    }

    #[test]
    fn alias_request_is_answered_until_joined() {
        let mut h = Handshake::default();
        assert_eq!(feed(&mut h, b"alias?"), [Action::SendNick]);
        assert_eq!(feed(&mut h, b"alias?"), [Action::SendNick]);
        assert_eq!(
            feed(&mut h, b"b'alice' esta conectado ao chat"),
            [
                Action::Joined,
                Action::Show(b"b'alice' esta conectado ao chat".to_vec())
            ]
        );
        assert_eq!(feed(&mut h, b"alias?"), [Action::Show(b"alias?".to_vec())]);
    }

    #[test]
    fn split_alias_request_is_reassembled() {
        let mut h = Handshake::default();
        assert_eq!(feed(&mut h, b"ali"), []);
        assert_eq!(feed(&mut h, b"as?"), [Action::SendNick]);
    }

    #[test]
    fn other_data_before_the_request_is_shown_but_does_not_join() {
        let mut h = Handshake::default();
        assert_eq!(feed(&mut h, b"al"), []);
        assert_eq!(feed(&mut h, b"lo"), [Action::Show(b"allo".to_vec())]);
        assert_eq!(h.phase, Phase::AwaitingRequest);
        let mut actions = Vec::new();
        feed(&mut h, b"ali");
        h.on_eof(&mut actions);
        assert_eq!(actions, [Action::Show(b"ali".to_vec())]);
    }

    #[test]
    fn chunks_render_as_lines() {
        assert_eq!(render_chunk(b"hi", false), "hi\n");
        assert_eq!(render_chunk(b"hi\n", false), "hi\n");
        assert_eq!(render_chunk(b"caf\xe9", false), "caf\u{fffd}\n");
        assert_eq!(render_chunk(b"a\x1b[2Jb\tc", true), "a\u{fffd}[2Jb\tc\n");
        assert_eq!(render_chunk(b"a\x1b[2Jb", false), "a\x1b[2Jb\n");
    }

    #[test]
    fn lines_are_trimmed_and_composed() {
        assert_eq!(trim_line_end(b"hello\r\r"), b"hello");
        assert_eq!(trim_line_end(b"\r"), b"");
        assert_eq!(compose_message("alice", b"hello"), b"alice: hello");
        assert_eq!(compose_message("alice", b""), b"alice: ");
        assert_eq!(
            compose_message("jos\u{e9}", b"\xff"),
            "jos\u{e9}: \u{fffd}".as_bytes()
        );
    }

    #[test]
    fn long_lines_are_skipped_whole() {
        let mut input = io::BufReader::with_capacity(4, &b"abc\nabcdefgh\nxy\nlast"[..]);
        let mut line = Vec::new();
        let mut next = || {
            let r = read_line_limited(&mut input, &mut line, 5).map_err(|e| e.to_string());
            (r, String::from_utf8_lossy(&line).into_owned())
        };
        assert_eq!(next(), (Ok(LineRead::Line), "abc".into()));
        assert_eq!(next().0, Ok(LineRead::TooLong));
        assert_eq!(next(), (Ok(LineRead::Line), "xy".into()));
        assert_eq!(next(), (Ok(LineRead::Line), "last".into()));
        assert_eq!(next().0, Ok(LineRead::Eof));
    }

    #[test]
    fn nicks_are_checked() {
        assert!(parse_nick("alice").is_ok());
        assert!(parse_nick("").is_err());
        assert!(parse_nick("a\nb").is_err());
        assert!(parse_nick(&"x".repeat(MAX_NICK_BYTES + 1)).is_err());
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(display_addr("::1", 1), "[::1]:1");
        assert_eq!(display_addr("localhost", 1), "localhost:1");
    }
}
