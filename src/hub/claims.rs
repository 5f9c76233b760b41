//! Names claimed across a cluster (issue 20): the hub's side, sans-io.
//!
//! A node alone decides a claim at once from its own table. In a cluster the name must also be
//! free on every other node, which only Redis knows, and the reactor never waits for Redis:
//! the hub reserves the name locally (a second local claim is refused at once), records the
//! claim here with a deadline, and hands a [`NameOp`] to the cluster's names thread. The
//! answer comes back through [`super::Hub::on_claim_answer`]; a claim not answered by its
//! deadline is refused as unconfirmed ([`super::Hub::expire_claims`]). Either way the waiting
//! connection's service is told through a [`ClaimDecided`].
//!
//! Operations reach the names thread in the order they were made, on one connection, so a
//! release made while its claim is still on the way is carried out after the claim: a claim
//! that lands after its connection closed (or after its deadline) is deleted again.

use std::collections::VecDeque;

use bytes::Bytes;

use super::render;
use super::NamedProtocol;
use crate::chat::ConnId;
use crate::protocol::ccm::Reason;
use crate::protocol::matou::codec as matou;

/// How claims wait for the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimConfig {
    /// The longest a claim waits for Redis's answer before it is refused as unconfirmed.
    pub wait_ms: u64,
    /// Claims waiting at once, on this node; one more is refused as unconfirmed at once.
    pub pending_max: usize,
}

/// What the hub asks of the cluster's names thread, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameOp {
    /// Take `name` for this node unless another node holds it; answer with `token`.
    Claim { token: u64, name: Bytes },
    /// This node no longer holds `name` (delete its key if it is still this node's).
    Release { name: Bytes },
}

/// Redis's answer to a [`NameOp::Claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The name is this node's now.
    Granted,
    /// Another node holds it.
    Taken,
    /// Redis could not be asked (the link is down or did not answer in time).
    Unavailable,
}

/// What a waiting connection's service is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Granted,
    /// Refused: send `answer` (the contract's refusal in the newcomer's own way) and keep the
    /// connection open for another try; `None` for BIN24, which has no refusal frame: close.
    Refused {
        answer: Option<Bytes>,
    },
}

/// A claim that waited for the cluster, decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimDecided {
    pub protocol: NamedProtocol,
    pub conn: ConnId,
    pub decision: Decision,
}

/// Why a claim was refused without the name being held anywhere known: the cluster could not
/// confirm it (Redis unreachable, no answer in time, or too many claims waiting).
pub fn unconfirmed_answer(newcomer: NamedProtocol) -> Option<Bytes> {
    match newcomer {
        // CCM's only refusal of a name; the sentence says it is worth another try.
        NamedProtocol::Ccm => Some(render::ccm_error(
            Reason::NameTaken,
            "the cluster could not confirm that name now; try again",
        )),
        NamedProtocol::Matou => Some(matou::connect_response(false)),
        NamedProtocol::Bin24 => None,
    }
}

/// Counters, for the admin port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimCounts {
    /// Claims sent to the cluster.
    pub asked: u64,
    pub granted: u64,
    /// Refused because another node holds the name.
    pub taken: u64,
    /// Refused because the cluster could not confirm them (down, late, or too many waiting).
    pub unconfirmed: u64,
    /// Names this node held that another node holds now (after an outage): their holders
    /// were closed.
    pub lost: u64,
}

/// The claims waiting for the cluster, and what is to be sent to it.
#[derive(Debug)]
pub(super) struct Claims {
    pub(super) config: ClaimConfig,
    /// (deadline, token, name) in the order made: deadlines grow with it, so the front is the
    /// earliest. Entries whose claim was decided (or whose connection left) stay until their
    /// deadline passes and are skipped then; `waiting` counts the live ones.
    deadlines: VecDeque<(u64, u64, Bytes)>,
    pub(super) waiting: usize,
    next_token: u64,
    pub(super) ops: Vec<NameOp>,
    pub(super) counts: ClaimCounts,
}

impl Claims {
    pub(super) fn new(config: ClaimConfig) -> Self {
        Claims {
            config,
            deadlines: VecDeque::new(),
            waiting: 0,
            next_token: 1,
            ops: Vec::new(),
            counts: ClaimCounts::default(),
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.waiting >= self.config.pending_max
    }

    /// Record a claim of `name` made at `now_ms` and queue it for the cluster; its token.
    pub(super) fn ask(&mut self, name: Bytes, now_ms: u64) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.waiting += 1;
        self.counts.asked += 1;
        self.deadlines.push_back((
            now_ms.saturating_add(self.config.wait_ms),
            token,
            name.clone(),
        ));
        self.ops.push(NameOp::Claim { token, name });
        token
    }

    /// The earliest deadline still recorded (maybe of a decided claim: looking then costs a
    /// pop).
    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines.front().map(|&(deadline, _, _)| deadline)
    }

    /// The next claim whose deadline is due by `now_ms`: (token, name).
    pub(super) fn pop_due(&mut self, now_ms: u64) -> Option<(u64, Bytes)> {
        match self.deadlines.front() {
            Some(&(deadline, _, _)) if deadline <= now_ms => self
                .deadlines
                .pop_front()
                .map(|(_, token, name)| (token, name)),
            _ => None,
        }
    }
}
