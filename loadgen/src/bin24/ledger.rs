//! The fate of every message: BIN24's accounting state machine.
//!
//! Each planned message has one [`MessageState`]: whether it was written, and how many times
//! each of five events happened to it:
//!
//! - delivered live: its type 0 arrived at the recipient;
//! - delivered from the store: it arrived as type 2 when the recipient (re)connected;
//! - answered "200" (from the recipient, through the server), "300" (the server stored it
//!   durably), "507" (the recipient's store is full, the message was dropped).
//!
//! At the end every written message has exactly one [`Fate`]:
//!
//! | fate        | what happened                                                           |
//! |-------------|-------------------------------------------------------------------------|
//! | live        | type 0 arrived and "200" came back                                      |
//! | stored      | "300" came back and the type 2 arrived (on its connection, or later)    |
//! | full        | "507": refused by the server, legitimately                              |
//! | lost        | never reached the recipient (whatever the answers said)                 |
//! | incomplete  | reached the recipient, but the answers do not match what happened       |
//!
//! Duplicates are counted apart from the fate. BIN24 is at-least-once, so two kinds of extra
//! copies are *allowed*: a message delivered live whose answer timed out goes to the store
//! ("300") and is delivered again after a reconnect; and a stored frame delivered on a
//! connection that then closed may come again when the recipient connects once more (the
//! loop says when a store delivery comes on such a repeat connection). Any other extra
//! delivery (twice live, twice from the store on one connection, from the store after a "200")
//! and any repeated or conflicting answer happens in the normal flow and is an error.
//!
//! Counters saturate at 3: any count of 2 or more is already an anomaly, so "3" reads "3 or
//! more". Running totals (written, resolved, stored and not yet redelivered) are kept as the
//! events arrive, so the loop can tell when it is done without walking the table.

use serde::Serialize;

/// An answer the sender received about one of its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// "200": the recipient got it.
    Delivered,
    /// "300": the recipient is offline (or did not answer in time); stored durably.
    Stored,
    /// "507": the recipient's store is full; the message is dropped.
    Full,
}

/// How a message reached its recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// type 0, forwarded to an online recipient.
    Live,
    /// type 2, from the offline store when the recipient connected.
    Store,
}

const WRITTEN: u16 = 1;
const SHIFT_LIVE: u32 = 1;
const SHIFT_STORE: u32 = 3;
const SHIFT_200: u32 = 5;
const SHIFT_300: u32 = 7;
const SHIFT_507: u32 = 9;
/// Store deliveries beyond the first that came on a repeat connection of the recipient.
const SHIFT_EXCUSED: u32 = 11;
/// The sender's connection closed while the message had no answer: none could reach it since.
const ORPHANED: u16 = 1 << 13;
const COUNT_MAX: u8 = 3;

/// One message: a written bit, six 2-bit saturating counters and an orphaned bit, in 16 bits
/// (the table has one per planned message).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageState(u16);

impl MessageState {
    fn count(self, shift: u32) -> u8 {
        ((self.0 >> shift) & 3) as u8
    }

    fn bump(&mut self, shift: u32) {
        if self.count(shift) < COUNT_MAX {
            self.0 += 1 << shift;
        }
    }

    pub fn is_written(self) -> bool {
        self.0 & WRITTEN != 0
    }

    pub fn deliveries(self, via: Via) -> u8 {
        self.count(match via {
            Via::Live => SHIFT_LIVE,
            Via::Store => SHIFT_STORE,
        })
    }

    pub fn answers(self, answer: Answer) -> u8 {
        self.count(answer_shift(answer))
    }

    /// Any answer at all: the sender knows what became of it.
    pub fn is_resolved(self) -> bool {
        self.answers(Answer::Delivered) + self.answers(Answer::Stored) + self.answers(Answer::Full)
            > 0
    }

    /// "300" came back and the type 2 has not arrived yet.
    fn awaits_redelivery(self) -> bool {
        self.answers(Answer::Stored) > 0 && self.deliveries(Via::Store) == 0
    }

    pub fn fate(self) -> Fate {
        if !self.is_written() {
            return Fate::NotSent;
        }
        let live = self.deliveries(Via::Live);
        let stored = self.deliveries(Via::Store);
        let a200 = self.answers(Answer::Delivered);
        let a300 = self.answers(Answer::Stored);
        if a300 > 0 && stored > 0 {
            Fate::Stored {
                after_live: live > 0,
            }
        } else if a200 > 0 && live > 0 {
            Fate::Live
        } else if self.answers(Answer::Full) > 0 {
            Fate::Full
        } else if live == 0 && stored == 0 {
            Fate::Lost(if a300 > 0 {
                LostHow::StoredNeverDelivered
            } else if a200 > 0 {
                LostHow::AnsweredNeverDelivered
            } else if self.0 & ORPHANED != 0 {
                LostHow::SenderClosed
            } else {
                LostHow::NoAnswer
            })
        } else if stored > 0 {
            Fate::Incomplete(IncompleteHow::StoreDeliveryWithout300)
        } else if a300 > 0 {
            Fate::Incomplete(IncompleteHow::NotRedelivered)
        } else if self.0 & ORPHANED != 0 {
            Fate::Incomplete(IncompleteHow::SenderClosed)
        } else {
            Fate::Incomplete(IncompleteHow::DeliveredNoAnswer)
        }
    }

    /// Extra deliveries: (allowed by at-least-once after a reconnect, in the normal flow).
    pub fn duplicates(self) -> (u8, u8) {
        let live = self.deliveries(Via::Live);
        let stored = self.deliveries(Via::Store);
        let deliveries = live + stored;
        if deliveries <= 1 {
            return (0, 0);
        }
        let after_timeout = u8::from(live > 0 && stored > 0 && self.answers(Answer::Stored) > 0);
        let allowed = (after_timeout + self.count(SHIFT_EXCUSED)).min(deliveries - 1);
        (allowed, deliveries - 1 - allowed)
    }

    /// Answers beyond the first of each kind.
    pub fn repeated_answers(self) -> u8 {
        [Answer::Delivered, Answer::Stored, Answer::Full]
            .into_iter()
            .map(|a| self.answers(a).saturating_sub(1))
            .sum()
    }

    /// More than one kind of answer (e.g. "200" and "300").
    pub fn conflicting_answers(self) -> bool {
        [Answer::Delivered, Answer::Stored, Answer::Full]
            .into_iter()
            .filter(|&a| self.answers(a) > 0)
            .count()
            > 1
    }
}

fn answer_shift(answer: Answer) -> u32 {
    match answer {
        Answer::Delivered => SHIFT_200,
        Answer::Stored => SHIFT_300,
        Answer::Full => SHIFT_507,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Never fully written to the socket (counted by the loop with its reason).
    NotSent,
    /// Delivered as type 0 and answered "200".
    Live,
    /// Answered "300" and delivered as type 2. `after_live`: it had also arrived live first
    /// (the answer timed out), so the type 2 is the allowed at-least-once copy.
    Stored {
        after_live: bool,
    },
    /// Answered "507" by the server.
    Full,
    Lost(LostHow),
    Incomplete(IncompleteHow),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostHow {
    /// No answer and no delivery, on a sender connection that stayed open.
    NoAnswer,
    /// No answer and no delivery, and the server closed the sender's connection before any
    /// answer: most likely still unread in that connection when it was closed.
    SenderClosed,
    /// "300", but the type 2 never came, not even when the recipient connected.
    StoredNeverDelivered,
    /// "200" arrived for a message the recipient never received (someone else answered).
    AnsweredNeverDelivered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncompleteHow {
    /// Arrived live, but no answer ever reached the sender, whose connection stayed open.
    DeliveredNoAnswer,
    /// Arrived live, but the sender's connection closed before the answer could reach it.
    SenderClosed,
    /// Arrived live, then "300" (the answer timed out), but the stored copy never came.
    NotRedelivered,
    /// Arrived as type 2, but the sender never heard "300".
    StoreDeliveryWithout300,
}

/// The table of every planned message, indexed by the plan's global message number.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    states: Vec<MessageState>,
    written: u64,
    resolved: u64,
    awaiting_redelivery: u64,
}

impl Ledger {
    pub fn new(messages: usize) -> Ledger {
        Ledger {
            states: vec![MessageState::default(); messages],
            ..Ledger::default()
        }
    }

    #[cfg(test)]
    pub fn state(&self, g: u64) -> Option<MessageState> {
        self.states.get(usize::try_from(g).ok()?).copied()
    }

    /// Message `g` was fully written to its sender's socket.
    pub fn mark_written(&mut self, g: u64) {
        if let Some(state) = self.slot(g) {
            if !state.is_written() {
                state.0 |= WRITTEN;
                self.written += 1;
            }
        }
    }

    /// Message `g` arrived at its recipient. `repeat_connection`: a store delivery on a
    /// connection that is not the recipient's first since the drain, where a frame it already
    /// received may legitimately come again. Returns the state before, or `None` when `g` was
    /// never written: nothing can arrive that was not sent, so the caller reports the frame.
    pub fn deliver(&mut self, g: u64, via: Via, repeat_connection: bool) -> Option<MessageState> {
        let state = self.slot(g).filter(|s| s.is_written())?;
        let before = *state;
        state.bump(match via {
            Via::Live => SHIFT_LIVE,
            Via::Store => SHIFT_STORE,
        });
        if via == Via::Store && repeat_connection && before.deliveries(Via::Store) > 0 {
            state.bump(SHIFT_EXCUSED);
        }
        if via == Via::Store && before.awaits_redelivery() {
            self.awaiting_redelivery -= 1;
        }
        Some(before)
    }

    /// The sender of `g` lost its connection: if `g` has no answer yet, none can reach it now.
    pub fn orphan(&mut self, g: u64) {
        if let Some(state) = self.slot(g) {
            if state.is_written() && !state.is_resolved() {
                state.0 |= ORPHANED;
            }
        }
    }

    /// The sender of `g` got `answer`. Returns the state before, `None` when `g` was never
    /// written.
    pub fn answer(&mut self, g: u64, answer: Answer) -> Option<MessageState> {
        let state = self.slot(g).filter(|s| s.is_written())?;
        let before = *state;
        state.bump(answer_shift(answer));
        let after = *state;
        if !before.is_resolved() {
            self.resolved += 1;
        }
        if !before.awaits_redelivery() && after.awaits_redelivery() {
            self.awaiting_redelivery += 1;
        }
        Some(before)
    }

    #[cfg(test)]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Written messages with no answer yet.
    pub fn unresolved(&self) -> u64 {
        self.written - self.resolved
    }

    /// Messages answered "300" whose type 2 has not arrived.
    pub fn awaiting_redelivery(&self) -> u64 {
        self.awaiting_redelivery
    }

    /// The messages answered "300" whose type 2 has not arrived: their recipients must connect.
    pub fn awaiting_redelivery_iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, s)| s.awaits_redelivery())
            .map(|(g, _)| g as u64)
    }

    /// Every message's fate and the anomalies, counted.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for &state in &self.states {
            match state.fate() {
                Fate::NotSent => continue,
                Fate::Live => t.live += 1,
                Fate::Stored { after_live } => {
                    t.stored += 1;
                    if after_live {
                        t.stored_after_live_delivery += 1;
                    }
                }
                Fate::Full => t.full += 1,
                Fate::Lost(how) => {
                    t.lost.total += 1;
                    match how {
                        LostHow::NoAnswer => t.lost.no_answer += 1,
                        LostHow::SenderClosed => t.lost.sender_closed += 1,
                        LostHow::StoredNeverDelivered => t.lost.stored_never_delivered += 1,
                        LostHow::AnsweredNeverDelivered => t.lost.answered_never_delivered += 1,
                    }
                }
                Fate::Incomplete(how) => {
                    t.incomplete.total += 1;
                    match how {
                        IncompleteHow::DeliveredNoAnswer => t.incomplete.delivered_no_answer += 1,
                        IncompleteHow::SenderClosed => t.incomplete.sender_closed += 1,
                        IncompleteHow::NotRedelivered => t.incomplete.not_redelivered += 1,
                        IncompleteHow::StoreDeliveryWithout300 => {
                            t.incomplete.store_delivery_without_300 += 1;
                        }
                    }
                }
            }
            t.written += 1;
            let (allowed, unexpected) = state.duplicates();
            t.duplicates.allowed += u64::from(allowed);
            t.duplicates.unexpected += u64::from(unexpected);
            t.duplicates.repeated_answers += u64::from(state.repeated_answers());
            t.duplicates.conflicting_answers += u64::from(state.conflicting_answers());
        }
        t
    }

    fn slot(&mut self, g: u64) -> Option<&mut MessageState> {
        self.states.get_mut(usize::try_from(g).ok()?)
    }
}

/// Messages by fate. `live + stored + full + lost.total + incomplete.total == written`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub written: u64,
    /// type 0 delivered and "200" received.
    pub live: u64,
    /// "300" received and type 2 delivered at the reconnect.
    pub stored: u64,
    /// Of `stored`: delivered live first, then stored when the answer timed out.
    pub stored_after_live_delivery: u64,
    /// "507": refused by the server (store full).
    pub full: u64,
    pub lost: LostCounts,
    pub incomplete: IncompleteCounts,
    pub duplicates: DuplicateCounts,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostCounts {
    pub total: u64,
    pub no_answer: u64,
    /// No answer, and the sender's connection was closed by the server before one came.
    pub sender_closed: u64,
    pub stored_never_delivered: u64,
    pub answered_never_delivered: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IncompleteCounts {
    pub total: u64,
    pub delivered_no_answer: u64,
    /// Delivered, but the sender's connection was closed before its answer came.
    pub sender_closed: u64,
    pub not_redelivered: u64,
    pub store_delivery_without_300: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DuplicateCounts {
    /// A live delivery followed by the stored copy after the answer timed out and the
    /// recipient reconnected: at-least-once, as the contract allows.
    pub allowed: u64,
    /// Any other extra delivery: in the normal flow, an error.
    pub unexpected: u64,
    /// The same answer more than once.
    pub repeated_answers: u64,
    /// Messages with more than one kind of answer.
    pub conflicting_answers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger of `n` messages, all written.
    fn written(n: usize) -> Ledger {
        let mut l = Ledger::new(n);
        for g in 0..n as u64 {
            l.mark_written(g);
        }
        l
    }

    fn fate(l: &Ledger, g: u64) -> Fate {
        l.state(g).unwrap().fate()
    }

    #[test]
    fn live_then_200() {
        let mut l = written(1);
        assert_eq!(fate(&l, 0), Fate::Lost(LostHow::NoAnswer));
        assert_eq!(l.unresolved(), 1);
        let before = l.deliver(0, Via::Live, false).unwrap();
        assert_eq!(before.deliveries(Via::Live), 0, "first delivery");
        assert_eq!(
            fate(&l, 0),
            Fate::Incomplete(IncompleteHow::DeliveredNoAnswer)
        );
        let before = l.answer(0, Answer::Delivered).unwrap();
        assert!(!before.is_resolved());
        assert_eq!(fate(&l, 0), Fate::Live);
        assert_eq!(l.unresolved(), 0);
        assert_eq!(l.awaiting_redelivery(), 0);
        let t = l.tally();
        assert_eq!((t.written, t.live), (1, 1));
        assert_eq!(t.duplicates, DuplicateCounts::default());
    }

    #[test]
    fn offline_300_then_type_2() {
        let mut l = written(2);
        l.answer(1, Answer::Stored).unwrap();
        assert_eq!(l.unresolved(), 1, "message 0 still open");
        assert_eq!(l.awaiting_redelivery(), 1);
        assert_eq!(l.awaiting_redelivery_iter().collect::<Vec<_>>(), vec![1]);
        assert_eq!(fate(&l, 1), Fate::Lost(LostHow::StoredNeverDelivered));
        l.deliver(1, Via::Store, false).unwrap();
        assert_eq!(l.awaiting_redelivery(), 0);
        assert_eq!(fate(&l, 1), Fate::Stored { after_live: false });
        let t = l.tally();
        assert_eq!((t.stored, t.stored_after_live_delivery), (1, 0));
        assert_eq!(t.lost.no_answer, 1, "message 0");
        assert_eq!(t.duplicates, DuplicateCounts::default());
    }

    #[test]
    fn store_full_507() {
        let mut l = written(2);
        l.answer(0, Answer::Full).unwrap();
        assert_eq!(fate(&l, 0), Fate::Full);
        // Delivered live, then the ack timed out and the store was full: still 507.
        l.deliver(1, Via::Live, false).unwrap();
        l.answer(1, Answer::Full).unwrap();
        assert_eq!(fate(&l, 1), Fate::Full);
        assert_eq!(l.unresolved(), 0);
        assert_eq!(l.awaiting_redelivery(), 0);
        let t = l.tally();
        assert_eq!((t.full, t.lost.total), (2, 0));
    }

    #[test]
    fn losses_of_each_kind() {
        let mut l = written(3);
        // 0: nothing at all. 1: "300" but no type 2. 2: "200" without the type 0.
        l.answer(1, Answer::Stored).unwrap();
        l.answer(2, Answer::Delivered).unwrap();
        let t = l.tally();
        assert_eq!(
            t.lost,
            LostCounts {
                total: 3,
                no_answer: 1,
                sender_closed: 0,
                stored_never_delivered: 1,
                answered_never_delivered: 1
            }
        );
        assert_eq!(l.unresolved(), 1);
        assert_eq!(l.awaiting_redelivery(), 1);
    }

    #[test]
    fn incomplete_answers() {
        let mut l = written(3);
        l.deliver(0, Via::Live, false).unwrap(); // no answer
        l.deliver(1, Via::Live, false).unwrap(); // "300", never redelivered
        l.answer(1, Answer::Stored).unwrap();
        l.deliver(2, Via::Store, false).unwrap(); // type 2 without "300"
        let t = l.tally();
        assert_eq!(
            t.incomplete,
            IncompleteCounts {
                total: 3,
                delivered_no_answer: 1,
                sender_closed: 0,
                not_redelivered: 1,
                store_delivery_without_300: 1
            }
        );
        assert_eq!(
            t.live + t.stored + t.full + t.lost.total + t.incomplete.total,
            t.written
        );
    }

    #[test]
    fn redelivery_after_a_timeout_is_an_allowed_duplicate() {
        let mut l = written(1);
        l.deliver(0, Via::Live, false).unwrap();
        l.answer(0, Answer::Stored).unwrap(); // the answer timed out on the server
        l.deliver(0, Via::Store, false).unwrap(); // the reconnect brings it again
        assert_eq!(fate(&l, 0), Fate::Stored { after_live: true });
        let t = l.tally();
        assert_eq!((t.stored, t.stored_after_live_delivery), (1, 1));
        assert_eq!(
            t.duplicates,
            DuplicateCounts {
                allowed: 1,
                ..DuplicateCounts::default()
            }
        );
    }

    #[test]
    fn duplicates_in_the_normal_flow_are_unexpected() {
        let mut l = written(4);
        // 0: forwarded live twice.
        l.deliver(0, Via::Live, false).unwrap();
        let before = l.deliver(0, Via::Live, false).unwrap();
        assert_eq!(before.deliveries(Via::Live), 1, "the caller sees a repeat");
        l.answer(0, Answer::Delivered).unwrap();
        // 1: stored copy delivered twice.
        l.answer(1, Answer::Stored).unwrap();
        l.deliver(1, Via::Store, false).unwrap();
        l.deliver(1, Via::Store, false).unwrap();
        // 2: answered "200" and delivered from the store as well.
        l.deliver(2, Via::Live, false).unwrap();
        l.answer(2, Answer::Delivered).unwrap();
        l.deliver(2, Via::Store, false).unwrap();
        // 3: "200" twice, then "300": repeated and conflicting answers.
        l.deliver(3, Via::Live, false).unwrap();
        l.answer(3, Answer::Delivered).unwrap();
        let before = l.answer(3, Answer::Delivered).unwrap();
        assert!(before.is_resolved());
        l.answer(3, Answer::Stored).unwrap();
        let t = l.tally();
        assert_eq!(t.duplicates.allowed, 0);
        assert_eq!(t.duplicates.unexpected, 3);
        assert_eq!(t.duplicates.repeated_answers, 1);
        assert_eq!(t.duplicates.conflicting_answers, 1);
        assert_eq!(l.unresolved(), 0);
        // The counters saturate at 3 instead of wrapping into the next field.
        for _ in 0..10 {
            l.deliver(0, Via::Live, false).unwrap();
        }
        assert_eq!(l.state(0).unwrap().deliveries(Via::Live), 3);
        assert_eq!(l.state(0).unwrap().deliveries(Via::Store), 0);
    }

    #[test]
    fn a_stored_frame_again_on_a_repeat_connection_is_allowed() {
        let mut l = written(2);
        for g in 0..2 {
            l.answer(g, Answer::Stored).unwrap();
            l.deliver(g, Via::Store, false).unwrap();
        }
        // The connection closed before the server removed them; the next one brings them
        // again. Message 1 comes a second time on the same (repeat) connection as well.
        l.deliver(0, Via::Store, true).unwrap();
        l.deliver(1, Via::Store, true).unwrap();
        l.deliver(1, Via::Store, false).unwrap();
        assert_eq!(fate(&l, 0), Fate::Stored { after_live: false });
        let t = l.tally();
        assert_eq!(t.stored, 2);
        assert_eq!(
            (t.duplicates.allowed, t.duplicates.unexpected),
            (2, 1),
            "{t:?}"
        );
        // Without a repeat connection, the same copy is unexpected.
        let mut l = written(1);
        l.answer(0, Answer::Stored).unwrap();
        l.deliver(0, Via::Store, false).unwrap();
        l.deliver(0, Via::Store, false).unwrap();
        assert_eq!(l.tally().duplicates.unexpected, 1);
    }

    #[test]
    fn messages_of_a_closed_sender_are_told_apart() {
        let mut l = written(4);
        l.deliver(1, Via::Live, false).unwrap();
        l.deliver(2, Via::Live, false).unwrap();
        l.answer(2, Answer::Delivered).unwrap();
        l.answer(3, Answer::Stored).unwrap();
        for g in 0..4 {
            l.orphan(g); // the sender's connection closed
        }
        assert_eq!(fate(&l, 0), Fate::Lost(LostHow::SenderClosed));
        assert_eq!(fate(&l, 1), Fate::Incomplete(IncompleteHow::SenderClosed));
        assert_eq!(fate(&l, 2), Fate::Live, "answered before the close");
        assert_eq!(
            fate(&l, 3),
            Fate::Lost(LostHow::StoredNeverDelivered),
            "answered \"300\" before the close: the store must still deliver it"
        );
        // An answer that still comes (to a new connection) settles it normally.
        l.answer(1, Answer::Delivered).unwrap();
        assert_eq!(fate(&l, 1), Fate::Live);
        let t = l.tally();
        assert_eq!((t.lost.sender_closed, t.lost.no_answer), (1, 0));
        assert_eq!(t.incomplete.sender_closed, 0);
    }

    #[test]
    fn events_for_unsent_messages_are_refused() {
        let mut l = Ledger::new(3);
        l.mark_written(1);
        l.mark_written(1);
        assert_eq!(l.written(), 1, "marking twice counts once");
        assert!(l.deliver(0, Via::Live, false).is_none());
        assert!(l.answer(2, Answer::Delivered).is_none());
        assert!(
            l.deliver(99, Via::Store, false).is_none(),
            "out of the plan"
        );
        assert!(l.answer(u64::MAX, Answer::Full).is_none());
        assert_eq!(fate(&l, 0), Fate::NotSent);
        let t = l.tally();
        assert_eq!(t.written, 1);
        assert_eq!(t.lost.no_answer, 1);
    }
}
