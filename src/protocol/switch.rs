//! The switchboard's side of the seam: how a service reaches the [`Hub`] during its calls, and
//! how what the hub decides for another service gets there.
//!
//! The registry owns the hub. For every call it wraps the reactor's [`Outbox`] in a
//! [`Switched`], whose [`Outbox::hub`] gives the service the hub and a [`HubQueue`] to answer
//! into. When the call returns, the registry drains the queue: deliveries to connections go out
//! through the same connection table (connection ids are global across protocols), deliveries
//! to OCM members wait for the OCM socket, and each [`HubOutcome`] is handed to the service it
//! belongs to through [`super::StreamService::on_hub`]. No service sees another, and all of it
//! is sans-io: tests drive it with a `RecordingOutbox`.

use bytes::Bytes;

use super::bin24::codec::{Frame, Name};
use std::net::SocketAddr;

use super::{
    CloseMode, CloseReason, ConnId, DatagramDrop, DatagramOut, DatagramSent, Outbox, ProtocolKind,
};
use crate::hub::{
    Bin24Relay, Claim, ClaimDecided, Crossing, Endpoint, Hub, HubEvent, HubOut, LobbyMessage,
    NamedProtocol, Priced, PrivateLink, Written, WrittenNote,
};

/// The most input a connection may send while its name claim waits for the cluster (its
/// service reads none of it until the claim is decided); past it, the connection is closed.
pub const HELD_INPUT_BYTES_MAX: usize = 64 * 1024;

/// Something the hub decided that another service than the caller's must carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubOutcome {
    /// A CCM user's message to the online BIN24 user on `to` (rule 4): BIN24 forwards `frame`
    /// (type 0) and keeps its answer timer, as for a frame from a BIN24 sender.
    Bin24Forward { to: ConnId, frame: Frame },
    /// A BIN24 user's message was written to a CCM user: BIN24 sends `answer` ("200") to
    /// `sender` wherever it is connected now.
    /// `origin`: the sender is a user of that node (and incarnation): published there.
    Bin24Answer {
        sender: Name,
        answer: Bytes,
        origin: Option<(Bytes, u64)>,
    },
    /// A BIN24 user's message to a CCM user was not written (the CCM user closed first):
    /// BIN24's rules for an offline recipient, so it is stored, never lost.
    Bin24Store {
        recipient: Name,
        sender: Name,
        message_id: u32,
        frame: Frame,
        origin: Option<(Bytes, u64)>,
    },
    /// A name claim that waited for the cluster is decided: the claiming connection's
    /// service signs it in or refuses it, and reads its held input again.
    NameClaim(ClaimDecided),
    /// MATOU: a private request of `from` to `dst`, a name no MATOU user of this node holds,
    /// was located: on the node named (whose request was published), or nowhere.
    MatouLocated {
        from: ConnId,
        dst: Bytes,
        at: Option<(Bytes, u64)>,
    },
    /// MATOU: a step of a private link from another node, for a user of this one.
    MatouRemote(Box<PrivateLink>),
    /// CCM: the addressee of `from`'s message, a name no user of this node holds, was
    /// located (the message published for its node, or `from` told it is unknown): `from`'s
    /// held input is read again.
    CcmLocated { from: ConnId },
    /// WEB: the addressee of `from`'s `direct`, a name no user of this node holds, was
    /// located (and `from` answered or its message sent on): `from`'s held input is read
    /// again.
    WebLocated { from: ConnId },
    /// BIN24: the DST of `from`'s message `frame`, a name no user of this node held, was
    /// located: a BIN24 user of the node `at` holds it (the frame is to be published for
    /// it), or none does. `from`'s held input is read again after.
    Bin24Located {
        from: ConnId,
        frame: Bytes,
        at: Option<(Bytes, u64)>,
    },
    /// BIN24: a frame from another node for a BIN24 user of this one.
    Bin24Remote(Box<Bin24Relay>),
    /// BIN24: a message sent from the location cache came back from a node that no longer
    /// holds its DST, and was located again: at the node `at` (published for it again), or
    /// nowhere else (BIN24's rules here). Nobody's input waits for it.
    Bin24Relocated {
        frame: Bytes,
        at: Option<(Bytes, u64)>,
    },
    /// BIN24: this node's subscription is back after a lost link: `Stored` notices of other
    /// nodes may have been missed meanwhile, so every online BIN24 user's store is read again.
    Bin24Resubscribed,
}

impl HubOutcome {
    /// The protocol whose service carries this out.
    pub fn service(&self) -> ProtocolKind {
        match self {
            HubOutcome::Bin24Forward { .. }
            | HubOutcome::Bin24Answer { .. }
            | HubOutcome::Bin24Store { .. }
            | HubOutcome::Bin24Located { .. }
            | HubOutcome::Bin24Remote(_)
            | HubOutcome::Bin24Relocated { .. }
            | HubOutcome::Bin24Resubscribed => ProtocolKind::Bin24,
            HubOutcome::NameClaim(decided) => decided.protocol.protocol(),
            HubOutcome::MatouLocated { .. } | HubOutcome::MatouRemote(_) => ProtocolKind::Matou,
            HubOutcome::CcmLocated { .. } => ProtocolKind::Ccm,
            HubOutcome::WebLocated { .. } => ProtocolKind::Web,
        }
    }
}

/// A delivery the hub waits on (a BIN24 frame to a CCM or web user, a web user's direct
/// message) was written to its recipient (`acked`) or not: what that comes to, carried out.
/// Called by the recipient's service from its `on_notify` with the reactor's note.
pub fn carry_written<O: Outbox>(note: u64, acked: bool, out: &mut O) {
    let Some(written) = out
        .hub()
        .and_then(|link| link.hub.on_written(WrittenNote(note), acked))
    else {
        return;
    };
    let outcome = match written {
        Written::Reply { to, bytes } => {
            out.send(to, bytes);
            return;
        }
        Written::Publish(event) => {
            if let Some(link) = out.hub() {
                link.queue.publish(event);
            }
            return;
        }
        Written::Answered {
            sender,
            answer,
            origin,
        } => HubOutcome::Bin24Answer {
            sender,
            answer,
            origin,
        },
        Written::Unwritten {
            recipient,
            sender,
            message_id,
            frame,
            origin,
        } => HubOutcome::Bin24Store {
            recipient,
            sender,
            message_id,
            frame,
            origin,
        },
    };
    if let Some(link) = out.hub() {
        link.queue.hand_over(outcome);
    }
}

/// What the hub produced during one service call, drained by the registry after it.
#[derive(Debug, Default)]
pub struct HubQueue {
    /// Lobby deliveries, in order: one `Bytes` per rendered form, cloned per recipient.
    pub deliveries: Vec<(ProtocolKind, Endpoint, Bytes)>,
    /// Work for other services.
    pub outcomes: Vec<HubOutcome>,
    /// The events the hub acted on, for the cluster to publish; kept only when
    /// `collect_events` is set (a node in a cluster), so a node alone pays nothing.
    pub events: Vec<HubEvent>,
    pub collect_events: bool,
}

impl HubQueue {
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty() && self.outcomes.is_empty() && self.events.is_empty()
    }

    /// Publish `event` to the other nodes (a step of a MATOU private link, addressed to the
    /// node that holds its peer); nothing for a node alone.
    pub fn publish(&mut self, event: HubEvent) {
        if self.collect_events {
            self.events.push(event);
        }
    }

    /// Hand `outcome` to the service it belongs to, once the current call returns.
    pub fn hand_over(&mut self, outcome: HubOutcome) {
        self.outcomes.push(outcome);
    }
}

impl HubOut for HubQueue {
    fn deliver(&mut self, protocol: ProtocolKind, to: Endpoint, bytes: Bytes) {
        self.deliveries.push((protocol, to, bytes));
    }

    fn event(&mut self, event: &HubEvent) {
        if self.collect_events {
            // `Bytes` fields: reference counts, not copies.
            self.events.push(event.clone());
        }
    }
}

/// A recipient protocol's own rate limit on what the lobby makes its members receive (rule 5):
/// OCM's fan-out budget, per source and for its socket, which a lobby line from another
/// protocol passes as a chat datagram does.
pub trait LobbyGate {
    /// May a lobby message from `source` (the sender's endpoint) go to `recipients` lobby
    /// members at `now_ms`? All or nothing; a yes takes it from the budget.
    fn admit_lobby(&mut self, source: Endpoint, recipients: u64, now_ms: u64) -> bool;

    /// As [`LobbyGate::admit_lobby`], for a lobby message from another node of the cluster:
    /// its source is the sender there (`node`, `origin` protocol, `sender` name), each charged
    /// on its own as a local sender is.
    fn admit_remote(&mut self, source: RemoteSender<'_>, recipients: u64, now_ms: u64) -> bool;
}

/// The sender of a lobby message from another node, as a fan-out budget tells sources apart.
#[derive(Clone, Copy, Debug, Hash)]
pub struct RemoteSender<'a> {
    pub node: &'a [u8],
    pub origin: ProtocolKind,
    pub sender: &'a [u8],
}

/// The hub and the queue its answers go to, for the length of one service call.
pub struct HubLink<'a> {
    pub hub: &'a mut Hub,
    pub queue: &'a mut HubQueue,
    /// OCM's gate for lobby lines to its members; `None` when OCM is disabled, or is the
    /// service called (OCM's own lobby messages never go to OCM members through the hub).
    pub ocm_gate: Option<&'a mut dyn LobbyGate>,
    /// The time of the call, for the gate.
    pub now_ms: u64,
}

impl HubLink<'_> {
    /// [`Hub::claim_name_at`] at the time of the call.
    pub fn claim_name(&mut self, protocol: NamedProtocol, conn: ConnId, name: &[u8]) -> Claim {
        self.hub.claim_name_at(protocol, conn, name, self.now_ms)
    }

    /// Say `message` to the lobby for `source`, the one place every lobby message crosses:
    /// the crossing is priced and `charge`d to the sender's budget in its own protocol
    /// (CCM bytes, OCM sends; ROOM and MATOU have no per-sender budget and pass `|_| true`),
    /// with whatever it sends in its own protocol, all or nothing. Refused: nobody receives
    /// it and its would-be recipients are counted over the limit; returns false. Admitted:
    /// each recipient protocol's own limits apply ([`HubLink::say_priced`]).
    pub fn say(
        &mut self,
        message: LobbyMessage,
        source: Endpoint,
        charge: impl FnOnce(Crossing) -> bool,
    ) -> bool {
        let priced = self.hub.price(message);
        if !charge(priced.crossing()) {
            self.hub.refuse_priced(priced);
            return false;
        }
        self.say_priced(priced, source);
        true
    }

    /// Send a message whose sender was charged: OCM members get it only if OCM's fan-out
    /// budget admits it ([`LobbyGate`]), every other protocol through its connections' own
    /// output limits.
    pub fn say_priced(&mut self, priced: Priced, source: Endpoint) {
        let now_ms = self.now_ms;
        let gate = &mut self.ocm_gate;
        self.hub.say_priced(priced, self.queue, |to, recipients| {
            to != ProtocolKind::Ocm
                || gate
                    .as_mut()
                    .is_none_or(|gate| gate.admit_lobby(source, recipients, now_ms))
        });
    }
}

/// The reactor's [`Outbox`] with the hub at hand: what every service call is given. `link` is
/// `None` under `--isolate`, so an isolated service does exactly what it did before the hub.
pub struct Switched<'a, O> {
    out: &'a mut O,
    link: Option<HubLink<'a>>,
}

impl<'a, O: Outbox> Switched<'a, O> {
    pub fn new(
        out: &'a mut O,
        hub: &'a mut Hub,
        queue: &'a mut HubQueue,
        ocm_gate: Option<&'a mut dyn LobbyGate>,
        now_ms: u64,
    ) -> Self {
        let link = (!hub.is_isolated()).then_some(HubLink {
            hub,
            queue,
            ocm_gate,
            now_ms,
        });
        Switched { out, link }
    }
}

/// A shorter borrow of `link`, for one `hub()` call.
fn reborrow<'s>(link: &'s mut HubLink<'_>) -> HubLink<'s> {
    HubLink {
        hub: &mut *link.hub,
        queue: &mut *link.queue,
        ocm_gate: match &mut link.ocm_gate {
            Some(gate) => Some(&mut **gate),
            None => None,
        },
        now_ms: link.now_ms,
    }
}

impl<O: Outbox> Outbox for Switched<'_, O> {
    fn send(&mut self, to: ConnId, bytes: Bytes) {
        self.out.send(to, bytes);
    }

    fn send_notify(&mut self, to: ConnId, bytes: Bytes, note: u64) -> bool {
        self.out.send_notify(to, bytes, note)
    }

    fn close(&mut self, id: ConnId, reason: CloseReason, mode: CloseMode) {
        self.out.close(id, reason, mode);
    }

    fn count_rejected(&mut self) {
        self.out.count_rejected();
    }

    fn count_frame_in(&mut self, from: ConnId) {
        self.out.count_frame_in(from);
    }

    fn mark_identified(&mut self, id: ConnId) {
        self.out.mark_identified(id);
    }

    fn resume_input(&mut self, id: ConnId) {
        self.out.resume_input(id);
    }

    fn hub(&mut self) -> Option<HubLink<'_>> {
        self.link.as_mut().map(reborrow)
    }
}

/// A UDP socket's [`DatagramOut`] with the hub at hand, as [`Switched`] for connections.
pub struct SwitchedDatagrams<'a, D> {
    out: &'a mut D,
    link: Option<HubLink<'a>>,
}

impl<'a, D: DatagramOut> SwitchedDatagrams<'a, D> {
    /// No OCM gate: the OCM service itself is behind this socket.
    pub fn new(out: &'a mut D, hub: &'a mut Hub, queue: &'a mut HubQueue, now_ms: u64) -> Self {
        let link = (!hub.is_isolated()).then_some(HubLink {
            hub,
            queue,
            ocm_gate: None,
            now_ms,
        });
        SwitchedDatagrams { out, link }
    }
}

impl<D: DatagramOut> DatagramOut for SwitchedDatagrams<'_, D> {
    fn send_to(&mut self, to: SocketAddr, bytes: &[u8]) -> DatagramSent {
        self.out.send_to(to, bytes)
    }

    fn count_dropped_in(&mut self, why: DatagramDrop) {
        self.out.count_dropped_in(why);
    }

    fn count_datagram_in(&mut self) {
        self.out.count_datagram_in();
    }

    fn hub(&mut self) -> Option<HubLink<'_>> {
        self.link.as_mut().map(reborrow)
    }
}
