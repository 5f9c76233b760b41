//! The OCM server logic, sans-io: TCRP requests over TCP create and join rooms and hand out
//! tokens; chat datagrams over UDP are checked against those tokens and relayed to the room.
//!
//! Rooms, members and tokens live here, not per connection: a TCRP connection carries exactly
//! one request and closes, and the member it created lives on in the room until it leaves,
//! falls silent, or cannot be reached.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use log::debug;
use slab::Slab;

use super::codec::{self, TcrpError, TcrpRequest};
use super::json::{self, JsonError};
use super::relay::fanout_limit;
use crate::chat::ConnMap;
use crate::hub::{Endpoint, LobbyMessage, OcmMemberId, OcmStep, User};
use crate::limits::{Admission, FanoutBudget, PerIpCounts};
use crate::protocol::{
    Clock, CloseMode, CloseReason, ConnId, Context, DatagramDrop, DatagramOut, DatagramSent,
    DatagramService, LobbyGate, Outbox, ProtocolKind, RemoteSender, StreamService,
};
use crate::timer::{TimerKey, TimerWheel};

mod cluster;
use cluster::{RemoteMember, Spanning};

/// Fills 32 bytes with randomness; false when no randomness could be had.
pub type TokenSource = Box<dyn FnMut(&mut [u8; 32]) -> bool + Send>;

/// Tokens from the operating system's cryptographic random source: a token is the only thing
/// that lets a datagram speak in a room, so it must not be guessable.
pub fn os_token_source() -> TokenSource {
    Box::new(|bytes: &mut [u8; 32]| getrandom::fill(bytes).is_ok())
}

#[derive(Clone, Debug)]
pub struct OcmConfig {
    /// Largest TCRP payload, checked from the header.
    pub tcrp_payload_bytes_max: usize,
    /// Longest room name, in bytes of its UTF-8 form (RoomNameSize caps it at 255 anyway).
    pub room_name_bytes_max: usize,
    /// Longest user name, in bytes of its UTF-8 form.
    pub user_name_bytes_max: usize,
    /// A TCP client that has not sent a whole request by then is closed.
    pub tcrp_request_timeout_ms: u64,
    /// A member with no accepted datagram for this long is removed.
    pub idle_timeout_ms: u64,
    /// A member whose datagrams fail to send this many times in a row is removed.
    pub send_failures_max: u32,
    pub rooms_max: usize,
    /// Rooms whose host came from one IP address, so one host cannot take every room (issue
    /// 15: 10,000 rooms from one IP locked everyone out). 0: no limit.
    pub rooms_per_ip_max: u32,
    /// A room none of whose members has sent an accepted datagram this long after it was
    /// created is closed, as if its host had left: rooms made and abandoned do not wait out
    /// the idle timeout. 0: never.
    pub room_silent_timeout_ms: u64,
    /// Members of one room, host included.
    pub room_members_max: usize,
    /// Chat datagrams relayed per second, counted in sends (a text to 99 members is 99): in
    /// total, and per sending address. A datagram the budget cannot cover goes to no one.
    pub sends_per_s_max: u64,
    pub sends_per_source_per_s_max: u64,
    /// Send the document's state-1 acknowledgement before the answer. Off by default: the
    /// original client reads one answer and crashes on a state-1 one.
    pub ack_state1: bool,
    pub timer_tick_ms: u64,
}

impl Default for OcmConfig {
    fn default() -> Self {
        OcmConfig {
            tcrp_payload_bytes_max: 65_536,
            room_name_bytes_max: 255,
            user_name_bytes_max: 255,
            tcrp_request_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            send_failures_max: 3,
            rooms_max: 10_000,
            rooms_per_ip_max: 32,
            room_silent_timeout_ms: 120_000,
            room_members_max: 1_000,
            sends_per_s_max: 250_000,
            sends_per_source_per_s_max: 20_000,
            ack_state1: false,
            timer_tick_ms: 10,
        }
    }
}

/// A token as it travels: 32 random bytes as 64 lowercase hex characters.
type Token = [u8; 64];

/// The node and incarnation of a member or host on another node.
type NodeId = (Bytes, u64);

/// `Room::host` of a room whose host is on another node (cluster mode).
const HOST_ELSEWHERE: usize = usize::MAX;

/// How many fresh tokens to draw when one collides with a live token. With 256 random bits a
/// single collision already means the source is broken; a few attempts tell the two apart.
const TOKEN_ATTEMPTS: usize = 4;

/// 10 ms ticks: one revolution is about 41 s, past the request timeout; the 600 s idle timer
/// waits through a few revolutions, one skip each.
const WHEEL_SLOT_COUNT: usize = 4096;

/// Most sending addresses whose fan-out budget is tracked; buckets that refilled are forgotten
/// when room is needed, so this bounds memory, not who may speak.
const SOURCES_MAX: usize = 65_536;

/// Who a fan-out is charged to: the address a chat datagram came from, or the sender in
/// another protocol of a lobby line the switchboard brings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FanoutSource {
    Datagram(SocketAddr),
    Lobby(Endpoint),
    /// A sender on another node of the cluster: its (node, protocol, name), hashed with the
    /// service's own random keys (a name cannot be picked to share another's budget).
    Remote(u64),
}

/// A TCP connection that has not yet sent its request.
#[derive(Debug)]
struct TcrpConn {
    peer_ip: IpAddr,
    deadline: TimerKey,
}

#[derive(Debug)]
struct Member {
    /// Key of its room in `rooms`.
    room: usize,
    /// Position in its room's `members`, kept up to date by swap-removal.
    index: usize,
    name: Box<str>,
    token: Token,
    /// The IP the token was issued to (canonical form); datagrams must come from it.
    ip: IpAddr,
    /// Where its chat goes; unknown until its first datagram when the request gave none.
    address: Option<SocketAddr>,
    last_seen_ms: u64,
    send_failures: u32,
    idle: TimerKey,
}

impl Member {
    /// Sends `bytes` to this member's chat address, if known yet, counting its failed sends
    /// in a row; true once they reach `failures_max` (the member is unreachable).
    fn send_chat<D: DatagramOut>(&mut self, bytes: &[u8], failures_max: u32, out: &mut D) -> bool {
        let Some(address) = self.address else {
            return false;
        };
        match out.send_to(address, bytes) {
            DatagramSent::Sent => self.send_failures = 0,
            // A full socket buffer says nothing about this member.
            DatagramSent::Dropped => {}
            DatagramSent::Failed => {
                self.send_failures = self.send_failures.saturating_add(1);
                return self.send_failures >= failures_max;
            }
        }
        false
    }
}

#[derive(Debug)]
struct Room {
    name: Box<str>,
    /// Member key of the creator; the room lives as long as the host. [`HOST_ELSEWHERE`]
    /// when the host is on another node (cluster mode: this node serves some of its members).
    host: usize,
    /// Random per room: tells it apart from a later room of the same name across nodes.
    id: u64,
    /// The host's user name, for the leave text when its node dies.
    host_name: Box<str>,
    /// The host's node; `None`: this one.
    host_node: Option<NodeId>,
    /// Members on other nodes (cluster mode): name to node, so that they can be announced
    /// gone when their node dies, or when Redis no longer lists them after an outage.
    remote: HashMap<Bytes, RemoteMember>,
    /// Members the last read from Redis found gone and told gone here, whose `left` event
    /// may still arrive: it is not told twice. Each read replaces the last one's list.
    told_gone: HashMap<Bytes, NodeId>,
    /// The IP its host's request came from (canonical), for the per-IP room limit.
    host_ip: IpAddr,
    /// Told apart from a later room in the same slot, for its silence timer.
    serial: u64,
    /// A member has sent an accepted datagram.
    heard: bool,
    /// Member keys, in no particular order.
    members: Vec<usize>,
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    /// A TCP connection's deadline for its whole request.
    Request(ConnId),
    /// A member's idle check, re-armed for the remainder when it fires early.
    Idle(usize),
    /// A room's check that someone has spoken: (room key, room serial).
    Silent(usize, u64),
    /// A TCRP request's deadline for the cluster's answer.
    Cluster(u64),
}

/// Why a member leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    /// It sent `exit`.
    Exit,
    /// Silent past the idle limit: it is also sent its own leave text, which makes the original
    /// client close.
    Idle,
    /// Its datagrams kept failing: nothing more is sent to it.
    Unreachable,
}

/// What a complete request gets.
enum Outcome {
    /// State 2, 202, with the member's new token.
    Done(Token),
    /// State 0, 400, with this message (the room exists, or does not).
    Refused(String),
    /// State 3, 500. The reason is for the log; the client gets the contract's fixed text.
    Failed(&'static str),
    /// Asked of the cluster (Redis): answered when it answers, or at its deadline.
    Waiting,
}

pub struct OcmService {
    config: OcmConfig,
    conns: ConnMap<TcrpConn>,
    rooms: Slab<Room>,
    room_keys: HashMap<Box<str>, usize>,
    members: Slab<Member>,
    tokens: HashMap<Token, usize>,
    timers: TimerWheel<Timer>,
    token_source: TokenSource,
    /// One chat text at a time, encoded once and sent to every recipient; kept to reuse its
    /// allocation.
    text: Vec<u8>,
    /// Members to remove once the current fan-out is over, with why; kept for its allocation.
    doomed: Vec<(usize, Leave)>,
    /// Chat datagrams' fan-outs and the switchboard's lobby lines, one budget for the socket.
    budget: FanoutBudget<FanoutSource>,
    /// Rooms open per host IP.
    rooms_per_ip: PerIpCounts,
    next_room_serial: u64,
    /// Keys [`FanoutSource::Remote`]'s hash.
    remote_keys: RandomState,
    /// Cluster mode: rooms and tokens across nodes.
    cluster: Option<Box<Spanning>>,
}

impl OcmService {
    pub fn new(config: OcmConfig, tokens: TokenSource, now_ms: u64) -> Self {
        let timers = TimerWheel::new(config.timer_tick_ms, WHEEL_SLOT_COUNT, now_ms);
        let budget = FanoutBudget::new(
            fanout_limit(config.sends_per_s_max, config.room_members_max),
            fanout_limit(config.sends_per_source_per_s_max, config.room_members_max),
            // Only members' datagrams are relayed; bounded as the per-source datagram table is.
            SOURCES_MAX,
            now_ms,
        );
        OcmService {
            budget,
            rooms_per_ip: PerIpCounts::default(),
            next_room_serial: 0,
            remote_keys: RandomState::new(),
            cluster: None,
            config,
            conns: ConnMap::new(),
            rooms: Slab::new(),
            room_keys: HashMap::new(),
            members: Slab::new(),
            tokens: HashMap::new(),
            timers,
            token_source: tokens,
            text: Vec::with_capacity(codec::TEXT_BYTES_MAX),
            doomed: Vec::new(),
        }
    }

    pub fn rooms(&self) -> usize {
        self.room_keys.len()
    }

    /// Members of all rooms (tokens live).
    pub fn members(&self) -> usize {
        self.members.len()
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.next_deadline_ms()
    }

    // ---- TCRP over TCP ----

    pub fn on_accept(&mut self, id: ConnId, peer_ip: IpAddr, now_ms: u64) {
        let deadline_ms = now_ms.saturating_add(self.config.tcrp_request_timeout_ms);
        let deadline = self.timers.insert(deadline_ms, Timer::Request(id));
        if let Some(old) = self.conns.insert(id, TcrpConn { peer_ip, deadline }) {
            self.timers.cancel(old.deadline);
        }
    }

    /// Bytes arrived. The first whole request is answered and the connection closed after the
    /// answer is written; whatever else arrives is ignored.
    pub fn on_data<O: Outbox>(
        &mut self,
        id: ConnId,
        input: &mut BytesMut,
        now_ms: u64,
        out: &mut O,
    ) {
        let Some(conn) = self.conns.get(id) else {
            // Answered (or timed out) already: one request per connection.
            input.clear();
            return;
        };
        let peer_ip = conn.peer_ip;
        match codec::decode_request(input, self.config.tcrp_payload_bytes_max) {
            Ok(None) => return,
            Ok(Some(request)) => {
                out.count_frame_in(id);
                if self.answer(id, peer_ip, &request, now_ms, out) {
                    out.close(id, CloseReason::Done, CloseMode::AfterFlush);
                }
            }
            Err(err @ TcrpError::PayloadTooLarge { header, .. }) => {
                debug!("{id}: {err}");
                out.count_rejected();
                // The room name was not read: its byte count stands in for its characters.
                self.send_answer(
                    id,
                    header.room_name_size,
                    header.operation,
                    &Outcome::Failed("payload too large"),
                    out,
                );
                // The body that follows cannot be skipped reliably: close once answered.
                out.close(id, CloseReason::ProtocolError, CloseMode::AfterFlush);
            }
        }
        input.clear();
        if let Some(conn) = self.conns.remove(id) {
            self.timers.cancel(conn.deadline);
        }
    }

    pub fn on_close(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(id) {
            self.timers.cancel(conn.deadline);
        }
        if let Some(cluster) = self.cluster.as_mut() {
            if let Some(deadline) = cluster.abandon_conn(id) {
                self.timers.cancel(deadline);
            }
        }
    }

    /// False when the answer waits for the cluster.
    fn answer<O: Outbox>(
        &mut self,
        id: ConnId,
        peer_ip: IpAddr,
        request: &TcrpRequest,
        now_ms: u64,
        out: &mut O,
    ) -> bool {
        let room_chars = room_chars(&request.room);
        let is_request = matches!(
            request.operation,
            codec::OPERATION_CREATE | codec::OPERATION_JOIN
        ) && request.state == codec::STATE_REQUEST;
        if self.config.ack_state1 && is_request {
            let json = json::encode_answer(codec::STATUS_ACCEPTED, codec::MESSAGE_ACCEPTED, None);
            out.send(
                id,
                codec::encode_answer(room_chars, request.operation, codec::STATE_ACK, &json),
            );
        }
        let outcome = self.serve(id, peer_ip, request, now_ms);
        if let Outcome::Waiting = outcome {
            return false;
        }
        self.finish_answer(id, room_chars, request, &outcome, out);
        true
    }

    /// Sends a decided request's answer; a new member of the lobby room enters the lobby.
    fn finish_answer<O: Outbox>(
        &mut self,
        id: ConnId,
        room_chars: u8,
        request: &TcrpRequest,
        outcome: &Outcome,
        out: &mut O,
    ) {
        if let Outcome::Failed(why) = outcome {
            debug!("{id}: malformed or refused TCRP request: {why}");
            out.count_rejected();
        }
        if let (Outcome::Done(token), Some(link)) = (outcome, out.hub()) {
            // A member of the lobby room is in the switchboard's lobby from its join on (what
            // is said before its first datagram, which gives its address, does not reach it).
            let member = self.tokens.get(token).copied();
            if let Some(key) = member.filter(|_| link.hub.is_ocm_lobby_room(&request.room)) {
                if let Some(member) = self.members.get(key) {
                    let user = User {
                        protocol: ProtocolKind::Ocm,
                        endpoint: lobby_endpoint(key),
                        name: Bytes::copy_from_slice(member.name.as_bytes()),
                    };
                    link.hub.enter_lobby(user, link.queue);
                }
            }
        }
        self.send_answer(id, room_chars, request.operation, outcome, out);
    }

    fn send_answer<O: Outbox>(
        &self,
        id: ConnId,
        room_chars: u8,
        operation: u8,
        outcome: &Outcome,
        out: &mut O,
    ) {
        let (state, json) = match outcome {
            Outcome::Done(token) => (
                codec::STATE_DONE,
                // Hex digits are ASCII: the token is always valid UTF-8.
                json::encode_answer(
                    codec::STATUS_DONE,
                    codec::MESSAGE_DONE,
                    std::str::from_utf8(token).ok(),
                ),
            ),
            Outcome::Refused(message) => (
                codec::STATE_REQUEST,
                json::encode_answer(codec::STATUS_REFUSED, message, None),
            ),
            Outcome::Failed(_) | Outcome::Waiting => (
                codec::STATE_ERROR,
                json::encode_answer(codec::STATUS_FAILED, codec::MESSAGE_FAILED, None),
            ),
        };
        out.send(
            id,
            codec::encode_answer(room_chars, operation, state, &json),
        );
    }

    /// Decides a complete request and, on success, makes the member.
    fn serve(
        &mut self,
        id: ConnId,
        peer_ip: IpAddr,
        request: &TcrpRequest,
        now_ms: u64,
    ) -> Outcome {
        let operation = request.operation;
        if operation != codec::OPERATION_CREATE && operation != codec::OPERATION_JOIN {
            return Outcome::Failed("unknown operation");
        }
        if request.state != codec::STATE_REQUEST {
            return Outcome::Failed("a request must have state 0");
        }
        if request.room.is_empty() || request.room.len() > self.config.room_name_bytes_max {
            return Outcome::Failed("room name empty or too long");
        }
        let Ok(room) = std::str::from_utf8(&request.room) else {
            return Outcome::Failed("room name not UTF-8");
        };
        let Ok(payload) = std::str::from_utf8(&request.payload) else {
            return Outcome::Failed("payload not UTF-8");
        };
        if payload.is_empty() {
            return Outcome::Failed("empty payload");
        }
        let (user_name, address) = match json::parse_request(payload) {
            Ok(request) => {
                let mut address = request.user_address;
                // Chat goes to the IP the request came from, with the port the client named:
                // an unspecified IP (a socket bound to all interfaces) needs it, and taking
                // another IP from the payload would let anyone aim a room's traffic at a
                // third host until that member times out.
                if address.ip().to_canonical() != peer_ip.to_canonical() {
                    address.set_ip(peer_ip);
                }
                (request.user_name, Some(address))
            }
            // Not JSON at all: a plain user name, whose address its first datagram tells.
            Err(JsonError::Syntax { .. }) => (payload.to_string(), None),
            Err(JsonError::Shape(why)) => return Outcome::Failed(why),
        };
        if user_name.is_empty() || user_name.len() > self.config.user_name_bytes_max {
            return Outcome::Failed("user name empty or too long");
        }
        if self.cluster.is_some() {
            return self.serve_clustered(id, peer_ip, request, room, user_name, address, now_ms);
        }

        let room_key = match (operation, self.room_keys.get(room)) {
            (codec::OPERATION_CREATE, Some(_)) => {
                return Outcome::Refused(codec::room_exists_message(room))
            }
            (codec::OPERATION_CREATE, None) => {
                if self.rooms.len() >= self.config.rooms_max {
                    return Outcome::Failed("rooms_max reached");
                }
                let per_ip_max = self.config.rooms_per_ip_max;
                if per_ip_max != 0 && self.rooms_per_ip.count(peer_ip) >= per_ip_max {
                    return Outcome::Failed("rooms_per_ip_max reached");
                }
                None
            }
            (_, None) => return Outcome::Refused(codec::room_missing_message(room)),
            (_, Some(&key)) => {
                let full = self
                    .rooms
                    .get(key)
                    .is_none_or(|r| r.members.len() >= self.config.room_members_max);
                if full {
                    return Outcome::Failed("room_members_max reached");
                }
                // The original client leaves when it receives `<its name>が<room>から退出しました。`,
                // so a second member with the same name would be thrown out when the first
                // leaves. The contract has no answer for a taken name; 500 asks the user to
                // enter the request again.
                let taken = self.rooms.get(key).is_some_and(|r| {
                    r.members.iter().any(|&member| {
                        self.members
                            .get(member)
                            .is_some_and(|m| *m.name == *user_name)
                    })
                });
                if taken {
                    return Outcome::Failed("user name taken in this room");
                }
                Some(key)
            }
        };
        let Some(token) = self.new_token() else {
            log::error!("no randomness for an OCM token; answering 500");
            return Outcome::Failed("no token");
        };
        let room_key = match room_key {
            Some(key) => key,
            None => {
                let host_ip = peer_ip.to_canonical();
                self.new_room(room, &user_name, host_ip, 0, None, now_ms)
            }
        };
        let member = self.add_member(
            room_key,
            user_name.into(),
            token,
            peer_ip.to_canonical(),
            address,
            now_ms,
        );
        if operation == codec::OPERATION_CREATE {
            if let Some(room) = self.rooms.get_mut(room_key) {
                room.host = member;
            }
        }
        Outcome::Done(token)
    }

    /// A room, hosted here (`host_node` `None`: its host is added next) or a view of one
    /// hosted on another node.
    fn new_room(
        &mut self,
        room: &str,
        host_name: &str,
        host_ip: IpAddr,
        id: u64,
        host_node: Option<NodeId>,
        now_ms: u64,
    ) -> usize {
        let serial = self.next_room_serial;
        self.next_room_serial += 1;
        let hosted = host_node.is_none();
        let key = self.rooms.insert(Room {
            name: room.into(),
            // Set once the host is added, when it is here.
            host: HOST_ELSEWHERE,
            id,
            host_name: host_name.into(),
            host_node,
            remote: HashMap::new(),
            told_gone: HashMap::new(),
            host_ip,
            serial,
            heard: false,
            members: Vec::new(),
        });
        self.room_keys.insert(room.into(), key);
        if hosted {
            self.rooms_per_ip.try_add(host_ip, 0);
            if self.config.room_silent_timeout_ms != 0 {
                let due_ms = now_ms.saturating_add(self.config.room_silent_timeout_ms);
                self.timers.insert(due_ms, Timer::Silent(key, serial));
            }
        }
        key
    }

    /// A fresh token that no live member holds.
    fn new_token(&mut self) -> Option<Token> {
        for _ in 0..TOKEN_ATTEMPTS {
            let mut raw = [0u8; 32];
            if !(self.token_source)(&mut raw) {
                return None;
            }
            let token = hex_token(&raw);
            if !self.tokens.contains_key(&token) {
                return Some(token);
            }
            log::warn!("a fresh OCM token collided with a live one; drawing again");
        }
        None
    }

    fn add_member(
        &mut self,
        room_key: usize,
        name: Box<str>,
        token: Token,
        ip: IpAddr,
        address: Option<SocketAddr>,
        now_ms: u64,
    ) -> usize {
        let key = self.members.vacant_key();
        let due_ms = now_ms.saturating_add(self.config.idle_timeout_ms);
        let idle = self.timers.insert(due_ms, Timer::Idle(key));
        let index = match self.rooms.get_mut(room_key) {
            Some(room) => {
                room.members.push(key);
                room.members.len() - 1
            }
            None => 0,
        };
        self.members.insert(Member {
            room: room_key,
            index,
            name,
            token,
            ip,
            address,
            last_seen_ms: now_ms,
            send_failures: 0,
            idle,
        });
        self.tokens.insert(token, key);
        key
    }

    // ---- chat over UDP ----

    /// A datagram arrived on the OCM UDP socket from `from`.
    pub fn on_datagram<D: DatagramOut>(
        &mut self,
        from: SocketAddr,
        raw: &[u8],
        now_ms: u64,
        out: &mut D,
    ) {
        let Ok(datagram) = codec::parse_datagram(raw) else {
            out.count_dropped_in(DatagramDrop::Malformed);
            return;
        };
        let room_key = std::str::from_utf8(datagram.room)
            .ok()
            .and_then(|room| self.room_keys.get(room).copied());
        let member_key = room_key.and_then(|room_key| {
            <&Token>::try_from(datagram.token)
                .ok()
                .and_then(|token| self.tokens.get(token).copied())
                .filter(|&key| self.members.get(key).is_some_and(|m| m.room == room_key))
        });
        let (Some(room_key), Some(member_key)) = (room_key, member_key) else {
            if self.cluster.is_some() {
                // Maybe another node's member (the kernel may deliver its datagrams to any
                // node): its token is looked up.
                self.on_foreign_datagram(from, raw, now_ms, out, false);
            } else if room_key.is_none() {
                out.count_dropped_in(DatagramDrop::UnknownRoom);
            } else {
                out.count_dropped_in(DatagramDrop::BadToken);
            }
            return;
        };
        let Some(member) = self.members.get_mut(member_key) else {
            out.count_dropped_in(DatagramDrop::BadToken);
            return;
        };
        if from.ip().to_canonical() != member.ip {
            out.count_dropped_in(DatagramDrop::WrongAddress);
            return;
        }
        // Relayed as text: bytes that are not UTF-8 would reach the others as garbage.
        let Ok(message) = std::str::from_utf8(datagram.message) else {
            out.count_dropped_in(DatagramDrop::Malformed);
            return;
        };
        let exit = datagram.message == codec::EXIT_MESSAGE;
        if !exit {
            let text_bytes = member.name.len() + 2 + message.len();
            if text_bytes > codec::TEXT_BYTES_MAX {
                // Cut text would be a different message; the sender can send a shorter one.
                out.count_dropped_in(DatagramDrop::Malformed);
                return;
            }
            self.text.clear();
            self.text.extend_from_slice(member.name.as_bytes());
            self.text.extend_from_slice(b": ");
            self.text.extend_from_slice(datagram.message);
        }
        member.address = Some(from);
        member.last_seen_ms = now_ms;
        if let Some(room) = self.rooms.get_mut(room_key) {
            room.heard = true;
        }
        if exit {
            out.count_datagram_in();
            self.doomed.push((member_key, Leave::Exit));
            self.remove_doomed(out);
            return;
        }
        if self.say_line(
            room_key,
            member_key,
            from,
            datagram.message,
            true,
            now_ms,
            out,
        ) {
            out.count_datagram_in();
        }
        self.remove_doomed(out);
    }

    /// Member `member_key` (of this node) said `message` in its room from `from`; its line
    /// (`name: message`) is in `self.text`. It goes to the room's other members here, within
    /// the fan-out budget of `from`; said in the lobby room, also to the lobby (the other
    /// protocols' members here, and every lobby member of the other nodes through `Said`),
    /// charged with the room's sends, all or nothing. `publish`: the other nodes are sent the
    /// room's `chat` event (not when it came from one). False when the budget refused it
    /// (counted).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn say_line<D: DatagramOut>(
        &mut self,
        room_key: usize,
        member_key: usize,
        from: SocketAddr,
        message: &[u8],
        publish: bool,
        now_ms: u64,
        out: &mut D,
    ) -> bool {
        let Some(room) = self.rooms.get(room_key) else {
            return false;
        };
        let sends = room.members.len().saturating_sub(1) as u64;
        // Said in the lobby room, it also reaches the other protocols' lobby members: their
        // deliveries are charged to the same budget, with the room's, all or nothing.
        let said = match out.hub() {
            Some(link) if link.hub.has_audience_besides(ProtocolKind::Ocm) => {
                let lobby_room = &link.hub.config().ocm_lobby_room;
                self.members.get(member_key).and_then(|member| {
                    LobbyMessage::from_ocm(lobby_room, room.name.as_bytes(), &member.name, message)
                })
            }
            _ => None,
        };
        let source = FanoutSource::Datagram(from);
        let budget = &mut self.budget;
        let in_lobby = said.is_some();
        let admitted = match (said, out.hub()) {
            (Some(said), Some(mut link)) => {
                link.say(said, lobby_endpoint(member_key), |crossing| {
                    budget.admit(source, sends + crossing.recipients, now_ms) == Admission::Admitted
                })
            }
            _ => budget.admit(source, sends, now_ms) == Admission::Admitted,
        };
        if !admitted {
            out.count_dropped_in(DatagramDrop::FanoutBudget);
            return false;
        }
        let text = std::mem::take(&mut self.text);
        self.fan_out(room_key, Some(member_key), &text, out);
        if publish && self.cluster.is_some() {
            self.publish_chat(room_key, member_key, from, in_lobby, &text, out);
        }
        self.text = text;
        true
    }

    /// Sends `text` to every member of the room with a known address but `except`, counting
    /// failures; members that reach the limit are queued in `doomed`.
    fn fan_out<D: DatagramOut>(
        &mut self,
        room_key: usize,
        except: Option<usize>,
        text: &[u8],
        out: &mut D,
    ) {
        let Some(room) = self.rooms.get(room_key) else {
            return;
        };
        for &key in &room.members {
            if Some(key) == except {
                continue;
            }
            let Some(member) = self.members.get_mut(key) else {
                continue;
            };
            if member.send_chat(text, self.config.send_failures_max, out) {
                self.doomed.push((key, Leave::Unreachable));
            }
        }
    }

    /// Removes the queued members; a removal's notices may queue more.
    fn remove_doomed<D: DatagramOut>(&mut self, out: &mut D) {
        while let Some((key, why)) = self.doomed.pop() {
            // A member can be queued twice, or go with its room first: only the live ones.
            // No member is created while the queue drains, so a key cannot be reused here.
            if self.members.contains(key) {
                self.leave(key, why, out);
            }
        }
    }

    /// `key` leaves its room: the others are told, and a host takes the room with it.
    fn leave<D: DatagramOut>(&mut self, key: usize, why: Leave, out: &mut D) {
        let Some(member) = self.remove_member(key) else {
            return;
        };
        leave_lobby(key, out);
        let Some(room) = self.rooms.get(member.room) else {
            return;
        };
        let is_host = room.host == key;
        let leave_text = codec::leave_text(&member.name, &room.name);
        debug!("OCM {} leaves {} ({why:?})", member.name, room.name);
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.member_gone(room, &member);
        }
        if is_host {
            let text = codec::host_leave_text(&member.name, &room.name);
            self.publish_room_event(member.room, OcmStep::Closed, &member.name, &text, out);
            self.close_room(member.room, text.as_bytes(), out);
        } else {
            self.publish_room_event(member.room, OcmStep::Left, &member.name, &leave_text, out);
            self.fan_out(member.room, None, leave_text.as_bytes(), out);
            self.drop_if_unserved(member.room);
        }
        if why == Leave::Idle {
            if let Some(address) = member.address {
                // Whatever the outcome, the member is gone already.
                let _ = out.send_to(address, leave_text.as_bytes());
            }
        }
    }

    /// Deletes the room: `text` to every remaining member, then their tokens go with it and the
    /// name is free again.
    fn close_room<D: DatagramOut>(&mut self, room_key: usize, text: &[u8], out: &mut D) {
        let Some(room) = self.rooms.try_remove(room_key) else {
            return;
        };
        self.room_keys.remove(&room.name);
        if room.host_node.is_none() {
            self.rooms_per_ip.remove(room.host_ip);
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.room_closed(&room);
        }
        for &key in &room.members {
            let Some(member) = self.members.try_remove(key) else {
                continue;
            };
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.member_gone(&room, &member);
            }
            leave_lobby(key, out);
            self.timers.cancel(member.idle);
            self.tokens.remove(&member.token);
            if let Some(address) = member.address {
                // They are all leaving: a failure here changes nothing.
                let _ = out.send_to(address, text);
            }
        }
    }

    /// Takes the member out of the member table, the token table, its room's list and the
    /// timer wheel; the room itself is left to the caller.
    fn remove_member(&mut self, key: usize) -> Option<Member> {
        let member = self.members.try_remove(key)?;
        self.timers.cancel(member.idle);
        self.tokens.remove(&member.token);
        if let Some(room) = self.rooms.get_mut(member.room) {
            if room.members.get(member.index) == Some(&key) {
                room.members.swap_remove(member.index);
                if let Some(&moved) = room.members.get(member.index) {
                    if let Some(moved) = self.members.get_mut(moved) {
                        moved.index = member.index;
                    }
                }
            }
        }
        Some(member)
    }

    // ---- time ----

    /// Request deadlines and idle members.
    pub fn on_timers<O: Outbox, D: DatagramOut>(
        &mut self,
        now_ms: u64,
        out: &mut O,
        datagrams: &mut D,
    ) {
        while let Some(timer) = self.timers.poll_expired(now_ms) {
            match timer {
                Timer::Request(id) => {
                    if self.conns.remove(id).is_some() {
                        debug!("{id}: no whole TCRP request in time");
                        out.count_rejected();
                        // Counted with the other protocols' handshake deadlines: it is the
                        // same guard (no slowloris) for a protocol of one request.
                        out.close(id, CloseReason::HandshakeTimeout, CloseMode::Now);
                    }
                }
                Timer::Idle(key) => {
                    let idle_ms = self.config.idle_timeout_ms;
                    let Some(member) = self.members.get_mut(key) else {
                        continue;
                    };
                    let due_ms = member.last_seen_ms.saturating_add(idle_ms);
                    if now_ms >= due_ms {
                        self.doomed.push((key, Leave::Idle));
                        self.remove_doomed(datagrams);
                    } else {
                        member.idle = self.timers.insert(due_ms, Timer::Idle(key));
                    }
                }
                Timer::Cluster(request) => self.cluster_deadline(request, out),
                Timer::Silent(key, serial) => {
                    let silent = self
                        .rooms
                        .get(key)
                        .filter(|room| room.serial == serial && !room.heard);
                    if let Some(room) = silent {
                        debug!("OCM room {} closed: nobody spoke", room.name);
                        let host_name = self
                            .members
                            .get(room.host)
                            .map_or_else(String::new, |host| host.name.to_string());
                        let text = codec::host_leave_text(&host_name, &room.name);
                        self.publish_room_event(key, OcmStep::Closed, &host_name, &text, datagrams);
                        self.close_room(key, text.as_bytes(), datagrams);
                    }
                }
            }
        }
    }
}

/// The room name's length in characters, as the original counts it (`len(str)`); a name that
/// is not UTF-8 counts its bytes. At most 255 either way, since RoomNameSize is one byte.
pub(super) fn room_chars(room: &[u8]) -> u8 {
    let count = match std::str::from_utf8(room) {
        Ok(name) => name.chars().count(),
        Err(_) => room.len(),
    };
    u8::try_from(count).unwrap_or(u8::MAX)
}

/// 64 lowercase hex characters for 32 bytes.
fn hex_token(raw: &[u8; 32]) -> Token {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut token = [0u8; 64];
    for (pair, &byte) in token.chunks_exact_mut(2).zip(raw) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    token
}

/// How the switchboard knows member `key`: a member key is unique among live members, and
/// every removal tells the hub before the key can be reused.
fn lobby_endpoint(key: usize) -> Endpoint {
    Endpoint::Ocm(OcmMemberId(key as u64))
}

/// Member `key` is gone: out of the switchboard's lobby, if it was in it.
pub(super) fn leave_lobby<D: DatagramOut>(key: usize, out: &mut D) {
    if let Some(link) = out.hub() {
        link.hub.leave_lobby(lobby_endpoint(key), link.queue);
    }
}

/// OCM's TCRP connections carry one request each; their request timeout is OCM's own
/// handshake deadline (the reactor's does not apply). Its timers run on the datagram side,
/// where the chat socket (to tell a removed member) is at hand.
impl StreamService for OcmService {
    fn on_accept<O: Outbox>(&mut self, id: ConnId, cx: &Context, _out: &mut O) {
        self.on_accept(id, cx.peer.ip(), cx.now_ms);
    }

    fn on_data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, cx: &Context, out: &mut O) {
        self.on_data(id, input, cx.now_ms, out);
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
}

/// OCM's chat socket: datagrams with a room and a token.
impl DatagramService for OcmService {
    fn on_datagram<D: DatagramOut>(&mut self, datagram: &[u8], cx: &Context, out: &mut D) {
        self.on_datagram(cx.peer, datagram, cx.now_ms, out);
    }

    fn on_timers<O: Outbox, D: DatagramOut>(
        &mut self,
        clock: &Clock,
        out: &mut O,
        datagrams: &mut D,
    ) {
        self.on_timers(clock.now_ms, out, datagrams);
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        self.next_deadline_ms()
    }

    /// A lobby line (`N: T`) for a member of the lobby room, sent as OCM sends its own chat;
    /// a member whose address is not known yet gets nothing, as in its own room.
    fn on_hub_delivery<D: DatagramOut>(&mut self, to: OcmMemberId, bytes: &[u8], out: &mut D) {
        let Some(key) = usize::try_from(to.0).ok() else {
            return;
        };
        let Some(member) = self.members.get_mut(key) else {
            return;
        };
        if member.send_chat(bytes, self.config.send_failures_max, out) {
            // Removed now, as a member whose chat cannot reach it: the hub is told through
            // `out`, so presence and lobby counts are right at once.
            self.doomed.push((key, Leave::Unreachable));
            self.remove_doomed(out);
        }
    }
}

/// Lobby lines from the other protocols pass OCM's fan-out budget as a chat datagram does:
/// per sender (its endpoint) and for the socket.
impl LobbyGate for OcmService {
    fn admit_lobby(&mut self, source: Endpoint, recipients: u64, now_ms: u64) -> bool {
        self.budget
            .admit(FanoutSource::Lobby(source), recipients, now_ms)
            == Admission::Admitted
    }

    fn admit_remote(&mut self, source: RemoteSender<'_>, recipients: u64, now_ms: u64) -> bool {
        let key = self.remote_keys.hash_one(source);
        self.budget
            .admit(FanoutSource::Remote(key), recipients, now_ms)
            == Admission::Admitted
    }
}
