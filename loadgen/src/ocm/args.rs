//! `loadgen ocm`'s flags and their translation into the OCM scenario's config.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::args::{parse_duration, resolve_hosts, Pace};
use crate::mix::{ocm_rooms, MixShare, Setup};
use crate::ocm::{self, OcmConfig, SendTo};
use crate::registry::{ScenarioArgs, Single};
use crate::{run_id, CommonArgs, CLIENTS_MAX, RATE_PER_S_MAX, WARMUP_MAX};

/// Default `--drain`.
pub(crate) const OCM_DRAIN_DEFAULT: Duration = Duration::from_secs(2);

/// OCM: rooms x members is at most CLIENTS_MAX (each member has a UDP socket, and a TCP
/// connection while it asks for its token); a room has at most this many members, so the loss
/// table (one counter per ordered pair of members of a room) stays under 40 MB.
pub(crate) const OCM_MEMBERS_MAX: usize = 1_000;

/// OCM fan-out: the plan's deliveries per second, --rate x (--members - 1). One loadgen thread
/// reads every one of them (a recvmsg each); beyond this it would be the bottleneck, and its
/// receive lag would make the run INVALID anyway.
pub(crate) const OCM_DELIVERIES_PER_S_MAX: u64 = 250_000;

pub(crate) const OCM_ROOM_RATE_MAX: u64 = 10_000;

/// Receive buffer asked for on each OCM UDP socket (the kernel caps it at net.core.rmem_max).
pub(crate) const OCM_RECV_BUFFER_DEFAULT: usize = 4 << 20;

pub(crate) const OCM_RECV_BUFFER_MAX: usize = 256 << 20;

#[derive(Args, Debug)]
pub(crate) struct OcmArgs {
    /// Server port of the OCM TCRP listener (TCP: create and join rooms).
    #[arg(long, default_value_t = 9_002)]
    tcp_port: u16,

    /// Server port of the OCM chat socket (UDP).
    #[arg(long, default_value_t = 9_003)]
    udp_port: u16,

    /// Rooms, each created by its host (lg00001, then every --members-th member) under a name
    /// unique to the run. Rooms x members at most 10000.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX as u64))]
    rooms: u64,

    /// Members per room, the host included; each has its own UDP socket. From 2 to 1000.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=OCM_MEMBERS_MAX as u64))]
    members: u64,

    /// Chat messages per second over all members together (every member that joined sends
    /// rate/members per second, evenly spaced, phase-shifted). Each message goes to the other
    /// members - 1 of its room: rate x (members - 1) deliveries per second, at most 250000.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    rate: u64,

    /// Rooms created per second in the rooms phase (open loop: room r's create is due at
    /// r / room-rate; its guests join once it exists). The phase gives up after max(10 s,
    /// 3 x the planned time).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=OCM_ROOM_RATE_MAX))]
    room_rate: u64,

    /// Bytes of each chat message: the 52-byte printable stamp, padded; at most what fits a
    /// datagram (4014 with this run's names).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    /// UDP loss allowed, in percent of the expected deliveries (e.g. 0.1): loss above it fails
    /// the run (exit 1). Loss is always reported; the default 0 fails on any.
    #[arg(long, default_value_t = 0.0)]
    loss_max: f64,

    /// Longest wait for the leave texts after the last planned exit. At most 10m.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    exit_wait: Duration,

    /// SO_RCVBUF asked for on every UDP socket, in bytes, so the loadgen itself drops nothing;
    /// the kernel caps it at net.core.rmem_max and the report says so.
    #[arg(long, default_value_t = OCM_RECV_BUFFER_DEFAULT)]
    recv_buffer_bytes: usize,

    /// With several --host (a cluster's nodes; member i's TCRP request and texts are host i
    /// mod n's): where each member sends its chat datagrams (its exit goes to its own host).
    /// `next` needs several hosts.
    #[arg(long, value_enum, default_value_t = SendTo::Own)]
    send_to: SendTo,

    #[command(flatten)]
    common: CommonArgs,
}

impl ScenarioArgs for OcmArgs {
    type Kind = ocm::Ocm;

    fn common(&self) -> &CommonArgs {
        &self.common
    }

    fn config(&self) -> Result<Single<ocm::Ocm>, String> {
        let common = &self.common;
        let rooms = self.rooms as usize;
        let members = self.members as usize;
        let total = rooms * members;
        if total > CLIENTS_MAX {
            return Err(format!(
                "--rooms x --members is {total}; at most {CLIENTS_MAX} members in all"
            ));
        }
        let deliveries_per_s = self.rate * (self.members - 1);
        if deliveries_per_s > OCM_DELIVERIES_PER_S_MAX {
            return Err(format!(
                "--rate x (--members - 1) plans {deliveries_per_s} deliveries/s; at most \
                 {OCM_DELIVERIES_PER_S_MAX} (one loadgen thread reads them all)"
            ));
        }
        // The longest names of this run: rooms `lgXXXXXXXX-NNNNN`, members `lgNNNNN`.
        let room_bytes = ocm::wire::room_name(0, rooms - 1).len();
        let name_bytes = ocm::wire::member_name(total - 1).len();
        let payload_max = ocm::wire::message_bytes_max(room_bytes, name_bytes);
        if !(ocm::stamp::STAMP_BYTES..=payload_max).contains(&self.payload_bytes) {
            return Err(format!(
                "--payload-bytes must be between {} (the stamp) and {payload_max} (what fits a \
                 datagram with this run's names)",
                ocm::stamp::STAMP_BYTES
            ));
        }
        if !(0.0..=100.0).contains(&self.loss_max) {
            return Err("--loss-max is a percentage: between 0 and 100".into());
        }
        if self.exit_wait > WARMUP_MAX {
            return Err("--exit-wait must be at most 10m".into());
        }
        if !(1..=OCM_RECV_BUFFER_MAX).contains(&self.recv_buffer_bytes) {
            return Err(format!(
                "--recv-buffer-bytes must be between 1 and {OCM_RECV_BUFFER_MAX}"
            ));
        }
        let nodes = targets(&common.host, (self.tcp_port, self.udp_port), self.send_to)?;
        let node_count = nodes.0.len();
        let pace = Pace::single(common, self.rate, OCM_DRAIN_DEFAULT);
        let udp = (self.exit_wait, self.recv_buffer_bytes, self.loss_max);
        let cfg = build(
            nodes,
            (rooms, members, self.room_rate),
            udp,
            self.payload_bytes,
            run_id(),
            pace,
        );
        let mut title = format!(
            "OCM: {rooms} rooms x {members} members, {} msg/s, {} B, {:?}",
            self.rate, self.payload_bytes, common.duration
        );
        if node_count > 1 {
            title += &format!(", {node_count} nodes, sent to {}", self.send_to.name());
        }
        // A UDP socket per member, and a TCP connection each while the tokens are handed out.
        Ok((cfg, 2 * total as u64, title))
    }
}

/// OCM in a mix: the wait for the leave texts (the subcommand's default).
const MIX_EXIT_WAIT: Duration = Duration::from_secs(2);

/// This scenario's share of `loadgen mix`, checked and turned into its config; also the
/// descriptors it needs.
pub(crate) fn in_mix(m: &MixShare<'_>) -> Result<(Setup, u64), String> {
    let (args, clients, rate, connect_rate) = (m.args, m.clients, m.rate, m.connect_rate);
    let (common, bytes) = (&args.common, args.payload_bytes);
    let (rooms, members) = ocm_rooms(clients);
    let total = rooms * members;
    let run_id = run_id();
    let room_bytes = ocm::wire::room_name(run_id, rooms - 1).len();
    let name_bytes = ocm::wire::member_name(total - 1).len();
    m.check_bytes(
        ocm::stamp::STAMP_BYTES,
        ocm::wire::message_bytes_max(room_bytes, name_bytes),
    )?;
    m.check_fanout(rate * (members as u64 - 1), OCM_DELIVERIES_PER_S_MAX)?;
    let ports = (args.ocm_tcp_port, args.ocm_udp_port);
    let nodes = targets(&common.host, ports, SendTo::Own)?;
    let room_rate = (connect_rate / members as u64).clamp(1, OCM_ROOM_RATE_MAX);
    // Loss allowed: none, as the single run's default.
    let udp = (MIX_EXIT_WAIT, OCM_RECV_BUFFER_DEFAULT, 0.0);
    let pace = m.pace(OCM_DRAIN_DEFAULT);
    let cfg = build(nodes, (rooms, members, room_rate), udp, bytes, run_id, pace);
    // A UDP socket per member, and a TCP connection each while it asks for its token.
    Ok((Setup::of::<ocm::Ocm>(cfg), 2 * total as u64))
}

/// Each host of `--host` at the TCRP and chat `ports`, and where members send: `next` needs
/// several hosts. Not recorded for the other scenarios' spreading ([`crate::connect`]): the
/// config names each member's node itself.
fn targets(
    hosts: &str,
    (tcp_port, udp_port): (u16, u16),
    send_to: SendTo,
) -> Result<Nodes, String> {
    let tcp_targets = resolve_hosts(hosts, tcp_port)?;
    let udp_targets = resolve_hosts(hosts, udp_port)?;
    if send_to == SendTo::Next && tcp_targets.len() < 2 {
        return Err(format!(
            "--send-to next needs several --host (a cluster's nodes); --host {hosts} names one"
        ));
    }
    Ok((tcp_targets, udp_targets, send_to))
}

/// Each node's TCRP listener and chat socket, and where members send.
type Nodes = (Vec<SocketAddr>, Vec<SocketAddr>, SendTo);

/// The scenario's config, from the subcommand's flags or from its share of the mix: `rooms`
/// is the rooms, their members and the rooms opened per second; `udp` the wait for the leave
/// texts, the sockets' receive buffer and the loss allowed (%).
fn build(
    (tcp_targets, udp_targets, send_to): Nodes,
    (rooms, members, room_rate_per_s): (usize, usize, u64),
    (exit_wait, recv_buffer_bytes, loss_max_percent): (Duration, usize, f64),
    message_bytes: usize,
    run_id: u32,
    pace: Pace,
) -> OcmConfig {
    OcmConfig {
        tcp_targets,
        udp_targets,
        send_to,
        rooms,
        members,
        room_rate_per_s,
        exit_wait_us: exit_wait.as_micros() as u64,
        message_bytes,
        recv_buffer_bytes,
        loss_max_percent,
        run_id,
        pace,
    }
}
