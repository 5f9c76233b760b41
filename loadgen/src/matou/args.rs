//! `loadgen matou`'s flags and their translation into the MATOU scenario's config.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::args::{parse_duration, resolve_loopback, Pace};
use crate::bin24::topology::USERS_MAX;
use crate::matou::{self, MatouConfig};
use crate::mix::{senders_for, MixShare, Setup};
use crate::registry::{ScenarioArgs, Single};
use crate::{run_id, CommonArgs, RATE_PER_S_MAX, SENDERS_MAX, WARMUP_MAX};

/// Default `--drain`.
pub(crate) const MATOU_DRAIN_DEFAULT: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub(crate) struct MatouArgs {
    /// Server port of the MATOU listener.
    #[arg(long, default_value_t = 7_777)]
    port: u16,

    /// Users, named lg<run id><number>: each has its own connection, logs in, receives every
    /// public message and may be drawn for links. From 2 to 10000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=USERS_MAX as u64))]
    users: u64,

    /// How many of the users send public messages (chosen with --seed), at most 1000 and at
    /// most --users. Default: every user, up to 1000.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=SENDERS_MAX as u64))]
    senders: Option<u64>,

    /// Public messages per second over all senders together (each sender sends rate/senders per
    /// second, evenly spaced, the senders phase-shifted). Every message reaches every user, so
    /// the server delivers rate x users messages per second: at most 4000000.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    rate: u64,

    /// Private links brokered per second (0: none), each between a random Src and another
    /// Dst with no link open between them. At most 10000.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=matou::LINK_RATE_PER_S_MAX))]
    private_rate: u64,

    /// Bytes of each public message: the 52-byte text stamp, padded. From 52 to 512 (the
    /// contract's largest message).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    /// Longest wait, after every user sent PUBLIC_SIGN_OUT, for the server to close them all;
    /// one still open then fails the run. At most 10m.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sign_out_wait: Duration,

    #[command(flatten)]
    common: CommonArgs,
}

impl ScenarioArgs for MatouArgs {
    type Kind = matou::Matou;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn config(&self) -> Result<Single<matou::Matou>, String> {
        let common = &self.common;
        let users = self.users as usize;
        let senders_requested = self.senders.map_or(users.min(SENDERS_MAX), |s| s as usize);
        if senders_requested > users {
            return Err(format!(
                "--senders ({senders_requested}) cannot exceed --users ({users})"
            ));
        }
        if !(matou::stamp::STAMP_BYTES..=matou::stamp::MESSAGE_BYTES_MAX)
            .contains(&self.payload_bytes)
        {
            return Err(format!(
                "--payload-bytes must be between {} (the stamp) and {} (the largest MATOU message)",
                matou::stamp::STAMP_BYTES,
                matou::stamp::MESSAGE_BYTES_MAX
            ));
        }
        if self.sign_out_wait > WARMUP_MAX {
            return Err("--sign-out-wait must be at most 10m".into());
        }
        // Every message is delivered to every user: past a few million deliveries a second this
        // one loop cannot read and time them all, and the run would measure the loadgen.
        let deliveries_per_s = self.rate * self.users;
        if deliveries_per_s > matou::DELIVERIES_PER_S_MAX {
            return Err(format!(
            "--rate x --users plans {deliveries_per_s} deliveries/s; at most {} (every message \
             reaches every user, and every delivery is read and timed by one loop)",
            matou::DELIVERIES_PER_S_MAX
        ));
        }
        let window_us = (common.warmup + common.duration).as_micros();
        let links_planned = (window_us * u128::from(self.private_rate)).div_ceil(1_000_000);
        if links_planned > u128::from(matou::LINKS_MAX) {
            return Err(format!(
                "--private-rate x (--warmup + --duration) plans {links_planned} links; at most {} \
                 (every link is tracked until the report)",
                matou::LINKS_MAX
            ));
        }
        let target = resolve_loopback(&common.host, self.port)?;
        let pace = Pace::single(common, self.rate, MATOU_DRAIN_DEFAULT);
        let extras = (self.private_rate, self.sign_out_wait);
        let cfg = build(
            target,
            users,
            senders_requested,
            extras,
            self.payload_bytes,
            pace,
        );
        let title = format!(
            "MATOU: {users} users, {senders_requested} senders, {} msg/s, {} links/s, {} B, {:?}",
            self.rate, self.private_rate, self.payload_bytes, common.duration
        );
        Ok((cfg, users as u64, title))
    }
}

/// MATOU in a mix: private links brokered per second, per 10 users, at most the subcommand's
/// default 50; the sign-out wait is the subcommand's default.
const MIX_LINKS_PER_S_PER_10_USERS: u64 = 1;
const MIX_LINK_RATE_PER_S_MAX: u64 = 50;
const MIX_SIGN_OUT_WAIT: Duration = Duration::from_secs(5);

/// This scenario's share of `loadgen mix`, checked and turned into its config; also the
/// descriptors it needs.
pub(crate) fn in_mix(m: &MixShare<'_>) -> Result<(Setup, u64), String> {
    let (args, clients, rate) = (m.args, m.clients, m.rate);
    let (common, bytes) = (&args.common, args.payload_bytes);
    m.check_bytes(matou::stamp::STAMP_BYTES, matou::stamp::MESSAGE_BYTES_MAX)?;
    m.check_fanout(rate * clients as u64, matou::DELIVERIES_PER_S_MAX)?;
    let private_rate =
        (clients as u64 / 10 * MIX_LINKS_PER_S_PER_10_USERS).min(MIX_LINK_RATE_PER_S_MAX);
    let target = resolve_loopback(&common.host, args.matou_port)?;
    let pace = m.pace(MATOU_DRAIN_DEFAULT);
    let extras = (private_rate, MIX_SIGN_OUT_WAIT);
    let cfg = build(target, clients, senders_for(clients), extras, bytes, pace);
    Ok((Setup::of::<matou::Matou>(cfg), clients as u64))
}

/// The scenario's config, from the subcommand's flags or from its share of the mix: `extras`
/// is the private links per second and the sign-out wait.
fn build(
    target: SocketAddr,
    users: usize,
    senders: usize,
    (private_rate_per_s, sign_out_wait): (u64, Duration),
    message_bytes: usize,
    pace: Pace,
) -> MatouConfig {
    MatouConfig {
        target,
        users,
        senders,
        private_rate_per_s,
        sign_out_wait_us: sign_out_wait.as_micros() as u64,
        message_bytes,
        run_id: run_id(),
        pace,
    }
}
