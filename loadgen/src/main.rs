//! `loadgen`: an open-loop load generator for Switchboard.
//!
//! Each subcommand is a scenario. The plan gives every message an intended send time before the
//! run starts; messages are sent when due whatever the server does, and every latency is
//! measured from the intended time, so a stalled server shows up in the percentiles instead of
//! pausing the measurement (no coordinated omission). See shared design, "The load generator".
//!
//! Module map:
//! - `args`: duration parser, loopback-only target resolution
//! - `clock`, `pacer`: the µs clock and the timerfd that wakes the loop on time
//! - `plan`: intended send times; `record`: the stamp in every message and its stream scanner
//! - `stats`: histograms, sequence tracking, error counters; `report`: verdict, text, JSON
//! - `room`: the ROOM scenario's mio loop
//! - `limits`: the open-files limit

mod args;
mod clock;
mod limits;
mod pacer;
mod plan;
mod record;
mod report;
mod room;
mod stats;

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::args::{parse_duration, resolve_loopback};
use crate::record::{ALIAS_PREFIX_LEN, RECORD_LEN_MAX, RECORD_LEN_MIN};
use crate::report::Report;
use crate::room::{RoomConfig, RoomError};

/// Exit codes: 0 all delivered, 1 something lost/duplicated/failed, 2 cannot run at all.
const EXIT_BAD_RUN: u8 = 2;
/// Most connections one loadgen process opens.
const CLIENTS_MAX: usize = 10_000;
/// Most senders: the loss table holds one counter per (client, sender).
const SENDERS_MAX: usize = 1_000;
const RATE_PER_S_MAX: u64 = 1_000_000;
const MESSAGE_BYTES_MIN: usize = ALIAS_PREFIX_LEN + RECORD_LEN_MIN;
const MESSAGE_BYTES_MAX: usize = 65_536;
const DURATION_MAX: Duration = Duration::from_secs(3_600);
const WARMUP_MAX: Duration = Duration::from_secs(600);
const DRAIN_MAX: Duration = Duration::from_secs(600);
// Sequence numbers are tracked in u32 (see `stats::SeqTracker`): even one sender at the highest
// rate for the longest warmup and duration stays below 2^32 messages.
const _: () =
    assert!(RATE_PER_S_MAX * (DURATION_MAX.as_secs() + WARMUP_MAX.as_secs()) <= u32::MAX as u64);
/// Descriptors beyond the clients' sockets: stdio, epoll, timerfd, the JSON file, slack.
const SPARE_FILES: u64 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop load generator for Switchboard: many simulated clients, latency measured \
             from each message's intended send time",
    after_help = "Exit status: 0 when nothing was lost, duplicated or left unsent and there were \
                  no errors; 1 otherwise (or on an INVALID run with --strict); 2 on bad arguments \
                  or when the server cannot be reached at all.\n\
                  Targets are limited to this machine (127.0.0.0/8 and ::1)."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// ROOM: clients join one chat room; senders send stamped messages on a fixed plan and
    /// every member (senders included) times and checks every relayed message.
    Room(RoomArgs),
}

/// Flags every scenario shares: where, how long, and where the results go.
#[derive(Args, Debug)]
struct CommonArgs {
    /// Server host. Only loopback addresses are allowed (127.0.0.0/8, ::1, localhost).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Measured duration of the message phase (after the warmup), e.g. 10s, 500ms, 2m. At most 1h.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Warmup before the measured window: messages are sent and checked for loss but kept out
    /// of the histograms and rates. At most 10m.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// How long to wait after the last planned send for messages still in flight; messages not
    /// delivered by then are losses. The run ends earlier once everything has arrived. At most 10m.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    drain: Duration,

    /// Connections opened per second during the ramp-up (each one's connect latency is measured
    /// from its planned connect time). The ramp-up gives up after max(10 s, 3 x the planned
    /// ramp-up); a client that has not joined by then is a connect error.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connect_rate: u64,

    /// Also write the results as JSON to this file (created before the run, so a bad path fails
    /// at once rather than after it).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Seed for the run's random choices (which clients send), so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Exit 1 on an INVALID run too (the loadgen fell behind its plan). Without it, INVALID is
    /// reported but only losses, duplicates, unsent messages and errors fail the exit code.
    #[arg(long)]
    strict: bool,
}

#[derive(Args, Debug)]
struct RoomArgs {
    /// Server port of the ROOM listener.
    #[arg(long, default_value_t = 55_555)]
    port: u16,

    /// Connections (room members) to open, at most 10000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX as u64))]
    clients: u64,

    /// How many of the members send, at most 1000 and at most --clients. The others only receive.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=SENDERS_MAX as u64))]
    senders: u64,

    /// Messages per second over all senders together (each sender sends rate/senders per
    /// second, evenly spaced, the senders phase-shifted so the load is spread).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    rate: u64,

    /// Bytes of each message on the wire, `lgNNNNNN: ` prefix and newline included; the stamp
    /// is padded to reach it. From 63 to 65536. Messages larger than the server's read size are
    /// relayed in pieces, which ROOM may interleave with other senders' messages.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Room(args) => run_room(args),
    }
}

/// Prints an argument or setup problem and returns exit code 2.
fn refuse(why: impl std::fmt::Display) -> ExitCode {
    eprintln!("loadgen: {why}");
    ExitCode::from(EXIT_BAD_RUN)
}

fn check_common(common: &CommonArgs) -> Result<(), String> {
    if common.duration.is_zero() || common.duration > DURATION_MAX {
        return Err("--duration must be more than 0 and at most 1h".into());
    }
    if common.warmup > WARMUP_MAX {
        return Err("--warmup must be at most 10m".into());
    }
    if common.drain > DRAIN_MAX {
        return Err("--drain must be at most 10m".into());
    }
    Ok(())
}

fn run_room(args: RoomArgs) -> ExitCode {
    let common = &args.common;
    if let Err(why) = check_common(common) {
        return refuse(why);
    }
    let clients = args.clients as usize;
    let senders = args.senders as usize;
    if senders > clients {
        return refuse(format!(
            "--senders ({senders}) cannot exceed --clients ({clients})"
        ));
    }
    if !(MESSAGE_BYTES_MIN..=MESSAGE_BYTES_MAX).contains(&args.payload_bytes)
        || args.payload_bytes - ALIAS_PREFIX_LEN > RECORD_LEN_MAX
    {
        return refuse(format!(
            "--payload-bytes must be between {MESSAGE_BYTES_MIN} (the alias prefix and the \
             stamp) and {MESSAGE_BYTES_MAX}"
        ));
    }
    let target = match resolve_loopback(&common.host, args.port) {
        Ok(target) => target,
        Err(why) => return refuse(why),
    };
    if let Err(why) = limits::ensure_open_files(clients as u64 + SPARE_FILES) {
        return refuse(why);
    }
    let mut json_out = match &common.json {
        Some(path) => match File::create(path) {
            Ok(file) => Some((path, BufWriter::new(file))),
            Err(e) => return refuse(format!("cannot create {}: {e}", path.display())),
        },
        None => None,
    };

    let cfg = RoomConfig {
        target,
        clients,
        senders,
        rate_per_s: args.rate,
        duration_us: common.duration.as_micros() as u64,
        warmup_us: common.warmup.as_micros() as u64,
        drain_us: common.drain.as_micros() as u64,
        message_bytes: args.payload_bytes,
        connect_rate_per_s: common.connect_rate,
        seed: common.seed,
        progress: std::io::stderr().is_terminal(),
    };
    let outcome = match room::run(&cfg) {
        Ok(outcome) => outcome,
        Err(e) => {
            // No results: leave no empty JSON file behind for a script to mistake for some.
            if let Some(path) = &common.json {
                drop(json_out.take());
                let _ = std::fs::remove_file(path);
            }
            return match e {
                RoomError::Unreachable(why) => refuse(format!(
                    "no client could join a ROOM server at {target}: {why}"
                )),
                RoomError::Setup(why) => refuse(format!("setup failed: {why}")),
            };
        }
    };

    let report = Report::room(&cfg, senders, common.strict, &outcome);
    print!("{}", report.to_text());
    if let Some((path, out)) = json_out.as_mut() {
        let written = serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            eprintln!("loadgen: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::from(report.outcome.exit_code as u8)
}
