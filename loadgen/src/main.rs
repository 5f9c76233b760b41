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
//! - `room`: the ROOM scenario's mio loop, which also runs it against Redis pub/sub (`resp`)
//! - `resp`: the RESP2 commands that scenario sends and the reader for what Redis sends back
//! - `web`: that scenario against chatd's WebSocket lobby (`web`): the client side of WEB's
//!   wire (upgrade, masked frames, the server's JSON messages)
//! - `bin24`: the BIN24 scenario: its loop, the per-message ledger, partners, stamp and report
//! - `ccm`: the CCM scenario: its loop, the text stamp, the client side of the contract
//!   (messages, keepalive answers, checks of what arrives) and its report (partners: BIN24's)
//! - `ocm`: the OCM scenario: rooms created and joined over TCP (TCRP), chat over UDP, leave
//!   texts at the end; UDP loss as a figure, failing the run above `--loss-max`
//! - `matou`: the MATOU scenario: its loop, the text stamp, the client side of the contract
//!   (names, packets, notice and delivery accounting), link brokering and its report
//! - `lobby`: the switchboard's lobby: ROOM, MATOU, CCM and OCM members all sending, every
//!   member checking every lobby message whatever protocol it came from, latency per
//!   (origin, destination) pair and same- vs cross-protocol
//! - `hgrm`, `plot`: `--hgrm` percentile distributions and the `--plot` SVG of a run's histograms
//! - `limits`: the open-files limit
//! - `connect`: the one TCP connect every scenario uses, spreading loopback sources over 127/8
//! - `sockio`: reading a connection's bytes, writing its pending ones until done or WouldBlock
//! - `driver`: the loop turn every scenario shares, and the mix's outer loop
//! - `registry`: the one list of protocols that `main`, `mix` and `churn` read, and the
//!   [`registry::ScenarioKind`] each protocol's scenario implements
//! - `<scenario>/args.rs`: the scenario's subcommand flags and their checks, turned into its
//!   config ([`registry::ScenarioArgs`]), and its share of `mix` turned into the same config

mod args;
mod bin24;
mod ccm;
mod churn;
mod clock;
mod connect;
mod course;
mod driver;
mod engine;
mod hgrm;
mod limits;
mod lobby;
mod matou;
mod mix;
mod ocm;
mod pacer;
mod plan;
mod plot;
mod record;
mod registry;
mod report;
mod resp;
mod room;
mod sockio;
mod stats;
mod textstamp;
mod tls;
mod web;

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::args::{parse_duration, resolve_loopback};
use crate::plan::SplitMix64;
use crate::report::ScenarioReport;
use crate::stats::LatencyHistogram;

/// Exit codes: 0 all delivered, 1 something lost/duplicated/failed, 2 cannot run at all.
const EXIT_BAD_RUN: u8 = 2;
/// Most connections one loadgen process opens.
const CLIENTS_MAX: usize = 10_000;
/// Most senders: the loss table holds one counter per (client, sender).
const SENDERS_MAX: usize = 1_000;
const RATE_PER_S_MAX: u64 = 1_000_000;
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
    Room(room::args::RoomArgs),
    /// RESP: the ROOM scenario against Redis pub/sub, for comparison: every member SUBSCRIBEs
    /// to one channel (and counts as joined at the confirmation); each sender PUBLISHes the
    /// same stamped messages over a connection of its own and checks every reply (the number
    /// of subscribers reached). Every member (senders included) times and checks every message.
    Resp(room::args::RespArgs),
    /// WEB: the ROOM scenario against chatd's WebSocket lobby (`--web-port`, `/ws`): every
    /// member upgrades and signs in; senders send the stamped messages as `say` frames and
    /// every member (senders included, as the server echoes) times and checks every lobby
    /// message. chatd allows a web user --web-messages-per-s-max (20) messages per second:
    /// --rate / --senders above that needs the flag raised. --payload-bytes at most 1001 (the
    /// text, without the newline, within chatd's --web-text-bytes-max 1000).
    Web(web::args::WebArgs),
    /// BIN24: users send direct messages to a partner on a fixed plan; recipients answer
    /// "200"; a share of the users stays offline, so messages to them are stored ("300") and
    /// delivered as type 2 when the loadgen connects them at the end. Every message is
    /// accounted for.
    Bin24(bin24::args::Bin24Args),
    /// CCM: identified users send Text messages to a partner on a fixed plan; receivers time
    /// and check every delivery; everyone answers the server's Connect keepalives. Optional
    /// silent users identify and never speak again: the report shows when the server closed
    /// them.
    Ccm(ccm::args::CcmArgs),
    /// OCM: rooms are created (host) and joined (guests) over TCP with TCRP, each request timed
    /// from its intended time; members then chat over UDP on a fixed plan and every other
    /// member of the room times and checks every message; UDP loss is reported (and fails the
    /// run above --loss-max); at the end guests and hosts leave and the leave texts are
    /// checked. --connect-rate does not apply: --room-rate paces the rooms.
    Ocm(ocm::args::OcmArgs),
    /// MATOU: users log in to the public room; senders send stamped public messages on a fixed
    /// plan and every user (the sender included) times and checks every broadcast; private
    /// links are brokered on a second plan (request, accept, addresses), each timed from its
    /// intended time to the address at Dst. Join and sign-out notices are checked per pair.
    Matou(matou::args::MatouArgs),
    /// LOBBY: members of ROOM, MATOU, CCM and OCM (and WEB with --web) in chatd's one lobby
    /// (the switchboard), every one of them sending on one plan; every member times and checks
    /// every lobby message it must get, whatever protocol it was said in (ROOM, MATOU and WEB
    /// members get their own back). Latency per (origin, destination) protocol pair, and
    /// same-protocol against cross-protocol. Not part of `mix`.
    Lobby(lobby::args::LobbyArgs),
    /// Churn: short-lived connections on an open-loop plan, dealt round-robin over the
    /// protocols: each signs in, waits for the server's answer, then leaves cleanly, with a
    /// reset, in the middle of a frame, or before signing in. For soak runs beside a scenario
    /// (scripts/soak.sh); it checks every answer and fails on any error.
    Churn(ChurnArgs),
    /// All five at once against one server (or those named by --protocols): --clients split
    /// evenly over them, each with its own plan, checks and full report, then one summary
    /// table (a row per protocol), the overall verdict and the loadgen's own CPU. The
    /// scenarios share --threads single-threaded loops; each protocol's measured window
    /// starts when its own clients have joined; --connect-rate counts the connections of all
    /// protocols together. Exit status: the worst of the protocols'.
    Mix(mix::MixArgs),
}

/// Flags every scenario shares: where, how long, and where the results go.
#[derive(Args, Debug)]
struct CommonArgs {
    /// Server host, or a comma-separated list of hosts to spread the clients over several
    /// servers (the nodes of a cluster, e.g. chatd --bind 127.0.0.1 and --bind 127.0.0.2 on the
    /// same ports): client i connects to host i mod n. Only loopback addresses are allowed
    /// (127.0.0.0/8, ::1, localhost), every host is checked. Spread only what crosses nodes;
    /// the lobby's OCM members take one host (each node has its own OCM lobby room).
    /// Source addresses, so that ports never run out: with an IPv4 host, clients 0 to 31
    /// connect from 127.0.0.1 and each later client from an address of its own in
    /// 127.0.0.0/8 (client i from 127.0.0.2 + i: 127.0.0.34 for client 32), and a client
    /// whose connect from 127.0.0.1 finds no free ephemeral port (EADDRNOTAVAIL) retries from
    /// its own address. With ::1 there is no other loopback address: every client uses ::1 and
    /// the run is bounded by the ephemeral port range (net.ipv4.ip_local_port_range, less
    /// ports still in TIME_WAIT from earlier runs).
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
    /// delivered (room, ccm, matou, ocm) or not answered (bin24) by then are losses, and for
    /// matou so are links not brokered by then. The run ends earlier once everything has arrived.
    /// Default 2s for room, ccm, matou, ocm and lobby, 5s for bin24 (more than the server's 3 s answer
    /// timeout). At most 10m.
    #[arg(long, value_parser = parse_duration)]
    drain: Option<Duration>,

    /// Connections opened per second during the ramp-up (each one's connect latency is measured
    /// from its planned connect time). The ramp-up gives up after max(10 s, 3 x the planned
    /// ramp-up); a client that has not joined by then is a connect error.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connect_rate: u64,

    /// Also write the results as JSON to this file (created before the run, so a bad path fails
    /// at once rather than after it).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also write every latency histogram of the run to this directory (created if missing) as
    /// a percentile distribution in HdrHistogram's .hgrm text format, values in ms, one file per
    /// histogram: <scenario>-<measure>.hgrm (e.g. room-delivery.hgrm, room-send-lag.hgrm).
    /// Checked before the run.
    #[arg(long, value_name = "DIR")]
    hgrm: Option<PathBuf>,

    /// Also draw the run's latency percentile curves (one per measured latency, x the
    /// percentile on a log scale to 99.999%, y the latency in ms) as an SVG image to this file
    /// (created before the run).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    /// Seed for the run's random choices (room and matou: which clients send, and matou's link
    /// pairs; bin24: which users stay offline; ocm and lobby have none), so a run can be
    /// repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Exit 1 on an INVALID run too (the loadgen fell behind its plan). Without it, INVALID is
    /// reported but only losses, duplicates, unsent messages and errors fail the exit code.
    #[arg(long)]
    strict: bool,

    #[command(flatten)]
    tls: tls::TlsArgs,
}

#[derive(Args, Debug)]
struct ChurnArgs {
    /// Server host, or a comma-separated list: each protocol's connections take turns over
    /// them (its connection i to host i mod n). Only loopback addresses are allowed
    /// (127.0.0.0/8, ::1, localhost).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Connections to open in all, at most 10000000.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    connects: u64,

    /// Connections started per second (connection i is due at i / rate).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connect_rate: u64,

    /// Most connections open at once; one due while at the cap waits, and its latency (from
    /// its intended time) shows the wait. At most 10000.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX as u64))]
    concurrency: u64,

    /// Protocols to churn, comma-separated: room, bin24, ccm, matou, ocm (OCM: its TCRP
    /// listener), web (not by default: the upgrade and sign-in on --web-port).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "room,bin24,ccm,matou,ocm"
    )]
    protocols: Vec<String>,

    /// Longest a connection may take from its intended time to its sign-in answer; later is
    /// an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sign_in_timeout: Duration,

    #[arg(long, default_value_t = 55_555)]
    room_port: u16,
    #[arg(long, default_value_t = 7_000)]
    bin24_port: u16,
    #[arg(long, default_value_t = 5_454)]
    ccm_port: u16,
    #[arg(long, default_value_t = 7_777)]
    matou_port: u16,
    #[arg(long, default_value_t = 9_002)]
    ocm_tcp_port: u16,
    /// chatd's web listener, for `web` in --protocols (its WebSocket upgrade and sign-in).
    #[arg(long, default_value_t = 8_080)]
    web_port: u16,

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Seed for how each connection leaves, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,

    #[command(flatten)]
    tls: tls::TlsArgs,
}

fn run_churn(args: ChurnArgs) -> ExitCode {
    if let Err(why) = tls::setup(&args.tls, &args.host) {
        return refuse(why);
    }
    let mut targets = Vec::new();
    for name in &args.protocols {
        let (protocol, port) = match name.trim() {
            "room" => (churn::Protocol::Room, args.room_port),
            "bin24" => (churn::Protocol::Bin24, args.bin24_port),
            "ccm" => (churn::Protocol::Ccm, args.ccm_port),
            "matou" => (churn::Protocol::Matou, args.matou_port),
            "ocm" => (churn::Protocol::Ocm, args.ocm_tcp_port),
            "web" => (churn::Protocol::Web, args.web_port),
            other => {
                return refuse(format!(
                    "--protocols: unknown protocol {other:?} (room, bin24, ccm, matou, ocm, web)"
                ))
            }
        };
        if targets.iter().any(|(p, _)| *p == protocol) {
            return refuse(format!("--protocols names {name} twice"));
        }
        match resolve_loopback(&args.host, port) {
            Ok(target) => targets.push((protocol, target)),
            Err(why) => return refuse(why),
        }
    }
    if targets.is_empty() {
        return refuse("--protocols names no protocol");
    }
    if args.sign_in_timeout.is_zero() || args.sign_in_timeout > DRAIN_MAX {
        return refuse("--sign-in-timeout must be more than 0 and at most 10m");
    }
    if let Err(why) = limits::ensure_open_files(args.concurrency + SPARE_FILES) {
        return refuse(why);
    }
    let mut json_out = match create_json(args.json.as_ref()) {
        Ok(json_out) => json_out,
        Err(why) => return refuse(why),
    };
    let cfg = churn::ChurnConfig {
        targets,
        connects: args.connects,
        rate_per_s: args.connect_rate,
        concurrency_max: args.concurrency as usize,
        sign_in_timeout_us: args.sign_in_timeout.as_micros() as u64,
        seed: args.seed,
        progress: std::io::stderr().is_terminal(),
    };
    match churn::run(&cfg) {
        Ok(report) => {
            let exit_code = if report.is_clean() { 0 } else { 1 };
            deliver_report(report.to_text(), &report, exit_code, &mut json_out)
        }
        Err(e) => {
            discard_json(&mut json_out);
            refuse(e)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Room(args) => registry::run_args(&args),
        Scenario::Resp(args) => registry::run_args(&args),
        Scenario::Web(args) => registry::run_args(&args),
        Scenario::Bin24(args) => registry::run_args(&args),
        Scenario::Ccm(args) => registry::run_args(&args),
        Scenario::Ocm(args) => registry::run_args(&args),
        Scenario::Matou(args) => registry::run_args(&args),
        Scenario::Lobby(args) => registry::run_args(&args),
        Scenario::Churn(args) => run_churn(args),
        Scenario::Mix(args) => mix::run_mix(args),
    }
}

/// Prints an argument or setup problem and returns exit code 2.
fn refuse(why: impl std::fmt::Display) -> ExitCode {
    eprintln!("loadgen: {why}");
    ExitCode::from(EXIT_BAD_RUN)
}

fn check_common(common: &CommonArgs) -> Result<(), String> {
    tls::setup(&common.tls, &common.host)?;
    if common.duration.is_zero() || common.duration > DURATION_MAX {
        return Err("--duration must be more than 0 and at most 1h".into());
    }
    if common.warmup > WARMUP_MAX {
        return Err("--warmup must be at most 10m".into());
    }
    if common.drain.is_some_and(|drain| drain > DRAIN_MAX) {
        return Err("--drain must be at most 10m".into());
    }
    Ok(())
}

/// Creates the --json file before the run, so a bad path fails at once.
type JsonOut<'a> = Option<(&'a PathBuf, BufWriter<File>)>;

fn create_json(path: Option<&PathBuf>) -> Result<JsonOut<'_>, String> {
    match path {
        Some(path) => match File::create(path) {
            Ok(file) => Ok(Some((path, BufWriter::new(file)))),
            Err(e) => Err(format!("cannot create {}: {e}", path.display())),
        },
        None => Ok(None),
    }
}

/// No results: leave no empty JSON file behind for a script to mistake for some.
fn discard_json(json_out: &mut JsonOut<'_>) {
    if let Some((path, out)) = json_out.take() {
        drop(out);
        let _ = std::fs::remove_file(path);
    }
}

/// Where `--hgrm` and `--plot` go; both checked before the run, so a bad path fails at once.
struct LatencyOut<'a> {
    hgrm_dir: Option<&'a Path>,
    plot: Option<&'a Path>,
}

impl LatencyOut<'_> {
    fn prepare(common: &CommonArgs) -> Result<LatencyOut<'_>, String> {
        let out = LatencyOut {
            hgrm_dir: common.hgrm.as_deref(),
            plot: common.plot.as_deref(),
        };
        if let Some(dir) = out.hgrm_dir {
            hgrm::prepare_dir(dir)?;
        }
        if let Some(path) = out.plot {
            plot::prepare(path)?;
        }
        Ok(out)
    }

    /// No results: leave no empty plot behind (the .hgrm files are only written at the end).
    fn discard(&self) {
        if let Some(path) = self.plot {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Writes `<scenario>-<name>.hgrm` for every histogram, and the plot of `plotted`.
    fn write(
        &self,
        scenario: &str,
        title: &str,
        plotted: &[(&'static str, &LatencyHistogram)],
        diagnostic: &[(&'static str, &LatencyHistogram)],
    ) -> Result<(), String> {
        if let Some(dir) = self.hgrm_dir {
            for (name, hist) in plotted.iter().chain(diagnostic) {
                hgrm::write_hgrm(dir, &format!("{scenario}-{name}"), hist).map_err(|e| {
                    format!("writing {scenario}-{name}.hgrm in {}: {e}", dir.display())
                })?;
            }
        }
        if let Some(path) = self.plot {
            plot::write_plot(path, title, plotted)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Where a run's results go besides stdout: the JSON report, the .hgrm files and the plot, all
/// opened (or checked) before the run.
struct Outputs<'a> {
    latency: LatencyOut<'a>,
    json: JsonOut<'a>,
}

impl<'a> Outputs<'a> {
    fn prepare(common: &'a CommonArgs) -> Result<Outputs<'a>, String> {
        let latency = LatencyOut::prepare(common)?;
        match create_json(common.json.as_ref()) {
            Ok(json) => Ok(Outputs { latency, json }),
            Err(why) => {
                latency.discard();
                Err(why)
            }
        }
    }

    /// The run gave no results: leave no empty files behind.
    fn discard(mut self) {
        discard_json(&mut self.json);
        self.latency.discard();
    }

    /// Writes the histograms and the plot, prints the report, writes its JSON; the exit code.
    fn deliver(
        mut self,
        scenario: &str,
        title: String,
        plotted: &[(&'static str, &LatencyHistogram)],
        diagnostic: &[(&'static str, &LatencyHistogram)],
        report: &impl ScenarioReport,
    ) -> ExitCode {
        let (verdict, outcome, text) = report.closing();
        let latency_written =
            self.latency
                .write(scenario, &plot_title(title, verdict), plotted, diagnostic);
        let exit_code = deliver_report(text, report, outcome.exit_code, &mut self.json);
        finish(exit_code, latency_written)
    }
}

/// The plot's title: the scenario's settings, and a warning when the run is not to be trusted.
fn plot_title(settings: String, verdict: &report::Verdict) -> String {
    if verdict.valid {
        settings
    } else {
        format!("{settings} (INVALID: the loadgen fell behind)")
    }
}

/// The report's exit code, unless writing the --hgrm or --plot files failed (then 1).
fn finish(exit_code: ExitCode, latency_written: Result<(), String>) -> ExitCode {
    match latency_written {
        Ok(()) => exit_code,
        Err(why) => {
            eprintln!("loadgen: {why}");
            ExitCode::from(1)
        }
    }
}

/// Prints the report, writes the JSON, and returns the exit code.
fn deliver_report(
    text: String,
    report: &impl Serialize,
    exit_code: i32,
    json_out: &mut JsonOut<'_>,
) -> ExitCode {
    print!("{text}");
    if let Some((path, out)) = json_out.as_mut() {
        let written = serde_json::to_writer_pretty(&mut *out, report)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            eprintln!("loadgen: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::from(exit_code as u8)
}

/// A run id for the message stamps: differs between runs, so frames an earlier run left in
/// the server's store are recognised as not this run's.
fn run_id() -> u32 {
    let wall_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut mix = SplitMix64(wall_ns ^ u64::from(std::process::id()).rotate_left(32));
    mix.next() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common_of(args: &[&str]) -> CommonArgs {
        match Cli::try_parse_from(args).map(|cli| cli.scenario) {
            Ok(Scenario::Room(room)) => room.fanout.common,
            other => panic!("not a room command line: {other:?}"),
        }
    }

    /// --host's help states the source-address rule that connect.rs applies.
    #[test]
    fn the_host_help_gives_the_spread_threshold_in_force() {
        use clap::CommandFactory as _;
        let mut cli = Cli::command();
        let room = cli.find_subcommand_mut("room").unwrap();
        let host = room.get_arguments().find(|a| a.get_id() == "host").unwrap();
        let help = host.get_help().unwrap().to_string();
        let first_spread = connect::SPREAD_FROM_CLIENT;
        let localhost = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let source = connect::spread_source(localhost, first_spread).unwrap();
        for stated in [
            format!("clients 0 to {}", first_spread - 1),
            format!("{source} for client {first_spread}"),
        ] {
            assert!(help.contains(&stated), "{stated:?} not in: {help}");
        }
    }

    #[test]
    fn unusable_hgrm_and_plot_paths_fail_before_the_run() {
        let base = std::env::temp_dir().join(format!("loadgen-main-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let file = base.join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let below_file = file.join("dir");
        let below_file = below_file.to_str().unwrap();
        let missing_dir_svg = base.join("missing/plot.svg");
        let missing_dir_svg = missing_dir_svg.to_str().unwrap();

        let err = LatencyOut::prepare(&common_of(&["loadgen", "room", "--hgrm", below_file]))
            .err()
            .unwrap();
        assert!(
            err.contains("cannot create directory") && err.contains("a-file"),
            "{err}"
        );
        let err = LatencyOut::prepare(&common_of(&["loadgen", "room", "--plot", missing_dir_svg]))
            .err()
            .unwrap();
        assert!(
            err.contains("cannot create") && err.contains("plot.svg"),
            "{err}"
        );

        // Good paths: the directory is created, the plot file exists (empty) until the end, and
        // a failed run removes it again.
        let hgrm_dir = base.join("hgrm/nested");
        let svg = base.join("plot.svg");
        let common = common_of(&[
            "loadgen",
            "room",
            "--hgrm",
            hgrm_dir.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ]);
        let out = LatencyOut::prepare(&common).unwrap();
        assert!(hgrm_dir.is_dir() && svg.is_file());
        out.discard();
        assert!(!svg.exists());

        // Writing: one .hgrm per histogram, named after the scenario, and one plot.
        let out = LatencyOut::prepare(&common).unwrap();
        let mut delivery = LatencyHistogram::new();
        delivery.record(100);
        let lag = LatencyHistogram::new();
        out.write(
            "room",
            "t",
            &[("delivery", &delivery)],
            &[("send-lag", &lag)],
        )
        .unwrap();
        assert!(hgrm_dir.join("room-delivery.hgrm").is_file());
        assert!(hgrm_dir.join("room-send-lag.hgrm").is_file());
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        assert_eq!(svg_text.matches("<path").count(), 1);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
