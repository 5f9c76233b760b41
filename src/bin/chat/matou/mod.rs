//! The MATOU client (protocol: the MATOU section of docs/PROTOCOLS.md, seed 003).
//!
//! MATOU is a public room with unique user names, plus private links that the server only
//! brokers: it tells each side the other's address, then messages and files go directly
//! between the two clients, on two TCP connections (one for messages, one for files) that the
//! requesting side (Src) listens for and the accepting side (Dst) opens.
//!
//! Threads, as in the other clients, because std cannot wait on several sockets and stdin at
//! once: one reads packets from the server, one reads lines from stdin, one turns signals into
//! events, and each private link has its own (see [`link`]). The session thread connects and
//! then owns the conversation: every packet to the server and every message to a peer, every
//! line printed, from one queue of inputs, in order. The decisions themselves are in
//! [`session::Session`], which does no I/O and is tested alone. The main thread only waits for
//! the event that ends the session, closes the connection and picks the exit status; a signal
//! goes to the session thread, which signs out, and main exits anyway if it does not manage to
//! within a second.

mod files;
mod link;
mod screen;
mod session;

use std::collections::{HashMap, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use clap::Args;
use switchboard::protocol::matou::codec::{decode_from_server, Limits, Packet};

use crate::conn::{self, Conn, TlsArgs};
use crate::hints::{self, Protocol};
use crate::input::display_addr;
use crate::shell::{self, Stdin};
use files::{Downloads, ReceiveLimits};
use link::{Link, LinkContext, Pending};
use screen::Screen;
use session::{own_name_problem, Action, LinkId, PeerEvent, Session};

/// Longest input line held in memory; anything longer is skipped whole. Far above the
/// 512-byte message limit, so that a long line gets a clear "too long" note rather than a
/// silent cut, while a runaway paste cannot grow memory.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// The largest string accepted from the server. Names (32 bytes) and messages (512) are far
/// below; an error's reason may be longer. Anything larger is taken as lost framing.
const SERVER_STRING_BYTES_MAX: usize = 64 * 1024;

const READ_BUFFER_BYTES: usize = 16 * 1024;

/// After a signal, how long the session thread may take to sign out; after the session ends,
/// how long it may take to finish the line it is printing. Bounded because it may be stuck
/// writing to a stdout nobody reads.
const SESSION_GRACE: Duration = Duration::from_secs(1);

pub const LONG_ABOUT: &str = "Join the MATOU public room, and talk and send files to other \
    users directly over private links.\n\n\
    Connects to the server with the name --user (ASCII letters and digits only, at most 32 \
    bytes); a note `connected as NAME` on stderr confirms it. A name that breaks a rule (empty, \
    too long, a character that is not an ASCII letter or digit) is refused before connecting, \
    with the rule it breaks (exit status 2); a name the server refuses is taken (another user, \
    of MATOU or of another protocol, has it): the client says so and exits with status 1, run \
    it again with another --user. Lines typed before the server has answered are held and \
    handled once it has.\n\n\
    Input, one line at a time on standard input:\n  \
      hello everyone     send `hello everyone` to everyone (at most 512 bytes, no control \
    characters; //TEXT sends a TEXT that starts with /)\n  \
      /private bob       ask bob for a private link\n  \
      /accept bob        accept bob's request for a private link\n  \
      /msg bob hi        send `hi` to bob over the private link\n  \
      /send bob PATH     send the file at PATH to bob over the private link\n  \
      /close bob         close the private link with bob\n  \
      /quit              leave\n  \
      /help              list the commands\n\
    End of input (Ctrl-D) leaves too, once the files being sent are done.\n\n\
    Output, on standard output:\n  \
      * bob joined                                  bob entered the room\n  \
      bob: hi                                       a public message\n  \
      * bob left                                    bob left the room\n  \
      * bob asks for a private link: /accept bob    a request; ignore it or accept it\n  \
      * private link with bob open: ...             the link is up\n  \
      bob (private): hi                             a private message from bob\n  \
      * bob is sending a file of 1048576 bytes      a file is arriving\n  \
      * received 1048576 bytes from bob: /home/alice/.local/share/switchboard/downloads/\
    from-bob-1.bin\n  \
      * sending 1048576 bytes to bob: PATH          and `* sent ...` when done\n  \
      * bob closed the private link                 bob signed out of the link\n\
    and on standard error:\n  \
      chat: error 4 (unknown user): ...             an ERROR from the server, with its code\n\
    plus notes on refused lines and failures. When standard output is a terminal, control \
    characters (tabs excepted), bidirectional controls and zero-width characters in received \
    text are shown as U+FFFD, so nobody can send escape sequences to your terminal or \
    disguise text. When standard error is a terminal, each running transfer has a progress \
    bar there, with its rate and the time left.\n\n\
    With chatd's switchboard on (its default), ROOM members, CCM users and members of the OCM \
    room `lobby` are in the public room too, and look exactly like MATOU users (`rui: hi`, \
    `* rui joined`): the wire does not say which protocol a name comes from. They cannot be \
    asked for a private link.\n\n\
    Private links: after /private bob and bob's /accept alice, the server gives alice bob's \
    address; alice listens on two new ports (messages, files) and the server passes them to \
    bob, whose client connects. Connections from any address but bob's are refused. Several \
    links may be open at once. Messages and files take separate connections and threads: a \
    file transfer never holds up messages, typing, or another transfer.\n\n\
    Files: MATOU sends no file name, so a received file is saved in --download-dir (created \
    if missing; by default the per-user data folder, $XDG_DATA_HOME/switchboard/downloads or \
    ~/.local/share/switchboard/downloads; `--download-dir downloads` uses the current \
    folder's) as from-NAME-N.bin, N counting on from the highest already there: never a name \
    from the network, never over an existing file. It is written under a temporary name and \
    renamed when complete; an incomplete transfer leaves nothing. A file announced larger \
    than --max-file-bytes, or one that would take a peer past --receive-files-max files or \
    --receive-bytes-max bytes in the session, is refused with a note before anything is \
    written, and closes the link (the protocol cannot refuse one file and keep the link).\n\n\
    Wrong port: another protocol's bytes, or no answer to the name within 5 seconds, get a \
    note naming the protocol that seems to answer; a refused connection suggests starting \
    chatd.\n\n\
    The session ends on end of input or /quit, Ctrl-C or SIGTERM (every private link and the \
    server are signed out of first; exit status 0), when the server closes the connection \
    (exit status 0, with a message on stderr), or on a connection error, a refused name or a \
    malformed packet from the server (exit status 1). A malformed packet from a peer closes \
    only that private link.";

/// Arguments of `chat matou`.
#[derive(Args, Debug)]
pub struct MatouArgs {
    /// Your user name: ASCII letters and digits, at most 32 bytes
    #[arg(long, value_parser = parse_user_name)]
    user: String,

    /// Server host name or IP address
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Server TCP port of the MATOU protocol
    #[arg(long, default_value_t = 7777, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,

    /// Folder for received files, created when the first file arrives [default: the per-user
    /// data folder, $XDG_DATA_HOME/switchboard/downloads or
    /// ~/.local/share/switchboard/downloads; `--download-dir downloads` for the current
    /// folder's]
    #[arg(long, value_name = "DIR")]
    download_dir: Option<PathBuf>,

    /// Largest file accepted from a peer, in bytes; a larger announcement closes the link
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 30)]
    max_file_bytes: u64,

    /// Most files accepted from one peer in a session; the next one is refused and closes the
    /// link
    #[arg(long, value_name = "FILES", default_value_t = 1000)]
    receive_files_max: u64,

    /// Most bytes accepted from one peer in a session, all files together; a file that would
    /// pass it is refused and closes the link
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 30)]
    receive_bytes_max: u64,

    /// Milliseconds without an answer to the name before the wrong-port note (tests make it
    /// short)
    #[arg(long, default_value_t = 5000, hide = true)]
    silence_hint_ms: u64,

    #[command(flatten)]
    tls: TlsArgs,
}

/// Refuses, before any connection is made, a name the server would refuse.
fn parse_user_name(name: &str) -> Result<String, String> {
    match own_name_problem(name) {
        Some(problem) => Err(problem),
        None => Ok(name.to_string()),
    }
}

/// A signal is passed to the session thread, which signs out and ends with [`Event::Ended`].
type Event = shell::Event;

/// What the session thread waits for.
enum Input {
    /// Standard input: a line typed, or its end.
    Stdin(Stdin),
    Signal,
    Packet(Packet),
    /// The server closed the connection (or it was shut down from our side).
    ServerClosed,
    /// Reading failed or the server sent a malformed packet; the text is shown as is.
    ServerFailed(String),
    /// The time a MATOU server takes to answer the name has passed.
    SilenceHintDue,
    /// As Src, the ports of a link are open (or could not be).
    Listening {
        id: LinkId,
        ports: Result<(u16, u16), String>,
    },
    LinkUp {
        id: LinkId,
        message: TcpStream,
        file: TcpStream,
    },
    LinkFailed {
        id: LinkId,
        problem: String,
    },
    Peer {
        id: LinkId,
        event: PeerEvent,
    },
}

pub fn run(args: MatouArgs) -> ExitCode {
    let (input_tx, input_rx) = mpsc::channel();
    let inputs = input_tx.clone();
    let forward = move || {
        let _ = input_tx.send(Input::Signal);
    };
    shell::run(
        move |tx| session(args, tx, inputs, &input_rx),
        shell::Finish {
            grace: SESSION_GRACE,
            forward_signal: Some(&forward),
            joined_end: &|_, _| {},
        },
    )
}

/// The session thread: connects, asks for the name, starts the socket and stdin readers, then
/// handles their inputs until one ends the session. Returns that end.
fn session(
    args: MatouArgs,
    tx: &Sender<Event>,
    inputs: Sender<Input>,
    input_rx: &Receiver<Input>,
) -> Event {
    let addr = display_addr(&args.host, args.port);
    let connected = conn::connect(&args.host, args.port, &addr, &args.tls, |e| {
        hints::connect_failed(&addr, Protocol::Matou, e)
    });
    let stream = match connected {
        Ok(stream) => stream,
        Err(message) => return Event::Failed(message),
    };
    // Packets are small and each should leave at once. Failing to set it only costs latency.
    let _ = stream.set_nodelay(true);
    // Private links listen on the address the server sees us on: it is the one it gives the
    // peer.
    let local_ip = match stream.local_addr() {
        Ok(local) => local.ip(),
        Err(e) => return Event::Failed(format!("chat: connection to {addr} lost: {e}")),
    };
    let stream = Arc::new(stream);
    if tx.send(Event::Connected(Arc::clone(&stream))).is_err() {
        return Event::SessionDone;
    }

    let mut session = Session::new(args.user.clone(), io::stdout().is_terminal());
    if let Err(e) = (&*stream).write_all(&session.connect_request()) {
        return Event::Failed(format!("chat: cannot send the name to {addr}: {e}"));
    }

    let port = args.port;
    let reader = {
        let (stream, inputs, addr) = (Arc::clone(&stream), inputs.clone(), addr.clone());
        thread::Builder::new()
            .name("socket".into())
            .spawn(move || read_packets(&stream, &inputs, &addr, port))
    };
    if let Err(e) = reader {
        return Event::Failed(format!("chat: cannot start the socket thread: {e}"));
    }
    let lines = {
        let inputs = inputs.clone();
        thread::Builder::new()
            .name("stdin".into())
            .spawn(move || read_lines(&inputs))
    };
    if let Err(e) = lines {
        return Event::Failed(format!("chat: cannot start the input thread: {e}"));
    }

    let screen = Arc::new(Screen::new(io::stderr().is_terminal()));
    // The timer of the wrong-port note: a thread that waits, since the session thread waits
    // on its queue only. Failing to start it only loses the note.
    let silence_hint = Duration::from_millis(args.silence_hint_ms);
    let timer_inputs = inputs.clone();
    let _ = thread::Builder::new()
        .name("hint-timer".into())
        .spawn(move || {
            thread::sleep(silence_hint);
            let _ = timer_inputs.send(Input::SilenceHintDue);
        });
    let mut io = Io {
        server: stream,
        addr,
        port,
        local_ip,
        context: LinkContext {
            tx: inputs,
            screen,
            downloads: Arc::new(Downloads::new(
                args.download_dir.clone().map(Ok).unwrap_or_else(|| {
                    files::default_download_dir(
                        std::env::var_os("XDG_DATA_HOME").as_deref(),
                        std::env::var_os("HOME").as_deref(),
                    )
                }),
                ReceiveLimits {
                    files_max: args.receive_files_max,
                    bytes_max: args.receive_bytes_max,
                },
            )),
            max_file_bytes: args.max_file_bytes,
        },
        pending: HashMap::new(),
        links: HashMap::new(),
        later: VecDeque::new(),
    };
    let end = converse(&mut io, &mut session, input_rx);
    io.close_all();
    end
}

/// The session's I/O: the server connection and the private links.
struct Io {
    server: Arc<Conn>,
    addr: String,
    /// The server's port, for the wrong-port notes.
    port: u16,
    local_ip: IpAddr,
    context: LinkContext,
    /// Links being set up.
    pending: HashMap<LinkId, Pending>,
    links: HashMap<LinkId, Link>,
    /// Inputs the I/O itself produced (a port opened, a write failed), handled before the
    /// next one from the channel.
    later: VecDeque<Input>,
}

/// The session thread's loop: one input at a time, in arrival order.
fn converse(io: &mut Io, session: &mut Session, inputs: &Receiver<Input>) -> Event {
    let mut actions = Vec::new();
    loop {
        let input = match io.later.pop_front() {
            Some(input) => input,
            None => match inputs.recv() {
                Ok(input) => input,
                Err(_) => {
                    return Event::Failed("chat: internal error: the input threads ended".into())
                }
            },
        };
        match input {
            Input::Stdin(Stdin::Line(line)) => session.on_line(&line, &mut actions),
            Input::Stdin(Stdin::LineTooLong) => session.on_line_too_long(&mut actions),
            Input::Stdin(Stdin::End) => session.on_input_end(&mut actions),
            Input::Signal => session.on_signal(&mut actions),
            Input::Packet(packet) => session.on_server(packet, &mut actions),
            Input::Stdin(Stdin::Failed(message)) | Input::ServerFailed(message) => {
                return Event::Failed(message)
            }
            Input::ServerClosed => {
                if !session.joined() {
                    io.context.screen.err(&format!(
                        "chat: the server closed the connection before answering the name: is \
                         port {} the MATOU port? (7777 by default)",
                        io.port
                    ));
                }
                return Event::closed_by_server();
            }
            Input::SilenceHintDue => {
                if !session.joined() {
                    io.context.screen.err(&format!(
                        "chat: {}",
                        hints::silent(io.port, Protocol::Matou, "answers the name at once")
                    ));
                }
            }
            Input::Listening { id, ports } => session.on_listening(id, ports, &mut actions),
            Input::LinkUp { id, message, file } => {
                if io.link_up(id, message, file) {
                    session.on_link_up(id, &mut actions);
                }
            }
            Input::LinkFailed { id, problem } => {
                io.pending.remove(&id);
                session.on_link_failed(id, &problem, &mut actions);
            }
            Input::Peer { id, event } => session.on_peer(id, event, &mut actions),
        }
        for action in actions.drain(..) {
            if let Some(end) = io.execute(action) {
                return end;
            }
        }
    }
}

impl Io {
    /// Carries out one action; returns the end of the session if it is one.
    fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Send(packet) => {
                if let Err(e) = (&*self.server).write_all(&packet) {
                    return Some(Event::Failed(format!(
                        "chat: connection to {} lost: {e}",
                        self.addr
                    )));
                }
            }
            Action::Show(line) => {
                if let Err(e) = self.context.screen.out(&line) {
                    return Some(Event::Failed(format!(
                        "chat: cannot write to standard output: {e}"
                    )));
                }
            }
            Action::Note(note) => self.context.screen.err(&format!("chat: {note}")),
            Action::Listen { id, peer, peer_ip } => {
                let listened = link::listen(id, &peer, self.local_ip, peer_ip, &self.context.tx);
                let ports = match listened {
                    Ok((ports, pending)) => {
                        self.pending.insert(id, pending);
                        Ok(ports)
                    }
                    Err(e) => Err(format!("cannot listen on {}: {e}", self.local_ip)),
                };
                self.later.push_back(Input::Listening { id, ports });
            }
            Action::Connect {
                id,
                peer,
                message,
                file,
            } => match link::connect(id, &peer, message, file, &self.context.tx) {
                Ok(pending) => {
                    self.pending.insert(id, pending);
                }
                Err(e) => self.later.push_back(Input::LinkFailed {
                    id,
                    problem: format!("cannot start a thread: {e}"),
                }),
            },
            Action::PeerSend { id, packet } => {
                if let Some(link) = self.links.get(&id) {
                    if let Err(e) = link.send_message(&packet) {
                        let problem = if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) {
                            format!(
                                "the peer took no message for {}s",
                                link::MESSAGE_WRITE_TIMEOUT.as_secs()
                            )
                        } else {
                            format!("cannot send a private message: {e}")
                        };
                        let event = PeerEvent::Failed(problem);
                        self.later.push_back(Input::Peer { id, event });
                    }
                }
            }
            Action::SendFile { id, path } => {
                if let Some(link) = self.links.get(&id) {
                    if let Err(reason) = link.queue_file(&path) {
                        let event = PeerEvent::SendRefused { path, reason };
                        self.later.push_back(Input::Peer { id, event });
                    }
                }
            }
            Action::CloseLink(id) => {
                if let Some(pending) = self.pending.remove(&id) {
                    pending.cancel();
                }
                if let Some(link) = self.links.remove(&id) {
                    link.close();
                }
            }
            Action::Quit => return Some(Event::Ended),
            Action::Fail(problem) => return Some(Event::Failed(format!("chat: {problem}"))),
        }
        None
    }

    /// Both connections of a link are up: starts its threads. False when the link was
    /// closed meanwhile (its connections are dropped) or its threads could not start.
    fn link_up(&mut self, id: LinkId, message: TcpStream, file: TcpStream) -> bool {
        let Some(pending) = self.pending.remove(&id) else {
            return false;
        };
        match Link::start(id, &pending.peer, message, file, &self.context) {
            Ok(link) => {
                self.links.insert(id, link);
                true
            }
            Err(e) => {
                self.later.push_back(Input::LinkFailed {
                    id,
                    problem: format!("cannot start the link's threads: {e}"),
                });
                false
            }
        }
    }

    fn close_all(&mut self) {
        for (_, pending) in self.pending.drain() {
            pending.cancel();
        }
        for (_, link) in self.links.drain() {
            link.close();
        }
    }
}

/// The socket thread: cuts packets from the stream; its last input is always an end.
fn read_packets(stream: &Conn, tx: &Sender<Input>, addr: &str, port: u16) {
    let end = receive(stream, tx, addr, port);
    let _ = tx.send(end);
}

fn receive(stream: &Conn, tx: &Sender<Input>, addr: &str, port: u16) -> Input {
    let mut decoded_any = false;
    let limits = Limits {
        string_bytes_max: SERVER_STRING_BYTES_MAX,
        file_bytes_max: 0,
    };
    let mut pending = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        loop {
            match decode_from_server(&mut pending, &limits) {
                Ok(Some(packet)) => {
                    decoded_any = true;
                    if tx.send(Input::Packet(packet)).is_err() {
                        // The session is over; nobody listens.
                        return Input::ServerClosed;
                    }
                }
                Ok(None) => break,
                // Framing is lost: nothing after this can be trusted.
                Err(e) => {
                    // Garbage from the start is most likely another protocol's server.
                    let hint = if decoded_any {
                        String::new()
                    } else {
                        format!(
                            "\nchat: {}",
                            hints::answered_like(port, Protocol::Matou, &pending)
                        )
                    };
                    return Input::ServerFailed(format!(
                        "chat: malformed packet from the server: {e}{hint}"
                    ));
                }
            }
        }
        match shell::read_more(stream, &mut buf, &mut pending, addr) {
            Ok(true) => {}
            Ok(false) => return Input::ServerClosed,
            Err(why) => return Input::ServerFailed(why),
        }
    }
}

/// The stdin thread: one input per line, then the end of input.
fn read_lines(tx: &Sender<Input>) {
    shell::read_lines(tx, MAX_LINE_BYTES, Input::Stdin);
}
