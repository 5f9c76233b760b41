//! Hashed timer wheel (Varghese & Lauck, scheme 6), driven by the caller's clock.
//!
//! Heartbeats, handshake deadlines and per-message ack timeouts are armed far more often than
//! they fire (most ack timeouts are cancelled by the ack), so arming and cancelling must be O(1)
//! and independent of how many timers are live. A sorted structure would pay O(log n) on both;
//! the wheel pays instead with coarse precision (one tick) and with skipping entries that belong
//! to a later revolution when the cursor visits their slot.
//!
//! Layout: entries live in one [`Slab`] and are threaded, through `prev`/`next` indices, into
//! one doubly linked list per slot (slot = deadline tick modulo the slot count), plus one "ready"
//! list of entries that are due but not yet handed out. Each entry keeps its absolute deadline
//! tick, so a visit of the cursor only takes the entries of the current revolution. An occupancy
//! bitmap over slots lets the cursor and [`TimerWheel::next_deadline_ms`] jump over empty slots
//! without touching them.
//!
//! Time is whatever the caller passes (P10): the wheel never reads a clock, so tests drive it with
//! fabricated milliseconds and never sleep.
//!
//! Every index into `entries` below comes from a list link, a slot head or a freshly inserted
//! key; those always name an occupied slab entry (entries are unlinked before they are removed),
//! so slab indexing never panics.

use std::fmt;

use slab::Slab;

/// Identifies one armed timer; cancelling a key that already fired or was cancelled is a no-op.
///
/// The generation guards against the slab reusing `slot` for a later timer: a key held past its
/// timer's end must not cancel a stranger's timer. Generations are 32 bits and wrap, so a key
/// kept through 2^32 further inserts that all land on the same slab slot could alias; callers
/// drop their keys when the timer fires or is cancelled, long before that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    slot: u32,
    generation: u32,
}

/// Largest number of slots [`TimerWheel::new`] accepts; larger requests are clamped. A million
/// slots of 10 ms already span almost three hours per revolution, more only costs memory.
const MAX_SLOT_COUNT: usize = 1 << 20;

/// The cursor's tick is kept at most one past this, so `tick + 1` never overflows. Only a
/// deadline within the last tick of the `u64` millisecond range is affected: it never fires,
/// which makes such deadlines usable as "never".
const MAX_TICK: u64 = u64::MAX - 1;

/// Ends of an intrusive doubly linked list threaded through the entry slab. The tail makes
/// appends O(1), which keeps entries of the same tick in insertion order.
#[derive(Clone, Copy, Debug, Default)]
struct List {
    head: Option<u32>,
    tail: Option<u32>,
}

/// Which list an entry is linked into, so cancel can unlink it without searching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Home {
    /// The list of slot `deadline_tick & slot_mask`.
    Slot,
    /// Due, waiting for `poll_expired` to hand it out.
    Ready,
}

struct Entry<T> {
    /// Absolute tick (deadline rounded up to the tick grid); tells a visit of the cursor whether
    /// the entry belongs to this revolution or a later one.
    deadline_tick: u64,
    generation: u32,
    home: Home,
    prev: Option<u32>,
    next: Option<u32>,
    value: T,
}

/// A hashed timer wheel holding values of type `T` until their deadline passes.
///
/// Precision is one tick: an entry never fires before its deadline and fires at the first
/// [`poll_expired`](Self::poll_expired) whose `now_ms` reaches the deadline rounded up to a
/// multiple of `tick_ms`. The tick grid is absolute (multiples of `tick_ms` since time zero),
/// not relative to the wheel's start time.
pub struct TimerWheel<T> {
    tick_ms: u64,
    /// `slot_count - 1`; the slot count is a power of two so the modulo is a mask.
    slot_mask: u64,
    slots: Box<[List]>,
    /// Bit `s` is set iff `slots[s]` is non-empty.
    occupied: Box<[u64]>,
    ready: List,
    entries: Slab<Entry<T>>,
    /// Latest time seen (start time or a `poll_expired` argument); never goes backwards.
    now_ms: u64,
    /// Every entry still in a slot has `deadline_tick >= cursor_tick`; ticks before the cursor
    /// have been moved to the ready list. Advanced lazily, only when the ready list runs dry,
    /// so at most `now_ms / tick_ms + 1`.
    cursor_tick: u64,
    next_generation: u32,
}

impl<T> TimerWheel<T> {
    /// Creates an empty wheel whose current time is `now_ms`.
    ///
    /// A revolution (`tick_ms * slot_count`) should cover the usual timeouts, since each
    /// revolution an entry waits through costs one skip when the cursor passes its slot; longer
    /// deadlines still work. Arguments are clamped rather than rejected, because every value has
    /// an obvious nearest valid one: `tick_ms` 0 becomes 1, `slot_count` is rounded up to a power
    /// of two (for the modulo-by-mask) within `2..=2^20`.
    pub fn new(tick_ms: u64, slot_count: usize, now_ms: u64) -> Self {
        let tick_ms = tick_ms.max(1);
        let slot_count = slot_count
            .clamp(2, MAX_SLOT_COUNT)
            .checked_next_power_of_two()
            .unwrap_or(MAX_SLOT_COUNT);
        let word_count = slot_count.div_ceil(64);
        TimerWheel {
            tick_ms,
            slot_mask: (slot_count - 1) as u64,
            slots: vec![List::default(); slot_count].into_boxed_slice(),
            occupied: vec![0; word_count].into_boxed_slice(),
            ready: List::default(),
            entries: Slab::new(),
            now_ms,
            cursor_tick: (now_ms / tick_ms).min(MAX_TICK) + 1,
            next_generation: 0,
        }
    }

    /// Arms a timer for `deadline_ms`.
    ///
    /// A deadline at or before the wheel's current time (the latest `now_ms` it was given) is
    /// handed out by the next [`poll_expired`](Self::poll_expired), even inside a drain loop
    /// that is already running, so a caller re-arming "immediately" is not lost behind the
    /// cursor.
    ///
    /// # Panics
    ///
    /// If more than `u32::MAX` timers are armed at once (keys hold 32-bit slab indices; that
    /// many entries would take well over 100 GiB).
    // The panic is not reachable from input: every timer belongs to a connection, a message or
    // a peer, each bounded by its limit, and 2^32 entries would take well over 100 GiB.
    #[allow(clippy::panic)]
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerKey {
        let Ok(idx) = u32::try_from(self.entries.vacant_key()) else {
            panic!("timer wheel holds more than u32::MAX timers");
        };
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        // Rounding up is what makes "never early" hold: the tick boundary is >= the deadline.
        let deadline_tick = deadline_ms.div_ceil(self.tick_ms);
        let home = if deadline_ms <= self.now_ms {
            Home::Ready
        } else {
            Home::Slot
        };
        let key = self.entries.insert(Entry {
            deadline_tick,
            generation,
            home,
            prev: None,
            next: None,
            value,
        });
        debug_assert_eq!(key, idx as usize);
        match home {
            Home::Ready => push_back(&mut self.entries, &mut self.ready, idx),
            Home::Slot => {
                // deadline_ms > now_ms, so deadline_tick > now_ms / tick_ms >= cursor_tick - 1:
                // the entry is never behind the cursor.
                debug_assert!(deadline_tick >= self.cursor_tick);
                let slot = self.slot_index(deadline_tick);
                push_back(&mut self.entries, &mut self.slots[slot], idx);
                self.set_occupied(slot);
            }
        }
        TimerKey {
            slot: idx,
            generation,
        }
    }

    /// Disarms a timer in O(1) and gives its value back.
    ///
    /// `None` when the timer already fired or was cancelled, including when its slab slot has
    /// since been reused by another timer: the generation check keeps a stale key from
    /// cancelling someone else's timer.
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let idx = key.slot;
        let entry = self.entries.get(idx as usize)?;
        if entry.generation != key.generation {
            return None;
        }
        self.unlink(idx);
        Some(self.entries.remove(idx as usize).value)
    }

    /// Hands out one expired timer, or `None` when nothing is due at `now_ms`.
    ///
    /// One at a time so the caller can act on each value (and re-arm) with no borrow of the
    /// wheel held and no allocation for a batch. Work is bounded however far `now_ms` jumped:
    /// after an idle gap of a revolution or more, one sweep over all entries replaces the
    /// tick-by-tick walk. Entries come out in deadline-tick order (insertion order within a
    /// tick), except after such a gap, when all of them are overdue anyway.
    ///
    /// A `now_ms` earlier than a previous one is treated as no progress rather than an error,
    /// so a misbehaving clock cannot make timers fire twice or panic the server.
    pub fn poll_expired(&mut self, now_ms: u64) -> Option<T> {
        self.now_ms = self.now_ms.max(now_ms);
        if self.ready.head.is_none() {
            self.advance_cursor();
        }
        let idx = self.ready.head?;
        unlink(&mut self.entries, &mut self.ready, idx);
        Some(self.entries.remove(idx as usize).value)
    }

    /// A lower bound on the time at which [`poll_expired`](Self::poll_expired) can next return
    /// something, for the event loop's poll timeout; `None` when no timer is armed.
    ///
    /// The answer is the tick boundary of the first occupied slot at or after the cursor. That
    /// slot may only hold entries of a later revolution, so the caller can wake up to find
    /// nothing due; that costs one spurious wakeup per revolution and keeps this O(1) in the
    /// common case (O(slot_count / 64) bitmap words at worst), cheap enough for every loop turn.
    /// It may also lie in the past, when the cursor lags behind after a partial drain.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.ready.head.is_some() {
            return Some(self.now_ms);
        }
        let start = self.slot_index(self.cursor_tick);
        let slot = self.first_occupied_from(start)?;
        let ahead_ticks = (slot.wrapping_sub(start) as u64) & self.slot_mask;
        Some(
            self.cursor_tick
                .saturating_add(ahead_ticks)
                .saturating_mul(self.tick_ms),
        )
    }

    /// Number of armed timers, including due ones not yet handed out.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn slot_count(&self) -> usize {
        self.slots.len()
    }

    fn slot_index(&self, tick: u64) -> usize {
        // The mask is below slot_count, itself a usize, so the cast is lossless.
        (tick & self.slot_mask) as usize
    }

    /// Moves due entries to the ready list until it is non-empty or the cursor passes `now_ms`.
    ///
    /// Each iteration advances the cursor by at least one tick and the walk is only taken when
    /// less than a revolution is pending, so one call visits at most `slot_count` slots.
    fn advance_cursor(&mut self) {
        let now_tick = (self.now_ms / self.tick_ms).min(MAX_TICK);
        while self.ready.head.is_none() && self.cursor_tick <= now_tick {
            let behind_ticks = now_tick - self.cursor_tick;
            if behind_ticks >= self.slot_count() as u64 {
                // Every slot falls within (cursor, now], so every entry up to now is due
                // whatever its slot: one sweep, instead of visiting slots revolution after
                // revolution over a long idle gap.
                self.sweep_due(now_tick);
                self.cursor_tick = now_tick + 1;
                return;
            }
            let start = self.slot_index(self.cursor_tick);
            let ahead_ticks = self
                .first_occupied_from(start)
                .map(|slot| (slot.wrapping_sub(start) as u64) & self.slot_mask);
            match ahead_ticks {
                Some(ahead_ticks) if ahead_ticks <= behind_ticks => {
                    let tick = self.cursor_tick + ahead_ticks;
                    self.expire_slot(self.slot_index(tick), tick);
                    self.cursor_tick = tick + 1;
                }
                // Nothing occupied up to now: jump straight past it.
                _ => self.cursor_tick = now_tick + 1,
            }
        }
    }

    /// Visits every occupied slot once, starting at the cursor's so the output stays roughly in
    /// deadline order, moving entries due by `now_tick` to the ready list.
    fn sweep_due(&mut self, now_tick: u64) {
        let start = self.slot_index(self.cursor_tick);
        for offset in 0..self.slot_count() {
            // The mask is below slot_count, a usize, so the cast is lossless.
            let slot = (start + offset) & self.slot_mask as usize;
            if self.is_occupied(slot) {
                self.expire_slot(slot, now_tick);
            }
        }
    }

    /// Moves the entries of `slot` with `deadline_tick <= up_to_tick` to the ready list; the
    /// others belong to a later revolution and stay.
    fn expire_slot(&mut self, slot: usize, up_to_tick: u64) {
        let mut next = self.slots[slot].head;
        while let Some(idx) = next {
            let entry = &mut self.entries[idx as usize];
            next = entry.next;
            if entry.deadline_tick <= up_to_tick {
                entry.home = Home::Ready;
                unlink(&mut self.entries, &mut self.slots[slot], idx);
                push_back(&mut self.entries, &mut self.ready, idx);
            }
        }
        if self.slots[slot].head.is_none() {
            self.clear_occupied(slot);
        }
    }

    fn unlink(&mut self, idx: u32) {
        let entry = &self.entries[idx as usize];
        let (home, deadline_tick) = (entry.home, entry.deadline_tick);
        match home {
            Home::Ready => unlink(&mut self.entries, &mut self.ready, idx),
            Home::Slot => {
                let slot = self.slot_index(deadline_tick);
                unlink(&mut self.entries, &mut self.slots[slot], idx);
                if self.slots[slot].head.is_none() {
                    self.clear_occupied(slot);
                }
            }
        }
    }

    fn is_occupied(&self, slot: usize) -> bool {
        self.occupied[slot / 64] & (1 << (slot % 64)) != 0
    }

    fn set_occupied(&mut self, slot: usize) {
        self.occupied[slot / 64] |= 1 << (slot % 64);
    }

    fn clear_occupied(&mut self, slot: usize) {
        self.occupied[slot / 64] &= !(1 << (slot % 64));
    }

    /// The first occupied slot at or after `start`, wrapping around the wheel.
    fn first_occupied_from(&self, start: usize) -> Option<usize> {
        let word_count = self.occupied.len();
        let mut word = start / 64;
        // The start word is seen twice: first its bits from `start` up, last its bits below.
        let mut bits = self.occupied[word] & (u64::MAX << (start % 64));
        for _ in 0..=word_count {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word = (word + 1) % word_count;
            bits = self.occupied[word];
        }
        None
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    /// A summary: dumping every entry of a large wheel would flood a log, and `T` need not be
    /// `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("tick_ms", &self.tick_ms)
            .field("slot_count", &self.slot_count())
            .field("len", &self.len())
            .field("now_ms", &self.now_ms)
            .field("cursor_tick", &self.cursor_tick)
            .finish_non_exhaustive()
    }
}

/// Appends `idx` (currently unlinked) at the tail of `list`.
fn push_back<T>(entries: &mut Slab<Entry<T>>, list: &mut List, idx: u32) {
    let entry = &mut entries[idx as usize];
    entry.prev = list.tail;
    entry.next = None;
    match list.tail {
        Some(tail) => entries[tail as usize].next = Some(idx),
        None => list.head = Some(idx),
    }
    list.tail = Some(idx);
}

/// Removes `idx` from `list`, which must be the list it is linked into.
fn unlink<T>(entries: &mut Slab<Entry<T>>, list: &mut List, idx: u32) {
    let entry = &mut entries[idx as usize];
    let (prev, next) = (entry.prev, entry.next);
    entry.prev = None;
    entry.next = None;
    match prev {
        Some(prev) => entries[prev as usize].next = next,
        None => list.head = next,
    }
    match next {
        Some(next) => entries[next as usize].prev = prev,
        None => list.tail = prev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    /// Drains everything due at `now_ms`, in the order the wheel hands it out.
    fn drain<T>(wheel: &mut TimerWheel<T>, now_ms: u64) -> Vec<T> {
        let mut fired = Vec::new();
        while let Some(value) = wheel.poll_expired(now_ms) {
            fired.push(value);
        }
        fired
    }

    /// Checks the structural invariants that the public API cannot see.
    fn check_invariants<T>(wheel: &TimerWheel<T>) {
        let mut linked = 0;
        for (slot, list) in wheel.slots.iter().enumerate() {
            assert_eq!(
                list.head.is_some(),
                wheel.is_occupied(slot),
                "bitmap of slot {slot}"
            );
            let mut prev = None;
            let mut next = list.head;
            while let Some(idx) = next {
                let entry = &wheel.entries[idx as usize];
                assert_eq!(entry.home, Home::Slot);
                assert_eq!(wheel.slot_index(entry.deadline_tick), slot);
                assert!(
                    entry.deadline_tick >= wheel.cursor_tick,
                    "entry behind the cursor"
                );
                assert_eq!(entry.prev, prev);
                prev = Some(idx);
                next = entry.next;
                linked += 1;
            }
            assert_eq!(list.tail, prev);
        }
        let mut prev = None;
        let mut next = wheel.ready.head;
        while let Some(idx) = next {
            let entry = &wheel.entries[idx as usize];
            assert_eq!(entry.home, Home::Ready);
            assert_eq!(entry.prev, prev);
            prev = Some(idx);
            next = entry.next;
            linked += 1;
        }
        assert_eq!(wheel.ready.tail, prev);
        assert_eq!(linked, wheel.len(), "every entry is in exactly one list");
    }

    #[test]
    fn fires_at_the_deadline_not_one_ms_before() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        wheel.insert(50, "a");
        assert_eq!(wheel.poll_expired(49), None);
        assert_eq!(wheel.poll_expired(50), Some("a"));
        assert!(wheel.is_empty());
    }

    #[test]
    fn off_grid_deadline_fires_at_the_next_tick_boundary() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        wheel.insert(41, "a");
        assert_eq!(
            wheel.poll_expired(41),
            None,
            "rounded up to the tick boundary 50"
        );
        assert_eq!(wheel.poll_expired(49), None);
        assert_eq!(wheel.poll_expired(50), Some("a"), "at most one tick late");
    }

    #[test]
    fn start_time_off_the_grid() {
        let mut wheel = TimerWheel::new(10, 8, 1_003);
        wheel.insert(1_007, "a");
        wheel.insert(1_010, "b");
        assert_eq!(wheel.poll_expired(1_009), None);
        assert_eq!(drain(&mut wheel, 1_010), ["a", "b"]);
    }

    #[test]
    fn several_deadlines_fire_in_order() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        for deadline_ms in [70, 20, 50, 20, 10, 60] {
            wheel.insert(deadline_ms, deadline_ms);
        }
        assert_eq!(drain(&mut wheel, 5), Vec::<u64>::new());
        assert_eq!(drain(&mut wheel, 25), [10, 20, 20]);
        assert_eq!(drain(&mut wheel, 1_000), [50, 60, 70]);
    }

    #[test]
    fn one_late_poll_hands_out_in_deadline_order() {
        let mut wheel = TimerWheel::new(1, 64, 0);
        for deadline_ms in [9, 3, 7, 1, 5, 3] {
            wheel.insert(deadline_ms, deadline_ms);
        }
        assert_eq!(drain(&mut wheel, 10), [1, 3, 3, 5, 7, 9]);
    }

    #[test]
    fn same_tick_fires_in_insertion_order() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        for (deadline_ms, name) in [(30, "a"), (25, "b"), (21, "c"), (30, "d")] {
            wheel.insert(deadline_ms, name);
        }
        assert_eq!(drain(&mut wheel, 30), ["a", "b", "c", "d"]);
    }

    #[test]
    fn deadline_in_the_past_or_now_fires_at_next_poll() {
        let mut wheel = TimerWheel::new(10, 8, 1_000);
        wheel.insert(0, "past");
        wheel.insert(1_000, "now");
        assert_eq!(wheel.next_deadline_ms(), Some(1_000));
        assert_eq!(drain(&mut wheel, 1_000), ["past", "now"]);

        // Off the tick grid: "now" is 1_005, and a deadline of 1_005 is not rounded up to 1_010.
        assert_eq!(wheel.poll_expired(1_005), None);
        wheel.insert(1_005, "now, off grid");
        assert_eq!(wheel.poll_expired(1_005), Some("now, off grid"));
    }

    #[test]
    fn cancel_before_fire_returns_the_value_and_it_never_fires() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        let key = wheel.insert(30, "a");
        wheel.insert(30, "b");
        assert_eq!(wheel.cancel(key), Some("a"));
        assert_eq!(drain(&mut wheel, 1_000), ["b"]);
    }

    #[test]
    fn cancel_a_due_entry_waiting_in_the_ready_list() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        let a = wheel.insert(10, "a");
        let b = wheel.insert(10, "b");
        let c = wheel.insert(10, "c");
        assert_eq!(wheel.poll_expired(10), Some("a"));
        // b and c are now in the ready list; the handler of a cancels c.
        assert_eq!(wheel.cancel(c), Some("c"));
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(drain(&mut wheel, 10), ["b"]);
        assert_eq!(wheel.cancel(b), None);
        check_invariants(&wheel);
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        let key = wheel.insert(10, "a");
        assert_eq!(wheel.poll_expired(10), Some("a"));
        assert_eq!(wheel.cancel(key), None);
    }

    #[test]
    fn double_cancel_returns_none() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        let key = wheel.insert(10, "a");
        assert_eq!(wheel.cancel(key), Some("a"));
        assert_eq!(wheel.cancel(key), None);
        assert!(wheel.is_empty());
    }

    #[test]
    fn stale_key_does_not_cancel_the_reuser_of_its_slab_slot() {
        let mut wheel = TimerWheel::new(10, 8, 0);

        let a = wheel.insert(10, "a");
        assert_eq!(wheel.poll_expired(10), Some("a"));
        let b = wheel.insert(20, "b");
        assert_eq!(a.slot, b.slot, "the test needs the slab slot to be reused");
        assert_eq!(wheel.cancel(a), None, "fired key");

        let c = {
            assert_eq!(wheel.cancel(b), Some("b"));
            wheel.insert(30, "c")
        };
        assert_eq!(b.slot, c.slot);
        assert_eq!(wheel.cancel(b), None, "cancelled key");
        assert_eq!(wheel.cancel(a), None);

        assert_eq!(drain(&mut wheel, 30), ["c"]);
    }

    #[test]
    fn far_deadlines_wrap_the_wheel_and_fire_only_when_due() {
        // One revolution is 80 ms; 10_000 ms is 125 revolutions away, in slot 0 like tick 0.
        let mut wheel = TimerWheel::new(10, 8, 0);
        wheel.insert(10_000, "far");
        wheel.insert(10_005, "far, off grid");
        wheel.insert(80, "one revolution");
        for now_ms in (0..10_000).step_by(5) {
            let fired = drain(&mut wheel, now_ms);
            if now_ms == 80 {
                assert_eq!(fired, ["one revolution"]);
            } else {
                assert!(fired.is_empty(), "fired {fired:?} at {now_ms}");
            }
            check_invariants(&wheel);
        }
        assert_eq!(drain(&mut wheel, 10_000), ["far"]);
        assert_eq!(drain(&mut wheel, 10_009), Vec::<&str>::new());
        assert_eq!(drain(&mut wheel, 10_010), ["far, off grid"]);
    }

    #[test]
    fn huge_jump_of_now_is_bounded_and_fires_everything_due() {
        let mut wheel = TimerWheel::new(10, 1024, 0);
        for i in 0..10_000u64 {
            // Spread over many revolutions; 1 in 10 lies after the jump.
            let deadline_ms = if i % 10 == 0 {
                1_000_000_000_000 + 1 + i
            } else {
                i * 99_991
            };
            wheel.insert(deadline_ms, deadline_ms);
        }
        let now_ms = 1_000_000_000_000;
        // 10^11 ticks: a tick-by-tick walk would take minutes, the sweep takes microseconds.
        let started = std::time::Instant::now();
        let fired = drain(&mut wheel, now_ms);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(fired.len(), 9_000);
        assert!(fired.iter().all(|&deadline_ms| deadline_ms <= now_ms));
        assert_eq!(wheel.len(), 1_000);
        check_invariants(&wheel);
        assert_eq!(drain(&mut wheel, now_ms + 10_000).len(), 1_000);
    }

    #[test]
    fn rearm_inside_the_poll_loop() {
        let period_ms = 25;
        let mut wheel = TimerWheel::new(10, 8, 0);
        wheel.insert(period_ms, "heartbeat");
        let mut fired_at_ms = Vec::new();
        for now_ms in (0..=300).step_by(10) {
            while let Some(name) = wheel.poll_expired(now_ms) {
                fired_at_ms.push(now_ms);
                // Re-arming in the future must not fire again in this same loop.
                wheel.insert(now_ms + period_ms, name);
            }
        }
        assert_eq!(fired_at_ms, [30, 60, 90, 120, 150, 180, 210, 240, 270, 300]);
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn insert_already_due_inside_the_poll_loop_fires_in_the_same_loop() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        wheel.insert(20, 1);
        wheel.insert(30, 2);
        let mut fired = Vec::new();
        while let Some(value) = wheel.poll_expired(35) {
            fired.push(value);
            if value == 1 {
                wheel.insert(35, 10);
                wheel.insert(5, 11);
                wheel.insert(36, 12);
            }
        }
        assert_eq!(fired, [1, 10, 11, 2]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(drain(&mut wheel, 39), Vec::<i32>::new());
        assert_eq!(drain(&mut wheel, 40), [12]);
    }

    #[test]
    fn time_going_backwards_is_no_progress() {
        let mut wheel = TimerWheel::new(10, 8, 1_000);
        wheel.insert(1_050, "a");
        assert_eq!(wheel.poll_expired(0), None);
        assert_eq!(wheel.poll_expired(1_040), None);
        assert_eq!(wheel.poll_expired(500), None);
        assert_eq!(wheel.poll_expired(1_050), Some("a"));
        // The wheel's time stays at 1_050: a deadline at 1_050 is already due.
        wheel.insert(1_050, "b");
        assert_eq!(wheel.poll_expired(3), Some("b"));
    }

    #[test]
    fn next_deadline_ms_tracks_the_earliest_slot() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        assert_eq!(wheel.next_deadline_ms(), None);

        wheel.insert(41, "a");
        assert_eq!(
            wheel.next_deadline_ms(),
            Some(50),
            "rounded up to the tick grid"
        );
        let b = wheel.insert(20, "b");
        assert_eq!(wheel.next_deadline_ms(), Some(20));

        assert_eq!(wheel.cancel(b), Some("b"));
        assert_eq!(wheel.next_deadline_ms(), Some(50));
        assert_eq!(wheel.poll_expired(50), Some("a"));
        assert_eq!(wheel.next_deadline_ms(), None);

        // A later revolution sharing a slot only gives an early (spurious) wake-up.
        wheel.insert(130, "c"); // tick 13, slot 5; the cursor is at tick 6.
        assert_eq!(wheel.next_deadline_ms(), Some(130));
        wheel.insert(900, "d"); // tick 90, slot 2.
        assert_eq!(
            wheel.next_deadline_ms(),
            Some(100),
            "slot 2 comes round at tick 10"
        );
        assert_eq!(drain(&mut wheel, 100), Vec::<&str>::new());
        assert_eq!(wheel.next_deadline_ms(), Some(130));

        // Due entries waiting in the ready list are due now.
        wheel.insert(10, "past");
        assert_eq!(wheel.next_deadline_ms(), Some(100));
        assert_eq!(drain(&mut wheel, 100), ["past"]);
        assert_eq!(wheel.next_deadline_ms(), Some(130));
    }

    #[test]
    fn next_deadline_ms_is_never_after_the_real_deadline() {
        let tick_ms = 7;
        let mut wheel = TimerWheel::new(tick_ms, 16, 3);
        let mut pending_ms = vec![5, 12, 300, 301, 1_000, 77, 78, 79, 10_000];
        for &deadline_ms in &pending_ms {
            wheel.insert(deadline_ms, deadline_ms);
        }
        let mut now_ms = 3;
        let mut wakeups = 0;
        // An event loop that sleeps until next_deadline_ms and polls.
        while let Some(next_ms) = wheel.next_deadline_ms() {
            let earliest_due_ms = pending_ms
                .iter()
                .map(|deadline_ms| deadline_ms.div_ceil(tick_ms) * tick_ms)
                .min();
            assert!(
                Some(next_ms) <= earliest_due_ms,
                "woke up too late at {next_ms}"
            );
            now_ms = now_ms.max(next_ms);
            for fired_ms in drain(&mut wheel, now_ms) {
                assert!(fired_ms <= now_ms);
                pending_ms.retain(|&deadline_ms| deadline_ms != fired_ms);
            }
            wakeups += 1;
        }
        assert!(pending_ms.is_empty());
        // 10_000 ms is about 90 revolutions of 112 ms: one spurious wake-up each, no more.
        assert!(wakeups < 120, "{wakeups} wake-ups");
    }

    #[test]
    fn len_and_is_empty() {
        let mut wheel = TimerWheel::new(10, 8, 0);
        assert!(wheel.is_empty());
        assert_eq!(wheel.len(), 0);
        let a = wheel.insert(10, ());
        wheel.insert(20, ());
        wheel.insert(0, ());
        assert_eq!(wheel.len(), 3);
        assert!(!wheel.is_empty());
        wheel.cancel(a);
        assert_eq!(wheel.len(), 2);
        wheel.cancel(a);
        assert_eq!(wheel.len(), 2);
        assert_eq!(wheel.poll_expired(0), Some(()));
        assert_eq!(wheel.len(), 1, "handed out entries are no longer counted");
        assert_eq!(drain(&mut wheel, 20).len(), 1);
        assert!(wheel.is_empty());
    }

    #[test]
    fn degenerate_arguments_are_clamped() {
        let wheel = TimerWheel::<()>::new(0, 0, 0);
        assert_eq!((wheel.tick_ms, wheel.slot_count()), (1, 2));
        let wheel = TimerWheel::<()>::new(10, 1000, 0);
        assert_eq!(wheel.slot_count(), 1024);
        let wheel = TimerWheel::<()>::new(10, usize::MAX, 0);
        assert_eq!(wheel.slot_count(), MAX_SLOT_COUNT);

        let mut wheel = TimerWheel::new(0, 3, 0);
        wheel.insert(3, "a");
        assert_eq!(wheel.poll_expired(2), None);
        assert_eq!(wheel.poll_expired(3), Some("a"));
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        for tick_ms in [1, 10, 7] {
            let mut wheel = TimerWheel::new(tick_ms, 8, u64::MAX - 100);
            wheel.insert(u64::MAX, "never");
            wheel.insert(u64::MAX - 50, "late");
            assert!(wheel.next_deadline_ms().is_some());
            assert_eq!(wheel.poll_expired(u64::MAX - 51), None);
            assert_eq!(drain(&mut wheel, u64::MAX), ["late"]);
            if tick_ms == 1 {
                // The last millisecond of u64 is "never", see MAX_TICK.
                assert_eq!(wheel.len(), 1);
            }
            wheel.insert(u64::MAX, "now");
            assert_eq!(wheel.poll_expired(u64::MAX), Some("now"));
            check_invariants(&wheel);
        }
    }

    /// xorshift64*: deterministic, dependency-free randomness for the model check.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }
    }

    /// The wheel against a naive model: each timer's exact due time is computed up front, a
    /// poll must hand out exactly the timers due by then, never an undue one.
    struct ModelCheck {
        rng: XorShift,
        tick_ms: u64,
        wheel: TimerWheel<u64>,
        /// id -> (deadline_ms, due_ms).
        model: BTreeMap<u64, (u64, u64)>,
        keys: HashMap<u64, TimerKey>,
        live_ids: Vec<u64>,
        dead_keys: Vec<TimerKey>,
        /// Mirrors the wheel's notion of "now": the latest time it was given.
        now_ms: u64,
        next_id: u64,
        fired: u64,
    }

    impl ModelCheck {
        fn new(seed: u64, tick_ms: u64, slot_count: usize, start_ms: u64) -> Self {
            ModelCheck {
                rng: XorShift(seed),
                tick_ms,
                wheel: TimerWheel::new(tick_ms, slot_count, start_ms),
                model: BTreeMap::new(),
                keys: HashMap::new(),
                live_ids: Vec::new(),
                dead_keys: Vec::new(),
                now_ms: start_ms,
                next_id: 0,
                fired: 0,
            }
        }

        fn revolution_ms(&self) -> u64 {
            self.tick_ms * self.wheel.slot_count() as u64
        }

        fn random_deadline_ms(&mut self) -> u64 {
            let revolution_ms = self.revolution_ms();
            match self.rng.below(10) {
                0 => self
                    .now_ms
                    .saturating_sub(self.rng.below(3 * revolution_ms)),
                1 => self.now_ms,
                2..=5 => self.now_ms + 1 + self.rng.below(revolution_ms),
                6..=8 => self.now_ms + 1 + self.rng.below(20 * revolution_ms),
                _ => self.now_ms + 1 + self.rng.below(1_000 * revolution_ms),
            }
        }

        fn insert(&mut self) {
            let deadline_ms = self.random_deadline_ms();
            let id = self.next_id;
            self.next_id += 1;
            // The contract: due now if not after the wheel's current time, otherwise at the
            // deadline rounded up to the tick grid.
            let due_ms = if deadline_ms <= self.now_ms {
                self.now_ms
            } else {
                deadline_ms.div_ceil(self.tick_ms) * self.tick_ms
            };
            let key = self.wheel.insert(deadline_ms, id);
            self.model.insert(id, (deadline_ms, due_ms));
            self.keys.insert(id, key);
            self.live_ids.push(id);
        }

        fn cancel(&mut self) {
            if self.live_ids.is_empty() || self.rng.below(4) == 0 {
                if !self.dead_keys.is_empty() {
                    let i = self.rng.below(self.dead_keys.len() as u64) as usize;
                    assert_eq!(self.wheel.cancel(self.dead_keys[i]), None, "stale key");
                }
                return;
            }
            let i = self.rng.below(self.live_ids.len() as u64) as usize;
            let id = self.live_ids.swap_remove(i);
            let key = self.keys.remove(&id).expect("live ids have keys");
            assert_eq!(self.wheel.cancel(key), Some(id));
            self.model.remove(&id);
            self.dead_keys.push(key);
        }

        fn forget_fired(&mut self, id: u64) {
            let i = self
                .live_ids
                .iter()
                .position(|&live| live == id)
                .expect("fired id was live");
            self.live_ids.swap_remove(i);
            let key = self.keys.remove(&id).expect("live ids have keys");
            self.dead_keys.push(key);
        }

        fn advance(&mut self) {
            let revolution_ms = self.revolution_ms();
            let poll_ms = match self.rng.below(20) {
                0 => self.now_ms.saturating_sub(self.rng.below(revolution_ms)),
                1 => self.now_ms + revolution_ms * (1 + self.rng.below(50)),
                2 => self.now_ms + self.rng.below(3 * revolution_ms),
                _ => self.now_ms + self.rng.below(3 * self.tick_ms),
            };
            let next_ms = self.wheel.next_deadline_ms();
            let earliest_due_ms = self.model.values().map(|&(_, due_ms)| due_ms).min();
            match (next_ms, earliest_due_ms) {
                (None, None) => {}
                (Some(next_ms), Some(due_ms)) => assert!(next_ms <= due_ms, "{next_ms} > {due_ms}"),
                other => panic!("next_deadline_ms disagrees with the model: {other:?}"),
            }
            self.now_ms = self.now_ms.max(poll_ms);

            while let Some(id) = self.wheel.poll_expired(poll_ms) {
                let (deadline_ms, due_ms) = self.model.remove(&id).expect("fired a live timer");
                assert!(deadline_ms <= self.now_ms, "fired early");
                assert!(
                    due_ms <= self.now_ms,
                    "fired before its tick: {due_ms} > {}",
                    self.now_ms
                );
                self.forget_fired(id);
                self.fired += 1;
                // Handlers arm and cancel timers between two polls.
                match self.rng.below(8) {
                    0 => self.insert(),
                    1 => self.cancel(),
                    _ => {}
                }
            }
            let overdue: Vec<_> = self
                .model
                .iter()
                .filter(|(_, &(_, due))| due <= self.now_ms)
                .collect();
            assert!(
                overdue.is_empty(),
                "due but not fired at {}: {overdue:?}",
                self.now_ms
            );
        }

        fn run(&mut self, steps: usize) {
            for _ in 0..steps {
                match self.rng.below(10) {
                    0..=4 => self.insert(),
                    5..=6 => self.cancel(),
                    _ => self.advance(),
                }
                assert_eq!(self.wheel.len(), self.model.len());
                assert_eq!(self.wheel.is_empty(), self.model.is_empty());
                check_invariants(&self.wheel);
            }
        }
    }

    #[test]
    fn randomized_against_a_naive_model() {
        let shapes: [(u64, usize, u64); 4] =
            [(10, 8, 0), (1, 64, 5), (7, 128, 1_000_003), (10, 2, 0)];
        for seed in 1..=8u64 {
            for &(tick_ms, slot_count, start_ms) in &shapes {
                let mut check = ModelCheck::new(
                    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    tick_ms,
                    slot_count,
                    start_ms,
                );
                check.run(3_000);
                assert!(
                    check.fired > 100,
                    "the run exercised firing: {}",
                    check.fired
                );
            }
        }
    }
}
