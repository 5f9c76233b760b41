//! A web user's `direct` to a CCM or web user of another node, awaiting its receipt (issue 21).
//!
//! The message and its receipt travel as pub/sub events, which nothing keeps: Redis may drop
//! either, and the recipient's node may die before it writes the message or publishes the
//! receipt. So that the web sender still gets exactly one answer, the sender's node keeps each
//! such message here from its publication until its receipt comes back, with a deadline
//! ([`ReceiptConfig::wait_ms`]). Whichever comes first answers the sender, once: the receipt
//! (`sent delivered` / `error not-delivered`), the deadline or the recipient's node taken for
//! dead (`error no-receipt`: the message may or may not have arrived). A receipt for a message
//! already answered finds nothing here and is dropped.
//!
//! Each message is published with a token of this node in place of the web request's id
//! (the recipient's node only echoes it back in the receipt), so a receipt finds its message
//! even when a web client reuses ids or sends none.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;

use crate::chat::ConnId;

/// Default `--web-receipts-per-sender-max`, the most messages of one web sender awaiting their
/// receipt at once: beyond what `--web-messages-per-s-max`'s default (20 a second) sends
/// within a default deadline (6 s).
pub const WEB_RECEIPTS_PER_SENDER_MAX: usize = 256;
/// Default `--web-receipts-max`, the most messages awaiting their receipt on this node, all
/// senders together.
pub const WEB_RECEIPTS_MAX: usize = 16_384;

/// How long and how many crossing web messages wait for their receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiptConfig {
    /// From publication to `no-receipt`: what the recipient's node may need to write the
    /// message and publish the receipt, and to be taken for dead if it cannot.
    pub wait_ms: u64,
    /// Messages of one sender awaiting their receipt at once; one more is refused (`busy`).
    pub per_sender_max: usize,
    /// Messages awaiting their receipt on this node at once; one more is refused (`busy`).
    pub max: usize,
}

/// What became of the messages that awaited a receipt, for the admin port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiptCounts {
    /// Published, a receipt awaited.
    pub awaited: u64,
    /// Their receipt came in time: answered from it.
    pub answered: u64,
    /// No receipt by the deadline: answered `no-receipt`.
    pub expired: u64,
    /// The recipient's node was taken for dead first: answered `no-receipt` at once.
    pub lapsed: u64,
    /// Receipts that came after their message was answered (or for no message of this
    /// node): dropped.
    pub late: u64,
    /// Not sent: too many awaited a receipt already (of the sender, or on this node).
    pub refused: u64,
}

/// A message answered without its receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Unanswered {
    /// The sender's connection and name when it was sent (answered only if that connection
    /// still holds the name).
    pub sender: ConnId,
    pub name: Bytes,
    /// The web request's id.
    pub request: Option<u64>,
}

#[derive(Debug)]
struct Awaiting {
    message: Unanswered,
    /// The recipient's node and its incarnation.
    node: Bytes,
    incarnation: u64,
    deadline_ms: u64,
}

#[derive(Debug)]
pub(super) struct Receipts {
    config: ReceiptConfig,
    next_token: u64,
    awaiting: HashMap<u64, Awaiting>,
    /// (deadline, token) of every entry of `awaiting`.
    deadlines: BTreeSet<(u64, u64)>,
    per_sender: HashMap<ConnId, usize>,
    pub(super) counts: ReceiptCounts,
}

impl Receipts {
    pub(super) fn new(config: ReceiptConfig) -> Self {
        Receipts {
            config,
            next_token: 1,
            awaiting: HashMap::new(),
            deadlines: BTreeSet::new(),
            per_sender: HashMap::new(),
            counts: ReceiptCounts::default(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.awaiting.len()
    }

    /// Keep `message`, sent now to `node` (that incarnation): the token to publish it with, or
    /// `None` when a bound is reached (refused: not to be published).
    pub(super) fn admit(
        &mut self,
        message: Unanswered,
        node: Bytes,
        incarnation: u64,
        now_ms: u64,
    ) -> Option<u64> {
        let of_sender = self.per_sender.get(&message.sender).copied().unwrap_or(0);
        if of_sender >= self.config.per_sender_max || self.awaiting.len() >= self.config.max {
            self.counts.refused += 1;
            return None;
        }
        let token = self.next_token;
        self.next_token += 1;
        let deadline_ms = now_ms.saturating_add(self.config.wait_ms);
        self.per_sender.insert(message.sender, of_sender + 1);
        self.deadlines.insert((deadline_ms, token));
        self.awaiting.insert(
            token,
            Awaiting {
                message,
                node,
                incarnation,
                deadline_ms,
            },
        );
        self.counts.awaited += 1;
        Some(token)
    }

    /// The receipt for `token`, naming `name` as the sender: its message, if still awaited.
    pub(super) fn on_receipt(&mut self, token: Option<u64>, name: &[u8]) -> Option<Unanswered> {
        let found = token.filter(|token| {
            self.awaiting
                .get(token)
                .is_some_and(|awaiting| awaiting.message.name[..] == *name)
        });
        match found.and_then(|token| self.take(token)) {
            Some(message) => {
                self.counts.answered += 1;
                Some(message)
            }
            None => {
                self.counts.late += 1;
                None
            }
        }
    }

    /// Messages whose deadline is `now_ms` or earlier.
    pub(super) fn expire(&mut self, now_ms: u64) -> Vec<Unanswered> {
        let mut due = Vec::new();
        while self
            .deadlines
            .first()
            .is_some_and(|&(deadline_ms, _)| deadline_ms <= now_ms)
        {
            let Some((_, token)) = self.deadlines.pop_first() else {
                break;
            };
            due.extend(self.take(token));
        }
        self.counts.expired += due.len() as u64;
        due
    }

    /// `node` (that incarnation) is taken for dead: its messages get no receipt.
    pub(super) fn node_lapsed(&mut self, node: &[u8], incarnation: u64) -> Vec<Unanswered> {
        let mut tokens: Vec<(u64, u64)> = self
            .awaiting
            .iter()
            .filter(|(_, awaiting)| {
                awaiting.node[..] == *node && awaiting.incarnation == incarnation
            })
            .map(|(&token, awaiting)| (awaiting.deadline_ms, token))
            .collect();
        // In the order sent.
        tokens.sort_unstable();
        let lapsed: Vec<Unanswered> = tokens
            .into_iter()
            .filter_map(|(_, token)| self.take(token))
            .collect();
        self.counts.lapsed += lapsed.len() as u64;
        lapsed
    }

    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines.first().map(|&(deadline_ms, _)| deadline_ms)
    }

    fn take(&mut self, token: u64) -> Option<Unanswered> {
        let awaiting = self.awaiting.remove(&token)?;
        self.deadlines.remove(&(awaiting.deadline_ms, token));
        let sender = awaiting.message.sender;
        if let Some(count) = self.per_sender.get_mut(&sender) {
            *count -= 1;
            if *count == 0 {
                self.per_sender.remove(&sender);
            }
        }
        Some(awaiting.message)
    }
}
