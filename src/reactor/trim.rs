//! Giving the heap back after a burst.
//!
//! A fan-out burst (a join storm in a big ROOM, a backlog delivered at sign-in) queues many
//! small buffers at once; once they are written, glibc keeps the freed memory in its arenas
//! instead of returning it to the kernel, so the server's resident memory stays at the burst's
//! peak. Measured on a 10,000-member ROOM after its join storm: 40.3 MB resident, of which 8.1 MB
//! in use; `malloc_trim(0)` brought it to 10.1 MB. So after a burst whose queued output reached
//! `TRIM_AFTER_QUEUED_BYTES`, once everything is written and at most once per
//! `TRIM_INTERVAL_MS`, the loop asks glibc to return its free pages. What counts as held is
//! queued output plus BIN24's stored frames in memory and the store's queued requests: a
//! flood to offline users allocates on the storage thread's side, and `malloc_trim` returns
//! the free pages of every arena, that thread's included.

/// Queued output at once (all connections) that makes a later trim worth its cost.
const TRIM_AFTER_QUEUED_BYTES: usize = 4 << 20;
/// Trims are at least this far apart: one costs about a millisecond on a heap of tens of MB.
const TRIM_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub(crate) struct HeapTrim {
    /// The most output queued at once since the last trim.
    queued_peak_bytes: usize,
    last_trim_ms: Option<u64>,
    trims: u64,
}

impl HeapTrim {
    /// Notes how much output is queued now (before a flush: the turn's peak).
    pub(crate) fn observe(&mut self, queued_bytes: usize) {
        self.queued_peak_bytes = self.queued_peak_bytes.max(queued_bytes);
    }

    /// Whether a trim is due at `now_ms` with `queued_bytes` still queued.
    fn due(&self, now_ms: u64, queued_bytes: usize) -> bool {
        queued_bytes == 0
            && self.queued_peak_bytes >= TRIM_AFTER_QUEUED_BYTES
            && self
                .last_trim_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= TRIM_INTERVAL_MS)
    }

    /// When the loop must wake for a trim that is waiting for its interval, if any. Only a
    /// future time: a trim whose interval has passed waits for the output to drain, and a
    /// drain always ends a turn that then tries it.
    pub(crate) fn next_deadline_ms(&self, now_ms: u64) -> Option<u64> {
        if self.queued_peak_bytes < TRIM_AFTER_QUEUED_BYTES {
            return None;
        }
        self.last_trim_ms
            .map(|at| at + TRIM_INTERVAL_MS)
            .filter(|&due| due > now_ms)
    }

    /// Trims if due; returns whether it did.
    pub(crate) fn maybe_trim(&mut self, now_ms: u64, queued_bytes: usize) -> bool {
        if !self.due(now_ms, queued_bytes) {
            return false;
        }
        release_free_heap();
        self.queued_peak_bytes = 0;
        self.last_trim_ms = Some(now_ms);
        self.trims += 1;
        true
    }

    pub(crate) fn trims(&self) -> u64 {
        self.trims
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_heap() {
    // SAFETY: malloc_trim takes no pointers and only returns free memory to the kernel; glibc's
    // allocator locks its arenas, so it is safe beside any allocation on any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

/// Bytes the allocator has handed out and not had back (every arena, mmapped chunks included):
/// what the program holds, unlike resident memory, which also counts free pages glibc keeps.
/// A leak check compares it between runs of the same load (`scripts/soak.sh`). It walks every
/// arena's free lists, so it is read only when the admin port is asked for metrics.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn heap_in_use_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 takes no pointers and returns a plain struct by value; glibc locks each
    // arena while it reads it, so it is safe beside allocations on any thread.
    let info = unsafe { libc::mallinfo2() };
    u64::try_from(info.uordblks.saturating_add(info.hblkhd)).ok()
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn heap_in_use_bytes() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_follows_a_large_burst_once_it_is_written() {
        let mut trim = HeapTrim::default();
        trim.observe(TRIM_AFTER_QUEUED_BYTES);
        assert!(!trim.maybe_trim(10, 1), "not while output is still queued");
        assert!(trim.maybe_trim(20, 0));
        assert_eq!(trim.trims(), 1);
        assert!(!trim.maybe_trim(30, 0), "the peak was reset by the trim");
    }

    #[test]
    fn small_bursts_never_trim() {
        let mut trim = HeapTrim::default();
        trim.observe(TRIM_AFTER_QUEUED_BYTES - 1);
        assert!(!trim.maybe_trim(5_000, 0));
        assert_eq!(trim.next_deadline_ms(0), None);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn heap_in_use_grows_by_what_is_held_and_falls_when_it_is_freed() {
        const HELD: usize = 64 << 20;
        let before = heap_in_use_bytes().expect("glibc");
        let held = vec![1u8; HELD];
        let during = heap_in_use_bytes().expect("glibc");
        drop(std::hint::black_box(held));
        let after = heap_in_use_bytes().expect("glibc");
        // Other tests allocate meanwhile on other threads: half the block is a wide margin.
        assert!(during >= before + HELD as u64 / 2, "{before} -> {during}");
        assert!(after + HELD as u64 / 2 <= during, "{during} -> {after}");
    }

    #[test]
    fn trims_are_an_interval_apart_and_a_waiting_one_sets_a_deadline() {
        let mut trim = HeapTrim::default();
        trim.observe(TRIM_AFTER_QUEUED_BYTES);
        assert!(trim.maybe_trim(100, 0));
        trim.observe(TRIM_AFTER_QUEUED_BYTES);
        assert!(!trim.maybe_trim(100 + TRIM_INTERVAL_MS - 1, 0));
        assert_eq!(trim.next_deadline_ms(150), Some(100 + TRIM_INTERVAL_MS));
        assert_eq!(
            trim.next_deadline_ms(100 + TRIM_INTERVAL_MS),
            None,
            "never a deadline in the past: the loop would spin"
        );
        assert!(trim.maybe_trim(100 + TRIM_INTERVAL_MS, 0));
        assert_eq!(trim.trims(), 2);
    }
}
