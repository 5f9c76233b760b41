//! The TCP scenarios' engine: one generic scenario, [`Run`], over a per-protocol [`Wire`] part
//! (ROOM and RESP, BIN24, CCM, MATOU, OCM, the lobby).
//!
//! [`Run`] owns what every such scenario repeats: the [`Loop`], the [`Course`] of its phases,
//! the clients with their connections and stages, the senders, the error and send counts and
//! the loadgen's own lags. It keeps the readiness in userland, drives the non-blocking
//! connects, the read loop with its budget and its look at the clock for due sends, the flush
//! of every connection with bytes waiting, and the phases (see [`crate::course`]). The
//! protocol says what a client sends first, how its bytes decode, what a decoded message means
//! for the bookkeeping, what a write accounts for, and what its phases need; everything is
//! resolved at compile time (no boxing, no per-message allocation here).

use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use crate::args::Pace;
use crate::clock::Clock;
use crate::course::{Course, Phase, Times};
use crate::driver::{
    queue_full, Loop, Phases, Reactor, RunError, SentReceived, BYTES_PER_SEND_CHECK,
    READ_BUDGET_BYTES,
};
use crate::plan::{Due, Plan};
use crate::report::Ran;
use crate::sockio::{read_chunk, Chunk, Conn, Queued, SendCounts, SendLags};
use crate::stats::{ErrorCounts, ErrorKind, OwnLags};

/// Where a client's connection stands, as far as the engine is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Nothing to drive: not connected yet, failed or closed.
    Down,
    /// A non-blocking connect in flight.
    Connecting,
    /// Connected, waiting for the server to confirm the client.
    Greeting,
    /// Confirmed by the server: a read error now is a lost connection, not a failed join.
    Joined,
}

/// Where a client stands in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Not connected (waiting for its turn, or closed by the loadgen to connect again).
    Idle,
    /// Its turn came but the protocol holds it back (the lobby's OCM members until the room
    /// exists).
    Held,
    Connecting,
    /// Connected, its first bytes (being) written; waiting for the server to confirm it.
    Greeting,
    Joined,
    /// Joined and on its way out (MATOU's sign-out): waiting for the server to close it.
    Leaving,
    /// Closed by the server as the protocol expected (measured, not an error).
    Closed,
    /// Gave up on this connection (the error was counted).
    Failed,
}

/// One client: its connection, its stage, its sender ordinal in the plan if it sends, and
/// what only its protocol keeps (reached through `Deref`).
pub struct Client<U, T> {
    pub conn: Conn<T>,
    pub stage: Stage,
    pub sender: Option<u32>,
    pub user: U,
}

impl<U, T> Deref for Client<U, T> {
    type Target = U;
    fn deref(&self) -> &U {
        &self.user
    }
}

impl<U, T> DerefMut for Client<U, T> {
    fn deref_mut(&mut self) -> &mut U {
        &mut self.user
    }
}

/// A client of protocol `W`.
pub type ClientOf<W> = Client<<W as Wire>::User, <W as Wire>::Tag>;

/// A protocol's part of a TCP scenario: what the engine cannot know. Its functions get the
/// whole [`Run`] (`run.p` is the part itself).
pub trait Wire: Sized {
    /// What the protocol keeps per client.
    type User;
    /// What a queued message carries for its send accounting.
    type Tag: Copy;
    /// One decoded message from the server.
    type Message;
    /// Why a client still unsettled at the ramp-up's deadline failed.
    const WAVE_TIMEOUT: &'static str;

    /// Where client `c` connects.
    fn target(&self, c: &ClientOf<Self>) -> SocketAddr;
    /// Who client `u` (`c`) is in an error line ("127.0.0.1:7000 user lg00001").
    fn who(&self, u: usize, c: &ClientOf<Self>) -> String;
    /// The connect completed and the client is at [`Stage::Greeting`]: queue what it sends
    /// first (or move it on).
    fn greet(run: &mut Run<Self>, u: usize) -> io::Result<()>;
    /// The next whole message in client `u`'s read bytes, if there is one.
    fn decode(run: &mut Run<Self>, u: usize) -> Result<Option<Self::Message>, String>;
    /// What the message means for the run: all bookkeeping, and any answer queued.
    fn on_message(run: &mut Run<Self>, u: usize, message: Self::Message, now_us: u64);
    /// `run.io.read_buf[..n]` came from client `u`'s socket at `now_us`: by default, they are
    /// appended to its read bytes and every whole message is decoded and handed over (ROOM
    /// scans them where they are). False when the client can read no more.
    fn on_read(run: &mut Run<Self>, u: usize, n: usize, now_us: u64) -> bool {
        run.decode_read(u, n, now_us)
    }
    /// The socket has nothing more to read for now.
    fn on_drained(_run: &mut Run<Self>, _u: usize) {}
    /// EOF or a read error (`ended`); an error unless the protocol expected it.
    fn on_server_close(run: &mut Run<Self>, u: usize, ended: Chunk) {
        run.lost(u, ended.why());
    }
    /// The engine's way to fail a client; BIN24 retries some (see [`Run::close_failed`]).
    fn fail(run: &mut Run<Self>, u: usize, kind: ErrorKind, why: String) {
        run.close_failed(u, kind, || why);
    }
    /// Client `u` has just failed (closed, counted) at stage `was`: what the protocol undoes.
    fn failed(_run: &mut Run<Self>, _u: usize, _was: Stage) {}
    /// A message of client `u` (sender `sender`) went out completely, `lag_us` after its
    /// intended time.
    fn on_sent(&mut self, u: usize, sender: Option<u32>, queued: &Queued<Self::Tag>, lag_us: u64);
    /// Client `c` has nothing left to write.
    fn on_written(_c: &mut ClientOf<Self>, _clock: &Clock) {}
    /// The engine's view of client `u`'s connection (by default, from its stage).
    fn link(run: &Run<Self>, u: usize) -> Link {
        match run.clients.get(u).map(|c| c.stage) {
            Some(Stage::Connecting) => Link::Connecting,
            Some(Stage::Greeting) => Link::Greeting,
            Some(Stage::Joined | Stage::Leaving) => Link::Joined,
            _ => Link::Down,
        }
    }
    /// An event on a socket that is no client's connection (the lobby's OCM UDP sockets, which
    /// share the loop with its TCP clients); `index` is the token minus one.
    fn on_other_event(_run: &mut Run<Self>, _index: usize, _readable: bool, _writable: bool) {}
    /// Queues what is due at `now_us` (only in the send phase; the engine writes afterwards).
    fn send_due(run: &mut Run<Self>, now_us: u64);
    /// Client `u` was marked dirty (see [`Run::flush_dirty`]): by default its pending bytes are
    /// written; OCM also sends its member's queued datagrams (one dirty set for both).
    fn on_dirty(run: &mut Run<Self>, u: usize) {
        run.flush_ready(u);
    }
    /// A planned message was queued on client `u` (see [`Run::send_planned`]).
    fn on_queued(_run: &mut Run<Self>, _u: usize) {}
    fn counts(run: &Run<Self>) -> SentReceived;

    /// Client `u`'s turn in the wave came (the lobby holds some back until its room exists).
    fn on_connect_due(run: &mut Run<Self>, u: usize) {
        run.connect(u);
    }
    /// A client still unsettled at the wave's deadline.
    fn on_wave_timeout(run: &mut Run<Self>, u: usize) {
        run.fail(u, ErrorKind::Connect, Self::WAVE_TIMEOUT.to_string());
    }
    /// The ramp-up is over: choose the senders and fix the plan. An error when none joined.
    fn start_sending(run: &mut Run<Self>, now_us: u64) -> Result<(), RunError>;
    /// Every planned message is taken.
    fn sends_over(run: &Run<Self>) -> bool {
        Plan::all_taken(run.course.plan.as_ref(), run.course.next_g)
    }
    /// When the next planned message is due.
    fn next_send_us(run: &Run<Self>) -> u64 {
        let course = &run.course;
        (course.plan.as_ref()).map_or(u64::MAX, |p| p.intended_us(course.next_g))
    }
    fn drain_us(&self) -> u64;
    /// Everything written arrived (nothing is queued: the caller has looked).
    fn everything_arrived(run: &Run<Self>) -> bool;
    /// The drain is over: start the closing phase (`Phase::Close`), or be done.
    fn start_closing(_run: &mut Run<Self>, _now_us: u64) -> Phase {
        Phase::Done
    }
    /// The closing phase is complete (asked once its wave has settled).
    fn closed(_run: &mut Run<Self>, _now_us: u64) -> bool {
        true
    }
    /// When the closing phase must wake the loop: by default at its deadline, or for its wave
    /// without one (OCM's exits go out on a schedule of their own).
    fn close_wake_us(run: &Run<Self>, deadline_us: Option<u64>) -> u64 {
        deadline_us.unwrap_or_else(|| run.course.wave.next_wake_us())
    }
    /// What the progress line says the run is doing.
    fn doing(run: &Run<Self>) -> String;
}

/// A TCP scenario: the engine's state and the protocol's part `p`.
pub struct Run<W: Wire> {
    pub io: Loop,
    pub course: Course,
    pub clients: Vec<ClientOf<W>>,
    /// Client index of each sender ordinal.
    pub senders: Vec<usize>,
    pub errors: ErrorCounts,
    pub sends: SendCounts,
    pub own: OwnLags,
    pub p: W,
}

impl<W: Wire> Run<W> {
    /// A run of `users`, the first wave connecting in `order` at `connect_rate_per_s`.
    pub fn new(
        p: W,
        users: impl IntoIterator<Item = W::User>,
        order: impl FnOnce(usize) -> Vec<usize>,
        connect_rate_per_s: u64,
        progress: bool,
    ) -> Result<Run<W>, RunError> {
        let io = Loop::new()?;
        let clients: Vec<ClientOf<W>> = (users.into_iter())
            .map(|user| Client {
                conn: Conn::default(),
                stage: Stage::Idle,
                sender: None,
                user,
            })
            .collect();
        let n = clients.len();
        let course = Course::new(n, order(n), io.clock.now_us(), connect_rate_per_s, progress);
        Ok(Run {
            io,
            course,
            clients,
            senders: Vec::new(),
            errors: ErrorCounts::default(),
            sends: SendCounts::default(),
            own: OwnLags::default(),
            p,
        })
    }

    /// As [`Run::new`], at the pace's connect rate and with its progress line.
    pub fn paced(
        p: W,
        users: impl IntoIterator<Item = W::User>,
        order: impl FnOnce(usize) -> Vec<usize>,
        pace: &Pace,
    ) -> Result<Run<W>, RunError> {
        Run::new(p, users, order, pace.connect_rate_per_s, pace.progress)
    }

    /// Fails client `u` through the protocol (one closure type for every caller).
    pub fn fail(&mut self, u: usize, kind: ErrorKind, why: String) {
        W::fail(self, u, kind, why);
    }

    /// Counts the error, closes the connection and takes the client out of the run.
    pub fn close_failed(&mut self, u: usize, kind: ErrorKind, describe: impl FnOnce() -> String) {
        if matches!(self.clients[u].stage, Stage::Failed | Stage::Closed) {
            return;
        }
        self.course.wave.settle(u);
        let client = &mut self.clients[u];
        let was = std::mem::replace(&mut client.stage, Stage::Failed);
        self.sends.not_sent_connection_lost += client.conn.close(self.io.poll.registry());
        let who = self.p.who(u, &self.clients[u]);
        self.errors.count(kind, || format!("{who}: {}", describe()));
        W::failed(self, u, was);
    }

    /// A connection the server ended unexpectedly: a read error once joined, a failed connect
    /// before.
    pub fn lost(&mut self, u: usize, why: String) {
        let kind = if W::link(self, u) == Link::Joined {
            ErrorKind::Read
        } else {
            ErrorKind::Connect
        };
        self.fail(u, kind, why);
    }

    /// A connection the server closed as the protocol expected: client `u` is `Closed`.
    pub fn closed_by_server(&mut self, u: usize) {
        let client = &mut self.clients[u];
        client.stage = Stage::Closed;
        if let Some(mut stream) = client.conn.stream.take() {
            let _ = self.io.poll.registry().deregister(&mut stream);
        }
    }

    /// Opens client `u`'s connection to its target.
    pub fn connect(&mut self, u: usize) {
        let target = self.p.target(&self.clients[u]);
        match self.clients[u]
            .conn
            .open(self.io.poll.registry(), target, u)
        {
            Ok(()) => self.clients[u].stage = Stage::Connecting,
            Err(why) => self.fail(u, ErrorKind::Connect, why),
        }
    }

    /// How many clients are at `stage`.
    pub fn count_at(&self, stage: Stage) -> usize {
        self.clients.iter().filter(|c| c.stage == stage).count()
    }

    /// Makes `senders` the plan's senders (ordinals in order) and fixes the plan over them;
    /// `none` says why not when there are none.
    pub fn fix_plan(
        &mut self,
        senders: Vec<usize>,
        pace: &Pace,
        now_us: u64,
        none: &str,
    ) -> Result<&Plan, RunError> {
        if senders.is_empty() {
            return Err(self.errors.unreachable(none));
        }
        Ok(self.plan_over(senders, pace, now_us))
    }

    /// [`Run::fix_plan`] without the check: `pace`'s rate over its window.
    pub fn plan_over(&mut self, senders: Vec<usize>, pace: &Pace, now_us: u64) -> &Plan {
        for (ordinal, &u) in senders.iter().enumerate() {
            self.clients[u].sender = Some(ordinal as u32);
        }
        let plan = Plan::new(
            senders.len() as u32,
            pace.rate_per_s,
            now_us + crate::driver::START_DELAY_US,
            pace.warmup_us,
            pace.duration_us,
        );
        self.senders = senders;
        self.course.plan.insert(plan)
    }

    /// The clients (among the first `n`) at [`Stage::Joined`].
    pub fn joined_among(&self, n: usize) -> Vec<usize> {
        (0..n.min(self.clients.len()))
            .filter(|&u| self.clients[u].stage == Stage::Joined)
            .collect()
    }

    /// Queues every planned message due at `now_us` on its sender: `message` gives its bytes
    /// and tag (or `None` when it dealt with the message itself); a sender not joined, or
    /// whose queue is full, counts it "not sent".
    pub fn send_planned<M: AsRef<[u8]>>(
        &mut self,
        now_us: u64,
        mut message: impl FnMut(&mut Self, usize, &Due, &Plan) -> Option<(M, W::Tag)>,
    ) {
        // A copy (a few integers), so the protocol can use the run while the plan is read.
        let Some(plan) = self.course.plan.clone() else {
            return;
        };
        while let Some(due) = plan.take_due(&mut self.course.next_g, now_us) {
            let u = self.senders[plan.sender_of(due.g) as usize];
            if self.clients[u].stage != Stage::Joined {
                self.sends.not_sent_connection_lost += 1;
                continue;
            }
            let Some((bytes, tag)) = message(self, u, &due, &plan) else {
                continue;
            };
            let (bytes, conn) = (bytes.as_ref(), &mut self.clients[u].conn);
            if queue_full(conn.queue.len(), conn.out.pending(), bytes.len()) {
                self.sends.not_sent_queue_full += 1;
                continue;
            }
            conn.out.extend(bytes);
            conn.queue.push_back(Queued::new(&conn.out, &due, tag));
            W::on_queued(self, u);
            plan.record_lateness(&due, &mut self.own.schedule_lateness);
            self.io.dirty.mark(u);
        }
    }

    /// [`Wire::on_read`]'s default: appends the bytes read to client `u`'s and hands every whole
    /// message to the protocol; false when the client can read no more.
    pub fn decode_read(&mut self, u: usize, n: usize, now_us: u64) -> bool {
        let (io, conn) = (&self.io, &mut self.clients[u].conn);
        conn.inbuf.extend_from_slice(&io.read_buf[..n]);
        loop {
            if !matches!(W::link(self, u), Link::Greeting | Link::Joined) {
                return false;
            }
            match W::decode(self, u) {
                Ok(Some(message)) => W::on_message(self, u, message, now_us),
                Ok(None) => return true,
                Err(e) => {
                    self.fail(u, ErrorKind::Protocol, format!("framing lost: {e}"));
                    return false;
                }
            }
        }
    }

    /// The connection of client `u`, with the loop.
    fn conn(&mut self, u: usize) -> Option<(&mut Loop, &mut Conn<W::Tag>)> {
        let client = self.clients.get_mut(u)?;
        Some((&mut self.io, &mut client.conn))
    }

    /// Flushes every connection marked dirty.
    pub fn flush_dirty(&mut self) {
        for u in self.io.dirty.take() {
            W::on_dirty(self, u);
        }
    }

    /// Whether some client still has messages queued (not written completely).
    pub fn any_queued(&self) -> bool {
        self.clients.iter().any(|c| !c.conn.queue.is_empty())
    }

    /// What the outcome holds of every run, with the phases' `times`; the errors move there.
    pub fn ran(&mut self, times: &Times) -> Ran {
        Ran {
            plan: self.course.plan_or_empty(),
            errors: std::mem::take(&mut self.errors),
            sends: self.sends,
            ramp_us: times.ramp_us,
            drain_used_us: times.drain_used_us,
            drain_timed_out: times.drain_timed_out,
        }
    }

    /// Closes every client's connection at the end of the run; counts the messages that were
    /// still queued as not sent.
    pub fn close_all(&mut self) {
        for client in &mut self.clients {
            self.sends.not_sent_at_end += client.conn.close(self.io.poll.registry());
        }
    }

    /// Writes client `u`'s pending bytes when there is something to write and a socket to
    /// take it: connected (greeting or joined), writable, bytes pending. Otherwise the next
    /// writable edge, or the next byte queued, calls again.
    pub fn flush_ready(&mut self, u: usize) {
        if matches!(W::link(self, u), Link::Greeting | Link::Joined)
            && self
                .clients
                .get(u)
                .is_some_and(|c| c.conn.writable && c.conn.stream.is_some() && c.conn.has_pending())
        {
            self.flush(u);
        }
    }

    /// Writes a client's pending bytes until done or `WouldBlock`, and accounts for every
    /// message that went out completely.
    fn flush(&mut self, u: usize) {
        let Run {
            io,
            course,
            clients,
            sends,
            own,
            p,
            ..
        } = self;
        let client = &mut clients[u];
        let lags = SendLags {
            plan: course.plan.as_ref(),
            own,
            sent_in_window: &mut sends.sent_in_window,
        };
        let (sent, sender) = (&mut sends.sent, client.sender);
        let failure = client.conn.flush(&io.clock, lags, |queued, lag_us| {
            *sent += 1;
            p.on_sent(u, sender, queued, lag_us);
        });
        if !client.conn.out.has_pending() {
            W::on_written(client, &io.clock);
        }
        if let Some(why) = failure {
            self.fail(u, ErrorKind::Write, why);
        }
    }

    /// Acts on client `u`'s readiness according to where its connection stands.
    fn drive(&mut self, u: usize) {
        match W::link(self, u) {
            Link::Down => {}
            Link::Connecting => {
                let Some((_, conn)) = self.conn(u) else {
                    return;
                };
                if !(conn.readable || conn.writable) {
                    return;
                }
                let greeted = conn.is_connected().and_then(|connected| {
                    if !connected {
                        return Ok(false);
                    }
                    self.clients[u].stage = Stage::Greeting;
                    W::greet(self, u).map(|()| true)
                });
                match greeted {
                    Ok(true) => {
                        // The server may have written already; its edge is spent.
                        self.clients[u].conn.readable = true;
                        self.io.dirty.mark(u);
                    }
                    Ok(false) => return,
                    Err(e) => self.fail(u, ErrorKind::Connect, format!("connect: {e}")),
                }
                self.drive(u);
            }
            Link::Greeting | Link::Joined => {
                if self.clients.get(u).is_some_and(|c| c.conn.readable) {
                    self.read(u);
                }
                self.flush_ready(u);
            }
        }
    }

    /// Reads until a short read or `WouldBlock` (see [`read_chunk`]) or the budget, handing
    /// every whole message to the protocol.
    fn read(&mut self, u: usize) {
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let Some((io, conn)) = self.conn(u) else {
                return;
            };
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            if budget == 0 {
                io.still_ready.push(u);
                return;
            }
            let (n, emptied) =
                match read_chunk(stream, &mut io.read_buf, &mut conn.readable, conn.hangup) {
                    Chunk::Bytes(n) => (n, false),
                    Chunk::Emptied(n) => (n, true),
                    Chunk::Drained => {
                        W::on_drained(self, u);
                        return;
                    }
                    ended => {
                        W::on_server_close(self, u, ended);
                        return;
                    }
                };
            budget = budget.saturating_sub(n);
            // One clock read per read: every message in this chunk arrived together.
            let now_us = io.clock.now_us();
            if !W::on_read(self, u, n, now_us) {
                return;
            }
            let Some((io, conn)) = self.conn(u) else {
                return;
            };
            if conn.out.has_pending() {
                io.dirty.mark(u); // the answers to what was read
            }
            io.bytes_since_send_check += n;
            if io.bytes_since_send_check >= BYTES_PER_SEND_CHECK {
                self.send_due();
            }
            if emptied {
                // As `Drained`: the socket has no more (CCM decodes a whole burst on it).
                W::on_drained(self, u);
                return;
            }
        }
    }
}

impl<W: Wire> Phases for Run<W> {
    fn io(&self) -> &Loop {
        &self.io
    }
    fn io_mut(&mut self) -> &mut Loop {
        &mut self.io
    }
    fn advance(&mut self) -> Result<(), RunError> {
        crate::course::advance(self)
    }
    fn next_wake_us(&self) -> u64 {
        crate::course::next_wake_us(self)
    }
    fn is_done(&self) -> bool {
        self.course.phase == Phase::Done
    }
    /// Queues what is due, then writes.
    fn send_due(&mut self) {
        if self.course.phase != Phase::Send || self.course.plan.is_none() {
            return;
        }
        self.io.bytes_since_send_check = 0;
        let now_us = self.io.clock.now_us();
        W::send_due(self, now_us);
        self.flush_dirty();
    }
    fn counts(&self) -> SentReceived {
        W::counts(self)
    }
}

impl<W: Wire> Reactor for Run<W> {
    fn on_event(&mut self, u: usize, readable: bool, writable: bool, hangup: bool) {
        let Some((_, conn)) = self.conn(u) else {
            W::on_other_event(self, u, readable, writable);
            return;
        };
        conn.readable |= readable;
        conn.writable |= writable;
        conn.hangup |= hangup;
        self.drive(u);
    }
    fn end_turn(&mut self) {
        // Through `on_event`: a socket that is no client's connection (OCM's UDP) may wait too.
        for u in std::mem::take(&mut self.io.still_ready) {
            self.on_event(u, false, false, false);
        }
        self.flush_dirty();
    }
}
