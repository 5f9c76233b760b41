//! The OCM scenario: rooms created and joined over TCP (TCRP), chat over UDP.
//!
//! Phases, all bounded in time:
//! 1. Rooms: room `r`'s host is due at `r / --room-rate` (open loop). It connects to the TCRP
//!    port, binds its UDP socket on the IP that connection uses, and sends the create request
//!    whose JSON names that UDP address; once the token comes back, the room's guests do the
//!    same with join requests, all at once. Each request is timed from its intended time to
//!    its complete answer: the host's from the room's planned time, a guest's from the moment
//!    its room was created (a join cannot be meant before the room exists). Every answer is
//!    checked (state 2, status 202, the contract's message, a 64-hex token, `json.dumps` form).
//!    Ends when every member has its token or has failed, or after max(10 s, 3 x planned).
//! 2. Chat: every member that joined sends datagrams on the shared plan (`--rate` in total);
//!    each carries a printable stamp (sender, sequence, intended time). Every other member of
//!    the room must receive `<name>: <message>`: delivery is timed from the intended time, and
//!    losses, late arrivals and duplicates are counted per (receiver, sender) stream. The
//!    sender getting its own message back is an error (an echo).
//! 3. Drain: until every delivery arrived, or `--drain`. What is missing then is lost: UDP loss
//!    is reported as a figure and a percentage; `--loss-max` says how much fails the run.
//! 4. Exit: every guest but the last of each room sends `exit`, then every host (on the plan's
//!    spacing); each leave text must reach exactly the members still in the room, the host's
//!    closing text the last guest. Ends when all arrived, or `--exit-wait` after the last exit.
//!
//! Several nodes of a cluster (`--host A,B,...`): member `u`'s home node is node `u mod n`, which
//! answers its TCRP request and sends it its texts (from its chat socket); a room's members are
//! spread over the nodes. With `--send-to next` a member sends its chat to the next node's chat
//! socket instead, which checks its token in Redis: every delivery then crosses nodes (its exit
//! still goes home). In the exit phase a member then leaves only once it got the leave texts of
//! those who left before it (at most `--exit-wait` late): its node may learn of an earlier exit
//! on another node only after its own.
//!
//! It runs on the engine ([`crate::engine`]): the TCRP exchange is a client's connection, the rooms
//! phase its ramp-up, the exit phase its closing phase; the UDP sockets share its loop (read in
//! `recvmmsg` batches within a budget, then waiting on `still_ready`) and its dirty set (a member's
//! queued datagrams are sent when its index is flushed). The UDP sockets ask for large receive
//! buffers so the loadgen itself drops nothing; what the kernel granted is reported.

pub mod accounting;
pub mod args;
pub mod churn;
pub mod report;
pub mod stamp;
pub(crate) mod udp;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;

use bytes::Bytes;
use mio::net::UdpSocket;
use mio::{Interest, Token};
use switchboard::protocol::ocm::codec;

use crate::args::Pace;
use crate::course::{Course, Phase};
use crate::driver::{Phases, RunError, SentReceived, START_DELAY_US};
use crate::engine::{self, ClientOf, Link, Stage, Wire};
use crate::plan::Due;
use crate::registry::{Named, Protocol, Row, ScenarioKind};
use crate::report::Ran;
use crate::sockio::{Chunk, Queued, SendLags};
use crate::stats::{ErrorKind, LatencyHistogram, OwnLags};
use accounting::{Accounting, Arrival};
pub use accounting::{Counts, Losses};
use stamp::Stamp;
use wire::{Answer, ExpectedLeave, LeaveMatch};

// Tokens: the pacer's is `driver::TIMER` (0); member `u`'s TCRP connection has the engine's
// `1 + u`, its UDP socket `1 + members + u`.

// Each datagram is copied into the loop's read buffer.
const _: () = assert!(udp::SLOT_BYTES <= crate::driver::READ_BUF_BYTES);

/// Datagrams read from one socket per turn before the others get theirs.
const RECV_BUDGET_DATAGRAMS: usize = 64;
/// Datagrams read per `recvmmsg`.
const RECV_BATCH_DATAGRAMS: usize = 16;
/// Largest TCRP answer accepted (the contract's are under 300 bytes).
const TCRP_ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Datagrams a member may hold while its socket is not writable; beyond, "not sent".
const SEND_QUEUE_MESSAGES_MAX: usize = 1_024;
const DATAGRAMS_PER_SEND_CHECK: usize = 256;

/// Where a member sends its datagrams when the run spans several nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendTo {
    // (Plain comments: a documented value would turn `loadgen ocm --help` into its long form.)
    // To its home node's chat socket (the node that answered its TCRP request).
    Own,
    // To the next node's (home + 1 mod n), which checks the token in Redis: every delivery
    // crosses nodes.
    Next,
}

impl SendTo {
    pub fn name(self) -> &'static str {
        match self {
            SendTo::Own => "own",
            SendTo::Next => "next",
        }
    }
}

#[derive(Clone, Debug)]
pub struct OcmConfig {
    /// Each node's TCRP listener (TCP), in `--host` order: member `u`'s home node is
    /// `u mod n`. At least one.
    pub tcp_targets: Vec<SocketAddr>,
    /// Each node's chat socket (UDP), in the same order: a member hears from its home node's.
    pub udp_targets: Vec<SocketAddr>,
    /// Which node's chat socket a member sends to (with one node, its own either way).
    pub send_to: SendTo,
    pub rooms: usize,
    /// Members per room, the host included.
    pub members: usize,
    /// Rooms created per second in the rooms phase.
    pub room_rate_per_s: u64,
    /// Longest wait for the leave texts after the last exit's intended time.
    pub exit_wait_us: u64,
    /// Bytes of each chat message (the stamp, padded).
    pub message_bytes: usize,
    /// SO_RCVBUF asked for on every UDP socket.
    pub recv_buffer_bytes: usize,
    /// UDP loss allowed, in percent of the expected deliveries; more fails the run.
    pub loss_max_percent: f64,
    pub run_id: u32,
    /// Its chat rate, phases' lengths and progress line (`--room-rate`, not the connect
    /// rate, paces its rooms).
    pub pace: Pace,
}

#[derive(Debug, Default)]
pub struct Latencies {
    /// Create answer complete minus the room's planned time.
    pub create: LatencyHistogram,
    /// Join answer complete minus the time its room was created.
    pub join: LatencyHistogram,
    /// Chat text at a receiver minus intended send time.
    pub delivery: LatencyHistogram,
    /// Leave text at a receiver minus the leaver's intended exit time.
    pub leave: LatencyHistogram,
    /// The loop reading a datagram minus the kernel queueing it on the socket (its receive
    /// timestamp): the loadgen's own share of every delivery latency.
    pub receive_lag: LatencyHistogram,
    pub own: OwnLags,
}

/// What the kernel made of the receive buffers asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvBuffers {
    pub requested_bytes: usize,
    /// Smallest and largest granted (SO_RCVBUF as read back, halved: Linux doubles the request
    /// for its bookkeeping).
    pub granted_min_bytes: usize,
    pub granted_max_bytes: usize,
    /// Sockets granted less than asked (capped by net.core.rmem_max).
    pub capped_sockets: usize,
    pub sockets: usize,
    /// Datagrams the loadgen's sockets dropped because their buffers were full (the kernel's
    /// counters, read at the end); `None` if they could not be read.
    pub dropped: Option<u64>,
    /// Datagrams without a kernel receive timestamp (so without a receive lag).
    pub without_timestamp: u64,
}

#[derive(Debug)]
pub struct OcmOutcome {
    pub rooms_requested: usize,
    pub rooms_created: usize,
    pub members_requested: usize,
    pub members_joined: usize,
    /// Guests of rooms that were never created (not counted as errors of their own).
    pub members_not_attempted: usize,
    /// State-1 acknowledgements received before answers.
    pub tcrp_acknowledgements: u64,
    /// Its ramp-up is the rooms phase; "not sent for a lost connection": due while the member
    /// had failed, or the send itself failed.
    pub ran: Ran,
    pub latency: Latencies,
    pub counts: Counts,
    pub losses: Losses,
    /// Members that got their own message back.
    pub echoes: u64,
    pub delivered_in_window: u64,
    /// Datagrams from another address than the member's home node's chat port, or texts of
    /// another run.
    pub foreign_texts: u64,
    pub exits_planned: u64,
    pub exits_sent: u64,
    pub leaves_expected: u64,
    pub leaves_received: u64,
    /// Leave texts received a second time.
    pub leaves_again: u64,
    pub recv_buffers: RecvBuffers,
    pub exit_used_us: u64,
    pub exit_timed_out: bool,
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Chat {
        g: u64,
        intended_us: u64,
        noticed_us: u64,
    },
    Exit,
}

/// What OCM keeps per member; its TCRP connection is the engine's (the stages: `Connecting`
/// and `Greeting` while its request is under way, `Joined` with its token, `Leaving` once it
/// sent `exit`, `Failed`).
pub struct Member {
    name: String,
    room: usize,
    /// Its home node: the index of its TCRP listener and chat socket in the config.
    node: usize,
    is_host: bool,
    udp: Option<UdpSocket>,
    readable: bool,
    writable: bool,
    token: Bytes,
    queue: VecDeque<Pending>,
    /// The leave texts it must receive in the exit phase.
    leaves: Vec<ExpectedLeave>,
    exit_intended_us: u64,
}

/// OCM's part of the engine's run. The rooms phase is the ramp-up (its wave: the
/// hosts at `--room-rate`, each room's guests admitted once it exists), the exit phase its
/// closing phase.
pub struct Part<'a> {
    cfg: &'a OcmConfig,
    room_names: Vec<String>,
    room_created: Vec<bool>,
    accounting: Accounting,
    batch: udp::RecvBatch,
    message_buf: Vec<u8>,
    /// Inodes of the UDP sockets, to read their drop counters at the end.
    udp_inodes: HashSet<u64>,
    latency: Latencies,
    recv_buffers: RecvBuffers,
    tcrp_acknowledgements: u64,
    echoes: u64,
    delivered_in_window: u64,
    foreign_texts: u64,
    exits_sent: u64,
    leaves_expected: u64,
    leaves_received: u64,
    leaves_again: u64,
    /// The exit phase: who leaves, in order, and when.
    exit_order: Vec<usize>,
    exit_start_us: u64,
    next_exit: usize,
    received_since_send_check: usize,
}

pub type Run<'a> = engine::Run<Part<'a>>;

/// The scenario as the registry lists it.
pub struct Ocm;

impl ScenarioKind for Ocm {
    const ROW: Row = Protocol::Ocm.row();
    const UNREACHABLE_IN_MIX: &'static str = "no room could be created on the OCM server";
    type Config = OcmConfig;
    type Run<'a> = Run<'a>;
    type Outcome = OcmOutcome;
    type Report = report::Report;

    fn start(cfg: &OcmConfig) -> Result<Run<'_>, RunError> {
        let total = cfg.rooms * cfg.members;
        let members = (0..total).map(|u| Member {
            name: wire::member_name(u),
            room: u / cfg.members,
            node: cfg.home_node(u),
            is_host: u % cfg.members == 0,
            udp: None,
            readable: false,
            writable: false,
            token: Bytes::new(),
            queue: VecDeque::new(),
            leaves: Vec::new(),
            exit_intended_us: 0,
        });
        let part = Part {
            cfg,
            room_names: (0..cfg.rooms)
                .map(|r| wire::room_name(cfg.run_id, r))
                .collect(),
            room_created: vec![false; cfg.rooms],
            accounting: Accounting::new(cfg.rooms, cfg.members),
            batch: udp::RecvBatch::new(RECV_BATCH_DATAGRAMS),
            udp_inodes: HashSet::new(),
            message_buf: vec![0; cfg.message_bytes.max(stamp::STAMP_BYTES)],
            latency: Latencies::default(),
            recv_buffers: RecvBuffers {
                requested_bytes: cfg.recv_buffer_bytes,
                granted_min_bytes: usize::MAX,
                ..RecvBuffers::default()
            },
            tcrp_acknowledgements: 0,
            echoes: 0,
            delivered_in_window: 0,
            foreign_texts: 0,
            exits_sent: 0,
            leaves_expected: 0,
            leaves_received: 0,
            leaves_again: 0,
            exit_order: Vec::new(),
            exit_start_us: 0,
            next_exit: 0,
            received_since_send_check: 0,
        };
        let hosts = || -> Vec<usize> { (0..cfg.rooms).map(|r| r * cfg.members).collect() };
        let mut run = engine::Run::new(part, members, |_| hosts(), 1, cfg.pace.progress)?;
        // The rooms start once the loop runs, as the other scenarios' plans do.
        let start_us = run.io.clock.now_us() + START_DELAY_US;
        let (rate, progress) = (cfg.room_rate_per_s, cfg.pace.progress);
        run.course = Course::new(total, hosts(), start_us, rate, progress);
        Ok(run)
    }
    fn finish(run: Run<'_>) -> OcmOutcome {
        run.finish()
    }
    fn report(cfg: &OcmConfig, seed: u64, strict: bool, outcome: &OcmOutcome) -> report::Report {
        report::Report::new(cfg, seed, strict, cfg.loss_max_percent, outcome)
    }
    /// The latencies the report measures the server by (written and plotted), then the
    /// loadgen's own lags (written, not plotted).
    fn histograms(outcome: &OcmOutcome) -> (Named<'_>, Named<'_>) {
        (
            vec![
                ("create", &outcome.latency.create),
                ("join", &outcome.latency.join),
                ("delivery", &outcome.latency.delivery),
                ("leave", &outcome.latency.leave),
            ],
            [("receive-lag", &outcome.latency.receive_lag)]
                .into_iter()
                .chain(outcome.latency.own.named())
                .collect(),
        )
    }
    fn progress(cfg: &OcmConfig) -> bool {
        cfg.pace.progress
    }
    fn unreachable(cfg: &OcmConfig) -> String {
        format!(
            "no room could be created on an OCM server at TCP {} / UDP {}",
            addresses(&cfg.tcp_targets),
            addresses(&cfg.udp_targets)
        )
    }
}

impl<'a> Wire for Part<'a> {
    type User = Member;
    type Tag = ();
    type Message = codec::TcrpAnswer;
    const WAVE_TIMEOUT: &'static str = "timed out before its TCRP answer";

    fn target(&self, c: &ClientOf<Self>) -> SocketAddr {
        self.cfg.tcp_targets[c.node]
    }
    fn who(&self, _u: usize, c: &ClientOf<Self>) -> String {
        format!("member {}", c.name)
    }
    fn greet(run: &mut Run<'a>, u: usize) -> io::Result<()> {
        if let Err(why) = run.open_udp_and_request(u) {
            run.close_failed(u, ErrorKind::Connect, || why);
        }
        Ok(())
    }
    fn decode(run: &mut Run<'a>, u: usize) -> Result<Option<Self::Message>, String> {
        let inbuf = &mut run.clients[u].conn.inbuf;
        codec::decode_answer(inbuf, TCRP_ANSWER_BYTES_MAX).map_err(|e| e.to_string())
    }
    /// As the engine's, with OCM's wording for an answer that does not decode.
    fn on_read(run: &mut Run<'a>, u: usize, n: usize, now_us: u64) -> bool {
        let (io, conn) = (&run.io, &mut run.clients[u].conn);
        conn.inbuf.extend_from_slice(&io.read_buf[..n]);
        while run.clients[u].stage == Stage::Greeting {
            match Self::decode(run, u) {
                Ok(Some(answer)) => Self::on_message(run, u, answer, now_us),
                Ok(None) => return true,
                Err(e) => run.fail(u, ErrorKind::Protocol, format!("TCRP answer: {e}")),
            }
        }
        false
    }
    fn on_message(run: &mut Run<'a>, u: usize, answer: Self::Message, now_us: u64) {
        let member = &run.clients[u];
        let operation = wire::operation(member.is_host);
        match wire::judge_answer(&answer, operation, &run.p.room_names[member.room]) {
            Answer::Acknowledged => run.p.tcrp_acknowledgements += 1,
            Answer::Granted(token) => run.on_granted(u, token, now_us),
            Answer::Refused(why) => {
                let what = if member.is_host { "create" } else { "join" };
                run.fail(u, ErrorKind::Protocol, format!("{what}: {why}"));
            }
        }
    }
    fn on_server_close(run: &mut Run<'a>, u: usize, ended: Chunk) {
        match ended {
            Chunk::Failed(e) => run.fail(u, ErrorKind::Read, format!("TCRP read: {e}")),
            _ => {
                let got = run.clients[u].conn.inbuf.len();
                let why = format!("the server closed the TCRP connection after {got} answer bytes");
                run.fail(u, ErrorKind::Connect, why);
            }
        }
    }
    /// The engine's, with OCM's wording for a request that could not be written.
    fn fail(run: &mut Run<'a>, u: usize, kind: ErrorKind, why: String) {
        if kind == ErrorKind::Write {
            run.close_failed(u, kind, || format!("write: {why}"));
        } else {
            run.close_failed(u, kind, || why);
        }
    }
    fn failed(run: &mut Run<'a>, u: usize, _was: Stage) {
        let member = &mut run.clients[u];
        for pending in member.queue.drain(..) {
            if matches!(pending, Pending::Chat { .. }) {
                run.sends.not_sent_connection_lost += 1;
            }
        }
        if let Some(mut udp) = member.udp.take() {
            let _ = run.io.poll.registry().deregister(&mut udp);
        }
        let (is_host, room) = (member.is_host, member.room);
        // A host that could not create its room takes its guests with it.
        if is_host && !run.p.room_created[room] {
            let first = room * run.p.cfg.members;
            for guest in first + 1..first + run.p.cfg.members {
                run.clients[guest].stage = Stage::Failed;
                run.course.wave.settle(guest);
            }
        }
    }
    fn on_sent(&mut self, _u: usize, _sender: Option<u32>, _queued: &Queued<()>, _lag_us: u64) {}
    /// Only a request under way has a TCP connection.
    fn link(run: &Run<'a>, u: usize) -> Link {
        match run.clients.get(u).map(|c| c.stage) {
            Some(Stage::Connecting) => Link::Connecting,
            Some(Stage::Greeting) => Link::Greeting,
            _ => Link::Down,
        }
    }
    fn on_other_event(run: &mut Run<'a>, index: usize, readable: bool, writable: bool) {
        let Some(member) = (index.checked_sub(run.clients.len()))
            .and_then(|u| run.clients.get_mut(u).map(|c| (u, c)))
        else {
            return;
        };
        let (u, client) = member;
        client.readable |= readable;
        client.writable |= writable;
        run.drive_udp(u);
    }
    fn on_dirty(run: &mut Run<'a>, u: usize) {
        run.flush_ready(u);
        run.flush_udp(u);
    }
    fn send_due(run: &mut Run<'a>, now_us: u64) {
        run.p.received_since_send_check = 0;
        // A copy (a few integers): the loop below needs `run` mutably.
        let Some(plan) = run.course.plan.clone() else {
            return;
        };
        while let Some(due) = plan.take_due(&mut run.course.next_g, now_us) {
            let Due { g, intended_us, .. } = due;
            let u = run.senders[plan.sender_of(g) as usize];
            plan.record_lateness(&due, &mut run.own.schedule_lateness);
            if run.clients[u].stage != Stage::Joined {
                run.sends.not_sent_connection_lost += 1;
                continue;
            }
            let noticed_us = now_us;
            run.enqueue(
                u,
                Pending::Chat {
                    g,
                    intended_us,
                    noticed_us,
                },
            );
        }
    }
    fn counts(run: &Run<'a>) -> SentReceived {
        SentReceived {
            sent: run.sends.sent,
            received: run.p.accounting.counts.delivered,
        }
    }
    /// The rooms phase reached its deadline: requests still under way fail, members not
    /// attempted yet are given up (all of them at the first call, in member order).
    fn on_wave_timeout(run: &mut Run<'a>, first: usize) {
        if !matches!(
            run.clients[first].stage,
            Stage::Connecting | Stage::Greeting | Stage::Idle
        ) {
            return; // given up at an earlier call
        }
        for u in 0..run.clients.len() {
            match run.clients[u].stage {
                Stage::Connecting | Stage::Greeting => {
                    run.fail(u, ErrorKind::Connect, Self::WAVE_TIMEOUT.to_string());
                }
                Stage::Idle => {
                    run.clients[u].stage = Stage::Failed;
                    run.course.wave.settle(u);
                }
                _ => {}
            }
        }
    }
    fn start_sending(run: &mut Run<'a>, now_us: u64) -> Result<(), RunError> {
        let senders = run.joined_among(run.clients.len());
        if !run.p.room_created.iter().any(|&c| c) {
            return Err(run.errors.unreachable("no room was created"));
        }
        for &u in &senders {
            run.p.accounting.set_receiver(u);
        }
        let pace = &run.p.cfg.pace;
        run.plan_over(senders, pace, now_us);
        Ok(())
    }
    fn drain_us(&self) -> u64 {
        self.cfg.pace.drain_us
    }
    fn everything_arrived(run: &Run<'a>) -> bool {
        !run.clients.iter().any(|m| !m.queue.is_empty()) && run.p.accounting.outstanding() == 0
    }
    fn start_closing(run: &mut Run<'a>, now_us: u64) -> Phase {
        run.start_exit(now_us);
        Phase::Close { deadline_us: None }
    }
    /// The exits go out on their schedule; then, until every leave text arrived or
    /// `--exit-wait` after the last exit's intended time.
    fn closed(run: &mut Run<'a>, now_us: u64) -> bool {
        if run.course.phase == (Phase::Close { deadline_us: None }) {
            run.send_exits_due(now_us);
            if run.p.next_exit == run.p.exit_order.len() {
                let last_us = run.p.exit_intended_us(run.p.exit_order.len());
                let deadline_us = Some(last_us.max(now_us) + run.p.cfg.exit_wait_us);
                run.course.phase = Phase::Close { deadline_us };
            }
            return false;
        }
        run.flush_dirty();
        let queued = run.clients.iter().any(|m| !m.queue.is_empty());
        !queued && run.p.leaves_received == run.p.leaves_expected
    }
    /// The next exit's intended time while exits remain (or, while that member waits for its
    /// leave texts, the end of its wait); then the deadline (arrivals wake the poll by
    /// themselves).
    fn close_wake_us(run: &Run<'a>, deadline_us: Option<u64>) -> u64 {
        deadline_us.unwrap_or_else(|| match run.p.exit_order.get(run.p.next_exit) {
            Some(&u) if run.awaits_leaves(u) => run.exit_wait_end_us(u),
            _ => run.p.exit_intended_us(run.p.next_exit),
        })
    }
    fn doing(run: &Run<'a>) -> String {
        let p = &run.p;
        match run.course.phase {
            Phase::Ramp => format!(
                "rooms: {} of {} created, {} of {} members joined",
                p.room_created.iter().filter(|&&c| c).count(),
                p.cfg.rooms,
                run.count_at(Stage::Joined),
                run.clients.len()
            ),
            Phase::Send | Phase::Drain { .. } => format!(
                "sent {} of {}, deliveries outstanding {}",
                run.sends.sent,
                run.course.plan.as_ref().map_or(0, |p| p.messages),
                p.accounting.outstanding()
            ),
            Phase::Close { .. } => format!(
                "exits {} of {}, leave texts {} of {}",
                p.exits_sent,
                p.exit_order.len(),
                p.leaves_received,
                p.leaves_expected
            ),
            Phase::Done => String::new(),
        }
    }
}

impl OcmConfig {
    /// Member `u`'s home node: `u mod n`, as every scenario spreads its clients over `--host`.
    pub fn home_node(&self, u: usize) -> usize {
        u % self.tcp_targets.len().max(1)
    }

    /// Where member `u` sends its chat datagrams: its home node's chat socket, or the next
    /// node's (its exit goes home either way).
    pub fn send_target(&self, u: usize) -> SocketAddr {
        let shift = match self.send_to {
            SendTo::Own => 0,
            SendTo::Next => 1,
        };
        self.udp_targets[(self.home_node(u) + shift) % self.udp_targets.len()]
    }
}

/// A list of addresses as `--host` lists its hosts: comma-separated (one address alone as
/// itself).
pub fn addresses(targets: &[SocketAddr]) -> String {
    let texts: Vec<String> = targets.iter().map(SocketAddr::to_string).collect();
    texts.join(",")
}

impl Part<'_> {
    /// The intended time of the `i`-th exit, on the chat plan's overall spacing.
    fn exit_intended_us(&self, i: usize) -> u64 {
        self.exit_start_us + (i as u64 * 1_000_000) / self.cfg.pace.rate_per_s.max(1)
    }
}

impl Run<'_> {
    /// Binds the member's UDP socket on the IP its TCRP connection uses (the server binds the
    /// token to that IP), and queues the request naming the socket's address.
    fn open_udp_and_request(&mut self, u: usize) -> Result<(), String> {
        let Some(stream) = self.clients[u].conn.stream.as_ref() else {
            return Err("no TCRP connection".to_string());
        };
        let local = stream
            .local_addr()
            .map_err(|e| format!("local address: {e}"))?;
        let std_socket = StdUdpSocket::bind(SocketAddr::new(local.ip(), 0))
            .map_err(|e| format!("binding a UDP socket on {}: {e}", local.ip()))?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| format!("UDP non-blocking: {e}"))?;
        let fd = std_socket.as_raw_fd();
        let cfg = self.p.cfg;
        let granted = udp::set_recv_buffer(fd, cfg.recv_buffer_bytes)
            .map_err(|e| format!("SO_RCVBUF: {e}"))?;
        udp::enable_timestamps(fd).map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
        if let Ok(inode) = udp::inode(fd) {
            self.p.udp_inodes.insert(inode);
        }
        let udp_addr = std_socket
            .local_addr()
            .map_err(|e| format!("UDP local address: {e}"))?;
        let mut udp = UdpSocket::from_std(std_socket);
        let token = Token(1 + self.clients.len() + u);
        (self.io.poll.registry())
            .register(&mut udp, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("register UDP: {e}"))?;
        let b = &mut self.p.recv_buffers;
        b.sockets += 1;
        b.granted_min_bytes = b.granted_min_bytes.min(granted);
        b.granted_max_bytes = b.granted_max_bytes.max(granted);
        if granted < cfg.recv_buffer_bytes {
            b.capped_sockets += 1;
        }
        let member = &mut self.clients[u];
        let room = &self.p.room_names[member.room];
        let operation = wire::operation(member.is_host);
        let request = wire::request(operation, room, &member.name, udp_addr);
        member.udp = Some(udp);
        // Optimistic: a send that would block says so and waits for the writable edge.
        member.writable = true;
        member.conn.out.extend(&request);
        Ok(())
    }

    fn on_granted(&mut self, u: usize, token: Bytes, now_us: u64) {
        let member = &mut self.clients[u];
        member.token = token;
        member.stage = Stage::Joined;
        // From the room's planned time for a host, from its room's creation for a guest.
        let latency = now_us.saturating_sub(self.course.wave.intended_us(u));
        let (is_host, room) = (member.is_host, member.room);
        member.conn.close(self.io.poll.registry());
        if is_host {
            self.p.latency.create.record(latency);
            self.p.room_created[room] = true;
            // Before the host settles, so the rooms phase waits for its guests.
            let first = room * self.p.cfg.members;
            for guest in first + 1..first + self.p.cfg.members {
                self.course.wave.admit(guest, now_us);
                self.connect(guest);
            }
        } else {
            self.p.latency.join.record(latency);
        }
        self.course.wave.settle(u);
    }

    fn start_exit(&mut self, now_us: u64) {
        self.p.exit_start_us = now_us + START_DELAY_US;
        let names: Vec<String> = self.clients.iter().map(|m| m.name.clone()).collect();
        let members = self.p.cfg.members;
        let mut guests = Vec::new();
        let mut hosts = Vec::new();
        for r in 0..self.p.cfg.rooms {
            let first = r * members;
            let joined = self.joined_among(first + members);
            let joined: Vec<usize> = joined.into_iter().filter(|&u| u >= first).collect();
            if joined.first() != Some(&first) {
                continue; // no host, no room
            }
            let plan = wire::exit_plan(&joined, &names, &self.p.room_names[r]);
            for (receiver, leave) in plan.expected {
                self.clients[receiver].leaves.push(leave);
                self.p.leaves_expected += 1;
            }
            if let Some((&host, room_guests)) = plan.leavers.split_last() {
                guests.extend_from_slice(room_guests);
                hosts.push(host);
            }
        }
        guests.extend(hosts);
        for (i, &u) in guests.iter().enumerate() {
            self.clients[u].exit_intended_us = self.p.exit_intended_us(i);
        }
        self.p.exit_order = guests;
    }

    fn send_exits_due(&mut self, now_us: u64) {
        while let Some(&u) = (self.p.exit_order.get(self.p.next_exit))
            .filter(|_| self.p.exit_intended_us(self.p.next_exit) <= now_us)
        {
            if self.awaits_leaves(u) && now_us < self.exit_wait_end_us(u) {
                break; // the leave texts it waits for wake the loop
            }
            self.p.next_exit += 1;
            if self.clients[u].stage != Stage::Joined {
                continue;
            }
            self.clients[u].stage = Stage::Leaving;
            self.enqueue(u, Pending::Exit);
        }
        self.flush_dirty();
    }

    /// Across nodes a member leaves only once it got the leave texts of those who left before
    /// it (or `--exit-wait` after its intended exit): its home node may hear of an earlier exit
    /// through Redis only after its own, and then rightly sends it no leave text. One node
    /// handles the exits in the order they come, so there it never waits.
    fn awaits_leaves(&self, u: usize) -> bool {
        self.p.cfg.tcp_targets.len() > 1 && self.clients[u].leaves.iter().any(|l| !l.received)
    }

    /// When member `u` stops waiting for its leave texts and exits anyway.
    fn exit_wait_end_us(&self, u: usize) -> u64 {
        self.clients[u].exit_intended_us + self.p.cfg.exit_wait_us
    }

    /// Queues a datagram behind the member's earlier ones; the flush sends it.
    fn enqueue(&mut self, u: usize, pending: Pending) {
        let member = &mut self.clients[u];
        // An exit is never dropped: one more datagram past the cap.
        if member.queue.len() >= SEND_QUEUE_MESSAGES_MAX && matches!(pending, Pending::Chat { .. })
        {
            self.sends.not_sent_queue_full += 1;
            return;
        }
        member.queue.push_back(pending);
        self.io.dirty.mark(u);
    }

    /// Sends the member's queued datagrams until its socket would block.
    fn flush_udp(&mut self, u: usize) {
        while self.clients[u].writable {
            let Some(pending) = self.clients[u].queue.front().copied() else {
                return;
            };
            let p = &mut self.p;
            let member = &self.clients[u];
            let room = &p.room_names[member.room];
            let datagram = match pending {
                Pending::Chat { g, intended_us, .. } => {
                    let Some(plan) = self.course.plan.as_ref() else {
                        return;
                    };
                    let stamp = Stamp {
                        run_id: p.cfg.run_id,
                        sender: u as u32,
                        seq: (g / u64::from(plan.senders)) as u32,
                        intended_us,
                    };
                    let message = &mut p.message_buf[..p.cfg.message_bytes];
                    let _ = stamp::write(message, &stamp); // sized by the checked arguments
                    wire::datagram(room, &member.token, message)
                }
                Pending::Exit => wire::datagram(room, &member.token, codec::EXIT_MESSAGE),
            };
            let Some(datagram) = datagram else {
                // Cannot happen: the message size is checked against the datagram limit.
                self.clients[u].queue.pop_front();
                self.sends.not_sent_queue_full += 1;
                continue;
            };
            let member = &mut self.clients[u];
            let Some(udp) = member.udp.as_ref() else {
                return;
            };
            // An exit goes to the member's home node, which drops it from the room at once: sent
            // to another node it would reach home only through Redis, and a leave text sent
            // meanwhile by a third node could still reach it.
            let to = match pending {
                Pending::Chat { .. } => self.p.cfg.send_target(u),
                Pending::Exit => self.p.cfg.udp_targets[member.node],
            };
            let attempt_us = self.io.clock.now_us();
            match udp.send_to(&datagram, to) {
                Ok(_) => {
                    member.queue.pop_front();
                    let done_us = self.io.clock.now_us();
                    self.on_datagram_sent(u, pending, attempt_us, done_us);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => member.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    member.queue.pop_front();
                    if matches!(pending, Pending::Chat { .. }) {
                        self.sends.not_sent_connection_lost += 1;
                    }
                    let name = &member.name;
                    (self.errors).count(ErrorKind::Write, || format!("member {name}: sendto: {e}"));
                }
            }
        }
    }

    fn on_datagram_sent(&mut self, u: usize, pending: Pending, attempt_us: u64, done_us: u64) {
        let Pending::Chat {
            intended_us,
            noticed_us,
            ..
        } = pending
        else {
            self.p.exits_sent += 1;
            return;
        };
        self.sends.sent += 1;
        self.p.accounting.on_sent(u);
        let mut lags = SendLags {
            plan: self.course.plan.as_ref(),
            own: &mut self.own,
            sent_in_window: &mut self.sends.sent_in_window,
        };
        lags.record(intended_us, noticed_us, attempt_us, done_us);
    }

    fn drive_udp(&mut self, u: usize) {
        if self.clients[u].udp.is_none() {
            return;
        }
        if self.clients[u].readable {
            self.receive(u);
        }
        if self.clients[u].writable && !self.clients[u].queue.is_empty() {
            self.flush_udp(u);
        }
    }

    fn receive(&mut self, u: usize) {
        let mut budget = RECV_BUDGET_DATAGRAMS;
        while budget > 0 {
            let Some(udp) = self.clients[u].udp.as_ref() else {
                return;
            };
            let n = match self.p.batch.recv(udp.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.clients[u].readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // UDP reports errors of earlier sends here (ICMP): counted, not fatal.
                    let name = &self.clients[u].name;
                    (self.errors)
                        .count(ErrorKind::Read, || format!("member {name}: recvmmsg: {e}"));
                    budget -= 1;
                    continue;
                }
            };
            // One reading of each clock per batch: its datagrams were all read just now.
            let now_us = self.io.clock.now_us();
            let now_realtime_ns = udp::realtime_ns();
            for i in 0..n {
                let facts = self.p.batch.facts(i);
                let datagram = self.p.batch.datagram(i);
                let len = datagram.len();
                self.io.read_buf[..len].copy_from_slice(datagram);
                match facts.queued_realtime_ns {
                    Some(queued_ns) => (self.p.latency.receive_lag)
                        .record(now_realtime_ns.saturating_sub(queued_ns) / 1_000),
                    None => self.p.recv_buffers.without_timestamp += 1,
                }
                self.on_text(u, facts.from, len, now_us);
            }
            budget = budget.saturating_sub(n);
            self.p.received_since_send_check += n;
            if self.p.received_since_send_check >= DATAGRAMS_PER_SEND_CHECK {
                self.p.received_since_send_check = 0;
                Phases::send_due(self);
            }
            if n < self.p.batch.slots() {
                // The call stopped where the next read would block: drained. A datagram that
                // arrives later raises a new edge.
                self.clients[u].readable = false;
                return;
            }
        }
        // Budget spent with the socket still readable: no new edge will come for it.
        self.io.still_ready.push(self.clients.len() + u);
    }

    /// Counts a protocol error of member `u`.
    fn protocol_error(&mut self, u: usize, describe: impl FnOnce() -> String) {
        let me = &self.clients[u].name;
        (self.errors).count(ErrorKind::Protocol, || {
            format!("member {me}: {}", describe())
        });
    }

    /// One datagram of `n` bytes (in `io.read_buf`) arrived at member `u`.
    fn on_text(&mut self, u: usize, from: Option<SocketAddr>, n: usize, now_us: u64) {
        if from != Some(self.p.cfg.udp_targets[self.clients[u].node]) {
            self.p.foreign_texts += 1;
            return;
        }
        let text = &self.io.read_buf[..n];
        if n > codec::TEXT_BYTES_MAX {
            self.protocol_error(u, || {
                format!("a {n}-byte datagram, over the contract's 4094")
            });
            return;
        }
        if let Some((name, message)) = wire::split_chat(text) {
            match stamp::read(message, self.p.cfg.run_id) {
                stamp::Read::Ours(stamp) => {
                    let name_end = name.len();
                    self.on_chat(u, name_end, &stamp, now_us);
                    return;
                }
                stamp::Read::Malformed(why) => {
                    self.protocol_error(u, || why.to_string());
                    return;
                }
                stamp::Read::Foreign => {}
            }
        }
        match wire::match_leave(&mut self.clients[u].leaves, &self.io.read_buf[..n]) {
            LeaveMatch::Expected(i) => {
                let leaver = self.clients[u].leaves[i].leaver;
                self.p.leaves_received += 1;
                let intended_us = self.clients[leaver].exit_intended_us;
                (self.p.latency.leave).record(now_us.saturating_sub(intended_us));
            }
            LeaveMatch::Again => {
                self.p.leaves_again += 1;
                self.protocol_error(u, || "the same leave text twice".to_string());
            }
            LeaveMatch::Unexpected => {
                let text = String::from_utf8_lossy(&self.io.read_buf[..n.min(200)]).into_owned();
                self.protocol_error(u, || format!("a text it should not get: {text:?}"));
            }
        }
    }

    /// A chat text from `io.read_buf[..name_end]` carrying this run's `stamp` arrived at `u`.
    fn on_chat(&mut self, u: usize, name_end: usize, stamp: &Stamp, now_us: u64) {
        let sender = stamp.sender as usize;
        if sender == u {
            self.p.echoes += 1;
            let me = &self.clients[u].name;
            (self.errors).count(ErrorKind::Protocol, || {
                format!("member {me} got its own message back")
            });
            return;
        }
        let Some(g) = self.check_chat(u, name_end, stamp) else {
            let name = String::from_utf8_lossy(&self.io.read_buf[..name_end]).into_owned();
            let stamp = *stamp;
            self.protocol_error(u, || {
                format!("a message that does not match the plan (from {name}, {stamp:?})")
            });
            return;
        };
        if self.p.accounting.on_delivered(u, sender, stamp.seq) == Arrival::Duplicate {
            return; // counted, timed once
        }
        let Some(plan) = self.course.plan.as_ref() else {
            return;
        };
        if !plan.is_warmup(plan.intended_us(g)) {
            (self.p.latency.delivery).record(now_us.saturating_sub(stamp.intended_us));
        }
        if (plan.measure_start_us()..plan.measure_end_us()).contains(&now_us) {
            self.p.delivered_in_window += 1;
        }
    }

    /// The plan number of a chat delivery, if its name, room and stamp agree with the plan.
    fn check_chat(&self, u: usize, name_end: usize, stamp: &Stamp) -> Option<u64> {
        let name = &self.io.read_buf[..name_end];
        let plan = self.course.plan.as_ref()?;
        let sender = stamp.sender as usize;
        if !self.p.accounting.same_room(u, sender) {
            return None;
        }
        let sender_member = &self.clients[sender];
        let ordinal = sender_member.sender?;
        let g = u64::from(stamp.seq) * u64::from(plan.senders) + u64::from(ordinal);
        let agrees = name == sender_member.name.as_bytes()
            && g < plan.messages
            && plan.intended_us(g) == stamp.intended_us;
        agrees.then_some(g)
    }

    pub fn finish(mut self) -> OcmOutcome {
        let times = self.course.times(self.io.clock.now_us());
        // While the sockets are still open, so the kernel still lists them.
        self.p.recv_buffers.dropped = udp::drops(&self.p.udp_inodes);
        for member in &mut self.clients {
            self.sends.not_sent_at_end += (member.queue.iter())
                .filter(|p| matches!(p, Pending::Chat { .. }))
                .count() as u64;
            if let Some(mut udp) = member.udp.take() {
                let _ = self.io.poll.registry().deregister(&mut udp);
            }
        }
        self.close_all();
        let p = &self.p;
        let members_not_attempted = (self.clients.iter())
            .filter(|m| m.stage == Stage::Failed && !m.is_host)
            .filter(|m| !p.room_created[m.room])
            .count();
        let mut recv_buffers = p.recv_buffers;
        if recv_buffers.sockets == 0 {
            recv_buffers.granted_min_bytes = 0;
        }
        let ran = self.ran(&times);
        let mut p = self.p;
        p.latency.own = self.own;
        OcmOutcome {
            rooms_requested: p.cfg.rooms,
            rooms_created: p.room_created.iter().filter(|&&c| c).count(),
            members_requested: self.clients.len(),
            members_joined: self.senders.len(),
            members_not_attempted,
            tcrp_acknowledgements: p.tcrp_acknowledgements,
            ran,
            latency: p.latency,
            counts: p.accounting.counts,
            losses: p.accounting.losses(),
            echoes: p.echoes,
            delivered_in_window: p.delivered_in_window,
            foreign_texts: p.foreign_texts,
            exits_planned: p.exit_order.len() as u64,
            exits_sent: p.exits_sent,
            leaves_expected: p.leaves_expected,
            leaves_received: p.leaves_received,
            leaves_again: p.leaves_again,
            recv_buffers,
            exit_used_us: times.close_used_us,
            exit_timed_out: times.close_timed_out,
        }
    }
}
