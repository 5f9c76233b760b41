//! WebSocket framing (RFC 6455, section 5), sans-io: the server's side.
//!
//! Our own, small, and fuzzed (`fuzz/fuzz_targets/web_codec.rs`) rather than a crate's: the
//! reactor owns the read buffer, and a frame is parsed where it lies in it: its payload is
//! split off the buffer (a reference count, not a copy) and unmasked in place. The crates we
//! looked at own the socket or copy into buffers of their own.
//!
//! [`decode_frame`] reads one frame; [`Reader`] puts frames together into messages (text
//! only; fragments reassembled, control frames between them) and says which close code a
//! violation earns. [`encode`] writes a server frame (never masked).

use bytes::{Buf, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Control frames carry at most this many payload bytes (RFC 6455 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Close status codes the server sends (RFC 6455 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_UNSUPPORTED: u16 = 1003;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// One frame, its payload unmasked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: BytesMut,
}

/// Why a frame cannot be read; the framing can no longer be trusted after any of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1..3 set: no extension was agreed.
    ReservedBits,
    UnknownOpcode(u8),
    /// A client frame without a mask (RFC 6455 5.1: the server must close).
    Unmasked,
    /// A control frame over 125 bytes, or fragmented.
    BadControl,
    /// A 64-bit length with its top bit set (RFC 6455 5.2). A length not in its shortest
    /// form is accepted.
    BadLength,
    /// The payload is over the limit.
    TooLarge,
}

impl FrameError {
    /// The close code this earns.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge => CLOSE_TOO_BIG,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// Reads one client frame from the start of `input`: `Ok(None)` until it is all there (the
/// bytes stay). A frame whose payload is over `payload_bytes_max` is refused as soon as its
/// header says so, before the payload arrives.
pub fn decode_frame(
    input: &mut BytesMut,
    payload_bytes_max: usize,
) -> Result<Option<Frame>, FrameError> {
    let Some(&[first, second]) = input.get(..2) else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    let control = opcode & 0x08 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        other => return Err(FrameError::UnknownOpcode(other)),
    }
    if second & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (length, length_bytes) = match second & 0x7F {
        126 => match input.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 2),
            None => return Ok(None),
        },
        127 => match input.get(2..10) {
            Some(bytes) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                let length = u64::from_be_bytes(be);
                if length >> 63 != 0 {
                    return Err(FrameError::BadLength);
                }
                (length, 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    if control && (!fin || length > CONTROL_PAYLOAD_BYTES_MAX as u64) {
        return Err(FrameError::BadControl);
    }
    let length = match usize::try_from(length) {
        Ok(length) if length <= payload_bytes_max => length,
        _ => return Err(FrameError::TooLarge),
    };
    let header_bytes = 2 + length_bytes + 4;
    if input.len() < header_bytes + length {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&input[header_bytes - 4..header_bytes]);
    let mut frame = input.split_to(header_bytes + length);
    frame.advance(header_bytes);
    unmask(&mut frame, mask);
    Ok(Some(Frame {
        fin,
        opcode,
        payload: frame,
    }))
}

/// XORs `payload` with the 4-byte `mask`, in place (masking and unmasking are the same).
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (at, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[at];
    }
}

/// A server frame: FIN set, not masked.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    frame.extend_from_slice(&[0x80 | opcode]);
    match payload.len() {
        len if len < 126 => frame.extend_from_slice(&[len as u8]),
        len if len <= usize::from(u16::MAX) => {
            frame.extend_from_slice(&[126]);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.extend_from_slice(&[127]);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// A text frame (one whole message).
pub fn text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// A close frame with `code` and a short `reason` (cut to fit the 125 bytes, on a character
/// boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(CONTROL_PAYLOAD_BYTES_MAX - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

/// What a client sent, message by message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A whole text message, valid UTF-8.
    Text(Bytes),
    /// Answer with a pong of the same payload.
    Ping(Bytes),
    Pong,
    /// The client closes: `code` is its status code (`None`: it gave none).
    Close {
        code: Option<u16>,
    },
}

/// A violation and the close code it earns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub why: &'static str,
}

fn violation(code: u16, why: &'static str) -> Violation {
    Violation { code, why }
}

/// Puts a client's frames together into messages. Kept per connection: a fragmented message
/// waits here for its last fragment.
#[derive(Debug, Default)]
pub struct Reader {
    /// The fragments of a text message so far (`Some` between its first and last frame).
    fragments: Option<BytesMut>,
}

impl Reader {
    /// The next message in `input`, if it is all there; a fragment on its way is kept.
    /// `message_bytes_max` bounds a frame and a whole message.
    pub fn next(
        &mut self,
        input: &mut BytesMut,
        message_bytes_max: usize,
    ) -> Result<Option<Message>, Violation> {
        loop {
            // Inside a fragmented message a frame may carry only what the message has left, so
            // a continuation past the limit is refused from its header, before its payload is
            // buffered. Control frames (at most 125 bytes) may come between fragments whatever
            // is left; a continuation within those 125 bytes is caught below.
            let frame_bytes_max = match &self.fragments {
                Some(fragments) => message_bytes_max
                    .saturating_sub(fragments.len())
                    .max(CONTROL_PAYLOAD_BYTES_MAX),
                None => message_bytes_max,
            };
            let frame = match decode_frame(input, frame_bytes_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(FrameError::TooLarge) => {
                    return Err(violation(CLOSE_TOO_BIG, "a frame over the size limit"))
                }
                Err(FrameError::Unmasked) => {
                    return Err(violation(CLOSE_PROTOCOL_ERROR, "an unmasked client frame"))
                }
                Err(_) => return Err(violation(CLOSE_PROTOCOL_ERROR, "a malformed frame")),
            };
            match frame.opcode {
                OP_PING => return Ok(Some(Message::Ping(frame.payload.freeze()))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_CLOSE => return close_message(&frame.payload).map(Some),
                OP_BINARY => {
                    return Err(violation(
                        CLOSE_UNSUPPORTED,
                        "binary messages are not accepted",
                    ))
                }
                OP_TEXT if self.fragments.is_some() => {
                    return Err(violation(
                        CLOSE_PROTOCOL_ERROR,
                        "a new message inside a fragmented one",
                    ))
                }
                OP_TEXT if frame.fin => return text_message(frame.payload).map(Some),
                OP_TEXT => self.fragments = Some(frame.payload),
                _ => {
                    // OP_CONTINUATION: decode_frame lets no other opcode through.
                    let Some(fragments) = self.fragments.as_mut() else {
                        return Err(violation(
                            CLOSE_PROTOCOL_ERROR,
                            "a continuation without a message",
                        ));
                    };
                    if fragments.len() + frame.payload.len() > message_bytes_max {
                        return Err(violation(CLOSE_TOO_BIG, "a message over the size limit"));
                    }
                    fragments.unsplit(frame.payload);
                    if frame.fin {
                        let whole = self.fragments.take().unwrap_or_default();
                        return text_message(whole).map(Some);
                    }
                }
            }
        }
    }

    /// Whether a fragmented message is on its way.
    pub fn in_message(&self) -> bool {
        self.fragments.is_some()
    }
}

fn text_message(payload: BytesMut) -> Result<Message, Violation> {
    if std::str::from_utf8(&payload).is_err() {
        return Err(violation(
            CLOSE_INVALID_DATA,
            "a text message that is not UTF-8",
        ));
    }
    Ok(Message::Text(payload.freeze()))
}

fn close_message(payload: &[u8]) -> Result<Message, Violation> {
    match payload {
        [] => Ok(Message::Close { code: None }),
        [_] => Err(violation(CLOSE_PROTOCOL_ERROR, "a close frame of one byte")),
        [high, low, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    CLOSE_INVALID_DATA,
                    "a close reason that is not UTF-8",
                ));
            }
            Ok(Message::Close {
                code: Some(u16::from_be_bytes([*high, *low])),
            })
        }
    }
}

/// A client frame, masked with `mask`: for tests, the fuzz target and the loadgen.
pub fn encode_client(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        len if len < 126 => frame.push(0x80 | len as u8),
        len if len <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    let start = frame.len();
    frame.extend_from_slice(payload);
    unmask(&mut frame[start..], mask);
    frame
}
