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

pub mod codec;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
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
/// Events waiting for the publisher; beyond this they are dropped (and counted).
const OUTGOING_MAX: usize = 65_536;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscriber looks up from a quiet channel to notice shutdown.
const READ_TIMEOUT: Duration = Duration::from_millis(200);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]`.
    pub url: String,
    /// This node's name (`--node-name`), at most [`codec::NODE_NAME_BYTES_MAX`] bytes.
    pub node_name: String,
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
    Connect(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Url(err) => write!(f, "--cluster: {err}"),
            ClusterError::NodeName(err) => write!(f, "--node-name: {err}"),
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
    /// Redis connections down now (of two: the publisher's and the subscriber's).
    pub links_down: AtomicU64,
    /// Times a Redis connection was lost.
    pub link_losses: AtomicU64,
}

/// The reactor's side of the cluster.
pub struct Cluster {
    node: Bytes,
    incarnation: u64,
    next_seq: u64,
    outgoing: Option<SyncSender<Bytes>>,
    incoming: Receiver<Envelope>,
    /// Set by the subscriber when it queued something and woke the reactor; cleared before
    /// draining, so a burst costs one wake.
    pending: Arc<AtomicBool>,
    /// (incarnation, last sequence number) per node seen.
    last_seen: HashMap<Bytes, (u64, u64)>,
    stats: Arc<ClusterStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Connect both Redis connections and subscribe to the lobby, before the reactor starts:
    /// an unreachable Redis is an error here (chatd exits non-zero). After this the threads
    /// reconnect on their own.
    pub fn connect(
        config: &ClusterConfig,
        wake: Box<dyn Fn() + Send>,
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
        let publisher = publisher_connection(&client)
            .map_err(|err| ClusterError::Connect(format!("{}: {err}", config.url)))?;
        let stats = Arc::new(ClusterStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicBool::new(false));
        let (outgoing, outgoing_rx) = mpsc::sync_channel::<Bytes>(OUTGOING_MAX);
        let (incoming_tx, incoming) = mpsc::channel();
        let publish_thread = {
            let client = client.clone();
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("cluster-pub".into())
                .spawn(move || run_publisher(client, publisher, outgoing_rx, &stats))
                .map_err(|err| ClusterError::Connect(format!("cannot start a thread: {err}")))?
        };
        // The subscriber's first subscription is made on its thread (a `PubSub` borrows its
        // connection and unsubscribes when dropped, so it lives there) and reported back: an
        // unreachable Redis is still an error at start.
        let (subscribed_tx, subscribed) = mpsc::channel();
        let subscribe_thread = {
            let stats = Arc::clone(&stats);
            let stop = Arc::clone(&stop);
            let pending = Arc::clone(&pending);
            std::thread::Builder::new()
                .name("cluster-sub".into())
                .spawn(move || {
                    let subscriber = Subscriber {
                        incoming: incoming_tx,
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
            incarnation: random_u64(),
            next_seq: 1,
            outgoing: Some(outgoing),
            incoming,
            pending,
            last_seen: HashMap::new(),
            stats,
            stop,
            threads: vec![publish_thread, subscribe_thread],
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
        }
    }

    /// Queue a local hub event for the other nodes; never blocks. Direct messages do not
    /// cross yet and are skipped.
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
        let Some(outgoing) = &self.outgoing else {
            return;
        };
        match outgoing.try_send(payload) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The next event from another node, not seen before. Own events and repeats are
    /// dropped here.
    pub fn try_recv(&mut self) -> Option<HubEvent> {
        self.pending.store(false, Ordering::Release);
        loop {
            let envelope = match self.incoming.try_recv() {
                Ok(envelope) => envelope,
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return None,
            };
            if envelope.node == self.node && envelope.incarnation == self.incarnation {
                continue;
            }
            if !self.is_new(&envelope) {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            return Some(envelope.event);
        }
    }

    /// Whether `envelope` is newer than anything seen from its node (a new incarnation starts
    /// afresh).
    fn is_new(&mut self, envelope: &Envelope) -> bool {
        accept(&mut self.last_seen, envelope)
    }

    /// Stop the threads (the publisher after sending what is queued).
    pub fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.outgoing = None;
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

fn accept(last_seen: &mut HashMap<Bytes, (u64, u64)>, envelope: &Envelope) -> bool {
    match last_seen.get_mut(&envelope.node) {
        Some((incarnation, seq)) if *incarnation == envelope.incarnation => {
            if envelope.seq <= *seq {
                return false;
            }
            *seq = envelope.seq;
        }
        Some(entry) => *entry = (envelope.incarnation, envelope.seq),
        None => {
            last_seen.insert(envelope.node.clone(), (envelope.incarnation, envelope.seq));
        }
    }
    true
}

/// The publishing connection, with deadlines: a Redis that stalls (stopped, or its host
/// gone) is a lost link after `PUBLISH_TIMEOUT`, not a thread blocked for ever (the reactor
/// would not block either way: it only ever `try_send`s to this thread).
fn publisher_connection(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    conn.set_read_timeout(Some(PUBLISH_TIMEOUT))?;
    conn.set_write_timeout(Some(PUBLISH_TIMEOUT))?;
    Ok(conn)
}

fn run_publisher(
    client: redis::Client,
    conn: redis::Connection,
    outgoing: Receiver<Bytes>,
    stats: &ClusterStats,
) {
    let mut conn = Some(conn);
    let mut down_since: Option<Instant> = None;
    let mut delay = Duration::from_millis(50);
    // Ends when the reactor's side is dropped and everything queued was taken.
    while let Ok(first) = outgoing.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match outgoing.try_recv() {
                Ok(payload) => batch.push(payload),
                Err(_) => break,
            }
        }
        // A lost connection is retried once on a fresh one; a second failure drops the batch
        // (counted) and waits before the next, so a Redis that refuses PUBLISH (or is gone)
        // costs a connect attempt per delay, not a busy loop.
        let mut sent = false;
        for _attempt in 0..2 {
            if conn.is_none() {
                match publisher_connection(&client) {
                    Ok(fresh) => conn = Some(fresh),
                    Err(err) => {
                        debug!("cluster: publisher reconnect failed: {err}");
                        break;
                    }
                }
            }
            let Some(link) = conn.as_mut() else {
                break;
            };
            let mut pipe = redis::pipe();
            for payload in &batch {
                pipe.cmd("PUBLISH")
                    .arg(LOBBY_CHANNEL)
                    .arg(&payload[..])
                    .ignore();
            }
            match pipe.query::<()>(link) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(err) => {
                    conn = None;
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        link_down(stats, "publisher", &err);
                    }
                }
            }
        }
        if sent {
            stats
                .published
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            if let Some(since) = down_since.take() {
                link_up(stats, "publisher", since);
            }
            delay = Duration::from_millis(50);
        } else {
            // What waits meanwhile is bounded by the channel.
            stats
                .publish_dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            std::thread::sleep(delay);
            delay = (delay * 2).min(RECONNECT_DELAY_MAX);
        }
    }
}

/// The subscriber thread's state: what it hands events to, and the shared flags.
struct Subscriber<'a> {
    incoming: mpsc::Sender<Envelope>,
    pending: &'a AtomicBool,
    wake: &'a dyn Fn(),
    stats: &'a ClusterStats,
    stop: &'a AtomicBool,
}

/// How a subscribed connection ended.
enum Ended {
    Stopped,
    Lost(redis::RedisError),
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
                .set_read_timeout(Some(READ_TIMEOUT))
                .and_then(|()| pubsub.subscribe(LOBBY_CHANNEL));
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
        while !self.stop.load(Ordering::Acquire) {
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(err) if err.is_timeout() => continue,
                Err(err) => return Ended::Lost(err),
            };
            let payload: Vec<u8> = match message.get_payload() {
                Ok(payload) => payload,
                Err(_) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            match codec::decode(Bytes::from(payload)) {
                Ok(envelope) => {
                    if self.incoming.send(envelope).is_err() {
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
}

fn link_down(stats: &ClusterStats, which: &str, err: &redis::RedisError) {
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
        assert!(accept(&mut seen, &envelope(b"a", 1, 1)));
        assert!(!accept(&mut seen, &envelope(b"a", 1, 1)));
        assert!(accept(&mut seen, &envelope(b"b", 9, 1)));
        assert!(accept(&mut seen, &envelope(b"a", 1, 3)));
        assert!(!accept(&mut seen, &envelope(b"a", 1, 2)));
        // Restarted under the same name: its numbers start again.
        assert!(accept(&mut seen, &envelope(b"a", 2, 1)));
        assert!(!accept(&mut seen, &envelope(b"a", 2, 1)));
    }

    #[test]
    fn a_default_node_name_fits_and_differs_per_call() {
        let a = default_node_name();
        let b = default_node_name();
        assert!(!a.is_empty() && a.len() <= codec::NODE_NAME_BYTES_MAX);
        assert_ne!(a, b);
    }
}
