//! The WEB server logic, sans-io: bytes in (an HTTP request, then WebSocket frames); sends
//! and closes out.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use log::debug;

use super::codec::{self, Message, Reader};
use super::http::{self, Request};
use super::json::{self, ClientMessage};
use crate::chat::{ConnId, ConnMap, MemberList};
use crate::hub::{
    Claim, Decision, Endpoint, LobbyMessage, NamedProtocol, User as HubUser, WebDirect,
};
use crate::limits::{RateLimit, TokenBucket};
use crate::protocol::{
    leave_hub, located, switch, Clock, CloseMode, CloseReason, Context, HubOutcome, Outbox,
    ProtocolKind, StreamService, HELD_INPUT_BYTES_MAX,
};

#[derive(Clone, Debug)]
pub struct WebConfig {
    /// `--web-origins`: the origins whose pages may open the WebSocket; `None`: only
    /// `http://<Host>` and `https://<Host>`.
    pub origins: Option<Vec<String>>,
    /// Largest frame payload and whole message from a client, in bytes.
    pub message_bytes_max: usize,
    /// Longest `text` of a `say` or `direct`, in bytes.
    pub text_bytes_max: usize,
    /// `say` and `direct` messages per second per user (a second's worth at once); 0: no
    /// limit.
    pub messages_per_s_max: u64,
    /// Longest name, in bytes (ASCII letters, digits, `_`, `-`).
    pub name_bytes_max: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            origins: None,
            message_bytes_max: 4096,
            text_bytes_max: 1000,
            messages_per_s_max: 20,
            name_bytes_max: 32,
        }
    }
}

/// Notes of web-to-web deliveries carry this bit, so that they cannot be taken for the hub's
/// notes (`WrittenNote`, counted from 0) when the reactor reports them.
const LOCAL_NOTE: u64 = 1 << 63;

#[derive(Debug)]
enum Phase {
    /// Waiting for the HTTP request.
    Http,
    /// The WebSocket is open.
    Open(Reader),
}

#[derive(Debug)]
struct User {
    name: Bytes,
    /// Index in [`WebService::members`].
    member_index: usize,
}

#[derive(Debug)]
struct WebConn {
    phase: Phase,
    user: Option<User>,
    /// A close was asked for: further input is ignored.
    closing: bool,
    /// In a cluster: the name asked for while the other nodes decide; input is left unread
    /// until then.
    claiming: Option<Bytes>,
    /// In a cluster: this user's `direct`s whose addressee the cluster is locating; input is
    /// left unread until they are answered, so its messages keep their order.
    locating: u32,
    /// This user's `say` and `direct` budget.
    messages: TokenBucket,
}

pub struct WebService {
    config: WebConfig,
    conns: ConnMap<WebConn>,
    /// Signed-in users by name.
    users: HashMap<Bytes, ConnId>,
    /// Signed-in users, for fan-out.
    members: MemberList,
    /// Web-to-web deliveries waiting for their bytes to be written: the sender and the
    /// request's id, by note.
    awaiting_write: HashMap<u64, (ConnId, Option<u64>)>,
    next_note: u64,
}

impl WebService {
    pub fn new(config: WebConfig) -> Self {
        WebService {
            config,
            conns: ConnMap::new(),
            users: HashMap::new(),
            members: MemberList::default(),
            awaiting_write: HashMap::new(),
            next_note: 0,
        }
    }

    /// Signed-in users.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn rate(&self) -> RateLimit {
        RateLimit {
            rate_per_s: self.config.messages_per_s_max,
            burst: self.config.messages_per_s_max,
        }
    }

    fn accept(&mut self, id: ConnId, now_ms: u64) {
        let messages = TokenBucket::full(self.rate(), now_ms);
        self.conns.insert(
            id,
            WebConn {
                phase: Phase::Http,
                user: None,
                closing: false,
                claiming: None,
                locating: 0,
                messages,
            },
        );
    }

    fn data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, now_ms: u64, out: &mut O) {
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                input.clear();
                return;
            };
            if conn.closing {
                input.clear();
                return;
            }
            if conn.claiming.is_some() || conn.locating > 0 {
                if input.len() > HELD_INPUT_BYTES_MAX {
                    debug!(
                        "{id}: over {HELD_INPUT_BYTES_MAX} bytes sent before its sign-in answer"
                    );
                    out.count_rejected();
                    self.fail(
                        id,
                        codec::CLOSE_POLICY,
                        "too much sent before the answer",
                        out,
                    );
                    input.clear();
                }
                return;
            }
            let message = match &mut conn.phase {
                Phase::Http => {
                    match http::parse(input, self.config.origins.as_deref()) {
                        Ok(None) => return,
                        Ok(Some((Request::File { answer }, _))) => {
                            out.send(id, answer);
                            self.close(id, CloseReason::Done, out);
                        }
                        Ok(Some((Request::Upgrade { answer }, head_bytes))) => {
                            input.advance(head_bytes);
                            conn.phase = Phase::Open(Reader::default());
                            out.send(id, answer);
                            continue;
                        }
                        Err(refused) => {
                            debug!("{id}: HTTP request refused, {}", refused.status);
                            out.count_rejected();
                            out.send(id, refused.answer);
                            self.close(id, CloseReason::ProtocolError, out);
                        }
                    }
                    input.clear();
                    return;
                }
                Phase::Open(reader) => match reader.next(input, self.config.message_bytes_max) {
                    Ok(None) => return,
                    Ok(Some(message)) => message,
                    Err(violation) => {
                        debug!("{id}: {}", violation.why);
                        out.count_rejected();
                        self.fail(id, violation.code, violation.why, out);
                        input.clear();
                        return;
                    }
                },
            };
            out.count_frame_in(id);
            self.on_message(id, message, now_ms, out);
        }
    }

    fn on_message<O: Outbox>(&mut self, id: ConnId, message: Message, now_ms: u64, out: &mut O) {
        match message {
            Message::Ping(payload) => out.send(id, codec::encode(codec::OP_PONG, &payload)),
            Message::Pong => {}
            Message::Close { code } => {
                // Echo the peer's code (RFC 6455 5.5.1); one it may not send is answered 1002.
                let answer = match code {
                    None => codec::CLOSE_NORMAL,
                    Some(code @ (1000..=1003 | 1007..=1011 | 3000..=4999)) => code,
                    Some(_) => codec::CLOSE_PROTOCOL_ERROR,
                };
                out.send(id, codec::close(answer, ""));
                self.close(id, CloseReason::PeerClosed, out);
            }
            Message::Text(text) => match json::parse(&text) {
                Err(bad) => {
                    out.count_rejected();
                    out.send(id, json::error(bad.id, "bad-request"));
                }
                Ok(ClientMessage::Ping) => out.send(id, json::pong()),
                Ok(ClientMessage::Signin { name }) => self.signin(id, name, out),
                Ok(ClientMessage::Say { text }) => self.say(id, text, now_ms, out),
                Ok(ClientMessage::Direct { to, text, id: rid }) => {
                    self.direct(id, to, text, rid, now_ms, out)
                }
            },
        }
    }

    fn signin<O: Outbox>(&mut self, id: ConnId, name: String, out: &mut O) {
        let refusal = if self.conns.get(id).is_some_and(|conn| conn.user.is_some()) {
            Some("already-signed-in")
        } else if name.len() > self.config.name_bytes_max {
            Some("too-long")
        } else if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some("invalid-name")
        } else if self.users.contains_key(name.as_bytes()) {
            Some("name-taken")
        } else {
            None
        };
        if let Some(reason) = refusal {
            debug!("{id}: name refused, {reason}");
            out.count_rejected();
            out.send(id, json::refused(reason));
            return;
        }
        // Switchboard rule 1: a name held in another protocol (or node) is refused too.
        let claim = out
            .hub()
            .map(|mut link| link.claim_name(NamedProtocol::Web, id, name.as_bytes()));
        if claim == Some(Claim::Pending) {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.claiming = Some(Bytes::from(name));
            }
            return;
        }
        if let Some(answer) = claim.and_then(|claim| claim.refusal(NamedProtocol::Web)) {
            debug!("{id}: name refused (held in another protocol, or unconfirmed)");
            out.count_rejected();
            out.send(id, answer.unwrap_or_else(|| json::refused("name-taken")));
            return;
        }
        self.sign_in(id, Bytes::from(name), out);
    }

    /// `name` is `id`'s now: welcomed, and announced to the others.
    fn sign_in<O: Outbox>(&mut self, id: ConnId, name: Bytes, out: &mut O) {
        let member_index = self.members.push(id);
        self.users.insert(name.clone(), id);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.user = Some(User {
                name: name.clone(),
                member_index,
            });
        }
        out.mark_identified(id);
        let joined = json::presence(ProtocolKind::Web, &name, crate::hub::PresenceKind::Entered);
        for &to in self.members.as_slice() {
            if to != id {
                out.send(to, joined.clone());
            }
        }
        let present = match out.hub() {
            Some(link) => {
                let user = HubUser {
                    protocol: ProtocolKind::Web,
                    endpoint: Endpoint::Conn(id),
                    name: name.clone(),
                };
                link.hub.enter_lobby(user, link.queue);
                link.hub
                    .lobby_roster()
                    .into_iter()
                    .flat_map(|(protocol, name, count)| {
                        std::iter::repeat_n((protocol, name), count as usize)
                    })
                    .collect()
            }
            // --isolate: the web users are the whole lobby.
            None => {
                let mut present: Vec<_> = self
                    .users
                    .keys()
                    .map(|name| (ProtocolKind::Web, name.clone()))
                    .collect();
                present.sort();
                present
            }
        };
        out.send(id, json::welcome(&name, &present));
    }

    /// The user on `id`, or `not-signed-in`, after its budget admitted one message.
    fn admit<O: Outbox>(
        &mut self,
        id: ConnId,
        request: Option<u64>,
        now_ms: u64,
        out: &mut O,
    ) -> Option<Bytes> {
        let rate = self.rate();
        let conn = self.conns.get_mut(id)?;
        let Some(user) = conn.user.as_ref() else {
            out.count_rejected();
            out.send(id, json::error(request, "not-signed-in"));
            return None;
        };
        if !conn.messages.take(rate, 1, now_ms) {
            out.count_rejected();
            out.send(id, json::error(request, "rate-limited"));
            return None;
        }
        Some(user.name.clone())
    }

    /// Why `text` cannot be sent, if it cannot.
    fn text_problem(&self, text: &str) -> Option<&'static str> {
        if text.len() > self.config.text_bytes_max {
            Some("too-large")
        } else if text.is_empty() || text.chars().any(|c| c.is_control() && c != '\t') {
            Some("invalid-text")
        } else {
            None
        }
    }

    fn say<O: Outbox>(&mut self, id: ConnId, text: String, now_ms: u64, out: &mut O) {
        if let Some(reason) = self.text_problem(&text) {
            out.count_rejected();
            out.send(id, json::error(None, reason));
            return;
        }
        let Some(name) = self.admit(id, None, now_ms, out) else {
            return;
        };
        let text = Bytes::from(text);
        // Every web member, the sender included: its echo is its confirmation.
        let frame = json::lobby(ProtocolKind::Web, &name, &text);
        for &to in self.members.as_slice() {
            out.send(to, frame.clone());
        }
        if let Some(mut link) = out.hub() {
            if link.hub.has_audience_besides(ProtocolKind::Web) {
                let said = LobbyMessage {
                    origin: ProtocolKind::Web,
                    sender: name,
                    text,
                };
                link.say(said, Endpoint::Conn(id), |_| true);
            }
        }
    }

    fn direct<O: Outbox>(
        &mut self,
        id: ConnId,
        to: String,
        text: String,
        request: Option<u64>,
        now_ms: u64,
        out: &mut O,
    ) {
        if let Some(reason) = self.text_problem(&text) {
            out.count_rejected();
            out.send(id, json::error(request, reason));
            return;
        }
        let Some(name) = self.admit(id, request, now_ms, out) else {
            return;
        };
        if to.as_bytes() == &name[..] {
            out.count_rejected();
            out.send(id, json::error(request, "to-self"));
            return;
        }
        let text = Bytes::from(text);
        if let Some(&recipient) = self.users.get(to.as_bytes()) {
            let note = LOCAL_NOTE | self.next_note;
            self.next_note = (self.next_note + 1) & !LOCAL_NOTE;
            let bytes = json::direct(ProtocolKind::Web, &name, &text);
            if out.send_notify(recipient, bytes, note) {
                self.awaiting_write.insert(note, (id, request));
            } else {
                out.send(id, json::error(request, "not-delivered"));
            }
            return;
        }
        let decided = out.hub().map(|link| {
            link.hub
                .web_direct(id, to.as_bytes(), &text, request, now_ms, link.queue)
        });
        match decided {
            Some(WebDirect::ToConn {
                to: recipient,
                bytes,
                note,
            }) => {
                if !out.send_notify(recipient, bytes, note.0) {
                    switch::carry_written(note.0, false, out);
                }
            }
            Some(WebDirect::ToBin24 {
                to: recipient,
                frame,
            }) => {
                if let Some(link) = out.hub() {
                    link.queue.hand_over(HubOutcome::Bin24Forward {
                        to: recipient,
                        frame,
                    });
                }
                // BIN24 keeps the frame from here (its ack timeout, its store); its answer
                // comes back through the hub as `sent delivered` / `sent stored`.
            }
            Some(WebDirect::Refused { reason }) => {
                out.count_rejected();
                out.send(id, json::error(request, reason));
            }
            Some(WebDirect::Locating) => {
                // Its `sent` or `error` comes when the cluster answered (and, for a CCM or
                // web user there, when that node wrote it); the next input waits.
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.locating += 1;
                }
            }
            None => {
                out.count_rejected();
                out.send(id, json::error(request, "unknown-addressee"));
            }
        }
    }

    fn notify<O: Outbox>(&mut self, note: u64, acked: bool, out: &mut O) {
        if note & LOCAL_NOTE == 0 {
            // A hub delivery to this web user (from BIN24 or CCM... or a web sender's).
            switch::carry_written(note, acked, out);
            return;
        }
        let waiting = self.awaiting_write.remove(&note);
        // A sender gone since (its slot may hold another connection by now) hears nothing.
        if let Some((sender, request)) =
            waiting.filter(|&(sender, _)| self.conns.get(sender).is_some())
        {
            let answer = if acked {
                json::sent(request, "delivered")
            } else {
                json::error(request, "not-delivered")
            };
            out.send(sender, answer);
        }
    }

    /// A close frame with `code`, then close once it is written.
    fn fail<O: Outbox>(&mut self, id: ConnId, code: u16, why: &str, out: &mut O) {
        out.send(id, codec::close(code, why));
        self.close(id, CloseReason::ProtocolError, out);
    }

    fn close<O: Outbox>(&mut self, id: ConnId, reason: CloseReason, out: &mut O) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.closing = true;
        }
        out.close(id, reason, CloseMode::AfterFlush);
    }

    /// `id` is gone: if it was signed in, the others learn it left.
    fn closed<O: Outbox>(&mut self, id: ConnId, out: &mut O) {
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        // A name claimed and not yet decided is released by the registry, as every name.
        let Some(user) = conn.user else {
            return;
        };
        if self.users.get(&user.name) == Some(&id) {
            self.users.remove(&user.name);
        }
        if let Some(moved) = self.members.remove(user.member_index) {
            if let Some(moved_user) = self.conns.get_mut(moved).and_then(|c| c.user.as_mut()) {
                moved_user.member_index = user.member_index;
            }
        }
        let left = json::presence(
            ProtocolKind::Web,
            &user.name,
            crate::hub::PresenceKind::Left,
        );
        for &to in self.members.as_slice() {
            out.send(to, left.clone());
        }
        leave_hub(id, out);
    }

    fn claim_decided<O: Outbox>(&mut self, id: ConnId, decision: Decision, out: &mut O) {
        let Some(name) = self.conns.get_mut(id).and_then(|conn| conn.claiming.take()) else {
            return;
        };
        match decision {
            Decision::Granted => self.sign_in(id, name, out),
            Decision::Refused { answer } => {
                debug!("{id}: name refused by the cluster");
                out.count_rejected();
                out.send(id, answer.unwrap_or_else(|| json::refused("name-taken")));
            }
        }
        out.resume_input(id);
    }
}

impl StreamService for WebService {
    /// The request and the sign-in, both, within `--handshake-timeout-ms`.
    fn reactor_handshake_deadline(&self) -> bool {
        true
    }

    fn on_accept<O: Outbox>(&mut self, id: ConnId, cx: &Context, _out: &mut O) {
        self.accept(id, cx.now_ms);
    }

    fn on_data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, cx: &Context, out: &mut O) {
        self.data(id, input, cx.now_ms, out);
    }

    fn on_close<O: Outbox>(
        &mut self,
        id: ConnId,
        _reason: CloseReason,
        _cx: &Context,
        out: &mut O,
    ) {
        self.closed(id, out);
    }

    fn on_handshake_timeout<O: Outbox>(
        &mut self,
        id: ConnId,
        timeout_ms: u64,
        _cx: &Context,
        out: &mut O,
    ) {
        debug!("{id}: not signed in within {timeout_ms} ms");
        let open = self
            .conns
            .get(id)
            .is_some_and(|conn| matches!(conn.phase, Phase::Open(_)));
        if open {
            out.send(
                id,
                codec::close(codec::CLOSE_POLICY, "not signed in in time"),
            );
        }
        self.close(id, CloseReason::HandshakeTimeout, out);
    }

    fn on_notify<O: Outbox>(
        &mut self,
        _id: ConnId,
        note: u64,
        acked: bool,
        _clock: &Clock,
        out: &mut O,
    ) {
        self.notify(note, acked, out);
    }

    fn on_hub<O: Outbox>(&mut self, outcome: HubOutcome, _clock: &Clock, out: &mut O) {
        match outcome {
            HubOutcome::NameClaim(decided) => {
                self.claim_decided(decided.conn, decided.decision, out);
            }
            HubOutcome::WebLocated { from } => {
                located(
                    from,
                    self.conns.get_mut(from).map(|conn| &mut conn.locating),
                    out,
                );
            }
            _ => {}
        }
    }
}
