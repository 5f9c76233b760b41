//! Losses, duplicates and late arrivals of OCM chat datagrams, per (receiver, sender) stream.
//!
//! Every member of a room receives every other member's messages, so there is one stream per
//! ordered pair of members of the same room. Members are numbered `room * members + k` (k = 0
//! is the host); a stream is named by its receiver and the sender's `k`, so the table holds
//! `rooms * members * members` counters, not `(rooms * members)^2`.
//!
//! UDP may lose, duplicate and reorder, so unlike `stats::SeqTracker` (TCP, where "behind" is
//! always a fault) a message that arrives after a later one is told apart from a duplicate:
//! the sequence numbers a gap skipped are remembered (up to [`MISSING_REMEMBERED_MAX`]), and
//! one that arrives later is a late delivery, not a loss. What stays missing at the end, plus
//! what was sent after the last arrival of each stream, is lost.

use std::collections::HashSet;

use serde::Serialize;

/// Skipped sequence numbers remembered at most (each 8 bytes plus the set's overhead). Past it,
/// further skipped numbers are only counted: one of those that arrives later counts as a
/// duplicate, and the report says the set overflowed.
pub const MISSING_REMEMBERED_MAX: usize = 1 << 20;

/// What one arriving message means for its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next sequence number expected.
    InOrder,
    /// Ahead of the expected one: this many were skipped (lost unless they arrive later).
    Gap(u64),
    /// One a gap had skipped: delivered, out of order.
    Late,
    /// Already delivered (or skipped and no longer remembered).
    Duplicate,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Distinct messages delivered (in order, after a gap, or late).
    pub delivered: u64,
    /// Of those, delivered after a later message of the same stream.
    pub late: u64,
    pub duplicates: u64,
    /// Skipped sequence numbers not remembered because the set was full.
    pub missing_not_remembered: u64,
}

/// The end-of-run loss figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Losses {
    /// Deliveries the sent messages called for: each message times the other members of its
    /// room that receive.
    pub expected: u64,
    /// Lost in total (`gaps + tail`).
    pub lost: u64,
    /// Skipped by a later message and never arrived.
    pub gaps: u64,
    /// Sent after the last message that reached the receiver: never arrived.
    pub tail: u64,
}

impl Losses {
    /// Lost, as a percentage of the expected deliveries (0 when none were expected).
    pub fn percent(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.expected as f64
        }
    }
}

#[derive(Clone, Debug)]
pub struct Accounting {
    /// Members per room.
    members: usize,
    /// `expected[receiver * members + sender_k]`: the next sequence number expected.
    expected: Vec<u32>,
    /// Messages each member handed to the kernel.
    sent: Vec<u64>,
    /// Members that receive (they joined).
    receives: Vec<bool>,
    /// Receivers in each room.
    room_receivers: Vec<u64>,
    /// Deliveries called for by the messages sent so far.
    expected_deliveries: u64,
    /// (stream << 32 | seq) of the sequence numbers gaps skipped that have not arrived.
    missing: HashSet<u64>,
    pub counts: Counts,
}

impl Accounting {
    pub fn new(rooms: usize, members: usize) -> Accounting {
        let total = rooms * members;
        Accounting {
            members,
            expected: vec![0; total * members],
            sent: vec![0; total],
            receives: vec![false; total],
            room_receivers: vec![0; rooms],
            expected_deliveries: 0,
            missing: HashSet::new(),
            counts: Counts::default(),
        }
    }

    /// Member `u` receives its room's messages (it joined). Called before any message is sent.
    pub fn set_receiver(&mut self, u: usize) {
        if !std::mem::replace(&mut self.receives[u], true) {
            self.room_receivers[u / self.members] += 1;
        }
    }

    /// Member `u`'s message went out: every other receiver of its room should get it.
    pub fn on_sent(&mut self, u: usize) {
        self.sent[u] += 1;
        let others = self.room_receivers[u / self.members] - u64::from(self.receives[u]);
        self.expected_deliveries += others;
    }

    /// Whether `receiver` and `sender` are two different members of one room, so a message
    /// from one to the other has a stream.
    pub fn same_room(&self, receiver: usize, sender: usize) -> bool {
        receiver != sender
            && receiver / self.members == sender / self.members
            && receiver < self.sent.len()
            && sender < self.sent.len()
    }

    /// Message `seq` of `sender` arrived at `receiver` (the caller checked [`Self::same_room`]).
    pub fn on_delivered(&mut self, receiver: usize, sender: usize, seq: u32) -> Arrival {
        let stream = receiver * self.members + sender % self.members;
        let slot = &mut self.expected[stream];
        let expected = *slot;
        if seq < expected {
            if self.missing.remove(&key(stream, seq)) {
                self.counts.delivered += 1;
                self.counts.late += 1;
                return Arrival::Late;
            }
            self.counts.duplicates += 1;
            return Arrival::Duplicate;
        }
        *slot = seq.saturating_add(1);
        self.counts.delivered += 1;
        if seq == expected {
            return Arrival::InOrder;
        }
        let skipped = u64::from(seq - expected);
        for lost in expected..seq {
            if self.missing.len() >= MISSING_REMEMBERED_MAX {
                self.counts.missing_not_remembered += u64::from(seq - lost);
                break;
            }
            self.missing.insert(key(stream, lost));
        }
        Arrival::Gap(skipped)
    }

    /// Deliveries still missing now (in flight, or lost): what the drain waits for.
    pub fn outstanding(&self) -> u64 {
        self.expected_deliveries
            .saturating_sub(self.counts.delivered)
    }

    /// The loss figures, from a walk over every stream of every receiver.
    pub fn losses(&self) -> Losses {
        let mut expected = 0;
        let mut tail = 0;
        for receiver in (0..self.sent.len()).filter(|&r| self.receives[r]) {
            let room_first = receiver / self.members * self.members;
            for k in 0..self.members {
                let sender = room_first + k;
                if sender == receiver {
                    continue;
                }
                let sent = self.sent[sender];
                expected += sent;
                let reached = u64::from(self.expected[receiver * self.members + k]);
                tail += sent.saturating_sub(reached);
            }
        }
        let gaps = self.missing.len() as u64 + self.counts.missing_not_remembered;
        Losses {
            expected,
            lost: gaps + tail,
            gaps,
            tail,
        }
    }
}

fn key(stream: usize, seq: u32) -> u64 {
    (stream as u64) << 32 | u64::from(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rooms of three members; everyone joined.
    fn two_rooms() -> Accounting {
        let mut a = Accounting::new(2, 3);
        for u in 0..6 {
            a.set_receiver(u);
        }
        a
    }

    #[test]
    fn everything_delivered_loses_nothing() {
        let mut a = two_rooms();
        for seq in 0..10 {
            for sender in 0..6 {
                a.on_sent(sender);
            }
            for sender in 0..6 {
                let receivers: Vec<usize> = (0..6).filter(|&r| a.same_room(r, sender)).collect();
                assert_eq!(receivers.len(), 2);
                for receiver in receivers {
                    assert_eq!(a.on_delivered(receiver, sender, seq), Arrival::InOrder);
                }
            }
        }
        assert_eq!(a.outstanding(), 0);
        let losses = a.losses();
        assert_eq!(
            losses,
            Losses {
                expected: 6 * 10 * 2,
                lost: 0,
                gaps: 0,
                tail: 0
            }
        );
        assert_eq!(a.counts.delivered, 120);
        assert_eq!(losses.percent(), 0.0);
    }

    #[test]
    fn streams_are_within_a_room_and_never_to_the_sender() {
        let a = two_rooms();
        assert!(a.same_room(0, 1) && a.same_room(2, 0) && a.same_room(4, 5));
        assert!(!a.same_room(0, 0), "no echo stream");
        assert!(!a.same_room(0, 3) && !a.same_room(5, 2), "another room");
        assert!(!a.same_room(0, 6) && !a.same_room(6, 0), "no such member");
    }

    #[test]
    fn gaps_late_arrivals_duplicates_and_the_tail() {
        let mut a = two_rooms();
        for _ in 0..6 {
            a.on_sent(0);
        }
        // Member 1 gets 0, 3 (1 and 2 skipped), then 1 late, 3 again, 5 (4 skipped).
        assert_eq!(a.on_delivered(1, 0, 0), Arrival::InOrder);
        assert_eq!(a.on_delivered(1, 0, 3), Arrival::Gap(2));
        assert_eq!(a.on_delivered(1, 0, 1), Arrival::Late);
        assert_eq!(a.on_delivered(1, 0, 1), Arrival::Duplicate);
        assert_eq!(a.on_delivered(1, 0, 3), Arrival::Duplicate);
        assert_eq!(a.on_delivered(1, 0, 5), Arrival::Gap(1));
        // Member 2 gets 0..=3 and never 4, 5.
        for seq in 0..4 {
            a.on_delivered(2, 0, seq);
        }
        assert_eq!(a.outstanding(), 12 - 4 - 4);
        let losses = a.losses();
        assert_eq!(
            losses,
            Losses {
                expected: 12,
                lost: 4,
                gaps: 2, // 2 and 4 at member 1
                tail: 2, // 4 and 5 at member 2
            }
        );
        assert!((losses.percent() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(
            a.counts,
            Counts {
                delivered: 8,
                late: 1,
                duplicates: 2,
                missing_not_remembered: 0
            }
        );
    }

    #[test]
    fn members_that_did_not_join_neither_count_nor_receive() {
        let mut a = Accounting::new(1, 4);
        a.set_receiver(0);
        a.set_receiver(1);
        a.set_receiver(1); // twice is once
        a.on_sent(0);
        a.on_sent(1);
        assert_eq!(a.outstanding(), 2, "one other receiver each");
        assert_eq!(a.losses().expected, 2);
        a.on_delivered(1, 0, 0);
        a.on_delivered(0, 1, 0);
        assert_eq!(a.outstanding(), 0);
        assert_eq!(a.losses().lost, 0);
    }
}
