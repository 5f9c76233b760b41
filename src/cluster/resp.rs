//! RESP2, the little the reactor's two Redis links need: replies parsed from a read buffer
//! without copying (a bulk string comes out as a `Bytes` slice of the bytes read), and
//! commands encoded as arrays of bulk strings.
//!
//! A reply is input like any other: every length is bounded (a bulk by the largest payload
//! the cluster's codec can produce, with margin; an array by what Redis sends these links,
//! with margin; nesting likewise), and anything else is a [`RespError`], never a panic. The
//! caller takes an error for a lost link: the stream is out of step after it.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec;

/// The largest payload [`codec::encode`] or [`codec::encode_roster`] can produce: a roster of
/// [`codec::ROSTER_ENTRIES_MAX`] entries of the longest names (about 103 MB); a lobby text
/// (1 MiB) or a CCM content is far below it. The header: version, node name, incarnation,
/// sequence number; the roster's: tag, reply_to, asks, entry count.
pub const PAYLOAD_BYTES_MAX: usize = (1 + 1 + codec::NODE_NAME_BYTES_MAX + 8 + 8)
    + (1 + 8 + 1 + 4)
    + codec::ROSTER_ENTRIES_MAX * (1 + 2 + codec::NAME_BYTES_MAX + 4);
/// The longest bulk string accepted: the largest payload with margin (a channel name, or a
/// future field, is far smaller than the margin). Anything longer is a protocol error.
pub const BULK_BYTES_MAX: usize = PAYLOAD_BYTES_MAX + 64 * 1024;
// A lobby text with its envelope fits, whatever the roster bound becomes.
const _: () = assert!(codec::TEXT_BYTES_MAX + 4096 < BULK_BYTES_MAX);
/// The most elements of one array: Redis sends these links arrays of two or three.
pub const ARRAY_LEN_MAX: usize = 16;
/// The deepest nesting of arrays (a top-level array is depth 1).
pub const DEPTH_MAX: usize = 4;
/// The longest line (a simple string, an error, an integer or a length) before its CRLF.
pub const LINE_BYTES_MAX: usize = 4096;

/// One RESP2 reply. Strings share the read buffer's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Bytes),
    /// A null bulk string or a null array.
    Null,
    Array(Vec<Value>),
}

impl Value {
    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(bytes) | Value::Simple(bytes) => Some(bytes),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespError {
    /// A first byte that starts no RESP2 type.
    Type(u8),
    /// A line without its CRLF within [`LINE_BYTES_MAX`], or a CR not followed by LF.
    Line,
    /// A length or integer that is not a decimal number (or not in range).
    Number,
    BulkTooLong(i64),
    /// A bulk string's bytes not followed by CRLF.
    BulkEnd,
    ArrayTooLong(i64),
    TooDeep,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Type(byte) => write!(f, "RESP: unknown type byte 0x{byte:02x}"),
            RespError::Line => write!(f, "RESP: a line without CRLF within {LINE_BYTES_MAX} bytes"),
            RespError::Number => write!(f, "RESP: a length or integer that is not a number"),
            RespError::BulkTooLong(len) => {
                write!(
                    f,
                    "RESP: a bulk string of {len} bytes (at most {BULK_BYTES_MAX})"
                )
            }
            RespError::BulkEnd => write!(f, "RESP: a bulk string not ended by CRLF"),
            RespError::ArrayTooLong(len) => {
                write!(
                    f,
                    "RESP: an array of {len} elements (at most {ARRAY_LEN_MAX})"
                )
            }
            RespError::TooDeep => write!(f, "RESP: arrays nested deeper than {DEPTH_MAX}"),
        }
    }
}

impl std::error::Error for RespError {}

/// A reply located in the buffer, before it is taken out.
enum Raw {
    Simple(Range<usize>),
    Error(Range<usize>),
    Integer(i64),
    Bulk(Range<usize>),
    Null,
    Array(Vec<Raw>),
}

/// The first whole reply in `buf`, taken out of it; `Ok(None)` when `buf` holds only part of
/// one (nothing is taken: call again with more bytes).
pub fn parse(buf: &mut BytesMut) -> Result<Option<Value>, RespError> {
    let Some((raw, end)) = locate(buf, 0, 1)? else {
        return Ok(None);
    };
    let frozen = buf.split_to(end).freeze();
    Ok(Some(build(&frozen, raw)))
}

fn build(frozen: &Bytes, raw: Raw) -> Value {
    match raw {
        Raw::Simple(range) => Value::Simple(frozen.slice(range)),
        Raw::Error(range) => Value::Error(frozen.slice(range)),
        Raw::Integer(value) => Value::Integer(value),
        Raw::Bulk(range) => Value::Bulk(frozen.slice(range)),
        Raw::Null => Value::Null,
        Raw::Array(items) => {
            Value::Array(items.into_iter().map(|raw| build(frozen, raw)).collect())
        }
    }
}

/// The line starting at `at`: its range (without CRLF) and where the next thing starts.
fn line(buf: &[u8], at: usize) -> Result<Option<(Range<usize>, usize)>, RespError> {
    let rest = buf.get(at..).unwrap_or_default();
    let window = &rest[..rest.len().min(LINE_BYTES_MAX + 1)];
    match window.iter().position(|&byte| byte == b'\r') {
        Some(cr) => match rest.get(cr + 1) {
            Some(b'\n') => Ok(Some((at..at + cr, at + cr + 2))),
            Some(_) => Err(RespError::Line),
            None => Ok(None),
        },
        None if rest.len() > LINE_BYTES_MAX => Err(RespError::Line),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::Number);
    }
    let mut value: i64 = 0;
    for &digit in digits {
        value = value
            .checked_mul(10)
            .and_then(|value| value.checked_add(i64::from(digit - b'0')))
            .ok_or(RespError::Number)?;
    }
    Ok(if negative { -value } else { value })
}

/// The reply starting at `at` (at nesting `depth`) and where it ends.
fn locate(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Raw, usize)>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    let raw = match kind {
        b'+' => Raw::Simple(text),
        b'-' => Raw::Error(text),
        b':' => Raw::Integer(number(&buf[text])?),
        b'$' => {
            let len = number(&buf[text])?;
            if len == -1 {
                return Ok(Some((Raw::Null, next)));
            }
            let size = usize::try_from(len).map_err(|_| RespError::Number)?;
            if size > BULK_BYTES_MAX {
                return Err(RespError::BulkTooLong(len));
            }
            let end = next + size;
            match buf.get(end..end + 2) {
                None => return Ok(None),
                Some(b"\r\n") => return Ok(Some((Raw::Bulk(next..end), end + 2))),
                Some(_) => return Err(RespError::BulkEnd),
            }
        }
        b'*' => {
            let len = number(&buf[text])?;
            if len == -1 {
                return Ok(Some((Raw::Null, next)));
            }
            let count = usize::try_from(len).map_err(|_| RespError::Number)?;
            if count > ARRAY_LEN_MAX {
                return Err(RespError::ArrayTooLong(len));
            }
            if depth > DEPTH_MAX {
                return Err(RespError::TooDeep);
            }
            let mut items = Vec::with_capacity(count);
            let mut at = next;
            for _ in 0..count {
                let Some((item, end)) = locate(buf, at, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at = end;
            }
            return Ok(Some((Raw::Array(items), at)));
        }
        other => return Err(RespError::Type(other)),
    };
    Ok(Some((raw, next)))
}

/// Bytes [`encode_command`] writes for `args`.
pub fn command_len(args: &[&[u8]]) -> usize {
    let decimal = |n: usize| n.checked_ilog10().map_or(1, |digits| digits as usize + 1);
    1 + decimal(args.len())
        + 2
        + args
            .iter()
            .map(|arg| 1 + decimal(arg.len()) + 2 + arg.len() + 2)
            .sum::<usize>()
}

/// `args` as a RESP2 command: an array of bulk strings.
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    out.reserve(command_len(args));
    out.put_u8(b'*');
    out.put_slice(args.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for arg in args {
        out.put_u8(b'$');
        out.put_slice(arg.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &'static [u8]) -> Value {
        Value::Bulk(Bytes::from_static(text))
    }

    /// Replies Redis sends these links, and what they parse to.
    fn samples() -> Vec<(&'static [u8], Value)> {
        vec![
            (b":1\r\n", Value::Integer(1)),
            (b":-42\r\n", Value::Integer(-42)),
            (b"+PONG\r\n", Value::Simple(Bytes::from_static(b"PONG"))),
            (
                b"-ERR unknown command\r\n",
                Value::Error(Bytes::from_static(b"ERR unknown command")),
            ),
            (b"$-1\r\n", Value::Null),
            (b"*-1\r\n", Value::Null),
            (b"$0\r\n\r\n", bulk(b"")),
            (b"$4\r\na\r\nb\r\n", bulk(b"a\r\nb")),
            (
                b"*3\r\n$9\r\nsubscribe\r\n$17\r\nswitchboard:lobby\r\n:1\r\n",
                Value::Array(vec![
                    bulk(b"subscribe"),
                    bulk(b"switchboard:lobby"),
                    Value::Integer(1),
                ]),
            ),
            (
                b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\n\x00\x01\x02\r\n",
                Value::Array(vec![bulk(b"message"), bulk(b"c"), bulk(b"\x00\x01\x02")]),
            ),
            (
                b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
                Value::Array(vec![bulk(b"pong"), bulk(b"")]),
            ),
            (
                b"*2\r\n*1\r\n:7\r\n*0\r\n",
                Value::Array(vec![
                    Value::Array(vec![Value::Integer(7)]),
                    Value::Array(vec![]),
                ]),
            ),
        ]
    }

    #[test]
    fn every_reply_parses_whole_and_leaves_what_follows() {
        for (wire, value) in samples() {
            let mut buf = BytesMut::from(wire);
            buf.extend_from_slice(b":9\r\n");
            assert_eq!(parse(&mut buf), Ok(Some(value)), "{wire:?}");
            assert_eq!(parse(&mut buf), Ok(Some(Value::Integer(9))));
            assert!(buf.is_empty());
            assert_eq!(parse(&mut buf), Ok(None));
        }
    }

    #[test]
    fn a_reply_split_at_every_byte_is_incomplete_until_its_last_byte() {
        for (wire, value) in samples() {
            for split in 0..wire.len() {
                let mut buf = BytesMut::from(&wire[..split]);
                assert_eq!(parse(&mut buf), Ok(None), "{wire:?} cut at {split}");
                assert_eq!(buf.len(), split, "nothing taken from a part");
                buf.extend_from_slice(&wire[split..]);
                assert_eq!(
                    parse(&mut buf),
                    Ok(Some(value.clone())),
                    "{wire:?} at {split}"
                );
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn replies_fed_one_byte_at_a_time_come_out_in_order() {
        let wire: Vec<u8> = samples()
            .iter()
            .flat_map(|(wire, _)| wire.to_vec())
            .collect();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in &wire {
            buf.extend_from_slice(&[byte]);
            while let Some(value) = parse(&mut buf).unwrap() {
                got.push(value);
            }
        }
        let want: Vec<Value> = samples().into_iter().map(|(_, value)| value).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_bulk_payload_shares_the_read_buffer() {
        let mut buf = BytesMut::from(&b"$5\r\nhello\r\n"[..]);
        let start = buf.as_ptr() as usize;
        let Ok(Some(Value::Bulk(payload))) = parse(&mut buf) else {
            panic!("not a bulk");
        };
        assert_eq!(payload.as_ptr() as usize, start + 4, "not copied");
    }

    #[test]
    fn malformed_replies_are_clear_errors() {
        let cases: [(&[u8], RespError); 11] = [
            (b"?x\r\n", RespError::Type(b'?')),
            (b":12a\r\n", RespError::Number),
            (b":\r\n", RespError::Number),
            (b":99999999999999999999\r\n", RespError::Number),
            (b"$-2\r\n", RespError::Number),
            (b"$3\r\nabcd\r\n", RespError::BulkEnd),
            (b"+OK\rX", RespError::Line),
            (b"*-5\r\n", RespError::Number),
            (b"*17\r\n", RespError::ArrayTooLong(17)),
            (b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", RespError::TooDeep),
            (b"*2\r\n:1\r\n!\r\n", RespError::Type(b'!')),
        ];
        for (wire, error) in cases {
            let mut buf = BytesMut::from(wire);
            assert_eq!(parse(&mut buf), Err(error), "{wire:?}");
        }
        // A line that never ends is refused once it is past its bound, not buffered for ever.
        let mut buf = BytesMut::from(&b"+"[..]);
        buf.extend_from_slice(&vec![b'a'; LINE_BYTES_MAX]);
        assert_eq!(parse(&mut buf), Ok(None));
        buf.extend_from_slice(b"a");
        assert_eq!(parse(&mut buf), Err(RespError::Line));
        // Four levels are allowed.
        let mut buf = BytesMut::from(&b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"[..]);
        assert!(matches!(parse(&mut buf), Ok(Some(Value::Array(_)))));
    }

    #[test]
    fn an_oversized_bulk_is_refused_from_its_length_alone_and_the_largest_passes() {
        let over = BULK_BYTES_MAX as i64 + 1;
        let mut buf = BytesMut::from(format!("${over}\r\n").as_bytes());
        assert_eq!(parse(&mut buf), Err(RespError::BulkTooLong(over)));
        // The largest legal payload is below the bound.
        let mut buf = BytesMut::from(format!("${PAYLOAD_BYTES_MAX}\r\n").as_bytes());
        assert_eq!(parse(&mut buf), Ok(None), "waits for the rest");
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings_that_parse_back() {
        let args: [&[u8]; 3] = [b"PUBLISH", b"switchboard:lobby", &[0u8; 1000]];
        let mut out = BytesMut::new();
        encode_command(&mut out, &args);
        assert_eq!(out.len(), command_len(&args));
        assert!(out.starts_with(b"*3\r\n$7\r\nPUBLISH\r\n$17\r\nswitchboard:lobby\r\n$1000\r\n"));
        let parsed = parse(&mut out).unwrap().unwrap();
        let want = Value::Array(
            args.iter()
                .map(|arg| Value::Bulk(Bytes::copy_from_slice(arg)))
                .collect(),
        );
        assert_eq!(parsed, want);
        let mut ping = BytesMut::new();
        encode_command(&mut ping, &[b"PING"]);
        assert_eq!(&ping[..], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(command_len(&[b"PING"]), ping.len());
        assert_eq!(
            command_len(&[&[0u8; 10][..]; 10]),
            "*10\r\n".len() + 10 * "$10\r\n0123456789\r\n".len()
        );
    }
}
