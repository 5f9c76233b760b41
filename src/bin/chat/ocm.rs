//! The OCM client (protocol: the OCM section of docs/PROTOCOLS.md, seed 004).
//!
//! OCM has two phases. A room is created or joined over TCP with one TCRP request and one
//! answer, which carries a token; the TCP connection then ends. The chat itself is UDP: every
//! datagram to the server names the room and carries the token, and the server relays each
//! message as plain text to the room's other members. The token is bound to the IP address the
//! request came from, and the request names the UDP address the answers go to, so the UDP
//! socket is bound before the request is written: on the very address the TCP connection uses
//! (the original binds it before connecting; the order is invisible to the server, and taking
//! the TCP connection's own address guarantees the IP matches the token's).
//!
//! Threads, as in the other clients, because std cannot wait on a socket and stdin at once: one
//! receives datagrams, one reads lines from stdin, one turns signals into events. A fourth, the
//! session thread, makes the request and then owns the conversation: every datagram it sends
//! and every line it prints, from one queue of inputs, in order. The decisions themselves are
//! in [`judge`] (the TCRP answer) and [`Session`] (the chat), which do no I/O and are tested
//! alone. The main thread only waits for the event that ends the session, says goodbye to the
//! server when the session could not, and picks the exit status, so every exit path is in one
//! place and a signal is handled even while the session thread is blocked.

use std::io::{self, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Args, ValueEnum};
use switchboard::protocol::ocm::codec::{
    decode_answer, encode_datagram, encode_request, host_leave_text, leave_text,
    room_exists_message, room_missing_message, EncodeError, TcrpAnswer, DATAGRAM_BYTES_MAX,
    DATAGRAM_HEADER_BYTES, EXIT_MESSAGE, MESSAGE_FAILED, OPERATION_CREATE, OPERATION_JOIN,
    STATE_ACK, STATE_DONE, STATE_ERROR, STATE_REQUEST, STATUS_DONE,
};
use switchboard::protocol::ocm::json;

use crate::conn::{self, Conn, TlsArgs};
use crate::hints::{self, Protocol};
use crate::input::display_addr;
use crate::shell::{self, Stdin};
use crate::text::render;

/// Largest TCRP answer body accepted. Real answers are under 300 bytes; the 29-byte size field
/// could announce far more, which is refused from the header before anything is buffered.
const ANSWER_PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// How long the server may take to answer the request. Bounded so that a server that accepts
/// and then says nothing does not leave the user waiting forever.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

/// The longest room name: RoomNameSize is one byte.
const ROOM_BYTES_MAX: usize = 255;

/// The longest token this client can send: TokenSize is one byte.
const TOKEN_BYTES_MAX: usize = 255;

/// The server sends at most 4094 bytes; a larger buffer shows a non-conforming server's
/// datagram whole instead of cutting it.
const RECEIVE_BUFFER_BYTES: usize = 64 * 1024;

/// After the session ends, how long the session thread may take to finish the line it is
/// printing. Bounded because it may be stuck writing to a stdout nobody reads.
const SESSION_GRACE: Duration = Duration::from_secs(1);

pub const LONG_ABOUT: &str = "Create or join an OCM chat room, then chat in it.\n\n\
    `chat ocm create ROOM --name alice` asks the server over TCP (--tcp-port, TCRP) to create \
    ROOM with you as its host; `chat ocm join ROOM --name bob` joins an existing room. The \
    server answers with a token, and a note `created ROOM as alice` or `joined ROOM as bob` on \
    stderr confirms it. If the server refuses, the client says why in English (the room \
    already exists, the room does not exist, or the request could not be served), with the \
    server's own Japanese message, and exits with status 1.\n\n\
    Then the chat goes over UDP (--udp-port), from a socket bound before the request, on the \
    address the TCP connection used: the server only accepts datagrams from the IP address the \
    token was given to.\n\n\
    Input, one line at a time on standard input:\n  \
      hello there   send `hello there` to everyone else in the room\n  \
      exit          leave the room (/quit and end of input, Ctrl-D, do the same)\n\
    A line is sent as it is, as UTF-8, in one datagram of at most 4096 bytes with the room \
    name and the token; a longer line is refused with a message on stderr. Empty lines are \
    ignored. Since `exit` is how the protocol says goodbye, a message cannot be just `exit`.\n\n\
    Output, on standard output, what the server relays, as it comes; the server's own texts \
    are Japanese (unchanged on the wire), and the client adds an English gloss in brackets:\n  \
      bob: hi                                               bob said hi\n  \
      bobがlobbyから退出しました。  (bob left lobby)        bob left the room\n\
    Only datagrams from the server's UDP address are shown; anything else is ignored. When \
    standard output is a terminal, control characters (tabs excepted), bidirectional controls \
    and zero-width characters in received text are shown as U+FFFD, so nobody can send \
    escape sequences to your terminal or disguise text.\n\n\
    With chatd's switchboard on (its default), the room named `lobby` (chatd's \
    --lobby-ocm-room) is shared with ROOM, MATOU and CCM users: their messages arrive as \
    `rui: hi` like a member's, since the wire does not say which protocol a name comes from, \
    and their comings and goings are not sent to OCM.\n\n\
    When the host leaves, the server closes the room: its text \
    `...\\nホストが退出したため、チャットルーム:ROOMを終了します。` is shown, a note on stderr says \
    the room is closed, and the client exits with status 0. There is no keepalive in OCM: the \
    server removes a member that has sent nothing for its idle limit (600 s by default; say \
    something now and then to stay), and tells it with its own leave text \
    `aliceがROOMから退出しました。`; the client shows it, says so on stderr and exits with \
    status 0. Run it again to rejoin.\n\n\
    The session ends on `exit`, /quit or end of input, Ctrl-C or SIGTERM (each sends `exit` \
    to the server first; exit status 0), on removal by the server or the room's closing (exit \
    status 0), or on a connection error, a refusal or a malformed answer from the server \
    (exit status 1).";

/// What to ask the server for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Operation {
    /// Create the room, as its host
    Create,
    /// Join an existing room
    Join,
}

impl Operation {
    fn code(self) -> u8 {
        match self {
            Operation::Create => OPERATION_CREATE,
            Operation::Join => OPERATION_JOIN,
        }
    }

    /// For messages: `cannot create room ...`.
    fn verb(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Join => "join",
        }
    }

    /// For the note once done: `created lobby as alice`.
    fn done(self) -> &'static str {
        match self {
            Operation::Create => "created",
            Operation::Join => "joined",
        }
    }
}

/// Arguments of `chat ocm`.
#[derive(Args, Debug)]
pub struct OcmArgs {
    /// `create` a room (you are its host) or `join` one
    #[arg(value_enum)]
    operation: Operation,

    /// The room's name: not empty, at most 255 bytes of UTF-8
    #[arg(value_parser = parse_room_name)]
    room: String,

    /// Your user name, shown to the others before each of your messages: not empty
    #[arg(long, value_parser = parse_user_name)]
    name: String,

    /// Server host name or IP address
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Server TCP port where rooms are created and joined (TCRP)
    #[arg(long, default_value_t = 9002, value_parser = clap::value_parser!(u16).range(1..))]
    tcp_port: u16,

    /// Server UDP port of the chat
    #[arg(long, default_value_t = 9003, value_parser = clap::value_parser!(u16).range(1..))]
    udp_port: u16,

    #[command(flatten)]
    tls: TlsArgs,
}

fn parse_room_name(room: &str) -> Result<String, String> {
    if room.is_empty() {
        return Err("the room name must not be empty".into());
    }
    if room.len() > ROOM_BYTES_MAX {
        return Err(format!(
            "the room name is {} bytes long; at most {ROOM_BYTES_MAX} fit in RoomNameSize",
            room.len()
        ));
    }
    Ok(room.to_string())
}

fn parse_user_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the name must not be empty".into());
    }
    Ok(name.to_string())
}

/// [`Event::Joined`] carries what main needs to say goodbye if the session cannot;
/// [`Event::Ended`] also means the server needs no goodbye (it was sent, or this member or its
/// room is gone).
type Event = shell::Event<Joined>;

struct Joined {
    socket: Arc<UdpSocket>,
    server: SocketAddr,
    /// The `exit` datagram.
    goodbye: Vec<u8>,
    /// To stop the session thread.
    inputs: Sender<Input>,
}

/// What the session thread waits for once the room is joined.
enum Input {
    /// Standard input: a line typed, or its end.
    Stdin(Stdin),
    /// A datagram from the server.
    Text(Vec<u8>),
    /// Receiving failed; the text is shown as is.
    ReceiveFailed(String),
    /// Main has ended the session (a signal): return at once.
    Stop,
}

pub fn run(args: OcmArgs) -> ExitCode {
    shell::run(
        move |tx| session(&args, tx),
        shell::Finish {
            grace: SESSION_GRACE,
            forward_signal: None,
            joined_end: &|joined: &Joined, outcome: &Event| {
                // A signal or a failure: the session did not say goodbye, so main does, or the
                // server would keep this member until its idle limit. Best effort: it is the
                // last word.
                if matches!(outcome, Event::Signal | Event::Failed(_)) {
                    let _ = joined.socket.send_to(&joined.goodbye, joined.server);
                }
                if !matches!(outcome, Event::SessionDone) {
                    let _ = joined.inputs.send(Input::Stop);
                }
            },
        },
    )
}

/// The session thread: binds the UDP socket, asks for the room over TCP, starts the datagram
/// and stdin readers, then handles their inputs until one ends the session. Returns that end.
fn session(args: &OcmArgs, tx: &Sender<Event>) -> Event {
    let tcp_addr = display_addr(&args.host, args.tcp_port);
    let connected = conn::connect(&args.host, args.tcp_port, &tcp_addr, &args.tls, |e| {
        hints::connect_failed(&tcp_addr, Protocol::Ocm, e)
    });
    let stream = match connected {
        Ok(stream) => stream,
        Err(message) => return Event::Failed(message),
    };
    let stream = Arc::new(stream);
    if tx.send(Event::Connected(Arc::clone(&stream))).is_err() {
        return Event::SessionDone;
    }
    let (local, peer) = match (stream.local_addr(), stream.peer_addr()) {
        (Ok(local), Ok(peer)) => (local, peer),
        (Err(e), _) | (_, Err(e)) => {
            return Event::Failed(format!("chat: connection to {tcp_addr} lost: {e}"))
        }
    };
    // The server sends from the address it was reached at, which for UDP is the same IP.
    let server = SocketAddr::new(peer.ip(), args.udp_port);
    let socket = match UdpSocket::bind(SocketAddr::new(local.ip(), 0)) {
        Ok(socket) => socket,
        Err(e) => {
            return Event::Failed(format!(
                "chat: cannot open a UDP socket on {}: {e}",
                local.ip()
            ))
        }
    };
    let udp_local = match socket.local_addr() {
        Ok(addr) => addr,
        Err(e) => return Event::Failed(format!("chat: cannot read the UDP socket's address: {e}")),
    };

    let request = match request(args.operation, &args.room, &args.name, udp_local) {
        Ok(request) => request,
        Err(e) => return Event::Failed(format!("chat: cannot write the request: {e}")),
    };
    if let Err(e) = (&*stream).write_all(&request) {
        return Event::Failed(format!("chat: cannot send the request to {tcp_addr}: {e}"));
    }
    let token = match read_answer(&stream, args.operation, &tcp_addr, args.tcp_port) {
        Ok(token) => token,
        Err(Refusal::Refused(message)) => {
            return Event::Failed(format!(
                "chat: cannot {} room {}: {}",
                args.operation.verb(),
                render(&args.room, true),
                explain_refusal(args.operation, &args.room, &args.name, &message)
            ))
        }
        Err(Refusal::Failed(message)) => return Event::Failed(format!("chat: {message}")),
    };
    // One request, one answer: the server closes its side, and so do we.
    let _ = stream.shutdown(Shutdown::Both);
    drop(stream);

    let session = Session::new(
        args.name.clone(),
        args.room.clone(),
        token,
        io::stdout().is_terminal(),
    );
    let socket = Arc::new(socket);
    let (input_tx, input_rx) = mpsc::channel();
    let joined = Joined {
        socket: Arc::clone(&socket),
        server,
        goodbye: session.goodbye(),
        inputs: input_tx.clone(),
    };
    if tx.send(Event::Joined(joined)).is_err() {
        return Event::SessionDone;
    }
    eprintln!(
        "chat: {} {} as {}",
        args.operation.done(),
        render(&args.room, true),
        render(&args.name, true)
    );

    let receiver = {
        let (socket, input_tx) = (Arc::clone(&socket), input_tx.clone());
        thread::Builder::new()
            .name("socket".into())
            .spawn(move || receive(&socket, server, &input_tx))
    };
    if let Err(e) = receiver {
        return Event::Failed(format!("chat: cannot start the socket thread: {e}"));
    }
    let lines = thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_lines(&input_tx));
    if let Err(e) = lines {
        return Event::Failed(format!("chat: cannot start the input thread: {e}"));
    }

    converse(&socket, server, &session, &input_rx)
}

/// The TCRP request, as the original client writes it.
fn request(
    operation: Operation,
    room: &str,
    name: &str,
    udp: SocketAddr,
) -> Result<Vec<u8>, EncodeError> {
    let payload = json::encode_request(name, udp);
    encode_request(operation.code(), STATE_REQUEST, room.as_bytes(), &payload).map(Vec::from)
}

/// Why there is no token.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The server said no; its message, unrendered.
    Refused(String),
    /// Anything else; the text is shown after `chat: `.
    Failed(String),
}

/// What one TCRP answer means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The document's acknowledgement: the real answer follows.
    Ack,
    /// The room is ours: the token.
    Granted(Vec<u8>),
    /// Refused, with the server's message.
    Refused(String),
}

/// Reads answers until the one that decides: the token, or why not.
fn read_answer(
    stream: &Conn,
    operation: Operation,
    addr: &str,
    port: u16,
) -> Result<Vec<u8>, Refusal> {
    let deadline = Instant::now() + ANSWER_WAIT;
    let mut pending = BytesMut::with_capacity(1024);
    let mut buf = vec![0u8; 4096];
    let mut acked = false;
    let mut answered = false;
    // What a wrong port most likely is, for a failure before any answer was decoded.
    let wrong_port = |pending: &[u8], answered: bool| {
        if answered {
            String::new()
        } else {
            format!(
                "\nchat: {}",
                hints::answered_like(port, Protocol::Ocm, pending)
            )
        }
    };
    loop {
        while let Some(answer) =
            decode_answer(&mut pending, ANSWER_PAYLOAD_BYTES_MAX).map_err(|e| {
                Refusal::Failed(format!(
                    "malformed answer from the server: {e}{}",
                    wrong_port(&pending, answered)
                ))
            })?
        {
            answered = true;
            match judge(operation.code(), &answer, acked).map_err(|problem| {
                Refusal::Failed(format!("malformed answer from the server: {problem}"))
            })? {
                Verdict::Ack => acked = true,
                Verdict::Granted(token) => return Ok(token),
                Verdict::Refused(message) => return Err(Refusal::Refused(message)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refusal::Failed(format!(
                "no answer from {addr} within {} s: is port {port} the OCM TCP port? (9002 by \
                 default; a ROOM server would have asked `alias?`, the others wait for their \
                 own protocol)",
                ANSWER_WAIT.as_secs()
            )));
        }
        if let Err(e) = stream.set_read_timeout(Some(left)) {
            return Err(Refusal::Failed(format!("connection to {addr} lost: {e}")));
        }
        match (&*stream).read(&mut buf) {
            Ok(0) if pending.is_empty() => {
                return Err(Refusal::Failed(format!(
                    "{addr} closed the connection without answering: is port {port} the OCM \
                     TCP port? (9002 by default)"
                )))
            }
            Ok(0) => {
                return Err(Refusal::Failed(format!(
                    "malformed answer from the server: the connection closed after {} bytes \
                     of an incomplete answer{}",
                    pending.len(),
                    wrong_port(&pending, answered)
                )))
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The deadline check above turns this into the message.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(Refusal::Failed(format!("connection to {addr} lost: {e}"))),
        }
    }
}

/// Decides what one answer to a request of `operation` means; `acked` when an acknowledgement
/// came before. The error is a malformed answer, described.
fn judge(operation: u8, answer: &TcrpAnswer, acked: bool) -> Result<Verdict, String> {
    let body = std::str::from_utf8(&answer.json).map_err(|_| "its body is not UTF-8")?;
    let payload = json::parse_answer(body).map_err(|e| format!("its body: {e}"))?;
    match answer.state {
        STATE_ACK | STATE_DONE if answer.operation != operation => Err(format!(
            "an answer to operation {} for a request of operation {operation}",
            answer.operation
        )),
        STATE_ACK if acked => Err("a second acknowledgement".into()),
        STATE_ACK => Ok(Verdict::Ack),
        STATE_DONE if payload.status != i64::from(STATUS_DONE) => Err(format!(
            "state 2 (completion) with status {}",
            payload.status
        )),
        STATE_DONE => match payload.token {
            None => Err("a completion without a token".into()),
            Some(token) if token.is_empty() => Err("a completion with an empty token".into()),
            Some(token) if token.len() > TOKEN_BYTES_MAX => Err(format!(
                "a token of {} bytes, over the {TOKEN_BYTES_MAX} a datagram can carry",
                token.len()
            )),
            Some(token) => Ok(Verdict::Granted(token.into_bytes())),
        },
        STATE_REQUEST | STATE_ERROR => Ok(Verdict::Refused(payload.message)),
        state => Err(format!("unknown state {state}")),
    }
}

/// The session thread's loop: one input at a time, in arrival order.
fn converse(
    socket: &UdpSocket,
    server: SocketAddr,
    session: &Session,
    inputs: &Receiver<Input>,
) -> Event {
    let stdout = io::stdout();
    let mut actions = Vec::new();
    loop {
        let Ok(input) = inputs.recv() else {
            return Event::Failed("chat: internal error: the input threads ended".into());
        };
        match input {
            Input::Stdin(Stdin::Line(line)) => session.on_line(&line, &mut actions),
            Input::Stdin(Stdin::LineTooLong) => session.on_line_too_long(&mut actions),
            Input::Stdin(Stdin::End) => session.on_input_end(&mut actions),
            Input::Text(text) => session.on_text(&text, &mut actions),
            Input::Stdin(Stdin::Failed(message)) | Input::ReceiveFailed(message) => {
                return Event::Failed(message)
            }
            Input::Stop => return Event::Ended,
        }
        for action in actions.drain(..) {
            match action {
                Action::Send(datagram) => {
                    // UDP: a failed send loses this datagram only; say so and go on.
                    if let Err(e) = socket.send_to(&datagram, server) {
                        eprintln!("chat: cannot send to {server}: {e}");
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
                Action::End => return Event::Ended,
            }
        }
    }
}

/// The socket thread: passes on the server's datagrams, ignores everyone else's.
fn receive(socket: &UdpSocket, server: SocketAddr, tx: &Sender<Input>) {
    let mut buf = vec![0u8; RECEIVE_BUFFER_BYTES];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if from == server => {
                if tx.send(Input::Text(buf[..n].to_vec())).is_err() {
                    // The session is over; nobody listens.
                    return;
                }
            }
            // Not from the server: anyone can send to a UDP port, and only the server speaks
            // for the room.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // An ICMP error for an earlier send, on systems that report it on an unconnected
            // socket: that datagram is lost, the socket is fine.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                let _ = tx.send(Input::ReceiveFailed(format!(
                    "chat: cannot receive from {server}: {e}"
                )));
                return;
            }
        }
    }
}

/// The stdin thread: one input per line, then the end of input.
fn read_lines(tx: &Sender<Input>) {
    // No line longer than a whole datagram can be sent, whatever the room and token.
    shell::read_lines(tx, DATAGRAM_BYTES_MAX, Input::Stdin);
}

/// What the session asks the I/O around it to do, in order.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// A whole datagram for the server.
    Send(Vec<u8>),
    /// A line for stdout, with its newline.
    Show(String),
    /// A line for stderr, without the `chat: ` prefix and newline.
    Note(String),
    /// The session is over, with exit status 0; any goodbye was sent just before.
    End,
}

/// What a datagram from the server says.
#[derive(Debug, PartialEq, Eq)]
enum Heard<'a> {
    /// Another member's message, or a member leaving: shown, nothing more.
    Chat,
    /// The server removed this member (idle, or deliveries failing): its own leave text.
    /// `closed` when the text also says the room is closed (this member was its host).
    Removed { closed: bool },
    /// The host left and the room is closed; the leave line and the closing line.
    RoomClosed(&'a str, &'a str),
}

/// The conversation, without I/O: lines and datagrams in, actions out.
struct Session {
    name: String,
    room: String,
    token: Vec<u8>,
    /// Replace control characters in received text (stdout is a terminal).
    sanitize: bool,
}

impl Session {
    fn new(name: String, room: String, token: Vec<u8>, sanitize: bool) -> Self {
        Session {
            name,
            room,
            token,
            sanitize,
        }
    }

    /// The most message bytes one datagram carries with this room and token.
    fn message_bytes_max(&self) -> usize {
        DATAGRAM_BYTES_MAX - DATAGRAM_HEADER_BYTES - self.room.len() - self.token.len()
    }

    /// The `exit` datagram. The room and token sizes were checked when they were accepted,
    /// so it always fits.
    fn goodbye(&self) -> Vec<u8> {
        encode_datagram(self.room.as_bytes(), &self.token, EXIT_MESSAGE).unwrap_or_default()
    }

    /// One typed line, without its line end.
    fn on_line(&self, line: &[u8], out: &mut Vec<Action>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let command = line.trim_ascii_end();
        if command == EXIT_MESSAGE || command == b"/quit" {
            self.leave(out);
            return;
        }
        // Sent as UTF-8: bytes that are not become U+FFFD here rather than garble everyone
        // else's decoding.
        let text = String::from_utf8_lossy(line);
        match encode_datagram(self.room.as_bytes(), &self.token, text.as_bytes()) {
            Ok(datagram) => out.push(Action::Send(datagram)),
            Err(_) => self.on_line_too_long(out),
        }
    }

    fn on_line_too_long(&self, out: &mut Vec<Action>) {
        out.push(Action::Note(format!(
            "line not sent: a message is at most {} bytes in this room (one datagram of \
             {DATAGRAM_BYTES_MAX} bytes with the room name and the token)",
            self.message_bytes_max()
        )));
    }

    fn on_input_end(&self, out: &mut Vec<Action>) {
        self.leave(out);
    }

    fn leave(&self, out: &mut Vec<Action>) {
        out.push(Action::Send(self.goodbye()));
        out.push(Action::End);
    }

    /// One datagram from the server.
    fn on_text(&self, datagram: &[u8], out: &mut Vec<Action>) {
        let text = String::from_utf8_lossy(datagram);
        match hear(&self.name, &self.room, &text) {
            Heard::Chat => out.push(self.glossed(&text)),
            Heard::Removed { closed } => {
                for line in text.split('\n') {
                    out.push(self.glossed(line));
                }
                out.push(Action::Note(format!(
                    "the server removed you from room {}{} (silent too long, or messages to \
                     you failed); run again to rejoin",
                    render(&self.room, true),
                    if closed { " and closed it" } else { "" }
                )));
                out.push(Action::End);
            }
            Heard::RoomClosed(left, closing) => {
                out.push(self.glossed(left));
                out.push(self.glossed(closing));
                out.push(Action::Note(format!(
                    "room {} is closed: its host left",
                    render(&self.room, true)
                )));
                out.push(Action::End);
            }
        }
    }
}

impl Session {
    /// One line of the server's text, with an English gloss when it is one of the server's
    /// own (Japanese) texts.
    fn glossed(&self, line: &str) -> Action {
        let mut shown_line = render(line, self.sanitize);
        let own = line == leave_text(&self.name, &self.room);
        let gloss = if own {
            Some(format!("the server removed you from {}", self.room))
        } else {
            gloss(&self.room, line)
        };
        if let Some(gloss) = gloss {
            shown_line.push_str("  (");
            shown_line.push_str(&render(&gloss, true));
            shown_line.push(')');
        }
        shown(shown_line)
    }
}

/// An English gloss of one line of the server's text in `room`, when it is one of the
/// server's own: a member's leave line, or the line saying the room closes. Any member can
/// send the same text as a message whose sender name ends the same way: the protocol cannot
/// tell them apart, and neither can the gloss.
fn gloss(room: &str, line: &str) -> Option<String> {
    let any_leave = leave_text("", room);
    let host_leave = host_leave_text("", room);
    let closing = host_leave
        .strip_prefix(&any_leave)
        .unwrap_or(&host_leave)
        .trim_start_matches('\n');
    if line == closing {
        return Some(format!("the host left, so room {room} is closed"));
    }
    let name = line.strip_suffix(&any_leave)?;
    (!name.is_empty() && !name.contains('\n')).then(|| format!("{name} left {room}"))
}

/// Why the server refused, in English, with its own message: a taken room name and a
/// missing room are told apart, with what to do about each.
fn explain_refusal(operation: Operation, room: &str, name: &str, message: &str) -> String {
    let room_shown = render(room, true);
    let name_shown = render(name, true);
    let why = if message == room_exists_message(room) {
        format!(
            "a room named {room_shown} already exists; join it with `chat ocm join \
             {room_shown} --name {name_shown}`, or create one with another name"
        )
    } else if message == room_missing_message(room) {
        format!(
            "no room is named {room_shown}; create it with `chat ocm create {room_shown} --name \
             {name_shown}`, or check the name"
        )
    } else if message == MESSAGE_FAILED {
        format!(
            "the server could not serve the request (it found it malformed, or could not {} \
             the room now); try again",
            operation.verb()
        )
    } else {
        "the server refused".into()
    };
    format!("{why} (the server said: {})", render_message(message))
}

/// Recognises the server's texts that end this session. A member's leave text
/// ([`leave_text`]) followed by the closing line ([`host_leave_text`]) is the host leaving and
/// the room closing; this member's own leave text is how the server says it was removed.
fn hear<'a>(name: &str, room: &str, text: &'a str) -> Heard<'a> {
    let own_leave = leave_text(name, room);
    if text == own_leave {
        return Heard::Removed { closed: false };
    }
    // What any member's leave line ends with, and the closing line with its line break.
    let any_leave = leave_text("", room);
    let host_leave = host_leave_text("", room);
    let closing = host_leave.strip_prefix(&any_leave).unwrap_or(&host_leave);
    if let Some(left) = text.strip_suffix(closing) {
        if left.ends_with(&any_leave) && !left.contains('\n') {
            if left == own_leave {
                return Heard::Removed { closed: true };
            }
            let last = text[left.len()..].trim_start_matches('\n');
            return Heard::RoomClosed(left, last);
        }
    }
    Heard::Chat
}

/// A line for stdout.
fn shown(mut line: String) -> Action {
    line.push('\n');
    Action::Show(line)
}

/// The server's TCRP message for one line of stderr: its line breaks (the 500 message has
/// one) as spaces, other control characters as U+FFFD.
fn render_message(message: &str) -> String {
    render(&message.replace('\n', " "), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    use switchboard::protocol::ocm::codec::encode_answer;

    const TOKEN: &str = "abababababababababababababababababababababababababababababababab";

    /// The answers of vectors/ocm-tcrp-answers.tsv, whole.
    const SUCCESS_CREATE: &str = "05010200000000000000000000000000000000000000000000000000000000b97b22737461747573223a203230322c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75356238635c75346538365c75333035375c75333037655c75333035375c75333035665c7533303032222c2022746f6b656e223a202261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162227d";
    const SUCCESS_JOIN: &str = "05020200000000000000000000000000000000000000000000000000000000b97b22737461747573223a203230322c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75356238635c75346538365c75333035375c75333037655c75333035375c75333035665c7533303032222c2022746f6b656e223a202261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162227d";
    const EXISTS: &str = "05010000000000000000000000000000000000000000000000000000000000677b22737461747573223a203430302c20226d657373616765223a20225c75393065385c7535633462206c6f626279205c75333036665c75333035395c75333036375c75333036625c75356235385c75353732385c75333035375c75333037655c7533303539227d";
    const MISSING: &str = "070200000000000000000000000000000000000000000000000000000000005d7b22737461747573223a203430302c20226d657373616765223a20225c75393065385c7535633462206e6f7768657265205c75333036665c75356235385c75353732385c75333035375c75333037655c75333035625c7533303933227d";
    const MALFORMED: &str = "01010300000000000000000000000000000000000000000000000000000000c87b22737461747573223a203530302c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75356238635c75346538365c75333036375c75333034645c75333037655c75333035625c75333039335c75333036375c75333035375c75333035665c75333030325c6e5c75353136355c75353239625c75333035375c75373666345c75333035375c75333036365c75333034665c75333036305c75333035355c75333034345c7533303032227d";
    const ACK: &str = "050101000000000000000000000000000000000000000000000000000000006c7b22737461747573223a203230302c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75353364375c75373430365c75333035375c75333037655c75333035375c75333035665c7533303032227d";
    /// vectors/ocm-tcrp-requests.tsv
    const REQUEST_CREATE: &str = "050100000000000000000000000000000000000000000000000000000000003c6c6f6262797b22757365725f6e616d65223a2022616c696365222c2022757365725f61646472657373223a205b223132372e302e302e31222c2034303030315d7d";
    const REQUEST_JOIN_JAPANESE: &str = "0902000000000000000000000000000000000000000000000000000000000043e983a8e5b18be4b8807b22757365725f6e616d65223a20225c75353932615c7539306365222c2022757365725f61646472657373223a205b223132372e302e302e31222c2034303030325d7d";

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn answer(hex: &str) -> TcrpAnswer {
        let mut buf = BytesMut::from(&unhex(hex)[..]);
        let answer = decode_answer(&mut buf, ANSWER_PAYLOAD_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty(), "one answer: {hex}");
        answer
    }

    fn session() -> Session {
        Session::new("alice".into(), "lobby".into(), TOKEN.into(), true)
    }

    fn datagram(message: &str) -> Vec<u8> {
        let mut d = vec![5, 64];
        d.extend_from_slice(b"lobby");
        d.extend_from_slice(TOKEN.as_bytes());
        d.extend_from_slice(message.as_bytes());
        d
    }

    fn line(s: &Session, text: &[u8]) -> Vec<Action> {
        let mut out = Vec::new();
        s.on_line(text, &mut out);
        out
    }

    fn text(s: &Session, text: &str) -> Vec<Action> {
        let mut out = Vec::new();
        s.on_text(text.as_bytes(), &mut out);
        out
    }

    fn show(text: &str) -> Action {
        Action::Show(format!("{text}\n"))
    }

    #[test]
    fn requests_match_the_vectors() {
        let udp = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(
            request(Operation::Create, "lobby", "alice", udp(40001)).unwrap(),
            unhex(REQUEST_CREATE)
        );
        assert_eq!(
            request(Operation::Join, "部屋一", "太郎", udp(40002)).unwrap(),
            unhex(REQUEST_JOIN_JAPANESE)
        );
    }

    #[test]
    fn completions_give_the_token() {
        let token = Verdict::Granted(TOKEN.as_bytes().to_vec());
        assert_eq!(judge(1, &answer(SUCCESS_CREATE), false), Ok(token));
        let token = Verdict::Granted(TOKEN.as_bytes().to_vec());
        assert_eq!(judge(2, &answer(SUCCESS_JOIN), true), Ok(token));
    }

    #[test]
    fn refusals_carry_the_message() {
        assert_eq!(
            judge(1, &answer(EXISTS), false),
            Ok(Verdict::Refused("部屋 lobby はすでに存在します".into()))
        );
        assert_eq!(
            judge(2, &answer(MISSING), false),
            Ok(Verdict::Refused("部屋 nowhere は存在しません".into()))
        );
        let Ok(Verdict::Refused(message)) = judge(1, &answer(MALFORMED), false) else {
            panic!("a 500 is a refusal");
        };
        assert_eq!(
            render_message(&message),
            "リクエストを完了できませんでした。 入力し直してください。"
        );
    }

    #[test]
    fn refusals_say_which_in_english() {
        let exists = explain_refusal(
            Operation::Create,
            "lobby",
            "alice",
            "部屋 lobby はすでに存在します",
        );
        assert!(
            exists.starts_with(
                "a room named lobby already exists; join it with `chat ocm join \
                 lobby --name alice`"
            ),
            "{exists}"
        );
        assert!(
            exists.ends_with("(the server said: 部屋 lobby はすでに存在します)"),
            "{exists}"
        );
        let missing = explain_refusal(
            Operation::Join,
            "nowhere",
            "bob",
            "部屋 nowhere は存在しません",
        );
        assert!(
            missing.starts_with(
                "no room is named nowhere; create it with `chat ocm create \
                 nowhere --name bob`"
            ),
            "{missing}"
        );
        let failed = explain_refusal(Operation::Join, "x", "bob", MESSAGE_FAILED);
        assert!(
            failed.contains("could not serve the request")
                && failed.contains("リクエストを完了できませんでした。 入力し直してください。"),
            "{failed}"
        );
        // Another room's message, or an unknown one, is not guessed at.
        let other = explain_refusal(Operation::Join, "x", "bob", "部屋 y は存在しません");
        assert_eq!(
            other,
            "the server refused (the server said: 部屋 y は存在しません)"
        );
    }

    #[test]
    fn an_acknowledgement_comes_once_before_the_answer() {
        assert_eq!(judge(1, &answer(ACK), false), Ok(Verdict::Ack));
        assert!(judge(1, &answer(ACK), true)
            .unwrap_err()
            .contains("second acknowledgement"));
    }

    #[test]
    fn malformed_answers_are_described() {
        let bad = |state: u8, json: &str| {
            let mut buf = BytesMut::from(&encode_answer(5, 1, state, json.as_bytes())[..]);
            let answer = decode_answer(&mut buf, ANSWER_PAYLOAD_BYTES_MAX)
                .unwrap()
                .unwrap();
            judge(1, &answer, false).unwrap_err()
        };
        assert!(bad(2, "not json").contains("not JSON"));
        assert!(bad(2, r#"{"status": 202, "message": "ok"}"#).contains("without a token"));
        assert!(bad(2, r#"{"status": 202, "message": "ok", "token": ""}"#).contains("empty"));
        let long = format!(
            r#"{{"status": 202, "message": "ok", "token": "{}"}}"#,
            "a".repeat(256)
        );
        assert!(bad(2, &long).contains("256 bytes"));
        assert!(bad(2, r#"{"status": 400, "message": "no", "token": "t"}"#).contains("400"));
        assert!(bad(7, r#"{"status": 400, "message": "no"}"#).contains("unknown state 7"));
        assert!(bad(0, r#"{"status": 400}"#).contains("message"));
        assert!(bad(0, "[1, 2]").contains("not an object"));

        // A completion of the other operation.
        let mut buf = BytesMut::from(&unhex(SUCCESS_JOIN)[..]);
        let join = decode_answer(&mut buf, ANSWER_PAYLOAD_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert!(judge(1, &join, false).unwrap_err().contains("operation 2"));

        // Bytes that are not UTF-8.
        let mut buf = BytesMut::from(&encode_answer(5, 1, 2, b"{\xff}")[..]);
        let answer = decode_answer(&mut buf, ANSWER_PAYLOAD_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert!(judge(1, &answer, false).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn an_oversized_answer_is_refused_from_its_header() {
        let mut header = vec![5, 1, 2];
        header.extend_from_slice(&[0xff; 29]);
        let mut buf = BytesMut::from(&header[..]);
        assert!(decode_answer(&mut buf, ANSWER_PAYLOAD_BYTES_MAX).is_err());
    }

    #[test]
    fn lines_become_datagrams_with_the_room_and_the_token() {
        let s = session();
        assert_eq!(
            line(&s, b"hello there"),
            [Action::Send(datagram("hello there"))]
        );
        assert_eq!(
            line(&s, "café ☕".as_bytes()),
            [Action::Send(datagram("café ☕"))]
        );
        assert_eq!(line(&s, b"a\xffb"), [Action::Send(datagram("a\u{fffd}b"))]);
        assert_eq!(
            line(&s, b" exit now"),
            [Action::Send(datagram(" exit now"))]
        );
        assert_eq!(line(&s, b"/who"), [Action::Send(datagram("/who"))]);
        assert_eq!(line(&s, b""), []);
        assert_eq!(line(&s, b" \t "), []);
    }

    #[test]
    fn exit_quit_and_end_of_input_send_exit() {
        let s = session();
        let leave = [Action::Send(datagram("exit")), Action::End];
        assert_eq!(line(&s, b"exit"), leave);
        assert_eq!(line(&s, b"exit  "), leave);
        assert_eq!(line(&s, b"/quit"), leave);
        let mut out = Vec::new();
        s.on_input_end(&mut out);
        assert_eq!(out, leave);
        assert_eq!(s.goodbye(), datagram("exit"));
    }

    #[test]
    fn lines_over_one_datagram_are_refused() {
        let s = session();
        let fits = 4096 - 2 - 5 - 64;
        assert_eq!(s.message_bytes_max(), fits);
        let most = "x".repeat(fits);
        let out = line(&s, most.as_bytes());
        assert!(matches!(&out[..], [Action::Send(d)] if d.len() == 4096));
        let out = line(&s, "x".repeat(fits + 1).as_bytes());
        assert!(
            matches!(&out[..], [Action::Note(n)] if n.contains(&format!("at most {fits} bytes"))),
            "{out:?}"
        );
        // U+FFFD takes three bytes where the invalid byte took one.
        let mut invalid = "x".repeat(fits - 1).into_bytes();
        invalid.push(0xff);
        assert!(matches!(&line(&s, &invalid)[..], [Action::Note(_)]));
        let mut out = Vec::new();
        s.on_line_too_long(&mut out);
        assert!(matches!(&out[..], [Action::Note(n)] if n.contains("line not sent")));
    }

    #[test]
    fn received_text_is_shown() {
        let s = session();
        assert_eq!(text(&s, "bob: hi"), [show("bob: hi")]);
        assert_eq!(
            text(&s, "bob: a\x1b[2J\nfake"),
            [show("bob: a\u{fffd}[2J\u{fffd}fake")]
        );
        assert_eq!(
            text(&s, "bob: a\tb\u{2066}c\u{200d}"),
            [show("bob: a\tb\u{fffd}c\u{fffd}")]
        );
        assert_eq!(
            text(&s, "bobがlobbyから退出しました。"),
            [show("bobがlobbyから退出しました。  (bob left lobby)")]
        );
        // Not a leave line: another room, nobody named, or more text after it.
        for other in [
            "bobがmainから退出しました。",
            "がlobbyから退出しました。",
            "bobがlobbyから退出しました。!",
        ] {
            assert_eq!(text(&s, other), [show(other)], "{other}");
        }
        let mut out = Vec::new();
        s.on_text(b"bob: \xff", &mut out);
        assert_eq!(out, [show("bob: \u{fffd}")]);

        let raw = Session::new("alice".into(), "lobby".into(), TOKEN.into(), false);
        assert_eq!(text(&raw, "bob: a\tb\x07"), [show("bob: a\tb\x07")]);
    }

    #[test]
    fn own_leave_text_means_removed() {
        let s = session();
        let out = text(&s, "aliceがlobbyから退出しました。");
        assert_eq!(
            out[0],
            show("aliceがlobbyから退出しました。  (the server removed you from lobby)")
        );
        assert!(matches!(&out[1], Action::Note(n) if n.contains("removed you from room lobby")));
        assert_eq!(out[2], Action::End);
        assert_eq!(out.len(), 3);

        // Not this member: another room, another name, or more text.
        for other in [
            "aliceがlobby2から退出しました。",
            "aliceがlobbyから退出しました。!",
        ] {
            assert_eq!(text(&s, other), [show(other)], "{other}");
        }
        // Someone else's leave line, glossed as such (the protocol cannot tell it from a
        // message).
        assert_eq!(
            text(&s, "malice: aliceがlobbyから退出しました。"),
            [show(
                "malice: aliceがlobbyから退出しました。  (malice: alice left lobby)"
            )]
        );
    }

    #[test]
    fn host_leave_closes_the_room() {
        let s = session();
        let out = text(
            &s,
            "carolがlobbyから退出しました。\nホストが退出したため、チャットルーム:lobbyを終了します。",
        );
        assert_eq!(
            out[..2],
            [
                show("carolがlobbyから退出しました。  (carol left lobby)"),
                show(
                    "ホストが退出したため、チャットルーム:lobbyを終了します。  (the host left, \
                     so room lobby is closed)"
                ),
            ]
        );
        assert_eq!(
            out[2],
            Action::Note("room lobby is closed: its host left".into())
        );
        assert_eq!(out[3], Action::End);
        assert_eq!(out.len(), 4);

        // The host's own removal, if the server sends it the whole text.
        let out = text(
            &s,
            "aliceがlobbyから退出しました。\nホストが退出したため、チャットルーム:lobbyを終了します。",
        );
        assert!(matches!(&out[2], Action::Note(n) if n.contains("and closed it")));
        assert_eq!(out.last(), Some(&Action::End));

        // Another room's closing, or a member quoting it, is only text.
        let other = "carolがmainから退出しました。\nホストが退出したため、チャットルーム:mainを終了します。";
        assert_eq!(text(&s, other), [show(&render(other, true))]);
        let quoted = "bob: x\nホストが退出したため、チャットルーム:lobbyを終了します。";
        assert_eq!(text(&s, quoted), [show(&render(quoted, true))]);
    }

    #[test]
    fn japanese_room_and_name_are_recognised() {
        let s = Session::new("太郎".into(), "部屋一".into(), TOKEN.into(), true);
        assert!(matches!(
            hear("太郎", "部屋一", "太郎が部屋一から退出しました。"),
            Heard::Removed { closed: false }
        ));
        let out = text(
            &s,
            "花子が部屋一から退出しました。\nホストが退出したため、チャットルーム:部屋一を終了します。",
        );
        assert_eq!(out.last(), Some(&Action::End));
    }

    #[test]
    fn room_and_user_names_are_checked() {
        assert!(parse_room_name("lobby").is_ok());
        assert!(parse_room_name("").is_err());
        assert!(parse_room_name(&"x".repeat(255)).is_ok());
        assert!(parse_room_name(&"x".repeat(256)).is_err());
        // 85 three-byte characters are 255 bytes; 86 are 258.
        assert!(parse_room_name(&"部".repeat(85)).is_ok());
        assert!(parse_room_name(&"部".repeat(86))
            .unwrap_err()
            .contains("258 bytes"));
        assert!(parse_user_name("alice").is_ok());
        assert!(parse_user_name("").is_err());
    }
}
