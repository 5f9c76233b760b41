//! The stamp every loadgen message carries, and the stream scanner that finds it again.
//!
//! ROOM has no framing: the server relays whatever one read returned, join and leave notices
//! have no terminator, and TCP coalesces and splits chunks at will. So a record must be found
//! in an arbitrary byte stream: it starts with a marker, its fields have fixed widths, it states
//! its own length and ends with a newline. Everything that is not a valid record (the
//! `alias: ` prefix the original client puts before its text, the server's notices) is a gap;
//! gaps are scanned for notices, which are counted but are not errors.
//!
//! Record layout (ASCII, `len` bytes, the field offsets are fixed):
//!
//! ```text
//! @@SB:ssssss:qqqqqqqqqq:ttttttttttttt:lllll:........:cccccccc\n
//! |    |      |          |             |     |        |        `- len-1: newline
//! |    |      |          |             |     |        `- len-9: check, 8 lowercase hex digits
//! |    |      |          |             |     `- offset 43: padding, '.' repeated (may be empty)
//! |    |      |          |             `- offset 37: len, total record bytes, 5 digits
//! |    |      |          `- offset 23: intended send time, µs since the loadgen epoch, 13 digits
//! |    |      `- offset 12: sequence number within that sender, 10 digits
//! |    `- offset 5: sender ordinal, 6 digits
//! `- offset 0: marker
//! ```
//!
//! A record torn by the server (ROOM relays per read, so a message split across two reads of
//! the sender's socket may have another sender's chunk relayed in between) fails one of these
//! checks: a non-digit in a field, a non-pad byte inside the padding, a trailer out of shape, or
//! a check value that does not match the fields. The check value is what catches a splice of
//! two records of the same size torn at the same offset (both senders' reads cut at the same
//! place): every byte then has the right shape, but the head's fields and the tail's check
//! value come from different messages. A malformed record is reported, and the scan resumes
//! one byte after its marker, so the record glued behind it is still found.

/// Starts every record. `@` occurs in no server notice and in no alias the loadgen uses.
pub const MARKER: &[u8; 5] = b"@@SB:";
const SENDER_AT: usize = 5;
const SENDER_WIDTH: usize = 6;
const SEQ_AT: usize = 12;
const SEQ_WIDTH: usize = 10;
const INTENDED_AT: usize = 23;
const INTENDED_WIDTH: usize = 13;
const LEN_AT: usize = 37;
const LEN_WIDTH: usize = 5;
/// Separators between the fields.
const SEPARATORS_AT: [usize; 4] = [11, 22, 36, 42];
/// What each header byte must be: `9` a digit, `:` a separator (the marker is matched apart).
const HEADER_SHAPE: &[u8; HEADER_LEN] = b"@@SB:999999:9999999999:9999999999999:99999:";
/// Marker and fields; the padding starts here.
pub const HEADER_LEN: usize = 43;
/// `:`, the check value in hex, the newline.
const TRAILER_LEN: usize = 1 + CHECK_WIDTH + 1;
const CHECK_WIDTH: usize = 8;
/// A record without padding: the header and the trailer.
pub const RECORD_LEN_MIN: usize = HEADER_LEN + TRAILER_LEN;
/// The scanner waits for at most this many bytes of one record; a larger `len` is malformed.
pub const RECORD_LEN_MAX: usize = 65_536;
const PAD: u8 = b'.';

/// The largest value each field can carry.
pub const SENDER_MAX: u32 = 999_999;
pub const SEQ_MAX: u64 = 9_999_999_999;
pub const INTENDED_US_MAX: u64 = 9_999_999_999_999;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Ordinal of the sender among the run's senders (not its client index).
    pub sender: u32,
    /// Per-sender sequence number, from 0, consecutive over the messages actually sent.
    pub seq: u64,
    /// When the plan intended this message to be sent, µs since the loadgen's epoch.
    pub intended_us: u64,
    /// Total record length in bytes, newline included.
    pub len: usize,
}

/// Why bytes that start with the marker are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// A non-digit where a digit belongs.
    NotADigit,
    /// A field separator is not `:`.
    NotASeparator,
    /// The length field is outside `RECORD_LEN_MIN..=RECORD_LEN_MAX`.
    LengthOutOfRange,
    /// A byte inside the padding is not the pad byte (typically another chunk glued inside).
    PaddingBroken,
    /// The trailer is not `:`, 8 lowercase hex digits and a newline.
    TrailerBroken,
    /// The check value does not match the fields: the record is spliced from two messages.
    CheckMismatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A field does not fit its width, or `len` is outside the allowed range.
    OutOfRange,
}

/// Writes `record` into `out`, which must be exactly `record.len` bytes long.
pub fn encode_into(out: &mut [u8], record: &Record) -> Result<(), EncodeError> {
    if record.len < RECORD_LEN_MIN
        || record.len > RECORD_LEN_MAX
        || out.len() != record.len
        || record.sender > SENDER_MAX
        || record.seq > SEQ_MAX
        || record.intended_us > INTENDED_US_MAX
    {
        return Err(EncodeError::OutOfRange);
    }
    out[..MARKER.len()].copy_from_slice(MARKER);
    write_digits(
        &mut out[SENDER_AT..SENDER_AT + SENDER_WIDTH],
        u64::from(record.sender),
    );
    write_digits(&mut out[SEQ_AT..SEQ_AT + SEQ_WIDTH], record.seq);
    write_digits(
        &mut out[INTENDED_AT..INTENDED_AT + INTENDED_WIDTH],
        record.intended_us,
    );
    write_digits(&mut out[LEN_AT..LEN_AT + LEN_WIDTH], record.len as u64);
    for at in SEPARATORS_AT {
        out[at] = b':';
    }
    let trailer_at = record.len - TRAILER_LEN;
    out[HEADER_LEN..trailer_at].fill(PAD);
    out[trailer_at] = b':';
    let check = check_value(
        u64::from(record.sender),
        record.seq,
        record.intended_us,
        record.len as u64,
    );
    for (i, slot) in out[trailer_at + 1..trailer_at + 1 + CHECK_WIDTH]
        .iter_mut()
        .enumerate()
    {
        *slot = HEX[((check >> (4 * (CHECK_WIDTH - 1 - i))) & 0xf) as usize];
    }
    out[record.len - 1] = b'\n';
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// 32 bits that depend on every field: a few multiply-xorshift rounds (SplitMix64's mixer), so
/// two records that differ in any field get unrelated values. Not cryptographic: it guards
/// against accidents (torn and spliced records), not against an adversary.
#[inline]
fn check_value(sender: u64, seq: u64, intended_us: u64, len: u64) -> u32 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for field in [sender, seq, intended_us, len] {
        h = (h ^ field).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    (h >> 32) as u32
}

/// Parses lowercase hex: the value, and whether every byte was a hex digit.
#[inline]
fn hex_digits(field: &[u8]) -> (u32, bool) {
    field.iter().fold((0u32, true), |(value, ok), &b| {
        let (digit, valid) = match b {
            b'0'..=b'9' => (b - b'0', true),
            b'a'..=b'f' => (b - b'a' + 10, true),
            _ => (0, false),
        };
        ((value << 4) | u32::from(digit), ok & valid)
    })
}

/// Fixed-width decimal, zero-padded. The caller has checked that `value` fits.
fn write_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The result of checking the bytes that follow a marker.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Complete(Record),
    /// Consistent so far; more bytes are needed.
    Incomplete,
    Malformed(Malformed),
}

/// Checks `bytes`, which start with the marker, as far as they go. A torn record is rejected as
/// soon as the first wrong byte is there, so the records behind it are not held back.
fn check(bytes: &[u8]) -> Check {
    let have = bytes.len();
    // Fast path, taken by nearly every record: the whole header is there and well formed,
    // checked and parsed in one branch-light pass (this runs once per delivery, millions of
    // times a second in a large run).
    let header = match bytes.get(..HEADER_LEN).and_then(parse_header) {
        Some(header) => header,
        None => return check_header_slowly(bytes),
    };
    let len = header.len as usize;
    if !(RECORD_LEN_MIN..=RECORD_LEN_MAX).contains(&len) {
        return Check::Malformed(Malformed::LengthOutOfRange);
    }
    let trailer_at = len - TRAILER_LEN;
    let pad_end = trailer_at.min(have);
    // `fold` rather than `all`: no early exit, so the loop vectorises; pads are short anyway.
    if !bytes[HEADER_LEN..pad_end]
        .iter()
        .fold(true, |ok, &b| ok & (b == PAD))
    {
        return Check::Malformed(Malformed::PaddingBroken);
    }
    if have < len {
        // Judge the part of the trailer already there, so a tear inside it is seen at once.
        let trailer = &bytes[pad_end..have];
        let shape_ok = trailer.iter().enumerate().all(|(i, &b)| match i {
            0 => b == b':',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
        return if shape_ok {
            Check::Incomplete
        } else {
            Check::Malformed(Malformed::TrailerBroken)
        };
    }
    let trailer = &bytes[trailer_at..len];
    let (check, hex_ok) = hex_digits(&trailer[1..1 + CHECK_WIDTH]);
    if trailer[0] != b':' || !hex_ok || trailer[TRAILER_LEN - 1] != b'\n' {
        return Check::Malformed(Malformed::TrailerBroken);
    }
    if check != check_value(header.sender, header.seq, header.intended_us, header.len) {
        return Check::Malformed(Malformed::CheckMismatch);
    }
    Check::Complete(Record {
        sender: header.sender as u32,
        seq: header.seq,
        intended_us: header.intended_us,
        len,
    })
}

/// The header's fields, as parsed.
struct Header {
    sender: u64,
    seq: u64,
    intended_us: u64,
    len: u64,
}

/// Parses a complete header (`HEADER_LEN` bytes from the marker); `None` if any byte is out of
/// shape (the slow path then says which).
#[inline]
fn parse_header(header: &[u8]) -> Option<Header> {
    let (sender, sender_ok) = digits(&header[SENDER_AT..SENDER_AT + SENDER_WIDTH]);
    let (seq, seq_ok) = digits(&header[SEQ_AT..SEQ_AT + SEQ_WIDTH]);
    let (intended_us, intended_ok) = digits(&header[INTENDED_AT..INTENDED_AT + INTENDED_WIDTH]);
    let (len, len_ok) = digits(&header[LEN_AT..LEN_AT + LEN_WIDTH]);
    let separators_ok = SEPARATORS_AT
        .iter()
        .fold(true, |ok, &at| ok & (header[at] == b':'));
    (sender_ok & seq_ok & intended_ok & len_ok & separators_ok).then_some(Header {
        sender,
        seq,
        intended_us,
        len,
    })
}

/// A fixed-width decimal field: its value, and whether every byte was a digit.
#[inline]
fn digits(field: &[u8]) -> (u64, bool) {
    field.iter().fold((0u64, true), |(value, ok), &b| {
        let digit = b.wrapping_sub(b'0');
        (value * 10 + u64::from(digit), ok & (digit < 10))
    })
}

/// The header is incomplete or malformed: check it byte by byte, in stream order, so the first
/// wrong byte decides the reason, and a partial header that is fine so far waits for more.
fn check_header_slowly(bytes: &[u8]) -> Check {
    for (at, &b) in bytes.iter().enumerate().take(HEADER_LEN).skip(MARKER.len()) {
        match HEADER_SHAPE[at] {
            b'9' if !b.is_ascii_digit() => return Check::Malformed(Malformed::NotADigit),
            b':' if b != b':' => return Check::Malformed(Malformed::NotASeparator),
            _ => {}
        }
    }
    // Every byte present has the right shape, so the header is only incomplete (a complete,
    // well-formed header takes the fast path).
    Check::Incomplete
}

/// What the scanner found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scanned {
    Record(Record),
    Malformed(Malformed),
}

/// Server texts the scanner recognises in gaps. `b'<alias>' esta conectado ao chat`,
/// `b'<alias>' acabou de sair do chat!` and `Voce esta conectado ao servidor!` (no newline).
const JOIN: Kmp<23> = Kmp::new(b" esta conectado ao chat");
const LEAVE: Kmp<24> = Kmp::new(b" acabou de sair do chat!");
const GREETING: Kmp<32> = Kmp::new(b"Voce esta conectado ao servidor!");

/// How many of each server notice one receiver saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NoticeCounts {
    pub joins: u64,
    pub leaves: u64,
    pub greetings: u64,
}

impl NoticeCounts {
    pub fn add(&mut self, other: &NoticeCounts) {
        self.joins += other.joins;
        self.leaves += other.leaves;
        self.greetings += other.greetings;
    }
}

/// Counts notices in a byte stream fed in arbitrary pieces (a streaming Knuth-Morris-Pratt
/// match per text; the state is a few bytes, so it survives any split).
#[derive(Clone, Debug, Default)]
struct NoticeMatcher {
    join_state: u8,
    leave_state: u8,
    greeting_state: u8,
    counts: NoticeCounts,
}

impl NoticeMatcher {
    fn feed(&mut self, gap: &[u8]) {
        // Fast path for the steady state: between two records there is only the sender's
        // `lgNNNNNN: ` prefix, which can neither complete nor start a notice that matters (the
        // states are reset at every record), so skip the per-byte matching.
        if self.is_idle() && is_alias_prefix(gap) {
            return;
        }
        for &b in gap {
            let (state, hit) = JOIN.step(self.join_state, b);
            self.join_state = state;
            self.counts.joins += u64::from(hit);
            let (state, hit) = LEAVE.step(self.leave_state, b);
            self.leave_state = state;
            self.counts.leaves += u64::from(hit);
            let (state, hit) = GREETING.step(self.greeting_state, b);
            self.greeting_state = state;
            self.counts.greetings += u64::from(hit);
        }
    }

    fn is_idle(&self) -> bool {
        self.join_state == 0 && self.leave_state == 0 && self.greeting_state == 0
    }

    /// A valid record ends any text in progress: a notice never surrounds a record.
    fn reset(&mut self) {
        self.join_state = 0;
        self.leave_state = 0;
        self.greeting_state = 0;
    }
}

/// The alias prefix the loadgen's senders write before a record: `lg`, 6 digits, `: `.
pub const ALIAS_PREFIX_LEN: usize = 10;

fn is_alias_prefix(gap: &[u8]) -> bool {
    gap.len() == ALIAS_PREFIX_LEN
        && gap.starts_with(b"lg")
        && gap[2..8].iter().all(u8::is_ascii_digit)
        && gap.ends_with(b": ")
}

/// Writes the alias of client `index` (`lg000042`) into `out` (8 bytes).
pub fn write_alias(out: &mut [u8; 8], index: u32) {
    out[..2].copy_from_slice(b"lg");
    write_digits(&mut out[2..], u64::from(index % 1_000_000));
}

/// A compile-time KMP automaton for one fixed text of `N` bytes (`N` < 256).
struct Kmp<const N: usize> {
    text: [u8; N],
    /// `fail[i]`: length of the longest proper prefix of `text[..=i]` that is also its suffix.
    fail: [u8; N],
}

impl<const N: usize> Kmp<N> {
    const fn new(text: &[u8; N]) -> Kmp<N> {
        let mut fail = [0u8; N];
        let mut k = 0usize;
        let mut i = 1usize;
        while i < N {
            while k > 0 && text[i] != text[k] {
                k = fail[k - 1] as usize;
            }
            if text[i] == text[k] {
                k += 1;
            }
            fail[i] = k as u8;
            i += 1;
        }
        Kmp { text: *text, fail }
    }

    /// Advances `state` (bytes matched so far) by `b`; returns the new state and whether the
    /// whole text was just completed.
    #[inline]
    fn step(&self, state: u8, b: u8) -> (u8, bool) {
        let mut k = state as usize;
        loop {
            if self.text[k] == b {
                k += 1;
                break;
            }
            if k == 0 {
                break;
            }
            k = self.fail[k - 1] as usize;
        }
        if k == N {
            (self.fail[N - 1], true)
        } else {
            (k as u8, false)
        }
    }
}

/// Finds records in one receiver's byte stream, fed in whatever pieces the socket returns.
///
/// Bytes are copied only when a record (or a possible marker) is cut by the end of a read:
/// that tail waits in `carry` for the next read. Everything else is scanned in place.
#[derive(Debug, Default)]
pub struct Scanner {
    carry: Vec<u8>,
    notices: NoticeMatcher,
}

impl Scanner {
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// Scans `input`, calling `sink` for every record and every malformed record, in order.
    pub fn feed(&mut self, input: &[u8], mut sink: impl FnMut(Scanned)) {
        if self.carry.is_empty() {
            let keep_from = scan(input, &mut self.notices, &mut sink);
            self.carry.extend_from_slice(&input[keep_from..]);
        } else {
            let mut carry = std::mem::take(&mut self.carry);
            carry.extend_from_slice(input);
            let keep_from = scan(&carry, &mut self.notices, &mut sink);
            carry.drain(..keep_from);
            self.carry = carry;
        }
    }

    /// Notices seen so far.
    pub fn notices(&self) -> NoticeCounts {
        self.notices.counts
    }

    /// Bytes still waiting for the rest of a record (an unfinished record at the end of a run).
    pub fn pending_bytes(&self) -> usize {
        self.carry.len()
    }
}

/// Scans `data`; returns the offset from which bytes must be kept for the next call.
fn scan(data: &[u8], notices: &mut NoticeMatcher, sink: &mut impl FnMut(Scanned)) -> usize {
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        // In the steady state the next record starts right after a sender's alias prefix:
        // look there first, and search only when it is not.
        let expected = rest.get(ALIAS_PREFIX_LEN..ALIAS_PREFIX_LEN + MARKER.len()) == Some(MARKER);
        let found = if expected {
            Some(ALIAS_PREFIX_LEN)
        } else {
            find_marker(rest)
        };
        let Some(offset) = found else {
            // Hold back a tail that may be the start of a marker cut by the read.
            let keep = partial_marker_len(rest);
            notices.feed(&rest[..rest.len() - keep]);
            return data.len() - keep;
        };
        notices.feed(&rest[..offset]);
        let at = pos + offset;
        match check(&data[at..]) {
            Check::Complete(record) => {
                sink(Scanned::Record(record));
                notices.reset();
                pos = at + record.len;
            }
            Check::Incomplete => return at,
            Check::Malformed(why) => {
                sink(Scanned::Malformed(why));
                // Resynchronise one byte on: a record glued inside this one is still found.
                notices.feed(&data[at..at + 1]);
                pos = at + 1;
            }
        }
    }
}

fn find_marker(haystack: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == MARKER[0]) {
        let at = from + i;
        if haystack[at..].starts_with(MARKER) {
            return Some(at);
        }
        // A proper prefix of the marker at the very end is handled by `partial_marker_len`.
        from = at + 1;
    }
    None
}

/// Length of the longest proper prefix of the marker that `bytes` ends with.
fn partial_marker_len(bytes: &[u8]) -> usize {
    (1..MARKER.len())
        .rev()
        .find(|&k| bytes.ends_with(&MARKER[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sender: u32, seq: u64, intended_us: u64, len: usize) -> Record {
        Record {
            sender,
            seq,
            intended_us,
            len,
        }
    }

    fn encode(r: &Record) -> Vec<u8> {
        let mut out = vec![0u8; r.len];
        encode_into(&mut out, r).unwrap();
        out
    }

    /// A message as a sender writes it: alias prefix, then the record.
    fn message(client: u32, r: &Record) -> Vec<u8> {
        let mut alias = [0u8; 8];
        write_alias(&mut alias, client);
        let mut out = alias.to_vec();
        out.extend_from_slice(b": ");
        out.extend_from_slice(&encode(r));
        out
    }

    fn scan_all(pieces: &[&[u8]]) -> (Vec<Scanned>, Scanner) {
        let mut scanner = Scanner::new();
        let mut found = Vec::new();
        for piece in pieces {
            scanner.feed(piece, |s| found.push(s));
        }
        (found, scanner)
    }

    #[test]
    fn encodes_the_documented_layout() {
        let bytes = encode(&record(42, 7, 1_234_567, 60));
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(
            &text[..HEADER_LEN + 7],
            "@@SB:000042:0000000007:0000001234567:00060:......."
        );
        let check = check_value(42, 7, 1_234_567, 60);
        assert_eq!(&text[HEADER_LEN + 7..], format!(":{check:08x}\n"));
        assert_eq!(text.len(), 60);
    }

    #[test]
    fn two_records_spliced_at_any_offset_are_never_a_third() {
        // Both senders' messages have the same size and the server's reads cut them at the same
        // offset, so every byte of the splice has the right shape. It must decode as one of the
        // two originals (a cut inside the marker, or so late that the content is the head's)
        // or be rejected: never as a record with mixed fields.
        let pairs = [
            (record(1, 10, 1_000_000, 64), record(2, 19, 1_000_200, 64)),
            (
                record(3, 99, 5_000_000, 200),
                record(3, 100, 5_010_000, 200),
            ),
            (
                record(0, 0, 0, RECORD_LEN_MIN),
                record(0, 1, 9, RECORD_LEN_MIN),
            ),
        ];
        for (a, b) in pairs {
            let (a_bytes, b_bytes) = (encode(&a), encode(&b));
            for cut in 1..a.len {
                let mut splice = a_bytes[..cut].to_vec();
                splice.extend_from_slice(&b_bytes[cut..]);
                match check(&splice) {
                    Check::Complete(r) => assert!(r == a || r == b, "cut {cut}: {r:?}"),
                    Check::Malformed(_) => {}
                    Check::Incomplete => panic!("cut {cut}: a whole record is not incomplete"),
                }
            }
        }
    }

    #[test]
    fn round_trips_at_the_field_limits() {
        for r in [
            record(0, 0, 0, RECORD_LEN_MIN),
            record(SENDER_MAX, SEQ_MAX, INTENDED_US_MAX, RECORD_LEN_MIN),
            record(7, 123, 456, 1_000),
            record(1, 2, 3, RECORD_LEN_MAX),
        ] {
            let bytes = encode(&r);
            assert_eq!(check(&bytes), Check::Complete(r));
        }
    }

    #[test]
    fn refuses_to_encode_what_does_not_fit() {
        let mut buf = vec![0u8; 60];
        let too_long = record(0, 0, 0, 61);
        assert!(
            encode_into(&mut buf, &too_long).is_err(),
            "buffer size mismatch"
        );
        for r in [
            record(SENDER_MAX + 1, 0, 0, 60),
            record(0, SEQ_MAX + 1, 0, 60),
            record(0, 0, INTENDED_US_MAX + 1, 60),
        ] {
            assert_eq!(encode_into(&mut buf, &r), Err(EncodeError::OutOfRange));
        }
        let mut short = vec![0u8; RECORD_LEN_MIN - 1];
        assert_eq!(RECORD_LEN_MIN, 53);
        assert!(encode_into(&mut short, &record(0, 0, 0, RECORD_LEN_MIN - 1)).is_err());
    }

    #[test]
    fn finds_records_between_notices_and_prefixes() {
        let r1 = record(3, 0, 1_000, 60);
        let r2 = record(4, 9, 2_000, RECORD_LEN_MIN);
        let mut stream = Vec::new();
        stream.extend_from_slice(b"alias?"); // not expected after the handshake, but harmless
        stream.extend_from_slice(b"b'lg000001' esta conectado ao chat");
        stream.extend_from_slice(b"Voce esta conectado ao servidor!");
        stream.extend_from_slice(b"b'lg000002' esta conectado ao chat");
        stream.extend_from_slice(&message(17, &r1));
        stream.extend_from_slice(b"b'lg000009' acabou de sair do chat!");
        stream.extend_from_slice(&message(18, &r2));
        let (found, scanner) = scan_all(&[&stream]);
        assert_eq!(found, vec![Scanned::Record(r1), Scanned::Record(r2)]);
        assert_eq!(
            scanner.notices(),
            NoticeCounts {
                joins: 2,
                leaves: 1,
                greetings: 1
            }
        );
        assert_eq!(scanner.pending_bytes(), 0);
    }

    /// The stream the tests split: records of several sizes glued to notices on both sides.
    fn sample_stream() -> (Vec<u8>, Vec<Record>) {
        let records = vec![
            record(0, 0, 10, 64),
            record(1, 0, 20, RECORD_LEN_MIN),
            record(0, 1, 30, 200),
            record(2, 5, 40, 64),
        ];
        let mut stream =
            b"b'lg000003' esta conectado ao chatVoce esta conectado ao servidor!".to_vec();
        for (i, r) in records.iter().enumerate() {
            stream.extend_from_slice(&message(i as u32, r));
            if i == 1 {
                stream.extend_from_slice(b"b'lg000004' esta conectado ao chat");
            }
        }
        stream.extend_from_slice(b"b'lg000004' acabou de sair do chat!");
        (stream, records)
    }

    #[test]
    fn records_split_at_every_byte_boundary() {
        let (stream, records) = sample_stream();
        let expected: Vec<Scanned> = records.iter().map(|&r| Scanned::Record(r)).collect();
        for cut in 0..=stream.len() {
            let (found, scanner) = scan_all(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(found, expected, "cut at {cut}");
            assert_eq!(
                scanner.notices(),
                NoticeCounts {
                    joins: 2,
                    leaves: 1,
                    greetings: 1
                },
                "cut at {cut}"
            );
            assert_eq!(scanner.pending_bytes(), 0, "cut at {cut}");
        }
    }

    #[test]
    fn records_fed_one_byte_at_a_time() {
        let (stream, records) = sample_stream();
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        let (found, scanner) = scan_all(&pieces);
        let expected: Vec<Scanned> = records.iter().map(|&r| Scanned::Record(r)).collect();
        assert_eq!(found, expected);
        assert_eq!(scanner.notices().joins, 2);
        assert_eq!(scanner.notices().leaves, 1);
        assert_eq!(scanner.notices().greetings, 1);
    }

    #[test]
    fn an_unfinished_record_waits() {
        let r = record(1, 1, 1, 100);
        let bytes = message(1, &r);
        let (found, scanner) = scan_all(&[&bytes[..50]]);
        assert!(found.is_empty());
        assert_eq!(scanner.pending_bytes(), 50 - ALIAS_PREFIX_LEN);
    }

    #[test]
    fn malformed_records_are_reported_and_skipped() {
        let good = record(5, 5, 5, 60);
        let good_bytes = encode(&good);
        let cases: Vec<(Vec<u8>, Malformed)> = vec![
            // A letter inside the sequence field.
            (
                b"@@SB:000001:00000x0001:0000000000001:00060:".to_vec(),
                Malformed::NotADigit,
            ),
            // Wrong separator.
            (b"@@SB:000001;".to_vec(), Malformed::NotASeparator),
            // Length below the minimum and above the maximum.
            (
                b"@@SB:000001:0000000001:0000000000001:00010:".to_vec(),
                Malformed::LengthOutOfRange,
            ),
            (
                b"@@SB:000001:0000000001:0000000000001:99999:".to_vec(),
                Malformed::LengthOutOfRange,
            ),
            // Something else inside the padding.
            (
                b"@@SB:000001:0000000001:0000000000001:00060:.X".to_vec(),
                Malformed::PaddingBroken,
            ),
            // No trailer where the length says it is.
            (
                b"@@SB:000001:0000000001:0000000000001:00053:X".to_vec(),
                Malformed::TrailerBroken,
            ),
            // A trailer whose check value does not match the fields.
            (
                {
                    let mut bytes = encode(&record(1, 1, 1, 60));
                    let last_hex = bytes.len() - 2;
                    bytes[last_hex] = if bytes[last_hex] == b'0' { b'1' } else { b'0' };
                    bytes
                },
                Malformed::CheckMismatch,
            ),
            // Upper-case hex, and a missing newline.
            (
                {
                    let mut bytes = encode(&record(1, 1, 1, 60));
                    let last_hex = bytes.len() - 2;
                    bytes[last_hex] = b'G';
                    bytes
                },
                Malformed::TrailerBroken,
            ),
            (
                {
                    let mut bytes = encode(&record(1, 1, 1, 60));
                    let newline = bytes.len() - 1;
                    bytes[newline] = b'\r';
                    bytes
                },
                Malformed::TrailerBroken,
            ),
        ];
        for (bad, why) in cases {
            let mut stream = bad.clone();
            stream.extend_from_slice(&good_bytes);
            let (found, _) = scan_all(&[&stream]);
            assert_eq!(
                found,
                vec![Scanned::Malformed(why), Scanned::Record(good)],
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn a_torn_record_is_malformed_and_the_glued_one_survives() {
        // The server relayed the first 30 bytes of one message, then another sender's whole
        // message, then the rest of the first: the scanner reports the torn one at once (it does
        // not wait for its declared length) and still finds the other.
        let a = record(1, 0, 100, 80);
        let b = record(2, 0, 200, 80);
        let a_msg = message(1, &a);
        let b_msg = message(2, &b);
        for tear in ALIAS_PREFIX_LEN + 1..a_msg.len() {
            let mut stream = a_msg[..tear].to_vec();
            stream.extend_from_slice(&b_msg);
            stream.extend_from_slice(&a_msg[tear..]);
            let (found, scanner) = scan_all(&[&stream]);
            let records: Vec<Record> = found
                .iter()
                .filter_map(|s| match s {
                    Scanned::Record(r) => Some(*r),
                    Scanned::Malformed(_) => None,
                })
                .collect();
            assert_eq!(records, vec![b], "tear at {tear}");
            if tear >= ALIAS_PREFIX_LEN + MARKER.len() {
                assert!(
                    matches!(found[0], Scanned::Malformed(_)),
                    "tear at {tear}: {found:?}"
                );
            } else {
                // Torn inside the marker: there is no record to speak of; the receiver sees a
                // gap in that sender's sequence, which is counted as a loss.
                assert_eq!(found.len(), 1, "tear at {tear}: {found:?}");
            }
            assert_eq!(scanner.pending_bytes(), 0, "tear at {tear}");
        }
    }

    #[test]
    fn a_marker_cut_by_the_read_is_held_back() {
        assert_eq!(partial_marker_len(b"xx@"), 1);
        assert_eq!(partial_marker_len(b"xx@@S"), 3);
        assert_eq!(partial_marker_len(b"xx@@SB"), 4);
        assert_eq!(partial_marker_len(b"xx"), 0);
        assert_eq!(
            partial_marker_len(b"@@SB:"),
            0,
            "a whole marker is found, not held"
        );
        assert_eq!(find_marker(b"@@@SB:"), Some(1));
        assert_eq!(find_marker(b"@@S@@SB:x"), Some(3));
    }

    #[test]
    fn notices_split_anywhere_are_counted_once() {
        let text = b"b'lg000001' esta conectado ao chatb'lg000002' acabou de sair do chat!Voce esta conectado ao servidor!";
        for cut in 0..=text.len() {
            let (found, scanner) = scan_all(&[&text[..cut], &text[cut..]]);
            assert!(found.is_empty());
            assert_eq!(
                scanner.notices(),
                NoticeCounts {
                    joins: 1,
                    leaves: 1,
                    greetings: 1
                },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn kmp_handles_self_overlapping_texts() {
        let kmp = Kmp::new(b"aab");
        let mut state = 0;
        let mut hits = 0;
        for &b in b"aaabaab" {
            let (s, hit) = kmp.step(state, b);
            state = s;
            hits += u32::from(hit);
        }
        assert_eq!(hits, 2);
    }

    #[test]
    fn aliases() {
        let mut alias = [0u8; 8];
        write_alias(&mut alias, 42);
        assert_eq!(&alias, b"lg000042");
        assert!(is_alias_prefix(b"lg000042: "));
        assert!(!is_alias_prefix(b"lg00004x: "));
    }
}
