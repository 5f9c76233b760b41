//! The CCM server logic, sans-io: bytes, `now_ms` and the wall-clock second in; sends and
//! closes out. Tokens come from an injected source so tests are deterministic.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use log::debug;

use super::codec::{self, DecodeError, Detection, Message, MessageType};
use crate::chat::{ConnId, ConnMap};
use crate::hub::{Addressed, CcmDirect, Claim, Decision, Endpoint, LobbyMessage, NamedProtocol};
use crate::limits::{RateLimit, SenderBudget};
use crate::protocol::{
    enter_lobby, leave_hub, located, Clock, CloseMode, CloseReason, Context, HubOutcome, Outbox,
    ProtocolKind, StreamService, HELD_INPUT_BYTES_MAX,
};
use crate::timer::{TimerKey, TimerWheel};

/// Fills 16 bytes with randomness; false when no randomness could be had.
pub type TokenSource = Box<dyn FnMut(&mut [u8; 16]) -> bool + Send>;

/// Tokens from the operating system's cryptographic random source.
pub fn os_token_source() -> TokenSource {
    Box::new(|bytes: &mut [u8; 16]| getrandom::fill(bytes).is_ok())
}

#[derive(Clone, Debug)]
pub struct CcmConfig {
    /// Silence after which the server sends `Connect` (the contract's 5000 ms).
    pub keepalive_idle_ms: u64,
    /// How long the client then has to send anything (the contract's 3600 ms).
    pub keepalive_answer_ms: u64,
    /// Longest user name, in bytes of its UTF-8 form.
    pub name_bytes_max: usize,
    /// Bytes one user may make others receive per second, in all (a `*` message counts once
    /// per recipient) and to one other user; over either the sender gets Error `rate-limited`
    /// and nobody receives the message, so a flood is cut at its sender instead of closing its
    /// recipient as a slow consumer. A second's worth, and at least one largest message, may
    /// come at once. 0: no limit.
    pub sender_bytes_per_s_max: u64,
    pub pair_bytes_per_s_max: u64,
    pub timer_tick_ms: u64,
}

impl Default for CcmConfig {
    fn default() -> Self {
        CcmConfig {
            keepalive_idle_ms: 5_000,
            keepalive_answer_ms: 3_600,
            name_bytes_max: 64,
            sender_bytes_per_s_max: 8 * 1024 * 1024,
            pair_bytes_per_s_max: 2 * 1024 * 1024,
            timer_tick_ms: 10,
        }
    }
}

/// The Reason codes of the contract's Error answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    UnknownAddressee,
    NameTaken,
    BadHeader,
    TooLarge,
    InvalidToken,
    NotIdentified,
    /// Ours: the sender is over its rate (`--ccm-sender-bytes-per-s-max`, per pair
    /// `--ccm-pair-bytes-per-s-max`); the message was not delivered.
    RateLimited,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::UnknownAddressee => "unknown-addressee",
            Reason::NameTaken => "name-taken",
            Reason::BadHeader => "bad-header",
            Reason::TooLarge => "too-large",
            Reason::InvalidToken => "invalid-token",
            Reason::NotIdentified => "not-identified",
            Reason::RateLimited => "rate-limited",
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the first 4 bytes to tell CCM from anything else.
    Detecting,
    /// CCM, not yet identified: the next message names the user.
    Unidentified,
    /// In a cluster: `name` is asked of the other nodes. Input is left unread until the
    /// answer, so what follows the identification is handled after it, in order.
    Claiming {
        name: Bytes,
    },
    Identified {
        name: Bytes,
        token: Bytes,
    },
}

#[derive(Debug)]
struct CcmConn {
    phase: Phase,
    last_heard_ms: u64,
    /// When the keepalive `Connect` went out, if it is awaiting an answer.
    ping_sent_ms: Option<u64>,
    keepalive: Option<TimerKey>,
    /// What this user's messages may make others receive; set once it is identified.
    budget: Option<SenderBudget<ConnId>>,
    /// In a cluster: messages of this user whose addressee is being located on the other
    /// nodes. Its further input is left unread until none is, so a `*` or another message
    /// sent after one of them is not delivered before it (per-sender order).
    locating: u32,
}

/// The largest message one delivery can carry (content, header, and the header the server
/// writes), which every budget's bucket must hold or that message could never pass.
const DELIVERY_BYTES_MAX: u64 = (codec::CONTENT_BYTES_MAX + codec::HEADER_BYTES_MAX + 1024) as u64;

fn byte_rate(rate_per_s: u64) -> RateLimit {
    RateLimit {
        rate_per_s,
        burst: rate_per_s.max(DELIVERY_BYTES_MAX),
    }
}

pub struct CcmService {
    config: CcmConfig,
    conns: ConnMap<CcmConn>,
    /// Identified users by name.
    users: HashMap<Bytes, ConnId>,
    keepalives: TimerWheel<ConnId>,
    tokens: TokenSource,
}

/// 10 ms ticks: one revolution (about 10 s) covers the 5 s and 3.6 s keepalive timers.
const WHEEL_SLOT_COUNT: usize = 1024;

impl CcmService {
    pub fn new(config: CcmConfig, tokens: TokenSource, now_ms: u64) -> Self {
        let keepalives = TimerWheel::new(config.timer_tick_ms, WHEEL_SLOT_COUNT, now_ms);
        CcmService {
            config,
            conns: ConnMap::new(),
            users: HashMap::new(),
            keepalives,
            tokens,
        }
    }

    pub fn identified_count(&self) -> usize {
        self.users.len()
    }

    pub fn on_accept(&mut self, id: ConnId, now_ms: u64) {
        self.conns.insert(
            id,
            CcmConn {
                phase: Phase::Detecting,
                last_heard_ms: now_ms,
                ping_sent_ms: None,
                keepalive: None,
                budget: None,
                locating: 0,
            },
        );
    }

    /// Bytes arrived. `burst_ended`: the socket had no more to read, which ends a message that
    /// has no Content-Length (the original client never sends one). `unix_secs` dates the
    /// HTTP answer.
    pub fn on_data<O: Outbox>(
        &mut self,
        id: ConnId,
        input: &mut BytesMut,
        burst_ended: bool,
        now_ms: u64,
        unix_secs: u64,
        out: &mut O,
    ) {
        loop {
            let Some(conn) = self.conns.get_mut(id) else {
                input.clear();
                return;
            };
            if matches!(conn.phase, Phase::Claiming { .. }) || conn.locating > 0 {
                if input.len() > HELD_INPUT_BYTES_MAX {
                    self.fail(
                        id,
                        Reason::TooLarge,
                        "too much sent while waiting for the cluster's answer",
                        out,
                    );
                    input.clear();
                }
                return;
            }
            if let Phase::Detecting = conn.phase {
                match codec::detect(input) {
                    Detection::NeedMore => return,
                    Detection::Ccm => conn.phase = Phase::Unidentified,
                    Detection::NotCcm => {
                        debug!("{id}: not CCM, answering HTTP 400");
                        out.count_rejected();
                        out.send(id, codec::http_bad_request(unix_secs));
                        out.close(id, CloseReason::ProtocolError, CloseMode::AfterFlush);
                        input.clear();
                        self.conns.remove(id);
                        return;
                    }
                }
            }
            let message = match codec::decode(input, burst_ended) {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(err) => {
                    debug!("{id}: {err}");
                    let reason = match err {
                        DecodeError::HeaderTooLarge | DecodeError::ContentTooLarge => {
                            Reason::TooLarge
                        }
                        _ => Reason::BadHeader,
                    };
                    self.fail(id, reason, &err.to_string(), out);
                    input.clear();
                    return;
                }
            };
            out.count_frame_in(id);
            if let Some(conn) = self.conns.get_mut(id) {
                conn.last_heard_ms = now_ms;
                conn.ping_sent_ms = None;
            }
            if !self.on_message(id, message, now_ms, out) {
                input.clear();
                return;
            }
        }
    }

    /// Returns false when the connection is being closed.
    fn on_message<O: Outbox>(
        &mut self,
        id: ConnId,
        message: Message,
        now_ms: u64,
        out: &mut O,
    ) -> bool {
        let Some(conn) = self.conns.get(id) else {
            return false;
        };
        let (name, token) = match &conn.phase {
            Phase::Identified { name, token } => (name.clone(), token.clone()),
            _ => {
                self.identify(id, &message, now_ms, out);
                return true;
            }
        };
        if let Some(user) = message.attribute("User") {
            if *user != token {
                self.fail(
                    id,
                    Reason::InvalidToken,
                    "the User token is not this connection's",
                    out,
                );
                return false;
            }
        }
        match message.message_type() {
            Some(
                kind @ (MessageType::Text
                | MessageType::Raw
                | MessageType::Audio
                | MessageType::Streaming),
            ) => {
                let Some(addressee) = message.attribute("Addressee").cloned() else {
                    self.fail(id, Reason::BadHeader, "a message needs an Addressee", out);
                    return false;
                };
                self.deliver(id, &name, kind, &addressee, &message, now_ms, out);
                true
            }
            // The keepalive answer; hearing it already reset the keepalive.
            Some(MessageType::Connect) => true,
            Some(MessageType::Disconnect) => {
                self.forget(id);
                leave_hub(id, out);
                out.close(id, CloseReason::Done, CloseMode::AfterFlush);
                false
            }
            // Nothing for the server to do with these from a client.
            Some(
                MessageType::NotDefined
                | MessageType::Identity
                | MessageType::ConnectVoice
                | MessageType::Error,
            ) => true,
            None => {
                self.fail(id, Reason::BadHeader, "unknown message type", out);
                false
            }
        }
    }

    /// The first message of a connection names its user (its content, decoded by its
    /// Message-Encoding), whatever its type.
    fn identify<O: Outbox>(&mut self, id: ConnId, message: &Message, now_ms: u64, out: &mut O) {
        let encoding = message.attribute("Message-Encoding").map(|v| &v[..]);
        let name = match codec::decode_text(&message.content, encoding) {
            Ok(text) => text.trim().to_string(),
            Err(_) => {
                self.answer_error(
                    id,
                    Reason::BadHeader,
                    "the name could not be decoded with its Message-Encoding",
                    out,
                );
                return;
            }
        };
        if name.is_empty() {
            self.answer_error(
                id,
                Reason::NotIdentified,
                "an empty name cannot identify a user",
                out,
            );
            return;
        }
        if name.len() > self.config.name_bytes_max {
            self.answer_error(id, Reason::TooLarge, "the name is too long", out);
            return;
        }
        let name = Bytes::from(name.into_bytes());
        if self.users.contains_key(&name) {
            self.answer_error(id, Reason::NameTaken, "that name is in use", out);
            return;
        }
        // Switchboard rule 1: a name held in BIN24 or MATOU is refused too, CCM's own way
        // (the connection stays open for another try). In a cluster the other nodes are asked
        // first: the answer comes to `on_hub`.
        let claim = out
            .hub()
            .map(|mut link| link.claim_name(NamedProtocol::Ccm, id, &name));
        if claim == Some(Claim::Pending) {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.phase = Phase::Claiming { name };
            }
            return;
        }
        if let Some(answer) = claim.and_then(|claim| claim.refusal(NamedProtocol::Ccm)) {
            if let Some(answer) = answer {
                out.send(id, answer);
            }
            return;
        }
        self.identified(id, name, now_ms, out);
    }

    /// The cluster decided `id`'s claim: identify it, or refuse the name CCM's way (the
    /// connection stays open for another try); then its held input is read.
    pub fn on_claim_decided<O: Outbox>(
        &mut self,
        id: ConnId,
        decision: Decision,
        now_ms: u64,
        out: &mut O,
    ) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let name = match std::mem::replace(&mut conn.phase, Phase::Unidentified) {
            Phase::Claiming { name } => name,
            other => {
                conn.phase = other;
                return;
            }
        };
        match decision {
            Decision::Granted => self.identified(id, name, now_ms, out),
            Decision::Refused { answer } => {
                if let Some(answer) = answer {
                    out.send(id, answer);
                }
            }
        }
        out.resume_input(id);
    }

    /// `name` is `id`'s now: its token, its keepalive, and the lobby.
    fn identified<O: Outbox>(&mut self, id: ConnId, name: Bytes, now_ms: u64, out: &mut O) {
        let mut random = [0u8; 16];
        if !(self.tokens)(&mut random) {
            log::error!("{id}: no randomness for a token; closing the connection");
            out.close(id, CloseReason::IoError, CloseMode::Now);
            return;
        }
        let token = Bytes::from(hex(&random));
        self.users.insert(name.clone(), id);
        let deadline = now_ms.saturating_add(self.config.keepalive_idle_ms);
        let keepalive = self.keepalives.insert(deadline, id);
        if let Some(conn) = self.conns.get_mut(id) {
            conn.phase = Phase::Identified {
                name: name.clone(),
                token: token.clone(),
            };
            conn.keepalive = Some(keepalive);
            conn.budget = Some(SenderBudget::new(
                byte_rate(self.config.sender_bytes_per_s_max),
                now_ms,
            ));
        }
        out.mark_identified(id);
        out.send(id, codec::encode("Identity", &[("User", &token)], b""));
        enter_lobby(ProtocolKind::Ccm, id, name, out);
    }

    /// Deliver to `addressee`, or to every other identified user for `*`. The header is encoded
    /// once and the content is shared: each recipient gets two reference-counted buffers.
    // The message's parts as the caller checked them, and the time for the sender's budget: a
    // struct made for this one call would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn deliver<O: Outbox>(
        &mut self,
        from: ConnId,
        sender: &Bytes,
        kind: MessageType,
        addressee: &Bytes,
        message: &Message,
        now_ms: u64,
        out: &mut O,
    ) {
        let encoding = message
            .attribute("Message-Encoding")
            .cloned()
            .unwrap_or_else(|| Bytes::from_static(b"utf-8"));
        let head = codec::encode_head(
            kind.as_str(),
            &[
                ("Sender", sender),
                ("Addressee", addressee),
                ("Message-Encoding", &encoding),
            ],
            message.content.len(),
        );
        let send_to = |to: ConnId, out: &mut O| {
            out.send(to, head.clone());
            if !message.content.is_empty() {
                out.send(to, message.content.clone());
            }
        };
        let delivery_bytes = (head.len() + message.content.len()) as u64;
        let (to, amount) = if &addressee[..] == b"*" {
            let others = self.users.len().saturating_sub(1) as u64;
            (None, delivery_bytes.saturating_mul(others))
        } else {
            match self.users.get(addressee) {
                Some(&to) => (Some(to), delivery_bytes),
                None => {
                    // Switchboard rule 4: an online BIN24 user gets it as a BIN24 message,
                    // charged to the sender's budget as a delivery to a CCM user would be.
                    let bin24_holder =
                        out.hub().and_then(|link| match link.hub.holder(addressee) {
                            Some((NamedProtocol::Bin24 | NamedProtocol::Web, conn)) => Some(conn),
                            _ => None,
                        });
                    if let Some(holder) = bin24_holder {
                        if !self.admit(from, Some(holder), delivery_bytes, now_ms) {
                            if let Some(link) = out.hub() {
                                link.hub
                                    .count_refused(ProtocolKind::Ccm, ProtocolKind::Bin24);
                            }
                            self.refuse_rate(from, out);
                            return;
                        }
                    }
                    // BIN24's own sending limits are the hub's to apply (rule 5).
                    let direct = out.hub().map(|link| {
                        let content = &message.content;
                        link.hub
                            .ccm_direct(from, kind, addressee, content, now_ms, link.queue)
                    });
                    match direct {
                        Some(CcmDirect::ToBin24 { to, frame, .. }) => {
                            if let Some(link) = out.hub() {
                                link.queue.hand_over(HubOutcome::Bin24Forward { to, frame });
                            }
                        }
                        Some(CcmDirect::Refused { error }) => {
                            out.count_rejected();
                            out.send(from, error);
                        }
                        Some(CcmDirect::ToWeb { to, bytes, .. }) => out.send(to, bytes),
                        Some(CcmDirect::NotCrossing)
                            if out.hub().is_some_and(|link| {
                                link.hub.spans_nodes() && link.hub.holder(addressee).is_none()
                            }) =>
                        {
                            // In a cluster another node may hold the name: charged as a
                            // delivery, then located and sent there, or refused as unknown
                            // once no node is found to hold it.
                            if !self.admit(from, None, delivery_bytes, now_ms) {
                                self.refuse_rate(from, out);
                                return;
                            }
                            let addressed = Addressed {
                                to_node: Bytes::new(),
                                to_incarnation: 0,
                                kind: Bytes::from_static(kind.as_str().as_bytes()),
                                sender: sender.clone(),
                                recipient: addressee.clone(),
                                encoding: encoding.clone(),
                                body: message.content.clone(),
                                from_node: Bytes::new(),
                                from_incarnation: 0,
                                request: None,
                            };
                            let asked = out.hub().is_some_and(|link| {
                                link.hub.address_remote(from, addressed, now_ms)
                            });
                            if !asked {
                                self.answer_error(
                                    from,
                                    Reason::UnknownAddressee,
                                    "no user has that name (the cluster cannot be asked now)",
                                    out,
                                );
                            } else if let Some(conn) = self.conns.get_mut(from) {
                                conn.locating += 1;
                            }
                        }
                        Some(CcmDirect::NotCrossing) | None => self.answer_error(
                            from,
                            Reason::UnknownAddressee,
                            "no user has that name",
                            out,
                        ),
                    }
                    return;
                }
            }
        };
        // A `*` said to the lobby reaches the other protocols' lobby members too: charged to
        // the same budget with its CCM recipients, all or nothing, so the switchboard is no
        // way around CCM's sending rate. Content not valid in its encoding reaches CCM's users
        // as bytes; the other protocols carry text only.
        let crosses = &addressee[..] == b"*"
            && out
                .hub()
                .is_some_and(|link| link.hub.has_audience_besides(ProtocolKind::Ccm));
        let said = crosses
            .then(|| LobbyMessage::from_ccm(sender, message).ok().flatten())
            .flatten();
        let admitted = match (said, out.hub()) {
            (Some(said), Some(mut link)) => link.say(said, Endpoint::Conn(from), |crossing| {
                self.admit(from, to, amount.saturating_add(crossing.bytes), now_ms)
            }),
            _ => self.admit(from, to, amount, now_ms),
        };
        if !admitted {
            self.refuse_rate(from, out);
            return;
        }
        if &addressee[..] == b"*" {
            for &to in self.users.values() {
                if to != from {
                    send_to(to, out);
                }
            }
        } else if let Some(to) = to {
            send_to(to, out);
        }
    }

    /// Charge `amount` bytes to `from`'s sending budget (and its pair budget with `to`).
    fn admit(&mut self, from: ConnId, to: Option<ConnId>, amount: u64, now_ms: u64) -> bool {
        let total = byte_rate(self.config.sender_bytes_per_s_max);
        let pair = byte_rate(self.config.pair_bytes_per_s_max);
        self.conns
            .get_mut(from)
            .and_then(|conn| conn.budget.as_mut())
            .is_some_and(|budget| budget.admit(to, amount, total, pair, now_ms))
    }

    fn refuse_rate<O: Outbox>(&mut self, from: ConnId, out: &mut O) {
        debug!("{from}: over its sending rate; message not delivered");
        out.count_rejected();
        self.answer_error(
            from,
            Reason::RateLimited,
            "sending faster than allowed: the message was not delivered",
            out,
        );
    }

    fn answer_error<O: Outbox>(&mut self, id: ConnId, reason: Reason, sentence: &str, out: &mut O) {
        out.send(
            id,
            codec::encode(
                "Error",
                &[("Reason", reason.code().as_bytes())],
                sentence.as_bytes(),
            ),
        );
    }

    /// An Error answer, then close once it is written: the stream can no longer be trusted.
    fn fail<O: Outbox>(&mut self, id: ConnId, reason: Reason, sentence: &str, out: &mut O) {
        out.count_rejected();
        self.answer_error(id, reason, sentence, out);
        out.close(id, CloseReason::ProtocolError, CloseMode::AfterFlush);
        // Nothing more from it is processed; its name and token go now.
        self.forget(id);
        leave_hub(id, out);
    }

    /// Invalidate the token, free the name, stop the keepalive.
    fn forget(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id) {
            if let Some(key) = conn.keepalive.take() {
                self.keepalives.cancel(key);
            }
            if let Phase::Identified { name, .. } = &conn.phase {
                if self.users.get(name) == Some(&id) {
                    self.users.remove(name);
                }
            }
            conn.phase = Phase::Unidentified;
        }
    }

    /// `id` has not identified within the reactor's handshake deadline (`timeout_ms` after
    /// accept): tell it why (Error, `not-identified`), then close once that is written.
    pub fn on_handshake_timeout<O: Outbox>(&mut self, id: ConnId, timeout_ms: u64, out: &mut O) {
        if self.conns.get(id).is_none() {
            // Answered with HTTP 400 and closing already.
            return;
        }
        self.answer_error(
            id,
            Reason::NotIdentified,
            &format!("no user was identified within {timeout_ms} ms of connecting"),
            out,
        );
        out.close(id, CloseReason::HandshakeTimeout, CloseMode::AfterFlush);
        self.forget(id);
        leave_hub(id, out);
    }

    /// `id` is gone: its token is invalid and its name free.
    pub fn on_close(&mut self, id: ConnId) {
        self.forget(id);
        self.conns.remove(id);
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.keepalives.next_deadline_ms()
    }

    /// Keepalive: after `keepalive_idle_ms` of silence send `Connect`; then, if nothing arrives
    /// within `keepalive_answer_ms`, close. The timer is re-armed for what remains when it
    /// fires, instead of being reset on every message.
    pub fn on_timers<O: Outbox>(&mut self, now_ms: u64, out: &mut O) {
        while let Some(id) = self.keepalives.poll_expired(now_ms) {
            let idle_ms = self.config.keepalive_idle_ms;
            let answer_ms = self.config.keepalive_answer_ms;
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if !matches!(conn.phase, Phase::Identified { .. }) {
                continue;
            }
            let next_ms = match conn.ping_sent_ms {
                Some(sent_ms) if now_ms.saturating_sub(sent_ms) >= answer_ms => {
                    debug!("{id}: no answer to the keepalive");
                    conn.keepalive = None;
                    out.close(id, CloseReason::Timeout, CloseMode::Now);
                    continue;
                }
                Some(sent_ms) => sent_ms + answer_ms,
                None if now_ms.saturating_sub(conn.last_heard_ms) >= idle_ms => {
                    conn.ping_sent_ms = Some(now_ms);
                    out.send(id, codec::encode("Connect", &[], b""));
                    now_ms + answer_ms
                }
                None => conn.last_heard_ms + idle_ms,
            };
            conn.keepalive = Some(self.keepalives.insert(next_ms, id));
        }
    }
}

fn hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|&b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]])
        .collect()
}

/// CCM's message without Content-Length ends with a read burst, its HTTP answer is dated, and
/// it says why before a handshake-timeout close.
impl StreamService for CcmService {
    fn reactor_handshake_deadline(&self) -> bool {
        true
    }

    fn on_accept<O: Outbox>(&mut self, id: ConnId, cx: &Context, _out: &mut O) {
        self.on_accept(id, cx.now_ms);
    }

    fn on_data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, cx: &Context, out: &mut O) {
        self.on_data(id, input, false, cx.now_ms, cx.unix_secs(), out);
    }

    fn on_burst_end<O: Outbox>(
        &mut self,
        id: ConnId,
        input: &mut BytesMut,
        cx: &Context,
        out: &mut O,
    ) {
        self.on_data(id, input, true, cx.now_ms, cx.unix_secs(), out);
    }

    fn on_close<O: Outbox>(
        &mut self,
        id: ConnId,
        _reason: CloseReason,
        _cx: &Context,
        _out: &mut O,
    ) {
        self.on_close(id);
    }

    fn on_handshake_timeout<O: Outbox>(
        &mut self,
        id: ConnId,
        timeout_ms: u64,
        _cx: &Context,
        out: &mut O,
    ) {
        self.on_handshake_timeout(id, timeout_ms, out);
    }

    fn on_timers<O: Outbox>(&mut self, clock: &Clock, out: &mut O) {
        self.on_timers(clock.now_ms, out);
    }

    /// A note is only ever the switchboard's (CCM queues nothing with `send_notify` of its
    /// own): a BIN24 user's message was written to this CCM user, or never will be.
    fn on_notify<O: Outbox>(
        &mut self,
        _id: ConnId,
        note: u64,
        acked: bool,
        _clock: &Clock,
        out: &mut O,
    ) {
        crate::protocol::switch::carry_written(note, acked, out);
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        self.next_deadline_ms()
    }

    fn on_hub<O: Outbox>(&mut self, outcome: HubOutcome, clock: &Clock, out: &mut O) {
        match outcome {
            HubOutcome::NameClaim(decided) => {
                self.on_claim_decided(decided.conn, decided.decision, clock.now_ms, out);
            }
            HubOutcome::CcmLocated { from } => {
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
