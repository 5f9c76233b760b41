//! The plan: every message's intended send time, fixed before the first send and never
//! influenced by what the server does (open loop; see shared design, "coordinated omission").
//!
//! Messages are numbered globally, `g = 0, 1, 2, ...`, and message `g` belongs to sender
//! `g % senders` as that sender's `g / senders`-th message. Its intended time is
//!
//! ```text
//! intended_us(g) = start_us + floor(g * 1_000_000 / rate_per_s)
//! ```
//!
//! so the senders together send at exactly `rate_per_s`, each sender sends every
//! `senders / rate_per_s` seconds (constant spacing, to within the 1 µs rounding of the floor),
//! and sender `s` is phase-shifted by `s / rate_per_s` from sender 0: the load is spread evenly
//! instead of arriving as one burst per interval. Because intended times grow with `g`, the
//! loop finds the next due message by looking at one counter, with no timer heap.

use crate::stats::LatencyHistogram;

/// Intended times of one run's messages, all in µs since the loadgen's epoch.
#[derive(Clone, Debug)]
pub struct Plan {
    pub senders: u32,
    pub rate_per_s: u64,
    /// Intended time of message 0.
    pub start_us: u64,
    /// Messages intended before `start_us + warmup_us` are sent and checked for loss, but kept
    /// out of the histograms: connections, caches and the server's buffers are still settling.
    pub warmup_us: u64,
    /// The measured window follows the warmup.
    pub duration_us: u64,
    /// Number of messages in the plan: those intended before the end of the measured window.
    pub messages: u64,
}

/// A planned message found due: its number in the plan, when it was meant to go, and when the
/// loop noticed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub g: u64,
    pub intended_us: u64,
    pub noticed_us: u64,
}

impl Plan {
    pub fn new(
        senders: u32,
        rate_per_s: u64,
        start_us: u64,
        warmup_us: u64,
        duration_us: u64,
    ) -> Plan {
        assert!(
            senders > 0 && rate_per_s > 0,
            "validated by the argument parser"
        );
        let window_us = u128::from(warmup_us + duration_us);
        // g is in the plan iff floor(g * 1e6 / rate) < window, iff g * 1e6 < window * rate,
        // so the count is ceil(window * rate / 1e6).
        let messages = (window_us * u128::from(rate_per_s)).div_ceil(1_000_000);
        Plan {
            senders,
            rate_per_s,
            start_us,
            warmup_us,
            duration_us,
            messages: u64::try_from(messages).unwrap_or(u64::MAX),
        }
    }

    /// Intended send time of global message `g`.
    #[inline]
    pub fn intended_us(&self, g: u64) -> u64 {
        let offset_us = u128::from(g) * 1_000_000 / u128::from(self.rate_per_s);
        self.start_us + offset_us as u64
    }

    /// Which sender (0-based ordinal among the senders) sends global message `g`.
    #[inline]
    pub fn sender_of(&self, g: u64) -> u32 {
        (g % u64::from(self.senders)) as u32
    }

    /// Start of the measured window.
    pub fn measure_start_us(&self) -> u64 {
        self.start_us + self.warmup_us
    }

    /// End (exclusive) of the measured window.
    pub fn measure_end_us(&self) -> u64 {
        self.measure_start_us() + self.duration_us
    }

    /// `count` per second of the measured window (0 for an empty window).
    pub fn per_s(&self, count: u64) -> f64 {
        let duration_s = self.duration_us as f64 / 1e6;
        if duration_s > 0.0 {
            count as f64 / duration_s
        } else {
            0.0
        }
    }

    /// Whether a message intended at `intended_us` belongs to the warmup.
    #[inline]
    pub fn is_warmup(&self, intended_us: u64) -> bool {
        intended_us < self.measure_start_us()
    }

    /// Whether `now_us` is inside the measured window.
    #[inline]
    pub fn in_window(&self, now_us: u64) -> bool {
        (self.measure_start_us()..self.measure_end_us()).contains(&now_us)
    }

    /// What a message intended at `intended_us` arriving at `now_us` adds to a run's figures:
    /// its latency in `latency` (outside the warmup), and one to `in_window` if it arrived
    /// inside the measured window.
    #[inline]
    pub fn record_arrival(
        &self,
        intended_us: u64,
        now_us: u64,
        latency: &mut LatencyHistogram,
        in_window: &mut u64,
    ) {
        if !self.is_warmup(intended_us) {
            latency.record(now_us.saturating_sub(intended_us));
        }
        if self.in_window(now_us) {
            *in_window += 1;
        }
    }

    /// Whether every message of `plan` (if it has one yet) was taken, `next` being the next.
    pub fn all_taken(plan: Option<&Plan>, next: u64) -> bool {
        plan.is_some_and(|p| next >= p.messages)
    }

    /// The next message of the plan, `*next`, if it is due by `now_us`; `*next` moves past it.
    #[inline]
    pub fn take_due(&self, next: &mut u64, now_us: u64) -> Option<Due> {
        if *next >= self.messages {
            return None;
        }
        let intended_us = self.intended_us(*next);
        if intended_us > now_us {
            return None;
        }
        let due = Due {
            g: *next,
            intended_us,
            noticed_us: now_us,
        };
        *next += 1;
        Some(due)
    }

    /// Outside the warmup, records how late the loop noticed `due`: the loadgen's own fault,
    /// the first part of every send lag (the rest is measured when the write completes).
    #[inline]
    pub fn record_lateness(&self, due: &Due, lateness: &mut LatencyHistogram) {
        if !self.is_warmup(due.intended_us) {
            lateness.record(due.noticed_us.saturating_sub(due.intended_us));
        }
    }

    /// The spacing between two messages of one sender, in µs (fractional: the rounding of
    /// individual times averages out).
    pub fn sender_interval_us(&self) -> f64 {
        f64::from(self.senders) * 1_000_000.0 / self.rate_per_s as f64
    }
}

/// Picks `count` senders among the clients that joined, with a seeded shuffle: which clients
/// send is then reproducible with the same `--seed`, and not always the first ones to connect
/// (which would also be the ones that got the most join notices).
pub fn choose_senders(joined: &[usize], count: usize, seed: u64) -> Vec<usize> {
    let mut pool = joined.to_vec();
    let mut rng = SplitMix64(seed);
    // Fisher-Yates, stopped after `count` draws.
    let count = count.min(pool.len());
    for i in 0..count {
        let j = i + (rng.next() % (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(count);
    pool
}

/// A tiny, well-known PRNG (Steele, Lea and Flood's SplitMix64). Only reproducibility matters
/// here, not cryptographic quality, so no dependency is needed.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_intended_times() {
        // 4 senders, 1000 msg/s in total: one message every 1000 µs overall.
        let plan = Plan::new(4, 1_000, 50_000, 0, 1_000_000);
        assert_eq!(plan.intended_us(0), 50_000);
        assert_eq!(plan.intended_us(1), 51_000);
        assert_eq!(plan.intended_us(999), 50_000 + 999_000);
        assert_eq!(plan.messages, 1_000);
        // Non-integral spacing: 3 msg/s gives 0, 333333, 666666, 1000000 µs.
        let plan = Plan::new(1, 3, 0, 0, 1_000_000);
        let times: Vec<u64> = (0..4).map(|g| plan.intended_us(g)).collect();
        assert_eq!(times, vec![0, 333_333, 666_666, 1_000_000]);
        assert_eq!(
            plan.messages, 3,
            "the message at exactly 1 s is outside a 1 s window"
        );
    }

    #[test]
    fn senders_are_staggered_with_constant_spacing() {
        // 50 senders, 5000 msg/s: each sender every 10 ms, sender s offset by s * 200 µs.
        let plan = Plan::new(50, 5_000, 0, 0, 10_000_000);
        assert_eq!(plan.sender_interval_us(), 10_000.0);
        for s in 0..50u64 {
            assert_eq!(plan.sender_of(s), s as u32);
            assert_eq!(plan.intended_us(s), s * 200, "phase of sender {s}");
            for k in 0..100u64 {
                let g = k * 50 + s;
                assert_eq!(plan.sender_of(g), s as u32);
                assert_eq!(plan.intended_us(g + 50) - plan.intended_us(g), 10_000);
            }
        }
        // Spacing that is not a whole number of µs stays within 1 µs of the ideal.
        let plan = Plan::new(7, 3_000, 0, 0, 1_000_000);
        let ideal = plan.sender_interval_us();
        for g in 0..plan.messages - 7 {
            let gap = (plan.intended_us(g + 7) - plan.intended_us(g)) as f64;
            assert!((gap - ideal).abs() < 1.0, "g={g} gap={gap} ideal={ideal}");
        }
    }

    #[test]
    fn the_total_rate_is_exact() {
        let plan = Plan::new(50, 5_000, 1_000, 1_000_000, 10_000_000);
        assert_eq!(plan.messages, 55_000, "(1 s warmup + 10 s) at 5000 msg/s");
        // Every whole second of the plan holds exactly `rate` messages.
        let mut per_second = vec![0u64; 11];
        for g in 0..plan.messages {
            per_second[((plan.intended_us(g) - plan.start_us) / 1_000_000) as usize] += 1;
        }
        assert!(per_second.iter().all(|&n| n == 5_000), "{per_second:?}");
        // Every sender gets its share.
        let mut per_sender = vec![0u64; 50];
        for g in 0..plan.messages {
            per_sender[plan.sender_of(g) as usize] += 1;
        }
        assert!(per_sender.iter().all(|&n| n == 1_100));
        // A rate that does not divide evenly: 7 msg/s for 1.5 s gives 11 messages (10.5 rounded up:
        // message 10 is intended at 1.428 s, inside the window).
        assert_eq!(Plan::new(3, 7, 0, 500_000, 1_000_000).messages, 11);
    }

    #[test]
    fn warmup_and_measured_window() {
        let plan = Plan::new(2, 10, 100, 1_000_000, 2_000_000);
        assert_eq!(plan.measure_start_us(), 1_000_100);
        assert_eq!(plan.measure_end_us(), 3_000_100);
        let warm = (0..plan.messages)
            .filter(|&g| plan.is_warmup(plan.intended_us(g)))
            .count();
        assert_eq!(warm, 10);
        assert_eq!(plan.messages, 30);
    }

    #[test]
    fn seeded_sender_choice() {
        let joined: Vec<usize> = (0..100).collect();
        let a = choose_senders(&joined, 10, 42);
        let b = choose_senders(&joined, 10, 42);
        let c = choose_senders(&joined, 10, 43);
        assert_eq!(a, b, "same seed, same senders");
        assert_ne!(a, c, "another seed, other senders");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 10, "distinct");
        assert!(a.iter().all(|i| joined.contains(i)));
        // More senders asked than joined: all of them, once each.
        let mut all = choose_senders(&joined[..5], 10, 1);
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }
}
