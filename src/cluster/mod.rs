//! Cluster mode (`--cluster redis://HOST:PORT[/DB]`): several chatd nodes share one lobby
//! through Redis pub/sub (issue 20; docs/CLUSTER.md).
//!
//! The reactor never waits for Redis. Two threads own the two Redis connections: the
//! publisher takes encoded events from a bounded channel (a full channel drops the event and
//! counts it, so a cut-off Redis cannot grow memory without bound) and PUBLISHes them in
//! order, in one pipeline per batch; the subscriber reads the lobby channel and hands each
//! decoded event to the reactor through a channel plus the `wake` closure (as the offline
//! store does). One publishing connection per node keeps each node's events in order.
//!
//! Every event carries its node's name, an incarnation (random per process, so a node
//! restarted under the same name starts afresh) and a sequence number: [`Cluster::try_recv`]
//! drops this node's own events (Redis echoes them to its subscriber) and anything not newer
//! than the last seen from that node, so nothing is delivered twice.
//!
//! Liveness (`liveness`): the publisher renews this node's key with a Redis expiry every
//! quarter lease and lists the other nodes' keys; the reactor's side keeps which remote lobby
//! members belong to which node and, when a node's key is gone (or it restarted), hands the
//! hub their leaving, once. The subscriber PINGs a quiet Redis with a deadline, so a frozen
//! one is a lost link, not silence for ever.

pub mod codec;
mod link;
pub mod liveness;
pub mod names;
pub mod ocm;
pub mod offline;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};

use crate::hub::HubEvent;
pub use codec::Envelope;

/// The pub/sub channel of the lobby. Pub/sub ignores the database number, so clusters that
/// share one Redis are told apart by `--cluster-channel` if ever needed (not yet).
pub const LOBBY_CHANNEL: &str = "switchboard:lobby";
/// Prefix of each node's own channel: the events for one node only (a CCM or web message, a
/// MATOU private link's step, a BIN24 frame crossing) are published there, not on the lobby
/// channel, so that only their node receives them (and not every node, to drop them).
pub const NODE_CHANNEL_PREFIX: &str = "switchboard:to:";

/// The channel of node `node`'s own events.
pub fn node_channel(node: &[u8]) -> Vec<u8> {
    let mut channel = NODE_CHANNEL_PREFIX.as_bytes().to_vec();
    channel.extend_from_slice(node);
    channel
}

/// An encoded event and the node it is for (`None`: every node, on the lobby channel).
type Outgoing = (Option<Bytes>, Bytes);

/// The node a hub event is for, when only one node acts on it.
fn target_node(event: &HubEvent) -> Option<&Bytes> {
    match event {
        HubEvent::Addressed(addressed) => Some(&addressed.to_node),
        HubEvent::Private(link) => Some(&link.to_node),
        HubEvent::Bin24(relay) => Some(&relay.to_node),
        HubEvent::Said(_) | HubEvent::Presence(_) | HubEvent::Direct(_) | HubEvent::Ocm(_) => None,
    }
}
/// Events waiting for the publisher; beyond this they are dropped (and counted).
const OUTGOING_MAX: usize = 65_536;
/// Bytes of encoded events waiting for the publisher; beyond this they are dropped (and
/// counted). A lobby text may be 1 MiB: counted in events alone, a cut-off Redis could hold
/// 64 GiB here.
pub const OUTGOING_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of other nodes' messages handed over by the subscriber and not yet taken by the
/// reactor; beyond this the subscriber stops reading Redis until the reactor catches up (Redis
/// then holds them, up to its own limit for a subscriber's output, past which it drops the
/// connection: the subscriber reconnects, and the rosters bring back the presence missed).
pub const INCOMING_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How often a subscriber held back by [`INCOMING_BYTES_MAX`] looks again.
const INCOMING_PAUSE: Duration = Duration::from_millis(1);
/// Bytes one PUBLISH pipeline carries at most (also at least one event).
const PIPELINE_BYTES_MAX: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscriber looks up from a quiet channel to notice shutdown.
const READ_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest a Redis command may take before its link is taken for lost (a quarter lease
/// when that is shorter: a stalled Redis must be noticed within the lease).
const COMMAND_TIMEOUT_MAX: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT_MIN: Duration = Duration::from_millis(50);
/// Default `--cluster-lease-ms`.
pub const LEASE_MS_DEFAULT: u64 = 3000;
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// This node's name (`--node-name`), at most [`codec::NODE_NAME_BYTES_MAX`] bytes.
    pub node_name: String,
    /// `--cluster-lease-ms`: a node silent this long (its liveness key not renewed) is taken
    /// for dead, and its lobby members are announced gone.
    pub lease_ms: u64,
}

impl ClusterConfig {
    pub(crate) fn command_timeout(&self) -> Duration {
        (Duration::from_millis(self.lease_ms) / 4).clamp(COMMAND_TIMEOUT_MIN, COMMAND_TIMEOUT_MAX)
    }
}

/// What the Redis threads hand the reactor.
#[derive(Debug)]
enum Incoming {
    /// An event on the lobby channel (the subscriber), and its size on the wire.
    Event(Envelope, usize),
    /// The nodes whose liveness keys exist now (the publisher, at a renewal).
    Live(Vec<liveness::NodeId>),
    /// Another node's lobby roster (the subscriber), and its size on the wire.
    Roster(codec::RosterEnvelope, usize),
    /// The subscription is made (at start) or made again after a lost link: events of other
    /// nodes may have been missed meanwhile.
    Subscribed,
    /// The publisher's link is back after it was lost: this node's events published meanwhile
    /// were dropped.
    PublisherBack,
}

/// A name unique per process: host, pid and a random number.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "node".to_string());
    let mut name = format!("{host}-{}-{:08x}", std::process::id(), random_u64() as u32);
    // Keep the random tail: cut the host part if the whole is too long.
    while name.len() > codec::NODE_NAME_BYTES_MAX {
        name.remove(0);
    }
    name
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // A failing CSPRNG leaves the clock's nanoseconds: uniqueness, not secrecy, is needed.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id())).to_be_bytes();
    }
    u64::from_be_bytes(bytes)
}

#[derive(Debug)]
pub enum ClusterError {
    Url(String),
    NodeName(String),
    Lease(String),
    Connect(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Url(err) => write!(f, "--cluster: {err}"),
            ClusterError::NodeName(err) => write!(f, "--node-name: {err}"),
            ClusterError::Lease(err) => write!(f, "--cluster-lease-ms: {err}"),
            ClusterError::Connect(err) => write!(f, "cannot join the cluster: {err}"),
        }
    }
}

impl std::error::Error for ClusterError {}

/// Counters shared with the Redis threads, for logs and the admin port.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub published: AtomicU64,
    /// Events dropped before publishing: the outgoing channel was full (Redis cut off or too
    /// slow), or a publish failed.
    pub publish_dropped: AtomicU64,
    /// Events of other nodes handed to the hub.
    pub received: AtomicU64,
    /// Events not newer than the last one seen from their node (not delivered again).
    pub duplicates: AtomicU64,
    /// Messages on the channel that did not decode.
    pub malformed: AtomicU64,
    /// Redis connections down now (of four: publisher, subscriber, names thread, OCM rooms
    /// thread).
    pub links_down: AtomicU64,
    /// Times a Redis connection was lost.
    pub link_losses: AtomicU64,
    /// Other nodes taken for dead (their lease lapsed, or a new incarnation replaced them).
    pub nodes_lapsed: AtomicU64,
    /// Other nodes' rosters received, and the presences they brought that had been missed.
    pub rosters_received: AtomicU64,
    pub roster_presences: AtomicU64,
}

/// The reactor's side of the cluster.
pub struct Cluster {
    node: Bytes,
    incarnation: u64,
    next_seq: u64,
    outgoing: Option<SyncSender<Outgoing>>,
    /// Bytes in `outgoing` (added here, taken off by the publisher).
    outgoing_bytes: Arc<AtomicUsize>,
    incoming: Receiver<Incoming>,
    /// Bytes in `incoming` (added by the subscriber, taken off here).
    incoming_bytes: Arc<AtomicUsize>,
    /// Each other node's lobby members, to announce them gone when it dies.
    members: liveness::Members,
    /// Presences this node made up for other nodes (with the node's name), handed out before
    /// anything else: the leavings of lapsed nodes' members, and what rosters showed missed.
    lapsed_left: VecDeque<(Bytes, HubEvent)>,
    /// Set by the subscriber when it queued something and woke the reactor; cleared before
    /// draining, so a burst costs one wake.
    pending: Arc<AtomicBool>,
    /// (incarnation, last sequence number) per node seen.
    last_seen: HashMap<Bytes, (u64, u64)>,
    /// Rosters this node owes: one asking the others for theirs (a link is new), and replies
    /// to the nodes (incarnations) that asked.
    roster_ask_due: bool,
    roster_replies_due: Vec<u64>,
    /// Asks published so far; the replies to the first one (at start) are applied silently.
    roster_asks: u64,
    stats: Arc<ClusterStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Names unique across the nodes (`names`).
    names: names::Names,
    /// OCM rooms and tokens in Redis (`ocm`).
    ocm_rooms: ocm::OcmRooms,
    /// Other nodes (and incarnations) taken for dead since the OCM service last asked: their
    /// OCM members leave, and the rooms they hosted close.
    lapsed_nodes: Vec<liveness::NodeId>,
    /// The subscriber (re)subscribed since the OCM service last asked: it reads its rooms'
    /// members from Redis (`joined` events of other nodes may have been missed).
    ocm_resync_due: bool,
}

impl Cluster {
    /// Connect both Redis connections and subscribe to the lobby, before the reactor starts:
    /// an unreachable Redis is an error here (chatd exits non-zero). After this the threads
    /// reconnect on their own.
    pub fn connect(
        config: &ClusterConfig,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Cluster, ClusterError> {
        let node = config.node_name.as_bytes();
        if node.is_empty() || node.len() > codec::NODE_NAME_BYTES_MAX {
            return Err(ClusterError::NodeName(format!(
                "1 to {} bytes, not {}",
                codec::NODE_NAME_BYTES_MAX,
                node.len()
            )));
        }
        let client = redis::Client::open(config.url.as_str())
            .map_err(|err| ClusterError::Url(err.to_string()))?;
        if config.lease_ms < 4 {
            return Err(ClusterError::Lease(format!(
                "at least 4 ms, not {}",
                config.lease_ms
            )));
        }
        let command_timeout = config.command_timeout();
        let incarnation = random_u64();
        let key = liveness::node_key(node, incarnation);
        let mut publisher = publisher_connection(&client, command_timeout)
            .map_err(|err| ClusterError::Connect(format!("{}: {err}", config.url)))?;
        // The key exists before this node publishes anything: a node that lists the live
        // nodes after receiving this node's first event finds it.
        let first_live = renew_and_list(&mut publisher, &key, config.lease_ms)
            .map_err(|err| ClusterError::Connect(format!("{}: {err}", config.url)))?;
        let stats = Arc::new(ClusterStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicBool::new(false));
        let (outgoing, outgoing_rx) = mpsc::sync_channel::<Outgoing>(OUTGOING_MAX);
        let outgoing_bytes = Arc::new(AtomicUsize::new(0));
        let incoming_bytes = Arc::new(AtomicUsize::new(0));
        let (incoming_tx, incoming) = mpsc::channel();
        let _ = incoming_tx.send(Incoming::Live(first_live));
        let publish_thread = {
            let publisher_thread = Publisher {
                client: client.clone(),
                conn: Some(publisher),
                command_timeout,
                key,
                lease_ms: config.lease_ms,
                outgoing_bytes: Arc::clone(&outgoing_bytes),
                incoming: incoming_tx.clone(),
                pending: Arc::clone(&pending),
                wake: Arc::clone(&wake),
                stats: Arc::clone(&stats),
            };
            std::thread::Builder::new()
                .name("cluster-pub".into())
                .spawn(move || publisher_thread.run(outgoing_rx))
                .map_err(|err| ClusterError::Connect(format!("cannot start a thread: {err}")))?
        };
        let names = names::Names::start(
            client.clone(),
            node,
            incarnation,
            config.lease_ms,
            command_timeout,
            Arc::clone(&wake),
            Arc::clone(&stats),
        )
        .map_err(|err| ClusterError::Connect(format!("cannot start a thread: {err}")))?;
        let ocm_rooms = ocm::OcmRooms::start(
            client.clone(),
            node,
            incarnation,
            config.lease_ms,
            command_timeout,
            Arc::clone(&wake),
            Arc::clone(&stats),
        )
        .map_err(|err| ClusterError::Connect(format!("cannot start a thread: {err}")))?;
        // The subscriber's first subscription is made on its thread (a `PubSub` borrows its
        // connection and unsubscribes when dropped, so it lives there) and reported back: an
        // unreachable Redis is still an error at start.
        let (subscribed_tx, subscribed) = mpsc::channel();
        let subscribe_thread = {
            let stats = Arc::clone(&stats);
            let stop = Arc::clone(&stop);
            let pending = Arc::clone(&pending);
            let incoming_bytes = Arc::clone(&incoming_bytes);
            let config_lease_ms = config.lease_ms;
            let own_channel = node_channel(node);
            std::thread::Builder::new()
                .name("cluster-sub".into())
                .spawn(move || {
                    let subscriber = Subscriber {
                        own_channel,
                        incoming: incoming_tx,
                        incoming_bytes: &incoming_bytes,
                        ping_every: Duration::from_millis(config_lease_ms / 4),
                        ping_timeout: command_timeout,
                        pending: &pending,
                        wake: &*wake,
                        stats: &stats,
                        stop: &stop,
                    };
                    subscriber.run(&client, subscribed_tx);
                })
                .map_err(|err| ClusterError::Connect(format!("cannot start a thread: {err}")))?
        };
        match subscribed.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                return Err(ClusterError::Connect(format!("{}: {err}", config.url)));
            }
            Err(_) => {
                return Err(ClusterError::Connect(
                    "the subscriber thread ended at start".into(),
                ))
            }
        }
        info!(
            "cluster: node {} subscribed to {LOBBY_CHANNEL} on {}",
            config.node_name, config.url
        );
        Ok(Cluster {
            node: Bytes::copy_from_slice(node),
            incarnation,
            next_seq: 1,
            outgoing: Some(outgoing),
            outgoing_bytes,
            incoming,
            incoming_bytes,
            members: liveness::Members::default(),
            lapsed_left: VecDeque::new(),
            pending,
            last_seen: HashMap::new(),
            roster_ask_due: false,
            roster_replies_due: Vec::new(),
            roster_asks: 0,
            stats,
            stop,
            threads: vec![publish_thread, subscribe_thread],
            names,
            ocm_rooms,
            lapsed_nodes: Vec::new(),
            ocm_resync_due: false,
        })
    }

    pub fn node_name(&self) -> &[u8] {
        &self.node
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// The counters, for the admin port.
    pub fn metrics(&self) -> crate::metrics::ClusterMetrics {
        let stats = &self.stats;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        crate::metrics::ClusterMetrics {
            published: load(&stats.published),
            publish_dropped: load(&stats.publish_dropped),
            received: load(&stats.received),
            duplicates: load(&stats.duplicates),
            malformed: load(&stats.malformed),
            link_down: stats.links_down.load(Ordering::Acquire) > 0,
            link_losses: load(&stats.link_losses),
            nodes_lapsed: load(&stats.nodes_lapsed),
            remote_lobby_members: self.members.count() as u64,
            rosters_received: load(&stats.rosters_received),
            roster_presences: load(&stats.roster_presences),
            ocm: self.ocm_rooms.metrics(),
        }
    }

    /// Queue a local hub event for the other nodes; never blocks. An event for one node only
    /// goes to that node's channel, the rest to the lobby's. `Direct` (a node's own
    /// deliveries) never crosses.
    pub fn publish(&mut self, event: &HubEvent) {
        if matches!(event, HubEvent::Direct(_)) {
            return;
        }
        let payload = match codec::encode(&self.node, self.incarnation, self.next_seq, event) {
            Ok(payload) => payload,
            Err(err) => {
                debug!("cluster: event not published: {err:?}");
                self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        self.next_seq += 1;
        let to = target_node(event).filter(|to| !to.is_empty()).cloned();
        self.send(to, payload);
    }

    /// To the publisher; never blocks (a full channel drops it, counted).
    fn send(&mut self, to: Option<Bytes>, payload: Bytes) {
        let Some(outgoing) = &self.outgoing else {
            return;
        };
        let len = payload.len();
        if !reserve(&self.outgoing_bytes, len, OUTGOING_BYTES_MAX) {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match outgoing.try_send((to, payload)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.outgoing_bytes.fetch_sub(len, Ordering::AcqRel);
                self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The next event from another node, not seen before, with that node's name. Own events
    /// and repeats are dropped here.
    /// The leavings of the members of nodes taken for dead come out here too, once each.
    pub fn try_recv(&mut self) -> Option<(Bytes, HubEvent)> {
        self.pending.store(false, Ordering::Release);
        loop {
            if let Some(left) = self.lapsed_left.pop_front() {
                return Some(left);
            }
            let envelope = match self.incoming.try_recv() {
                Ok(Incoming::Event(envelope, bytes)) => {
                    self.incoming_bytes.fetch_sub(bytes, Ordering::AcqRel);
                    envelope
                }
                Ok(Incoming::Live(live)) => {
                    for lapsed in self.members.on_live(&live) {
                        self.lapsed(lapsed, "its lease lapsed");
                    }
                    continue;
                }
                Ok(Incoming::Roster(roster, bytes)) => {
                    self.incoming_bytes.fetch_sub(bytes, Ordering::AcqRel);
                    self.on_roster(roster);
                    continue;
                }
                Ok(Incoming::Subscribed) => {
                    self.roster_ask_due = true;
                    // OCM `joined` events may have been missed too: the OCM service reads
                    // its rooms' members from Redis.
                    self.ocm_resync_due = true;
                    continue;
                }
                Ok(Incoming::PublisherBack) => {
                    self.roster_ask_due = true;
                    continue;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return None,
            };
            if envelope.node == self.node && envelope.incarnation == self.incarnation {
                continue;
            }
            if !accept(
                &mut self.last_seen,
                &envelope.node,
                envelope.incarnation,
                envelope.seq,
            ) {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            let node = (envelope.node, envelope.incarnation);
            if let Some(lapsed) = self.members.on_event(&node, &envelope.event) {
                self.lapsed(lapsed, "it restarted");
            }
            if self.lapsed_left.is_empty() {
                return Some((node.0, envelope.event));
            }
            // The previous incarnation's members leave before the new one's event.
            self.lapsed_left.push_back((node.0, envelope.event));
        }
    }

    fn lapsed(&mut self, lapsed: liveness::Lapsed, why: &str) {
        self.stats.nodes_lapsed.fetch_add(1, Ordering::Relaxed);
        let (name, incarnation) = &lapsed.node;
        warn!(
            "cluster: node {} (incarnation {incarnation:016x}) is gone ({why}): {} lobby members announced gone",
            String::from_utf8_lossy(name),
            lapsed.left.len()
        );
        self.lapsed_nodes.push(lapsed.node.clone());
        let node = name.clone();
        self.lapsed_left
            .extend(lapsed.left.into_iter().map(|left| (node.clone(), left)));
    }

    /// Another node's roster: this node's view of that node's lobby becomes it, and what
    /// was missed (members gone, members come) is handed to the hub like presence events,
    /// once (a roster that changes nothing announces nothing). The replies to this node's
    /// first ask, at start, are applied silently: a newcomer is not told who was already
    /// there, on one node or several. A roster that asks is answered.
    fn on_roster(&mut self, envelope: codec::RosterEnvelope) {
        let codec::RosterEnvelope {
            node,
            incarnation,
            seq,
            roster,
        } = envelope;
        if node == self.node && incarnation == self.incarnation {
            return;
        }
        if !accept(&mut self.last_seen, &node, incarnation, seq) {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.rosters_received.fetch_add(1, Ordering::Relaxed);
        if roster.asks && !self.roster_replies_due.contains(&incarnation) {
            self.roster_replies_due.push(incarnation);
        }
        let id = (node.clone(), incarnation);
        let (lapsed, changes) = self.members.reconcile(&id, &roster.members);
        if let Some(lapsed) = lapsed {
            self.lapsed(lapsed, "it restarted");
        }
        let silent = roster.reply_to == self.incarnation && self.roster_asks <= 1;
        if silent || changes.is_empty() {
            return;
        }
        info!(
            "cluster: node {}'s roster brought {} presence notices missed while a link was down",
            String::from_utf8_lossy(&node),
            changes.len()
        );
        self.stats
            .roster_presences
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        self.lapsed_left
            .extend(changes.into_iter().map(|change| (node.clone(), change)));
    }

    /// Hand an OCM room operation to the OCM rooms thread; never blocks. The op back when its
    /// queue is full.
    pub fn send_ocm_op(&mut self, op: ocm::OcmOp) -> Result<(), Box<ocm::OcmOp>> {
        self.ocm_rooms.send(op)
    }

    /// The next answer of the OCM rooms thread, if any.
    pub fn try_recv_ocm(&mut self) -> Option<ocm::OcmAnswer> {
        self.ocm_rooms.try_recv()
    }

    /// The nodes taken for dead since the last call.
    pub fn take_lapsed_nodes(&mut self) -> Vec<liveness::NodeId> {
        std::mem::take(&mut self.lapsed_nodes)
    }

    /// Whether the subscriber (re)subscribed since the last call.
    pub fn take_ocm_resync(&mut self) -> bool {
        std::mem::take(&mut self.ocm_resync_due)
    }

    /// Whether this node owes the others its roster ([`Cluster::publish_rosters`]).
    pub fn roster_due(&self) -> bool {
        self.roster_ask_due || !self.roster_replies_due.is_empty()
    }

    /// Publish the rosters owed, of this node's lobby `members` (the hub's, now: after every
    /// event of it already queued, so the others read it at the right point of this node's
    /// sequence). A lobby too large for one roster is not sent (logged).
    pub fn publish_rosters(&mut self, members: Vec<(crate::hub::ProtocolKind, Bytes, u32)>) {
        let members: Vec<codec::RosterEntry> = members
            .into_iter()
            .map(|(origin, name, count)| codec::RosterEntry {
                origin,
                name,
                count,
            })
            .collect();
        let mut due: Vec<(u64, bool)> = std::mem::take(&mut self.roster_replies_due)
            .into_iter()
            .map(|reply_to| (reply_to, false))
            .collect();
        if std::mem::take(&mut self.roster_ask_due) {
            self.roster_asks += 1;
            due.push((0, true));
        }
        for (reply_to, asks) in due {
            let roster = codec::Roster {
                reply_to,
                asks,
                members: members.clone(),
            };
            match codec::encode_roster(&self.node, self.incarnation, self.next_seq, &roster) {
                Ok(payload) => {
                    self.next_seq += 1;
                    self.send(None, payload);
                }
                Err(err) => {
                    warn!(
                        "cluster: roster of {} lobby members not published: {err:?}",
                        members.len()
                    );
                    self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Stop the threads (the publisher after sending what is queued).
    pub fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.outgoing = None;
        self.names.shut_down();
        self.ocm_rooms.shut_down();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                warn!("cluster: a Redis thread panicked");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Count `len` more bytes into `queued` once that no longer passes `max` (or `queued` is
/// empty: a message larger than `max` alone still passes), looking every `pause`; false if
/// `stop` is set first. Only the subscriber adds, so the check and the add need not be one
/// atomic step.
fn wait_for_room(
    queued: &AtomicUsize,
    len: usize,
    max: usize,
    stop: &AtomicBool,
    pause: Duration,
) -> bool {
    loop {
        let now = queued.load(Ordering::Acquire);
        if now == 0 || now.saturating_add(len) <= max {
            queued.fetch_add(len, Ordering::AcqRel);
            return true;
        }
        if stop.load(Ordering::Acquire) {
            return false;
        }
        std::thread::sleep(pause);
    }
}

/// Count `len` more bytes into `queued` unless that would pass `max` (only the reactor adds,
/// so the check and the add need not be one atomic step).
fn reserve(queued: &AtomicUsize, len: usize, max: usize) -> bool {
    if queued.load(Ordering::Acquire).saturating_add(len) > max {
        return false;
    }
    queued.fetch_add(len, Ordering::AcqRel);
    true
}

/// What a test hands a [`Cluster`] made by [`Cluster::detached`], as the Redis threads would.
#[cfg(test)]
pub(crate) struct TestFeed(mpsc::Sender<Incoming>);

#[cfg(test)]
impl TestFeed {
    /// An event on the lobby channel, as the subscriber hands it over.
    pub(crate) fn event(&self, envelope: Envelope) {
        let _ = self.0.send(Incoming::Event(envelope, 0));
    }

    pub(crate) fn roster(&self, roster: codec::RosterEnvelope) {
        let _ = self.0.send(Incoming::Roster(roster, 0));
    }

    /// The subscriber (re)subscribed.
    pub(crate) fn subscribed(&self) {
        let _ = self.0.send(Incoming::Subscribed);
    }
}

#[cfg(test)]
impl Cluster {
    /// A node named `node` with no Redis and no thread: what it receives comes from the
    /// returned feed, and what it publishes goes nowhere.
    pub(crate) fn detached(node: &'static [u8]) -> (Cluster, TestFeed) {
        let (feed, incoming) = mpsc::channel();
        let cluster = Cluster {
            node: Bytes::from_static(node),
            incarnation: 1,
            next_seq: 1,
            outgoing: None,
            outgoing_bytes: Arc::new(AtomicUsize::new(0)),
            incoming,
            incoming_bytes: Arc::new(AtomicUsize::new(0)),
            members: liveness::Members::default(),
            lapsed_left: VecDeque::new(),
            pending: Arc::new(AtomicBool::new(false)),
            last_seen: HashMap::new(),
            roster_ask_due: false,
            roster_replies_due: Vec::new(),
            roster_asks: 0,
            stats: Arc::new(ClusterStats::default()),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            names: names::Names::detached(),
            ocm_rooms: ocm::OcmRooms::detached(),
            lapsed_nodes: Vec::new(),
            ocm_resync_due: false,
        };
        (cluster, TestFeed(feed))
    }
}

/// Whether message `seq` of `node`'s `incarnation` is newer than anything seen from that
/// node (a new incarnation starts afresh); if so, it is the last seen now.
fn accept(
    last_seen: &mut HashMap<Bytes, (u64, u64)>,
    node: &Bytes,
    incarnation: u64,
    seq: u64,
) -> bool {
    match last_seen.get_mut(node) {
        Some((known, last)) if *known == incarnation => {
            if seq <= *last {
                return false;
            }
            *last = seq;
        }
        Some(entry) => *entry = (incarnation, seq),
        None => {
            last_seen.insert(node.clone(), (incarnation, seq));
        }
    }
    true
}

/// The publishing connection, with deadlines: a Redis that stalls (stopped, or its host
/// gone) is a lost link after `timeout`, not a thread blocked for ever (the reactor would not
/// block either way: it only ever `try_send`s to this thread).
fn publisher_connection(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// Sets this node's liveness key for one more lease, and lists the live nodes' keys.
fn renew_and_list(
    conn: &mut redis::Connection,
    key: &[u8],
    lease_ms: u64,
) -> redis::RedisResult<Vec<liveness::NodeId>> {
    redis::cmd("SET")
        .arg(key)
        .arg(1)
        .arg("PX")
        .arg(liveness::LeaseSchedule::key_expiry_ms(lease_ms))
        .query::<()>(conn)?;
    let pattern = format!("{}*", liveness::NODE_KEY_PREFIX);
    let mut live = Vec::new();
    let mut cursor: u64 = 0;
    // SCAN rather than KEYS: it does not hold Redis for the whole key space.
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)?;
        live.extend(keys.iter().filter_map(|key| liveness::parse_node_key(key)));
        if next == 0 {
            return Ok(live);
        }
        cursor = next;
    }
}

/// The publisher thread: publishes the reactor's events, renews this node's lease and hands
/// the list of live nodes back.
struct Publisher {
    client: redis::Client,
    conn: Option<redis::Connection>,
    command_timeout: Duration,
    key: Vec<u8>,
    lease_ms: u64,
    outgoing_bytes: Arc<AtomicUsize>,
    incoming: mpsc::Sender<Incoming>,
    pending: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
    stats: Arc<ClusterStats>,
}

impl Publisher {
    fn run(mut self, outgoing: Receiver<Outgoing>) {
        let started = Instant::now();
        let now_ms = || started.elapsed().as_millis() as u64;
        let mut schedule = liveness::LeaseSchedule::new(self.lease_ms, now_ms());
        // Whether a link was lost since the last renewal: another node's key may have vanished
        // with Redis meanwhile, so the next lists are not news for a while.
        let mut lost = false;
        let mut down_since: Option<Instant> = None;
        let mut delay = Duration::from_millis(50);
        loop {
            let wait = Duration::from_millis(schedule.wait_ms(now_ms()));
            let batch = match outgoing.recv_timeout(wait) {
                Ok(first) => {
                    let mut bytes = first.1.len();
                    let mut batch = vec![first];
                    while batch.len() < 1024 && bytes < PIPELINE_BYTES_MAX {
                        match outgoing.try_recv() {
                            Ok(outgoing) => {
                                bytes += outgoing.1.len();
                                batch.push(outgoing);
                            }
                            Err(_) => break,
                        }
                    }
                    // Out of the channel: published or dropped, no longer waiting.
                    self.outgoing_bytes.fetch_sub(bytes, Ordering::AcqRel);
                    Some(batch)
                }
                Err(RecvTimeoutError::Timeout) => None,
                // The reactor's side is dropped and everything queued was taken.
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(batch) = batch {
                if self.publish(&batch, &mut down_since, &mut lost) {
                    delay = Duration::from_millis(50);
                } else {
                    // What waits meanwhile is bounded by the channel.
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(RECONNECT_DELAY_MAX);
                }
            }
            if std::mem::take(&mut lost) {
                schedule.lost();
            }
            if schedule.due(now_ms()) {
                self.renew(&mut schedule, now_ms(), &mut down_since);
            }
        }
        // A clean stop: the other nodes need not wait for the lease.
        if let Some(conn) = self.conn.as_mut() {
            let _ = redis::cmd("DEL").arg(&self.key).query::<()>(conn);
        }
    }

    /// A lost connection is retried once on a fresh one; a second failure drops the batch
    /// (counted), and the caller waits before the next, so a Redis that refuses PUBLISH (or
    /// is gone) costs a connect attempt per delay, not a busy loop.
    fn publish(
        &mut self,
        batch: &[Outgoing],
        down_since: &mut Option<Instant>,
        lost: &mut bool,
    ) -> bool {
        for _attempt in 0..2 {
            let Some(link) = self.link() else {
                break;
            };
            let mut pipe = redis::pipe();
            for (to, payload) in batch {
                let cmd = pipe.cmd("PUBLISH");
                match to {
                    Some(node) => cmd.arg(node_channel(node)),
                    None => cmd.arg(LOBBY_CHANNEL),
                };
                cmd.arg(&payload[..]).ignore();
            }
            match pipe.query::<()>(link) {
                Ok(()) => {
                    self.stats
                        .published
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if let Some(since) = down_since.take() {
                        self.back(since);
                    }
                    return true;
                }
                Err(err) => {
                    self.conn = None;
                    *lost = true;
                    if down_since.is_none() {
                        *down_since = Some(Instant::now());
                        link_down(&self.stats, "publisher", &err);
                    }
                }
            }
        }
        *lost = true;
        self.stats
            .publish_dropped
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        false
    }

    /// The link is back after it was lost at `since`: what this node published meanwhile was
    /// dropped, so the reactor sends its roster (and asks for the others').
    fn back(&self, since: Instant) {
        link_up(&self.stats, "publisher", since);
        if self.incoming.send(Incoming::PublisherBack).is_ok()
            && !self.pending.swap(true, Ordering::AcqRel)
        {
            (self.wake)();
        }
    }

    /// The connection, opened again if it was lost.
    fn link(&mut self) -> Option<&mut redis::Connection> {
        if self.conn.is_none() {
            match publisher_connection(&self.client, self.command_timeout) {
                Ok(fresh) => self.conn = Some(fresh),
                Err(err) => debug!("cluster: publisher reconnect failed: {err}"),
            }
        }
        self.conn.as_mut()
    }

    fn renew(
        &mut self,
        schedule: &mut liveness::LeaseSchedule,
        now_ms: u64,
        down_since: &mut Option<Instant>,
    ) {
        let (key, lease_ms) = (self.key.clone(), self.lease_ms);
        // A connection found broken (Redis restarted since the last command) is replaced at
        // once: the key is set again now, not a quarter lease later.
        let had_link = self.conn.is_some();
        let mut result = match self.link() {
            Some(link) => renew_and_list(link, &key, lease_ms),
            None => {
                schedule.failed(now_ms);
                return;
            }
        };
        if result.is_err() && had_link {
            schedule.lost();
            self.conn = None;
            if let Some(link) = self.link() {
                result = renew_and_list(link, &key, lease_ms);
            }
        }
        match result {
            Ok(live) => {
                if let Some(since) = down_since.take() {
                    self.back(since);
                }
                // Right after Redis returns, other nodes may not have set their keys again:
                // their absence would be no news.
                if schedule.renewed(now_ms)
                    && self.incoming.send(Incoming::Live(live)).is_ok()
                    && !self.pending.swap(true, Ordering::AcqRel)
                {
                    (self.wake)();
                }
            }
            Err(err) => {
                self.conn = None;
                schedule.failed(now_ms);
                if down_since.is_none() {
                    *down_since = Some(Instant::now());
                    link_down(&self.stats, "publisher", &err);
                }
            }
        }
    }
}

/// The subscriber thread's state: what it hands events to, and the shared flags.
struct Subscriber<'a> {
    /// This node's own channel ([`node_channel`]), subscribed with the lobby's on the same
    /// connection: Redis writes one publisher's messages to it in the order it published them,
    /// whichever of the two channels each went to, so a node's events stay in order.
    own_channel: Vec<u8>,
    incoming: mpsc::Sender<Incoming>,
    /// Bytes handed over and not yet taken by the reactor ([`INCOMING_BYTES_MAX`]).
    incoming_bytes: &'a AtomicUsize,
    /// How often a quiet subscription asks Redis whether it is there, and how long the answer
    /// may take: a stalled Redis (SIGSTOP) sends no error, only silence.
    ping_every: Duration,
    ping_timeout: Duration,
    pending: &'a AtomicBool,
    wake: &'a dyn Fn(),
    stats: &'a ClusterStats,
    stop: &'a AtomicBool,
}

/// How a subscribed connection ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl Subscriber<'_> {
    /// Subscribe (the first outcome goes to `started`), read until the link is lost, and
    /// subscribe again, with a growing delay, until told to stop.
    fn run(&self, client: &redis::Client, started: mpsc::Sender<redis::RedisResult<()>>) {
        let mut started = Some(started);
        let mut down_since: Option<Instant> = None;
        let mut delay = Duration::from_millis(50);
        while !self.stop.load(Ordering::Acquire) {
            let mut conn = match client.get_connection_with_timeout(CONNECT_TIMEOUT) {
                Ok(conn) => conn,
                Err(err) => {
                    if let Some(started) = started.take() {
                        let _ = started.send(Err(err));
                        return;
                    }
                    debug!("cluster: subscriber reconnect failed: {err}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(RECONNECT_DELAY_MAX);
                    continue;
                }
            };
            let mut pubsub = conn.as_pubsub();
            let subscribed = pubsub
                .set_read_timeout(Some(self.read_timeout()))
                .and_then(|()| pubsub.subscribe(LOBBY_CHANNEL))
                .and_then(|()| pubsub.subscribe(&self.own_channel[..]));
            if let Err(err) = subscribed {
                if let Some(started) = started.take() {
                    let _ = started.send(Err(err));
                    return;
                }
                debug!("cluster: subscriber resubscribe failed: {err}");
                std::thread::sleep(delay);
                delay = (delay * 2).min(RECONNECT_DELAY_MAX);
                continue;
            }
            if let Some(started) = started.take() {
                if started.send(Ok(())).is_err() {
                    return;
                }
            }
            if let Some(since) = down_since.take() {
                link_up(self.stats, "subscriber", since);
            }
            // Events may have been missed while the link was down (or before it was made):
            // the reactor asks the other nodes for their rosters.
            if self.incoming.send(Incoming::Subscribed).is_err() {
                return;
            }
            if !self.pending.swap(true, Ordering::AcqRel) {
                (self.wake)();
            }
            delay = Duration::from_millis(50);
            match self.read(&mut pubsub) {
                Ended::Stopped => return,
                Ended::Lost(err) => {
                    down_since = Some(Instant::now());
                    link_down(self.stats, "subscriber", &err);
                }
            }
        }
    }

    fn read(&self, pubsub: &mut redis::PubSub<'_>) -> Ended {
        let mut heard = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(err) if err.is_timeout() => {
                    if heard.elapsed() >= self.ping_every {
                        if let Err(lost) = self.ping(pubsub, heard) {
                            return lost;
                        }
                        heard = Instant::now();
                    }
                    continue;
                }
                Err(err) => return Ended::Lost(err.to_string()),
            };
            heard = Instant::now();
            let payload: Vec<u8> = match message.get_payload() {
                Ok(payload) => payload,
                Err(_) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let bytes = payload.len();
            match codec::decode_message(Bytes::from(payload)) {
                Ok(message) => {
                    // Held back while the reactor has too much to take: Redis keeps the rest.
                    if !wait_for_room(
                        self.incoming_bytes,
                        bytes,
                        INCOMING_BYTES_MAX,
                        self.stop,
                        INCOMING_PAUSE,
                    ) {
                        return Ended::Stopped;
                    }
                    let incoming = match message {
                        codec::Message::Event(envelope) => Incoming::Event(envelope, bytes),
                        codec::Message::Roster(roster) => Incoming::Roster(roster, bytes),
                    };
                    if self.incoming.send(incoming).is_err() {
                        return Ended::Stopped;
                    }
                    if !self.pending.swap(true, Ordering::AcqRel) {
                        (self.wake)();
                    }
                }
                Err(err) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    debug!("cluster: malformed message on {LOBBY_CHANNEL}: {err}");
                }
            }
        }
        Ended::Stopped
    }

    /// A quiet subscription: is Redis still there? No answer within `ping_timeout` is a lost
    /// link (the connection is dropped: a late reply would be out of step).
    fn ping(&self, pubsub: &mut redis::PubSub<'_>, heard: Instant) -> Result<(), Ended> {
        let asked = pubsub
            .set_read_timeout(Some(self.ping_timeout))
            .and_then(|()| pubsub.ping::<()>())
            .and_then(|()| pubsub.set_read_timeout(Some(self.read_timeout())));
        asked.map_err(|err| {
            Ended::Lost(format!(
                "no answer to PING within {} ms ({err}); last heard from Redis {} ms ago",
                self.ping_timeout.as_millis(),
                heard.elapsed().as_millis()
            ))
        })
    }

    fn read_timeout(&self) -> Duration {
        READ_TIMEOUT.min(self.ping_every)
    }
}

fn link_down(stats: &ClusterStats, which: &str, err: &dyn std::fmt::Display) {
    stats.links_down.fetch_add(1, Ordering::AcqRel);
    stats.link_losses.fetch_add(1, Ordering::Relaxed);
    warn!(
        "cluster: the {which}'s link to Redis is down ({err}); serving local users, reconnecting"
    );
}

fn link_up(stats: &ClusterStats, which: &str, since: Instant) {
    stats.links_down.fetch_sub(1, Ordering::AcqRel);
    info!(
        "cluster: the {which}'s link to Redis is back after {} ms",
        since.elapsed().as_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{LobbyMessage, ProtocolKind};

    fn envelope(node: &'static [u8], incarnation: u64, seq: u64) -> Envelope {
        Envelope {
            node: Bytes::from_static(node),
            incarnation,
            seq,
            event: HubEvent::Said(LobbyMessage {
                origin: ProtocolKind::Room,
                sender: Bytes::from_static(b"a"),
                text: Bytes::from_static(b"b"),
            }),
        }
    }

    #[test]
    fn an_event_is_accepted_once_per_node_in_order_and_a_new_incarnation_starts_afresh() {
        let mut seen = HashMap::new();
        let accept = |seen: &mut HashMap<Bytes, (u64, u64)>, e: &Envelope| {
            accept(seen, &e.node, e.incarnation, e.seq)
        };
        assert!(accept(&mut seen, &envelope(b"a", 1, 1)));
        assert!(!accept(&mut seen, &envelope(b"a", 1, 1)));
        assert!(accept(&mut seen, &envelope(b"b", 9, 1)));
        assert!(accept(&mut seen, &envelope(b"a", 1, 3)));
        assert!(!accept(&mut seen, &envelope(b"a", 1, 2)));
        // Restarted under the same name: its numbers start again.
        assert!(accept(&mut seen, &envelope(b"a", 2, 1)));
        assert!(!accept(&mut seen, &envelope(b"a", 2, 1)));
    }

    fn roster_from(
        node: &'static [u8],
        seq: u64,
        reply_to: u64,
        asks: bool,
        names: &[&'static str],
    ) -> codec::RosterEnvelope {
        codec::RosterEnvelope {
            node: Bytes::from_static(node),
            incarnation: 9,
            seq,
            roster: codec::Roster {
                reply_to,
                asks,
                members: names
                    .iter()
                    .map(|name| codec::RosterEntry {
                        origin: ProtocolKind::Room,
                        name: Bytes::from_static(name.as_bytes()),
                        count: 1,
                    })
                    .collect(),
            },
        }
    }

    fn presence(kind: crate::hub::PresenceKind, name: &'static str) -> (Bytes, HubEvent) {
        (
            Bytes::from_static(b"b"),
            HubEvent::Presence(crate::hub::Presence {
                origin: ProtocolKind::Room,
                name: Bytes::from_static(name.as_bytes()),
                kind,
            }),
        )
    }

    #[test]
    fn rosters_are_asked_for_after_each_subscription_and_bring_what_was_missed_once() {
        use crate::hub::PresenceKind::{Entered, Left};
        let (mut cluster, feed) = Cluster::detached(b"a");
        // Subscribed at start: this node asks for the others' rosters.
        feed.subscribed();
        assert_eq!(cluster.try_recv(), None);
        assert!(cluster.roster_due());
        cluster.publish_rosters(vec![]);
        assert!(!cluster.roster_due());
        // The answer to that first ask is this node's starting view: nothing announced (a
        // newcomer is not told who was there already).
        feed.roster(roster_from(b"b", 1, cluster.incarnation, false, &["rob"]));
        assert_eq!(cluster.try_recv(), None);
        assert_eq!(cluster.members.count(), 1);

        // The link was lost and made again: ask again; the answer brings what was missed.
        feed.subscribed();
        assert_eq!(cluster.try_recv(), None);
        cluster.publish_rosters(vec![]);
        feed.roster(roster_from(b"b", 4, cluster.incarnation, false, &["ray"]));
        assert_eq!(cluster.try_recv(), Some(presence(Left, "rob")));
        assert_eq!(cluster.try_recv(), Some(presence(Entered, "ray")));
        assert_eq!(cluster.try_recv(), None);
        // The same lobby again (b asked the others itself, seq 5): nothing twice; b asked,
        // so this node owes it a reply.
        feed.roster(roster_from(b"b", 5, 0, true, &["ray"]));
        assert_eq!(cluster.try_recv(), None);
        assert!(cluster.roster_due());
        // A roster not newer than the last seen from b is dropped.
        feed.roster(roster_from(b"b", 4, 0, false, &[]));
        assert_eq!(cluster.try_recv(), None);
        assert_eq!(cluster.members.count(), 1);
        assert_eq!(cluster.stats.rosters_received.load(Ordering::Relaxed), 3);
        assert_eq!(cluster.stats.roster_presences.load(Ordering::Relaxed), 2);
        // This node's own roster, echoed by Redis, is ignored.
        let mut own = roster_from(b"a", 1, 0, true, &[]);
        own.incarnation = cluster.incarnation;
        feed.roster(own);
        assert_eq!(cluster.try_recv(), None);
        assert_eq!(cluster.stats.rosters_received.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_subscriber_waits_for_room_and_gives_up_when_told_to_stop() {
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = AtomicBool::new(false);
        let pause = Duration::from_millis(1);
        // Empty: even a message over the bound passes (alone).
        assert!(wait_for_room(&queued, 2000, 1000, &stop, pause));
        queued.store(900, Ordering::Release);
        assert!(
            wait_for_room(&queued, 100, 1000, &stop, pause),
            "exactly the bound"
        );
        // Full: it waits until the reactor takes some.
        let taker = {
            let queued = Arc::clone(&queued);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                queued.fetch_sub(500, Ordering::AcqRel);
            })
        };
        assert!(wait_for_room(&queued, 400, 1000, &stop, pause));
        taker.join().unwrap();
        assert_eq!(queued.load(Ordering::Acquire), 900);
        // Told to stop while full: it gives up, counting nothing.
        stop.store(true, Ordering::Release);
        assert!(!wait_for_room(&queued, 200, 1000, &stop, pause));
        assert_eq!(queued.load(Ordering::Acquire), 900);
    }

    #[test]
    fn waiting_bytes_are_bounded_whatever_the_event_count() {
        let queued = AtomicUsize::new(0);
        assert!(reserve(&queued, 600, 1000));
        assert!(!reserve(&queued, 401, 1000), "over the bound");
        assert!(reserve(&queued, 400, 1000), "exactly the bound");
        assert_eq!(queued.load(Ordering::Acquire), 1000);
        // The publisher takes a batch off: room again.
        queued.fetch_sub(600, Ordering::AcqRel);
        assert!(reserve(&queued, 600, 1000));
        assert!(!reserve(&queued, 1, 1000));
    }

    #[test]
    fn a_default_node_name_fits_and_differs_per_call() {
        let a = default_node_name();
        let b = default_node_name();
        assert!(!a.is_empty() && a.len() <= codec::NODE_NAME_BYTES_MAX);
        assert_ne!(a, b);
    }
}
