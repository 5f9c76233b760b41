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

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::receipts::{ReceiptConfig, ReceiptCounts, Receipts};
use super::render;
use super::{Addressed, HubEvent, NamedProtocol, PrivateLink};
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
    /// A web user's `direct` to another node's CCM or web user, awaiting its receipt.
    pub web_receipts: ReceiptConfig,
}

/// What the hub asks of the cluster's names thread, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameOp {
    /// Take `name` for this node unless another node holds it; answer with `token`.
    Claim {
        token: u64,
        name: Bytes,
        /// The claimant's protocol, kept with the name: another node addressing it needs it.
        protocol: NamedProtocol,
    },
    /// This node no longer holds `name` (delete its key if it is still this node's).
    Release { name: Bytes },
    /// Which other node holds `name`? Answer with `token`.
    Locate { token: u64, name: Bytes },
}

/// The node holding a name, as its key says: node name, incarnation, the holder's protocol.
pub type Holder = (Bytes, u64, NamedProtocol);

/// Names whose holder on another node this node remembers (from look-ups); beyond it the
/// cache starts afresh (a miss costs one look-up, never a message).
pub const LOCATIONS_MAX: usize = 65_536;

/// What becomes of a message to a name held on another node, once located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Located {
    /// Publish this event: the node holding the name delivers it. `from` (the CCM sender)
    /// held its further input meanwhile, to keep its messages in order.
    Send { from: ConnId, event: HubEvent },
    /// No other node holds the name (or the cluster could not say in time): the sender,
    /// `from`, is told CCM's `unknown-addressee`.
    Unknown { from: ConnId, recipient: Bytes },
    /// A MATOU private request of `from`: `found` says whether a MATOU user of another node
    /// holds Dst; if so `link` (addressed to that node) is to be published. MATOU's service
    /// is told either way.
    Private {
        from: ConnId,
        link: Box<PrivateLink>,
        found: bool,
    },
    /// A BIN24 message (type 0, `frame`) of `from`: `at` is the node (and incarnation) where
    /// a BIN24 user holds its DST, to publish it for; `None` when no other node's BIN24 user
    /// does, and BIN24's rules for a recipient not online here apply.
    Bin24 {
        from: ConnId,
        frame: Bytes,
        at: Option<(Bytes, u64)>,
    },
    /// A BIN24 message (type 0, `frame`) sent from the location cache to a node that no
    /// longer holds its DST and sent it back, located again: `at` as for [`Located::Bin24`].
    /// Nobody's input was held for it.
    Bin24Relocated {
        frame: Bytes,
        at: Option<(Bytes, u64)>,
    },
    /// A CCM message of `from` whose addressee is a BIN24 user of the node `at` (rule 4
    /// across nodes): made a BIN24 frame on this node ([`super::Hub::ccm_to_remote_bin24`])
    /// and published for that node, under BIN24's custody here.
    CcmToBin24 {
        from: ConnId,
        message: Box<Addressed>,
        at: (Bytes, u64),
    },
    /// A web user's `direct` (`from`) to a CCM or web user of another node: publish `event`
    /// (its receipt comes back), then read `from`'s held input again.
    WebSend { from: ConnId, event: HubEvent },
    /// A web user's `direct` whose addressee is a BIN24 user of the node `at`: made a BIN24
    /// frame here ([`super::Hub::web_to_remote_bin24`]) under BIN24's custody here.
    WebToBin24 {
        from: ConnId,
        message: Box<Addressed>,
        at: (Bytes, u64),
    },
    /// A web user's `direct` not sent: `from` is told `error` `reason` for its request
    /// `request`: `unknown-addressee` (nobody, a MATOU user, or not located in time), or
    /// `busy` (too many of its, or this node's, messages await their receipt already).
    WebRefused {
        from: ConnId,
        request: Option<u64>,
        reason: &'static str,
    },
}

/// What waits for a name to be located.
#[derive(Debug)]
enum Locating {
    Ccm(Addressed),
    /// A web user's `direct` ([`super::WEB_DIRECT_KIND`]).
    Web(Addressed),
    Private(PrivateLink),
    Bin24(Bytes),
    /// Sent back by the node the cache named ([`Located::Bin24Relocated`]).
    Bin24Bounced(Bytes),
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
        NamedProtocol::Web => Some(crate::protocol::web::json::refused("unconfirmed")),
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
    /// BIN24 messages to another node's user sent where the location cache placed the
    /// addressee, with no look-up.
    pub location_hits: u64,
    /// BIN24 messages to a name not on this node that the cache could not place (no entry,
    /// or a MATOU holder): located in Redis.
    pub location_misses: u64,
    /// BIN24 messages another node sent back (the cache's entry was stale): located again.
    pub location_bounces: u64,
    /// Web users' messages to another node's CCM or web users and their receipts.
    pub web_receipts: ReceiptCounts,
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
    /// Messages waiting to learn which node holds their addressee (named), by token, and
    /// their deadlines in the order asked.
    locating: HashMap<u64, (Option<ConnId>, Bytes, Locating)>,
    locate_deadlines: VecDeque<(u64, u64)>,
    /// Where names are, as the last look-up of each said: a BIN24 message to one of them goes
    /// there without a look-up. An entry may be stale (its holder left, or moved): the node
    /// it names sends such a message back, and the entry goes ([`Claims::forget_location`]);
    /// a node taken for dead takes its entries with it ([`Claims::forget_node`]).
    locations: HashMap<Bytes, Holder>,
    pub(super) receipts: Receipts,
}

impl Claims {
    pub(super) fn new(config: ClaimConfig) -> Self {
        Claims {
            receipts: Receipts::new(config.web_receipts),
            config,
            deadlines: VecDeque::new(),
            waiting: 0,
            next_token: 1,
            ops: Vec::new(),
            counts: ClaimCounts::default(),
            locating: HashMap::new(),
            locate_deadlines: VecDeque::new(),
            locations: HashMap::new(),
        }
    }

    /// The node (and incarnation) where, as far as this node knows, a user that takes BIN24
    /// messages (BIN24, CCM or web) holds `name`; no look-up.
    pub(super) fn cached_bin24_location(&self, name: &[u8]) -> Option<(Bytes, u64)> {
        match self.locations.get(name)? {
            (node, incarnation, NamedProtocol::Bin24 | NamedProtocol::Ccm | NamedProtocol::Web) => {
                Some((node.clone(), *incarnation))
            }
            (_, _, NamedProtocol::Matou) => None,
        }
    }

    /// `node` said it does not hold `name` (it sent a message back): its entry goes.
    pub(super) fn forget_location(&mut self, name: &[u8], node: &[u8]) {
        if self
            .locations
            .get(name)
            .is_some_and(|(holder, _, _)| holder[..] == *node)
        {
            self.locations.remove(name);
        }
    }

    /// `node` (this incarnation of it) is gone: nothing is sent there from the cache.
    pub(super) fn forget_node(&mut self, node: &[u8], incarnation: u64) {
        self.locations
            .retain(|_, (holder, held_by, _)| !(holder[..] == *node && *held_by == incarnation));
    }

    /// This node holds `name` now: no other node does.
    pub(super) fn forget_name(&mut self, name: &[u8]) {
        self.locations.remove(name);
    }

    fn remember(&mut self, name: Bytes, holder: Option<&Holder>) {
        match holder {
            Some(holder) => {
                if self.locations.len() >= LOCATIONS_MAX && !self.locations.contains_key(&name) {
                    self.locations.clear();
                }
                self.locations.insert(name, holder.clone());
            }
            None => {
                self.locations.remove(&name);
            }
        }
    }

    /// Ask again, bypassing the cache, where the DST of `frame` is: the node the cache named
    /// sent it back. False when too many messages wait already.
    pub(super) fn locate_bounced(&mut self, name: Bytes, frame: Bytes, now_ms: u64) -> bool {
        self.locate_any(None, name, Locating::Bin24Bounced(frame), now_ms)
    }

    /// Ask which node holds `message.recipient`, for `from`'s message; false when too many
    /// messages wait already.
    pub(super) fn locate(&mut self, from: ConnId, message: Addressed, now_ms: u64) -> bool {
        let name = message.recipient.clone();
        self.locate_any(Some(from), name, Locating::Ccm(message), now_ms)
    }

    /// Ask which node holds `message.recipient`, for the web user `from`'s `direct`.
    pub(super) fn locate_web(&mut self, from: ConnId, message: Addressed, now_ms: u64) -> bool {
        let name = message.recipient.clone();
        self.locate_any(Some(from), name, Locating::Web(message), now_ms)
    }

    /// Ask which node holds `link.dst`, for `from`'s private request.
    pub(super) fn locate_private(&mut self, from: ConnId, link: PrivateLink, now_ms: u64) -> bool {
        let name = link.dst.clone();
        self.locate_any(Some(from), name, Locating::Private(link), now_ms)
    }

    /// Ask which node holds `recipient`, for `from`'s BIN24 message `frame`.
    pub(super) fn locate_bin24(
        &mut self,
        from: ConnId,
        recipient: Bytes,
        frame: Bytes,
        now_ms: u64,
    ) -> bool {
        self.locate_any(Some(from), recipient, Locating::Bin24(frame), now_ms)
    }

    fn locate_any(
        &mut self,
        from: Option<ConnId>,
        name: Bytes,
        what: Locating,
        now_ms: u64,
    ) -> bool {
        if self.locating.len() >= self.config.pending_max {
            return false;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.ops.push(NameOp::Locate {
            token,
            name: name.clone(),
        });
        self.locating.insert(token, (from, name, what));
        self.locate_deadlines
            .push_back((now_ms.saturating_add(self.config.wait_ms), token));
        true
    }

    /// The answer for `token`: the holder's node, incarnation and protocol, or nobody. A CCM
    /// message goes to a CCM or BIN24 holder (rule 4), never to MATOU (as on one node).
    pub(super) fn located(&mut self, token: u64, holder: Option<Holder>) -> Option<Located> {
        self.located_as(token, holder, true)
    }

    /// As [`Claims::located`]; `answered`: Redis's answer (not a deadline), which the cache
    /// takes.
    fn located_as(
        &mut self,
        token: u64,
        holder: Option<Holder>,
        answered: bool,
    ) -> Option<Located> {
        let (from, name, what) = self.locating.remove(&token)?;
        if answered {
            self.remember(name, holder.as_ref());
        }
        if let Locating::Bin24Bounced(frame) = what {
            let at = match holder {
                Some((
                    node,
                    incarnation,
                    NamedProtocol::Bin24 | NamedProtocol::Ccm | NamedProtocol::Web,
                )) => Some((node, incarnation)),
                _ => None,
            };
            return Some(Located::Bin24Relocated { frame, at });
        }
        // Every other look-up was asked for a connection.
        let from = from?;
        Some(match (what, holder) {
            // To a CCM user there, or a web user (rule 4; no receipt: CCM has none).
            (
                Locating::Ccm(mut message),
                Some((node, incarnation, NamedProtocol::Ccm | NamedProtocol::Web)),
            ) => {
                message.to_node = node;
                message.to_incarnation = incarnation;
                Located::Send {
                    from,
                    event: HubEvent::Addressed(Box::new(message)),
                }
            }
            // Rule 4 across nodes: a BIN24 user of another node gets it as BIN24's own.
            (Locating::Ccm(message), Some((node, incarnation, NamedProtocol::Bin24))) => {
                Located::CcmToBin24 {
                    from,
                    message: Box::new(message),
                    at: (node, incarnation),
                }
            }
            (
                Locating::Web(mut message),
                Some((node, incarnation, NamedProtocol::Web | NamedProtocol::Ccm)),
            ) => {
                message.to_node = node;
                message.to_incarnation = incarnation;
                Located::WebSend {
                    from,
                    event: HubEvent::Addressed(Box::new(message)),
                }
            }
            (Locating::Web(message), Some((node, incarnation, NamedProtocol::Bin24))) => {
                Located::WebToBin24 {
                    from,
                    message: Box::new(message),
                    at: (node, incarnation),
                }
            }
            (Locating::Web(message), _) => Located::WebRefused {
                from,
                request: message.request,
                reason: "unknown-addressee",
            },
            (Locating::Ccm(message), _) => Located::Unknown {
                from,
                recipient: message.recipient,
            },
            // Private links need two MATOU users, as on one node.
            (Locating::Private(mut link), Some((node, incarnation, NamedProtocol::Matou))) => {
                link.to_node = node;
                link.to_incarnation = incarnation;
                Located::Private {
                    from,
                    link: Box::new(link),
                    found: true,
                }
            }
            (Locating::Private(link), _) => Located::Private {
                from,
                link: Box::new(link),
                found: false,
            },
            // To a BIN24 user there, or (rule 4) a CCM or web user, whose node writes it in
            // that user's form; a MATOU user gets no direct messages, so BIN24 keeps it here.
            (
                Locating::Bin24(frame),
                Some((
                    node,
                    incarnation,
                    NamedProtocol::Bin24 | NamedProtocol::Ccm | NamedProtocol::Web,
                )),
            ) => Located::Bin24 {
                from,
                frame,
                at: Some((node, incarnation)),
            },
            (Locating::Bin24(frame), _) => Located::Bin24 {
                from,
                frame,
                at: None,
            },
            (Locating::Bin24Bounced(frame), _) => Located::Bin24Relocated { frame, at: None },
        })
    }

    /// Messages not located by `now_ms`: their senders are told the addressee is unknown.
    pub(super) fn expire_locates(&mut self, now_ms: u64) -> Vec<Located> {
        let mut expired = Vec::new();
        while let Some(&(deadline, token)) = self.locate_deadlines.front() {
            if deadline > now_ms {
                break;
            }
            self.locate_deadlines.pop_front();
            expired.extend(self.located_as(token, None, false));
        }
        expired
    }

    pub(super) fn next_locate_deadline_ms(&self) -> Option<u64> {
        self.locate_deadlines.front().map(|&(deadline, _)| deadline)
    }

    pub(super) fn is_full(&self) -> bool {
        self.waiting >= self.config.pending_max
    }

    /// Record a claim of `name` made at `now_ms` and queue it for the cluster; its token.
    pub(super) fn ask(&mut self, name: Bytes, protocol: NamedProtocol, now_ms: u64) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.waiting += 1;
        self.counts.asked += 1;
        self.deadlines.push_back((
            now_ms.saturating_add(self.config.wait_ms),
            token,
            name.clone(),
        ));
        self.ops.push(NameOp::Claim {
            token,
            name,
            protocol,
        });
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

#[cfg(test)]
mod tests {
    use super::super::{Claim, Hub, HubConfig, Refusal};
    use super::*;
    use crate::protocol::ccm::codec as ccm;

    const WAIT_MS: u64 = 100;
    const RECEIPT_WAIT_MS: u64 = 400;

    fn conn(slot: u32) -> ConnId {
        ConnId::new(slot, 1)
    }

    fn clustered(pending_max: usize) -> Hub {
        Hub::new(HubConfig {
            clustered: true,
            name_claims: Some(ClaimConfig {
                wait_ms: WAIT_MS,
                pending_max,
                web_receipts: ReceiptConfig {
                    wait_ms: RECEIPT_WAIT_MS,
                    per_sender_max: 2,
                    max: 3,
                },
            }),
            ..HubConfig::default()
        })
    }

    fn claim(token: u64, name: &'static [u8], protocol: NamedProtocol) -> NameOp {
        NameOp::Claim {
            token,
            name: Bytes::from_static(name),
            protocol,
        }
    }

    fn release(name: &'static [u8]) -> NameOp {
        NameOp::Release {
            name: Bytes::from_static(name),
        }
    }

    #[test]
    fn a_claim_waits_for_the_cluster_and_reserves_the_name_locally_meanwhile() {
        let mut hub = clustered(16);
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Matou, conn(1), b"mia", 0),
            Claim::Pending
        );
        assert_eq!(
            hub.take_name_ops(),
            [claim(1, b"mia", NamedProtocol::Matou)]
        );
        // Asked again by the same connection: still waiting, nothing sent twice.
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Matou, conn(1), b"mia", 5),
            Claim::Pending
        );
        assert!(!hub.has_name_ops());
        // Reserved: another local claim, in any protocol, is refused at once, the way a held
        // name is, even BIN24's (a claim in doubt is not a holder BIN24 may replace).
        for (slot, protocol) in [
            (2, NamedProtocol::Ccm),
            (3, NamedProtocol::Matou),
            (4, NamedProtocol::Bin24),
        ] {
            assert_eq!(
                hub.claim_name_at(protocol, conn(slot), b"mia", 10),
                Claim::Refused(Refusal {
                    newcomer: protocol,
                    holder: NamedProtocol::Matou,
                })
            );
        }
        // Not a holder yet: nothing is addressed to it.
        assert_eq!(hub.holder(b"mia"), None);
        assert_eq!(hub.claims_waiting(), 1);

        let decided = hub.on_claim_answer(1, b"mia", ClaimAnswer::Granted);
        assert_eq!(
            decided,
            Some(ClaimDecided {
                protocol: NamedProtocol::Matou,
                conn: conn(1),
                decision: Decision::Granted,
            })
        );
        assert_eq!(hub.holder(b"mia"), Some((NamedProtocol::Matou, conn(1))));
        assert_eq!(hub.claims_waiting(), 0);
        // Once granted, its deadline passing is nothing, and a repeated answer neither.
        assert!(hub.expire_claims(WAIT_MS).is_empty());
        assert_eq!(hub.on_claim_answer(1, b"mia", ClaimAnswer::Taken), None);
        assert_eq!(hub.holder(b"mia"), Some((NamedProtocol::Matou, conn(1))));
        // Held by this node: a second claim is refused locally, without asking Redis.
        assert!(matches!(
            hub.claim_name_at(NamedProtocol::Ccm, conn(2), b"mia", 20),
            Claim::Refused(_)
        ));
        assert!(!hub.has_name_ops());
        let counts = hub.claim_counts().unwrap_or_default();
        assert_eq!((counts.asked, counts.granted), (1, 1));
    }

    #[test]
    fn a_name_another_node_holds_is_refused_in_the_newcomers_own_way_and_is_free_here() {
        let mut hub = clustered(16);
        for (slot, protocol) in [
            (1, NamedProtocol::Ccm),
            (2, NamedProtocol::Matou),
            (3, NamedProtocol::Bin24),
            (4, NamedProtocol::Web),
        ] {
            let name: &'static [u8] = match protocol {
                NamedProtocol::Ccm => b"cid",
                NamedProtocol::Matou => b"mia",
                NamedProtocol::Bin24 => b"bob",
                NamedProtocol::Web => b"wen",
            };
            assert_eq!(
                hub.claim_name_at(protocol, conn(slot), name, 0),
                Claim::Pending
            );
            let decided = hub.on_claim_answer(u64::from(slot), name, ClaimAnswer::Taken);
            let Some(ClaimDecided {
                decision: Decision::Refused { answer },
                ..
            }) = decided
            else {
                panic!("{protocol:?}: not refused: {decided:?}");
            };
            match protocol {
                NamedProtocol::Ccm => {
                    let mut wire = bytes::BytesMut::from(&answer.unwrap_or_default()[..]);
                    let message = ccm::decode(&mut wire, true).ok().flatten();
                    let reason = message
                        .as_ref()
                        .and_then(|m| m.attribute("Reason").cloned());
                    assert_eq!(reason.as_deref(), Some(&b"name-taken"[..]));
                }
                NamedProtocol::Matou => assert_eq!(answer, Some(matou::connect_response(false))),
                NamedProtocol::Bin24 => assert_eq!(answer, None, "BIN24 closes"),
                NamedProtocol::Web => assert_eq!(
                    answer,
                    Some(crate::protocol::web::json::refused("name-taken"))
                ),
            }
            // Free here: the connection may try another name, or the same one later.
            assert_eq!(hub.holder(name), None);
            assert_eq!(hub.name_of(conn(slot)), None);
        }
        // A refusal is not this node's key: nothing to release.
        let ops = hub.take_name_ops();
        assert!(
            ops.iter().all(|op| matches!(op, NameOp::Claim { .. })),
            "{ops:?}"
        );
        assert_eq!(hub.claim_counts().unwrap_or_default().taken, 4);
    }

    #[test]
    fn a_claim_not_answered_by_its_deadline_is_refused_once_and_released_after_it() {
        let mut hub = clustered(16);
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Ccm, conn(1), b"cid", 1_000),
            Claim::Pending
        );
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Matou, conn(2), b"mia", 1_050),
            Claim::Pending
        );
        assert_eq!(hub.next_claim_deadline_ms(), Some(1_000 + WAIT_MS));
        assert!(hub.expire_claims(1_000 + WAIT_MS - 1).is_empty());
        let expired = hub.expire_claims(1_000 + WAIT_MS);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].conn, conn(1));
        assert_eq!(
            expired[0].decision,
            Decision::Refused {
                answer: unconfirmed_answer(NamedProtocol::Ccm)
            }
        );
        // The claim may still land in Redis: its release follows it, in order.
        assert_eq!(
            hub.take_name_ops(),
            [
                claim(1, b"cid", NamedProtocol::Ccm),
                claim(2, b"mia", NamedProtocol::Matou),
                release(b"cid")
            ]
        );
        // A late answer is nothing more.
        assert_eq!(hub.on_claim_answer(1, b"cid", ClaimAnswer::Granted), None);
        assert_eq!(hub.holder(b"cid"), None);
        assert_eq!(hub.next_claim_deadline_ms(), Some(1_050 + WAIT_MS));
        assert_eq!(hub.expire_claims(u64::MAX).len(), 1);
        assert_eq!(hub.next_claim_deadline_ms(), None);
        assert_eq!(hub.claims_waiting(), 0);
        assert_eq!(hub.claim_counts().unwrap_or_default().unconfirmed, 2);
    }

    #[test]
    fn a_connection_gone_while_its_claim_waits_releases_the_name_after_the_claim() {
        let mut hub = clustered(16);
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Matou, conn(1), b"mia", 0),
            Claim::Pending
        );
        assert_eq!(hub.release_name(conn(1)), Some(Bytes::from_static(b"mia")));
        assert_eq!(hub.claims_waiting(), 0);
        // Free locally at once: another connection asks for it in turn.
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Ccm, conn(2), b"mia", 1),
            Claim::Pending
        );
        assert_eq!(
            hub.take_name_ops(),
            [
                claim(1, b"mia", NamedProtocol::Matou),
                release(b"mia"),
                claim(2, b"mia", NamedProtocol::Ccm)
            ]
        );
        // The first claim's answer concerns nobody now; the second's decides conn 2.
        assert_eq!(hub.on_claim_answer(1, b"mia", ClaimAnswer::Granted), None);
        let decided = hub.on_claim_answer(2, b"mia", ClaimAnswer::Granted);
        assert_eq!(decided.map(|d| d.conn), Some(conn(2)));
        // Its deadline passing later decides nothing again.
        assert!(hub.expire_claims(u64::MAX).is_empty());
    }

    #[test]
    fn claims_waiting_are_bounded_and_one_more_is_unconfirmed_at_once() {
        let mut hub = clustered(2);
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Ccm, conn(1), b"a", 0),
            Claim::Pending
        );
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Ccm, conn(2), b"b", 0),
            Claim::Pending
        );
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Ccm, conn(3), b"c", 0),
            Claim::Unconfirmed
        );
        assert_eq!(
            Claim::Unconfirmed.refusal(NamedProtocol::Matou),
            Some(Some(matou::connect_response(false)))
        );
        assert_eq!(hub.holder(b"c"), None);
        // A decided claim makes room.
        let _ = hub.on_claim_answer(1, b"a", ClaimAnswer::Unavailable);
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Ccm, conn(3), b"c", 0),
            Claim::Pending
        );
    }

    #[test]
    fn a_held_name_another_node_took_meanwhile_closes_its_holder_here() {
        let mut hub = clustered(16);
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Matou, conn(1), b"mia", 0),
            Claim::Pending
        );
        let _ = hub.on_claim_answer(1, b"mia", ClaimAnswer::Granted);
        assert_eq!(hub.on_name_lost(b"mia"), Some(conn(1)));
        assert_eq!(hub.holder(b"mia"), None);
        // Its close releases nothing: the key is the other node's.
        let _ = hub.take_name_ops();
        assert_eq!(hub.release_name(conn(1)), None);
        assert!(!hub.has_name_ops());
        assert_eq!(hub.on_name_lost(b"mia"), None);
        assert_eq!(hub.claim_counts().unwrap_or_default().lost, 1);
    }

    #[test]
    fn a_newer_bin24_login_replaces_a_held_bin24_name_without_asking_the_cluster() {
        let mut hub = clustered(16);
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Bin24, conn(1), b"bob", 0),
            Claim::Pending
        );
        let _ = hub.on_claim_answer(1, b"bob", ClaimAnswer::Granted);
        let _ = hub.take_name_ops();
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Bin24, conn(2), b"bob", 5),
            Claim::Granted
        );
        assert!(!hub.has_name_ops(), "this node holds the key already");
        assert_eq!(hub.holder(b"bob"), Some((NamedProtocol::Bin24, conn(2))));
    }

    #[test]
    fn a_node_alone_decides_at_once_and_sends_nothing() {
        let mut hub = Hub::new(HubConfig::default());
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Matou, conn(1), b"mia", 0),
            Claim::Granted
        );
        assert!(!hub.has_name_ops());
        assert_eq!(hub.next_claim_deadline_ms(), None);
        assert_eq!(hub.claim_counts(), None);
        assert_eq!(hub.release_name(conn(1)), Some(Bytes::from_static(b"mia")));
        assert!(hub.take_name_ops().is_empty());
    }

    fn message(to: &'static [u8], body: &'static [u8]) -> Addressed {
        Addressed {
            to_node: Bytes::new(),
            to_incarnation: 0,
            kind: Bytes::from_static(b"Text"),
            sender: Bytes::from_static(b"cid"),
            recipient: Bytes::from_static(to),
            encoding: Bytes::from_static(b"utf-8"),
            body: Bytes::from_static(body),
            from_node: Bytes::new(),
            from_incarnation: 0,
            request: None,
        }
    }

    #[test]
    fn a_message_to_a_name_held_elsewhere_goes_to_its_ccm_holders_node_or_is_unknown() {
        let mut hub = clustered(2);
        assert!(hub.address_remote(conn(1), message(b"cat", b"one"), 0));
        assert!(hub.address_remote(conn(1), message(b"mia", b"two"), 10));
        // Bounded: one more waits for nothing.
        assert!(!hub.address_remote(conn(1), message(b"x", b"three"), 10));
        assert_eq!(
            hub.take_name_ops(),
            [
                NameOp::Locate {
                    token: 1,
                    name: Bytes::from_static(b"cat")
                },
                NameOp::Locate {
                    token: 2,
                    name: Bytes::from_static(b"mia")
                },
            ]
        );
        let node = Bytes::from_static(b"node-b");
        let mut sent = message(b"cat", b"one");
        sent.to_node = node.clone();
        sent.to_incarnation = 7;
        assert_eq!(
            hub.on_located(1, Some((node.clone(), 7, NamedProtocol::Ccm)), 0),
            Some(Located::Send {
                from: conn(1),
                event: HubEvent::Addressed(Box::new(sent))
            })
        );
        // A MATOU holder: CCM does not cross to MATOU, as on one node.
        assert_eq!(
            hub.on_located(2, Some((node, 7, NamedProtocol::Matou)), 0),
            Some(Located::Unknown {
                from: conn(1),
                recipient: Bytes::from_static(b"mia")
            })
        );
        assert_eq!(hub.on_located(2, None, 0), None, "answered once");
        // A BIN24 holder (rule 4 across nodes): made a BIN24 frame here, for its node.
        assert!(hub.address_remote(conn(1), message(b"bob", b"five"), 20));
        assert_eq!(
            hub.on_located(
                3,
                Some((Bytes::from_static(b"node-b"), 7, NamedProtocol::Bin24)),
                0
            ),
            Some(Located::CcmToBin24 {
                from: conn(1),
                message: Box::new(message(b"bob", b"five")),
                at: (Bytes::from_static(b"node-b"), 7)
            })
        );
        // A web holder: sent there, as to a CCM holder.
        assert!(hub.address_remote(conn(1), message(b"wes", b"six"), 20));
        let mut sent = message(b"wes", b"six");
        sent.to_node = Bytes::from_static(b"node-b");
        sent.to_incarnation = 7;
        assert_eq!(
            hub.on_located(
                4,
                Some((Bytes::from_static(b"node-b"), 7, NamedProtocol::Web)),
                0
            ),
            Some(Located::Send {
                from: conn(1),
                event: HubEvent::Addressed(Box::new(sent))
            })
        );
        // Not located by its deadline: unknown, once.
        assert!(hub.address_remote(conn(2), message(b"dan", b"four"), 100));
        assert_eq!(hub.next_claim_deadline_ms(), Some(WAIT_MS));
        assert!(hub.expire_locates(100 + WAIT_MS - 1).is_empty());
        assert_eq!(
            hub.expire_locates(100 + WAIT_MS),
            [Located::Unknown {
                from: conn(2),
                recipient: Bytes::from_static(b"dan")
            }]
        );
        assert_eq!(hub.on_located(5, None, 0), None);
        assert!(!Hub::new(HubConfig::default()).address_remote(conn(1), message(b"a", b""), 0));
    }

    /// A BIN24 message to a name no user here holds: located; only a BIN24 holder elsewhere
    /// gets it (its node named), anything else, or no answer within the deadline, leaves it
    /// to BIN24's rules here (`at: None`, stored). Bounded as the other look-ups.
    #[test]
    fn a_bin24_message_is_sent_to_its_bin24_holders_node_or_left_to_this_node() {
        let mut hub = clustered(2);
        let frame = |n: u8| Bytes::from(vec![n; 24]);
        assert!(hub.address_bin24(conn(1), Bytes::from_static(b"bob"), frame(1), 0));
        assert!(hub.address_bin24(conn(1), Bytes::from_static(b"cat"), frame(2), 5));
        assert!(!hub.address_bin24(conn(2), Bytes::from_static(b"x"), frame(3), 5));
        assert_eq!(
            hub.take_name_ops(),
            [
                NameOp::Locate {
                    token: 1,
                    name: Bytes::from_static(b"bob")
                },
                NameOp::Locate {
                    token: 2,
                    name: Bytes::from_static(b"cat")
                },
            ]
        );
        let node = Bytes::from_static(b"node-b");
        assert_eq!(
            hub.on_located(1, Some((node.clone(), 7, NamedProtocol::Bin24)), 0),
            Some(Located::Bin24 {
                from: conn(1),
                frame: frame(1),
                at: Some((node.clone(), 7))
            })
        );
        // A CCM holder elsewhere (rule 4 across nodes): its node writes it in CCM's form.
        assert_eq!(
            hub.on_located(2, Some((node.clone(), 7, NamedProtocol::Ccm)), 0),
            Some(Located::Bin24 {
                from: conn(1),
                frame: frame(2),
                at: Some((node.clone(), 7))
            })
        );
        assert_eq!(hub.on_located(1, None, 0), None, "answered once");
        // A MATOU holder gets no direct messages: BIN24's rules here.
        assert!(hub.address_bin24(conn(1), Bytes::from_static(b"mia"), frame(5), 50));
        assert_eq!(
            hub.on_located(3, Some((node, 7, NamedProtocol::Matou)), 0),
            Some(Located::Bin24 {
                from: conn(1),
                frame: frame(5),
                at: None
            })
        );
        assert!(hub.address_bin24(conn(3), Bytes::from_static(b"dan"), frame(4), 100));
        assert!(hub.expire_locates(100 + WAIT_MS - 1).is_empty());
        assert_eq!(
            hub.expire_locates(100 + WAIT_MS),
            [Located::Bin24 {
                from: conn(3),
                frame: frame(4),
                at: None
            }]
        );
        assert!(!Hub::new(HubConfig::default()).address_bin24(
            conn(1),
            Bytes::from_static(b"bob"),
            frame(1),
            0
        ));
    }

    /// The admin port's counts of the location cache: a message the cache cannot place is a
    /// miss (located in Redis), one it places a hit, one sent back a bounce; asking what the
    /// cache holds (no message sent) counts nothing.
    #[test]
    fn the_location_cache_counts_hits_misses_and_bounces() {
        let mut hub = clustered(8);
        let bob = Bytes::from_static(b"bob");
        let frame = Bytes::from(vec![1; 24]);
        let counts = |hub: &Hub| {
            let counts = hub.claim_counts().expect("clustered");
            (
                counts.location_hits,
                counts.location_misses,
                counts.location_bounces,
            )
        };
        assert_eq!(hub.bin24_route_by_cache(b"bob"), None);
        assert!(hub.address_bin24(conn(1), bob.clone(), frame.clone(), 0));
        let token = match hub.take_name_ops()[..] {
            [NameOp::Locate { token, .. }] => token,
            ref ops => panic!("{ops:?}"),
        };
        let node_b = Bytes::from_static(b"node-b");
        let holder = (node_b.clone(), 7, NamedProtocol::Bin24);
        assert!(hub.on_located(token, Some(holder), 0).is_some());
        assert_eq!(counts(&hub), (0, 1, 0));
        assert_eq!(hub.bin24_cached_location(b"bob"), Some((node_b.clone(), 7)));
        assert_eq!(counts(&hub), (0, 1, 0), "a query is no message");
        assert_eq!(hub.bin24_route_by_cache(b"bob"), Some((node_b, 7)));
        assert_eq!(hub.bin24_route_by_cache(b"bob").map(|(_, at)| at), Some(7));
        assert!(hub.bin24_bounced(b"node-b", bob, frame, 0));
        assert_eq!(counts(&hub), (2, 1, 1));
        assert_eq!(
            hub.bin24_route_by_cache(b"bob"),
            None,
            "the stale entry went"
        );
        assert_eq!(counts(&hub), (2, 2, 1));
    }

    /// Where the look-ups found names is remembered: a BIN24 message to one of them needs no
    /// look-up. The entry goes when its node sends a message back (that node's only), when
    /// the node is taken for dead (that incarnation's only), when a look-up finds nobody,
    /// and when this node holds the name itself; a MATOU holder is no BIN24 target.
    #[test]
    fn the_location_cache_remembers_answers_and_forgets_what_turned_stale() {
        let mut hub = clustered(8);
        let frame = |n: u8| Bytes::from(vec![n; 24]);
        let (b, c) = (Bytes::from_static(b"node-b"), Bytes::from_static(b"node-c"));
        assert_eq!(hub.bin24_cached_location(b"bob"), None);
        for (token, name, holder) in [
            (1, "bob", (b.clone(), 7, NamedProtocol::Bin24)),
            (2, "cat", (b.clone(), 7, NamedProtocol::Ccm)),
            (3, "mia", (b.clone(), 7, NamedProtocol::Matou)),
            (4, "dan", (c.clone(), 9, NamedProtocol::Web)),
            (5, "eve", (b.clone(), 6, NamedProtocol::Bin24)),
        ] {
            let name = Bytes::from_static(name.as_bytes());
            assert!(hub.address_bin24(conn(1), name, frame(token as u8), 0));
            assert!(hub.on_located(token, Some(holder), 0).is_some());
        }
        assert_eq!(hub.bin24_cached_location(b"bob"), Some((b.clone(), 7)));
        assert_eq!(hub.bin24_cached_location(b"cat"), Some((b.clone(), 7)));
        assert_eq!(hub.bin24_cached_location(b"mia"), None, "MATOU");
        assert_eq!(hub.bin24_cached_location(b"dan"), Some((c.clone(), 9)));

        // C sends a message for bob back: the entry names B, so it stays; B does: it goes,
        // and bob is located again, bypassing the cache.
        hub.take_name_ops();
        assert!(hub.bin24_bounced(b"node-c", Bytes::from_static(b"bob"), frame(1), 0));
        assert_eq!(hub.bin24_cached_location(b"bob"), Some((b.clone(), 7)));
        assert!(hub.bin24_bounced(b"node-b", Bytes::from_static(b"bob"), frame(1), 0));
        assert_eq!(hub.bin24_cached_location(b"bob"), None);
        assert_eq!(
            hub.take_name_ops(),
            [
                NameOp::Locate {
                    token: 6,
                    name: Bytes::from_static(b"bob")
                },
                NameOp::Locate {
                    token: 7,
                    name: Bytes::from_static(b"bob")
                },
            ]
        );
        // Now on C: sent there again, as located; found there, the cache has it.
        assert_eq!(
            hub.on_located(7, Some((c.clone(), 9, NamedProtocol::Bin24)), 0),
            Some(Located::Bin24Relocated {
                frame: frame(1),
                at: Some((c.clone(), 9))
            })
        );
        assert_eq!(hub.bin24_cached_location(b"bob"), Some((c.clone(), 9)));
        // Nobody holds it: BIN24's rules here, and the entry goes.
        assert_eq!(
            hub.on_located(6, None, 0),
            Some(Located::Bin24Relocated {
                frame: frame(1),
                at: None
            })
        );
        assert_eq!(hub.bin24_cached_location(b"bob"), None);

        // B's incarnation 7 is taken for dead: its names go; incarnation 6 of B and C's stay.
        hub.forget_node(b"node-b", 7);
        assert_eq!(hub.bin24_cached_location(b"cat"), None);
        assert_eq!(hub.bin24_cached_location(b"eve"), Some((b.clone(), 6)));
        assert_eq!(hub.bin24_cached_location(b"dan"), Some((c.clone(), 9)));

        // A look-up not answered in time says nothing about where the name is.
        assert!(hub.address_bin24(conn(1), Bytes::from_static(b"dan"), frame(9), 0));
        assert_eq!(hub.expire_locates(WAIT_MS).len(), 1);
        assert_eq!(hub.bin24_cached_location(b"dan"), Some((c, 9)));
        // This node holds "eve" now (a claim granted): no other node does.
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Bin24, conn(2), b"eve", 0),
            Claim::Pending
        );
        let ops = hub.take_name_ops();
        let Some(&NameOp::Claim { token, .. }) = ops.last() else {
            panic!("{ops:?}");
        };
        assert!(hub
            .on_claim_answer(token, b"eve", ClaimAnswer::Granted)
            .is_some());
        assert_eq!(hub.bin24_cached_location(b"eve"), None);
    }

    /// A signed-in web user of `hub` on `conn` (granted by the cluster).
    fn web_user(hub: &mut Hub, conn: ConnId, name: &'static [u8], token: u64) {
        assert_eq!(
            hub.claim_name_at(NamedProtocol::Web, conn, name, 0),
            Claim::Pending
        );
        hub.take_name_ops();
        assert!(hub
            .on_claim_answer(token, name, ClaimAnswer::Granted)
            .is_some());
    }

    /// WEB across nodes: a web user's `direct` to a name no user here holds is located; a
    /// CCM or web holder elsewhere gets it from its node, whose receipt (`delivered` once
    /// written, `not-delivered` when the recipient closed first) comes back as the sender's
    /// `sent` / `error`; a BIN24 holder's node gets a BIN24 frame; nobody or a MATOU user is
    /// `unknown-addressee`, as on one node.
    #[test]
    fn a_web_users_direct_to_another_node_is_located_delivered_and_its_receipt_comes_back() {
        use super::super::{RemoteDelivery, WebDirect, Written, WEB_DIRECT_KIND};
        use crate::hub::testing::RecordingHubOut;
        use crate::protocol::web::json as web;
        let (mut a, mut b) = (clustered(8), clustered(8));
        let mut out = RecordingHubOut::default();
        web_user(&mut a, conn(1), b"wes", 1);
        let text = Bytes::from_static(b"hi");
        assert_eq!(
            a.web_direct(conn(1), b"cat", &text, Some(5), 0, &mut out),
            WebDirect::Locating
        );
        assert_eq!(
            a.take_name_ops(),
            [NameOp::Locate {
                token: 2,
                name: Bytes::from_static(b"cat")
            }]
        );
        let node_b = Bytes::from_static(b"node-b");
        let Some(Located::WebSend {
            from,
            event: HubEvent::Addressed(mut addressed),
        }) = a.on_located(2, Some((node_b.clone(), 9, NamedProtocol::Ccm)), 0)
        else {
            panic!("sent to node-b");
        };
        assert_eq!(from, conn(1));
        assert_eq!(
            (
                &addressed.to_node[..],
                addressed.to_incarnation,
                &addressed.kind[..],
                &addressed.sender[..],
                addressed.request
            ),
            // Published with this node's receipt token, not the web request's id.
            (&b"node-b"[..], 9, WEB_DIRECT_KIND, &b"wes"[..], Some(1))
        );
        // The registry fills in the sending node when it publishes.
        addressed.from_node = Bytes::from_static(b"node-a");
        addressed.from_incarnation = 3;

        // node-b: cat (CCM) gets it in CCM's form; written: the receipt goes to node-a.
        assert_eq!(
            b.claim_name_at(NamedProtocol::Ccm, conn(4), b"cat", 0),
            Claim::Pending
        );
        assert!(b.on_claim_answer(1, b"cat", ClaimAnswer::Granted).is_some());
        let RemoteDelivery::Notify { to, bytes, note } = b.deliver_remote(&addressed) else {
            panic!("a delivery to cat");
        };
        assert_eq!(
            (to, bytes),
            (conn(4), render::ccm_text(b"wes", b"cat", b"hi"))
        );
        let Some(Written::Publish(HubEvent::Addressed(receipt))) = b.on_written(note, true) else {
            panic!("a receipt");
        };
        assert_eq!(
            (
                &receipt.to_node[..],
                receipt.to_incarnation,
                &receipt.recipient[..]
            ),
            (&b"node-a"[..], 3, &b"wes"[..])
        );
        assert_eq!(
            a.deliver_remote(&receipt),
            RemoteDelivery::Send {
                to: conn(1),
                bytes: web::sent(Some(5), "delivered")
            }
        );
        // The same receipt again: its message was answered, nothing more.
        assert_eq!(a.deliver_remote(&receipt), RemoteDelivery::Nothing);
        // Another message; cat closes before receiving it: `not-delivered`.
        let mut second = addressed.clone();
        second.request = Some(2);
        let RemoteDelivery::Notify { note, .. } = b.deliver_remote(&second) else {
            panic!("a delivery to cat");
        };
        let Some(Written::Publish(HubEvent::Addressed(receipt))) = b.on_written(note, false) else {
            panic!("a receipt");
        };
        assert_eq!(
            a.web_direct(conn(1), b"cat", &text, Some(6), 0, &mut out),
            WebDirect::Locating
        );
        let Some(Located::WebSend { .. }) =
            a.on_located(3, Some((node_b.clone(), 9, NamedProtocol::Ccm)), 0)
        else {
            panic!("sent to node-b");
        };
        assert_eq!(
            a.deliver_remote(&receipt),
            RemoteDelivery::Send {
                to: conn(1),
                bytes: web::error(Some(6), "not-delivered")
            }
        );
        assert_eq!(a.web_receipts_waiting(), 0);
        // A CCM user's message to a web user of this node: in WEB's form, no receipt.
        let mut from_ccm = message(b"wes", b"from cid");
        from_ccm.to_node = Bytes::from_static(b"node-a");
        assert_eq!(
            a.deliver_remote(&from_ccm),
            RemoteDelivery::Send {
                to: conn(1),
                bytes: web::direct(crate::hub::ProtocolKind::Ccm, b"cid", b"from cid")
            }
        );

        // A BIN24 holder: the frame is made here (wes's messageID 0).
        assert_eq!(
            a.web_direct(conn(1), b"bob", &text, Some(6), 0, &mut out),
            WebDirect::Locating
        );
        let Some(Located::WebToBin24 { from, message, at }) =
            a.on_located(4, Some((node_b.clone(), 9, NamedProtocol::Bin24)), 0)
        else {
            panic!("for node-b's BIN24 user");
        };
        assert_eq!((from, &at.0[..]), (conn(1), &b"node-b"[..]));
        let frame = a.web_to_remote_bin24(from, &message, 0, &mut out);
        let frame = frame.unwrap_or_else(|reason| panic!("refused: {reason}"));
        assert_eq!(
            (
                frame.src().as_bytes(),
                frame.dst().as_bytes(),
                frame.message_id()
            ),
            (&b"wes"[..], &b"bob"[..], 0)
        );
        // Nobody, a MATOU user, or no answer in time: unknown.
        for (token, holder) in [
            (5, None),
            (6, Some((node_b.clone(), 9, NamedProtocol::Matou))),
        ] {
            assert_eq!(
                a.web_direct(conn(1), b"mia", &text, Some(7), 0, &mut out),
                WebDirect::Locating
            );
            assert_eq!(
                a.on_located(token, holder, 0),
                Some(Located::WebRefused {
                    from: conn(1),
                    request: Some(7),
                    reason: "unknown-addressee"
                })
            );
        }
        // A node alone never locates.
        let mut alone = Hub::new(HubConfig::default());
        assert_eq!(
            alone.web_direct(conn(1), b"cat", &text, None, 0, &mut out),
            WebDirect::Refused {
                reason: "unknown-addressee"
            }
        );
    }

    /// `from`'s `direct` (request `id`) to `to`, a web user of the node `at`, located there at
    /// `now_ms`: what the hub makes of it.
    fn located_web_direct(
        hub: &mut Hub,
        from: ConnId,
        to: &'static [u8],
        id: u64,
        at: (&'static [u8], u64),
        now_ms: u64,
    ) -> Located {
        use super::super::WebDirect;
        let mut out = crate::hub::testing::RecordingHubOut::default();
        let text = Bytes::from_static(b"hi");
        assert_eq!(
            hub.web_direct(from, to, &text, Some(id), now_ms, &mut out),
            WebDirect::Locating
        );
        let ops = hub.take_name_ops();
        let Some(&NameOp::Locate { token, .. }) = ops.last() else {
            panic!("located: {ops:?}");
        };
        let holder = (Bytes::from_static(at.0), at.1, NamedProtocol::Web);
        hub.on_located(token, Some(holder), now_ms)
            .unwrap_or_else(|| panic!("token {token} answered"))
    }

    /// The token a located web direct was published with (its receipt echoes it).
    fn published_token(located: &Located) -> u64 {
        match located {
            Located::WebSend {
                event: HubEvent::Addressed(message),
                ..
            } => message
                .request
                .unwrap_or_else(|| panic!("no token: {message:?}")),
            other => panic!("not published: {other:?}"),
        }
    }

    /// The receipt the recipient's node publishes for the message `token` of `sender`.
    fn receipt(token: u64, sender: &'static [u8], status: &'static [u8]) -> Addressed {
        Addressed {
            to_node: Bytes::from_static(b"node-a"),
            to_incarnation: 3,
            kind: Bytes::from_static(crate::hub::WEB_RECEIPT_KIND),
            sender: Bytes::new(),
            recipient: Bytes::from_static(sender),
            encoding: Bytes::new(),
            body: Bytes::from_static(status),
            from_node: Bytes::new(),
            from_incarnation: 0,
            request: Some(token),
        }
    }

    /// Issue 21: a web user's `direct` to another node gets exactly one answer. Its receipt
    /// in time: `sent delivered`, once (the deadline then passes with nothing). No receipt:
    /// `error no-receipt` at the deadline (ack timeout + lease in the server), not a
    /// millisecond before, once; the receipt coming after that is dropped and counted.
    #[test]
    fn a_web_direct_to_another_node_is_answered_once_by_its_receipt_or_its_deadline() {
        use super::super::RemoteDelivery;
        use crate::protocol::web::json as web;
        let mut a = clustered(8);
        web_user(&mut a, conn(1), b"wes", 1);

        // No receipt: no-receipt at the deadline, once.
        let sent = located_web_direct(&mut a, conn(1), b"wil", 5, (b"node-b", 9), 10);
        let lost = published_token(&sent);
        assert_eq!(a.web_receipts_waiting(), 1);
        let deadline = 10 + RECEIPT_WAIT_MS;
        assert!(a
            .next_claim_deadline_ms()
            .is_some_and(|next| next <= deadline));
        assert_eq!(a.expire_web_receipts(deadline - 1), []);
        assert_eq!(
            a.expire_web_receipts(deadline),
            [(conn(1), web::error(Some(5), "no-receipt"))]
        );
        assert_eq!(a.expire_web_receipts(deadline + 10_000), []);
        assert_eq!(a.web_receipts_waiting(), 0);
        // Its receipt, late: nothing.
        assert_eq!(
            a.deliver_remote(&receipt(lost, b"wes", b"delivered")),
            RemoteDelivery::Nothing
        );

        // A receipt in time: sent delivered, once; its deadline then passes with nothing.
        let sent = located_web_direct(&mut a, conn(1), b"wil", 6, (b"node-b", 9), 1_000);
        let token = published_token(&sent);
        assert_ne!(token, lost);
        assert_eq!(
            a.deliver_remote(&receipt(token, b"wes", b"delivered")),
            RemoteDelivery::Send {
                to: conn(1),
                bytes: web::sent(Some(6), "delivered")
            }
        );
        assert_eq!(
            a.deliver_remote(&receipt(token, b"wes", b"delivered")),
            RemoteDelivery::Nothing
        );
        assert_eq!(a.expire_web_receipts(1_000 + RECEIPT_WAIT_MS), []);
        // A receipt naming another sender than its token's (forged, or a bug): no answer.
        let sent = located_web_direct(&mut a, conn(1), b"wil", 7, (b"node-b", 9), 2_000);
        let token = published_token(&sent);
        assert_eq!(
            a.deliver_remote(&receipt(token, b"eve", b"delivered")),
            RemoteDelivery::Nothing
        );
        assert_eq!(
            a.expire_web_receipts(2_000 + RECEIPT_WAIT_MS),
            [(conn(1), web::error(Some(7), "no-receipt"))]
        );

        let counts = a.claim_counts().unwrap_or_default().web_receipts;
        assert_eq!(
            counts,
            crate::hub::ReceiptCounts {
                awaited: 3,
                answered: 1,
                expired: 2,
                lapsed: 0,
                late: 3,
                refused: 0,
            }
        );
    }

    /// Messages awaiting a receipt are bounded per sender (2 here) and per node (3): one more
    /// is `busy`, not published, and counted; an answer frees its place.
    #[test]
    fn web_directs_awaiting_a_receipt_are_bounded_per_sender_and_per_node() {
        use super::super::RemoteDelivery;
        let mut a = clustered(8);
        web_user(&mut a, conn(1), b"wes", 1);
        web_user(&mut a, conn(2), b"wil", 2);
        let busy = |request| Located::WebRefused {
            from: conn(1),
            request: Some(request),
            reason: "busy",
        };
        let first = located_web_direct(&mut a, conn(1), b"cat", 1, (b"node-b", 9), 0);
        let first = published_token(&first);
        published_token(&located_web_direct(
            &mut a,
            conn(1),
            b"cat",
            2,
            (b"node-b", 9),
            0,
        ));
        assert_eq!(
            located_web_direct(&mut a, conn(1), b"cat", 3, (b"node-b", 9), 0),
            busy(3)
        );
        // Another sender: the node's third place, then the node is full.
        published_token(&located_web_direct(
            &mut a,
            conn(2),
            b"cat",
            1,
            (b"node-b", 9),
            0,
        ));
        assert_eq!(
            located_web_direct(&mut a, conn(2), b"cat", 2, (b"node-b", 9), 0),
            Located::WebRefused {
                from: conn(2),
                request: Some(2),
                reason: "busy",
            }
        );
        assert_eq!(a.web_receipts_waiting(), 3);
        // A receipt frees wes's first place.
        assert!(matches!(
            a.deliver_remote(&receipt(first, b"wes", b"delivered")),
            RemoteDelivery::Send { .. }
        ));
        published_token(&located_web_direct(
            &mut a,
            conn(1),
            b"cat",
            4,
            (b"node-b", 9),
            0,
        ));
        assert_eq!(a.web_receipts_waiting(), 3);
        assert_eq!(a.claim_counts().unwrap_or_default().web_receipts.refused, 2);
    }

    /// The recipient's node taken for dead while receipts are awaited: its messages are
    /// answered `no-receipt` at once, in the order sent, and not again at their deadline;
    /// another node's, or another incarnation's, wait on. A sender gone meanwhile is not
    /// answered at all.
    #[test]
    fn a_web_direct_to_a_node_taken_for_dead_is_answered_no_receipt_at_once() {
        use super::super::RemoteDelivery;
        use crate::protocol::web::json as web;
        let mut a = clustered(8);
        web_user(&mut a, conn(1), b"wes", 1);
        web_user(&mut a, conn(2), b"wil", 2);
        located_web_direct(&mut a, conn(1), b"bea", 1, (b"node-b", 9), 0);
        let to_c = located_web_direct(&mut a, conn(1), b"cyd", 2, (b"node-c", 4), 1);
        located_web_direct(&mut a, conn(2), b"bea", 3, (b"node-b", 9), 2);
        a.release_name(conn(2));
        assert_eq!(a.forget_node(b"node-b", 8), []);
        assert_eq!(a.forget_node(b"node-c", 9), []);
        assert_eq!(
            a.forget_node(b"node-b", 9),
            [(conn(1), web::error(Some(1), "no-receipt"))]
        );
        assert_eq!(a.web_receipts_waiting(), 1);
        assert_eq!(
            a.deliver_remote(&receipt(published_token(&to_c), b"wes", b"delivered")),
            RemoteDelivery::Send {
                to: conn(1),
                bytes: web::sent(Some(2), "delivered")
            }
        );
        assert_eq!(a.expire_web_receipts(10_000), []);
        let counts = a.claim_counts().unwrap_or_default().web_receipts;
        assert_eq!((counts.lapsed, counts.answered, counts.expired), (2, 1, 0));
    }

    /// The recipient gone from its node by the time the message comes (left since the
    /// look-up, or its name now a MATOU user's): that node answers `not-delivered` at once,
    /// and the sender hears it, rather than `no-receipt` at the deadline.
    #[test]
    fn a_web_direct_for_a_user_gone_from_its_node_is_answered_not_delivered_at_once() {
        use super::super::RemoteDelivery;
        use crate::protocol::web::json as web;
        let (mut a, mut b) = (clustered(8), clustered(8));
        web_user(&mut a, conn(1), b"wes", 1);
        assert_eq!(
            b.claim_name_at(NamedProtocol::Matou, conn(4), b"mia", 0),
            Claim::Pending
        );
        assert!(b.on_claim_answer(1, b"mia", ClaimAnswer::Granted).is_some());
        for (id, to) in [(1, &b"cat"[..]), (2, b"mia")] {
            let to = Bytes::copy_from_slice(to);
            let sent = located_web_direct(&mut a, conn(1), b"wil", id, (b"node-b", 9), 0);
            let Located::WebSend {
                event: HubEvent::Addressed(mut message),
                ..
            } = sent
            else {
                panic!("not published: {sent:?}");
            };
            message.recipient = to;
            message.from_node = Bytes::from_static(b"node-a");
            message.from_incarnation = 3;
            let RemoteDelivery::Publish(HubEvent::Addressed(receipt)) = b.deliver_remote(&message)
            else {
                panic!("a receipt at once");
            };
            assert_eq!(
                (
                    &receipt.to_node[..],
                    receipt.to_incarnation,
                    &receipt.body[..]
                ),
                (&b"node-a"[..], 3, &b"not-delivered"[..])
            );
            assert_eq!(
                a.deliver_remote(&receipt),
                RemoteDelivery::Send {
                    to: conn(1),
                    bytes: web::error(Some(id), "not-delivered")
                }
            );
        }
        assert_eq!(a.web_receipts_waiting(), 0);
    }
}
