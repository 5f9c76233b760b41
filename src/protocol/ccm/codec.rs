//! CCM wire format: an HTTP-like text header, a blank line, then the content.
//!
//! ```text
//! CCM\1.0 <Type>          literal backslash; the magic is ASCII case-insensitive
//! <Key>: <Value>          zero or more attributes
//! <blank line>            LF or CRLF endings, mixed allowed
//! <content>               Content-Length bytes, or the rest of the read burst
//! ```
//!
//! A decoded [`Message`] is one `split_to(n).freeze()` of the read buffer and every field is a
//! `Bytes` slice of it, so the content can be relayed to any number of users without a copy
//! (the server writes a fresh header with [`encode_head`] and queues the shared content after it).
//!
//! The original client never sends `Content-Length`: it writes one message per socket write and
//! the original server treats whatever one read returns as one message. [`decode`] keeps that
//! behaviour behind its `burst_ended` flag, and honours `Content-Length` when present, which the
//! server itself always writes.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// The first 4 bytes of every CCM connection (compared ASCII case-insensitively).
pub const MAGIC: &[u8; 4] = b"CCM\\";
/// The largest header: start line, attributes and the blank line.
pub const HEADER_BYTES_MAX: usize = 8 * 1024;
/// The largest content, declared or received in one burst.
pub const CONTENT_BYTES_MAX: usize = 1024 * 1024;

/// The version the server writes.
const VERSION: &[u8] = b"1.0";
const CONTENT_LENGTH: &str = "Content-Length";

/// What the first bytes of a connection say about its protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Detection {
    /// Fewer than 4 bytes, all consistent with `CCM\` so far.
    NeedMore,
    Ccm,
    /// The peer speaks something else: it gets [`http_bad_request`], then the connection closes.
    NotCcm,
}

/// Look at the first bytes of a connection: `CCM\` ASCII case-insensitive; fewer than 4 bytes
/// that are a prefix of it (case-insensitively) -> `NeedMore`; anything else -> `NotCcm`.
///
/// Refusing as early as possible (one wrong byte is enough) lets the server answer an HTTP
/// client or a port scanner at once instead of waiting for bytes that may never come.
pub fn detect(first: &[u8]) -> Detection {
    let n = first.len().min(MAGIC.len());
    if !first[..n].eq_ignore_ascii_case(&MAGIC[..n]) {
        Detection::NotCcm
    } else if n < MAGIC.len() {
        Detection::NeedMore
    } else {
        Detection::Ccm
    }
}

/// The message types the contract names. Unknown names are not a decoding error: the type is
/// kept as sent in [`Message::kind`] and what to do with it is the logic's business.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    NotDefined,
    Connect,
    ConnectVoice,
    Identity,
    Text,
    Raw,
    Audio,
    Streaming,
    Error,
    Disconnect,
}

impl MessageType {
    pub const ALL: [MessageType; 10] = [
        MessageType::NotDefined,
        MessageType::Connect,
        MessageType::ConnectVoice,
        MessageType::Identity,
        MessageType::Text,
        MessageType::Raw,
        MessageType::Audio,
        MessageType::Streaming,
        MessageType::Error,
        MessageType::Disconnect,
    ];

    /// The type named `name`, ASCII case-insensitive (the original parses enum names with
    /// `ignoreCase`).
    pub fn parse(name: &[u8]) -> Option<MessageType> {
        MessageType::ALL
            .into_iter()
            .find(|t| t.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// The canonical spelling, as the server writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::NotDefined => "NotDefined",
            MessageType::Connect => "Connect",
            MessageType::ConnectVoice => "ConnectVoice",
            MessageType::Identity => "Identity",
            MessageType::Text => "Text",
            MessageType::Raw => "Raw",
            MessageType::Audio => "Audio",
            MessageType::Streaming => "Streaming",
            MessageType::Error => "Error",
            MessageType::Disconnect => "Disconnect",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message. Every field is a zero-copy `Bytes` slice of the received buffer.
///
/// The header was checked to be UTF-8 by [`decode`], so `version`, `kind` and the attributes
/// are valid UTF-8; they stay `Bytes` so that relaying a value costs a reference count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// As sent after `CCM\` ("1.0"); not checked, since the original ignores it too.
    pub version: Bytes,
    /// The type name as sent ("NotDefined", "Text", ...); see [`Message::message_type`].
    pub kind: Bytes,
    /// (key, value) in the order sent: key as sent, value trimmed of spaces and tabs.
    /// Duplicates are kept; [`Message::attribute`] returns the first.
    pub attributes: Vec<(Bytes, Bytes)>,
    pub content: Bytes,
}

impl Message {
    /// Value of the first attribute named `key`, ASCII case-insensitive (HTTP's rule, and the
    /// original client and server disagree on capitalisation nowhere we could check).
    pub fn attribute(&self, key: &str) -> Option<&Bytes> {
        self.attributes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The parse of `kind`; `None` for a name the contract does not know.
    pub fn message_type(&self) -> Option<MessageType> {
        MessageType::parse(&self.kind)
    }
}

/// Why bytes are not a CCM message. Framing is lost either way: the connection must close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The start line does not begin with `CCM\` (case-insensitive).
    NotCcm,
    /// Not `CCM\<version> <Type>` (version and type non-empty, one space; trailing CR allowed).
    BadStartLine,
    /// A header line without `:`, or with an empty key.
    BadAttribute,
    /// `Content-Length` is not a decimal number, or two of them disagree.
    BadContentLength,
    /// No blank line within [`HEADER_BYTES_MAX`] bytes.
    HeaderTooLarge,
    /// `Content-Length`, or a burst without it, over [`CONTENT_BYTES_MAX`].
    ContentTooLarge,
    /// The header bytes are not UTF-8.
    NotUtf8Header,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotCcm => f.write_str("CCM message does not start with CCM\\"),
            DecodeError::BadStartLine => {
                f.write_str("CCM start line is not `CCM\\<version> <Type>`")
            }
            DecodeError::BadAttribute => f.write_str("CCM header line is not `<Key>: <Value>`"),
            DecodeError::BadContentLength => {
                f.write_str("CCM Content-Length is not one decimal number")
            }
            DecodeError::HeaderTooLarge => write!(
                f,
                "CCM header has no blank line within {HEADER_BYTES_MAX} bytes"
            ),
            DecodeError::ContentTooLarge => {
                write!(f, "CCM content over {CONTENT_BYTES_MAX} bytes")
            }
            DecodeError::NotUtf8Header => f.write_str("CCM header is not UTF-8"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Where the blank line ends: the header's length, blank line included.
///
/// Only the first [`HEADER_BYTES_MAX`] bytes are looked at, so a header trickling in byte by
/// byte costs at most 8 KiB of scanning per call, never a quadratic rescan of a growing buffer.
/// A blank line is an LF followed by LF or by CR LF, which covers "\n\n", "\r\n\r\n", "\n\r\n"
/// and "\r\n\n". The start line itself is never blank (it starts with the magic).
fn find_header_end(src: &[u8]) -> Option<usize> {
    let window = &src[..src.len().min(HEADER_BYTES_MAX)];
    let mut from = 0;
    while let Some(offset) = window[from..].iter().position(|&b| b == b'\n') {
        let lf = from + offset;
        match window.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => from = lf + 1,
        }
    }
    None
}

/// Positions of a header's parts within the buffer, so that the slices can be taken after the
/// message is cut without parsing twice.
struct Head {
    version: (usize, usize),
    kind: (usize, usize),
    attributes: Vec<((usize, usize), (usize, usize))>,
    content_length: Option<usize>,
}

/// `end`, or one less when `buf[start..end]` ends with CR.
fn strip_cr(buf: &[u8], start: usize, end: usize) -> usize {
    if end > start && buf[end - 1] == b'\r' {
        end - 1
    } else {
        end
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parse the header `head`: the bytes before the blank line's last line ending (`head` ends
/// with the LF of the last non-blank line, which is dropped here).
fn parse_head(head: &[u8]) -> Result<Head, DecodeError> {
    if std::str::from_utf8(head).is_err() {
        return Err(DecodeError::NotUtf8Header);
    }
    let mut lines = LineIter { buf: head, pos: 0 };
    // The caller found a blank line after at least the start line, so there is one.
    let (start, end) = lines.next().ok_or(DecodeError::BadStartLine)?;
    let line = &head[start..end];
    if line.len() < MAGIC.len() || !line[..MAGIC.len()].eq_ignore_ascii_case(MAGIC) {
        return Err(DecodeError::NotCcm);
    }
    let rest = start + MAGIC.len();
    let space = head[rest..end]
        .iter()
        .position(|&b| b == b' ')
        .ok_or(DecodeError::BadStartLine)?
        + rest;
    let version = (rest, space);
    let kind = (space + 1, end);
    if version.0 == version.1 || kind.0 == kind.1 || head[kind.0..kind.1].contains(&b' ') {
        return Err(DecodeError::BadStartLine);
    }

    let mut attributes = Vec::new();
    let mut content_length = None;
    for (start, end) in lines {
        let line = &head[start..end];
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(DecodeError::BadAttribute)?;
        if colon == 0 {
            return Err(DecodeError::BadAttribute);
        }
        let key = (start, start + colon);
        let mut v_start = start + colon + 1;
        let mut v_end = end;
        while v_start < v_end && is_blank(head[v_start]) {
            v_start += 1;
        }
        while v_end > v_start && is_blank(head[v_end - 1]) {
            v_end -= 1;
        }
        if head[key.0..key.1].eq_ignore_ascii_case(CONTENT_LENGTH.as_bytes()) {
            let declared = parse_length(&head[v_start..v_end])?;
            // Two lengths that disagree make the framing ambiguous (HTTP's smuggling rule).
            if content_length.is_some_and(|previous| previous != declared) {
                return Err(DecodeError::BadContentLength);
            }
            content_length = Some(declared);
        }
        attributes.push((key, (v_start, v_end)));
    }
    Ok(Head {
        version,
        kind,
        attributes,
        content_length,
    })
}

/// The lines of a header as (start, end) without LF and without one trailing CR.
struct LineIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Iterator for LineIter<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let start = self.pos;
        let end = match self.buf[start..].iter().position(|&b| b == b'\n') {
            Some(offset) => start + offset,
            None => self.buf.len(),
        };
        self.pos = end + 1;
        Some((start, strip_cr(self.buf, start, end)))
    }
}

/// A decimal `Content-Length`. Digits only; a number too large to be accepted is
/// `ContentTooLarge` (it is a number, just not one we take), checked without overflow.
fn parse_length(value: &[u8]) -> Result<usize, DecodeError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::BadContentLength);
    }
    let mut n: usize = 0;
    for &digit in value {
        n = n * 10 + usize::from(digit - b'0');
        if n > CONTENT_BYTES_MAX {
            return Err(DecodeError::ContentTooLarge);
        }
    }
    Ok(n)
}

/// Cut one message from the front of `src`.
///
/// The header ends at the first blank line (LF LF, CRLF CRLF, or mixed). The content is
/// `Content-Length` bytes when that attribute is present (`Ok(None)` until they have all
/// arrived). Without it, the content is every byte in `src` after the header, but only when
/// `burst_ended` is true (the socket had no more to read: one read burst is one message, as the
/// original server does); with `burst_ended` false the answer is `Ok(None)`.
///
/// Limits are checked before buffering: more than [`HEADER_BYTES_MAX`] bytes without a blank
/// line, a declared length over [`CONTENT_BYTES_MAX`] (before its body arrives), or a burst
/// whose content already passed it, are errors at once. A wrong magic is refused as soon as
/// the first bytes show it.
///
/// `Ok(None)` never consumes. Errors consume nothing either, but are fatal for the connection
/// (framing is lost). Each call scans at most [`HEADER_BYTES_MAX`] bytes for the blank line.
pub fn decode(src: &mut BytesMut, burst_ended: bool) -> Result<Option<Message>, DecodeError> {
    if detect(src) == Detection::NotCcm {
        return Err(DecodeError::NotCcm);
    }
    let Some(header_end) = find_header_end(src) else {
        if src.len() > HEADER_BYTES_MAX {
            return Err(DecodeError::HeaderTooLarge);
        }
        return Ok(None);
    };
    // The header without its blank line: the last LF before it ends the last real line.
    let blank_len = if src[header_end - 2] == b'\r' { 2 } else { 1 };
    let head = parse_head(&src[..header_end - blank_len])?;
    let buffered = src.len() - header_end;
    let content_len = match head.content_length {
        Some(declared) if buffered < declared => return Ok(None),
        Some(declared) => declared,
        None if buffered > CONTENT_BYTES_MAX => return Err(DecodeError::ContentTooLarge),
        None if !burst_ended => return Ok(None),
        None => buffered,
    };
    let frame = src.split_to(header_end + content_len).freeze();
    let slice = |(start, end): (usize, usize)| frame.slice(start..end);
    Ok(Some(Message {
        version: slice(head.version),
        kind: slice(head.kind),
        attributes: head
            .attributes
            .into_iter()
            .map(|(k, v)| (slice(k), slice(v)))
            .collect(),
        content: frame.slice(header_end..),
    }))
}

/// Encode a message: `CCM\1.0 <kind>\n`, `<key>: <value>\n` per attribute,
/// `Content-Length: <content.len()>\n` unless the caller passed one, `\n`, then the content.
/// LF line endings, as the original server writes. One allocation.
pub fn encode(kind: &str, attributes: &[(&str, &[u8])], content: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(head_capacity(kind, attributes) + content.len());
    write_head(&mut out, kind, attributes, content.len());
    out.put_slice(content);
    out.freeze()
}

/// The same header as [`encode`] without the content, for zero-copy fan-out: the caller
/// queues this header and then the shared content `Bytes`. `content_len` goes into
/// `Content-Length`.
pub fn encode_head(kind: &str, attributes: &[(&str, &[u8])], content_len: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(head_capacity(kind, attributes));
    write_head(&mut out, kind, attributes, content_len);
    out.freeze()
}

/// An upper bound of the header's size: the fixed parts, the pieces, and room for
/// `Content-Length: <20 digits>\n`.
fn head_capacity(kind: &str, attributes: &[(&str, &[u8])]) -> usize {
    let attrs: usize = attributes.iter().map(|(k, v)| k.len() + v.len() + 3).sum();
    MAGIC.len() + VERSION.len() + 1 + kind.len() + 1 + attrs + CONTENT_LENGTH.len() + 2 + 20 + 2
}

fn write_head(out: &mut BytesMut, kind: &str, attributes: &[(&str, &[u8])], content_len: usize) {
    out.put_slice(MAGIC);
    out.put_slice(VERSION);
    out.put_u8(b' ');
    put_field(out, kind.as_bytes());
    out.put_u8(b'\n');
    let mut has_length = false;
    for (key, value) in attributes {
        has_length |= key.eq_ignore_ascii_case(CONTENT_LENGTH);
        put_field(out, key.as_bytes());
        out.put_slice(b": ");
        put_field(out, value);
        out.put_u8(b'\n');
    }
    if !has_length {
        out.put_slice(CONTENT_LENGTH.as_bytes());
        out.put_slice(b": ");
        put_decimal(out, content_len);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// Copy a header field, replacing CR and LF with spaces: a value relayed from one client (a
/// name, an encoding) must never be able to end a line, or it could forge attributes or end
/// the header early in what another client receives.
fn put_field(out: &mut BytesMut, field: &[u8]) {
    if !field.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.put_slice(field);
        return;
    }
    for &b in field {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
}

/// `n` in decimal, without going through `fmt` (this is on the fan-out path).
fn put_decimal(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

/// The body of the answer to a client that is not CCM: exactly 110 bytes, typo included, as
/// the original writes it.
pub const HTTP_BODY: &[u8] = b"This server uses the CCM (Chat Comunitcation message) protocol to communicate and I need to use this protocol!";

/// The exact answer to a client that is not CCM (the server then closes): an HTTP/1.1 400 with
/// the original's headers, `Date` in its `MM/dd/yyyy HH:mm:ss` form, and [`HTTP_BODY`].
pub fn http_bad_request(unix_secs: u64) -> Bytes {
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\n\
         Date: {}\r\n\
         Server: CCM Server\r\n\
         Content-Length: {}\r\n\
         Connection: Closed\r\n\
         Content-Type: text/html; charset=iso-8859-1\r\n\
         \r\n",
        http_date(unix_secs),
        HTTP_BODY.len()
    );
    let mut out = Vec::with_capacity(head.len() + HTTP_BODY.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(HTTP_BODY);
    Bytes::from(out)
}

/// `MM/dd/yyyy HH:mm:ss` in UTC for a Unix time, the format the original server writes in its
/// HTTP answer (not RFC 9110's, but that is the contract).
///
/// The calendar date comes from Howard Hinnant's `civil_from_days`, exact for the proleptic
/// Gregorian calendar, so no time crate is needed for one string per refused connection.
pub fn http_date(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{month:02}/{day:02}/{year:04} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// (year, month 1..=12, day 1..=31) of the day `days` after 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year; 400-year eras
    // of 146097 days. Unsigned throughout, since Unix times here are never negative.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Why content could not be decoded as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextError {
    /// The `Message-Encoding` names no encoding we know.
    UnknownEncoding,
    /// The bytes are not valid in that encoding.
    Invalid,
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::UnknownEncoding => f.write_str("unknown CCM Message-Encoding"),
            TextError::Invalid => f.write_str("CCM content is not valid in its Message-Encoding"),
        }
    }
}

impl std::error::Error for TextError {}

#[derive(Clone, Copy)]
enum Encoding {
    Utf8,
    Ascii,
    Latin1,
    /// Byte order when there is no BOM: little-endian for "utf-16"/"unicode", as .NET's
    /// `Encoding.Unicode`, which is what the original's clients use.
    Utf16 {
        big_endian: bool,
    },
    Utf32 {
        big_endian: bool,
    },
}

fn encoding_by_name(name: &[u8]) -> Option<Encoding> {
    let name = name.trim_ascii();
    let is = |candidates: &[&str]| {
        candidates
            .iter()
            .any(|c| c.as_bytes().eq_ignore_ascii_case(name))
    };
    if is(&["utf-8", "utf8"]) {
        Some(Encoding::Utf8)
    } else if is(&["us-ascii", "ascii"]) {
        Some(Encoding::Ascii)
    } else if is(&["iso-8859-1", "latin1", "latin-1"]) {
        Some(Encoding::Latin1)
    } else if is(&["utf-16", "unicode", "utf-16le", "utf16"]) {
        Some(Encoding::Utf16 { big_endian: false })
    } else if is(&["utf-16be", "unicodefffe"]) {
        Some(Encoding::Utf16 { big_endian: true })
    } else if is(&["utf-32", "utf-32le", "utf32"]) {
        Some(Encoding::Utf32 { big_endian: false })
    } else if is(&["utf-32be"]) {
        Some(Encoding::Utf32 { big_endian: true })
    } else {
        None
    }
}

/// Decode content as text by its `Message-Encoding` value (`None`: UTF-8, the contract's
/// default). Names are ASCII case-insensitive, surrounding spaces ignored: utf-8/utf8,
/// us-ascii/ascii (bytes below 0x80 only), utf-16/unicode/utf-16le, utf-16be,
/// iso-8859-1/latin1, and utf-32 (.NET's other Unicode encoding).
///
/// For UTF-16 and UTF-32 a leading BOM decides the byte order and is dropped; a UTF-8 BOM is
/// dropped too. Strict: an odd UTF-16 length, an unpaired surrogate or invalid UTF-8 are
/// [`TextError::Invalid`] rather than replacement characters, so the logic can answer with an
/// error instead of relaying garbled text.
pub fn decode_text(content: &[u8], encoding: Option<&[u8]>) -> Result<String, TextError> {
    let encoding = match encoding {
        None => Encoding::Utf8,
        Some(name) => encoding_by_name(name).ok_or(TextError::UnknownEncoding)?,
    };
    match encoding {
        Encoding::Utf8 => {
            let content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
            std::str::from_utf8(content)
                .map(str::to_owned)
                .map_err(|_| TextError::Invalid)
        }
        Encoding::Ascii if content.is_ascii() => {
            Ok(content.iter().map(|&b| char::from(b)).collect())
        }
        Encoding::Ascii => Err(TextError::Invalid),
        Encoding::Latin1 => Ok(content.iter().map(|&b| char::from(b)).collect()),
        Encoding::Utf16 { big_endian } => decode_utf16(content, big_endian),
        Encoding::Utf32 { big_endian } => decode_utf32(content, big_endian),
    }
}

fn decode_utf16(content: &[u8], mut big_endian: bool) -> Result<String, TextError> {
    if !content.len().is_multiple_of(2) {
        return Err(TextError::Invalid);
    }
    let content = match content {
        [0xFF, 0xFE, rest @ ..] => {
            big_endian = false;
            rest
        }
        [0xFE, 0xFF, rest @ ..] => {
            big_endian = true;
            rest
        }
        _ => content,
    };
    let units = content.chunks_exact(2).map(|pair| {
        let pair = [pair[0], pair[1]];
        if big_endian {
            u16::from_be_bytes(pair)
        } else {
            u16::from_le_bytes(pair)
        }
    });
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| TextError::Invalid)
}

fn decode_utf32(content: &[u8], mut big_endian: bool) -> Result<String, TextError> {
    if !content.len().is_multiple_of(4) {
        return Err(TextError::Invalid);
    }
    let content = match content {
        [0xFF, 0xFE, 0, 0, rest @ ..] => {
            big_endian = false;
            rest
        }
        [0, 0, 0xFE, 0xFF, rest @ ..] => {
            big_endian = true;
            rest
        }
        _ => content,
    };
    content
        .chunks_exact(4)
        .map(|quad| {
            let quad = [quad[0], quad[1], quad[2], quad[3]];
            let scalar = if big_endian {
                u32::from_be_bytes(quad)
            } else {
                u32::from_le_bytes(quad)
            };
            char::from_u32(scalar).ok_or(TextError::Invalid)
        })
        .collect()
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
