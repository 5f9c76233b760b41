//! The lobby scenario: clients of ROOM, MATOU, CCM and OCM (and WEB, with `--web`) in chatd's one
//! lobby (the switchboard), every one of them a sender, and every member checking every lobby
//! message it must get, whatever protocol it was said in. Latency is kept per (origin, destination)
//! protocol pair, measured from each message's intended send time as in every scenario, and summed
//! up as same-protocol and cross-protocol deliveries.
//!
//! Who is in the lobby: ROOM members past their alias, signed-in MATOU users, identified CCM users,
//! WEB users at their `welcome` (their `say` is a masked WebSocket frame, their lobby messages
//! JSON, read with [`crate::web::ws`]), and the members of the OCM room the server calls its lobby
//! (`--ocm-room`, `lobby` by default; the run's first OCM member creates it, or joins it if it
//! exists). Each protocol's client side is its own scenario's (`room`, `ccm::wire`, `matou::wire`,
//! `ocm::wire`, `ocm::udp`); the lobby adds its names, its stamp and the ROOM line reader
//! ([`wire`]), its ledger ([`ledger`]) and its report ([`report`]).
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

use crate::args::Pace;
use crate::ccm::wire as ccm_wire;
use crate::course::Phase;
use crate::driver::{RunError, SentReceived};
use crate::engine::{self, ClientOf, Link, Stage, Wire};
use crate::matou::wire as matou_wire;
use crate::ocm::{udp, wire as ocm_wire};
use crate::registry::{Named, Row, RowSource, ScenarioKind};
use crate::report::Ran;
use crate::sockio::{Queued, SendLags};
use crate::stats::{ErrorKind, LatencyHistogram, OwnLags, SeqOutcome};
use crate::web::{self, ws};
use ledger::{Kind, Ledger, PairCounts, PairLatencies, KINDS, KIND_COUNT};
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
    /// chatd's web listener (its WebSocket at `/ws`).
    pub web_target: SocketAddr,
    /// Members of each protocol, by [`Kind::index`].
    pub members: [usize; KIND_COUNT],
    /// The OCM room chatd's lobby is made of (its `--lobby-ocm-room`).
    pub ocm_room: String,
    /// Bytes of every lobby text: the stamp, padded.
    pub message_bytes: usize,
    /// SO_RCVBUF asked for on every OCM member's UDP socket.
    pub recv_buffer_bytes: usize,
    pub run_id: u32,
    /// Its lobby messages per second over all senders together, phases' lengths, ramp-up
    /// pace and progress line.
    pub pace: Pace,
}

impl LobbyConfig {
    pub fn total(&self) -> usize {
        self.members.iter().sum()
    }

    /// Deliveries the plan makes per second: every message reaches every other member, and its
    /// sender too in ROOM and MATOU; at most rate x members.
    pub fn deliveries_per_s_max(&self) -> u64 {
        self.pace.rate_per_s * self.total() as u64
    }

    fn target(&self, kind: Kind) -> SocketAddr {
        match kind {
            Kind::Room => self.room_target,
            Kind::Matou => self.matou_target,
            Kind::Ccm => self.ccm_target,
            Kind::Ocm => self.ocm_tcp_target,
            Kind::Web => self.web_target,
        }
    }
}

/// Everything measured, raw; the report computes the figures.
#[derive(Debug)]
pub struct LobbyOutcome {
    pub requested: [usize; KIND_COUNT],
    pub joined: [usize; KIND_COUNT],
    pub ran: Ran,
    pub latency: PairLatencies,
    pub connect: LatencyHistogram,
    pub own: OwnLags,
    /// `[origin][destination]`.
    pub pairs: [[PairCounts; KIND_COUNT]; KIND_COUNT],
    pub expected: [[u64; KIND_COUNT]; KIND_COUNT],
    pub undelivered: [[u64; KIND_COUNT]; KIND_COUNT],
    pub delivered_in_window: u64,
    /// Lobby texts that are not this run's (another client's, another run's).
    pub foreign_messages: u64,
    /// Presence notices received (ROOM's join and leave lines are not counted: they are text
    /// between the lines, only MATOU's CONNECT_NOTIFY and SIGN_OUT_NOTIFY are).
    pub presence_notices: u64,
    pub keepalives_answered: u64,
    pub ocm_room_created: bool,
    pub ocm_exits_sent: u64,
}

pub struct Member {
    kind: Kind,
    name: String,
    room_stage: RoomStage,
    /// CCM's token (`User`), OCM's token (in every datagram).
    token: Bytes,
    /// OCM: the UDP socket it chats from, and the TCRP operation it asks for.
    udp: Option<UdpSocket>,
    ocm_operation: u8,
    /// WEB: its frame reader, masking keys and notices.
    web: Option<web::Conn>,
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

/// The run: the engine's, over the lobby's part.
pub type Run<'a> = engine::Run<Part<'a>>;

/// The lobby's part of the run.
pub struct Part<'a> {
    cfg: &'a LobbyConfig,
    ledger: Ledger,
    latency: PairLatencies,
    connect: LatencyHistogram,
    delivered_in_window: u64,
    foreign_messages: u64,
    presence_notices: u64,
    keepalives_answered: u64,
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
    const ROW: Row = Row {
        name: "lobby",
        source: &MIX_ROW,
    };
    const UNREACHABLE_IN_MIX: &'static str = "no member could join the lobby";
    type Config = LobbyConfig;
    type Run<'a> = Run<'a>;
    type Outcome = LobbyOutcome;
    type Report = report::Report;

    fn start(cfg: &LobbyConfig) -> Result<Run<'_>, RunError> {
        let kinds = interleave(cfg.members);
        let ocm_first = kinds.iter().position(|&k| k == Kind::Ocm);
        let mut numbers = [0usize; KIND_COUNT];
        let members: Vec<Member> = (kinds.iter().enumerate())
            .map(|(u, &kind)| {
                let number = numbers[kind.index()];
                numbers[kind.index()] += 1;
                Member {
                    kind,
                    name: wire::member_name(kind, cfg.run_id, number),
                    room_stage: RoomStage::Prompt,
                    token: Bytes::new(),
                    udp: None,
                    // The first creates the room; should the room exist already, it joins
                    // instead.
                    ocm_operation: if Some(u) == ocm_first {
                        ocm_codec::OPERATION_CREATE
                    } else {
                        ocm_codec::OPERATION_JOIN
                    },
                    web: (kind == Kind::Web).then(|| web::Conn::new(u as u32)),
                    ever_joined: false,
                    next_seq: 0,
                }
            })
            .collect();
        let part = Part {
            cfg,
            ledger: Ledger::new(kinds),
            latency: PairLatencies::default(),
            connect: LatencyHistogram::new(),
            delivered_in_window: 0,
            foreign_messages: 0,
            presence_notices: 0,
            keepalives_answered: 0,
            ocm_first,
            ocm_room_ready: false,
            ocm_first_attempts: 0,
            ocm_room_created: false,
            ocm_exits_sent: 0,
            text_buf: vec![0; cfg.message_bytes.max(wire::STAMP_BYTES)],
            batch: Some(udp::RecvBatch::new(RECV_BATCH_DATAGRAMS)),
            matou_limits: MatouLimits::default(),
        };
        engine::Run::paced(part, members, |n| (0..n).collect(), &cfg.pace)
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
        cfg.pace.progress
    }
    fn unreachable(cfg: &LobbyConfig) -> String {
        let web = match cfg.members[Kind::Web.index()] {
            0 => String::new(),
            _ => format!(", WEB {}", cfg.web_target),
        };
        format!(
            "no member could join the lobby (ROOM {}, MATOU {}, CCM {}, OCM {}{web})",
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

/// `room-to-ccm`, ...: a pair's histogram name.
pub fn pair_name(origin: Kind, destination: Kind) -> &'static str {
    const NAMES: [[&str; KIND_COUNT]; KIND_COUNT] = [
        [
            "room-to-room",
            "room-to-matou",
            "room-to-ccm",
            "room-to-ocm",
            "room-to-web",
        ],
        [
            "matou-to-room",
            "matou-to-matou",
            "matou-to-ccm",
            "matou-to-ocm",
            "matou-to-web",
        ],
        [
            "ccm-to-room",
            "ccm-to-matou",
            "ccm-to-ccm",
            "ccm-to-ocm",
            "ccm-to-web",
        ],
        [
            "ocm-to-room",
            "ocm-to-matou",
            "ocm-to-ccm",
            "ocm-to-ocm",
            "ocm-to-web",
        ],
        [
            "web-to-room",
            "web-to-matou",
            "web-to-ccm",
            "web-to-ocm",
            "web-to-web",
        ],
    ];
    NAMES[origin.index()][destination.index()]
}

/// The members' protocols in lobby order: round-robin over the protocols while each has some
/// left, so consecutive senders of the plan (and the ramp-up) alternate protocols.
pub fn interleave(counts: [usize; KIND_COUNT]) -> Vec<Kind> {
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

impl Wire for Part<'_> {
    type User = Member;
    type Tag = ();
    type Message = Message;
    const WAVE_TIMEOUT: &'static str = "ramp-up timed out before it joined the lobby";

    fn target(&self, c: &ClientOf<Self>) -> SocketAddr {
        self.cfg.target(c.kind)
    }
    fn who(&self, _u: usize, c: &ClientOf<Self>) -> String {
        format!("{} member {}", c.kind.name().to_uppercase(), c.name)
    }
    fn greet(run: &mut Run<'_>, u: usize) -> io::Result<()> {
        let member = &mut run.clients[u];
        match member.kind {
            Kind::Room => member.room_stage = RoomStage::Prompt,
            Kind::Matou => (member.conn.out).extend(&matou_wire::connect_request(&member.name)),
            Kind::Ccm => member.conn.out.extend(&ccm_wire::identify(&member.name)),
            Kind::Ocm => run.open_udp_and_request(u)?,
            Kind::Web => {
                (member.conn.out).extend(&ws::upgrade_request(&run.p.cfg.web_target.to_string()))
            }
        }
        Ok(())
    }
    fn decode(run: &mut Run<'_>, u: usize) -> Result<Option<Message>, String> {
        let cfg = run.p.cfg;
        let member = &mut run.clients[u];
        let (kind, room_stage) = (member.kind, member.room_stage);
        let inbuf = &mut member.conn.inbuf;
        match kind {
            Kind::Room => {
                Ok(wire::next_room_item(inbuf, room_stage, cfg.message_bytes)?.map(Message::Room))
            }
            Kind::Matou => matou_wire::decode(inbuf, &run.p.matou_limits, cfg.run_id, 0)
                .map(|m| m.map(Message::Matou))
                .map_err(|e| format!("{e:?}")),
            Kind::Ccm => ccm_codec::decode(inbuf, false)
                .map(|m| m.map(Message::Ccm))
                .map_err(|e| e.to_string()),
            Kind::Ocm => ocm_codec::decode_answer(inbuf, TCRP_ANSWER_BYTES_MAX)
                .map(|a| a.map(Message::Tcrp))
                .map_err(|e| format!("TCRP answer: {e:?}")),
            Kind::Web => Ok(None), // never called: `on_read` reads its frames where they are
        }
    }
    fn on_message(run: &mut Run<'_>, u: usize, message: Message, now_us: u64) {
        match message {
            Message::Room(item) => run.on_room(u, item, now_us),
            Message::Matou(incoming) => run.on_matou(u, incoming, now_us),
            Message::Ccm(message) => run.on_ccm(u, &message, now_us),
            Message::Tcrp(answer) => run.on_tcrp(u, &answer, now_us),
        }
    }
    /// A WEB member's frames are read where they are ([`Run::on_web_bytes`]); the others'
    /// bytes are decoded message by message.
    fn on_read(run: &mut Run<'_>, u: usize, n: usize, now_us: u64) -> bool {
        if run.clients[u].kind == Kind::Web {
            run.on_web_bytes(u, n, now_us)
        } else {
            run.decode_read(u, n, now_us)
        }
    }
    fn on_drained(run: &mut Run<'_>, u: usize) {
        // CCM: the server always writes Content-Length; a message cut short of one would wait
        // here forever, so a whole burst is decoded as a last resort (as the CCM scenario).
        let member = &mut run.clients[u];
        if member.kind != Kind::Ccm || member.conn.inbuf.is_empty() {
            return;
        }
        let now_us = run.io.clock.now_us();
        match ccm_codec::decode(&mut member.conn.inbuf, true) {
            Ok(Some(message)) => run.on_ccm(u, &message, now_us),
            Ok(None) => {}
            Err(e) => run.fail(u, ErrorKind::Protocol, format!("framing lost: {e}")),
        }
    }
    /// Its UDP socket closes too; it leaves the lobby. Should the room's creator fail, those
    /// waiting for the room fail with it.
    fn failed(run: &mut Run<'_>, u: usize, _was: Stage) {
        if let Some(mut socket) = run.clients[u].udp.take() {
            let _ = run.io.poll.registry().deregister(&mut socket);
        }
        run.p.ledger.leave(u);
        if Some(u) == run.p.ocm_first && !run.p.ocm_room_ready {
            for v in 0..run.clients.len() {
                if run.clients[v].stage == Stage::Held {
                    let why = "the lobby room could not be created or joined".to_string();
                    run.fail(v, ErrorKind::Connect, why);
                }
            }
        }
    }
    fn on_sent(&mut self, u: usize, _sender: Option<u32>, _queued: &Queued<()>, _lag_us: u64) {
        self.ledger.on_sent(u);
    }
    /// An OCM member's TCP connection ends with its token; its UDP socket is not the engine's.
    fn link(run: &Run<'_>, u: usize) -> Link {
        match run.clients.get(u).map(|m| (m.stage, m.kind)) {
            Some((Stage::Connecting, _)) => Link::Connecting,
            Some((Stage::Greeting, _)) => Link::Greeting,
            Some((Stage::Joined, Kind::Ocm)) => Link::Down,
            Some((Stage::Joined, _)) => Link::Joined,
            _ => Link::Down,
        }
    }
    fn on_other_event(run: &mut Run<'_>, index: usize, readable: bool, _writable: bool) {
        let n = run.clients.len();
        if readable && (n..2 * n).contains(&index) {
            run.receive(index - n);
        }
    }
    fn send_due(run: &mut Run<'_>, now_us: u64) {
        run.send_planned(now_us, |run, u, due, plan| {
            let cfg = run.p.cfg;
            let text = &mut run.p.text_buf[..cfg.message_bytes];
            let key = (run.clients[u].web.as_mut()).map_or([0; 4], |w| w.keys.next_key());
            let member = &run.clients[u];
            let stamp = Stamp {
                run_id: cfg.run_id,
                sender: u as u32,
                seq: member.next_seq,
                intended_us: due.intended_us,
            };
            if wire::FORMAT.write(text, &stamp).is_err() {
                run.sends.not_sent_queue_full += 1; // cannot happen: the arguments are checked
                return None;
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
                Kind::Web => {
                    let mut json = ws::SAY_OPEN.to_vec();
                    json.extend_from_slice(text);
                    json.extend_from_slice(b"\"}");
                    Bytes::from(ws::client_frame(ws::TEXT, &json, key))
                }
                Kind::Ocm => {
                    plan.record_lateness(due, &mut run.own.schedule_lateness);
                    let datagram = ocm_wire::datagram(&cfg.ocm_room, &member.token, text);
                    run.send_datagram(u, datagram, due.intended_us, due.noticed_us);
                    return None;
                }
            };
            Some((message, ()))
        });
    }
    fn on_queued(run: &mut Run<'_>, u: usize) {
        run.clients[u].next_seq += 1;
    }
    fn counts(run: &Run<'_>) -> SentReceived {
        SentReceived {
            sent: run.sends.sent,
            received: run.p.ledger.totals().delivered,
        }
    }
    /// The OCM members but the first wait for the lobby room to exist.
    fn on_connect_due(run: &mut Run<'_>, u: usize) {
        let member = &mut run.clients[u];
        if member.kind == Kind::Ocm && Some(u) != run.p.ocm_first && !run.p.ocm_room_ready {
            member.stage = Stage::Held;
        } else {
            run.connect(u);
        }
    }
    fn start_sending(run: &mut Run<'_>, now_us: u64) -> Result<(), RunError> {
        let cfg = run.p.cfg;
        let senders = run.joined_among(run.clients.len());
        run.fix_plan(senders, &cfg.pace, now_us, "no member joined")?;
        Ok(())
    }
    fn drain_us(&self) -> u64 {
        self.cfg.pace.drain_us
    }
    fn everything_arrived(run: &Run<'_>) -> bool {
        run.p.ledger.complete()
    }
    fn doing(run: &Run<'_>) -> String {
        match run.course.phase {
            Phase::Ramp => format!(
                "ramp-up: {} of {} joined",
                run.count_at(Stage::Joined),
                run.clients.len()
            ),
            Phase::Send | Phase::Drain { .. } => format!(
                "sent {} of {}, delivered {}",
                run.sends.sent,
                run.course.plan.as_ref().map_or(0, |p| p.messages),
                run.p.ledger.totals().delivered
            ),
            Phase::Close { .. } | Phase::Done => String::new(),
        }
    }
}

impl Run<'_> {
    /// Member `u` is in the lobby.
    fn joined(&mut self, u: usize, now_us: u64) {
        let member = &mut self.clients[u];
        member.stage = Stage::Joined;
        member.ever_joined = true;
        self.p
            .connect
            .record(now_us.saturating_sub(self.course.wave.intended_us(u)));
        self.p.ledger.enter(u);
        self.course.wave.settle(u);
    }

    /// Binds OCM member `u`'s UDP socket on the IP its TCRP connection uses (the server binds
    /// the token to that IP) and queues the request naming the socket's address.
    fn open_udp_and_request(&mut self, u: usize) -> io::Result<()> {
        let n = self.clients.len();
        let member = &mut self.clients[u];
        let local = match member.conn.stream.as_ref() {
            Some(stream) => stream.local_addr()?,
            None => return Err(io::Error::other("no TCRP connection")),
        };
        let std_socket = StdUdpSocket::bind(SocketAddr::new(local.ip(), 0))?;
        std_socket.set_nonblocking(true)?;
        udp::set_recv_buffer(std_socket.as_raw_fd(), self.p.cfg.recv_buffer_bytes)?;
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
            &self.p.cfg.ocm_room,
            &member.name,
            udp_addr,
        );
        member.conn.out.extend(&request);
        Ok(())
    }

    fn on_room(&mut self, u: usize, item: RoomItem, now_us: u64) {
        let member = &mut self.clients[u];
        match item {
            RoomItem::Prompt => {
                member.conn.out.extend(member.user.name.as_bytes());
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
        let joined = self.clients[u].stage == Stage::Joined;
        match incoming {
            Incoming::ConnectResponse { accepted: true } if !joined => self.joined(u, now_us),
            Incoming::ConnectResponse { accepted: false } if !joined => {
                let why = "CONNECT_RESPONSE 0: the name was refused".to_string();
                self.fail(u, ErrorKind::Connect, why);
            }
            Incoming::ConnectNotify(_) | Incoming::SignOutNotify(_) => self.p.presence_notices += 1,
            Incoming::Broadcast { username, message } if joined => {
                self.on_delivery(u, SenderName::Exact(&username), &message, now_us);
            }
            other => {
                let name = self.clients[u].name.clone();
                self.errors.count(ErrorKind::Protocol, || {
                    format!("MATOU user {name}: unexpected {other:?}")
                });
            }
        }
    }

    fn on_ccm(&mut self, u: usize, message: &ccm_codec::Message, now_us: u64) {
        let identified = self.clients[u].stage == Stage::Joined;
        match ccm_wire::classify(message, identified) {
            ccm_wire::Incoming::Identity(token) => {
                self.clients[u].token = token;
                self.joined(u, now_us);
            }
            ccm_wire::Incoming::Keepalive => {
                let member = &mut self.clients[u];
                if let Some(reply) =
                    ccm_wire::keepalive_reply(ccm_wire::Role::Active, &member.token)
                {
                    member.conn.out.extend(&reply);
                    self.p.keepalives_answered += 1;
                    self.io.dirty.mark(u);
                }
            }
            ccm_wire::Incoming::Text {
                sender,
                addressee,
                content,
            } => {
                if &addressee[..] != b"*" {
                    let name = self.clients[u].name.clone();
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
                let name = self.clients[u].name.clone();
                self.errors
                    .count(ErrorKind::Protocol, || format!("CCM user {name}: {why}"));
            }
        }
    }

    fn on_tcrp(&mut self, u: usize, answer: &ocm_codec::TcrpAnswer, now_us: u64) {
        let operation = self.clients[u].ocm_operation;
        match ocm_wire::judge_answer(answer, operation, &self.p.cfg.ocm_room) {
            ocm_wire::Answer::Acknowledged => {}
            ocm_wire::Answer::Granted(token) => {
                let member = &mut self.clients[u];
                member.token = token;
                // One request per connection: the server closes it after its answer.
                member.conn.close(self.io.poll.registry());
                self.joined(u, now_us);
                if Some(u) == self.p.ocm_first {
                    self.p.ocm_room_ready = true;
                    self.p.ocm_room_created = operation == ocm_codec::OPERATION_CREATE;
                    for v in 0..self.clients.len() {
                        if self.clients[v].stage == Stage::Held {
                            self.connect(v);
                        }
                    }
                }
            }
            ocm_wire::Answer::Refused(_)
                if Some(u) == self.p.ocm_first
                    && self.p.ocm_first_attempts < OCM_FIRST_ATTEMPTS_MAX =>
            {
                // A create is refused when the room exists (another client's members are in
                // it), a join when it does not: the room may also be closing as this member
                // asks (the last run's creator left just before), so it tries the other.
                self.p.ocm_first_attempts += 1;
                let member = &mut self.clients[u];
                member.conn.close(self.io.poll.registry());
                member.ocm_operation = if operation == ocm_codec::OPERATION_CREATE {
                    ocm_codec::OPERATION_JOIN
                } else {
                    ocm_codec::OPERATION_CREATE
                };
                self.connect(u);
            }
            ocm_wire::Answer::Refused(why) => {
                let what = if operation == ocm_codec::OPERATION_CREATE {
                    "create"
                } else {
                    "join"
                };
                self.fail(
                    u,
                    ErrorKind::Protocol,
                    format!("{what} of the lobby room: {why}"),
                );
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
        let Some(socket) = self.clients[u].udp.as_ref() else {
            self.sends.not_sent_connection_lost += 1;
            return;
        };
        let attempt_us = self.io.clock.now_us();
        match socket.send_to(&datagram, self.p.cfg.ocm_udp_target) {
            Ok(_) => {
                let done_us = self.io.clock.now_us();
                self.clients[u].next_seq += 1;
                self.sends.sent += 1;
                self.p.ledger.on_sent(u);
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
                let name = self.clients[u].name.clone();
                self.errors.count(ErrorKind::Write, || {
                    format!("OCM member {name}: sendto: {e}")
                });
            }
        }
    }

    /// Reads OCM member `u`'s datagrams until its socket is empty.
    fn receive(&mut self, u: usize) {
        let Some(mut batch) = self.p.batch.take() else {
            return;
        };
        while let Some(socket) = self.clients[u].udp.as_ref() {
            let n = match batch.recv(socket.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.fail(u, ErrorKind::Read, format!("recvmmsg: {e}"));
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
        self.p.batch = Some(batch);
    }

    fn on_datagram(&mut self, u: usize, datagram: &[u8], now_us: u64) {
        if self.clients[u].stage != Stage::Joined {
            return;
        }
        match ocm_wire::split_chat(datagram) {
            Some((name, text)) => self.on_delivery(u, SenderName::Exact(name), text, now_us),
            None => {
                // A leave text of someone else's member, or anything not `name: text`.
                self.p.foreign_messages += 1;
            }
        }
    }

    /// WEB member `u` read `io.read_buf[..n]`: the upgrade's answer, then frames. It signs in
    /// once upgraded and is in at its `welcome`; every `lobby` message is a delivery; pings are
    /// answered. False when it failed.
    fn on_web_bytes(&mut self, u: usize, n: usize, now_us: u64) -> bool {
        use ws::Event;
        // Out of the run while the events are handled, which need the run; both go back.
        let (Some(mut web), read_buf) = (
            self.clients[u].web.take(),
            std::mem::take(&mut self.io.read_buf),
        ) else {
            return false;
        };
        let result = web.reader.feed(&read_buf[..n], |event| {
            let stage = self.clients[u].stage;
            if matches!(stage, Stage::Failed | Stage::Closed) {
                return;
            }
            match event {
                Event::Upgraded => {
                    let member = &mut self.clients[u];
                    let signin = ws::signin(&member.name, web.keys.next_key());
                    member.conn.out.extend(&signin);
                }
                Event::Welcome if stage == Stage::Greeting => self.joined(u, now_us),
                Event::Lobby { from, text, .. } if stage == Stage::Joined => {
                    let from = SenderName::Exact(from.as_bytes());
                    self.on_delivery(u, from, text.as_bytes(), now_us);
                }
                Event::Joined | Event::Left => self.p.presence_notices += 1,
                Event::Ping(payload) => {
                    let pong = ws::pong(payload, web.keys.next_key());
                    self.clients[u].conn.out.extend(&pong);
                }
                Event::Pong => {}
                Event::Refused(reason) if stage == Stage::Greeting => {
                    let why = format!("sign-in refused: {reason}");
                    self.fail(u, ErrorKind::Connect, why);
                }
                Event::Closed(code) => {
                    let why = format!("the server closed the WebSocket ({code})");
                    self.lost(u, why);
                }
                other => {
                    let name = &self.clients[u].name;
                    self.errors.count(ErrorKind::Protocol, || {
                        format!("WEB member {name}: unexpected {other:?}")
                    });
                }
            }
        });
        self.io.read_buf = read_buf;
        self.clients[u].web = Some(web);
        if let Err(why) = result {
            self.fail(
                u,
                ErrorKind::Protocol,
                format!("not a WebSocket stream: {why}"),
            );
        }
        matches!(self.clients[u].stage, Stage::Greeting | Stage::Joined)
    }

    /// One lobby text reached member `r`: checked against its sender and the plan, then
    /// accounted for and timed by (origin, destination) pair.
    fn on_delivery(&mut self, r: usize, named: SenderName<'_>, text: &[u8], now_us: u64) {
        let stamp = match wire::FORMAT.read(text, self.p.cfg.run_id) {
            Read::Ours(stamp) => stamp,
            Read::Foreign => {
                self.p.foreign_messages += 1;
                return;
            }
            Read::Malformed(why) => {
                let name = self.clients[r].name.clone();
                self.errors
                    .count(ErrorKind::Protocol, || format!("member {name}: {why}"));
                return;
            }
        };
        let s = stamp.sender as usize;
        let agrees = self.clients.get(s).is_some_and(|sender| {
            let name = sender.name.as_bytes();
            let named_right = match named {
                SenderName::Exact(n) => n == name,
                SenderName::Before(before) => wire::names_sender(before, name),
            };
            named_right && self.p.ledger.expects(r, s) && stamp.intended_us <= now_us
        });
        let Some(plan) = self.course.plan.as_ref().filter(|_| agrees) else {
            let name = self.clients[r].name.clone();
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
        if self.p.ledger.on_delivered(r, s, u64::from(stamp.seq)) == SeqOutcome::Behind {
            return; // a duplicate: counted, timed once
        }
        if !plan.is_warmup(stamp.intended_us) {
            self.p.latency.record(
                self.clients[s].kind,
                self.clients[r].kind,
                now_us.saturating_sub(stamp.intended_us),
            );
        }
        if plan.in_window(now_us) {
            self.p.delivered_in_window += 1;
        }
    }

    /// The OCM members leave (`exit`), the room's creator last so the room closes after its
    /// guests are gone; best effort, as the run is over.
    fn send_exits(&mut self) {
        let mut order: Vec<usize> = (0..self.clients.len())
            .filter(|&u| self.clients[u].kind == Kind::Ocm && self.clients[u].udp.is_some())
            .filter(|&u| self.clients[u].stage == Stage::Joined)
            .collect();
        if let Some(first) = self.p.ocm_first {
            order.retain(|&u| u != first);
            if self.clients[first].stage == Stage::Joined {
                order.push(first);
            }
        }
        for u in order {
            let member = &self.clients[u];
            let datagram =
                ocm_wire::datagram(&self.p.cfg.ocm_room, &member.token, ocm_codec::EXIT_MESSAGE);
            if let (Some(socket), Some(datagram)) = (member.udp.as_ref(), datagram) {
                if socket.send_to(&datagram, self.p.cfg.ocm_udp_target).is_ok() {
                    self.p.ocm_exits_sent += 1;
                }
            }
        }
    }

    pub fn finish(mut self) -> LobbyOutcome {
        let times = self.course.times(self.io.clock.now_us());
        self.send_exits();
        let undelivered = self.p.ledger.undelivered();
        let expected = self.p.ledger.expected();
        let mut requested = [0usize; KIND_COUNT];
        let mut joined = [0usize; KIND_COUNT];
        for u in 0..self.clients.len() {
            let member = &mut self.clients[u];
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
            ran: self.ran(&times),
            latency: self.p.latency,
            connect: self.p.connect,
            own: self.own,
            pairs: self.p.ledger.pairs,
            expected,
            undelivered,
            delivered_in_window: self.p.delivered_in_window,
            foreign_messages: self.p.foreign_messages,
            presence_notices: self.p.presence_notices,
            keepalives_answered: self.p.keepalives_answered,
            ocm_room_created: self.p.ocm_room_created,
            ocm_exits_sent: self.p.ocm_exits_sent,
        }
    }
}
