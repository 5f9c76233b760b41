//! What the store knows about itself without reading the disk: how much each user holds (to
//! enforce the per-user limits) and the next sequence number. Pure: the storage thread tells
//! it what a batch does; the changes of a batch stay tentative until its commit returns, and
//! are dropped if the commit fails, so the counters always match what is durable.

use std::collections::HashMap;

use super::keys::Name;

/// What one user holds in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) frames: u64,
    /// Sum of the stored frames' lengths.
    pub(crate) bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) frames_per_user_max: u64,
    pub(crate) bytes_per_user_max: u64,
    /// Every user together: what bounds the disk, whatever the number of recipients.
    pub(crate) frames_max: u64,
    pub(crate) bytes_max: u64,
}

/// The answer to "may this frame be stored?".
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Yes, under this sequence number.
    Seq(u64),
    /// No: it would take the user past a limit.
    Full,
    /// No: it would take the whole store past `--store-frames-max` or `--store-bytes-max`.
    StoreFull,
    /// No: the u64 sequence space is used up (not reachable in practice).
    SeqExhausted,
}

/// The first sequence number of a new store; 0 is never handed out.
pub(crate) const FIRST_SEQ: u64 = 1;

#[derive(Debug)]
pub(crate) struct Ledger {
    limits: Limits,
    /// Usage as of the last durable commit; users holding nothing are absent.
    committed: HashMap<Name, Usage>,
    /// Usage of the users the current batch touched, as the batch leaves them.
    tentative: HashMap<Name, Usage>,
    /// Never goes back, not even when a batch fails: a sequence number is never handed out twice.
    next_seq: u64,
    /// The sum of `committed`, kept as it changes so reporting it costs nothing.
    committed_total: Usage,
    /// What the current batch added to (positive) or took from the total, so the global
    /// limits see the batch's own appends.
    tentative_frames_delta: i64,
    tentative_bytes_delta: i64,
}

impl Ledger {
    pub(crate) fn new(limits: Limits, committed: HashMap<Name, Usage>, next_seq: u64) -> Ledger {
        let mut committed = committed;
        committed.retain(|_, usage| usage.frames > 0);
        let committed_total = committed
            .values()
            .fold(Usage::default(), |total, usage| Usage {
                frames: total.frames.saturating_add(usage.frames),
                bytes: total.bytes.saturating_add(usage.bytes),
            });
        Ledger {
            limits,
            committed,
            tentative: HashMap::new(),
            next_seq: next_seq.max(FIRST_SEQ),
            committed_total,
            tentative_frames_delta: 0,
            tentative_bytes_delta: 0,
        }
    }

    /// Frames and bytes held for every user together, as of the last commit.
    pub(crate) fn total(&self) -> Usage {
        self.committed_total
    }

    /// `name`'s usage, including the current batch's changes.
    pub(crate) fn usage(&self, name: &Name) -> Usage {
        self.tentative
            .get(name)
            .or_else(|| self.committed.get(name))
            .copied()
            .unwrap_or_default()
    }

    /// The sequence number the next admitted frame gets; the value to persist with the batch.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Users holding at least one frame as of the last commit.
    pub(crate) fn users(&self) -> usize {
        self.committed.len()
    }

    /// Frames and bytes held for every user together, including the current batch.
    pub(crate) fn tentative_total(&self) -> Usage {
        let apply = |base: u64, delta: i64| -> u64 {
            if delta >= 0 {
                base.saturating_add(delta.unsigned_abs())
            } else {
                base.saturating_sub(delta.unsigned_abs())
            }
        };
        Usage {
            frames: apply(self.committed_total.frames, self.tentative_frames_delta),
            bytes: apply(self.committed_total.bytes, self.tentative_bytes_delta),
        }
    }

    /// Admit a frame of `len` bytes for `name` if it fits under the user's limits and the
    /// store's, counting it.
    pub(crate) fn admit(&mut self, name: &Name, len: u64) -> Admit {
        let usage = self.usage(name);
        let frames = usage.frames.saturating_add(1);
        let bytes = usage.bytes.saturating_add(len);
        if frames > self.limits.frames_per_user_max || bytes > self.limits.bytes_per_user_max {
            return Admit::Full;
        }
        let total = self.tentative_total();
        if total.frames.saturating_add(1) > self.limits.frames_max
            || total.bytes.saturating_add(len) > self.limits.bytes_max
        {
            return Admit::StoreFull;
        }
        // u64::MAX stays unused so that it can close a user's key range.
        if self.next_seq >= u64::MAX - 1 {
            return Admit::SeqExhausted;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.tentative.insert(*name, Usage { frames, bytes });
        self.tentative_frames_delta += 1;
        self.tentative_bytes_delta += i64::try_from(len).unwrap_or(i64::MAX);
        Admit::Seq(seq)
    }

    /// A frame of `len` bytes of `name` was removed.
    pub(crate) fn release(&mut self, name: &Name, len: u64) {
        let usage = self.usage(name);
        if usage.frames > 0 {
            self.tentative_frames_delta -= 1;
            self.tentative_bytes_delta -= i64::try_from(len.min(usage.bytes)).unwrap_or(i64::MAX);
        }
        let usage = Usage {
            frames: usage.frames.saturating_sub(1),
            bytes: usage.bytes.saturating_sub(len),
        };
        self.tentative.insert(*name, usage);
    }

    /// The batch's commit returned: its changes are now what is durable.
    pub(crate) fn commit(&mut self) {
        self.tentative_frames_delta = 0;
        self.tentative_bytes_delta = 0;
        for (name, usage) in self.tentative.drain() {
            let before = if usage.frames == 0 {
                self.committed.remove(&name)
            } else {
                self.committed.insert(name, usage)
            }
            .unwrap_or_default();
            let total = &mut self.committed_total;
            total.frames = total.frames.saturating_sub(before.frames) + usage.frames;
            total.bytes = total.bytes.saturating_sub(before.bytes) + usage.bytes;
        }
    }

    /// The batch failed: nothing it did is stored, so forget its changes (but not the sequence
    /// numbers it used).
    pub(crate) fn rollback(&mut self) {
        self.tentative.clear();
        self.tentative_frames_delta = 0;
        self.tentative_bytes_delta = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::name_of;

    fn limits(frames: u64, bytes: u64) -> Limits {
        Limits {
            frames_per_user_max: frames,
            bytes_per_user_max: bytes,
            frames_max: u64::MAX,
            bytes_max: u64::MAX,
        }
    }

    #[test]
    fn the_store_wide_limits_count_every_user_and_the_batch_in_progress() {
        let mut ledger = Ledger::new(
            Limits {
                frames_max: 3,
                bytes_max: 100,
                ..limits(10, 1000)
            },
            HashMap::from([(
                name("old"),
                Usage {
                    frames: 1,
                    bytes: 40,
                },
            )]),
            5,
        );
        assert!(matches!(ledger.admit(&name("a"), 30), Admit::Seq(_)));
        // 40 + 30 + 31 > 100: refused although the user holds little.
        assert_eq!(ledger.admit(&name("b"), 31), Admit::StoreFull);
        assert!(matches!(ledger.admit(&name("b"), 30), Admit::Seq(_)));
        // Three frames held: the frame limit now refuses even a small one.
        assert_eq!(ledger.admit(&name("c"), 1), Admit::StoreFull);
        // A removal in the same batch makes room at once.
        ledger.release(&name("old"), 40);
        assert!(matches!(ledger.admit(&name("c"), 1), Admit::Seq(_)));
        ledger.commit();
        assert_eq!(
            ledger.total(),
            Usage {
                frames: 3,
                bytes: 61
            }
        );
        assert_eq!(ledger.admit(&name("d"), 1), Admit::StoreFull);
        ledger.release(&name("a"), 30);
        ledger.rollback();
        assert_eq!(ledger.admit(&name("d"), 1), Admit::StoreFull);
    }

    fn name(user: &str) -> Name {
        name_of(user.as_bytes()).unwrap()
    }

    #[test]
    fn sequence_numbers_start_at_1_and_increase_across_users() {
        let mut ledger = Ledger::new(limits(10, 1000), HashMap::new(), 0);
        assert_eq!(ledger.admit(&name("a"), 30), Admit::Seq(1));
        assert_eq!(ledger.admit(&name("b"), 30), Admit::Seq(2));
        assert_eq!(ledger.admit(&name("a"), 30), Admit::Seq(3));
        assert_eq!(ledger.next_seq(), 4);
    }

    #[test]
    fn the_frame_limit_refuses_the_frame_after_the_last_that_fits() {
        let mut ledger = Ledger::new(limits(2, 1000), HashMap::new(), 1);
        let a = name("a");
        assert!(matches!(ledger.admit(&a, 1), Admit::Seq(_)));
        assert!(matches!(ledger.admit(&a, 1), Admit::Seq(_)));
        assert_eq!(ledger.admit(&a, 1), Admit::Full);
        // A refused frame is not counted and uses no sequence number.
        assert_eq!(
            ledger.usage(&a),
            Usage {
                frames: 2,
                bytes: 2
            }
        );
        assert_eq!(ledger.next_seq(), 3);
        // Another user has its own room.
        assert!(matches!(ledger.admit(&name("b"), 1), Admit::Seq(3)));
    }

    #[test]
    fn the_byte_limit_counts_frame_lengths_and_allows_exactly_the_limit() {
        let mut ledger = Ledger::new(limits(100, 100), HashMap::new(), 1);
        let a = name("a");
        assert!(matches!(ledger.admit(&a, 60), Admit::Seq(_)));
        assert_eq!(ledger.admit(&a, 41), Admit::Full);
        assert!(matches!(ledger.admit(&a, 40), Admit::Seq(_)));
        assert_eq!(ledger.admit(&a, 1), Admit::Full);
        assert_eq!(
            ledger.usage(&a),
            Usage {
                frames: 2,
                bytes: 100
            }
        );
    }

    #[test]
    fn release_frees_room_and_a_user_holding_nothing_is_forgotten_at_commit() {
        let mut ledger = Ledger::new(limits(1, 1000), HashMap::new(), 1);
        let a = name("a");
        assert!(matches!(ledger.admit(&a, 10), Admit::Seq(_)));
        ledger.commit();
        assert_eq!(ledger.users(), 1);
        assert_eq!(ledger.admit(&a, 10), Admit::Full);
        ledger.release(&a, 10);
        assert!(matches!(ledger.admit(&a, 10), Admit::Seq(_)));
        ledger.release(&a, 10);
        ledger.commit();
        assert_eq!(ledger.users(), 0);
        assert_eq!(ledger.total(), Usage::default());
        assert_eq!(ledger.usage(&a), Usage::default());
    }

    #[test]
    fn rollback_forgets_the_batch_but_never_reuses_its_sequence_numbers() {
        let a = name("a");
        let loaded = HashMap::from([(
            a,
            Usage {
                frames: 1,
                bytes: 5,
            },
        )]);
        let mut ledger = Ledger::new(limits(2, 1000), loaded, 10);
        assert_eq!(ledger.admit(&a, 5), Admit::Seq(10));
        assert_eq!(ledger.admit(&a, 5), Admit::Full);
        ledger.rollback();
        assert_eq!(
            ledger.usage(&a),
            Usage {
                frames: 1,
                bytes: 5
            }
        );
        assert_eq!(ledger.admit(&a, 5), Admit::Seq(11));
    }

    #[test]
    fn counters_loaded_at_open_hold_the_limits() {
        let a = name("a");
        let loaded = HashMap::from([
            (
                a,
                Usage {
                    frames: 3,
                    bytes: 300,
                },
            ),
            (name("empty"), Usage::default()),
        ]);
        let mut ledger = Ledger::new(limits(3, 1000), loaded, 50);
        assert_eq!(ledger.users(), 1);
        assert_eq!(ledger.admit(&a, 1), Admit::Full);
    }

    #[test]
    fn release_never_underflows_on_counters_that_disagree_with_the_disk() {
        let mut ledger = Ledger::new(limits(3, 1000), HashMap::new(), 1);
        let a = name("a");
        ledger.release(&a, 99);
        assert_eq!(ledger.usage(&a), Usage::default());
    }

    #[test]
    fn an_exhausted_sequence_space_is_refused_not_wrapped() {
        let mut ledger = Ledger::new(limits(3, 1000), HashMap::new(), u64::MAX - 2);
        assert_eq!(ledger.admit(&name("a"), 1), Admit::Seq(u64::MAX - 2));
        assert_eq!(ledger.admit(&name("a"), 1), Admit::SeqExhausted);
    }

    #[test]
    fn the_total_follows_commits_only_and_starts_from_what_was_on_disk() {
        let mut on_disk = HashMap::new();
        on_disk.insert(
            name("old"),
            Usage {
                frames: 2,
                bytes: 20,
            },
        );
        let mut ledger = Ledger::new(limits(10, 1000), on_disk, 3);
        assert_eq!(
            ledger.total(),
            Usage {
                frames: 2,
                bytes: 20
            }
        );
        assert!(matches!(ledger.admit(&name("a"), 5), Admit::Seq(_)));
        assert!(matches!(ledger.admit(&name("a"), 7), Admit::Seq(_)));
        ledger.release(&name("old"), 10);
        // Tentative until the commit returns; a failed batch never shows.
        assert_eq!(
            ledger.total(),
            Usage {
                frames: 2,
                bytes: 20
            }
        );
        ledger.commit();
        assert_eq!(
            ledger.total(),
            Usage {
                frames: 3,
                bytes: 22
            }
        );
        assert!(matches!(ledger.admit(&name("b"), 100), Admit::Seq(_)));
        ledger.rollback();
        assert_eq!(
            ledger.total(),
            Usage {
                frames: 3,
                bytes: 22
            }
        );
    }
}
