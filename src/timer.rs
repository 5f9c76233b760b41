//! Hashed timer wheel (placeholder API; the implementation lands in the same change).

/// Identifies one armed timer; cancelling a key that already fired or was cancelled is a no-op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    slot: u32,
    generation: u32,
}

pub struct TimerWheel<T> {
    _marker: std::marker::PhantomData<T>,
}

impl<T> TimerWheel<T> {
    pub fn new(tick_ms: u64, slot_count: usize, now_ms: u64) -> Self {
        let _ = (tick_ms, slot_count, now_ms);
        todo!()
    }
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerKey {
        let _ = (deadline_ms, value);
        todo!()
    }
    pub fn cancel(&mut self, key: TimerKey) -> Option<T> {
        let _ = key;
        todo!()
    }
    pub fn poll_expired(&mut self, now_ms: u64) -> Option<T> {
        let _ = now_ms;
        todo!()
    }
    pub fn next_deadline_ms(&self) -> Option<u64> {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        todo!()
    }
}
