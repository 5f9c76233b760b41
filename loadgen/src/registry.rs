//! The one list of the loadgen's protocols, which `main`, `mix` and `churn` all read.
//!
//! Each protocol's folder implements [`ScenarioKind`] for its marker type (`room::Room`,
//! `bin24::Bin24`, ...): how its run starts and ends, what its report is, which histograms it
//! writes and what it says when no server answered. The single-protocol subcommand
//! ([`run_single`]) and the mix drive every protocol through that one trait, so adding a
//! protocol is its folder, a [`Protocol`] variant here and its arm in [`Protocol`]'s table. Its
//! folder's `args.rs` turns its subcommand's flags into its config ([`ScenarioArgs`]) and its
//! share of the mix into the same config (`in_mix`, in its row). The lobby (`lobby::Lobby`) is
//! a scenario but no protocol of its own: it implements [`ScenarioKind`] (`mix --lobby`), not
//! [`Protocol`].

use std::process::ExitCode;

use serde::Serialize;

use crate::churn::SignIn;
use crate::driver::{self, Reactor, RunError};
use crate::mix::{MixShare, Setup};
use crate::report::ScenarioReport;
use crate::stats::LatencyHistogram;

/// The protocols, in the order `--protocols` lists them by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Room,
    Bin24,
    Ccm,
    Matou,
    Ocm,
    Web,
}

/// What the mix and churn need to know of a protocol beyond its scenario.
pub struct ProtocolInfo {
    /// Its name in `--protocols`, the JSON keys and the mix's rows.
    pub name: &'static str,
    /// Fewest clients its scenario runs with.
    pub clients_min: usize,
    /// Churn: the first letter of every connection's name (unique per connection and protocol).
    pub churn_prefix: &'static str,
    /// Where its report keeps what the mix's summary row shows (JSON pointers).
    pub row: RowSource,
    /// How churn signs its connections in.
    pub sign_in: &'static SignIn,
    /// Its share of the mix, checked and turned into its config (its folder's `args::in_mix`).
    pub in_mix: InMixSetup,
}

/// A protocol's share of the mix, as its scenario's config; also the descriptors it needs.
pub type InMixSetup = fn(&MixShare<'_>) -> Result<(Setup, u64), String>;

/// Where a report keeps what its summary row shows (JSON pointers into the report), apart from
/// what every report has in the same place (`/send`, `/errors`, `/verdict`, `/outcome`).
pub struct RowSource {
    pub requested: &'static str,
    pub joined: &'static str,
    /// "delivery", or "ack" for BIN24 (the sender's "200").
    pub latency: &'static str,
    pub latency_path: &'static str,
    pub losses: &'static str,
}

const CONNECTIONS: (&str, &str) = ("/connections/requested", "/connections/joined");
const DELIVERY: (&str, &str) = ("delivery", "/latency_ms/delivery");
const LOSSES: &str = "/losses/total";

const fn info(
    name: &'static str,
    clients_min: usize,
    churn_prefix: &'static str,
    (requested, joined): (&'static str, &'static str),
    (latency, latency_path): (&'static str, &'static str),
    losses: &'static str,
    (sign_in, in_mix): (&'static SignIn, InMixSetup),
) -> ProtocolInfo {
    ProtocolInfo {
        name,
        clients_min,
        churn_prefix,
        row: RowSource {
            requested,
            joined,
            latency,
            latency_path,
            losses,
        },
        sign_in,
        in_mix,
    }
}

static ROOM: ProtocolInfo = info(
    "room",
    1,
    "r",
    CONNECTIONS,
    DELIVERY,
    LOSSES,
    (&crate::room::churn::SIGN_IN, crate::room::args::in_mix),
);
static BIN24: ProtocolInfo = info(
    "bin24",
    2,
    "k",
    CONNECTIONS,
    ("ack", "/latency_ms/ack_200"),
    "/messages/lost/total",
    (&crate::bin24::churn::SIGN_IN, crate::bin24::args::in_mix),
);
static CCM: ProtocolInfo = info(
    "ccm",
    2,
    "c",
    CONNECTIONS,
    DELIVERY,
    LOSSES,
    (&crate::ccm::churn::SIGN_IN, crate::ccm::args::in_mix),
);
static MATOU: ProtocolInfo = info(
    "matou",
    2,
    "m",
    CONNECTIONS,
    DELIVERY,
    LOSSES,
    (&crate::matou::churn::SIGN_IN, crate::matou::args::in_mix),
);
static OCM: ProtocolInfo = info(
    "ocm",
    2,
    "o",
    ("/rooms/members_requested", "/rooms/members_joined"),
    DELIVERY,
    "/udp_loss/lost",
    (&crate::ocm::churn::SIGN_IN, crate::ocm::args::in_mix),
);

static WEB: ProtocolInfo = info(
    "web",
    1,
    "w",
    CONNECTIONS,
    DELIVERY,
    LOSSES,
    (&crate::web::churn::SIGN_IN, crate::web::args::in_mix),
);

impl Protocol {
    pub const fn info(self) -> &'static ProtocolInfo {
        match self {
            Protocol::Room => &ROOM,
            Protocol::Bin24 => &BIN24,
            Protocol::Ccm => &CCM,
            Protocol::Matou => &MATOU,
            Protocol::Ocm => &OCM,
            Protocol::Web => &WEB,
        }
    }

    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// Its row in the mix.
    pub const fn row(self) -> Row {
        let info = self.info();
        Row {
            name: info.name,
            source: &info.row,
        }
    }
}

/// A scenario's row in the mix's summary: its name (also its key in the mix's JSON) and where
/// its report keeps the row's figures.
#[derive(Clone, Copy)]
pub struct Row {
    pub name: &'static str,
    pub source: &'static RowSource,
}

/// Named histograms of a run: (name, histogram).
pub type Named<'a> = Vec<(&'static str, &'a LatencyHistogram)>;

/// One scenario, as `main` and the mix drive it: every protocol's own, and the lobby (`mix
/// --lobby`).
pub trait ScenarioKind {
    /// Its row in the mix; its name is its subcommand, and the prefix of its --hgrm files
    /// unless [`Self::file_name`] says otherwise.
    const ROW: Row;
    /// The histogram the mix plots as this scenario's curve (its summary row's latency).
    const MAIN_HISTOGRAM: &'static str = "delivery";
    /// The mix's words when no client reached the server ("no user could join the CCM server").
    const UNREACHABLE_IN_MIX: &'static str;
    /// The settings, validated by the caller.
    type Config: Sync;
    type Run<'a>: Reactor + 'a;
    type Outcome;
    type Report: ScenarioReport;

    /// Sets the run up; nothing happens until it is driven.
    fn start(cfg: &Self::Config) -> Result<Self::Run<'_>, RunError>;
    /// Closes everything and hands the measurements over.
    fn finish(run: Self::Run<'_>) -> Self::Outcome;
    fn report(cfg: &Self::Config, seed: u64, strict: bool, outcome: &Self::Outcome)
        -> Self::Report;
    /// The latencies the server is measured by (written and plotted), then the loadgen's own
    /// lags (written only).
    fn histograms(outcome: &Self::Outcome) -> (Named<'_>, Named<'_>);
    /// Whether the run draws a progress line (then it ends that line when done).
    fn progress(cfg: &Self::Config) -> bool;
    /// The single run's words when no client reached the server, with its address.
    fn unreachable(cfg: &Self::Config) -> String;
    /// The prefix of its --hgrm files (RESP runs the ROOM scenario under its own name).
    fn file_name(_cfg: &Self::Config) -> &'static str {
        Self::ROW.name
    }
}

/// Runs the scenario to its end on a loop of its own.
pub fn run_alone<K: ScenarioKind>(cfg: &K::Config) -> Result<K::Outcome, RunError> {
    let mut run = K::start(cfg)?;
    driver::run_to_end(&mut run, driver::POLL_TIMEOUT_MAX)?;
    if K::progress(cfg) {
        eprintln!();
    }
    Ok(K::finish(run))
}

/// A single-protocol run from its validated config: the open-files limit for `files` sockets,
/// the output files, the run, the report.
pub fn run_single<K: ScenarioKind>(
    common: &crate::CommonArgs,
    cfg: &K::Config,
    files: u64,
    title: String,
) -> ExitCode {
    if let Err(why) = crate::limits::ensure_open_files(files + crate::SPARE_FILES) {
        return crate::refuse(why);
    }
    let outputs = match crate::Outputs::prepare(common) {
        Ok(outputs) => outputs,
        Err(why) => return crate::refuse(why),
    };
    let outcome = match run_alone::<K>(cfg) {
        Ok(outcome) => outcome,
        Err(e) => {
            outputs.discard();
            return crate::refuse(match e {
                RunError::Unreachable(why) => format!("{}: {why}", K::unreachable(cfg)),
                RunError::Setup(why) => format!("setup failed: {why}"),
            });
        }
    };
    let report = K::report(cfg, common.seed, common.strict, &outcome);
    let (plotted, diagnostic) = K::histograms(&outcome);
    outputs.deliver(K::file_name(cfg), title, &plotted, &diagnostic, &report)
}

/// What a subcommand's flags give [`run_single`]: the config, the sockets the run needs (for
/// the open-files limit) and the plot's title.
pub type Single<K> = (<K as ScenarioKind>::Config, u64, String);

/// A single-protocol subcommand's flags, checked and turned into its scenario's config in the
/// scenario's own folder (`<proto>/args.rs`).
pub trait ScenarioArgs {
    type Kind: ScenarioKind;
    fn common(&self) -> &crate::CommonArgs;
    /// The run these flags ask for, or why they cannot run (exit 2); the common flags are
    /// checked already.
    fn config(&self) -> Result<Single<Self::Kind>, String>;
}

/// A single-protocol subcommand, from its flags to its exit code.
pub fn run_args<A: ScenarioArgs>(args: &A) -> ExitCode {
    match crate::check_common(args.common()).and_then(|()| args.config()) {
        Ok((cfg, files, title)) => run_single::<A::Kind>(args.common(), &cfg, files, title),
        Err(why) => crate::refuse(why),
    }
}
