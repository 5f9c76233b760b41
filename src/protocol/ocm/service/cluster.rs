//! OCM rooms across the nodes of a cluster (issue 21; docs/CLUSTER.md, "OCM rooms across
//! nodes"), sans-io: Redis is reached through [`OcmOp`]s the registry hands the OCM rooms
//! thread, and its answers come back as [`OcmAnswer`]s; the other nodes' room events come in
//! as [`OcmRoomEvent`]s and this node's go out through the hub queue.
//!
//! - A TCRP create or join is decided by Redis (a Lua script, atomic): the request waits,
//!   never the reactor; no answer within the deadline (the lease), or Redis unreachable, is
//!   the contract's 500, and nothing is created here.
//! - Each node serves the members whose TCRP request it answered (their idle time, their
//!   address, their removal). A room hosted elsewhere is a view here: its local members, and
//!   who is on which other node.
//! - Chat said through any node goes to that node's members and out as a `Chat` event; every
//!   other node sends it to its own members, from its own socket, within its own fan-out
//!   budget. The member's home node takes it as the member's sign of life.
//! - A datagram whose token this node does not know is held while the token is looked up
//!   (the record is cached), then served as the member's home node would, and published.
//! - A guest's leave and a room's close (host exit, idle, silent room) are events too; a dead
//!   node's members leave, and its rooms close, when its lease lapses.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use log::{debug, warn};

use super::{
    codec, FanoutSource, Member, NodeId, OcmService, Outcome, Room, Timer, Token, HOST_ELSEWHERE,
};
use crate::cluster::ocm::{JoinAnswer, OcmAnswer, OcmOp, TokenRecord};
use crate::hub::{HubEvent, OcmRoomEvent, OcmStep};
use crate::limits::Admission;
use crate::protocol::{CloseMode, CloseReason, ConnId, DatagramDrop, DatagramOut, Outbox};
use crate::timer::TimerKey;

use super::codec::TcrpRequest;

/// Datagrams held while their tokens are looked up, on this node at once; beyond it they are
/// dropped (counted as bad tokens): a flood of unknown tokens cannot grow memory.
const HELD_DATAGRAMS_MAX: usize = 4096;
/// Other nodes' tokens cached; when full, the cache starts afresh (a look-up refills it).
const REMOTE_TOKENS_MAX: usize = 65_536;

/// A TCRP request waiting for Redis.
#[derive(Debug)]
struct Waiting {
    conn: ConnId,
    room_chars: u8,
    request: TcrpRequest,
    room: Box<str>,
    user_name: Box<str>,
    address: Option<SocketAddr>,
    ip: IpAddr,
    token: Token,
    room_id: u64,
    /// `None` once its connection closed or its deadline passed: a grant is then undone.
    deadline: Option<TimerKey>,
}

/// The OCM service's cluster state.
pub(super) struct Spanning {
    node: Bytes,
    incarnation: u64,
    /// How long a request waits for Redis.
    wait_ms: u64,
    next_request: u64,
    /// For the OCM rooms thread, in order.
    ops: Vec<OcmOp>,
    waiting: HashMap<u64, Waiting>,
    waiting_conns: HashMap<ConnId, u64>,
    /// Datagrams waiting for their token's look-up, by token.
    held: HashMap<Token, Vec<(SocketAddr, Bytes)>>,
    held_count: usize,
    remote_tokens: HashMap<Token, TokenRecord>,
    /// Datagrams whose look-up came back, to serve once more (with the OCM socket).
    ready: VecDeque<(SocketAddr, Bytes)>,
    /// Other nodes' room events and lapsed nodes, to act on with the OCM socket.
    events: VecDeque<Box<OcmRoomEvent>>,
    lapsed: Vec<NodeId>,
}

impl Spanning {
    fn is_here(&self, node: &NodeId) -> bool {
        node.0 == self.node && node.1 == self.incarnation
    }

    /// The TCRP connection `id` closed: a request of it still waiting is abandoned (its
    /// deadline back, to cancel).
    pub(super) fn abandon_conn(&mut self, id: ConnId) -> Option<TimerKey> {
        let request = self.waiting_conns.remove(&id)?;
        self.waiting.get_mut(&request)?.deadline.take()
    }

    /// A room closes here: Redis forgets it if this node hosts it.
    pub(super) fn room_closed(&mut self, room: &Room) {
        if room.host_node.is_none() {
            self.ops.push(OcmOp::Close {
                room: Bytes::copy_from_slice(room.name.as_bytes()),
                room_id: room.id,
            });
        }
    }

    /// A member of this node is gone: its name and token go from Redis.
    pub(super) fn member_gone(&mut self, room: &Room, member: &Member) {
        self.ops.push(OcmOp::Leave {
            room: Bytes::copy_from_slice(room.name.as_bytes()),
            member: Bytes::copy_from_slice(member.name.as_bytes()),
            token: member.token,
        });
    }

    fn forget_tokens(&mut self, room: &[u8], room_id: u64, member: Option<&[u8]>) {
        self.remote_tokens.retain(|_, record| {
            !(record.room == room
                && record.room_id == room_id
                && member.is_none_or(|member| record.member == member))
        });
    }
}

fn publish<D: DatagramOut>(out: &mut D, event: OcmRoomEvent) {
    if let Some(link) = out.hub() {
        link.queue.publish(HubEvent::Ocm(Box::new(event)));
    }
}

fn publish_conn<O: Outbox>(out: &mut O, event: OcmRoomEvent) {
    if let Some(link) = out.hub() {
        link.queue.publish(HubEvent::Ocm(Box::new(event)));
    }
}

impl OcmService {
    /// Cluster mode: rooms are decided by Redis and span the nodes. `wait_ms`: how long a
    /// TCRP request waits for Redis before it is answered 500.
    pub fn join_cluster(&mut self, node: Bytes, incarnation: u64, wait_ms: u64) {
        self.cluster = Some(Box::new(Spanning {
            node,
            incarnation,
            wait_ms,
            next_request: 1,
            ops: Vec::new(),
            waiting: HashMap::new(),
            waiting_conns: HashMap::new(),
            held: HashMap::new(),
            held_count: 0,
            remote_tokens: HashMap::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            lapsed: Vec::new(),
        }));
    }

    pub fn has_cluster_ops(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.ops.is_empty())
    }

    /// What to ask Redis, in order.
    pub fn take_cluster_ops(&mut self) -> Vec<OcmOp> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.ops))
            .unwrap_or_default()
    }

    /// Work that needs the OCM socket: other nodes' events, lapsed nodes, looked-up datagrams.
    pub fn has_socket_work(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| !c.ready.is_empty() || !c.events.is_empty() || !c.lapsed.is_empty())
    }

    /// Another node's room event, acted on with the OCM socket ([`OcmService::on_socket_work`]).
    pub fn queue_remote_event(&mut self, event: Box<OcmRoomEvent>) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.events.push_back(event);
        }
    }

    /// Nodes taken for dead: their members leave, the rooms they hosted close.
    pub fn queue_lapsed_nodes(&mut self, nodes: Vec<NodeId>) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.lapsed.extend(nodes);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve_clustered(
        &mut self,
        id: ConnId,
        peer_ip: IpAddr,
        request: &TcrpRequest,
        room: &str,
        user_name: String,
        address: Option<SocketAddr>,
        now_ms: u64,
    ) -> Outcome {
        let create = request.operation == codec::OPERATION_CREATE;
        if create {
            // This node's own limits first; Redis decides whether the name is free.
            if self.room_keys.contains_key(room) {
                return Outcome::Refused(codec::room_exists_message(room));
            }
            if self.rooms.len() >= self.config.rooms_max {
                return Outcome::Failed("rooms_max reached");
            }
            let per_ip_max = self.config.rooms_per_ip_max;
            if per_ip_max != 0 && self.rooms_per_ip.count(peer_ip) >= per_ip_max {
                return Outcome::Failed("rooms_per_ip_max reached");
            }
        }
        let Some(token) = self.new_token() else {
            log::error!("no randomness for an OCM token; answering 500");
            return Outcome::Failed("no token");
        };
        // The room's id from the token's randomness (a fresh draw would cost another call).
        let room_id =
            u64::from_str_radix(std::str::from_utf8(&token[..16]).unwrap_or("0"), 16).unwrap_or(0);
        let ip = peer_ip.to_canonical();
        let Some(cluster) = self.cluster.as_mut() else {
            return Outcome::Failed("not in a cluster");
        };
        let number = cluster.next_request;
        cluster.next_request += 1;
        let room_bytes = Bytes::copy_from_slice(room.as_bytes());
        let name_bytes = Bytes::copy_from_slice(user_name.as_bytes());
        cluster.ops.push(if create {
            OcmOp::Create {
                request: number,
                room: room_bytes,
                room_id,
                host: name_bytes,
                token,
                ip,
            }
        } else {
            OcmOp::Join {
                request: number,
                room: room_bytes,
                member: name_bytes,
                token,
                ip,
                members_max: self.config.room_members_max,
            }
        });
        let due_ms = now_ms.saturating_add(cluster.wait_ms);
        let deadline = self.timers.insert(due_ms, Timer::Cluster(number));
        cluster.waiting_conns.insert(id, number);
        cluster.waiting.insert(
            number,
            Waiting {
                conn: id,
                room_chars: super::room_chars(&request.room),
                request: request.clone(),
                room: room.into(),
                user_name: user_name.into(),
                address,
                ip,
                token,
                room_id,
                deadline: Some(deadline),
            },
        );
        Outcome::Waiting
    }

    /// A request's deadline passed without Redis's answer: 500, and a late grant is undone.
    pub(super) fn cluster_deadline<O: Outbox>(&mut self, request: u64, out: &mut O) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(waiting) = cluster.waiting.get_mut(&request) else {
            return;
        };
        if waiting.deadline.take().is_none() {
            return;
        }
        let conn = waiting.conn;
        cluster.waiting_conns.remove(&conn);
        let (room_chars, request) = (waiting.room_chars, waiting.request.clone());
        warn!("{conn}: OCM request not confirmed by the cluster within its deadline; answered 500");
        let outcome = Outcome::Failed("the cluster did not answer in time");
        self.finish_answer(conn, room_chars, &request, &outcome, out);
        out.close(conn, CloseReason::Done, CloseMode::AfterFlush);
    }

    /// An answer from the OCM rooms thread.
    pub fn on_cluster_answer<O: Outbox>(&mut self, answer: OcmAnswer, now_ms: u64, out: &mut O) {
        match answer {
            OcmAnswer::Created { request, created } => {
                let Some(waiting) = self.take_waiting(request, created == Some(true)) else {
                    return;
                };
                let outcome = match created {
                    Some(true) if self.room_keys.contains_key(&*waiting.room) => {
                        // This node's view is behind Redis's (a close not heard of yet).
                        self.undo(&waiting, true);
                        Outcome::Failed("a stale room of that name is still here")
                    }
                    Some(true) => {
                        let key = self.new_room(
                            &waiting.room,
                            &waiting.user_name,
                            waiting.ip,
                            waiting.room_id,
                            None,
                            now_ms,
                        );
                        let member = self.add_member(
                            key,
                            waiting.user_name.clone(),
                            waiting.token,
                            waiting.ip,
                            waiting.address,
                            now_ms,
                        );
                        if let Some(room) = self.rooms.get_mut(key) {
                            room.host = member;
                        }
                        Outcome::Done(waiting.token)
                    }
                    Some(false) => Outcome::Refused(codec::room_exists_message(&waiting.room)),
                    None => Outcome::Failed("the cluster (Redis) could not be asked"),
                };
                self.answer_waiting(&waiting, &outcome, out);
            }
            OcmAnswer::Joined { request, answer } => {
                let granted = matches!(answer, JoinAnswer::Joined(_));
                let Some(waiting) = self.take_waiting(request, granted) else {
                    return;
                };
                let outcome = match answer {
                    JoinAnswer::Joined(joined) => {
                        let local = self.room_keys.get(&*waiting.room).copied();
                        let key = match local {
                            Some(key)
                                if self.rooms.get(key).is_some_and(|r| r.id == joined.room_id) =>
                            {
                                Some(key)
                            }
                            Some(_) => None,
                            None => {
                                let key = self.new_room(
                                    &waiting.room,
                                    &String::from_utf8_lossy(&joined.host),
                                    waiting.ip,
                                    joined.room_id,
                                    Some(joined.host_node.clone()),
                                    now_ms,
                                );
                                let cluster = self.cluster.as_ref();
                                if let Some(room) = self.rooms.get_mut(key) {
                                    for (name, node) in joined.members {
                                        if !cluster.is_some_and(|c| c.is_here(&node)) {
                                            room.remote.insert(name, node);
                                        }
                                    }
                                }
                                Some(key)
                            }
                        };
                        match key {
                            Some(key) => {
                                self.add_member(
                                    key,
                                    waiting.user_name.clone(),
                                    waiting.token,
                                    waiting.ip,
                                    waiting.address,
                                    now_ms,
                                );
                                if let Some(event) =
                                    self.room_event(key, OcmStep::Joined, &waiting.user_name, "")
                                {
                                    publish_conn(out, event);
                                }
                                Outcome::Done(waiting.token)
                            }
                            None => {
                                self.undo(&waiting, false);
                                Outcome::Failed("a stale room of that name is still here")
                            }
                        }
                    }
                    JoinAnswer::Missing => {
                        Outcome::Refused(codec::room_missing_message(&waiting.room))
                    }
                    JoinAnswer::NameTaken => Outcome::Failed("user name taken in this room"),
                    JoinAnswer::Full => Outcome::Failed("room_members_max reached"),
                    JoinAnswer::Unavailable => {
                        Outcome::Failed("the cluster (Redis) could not be asked")
                    }
                };
                self.answer_waiting(&waiting, &outcome, out);
            }
            OcmAnswer::Looked { token, record } => {
                let Some(cluster) = self.cluster.as_mut() else {
                    return;
                };
                match record {
                    Ok(Some(record)) if !cluster.is_here(&record.node) => {
                        if cluster.remote_tokens.len() >= REMOTE_TOKENS_MAX {
                            cluster.remote_tokens.clear();
                        }
                        cluster.remote_tokens.insert(token, record);
                    }
                    Ok(_) => {}
                    Err(()) => debug!("an OCM token could not be looked up: Redis unreachable"),
                }
                // Served once more either way: known now, or dropped as a bad token.
                if let Some(held) = cluster.held.remove(&token) {
                    cluster.held_count -= held.len();
                    cluster.ready.extend(held);
                }
            }
        }
    }

    /// The waiting request `number`, if its client still waits for it; otherwise a grant is
    /// undone.
    fn take_waiting(&mut self, number: u64, granted: bool) -> Option<Waiting> {
        let cluster = self.cluster.as_mut()?;
        let waiting = cluster.waiting.remove(&number)?;
        match waiting.deadline {
            Some(deadline) => {
                cluster.waiting_conns.remove(&waiting.conn);
                self.timers.cancel(deadline);
                Some(waiting)
            }
            None => {
                if granted {
                    debug!("an OCM grant came for a request no longer waiting: undone");
                    let create = waiting.request.operation == codec::OPERATION_CREATE;
                    self.undo(&waiting, create);
                }
                None
            }
        }
    }

    /// Redis granted what this node will not serve: its records go.
    fn undo(&mut self, waiting: &Waiting, created: bool) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let room = Bytes::copy_from_slice(waiting.room.as_bytes());
        cluster.ops.push(OcmOp::Leave {
            room: room.clone(),
            member: Bytes::copy_from_slice(waiting.user_name.as_bytes()),
            token: waiting.token,
        });
        if created {
            cluster.ops.push(OcmOp::Close {
                room,
                room_id: waiting.room_id,
            });
        }
    }

    fn answer_waiting<O: Outbox>(&mut self, waiting: &Waiting, outcome: &Outcome, out: &mut O) {
        self.finish_answer(
            waiting.conn,
            waiting.room_chars,
            &waiting.request,
            outcome,
            out,
        );
        out.close(waiting.conn, CloseReason::Done, CloseMode::AfterFlush);
    }

    /// The event of `step` for room `room_key`, said of `member`, a member of this node.
    fn room_event(
        &self,
        room_key: usize,
        step: OcmStep,
        member: &str,
        text: &str,
    ) -> Option<OcmRoomEvent> {
        let cluster = self.cluster.as_ref()?;
        let room = self.rooms.get(room_key)?;
        Some(OcmRoomEvent {
            step,
            room: Bytes::copy_from_slice(room.name.as_bytes()),
            room_id: room.id,
            member: Bytes::copy_from_slice(member.as_bytes()),
            home_node: cluster.node.clone(),
            home_incarnation: cluster.incarnation,
            from: None,
            in_lobby: false,
            text: Bytes::copy_from_slice(text.as_bytes()),
        })
    }

    /// A member of this node left, or a room closed, here: the other nodes are told.
    pub(super) fn publish_room_event<D: DatagramOut>(
        &mut self,
        room_key: usize,
        step: OcmStep,
        member: &str,
        text: &str,
        out: &mut D,
    ) {
        if let Some(event) = self.room_event(room_key, step, member, text) {
            publish(out, event);
        }
    }

    /// A member of this node spoke: the other nodes send `text` to their members.
    pub(super) fn publish_chat<D: DatagramOut>(
        &mut self,
        room_key: usize,
        member_key: usize,
        from: SocketAddr,
        in_lobby: bool,
        text: &[u8],
        out: &mut D,
    ) {
        let Some(member) = self.members.get(member_key) else {
            return;
        };
        if let Some(mut event) = self.room_event(room_key, OcmStep::Chat, &member.name, "") {
            event.from = Some(from);
            event.in_lobby = in_lobby;
            event.text = Bytes::copy_from_slice(text);
            publish(out, event);
        }
    }

    /// A room hosted elsewhere with no member here any more is forgotten here.
    pub(super) fn drop_if_unserved(&mut self, room_key: usize) {
        let unserved = self
            .rooms
            .get(room_key)
            .is_some_and(|room| room.host == HOST_ELSEWHERE && room.members.is_empty());
        if unserved {
            if let Some(room) = self.rooms.try_remove(room_key) {
                self.room_keys.remove(&room.name);
            }
        }
    }

    /// A datagram whose room or token this node does not serve: another node's member's,
    /// served from its token's record (looked up once, then cached).
    pub(super) fn on_foreign_datagram<D: DatagramOut>(
        &mut self,
        from: SocketAddr,
        raw: &[u8],
        now_ms: u64,
        out: &mut D,
        looked_up: bool,
    ) {
        let Ok(datagram) = codec::parse_datagram(raw) else {
            out.count_dropped_in(DatagramDrop::Malformed);
            return;
        };
        let Ok(token) = <Token>::try_from(datagram.token) else {
            out.count_dropped_in(DatagramDrop::BadToken);
            return;
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(record) = cluster.remote_tokens.get(&token).cloned() else {
            if looked_up || cluster.held_count >= HELD_DATAGRAMS_MAX {
                out.count_dropped_in(DatagramDrop::BadToken);
                return;
            }
            let held = cluster.held.entry(token).or_default();
            if held.is_empty() {
                cluster.ops.push(OcmOp::Lookup { token });
            }
            held.push((from, Bytes::copy_from_slice(raw)));
            cluster.held_count += 1;
            return;
        };
        if record.room[..] != *datagram.room {
            out.count_dropped_in(DatagramDrop::BadToken);
            return;
        }
        if from.ip().to_canonical() != record.ip {
            out.count_dropped_in(DatagramDrop::WrongAddress);
            return;
        }
        let Ok(message) = std::str::from_utf8(datagram.message) else {
            out.count_dropped_in(DatagramDrop::Malformed);
            return;
        };
        let name = String::from_utf8_lossy(&record.member).into_owned();
        let room_name = String::from_utf8_lossy(&record.room).into_owned();
        let home = record.node.clone();
        if datagram.message == codec::EXIT_MESSAGE {
            out.count_datagram_in();
            let (step, text) = if record.host {
                (OcmStep::Closed, codec::host_leave_text(&name, &room_name))
            } else {
                (OcmStep::Left, codec::leave_text(&name, &room_name))
            };
            let event = OcmRoomEvent {
                step,
                room: record.room.clone(),
                room_id: record.room_id,
                member: record.member.clone(),
                home_node: home.0,
                home_incarnation: home.1,
                from: None,
                in_lobby: false,
                text: Bytes::from(text),
            };
            cluster.ops.push(if record.host {
                OcmOp::Close {
                    room: record.room.clone(),
                    room_id: record.room_id,
                }
            } else {
                OcmOp::Leave {
                    room: record.room.clone(),
                    member: record.member.clone(),
                    token,
                }
            });
            publish(out, event.clone());
            self.apply_room_event(&event, now_ms, out);
            return;
        }
        let text_bytes = name.len() + 2 + message.len();
        if text_bytes > codec::TEXT_BYTES_MAX {
            out.count_dropped_in(DatagramDrop::Malformed);
            return;
        }
        let mut text = Vec::with_capacity(text_bytes);
        text.extend_from_slice(name.as_bytes());
        text.extend_from_slice(b": ");
        text.extend_from_slice(datagram.message);
        let room_key = self
            .room_keys
            .get(&*room_name)
            .copied()
            .filter(|&key| self.rooms.get(key).is_some_and(|r| r.id == record.room_id));
        let sends = room_key
            .and_then(|key| self.rooms.get(key))
            .map_or(0, |room| room.members.len()) as u64;
        if self
            .budget
            .admit(FanoutSource::Datagram(from), sends, now_ms)
            != Admission::Admitted
        {
            out.count_dropped_in(DatagramDrop::FanoutBudget);
            return;
        }
        out.count_datagram_in();
        if let Some(key) = room_key {
            if let Some(room) = self.rooms.get_mut(key) {
                room.heard = true;
            }
            self.fan_out(key, None, &text, out);
        }
        publish(
            out,
            OcmRoomEvent {
                step: OcmStep::Chat,
                room: record.room,
                room_id: record.room_id,
                member: record.member,
                home_node: home.0,
                home_incarnation: home.1,
                from: Some(from),
                in_lobby: false,
                text: Bytes::from(text),
            },
        );
        self.remove_doomed(out);
    }

    /// Other nodes' events, lapsed nodes and looked-up datagrams, with the OCM socket.
    pub fn on_socket_work<D: DatagramOut>(&mut self, now_ms: u64, out: &mut D) {
        loop {
            let Some(cluster) = self.cluster.as_mut() else {
                return;
            };
            if let Some(node) = cluster.lapsed.pop() {
                self.node_lapsed(&node, out);
            } else if let Some(event) = cluster.events.pop_front() {
                self.apply_room_event(&event, now_ms, out);
            } else if let Some((from, raw)) = cluster.ready.pop_front() {
                self.on_foreign_datagram(from, &raw, now_ms, out, true);
            } else {
                break;
            }
            self.remove_doomed(out);
        }
    }

    /// A room event said by another node (or by this one for another node's member): this
    /// node's members are told, and this node's view of the room follows.
    fn apply_room_event<D: DatagramOut>(&mut self, event: &OcmRoomEvent, now_ms: u64, out: &mut D) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let home = (event.home_node.clone(), event.home_incarnation);
        let at_home = cluster.is_here(&home);
        match event.step {
            OcmStep::Left => cluster.forget_tokens(&event.room, event.room_id, Some(&event.member)),
            OcmStep::Closed => cluster.forget_tokens(&event.room, event.room_id, None),
            OcmStep::Joined | OcmStep::Chat => {}
        }
        let room_key = std::str::from_utf8(&event.room)
            .ok()
            .and_then(|room| self.room_keys.get(room).copied())
            .filter(|&key| self.rooms.get(key).is_some_and(|r| r.id == event.room_id));
        let Some(room_key) = room_key else {
            return;
        };
        let member_here = if at_home {
            self.rooms.get(room_key).and_then(|room| {
                room.members.iter().copied().find(|&key| {
                    self.members
                        .get(key)
                        .is_some_and(|m| m.name.as_bytes() == &event.member[..])
                })
            })
        } else {
            None
        };
        match event.step {
            OcmStep::Joined => {
                if let Some(room) = self.rooms.get_mut(room_key) {
                    if !at_home {
                        room.remote.insert(event.member.clone(), home);
                    }
                }
            }
            OcmStep::Chat => {
                if let Some(room) = self.rooms.get_mut(room_key) {
                    room.heard = true;
                }
                if let Some(member) = member_here.and_then(|key| self.members.get_mut(key)) {
                    // Its datagram reached another node: still a sign of life, and its
                    // address now (same IP: the token's, checked there).
                    member.last_seen_ms = now_ms;
                    if let Some(from) = event
                        .from
                        .filter(|from| from.ip().to_canonical() == member.ip)
                    {
                        member.address = Some(from);
                    }
                }
                if event.in_lobby {
                    // The lobby (`Said`) brought it to this node's members of the lobby room.
                    return;
                }
                let sends = self.rooms.get(room_key).map_or(0, |room| {
                    room.members.len() - usize::from(member_here.is_some())
                }) as u64;
                let source = FanoutSource::Remote(self.remote_keys.hash_one((
                    &event.home_node,
                    event.home_incarnation,
                    &event.member,
                )));
                if self.budget.admit(source, sends, now_ms) != Admission::Admitted {
                    out.count_dropped_in(DatagramDrop::FanoutBudget);
                    return;
                }
                self.fan_out(room_key, member_here, &event.text, out);
            }
            OcmStep::Left => {
                if let Some(room) = self.rooms.get_mut(room_key) {
                    room.remote.remove(&event.member);
                }
                if let Some(key) = member_here {
                    if let Some(member) = self.remove_member(key) {
                        super::leave_lobby(key, out);
                        if let (Some(cluster), Some(room)) =
                            (self.cluster.as_mut(), self.rooms.get(room_key))
                        {
                            cluster.member_gone(room, &member);
                        }
                    }
                }
                self.fan_out(room_key, None, &event.text, out);
                self.drop_if_unserved(room_key);
            }
            OcmStep::Closed => {
                if let Some(key) = member_here {
                    // The host, here: gone before the others are told.
                    if let Some(member) = self.remove_member(key) {
                        super::leave_lobby(key, out);
                        if let (Some(cluster), Some(room)) =
                            (self.cluster.as_mut(), self.rooms.get(room_key))
                        {
                            cluster.member_gone(room, &member);
                        }
                    }
                }
                self.close_room(room_key, &event.text, out);
            }
        }
    }

    /// Node `node` is gone: the rooms it hosted close here, its members leave.
    fn node_lapsed<D: DatagramOut>(&mut self, node: &NodeId, out: &mut D) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster
                .remote_tokens
                .retain(|_, record| record.node != *node);
        }
        let keys: Vec<usize> = self.rooms.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(room) = self.rooms.get_mut(key) else {
                continue;
            };
            if room.host_node.as_ref() == Some(node) {
                let text = codec::host_leave_text(&room.host_name, &room.name);
                debug!("OCM room {} closed: its host's node is gone", room.name);
                self.close_room(key, text.as_bytes(), out);
                continue;
            }
            let gone: Vec<Bytes> = room
                .remote
                .iter()
                .filter(|(_, home)| *home == node)
                .map(|(name, _)| name.clone())
                .collect();
            for name in &gone {
                room.remote.remove(name);
            }
            let room_name = room.name.clone();
            for name in gone {
                let text = codec::leave_text(&String::from_utf8_lossy(&name), &room_name);
                self.fan_out(key, None, text.as_bytes(), out);
            }
        }
    }
}
