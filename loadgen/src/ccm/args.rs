//! `loadgen ccm`'s flags and their translation into the CCM scenario's config.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;

use crate::args::{parse_duration, resolve_loopback};
use crate::bin24::topology::{Pattern, USERS_MAX};
use crate::ccm::{self, CcmConfig};
use crate::mix::{MixShare, Setup};
use crate::registry::{ScenarioArgs, Single};
use crate::{check_common, run_id, CommonArgs, RATE_PER_S_MAX, WARMUP_MAX};

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
        check_common(common)?;
        let users = self.users as usize;
        let pattern = if self.ring {
            Pattern::Ring
        } else {
            Pattern::Pairs
        };
        pattern.check(users)?;
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
        let cfg = CcmConfig {
            target,
            users,
            pattern,
            silent,
            rate_per_s: self.rate,
            duration_us: common.duration.as_micros() as u64,
            warmup_us: common.warmup.as_micros() as u64,
            drain_us: common.drain.unwrap_or(CCM_DRAIN_DEFAULT).as_micros() as u64,
            silent_wait_us: self.silent_wait.as_micros() as u64,
            content_bytes: self.payload_bytes,
            connect_rate_per_s: common.connect_rate,
            run_id: run_id(),
            progress: std::io::stderr().is_terminal(),
        };
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
    let (args, clients, rate, connect_rate) = (m.args, m.clients, m.rate, m.connect_rate);
    let (common, bytes) = (&args.common, args.payload_bytes);
    let (duration_us, warmup_us, drain_us) = m.window_us(CCM_DRAIN_DEFAULT);
    let pattern = m.pattern();
    m.check_bytes(CCM_CONTENT_BYTES_MIN, CCM_CONTENT_BYTES_MAX)?;
    Ok((
        Setup::of::<ccm::Ccm>(CcmConfig {
            target: resolve_loopback(&common.host, args.ccm_port)?,
            users: clients,
            pattern,
            silent: 0,
            rate_per_s: rate,
            duration_us,
            warmup_us,
            drain_us,
            silent_wait_us: MIX_SILENT_WAIT.as_micros() as u64,
            content_bytes: bytes,
            connect_rate_per_s: connect_rate,
            run_id: run_id(),
            progress: false,
        }),
        clients as u64,
    ))
}
