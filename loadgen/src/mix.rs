//! `loadgen mix`: the five scenarios at once, against one server.
//!
//! `--clients` is split evenly over the included protocols (see [`split_clients`]); each
//! protocol's planned rate is its clients x `--rate-per-client`. Every scenario keeps its own
//! loop state, plan, checks and report; the scenarios are dealt round-robin over `--threads`
//! OS threads, each sleeping in one outer poll over its scenarios' polls ([`driver::run_outer`]).
//! The output is every scenario's own report, then one summary table (a row per protocol), the
//! overall verdict and the loadgen's own CPU.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::args::Pace;
use crate::bin24::topology::Pattern;
use crate::driver::{self, Driven, ProgressCell, RunError, Scenario};
use crate::lobby;
use crate::lobby::args::LOBBY_DRAIN_DEFAULT;
use crate::lobby::ledger::KIND_COUNT;
use crate::ocm::args::OCM_RECV_BUFFER_DEFAULT;
use crate::registry::{Protocol, Row, ScenarioKind};
use crate::report::ScenarioReport;
use crate::stats::{LatencyHistogram, LatencySummary};
use crate::{
    check_common, create_json, deliver_report, discard_json, finish, limits, refuse, CommonArgs,
    LatencyOut, RATE_PER_S_MAX, SENDERS_MAX, SPARE_FILES,
};
use crate::{hgrm, plot};

/// OCM members per room in a mix.
pub const OCM_ROOM_MEMBERS: usize = 10;
/// ROOM and MATOU: the share of their clients that send (the others only receive).
const SENDER_SHARE: f64 = 0.1;
const RATE_PER_CLIENT_MAX: f64 = 1_000.0;
/// How often the live progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Most clients of one mix: the 19,000 concurrent connections from one process, which
/// the per-process open-files limit here (20,000) allows with a little to spare.
const MIX_CLIENTS_MAX: u64 = 19_000;

#[derive(Args, Debug)]
pub struct MixArgs {
    /// Simulated clients in all, split evenly over the protocols (OCM in rooms of 10 members;
    /// what does not fill a room goes to the next protocol). At most 19000: the open-files
    /// limit (20,000 here) must cover them, with OCM's members counting twice (a UDP socket
    /// and, while joining, a TCP connection); the run says so before starting if it does not.
    /// Each protocol's share stays within its own scenario's limits. Within each
    /// protocol: ROOM and MATOU senders are a tenth of its clients; BIN24 keeps a tenth offline
    /// until the end (its stored messages are checked); CCM has no silent users; MATOU brokers
    /// one private link per second per 10 users (at most 50/s); OCM allows no UDP loss.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=MIX_CLIENTS_MAX))]
    pub(crate) clients: u64,

    /// Which protocols to include, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "room,bin24,ccm,matou,ocm"
    )]
    pub(crate) protocols: Vec<Protocol>,

    /// Also run the lobby scenario (as `loadgen lobby`) beside the protocols' own, with this
    /// many members more, split evenly over ROOM, MATOU, CCM, OCM and WEB (the first ones take
    /// the remainder), at --rate-per-client each (chatd allows a WEB member
    /// --web-messages-per-s-max, 20), on the ports below and the OCM room `lobby`; its report
    /// and summary row come after the protocols'. 0: no lobby. From 2 to 2000.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_MAX as u64))]
    pub(crate) lobby: u64,

    /// Messages per second per client (fractions allowed, e.g. 0.1): each protocol's planned
    /// rate is its clients x this, at least 1/s. ROOM and MATOU deliver every message to every
    /// member, so their deliveries grow with the square of their clients. At most 1000.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rate_per_client: f64,

    /// Bytes of each message, as each scenario counts them (ROOM: the line on the wire; BIN24:
    /// the body; CCM: the content; MATOU, OCM: the message). From 63 to 512 (the smallest
    /// maximum of the five).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload_bytes: usize,

    /// OS threads to run the scenarios on, each a single-threaded loop over its share of them
    /// (dealt round-robin), at most one per included protocol. The default 1 leaves the other
    /// core to the server. (A single-protocol subcommand always runs on one loop.)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=6))]
    pub(crate) threads: u64,

    /// Server port of the ROOM listener.
    #[arg(long, default_value_t = 55_555)]
    pub(crate) room_port: u16,
    /// Server port of the BIN24 listener.
    #[arg(long, default_value_t = 7_000)]
    pub(crate) bin24_port: u16,
    /// Server port of the CCM listener.
    #[arg(long, default_value_t = 5_454)]
    pub(crate) ccm_port: u16,
    /// Server port of the MATOU listener.
    #[arg(long, default_value_t = 7_777)]
    pub(crate) matou_port: u16,
    /// Server port of the OCM TCRP listener (TCP).
    #[arg(long, default_value_t = 9_002)]
    pub(crate) ocm_tcp_port: u16,
    /// Server port of the OCM chat socket (UDP).
    #[arg(long, default_value_t = 9_003)]
    pub(crate) ocm_udp_port: u16,
    /// Server port of chatd's web listener (WEB, when --protocols includes it).
    #[arg(long, default_value_t = 8_080)]
    pub(crate) web_port: u16,

    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

/// One protocol's clients in the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub protocol: Protocol,
    pub clients: usize,
}

/// Splits `clients` evenly over `protocols` (in the order given, duplicates ignored), the
/// remainder one each to the first ones. OCM takes whole rooms of [`OCM_ROOM_MEMBERS`] (or one
/// smaller room if its share is less than that); what it leaves goes to the first other
/// protocol, or is left unused if OCM runs alone. Every share must reach its scenario's minimum.
pub fn split_clients(clients: usize, protocols: &[Protocol]) -> Result<Vec<Share>, String> {
    let mut included: Vec<Protocol> = Vec::new();
    for &p in protocols {
        if !included.contains(&p) {
            included.push(p);
        }
    }
    if included.is_empty() {
        return Err("--protocols names no protocol".into());
    }
    let n = included.len();
    let mut shares: Vec<Share> = included
        .iter()
        .enumerate()
        .map(|(i, &protocol)| Share {
            protocol,
            clients: clients / n + usize::from(i < clients % n),
        })
        .collect();
    if let Some(ocm) = shares.iter().position(|s| s.protocol == Protocol::Ocm) {
        let share = shares[ocm].clients;
        if share > OCM_ROOM_MEMBERS {
            let left = share % OCM_ROOM_MEMBERS;
            shares[ocm].clients -= left;
            if let Some(other) = shares.iter_mut().find(|s| s.protocol != Protocol::Ocm) {
                other.clients += left;
            }
        }
    }
    for s in &shares {
        if s.clients < s.protocol.info().clients_min {
            return Err(format!(
                "--clients {clients} over {n} protocols leaves {} {} clients; it needs at least \
                 {} (raise --clients or include fewer --protocols)",
                s.clients,
                s.protocol.name(),
                s.protocol.info().clients_min
            ));
        }
    }
    Ok(shares)
}

/// OCM rooms and members per room for `clients` members.
pub fn ocm_rooms(clients: usize) -> (usize, usize) {
    let members = clients.min(OCM_ROOM_MEMBERS);
    (clients / members.max(1), members)
}

/// A protocol's planned message rate: its clients x the per-client rate, at least 1/s.
pub fn planned_rate(clients: usize, rate_per_client: f64) -> u64 {
    ((clients as f64 * rate_per_client).round() as u64).max(1)
}

/// ROOM and MATOU senders: a tenth of the clients, at least 1, at most the loss table's limit.
pub fn senders_for(clients: usize) -> usize {
    ((clients as f64 * SENDER_SHARE).round() as usize).clamp(1, SENDERS_MAX.min(clients))
}

/// A scenario's setup, validated: its config, ready to be started on a thread.
pub struct Setup {
    name: &'static str,
    job: Box<dyn MixJob + Sync>,
}

impl Setup {
    pub fn of<K: ScenarioKind + 'static>(cfg: K::Config) -> Setup {
        Setup {
            name: K::ROW.name,
            job: Box::new(Job::<K>(cfg)),
        }
    }
}

/// A scenario's config, started and finished by its [`ScenarioKind`].
struct Job<K: ScenarioKind>(K::Config);

trait MixJob {
    fn build(&self, strict: bool, seed: u64) -> Result<Boxed<'_>, Box<Finished>>;
}

impl<K: ScenarioKind> MixJob for Job<K> {
    fn build(&self, strict: bool, seed: u64) -> Result<Boxed<'_>, Box<Finished>> {
        let cfg = &self.0;
        let run = K::start(cfg).map_err(|e| Box::new(failed(K::ROW.name, describe::<K>(e))))?;
        Ok(Box::new(Driven {
            run,
            describe: describe::<K>,
            finish: move |run| {
                let outcome = K::finish(run);
                let report = K::report(cfg, seed, strict, &outcome);
                let (plotted, diagnostic) = K::histograms(&outcome);
                finished(K::ROW, report.closing().2, &report).with_histograms(
                    K::MAIN_HISTOGRAM,
                    plotted,
                    diagnostic,
                )
            },
        }))
    }
}

/// A scenario's error as the mix reports it (the single run's message, less the address).
fn describe<K: ScenarioKind>(e: RunError) -> String {
    match e {
        RunError::Unreachable(why) => format!("{}: {why}", K::UNREACHABLE_IN_MIX),
        RunError::Setup(why) => format!("setup failed: {why}"),
    }
}
/// One row of the summary table.
#[derive(Clone, Debug, Serialize)]
pub struct SummaryRow {
    pub protocol: &'static str,
    pub connections_requested: usize,
    pub connections: usize,
    pub target_rate_per_s: f64,
    pub achieved_rate_per_s: f64,
    /// Which latency the percentiles are: "delivery", or "ack" (BIN24's "200" answer).
    pub latency: &'static str,
    pub latency_ms: LatencySummary,
    pub errors: u64,
    pub losses: u64,
    pub valid: bool,
    pub passed: bool,
    pub exit_code: i32,
    /// Why the scenario could not run at all (then there is no report).
    pub failure: Option<String>,
}

/// What a scenario leaves for the output.
struct Finished {
    text: String,
    json: serde_json::Value,
    row: SummaryRow,
    /// The protocol's histograms (named as in its single run), for --hgrm and --plot.
    histograms: Vec<(&'static str, LatencyHistogram)>,
    /// Which of them is the protocol's curve in the mix's plot (its summary row's latency).
    main_histogram: &'static str,
}

impl Finished {
    /// Keeps copies of the outcome's histograms (`plotted` first); `main` names the one plotted.
    fn with_histograms(
        mut self,
        main: &'static str,
        plotted: Vec<(&'static str, &LatencyHistogram)>,
        diagnostic: Vec<(&'static str, &LatencyHistogram)>,
    ) -> Finished {
        self.histograms = plotted
            .into_iter()
            .chain(diagnostic)
            .map(|(name, hist)| (name, hist.clone()))
            .collect();
        self.main_histogram = main;
        self
    }
}

#[derive(Serialize)]
struct ThreadCpu {
    thread: usize,
    protocols: Vec<&'static str>,
    cpu_ms: f64,
}

#[derive(Serialize)]
struct Cpu {
    process_cpu_ms: f64,
    wall_ms: f64,
    /// Process CPU over wall time: 100 is one core busy for the whole run.
    percent_of_one_core: f64,
    threads: Vec<ThreadCpu>,
}

#[derive(Serialize)]
struct MixReport {
    scenario: &'static str,
    clients: usize,
    rate_per_client: f64,
    threads: usize,
    /// Each protocol's full report, as its single run writes it.
    protocols: serde_json::Map<String, serde_json::Value>,
    summary: Vec<SummaryRow>,
    valid: bool,
    passed: bool,
    exit_code: i32,
    cpu: Cpu,
}

pub fn run_mix(args: MixArgs) -> ExitCode {
    let common = &args.common;
    if let Err(why) = check_common(common) {
        return refuse(why);
    }
    if !(args.rate_per_client > 0.0 && args.rate_per_client <= RATE_PER_CLIENT_MAX) {
        return refuse(format!(
            "--rate-per-client must be above 0 and at most {RATE_PER_CLIENT_MAX}"
        ));
    }
    let shares = match split_clients(args.clients as usize, &args.protocols) {
        Ok(shares) => shares,
        Err(why) => return refuse(why),
    };
    let threads = args.threads as usize;
    let scenarios = shares.len() + usize::from(args.lobby > 0);
    if threads > scenarios {
        return refuse(format!(
            "--threads {threads} is more than the {scenarios} protocols of this run"
        ));
    }
    let mut setups = Vec::with_capacity(scenarios);
    let mut files = SPARE_FILES + 2 * threads as u64;
    for share in &shares {
        match setup(&args, share) {
            Ok((setup, files_needed)) => {
                setups.push(setup);
                files += files_needed;
            }
            Err(why) => return refuse(format!("{}: {why}", share.protocol.name())),
        }
    }
    if args.lobby > 0 {
        match lobby_setup(&args) {
            Ok((setup, files_needed)) => {
                setups.push(setup);
                files += files_needed;
            }
            Err(why) => return refuse(format!("lobby: {why}")),
        }
    }
    if let Err(why) = limits::ensure_open_files(files) {
        return refuse(why);
    }
    let mut json_out = match create_json(common.json.as_ref()) {
        Ok(json_out) => json_out,
        Err(why) => return refuse(why),
    };
    // Checked before the run, like --json, so a bad path fails at once.
    if let Err(why) = LatencyOut::prepare(common) {
        discard_json(&mut json_out);
        return refuse(why);
    }

    let (report, text, histograms) = execute(
        shares.iter().map(|s| s.clients).sum::<usize>() + args.lobby as usize,
        &setups,
        args.rate_per_client,
        threads,
        common.strict,
        common.seed,
        std::io::stderr().is_terminal(),
    );
    let exit_code = report.exit_code;
    if report.summary.iter().all(|r| r.failure.is_some()) {
        // Nothing ran at all: no results files (no JSON, no empty plot or .hgrm), as a single
        // run that cannot start; the per-protocol failures are in the text.
        print!("{text}");
        discard_json(&mut json_out);
        if let Some(path) = common.plot.as_deref() {
            let _ = std::fs::remove_file(path);
        }
        return refuse(
            "mix: nothing ran, every protocol failed to start (see above); \
             no --json, --hgrm or --plot file written",
        );
    }
    let title = format!(
        "mix: {} clients, {} msg/s per client, {:?}{}",
        report.clients,
        args.rate_per_client,
        common.duration,
        if report.valid {
            ""
        } else {
            " (INVALID: the loadgen fell behind)"
        }
    );
    let written = write_histograms(common, &title, &histograms);
    finish(
        deliver_report(text, &report, exit_code, &mut json_out),
        written,
    )
}

/// Each protocol's histograms, and the name of the one it plots.
type ProtocolHistograms = (
    &'static str,
    &'static str,
    Vec<(&'static str, LatencyHistogram)>,
);

/// --hgrm: `mix-<protocol>-<measure>.hgrm` for every histogram; --plot: one curve per protocol
/// (its summary row's latency: delivery, or BIN24's ack).
fn write_histograms(
    common: &CommonArgs,
    title: &str,
    histograms: &[ProtocolHistograms],
) -> Result<(), String> {
    if let Some(dir) = common.hgrm.as_deref() {
        for (protocol, _, hists) in histograms {
            for (name, hist) in hists {
                let file = format!("mix-{protocol}-{name}");
                hgrm::write_hgrm(dir, &file, hist)
                    .map_err(|e| format!("writing {file}.hgrm in {}: {e}", dir.display()))?;
            }
        }
    }
    if let Some(path) = common.plot.as_deref() {
        let labels: Vec<String> = histograms
            .iter()
            .map(|(protocol, main, _)| format!("{protocol} {main}"))
            .collect();
        let curves: Vec<(&str, &LatencyHistogram)> = histograms
            .iter()
            .zip(&labels)
            .filter_map(|((_, main, hists), label)| {
                hists
                    .iter()
                    .find(|(name, _)| name == main)
                    .map(|(_, hist)| (label.as_str(), hist))
            })
            .collect();
        plot::write_plot(path, title, &curves)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Runs the scenarios of `setups` over `threads` threads to their end and puts the reports
/// together: the JSON report, and the text (every scenario's report, then the summary).
fn execute(
    clients: usize,
    setups: &[Setup],
    rate_per_client: f64,
    threads: usize,
    strict: bool,
    seed: u64,
    progress: bool,
) -> (MixReport, String, Vec<ProtocolHistograms>) {
    let names: Vec<&'static str> = setups.iter().map(|s| s.name).collect();
    let cells: Vec<ProgressCell> = setups.iter().map(|_| ProgressCell::default()).collect();
    let started = Instant::now();
    let mut finished: Vec<Option<Finished>> = setups.iter().map(|_| None).collect();
    let mut thread_cpu: Vec<ThreadCpu> = Vec::with_capacity(threads);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for t in 0..threads {
            let mine: Vec<usize> = (t..setups.len()).step_by(threads).collect();
            let (tx, setups, cells) = (tx.clone(), &setups, &cells);
            scope.spawn(move || {
                let results = run_thread(&mine, setups, cells, strict, seed);
                let cpu_us = driver::thread_cpu_us();
                // The receiver outlives the threads (same scope); a failed send cannot happen.
                let _ = tx.send((t, mine, results, cpu_us));
            });
        }
        drop(tx);
        let mut next_line = Instant::now() + PROGRESS_INTERVAL;
        let mut received = 0;
        while received < threads {
            let message = if progress {
                rx.recv_timeout(next_line.saturating_duration_since(Instant::now()))
            } else {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            };
            match message {
                Ok((t, mine, results, cpu_us)) => {
                    received += 1;
                    thread_cpu.push(ThreadCpu {
                        thread: t,
                        protocols: mine.iter().map(|&i| names[i]).collect(),
                        cpu_ms: cpu_us as f64 / 1e3,
                    });
                    for (i, result) in mine.into_iter().zip(results) {
                        finished[i] = Some(result);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    eprint!("\r\x1b[2K{}", progress_line(started, &names, &cells));
                    next_line += PROGRESS_INTERVAL;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if progress {
            eprintln!();
        }
    });
    thread_cpu.sort_by_key(|t| t.thread);
    let wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let process_cpu_ms = driver::process_cpu_us() as f64 / 1e3;
    let cpu = Cpu {
        process_cpu_ms,
        wall_ms,
        percent_of_one_core: if wall_ms > 0.0 {
            100.0 * process_cpu_ms / wall_ms
        } else {
            0.0
        },
        threads: thread_cpu,
    };

    let mut text = String::new();
    let mut protocols = serde_json::Map::new();
    let mut rows = Vec::with_capacity(finished.len());
    let mut histograms = Vec::with_capacity(finished.len());
    for (i, f) in finished.into_iter().enumerate() {
        let f = f.unwrap_or_else(|| failed(names[i], "its thread ended early".into()));
        text.push_str(&f.text);
        if !f.text.is_empty() {
            text.push('\n');
        }
        protocols.insert(names[i].to_string(), f.json);
        rows.push(f.row);
        histograms.push((names[i], f.main_histogram, f.histograms));
    }
    let exit_code = rows.iter().map(|r| r.exit_code).max().unwrap_or(0);
    let report = MixReport {
        scenario: "mix",
        clients,
        rate_per_client,
        threads,
        protocols,
        valid: rows.iter().all(|r| r.valid),
        passed: rows.iter().all(|r| r.passed),
        summary: rows,
        exit_code,
        cpu,
    };
    text.push_str(&summary_text(&report));
    (report, text, histograms)
}

/// Validates one protocol's share and builds its config (in its folder's `args::in_mix`); also
/// returns the descriptors it needs.
fn setup(args: &MixArgs, share: &Share) -> Result<(Setup, u64), String> {
    let clients = share.clients;
    let rate = planned_rate(clients, args.rate_per_client);
    if rate > RATE_PER_S_MAX {
        return Err(format!(
            "{clients} clients x --rate-per-client plan {rate} messages/s; at most \
             {RATE_PER_S_MAX}"
        ));
    }
    (share.protocol.info().in_mix)(&MixShare {
        args,
        clients,
        rate,
        connect_rate: connect_rate_of(args, clients),
    })
}

/// One protocol's part of the mix, before its folder's `args::in_mix` turns it into its config.
pub struct MixShare<'a> {
    pub args: &'a MixArgs,
    pub clients: usize,
    /// Its planned messages per second.
    pub rate: u64,
    /// Its part of --connect-rate.
    pub connect_rate: u64,
}

impl MixShare<'_> {
    /// --payload-bytes, if within this protocol's range.
    pub fn check_bytes(&self, min: usize, max: usize) -> Result<(), String> {
        let bytes = self.args.payload_bytes;
        if (min..=max).contains(&bytes) {
            Ok(())
        } else {
            Err(format!(
                "--payload-bytes {bytes} is outside its range {min}..={max}"
            ))
        }
    }

    /// The deliveries per second this share plans, if the loadgen can read them all.
    pub fn check_fanout(&self, deliveries_per_s: u64, max: u64) -> Result<(), String> {
        if deliveries_per_s > max {
            Err(format!(
                "{} clients at {} messages/s plan {deliveries_per_s} deliveries/s; at most \
                 {max} (every delivery is read and timed by the loadgen): lower \
                 --rate-per-client or --clients",
                self.clients, self.rate
            ))
        } else {
            Ok(())
        }
    }

    /// BIN24 and CCM partners: pairs when the share is even, else a ring.
    pub fn pattern(&self) -> Pattern {
        if self.clients.is_multiple_of(2) {
            Pattern::Pairs
        } else {
            Pattern::Ring
        }
    }

    /// Its rate over --duration, --warmup and --drain (or the scenario's default), at its part
    /// of --connect-rate, without a progress line (the mix draws its own).
    pub fn pace(&self, drain_default: Duration) -> Pace {
        Pace::of(
            &self.args.common,
            self.rate,
            drain_default,
            self.connect_rate,
            false,
        )
    }
}

/// Each scenario ramps up at its part of --connect-rate, so the ramps together keep it.
fn connect_rate_of(args: &MixArgs, clients: usize) -> u64 {
    let total_clients = (args.clients + args.lobby).max(1);
    (args.common.connect_rate * clients as u64 / total_clients).max(1)
}

/// `--lobby`'s members of each protocol: split evenly over ROOM, MATOU, CCM, OCM and WEB, in
/// that order, the first ones taking the remainder (below 5 members WEB gets none).
fn lobby_members(total: usize) -> [usize; KIND_COUNT] {
    std::array::from_fn(|i| total / KIND_COUNT + usize::from(i < total % KIND_COUNT))
}

/// The lobby of `--lobby` members, validated as `loadgen lobby` validates its own; also
/// returns the descriptors it needs.
fn lobby_setup(args: &MixArgs) -> Result<(Setup, u64), String> {
    let common = &args.common;
    let total = args.lobby as usize;
    if total < 2 {
        return Err("--lobby needs at least 2 members".to_string());
    }
    let members = lobby_members(total);
    let rate = planned_rate(total, args.rate_per_client);
    if rate * total as u64 > lobby::DELIVERIES_PER_S_MAX {
        return Err(format!(
            "{total} members at {rate} messages/s plan up to {} deliveries/s; at most {}",
            rate * total as u64,
            lobby::DELIVERIES_PER_S_MAX
        ));
    }
    let share = MixShare {
        args,
        clients: total,
        rate,
        connect_rate: connect_rate_of(args, total),
    };
    share.check_bytes(lobby::wire::STAMP_BYTES, lobby::wire::MESSAGE_BYTES_MAX)?;
    let ports = [
        args.room_port,
        args.matou_port,
        args.ccm_port,
        args.ocm_tcp_port,
        args.ocm_udp_port,
        args.web_port,
    ];
    if members[crate::lobby::ledger::Kind::Web.index()] > 0 {
        let asked = format!("--lobby {total} at {rate} messages/s");
        let per_member = rate as f64 / total as f64;
        if let Some(note) = crate::web::args::over_chatd_limit(per_member, &asked) {
            eprintln!("loadgen: {note}");
        }
    }
    let pace = share.pace(LOBBY_DRAIN_DEFAULT);
    let ocm = ("lobby".to_string(), OCM_RECV_BUFFER_DEFAULT);
    // A fifth of the members are OCM's, and each node has its own OCM lobby room.
    let ocm_why = "--lobby has OCM members, whose lobby room is per node";
    let bytes = args.payload_bytes;
    let cfg = lobby::args::build(&common.host, ports, members, ocm, bytes, pace, ocm_why)?;
    // A TCP connection per member, and a UDP socket per OCM member.
    let files = (total + members[3]) as u64;
    Ok((Setup::of::<lobby::Lobby>(cfg), files))
}

type Boxed<'a> = Box<dyn Scenario<Output = Finished> + 'a>;

/// One thread's share of the mix: set up, run to the end, reports.
fn run_thread(
    mine: &[usize],
    setups: &[Setup],
    cells: &[ProgressCell],
    strict: bool,
    seed: u64,
) -> Vec<Finished> {
    enum Slot {
        /// Could not even start.
        Failed(Box<Finished>),
        /// Index into `scenarios`.
        Running(usize),
    }
    let mut scenarios: Vec<Boxed<'_>> = Vec::new();
    let mut progress: Vec<&ProgressCell> = Vec::new();
    let mut running: Vec<&'static str> = Vec::new();
    let mut slots = Vec::with_capacity(mine.len());
    for &i in mine {
        match setups[i].job.build(strict, seed) {
            Ok(scenario) => {
                slots.push(Slot::Running(scenarios.len()));
                scenarios.push(scenario);
                progress.push(&cells[i]);
                running.push(setups[i].name);
            }
            Err(f) => {
                cells[i].done.store(true, Ordering::Relaxed);
                slots.push(Slot::Failed(f));
            }
        }
    }
    let ended = match driver::run_outer(&mut scenarios, &progress, driver::POLL_TIMEOUT_MAX) {
        Ok((ended, _)) => ended,
        Err(why) => vec![Err(why); scenarios.len()],
    };
    let mut ran: Vec<Option<Finished>> = Vec::with_capacity(scenarios.len());
    for ((scenario, end), name) in scenarios.into_iter().zip(ended).zip(running) {
        ran.push(Some(match end {
            Ok(()) => scenario.finish(),
            Err(why) => failed(name, why),
        }));
    }
    slots
        .into_iter()
        .zip(mine)
        .map(|(slot, &i)| match slot {
            Slot::Failed(f) => *f,
            Slot::Running(k) => ran
                .get_mut(k)
                .and_then(Option::take)
                .unwrap_or_else(|| failed(setups[i].name, "not run".into())),
        })
        .collect()
}

/// A scenario that could not run: a row with the reason and exit code 2, no report.
fn failed(name: &'static str, why: String) -> Finished {
    Finished {
        text: String::new(),
        json: serde_json::json!({ "failure": why }),
        row: SummaryRow {
            protocol: name,
            connections_requested: 0,
            connections: 0,
            target_rate_per_s: 0.0,
            achieved_rate_per_s: 0.0,
            latency: "delivery",
            latency_ms: LatencySummary::default(),
            errors: 0,
            losses: 0,
            valid: false,
            passed: false,
            exit_code: i32::from(crate::EXIT_BAD_RUN),
            failure: Some(why),
        },
        histograms: Vec::new(),
        main_histogram: "delivery",
    }
}

/// A finished scenario's report: its text, its JSON and its summary row.
fn finished(row: Row, text: String, report: &impl Serialize) -> Finished {
    let json = match serde_json::to_value(report) {
        Ok(json) => json,
        Err(e) => return failed(row.name, format!("its report could not be serialized: {e}")),
    };
    let source = row.source;
    let u = |path: &str| {
        json.pointer(path)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let f = |path: &str| {
        json.pointer(path)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    };
    let b = |path: &str| {
        json.pointer(path)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    };
    let ms = |name: &str| f(&format!("{}/{name}", source.latency_path));
    let row = SummaryRow {
        protocol: row.name,
        connections_requested: u(source.requested) as usize,
        connections: u(source.joined) as usize,
        target_rate_per_s: f("/send/target_rate_per_s"),
        achieved_rate_per_s: f("/send/achieved_rate_per_s"),
        latency: source.latency,
        latency_ms: LatencySummary {
            count: u(&format!("{}/count", source.latency_path)),
            p50_ms: ms("p50_ms"),
            p90_ms: ms("p90_ms"),
            p99_ms: ms("p99_ms"),
            p999_ms: ms("p999_ms"),
            max_ms: ms("max_ms"),
            mean_ms: ms("mean_ms"),
            clamped: u(&format!("{}/clamped", source.latency_path)),
        },
        errors: ["connect", "read", "write", "protocol"]
            .iter()
            .map(|kind| u(&format!("/errors/{kind}")))
            .sum(),
        losses: u(source.losses),
        valid: b("/verdict/valid"),
        passed: b("/outcome/passed"),
        exit_code: json
            .pointer("/outcome/exit_code")
            .and_then(serde_json::Value::as_i64)
            .map_or(i32::from(crate::EXIT_BAD_RUN), |c| c as i32),
        failure: None,
    };
    Finished {
        text,
        json,
        row,
        histograms: Vec::new(),
        main_histogram: "delivery",
    }
}

fn progress_line(started: Instant, names: &[&str], cells: &[ProgressCell]) -> String {
    let mut line = format!("[{:6.1}s] mix", started.elapsed().as_secs_f64());
    for (name, cell) in names.iter().zip(cells) {
        let _ = write!(
            line,
            "  {name} sent {} recv {}{}",
            cell.sent.load(Ordering::Relaxed),
            cell.received.load(Ordering::Relaxed),
            if cell.done.load(Ordering::Relaxed) {
                " (done)"
            } else {
                ""
            }
        );
    }
    line
}

fn summary_text(report: &MixReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== mix summary: {} clients, {} msg/s per client, {} thread(s)",
        report.clients, report.rate_per_client, report.threads
    );
    let _ = writeln!(
        out,
        "{:<6} {:>11} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}  {:<8} result",
        "proto",
        "connections",
        "target/s",
        "achieved/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "losses",
        "verdict"
    );
    for r in &report.summary {
        if let Some(why) = &r.failure {
            let _ = writeln!(out, "{:<6} did not run: {why}", r.protocol);
            continue;
        }
        let l = &r.latency_ms;
        let _ = writeln!(
            out,
            "{:<6} {:>11} {:>10.1} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7} {:>7}  {:<8} {}{}",
            r.protocol,
            format!("{}/{}", r.connections, r.connections_requested),
            r.target_rate_per_s,
            r.achieved_rate_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            r.errors,
            r.losses,
            if r.valid { "VALID" } else { "INVALID" },
            if r.passed { "passed" } else { "FAILED" },
            if r.latency == "ack" { " (latency: ack)" } else { "" },
        );
    }
    let invalid: Vec<&str> = report
        .summary
        .iter()
        .filter(|r| !r.valid)
        .map(|r| r.protocol)
        .collect();
    let failed: Vec<&str> = report
        .summary
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.protocol)
        .collect();
    let _ = writeln!(
        out,
        "verdict: {}; {} (exit {})",
        if invalid.is_empty() {
            "VALID".to_string()
        } else {
            format!("INVALID ({})", invalid.join(", "))
        },
        if failed.is_empty() {
            "PASSED".to_string()
        } else {
            format!("FAILED ({})", failed.join(", "))
        },
        report.exit_code
    );
    let cpu = &report.cpu;
    let _ = write!(
        out,
        "loadgen CPU: {:.0} ms over {:.0} ms wall ({:.1}% of one core)",
        cpu.process_cpu_ms, cpu.wall_ms, cpu.percent_of_one_core
    );
    for thread in &cpu.threads {
        let _ = write!(
            out,
            "; thread {} ({}): {:.0} ms",
            thread.thread,
            thread.protocols.join("+"),
            thread.cpu_ms
        );
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use switchboard::config::Config;
    use switchboard::reactor::{ProtocolKind, Server, UdpKind};

    const ALL: [Protocol; 5] = [
        Protocol::Room,
        Protocol::Bin24,
        Protocol::Ccm,
        Protocol::Matou,
        Protocol::Ocm,
    ];

    fn clients(shares: &[Share]) -> Vec<usize> {
        shares.iter().map(|s| s.clients).collect()
    }

    #[test]
    fn clients_are_split_evenly_with_ocm_in_whole_rooms() {
        assert_eq!(clients(&split_clients(1_000, &ALL).unwrap()), [200; 5]);
        // 210, 210, 209, 209, 209: OCM keeps 20 rooms of 10, its 9 others go to ROOM.
        let shares = split_clients(1_047, &ALL).unwrap();
        assert_eq!(clients(&shares), [219, 210, 209, 209, 200]);
        assert_eq!(shares.iter().map(|s| s.clients).sum::<usize>(), 1_047);
        // OCM first: its leftover goes to the first other protocol.
        let shares = split_clients(25, &[Protocol::Ocm, Protocol::Ccm]).unwrap();
        assert_eq!(clients(&shares), [10, 15]);
        // OCM alone: whole rooms only.
        assert_eq!(clients(&split_clients(25, &[Protocol::Ocm]).unwrap()), [20]);
        // A share below ten is one smaller room.
        assert_eq!(clients(&split_clients(35, &ALL).unwrap()), [7; 5]);
        assert_eq!(ocm_rooms(7), (1, 7));
        assert_eq!(ocm_rooms(200), (20, 10));
    }

    #[test]
    fn repeated_protocols_count_once_and_too_few_clients_are_refused() {
        let shares = split_clients(10, &[Protocol::Room, Protocol::Room, Protocol::Ccm]).unwrap();
        assert_eq!(shares.len(), 2);
        assert_eq!(clients(&shares), [5, 5]);
        let err = split_clients(9, &ALL).unwrap_err();
        assert!(err.contains("at least 2"), "{err}");
        assert!(split_clients(1, &[Protocol::Room]).is_ok());
        assert!(split_clients(10, &[]).is_err());
    }

    #[test]
    fn rates_and_senders() {
        assert_eq!(planned_rate(200, 1.0), 200);
        assert_eq!(planned_rate(200, 0.25), 50);
        assert_eq!(planned_rate(3, 0.1), 1);
        assert_eq!(senders_for(200), 20);
        assert_eq!(senders_for(3), 1);
        assert_eq!(senders_for(1), 1);
        assert_eq!(senders_for(100_000), SENDERS_MAX);
    }

    /// A fresh directory for the server's BIN24 store, removed at the end.
    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mix_args(extra: &[String]) -> MixArgs {
        let mut argv = vec!["loadgen".to_string(), "mix".to_string()];
        argv.extend_from_slice(extra);
        match crate::Cli::try_parse_from(argv).unwrap().scenario {
            crate::Scenario::Mix(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// A chatd on ephemeral ports with every listener, its data directory, and the mix's
    /// arguments naming its ports.
    fn chatd(tag: &str) -> (TempDir, Server, Vec<String>) {
        let data =
            TempDir(std::env::temp_dir().join(format!("loadgen-mix-{tag}{}", std::process::id())));
        let server = Server::bind(Config {
            room_port: Some(0),
            bin24_port: Some(0),
            ccm_port: Some(0),
            matou_port: Some(0),
            ocm_tcp_port: Some(0),
            ocm_udp_port: Some(0),
            ocm_relay_port: None,
            // An ephemeral port, not the default 8080: tests run side by side.
            web_port: Some(0),
            data_dir: data.0.clone(),
            ..Config::default()
        })
        .unwrap();
        let port = |kind| server.local_addr(kind).unwrap().port().to_string();
        let udp_port = server
            .local_udp_addr(UdpKind::OcmChat)
            .unwrap()
            .port()
            .to_string();
        let ports = vec![
            "--room-port".into(),
            port(ProtocolKind::Room),
            "--bin24-port".into(),
            port(ProtocolKind::Bin24),
            "--ccm-port".into(),
            port(ProtocolKind::Ccm),
            "--matou-port".into(),
            port(ProtocolKind::Matou),
            "--ocm-tcp-port".into(),
            port(ProtocolKind::Ocm),
            "--ocm-udp-port".into(),
            udp_port,
            "--web-port".into(),
            port(ProtocolKind::Web),
        ];
        (data, server, ports)
    }

    #[test]
    fn a_short_mix_against_the_real_server_loses_nothing() {
        let (_data, server, ports) = chatd("");
        // Every protocol, WEB too (not in the default list): its members share the lobby with
        // ROOM's, and neither takes the other's messages for its own.
        let mut argv: Vec<String> = [
            "--clients",
            "120",
            "--protocols",
            "room,bin24,ccm,matou,ocm,web",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--threads",
            "2",
        ]
        .map(String::from)
        .to_vec();
        argv.extend(ports);
        let args = mix_args(&argv);
        let handle = server.handle();
        let server_thread = std::thread::spawn(move || server.run());

        let shares = split_clients(args.clients as usize, &args.protocols).unwrap();
        let setups: Vec<Setup> = shares.iter().map(|s| setup(&args, s).unwrap().0).collect();
        let (report, text, histograms) = execute(120, &setups, 1.0, 2, false, 1, false);
        handle.shutdown();
        server_thread.join().unwrap().unwrap();

        assert_eq!(report.summary.len(), 6, "{text}");
        for row in &report.summary {
            assert_eq!(row.failure, None, "{text}");
            assert!(row.connections > 0, "{text}");
            assert_eq!(row.connections, row.connections_requested, "{text}");
            assert_eq!(row.errors, 0, "{text}");
            assert_eq!(row.losses, 0, "{text}");
            assert!(row.passed, "{}: {text}", row.protocol);
            assert!(row.latency_ms.count > 0, "{}: {text}", row.protocol);
        }
        assert_eq!(report.exit_code, 0, "{text}");
        assert_eq!(report.cpu.threads.len(), 2);
        assert!(report.protocols.contains_key("ocm"));
        assert!(report.protocols.contains_key("web"));
        assert!(text.contains("== mix summary"), "{text}");

        // --plot's curve for each protocol is the histogram its summary row reports.
        assert_eq!(histograms.len(), 6);
        for ((protocol, main, hists), row) in histograms.iter().zip(&report.summary) {
            assert_eq!(*protocol, row.protocol);
            let (_, hist) = hists
                .iter()
                .find(|(name, _)| name == main)
                .unwrap_or_else(|| panic!("{protocol}: no {main} histogram"));
            assert_eq!(hist.len(), row.latency_ms.count, "{protocol} {main}");
        }
    }

    /// A mix in which no protocol starts (nothing listens on its ports) says so and leaves
    /// no --json, --plot or --hgrm file behind, as a single run that cannot connect.
    #[test]
    fn a_mix_where_nothing_runs_writes_no_result_files() {
        // Ports that were free a moment ago: nothing listens there, connects are refused.
        let closed_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
                .to_string()
        };
        let out = TempDir(
            std::env::temp_dir().join(format!("loadgen-mix-nothing-ran-{}", std::process::id())),
        );
        std::fs::create_dir_all(&out.0).unwrap();
        let path = |name: &str| out.0.join(name).to_str().unwrap().to_string();
        let argv: Vec<String> = vec![
            "--clients".into(),
            "20".into(),
            "--protocols".into(),
            "room,ccm".into(),
            "--duration".into(),
            "1s".into(),
            "--room-port".into(),
            closed_port(),
            "--ccm-port".into(),
            closed_port(),
            "--json".into(),
            path("mix.json"),
            "--plot".into(),
            path("mix.svg"),
            "--hgrm".into(),
            path("hgrm"),
        ];
        let exit = run_mix(mix_args(&argv));
        assert_eq!(exit, ExitCode::from(crate::EXIT_BAD_RUN));
        assert!(!out.0.join("mix.json").exists(), "an empty --json was left");
        assert!(!out.0.join("mix.svg").exists(), "an empty --plot was left");
        let hgrm_files = std::fs::read_dir(out.0.join("hgrm"))
            .map(|dir| dir.count())
            .unwrap_or(0);
        assert_eq!(hgrm_files, 0, "empty .hgrm files were written");
    }

    /// `--lobby`: the lobby runs beside the protocols' scenarios against the same server, with
    /// its own report and summary row after theirs, and every member gets every lobby message.
    #[test]
    fn a_mix_with_the_lobby_runs_it_beside_the_protocols() {
        let (_data, server, ports) = chatd("lobby-");
        let mut argv: Vec<String> = [
            "--clients",
            "4",
            "--protocols",
            "ccm",
            "--lobby",
            "10",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ]
        .map(String::from)
        .to_vec();
        argv.extend(ports);
        let args = mix_args(&argv);
        let handle = server.handle();
        let server_thread = std::thread::spawn(move || server.run());

        let shares = split_clients(args.clients as usize, &args.protocols).unwrap();
        let mut setups: Vec<Setup> = shares.iter().map(|s| setup(&args, s).unwrap().0).collect();
        setups.push(lobby_setup(&args).unwrap().0);
        let (report, text, histograms) = execute(14, &setups, 1.0, 1, false, 1, false);
        handle.shutdown();
        server_thread.join().unwrap().unwrap();

        let names: Vec<&str> = report.summary.iter().map(|r| r.protocol).collect();
        assert_eq!(names, ["ccm", "lobby"], "{text}");
        let lobby = &report.summary[1];
        assert_eq!(lobby.failure, None, "{text}");
        assert_eq!(
            (lobby.connections, lobby.connections_requested),
            (10, 10),
            "{text}"
        );
        assert_eq!((lobby.errors, lobby.losses), (0, 0), "{text}");
        assert!(lobby.passed && lobby.latency_ms.count > 0, "{text}");
        assert!(report.summary[0].passed, "{text}");
        assert_eq!(report.clients, 14);
        let pairs = report.protocols["lobby"]["pairs"].as_array().unwrap();
        assert_eq!(pairs.len(), 25, "{text}");
        assert!(
            text.contains("LOBBY: ROOM 2, MATOU 2, CCM 2, OCM 2, WEB 2 (room"),
            "{text}"
        );
        let (name, main, hists) = &histograms[1];
        assert_eq!((*name, *main), ("lobby", "delivery"));
        let (_, hist) = hists.iter().find(|(n, _)| n == main).unwrap();
        assert_eq!(hist.len(), lobby.latency_ms.count);
    }

    #[test]
    fn the_lobby_splits_its_members_over_the_five_protocols_web_last() {
        assert_eq!(lobby_members(10), [2, 2, 2, 2, 2]);
        assert_eq!(lobby_members(13), [3, 3, 3, 2, 2]);
        assert_eq!(lobby_members(4), [1, 1, 1, 1, 0], "below 5, no WEB member");
        assert_eq!(lobby_members(2), [1, 1, 0, 0, 0]);
        assert_eq!(lobby_members(2_000).iter().sum::<usize>(), 2_000);
    }
}
