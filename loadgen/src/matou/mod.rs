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
//! It runs on the engine ([`crate::engine::Run`]), as the other TCP scenarios: one mio poll,
//! sockets registered READABLE|WRITABLE once, readiness kept in userland, the pacer's timerfd
//! waking it on the plan's microsecond.

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

use crate::args::Pace;
use crate::course::Phase;
use crate::driver::{queue_full, RunError, SentReceived, SEND_QUEUE_BYTES_MAX};
use crate::engine::{self, ClientOf, Stage, Wire};
use crate::plan::{choose_senders, Due, Plan, SplitMix64};
use crate::registry::{Named, Protocol, Row, ScenarioKind};
use crate::report::Ran;
use crate::sockio::{Chunk, Queued};
use crate::stats::{ErrorKind, LatencyHistogram, OwnLags, SeqCounts, SeqOutcome};
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
    /// Links requested per second (0: none).
    pub private_rate_per_s: u64,
    /// Longest wait, after the sign-outs, for the server to close every user.
    pub sign_out_wait_us: u64,
    /// Bytes of each public message, the stamp included.
    pub message_bytes: usize,
    pub run_id: u32,
    /// Its rate, phases' lengths, ramp-up pace, seed and progress line.
    pub pace: Pace,
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
    pub ran: Ran,
    pub link_plan: Option<Plan>,
    pub latency: Latencies,
    pub seq: SeqCounts,
    pub undelivered: u64,
    /// Messages written times the users that joined.
    pub expected_deliveries: u64,
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
    pub sign_out_wait_used_us: u64,
}

pub struct User {
    name: String,
    /// This user's address as the server sees it (its socket's local address).
    ip: Option<IpAddr>,
    /// Joined at some point: its deliveries count as expected from then on.
    joined: bool,
    /// Still joined when the ramp-up ended: it heard every join notice.
    in_room_after_ramp: bool,
}

/// The run: the engine's, over MATOU's part.
pub type Run<'a> = engine::Run<Part<'a>>;

/// MATOU's part of the run.
pub struct Part<'a> {
    cfg: &'a MatouConfig,
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
    link_plan: Option<Plan>,
    next_link: u64,
}

/// The scenario as the registry lists it.
pub struct Matou;

impl ScenarioKind for Matou {
    const ROW: Row = Protocol::Matou.row();
    const UNREACHABLE_IN_MIX: &'static str = "no user could join the MATOU server";
    type Config = MatouConfig;
    type Run<'a> = Run<'a>;
    type Outcome = MatouOutcome;
    type Report = report::Report;

    fn start(cfg: &MatouConfig) -> Result<Run<'_>, RunError> {
        let users = (0..cfg.users).map(|i| User {
            name: wire::user_name(cfg.run_id, i),
            ip: None,
            joined: false,
            in_room_after_ramp: false,
        });
        let part = Part {
            cfg,
            pool: Vec::new(),
            accounting: Accounting::new(0, 0),
            links: Links::new(),
            join_ledger: NoticeLedger::new(cfg.users),
            sign_out_ledger: NoticeLedger::new(cfg.users),
            link_rng: SplitMix64(cfg.pace.seed ^ LINK_SEED_SALT),
            limits: Limits::default(),
            content_buf: vec![0; cfg.message_bytes.max(stamp::STAMP_BYTES)],
            latency: Latencies::default(),
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
            link_plan: None,
            next_link: 0,
        };
        engine::Run::paced(part, users, |n| (0..n).collect(), &cfg.pace)
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
        cfg.pace.progress
    }
    fn unreachable(cfg: &MatouConfig) -> String {
        format!("no user could join a MATOU server at {}", cfg.target)
    }
}

/// Whether `address` (the bytes of a PRIVATE_*_ADDRESS) is `ip`: 4 bytes for IPv4, 16 for IPv6.
pub fn address_is(address: &[u8], ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => address == v4.octets(),
        IpAddr::V6(v6) => address == v6.octets(),
    }
}

impl Wire for Part<'_> {
    type User = User;
    type Tag = ();
    type Message = Incoming;
    const WAVE_TIMEOUT: &'static str = "timed out before its CONNECT_RESPONSE came back";

    fn target(&self, _c: &ClientOf<Self>) -> SocketAddr {
        self.cfg.target
    }
    fn who(&self, _u: usize, c: &ClientOf<Self>) -> String {
        format!("{} user {}", self.cfg.target, c.name)
    }
    fn greet(run: &mut Run<'_>, u: usize) -> io::Result<()> {
        let user = &mut run.clients[u];
        // The server tells peers this address: the checks compare against it.
        let local = user.conn.stream.as_ref().map(|stream| stream.local_addr());
        if let Some(local) = local {
            user.ip = Some(local?.ip());
        }
        user.conn.out.extend(&wire::connect_request(&user.name));
        Ok(())
    }
    fn decode(run: &mut Run<'_>, u: usize) -> Result<Option<Incoming>, String> {
        let cfg = run.p.cfg;
        let inbuf = &mut run.clients[u].conn.inbuf;
        let decoded = wire::decode(inbuf, &run.p.limits, cfg.run_id, cfg.users);
        if decoded.is_err() {
            run.p.decode_errors += 1;
        }
        decoded.map_err(|e| e.to_string())
    }
    fn on_message(run: &mut Run<'_>, u: usize, incoming: Incoming, now_us: u64) {
        run.on_packet(u, incoming, now_us);
    }
    /// EOF or a read error: expected after a sign-out, an error otherwise.
    fn on_server_close(run: &mut Run<'_>, u: usize, ended: Chunk) {
        if run.clients[u].stage == Stage::Leaving {
            run.closed_by_server(u);
            run.p.closed_after_sign_out += 1;
            return;
        }
        run.lost(u, ended.why());
    }
    fn failed(run: &mut Run<'_>, u: usize, _was: Stage) {
        run.p.links.break_user(u as u32);
    }
    fn on_sent(&mut self, _u: usize, sender: Option<u32>, _queued: &Queued<()>, _lag_us: u64) {
        if let Some(ordinal) = sender {
            self.accounting.on_sent(ordinal as usize);
        }
    }
    /// Queues every due public message and link request, in intended-time order.
    fn send_due(run: &mut Run<'_>, now_us: u64) {
        loop {
            let (public_us, link_us) = run.next_due_us();
            if public_us.min(link_us) > now_us {
                break;
            }
            if public_us <= link_us {
                run.send_public(public_us, now_us);
            } else {
                run.request_link(link_us, now_us);
            }
        }
    }
    fn counts(run: &Run<'_>) -> SentReceived {
        SentReceived {
            sent: run.sends.sent,
            received: run.p.accounting.counts().delivered,
        }
    }
    fn start_sending(run: &mut Run<'_>, now_us: u64) -> Result<(), RunError> {
        let cfg = run.p.cfg;
        run.p.pool = run.joined_among(run.clients.len());
        if run.p.pool.is_empty() {
            return Err(run.errors.unreachable("no user joined"));
        }
        for &u in &run.p.pool {
            run.clients[u].in_room_after_ramp = true;
        }
        let senders = choose_senders(&run.p.pool, cfg.senders, cfg.pace.seed);
        let senders_count = senders.len();
        let start_us = run.plan_over(senders, &cfg.pace, now_us).start_us;
        run.p.accounting = Accounting::new(run.clients.len(), senders_count);
        // A link needs two users.
        if cfg.private_rate_per_s > 0 && run.p.pool.len() >= 2 {
            run.p.link_plan = Some(Plan::new(
                1,
                cfg.private_rate_per_s,
                start_us,
                cfg.pace.warmup_us,
                cfg.pace.duration_us,
            ));
        }
        Ok(())
    }
    fn sends_over(run: &Run<'_>) -> bool {
        Plan::all_taken(run.course.plan.as_ref(), run.course.next_g)
            && (run.p.link_plan.as_ref()).is_none_or(|p| run.p.next_link >= p.messages)
    }
    fn next_send_us(run: &Run<'_>) -> u64 {
        let (public, link) = run.next_due_us();
        public.min(link)
    }
    fn drain_us(&self) -> u64 {
        self.cfg.pace.drain_us
    }
    /// Every written message at every user still in the room, every link complete (or
    /// broken).
    fn everything_arrived(run: &Run<'_>) -> bool {
        if run.p.links.open_count() > 0 {
            return false;
        }
        let users = &run.clients;
        let live = run.count_at(Stage::Joined) as u64;
        (run.p.accounting).complete(|r| users[r].stage == Stage::Joined, live)
    }
    /// Every user still in the room signs out; the server must close each within
    /// `--sign-out-wait`. Public messages still queued will not be sent.
    fn start_closing(run: &mut Run<'_>, now_us: u64) -> Phase {
        for u in 0..run.clients.len() {
            let user = &mut run.clients[u];
            run.sends.not_sent_at_end += user.conn.queue.len() as u64;
            user.conn.queue.clear();
            if user.stage == Stage::Joined {
                user.conn.out.extend(&wire::public_sign_out());
                user.stage = Stage::Leaving;
                run.p.signed_out += 1;
                run.io.dirty.mark(u);
            }
        }
        run.flush_dirty();
        Phase::Close {
            deadline_us: Some(now_us + run.p.cfg.sign_out_wait_us),
        }
    }
    fn closed(run: &mut Run<'_>, _now_us: u64) -> bool {
        run.count_at(Stage::Leaving) == 0
    }
    fn doing(run: &Run<'_>) -> String {
        match run.course.phase {
            Phase::Ramp => format!(
                "ramp-up: {} of {} joined",
                run.clients.iter().filter(|u| u.joined).count(),
                run.clients.len()
            ),
            Phase::Send | Phase::Drain { .. } => format!(
                "sent {} of {}, delivered {}, links {} of {}",
                run.sends.sent,
                run.course.plan.as_ref().map_or(0, |p| p.messages),
                run.p.accounting.counts().delivered,
                run.p.links.counts().complete,
                run.p.link_plan.as_ref().map_or(0, |p| p.messages),
            ),
            Phase::Close { .. } => {
                format!(
                    "signing out: {} not closed yet",
                    run.count_at(Stage::Leaving)
                )
            }
            Phase::Done => String::new(),
        }
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
            .p
            .link_plan
            .as_ref()
            .filter(|p| self.p.next_link < p.messages)
            .map_or(u64::MAX, |p| p.intended_us(self.p.next_link));
        (public, link)
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
        if self.clients[u].stage != Stage::Joined {
            self.sends.not_sent_connection_lost += 1;
            return;
        }
        let content = &mut self.p.content_buf[..self.p.cfg.message_bytes];
        let stamp = Stamp {
            run_id: self.p.cfg.run_id,
            sender: u as u32,
            seq: (due.g / u64::from(plan.senders)) as u32,
            intended_us,
        };
        if stamp::write(content, &stamp).is_err() {
            self.sends.not_sent_queue_full += 1; // cannot happen: the arguments are checked
            return;
        }
        let packet = wire::public_message(content);
        let user = &mut self.clients[u];
        if queue_full(user.conn.queue.len(), user.conn.out.pending(), packet.len()) {
            self.sends.not_sent_queue_full += 1;
            return;
        }
        user.conn.out.extend(&packet);
        user.conn
            .queue
            .push_back(Queued::new(&user.conn.out, &due, ()));
        plan.record_lateness(&due, &mut self.own.schedule_lateness);
        self.io.dirty.mark(u);
    }

    /// Draws a free (Src, Dst) pair and queues Src's PRIVATE_REQUEST.
    fn request_link(&mut self, intended_us: u64, now_us: u64) {
        let Some(plan) = self.p.link_plan.as_ref() else {
            return;
        };
        self.p.next_link += 1;
        let n = self.p.pool.len() as u64;
        let mut drawn = None;
        for _ in 0..PAIR_DRAWS_MAX {
            let s = (self.p.link_rng.next() % n) as usize;
            let mut d = (self.p.link_rng.next() % (n - 1)) as usize;
            if d >= s {
                d += 1;
            }
            let (src, dst) = (self.p.pool[s], self.p.pool[d]);
            if !self.p.links.busy(src as u32, dst as u32) {
                drawn = Some((src, dst));
                break;
            }
        }
        let Some((src, dst)) = drawn else {
            self.p.links_not_sent_busy += 1;
            return;
        };
        if self.clients[src].stage != Stage::Joined || self.clients[dst].stage != Stage::Joined {
            self.p.links_not_sent_connection_lost += 1;
            return;
        }
        let packet = wire::private_request(&self.clients[dst].name);
        let user = &self.clients[src];
        if user.conn.out.pending() + packet.len() > SEND_QUEUE_BYTES_MAX {
            self.p.links_not_sent_queue_full += 1;
            return;
        }
        if !plan.is_warmup(intended_us) {
            self.own
                .schedule_lateness
                .record(now_us.saturating_sub(intended_us));
        }
        if plan.in_window(now_us) {
            self.p.links_requested_in_window += 1;
        }
        self.p.links.open(src as u32, dst as u32, intended_us);
        self.clients[src].conn.out.extend(&packet);
        self.io.dirty.mark(src);
    }

    fn violation(&mut self, u: usize, why: impl FnOnce() -> String) {
        let name = &self.clients[u].name;
        self.errors
            .count(ErrorKind::Protocol, || format!("user {name}: {}", why()));
    }

    fn on_packet(&mut self, u: usize, incoming: Incoming, now_us: u64) {
        if self.clients[u].stage == Stage::Greeting {
            match incoming {
                Incoming::ConnectResponse { accepted: true } => {
                    let user = &mut self.clients[u];
                    user.stage = Stage::Joined;
                    user.joined = true;
                    let intended_us = self.course.wave.intended_us(u);
                    self.p
                        .latency
                        .connect
                        .record(now_us.saturating_sub(intended_us));
                    self.course.wave.settle(u);
                }
                Incoming::ConnectResponse { accepted: false } => {
                    self.p.refusals += 1;
                    let why = "name refused (CONNECT_RESPONSE 0)".to_string();
                    self.fail(u, ErrorKind::Connect, why);
                }
                Incoming::Error { code, reason } => {
                    self.p.error_packets += 1;
                    let reason = String::from_utf8_lossy(&reason);
                    let why = format!("ERROR {code} before acceptance: {reason}");
                    self.fail(u, ErrorKind::Connect, why);
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
                self.p.join_ledger.on_notice(u, v);
            }
            Incoming::SignOutNotify(Peer::Ours(v)) => {
                self.p.sign_out_ledger.on_notice(u, v);
            }
            Incoming::ConnectNotify(Peer::Foreign) | Incoming::SignOutNotify(Peer::Foreign) => {
                self.p.foreign_notices += 1;
            }
            Incoming::Broadcast { username, message } => {
                self.on_broadcast(u, &username, &message, now_us);
            }
            Incoming::RequestNotify { src } => {
                match self.p.links.on_request_notify(u as u32, src as u32) {
                    Ok(k) => {
                        if let Some(link) = self.p.links.get(k) {
                            if self
                                .p
                                .link_plan
                                .as_ref()
                                .is_some_and(|p| !p.is_warmup(link.intended_us))
                            {
                                self.p
                                    .latency
                                    .link_notify
                                    .record(now_us.saturating_sub(link.intended_us));
                            }
                        }
                        let accept = wire::private_accept(&self.clients[src].name);
                        self.clients[u].conn.out.extend(&accept);
                        self.io.dirty.mark(u);
                    }
                    Err(e) => self.unexpected(u, "PRIVATE_REQUEST_NOTIFY", src, e),
                }
            }
            Incoming::DstAddress { dst, address } => {
                match self.p.links.on_dst_address(u as u32, dst as u32) {
                    Ok(k) => {
                        self.check_address(u, "PRIVATE_DST_ADDRESS", dst, &address);
                        let (message_port, file_port) = links::ports(k);
                        let ports = wire::private_src_ports(
                            &self.clients[dst].name,
                            message_port,
                            file_port,
                        );
                        self.clients[u].conn.out.extend(&ports);
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
                .p
                .links
                .on_src_address(u as u32, src as u32, message_port, file_port)
            {
                Ok(link) => {
                    self.check_address(u, "PRIVATE_SRC_ADDRESS", src, &address);
                    if let Some(plan) = self.p.link_plan.as_ref() {
                        let latency = &mut self.p.latency.link;
                        let in_window = &mut self.p.links_completed_in_window;
                        plan.record_arrival(link.intended_us, now_us, latency, in_window);
                    }
                }
                Err(e) => self.unexpected(u, "PRIVATE_SRC_ADDRESS", src, e),
            },
            Incoming::Error { code, reason } => {
                self.p.error_packets += 1;
                self.violation(u, || {
                    format!("ERROR {code}: {}", String::from_utf8_lossy(&reason))
                });
            }
            Incoming::Violation(why) => self.violation(u, || why),
        }
    }

    fn unexpected(&mut self, u: usize, what: &str, peer: usize, e: Unexpected) {
        let peer = self.clients[peer].name.clone();
        self.violation(u, || {
            format!("{what} naming {peer} fits no open link: {e:?}")
        });
    }

    /// Counts an address that is not the peer's as the server sees it.
    fn check_address(&mut self, u: usize, what: &str, peer: usize, address: &[u8]) {
        if self.clients[peer]
            .ip
            .is_some_and(|ip| address_is(address, ip))
        {
            return;
        }
        self.p.address_mismatches += 1;
        let expected = self.clients[peer].ip;
        self.violation(u, || {
            format!("{what} gives address {address:?} for a peer at {expected:?}")
        });
    }

    fn on_broadcast(&mut self, u: usize, username: &[u8], message: &[u8], now_us: u64) {
        let stamp = match stamp::read(message, self.p.cfg.run_id) {
            stamp::Read::Ours(stamp) => stamp,
            stamp::Read::Foreign => {
                self.p.foreign_messages += 1;
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
            .p
            .accounting
            .on_delivered(u, ordinal, u64::from(stamp.seq))
            == SeqOutcome::Behind
        {
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

    /// The sender ordinal and plan number of a broadcast, if every field agrees with the plan.
    fn check_broadcast(&self, username: &[u8], stamp: &Stamp) -> Option<(usize, u64)> {
        let plan = self.course.plan.as_ref()?;
        let sender_user = self.clients.get(usize::try_from(stamp.sender).ok()?)?;
        let ordinal = sender_user.sender?;
        let g = u64::from(stamp.seq) * u64::from(plan.senders) + u64::from(ordinal);
        let agrees = username == sender_user.name.as_bytes()
            && g < plan.messages
            && plan.intended_us(g) == stamp.intended_us;
        agrees.then_some((ordinal as usize, g))
    }

    pub fn finish(mut self) -> MatouOutcome {
        let times = self.course.times(self.io.clock.now_us());
        self.close_all();
        self.p.latency.own = std::mem::take(&mut self.own);
        let users = &self.clients;
        let users_joined = users.iter().filter(|u| u.joined).count();
        let undelivered = self.p.accounting.undelivered(|r| users[r].joined);
        let join_check = self
            .p
            .join_ledger
            .check(|u| users[u].in_room_after_ramp, true);
        // Sign-outs: the users the server closed after their sign-out; none hears of itself.
        let sign_out_check = self
            .p
            .sign_out_ledger
            .check(|u| users[u].stage == Stage::Closed, false);
        MatouOutcome {
            users_requested: self.p.cfg.users,
            users_joined,
            ran: self.ran(&times),
            link_plan: self.p.link_plan.clone(),
            latency: self.p.latency,
            seq: self.p.accounting.counts(),
            undelivered,
            expected_deliveries: self.p.accounting.sent_total() * users_joined as u64,
            delivered_in_window: self.p.delivered_in_window,
            links: self.p.links.counts(),
            links_not_sent_connection_lost: self.p.links_not_sent_connection_lost,
            links_not_sent_queue_full: self.p.links_not_sent_queue_full,
            links_not_sent_busy: self.p.links_not_sent_busy,
            links_requested_in_window: self.p.links_requested_in_window,
            links_completed_in_window: self.p.links_completed_in_window,
            address_mismatches: self.p.address_mismatches,
            join_notices: Notices {
                received: self.p.join_ledger.received,
                duplicates: self.p.join_ledger.duplicates,
                check: join_check,
            },
            sign_out_notices: Notices {
                received: self.p.sign_out_ledger.received,
                duplicates: self.p.sign_out_ledger.duplicates,
                check: sign_out_check,
            },
            signed_out: self.p.signed_out,
            closed_after_sign_out: self.p.closed_after_sign_out,
            error_packets: self.p.error_packets,
            refusals: self.p.refusals,
            decode_errors: self.p.decode_errors,
            foreign_messages: self.p.foreign_messages,
            foreign_notices: self.p.foreign_notices,
            sign_out_wait_used_us: times.close_used_us,
        }
    }
}
