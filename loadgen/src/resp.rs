//! RESP2, as much of it as a Redis pub/sub run needs: the SUBSCRIBE and PUBLISH commands the
//! loadgen sends, and an incremental reader for what comes back (`message` pushes, `subscribe`
//! confirmations, integer and error replies).
//!
//! The reader keeps its state between reads, so a frame may be cut at any byte. Payload bytes
//! are handed on as slices of the caller's buffer (a payload cut by a read arrives in pieces);
//! only header lines, a few bytes each, are copied.

/// A header line (`*3`, `$64`, `:1`, `-ERR ...`) longer than this is malformed. Redis's error
/// texts are well under it.
const LINE_BYTES_MAX: usize = 512;
/// The longest push kind the reader knows (`subscribe`) fits; anything longer is unknown.
const KIND_BYTES_MAX: usize = 16;
/// The largest payload accepted: the loadgen's messages are at most 64 KiB.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Ends every PUBLISH command, after the payload.
pub const PUBLISH_SUFFIX: &[u8] = b"\r\n";

/// `SUBSCRIBE <channel>` as a RESP array.
pub fn subscribe_command(channel: &[u8]) -> Vec<u8> {
    let mut out = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n", channel.len()).into_bytes();
    out.extend_from_slice(channel);
    out.extend_from_slice(b"\r\n");
    out
}

/// Everything of `PUBLISH <channel> <payload>` before the payload; [`PUBLISH_SUFFIX`] follows it.
pub fn publish_prefix(channel: &[u8], payload_bytes: usize) -> Vec<u8> {
    let mut out = format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n", channel.len()).into_bytes();
    out.extend_from_slice(channel);
    out.extend_from_slice(format!("\r\n${payload_bytes}\r\n").as_bytes());
    out
}

/// What the reader found, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Part of a `message` push's payload; the parts of one payload come in order, none empty.
    Payload(&'a [u8]),
    /// A `message` push is complete.
    MessageEnd,
    /// A `subscribe` confirmation for the channel: the connection's subscription count.
    Subscribed(i64),
    /// An integer reply (to PUBLISH: how many subscribers received the message).
    Integer(i64),
    /// An error reply's text, without the `-`.
    ServerError(&'a [u8]),
}

/// Why the stream is not what a pub/sub connection receives. The reader stops at the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A line starts with a type the reader does not expect there.
    UnexpectedType(u8),
    /// A line without a type byte, or longer than `LINE_BYTES_MAX`.
    BadLine,
    /// A line does not end in CR LF, or a bulk string is not followed by CR LF.
    MissingCrLf,
    /// A number is not an optional `-` and 1 to 18 digits.
    BadNumber,
    /// An array that is not a 3-element push.
    ArrayLength(i64),
    /// A bulk string length out of range where it stands.
    BulkLength(i64),
    /// A push kind other than `message` and `subscribe`.
    UnknownKind,
    /// A push for another channel.
    WrongChannel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Message,
    Subscribe,
}

/// What the next line or bulk body is, inside the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// A top-level reply or push.
    Top,
    /// The push kind's `$len`, then its body.
    KindLen,
    Kind,
    ChannelLen(Kind),
    /// The channel's body; `matched` bytes of it checked so far.
    Channel {
        kind: Kind,
        matched: usize,
    },
    /// A message's payload `$len`, then its body.
    PayloadLen,
    Payload,
    /// A subscribe confirmation's `:count`.
    Count,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Collecting a header line up to LF.
    Line,
    /// Inside a bulk body: bytes left.
    Body { left: usize },
    /// After a bulk body: bytes of its CR LF seen.
    BodyEnd { got: usize },
}

/// Reads one connection's pub/sub stream for one channel.
#[derive(Debug)]
pub struct Reader {
    channel: Vec<u8>,
    lex: Lex,
    slot: Slot,
    line: Vec<u8>,
    kind: Vec<u8>,
    failed: Option<Malformed>,
}

impl Reader {
    pub fn new(channel: &[u8]) -> Reader {
        Reader {
            channel: channel.to_vec(),
            lex: Lex::Line,
            slot: Slot::Top,
            line: Vec::new(),
            kind: Vec::new(),
            failed: None,
        }
    }

    /// Reads `input`, calling `sink` for each event. After the first malformed byte every call
    /// returns that error: what follows cannot be framed.
    pub fn feed(&mut self, input: &[u8], mut sink: impl FnMut(Event<'_>)) -> Result<(), Malformed> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let result = self.feed_inner(input, &mut sink);
        if let Err(why) = &result {
            self.failed = Some(why.clone());
        }
        result
    }

    /// True between frames: nothing of an unfinished frame is held.
    #[cfg(test)]
    pub fn at_frame_boundary(&self) -> bool {
        self.lex == Lex::Line && self.slot == Slot::Top && self.line.is_empty()
    }

    fn feed_inner(
        &mut self,
        mut input: &[u8],
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Malformed> {
        loop {
            match self.lex {
                Lex::Line => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let (piece, complete) = match input.iter().position(|&b| b == b'\n') {
                        Some(lf) => (&input[..=lf], true),
                        None => (input, false),
                    };
                    if self.line.len() + piece.len() > LINE_BYTES_MAX {
                        return Err(Malformed::BadLine);
                    }
                    self.line.extend_from_slice(piece);
                    input = &input[piece.len()..];
                    if complete {
                        let line = std::mem::take(&mut self.line);
                        let result = self.on_line(&line, sink);
                        // Keep the allocation for the next line.
                        self.line = line;
                        self.line.clear();
                        result?;
                    }
                }
                Lex::Body { left } => {
                    let take = left.min(input.len());
                    if take > 0 {
                        self.on_body(&input[..take], sink)?;
                        input = &input[take..];
                    }
                    if left == take {
                        self.lex = Lex::BodyEnd { got: 0 };
                    } else {
                        self.lex = Lex::Body { left: left - take };
                        return Ok(());
                    }
                }
                Lex::BodyEnd { mut got } => {
                    while got < 2 {
                        let Some((&b, rest)) = input.split_first() else {
                            self.lex = Lex::BodyEnd { got };
                            return Ok(());
                        };
                        if b != b"\r\n"[got] {
                            return Err(Malformed::MissingCrLf);
                        }
                        got += 1;
                        input = rest;
                    }
                    self.lex = Lex::Line;
                    self.on_body_end(sink)?;
                }
            }
        }
    }

    /// `line` is one complete line, LF included.
    fn on_line(&mut self, line: &[u8], sink: &mut impl FnMut(Event<'_>)) -> Result<(), Malformed> {
        let text = line.strip_suffix(b"\r\n").ok_or(Malformed::MissingCrLf)?;
        let (&kind, rest) = text.split_first().ok_or(Malformed::BadLine)?;
        match (self.slot, kind) {
            (Slot::Top, b':') => sink(Event::Integer(number(rest)?)),
            (Slot::Top, b'-') => sink(Event::ServerError(rest)),
            (Slot::Top, b'*') => match number(rest)? {
                3 => self.slot = Slot::KindLen,
                n => return Err(Malformed::ArrayLength(n)),
            },
            (Slot::KindLen, b'$') => {
                let len = bulk_len(rest, 1, KIND_BYTES_MAX)?;
                self.kind.clear();
                self.slot = Slot::Kind;
                self.lex = Lex::Body { left: len };
            }
            (Slot::ChannelLen(kind), b'$') => {
                let n = number(rest)?;
                if n != self.channel.len() as i64 {
                    return Err(Malformed::WrongChannel);
                }
                self.slot = Slot::Channel { kind, matched: 0 };
                self.lex = Lex::Body {
                    left: self.channel.len(),
                };
            }
            (Slot::PayloadLen, b'$') => {
                let len = bulk_len(rest, 0, PAYLOAD_BYTES_MAX)?;
                self.slot = Slot::Payload;
                self.lex = Lex::Body { left: len };
            }
            (Slot::Count, b':') => {
                sink(Event::Subscribed(number(rest)?));
                self.slot = Slot::Top;
            }
            (_, other) => return Err(Malformed::UnexpectedType(other)),
        }
        Ok(())
    }

    fn on_body(&mut self, bytes: &[u8], sink: &mut impl FnMut(Event<'_>)) -> Result<(), Malformed> {
        match self.slot {
            Slot::Kind => self.kind.extend_from_slice(bytes),
            Slot::Channel { kind, matched } => {
                if self.channel.get(matched..matched + bytes.len()) != Some(bytes) {
                    return Err(Malformed::WrongChannel);
                }
                self.slot = Slot::Channel {
                    kind,
                    matched: matched + bytes.len(),
                };
            }
            Slot::Payload => sink(Event::Payload(bytes)),
            // A body is only entered from the slots above.
            Slot::Top | Slot::KindLen | Slot::ChannelLen(_) | Slot::PayloadLen | Slot::Count => {
                return Err(Malformed::BadLine)
            }
        }
        Ok(())
    }

    fn on_body_end(&mut self, sink: &mut impl FnMut(Event<'_>)) -> Result<(), Malformed> {
        self.slot = match self.slot {
            Slot::Kind => match self.kind.as_slice() {
                b"message" => Slot::ChannelLen(Kind::Message),
                b"subscribe" => Slot::ChannelLen(Kind::Subscribe),
                _ => return Err(Malformed::UnknownKind),
            },
            Slot::Channel {
                kind: Kind::Message,
                ..
            } => Slot::PayloadLen,
            Slot::Channel {
                kind: Kind::Subscribe,
                ..
            } => Slot::Count,
            Slot::Payload => {
                sink(Event::MessageEnd);
                Slot::Top
            }
            Slot::Top | Slot::KindLen | Slot::ChannelLen(_) | Slot::PayloadLen | Slot::Count => {
                return Err(Malformed::BadLine)
            }
        };
        Ok(())
    }
}

/// An optional `-` and 1 to 18 decimal digits.
fn number(text: &[u8]) -> Result<i64, Malformed> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Malformed::BadNumber);
    }
    let value = digits
        .iter()
        .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0'));
    Ok(if negative { -value } else { value })
}

/// A bulk length between `min` and `max` (a null bulk, `$-1`, is out of range too).
fn bulk_len(text: &[u8], min: usize, max: usize) -> Result<usize, Malformed> {
    let n = number(text)?;
    usize::try_from(n)
        .ok()
        .filter(|len| (min..=max).contains(len))
        .ok_or(Malformed::BulkLength(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNEL: &[u8] = b"lg-chan";

    fn message(channel: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = format!("*3\r\n$7\r\nmessage\r\n${}\r\n", channel.len()).into_bytes();
        out.extend_from_slice(channel);
        out.extend_from_slice(format!("\r\n${}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn subscribed(channel: &[u8], count: i64) -> Vec<u8> {
        let mut out = format!("*3\r\n$9\r\nsubscribe\r\n${}\r\n", channel.len()).into_bytes();
        out.extend_from_slice(channel);
        out.extend_from_slice(format!("\r\n:{count}\r\n").as_bytes());
        out
    }

    /// What the reader reported, payload pieces joined per message.
    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        Message(Vec<u8>),
        Subscribed(i64),
        Integer(i64),
        ServerError(Vec<u8>),
    }

    fn read_pieces(pieces: &[&[u8]]) -> (Vec<Owned>, Result<(), Malformed>, Reader) {
        let mut reader = Reader::new(CHANNEL);
        let mut found = Vec::new();
        let mut payload: Option<Vec<u8>> = None;
        let mut result = Ok(());
        for piece in pieces {
            result = reader.feed(piece, |event| match event {
                Event::Payload(bytes) => {
                    assert!(!bytes.is_empty());
                    payload
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(bytes);
                }
                Event::MessageEnd => found.push(Owned::Message(payload.take().unwrap_or_default())),
                Event::Subscribed(n) => found.push(Owned::Subscribed(n)),
                Event::Integer(n) => found.push(Owned::Integer(n)),
                Event::ServerError(text) => found.push(Owned::ServerError(text.to_vec())),
            });
            if result.is_err() {
                break;
            }
        }
        (found, result, reader)
    }

    /// A stream with every frame shape, and what it holds.
    fn sample() -> (Vec<u8>, Vec<Owned>) {
        let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = subscribed(CHANNEL, 1);
        stream.extend(message(CHANNEL, b"lg000001: @hello\n"));
        stream.extend(b":100\r\n");
        // Payloads may hold CR LF and `*`: only the length frames them.
        stream.extend(message(CHANNEL, b"\r\n*3\r\n:1\r\n"));
        stream.extend(message(CHANNEL, b""));
        stream.extend(b"-ERR wrong number of arguments\r\n");
        stream.extend(message(CHANNEL, &big));
        stream.extend(b":-1\r\n");
        let expected = vec![
            Owned::Subscribed(1),
            Owned::Message(b"lg000001: @hello\n".to_vec()),
            Owned::Integer(100),
            Owned::Message(b"\r\n*3\r\n:1\r\n".to_vec()),
            Owned::Message(Vec::new()),
            Owned::ServerError(b"ERR wrong number of arguments".to_vec()),
            Owned::Message(big),
            Owned::Integer(-1),
        ];
        (stream, expected)
    }

    #[test]
    fn a_whole_stream_round_trips() {
        let (stream, expected) = sample();
        let (found, result, reader) = read_pieces(&[&stream]);
        assert_eq!(result, Ok(()));
        assert_eq!(found, expected);
        assert!(reader.at_frame_boundary());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let (stream, expected) = sample();
        for cut in 0..=stream.len() {
            let (found, result, reader) = read_pieces(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(result, Ok(()), "cut at {cut}");
            assert_eq!(found, expected, "cut at {cut}");
            assert!(reader.at_frame_boundary(), "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events() {
        let (stream, expected) = sample();
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        let (found, result, _) = read_pieces(&pieces);
        assert_eq!(result, Ok(()));
        assert_eq!(found, expected);
    }

    #[test]
    fn an_unfinished_frame_is_held_not_reported() {
        let frame = message(CHANNEL, b"payload");
        let (found, result, reader) = read_pieces(&[&frame[..frame.len() - 1]]);
        assert_eq!(result, Ok(()));
        assert!(found.is_empty());
        assert!(!reader.at_frame_boundary());
    }

    #[test]
    fn the_commands_are_what_redis_expects() {
        assert_eq!(
            subscribe_command(b"lg-1"),
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nlg-1\r\n"
        );
        let mut publish = publish_prefix(b"lg-1", 5);
        publish.extend_from_slice(b"hello");
        publish.extend_from_slice(PUBLISH_SUFFIX);
        assert_eq!(
            publish,
            b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nlg-1\r\n$5\r\nhello\r\n"
        );
    }

    #[test]
    fn malformed_input_is_named_and_stops_the_reader() {
        let wrong_channel = message(b"lg-chaN", b"x");
        let other_length_channel = message(b"lg-channel", b"x");
        let mut payload_too_long = message(CHANNEL, b"abc");
        // `$3` then four bytes before CR LF.
        payload_too_long.splice(
            payload_too_long.len() - 2..payload_too_long.len() - 2,
            *b"d",
        );
        let cases: Vec<(&[u8], Malformed)> = vec![
            (b"+OK\r\n", Malformed::UnexpectedType(b'+')),
            (b"$5\r\nhello\r\n", Malformed::UnexpectedType(b'$')),
            (b"hello\r\n", Malformed::UnexpectedType(b'h')),
            (b":12\n", Malformed::MissingCrLf),
            (b"\r\n", Malformed::BadLine),
            (b":\r\n", Malformed::BadNumber),
            (b":1x\r\n", Malformed::BadNumber),
            (b":1234567890123456789\r\n", Malformed::BadNumber),
            (b"*2\r\n", Malformed::ArrayLength(2)),
            (b"*-1\r\n", Malformed::ArrayLength(-1)),
            (b"*3\r\n$-1\r\n", Malformed::BulkLength(-1)),
            (b"*3\r\n$99\r\n", Malformed::BulkLength(99)),
            (b"*3\r\n:7\r\n", Malformed::UnexpectedType(b':')),
            (b"*3\r\n$8\r\nmessages\r\n", Malformed::UnknownKind),
            (b"*3\r\n$11\r\nunsubscribe\r\n", Malformed::UnknownKind),
            (&wrong_channel, Malformed::WrongChannel),
            (&other_length_channel, Malformed::WrongChannel),
            (&payload_too_long, Malformed::MissingCrLf),
            (
                b"*3\r\n$7\r\nmessage\r\n$7\r\nlg-chan\r\n$2000000\r\n",
                Malformed::BulkLength(2_000_000),
            ),
            (
                b"*3\r\n$9\r\nsubscribe\r\n$7\r\nlg-chan\r\n$1\r\n",
                Malformed::UnexpectedType(b'$'),
            ),
        ];
        for (input, why) in cases {
            // Whole, and one byte at a time: the same verdict.
            let (_, result, mut reader) = read_pieces(&[input]);
            assert_eq!(
                result,
                Err(why.clone()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(
                reader.feed(b":1\r\n", |_| {}),
                Err(why.clone()),
                "stays failed"
            );
            let pieces: Vec<&[u8]> = input.chunks(1).collect();
            let (_, result, _) = read_pieces(&pieces);
            assert_eq!(result, Err(why), "{:?}", String::from_utf8_lossy(input));
        }
        let long_line = vec![b'-'; LINE_BYTES_MAX + 1];
        assert_eq!(read_pieces(&[&long_line]).1, Err(Malformed::BadLine));
    }
}
