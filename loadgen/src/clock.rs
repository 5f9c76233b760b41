//! The loadgen's one clock: microseconds since its own epoch, on CLOCK_MONOTONIC.
//!
//! Every connection lives in this process and shares this epoch, so a receiver computes a
//! delivery latency as `now_us - intended_us` with no cross-host clock sync. The clock is
//! read through `clock_gettime` rather than `std::time::Instant` because the pacer arms its
//! timerfd at absolute CLOCK_MONOTONIC times, and an `Instant` cannot be turned into one.

use std::io;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_MONOTONIC at the epoch, in nanoseconds.
    epoch_ns: u64,
}

impl Clock {
    /// Starts a clock whose epoch is now.
    pub fn start() -> io::Result<Clock> {
        let epoch_ns = monotonic_ns()?;
        Ok(Clock { epoch_ns })
    }

    /// Microseconds since the epoch.
    #[inline]
    pub fn now_us(&self) -> u64 {
        // clock_gettime(CLOCK_MONOTONIC) only fails for a bad clock id or a bad pointer, and
        // `start` proved the id good; if it ever did fail, time standing still at the epoch
        // would show up as absurd latencies rather than a crash mid-run.
        monotonic_ns().map_or(0, |ns| ns.saturating_sub(self.epoch_ns) / 1_000)
    }

    /// The absolute CLOCK_MONOTONIC time, in nanoseconds, of `us` after the epoch.
    pub fn monotonic_ns_at(&self, us: u64) -> u64 {
        self.epoch_ns.saturating_add(us.saturating_mul(1_000))
    }
}

fn monotonic_ns() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame for the whole call, and
    // CLOCK_MONOTONIC is a clock id every Linux kernel supports; clock_gettime writes only `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // CLOCK_MONOTONIC is never negative.
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Ok(secs * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_moves_forward_from_zero() {
        let clock = Clock::start().unwrap();
        let a = clock.now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = clock.now_us();
        assert!(a < 1_000, "epoch is now: {a}");
        assert!(b >= a + 2_000, "{a} -> {b}");
        assert_eq!(clock.monotonic_ns_at(5) - clock.monotonic_ns_at(0), 5_000);
    }
}
