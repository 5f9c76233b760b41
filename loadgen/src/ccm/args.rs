//! `loadgen ccm`'s flags and their translation into the CCM scenario's config.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::args::{parse_duration, resolve_loopback, Pace};
use crate::bin24::topology::{Pattern, USERS_MAX};
use crate::ccm::{self, CcmConfig};
use crate::mix::{MixShare, Setup};
use crate::registry::{ScenarioArgs, Single};
use crate::{run_id, CommonArgs, RATE_PER_S_MAX, WARMUP_MAX};

/// Default `--drain`.
pub(crate) const CCM_DRAIN_DEFAULT: Duration = Duration::from_secs(2);

/// CCM contents: the text stamp, up to 64 KiB (the server takes up to 1 MiB).
pub(crate) const CCM_CONTENT_BYTES_MIN: usize = ccm::stamp::STAMP_BYTES;

pub(crate) const CCM_CONTENT_BYTES_MAX: usize = 65_536;

#[derive(Args, Debug)]
pub(crate) struct CcmArgs {
    /// Server port of the CCM listener.
    #[arg(long, default_value_t = 5_454)]
    port: u16,

    /// Active users, named lc00001, lc00002, ...: each has its own connection, identifies,
    /// sends to its partner and receives from it. From 2 to 10000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=USERS_MAX as u64))]
    users: u64,

    /// Each user sends to its pair: 1 <-> 2, 3 <-> 4, ... (the default; needs an even --users).
    #[arg(long)]
    pairs: bool,

    /// Each user sends to the next one, the last to the first.
    #[arg(long, conflicts_with = "pairs")]
    ring: bool,

    /// Messages per second over all senders together (every active user that joined sends
    /// rate/senders per second, evenly spaced, the senders phase-shifted).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    rate: u64,

    /// Bytes of each message's content: the 52-byte text stamp, padded. From 52 to 65536.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    /// Extra silent users, as a share of --users (rounded): they identify (lcq00001, ...) and
    /// then send nothing, not even keepalive answers; the report shows when the server closed
    /// each, from its last write. From 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    silent_share: f64,

    /// Longest wait, after a silent user's identification, for the server to close it; one
    /// still open then fails the run. Above the server's idle + answer timers (5 s + 3.6 s by
    /// default). At most 10m.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    silent_wait: Duration,

    #[command(flatten)]
    common: CommonArgs,
}

impl ScenarioArgs for CcmArgs {
    type Kind = ccm::Ccm;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn config(&self) -> Result<Single<ccm::Ccm>, String> {
        let common = &self.common;
        let users = self.users as usize;
        let pattern = Pattern::chosen(self.ring, users)?;
        if !(0.0..=1.0).contains(&self.silent_share) {
            return Err("--silent-share must be between 0 and 1".into());
        }
        if self.silent_wait > WARMUP_MAX {
            return Err("--silent-wait must be at most 10m".into());
        }
        if !(CCM_CONTENT_BYTES_MIN..=CCM_CONTENT_BYTES_MAX).contains(&self.payload_bytes) {
            return Err(format!(
                "--payload-bytes must be between {CCM_CONTENT_BYTES_MIN} (the stamp) and \
                 {CCM_CONTENT_BYTES_MAX}"
            ));
        }
        let silent = ccm::silent_count(users, self.silent_share);
        let target = resolve_loopback(&common.host, self.port)?;
        let pace = Pace::single(common, self.rate, CCM_DRAIN_DEFAULT);
        let silence = (silent, self.silent_wait);
        let cfg = build(target, users, pattern, silence, self.payload_bytes, pace);
        let title = format!(
            "CCM: {users} users ({pattern:?}), {silent} silent, {} msg/s, {} B, {:?}",
            self.rate, self.payload_bytes, common.duration
        );
        Ok((cfg, (users + silent) as u64, title))
    }
}

/// CCM in a mix: the wait after the last planned message (no silent users; the subcommand's
/// default).
const MIX_SILENT_WAIT: Duration = Duration::from_secs(20);

/// This scenario's share of `loadgen mix`, checked and turned into its config; also the
/// descriptors it needs.
pub(crate) fn in_mix(m: &MixShare<'_>) -> Result<(Setup, u64), String> {
    let (args, clients) = (m.args, m.clients);
    let (common, bytes) = (&args.common, args.payload_bytes);
    let pattern = m.pattern();
    m.check_bytes(CCM_CONTENT_BYTES_MIN, CCM_CONTENT_BYTES_MAX)?;
    let target = resolve_loopback(&common.host, args.ccm_port)?;
    let pace = m.pace(CCM_DRAIN_DEFAULT);
    let cfg = build(target, clients, pattern, (0, MIX_SILENT_WAIT), bytes, pace);
    Ok((Setup::of::<ccm::Ccm>(cfg), clients as u64))
}

/// The scenario's config, from the subcommand's flags or from its share of the mix: `silence`
/// is the silent users and the longest wait for the server to close each.
fn build(
    target: SocketAddr,
    users: usize,
    pattern: Pattern,
    (silent, silent_wait): (usize, Duration),
    content_bytes: usize,
    pace: Pace,
) -> CcmConfig {
    CcmConfig {
        target,
        users,
        pattern,
        silent,
        silent_wait_us: silent_wait.as_micros() as u64,
        content_bytes,
        run_id: run_id(),
        pace,
    }
}
