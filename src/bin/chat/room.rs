//! The ROOM client (protocol notes: the ROOM section of docs/PROTOCOLS.md, seed 002).
//!
//! ROOM is an unframed byte stream, so the only structure the client can rely on is the one the
//! original client.py relied on: the server's `alias?` arrives alone, everything else is shown
//! one read per line, and every typed line goes out as one `<nick>: <line>` write. The one
//! structure added on top: the server's own notices, which it writes back to back, are found
//! inside each read by their exact form and shown each on its own line, in English.
//!
//! Threads rather than an event loop: a terminal client has exactly two blocking inputs (the
//! socket and stdin) and std cannot wait on both at once, so each gets a thread, and a third
//! turns signals into events. The main thread only waits for the first event that ends the
//! session, closes the connection and picks the exit status, which keeps every exit path in
//! one place.

use std::io::{self, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use clap::Args;
use switchboard::protocol::room::codec::{bytes_repr, ALIAS_BYTES_MAX, GREETING};

use crate::conn::{self, Conn, TlsArgs};
use crate::hints::{self, Protocol};
use crate::input::{display_addr, read_line_limited, trim_line_end, LineRead};
use crate::shell;
use crate::text::render_bytes;

/// What the server sends, alone, when it wants the nick.
const ALIAS_REQUEST: &[u8] = b"alias?";

/// What follows an alias's repr in the server's join and leave notices.
const JOIN_SUFFIX: &[u8] = b" esta conectado ao chat";
const LEAVE_SUFFIX: &[u8] = b" acabou de sair do chat!";

/// The longest repr of an alias: `b''` around at most 1024 bytes of 4 characters (`\xhh`).
const REPR_BYTES_MAX: usize = 3 + 4 * ALIAS_BYTES_MAX;

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
    the server sends (other members' messages, your own messages echoed back, and the \
    server's notices), one line per received chunk (more if it holds line breaks). Each line \
    typed on standard input is sent \
    to the room as `<nick>: <line>`; lines typed before the server has accepted the nick are \
    held and sent once it has. Lines longer than 65536 bytes are refused with a message on \
    stderr.\n\n\
    ROOM has no framing, so the server's notices often arrive glued to each other or to a \
    message. The client finds them inside whatever arrives and shows each on its own line, in \
    English (the server's Portuguese is unchanged on the wire):\n  \
      * alice joined                    b'alice' esta conectado ao chat\n  \
      * alice left                      b'alice' acabou de sair do chat!\n  \
      * connected: you are in the room  Voce esta conectado ao servidor!\n\
    The name in a notice is the alias as sent, decoded from the server's b'...' form (so \
    b'jos\\xc3\\xa9' shows as josé). Any member can send the same bytes as a message, and it \
    shows the same way: the protocol cannot tell them apart.\n\n\
    With chatd's switchboard on (its default), users of MATOU, CCM and the OCM room `lobby` \
    are in this room too, and look exactly like members (`mia: hi`, `* mia joined`): the wire \
    does not say which protocol a name comes from.\n\n\
    Bytes that are not valid UTF-8 are shown as U+FFFD. When standard output is a terminal, \
    control characters (tabs excepted), bidirectional controls and zero-width characters in \
    received text are also shown as U+FFFD, so another member cannot send escape sequences \
    to your terminal or disguise text.\n\n\
    Wrong port: a server that sends another protocol's bytes, or does not ask for the alias \
    within 5 seconds, gets a note naming the protocol that seems to answer; a refused \
    connection suggests starting chatd.\n\n\
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

    /// Milliseconds without `alias?` before the wrong-port note (tests make it short)
    #[arg(long, default_value_t = 5000, hide = true)]
    silence_hint_ms: u64,

    #[command(flatten)]
    tls: TlsArgs,
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

/// The session thread ends with [`Event::Ended`] at the end of input; the socket reader's last
/// word is [`Event::SessionDone`].
type Event = shell::Event;

pub fn run(args: RoomArgs) -> ExitCode {
    // The prompt for a nick may block too: it runs on the session thread.
    match shell::start(
        || Event::Signal,
        ("stdin", "input thread"),
        move |tx| session(args, &tx),
    ) {
        Ok(rx) => shell::finish(&rx, shell::Finish::closing(READER_GRACE)),
        Err(code) => code,
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

    let connected = conn::connect(&args.host, args.port, &addr, &args.tls, |e| {
        hints::connect_failed(&addr, Protocol::Room, e)
    });
    let stream = match connected {
        Ok(stream) => stream,
        Err(message) => {
            let _ = tx.send(Event::Failed(message));
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
        let server = Server {
            addr: addr.clone(),
            port: args.port,
            silence_hint: Duration::from_millis(args.silence_hint_ms),
        };
        thread::Builder::new()
            .name("socket".into())
            .spawn(move || read_server(&stream, &nick, &gate, &tx, &server))
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
fn send_lines(stream: &Conn, nick: &str, gate: &Gate, tx: &Sender<Event>, addr: &str) {
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
                let _ = tx.send(Event::Ended);
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

/// Where the socket thread reads from, for its messages.
struct Server {
    addr: String,
    port: u16,
    /// How long `alias?` may take before the wrong-port note.
    silence_hint: Duration,
}

/// The socket thread: its last act is always `ReaderDone`, which main waits for before exiting.
fn read_server(stream: &Conn, nick: &[u8], gate: &Gate, tx: &Sender<Event>, server: &Server) {
    let end = receive(stream, nick, gate, server);
    gate.shut();
    let _ = tx.send(end);
    let _ = tx.send(Event::SessionDone);
}

fn receive(stream: &Conn, nick: &[u8], gate: &Gate, server: &Server) -> Event {
    let addr = &server.addr;
    let stdout = io::stdout();
    let sanitize = stdout.is_terminal();
    let mut handshake = Handshake::default();
    let mut actions = Vec::new();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    // A ROOM server asks for the alias at once; the first read waits only so long before
    // the wrong-port note, then for as long as it takes. A failure to set it loses the note.
    let mut waiting_hint = stream
        .set_read_timeout(Some(server.silence_hint.max(Duration::from_millis(1))))
        .is_ok();
    loop {
        if waiting_hint && handshake.phase != Phase::AwaitingRequest {
            waiting_hint = false;
            let _ = stream.set_read_timeout(None);
        }
        let (n, end) = match (&*stream).read(&mut buf) {
            Ok(0) => {
                handshake.on_eof(&mut actions);
                if handshake.phase != Phase::Member {
                    eprintln!(
                        "chat: the server closed the connection before {}: is port {} the ROOM \
                         port? (55555 by default)",
                        if handshake.phase == Phase::NickSent {
                            "accepting the nick"
                        } else {
                            "asking for the nick (`alias?`)"
                        },
                        server.port
                    );
                }
                (0, Some(Event::closed_by_server()))
            }
            Ok(n) => (n, None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                waiting_hint = false;
                let _ = stream.set_read_timeout(None);
                if handshake.phase == Phase::AwaitingRequest {
                    eprintln!(
                        "chat: {}",
                        hints::silent(server.port, Protocol::Room, "asks `alias?` at once")
                    );
                }
                continue;
            }
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
                Action::Foreign(data) => {
                    eprintln!(
                        "chat: {}",
                        hints::answered_like(server.port, Protocol::Room, &data)
                    );
                }
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
    /// The server's first bytes are not `alias?`: probably another protocol's server.
    Foreign(Vec<u8>),
}

/// Decides what each received chunk means. Kept free of I/O so it can be tested alone.
#[derive(Default)]
struct Handshake {
    phase: Phase,
    /// Bytes that so far match the start of `alias?`, kept until it is clear whether the whole
    /// request arrives (TCP may in principle split even six bytes).
    pending: Vec<u8>,
    /// Something came from the server before (or instead of) `alias?`.
    heard: bool,
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
            self.heard = true;
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
        // does) but does not release typed lines: they would become the alias; and it is
        // most likely another protocol's server, so a note says which.
        if self.phase == Phase::NickSent {
            self.phase = Phase::Member;
            actions.push(Action::Joined);
        } else if !self.heard {
            actions.push(Action::Foreign(self.pending.clone()));
        }
        self.heard = true;
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

/// A part of a received chunk: what the server or a member said.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    /// Anything that is not a notice: members' messages, as they came.
    Text(&'a [u8]),
    /// A join notice, with the alias decoded from its repr.
    Joined(Vec<u8>),
    Left(Vec<u8>),
    /// `Voce esta conectado ao servidor!`
    Greeting,
}

/// Cuts a chunk around the server's notices, wherever they are in it: the protocol has no
/// framing, so a notice may come glued to another or to a message, before or after it. A
/// notice cut in two by the reads is not recognised (its halves show as text): the server
/// writes each notice whole and a read takes up to 64 KiB, so this needs a notice to straddle
/// the kernel's buffer boundary, and waiting for a possible second half would hold back every
/// message that ends like the start of a notice.
fn pieces(chunk: &[u8]) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut text_from = 0;
    let mut at = 0;
    while at < chunk.len() {
        let rest = &chunk[at..];
        let found = if rest.starts_with(GREETING) {
            Some((Piece::Greeting, GREETING.len()))
        } else {
            notice_at(rest)
        };
        match found {
            Some((piece, len)) => {
                if text_from < at {
                    pieces.push(Piece::Text(&chunk[text_from..at]));
                }
                pieces.push(piece);
                at += len;
                text_from = at;
            }
            None => at += 1,
        }
    }
    if text_from < chunk.len() {
        pieces.push(Piece::Text(&chunk[text_from..]));
    }
    pieces
}

/// A join or leave notice at the start of `text`, and its length.
fn notice_at(text: &[u8]) -> Option<(Piece<'static>, usize)> {
    let (alias, repr_len) = parse_repr(text)?;
    let after = &text[repr_len..];
    let (piece, suffix) = if after.starts_with(JOIN_SUFFIX) {
        (Piece::Joined(alias), JOIN_SUFFIX)
    } else if after.starts_with(LEAVE_SUFFIX) {
        (Piece::Left(alias), LEAVE_SUFFIX)
    } else {
        return None;
    };
    Some((piece, repr_len + suffix.len()))
}

/// CPython's repr of a bytes object at the start of `text` (`b'alice'`): the bytes, and the
/// repr's length. Only the exact form the server writes is taken, checked by writing it again.
fn parse_repr(text: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (quote, body) = match text {
        [b'b', quote @ (b'\'' | b'"'), body @ ..] => (*quote, body),
        _ => return None,
    };
    let mut alias = Vec::new();
    let mut i = 0;
    loop {
        if 2 + i >= REPR_BYTES_MAX {
            return None;
        }
        match *body.get(i)? {
            byte if byte == quote => break,
            b'\\' => {
                let byte = match *body.get(i + 1)? {
                    b't' => b'\t',
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b'x' => {
                        let hex = std::str::from_utf8(body.get(i + 2..i + 4)?).ok()?;
                        i += 2;
                        u8::from_str_radix(hex, 16).ok()?
                    }
                    other => other,
                };
                alias.push(byte);
                i += 2;
            }
            byte @ 0x20..=0x7e => {
                alias.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    let len = 2 + i + 1;
    (bytes_repr(&alias) == text[..len]).then_some((alias, len))
}

/// One received chunk as lines of text: each notice on its own line, in English, and the rest
/// as it came (one line per line break in it), like the original's `print(msg)`.
fn render_chunk(chunk: &[u8], sanitize: bool) -> String {
    let mut out = String::new();
    for piece in pieces(chunk) {
        match piece {
            Piece::Text(text) => {
                for line in text.split(|&b| b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if !line.is_empty() {
                        out.push_str(&render_bytes(line, sanitize));
                        out.push('\n');
                    }
                }
            }
            // The client writes these lines itself: the alias is always made safe.
            Piece::Joined(alias) => {
                out.push_str(&format!("* {} joined\n", render_bytes(&alias, true)));
            }
            Piece::Left(alias) => {
                out.push_str(&format!("* {} left\n", render_bytes(&alias, true)));
            }
            Piece::Greeting => out.push_str("* connected: you are in the room\n"),
        }
    }
    out
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
        assert_eq!(
            feed(&mut h, b"lo"),
            [
                Action::Foreign(b"allo".to_vec()),
                Action::Show(b"allo".to_vec())
            ]
        );
        assert_eq!(h.phase, Phase::AwaitingRequest);
        // The note comes once.
        assert_eq!(feed(&mut h, b"x"), [Action::Show(b"x".to_vec())]);
        let mut actions = Vec::new();
        feed(&mut h, b"ali");
        h.on_eof(&mut actions);
        assert_eq!(actions, [Action::Show(b"ali".to_vec())]);
    }

    #[test]
    fn chunks_render_as_lines() {
        assert_eq!(render_chunk(b"hi", false), "hi\n");
        assert_eq!(render_chunk(b"hi\n", false), "hi\n");
        assert_eq!(render_chunk(b"hi\r\nyo\n\n", true), "hi\nyo\n");
        assert_eq!(render_chunk(b"caf\xe9", false), "caf\u{fffd}\n");
        assert_eq!(render_chunk(b"a\x1b[2Jb\tc", true), "a\u{fffd}[2Jb\tc\n");
        assert_eq!(render_chunk(b"a\x1b[2Jb", false), "a\x1b[2Jb\n");
        assert_eq!(
            render_chunk("a\u{202e}b\u{200b}".as_bytes(), true),
            "a\u{fffd}b\u{fffd}\n"
        );
    }

    /// The contract's vectors (room-notices.tsv): each alias, and its repr as the server
    /// writes it.
    const NOTICE_VECTORS: &[(&[u8], &str)] = &[
        (b"alice", "b'alice'"),
        (b"jos\xc3\xa9", "b'jos\\xc3\\xa9'"),
        (b"o'neil", "b\"o'neil\""),
        (b"say \"hi\"", "b'say \"hi\"'"),
        (b"both'\"", "b'both\\'\"'"),
        (b"back\\slash", "b'back\\\\slash'"),
        (b"tab\there", "b'tab\\there'"),
        (b"new\nline", "b'new\\nline'"),
        (b"cr\rx", "b'cr\\rx'"),
        (b"\x00\x7f\xff", "b'\\x00\\x7f\\xff'"),
        (b"", "b''"),
        (
            b"\xe5\xa4\xaa\xe9\x83\x8e",
            "b'\\xe5\\xa4\\xaa\\xe9\\x83\\x8e'",
        ),
    ];

    #[test]
    fn notices_of_every_vector_are_recognised() {
        for &(alias, repr) in NOTICE_VECTORS {
            let join = format!("{repr} esta conectado ao chat");
            assert_eq!(
                pieces(join.as_bytes()),
                [Piece::Joined(alias.to_vec())],
                "{join}"
            );
            let leave = format!("{repr} acabou de sair do chat!");
            assert_eq!(
                pieces(leave.as_bytes()),
                [Piece::Left(alias.to_vec())],
                "{leave}"
            );
        }
        assert_eq!(
            render_chunk(b"b'jos\\xc3\\xa9' esta conectado ao chat", false),
            "* jos\u{e9} joined\n"
        );
        // An alias with a line break or an escape cannot forge a line, even on a pipe.
        assert_eq!(
            render_chunk(b"b'new\\nline\\x1b' acabou de sair do chat!", false),
            "* new\u{fffd}line\u{fffd} left\n"
        );
    }

    #[test]
    fn glued_notices_and_messages_are_cut_apart() {
        // What a newcomer really receives: its join notice and the greeting in one read.
        assert_eq!(
            render_chunk(
                b"b'alice' esta conectado ao chatVoce esta conectado ao servidor!",
                true
            ),
            "* alice joined\n* connected: you are in the room\n"
        );
        assert_eq!(
            render_chunk(
                b"bob: hib'carol' esta conectado ao chatbob: welcome carolb'dave' acabou de \
                  sair do chat!",
                true
            ),
            "bob: hi\n* carol joined\nbob: welcome carol\n* dave left\n"
        );
        // Near misses stay text: no suffix, an unterminated repr, a repr the server would
        // not write (an escape it does not use, a quote it would not choose).
        for text in [
            &b"b'alice' is here"[..],
            b"b'alice esta conectado ao chat",
            b"b'\\q' esta conectado ao chat",
            b"b\"alice\" esta conectado ao chat",
            b"b'A' esta conectado ao cha",
        ] {
            assert_eq!(pieces(text), [Piece::Text(text)], "{}", show(text));
        }
    }

    fn show(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
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
