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

    /// Most connections open at once, all protocols together. Accepting pauses at the cap and
    /// resumes once the count is down to the cap less a tenth (at least one below the cap).
    pub connections_max: usize,
    /// Kernel accept backlog of each listener.
    pub listen_backlog: u32,
    /// Most connections accepted from one listener in one loop turn, so a connect storm cannot
    /// starve established clients.
    pub accepts_per_turn_max: usize,
    /// How long accepting pauses after the process runs out of descriptors (EMFILE, ENFILE).
    pub accept_pause_ms: u64,

    /// Most bytes one read from a socket returns (the size of the reactor's scratch buffer;
    /// a connection's own buffer grows by what arrived).
    pub read_chunk_bytes: usize,
    /// Most bytes read from one connection per readiness event before the loop serves others;
    /// the connection stays on the ready list and is served again next turn.
    pub read_budget_bytes: usize,
    /// Most buffers handed to one vectored write.
    pub write_iovecs_max: usize,

    /// Output queued for one connection beyond this closes it at once as a slow consumer.
    pub output_hard_bytes_max: usize,
    /// Output queued beyond this for longer than `output_soft_duration_ms` closes it.
    pub output_soft_bytes_max: usize,
    pub output_soft_duration_ms: u64,
    /// How long a connection closing after its last answer may take to drain its output.
    pub close_linger_ms: u64,

    /// ROOM: a connection that has not sent its alias this long after accept is closed.
    pub room_handshake_timeout_ms: u64,

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
    /// Where the durable offline store lives; created if missing.
    pub data_dir: PathBuf,
    /// Offline store limits per user (the contract's 100,000 frames or 64 MiB); a frame that
    /// does not fit is refused with "507".
    pub offline_frames_per_user_max: u64,
    pub offline_bytes_per_user_max: u64,
    /// Most store requests committed together (group commit).
    pub store_group_commit_max: usize,

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
            connections_max: 10_000,
            listen_backlog: 1024,
            accepts_per_turn_max: 256,
            accept_pause_ms: 100,
            read_chunk_bytes: 16 * 1024,
            read_budget_bytes: 256 * 1024,
            write_iovecs_max: 64,
            output_hard_bytes_max: 4 * 1024 * 1024,
            output_soft_bytes_max: 1024 * 1024,
            output_soft_duration_ms: 10_000,
            close_linger_ms: 2_000,
            room_handshake_timeout_ms: 60_000,
            bin24_ack_timeout_ms: 3_000,
            bin24_unacked_per_recipient_max: 10_000,
            bin24_offline_window_bytes: 256 * 1024,
            ccm_keepalive_idle_ms: 5_000,
            ccm_keepalive_answer_ms: 3_600,
            ccm_name_bytes_max: 64,
            data_dir: PathBuf::from("data"),
            offline_frames_per_user_max: 100_000,
            offline_bytes_per_user_max: 64 * 1024 * 1024,
            store_group_commit_max: 512,
            timer_tick_ms: 10,
            shutdown_grace_ms: 2_000,
            stats_interval_ms: 0,
        }
    }
}

impl Config {
    /// A configuration for tests: ROOM on an ephemeral port, BIN24 off (it needs a data
    /// directory of the test's own), short timers.
    pub fn for_tests() -> Self {
        Config {
            room_port: Some(0),
            bin24_port: None,
            ccm_port: None,
            timer_tick_ms: 1,
            ..Config::default()
        }
    }
}
