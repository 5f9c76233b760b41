//! The ROOM scenario: `clients` members join one room, `senders` of them send on the plan, and
//! every member (senders included, as ROOM echoes) checks and times every message.
//!
//! The same fan-out runs against Redis pub/sub ([`Wire::Resp`]): every member SUBSCRIBEs to one
//! channel, and each sender PUBLISHes over a connection of its own (a subscribed RESP2
//! connection cannot publish), which also reads and checks the PUBLISH replies. The payload is
//! the same stamped message, so both servers are measured by the same code; only the handshake
//! and the framing differ.
//!
//! And against chatd's WebSocket lobby ([`Wire::Web`], `loadgen web`, see [`crate::web`]): every
//! member upgrades `/ws`, signs in and receives every lobby message (its own too, as the server
//! echoes a `say`); each sender's text is the ROOM message without its newline, in a masked
//! `say` frame.
//!
//! It runs on the engine ([`engine::Run`]) as the other TCP scenarios: one single-threaded
//! mio loop connects during the ramp-up, sends when the plan says so, and reads. Because
//! sending and receiving share the loop, a loadgen too slow to keep up with its receive load
//! also sends late, and the schedule lateness check marks the run invalid: the loadgen cannot
//! silently become the bottleneck. A member's bytes are scanned for records where they were
//! read ([`engine::Wire::on_read`]), never copied first.

pub mod args;
pub mod report;

use std::io;
use std::net::SocketAddr;

use crate::args::Pace;
use crate::course::Phase;
use crate::driver::{queue_full, RunError, SentReceived};
use crate::engine::{self, ClientOf, Stage};
use crate::plan::{choose_senders, Plan};
use crate::record::{self, NoticeCounts, Record, Scanned, Scanner, ALIAS_PREFIX_LEN};
use crate::registry::{Named, Protocol, Row, ScenarioKind};
use crate::report::Ran;
use crate::resp;
use crate::sockio::{Chunk, Queued};
use crate::stats::{ErrorCounts, ErrorKind, LatencyHistogram, OwnLags, SeqCounts, SeqTracker};
use crate::web;

/// What the server sends first on every connection.
const PROMPT: &[u8] = b"alias?";

/// Which server, and so which handshake and framing, a fan-out run speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Switchboard's ROOM: `alias?`, the alias, the greeting; messages are raw bytes.
    Room,
    /// Redis pub/sub over RESP2 on `channel`.
    Resp { channel: Vec<u8> },
    /// chatd's WebSocket lobby (WEB).
    Web,
}

/// The scenario's settings, validated by the caller.
#[derive(Clone, Debug)]
pub struct RoomConfig {
    pub wire: Wire,
    pub target: SocketAddr,
    pub clients: usize,
    pub senders: usize,
    /// Whole message size on the wire: `lgNNNNNN: ` + record.
    pub message_bytes: usize,
    /// Its rate, phases' lengths, ramp-up pace, seed and progress line.
    pub pace: Pace,
}

/// Everything measured, raw; the report computes the figures.
#[derive(Debug)]
pub struct RoomOutcome {
    pub clients_requested: usize,
    pub clients_joined: usize,
    pub ran: Ran,
    pub connect_latency: LatencyHistogram,
    pub delivery_latency: LatencyHistogram,
    pub own: OwnLags,
    pub seq: SeqCounts,
    /// Messages sent but never delivered to a joined receiver by the end of the drain.
    pub undelivered: u64,
    /// RESP: PUBLISH replies read (each checked against the subscribers there were).
    pub publish_replies: u64,
    /// Deliveries received inside the measured window.
    pub delivered_in_window: u64,
    pub notices: NoticeCounts,
    /// Bytes of unfinished records left in receivers at the end.
    pub incomplete_bytes_at_end: u64,
}

/// Where a member is in ROOM's handshake, while it is at [`Stage::Greeting`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handshake {
    /// `got` bytes of `alias?` received so far (ROOM only).
    AwaitPrompt { got: usize },
    /// The alias (ROOM) or the SUBSCRIBE command (RESP) is queued or out; waiting for `Voce esta
    /// conectado ao servidor!` (ROOM) or the subscribe confirmation.
    AwaitGreeting,
}

pub struct Client {
    handshake: Handshake,
    scanner: Scanner,
    /// RESP only: frames the stream around the payloads the scanner reads.
    resp: Option<resp::Reader>,
    /// WEB only: its frames, masking keys and notices.
    web: Option<web::Conn>,
    /// RESP only: a sender's PUBLISH connection, which receives nothing but replies. It is
    /// never a receiver, and it is `Joined` (ready to send) once connected.
    publisher: bool,
    alias: [u8; 8],
    /// Ever joined: its deliveries count as expected from then on.
    joined: bool,
}

/// What the receivers' records add up to.
struct Tally {
    delivery_latency: LatencyHistogram,
    tracker: SeqTracker,
    delivered_in_window: u64,
}

/// The bytes that frame the run's wire: built once, shared by every connection.
pub(crate) struct Framing {
    /// What a member sends after connecting; `None`: its alias (ROOM).
    pub hello: Option<Vec<u8>>,
    /// Around every message's bytes.
    pub message_prefix: Vec<u8>,
    pub message_suffix: &'static [u8],
    /// WEB: the bytes of the frame's head, whose masking key each message gets (see
    /// [`web::seal_say`]).
    pub masked_head: Option<usize>,
}

impl Framing {
    fn new(wire: &Wire, target: SocketAddr, message_bytes: usize) -> Framing {
        match wire {
            Wire::Room => Framing {
                hello: None,
                message_prefix: Vec::new(),
                message_suffix: b"",
                masked_head: None,
            },
            Wire::Resp { channel } => Framing {
                hello: Some(resp::subscribe_command(channel)),
                message_prefix: resp::publish_prefix(channel, message_bytes),
                message_suffix: resp::PUBLISH_SUFFIX,
                masked_head: None,
            },
            Wire::Web => web::framing(target, message_bytes),
        }
    }
}

/// The run: the engine's, over ROOM's (or RESP's) part. Its clients are the members first;
/// RESP appends one publisher per sender.
pub type Run<'a> = engine::Run<Part<'a>>;

/// ROOM's part of the run.
pub struct Part<'a> {
    cfg: &'a RoomConfig,
    framing: Framing,
    /// Receivers joined and not failed since: what a PUBLISH reply must say.
    live_receivers: u64,
    /// Members that joined.
    joined_count: usize,
    connect_latency: LatencyHistogram,
    tally: Tally,
    /// RESP: PUBLISH replies read so far.
    publish_replies: u64,
    /// Per sender ordinal: its next message's number, and its messages fully written.
    next_seq: Vec<u64>,
    sent: Vec<u64>,
}

/// The fan-out scenario as the registry lists it, over ROOM's wire (or RESP's) or WEB's.
pub struct Fanout<const WEB: bool>;
/// The ROOM scenario (and RESP, which is ROOM's over Redis's wire); WEB's is `web::Web`.
pub type Room = Fanout<false>;

impl<const WEB: bool> ScenarioKind for Fanout<WEB> {
    const ROW: Row = if WEB {
        Protocol::Web.row()
    } else {
        Protocol::Room.row()
    };
    const UNREACHABLE_IN_MIX: &'static str = if WEB {
        "no client could join the WEB server"
    } else {
        "no client could join the ROOM server"
    };
    type Config = RoomConfig;
    type Run<'a> = Run<'a>;
    type Outcome = RoomOutcome;
    type Report = report::Report;

    fn start(cfg: &RoomConfig) -> Result<Run<'_>, RunError> {
        let publishers = match cfg.wire {
            Wire::Room | Wire::Web => 0,
            Wire::Resp { .. } => cfg.senders,
        };
        let clients = (0..cfg.clients + publishers).map(|i| {
            let mut alias = [0u8; 8];
            record::write_alias(&mut alias, i as u32);
            Client {
                handshake: Handshake::AwaitPrompt { got: 0 },
                scanner: Scanner::new(),
                resp: match &cfg.wire {
                    Wire::Room | Wire::Web => None,
                    Wire::Resp { channel } => Some(resp::Reader::new(channel)),
                },
                web: (cfg.wire == Wire::Web).then(|| web::Conn::new(i as u32)),
                publisher: i >= cfg.clients,
                alias,
                joined: false,
            }
        });
        let part = Part {
            cfg,
            framing: Framing::new(&cfg.wire, cfg.target, cfg.message_bytes),
            live_receivers: 0,
            joined_count: 0,
            connect_latency: LatencyHistogram::new(),
            tally: Tally {
                delivery_latency: LatencyHistogram::new(),
                tracker: SeqTracker::new(0, 0),
                delivered_in_window: 0,
            },
            publish_replies: 0,
            next_seq: Vec::new(),
            sent: Vec::new(),
        };
        engine::Run::paced(part, clients, |n| (0..n).collect(), &cfg.pace)
    }
    fn finish(run: Run<'_>) -> RoomOutcome {
        run.finish()
    }
    fn report(cfg: &RoomConfig, _seed: u64, strict: bool, outcome: &RoomOutcome) -> report::Report {
        report::Report::new(cfg, cfg.senders, strict, outcome)
    }
    /// The latencies the report measures the server by (written and plotted), then the
    /// loadgen's own lags (written, not plotted).
    fn histograms(outcome: &RoomOutcome) -> (Named<'_>, Named<'_>) {
        (
            vec![
                ("delivery", &outcome.delivery_latency),
                ("connect", &outcome.connect_latency),
            ],
            outcome.own.named().to_vec(),
        )
    }
    fn progress(cfg: &RoomConfig) -> bool {
        cfg.pace.progress
    }
    fn unreachable(cfg: &RoomConfig) -> String {
        format!(
            "no client could join a {} server at {}",
            match cfg.wire {
                Wire::Room => "ROOM",
                Wire::Resp { .. } => "Redis (RESP)",
                Wire::Web => "WEB",
            },
            cfg.target
        )
    }
    fn file_name(cfg: &RoomConfig) -> &'static str {
        match cfg.wire {
            Wire::Room => "room",
            Wire::Resp { .. } => "resp",
            Wire::Web => "web",
        }
    }
}

impl engine::Wire for Part<'_> {
    type User = Client;
    type Tag = ();
    type Message = ();
    const WAVE_TIMEOUT: &'static str = "ramp-up timed out before the client joined";

    fn target(&self, _c: &ClientOf<Self>) -> SocketAddr {
        self.cfg.target
    }
    fn who(&self, u: usize, _c: &ClientOf<Self>) -> String {
        format!("{} client {u}", self.cfg.target)
    }
    /// ROOM: the server speaks first (`alias?`). RESP: Redis speaks only when spoken to, so a
    /// member subscribes at once; a publisher is ready to send.
    fn greet(run: &mut Run<'_>, u: usize) -> io::Result<()> {
        let client = &mut run.clients[u];
        match (&run.p.framing.hello, client.publisher) {
            (None, _) => client.handshake = Handshake::AwaitPrompt { got: 0 },
            (Some(hello), false) => {
                client.conn.out.extend(hello);
                client.handshake = Handshake::AwaitGreeting;
            }
            (Some(_), true) => {
                client.stage = Stage::Joined;
                run.course.wave.settle(u);
            }
        }
        Ok(())
    }
    fn decode(_run: &mut Run<'_>, _u: usize) -> Result<Option<()>, String> {
        Ok(None) // never called: `on_read` scans the bytes where they are
    }
    fn on_message(_run: &mut Run<'_>, _u: usize, _message: (), _now_us: u64) {}
    fn on_read(run: &mut Run<'_>, u: usize, n: usize, now_us: u64) -> bool {
        run.on_bytes(u, n, now_us)
    }
    fn on_server_close(run: &mut Run<'_>, u: usize, ended: Chunk) {
        let (kind, when) = if run.clients[u].stage == Stage::Joined {
            (ErrorKind::Read, "after joining")
        } else {
            (ErrorKind::Connect, "during the handshake")
        };
        run.close_failed(u, kind, || match ended {
            Chunk::Failed(e) => format!("read: {e}"),
            _ => format!("server closed the connection {when}"),
        });
    }
    /// A write that fails before the client joined was its alias (or its SUBSCRIBE, or its
    /// upgrade and sign-in).
    fn fail(run: &mut Run<'_>, u: usize, kind: ErrorKind, why: String) {
        if kind == ErrorKind::Write && run.clients[u].stage == Stage::Greeting {
            let what = match run.p.cfg.wire {
                Wire::Web => "the upgrade or the sign-in",
                _ => "the alias",
            };
            run.close_failed(u, ErrorKind::Connect, || format!("sending {what}: {why}"));
        } else {
            run.close_failed(u, kind, || why);
        }
    }
    fn failed(run: &mut Run<'_>, u: usize, was: Stage) {
        if was == Stage::Joined && !run.clients[u].publisher {
            run.p.live_receivers = run.p.live_receivers.saturating_sub(1);
        }
    }
    fn on_sent(&mut self, _u: usize, sender: Option<u32>, _queued: &Queued<()>, _lag_us: u64) {
        if let Some(sent) = sender.and_then(|ordinal| self.sent.get_mut(ordinal as usize)) {
            *sent += 1;
        }
    }
    /// Queues every planned message that is due, framed in place in its sender's buffer.
    fn send_due(run: &mut Run<'_>, now_us: u64) {
        let Some(plan) = run.course.plan.as_ref() else {
            return;
        };
        let (cfg, framing) = (run.p.cfg, &run.p.framing);
        let framed_bytes =
            framing.message_prefix.len() + cfg.message_bytes + framing.message_suffix.len();
        while let Some(due) = plan.take_due(&mut run.course.next_g, now_us) {
            let ordinal = plan.sender_of(due.g) as usize;
            let client = &mut run.clients[run.senders[ordinal]];
            if client.stage != Stage::Joined {
                run.sends.not_sent_connection_lost += 1;
                continue;
            }
            let conn = &mut client.conn;
            if queue_full(conn.queue.len(), conn.out.pending(), framed_bytes) {
                run.sends.not_sent_queue_full += 1;
                continue;
            }
            let framed = conn.out.append(framed_bytes);
            let (prefix, rest) = framed.split_at_mut(framing.message_prefix.len());
            prefix.copy_from_slice(&framing.message_prefix);
            let (message, suffix) = rest.split_at_mut(cfg.message_bytes);
            suffix.copy_from_slice(framing.message_suffix);
            message[..8].copy_from_slice(&client.user.alias);
            message[8..ALIAS_PREFIX_LEN].copy_from_slice(b": ");
            let stamp = Record {
                sender: ordinal as u32,
                seq: run.p.next_seq[ordinal],
                intended_us: due.intended_us,
                len: cfg.message_bytes - ALIAS_PREFIX_LEN,
            };
            if record::encode_into(&mut message[ALIAS_PREFIX_LEN..], &stamp).is_err() {
                // The argument limits keep every field in range; should that ever break, the
                // message is counted as not sent rather than written wrong.
                conn.out.unappend(framed_bytes);
                run.sends.not_sent_queue_full += 1;
                continue;
            }
            if let (Some(head), Some(web)) = (framing.masked_head, client.user.web.as_mut()) {
                web::seal_say(framed, head, cfg.message_bytes, &mut web.keys);
            }
            run.p.next_seq[ordinal] += 1;
            conn.queue.push_back(Queued::new(&conn.out, &due, ()));
            plan.record_lateness(&due, &mut run.own.schedule_lateness);
            run.io.dirty.mark(run.senders[ordinal]);
        }
    }
    fn counts(run: &Run<'_>) -> SentReceived {
        SentReceived {
            sent: run.sends.sent,
            received: run.p.tally.tracker.counts.delivered,
        }
    }
    /// Every member that joined is a candidate; the chosen ones send (RESP: through their
    /// publishers, under their aliases so the bytes are the same as ROOM's).
    fn start_sending(run: &mut Run<'_>, now_us: u64) -> Result<(), RunError> {
        let cfg = run.p.cfg;
        let joined = run.joined_among(cfg.clients);
        if joined.is_empty() {
            return Err(run.errors.unreachable("no client joined"));
        }
        let chosen = choose_senders(&joined, cfg.senders, cfg.pace.seed);
        let senders: Vec<usize> = (chosen.iter().enumerate())
            .map(|(ordinal, &member)| {
                let client = match cfg.wire {
                    Wire::Room | Wire::Web => member,
                    Wire::Resp { .. } => cfg.clients + ordinal,
                };
                run.clients[client].alias = run.clients[member].alias;
                client
            })
            .collect();
        let count = senders.len();
        (run.p.next_seq, run.p.sent) = (vec![0; count], vec![0; count]);
        run.p.tally.tracker = SeqTracker::new(cfg.clients, count);
        run.plan_over(senders, &cfg.pace, now_us);
        Ok(())
    }
    fn drain_us(&self) -> u64 {
        self.cfg.pace.drain_us
    }
    /// Every joined receiver has every message that was sent (RESP: and every PUBLISH has
    /// its reply).
    fn everything_arrived(run: &Run<'_>) -> bool {
        let p = &run.p;
        // Cheap necessary condition first: enough records advanced their streams.
        let reached = p.tally.tracker.counts.delivered + p.tally.tracker.counts.gap_losses;
        if matches!(p.cfg.wire, Wire::Resp { .. }) && p.publish_replies < run.sends.sent {
            return false;
        }
        let clients = &run.clients;
        let live = (clients.iter())
            .filter(|c| c.stage == Stage::Joined && !c.publisher)
            .count() as u64;
        if reached < run.sends.sent * live {
            return false;
        }
        (p.tally.tracker).all_reached(|r| clients[r].stage == Stage::Joined, &p.sent)
    }
    fn doing(run: &Run<'_>) -> String {
        let phase = run.course.phase;
        match phase {
            Phase::Ramp => format!(
                "ramp-up: {} of {} joined",
                run.p.joined_count, run.p.cfg.clients
            ),
            Phase::Send | Phase::Drain { .. } => format!(
                "{}: sent {} of {}, delivered {}",
                if phase == Phase::Send {
                    "sending"
                } else {
                    "draining"
                },
                run.sends.sent,
                run.course.plan.as_ref().map_or(0, |p| p.messages),
                run.p.tally.tracker.counts.delivered
            ),
            Phase::Close { .. } | Phase::Done => String::new(),
        }
    }
}

/// What a read needs of the run at once, borrowed apart: its client, the loop's read buffer,
/// where the records it completes go, and (RESP) the reply count and the target its errors name.
struct Reading<'r, 'a> {
    client: &'r mut ClientOf<Part<'a>>,
    read_buf: &'r [u8],
    records: Records<'r>,
    publish_replies: &'r mut u64,
    target: SocketAddr,
}

/// Where the records found in receiver `receiver`'s stream are accounted for ([`on_scanned`]).
struct Records<'r> {
    errors: &'r mut ErrorCounts,
    tally: &'r mut Tally,
    plan: Option<&'r Plan>,
    receiver: usize,
    now_us: u64,
}

impl Records<'_> {
    /// Feeds `bytes` to `scanner`, accounting for every record it completes.
    #[inline]
    fn scan(&mut self, scanner: &mut Scanner, bytes: &[u8]) {
        let Records {
            errors,
            tally,
            plan,
            receiver,
            now_us,
        } = self;
        scanner.feed(bytes, |found| {
            on_scanned(errors, tally, *plan, *receiver, *now_us, found);
        });
    }
}

impl<'a> Run<'a> {
    /// Client `u`'s read at `now_us`, borrowed apart from the rest of the run.
    fn reading(&mut self, u: usize, now_us: u64) -> Reading<'_, 'a> {
        let engine::Run {
            clients,
            errors,
            course,
            io,
            p,
            ..
        } = self;
        Reading {
            client: &mut clients[u],
            read_buf: &io.read_buf,
            records: Records {
                errors,
                tally: &mut p.tally,
                plan: course.plan.as_ref(),
                receiver: u,
                now_us,
            },
            publish_replies: &mut p.publish_replies,
            target: p.cfg.target,
        }
    }

    /// Handles `self.io.read_buf[..n]` for client `u`; false when the client failed.
    fn on_bytes(&mut self, u: usize, n: usize, now_us: u64) -> bool {
        if self.clients[u].resp.is_some() {
            return self.on_resp_bytes(u, n, now_us);
        }
        if self.clients[u].web.is_some() {
            return self.on_web_bytes(u, n, now_us);
        }
        let mut from = 0;
        if let Handshake::AwaitPrompt { mut got } = self.clients[u].handshake {
            while got < PROMPT.len() && from < n {
                if self.io.read_buf[from] != PROMPT[got] {
                    let seen = String::from_utf8_lossy(&self.io.read_buf[..n]).into_owned();
                    self.close_failed(u, ErrorKind::Connect, || {
                        format!("expected `alias?` from the server, got {seen:?}")
                    });
                    return false;
                }
                got += 1;
                from += 1;
            }
            if got < PROMPT.len() {
                self.clients[u].handshake = Handshake::AwaitPrompt { got };
                return true;
            }
            if from < n {
                let extra = String::from_utf8_lossy(&self.io.read_buf[from..n]).into_owned();
                self.close_failed(u, ErrorKind::Connect, || {
                    format!("the server sent {extra:?} after `alias?`, before the alias")
                });
                return false;
            }
            // The alias goes out with this read's flush.
            let client = &mut self.clients[u];
            let alias = client.user.alias;
            client.conn.out.extend(&alias);
            client.handshake = Handshake::AwaitGreeting;
            return true;
        }
        let Reading {
            client,
            read_buf,
            mut records,
            ..
        } = self.reading(u, now_us);
        records.scan(&mut client.user.scanner, &read_buf[from..n]);
        if client.stage == Stage::Greeting && client.scanner.notices().greetings > 0 {
            self.mark_joined(u, now_us);
        }
        true
    }

    /// The server confirmed member `u`'s join: it receives from now on.
    fn mark_joined(&mut self, u: usize, now_us: u64) {
        let client = &mut self.clients[u];
        client.stage = Stage::Joined;
        client.joined = true;
        self.p.joined_count += 1;
        self.p.live_receivers += 1;
        let intended_us = self.course.wave.intended_us(u);
        (self.p.connect_latency).record(now_us.saturating_sub(intended_us));
        self.course.wave.settle(u);
    }

    /// RESP: frames `self.io.read_buf[..n]` for client `u`, hands payloads to its scanner and
    /// checks the replies; false when the client failed.
    fn on_resp_bytes(&mut self, u: usize, n: usize, now_us: u64) -> bool {
        // Only receivers change it, and a publisher's bytes are not a receiver's.
        let live = self.p.live_receivers;
        let mut confirmed = false;
        let Reading {
            client,
            read_buf,
            mut records,
            publish_replies,
            target,
        } = self.reading(u, now_us);
        let stage = client.stage;
        let Client {
            resp,
            scanner,
            publisher,
            ..
        } = &mut client.user;
        let Some(reader) = resp.as_mut() else {
            return true;
        };
        let publisher = *publisher;
        let result = reader.feed(&read_buf[..n], |event| match event {
            resp::Event::Payload(bytes) if !publisher && (stage == Stage::Joined || confirmed) => {
                records.scan(scanner, bytes);
            }
            resp::Event::MessageEnd if !publisher && (stage == Stage::Joined || confirmed) => {}
            resp::Event::Subscribed(_) if !publisher && stage == Stage::Greeting && !confirmed => {
                // At once, so the payloads behind it in this read are taken.
                confirmed = true;
            }
            resp::Event::Integer(subscribers) if publisher => {
                *publish_replies += 1;
                if u64::try_from(subscribers) != Ok(live) {
                    records.errors.count(ErrorKind::Protocol, || {
                        format!(
                            "{target} client {u}: PUBLISH reached {subscribers} \
                             subscribers, {live} were subscribed"
                        )
                    });
                }
            }
            other => {
                let phase = match (stage, confirmed) {
                    (Stage::Greeting, false) => "AwaitGreeting",
                    (Stage::Joined, _) | (_, true) => "Joined",
                    _ => "Failed",
                };
                records.errors.count(ErrorKind::Protocol, || {
                    format!("{target} client {u}: unexpected {other:?} ({phase})")
                });
            }
        });
        if confirmed {
            self.mark_joined(u, now_us);
        }
        if let Err(why) = result {
            self.close_failed(u, ErrorKind::Protocol, || {
                format!("not a RESP pub/sub stream: {why:?}")
            });
            return false;
        }
        true
    }

    /// WEB: reads `self.io.read_buf[..n]` of client `u` as the upgrade's answer and then
    /// WebSocket frames: signs in once upgraded, hands every WEB record's lobby text to its
    /// scanner (see [`web::scan_text`]; other protocols' lobby messages are not this run's),
    /// answers pings; false when the client failed.
    fn on_web_bytes(&mut self, u: usize, n: usize, now_us: u64) -> bool {
        use web::ws::{self, Event};
        let Reading {
            client,
            read_buf,
            mut records,
            target,
            ..
        } = self.reading(u, now_us);
        let stage = client.stage;
        let (conn, user) = (&mut client.conn, &mut client.user);
        let Client {
            web,
            scanner,
            alias,
            ..
        } = user;
        let Some(web::Conn {
            reader,
            keys,
            notices,
        }) = web.as_mut()
        else {
            return true;
        };
        let (mut confirmed, mut ended) = (false, None);
        let joined = |confirmed: bool| stage == Stage::Joined || confirmed;
        let result = reader.feed(&read_buf[..n], |event| match event {
            Event::Upgraded => conn
                .out
                .extend(&ws::signin(&web::name(alias), keys.next_key())),
            Event::Welcome if stage == Stage::Greeting && !confirmed => {
                confirmed = true;
                notices.greetings += 1;
            }
            Event::Lobby { text, .. } if joined(confirmed) => {
                web::scan_text(text.as_bytes(), |piece| records.scan(scanner, piece));
            }
            Event::Joined => notices.joins += 1,
            Event::Left => notices.leaves += 1,
            Event::Ping(payload) => conn.out.extend(&ws::pong(payload, keys.next_key())),
            Event::Pong => {}
            Event::Refused(reason) if stage == Stage::Greeting => {
                ended = Some((ErrorKind::Connect, format!("sign-in refused: {reason}")));
            }
            Event::Closed(code) => {
                let kind = if joined(confirmed) {
                    ErrorKind::Read
                } else {
                    ErrorKind::Connect
                };
                ended = Some((kind, format!("the server closed the WebSocket ({code})")));
            }
            Event::Error(reason) => records.errors.count(ErrorKind::Protocol, || {
                format!("{target} client {u}: the server answered error {reason:?}")
            }),
            other => records.errors.count(ErrorKind::Protocol, || {
                format!("{target} client {u}: unexpected {other:?}")
            }),
        });
        if let Err(why) = result {
            ended = Some((
                ErrorKind::Protocol,
                format!("not a WebSocket stream: {why}"),
            ));
        }
        if let Some((kind, why)) = ended {
            self.close_failed(u, kind, || why);
            return false;
        }
        if confirmed {
            self.mark_joined(u, now_us);
        }
        true
    }

    /// Closes everything and hands the measurements over.
    pub fn finish(mut self) -> RoomOutcome {
        let times = self.course.times(self.io.clock.now_us());
        self.close_all();
        let p = &self.p;
        let clients = &self.clients;
        let undelivered = p.tally.tracker.undelivered(|r| clients[r].joined, &p.sent);
        if matches!(p.cfg.wire, Wire::Resp { .. }) && p.publish_replies < self.sends.sent {
            let missing = self.sends.sent - p.publish_replies;
            let target = p.cfg.target;
            self.errors.count(ErrorKind::Protocol, || {
                format!("{target}: {missing} PUBLISH replies had not come by the end of the drain")
            });
        }
        let mut notices = NoticeCounts::default();
        let mut incomplete_bytes_at_end = 0;
        for client in &self.clients {
            notices.add(&client.scanner.notices());
            if let Some(web) = &client.web {
                notices.add(&web.notices);
            }
            incomplete_bytes_at_end += client.scanner.pending_bytes() as u64;
        }
        RoomOutcome {
            clients_requested: self.p.cfg.clients,
            clients_joined: self.clients.iter().filter(|c| c.joined).count(),
            ran: self.ran(&times),
            connect_latency: self.p.connect_latency,
            delivery_latency: self.p.tally.delivery_latency,
            own: self.own,
            seq: self.p.tally.tracker.counts,
            undelivered,
            publish_replies: self.p.publish_replies,
            delivered_in_window: self.p.tally.delivered_in_window,
            notices,
            incomplete_bytes_at_end,
        }
    }
}

/// Accounts for one record (or malformed record) found in receiver `receiver`'s stream.
#[inline]
fn on_scanned(
    errors: &mut ErrorCounts,
    m: &mut Tally,
    plan: Option<&Plan>,
    receiver: usize,
    now_us: u64,
    found: Scanned,
) {
    let record = match found {
        Scanned::Record(record) => record,
        Scanned::Malformed(why) => {
            errors.count(ErrorKind::Protocol, || {
                format!("client {receiver}: malformed record ({why:?})")
            });
            return;
        }
    };
    let Some(plan) = plan else {
        errors.count(ErrorKind::Protocol, || {
            format!("client {receiver}: a record arrived before any was sent")
        });
        return;
    };
    let sender = record.sender as usize;
    if sender >= m.tracker.senders() || record.intended_us > now_us {
        // A sender that does not exist, or a message from the future: corrupt bytes.
        errors.count(ErrorKind::Protocol, || {
            format!("client {receiver}: impossible record {record:?} at {now_us} µs")
        });
        return;
    }
    if m.tracker.observe(receiver, sender, record.seq) == crate::stats::SeqOutcome::Behind {
        return; // counted as duplicate/reorder; its latency would be measured twice
    }
    if !plan.is_warmup(record.intended_us) {
        m.delivery_latency
            .record(now_us.saturating_sub(record.intended_us));
    }
    if (plan.measure_start_us()..plan.measure_end_us()).contains(&now_us) {
        m.delivered_in_window += 1;
    }
}

/// ROOM's sign-in for `loadgen churn`: wait for `alias?`, send an alias, wait for the greeting.
pub mod churn {
    use crate::churn::{check_prefix, find, SignIn, Stage, Step};

    pub static SIGN_IN: SignIn = SignIn {
        hello: |_| (Vec::new(), Stage::Prompt),
        answer,
        frame: |_| b"a message cut short".to_vec(),
    };

    fn answer(name: &str, stage: Stage, input: &[u8]) -> Step {
        match stage {
            Stage::Prompt => check_prefix(input, b"alias?").step(|| Step::Reply {
                read: input.len(),
                out: name.as_bytes().to_vec(),
                then: Stage::Answer,
            }),
            // The join notice comes first and may be preceded by others' notices: only the
            // greeting, which goes to the newcomer alone, proves the join.
            Stage::Answer if find(input, b"Voce esta conectado ao servidor!").is_none() => {
                Step::Wait
            }
            Stage::Answer => Step::SignedIn,
            _ => Step::Stray,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::sync::{Arc, Mutex};
    use std::thread;

    /// The scenario run to its end, as `loadgen room` runs it.
    fn run(cfg: &RoomConfig) -> Result<RoomOutcome, RunError> {
        crate::registry::run_alone::<Room>(cfg)
    }

    /// A minimal ROOM relay on an ephemeral loopback port, one thread per connection: the
    /// handshake, join notices, and every chunk relayed to every member. `drop_every` drops
    /// every n-th relayed chunk towards member 0 (0: drop nothing). Its threads end when the
    /// test process does.
    fn spawn_relay(drop_every: u64) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let members: Arc<Mutex<Vec<StdStream>>> = Arc::default();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let members = Arc::clone(&members);
                thread::spawn(move || {
                    let _ = conn.set_nodelay(true);
                    let _ = conn.write_all(PROMPT);
                    let mut buf = vec![0u8; 16 * 1024];
                    let Ok(n @ 1..) = conn.read(&mut buf) else {
                        return;
                    };
                    let alias = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
                    {
                        let mut members = members.lock().unwrap();
                        members.push(conn.try_clone().unwrap());
                        let notice = format!("b'{alias}' esta conectado ao chat");
                        for member in members.iter_mut() {
                            let _ = member.write_all(notice.as_bytes());
                        }
                        let _ = conn.write_all(b"Voce esta conectado ao servidor!");
                    }
                    let mut relayed = 0u64;
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        relayed += 1;
                        let mut members = members.lock().unwrap();
                        for (i, member) in members.iter_mut().enumerate() {
                            if i == 0 && drop_every > 0 && relayed.is_multiple_of(drop_every) {
                                continue;
                            }
                            let _ = member.write_all(&buf[..n]);
                        }
                    }
                });
            }
        });
        addr
    }

    fn config(target: SocketAddr) -> RoomConfig {
        RoomConfig {
            wire: Wire::Room,
            target,
            clients: 8,
            senders: 2,
            message_bytes: 100,
            pace: Pace {
                rate_per_s: 400,
                duration_us: 500_000,
                warmup_us: 100_000,
                drain_us: 2_000_000,
                connect_rate_per_s: 1_000,
                seed: 7,
                progress: false,
            },
        }
    }

    /// What a run of `config()` against a server that loses nothing must show.
    fn assert_everything_delivered(run: &RoomOutcome) {
        assert_eq!(run.clients_requested, 8);
        assert_eq!(run.clients_joined, 8);
        assert_eq!(run.ran.plan.messages, 240, "(0.1 s + 0.5 s) at 400 msg/s");
        assert_eq!(run.ran.sends.sent, 240);
        assert_eq!(
            run.seq.delivered,
            240 * 8,
            "every member gets every message"
        );
        assert_eq!(run.seq.gap_losses + run.undelivered, 0);
        assert_eq!(run.seq.duplicates_or_reorders, 0);
        assert_eq!(run.ran.errors.total(), 0, "{:?}", run.ran.errors.first);
        assert_eq!(
            run.ran.sends.not_sent_queue_full + run.ran.sends.not_sent_at_end,
            0
        );
        assert!(!run.ran.drain_timed_out);
        // Warmup messages are checked but not timed: 200 measured messages, 8 receivers.
        assert_eq!(run.delivery_latency.len(), 200 * 8);
        assert_eq!(run.connect_latency.len(), 8, "members only");
    }

    #[test]
    fn a_clean_relay_delivers_everything_to_everyone() {
        let cfg = config(spawn_relay(0));
        let run = run(&cfg).unwrap();
        assert_everything_delivered(&run);
        assert_eq!(run.notices.greetings, 8);
        assert_eq!(run.notices.joins, (1..=8).sum::<u64>());
    }

    #[test]
    fn a_lossy_relay_is_caught() {
        let mut cfg = config(spawn_relay(25));
        cfg.pace.drain_us = 300_000;
        let run = run(&cfg).unwrap();
        assert_eq!(run.clients_joined, 8);
        let lost = run.seq.gap_losses + run.undelivered;
        assert!(lost > 0, "member 0 missed chunks: {:?}", run.seq);
        assert_eq!(run.seq.delivered + lost, run.ran.sends.sent * 8);
    }

    /// A redis-server on a free loopback port, without persistence; killed on drop.
    struct Redis {
        child: std::process::Child,
        port: u16,
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts redis-server, or None (with a message) when it is not installed; under `CI=true`
    /// a missing redis-server fails the test instead.
    fn start_redis() -> Option<Redis> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let on_path = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("redis-server").is_file())
        });
        if !on_path {
            // Under CI=true a skip would pass silently and hide that the run was never made.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and redis-server is not on PATH: this test cannot do its job \
                 (apt-get install redis-server)"
            );
            eprintln!(
                "SKIPPED: redis-server is not on PATH (apt-get install redis-server; under \
                 CI=true this fails)"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let redis = Redis { child, port };
        // Redis logs this line once it listens; its stdout ending first means it failed.
        let ready = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("Ready to accept connections"));
        assert!(
            ready,
            "redis-server on port {port} exited before it was ready"
        );
        Some(redis)
    }

    fn resp_config(port: u16) -> RoomConfig {
        let mut cfg = config(SocketAddr::from(([127, 0, 0, 1], port)));
        cfg.wire = Wire::Resp {
            channel: b"lg-test".to_vec(),
        };
        cfg
    }

    #[test]
    fn resp_against_a_real_redis_delivers_everything_to_everyone() {
        let Some(redis) = start_redis() else {
            return;
        };
        let run = run(&resp_config(redis.port)).unwrap();
        assert_everything_delivered(&run);
        assert_eq!(run.publish_replies, 240, "every PUBLISH answered");
        assert_eq!(run.incomplete_bytes_at_end, 0);
    }

    #[test]
    fn resp_publish_replies_are_checked() {
        let Some(redis) = start_redis() else {
            return;
        };
        // Another subscriber on the channel: every PUBLISH reaches one more than the run's.
        let mut intruder = StdStream::connect(("127.0.0.1", redis.port)).unwrap();
        intruder
            .write_all(&resp::subscribe_command(b"lg-test"))
            .unwrap();
        let mut confirmation = [0u8; 64];
        let mut reader = resp::Reader::new(b"lg-test");
        let mut subscribed = false;
        while !subscribed {
            let n = intruder.read(&mut confirmation).unwrap();
            assert!(n > 0, "redis closed the connection");
            reader
                .feed(&confirmation[..n], |event| {
                    subscribed |= matches!(event, resp::Event::Subscribed(1));
                })
                .unwrap();
        }
        let run = run(&resp_config(redis.port)).unwrap();
        assert_eq!(run.publish_replies, 240);
        assert_eq!(run.ran.errors.protocol, 240, "{:?}", run.ran.errors.first);
        assert_eq!(run.seq.delivered, 240 * 8);
    }

    #[test]
    fn a_server_that_does_not_speak_pub_sub_is_named() {
        // Answers every SUBSCRIBE with a simple string, as a RESP server without pub/sub would.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while let Ok(1..) = conn.read(&mut buf) {
                        let _ = conn.write_all(b"+OK\r\n");
                    }
                });
            }
        });
        let mut cfg = config(addr);
        cfg.wire = Wire::Resp {
            channel: b"lg-test".to_vec(),
        };
        match run(&cfg) {
            Err(RunError::Unreachable(why)) => {
                assert!(why.contains("UnexpectedType(43)"), "{why}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    #[test]
    fn no_server_is_unreachable() {
        // Bind then drop a listener: its port is very likely free for the next few ms.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut cfg = config(addr);
        cfg.clients = 2;
        cfg.senders = 1;
        assert!(matches!(run(&cfg), Err(RunError::Unreachable(_))));
    }
}
