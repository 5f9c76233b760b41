//! The hub (the switchboard): one lobby and one name space across the protocols.
//!
//! Contract section "SWITCHBOARD". The services translate their wire into the hub's vocabulary
//! ([`event`]: a user, a lobby message, presence, a direct message) and the hub answers with
//! deliveries already written in each recipient's wire form ([`render`]), one `Bytes` per form
//! shared by every recipient of that form. It never sees a socket or a clock, and no service
//! sees another: a service asks the hub, the hub answers through [`HubOut`] or a return value.
//!
//! The registry owns the hub and the services reach it through `Outbox::hub` during their
//! calls (`protocol::switch`). `--isolate` builds it with [`HubConfig::isolated`], where it is
//! inert and no service is handed it.

pub mod claims;
pub mod event;
pub mod receipts;
pub mod render;
pub mod testing;

use std::collections::HashMap;

use bytes::Bytes;

pub use claims::{ClaimAnswer, ClaimConfig, ClaimCounts, ClaimDecided, Decision, Located, NameOp};
pub use event::{
    Addressed, Bin24Relay, Bin24Step, DirectMessage, Endpoint, HubEvent, LobbyMessage,
    NamedProtocol, OcmMemberId, OcmRoomEvent, OcmStep, Presence, PresenceKind, PrivateLink,
    PrivateStep, ProtocolKind, User, WEB_DIRECT_KIND, WEB_RECEIPT_KIND,
};
pub use receipts::{ReceiptConfig, ReceiptCounts, WEB_RECEIPTS_MAX, WEB_RECEIPTS_PER_SENDER_MAX};
pub use render::FormLimits;

use crate::chat::ConnId;
use crate::limits::{RateLimit, SenderBudget};
use crate::protocol::bin24::codec::{self as bin24, Frame, Name};
use crate::protocol::ccm::codec::MessageType;
use crate::protocol::ccm::Reason;
use crate::protocol::matou::codec as matou;
use crate::protocol::web::json as web;
use receipts::Unanswered;

#[derive(Clone, Debug)]
pub struct HubConfig {
    /// `--isolate`: the protocols stay apart exactly as their own sections say. Every claim is
    /// granted (each service's own rules still apply), nothing crosses, nothing is counted.
    pub isolated: bool,
    /// `--lobby-ocm-room`: the OCM room whose members are in the lobby.
    pub ocm_lobby_room: String,
    pub limits: FormLimits,
    /// `--cluster`: other nodes are lobby members too, so every lobby event is made and
    /// reported ([`HubOut::event`]) even when no local member of another protocol hears it.
    pub clustered: bool,
    /// `--cluster`: names are unique across the nodes, so a claim waits for Redis's answer
    /// ([`Claim::Pending`]); `None`: claims are decided at once from this node's table.
    pub name_claims: Option<ClaimConfig>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            clustered: false,
            name_claims: None,
            isolated: false,
            ocm_lobby_room: "lobby".to_string(),
            limits: FormLimits::default(),
        }
    }
}

/// Where the hub's lobby deliveries go. The server's is `protocol::HubQueue`, drained after
/// each service call: to a connection through the reactor's `Outbox`, to an OCM member through
/// the OCM service (which knows its address); tests record ([`testing::RecordingHubOut`]).
pub trait HubOut {
    /// Queue `bytes` for `to`, a lobby member of `protocol`. A fan-out passes clones of one
    /// `Bytes` per wire form (a reference count, not a copy).
    fn deliver(&mut self, protocol: ProtocolKind, to: Endpoint, bytes: Bytes);

    /// Every event the hub acted on, as plain data: what a cluster will publish to the other
    /// nodes. Nothing by default.
    fn event(&mut self, _event: &HubEvent) {}
}

/// Why a name claim was refused: it is held in another protocol (or, for CCM and MATOU, by
/// another connection of the same one, which their services refuse before asking).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub newcomer: NamedProtocol,
    pub holder: NamedProtocol,
}

impl Refusal {
    /// The refusal in the newcomer's own way (rule 1): CCM's `Error` with `Reason: name-taken`
    /// and MATOU's CONNECT_RESPONSE 0, after which the connection stays open for another try;
    /// `None` for BIN24, which has no refusal frame: close the connection.
    pub fn answer(&self) -> Option<Bytes> {
        match self.newcomer {
            NamedProtocol::Ccm => Some(render::ccm_error(Reason::NameTaken, "that name is in use")),
            NamedProtocol::Matou => Some(matou::connect_response(false)),
            NamedProtocol::Web => Some(web::refused("name-taken")),
            NamedProtocol::Bin24 => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The connection holds the name now (a BIN24 newcomer may have replaced a BIN24 holder,
    /// which BIN24's service decides and carries out itself).
    Granted,
    Refused(Refusal),
    /// In a cluster: the name is reserved on this node (a second local claim is refused at
    /// once) and waits for the other nodes' answer, which comes to the connection's service
    /// as a [`ClaimDecided`]. Hold the connection's further input until then.
    Pending,
    /// In a cluster: refused at once because the cluster cannot confirm the name now (too
    /// many claims waiting); answer with [`claims::unconfirmed_answer`].
    Unconfirmed,
}

impl Claim {
    /// The refusal to send for a refused or unconfirmed claim of `newcomer` (`Some(None)`:
    /// BIN24, close); `None` when granted or pending.
    pub fn refusal(&self, newcomer: NamedProtocol) -> Option<Option<Bytes>> {
        match self {
            Claim::Granted | Claim::Pending => None,
            Claim::Refused(refusal) => Some(refusal.answer()),
            Claim::Unconfirmed => Some(claims::unconfirmed_answer(newcomer)),
        }
    }
}

/// What becomes of a CCM `Text` or `Raw` to a named addressee (rule 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CcmDirect {
    /// Not the hub's: CCM's own rules apply (a CCM addressee, or `unknown-addressee`).
    NotCrossing,
    /// The addressee is an online BIN24 user: BIN24's service forwards `frame` (type 0) to
    /// `to` and keeps its answer timer, as for a frame from a BIN24 sender: an answer ends the
    /// exchange, a timeout closes the recipient and stores the frame (BIN24 rule 6).
    ToBin24 {
        to: ConnId,
        frame: Frame,
        message: DirectMessage,
    },
    /// BIN24 cannot carry it: answer the CCM sender with `error` (`too-large`); the connection
    /// stays open.
    Refused { error: Bytes },
    /// The addressee is a web user: queue `bytes` (its `direct`) to `to`. CCM's sender is
    /// told nothing, as for a CCM addressee.
    ToWeb {
        to: ConnId,
        bytes: Bytes,
        message: DirectMessage,
    },
}

/// What becomes of a web user's `direct` (WEB, and SWITCHBOARD rule 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebDirect {
    /// A web or CCM user holds the name: queue `bytes` to `to` with `send_notify(to, bytes,
    /// note.0)` and report the outcome to [`Hub::on_written`] (also when `send_notify`
    /// refuses); the sender hears `sent delivered` or `error not-delivered` then.
    ToConn {
        to: ConnId,
        bytes: Bytes,
        note: WrittenNote,
    },
    /// A BIN24 user holds the name: BIN24's service forwards `frame` (type 0) to `to` and
    /// keeps its answer timer, as for a CCM sender's message.
    ToBin24 { to: ConnId, frame: Frame },
    /// Refused: answer the sender with `error`, whose reason says why (`unknown-addressee`,
    /// `too-large`, `rate-limited`).
    Refused { reason: &'static str },
    /// In a cluster, no user of this node holds the name: the cluster is asked which node
    /// does ([`Located`]); the sender's further input waits until then.
    Locating,
}

/// What another node's [`Addressed`] comes to on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteDelivery {
    /// Not for a user here (gone meanwhile, or another protocol's name now).
    Nothing,
    /// Send `bytes` to `to` (a CCM sender's message: no receipt; a receipt for a web user).
    Send { to: ConnId, bytes: Bytes },
    /// A web user's `direct`: queue `bytes` to `to` with `send_notify(to, bytes, note.0)` and
    /// report the outcome to [`Hub::on_written`] (also when `send_notify` refuses): its
    /// receipt is published for the sender's node then ([`Written::Publish`]).
    Notify {
        to: ConnId,
        bytes: Bytes,
        note: WrittenNote,
    },
    /// Another node's web user's `direct` for a name no CCM or web user holds here now:
    /// publish this receipt (`not-delivered`) for the sender's node at once, rather than
    /// leave its sender to the deadline's `no-receipt`.
    Publish(HubEvent),
}

/// Identifies a BIN24-to-CCM delivery whose writing the hub waits for: the note of the
/// reactor's `send_notify`, handed back to [`Hub::on_written`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WrittenNote(pub u64);

/// What becomes of a BIN24 type-0 frame (rule 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bin24Direct {
    /// DST is not an online CCM user: BIN24's own rules (a live BIN24 user, else the store).
    NotCrossing,
    /// DST is an online CCM user: queue `bytes` to `to` with `send_notify(to, bytes,
    /// note.0)`, and report the outcome to [`Hub::on_written`] (also when `send_notify`
    /// refuses: report it unwritten at once).
    ToCcm {
        to: ConnId,
        bytes: Bytes,
        note: WrittenNote,
        message: DirectMessage,
    },
}

/// What a reported [`WrittenNote`] comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// A web user's direct message was written (or not): send `bytes` (its `sent` or
    /// `error`) to `to`, the sender's connection, if it is still there.
    Reply { to: ConnId, bytes: Bytes },
    /// Another node's web user's direct message was written (or not): publish this receipt
    /// ([`WEB_RECEIPT_KIND`]) for its node.
    Publish(HubEvent),
    /// The CCM recipient was written to: BIN24's service sends `answer` ("200": type 1, same
    /// messageID, SRC = the CCM user, DST = the sender) to `sender` wherever it is connected
    /// now, as it sends its own answers.
    /// `origin`: the sender is on that node (and incarnation): the answer is published there.
    Answered {
        sender: Name,
        answer: Bytes,
        origin: Option<(Bytes, u64)>,
    },
    /// The CCM recipient closed before the bytes were written: BIN24's rules for an offline
    /// DST, so nothing is lost: BIN24's service stores `frame` for `recipient` (as type 2) and
    /// answers "300" once it is durable.
    Unwritten {
        recipient: Name,
        sender: Name,
        message_id: u32,
        frame: Frame,
        origin: Option<(Bytes, u64)>,
    },
}

/// Cross-protocol traffic by origin and destination protocol (rule 5), `[origin][destination]`
/// by [`ProtocolKind::index`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Lobby and direct messages handed to a recipient (one per recipient).
    pub messages: [[u64; ProtocolKind::COUNT]; ProtocolKind::COUNT],
    /// Presence notices handed to a recipient.
    pub notices: [[u64; ProtocolKind::COUNT]; ProtocolKind::COUNT],
    /// Messages and notices not delivered because the recipient's protocol cannot carry them
    /// (sizes, encodings) or a sending limit refused them (the sender's own budget, or the
    /// recipient protocol's), one per recipient; refused direct messages, one each.
    pub over_limit: [[u64; ProtocolKind::COUNT]; ProtocolKind::COUNT],
}

impl Counts {
    pub fn messages(&self, from: ProtocolKind, to: ProtocolKind) -> u64 {
        self.messages[from.index()][to.index()]
    }

    pub fn notices(&self, from: ProtocolKind, to: ProtocolKind) -> u64 {
        self.notices[from.index()][to.index()]
    }

    pub fn over_limit(&self, from: ProtocolKind, to: ProtocolKind) -> u64 {
        self.over_limit[from.index()][to.index()]
    }
}

/// A lobby message rendered for the other protocols' lobby members and not sent yet
/// ([`Hub::price`]).
#[derive(Debug)]
pub struct Priced {
    message: LobbyMessage,
    /// Per recipient protocol, by [`ProtocolKind::index`].
    forms: [Form; ProtocolKind::COUNT],
}

/// One recipient protocol's rendering of a priced message.
#[derive(Debug, Default)]
struct Form {
    /// Lobby members of that protocol when it was priced.
    recipients: u64,
    /// `None`: the protocol cannot carry it (rule 5).
    bytes: Option<Bytes>,
}

/// What a lobby message makes the other protocols' members receive: what its sender is
/// charged for the crossing, in its own protocol's unit (CCM bytes, OCM sends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crossing {
    /// Recipients of forms their protocol can carry (one per lobby member).
    pub recipients: u64,
    /// The bytes those recipients receive in all.
    pub bytes: u64,
}

impl Priced {
    pub fn message(&self) -> &LobbyMessage {
        &self.message
    }

    /// What sending it would cost.
    pub fn crossing(&self) -> Crossing {
        self.forms
            .iter()
            .filter_map(|form| {
                let bytes = form.bytes.as_ref()?;
                Some(Crossing {
                    recipients: form.recipients,
                    bytes: form.recipients.saturating_mul(bytes.len() as u64),
                })
            })
            .fold(Crossing::default(), |sum, form| Crossing {
                recipients: sum.recipients + form.recipients,
                bytes: sum.bytes.saturating_add(form.bytes),
            })
    }
}

/// Who holds a name.
#[derive(Clone, Copy, Debug)]
struct Holder {
    protocol: NamedProtocol,
    conn: ConnId,
    /// In a cluster, while the other nodes have not answered: the claim's token.
    claim: Option<u64>,
}

/// The name a connection holds.
#[derive(Debug)]
struct Held {
    name: Bytes,
    protocol: NamedProtocol,
    /// The messageID of this CCM user's next message to a BIN24 user.
    next_message_id: u32,
    /// What this CCM user's messages may make BIN24 users receive, by BIN24's own sending
    /// limits; set at its first message to one.
    bin24_sending: Option<SenderBudget<Name>>,
}

/// A lobby member.
#[derive(Debug)]
struct Seat {
    protocol: ProtocolKind,
    name: Bytes,
    /// Its place in `Lobby::members[protocol]`.
    index: usize,
}

#[derive(Debug, Default)]
struct Lobby {
    /// Members per protocol, for fan-out without walking a hash map; swap-removed.
    members: [Vec<Endpoint>; ProtocolKind::COUNT],
    seats: HashMap<Endpoint, Seat>,
}

/// A direct message delivered to a connection, waiting for its bytes to be written.
#[derive(Debug)]
enum AwaitingWrite {
    /// A BIN24 frame to a CCM or web user.
    Bin24 {
        sender: Name,
        recipient: Name,
        frame: Frame,
        /// The sender's node, when another node's BIN24 user sent it (the answer goes back).
        origin: Option<(Bytes, u64)>,
    },
    /// A web user's message (on `sender`) to a web or CCM user; `id` the request's.
    Web { sender: ConnId, id: Option<u64> },
    /// Another node's web user's message (`sender`, request `id`) to a web or CCM user here:
    /// the receipt goes back to `node` (and incarnation).
    RemoteWeb {
        sender: Bytes,
        id: Option<u64>,
        node: Bytes,
        incarnation: u64,
    },
}

pub struct Hub {
    config: HubConfig,
    names: HashMap<Bytes, Holder>,
    held: HashMap<ConnId, Held>,
    lobby: Lobby,
    awaiting_write: HashMap<WrittenNote, AwaitingWrite>,
    next_note: u64,
    /// Web users' messages to BIN24 users waiting for BIN24's answer ("200", "300", ...):
    /// the request's id, by the web sender's name and the frame's messageID.
    web_to_bin24: HashMap<(Bytes, u32), Option<u64>>,
    counts: Counts,
    /// In a cluster: claims waiting for Redis, and what to send it.
    claims: Option<claims::Claims>,
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Hub {
            names: HashMap::new(),
            held: HashMap::new(),
            lobby: Lobby::default(),
            awaiting_write: HashMap::new(),
            next_note: 0,
            web_to_bin24: HashMap::new(),
            counts: Counts::default(),
            claims: config.name_claims.map(claims::Claims::new),
            config,
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn is_isolated(&self) -> bool {
        self.config.isolated
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Names held, across BIN24, CCM and MATOU.
    pub fn names_held(&self) -> usize {
        self.names.len()
    }

    /// Lobby members of `protocol`.
    pub fn lobby_count(&self, protocol: ProtocolKind) -> usize {
        self.lobby.members[protocol.index()].len()
    }

    /// BIN24-to-CCM deliveries whose writing has not been reported yet.
    pub fn awaiting_write_count(&self) -> usize {
        self.awaiting_write.len()
    }

    /// Whether a lobby message from `origin` would reach anyone: the lobby has members in
    /// another protocol. The check a service makes before building a [`LobbyMessage`], so
    /// that a protocol used alone pays nothing more for the switchboard.
    #[inline]
    pub fn has_audience_besides(&self, origin: ProtocolKind) -> bool {
        !self.config.isolated
            && (self.config.clustered
                || self
                    .lobby
                    .members
                    .iter()
                    .enumerate()
                    .any(|(at, members)| at != origin.index() && !members.is_empty()))
    }

    /// Whether `room` is the OCM room whose members are in the lobby.
    pub fn is_ocm_lobby_room(&self, room: &[u8]) -> bool {
        room == self.config.ocm_lobby_room.as_bytes()
    }

    // ---- rule 1: one name space ----

    /// `conn`, of `protocol`, asks to hold `name` (compared as bytes). Call it after the
    /// service's own rules accepted the name, before acting on it; on `Refused`, answer with
    /// [`Refusal::answer`] (or close, for BIN24). A connection holds one name: claiming
    /// another releases the first. For a node alone; in a cluster use
    /// [`Hub::claim_name_at`], which may answer [`Claim::Pending`].
    pub fn claim_name(&mut self, protocol: NamedProtocol, conn: ConnId, name: &[u8]) -> Claim {
        self.claim_name_at(protocol, conn, name, 0)
    }

    /// [`Hub::claim_name`] at `now_ms`. In a cluster a name this node does not hold yet is
    /// reserved and asked of the other nodes: [`Claim::Pending`], decided later through a
    /// [`ClaimDecided`] ([`Hub::on_claim_answer`], [`Hub::expire_claims`]).
    pub fn claim_name_at(
        &mut self,
        protocol: NamedProtocol,
        conn: ConnId,
        name: &[u8],
        now_ms: u64,
    ) -> Claim {
        if self.config.isolated {
            return Claim::Granted;
        }
        // BIN24 replacing BIN24: this node holds the name already, nothing to ask.
        let mut replacing = false;
        match self.names.get(name).copied() {
            Some(holder) if holder.conn == conn => {
                return match holder.claim {
                    Some(_) => Claim::Pending,
                    None => Claim::Granted,
                }
            }
            Some(holder)
                if holder.protocol == NamedProtocol::Bin24
                    && protocol == NamedProtocol::Bin24
                    && holder.claim.is_none() =>
            {
                // BIN24's own rule, between BIN24 connections only: the newer login replaces
                // the older, which BIN24's service closes. In a cluster this node holds the
                // name already: nothing to ask.
                self.held.remove(&holder.conn);
                replacing = true;
            }
            // Held, or claimed and waiting (even by BIN24: a newer BIN24 login replaces only
            // a holder, not a claim still in doubt).
            Some(holder) => {
                return Claim::Refused(Refusal {
                    newcomer: protocol,
                    holder: holder.protocol,
                })
            }
            None => {}
        }
        self.release_name(conn);
        if !replacing && self.claims.as_ref().is_some_and(claims::Claims::is_full) {
            if let Some(claims) = self.claims.as_mut() {
                claims.counts.unconfirmed += 1;
            }
            return Claim::Unconfirmed;
        }
        // A copy, so that a name held for a whole session does not pin the read buffer it
        // arrived in.
        let name = Bytes::copy_from_slice(name);
        let (claim, answer) = match self.claims.as_mut().filter(|_| !replacing) {
            Some(claims) => (
                Some(claims.ask(name.clone(), protocol, now_ms)),
                Claim::Pending,
            ),
            None => (None, Claim::Granted),
        };
        self.names.insert(
            name.clone(),
            Holder {
                protocol,
                conn,
                claim,
            },
        );
        self.held.insert(
            conn,
            Held {
                name,
                protocol,
                next_message_id: 0,
                bin24_sending: None,
            },
        );
        answer
    }

    /// `conn` no longer holds its name (it left, signed out, was closed or replaced). Returns
    /// the name it held, if it still held one. In a cluster the other nodes are told (after
    /// its claim, if that is still on its way).
    pub fn release_name(&mut self, conn: ConnId) -> Option<Bytes> {
        let held = self.held.remove(&conn)?;
        if let Some(holder) = self
            .names
            .get(&held.name)
            .copied()
            .filter(|holder| holder.conn == conn)
        {
            self.names.remove(&held.name);
            if let Some(claims) = self.claims.as_mut() {
                if holder.claim.is_some() {
                    claims.waiting -= 1;
                }
                claims.ops.push(NameOp::Release {
                    name: held.name.clone(),
                });
            }
        }
        Some(held.name)
    }

    /// Who holds `name`, if anyone (a claim still waiting for the cluster holds nothing yet).
    pub fn holder(&self, name: &[u8]) -> Option<(NamedProtocol, ConnId)> {
        self.names
            .get(name)
            .filter(|holder| holder.claim.is_none())
            .map(|holder| (holder.protocol, holder.conn))
    }

    // ---- rule 1 across a cluster ----

    /// What to send the cluster's names thread, in order; empty for a node alone.
    pub fn take_name_ops(&mut self) -> Vec<NameOp> {
        self.claims
            .as_mut()
            .map(|claims| std::mem::take(&mut claims.ops))
            .unwrap_or_default()
    }

    pub fn has_name_ops(&self) -> bool {
        self.claims
            .as_ref()
            .is_some_and(|claims| !claims.ops.is_empty())
    }

    /// Claims waiting for the cluster now.
    pub fn claims_waiting(&self) -> usize {
        self.claims.as_ref().map_or(0, |claims| claims.waiting)
    }

    pub fn claim_counts(&self) -> Option<ClaimCounts> {
        self.claims.as_ref().map(|claims| ClaimCounts {
            web_receipts: claims.receipts.counts,
            ..claims.counts
        })
    }

    /// The cluster answered the claim `token` of `name`. The connection that waits for it (if
    /// it still does) is decided; a late answer for a connection gone is nothing more (its
    /// release followed its claim to Redis).
    pub fn on_claim_answer(
        &mut self,
        token: u64,
        name: &[u8],
        answer: ClaimAnswer,
    ) -> Option<ClaimDecided> {
        let holder = self
            .names
            .get(name)
            .copied()
            .filter(|holder| holder.claim == Some(token))?;
        let claims = self.claims.as_mut()?;
        claims.waiting -= 1;
        let decision = match answer {
            ClaimAnswer::Granted => {
                claims.counts.granted += 1;
                claims.forget_name(name);
                if let Some(holder) = self.names.get_mut(name) {
                    holder.claim = None;
                }
                Decision::Granted
            }
            ClaimAnswer::Taken => {
                claims.counts.taken += 1;
                let answer = Refusal {
                    newcomer: holder.protocol,
                    // Held on another node, in a protocol this node does not know; the
                    // answer depends only on the newcomer's.
                    holder: holder.protocol,
                }
                .answer();
                self.names.remove(name);
                self.held.remove(&holder.conn);
                Decision::Refused { answer }
            }
            ClaimAnswer::Unavailable => {
                claims.counts.unconfirmed += 1;
                // The claim may have reached Redis after all (a reply lost, a deadline passed):
                // released after it, in order.
                claims.ops.push(NameOp::Release {
                    name: Bytes::copy_from_slice(name),
                });
                self.names.remove(name);
                self.held.remove(&holder.conn);
                Decision::Refused {
                    answer: claims::unconfirmed_answer(holder.protocol),
                }
            }
        };
        Some(ClaimDecided {
            protocol: holder.protocol,
            conn: holder.conn,
            decision,
        })
    }

    /// Claims not answered by `now_ms` are refused as unconfirmed, each once; the name is
    /// released too, in case the claim still lands in Redis.
    pub fn expire_claims(&mut self, now_ms: u64) -> Vec<ClaimDecided> {
        let mut decided = Vec::new();
        loop {
            let Some((token, name)) = self.claims.as_mut().and_then(|c| c.pop_due(now_ms)) else {
                return decided;
            };
            let waiting = self
                .names
                .get(&name)
                .is_some_and(|holder| holder.claim == Some(token));
            if !waiting {
                continue;
            }
            decided.extend(self.on_claim_answer(token, &name, ClaimAnswer::Unavailable));
        }
    }

    /// The earliest deadline of a claim, of a message being located or of a web user's
    /// message awaiting its receipt, if any.
    pub fn next_claim_deadline_ms(&self) -> Option<u64> {
        let claims = self.claims.as_ref()?;
        claims
            .next_deadline_ms()
            .into_iter()
            .chain(claims.next_locate_deadline_ms())
            .chain(claims.receipts.next_deadline_ms())
            .min()
    }

    /// In a cluster: whether a name this node does not hold may be held by another node.
    pub fn spans_nodes(&self) -> bool {
        self.claims.is_some()
    }

    /// A CCM message from `from` to a name no user of this node holds: ask which node holds
    /// it ([`NameOp::Locate`]); the answer comes to [`Hub::on_located`]. False for a node
    /// alone, or when too many messages wait already (answer `unknown-addressee` then).
    pub fn address_remote(&mut self, from: ConnId, message: Addressed, now_ms: u64) -> bool {
        self.claims
            .as_mut()
            .is_some_and(|claims| claims.locate(from, message, now_ms))
    }

    /// A MATOU private request from `from` to a name no user of this node holds: ask which
    /// node holds it; false for a node alone or too many waiting.
    pub fn address_private(&mut self, from: ConnId, link: PrivateLink, now_ms: u64) -> bool {
        self.claims
            .as_mut()
            .is_some_and(|claims| claims.locate_private(from, link, now_ms))
    }

    /// A BIN24 message (`frame`) from `from` to `recipient`, a name no user of this node
    /// holds: ask which node holds it; false for a node alone or too many waiting (BIN24's
    /// rules for a recipient not online apply then).
    pub fn address_bin24(
        &mut self,
        from: ConnId,
        recipient: Bytes,
        frame: Bytes,
        now_ms: u64,
    ) -> bool {
        self.claims
            .as_mut()
            .is_some_and(|claims| claims.locate_bin24(from, recipient, frame, now_ms))
    }

    /// Where, as far as this node's location cache says, another node's user that takes
    /// BIN24 messages holds `name` (no look-up; the entry may be stale: that node then sends
    /// the message back, [`Hub::bin24_bounced`]). `None` for a node alone or a name not known.
    pub fn bin24_cached_location(&self, name: &[u8]) -> Option<(Bytes, u64)> {
        self.claims.as_ref()?.cached_bin24_location(name)
    }

    /// [`Hub::bin24_cached_location`] for a message about to be sent: counted as a hit, or a
    /// miss (the message is located in Redis then), for the admin port.
    pub fn bin24_route_by_cache(&mut self, name: &[u8]) -> Option<(Bytes, u64)> {
        let claims = self.claims.as_mut()?;
        let cached = claims.cached_bin24_location(name);
        if cached.is_some() {
            claims.counts.location_hits += 1;
        } else {
            claims.counts.location_misses += 1;
        }
        cached
    }

    /// `node`, which the cache named for `recipient`, does not hold it and sent the message
    /// `frame` back: the entry goes and `recipient` is located again, the answer coming as
    /// [`Located::Bin24Relocated`]. False when it cannot be asked (too many waiting): BIN24's
    /// rules for a recipient not online apply then.
    pub fn bin24_bounced(
        &mut self,
        node: &[u8],
        recipient: Bytes,
        frame: Bytes,
        now_ms: u64,
    ) -> bool {
        self.claims.as_mut().is_some_and(|claims| {
            claims.counts.location_bounces += 1;
            claims.forget_location(&recipient, node);
            claims.locate_bounced(recipient, frame, now_ms)
        })
    }

    /// `node` (this incarnation) is taken for dead: the location cache forgets its names, and
    /// web users' messages to its users that await their receipt are answered at once
    /// (`no-receipt`): send each `bytes` to its connection.
    pub fn forget_node(&mut self, node: &[u8], incarnation: u64) -> Vec<(ConnId, Bytes)> {
        let Some(claims) = self.claims.as_mut() else {
            return Vec::new();
        };
        claims.forget_node(node, incarnation);
        let lapsed = claims.receipts.node_lapsed(node, incarnation);
        self.no_receipt(lapsed)
    }

    /// The cluster answered, at `now_ms`, where the addressee of the message `token` is:
    /// another node (`holder`: its name and incarnation), or nowhere. A web user's message to
    /// be published there ([`Located::WebSend`]) awaits its receipt from now on (or is refused
    /// `busy`).
    pub fn on_located(
        &mut self,
        token: u64,
        holder: Option<claims::Holder>,
        now_ms: u64,
    ) -> Option<Located> {
        let claims = self.claims.as_mut()?;
        let located = claims.located(token, holder)?;
        let Located::WebSend {
            from,
            event: HubEvent::Addressed(mut message),
        } = located
        else {
            return Some(located);
        };
        let request = message.request;
        let sent = Unanswered {
            sender: from,
            name: message.sender.clone(),
            request,
        };
        let node = message.to_node.clone();
        Some(
            match claims
                .receipts
                .admit(sent, node, message.to_incarnation, now_ms)
            {
                Some(receipt_token) => {
                    // The recipient's node echoes it in the receipt.
                    message.request = Some(receipt_token);
                    Located::WebSend {
                        from,
                        event: HubEvent::Addressed(message),
                    }
                }
                None => Located::WebRefused {
                    from,
                    request,
                    reason: "busy",
                },
            },
        )
    }

    /// Web users' messages to another node that got no receipt by `now_ms` are answered
    /// `no-receipt`: send each `bytes` to its connection.
    pub fn expire_web_receipts(&mut self, now_ms: u64) -> Vec<(ConnId, Bytes)> {
        let Some(claims) = self.claims.as_mut() else {
            return Vec::new();
        };
        let due = claims.receipts.expire(now_ms);
        self.no_receipt(due)
    }

    /// Web users' messages to another node awaiting their receipt now.
    pub fn web_receipts_waiting(&self) -> usize {
        self.claims
            .as_ref()
            .map_or(0, |claims| claims.receipts.len())
    }

    /// `no-receipt` for each message whose sender's connection still holds its name.
    fn no_receipt(&self, unanswered: Vec<Unanswered>) -> Vec<(ConnId, Bytes)> {
        unanswered
            .into_iter()
            .filter_map(|message| {
                let to = self.web_sender(&message)?;
                Some((to, web::error(message.request, "no-receipt")))
            })
            .collect()
    }

    /// The connection of a web message's sender, if it still holds the name it sent with.
    fn web_sender(&self, message: &Unanswered) -> Option<ConnId> {
        self.held
            .get(&message.sender)
            .filter(|held| held.protocol == NamedProtocol::Web && held.name == message.name)
            .map(|_| message.sender)
    }

    /// Messages whose addressee was not located by `now_ms`.
    pub fn expire_locates(&mut self, now_ms: u64) -> Vec<Located> {
        self.claims
            .as_mut()
            .map(|claims| claims.expire_locates(now_ms))
            .unwrap_or_default()
    }

    /// Another node holds `name` now, which this node held (its key lapsed while this node
    /// was cut off from Redis, and another node took it): the connection that holds it here,
    /// to be closed. Redis's holder wins: other nodes have already acted on it.
    pub fn on_name_lost(&mut self, name: &[u8]) -> Option<ConnId> {
        let holder = self
            .names
            .get(name)
            .copied()
            .filter(|holder| holder.claim.is_none())?;
        if let Some(claims) = self.claims.as_mut() {
            claims.counts.lost += 1;
        }
        self.names.remove(name);
        self.held.remove(&holder.conn);
        Some(holder.conn)
    }

    /// The name `conn` holds, if any.
    pub fn name_of(&self, conn: ConnId) -> Option<&Bytes> {
        self.held.get(&conn).map(|held| &held.name)
    }

    // ---- rules 2 and 3: the lobby and presence ----

    /// `user` entered the lobby: a ROOM member past its alias, a MATOU user signed in, a CCM
    /// user identified, an OCM member of the lobby room. The lobby members of the other
    /// protocols are told (rule 3). False when nothing changed: isolated, a BIN24 user (not
    /// in the lobby), or an endpoint already seated.
    pub fn enter_lobby<O: HubOut>(&mut self, user: User, out: &mut O) -> bool {
        if self.config.isolated
            || !user.protocol.has_lobby()
            || self.lobby.seats.contains_key(&user.endpoint)
        {
            return false;
        }
        // A copy, so that a name kept for a whole session does not pin the read buffer it
        // arrived in (a ROOM alias is a slice of one).
        let name = Bytes::copy_from_slice(&user.name);
        let members = &mut self.lobby.members[user.protocol.index()];
        members.push(user.endpoint);
        self.lobby.seats.insert(
            user.endpoint,
            Seat {
                protocol: user.protocol,
                name: name.clone(),
                index: members.len() - 1,
            },
        );
        self.announce(
            Presence {
                origin: user.protocol,
                name,
                kind: PresenceKind::Entered,
            },
            out,
        );
        true
    }

    /// `endpoint` left the lobby (closed, signed out, left the OCM lobby room): the lobby
    /// members of the other protocols are told. False if it was not in the lobby.
    pub fn leave_lobby<O: HubOut>(&mut self, endpoint: Endpoint, out: &mut O) -> bool {
        let Some(seat) = self.lobby.seats.remove(&endpoint) else {
            return false;
        };
        let members = &mut self.lobby.members[seat.protocol.index()];
        if seat.index < members.len() {
            members.swap_remove(seat.index);
        }
        if let Some(&moved) = members.get(seat.index) {
            if let Some(moved_seat) = self.lobby.seats.get_mut(&moved) {
                moved_seat.index = seat.index;
            }
        }
        self.announce(
            Presence {
                origin: seat.protocol,
                name: seat.name,
                kind: PresenceKind::Left,
            },
            out,
        );
        true
    }

    /// Who is in the lobby here: (protocol, name) with how many hold it, sorted; for the
    /// cluster's rosters.
    pub fn lobby_roster(&self) -> Vec<(ProtocolKind, Bytes, u32)> {
        let mut counts: HashMap<(ProtocolKind, &Bytes), u32> = HashMap::new();
        for seat in self.lobby.seats.values() {
            *counts.entry((seat.protocol, &seat.name)).or_insert(0) += 1;
        }
        let mut roster: Vec<_> = counts
            .into_iter()
            .map(|((protocol, name), count)| (protocol, name.clone(), count))
            .collect();
        roster.sort();
        roster
    }

    /// A connection is gone: it leaves the lobby (announced) and its name is free.
    pub fn disconnect<O: HubOut>(&mut self, conn: ConnId, out: &mut O) {
        self.leave_lobby(Endpoint::Conn(conn), out);
        self.release_name(conn);
    }

    /// Tell the lobby members of the other protocols that a user entered or left: ROOM members
    /// get ROOM's notice, MATOU users MATOU's notify; CCM and OCM have no presence message.
    /// Public for the cluster, which will announce other nodes' presence here.
    pub fn announce<O: HubOut>(&mut self, presence: Presence, out: &mut O) {
        if self.config.isolated {
            return;
        }
        self.notify_presence(&presence, Some(presence.origin), out);
        out.event(&HubEvent::Presence(presence));
    }

    /// Another node's presence event (the cluster): the local lobby members of every protocol
    /// that has presence notices are told, the origin's own included (its service here never
    /// saw that user), and nothing is reported back as an event, so it is never published again.
    pub fn announce_remote<O: HubOut>(&mut self, presence: &Presence, out: &mut O) {
        if !self.config.isolated {
            self.notify_presence(presence, None, out);
        }
    }

    /// ROOM's notice and MATOU's notify to the lobby members of those protocols, except
    /// `skip`'s.
    fn notify_presence<O: HubOut>(
        &mut self,
        presence: &Presence,
        skip: Option<ProtocolKind>,
        out: &mut O,
    ) {
        let origin = presence.origin;
        if skip != Some(ProtocolKind::Room) && self.lobby_count(ProtocolKind::Room) > 0 {
            let bytes = render::room_presence(&presence.name, presence.kind);
            let n = self.fan_out(ProtocolKind::Room, &bytes, out);
            self.counts.notices[origin.index()][ProtocolKind::Room.index()] += n;
        }
        if skip != Some(ProtocolKind::Matou) {
            let recipients = self.lobby_count(ProtocolKind::Matou) as u64;
            if recipients > 0 {
                let rendered =
                    render::matou_presence(&presence.name, presence.kind, &self.config.limits);
                let counter = match rendered {
                    Some(bytes) => {
                        self.fan_out(ProtocolKind::Matou, &bytes, out);
                        &mut self.counts.notices
                    }
                    None => &mut self.counts.over_limit,
                };
                counter[origin.index()][ProtocolKind::Matou.index()] += recipients;
            }
        }
        if skip != Some(ProtocolKind::Web) && self.lobby_count(ProtocolKind::Web) > 0 {
            let bytes = web::presence(origin, &presence.name, presence.kind);
            let n = self.fan_out(ProtocolKind::Web, &bytes, out);
            self.counts.notices[origin.index()][ProtocolKind::Web.index()] += n;
        }
    }

    /// A lobby message (rule 2): every lobby member of the other protocols receives it in its
    /// own form. [`Hub::price`] then [`Hub::say_priced`], with nothing charged and every
    /// recipient protocol admitting it: for the cluster and tests. A service says through
    /// `HubLink::say` (`protocol::switch`), which charges the crossing first.
    pub fn say<O: HubOut>(&mut self, message: LobbyMessage, out: &mut O) {
        let priced = self.price(message);
        self.say_priced(priced, out, |_, _| true);
    }

    /// Renders `message` for the lobby members of the other protocols, without sending it:
    /// what it would cost ([`Priced::crossing`]) is charged to its sender before
    /// [`Hub::say_priced`] sends it or [`Hub::refuse_priced`] counts it refused. Each form is
    /// rendered once, only if it has recipients, and its one `Bytes` is shared by all of them;
    /// a form the recipient's protocol cannot carry (rule 5) is not rendered.
    pub fn price(&self, message: LobbyMessage) -> Priced {
        let skip = message.origin;
        self.price_for(message, Some(skip))
    }

    /// Another node's lobby message (the cluster): every local lobby member receives it in its
    /// own form, the origin protocol's members included (their service here never saw it).
    /// Each recipient protocol's own form limits apply, and `admit` is its rate limit on the
    /// fan-out to its members as in [`Hub::say_priced`] (OCM's per-source budget, the source
    /// being the sender on its node). Not reported as an event: it is never published again.
    pub fn say_remote<O: HubOut>(
        &mut self,
        message: LobbyMessage,
        out: &mut O,
        admit: impl FnMut(ProtocolKind, u64) -> bool,
    ) {
        if self.config.isolated {
            return;
        }
        let priced = self.price_for(message, None);
        self.send_priced(priced, out, admit);
    }

    fn price_for(&self, message: LobbyMessage, skip: Option<ProtocolKind>) -> Priced {
        let mut forms: [Form; ProtocolKind::COUNT] = Default::default();
        if self.config.isolated {
            return Priced { message, forms };
        }
        let sender = &message.sender[..];
        let text = &message.text[..];
        // ROOM's form and OCM's are the same bytes: rendered once for both.
        let mut line: Option<Bytes> = None;
        for to in [
            ProtocolKind::Room,
            ProtocolKind::Matou,
            ProtocolKind::Ccm,
            ProtocolKind::Ocm,
            ProtocolKind::Web,
        ] {
            let recipients = self.lobby_count(to) as u64;
            if Some(to) == skip || recipients == 0 {
                continue;
            }
            let bytes = match to {
                ProtocolKind::Room => Some(
                    line.get_or_insert_with(|| render::line(sender, text))
                        .clone(),
                ),
                ProtocolKind::Ocm => {
                    let line = line.get_or_insert_with(|| render::line(sender, text));
                    render::ocm_line_fits(line, &self.config.limits).then(|| line.clone())
                }
                ProtocolKind::Matou => render::matou_broadcast(sender, text, &self.config.limits),
                ProtocolKind::Ccm => render::ccm_lobby(sender, text),
                // Any bytes: a web page shows what is not UTF-8 as U+FFFD.
                ProtocolKind::Web => Some(web::lobby(message.origin, sender, text)),
                ProtocolKind::Bin24 => None,
            };
            forms[to.index()] = Form { recipients, bytes };
        }
        Priced { message, forms }
    }

    /// Sends a priced lobby message to every lobby member of the other protocols, once its
    /// sender was charged for it. `admit(to, recipients)` is the recipient protocol's own rate
    /// limit on the fan-out to its members (OCM's fan-out budget), all or nothing per
    /// protocol. What a protocol cannot carry or does not admit reaches none of its members
    /// and is counted in [`Counts::over_limit`] (one per recipient).
    pub fn say_priced<O: HubOut>(
        &mut self,
        priced: Priced,
        out: &mut O,
        admit: impl FnMut(ProtocolKind, u64) -> bool,
    ) {
        if self.config.isolated {
            return;
        }
        let message = self.send_priced(priced, out, admit);
        out.event(&HubEvent::Said(message));
    }

    fn send_priced<O: HubOut>(
        &mut self,
        priced: Priced,
        out: &mut O,
        mut admit: impl FnMut(ProtocolKind, u64) -> bool,
    ) -> LobbyMessage {
        let Priced { message, forms } = priced;
        let origin = message.origin;
        for (at, form) in forms.into_iter().enumerate() {
            let Some(to) = ProtocolKind::ALL.get(at).copied() else {
                continue;
            };
            if form.recipients == 0 {
                continue;
            }
            let counter = match form.bytes {
                Some(bytes) if admit(to, form.recipients) => {
                    let sent = self.fan_out(to, &bytes, out);
                    self.counts.messages[origin.index()][to.index()] += sent;
                    continue;
                }
                _ => &mut self.counts.over_limit,
            };
            counter[origin.index()][to.index()] += form.recipients;
        }
        message
    }

    /// A priced lobby message its sender's budget did not cover: nobody in another protocol
    /// receives it, and every recipient it would have had is counted in
    /// [`Counts::over_limit`].
    pub fn refuse_priced(&mut self, priced: Priced) {
        let origin = priced.message.origin;
        for (at, form) in priced.forms.iter().enumerate() {
            self.counts.over_limit[origin.index()][at] += form.recipients;
        }
    }

    /// `bytes` (one rendering) to every lobby member of `to`; returns how many.
    fn fan_out<O: HubOut>(&self, to: ProtocolKind, bytes: &Bytes, out: &mut O) -> u64 {
        let members = &self.lobby.members[to.index()];
        for &member in members {
            out.deliver(to, member, bytes.clone());
        }
        members.len() as u64
    }

    // ---- rule 4: direct messages between BIN24 and CCM ----

    /// The identified CCM user on `from` sent a `kind` message to `addressee` (not `*`) with
    /// `content`. A `Text` or `Raw` to an online BIN24 user becomes a BIN24 type-0 frame:
    /// SRC = the CCM sender's name, DST = the addressee, messageID from a counter the hub keeps
    /// per CCM sender (from 0, for as long as it holds its name), message = the content.
    ///
    /// BIN24's sending limits apply to it as to a BIN24 sender's frame (rule 5: the recipient
    /// protocol's limits): over `FormLimits::bin24_sender_bytes_per_s_max`, or
    /// `bin24_pair_bytes_per_s_max` to this addressee, at `now_ms`, it is refused with CCM's
    /// `Error` `rate-limited` (where a BIN24 sender hears "429") and not delivered.
    pub fn ccm_direct<O: HubOut>(
        &mut self,
        from: ConnId,
        kind: MessageType,
        addressee: &[u8],
        content: &Bytes,
        now_ms: u64,
        out: &mut O,
    ) -> CcmDirect {
        if self.config.isolated || !matches!(kind, MessageType::Text | MessageType::Raw) {
            return CcmDirect::NotCrossing;
        }
        if let Some(Holder {
            protocol: NamedProtocol::Web,
            conn: to,
            claim: None,
        }) = self.names.get(addressee).copied()
        {
            return self.ccm_to_web(from, to, addressee, content, out);
        }
        let Some(Holder {
            protocol: NamedProtocol::Bin24,
            conn: to,
            claim: None,
        }) = self.names.get(addressee).copied()
        else {
            return CcmDirect::NotCrossing;
        };
        match self.ccm_bin24_frame(from, addressee, content, now_ms) {
            Ok((frame, message)) => {
                out.event(&HubEvent::Direct(message.clone()));
                CcmDirect::ToBin24 { to, frame, message }
            }
            Err(Some(error)) => CcmDirect::Refused { error },
            Err(None) => CcmDirect::NotCrossing,
        }
    }

    /// A CCM message whose addressee is a BIN24 user of another node (located there): the
    /// BIN24 frame to publish for it, made and charged as [`Hub::ccm_direct`] makes it for a
    /// BIN24 user here. `Err(Some(error))`: refused in CCM's form (too large, over BIN24's
    /// sending limits); `Err(None)`: it does not cross (`Audio`, `Streaming`, or the sender
    /// gone meanwhile), answered `unknown-addressee` as on one node.
    pub fn ccm_to_remote_bin24(
        &mut self,
        from: ConnId,
        message: &Addressed,
        now_ms: u64,
    ) -> Result<Frame, Option<Bytes>> {
        let kind = MessageType::parse(&message.kind);
        if self.config.isolated || !matches!(kind, Some(MessageType::Text | MessageType::Raw)) {
            return Err(None);
        }
        self.ccm_bin24_frame(from, &message.recipient, &message.body, now_ms)
            .map(|(frame, _)| frame)
    }

    /// Whether `from` may send a BIN24 frame of `frame_bytes` to `recipient` now, under
    /// BIN24's per-sender and per-pair byte rates (what crosses is charged as BIN24's own).
    fn admit_bin24_frame(
        &mut self,
        from: ConnId,
        recipient: Name,
        frame_bytes: usize,
        now_ms: u64,
    ) -> bool {
        let total = bin24_frame_rate(self.config.limits.bin24_sender_bytes_per_s_max);
        let pair = bin24_frame_rate(self.config.limits.bin24_pair_bytes_per_s_max);
        self.held.get_mut(&from).is_some_and(|held| {
            held.bin24_sending
                .get_or_insert_with(|| SenderBudget::new(total, now_ms))
                .admit(Some(recipient), frame_bytes as u64, total, pair, now_ms)
        })
    }

    /// The BIN24 frame for a CCM user's message to a BIN24 user, under BIN24's sending
    /// limits, with the sender's next messageID; or why not: `Some(error)` refused in CCM's
    /// form, `None` not crossing (the sender holds no CCM name).
    fn ccm_bin24_frame(
        &mut self,
        from: ConnId,
        addressee: &[u8],
        content: &Bytes,
        now_ms: u64,
    ) -> Result<(Frame, DirectMessage), Option<Bytes>> {
        let Some((sender_name, message_id)) = self
            .held
            .get(&from)
            .filter(|held| held.protocol == NamedProtocol::Ccm)
            .map(|held| (held.name.clone(), held.next_message_id))
        else {
            return Err(None);
        };
        // The addressee holds its name in BIN24, so it fits BIN24's field; the sender's may
        // not (CCM names go up to 64 bytes).
        let (Some(sender), Some(recipient)) = (Name::new(&sender_name), Name::new(addressee))
        else {
            return Err(Some(self.refuse_ccm(
                "your name is longer than the 8 bytes a BIN24 user can be sent from",
            )));
        };
        let frame = bin24::encode(bin24::TYPE_MESSAGE, message_id, sender, recipient, content)
            .and_then(|bytes| Frame::from_bytes(bytes).ok());
        let Some(frame) = frame else {
            return Err(Some(
                self.refuse_ccm("a message to a BIN24 user is at most 1000 bytes"),
            ));
        };
        let admitted = self.admit_bin24_frame(from, recipient, frame.as_bytes().len(), now_ms);
        if !admitted {
            self.count_refused(ProtocolKind::Ccm, ProtocolKind::Bin24);
            return Err(Some(render::ccm_error(
                Reason::RateLimited,
                "sending to BIN24 users faster than allowed: the message was not delivered",
            )));
        }
        if let Some(held) = self.held.get_mut(&from) {
            held.next_message_id = message_id.wrapping_add(1);
        }
        self.counts.messages[ProtocolKind::Ccm.index()][ProtocolKind::Bin24.index()] += 1;
        let message = DirectMessage {
            origin: ProtocolKind::Ccm,
            sender: sender_name,
            recipient: Bytes::copy_from_slice(addressee),
            message_id,
            body: frame.body(),
        };
        Ok((frame, message))
    }

    fn ccm_to_web<O: HubOut>(
        &mut self,
        from: ConnId,
        to: ConnId,
        addressee: &[u8],
        content: &Bytes,
        out: &mut O,
    ) -> CcmDirect {
        let Some(sender) = self
            .held
            .get(&from)
            .filter(|held| held.protocol == NamedProtocol::Ccm)
            .map(|held| held.name.clone())
        else {
            return CcmDirect::NotCrossing;
        };
        self.counts.messages[ProtocolKind::Ccm.index()][ProtocolKind::Web.index()] += 1;
        let message = DirectMessage {
            origin: ProtocolKind::Ccm,
            sender,
            recipient: Bytes::copy_from_slice(addressee),
            message_id: 0,
            body: content.clone(),
        };
        out.event(&HubEvent::Direct(message.clone()));
        CcmDirect::ToWeb {
            to,
            bytes: web::direct(ProtocolKind::Ccm, &message.sender, content),
            message,
        }
    }

    /// The signed-in web user on `from` sent `text` to `addressee` (WEB's `direct`, with the
    /// request's `id`). A web or CCM holder gets it in its form, and the sender hears when
    /// it was written ([`WebDirect::ToConn`]); a BIN24 holder gets a type-0 frame (SRC = the
    /// web name, messageID from the sender's counter) under BIN24's sending limits at
    /// `now_ms`, as a CCM sender's message would.
    pub fn web_direct<O: HubOut>(
        &mut self,
        from: ConnId,
        addressee: &[u8],
        text: &Bytes,
        id: Option<u64>,
        now_ms: u64,
        out: &mut O,
    ) -> WebDirect {
        let Some(holder) = self.names.get(addressee).copied() else {
            return self.web_locate(from, addressee, text, id, now_ms);
        };
        let Some(sender_name) = self
            .held
            .get(&from)
            .filter(|held| held.protocol == NamedProtocol::Web)
            .map(|held| held.name.clone())
        else {
            return WebDirect::Refused {
                reason: "not-signed-in",
            };
        };
        if holder.claim.is_some() {
            return WebDirect::Refused {
                reason: "unknown-addressee",
            };
        }
        let to = holder.conn;
        let destination = holder.protocol.protocol();
        let bytes = match holder.protocol {
            NamedProtocol::Web => web::direct(ProtocolKind::Web, &sender_name, text),
            NamedProtocol::Ccm => render::ccm_text(&sender_name, addressee, text),
            NamedProtocol::Matou => {
                // MATOU has no direct messages (its private links are peer to peer).
                return WebDirect::Refused {
                    reason: "unknown-addressee",
                };
            }
            NamedProtocol::Bin24 => {
                return match self.web_bin24_frame(from, addressee, text, id, now_ms, out) {
                    Ok(frame) => WebDirect::ToBin24 { to, frame },
                    Err(reason) => WebDirect::Refused { reason },
                };
            }
        };
        let note = WrittenNote(self.next_note);
        self.next_note = self.next_note.wrapping_add(1);
        self.awaiting_write
            .insert(note, AwaitingWrite::Web { sender: from, id });
        if destination != ProtocolKind::Web {
            self.counts.messages[ProtocolKind::Web.index()][destination.index()] += 1;
        }
        WebDirect::ToConn { to, bytes, note }
    }

    /// In a cluster, a web user's `direct` to a name no user of this node holds: located
    /// ([`WebDirect::Locating`]); a node alone, or too many waiting: `unknown-addressee`.
    fn web_locate(
        &mut self,
        from: ConnId,
        addressee: &[u8],
        text: &Bytes,
        id: Option<u64>,
        now_ms: u64,
    ) -> WebDirect {
        let sender = self
            .held
            .get(&from)
            .filter(|held| held.protocol == NamedProtocol::Web)
            .map(|held| held.name.clone());
        let (Some(sender), Some(claims)) = (sender, self.claims.as_mut()) else {
            return WebDirect::Refused {
                reason: "unknown-addressee",
            };
        };
        let message = Addressed {
            to_node: Bytes::new(),
            to_incarnation: 0,
            kind: Bytes::from_static(WEB_DIRECT_KIND),
            sender,
            recipient: Bytes::copy_from_slice(addressee),
            encoding: Bytes::from_static(b"utf-8"),
            body: text.clone(),
            from_node: Bytes::new(),
            from_incarnation: 0,
            request: id,
        };
        if claims.locate_web(from, message, now_ms) {
            WebDirect::Locating
        } else {
            WebDirect::Refused {
                reason: "unknown-addressee",
            }
        }
    }

    /// A web user's `direct` whose addressee is a BIN24 user of another node (located
    /// there): the BIN24 frame to publish for it, made and charged as [`Hub::web_direct`]
    /// makes it for a BIN24 user here (its answer comes back as `sent` or `error`); or the
    /// reason it is refused.
    pub fn web_to_remote_bin24<O: HubOut>(
        &mut self,
        from: ConnId,
        message: &Addressed,
        now_ms: u64,
        out: &mut O,
    ) -> Result<Frame, &'static str> {
        self.web_bin24_frame(
            from,
            &message.recipient,
            &message.body,
            message.request,
            now_ms,
            out,
        )
    }

    /// The BIN24 frame for a web user's message to a BIN24 user, under BIN24's sending
    /// limits, with the sender's next messageID, its request id kept for BIN24's answer.
    fn web_bin24_frame<O: HubOut>(
        &mut self,
        from: ConnId,
        addressee: &[u8],
        text: &Bytes,
        id: Option<u64>,
        now_ms: u64,
        out: &mut O,
    ) -> Result<Frame, &'static str> {
        let Some((sender_name, message_id)) = self
            .held
            .get(&from)
            .filter(|held| held.protocol == NamedProtocol::Web)
            .map(|held| (held.name.clone(), held.next_message_id))
        else {
            return Err("not-signed-in");
        };
        // Each session counts from 0, and a page that reconnects is a new session under the
        // same name: a messageID its earlier session used may still await BIN24's answer.
        // Reused, it would move that message to the store (BIN24's rule for a reused ID) and
        // hand that message's answer to this direct; skip the ones still waiting.
        let mut message_id = message_id;
        while self
            .web_to_bin24
            .contains_key(&(sender_name.clone(), message_id))
        {
            message_id = message_id.wrapping_add(1);
        }
        let (Some(sender), Some(recipient)) = (Name::new(&sender_name), Name::new(addressee))
        else {
            self.count_refused(ProtocolKind::Web, ProtocolKind::Bin24);
            return Err("too-large");
        };
        let frame = bin24::encode(bin24::TYPE_MESSAGE, message_id, sender, recipient, text)
            .and_then(|bytes| Frame::from_bytes(bytes).ok());
        let Some(frame) = frame else {
            self.count_refused(ProtocolKind::Web, ProtocolKind::Bin24);
            return Err("too-large");
        };
        let admitted = self.admit_bin24_frame(from, recipient, frame.as_bytes().len(), now_ms);
        if !admitted {
            self.count_refused(ProtocolKind::Web, ProtocolKind::Bin24);
            return Err("rate-limited");
        }
        if let Some(held) = self.held.get_mut(&from) {
            held.next_message_id = message_id.wrapping_add(1);
        }
        self.web_to_bin24
            .insert((sender_name.clone(), message_id), id);
        self.counts.messages[ProtocolKind::Web.index()][ProtocolKind::Bin24.index()] += 1;
        out.event(&HubEvent::Direct(DirectMessage {
            origin: ProtocolKind::Web,
            sender: sender_name,
            recipient: Bytes::copy_from_slice(addressee),
            message_id,
            body: frame.body(),
        }));
        Ok(frame)
    }

    /// Another node's [`Addressed`] for this node: a CCM or web user's message to a CCM or
    /// web user here, in that user's form (a web sender's with a note for its receipt), or a
    /// receipt for a web user here (its `sent` or `error`).
    pub fn deliver_remote(&mut self, addressed: &Addressed) -> RemoteDelivery {
        if addressed.kind[..] == *WEB_RECEIPT_KIND {
            return self.on_web_receipt(addressed);
        }
        if addressed.kind[..] == *WEB_DIRECT_KIND {
            return self.deliver_remote_web(addressed);
        }
        let Some(holder) = self
            .names
            .get(&addressed.recipient[..])
            .copied()
            .filter(|holder| holder.claim.is_none())
        else {
            return RemoteDelivery::Nothing;
        };
        let to = holder.conn;
        let kind = &addressed.kind[..];
        // A CCM user's message to a web user here (a CCM holder is CCM's own form, written
        // by the registry): `Text` and `Raw`, as on one node.
        let crosses = matches!(
            MessageType::parse(kind),
            Some(MessageType::Text | MessageType::Raw)
        );
        if holder.protocol != NamedProtocol::Web || !crosses {
            return RemoteDelivery::Nothing;
        }
        self.counts.messages[ProtocolKind::Ccm.index()][ProtocolKind::Web.index()] += 1;
        RemoteDelivery::Send {
            to,
            bytes: web::direct(ProtocolKind::Ccm, &addressed.sender, &addressed.body),
        }
    }

    /// Another node's web user's `direct` for a user here: in that user's form, with a note for
    /// its receipt; for a name no CCM or web user holds here now (left since the look-up, or
    /// taken by BIN24 or MATOU), its `not-delivered` receipt at once.
    fn deliver_remote_web(&mut self, addressed: &Addressed) -> RemoteDelivery {
        let holder = self
            .names
            .get(&addressed.recipient[..])
            .copied()
            .filter(|holder| holder.claim.is_none());
        let (to, protocol, bytes) = match holder {
            Some(Holder {
                protocol: NamedProtocol::Web,
                conn,
                ..
            }) => (
                conn,
                NamedProtocol::Web,
                web::direct(ProtocolKind::Web, &addressed.sender, &addressed.body),
            ),
            Some(Holder {
                protocol: NamedProtocol::Ccm,
                conn,
                ..
            }) => (
                conn,
                NamedProtocol::Ccm,
                render::ccm_text(&addressed.sender, &addressed.recipient, &addressed.body),
            ),
            _ if addressed.from_node.is_empty() => return RemoteDelivery::Nothing,
            _ => {
                return RemoteDelivery::Publish(web_receipt(
                    addressed.sender.clone(),
                    addressed.request,
                    addressed.from_node.clone(),
                    addressed.from_incarnation,
                    false,
                ))
            }
        };
        if protocol != NamedProtocol::Web {
            self.counts.messages[ProtocolKind::Web.index()][protocol.protocol().index()] += 1;
        }
        let note = WrittenNote(self.next_note);
        self.next_note = self.next_note.wrapping_add(1);
        self.awaiting_write.insert(
            note,
            AwaitingWrite::RemoteWeb {
                sender: addressed.sender.clone(),
                id: addressed.request,
                node: addressed.from_node.clone(),
                incarnation: addressed.from_incarnation,
            },
        );
        RemoteDelivery::Notify { to, bytes, note }
    }

    /// The receipt for a web user's message to another node (`request`: the token it was
    /// published with): the sender's `sent` or `error`, once; nothing when its message was
    /// answered already (its deadline passed, or its recipient's node was taken for dead), or
    /// its sender has left.
    fn on_web_receipt(&mut self, receipt: &Addressed) -> RemoteDelivery {
        let Some(claims) = self.claims.as_mut() else {
            return RemoteDelivery::Nothing;
        };
        let Some(message) = claims
            .receipts
            .on_receipt(receipt.request, &receipt.recipient)
        else {
            log::debug!(
                "cluster: a receipt for {:?} after its message was answered, dropped",
                String::from_utf8_lossy(&receipt.recipient)
            );
            return RemoteDelivery::Nothing;
        };
        let Some(to) = self.web_sender(&message) else {
            return RemoteDelivery::Nothing;
        };
        let bytes = if receipt.body[..] == *b"delivered" {
            web::sent(message.request, "delivered")
        } else {
            web::error(message.request, "not-delivered")
        };
        RemoteDelivery::Send { to, bytes }
    }

    /// BIN24 answers `text` ("200" delivered, "300" stored, "507" the store is full; the
    /// original client's answers may carry more after the code) to `sender` for its message
    /// `message_id`, and `sender` is no BIN24 user: if it is a web user's message, the web
    /// user's connection and its `sent` or `error` for the request.
    pub fn bin24_answer_to_web(
        &mut self,
        sender: Name,
        message_id: u32,
        text: &[u8],
    ) -> Option<(ConnId, Bytes)> {
        let key = (Bytes::copy_from_slice(sender.as_bytes()), message_id);
        let id = self.web_to_bin24.remove(&key)?;
        let Some(Holder {
            protocol: NamedProtocol::Web,
            conn,
            claim: None,
        }) = self.names.get(sender.as_bytes()).copied()
        else {
            return None;
        };
        let bytes = if text.starts_with(bin24::ANSWER_DELIVERED) {
            web::sent(id, "delivered")
        } else if text.starts_with(bin24::ANSWER_STORED) {
            web::sent(id, "stored")
        } else if text.starts_with(bin24::ANSWER_STORE_FULL) {
            web::error(id, "store-full")
        } else if text.starts_with(bin24::ANSWER_RATE_LIMITED) {
            web::error(id, "rate-limited")
        } else {
            web::error(id, "not-delivered")
        };
        Some((conn, bytes))
    }

    /// A direct message from `origin` to a user of `destination` refused by a sending limit
    /// (the sender's own protocol's, checked by its service): counted over the limit.
    pub fn count_refused(&mut self, origin: ProtocolKind, destination: ProtocolKind) {
        if !self.config.isolated {
            self.counts.over_limit[origin.index()][destination.index()] += 1;
        }
    }

    fn refuse_ccm(&mut self, sentence: &str) -> Bytes {
        self.count_refused(ProtocolKind::Ccm, ProtocolKind::Bin24);
        render::ccm_error(Reason::TooLarge, sentence)
    }

    /// A BIN24 type-0 `frame` (from the connection holding its SRC). To an online CCM user D,
    /// D gets `CCM\1.0 Text` with `Sender: <SRC>`, `Addressee: D` and the message bytes as
    /// content; once they are written the sender is answered "200" ([`Hub::on_written`]).
    ///
    /// A CCM header is UTF-8: a SRC that is not is written with U+FFFD in its place (the
    /// message still arrives; a reply to that name cannot).
    pub fn bin24_direct<O: HubOut>(&mut self, frame: &Frame, out: &mut O) -> Bin24Direct {
        self.bin24_direct_from(frame, None, out)
    }

    /// As [`Hub::bin24_direct`], for a frame another node's BIN24 user sent (`origin`: that
    /// node and its incarnation): its "200", or its "300" once stored, goes back there.
    pub fn bin24_direct_from<O: HubOut>(
        &mut self,
        frame: &Frame,
        origin: Option<(Bytes, u64)>,
        out: &mut O,
    ) -> Bin24Direct {
        if self.config.isolated || frame.frame_type() != bin24::TYPE_MESSAGE {
            return Bin24Direct::NotCrossing;
        }
        let recipient = frame.dst();
        let (destination, to) = match self.names.get(recipient.as_bytes()).copied() {
            Some(Holder {
                protocol: protocol @ (NamedProtocol::Ccm | NamedProtocol::Web),
                conn,
                claim: None,
            }) => (protocol.protocol(), conn),
            _ => return Bin24Direct::NotCrossing,
        };
        let sender = frame.src();
        let sender_text = String::from_utf8_lossy(sender.as_bytes());
        let body = frame.body();
        let bytes = if destination == ProtocolKind::Web {
            web::direct(ProtocolKind::Bin24, sender.as_bytes(), &body)
        } else {
            render::ccm_text(sender_text.as_bytes(), recipient.as_bytes(), &body)
        };
        let note = WrittenNote(self.next_note);
        self.next_note = self.next_note.wrapping_add(1);
        self.awaiting_write.insert(
            note,
            AwaitingWrite::Bin24 {
                sender,
                recipient,
                frame: frame.clone(),
                origin,
            },
        );
        self.counts.messages[ProtocolKind::Bin24.index()][destination.index()] += 1;
        let message = DirectMessage {
            origin: ProtocolKind::Bin24,
            sender: Bytes::copy_from_slice(sender.as_bytes()),
            recipient: Bytes::copy_from_slice(recipient.as_bytes()),
            message_id: frame.message_id(),
            body,
        };
        out.event(&HubEvent::Direct(message.clone()));
        Bin24Direct::ToCcm {
            to,
            bytes,
            note,
            message,
        }
    }

    /// The reactor reported a [`Bin24Direct::ToCcm`] delivery: `written` to the CCM user's
    /// socket, or not (the connection closed first). `None` for a note the hub does not know
    /// (reported twice).
    pub fn on_written(&mut self, note: WrittenNote, written: bool) -> Option<Written> {
        let (sender, recipient, frame, origin) = match self.awaiting_write.remove(&note)? {
            AwaitingWrite::Bin24 {
                sender,
                recipient,
                frame,
                origin,
            } => (sender, recipient, frame, origin),
            AwaitingWrite::Web { sender, id } => {
                let bytes = if written {
                    web::sent(id, "delivered")
                } else {
                    web::error(id, "not-delivered")
                };
                return Some(Written::Reply { to: sender, bytes });
            }
            AwaitingWrite::RemoteWeb {
                sender,
                id,
                node,
                incarnation,
            } => {
                return Some(Written::Publish(web_receipt(
                    sender,
                    id,
                    node,
                    incarnation,
                    written,
                )));
            }
        };
        Some(if written {
            Written::Answered {
                sender,
                answer: render::bin24_delivered(frame.message_id(), recipient, sender),
                origin,
            }
        } else {
            Written::Unwritten {
                recipient,
                sender,
                message_id: frame.message_id(),
                frame,
                origin,
            }
        })
    }
}

/// The receipt ([`WEB_RECEIPT_KIND`]) of another node's web user's message (`sender`, its
/// `request` token) for that node (`node`, `incarnation`): `delivered` when `written`.
fn web_receipt(
    sender: Bytes,
    request: Option<u64>,
    node: Bytes,
    incarnation: u64,
    written: bool,
) -> HubEvent {
    let status: &'static [u8] = if written {
        b"delivered"
    } else {
        b"not-delivered"
    };
    HubEvent::Addressed(Box::new(Addressed {
        to_node: node,
        to_incarnation: incarnation,
        kind: Bytes::from_static(WEB_RECEIPT_KIND),
        sender: Bytes::new(),
        recipient: sender,
        encoding: Bytes::new(),
        body: Bytes::from_static(status),
        from_node: Bytes::new(),
        from_incarnation: 0,
        request,
    }))
}

/// BIN24's byte rate for a sender, as its service builds it: the burst always holds one
/// largest frame, or that frame could never pass.
fn bin24_frame_rate(rate_per_s: u64) -> RateLimit {
    RateLimit {
        rate_per_s,
        burst: rate_per_s.max(bin24::FRAME_BYTES_MAX as u64),
    }
}

#[cfg(test)]
mod tests;
