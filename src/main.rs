//! `chatd`: the Switchboard server. Arguments become a `Config`; the reactor does the rest.

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use log::{error, LevelFilter};

use std::path::PathBuf;

use switchboard::config::{Config, BIN24_PORT_DEFAULT, CCM_PORT_DEFAULT, ROOM_PORT_DEFAULT};
use switchboard::reactor::Server;

/// Switchboard chat server: one single-threaded, edge-triggered reactor serving several chat
/// wire protocols at once, each on its own port.
///
/// Protocols served now: ROOM (nickname chat room, port 55555) and BIN24 (direct messages
/// with acks and a durable offline store, port 7000) and CCM (HTTP-like messages with
/// identification tokens and a keepalive, port 5454). Every limit and timer below has
/// a default that matches the protocol contract; tests and operators may change them.
/// SIGINT or SIGTERM stops accepting, flushes queued output within the grace period and exits
/// 0; a second signal exits at once.
#[derive(Parser, Debug)]
#[command(name = "chatd", version, about, long_about)]
struct Args {
    /// Address every listener binds to. Loopback by default; 0.0.0.0 exposes the server.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    bind: IpAddr,

    /// ROOM port (nickname chat room, `alias?` handshake). 0 disables ROOM.
    #[arg(long, value_name = "PORT", default_value_t = ROOM_PORT_DEFAULT)]
    room_port: u16,

    /// ROOM: close a connection that has not sent a non-empty alias this long after connecting.
    #[arg(long, value_name = "MS", default_value_t = Config::default().room_handshake_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    room_handshake_timeout_ms: u64,

    /// BIN24 port (24-byte binary header, direct messages, acks, offline store). 0 disables
    /// BIN24.
    #[arg(long, value_name = "PORT", default_value_t = BIN24_PORT_DEFAULT)]
    bin24_port: u16,

    /// CCM port (HTTP-like text messages: identification, addressed delivery, keepalive).
    /// 0 disables CCM.
    #[arg(long, value_name = "PORT", default_value_t = CCM_PORT_DEFAULT)]
    ccm_port: u16,

    /// CCM: silence after which the server sends a `Connect` keepalive.
    #[arg(long, value_name = "MS", default_value_t = Config::default().ccm_keepalive_idle_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    ccm_keepalive_idle_ms: u64,

    /// CCM: how long a client has to send anything after a keepalive before it is closed.
    #[arg(long, value_name = "MS", default_value_t = Config::default().ccm_keepalive_answer_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    ccm_keepalive_answer_ms: u64,

    /// CCM: longest user name, in bytes (UTF-8).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().ccm_name_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    ccm_name_bytes_max: u64,

    /// BIN24: a forwarded message not answered ("200") this long makes its recipient count as
    /// disconnected: it is closed, and what it had not answered moves to its offline store.
    #[arg(long, value_name = "MS", default_value_t = Config::default().bin24_ack_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    bin24_ack_timeout_ms: u64,

    /// BIN24: most messages awaiting an answer from one recipient; further messages to it go
    /// to its offline store instead of its socket.
    #[arg(long, value_name = "N", default_value_t = Config::default().bin24_unacked_per_recipient_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    bin24_unacked_per_recipient_max: u64,

    /// BIN24: stored frames sent to a connecting user ahead of what its socket has taken, in
    /// bytes; a large backlog goes out a window at a time. Keep it below
    /// --output-soft-bytes-max.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().bin24_offline_window_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1024..))]
    bin24_offline_window_bytes: u64,

    /// Directory of the durable offline store (BIN24); created if missing. A corrupt or
    /// unreadable store stops the server with an error, it is never reset silently.
    #[arg(long, value_name = "DIR", default_value = "data")]
    data_dir: PathBuf,

    /// Offline store: most frames kept for one user; beyond it the sender gets "507".
    #[arg(long, value_name = "N", default_value_t = Config::default().offline_frames_per_user_max,
          value_parser = clap::value_parser!(u64).range(1..))]
    offline_frames_per_user_max: u64,

    /// Offline store: most bytes kept for one user; beyond it the sender gets "507".
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().offline_bytes_per_user_max,
          value_parser = clap::value_parser!(u64).range(1..))]
    offline_bytes_per_user_max: u64,

    /// Offline store: most requests made durable by one commit (group commit).
    #[arg(long, value_name = "N", default_value_t = Config::default().store_group_commit_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    store_group_commit_max: u64,

    /// Most connections open at once, all protocols together. At the cap new connections wait
    /// in the kernel's backlog; accepting resumes once the count is down to the cap less a tenth.
    #[arg(long, value_name = "N", default_value_t = Config::default().connections_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connections_max: u64,

    /// Kernel accept backlog of each listener.
    #[arg(long, value_name = "N", default_value_t = Config::default().listen_backlog)]
    listen_backlog: u32,

    /// Most connections accepted per listener per loop turn (fairness under connect storms).
    #[arg(long, value_name = "N", default_value_t = Config::default().accepts_per_turn_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    accepts_per_turn_max: u64,

    /// How long accepting pauses when the process runs out of file descriptors.
    #[arg(long, value_name = "MS", default_value_t = Config::default().accept_pause_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    accept_pause_ms: u64,

    /// Bytes taken from a socket per read.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().read_chunk_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    read_chunk_bytes: u64,

    /// Most bytes read from one connection per readiness event before others are served.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().read_budget_bytes as u64,
          value_parser = clap::value_parser!(u64).range(1024..))]
    read_budget_bytes: u64,

    /// Most buffers per vectored write.
    #[arg(long, value_name = "N", default_value_t = Config::default().write_iovecs_max as u64,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    write_iovecs_max: u64,

    /// Output queued for one connection beyond this closes it at once (slow consumer).
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().output_hard_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    output_hard_bytes_max: u64,

    /// Output queued beyond this for longer than --output-soft-duration-ms closes the connection.
    #[arg(long, value_name = "BYTES", default_value_t = Config::default().output_soft_bytes_max as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    output_soft_bytes_max: u64,

    /// How long output may stay over the soft limit.
    #[arg(long, value_name = "MS", default_value_t = Config::default().output_soft_duration_ms)]
    output_soft_duration_ms: u64,

    /// How long a connection closing after its last answer may take to drain its output.
    #[arg(long, value_name = "MS", default_value_t = Config::default().close_linger_ms)]
    close_linger_ms: u64,

    /// Timer wheel granularity; timers fire at most this late, never early.
    #[arg(long, value_name = "MS", default_value_t = Config::default().timer_tick_ms,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    timer_tick_ms: u64,

    /// On SIGINT/SIGTERM, how long to keep flushing queued output before exiting.
    #[arg(long, value_name = "MS", default_value_t = Config::default().shutdown_grace_ms)]
    shutdown_grace_ms: u64,

    /// Log a statistics line this often (0: only at shutdown).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    stats_interval_ms: u64,

    /// Log level: error, warn, info, debug or trace. Normal traffic is silent at info;
    /// connects and disconnects show at debug; problems (slow consumers, accept failures)
    /// at warn.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
}

impl Args {
    fn into_config(self) -> Result<Config, String> {
        if self.output_soft_bytes_max > self.output_hard_bytes_max {
            return Err(format!(
                "--output-soft-bytes-max ({}) must not exceed --output-hard-bytes-max ({})",
                self.output_soft_bytes_max, self.output_hard_bytes_max
            ));
        }
        let to_usize = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        Ok(Config {
            bind_addr: self.bind,
            room_port: (self.room_port != 0).then_some(self.room_port),
            room_handshake_timeout_ms: self.room_handshake_timeout_ms,
            bin24_port: (self.bin24_port != 0).then_some(self.bin24_port),
            ccm_port: (self.ccm_port != 0).then_some(self.ccm_port),
            ccm_keepalive_idle_ms: self.ccm_keepalive_idle_ms,
            ccm_keepalive_answer_ms: self.ccm_keepalive_answer_ms,
            ccm_name_bytes_max: to_usize(self.ccm_name_bytes_max),
            bin24_ack_timeout_ms: self.bin24_ack_timeout_ms,
            bin24_unacked_per_recipient_max: to_usize(self.bin24_unacked_per_recipient_max),
            bin24_offline_window_bytes: to_usize(self.bin24_offline_window_bytes),
            data_dir: self.data_dir,
            offline_frames_per_user_max: self.offline_frames_per_user_max,
            offline_bytes_per_user_max: self.offline_bytes_per_user_max,
            store_group_commit_max: to_usize(self.store_group_commit_max),
            connections_max: to_usize(self.connections_max),
            listen_backlog: self.listen_backlog,
            accepts_per_turn_max: to_usize(self.accepts_per_turn_max),
            accept_pause_ms: self.accept_pause_ms,
            read_chunk_bytes: to_usize(self.read_chunk_bytes),
            read_budget_bytes: to_usize(self.read_budget_bytes),
            write_iovecs_max: to_usize(self.write_iovecs_max),
            output_hard_bytes_max: to_usize(self.output_hard_bytes_max),
            output_soft_bytes_max: to_usize(self.output_soft_bytes_max),
            output_soft_duration_ms: self.output_soft_duration_ms,
            close_linger_ms: self.close_linger_ms,
            timer_tick_ms: self.timer_tick_ms,
            shutdown_grace_ms: self.shutdown_grace_ms,
            stats_interval_ms: self.stats_interval_ms,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(message) => {
            error!("{message}");
            return ExitCode::from(2);
        }
    };
    if config.room_port.is_none() && config.bin24_port.is_none() && config.ccm_port.is_none() {
        error!("every protocol is disabled: nothing to serve");
        return ExitCode::from(2);
    }
    let mut server = match Server::bind(config) {
        Ok(server) => server,
        Err(err) => {
            error!("{err}");
            return ExitCode::from(1);
        }
    };
    if let Err(err) = server.handle_signals() {
        error!("cannot install the SIGINT/SIGTERM handlers: {err}");
        return ExitCode::from(1);
    }
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            error!("the event loop failed: {err}");
            ExitCode::from(1)
        }
    }
}
