//! What a run measures: histograms, per-(receiver, sender) sequence tracking, error counters.
//! Recording is cheap and allocation-free on the hot path; summaries are computed after the run.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::RunError;

/// Highest trackable latency: one minute, in µs. Larger values are clamped and counted.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// A latency histogram in µs, 3 significant digits, 1 µs to 60 s.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
    /// Samples above `LATENCY_US_MAX`, recorded as the maximum.
    pub clamped: u64,
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
            // sigfig <= 5), so this cannot fail at run time.
            hist: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("constant histogram bounds are valid"),
            clamped: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, value_us: u64) {
        if value_us > LATENCY_US_MAX {
            self.clamped += 1;
        }
        self.hist.saturating_record(value_us);
    }

    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let at = |q: f64| ms(self.hist.value_at_quantile(q));
        let empty = self.hist.is_empty();
        LatencySummary {
            count: self.hist.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: if empty { 0.0 } else { ms(self.hist.max()) },
            // Rounded to the µs like the percentiles (the histogram's unit).
            mean_ms: if empty {
                0.0
            } else {
                self.hist.mean().round() / 1_000.0
            },
            clamped: self.clamped,
        }
    }

    /// The value at `quantile`, in µs (0 when empty).
    pub fn value_at_quantile_us(&self, quantile: f64) -> u64 {
        self.hist.value_at_quantile(quantile)
    }

    /// The histogram itself (µs), for the writers that walk its distribution (`hgrm`, `plot`).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }
}

/// The loadgen's own lags, measured the same way in every scenario: whether it kept its plan
/// (see `Plan::record_lateness` and `sockio::flush_queued`).
#[derive(Debug, Default)]
pub struct OwnLags {
    /// Actual write completion minus intended send time.
    pub send_lag: LatencyHistogram,
    /// The part of the send lag that is the loop noticing the due time late.
    pub schedule_lateness: LatencyHistogram,
    /// The part of the send lag spent queued behind a socket that was not writable (until the
    /// write attempt that sent the message's last byte).
    pub socket_blocked: LatencyHistogram,
}

impl OwnLags {
    /// By name, for `--hgrm`.
    pub fn named(&self) -> [(&'static str, &LatencyHistogram); 3] {
        [
            ("send-lag", &self.send_lag),
            ("schedule-lateness", &self.schedule_lateness),
            ("socket-blocked", &self.socket_blocked),
        ]
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

/// Percentiles of one histogram, in milliseconds (the histogram itself stays in µs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Samples above the histogram's 60 s ceiling, counted as 60 s.
    pub clamped: u64,
}

impl LatencySummary {
    /// The report's percentile line: p50 to max, and the sample count.
    pub fn percentiles_text(&self) -> String {
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }

    /// [`Self::percentiles_text`], or "(no samples)" when there are none.
    pub fn percentiles_or_none(&self) -> String {
        if self.count == 0 {
            "(no samples)".to_string()
        } else {
            self.percentiles_text()
        }
    }
}

/// What one received record means for its (receiver, sender) stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqOutcome {
    /// The expected next sequence number.
    InOrder,
    /// Ahead of the expected one: this many messages were skipped (lost).
    Gap(u64),
    /// Behind the expected one: a duplicate, or a message that arrived after a later one.
    /// The server relays each sender over one TCP stream, so neither should ever happen.
    Behind,
}

/// Per receiver, per sender: the next sequence number expected.
///
/// Losses are the gaps plus, at the end, every message sent but never delivered
/// ([`SeqTracker::undelivered`]). A reordered message therefore shows as a gap when the later
/// one arrives and as `Behind` when it arrives itself: both count against the run, which is
/// what we want, since ROOM over TCP must not reorder.
#[derive(Clone, Debug)]
pub struct SeqTracker {
    senders: usize,
    /// `expected[receiver * senders + sender]`. u32: the argument limits keep every sender's
    /// message count below 2^32.
    expected: Vec<u32>,
    pub counts: SeqCounts,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SeqCounts {
    /// Records that advanced their stream (in order, or ahead after a gap).
    pub delivered: u64,
    /// Messages skipped over by a later one.
    pub gap_losses: u64,
    /// Records behind their stream's expected sequence: duplicates or reorders.
    pub duplicates_or_reorders: u64,
}

impl SeqTracker {
    pub fn new(receivers: usize, senders: usize) -> SeqTracker {
        SeqTracker {
            senders,
            expected: vec![0; receivers * senders],
            counts: SeqCounts::default(),
        }
    }

    pub fn senders(&self) -> usize {
        self.senders
    }

    /// Accounts for `seq` from `sender` arriving at `receiver`. Both indices are checked by
    /// the caller (a sender index from the network is validated before it gets here).
    #[inline]
    pub fn observe(&mut self, receiver: usize, sender: usize, seq: u64) -> SeqOutcome {
        let slot = &mut self.expected[receiver * self.senders + sender];
        let expected = u64::from(*slot);
        if seq < expected {
            self.counts.duplicates_or_reorders += 1;
            return SeqOutcome::Behind;
        }
        // seq + 1 fits: sequence numbers stay below 2^32 (see `expected`); a corrupt larger one
        // saturates instead of wrapping.
        *slot = u32::try_from(seq + 1).unwrap_or(u32::MAX);
        self.counts.delivered += 1;
        if seq == expected {
            SeqOutcome::InOrder
        } else {
            self.counts.gap_losses += seq - expected;
            SeqOutcome::Gap(seq - expected)
        }
    }

    /// Messages sent but never delivered at the end: for every receiver that counts
    /// (`receiver_counts`), for every sender, the sent count beyond what the receiver reached.
    /// `sent[s]` is how many messages sender `s` fully wrote to its socket.
    pub fn undelivered(&self, receiver_counts: impl Fn(usize) -> bool, sent: &[u64]) -> u64 {
        let receivers = self.expected.len().checked_div(self.senders).unwrap_or(0);
        let mut missing = 0;
        for receiver in (0..receivers).filter(|&r| receiver_counts(r)) {
            let row = &self.expected[receiver * self.senders..(receiver + 1) * self.senders];
            for (reached, &sent_count) in row.iter().zip(sent) {
                missing += sent_count.saturating_sub(u64::from(*reached));
            }
        }
        missing
    }

    /// Every stream of every counted receiver has reached `sent`: nothing is in flight.
    pub fn all_reached(&self, receiver_counts: impl Fn(usize) -> bool, sent: &[u64]) -> bool {
        self.undelivered(receiver_counts, sent) == 0
    }
}

/// Error classes, as wrk2 counts them: a run keeps going after an error, and reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connecting or joining the room failed (refused, reset, timed out, bad handshake bytes).
    Connect,
    /// A read failed, or the server closed a joined connection.
    Read,
    /// A write failed.
    Write,
    /// Bytes that break the protocol: a malformed record, a sender index out of range.
    Protocol,
}

/// Error counts by kind, with the first message of each kind kept for the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub protocol: u64,
    /// The first error of each kind, in words (errors are rare, so formatting one is fine).
    pub first: Vec<(String, String)>,
}

impl ErrorCounts {
    /// Why a run that joined nobody cannot go on: the first error counted, or `none`.
    pub fn unreachable(&self, none: &str) -> RunError {
        RunError::Unreachable(
            self.first
                .first()
                .map_or_else(|| none.to_string(), |(_, what)| what.clone()),
        )
    }

    /// Counts one error; `describe` is only called for the first of its kind.
    pub fn count(&mut self, kind: ErrorKind, describe: impl FnOnce() -> String) {
        let (slot, name) = match kind {
            ErrorKind::Connect => (&mut self.connect, "connect"),
            ErrorKind::Read => (&mut self.read, "read"),
            ErrorKind::Write => (&mut self.write, "write"),
            ErrorKind::Protocol => (&mut self.protocol, "protocol"),
        };
        *slot += 1;
        if *slot == 1 {
            self.first.push((name.to_string(), describe()));
        }
    }

    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.protocol
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_streams_lose_nothing() {
        let mut t = SeqTracker::new(3, 2);
        for seq in 0..10 {
            for r in 0..3 {
                for s in 0..2 {
                    assert_eq!(t.observe(r, s, seq), SeqOutcome::InOrder);
                }
            }
        }
        assert_eq!(t.counts.delivered, 60);
        assert_eq!(t.counts.gap_losses, 0);
        assert_eq!(t.counts.duplicates_or_reorders, 0);
        assert_eq!(t.undelivered(|_| true, &[10, 10]), 0);
        assert!(t.all_reached(|_| true, &[10, 10]));
    }

    #[test]
    fn gaps_duplicates_and_reorders() {
        let mut t = SeqTracker::new(1, 1);
        assert_eq!(t.observe(0, 0, 0), SeqOutcome::InOrder);
        assert_eq!(t.observe(0, 0, 3), SeqOutcome::Gap(2)); // 1 and 2 skipped
        assert_eq!(t.observe(0, 0, 3), SeqOutcome::Behind); // duplicate
        assert_eq!(t.observe(0, 0, 1), SeqOutcome::Behind); // late (reordered)
        assert_eq!(t.observe(0, 0, 4), SeqOutcome::InOrder);
        assert_eq!(
            t.counts,
            SeqCounts {
                delivered: 3,
                gap_losses: 2,
                duplicates_or_reorders: 2
            }
        );
    }

    #[test]
    fn messages_never_delivered_are_losses_per_receiver() {
        // 3 receivers, 2 senders; sender 0 sent 5, sender 1 sent 3.
        let mut t = SeqTracker::new(3, 2);
        for seq in 0..5 {
            t.observe(0, 0, seq);
        }
        for seq in 0..3 {
            t.observe(0, 1, seq);
        }
        // Receiver 1 got only the first two of sender 0 and nothing of sender 1.
        t.observe(1, 0, 0);
        t.observe(1, 0, 1);
        // Receiver 2 never joined: it does not count.
        let sent = [5, 3];
        assert_eq!(t.undelivered(|r| r != 2, &sent), 3 + 3);
        assert!(!t.all_reached(|r| r != 2, &sent));
        assert_eq!(t.undelivered(|r| r == 0, &sent), 0);
        assert!(t.all_reached(|r| r == 0, &sent));
    }

    #[test]
    fn first_error_of_each_kind_is_kept() {
        let mut e = ErrorCounts::default();
        e.count(ErrorKind::Connect, || "refused".into());
        e.count(ErrorKind::Connect, || {
            unreachable!("only the first is described")
        });
        e.count(ErrorKind::Protocol, || "bad digit".into());
        assert_eq!((e.connect, e.protocol, e.total()), (2, 1, 3));
        assert_eq!(
            e.first,
            vec![
                ("connect".to_string(), "refused".to_string()),
                ("protocol".to_string(), "bad digit".to_string())
            ]
        );
    }

    #[test]
    fn histogram_summary_in_ms_and_clamping() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.summary().max_ms, 0.0);
        for us in 1..=1000 {
            h.record(us);
        }
        h.record(0); // a zero is recordable (it lands with the smallest values)
        h.record(LATENCY_US_MAX * 2);
        let s = h.summary();
        assert_eq!(s.count, 1002);
        assert_eq!(s.clamped, 1);
        assert!((s.p50_ms - 0.5).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 0.99).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 60_000.0).abs() < 60.0, "{s:?}");
    }
}
