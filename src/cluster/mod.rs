//! Cluster mode (`--cluster redis://HOST:PORT[/DB]`): several chatd nodes share one lobby
//! through Redis pub/sub (issue 20; docs/CLUSTER.md).
//!
//! The reactor never waits for Redis, and no thread stands between it and Redis for an
//! event (`pubsub`): it writes its PUBLISHes itself, pipelined, at the end of each loop turn,
//! on a non-blocking connection in its own poll (what waits is bounded in bytes: beyond, an
//! event is dropped and counted, so a cut-off Redis cannot grow memory without bound), and
//! reads the subscription to the lobby's channel and its own on a second one, within its
//! budget of remote events per turn. One publishing connection per node keeps each node's
//! events in order.
//!
//! Every event carries its node's name, an incarnation (random per process, so a node
//! restarted under the same name starts afresh) and a sequence number: [`Cluster::try_recv`]
//! drops this node's own events (Redis echoes them to its subscriber) and anything not newer
//! than the last seen from that node, so nothing is delivered twice.
//!
//! Liveness (`liveness`): the lease thread renews this node's key with a Redis expiry every
//! quarter lease and lists the other nodes' keys; the reactor's side keeps which remote lobby
//! members belong to which node and, when a node's key is gone (or it restarted), hands the
//! hub their leaving, once. The subscription PINGs a quiet Redis with a deadline, and every
//! PUBLISH has one, so a frozen Redis is a lost link, not silence for ever.

pub mod codec;
mod link;
pub mod liveness;
pub mod names;
pub mod ocm;
pub mod offline;
// Public only for the `cluster_resp` fuzz target (fuzz/ is a crate of its own), which drives
// the sans-io PubLink and SubLink with parsed replies; not an API.
#[doc(hidden)]
pub mod pubsub;
mod resolve;
pub mod resp;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
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

/// The node a hub event is for, when only one node acts on it.
fn target_node(event: &HubEvent) -> Option<&Bytes> {
    match event {
        HubEvent::Addressed(addressed) => Some(&addressed.to_node),
        HubEvent::Private(link) => Some(&link.to_node),
        HubEvent::Bin24(relay) => Some(&relay.to_node),
        HubEvent::Said(_) | HubEvent::Presence(_) | HubEvent::Direct(_) | HubEvent::Ocm(_) => None,
    }
}
/// Bytes of PUBLISH commands waiting to be written to Redis (while the link is down, or
/// Redis reads slowly); beyond this an event is dropped (and counted). A lobby text may be
/// 1 MiB: counted in events alone, a cut-off Redis could hold 64 GiB here. Other nodes'
/// messages are read from the subscription only as the reactor takes them (one message and
/// one read at a time): Redis holds the rest, up to its own limit for a subscriber's output,
/// past which it drops the connection (the link is made again, and the rosters bring back
/// the presence missed).
pub const OUTGOING_BYTES_MAX: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a Redis command may take before its link is taken for lost (a quarter lease
/// when that is shorter: a stalled Redis must be noticed within the lease).
const COMMAND_TIMEOUT_MAX: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT_MIN: Duration = Duration::from_millis(50);
/// Default `--cluster-lease-ms`.
pub const LEASE_MS_DEFAULT: u64 = 3000;
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// Default `--cluster-roster-bytes-max`: half of Redis's default hard limit for a subscriber's
/// output (`client-output-buffer-limit pubsub 32mb`). Redis drops a subscriber as soon as one
/// message would pass that limit, and a roster goes to every node, its own included: one over
/// it would drop every subscription, and each resubscription would ask for it again, for ever.
pub const ROSTER_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// This node's name (`--node-name`), at most [`codec::NODE_NAME_BYTES_MAX`] bytes.
    pub node_name: String,
    /// `--cluster-lease-ms`: a node silent this long (its liveness key not renewed) is taken
    /// for dead, and its lobby members are announced gone.
    pub lease_ms: u64,
    /// `--cluster-roster-bytes-max`: a roster encoded larger than this is not published.
    pub roster_bytes_max: usize,
}

impl ClusterConfig {
    pub(crate) fn command_timeout(&self) -> Duration {
        (Duration::from_millis(self.lease_ms) / 4).clamp(COMMAND_TIMEOUT_MIN, COMMAND_TIMEOUT_MAX)
    }
}

/// What the subscription and the lease thread bring the reactor's side.
#[derive(Debug)]
enum Incoming {
    /// An event on the lobby channel or this node's own (the subscription).
    Event(Envelope),
    /// The nodes whose liveness keys exist now (the lease thread, at a renewal).
    Live(Vec<liveness::NodeId>),
    /// Another node's lobby roster (the subscription).
    Roster(codec::RosterEnvelope),
    /// The subscription is made again after a lost link: events of other nodes may have been
    /// missed meanwhile.
    Subscribed,
    /// Redis's host name now gives these addresses (the lease thread, while a link is down):
    /// the reactor's links connect there from their next attempt.
    RedisAddrs(Vec<SocketAddr>),
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
    /// Events dropped before publishing: the output waiting for Redis was full (Redis cut off
    /// or too slow), or a publish failed (written but not answered when the link was lost,
    /// or refused by Redis).
    pub publish_dropped: AtomicU64,
    /// Events of other nodes handed to the hub.
    pub received: AtomicU64,
    /// Events not newer than the last one seen from their node (not delivered again).
    pub duplicates: AtomicU64,
    /// Messages on the channel that did not decode.
    pub malformed: AtomicU64,
    /// Redis connections down now (of five: the reactor's publisher and subscriber, the
    /// lease, names and OCM rooms threads').
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
    /// The reactor's two Redis links (none in unit tests: [`Cluster::detached`]).
    links: Option<pubsub::Links>,
    /// `--cluster-roster-bytes-max`.
    roster_bytes_max: usize,
    /// The reactor's clock at the start of this turn ([`Cluster::set_now_ms`]).
    now_ms: u64,
    /// The lease thread's live lists (and, in unit tests, what [`TestFeed`] hands over).
    incoming: Receiver<Incoming>,
    /// Each other node's lobby members, to announce them gone when it dies.
    members: liveness::Members,
    /// Presences this node made up for other nodes (with the node's name), handed out before
    /// anything else: the leavings of lapsed nodes' members, and what rosters showed missed.
    lapsed_left: VecDeque<(Bytes, HubEvent)>,
    /// Set by the lease thread when it queued something and woke the reactor; cleared before
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
    command_timeout: Duration,
    /// Dropped to stop the lease thread (at once, whatever it waits for).
    stop_lease: Option<mpsc::Sender<()>>,
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
    /// The subscription was made again after a lost link: other nodes' BIN24 `Stored` notices
    /// may have been missed, so BIN24's online users' stores are read again.
    bin24_recheck_due: bool,
}

/// The tokens of the reactor's two Redis links in its poll: events on them only make the
/// loop turn (the cluster's work runs every turn).
#[derive(Clone, Copy, Debug)]
pub struct LinkTokens {
    pub publisher: mio::Token,
    pub subscriber: mio::Token,
}

impl Cluster {
    /// Connect to Redis and subscribe, before the reactor starts: an unreachable Redis is an
    /// error here (chatd exits non-zero). The publishing and subscription links are then
    /// registered in the reactor's poll (`registry`, under `tokens`) and driven by it
    /// ([`Cluster::flush`]); the other threads' connections reconnect on their own.
    pub fn connect(
        config: &ClusterConfig,
        wake: Arc<dyn Fn() + Send + Sync>,
        registry: &mio::Registry,
        tokens: LinkTokens,
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
        let info = client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = &info.addr else {
            return Err(ClusterError::Url(
                "redis://HOST:PORT[/DB] only (TCP, no TLS nor Unix socket)".into(),
            ));
        };
        let auth = pubsub::auth_command(&info.redis);
        let unreachable =
            |err: &dyn std::fmt::Display| ClusterError::Connect(format!("{}: {err}", config.url));
        // Resolved here for the start; the reactor reconnects without a (blocking) look-up, to
        // the addresses the lease thread looks up again while a link is down (`resolve`).
        let addrs = resolve::lookup(host, *port).map_err(|err| unreachable(&err))?;
        let redis_host = resolve::RedisHost::new(host, *port, &addrs);
        let command_timeout = config.command_timeout();
        let timeout_ms = command_timeout.as_millis() as u64;
        let incarnation = random_u64();
        let key = liveness::node_key(node, incarnation);
        let mut lease_conn =
            lease_connection(&client, command_timeout).map_err(|err| unreachable(&err))?;
        // The key exists before this node publishes anything: a node that lists the live
        // nodes after receiving this node's first event finds it.
        let first_live = renew_and_list(&mut lease_conn, &key, config.lease_ms)
            .map_err(|err| unreachable(&err))?;
        let stats = Arc::new(ClusterStats::default());
        let pending = Arc::new(AtomicBool::new(false));
        let (incoming_tx, incoming) = mpsc::channel();
        let _ = incoming_tx.send(Incoming::Live(first_live));
        let (stop_lease, stop_rx) = mpsc::channel();
        let lease_thread = {
            let lease = Lease {
                client: client.clone(),
                conn: Some(lease_conn),
                command_timeout,
                key,
                lease_ms: config.lease_ms,
                redis_host,
                incoming: incoming_tx,
                pending: Arc::clone(&pending),
                wake: Arc::clone(&wake),
                stats: Arc::clone(&stats),
            };
            std::thread::Builder::new()
                .name("cluster-lease".into())
                .spawn(move || lease.run(stop_rx))
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
        let register = |stream, input, token| {
            let registry = registry.try_clone()?;
            pubsub::Socket::from_std(stream, addrs.clone(), registry, token, input)
        };
        let (publisher, pub_socket) = {
            let mut link = pubsub::PubLink::new(timeout_ms, OUTGOING_BYTES_MAX, auth.clone())
                .with_stale_ms(config.lease_ms / 2);
            let (stream, input) =
                start_publisher(&addrs, &mut link).map_err(|err| unreachable(&err))?;
            let socket =
                register(stream, input, tokens.publisher).map_err(|err| unreachable(&err))?;
            (link, socket)
        };
        let (subscriber, sub_socket) = {
            let own_channel = node_channel(node);
            let channels: [&[u8]; 2] = [LOBBY_CHANNEL.as_bytes(), &own_channel];
            let ping_every_ms = config.lease_ms / 4;
            let mut link = pubsub::SubLink::new(timeout_ms, ping_every_ms, &channels, auth);
            let (stream, input) =
                start_subscriber(&addrs, &mut link).map_err(|err| unreachable(&err))?;
            let socket =
                register(stream, input, tokens.subscriber).map_err(|err| unreachable(&err))?;
            (link, socket)
        };
        info!(
            "cluster: node {} subscribed to {LOBBY_CHANNEL} on {}",
            config.node_name, config.url
        );
        Ok(Cluster {
            node: Bytes::copy_from_slice(node),
            incarnation,
            next_seq: 1,
            links: Some(pubsub::Links::new(
                publisher, pub_socket, subscriber, sub_socket,
            )),
            roster_bytes_max: config.roster_bytes_max,
            now_ms: 0,
            incoming,
            members: liveness::Members::default(),
            lapsed_left: VecDeque::new(),
            pending,
            last_seen: HashMap::new(),
            // Subscribed: this node asks the others for their rosters, and the OCM service
            // reads its rooms' members.
            roster_ask_due: true,
            roster_replies_due: Vec::new(),
            roster_asks: 0,
            stats,
            command_timeout,
            stop_lease: Some(stop_lease),
            threads: vec![lease_thread],
            names,
            ocm_rooms,
            lapsed_nodes: Vec::new(),
            ocm_resync_due: true,
            bin24_recheck_due: false,
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

    /// Queued for the publishing link (written at the end of the turn, [`Cluster::flush`]);
    /// never blocks (beyond [`OUTGOING_BYTES_MAX`] waiting, dropped and counted).
    fn send(&mut self, to: Option<Bytes>, payload: Bytes) {
        let Some(links) = self.links.as_mut() else {
            return;
        };
        let queued = match to {
            Some(node) => links.publisher.publish(&node_channel(&node), &payload),
            None => links.publisher.publish(LOBBY_CHANNEL.as_bytes(), &payload),
        };
        if !queued {
            self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A link's socket signalled readiness (edge-triggered): its sockets are read until they
    /// have nothing more; until then, and after, a turn about something else reads nothing.
    pub fn on_link_event(&mut self) {
        if let Some(links) = self.links.as_mut() {
            links.on_event();
        }
    }

    /// The reactor's clock (ms) at the start of this turn, for the subscription's deadlines.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// The end of a reactor turn: this turn's PUBLISHes written, replies read, deadlines
    /// looked at, links made again when due.
    pub fn flush(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let Some(links) = self.links.as_mut() else {
            return;
        };
        if links.turn(now_ms, &self.stats).publisher_back {
            // What this node published while the link was down was dropped: its roster
            // tells the others (and asks for theirs).
            self.roster_ask_due = true;
        }
    }

    /// When the links need the reactor next (a reply's or PING's deadline, a PING due, a
    /// reconnect); now when a roster is owed (published in the next turn's `on_cluster`).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.roster_due() {
            return Some(self.now_ms);
        }
        self.links
            .as_ref()
            .and_then(pubsub::Links::next_deadline_ms)
    }

    /// The next message or news of the subscription, decoded; `None` when there is nothing
    /// more to read now.
    fn next_from_subscription(&mut self) -> Option<Incoming> {
        let links = self.links.as_mut()?;
        loop {
            match links.next_push(self.now_ms, &self.stats)? {
                pubsub::SubPush::Message(payload) => match codec::decode_message(payload) {
                    Ok(codec::Message::Event(envelope)) => return Some(Incoming::Event(envelope)),
                    Ok(codec::Message::Roster(roster)) => return Some(Incoming::Roster(roster)),
                    Err(err) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        debug!("cluster: malformed message on {LOBBY_CHANNEL}: {err}");
                    }
                },
                pubsub::SubPush::Subscribed => return Some(Incoming::Subscribed),
                pubsub::SubPush::Nothing => {}
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
            let incoming = match self.incoming.try_recv() {
                Ok(incoming) => incoming,
                Err(_) => self.next_from_subscription()?,
            };
            let envelope = match incoming {
                Incoming::Event(envelope) => envelope,
                Incoming::Live(live) => {
                    for lapsed in self.members.on_live(&live) {
                        self.lapsed(lapsed, "its lease lapsed");
                    }
                    continue;
                }
                Incoming::Roster(roster) => {
                    self.on_roster(roster);
                    continue;
                }
                Incoming::RedisAddrs(addrs) => {
                    if let Some(links) = self.links.as_mut() {
                        links.set_addrs(addrs);
                    }
                    continue;
                }
                Incoming::Subscribed => {
                    self.roster_ask_due = true;
                    // OCM `joined` events may have been missed too: the OCM service reads
                    // its rooms' members from Redis.
                    self.ocm_resync_due = true;
                    // So may BIN24's `Stored` notices (no user is online at the first one).
                    self.bin24_recheck_due = true;
                    continue;
                }
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

    /// Whether the subscriber resubscribed since the last call (BIN24's stores read again).
    pub fn take_bin24_recheck(&mut self) -> bool {
        std::mem::take(&mut self.bin24_recheck_due)
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
                Ok(payload) if payload.len() > self.roster_bytes_max => {
                    warn!(
                        "cluster: roster of {} lobby members not published: {} bytes, over \
                         --cluster-roster-bytes-max {} (over Redis's limit for a subscriber's \
                         output it would drop every node's subscription, again at each retry)",
                        members.len(),
                        payload.len(),
                        self.roster_bytes_max
                    );
                    self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
                }
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

    /// Stop: what waits for Redis is written (within the command timeout), then the threads
    /// stop (the lease thread deletes this node's key).
    pub fn shut_down(&mut self) {
        if let Some(mut links) = self.links.take() {
            links.finish(self.command_timeout, &self.stats);
        }
        self.stop_lease = None;
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

/// What a test hands a [`Cluster`] made by [`Cluster::detached`], as the Redis threads would.
#[cfg(test)]
pub(crate) struct TestFeed(mpsc::Sender<Incoming>);

#[cfg(test)]
impl TestFeed {
    /// An event on the lobby channel, as the subscriber hands it over.
    pub(crate) fn event(&self, envelope: Envelope) {
        let _ = self.0.send(Incoming::Event(envelope));
    }

    pub(crate) fn roster(&self, roster: codec::RosterEnvelope) {
        let _ = self.0.send(Incoming::Roster(roster));
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
            links: None,
            roster_bytes_max: ROSTER_BYTES_MAX_DEFAULT,
            now_ms: 0,
            incoming,
            members: liveness::Members::default(),
            lapsed_left: VecDeque::new(),
            pending: Arc::new(AtomicBool::new(false)),
            last_seen: HashMap::new(),
            roster_ask_due: false,
            roster_replies_due: Vec::new(),
            roster_asks: 0,
            stats: Arc::new(ClusterStats::default()),
            command_timeout: Duration::from_millis(50),
            stop_lease: None,
            threads: Vec::new(),
            names: names::Names::detached(),
            ocm_rooms: ocm::OcmRooms::detached(),
            lapsed_nodes: Vec::new(),
            ocm_resync_due: false,
            bin24_recheck_due: false,
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

/// The lease thread's connection, with deadlines: a Redis that stalls (stopped, or its host
/// gone) is a lost link after `timeout`, not a thread blocked for ever.
fn lease_connection(
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

/// The lease thread: renews this node's key every quarter lease on its own connection and
/// hands the list of live nodes to the reactor (a channel and a wake); at a clean stop it
/// deletes the key, so the other nodes need not wait for the lease.
struct Lease {
    client: redis::Client,
    conn: Option<redis::Connection>,
    command_timeout: Duration,
    key: Vec<u8>,
    lease_ms: u64,
    redis_host: resolve::RedisHost,
    incoming: mpsc::Sender<Incoming>,
    pending: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
    stats: Arc<ClusterStats>,
}

impl Lease {
    /// Until `stop`'s sender is dropped (its end wakes the thread at once).
    fn run(mut self, stop: Receiver<()>) {
        let started = Instant::now();
        let now_ms = || started.elapsed().as_millis() as u64;
        let mut schedule = liveness::LeaseSchedule::new(self.lease_ms, now_ms());
        let mut down_since: Option<Instant> = None;
        loop {
            let wait = Duration::from_millis(schedule.wait_ms(now_ms()));
            match stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
            if schedule.due(now_ms()) {
                self.renew(&mut schedule, now_ms(), &mut down_since);
                // After the renewal, so that a slow look-up never delays it.
                self.look_up_redis();
            }
        }
        if let Some(conn) = self.conn.as_mut() {
            let _ = redis::cmd("DEL").arg(&self.key).query::<()>(conn);
        }
    }

    /// While a link to Redis is down, Redis's host looked up again; addresses that changed
    /// go to the reactor's links.
    fn look_up_redis(&mut self) {
        let links_down = self.stats.links_down.load(Ordering::Acquire) > 0;
        let Some(addrs) = self.redis_host.refresh(links_down, resolve::lookup) else {
            return;
        };
        info!(
            "cluster: Redis's host {} now gives {addrs:?}; the publishing and subscription links \
             connect there",
            self.redis_host.host()
        );
        self.hand_over(Incoming::RedisAddrs(addrs));
    }

    /// Sends `incoming` to the reactor and wakes it, unless a wake is pending already.
    fn hand_over(&self, incoming: Incoming) {
        if self.incoming.send(incoming).is_ok() && !self.pending.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }

    /// The connection, opened again if it was lost.
    fn link(&mut self) -> Option<&mut redis::Connection> {
        if self.conn.is_none() {
            match lease_connection(&self.client, self.command_timeout) {
                Ok(fresh) => self.conn = Some(fresh),
                Err(err) => debug!("cluster: lease thread reconnect failed: {err}"),
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
                    link_up(&self.stats, "lease thread", since);
                }
                // Right after Redis returns, other nodes may not have set their keys again:
                // their absence would be no news.
                if schedule.renewed(now_ms) {
                    self.hand_over(Incoming::Live(live));
                }
            }
            Err(err) => {
                self.conn = None;
                schedule.failed(now_ms);
                if down_since.is_none() {
                    *down_since = Some(Instant::now());
                    link_down(&self.stats, "lease thread", &err);
                }
            }
        }
    }
}

/// A blocking connection to the first of `addrs` that answers, with deadlines, for the
/// links' start (the reactor switches it to non-blocking after).
fn connect_blocking(addrs: &[SocketAddr]) -> std::io::Result<std::net::TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
                stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
                return Ok(stream);
            }
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// The next reply on a blocking connection, read onto `input`.
fn read_reply(
    stream: &mut std::net::TcpStream,
    input: &mut BytesMut,
) -> std::io::Result<resp::Value> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(value) = resp::parse(input).map_err(std::io::Error::other)? {
            return Ok(value);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(len) => input.extend_from_slice(&chunk[..len]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// The publishing link's first connection: its setup (AUTH, PING) answered, so that an
/// unreachable or refusing Redis is an error at start. Returns what was read past it.
fn start_publisher(
    addrs: &[SocketAddr],
    link: &mut pubsub::PubLink,
) -> std::io::Result<(std::net::TcpStream, BytesMut)> {
    let mut stream = connect_blocking(addrs)?;
    link.connected();
    stream.write_all(link.output())?;
    link.wrote(link.output().len(), 0);
    let mut input = BytesMut::new();
    while link.awaiting() > 0 {
        let value = read_reply(&mut stream, &mut input)?;
        link.on_reply(value)
            .map_err(|lost| std::io::Error::other(lost.0))?;
    }
    Ok((stream, input))
}

/// The subscription's first connection, subscribed. Returns what was read past the
/// confirmations (messages already: the reactor reads them first).
fn start_subscriber(
    addrs: &[SocketAddr],
    link: &mut pubsub::SubLink,
) -> std::io::Result<(std::net::TcpStream, BytesMut)> {
    let mut stream = connect_blocking(addrs)?;
    link.connected(0);
    stream.write_all(link.output())?;
    link.wrote(link.output().len());
    let mut input = BytesMut::new();
    loop {
        let value = read_reply(&mut stream, &mut input)?;
        // A message between the confirmations is dropped: events before the subscription
        // are the rosters' to bring.
        match link.on_reply(value, 0) {
            Ok(pubsub::SubPush::Subscribed) => return Ok((stream, input)),
            Ok(_) => {}
            Err(lost) => return Err(std::io::Error::other(lost.0)),
        }
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
    fn a_roster_over_the_byte_bound_is_not_published_and_a_smaller_one_is() {
        let (mut cluster, feed) = Cluster::detached(b"a");
        cluster.roster_bytes_max = 4096;
        let member = |i: usize| {
            (
                ProtocolKind::Room,
                Bytes::from(format!("{i:0>1000}").into_bytes()),
                1,
            )
        };
        feed.subscribed();
        assert_eq!(cluster.try_recv(), None);
        assert!(cluster.roster_due());
        // Five 1,000-byte names: over 4,096 bytes encoded.
        cluster.publish_rosters((0..5).map(member).collect());
        assert_eq!(cluster.stats.publish_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(cluster.next_seq, 1, "nothing published takes no number");
        assert!(
            !cluster.roster_due(),
            "not asked for again until the next link change"
        );
        feed.subscribed();
        assert_eq!(cluster.try_recv(), None);
        cluster.publish_rosters((0..3).map(member).collect());
        assert_eq!(cluster.stats.publish_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(cluster.next_seq, 2);
    }

    #[test]
    fn a_default_node_name_fits_and_differs_per_call() {
        let a = default_node_name();
        let b = default_node_name();
        assert!(!a.is_empty() && a.len() <= codec::NODE_NAME_BYTES_MAX);
        assert_ne!(a, b);
    }
}
