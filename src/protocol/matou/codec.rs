//! MATOU wire format (seed 003): binary, big-endian, every packet starts with its type.
//!
//! ```text
//! int     i32, big-endian
//! long    i64, big-endian
//! byte    u8
//! string  int byte count, then that many bytes (UTF-8 by contract)
//! ```
//!
//! | type | packet                 | direction    | fields after the type                     |
//! |------|------------------------|--------------|-------------------------------------------|
//! | 1    | CONNECT_REQUEST        | client->srv  | string username                           |
//! | 2    | CONNECT_RESPONSE       | srv->client  | byte accepted (1) / refused (0)           |
//! | 3    | CONNECT_NOTIFY         | srv->all     | string username                           |
//! | 4    | PUBLIC_MESSAGE         | client->srv  | string message                            |
//! | 5    | PUBLIC_BROADCAST       | srv->all     | string username, string message           |
//! | 6    | PRIVATE_REQUEST        | Src->srv     | string Dst                                |
//! | 7    | PRIVATE_REQUEST_NOTIFY | srv->Dst     | string Src                                |
//! | 8    | PRIVATE_ACCEPT         | Dst->srv     | string Src                                |
//! | 9    | PRIVATE_DST_ADDRESS    | srv->Src     | string Dst, int size, address             |
//! | 10   | PRIVATE_SRC_PORTS      | Src->srv     | string Dst, int message port, int file port |
//! | 11   | PRIVATE_SRC_ADDRESS    | srv->Dst     | string Src, int size, address, int message port, int file port |
//! | 12   | PRIVATE_MESSAGE        | client->client | string message                          |
//! | 13   | PRIVATE_FILE           | client->client | long size, then the file's bytes        |
//! | 14   | PRIVATE_SIGN_OUT       | client->client | none                                    |
//! | 15   | PUBLIC_SIGN_OUT        | client->srv  | none                                      |
//! | 16   | SIGN_OUT_NOTIFY        | srv->all     | string username                           |
//! | 17   | ERROR                  | srv->client  | int code, string reason (our addition)    |
//!
//! There are three decoders, one per kind of stream ([`decode_from_client`],
//! [`decode_from_server`], [`decode_from_peer`]): a packet that does not belong on a stream is
//! as wrong as an unknown type, and must be refused before its body is buffered.
//!
//! A decoded [`Packet`] is one `split_to(n).freeze()` of the read buffer and its strings are
//! `Bytes` slices of it. Whether a string is UTF-8 (or a sensible name) is the logic's business:
//! the codec only checks sizes, so a relay never pays for a validation it does not need.
//!
//! Every size is checked against [`Limits`] as soon as its field has arrived, before waiting
//! for the bytes it announces, so a peer cannot make the server buffer a body it will refuse.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

pub const CONNECT_REQUEST: i32 = 1;
pub const CONNECT_RESPONSE: i32 = 2;
pub const CONNECT_NOTIFY: i32 = 3;
pub const PUBLIC_MESSAGE: i32 = 4;
pub const PUBLIC_BROADCAST: i32 = 5;
pub const PRIVATE_REQUEST: i32 = 6;
pub const PRIVATE_REQUEST_NOTIFY: i32 = 7;
pub const PRIVATE_ACCEPT: i32 = 8;
pub const PRIVATE_DST_ADDRESS: i32 = 9;
pub const PRIVATE_SRC_PORTS: i32 = 10;
pub const PRIVATE_SRC_ADDRESS: i32 = 11;
pub const PRIVATE_MESSAGE: i32 = 12;
pub const PRIVATE_FILE: i32 = 13;
pub const PRIVATE_SIGN_OUT: i32 = 14;
pub const PUBLIC_SIGN_OUT: i32 = 15;
pub const SIGN_OUT_NOTIFY: i32 = 16;
pub const ERROR: i32 = 17;

/// A file's bytes follow its PRIVATE_FILE header in chunks of this size (the last may be
/// shorter). The chunks carry no header of their own: the receiver counts bytes.
pub const FILE_CHUNK_BYTES: usize = 4096;
/// The address sizes PRIVATE_DST_ADDRESS and PRIVATE_SRC_ADDRESS may carry.
pub const IPV4_ADDRESS_BYTES: usize = 4;
pub const IPV6_ADDRESS_BYTES: usize = 16;

const TYPE_BYTES: usize = 4;
const INT_BYTES: usize = 4;
const LONG_BYTES: usize = 8;

/// Size limits the decoders enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest string of any field. Stricter limits (a name's 32 bytes, a message's 512)
    /// are the logic's: a string between those and this one is a refused request, not lost
    /// framing.
    pub string_bytes_max: usize,
    /// The largest file a PRIVATE_FILE header may announce. The receiver may refuse less (free
    /// disk space, its own choice); this only keeps the count sane.
    pub file_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            string_bytes_max: 4096,
            file_bytes_max: 1 << 40,
        }
    }
}

/// The codes of our ERROR packet (type 17). The seed defines no error packet; these are ours.
///
/// | code | name                   | meaning                                                      | then     |
/// |------|------------------------|--------------------------------------------------------------|----------|
/// | 1    | UnknownType            | a type unknown, or not one a client may send                 | close    |
/// | 2    | BadSize                | a size negative or over its limit; framing is lost           | close    |
/// | 3    | InvalidMessage         | a message too long, not UTF-8, or with a control character   | stays    |
/// | 4    | UnknownUser            | a private request for a user who is not signed in            | stays    |
/// | 5    | RequestToSelf          | a private request to oneself                                 | stays    |
/// | 6    | NoPendingRequest       | PRIVATE_ACCEPT without a pending request from that user      | stays    |
/// | 7    | LinkNotAccepted        | PRIVATE_SRC_PORTS without an accepted request to that user   | stays    |
/// | 8    | NotSignedIn            | anything but CONNECT_REQUEST before the name was accepted    | stays    |
/// |      |                        | (or no name accepted by `--handshake-timeout-ms`: closes)    |          |
/// | 9    | AlreadySignedIn        | CONNECT_REQUEST after the name was accepted                  | stays    |
/// | 10   | TooManyPendingRequests | the sender has too many private requests pending             | stays    |
/// | 11   | BadPort                | a port outside 1..=65535                                     | stays    |
/// | 12   | TooManyRequests        | private requests faster than the sender's or the pair's rate | stays    |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    UnknownType = 1,
    BadSize = 2,
    InvalidMessage = 3,
    UnknownUser = 4,
    RequestToSelf = 5,
    NoPendingRequest = 6,
    LinkNotAccepted = 7,
    NotSignedIn = 8,
    AlreadySignedIn = 9,
    TooManyPendingRequests = 10,
    BadPort = 11,
    TooManyRequests = 12,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::UnknownType,
        ErrorCode::BadSize,
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownUser,
        ErrorCode::RequestToSelf,
        ErrorCode::NoPendingRequest,
        ErrorCode::LinkNotAccepted,
        ErrorCode::NotSignedIn,
        ErrorCode::AlreadySignedIn,
        ErrorCode::TooManyPendingRequests,
        ErrorCode::BadPort,
        ErrorCode::TooManyRequests,
    ];

    /// The number on the wire.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The code numbered `code`; `None` for a number we do not define (a client shows it raw).
    pub fn from_code(code: i32) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short description, for logs and for a client to show.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownType => "unknown packet type",
            ErrorCode::BadSize => "bad size",
            ErrorCode::InvalidMessage => "invalid message",
            ErrorCode::UnknownUser => "unknown user",
            ErrorCode::RequestToSelf => "private request to oneself",
            ErrorCode::NoPendingRequest => "no pending private request",
            ErrorCode::LinkNotAccepted => "private link not accepted",
            ErrorCode::NotSignedIn => "not signed in",
            ErrorCode::AlreadySignedIn => "already signed in",
            ErrorCode::TooManyPendingRequests => "too many pending private requests",
            ErrorCode::BadPort => "bad port",
            ErrorCode::TooManyRequests => "too many private requests",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.code())
    }
}

/// One packet. Strings and addresses are zero-copy slices of the received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    ConnectRequest {
        username: Bytes,
    },
    ConnectResponse {
        accepted: bool,
    },
    ConnectNotify {
        username: Bytes,
    },
    PublicMessage {
        message: Bytes,
    },
    PublicBroadcast {
        username: Bytes,
        message: Bytes,
    },
    /// From Src: `username` is Dst.
    PrivateRequest {
        username: Bytes,
    },
    /// To Dst: `username` is Src.
    PrivateRequestNotify {
        username: Bytes,
    },
    /// From Dst: `username` is Src.
    PrivateAccept {
        username: Bytes,
    },
    /// To Src: Dst's name and IP address (4 or 16 bytes).
    PrivateDstAddress {
        username: Bytes,
        address: Bytes,
    },
    /// From Src: Dst's name and the two ports Src listens on.
    PrivateSrcPorts {
        username: Bytes,
        message_port: i32,
        file_port: i32,
    },
    /// To Dst: Src's name, IP address (4 or 16 bytes) and ports.
    PrivateSrcAddress {
        username: Bytes,
        address: Bytes,
        message_port: i32,
        file_port: i32,
    },
    PrivateMessage {
        message: Bytes,
    },
    /// The header only: `size` raw bytes follow on the stream, which the caller reads itself
    /// (they are not framed, and may be far larger than any buffer).
    PrivateFile {
        size: i64,
    },
    PrivateSignOut,
    PublicSignOut,
    SignOutNotify {
        username: Bytes,
    },
    /// `code` stays raw: a client must survive a code it does not know
    /// ([`ErrorCode::from_code`]).
    Error {
        code: i32,
        reason: Bytes,
    },
}

impl Packet {
    /// The type number on the wire.
    pub fn packet_type(&self) -> i32 {
        self.with_values(|kind, _| kind)
    }

    /// The encoded size in bytes, type included.
    pub fn encoded_len(&self) -> usize {
        self.with_values(|_, values| frame_bytes(values))
    }

    /// The encoded packet in a buffer of its own.
    pub fn to_bytes(&self) -> Bytes {
        self.with_values(frame)
    }

    /// Hand the packet's type and fields, borrowed, to `f`: the one place a packet's layout
    /// is written down for encoding.
    fn with_values<R>(&self, f: impl FnOnce(i32, &[Value<'_>]) -> R) -> R {
        use Value::{Byte, Int, Long, Sized};
        match self {
            Packet::ConnectRequest { username } => f(CONNECT_REQUEST, &[Sized(username)]),
            Packet::ConnectResponse { accepted } => {
                f(CONNECT_RESPONSE, &[Byte(u8::from(*accepted))])
            }
            Packet::ConnectNotify { username } => f(CONNECT_NOTIFY, &[Sized(username)]),
            Packet::PublicMessage { message } => f(PUBLIC_MESSAGE, &[Sized(message)]),
            Packet::PublicBroadcast { username, message } => {
                f(PUBLIC_BROADCAST, &[Sized(username), Sized(message)])
            }
            Packet::PrivateRequest { username } => f(PRIVATE_REQUEST, &[Sized(username)]),
            Packet::PrivateRequestNotify { username } => {
                f(PRIVATE_REQUEST_NOTIFY, &[Sized(username)])
            }
            Packet::PrivateAccept { username } => f(PRIVATE_ACCEPT, &[Sized(username)]),
            Packet::PrivateDstAddress { username, address } => {
                f(PRIVATE_DST_ADDRESS, &[Sized(username), Sized(address)])
            }
            Packet::PrivateSrcPorts {
                username,
                message_port,
                file_port,
            } => f(
                PRIVATE_SRC_PORTS,
                &[Sized(username), Int(*message_port), Int(*file_port)],
            ),
            Packet::PrivateSrcAddress {
                username,
                address,
                message_port,
                file_port,
            } => f(
                PRIVATE_SRC_ADDRESS,
                &[
                    Sized(username),
                    Sized(address),
                    Int(*message_port),
                    Int(*file_port),
                ],
            ),
            Packet::PrivateMessage { message } => f(PRIVATE_MESSAGE, &[Sized(message)]),
            Packet::PrivateFile { size } => f(PRIVATE_FILE, &[Long(*size)]),
            Packet::PrivateSignOut => f(PRIVATE_SIGN_OUT, &[]),
            Packet::PublicSignOut => f(PUBLIC_SIGN_OUT, &[]),
            Packet::SignOutNotify { username } => f(SIGN_OUT_NOTIFY, &[Sized(username)]),
            Packet::Error { code, reason } => f(ERROR, &[Int(*code), Sized(reason)]),
        }
    }

    /// Build the packet of type `kind` from a whole frame whose sizes [`frame_len`] checked.
    /// `None` only for a type without a layout, which the decoders refuse before getting here.
    fn from_frame(kind: i32, frame: Bytes) -> Option<Packet> {
        let mut r = FrameReader {
            frame,
            at: TYPE_BYTES,
        };
        // Struct fields are evaluated in the order written, which is the order on the wire.
        let packet = match kind {
            CONNECT_REQUEST => Packet::ConnectRequest {
                username: r.sized(),
            },
            CONNECT_RESPONSE => Packet::ConnectResponse {
                // Any non-zero byte is acceptance, as Java's readBoolean reads it; our server
                // only writes 0 and 1.
                accepted: r.byte() != 0,
            },
            CONNECT_NOTIFY => Packet::ConnectNotify {
                username: r.sized(),
            },
            PUBLIC_MESSAGE => Packet::PublicMessage { message: r.sized() },
            PUBLIC_BROADCAST => Packet::PublicBroadcast {
                username: r.sized(),
                message: r.sized(),
            },
            PRIVATE_REQUEST => Packet::PrivateRequest {
                username: r.sized(),
            },
            PRIVATE_REQUEST_NOTIFY => Packet::PrivateRequestNotify {
                username: r.sized(),
            },
            PRIVATE_ACCEPT => Packet::PrivateAccept {
                username: r.sized(),
            },
            PRIVATE_DST_ADDRESS => Packet::PrivateDstAddress {
                username: r.sized(),
                address: r.sized(),
            },
            PRIVATE_SRC_PORTS => Packet::PrivateSrcPorts {
                username: r.sized(),
                message_port: r.int(),
                file_port: r.int(),
            },
            PRIVATE_SRC_ADDRESS => Packet::PrivateSrcAddress {
                username: r.sized(),
                address: r.sized(),
                message_port: r.int(),
                file_port: r.int(),
            },
            PRIVATE_MESSAGE => Packet::PrivateMessage { message: r.sized() },
            PRIVATE_FILE => Packet::PrivateFile { size: r.long() },
            PRIVATE_SIGN_OUT => Packet::PrivateSignOut,
            PUBLIC_SIGN_OUT => Packet::PublicSignOut,
            SIGN_OUT_NOTIFY => Packet::SignOutNotify {
                username: r.sized(),
            },
            ERROR => Packet::Error {
                code: r.int(),
                reason: r.sized(),
            },
            _ => return None,
        };
        Some(packet)
    }
}

/// Why bytes are not a packet. Framing is lost either way: the connection must close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A type that is unknown, or that does not belong on this stream (a server-to-client
    /// packet sent by a client, for example).
    UnknownType(i32),
    /// A string size or a file size below zero.
    NegativeSize,
    /// A string size over [`Limits::string_bytes_max`], or a file size over
    /// [`Limits::file_bytes_max`].
    TooLarge,
    /// An address size other than 4 (IPv4) or 16 (IPv6).
    BadAddressSize(i32),
}

impl DecodeError {
    /// The code of the ERROR packet that answers this error.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::NegativeSize | DecodeError::TooLarge | DecodeError::BadAddressSize(_) => {
                ErrorCode::BadSize
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownType(kind) => {
                write!(f, "MATOU packet type {kind} is unknown on this stream")
            }
            DecodeError::NegativeSize => f.write_str("MATOU size field is negative"),
            DecodeError::TooLarge => f.write_str("MATOU size field is over its limit"),
            DecodeError::BadAddressSize(size) => {
                write!(f, "MATOU address size {size} is neither 4 nor 16")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Who writes a stream: each kind of stream has its own set of packets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// A client writing to the server.
    Client,
    /// The server writing to a client.
    Server,
    /// A client writing to another on a private link.
    Peer,
}

fn writer_of(kind: i32) -> Option<Writer> {
    match kind {
        CONNECT_REQUEST | PUBLIC_MESSAGE | PRIVATE_REQUEST | PRIVATE_ACCEPT | PRIVATE_SRC_PORTS
        | PUBLIC_SIGN_OUT => Some(Writer::Client),
        CONNECT_RESPONSE
        | CONNECT_NOTIFY
        | PUBLIC_BROADCAST
        | PRIVATE_REQUEST_NOTIFY
        | PRIVATE_DST_ADDRESS
        | PRIVATE_SRC_ADDRESS
        | SIGN_OUT_NOTIFY
        | ERROR => Some(Writer::Server),
        PRIVATE_MESSAGE | PRIVATE_FILE | PRIVATE_SIGN_OUT => Some(Writer::Peer),
        _ => None,
    }
}

/// The kinds of field after the type, for sizing a frame before it is cut.
#[derive(Clone, Copy)]
enum Field {
    Byte,
    Int,
    /// An int size, then that many bytes, within [`Limits::string_bytes_max`].
    String,
    /// An int size of 4 or 16, then that many bytes.
    Address,
    /// A long within 0..=[`Limits::file_bytes_max`]; the file's bytes are not part of the frame.
    FileSize,
}

fn layout(kind: i32) -> &'static [Field] {
    use Field::{Address, Byte, FileSize, Int, String};
    match kind {
        CONNECT_RESPONSE => &[Byte],
        PUBLIC_BROADCAST => &[String, String],
        PRIVATE_DST_ADDRESS => &[String, Address],
        PRIVATE_SRC_PORTS => &[String, Int, Int],
        PRIVATE_SRC_ADDRESS => &[String, Address, Int, Int],
        PRIVATE_FILE => &[FileSize],
        ERROR => &[Int, String],
        CONNECT_REQUEST
        | CONNECT_NOTIFY
        | PUBLIC_MESSAGE
        | PRIVATE_REQUEST
        | PRIVATE_REQUEST_NOTIFY
        | PRIVATE_ACCEPT
        | PRIVATE_MESSAGE
        | SIGN_OUT_NOTIFY => &[String],
        // PRIVATE_SIGN_OUT and PUBLIC_SIGN_OUT; the decoders never ask for an unknown type.
        _ => &[],
    }
}

fn read_array<const N: usize>(src: &[u8], at: usize) -> Option<[u8; N]> {
    src.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn read_i32(src: &[u8], at: usize) -> Option<i32> {
    read_array(src, at).map(i32::from_be_bytes)
}

fn read_i64(src: &[u8], at: usize) -> Option<i64> {
    read_array(src, at).map(i64::from_be_bytes)
}

fn string_len(size: i32, limits: &Limits) -> Result<usize, DecodeError> {
    let len = usize::try_from(size).map_err(|_| DecodeError::NegativeSize)?;
    if len > limits.string_bytes_max {
        return Err(DecodeError::TooLarge);
    }
    Ok(len)
}

fn address_len(size: i32) -> Result<usize, DecodeError> {
    match usize::try_from(size) {
        Ok(len @ (IPV4_ADDRESS_BYTES | IPV6_ADDRESS_BYTES)) => Ok(len),
        _ => Err(DecodeError::BadAddressSize(size)),
    }
}

fn check_file_size(size: i64, limits: &Limits) -> Result<(), DecodeError> {
    let size = u64::try_from(size).map_err(|_| DecodeError::NegativeSize)?;
    if size > limits.file_bytes_max {
        return Err(DecodeError::TooLarge);
    }
    Ok(())
}

/// The length of the frame at the front of `src` laid out as `fields`, once all of it has
/// arrived. Each size is checked as soon as its field is readable, before the bytes it
/// announces. Only the size fields are read, so calling this again as bytes trickle in costs
/// a few reads, never a rescan of a body.
fn frame_len(src: &[u8], fields: &[Field], limits: &Limits) -> Result<Option<usize>, DecodeError> {
    let mut at = TYPE_BYTES;
    for field in fields {
        let field_bytes = match field {
            Field::Byte => 1,
            Field::Int => INT_BYTES,
            Field::FileSize => {
                let Some(size) = read_i64(src, at) else {
                    return Ok(None);
                };
                check_file_size(size, limits)?;
                LONG_BYTES
            }
            Field::String | Field::Address => {
                let Some(size) = read_i32(src, at) else {
                    return Ok(None);
                };
                let len = match field {
                    Field::Address => address_len(size)?,
                    _ => string_len(size, limits)?,
                };
                INT_BYTES.saturating_add(len)
            }
        };
        at = at.saturating_add(field_bytes);
    }
    Ok((src.len() >= at).then_some(at))
}

fn decode(
    src: &mut BytesMut,
    limits: &Limits,
    writer: Writer,
) -> Result<Option<Packet>, DecodeError> {
    let Some(kind) = read_i32(src, 0) else {
        return Ok(None);
    };
    if writer_of(kind) != Some(writer) {
        return Err(DecodeError::UnknownType(kind));
    }
    let Some(len) = frame_len(src, layout(kind), limits)? else {
        return Ok(None);
    };
    let frame = src.split_to(len).freeze();
    Packet::from_frame(kind, frame)
        .map(Some)
        .ok_or(DecodeError::UnknownType(kind))
}

/// Cut one packet a client sent to the server (types 1, 4, 6, 8, 10, 15) from the front of
/// `src`.
///
/// `Ok(None)`: more bytes are needed; nothing is consumed. An error consumes nothing either,
/// and is fatal for the stream: framing is lost. Any other type is
/// [`DecodeError::UnknownType`] as soon as its 4 bytes are there; sizes are refused as soon as
/// their field is there. The packet shares `src`'s allocation (`split_to(n).freeze()`).
pub fn decode_from_client(
    src: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    decode(src, limits, Writer::Client)
}

/// Cut one packet the server sent to a client (types 2, 3, 5, 7, 9, 11, 16, 17); otherwise as
/// [`decode_from_client`].
pub fn decode_from_server(
    src: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    decode(src, limits, Writer::Server)
}

/// Cut one packet a client sent to another on a private link (types 12, 13, 14); otherwise as
/// [`decode_from_client`].
///
/// After [`Packet::PrivateFile`], the next `size` bytes of the stream are the file's, not
/// packets: the caller takes them from `src` (and the socket) before decoding again.
pub fn decode_from_peer(
    src: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    decode(src, limits, Writer::Peer)
}

/// Reads the fields of a frame whose sizes were checked: every read is in bounds. Should one
/// not be, it yields zero or empty rather than panicking.
struct FrameReader {
    frame: Bytes,
    at: usize,
}

impl FrameReader {
    fn byte(&mut self) -> u8 {
        let value = self.frame.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        value
    }

    fn int(&mut self) -> i32 {
        let value = read_i32(&self.frame, self.at).unwrap_or(0);
        self.at += INT_BYTES;
        value
    }

    fn long(&mut self) -> i64 {
        let value = read_i64(&self.frame, self.at).unwrap_or(0);
        self.at += LONG_BYTES;
        value
    }

    /// An int size, then that many bytes, as a slice of the frame.
    fn sized(&mut self) -> Bytes {
        let len = usize::try_from(self.int()).unwrap_or(0);
        let start = self.at;
        let end = start.saturating_add(len).min(self.frame.len());
        self.at = end;
        if start <= end {
            self.frame.slice(start..end)
        } else {
            Bytes::new()
        }
    }
}

/// A field to encode.
#[derive(Clone, Copy)]
enum Value<'a> {
    Byte(u8),
    Int(i32),
    Long(i64),
    /// A string or an address: an int size, then the bytes.
    Sized(&'a [u8]),
}

fn frame_bytes(values: &[Value<'_>]) -> usize {
    TYPE_BYTES
        + values
            .iter()
            .map(|value| match value {
                Value::Byte(_) => 1,
                Value::Int(_) => INT_BYTES,
                Value::Long(_) => LONG_BYTES,
                Value::Sized(bytes) => INT_BYTES + bytes.len(),
            })
            .sum::<usize>()
}

fn put_frame(dst: &mut BytesMut, kind: i32, values: &[Value<'_>]) {
    dst.reserve(frame_bytes(values));
    dst.put_i32(kind);
    for value in values {
        match *value {
            Value::Byte(byte) => dst.put_u8(byte),
            Value::Int(int) => dst.put_i32(int),
            Value::Long(long) => dst.put_i64(long),
            Value::Sized(bytes) => {
                // Strings over 2 GiB cannot be framed; nothing the codec decoded is that long,
                // and the program never builds one.
                debug_assert!(i32::try_from(bytes.len()).is_ok());
                dst.put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
                dst.put_slice(bytes);
            }
        }
    }
}

/// One frame in a buffer of its own, allocated once at its exact size.
fn frame(kind: i32, values: &[Value<'_>]) -> Bytes {
    let mut dst = BytesMut::with_capacity(frame_bytes(values));
    put_frame(&mut dst, kind, values);
    dst.freeze()
}

/// Append `packet`, encoded, to `dst`.
///
/// Addresses are written as given: the caller passes 4 or 16 bytes, or the receiver will
/// refuse the packet.
pub fn encode(packet: &Packet, dst: &mut BytesMut) {
    packet.with_values(|kind, values| put_frame(dst, kind, values));
}

// One function per packet, from borrowed fields, each returning the frame in a buffer of its
// own. A fan-out encodes once and clones the `Bytes` for every recipient.

pub fn connect_request(username: &[u8]) -> Bytes {
    frame(CONNECT_REQUEST, &[Value::Sized(username)])
}

pub fn connect_response(accepted: bool) -> Bytes {
    frame(CONNECT_RESPONSE, &[Value::Byte(u8::from(accepted))])
}

pub fn connect_notify(username: &[u8]) -> Bytes {
    frame(CONNECT_NOTIFY, &[Value::Sized(username)])
}

pub fn public_message(message: &[u8]) -> Bytes {
    frame(PUBLIC_MESSAGE, &[Value::Sized(message)])
}

pub fn public_broadcast(username: &[u8], message: &[u8]) -> Bytes {
    frame(
        PUBLIC_BROADCAST,
        &[Value::Sized(username), Value::Sized(message)],
    )
}

/// From Src; `dst_username` is the user asked for a link.
pub fn private_request(dst_username: &[u8]) -> Bytes {
    frame(PRIVATE_REQUEST, &[Value::Sized(dst_username)])
}

/// To Dst; `src_username` is the user asking.
pub fn private_request_notify(src_username: &[u8]) -> Bytes {
    frame(PRIVATE_REQUEST_NOTIFY, &[Value::Sized(src_username)])
}

/// From Dst; `src_username` is the user whose request is accepted.
pub fn private_accept(src_username: &[u8]) -> Bytes {
    frame(PRIVATE_ACCEPT, &[Value::Sized(src_username)])
}

/// To Src: Dst's name and IP address (4 or 16 bytes).
pub fn private_dst_address(dst_username: &[u8], address: &[u8]) -> Bytes {
    frame(
        PRIVATE_DST_ADDRESS,
        &[Value::Sized(dst_username), Value::Sized(address)],
    )
}

/// From Src: Dst's name and the ports Src listens on.
pub fn private_src_ports(dst_username: &[u8], message_port: i32, file_port: i32) -> Bytes {
    frame(
        PRIVATE_SRC_PORTS,
        &[
            Value::Sized(dst_username),
            Value::Int(message_port),
            Value::Int(file_port),
        ],
    )
}

/// To Dst: Src's name, IP address (4 or 16 bytes) and ports.
pub fn private_src_address(
    src_username: &[u8],
    address: &[u8],
    message_port: i32,
    file_port: i32,
) -> Bytes {
    frame(
        PRIVATE_SRC_ADDRESS,
        &[
            Value::Sized(src_username),
            Value::Sized(address),
            Value::Int(message_port),
            Value::Int(file_port),
        ],
    )
}

pub fn private_message(message: &[u8]) -> Bytes {
    frame(PRIVATE_MESSAGE, &[Value::Sized(message)])
}

/// The header of a file transfer; the caller then writes `size` bytes of file.
pub fn private_file(size: i64) -> Bytes {
    frame(PRIVATE_FILE, &[Value::Long(size)])
}

pub fn private_sign_out() -> Bytes {
    frame(PRIVATE_SIGN_OUT, &[])
}

pub fn public_sign_out() -> Bytes {
    frame(PUBLIC_SIGN_OUT, &[])
}

pub fn sign_out_notify(username: &[u8]) -> Bytes {
    frame(SIGN_OUT_NOTIFY, &[Value::Sized(username)])
}

pub fn error(code: ErrorCode, reason: &[u8]) -> Bytes {
    frame(ERROR, &[Value::Int(code.code()), Value::Sized(reason)])
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
