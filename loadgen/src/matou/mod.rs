//! The MATOU scenario: users log in to the public room; senders send stamped PUBLIC_MESSAGEs on
//! the shared plan and every user (the sender included) times and checks every
//! PUBLIC_BROADCAST; meanwhile private links are brokered on a second plan, from a random Src to
//! another Dst, each timed from its request's intended time to the PRIVATE_SRC_ADDRESS at Dst.
//!
//! Phases, all bounded in time:
//! 1. Ramp-up: every user connects at `--connect-rate` and sends CONNECT_REQUEST with its name;
//!    it has joined on CONNECT_RESPONSE 1. Every CONNECT_NOTIFY is recorded per (receiver,
//!    subject) pair and checked at the end (see [`wire::NoticeLedger`]).
//! 2. Send: the senders send on the public plan; links are requested on the link plan (both
//!    start together). Dst answers a PRIVATE_REQUEST_NOTIFY with PRIVATE_ACCEPT at once, Src
//!    a PRIVATE_DST_ADDRESS with PRIVATE_SRC_PORTS (fake ports, see [`links::ports`]).
//! 3. Drain: until every written message reached every user and every link completed, or
//!    `--drain`.
//! 4. Sign-out: every user sends PUBLIC_SIGN_OUT; the server must close each, within
//!    `--sign-out-wait`. SIGN_OUT_NOTIFYs are recorded as the join notices are.
//!
//! The loop is ROOM's and CCM's: one mio poll, sockets registered READABLE|WRITABLE once,
//! readiness kept in userland, the [`Pacer`]'s timerfd waking it on the plan's microsecond.

pub mod args;
pub mod churn;
pub mod links;
pub mod report;
pub mod stamp;
pub mod wire;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, SocketAddr};

use switchboard::protocol::matou::codec::Limits;

use crate::course::{self, Course, Phase, Staged};
use crate::driver::{queue_full, RunError, SentReceived, SEND_QUEUE_BYTES_MAX, START_DELAY_US};
use crate::driver::{Loop, Phases};
use crate::engine::{self, Link, Wire};
use crate::plan::{choose_senders, Due, Plan, SplitMix64};
use crate::registry::{InMix, Named, Protocol, Row, ScenarioKind};
use crate::sockio::{Conn, Queued, SendCounts, SendLags};
use crate::stats::{ErrorCounts, ErrorKind, LatencyHistogram, OwnLags, SeqCounts, SeqOutcome};
use links::{LinkCounts, Links, Unexpected};
use stamp::Stamp;
use wire::{Accounting, Incoming, NoticeCheck, NoticeLedger, Peer};

/// Draws of a (Src, Dst) pair for one link before it is given up as "every pair busy".
const PAIR_DRAWS_MAX: usize = 64;
/// Mixed into `--seed` for the link pairs, so they do not repeat the senders' choice.
const LINK_SEED_SALT: u64 = 0x6d61_746f_7521;

/// Most public deliveries per second a plan may ask for (rate x users): every delivery is read,
/// decoded, checked and timed by this one loop, and beyond a few million a second it falls
/// behind and the run says nothing about the server.
pub const DELIVERIES_PER_S_MAX: u64 = 4_000_000;
/// Most links per second, and in all (each planned link keeps 24 bytes until the report).
pub const LINK_RATE_PER_S_MAX: u64 = 10_000;
pub const LINKS_MAX: u64 = 2_000_000;

#[derive(Clone, Debug)]
pub struct MatouConfig {
    pub target: SocketAddr,
    pub users: usize,
    /// Users that send public messages (chosen among those that joined, with `seed`).
    pub senders: usize,
    pub rate_per_s: u64,
    /// Links requested per second (0: none).
    pub private_rate_per_s: u64,
    pub duration_us: u64,
    pub warmup_us: u64,
    pub drain_us: u64,
    /// Longest wait, after the sign-outs, for the server to close every user.
    pub sign_out_wait_us: u64,
    /// Bytes of each public message, the stamp included.
    pub message_bytes: usize,
    pub connect_rate_per_s: u64,
    pub seed: u64,
    pub run_id: u32,
    pub progress: bool,
}

#[derive(Debug, Default)]
pub struct Latencies {
    /// PUBLIC_BROADCAST at each user minus intended send time.
    pub delivery: LatencyHistogram,
    /// CONNECT_RESPONSE 1 minus intended connect time.
    pub connect: LatencyHistogram,
    /// Its schedule lateness covers public messages and link requests.
    pub own: OwnLags,
    /// PRIVATE_SRC_ADDRESS at Dst minus the request's intended time.
    pub link: LatencyHistogram,
    /// PRIVATE_REQUEST_NOTIFY at Dst minus the request's intended time.
    pub link_notify: LatencyHistogram,
}

/// Notices about this run's users: how many arrived, and the per-pair check.
#[derive(Clone, Copy, Debug, Default)]
pub struct Notices {
    pub received: u64,
    pub duplicates: u64,
    pub check: NoticeCheck,
}

#[derive(Debug)]
pub struct MatouOutcome {
    pub users_requested: usize,
    pub users_joined: usize,
    pub plan: Plan,
    pub link_plan: Option<Plan>,
    pub latency: Latencies,
    pub seq: SeqCounts,
    pub undelivered: u64,
    /// Messages written times the users that joined.
    pub expected_deliveries: u64,
    pub errors: ErrorCounts,
    pub sends: SendCounts,
    pub delivered_in_window: u64,
    pub links: LinkCounts,
    /// Links due whose Src or Dst had lost its connection, or whose Src's queue was full.
    pub links_not_sent_connection_lost: u64,
    pub links_not_sent_queue_full: u64,
    /// Links due while every pair drawn already had a link open.
    pub links_not_sent_busy: u64,
    pub links_requested_in_window: u64,
    pub links_completed_in_window: u64,
    /// PRIVATE_DST_ADDRESS or PRIVATE_SRC_ADDRESS with an address other than the peer's.
    pub address_mismatches: u64,
    pub join_notices: Notices,
    pub sign_out_notices: Notices,
    /// Users that sent PUBLIC_SIGN_OUT, and of them those the server closed in time.
    pub signed_out: u64,
    pub closed_after_sign_out: u64,
    pub error_packets: u64,
    pub refusals: u64,
    pub decode_errors: u64,
    /// Broadcasts that are not this run's, and notices about users that are not.
    pub foreign_messages: u64,
    pub foreign_notices: u64,
    pub ramp_us: u64,
    pub drain_used_us: u64,
    pub drain_timed_out: bool,
    pub sign_out_wait_used_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UserPhase {
    Idle,
    Connecting,
    AwaitResponse,
    Joined,
    /// PUBLIC_SIGN_OUT queued; waiting for the server to close.
    SigningOut,
    /// Closed by the server after its sign-out.
    Closed,
    Failed,
}

struct User {
    name: String,
    /// This user's address as the server sees it (its socket's local address).
    ip: Option<IpAddr>,
    /// Sender ordinal in the public plan.
    sender: Option<u32>,
    conn: Conn<()>,
    phase: UserPhase,
    /// Joined at some point: its deliveries count as expected from then on.
    joined: bool,
    /// Still joined when the ramp-up ended: it heard every join notice.
    in_room_after_ramp: bool,
}

pub struct Run<'a> {
    cfg: &'a MatouConfig,
    io: Loop,
    users: Vec<User>,
    /// User index of each sender ordinal.
    senders: Vec<usize>,
    /// Users that joined in the ramp-up: the pool links are drawn from.
    pool: Vec<usize>,
    accounting: Accounting,
    links: Links,
    join_ledger: NoticeLedger,
    sign_out_ledger: NoticeLedger,
    link_rng: SplitMix64,
    /// The decoder's size limits: the codec's defaults, far above what this run's packets need.
    limits: Limits,
    content_buf: Vec<u8>,
    latency: Latencies,
    errors: ErrorCounts,
    sends: SendCounts,
    delivered_in_window: u64,
    links_not_sent_connection_lost: u64,
    links_not_sent_queue_full: u64,
    links_not_sent_busy: u64,
    links_requested_in_window: u64,
    links_completed_in_window: u64,
    address_mismatches: u64,
    signed_out: u64,
    closed_after_sign_out: u64,
    error_packets: u64,
    refusals: u64,
    decode_errors: u64,
    foreign_messages: u64,
    foreign_notices: u64,
    course: Course,
    link_plan: Option<Plan>,
    next_link: u64,
}

/// The scenario as the registry lists it.
pub struct Matou;

impl ScenarioKind for Matou {
    const NAME: &'static str = "matou";
    type Config = MatouConfig;
    type Run<'a> = Run<'a>;
    type Outcome = MatouOutcome;
    type Report = report::Report;

    fn start(cfg: &MatouConfig) -> Result<Run<'_>, RunError> {
        let io = Loop::new()?;
        let now_us = io.clock.now_us();
        let users: Vec<User> = (0..cfg.users)
            .map(|i| User {
                name: wire::user_name(cfg.run_id, i),
                ip: None,
                sender: None,
                conn: Conn::default(),
                phase: UserPhase::Idle,
                joined: false,
                in_room_after_ramp: false,
            })
            .collect();
        Ok(Run {
            cfg,
            io,
            users,
            senders: Vec::new(),
            pool: Vec::new(),
            accounting: Accounting::new(0, 0),
            links: Links::new(),
            join_ledger: NoticeLedger::new(cfg.users),
            sign_out_ledger: NoticeLedger::new(cfg.users),
            link_rng: SplitMix64(cfg.seed ^ LINK_SEED_SALT),
            limits: Limits::default(),
            content_buf: vec![0; cfg.message_bytes.max(stamp::STAMP_BYTES)],
            latency: Latencies::default(),
            errors: ErrorCounts::default(),
            sends: SendCounts::default(),
            delivered_in_window: 0,
            links_not_sent_connection_lost: 0,
            links_not_sent_queue_full: 0,
            links_not_sent_busy: 0,
            links_requested_in_window: 0,
            links_completed_in_window: 0,
            address_mismatches: 0,
            signed_out: 0,
            closed_after_sign_out: 0,
            error_packets: 0,
            refusals: 0,
            decode_errors: 0,
            foreign_messages: 0,
            foreign_notices: 0,
            course: Course::new(
                cfg.users,
                (0..cfg.users).collect(),
                now_us,
                cfg.connect_rate_per_s,
                cfg.progress,
            ),
            link_plan: None,
            next_link: 0,
        })
    }
    fn finish(run: Run<'_>) -> MatouOutcome {
        run.finish()
    }
    fn report(
        cfg: &MatouConfig,
        _seed: u64,
        strict: bool,
        outcome: &MatouOutcome,
    ) -> report::Report {
        report::Report::new(cfg, cfg.senders, strict, outcome)
    }
    /// The latencies the report measures the server by (written and plotted), then the
    /// loadgen's own lags (written, not plotted).
    fn histograms(outcome: &MatouOutcome) -> (Named<'_>, Named<'_>) {
        (
            vec![
                ("delivery", &outcome.latency.delivery),
                ("connect", &outcome.latency.connect),
                ("link", &outcome.latency.link),
                ("link-notify", &outcome.latency.link_notify),
            ],
            outcome.latency.own.named().to_vec(),
        )
    }
    fn progress(cfg: &MatouConfig) -> bool {
        cfg.progress
    }
    fn unreachable(cfg: &MatouConfig) -> String {
        format!("no user could join a MATOU server at {}", cfg.target)
    }
}

impl InMix for Matou {
    const ROW: Row = Protocol::Matou.row();
    const UNREACHABLE_IN_MIX: &'static str = "no user could join the MATOU server";
}

/// Whether `address` (the bytes of a PRIVATE_*_ADDRESS) is `ip`: 4 bytes for IPv4, 16 for IPv6.
pub fn address_is(address: &[u8], ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => address == v4.octets(),
        IpAddr::V6(v6) => address == v6.octets(),
    }
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
    /// Queues every due public message and link request, in intended-time order, then writes.
    fn send_due(&mut self) {
        if self.course.phase != Phase::Send {
            return;
        }
        self.io.bytes_since_send_check = 0;
        let now_us = self.io.clock.now_us();
        loop {
            let (public_us, link_us) = self.next_due_us();
            if public_us.min(link_us) > now_us {
                break;
            }
            if public_us <= link_us {
                self.send_public(public_us, now_us);
            } else {
                self.request_link(link_us, now_us);
            }
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
    type Message = Incoming;

    fn conn(&mut self, u: usize) -> Option<(&mut Loop, &mut Conn<()>)> {
        let user = self.users.get_mut(u)?;
        Some((&mut self.io, &mut user.conn))
    }
    fn link(&self, u: usize) -> Link {
        match self.users.get(u).map(|user| user.phase) {
            Some(UserPhase::Connecting) => Link::Connecting,
            Some(UserPhase::AwaitResponse) => Link::Greeting,
            Some(UserPhase::Joined | UserPhase::SigningOut) => Link::Joined,
            _ => Link::Down,
        }
    }
    fn on_connected(&mut self, u: usize) -> io::Result<()> {
        let user = &mut self.users[u];
        // The server tells peers this address: the checks compare against it.
        let local = user.conn.stream.as_ref().map(|stream| stream.local_addr());
        if let Some(local) = local {
            user.ip = Some(local?.ip());
        }
        user.conn.out.extend(&wire::connect_request(&user.name));
        user.phase = UserPhase::AwaitResponse;
        Ok(())
    }
    fn decode(&mut self, u: usize) -> Result<Option<Incoming>, String> {
        let decoded = wire::decode(
            &mut self.users[u].conn.inbuf,
            &self.limits,
            self.cfg.run_id,
            self.cfg.users,
        );
        if decoded.is_err() {
            self.decode_errors += 1;
        }
        decoded.map_err(|e| e.to_string())
    }
    fn on_message(&mut self, u: usize, incoming: Incoming, now_us: u64) {
        self.on_packet(u, incoming, now_us);
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
        if let Some(why) = failure {
            self.fail(u, ErrorKind::Write, || why);
        }
    }
}

impl Staged for Run<'_> {
    const WAVE_TIMEOUT: &'static str = "timed out before its CONNECT_RESPONSE came back";

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
        self.pool = (0..self.users.len())
            .filter(|&u| self.users[u].phase == UserPhase::Joined)
            .collect();
        if self.pool.is_empty() {
            return Err(self.errors.unreachable("no user joined"));
        }
        for &u in &self.pool {
            self.users[u].in_room_after_ramp = true;
        }
        self.senders = choose_senders(&self.pool, self.cfg.senders, self.cfg.seed);
        for (ordinal, &u) in self.senders.iter().enumerate() {
            self.users[u].sender = Some(ordinal as u32);
        }
        self.accounting = Accounting::new(self.users.len(), self.senders.len());
        let start_us = now_us + START_DELAY_US;
        self.course.plan = Some(Plan::new(
            self.senders.len() as u32,
            self.cfg.rate_per_s,
            start_us,
            self.cfg.warmup_us,
            self.cfg.duration_us,
        ));
        // A link needs two users.
        if self.cfg.private_rate_per_s > 0 && self.pool.len() >= 2 {
            self.link_plan = Some(Plan::new(
                1,
                self.cfg.private_rate_per_s,
                start_us,
                self.cfg.warmup_us,
                self.cfg.duration_us,
            ));
        }
        Ok(())
    }
    fn sends_over(&self) -> bool {
        Plan::all_taken(self.course.plan.as_ref(), self.course.next_g)
            && self
                .link_plan
                .as_ref()
                .is_none_or(|p| self.next_link >= p.messages)
    }
    fn next_send_us(&self) -> u64 {
        let (public, link) = self.next_due_us();
        public.min(link)
    }
    fn drain_us(&self) -> u64 {
        self.cfg.drain_us
    }
    /// Every written message at every user still in the room, every link complete (or
    /// broken).
    fn everything_arrived(&self) -> bool {
        if self.links.open_count() > 0 {
            return false;
        }
        let users = &self.users;
        let live = users
            .iter()
            .filter(|u| u.phase == UserPhase::Joined)
            .count() as u64;
        self.accounting
            .complete(|r| users[r].phase == UserPhase::Joined, live)
    }
    /// Every user still in the room signs out; the server must close each within
    /// `--sign-out-wait`. Public messages still queued will not be sent.
    fn start_closing(&mut self, now_us: u64) -> Phase {
        for u in 0..self.users.len() {
            let user = &mut self.users[u];
            self.sends.not_sent_at_end += user.conn.queue.len() as u64;
            user.conn.queue.clear();
            if user.phase == UserPhase::Joined {
                user.conn.out.extend(&wire::public_sign_out());
                user.phase = UserPhase::SigningOut;
                self.signed_out += 1;
                self.io.dirty.mark(u);
            }
        }
        engine::flush_dirty(self);
        Phase::Close {
            deadline_us: Some(now_us + self.cfg.sign_out_wait_us),
        }
    }
    fn closed(&mut self, _now_us: u64) -> bool {
        self.signing_out() == 0
    }
    fn doing(&self) -> String {
        match self.course.phase {
            Phase::Ramp => format!(
                "ramp-up: {} of {} joined",
                self.users.iter().filter(|u| u.joined).count(),
                self.users.len()
            ),
            Phase::Send | Phase::Drain { .. } => format!(
                "sent {} of {}, delivered {}, links {} of {}",
                self.sends.sent,
                self.course.plan.as_ref().map_or(0, |p| p.messages),
                self.accounting.counts().delivered,
                self.links.counts().complete,
                self.link_plan.as_ref().map_or(0, |p| p.messages),
            ),
            Phase::Close { .. } => {
                format!("signing out: {} not closed yet", self.signing_out())
            }
            Phase::Done => String::new(),
        }
    }
    fn errors(&self) -> &ErrorCounts {
        &self.errors
    }
}

impl Run<'_> {
    /// The next public message's and the next link's intended times (`u64::MAX`: none left).
    fn next_due_us(&self) -> (u64, u64) {
        let (plan, next_g) = (self.course.plan.as_ref(), self.course.next_g);
        let public = plan
            .filter(|p| next_g < p.messages)
            .map_or(u64::MAX, |p| p.intended_us(next_g));
        let link = self
            .link_plan
            .as_ref()
            .filter(|p| self.next_link < p.messages)
            .map_or(u64::MAX, |p| p.intended_us(self.next_link));
        (public, link)
    }

    fn signing_out(&self) -> usize {
        self.users
            .iter()
            .filter(|u| u.phase == UserPhase::SigningOut)
            .count()
    }

    fn send_public(&mut self, intended_us: u64, now_us: u64) {
        let Some(plan) = self.course.plan.as_ref() else {
            return;
        };
        let due = Due {
            g: self.course.next_g,
            intended_us,
            noticed_us: now_us,
        };
        self.course.next_g += 1;
        let u = self.senders[plan.sender_of(due.g) as usize];
        if self.users[u].phase != UserPhase::Joined {
            self.sends.not_sent_connection_lost += 1;
            return;
        }
        let content = &mut self.content_buf[..self.cfg.message_bytes];
        let stamp = Stamp {
            run_id: self.cfg.run_id,
            sender: u as u32,
            seq: (due.g / u64::from(plan.senders)) as u32,
            intended_us,
        };
        if stamp::write(content, &stamp).is_err() {
            self.sends.not_sent_queue_full += 1; // cannot happen: the arguments are checked
            return;
        }
        let packet = wire::public_message(content);
        let user = &mut self.users[u];
        if queue_full(user.conn.queue.len(), user.conn.out.pending(), packet.len()) {
            self.sends.not_sent_queue_full += 1;
            return;
        }
        user.conn.out.extend(&packet);
        user.conn
            .queue
            .push_back(Queued::new(&user.conn.out, &due, ()));
        plan.record_lateness(&due, &mut self.latency.own.schedule_lateness);
        self.io.dirty.mark(u);
    }

    /// Draws a free (Src, Dst) pair and queues Src's PRIVATE_REQUEST.
    fn request_link(&mut self, intended_us: u64, now_us: u64) {
        let Some(plan) = self.link_plan.as_ref() else {
            return;
        };
        self.next_link += 1;
        let n = self.pool.len() as u64;
        let mut drawn = None;
        for _ in 0..PAIR_DRAWS_MAX {
            let s = (self.link_rng.next() % n) as usize;
            let mut d = (self.link_rng.next() % (n - 1)) as usize;
            if d >= s {
                d += 1;
            }
            let (src, dst) = (self.pool[s], self.pool[d]);
            if !self.links.busy(src as u32, dst as u32) {
                drawn = Some((src, dst));
                break;
            }
        }
        let Some((src, dst)) = drawn else {
            self.links_not_sent_busy += 1;
            return;
        };
        if self.users[src].phase != UserPhase::Joined || self.users[dst].phase != UserPhase::Joined
        {
            self.links_not_sent_connection_lost += 1;
            return;
        }
        let packet = wire::private_request(&self.users[dst].name);
        let user = &self.users[src];
        if user.conn.out.pending() + packet.len() > SEND_QUEUE_BYTES_MAX {
            self.links_not_sent_queue_full += 1;
            return;
        }
        if !plan.is_warmup(intended_us) {
            self.latency
                .own
                .schedule_lateness
                .record(now_us.saturating_sub(intended_us));
        }
        if plan.in_window(now_us) {
            self.links_requested_in_window += 1;
        }
        self.links.open(src as u32, dst as u32, intended_us);
        self.users[src].conn.out.extend(&packet);
        self.io.dirty.mark(src);
    }

    /// EOF or a read error: expected after a sign-out, an error otherwise.
    fn on_server_close(&mut self, u: usize, why: String) {
        let user = &mut self.users[u];
        if user.phase == UserPhase::SigningOut {
            user.phase = UserPhase::Closed;
            self.closed_after_sign_out += 1;
            if let Some(mut stream) = user.conn.stream.take() {
                let _ = self.io.poll.registry().deregister(&mut stream);
            }
            return;
        }
        engine::lost(self, u, why);
    }

    fn violation(&mut self, u: usize, why: impl FnOnce() -> String) {
        let name = &self.users[u].name;
        self.errors
            .count(ErrorKind::Protocol, || format!("user {name}: {}", why()));
    }

    fn on_packet(&mut self, u: usize, incoming: Incoming, now_us: u64) {
        if self.users[u].phase == UserPhase::AwaitResponse {
            match incoming {
                Incoming::ConnectResponse { accepted: true } => {
                    let user = &mut self.users[u];
                    user.phase = UserPhase::Joined;
                    user.joined = true;
                    let intended_us = self.course.wave.intended_us(u);
                    self.latency
                        .connect
                        .record(now_us.saturating_sub(intended_us));
                    self.course.wave.settle(u);
                }
                Incoming::ConnectResponse { accepted: false } => {
                    self.refusals += 1;
                    self.fail(u, ErrorKind::Connect, || {
                        "name refused (CONNECT_RESPONSE 0)".to_string()
                    });
                }
                Incoming::Error { code, reason } => {
                    self.error_packets += 1;
                    self.fail(u, ErrorKind::Connect, || {
                        format!(
                            "ERROR {code} before acceptance: {}",
                            String::from_utf8_lossy(&reason)
                        )
                    });
                }
                other => self.violation(u, || format!("{other:?} before CONNECT_RESPONSE")),
            }
            return;
        }
        match incoming {
            Incoming::ConnectResponse { accepted } => {
                self.violation(u, || {
                    format!("CONNECT_RESPONSE {accepted} after acceptance")
                });
            }
            Incoming::ConnectNotify(Peer::Ours(v)) => {
                self.join_ledger.on_notice(u, v);
            }
            Incoming::SignOutNotify(Peer::Ours(v)) => {
                self.sign_out_ledger.on_notice(u, v);
            }
            Incoming::ConnectNotify(Peer::Foreign) | Incoming::SignOutNotify(Peer::Foreign) => {
                self.foreign_notices += 1;
            }
            Incoming::Broadcast { username, message } => {
                self.on_broadcast(u, &username, &message, now_us);
            }
            Incoming::RequestNotify { src } => {
                match self.links.on_request_notify(u as u32, src as u32) {
                    Ok(k) => {
                        if let Some(link) = self.links.get(k) {
                            if self
                                .link_plan
                                .as_ref()
                                .is_some_and(|p| !p.is_warmup(link.intended_us))
                            {
                                self.latency
                                    .link_notify
                                    .record(now_us.saturating_sub(link.intended_us));
                            }
                        }
                        let accept = wire::private_accept(&self.users[src].name);
                        self.users[u].conn.out.extend(&accept);
                        self.io.dirty.mark(u);
                    }
                    Err(e) => self.unexpected(u, "PRIVATE_REQUEST_NOTIFY", src, e),
                }
            }
            Incoming::DstAddress { dst, address } => {
                match self.links.on_dst_address(u as u32, dst as u32) {
                    Ok(k) => {
                        self.check_address(u, "PRIVATE_DST_ADDRESS", dst, &address);
                        let (message_port, file_port) = links::ports(k);
                        let ports =
                            wire::private_src_ports(&self.users[dst].name, message_port, file_port);
                        self.users[u].conn.out.extend(&ports);
                        self.io.dirty.mark(u);
                    }
                    Err(e) => self.unexpected(u, "PRIVATE_DST_ADDRESS", dst, e),
                }
            }
            Incoming::SrcAddress {
                src,
                address,
                message_port,
                file_port,
            } => match self
                .links
                .on_src_address(u as u32, src as u32, message_port, file_port)
            {
                Ok(link) => {
                    self.check_address(u, "PRIVATE_SRC_ADDRESS", src, &address);
                    if let Some(plan) = self.link_plan.as_ref() {
                        let latency = &mut self.latency.link;
                        let in_window = &mut self.links_completed_in_window;
                        plan.record_arrival(link.intended_us, now_us, latency, in_window);
                    }
                }
                Err(e) => self.unexpected(u, "PRIVATE_SRC_ADDRESS", src, e),
            },
            Incoming::Error { code, reason } => {
                self.error_packets += 1;
                self.violation(u, || {
                    format!("ERROR {code}: {}", String::from_utf8_lossy(&reason))
                });
            }
            Incoming::Violation(why) => self.violation(u, || why),
        }
    }

    fn unexpected(&mut self, u: usize, what: &str, peer: usize, e: Unexpected) {
        let peer = self.users[peer].name.clone();
        self.violation(u, || {
            format!("{what} naming {peer} fits no open link: {e:?}")
        });
    }

    /// Counts an address that is not the peer's as the server sees it.
    fn check_address(&mut self, u: usize, what: &str, peer: usize, address: &[u8]) {
        if self.users[peer]
            .ip
            .is_some_and(|ip| address_is(address, ip))
        {
            return;
        }
        self.address_mismatches += 1;
        let expected = self.users[peer].ip;
        self.violation(u, || {
            format!("{what} gives address {address:?} for a peer at {expected:?}")
        });
    }

    fn on_broadcast(&mut self, u: usize, username: &[u8], message: &[u8], now_us: u64) {
        let stamp = match stamp::read(message, self.cfg.run_id) {
            stamp::Read::Ours(stamp) => stamp,
            stamp::Read::Foreign => {
                self.foreign_messages += 1;
                return;
            }
            stamp::Read::Malformed(why) => {
                self.violation(u, || format!("PUBLIC_BROADCAST: {why}"));
                return;
            }
        };
        let Some((ordinal, g)) = self.check_broadcast(username, &stamp) else {
            let username = String::from_utf8_lossy(username).into_owned();
            self.violation(u, || {
                format!(
                    "a PUBLIC_BROADCAST that does not match the plan (from {username}, {stamp:?})"
                )
            });
            return;
        };
        if self
            .accounting
            .on_delivered(u, ordinal, u64::from(stamp.seq))
            == SeqOutcome::Behind
        {
            return; // a duplicate: counted, timed once
        }
        if let Some(plan) = self.course.plan.as_ref() {
            // The check found the plan's intended time for `g` in the stamp.
            debug_assert_eq!(plan.intended_us(g), stamp.intended_us);
            let (latency, in_window) = (&mut self.latency.delivery, &mut self.delivered_in_window);
            plan.record_arrival(stamp.intended_us, now_us, latency, in_window);
        }
    }

    /// The sender ordinal and plan number of a broadcast, if every field agrees with the plan.
    fn check_broadcast(&self, username: &[u8], stamp: &Stamp) -> Option<(usize, u64)> {
        let plan = self.course.plan.as_ref()?;
        let sender_user = self.users.get(usize::try_from(stamp.sender).ok()?)?;
        let ordinal = sender_user.sender?;
        let g = u64::from(stamp.seq) * u64::from(plan.senders) + u64::from(ordinal);
        let agrees = username == sender_user.name.as_bytes()
            && g < plan.messages
            && plan.intended_us(g) == stamp.intended_us;
        agrees.then_some((ordinal as usize, g))
    }

    /// Counts the error, closes the connection and takes the user out of the run.
    fn fail(&mut self, u: usize, kind: ErrorKind, describe: impl FnOnce() -> String) {
        if matches!(self.users[u].phase, UserPhase::Failed | UserPhase::Closed) {
            return;
        }
        self.course.wave.settle(u);
        self.links.break_user(u as u32);
        let user = &mut self.users[u];
        user.phase = UserPhase::Failed;
        self.sends.not_sent_connection_lost += user.conn.close(self.io.poll.registry());
        let name = user.name.clone();
        let target = self.cfg.target;
        self.errors
            .count(kind, || format!("{target} user {name}: {}", describe()));
    }

    pub fn finish(mut self) -> MatouOutcome {
        let times = self.course.times(self.io.clock.now_us());
        self.sends.not_sent_at_end += engine::close_all(&mut self);
        let users = &self.users;
        let users_joined = users.iter().filter(|u| u.joined).count();
        let undelivered = self.accounting.undelivered(|r| users[r].joined);
        let join_check = self
            .join_ledger
            .check(|u| users[u].in_room_after_ramp, true);
        // Sign-outs: the users the server closed after their sign-out; none hears of itself.
        let sign_out_check = self
            .sign_out_ledger
            .check(|u| users[u].phase == UserPhase::Closed, false);
        MatouOutcome {
            users_requested: self.cfg.users,
            users_joined,
            plan: self.course.plan_or_empty(),
            link_plan: self.link_plan.clone(),
            latency: self.latency,
            seq: self.accounting.counts(),
            undelivered,
            expected_deliveries: self.accounting.sent_total() * users_joined as u64,
            errors: self.errors,
            sends: self.sends,
            delivered_in_window: self.delivered_in_window,
            links: self.links.counts(),
            links_not_sent_connection_lost: self.links_not_sent_connection_lost,
            links_not_sent_queue_full: self.links_not_sent_queue_full,
            links_not_sent_busy: self.links_not_sent_busy,
            links_requested_in_window: self.links_requested_in_window,
            links_completed_in_window: self.links_completed_in_window,
            address_mismatches: self.address_mismatches,
            join_notices: Notices {
                received: self.join_ledger.received,
                duplicates: self.join_ledger.duplicates,
                check: join_check,
            },
            sign_out_notices: Notices {
                received: self.sign_out_ledger.received,
                duplicates: self.sign_out_ledger.duplicates,
                check: sign_out_check,
            },
            signed_out: self.signed_out,
            closed_after_sign_out: self.closed_after_sign_out,
            error_packets: self.error_packets,
            refusals: self.refusals,
            decode_errors: self.decode_errors,
            foreign_messages: self.foreign_messages,
            foreign_notices: self.foreign_notices,
            ramp_us: times.ramp_us,
            drain_used_us: times.drain_used_us,
            drain_timed_out: times.drain_timed_out,
            sign_out_wait_used_us: times.close_used_us,
        }
    }
}
