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
//! It runs on the engine ([`crate::engine::Run`]), as the other TCP scenarios: one mio poll,
//! sockets registered READABLE|WRITABLE once, readiness kept in userland, the pacer's timerfd
//! waking it on the plan's microsecond.

pub mod args;
pub mod churn;
pub mod report;
pub mod stamp;
pub mod wire;

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use switchboard::protocol::ccm::codec;

use crate::args::Pace;
use crate::bin24::topology::Pattern;
use crate::clock::Clock;
use crate::course::Phase;
use crate::driver::{RunError, SentReceived};
use crate::engine::{self, ClientOf, Stage, Wire};
use crate::registry::{Named, Protocol, Row, ScenarioKind};
use crate::report::Ran;
use crate::sockio::{Chunk, Queued};
use crate::stats::{ErrorKind, LatencyHistogram, OwnLags, SeqCounts, SeqOutcome};
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
    /// Longest wait, after a silent user's identification, for the server to close it.
    pub silent_wait_us: u64,
    /// Bytes of each message's content, the stamp included.
    pub content_bytes: usize,
    pub run_id: u32,
    /// Its rate, phases' lengths, ramp-up pace, seed and progress line.
    pub pace: Pace,
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
    pub ran: Ran,
    pub latency: Latencies,
    pub seq: SeqCounts,
    pub undelivered: u64,
    pub delivered_in_window: u64,
    pub foreign_messages: u64,
    /// Keepalives received by active users (each answered at once) and by silent users.
    pub keepalives_active: u64,
    pub keepalives_answered: u64,
    pub keepalives_silent: u64,
    pub silent_wait_used_us: u64,
}

pub struct User {
    name: String,
    role: Role,
    partner: usize,
    token: Bytes,
    /// When the user's last bytes went out completely.
    last_write_us: u64,
    keepalives: u64,
}

/// The run: the engine's, over CCM's part.
pub type Run<'a> = engine::Run<Part<'a>>;

/// CCM's part of the run.
pub struct Part<'a> {
    cfg: &'a CcmConfig,
    accounting: Accounting,
    content_buf: Vec<u8>,
    latency: Latencies,
    delivered_in_window: u64,
    foreign_messages: u64,
    keepalives_active: u64,
    keepalives_answered: u64,
    keepalives_silent: u64,
    silent_closed: u64,
    silent_closed_without_keepalive: u64,
}

/// The scenario as the registry lists it.
pub struct Ccm;

impl ScenarioKind for Ccm {
    const ROW: Row = Protocol::Ccm.row();
    const UNREACHABLE_IN_MIX: &'static str = "no user could join the CCM server";
    type Config = CcmConfig;
    type Run<'a> = Run<'a>;
    type Outcome = CcmOutcome;
    type Report = report::Report;

    fn start(cfg: &CcmConfig) -> Result<Run<'_>, RunError> {
        let users = (0..cfg.users + cfg.silent).map(|i| {
            let (name, role, partner) = if i < cfg.users {
                let partner = cfg.pattern.partner(i, cfg.users);
                (active_name(i), Role::Active, partner)
            } else {
                (silent_name(i - cfg.users), Role::Silent, i)
            };
            User {
                name,
                role,
                partner,
                token: Bytes::new(),
                last_write_us: 0,
                keepalives: 0,
            }
        });
        let part = Part {
            cfg,
            accounting: Accounting::new(0),
            content_buf: vec![0; cfg.content_bytes.max(stamp::STAMP_BYTES)],
            latency: Latencies::default(),
            delivered_in_window: 0,
            foreign_messages: 0,
            keepalives_active: 0,
            keepalives_answered: 0,
            keepalives_silent: 0,
            silent_closed: 0,
            silent_closed_without_keepalive: 0,
        };
        // Silent users are spread through the ramp-up rather than left to its end.
        let order = |_| connect_order(cfg.users, cfg.silent);
        engine::Run::paced(part, users, order, &cfg.pace)
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
        cfg.pace.progress
    }
    fn unreachable(cfg: &CcmConfig) -> String {
        format!("no user could join a CCM server at {}", cfg.target)
    }
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

impl Wire for Part<'_> {
    type User = User;
    type Tag = ();
    type Message = codec::Message;
    const WAVE_TIMEOUT: &'static str = "timed out before its Identity came back";

    fn target(&self, _c: &ClientOf<Self>) -> SocketAddr {
        self.cfg.target
    }
    fn who(&self, _u: usize, c: &ClientOf<Self>) -> String {
        format!("{} user {}", self.cfg.target, c.name)
    }
    fn greet(run: &mut Run<'_>, u: usize) -> io::Result<()> {
        let user = &mut run.clients[u];
        user.conn.out.extend(&wire::identify(&user.name));
        Ok(())
    }
    fn decode(run: &mut Run<'_>, u: usize) -> Result<Option<codec::Message>, String> {
        codec::decode(&mut run.clients[u].conn.inbuf, false).map_err(|e| e.to_string())
    }
    fn on_message(run: &mut Run<'_>, u: usize, message: codec::Message, now_us: u64) {
        run.on_message(u, &message, now_us);
    }
    fn on_drained(run: &mut Run<'_>, u: usize) {
        // The server always writes Content-Length: a message it cut short of one would wait
        // here forever, so a whole burst is decoded as a last resort.
        if run.clients[u].conn.inbuf.is_empty() {
            return;
        }
        let now_us = run.io.clock.now_us();
        match codec::decode(&mut run.clients[u].conn.inbuf, true) {
            Ok(Some(message)) => run.on_message(u, &message, now_us),
            Ok(None) => {}
            Err(e) => run.fail(u, ErrorKind::Protocol, format!("framing lost: {e}")),
        }
    }
    /// EOF or a read error: expected for a silent user (measured), an error for anyone else.
    fn on_server_close(run: &mut Run<'_>, u: usize, ended: Chunk) {
        let user = &mut run.clients[u];
        if !(user.role == Role::Silent && user.stage == Stage::Joined) {
            run.lost(u, ended.why());
            return;
        }
        let now_us = run.io.clock.now_us();
        (run.p.latency.silent_closed_after).record(now_us.saturating_sub(user.last_write_us));
        run.p.silent_closed += 1;
        let keepalives = user.keepalives;
        let name = user.name.clone();
        run.closed_by_server(u);
        if keepalives == 0 {
            run.p.silent_closed_without_keepalive += 1;
            run.errors.count(ErrorKind::Protocol, || {
                format!("silent user {name} was closed without a Connect keepalive first")
            });
        }
    }
    fn on_sent(&mut self, _u: usize, sender: Option<u32>, _queued: &Queued<()>, _lag_us: u64) {
        if let Some(ordinal) = sender {
            self.accounting.on_sent(ordinal as usize);
        }
    }
    fn on_written(c: &mut ClientOf<Self>, clock: &Clock) {
        c.last_write_us = clock.now_us();
    }
    fn send_due(run: &mut Run<'_>, now_us: u64) {
        run.send_planned(now_us, |run, u, due, plan| {
            let cfg = run.p.cfg;
            let content = &mut run.p.content_buf[..cfg.content_bytes];
            let stamp = Stamp {
                run_id: cfg.run_id,
                sender: u as u32,
                seq: (due.g / u64::from(plan.senders)) as u32,
                intended_us: due.intended_us,
            };
            if stamp::write(content, &stamp).is_err() {
                run.sends.not_sent_queue_full += 1; // cannot happen: the arguments are checked
                return None;
            }
            let user = &run.clients[u];
            Some((
                wire::text(&user.token, &run.clients[user.partner].name, content),
                (),
            ))
        });
    }
    fn counts(run: &Run<'_>) -> SentReceived {
        SentReceived {
            sent: run.sends.sent,
            received: run.p.accounting.counts().delivered,
        }
    }
    fn start_sending(run: &mut Run<'_>, now_us: u64) -> Result<(), RunError> {
        let cfg = run.p.cfg;
        let senders = run.joined_among(cfg.users);
        let senders_count = senders.len();
        run.fix_plan(senders, &cfg.pace, now_us, "no user joined")?;
        run.p.accounting = Accounting::new(senders_count);
        Ok(())
    }
    fn drain_us(&self) -> u64 {
        self.cfg.pace.drain_us
    }
    fn everything_arrived(run: &Run<'_>) -> bool {
        run.p.accounting.undelivered() == 0
    }
    /// The silent wait: until the server has closed every silent user, or `--silent-wait`
    /// after the last one's last write.
    fn start_closing(run: &mut Run<'_>, now_us: u64) -> Phase {
        let last_us = (run.clients.iter())
            .filter(|u| u.role == Role::Silent && u.stage == Stage::Joined)
            .map(|u| u.last_write_us)
            .max();
        match last_us {
            Some(last_us) => Phase::Close {
                deadline_us: Some((last_us + run.p.cfg.silent_wait_us).max(now_us)),
            },
            None => Phase::Done,
        }
    }
    fn closed(run: &mut Run<'_>, _now_us: u64) -> bool {
        run.silent_open() == 0
    }
    fn doing(run: &Run<'_>) -> String {
        match run.course.phase {
            Phase::Ramp => format!(
                "ramp-up: {} of {} joined",
                run.count_at(Stage::Joined),
                run.clients.len()
            ),
            Phase::Send | Phase::Drain { .. } => format!(
                "sent {} of {}, undelivered {}",
                run.sends.sent,
                run.course.plan.as_ref().map_or(0, |p| p.messages),
                run.p.accounting.undelivered()
            ),
            Phase::Close { .. } => {
                format!(
                    "waiting for {} silent users to be closed",
                    run.silent_open()
                )
            }
            Phase::Done => String::new(),
        }
    }
}

impl Run<'_> {
    /// Silent users the server has not closed yet.
    fn silent_open(&self) -> usize {
        self.clients
            .iter()
            .filter(|u| u.role == Role::Silent && u.stage == Stage::Joined)
            .count()
    }

    fn on_message(&mut self, u: usize, message: &codec::Message, now_us: u64) {
        let identified = self.clients[u].stage == Stage::Joined;
        match wire::classify(message, identified) {
            Incoming::Identity(token) => {
                let user = &mut self.clients[u];
                user.token = token;
                user.stage = Stage::Joined;
                let intended_us = self.course.wave.intended_us(u);
                self.p
                    .latency
                    .connect
                    .record(now_us.saturating_sub(intended_us));
                self.course.wave.settle(u);
            }
            Incoming::Keepalive => {
                let user = &mut self.clients[u];
                user.keepalives += 1;
                match user.role {
                    Role::Active => self.p.keepalives_active += 1,
                    Role::Silent => {
                        self.p.keepalives_silent += 1;
                        if user.keepalives == 1 {
                            self.p
                                .latency
                                .silent_keepalive_after
                                .record(now_us.saturating_sub(user.last_write_us));
                        }
                    }
                }
                if let Some(reply) = wire::keepalive_reply(user.role, &user.token) {
                    user.conn.out.extend(&reply);
                    self.p.keepalives_answered += 1;
                    self.io.dirty.mark(u);
                }
            }
            Incoming::Text {
                sender,
                addressee,
                content,
            } => self.on_delivery(u, &sender, &addressee, &content, now_us),
            Incoming::Violation(why) => {
                let name = self.clients[u].name.clone();
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
        let me = &self.clients[u].name;
        let stamp = match stamp::read(content, self.p.cfg.run_id) {
            stamp::Read::Ours(stamp) => stamp,
            stamp::Read::Foreign => {
                self.p.foreign_messages += 1;
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
        let outcome = self
            .p
            .accounting
            .on_delivered(ordinal, u64::from(stamp.seq));
        if outcome == SeqOutcome::Behind {
            return; // a duplicate: counted, timed once
        }
        if let Some(plan) = self.course.plan.as_ref() {
            // The check found the plan's intended time for `g` in the stamp.
            debug_assert_eq!(plan.intended_us(g), stamp.intended_us);
            let (latency, in_window) = (
                &mut self.p.latency.delivery,
                &mut self.p.delivered_in_window,
            );
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
        let sender_user = self.clients.get(usize::try_from(stamp.sender).ok()?)?;
        let ordinal = sender_user.sender?;
        let g = u64::from(stamp.seq) * u64::from(plan.senders) + u64::from(ordinal);
        let agrees = sender_user.role == Role::Active
            && sender_user.partner == u
            && sender == sender_user.name.as_bytes()
            && addressee == self.clients[u].name.as_bytes()
            && g < plan.messages
            && plan.intended_us(g) == stamp.intended_us;
        agrees.then_some((ordinal as usize, g))
    }

    pub fn finish(mut self) -> CcmOutcome {
        let times = self.course.times(self.io.clock.now_us());
        self.close_all();
        self.p.latency.own = std::mem::take(&mut self.own);
        let silent = &self.clients[self.p.cfg.users..];
        let silent_joined = silent
            .iter()
            .filter(|u| matches!(u.stage, Stage::Joined | Stage::Closed))
            .count();
        let silent_not_closed = silent.iter().filter(|u| u.stage == Stage::Joined).count() as u64;
        CcmOutcome {
            users_requested: self.p.cfg.users,
            users_joined: self.senders.len(),
            silent_requested: self.p.cfg.silent,
            silent_joined,
            silent_closed: self.p.silent_closed,
            silent_closed_without_keepalive: self.p.silent_closed_without_keepalive,
            silent_not_closed,
            ran: self.ran(&times),
            latency: self.p.latency,
            seq: self.p.accounting.counts(),
            undelivered: self.p.accounting.undelivered(),
            delivered_in_window: self.p.delivered_in_window,
            foreign_messages: self.p.foreign_messages,
            keepalives_active: self.p.keepalives_active,
            keepalives_answered: self.p.keepalives_answered,
            keepalives_silent: self.p.keepalives_silent,
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
