//! The BIN24 scenario: users send direct messages to a partner (pairs or a ring) on the plan;
//! recipients answer "200" at once; a share of the recipients stays offline, so messages to
//! them are stored by the server (answered "300") and delivered as type 2 when the loadgen
//! connects those users at the end. Every message is accounted for by the [`Ledger`].
//!
//! Phases, all bounded in time:
//! 1. Ramp-up: the online users connect at `--connect-rate`. A connection's first frame makes
//!    its user exist on the server; the loadgen sends a "hello" message to itself (type 0,
//!    messageID 0, SRC = DST = the user) and counts the user joined when that hello comes
//!    back forwarded: the server has registered the name, so messages to it will not be stored
//!    by mistake. The hello is answered like any message.
//! 2. Send: every online user that joined is a sender; the plan (shared with ROOM) spreads
//!    `--rate` over them, each message with its intended time. messageIDs: 0 is the hello,
//!    message `seq` of a sender's plan is `seq + 1`.
//! 3. Drain: until every written message has an answer ("200", "300" or "507"), or `--drain`.
//! 4. Reconnect: the offline users, and any user with messages answered "300" and not yet
//!    delivered (one whose connection was lost, or one the server stored for because it did
//!    not answer in time), connect (the others' connections are closed first); their stored
//!    messages arrive as type 2. Ends when every "300" message has been delivered, or
//!    `--drain` after the last of these users joined.
//!
//! It runs on the engine ([`crate::engine::Run`]), as the other TCP scenarios: one mio poll,
//! sockets registered READABLE|WRITABLE once, readiness kept in userland, the pacer's timerfd
//! waking it on the plan's microsecond.

pub mod args;
pub mod churn;
pub mod ledger;
pub mod report;
mod stamp;
pub mod topology;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;

use switchboard::protocol::bin24::codec::{
    self, Frame, Name, ANSWER_DELIVERED, ANSWER_STORED, ANSWER_STORE_FULL, TYPE_ANSWER,
    TYPE_MESSAGE, TYPE_OFFLINE,
};

use crate::args::Pace;
use crate::course::Phase;
use crate::driver::{RunError, SentReceived};
use crate::engine::{self, ClientOf, Stage, Wire};
use crate::registry::{Named, Protocol, Row, ScenarioKind};
use crate::report::Ran;
use crate::sockio::Queued;
use crate::stats::{ErrorKind, LatencyHistogram, OwnLags};
pub use ledger::Tally;
use ledger::{Answer, Ledger, Via};
use stamp::Stamp;
pub use stamp::STAMP_BYTES;
use topology::{user_name, Pattern};

/// The messageID of the hello each connection sends to itself first.
const HELLO_ID: u32 = 0;
const HELLO_BODY: &[u8] = b"hello";
/// Connections per user in the reconnect phase: a user the server closes while stored messages
/// for it are still missing connects again, at most this many times in all.
const RECONNECT_ATTEMPTS_MAX: u32 = 3;
const RECONNECT_RETRY_DELAY_US: u64 = 10_000;

/// The scenario's settings, validated by the caller.
#[derive(Clone, Debug)]
pub struct Bin24Config {
    pub target: SocketAddr,
    pub users: usize,
    pub pattern: Pattern,
    /// Which users stay offline until the reconnect phase (`offline[i]`).
    pub offline: Vec<bool>,
    /// Bytes of each message's body (after the 24-byte header), the stamp included.
    pub body_bytes: usize,
    /// Written into every stamp; stored frames of an earlier run carry another.
    pub run_id: u32,
    /// Its rate, phases' lengths, ramp-up pace, seed and progress line.
    pub pace: Pace,
}

/// The latencies, in µs. Ack and delivery latencies are measured from the intended send time.
#[derive(Debug, Default)]
pub struct Latencies {
    /// "200" received by the sender.
    pub ack_delivered: LatencyHistogram,
    /// "300" received by the sender: includes the store's durable (group) commit.
    pub ack_stored: LatencyHistogram,
    /// "507" received by the sender.
    pub ack_full: LatencyHistogram,
    /// Any first answer minus the actual write (not from the intended time; diagnostic only).
    pub service_time: LatencyHistogram,
    /// type 0 received by the recipient.
    pub delivery_live: LatencyHistogram,
    /// type 2 received, from the recipient's intended reconnect time.
    pub delivery_stored: LatencyHistogram,
    /// Hello echoed, from the intended connect time (ramp-up).
    pub connect: LatencyHistogram,
    /// Same, for the reconnect phase.
    pub reconnect: LatencyHistogram,
    pub own: OwnLags,
}

/// Everything measured, raw; the report computes the figures.
#[derive(Debug)]
pub struct Bin24Outcome {
    pub online_requested: usize,
    pub online_joined: usize,
    pub ran: Ran,
    pub latency: Latencies,
    pub tally: Tally,
    /// First answers received inside the measured window.
    pub answered_in_window: u64,
    pub delivered_live_in_window: u64,
    /// Frames not of this run: an earlier run's stored messages, another client's.
    pub foreign_frames: u64,
    /// This run's hellos delivered as type 2: stored when the server closed a connection
    /// before its hello was answered.
    pub stored_hellos: u64,
    /// Users connected in the reconnect phase, and how many of them got there.
    pub reconnect_requested: usize,
    pub reconnect_joined: usize,
    /// Users connected in the reconnect phase that had been connected before.
    pub reconnect_of_online: usize,
    /// Extra connections of users the server closed during the reconnect phase.
    pub reconnect_retries: u64,
    /// type 2 frames of this run received (duplicates included).
    pub stored_frames: u64,
    pub reconnect_used_us: u64,
    pub reconnect_timed_out: bool,
}

pub struct User {
    name: Name,
    partner: usize,
    offline: bool,
    /// Connected in the reconnect phase.
    reconnecting: bool,
    /// Connections made in the reconnect phase.
    reconnect_attempts: u32,
    /// Connected before the reconnect phase: stored frames may have come on that connection
    /// (a node announces frames stored for its online users), so they may come again at the
    /// reconnect if that connection closed before they counted as delivered.
    connected_before_reconnect: bool,
}

impl User {
    /// Whether a store delivery now may repeat one an earlier connection got (at-least-once
    /// allows it): on a reconnect retry, or on the first reconnect of a user that had been
    /// connected before.
    fn on_repeat_connection(&self) -> bool {
        self.reconnect_attempts > 1 || (self.reconnecting && self.connected_before_reconnect)
    }
}

/// The run: the engine's, over BIN24's part.
pub type Run<'a> = engine::Run<Part<'a>>;

/// BIN24's part of the run.
pub struct Part<'a> {
    cfg: &'a Bin24Config,
    /// Per planned message: actual write completion minus intended time, µs (for the
    /// service time).
    write_lag_us: Vec<u32>,
    ledger: Ledger,
    body_buf: Vec<u8>,
    latency: Latencies,
    answered_in_window: u64,
    delivered_live_in_window: u64,
    foreign_frames: u64,
    stored_hellos: u64,
    stored_frames: u64,
    reconnect_of_online: usize,
    reconnect_retries: u64,
}

/// The scenario as the registry lists it.
pub struct Bin24;

impl ScenarioKind for Bin24 {
    const ROW: Row = Protocol::Bin24.row();
    const MAIN_HISTOGRAM: &'static str = "ack200";
    const UNREACHABLE_IN_MIX: &'static str = "no user could join the BIN24 server";
    type Config = Bin24Config;
    type Run<'a> = Run<'a>;
    type Outcome = Bin24Outcome;
    type Report = report::Report;

    fn start(cfg: &Bin24Config) -> Result<Run<'_>, RunError> {
        let users = (0..cfg.users).map(|i| User {
            name: user_name(i),
            partner: cfg.pattern.partner(i, cfg.users),
            offline: cfg.offline.get(i).copied().unwrap_or(false),
            reconnecting: false,
            reconnect_attempts: 0,
            connected_before_reconnect: false,
        });
        let part = Part {
            cfg,
            write_lag_us: Vec::new(),
            ledger: Ledger::default(),
            body_buf: vec![0; cfg.body_bytes.max(STAMP_BYTES)],
            latency: Latencies::default(),
            answered_in_window: 0,
            delivered_live_in_window: 0,
            foreign_frames: 0,
            stored_hellos: 0,
            stored_frames: 0,
            reconnect_of_online: 0,
            reconnect_retries: 0,
        };
        let online = |n| {
            (0..n)
                .filter(|&i| !cfg.offline.get(i).copied().unwrap_or(false))
                .collect()
        };
        engine::Run::paced(part, users, online, &cfg.pace)
    }
    fn finish(run: Run<'_>) -> Bin24Outcome {
        run.finish()
    }
    fn report(
        cfg: &Bin24Config,
        seed: u64,
        strict: bool,
        outcome: &Bin24Outcome,
    ) -> report::Report {
        report::Report::new(cfg, seed, strict, outcome)
    }
    /// The latencies the report measures the server by (written and plotted), then the
    /// loadgen's own lags (written, not plotted).
    fn histograms(outcome: &Bin24Outcome) -> (Named<'_>, Named<'_>) {
        (
            vec![
                ("ack200", &outcome.latency.ack_delivered),
                ("ack300", &outcome.latency.ack_stored),
                ("ack507", &outcome.latency.ack_full),
                ("delivery-live", &outcome.latency.delivery_live),
                ("delivery-stored", &outcome.latency.delivery_stored),
                ("connect", &outcome.latency.connect),
                ("reconnect", &outcome.latency.reconnect),
            ],
            [("service-time", &outcome.latency.service_time)]
                .into_iter()
                .chain(outcome.latency.own.named())
                .collect(),
        )
    }
    fn progress(cfg: &Bin24Config) -> bool {
        cfg.pace.progress
    }
    fn unreachable(cfg: &Bin24Config) -> String {
        format!("no user could join a BIN24 server at {}", cfg.target)
    }
}

impl Wire for Part<'_> {
    type User = User;
    type Tag = u64;
    type Message = Frame;
    const WAVE_TIMEOUT: &'static str = "timed out before its hello came back";

    fn target(&self, _c: &ClientOf<Self>) -> SocketAddr {
        self.cfg.target
    }
    fn who(&self, _u: usize, c: &ClientOf<Self>) -> String {
        format!("{} user {}", self.cfg.target, c.name)
    }
    fn greet(run: &mut Run<'_>, u: usize) -> io::Result<()> {
        let user = &mut run.clients[u];
        // The first frame makes the user exist: a hello to itself, which the server forwards
        // back once the name is registered.
        if let Some(hello) = codec::encode(TYPE_MESSAGE, HELLO_ID, user.name, user.name, HELLO_BODY)
        {
            user.conn.out.extend(&hello);
        }
        Ok(())
    }
    fn decode(run: &mut Run<'_>, u: usize) -> Result<Option<Frame>, String> {
        codec::decode(&mut run.clients[u].conn.inbuf).map_err(|e| e.to_string())
    }
    fn on_message(run: &mut Run<'_>, u: usize, frame: Frame, now_us: u64) {
        run.on_frame(u, &frame, now_us);
    }
    /// Fails the user; in the reconnect phase, a user whose stored messages may still be
    /// waiting connects again (see [`RECONNECT_ATTEMPTS_MAX`]).
    fn fail(run: &mut Run<'_>, u: usize, kind: ErrorKind, why: String) {
        run.close_failed(u, kind, || why);
        let user = &run.clients[u];
        let retry = matches!(run.course.phase, Phase::Close { .. })
            && user.reconnecting
            && user.reconnect_attempts < RECONNECT_ATTEMPTS_MAX
            && run.p.ledger.awaiting_redelivery() > 0;
        if !retry {
            return;
        }
        let wave = &mut run.course.wave;
        let last_us = (wave.members().last()).map_or(0, |&last| wave.intended_us(last));
        let intended_us = (run.io.clock.now_us() + RECONNECT_RETRY_DELAY_US).max(last_us);
        wave.push(u, intended_us);
        let user = &mut run.clients[u];
        user.reconnect_attempts += 1;
        user.stage = Stage::Idle;
        run.p.reconnect_retries += 1;
        // The wait for stored messages starts again once this connection has settled.
        run.course.phase = Phase::Close { deadline_us: None };
    }
    /// Answers to its messages go to this connection only: those still unanswered can no
    /// longer be (the messages themselves may have died unread with the connection).
    fn failed(run: &mut Run<'_>, u: usize, _was: Stage) {
        if let (Some(ordinal), Some(plan)) = (run.clients[u].sender, run.course.plan.as_ref()) {
            let step = usize::try_from(plan.senders).unwrap_or(usize::MAX);
            for g in (u64::from(ordinal)..run.course.next_g).step_by(step) {
                run.p.ledger.orphan(g);
            }
        }
    }
    fn on_sent(&mut self, _u: usize, _sender: Option<u32>, queued: &Queued<u64>, lag_us: u64) {
        self.ledger.mark_written(queued.tag);
        if let Some(slot) = self.write_lag_us.get_mut(queued.tag as usize) {
            *slot = u32::try_from(lag_us).unwrap_or(u32::MAX);
        }
    }
    /// Queues every planned message that is due.
    fn send_due(run: &mut Run<'_>, now_us: u64) {
        run.send_planned(now_us, |run, u, due, plan| {
            let seq = due.g / u64::from(plan.senders);
            let cfg = run.p.cfg;
            let body = &mut run.p.body_buf[..cfg.body_bytes];
            let stamp = Stamp {
                run_id: cfg.run_id,
                sender: u as u32,
                seq: seq as u32,
                intended_us: due.intended_us,
            };
            let user = &run.clients[u];
            let partner = run.clients[user.partner].name;
            // The argument checks keep the body within 28..=1000 bytes and seq + 1 within u32,
            // so neither can fail; if one ever did, the message counts as not sent.
            let frame = stamp::write(body, &stamp).ok().and_then(|()| {
                codec::encode(TYPE_MESSAGE, seq as u32 + 1, user.name, partner, body)
            });
            if frame.is_none() {
                run.sends.not_sent_queue_full += 1;
            }
            // Only messages are dropped on a full queue: answers never are (the server closes
            // a recipient that does not answer), so they are queued whatever the backlog.
            Some((frame?, due.g))
        });
    }
    fn counts(run: &Run<'_>) -> SentReceived {
        SentReceived {
            sent: run.sends.sent,
            received: run.sends.sent.saturating_sub(run.p.ledger.unresolved()),
        }
    }
    /// No retry for a user its wave gave up on.
    fn on_wave_timeout(run: &mut Run<'_>, u: usize) {
        run.close_failed(u, ErrorKind::Connect, || Self::WAVE_TIMEOUT.to_string());
    }
    /// Every online user that joined sends; fix the plan.
    fn start_sending(run: &mut Run<'_>, now_us: u64) -> Result<(), RunError> {
        let cfg = run.p.cfg;
        let senders = run.joined_among(run.clients.len());
        let plan = run.fix_plan(senders, &cfg.pace, now_us, "no user joined")?;
        // The caller bounds the plan's size (see `main.rs`), so it fits in memory and in usize.
        let messages = usize::try_from(plan.messages).unwrap_or(usize::MAX);
        run.p.ledger = Ledger::new(messages);
        run.p.write_lag_us = vec![0; messages];
        Ok(())
    }
    fn drain_us(&self) -> u64 {
        self.cfg.pace.drain_us
    }
    /// Every written message has an answer.
    fn everything_arrived(run: &Run<'_>) -> bool {
        run.p.ledger.unresolved() == 0
    }
    /// The reconnect: the offline users and every user with stored messages pending connect
    /// (the others' connections are closed first).
    fn start_closing(run: &mut Run<'_>, now_us: u64) -> Phase {
        let mut wanted: Vec<bool> = run.clients.iter().map(|u| u.offline).collect();
        for g in run.p.ledger.awaiting_redelivery_iter() {
            if let Some(recipient) = run.recipient_of(g) {
                wanted[recipient] = true;
            }
        }
        let wave: Vec<usize> = (0..run.clients.len()).filter(|&u| wanted[u]).collect();
        for &u in &wave {
            let user = &mut run.clients[u];
            if user.conn.stream.is_some() || user.stage == Stage::Failed {
                run.p.reconnect_of_online += 1;
                user.connected_before_reconnect = true;
            }
            // Closed by the loadgen, which is done with it (before reconnecting it).
            run.sends.not_sent_at_end += user.conn.close(run.io.poll.registry());
            user.stage = Stage::Idle;
            user.reconnecting = true;
            user.reconnect_attempts = 1;
        }
        let rate = run.p.cfg.pace.connect_rate_per_s;
        run.course.wave.start(wave, now_us, rate);
        Phase::Close { deadline_us: None }
    }
    /// Every stored message was delivered; once the wave has settled, the wait for them is
    /// `--drain`.
    fn closed(run: &mut Run<'_>, now_us: u64) -> bool {
        if run.p.ledger.awaiting_redelivery() == 0 {
            return true;
        }
        if run.course.phase == (Phase::Close { deadline_us: None }) {
            let deadline_us = Some(now_us + run.p.cfg.pace.drain_us);
            run.course.phase = Phase::Close { deadline_us };
        }
        false
    }
    fn doing(run: &Run<'_>) -> String {
        let wave = run.course.wave.members();
        let joined = (wave.iter())
            .filter(|&&u| run.clients[u].stage == Stage::Joined)
            .count();
        match run.course.phase {
            Phase::Ramp => format!("ramp-up: {joined} of {} joined", wave.len()),
            Phase::Send | Phase::Drain { .. } => format!(
                "{}: sent {} of {}, unanswered {}",
                if run.course.phase == Phase::Send {
                    "sending"
                } else {
                    "draining"
                },
                run.sends.sent,
                run.course.plan.as_ref().map_or(0, |p| p.messages),
                run.p.ledger.unresolved()
            ),
            Phase::Close { .. } => format!(
                "reconnect: {joined} of {} joined, {} stored messages to come",
                wave.len(),
                run.p.ledger.awaiting_redelivery()
            ),
            Phase::Done => String::new(),
        }
    }
}

impl Run<'_> {
    /// The user that receives planned message `g`.
    fn recipient_of(&self, g: u64) -> Option<usize> {
        let plan = self.course.plan.as_ref()?;
        let sender = *self.senders.get(plan.sender_of(g) as usize)?;
        Some(self.clients[sender].partner)
    }

    fn on_frame(&mut self, u: usize, frame: &Frame, now_us: u64) {
        let me = self.clients[u].name;
        let is_hello = frame.message_id() == HELLO_ID && frame.src() == me && frame.dst() == me;
        match frame.frame_type() {
            TYPE_MESSAGE => {
                // A well-behaved recipient answers every message at once.
                if let Some(answer) = codec::encode(
                    TYPE_ANSWER,
                    frame.message_id(),
                    me,
                    frame.src(),
                    ANSWER_DELIVERED,
                ) {
                    self.clients[u].conn.out.extend(&answer);
                }
                if is_hello {
                    self.on_echo(u, now_us);
                } else {
                    self.on_delivery(u, frame, Via::Live, now_us);
                }
            }
            TYPE_ANSWER => {
                if !is_hello {
                    self.on_answer(u, frame, now_us);
                }
            }
            TYPE_OFFLINE => {
                if is_hello {
                    // An earlier connection's hello, stored when it left unanswered.
                    self.p.stored_hellos += 1;
                } else {
                    self.on_delivery(u, frame, Via::Store, now_us);
                }
            }
            other => self.errors.count(ErrorKind::Protocol, || {
                format!("user {me}: frame type {other} from the server")
            }),
        }
    }

    /// The user's hello came back: the server knows its name.
    fn on_echo(&mut self, u: usize, now_us: u64) {
        let user = &mut self.clients[u];
        if user.stage != Stage::Greeting {
            return; // a repeat: harmless
        }
        user.stage = Stage::Joined;
        let latency_us = now_us.saturating_sub(self.course.wave.intended_us(u));
        if user.reconnecting {
            self.p.latency.reconnect.record(latency_us);
        } else {
            self.p.latency.connect.record(latency_us);
        }
        self.course.wave.settle(u);
    }

    /// A message arrived at recipient `u`, live or from the store.
    fn on_delivery(&mut self, u: usize, frame: &Frame, via: Via, now_us: u64) {
        let me = self.clients[u].name;
        let body = frame.body();
        let stamp = match stamp::read(&body, self.p.cfg.run_id) {
            stamp::Read::Ours(stamp) => stamp,
            stamp::Read::Foreign => {
                self.p.foreign_frames += 1;
                return;
            }
            stamp::Read::Malformed(why) => {
                self.errors.count(ErrorKind::Protocol, || {
                    format!("user {me}: {why} in {frame:?}")
                });
                return;
            }
        };
        if via == Via::Store {
            self.p.stored_frames += 1;
        }
        let Some(g) = self.check_delivery(u, frame, &stamp) else {
            self.errors.count(ErrorKind::Protocol, || {
                format!("user {me}: a message that does not match the plan: {frame:?} {stamp:?}")
            });
            return;
        };
        let repeat_connection = self.clients[u].on_repeat_connection();
        let Some(before) = self.p.ledger.deliver(g, via, repeat_connection) else {
            self.errors.count(ErrorKind::Protocol, || {
                format!("user {me}: delivery of a message never sent: {frame:?} {stamp:?}")
            });
            return;
        };
        if before.deliveries(via) > 0 {
            return; // a duplicate: counted by the ledger, timed once
        }
        let Some(plan) = self.course.plan.as_ref() else {
            return;
        };
        match via {
            Via::Live => {
                let m = &mut self.p;
                let (latency, in_window) = (
                    &mut m.latency.delivery_live,
                    &mut m.delivered_live_in_window,
                );
                plan.record_arrival(stamp.intended_us, now_us, latency, in_window);
            }
            Via::Store => {
                let from_us = self.course.wave.intended_us(u);
                self.p
                    .latency
                    .delivery_stored
                    .record(now_us.saturating_sub(from_us));
            }
        }
    }

    /// The plan's message number for a delivered frame, if every field agrees with the plan:
    /// sender, recipient, messageID and intended time.
    fn check_delivery(&self, u: usize, frame: &Frame, stamp: &Stamp) -> Option<u64> {
        let plan = self.course.plan.as_ref()?;
        let sender = usize::try_from(stamp.sender).ok()?;
        let sender_user = self.clients.get(sender)?;
        let ordinal = u64::from(sender_user.sender?);
        let g = u64::from(stamp.seq) * u64::from(plan.senders) + ordinal;
        let agrees = sender_user.partner == u
            && frame.src() == sender_user.name
            && frame.dst() == self.clients[u].name
            && u64::from(frame.message_id()) == u64::from(stamp.seq) + 1
            && g < plan.messages
            && plan.intended_us(g) == stamp.intended_us;
        agrees.then_some(g)
    }

    /// An answer arrived at sender `u`.
    fn on_answer(&mut self, u: usize, frame: &Frame, now_us: u64) {
        let me = self.clients[u].name;
        let body = frame.body();
        let answer = match body.get(..3) {
            Some(text) if text == ANSWER_DELIVERED => Answer::Delivered,
            Some(text) if text == ANSWER_STORED => Answer::Stored,
            Some(text) if text == ANSWER_STORE_FULL => Answer::Full,
            _ => {
                self.errors.count(ErrorKind::Protocol, || {
                    format!(
                        "user {me}: answer text {:?} in {frame:?}",
                        String::from_utf8_lossy(&body)
                    )
                });
                return;
            }
        };
        let g = self.course.plan.as_ref().and_then(|plan| {
            let user = &self.clients[u];
            let ordinal = u64::from(user.sender?);
            let seq = u64::from(frame.message_id().checked_sub(1)?);
            let g = seq * u64::from(plan.senders) + ordinal;
            let agrees = frame.dst() == me
                && frame.src() == self.clients[user.partner].name
                && g < plan.messages;
            agrees.then_some(g)
        });
        let Some(g) = g else {
            self.errors.count(ErrorKind::Protocol, || {
                format!("user {me}: an answer that does not match the plan: {frame:?}")
            });
            return;
        };
        let Some(before) = self.p.ledger.answer(g, answer) else {
            self.errors.count(ErrorKind::Protocol, || {
                format!("user {me}: answer to a message never sent: {frame:?}")
            });
            return;
        };
        if before.answers(answer) > 0 {
            return; // repeated: counted by the ledger
        }
        let Some(plan) = self.course.plan.as_ref() else {
            return;
        };
        let intended_us = plan.intended_us(g);
        if !before.is_resolved() {
            if plan.in_window(now_us) {
                self.p.answered_in_window += 1;
            }
            if !plan.is_warmup(intended_us) {
                let lag_us = u64::from(self.p.write_lag_us.get(g as usize).copied().unwrap_or(0));
                self.p
                    .latency
                    .service_time
                    .record(now_us.saturating_sub(intended_us + lag_us));
            }
        }
        if !plan.is_warmup(intended_us) {
            let latency_us = now_us.saturating_sub(intended_us);
            let histogram = match answer {
                Answer::Delivered => &mut self.p.latency.ack_delivered,
                Answer::Stored => &mut self.p.latency.ack_stored,
                Answer::Full => &mut self.p.latency.ack_full,
            };
            histogram.record(latency_us);
        }
    }

    pub fn finish(mut self) -> Bin24Outcome {
        let times = self.course.times(self.io.clock.now_us());
        self.close_all();
        self.p.latency.own = std::mem::take(&mut self.own);
        Bin24Outcome {
            online_requested: self.clients.iter().filter(|u| !u.offline).count(),
            online_joined: self.senders.len(),
            ran: self.ran(&times),
            latency: self.p.latency,
            tally: self.p.ledger.tally(),
            answered_in_window: self.p.answered_in_window,
            delivered_live_in_window: self.p.delivered_live_in_window,
            foreign_frames: self.p.foreign_frames,
            stored_hellos: self.p.stored_hellos,
            reconnect_requested: self.clients.iter().filter(|u| u.reconnecting).count(),
            reconnect_joined: (self.clients.iter())
                .filter(|u| u.reconnecting && u.stage == Stage::Joined)
                .count(),
            reconnect_of_online: self.p.reconnect_of_online,
            reconnect_retries: self.p.reconnect_retries,
            stored_frames: self.p.stored_frames,
            reconnect_used_us: times.close_used_us,
            reconnect_timed_out: times.close_timed_out,
        }
    }
}
