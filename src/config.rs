//! Every port, limit and timer of the server, with its default. Units come last in names.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Default ports, as the contract fixes them (0 disables a protocol).
pub const ROOM_PORT_DEFAULT: u16 = 55555;
pub const BIN24_PORT_DEFAULT: u16 = 7000;
pub const CCM_PORT_DEFAULT: u16 = 5454;
pub const MATOU_PORT_DEFAULT: u16 = 7777;
pub const OCM_TCP_PORT_DEFAULT: u16 = 9002;
pub const OCM_UDP_PORT_DEFAULT: u16 = 9003;
pub const OCM_RELAY_PORT_DEFAULT: u16 = 9001;
/// WEB (the page and its WebSocket): HTTP's usual alternative port; not in the contract.
pub const WEB_PORT_DEFAULT: u16 = 8080;

/// The most admin connections the reactor can hold: they use the reserved tokens 8..16.
pub const ADMIN_CONNECTIONS_CAP: usize = 8;

#[derive(Clone, Debug)]
pub struct Config {
    /// Address every listener binds to. Loopback by default; `0.0.0.0` exposes the server.
    pub bind_addr: IpAddr,
    /// ROOM listener port. `None`: disabled; `Some(0)`: an ephemeral port (tests).
    pub room_port: Option<u16>,
    /// BIN24 listener port, as `room_port`.
    pub bin24_port: Option<u16>,
    /// CCM listener port, as `room_port`.
    pub ccm_port: Option<u16>,
    /// MATOU listener port, as `room_port`.
    pub matou_port: Option<u16>,
    /// OCM: the TCRP listener (TCP) and the chat socket (UDP); both or neither.
    pub ocm_tcp_port: Option<u16>,
    pub ocm_udp_port: Option<u16>,
    /// OCM stage-1 relay (UDP), as `room_port`.
    pub ocm_relay_port: Option<u16>,
    /// WEB: the page (`GET /`) and its WebSocket (`GET /ws`), as `room_port`.
    pub web_port: Option<u16>,
    /// WEB: the origins whose pages may open the WebSocket (exact `scheme://host[:port]`);
    /// `None`: only `http://<Host>`, the request's own host.
    pub web_origins: Option<Vec<String>>,
    /// WEB: largest message (all its fragments) and frame payload, in bytes; over it the
    /// connection is closed (1009).
    pub web_message_bytes_max: usize,
    /// WEB: longest `text` of a `say` or `direct`, in bytes of UTF-8.
    pub web_text_bytes_max: usize,
    /// WEB: `say` and `direct` messages one web user may send per second (a second's worth at
    /// once); over it they are refused `rate-limited`. 0: no limit.
    pub web_messages_per_s_max: u64,
    /// `--cluster`: a web user's `direct`s to another node's user awaiting their receipt at
    /// once, of one sender and on this node; one more is refused `busy`, not sent.
    pub web_receipts_per_sender_max: usize,
    pub web_receipts_max: usize,
    /// TLS listeners (issue 23), each beside its protocol's plaintext one and serving the same
    /// protocol over TLS; `None` (the default): off, `Some(0)`: an ephemeral port (tests).
    /// They need `tls_cert_path` and `tls_key_path`.
    pub room_tls_port: Option<u16>,
    pub bin24_tls_port: Option<u16>,
    pub ccm_tls_port: Option<u16>,
    pub matou_tls_port: Option<u16>,
    /// OCM's TCRP over TLS (OCM must be enabled: its UDP chat socket is not covered by TLS).
    pub ocm_tcp_tls_port: Option<u16>,
    /// WEB over TLS: the page over https and the WebSocket over wss.
    pub web_tls_port: Option<u16>,
    /// The admin port speaks https instead of http.
    pub admin_tls: bool,
    /// The TLS certificate chain (PEM, leaf first) and private key (PEM); read at startup and
    /// again on SIGHUP.
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// Admin port: the metrics in the Prometheus text format over HTTP (`GET /metrics`).
    /// `None` (the default): off; `Some(0)`: an ephemeral port (tests).
    pub admin_port: Option<u16>,
    /// Address the admin port binds to: loopback by default, apart from `bind_addr`, so that
    /// exposing the chat ports does not expose the metrics too.
    pub admin_bind_addr: IpAddr,
    /// Most admin connections open at once (at most [`ADMIN_CONNECTIONS_CAP`]); one more is
    /// answered 503 and closed as soon as it is accepted.
    pub admin_connections_max: usize,
    /// An admin connection must send its whole request, and take the whole answer, this long
    /// after it was accepted, or it is closed.
    pub admin_request_timeout_ms: u64,
    /// Largest admin request (request line and headers), in bytes; larger is answered 400.
    pub admin_request_bytes_max: usize,

    /// Most connections open at once, all protocols together. Accepting pauses at the cap and
    /// resumes once the count is down to the cap less a tenth (at least one below the cap).
    pub connections_max: usize,
    /// Kernel accept backlog of each listener; the kernel caps it at `net.core.somaxconn`.
    /// 1024 took 10,000 BIN24 connects a second without an overflow; 4096 was measured worse
    /// for a ROOM join storm (docs/BENCHMARKS.md, "Connect path").
    pub listen_backlog: u32,
    /// Most connections accepted from one listener in one loop turn, so a connect storm cannot
    /// starve established clients.
    pub accepts_per_turn_max: usize,
    /// How long accepting pauses after the process runs out of descriptors (EMFILE, ENFILE).
    pub accept_pause_ms: u64,

    /// SO_SNDBUF of every accepted TCP connection (set on the listeners, inherited), so a reader
    /// that stops reading costs bounded kernel memory (Linux keeps about twice this) and writes
    /// to it stop early. 0: the kernel's autotuning (up to net.ipv4.tcp_wmem's maximum).
    pub tcp_send_buffer_bytes: usize,

    /// Most bytes one read from a socket returns (the size of the reactor's scratch buffer;
    /// a connection's own buffer grows by what arrived).
    pub read_chunk_bytes: usize,
    /// Most bytes read from one connection per readiness event before the loop serves others;
    /// the connection stays on the ready list and is served again next turn. 64 KiB: what one
    /// source may make a turn do (64 KiB of the smallest MATOU packets is 4,700 of them).
    pub read_budget_bytes: usize,
    /// Most buffers handed to one vectored write.
    pub write_iovecs_max: usize,
    /// Most bytes written to connections per loop turn, all together; connections not served
    /// when it runs out are first in line next turn. Bounds the time a turn spends copying to
    /// the kernel (a fan-out to many members that read, or a burst after they were slow).
    pub write_budget_bytes: usize,

    /// Output queued for one connection beyond this closes it at once as a slow consumer.
    pub output_hard_bytes_max: usize,
    /// Output queued beyond this for longer than `output_soft_duration_ms` closes it.
    pub output_soft_bytes_max: usize,
    pub output_soft_duration_ms: u64,
    /// How long a connection closing after its last answer may take to drain its output.
    pub close_linger_ms: u64,

    /// ROOM: a connection that has not sent its alias this long after accept is closed.
    pub room_handshake_timeout_ms: u64,
    /// BIN24, CCM and MATOU: a connection that has not identified its user this long after
    /// accept is closed (BIN24: its first valid frame; CCM: a name accepted; MATOU: a name
    /// taken). ROOM has its own (`room_handshake_timeout_ms`) and OCM's TCRP connections
    /// theirs (`ocm_tcrp_request_timeout_ms`).
    pub handshake_timeout_ms: u64,
    /// Most connections open at once from one peer IP address, all TCP protocols together;
    /// the next one is closed as soon as it is accepted. 0: no limit.
    pub connections_per_ip_max: u32,
    /// Input each TCP connection may send, in bytes per second, with `input_burst_bytes_max`
    /// saved up (a token bucket); a connection beyond it is closed. 0: no limit.
    pub input_bytes_per_s_max: u64,
    pub input_burst_bytes_max: u64,
    /// UDP (OCM chat socket and stage-1 relay): datagrams each source address (IP and port)
    /// may send per second, with `udp_datagrams_per_source_burst_max` saved up; beyond it
    /// datagrams are dropped and counted. 0: no limit.
    pub udp_datagrams_per_source_per_s_max: u64,
    pub udp_datagrams_per_source_burst_max: u64,
    /// UDP: most source addresses rate-tracked per socket; while the table is full of active
    /// sources, datagrams from new ones are dropped.
    pub udp_sources_max: usize,

    /// BIN24: a forwarded message not answered this long makes its recipient count as
    /// disconnected (the contract's 3 s).
    pub bin24_ack_timeout_ms: u64,
    /// BIN24: most messages awaiting an answer from one recipient; more go to its store.
    pub bin24_unacked_per_recipient_max: usize,
    /// BIN24: stored frames queued to a connecting user and not yet written, in bytes; its
    /// backlog goes out a window at a time so it never trips the output limits.
    pub bin24_offline_window_bytes: usize,
    /// CCM: silence after which the server sends `Connect` (the contract's 5000 ms), and how
    /// long the client then has to send anything before it is closed (3600 ms).
    pub ccm_keepalive_idle_ms: u64,
    pub ccm_keepalive_answer_ms: u64,
    /// CCM: longest user name, in bytes.
    pub ccm_name_bytes_max: usize,
    /// CCM: bytes one user's messages may make others receive per second, in all and to one
    /// other user; over either the sender gets Error `rate-limited`. 0: no limit.
    pub ccm_sender_bytes_per_s_max: u64,
    pub ccm_pair_bytes_per_s_max: u64,
    /// MATOU: longest user name and public message, in bytes (the contract's 32 and 512),
    /// and the framing limit of any string: a larger size is a protocol error that closes.
    pub matou_name_bytes_max: usize,
    pub matou_message_bytes_max: usize,
    pub matou_string_bytes_max: usize,
    /// MATOU: most private-link requests one user may have waiting for an answer.
    pub matou_pending_requests_per_user_max: usize,
    /// MATOU: private requests per second from one user, and from one user to one other;
    /// beyond either the sender gets ERROR 12 and the recipient nothing. 0: no limit.
    pub matou_private_requests_per_s_max: u64,
    pub matou_private_requests_per_pair_per_s_max: u64,
    /// OCM: largest TCRP payload accepted, in bytes; larger is answered 500 from the header.
    pub ocm_tcrp_payload_bytes_max: usize,
    /// OCM: a TCRP connection that has not sent a whole request this long after connecting
    /// is closed.
    pub ocm_tcrp_request_timeout_ms: u64,
    /// OCM: longest room and user names, in bytes.
    pub ocm_room_name_bytes_max: usize,
    pub ocm_user_name_bytes_max: usize,
    /// OCM and the stage-1 relay: a member or peer silent this long is removed (600 s).
    pub ocm_idle_timeout_ms: u64,
    /// OCM and the stage-1 relay: failed sends in a row after which a member is removed.
    pub ocm_send_failures_max: u32,
    /// OCM: most rooms, and most members in one room.
    pub ocm_rooms_max: usize,
    /// OCM: most rooms whose host came from one IP address (0: no limit).
    pub ocm_rooms_per_ip_max: u32,
    /// OCM: a room none of whose members sent an accepted datagram this long after its
    /// creation is closed (0: never).
    pub ocm_room_silent_timeout_ms: u64,
    pub ocm_room_members_max: usize,
    /// OCM: send the document's state-1 acknowledgement before the answer. Off by default:
    /// the original client takes the first answer as final.
    pub ocm_ack_state1: bool,
    /// `--isolate`: the switchboard is off, every protocol stays apart exactly as its own
    /// section says (contract section SWITCHBOARD).
    pub isolate: bool,
    /// `--lobby-ocm-room`: the OCM room whose members are in the switchboard's lobby.
    pub lobby_ocm_room: String,
    /// `--cluster` and `--node-name`: join the nodes sharing this Redis (docs/CLUSTER.md).
    /// `None`: a node alone, no network service needed.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// `--reuse-port`: SO_REUSEPORT on every TCP listener and UDP socket, so that several
    /// nodes on one machine share the ports (the kernel spreads connections among them).
    pub reuse_port: bool,
    /// Stage-1 relay: most peers remembered at once, and from one IP address (0: no limit).
    pub ocm_relay_peers_max: usize,
    pub ocm_relay_peers_per_ip_max: u32,
    /// UDP: most datagrams read from one socket per loop turn before others are served.
    pub udp_datagrams_per_turn_max: usize,
    /// `--cluster`: most events of other nodes handed to the hub per loop turn; more wait for
    /// the next turns (which come at once), so a burst from Redis cannot hold local work.
    pub cluster_events_per_turn_max: usize,
    /// UDP (OCM chat and the relay): datagrams sent per second by one socket's fan-outs, in
    /// total and for the datagrams of one source address; a datagram whose fan-out the budget
    /// cannot cover is relayed to no one, and counted (fanout_budget). 0: no limit.
    pub udp_sends_per_s_max: u64,
    pub udp_sends_per_source_per_s_max: u64,
    /// UDP: most datagrams one socket sends per loop turn; the rest wait in a bounded queue
    /// for the next turns (nothing new is read from the socket meanwhile), so one socket
    /// cannot hold the loop while others wait.
    pub udp_sends_per_turn_max: usize,
    /// UDP: send and receive buffer asked of the kernel for each UDP socket (the kernel may
    /// cap it at net.core.rmem_max / wmem_max).
    pub udp_socket_buffer_bytes: usize,
    /// Where the durable offline store lives; created if missing.
    pub data_dir: PathBuf,
    /// Offline store limits per user (the contract's 100,000 frames or 64 MiB); a frame that
    /// does not fit is refused with "507".
    pub offline_frames_per_user_max: u64,
    pub offline_bytes_per_user_max: u64,
    /// Most store requests committed together (group commit).
    pub store_group_commit_max: usize,
    /// Offline store limits for every user together: what bounds the disk whatever the number
    /// of recipients; beyond them the sender gets "507".
    pub store_frames_max: u64,
    pub store_bytes_max: u64,
    /// Store requests queued for the storage thread at which BIN24 stops reading its
    /// connections until the thread catches up (backpressure instead of unbounded memory).
    pub store_requests_max: usize,
    /// BIN24: a stored frame acknowledged by the recipient's TCP counts as delivered once its
    /// connection stays up this long after (unless the client answers it first).
    pub bin24_delivery_grace_ms: u64,
    /// BIN24: most bytes of stored frames sent to one connection and not yet delivered.
    pub bin24_unconfirmed_bytes_per_conn_max: usize,
    /// BIN24: most bytes of stored frames in memory for all connections together.
    pub bin24_loaded_bytes_max: usize,
    /// BIN24: who may log in, and from where (`--bin24-users`); None lets anyone.
    pub bin24_users: Option<crate::protocol::bin24::UserList>,
    /// BIN24: bytes one user's messages may make online users receive per second, in all and
    /// to one recipient; over either the sender is answered "429". 0: no limit.
    pub bin24_sender_bytes_per_s_max: u64,
    pub bin24_pair_bytes_per_s_max: u64,

    /// Granularity of the timer wheel; timers fire at most one tick late, never early.
    pub timer_tick_ms: u64,
    /// On SIGINT/SIGTERM: how long to keep flushing queued output before exiting.
    pub shutdown_grace_ms: u64,
    /// Log a statistics line this often (0: only at shutdown).
    pub stats_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            room_port: Some(ROOM_PORT_DEFAULT),
            bin24_port: Some(BIN24_PORT_DEFAULT),
            ccm_port: Some(CCM_PORT_DEFAULT),
            matou_port: Some(MATOU_PORT_DEFAULT),
            ocm_tcp_port: Some(OCM_TCP_PORT_DEFAULT),
            ocm_udp_port: Some(OCM_UDP_PORT_DEFAULT),
            ocm_relay_port: Some(OCM_RELAY_PORT_DEFAULT),
            web_port: Some(WEB_PORT_DEFAULT),
            web_origins: None,
            web_message_bytes_max: 4096,
            web_text_bytes_max: 1000,
            web_messages_per_s_max: 20,
            web_receipts_per_sender_max: crate::hub::WEB_RECEIPTS_PER_SENDER_MAX,
            web_receipts_max: crate::hub::WEB_RECEIPTS_MAX,
            room_tls_port: None,
            bin24_tls_port: None,
            ccm_tls_port: None,
            matou_tls_port: None,
            ocm_tcp_tls_port: None,
            web_tls_port: None,
            admin_tls: false,
            tls_cert_path: None,
            tls_key_path: None,
            admin_port: None,
            admin_bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_connections_max: 4,
            admin_request_timeout_ms: 2_000,
            admin_request_bytes_max: 8 * 1024,
            connections_max: 10_000,
            listen_backlog: 1024,
            accepts_per_turn_max: 256,
            accept_pause_ms: 100,
            tcp_send_buffer_bytes: 128 * 1024,
            read_chunk_bytes: 16 * 1024,
            read_budget_bytes: 64 * 1024,
            write_iovecs_max: 64,
            write_budget_bytes: 4 * 1024 * 1024,
            output_hard_bytes_max: 4 * 1024 * 1024,
            output_soft_bytes_max: 1024 * 1024,
            output_soft_duration_ms: 10_000,
            close_linger_ms: 2_000,
            room_handshake_timeout_ms: 60_000,
            handshake_timeout_ms: 10_000,
            connections_per_ip_max: 256,
            input_bytes_per_s_max: 64 * 1024 * 1024,
            input_burst_bytes_max: 16 * 1024 * 1024,
            udp_datagrams_per_source_per_s_max: 10_000,
            udp_datagrams_per_source_burst_max: 10_000,
            udp_sources_max: 65_536,
            bin24_ack_timeout_ms: 3_000,
            bin24_unacked_per_recipient_max: 10_000,
            bin24_offline_window_bytes: 256 * 1024,
            ccm_keepalive_idle_ms: 5_000,
            ccm_keepalive_answer_ms: 3_600,
            ccm_name_bytes_max: 64,
            ccm_sender_bytes_per_s_max: 8 * 1024 * 1024,
            ccm_pair_bytes_per_s_max: 2 * 1024 * 1024,
            matou_name_bytes_max: 32,
            matou_message_bytes_max: 512,
            matou_string_bytes_max: 4096,
            matou_pending_requests_per_user_max: 64,
            matou_private_requests_per_s_max: 20,
            matou_private_requests_per_pair_per_s_max: 2,
            ocm_tcrp_payload_bytes_max: 64 * 1024,
            ocm_tcrp_request_timeout_ms: 10_000,
            ocm_room_name_bytes_max: 255,
            ocm_user_name_bytes_max: 255,
            ocm_idle_timeout_ms: 600_000,
            ocm_send_failures_max: 3,
            ocm_rooms_max: 10_000,
            ocm_rooms_per_ip_max: 32,
            ocm_room_silent_timeout_ms: 120_000,
            ocm_room_members_max: 1_000,
            ocm_ack_state1: false,
            isolate: false,
            lobby_ocm_room: "lobby".to_string(),
            cluster: None,
            reuse_port: false,
            ocm_relay_peers_max: 1_000,
            ocm_relay_peers_per_ip_max: 100,
            udp_datagrams_per_turn_max: 1024,
            cluster_events_per_turn_max: 1024,
            udp_sends_per_s_max: 250_000,
            udp_sends_per_source_per_s_max: 20_000,
            udp_sends_per_turn_max: 512,
            udp_socket_buffer_bytes: 4 * 1024 * 1024,
            data_dir: PathBuf::from("data"),
            offline_frames_per_user_max: 100_000,
            offline_bytes_per_user_max: 64 * 1024 * 1024,
            store_group_commit_max: 512,
            store_frames_max: 10_000_000,
            store_bytes_max: 1024 * 1024 * 1024,
            store_requests_max: 4096,
            bin24_delivery_grace_ms: 5_000,
            bin24_unconfirmed_bytes_per_conn_max: 64 * 1024 * 1024,
            bin24_loaded_bytes_max: 64 * 1024 * 1024,
            bin24_users: None,
            bin24_sender_bytes_per_s_max: 8 * 1024 * 1024,
            bin24_pair_bytes_per_s_max: 2 * 1024 * 1024,
            timer_tick_ms: 10,
            shutdown_grace_ms: 2_000,
            stats_interval_ms: 0,
        }
    }
}

impl Config {
    /// True when no protocol has a port: nothing to serve.
    pub fn serves_nothing(&self) -> bool {
        [
            self.room_port,
            self.bin24_port,
            self.ccm_port,
            self.matou_port,
            self.ocm_tcp_port,
            self.ocm_udp_port,
            self.ocm_relay_port,
            self.web_port,
        ]
        .iter()
        .chain(self.tls_ports().iter())
        .all(Option::is_none)
    }

    /// The TLS listeners' ports, one per protocol that has a TLS front door.
    pub fn tls_ports(&self) -> [Option<u16>; 6] {
        [
            self.room_tls_port,
            self.bin24_tls_port,
            self.ccm_tls_port,
            self.matou_tls_port,
            self.ocm_tcp_tls_port,
            self.web_tls_port,
        ]
    }

    /// Whether anything is served over TLS (a TLS listener, or the admin port's https).
    pub fn uses_tls(&self) -> bool {
        self.admin_tls || self.tls_ports().iter().any(Option::is_some)
    }

    /// A configuration for tests: ROOM on an ephemeral port, every other protocol off (BIN24
    /// needs a data directory of the test's own), short timers.
    pub fn for_tests() -> Self {
        Config {
            room_port: Some(0),
            bin24_port: None,
            ccm_port: None,
            matou_port: None,
            ocm_tcp_port: None,
            ocm_udp_port: None,
            ocm_relay_port: None,
            web_port: None,
            timer_tick_ms: 1,
            ..Config::default()
        }
    }
}
