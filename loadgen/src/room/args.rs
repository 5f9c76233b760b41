//! `loadgen room` and `loadgen resp`: their flags and their translation into the fan-out
//! scenario's config (ROOM, or the same scenario against Redis pub/sub).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::args::{resolve_loopback, Pace};
use crate::matou;
use crate::mix::{senders_for, MixShare, Setup};
use crate::record::{ALIAS_PREFIX_LEN, RECORD_LEN_MAX, RECORD_LEN_MIN};
use crate::registry::{ScenarioArgs, ScenarioKind, Single};
use crate::room::{self, RoomConfig, Wire};
use crate::web;
use crate::{run_id, CommonArgs, CLIENTS_MAX, RATE_PER_S_MAX, SENDERS_MAX};

/// RESP channel names: short, as real ones are; the name is in every message on the wire.
pub(crate) const CHANNEL_BYTES_MAX: usize = 64;

pub(crate) const MESSAGE_BYTES_MIN: usize = ALIAS_PREFIX_LEN + RECORD_LEN_MIN;

pub(crate) const MESSAGE_BYTES_MAX: usize = 65_536;

/// Default `--rate` of `room` and `resp` (`web`'s is [`web::args::RATE_DEFAULT`]).
pub(crate) const RATE_DEFAULT: u64 = 1_000;

/// Default `--drain`.
pub(crate) const ROOM_DRAIN_DEFAULT: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub(crate) struct RoomArgs {
    /// Server port of the ROOM listener.
    #[arg(long, default_value_t = 55_555)]
    port: u16,

    #[command(flatten)]
    pub(crate) fanout: FanoutArgs,
}

#[derive(Args, Debug)]
pub(crate) struct RespArgs {
    /// Server port of Redis (RESP2).
    #[arg(long, default_value_t = 6_379)]
    port: u16,

    /// Pub/sub channel. Default: `lg-` and a run id, so no other run's subscribers count in
    /// the PUBLISH replies. At most 64 bytes.
    #[arg(long)]
    channel: Option<String>,

    #[command(flatten)]
    fanout: FanoutArgs,
}

/// The fan-out shape, shared by ROOM, RESP and WEB so all run the same scenario.
#[derive(Args, Debug)]
pub(crate) struct FanoutArgs {
    /// Connections (room members, channel subscribers) to open, at most 10000. RESP opens one
    /// more per sender, to publish.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX as u64))]
    clients: u64,

    /// How many of the members send, at most 1000 and at most --clients. The others only
    /// receive.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=SENDERS_MAX as u64))]
    senders: u64,

    /// Messages per second over all senders together (each sender sends rate/senders per
    /// second, evenly spaced, the senders phase-shifted so the load is spread). Default: 1000;
    /// `web`: 100, so the 10 default senders send 10/s each, within chatd's default
    /// --web-messages-per-s-max 20 per web user (above it the run says so before starting).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    rate: Option<u64>,

    /// Bytes of each message on the wire, `lgNNNNNN: ` prefix and newline included; the stamp
    /// is padded to reach it. From 63 to 65536. Messages larger than the server's read size are
    /// relayed in pieces, which ROOM may interleave with other senders' messages.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    #[command(flatten)]
    pub(crate) common: CommonArgs,
}

impl ScenarioArgs for RoomArgs {
    type Kind = room::Room;

    fn common(&self) -> &CommonArgs {
        &self.fanout.common
    }

    fn config(&self) -> Result<Single<room::Room>, String> {
        fanout_config(Wire::Room, self.port, &self.fanout)
    }
}

impl ScenarioArgs for RespArgs {
    type Kind = room::Room;

    fn common(&self) -> &CommonArgs {
        &self.fanout.common
    }

    fn config(&self) -> Result<Single<room::Room>, String> {
        let channel = self
            .channel
            .clone()
            .unwrap_or_else(|| format!("lg-{:08x}", run_id()));
        if channel.is_empty() || channel.len() > CHANNEL_BYTES_MAX {
            return Err(format!("--channel must be 1 to {CHANNEL_BYTES_MAX} bytes"));
        }
        let wire = Wire::Resp {
            channel: channel.into_bytes(),
        };
        fanout_config(wire, self.port, &self.fanout)
    }
}

/// ROOM, or the same scenario against Redis (RESP) or chatd's WebSocket lobby (WEB).
pub(crate) fn fanout_config(
    wire: Wire,
    port: u16,
    args: &FanoutArgs,
) -> Result<Single<room::Room>, String> {
    let common = &args.common;
    let clients = args.clients as usize;
    let senders = args.senders as usize;
    if senders > clients {
        return Err(format!(
            "--senders ({senders}) cannot exceed --clients ({clients})"
        ));
    }
    let max = match wire {
        Wire::Web => web::args::MESSAGE_BYTES_MAX,
        _ => MESSAGE_BYTES_MAX,
    };
    if !(MESSAGE_BYTES_MIN..=max).contains(&args.payload_bytes)
        || args.payload_bytes - ALIAS_PREFIX_LEN > RECORD_LEN_MAX
    {
        return Err(format!(
            "--payload-bytes must be between {MESSAGE_BYTES_MIN} (the alias prefix and the \
             stamp) and {max}"
        ));
    }
    let target = resolve_loopback(&common.host, port)?;
    let rate = match wire {
        Wire::Web => args.rate.unwrap_or(web::args::RATE_DEFAULT),
        _ => args.rate.unwrap_or(RATE_DEFAULT),
    };
    if wire == Wire::Web {
        let per_sender = rate as f64 / senders as f64;
        let asked = format!("--rate {rate} over --senders {senders}");
        if let Some(note) = web::args::over_chatd_limit(per_sender, &asked) {
            eprintln!("loadgen: {note}");
        }
    }
    let publishers = match wire {
        Wire::Room | Wire::Web => 0,
        Wire::Resp { .. } => senders,
    };
    let pace = Pace::single(common, rate, ROOM_DRAIN_DEFAULT);
    let cfg = build(wire, target, clients, senders, args.payload_bytes, pace);
    let server = match cfg.wire {
        Wire::Room => "ROOM",
        Wire::Resp { .. } => "RESP (Redis pub/sub)",
        Wire::Web => "WEB",
    };
    let title = format!(
        "{server}: {clients} clients, {senders} senders, {rate} msg/s, {} B, {:?}",
        args.payload_bytes, common.duration
    );
    let files = (clients + publishers) as u64;
    Ok((cfg, files, title))
}

/// This scenario's share of `loadgen mix`, checked and turned into its config; also the
/// descriptors it needs.
pub(crate) fn in_mix(m: &MixShare<'_>) -> Result<(Setup, u64), String> {
    fanout_in_mix::<room::Room>(m, Wire::Room, m.args.room_port, MESSAGE_BYTES_MAX)
}

/// A fan-out's share of the mix (ROOM's, WEB's) on `port`, its messages at most `bytes_max`.
pub(crate) fn fanout_in_mix<K: ScenarioKind<Config = RoomConfig> + 'static>(
    m: &MixShare<'_>,
    wire: Wire,
    port: u16,
    bytes_max: usize,
) -> Result<(Setup, u64), String> {
    let (args, clients, rate) = (m.args, m.clients, m.rate);
    let (common, bytes) = (&args.common, args.payload_bytes);
    m.check_bytes(MESSAGE_BYTES_MIN, bytes_max)?;
    m.check_fanout(rate * clients as u64, matou::DELIVERIES_PER_S_MAX)?;
    let target = resolve_loopback(&common.host, port)?;
    let pace = m.pace(ROOM_DRAIN_DEFAULT);
    let senders = senders_for(clients);
    let cfg = build(wire, target, clients, senders, bytes, pace);
    Ok((Setup::of::<K>(cfg), clients as u64))
}

/// The scenario's config, from the subcommand's flags or from its share of the mix.
fn build(
    wire: Wire,
    target: SocketAddr,
    clients: usize,
    senders: usize,
    message_bytes: usize,
    pace: Pace,
) -> RoomConfig {
    RoomConfig {
        wire,
        target,
        clients,
        senders,
        message_bytes,
        pace,
    }
}
