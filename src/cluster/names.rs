//! Names unique across the nodes (switchboard rule 1 in a cluster; docs/CLUSTER.md).
//!
//! Each name a node holds is a key `switchboard:name:<name>` whose value names the holder's
//! protocol and the node's incarnation (`<b|c|m>:<incarnation, 16 hex digits>:<node name>`:
//! BIN24, CCM or MATOU; another node addressing the name needs both), with the same expiry as the
//! node's liveness key (three quarters of the lease), renewed every quarter lease. A claim is
//! a small Lua script (take the key if it is free, or if it is already this node's), so two
//! nodes claiming one name at once get one yes between them; a release deletes the key only if
//! it is still this node's, so a node never deletes a name that another node took after its
//! own lease lapsed. A node that dies stops renewing: its names free within the lease.
//!
//! One thread, `cluster-names`, owns its own Redis connection: the reactor hands it
//! [`NameOp`]s through a bounded channel (never waiting) and gets each claim's answer back
//! through a channel and the waker. Operations run in the order the hub made them, so a
//! release always follows the claim it undoes. While Redis cannot be reached, claims are
//! answered [`ClaimAnswer::Unavailable`] at once (the hub's deadline bounds the rest), and
//! when it is back the names this node holds are set again before any new claim: a name that
//! another node holds by then is reported [`NameAnswer::Lost`] (Redis's holder wins: other
//! nodes have acted on it already).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::warn;

use super::link::{LinkOwner, RedisLink};
use super::{liveness, ClusterStats};
use crate::hub::claims::Holder;
use crate::hub::{ClaimAnswer, NameOp, NamedProtocol};

/// Prefix of the name keys.
pub const NAME_KEY_PREFIX: &str = "switchboard:name:";
/// Operations waiting for the names thread; one more is refused (a claim is then answered
/// as unconfirmed at once).
const OPS_MAX: usize = 65_536;
/// Name claims waiting for Redis on one node at once; one more is refused as unconfirmed at
/// once (what a login storm against a cut-off Redis may hold).
pub const CLAIMS_PENDING_MAX: usize = 4096;

/// How long a claim waits for Redis before it is refused as unconfirmed: the lease. The names
/// thread answers sooner when Redis is known down (at once) or stalls (its command deadline,
/// a quarter lease); this bounds the rest (a reconnect in progress, a queue behind).
pub fn claim_wait_ms(lease_ms: u64) -> u64 {
    lease_ms
}

/// Operations sent to Redis in one pipeline.
const BATCH_MAX: usize = 1024;
/// Keys renewed by one script call (one call holds Redis for its length).
const RENEW_KEYS_PER_CALL: usize = 1000;

/// Take `KEYS[1]` as `ARGV[3]` (its full value) for `ARGV[2]` ms unless a node other than
/// `ARGV[1]` (this node's part of the value, after the protocol and its colon) holds it.
/// 1: this node's now (or already was: a retried claim); 0: another node's.
const CLAIM_SCRIPT: &str = "\
if redis.call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ARGV[2]) then return 1 end \
local v = redis.call('GET', KEYS[1]) \
if v and string.sub(v, 3) == ARGV[1] then \
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2]) return 1 end \
return 0";

/// Delete `KEYS[1]` only if it is still node `ARGV[1]`'s.
const RELEASE_SCRIPT: &str = "\
local v = redis.call('GET', KEYS[1]) \
if v and string.sub(v, 3) == ARGV[1] then return redis.call('DEL', KEYS[1]) end \
return 0";

/// Extend each of `KEYS` that is node `ARGV[1]`'s by `ARGV[2]` ms, set again (to `ARGV[2+i]`,
/// its full value) those that are gone (Redis restarted empty, or they lapsed while this node
/// was cut off), and return the (1-based) indexes of those another node holds now.
const RENEW_SCRIPT: &str = "\
local lost = {} \
for i, key in ipairs(KEYS) do \
  local v = redis.call('GET', key) \
  if v and string.sub(v, 3) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) \
  elseif not v then redis.call('SET', key, ARGV[2 + i], 'PX', ARGV[2]) \
  else lost[#lost + 1] = i end \
end \
return lost";

pub fn name_key(name: &[u8]) -> Vec<u8> {
    let mut key = NAME_KEY_PREFIX.as_bytes().to_vec();
    key.extend_from_slice(name);
    key
}

/// This node's part of its name keys' values: its incarnation and name, as its liveness key
/// has them.
pub fn holder_value(node: &[u8], incarnation: u64) -> Vec<u8> {
    let mut value = format!("{incarnation:016x}:").into_bytes();
    value.extend_from_slice(node);
    value
}

fn protocol_letter(protocol: NamedProtocol) -> u8 {
    match protocol {
        NamedProtocol::Bin24 => b'b',
        NamedProtocol::Ccm => b'c',
        NamedProtocol::Matou => b'm',
        NamedProtocol::Web => b'w',
    }
}

/// A name key's whole value: the holder's protocol, then the node's part.
pub fn key_value(protocol: NamedProtocol, node_value: &[u8]) -> Vec<u8> {
    let mut value = vec![protocol_letter(protocol), b':'];
    value.extend_from_slice(node_value);
    value
}

/// Who a name key's value names: the holder's protocol and the node's part, unparsed.
fn split_key_value(value: &[u8]) -> Option<(NamedProtocol, &[u8])> {
    let protocol = match value.first()? {
        b'b' => NamedProtocol::Bin24,
        b'c' => NamedProtocol::Ccm,
        b'm' => NamedProtocol::Matou,
        b'w' => NamedProtocol::Web,
        _ => return None,
    };
    (value.get(1) == Some(&b':')).then_some((protocol, value.get(2..)?))
}

/// What the names thread hands the reactor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameAnswer {
    Claimed {
        token: u64,
        name: Bytes,
        answer: ClaimAnswer,
    },
    /// A name this node held is another node's now (found when Redis came back).
    Lost { name: Bytes },
    /// Which other node holds the name of the [`NameOp::Locate`] `token`: its name,
    /// incarnation and the holder's protocol; `None` when no other node does (or Redis could
    /// not be asked).
    Located { token: u64, holder: Option<Holder> },
}

/// The node a name key's value names (see [`holder_value`]).
pub fn parse_holder_value(value: &[u8]) -> Option<(Bytes, u64)> {
    let (hex, node) = (value.get(..16)?, value.get(17..)?);
    if value.get(16) != Some(&b':') || node.is_empty() {
        return None;
    }
    let incarnation = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((Bytes::copy_from_slice(node), incarnation))
}

/// The reactor's side of the names thread.
pub struct Names {
    ops: Option<SyncSender<NameOp>>,
    answers: Receiver<NameAnswer>,
    /// Set by the thread when it queued an answer and woke the reactor.
    pending: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Names {
    /// Start the names thread; it connects on its own (the cluster already checked that Redis
    /// answers).
    pub fn start(
        client: redis::Client,
        node: &[u8],
        incarnation: u64,
        lease_ms: u64,
        command_timeout: Duration,
        wake: Arc<dyn Fn() + Send + Sync>,
        stats: Arc<ClusterStats>,
    ) -> std::io::Result<Names> {
        let (ops, ops_rx) = mpsc::sync_channel(OPS_MAX);
        let (answers_tx, answers) = mpsc::channel();
        let pending = Arc::new(AtomicBool::new(false));
        let worker = NamesThread {
            link: RedisLink::new(client, command_timeout, stats, "names", None),
            value: holder_value(node, incarnation),
            lease_ms,
            held: HashMap::new(),
            answers: answers_tx,
            pending: Arc::clone(&pending),
            wake,
        };
        let thread = std::thread::Builder::new()
            .name("cluster-names".into())
            .spawn(move || worker.run(ops_rx))?;
        Ok(Names {
            ops: Some(ops),
            answers,
            pending,
            thread: Some(thread),
        })
    }

    /// Queue `op` for the thread; never blocks. The op back when the queue is full.
    /// No thread and no Redis, for tests of the [`super::Cluster`]: every op is refused and
    /// no answer ever comes.
    #[cfg(test)]
    pub(crate) fn detached() -> Names {
        let (_, answers) = mpsc::channel();
        Names {
            ops: None,
            answers,
            pending: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    pub fn send(&mut self, op: NameOp) -> Result<(), NameOp> {
        let Some(ops) = &self.ops else {
            return Err(op);
        };
        ops.try_send(op).map_err(|err| match err {
            TrySendError::Full(op) | TrySendError::Disconnected(op) => op,
        })
    }

    /// The next answer from the thread, if any.
    pub fn try_recv(&mut self) -> Option<NameAnswer> {
        self.pending.store(false, Ordering::Release);
        self.answers.try_recv().ok()
    }

    /// Stop the thread once it has carried out what is queued (and released this node's
    /// names, so that the other nodes need not wait for the lease).
    pub fn shut_down(&mut self) {
        self.ops = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!("cluster: the names thread panicked");
            }
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl super::Cluster {
    /// Hand a name operation of the hub to the names thread; never blocks. The op back when
    /// its queue is full.
    pub fn send_name_op(&mut self, op: NameOp) -> Result<(), NameOp> {
        self.names.send(op)
    }

    /// The next answer of the names thread, if any.
    pub fn try_recv_name(&mut self) -> Option<NameAnswer> {
        self.names.try_recv()
    }

    /// This node's incarnation (random per process), as the other nodes know it.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
}

struct NamesThread {
    link: RedisLink,
    /// This node's part of its name keys' values (after the protocol letter).
    value: Vec<u8>,
    lease_ms: u64,
    /// The names this node holds in Redis, as far as it knows, and their holders' protocols.
    held: HashMap<Bytes, NamedProtocol>,
    answers: mpsc::Sender<NameAnswer>,
    pending: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl LinkOwner for NamesThread {
    fn link(&mut self) -> &mut RedisLink {
        &mut self.link
    }

    /// This node's names are set again before any claim.
    fn connected(&mut self) -> bool {
        if self.held.is_empty() {
            self.link.up();
            true
        } else {
            self.renew_once()
        }
    }
}

impl NamesThread {
    fn run(mut self, ops: Receiver<NameOp>) {
        // Connected before the first claim, which need not wait for it.
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
            if Instant::now() >= next_renew {
                next_renew = Instant::now() + interval;
                self.renew();
            }
        }
        // A clean stop: the names are free at once, not a lease later.
        if let Some(conn) = self.link.conn.as_mut() {
            let mut pipe = redis::pipe();
            for name in self.held.keys() {
                pipe.cmd("EVAL")
                    .arg(RELEASE_SCRIPT)
                    .arg(1)
                    .arg(name_key(name))
                    .arg(&self.value)
                    .ignore();
            }
            let _ = pipe.query::<()>(conn);
        }
    }

    fn expiry_ms(&self) -> u64 {
        liveness::LeaseSchedule::key_expiry_ms(self.lease_ms)
    }

    /// Carry out `batch` in one pipeline, in order, and answer its claims.
    fn apply(&mut self, batch: Vec<NameOp>) {
        let expiry_ms = self.expiry_ms();
        let mut pipe = redis::pipe();
        for op in &batch {
            match op {
                NameOp::Claim { name, protocol, .. } => {
                    pipe.cmd("EVAL")
                        .arg(CLAIM_SCRIPT)
                        .arg(1)
                        .arg(name_key(name))
                        .arg(&self.value)
                        .arg(expiry_ms)
                        .arg(key_value(*protocol, &self.value));
                }
                NameOp::Release { name } => {
                    pipe.cmd("EVAL")
                        .arg(RELEASE_SCRIPT)
                        .arg(1)
                        .arg(name_key(name))
                        .arg(&self.value);
                }
                NameOp::Locate { name, .. } => {
                    pipe.cmd("GET").arg(name_key(name));
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
                NameOp::Claim {
                    token,
                    name,
                    protocol,
                } => {
                    let answer = if result == redis::Value::Int(1) {
                        self.held.insert(name.clone(), protocol);
                        ClaimAnswer::Granted
                    } else {
                        ClaimAnswer::Taken
                    };
                    self.answer(NameAnswer::Claimed {
                        token,
                        name,
                        answer,
                    });
                }
                NameOp::Release { name } => {
                    self.held.remove(&name);
                }
                NameOp::Locate { token, .. } => {
                    let holder = match &result {
                        redis::Value::BulkString(value) => split_key_value(value)
                            .filter(|(_, node)| *node != &self.value[..])
                            .and_then(|(protocol, node)| {
                                let (name, incarnation) = parse_holder_value(node)?;
                                Some((name, incarnation, protocol))
                            }),
                        _ => None,
                    };
                    self.answer(NameAnswer::Located { token, holder });
                }
            }
        }
    }

    /// Redis cannot be asked: claims are answered so at once; released names are no longer
    /// renewed, so their keys lapse on their own.
    fn unavailable(&mut self, batch: Vec<NameOp>) {
        for op in batch {
            match op {
                NameOp::Claim { token, name, .. } => self.answer(NameAnswer::Claimed {
                    token,
                    name,
                    answer: ClaimAnswer::Unavailable,
                }),
                NameOp::Release { name } => {
                    self.held.remove(&name);
                }
                NameOp::Locate { token, .. } => self.answer(NameAnswer::Located {
                    token,
                    holder: None,
                }),
            }
        }
    }

    /// Extend (or set again) every name this node holds, every quarter lease.
    fn renew(&mut self) {
        if self.held.is_empty() {
            // Nothing to renew; a lost link is still made again, so that the logs and the
            // gauge say when Redis is back.
            if self.link.conn.is_none() {
                self.ensure();
            }
            return;
        }
        if self.link.conn.is_none() {
            // A new connection renews first.
            self.ensure();
            return;
        }
        if !self.renew_once() {
            // Maybe only this connection was broken (Redis restarted): once more, at once.
            self.link.reconnect_now();
            self.ensure();
        }
    }

    /// Renew on the connection there is; report the names another node took. False when the
    /// link failed.
    fn renew_once(&mut self) -> bool {
        let held: Vec<(Bytes, NamedProtocol)> = self
            .held
            .iter()
            .map(|(name, &protocol)| (name.clone(), protocol))
            .collect();
        let mut pipe = redis::pipe();
        for chunk in held.chunks(RENEW_KEYS_PER_CALL) {
            pipe.cmd("EVAL").arg(RENEW_SCRIPT).arg(chunk.len());
            for (name, _) in chunk {
                pipe.arg(name_key(name));
            }
            pipe.arg(&self.value).arg(self.expiry_ms());
            for &(_, protocol) in chunk {
                pipe.arg(key_value(protocol, &self.value));
            }
        }
        let Some(conn) = self.link.conn.as_mut() else {
            return false;
        };
        let lost = match pipe.query::<Vec<Vec<i64>>>(conn) {
            Ok(lost) => lost,
            Err(err) => {
                self.link.lost(&err);
                return false;
            }
        };
        self.link.up();
        for (chunk, lost) in held.chunks(RENEW_KEYS_PER_CALL).zip(lost) {
            for index in lost {
                let Some((name, _)) = usize::try_from(index)
                    .ok()
                    .and_then(|index| chunk.get(index.checked_sub(1)?))
                else {
                    continue;
                };
                warn!(
                    "cluster: the name {:?} is another node's now (this node's key lapsed while it was cut off from Redis); its holder here is closed",
                    String::from_utf8_lossy(name)
                );
                self.held.remove(name);
                self.answer(NameAnswer::Lost { name: name.clone() });
            }
        }
        true
    }

    fn answer(&self, answer: NameAnswer) {
        if self.answers.send(answer).is_ok() && !self.pending.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_carry_the_name_and_the_node_as_bytes() {
        assert_eq!(
            name_key(b"al\xffice"),
            b"switchboard:name:al\xffice".to_vec()
        );
        assert_eq!(
            holder_value(b"node-1", 0xab),
            b"00000000000000ab:node-1".to_vec()
        );
        assert_eq!(
            parse_holder_value(&holder_value(b"node-1", 0xab)),
            Some((Bytes::from_static(b"node-1"), 0xab))
        );
        for bad in [
            &b""[..],
            b"00000000000000ab:",
            b"00000000000000ab-n",
            b"0000000000000zab:n",
        ] {
            assert_eq!(parse_holder_value(bad), None, "{bad:?}");
        }
        let node = holder_value(b"n", 1);
        for protocol in [
            NamedProtocol::Bin24,
            NamedProtocol::Ccm,
            NamedProtocol::Matou,
            NamedProtocol::Web,
        ] {
            let value = key_value(protocol, &node);
            assert_eq!(split_key_value(&value), Some((protocol, &node[..])));
        }
        assert_eq!(split_key_value(b"x:0000000000000001:n"), None);
        assert_eq!(split_key_value(b"c0000000000000001:n"), None);
        assert_eq!(split_key_value(b""), None);
    }
}
