//! Timer wheel throughput at 10^4, 10^5 and 10^6 live entries, in the server's shape: 10 ms
//! ticks, 1024 slots (a revolution of about 10 s) and deadlines spread over 60 s, so most
//! entries wait through several revolutions like handshake and ack timeouts do.
//!
//! Run by hand with `cargo bench --bench timer` (about a minute and a half); CI only builds it.
//! Results read as elements/s: timers inserted, cancelled or handed out per second, and for
//! `steady_insert_cancel` insert+cancel pairs per second.

// Benches may unwrap, expect and panic: a failed assumption is a failed run (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use switchboard::timer::{TimerKey, TimerWheel};

const TICK_MS: u64 = 10;
const SLOT_COUNT: usize = 1024;
/// Deadlines are spread uniformly over this window after the start time.
const SPREAD_MS: u64 = 60_000;
const START_MS: u64 = 1_700_000_000_000;
/// The ack timeout armed and cancelled by the steady-state bench.
const ACK_TIMEOUT_MS: u64 = 5_000;
const LIVE_COUNTS: [usize; 3] = [10_000, 100_000, 1_000_000];

/// xorshift64*: deterministic deadlines and cancel order without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn spread_deadlines_ms(count: usize) -> Vec<u64> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    (0..count)
        .map(|_| START_MS + 1 + rng.next() % SPREAD_MS)
        .collect()
}

fn new_wheel() -> TimerWheel<u64> {
    TimerWheel::new(TICK_MS, SLOT_COUNT, START_MS)
}

fn filled_wheel(deadlines_ms: &[u64]) -> (TimerWheel<u64>, Vec<TimerKey>) {
    let mut wheel = new_wheel();
    let keys = deadlines_ms
        .iter()
        .map(|&deadline_ms| wheel.insert(deadline_ms, deadline_ms))
        .collect();
    (wheel, keys)
}

/// Cancels in an order unrelated to insertion, as acks arrive: a cancel then touches cold
/// neighbours in the slab instead of walking it sequentially.
fn shuffled(mut keys: Vec<TimerKey>) -> Vec<TimerKey> {
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    for i in (1..keys.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        keys.swap(i, j);
    }
    keys
}

/// Filling an empty wheel up to `count` live entries, slab growth included.
fn insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer/insert");
    for count in LIVE_COUNTS {
        let deadlines_ms = spread_deadlines_ms(count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &deadlines_ms,
            |b, deadlines_ms| {
                b.iter_batched(
                    new_wheel,
                    |mut wheel| {
                        for &deadline_ms in deadlines_ms {
                            black_box(wheel.insert(black_box(deadline_ms), deadline_ms));
                        }
                        wheel
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

/// Cancelling every entry of a wheel holding `count`, in random order.
fn cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer/cancel");
    for count in LIVE_COUNTS {
        let deadlines_ms = spread_deadlines_ms(count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &deadlines_ms,
            |b, deadlines_ms| {
                b.iter_batched(
                    || {
                        let (wheel, keys) = filled_wheel(deadlines_ms);
                        (wheel, shuffled(keys))
                    },
                    |(mut wheel, keys)| {
                        for key in keys {
                            black_box(wheel.cancel(black_box(key)));
                        }
                        wheel
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

/// Letting 60 s pass tick by tick and draining everything, as the event loop does: each tick's
/// slot visit also skips the entries of later revolutions.
fn advance(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer/advance");
    for count in LIVE_COUNTS {
        let deadlines_ms = spread_deadlines_ms(count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(count),
            &deadlines_ms,
            |b, deadlines_ms| {
                b.iter_batched(
                    || filled_wheel(deadlines_ms).0,
                    |mut wheel| {
                        let mut now_ms = START_MS;
                        while now_ms <= START_MS + SPREAD_MS {
                            while let Some(value) = wheel.poll_expired(black_box(now_ms)) {
                                black_box(value);
                            }
                            now_ms += TICK_MS;
                        }
                        assert!(wheel.is_empty());
                        wheel
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

/// The server's common case: an ack timeout armed and cancelled by the ack, next to `count`
/// other live timers. One element is one insert+cancel pair.
fn steady_insert_cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("timer/steady_insert_cancel");
    group.throughput(Throughput::Elements(1));
    for count in LIVE_COUNTS {
        let (mut wheel, _keys) = filled_wheel(&spread_deadlines_ms(count));
        let mut sent = 0u64;
        group.bench_function(BenchmarkId::from_parameter(count), |b| {
            b.iter(|| {
                // Spread the acks over half a revolution so they do not all share one slot.
                sent = sent.wrapping_add(1);
                let deadline_ms = START_MS + ACK_TIMEOUT_MS + (sent * 7) % 5_000;
                let key = wheel.insert(black_box(deadline_ms), sent);
                black_box(wheel.cancel(key))
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = insert, cancel, advance, steady_insert_cancel
}
criterion_main!(benches);
