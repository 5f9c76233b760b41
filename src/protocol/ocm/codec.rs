//! OCM wire formats: TCRP over TCP (room create/join), and the chat datagram over UDP.
//!
//! ```text
//! TCRP, both directions:
//! offset 0  u8        RoomNameSize
//! offset 1  u8        Operation           1 create, 2 join
//! offset 2  u8        State               0 request (and error answer), 1 ack, 2 done, 3 error
//! offset 3  [u8; 29]  OperationPayloadSize, big-endian
//! offset 32 room name (RoomNameSize bytes), then the payload. Answers carry no room name:
//!           their RoomNameSize counts the name's characters and the body is the JSON only.
//!
//! Chat datagram, client to server (at most 4096 bytes):
//! RoomNameSize u8 | TokenSize u8 | room name | token | message
//! Server to client: plain UTF-8 text, at most 4094 bytes.
//! ```
//!
//! A decoded [`TcrpRequest`] is one `split_to(n).freeze()` of the read buffer and its fields are
//! `Bytes` slices of it. A [`Datagram`] borrows the receive buffer. Depends on `bytes` and std
//! only, so the client and the load generator share it with the server.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The fixed TCRP header.
pub const HEADER_BYTES: usize = 32;
/// Width of OperationPayloadSize, the header's big-endian length field.
pub const PAYLOAD_SIZE_BYTES: usize = 29;
/// Where OperationPayloadSize starts in the header.
const PAYLOAD_SIZE_OFFSET: usize = HEADER_BYTES - PAYLOAD_SIZE_BYTES;

pub const OPERATION_CREATE: u8 = 1;
pub const OPERATION_JOIN: u8 = 2;

/// A client's request; also the server's answer to a request that could not be granted (400).
pub const STATE_REQUEST: u8 = 0;
/// The document's immediate acknowledgement (sent only when the server is configured to).
pub const STATE_ACK: u8 = 1;
/// Success: the answer carries the token.
pub const STATE_DONE: u8 = 2;
/// The request was malformed or the server could not serve it (500).
pub const STATE_ERROR: u8 = 3;

/// The largest datagram a client may send (the document's limit).
pub const DATAGRAM_BYTES_MAX: usize = 4096;
/// The largest datagram the server sends: what the original client receives at most.
pub const TEXT_BYTES_MAX: usize = 4094;
/// RoomNameSize and TokenSize.
pub const DATAGRAM_HEADER_BYTES: usize = 2;

/// Answer statuses.
pub const STATUS_ACCEPTED: u16 = 200;
pub const STATUS_DONE: u16 = 202;
pub const STATUS_REFUSED: u16 = 400;
pub const STATUS_FAILED: u16 = 500;

/// The answer messages, the original's Japanese texts exactly.
pub const MESSAGE_ACCEPTED: &str = "リクエストを受理しました。";
pub const MESSAGE_DONE: &str = "リクエストを完了しました。";
pub const MESSAGE_FAILED: &str = "リクエストを完了できませんでした。\n入力し直してください。";

/// The 400 answer's message to a create of a room that exists.
pub fn room_exists_message(room: &str) -> String {
    format!("部屋 {room} はすでに存在します")
}

/// The 400 answer's message to a join of a room that does not exist.
pub fn room_missing_message(room: &str) -> String {
    format!("部屋 {room} は存在しません")
}

/// The chat message that leaves a room (closing it, from the host).
pub const EXIT_MESSAGE: &[u8] = b"exit";

/// Sent to the others when `name` leaves `room`; also to `name` itself when the server removes
/// it (the original client closes its socket on reading its own leave text).
pub fn leave_text(name: &str, room: &str) -> String {
    format!("{name}が{room}から退出しました。")
}

/// Sent to the others when the host `name` leaves and `room` closes.
pub fn host_leave_text(name: &str, room: &str) -> String {
    format!("{name}が{room}から退出しました。\nホストが退出したため、チャットルーム:{room}を終了します。")
}

/// A TCRP header, as read from the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcrpHeader {
    /// Bytes of room name in a request; characters of it in an answer.
    pub room_name_size: u8,
    pub operation: u8,
    pub state: u8,
    /// OperationPayloadSize, saturated at `u64::MAX`: 29 bytes hold sizes far beyond any
    /// buffer, and anything past `u64` is simply too large. `u64::MAX` is therefore over every
    /// limit, `usize::MAX` included.
    pub payload_bytes: u64,
}

impl TcrpHeader {
    /// Reads the first [`HEADER_BYTES`] of `buf`; `None` when fewer have arrived.
    pub fn parse(buf: &[u8]) -> Option<TcrpHeader> {
        let header = buf.get(..HEADER_BYTES)?;
        let (high, low) = header[PAYLOAD_SIZE_OFFSET..].split_at(PAYLOAD_SIZE_BYTES - 8);
        let mut low_bytes = [0u8; 8];
        low_bytes.copy_from_slice(low);
        let payload_bytes = if high.iter().any(|&b| b != 0) {
            u64::MAX
        } else {
            u64::from_be_bytes(low_bytes)
        };
        Some(TcrpHeader {
            room_name_size: header[0],
            operation: header[1],
            state: header[2],
            payload_bytes,
        })
    }

    /// The declared payload size, if it is at most `payload_bytes_max`.
    fn payload_within(&self, payload_bytes_max: usize) -> Option<usize> {
        if self.payload_bytes == u64::MAX {
            return None;
        }
        usize::try_from(self.payload_bytes)
            .ok()
            .filter(|&n| n <= payload_bytes_max)
    }
}

/// One TCRP request. Fields are zero-copy slices of the received buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcrpRequest {
    pub operation: u8,
    pub state: u8,
    /// The room name's bytes, not checked: UTF-8 and length limits are the server's business.
    pub room: Bytes,
    pub payload: Bytes,
}

/// One TCRP answer as the client reads it: header, then the JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcrpAnswer {
    /// The room name's length in characters (the original counts `len(str)`).
    pub room_chars: u8,
    pub operation: u8,
    pub state: u8,
    pub json: Bytes,
}

/// Why bytes are not an acceptable TCRP message. Framing is lost: answer, then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcrpError {
    /// The header declares a payload over the limit; detected from the header alone, before
    /// the body is buffered. The header is given so the server can still answer in kind.
    PayloadTooLarge {
        header: TcrpHeader,
        payload_bytes_max: usize,
    },
}

impl fmt::Display for TcrpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcrpError::PayloadTooLarge {
                header,
                payload_bytes_max,
            } => {
                if header.payload_bytes == u64::MAX {
                    write!(
                        f,
                        "TCRP payload size beyond u64, over the {payload_bytes_max}-byte limit"
                    )
                } else {
                    write!(
                        f,
                        "TCRP payload of {} bytes, over the {payload_bytes_max}-byte limit",
                        header.payload_bytes
                    )
                }
            }
        }
    }
}

impl std::error::Error for TcrpError {}

/// Decodes one request from the front of `buf`.
///
/// `Ok(None)`: more bytes are needed, nothing was consumed. The payload size is checked against
/// `payload_bytes_max` as soon as the 32 header bytes are there, so an oversized request is
/// refused without waiting for (or buffering) its body. On error nothing is consumed either.
pub fn decode_request(
    buf: &mut BytesMut,
    payload_bytes_max: usize,
) -> Result<Option<TcrpRequest>, TcrpError> {
    let Some((header, room_bytes, payload_bytes)) = frame_sizes(buf, payload_bytes_max, true)?
    else {
        return Ok(None);
    };
    let frame = buf
        .split_to(HEADER_BYTES + room_bytes + payload_bytes)
        .freeze();
    let room = frame.slice(HEADER_BYTES..HEADER_BYTES + room_bytes);
    let payload = frame.slice(HEADER_BYTES + room_bytes..);
    Ok(Some(TcrpRequest {
        operation: header.operation,
        state: header.state,
        room,
        payload,
    }))
}

/// Decodes one answer (header, then JSON only) from the front of `buf`, for clients. Same
/// contract as [`decode_request`].
pub fn decode_answer(
    buf: &mut BytesMut,
    payload_bytes_max: usize,
) -> Result<Option<TcrpAnswer>, TcrpError> {
    let Some((header, _, payload_bytes)) = frame_sizes(buf, payload_bytes_max, false)? else {
        return Ok(None);
    };
    let frame = buf.split_to(HEADER_BYTES + payload_bytes).freeze();
    Ok(Some(TcrpAnswer {
        room_chars: header.room_name_size,
        operation: header.operation,
        state: header.state,
        json: frame.slice(HEADER_BYTES..),
    }))
}

/// The header, the room name's bytes and the payload's bytes, once the whole frame has
/// arrived. `with_room`: a request, whose body starts with RoomNameSize bytes of room name
/// (an answer's RoomNameSize counts characters of a name it does not carry).
fn frame_sizes(
    buf: &[u8],
    payload_bytes_max: usize,
    with_room: bool,
) -> Result<Option<(TcrpHeader, usize, usize)>, TcrpError> {
    let Some(header) = TcrpHeader::parse(buf) else {
        return Ok(None);
    };
    let Some(payload_bytes) = header.payload_within(payload_bytes_max) else {
        return Err(TcrpError::PayloadTooLarge {
            header,
            payload_bytes_max,
        });
    };
    let room_bytes = if with_room {
        usize::from(header.room_name_size)
    } else {
        0
    };
    // Saturating: a limit of usize::MAX must not wrap; such a frame is simply never complete.
    let frame_bytes = HEADER_BYTES
        .saturating_add(room_bytes)
        .saturating_add(payload_bytes);
    if buf.len() < frame_bytes {
        return Ok(None);
    }
    Ok(Some((header, room_bytes, payload_bytes)))
}

fn put_header(out: &mut BytesMut, room_name_size: u8, operation: u8, state: u8, payload: usize) {
    out.put_u8(room_name_size);
    out.put_u8(operation);
    out.put_u8(state);
    out.put_bytes(0, PAYLOAD_SIZE_BYTES - 8);
    // usize is at most 64 bits on every target Rust supports.
    out.put_u64(payload as u64);
}

/// A server answer: the header (RoomNameSize = the room name's characters, as the original
/// counts) and the JSON body, with no room name.
pub fn encode_answer(room_chars: u8, operation: u8, state: u8, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_BYTES + json.len());
    put_header(&mut out, room_chars, operation, state, json.len());
    out.put_slice(json);
    out.freeze()
}

/// What a client cannot put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A room name over 255 bytes does not fit RoomNameSize.
    RoomNameTooLong,
    /// A token over 255 bytes does not fit TokenSize.
    TokenTooLong,
    /// The datagram would be over [`DATAGRAM_BYTES_MAX`].
    DatagramTooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::RoomNameTooLong => f.write_str("OCM room name over 255 bytes"),
            EncodeError::TokenTooLong => f.write_str("OCM token over 255 bytes"),
            EncodeError::DatagramTooLarge => {
                write!(f, "OCM datagram over {DATAGRAM_BYTES_MAX} bytes")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// A client request: header, room name, payload (see `json::encode_request` for the payload
/// the original client sends).
pub fn encode_request(
    operation: u8,
    state: u8,
    room: &[u8],
    payload: &[u8],
) -> Result<Bytes, EncodeError> {
    let room_name_size = u8::try_from(room.len()).map_err(|_| EncodeError::RoomNameTooLong)?;
    let mut out = BytesMut::with_capacity(HEADER_BYTES + room.len() + payload.len());
    put_header(&mut out, room_name_size, operation, state, payload.len());
    out.put_slice(room);
    out.put_slice(payload);
    Ok(out.freeze())
}

/// One client datagram, borrowed from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub room: &'a [u8],
    pub token: &'a [u8],
    pub message: &'a [u8],
}

/// Why a received datagram is not a chat datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramError {
    /// Shorter than its two sizes say (or than the two size bytes themselves).
    Truncated,
    /// Over [`DATAGRAM_BYTES_MAX`].
    TooLarge,
}

impl fmt::Display for DatagramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatagramError::Truncated => f.write_str("OCM datagram shorter than its sizes"),
            DatagramError::TooLarge => write!(f, "OCM datagram over {DATAGRAM_BYTES_MAX} bytes"),
        }
    }
}

impl std::error::Error for DatagramError {}

/// Splits a client datagram into room, token and message (the rest, possibly empty).
pub fn parse_datagram(datagram: &[u8]) -> Result<Datagram<'_>, DatagramError> {
    if datagram.len() > DATAGRAM_BYTES_MAX {
        return Err(DatagramError::TooLarge);
    }
    let [room_bytes, token_bytes, body @ ..] = datagram else {
        return Err(DatagramError::Truncated);
    };
    let room_bytes = usize::from(*room_bytes);
    let token_end = room_bytes + usize::from(*token_bytes);
    let (Some(room), Some(token), Some(message)) = (
        body.get(..room_bytes),
        body.get(room_bytes..token_end),
        body.get(token_end..),
    ) else {
        return Err(DatagramError::Truncated);
    };
    Ok(Datagram {
        room,
        token,
        message,
    })
}

/// A client datagram, as the original client writes it.
pub fn encode_datagram(room: &[u8], token: &[u8], message: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let room_bytes = u8::try_from(room.len()).map_err(|_| EncodeError::RoomNameTooLong)?;
    let token_bytes = u8::try_from(token.len()).map_err(|_| EncodeError::TokenTooLong)?;
    let total = DATAGRAM_HEADER_BYTES + room.len() + token.len() + message.len();
    if total > DATAGRAM_BYTES_MAX {
        return Err(EncodeError::DatagramTooLarge);
    }
    let mut out = Vec::with_capacity(total);
    out.push(room_bytes);
    out.push(token_bytes);
    out.extend_from_slice(room);
    out.extend_from_slice(token);
    out.extend_from_slice(message);
    Ok(out)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
pub(super) mod tests;
