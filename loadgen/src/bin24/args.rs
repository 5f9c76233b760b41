//! `loadgen bin24`'s flags and their translation into the BIN24 scenario's config.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::args::{resolve_loopback, Pace};
use crate::bin24::topology::{self, Pattern, USERS_MAX};
use crate::bin24::{self, Bin24Config, STAMP_BYTES};
use crate::mix::{MixShare, Setup};
use crate::registry::{ScenarioArgs, Single};
use crate::{run_id, CommonArgs, RATE_PER_S_MAX};

/// Default `--drain`: more than the server's 3 s answer timeout, so a recipient the server
/// gives up on still has its messages answered "300" within the drain.
pub(crate) const BIN24_DRAIN_DEFAULT: Duration = Duration::from_secs(5);

/// BIN24 keeps 6 bytes per planned message (its fate and its write time): at most 120 MB.
pub(crate) const BIN24_MESSAGES_MAX: u64 = 20_000_000;

/// BIN24 bodies: the stamp, up to the largest body a frame carries.
pub(crate) const BIN24_BODY_BYTES_MIN: usize = STAMP_BYTES;

pub(crate) const BIN24_BODY_BYTES_MAX: usize = switchboard::protocol::bin24::codec::BODY_BYTES_MAX;

#[derive(Args, Debug)]
pub(crate) struct Bin24Args {
    /// Server port of the BIN24 listener.
    #[arg(long, default_value_t = 7_000)]
    port: u16,

    /// Users, named lg00000, lg00001, ...: each online user has its own connection; the
    /// offline ones connect at the end. From 2 to 10000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=USERS_MAX as u64))]
    users: u64,

    /// Each user sends to its pair: 0 <-> 1, 2 <-> 3, ... (the default; needs an even --users).
    #[arg(long)]
    pairs: bool,

    /// Each user sends to the next one: i -> i + 1, the last to user 0.
    #[arg(long, conflicts_with = "pairs")]
    ring: bool,

    /// Messages per second over all senders together (every online user that joined sends
    /// rate/senders per second, evenly spaced, the senders phase-shifted).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    rate: u64,

    /// Share of the users that stay offline until the end (chosen with --seed): messages to
    /// them are stored by the server and answered "300", then delivered as type 2 when the
    /// loadgen connects them after the drain. From 0 to below 1.
    #[arg(long, default_value_t = 0.1)]
    offline_share: f64,

    /// Bytes of each message's body, after the 24-byte header: the 28-byte stamp, padded.
    /// From 28 to 1000.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    #[command(flatten)]
    common: CommonArgs,
}

impl ScenarioArgs for Bin24Args {
    type Kind = bin24::Bin24;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn config(&self) -> Result<Single<bin24::Bin24>, String> {
        let common = &self.common;
        let users = self.users as usize;
        let pattern = Pattern::chosen(self.ring, users)?;
        if !(0.0..1.0).contains(&self.offline_share) {
            return Err("--offline-share must be at least 0 and below 1".into());
        }
        if topology::offline_count(users, self.offline_share) >= users {
            return Err("--offline-share leaves no user online to send".into());
        }
        if !(BIN24_BODY_BYTES_MIN..=BIN24_BODY_BYTES_MAX).contains(&self.payload_bytes) {
            return Err(format!(
                "--payload-bytes must be between {BIN24_BODY_BYTES_MIN} (the stamp) and \
                 {BIN24_BODY_BYTES_MAX} (the largest BIN24 body)"
            ));
        }
        let window_us = (common.warmup + common.duration).as_micros();
        let planned = (window_us * u128::from(self.rate)).div_ceil(1_000_000);
        if planned > u128::from(BIN24_MESSAGES_MAX) {
            return Err(format!(
                "--rate x (--warmup + --duration) plans {planned} messages; at most \
                 {BIN24_MESSAGES_MAX} (every message is tracked until it is accounted for)"
            ));
        }
        let target = resolve_loopback(&common.host, self.port)?;
        let pace = Pace::single(common, self.rate, BIN24_DRAIN_DEFAULT);
        let offline_share = self.offline_share;
        let cfg = build(
            target,
            users,
            pattern,
            offline_share,
            self.payload_bytes,
            pace,
        );
        let title = format!(
            "BIN24: {users} users ({pattern:?}), {}% offline, {} msg/s, {} B, {:?}",
            self.offline_share * 100.0,
            self.rate,
            self.payload_bytes,
            common.duration
        );
        Ok((cfg, users as u64, title))
    }
}

/// BIN24 in a mix: the share of its users that stay offline until the end (as the
/// subcommand's default).
const MIX_OFFLINE_SHARE: f64 = 0.1;

/// This scenario's share of `loadgen mix`, checked and turned into its config; also the
/// descriptors it needs.
pub(crate) fn in_mix(m: &MixShare<'_>) -> Result<(Setup, u64), String> {
    let (args, clients, rate) = (m.args, m.clients, m.rate);
    let (common, bytes) = (&args.common, args.payload_bytes);
    let pattern = m.pattern();
    m.check_bytes(BIN24_BODY_BYTES_MIN, BIN24_BODY_BYTES_MAX)?;
    let window_us = (common.warmup + common.duration).as_micros();
    let planned = (window_us * u128::from(rate)).div_ceil(1_000_000);
    if planned > u128::from(BIN24_MESSAGES_MAX) {
        return Err(format!(
            "{rate} messages/s over the warmup and duration plan {planned} messages; at \
             most {BIN24_MESSAGES_MAX}"
        ));
    }
    let target = resolve_loopback(&common.host, args.bin24_port)?;
    let pace = m.pace(BIN24_DRAIN_DEFAULT);
    let cfg = build(target, clients, pattern, MIX_OFFLINE_SHARE, bytes, pace);
    Ok((Setup::of::<bin24::Bin24>(cfg), clients as u64))
}

/// The scenario's config, from the subcommand's flags or from its share of the mix.
fn build(
    target: SocketAddr,
    users: usize,
    pattern: Pattern,
    offline_share: f64,
    body_bytes: usize,
    pace: Pace,
) -> Bin24Config {
    Bin24Config {
        target,
        users,
        pattern,
        offline: topology::choose_offline(users, offline_share, pace.seed),
        body_bytes,
        run_id: run_id(),
        pace,
    }
}
