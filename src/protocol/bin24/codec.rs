//! BIN24 wire format: fixed 24-byte header, then the message.
//!
//! ```text
//! offset 0  u16 len        whole frame incl. header, 24..=1024
//! offset 2  u16 type       0 message, 1 answer, 2 offline (server to client only)
//! offset 4  u32 messageID  per-sender counter
//! offset 8  [u8; 8] SRC    user name, NUL-padded (no NUL when 8 bytes long)
//! offset 16 [u8; 8] DST
//! offset 24 message        len-24 bytes, not NUL-terminated
//! ```
//!
//! Integers are little-endian: the original C++ programs run on x86 and write their structs
//! as they are in memory. A received frame stays one `Bytes` cut from the read buffer, so it can
//! be forwarded verbatim (the contract asks for that, garbage included) without a copy; fields
//! are read from it on demand. The only copy is [`Frame::copy_with_type`], at the offline store.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

pub const HEADER_BYTES: usize = 24;
/// The original's buffer size: the largest frame either side may send.
pub const FRAME_BYTES_MAX: usize = 1024;
/// The longest message a frame can carry.
pub const BODY_BYTES_MAX: usize = FRAME_BYTES_MAX - HEADER_BYTES;

/// Client to client through the server; the recipient is expected to answer.
pub const TYPE_MESSAGE: u16 = 0;
/// "200" from a recipient, "300" / "507" from the server.
pub const TYPE_ANSWER: u16 = 1;
/// Server to client only: a stored frame delivered after the recipient came back.
pub const TYPE_OFFLINE: u16 = 2;

/// The recipient's answer: the message arrived.
pub const ANSWER_DELIVERED: &[u8] = b"200";
/// The server's answer: the recipient is offline, the message is stored durably.
pub const ANSWER_STORED: &[u8] = b"300";
/// The server's answer: the recipient's offline store is full, the message is dropped.
pub const ANSWER_STORE_FULL: &[u8] = b"507";
/// Ours, not the original's: the sender is over its rate (`--bin24-sender-bytes-per-s-max`,
/// per recipient `--bin24-pair-bytes-per-s-max`); the message was neither delivered nor
/// stored, so a flood is cut at its sender instead of closing its recipient.
pub const ANSWER_RATE_LIMITED: &[u8] = b"429";

const OFFSET_TYPE: usize = 2;
const OFFSET_ID: usize = 4;
const OFFSET_SRC: usize = 8;
const OFFSET_DST: usize = 16;
const NAME_BYTES: usize = 8;

/// A user name: the 8-byte field up to its first NUL.
///
/// The original compares names with `strncmp`, so whatever follows the first NUL is ignored.
/// The field is kept normalised (zeroed after the name) so that the derived equality, hashing
/// and ordering see only the name; the ordering is that of the name's bytes, since a name holds
/// no NUL and the padding sorts before any other byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name {
    field: [u8; NAME_BYTES],
    len: u8,
}

impl Name {
    /// The name in a received SRC or DST field: cut at the first NUL, or all 8 bytes.
    pub fn from_field(field: &[u8; 8]) -> Name {
        let len = field.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
        let mut clean = [0; NAME_BYTES];
        clean[..len].copy_from_slice(&field[..len]);
        Name {
            field: clean,
            len: len as u8,
        }
    }

    /// A name given by the program (configuration, tests, a client's command line). `None` when
    /// the wire cannot carry it: longer than 8 bytes, or holding a NUL (which would cut it).
    pub fn new(name: &[u8]) -> Option<Name> {
        if name.len() > NAME_BYTES || name.contains(&0) {
            return None;
        }
        let mut field = [0; NAME_BYTES];
        field[..name.len()].copy_from_slice(name);
        Some(Name {
            field,
            len: name.len() as u8,
        })
    }

    /// The name without its padding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.field[..usize::from(self.len)]
    }

    /// The field as written on the wire: NUL-padded to 8 bytes.
    pub fn to_field(&self) -> [u8; 8] {
        self.field
    }

    /// An all-NUL field. The original client never sends one, but nothing on the wire forbids
    /// it, so the logic decides what it means.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lossy UTF-8 with control characters escaped, so a hostile name cannot forge log lines
    /// or move a terminal's cursor.
    fn write_escaped(&self, f: &mut fmt::Formatter<'_>, debug: bool) -> fmt::Result {
        for chunk in self.as_bytes().utf8_chunks() {
            for c in chunk.valid().chars() {
                if debug {
                    write!(f, "{}", c.escape_debug())?;
                } else if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_escaped(f, false)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        self.write_escaped(f, true)?;
        f.write_str("\"")
    }
}

/// Why bytes are not a frame. Framing is lost either way: the connection must close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The len field is outside 24..=1024.
    LengthOutOfRange(u16),
    /// [`Frame::from_bytes`] only: the len field (`None` when fewer than 2 bytes are given)
    /// disagrees with the number of bytes given. [`decode`] cuts by the len field, so it never
    /// returns this.
    LengthMismatch {
        declared: Option<u16>,
        actual: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::LengthOutOfRange(len) => write!(
                f,
                "BIN24 frame len {len} outside {HEADER_BYTES}..={FRAME_BYTES_MAX}"
            ),
            DecodeError::LengthMismatch {
                declared: Some(len),
                actual,
            } => write!(f, "BIN24 frame of {actual} bytes declares len {len}"),
            DecodeError::LengthMismatch {
                declared: None,
                actual,
            } => write!(f, "BIN24 frame of {actual} bytes has no len field"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// One whole frame, header included, exactly as received.
///
/// Invariant, established by [`decode`] and [`Frame::from_bytes`], the only constructors: the
/// bytes are 24..=1024 long and the len field says so. The accessors rely on it.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

// A frame is never empty (it has at least its header), so `is_empty` would always be false.
#[allow(clippy::len_without_is_empty)]
impl Frame {
    /// Wrap bytes that should hold exactly one frame (a frame read back from the offline store,
    /// or built by [`encode`]). Checks the len field's range and that it matches `bytes.len()`.
    pub fn from_bytes(bytes: Bytes) -> Result<Frame, DecodeError> {
        let Some(declared) = len_field(&bytes) else {
            return Err(DecodeError::LengthMismatch {
                declared: None,
                actual: bytes.len(),
            });
        };
        check_len(declared)?;
        if usize::from(declared) != bytes.len() {
            return Err(DecodeError::LengthMismatch {
                declared: Some(declared),
                actual: bytes.len(),
            });
        }
        Ok(Frame { bytes })
    }

    /// The whole frame, to forward verbatim.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The len field, which is also the frame's size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The raw type field. Unknown values are kept: refusing them is the logic's business, since
    /// what is acceptable depends on the direction.
    pub fn frame_type(&self) -> u16 {
        u16::from_le_bytes(self.array(OFFSET_TYPE))
    }

    pub fn message_id(&self) -> u32 {
        u32::from_le_bytes(self.array(OFFSET_ID))
    }

    pub fn src(&self) -> Name {
        Name::from_field(&self.array(OFFSET_SRC))
    }

    pub fn dst(&self) -> Name {
        Name::from_field(&self.array(OFFSET_DST))
    }

    /// The len-24 bytes after the header: a slice of the same buffer, no copy.
    pub fn body(&self) -> Bytes {
        self.bytes.slice(HEADER_BYTES..)
    }

    /// A copy with the type field replaced.
    ///
    /// Used when a frame enters the offline store as type 2: the copy is deliberate, so that a
    /// stored frame, which may live for days, does not keep the sender's whole read buffer alive.
    pub fn copy_with_type(&self, frame_type: u16) -> Bytes {
        let mut copy = BytesMut::with_capacity(self.bytes.len());
        copy.extend_from_slice(&self.bytes[..OFFSET_TYPE]);
        copy.put_u16_le(frame_type);
        copy.extend_from_slice(&self.bytes[OFFSET_ID..]);
        copy.freeze()
    }

    /// `N` header bytes from `at`. Within the header by the type's invariant.
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[at..at + N]);
        out
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.len())
            .field("type", &self.frame_type())
            .field("id", &self.message_id())
            .field("src", &self.src())
            .field("dst", &self.dst())
            .field("body_bytes", &(self.len() - HEADER_BYTES))
            .finish()
    }
}

fn len_field(bytes: &[u8]) -> Option<u16> {
    match bytes {
        [lo, hi, ..] => Some(u16::from_le_bytes([*lo, *hi])),
        _ => None,
    }
}

fn check_len(len: u16) -> Result<usize, DecodeError> {
    let len_bytes = usize::from(len);
    if (HEADER_BYTES..=FRAME_BYTES_MAX).contains(&len_bytes) {
        Ok(len_bytes)
    } else {
        Err(DecodeError::LengthOutOfRange(len))
    }
}

/// Cut one frame from the front of `src`.
///
/// `Ok(None)`: more bytes are needed; nothing is consumed. The len field is checked as soon as
/// its 2 bytes are there, so a peer announcing a bad length is refused without waiting for (and
/// buffering) a body that may never come. On error nothing is consumed either; the caller
/// closes the connection, since framing is lost.
///
/// The frame is `split_to(len).freeze()` of `src`: it shares `src`'s allocation, no copy. The
/// type is not checked: a client receives type 2, and which types a server accepts is the
/// logic's rule.
pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    let Some(declared) = len_field(src) else {
        return Ok(None);
    };
    let len = check_len(declared)?;
    if src.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: src.split_to(len).freeze(),
    }))
}

/// Encode a frame with a body of at most [`BODY_BYTES_MAX`] (1000) bytes; `None` if longer,
/// since the len field could not describe it.
pub fn encode(
    frame_type: u16,
    message_id: u32,
    src: Name,
    dst: Name,
    body: &[u8],
) -> Option<Bytes> {
    if body.len() > BODY_BYTES_MAX {
        return None;
    }
    Some(write_frame(frame_type, message_id, src, dst, body))
}

/// The server's answer: type 1, the answered messageID, len = 24 + text.len().
///
/// For the contract's "300" and "507", SRC is the intended recipient and DST the sender, as
/// the original server writes them; the caller passes them in that order. The texts are the
/// short constants above; a text over 1000 bytes (a caller's bug) is cut there rather than
/// making a frame whose len field lies.
pub fn encode_answer(message_id: u32, src: Name, dst: Name, text: &[u8]) -> Bytes {
    let text = &text[..text.len().min(BODY_BYTES_MAX)];
    write_frame(TYPE_ANSWER, message_id, src, dst, text)
}

/// `body` is at most [`BODY_BYTES_MAX`] bytes (checked by both callers), so the len fits.
fn write_frame(frame_type: u16, message_id: u32, src: Name, dst: Name, body: &[u8]) -> Bytes {
    let len = HEADER_BYTES + body.len();
    let mut out = BytesMut::with_capacity(len);
    out.put_u16_le(len as u16);
    out.put_u16_le(frame_type);
    out.put_u32_le(message_id);
    out.put_slice(&src.to_field());
    out.put_slice(&dst.to_field());
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
