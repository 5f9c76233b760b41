//! The cluster's message format: one hub event, with the node that published it and that
//! node's sequence number, in a small explicit binary form (version 1).
//!
//! ```text
//! u8   version (1)
//! u8   node name length (1..=NODE_NAME_BYTES_MAX), then the node name
//! u64  incarnation of that node (random per process, big-endian)
//! u64  sequence number of this event on that node (big-endian, from 1)
//! u8   event tag: 1 = Said, 2 = Presence, 3 = Addressed, 4 = Private, 6 = Bin24, 7 = Ocm
//! Said:      u8 origin protocol (ProtocolKind::index), u16 sender length + sender,
//!            u32 text length + text
//! Presence:  u8 origin protocol, u8 kind (0 entered, 1 left), u16 name length + name
//! Addressed: u8 target node length (1..=64) + target node, u64 target incarnation,
//!            u8 CCM type length (<= 16) + type, u16 sender length + sender,
//!            u16 addressee length + addressee, u8 encoding length (<= 64) + encoding,
//!            u32 content length + content, u8 sending node length (0..=64) + sending
//!            node (empty for a CCM sender's: nothing comes back), u64 its incarnation,
//!            u8 request flag (0 none, 1: a u64 request id follows, a web sender's)
//! Private:   u8 target node length (1..=64) + target node, u64 target incarnation,
//!            u8 sending node length (1..=64) + sending node, u64 its incarnation,
//!            u8 step (0 request, 1 accept, 2 source ports), u16 Src length + Src,
//!            u16 Dst length + Dst, u8 address length (<= 16) + address,
//!            i32 message port, i32 file port
//! Bin24:     u8 target node length (1..=64) + target node, u64 target incarnation,
//!            u8 sending node length (1..=64) + sending node, u64 its incarnation,
//!            u8 step (0 message, 1 answer, 2 message from the location cache, 3 sent back,
//!            4 a frame was stored for its DST: that stored frame's header),
//!            u16 frame length (24..=1024) + the BIN24 frame,
//!            whose own length field (u16 little-endian, its first two bytes) is that length
//! Ocm:       u8 step (0 joined, 1 chat, 2 left, 3 closed), u8 room length (1..=255) + room,
//!            u64 room id, u16 member length + member, u8 home node length (1..=64) + home
//!            node, u64 its incarnation, u8 address length (0, 4 or 16) + address + u16 port
//!            (present only with an address), u8 in_lobby (0 or 1), u16 text length (<= 4096)
//!            + text
//! ```
//!
//! A node's lobby roster (tag 3, [`encode_roster`]) shares the header and the sequence:
//!
//! ```text
//! u8   tag 3 (no origin byte)
//! u64  reply_to: the incarnation of the node whose request it answers (0: none)
//! u8   asks: 1 when the sender asks every other node for its roster, else 0
//! u32  entries (<= ROSTER_ENTRIES_MAX), each: u8 origin protocol,
//!      u16 name length + name, u32 count (>= 1: ROOM names may repeat)
//! ```
//!
//! Hand-written rather than serde: the events are three fields of bytes, every length is
//! bounded here (a message from Redis is input like any other), and decoding shares the
//! payload's buffer (`Bytes::slice`) instead of copying the text. Anything else (an unknown
//! version, tag or protocol, a length past its bound or past the end, trailing bytes) is a
//! [`DecodeError`], never a panic.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::hub::{
    Addressed, Bin24Relay, Bin24Step, HubEvent, LobbyMessage, OcmRoomEvent, OcmStep, Presence,
    PresenceKind, PrivateLink, PrivateStep, ProtocolKind,
};

pub const VERSION: u8 = 1;
/// Longest node name (`--node-name`).
pub const NODE_NAME_BYTES_MAX: usize = 64;
/// Longest sender or presence name: far above every protocol's own name limit.
pub const NAME_BYTES_MAX: usize = 1024;
/// Longest lobby text: above every protocol's own line limit (ROOM's is the largest).
pub const TEXT_BYTES_MAX: usize = 1 << 20;

/// Longest CCM message type carried (`Streaming` is the longest CCM has).
pub const KIND_BYTES_MAX: usize = 16;
/// Longest Message-Encoding carried.
pub const ENCODING_BYTES_MAX: usize = 64;

const TAG_SAID: u8 = 1;
const TAG_PRESENCE: u8 = 2;
const TAG_ADDRESSED: u8 = 3;
const TAG_PRIVATE: u8 = 4;
const TAG_ROSTER: u8 = 5;
const TAG_BIN24: u8 = 6;
const TAG_OCM: u8 = 7;

/// Longest OCM room name carried (RoomNameSize is one byte).
pub const OCM_ROOM_BYTES_MAX: usize = 255;
/// Longest OCM text carried: above OCM's own 4094-byte texts.
pub const OCM_TEXT_BYTES_MAX: usize = 4096;

/// A carried BIN24 frame's bounds: BIN24's own (its header, and its longest frame).
pub const BIN24_FRAME_BYTES_MIN: usize = 24;
pub const BIN24_FRAME_BYTES_MAX: usize = 1024;

/// Whether `frame` is a whole BIN24 frame as its wire has it: within BIN24's bounds, its own
/// length field saying its length (so the receiving node can hand it on verbatim).
pub fn is_bin24_frame(frame: &[u8]) -> bool {
    (BIN24_FRAME_BYTES_MIN..=BIN24_FRAME_BYTES_MAX).contains(&frame.len())
        && usize::from(u16::from_le_bytes([frame[0], frame[1]])) == frame.len()
}

/// Longest address carried (IPv6).
pub const ADDRESS_BYTES_MAX: usize = 16;
/// Most entries of one roster: a node with more lobby members (each distinct name in each
/// protocol is one entry) sends none (a partial roster would announce the rest gone).
pub const ROSTER_ENTRIES_MAX: usize = 100_000;

/// One event as it crosses Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub node: Bytes,
    pub incarnation: u64,
    pub seq: u64,
    pub event: HubEvent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// Direct messages do not cross nodes yet.
    NotCarried,
    TooLong(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Version(u8),
    Truncated,
    TooLong(&'static str),
    EmptyNodeName,
    Tag(u8),
    Protocol(u8),
    PresenceKind(u8),
    Step(u8),
    Trailing(usize),
    /// A roster entry with a count of 0, or `asks` other than 0 or 1.
    Roster,
    /// A carried BIN24 frame whose own length field is not its length.
    Bin24Frame,
    /// An OCM address of another length than 0, 4 or 16, or a bad in_lobby flag.
    Ocm,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Version(v) => write!(f, "unknown format version {v}"),
            DecodeError::Truncated => write!(f, "truncated"),
            DecodeError::TooLong(what) => write!(f, "{what} longer than allowed"),
            DecodeError::EmptyNodeName => write!(f, "empty node name"),
            DecodeError::Tag(tag) => write!(f, "unknown event tag {tag}"),
            DecodeError::Protocol(p) => write!(f, "unknown protocol {p}"),
            DecodeError::PresenceKind(k) => write!(f, "unknown presence kind {k}"),
            DecodeError::Step(s) => write!(f, "unknown private link step {s}"),
            DecodeError::Trailing(n) => write!(f, "{n} bytes after the event"),
            DecodeError::Roster => write!(f, "a roster entry counts 0, or a bad asks flag"),
            DecodeError::Bin24Frame => {
                write!(f, "a BIN24 frame whose length field is not its length")
            }
            DecodeError::Ocm => write!(f, "a bad OCM address length or in_lobby flag"),
        }
    }
}

pub fn encode(
    node: &[u8],
    incarnation: u64,
    seq: u64,
    event: &HubEvent,
) -> Result<Bytes, EncodeError> {
    let mut out = header_out(node, incarnation, seq, 64)?;
    match event {
        HubEvent::Said(said) => {
            if said.sender.len() > NAME_BYTES_MAX {
                return Err(EncodeError::TooLong("sender"));
            }
            if said.text.len() > TEXT_BYTES_MAX {
                return Err(EncodeError::TooLong("text"));
            }
            out.reserve(8 + said.sender.len() + said.text.len());
            out.put_u8(TAG_SAID);
            out.put_u8(said.origin.index() as u8);
            out.put_u16(said.sender.len() as u16);
            out.put_slice(&said.sender);
            out.put_u32(said.text.len() as u32);
            out.put_slice(&said.text);
        }
        HubEvent::Presence(presence) => {
            if presence.name.len() > NAME_BYTES_MAX {
                return Err(EncodeError::TooLong("name"));
            }
            out.put_u8(TAG_PRESENCE);
            out.put_u8(presence.origin.index() as u8);
            out.put_u8(match presence.kind {
                PresenceKind::Entered => 0,
                PresenceKind::Left => 1,
            });
            out.put_u16(presence.name.len() as u16);
            out.put_slice(&presence.name);
        }
        HubEvent::Direct(_) => return Err(EncodeError::NotCarried),
        HubEvent::Addressed(addressed) => {
            let bounds = [
                (addressed.to_node.len(), NODE_NAME_BYTES_MAX, "target node"),
                (addressed.kind.len(), KIND_BYTES_MAX, "type"),
                (addressed.sender.len(), NAME_BYTES_MAX, "sender"),
                (addressed.recipient.len(), NAME_BYTES_MAX, "addressee"),
                (addressed.encoding.len(), ENCODING_BYTES_MAX, "encoding"),
                (addressed.body.len(), TEXT_BYTES_MAX, "content"),
                (
                    addressed.from_node.len(),
                    NODE_NAME_BYTES_MAX,
                    "sending node",
                ),
            ];
            if let Some(&(_, _, what)) = bounds.iter().find(|(len, max, _)| len > max) {
                return Err(EncodeError::TooLong(what));
            }
            if addressed.to_node.is_empty() {
                return Err(EncodeError::TooLong("target node"));
            }
            out.reserve(32 + bounds.iter().map(|(len, _, _)| len).sum::<usize>());
            out.put_u8(TAG_ADDRESSED);
            out.put_u8(addressed.to_node.len() as u8);
            out.put_slice(&addressed.to_node);
            out.put_u64(addressed.to_incarnation);
            out.put_u8(addressed.kind.len() as u8);
            out.put_slice(&addressed.kind);
            out.put_u16(addressed.sender.len() as u16);
            out.put_slice(&addressed.sender);
            out.put_u16(addressed.recipient.len() as u16);
            out.put_slice(&addressed.recipient);
            out.put_u8(addressed.encoding.len() as u8);
            out.put_slice(&addressed.encoding);
            out.put_u32(addressed.body.len() as u32);
            out.put_slice(&addressed.body);
            out.put_u8(addressed.from_node.len() as u8);
            out.put_slice(&addressed.from_node);
            out.put_u64(addressed.from_incarnation);
            match addressed.request {
                None => out.put_u8(0),
                Some(request) => {
                    out.put_u8(1);
                    out.put_u64(request);
                }
            }
        }
        HubEvent::Private(link) => {
            let bounds = [
                (link.to_node.len(), NODE_NAME_BYTES_MAX, "target node"),
                (link.from_node.len(), NODE_NAME_BYTES_MAX, "sending node"),
                (link.src.len(), NAME_BYTES_MAX, "src"),
                (link.dst.len(), NAME_BYTES_MAX, "dst"),
                (link.address.len(), ADDRESS_BYTES_MAX, "address"),
            ];
            if let Some(&(_, _, what)) = bounds.iter().find(|(len, max, _)| len > max) {
                return Err(EncodeError::TooLong(what));
            }
            if link.to_node.is_empty() || link.from_node.is_empty() {
                return Err(EncodeError::TooLong("node"));
            }
            out.put_u8(TAG_PRIVATE);
            out.put_u8(link.to_node.len() as u8);
            out.put_slice(&link.to_node);
            out.put_u64(link.to_incarnation);
            out.put_u8(link.from_node.len() as u8);
            out.put_slice(&link.from_node);
            out.put_u64(link.from_incarnation);
            out.put_u8(match link.step {
                PrivateStep::Request => 0,
                PrivateStep::Accept => 1,
                PrivateStep::SrcPorts => 2,
            });
            out.put_u16(link.src.len() as u16);
            out.put_slice(&link.src);
            out.put_u16(link.dst.len() as u16);
            out.put_slice(&link.dst);
            out.put_u8(link.address.len() as u8);
            out.put_slice(&link.address);
            out.put_i32(link.message_port);
            out.put_i32(link.file_port);
        }
        HubEvent::Bin24(relay) => {
            if relay.to_node.is_empty()
                || relay.from_node.is_empty()
                || relay.to_node.len() > NODE_NAME_BYTES_MAX
                || relay.from_node.len() > NODE_NAME_BYTES_MAX
            {
                return Err(EncodeError::TooLong("node"));
            }
            if !is_bin24_frame(&relay.frame) {
                return Err(EncodeError::TooLong("BIN24 frame"));
            }
            out.reserve(24 + relay.to_node.len() + relay.from_node.len() + relay.frame.len());
            out.put_u8(TAG_BIN24);
            out.put_u8(relay.to_node.len() as u8);
            out.put_slice(&relay.to_node);
            out.put_u64(relay.to_incarnation);
            out.put_u8(relay.from_node.len() as u8);
            out.put_slice(&relay.from_node);
            out.put_u64(relay.from_incarnation);
            out.put_u8(match relay.step {
                Bin24Step::Message => 0,
                Bin24Step::Answer => 1,
                Bin24Step::CachedMessage => 2,
                Bin24Step::Bounced => 3,
                Bin24Step::Stored => 4,
            });
            out.put_u16(relay.frame.len() as u16);
            out.put_slice(&relay.frame);
        }
        HubEvent::Ocm(event) => encode_ocm(event, &mut out)?,
    }
    Ok(out.freeze())
}

fn encode_ocm(event: &OcmRoomEvent, out: &mut BytesMut) -> Result<(), EncodeError> {
    if event.room.is_empty() || event.room.len() > OCM_ROOM_BYTES_MAX {
        return Err(EncodeError::TooLong("room"));
    }
    if event.home_node.is_empty() || event.home_node.len() > NODE_NAME_BYTES_MAX {
        return Err(EncodeError::TooLong("node"));
    }
    if event.member.len() > NAME_BYTES_MAX {
        return Err(EncodeError::TooLong("member"));
    }
    if event.text.len() > OCM_TEXT_BYTES_MAX {
        return Err(EncodeError::TooLong("text"));
    }
    out.reserve(48 + event.room.len() + event.member.len() + event.text.len());
    out.put_u8(TAG_OCM);
    out.put_u8(match event.step {
        OcmStep::Joined => 0,
        OcmStep::Chat => 1,
        OcmStep::Left => 2,
        OcmStep::Closed => 3,
    });
    out.put_u8(event.room.len() as u8);
    out.put_slice(&event.room);
    out.put_u64(event.room_id);
    out.put_u16(event.member.len() as u16);
    out.put_slice(&event.member);
    out.put_u8(event.home_node.len() as u8);
    out.put_slice(&event.home_node);
    out.put_u64(event.home_incarnation);
    match event.from {
        None => out.put_u8(0),
        Some(SocketAddr::V4(v4)) => {
            out.put_u8(4);
            out.put_slice(&v4.ip().octets());
            out.put_u16(v4.port());
        }
        Some(SocketAddr::V6(v6)) => {
            out.put_u8(16);
            out.put_slice(&v6.ip().octets());
            out.put_u16(v6.port());
        }
    }
    out.put_u8(u8::from(event.in_lobby));
    out.put_u16(event.text.len() as u16);
    out.put_slice(&event.text);
    Ok(())
}

fn decode_ocm(r: &mut Reader) -> Result<OcmRoomEvent, DecodeError> {
    let step = match r.u8()? {
        0 => OcmStep::Joined,
        1 => OcmStep::Chat,
        2 => OcmStep::Left,
        3 => OcmStep::Closed,
        other => return Err(DecodeError::Step(other)),
    };
    let room = r.field(1, OCM_ROOM_BYTES_MAX, "room")?;
    if room.is_empty() {
        return Err(DecodeError::TooLong("room"));
    }
    let room_id = r.uint(8)?;
    let member = r.field(2, NAME_BYTES_MAX, "member")?;
    let home_node = r.field(1, NODE_NAME_BYTES_MAX, "node")?;
    if home_node.is_empty() {
        return Err(DecodeError::EmptyNodeName);
    }
    let home_incarnation = r.uint(8)?;
    let from = match r.u8()? {
        0 => None,
        4 => {
            let ip = r.take(4)?;
            let ip = std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            Some(SocketAddr::from((ip, r.uint(2)? as u16)))
        }
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&r.take(16)?);
            let ip = std::net::Ipv6Addr::from(octets);
            Some(SocketAddr::from((ip, r.uint(2)? as u16)))
        }
        _ => return Err(DecodeError::Ocm),
    };
    let in_lobby = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::Ocm),
    };
    let text = r.field(2, OCM_TEXT_BYTES_MAX, "text")?;
    Ok(OcmRoomEvent {
        step,
        room,
        room_id,
        member,
        home_node,
        home_incarnation,
        from,
        in_lobby,
        text,
    })
}

/// Reads `payload` front to back; every slice shares its buffer.
struct Reader {
    payload: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        if end > self.payload.len() {
            return Err(DecodeError::Truncated);
        }
        let bytes = self.payload.slice(self.at..end);
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, width: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0u64, |n, &b| (n << 8) | u64::from(b)))
    }

    fn field(
        &mut self,
        width: usize,
        max: usize,
        what: &'static str,
    ) -> Result<Bytes, DecodeError> {
        let len = self.uint(width)?;
        if len > max as u64 {
            return Err(DecodeError::TooLong(what));
        }
        self.take(len as usize)
    }
}

fn protocol(byte: u8) -> Result<ProtocolKind, DecodeError> {
    ProtocolKind::ALL
        .get(byte as usize)
        .copied()
        .ok_or(DecodeError::Protocol(byte))
}

/// The version, node name, incarnation and sequence number every message starts with.
fn header(r: &mut Reader) -> Result<(Bytes, u64, u64), DecodeError> {
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let node = r.field(1, NODE_NAME_BYTES_MAX, "node name")?;
    if node.is_empty() {
        return Err(DecodeError::EmptyNodeName);
    }
    let incarnation = r.uint(8)?;
    let seq = r.uint(8)?;
    Ok((node, incarnation, seq))
}

fn header_out(
    node: &[u8],
    incarnation: u64,
    seq: u64,
    capacity: usize,
) -> Result<BytesMut, EncodeError> {
    if node.is_empty() || node.len() > NODE_NAME_BYTES_MAX {
        return Err(EncodeError::TooLong("node name"));
    }
    let mut out = BytesMut::with_capacity(capacity);
    out.put_u8(VERSION);
    out.put_u8(node.len() as u8);
    out.put_slice(node);
    out.put_u64(incarnation);
    out.put_u64(seq);
    Ok(out)
}

pub fn decode(payload: Bytes) -> Result<Envelope, DecodeError> {
    let mut r = Reader { payload, at: 0 };
    let (node, incarnation, seq) = header(&mut r)?;
    let event = match r.u8()? {
        TAG_SAID => {
            let origin = protocol(r.u8()?)?;
            let sender = r.field(2, NAME_BYTES_MAX, "sender")?;
            let text = r.field(4, TEXT_BYTES_MAX, "text")?;
            HubEvent::Said(LobbyMessage {
                origin,
                sender,
                text,
            })
        }
        TAG_PRESENCE => {
            let origin = protocol(r.u8()?)?;
            let kind = match r.u8()? {
                0 => PresenceKind::Entered,
                1 => PresenceKind::Left,
                other => return Err(DecodeError::PresenceKind(other)),
            };
            let name = r.field(2, NAME_BYTES_MAX, "name")?;
            HubEvent::Presence(Presence { origin, name, kind })
        }
        TAG_ADDRESSED => {
            let to_node = r.field(1, NODE_NAME_BYTES_MAX, "target node")?;
            if to_node.is_empty() {
                return Err(DecodeError::EmptyNodeName);
            }
            HubEvent::Addressed(Box::new(Addressed {
                to_node,
                to_incarnation: r.uint(8)?,
                kind: r.field(1, KIND_BYTES_MAX, "type")?,
                sender: r.field(2, NAME_BYTES_MAX, "sender")?,
                recipient: r.field(2, NAME_BYTES_MAX, "addressee")?,
                encoding: r.field(1, ENCODING_BYTES_MAX, "encoding")?,
                body: r.field(4, TEXT_BYTES_MAX, "content")?,
                from_node: r.field(1, NODE_NAME_BYTES_MAX, "sending node")?,
                from_incarnation: r.uint(8)?,
                request: match r.u8()? {
                    0 => None,
                    1 => Some(r.uint(8)?),
                    other => return Err(DecodeError::Step(other)),
                },
            }))
        }
        TAG_PRIVATE => {
            let to_node = r.field(1, NODE_NAME_BYTES_MAX, "target node")?;
            let to_incarnation = r.uint(8)?;
            let from_node = r.field(1, NODE_NAME_BYTES_MAX, "sending node")?;
            if to_node.is_empty() || from_node.is_empty() {
                return Err(DecodeError::EmptyNodeName);
            }
            let from_incarnation = r.uint(8)?;
            let step = match r.u8()? {
                0 => PrivateStep::Request,
                1 => PrivateStep::Accept,
                2 => PrivateStep::SrcPorts,
                other => return Err(DecodeError::Step(other)),
            };
            HubEvent::Private(Box::new(PrivateLink {
                to_node,
                to_incarnation,
                from_node,
                from_incarnation,
                step,
                src: r.field(2, NAME_BYTES_MAX, "src")?,
                dst: r.field(2, NAME_BYTES_MAX, "dst")?,
                address: r.field(1, ADDRESS_BYTES_MAX, "address")?,
                message_port: r.uint(4)? as u32 as i32,
                file_port: r.uint(4)? as u32 as i32,
            }))
        }
        TAG_BIN24 => {
            let to_node = r.field(1, NODE_NAME_BYTES_MAX, "target node")?;
            let to_incarnation = r.uint(8)?;
            let from_node = r.field(1, NODE_NAME_BYTES_MAX, "sending node")?;
            if to_node.is_empty() || from_node.is_empty() {
                return Err(DecodeError::EmptyNodeName);
            }
            let from_incarnation = r.uint(8)?;
            let step = match r.u8()? {
                0 => Bin24Step::Message,
                1 => Bin24Step::Answer,
                2 => Bin24Step::CachedMessage,
                3 => Bin24Step::Bounced,
                4 => Bin24Step::Stored,
                other => return Err(DecodeError::Step(other)),
            };
            let frame = r.field(2, BIN24_FRAME_BYTES_MAX, "BIN24 frame")?;
            if !is_bin24_frame(&frame) {
                return Err(DecodeError::Bin24Frame);
            }
            HubEvent::Bin24(Box::new(Bin24Relay {
                to_node,
                to_incarnation,
                from_node,
                from_incarnation,
                step,
                frame,
            }))
        }
        TAG_OCM => HubEvent::Ocm(Box::new(decode_ocm(&mut r)?)),
        tag => return Err(DecodeError::Tag(tag)),
    };
    let left = r.payload.len() - r.at;
    if left > 0 {
        return Err(DecodeError::Trailing(left));
    }
    Ok(Envelope {
        node,
        incarnation,
        seq,
        event,
    })
}

/// One protocol's lobby members of one name on a node: ROOM's display names may repeat.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RosterEntry {
    pub origin: ProtocolKind,
    pub name: Bytes,
    pub count: u32,
}

/// A node's whole lobby, at a point of its sequence: what the other nodes reconcile their
/// view of it with after they, or it, missed events (docs/CLUSTER.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roster {
    /// The incarnation of the node whose request this answers; 0 when none.
    pub reply_to: u64,
    /// The sender asks every other node for its roster (its link to Redis is new).
    pub asks: bool,
    pub members: Vec<RosterEntry>,
}

/// A roster as it crosses Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterEnvelope {
    pub node: Bytes,
    pub incarnation: u64,
    pub seq: u64,
    pub roster: Roster,
}

/// Anything on the lobby channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Event(Envelope),
    Roster(RosterEnvelope),
}

pub fn encode_roster(
    node: &[u8],
    incarnation: u64,
    seq: u64,
    roster: &Roster,
) -> Result<Bytes, EncodeError> {
    if roster.members.len() > ROSTER_ENTRIES_MAX {
        return Err(EncodeError::TooLong("roster"));
    }
    let mut out = header_out(node, incarnation, seq, 64 + roster.members.len() * 16)?;
    out.put_u8(TAG_ROSTER);
    out.put_u64(roster.reply_to);
    out.put_u8(u8::from(roster.asks));
    out.put_u32(roster.members.len() as u32);
    for entry in &roster.members {
        if entry.name.len() > NAME_BYTES_MAX {
            return Err(EncodeError::TooLong("name"));
        }
        out.put_u8(entry.origin.index() as u8);
        out.put_u16(entry.name.len() as u16);
        out.put_slice(&entry.name);
        out.put_u32(entry.count);
    }
    Ok(out.freeze())
}

/// An event ([`decode`]) or a roster.
pub fn decode_message(payload: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader {
        payload: payload.clone(),
        at: 0,
    };
    let (node, incarnation, seq) = header(&mut r)?;
    if r.payload.get(r.at) != Some(&TAG_ROSTER) {
        return decode(payload).map(Message::Event);
    }
    r.at += 1;
    let reply_to = r.uint(8)?;
    let asks = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::Roster),
    };
    let entries = r.uint(4)? as usize;
    if entries > ROSTER_ENTRIES_MAX {
        return Err(DecodeError::TooLong("roster"));
    }
    // Each entry takes at least 7 bytes: no allocation beyond what the payload can hold.
    let mut members = Vec::with_capacity(entries.min((r.payload.len() - r.at) / 7));
    for _ in 0..entries {
        let origin = protocol(r.u8()?)?;
        let name = r.field(2, NAME_BYTES_MAX, "name")?;
        let count = r.uint(4)? as u32;
        if count == 0 {
            return Err(DecodeError::Roster);
        }
        members.push(RosterEntry {
            origin,
            name,
            count,
        });
    }
    let left = r.payload.len() - r.at;
    if left > 0 {
        return Err(DecodeError::Trailing(left));
    }
    Ok(Message::Roster(RosterEnvelope {
        node,
        incarnation,
        seq,
        roster: Roster {
            reply_to,
            asks,
            members,
        },
    }))
}

#[cfg(test)]
mod roster_tests {
    use super::*;

    fn roster() -> Roster {
        Roster {
            reply_to: 0xfeed,
            asks: true,
            members: vec![
                RosterEntry {
                    origin: ProtocolKind::Room,
                    name: Bytes::from_static(b"rui"),
                    count: 2,
                },
                RosterEntry {
                    origin: ProtocolKind::Ocm,
                    name: Bytes::new(),
                    count: 1,
                },
            ],
        }
    }

    #[test]
    fn a_roster_round_trips_and_an_event_still_decodes_as_one() {
        for roster in [
            roster(),
            Roster {
                reply_to: 0,
                asks: false,
                members: Vec::new(),
            },
        ] {
            let wire = encode_roster(b"node-a", 5, 9, &roster).unwrap();
            assert_eq!(
                decode_message(wire.clone()),
                Ok(Message::Roster(RosterEnvelope {
                    node: Bytes::from_static(b"node-a"),
                    incarnation: 5,
                    seq: 9,
                    roster,
                }))
            );
            // Not an event: `decode` refuses it.
            assert_eq!(decode(wire), Err(DecodeError::Tag(TAG_ROSTER)));
        }
        let event = HubEvent::Presence(Presence {
            origin: ProtocolKind::Matou,
            name: Bytes::from_static(b"mia"),
            kind: PresenceKind::Entered,
        });
        let wire = encode(b"n", 1, 2, &event).unwrap();
        assert_eq!(
            decode_message(wire.clone()),
            Ok(Message::Event(decode(wire).unwrap()))
        );
    }

    #[test]
    fn a_bad_roster_is_an_error_never_a_panic() {
        let good = encode_roster(b"ab", 3, 7, &roster()).unwrap();
        for len in 0..good.len() {
            assert_eq!(
                decode_message(good.slice(..len)),
                Err(DecodeError::Truncated),
                "at {len}"
            );
        }
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(
            decode_message(trailing.into()),
            Err(DecodeError::Trailing(1))
        );
        // Header 20 bytes, tag, reply_to 8, asks at 29, entries at 30..34, first entry at 34.
        let mut asks = good.to_vec();
        asks[29] = 2;
        assert_eq!(decode_message(asks.into()), Err(DecodeError::Roster));
        let mut entries = good.to_vec();
        entries[30..34].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_message(entries.into()),
            Err(DecodeError::TooLong("roster"))
        );
        let mut more = good.to_vec();
        more[33] = 3;
        assert_eq!(decode_message(more.into()), Err(DecodeError::Truncated));
        let mut origin = good.to_vec();
        origin[34] = 9;
        assert_eq!(decode_message(origin.into()), Err(DecodeError::Protocol(9)));
        let mut zero = good.to_vec();
        zero[40..44].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(decode_message(zero.into()), Err(DecodeError::Roster));
        let too_many = Roster {
            members: vec![roster().members[0].clone(); ROSTER_ENTRIES_MAX + 1],
            ..roster()
        };
        assert_eq!(
            encode_roster(b"ab", 1, 1, &too_many),
            Err(EncodeError::TooLong("roster"))
        );
        // Arbitrary bytes: errors or rosters that re-encode to the same bytes.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = good.to_vec();
            bytes.truncate(((state % 64) as usize).max(1));
            let at = (state >> 8) as usize % bytes.len();
            bytes[at] = (state >> 16) as u8;
            let bytes = Bytes::from(bytes);
            if let Ok(Message::Roster(back)) = decode_message(bytes.clone()) {
                let again = encode_roster(&back.node, back.incarnation, back.seq, &back.roster);
                assert_eq!(again.as_deref(), Ok(&bytes[..]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::DirectMessage;

    fn said(sender: &str, text: &[u8]) -> HubEvent {
        HubEvent::Said(LobbyMessage {
            origin: ProtocolKind::Matou,
            sender: Bytes::copy_from_slice(sender.as_bytes()),
            text: Bytes::copy_from_slice(text),
        })
    }

    fn presence(kind: PresenceKind) -> HubEvent {
        HubEvent::Presence(Presence {
            origin: ProtocolKind::Room,
            name: Bytes::from_static(b"b'rui'"),
            kind,
        })
    }

    #[test]
    fn every_carried_event_round_trips() {
        let events = [
            said("mia", b"hello"),
            said("", b""),
            said("x", &[0, 255, b'\n', 0xc3]),
            presence(PresenceKind::Entered),
            presence(PresenceKind::Left),
        ];
        for (seq, event) in events.into_iter().enumerate() {
            let wire = encode(b"node-a", 5, seq as u64 + 1, &event).unwrap();
            let back = decode(wire).unwrap();
            assert_eq!(back.node, Bytes::from_static(b"node-a"));
            assert_eq!(back.incarnation, 5);
            assert_eq!(back.seq, seq as u64 + 1);
            assert_eq!(back.event, event);
        }
        for origin in ProtocolKind::ALL {
            let event = HubEvent::Said(LobbyMessage {
                origin,
                sender: Bytes::from_static(b"n"),
                text: Bytes::from_static(b"t"),
            });
            assert_eq!(
                decode(encode(b"n", u64::MAX, u64::MAX, &event).unwrap())
                    .unwrap()
                    .event,
                event
            );
        }
    }

    fn addressed(body: &[u8]) -> HubEvent {
        HubEvent::Addressed(Box::new(Addressed {
            to_node: Bytes::from_static(b"node-b"),
            to_incarnation: 0xfeed,
            kind: Bytes::from_static(b"Text"),
            sender: Bytes::from_static(b"cid"),
            recipient: Bytes::from_static(b"cat"),
            encoding: Bytes::from_static(b"utf-8"),
            body: Bytes::copy_from_slice(body),
            from_node: Bytes::new(),
            from_incarnation: 0,
            request: None,
        }))
    }

    /// A web user's `direct` for node-b, its receipt to come back to node-a.
    fn web_direct(request: Option<u64>) -> HubEvent {
        HubEvent::Addressed(Box::new(Addressed {
            to_node: Bytes::from_static(b"node-b"),
            to_incarnation: 0xfeed,
            kind: Bytes::from_static(crate::hub::WEB_DIRECT_KIND),
            sender: Bytes::from_static(b"wes"),
            recipient: Bytes::from_static(b"cat"),
            encoding: Bytes::from_static(b"utf-8"),
            body: Bytes::from_static(b"hi"),
            from_node: Bytes::from_static(b"node-a"),
            from_incarnation: 0xbeef,
            request,
        }))
    }

    #[test]
    fn a_web_direct_message_round_trips_with_its_sending_node_and_request() {
        for event in [
            web_direct(Some(42)),
            web_direct(None),
            web_direct(Some(u64::MAX)),
        ] {
            assert_eq!(
                decode(encode(b"node-a", 5, 9, &event).unwrap())
                    .unwrap()
                    .event,
                event
            );
        }
        let wire = encode(b"a", 1, 2, &web_direct(Some(42))).unwrap();
        let tail = [
            &[6][..],
            b"node-a",
            &0xbeef_u64.to_be_bytes(),
            &[1],
            &42_u64.to_be_bytes(),
        ]
        .concat();
        assert!(wire.ends_with(&tail), "{wire:?}");
        for len in 0..wire.len() {
            assert_eq!(
                decode(wire.slice(..len)),
                Err(DecodeError::Truncated),
                "at {len}"
            );
        }
        // A request flag other than 0 or 1 is an error; so is a sending node too long.
        let mut bad = wire.to_vec();
        let flag_at = wire.len() - 9;
        bad[flag_at] = 2;
        assert_eq!(decode(bad.into()), Err(DecodeError::Step(2)));
        let HubEvent::Addressed(mut long) = web_direct(None) else {
            unreachable!()
        };
        long.from_node = Bytes::from(vec![b'n'; NODE_NAME_BYTES_MAX + 1]);
        assert_eq!(
            encode(b"n", 1, 1, &HubEvent::Addressed(long)),
            Err(EncodeError::TooLong("sending node"))
        );
    }

    #[test]
    fn an_addressed_message_round_trips_its_layout_is_the_documented_one_and_bounds_hold() {
        for event in [
            addressed(b"oi"),
            addressed(b""),
            addressed(&[0, 255, b'\n']),
        ] {
            assert_eq!(
                decode(encode(b"node-a", 5, 9, &event).unwrap())
                    .unwrap()
                    .event,
                event
            );
        }
        let wire = encode(b"a", 1, 2, &addressed(b"hi")).unwrap();
        let mut want = vec![
            1, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 3,
        ];
        want.extend_from_slice(&[6, b'n', b'o', b'd', b'e', b'-', b'b']);
        want.extend_from_slice(&0xfeed_u64.to_be_bytes());
        want.extend_from_slice(&[4, b'T', b'e', b'x', b't', 0, 3, b'c', b'i', b'd', 0, 3]);
        want.extend_from_slice(b"cat");
        want.extend_from_slice(&[5, b'u', b't', b'f', b'-', b'8', 0, 0, 0, 2, b'h', b'i']);
        // No sending node, incarnation 0, no request (a CCM sender's).
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&wire[..], &want[..]);
        // Every truncation is an error; an empty target node too.
        for len in 0..wire.len() {
            assert_eq!(
                decode(wire.slice(..len)),
                Err(DecodeError::Truncated),
                "at {len}"
            );
        }
        let mut empty_target = want.clone();
        empty_target[20] = 0;
        assert!(decode(empty_target.into()).is_err());
        let HubEvent::Addressed(mut long) = addressed(b"x") else {
            unreachable!()
        };
        long.kind = Bytes::from(vec![b'k'; KIND_BYTES_MAX + 1]);
        assert_eq!(
            encode(b"n", 1, 1, &HubEvent::Addressed(long.clone())),
            Err(EncodeError::TooLong("type"))
        );
        long.kind = Bytes::from_static(b"Text");
        long.to_node = Bytes::new();
        assert!(encode(b"n", 1, 1, &HubEvent::Addressed(long)).is_err());
    }

    fn bin24_frame(body: &[u8]) -> Bytes {
        let len = (24 + body.len()) as u16;
        let mut frame = len.to_le_bytes().to_vec();
        frame.extend_from_slice(&[0, 0, 7, 0, 0, 0]);
        frame.extend_from_slice(b"ana\0\0\0\0\0bob\0\0\0\0\0");
        frame.extend_from_slice(body);
        Bytes::from(frame)
    }

    #[test]
    fn a_bin24_frame_round_trips_its_layout_is_the_documented_one_and_bounds_hold() {
        let relay = |step, frame| {
            HubEvent::Bin24(Box::new(Bin24Relay {
                to_node: Bytes::from_static(b"node-b"),
                to_incarnation: 3,
                from_node: Bytes::from_static(b"a"),
                from_incarnation: 9,
                step,
                frame,
            }))
        };
        for (step, body) in [
            (Bin24Step::Message, &b"hi"[..]),
            (Bin24Step::Answer, &b"200"[..]),
            (Bin24Step::Message, &[0u8; 1000][..]),
            (Bin24Step::Message, &b""[..]),
            (Bin24Step::CachedMessage, &b"hi"[..]),
            (Bin24Step::Bounced, &b"hi"[..]),
            (Bin24Step::Stored, &b""[..]),
        ] {
            let event = relay(step, bin24_frame(body));
            let wire = encode(b"a", 1, 2, &event).unwrap();
            assert_eq!(decode(wire.clone()).unwrap().event, event);
            for len in 0..wire.len() {
                assert_eq!(decode(wire.slice(..len)), Err(DecodeError::Truncated));
            }
        }
        let frame = bin24_frame(b"hi");
        let wire = encode(b"a", 1, 2, &relay(Bin24Step::Answer, frame.clone())).unwrap();
        let mut want = vec![
            1, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 6,
        ];
        want.extend_from_slice(&[6, b'n', b'o', b'd', b'e', b'-', b'b']);
        want.extend_from_slice(&3u64.to_be_bytes());
        want.extend_from_slice(&[1, b'a']);
        want.extend_from_slice(&9u64.to_be_bytes());
        want.extend_from_slice(&[1, 0, 26]);
        want.extend_from_slice(&frame);
        assert_eq!(&wire[..], &want[..]);
        // A frame whose length field lies, one too long or too short, an unknown step, an
        // empty node: refused both ways.
        let mut lying = want.clone();
        let at = lying.len() - frame.len();
        lying[at] = 27;
        assert_eq!(decode(lying.into()), Err(DecodeError::Bin24Frame));
        let mut step = want.clone();
        step[at - 3] = 5;
        assert_eq!(decode(step.into()), Err(DecodeError::Step(5)));
        // A `Stored` notice is step 4 (a node before it refuses it as step 4, above's error).
        let mut notice = want.clone();
        notice[at - 3] = 4;
        assert!(matches!(
            decode(notice.into()).map(|envelope| envelope.event),
            Ok(HubEvent::Bin24(relay)) if relay.step == Bin24Step::Stored
        ));
        let mut empty_from = want.clone();
        empty_from[27 + 8] = 0;
        assert!(decode(empty_from.into()).is_err());
        let mut long = vec![0u8; 1025];
        long[..2].copy_from_slice(&1025u16.to_le_bytes());
        assert_eq!(
            encode(b"a", 1, 1, &relay(Bin24Step::Message, Bytes::from(long))),
            Err(EncodeError::TooLong("BIN24 frame"))
        );
        assert!(encode(b"a", 1, 1, &relay(Bin24Step::Message, frame.slice(..23))).is_err());
        let HubEvent::Bin24(mut nowhere) = relay(Bin24Step::Message, frame) else {
            unreachable!()
        };
        nowhere.from_node = Bytes::new();
        assert!(encode(b"a", 1, 1, &HubEvent::Bin24(nowhere)).is_err());
    }

    /// The fuzz target's BIN24 seeds (fuzz/seeds.py) are events of this format: a message
    /// for node-b and its answer for node-a.
    #[test]
    fn the_fuzz_seeds_for_bin24_decode_as_the_events_they_name() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/cluster_codec/");
        for (seed, step, to, body) in [
            (
                "bin24_message",
                Bin24Step::Message,
                &b"node-b"[..],
                &b"hello bob"[..],
            ),
            (
                "bin24_answer_200",
                Bin24Step::Answer,
                &b"node-a"[..],
                &b"200"[..],
            ),
        ] {
            let bytes = std::fs::read(format!("{dir}{seed}")).expect(seed);
            let Ok(Envelope {
                event: HubEvent::Bin24(relay),
                ..
            }) = decode(Bytes::from(bytes))
            else {
                panic!("{seed} does not decode as a BIN24 event");
            };
            assert_eq!((relay.step, &relay.to_node[..]), (step, to), "{seed}");
            assert_eq!(&relay.frame[24..], body, "{seed}");
        }
    }

    fn ocm(step: OcmStep, from: Option<SocketAddr>, text: &[u8]) -> HubEvent {
        HubEvent::Ocm(Box::new(OcmRoomEvent {
            step,
            room: Bytes::from_static("部屋".as_bytes()),
            room_id: 0x0102_0304_0506_0708,
            member: Bytes::from_static(b"ana"),
            home_node: Bytes::from_static(b"node-b"),
            home_incarnation: 9,
            from,
            in_lobby: step == OcmStep::Chat && from.is_some_and(|from| from.is_ipv6()),
            text: Bytes::copy_from_slice(text),
        }))
    }

    #[test]
    fn an_ocm_room_event_round_trips_its_layout_is_the_documented_one_and_bounds_hold() {
        let v4 = Some(SocketAddr::from(([127, 0, 0, 2], 40_001)));
        let v6 = Some("[::1]:9".parse().unwrap());
        for event in [
            ocm(OcmStep::Joined, None, b""),
            ocm(OcmStep::Chat, v4, b"ana: hi"),
            ocm(OcmStep::Chat, v6, "ana: 日本".as_bytes()),
            ocm(OcmStep::Left, None, b"left"),
            ocm(OcmStep::Closed, None, &[b'x'; OCM_TEXT_BYTES_MAX]),
        ] {
            let wire = encode(b"a", 1, 2, &event).unwrap();
            assert_eq!(decode(wire.clone()).unwrap().event, event);
            for len in 0..wire.len() {
                assert_eq!(
                    decode(wire.slice(..len)),
                    Err(DecodeError::Truncated),
                    "{len}"
                );
            }
        }
        let wire = encode(b"a", 1, 2, &ocm(OcmStep::Chat, v4, b"hi")).unwrap();
        let mut want = vec![
            1, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 7, 1, 6,
        ];
        want.extend_from_slice("部屋".as_bytes());
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 3, b'a', b'n', b'a']);
        want.extend_from_slice(&[6, b'n', b'o', b'd', b'e', b'-', b'b']);
        want.extend_from_slice(&9u64.to_be_bytes());
        want.extend_from_slice(&[4, 127, 0, 0, 2, 0x9c, 0x41, 0, 0, 2, b'h', b'i']);
        assert_eq!(&wire[..], &want[..]);
        // The step, the address length and the in_lobby flag are checked; an empty room or
        // home node is refused both ways.
        let mut step = want.clone();
        step[20] = 4;
        assert_eq!(decode(step.into()), Err(DecodeError::Step(4)));
        let at_address = want.len() - 12;
        let mut address = want.clone();
        address[at_address] = 5;
        assert_eq!(decode(address.into()), Err(DecodeError::Ocm));
        let mut lobby = want.clone();
        lobby[at_address + 7] = 2;
        assert_eq!(decode(lobby.into()), Err(DecodeError::Ocm));
        let mut empty_room = want[..21].to_vec();
        empty_room.push(0);
        empty_room.extend_from_slice(&want[28..]);
        assert!(decode(empty_room.into()).is_err());
        let mut empty_node = want.clone();
        empty_node[at_address - 15] = 0;
        assert!(decode(empty_node.into()).is_err());
        let HubEvent::Ocm(mut long) = ocm(OcmStep::Chat, None, b"") else {
            unreachable!()
        };
        long.text = Bytes::from(vec![b't'; OCM_TEXT_BYTES_MAX + 1]);
        assert_eq!(
            encode(b"a", 1, 1, &HubEvent::Ocm(long.clone())),
            Err(EncodeError::TooLong("text"))
        );
        long.text = Bytes::new();
        long.room = Bytes::new();
        assert!(encode(b"a", 1, 1, &HubEvent::Ocm(long.clone())).is_err());
        long.room = Bytes::from_static(b"r");
        long.home_node = Bytes::new();
        assert!(encode(b"a", 1, 1, &HubEvent::Ocm(long)).is_err());
    }

    /// The fuzz target's OCM seeds (fuzz/seeds.py) are events of this format.
    #[test]
    fn the_fuzz_seeds_for_ocm_decode_as_the_events_they_name() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/cluster_codec/");
        for (seed, step, text) in [
            ("ocm_chat", OcmStep::Chat, "ana: oi"),
            ("ocm_closed", OcmStep::Closed, "halが部屋から退出しました。"),
        ] {
            let bytes = std::fs::read(format!("{dir}{seed}")).expect(seed);
            let Ok(Envelope {
                event: HubEvent::Ocm(event),
                ..
            }) = decode(Bytes::from(bytes))
            else {
                panic!("{seed} does not decode as an OCM event");
            };
            assert_eq!(
                (event.step, &event.text[..]),
                (step, text.as_bytes()),
                "{seed}"
            );
        }
    }

    #[test]
    fn a_private_link_step_round_trips_and_its_bounds_hold() {
        for (step, address, ports) in [
            (PrivateStep::Request, &b""[..], (0, 0)),
            (PrivateStep::Accept, &[127, 0, 0, 1][..], (0, 0)),
            (PrivateStep::SrcPorts, &[0xfe; 16][..], (5000, -1)),
        ] {
            let event = HubEvent::Private(Box::new(PrivateLink {
                to_node: Bytes::from_static(b"node-b"),
                to_incarnation: 3,
                from_node: Bytes::from_static(b"node-a"),
                from_incarnation: u64::MAX,
                step,
                src: Bytes::from_static(b"mia"),
                dst: Bytes::from_static(b"max"),
                address: Bytes::copy_from_slice(address),
                message_port: ports.0,
                file_port: ports.1,
            }));
            let wire = encode(b"node-a", 1, 2, &event).unwrap();
            assert_eq!(decode(wire.clone()).unwrap().event, event);
            for len in 0..wire.len() {
                assert_eq!(
                    decode(wire.slice(..len)),
                    Err(DecodeError::Truncated),
                    "at {len}"
                );
            }
            // The step byte: after the header (version, "node-a", incarnation, sequence
            // number), the tag, both nodes and their incarnations.
            let header = 1 + 1 + 6 + 8 + 8;
            let mut bad = wire.to_vec();
            bad[header + 1 + 1 + 6 + 8 + 1 + 6 + 8] = 3;
            assert_eq!(decode(bad.into()), Err(DecodeError::Step(3)));
        }
        let too_long = HubEvent::Private(Box::new(PrivateLink {
            to_node: Bytes::from_static(b"b"),
            to_incarnation: 0,
            from_node: Bytes::from_static(b"a"),
            from_incarnation: 0,
            step: PrivateStep::Accept,
            src: Bytes::new(),
            dst: Bytes::new(),
            address: Bytes::from(vec![0; ADDRESS_BYTES_MAX + 1]),
            message_port: 0,
            file_port: 0,
        }));
        assert_eq!(
            encode(b"n", 1, 1, &too_long),
            Err(EncodeError::TooLong("address"))
        );
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let wire = encode(b"ab", 1, 2, &said("m", b"hi")).unwrap();
        assert_eq!(
            &wire[..],
            &[
                1, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 1, 3, 0, 1, b'm',
                0, 0, 0, 2, b'h', b'i'
            ]
        );
    }

    #[test]
    fn what_is_not_carried_or_too_long_is_refused_at_encoding() {
        let direct = HubEvent::Direct(DirectMessage {
            origin: ProtocolKind::Ccm,
            sender: Bytes::from_static(b"a"),
            recipient: Bytes::from_static(b"b"),
            message_id: 1,
            body: Bytes::new(),
        });
        assert_eq!(encode(b"n", 1, 1, &direct), Err(EncodeError::NotCarried));
        assert!(encode(b"", 1, 1, &said("a", b"b")).is_err());
        assert!(encode(&[b'n'; NODE_NAME_BYTES_MAX + 1], 1, 1, &said("a", b"b")).is_err());
        let long_name = "n".repeat(NAME_BYTES_MAX + 1);
        assert!(encode(b"n", 1, 1, &said(&long_name, b"b")).is_err());
        assert!(encode(b"n", 1, 1, &said("a", &vec![b't'; TEXT_BYTES_MAX + 1])).is_err());
        assert!(encode(b"n", 1, 1, &said("a", &vec![b't'; TEXT_BYTES_MAX])).is_ok());
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = encode(b"ab", 3, 7, &said("mia", b"hello")).unwrap();
        // Every truncation of a valid message.
        for len in 0..good.len() {
            assert_eq!(
                decode(good.slice(..len)),
                Err(DecodeError::Truncated),
                "at {len}"
            );
        }
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(decode(trailing.into()), Err(DecodeError::Trailing(1)));
        let mut version = good.to_vec();
        version[0] = 2;
        assert_eq!(decode(version.into()), Err(DecodeError::Version(2)));
        let mut empty_node = vec![1, 0];
        empty_node.extend_from_slice(&good[4..]);
        assert_eq!(decode(empty_node.into()), Err(DecodeError::EmptyNodeName));
        let mut long_node = good.to_vec();
        long_node[1] = NODE_NAME_BYTES_MAX as u8 + 1;
        assert_eq!(
            decode(long_node.into()),
            Err(DecodeError::TooLong("node name"))
        );
        let mut tag = good.to_vec();
        tag[20] = 9;
        assert_eq!(decode(tag.into()), Err(DecodeError::Tag(9)));
        let mut origin = good.to_vec();
        origin[21] = ProtocolKind::COUNT as u8;
        assert_eq!(
            decode(origin.into()),
            Err(DecodeError::Protocol(ProtocolKind::COUNT as u8))
        );
        let mut text_len = good.to_vec();
        text_len[27..31].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(text_len.into()), Err(DecodeError::TooLong("text")));
        let mut kind = encode(b"ab", 1, 1, &presence(PresenceKind::Left))
            .unwrap()
            .to_vec();
        kind[22] = 2;
        assert_eq!(decode(kind.into()), Err(DecodeError::PresenceKind(2)));
        // Arbitrary bytes: only errors or events, never a panic.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 48) as usize;
            let mut bytes = good.to_vec();
            bytes.truncate(len.max(1));
            let at = (state >> 8) as usize % bytes.len();
            bytes[at] = (state >> 16) as u8;
            let bytes = Bytes::from(bytes);
            // One form per event: what decodes re-encodes to the same bytes.
            if let Ok(envelope) = decode(bytes.clone()) {
                let again = encode(
                    &envelope.node,
                    envelope.incarnation,
                    envelope.seq,
                    &envelope.event,
                );
                assert_eq!(again.as_deref(), Ok(&bytes[..]));
            }
        }
    }
}
