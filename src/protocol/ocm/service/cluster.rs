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
use crate::cluster::ocm::{CreateAnswer, JoinAnswer, OcmAnswer, OcmOp, RoomRead, TokenRecord};
use crate::hub::{HubEvent, OcmRoomEvent, OcmStep, ProtocolKind};
use crate::limits::Admission;
use crate::protocol::{CloseMode, CloseReason, ConnId, DatagramDrop, DatagramOut, Outbox};
use crate::timer::TimerKey;

use super::codec::TcrpRequest;

/// Datagrams held while their tokens are looked up, on this node at once; beyond it they are
/// dropped (counted as bad tokens): a flood of unknown tokens cannot grow memory.
const HELD_DATAGRAMS_MAX: usize = 4096;
/// Other nodes' tokens cached; when full, the cache starts afresh (a look-up refills it).
const REMOTE_TOKENS_MAX: usize = 65_536;
/// How long a token Redis did not know is dropped without asking again: a stream of
/// datagrams with a made-up (or dead) token costs one look-up a second, not one each. A live
/// token is in Redis before its member has it (the TCRP answer comes after the write), so only
/// a Redis restarted empty, until the home node sets its records again (within a quarter
/// lease), can make a live token unknown for a moment: its datagrams to this node are then
/// dropped for at most this long.
const UNKNOWN_TOKEN_MS: u64 = 1000;
/// Tokens remembered as unknown; when full, the list starts afresh.
const UNKNOWN_TOKENS_MAX: usize = 4096;

/// Other nodes' tokens, cached from their look-ups, indexed by room and member so that a
/// leave or a close forgets them without scanning the cache.
#[derive(Default)]
pub(super) struct RemoteTokens {
    records: HashMap<Token, TokenRecord>,
    /// (room, room id) to member name to that member's cached tokens (one, but an old token
    /// of a name that left and joined again may still be cached).
    by_member: HashMap<(Bytes, u64), HashMap<Bytes, Vec<Token>>>,
}

impl RemoteTokens {
    pub(super) fn get(&self, token: &Token) -> Option<&TokenRecord> {
        self.records.get(token)
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let indexed = self
            .by_member
            .values()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum();
        (self.records.len(), indexed)
    }

    /// Cached; when full, the cache starts afresh (a look-up refills it).
    pub(super) fn insert(&mut self, token: Token, record: TokenRecord) {
        if let Some(old) = self.records.remove(&token) {
            self.unindex(&(old.room, old.room_id), &old.member, &token);
        }
        if self.records.len() >= REMOTE_TOKENS_MAX {
            self.records.clear();
            self.by_member.clear();
        }
        self.by_member
            .entry((record.room.clone(), record.room_id))
            .or_default()
            .entry(record.member.clone())
            .or_default()
            .push(token);
        self.records.insert(token, record);
    }

    fn unindex(&mut self, room: &(Bytes, u64), member: &Bytes, token: &Token) {
        if let Some(members) = self.by_member.get_mut(room) {
            if let Some(tokens) = members.get_mut(member) {
                tokens.retain(|cached| cached != token);
                if tokens.is_empty() {
                    members.remove(member);
                }
            }
            if members.is_empty() {
                self.by_member.remove(room);
            }
        }
    }

    /// A member left its room: its tokens go, at a cost that does not grow with the cache.
    pub(super) fn forget_member(&mut self, room: &Bytes, room_id: u64, member: &Bytes) {
        let key = (room.clone(), room_id);
        let Some(members) = self.by_member.get_mut(&key) else {
            return;
        };
        for token in members.remove(member).unwrap_or_default() {
            self.records.remove(&token);
        }
        if members.is_empty() {
            self.by_member.remove(&key);
        }
    }

    /// A room closed: its members' tokens go (as many steps as it had cached tokens).
    pub(super) fn forget_room(&mut self, room: &Bytes, room_id: u64) {
        for tokens in self
            .by_member
            .remove(&(room.clone(), room_id))
            .unwrap_or_default()
            .into_values()
        {
            for token in tokens {
                self.records.remove(&token);
            }
        }
    }

    /// A node is gone: its members' tokens go (a scan; a node lapses rarely).
    pub(super) fn forget_node(&mut self, node: &NodeId) {
        let gone: Vec<Token> = self
            .records
            .iter()
            .filter(|(_, record)| record.node == *node)
            .map(|(token, _)| *token)
            .collect();
        for token in gone {
            if let Some(record) = self.records.remove(&token) {
                self.unindex(&(record.room, record.room_id), &record.member, &token);
            }
        }
    }
}

/// A member of a room on another node, as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RemoteMember {
    pub(super) node: NodeId,
    /// This node's mark when it learned of it ([`Spanning::learn`]): a read from Redis asked
    /// before it may not list it yet, and must not take it for gone.
    learned: u64,
}

/// A room's members read from Redis ([`OcmAnswer::Members`]), to act on with the OCM socket.
struct MembersRead {
    room: Bytes,
    room_id: u64,
    since: u64,
    read: RoomRead,
}

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
    remote_tokens: RemoteTokens,
    /// Tokens Redis did not know, until when they are dropped without a look-up.
    unknown_tokens: HashMap<Token, u64>,
    /// Datagrams whose look-up came back, to serve once more (with the OCM socket).
    ready: VecDeque<(SocketAddr, Bytes)>,
    /// Other nodes' room events, lapsed nodes and reads of rooms' members, to act on with
    /// the OCM socket.
    events: VecDeque<Box<OcmRoomEvent>>,
    lapsed: Vec<NodeId>,
    reads: VecDeque<MembersRead>,
    /// Counts what this node learned of other nodes' members, in order: a read of a room's
    /// members from Redis carries the count when it was asked, and takes for gone only
    /// members learned before it (a `joined` event can arrive between the read's asking
    /// and its answer, for a join the read did not see).
    learned: u64,
}

impl Spanning {
    /// `name` of `node` is in `room`, as learned now.
    fn learn(&mut self, room: &mut Room, name: Bytes, node: NodeId) {
        self.learned += 1;
        room.told_gone.remove(&name);
        room.remote.insert(
            name,
            RemoteMember {
                node,
                learned: self.learned,
            },
        );
    }

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
            remote_tokens: RemoteTokens::default(),
            unknown_tokens: HashMap::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            lapsed: Vec::new(),
            reads: VecDeque::new(),
            learned: 0,
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

    /// Work that needs the OCM socket: other nodes' events, lapsed nodes, reads of rooms'
    /// members, looked-up datagrams.
    pub fn has_socket_work(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| {
            !c.ready.is_empty()
                || !c.events.is_empty()
                || !c.lapsed.is_empty()
                || !c.reads.is_empty()
        })
    }

    /// Another node's room event, acted on with the OCM socket ([`OcmService::on_socket_work`]).
    pub fn queue_remote_event(&mut self, event: Box<OcmRoomEvent>) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.events.push_back(event);
        }
    }

    /// This node's subscriber (re)subscribed: other nodes' `joined`, `left` and `closed`
    /// events may have been missed meanwhile, so every room here asks Redis who is in it (the
    /// answers: [`OcmAnswer::Members`]), and whether the nodes of the members known here have
    /// every record in Redis. Without it a member that joined elsewhere meanwhile would not
    /// be known here (nor its leaving with its node told), and one that left would be told
    /// gone only when its node dies.
    pub fn resync_rooms(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        for (_, room) in self.rooms.iter() {
            let mut nodes: Vec<NodeId> = room
                .remote
                .values()
                .map(|member| member.node.clone())
                .chain(room.host_node.clone())
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            cluster.ops.push(OcmOp::Members {
                room: Bytes::copy_from_slice(room.name.as_bytes()),
                room_id: room.id,
                since: cluster.learned,
                nodes,
            });
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
        // A room of that name here exists; Redis decides whether the name is free elsewhere,
        // and counts the rooms for the limits (the cluster's live rooms, not this node's).
        if create && self.room_keys.contains_key(room) {
            return Outcome::Refused(codec::room_exists_message(room));
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
                rooms_max: self.config.rooms_max,
                rooms_per_ip_max: self.config.rooms_per_ip_max,
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
                let Some(waiting) = self.take_waiting(request, created == CreateAnswer::Created)
                else {
                    return;
                };
                let outcome = match created {
                    CreateAnswer::Created if self.room_keys.contains_key(&*waiting.room) => {
                        // This node's view is behind Redis's (a close not heard of yet).
                        self.undo(&waiting, true);
                        Outcome::Failed("a stale room of that name is still here")
                    }
                    CreateAnswer::Created => {
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
                    CreateAnswer::Exists => {
                        Outcome::Refused(codec::room_exists_message(&waiting.room))
                    }
                    CreateAnswer::RoomsMax => Outcome::Failed("rooms_max reached in the cluster"),
                    CreateAnswer::RoomsPerIpMax => {
                        Outcome::Failed("rooms_per_ip_max reached in the cluster")
                    }
                    CreateAnswer::Unavailable => {
                        Outcome::Failed("the cluster (Redis) could not be asked")
                    }
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
                                if let (Some(cluster), Some(room)) =
                                    (self.cluster.as_mut(), self.rooms.get_mut(key))
                                {
                                    for (name, node) in joined.members {
                                        if !cluster.is_here(&node) {
                                            cluster.learn(room, name, node);
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
                        cluster.remote_tokens.insert(token, record);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        if cluster.unknown_tokens.len() >= UNKNOWN_TOKENS_MAX {
                            cluster.unknown_tokens.clear();
                        }
                        cluster
                            .unknown_tokens
                            .insert(token, now_ms.saturating_add(UNKNOWN_TOKEN_MS));
                    }
                    Err(()) => debug!("an OCM token could not be looked up: Redis unreachable"),
                }
                // Served once more either way: known now, or dropped as a bad token.
                if let Some(held) = cluster.held.remove(&token) {
                    cluster.held_count -= held.len();
                    cluster.ready.extend(held);
                }
            }
            OcmAnswer::Members {
                room,
                room_id,
                since,
                read,
            } => match (read, self.cluster.as_mut()) {
                (Ok(read), Some(cluster)) => cluster.reads.push_back(MembersRead {
                    room,
                    room_id,
                    since,
                    read,
                }),
                (Ok(_), None) => {}
                (Err(()), _) => debug!("an OCM room's members could not be read"),
            },
        }
    }

    /// Redis's members of a room here, read after an outage of this node's subscriber (asked
    /// when this node had learned `since` members): other nodes' members it lists are known
    /// here now (their `joined` missed); those known here before the read was asked that it
    /// does not list, of a node whose records are all in Redis, left meanwhile (their `left`
    /// missed): told gone here, once, as a leave is. A room it no longer finds, hosted by
    /// such a node, was closed meanwhile: closed here with its host's leave text. This node's
    /// own members are never touched: they are not in `remote`.
    fn on_room_members<D: DatagramOut>(&mut self, answer: MembersRead, out: &mut D) {
        let MembersRead {
            room: room_name,
            room_id,
            since,
            read,
        } = answer;
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let room_key = std::str::from_utf8(&room_name)
            .ok()
            .and_then(|room| self.room_keys.get(room).copied())
            .filter(|&key| self.rooms.get(key).is_some_and(|r| r.id == room_id));
        let Some(room_key) = room_key else {
            return;
        };
        let Some(room) = self.rooms.get_mut(room_key) else {
            return;
        };
        let Some(members) = read.members else {
            let closed_elsewhere = room
                .host_node
                .as_ref()
                .is_some_and(|host| read.settled.contains(host));
            if closed_elsewhere {
                log::info!(
                    "cluster: OCM room {:?}: closed on its host's node while this node was cut off, read from Redis",
                    &*room.name
                );
                cluster.remote_tokens.forget_room(&room_name, room_id);
                let text = codec::host_leave_text(&room.host_name, &room.name);
                self.close_room(room_key, text.as_bytes(), out);
            }
            return;
        };
        let mut missed = 0;
        for (name, node) in &members {
            let known = room.remote.get(name).is_some_and(|m| m.node == *node);
            if !cluster.is_here(node) && !known {
                cluster.learn(room, name.clone(), node.clone());
                missed += 1;
            }
        }
        let gone: Vec<(Bytes, NodeId)> = room
            .remote
            .iter()
            .filter(|(name, member)| {
                member.learned <= since
                    && read.settled.contains(&member.node)
                    && !members.iter().any(|(listed, _)| listed == *name)
            })
            .map(|(name, member)| (name.clone(), member.node.clone()))
            .collect();
        room.told_gone.clear();
        for (name, node) in &gone {
            room.remote.remove(name);
            cluster
                .remote_tokens
                .forget_member(&room_name, room_id, name);
            room.told_gone.insert(name.clone(), node.clone());
        }
        if missed > 0 {
            log::info!(
                "cluster: OCM room {:?}: {missed} member(s) of other nodes missed while cut off, read from Redis",
                &*room.name
            );
        }
        if gone.is_empty() {
            return;
        }
        log::info!(
            "cluster: OCM room {:?}: {} member(s) of other nodes left while cut off, read from Redis",
            &*room.name,
            gone.len()
        );
        let room_name = room.name.clone();
        for (name, _) in gone {
            let text = codec::leave_text(&String::from_utf8_lossy(&name), &room_name);
            self.fan_out(room_key, None, text.as_bytes(), out);
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
            let known_unknown = match cluster.unknown_tokens.get(&token) {
                Some(&until) if now_ms < until => true,
                Some(_) => {
                    cluster.unknown_tokens.remove(&token);
                    false
                }
                None => false,
            };
            if looked_up || known_unknown || cluster.held_count >= HELD_DATAGRAMS_MAX {
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
        let lobby_line = out.hub().is_some_and(|link| {
            link.hub.has_audience_besides(ProtocolKind::Ocm)
                && link.hub.is_ocm_lobby_room(&record.room)
        });
        if lobby_line {
            // A line of the lobby room goes to the lobby, which brings it to every lobby
            // member of every protocol on every node, this node's members of the room
            // included; only the home node has the member in its lobby, so it says it there
            // (the event, marked `in_lobby`, asks it to), and nothing goes out from here.
            out.count_datagram_in();
            if let Some(room) = room_key.and_then(|key| self.rooms.get_mut(key)) {
                room.heard = true;
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
                    in_lobby: true,
                    text: Bytes::from(text),
                },
            );
            return;
        }
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
            } else if let Some(read) = cluster.reads.pop_front() {
                self.on_room_members(read, out);
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
            OcmStep::Left => {
                cluster
                    .remote_tokens
                    .forget_member(&event.room, event.room_id, &event.member)
            }
            OcmStep::Closed => cluster
                .remote_tokens
                .forget_room(&event.room, event.room_id),
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
                if let (Some(room), Some(cluster)) =
                    (self.rooms.get_mut(room_key), self.cluster.as_mut())
                {
                    if !at_home {
                        cluster.learn(room, event.member.clone(), home);
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
                    // The lobby (`Said`) brings it to this node's members of the lobby room.
                    // A line of this node's member that reached another node is said to the
                    // lobby here, as if its datagram had come here: the one node that has
                    // the member in its lobby.
                    if let (Some(member_key), Some(from)) = (member_here, event.from) {
                        self.say_for_member(room_key, member_key, from, &event.text, now_ms, out);
                    }
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
                    let known = room.remote.remove(&event.member).is_some();
                    if !known && room.told_gone.get(&event.member) == Some(&home) {
                        // A read from Redis found it gone and told it, before this event.
                        room.told_gone.remove(&event.member);
                        return;
                    }
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

    /// A line of this node's member `member_key`, said through another node: to this node's
    /// other members of the room and to the lobby, within the budget of its source `from`.
    fn say_for_member<D: DatagramOut>(
        &mut self,
        room_key: usize,
        member_key: usize,
        from: SocketAddr,
        text: &[u8],
        now_ms: u64,
        out: &mut D,
    ) {
        let Some(member) = self.members.get(member_key) else {
            return;
        };
        // The text is `name: message`, built by the node the datagram reached.
        let Some(message) = text
            .strip_prefix(member.name.as_bytes())
            .and_then(|rest| rest.strip_prefix(b": "))
        else {
            out.count_dropped_in(DatagramDrop::Malformed);
            return;
        };
        self.text.clear();
        self.text.extend_from_slice(text);
        self.say_line(room_key, member_key, from, message, false, now_ms, out);
    }

    /// Node `node` is gone: the rooms it hosted close here, its members leave.
    fn node_lapsed<D: DatagramOut>(&mut self, node: &NodeId, out: &mut D) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.remote_tokens.forget_node(node);
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
                .filter(|(_, member)| member.node == *node)
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

/// Two nodes' OCM services and a model of Redis's records, with fabricated time: the
/// operations each node asks are answered by the model as the scripts would, and each node's
/// published events are handed to the other, as Redis and the subscriber would.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, SocketAddr};

    use bytes::{Bytes, BytesMut};

    use super::super::{codec, json, OcmConfig, OcmService};
    use super::RemoteTokens;
    use crate::cluster::ocm::{
        CreateAnswer, JoinAnswer, JoinedRoom, OcmAnswer, OcmOp, RoomRead, TokenRecord,
    };
    use crate::hub::{Endpoint, Hub, HubConfig, HubEvent, ProtocolKind, User};
    use crate::protocol::testing::{RecordingDatagrams, RecordingOutbox};
    use crate::protocol::{
        CloseMode, CloseReason, ConnId, DatagramDrop, DatagramService, HubQueue, Switched,
        SwitchedDatagrams,
    };

    const IDLE_MS: u64 = 60_000;
    const WAIT_MS: u64 = 500;

    type NodeId = (Bytes, u64);

    /// What Redis holds: rooms (id, host, host's node), members (room, name: node) and
    /// tokens.
    #[derive(Default)]
    struct Model {
        rooms: HashMap<Bytes, (u64, Bytes, NodeId)>,
        members: HashMap<(Bytes, Bytes), NodeId>,
        tokens: HashMap<[u8; 64], TokenRecord>,
        /// Ops not answered (Redis frozen).
        frozen: bool,
        /// Nodes whose records are not all in Redis (its key missing: Redis restarted empty,
        /// or the node cut off), as the members script reports them.
        unsettled: Vec<NodeId>,
        /// Token look-ups asked of it.
        lookups: usize,
    }

    impl Model {
        fn apply(&mut self, node: &NodeId, op: OcmOp) -> Option<OcmAnswer> {
            match op {
                OcmOp::Create {
                    request,
                    room,
                    room_id,
                    host,
                    token,
                    ip,
                    rooms_max,
                    rooms_per_ip_max,
                } => {
                    let of_ip = self
                        .tokens
                        .values()
                        .filter(|record| record.host && record.ip == ip)
                        .count();
                    let created = if self.rooms.contains_key(&room) {
                        CreateAnswer::Exists
                    } else if self.rooms.len() >= rooms_max {
                        CreateAnswer::RoomsMax
                    } else if rooms_per_ip_max != 0 && of_ip >= rooms_per_ip_max as usize {
                        CreateAnswer::RoomsPerIpMax
                    } else {
                        CreateAnswer::Created
                    };
                    if created == CreateAnswer::Created {
                        self.rooms
                            .insert(room.clone(), (room_id, host.clone(), node.clone()));
                        self.members
                            .insert((room.clone(), host.clone()), node.clone());
                        self.tokens.insert(
                            token,
                            TokenRecord {
                                room,
                                room_id,
                                ip,
                                host: true,
                                member: host,
                                node: node.clone(),
                            },
                        );
                    }
                    Some(OcmAnswer::Created { request, created })
                }
                OcmOp::Join {
                    request,
                    room,
                    member,
                    token,
                    ip,
                    ..
                } => {
                    let answer = match self.rooms.get(&room).cloned() {
                        None => JoinAnswer::Missing,
                        Some(_) if self.members.contains_key(&(room.clone(), member.clone())) => {
                            JoinAnswer::NameTaken
                        }
                        Some((room_id, host, host_node)) => {
                            let members = self
                                .members
                                .iter()
                                .filter(|((r, _), _)| *r == room)
                                .map(|((_, name), node)| (name.clone(), node.clone()))
                                .collect();
                            self.members
                                .insert((room.clone(), member.clone()), node.clone());
                            self.tokens.insert(
                                token,
                                TokenRecord {
                                    room,
                                    room_id,
                                    ip,
                                    host: false,
                                    member,
                                    node: node.clone(),
                                },
                            );
                            JoinAnswer::Joined(JoinedRoom {
                                room_id,
                                host,
                                host_node,
                                members,
                            })
                        }
                    };
                    Some(OcmAnswer::Joined { request, answer })
                }
                OcmOp::Lookup { token } => {
                    self.lookups += 1;
                    Some(OcmAnswer::Looked {
                        token,
                        record: Ok(self.tokens.get(&token).cloned()),
                    })
                }
                OcmOp::Leave {
                    room,
                    member,
                    token,
                } => {
                    if self.tokens.remove(&token).is_some() {
                        self.members.remove(&(room, member));
                    }
                    None
                }
                OcmOp::Close { room, room_id } => {
                    // Written out, not shared with src/cluster/ocm.rs: the model checks it.
                    if self
                        .rooms
                        .get(&room)
                        .is_some_and(|(id, _, _)| *id == room_id)
                    {
                        self.rooms.remove(&room);
                        self.members.retain(|(r, _), _| *r != room);
                    }
                    None
                }
                OcmOp::Members {
                    room,
                    room_id,
                    since,
                    nodes,
                } => {
                    let settled = nodes
                        .into_iter()
                        .filter(|node| !self.unsettled.contains(node))
                        .collect();
                    let members = match self.rooms.get(&room) {
                        Some((id, _, _)) if *id == room_id => Some(
                            self.members
                                .iter()
                                .filter(|((r, _), _)| *r == room)
                                .map(|((_, name), node)| (name.clone(), node.clone()))
                                .collect(),
                        ),
                        _ => None,
                    };
                    Some(OcmAnswer::Members {
                        room,
                        room_id,
                        since,
                        read: Ok(RoomRead { members, settled }),
                    })
                }
            }
        }
    }

    struct Node {
        id: NodeId,
        service: OcmService,
        hub: Hub,
        queue: HubQueue,
        out: RecordingOutbox,
        udp: RecordingDatagrams,
        next_slot: u32,
        /// Its ops held while Redis is frozen.
        held_ops: Vec<OcmOp>,
        /// What the hub delivered to lobby members of other protocols here.
        lobby: Vec<(Endpoint, Bytes)>,
    }

    impl Node {
        fn new(name: &'static str, seed: u8) -> Node {
            Node::with_config(name, seed, OcmConfig::default())
        }

        /// As [`Node::new`], from `config` (its timers and budgets set as the tests need).
        fn with_config(name: &'static str, seed: u8, config: OcmConfig) -> Node {
            let mut next = 0u16;
            let tokens = Box::new(move |bytes: &mut [u8; 32]| {
                next += 1;
                *bytes = [seed; 32];
                bytes[30..].copy_from_slice(&next.to_be_bytes());
                true
            });
            let config = OcmConfig {
                idle_timeout_ms: IDLE_MS,
                room_silent_timeout_ms: 0,
                sends_per_s_max: 0,
                sends_per_source_per_s_max: 0,
                ..config
            };
            let mut service = OcmService::new(config, tokens, 0);
            let id = (Bytes::from_static(name.as_bytes()), u64::from(seed));
            service.join_cluster(id.0.clone(), id.1, WAIT_MS);
            Node {
                id,
                service,
                hub: Hub::new(HubConfig {
                    clustered: true,
                    ..HubConfig::default()
                }),
                queue: HubQueue {
                    collect_events: true,
                    ..HubQueue::default()
                },
                out: RecordingOutbox::default(),
                udp: RecordingDatagrams::default(),
                next_slot: 0,
                held_ops: Vec::new(),
                lobby: Vec::new(),
            }
        }

        /// A ROOM user in the lobby here.
        fn room_user(&mut self, name: &'static str, slot: u32) -> Endpoint {
            let endpoint = Endpoint::Conn(ConnId::new(slot, 1));
            self.hub.enter_lobby(
                User {
                    protocol: ProtocolKind::Room,
                    endpoint,
                    name: Bytes::from_static(name.as_bytes()),
                },
                &mut self.queue,
            );
            endpoint
        }

        fn lobby_texts(&self, to: Endpoint) -> Vec<String> {
            self.lobby
                .iter()
                .filter(|(endpoint, _)| *endpoint == to)
                .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
                .collect()
        }

        /// The hub's lobby deliveries: to OCM members through the service, as the registry
        /// hands them; the others recorded. True when there were any.
        fn deliver(&mut self, now: u64) -> bool {
            let deliveries = std::mem::take(&mut self.queue.deliveries);
            let moved = !deliveries.is_empty();
            for (_, to, bytes) in deliveries {
                match to {
                    Endpoint::Ocm(member) => {
                        let mut out = SwitchedDatagrams::new(
                            &mut self.udp,
                            &mut self.hub,
                            &mut self.queue,
                            now,
                        );
                        DatagramService::on_hub_delivery(
                            &mut self.service,
                            member,
                            &bytes,
                            &mut out,
                        );
                    }
                    Endpoint::Conn(_) => self.lobby.push((to, bytes)),
                }
            }
            moved
        }

        /// A TCRP request from 127.0.0.`last`, chat at port 40000 there: its connection.
        fn request(&mut self, operation: u8, room: &str, name: &str, last: u8, now: u64) -> ConnId {
            self.next_slot += 1;
            let id = ConnId::new(self.next_slot, 1);
            let ip = IpAddr::from([127, 0, 0, last]);
            self.service.on_accept(id, ip, now);
            let payload = json::encode_request(name, chat(last));
            let request =
                codec::encode_request(operation, codec::STATE_REQUEST, room.as_bytes(), &payload)
                    .unwrap();
            let mut input = BytesMut::from(&request[..]);
            let mut out = Switched::new(&mut self.out, &mut self.hub, &mut self.queue, None, now);
            self.service.on_data(id, &mut input, now, &mut out);
            id
        }

        /// The answer's state and token, once it was sent and the connection closed.
        fn answered(&mut self, id: ConnId) -> (u8, Option<String>) {
            let sent = self.out.sent_to(id);
            assert_eq!(sent.len(), 1, "one answer");
            assert_eq!(
                self.out
                    .closed
                    .iter()
                    .filter(|(conn, _, _)| *conn == id)
                    .map(|(_, why, mode)| (*why, *mode))
                    .collect::<Vec<_>>(),
                [(CloseReason::Done, CloseMode::AfterFlush)]
            );
            let mut buf = BytesMut::from(&sent[0][..]);
            let answer = codec::decode_answer(&mut buf, 4096).unwrap().unwrap();
            let json = json::parse_answer(std::str::from_utf8(&answer.json).unwrap()).unwrap();
            (answer.state, json.token)
        }

        fn say(&mut self, from: SocketAddr, room: &str, token: &str, message: &str, now: u64) {
            let datagram =
                codec::encode_datagram(room.as_bytes(), token.as_bytes(), message.as_bytes())
                    .unwrap();
            let mut out =
                SwitchedDatagrams::new(&mut self.udp, &mut self.hub, &mut self.queue, now);
            self.service.on_datagram(from, &datagram, now, &mut out);
        }

        fn timers(&mut self, now: u64) {
            let mut out =
                SwitchedDatagrams::new(&mut self.udp, &mut self.hub, &mut self.queue, now);
            self.service.on_timers(now, &mut self.out, &mut out);
        }

        fn texts(&self, to: SocketAddr) -> Vec<String> {
            self.udp
                .sent_to(to)
                .iter()
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                .collect()
        }

        /// Its published room events and lobby messages (presence is not modelled).
        fn events(&mut self) -> Vec<HubEvent> {
            self.queue
                .events
                .drain(..)
                .filter(|event| matches!(event, HubEvent::Ocm(_) | HubEvent::Said(_)))
                .collect()
        }
    }

    fn chat(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 40_000))
    }

    /// Until nothing moves: each node's ops to the model (unless frozen) and its answers
    /// back, each node's events to the other, and the socket work that follows.
    fn settle(nodes: &mut [&mut Node], redis: &mut Model, now: u64) {
        loop {
            let mut moved = false;
            for node in nodes.iter_mut() {
                let node = &mut **node;
                let mut ops = std::mem::take(&mut node.held_ops);
                ops.extend(node.service.take_cluster_ops());
                if redis.frozen {
                    node.held_ops = ops;
                    continue;
                }
                for op in ops {
                    moved = true;
                    if let Some(answer) = redis.apply(&node.id, op) {
                        let mut out =
                            Switched::new(&mut node.out, &mut node.hub, &mut node.queue, None, now);
                        node.service.on_cluster_answer(answer, now, &mut out);
                    }
                }
            }
            for i in 0..nodes.len() {
                let events = nodes[i].events();
                for (j, other) in nodes.iter_mut().enumerate() {
                    if j != i {
                        for event in &events {
                            moved = true;
                            match event {
                                HubEvent::Ocm(event) => {
                                    other.service.queue_remote_event(event.clone())
                                }
                                HubEvent::Said(message) => other.hub.say_remote(
                                    message.clone(),
                                    &mut other.queue,
                                    |_, _| true,
                                ),
                                _ => {}
                            }
                        }
                    }
                }
            }
            for node in nodes.iter_mut() {
                moved |= node.deliver(now);
            }
            for node in nodes.iter_mut() {
                if node.service.has_socket_work() {
                    moved = true;
                    let mut out =
                        SwitchedDatagrams::new(&mut node.udp, &mut node.hub, &mut node.queue, now);
                    node.service.on_socket_work(now, &mut out);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn leave_text(name: &str, room: &str) -> String {
        codec::leave_text(name, room)
    }

    fn host_leave_text(name: &str, room: &str) -> String {
        codec::host_leave_text(name, room)
    }

    /// Create on A, join on B; chat both ways, each node sending to its own members; a
    /// guest's exit and then the host's idle removal are told on both nodes, as the protocol
    /// tells them; chat forwarded from B keeps A's member alive.
    #[test]
    fn a_room_spans_two_nodes_and_its_leaves_and_idle_close_reach_both() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let ana = a.request(codec::OPERATION_CREATE, "r", "ana", 1, 0);
        assert!(a.out.sent_to(ana).is_empty(), "waits for Redis");
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        let (state, ana_token) = a.answered(ana);
        assert_eq!(state, codec::STATE_DONE);
        let ana_token = ana_token.unwrap();
        let bob = b.request(codec::OPERATION_JOIN, "r", "bob", 2, 0);
        let cid = b.request(codec::OPERATION_JOIN, "r", "cid", 3, 0);
        let twin = b.request(codec::OPERATION_JOIN, "r", "ana", 4, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        let bob_token = b.answered(bob).1.unwrap();
        let cid_token = b.answered(cid).1.unwrap();
        assert_eq!(
            b.answered(twin),
            (codec::STATE_ERROR, None),
            "ana's name is taken"
        );

        a.say(chat(1), "r", &ana_token, "oi", 10);
        settle(&mut [&mut a, &mut b], &mut redis, 10);
        assert_eq!(b.texts(chat(2)), ["ana: oi"]);
        assert_eq!(b.texts(chat(3)), ["ana: oi"]);
        b.say(chat(2), "r", &bob_token, "yo", 20);
        settle(&mut [&mut a, &mut b], &mut redis, 20);
        assert_eq!(a.texts(chat(1)), ["bob: yo"]);
        assert_eq!(b.texts(chat(3)), ["ana: oi", "bob: yo"]);
        assert!(b.texts(chat(2)) == ["ana: oi"], "never back to the sender");

        b.say(chat(3), "r", &cid_token, "exit", 30);
        settle(&mut [&mut a, &mut b], &mut redis, 30);
        assert_eq!(a.texts(chat(1)).last().unwrap(), &leave_text("cid", "r"));
        assert_eq!(b.texts(chat(2)).last().unwrap(), &leave_text("cid", "r"));

        // ana's datagram reaches B (not A) half way through the idle limit: A takes it as a
        // sign of life, so ana is not idle at IDLE_MS.
        b.say(chat(1), "r", &ana_token, "via b", IDLE_MS / 2);
        settle(&mut [&mut a, &mut b], &mut redis, IDLE_MS / 2);
        assert_eq!(b.texts(chat(2)).last().unwrap(), "ana: via b");
        a.timers(IDLE_MS + 10);
        settle(&mut [&mut a, &mut b], &mut redis, IDLE_MS + 10);
        assert_eq!(a.service.rooms(), 1, "ana was heard through B");
        // bob is silent since he spoke at 20: B removes him at his idle limit, A is told.
        b.timers(IDLE_MS + 30);
        settle(&mut [&mut a, &mut b], &mut redis, IDLE_MS + 30);
        assert_eq!(a.texts(chat(1)).last().unwrap(), &leave_text("bob", "r"));
        assert_eq!(
            b.texts(chat(2)).last().unwrap(),
            &leave_text("bob", "r"),
            "its own text"
        );
        assert_eq!(b.service.rooms(), 0, "no member of it left on B");
        // ana at hers: the room closes, and Redis forgets it (the name is free again).
        a.timers(IDLE_MS / 2 + IDLE_MS + 10);
        settle(
            &mut [&mut a, &mut b],
            &mut redis,
            IDLE_MS / 2 + IDLE_MS + 10,
        );
        assert_eq!(a.service.rooms(), 0);
        assert!(redis.rooms.is_empty() && redis.members.is_empty() && redis.tokens.is_empty());
    }

    /// The host's exit through B closes the room on both nodes; its tokens are dead on both.
    #[test]
    fn a_hosts_exit_reaching_the_other_node_closes_the_room_on_both() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let ana = a.request(codec::OPERATION_CREATE, "r", "ana", 1, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        let ana_token = a.answered(ana).1.unwrap();
        let bob = b.request(codec::OPERATION_JOIN, "r", "bob", 2, 0);
        let cid = a.request(codec::OPERATION_JOIN, "r", "cid", 3, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        let bob_token = b.answered(bob).1.unwrap();
        a.answered(cid);

        b.say(chat(1), "r", &ana_token, "exit", 5);
        settle(&mut [&mut a, &mut b], &mut redis, 5);
        assert_eq!(b.texts(chat(2)), [host_leave_text("ana", "r")]);
        assert_eq!(a.texts(chat(3)), [host_leave_text("ana", "r")]);
        assert!(a.texts(chat(1)).is_empty(), "the host itself is not told");
        assert_eq!((a.service.rooms(), b.service.rooms()), (0, 0));
        assert!(redis.rooms.is_empty() && redis.tokens.is_empty());
        // bob's old token, at either node: looked up, unknown, dropped.
        for node in [&mut a, &mut b] {
            node.udp.clear();
            node.say(chat(2), "r", &bob_token, "ghost", 6);
        }
        settle(&mut [&mut a, &mut b], &mut redis, 6);
        for node in [&a, &b] {
            assert_eq!(node.udp.dropped_in, [DatagramDrop::BadToken]);
            assert!(node.udp.sent.is_empty());
        }
        // Unknown: dropped without asking Redis again for a second, then asked again.
        let asked = redis.lookups;
        for at in [7, 6 + super::UNKNOWN_TOKEN_MS - 1] {
            b.say(chat(2), "r", &bob_token, "ghost", at);
            settle(&mut [&mut a, &mut b], &mut redis, at);
        }
        assert_eq!(redis.lookups, asked, "no look-up within the second");
        assert_eq!(b.udp.dropped_in.len(), 3);
        b.say(
            chat(2),
            "r",
            &bob_token,
            "ghost",
            6 + super::UNKNOWN_TOKEN_MS,
        );
        settle(
            &mut [&mut a, &mut b],
            &mut redis,
            6 + super::UNKNOWN_TOKEN_MS,
        );
        assert_eq!(redis.lookups, asked + 1, "asked again after it");
        assert_eq!(b.udp.dropped_in.len(), 4);
    }

    /// A token looked up by the other node stays bound to its IP there.
    #[test]
    fn a_foreign_token_from_another_ip_is_refused() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let ana = a.request(codec::OPERATION_CREATE, "r", "ana", 1, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        let ana_token = a.answered(ana).1.unwrap();
        let bob = b.request(codec::OPERATION_JOIN, "r", "bob", 2, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        b.answered(bob);
        b.say(chat(9), "r", &ana_token, "spoof", 1);
        settle(&mut [&mut a, &mut b], &mut redis, 1);
        assert_eq!(b.udp.dropped_in, [DatagramDrop::WrongAddress]);
        // From the cache this time: the same.
        b.say(chat(9), "r", &ana_token, "spoof", 2);
        assert_eq!(b.udp.dropped_in, [DatagramDrop::WrongAddress; 2]);
        assert!(b.udp.sent.is_empty() && a.udp.sent.is_empty());
    }

    /// No answer from Redis within the wait: 500 and the connection closed; a grant that
    /// comes after is undone (the member and room leave Redis), and nothing is made here.
    #[test]
    fn a_request_redis_does_not_answer_in_time_is_refused_and_a_late_grant_undone() {
        let (mut a, mut redis) = (Node::new("a", 1), Model::default());
        redis.frozen = true;
        let ana = a.request(codec::OPERATION_CREATE, "r", "ana", 1, 0);
        settle(&mut [&mut a], &mut redis, 0);
        a.timers(WAIT_MS - 10);
        assert!(a.out.sent_to(ana).is_empty(), "still waiting");
        a.timers(WAIT_MS + 10);
        assert_eq!(a.answered(ana), (codec::STATE_ERROR, None));
        redis.frozen = false;
        settle(&mut [&mut a], &mut redis, WAIT_MS + 20);
        assert_eq!(a.service.rooms(), 0);
        assert!(
            redis.rooms.is_empty() && redis.tokens.is_empty(),
            "the late grant undone"
        );
        // A connection that closes while waiting: the same.
        let bob = a.request(codec::OPERATION_CREATE, "s", "bob", 2, 30);
        a.service.on_close(bob);
        settle(&mut [&mut a], &mut redis, 30);
        assert!(a.out.sent_to(bob).is_empty());
        assert!(redis.rooms.is_empty() && redis.tokens.is_empty());
    }

    /// A node taken for dead: the rooms it hosted close here (the host's leave text), and
    /// its members of rooms hosted here leave (their leave text).
    #[test]
    fn a_lapsed_nodes_rooms_close_and_its_members_leave() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let ana = b.request(codec::OPERATION_CREATE, "on-b", "ana", 1, 0);
        let cid = a.request(codec::OPERATION_CREATE, "on-a", "cid", 3, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        b.answered(ana);
        a.answered(cid);
        let bob = a.request(codec::OPERATION_JOIN, "on-b", "bob", 2, 0);
        let dan = b.request(codec::OPERATION_JOIN, "on-a", "dan", 4, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        a.answered(bob);
        b.answered(dan);

        a.service.queue_lapsed_nodes(vec![b.id.clone()]);
        settle(&mut [&mut a], &mut redis, 1);
        assert_eq!(a.texts(chat(2)), [host_leave_text("ana", "on-b")]);
        assert_eq!(a.texts(chat(3)), [leave_text("dan", "on-a")]);
        assert_eq!(a.service.rooms(), 1, "A's own room goes on");
    }

    /// A line of the lobby room whose datagram reached a node other than its sender's home
    /// node reaches every lobby member of every protocol on every node once, as a line sent
    /// to the home node does: the home node says it to the lobby.
    #[test]
    fn a_lobby_room_line_through_another_node_reaches_every_lobby_member_once() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let ana = a.request(codec::OPERATION_CREATE, "lobby", "ana", 1, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        let ana_token = a.answered(ana).1.unwrap();
        let bob = b.request(codec::OPERATION_JOIN, "lobby", "bob", 2, 0);
        let cid = a.request(codec::OPERATION_JOIN, "lobby", "cid", 3, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        b.answered(bob);
        a.answered(cid);
        let rui = a.room_user("rui", 90);
        let rob = b.room_user("rob", 91);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        a.lobby.clear();
        b.lobby.clear();

        a.say(chat(1), "lobby", &ana_token, "at home", 10);
        settle(&mut [&mut a, &mut b], &mut redis, 10);
        b.say(chat(1), "lobby", &ana_token, "via b", 20);
        settle(&mut [&mut a, &mut b], &mut redis, 20);
        let both = ["ana: at home", "ana: via b"];
        assert_eq!(b.texts(chat(2)), both, "bob, OCM on B");
        assert_eq!(a.texts(chat(3)), both, "cid, OCM on A");
        assert_eq!(a.lobby_texts(rui), both, "rui, ROOM on A");
        assert_eq!(b.lobby_texts(rob), both, "rob, ROOM on B");
        assert!(
            a.texts(chat(1)).is_empty() && b.texts(chat(1)).is_empty(),
            "never back to the sender"
        );
        assert!(a.udp.dropped_in.is_empty() && b.udp.dropped_in.is_empty());
    }

    /// A member that joined on B while A heard nothing of it (A's subscriber cut off: its
    /// `joined` event missed) is read from Redis when A resubscribes, so its leaving with its
    /// node is told to A's members.
    #[test]
    fn a_member_missed_while_cut_off_is_read_from_redis_and_its_nodes_death_told() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let ana = a.request(codec::OPERATION_CREATE, "r", "ana", 1, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        a.answered(ana);
        // B alone: its `joined` event reaches nobody.
        let bob = b.request(codec::OPERATION_JOIN, "r", "bob", 2, 0);
        settle(&mut [&mut b], &mut redis, 0);
        b.answered(bob);

        a.service.resync_rooms();
        settle(&mut [&mut a], &mut redis, 1);
        a.service.queue_lapsed_nodes(vec![b.id.clone()]);
        settle(&mut [&mut a], &mut redis, 2);
        assert_eq!(a.texts(chat(1)), [leave_text("bob", "r")]);
        // Redis unreachable for the read: nothing changes.
        let mut out = Switched::new(&mut a.out, &mut a.hub, &mut a.queue, None, 3);
        a.service
            .on_cluster_answer(missing_members("r"), 3, &mut out);
        assert_eq!(a.service.rooms(), 1);
    }

    /// The answer of `node`'s `read` from Redis as it is now (Redis ran it), handed back later.
    fn read_now(node: &mut Node, redis: &mut Model) -> Vec<OcmAnswer> {
        node.service
            .take_cluster_ops()
            .into_iter()
            .map(|op| {
                assert!(matches!(op, OcmOp::Members { .. }), "only reads: {op:?}");
                redis.apply(&node.id, op).unwrap()
            })
            .collect()
    }

    fn answer(node: &mut Node, answer: OcmAnswer, now: u64) {
        let mut out = Switched::new(&mut node.out, &mut node.hub, &mut node.queue, None, now);
        node.service.on_cluster_answer(answer, now, &mut out);
    }

    /// bob leaves through B while A hears nothing of it (A's subscriber cut off: B's `left`
    /// lost to A). A's read of the room after the outage finds him gone: ana is told his
    /// leave, once, even when his `left` event still arrives after the read. dan, who joined
    /// after the read was asked (his `joined` arrives before its answer, which does not list
    /// him), is not taken for gone; nor is cid, whom Redis lists.
    #[test]
    fn a_member_that_left_while_cut_off_is_told_gone_once_and_a_join_newer_than_the_read_kept() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let ana = a.request(codec::OPERATION_CREATE, "r", "ana", 1, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        a.answered(ana);
        let bob = b.request(codec::OPERATION_JOIN, "r", "bob", 2, 0);
        let cid = b.request(codec::OPERATION_JOIN, "r", "cid", 3, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        let bob_token = b.answered(bob).1.unwrap();
        b.answered(cid);

        // A cut off: bob's exit reaches Redis (B's leave), not A (B's `left` held back).
        b.say(chat(2), "r", &bob_token, "exit", 10);
        let late = b.events();
        assert_eq!(late.len(), 1, "bob's `left`");
        settle(&mut [&mut b], &mut redis, 10);
        assert!(!redis.members.contains_key(&(bs("r"), bs("bob"))));

        // A's link back: its read runs in Redis now; dan joins before its answer arrives.
        a.service.resync_rooms();
        let reads = read_now(&mut a, &mut redis);
        let dan = b.request(codec::OPERATION_JOIN, "r", "dan", 4, 20);
        settle(&mut [&mut a, &mut b], &mut redis, 20);
        b.answered(dan);
        for read in reads {
            answer(&mut a, read, 30);
        }
        settle(&mut [&mut a], &mut redis, 30);
        assert_eq!(a.texts(chat(1)), [leave_text("bob", "r")]);
        // bob's `left` arrives after all: not told twice.
        for event in late {
            if let HubEvent::Ocm(event) = event {
                a.service.queue_remote_event(event);
            }
        }
        settle(&mut [&mut a], &mut redis, 40);
        assert_eq!(a.texts(chat(1)), [leave_text("bob", "r")]);

        // cid and dan are still known here: B's death tells both, and not bob again.
        a.service.queue_lapsed_nodes(vec![b.id.clone()]);
        settle(&mut [&mut a], &mut redis, 50);
        let mut told = a.texts(chat(1));
        told.sort();
        let mut expected = vec![
            leave_text("bob", "r"),
            leave_text("cid", "r"),
            leave_text("dan", "r"),
        ];
        expected.sort();
        assert_eq!(told, expected);
    }

    fn bs(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    /// A read that does not list a member takes it for gone only if its node's records are
    /// all in Redis: after Redis restarted empty (B has not set its records again yet) bob
    /// is kept. And this node's own members are never taken for gone by a read.
    #[test]
    fn a_read_takes_neither_an_unsettled_nodes_members_nor_this_nodes_own_for_gone() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let ana = a.request(codec::OPERATION_CREATE, "r", "ana", 1, 0);
        let eva = a.request(codec::OPERATION_JOIN, "r", "eva", 5, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        a.answered(ana);
        let bob = b.request(codec::OPERATION_JOIN, "r", "bob", 2, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        a.answered(eva);
        b.answered(bob);

        // Redis restarted empty: B's records (and its key) are not there yet.
        redis.members.remove(&(bs("r"), bs("bob")));
        redis.unsettled.push(b.id.clone());
        a.service.resync_rooms();
        settle(&mut [&mut a], &mut redis, 10);
        assert!(a.texts(chat(1)).is_empty() && a.texts(chat(5)).is_empty());

        // A read listing nobody, every node settled: A's own ana and eva stay (bob goes).
        let room_id = redis.rooms[&bs("r")].0;
        a.service.resync_rooms();
        a.service.take_cluster_ops();
        let read = RoomRead {
            members: Some(Vec::new()),
            settled: vec![a.id.clone(), b.id.clone()],
        };
        answer(
            &mut a,
            OcmAnswer::Members {
                room: bs("r"),
                room_id,
                since: u64::MAX,
                read: Ok(read),
            },
            20,
        );
        settle(&mut [&mut a], &mut redis, 20);
        assert_eq!(a.texts(chat(1)), [leave_text("bob", "r")]);
        assert_eq!(a.texts(chat(5)), [leave_text("bob", "r")]);
        assert_eq!(a.service.rooms(), 1);
        let ana_token = a_token(&a, &redis, "ana");
        a.say(chat(1), "r", &ana_token, "still here", 30);
        assert_eq!(a.texts(chat(5)).last().unwrap(), "ana: still here");
    }

    /// The token of `name`, a member of `node`, as Redis holds it.
    fn a_token(node: &Node, redis: &Model, name: &str) -> String {
        let (token, _) = redis
            .tokens
            .iter()
            .find(|(_, record)| record.member[..] == *name.as_bytes() && record.node == node.id)
            .unwrap();
        String::from_utf8(token.to_vec()).unwrap()
    }

    /// A room hosted on B closed while A was cut off (its `closed` lost to A): A's read finds
    /// no such room, and B's records are all in Redis, so A closes it with the host's leave
    /// text. Had B's records not been set again yet (Redis restarted empty), A would keep it.
    #[test]
    fn a_room_closed_while_cut_off_is_closed_here_once_its_hosts_node_is_settled() {
        let (mut a, mut b, mut redis) = (Node::new("a", 1), Node::new("b", 2), Model::default());
        let bob = b.request(codec::OPERATION_CREATE, "r", "bob", 2, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        let bob_token = b.answered(bob).1.unwrap();
        let ana = a.request(codec::OPERATION_JOIN, "r", "ana", 1, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        a.answered(ana);

        b.say(chat(2), "r", &bob_token, "exit", 10);
        settle(&mut [&mut b], &mut redis, 10);
        assert!(redis.rooms.is_empty());

        redis.unsettled.push(b.id.clone());
        a.service.resync_rooms();
        settle(&mut [&mut a], &mut redis, 20);
        assert_eq!(a.service.rooms(), 1, "B not settled: kept");
        redis.unsettled.clear();
        a.service.resync_rooms();
        settle(&mut [&mut a], &mut redis, 30);
        assert_eq!(a.texts(chat(1)), [host_leave_text("bob", "r")]);
        assert_eq!(a.service.rooms(), 0);
        assert!(redis.tokens.is_empty(), "ana's token gone from Redis too");
    }

    /// The cluster's room limits are Redis's answer: a create refused for them is the
    /// contract's 500, as on one node, whichever node hosts the rooms counted.
    #[test]
    fn a_create_over_the_clusters_room_limits_is_refused_with_500() {
        let config = OcmConfig {
            rooms_max: 2,
            rooms_per_ip_max: 1,
            ..OcmConfig::default()
        };
        let mut a = Node::with_config("a", 1, config.clone());
        let mut b = Node::with_config("b", 2, config);
        let mut redis = Model::default();
        let one = a.request(codec::OPERATION_CREATE, "one", "ana", 1, 0);
        let two = b.request(codec::OPERATION_CREATE, "two", "bob", 2, 0);
        let again = b.request(codec::OPERATION_CREATE, "again", "ana2", 1, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        assert_eq!(a.answered(one).0, codec::STATE_DONE);
        assert_eq!(b.answered(two).0, codec::STATE_DONE);
        assert_eq!(
            b.answered(again),
            (codec::STATE_ERROR, None),
            "ip 1's one room"
        );
        let three = a.request(codec::OPERATION_CREATE, "three", "cid", 3, 0);
        settle(&mut [&mut a, &mut b], &mut redis, 0);
        assert_eq!(a.answered(three), (codec::STATE_ERROR, None), "two rooms");
        assert_eq!((a.service.rooms(), b.service.rooms()), (1, 1));
    }

    fn missing_members(room: &'static str) -> OcmAnswer {
        OcmAnswer::Members {
            room: Bytes::from_static(room.as_bytes()),
            room_id: 0,
            since: 0,
            read: Err(()),
        }
    }

    /// The cache of other nodes' tokens and its index stay one: a leave forgets exactly that
    /// member's tokens, a close its room's, a lapse its node's, and a token recorded again
    /// under another member moves in the index.
    #[test]
    fn remote_tokens_are_forgotten_by_member_room_and_node_through_the_index() {
        let record = |room: &'static str, id: u64, member: &'static str, node: u64| TokenRecord {
            room: Bytes::from_static(room.as_bytes()),
            room_id: id,
            ip: IpAddr::from([127, 0, 0, 1]),
            host: false,
            member: Bytes::from_static(member.as_bytes()),
            node: (Bytes::from_static(b"n"), node),
        };
        let token = |n: u8| [n; 64];
        let mut tokens = RemoteTokens::default();
        tokens.insert(token(1), record("r", 1, "ana", 7));
        tokens.insert(token(2), record("r", 1, "ana", 7));
        tokens.insert(token(3), record("r", 1, "bob", 8));
        tokens.insert(token(4), record("s", 2, "ana", 7));
        tokens.insert(token(5), record("r", 9, "cid", 8));
        assert_eq!(tokens.len(), (5, 5));

        tokens.forget_member(&Bytes::from_static(b"r"), 1, &Bytes::from_static(b"ana"));
        assert!(tokens.get(&token(1)).is_none() && tokens.get(&token(2)).is_none());
        assert!(tokens.get(&token(3)).is_some() && tokens.get(&token(4)).is_some());
        assert_eq!(tokens.len(), (3, 3));
        // Another room id of the same name is another room.
        tokens.forget_room(&Bytes::from_static(b"r"), 1);
        assert!(tokens.get(&token(3)).is_none() && tokens.get(&token(5)).is_some());
        assert_eq!(tokens.len(), (2, 2));
        // Token 4 recorded again as bob's: forgetting ana there leaves it.
        tokens.insert(token(4), record("s", 2, "bob", 8));
        tokens.forget_member(&Bytes::from_static(b"s"), 2, &Bytes::from_static(b"ana"));
        assert!(tokens.get(&token(4)).is_some());
        assert_eq!(tokens.len(), (2, 2));
        tokens.forget_node(&(Bytes::from_static(b"n"), 8));
        assert_eq!(tokens.len(), (0, 0));
        // Unknown rooms and members: nothing happens.
        tokens.forget_member(&Bytes::from_static(b"x"), 1, &Bytes::from_static(b"y"));
        tokens.forget_room(&Bytes::from_static(b"x"), 1);
    }
}
