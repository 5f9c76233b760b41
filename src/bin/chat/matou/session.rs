//! The MATOU conversation without I/O: typed lines, server packets and private-link events in,
//! actions out. Everything the client decides is here and is tested alone; the threads around
//! it only move bytes.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use bytes::Bytes;
use switchboard::protocol::matou::codec::{self, ErrorCode, Packet};

pub(super) use crate::text::render;

/// The contract's limits on what a client sends.
pub(super) const NAME_BYTES_MAX: usize = 32;
pub(super) const MESSAGE_BYTES_MAX: usize = 512;

/// Lines typed before the server has accepted the name are held, then handled; beyond this
/// many they are refused with a note.
const HELD_LINES_MAX: usize = 1_000;

/// How many closed links are remembered for the late news of their transfers.
const CLOSED_LINKS_KEPT: usize = 64;

/// Identifies one private link for its whole life, so that a late event from a closed link is
/// never taken for one of a newer link with the same peer.
pub(super) type LinkId = u64;

/// What the session asks the I/O around it to do, in order.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// A whole packet for the server.
    Send(Bytes),
    /// A line for stdout, with its newline.
    Show(String),
    /// A line for stderr, without the `chat: ` prefix and newline.
    Note(String),
    /// As Src: listen on two new ports for `peer`, whose IP the server gave, then report the
    /// ports (or the failure) with [`Session::on_listening`].
    Listen {
        id: LinkId,
        peer: String,
        peer_ip: IpAddr,
    },
    /// As Dst: connect to Src's message port, then its file port.
    Connect {
        id: LinkId,
        peer: String,
        message: SocketAddr,
        file: SocketAddr,
    },
    /// A whole packet for the link's message connection.
    PeerSend { id: LinkId, packet: Bytes },
    /// Queue a file on the link's file connection.
    SendFile { id: LinkId, path: PathBuf },
    /// Close both connections of the link (or stop setting it up).
    CloseLink(LinkId),
    /// The session is over (sign-outs were sent just before): exit status 0.
    Quit,
    /// The session ends with exit status 1; the text is shown after `chat: `.
    Fail(String),
}

/// What happens on a private link, reported by its threads.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PeerEvent {
    /// A PRIVATE_MESSAGE.
    Message(Bytes),
    /// A PRIVATE_SIGN_OUT.
    SignOut,
    /// The message connection ended without a sign-out.
    Closed,
    /// Bad input or an I/O error: the link cannot go on. The text says what happened.
    Failed(String),
    /// As Src, someone other than the peer connected to a port of the link; refused.
    Stranger(SocketAddr),
    /// A file announced on the file connection, `size` bytes.
    FileIncoming(u64),
    FileReceived {
        size: u64,
        path: PathBuf,
    },
    /// An incoming file did not arrive whole; its partial file is removed. `fatal`: the file
    /// connection cannot be used any more, so the link closes.
    FileFailed {
        reason: String,
        fatal: bool,
    },
    /// A file queued with [`Action::SendFile`] could not even start (cannot open it, not a
    /// regular file); the link is fine.
    SendRefused {
        path: PathBuf,
        reason: String,
    },
    SendStarted {
        size: u64,
        path: PathBuf,
    },
    /// The end of a file being sent. An error leaves the file connection mid-file, so the
    /// link closes.
    SendEnded {
        size: u64,
        path: PathBuf,
        result: Result<(), String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// As Src: listening, the ports sent or about to be.
    Listening,
    /// As Dst: connecting to Src's ports.
    Connecting,
    Open,
}

#[derive(Debug)]
struct Link {
    id: LinkId,
    peer: String,
    phase: Phase,
    /// Files queued or being sent on this link.
    sending: usize,
}

#[derive(Debug)]
enum State {
    /// CONNECT_REQUEST is out and unanswered.
    Joining {
        /// Lines typed meanwhile, handled once the name is accepted.
        held: Vec<Vec<u8>>,
        /// Input ended meanwhile: leave once the held lines are handled.
        input_ended: bool,
    },
    Joined,
}

/// A typed line, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Command<'a> {
    Public(&'a str),
    Private(&'a str),
    Accept(&'a str),
    Msg(&'a str, &'a str),
    Send(&'a str, &'a str),
    Close(&'a str),
    Quit,
    Help,
}

pub(super) const HELP: &str = "\
commands:
  TEXT               send TEXT to everyone (//TEXT sends a TEXT that starts with /)
  /private bob       ask bob for a private link
  /accept bob        accept bob's request for a private link
  /msg bob TEXT      send TEXT to bob over the private link
  /send bob PATH     send the file at PATH to bob over the private link
  /close bob         close the private link with bob
  /quit              leave (end of input does the same, once the files being sent are done)
  /help              this list
";

/// The conversation, without I/O.
pub(super) struct Session {
    name: String,
    /// Replace control characters in received text (stdout is a terminal).
    sanitize: bool,
    state: State,
    /// Names we sent PRIVATE_REQUEST to, until the server gives their address.
    requested: BTreeSet<String>,
    /// Names that asked us for a private link, until we accept.
    asked: BTreeSet<String>,
    /// Names we sent PRIVATE_ACCEPT to, until the server gives their address and ports.
    accepted: BTreeSet<String>,
    links: Vec<Link>,
    /// The most recently closed links, for the late news of their transfers.
    closed: VecDeque<(LinkId, String)>,
    next_id: LinkId,
    /// End of input came while files were being sent: leave when the last one is done.
    leaving: bool,
}

impl Session {
    pub(super) fn new(name: String, sanitize: bool) -> Self {
        Session {
            name,
            sanitize,
            state: State::Joining {
                held: Vec::new(),
                input_ended: false,
            },
            requested: BTreeSet::new(),
            asked: BTreeSet::new(),
            accepted: BTreeSet::new(),
            links: Vec::new(),
            closed: VecDeque::new(),
            next_id: 1,
            leaving: false,
        }
    }

    /// Whether the server has accepted the name.
    pub(super) fn joined(&self) -> bool {
        matches!(self.state, State::Joined)
    }

    /// The first packet of the connection.
    pub(super) fn connect_request(&self) -> Bytes {
        codec::connect_request(self.name.as_bytes())
    }

    // ---- typed lines ----

    /// One typed line, without its line end.
    pub(super) fn on_line(&mut self, line: &[u8], out: &mut Vec<Action>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if let State::Joining { held, .. } = &mut self.state {
            if held.len() < HELD_LINES_MAX {
                held.push(line.to_vec());
            } else {
                out.push(Action::Note(format!(
                    "line not handled: {HELD_LINES_MAX} lines already wait for the server to \
                     accept the name"
                )));
            }
            return;
        }
        // Strings are UTF-8 on the wire: bytes that are not become U+FFFD here.
        let line = String::from_utf8_lossy(line);
        match parse_command(&line) {
            Ok(command) => self.on_command(command, out),
            Err(problem) => out.push(Action::Note(problem)),
        }
    }

    pub(super) fn on_line_too_long(&mut self, out: &mut Vec<Action>) {
        out.push(Action::Note(format!(
            "line longer than {} bytes not sent: a message is at most {MESSAGE_BYTES_MAX} bytes",
            super::MAX_LINE_BYTES
        )));
    }

    fn on_command(&mut self, command: Command<'_>, out: &mut Vec<Action>) {
        match command {
            Command::Public(text) => {
                if let Some(problem) = message_problem(text) {
                    out.push(Action::Note(format!("message not sent: {problem}")));
                } else {
                    out.push(Action::Send(codec::public_message(text.as_bytes())));
                }
            }
            Command::Private(peer) => self.request(peer, out),
            Command::Accept(peer) => self.accept(peer, out),
            Command::Msg(peer, text) => {
                if let Some(problem) = message_problem(text) {
                    out.push(Action::Note(format!("message not sent: {problem}")));
                    return;
                }
                match self.open_link(peer) {
                    Ok(id) => out.push(Action::PeerSend {
                        id,
                        packet: codec::private_message(text.as_bytes()),
                    }),
                    Err(problem) => out.push(Action::Note(format!("message not sent: {problem}"))),
                }
            }
            Command::Send(peer, path) => match self.open_link(peer) {
                Ok(id) => {
                    // open_link just found or made it; should it be gone, say so, not panic.
                    let Some(link) = self.link_mut(id) else {
                        out.push(Action::Note(format!("file not sent: no link to {peer}")));
                        return;
                    };
                    if link.sending > 0 {
                        out.push(Action::Note(format!(
                            "{path} queued: it goes once the {} file(s) before it to {peer} \
                             are sent",
                            link.sending
                        )));
                    }
                    link.sending += 1;
                    out.push(Action::SendFile {
                        id,
                        path: PathBuf::from(path),
                    });
                }
                Err(problem) => out.push(Action::Note(format!("file not sent: {problem}"))),
            },
            Command::Close(peer) => self.close(peer, out),
            Command::Quit => self.leave(out),
            Command::Help => out.push(Action::Show(HELP.into())),
        }
    }

    fn request(&mut self, peer: &str, out: &mut Vec<Action>) {
        if peer == self.name {
            out.push(Action::Note(
                "a private link is with someone else, not yourself".into(),
            ));
        } else if self.link_with(peer).is_some() {
            out.push(Action::Note(format!(
                "there is already a private link with {peer}: /msg {peer} TEXT, /send {peer} \
                 PATH, /close {peer}"
            )));
        } else {
            self.requested.insert(peer.to_owned());
            out.push(Action::Send(codec::private_request(peer.as_bytes())));
            out.push(Action::Note(format!(
                "asked {peer} for a private link; waiting for {peer} to accept"
            )));
        }
    }

    fn accept(&mut self, peer: &str, out: &mut Vec<Action>) {
        if self.link_with(peer).is_some() {
            out.push(Action::Note(format!(
                "there is already a private link with {peer}"
            )));
        } else if self.asked.remove(peer) {
            self.accepted.insert(peer.to_owned());
            out.push(Action::Send(codec::private_accept(peer.as_bytes())));
        } else {
            out.push(Action::Note(format!(
                "{peer} has not asked for a private link (or has left since)"
            )));
        }
    }

    fn close(&mut self, peer: &str, out: &mut Vec<Action>) {
        let forgotten = self.requested.remove(peer) | self.accepted.remove(peer);
        let Some(at) = self.links.iter().position(|l| l.peer == peer) else {
            if !forgotten {
                out.push(Action::Note(format!("no private link with {peer}")));
            }
            return;
        };
        let link = self.links.remove(at);
        if link.phase == Phase::Open {
            out.push(Action::PeerSend {
                id: link.id,
                packet: codec::private_sign_out(),
            });
        }
        out.push(Action::CloseLink(link.id));
        abandoned(&link, out);
        out.push(shown(format!("* private link with {peer} closed")));
        self.leave_if_done(out);
    }

    /// End of input: leave now, or once the name is accepted (held lines first), or once the
    /// files being sent are done.
    pub(super) fn on_input_end(&mut self, out: &mut Vec<Action>) {
        match &mut self.state {
            State::Joining { input_ended, .. } => *input_ended = true,
            State::Joined => {
                let sending: usize = self.links.iter().map(|l| l.sending).sum();
                if sending == 0 {
                    self.leave(out);
                } else {
                    self.leaving = true;
                    out.push(Action::Note(format!(
                        "end of input: leaving once the {sending} file(s) being sent are done \
                         (Ctrl-C leaves now)"
                    )));
                }
            }
        }
    }

    /// SIGINT or SIGTERM: sign out now, transfers or not.
    pub(super) fn on_signal(&mut self, out: &mut Vec<Action>) {
        match self.state {
            // Nothing to sign out from yet.
            State::Joining { .. } => out.push(Action::Quit),
            State::Joined => self.leave(out),
        }
    }

    /// Signs out of every private link and of the server.
    fn leave(&mut self, out: &mut Vec<Action>) {
        for link in self.links.drain(..) {
            if link.phase == Phase::Open {
                out.push(Action::PeerSend {
                    id: link.id,
                    packet: codec::private_sign_out(),
                });
            }
            out.push(Action::CloseLink(link.id));
            abandoned(&link, out);
        }
        out.push(Action::Send(codec::public_sign_out()));
        out.push(Action::Quit);
    }

    fn leave_if_done(&mut self, out: &mut Vec<Action>) {
        if self.leaving && self.links.iter().all(|l| l.sending == 0) {
            self.leaving = false;
            self.leave(out);
        }
    }

    // ---- the server ----

    /// One packet from the server.
    pub(super) fn on_server(&mut self, packet: Packet, out: &mut Vec<Action>) {
        match packet {
            Packet::ConnectResponse { accepted } => self.on_connect_response(accepted, out),
            Packet::ConnectNotify { username } => {
                let name = self.text(&username);
                out.push(shown(format!("* {name} joined")));
            }
            Packet::PublicBroadcast { username, message } => {
                let line = format!("{}: {}", self.text(&username), self.text(&message));
                out.push(shown(line));
            }
            Packet::SignOutNotify { username } => {
                let name = String::from_utf8_lossy(&username).into_owned();
                // The server drops pending requests involving whoever left.
                self.requested.remove(&name);
                self.asked.remove(&name);
                self.accepted.remove(&name);
                out.push(shown(format!("* {} left", self.text(&username))));
            }
            Packet::Error { code, reason } => out.push(Action::Note(error_line(code, &reason))),
            Packet::PrivateRequestNotify { username } => {
                let Some(peer) = self.peer_name(&username, "PRIVATE_REQUEST_NOTIFY", out) else {
                    return;
                };
                out.push(shown(format!(
                    "* {peer} asks for a private link: /accept {peer}"
                )));
                self.asked.insert(peer);
            }
            Packet::PrivateDstAddress { username, address } => {
                let Some(peer) = self.peer_name(&username, "PRIVATE_DST_ADDRESS", out) else {
                    return;
                };
                let Some(peer_ip) = ip_from(&address) else {
                    out.push(Action::Note(format!(
                        "ignored PRIVATE_DST_ADDRESS for {peer}: bad address"
                    )));
                    return;
                };
                if self.link_with(&peer).is_some() || !self.requested.remove(&peer) {
                    out.push(Action::Note(format!(
                        "ignored PRIVATE_DST_ADDRESS for {peer}: no private link was asked of \
                         {peer}"
                    )));
                    return;
                }
                let id = self.new_link(&peer, Phase::Listening);
                out.push(Action::Listen { id, peer, peer_ip });
            }
            Packet::PrivateSrcAddress {
                username,
                address,
                message_port,
                file_port,
            } => {
                let Some(peer) = self.peer_name(&username, "PRIVATE_SRC_ADDRESS", out) else {
                    return;
                };
                let (Some(ip), Some(message_port), Some(file_port)) =
                    (ip_from(&address), port(message_port), port(file_port))
                else {
                    out.push(Action::Note(format!(
                        "ignored PRIVATE_SRC_ADDRESS for {peer}: bad address or port"
                    )));
                    return;
                };
                if self.link_with(&peer).is_some() || !self.accepted.remove(&peer) {
                    out.push(Action::Note(format!(
                        "ignored PRIVATE_SRC_ADDRESS for {peer}: no private link with {peer} \
                         was accepted"
                    )));
                    return;
                }
                let id = self.new_link(&peer, Phase::Connecting);
                out.push(Action::Connect {
                    id,
                    peer,
                    message: SocketAddr::new(ip, message_port),
                    file: SocketAddr::new(ip, file_port),
                });
            }
            // The codec's server decoder yields no client-to-server or peer packet.
            other => out.push(Action::Note(format!(
                "ignored a packet of type {} from the server",
                other.packet_type()
            ))),
        }
    }

    fn on_connect_response(&mut self, accepted: bool, out: &mut Vec<Action>) {
        let State::Joining { held, input_ended } = &mut self.state else {
            out.push(Action::Note(
                "ignored a second CONNECT_RESPONSE from the server".into(),
            ));
            return;
        };
        if !accepted {
            // The name passed every rule the server has before it was sent (see
            // `own_name_problem`), so what is left is that somebody has it.
            out.push(Action::Fail(format!(
                "the server refused the name {}: it is taken (another user, of MATOU or of \
                 another protocol, has it); run again with another --user",
                self.name
            )));
            return;
        }
        let held = std::mem::take(held);
        let input_ended = *input_ended;
        self.state = State::Joined;
        out.push(Action::Note(format!("connected as {}", self.name)));
        for line in held {
            self.on_line(&line, out);
            if out.last() == Some(&Action::Quit) {
                return;
            }
        }
        if input_ended {
            self.on_input_end(out);
        }
    }

    /// A peer's name from the server, checked as the server checks ours: it becomes part of
    /// commands, notes and file names.
    fn peer_name(&self, name: &[u8], packet: &str, out: &mut Vec<Action>) -> Option<String> {
        match std::str::from_utf8(name)
            .ok()
            .filter(|name| name_problem(name).is_none())
        {
            Some(name) => Some(name.to_owned()),
            None => {
                out.push(Action::Note(format!(
                    "ignored {packet} from the server: {} is not a valid user name",
                    render(&String::from_utf8_lossy(name), true)
                )));
                None
            }
        }
    }

    // ---- private links ----

    /// As Src, the ports are open (or could not be).
    pub(super) fn on_listening(
        &mut self,
        id: LinkId,
        ports: Result<(u16, u16), String>,
        out: &mut Vec<Action>,
    ) {
        let Some(link) = self.link_mut(id) else {
            return;
        };
        match ports {
            Ok((message_port, file_port)) => {
                let peer = link.peer.clone();
                out.push(Action::Send(codec::private_src_ports(
                    peer.as_bytes(),
                    i32::from(message_port),
                    i32::from(file_port),
                )));
            }
            Err(problem) => {
                let peer = link.peer.clone();
                self.remove_link(id);
                out.push(Action::Note(format!(
                    "cannot open the private link with {peer}: {problem}"
                )));
            }
        }
    }

    /// Both connections are up. An unknown link was closed meanwhile: its connections go.
    pub(super) fn on_link_up(&mut self, id: LinkId, out: &mut Vec<Action>) {
        match self.link_mut(id) {
            Some(link) if link.phase != Phase::Open => {
                link.phase = Phase::Open;
                let peer = link.peer.clone();
                out.push(shown(format!(
                    "* private link with {peer} open: /msg {peer} TEXT, /send {peer} PATH, \
                     /close {peer}"
                )));
            }
            _ => out.push(Action::CloseLink(id)),
        }
    }

    /// Setting the link up failed (connect, accept, timeout).
    pub(super) fn on_link_failed(&mut self, id: LinkId, problem: &str, out: &mut Vec<Action>) {
        if let Some(link) = self.remove_link(id) {
            out.push(Action::Note(format!(
                "cannot open the private link with {}: {problem}",
                link.peer
            )));
        }
    }

    /// Something happened on an established (or being established) link.
    pub(super) fn on_peer(&mut self, id: LinkId, event: PeerEvent, out: &mut Vec<Action>) {
        let Some(link) = self.link_mut(id) else {
            self.on_closed_link_event(id, event, out);
            return;
        };
        let peer = link.peer.clone();
        match event {
            PeerEvent::Message(text) => {
                let line = format!("{peer} (private): {}", self.text(&text));
                out.push(shown(line));
            }
            PeerEvent::SignOut => {
                self.close_after(id, out);
                out.push(shown(format!("* {peer} closed the private link")));
            }
            PeerEvent::Closed => {
                self.close_after(id, out);
                out.push(shown(format!(
                    "* private link with {peer} lost: {peer} closed it without signing out"
                )));
            }
            PeerEvent::Failed(problem) => {
                self.close_after(id, out);
                out.push(Action::Note(format!(
                    "{problem}; private link with {peer} closed"
                )));
            }
            PeerEvent::Stranger(from) => out.push(Action::Note(format!(
                "refused a connection from {from} to the private link with {peer}: it is not \
                 from {peer}'s address"
            ))),
            PeerEvent::FileIncoming(size) => {
                out.push(shown(format!("* {peer} is sending a file of {size} bytes")));
            }
            PeerEvent::FileReceived { size, path } => out.push(shown(format!(
                "* received {size} bytes from {peer}: {}",
                path.display()
            ))),
            PeerEvent::FileFailed { reason, fatal } => {
                if fatal {
                    self.close_after(id, out);
                    out.push(Action::Note(format!(
                        "{reason}; private link with {peer} closed"
                    )));
                } else {
                    out.push(Action::Note(reason));
                }
            }
            PeerEvent::SendRefused { path, reason } => {
                link.sending = link.sending.saturating_sub(1);
                out.push(Action::Note(format!(
                    "file not sent to {peer}: {}: {reason}",
                    path.display()
                )));
            }
            PeerEvent::SendStarted { size, path } => out.push(shown(format!(
                "* sending {size} bytes to {peer}: {}",
                path.display()
            ))),
            PeerEvent::SendEnded { size, path, result } => {
                link.sending = link.sending.saturating_sub(1);
                match result {
                    Ok(()) => out.push(shown(format!(
                        "* sent {size} bytes to {peer}: {}",
                        path.display()
                    ))),
                    Err(problem) => {
                        self.close_after(id, out);
                        out.push(Action::Note(format!(
                            "sending {} to {peer} failed: {problem}; private link with {peer} \
                             closed",
                            path.display()
                        )));
                    }
                }
            }
        }
        // After the event's own lines: a link that closed or a file that is done may be what
        // an end of input was waiting for.
        self.leave_if_done(out);
    }

    /// A late event from a link already closed. The receiving thread may finish (or lose) a
    /// file just after the message connection reported the end of the link: that outcome is
    /// still news. Everything else about a closed link is not.
    fn on_closed_link_event(&mut self, id: LinkId, event: PeerEvent, out: &mut Vec<Action>) {
        let Some(peer) = self.closed.iter().find(|(closed, _)| *closed == id) else {
            return;
        };
        match event {
            PeerEvent::FileReceived { size, path } => out.push(shown(format!(
                "* received {size} bytes from {}: {}",
                peer.1,
                path.display()
            ))),
            PeerEvent::FileFailed { reason, .. } => out.push(Action::Note(reason)),
            _ => {}
        }
    }

    /// The link ends from the peer's side or by failure: close it, nothing to sign out.
    fn close_after(&mut self, id: LinkId, out: &mut Vec<Action>) {
        if let Some(link) = self.remove_link(id) {
            out.push(Action::CloseLink(id));
            abandoned(&link, out);
        }
    }

    fn new_link(&mut self, peer: &str, phase: Phase) -> LinkId {
        let id = self.next_id;
        self.next_id += 1;
        self.links.push(Link {
            id,
            peer: peer.to_owned(),
            phase,
            sending: 0,
        });
        id
    }

    fn link_with(&self, peer: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.peer == peer)
    }

    fn link_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.id == id)
    }

    fn remove_link(&mut self, id: LinkId) -> Option<Link> {
        let at = self.links.iter().position(|l| l.id == id)?;
        let link = self.links.remove(at);
        if self.closed.len() == CLOSED_LINKS_KEPT {
            self.closed.pop_front();
        }
        self.closed.push_back((id, link.peer.clone()));
        Some(link)
    }

    /// The id of the open link with `peer`, or why there is none.
    fn open_link(&self, peer: &str) -> Result<LinkId, String> {
        match self.link_with(peer) {
            Some(link) if link.phase == Phase::Open => Ok(link.id),
            Some(_) => Err(format!("the private link with {peer} is not open yet")),
            None => Err(format!(
                "no private link with {peer}: ask for one with /private {peer}"
            )),
        }
    }

    /// Received text for one line of output.
    fn text(&self, bytes: &[u8]) -> String {
        render(&String::from_utf8_lossy(bytes), self.sanitize)
    }
}

/// A note for the files that were still queued or being sent on a closed link.
fn abandoned(link: &Link, out: &mut Vec<Action>) {
    if link.sending > 0 {
        out.push(Action::Note(format!(
            "{} file(s) to {} not sent: the private link closed",
            link.sending, link.peer
        )));
    }
}

/// Why the server would refuse `name` as this user's own, in one line, or `None`: empty, too
/// long, or a character that is not an ASCII letter or digit. Stricter than [`name_problem`]:
/// the server's rule is "alphanumeric", which our server read as Unicode's and now reads as
/// ASCII's (look-alike names such as a Cyrillic `а` in `аlice`), so a name that passes here
/// passes any of them, and a refusal after it means the name is taken.
pub(super) fn own_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return name_problem(name);
    }
    let odd = name.chars().find(|c| !c.is_ascii_alphanumeric())?;
    Some(format!(
        "a user name has only ASCII letters and digits (a-z, A-Z, 0-9), and {} is not one",
        char_shown(odd)
    ))
}

/// A character for a message: itself in quotes when printable, else its code point.
fn char_shown(c: char) -> String {
    if crate::text::is_unsafe(c) || c.is_whitespace() {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("`{c}` (U+{:04X})", u32::from(c))
    }
}

/// Why no MATOU server would accept `name`, or `None`: the structural rules (not empty, at
/// most 32 bytes, letters and digits of any script). Names from the server and in commands
/// are checked with it, so that a peer on a server that allows `José` still works.
pub(super) fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("a user name must not be empty".into())
    } else if name.len() > NAME_BYTES_MAX {
        Some(format!(
            "a user name is at most {NAME_BYTES_MAX} bytes (this one has {})",
            name.len()
        ))
    } else {
        let odd = name.chars().find(|c| !c.is_alphanumeric())?;
        Some(format!(
            "a user name has only letters and digits, and {} is not one",
            char_shown(odd)
        ))
    }
}

/// Why the server (or a peer) would refuse `text` as a message, or `None`.
pub(super) fn message_problem(text: &str) -> Option<String> {
    if text.len() > MESSAGE_BYTES_MAX {
        Some(format!(
            "a message is at most {MESSAGE_BYTES_MAX} bytes (this one has {})",
            text.len()
        ))
    } else if text.chars().any(char::is_control) {
        Some("a message must not contain control characters (tabs included)".into())
    } else {
        None
    }
}

/// A typed line (not blank) as a command; a line that is not one is a public message.
fn parse_command(line: &str) -> Result<Command<'_>, String> {
    if line.starts_with("//") {
        return Ok(Command::Public(&line[1..]));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Ok(Command::Public(line));
    };
    let (word, rest) = command.split_once(' ').unwrap_or((command, ""));
    let usage = |form: &str| format!("usage: {form}");
    let name_only = |form: &str| -> Result<&str, String> {
        let name = rest.trim();
        if name.is_empty() || name.contains(' ') {
            return Err(usage(form));
        }
        match name_problem(name) {
            Some(problem) => Err(format!("{problem}: {}", render(name, true))),
            None => Ok(name),
        }
    };
    let name_then = |form: &str| -> Result<(&str, &str), String> {
        let Some((name, tail)) = rest.split_once(' ') else {
            return Err(usage(form));
        };
        if let Some(problem) = name_problem(name) {
            return Err(format!("{problem}: {}", render(name, true)));
        }
        Ok((name, tail))
    };
    match word.trim_end() {
        "private" => name_only("/private NAME").map(Command::Private),
        "accept" => name_only("/accept NAME").map(Command::Accept),
        "close" => name_only("/close NAME").map(Command::Close),
        "msg" => name_then("/msg NAME TEXT").map(|(name, text)| Command::Msg(name, text)),
        "send" => {
            let (name, path) = name_then("/send NAME PATH")?;
            if path.trim().is_empty() {
                return Err(usage("/send NAME PATH"));
            }
            Ok(Command::Send(name, path))
        }
        "quit" if rest.trim().is_empty() => Ok(Command::Quit),
        "help" => Ok(Command::Help),
        _ => Err(format!(
            "unknown command /{}: /help lists the commands (start a message with // to send \
             one that starts with /)",
            render(word, true)
        )),
    }
}

/// An IP address from the 4 or 16 bytes of PRIVATE_*_ADDRESS.
fn ip_from(address: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(address) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(address) {
        Some(IpAddr::V6(Ipv6Addr::from(v6)).to_canonical())
    } else {
        None
    }
}

fn port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&p| p != 0)
}

/// `error 4 (unknown user): reason` for stderr, control characters always replaced.
fn error_line(code: i32, reason: &[u8]) -> String {
    let mut line = format!("error {code}");
    if let Some(known) = ErrorCode::from_code(code) {
        let _ = write!(line, " ({})", known.as_str());
    }
    let reason = String::from_utf8_lossy(reason);
    let reason = reason.trim();
    if !reason.is_empty() {
        let _ = write!(line, ": {reason}");
    }
    render(&line, true)
}

/// A line for stdout.
fn shown(mut line: String) -> Action {
    line.push('\n');
    Action::Show(line)
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
