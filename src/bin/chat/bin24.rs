//! The BIN24 client (protocol: the BIN24 section of docs/PROTOCOLS.md, seed 001).
//!
//! BIN24 carries direct messages in fixed-header binary frames: a message (type 0) goes to one
//! user, whose client answers it "200" (type 1); the server answers "300" itself when the
//! recipient is offline and the message is stored, "507" when that store is full ("429" when the sender is over its rate), and hands a
//! user the messages stored for it (type 2) when it comes back. This client shows each message
//! as a line (`<- bob: hi`), answers "200" for the user, stored messages included (the original
//! client does not answer those, so the server cannot tell they arrived), and shows what became
//! of each message it sent (`-> bob: hi  [delivered]`).
//!
//! Threads, as in the ROOM client, because std cannot wait on a socket and stdin at once: one
//! reads frames from the socket, one reads lines from stdin, one turns signals into events. A
//! fourth, the session thread, connects and then owns the conversation: every frame it sends
//! and every line it prints, from one queue of inputs, in order, so that a line typed before
//! end of input is always sent before the connection closes. The decisions themselves are in
//! [`Session`], which does no I/O and is tested alone. The main thread only waits for the event
//! that ends the session, closes the connection and picks the exit status, so every exit path
//! is in one place and a signal is handled even while the session thread is blocked.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Args;
use switchboard::protocol::bin24::codec::{
    decode, encode, encode_answer, Frame, Name, BODY_BYTES_MAX, TYPE_ANSWER, TYPE_MESSAGE,
    TYPE_OFFLINE,
};

use crate::conn::{self, Conn, TlsArgs};
use crate::hints::{self, Protocol};
use crate::input::display_addr;
use crate::shell::{self, Stdin};
use crate::text::{preview, render_bytes};

/// The messageID of the registration frame (see [`registration_frame`]). Message IDs count up
/// from 0, so this one is never reached by a real message in a session.
const REGISTRATION_ID: u32 = u32::MAX;

/// What a recipient answers to a message it received.
const DELIVERED: &[u8] = b"200";

/// A sent message without an answer this long gets a note, once. The server gives up after its
/// own timeout (3 s by default) and answers "300", so this only shows when something is off:
/// a slow or unusual server, or a lost answer.
const NO_ANSWER_NOTE_AFTER: Duration = Duration::from_secs(10);

/// Longest input line held in memory; anything longer is skipped whole. A message body is at
/// most 1000 bytes, so such a line is refused either way; the limit only keeps a runaway paste
/// or a binary piped into stdin from growing memory.
const MAX_LINE_BYTES: usize = 64 * 1024;

const READ_BUFFER_BYTES: usize = 16 * 1024;

/// How many sent messages are remembered to name their recipient when an answer comes; the
/// oldest are forgotten beyond it (a later answer to one of them is shown as unknown).
const SENT_REMEMBERED_MAX: usize = 100_000;

/// How much of a sent message its status lines repeat, in characters.
const PREVIEW_CHARS_MAX: usize = 40;

/// After the session ends, how long the session thread may take to finish the line it is
/// printing. Bounded because it may be stuck writing to a stdout nobody reads.
const SESSION_GRACE: Duration = Duration::from_secs(1);

pub const LONG_ABOUT: &str = "Send and receive BIN24 direct messages.\n\n\
    Connects to the server and signs in as --user at once (the server learns who you are from \
    the first frame; a note `signed in` on stderr confirms it, and a note says how to send). \
    The server then delivers the messages stored for you while you were offline.\n\n\
    Input, one line at a time on standard input:\n  \
      bob: hello there   send `hello there` to bob\n  \
      /to bob            plain lines go to bob from now on\n  \
      hello again        send to the user chosen with /to\n  \
      /quit              leave (end of input, Ctrl-D, does the same)\n\
    A line is addressed when it starts with a user name (1 to 8 bytes, no spaces) followed by \
    `: `; to send such a line to the /to user, address it explicitly (`bob: note: ...`). A \
    message is at most 1000 bytes: a longer line is refused with a message on stderr, never \
    cut. Empty lines are ignored.\n\n\
    Output, on standard output: `<-` is what you receive, `->` what became of what you sent \
    (the message is repeated, cut to 40 characters, with its state in brackets):\n  \
      <- carol: hi\n      \
        a message from carol; it is answered \"200\" (received) automatically\n  \
      <- carol: hi  [stored while you were offline]\n      \
        stored for you while you were offline; it is answered \"200\" too, so the server and \
        carol know you have it\n  \
      -> bob: hello there  [delivered]\n      \
        bob's client received your message (it answered \"200\")\n  \
      -> bob: hello there  [stored for later: bob is offline]\n      \
        the server answered \"300\": bob gets it when he next signs in; if his client says \
        so while you are still here, a line `[delivered]` follows\n  \
      -> bob: hello there  [refused: bob's store is full]\n      \
        the server answered \"507\": the message is not delivered\n  \
      -> bob: hello there  [refused: sending too fast]\n      \
        the server answered \"429\": you sent bob (or everyone) more than the server allows \
        a second; the message is not delivered\n  \
      -> bob: hello there  [answer: TEXT]\n      \
        any other answer, shown as is\n  \
      -> bob: hello there  [no answer yet]\n      \
        nothing came back within 10 seconds (shown once; the server normally answers within 3)\n\
    Bytes that are not valid UTF-8 are shown as U+FFFD; when standard output is a terminal, \
    control characters, bidirectional controls and zero-width characters are too (tabs are \
    kept), so nobody can send escape sequences to your terminal or disguise text.\n\n\
    Only one connection per user name: signing in again elsewhere makes the server close the \
    older connection.\n\n\
    With chatd's switchboard on (its default), CCM users are reached the same way, by name \
    (`cid: hi`), and their messages arrive like any other (`<- cid: hi`); the wire does not \
    say which protocol a name comes from.\n\n\
    Wrong port: bytes of another protocol, or no answer to signing in within 5 seconds, get a \
    note naming the protocol that seems to answer (`port 55555 answered like ROOM, not \
    BIN24`); a refused connection suggests starting chatd.\n\n\
    The session ends on end of input or /quit, Ctrl-C or SIGTERM (exit status 0), when the \
    server closes the connection (exit status 0, with a message on stderr), or on a \
    connection error or a malformed frame from the server (exit status 1).";

/// Arguments of `chat bin24`.
#[derive(Args, Debug)]
pub struct Bin24Args {
    /// Your user name: 1 to 8 bytes, no NUL
    #[arg(long, value_parser = parse_user)]
    user: Name,

    /// Server host name or IP address
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Server TCP port of the BIN24 protocol
    #[arg(long, default_value_t = 7000, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,

    /// Milliseconds without an answer to signing in before the wrong-port note (tests make
    /// it short)
    #[arg(long, default_value_t = 5000, hide = true)]
    silence_hint_ms: u64,

    #[command(flatten)]
    tls: TlsArgs,
}

/// Rejects what the 8-byte SRC field cannot carry, before any connection is made.
fn parse_user(user: &str) -> Result<Name, String> {
    parse_name(user.as_bytes()).map_err(|problem| format!("the user name {problem}"))
}

/// A user name as BIN24 carries it; the error completes "the user name ...".
fn parse_name(name: &[u8]) -> Result<Name, String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.contains(&0) {
        return Err("must not contain a NUL byte".into());
    }
    // Name::new refuses only what is longer than the field, after the checks above.
    Name::new(name).ok_or_else(|| {
        format!(
            "must be at most 8 bytes long ({:?} is {} bytes)",
            String::from_utf8_lossy(name),
            name.len()
        )
    })
}

type Event = shell::Event;

/// What the session thread waits for.
enum Input {
    /// Standard input: a line typed, or its end.
    Stdin(Stdin),
    Frame(Frame),
    /// The server closed the connection (or it was shut down from our side).
    Closed,
    /// Reading failed or the server sent a malformed frame; the text is shown as is.
    ReadFailed(String),
}

pub fn run(args: Bin24Args) -> ExitCode {
    shell::run(
        move |tx| session(&args, tx),
        shell::Finish::closing(SESSION_GRACE),
    )
}

/// The session thread: connects, signs in, starts the socket and stdin readers, then handles
/// their inputs until one ends the session. Returns that end.
fn session(args: &Bin24Args, tx: &Sender<Event>) -> Event {
    let addr = display_addr(&args.host, args.port);
    let connected = conn::connect(&args.host, args.port, &addr, &args.tls, |e| {
        hints::connect_failed(&addr, Protocol::Bin24, e)
    });
    let stream = match connected {
        Ok(stream) => stream,
        Err(message) => return Event::Failed(message),
    };
    // Frames are small and each should leave at once: an answer "200" is due within the
    // server's 3 s. Failing to set it only costs latency.
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    if tx.send(Event::Connected(Arc::clone(&stream))).is_err() {
        return Event::SessionDone;
    }

    // Sent before anything else, so that it is the connection's first frame whatever is typed.
    if let Err(e) = (&*stream).write_all(&registration_frame(args.user)) {
        return Event::Failed(format!("chat: cannot sign in at {addr}: {e}"));
    }

    let (input_tx, input_rx) = mpsc::channel();
    let reader = {
        let (stream, input_tx, addr) = (Arc::clone(&stream), input_tx.clone(), addr.clone());
        let port = args.port;
        thread::Builder::new()
            .name("socket".into())
            .spawn(move || read_frames(&stream, &input_tx, &addr, port))
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

    let mut session = Session::new(args.user, io::stdout().is_terminal(), addr.clone());
    session.expect_sign_in(
        args.port,
        Instant::now() + Duration::from_millis(args.silence_hint_ms),
    );
    eprintln!("chat: {}", session.how_to_send());
    converse(&stream, &mut session, &input_rx, &addr)
}

/// The first frame of the connection, which tells the server who we are.
///
/// The server takes the user from the first frame's SRC, then processes that frame like any
/// other, so the frame must have no effect of its own. It is a type-1 answer (a message would
/// reach somebody, or be stored), with SRC = DST = the user, messageID u32::MAX and no text:
/// - an answer is forwarded to its DST if online, and the user is online from this very frame:
///   the only one who can see it is the user, and this client does not show it (it notes
///   `signed in` instead, since the echo proves the server has taken the name);
/// - an answer cancels the wait for a message only if (DST, messageID) names a message
///   forwarded to its SRC and not yet answered: this would be the user's own message number
///   u32::MAX to itself, which a session never reaches (IDs count from 0);
/// - an answer is never stored, so nothing lingers if the echo is not delivered.
///
/// An empty DST would be dropped by our server without an echo, but the original server may
/// match it against connections that have not sent their first frame (their name is still all
/// NUL): the user's own name can only ever reach the user.
fn registration_frame(user: Name) -> Bytes {
    encode_answer(REGISTRATION_ID, user, user, b"")
}

/// The session thread's loop: one input at a time, in arrival order.
fn converse(stream: &Conn, session: &mut Session, inputs: &Receiver<Input>, addr: &str) -> Event {
    let stdout = io::stdout();
    let mut actions = Vec::new();
    loop {
        let input = match session.next_deadline() {
            Some(at) => match inputs.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return internal_error(),
            },
            None => match inputs.recv() {
                Ok(input) => Some(input),
                Err(_) => return internal_error(),
            },
        };
        let now = Instant::now();
        match input {
            None => {}
            Some(Input::Stdin(Stdin::Line(line))) => session.on_line(&line, now, &mut actions),
            Some(Input::Stdin(Stdin::LineTooLong)) => session.on_line_too_long(&mut actions),
            Some(Input::Frame(frame)) => session.on_frame(&frame, &mut actions),
            Some(Input::Stdin(Stdin::End)) => return Event::Ended,
            Some(Input::Stdin(Stdin::Failed(message)) | Input::ReadFailed(message)) => {
                return Event::Failed(message)
            }
            Some(Input::Closed) => return session.on_closed(),
        }
        // Also after an input: a steady flow of them must not starve the notes.
        session.on_timer(now, &mut actions);
        for action in actions.drain(..) {
            match action {
                Action::Send(frame) => {
                    if let Err(e) = (&*stream).write_all(&frame) {
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
                Action::BadFrame(problem) => {
                    return Event::Failed(format!("chat: bad frame from the server: {problem}"))
                }
            }
        }
    }
}

fn internal_error() -> Event {
    Event::Failed("chat: internal error: the input threads ended".into())
}

/// The socket thread: cuts frames from the stream; its last input is always an end.
fn read_frames(stream: &Conn, tx: &Sender<Input>, addr: &str, port: u16) {
    let end = receive(stream, tx, addr, port);
    let _ = tx.send(end);
}

fn receive(stream: &Conn, tx: &Sender<Input>, addr: &str, port: u16) -> Input {
    let mut pending = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut framed_any = false;
    loop {
        loop {
            match decode(&mut pending) {
                Ok(Some(frame)) => {
                    framed_any = true;
                    if tx.send(Input::Frame(frame)).is_err() {
                        // The session is over; nobody listens.
                        return Input::Closed;
                    }
                }
                Ok(None) => break,
                // Framing is lost: nothing after this can be trusted. Garbage from the start is
                // most likely another protocol's server.
                Err(e) if !framed_any => {
                    return Input::ReadFailed(format!(
                        "chat: bad frame from the server: {e}\nchat: {}",
                        hints::answered_like(port, Protocol::Bin24, &pending)
                    ))
                }
                Err(e) => {
                    return Input::ReadFailed(format!("chat: bad frame from the server: {e}"))
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
    /// A whole frame for the server.
    Send(Bytes),
    /// A line for stdout, with its newline.
    Show(String),
    /// A line for stderr, without the `chat: ` prefix and newline.
    Note(String),
    Quit,
    /// The server broke the protocol: the session ends with exit status 1.
    BadFrame(String),
}

/// A message sent in this session.
#[derive(Debug)]
struct Sent {
    to: Name,
    /// The start of the message, for its status lines.
    preview: String,
    /// What the last answer said; `None` until one came.
    fate: Option<Fate>,
}

/// What an answer says about the message it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// "200", or what the original client answers instead (see [`Fate::of`]).
    Delivered,
    /// "300": the recipient is offline, the server keeps the message for it.
    Stored,
    /// "507": the recipient's store is full; the message is lost.
    Refused,
    /// "429": the sender is over its rate; the message is not delivered.
    RateLimited,
    /// Anything else, rendered.
    Other(String),
}

impl Fate {
    fn of(body: &[u8], sanitize: bool) -> Fate {
        // The original client answers with the received message's length: "200" cut to it
        // (so "", "2" or "20" for short messages), or followed by garbage for longer ones.
        if body.starts_with(b"20") || DELIVERED.starts_with(body) {
            Fate::Delivered
        } else if body == b"300" {
            Fate::Stored
        } else if body == b"507" {
            Fate::Refused
        } else if body == b"429" {
            Fate::RateLimited
        } else {
            Fate::Other(render_bytes(body, sanitize))
        }
    }

    /// The bracketed state of a `->` line.
    fn describe(&self, to: Name) -> String {
        match self {
            Fate::Delivered => "delivered".into(),
            Fate::Stored => format!("stored for later: {to} is offline"),
            Fate::Refused => format!("refused: {to}'s store is full"),
            Fate::RateLimited => "refused: sending too fast".into(),
            Fate::Other(text) => format!("answer: {text}"),
        }
    }
}

/// Where the sign-in stands, for the wrong-port hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignIn {
    /// The registration is out; the server echoes it at once, so silence past `hint_at`
    /// deserves a note (once).
    Waiting {
        port: u16,
        hint_at: Instant,
    },
    /// Waiting still, the note is out.
    Hinted {
        port: u16,
    },
    Done,
}

/// The conversation, without I/O: lines and frames in, actions out.
struct Session {
    user: Name,
    /// Replace control characters in received text (stdout is a terminal).
    sanitize: bool,
    /// For the `signed in` note.
    addr: String,
    /// The messageID of the next message: 0, 1, 2... as the original client counts.
    next_id: u32,
    /// Where plain lines go, set by `/to`.
    default_to: Option<Name>,
    sent: BTreeMap<u32, Sent>,
    /// When each sent message deserves its `no answer yet` note, in sending order (so in
    /// deadline order).
    notes_due: VecDeque<(Instant, u32)>,
    sign_in: SignIn,
}

impl Session {
    fn new(user: Name, sanitize: bool, addr: String) -> Self {
        Session {
            user,
            sanitize,
            addr,
            next_id: 0,
            default_to: None,
            sent: BTreeMap::new(),
            notes_due: VecDeque::new(),
            sign_in: SignIn::Done,
        }
    }

    /// The registration is out on `port`: without its echo by `hint_at`, a note suggests the
    /// port is wrong.
    fn expect_sign_in(&mut self, port: u16, hint_at: Instant) {
        self.sign_in = SignIn::Waiting { port, hint_at };
    }

    /// The note at start: how to send, and how the output tells sent from received.
    fn how_to_send(&self) -> String {
        format!(
            "connected to {} as {}; send with `bob: hello` (or `/to bob`, then plain lines), \
             leave with /quit; `-> bob: ...  [delivered]` is what you sent and what became of \
             it, `<- bob: ...` what you received",
            self.addr, self.user
        )
    }

    /// The server closed the connection: before the sign-in was confirmed, that may be a
    /// refused name or another protocol's server.
    fn on_closed(&self) -> Event {
        match self.sign_in {
            // The server closes the older connection when the same user signs in again, but
            // also on a protocol error or an unanswered message; the client cannot tell which.
            SignIn::Done => Event::Closed(
                "chat: connection closed by the server (another connection with this user name \
                 replaced this one, or the server closed it)"
                    .into(),
            ),
            SignIn::Waiting { port, .. } | SignIn::Hinted { port } => Event::Closed(format!(
                "chat: the server at {} closed the connection before signing you in: the \
                     name {} may be held by a CCM or MATOU user (choose another --user), or \
                     port {port} is not a BIN24 port (7000 by default)",
                self.addr, self.user
            )),
        }
    }

    /// One typed line, without its line end.
    fn on_line(&mut self, line: &[u8], now: Instant, out: &mut Vec<Action>) {
        if line.starts_with(b"/") {
            self.on_command(line, out);
            return;
        }
        let (to, body) = match addressed(line) {
            Some((to, body)) => (to, body),
            None if line.iter().all(u8::is_ascii_whitespace) => return,
            None => match self.default_to {
                Some(to) => (to, line),
                None => {
                    out.push(Action::Note(
                        "no recipient, line not sent: write `bob: text`, or `/to bob` first".into(),
                    ));
                    return;
                }
            },
        };
        self.send(to, body, now, out);
    }

    fn on_command(&mut self, line: &[u8], out: &mut Vec<Action>) {
        let split = line
            .iter()
            .position(u8::is_ascii_whitespace)
            .unwrap_or(line.len());
        let (command, rest) = line.split_at(split);
        match command {
            b"/quit" => out.push(Action::Quit),
            b"/to" => {
                let name = rest.trim_ascii();
                if name.is_empty() {
                    out.push(Action::Note(
                        "/to needs a user name, as in `/to bob`".into(),
                    ));
                    return;
                }
                match parse_name(name) {
                    Ok(to) => {
                        self.default_to = Some(to);
                        out.push(Action::Note(format!("plain lines now go to {to}")));
                    }
                    Err(problem) => out.push(Action::Note(format!("the user name {problem}"))),
                }
            }
            _ => out.push(Action::Note(format!(
                "unknown command {}: the commands are `/to NAME` and `/quit` (to send a line \
                 starting with `/`, address it: `bob: /...`)",
                render_bytes(command, true)
            ))),
        }
    }

    fn on_line_too_long(&mut self, out: &mut Vec<Action>) {
        out.push(Action::Note(format!(
            "line longer than {MAX_LINE_BYTES} bytes not sent (a message is at most \
             {BODY_BYTES_MAX} bytes)"
        )));
    }

    fn send(&mut self, to: Name, body: &[u8], now: Instant, out: &mut Vec<Action>) {
        let id = self.next_id;
        // Refused, not cut: a silently shortened message would be worse than none.
        let Some(frame) = encode(TYPE_MESSAGE, id, self.user, to, body) else {
            out.push(Action::Note(format!(
                "message of {} bytes not sent: a message is at most {BODY_BYTES_MAX} bytes",
                body.len()
            )));
            return;
        };
        out.push(Action::Send(frame));
        self.next_id = match id.wrapping_add(1) {
            REGISTRATION_ID => 0,
            next => next,
        };
        let preview = preview(&render_bytes(body, true), PREVIEW_CHARS_MAX);
        self.sent.insert(
            id,
            Sent {
                to,
                preview,
                fate: None,
            },
        );
        if self.sent.len() > SENT_REMEMBERED_MAX {
            self.sent.pop_first();
        }
        self.notes_due.push_back((now + NO_ANSWER_NOTE_AFTER, id));
    }

    /// One frame from the server.
    fn on_frame(&mut self, frame: &Frame, out: &mut Vec<Action>) {
        let src = frame.src();
        let id = frame.message_id();
        let body = frame.body();
        match frame.frame_type() {
            // A stored message is answered like a live one: the answer tells the server (and
            // the sender, if online) that this client has it, so the server can count it as
            // delivered at once instead of guessing from the transport.
            kind @ (TYPE_MESSAGE | TYPE_OFFLINE) => {
                // Answered before it is shown: the answer is due within the server's timeout,
                // and showing may wait on a slow terminal.
                out.push(Action::Send(encode_answer(id, self.user, src, DELIVERED)));
                let text = render_bytes(&body, self.sanitize);
                out.push(shown(if kind == TYPE_OFFLINE {
                    format!("<- {src}: {text}  [stored while you were offline]")
                } else {
                    format!("<- {src}: {text}")
                }));
            }
            TYPE_ANSWER if self.is_registration_echo(frame) => {
                self.sign_in = SignIn::Done;
                out.push(Action::Note(format!(
                    "signed in as {} at {}",
                    self.user, self.addr
                )));
            }
            TYPE_ANSWER => match self.sent.get_mut(&id) {
                Some(sent) => {
                    let fate = Fate::of(&body, self.sanitize);
                    // Only news is shown: the first answer, and a change, such as the "200"
                    // of a recipient who got the message from the store; a repeated answer
                    // (at-least-once delivery) is not.
                    if sent.fate.as_ref() != Some(&fate) {
                        out.push(shown(format!(
                            "-> {}: {}  [{}]",
                            sent.to,
                            sent.preview,
                            fate.describe(sent.to)
                        )));
                        sent.fate = Some(fate);
                    }
                }
                None => out.push(shown(format!(
                    "-> {src}: (message #{id}, not sent in this session)  [{}]",
                    Fate::of(&body, self.sanitize).describe(src)
                ))),
            },
            other => out.push(Action::BadFrame(format!(
                "type {other} (a server sends only 0, 1 and 2)"
            ))),
        }
    }

    fn is_registration_echo(&self, frame: &Frame) -> bool {
        frame.message_id() == REGISTRATION_ID
            && frame.src() == self.user
            && frame.dst() == self.user
            && frame.body().is_empty()
    }

    /// Notes for messages unanswered for [`NO_ANSWER_NOTE_AFTER`].
    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(&(due, id)) = self.notes_due.front() {
            if due > now {
                break;
            }
            self.notes_due.pop_front();
            if let Some(sent) = self.sent.get(&id).filter(|sent| sent.fate.is_none()) {
                let line = format!("-> {}: {}  [no answer yet]", sent.to, sent.preview);
                out.push(shown(line));
            }
        }
        if let SignIn::Waiting { port, hint_at } = self.sign_in {
            if hint_at <= now {
                self.sign_in = SignIn::Hinted { port };
                out.push(Action::Note(format!(
                    "no answer to signing in: {}",
                    hints::silent(port, Protocol::Bin24, "echoes the sign-in at once")
                )));
            }
        }
    }

    /// When [`Session::on_timer`] next has something to do.
    fn next_deadline(&self) -> Option<Instant> {
        let note = self.notes_due.front().map(|&(due, _)| due);
        let hint = match self.sign_in {
            SignIn::Waiting { hint_at, .. } => Some(hint_at),
            _ => None,
        };
        note.into_iter().chain(hint).min()
    }
}

/// A line for stdout.
fn shown(mut line: String) -> Action {
    line.push('\n');
    Action::Show(line)
}

/// `bob: text` → (bob, text). The name is 1 to 8 bytes without whitespace, so that ordinary
/// sentences with a colon ("note: ...", "http://...") are not taken for an address.
fn addressed(line: &[u8]) -> Option<(Name, &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, rest) = (&line[..colon], &line[colon + 1..]);
    if name.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let body = match rest {
        [] => rest,
        [b' ', body @ ..] => body,
        _ => return None,
    };
    parse_name(name).ok().map(|to| (to, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{read_line_limited, trim_line_end, LineRead};

    fn name(text: &str) -> Name {
        Name::new(text.as_bytes()).unwrap()
    }

    fn session() -> Session {
        Session::new(name("alice"), true, "127.0.0.1:7000".into())
    }

    fn frame(bytes: Bytes) -> Frame {
        Frame::from_bytes(bytes).unwrap()
    }

    fn line(session: &mut Session, text: &str, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        session.on_line(text.as_bytes(), now, &mut out);
        out
    }

    fn receive(session: &mut Session, bytes: Bytes) -> Vec<Action> {
        let mut out = Vec::new();
        session.on_frame(&frame(bytes), &mut out);
        out
    }

    fn message(id: u32, from: &str, to: &str, text: &str) -> Bytes {
        encode(TYPE_MESSAGE, id, name(from), name(to), text.as_bytes()).unwrap()
    }

    fn show(text: &str) -> Action {
        Action::Show(format!("{text}\n"))
    }

    #[test]
    fn registration_is_an_empty_answer_to_oneself() {
        let registration = frame(registration_frame(name("alice")));
        assert_eq!(registration.frame_type(), TYPE_ANSWER);
        assert_eq!(registration.message_id(), u32::MAX);
        assert_eq!(registration.src(), name("alice"));
        assert_eq!(registration.dst(), name("alice"));
        assert_eq!(registration.len(), 24);

        let mut s = session();
        let echo = receive(&mut s, registration.into_bytes());
        assert_eq!(
            echo,
            [Action::Note("signed in as alice at 127.0.0.1:7000".into())]
        );
    }

    #[test]
    fn addressed_and_default_lines_are_sent_with_counting_ids() {
        let now = Instant::now();
        let mut s = session();
        assert_eq!(
            line(&mut s, "bob: hello there", now),
            [Action::Send(message(0, "alice", "bob", "hello there"))]
        );
        assert!(matches!(&line(&mut s, "hello", now)[..], [Action::Note(_)]));
        assert!(matches!(
            &line(&mut s, "/to carol", now)[..],
            [Action::Note(_)]
        ));
        assert_eq!(
            line(&mut s, "hello", now),
            [Action::Send(message(1, "alice", "carol", "hello"))]
        );
        // Not addresses: a space in the "name", no space after the colon, a 9-byte name.
        for (id, text) in [(2, "a b: c"), (3, "http://x"), (4, "toolongname: x")] {
            assert_eq!(
                line(&mut s, text, now),
                [Action::Send(message(id, "alice", "carol", text))],
                "{text}"
            );
        }
        assert_eq!(
            line(&mut s, "bob:", now),
            [Action::Send(message(5, "alice", "bob", ""))]
        );
        assert_eq!(line(&mut s, "", now), []);
        assert_eq!(line(&mut s, "/quit", now), [Action::Quit]);
    }

    #[test]
    fn bad_commands_and_names_are_refused_without_using_an_id() {
        let now = Instant::now();
        let mut s = session();
        for text in ["/to", "/to toolongname", "/who", "/tobob x"] {
            assert!(
                matches!(&line(&mut s, text, now)[..], [Action::Note(_)]),
                "{text}"
            );
        }
        assert_eq!(s.default_to, None);
        let longest = "x".repeat(BODY_BYTES_MAX);
        let out = line(&mut s, &format!("bob: {longest}y"), now);
        assert!(
            matches!(&out[..], [Action::Note(n)] if n.contains("1001 bytes not sent")),
            "{out:?}"
        );
        assert_eq!(
            line(&mut s, &format!("bob: {longest}"), now),
            [Action::Send(message(0, "alice", "bob", &longest))]
        );
    }

    #[test]
    fn messages_live_and_stored_are_answered_200_and_shown_incoming() {
        let mut s = session();
        assert_eq!(
            receive(&mut s, message(7, "carol", "alice", "hi\x1b[2J\u{202e}")),
            [
                Action::Send(encode_answer(7, name("alice"), name("carol"), b"200")),
                show("<- carol: hi\u{fffd}[2J\u{fffd}"),
            ]
        );
        // A stored message gets the same answer, with its own messageID and SRC, so the
        // server can count it as delivered.
        let stored = encode(TYPE_OFFLINE, 3, name("dave"), name("alice"), b"caf\xe9").unwrap();
        assert_eq!(
            receive(&mut s, stored),
            [
                Action::Send(encode_answer(3, name("alice"), name("dave"), b"200")),
                show("<- dave: caf\u{fffd}  [stored while you were offline]"),
            ]
        );
    }

    #[test]
    fn answers_show_the_fate_of_each_message() {
        let now = Instant::now();
        let mut s = session();
        for text in [
            "bob: one",
            "bob: two",
            "bob: three",
            "bob: four",
            "bob: five",
            "bob: six",
        ] {
            line(&mut s, text, now);
        }
        let answer = |id, text: &[u8]| encode_answer(id, name("bob"), name("alice"), text);
        let cases: [(u32, &[u8], &str); 7] = [
            (0, b"200\0garbage", "-> bob: one  [delivered]"),
            (1, b"300", "-> bob: two  [stored for later: bob is offline]"),
            (2, b"507", "-> bob: three  [refused: bob's store is full]"),
            (3, b"404 what", "-> bob: four  [answer: 404 what]"),
            (4, b"2", "-> bob: five  [delivered]"),
            (5, b"429", "-> bob: six  [refused: sending too fast]"),
            (
                9,
                b"200",
                "-> bob: (message #9, not sent in this session)  [delivered]",
            ),
        ];
        for (id, text, shown) in cases {
            assert_eq!(receive(&mut s, answer(id, text)), [show(shown)]);
        }
    }

    #[test]
    fn a_late_200_updates_a_stored_message_and_repeats_are_not_shown() {
        let now = Instant::now();
        let mut s = session();
        line(&mut s, "bob: see you", now);
        let answer = |text: &[u8]| encode_answer(0, name("bob"), name("alice"), text);
        assert_eq!(
            receive(&mut s, answer(b"300")),
            [show("-> bob: see you  [stored for later: bob is offline]")]
        );
        assert_eq!(receive(&mut s, answer(b"300")), []);
        // bob signed in, got it from the store and answered.
        assert_eq!(
            receive(&mut s, answer(b"200")),
            [show("-> bob: see you  [delivered]")]
        );
        // At-least-once: the same message may be delivered, and answered, again.
        assert_eq!(receive(&mut s, answer(b"200")), []);
    }

    #[test]
    fn status_lines_repeat_the_start_of_the_message() {
        let now = Instant::now();
        let mut s = session();
        let long = "x".repeat(100);
        line(&mut s, &format!("bob: {long}"), now);
        line(&mut s, "bob: a\x1bb", now);
        let answer = |id| encode_answer(id, name("bob"), name("alice"), b"200");
        let cut = format!("-> bob: {}…  [delivered]", "x".repeat(PREVIEW_CHARS_MAX));
        assert_eq!(receive(&mut s, answer(0)), [show(&cut)]);
        assert_eq!(
            receive(&mut s, answer(1)),
            [show("-> bob: a\u{fffd}b  [delivered]")]
        );
    }

    #[test]
    fn unknown_types_are_bad_frames() {
        let mut s = session();
        let odd = encode(5, 0, name("bob"), name("alice"), b"").unwrap();
        assert!(matches!(&receive(&mut s, odd)[..], [Action::BadFrame(_)]));
    }

    #[test]
    fn unanswered_messages_get_one_note_after_10_s() {
        let start = Instant::now();
        let mut s = session();
        line(&mut s, "bob: one", start);
        line(&mut s, "carol: two", start + Duration::from_secs(1));
        assert_eq!(s.next_deadline(), Some(start + NO_ANSWER_NOTE_AFTER));
        receive(
            &mut s,
            encode_answer(1, name("carol"), name("alice"), b"300"),
        );

        let mut out = Vec::new();
        s.on_timer(start + Duration::from_secs(9), &mut out);
        assert_eq!(out, []);
        s.on_timer(start + Duration::from_secs(20), &mut out);
        assert_eq!(out, [show("-> bob: one  [no answer yet]")]);
        assert_eq!(s.next_deadline(), None);
        out.clear();
        s.on_timer(start + Duration::from_secs(30), &mut out);
        assert_eq!(out, []);
    }

    #[test]
    fn silence_after_signing_in_gets_one_wrong_port_note() {
        let start = Instant::now();
        let mut s = session();
        s.expect_sign_in(9002, start + Duration::from_secs(5));
        assert_eq!(s.next_deadline(), Some(start + Duration::from_secs(5)));
        let mut out = Vec::new();
        s.on_timer(start + Duration::from_secs(4), &mut out);
        assert_eq!(out, []);
        s.on_timer(start + Duration::from_secs(5), &mut out);
        assert!(
            matches!(&out[..], [Action::Note(n)] if n.contains("nothing from port 9002 yet")
                && n.contains("BIN24")),
            "{out:?}"
        );
        assert_eq!(s.next_deadline(), None);
        out.clear();
        s.on_timer(start + Duration::from_secs(60), &mut out);
        assert_eq!(out, []);
        // A close before the sign-in is explained; after it, it is an ordinary close.
        assert!(matches!(s.on_closed(), Event::Closed(m) if m.contains("may be held")));
        receive(&mut s, registration_frame(name("alice")));
        assert!(matches!(s.on_closed(), Event::Closed(m) if m.contains("replaced this one")));

        // The echo in time: no note.
        let mut s = session();
        s.expect_sign_in(7000, start + Duration::from_secs(5));
        receive(&mut s, registration_frame(name("alice")));
        assert_eq!(s.next_deadline(), None);
        s.on_timer(start + Duration::from_secs(60), &mut out);
        assert_eq!(out, []);
    }

    #[test]
    fn the_start_note_says_how_to_send_and_read() {
        let note = session().how_to_send();
        for needle in ["bob: hello", "/to bob", "/quit", "->", "<-", "[delivered]"] {
            assert!(note.contains(needle), "{needle:?} missing from {note}");
        }
    }

    #[test]
    fn user_names_are_checked() {
        assert!(parse_user("alice").is_ok());
        assert!(parse_user("12345678").is_ok());
        assert!(parse_user("").unwrap_err().contains("empty"));
        assert!(parse_user("123456789")
            .unwrap_err()
            .contains("at most 8 bytes"));
        assert!(parse_user("a\0b").unwrap_err().contains("NUL"));
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
