//! The CCM scenario: identified users send `Text` messages to a partner (pairs or a ring, as
//! BIN24) on the shared plan; receivers time every delivery from its intended send time and
//! check it against the contract; every user answers the server's `Connect` keepalive at once.
//! A share of extra "silent" users identify and then never send anything, not even a keepalive
//! answer: the loadgen times when the server closes each, from its last write.
//!
//! Phases, all bounded in time:
//! 1. Ramp-up: every user (active and silent) connects at `--connect-rate` and identifies
//!    (content = its name); it has joined when the `Identity` with its token comes back.
//! 2. Send: every active user that joined sends to its partner on the plan.
//! 3. Drain: until every written message was delivered, or `--drain`.
//! 4. Silent wait: until the server has closed every silent user, or `--silent-wait` after the
//!    last one's identification. Active users keep answering keepalives meanwhile.
//!
//! The loop is ROOM's and BIN24's: one mio poll, sockets registered READABLE|WRITABLE once,
//! readiness kept in userland, the [`Pacer`]'s timerfd waking it on the plan's microsecond.

pub mod args;
pub mod churn;
pub mod report;
pub mod stamp;
pub mod wire;

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use switchboard::protocol::ccm::codec;

use crate::bin24::topology::Pattern;
use crate::course::{self, Course, Phase, Staged};
use crate::driver::{queue_full, Loop, Phases, RunError, SentReceived, START_DELAY_US};
use crate::engine::{self, Link, Wire};
use crate::plan::Plan;
use crate::registry::{InMix, Named, Protocol, Row, ScenarioKind};
use crate::sockio::{Conn, Queued, SendCounts, SendLags};
use crate::stats::{ErrorCounts, ErrorKind, LatencyHistogram, OwnLags, SeqCounts, SeqOutcome};
use stamp::Stamp;
use wire::{Accounting, Incoming, Role};

/// The name of active user `i`: `lc00001`, `lc00002`, ... BIN24, CCM and MATOU share one name
/// space in chatd (the switchboard), so CCM's names differ from BIN24's `lg00001`: `loadgen
/// mix` runs both against one server.
pub fn active_name(i: usize) -> String {
    format!("lc{:05}", i + 1)
}

/// The name of silent user `k`: `lcq00001`, ... (never an addressee).
pub fn silent_name(k: usize) -> String {
    format!("lcq{:05}", k + 1)
}

/// How many silent users `share` of `users` makes: rounded to the nearest user.
pub fn silent_count(users: usize, share: f64) -> usize {
    (users as f64 * share).round() as usize
}

#[derive(Clone, Debug)]
pub struct CcmConfig {
    pub target: SocketAddr,
    /// Active users (they send and receive).
    pub users: usize,
    pub pattern: Pattern,
    /// Extra users that identify and then stay silent.
    pub silent: usize,
    pub rate_per_s: u64,
    pub duration_us: u64,
    pub warmup_us: u64,
    pub drain_us: u64,
    /// Longest wait, after a silent user's identification, for the server to close it.
    pub silent_wait_us: u64,
    /// Bytes of each message's content, the stamp included.
    pub content_bytes: usize,
    pub connect_rate_per_s: u64,
    pub run_id: u32,
    pub progress: bool,
}

#[derive(Debug, Default)]
pub struct Latencies {
    /// Text at the receiver minus intended send time.
    pub delivery: LatencyHistogram,
    /// Identity received minus intended connect time.
    pub connect: LatencyHistogram,
    pub own: OwnLags,
    /// Silent users: server's `Connect` minus the user's last write.
    pub silent_keepalive_after: LatencyHistogram,
    /// Silent users: close seen minus the user's last write.
    pub silent_closed_after: LatencyHistogram,
}

#[derive(Debug)]
pub struct CcmOutcome {
    pub users_requested: usize,
    pub users_joined: usize,
    pub silent_requested: usize,
    pub silent_joined: usize,
    pub silent_closed: u64,
    /// Silent users closed without a `Connect` first (a contract breach, also a protocol error).
    pub silent_closed_without_keepalive: u64,
    /// Silent users still open when the wait ended.
    pub silent_not_closed: u64,
    pub plan: Plan,
    pub latency: Latencies,
    pub seq: SeqCounts,
    pub undelivered: u64,
    pub errors: ErrorCounts,
    pub sends: SendCounts,
    pub delivered_in_window: u64,
    pub foreign_messages: u64,
    /// Keepalives received by active users (each answered at once) and by silent users.
    pub keepalives_active: u64,
    pub keepalives_answered: u64,
    pub keepalives_silent: u64,
    pub ramp_us: u64,
    pub drain_used_us: u64,
    pub drain_timed_out: bool,
    pub silent_wait_used_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UserPhase {
    Idle,
    Connecting,
    AwaitIdentity,
    Joined,
    /// A silent user the server closed (measured).
    ClosedByServer,
    Failed,
}

struct User {
    name: String,
    role: Role,
    partner: usize,
    sender: Option<u32>,
    conn: Conn<()>,
    phase: UserPhase,
    token: Bytes,
    /// When the user's last bytes went out completely.
    last_write_us: u64,
    keepalives: u64,
}

pub struct Run<'a> {
    cfg: &'a CcmConfig,
    io: Loop,
    users: Vec<User>,
    senders: Vec<usize>,
    accounting: Accounting,
    content_buf: Vec<u8>,
    latency: Latencies,
    errors: ErrorCounts,
    sends: SendCounts,
    delivered_in_window: u64,
    foreign_messages: u64,
    keepalives_active: u64,
    keepalives_answered: u64,
    keepalives_silent: u64,
    silent_closed: u64,
    silent_closed_without_keepalive: u64,
    course: Course,
}

/// The scenario as the registry lists it.
pub struct Ccm;

impl ScenarioKind for Ccm {
    const NAME: &'static str = "ccm";
    type Config = CcmConfig;
    type Run<'a> = Run<'a>;
    type Outcome = CcmOutcome;
    type Report = report::Report;

    fn start(cfg: &CcmConfig) -> Result<Run<'_>, RunError> {
        let io = Loop::new()?;
        let now_us = io.clock.now_us();
        let total = cfg.users + cfg.silent;
        // Silent users are spread through the ramp-up rather than left to its end.
        let users: Vec<User> = (0..total)
            .map(|i| {
                let (name, role, partner) = if i < cfg.users {
                    (
                        active_name(i),
                        Role::Active,
                        cfg.pattern.partner(i, cfg.users),
                    )
                } else {
                    (silent_name(i - cfg.users), Role::Silent, i)
                };
                User {
                    name,
                    role,
                    partner,
                    sender: None,
                    conn: Conn::default(),
                    phase: UserPhase::Idle,
                    token: Bytes::new(),
                    last_write_us: 0,
                    keepalives: 0,
                }
            })
            .collect();
        Ok(Run {
            cfg,
            io,
            users,
            senders: Vec::new(),
            accounting: Accounting::new(0),
            content_buf: vec![0; cfg.content_bytes.max(stamp::STAMP_BYTES)],
            latency: Latencies::default(),
            errors: ErrorCounts::default(),
            sends: SendCounts::default(),
            delivered_in_window: 0,
            foreign_messages: 0,
            keepalives_active: 0,
            keepalives_answered: 0,
            keepalives_silent: 0,
            silent_closed: 0,
            silent_closed_without_keepalive: 0,
            course: Course::new(
                total,
                connect_order(cfg.users, cfg.silent),
                now_us,
                cfg.connect_rate_per_s,
                cfg.progress,
            ),
        })
    }
    fn finish(run: Run<'_>) -> CcmOutcome {
        run.finish()
    }
    fn report(cfg: &CcmConfig, seed: u64, strict: bool, outcome: &CcmOutcome) -> report::Report {
        report::Report::new(cfg, seed, strict, outcome)
    }
    /// The latencies the report measures the server by (written and plotted), then the
    /// loadgen's own lags (written, not plotted).
    fn histograms(outcome: &CcmOutcome) -> (Named<'_>, Named<'_>) {
        (
            vec![
                ("delivery", &outcome.latency.delivery),
                ("connect", &outcome.latency.connect),
            ],
            (outcome.latency.own.named().into_iter())
                .chain([
                    (
                        "silent-keepalive-after",
                        &outcome.latency.silent_keepalive_after,
                    ),
                    ("silent-closed-after", &outcome.latency.silent_closed_after),
                ])
                .collect(),
        )
    }
    fn progress(cfg: &CcmConfig) -> bool {
        cfg.progress
    }
    fn unreachable(cfg: &CcmConfig) -> String {
        format!("no user could join a CCM server at {}", cfg.target)
    }
}

impl InMix for Ccm {
    const ROW: Row = Protocol::Ccm.row();
    const UNREACHABLE_IN_MIX: &'static str = "no user could join the CCM server";
}

/// The order users connect in: the silent ones (indices `users..`) spread evenly among the
/// active ones.
fn connect_order(users: usize, silent: usize) -> Vec<usize> {
    let total = users + silent;
    let mut order = Vec::with_capacity(total);
    let (mut a, mut s) = (0, 0);
    while a + s < total {
        // Keep s/(a+s) at the silent share: take a silent user when behind it.
        if s < silent && (a == users || s * total < (a + s) * silent) {
            order.push(users + s);
            s += 1;
        } else {
            order.push(a);
            a += 1;
        }
    }
    order
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
    fn next_wake_us(&self) -> u64 {
        course::next_wake_us(self)
    }
    fn is_done(&self) -> bool {
        course::is_done(self)
    }
    fn send_due(&mut self) {
        let Some(plan) = self.course.plan.as_ref() else {
            return;
        };
        if self.course.phase != Phase::Send {
            return;
        }
        self.io.bytes_since_send_check = 0;
        let now_us = self.io.clock.now_us();
        let senders = u64::from(plan.senders);
        while let Some(due) = plan.take_due(&mut self.course.next_g, now_us) {
            let u = self.senders[plan.sender_of(due.g) as usize];
            let user = &self.users[u];
            if user.phase != UserPhase::Joined {
                self.sends.not_sent_connection_lost += 1;
                continue;
            }
            let content = &mut self.content_buf[..self.cfg.content_bytes];
            let stamp = Stamp {
                run_id: self.cfg.run_id,
                sender: u as u32,
                seq: (due.g / senders) as u32,
                intended_us: due.intended_us,
            };
            if stamp::write(content, &stamp).is_err() {
                self.sends.not_sent_queue_full += 1; // cannot happen: the arguments are checked
                continue;
            }
            let message = wire::text(&user.token, &self.users[user.partner].name, content);
            if queue_full(
                user.conn.queue.len(),
                user.conn.out.pending(),
                message.len(),
            ) {
                self.sends.not_sent_queue_full += 1;
                continue;
            }
            let user = &mut self.users[u];
            user.conn.out.extend(&message);
            user.conn
                .queue
                .push_back(Queued::new(&user.conn.out, &due, ()));
            plan.record_lateness(&due, &mut self.latency.own.schedule_lateness);
            self.io.dirty.mark(u);
        }
        engine::flush_dirty(self);
    }
    fn counts(&self) -> SentReceived {
        SentReceived {
            sent: self.sends.sent,
            received: self.accounting.counts().delivered,
        }
    }
}

impl Wire for Run<'_> {
    type Tag = ();
    type Message = codec::Message;

    fn conn(&mut self, u: usize) -> Option<(&mut Loop, &mut Conn<()>)> {
        let user = self.users.get_mut(u)?;
        Some((&mut self.io, &mut user.conn))
    }
    fn link(&self, u: usize) -> Link {
        match self.users.get(u).map(|user| user.phase) {
            Some(UserPhase::Connecting) => Link::Connecting,
            Some(UserPhase::AwaitIdentity) => Link::Greeting,
            Some(UserPhase::Joined) => Link::Joined,
            _ => Link::Down,
        }
    }
    fn on_connected(&mut self, u: usize) -> io::Result<()> {
        let user = &mut self.users[u];
        user.conn.out.extend(&wire::identify(&user.name));
        user.phase = UserPhase::AwaitIdentity;
        Ok(())
    }
    fn decode(&mut self, u: usize) -> Result<Option<codec::Message>, String> {
        codec::decode(&mut self.users[u].conn.inbuf, false).map_err(|e| e.to_string())
    }
    fn on_message(&mut self, u: usize, message: codec::Message, now_us: u64) {
        Run::on_message(self, u, &message, now_us);
    }
    fn on_drained(&mut self, u: usize) {
        // The server always writes Content-Length: a message it cut short of one would wait
        // here forever, so a whole burst is decoded as a last resort.
        if self.users[u].conn.inbuf.is_empty() {
            return;
        }
        let now_us = self.io.clock.now_us();
        match codec::decode(&mut self.users[u].conn.inbuf, true) {
            Ok(Some(message)) => Run::on_message(self, u, &message, now_us),
            Ok(None) => {}
            Err(e) => Run::fail(self, u, ErrorKind::Protocol, || {
                format!("framing lost: {e}")
            }),
        }
    }
    fn on_server_close(&mut self, u: usize, why: String) {
        Run::on_server_close(self, u, why);
    }
    fn fail(&mut self, u: usize, kind: ErrorKind, why: String) {
        Run::fail(self, u, kind, || why);
    }
    fn flush(&mut self, u: usize) {
        let user = &mut self.users[u];
        let lags = SendLags {
            plan: self.course.plan.as_ref(),
            own: &mut self.latency.own,
            sent_in_window: &mut self.sends.sent_in_window,
        };
        let (sent, accounting, sender) = (&mut self.sends.sent, &mut self.accounting, user.sender);
        let failure = user.conn.flush(&self.io.clock, lags, |_, _| {
            *sent += 1;
            if let Some(ordinal) = sender {
                accounting.on_sent(ordinal as usize);
            }
        });
        if !user.conn.out.has_pending() {
            user.last_write_us = self.io.clock.now_us();
        }
        if let Some(why) = failure {
            self.fail(u, ErrorKind::Write, || why);
        }
    }
}

impl Staged for Run<'_> {
    const WAVE_TIMEOUT: &'static str = "timed out before its Identity came back";

    fn course(&self) -> &Course {
        &self.course
    }
    fn course_mut(&mut self) -> &mut Course {
        &mut self.course
    }
    fn target(&self, _u: usize) -> SocketAddr {
        self.cfg.target
    }
    fn on_connecting(&mut self, u: usize) {
        self.users[u].phase = UserPhase::Connecting;
    }
    fn start_sending(&mut self, now_us: u64) -> Result<(), RunError> {
        self.senders = (0..self.cfg.users)
            .filter(|&u| self.users[u].phase == UserPhase::Joined)
            .collect();
        if self.senders.is_empty() {
            return Err(self.errors.unreachable("no user joined"));
        }
        for (ordinal, &u) in self.senders.iter().enumerate() {
            self.users[u].sender = Some(ordinal as u32);
        }
        self.accounting = Accounting::new(self.senders.len());
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
        self.accounting.undelivered() == 0
    }
    /// The silent wait: until the server has closed every silent user, or `--silent-wait`
    /// after the last one's last write.
    fn start_closing(&mut self, now_us: u64) -> Phase {
        let last_us = self
            .users
            .iter()
            .filter(|u| u.role == Role::Silent && u.phase == UserPhase::Joined)
            .map(|u| u.last_write_us)
            .max();
        match last_us {
            Some(last_us) => Phase::Close {
                deadline_us: Some((last_us + self.cfg.silent_wait_us).max(now_us)),
            },
            None => Phase::Done,
        }
    }
    fn closed(&mut self, _now_us: u64) -> bool {
        self.silent_open() == 0
    }
    fn doing(&self) -> String {
        match self.course.phase {
            Phase::Ramp => format!(
                "ramp-up: {} of {} joined",
                self.users
                    .iter()
                    .filter(|u| u.phase == UserPhase::Joined)
                    .count(),
                self.users.len()
            ),
            Phase::Send | Phase::Drain { .. } => format!(
                "sent {} of {}, undelivered {}",
                self.sends.sent,
                self.course.plan.as_ref().map_or(0, |p| p.messages),
                self.accounting.undelivered()
            ),
            Phase::Close { .. } => {
                format!(
                    "waiting for {} silent users to be closed",
                    self.silent_open()
                )
            }
            Phase::Done => String::new(),
        }
    }
    fn errors(&self) -> &ErrorCounts {
        &self.errors
    }
}

impl Run<'_> {
    /// Silent users the server has not closed yet.
    fn silent_open(&self) -> usize {
        self.users
            .iter()
            .filter(|u| u.role == Role::Silent && u.phase == UserPhase::Joined)
            .count()
    }

    /// EOF or a read error: expected for a silent user (measured), an error for anyone else.
    fn on_server_close(&mut self, u: usize, why: String) {
        let user = &mut self.users[u];
        if user.role == Role::Silent && user.phase == UserPhase::Joined {
            let now_us = self.io.clock.now_us();
            self.latency
                .silent_closed_after
                .record(now_us.saturating_sub(user.last_write_us));
            self.silent_closed += 1;
            user.phase = UserPhase::ClosedByServer;
            let keepalives = user.keepalives;
            let name = user.name.clone();
            if let Some(mut stream) = user.conn.stream.take() {
                let _ = self.io.poll.registry().deregister(&mut stream);
            }
            if keepalives == 0 {
                self.silent_closed_without_keepalive += 1;
                self.errors.count(ErrorKind::Protocol, || {
                    format!("silent user {name} was closed without a Connect keepalive first")
                });
            }
            return;
        }
        engine::lost(self, u, why);
    }

    fn on_message(&mut self, u: usize, message: &codec::Message, now_us: u64) {
        let identified = self.users[u].phase == UserPhase::Joined;
        match wire::classify(message, identified) {
            Incoming::Identity(token) => {
                let user = &mut self.users[u];
                user.token = token;
                user.phase = UserPhase::Joined;
                let intended_us = self.course.wave.intended_us(u);
                self.latency
                    .connect
                    .record(now_us.saturating_sub(intended_us));
                self.course.wave.settle(u);
            }
            Incoming::Keepalive => {
                let user = &mut self.users[u];
                user.keepalives += 1;
                match user.role {
                    Role::Active => self.keepalives_active += 1,
                    Role::Silent => {
                        self.keepalives_silent += 1;
                        if user.keepalives == 1 {
                            self.latency
                                .silent_keepalive_after
                                .record(now_us.saturating_sub(user.last_write_us));
                        }
                    }
                }
                if let Some(reply) = wire::keepalive_reply(user.role, &user.token) {
                    user.conn.out.extend(&reply);
                    self.keepalives_answered += 1;
                    self.io.dirty.mark(u);
                }
            }
            Incoming::Text {
                sender,
                addressee,
                content,
            } => self.on_delivery(u, &sender, &addressee, &content, now_us),
            Incoming::Violation(why) => {
                let name = self.users[u].name.clone();
                self.errors
                    .count(ErrorKind::Protocol, || format!("user {name}: {why}"));
            }
        }
    }

    fn on_delivery(
        &mut self,
        u: usize,
        sender: &[u8],
        addressee: &[u8],
        content: &[u8],
        now_us: u64,
    ) {
        let me = &self.users[u].name;
        let stamp = match stamp::read(content, self.cfg.run_id) {
            stamp::Read::Ours(stamp) => stamp,
            stamp::Read::Foreign => {
                self.foreign_messages += 1;
                return;
            }
            stamp::Read::Malformed(why) => {
                let me = me.clone();
                self.errors
                    .count(ErrorKind::Protocol, || format!("user {me}: {why}"));
                return;
            }
        };
        let Some((ordinal, g)) = self.check_delivery(u, sender, addressee, &stamp) else {
            let me = me.clone();
            let sender = String::from_utf8_lossy(sender).into_owned();
            let addressee = String::from_utf8_lossy(addressee).into_owned();
            self.errors.count(ErrorKind::Protocol, || {
                format!(
                    "user {me}: a message that does not match the plan (Sender {sender}, \
                     Addressee {addressee}, {stamp:?})"
                )
            });
            return;
        };
        let outcome = self.accounting.on_delivered(ordinal, u64::from(stamp.seq));
        if outcome == SeqOutcome::Behind {
            return; // a duplicate: counted, timed once
        }
        if let Some(plan) = self.course.plan.as_ref() {
            // The check found the plan's intended time for `g` in the stamp.
            debug_assert_eq!(plan.intended_us(g), stamp.intended_us);
            let (latency, in_window) = (&mut self.latency.delivery, &mut self.delivered_in_window);
            plan.record_arrival(stamp.intended_us, now_us, latency, in_window);
        }
    }

    /// The sender ordinal and plan number of a delivery, if every field agrees with the plan.
    fn check_delivery(
        &self,
        u: usize,
        sender: &[u8],
        addressee: &[u8],
        stamp: &Stamp,
    ) -> Option<(usize, u64)> {
        let plan = self.course.plan.as_ref()?;
        let sender_user = self.users.get(usize::try_from(stamp.sender).ok()?)?;
        let ordinal = sender_user.sender?;
        let g = u64::from(stamp.seq) * u64::from(plan.senders) + u64::from(ordinal);
        let agrees = sender_user.role == Role::Active
            && sender_user.partner == u
            && sender == sender_user.name.as_bytes()
            && addressee == self.users[u].name.as_bytes()
            && g < plan.messages
            && plan.intended_us(g) == stamp.intended_us;
        agrees.then_some((ordinal as usize, g))
    }

    /// Counts the error, closes the connection and takes the user out of the run.
    fn fail(&mut self, u: usize, kind: ErrorKind, describe: impl FnOnce() -> String) {
        if matches!(
            self.users[u].phase,
            UserPhase::Failed | UserPhase::ClosedByServer
        ) {
            return;
        }
        self.course.wave.settle(u);
        let user = &mut self.users[u];
        user.phase = UserPhase::Failed;
        self.sends.not_sent_connection_lost += user.conn.close(self.io.poll.registry());
        let name = user.name.clone();
        let target = self.cfg.target;
        self.errors
            .count(kind, || format!("{target} user {name}: {}", describe()));
    }

    pub fn finish(mut self) -> CcmOutcome {
        let times = self.course.times(self.io.clock.now_us());
        self.sends.not_sent_at_end += engine::close_all(&mut self);
        let silent = &self.users[self.cfg.users..];
        let silent_joined = silent
            .iter()
            .filter(|u| matches!(u.phase, UserPhase::Joined | UserPhase::ClosedByServer))
            .count();
        let silent_not_closed = silent
            .iter()
            .filter(|u| u.phase == UserPhase::Joined)
            .count() as u64;
        CcmOutcome {
            users_requested: self.cfg.users,
            users_joined: self.senders.len(),
            silent_requested: self.cfg.silent,
            silent_joined,
            silent_closed: self.silent_closed,
            silent_closed_without_keepalive: self.silent_closed_without_keepalive,
            silent_not_closed,
            plan: self.course.plan_or_empty(),
            latency: self.latency,
            seq: self.accounting.counts(),
            undelivered: self.accounting.undelivered(),
            errors: self.errors,
            sends: self.sends,
            delivered_in_window: self.delivered_in_window,
            foreign_messages: self.foreign_messages,
            keepalives_active: self.keepalives_active,
            keepalives_answered: self.keepalives_answered,
            keepalives_silent: self.keepalives_silent,
            ramp_us: times.ramp_us,
            drain_used_us: times.drain_used_us,
            drain_timed_out: times.drain_timed_out,
            silent_wait_used_us: times.close_used_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_silent_counts() {
        assert_eq!(active_name(0), "lc00001");
        assert_eq!(active_name(9_999), "lc10000");
        assert_eq!(silent_name(0), "lcq00001");
        assert_eq!(silent_count(100, 0.1), 10);
        assert_eq!(silent_count(100, 0.0), 0);
        assert_eq!(silent_count(10, 0.15), 2);
    }

    #[test]
    fn silent_users_are_spread_through_the_ramp() {
        let order = connect_order(8, 2);
        assert_eq!(order.len(), 10);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let positions: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|&(_, &u)| u >= 8)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(positions.len(), 2);
        assert!(positions[1] - positions[0] >= 4, "{order:?}");
        assert_eq!(connect_order(3, 0), vec![0, 1, 2]);
        assert_eq!(connect_order(0, 2), vec![0, 1]);
    }
}
