//! Fixed-bucket latency histograms for the metrics: a plain one for the reactor thread and an
//! atomic one for the store's thread. Recording is a short search over a few bounds and two
//! additions, cheap enough for every loop turn; the buckets are Prometheus's (cumulative when
//! rendered, in seconds), the counts here are per bucket and in microseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (10 µs to 2.5 s); one more bucket counts
/// everything above the last. Loop turns are mostly in the first few, fsync'd commits in the
/// milliseconds: one layout serves both.
pub const BUCKET_BOUNDS_US: [u64; 17] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000,
];

/// Buckets, the last one for samples above every bound.
pub const BUCKETS: usize = BUCKET_BOUNDS_US.len() + 1;

fn bucket_of(sample_us: u64) -> usize {
    // The first bound at or above the sample (`le` is inclusive); past the end: the overflow.
    BUCKET_BOUNDS_US.partition_point(|&bound| bound < sample_us)
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// A histogram owned by one thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Samples per bucket (not cumulative), bucket `i` bounded by `BUCKET_BOUNDS_US[i]`.
    pub counts: [u64; BUCKETS],
    pub sum_us: u64,
    pub count: u64,
}

impl Histogram {
    pub fn record_us(&mut self, sample_us: u64) {
        self.counts[bucket_of(sample_us)] += 1;
        self.sum_us = self.sum_us.saturating_add(sample_us);
        self.count += 1;
    }

    pub fn record(&mut self, elapsed: Duration) {
        self.record_us(micros(elapsed));
    }
}

/// A histogram written by one thread and read by another (the store's commit latency).
/// Relaxed ordering: a reader may see a sample in `count` a moment before its bucket, which
/// a scrape tolerates; nothing else depends on these values.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl AtomicHistogram {
    pub fn record(&self, elapsed: Duration) {
        let sample_us = micros(elapsed);
        self.counts[bucket_of(sample_us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(sample_us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        let mut counts = [0; BUCKETS];
        for (count, atomic) in counts.iter_mut().zip(&self.counts) {
            *count = atomic.load(Ordering::Relaxed);
        }
        Histogram {
            counts,
            sum_us: self.sum_us.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_on_a_bound_falls_in_that_bound_and_above_every_bound_in_the_overflow() {
        let mut histogram = Histogram::default();
        histogram.record_us(0);
        histogram.record_us(10);
        histogram.record_us(11);
        histogram.record_us(2_500_000);
        histogram.record_us(2_500_001);
        histogram.record(Duration::from_secs(3600));
        assert_eq!(histogram.counts[0], 2);
        assert_eq!(histogram.counts[1], 1);
        assert_eq!(histogram.counts[BUCKETS - 2], 1);
        assert_eq!(histogram.counts[BUCKETS - 1], 2);
        assert_eq!(histogram.count, 6);
        assert_eq!(
            histogram.sum_us,
            10 + 11 + 2_500_000 + 2_500_001 + 3_600_000_000
        );
    }

    #[test]
    fn the_atomic_histogram_snapshots_what_the_plain_one_would_hold() {
        let atomic = AtomicHistogram::default();
        let mut plain = Histogram::default();
        for us in [5, 70, 70, 4_000, 9_000_000] {
            atomic.record(Duration::from_micros(us));
            plain.record_us(us);
        }
        assert_eq!(atomic.snapshot(), plain);
    }
}
