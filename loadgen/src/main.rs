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

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::args::{parse_duration, resolve_loopback};
use crate::bin24::topology::{self, Pattern, USERS_MAX};
use crate::bin24::{Bin24Config, STAMP_BYTES};
use crate::ccm::CcmConfig;
use crate::matou::MatouConfig;
use crate::ocm::OcmConfig;
use crate::plan::SplitMix64;
use crate::record::{ALIAS_PREFIX_LEN, RECORD_LEN_MAX, RECORD_LEN_MIN};
use crate::report::ScenarioReport;
use crate::room::{RoomConfig, Wire};
use crate::stats::LatencyHistogram;

/// Exit codes: 0 all delivered, 1 something lost/duplicated/failed, 2 cannot run at all.
const EXIT_BAD_RUN: u8 = 2;
/// Most connections one loadgen process opens.
const CLIENTS_MAX: usize = 10_000;
/// Most senders: the loss table holds one counter per (client, sender).
const SENDERS_MAX: usize = 1_000;
const RATE_PER_S_MAX: u64 = 1_000_000;
/// RESP channel names: short, as real ones are; the name is in every message on the wire.
const CHANNEL_BYTES_MAX: usize = 64;
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
/// Default `--drain` of each scenario. BIN24's exceeds the server's 3 s answer timeout, so a
/// recipient the server gives up on still has its messages answered "300" within the drain.
const ROOM_DRAIN_DEFAULT: Duration = Duration::from_secs(2);
const BIN24_DRAIN_DEFAULT: Duration = Duration::from_secs(5);
const CCM_DRAIN_DEFAULT: Duration = Duration::from_secs(2);
const MATOU_DRAIN_DEFAULT: Duration = Duration::from_secs(2);
/// CCM contents: the text stamp, up to 64 KiB (the server takes up to 1 MiB).
const CCM_CONTENT_BYTES_MIN: usize = ccm::stamp::STAMP_BYTES;
const CCM_CONTENT_BYTES_MAX: usize = 65_536;
/// BIN24 keeps 6 bytes per planned message (its fate and its write time): at most 120 MB.
const BIN24_MESSAGES_MAX: u64 = 20_000_000;
/// BIN24 bodies: the stamp, up to the largest body a frame carries.
const BIN24_BODY_BYTES_MIN: usize = STAMP_BYTES;
const BIN24_BODY_BYTES_MAX: usize = switchboard::protocol::bin24::codec::BODY_BYTES_MAX;
const OCM_DRAIN_DEFAULT: Duration = Duration::from_secs(2);
const LOBBY_DRAIN_DEFAULT: Duration = Duration::from_secs(2);
/// OCM: rooms x members is at most CLIENTS_MAX (each member has a UDP socket, and a TCP
/// connection while it asks for its token); a room has at most this many members, so the loss
/// table (one counter per ordered pair of members of a room) stays under 40 MB.
const OCM_MEMBERS_MAX: usize = 1_000;
/// OCM fan-out: the plan's deliveries per second, --rate x (--members - 1). One loadgen thread
/// reads every one of them (a recvmsg each); beyond this it would be the bottleneck, and its
/// receive lag would make the run INVALID anyway.
const OCM_DELIVERIES_PER_S_MAX: u64 = 250_000;
const OCM_ROOM_RATE_MAX: u64 = 10_000;
/// Receive buffer asked for on each OCM UDP socket (the kernel caps it at net.core.rmem_max).
const OCM_RECV_BUFFER_DEFAULT: usize = 4 << 20;
const OCM_RECV_BUFFER_MAX: usize = 256 << 20;

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
    /// RESP: the ROOM scenario against Redis pub/sub, for comparison: every member SUBSCRIBEs
    /// to one channel (and counts as joined at the confirmation); each sender PUBLISHes the
    /// same stamped messages over a connection of its own and checks every reply (the number
    /// of subscribers reached). Every member (senders included) times and checks every message.
    Resp(RespArgs),
    /// BIN24: users send direct messages to a partner on a fixed plan; recipients answer
    /// "200"; a share of the users stays offline, so messages to them are stored ("300") and
    /// delivered as type 2 when the loadgen connects them at the end. Every message is
    /// accounted for.
    Bin24(Bin24Args),
    /// CCM: identified users send Text messages to a partner on a fixed plan; receivers time
    /// and check every delivery; everyone answers the server's Connect keepalives. Optional
    /// silent users identify and never speak again: the report shows when the server closed
    /// them.
    Ccm(CcmArgs),
    /// OCM: rooms are created (host) and joined (guests) over TCP with TCRP, each request timed
    /// from its intended time; members then chat over UDP on a fixed plan and every other
    /// member of the room times and checks every message; UDP loss is reported (and fails the
    /// run above --loss-max); at the end guests and hosts leave and the leave texts are
    /// checked. --connect-rate does not apply: --room-rate paces the rooms.
    Ocm(OcmArgs),
    /// MATOU: users log in to the public room; senders send stamped public messages on a fixed
    /// plan and every user (the sender included) times and checks every broadcast; private
    /// links are brokered on a second plan (request, accept, addresses), each timed from its
    /// intended time to the address at Dst. Join and sign-out notices are checked per pair.
    Matou(MatouArgs),
    /// LOBBY: members of ROOM, MATOU, CCM and OCM in chatd's one lobby (the switchboard), every
    /// one of them sending on one plan; every member times and checks every lobby message it
    /// must get, whatever protocol it was said in (ROOM and MATOU members get their own back).
    /// Latency per (origin, destination) protocol pair, and same-protocol against
    /// cross-protocol. Not part of `mix`.
    Lobby(LobbyArgs),
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
    /// Server host. Only loopback addresses are allowed (127.0.0.0/8, ::1, localhost).
    /// Source addresses, so that ports never run out: with an IPv4 host, clients 0 to 999
    /// connect from 127.0.0.1 and each later client from an address of its own in
    /// 127.0.0.0/8 (client i from 127.0.0.2 + i: 127.0.3.234 for client 1000), and a client
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
}

#[derive(Args, Debug)]
struct RoomArgs {
    /// Server port of the ROOM listener.
    #[arg(long, default_value_t = 55_555)]
    port: u16,

    #[command(flatten)]
    fanout: FanoutArgs,
}

#[derive(Args, Debug)]
struct RespArgs {
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

/// The fan-out shape, shared by ROOM and RESP so both run the same scenario.
#[derive(Args, Debug)]
struct FanoutArgs {
    /// Connections (room members, channel subscribers) to open, at most 10000. RESP opens one
    /// more per sender, to publish.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=CLIENTS_MAX as u64))]
    clients: u64,

    /// How many of the members send, at most 1000 and at most --clients. The others only
    /// receive.
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

#[derive(Args, Debug)]
struct Bin24Args {
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

#[derive(Args, Debug)]
struct CcmArgs {
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

#[derive(Args, Debug)]
struct OcmArgs {
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

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct MatouArgs {
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

#[derive(Args, Debug)]
struct LobbyArgs {
    /// Server port of the ROOM listener.
    #[arg(long, default_value_t = 55_555)]
    room_port: u16,
    /// Server port of the MATOU listener.
    #[arg(long, default_value_t = 7_777)]
    matou_port: u16,
    /// Server port of the CCM listener.
    #[arg(long, default_value_t = 5_454)]
    ccm_port: u16,
    /// The OCM TCRP listener (TCP), where the OCM members join the lobby room.
    #[arg(long, default_value_t = 9_002)]
    ocm_tcp_port: u16,
    /// The OCM chat socket (UDP).
    #[arg(long, default_value_t = 9_003)]
    ocm_udp_port: u16,

    /// ROOM members (aliases lyr<run id>00001, ...); 0 leaves ROOM out. At most 1000 per
    /// protocol and 2000 in all.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    room: u64,
    /// MATOU users (lym<run id>00001, ...); 0 leaves MATOU out.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    matou: u64,
    /// CCM users (lyc<run id>00001, ...), sending to `*`; 0 leaves CCM out.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    ccm: u64,
    /// OCM members of the lobby room (lyo<run id>00001, ...; the first creates the room, or
    /// joins it if it exists); 0 leaves OCM out.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(0..=lobby::MEMBERS_PER_PROTOCOL_MAX as u64))]
    ocm: u64,

    /// The OCM room that is chatd's lobby (its --lobby-ocm-room).
    #[arg(long, default_value = "lobby")]
    ocm_room: String,

    /// Lobby messages per second over all members together (every member that joined sends
    /// rate/members per second, evenly spaced, phase-shifted). Messages, not deliveries: each
    /// reaches every other member, and its sender too in ROOM and MATOU, so the server
    /// delivers about rate x members per second (e.g. 250 with 400 members: 100,000/s); at
    /// most 1000000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=RATE_PER_S_MAX))]
    rate: u64,

    /// Bytes of every lobby text: the 52-byte stamp, padded. From 52 to 512 (MATOU's largest
    /// message, the smallest of the four protocols' limits).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,

    /// SO_RCVBUF asked for on every OCM member's UDP socket, in bytes.
    #[arg(long, default_value_t = OCM_RECV_BUFFER_DEFAULT)]
    recv_buffer_bytes: usize,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct ChurnArgs {
    /// Server host. Only loopback addresses are allowed (127.0.0.0/8, ::1, localhost).
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
    /// listener).
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

    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Seed for how each connection leaves, so a run can be repeated.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn run_churn(args: ChurnArgs) -> ExitCode {
    let mut targets = Vec::new();
    for name in &args.protocols {
        let (protocol, port) = match name.trim() {
            "room" => (churn::Protocol::Room, args.room_port),
            "bin24" => (churn::Protocol::Bin24, args.bin24_port),
            "ccm" => (churn::Protocol::Ccm, args.ccm_port),
            "matou" => (churn::Protocol::Matou, args.matou_port),
            "ocm" => (churn::Protocol::Ocm, args.ocm_tcp_port),
            other => {
                return refuse(format!(
                    "--protocols: unknown protocol {other:?} (room, bin24, ccm, matou, ocm)"
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
        Scenario::Room(args) => run_fanout(Wire::Room, args.port, args.fanout),
        Scenario::Resp(args) => {
            let channel = args
                .channel
                .unwrap_or_else(|| format!("lg-{:08x}", run_id()));
            if channel.is_empty() || channel.len() > CHANNEL_BYTES_MAX {
                return refuse(format!("--channel must be 1 to {CHANNEL_BYTES_MAX} bytes"));
            }
            let wire = Wire::Resp {
                channel: channel.into_bytes(),
            };
            run_fanout(wire, args.port, args.fanout)
        }
        Scenario::Bin24(args) => run_bin24(args),
        Scenario::Ccm(args) => run_ccm(args),
        Scenario::Ocm(args) => run_ocm(args),
        Scenario::Matou(args) => run_matou(args),
        Scenario::Lobby(args) => run_lobby(args),
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

/// ROOM, or the same scenario against Redis (RESP).
fn run_fanout(wire: Wire, port: u16, args: FanoutArgs) -> ExitCode {
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
    let target = match resolve_loopback(&common.host, port) {
        Ok(target) => target,
        Err(why) => return refuse(why),
    };
    let publishers = match wire {
        Wire::Room => 0,
        Wire::Resp { .. } => senders,
    };
    let cfg = RoomConfig {
        wire,
        target,
        clients,
        senders,
        rate_per_s: args.rate,
        duration_us: common.duration.as_micros() as u64,
        warmup_us: common.warmup.as_micros() as u64,
        drain_us: common.drain.unwrap_or(ROOM_DRAIN_DEFAULT).as_micros() as u64,
        message_bytes: args.payload_bytes,
        connect_rate_per_s: common.connect_rate,
        seed: common.seed,
        progress: std::io::stderr().is_terminal(),
    };
    let server = match cfg.wire {
        Wire::Room => "ROOM",
        Wire::Resp { .. } => "RESP (Redis pub/sub)",
    };
    let title = format!(
        "{server}: {clients} clients, {senders} senders, {} msg/s, {} B, {:?}",
        args.rate, args.payload_bytes, common.duration
    );
    let files = (clients + publishers) as u64;
    registry::run_single::<room::Room>(common, &cfg, files, title)
}

fn run_bin24(args: Bin24Args) -> ExitCode {
    let common = &args.common;
    if let Err(why) = check_common(common) {
        return refuse(why);
    }
    let users = args.users as usize;
    let pattern = if args.ring {
        Pattern::Ring
    } else {
        Pattern::Pairs
    };
    if let Err(why) = pattern.check(users) {
        return refuse(why);
    }
    if !(0.0..1.0).contains(&args.offline_share) {
        return refuse("--offline-share must be at least 0 and below 1");
    }
    if topology::offline_count(users, args.offline_share) >= users {
        return refuse("--offline-share leaves no user online to send");
    }
    if !(BIN24_BODY_BYTES_MIN..=BIN24_BODY_BYTES_MAX).contains(&args.payload_bytes) {
        return refuse(format!(
            "--payload-bytes must be between {BIN24_BODY_BYTES_MIN} (the stamp) and \
             {BIN24_BODY_BYTES_MAX} (the largest BIN24 body)"
        ));
    }
    let drain = common.drain.unwrap_or(BIN24_DRAIN_DEFAULT);
    let window_us = (common.warmup + common.duration).as_micros();
    let planned = (window_us * u128::from(args.rate)).div_ceil(1_000_000);
    if planned > u128::from(BIN24_MESSAGES_MAX) {
        return refuse(format!(
            "--rate x (--warmup + --duration) plans {planned} messages; at most \
             {BIN24_MESSAGES_MAX} (every message is tracked until it is accounted for)"
        ));
    }
    let target = match resolve_loopback(&common.host, args.port) {
        Ok(target) => target,
        Err(why) => return refuse(why),
    };
    let cfg = Bin24Config {
        target,
        users,
        pattern,
        offline: topology::choose_offline(users, args.offline_share, common.seed),
        rate_per_s: args.rate,
        duration_us: common.duration.as_micros() as u64,
        warmup_us: common.warmup.as_micros() as u64,
        drain_us: drain.as_micros() as u64,
        body_bytes: args.payload_bytes,
        connect_rate_per_s: common.connect_rate,
        run_id: run_id(),
        progress: std::io::stderr().is_terminal(),
    };
    let title = format!(
        "BIN24: {users} users ({pattern:?}), {}% offline, {} msg/s, {} B, {:?}",
        args.offline_share * 100.0,
        args.rate,
        args.payload_bytes,
        common.duration
    );
    registry::run_single::<bin24::Bin24>(common, &cfg, users as u64, title)
}

fn run_ccm(args: CcmArgs) -> ExitCode {
    let common = &args.common;
    if let Err(why) = check_common(common) {
        return refuse(why);
    }
    let users = args.users as usize;
    let pattern = if args.ring {
        Pattern::Ring
    } else {
        Pattern::Pairs
    };
    if let Err(why) = pattern.check(users) {
        return refuse(why);
    }
    if !(0.0..=1.0).contains(&args.silent_share) {
        return refuse("--silent-share must be between 0 and 1");
    }
    if args.silent_wait > WARMUP_MAX {
        return refuse("--silent-wait must be at most 10m");
    }
    if !(CCM_CONTENT_BYTES_MIN..=CCM_CONTENT_BYTES_MAX).contains(&args.payload_bytes) {
        return refuse(format!(
            "--payload-bytes must be between {CCM_CONTENT_BYTES_MIN} (the stamp) and \
             {CCM_CONTENT_BYTES_MAX}"
        ));
    }
    let silent = ccm::silent_count(users, args.silent_share);
    let target = match resolve_loopback(&common.host, args.port) {
        Ok(target) => target,
        Err(why) => return refuse(why),
    };
    let cfg = CcmConfig {
        target,
        users,
        pattern,
        silent,
        rate_per_s: args.rate,
        duration_us: common.duration.as_micros() as u64,
        warmup_us: common.warmup.as_micros() as u64,
        drain_us: common.drain.unwrap_or(CCM_DRAIN_DEFAULT).as_micros() as u64,
        silent_wait_us: args.silent_wait.as_micros() as u64,
        content_bytes: args.payload_bytes,
        connect_rate_per_s: common.connect_rate,
        run_id: run_id(),
        progress: std::io::stderr().is_terminal(),
    };
    let title = format!(
        "CCM: {users} users ({pattern:?}), {silent} silent, {} msg/s, {} B, {:?}",
        args.rate, args.payload_bytes, common.duration
    );
    registry::run_single::<ccm::Ccm>(common, &cfg, (users + silent) as u64, title)
}

fn run_ocm(args: OcmArgs) -> ExitCode {
    let common = &args.common;
    if let Err(why) = check_common(common) {
        return refuse(why);
    }
    let rooms = args.rooms as usize;
    let members = args.members as usize;
    let total = rooms * members;
    if total > CLIENTS_MAX {
        return refuse(format!(
            "--rooms x --members is {total}; at most {CLIENTS_MAX} members in all"
        ));
    }
    let deliveries_per_s = args.rate * (args.members - 1);
    if deliveries_per_s > OCM_DELIVERIES_PER_S_MAX {
        return refuse(format!(
            "--rate x (--members - 1) plans {deliveries_per_s} deliveries/s; at most \
             {OCM_DELIVERIES_PER_S_MAX} (one loadgen thread reads them all)"
        ));
    }
    // The longest names of this run: rooms `lgXXXXXXXX-NNNNN`, members `lgNNNNN`.
    let room_bytes = ocm::wire::room_name(0, rooms - 1).len();
    let name_bytes = ocm::wire::member_name(total - 1).len();
    let payload_max = ocm::wire::message_bytes_max(room_bytes, name_bytes);
    if !(ocm::stamp::STAMP_BYTES..=payload_max).contains(&args.payload_bytes) {
        return refuse(format!(
            "--payload-bytes must be between {} (the stamp) and {payload_max} (what fits a \
             datagram with this run's names)",
            ocm::stamp::STAMP_BYTES
        ));
    }
    if !(0.0..=100.0).contains(&args.loss_max) {
        return refuse("--loss-max is a percentage: between 0 and 100");
    }
    if args.exit_wait > WARMUP_MAX {
        return refuse("--exit-wait must be at most 10m");
    }
    if !(1..=OCM_RECV_BUFFER_MAX).contains(&args.recv_buffer_bytes) {
        return refuse(format!(
            "--recv-buffer-bytes must be between 1 and {OCM_RECV_BUFFER_MAX}"
        ));
    }
    let tcp_target = match resolve_loopback(&common.host, args.tcp_port) {
        Ok(target) => target,
        Err(why) => return refuse(why),
    };
    let udp_target = match resolve_loopback(&common.host, args.udp_port) {
        Ok(target) => target,
        Err(why) => return refuse(why),
    };
    let cfg = OcmConfig {
        tcp_target,
        udp_target,
        rooms,
        members,
        rate_per_s: args.rate,
        room_rate_per_s: args.room_rate,
        duration_us: common.duration.as_micros() as u64,
        warmup_us: common.warmup.as_micros() as u64,
        drain_us: common.drain.unwrap_or(OCM_DRAIN_DEFAULT).as_micros() as u64,
        exit_wait_us: args.exit_wait.as_micros() as u64,
        message_bytes: args.payload_bytes,
        recv_buffer_bytes: args.recv_buffer_bytes,
        loss_max_percent: args.loss_max,
        run_id: run_id(),
        progress: std::io::stderr().is_terminal(),
    };
    let title = format!(
        "OCM: {rooms} rooms x {members} members, {} msg/s, {} B, {:?}",
        args.rate, args.payload_bytes, common.duration
    );
    // A UDP socket per member, and a TCP connection each while the tokens are handed out.
    registry::run_single::<ocm::Ocm>(common, &cfg, 2 * total as u64, title)
}

fn run_matou(args: MatouArgs) -> ExitCode {
    let common = &args.common;
    if let Err(why) = check_common(common) {
        return refuse(why);
    }
    let users = args.users as usize;
    let senders_requested = args.senders.map_or(users.min(SENDERS_MAX), |s| s as usize);
    if senders_requested > users {
        return refuse(format!(
            "--senders ({senders_requested}) cannot exceed --users ({users})"
        ));
    }
    if !(matou::stamp::STAMP_BYTES..=matou::stamp::MESSAGE_BYTES_MAX).contains(&args.payload_bytes)
    {
        return refuse(format!(
            "--payload-bytes must be between {} (the stamp) and {} (the largest MATOU message)",
            matou::stamp::STAMP_BYTES,
            matou::stamp::MESSAGE_BYTES_MAX
        ));
    }
    if args.sign_out_wait > WARMUP_MAX {
        return refuse("--sign-out-wait must be at most 10m");
    }
    // Every message is delivered to every user: past a few million deliveries a second this
    // one loop cannot read and time them all, and the run would measure the loadgen.
    let deliveries_per_s = args.rate * args.users;
    if deliveries_per_s > matou::DELIVERIES_PER_S_MAX {
        return refuse(format!(
            "--rate x --users plans {deliveries_per_s} deliveries/s; at most {} (every message \
             reaches every user, and every delivery is read and timed by one loop)",
            matou::DELIVERIES_PER_S_MAX
        ));
    }
    let window_us = (common.warmup + common.duration).as_micros();
    let links_planned = (window_us * u128::from(args.private_rate)).div_ceil(1_000_000);
    if links_planned > u128::from(matou::LINKS_MAX) {
        return refuse(format!(
            "--private-rate x (--warmup + --duration) plans {links_planned} links; at most {} \
             (every link is tracked until the report)",
            matou::LINKS_MAX
        ));
    }
    let target = match resolve_loopback(&common.host, args.port) {
        Ok(target) => target,
        Err(why) => return refuse(why),
    };
    let cfg = MatouConfig {
        target,
        users,
        senders: senders_requested,
        rate_per_s: args.rate,
        private_rate_per_s: args.private_rate,
        duration_us: common.duration.as_micros() as u64,
        warmup_us: common.warmup.as_micros() as u64,
        drain_us: common.drain.unwrap_or(MATOU_DRAIN_DEFAULT).as_micros() as u64,
        sign_out_wait_us: args.sign_out_wait.as_micros() as u64,
        message_bytes: args.payload_bytes,
        connect_rate_per_s: common.connect_rate,
        seed: common.seed,
        run_id: run_id(),
        progress: std::io::stderr().is_terminal(),
    };
    let title = format!(
        "MATOU: {users} users, {senders_requested} senders, {} msg/s, {} links/s, {} B, {:?}",
        args.rate, args.private_rate, args.payload_bytes, common.duration
    );
    registry::run_single::<matou::Matou>(common, &cfg, users as u64, title)
}

fn run_lobby(args: LobbyArgs) -> ExitCode {
    let common = &args.common;
    if let Err(why) = check_common(common) {
        return refuse(why);
    }
    let members = [args.room, args.matou, args.ccm, args.ocm].map(|n| n as usize);
    let total: usize = members.iter().sum();
    if !(2..=lobby::MEMBERS_MAX).contains(&total) {
        return refuse(format!(
            "--room + --matou + --ccm + --ocm is {total}; from 2 to {} members in all",
            lobby::MEMBERS_MAX
        ));
    }
    let deliveries_per_s = args.rate * total as u64;
    if deliveries_per_s > lobby::DELIVERIES_PER_S_MAX {
        return refuse(format!(
            "--rate x members plans up to {deliveries_per_s} deliveries/s; at most {} (every \
             delivery is read and checked by one loop)",
            lobby::DELIVERIES_PER_S_MAX
        ));
    }
    if !(lobby::wire::STAMP_BYTES..=lobby::wire::MESSAGE_BYTES_MAX).contains(&args.payload_bytes) {
        return refuse(format!(
            "--payload-bytes must be between {} (the stamp) and {} (the largest MATOU message)",
            lobby::wire::STAMP_BYTES,
            lobby::wire::MESSAGE_BYTES_MAX
        ));
    }
    if args.ocm_room.is_empty() || args.ocm_room.len() > 255 {
        return refuse("--ocm-room must be 1 to 255 bytes");
    }
    if !(1..=OCM_RECV_BUFFER_MAX).contains(&args.recv_buffer_bytes) {
        return refuse(format!(
            "--recv-buffer-bytes must be between 1 and {OCM_RECV_BUFFER_MAX}"
        ));
    }
    let target = |port| resolve_loopback(&common.host, port);
    let targets = (
        target(args.room_port),
        target(args.matou_port),
        target(args.ccm_port),
        target(args.ocm_tcp_port),
        target(args.ocm_udp_port),
    );
    let (room, matou, ccm, ocm_tcp, ocm_udp) = match targets {
        (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) => (a, b, c, d, e),
        (Err(why), ..) => return refuse(why),
        (_, Err(why), ..) | (_, _, Err(why), ..) | (.., Err(why), _) | (.., Err(why)) => {
            return refuse(why)
        }
    };
    let cfg = lobby::LobbyConfig {
        room_target: room,
        matou_target: matou,
        ccm_target: ccm,
        ocm_tcp_target: ocm_tcp,
        ocm_udp_target: ocm_udp,
        members,
        ocm_room: args.ocm_room.clone(),
        rate_per_s: args.rate,
        duration_us: common.duration.as_micros() as u64,
        warmup_us: common.warmup.as_micros() as u64,
        drain_us: common.drain.unwrap_or(LOBBY_DRAIN_DEFAULT).as_micros() as u64,
        message_bytes: args.payload_bytes,
        connect_rate_per_s: common.connect_rate,
        recv_buffer_bytes: args.recv_buffer_bytes,
        run_id: run_id(),
        progress: std::io::stderr().is_terminal(),
    };
    let title = format!(
        "LOBBY: ROOM {}, MATOU {}, CCM {}, OCM {}, {} msg/s (up to {deliveries_per_s} \
         deliveries/s), {} B, {:?}",
        args.room, args.matou, args.ccm, args.ocm, args.rate, args.payload_bytes, common.duration
    );
    // A TCP connection per member, and a UDP socket per OCM member.
    let files = (total + members[3]) as u64;
    registry::run_single::<lobby::Lobby>(common, &cfg, files, title)
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
