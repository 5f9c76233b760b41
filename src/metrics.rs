//! The server's statistics in the Prometheus text exposition format (version 0.0.4), for the
//! admin port. Pure: the reactor gathers a [`MetricsSnapshot`] from its plain counters when a
//! request arrives, and [`render`] turns it into text. Nothing here runs unless someone asks.
//!
//! Names follow Prometheus's conventions: `chatd_` first, base units (seconds, bytes), `_total`
//! on counters. Label values are lowercase.

use prometheus::proto::{Bucket, Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use crate::histogram::{Histogram, BUCKET_BOUNDS_US};
use crate::hub::Counts;
use crate::protocol::{CloseReason, DatagramDrop, ProtocolKind};
use crate::stats::{ProtocolStats, Stats};
use crate::store::StoreMetrics;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// One UDP socket's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpSocketMetrics {
    /// Label value: the socket's protocol, lowercase (`ocm-udp`, `ocm-relay`).
    pub socket: String,
    pub datagrams_received: u64,
    pub datagrams_accepted: u64,
    pub datagrams_sent: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Received datagrams thrown away, by `DatagramDrop::index`.
    pub dropped_in: [u64; DatagramDrop::COUNT],
    /// Sends dropped on a full socket buffer, and sends that failed.
    pub send_dropped: u64,
    pub send_failed: u64,
    /// Sends put off to a later turn by the per-turn send budget.
    pub sends_deferred: u64,
}

/// The admin port's own counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminMetrics {
    pub connections_open: u64,
    /// Answers given, by status code.
    pub responses: Vec<(u16, u64)>,
}

/// The switchboard's counts (contract SWITCHBOARD rule 5) and lobby size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchboardMetrics {
    /// The enabled protocols: only they are shown, as everywhere on the admin port.
    pub protocols: Vec<ProtocolKind>,
    pub counts: Counts,
    /// Lobby members by protocol, by `ProtocolKind::index`.
    pub lobby_members: [u64; ProtocolKind::COUNT],
}

/// Cluster mode's counters (`--cluster`), read from the Redis threads' atomics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterMetrics {
    pub published: u64,
    pub publish_dropped: u64,
    pub received: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub link_down: bool,
    pub link_losses: u64,
    /// Other nodes taken for dead (lease lapsed or restarted); their lobby members were
    /// announced gone.
    pub nodes_lapsed: u64,
    /// Lobby members on other nodes, as this node learned them from presence events.
    pub remote_lobby_members: u64,
    /// Other nodes' lobby rosters received, and the presence notices they brought that had
    /// been missed while a link to Redis was down.
    pub rosters_received: u64,
    pub roster_presences: u64,
    /// The OCM rooms thread (`cluster-ocm`).
    pub ocm: OcmRoomsMetrics,
}

/// The OCM rooms thread's counters (docs/CLUSTER.md, "OCM rooms across nodes").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OcmRoomsMetrics {
    /// TCRP creates and joins asked of Redis.
    pub creates: u64,
    pub joins: u64,
    /// Refused: the room exists (create), no such room, the name taken in the room, the room
    /// full (join), Redis unreachable or its queue full (either).
    pub refused_exists: u64,
    pub refused_missing: u64,
    pub refused_name_taken: u64,
    pub refused_full: u64,
    pub refused_unavailable: u64,
    /// Token look-ups: found, unknown to Redis, not answered (Redis unreachable).
    pub lookups_found: u64,
    pub lookups_unknown: u64,
    pub lookups_failed: u64,
    /// Its connection to Redis is down now.
    pub link_down: bool,
}

/// Names in a cluster (`--cluster`): the hub's claims waiting for Redis and their outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameMetrics {
    /// Names held on this node (granted, across BIN24, CCM and MATOU).
    pub held: u64,
    /// Claims waiting for Redis's answer now.
    pub waiting: u64,
    pub counts: crate::hub::ClaimCounts,
}

/// Everything [`render`] shows, read from the reactor at request time.
#[derive(Clone, Debug)]
pub struct MetricsSnapshot<'a> {
    /// Totals over every protocol (and UDP socket), as in the statistics log line.
    pub stats: &'a Stats,
    /// Each enabled TCP protocol: its label value (lowercase) and its counters.
    pub protocols: Vec<(String, ProtocolStats)>,
    pub udp_sockets: Vec<UdpSocketMetrics>,
    /// When BIN24 (and so the store) is enabled.
    pub store: Option<StoreMetrics>,
    /// The switchboard's traffic across protocols and its lobby, unless `--isolate`.
    pub switchboard: Option<SwitchboardMetrics>,
    /// With `--cluster`.
    pub cluster: Option<ClusterMetrics>,
    /// With `--cluster`: names claimed across the nodes.
    pub names: Option<NameMetrics>,
    /// Busy time of each reactor loop turn (from poll's return to the next poll).
    pub loop_turns: &'a Histogram,
    pub connections_max: u64,
    pub admin: AdminMetrics,
    /// Bytes allocated and not freed, where the allocator tells (glibc).
    pub heap_in_use_bytes: Option<u64>,
}

/// The snapshot as Prometheus text (version 0.0.4); an error only if the encoder refuses
/// what it is given, which would be a bug here.
pub fn render(snapshot: &MetricsSnapshot) -> Result<String, String> {
    let families = families(snapshot);
    let mut text = Vec::with_capacity(16 * 1024);
    TextEncoder::new()
        .encode(&families, &mut text)
        .map_err(|err| err.to_string())?;
    String::from_utf8(text).map_err(|err| err.to_string())
}

fn families(snapshot: &MetricsSnapshot) -> Vec<MetricFamily> {
    let stats = snapshot.stats;
    let protocols = &snapshot.protocols;
    let udp = &snapshot.udp_sockets;
    let per_protocol = |value: fn(&ProtocolStats) -> u64| -> Vec<Metric> {
        protocols
            .iter()
            .map(|(name, counters)| sample(&[("protocol", name)], value(counters)))
            .collect()
    };
    let mut out = Families::default();

    out.gauge(
        "chatd_connections_open",
        "TCP connections open, by protocol.",
        per_protocol(|p| p.connections_open),
    );
    out.gauge(
        "chatd_connections_max",
        "The connection cap (--connections-max), all protocols together.",
        vec![sample(&[], snapshot.connections_max)],
    );
    out.counter(
        "chatd_connections_accepted_total",
        "TCP connections accepted, by protocol.",
        per_protocol(|p| p.connections_accepted),
    );
    let closes = protocols
        .iter()
        .flat_map(|(name, counters)| {
            CloseReason::ALL.iter().map(move |reason| {
                let count = counters.closes.get(reason.index()).copied().unwrap_or(0);
                sample(&[("protocol", name), ("reason", reason.label())], count)
            })
        })
        .collect();
    out.counter(
        "chatd_connections_closed_total",
        "TCP connections closed, by protocol and reason.",
        closes,
    );
    out.counter(
        "chatd_frames_in_total",
        "Frames (messages, chunks) received, by protocol.",
        per_protocol(|p| p.frames_in),
    );
    out.counter(
        "chatd_frames_out_total",
        "Buffers queued for sending, by protocol.",
        per_protocol(|p| p.frames_out),
    );
    let udp_bytes = |value: fn(&UdpSocketMetrics) -> u64| {
        udp.iter()
            .map(move |socket| sample(&[("protocol", &socket.socket)], value(socket)))
    };
    let mut bytes_in = per_protocol(|p| p.bytes_in);
    bytes_in.extend(udp_bytes(|socket| socket.bytes_in));
    out.counter(
        "chatd_bytes_in_total",
        "Bytes read from sockets, by protocol (UDP sockets by their own name).",
        bytes_in,
    );
    let mut bytes_out = per_protocol(|p| p.bytes_out);
    bytes_out.extend(udp_bytes(|socket| socket.bytes_out));
    out.counter(
        "chatd_bytes_out_total",
        "Bytes written to sockets, by protocol (UDP sockets by their own name).",
        bytes_out,
    );
    out.counter(
        "chatd_read_calls_total",
        "read calls on connections.",
        vec![sample(&[], stats.read_calls)],
    );
    out.counter(
        "chatd_write_calls_total",
        "Vectored write calls on connections; frames out per write call is the batching ratio.",
        vec![sample(&[], stats.write_calls)],
    );
    out.counter(
        "chatd_output_buffers_dropped_total",
        "Queued output buffers thrown away because their connection closed first.",
        vec![sample(&[], stats.drops)],
    );
    out.counter(
        "chatd_slow_consumer_closes_total",
        "Connections closed for their output queue: past the hard limit, or over the soft \
         limit for too long.",
        vec![
            sample(&[("limit", "hard")], stats.slow_consumer_hard_closes),
            sample(&[("limit", "soft")], stats.slow_consumer_soft_closes),
        ],
    );
    out.counter(
        "chatd_inputs_rejected_total",
        "Inputs rejected as malformed, oversized or out of order (datagrams included).",
        vec![sample(&[], stats.rejected)],
    );
    out.counter(
        "chatd_handshake_evictions_total",
        "Connections still in their handshake closed at the connection cap to admit a newcomer \
         (also among the handshake_timeout closes).",
        vec![sample(&[], stats.handshake_evictions)],
    );
    out.counter(
        "chatd_accept_pauses_total",
        "Times accepting paused for lack of descriptors.",
        vec![sample(&[], stats.accept_pauses)],
    );

    let per_socket = |value: fn(&UdpSocketMetrics) -> u64| -> Vec<Metric> {
        udp.iter()
            .map(|socket| sample(&[("socket", &socket.socket)], value(socket)))
            .collect()
    };
    out.counter(
        "chatd_udp_datagrams_received_total",
        "Datagrams received, by socket.",
        per_socket(|socket| socket.datagrams_received),
    );
    out.counter(
        "chatd_udp_datagrams_accepted_total",
        "Datagrams a protocol accepted (relayed or acted on), by socket.",
        per_socket(|socket| socket.datagrams_accepted),
    );
    out.counter(
        "chatd_udp_datagrams_sent_total",
        "Datagrams sent, by socket.",
        per_socket(|socket| socket.datagrams_sent),
    );
    out.counter(
        "chatd_udp_sends_deferred_total",
        "Datagrams put off to a later loop turn by the per-turn send budget, by socket.",
        per_socket(|socket| socket.sends_deferred),
    );
    let drops = udp
        .iter()
        .flat_map(|socket| {
            let received = DatagramDrop::ALL.iter().map(move |why| {
                let count = socket.dropped_in.get(why.index()).copied().unwrap_or(0);
                sample(
                    &[("socket", &socket.socket), ("reason", why.label())],
                    count,
                )
            });
            let sent = [
                ("send_buffer_full", socket.send_dropped),
                ("send_failed", socket.send_failed),
            ]
            .into_iter()
            .map(move |(why, count)| sample(&[("socket", &socket.socket), ("reason", why)], count));
            received.chain(sent)
        })
        .collect();
    out.counter(
        "chatd_udp_datagrams_dropped_total",
        "Datagrams thrown away, by socket and reason: received ones a protocol refused, and \
         sends dropped on a full buffer or failed.",
        drops,
    );

    if let Some(switchboard) = &snapshot.switchboard {
        switchboard_families(&mut out, switchboard);
    }

    if let Some(cluster) = &snapshot.cluster {
        out.counter(
            "chatd_cluster_events_published_total",
            "Lobby events (messages, presence) this node published to the other nodes.",
            vec![sample(&[], cluster.published)],
        );
        out.counter(
            "chatd_cluster_events_publish_dropped_total",
            "Lobby events not published: the queue to Redis was full (cut off or too slow) or \
             a publish failed twice.",
            vec![sample(&[], cluster.publish_dropped)],
        );
        out.counter(
            "chatd_cluster_events_received_total",
            "Other nodes' lobby events handed to this node's lobby.",
            vec![sample(&[], cluster.received)],
        );
        out.counter(
            "chatd_cluster_events_duplicate_total",
            "Events not newer than the last one seen from their node: not delivered again.",
            vec![sample(&[], cluster.duplicates)],
        );
        out.counter(
            "chatd_cluster_messages_malformed_total",
            "Messages on the lobby channel that did not decode.",
            vec![sample(&[], cluster.malformed)],
        );
        out.gauge(
            "chatd_cluster_redis_link_down",
            "1 while a connection to Redis is down (local users are served meanwhile).",
            vec![sample(&[], u64::from(cluster.link_down))],
        );
        out.counter(
            "chatd_cluster_redis_link_losses_total",
            "Times a connection to Redis was lost.",
            vec![sample(&[], cluster.link_losses)],
        );
        out.counter(
            "chatd_cluster_nodes_lapsed_total",
            "Other nodes taken for dead (their lease lapsed, or they restarted); their lobby \
             members were announced gone.",
            vec![sample(&[], cluster.nodes_lapsed)],
        );
        out.gauge(
            "chatd_cluster_remote_lobby_members",
            "Lobby members on other nodes, as this node learned them from presence events.",
            vec![sample(&[], cluster.remote_lobby_members)],
        );
        out.counter(
            "chatd_cluster_rosters_received_total",
            "Other nodes' lobby rosters received (exchanged after a link to Redis is made \
             again).",
            vec![sample(&[], cluster.rosters_received)],
        );
        out.counter(
            "chatd_cluster_roster_presences_total",
            "Presence notices that rosters brought: arrivals and leavings missed while a link \
             to Redis was down.",
            vec![sample(&[], cluster.roster_presences)],
        );
        ocm_rooms_families(&mut out, &cluster.ocm);
    }

    if let Some(names) = &snapshot.names {
        name_families(&mut out, names);
    }

    if let Some(store) = &snapshot.store {
        out.gauge(
            "chatd_store_pending_requests",
            "Requests submitted to the offline store and not yet answered (its queue depth).",
            vec![sample(&[], store.pending_requests)],
        );
        out.gauge(
            "chatd_store_frames",
            "Frames held in the offline store, as of the last commit.",
            vec![sample(&[], store.stored_frames)],
        );
        out.gauge(
            "chatd_store_bytes",
            "Bytes of frames held in the offline store, as of the last commit.",
            vec![sample(&[], store.stored_bytes)],
        );
        out.gauge(
            "chatd_store_users",
            "Users with at least one frame in the offline store, as of the last commit.",
            vec![sample(&[], store.stored_users)],
        );
        out.counter(
            "chatd_store_commits_total",
            "Durable (fsync'd) commits of the offline store; one per group of requests.",
            vec![sample(&[], store.commits)],
        );
        out.histogram(
            "chatd_store_commit_duration_seconds",
            "Time each durable commit of the offline store took.",
            &store.commit_latency,
        );
        out.counter(
            "chatd_store_refused_full_total",
            "Frames refused (\"507\") because the whole store was at --store-frames-max or \
             --store-bytes-max.",
            vec![sample(&[], store.refused_store_full)],
        );
        out.gauge(
            "chatd_store_stopped",
            "1 once a batch of the offline store failed (I/O error, corruption met at run time): \
             appends are refused (\"507\") and stored frames wait until chatd is restarted.",
            vec![sample(&[], u64::from(store.stopped))],
        );
        out.counter(
            "chatd_bin24_stored_delivered_total",
            "Stored frames counted as delivered and removed, by how: the client answered them, \
             the connection stayed up for the grace after TCP acknowledged them, or it closed \
             cleanly after acknowledging them.",
            vec![
                sample(&[("how", "answered")], store.delivered_answered),
                sample(&[("how", "grace")], store.delivered_grace),
                sample(&[("how", "clean_close")], store.delivered_clean_close),
            ],
        );
        out.counter(
            "chatd_bin24_stored_kept_for_redelivery_total",
            "Stored frames sent whose connection ended before they counted as delivered: they \
             stay stored and are sent again (a duplicate where the client had read them).",
            vec![sample(&[], store.kept_for_redelivery)],
        );
        out.counter(
            "chatd_bin24_logins_refused_total",
            "BIN24 logins refused: not allowed by --bin24-users, or claiming a name held from \
             another address.",
            vec![sample(&[], store.logins_refused)],
        );
        out.gauge(
            "chatd_bin24_loaded_bytes",
            "Bytes of stored frames in memory: pages loading, loaded, sent and not yet \
             acknowledged (bounded by --bin24-loaded-bytes-max).",
            vec![sample(&[], store.loaded_bytes)],
        );
    }

    out.histogram(
        "chatd_loop_turn_duration_seconds",
        "Busy time of each reactor loop turn: from poll's return to the next poll.",
        snapshot.loop_turns,
    );

    if let Some(bytes) = snapshot.heap_in_use_bytes {
        out.gauge(
            "chatd_heap_in_use_bytes",
            "Bytes allocated and not freed (glibc's mallinfo2: every arena, mmapped chunks \
             included): unlike resident memory, free pages the allocator keeps do not count, so \
             a leak shows as growth between runs of the same load.",
            vec![sample(&[], bytes)],
        );
    }

    out.gauge(
        "chatd_admin_connections_open",
        "Connections open on the admin port.",
        vec![sample(&[], snapshot.admin.connections_open)],
    );
    let responses = snapshot
        .admin
        .responses
        .iter()
        .map(|&(code, count)| sample(&[("code", &code.to_string())], count))
        .collect();
    out.counter(
        "chatd_admin_responses_total",
        "Answers given on the admin port, by HTTP status code.",
        responses,
    );
    out.0
}

/// Families being built; one with no samples is left out (the encoder refuses it).
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn push(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) {
        if metrics.is_empty() {
            return;
        }
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.0.push(family);
    }

    fn counter(&mut self, name: &str, help: &str, samples: Vec<Metric>) {
        let metrics = samples
            .into_iter()
            .map(|mut metric| {
                let mut counter = Counter::default();
                counter.set_value(metric.get_gauge().get_value());
                metric.set_counter(counter);
                metric
            })
            .collect();
        self.push(name, help, MetricType::COUNTER, metrics);
    }

    fn gauge(&mut self, name: &str, help: &str, samples: Vec<Metric>) {
        self.push(name, help, MetricType::GAUGE, samples);
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        let mut cumulative = 0;
        let buckets = BUCKET_BOUNDS_US
            .iter()
            .zip(&histogram.counts)
            .map(|(&bound_us, &count)| {
                cumulative += count;
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(seconds(bound_us));
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        // The encoder adds the +Inf bucket from the sample count.
        let mut value = prometheus::proto::Histogram::default();
        value.set_bucket(buckets);
        value.set_sample_count(histogram.count);
        value.set_sample_sum(seconds(histogram.sum_us));
        let mut metric = Metric::default();
        metric.set_histogram(value);
        self.push(name, help, MetricType::HISTOGRAM, vec![metric]);
    }
}

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// Deliveries across protocols by origin and destination (every pair of two different enabled
/// protocols, zeros included, so a rate can be taken from the first scrape), and the lobby.
/// Left out when fewer than two protocols are enabled: nothing can cross.
fn ocm_rooms_families(out: &mut Families, ocm: &OcmRoomsMetrics) {
    out.counter(
        "chatd_cluster_ocm_requests_total",
        "OCM TCRP creates and joins this node asked of Redis.",
        vec![
            sample(&[("operation", "create")], ocm.creates),
            sample(&[("operation", "join")], ocm.joins),
        ],
    );
    out.counter(
        "chatd_cluster_ocm_refusals_total",
        "OCM creates and joins Redis refused, by reason (unavailable: Redis unreachable, late, \
         or the OCM rooms thread's queue full).",
        vec![
            sample(&[("reason", "exists")], ocm.refused_exists),
            sample(&[("reason", "missing")], ocm.refused_missing),
            sample(&[("reason", "name_taken")], ocm.refused_name_taken),
            sample(&[("reason", "full")], ocm.refused_full),
            sample(&[("reason", "unavailable")], ocm.refused_unavailable),
        ],
    );
    out.counter(
        "chatd_cluster_ocm_lookups_total",
        "Other nodes' OCM tokens looked up in Redis (a datagram reached this node with a token \
         it did not know), by outcome.",
        vec![
            sample(&[("outcome", "found")], ocm.lookups_found),
            sample(&[("outcome", "unknown")], ocm.lookups_unknown),
            sample(&[("outcome", "failed")], ocm.lookups_failed),
        ],
    );
    out.gauge(
        "chatd_cluster_ocm_link_down",
        "1 while the OCM rooms thread's connection to Redis is down (creates and joins are \
         refused meanwhile).",
        vec![sample(&[], u64::from(ocm.link_down))],
    );
}

fn name_families(out: &mut Families, names: &NameMetrics) {
    out.gauge(
        "chatd_cluster_names_held",
        "Names held on this node (BIN24, CCM, MATOU), each a key in Redis renewed with the lease.",
        vec![sample(&[], names.held)],
    );
    out.gauge(
        "chatd_cluster_name_claims_waiting",
        "Name claims waiting for Redis's answer now.",
        vec![sample(&[], names.waiting)],
    );
    out.counter(
        "chatd_cluster_name_claims_total",
        "Name claims this node asked of Redis.",
        vec![sample(&[], names.counts.asked)],
    );
    out.counter(
        "chatd_cluster_name_claims_granted_total",
        "Name claims Redis granted to this node.",
        vec![sample(&[], names.counts.granted)],
    );
    out.counter(
        "chatd_cluster_name_claims_taken_total",
        "Name claims refused because another node holds the name.",
        vec![sample(&[], names.counts.taken)],
    );
    out.counter(
        "chatd_cluster_name_claims_unconfirmed_total",
        "Name claims refused because the cluster could not confirm them (Redis unreachable or \
         late, or too many claims waiting).",
        vec![sample(&[], names.counts.unconfirmed)],
    );
    out.counter(
        "chatd_cluster_names_lost_total",
        "Names this node held that another node held when Redis came back (this node's keys \
         had lapsed): their holders here were closed.",
        vec![sample(&[], names.counts.lost)],
    );
    out.counter(
        "chatd_cluster_bin24_locations_total",
        "BIN24 messages to a user not on this node, by the location cache's part: hit (sent \
         where the cache placed the addressee, no look-up), miss (located in Redis), bounced \
         (sent back by a node that did not hold the name, located again).",
        vec![
            sample(&[("outcome", "hit")], names.counts.location_hits),
            sample(&[("outcome", "miss")], names.counts.location_misses),
            sample(&[("outcome", "bounced")], names.counts.location_bounces),
        ],
    );
    let receipts = &names.counts.web_receipts;
    out.counter(
        "chatd_cluster_web_receipts_total",
        "Web users' direct messages to another node's CCM or web user, by how their sender was \
         answered: answered (from the receipt), expired (no receipt by the deadline: \
         no-receipt), lapsed (the recipient's node taken for dead first: no-receipt), late (a \
         receipt after the answer, dropped), refused (too many awaiting a receipt: busy, not \
         sent).",
        vec![
            sample(&[("outcome", "answered")], receipts.answered),
            sample(&[("outcome", "expired")], receipts.expired),
            sample(&[("outcome", "lapsed")], receipts.lapsed),
            sample(&[("outcome", "late")], receipts.late),
            sample(&[("outcome", "refused")], receipts.refused),
        ],
    );
}

fn switchboard_families(out: &mut Families, switchboard: &SwitchboardMetrics) {
    let enabled = &switchboard.protocols;
    if enabled.len() < 2 {
        return;
    }
    let pairs = |matrix: &[[u64; ProtocolKind::COUNT]; ProtocolKind::COUNT]| -> Vec<Metric> {
        enabled
            .iter()
            .flat_map(|&origin| {
                enabled
                    .iter()
                    .filter(move |&&destination| destination != origin)
                    .map(move |&destination| {
                        sample(
                            &[
                                ("origin", origin.label()),
                                ("destination", destination.label()),
                            ],
                            matrix[origin.index()][destination.index()],
                        )
                    })
            })
            .collect()
    };
    let counts = &switchboard.counts;
    out.counter(
        "chatd_switchboard_messages_total",
        "Lobby and direct messages handed to a recipient of another protocol, by origin and \
         destination protocol (one per recipient).",
        pairs(&counts.messages),
    );
    out.counter(
        "chatd_switchboard_notices_total",
        "Presence notices handed to a recipient of another protocol, by origin and destination.",
        pairs(&counts.notices),
    );
    out.counter(
        "chatd_switchboard_over_limit_total",
        "Messages and notices the destination protocol could not carry (sizes, encodings) or \
         a sending limit refused (the sender's own, or the destination protocol's), one per \
         recipient, and refused direct messages, by origin and destination.",
        pairs(&counts.over_limit),
    );
    out.gauge(
        "chatd_switchboard_lobby_members",
        "Members of the switchboard's lobby, by protocol.",
        enabled
            .iter()
            .filter(|kind| kind.has_lobby())
            .map(|kind| {
                sample(
                    &[("protocol", kind.label())],
                    switchboard.lobby_members[kind.index()],
                )
            })
            .collect(),
    );
}

/// Prometheus label pairs from `(name, value)`s.
pub(crate) fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|&(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

/// A sample with its labels, its value held as a gauge until its family says otherwise.
fn sample(labels: &[(&str, &str)], value: u64) -> Metric {
    let pairs = label_pairs(labels);
    let mut gauge = Gauge::default();
    // Counters past 2^53 lose precision as f64, which is all the format carries.
    gauge.set_value(value as f64);
    let mut metric = Metric::from_label(pairs);
    metric.set_gauge(gauge);
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_with<'a>(stats: &'a Stats, turns: &'a Histogram) -> MetricsSnapshot<'a> {
        let mut room = ProtocolStats {
            connections_open: 2,
            connections_accepted: 3,
            frames_in: 4,
            frames_out: 5,
            bytes_in: 60,
            bytes_out: 70,
            ..ProtocolStats::default()
        };
        room.closes[CloseReason::PeerClosed.index()] = 1;
        let mut udp = UdpSocketMetrics {
            socket: "ocm-udp".to_string(),
            datagrams_received: 9,
            bytes_in: 900,
            send_dropped: 2,
            sends_deferred: 5,
            ..UdpSocketMetrics::default()
        };
        udp.dropped_in[DatagramDrop::BadToken.index()] = 3;
        let mut commit_latency = Histogram::default();
        commit_latency.record_us(3_000);
        MetricsSnapshot {
            stats,
            protocols: vec![
                ("room".to_string(), room),
                ("bin24".to_string(), ProtocolStats::default()),
            ],
            udp_sockets: vec![udp],
            store: Some(StoreMetrics {
                pending_requests: 1,
                commits: 1,
                commit_latency,
                stored_frames: 7,
                stored_bytes: 700,
                stored_users: 2,
                ..StoreMetrics::default()
            }),
            switchboard: Some({
                let mut switchboard = SwitchboardMetrics {
                    protocols: ProtocolKind::ALL.to_vec(),
                    ..SwitchboardMetrics::default()
                };
                let (room, matou) = (ProtocolKind::Room.index(), ProtocolKind::Matou.index());
                switchboard.counts.messages[room][matou] = 3;
                switchboard.counts.over_limit[room][matou] = 1;
                switchboard.lobby_members[matou] = 2;
                switchboard
            }),
            cluster: Some(ClusterMetrics {
                published: 5,
                received: 4,
                link_down: true,
                ocm: OcmRoomsMetrics {
                    joins: 7,
                    refused_name_taken: 2,
                    lookups_failed: 1,
                    link_down: true,
                    ..OcmRoomsMetrics::default()
                },
                ..ClusterMetrics::default()
            }),
            names: Some(NameMetrics {
                held: 3,
                waiting: 1,
                counts: crate::hub::ClaimCounts {
                    asked: 6,
                    granted: 3,
                    taken: 1,
                    unconfirmed: 1,
                    lost: 0,
                    location_hits: 5,
                    location_misses: 2,
                    location_bounces: 1,
                    ..crate::hub::ClaimCounts::default()
                },
            }),
            loop_turns: turns,
            connections_max: 10_000,
            admin: AdminMetrics {
                connections_open: 1,
                responses: vec![(200, 4), (404, 1)],
            },
            heap_in_use_bytes: Some(123_456),
        }
    }

    /// Every line is a comment (`# HELP` / `# TYPE`) or `name{labels} value`; returns the
    /// samples as (name with labels, value).
    fn parse(text: &str) -> Vec<(String, f64)> {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
                "bad name in {line:?}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "unclosed labels in {line:?}");
            }
            let value = match value {
                "+Inf" => f64::INFINITY,
                other => other.parse().expect("a number"),
            };
            samples.push((series.to_string(), value));
        }
        samples
    }

    fn value(samples: &[(String, f64)], series: &str) -> f64 {
        samples
            .iter()
            .find(|(name, _)| name == series)
            .unwrap_or_else(|| panic!("{series} missing"))
            .1
    }

    #[test]
    fn every_line_parses_and_carries_the_snapshot_values() {
        let stats = Stats {
            drops: 11,
            slow_consumer_hard_closes: 1,
            slow_consumer_soft_closes: 2,
            handshake_evictions: 4,
            ..Stats::default()
        };
        let turns = Histogram::default();
        let text = render(&snapshot_with(&stats, &turns)).expect("render");
        let samples = parse(&text);
        assert_eq!(
            value(&samples, "chatd_connections_open{protocol=\"room\"}"),
            2.0
        );
        assert_eq!(value(&samples, "chatd_heap_in_use_bytes"), 123_456.0);
        let crossing = |family: &str, origin: &str, destination: &str| {
            value(
                &samples,
                &format!("{family}{{origin=\"{origin}\",destination=\"{destination}\"}}"),
            )
        };
        assert_eq!(
            crossing("chatd_switchboard_messages_total", "room", "matou"),
            3.0
        );
        assert_eq!(
            crossing("chatd_switchboard_messages_total", "matou", "room"),
            0.0
        );
        assert_eq!(
            crossing("chatd_switchboard_over_limit_total", "room", "matou"),
            1.0
        );
        assert_eq!(
            crossing("chatd_switchboard_notices_total", "ccm", "ocm"),
            0.0
        );
        assert!(
            !text.contains("origin=\"room\",destination=\"room\"")
                && !text.contains("destination=\"room\",origin=\"room\"")
        );
        assert_eq!(
            value(
                &samples,
                "chatd_switchboard_lobby_members{protocol=\"matou\"}"
            ),
            2.0
        );
        assert!(!text.contains("chatd_switchboard_lobby_members{protocol=\"bin24\"}"));
        assert_eq!(value(&samples, "chatd_cluster_events_published_total"), 5.0);
        assert_eq!(value(&samples, "chatd_cluster_events_received_total"), 4.0);
        assert_eq!(value(&samples, "chatd_cluster_redis_link_down"), 1.0);
        assert_eq!(
            value(
                &samples,
                "chatd_cluster_ocm_requests_total{operation=\"join\"}"
            ),
            7.0
        );
        assert_eq!(
            value(
                &samples,
                "chatd_cluster_ocm_requests_total{operation=\"create\"}"
            ),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "chatd_cluster_ocm_refusals_total{reason=\"name_taken\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &samples,
                "chatd_cluster_ocm_lookups_total{outcome=\"failed\"}"
            ),
            1.0
        );
        assert_eq!(value(&samples, "chatd_cluster_ocm_link_down"), 1.0);
        assert_eq!(value(&samples, "chatd_cluster_names_held"), 3.0);
        assert_eq!(value(&samples, "chatd_cluster_name_claims_waiting"), 1.0);
        assert_eq!(value(&samples, "chatd_cluster_name_claims_total"), 6.0);
        assert_eq!(
            value(&samples, "chatd_cluster_name_claims_granted_total"),
            3.0
        );
        assert_eq!(
            value(&samples, "chatd_cluster_name_claims_taken_total"),
            1.0
        );
        assert_eq!(
            value(&samples, "chatd_cluster_name_claims_unconfirmed_total"),
            1.0
        );
        assert_eq!(value(&samples, "chatd_cluster_names_lost_total"), 0.0);
        for (outcome, count) in [("hit", 5.0), ("miss", 2.0), ("bounced", 1.0)] {
            assert_eq!(
                value(
                    &samples,
                    &format!("chatd_cluster_bin24_locations_total{{outcome=\"{outcome}\"}}")
                ),
                count
            );
        }
        assert_eq!(value(&samples, "chatd_cluster_events_duplicate_total"), 0.0);
        assert_eq!(
            value(&samples, "chatd_connections_open{protocol=\"bin24\"}"),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "chatd_connections_closed_total{protocol=\"room\",reason=\"peer_closed\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "chatd_connections_closed_total{protocol=\"room\",reason=\"slow_consumer\"}"
            ),
            0.0
        );
        assert_eq!(
            value(&samples, "chatd_bytes_in_total{protocol=\"room\"}"),
            60.0
        );
        assert_eq!(
            value(&samples, "chatd_bytes_in_total{protocol=\"ocm-udp\"}"),
            900.0
        );
        assert_eq!(
            value(&samples, "chatd_bytes_out_total{protocol=\"room\"}"),
            70.0
        );
        assert_eq!(
            value(
                &samples,
                "chatd_udp_datagrams_dropped_total{socket=\"ocm-udp\",reason=\"bad_token\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &samples,
                "chatd_udp_datagrams_dropped_total{socket=\"ocm-udp\",reason=\"send_buffer_full\"}"
            ),
            2.0
        );
        assert_eq!(
            value(&samples, "chatd_slow_consumer_closes_total{limit=\"soft\"}"),
            2.0
        );
        assert_eq!(value(&samples, "chatd_output_buffers_dropped_total"), 11.0);
        assert_eq!(value(&samples, "chatd_handshake_evictions_total"), 4.0);
        assert_eq!(
            value(
                &samples,
                "chatd_udp_sends_deferred_total{socket=\"ocm-udp\"}"
            ),
            5.0
        );
        assert_eq!(value(&samples, "chatd_store_frames"), 7.0);
        assert_eq!(
            value(&samples, "chatd_admin_responses_total{code=\"404\"}"),
            1.0
        );
        assert!(text.contains("# TYPE chatd_connections_accepted_total counter\n"));
        assert!(text.contains("# TYPE chatd_connections_open gauge\n"));
        assert!(text.contains("# TYPE chatd_loop_turn_duration_seconds histogram\n"));
    }

    #[test]
    fn histograms_are_cumulative_in_seconds_and_end_with_inf() {
        let stats = Stats::default();
        let mut turns = Histogram::default();
        for us in [5, 40, 40, 700, 3_000_000] {
            turns.record_us(us);
        }
        let text = render(&snapshot_with(&stats, &turns)).expect("render");
        let samples = parse(&text);
        let bucket = |le: &str| {
            value(
                &samples,
                &format!("chatd_loop_turn_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.00001"), 1.0);
        assert_eq!(bucket("0.000025"), 1.0);
        assert_eq!(bucket("0.00005"), 3.0);
        assert_eq!(bucket("0.001"), 4.0);
        assert_eq!(bucket("2.5"), 4.0);
        assert_eq!(bucket("+Inf"), 5.0);
        assert_eq!(
            value(&samples, "chatd_loop_turn_duration_seconds_count"),
            5.0
        );
        let sum = value(&samples, "chatd_loop_turn_duration_seconds_sum");
        assert!((sum - 3.000785).abs() < 1e-9, "{sum}");
        assert_eq!(
            value(
                &samples,
                "chatd_store_commit_duration_seconds_bucket{le=\"0.005\"}"
            ),
            1.0
        );
        // Buckets never decrease.
        let counts: Vec<f64> = samples
            .iter()
            .filter(|(name, _)| name.starts_with("chatd_loop_turn_duration_seconds_bucket"))
            .map(|&(_, count)| count)
            .collect();
        assert_eq!(counts.len(), BUCKET_BOUNDS_US.len() + 1);
        assert!(counts.windows(2).all(|pair| pair[0] <= pair[1]));
    }

    #[test]
    fn without_the_store_or_udp_their_families_are_left_out() {
        let stats = Stats::default();
        let turns = Histogram::default();
        let mut snapshot = snapshot_with(&stats, &turns);
        snapshot.store = None;
        snapshot.udp_sockets.clear();
        snapshot.admin.responses.clear();
        let text = render(&snapshot).expect("render");
        assert!(!text.contains("chatd_store_"));
        assert!(!text.contains("chatd_udp_"));
        assert!(!text.contains("ocm-udp"));
        assert!(!text.contains("chatd_admin_responses_total"));
        parse(&text);
    }
}
