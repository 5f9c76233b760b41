//! The reactor: one mio `Poll`, edge-triggered, on one thread. The only code that touches
//! sockets and the only code that reads the clock.
//!
//! Each loop turn runs its phases in a fixed order:
//!
//! 1. **poll**, with a timeout from the earliest timer, or zero when work is left over;
//! 2. **events**: read until a read comes back short of its buffer or WouldBlock (within a
//!    per-event budget), decode, act; a FIN or error seen with the event keeps reading to the
//!    EOF or the error;
//!    connections that hit their budget are served again next turn (no edge will come);
//! 3. **timers**: the protocols' wheels, linger deadlines, the accept pause, statistics;
//! 4. **flush and close**: write every connection with queued output once (many messages
//!    to one socket cost one vectored write), then free the connections marked for closing,
//!    whose protocols may queue notices to others, flushed in the same phase;
//! 5. **accept**, while under the connection cap.
//!
//! Connections are freed only in phase 4, so an id handed to a protocol stays valid for the
//! whole turn, and a slot is never reused while an event for it may still be in the batch.

mod activity;
mod admin;
mod conn;
mod listen;
mod tls;
mod trim;
mod udp;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::chat::ConnId;
use crate::config::Config;
use crate::histogram::Histogram;
use crate::limits::{
    handshake_deadline_ms, Admission, HandshakeDeadlines, HandshakeQueue, PerIpCounts, RateLimit,
    TokenBucket,
};
use crate::protocol::registry::Services;
use crate::protocol::{Clock, CloseMode, CloseReason, DatagramDrop, Outbox};
use crate::stats::Stats;

pub use crate::protocol::{ProtocolKind, UdpKind};
pub use crate::store::StoreError;
use admin::{Admin, ADMIN_CONN_TOKEN_BASE, ADMIN_CONN_TOKEN_END, ADMIN_LISTENER_TOKEN};
use conn::{Conn, ConnKind, ConnTable, IoOutcome, OutputLimits};
pub use listen::BindError;
use listen::{bind_listeners, bind_udp_sockets};
pub use tls::TlsLoadError;
use tls::{TlsConn, TlsFailure, TlsSettings, TlsStats};
use udp::{Received, UdpEntry, UdpOut};

// Tokens pack a connection's generation into the high 32 bits, so a stale event for a reused
// slot is recognised; that needs a 64-bit usize.
const _: () = assert!(usize::BITS == 64);

const SIGNAL_TOKEN: Token = Token(0);
const WAKER_TOKEN: Token = Token(1);
/// The cluster's two Redis links (publishing, subscription): free tokens between the admin
/// listener's and the admin connections'.
const CLUSTER_PUB_TOKEN: usize = 3;
const CLUSTER_SUB_TOKEN: usize = 4;
const _: () =
    assert!(ADMIN_LISTENER_TOKEN < CLUSTER_PUB_TOKEN && CLUSTER_SUB_TOKEN < ADMIN_CONN_TOKEN_BASE);
const CLUSTER_LINK_TOKENS: crate::cluster::LinkTokens = crate::cluster::LinkTokens {
    publisher: Token(CLUSTER_PUB_TOKEN),
    subscriber: Token(CLUSTER_SUB_TOKEN),
};
/// Tokens 16..48 are TCP listeners, by index.
/// Reads of connections whose TLS handshake is not finished, per loop turn. A ClientHello costs
/// the server a key share and a signature (about 0.4 ms in a release build, ten times that in a
/// debug one); unbounded, a burst of them (an attacker may replay one recorded ClientHello at
/// no cost of its own) is all computed in one turn while everyone else waits. Beyond it the
/// connections wait, read-ready, for the next turns, which poll without sleeping: handshakes
/// still take whatever the loop has to spare, a few between each round of other work.
const TLS_HANDSHAKE_READS_PER_TURN_MAX: usize = 4;

const LISTENER_TOKEN_BASE: usize = 16;
const LISTENER_TOKEN_END: usize = 48;
/// Tokens 48..64 are UDP sockets, by index.
const UDP_TOKEN_BASE: usize = 48;
/// Connection tokens start here, above every reserved token.
const CONN_TOKEN_BASE: usize = 64;

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
const UDP_DATAGRAM_BYTES_MAX: usize = 65_507;

/// Sends one UDP socket may have put off to later turns (about 64 ms of sends); beyond it a
/// send is dropped and counted. Datagrams put off by one fan-out share one copy.
const UDP_DEFERRED_SENDS_MAX: usize = 65_536;

/// Consecutive failures of `poll` itself after which the server gives up.
const POLL_ERRORS_MAX: u32 = 8;

/// At most one warning line per limit per this long: a flood of refusals must not become a
/// flood of log lines (the counters in the statistics count every one).
const LIMIT_LOG_INTERVAL_MS: u64 = 1000;

/// A warning logged at most once per [`LIMIT_LOG_INTERVAL_MS`], saying how many were not.
#[derive(Default)]
struct LimitLog {
    next_ms: u64,
    suppressed: u64,
}

impl LimitLog {
    fn warn(&mut self, now_ms: u64, message: impl FnOnce() -> String) {
        match self.admit(now_ms) {
            None => {}
            Some(0) => warn!("{}", message()),
            Some(suppressed) => warn!("{} (and {suppressed} more not logged)", message()),
        }
    }

    /// Whether a line may be logged at `now_ms`, and how many were not since the last one.
    fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms < self.next_ms {
            self.suppressed += 1;
            return None;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.next_ms = now_ms + LIMIT_LOG_INTERVAL_MS;
        Some(suppressed)
    }
}

enum Source {
    Signal,
    Waker,
    Listener(usize),
    Udp(usize),
    Conn(ConnId),
    /// A cluster link: its work runs every turn, the event only makes the turn run.
    ClusterLink,
    AdminListener,
    AdminConn(ConnId),
    Unknown,
}

/// `id` is open, not closing, and not yet identified by its protocol: evictable at the cap.
fn is_handshaking(table: &ConnTable, id: ConnId) -> bool {
    table.slab.get(id.slot as usize).is_some_and(|conn| {
        conn.generation == id.generation && !conn.identified && conn.closing().is_none()
    })
}

/// The token of connection `id` in the table whose tokens start at `base` (`CONN_TOKEN_BASE`
/// for chat connections, `ADMIN_CONN_TOKEN_BASE` for the admin port's).
fn conn_token(base: usize, id: ConnId) -> Token {
    Token(((id.generation as usize) << 32) | (id.slot as usize + base))
}

fn source_of(token: Token) -> Source {
    let (low, generation) = (token.0 & 0xffff_ffff, (token.0 >> 32) as u32);
    let id = |base: usize| ConnId::new((low - base) as u32, generation);
    match low {
        CONN_TOKEN_BASE.. => Source::Conn(id(CONN_TOKEN_BASE)),
        ADMIN_CONN_TOKEN_BASE..ADMIN_CONN_TOKEN_END => Source::AdminConn(id(ADMIN_CONN_TOKEN_BASE)),
        0 => Source::Signal,
        1 => Source::Waker,
        CLUSTER_PUB_TOKEN | CLUSTER_SUB_TOKEN => Source::ClusterLink,
        LISTENER_TOKEN_BASE..LISTENER_TOKEN_END => Source::Listener(low - LISTENER_TOKEN_BASE),
        UDP_TOKEN_BASE..CONN_TOKEN_BASE => Source::Udp(low - UDP_TOKEN_BASE),
        ADMIN_LISTENER_TOKEN => Source::AdminListener,
        _ => Source::Unknown,
    }
}

/// Note the readiness an event brings to connection `id` of `table`, listing it for a flush
/// when it became writable with output queued. Returns whether it is ready to read; false
/// when `id` is gone (a stale event: its slot may hold a newcomer).
fn note_readiness<K: ConnKind>(table: &mut ConnTable<K>, id: ConnId, event: &Event) -> bool {
    let Some(conn) = table.get_mut(id) else {
        return false;
    };
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        conn.read_ready = true;
    }
    if event.is_read_closed() || event.is_error() {
        conn.hangup_seen = true;
    }
    let mut wants_flush = false;
    if event.is_writable() || event.is_write_closed() || event.is_error() {
        conn.write_ready = true;
        wants_flush = conn.has_output();
    }
    let read_ready = conn.read_ready;
    if wants_flush {
        table.mark_flush(id.slot as usize);
    }
    read_ready
}

/// Register an accepted stream for READABLE | WRITABLE and add it to `table` under a new id,
/// its token counted from `token_base`, speaking TLS with `tls` if given. None (the stream
/// dropped) when it cannot be registered.
#[allow(clippy::too_many_arguments)] // The one place a connection is made; all are needed.
fn insert_conn<K: ConnKind>(
    poll: &Poll,
    next_generation: &mut u32,
    table: &mut ConnTable<K>,
    token_base: usize,
    (mut stream, peer): (mio::net::TcpStream, SocketAddr),
    kind: K,
    input_budget: TokenBucket,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Option<ConnId> {
    let tls = match tls.map(TlsConn::new) {
        None => None,
        Some(Ok(tls)) => Some(Box::new(tls)),
        Some(Err(err)) => {
            warn!("cannot start TLS for the connection from {peer}: {err}");
            return None;
        }
    };
    // Output is batched per loop turn already; Nagle would only add delay on top.
    if let Err(err) = stream.set_nodelay(true) {
        debug!("TCP_NODELAY on {peer}: {err}");
    }
    let entry = table.slab.vacant_entry();
    let slot = u32::try_from(entry.key()).ok()?;
    let generation = *next_generation;
    *next_generation = next_generation.wrapping_add(1).max(1);
    let id = ConnId::new(slot, generation);
    if let Err(err) = poll.registry().register(
        &mut stream,
        conn_token(token_base, id),
        Interest::READABLE | Interest::WRITABLE,
    ) {
        warn!("cannot register connection from {peer}: {err}");
        return None;
    }
    let mut conn = Conn::new(stream, generation, kind, peer, input_budget);
    conn.tls = tls;
    entry.insert(conn);
    Some(id)
}

struct ListenerEntry {
    listener: TcpListener,
    kind: ProtocolKind,
    addr: SocketAddr,
    /// Its connections speak TLS.
    tls: bool,
    /// Edge-triggered: set by an event, cleared only by WouldBlock. While accepting is paused
    /// it stays set, so accepting resumes without waiting for an edge that will not come.
    ready: bool,
}

/// State shared with [`ServerHandle`]s on other threads.
#[derive(Default)]
struct Shared {
    shutdown_requested: AtomicBool,
    tls_reload_requested: AtomicBool,
    connections_open: AtomicU64,
}

/// Controls a running server from another thread (tests, embedding programs).
#[derive(Clone)]
pub struct ServerHandle {
    waker: Arc<Waker>,
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Ask for the same clean shutdown as SIGTERM.
    pub fn shutdown(&self) {
        self.shared.shutdown_requested.store(true, Ordering::SeqCst);
        if let Err(err) = self.waker.wake() {
            warn!("cannot wake the reactor for shutdown: {err}");
        }
    }

    /// Read the TLS certificate and key again, as SIGHUP does.
    pub fn reload_tls(&self) {
        self.shared
            .tls_reload_requested
            .store(true, Ordering::SeqCst);
        if let Err(err) = self.waker.wake() {
            warn!("cannot wake the reactor for a TLS reload: {err}");
        }
    }

    /// Connections open right now, all protocols together.
    pub fn connections_open(&self) -> u64 {
        self.shared.connections_open.load(Ordering::Relaxed)
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Bind(BindError),
    Store(StoreError),
    Cluster(crate::cluster::ClusterError),
    Tls(TlsLoadError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(err) => err.fmt(f),
            StartError::Store(err) => write!(f, "cannot open the offline store: {err}"),
            StartError::Cluster(err) => err.fmt(f),
            StartError::Tls(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

impl From<BindError> for StartError {
    fn from(err: BindError) -> Self {
        StartError::Bind(err)
    }
}

/// Accepting is allowed unless at the cap (with hysteresis) or paused after EMFILE.
#[derive(Default)]
struct AcceptGate {
    at_cap: bool,
    paused_until_ms: Option<u64>,
}

pub struct Server {
    poll: Poll,
    config: Config,
    table: ConnTable,
    listeners: Vec<ListenerEntry>,
    udp: Vec<UdpEntry>,
    services: Services,
    /// One reusable read buffer for every connection; see `Conn::read_once`.
    scratch: Vec<u8>,
    /// One receive buffer for every UDP socket, as large as a UDP datagram can be, so an
    /// oversized datagram is seen whole and refused instead of arriving silently truncated.
    udp_scratch: Vec<u8>,
    start: Instant,
    now_ms: u64,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    waker: Arc<Waker>,
    shared: Arc<Shared>,
    next_generation: u32,
    accept_gate: AcceptGate,
    /// Set once shutdown begins: the time by which the loop exits even with output queued.
    shutdown_deadline_ms: Option<u64>,
    stats_next_ms: Option<u64>,
    /// Open connections per peer IP, for `--connections-per-ip-max`.
    per_ip: PerIpCounts,
    /// `--handshake-timeout-ms` deadlines of the protocols that have one in the reactor.
    handshake_deadlines: HandshakeDeadlines,
    /// Every connection not yet identified, oldest first: evicted at the connection cap.
    handshaking: HandshakeQueue,
    input_limit: RateLimit,
    per_ip_log: LimitLog,
    input_rate_log: LimitLog,
    /// Connect and disconnect lines at info, rate-limited.
    activity_log: activity::ActivityLog,
    eviction_log: LimitLog,
    /// What is left this turn of `TLS_HANDSHAKE_READS_PER_TURN_MAX`.
    tls_handshake_reads_left: usize,
    /// Accept failures for lack of descriptors or memory, chat and admin listeners.
    accept_fail_log: LimitLog,
    /// The admin port, when enabled.
    admin: Option<Admin>,
    /// The certificate and key, when anything speaks TLS.
    tls: Option<TlsSettings>,
    tls_stats: TlsStats,
    /// One per `TlsFailure`: a flood of one kind does not hide another.
    tls_failure_logs: [LimitLog; TlsFailure::ALL.len()],
    /// Busy time of each loop turn, for the metrics.
    loop_turns: Histogram,
    /// Returns freed heap to the kernel after a large burst of queued output.
    heap_trim: trim::HeapTrim,
    /// Connections not read while their service holds input back (BIN24: the store's queue is
    /// full), resumed when it no longer does.
    input_paused: Vec<ConnId>,
    /// The last clock reading, since `start`: `now_ms` at full resolution.
    clock: Duration,
    /// The Unix time in ms when `start` was taken: later wall times are this plus `now_ms`,
    /// for answers that carry a date.
    wall_start_unix_ms: u64,
}

impl Server {
    /// Bind every enabled listener and open the offline store. Nothing is accepted until
    /// [`Server::run`].
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let poll = Poll::new().map_err(|source| BindError {
            protocol: "reactor",
            addr: SocketAddr::new(config.bind_addr, 0),
            step: "epoll_create",
            source,
        })?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN).map_err(|source| BindError {
            protocol: "reactor",
            addr: SocketAddr::new(config.bind_addr, 0),
            step: "eventfd",
            source,
        })?;
        // Before binding: a bad certificate is the operator's first error to see.
        let tls = if config.uses_tls() {
            match (&config.tls_cert_path, &config.tls_key_path) {
                (Some(cert), Some(key)) => {
                    Some(TlsSettings::load(cert, key).map_err(StartError::Tls)?)
                }
                (cert, _) => {
                    return Err(StartError::Tls(TlsLoadError {
                        what: if cert.is_none() { "certificate" } else { "key" },
                        path: std::path::PathBuf::from("(none given)"),
                        reason:
                            "a TLS port or --admin-tls needs --tls-cert FILE and --tls-key FILE"
                                .into(),
                    }))
                }
            }
        } else {
            None
        };
        let listeners = bind_listeners(&poll, &config)?;
        let udp = bind_udp_sockets(&poll, &config)?;
        let waker = Arc::new(waker);
        let store_waker = Arc::clone(&waker);
        let wake = Box::new(move || {
            if let Err(err) = store_waker.wake() {
                warn!("cannot wake the reactor for store completions: {err}");
            }
        });
        // The one wall-clock reading: later wall times are this plus the monotonic clock, so
        // a clock step cannot reorder anything the server does.
        let wall_start_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            });
        let mut services = Services::new(&config, 0, wake).map_err(StartError::Store)?;
        if let Some(cluster_config) = &config.cluster {
            let cluster_waker = Arc::clone(&waker);
            let wake = Arc::new(move || {
                if let Err(err) = cluster_waker.wake() {
                    warn!("cannot wake the reactor for cluster events: {err}");
                }
            });
            let cluster = crate::cluster::Cluster::connect(
                cluster_config,
                wake,
                poll.registry(),
                CLUSTER_LINK_TOKENS,
            )
            .map_err(StartError::Cluster)?;
            services.join_cluster(cluster);
        }
        let admin = Admin::bind(&poll, &config)?;
        let limits = OutputLimits {
            hard_bytes_max: config.output_hard_bytes_max,
            soft_bytes_max: config.output_soft_bytes_max,
            soft_duration_ms: config.output_soft_duration_ms,
        };
        let stats_next_ms = (config.stats_interval_ms > 0).then_some(config.stats_interval_ms);
        Ok(Server {
            poll,
            table: ConnTable::new(limits, config.close_linger_ms),
            listeners,
            udp,
            services,
            scratch: vec![0; config.read_chunk_bytes.max(1)],
            udp_scratch: vec![0; UDP_DATAGRAM_BYTES_MAX],
            start: Instant::now(),
            now_ms: 0,
            signals: None,
            waker,
            shared: Arc::new(Shared::default()),
            next_generation: 1,
            accept_gate: AcceptGate::default(),
            shutdown_deadline_ms: None,
            stats_next_ms,
            per_ip: PerIpCounts::default(),
            handshake_deadlines: HandshakeDeadlines::default(),
            handshaking: HandshakeQueue::default(),
            input_limit: RateLimit {
                rate_per_s: config.input_bytes_per_s_max,
                burst: config.input_burst_bytes_max,
            },
            per_ip_log: LimitLog::default(),
            input_rate_log: LimitLog::default(),
            activity_log: activity::ActivityLog::default(),
            eviction_log: LimitLog::default(),
            tls_handshake_reads_left: TLS_HANDSHAKE_READS_PER_TURN_MAX,
            accept_fail_log: LimitLog::default(),
            admin,
            tls,
            tls_stats: TlsStats::default(),
            tls_failure_logs: Default::default(),
            loop_turns: Histogram::default(),
            heap_trim: trim::HeapTrim::default(),
            input_paused: Vec::new(),
            clock: Duration::ZERO,
            wall_start_unix_ms,
            config,
        })
    }

    /// The time now, for a service.
    fn service_clock(&self) -> Clock {
        Clock {
            now_ms: self.now_ms,
            unix_ms: self.wall_start_unix_ms.saturating_add(self.now_ms),
        }
    }

    /// The address each enabled protocol listens on (useful with ephemeral ports).
    pub fn local_addrs(&self) -> Vec<(ProtocolKind, SocketAddr)> {
        self.listeners
            .iter()
            .map(|entry| (entry.kind, entry.addr))
            .collect()
    }

    /// The address `kind` listens on, if enabled.
    pub fn local_addr(&self, kind: ProtocolKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|entry| entry.kind == kind && !entry.tls)
            .map(|entry| entry.addr)
    }

    /// The address `kind` listens on for TLS, if enabled.
    pub fn local_tls_addr(&self, kind: ProtocolKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|entry| entry.kind == kind && entry.tls)
            .map(|entry| entry.addr)
    }

    /// The address the UDP socket of `kind` is bound to, if enabled.
    pub fn local_udp_addr(&self, kind: UdpKind) -> Option<SocketAddr> {
        self.udp
            .iter()
            .find(|entry| entry.kind == kind)
            .map(|entry| entry.addr)
    }

    /// The address of the admin port, if enabled.
    pub fn local_admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|admin| admin.addr)
    }

    /// The statistics so far: the connection table's counters plus every UDP socket's.
    fn stats(&self) -> Stats {
        let mut stats = self.table.stats.clone();
        for entry in &self.udp {
            entry.counters.add_to(&mut stats);
        }
        stats
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            waker: Arc::clone(&self.waker),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Shut down cleanly on SIGINT and SIGTERM (a second signal exits at once); with TLS,
    /// read the certificate and key again on SIGHUP. SIGHUP never ends chatd: without TLS it
    /// is logged and ignored (a terminal that hangs up sends it to a foreground chatd, and
    /// operators send it to daemons expecting a reload, not an exit).
    pub fn handle_signals(&mut self) -> io::Result<()> {
        let wanted = [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ];
        let mut signals = signal_hook_mio::v1_0::Signals::new(wanted)?;
        self.poll
            .registry()
            .register(&mut signals, SIGNAL_TOKEN, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Run until shut down; returns the final statistics.
    pub fn run(mut self) -> io::Result<Stats> {
        for entry in &self.listeners {
            if entry.tls {
                info!("{} listening on {} (TLS)", entry.kind.name(), entry.addr);
            } else {
                info!("{} listening on {}", entry.kind.name(), entry.addr);
            }
        }
        for entry in &self.udp {
            info!("{} listening on {} (UDP)", entry.kind.name(), entry.addr);
        }
        if let Some(admin) = &self.admin {
            let scheme = if self.config.admin_tls { ", https" } else { "" };
            info!("ADMIN listening on {} (GET /metrics{scheme})", admin.addr);
        }
        let mut events = Events::with_capacity(1024);
        let mut poll_errors = 0;
        // When the current turn's work began (a clock reading since `start`).
        let mut turn_started: Option<Duration> = None;
        loop {
            // Reads the clock: the previous turn's work ends here.
            let timeout = self.poll_timeout();
            if let Some(started) = turn_started.take() {
                self.loop_turns.record(self.clock.saturating_sub(started));
            }
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                poll_errors += 1;
                warn!("poll failed ({poll_errors} in a row): {err}");
                if poll_errors >= POLL_ERRORS_MAX {
                    return Err(err);
                }
                continue;
            }
            poll_errors = 0;
            self.update_now();
            turn_started = Some(self.clock);
            self.services.start_turn();
            self.tls_handshake_reads_left = TLS_HANDSHAKE_READS_PER_TURN_MAX;

            // Connections that hit their read budget last turn; taken before the events so a
            // connection gets one budget per turn, not a second one right away.
            let carried = std::mem::take(&mut self.table.ready_list);
            for event in events.iter() {
                self.handle_event(event);
            }
            self.serve_ready_list(carried);
            self.serve_udp();
            // Read before `on_wake` drains the store's events: idle then means every answer of
            // the store has been handed to its protocol this turn.
            let store_idle = self.shutdown_deadline_ms.is_none()
                || self
                    .services
                    .store_metrics()
                    .is_none_or(|store| store.pending_requests == 0);
            self.on_wake();
            self.fire_timers();
            self.resume_input();
            self.flush_hub_datagrams();
            self.heap_trim.observe(self.held_bytes());
            self.flush_and_close();
            self.flush_and_close_admin();
            if self.heap_trim.maybe_trim(self.now_ms, self.held_bytes()) {
                debug!(
                    "heap trimmed after a burst ({} trims)",
                    self.heap_trim.trims()
                );
            }
            self.table.check_acks();
            self.dispatch_notes();
            self.accept_all();
            self.accept_admin();
            // Last: every event this turn published goes to Redis in one write.
            self.services.flush_cluster(self.now_ms);

            if let Some(deadline_ms) = self.shutdown_deadline_ms {
                // Store requests still running are waited for too (within the grace), so that
                // a frame made durable gets its "300" out instead of only at the store's close.
                let drained = self.table.out_bytes_total == 0
                    && self.udp.iter().all(|entry| entry.deferred.is_empty())
                    && store_idle;
                if drained || self.now_ms >= deadline_ms {
                    if !drained {
                        let datagrams: usize = self
                            .udp
                            .iter_mut()
                            .map(|entry| entry.deferred.discard(&mut entry.counters))
                            .sum();
                        let store_requests = self
                            .services
                            .store_metrics()
                            .map_or(0, |store| store.pending_requests);
                        warn!(
                            "shutdown grace period over with {} bytes and {datagrams} datagrams \
                             still queued (the datagrams are counted as send_dropped) and \
                             {store_requests} store requests running (made durable at the \
                             store's close, unanswered)",
                            self.table.out_bytes_total
                        );
                    }
                    break;
                }
            }
        }
        if let Err(err) = self.services.shut_down() {
            log::error!("closing the offline store: {err}");
        }
        self.activity_log.flush();
        let stats = self.stats();
        info!("stopped: {stats}");
        Ok(stats)
    }

    /// Bytes held for clients now: queued output, stored frames in memory, and (at most a
    /// frame each) requests waiting for the storage thread. A burst of it is what a heap trim
    /// gives back once it is over.
    fn held_bytes(&self) -> usize {
        self.table.out_bytes_total + self.services.held_bytes()
    }

    /// Hand work completed off the loop's thread (BIN24's store) to its service, and resume
    /// the connections held back for backpressure once no service holds input any more.
    fn on_wake(&mut self) {
        let clock = self.service_clock();
        self.services.on_wake(&clock, &mut self.table);
        if self.input_paused.is_empty() || self.services.input_held() {
            return;
        }
        for id in std::mem::take(&mut self.input_paused) {
            if let Some(conn) = self.table.get_mut(id) {
                conn.input_paused = false;
                self.table.mark_ready(id.slot as usize);
            }
        }
    }

    /// Hand the services that read again (a name claim decided) the input they left: what
    /// arrived meanwhile, and the end of its burst if the socket has nothing more.
    fn resume_input(&mut self) {
        while !self.table.resumed.is_empty() {
            for id in std::mem::take(&mut self.table.resumed) {
                let Some(conn) = self.table.get_mut(id) else {
                    continue;
                };
                if conn.read_buf.is_empty() || !conn.accepts_input() {
                    continue;
                }
                let drained = !conn.read_ready;
                self.deliver_input(id);
                if drained {
                    self.end_burst(id);
                }
            }
        }
    }

    /// Tell protocols which `send_notify` buffers were acknowledged, or never will be.
    fn dispatch_notes(&mut self) {
        if self.table.notes_due.is_empty() {
            return;
        }
        // Reported notes may queue more output (the next part of a backlog); it is flushed
        // next turn, which polls without sleeping because the flush list is not empty.
        let notes = std::mem::take(&mut self.table.notes_due);
        let clock = self.service_clock();
        for &(id, kind, note, acked) in &notes {
            self.services
                .on_notify(kind, id, note, acked, &clock, &mut self.table);
        }
    }

    fn update_now(&mut self) {
        self.clock = self.start.elapsed();
        let elapsed_ms = u64::try_from(self.clock.as_millis()).unwrap_or(u64::MAX);
        self.now_ms = elapsed_ms;
        self.table.now_ms = elapsed_ms;
        if let Some(admin) = self.admin.as_mut() {
            admin.table.now_ms = elapsed_ms;
        }
    }

    /// Zero when work is left over; otherwise until the earliest deadline; None to sleep until
    /// an event.
    fn poll_timeout(&mut self) -> Option<Duration> {
        self.update_now();
        if !self.table.ready_list.is_empty()
            || !self.table.flush_list.is_empty()
            || self.services.has_cluster_backlog()
            || self.accept_pending()
            || self
                .udp
                .iter()
                .any(|entry| entry.ready || !entry.deferred.is_empty())
            || self.admin.as_ref().is_some_and(|admin| {
                !admin.table.flush_list.is_empty()
                    || (self.shutdown_deadline_ms.is_none() && admin.accept_pending())
            })
        {
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.services.next_deadline_ms(),
            self.table.lingering.iter().map(|&(_, at)| at).min(),
            self.accept_gate.paused_until_ms,
            self.handshake_deadlines.next_deadline_ms(),
            self.stats_next_ms,
            self.shutdown_deadline_ms,
            self.admin.as_ref().and_then(Admin::next_deadline_ms),
            self.heap_trim.next_deadline_ms(self.now_ms),
            self.table.next_ack_check_ms(),
            self.activity_log.next_deadline_ms(),
        ];
        let earliest = deadlines.into_iter().flatten().min()?;
        Some(Duration::from_millis(earliest.saturating_sub(self.now_ms)))
    }

    fn handle_event(&mut self, event: &Event) {
        match source_of(event.token()) {
            Source::Conn(id) => self.handle_conn_event(id, event),
            Source::Listener(index) => {
                if let Some(entry) = self.listeners.get_mut(index) {
                    entry.ready = true;
                }
            }
            Source::Signal => self.handle_signals_event(),
            Source::Waker => {
                self.on_wake();
                if self
                    .shared
                    .tls_reload_requested
                    .swap(false, Ordering::SeqCst)
                {
                    self.reload_tls();
                }
                if self.shared.shutdown_requested.load(Ordering::SeqCst) {
                    self.begin_shutdown("shutdown requested");
                }
            }
            Source::Udp(index) => {
                if let Some(entry) = self.udp.get_mut(index) {
                    entry.ready = true;
                }
            }
            Source::AdminListener => {
                if let Some(admin) = self.admin.as_mut() {
                    admin.set_ready();
                }
            }
            Source::AdminConn(id) => self.handle_admin_event(id, event),
            Source::ClusterLink => self.services.on_cluster_link_event(),
            Source::Unknown => {}
        }
    }

    fn handle_conn_event(&mut self, id: ConnId, event: &Event) {
        if note_readiness(&mut self.table, id, event) {
            self.read_conn(id);
        }
    }

    fn serve_ready_list(&mut self, list: Vec<usize>) {
        for &slot in &list {
            self.table.unmark_ready(slot);
            if let Some(id) = self.table.id_of(slot) {
                self.read_conn(id);
            }
        }
    }

    /// Read every ready UDP socket until WouldBlock or its per-turn budget, handing each
    /// datagram to its protocol; answers are sent from inside the protocol's call.
    /// Lobby deliveries the switchboard queued for OCM members during calls that had no OCM
    /// socket (a ROOM line, a MATOU message): sent now, in the turn they were made. One check
    /// when there are none.
    fn flush_hub_datagrams(&mut self) {
        if !self.services.has_ocm_deliveries() {
            return;
        }
        let clock = self.service_clock();
        let entry = self
            .udp
            .iter_mut()
            .find(|entry| entry.kind == UdpKind::OcmChat);
        if let Some(entry) = entry {
            let mut out = UdpOut::new(entry);
            self.services
                .flush_ocm_deliveries(&clock, &mut self.table, &mut out);
        }
    }

    fn serve_udp(&mut self) {
        let sends_budget = self.config.udp_sends_per_turn_max.max(1);
        if self.shutdown_deadline_ms.is_some() {
            // Nothing new is read, but what earlier turns put off still goes out.
            for entry in &mut self.udp {
                entry
                    .deferred
                    .start_turn(sends_budget, &entry.socket, &mut entry.counters);
            }
            return;
        }
        let now_ms = self.now_ms;
        let clock = self.service_clock();
        let budget = self.config.udp_datagrams_per_turn_max.max(1);
        for entry in &mut self.udp {
            // What earlier turns put off goes first; while any waits, nothing new is read (it
            // waits in the kernel's receive buffer, whose overflow the kernel drops).
            entry
                .deferred
                .start_turn(sends_budget, &entry.socket, &mut entry.counters);
            let mut served = 0;
            while entry.ready
                && served < budget
                && entry.deferred.sends_left > 0
                && entry.deferred.is_empty()
            {
                served += 1;
                let (len, from) = match entry.recv(&mut self.udp_scratch) {
                    Received::Datagram(len, from) => (len, from),
                    Received::WouldBlock => break,
                    Received::Skip => continue,
                };
                let Some(datagram) = self.udp_scratch.get(..len) else {
                    continue;
                };
                match entry.sources.admit(from, now_ms) {
                    Admission::Admitted => {}
                    Admission::RateLimited => {
                        entry.counters.count_dropped_in(DatagramDrop::RateLimited);
                        continue;
                    }
                    Admission::TableFull => {
                        entry.counters.count_dropped_in(DatagramDrop::OverLimit);
                        continue;
                    }
                }
                let kind = entry.kind;
                let mut out = UdpOut::new(entry);
                self.services.on_datagram(
                    kind,
                    datagram,
                    &clock.with_peer(from),
                    &mut self.table,
                    &mut out,
                );
            }
        }
    }

    /// Read until a short read or WouldBlock (either ends the burst: the socket had no more),
    /// EOF, or the per-event budget, handing each read to the protocol. See `Conn::read_once`
    /// for when a short read ends readiness.
    fn read_conn(&mut self, id: ConnId) {
        if self.shutdown_deadline_ms.is_some() {
            return;
        }
        let budget_bytes = self.config.read_budget_bytes;
        let clock = self.service_clock();
        let mut read_bytes = 0;
        loop {
            let Some(conn) = self.table.get_mut(id) else {
                return;
            };
            if !conn.accepts_input() || !conn.read_ready {
                return;
            }
            let kind = conn.kind;
            if self.services.hold_input(kind, &clock) {
                // Backpressure (BIN24: the store's queue is full). The bytes wait in the kernel
                // (and the sender's TCP window closes) until the service catches up.
                if !conn.input_paused {
                    conn.input_paused = true;
                    self.input_paused.push(id);
                }
                return;
            }
            if conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
                if self.tls_handshake_reads_left == 0 {
                    self.table.mark_ready(id.slot as usize);
                    return;
                }
                self.tls_handshake_reads_left -= 1;
            }
            let (outcome, count) = conn.read_once(&mut self.scratch);
            // A plaintext connection keeps its borrow: no second lookup per read.
            let conn = if conn.tls.is_some() {
                self.after_tls_read(id);
                match self.table.get_mut(id) {
                    Some(conn) => conn,
                    None => return,
                }
            } else {
                conn
            };
            match outcome {
                IoOutcome::Continue => {
                    // A short read emptied the socket: as WouldBlock would have said next.
                    let drained = !conn.read_ready;
                    // A TLS read may bring only handshake records: no plaintext to hand over.
                    let has_input = !conn.read_buf.is_empty();
                    let within_budget =
                        conn.input_budget
                            .take(self.input_limit, count as u64, self.now_ms);
                    self.table.stats.read_calls += 1;
                    self.table.stats.bytes_in += count as u64;
                    self.table.stats.by_protocol[kind.index()].bytes_in += count as u64;
                    read_bytes += count;
                    if !within_budget {
                        self.close_for_input_rate(id);
                        return;
                    }
                    if has_input {
                        self.deliver_input(id);
                    }
                    if drained {
                        self.end_burst(id);
                        return;
                    }
                    if read_bytes >= budget_bytes {
                        self.table.mark_ready(id.slot as usize);
                        return;
                    }
                }
                IoOutcome::WouldBlock => {
                    conn.read_ready = false;
                    self.table.stats.read_calls += 1;
                    self.end_burst(id);
                    return;
                }
                IoOutcome::Closed => {
                    self.table.stats.read_calls += 1;
                    self.end_burst(id);
                    self.table
                        .close(id, CloseReason::PeerClosed, CloseMode::Now);
                    return;
                }
                IoOutcome::Reset => {
                    self.table.stats.read_calls += 1;
                    self.table.close(id, CloseReason::PeerReset, CloseMode::Now);
                    return;
                }
                IoOutcome::Error => {
                    self.table.stats.read_calls += 1;
                    self.table.close(id, CloseReason::IoError, CloseMode::Now);
                    return;
                }
                IoOutcome::TlsFailed => {
                    self.table.stats.read_calls += 1;
                    self.table.stats.bytes_in += count as u64;
                    self.close_for_tls_failure(id);
                    return;
                }
            }
        }
    }

    /// After a read of a TLS connection: count a finished handshake, and list the connection
    /// for a flush when rustls has records to send (the handshake's) or the handshake's end
    /// lets the output queued meanwhile go out (ROOM's prompt).
    fn after_tls_read(&mut self, id: ConnId) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        let kind = conn.kind;
        let Some(tls) = conn.tls.as_mut() else {
            return;
        };
        let completed = tls.take_completed();
        let wants_flush = tls.wants_write() || (completed && conn.has_output());
        if completed {
            self.tls_stats.protocol(kind).handshakes += 1;
        }
        if wants_flush {
            self.table.mark_flush(id.slot as usize);
        }
    }

    /// `id`'s TLS records could not be processed: count why, log it (rate-limited), and close
    /// it at once (its alert, if any, goes out at the close).
    fn close_for_tls_failure(&mut self, id: ConnId) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        conn.read_buf.clear();
        conn.read_ready = false;
        let (kind, peer) = (conn.kind, conn.peer);
        let (failure, detail) = conn
            .tls
            .as_ref()
            .and_then(|tls| tls.failure.clone())
            .unwrap_or((TlsFailure::Other, String::from("unknown")));
        self.count_tls_failure(id, kind, peer, failure, &detail);
        self.table
            .close(id, CloseReason::ProtocolError, CloseMode::Now);
    }

    fn count_tls_failure(
        &mut self,
        id: ConnId,
        kind: ProtocolKind,
        peer: SocketAddr,
        failure: TlsFailure,
        detail: &str,
    ) {
        self.tls_stats.protocol(kind).failures[failure.index()] += 1;
        self.tls_failure_logs[failure.index()].warn(self.now_ms, || {
            format!(
                "closing {} {peer} ({id}): TLS failed: {} ({detail})",
                kind.name(),
                failure.describe()
            )
        });
    }

    /// SIGHUP: read the certificate and key again. New connections get the new ones; those
    /// open keep theirs. A file that cannot be used leaves the old ones in place.
    fn reload_tls(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            info!("SIGHUP: nothing served over TLS, nothing to reload; ignored, still serving");
            return;
        };
        match tls.reload() {
            Ok(()) => {
                self.tls_stats.reloads_ok += 1;
                info!(
                    "TLS certificate {} and key {} reloaded: new connections use them",
                    tls.cert_path.display(),
                    tls.key_path.display()
                );
            }
            Err(err) => {
                self.tls_stats.reloads_failed += 1;
                log::error!("TLS reload failed, keeping the previous certificate: {err}");
            }
        }
    }

    /// `id` sent beyond its input budget: close it at once, without handing the flood to its
    /// protocol.
    fn close_for_input_rate(&mut self, id: ConnId) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        conn.read_buf.clear();
        conn.read_ready = false;
        let (peer, kind) = (conn.peer, conn.kind);
        let limit = self.input_limit;
        self.input_rate_log.warn(self.now_ms, || {
            format!(
                "closing {} {peer} ({id}): input over {} bytes/s (burst {})",
                kind.name(),
                limit.rate_per_s,
                limit.burst
            )
        });
        self.table.close(id, CloseReason::InputRate, CloseMode::Now);
    }

    /// Hand a connection's buffered input to its protocol. The buffer is lent out for the call
    /// so the protocol can act on the connection table at the same time.
    fn deliver_input(&mut self, id: ConnId) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        let (kind, peer) = (conn.kind, conn.peer);
        let mut input = std::mem::take(&mut conn.read_buf);
        let cx = self.service_clock().with_peer(peer);
        self.services
            .on_data(kind, id, &mut input, &cx, &mut self.table);
        if let Some(conn) = self.table.get_mut(id) {
            conn.read_buf = input;
            conn.release_idle_memory();
        }
    }

    /// The socket has no more to read: tell the protocol if it holds unconsumed input.
    fn end_burst(&mut self, id: ConnId) {
        let Some(conn) = self.table.get_mut(id) else {
            return;
        };
        if conn.read_buf.is_empty() || !conn.accepts_input() {
            return;
        }
        let (kind, peer) = (conn.kind, conn.peer);
        let mut input = std::mem::take(&mut conn.read_buf);
        let cx = self.service_clock().with_peer(peer);
        self.services
            .on_burst_end(kind, id, &mut input, &cx, &mut self.table);
        if let Some(conn) = self.table.get_mut(id) {
            conn.read_buf = input;
        }
    }

    fn fire_timers(&mut self) {
        let now_ms = self.now_ms;
        let clock = self.service_clock();
        self.services.on_timers(&clock, &mut self.table);
        for entry in &mut self.udp {
            let kind = entry.kind;
            let mut datagrams = UdpOut::new(entry);
            self.services
                .on_datagram_timers(kind, &clock, &mut self.table, &mut datagrams);
        }
        while let Some(id) = self.handshake_deadlines.pop_expired(now_ms) {
            let Some(conn) = self.table.get_mut(id) else {
                continue;
            };
            if conn.closing().is_some() {
                continue;
            }
            let (kind, peer) = (conn.kind, conn.peer);
            if conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
                // The TLS handshake counts as part of the protocol's: it must end in time too.
                conn.read_ready = false;
                let timeout_ms = self.config.handshake_timeout_ms;
                self.count_tls_failure(
                    id,
                    kind,
                    peer,
                    TlsFailure::HandshakeDeadline,
                    &format!("not finished {timeout_ms} ms after the accept"),
                );
                self.table
                    .close(id, CloseReason::HandshakeTimeout, CloseMode::Now);
                continue;
            }
            let Some(conn) = self.table.get_mut(id) else {
                continue;
            };
            if conn.identified || !self.services.reactor_handshake_deadline(kind) {
                // A TLS connection of a protocol without the reactor's deadline: its TLS
                // handshake was all this entry was for.
                continue;
            }
            debug!("{id}: not identified within the handshake deadline");
            let (kind, peer) = (conn.kind, conn.peer);
            self.services.on_handshake_timeout(
                kind,
                id,
                self.config.handshake_timeout_ms,
                &clock.with_peer(peer),
                &mut self.table,
            );
        }
        self.table.expire_lingering();
        if self
            .accept_gate
            .paused_until_ms
            .is_some_and(|until| now_ms >= until)
        {
            self.accept_gate.paused_until_ms = None;
        }
        self.expire_admin();
        self.activity_log.on_timer(now_ms);
        if let Some(next_ms) = self.stats_next_ms {
            if now_ms >= next_ms {
                info!("stats: {}", self.stats());
                self.stats_next_ms = Some(now_ms + self.config.stats_interval_ms);
            }
        }
    }

    /// Flush all pending output, then free closed connections; repeat while closing produces
    /// new output (leave notices) or new closes (a failed flush).
    fn flush_and_close(&mut self) {
        // One budget for the whole phase, however often closing makes more output.
        let mut budget_bytes = self.config.write_budget_bytes.max(1);
        loop {
            let written = self
                .table
                .flush_pending(self.config.write_iovecs_max, budget_bytes);
            budget_bytes = budget_bytes.saturating_sub(written);
            if self.table.close_list.is_empty() {
                return;
            }
            let list = std::mem::take(&mut self.table.close_list);
            for slot in list {
                self.free_conn(slot);
            }
        }
    }

    fn free_conn(&mut self, slot: usize) {
        let mut clean_close = false;
        if let Some(id) = self.table.id_of(slot) {
            let table = &mut self.table;
            if let Some(conn) = table.slab.get_mut(slot) {
                if conn
                    .closing()
                    .is_some_and(|(reason, _)| reason == CloseReason::PeerClosed)
                {
                    // What the peer acknowledged before its FIN it has read (a program that
                    // closes with unread data sends a reset instead): tell the protocol first.
                    let kind = conn.kind;
                    let notes_due = &mut table.notes_due;
                    clean_close =
                        conn.final_ack_check(|note| notes_due.push((id, kind, note, true)));
                }
            }
        }
        let dropped = self.table.discard_output(slot);
        let Some(mut conn) = self.table.slab.try_remove(slot) else {
            return;
        };
        let id = ConnId::new(slot as u32, conn.generation);
        self.table.stats.drops += dropped as u64;
        let (reason, _) = conn
            .closing()
            .unwrap_or((CloseReason::PeerClosed, CloseMode::Now));
        if conn.tls.is_some() && !matches!(reason, CloseReason::PeerReset | CloseReason::IoError) {
            conn.close_tls();
        }
        if let Err(err) = self.poll.registry().deregister(&mut conn.stream) {
            debug!("deregister {id}: {err}");
        }
        let open = self.table.stats.connections_open.saturating_sub(1);
        self.activity_log
            .log(self.now_ms, activity::Activity::Disconnect, || {
                format!(
                    "{} {} ({id}) closed: {} ({open} open)",
                    conn.kind.name(),
                    conn.peer,
                    reason.as_str()
                )
            });
        match reason {
            CloseReason::HandshakeTimeout => self.table.stats.handshake_timeouts += 1,
            CloseReason::InputRate => self.table.stats.input_rate_closes += 1,
            _ => {}
        }
        self.per_ip.remove(conn.peer.ip());
        let (kind, peer) = (conn.kind, conn.peer);
        drop(conn);
        // A reset that followed the FIN makes it a reset for the protocol too.
        let reason = if reason == CloseReason::PeerClosed && !clean_close {
            CloseReason::PeerReset
        } else {
            reason
        };
        self.table.stats.connections_open -= 1;
        self.table.stats.connections_closed += 1;
        let counters = &mut self.table.stats.by_protocol[kind.index()];
        counters.connections_open -= 1;
        if let Some(closes) = counters.closes.get_mut(reason.index()) {
            *closes += 1;
        }
        self.shared
            .connections_open
            .store(self.table.stats.connections_open, Ordering::Relaxed);
        // Notes first (acknowledged, or never), then the close, so the protocol sees them in
        // the order they happened.
        self.dispatch_notes();
        let cx = self.service_clock().with_peer(peer);
        self.services
            .on_close(kind, id, reason, &cx, &mut self.table);
        if self.accept_gate.at_cap && self.table.slab.len() <= self.resume_below() {
            self.accept_gate.at_cap = false;
        }
    }

    /// Accepting resumes once the count is down to this: the cap less a tenth (at least one),
    /// so a server at its cap does not flap between accepting and refusing.
    fn resume_below(&self) -> usize {
        let cap = self.config.connections_max;
        cap.saturating_sub((cap / 10).max(1))
    }

    fn accept_allowed(&self) -> bool {
        self.shutdown_deadline_ms.is_none()
            && !self.accept_gate.at_cap
            && self.accept_gate.paused_until_ms.is_none()
    }

    fn accept_pending(&self) -> bool {
        self.accept_allowed() && self.listeners.iter().any(|entry| entry.ready)
    }

    fn accept_all(&mut self) {
        for index in 0..self.listeners.len() {
            let mut accepted = 0;
            while self.accept_allowed()
                && self.listeners[index].ready
                && accepted < self.config.accepts_per_turn_max
            {
                let at_cap = self.table.slab.len() >= self.config.connections_max;
                if at_cap && !self.has_evictable() {
                    if !self.accept_gate.at_cap {
                        debug!(
                            "at the connection cap ({}): accepting paused",
                            self.config.connections_max
                        );
                    }
                    self.accept_gate.at_cap = true;
                    break;
                }
                match self.listeners[index].listener.accept() {
                    Ok((stream, peer)) => {
                        accepted += 1;
                        let per_ip_max = self.config.connections_per_ip_max;
                        if per_ip_max != 0 && self.per_ip.count(peer.ip()) >= per_ip_max {
                            self.refuse_per_ip(stream, peer, index);
                            continue;
                        }
                        // Only for a newcomer actually accepted: a listener still marked ready
                        // may have nothing left in its backlog.
                        if at_cap && !self.evict_oldest_handshaking() {
                            continue;
                        }
                        let entry = &self.listeners[index];
                        self.add_conn(stream, peer, entry.kind, entry.tls);
                    }
                    Err(err) => self.accept_failed(index, &err),
                }
            }
        }
    }

    /// Whether a connection still in its handshake could be evicted (stale entries before the
    /// oldest one are dropped on the way).
    fn has_evictable(&mut self) -> bool {
        let table = &self.table;
        self.handshaking
            .peek_oldest(|id| is_handshaking(table, id))
            .is_some()
    }

    /// At the connection cap with a newcomer accepted: close the oldest connection still in its
    /// handshake at once and free its slot now (through the close phase, so the slot is never
    /// freed twice). False when every connection is past its handshake.
    fn evict_oldest_handshaking(&mut self) -> bool {
        let table = &self.table;
        let Some(id) = self.handshaking.pop_oldest(|id| is_handshaking(table, id)) else {
            return false;
        };
        let (kind, peer) = match self.table.get_mut(id) {
            Some(conn) => (conn.kind, conn.peer),
            None => return false,
        };
        debug!(
            "{} {peer} ({id}): evicted at the connection cap, still in its handshake",
            kind.name()
        );
        self.table.stats.handshake_evictions += 1;
        let cap = self.config.connections_max;
        self.eviction_log.warn(self.now_ms, || {
            format!(
                "at the connection cap ({cap}): evicted {} {peer}, the oldest connection still in its handshake",
                kind.name()
            )
        });
        self.table
            .close(id, CloseReason::HandshakeTimeout, CloseMode::Now);
        self.flush_and_close();
        true
    }

    /// `peer`'s address has its most connections open: close the new one at once (dropping
    /// the socket), before any protocol sees it.
    fn refuse_per_ip(&mut self, stream: mio::net::TcpStream, peer: SocketAddr, index: usize) {
        drop(stream);
        self.table.stats.connections_refused_per_ip += 1;
        let max = self.config.connections_per_ip_max;
        let protocol = self.listeners[index].kind.name();
        self.per_ip_log.warn(self.now_ms, || {
            format!(
                "{protocol}: refused a connection from {peer}: {max} already open from its address"
            )
        });
    }

    fn accept_failed(&mut self, index: usize, err: &io::Error) {
        match err.kind() {
            io::ErrorKind::WouldBlock => self.listeners[index].ready = false,
            // The peer gave up before we accepted; the next one may be fine.
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted => {}
            _ => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: out of a resource. Pause instead of
                // spinning; established connections keep being served meanwhile. Logged at
                // most once a second with a count (it was a line every pause, 150 in 15 s).
                self.table.stats.accept_pauses += 1;
                let (addr, pause_ms) = (self.listeners[index].addr, self.config.accept_pause_ms);
                self.accept_fail_log.warn(self.now_ms, || {
                    format!("accept on {addr} failed: {err}; pausing accepts for {pause_ms} ms")
                });
                self.accept_gate.paused_until_ms =
                    Some(self.now_ms + self.config.accept_pause_ms.max(1));
            }
        }
    }

    fn add_conn(
        &mut self,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        kind: ProtocolKind,
        tls: bool,
    ) {
        let tls_config = if tls {
            match self.tls.as_ref() {
                Some(settings) => Some(&settings.config),
                // Cannot happen (a TLS listener exists only with its settings); never serve
                // plaintext on a TLS port.
                None => return,
            }
        } else {
            None
        };
        let Some(id) = insert_conn(
            &self.poll,
            &mut self.next_generation,
            &mut self.table,
            CONN_TOKEN_BASE,
            (stream, peer),
            kind,
            TokenBucket::full(self.input_limit, self.now_ms),
            tls_config,
        ) else {
            return;
        };
        // One deadline for both: every entry has the same timeout, so the queue stays in order.
        if self.services.reactor_handshake_deadline(kind) || tls_config.is_some() {
            // From the clock at full resolution, not `now_ms` (rounded down): never early.
            let deadline_ms = handshake_deadline_ms(self.clock, self.config.handshake_timeout_ms);
            self.handshake_deadlines.push(id, deadline_ms);
        }
        self.handshaking.push(id);
        let table = &self.table;
        self.handshaking
            .compact(2 * self.config.connections_max.max(1024), |id| {
                is_handshaking(table, id)
            });
        // Unlimited here: the limit was checked before accepting.
        self.per_ip.try_add(peer.ip(), 0);
        self.table.stats.connections_accepted += 1;
        self.table.stats.connections_open += 1;
        let counters = &mut self.table.stats.by_protocol[kind.index()];
        counters.connections_accepted += 1;
        counters.connections_open += 1;
        self.shared
            .connections_open
            .store(self.table.stats.connections_open, Ordering::Relaxed);
        let open = self.table.stats.connections_open;
        self.activity_log
            .log(self.now_ms, activity::Activity::Connect, || {
                format!("{} {peer} ({id}) connected ({open} open)", kind.name())
            });
        let cx = self.service_clock().with_peer(peer);
        self.services.on_accept(kind, id, &cx, &mut self.table);
    }

    fn handle_signals_event(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            if signal == signal_hook::consts::SIGHUP {
                self.reload_tls();
                continue;
            }
            if self.shutdown_deadline_ms.is_some() {
                warn!("second signal ({signal}): exiting without waiting for output");
                self.shutdown_deadline_ms = Some(self.now_ms);
            } else {
                self.begin_shutdown(if signal == signal_hook::consts::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                });
            }
        }
    }

    /// Stop accepting and reading; the loop keeps flushing until output drains or the grace
    /// period ends.
    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown_deadline_ms.is_some() {
            return;
        }
        info!(
            "{why}: shutting down, flushing output for up to {} ms",
            self.config.shutdown_grace_ms
        );
        for mut entry in std::mem::take(&mut self.listeners) {
            if let Err(err) = self.poll.registry().deregister(&mut entry.listener) {
                debug!("deregister listener {}: {err}", entry.addr);
            }
        }
        self.close_admin();
        // Datagrams are not read during shutdown; the sockets stay open (and counted) until
        // the loop exits.
        for entry in &mut self.udp {
            if let Err(err) = self.poll.registry().deregister(&mut entry.socket) {
                debug!("deregister UDP socket {}: {err}", entry.addr);
            }
            entry.ready = false;
        }
        self.shutdown_deadline_ms = Some(self.now_ms + self.config.shutdown_grace_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_log_logs_once_a_second_with_the_count_of_the_rest() {
        let mut log = LimitLog::default();
        assert_eq!(log.admit(0), Some(0));
        // An EMFILE every 100 ms for 15 s: 15 lines, each counting the 9 before it.
        let mut lines = vec![Some(0)];
        for tick in 1..150 {
            let admitted = log.admit(tick * 100);
            if admitted.is_some() {
                lines.push(admitted);
            }
        }
        assert_eq!(lines.len(), 15);
        assert!(lines[1..].iter().all(|&line| line == Some(9)), "{lines:?}");
    }
}
