//! The loop turn every scenario shares, and the outer loop that runs several scenarios at once.
//!
//! A scenario's `Run` owns a mio `Poll` with its sockets and its [`Pacer`] in it. One turn is
//! poll -> handle the events -> drive the connections left with data -> advance the clock-driven
//! phase work -> arm the pacer at the next wake-up. A single-protocol run calls [`run_to_end`],
//! which turns until the phase is Done and sleeps in its own poll.
//!
//! The mix ([`run_outer`]) registers each scenario's epoll descriptor in an outer `Poll`: an
//! epoll descriptor is readable while its own epoll has ready events, the pacer's timerfd
//! included, so the outer loop sleeps in the kernel until some scenario has work and then turns
//! that one with a zero timeout: no busy polling, and each scenario keeps its own timer. The
//! registration is edge-triggered, so a turn that may have left events behind (its events
//! buffer came back full, or connections hit their read budget) says so in [`Turn::again`] and
//! is turned again before the outer loop sleeps.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::clock::Clock;
use crate::pacer::Pacer;

/// Every scenario's pacer token; a socket's token is its index + 1.
pub const TIMER: Token = Token(0);
/// Events taken from a poll per turn.
const EVENTS_CAPACITY: usize = 1024;
/// A loop's sleep when nothing is ready. Every scenario's pacer wakes it on time; this only
/// bounds a sleep should a wake-up ever be missed (the outer loop then turns every scenario).
pub const POLL_TIMEOUT_MAX: Duration = Duration::from_millis(250);

/// One read buffer per loop, shared by its connections (the loop is single-threaded).
pub const READ_BUF_BYTES: usize = 64 * 1024;
/// Most bytes read from one connection per turn before the others get their turn.
pub const READ_BUDGET_BYTES: usize = 256 * 1024;
/// Messages a sender may hold while its socket is not writable. Beyond this (or the byte cap),
/// a due message is counted "not sent" instead of growing memory: the clock of the queued
/// messages keeps running, so the backlog already shows in the latencies.
pub const SEND_QUEUE_MESSAGES_MAX: usize = 4_096;
pub const SEND_QUEUE_BYTES_MAX: usize = 1 << 20;
/// While working through a burst of socket events, look at the clock for due sends after this
/// many events or this many bytes read, whichever comes first, so a long burst does not delay
/// the plan. A loadgen that fell behind finds much data waiting on every socket, so counting
/// events alone would let its bursts, and its lateness, grow on themselves; 64 KiB is about a
/// thousand records, well under 100 µs of work.
pub const EVENTS_PER_SEND_CHECK: usize = 64;
pub const BYTES_PER_SEND_CHECK: usize = 64 * 1024;
/// Between the last join and the first planned message, so the last join notices are out of the
/// way and message 0 is not late by construction.
pub const START_DELAY_US: u64 = 50_000;
/// The ramp-up gives up after max(this, 3 times the planned ramp duration).
pub const RAMP_TIMEOUT_MIN_US: u64 = 10_000_000;
/// How often, during the drain, to confirm "everything arrived" with a full walk of the tables.
pub const DRAIN_CHECK_INTERVAL_US: u64 = 10_000;
pub const PROGRESS_INTERVAL_US: u64 = 1_000_000;

/// Whether a message of `adding` bytes would overflow a send queue holding `queued` messages
/// and `pending` bytes (then it is counted "not sent").
pub fn queue_full(queued: usize, pending: usize, adding: usize) -> bool {
    queued >= SEND_QUEUE_MESSAGES_MAX || pending + adding > SEND_QUEUE_BYTES_MAX
}

/// Why a scenario could not run at all (the loadgen exits 2, with no report).
#[derive(Debug)]
pub enum RunError {
    /// The loadgen could not set itself up (poll, timer).
    Setup(String),
    /// Not one client could join (or, for OCM, create its room): no server to measure.
    Unreachable(String),
}

/// What one turn left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    /// The scenario reached its Done phase: `finish` may be called.
    pub done: bool,
    /// Work may be waiting that no new edge will announce: turn again before sleeping.
    pub again: bool,
}

/// Sent and received counts for the mix's progress line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SentReceived {
    pub sent: u64,
    pub received: u64,
}

/// What a scenario's `Run` lends the shared turn. Each method is one the scenario already had
/// in its own loop; the loop itself is here, once.
pub trait Reactor {
    type Error;
    /// Read events handled before looking at the clock for due sends again.
    const EVENTS_PER_SEND_CHECK: usize;
    fn setup_error(why: String) -> Self::Error;
    fn parts(&mut self) -> (&mut Poll, &mut Pacer);
    fn poll_fd(&self) -> RawFd;
    /// Phase work that depends on the clock: connects, sends, deadlines, progress.
    fn advance(&mut self) -> Result<(), Self::Error>;
    fn is_done(&self) -> bool;
    /// When the loop must wake at the latest (µs on the scenario's clock).
    fn next_wake_us(&self) -> u64;
    /// Connections hit their read budget with data left: no edge will come for them.
    fn has_still_ready(&self) -> bool;
    /// One socket event; `index` is the token minus one.
    fn on_event(&mut self, index: usize, readable: bool, writable: bool);
    fn send_due(&mut self);
    /// After the events: drive the connections left with data, flush what is pending.
    fn end_turn(&mut self);
    fn counts(&self) -> SentReceived;
}

/// The [`Reactor`] items every scenario's `Run` fills the same way, from its fields `poll`,
/// `pacer`, `phase` (ending in `Phase::Done`) and `still_ready`, its `send_due`, its
/// `EVENTS_PER_SEND_CHECK` and its error's `Setup` variant; unless told `own_phase_work`, also
/// `advance` and `next_wake_us` from its methods of those names.
macro_rules! reactor_common {
    ($error:ident) => {
        $crate::driver::reactor_common!($error, own_phase_work);
        fn advance(&mut self) -> Result<(), $error> {
            self.advance()
        }
        fn next_wake_us(&self) -> u64 {
            self.next_wake_us()
        }
    };
    ($error:ident, own_phase_work) => {
        type Error = $error;
        const EVENTS_PER_SEND_CHECK: usize = EVENTS_PER_SEND_CHECK;
        fn setup_error(why: String) -> $error {
            $error::Setup(why)
        }
        fn parts(&mut self) -> (&mut Poll, &mut $crate::pacer::Pacer) {
            (&mut self.poll, &mut self.pacer)
        }
        fn poll_fd(&self) -> std::os::fd::RawFd {
            std::os::fd::AsRawFd::as_raw_fd(&self.poll)
        }
        fn is_done(&self) -> bool {
            self.phase == Phase::Done
        }
        fn has_still_ready(&self) -> bool {
            !self.still_ready.is_empty()
        }
        fn send_due(&mut self) {
            Run::send_due(self);
        }
    };
}
pub(crate) use reactor_common;

/// `on_event` and `end_turn` of a scenario whose sockets are `self.$conns[index]`, each with
/// `readable`/`writable` flags (in its field `$ready` if given) and driven by
/// `self.drive(index)`; `end_turn` drives the still-ready ones, then calls `$after` (e.g.
/// `flush_dirty`) if given.
macro_rules! drive_connections {
    ($conns:ident $(. $ready:ident)? $(, $after:ident)?) => {
        fn on_event(&mut self, index: usize, readable: bool, writable: bool) {
            let Some(conn) = self.$conns.get_mut(index) else {
                return; // not ours; cannot happen, and must not panic
            };
            conn$(.$ready)?.readable |= readable;
            conn$(.$ready)?.writable |= writable;
            self.drive(index);
        }
        fn end_turn(&mut self) {
            for index in std::mem::take(&mut self.still_ready) {
                self.drive(index);
            }
            $(self.$after();)?
        }
    };
}
pub(crate) use drive_connections;

/// A scenario loop's clock, its poll and its pacer, registered in the poll as [`TIMER`].
pub fn loop_parts() -> Result<(Clock, Poll, Pacer), RunError> {
    let setup = |what: &str, e: io::Error| RunError::Setup(format!("{what}: {e}"));
    let clock = Clock::start().map_err(|e| setup("clock", e))?;
    let poll = Poll::new().map_err(|e| setup("poll", e))?;
    let pacer = Pacer::new(clock).map_err(|e| setup("timerfd", e))?;
    pacer
        .register(poll.registry(), TIMER)
        .map_err(|e| setup("register timerfd", e))?;
    Ok((clock, poll, pacer))
}

/// The first half of a turn, also the start of a run: phase work, then the pacer armed for the
/// next wake-up. Returns whether the scenario is Done.
pub fn advance_and_arm<R: Reactor>(r: &mut R) -> Result<bool, R::Error> {
    r.advance()?;
    if r.is_done() {
        return Ok(true);
    }
    let wake_us = r.next_wake_us();
    r.parts()
        .1
        .arm_at(wake_us)
        .map_err(|e| R::setup_error(format!("arming the timerfd: {e}")))?;
    Ok(false)
}

/// One turn: poll (at most `timeout`, not at all if connections are still ready), handle the
/// events, drive the still-ready connections, then advance and arm.
pub fn turn<R: Reactor>(
    r: &mut R,
    events: &mut Events,
    timeout: Duration,
) -> Result<Turn, R::Error> {
    let timeout = if r.has_still_ready() {
        Duration::ZERO
    } else {
        timeout
    };
    // An interrupted poll took nothing: what was ready still is, but its edge is spent.
    let mut interrupted = false;
    match r.parts().0.poll(events, Some(timeout)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            interrupted = true;
        }
        Err(e) => return Err(R::setup_error(format!("poll: {e}"))),
    }
    let mut handled = 0usize;
    let mut seen = 0usize;
    for event in events.iter() {
        seen += 1;
        if event.token() == TIMER {
            if let Err(e) = r.parts().1.acknowledge() {
                return Err(R::setup_error(format!("reading the timerfd: {e}")));
            }
            continue;
        }
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        r.on_event(event.token().0 - 1, readable, writable);
        handled += 1;
        if handled.is_multiple_of(R::EVENTS_PER_SEND_CHECK) {
            r.send_due();
        }
    }
    r.end_turn();
    let done = advance_and_arm(r)?;
    Ok(Turn {
        done,
        again: !done && (interrupted || r.has_still_ready() || seen >= events.capacity()),
    })
}

/// Runs one scenario on its own loop until Done, sleeping in its poll (at most `idle_timeout`,
/// which only bounds a sleep should the pacer ever miss a wake-up).
pub fn run_to_end<R: Reactor>(r: &mut R, idle_timeout: Duration) -> Result<(), R::Error> {
    let mut events = Events::with_capacity(EVENTS_CAPACITY);
    if advance_and_arm(r)? {
        return Ok(());
    }
    while !turn(r, &mut events, idle_timeout)?.done {}
    Ok(())
}

/// A scenario as the mix holds it: its loop, its progress, and its report at the end.
pub trait Scenario {
    /// What the scenario hands over at the end (its report, for the mix).
    type Output;
    fn poll_fd(&self) -> RawFd;
    /// The first phase work and pacer arming, before the loop waits on the descriptor.
    fn start(&mut self) -> Result<bool, String>;
    fn turn(&mut self, events: &mut Events) -> Result<Turn, String>;
    fn counts(&self) -> SentReceived;
    /// Closes everything and hands the measurements over (after Done, or after an error).
    fn finish(self: Box<Self>) -> Self::Output;
}

/// Progress shared with the thread that prints the progress line.
#[derive(Debug, Default)]
pub struct ProgressCell {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub done: AtomicBool,
}

impl ProgressCell {
    fn store(&self, counts: SentReceived) {
        self.sent.store(counts.sent, Ordering::Relaxed);
        self.received.store(counts.received, Ordering::Relaxed);
    }
}

/// How the outer loop was woken, for the tests (and anyone wondering about busy polling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OuterStats {
    /// Outer polls that reported some scenario's descriptor.
    pub fd_wakes: u64,
    /// Outer polls that timed out with nothing reported (every scenario was turned then).
    pub timeouts: u64,
    pub turns: u64,
}

/// What became of one scenario in the outer loop: Ok when it reached Done, or its error.
pub type Ended = Result<(), String>;

/// Turns `scenarios` until every one is Done or failed, sleeping in one outer poll between
/// turns. `ended[i]` says how scenario `i` ended; `progress[i]` is kept current.
pub fn run_outer<T>(
    scenarios: &mut [Box<dyn Scenario<Output = T> + '_>],
    progress: &[&ProgressCell],
    idle_timeout: Duration,
) -> Result<(Vec<Ended>, OuterStats), String> {
    let mut outer = Poll::new().map_err(|e| format!("outer poll: {e}"))?;
    let mut ended: Vec<Option<Ended>> = vec![None; scenarios.len()];
    let mut stats = OuterStats::default();
    let mut again: Vec<usize> = Vec::new();
    for (i, scenario) in scenarios.iter_mut().enumerate() {
        match scenario.start() {
            Ok(true) => ended[i] = Some(Ok(())),
            Ok(false) => {
                outer
                    .registry()
                    .register(
                        &mut SourceFd(&scenario.poll_fd()),
                        Token(i),
                        Interest::READABLE,
                    )
                    .map_err(|e| format!("registering a scenario's poll: {e}"))?;
                // The registration reports what is ready already; turning once more costs a
                // zero-timeout poll and rules out a start that left events unannounced.
                again.push(i);
            }
            Err(why) => ended[i] = Some(Err(why)),
        }
        if let Some(cell) = progress.get(i) {
            cell.store(scenario.counts());
        }
    }
    let mut outer_events = Events::with_capacity(scenarios.len().max(1));
    let mut inner_events = Events::with_capacity(EVENTS_CAPACITY);
    let mut due: Vec<usize> = Vec::new();
    while ended.iter().any(Option::is_none) {
        let timeout = if again.is_empty() {
            idle_timeout
        } else {
            Duration::ZERO
        };
        match outer.poll(&mut outer_events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => outer_events.clear(),
            Err(e) => return Err(format!("outer poll: {e}")),
        }
        due.clear();
        due.append(&mut again);
        due.extend(outer_events.iter().map(|e| e.token().0));
        if outer_events.is_empty() {
            if due.is_empty() {
                stats.timeouts += 1;
                due.extend(0..scenarios.len());
            }
        } else {
            stats.fd_wakes += 1;
        }
        due.sort_unstable();
        due.dedup();
        for &i in &due {
            if ended.get(i).is_none_or(Option::is_some) {
                continue;
            }
            stats.turns += 1;
            let scenario = &mut scenarios[i];
            let result = scenario.turn(&mut inner_events);
            if let Some(cell) = progress.get(i) {
                cell.store(scenario.counts());
            }
            match result {
                Ok(Turn { done: true, .. }) => ended[i] = Some(Ok(())),
                Ok(Turn { again: true, .. }) => again.push(i),
                Ok(_) => {}
                Err(why) => ended[i] = Some(Err(why)),
            }
            if ended[i].is_some() {
                let _ = outer
                    .registry()
                    .deregister(&mut SourceFd(&scenario.poll_fd()));
                if let Some(cell) = progress.get(i) {
                    cell.done.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    let ended = ended.into_iter().map(|e| e.unwrap_or(Ok(()))).collect();
    Ok((ended, stats))
}

/// A scenario's `Run` as a [`Scenario`], its error turned into text by `describe` and its
/// measurements into the mix's output by `finish`.
pub struct Driven<R: Reactor, F> {
    pub run: R,
    pub describe: fn(R::Error) -> String,
    pub finish: F,
}

impl<R: Reactor, T, F: FnOnce(R) -> T> Scenario for Driven<R, F> {
    type Output = T;

    fn poll_fd(&self) -> RawFd {
        self.run.poll_fd()
    }

    fn start(&mut self) -> Result<bool, String> {
        advance_and_arm(&mut self.run).map_err(self.describe)
    }

    fn turn(&mut self, events: &mut Events) -> Result<Turn, String> {
        turn(&mut self.run, events, Duration::ZERO).map_err(self.describe)
    }

    fn counts(&self) -> SentReceived {
        self.run.counts()
    }

    fn finish(self: Box<Self>) -> T {
        (self.finish)(self.run)
    }
}

/// CPU time (user + system) of the calling thread, in µs.
pub fn thread_cpu_us() -> u64 {
    rusage_cpu_us(libc::RUSAGE_THREAD)
}

/// CPU time (user + system) of the whole process so far, every thread, in µs.
pub fn process_cpu_us() -> u64 {
    rusage_cpu_us(libc::RUSAGE_SELF)
}

fn rusage_cpu_us(who: libc::c_int) -> u64 {
    // SAFETY: all-zero bytes are a valid `rusage` (integers and timevals only).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage that lives across the call; getrusage writes
    // only it. RUSAGE_SELF and RUSAGE_THREAD are both valid `who` values on Linux.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000 + t.tv_usec.max(0) as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A scenario with no socket at all: its pacer is its only source of wake-ups. It ticks
    /// every 2 ms and is Done after `ticks_max` ticks.
    struct Ticker {
        clock: Clock,
        poll: Poll,
        pacer: Pacer,
        next_us: u64,
        ticks: u64,
        ticks_max: u64,
        register_pacer: bool,
    }

    const TICK_US: u64 = 2_000;

    impl Ticker {
        fn new(ticks_max: u64, register_pacer: bool) -> Ticker {
            let clock = Clock::start().unwrap();
            let poll = Poll::new().unwrap();
            let pacer = Pacer::new(clock).unwrap();
            if register_pacer {
                pacer.register(poll.registry(), TIMER).unwrap();
            }
            Ticker {
                next_us: clock.now_us() + TICK_US,
                clock,
                poll,
                pacer,
                ticks: 0,
                ticks_max,
                register_pacer,
            }
        }
    }

    impl Reactor for Ticker {
        type Error = String;
        const EVENTS_PER_SEND_CHECK: usize = 64;
        fn setup_error(why: String) -> String {
            why
        }
        fn parts(&mut self) -> (&mut Poll, &mut Pacer) {
            (&mut self.poll, &mut self.pacer)
        }
        fn poll_fd(&self) -> RawFd {
            self.poll.as_raw_fd()
        }
        fn advance(&mut self) -> Result<(), String> {
            if self.clock.now_us() >= self.next_us {
                self.ticks += 1;
                self.next_us = self.clock.now_us() + TICK_US;
            }
            Ok(())
        }
        fn is_done(&self) -> bool {
            self.ticks >= self.ticks_max
        }
        fn next_wake_us(&self) -> u64 {
            self.next_us
        }
        fn has_still_ready(&self) -> bool {
            false
        }
        fn on_event(&mut self, _: usize, _: bool, _: bool) {}
        fn send_due(&mut self) {}
        fn end_turn(&mut self) {}
        fn counts(&self) -> SentReceived {
            SentReceived {
                sent: self.ticks,
                received: u64::from(self.register_pacer),
            }
        }
    }

    fn driven(ticker: Ticker) -> Box<dyn Scenario<Output = u64>> {
        Box::new(Driven {
            run: ticker,
            describe: |e| e,
            finish: |t: Ticker| t.ticks,
        })
    }

    #[test]
    fn a_scenario_wakes_the_outer_loop_by_its_timer_alone() {
        // An idle timeout far above the 2 ms ticks: had the pacer not woken the outer poll,
        // every tick would wait for it and the run would show timeouts.
        let mut scenarios = vec![driven(Ticker::new(20, true)), driven(Ticker::new(5, true))];
        let cells = [ProgressCell::default(), ProgressCell::default()];
        let refs: Vec<&ProgressCell> = cells.iter().collect();
        let (ended, stats) = run_outer(&mut scenarios, &refs, Duration::from_secs(5)).unwrap();
        assert_eq!(ended, vec![Ok(()), Ok(())]);
        assert_eq!(stats.timeouts, 0, "{stats:?}");
        assert!(stats.fd_wakes >= 20, "{stats:?}");
        assert_eq!(cells[0].sent.load(Ordering::Relaxed), 20);
        assert_eq!(cells[1].sent.load(Ordering::Relaxed), 5);
        assert!(cells.iter().all(|c| c.done.load(Ordering::Relaxed)));
        let ticks: Vec<u64> = scenarios.into_iter().map(|s| s.finish()).collect();
        assert_eq!(ticks, vec![20, 5]);
    }

    #[test]
    fn without_its_timer_in_the_poll_a_scenario_is_only_turned_by_timeouts() {
        // The same ticker with the pacer left out of its poll: the outer loop sees no
        // descriptor event and the run advances only on the idle timeout, which the test
        // above proves never happens when the timer is registered.
        let mut scenarios = vec![driven(Ticker::new(3, false))];
        let cell = ProgressCell::default();
        let (ended, stats) = run_outer(&mut scenarios, &[&cell], Duration::from_millis(5)).unwrap();
        assert_eq!(ended, vec![Ok(())]);
        assert_eq!(stats.fd_wakes, 0, "{stats:?}");
        assert!(stats.timeouts >= 3, "{stats:?}");
    }

    #[test]
    fn single_loop_runs_to_done() {
        let mut ticker = Ticker::new(3, true);
        run_to_end(&mut ticker, Duration::from_secs(60)).unwrap();
        assert_eq!(ticker.ticks, 3);
    }

    #[test]
    fn cpu_times_are_read() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_us() >= thread_cpu_us());
    }
}
