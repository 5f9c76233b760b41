//! The CCM client (protocol: the CCM section of docs/PROTOCOLS.md, seed 000).
//!
//! CCM carries messages with an HTTP-like text header. The first message of a connection
//! identifies the user (its content is the name); the server answers `Identity` with a token
//! that every later message carries in its `User` attribute. Messages name their recipient in
//! `Addressee` (`*` is everyone), and the server delivers them with a `Sender`. When the client
//! has been quiet for 5 s the server sends `Connect`, which must be answered within 3.6 s.
//!
//! Threads, as in the other clients, because std cannot wait on a socket and stdin at once: one
//! reads messages from the socket, one reads lines from stdin, one turns signals into events. A
//! fourth, the session thread, connects and then owns the conversation: every message it sends
//! and every line it prints, from one queue of inputs, in order, so that a line typed before end
//! of input is always sent before the `Disconnect`. The decisions themselves are in [`Session`],
//! which does no I/O and is tested alone. The main thread only waits for the event that ends the
//! session, closes the connection and picks the exit status, so every exit path is in one place
//! and a signal is handled even while the session thread is blocked.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Args;
use switchboard::protocol::ccm::codec::{
    decode, decode_text, encode, Message, MessageType, HEADER_BYTES_MAX,
};

use crate::conn::{self, Conn, TlsArgs};
use crate::hints::{self, Protocol};
use crate::input::display_addr;
use crate::shell::{self, Stdin};
use crate::text::render;

/// The encoding of everything this client sends, declared in `Message-Encoding`.
const ENCODING: &[u8] = b"utf-8";

/// Longest input line held in memory; anything longer is skipped whole. It keeps a runaway
/// paste or a binary piped into stdin from growing memory, and is far below the 1 MiB content
/// limit, so every accepted line fits in one message.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Longest addressee accepted from a line: with the rest of the header it must stay well
/// within the server's 8 KiB header limit, or the server would close the connection.
const ADDRESSEE_BYTES_MAX: usize = HEADER_BYTES_MAX / 4;

/// Lines typed before the server has answered the identification are held, then sent; beyond
/// this many they are refused with a note.
const HELD_LINES_MAX: usize = 1_000;

const READ_BUFFER_BYTES: usize = 16 * 1024;

/// After the session ends, how long the session thread may take to finish the line it is
/// printing. Bounded because it may be stuck writing to a stdout nobody reads.
const SESSION_GRACE: Duration = Duration::from_secs(1);

pub const LONG_ABOUT: &str = "Send and receive CCM messages.\n\n\
    Connects to the server and identifies as --name at once; the server answers with a token \
    that this client adds to every message (a note `identified as NAME` on stderr confirms it). \
    If the server refuses the name (it is taken, empty or too long), its reason is shown and \
    the client exits with status 1: run it again with another --name. Lines typed before the \
    server has answered are held and sent once it has.\n\n\
    Input, one line at a time on standard input:\n  \
      @bob hello there   send `hello there` to bob\n  \
      @* hi all          send `hi all` to everyone else who is connected\n  \
      /quit              leave (end of input, Ctrl-D, does the same)\n\
    Every message names its recipient: a line that does not start with `@NAME ` is refused \
    with a message on stderr. Empty lines are ignored. Messages are sent as UTF-8.\n\n\
    Output, on standard output:\n  \
      carol: hi                a Text message from carol to you\n  \
      carol (to all): hi       a Text message from carol to everyone\n  \
      carol sent Raw (12 bytes)\n      \
        a Raw, Audio or Streaming message, which this client does not play\n\
    and on standard error:\n  \
      chat: error unknown-addressee: no user has that name\n      \
        an Error answer from the server, with its reason and sentence\n\
    Text is decoded with its Message-Encoding (utf-8, us-ascii, utf-16, iso-8859-1, ...). \
    When standard output is a terminal, control characters (tabs excepted), bidirectional \
    controls and zero-width characters in received text are shown as U+FFFD, so nobody can \
    send escape sequences to your terminal or disguise text.\n\n\
    With chatd's switchboard on (its default), ROOM members, MATOU users and members of the OCM \
    room `lobby` write to everyone too (`rui (to all): hi`), and BIN24 users can be written to by \
    name (`@bob hi`) and write to you (`bob: hi`); the wire does not say which protocol a \
    name comes from. Their comings and goings are not sent to CCM.\n\n\
    The server checks that the client is alive with a `Connect` message after 5 seconds of \
    silence; this client answers it at once, without showing anything.\n\n\
    Wrong port: another protocol's bytes, or no answer to the name within 5 seconds, get a \
    note naming the protocol that seems to answer; a refused connection suggests starting \
    chatd.\n\n\
    The session ends on end of input or /quit (a `Disconnect` is sent first), Ctrl-C or \
    SIGTERM (exit status 0), when the server closes the connection (exit status 0, with a \
    message on stderr), or on a connection error, a refused name or a malformed message from \
    the server (exit status 1).";

/// Arguments of `chat ccm`.
#[derive(Args, Debug)]
pub struct CcmArgs {
    /// Your user name: not empty, no spaces or control characters, not `*`
    #[arg(long, value_parser = parse_user_name)]
    name: String,

    /// Server host name or IP address
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Server TCP port of the CCM protocol
    #[arg(long, default_value_t = 5454, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,

    /// Milliseconds without an answer to the identification before the wrong-port note
    /// (tests make it short)
    #[arg(long, default_value_t = 5000, hide = true)]
    silence_hint_ms: u64,

    #[command(flatten)]
    tls: TlsArgs,
}

/// Refuses, before any connection is made, a name nobody could address with `@NAME `.
fn parse_user_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the name must not be empty".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the name must not contain spaces or control characters".into());
    }
    if name == "*" {
        return Err("the name `*` means everyone and cannot be a user's".into());
    }
    Ok(name.to_string())
}

type Event = shell::Event;

/// What the session thread waits for.
enum Input {
    /// Standard input: a line typed, or its end.
    Stdin(Stdin),
    Message(Message),
    /// The server closed the connection (or it was shut down from our side).
    Closed,
    /// Reading failed or the server sent a malformed message; the text is shown as is.
    ReadFailed(String),
}

pub fn run(args: CcmArgs) -> ExitCode {
    shell::run(
        move |tx| session(&args, tx),
        shell::Finish::closing(SESSION_GRACE),
    )
}

/// The session thread: connects, identifies, starts the socket and stdin readers, then handles
/// their inputs until one ends the session. Returns that end.
fn session(args: &CcmArgs, tx: &Sender<Event>) -> Event {
    let addr = display_addr(&args.host, args.port);
    let connected = conn::connect(&args.host, args.port, &addr, &args.tls, |e| {
        hints::connect_failed(&addr, Protocol::Ccm, e)
    });
    let stream = match connected {
        Ok(stream) => stream,
        Err(message) => return Event::Failed(message),
    };
    // Messages are small and each should leave at once: a keepalive answer is due within the
    // server's 3.6 s. Failing to set it only costs latency.
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    if tx.send(Event::Connected(Arc::clone(&stream))).is_err() {
        return Event::SessionDone;
    }

    // Sent before anything else: the server takes the connection's first message as the name.
    if let Err(e) = (&*stream).write_all(&identification(&args.name)) {
        return Event::Failed(format!("chat: cannot identify at {addr}: {e}"));
    }

    let (input_tx, input_rx) = mpsc::channel();
    let reader = {
        let (stream, input_tx, addr) = (Arc::clone(&stream), input_tx.clone(), addr.clone());
        let port = args.port;
        thread::Builder::new()
            .name("socket".into())
            .spawn(move || read_messages(&stream, &input_tx, &addr, port))
    };
    if let Err(e) = reader {
        return Event::Failed(format!("chat: cannot start the socket thread: {e}"));
    }
    let lines = thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_lines(&input_tx));
    if let Err(e) = lines {
        return Event::Failed(format!("chat: cannot start the input thread: {e}"));
    }

    let mut session = Session::new(args.name.clone(), io::stdout().is_terminal());
    let hint = Hint {
        port: args.port,
        at: Instant::now() + Duration::from_millis(args.silence_hint_ms),
    };
    converse(&stream, &mut session, &input_rx, &addr, hint)
}

/// When to say that the server is silent where a CCM server answers at once.
struct Hint {
    port: u16,
    at: Instant,
}

/// The first message of the connection: `NotDefined`, as the original client sends it, with
/// the name as its content.
fn identification(name: &str) -> Bytes {
    encode(
        MessageType::NotDefined.as_str(),
        &[("Message-Encoding", ENCODING)],
        name.as_bytes(),
    )
}

/// The session thread's loop: one input at a time, in arrival order.
fn converse(
    stream: &Conn,
    session: &mut Session,
    inputs: &Receiver<Input>,
    addr: &str,
    hint: Hint,
) -> Event {
    let stdout = io::stdout();
    let mut actions = Vec::new();
    let mut hint = Some(hint);
    loop {
        let received = match &hint {
            Some(due) => inputs.recv_timeout(due.at.saturating_duration_since(Instant::now())),
            None => inputs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let input = match received {
            Ok(input) => input,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(due) = hint.take() {
                    if session.identifying() {
                        eprintln!(
                            "chat: {}",
                            hints::silent(due.port, Protocol::Ccm, "answers the name at once")
                        );
                    }
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Event::Failed("chat: internal error: the input threads ended".into())
            }
        };
        if hint.is_some() && !session.identifying() {
            hint = None;
        }
        match input {
            Input::Stdin(Stdin::Line(line)) => session.on_line(&line, &mut actions),
            Input::Stdin(Stdin::LineTooLong) => session.on_line_too_long(&mut actions),
            Input::Stdin(Stdin::End) => session.on_input_end(&mut actions),
            Input::Message(message) => session.on_message(&message, &mut actions),
            Input::Stdin(Stdin::Failed(message)) | Input::ReadFailed(message) => {
                return Event::Failed(message)
            }
            Input::Closed => {
                if session.identifying() {
                    eprintln!(
                        "chat: the server closed the connection before answering the name: is \
                         {addr} the CCM port? (5454 by default)"
                    );
                }
                return Event::closed_by_server();
            }
        }
        for action in actions.drain(..) {
            match action {
                Action::Send(message) => {
                    if let Err(e) = (&*stream).write_all(&message) {
                        return Event::Failed(format!("chat: connection to {addr} lost: {e}"));
                    }
                }
                Action::Show(line) => {
                    let mut out = stdout.lock();
                    if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
                        return Event::Failed(format!(
                            "chat: cannot write to standard output: {e}"
                        ));
                    }
                }
                Action::Note(note) => eprintln!("chat: {note}"),
                Action::Quit => return Event::Ended,
                Action::ServerLeft => return Event::closed_by_server(),
                Action::Fail(problem) => return Event::Failed(format!("chat: {problem}")),
            }
        }
    }
}

/// The socket thread: cuts messages from the stream; its last input is always an end.
fn read_messages(stream: &Conn, tx: &Sender<Input>, addr: &str, port: u16) {
    let end = receive(stream, tx, addr, port);
    let _ = tx.send(end);
}

/// The server always writes `Content-Length`, which frames its messages whatever the reads
/// look like. Without it, the contract's rule applies: one read burst is one message, so the
/// end of each read counts as the end of a burst.
fn receive(stream: &Conn, tx: &Sender<Input>, addr: &str, port: u16) -> Input {
    let mut pending = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut decoded_any = false;
    loop {
        // A CCM server's every message starts with `CCM\`: anything else from the start is
        // most likely another protocol's server (a ROOM server's `alias?` would otherwise wait
        // for a header end that never comes).
        if !decoded_any && pending.len() >= 4 && !pending[..4].eq_ignore_ascii_case(b"CCM\\") {
            return Input::ReadFailed(format!(
                "chat: the server does not speak CCM\nchat: {}",
                hints::answered_like(port, Protocol::Ccm, &pending)
            ));
        }
        loop {
            match decode(&mut pending, true) {
                Ok(Some(message)) => {
                    decoded_any = true;
                    if tx.send(Input::Message(message)).is_err() {
                        // The session is over; nobody listens.
                        return Input::Closed;
                    }
                }
                Ok(None) => break,
                // Framing is lost: nothing after this can be trusted.
                Err(e) => {
                    return Input::ReadFailed(format!(
                        "chat: malformed message from the server: {e}"
                    ))
                }
            }
        }
        match shell::read_more(stream, &mut buf, &mut pending, addr) {
            Ok(true) => {}
            Ok(false) => return Input::Closed,
            Err(why) => return Input::ReadFailed(why),
        }
    }
}

/// The stdin thread: one input per line, then the end of input.
fn read_lines(tx: &Sender<Input>) {
    shell::read_lines(tx, MAX_LINE_BYTES, Input::Stdin);
}

/// What the session asks the I/O around it to do, in order.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// A whole message for the server.
    Send(Bytes),
    /// A line for stdout, with its newline.
    Show(String),
    /// A line for stderr, without the `chat: ` prefix and newline.
    Note(String),
    /// The session is over (the `Disconnect` was sent just before): exit status 0.
    Quit,
    /// The server said `Disconnect`: as if it had closed the connection.
    ServerLeft,
    /// The session ends with exit status 1; the text is shown after `chat: `.
    Fail(String),
}

#[derive(Debug)]
enum State {
    /// The identification is out and unanswered.
    Identifying {
        /// Lines typed meanwhile, sent once the token is known.
        held: Vec<Vec<u8>>,
        /// Input ended meanwhile: leave once the held lines are sent.
        input_ended: bool,
    },
    Identified {
        token: Bytes,
    },
}

/// The conversation, without I/O: lines and messages in, actions out.
struct Session {
    name: String,
    /// Replace control characters in received text (stdout is a terminal).
    sanitize: bool,
    state: State,
}

impl Session {
    fn new(name: String, sanitize: bool) -> Self {
        Session {
            name,
            sanitize,
            state: State::Identifying {
                held: Vec::new(),
                input_ended: false,
            },
        }
    }

    /// Whether the server has yet to answer the identification.
    fn identifying(&self) -> bool {
        matches!(self.state, State::Identifying { .. })
    }

    /// One typed line, without its line end.
    fn on_line(&mut self, line: &[u8], out: &mut Vec<Action>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let token = match &mut self.state {
            State::Identified { token } => token.clone(),
            State::Identifying { held, .. } if held.len() < HELD_LINES_MAX => {
                held.push(line.to_vec());
                return;
            }
            State::Identifying { .. } => {
                out.push(Action::Note(format!(
                    "line not sent: {HELD_LINES_MAX} lines already wait for the server to \
                     answer the identification"
                )));
                return;
            }
        };
        if line.starts_with(b"/") {
            self.on_command(line, out);
            return;
        }
        let Some((to, text)) = addressed(line) else {
            out.push(Action::Note(
                "line not sent: start it with the recipient, as in `@bob hello` or `@* hello` \
                 for everyone"
                    .into(),
            ));
            return;
        };
        if to.len() > ADDRESSEE_BYTES_MAX {
            out.push(Action::Note(format!(
                "line not sent: a user name is at most {ADDRESSEE_BYTES_MAX} bytes"
            )));
            return;
        }
        // Declared UTF-8, so sent as UTF-8: bytes that are not become U+FFFD here rather than
        // garble the recipient's decoding.
        let text = String::from_utf8_lossy(text);
        out.push(Action::Send(encode(
            MessageType::Text.as_str(),
            &[
                ("Addressee", to),
                ("User", &token),
                ("Message-Encoding", ENCODING),
            ],
            text.as_bytes(),
        )));
    }

    fn on_command(&mut self, line: &[u8], out: &mut Vec<Action>) {
        let command = line.trim_ascii_end();
        if command == b"/quit" {
            self.leave(out);
        } else {
            out.push(Action::Note(format!(
                "unknown command {}: the only command is `/quit` (a message starts with \
                 `@NAME `)",
                render(&String::from_utf8_lossy(command), true)
            )));
        }
    }

    fn on_line_too_long(&mut self, out: &mut Vec<Action>) {
        out.push(Action::Note(format!(
            "line longer than {MAX_LINE_BYTES} bytes not sent"
        )));
    }

    /// End of input: leave now, or once identified so that the held lines go out first.
    fn on_input_end(&mut self, out: &mut Vec<Action>) {
        match &mut self.state {
            State::Identifying { input_ended, .. } => *input_ended = true,
            State::Identified { .. } => self.leave(out),
        }
    }

    fn leave(&mut self, out: &mut Vec<Action>) {
        out.push(Action::Send(encode(
            MessageType::Disconnect.as_str(),
            &[],
            b"",
        )));
        out.push(Action::Quit);
    }

    /// One message from the server.
    fn on_message(&mut self, message: &Message, out: &mut Vec<Action>) {
        match message.message_type() {
            Some(MessageType::Identity) => self.on_identity(message, out),
            Some(MessageType::Error) => {
                out.push(Action::Note(error_line(message)));
                if matches!(self.state, State::Identifying { .. }) {
                    out.push(Action::Fail(format!(
                        "the server refused the name {}; run again with another --name",
                        self.name
                    )));
                }
            }
            // The keepalive: answered at once and silently.
            Some(MessageType::Connect) => out.push(Action::Send(encode(
                MessageType::Connect.as_str(),
                &[],
                b"",
            ))),
            Some(MessageType::Text) => {
                let encoding = message.attribute("Message-Encoding").map(|v| &v[..]);
                let text = decode_text(&message.content, encoding)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&message.content).into_owned());
                let line = format!(
                    "{}{}: {}",
                    sender(message),
                    if to_all(message) { " (to all)" } else { "" },
                    text
                );
                out.push(shown(render(&line, self.sanitize)));
            }
            Some(kind @ (MessageType::Raw | MessageType::Audio | MessageType::Streaming)) => {
                let line = format!(
                    "{}{} sent {kind} ({} bytes)",
                    sender(message),
                    if to_all(message) { " (to all)" } else { "" },
                    message.content.len()
                );
                out.push(shown(render(&line, self.sanitize)));
            }
            Some(MessageType::Disconnect) => out.push(Action::ServerLeft),
            Some(kind @ (MessageType::NotDefined | MessageType::ConnectVoice)) => {
                out.push(Action::Note(format!(
                    "ignored a {kind} message from the server"
                )));
            }
            None => out.push(Action::Note(format!(
                "ignored a message of unknown type {} from the server",
                render(&String::from_utf8_lossy(&message.kind), true)
            ))),
        }
    }

    fn on_identity(&mut self, message: &Message, out: &mut Vec<Action>) {
        let State::Identifying { held, input_ended } = &mut self.state else {
            out.push(Action::Note(
                "ignored a second Identity answer from the server".into(),
            ));
            return;
        };
        let Some(token) = message.attribute("User").filter(|t| !t.is_empty()) else {
            out.push(Action::Fail(
                "malformed message from the server: Identity without a User token".into(),
            ));
            return;
        };
        let held = std::mem::take(held);
        let input_ended = *input_ended;
        self.state = State::Identified {
            token: token.clone(),
        };
        out.push(Action::Note(format!("identified as {}", self.name)));
        for line in held {
            self.on_line(&line, out);
            if out.last() == Some(&Action::Quit) {
                return;
            }
        }
        if input_ended {
            self.leave(out);
        }
    }
}

/// The `Sender` of a delivered message, for one line of output.
fn sender(message: &Message) -> String {
    match message.attribute("Sender") {
        Some(name) => String::from_utf8_lossy(name).into_owned(),
        None => "(unknown sender)".into(),
    }
}

fn to_all(message: &Message) -> bool {
    message
        .attribute("Addressee")
        .is_some_and(|to| &to[..] == b"*")
}

/// `error <reason>: <sentence>` for stderr, control characters always replaced.
fn error_line(message: &Message) -> String {
    let reason = message
        .attribute("Reason")
        .map_or_else(|| "(no reason)".into(), |r| String::from_utf8_lossy(r));
    let encoding = message.attribute("Message-Encoding").map(|v| &v[..]);
    let sentence = decode_text(&message.content, encoding)
        .unwrap_or_else(|_| String::from_utf8_lossy(&message.content).into_owned());
    render(&format!("error {reason}: {}", sentence.trim()), true)
}

/// `@bob text` → (bob, text); `@* text` → (*, text). The name runs to the first space, which
/// must be there: `@bob` alone is not a message.
fn addressed(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = line.strip_prefix(b"@")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let (to, text) = (&rest[..space], &rest[space + 1..]);
    if to.is_empty() || to.iter().any(|&b| b.is_ascii_control()) {
        return None;
    }
    Some((to, text))
}

/// A line for stdout.
fn shown(mut line: String) -> Action {
    line.push('\n');
    Action::Show(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{read_line_limited, trim_line_end, LineRead};

    const TOKEN: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn message(bytes: &[u8]) -> Message {
        let mut buf = BytesMut::from(bytes);
        let message = decode(&mut buf, true).unwrap().unwrap();
        assert!(buf.is_empty(), "one message: {bytes:?}");
        message
    }

    fn receive(session: &mut Session, bytes: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        session.on_message(&message(bytes), &mut out);
        out
    }

    fn line(session: &mut Session, text: &str) -> Vec<Action> {
        let mut out = Vec::new();
        session.on_line(text.as_bytes(), &mut out);
        out
    }

    fn identity() -> Bytes {
        encode("Identity", &[("User", TOKEN)], b"")
    }

    fn identified() -> Session {
        let mut s = Session::new("alice".into(), true);
        receive(&mut s, &identity());
        s
    }

    fn text_to(to: &str, text: &str) -> Action {
        Action::Send(Bytes::from(format!(
            "CCM\\1.0 Text\nAddressee: {to}\nUser: {}\nMessage-Encoding: utf-8\n\
             Content-Length: {}\n\n{text}",
            String::from_utf8_lossy(TOKEN),
            text.len()
        )))
    }

    fn disconnect() -> Action {
        Action::Send(Bytes::from_static(
            b"CCM\\1.0 Disconnect\nContent-Length: 0\n\n",
        ))
    }

    fn show(text: &str) -> Action {
        Action::Show(format!("{text}\n"))
    }

    #[test]
    fn identification_is_not_defined_with_the_name_as_content() {
        assert_eq!(
            &identification("alice")[..],
            b"CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: 5\n\nalice"
        );
    }

    #[test]
    fn addressed_lines_become_text_with_the_token() {
        let mut s = identified();
        assert_eq!(
            line(&mut s, "@bob hello there"),
            [text_to("bob", "hello there")]
        );
        assert_eq!(line(&mut s, "@* hi"), [text_to("*", "hi")]);
        assert_eq!(line(&mut s, "@bob "), [text_to("bob", "")]);
        assert_eq!(line(&mut s, "@bob  two"), [text_to("bob", " two")]);
        assert_eq!(line(&mut s, "   "), []);
        for refused in ["hello", "@bob", "@ bob hi", "bob: hi", "/who"] {
            assert!(
                matches!(&line(&mut s, refused)[..], [Action::Note(_)]),
                "{refused}"
            );
        }
        assert_eq!(line(&mut s, "/quit"), [disconnect(), Action::Quit]);
    }

    #[test]
    fn lines_before_the_identity_are_held_then_sent() {
        let mut s = Session::new("alice".into(), true);
        assert_eq!(line(&mut s, "@bob one"), []);
        assert_eq!(line(&mut s, "nope"), []);
        let mut out = Vec::new();
        s.on_input_end(&mut out);
        assert_eq!(out, []);
        assert_eq!(
            receive(&mut s, &identity()),
            [
                Action::Note("identified as alice".into()),
                text_to("bob", "one"),
                Action::Note(
                    "line not sent: start it with the recipient, as in `@bob hello` or `@* \
                     hello` for everyone"
                        .into()
                ),
                disconnect(),
                Action::Quit,
            ]
        );
    }

    #[test]
    fn quit_among_held_lines_stops_there() {
        let mut s = Session::new("alice".into(), true);
        for text in ["@bob one", "/quit", "@bob two"] {
            line(&mut s, text);
        }
        let out = receive(&mut s, &identity());
        assert_eq!(
            out[1..],
            [text_to("bob", "one"), disconnect(), Action::Quit]
        );
    }

    #[test]
    fn an_error_to_the_identification_fails() {
        let mut s = Session::new("alice".into(), true);
        let error = encode(
            "Error",
            &[("Reason", b"name-taken")],
            b"that name is in use",
        );
        let out = receive(&mut s, &error);
        assert_eq!(
            out[0],
            Action::Note("error name-taken: that name is in use".into())
        );
        assert!(matches!(&out[1], Action::Fail(m) if m.contains("another --name")));
        assert_eq!(out.len(), 2);

        // Once identified, an error is only shown.
        let mut s = identified();
        let error = encode("Error", &[("Reason", b"unknown-addressee")], b"no\x1b user");
        assert_eq!(
            receive(&mut s, &error),
            [Action::Note(
                "error unknown-addressee: no\u{fffd} user".into()
            )]
        );
    }

    #[test]
    fn identity_without_a_token_fails() {
        let mut s = Session::new("alice".into(), true);
        let out = receive(&mut s, &encode("Identity", &[], b""));
        assert!(matches!(&out[..], [Action::Fail(m)] if m.contains("User")));
    }

    #[test]
    fn keepalive_is_answered_silently() {
        let mut s = identified();
        assert_eq!(
            receive(&mut s, b"CCM\\1.0 Connect\nContent-Length: 0\n\n"),
            [Action::Send(Bytes::from_static(
                b"CCM\\1.0 Connect\nContent-Length: 0\n\n"
            ))]
        );
    }

    #[test]
    fn deliveries_are_shown() {
        let mut s = identified();
        let text = |to: &str, encoding: &str, content: &[u8]| {
            encode(
                "Text",
                &[
                    ("Sender", b"carol"),
                    ("Addressee", to.as_bytes()),
                    ("Message-Encoding", encoding.as_bytes()),
                ],
                content,
            )
        };
        assert_eq!(
            receive(&mut s, &text("alice", "utf-8", "héllo\x1b[2J".as_bytes())),
            [show("carol: héllo\u{fffd}[2J")]
        );
        assert_eq!(
            receive(
                &mut s,
                &text("alice", "utf-8", "a\tb\u{202e}c\u{feff}".as_bytes())
            ),
            [show("carol: a\tb\u{fffd}c\u{fffd}")]
        );
        assert_eq!(
            receive(&mut s, &text("*", "utf-16", b"h\0i\0")),
            [show("carol (to all): hi")]
        );
        assert_eq!(
            receive(&mut s, &text("alice", "iso-8859-1", b"caf\xe9")),
            [show("carol: café")]
        );
        let raw = encode(
            "Raw",
            &[("Sender", b"dave"), ("Addressee", b"alice")],
            &[0; 12],
        );
        assert_eq!(receive(&mut s, &raw), [show("dave sent Raw (12 bytes)")]);
        let audio = encode("audio", &[("Sender", b"dave"), ("Addressee", b"*")], b"xyz");
        assert_eq!(
            receive(&mut s, &audio),
            [show("dave (to all) sent Audio (3 bytes)")]
        );
        let odd = encode("Weird", &[], b"");
        assert!(matches!(&receive(&mut s, &odd)[..], [Action::Note(_)]));
    }

    #[test]
    fn without_a_terminal_text_is_shown_as_is() {
        let mut s = Session::new("alice".into(), false);
        receive(&mut s, &identity());
        let text = encode("Text", &[("Sender", b"bob")], b"a\tb\x07");
        assert_eq!(receive(&mut s, &text), [show("bob: a\tb\x07")]);
    }

    #[test]
    fn user_names_are_checked() {
        assert!(parse_user_name("alice").is_ok());
        assert!(parse_user_name("").is_err());
        assert!(parse_user_name("a b").is_err());
        assert!(parse_user_name("a\nb").is_err());
        assert!(parse_user_name("*").is_err());
    }

    #[test]
    fn long_lines_are_skipped_whole() {
        let mut input = io::BufReader::with_capacity(4, &b"abc\nabcdefgh\nxy\r\nlast"[..]);
        let mut line = Vec::new();
        let mut next = || {
            let r = read_line_limited(&mut input, &mut line, 5).map_err(|e| e.to_string());
            (
                r,
                String::from_utf8_lossy(trim_line_end(&line)).into_owned(),
            )
        };
        assert_eq!(next(), (Ok(LineRead::Line), "abc".into()));
        assert_eq!(next().0, Ok(LineRead::TooLong));
        assert_eq!(next(), (Ok(LineRead::Line), "xy".into()));
        assert_eq!(next(), (Ok(LineRead::Line), "last".into()));
        assert_eq!(next().0, Ok(LineRead::Eof));
    }
}
