//! The lobby scenario: clients of ROOM, MATOU, CCM and OCM in chatd's one lobby (the
//! switchboard), every one of them a sender, and every member checking every lobby message it
//! must get, whatever protocol it was said in. Latency is kept per (origin, destination)
//! protocol pair, measured from each message's intended send time as in every scenario, and
//! summed up as same-protocol and cross-protocol deliveries.
//!
//! Who is in the lobby: ROOM members past their alias, signed-in MATOU users, identified CCM
//! users, and the members of the OCM room the server calls its lobby (`--ocm-room`, `lobby` by
//! default; the run's first OCM member creates it, or joins it if it exists). Each protocol's
//! client side is its own scenario's (`room`, `ccm::wire`, `matou::wire`, `ocm::wire`,
//! `ocm::udp`); the lobby adds its names, its stamp and the ROOM line reader ([`wire`]), its
//! ledger ([`ledger`]) and its report ([`report`]).
//!
//! Phases, all bounded in time: ramp-up (every member connects at `--connect-rate` and joins;
//! the OCM members but the first wait for the lobby room to exist), send (the plan, over every
//! member that joined), drain (until every present member has every message, or `--drain`).
//! At the end the OCM members send `exit`, the room's creator last, so no room is left behind.
//!
//! The loop is the engine's ([`crate::engine`]): every member's TCP connection (OCM's while it
//! asks for its token) is a client of the engine; the OCM members' UDP sockets, which the
//! engine does not drive, come through [`Wire::on_other_event`].

pub mod args;
pub mod ledger;
pub mod report;
pub mod wire;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;

use bytes::Bytes;
use mio::net::UdpSocket;
use mio::{Interest, Token};
use switchboard::protocol::ccm::codec as ccm_codec;
use switchboard::protocol::matou::codec::Limits as MatouLimits;
use switchboard::protocol::ocm::codec as ocm_codec;

use crate::ccm::wire as ccm_wire;
use crate::course::{self, Course, Phase, Staged};
use crate::driver::{queue_full, Loop, Phases, RunError, SentReceived, START_DELAY_US};
use crate::engine::{self, Link, Wire};
use crate::matou::wire as matou_wire;
use crate::ocm::{udp, wire as ocm_wire};
use crate::plan::Plan;
use crate::registry::{InMix, Named, Row, RowSource, ScenarioKind};
use crate::sockio::{Conn, Queued, SendCounts, SendLags};
use crate::stats::{ErrorCounts, ErrorKind, LatencyHistogram, OwnLags, SeqOutcome};
use ledger::{Kind, Ledger, PairCounts, PairLatencies, KINDS};
use wire::{Read, RoomItem, RoomStage, Stamp};

/// Most members of one protocol (chatd's OCM room holds at most 1,000 members).
pub const MEMBERS_PER_PROTOCOL_MAX: usize = 1_000;
/// Most members in all: the ledger holds one counter per ordered pair of members (16 MB).
pub const MEMBERS_MAX: usize = 2_000;
/// Deliveries per second of the plan (rate x members) one loop can read and check.
pub const DELIVERIES_PER_S_MAX: u64 = 1_000_000;
/// The largest TCRP answer read (the contract's are a few hundred bytes).
const TCRP_ANSWER_BYTES_MAX: usize = 64 * 1024;
const RECV_BATCH_DATAGRAMS: usize = 16;
/// Times the first OCM member switches between create and join before it gives up.
const OCM_FIRST_ATTEMPTS_MAX: u32 = 5;

#[derive(Clone, Debug)]
pub struct LobbyConfig {
    pub room_target: SocketAddr,
    pub matou_target: SocketAddr,
    pub ccm_target: SocketAddr,
    pub ocm_tcp_target: SocketAddr,
    pub ocm_udp_target: SocketAddr,
    /// Members of each protocol, by [`Kind::index`].
    pub members: [usize; 4],
    /// The OCM room chatd's lobby is made of (its `--lobby-ocm-room`).
    pub ocm_room: String,
    /// Lobby messages per second over all senders together.
    pub rate_per_s: u64,
    pub duration_us: u64,
    pub warmup_us: u64,
    pub drain_us: u64,
    /// Bytes of every lobby text: the stamp, padded.
    pub message_bytes: usize,
    pub connect_rate_per_s: u64,
    /// SO_RCVBUF asked for on every OCM member's UDP socket.
    pub recv_buffer_bytes: usize,
    pub run_id: u32,
    pub progress: bool,
}

impl LobbyConfig {
    pub fn total(&self) -> usize {
        self.members.iter().sum()
    }

    /// Deliveries the plan makes per second: every message reaches every other member, and its
    /// sender too in ROOM and MATOU; at most rate x members.
    pub fn deliveries_per_s_max(&self) -> u64 {
        self.rate_per_s * self.total() as u64
    }

    fn target(&self, kind: Kind) -> SocketAddr {
        match kind {
            Kind::Room => self.room_target,
            Kind::Matou => self.matou_target,
            Kind::Ccm => self.ccm_target,
            Kind::Ocm => self.ocm_tcp_target,
        }
    }
}

/// Everything measured, raw; the report computes the figures.
#[derive(Debug)]
pub struct LobbyOutcome {
    pub requested: [usize; 4],
    pub joined: [usize; 4],
    pub plan: Plan,
    pub latency: PairLatencies,
    pub connect: LatencyHistogram,
    pub own: OwnLags,
    /// `[origin][destination]`.
    pub pairs: [[PairCounts; 4]; 4],
    pub expected: [[u64; 4]; 4],
    pub undelivered: [[u64; 4]; 4],
    pub errors: ErrorCounts,
    pub sends: SendCounts,
    pub delivered_in_window: u64,
    /// Lobby texts that are not this run's (another client's, another run's).
    pub foreign_messages: u64,
    /// Presence notices received (ROOM's join and leave lines are not counted: they are text
    /// between the lines, only MATOU's CONNECT_NOTIFY and SIGN_OUT_NOTIFY are).
    pub presence_notices: u64,
    pub keepalives_answered: u64,
    pub ocm_room_created: bool,
    pub ocm_exits_sent: u64,
    pub ramp_us: u64,
    pub drain_used_us: u64,
    pub drain_timed_out: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberPhase {
    Idle,
    /// An OCM member waiting for the lobby room to exist before it asks to join.
    WaitingForRoom,
    Connecting,
    /// Connected, waiting for the server to let it in (greeting, response, identity, token).
    Greeting,
    Joined,
    Failed,
}

struct Member {
    kind: Kind,
    name: String,
    conn: Conn<()>,
    phase: MemberPhase,
    room_stage: RoomStage,
    /// CCM's token (`User`), OCM's token (in every datagram).
    token: Bytes,
    /// OCM: the UDP socket it chats from, and the TCRP operation it asks for.
    udp: Option<UdpSocket>,
    ocm_operation: u8,
    /// It joined the lobby at some point (it may have failed since).
    ever_joined: bool,
    /// Its next message's number: consecutive over the messages it queued.
    next_seq: u32,
}

/// One decoded message from the server, of whichever protocol the member speaks.
pub enum Message {
    Room(RoomItem),
    Matou(matou_wire::Incoming),
    Ccm(ccm_codec::Message),
    Tcrp(ocm_codec::TcrpAnswer),
}

/// How a delivery names its sender.
#[derive(Clone, Copy)]
enum SenderName<'a> {
    /// In a field of its own (MATOU's username, CCM's `Sender`, OCM's `name: `).
    Exact(&'a [u8]),
    /// ROOM: the bytes before the stamp, which end with `name: `.
    Before(&'a [u8]),
}

pub struct Run<'a> {
    cfg: &'a LobbyConfig,
    io: Loop,
    members: Vec<Member>,
    ledger: Ledger,
    latency: PairLatencies,
    connect: LatencyHistogram,
    own: OwnLags,
    errors: ErrorCounts,
    sends: SendCounts,
    delivered_in_window: u64,
    foreign_messages: u64,
    presence_notices: u64,
    keepalives_answered: u64,
    course: Course,
    /// Members that send, by sender ordinal.
    senders: Vec<usize>,
    /// The OCM member that creates (or first joins) the lobby room, and whether it is in.
    ocm_first: Option<usize>,
    ocm_room_ready: bool,
    /// Requests the first OCM member made beyond its first.
    ocm_first_attempts: u32,
    ocm_room_created: bool,
    ocm_exits_sent: u64,
    text_buf: Vec<u8>,
    batch: Option<udp::RecvBatch>,
    matou_limits: MatouLimits,
}

/// The scenario as the registry lists it.
pub struct Lobby;

impl ScenarioKind for Lobby {
    const NAME: &'static str = "lobby";
    type Config = LobbyConfig;
    type Run<'a> = Run<'a>;
    type Outcome = LobbyOutcome;
    type Report = report::Report;

    fn start(cfg: &LobbyConfig) -> Result<Run<'_>, RunError> {
        let io = Loop::new()?;
        let now_us = io.clock.now_us();
        let kinds = interleave(cfg.members);
        let mut numbers = [0usize; 4];
        let members: Vec<Member> = kinds
            .iter()
            .map(|&kind| {
                let number = numbers[kind.index()];
                numbers[kind.index()] += 1;
                Member {
                    kind,
                    name: wire::member_name(kind, cfg.run_id, number),
                    conn: Conn::default(),
                    phase: MemberPhase::Idle,
                    room_stage: RoomStage::Prompt,
                    token: Bytes::new(),
                    udp: None,
                    ocm_operation: ocm_codec::OPERATION_JOIN,
                    ever_joined: false,
                    next_seq: 0,
                }
            })
            .collect();
        let total = members.len();
        let ocm_first = kinds.iter().position(|&k| k == Kind::Ocm);
        let mut run = Run {
            cfg,
            io,
            ledger: Ledger::new(kinds),
            members,
            latency: PairLatencies::default(),
            connect: LatencyHistogram::new(),
            own: OwnLags::default(),
            errors: ErrorCounts::default(),
            sends: SendCounts::default(),
            delivered_in_window: 0,
            foreign_messages: 0,
            presence_notices: 0,
            keepalives_answered: 0,
            course: Course::new(
                total,
                (0..total).collect(),
                now_us,
                cfg.connect_rate_per_s,
                cfg.progress,
            ),
            senders: Vec::new(),
            ocm_first,
            ocm_room_ready: false,
            ocm_first_attempts: 0,
            ocm_room_created: false,
            ocm_exits_sent: 0,
            text_buf: vec![0; cfg.message_bytes.max(wire::STAMP_BYTES)],
            batch: Some(udp::RecvBatch::new(RECV_BATCH_DATAGRAMS)),
            matou_limits: MatouLimits::default(),
        };
        if let Some(first) = ocm_first {
            // It creates the room; should the room exist already, it joins instead.
            run.members[first].ocm_operation = ocm_codec::OPERATION_CREATE;
        }
        Ok(run)
    }
    fn finish(run: Run<'_>) -> LobbyOutcome {
        run.finish()
    }
    fn report(
        cfg: &LobbyConfig,
        seed: u64,
        strict: bool,
        outcome: &LobbyOutcome,
    ) -> report::Report {
        report::Report::new(cfg, seed, strict, outcome)
    }
    /// Plotted: same-protocol and cross-protocol delivery, and the joins. Written only: every
    /// (origin, destination) pair of the protocols in the run (`room-to-ccm`, ...), all
    /// deliveries, the loadgen's own lags.
    fn histograms(outcome: &LobbyOutcome) -> (Named<'_>, Named<'_>) {
        let l = &outcome.latency;
        let mut diagnostic: Named<'_> = vec![("delivery", &l.all)];
        let present = |kind: Kind| outcome.requested[kind.index()] > 0;
        for origin in KINDS.into_iter().filter(|&k| present(k)) {
            for destination in KINDS.into_iter().filter(|&k| present(k)) {
                diagnostic.push((
                    pair_name(origin, destination),
                    &l.by_pair[origin.index()][destination.index()],
                ));
            }
        }
        diagnostic.extend(outcome.own.named());
        (
            vec![
                ("same-protocol", &l.same),
                ("cross-protocol", &l.cross),
                ("connect", &outcome.connect),
            ],
            diagnostic,
        )
    }
    fn progress(cfg: &LobbyConfig) -> bool {
        cfg.progress
    }
    fn unreachable(cfg: &LobbyConfig) -> String {
        format!(
            "no member could join the lobby (ROOM {}, MATOU {}, CCM {}, OCM {})",
            cfg.room_target, cfg.matou_target, cfg.ccm_target, cfg.ocm_tcp_target
        )
    }
}

/// Where the lobby's report keeps its row in the mix: its deliveries, every pair together.
static MIX_ROW: RowSource = RowSource {
    requested: "/connections/requested",
    joined: "/connections/joined",
    latency: "delivery",
    latency_path: "/latency_ms/all",
    losses: "/losses/total",
};

impl InMix for Lobby {
    const ROW: Row = Row {
        name: "lobby",
        source: &MIX_ROW,
    };
    const UNREACHABLE_IN_MIX: &'static str = "no member could join the lobby";
}

/// `room-to-ccm`, ...: a pair's histogram name.
pub fn pair_name(origin: Kind, destination: Kind) -> &'static str {
    const NAMES: [[&str; 4]; 4] = [
        [
            "room-to-room",
            "room-to-matou",
            "room-to-ccm",
            "room-to-ocm",
        ],
        [
            "matou-to-room",
            "matou-to-matou",
            "matou-to-ccm",
            "matou-to-ocm",
        ],
        ["ccm-to-room", "ccm-to-matou", "ccm-to-ccm", "ccm-to-ocm"],
        ["ocm-to-room", "ocm-to-matou", "ocm-to-ccm", "ocm-to-ocm"],
    ];
    NAMES[origin.index()][destination.index()]
}

/// The members' protocols in lobby order: round-robin over the protocols while each has some
/// left, so consecutive senders of the plan (and the ramp-up) alternate protocols.
pub fn interleave(counts: [usize; 4]) -> Vec<Kind> {
    let mut left = counts;
    let mut kinds = Vec::with_capacity(counts.iter().sum());
    while left.iter().any(|&n| n > 0) {
        for kind in KINDS {
            if left[kind.index()] > 0 {
                left[kind.index()] -= 1;
                kinds.push(kind);
            }
        }
    }
    kinds
}

impl Phases for Run<'_> {
    fn io(&self) -> &Loop {
        &self.io
    }
    fn io_mut(&mut self) -> &mut Loop {
        &mut self.io
    }
    fn advance(&mut self) -> Result<(), RunError> {
        course::advance(self)
    }
    fn is_done(&self) -> bool {
        course::is_done(self)
    }
    fn next_wake_us(&self) -> u64 {
        course::next_wake_us(self)
    }
    fn send_due(&mut self) {
        // A copy (a few integers), so an OCM datagram can be sent while the plan is read.
        let Some(plan) = self.course.plan.clone() else {
            return;
        };
        let plan = &plan;
        if self.course.phase != Phase::Send {
            return;
        }
        self.io.bytes_since_send_check = 0;
        let now_us = self.io.clock.now_us();
        while let Some(due) = plan.take_due(&mut self.course.next_g, now_us) {
            let u = self.senders[plan.sender_of(due.g) as usize];
            let member = &self.members[u];
            if member.phase != MemberPhase::Joined {
                self.sends.not_sent_connection_lost += 1;
                continue;
            }
            let text = &mut self.text_buf[..self.cfg.message_bytes];
            let stamp = Stamp {
                run_id: self.cfg.run_id,
                sender: u as u32,
                seq: member.next_seq,
                intended_us: due.intended_us,
            };
            if wire::FORMAT.write(text, &stamp).is_err() {
                self.sends.not_sent_queue_full += 1; // cannot happen: the arguments are checked
                continue;
            }
            let message = match member.kind {
                // As the original client writes a line; the server drops the line ending
                // when it crosses (and keeps it for ROOM's own members).
                Kind::Room => {
                    let mut line = Vec::with_capacity(member.name.len() + 3 + text.len());
                    line.extend_from_slice(member.name.as_bytes());
                    line.extend_from_slice(b": ");
                    line.extend_from_slice(text);
                    line.push(b'\n');
                    Bytes::from(line)
                }
                Kind::Matou => matou_wire::public_message(text),
                Kind::Ccm => ccm_wire::text(&member.token, "*", text),
                Kind::Ocm => {
                    plan.record_lateness(&due, &mut self.own.schedule_lateness);
                    let datagram = ocm_wire::datagram(&self.cfg.ocm_room, &member.token, text);
                    self.send_datagram(u, datagram, due.intended_us, due.noticed_us);
                    continue;
                }
            };
            if queue_full(
                member.conn.queue.len(),
                member.conn.out.pending(),
                message.len(),
            ) {
                self.sends.not_sent_queue_full += 1;
                continue;
            }
            let member = &mut self.members[u];
            member.conn.out.extend(&message);
            member
                .conn
                .queue
                .push_back(Queued::new(&member.conn.out, &due, ()));
            member.next_seq += 1;
            plan.record_lateness(&due, &mut self.own.schedule_lateness);
            self.io.dirty.mark(u);
        }
        engine::flush_dirty(self);
    }
    fn counts(&self) -> SentReceived {
        SentReceived {
            sent: self.sends.sent,
            received: self.ledger.totals().delivered,
        }
    }
}

impl Wire for Run<'_> {
    type Tag = ();
    type Message = Message;

    fn conn(&mut self, u: usize) -> Option<(&mut Loop, &mut Conn<()>)> {
        let member = self.members.get_mut(u)?;
        Some((&mut self.io, &mut member.conn))
    }
    fn link(&self, u: usize) -> Link {
        match self.members.get(u).map(|m| (m.phase, m.kind)) {
            Some((MemberPhase::Connecting, _)) => Link::Connecting,
            Some((MemberPhase::Greeting, _)) => Link::Greeting,
            // An OCM member's TCP connection ends with its token; its UDP socket is not the
            // engine's.
            Some((MemberPhase::Joined, Kind::Ocm)) => Link::Down,
            Some((MemberPhase::Joined, _)) => Link::Joined,
            _ => Link::Down,
        }
    }
    fn on_connected(&mut self, u: usize) -> io::Result<()> {
        let member = &mut self.members[u];
        match member.kind {
            Kind::Room => member.room_stage = RoomStage::Prompt,
            Kind::Matou => member
                .conn
                .out
                .extend(&matou_wire::connect_request(&member.name)),
            Kind::Ccm => member.conn.out.extend(&ccm_wire::identify(&member.name)),
            Kind::Ocm => self.open_udp_and_request(u)?,
        }
        self.members[u].phase = MemberPhase::Greeting;
        Ok(())
    }
    fn decode(&mut self, u: usize) -> Result<Option<Message>, String> {
        let message_bytes = self.cfg.message_bytes;
        let member = &mut self.members[u];
        let inbuf = &mut member.conn.inbuf;
        match member.kind {
            Kind::Room => Ok(
                wire::next_room_item(inbuf, member.room_stage, message_bytes)?.map(Message::Room),
            ),
            Kind::Matou => matou_wire::decode(inbuf, &self.matou_limits, self.cfg.run_id, 0)
                .map(|m| m.map(Message::Matou))
                .map_err(|e| format!("{e:?}")),
            Kind::Ccm => ccm_codec::decode(inbuf, false)
                .map(|m| m.map(Message::Ccm))
                .map_err(|e| e.to_string()),
            Kind::Ocm => ocm_codec::decode_answer(inbuf, TCRP_ANSWER_BYTES_MAX)
                .map(|a| a.map(Message::Tcrp))
                .map_err(|e| format!("TCRP answer: {e:?}")),
        }
    }
    fn on_message(&mut self, u: usize, message: Message, now_us: u64) {
        match message {
            Message::Room(item) => self.on_room(u, item, now_us),
            Message::Matou(incoming) => self.on_matou(u, incoming, now_us),
            Message::Ccm(message) => self.on_ccm(u, &message, now_us),
            Message::Tcrp(answer) => self.on_tcrp(u, &answer, now_us),
        }
    }
    fn on_drained(&mut self, u: usize) {
        // CCM: the server always writes Content-Length; a message cut short of one would wait
        // here forever, so a whole burst is decoded as a last resort (as the CCM scenario).
        let member = &mut self.members[u];
        if member.kind != Kind::Ccm || member.conn.inbuf.is_empty() {
            return;
        }
        let now_us = self.io.clock.now_us();
        match ccm_codec::decode(&mut member.conn.inbuf, true) {
            Ok(Some(message)) => self.on_ccm(u, &message, now_us),
            Ok(None) => {}
            Err(e) => self.fail(u, ErrorKind::Protocol, || format!("framing lost: {e}")),
        }
    }
    fn fail(&mut self, u: usize, kind: ErrorKind, why: String) {
        Run::fail(self, u, kind, || why);
    }
    fn flush(&mut self, u: usize) {
        let member = &mut self.members[u];
        let lags = SendLags {
            plan: self.course.plan.as_ref(),
            own: &mut self.own,
            sent_in_window: &mut self.sends.sent_in_window,
        };
        let (sent, ledger) = (&mut self.sends.sent, &mut self.ledger);
        let failure = member.conn.flush(&self.io.clock, lags, |_, _| {
            *sent += 1;
            ledger.on_sent(u);
        });
        if let Some(why) = failure {
            Run::fail(self, u, ErrorKind::Write, || why);
        }
    }
    fn on_other_event(&mut self, index: usize, readable: bool, _writable: bool) {
        let n = self.members.len();
        if readable && (n..2 * n).contains(&index) {
            self.receive(index - n);
        }
    }
}

impl Staged for Run<'_> {
    const WAVE_TIMEOUT: &'static str = "ramp-up timed out before it joined the lobby";

    fn course(&self) -> &Course {
        &self.course
    }
    fn course_mut(&mut self) -> &mut Course {
        &mut self.course
    }
    fn target(&self, u: usize) -> SocketAddr {
        self.cfg.target(self.members[u].kind)
    }
    fn on_connecting(&mut self, u: usize) {
        self.members[u].phase = MemberPhase::Connecting;
    }
    /// The OCM members but the first wait for the lobby room to exist.
    fn on_connect_due(&mut self, u: usize) {
        if self.members[u].kind == Kind::Ocm && Some(u) != self.ocm_first && !self.ocm_room_ready {
            self.members[u].phase = MemberPhase::WaitingForRoom;
        } else {
            course::connect(self, u);
        }
    }
    fn start_sending(&mut self, now_us: u64) -> Result<(), RunError> {
        self.senders = (0..self.members.len())
            .filter(|&u| self.members[u].phase == MemberPhase::Joined)
            .collect();
        if self.senders.is_empty() {
            return Err(self.errors.unreachable("no member joined"));
        }
        self.course.plan = Some(Plan::new(
            self.senders.len() as u32,
            self.cfg.rate_per_s,
            now_us + START_DELAY_US,
            self.cfg.warmup_us,
            self.cfg.duration_us,
        ));
        Ok(())
    }
    fn drain_us(&self) -> u64 {
        self.cfg.drain_us
    }
    fn everything_arrived(&self) -> bool {
        self.ledger.complete()
    }
    fn doing(&self) -> String {
        match self.course.phase {
            Phase::Ramp => format!(
                "ramp-up: {} of {} joined",
                self.members
                    .iter()
                    .filter(|m| m.phase == MemberPhase::Joined)
                    .count(),
                self.members.len()
            ),
            Phase::Send | Phase::Drain { .. } => format!(
                "sent {} of {}, delivered {}",
                self.sends.sent,
                self.course.plan.as_ref().map_or(0, |p| p.messages),
                self.ledger.totals().delivered
            ),
            Phase::Close { .. } | Phase::Done => String::new(),
        }
    }
    fn errors(&self) -> &ErrorCounts {
        &self.errors
    }
}

impl Run<'_> {
    /// Member `u` is in the lobby.
    fn joined(&mut self, u: usize, now_us: u64) {
        let member = &mut self.members[u];
        member.phase = MemberPhase::Joined;
        member.ever_joined = true;
        self.connect
            .record(now_us.saturating_sub(self.course.wave.intended_us(u)));
        self.ledger.enter(u);
        self.course.wave.settle(u);
    }

    /// Binds OCM member `u`'s UDP socket on the IP its TCRP connection uses (the server binds
    /// the token to that IP) and queues the request naming the socket's address.
    fn open_udp_and_request(&mut self, u: usize) -> io::Result<()> {
        let n = self.members.len();
        let member = &mut self.members[u];
        let local = match member.conn.stream.as_ref() {
            Some(stream) => stream.local_addr()?,
            None => return Err(io::Error::other("no TCRP connection")),
        };
        let std_socket = StdUdpSocket::bind(SocketAddr::new(local.ip(), 0))?;
        std_socket.set_nonblocking(true)?;
        udp::set_recv_buffer(std_socket.as_raw_fd(), self.cfg.recv_buffer_bytes)?;
        let udp_addr = std_socket.local_addr()?;
        let mut socket = UdpSocket::from_std(std_socket);
        self.io
            .poll
            .registry()
            .register(&mut socket, Token(1 + n + u), Interest::READABLE)?;
        if let Some(mut old) = member.udp.replace(socket) {
            let _ = self.io.poll.registry().deregister(&mut old);
        }
        let request = ocm_wire::request(
            member.ocm_operation,
            &self.cfg.ocm_room,
            &member.name,
            udp_addr,
        );
        member.conn.out.extend(&request);
        Ok(())
    }

    fn on_room(&mut self, u: usize, item: RoomItem, now_us: u64) {
        let member = &mut self.members[u];
        match item {
            RoomItem::Prompt => {
                member.conn.out.extend(member.name.as_bytes());
                member.room_stage = RoomStage::Greeting;
                self.io.dirty.mark(u);
            }
            RoomItem::Greeting => {
                member.room_stage = RoomStage::Lines;
                self.joined(u, now_us);
            }
            RoomItem::Line { before, text } => {
                self.on_delivery(u, SenderName::Before(&before), &text, now_us);
            }
        }
    }

    fn on_matou(&mut self, u: usize, incoming: matou_wire::Incoming, now_us: u64) {
        use matou_wire::Incoming;
        let joined = self.members[u].phase == MemberPhase::Joined;
        match incoming {
            Incoming::ConnectResponse { accepted: true } if !joined => self.joined(u, now_us),
            Incoming::ConnectResponse { accepted: false } if !joined => {
                self.fail(u, ErrorKind::Connect, || {
                    "CONNECT_RESPONSE 0: the name was refused".to_string()
                });
            }
            Incoming::ConnectNotify(_) | Incoming::SignOutNotify(_) => self.presence_notices += 1,
            Incoming::Broadcast { username, message } if joined => {
                self.on_delivery(u, SenderName::Exact(&username), &message, now_us);
            }
            other => {
                let name = self.members[u].name.clone();
                self.errors.count(ErrorKind::Protocol, || {
                    format!("MATOU user {name}: unexpected {other:?}")
                });
            }
        }
    }

    fn on_ccm(&mut self, u: usize, message: &ccm_codec::Message, now_us: u64) {
        let identified = self.members[u].phase == MemberPhase::Joined;
        match ccm_wire::classify(message, identified) {
            ccm_wire::Incoming::Identity(token) => {
                self.members[u].token = token;
                self.joined(u, now_us);
            }
            ccm_wire::Incoming::Keepalive => {
                let member = &mut self.members[u];
                if let Some(reply) =
                    ccm_wire::keepalive_reply(ccm_wire::Role::Active, &member.token)
                {
                    member.conn.out.extend(&reply);
                    self.keepalives_answered += 1;
                    self.io.dirty.mark(u);
                }
            }
            ccm_wire::Incoming::Text {
                sender,
                addressee,
                content,
            } => {
                if &addressee[..] != b"*" {
                    let name = self.members[u].name.clone();
                    self.errors.count(ErrorKind::Protocol, || {
                        format!(
                            "CCM user {name}: a lobby Text with Addressee {:?}, not *",
                            String::from_utf8_lossy(&addressee)
                        )
                    });
                    return;
                }
                self.on_delivery(u, SenderName::Exact(&sender), &content, now_us);
            }
            ccm_wire::Incoming::Violation(why) => {
                let name = self.members[u].name.clone();
                self.errors
                    .count(ErrorKind::Protocol, || format!("CCM user {name}: {why}"));
            }
        }
    }

    fn on_tcrp(&mut self, u: usize, answer: &ocm_codec::TcrpAnswer, now_us: u64) {
        let operation = self.members[u].ocm_operation;
        match ocm_wire::judge_answer(answer, operation, &self.cfg.ocm_room) {
            ocm_wire::Answer::Acknowledged => {}
            ocm_wire::Answer::Granted(token) => {
                let member = &mut self.members[u];
                member.token = token;
                // One request per connection: the server closes it after its answer.
                member.conn.close(self.io.poll.registry());
                self.joined(u, now_us);
                if Some(u) == self.ocm_first {
                    self.ocm_room_ready = true;
                    self.ocm_room_created = operation == ocm_codec::OPERATION_CREATE;
                    for v in 0..self.members.len() {
                        if self.members[v].phase == MemberPhase::WaitingForRoom {
                            course::connect(self, v);
                        }
                    }
                }
            }
            ocm_wire::Answer::Refused(_)
                if Some(u) == self.ocm_first
                    && self.ocm_first_attempts < OCM_FIRST_ATTEMPTS_MAX =>
            {
                // A create is refused when the room exists (another client's members are in
                // it), a join when it does not: the room may also be closing as this member
                // asks (the last run's creator left just before), so it tries the other.
                self.ocm_first_attempts += 1;
                let member = &mut self.members[u];
                member.conn.close(self.io.poll.registry());
                member.ocm_operation = if operation == ocm_codec::OPERATION_CREATE {
                    ocm_codec::OPERATION_JOIN
                } else {
                    ocm_codec::OPERATION_CREATE
                };
                course::connect(self, u);
            }
            ocm_wire::Answer::Refused(why) => {
                let what = if operation == ocm_codec::OPERATION_CREATE {
                    "create"
                } else {
                    "join"
                };
                self.fail(u, ErrorKind::Protocol, || {
                    format!("{what} of the lobby room: {why}")
                });
            }
        }
    }

    /// Sends OCM member `u`'s lobby datagram at once (UDP does not queue: a socket that would
    /// block counts the message "not sent, queue full").
    fn send_datagram(
        &mut self,
        u: usize,
        datagram: Option<Vec<u8>>,
        intended_us: u64,
        noticed_us: u64,
    ) {
        let Some(datagram) = datagram else {
            self.sends.not_sent_queue_full += 1; // cannot happen: the size is checked
            return;
        };
        let Some(socket) = self.members[u].udp.as_ref() else {
            self.sends.not_sent_connection_lost += 1;
            return;
        };
        let attempt_us = self.io.clock.now_us();
        match socket.send_to(&datagram, self.cfg.ocm_udp_target) {
            Ok(_) => {
                let done_us = self.io.clock.now_us();
                self.members[u].next_seq += 1;
                self.sends.sent += 1;
                self.ledger.on_sent(u);
                SendLags {
                    plan: self.course.plan.as_ref(),
                    own: &mut self.own,
                    sent_in_window: &mut self.sends.sent_in_window,
                }
                .record(intended_us, noticed_us, attempt_us, done_us);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sends.not_sent_queue_full += 1,
            Err(e) => {
                self.sends.not_sent_connection_lost += 1;
                let name = self.members[u].name.clone();
                self.errors.count(ErrorKind::Write, || {
                    format!("OCM member {name}: sendto: {e}")
                });
            }
        }
    }

    /// Reads OCM member `u`'s datagrams until its socket is empty.
    fn receive(&mut self, u: usize) {
        let Some(mut batch) = self.batch.take() else {
            return;
        };
        while let Some(socket) = self.members[u].udp.as_ref() {
            let n = match batch.recv(socket.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(u, ErrorKind::Read, || format!("recvmmsg: {e}"));
                    break;
                }
            };
            let now_us = self.io.clock.now_us();
            for i in 0..n {
                self.on_datagram(u, batch.datagram(i), now_us);
            }
            if n < batch.slots() {
                break; // drained: a later datagram raises a new edge
            }
        }
        self.batch = Some(batch);
    }

    fn on_datagram(&mut self, u: usize, datagram: &[u8], now_us: u64) {
        if self.members[u].phase != MemberPhase::Joined {
            return;
        }
        match ocm_wire::split_chat(datagram) {
            Some((name, text)) => self.on_delivery(u, SenderName::Exact(name), text, now_us),
            None => {
                // A leave text of someone else's member, or anything not `name: text`.
                self.foreign_messages += 1;
            }
        }
    }

    /// One lobby text reached member `r`: checked against its sender and the plan, then
    /// accounted for and timed by (origin, destination) pair.
    fn on_delivery(&mut self, r: usize, named: SenderName<'_>, text: &[u8], now_us: u64) {
        let stamp = match wire::FORMAT.read(text, self.cfg.run_id) {
            Read::Ours(stamp) => stamp,
            Read::Foreign => {
                self.foreign_messages += 1;
                return;
            }
            Read::Malformed(why) => {
                let name = self.members[r].name.clone();
                self.errors
                    .count(ErrorKind::Protocol, || format!("member {name}: {why}"));
                return;
            }
        };
        let s = stamp.sender as usize;
        let agrees = self.members.get(s).is_some_and(|sender| {
            let name = sender.name.as_bytes();
            let named_right = match named {
                SenderName::Exact(n) => n == name,
                SenderName::Before(before) => wire::names_sender(before, name),
            };
            named_right && self.ledger.expects(r, s) && stamp.intended_us <= now_us
        });
        let Some(plan) = self.course.plan.as_ref().filter(|_| agrees) else {
            let name = self.members[r].name.clone();
            let named = match named {
                SenderName::Exact(n) | SenderName::Before(n) => {
                    String::from_utf8_lossy(&n[n.len().saturating_sub(40)..]).into_owned()
                }
            };
            self.errors.count(ErrorKind::Protocol, || {
                format!("member {name}: a lobby message that does not match the run (named by {named:?}, {stamp:?})")
            });
            return;
        };
        if self.ledger.on_delivered(r, s, u64::from(stamp.seq)) == SeqOutcome::Behind {
            return; // a duplicate: counted, timed once
        }
        if !plan.is_warmup(stamp.intended_us) {
            self.latency.record(
                self.members[s].kind,
                self.members[r].kind,
                now_us.saturating_sub(stamp.intended_us),
            );
        }
        if plan.in_window(now_us) {
            self.delivered_in_window += 1;
        }
    }

    /// Counts the error, closes the member's sockets and takes it out of the lobby.
    fn fail(&mut self, u: usize, kind: ErrorKind, describe: impl FnOnce() -> String) {
        if self.members[u].phase == MemberPhase::Failed {
            return;
        }
        self.course.wave.settle(u);
        let member = &mut self.members[u];
        member.phase = MemberPhase::Failed;
        self.sends.not_sent_connection_lost += member.conn.close(self.io.poll.registry());
        if let Some(mut socket) = member.udp.take() {
            let _ = self.io.poll.registry().deregister(&mut socket);
        }
        self.ledger.leave(u);
        let name = member.name.clone();
        let protocol = member.kind.name().to_uppercase();
        self.errors
            .count(kind, || format!("{protocol} member {name}: {}", describe()));
        if Some(u) == self.ocm_first && !self.ocm_room_ready {
            for v in 0..self.members.len() {
                if self.members[v].phase == MemberPhase::WaitingForRoom {
                    // Through the trait's fail: one closure type, not one per level.
                    <Self as Wire>::fail(
                        self,
                        v,
                        ErrorKind::Connect,
                        "the lobby room could not be created or joined".to_string(),
                    );
                }
            }
        }
    }

    /// The OCM members leave (`exit`), the room's creator last so the room closes after its
    /// guests are gone; best effort, as the run is over.
    fn send_exits(&mut self) {
        let mut order: Vec<usize> = (0..self.members.len())
            .filter(|&u| self.members[u].kind == Kind::Ocm && self.members[u].udp.is_some())
            .filter(|&u| self.members[u].phase == MemberPhase::Joined)
            .collect();
        if let Some(first) = self.ocm_first {
            order.retain(|&u| u != first);
            if self.members[first].phase == MemberPhase::Joined {
                order.push(first);
            }
        }
        for u in order {
            let member = &self.members[u];
            let datagram =
                ocm_wire::datagram(&self.cfg.ocm_room, &member.token, ocm_codec::EXIT_MESSAGE);
            if let (Some(socket), Some(datagram)) = (member.udp.as_ref(), datagram) {
                if socket.send_to(&datagram, self.cfg.ocm_udp_target).is_ok() {
                    self.ocm_exits_sent += 1;
                }
            }
        }
    }

    pub fn finish(mut self) -> LobbyOutcome {
        let times = self.course.times(self.io.clock.now_us());
        self.send_exits();
        let undelivered = self.ledger.undelivered();
        let expected = self.ledger.expected();
        let mut requested = [0usize; 4];
        let mut joined = [0usize; 4];
        for u in 0..self.members.len() {
            let member = &mut self.members[u];
            requested[member.kind.index()] += 1;
            if member.ever_joined {
                joined[member.kind.index()] += 1;
            }
            self.sends.not_sent_at_end += member.conn.close(self.io.poll.registry());
            if let Some(mut socket) = member.udp.take() {
                let _ = self.io.poll.registry().deregister(&mut socket);
            }
        }
        LobbyOutcome {
            requested,
            joined,
            plan: self.course.plan_or_empty(),
            latency: self.latency,
            connect: self.connect,
            own: self.own,
            pairs: self.ledger.pairs,
            expected,
            undelivered,
            errors: self.errors,
            sends: self.sends,
            delivered_in_window: self.delivered_in_window,
            foreign_messages: self.foreign_messages,
            presence_notices: self.presence_notices,
            keepalives_answered: self.keepalives_answered,
            ocm_room_created: self.ocm_room_created,
            ocm_exits_sent: self.ocm_exits_sent,
            ramp_us: times.ramp_us,
            drain_used_us: times.drain_used_us,
            drain_timed_out: times.drain_timed_out,
        }
    }
}
