//! The pacer: a one-shot timerfd that wakes the mio loop at an exact microsecond.
//!
//! Why not the poll timeout: `epoll_wait` takes milliseconds, so a loop sleeping on it can only
//! wake on whole milliseconds (and the kernel adds timer slack on top). A sender that must send
//! every 200 µs would then send in bursts, late by up to a millisecond, and those late sends are
//! the loadgen's own latency leaking into the server's figures. A timerfd is an hrtimer with
//! nanosecond resolution and no slack, readable when it expires, so it sits in the same poll as
//! the sockets: the loop sleeps in one place and wakes for whichever comes first. Busy-polling
//! would also be precise, but it would burn a core the server needs on this 2-core machine.
//!
//! The timer is armed on absolute CLOCK_MONOTONIC times (TFD_TIMER_ABSTIME), the same clock as
//! [`Clock`], so the wake-up lands on the intended time itself, with no drift from the time it
//! takes to compute and arm a relative delay.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::clock::Clock;

#[derive(Debug)]
pub struct Pacer {
    fd: OwnedFd,
    clock: Clock,
    /// The time the timer is armed for (µs since the clock's epoch), if it is armed.
    armed_at_us: Option<u64>,
}

impl Pacer {
    pub fn new(clock: Clock) -> io::Result<Pacer> {
        // SAFETY: timerfd_create takes no pointers; it returns a new descriptor or -1.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor timerfd_create just returned to us and nothing else
        // owns it, so OwnedFd may take ownership and close it exactly once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Pacer {
            fd,
            clock,
            armed_at_us: None,
        })
    }

    /// Registers the timer for READABLE (it becomes readable when it expires).
    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    /// Arms the timer to expire at `due_us` (µs since the clock's epoch). A time already past
    /// expires at once. Re-arming for the time already set is skipped, to save a syscall.
    pub fn arm_at(&mut self, due_us: u64) -> io::Result<()> {
        if self.armed_at_us == Some(due_us) {
            return Ok(());
        }
        let due_ns = self.clock.monotonic_ns_at(due_us).max(1); // it_value 0 would disarm
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (due_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (due_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `self.fd` is an open timerfd we own; `spec` is a valid itimerspec that lives
        // across the call; a null old_value is allowed and means "don't report the old one".
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            self.armed_at_us = None;
            return Err(io::Error::last_os_error());
        }
        self.armed_at_us = Some(due_us);
        Ok(())
    }

    /// Consumes an expiry after the timer's token was reported readable. The loop decides what
    /// is due from the clock, not from the expiry count, so the count is only drained so the
    /// descriptor is quiet until the next arming.
    pub fn acknowledge(&mut self) -> io::Result<()> {
        let mut expirations = [0u8; 8];
        // SAFETY: `expirations` is a writable 8-byte buffer living across the call, which is
        // exactly the size a timerfd read requires; the descriptor is our open timerfd.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                expirations.as_mut_ptr().cast::<libc::c_void>(),
                expirations.len(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            // Not expired yet (a spurious wake-up): nothing to drain.
            if err.kind() != io::ErrorKind::WouldBlock && err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            return Ok(());
        }
        self.armed_at_us = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    #[test]
    fn wakes_the_poll_at_the_armed_time() {
        let clock = Clock::start().unwrap();
        let mut poll = Poll::new().unwrap();
        let mut pacer = Pacer::new(clock).unwrap();
        pacer.register(poll.registry(), Token(7)).unwrap();
        let due_us = clock.now_us() + 3_000;
        pacer.arm_at(due_us).unwrap();
        let mut events = Events::with_capacity(4);
        let deadline_us = due_us + 2_000_000;
        loop {
            poll.poll(&mut events, Some(Duration::from_secs(2)))
                .unwrap();
            if events.iter().any(|e| e.token() == Token(7)) {
                break;
            }
            assert!(clock.now_us() < deadline_us, "timer never fired");
        }
        let woke_us = clock.now_us();
        assert!(woke_us >= due_us, "woke early: {woke_us} < {due_us}");
        pacer.acknowledge().unwrap();
        // Acknowledging again without an expiry is a harmless no-op.
        pacer.acknowledge().unwrap();
    }

    #[test]
    fn a_past_time_fires_at_once() {
        let clock = Clock::start().unwrap();
        let mut poll = Poll::new().unwrap();
        let mut pacer = Pacer::new(clock).unwrap();
        pacer.register(poll.registry(), Token(1)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        pacer.arm_at(0).unwrap();
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(2)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(1)));
    }
}
