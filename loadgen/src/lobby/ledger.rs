//! The lobby's accounting, without I/O: who must receive which message, what arrived, and the
//! latencies per (origin, destination) protocol pair.
//!
//! Every lobby member may send, and a message goes to every member of the lobby at the time it
//! was written except, in protocols that do not echo (CCM, OCM), its own sender. Each
//! (receiver, sender) pair is one stream with consecutive sequence numbers, as the server
//! relays one sender's messages in order to each recipient; a gap is a loss, a number behind
//! the stream a duplicate (or reorder). The lobby's membership is fixed before the first
//! message (every member joins in the ramp-up), so "in the lobby when it was written" only
//! changes when a member fails: from then on it expects nothing more, and what it had not
//! received of the messages written before counts as lost ([`Ledger::leave`]).

use serde::Serialize;

use crate::stats::{LatencyHistogram, SeqOutcome};

/// The lobby's protocols, in the order the report lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Room,
    Matou,
    Ccm,
    Ocm,
    Web,
}

/// How many protocols the lobby knows.
pub const KIND_COUNT: usize = 5;

pub const KINDS: [Kind; KIND_COUNT] = [Kind::Room, Kind::Matou, Kind::Ccm, Kind::Ocm, Kind::Web];

impl Kind {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Room => "room",
            Kind::Matou => "matou",
            Kind::Ccm => "ccm",
            Kind::Ocm => "ocm",
            Kind::Web => "web",
        }
    }

    /// Whether its own users get their own lobby messages back: ROOM echoes every chunk to its
    /// sender, MATOU broadcasts to every signed-in user, WEB echoes a `say`; CCM's `*` and
    /// OCM's room skip the sender.
    pub fn echoes(self) -> bool {
        matches!(self, Kind::Room | Kind::Matou | Kind::Web)
    }
}

/// One (origin, destination) protocol pair's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PairCounts {
    /// Deliveries that advanced their stream (in order, or ahead after a gap).
    pub delivered: u64,
    /// Messages skipped over by a later one of the same sender.
    pub gap_losses: u64,
    /// Deliveries behind their stream: duplicates or reorders.
    pub duplicates_or_reorders: u64,
}

/// Latencies of one run, by pair and in aggregate.
#[derive(Debug, Default)]
pub struct PairLatencies {
    /// `by_pair[origin][destination]`.
    pub by_pair: [[LatencyHistogram; KIND_COUNT]; KIND_COUNT],
    /// Every delivery whose receiver speaks the sender's protocol.
    pub same: LatencyHistogram,
    /// Every delivery that crossed from one protocol to another.
    pub cross: LatencyHistogram,
    /// All of them.
    pub all: LatencyHistogram,
}

impl PairLatencies {
    #[inline]
    pub fn record(&mut self, origin: Kind, destination: Kind, latency_us: u64) {
        self.by_pair[origin.index()][destination.index()].record(latency_us);
        if origin == destination {
            self.same.record(latency_us);
        } else {
            self.cross.record(latency_us);
        }
        self.all.record(latency_us);
    }
}

#[derive(Clone, Debug)]
pub struct Ledger {
    kinds: Vec<Kind>,
    /// `reached[receiver * members + sender]`: the next sequence number the stream expects.
    reached: Vec<u32>,
    /// Messages each member wrote completely.
    sent: Vec<u64>,
    /// Members expecting deliveries: joined and not failed since.
    present: Vec<bool>,
    /// Messages lost by members that left (failed): what they had not received of the
    /// messages written while they were present, by pair.
    lost_on_leaving: [[u64; KIND_COUNT]; KIND_COUNT],
    pub pairs: [[PairCounts; KIND_COUNT]; KIND_COUNT],
}

impl Ledger {
    pub fn new(kinds: Vec<Kind>) -> Ledger {
        let n = kinds.len();
        Ledger {
            reached: vec![0; n * n],
            sent: vec![0; n],
            present: vec![false; n],
            lost_on_leaving: [[0; KIND_COUNT]; KIND_COUNT],
            pairs: [[PairCounts::default(); KIND_COUNT]; KIND_COUNT],
            kinds,
        }
    }

    pub fn members(&self) -> usize {
        self.kinds.len()
    }

    /// Member `m` is in the lobby: it expects every message written from now on.
    pub fn enter(&mut self, m: usize) {
        if !self.present[m] {
            // Only what is written from now on: its streams start at what was sent so far.
            let n = self.members();
            for s in 0..n {
                self.reached[m * n + s] = u32::try_from(self.sent[s]).unwrap_or(u32::MAX);
            }
            self.present[m] = true;
        }
    }

    /// Member `m` left the lobby (failed): what it still missed is lost, and it expects nothing
    /// more.
    pub fn leave(&mut self, m: usize) {
        if !std::mem::take(&mut self.present[m]) {
            return;
        }
        let n = self.members();
        let destination = self.kinds[m].index();
        for s in 0..n {
            if self.expects(m, s) {
                let missing = self.sent[s].saturating_sub(u64::from(self.reached[m * n + s]));
                self.lost_on_leaving[self.kinds[s].index()][destination] += missing;
            }
        }
    }

    #[cfg(test)]
    pub fn is_present(&self, m: usize) -> bool {
        self.present[m]
    }

    /// Whether `receiver` gets what `sender` says in the lobby (everyone but itself, unless its
    /// protocol echoes).
    #[inline]
    pub fn expects(&self, receiver: usize, sender: usize) -> bool {
        receiver != sender || self.kinds[sender].echoes()
    }

    /// Member `sender` wrote its next message completely.
    pub fn on_sent(&mut self, sender: usize) {
        self.sent[sender] += 1;
    }

    /// Message `seq` of `sender` reached `receiver`; both checked by the caller (indices in
    /// range, and `expects(receiver, sender)`).
    #[inline]
    pub fn on_delivered(&mut self, receiver: usize, sender: usize, seq: u64) -> SeqOutcome {
        let n = self.members();
        let pair = &mut self.pairs[self.kinds[sender].index()][self.kinds[receiver].index()];
        let slot = &mut self.reached[receiver * n + sender];
        let expected = u64::from(*slot);
        if seq < expected {
            pair.duplicates_or_reorders += 1;
            return SeqOutcome::Behind;
        }
        *slot = u32::try_from(seq + 1).unwrap_or(u32::MAX);
        pair.delivered += 1;
        if seq == expected {
            SeqOutcome::InOrder
        } else {
            pair.gap_losses += seq - expected;
            SeqOutcome::Gap(seq - expected)
        }
    }

    /// Messages written and not (yet) delivered, by pair: `[origin][destination]`, those of
    /// members that left included.
    pub fn undelivered(&self) -> [[u64; KIND_COUNT]; KIND_COUNT] {
        let n = self.members();
        let mut missing = self.lost_on_leaving;
        for r in (0..n).filter(|&r| self.present[r]) {
            let destination = self.kinds[r].index();
            for s in 0..n {
                if self.expects(r, s) {
                    let reached = u64::from(self.reached[r * n + s]);
                    missing[self.kinds[s].index()][destination] +=
                        self.sent[s].saturating_sub(reached);
                }
            }
        }
        missing
    }

    /// Whether every present member has every message written so far (the drain's check).
    pub fn complete(&self) -> bool {
        let n = self.members();
        (0..n).filter(|&r| self.present[r]).all(|r| {
            (0..n)
                .all(|s| !self.expects(r, s) || u64::from(self.reached[r * n + s]) >= self.sent[s])
        })
    }

    /// Deliveries expected so far, by pair: every message written, once for each member of
    /// the lobby meant to get it, whether it came or not.
    pub fn expected(&self) -> [[u64; KIND_COUNT]; KIND_COUNT] {
        let mut expected = self.undelivered();
        for (o, row) in expected.iter_mut().enumerate() {
            for (d, cell) in row.iter_mut().enumerate() {
                *cell += self.pairs[o][d].delivered;
            }
        }
        expected
    }

    /// Summed over every pair.
    pub fn totals(&self) -> PairCounts {
        let mut total = PairCounts::default();
        for row in &self.pairs {
            for p in row {
                total.delivered += p.delivered;
                total.gap_losses += p.gap_losses;
                total.duplicates_or_reorders += p.duplicates_or_reorders;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: usize = 0;
    const MATOU: usize = 1;
    const CCM: usize = 2;
    const OCM: usize = 3;

    fn lobby() -> Ledger {
        let mut ledger = Ledger::new(KINDS.to_vec());
        for m in 0..4 {
            ledger.enter(m);
        }
        ledger
    }

    fn cell(table: [[u64; KIND_COUNT]; KIND_COUNT], origin: usize, destination: usize) -> u64 {
        table[origin][destination]
    }

    #[test]
    fn echoing_protocols_expect_their_own_messages_the_others_do_not() {
        let ledger = lobby();
        assert!(ledger.expects(ROOM, ROOM));
        assert!(ledger.expects(MATOU, MATOU));
        assert!(!ledger.expects(CCM, CCM));
        assert!(!ledger.expects(OCM, OCM));
        assert!(ledger.expects(CCM, OCM) && ledger.expects(OCM, ROOM));
    }

    #[test]
    fn every_message_is_owed_to_every_other_member_by_pair() {
        let mut ledger = lobby();
        ledger.on_sent(CCM); // to ROOM, MATOU, OCM (not back to CCM)
        ledger.on_sent(ROOM); // to all four, ROOM itself included
        let missing = ledger.undelivered();
        assert_eq!(missing.iter().flatten().sum::<u64>(), 3 + 4);
        assert_eq!(cell(missing, 2, 2), 0);
        assert_eq!(cell(missing, 0, 0), 1);
        assert!(!ledger.complete());
        for r in [ROOM, MATOU, OCM] {
            assert_eq!(ledger.on_delivered(r, CCM, 0), SeqOutcome::InOrder);
        }
        for r in [ROOM, MATOU, CCM, OCM] {
            assert_eq!(ledger.on_delivered(r, ROOM, 0), SeqOutcome::InOrder);
        }
        assert!(ledger.complete());
        assert_eq!(ledger.undelivered(), [[0; KIND_COUNT]; KIND_COUNT]);
        assert_eq!(ledger.pairs[2][3].delivered, 1); // ccm -> ocm
        assert_eq!(ledger.pairs[0][0].delivered, 1); // room echo
        assert_eq!(ledger.expected().iter().flatten().sum::<u64>(), 7);
        assert_eq!(ledger.totals().delivered, 7);
    }

    #[test]
    fn gaps_duplicates_and_never_delivered_are_counted_per_pair() {
        let mut ledger = lobby();
        for _ in 0..5 {
            ledger.on_sent(MATOU);
        }
        // ROOM gets 0, 3 (1 and 2 skipped), 3 again, then nothing.
        assert_eq!(ledger.on_delivered(ROOM, MATOU, 0), SeqOutcome::InOrder);
        assert_eq!(ledger.on_delivered(ROOM, MATOU, 3), SeqOutcome::Gap(2));
        assert_eq!(ledger.on_delivered(ROOM, MATOU, 3), SeqOutcome::Behind);
        let pair = ledger.pairs[1][0];
        assert_eq!(
            (pair.delivered, pair.gap_losses, pair.duplicates_or_reorders),
            (2, 2, 1)
        );
        let missing = ledger.undelivered();
        assert_eq!(cell(missing, 1, 0), 1); // message 4 never came
        assert_eq!(cell(missing, 1, 1), 5); // MATOU's own echo
        assert_eq!(cell(missing, 1, 2), 5);
        assert_eq!(cell(missing, 1, 3), 5);
    }

    #[test]
    fn a_member_that_leaves_owes_what_was_written_while_it_was_there_and_nothing_after() {
        let mut ledger = lobby();
        ledger.on_sent(ROOM);
        ledger.on_sent(ROOM);
        ledger.on_delivered(OCM, ROOM, 0);
        ledger.leave(OCM); // message 1 is lost to it
        ledger.on_sent(ROOM); // OCM is not in the lobby any more: not owed
        for r in [ROOM, MATOU, CCM] {
            for seq in 0..3 {
                ledger.on_delivered(r, ROOM, seq);
            }
        }
        assert!(ledger.complete());
        let missing = ledger.undelivered();
        assert_eq!(cell(missing, 0, 3), 1);
        assert_eq!(missing.iter().flatten().sum::<u64>(), 1);
        assert!(!ledger.is_present(OCM));
        ledger.leave(OCM); // twice counts once
        assert_eq!(ledger.undelivered().iter().flatten().sum::<u64>(), 1);
    }

    #[test]
    fn a_member_entering_late_owes_only_what_comes_after() {
        let mut ledger = Ledger::new(KINDS.to_vec());
        ledger.enter(ROOM);
        ledger.on_sent(ROOM);
        ledger.enter(CCM);
        assert_eq!(ledger.undelivered().iter().flatten().sum::<u64>(), 1);
        ledger.on_sent(ROOM); // seq 1: owed to both
        assert_eq!(ledger.on_delivered(CCM, ROOM, 1), SeqOutcome::InOrder);
        ledger.on_delivered(ROOM, ROOM, 0);
        ledger.on_delivered(ROOM, ROOM, 1);
        assert!(ledger.complete());
    }

    #[test]
    fn latencies_are_kept_by_pair_and_as_same_and_cross() {
        let mut l = PairLatencies::default();
        l.record(Kind::Room, Kind::Room, 100);
        l.record(Kind::Room, Kind::Ocm, 300);
        l.record(Kind::Ccm, Kind::Matou, 500);
        assert_eq!(l.same.len(), 1);
        assert_eq!(l.cross.len(), 2);
        assert_eq!(l.all.len(), 3);
        assert_eq!(l.by_pair[0][3].len(), 1);
        assert_eq!(l.by_pair[2][1].len(), 1);
        assert_eq!(l.by_pair[3][0].len(), 0);
    }
}
