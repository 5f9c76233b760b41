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
//! The loop is the other scenarios': one mio poll, every socket registered READABLE|WRITABLE
//! once, readiness kept in userland, reads drained (to a short TCP read or `WouldBlock`) within
//! a budget (then the socket waits on `still_ready`), the [`Pacer`]'s timerfd waking it on the plan's microsecond.
//! The UDP sockets ask for large receive buffers so the loadgen itself drops nothing; what the
//! kernel granted is reported.

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
use crate::driver::{
    Drain, Loop, Phases, Progress, Reactor, RunError, SentReceived, START_DELAY_US,
};
use crate::plan::{Due, Plan};
use crate::registry::{InMix, Named, Protocol, Row, ScenarioKind};
use crate::report::Ran;
use crate::sockio::{read_chunk, Chunk, Conn, SendCounts, SendLags};
use crate::stats::{ErrorCounts, ErrorKind, LatencyHistogram, OwnLags};
use accounting::{Accounting, Arrival};
pub use accounting::{Counts, Losses};
use stamp::Stamp;
use wire::{Answer, ExpectedLeave, LeaveMatch};

// Tokens: the pacer's is `driver::TIMER` (0); member `u`'s UDP socket has token `1 + u`, its
// TCRP connection `1 + members + u`.

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
/// The rooms phase gives up after max(this, 3 times its planned time).
const ROOMS_TIMEOUT_MIN_US: u64 = 10_000_000;

#[derive(Clone, Debug)]
pub struct OcmConfig {
    /// The TCRP listener (TCP).
    pub tcp_target: SocketAddr,
    /// The chat socket (UDP).
    pub udp_target: SocketAddr,
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
    /// Datagrams from another address than the server's chat port, or texts of another run.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberPhase {
    Idle,
    /// The TCRP request is under way.
    Requesting,
    Joined,
    /// Sent `exit`.
    Left,
    Failed,
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

struct Member {
    name: String,
    room: usize,
    is_host: bool,
    phase: MemberPhase,
    udp: Option<UdpSocket>,
    readable: bool,
    writable: bool,
    /// Its TCRP exchange: connect, write the request, read the answer.
    tcrp: Conn<()>,
    tcrp_connected: bool,
    token: Bytes,
    /// What the request's latency is measured from.
    request_intended_us: u64,
    /// Not yet settled in the rooms phase.
    in_rooms_phase: bool,
    /// Ordinal among the plan's senders.
    sender: Option<u32>,
    queue: VecDeque<Pending>,
    /// The leave texts it must receive in the exit phase.
    leaves: Vec<ExpectedLeave>,
    exit_intended_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Rooms,
    Chat,
    Drain { deadline_us: u64 },
    Exit,
    ExitWait { deadline_us: u64 },
    Done,
}

pub struct Run<'a> {
    cfg: &'a OcmConfig,
    /// Its read buffer takes the TCRP answers, and each datagram copied from the batch.
    io: Loop,
    members: Vec<Member>,
    room_names: Vec<String>,
    room_created: Vec<bool>,
    senders: Vec<usize>,
    accounting: Accounting,
    batch: udp::RecvBatch,
    message_buf: Vec<u8>,
    /// Inodes of the UDP sockets, to read their drop counters at the end.
    udp_inodes: HashSet<u64>,
    latency: Latencies,
    errors: ErrorCounts,
    recv_buffers: RecvBuffers,
    tcrp_acknowledgements: u64,
    echoes: u64,
    sends: SendCounts,
    delivered_in_window: u64,
    foreign_texts: u64,
    exits_sent: u64,
    leaves_expected: u64,
    leaves_received: u64,
    leaves_again: u64,
    phase: Phase,
    plan: Option<Plan>,
    next_g: u64,
    next_room: usize,
    rooms_start_us: u64,
    rooms_deadline_us: u64,
    rooms_end_us: u64,
    unsettled: usize,
    /// The exit phase: who leaves, in order, and when.
    exit_order: Vec<usize>,
    exit_start_us: u64,
    next_exit: usize,
    drain: Drain,
    exit_phase_start_us: Option<u64>,
    exit_timed_out: bool,
    done_us: u64,
    progress: Progress,
    received_since_send_check: usize,
}

/// The scenario as the registry lists it.
pub struct Ocm;

impl ScenarioKind for Ocm {
    const NAME: &'static str = "ocm";
    type Config = OcmConfig;
    type Run<'a> = Run<'a>;
    type Outcome = OcmOutcome;
    type Report = report::Report;

    fn start(cfg: &OcmConfig) -> Result<Run<'_>, RunError> {
        let io = Loop::new()?;
        let now_us = io.clock.now_us();
        let total = cfg.rooms * cfg.members;
        let members = (0..total)
            .map(|u| Member {
                name: wire::member_name(u),
                room: u / cfg.members,
                is_host: u % cfg.members == 0,
                phase: MemberPhase::Idle,
                udp: None,
                readable: false,
                writable: false,
                tcrp: Conn::default(),
                tcrp_connected: false,
                token: Bytes::new(),
                request_intended_us: 0,
                in_rooms_phase: true,
                sender: None,
                queue: VecDeque::new(),
                leaves: Vec::new(),
                exit_intended_us: 0,
            })
            .collect();
        let start_us = now_us + START_DELAY_US;
        let room_rate = cfg.room_rate_per_s.max(1);
        let planned_us = (cfg.rooms as u64 * 1_000_000).div_ceil(room_rate);
        let run = Run {
            cfg,
            io,
            members,
            room_names: (0..cfg.rooms)
                .map(|r| wire::room_name(cfg.run_id, r))
                .collect(),
            room_created: vec![false; cfg.rooms],
            senders: Vec::new(),
            accounting: Accounting::new(cfg.rooms, cfg.members),
            batch: udp::RecvBatch::new(RECV_BATCH_DATAGRAMS),
            udp_inodes: HashSet::new(),
            message_buf: vec![0; cfg.message_bytes.max(stamp::STAMP_BYTES)],
            latency: Latencies::default(),
            errors: ErrorCounts::default(),
            recv_buffers: RecvBuffers {
                requested_bytes: cfg.recv_buffer_bytes,
                granted_min_bytes: usize::MAX,
                ..RecvBuffers::default()
            },
            tcrp_acknowledgements: 0,
            echoes: 0,
            sends: SendCounts::default(),
            delivered_in_window: 0,
            foreign_texts: 0,
            exits_sent: 0,
            leaves_expected: 0,
            leaves_received: 0,
            leaves_again: 0,
            phase: Phase::Rooms,
            plan: None,
            next_g: 0,
            next_room: 0,
            rooms_start_us: start_us,
            rooms_deadline_us: start_us + ROOMS_TIMEOUT_MIN_US.max(planned_us * 3),
            rooms_end_us: start_us,
            unsettled: total,
            exit_order: Vec::new(),
            exit_start_us: 0,
            next_exit: 0,
            drain: Drain::default(),
            exit_phase_start_us: None,
            exit_timed_out: false,
            done_us: now_us,
            progress: Progress::new(cfg.pace.progress, now_us),
            received_since_send_check: 0,
        };
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
            cfg.tcp_target, cfg.udp_target
        )
    }
}

impl InMix for Ocm {
    const ROW: Row = Protocol::Ocm.row();
    const UNREACHABLE_IN_MIX: &'static str = "no room could be created on the OCM server";
}

impl Phases for Run<'_> {
    fn io(&self) -> &Loop {
        &self.io
    }
    fn io_mut(&mut self) -> &mut Loop {
        &mut self.io
    }
    fn advance(&mut self) -> Result<(), RunError> {
        let now_us = self.io.clock.now_us();
        match self.phase {
            Phase::Rooms => {
                while self.next_room < self.cfg.rooms
                    && self.room_intended_us(self.next_room) <= now_us
                {
                    let r = self.next_room;
                    self.next_room += 1;
                    let host = r * self.cfg.members;
                    self.start_request(host, self.room_intended_us(r));
                }
                if now_us >= self.rooms_deadline_us && self.unsettled > 0 {
                    self.give_up_rooms();
                }
                if self.next_room == self.cfg.rooms && self.unsettled == 0 {
                    self.start_chat(now_us)?;
                }
            }
            Phase::Chat => {
                self.send_due();
                if Plan::all_taken(self.plan.as_ref(), self.next_g) {
                    let deadline_us = self
                        .drain
                        .start(self.io.clock.now_us(), self.cfg.pace.drain_us);
                    self.phase = Phase::Drain { deadline_us };
                }
            }
            Phase::Drain { deadline_us } => {
                self.flush_dirty();
                if self.drain.check_due(now_us) {
                    let queued = self.members.iter().any(|m| !m.queue.is_empty());
                    let complete = !queued && self.accounting.outstanding() == 0;
                    if complete || now_us >= deadline_us {
                        self.drain.timed_out = !complete;
                        self.start_exit(now_us);
                    }
                }
            }
            Phase::Exit => {
                self.send_exits_due();
                if self.next_exit == self.exit_order.len() {
                    let last_us = self.exit_intended_us(self.exit_order.len());
                    self.phase = Phase::ExitWait {
                        deadline_us: last_us.max(now_us) + self.cfg.exit_wait_us,
                    };
                }
            }
            Phase::ExitWait { deadline_us } => {
                self.flush_dirty();
                let queued = self.members.iter().any(|m| !m.queue.is_empty());
                let complete = !queued && self.leaves_received == self.leaves_expected;
                if complete || now_us >= deadline_us {
                    self.exit_timed_out = !complete;
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
        if self.phase == Phase::Done {
            self.done_us = now_us;
        }
        if self.progress.due(now_us) {
            self.progress_line(now_us);
        }
        Ok(())
    }
    fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
    fn next_wake_us(&self) -> u64 {
        let phase_us = match self.phase {
            Phase::Rooms => {
                let next = if self.next_room < self.cfg.rooms {
                    self.room_intended_us(self.next_room)
                } else {
                    u64::MAX
                };
                next.min(self.rooms_deadline_us)
            }
            Phase::Chat => self
                .plan
                .as_ref()
                .map_or(u64::MAX, |p| p.intended_us(self.next_g)),
            Phase::Drain { .. } => self.drain.next_check_us,
            Phase::Exit => self.exit_intended_us(self.next_exit),
            // Arrivals wake the poll by themselves; the deadline bounds the wait.
            Phase::ExitWait { deadline_us } => deadline_us,
            Phase::Done => u64::MAX,
        };
        self.progress.wake_us(phase_us)
    }
    fn send_due(&mut self) {
        self.received_since_send_check = 0;
        if self.phase != Phase::Chat {
            return;
        }
        // A copy (a few integers): the loop below needs `self` mutably.
        let Some(plan) = self.plan.clone() else {
            return;
        };
        let now_us = self.io.clock.now_us();
        while let Some(due) = plan.take_due(&mut self.next_g, now_us) {
            let Due { g, intended_us, .. } = due;
            let u = self.senders[plan.sender_of(g) as usize];
            plan.record_lateness(&due, &mut self.latency.own.schedule_lateness);
            if self.members[u].phase != MemberPhase::Joined {
                self.sends.not_sent_connection_lost += 1;
                continue;
            }
            self.enqueue(
                u,
                Pending::Chat {
                    g,
                    intended_us,
                    noticed_us: now_us,
                },
            );
        }
        self.flush_dirty();
    }
    fn counts(&self) -> SentReceived {
        SentReceived {
            sent: self.sends.sent,
            received: self.accounting.counts.delivered,
        }
    }
}

impl Reactor for Run<'_> {
    fn on_event(&mut self, index: usize, readable: bool, writable: bool, hangup: bool) {
        let total = self.total();
        if index < total {
            let member = &mut self.members[index];
            member.readable |= readable;
            member.writable |= writable;
            self.drive_udp(index);
        } else if let Some(member) = self.members.get_mut(index - total) {
            let tcrp = &mut member.tcrp;
            tcrp.readable |= readable;
            tcrp.writable |= writable;
            tcrp.hangup |= hangup;
            self.drive_tcrp(index - total);
        }
    }
    fn end_turn(&mut self) {
        for u in std::mem::take(&mut self.io.still_ready) {
            self.drive_udp(u);
        }
        self.flush_dirty();
    }
}

impl Run<'_> {
    fn total(&self) -> usize {
        self.members.len()
    }

    /// Room `r`'s planned time.
    fn room_intended_us(&self, r: usize) -> u64 {
        self.rooms_start_us + (r as u64 * 1_000_000) / self.cfg.room_rate_per_s.max(1)
    }

    /// The intended time of the `i`-th exit, on the chat plan's overall spacing.
    fn exit_intended_us(&self, i: usize) -> u64 {
        self.exit_start_us + (i as u64 * 1_000_000) / self.cfg.pace.rate_per_s.max(1)
    }

    fn settle(&mut self, u: usize) {
        if std::mem::take(&mut self.members[u].in_rooms_phase) {
            self.unsettled -= 1;
        }
    }

    /// The rooms phase reached its deadline: requests still under way fail, members not
    /// attempted yet are given up.
    fn give_up_rooms(&mut self) {
        for u in 0..self.total() {
            if !self.members[u].in_rooms_phase {
                continue;
            }
            if self.members[u].phase == MemberPhase::Requesting {
                self.fail(u, ErrorKind::Connect, || {
                    "timed out before its TCRP answer".to_string()
                });
            } else {
                self.members[u].phase = MemberPhase::Failed;
                self.settle(u);
            }
        }
        self.next_room = self.cfg.rooms;
    }

    /// Member `u` connects to the TCRP port; its request goes out once connected.
    fn start_request(&mut self, u: usize, intended_us: u64) {
        self.members[u].request_intended_us = intended_us;
        match crate::connect::open(
            self.io.poll.registry(),
            self.cfg.tcp_target,
            u,
            Token(1 + self.total() + u),
        ) {
            Ok(stream) => {
                let member = &mut self.members[u];
                member.tcrp.stream = Some(stream);
                member.phase = MemberPhase::Requesting;
            }
            Err(why) => self.fail(u, ErrorKind::Connect, || why),
        }
    }

    fn drive_tcrp(&mut self, u: usize) {
        if self.members[u].phase != MemberPhase::Requesting {
            return;
        }
        let member = &self.members[u];
        let tcrp = &member.tcrp;
        if tcrp.stream.is_none() {
            return;
        }
        if !member.tcrp_connected {
            if !(tcrp.readable || tcrp.writable) {
                return;
            }
            match self.check_connected(u) {
                Ok(true) => {
                    if let Err(why) = self.open_udp_and_request(u) {
                        self.fail(u, ErrorKind::Connect, || why);
                        return;
                    }
                }
                Ok(false) => return,
                Err(e) => {
                    self.fail(u, ErrorKind::Connect, || format!("connect: {e}"));
                    return;
                }
            }
        }
        self.write_request(u);
        if self.members[u].phase == MemberPhase::Requesting && self.members[u].tcrp.readable {
            self.read_answer(u);
        }
    }

    fn check_connected(&mut self, u: usize) -> io::Result<bool> {
        let member = &mut self.members[u];
        let connected = member.tcrp.is_connected()?;
        if connected {
            member.tcrp_connected = true;
            // A connect completes with a writable edge; anything readable is read next.
            member.tcrp.readable = true;
        }
        Ok(connected)
    }

    /// Binds the member's UDP socket on the IP its TCRP connection uses (the server binds the
    /// token to that IP), and prepares the request naming the socket's address.
    fn open_udp_and_request(&mut self, u: usize) -> Result<(), String> {
        let Some(stream) = self.members[u].tcrp.stream.as_ref() else {
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
        let granted = udp::set_recv_buffer(fd, self.cfg.recv_buffer_bytes)
            .map_err(|e| format!("SO_RCVBUF: {e}"))?;
        udp::enable_timestamps(fd).map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
        if let Ok(inode) = udp::inode(fd) {
            self.udp_inodes.insert(inode);
        }
        let udp_addr = std_socket
            .local_addr()
            .map_err(|e| format!("UDP local address: {e}"))?;
        let mut udp = UdpSocket::from_std(std_socket);
        self.io
            .poll
            .registry()
            .register(
                &mut udp,
                Token(1 + u),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register UDP: {e}"))?;
        let b = &mut self.recv_buffers;
        b.sockets += 1;
        b.granted_min_bytes = b.granted_min_bytes.min(granted);
        b.granted_max_bytes = b.granted_max_bytes.max(granted);
        if granted < self.cfg.recv_buffer_bytes {
            b.capped_sockets += 1;
        }
        let room = &self.room_names[self.members[u].room];
        let member = &mut self.members[u];
        let request = wire::request(
            wire::operation(member.is_host),
            room,
            &member.name,
            udp_addr,
        );
        member.udp = Some(udp);
        // Optimistic: a send that would block says so and waits for the writable edge.
        member.writable = true;
        member.tcrp.out.extend(&request);
        Ok(())
    }

    fn write_request(&mut self, u: usize) {
        let member = &mut self.members[u];
        let tcrp = &mut member.tcrp;
        let Some(stream) = tcrp.stream.as_mut() else {
            return;
        };
        if member.tcrp_connected && tcrp.writable {
            let failure = tcrp.out.write_to(stream).failure(&mut tcrp.writable);
            if let Some(why) = failure {
                self.fail(u, ErrorKind::Write, || format!("write: {why}"));
            }
        }
    }

    fn read_answer(&mut self, u: usize) {
        loop {
            let tcrp = &mut self.members[u].tcrp;
            let Some(stream) = tcrp.stream.as_mut() else {
                return;
            };
            let read = read_chunk(
                stream,
                &mut self.io.read_buf,
                &mut tcrp.readable,
                tcrp.hangup,
            );
            let (n, emptied) = match read {
                Chunk::Bytes(n) => (n, false),
                Chunk::Emptied(n) => (n, true),
                Chunk::Drained => return,
                Chunk::Eof => {
                    let got = tcrp.inbuf.len();
                    self.fail(u, ErrorKind::Connect, || {
                        format!("the server closed the TCRP connection after {got} answer bytes")
                    });
                    return;
                }
                Chunk::Failed(e) => {
                    self.fail(u, ErrorKind::Read, || format!("TCRP read: {e}"));
                    return;
                }
            };
            tcrp.inbuf.extend_from_slice(&self.io.read_buf[..n]);
            let now_us = self.io.clock.now_us();
            loop {
                let inbuf = &mut self.members[u].tcrp.inbuf;
                let answer = match codec::decode_answer(inbuf, TCRP_ANSWER_BYTES_MAX) {
                    Ok(Some(answer)) => answer,
                    Ok(None) => break,
                    Err(e) => {
                        self.fail(u, ErrorKind::Protocol, || format!("TCRP answer: {e}"));
                        return;
                    }
                };
                let member = &self.members[u];
                let operation = wire::operation(member.is_host);
                match wire::judge_answer(&answer, operation, &self.room_names[member.room]) {
                    Answer::Acknowledged => self.tcrp_acknowledgements += 1,
                    Answer::Granted(token) => {
                        self.on_granted(u, token, now_us);
                        return;
                    }
                    Answer::Refused(why) => {
                        let what = if member.is_host { "create" } else { "join" };
                        self.fail(u, ErrorKind::Protocol, || format!("{what}: {why}"));
                        return;
                    }
                }
            }
            if emptied {
                return;
            }
        }
    }

    fn on_granted(&mut self, u: usize, token: Bytes, now_us: u64) {
        let member = &mut self.members[u];
        member.token = token;
        member.phase = MemberPhase::Joined;
        let latency = now_us.saturating_sub(member.request_intended_us);
        let is_host = member.is_host;
        let room = member.room;
        member.tcrp.close(self.io.poll.registry());
        self.settle(u);
        if is_host {
            self.latency.create.record(latency);
            self.room_created[room] = true;
            let first = room * self.cfg.members;
            for guest in first + 1..first + self.cfg.members {
                self.start_request(guest, now_us);
            }
        } else {
            self.latency.join.record(latency);
        }
    }

    fn start_chat(&mut self, now_us: u64) -> Result<(), RunError> {
        self.rooms_end_us = now_us;
        self.senders = (0..self.total())
            .filter(|&u| self.members[u].phase == MemberPhase::Joined)
            .collect();
        if !self.room_created.iter().any(|&c| c) {
            return Err(self.errors.unreachable("no room was created"));
        }
        for (ordinal, &u) in self.senders.iter().enumerate() {
            self.members[u].sender = Some(ordinal as u32);
            self.accounting.set_receiver(u);
        }
        self.plan = Some(Plan::new(
            self.senders.len() as u32,
            self.cfg.pace.rate_per_s,
            now_us + START_DELAY_US,
            self.cfg.pace.warmup_us,
            self.cfg.pace.duration_us,
        ));
        self.phase = Phase::Chat;
        Ok(())
    }

    fn start_exit(&mut self, now_us: u64) {
        self.exit_phase_start_us = Some(now_us);
        self.exit_start_us = now_us + START_DELAY_US;
        let names: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        let mut guests = Vec::new();
        let mut hosts = Vec::new();
        for r in 0..self.cfg.rooms {
            let first = r * self.cfg.members;
            let joined: Vec<usize> = (first..first + self.cfg.members)
                .filter(|&u| self.members[u].phase == MemberPhase::Joined)
                .collect();
            if joined.first() != Some(&first) {
                continue; // no host, no room
            }
            let plan = wire::exit_plan(&joined, &names, &self.room_names[r]);
            for (receiver, leave) in plan.expected {
                self.members[receiver].leaves.push(leave);
                self.leaves_expected += 1;
            }
            if let Some((&host, room_guests)) = plan.leavers.split_last() {
                guests.extend_from_slice(room_guests);
                hosts.push(host);
            }
        }
        guests.extend(hosts);
        self.exit_order = guests;
        for i in 0..self.exit_order.len() {
            let intended_us = self.exit_intended_us(i);
            self.members[self.exit_order[i]].exit_intended_us = intended_us;
        }
        self.phase = Phase::Exit;
    }

    fn send_exits_due(&mut self) {
        let now_us = self.io.clock.now_us();
        while self.next_exit < self.exit_order.len()
            && self.exit_intended_us(self.next_exit) <= now_us
        {
            let u = self.exit_order[self.next_exit];
            self.next_exit += 1;
            if self.members[u].phase != MemberPhase::Joined {
                continue;
            }
            self.members[u].phase = MemberPhase::Left;
            self.enqueue(u, Pending::Exit);
        }
        self.flush_dirty();
    }

    /// Queues a datagram behind the member's earlier ones; the flush sends it.
    fn enqueue(&mut self, u: usize, pending: Pending) {
        let member = &mut self.members[u];
        // An exit is never dropped: one more datagram past the cap.
        if member.queue.len() >= SEND_QUEUE_MESSAGES_MAX && matches!(pending, Pending::Chat { .. })
        {
            self.sends.not_sent_queue_full += 1;
            return;
        }
        member.queue.push_back(pending);
        self.io.dirty.mark(u);
    }

    fn flush_dirty(&mut self) {
        for u in self.io.dirty.take() {
            self.flush(u);
        }
    }

    /// Sends the member's queued datagrams until its socket would block.
    fn flush(&mut self, u: usize) {
        while self.members[u].writable {
            let Some(pending) = self.members[u].queue.front().copied() else {
                return;
            };
            let datagram = match pending {
                Pending::Chat { g, intended_us, .. } => {
                    let Some(plan) = self.plan.as_ref() else {
                        return;
                    };
                    let stamp = Stamp {
                        run_id: self.cfg.run_id,
                        sender: u as u32,
                        seq: (g / u64::from(plan.senders)) as u32,
                        intended_us,
                    };
                    let message = &mut self.message_buf[..self.cfg.message_bytes];
                    let _ = stamp::write(message, &stamp); // sized by the checked arguments
                    let member = &self.members[u];
                    wire::datagram(&self.room_names[member.room], &member.token, message)
                }
                Pending::Exit => {
                    let member = &self.members[u];
                    wire::datagram(
                        &self.room_names[member.room],
                        &member.token,
                        codec::EXIT_MESSAGE,
                    )
                }
            };
            let Some(datagram) = datagram else {
                // Cannot happen: the message size is checked against the datagram limit.
                self.members[u].queue.pop_front();
                self.sends.not_sent_queue_full += 1;
                continue;
            };
            let member = &mut self.members[u];
            let Some(udp) = member.udp.as_ref() else {
                return;
            };
            let attempt_us = self.io.clock.now_us();
            match udp.send_to(&datagram, self.cfg.udp_target) {
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
                    let name = member.name.clone();
                    self.errors
                        .count(ErrorKind::Write, || format!("member {name}: sendto: {e}"));
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
            self.exits_sent += 1;
            return;
        };
        self.sends.sent += 1;
        self.accounting.on_sent(u);
        let mut lags = SendLags {
            plan: self.plan.as_ref(),
            own: &mut self.latency.own,
            sent_in_window: &mut self.sends.sent_in_window,
        };
        lags.record(intended_us, noticed_us, attempt_us, done_us);
    }

    fn drive_udp(&mut self, u: usize) {
        if self.members[u].udp.is_none() {
            return;
        }
        if self.members[u].readable {
            self.receive(u);
        }
        if self.members[u].writable && !self.members[u].queue.is_empty() {
            self.flush(u);
        }
    }

    fn receive(&mut self, u: usize) {
        let mut budget = RECV_BUDGET_DATAGRAMS;
        while budget > 0 {
            let Some(udp) = self.members[u].udp.as_ref() else {
                return;
            };
            let n = match self.batch.recv(udp.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.members[u].readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // UDP reports errors of earlier sends here (ICMP): counted, not fatal.
                    let name = self.members[u].name.clone();
                    self.errors
                        .count(ErrorKind::Read, || format!("member {name}: recvmmsg: {e}"));
                    budget -= 1;
                    continue;
                }
            };
            // One reading of each clock per batch: its datagrams were all read just now.
            let now_us = self.io.clock.now_us();
            let now_realtime_ns = udp::realtime_ns();
            for i in 0..n {
                let facts = self.batch.facts(i);
                let datagram = self.batch.datagram(i);
                let len = datagram.len();
                self.io.read_buf[..len].copy_from_slice(datagram);
                match facts.queued_realtime_ns {
                    Some(queued_ns) => self
                        .latency
                        .receive_lag
                        .record(now_realtime_ns.saturating_sub(queued_ns) / 1_000),
                    None => self.recv_buffers.without_timestamp += 1,
                }
                self.on_text(u, facts.from, len, now_us);
            }
            budget = budget.saturating_sub(n);
            self.received_since_send_check += n;
            if self.received_since_send_check >= DATAGRAMS_PER_SEND_CHECK {
                self.send_due();
            }
            if n < self.batch.slots() {
                // The call stopped where the next read would block: drained. A datagram that
                // arrives later raises a new edge.
                self.members[u].readable = false;
                return;
            }
        }
        // Budget spent with the socket still readable: no new edge will come for it.
        self.io.still_ready.push(u);
    }

    /// One datagram of `n` bytes (in `io.read_buf`) arrived at member `u`.
    fn on_text(&mut self, u: usize, from: Option<SocketAddr>, n: usize, now_us: u64) {
        if from != Some(self.cfg.udp_target) {
            self.foreign_texts += 1;
            return;
        }
        let text = &self.io.read_buf[..n];
        if n > codec::TEXT_BYTES_MAX {
            let name = self.members[u].name.clone();
            self.errors.count(ErrorKind::Protocol, || {
                format!("member {name}: a {n}-byte datagram, over the contract's 4094")
            });
            return;
        }
        if let Some((name, message)) = wire::split_chat(text) {
            match stamp::read(message, self.cfg.run_id) {
                stamp::Read::Ours(stamp) => {
                    let name_end = name.len();
                    self.on_chat(u, name_end, &stamp, now_us);
                    return;
                }
                stamp::Read::Malformed(why) => {
                    let me = self.members[u].name.clone();
                    self.errors
                        .count(ErrorKind::Protocol, || format!("member {me}: {why}"));
                    return;
                }
                stamp::Read::Foreign => {}
            }
        }
        match wire::match_leave(&mut self.members[u].leaves, &self.io.read_buf[..n]) {
            LeaveMatch::Expected(i) => {
                let leaver = self.members[u].leaves[i].leaver;
                self.leaves_received += 1;
                self.latency
                    .leave
                    .record(now_us.saturating_sub(self.members[leaver].exit_intended_us));
            }
            LeaveMatch::Again => {
                self.leaves_again += 1;
                let me = self.members[u].name.clone();
                self.errors.count(ErrorKind::Protocol, || {
                    format!("member {me}: the same leave text twice")
                });
            }
            LeaveMatch::Unexpected => {
                let me = self.members[u].name.clone();
                let text = String::from_utf8_lossy(&self.io.read_buf[..n.min(200)]).into_owned();
                self.errors.count(ErrorKind::Protocol, || {
                    format!("member {me}: a text it should not get: {text:?}")
                });
            }
        }
    }

    /// A chat text from `io.read_buf[..name_end]` carrying this run's `stamp` arrived at `u`.
    fn on_chat(&mut self, u: usize, name_end: usize, stamp: &Stamp, now_us: u64) {
        let sender = stamp.sender as usize;
        if sender == u {
            self.echoes += 1;
            let me = self.members[u].name.clone();
            self.errors.count(ErrorKind::Protocol, || {
                format!("member {me} got its own message back")
            });
            return;
        }
        let Some(g) = self.check_chat(u, name_end, stamp) else {
            let me = self.members[u].name.clone();
            let name = String::from_utf8_lossy(&self.io.read_buf[..name_end]).into_owned();
            let stamp = *stamp;
            self.errors.count(ErrorKind::Protocol, || {
                format!(
                    "member {me}: a message that does not match the plan (from {name}, {stamp:?})"
                )
            });
            return;
        };
        if self.accounting.on_delivered(u, sender, stamp.seq) == Arrival::Duplicate {
            return; // counted, timed once
        }
        let Some(plan) = self.plan.as_ref() else {
            return;
        };
        if !plan.is_warmup(plan.intended_us(g)) {
            self.latency
                .delivery
                .record(now_us.saturating_sub(stamp.intended_us));
        }
        if (plan.measure_start_us()..plan.measure_end_us()).contains(&now_us) {
            self.delivered_in_window += 1;
        }
    }

    /// The plan number of a chat delivery, if its name, room and stamp agree with the plan.
    fn check_chat(&self, u: usize, name_end: usize, stamp: &Stamp) -> Option<u64> {
        let name = &self.io.read_buf[..name_end];
        let plan = self.plan.as_ref()?;
        let sender = stamp.sender as usize;
        if !self.accounting.same_room(u, sender) {
            return None;
        }
        let sender_member = &self.members[sender];
        let ordinal = sender_member.sender?;
        let g = u64::from(stamp.seq) * u64::from(plan.senders) + u64::from(ordinal);
        let agrees = name == sender_member.name.as_bytes()
            && g < plan.messages
            && plan.intended_us(g) == stamp.intended_us;
        agrees.then_some(g)
    }

    /// Counts the error and takes the member out of the run.
    fn fail(&mut self, u: usize, kind: ErrorKind, describe: impl FnOnce() -> String) {
        if self.members[u].phase == MemberPhase::Failed {
            return;
        }
        let member = &mut self.members[u];
        member.phase = MemberPhase::Failed;
        for pending in member.queue.drain(..) {
            if matches!(pending, Pending::Chat { .. }) {
                self.sends.not_sent_connection_lost += 1;
            }
        }
        member.tcrp.close(self.io.poll.registry());
        if let Some(mut udp) = member.udp.take() {
            let _ = self.io.poll.registry().deregister(&mut udp);
        }
        let name = member.name.clone();
        let is_host = member.is_host;
        let room = member.room;
        self.errors
            .count(kind, || format!("member {name}: {}", describe()));
        self.settle(u);
        // A host that could not create its room takes its guests with it.
        if is_host && !self.room_created[room] {
            let first = room * self.cfg.members;
            for guest in first + 1..first + self.cfg.members {
                self.members[guest].phase = MemberPhase::Failed;
                self.settle(guest);
            }
        }
    }

    fn progress_line(&self, now_us: u64) {
        let what = match self.phase {
            Phase::Rooms => format!(
                "rooms: {} of {} created, {} of {} members joined",
                self.room_created.iter().filter(|&&c| c).count(),
                self.cfg.rooms,
                self.members
                    .iter()
                    .filter(|m| m.phase == MemberPhase::Joined)
                    .count(),
                self.total()
            ),
            Phase::Chat | Phase::Drain { .. } => format!(
                "sent {} of {}, deliveries outstanding {}",
                self.sends.sent,
                self.plan.as_ref().map_or(0, |p| p.messages),
                self.accounting.outstanding()
            ),
            Phase::Exit | Phase::ExitWait { .. } => format!(
                "exits {} of {}, leave texts {} of {}",
                self.exits_sent,
                self.exit_order.len(),
                self.leaves_received,
                self.leaves_expected
            ),
            Phase::Done => String::new(),
        };
        Progress::draw(self.rooms_start_us, now_us, &what, self.errors.total());
    }

    pub fn finish(mut self) -> OcmOutcome {
        let end_us = self.io.clock.now_us();
        // While the sockets are still open, so the kernel still lists them.
        self.recv_buffers.dropped = udp::drops(&self.udp_inodes);
        for member in &mut self.members {
            self.sends.not_sent_at_end += member
                .queue
                .iter()
                .filter(|p| matches!(p, Pending::Chat { .. }))
                .count() as u64;
            if let Some(mut udp) = member.udp.take() {
                let _ = self.io.poll.registry().deregister(&mut udp);
            }
            member.tcrp.close(self.io.poll.registry());
        }
        let done_us = if self.phase == Phase::Done {
            self.done_us
        } else {
            end_us
        };
        let members_not_attempted = self
            .members
            .iter()
            .filter(|m| m.phase == MemberPhase::Failed && !m.is_host)
            .filter(|m| !self.room_created[m.room])
            .count();
        let mut recv_buffers = self.recv_buffers;
        if recv_buffers.sockets == 0 {
            recv_buffers.granted_min_bytes = 0;
        }
        OcmOutcome {
            rooms_requested: self.cfg.rooms,
            rooms_created: self.room_created.iter().filter(|&&c| c).count(),
            members_requested: self.total(),
            members_joined: self.senders.len(),
            members_not_attempted,
            tcrp_acknowledgements: self.tcrp_acknowledgements,
            ran: Ran {
                plan: (self.plan.clone()).unwrap_or_else(|| Plan::new(1, 1, 0, 0, 0)),
                errors: self.errors,
                sends: self.sends,
                ramp_us: self.rooms_end_us.saturating_sub(self.rooms_start_us),
                drain_used_us: self.drain.start_us.map_or(0, |start| {
                    self.exit_phase_start_us
                        .unwrap_or(done_us)
                        .saturating_sub(start)
                }),
                drain_timed_out: self.drain.timed_out,
            },
            latency: self.latency,
            counts: self.accounting.counts,
            losses: self.accounting.losses(),
            echoes: self.echoes,
            delivered_in_window: self.delivered_in_window,
            foreign_texts: self.foreign_texts,
            exits_planned: self.exit_order.len() as u64,
            exits_sent: self.exits_sent,
            leaves_expected: self.leaves_expected,
            leaves_received: self.leaves_received,
            leaves_again: self.leaves_again,
            recv_buffers,
            exit_used_us: self
                .exit_phase_start_us
                .map_or(0, |start| done_us.saturating_sub(start)),
            exit_timed_out: self.exit_timed_out,
        }
    }
}
