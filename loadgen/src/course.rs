//! The phases every engine scenario (BIN24, CCM, MATOU, OCM, the lobby) goes through, written once:
//! ramp-up, send, drain, the scenario's own closing phase if it has one, done.
//!
//! 1. Ramp-up: the [`Wave`]'s clients connect at the connect rate; it is over when every one
//!    has joined or failed (or its deadline failed the rest). The scenario then fixes its plan.
//! 2. Send: the plan is sent, until every planned message is taken.
//! 3. Drain: until nothing is queued and the scenario says everything arrived, or `--drain`.
//! 4. Close (optional): BIN24's reconnect, CCM's silent wait, MATOU's sign-out, OCM's exits
//!    (sent on their own schedule, see [`Wire::close_wake_us`]). It ends when
//!    the scenario says so, or at its deadline.
//!
//! The engine's [`Run`] keeps the [`Course`]; its protocol ([`Wire`]) says what only it knows: where a
//! client connects, how its ramp-up ends, what "everything arrived" means, how it closes.

use crate::driver::{Drain, Phases, Progress, RunError, RAMP_TIMEOUT_MIN_US};
use crate::engine::{Run, Wire};
use crate::plan::Plan;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Ramp,
    Send,
    Drain {
        deadline_us: u64,
    },
    /// The scenario's closing phase. Without a deadline (BIN24 sets it once its reconnect wave
    /// has settled) it waits on the wave.
    Close {
        deadline_us: Option<u64>,
    },
    Done,
}

/// Clients connecting at the connect rate, each at its intended time; settled when every one
/// has joined or failed. BIN24 runs a second wave (its reconnect) and adds retries to it.
#[derive(Debug)]
pub struct Wave {
    /// The wave's clients, in connect order.
    order: Vec<usize>,
    next: usize,
    /// Clients the caller connects itself ([`Wave::admit`]), in the order admitted.
    admitted: Vec<usize>,
    /// Per client: its latest intended connect time, and whether it is in the current wave
    /// and not yet settled.
    intended_us: Vec<u64>,
    unsettled: Vec<bool>,
    unsettled_count: usize,
    deadline_us: u64,
}

impl Wave {
    pub fn new(clients: usize) -> Wave {
        Wave {
            order: Vec::new(),
            next: 0,
            admitted: Vec::new(),
            intended_us: vec![0; clients],
            unsettled: vec![false; clients],
            unsettled_count: 0,
            deadline_us: 0,
        }
    }

    /// Starts a wave of `order`, spaced at `rate_per_s` from `now_us`; it gives up after
    /// max([`RAMP_TIMEOUT_MIN_US`], 3 times its planned time).
    pub fn start(&mut self, order: Vec<usize>, now_us: u64, rate_per_s: u64) {
        let rate = rate_per_s.max(1);
        for (k, &u) in order.iter().enumerate() {
            self.intended_us[u] = now_us + k as u64 * 1_000_000 / rate;
            self.unsettled[u] = true;
        }
        let planned_us = (order.len() as u64 * 1_000_000).div_ceil(rate);
        self.deadline_us = now_us + RAMP_TIMEOUT_MIN_US.max(planned_us * 3);
        self.unsettled_count = order.len();
        self.order = order;
        self.next = 0;
        self.admitted.clear();
    }

    /// Adds `u` to the wave at `intended_us` (a retry), pushing the deadline out if need be.
    pub fn push(&mut self, u: usize, intended_us: u64) {
        self.unsettle(u, intended_us);
        self.order.push(u);
        self.deadline_us = self.deadline_us.max(intended_us + RAMP_TIMEOUT_MIN_US);
    }

    /// Makes `u` one of the wave's unsettled clients, connected by the caller at
    /// `intended_us` rather than in the wave's order, within the wave's deadline (OCM's guests,
    /// once their room exists); given up at the deadline like the others.
    pub fn admit(&mut self, u: usize, intended_us: u64) {
        self.unsettle(u, intended_us);
        self.admitted.push(u);
    }

    fn unsettle(&mut self, u: usize, intended_us: u64) {
        self.intended_us[u] = intended_us;
        self.unsettled[u] = true;
        self.unsettled_count += 1;
    }

    /// Client `u` joined or failed.
    pub fn settle(&mut self, u: usize) {
        if std::mem::take(&mut self.unsettled[u]) {
            self.unsettled_count -= 1;
        }
    }

    pub fn settled(&self) -> bool {
        self.next == self.order.len() && self.unsettled_count == 0
    }

    /// The next client whose connect time has come.
    fn next_due(&mut self, now_us: u64) -> Option<usize> {
        let u = *self.order.get(self.next)?;
        if self.intended_us[u] > now_us {
            return None;
        }
        self.next += 1;
        Some(u)
    }

    /// At the deadline with clients unsettled: those clients, and no more connects.
    fn give_up(&mut self, now_us: u64) -> Vec<usize> {
        if now_us < self.deadline_us || self.unsettled_count == 0 {
            return Vec::new();
        }
        self.next = self.order.len();
        (self.order.iter().chain(&self.admitted).copied())
            .filter(|&u| self.unsettled[u])
            .collect()
    }

    pub fn next_wake_us(&self) -> u64 {
        self.order
            .get(self.next)
            .map_or(u64::MAX, |&u| self.intended_us[u])
            .min(self.deadline_us)
    }

    /// When client `u` was last meant to connect.
    pub fn intended_us(&self, u: usize) -> u64 {
        self.intended_us[u]
    }

    /// The wave's clients, in connect order.
    pub fn members(&self) -> &[usize] {
        &self.order
    }
}

/// Where a run stands in its phases, and when it got there.
#[derive(Debug)]
pub struct Course {
    pub phase: Phase,
    pub wave: Wave,
    pub plan: Option<Plan>,
    /// The next planned message to send.
    pub next_g: u64,
    pub drain: Drain,
    pub progress: Progress,
    pub ramp_start_us: u64,
    pub ramp_end_us: u64,
    pub close_start_us: Option<u64>,
    pub close_timed_out: bool,
    pub done_us: u64,
}

/// How long a run's phases took, for its outcome.
#[derive(Clone, Copy, Debug)]
pub struct Times {
    pub ramp_us: u64,
    pub drain_used_us: u64,
    pub drain_timed_out: bool,
    pub close_used_us: u64,
    pub close_timed_out: bool,
}

impl Course {
    /// A run of `clients` starting its ramp-up at `now_us` with the first wave `order`.
    pub fn new(
        clients: usize,
        order: Vec<usize>,
        now_us: u64,
        connect_rate_per_s: u64,
        progress: bool,
    ) -> Course {
        let mut wave = Wave::new(clients);
        wave.start(order, now_us, connect_rate_per_s);
        Course {
            phase: Phase::Ramp,
            wave,
            plan: None,
            next_g: 0,
            drain: Drain::default(),
            progress: Progress::new(progress, now_us),
            ramp_start_us: now_us,
            ramp_end_us: now_us,
            close_start_us: None,
            close_timed_out: false,
            done_us: now_us,
        }
    }

    /// The plan, or an empty one when the run never got to fix it.
    pub fn plan_or_empty(&self) -> Plan {
        self.plan
            .clone()
            .unwrap_or_else(|| Plan::new(1, 1, 0, 0, 0))
    }

    /// The phases' durations; a run cut short (not Done) ends at `end_us`.
    pub fn times(&self, end_us: u64) -> Times {
        let done_us = if self.phase == Phase::Done {
            self.done_us
        } else {
            end_us
        };
        let drain_end_us = self.close_start_us.unwrap_or(done_us);
        Times {
            ramp_us: self.ramp_end_us.saturating_sub(self.ramp_start_us),
            drain_used_us: (self.drain.start_us)
                .map_or(0, |start| drain_end_us.saturating_sub(start)),
            drain_timed_out: self.drain.timed_out,
            close_used_us: (self.close_start_us).map_or(0, |start| done_us.saturating_sub(start)),
            close_timed_out: self.close_timed_out,
        }
    }
}

/// Connects the wave's clients that are due; fails those still unsettled at its deadline.
fn connect_due<W: Wire>(run: &mut Run<W>, now_us: u64) {
    while let Some(u) = run.course.wave.next_due(now_us) {
        W::on_connect_due(run, u);
    }
    for u in run.course.wave.give_up(now_us) {
        W::on_wave_timeout(run, u);
    }
}

/// The phase work that depends on the clock: connects, sends, deadlines, completion, progress.
pub fn advance<W: Wire>(run: &mut Run<W>) -> Result<(), RunError> {
    let now_us = run.io.clock.now_us();
    match run.course.phase {
        Phase::Ramp => {
            connect_due(run, now_us);
            if run.course.wave.settled() {
                run.course.ramp_end_us = now_us;
                W::start_sending(run, now_us)?;
                run.course.phase = Phase::Send;
            }
        }
        Phase::Send => {
            run.send_due();
            if W::sends_over(run) {
                let (start_us, drain_us) = (run.io.clock.now_us(), run.p.drain_us());
                let deadline_us = run.course.drain.start(start_us, drain_us);
                run.course.phase = Phase::Drain { deadline_us };
            }
        }
        Phase::Drain { deadline_us } => {
            run.flush_dirty();
            if run.course.drain.check_due(now_us) {
                let complete = !run.any_queued() && W::everything_arrived(run);
                if complete || now_us >= deadline_us {
                    run.course.drain.timed_out = !complete;
                    run.course.close_start_us = Some(now_us);
                    run.course.phase = W::start_closing(run, now_us);
                }
            }
        }
        Phase::Close { deadline_us } => {
            connect_due(run, now_us);
            if run.course.wave.settled() {
                if W::closed(run, now_us) {
                    run.course.phase = Phase::Done;
                } else if deadline_us.is_some_and(|deadline_us| now_us >= deadline_us) {
                    run.course.close_timed_out = true;
                    run.course.phase = Phase::Done;
                }
            }
        }
        Phase::Done => {}
    }
    let course = &mut run.course;
    if course.phase == Phase::Done {
        course.done_us = now_us;
    }
    if course.progress.due(now_us) {
        let start_us = course.ramp_start_us;
        Progress::draw(start_us, now_us, &W::doing(run), run.errors.total());
    }
    Ok(())
}

/// When the loop must wake at the latest for the phase work.
pub fn next_wake_us<W: Wire>(run: &Run<W>) -> u64 {
    let course = &run.course;
    let phase_us = match course.phase {
        Phase::Ramp => course.wave.next_wake_us(),
        Phase::Send => W::next_send_us(run),
        // The deadline is looked at with the completion check, on its cadence.
        Phase::Drain { .. } => course.drain.next_check_us,
        // A close wakes the poll by itself.
        Phase::Close { deadline_us } => W::close_wake_us(run, deadline_us),
        Phase::Done => u64::MAX,
    };
    course.progress.wake_us(phase_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_clients_keep_the_wave_open_and_are_given_up_at_its_deadline() {
        let mut wave = Wave::new(4);
        wave.start(vec![0, 2], 0, 1_000_000);
        assert_eq!((wave.next_due(0), wave.next_due(1)), (Some(0), Some(2)));
        wave.admit(1, 5);
        wave.admit(3, 5);
        wave.settle(0);
        wave.settle(3);
        let deadline_us = RAMP_TIMEOUT_MIN_US;
        assert!(
            !wave.settled(),
            "client 2 and the admitted client 1 are out"
        );
        assert_eq!(wave.give_up(deadline_us - 1), Vec::<usize>::new());
        assert_eq!(
            wave.next_wake_us(),
            deadline_us,
            "admitting moved no deadline"
        );
        wave.settle(2);
        assert!(!wave.settled(), "the admitted client 1 is still out");
        assert_eq!(wave.give_up(deadline_us), [1]);
        wave.settle(1);
        assert!(wave.settled());
    }
}
