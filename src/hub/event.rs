//! The hub's vocabulary: who a user is, and the events that cross between protocols.
//!
//! Everything here is plain data (`Bytes`, integers, small enums): no socket, no service, no
//! wire format. These events are what the cluster will carry between nodes, so they say only
//! what any node needs to act on them: the origin protocol, names and text.

use bytes::Bytes;

use crate::chat::ConnId;
pub use crate::protocol::ProtocolKind;

/// The protocols whose users hold names in the one name space (contract rule 1). ROOM aliases
/// and OCM user names are display names: not held, not addressable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NamedProtocol {
    Bin24,
    Ccm,
    Matou,
    Web,
}

impl NamedProtocol {
    pub fn protocol(self) -> ProtocolKind {
        match self {
            NamedProtocol::Bin24 => ProtocolKind::Bin24,
            NamedProtocol::Ccm => ProtocolKind::Ccm,
            NamedProtocol::Matou => ProtocolKind::Matou,
            NamedProtocol::Web => ProtocolKind::Web,
        }
    }
}

/// An OCM member as the OCM service numbers it. OCM members are not connections (they chat
/// over UDP from an address the OCM service knows), so the OCM service picks a number unique
/// among its live members and maps it back to an address when the hub delivers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OcmMemberId(pub u64);

/// Where a user is reached on this node: a TCP connection (ROOM, BIN24, CCM, MATOU), or an
/// OCM member of the lobby room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Conn(ConnId),
    Ocm(OcmMemberId),
}

/// A user as the hub knows it: its protocol of origin, where it is reached, and its name
/// (held for BIN24, CCM and MATOU; a display name for ROOM and OCM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub protocol: ProtocolKind,
    pub endpoint: Endpoint,
    pub name: Bytes,
}

/// Something said to the lobby: the origin protocol, the sender's display name N and the text
/// T (contract rule 2; [`LobbyMessage::from_room`] and its siblings say where N and T come
/// from). It reaches every lobby member of the other protocols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LobbyMessage {
    pub origin: ProtocolKind,
    pub sender: Bytes,
    pub text: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceKind {
    Entered,
    Left,
}

/// A user entered or left the lobby (contract rule 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    pub origin: ProtocolKind,
    pub name: Bytes,
    pub kind: PresenceKind,
}

/// A message from one named user to another across protocols (contract rule 4: BIN24 and
/// CCM). `message_id` is BIN24's: the BIN24 sender's own for a message from BIN24, the hub's
/// counter for the CCM sender for a message from CCM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectMessage {
    pub origin: ProtocolKind,
    pub sender: Bytes,
    pub recipient: Bytes,
    pub message_id: u32,
    pub body: Bytes,
}

/// [`Addressed::kind`] of a web user's `direct` to a CCM or web user of another node.
pub const WEB_DIRECT_KIND: &[u8] = b"web";
/// [`Addressed::kind`] of the receipt that comes back for it: `body` is `delivered` or
/// `not-delivered`, `recipient` the web sender, `request` its request's id.
pub const WEB_RECEIPT_KIND: &[u8] = b"web-sent";

/// A direct message to a named user whom another node holds (the cluster): for that node
/// only, which hands it to its user in that user's form. From a CCM user (`kind` is CCM's
/// message type) or a web user ([`WEB_DIRECT_KIND`], whose receipt comes back as
/// [`WEB_RECEIPT_KIND`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressed {
    /// The node that holds the addressee, and its incarnation (a restarted node is another).
    pub to_node: Bytes,
    pub to_incarnation: u64,
    /// CCM's message type (`Text`, `Raw`, `Audio`, `Streaming`).
    pub kind: Bytes,
    pub sender: Bytes,
    pub recipient: Bytes,
    pub encoding: Bytes,
    pub body: Bytes,
    /// The node that sent it (filled in when it is published; a receipt goes back there).
    pub from_node: Bytes,
    pub from_incarnation: u64,
    /// A web sender's request id, for its `sent` or `error`.
    pub request: Option<u64>,
}

/// Which step of MATOU's brokered private link crosses to another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivateStep {
    /// Src asks Dst (Dst's node notifies Dst).
    Request,
    /// Dst accepts (Src's node gives Src Dst's address).
    Accept,
    /// Src gives its ports (Dst's node gives Dst Src's address and ports).
    SrcPorts,
}

/// A step of a MATOU private link between users on two nodes: for the node named only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrivateLink {
    pub to_node: Bytes,
    pub to_incarnation: u64,
    /// The node that sent it, for the answer (filled in when it is published).
    pub from_node: Bytes,
    pub from_incarnation: u64,
    pub step: PrivateStep,
    pub src: Bytes,
    pub dst: Bytes,
    /// The sending user's address (Dst's at `Accept`, Src's at `SrcPorts`): 4 or 16 bytes,
    /// empty at `Request`.
    pub address: Bytes,
    pub message_port: i32,
    pub file_port: i32,
}

/// What a BIN24 frame crossing to another node is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bin24Step {
    /// A message (type 0) for the target node's BIN24 user named by its DST: delivered live
    /// there (rule 3, the answer timer kept there) or stored there (rules 4 and 6).
    Message,
    /// An answer for the target node's BIN24 user named by its DST: the recipient's own
    /// type-1 frame, verbatim (rule 5), or the node's "300" / "507" for a frame it stored.
    Answer,
    /// A message (type 0) sent to the node the sender's node's location cache named, without
    /// a look-up: as [`Bin24Step::Message`] if a user of the target node holds its DST, else
    /// sent back ([`Bin24Step::Bounced`]), not stored there.
    CachedMessage,
    /// A [`Bin24Step::CachedMessage`] sent back, verbatim, by a node where nobody holds its
    /// DST: the sender's node locates it again (custody is still its).
    Bounced,
    /// A notice, not a message: the sending node stored a frame for the BIN24 user named by
    /// the frame's DST (the frame is that stored frame's 24-byte header, its length field 24)
    /// while that user is online on the target node, as far as it knows (its crossing there
    /// timed out, or its location cache names it). The target node, if the user is online
    /// there, loads it with the user's backlog on the same connection. A node that predates
    /// this step refuses the event as malformed (a rolling upgrade: the frame waits for the
    /// next login, as before).
    Stored,
}

/// A BIN24 frame for a user of another node: for the node named only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bin24Relay {
    pub to_node: Bytes,
    pub to_incarnation: u64,
    /// The node that sent it, where the answer goes (filled in when it is published).
    pub from_node: Bytes,
    pub from_incarnation: u64,
    pub step: Bin24Step,
    /// The whole frame, as BIN24's wire has it (24..=1024 bytes, its own length first).
    pub frame: Bytes,
}

/// What an OCM room event says (`OcmRoomEvent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcmStep {
    /// `member` joined through its home node (the others learn who is in the room, so that
    /// they can tell their own members when that node dies).
    Joined,
    /// `member` said `text` (already `<name>: <message>`), from the address `from`: every
    /// node sends it to its own members of the room; the member's home node takes it as the
    /// member's sign of life (its idle time, its address).
    Chat,
    /// `member` left (exit, idle, unreachable): `text` is its leave text.
    Left,
    /// The room is closed (its host left, or nobody spoke): `text` is the host's leave text.
    Closed,
}

/// A step of an OCM room that spans nodes (issue 21): for every node that has members in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcmRoomEvent {
    pub step: OcmStep,
    pub room: Bytes,
    /// Tells a room apart from a later one of the same name (random per room).
    pub room_id: u64,
    pub member: Bytes,
    /// The member's home node (where its TCRP request was answered) and its incarnation.
    pub home_node: Bytes,
    pub home_incarnation: u64,
    /// `Chat`: where the datagram came from (its sender's address now).
    pub from: Option<std::net::SocketAddr>,
    /// `Chat`: the line went to the lobby too (the OCM lobby room): the other nodes' members
    /// get it from the lobby (`Said`), not again from this event.
    pub in_lobby: bool,
    pub text: Bytes,
}

/// One thing the hub acted on: the unit that will cross node boundaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    Said(LobbyMessage),
    Presence(Presence),
    Direct(DirectMessage),
    /// Boxed: far larger than the others, and rare beside lobby traffic.
    Addressed(Box<Addressed>),
    Private(Box<PrivateLink>),
    Bin24(Box<Bin24Relay>),
    /// An OCM room's step, for every node (OCM rooms across nodes).
    Ocm(Box<OcmRoomEvent>),
}
