//! OCM rooms across nodes (issue 21; docs/CLUSTER.md, "OCM rooms across nodes").
//!
//! A room and its tokens are records in Redis, so a room created through one node's TCRP can
//! be joined through any other, and a token can be checked by whichever node a datagram
//! reaches:
//!
//! - `switchboard:ocm:room:<room>`: a hash `id` (16 hex digits, random per room), `host` (the
//!   host's user name), `node` (the host's node, `<incarnation>:<node name>`);
//! - `switchboard:ocm:members:<room>`: a hash, member name to `<expires, unix ms>:<node>`,
//!   so a name is unique in its room across the nodes, and a dead node's members free their
//!   names when their entries expire;
//! - `switchboard:ocm:token:<64 hex>`: a hash `room`, `id`, `ip`, `host` (`1` or `0`), `name`,
//!   `node`: the token's room, the IP it is bound to and the member's home node;
//! - `switchboard:ocm:rooms` and `switchboard:ocm:rooms:ip:<ip>`: sorted sets, room name
//!   scored by when its record expires (unix ms), so `--ocm-rooms-max` and
//!   `--ocm-rooms-per-ip-max` count the cluster's live rooms: a closed room leaves them, a dead
//!   node's rooms drop out with their records;
//! - `switchboard:ocm:node:<node>`: set by the node's every renewal (by its last script,
//!   after its records; from its first room or member on), with a shorter expiry: while it
//!   exists, every record of that node is in Redis, so a member of it missing from a room's
//!   members has left (not: lost with a Redis restarted empty, or lapsed while its node was
//!   cut off or Redis frozen).
//!
//! Member entries expire by Redis's clock (`TIME` in the scripts: one clock for every node).
//! Create and join are Lua scripts, atomic in Redis: two nodes creating one room name at once
//! get one yes between them, two members joining under one name one yes. Every key carries
//! the node's key expiry (three quarters of the lease) and is renewed every quarter lease by
//! the node that owns it (the room by its host's node, each member's entry and token by the
//! member's node), set again if it is gone (Redis restarted empty). A node that dies stops
//! renewing: its rooms and tokens lapse with its lease.
//!
//! One thread, `cluster-ocm`, owns its own Redis connection, as the names thread does: the
//! reactor hands it [`OcmOp`]s through a bounded channel (never waiting), and the answers come
//! back through a channel and the waker. While Redis cannot be reached, creates, joins and
//! look-ups are answered as unavailable at once (the OCM service's deadline bounds the rest).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, warn};

use super::link::{LinkOwner, RedisLink};
use super::names::{holder_value, parse_holder_value};
use super::{liveness, ClusterStats};

/// A token as it travels: 64 lowercase hex characters.
pub type OcmToken = [u8; 64];

const ROOM_KEY_PREFIX: &str = "switchboard:ocm:room:";
const MEMBERS_KEY_PREFIX: &str = "switchboard:ocm:members:";
const TOKEN_KEY_PREFIX: &str = "switchboard:ocm:token:";
const ROOMS_KEY: &str = "switchboard:ocm:rooms";
const ROOMS_OF_IP_KEY_PREFIX: &str = "switchboard:ocm:rooms:ip:";
const NODE_KEY_PREFIX: &str = "switchboard:ocm:node:";

/// Operations waiting for the thread; one more is refused (a request is then answered 500 at
/// once, a datagram dropped).
const OPS_MAX: usize = 65_536;
/// Operations sent to Redis in one pipeline.
const BATCH_MAX: usize = 1024;

/// KEYS: room, members, token, rooms, rooms of the ip. ARGV: id, host name, node, expiry ms,
/// ip, room name, rooms max, rooms per ip max (0: none). 1: created (or already this very
/// room: a retried script); 0: a room of that name exists; 2: the cluster's rooms max
/// reached; 3: the ip's. The room sets drop their lapsed entries first (a dead node's rooms).
const CREATE_SCRIPT: &str = "\
local id = redis.call('HGET', KEYS[1], 'id') \
if id == ARGV[1] then return 1 end \
if id then return 0 end \
local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('(%d', now)) \
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', string.format('(%d', now)) \
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then return 2 end \
if tonumber(ARGV[8]) ~= 0 and redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[8]) then return 3 end \
local expires = now + tonumber(ARGV[4]) \
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'host', ARGV[2], 'node', ARGV[3], 'ip', ARGV[5]) \
redis.call('PEXPIRE', KEYS[1], ARGV[4]) \
redis.call('DEL', KEYS[2]) \
redis.call('HSET', KEYS[2], ARGV[2], string.format('%d', expires) .. ':' .. ARGV[3]) \
redis.call('PEXPIRE', KEYS[2], ARGV[4]) \
redis.call('HSET', KEYS[3], 'room', ARGV[6], 'id', ARGV[1], 'ip', ARGV[5], 'host', '1', 'name', ARGV[2], 'node', ARGV[3]) \
redis.call('PEXPIRE', KEYS[3], ARGV[4]) \
redis.call('ZADD', KEYS[4], expires, ARGV[6]) \
redis.call('PEXPIRE', KEYS[4], ARGV[4]) \
redis.call('ZADD', KEYS[5], expires, ARGV[6]) \
redis.call('PEXPIRE', KEYS[5], ARGV[4]) \
return 1";

/// KEYS: room, members, token. ARGV: name, node, expiry ms, ip, members max, room name.
/// {0}: no such room; {2}: the name is a member's already; {3}: full; {1, id, host, host
/// node, then name and node of every other live member}: joined (also when this very join
/// ran before, its token key then existing: a retried script).
const JOIN_SCRIPT: &str = "\
local room = redis.call('HMGET', KEYS[1], 'id', 'host', 'node') \
if not room[1] then return {0} end \
local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
local all = redis.call('HGETALL', KEYS[2]) \
local live = {} \
local count = 0 \
for i = 1, #all, 2 do \
  local expires, node = string.match(all[i + 1], '^(%d+):(.*)$') \
  if expires == nil or tonumber(expires) < now then redis.call('HDEL', KEYS[2], all[i]) \
  else \
    if all[i] == ARGV[1] then \
      if redis.call('EXISTS', KEYS[3]) == 0 then return {2} end \
    else \
      count = count + 1 \
      live[#live + 1] = all[i] \
      live[#live + 1] = node \
    end \
  end \
end \
if count >= tonumber(ARGV[5]) then return {3} end \
redis.call('HSET', KEYS[2], ARGV[1], string.format('%d', now + tonumber(ARGV[3])) .. ':' .. ARGV[2]) \
redis.call('PEXPIRE', KEYS[2], ARGV[3]) \
redis.call('HSET', KEYS[3], 'room', ARGV[6], 'id', room[1], 'ip', ARGV[4], 'host', '0', 'name', ARGV[1], 'node', ARGV[2]) \
redis.call('PEXPIRE', KEYS[3], ARGV[3]) \
local answer = {1, room[1], room[2], room[3]} \
for i = 1, #live do answer[#answer + 1] = live[i] end \
return answer";

/// KEYS: members, token. ARGV: name. A member leaves: its token goes, and its name with it
/// (only if the token was there: the name may be another member's by now, or the join this
/// undoes may never have run).
const LEAVE_SCRIPT: &str = "\
if redis.call('DEL', KEYS[2]) == 1 then redis.call('HDEL', KEYS[1], ARGV[1]) end \
return 1";

/// KEYS: room, members, rooms. ARGV: id, room name, prefix of the rooms-of-ip keys. The room
/// goes, if it is still that room, and leaves the room sets (the cluster's limits).
const CLOSE_SCRIPT: &str = "\
local room = redis.call('HMGET', KEYS[1], 'id', 'ip') \
if room[1] == ARGV[1] then \
  redis.call('DEL', KEYS[1], KEYS[2]) \
  redis.call('ZREM', KEYS[3], ARGV[2]) \
  if room[2] then redis.call('ZREM', ARGV[3] .. room[2], ARGV[2]) end \
end \
return 1";

/// KEYS: room, members. ARGV: id, prefix of the node keys, then nodes to ask about. {0,
/// settled}: not that room (gone, or another of that name); {1, settled, then name and node
/// of every live member}. `settled`: per node asked, 1 if its key exists (every record of it
/// is in Redis), else 0.
const MEMBERS_SCRIPT: &str = "\
local settled = {} \
for i = 3, #ARGV do settled[#settled + 1] = redis.call('EXISTS', ARGV[2] .. ARGV[i]) end \
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return {0, settled} end \
local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
local all = redis.call('HGETALL', KEYS[2]) \
local answer = {1, settled} \
for i = 1, #all, 2 do \
  local expires, node = string.match(all[i + 1], '^(%d+):(.*)$') \
  if expires ~= nil and tonumber(expires) >= now then \
    answer[#answer + 1] = all[i] \
    answer[#answer + 1] = node \
  end \
end \
return answer";

/// KEYS: room, members, rooms, rooms of the ip, and the node's key if this is the renewal's
/// last script. ARGV: id, host name, node, expiry ms, room name, ip, the node key's expiry ms.
/// The host's node keeps its room (and its place in the room sets): extended, or set again if
/// gone; 0 when another room of that name is there now.
const RENEW_ROOM_SCRIPT: &str = "\
if KEYS[5] then redis.call('SET', KEYS[5], '1', 'PX', ARGV[7]) end \
local id = redis.call('HGET', KEYS[1], 'id') \
if id and id ~= ARGV[1] then return 0 end \
if id then \
  redis.call('PEXPIRE', KEYS[1], ARGV[4]) redis.call('PEXPIRE', KEYS[2], ARGV[4]) \
else \
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'host', ARGV[2], 'node', ARGV[3], 'ip', ARGV[6]) \
  redis.call('PEXPIRE', KEYS[1], ARGV[4]) \
end \
local t = redis.call('TIME') \
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4]) \
redis.call('ZADD', KEYS[3], expires, ARGV[5]) redis.call('PEXPIRE', KEYS[3], ARGV[4]) \
redis.call('ZADD', KEYS[4], expires, ARGV[5]) redis.call('PEXPIRE', KEYS[4], ARGV[4]) \
return 1";

/// KEYS: members, token, and the node's key if this is the renewal's last script. ARGV:
/// name, node, expiry ms, room name, id, ip, host flag, the node key's expiry ms. A member's
/// node keeps its name in the room and its token.
const RENEW_MEMBER_SCRIPT: &str = "\
if KEYS[3] then redis.call('SET', KEYS[3], '1', 'PX', ARGV[8]) end \
local t = redis.call('TIME') \
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[3])) .. ':' .. ARGV[2]) \
redis.call('PEXPIRE', KEYS[1], ARGV[3]) \
redis.call('HSET', KEYS[2], 'room', ARGV[4], 'id', ARGV[5], 'ip', ARGV[6], 'host', ARGV[7], 'name', ARGV[1], 'node', ARGV[2]) \
redis.call('PEXPIRE', KEYS[2], ARGV[3]) \
return 1";

fn key(prefix: &str, name: &[u8]) -> Vec<u8> {
    let mut key = prefix.as_bytes().to_vec();
    key.extend_from_slice(name);
    key
}

/// What the OCM service asks of Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OcmOp {
    /// A TCRP create: the room, its host and the host's token, if the name is free and the
    /// cluster's live rooms (all, and those whose host came from `ip`) are under the limits.
    Create {
        request: u64,
        room: Bytes,
        room_id: u64,
        host: Bytes,
        token: OcmToken,
        ip: IpAddr,
        rooms_max: usize,
        /// 0: no limit.
        rooms_per_ip_max: u32,
    },
    /// A TCRP join, if the room exists, the name is free in it and it is not full.
    Join {
        request: u64,
        room: Bytes,
        member: Bytes,
        token: OcmToken,
        ip: IpAddr,
        members_max: usize,
    },
    /// Whose is this token (a datagram reached this node with it)?
    Lookup { token: OcmToken },
    /// A member of this node left: its name and token go, and are no longer renewed.
    Leave {
        room: Bytes,
        member: Bytes,
        token: OcmToken,
    },
    /// A room this node hosts is closed.
    Close { room: Bytes, room_id: u64 },
    /// Who is in this room now, on every node (this node's subscriber was cut off: other
    /// nodes' `joined`, `left` and `closed` events may have been missed), and which of
    /// `nodes` have every record in Redis. `since`: the asker's mark, handed back.
    Members {
        room: Bytes,
        room_id: u64,
        since: u64,
        nodes: Vec<NodeId>,
    },
}

/// A node and its incarnation.
pub type NodeId = (Bytes, u64);

/// A TCRP create's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateAnswer {
    Created,
    /// A room of that name exists.
    Exists,
    /// The cluster's live rooms are at `--ocm-rooms-max`.
    RoomsMax,
    /// The cluster's live rooms whose host came from that IP are at `--ocm-rooms-per-ip-max`.
    RoomsPerIpMax,
    /// Redis could not be asked.
    Unavailable,
}

/// A room's members as Redis has them, for a resync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRead {
    /// `None`: not that room any more (closed, or another room of that name).
    pub members: Option<RoomMembers>,
    /// The nodes asked about whose records are all in Redis (their key exists): a member of
    /// such a node that Redis does not list has left.
    pub settled: Vec<NodeId>,
}

/// A room as Redis has it, for a join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedRoom {
    pub room_id: u64,
    pub host: Bytes,
    /// The host's node and its incarnation.
    pub host_node: (Bytes, u64),
    /// The other members of the room and their nodes.
    pub members: Vec<(Bytes, (Bytes, u64))>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinAnswer {
    Joined(JoinedRoom),
    Missing,
    NameTaken,
    Full,
    Unavailable,
}

/// A token's record, as any node reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub room: Bytes,
    pub room_id: u64,
    pub ip: IpAddr,
    pub host: bool,
    pub member: Bytes,
    pub node: (Bytes, u64),
}

/// What the thread hands the reactor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OcmAnswer {
    Created {
        request: u64,
        created: CreateAnswer,
    },
    Joined {
        request: u64,
        answer: JoinAnswer,
    },
    /// `Ok(None)`: no such token; `Err(())`: Redis could not be asked.
    Looked {
        token: OcmToken,
        record: Result<Option<TokenRecord>, ()>,
    },
    /// The room's live members and their nodes; `Err(())`: the answer was not understood.
    /// (A read Redis could not answer is made again when it answers.)
    Members {
        room: Bytes,
        room_id: u64,
        since: u64,
        read: Result<RoomRead, ()>,
    },
}

/// Members of a room and their nodes (`<name>`, (`<node name>`, incarnation)).
pub type RoomMembers = Vec<(Bytes, (Bytes, u64))>;

/// The thread's counters, for the admin port ([`crate::metrics::OcmRoomsMetrics`]).
#[derive(Default)]
struct OcmStats {
    creates: AtomicU64,
    joins: AtomicU64,
    refused_exists: AtomicU64,
    refused_missing: AtomicU64,
    refused_name_taken: AtomicU64,
    refused_full: AtomicU64,
    refused_unavailable: AtomicU64,
    lookups_found: AtomicU64,
    lookups_unknown: AtomicU64,
    lookups_failed: AtomicU64,
    link_down: AtomicBool,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl OcmStats {
    /// A create or join asked (`sent`), or refused before it could be.
    fn request(&self, op: &OcmOp) {
        match op {
            OcmOp::Create { .. } => count(&self.creates),
            OcmOp::Join { .. } => count(&self.joins),
            _ => {}
        }
    }

    /// An op that could not be carried out: Redis unreachable, or the queue full.
    fn unavailable(&self, op: &OcmOp) {
        match op {
            OcmOp::Create { .. } | OcmOp::Join { .. } => count(&self.refused_unavailable),
            OcmOp::Lookup { .. } => count(&self.lookups_failed),
            _ => {}
        }
    }
}

/// The reactor's side of the thread.
pub struct OcmRooms {
    stats: Arc<OcmStats>,
    ops: Option<SyncSender<OcmOp>>,
    answers: Receiver<OcmAnswer>,
    pending: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OcmRooms {
    pub fn start(
        client: redis::Client,
        node: &[u8],
        incarnation: u64,
        lease_ms: u64,
        command_timeout: Duration,
        wake: Arc<dyn Fn() + Send + Sync>,
        stats: Arc<ClusterStats>,
    ) -> std::io::Result<OcmRooms> {
        let (ops, ops_rx) = mpsc::sync_channel(OPS_MAX);
        let (answers_tx, answers) = mpsc::channel();
        let pending = Arc::new(AtomicBool::new(false));
        let ocm_stats = Arc::new(OcmStats::default());
        let link_flag = Arc::clone(&ocm_stats);
        let worker = OcmThread {
            ocm_stats: Arc::clone(&ocm_stats),
            link: RedisLink::new(
                client,
                command_timeout,
                stats,
                "OCM rooms",
                Some(Box::new(move |down| {
                    link_flag.link_down.store(down, Ordering::Release)
                })),
            ),
            node: holder_value(node, incarnation),
            lease_ms,
            rooms: HashMap::new(),
            members: HashMap::new(),
            undo: Vec::new(),
            members_due: Vec::new(),
            served: false,
            renew_now: false,
            answers: answers_tx,
            pending: Arc::clone(&pending),
            wake,
        };
        let thread = std::thread::Builder::new()
            .name("cluster-ocm".into())
            .spawn(move || worker.run(ops_rx))?;
        Ok(OcmRooms {
            stats: ocm_stats,
            ops: Some(ops),
            answers,
            pending,
            thread: Some(thread),
        })
    }

    /// No thread and no Redis (unit tests): every op is refused.
    #[cfg(test)]
    pub(crate) fn detached() -> OcmRooms {
        let (_, answers) = mpsc::channel();
        OcmRooms {
            stats: Arc::new(OcmStats::default()),
            ops: None,
            answers,
            pending: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Queue `op`; never blocks. The op back when the queue is full (or there is no thread).
    pub fn send(&mut self, op: OcmOp) -> Result<(), Box<OcmOp>> {
        let Some(ops) = &self.ops else {
            self.stats.request(&op);
            self.stats.unavailable(&op);
            return Err(Box::new(op));
        };
        ops.try_send(op).map_err(|err| match err {
            TrySendError::Full(op) | TrySendError::Disconnected(op) => {
                self.stats.request(&op);
                self.stats.unavailable(&op);
                Box::new(op)
            }
        })
    }

    /// The thread's counters now.
    pub fn metrics(&self) -> crate::metrics::OcmRoomsMetrics {
        let stats = &self.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        crate::metrics::OcmRoomsMetrics {
            creates: load(&stats.creates),
            joins: load(&stats.joins),
            refused_exists: load(&stats.refused_exists),
            refused_missing: load(&stats.refused_missing),
            refused_name_taken: load(&stats.refused_name_taken),
            refused_full: load(&stats.refused_full),
            refused_unavailable: load(&stats.refused_unavailable),
            lookups_found: load(&stats.lookups_found),
            lookups_unknown: load(&stats.lookups_unknown),
            lookups_failed: load(&stats.lookups_failed),
            link_down: stats.link_down.load(Ordering::Acquire),
        }
    }

    pub fn try_recv(&mut self) -> Option<OcmAnswer> {
        self.pending.store(false, Ordering::Release);
        self.answers.try_recv().ok()
    }

    /// Stop the thread once it has carried out what is queued.
    pub fn shut_down(&mut self) {
        self.ops = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("cluster: the OCM rooms thread panicked");
            }
        }
    }
}

impl Drop for OcmRooms {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A member of this node, as its renewal needs it.
struct OwnedMember {
    room: Bytes,
    room_id: u64,
    member: Bytes,
    ip: IpAddr,
    host: bool,
}

struct OcmThread {
    ocm_stats: Arc<OcmStats>,
    link: RedisLink,
    /// This node as its records name it: `<incarnation>:<node name>`.
    node: Vec<u8>,
    lease_ms: u64,
    /// Rooms this node hosts: name to (id, host name, the host's IP).
    rooms: HashMap<Bytes, (u64, Bytes, IpAddr)>,
    /// Members of this node, by token.
    members: HashMap<OcmToken, OwnedMember>,
    /// Leaves and closes to carry out once Redis answers again: those that could not be sent,
    /// and the undoing of creates and joins whose outcome is unknown (sent, then no answer
    /// within the deadline: Redis may run them later, when it thaws).
    undo: Vec<OcmOp>,
    /// Reads of rooms' members to make once Redis answers again.
    members_due: Vec<OcmOp>,
    /// This node has had a room or member: its node key is kept from then on (its members'
    /// leaves are told from it, also once it has none left). A node that never served OCM
    /// sends nothing.
    served: bool,
    /// Renew now, not at the next quarter lease: the first room or member was just granted,
    /// and until a renewal sets the node key no other node takes a leave of it as such. (Not
    /// set by the create or join script: one queued in a frozen Redis runs after the node's
    /// other records may have lapsed.)
    renew_now: bool,
    answers: mpsc::Sender<OcmAnswer>,
    pending: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl LinkOwner for OcmThread {
    fn link(&mut self) -> &mut RedisLink {
        &mut self.link
    }

    fn connected(&mut self) -> bool {
        // What could not be undone or left before goes first (a create that ran after its
        // deadline must not outlive the link's return), then this node's records are set
        // again (Redis may have restarted empty).
        self.flush_undo() && self.renew_once()
    }
}

fn id_hex(id: u64) -> String {
    format!("{id:016x}")
}

fn bulk(value: &redis::Value) -> Option<&[u8]> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

/// A `HGETALL` of a token key.
fn parse_token_record(fields: &[(Vec<u8>, Vec<u8>)]) -> Option<TokenRecord> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| field == name.as_bytes())
            .map(|(_, value)| &value[..])
    };
    let room_id = u64::from_str_radix(std::str::from_utf8(get("id")?).ok()?, 16).ok()?;
    let ip = std::str::from_utf8(get("ip")?).ok()?.parse().ok()?;
    let (node, incarnation) = parse_holder_value(get("node")?)?;
    Some(TokenRecord {
        room: Bytes::copy_from_slice(get("room")?),
        room_id,
        ip,
        host: get("host")? == b"1",
        member: Bytes::copy_from_slice(get("name")?),
        node: (node, incarnation),
    })
}

/// The join script's answer.
fn parse_join(values: &[redis::Value]) -> Option<JoinAnswer> {
    let code = match values.first()? {
        redis::Value::Int(code) => *code,
        _ => return None,
    };
    match code {
        0 => return Some(JoinAnswer::Missing),
        2 => return Some(JoinAnswer::NameTaken),
        3 => return Some(JoinAnswer::Full),
        1 => {}
        _ => return None,
    }
    let room_id = u64::from_str_radix(std::str::from_utf8(bulk(values.get(1)?)?).ok()?, 16).ok()?;
    let host = Bytes::copy_from_slice(bulk(values.get(2)?)?);
    let host_node = parse_holder_value(bulk(values.get(3)?)?)?;
    let mut members = Vec::new();
    for pair in values.get(4..)?.chunks(2) {
        let [name, node] = pair else {
            return None;
        };
        if let Some(node) = parse_holder_value(bulk(node)?) {
            members.push((Bytes::copy_from_slice(bulk(name)?), node));
        }
    }
    Some(JoinAnswer::Joined(JoinedRoom {
        room_id,
        host,
        host_node,
        members,
    }))
}

/// The members script's answer to a read asking about `nodes`.
fn parse_members(values: &[redis::Value], nodes: &[NodeId]) -> Option<RoomRead> {
    let found = match values.first()? {
        redis::Value::Int(0) => false,
        redis::Value::Int(1) => true,
        _ => return None,
    };
    let redis::Value::Array(flags) = values.get(1)? else {
        return None;
    };
    if flags.len() != nodes.len() {
        return None;
    }
    let settled = nodes
        .iter()
        .zip(flags)
        .filter(|(_, flag)| **flag == redis::Value::Int(1))
        .map(|(node, _)| node.clone())
        .collect();
    if !found {
        return Some(RoomRead {
            members: None,
            settled,
        });
    }
    let mut members = Vec::new();
    for pair in values.get(2..)?.chunks(2) {
        let [name, node] = pair else {
            return None;
        };
        if let Some(node) = parse_holder_value(bulk(node)?) {
            members.push((Bytes::copy_from_slice(bulk(name)?), node));
        }
    }
    Some(RoomRead {
        members: Some(members),
        settled,
    })
}

impl OcmThread {
    fn run(mut self, ops: Receiver<OcmOp>) {
        self.ensure();
        let interval = Duration::from_millis((self.lease_ms / 4).max(1));
        let mut next_renew = Instant::now() + interval;
        loop {
            let wait = next_renew.saturating_duration_since(Instant::now());
            match ops.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH_MAX {
                        match ops.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_renew || std::mem::take(&mut self.renew_now) {
                next_renew = Instant::now() + interval;
                self.renew();
            }
        }
        // A clean stop: this node's rooms close and its members leave at once, not a lease
        // later (the other nodes hear of it from the OCM service's own events).
        if self.link.conn.is_some() {
            let mut pipe = redis::pipe();
            for (room, (id, _, _)) in &self.rooms {
                close_op(&mut pipe, room, *id);
            }
            for (token, member) in &self.members {
                leave_op(&mut pipe, &member.room, &member.member, token);
            }
            if let Some(conn) = self.link.conn.as_mut() {
                let _ = pipe.query::<()>(conn);
            }
        }
    }

    fn expiry_ms(&self) -> u64 {
        liveness::LeaseSchedule::key_expiry_ms(self.lease_ms)
    }

    /// The node key's expiry: half a lease, so it lapses before the records it vouches for
    /// (three quarters), renewed every quarter.
    fn node_key_ms(&self) -> u64 {
        (self.lease_ms / 2).max(1)
    }

    fn apply(&mut self, mut batch: Vec<OcmOp>) {
        for op in &batch {
            self.ocm_stats.request(op);
        }
        if !self.flush_undo() {
            self.unavailable(batch);
            return;
        }
        batch.append(&mut self.members_due);
        if batch.is_empty() {
            return;
        }
        let expiry_ms = self.expiry_ms();
        let mut pipe = redis::pipe();
        for op in &batch {
            match op {
                OcmOp::Create {
                    room,
                    room_id,
                    host,
                    token,
                    ip,
                    rooms_max,
                    rooms_per_ip_max,
                    ..
                } => {
                    let ip = ip.to_string();
                    pipe.cmd("EVAL")
                        .arg(CREATE_SCRIPT)
                        .arg(5)
                        .arg(key(ROOM_KEY_PREFIX, room))
                        .arg(key(MEMBERS_KEY_PREFIX, room))
                        .arg(key(TOKEN_KEY_PREFIX, token))
                        .arg(ROOMS_KEY)
                        .arg(key(ROOMS_OF_IP_KEY_PREFIX, ip.as_bytes()))
                        .arg(id_hex(*room_id))
                        .arg(&host[..])
                        .arg(&self.node)
                        .arg(expiry_ms)
                        .arg(&ip)
                        .arg(&room[..])
                        .arg(*rooms_max)
                        .arg(*rooms_per_ip_max);
                }
                OcmOp::Join {
                    room,
                    member,
                    token,
                    ip,
                    members_max,
                    ..
                } => {
                    pipe.cmd("EVAL")
                        .arg(JOIN_SCRIPT)
                        .arg(3)
                        .arg(key(ROOM_KEY_PREFIX, room))
                        .arg(key(MEMBERS_KEY_PREFIX, room))
                        .arg(key(TOKEN_KEY_PREFIX, token))
                        .arg(&member[..])
                        .arg(&self.node)
                        .arg(expiry_ms)
                        .arg(ip.to_string())
                        .arg(*members_max)
                        .arg(&room[..]);
                }
                OcmOp::Lookup { token } => {
                    pipe.cmd("HGETALL").arg(key(TOKEN_KEY_PREFIX, token));
                }
                OcmOp::Leave {
                    room,
                    member,
                    token,
                } => leave_op(&mut pipe, room, member, token),
                OcmOp::Close { room, room_id } => close_op(&mut pipe, room, *room_id),
                OcmOp::Members {
                    room,
                    room_id,
                    nodes,
                    ..
                } => {
                    let cmd = pipe
                        .cmd("EVAL")
                        .arg(MEMBERS_SCRIPT)
                        .arg(2)
                        .arg(key(ROOM_KEY_PREFIX, room))
                        .arg(key(MEMBERS_KEY_PREFIX, room))
                        .arg(id_hex(*room_id))
                        .arg(NODE_KEY_PREFIX);
                    for (name, incarnation) in nodes {
                        cmd.arg(holder_value(name, *incarnation));
                    }
                }
            }
        }
        let results = match self.query::<Vec<redis::Value>>(&pipe) {
            Some(results) if results.len() == batch.len() => results,
            _ => {
                self.unavailable(batch);
                return;
            }
        };
        for (op, result) in batch.into_iter().zip(results) {
            match op {
                OcmOp::Create {
                    request,
                    room,
                    room_id,
                    host,
                    token,
                    ip,
                    ..
                } => {
                    let created = match result {
                        redis::Value::Int(1) => CreateAnswer::Created,
                        redis::Value::Int(0) => CreateAnswer::Exists,
                        redis::Value::Int(2) => CreateAnswer::RoomsMax,
                        redis::Value::Int(3) => CreateAnswer::RoomsPerIpMax,
                        _ => {
                            warn!("cluster: an OCM create's answer from Redis was not understood");
                            CreateAnswer::Unavailable
                        }
                    };
                    // The cluster's room limits count in the log, not as a reason of their
                    // own (the metrics' reasons are Redis's records').
                    match created {
                        CreateAnswer::Exists => count(&self.ocm_stats.refused_exists),
                        CreateAnswer::Unavailable => count(&self.ocm_stats.refused_unavailable),
                        _ => {}
                    }
                    if created == CreateAnswer::Created {
                        self.renew_now |= !self.served;
                        self.served = true;
                        self.rooms.insert(room.clone(), (room_id, host.clone(), ip));
                        self.members.insert(
                            token,
                            OwnedMember {
                                room,
                                room_id,
                                member: host,
                                ip,
                                host: true,
                            },
                        );
                    }
                    self.answer(OcmAnswer::Created { request, created });
                }
                OcmOp::Join {
                    request,
                    room,
                    member,
                    token,
                    ip,
                    ..
                } => {
                    let answer = match &result {
                        redis::Value::Array(values) => parse_join(values),
                        _ => None,
                    }
                    .unwrap_or_else(|| {
                        warn!("cluster: an OCM join's answer from Redis was not understood");
                        JoinAnswer::Unavailable
                    });
                    match &answer {
                        JoinAnswer::Joined(_) => {}
                        JoinAnswer::Missing => count(&self.ocm_stats.refused_missing),
                        JoinAnswer::NameTaken => count(&self.ocm_stats.refused_name_taken),
                        JoinAnswer::Full => count(&self.ocm_stats.refused_full),
                        JoinAnswer::Unavailable => count(&self.ocm_stats.refused_unavailable),
                    }
                    if let JoinAnswer::Joined(joined) = &answer {
                        self.renew_now |= !self.served;
                        self.served = true;
                        self.members.insert(
                            token,
                            OwnedMember {
                                room,
                                room_id: joined.room_id,
                                member,
                                ip,
                                host: false,
                            },
                        );
                    }
                    self.answer(OcmAnswer::Joined { request, answer });
                }
                OcmOp::Lookup { token } => {
                    let fields: Vec<(Vec<u8>, Vec<u8>)> =
                        redis::FromRedisValue::from_redis_value(&result).unwrap_or_default();
                    let record = parse_token_record(&fields);
                    count(if record.is_some() {
                        &self.ocm_stats.lookups_found
                    } else {
                        &self.ocm_stats.lookups_unknown
                    });
                    self.answer(OcmAnswer::Looked {
                        token,
                        record: Ok(record),
                    });
                }
                OcmOp::Leave { token, .. } => {
                    self.members.remove(&token);
                }
                OcmOp::Close { room, room_id } => {
                    remove_room_of_id(&mut self.rooms, &room, room_id);
                }
                OcmOp::Members {
                    room,
                    room_id,
                    since,
                    nodes,
                } => {
                    let read = match &result {
                        redis::Value::Array(values) => parse_members(values, &nodes),
                        _ => None,
                    }
                    .ok_or_else(|| {
                        warn!("cluster: an OCM room's members from Redis were not understood");
                    });
                    self.answer(OcmAnswer::Members {
                        room,
                        room_id,
                        since,
                        read,
                    });
                }
            }
        }
    }

    /// Redis cannot be asked: requests and look-ups are answered so at once; what left or
    /// closed is no longer renewed, and is carried out when Redis is back (or lapses). A
    /// create or join may still run in Redis (sent before it froze): it is undone then.
    fn unavailable(&mut self, batch: Vec<OcmOp>) {
        for op in batch {
            self.ocm_stats.unavailable(&op);
            match op {
                OcmOp::Create {
                    request,
                    room,
                    room_id,
                    host,
                    token,
                    ..
                } => {
                    self.retry(OcmOp::Leave {
                        room: room.clone(),
                        member: host,
                        token,
                    });
                    self.retry(OcmOp::Close { room, room_id });
                    self.answer(OcmAnswer::Created {
                        request,
                        created: CreateAnswer::Unavailable,
                    });
                }
                OcmOp::Join {
                    request,
                    room,
                    member,
                    token,
                    ..
                } => {
                    self.retry(OcmOp::Leave {
                        room,
                        member,
                        token,
                    });
                    self.answer(OcmAnswer::Joined {
                        request,
                        answer: JoinAnswer::Unavailable,
                    });
                }
                OcmOp::Lookup { token } => self.answer(OcmAnswer::Looked {
                    token,
                    record: Err(()),
                }),
                read @ OcmOp::Members { .. } => {
                    // Read when Redis answers again (the subscriber may be back before this
                    // thread's link is): a missed member would otherwise stay unknown.
                    if self.members_due.len() < OPS_MAX {
                        self.members_due.push(read);
                    }
                }
                OcmOp::Leave {
                    room,
                    member,
                    token,
                } => {
                    self.members.remove(&token);
                    self.retry(OcmOp::Leave {
                        room,
                        member,
                        token,
                    });
                }
                OcmOp::Close { room, room_id } => {
                    remove_room_of_id(&mut self.rooms, &room, room_id);
                    self.retry(OcmOp::Close { room, room_id });
                }
            }
        }
    }

    /// The leaves and closes waiting for Redis, on the connection there is. False when the
    /// link failed (they wait again).
    fn flush_undo(&mut self) -> bool {
        if self.undo.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for op in &self.undo {
            match op {
                OcmOp::Leave {
                    room,
                    member,
                    token,
                } => leave_op(&mut pipe, room, member, token),
                OcmOp::Close { room, room_id } => close_op(&mut pipe, room, *room_id),
                OcmOp::Create { .. }
                | OcmOp::Join { .. }
                | OcmOp::Lookup { .. }
                | OcmOp::Members { .. } => {}
            }
        }
        let Some(conn) = self.link.conn.as_mut() else {
            return false;
        };
        match pipe.query::<()>(conn) {
            Ok(()) => {
                debug!(
                    "cluster: {} OCM leaves and closes carried out late",
                    self.undo.len()
                );
                self.undo.clear();
                true
            }
            Err(err) => {
                self.link.lost(&err);
                false
            }
        }
    }

    /// A leave or close for when Redis answers again; bounded (beyond, the keys lapse).
    fn retry(&mut self, op: OcmOp) {
        if self.undo.len() < OPS_MAX {
            self.undo.push(op);
        }
    }

    fn renew(&mut self) {
        if self.link.conn.is_none() {
            // A new connection renews first.
            self.ensure();
        } else {
            if !self.renew_once() {
                self.link.reconnect_now();
                self.ensure();
            }
            if self.link.conn.is_some() {
                self.flush_undo();
            }
        }
        if self.link.conn.is_some() && !self.members_due.is_empty() {
            // Reads of rooms' members that found Redis unreachable.
            self.apply(Vec::new());
        }
    }

    /// Extend (or set again) this node's rooms, members' names and tokens. False when the
    /// link failed.
    fn renew_once(&mut self) -> bool {
        let expiry_ms = self.expiry_ms();
        // The node's key, set by the last script (not a command of its own: against a frozen
        // Redis each command of a pipeline waits out its own deadline). Set only once every
        // record before it is (Redis runs one connection's commands in order, a script at
        // once), and it lapses before they do (half a lease against three quarters), so while
        // it exists a member of this node that a room's members do not list has left. Set
        // even with no records left: its last member's leave is told from it.
        let node_key = key(NODE_KEY_PREFIX, &self.node);
        let node_key_ms = self.node_key_ms();
        let mut unmarked = self.rooms.len() + self.members.len();
        if unmarked == 0 && !self.served {
            self.link.up();
            return true;
        }
        let mut pipe = redis::pipe();
        if unmarked == 0 {
            pipe.cmd("SET")
                .arg(&node_key)
                .arg(1)
                .arg("PX")
                .arg(node_key_ms)
                .ignore();
        }
        let rooms: Vec<Bytes> = self.rooms.keys().cloned().collect();
        for room in &rooms {
            let Some((id, host, ip)) = self.rooms.get(room) else {
                continue;
            };
            unmarked -= 1;
            let last = unmarked == 0;
            let ip = ip.to_string();
            let cmd = pipe
                .cmd("EVAL")
                .arg(RENEW_ROOM_SCRIPT)
                .arg(if last { 5 } else { 4 })
                .arg(key(ROOM_KEY_PREFIX, room))
                .arg(key(MEMBERS_KEY_PREFIX, room))
                .arg(ROOMS_KEY)
                .arg(key(ROOMS_OF_IP_KEY_PREFIX, ip.as_bytes()));
            if last {
                cmd.arg(&node_key);
            }
            cmd.arg(id_hex(*id))
                .arg(&host[..])
                .arg(&self.node)
                .arg(expiry_ms)
                .arg(&room[..])
                .arg(&ip)
                .arg(node_key_ms);
        }
        for (token, member) in &self.members {
            unmarked -= 1;
            let last = unmarked == 0;
            let cmd = pipe
                .cmd("EVAL")
                .arg(RENEW_MEMBER_SCRIPT)
                .arg(if last { 3 } else { 2 })
                .arg(key(MEMBERS_KEY_PREFIX, &member.room))
                .arg(key(TOKEN_KEY_PREFIX, token));
            if last {
                cmd.arg(&node_key);
            }
            cmd.arg(&member.member[..])
                .arg(&self.node)
                .arg(expiry_ms)
                .arg(&member.room[..])
                .arg(id_hex(member.room_id))
                .arg(member.ip.to_string())
                .arg(if member.host { "1" } else { "0" })
                .arg(node_key_ms);
        }
        let Some(conn) = self.link.conn.as_mut() else {
            return false;
        };
        match pipe.query::<Vec<i64>>(conn) {
            Ok(answers) => {
                self.link.up();
                for (room, answer) in rooms.iter().zip(answers) {
                    if answer == 0 {
                        warn!(
                            "cluster: the OCM room {:?} is another node's now (this node's record lapsed while it was cut off from Redis)",
                            String::from_utf8_lossy(room)
                        );
                        self.rooms.remove(room);
                    }
                }
                true
            }
            Err(err) => {
                self.link.lost(&err);
                false
            }
        }
    }

    fn answer(&self, answer: OcmAnswer) {
        if self.answers.send(answer).is_ok() && !self.pending.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }
}

/// Removes `room` from `rooms` (name to id, host, ...) only while that name is still the room
/// `room_id`: a close may come after a newer room took the name, and that one stays. True
/// when it was removed.
pub(crate) fn remove_room_of_id<H, N>(
    rooms: &mut HashMap<Bytes, (u64, H, N)>,
    room: &Bytes,
    room_id: u64,
) -> bool {
    let current = rooms.get(room).is_some_and(|(id, _, _)| *id == room_id);
    if current {
        rooms.remove(room);
    }
    current
}

fn leave_op(pipe: &mut redis::Pipeline, room: &[u8], member: &[u8], token: &OcmToken) {
    pipe.cmd("EVAL")
        .arg(LEAVE_SCRIPT)
        .arg(2)
        .arg(key(MEMBERS_KEY_PREFIX, room))
        .arg(key(TOKEN_KEY_PREFIX, token))
        .arg(member);
}

fn close_op(pipe: &mut redis::Pipeline, room: &[u8], room_id: u64) {
    pipe.cmd("EVAL")
        .arg(CLOSE_SCRIPT)
        .arg(3)
        .arg(key(ROOM_KEY_PREFIX, room))
        .arg(key(MEMBERS_KEY_PREFIX, room))
        .arg(ROOMS_KEY)
        .arg(id_hex(room_id))
        .arg(room)
        .arg(ROOMS_OF_IP_KEY_PREFIX);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(bytes: &[u8]) -> redis::Value {
        redis::Value::BulkString(bytes.to_vec())
    }

    #[test]
    fn a_token_record_and_a_join_answer_are_read_and_bad_ones_refused() {
        let node = holder_value(b"node-a", 0xab);
        let fields: Vec<(Vec<u8>, Vec<u8>)> = [
            ("room", &b"r"[..]),
            ("id", b"00000000000000ff"),
            ("ip", b"127.0.0.2"),
            ("host", b"1"),
            ("name", b"ana"),
            ("node", &node),
        ]
        .iter()
        .map(|(field, value)| (field.as_bytes().to_vec(), value.to_vec()))
        .collect();
        assert_eq!(
            parse_token_record(&fields),
            Some(TokenRecord {
                room: Bytes::from_static(b"r"),
                room_id: 0xff,
                ip: "127.0.0.2".parse().unwrap(),
                host: true,
                member: Bytes::from_static(b"ana"),
                node: (Bytes::from_static(b"node-a"), 0xab),
            })
        );
        assert_eq!(parse_token_record(&fields[1..]), None);
        assert_eq!(parse_token_record(&[]), None);
        let mut bad_ip = fields.clone();
        bad_ip[2].1 = b"nowhere".to_vec();
        assert_eq!(parse_token_record(&bad_ip), None);

        let joined = [
            redis::Value::Int(1),
            bulk(b"0000000000000001"),
            bulk(b"host"),
            bulk(&node),
            bulk(b"bo"),
            bulk(&holder_value(b"node-b", 2)),
        ];
        assert_eq!(
            parse_join(&joined),
            Some(JoinAnswer::Joined(JoinedRoom {
                room_id: 1,
                host: Bytes::from_static(b"host"),
                host_node: (Bytes::from_static(b"node-a"), 0xab),
                members: vec![(
                    Bytes::from_static(b"bo"),
                    (Bytes::from_static(b"node-b"), 2)
                )],
            }))
        );
        assert_eq!(parse_join(&joined[..5]), None);
        assert_eq!(parse_join(&joined[..3]), None);
        assert_eq!(
            parse_join(&[redis::Value::Int(0)]),
            Some(JoinAnswer::Missing)
        );
        assert_eq!(
            parse_join(&[redis::Value::Int(2)]),
            Some(JoinAnswer::NameTaken)
        );
        assert_eq!(parse_join(&[redis::Value::Int(3)]), Some(JoinAnswer::Full));
        assert_eq!(parse_join(&[redis::Value::Int(7)]), None);
        assert_eq!(parse_join(&[]), None);
    }

    #[test]
    fn a_members_read_is_parsed_with_its_settled_nodes_and_bad_ones_refused() {
        let a = (Bytes::from_static(b"node-a"), 1);
        let b = (Bytes::from_static(b"node-b"), 2);
        let nodes = [a.clone(), b.clone()];
        let flags =
            |x: i64, y: i64| redis::Value::Array(vec![redis::Value::Int(x), redis::Value::Int(y)]);
        let found = [
            redis::Value::Int(1),
            flags(0, 1),
            bulk(b"bo"),
            bulk(&holder_value(b"node-b", 2)),
        ];
        assert_eq!(
            parse_members(&found, &nodes),
            Some(RoomRead {
                members: Some(vec![(Bytes::from_static(b"bo"), b.clone())]),
                settled: vec![b.clone()],
            })
        );
        assert_eq!(
            parse_members(&[redis::Value::Int(0), flags(1, 1)], &nodes),
            Some(RoomRead {
                members: None,
                settled: vec![a, b],
            })
        );
        assert_eq!(parse_members(&found[..3], &nodes), None, "a name alone");
        assert_eq!(
            parse_members(&found, &nodes[..1]),
            None,
            "flags for other nodes"
        );
        assert_eq!(parse_members(&found[..1], &nodes), None);
        assert_eq!(
            parse_members(&[redis::Value::Int(2), flags(0, 0)], &nodes),
            None
        );
        assert_eq!(parse_members(&[], &nodes), None);
    }
}
