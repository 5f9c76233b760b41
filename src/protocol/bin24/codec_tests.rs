use std::hash::BuildHasher;

use super::*;

/// The contract's vectors (tests/vectors/bin24-frames.tsv, itself a copy of the contract's);
/// `every_vector_is_in_the_vector_file` keeps them the same.
const VECTOR_MESSAGE: &str = "1e00000000000000616c696365000000626f620000000000686920626f62";
const VECTOR_CLIENT_ANSWER: &str = "1a00010007000000616c696365000000626f6200000000003230";
const VECTOR_SERVER_ANSWER: &str = "1b000100030000006e6f626f64790000616c696365000000333030";
const VECTOR_OFFLINE: &str = "1e00020000000000616c696365000000626f620000000000686920626f62";
const VECTOR_EIGHT_BYTE_NAME: &str = "19000000010000006162636465666768626f62000000000078";

const VECTORS: &[&str] = &[
    VECTOR_MESSAGE,
    VECTOR_CLIENT_ANSWER,
    VECTOR_SERVER_ANSWER,
    VECTOR_OFFLINE,
    VECTOR_EIGHT_BYTE_NAME,
];

#[test]
fn every_vector_is_in_the_vector_file() {
    let file = include_str!("../../../tests/vectors/bin24-frames.tsv");
    let hexes: Vec<&str> = file
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit('\t').next())
        .collect();
    assert_eq!(hexes, VECTORS);
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn name(raw: &str) -> Name {
    Name::new(raw.as_bytes()).unwrap()
}

fn decode_one(raw: &[u8]) -> Frame {
    let mut buf = BytesMut::from(raw);
    let frame = decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "one frame, nothing left over");
    frame
}

/// Decode everything `buf` holds, checking that a final `Ok(None)` consumed nothing.
fn decode_all(buf: &mut BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let before = buf.clone();
        match decode(buf).unwrap() {
            Some(frame) => frames.push(frame),
            None => {
                assert_eq!(*buf, before, "Ok(None) must consume nothing");
                return frames;
            }
        }
    }
}

/// A tiny deterministic generator, so the "random" frames are the same on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// A name of 0..=8 bytes, none of them NUL.
    fn name(&mut self) -> Name {
        let len = (self.next() % 9) as usize;
        let raw: Vec<u8> = (0..len).map(|_| (self.next() % 255) as u8 + 1).collect();
        Name::new(&raw).unwrap()
    }
}

#[test]
fn vectors_decode_to_their_fields() {
    let message = decode_one(&unhex(VECTOR_MESSAGE));
    assert_eq!(message.len(), 30);
    assert_eq!(message.frame_type(), TYPE_MESSAGE);
    assert_eq!(message.message_id(), 0);
    assert_eq!(message.src(), name("alice"));
    assert_eq!(message.dst(), name("bob"));
    assert_eq!(&message.body()[..], b"hi bob");

    let answer = decode_one(&unhex(VECTOR_CLIENT_ANSWER));
    assert_eq!(answer.len(), 26);
    assert_eq!(answer.frame_type(), TYPE_ANSWER);
    assert_eq!(answer.message_id(), 7);
    assert_eq!(answer.src(), name("alice"));
    assert_eq!(answer.dst(), name("bob"));
    assert_eq!(&answer.body()[..], b"20");

    let server = decode_one(&unhex(VECTOR_SERVER_ANSWER));
    assert_eq!(server.len(), 27);
    assert_eq!(server.frame_type(), TYPE_ANSWER);
    assert_eq!(server.message_id(), 3);
    assert_eq!(server.src(), name("nobody"));
    assert_eq!(server.dst(), name("alice"));
    assert_eq!(&server.body()[..], ANSWER_STORED);

    let offline = decode_one(&unhex(VECTOR_OFFLINE));
    assert_eq!(offline.frame_type(), TYPE_OFFLINE);
    assert_eq!(offline.src(), name("alice"));
    assert_eq!(offline.dst(), name("bob"));
    assert_eq!(&offline.body()[..], b"hi bob");

    let eight = decode_one(&unhex(VECTOR_EIGHT_BYTE_NAME));
    assert_eq!(eight.len(), 25);
    assert_eq!(eight.frame_type(), TYPE_MESSAGE);
    assert_eq!(eight.message_id(), 1);
    assert_eq!(eight.src(), name("abcdefgh"));
    assert_eq!(eight.src().as_bytes(), b"abcdefgh");
    assert_eq!(eight.dst(), name("bob"));
    assert_eq!(&eight.body()[..], b"x");
}

#[test]
fn vectors_reencode_byte_for_byte() {
    for hex in VECTORS {
        let raw = unhex(hex);
        let frame = decode_one(&raw);
        assert_eq!(&frame.as_bytes()[..], &raw[..], "{hex}");
        let again = encode(
            frame.frame_type(),
            frame.message_id(),
            frame.src(),
            frame.dst(),
            &frame.body(),
        )
        .unwrap();
        assert_eq!(&again[..], &raw[..], "{hex}");
        assert_eq!(Frame::from_bytes(Bytes::from(raw)).unwrap(), frame);
    }
}

#[test]
fn server_answer_vector_from_encode_answer() {
    let answer = encode_answer(3, name("nobody"), name("alice"), ANSWER_STORED);
    assert_eq!(&answer[..], &unhex(VECTOR_SERVER_ANSWER)[..]);
}

#[test]
fn offline_vector_is_the_message_vector_with_type_2() {
    let message = decode_one(&unhex(VECTOR_MESSAGE));
    let stored = message.copy_with_type(TYPE_OFFLINE);
    assert_eq!(&stored[..], &unhex(VECTOR_OFFLINE)[..]);
}

#[test]
fn answers_have_the_contract_layout() {
    for text in [ANSWER_DELIVERED, ANSWER_STORED, ANSWER_STORE_FULL] {
        let bytes = encode_answer(u32::MAX, name("bob"), name("alice"), text);
        assert_eq!(bytes.len(), 27);
        let frame = Frame::from_bytes(bytes).unwrap();
        assert_eq!(frame.frame_type(), TYPE_ANSWER);
        assert_eq!(frame.message_id(), u32::MAX);
        assert_eq!(frame.src(), name("bob"));
        assert_eq!(frame.dst(), name("alice"));
        assert_eq!(&frame.body()[..], text);
    }
    // A caller's oversized text is cut to what a frame can carry, never a lying len field.
    let long = encode_answer(1, name("a"), name("b"), &[b'x'; 2000]);
    assert_eq!(long.len(), FRAME_BYTES_MAX);
    assert!(Frame::from_bytes(long).is_ok());
}

#[test]
fn round_trip_every_body_length_and_type() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for frame_type in [TYPE_MESSAGE, TYPE_ANSWER, TYPE_OFFLINE, 0xbeef] {
        for body_len in 0..=BODY_BYTES_MAX {
            let id = rng.next() as u32;
            let (src, dst) = (rng.name(), rng.name());
            let body = rng.bytes(body_len);
            let bytes = encode(frame_type, id, src, dst, &body).unwrap();
            assert_eq!(bytes.len(), HEADER_BYTES + body_len);
            assert_eq!(&bytes[..2], &(bytes.len() as u16).to_le_bytes());
            let frame = decode_one(&bytes);
            assert_eq!(frame.len(), HEADER_BYTES + body_len);
            assert_eq!(frame.frame_type(), frame_type);
            assert_eq!(frame.message_id(), id);
            assert_eq!(frame.src(), src);
            assert_eq!(frame.dst(), dst);
            assert_eq!(&frame.body()[..], &body[..]);
            assert_eq!(frame.as_bytes(), &bytes);
        }
    }
}

#[test]
fn encode_refuses_a_body_over_1000_bytes() {
    let (a, b) = (name("a"), name("b"));
    assert!(encode(TYPE_MESSAGE, 0, a, b, &[0; BODY_BYTES_MAX]).is_some());
    assert_eq!(
        encode(TYPE_MESSAGE, 0, a, b, &[0; BODY_BYTES_MAX + 1]),
        None
    );
    assert_eq!(encode(TYPE_MESSAGE, 0, a, b, &[0; 70_000]), None);
}

#[test]
fn smallest_and_largest_frames() {
    let empty = encode(TYPE_MESSAGE, 5, name("a"), name("b"), b"").unwrap();
    assert_eq!(&empty[..2], &[24, 0]);
    let frame = decode_one(&empty);
    assert_eq!(frame.len(), HEADER_BYTES);
    assert!(frame.body().is_empty());

    let body = [0xa5; BODY_BYTES_MAX];
    let full = encode(TYPE_MESSAGE, 6, name("a"), name("b"), &body).unwrap();
    assert_eq!(&full[..2], &1024u16.to_le_bytes());
    let frame = decode_one(&full);
    assert_eq!(frame.len(), FRAME_BYTES_MAX);
    assert_eq!(&frame.body()[..], &body[..]);
}

/// A few frames of assorted sizes back to back, as a stream carries them.
fn stream() -> (Vec<u8>, Vec<Bytes>) {
    let mut frames: Vec<Bytes> = VECTORS.iter().map(|hex| unhex(hex).into()).collect();
    let mut rng = XorShift(7);
    frames.push(encode(TYPE_MESSAGE, 9, name("x"), name("y"), b"").unwrap());
    frames.push(encode(TYPE_MESSAGE, 10, rng.name(), rng.name(), &rng.bytes(1000)).unwrap());
    frames.push(encode(TYPE_ANSWER, 11, rng.name(), rng.name(), &rng.bytes(3)).unwrap());
    let raw = frames.iter().flat_map(|f| f.iter().copied()).collect();
    (raw, frames)
}

#[test]
fn back_to_back_frames_come_out_in_order() {
    let (raw, expected) = stream();
    let mut buf = BytesMut::from(&raw[..]);
    let frames = decode_all(&mut buf);
    assert!(buf.is_empty());
    let got: Vec<Bytes> = frames.into_iter().map(Frame::into_bytes).collect();
    assert_eq!(got, expected);
}

#[test]
fn every_split_point_gives_the_same_frames() {
    let (raw, expected) = stream();
    for at in 0..=raw.len() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&raw[..at]);
        let mut frames = decode_all(&mut buf);
        buf.extend_from_slice(&raw[at..]);
        frames.extend(decode_all(&mut buf));
        assert!(buf.is_empty(), "split at {at}");
        let got: Vec<Bytes> = frames.into_iter().map(Frame::into_bytes).collect();
        assert_eq!(got, expected, "split at {at}");
    }
}

#[test]
fn one_byte_at_a_time_gives_the_same_frames() {
    let (raw, expected) = stream();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &byte in &raw {
        buf.extend_from_slice(&[byte]);
        got.extend(decode_all(&mut buf).into_iter().map(Frame::into_bytes));
    }
    assert!(buf.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn bad_len_is_refused_as_soon_as_two_bytes_arrive() {
    for len in [0u16, 1, 23, 1025, 65535] {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&len.to_le_bytes()[..1]);
        assert_eq!(decode(&mut buf), Ok(None), "len {len}, one byte");
        buf.extend_from_slice(&len.to_le_bytes()[1..]);
        assert_eq!(
            decode(&mut buf),
            Err(DecodeError::LengthOutOfRange(len)),
            "len {len}"
        );
        assert_eq!(buf.len(), 2, "an error consumes nothing");
        // The same with a whole header and more behind it.
        buf.extend_from_slice(&[0; 100]);
        assert_eq!(decode(&mut buf), Err(DecodeError::LengthOutOfRange(len)));
    }
}

#[test]
fn good_len_waits_for_the_whole_frame() {
    for len in [24u16, 25, 1023, 1024] {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&vec![0; usize::from(len) - 3]);
        assert_eq!(decode(&mut buf), Ok(None), "len {len}");
        assert_eq!(buf.len(), usize::from(len) - 1, "nothing consumed");
        buf.extend_from_slice(&[0]);
        assert_eq!(decode(&mut buf).unwrap().unwrap().len(), usize::from(len));
    }
}

#[test]
fn empty_buffer_needs_more() {
    let mut buf = BytesMut::new();
    assert_eq!(decode(&mut buf), Ok(None));
}

#[test]
fn from_bytes_checks_len_against_the_bytes() {
    let raw = unhex(VECTOR_MESSAGE);
    assert!(Frame::from_bytes(Bytes::from(raw.clone())).is_ok());
    assert_eq!(
        Frame::from_bytes(Bytes::from(raw[..29].to_vec())),
        Err(DecodeError::LengthMismatch {
            declared: Some(30),
            actual: 29
        })
    );
    let mut longer = raw.clone();
    longer.push(0);
    assert_eq!(
        Frame::from_bytes(Bytes::from(longer)),
        Err(DecodeError::LengthMismatch {
            declared: Some(30),
            actual: 31
        })
    );
    assert_eq!(
        Frame::from_bytes(Bytes::from_static(&[30])),
        Err(DecodeError::LengthMismatch {
            declared: None,
            actual: 1
        })
    );
    assert_eq!(
        Frame::from_bytes(Bytes::new()),
        Err(DecodeError::LengthMismatch {
            declared: None,
            actual: 0
        })
    );
    // A frame too short for its header, even if its len field matches.
    let mut short = vec![0; 10];
    short[0] = 10;
    assert_eq!(
        Frame::from_bytes(Bytes::from(short)),
        Err(DecodeError::LengthOutOfRange(10))
    );
    let mut long = vec![0; 1025];
    long[..2].copy_from_slice(&1025u16.to_le_bytes());
    assert_eq!(
        Frame::from_bytes(Bytes::from(long)),
        Err(DecodeError::LengthOutOfRange(1025))
    );
}

#[test]
fn names_cut_at_the_first_nul() {
    let full = Name::from_field(b"abcdefgh");
    assert_eq!(full.as_bytes(), b"abcdefgh");
    assert_eq!(full.to_field(), *b"abcdefgh");
    assert_eq!(Some(full), Name::new(b"abcdefgh"));

    let dirty = Name::from_field(b"bob\0junk");
    let clean = Name::from_field(b"bob\0\0\0\0\0");
    assert_eq!(dirty, clean);
    assert_eq!(dirty.as_bytes(), b"bob");
    assert_eq!(dirty.to_field(), *b"bob\0\0\0\0\0");
    assert_eq!(Some(dirty), Name::new(b"bob"));
    let state = std::hash::RandomState::new();
    assert_eq!(
        state.hash_one(dirty),
        state.hash_one(clean),
        "equal names hash alike"
    );

    let empty = Name::from_field(b"\0garbage");
    assert!(empty.is_empty());
    assert_eq!(empty.as_bytes(), b"");
    assert_eq!(Some(empty), Name::new(b""));
    assert!(!full.is_empty());
}

#[test]
fn dirty_name_fields_in_a_frame_equal_the_clean_name() {
    let mut raw = unhex(VECTOR_MESSAGE);
    raw[8 + 6..16].copy_from_slice(b"xy"); // after alice's NUL
    raw[16 + 4..24].copy_from_slice(b"zzzz"); // after bob's NUL
    let frame = decode_one(&raw);
    assert_eq!(frame.src(), name("alice"));
    assert_eq!(frame.dst(), name("bob"));
    // Forwarding is verbatim: the garbage stays in the bytes.
    assert_eq!(&frame.as_bytes()[..], &raw[..]);
}

#[test]
fn name_new_refuses_what_the_wire_cannot_carry() {
    assert_eq!(Name::new(b"abcdefghi"), None);
    assert_eq!(Name::new(b"a\0b"), None);
    assert_eq!(Name::new(b"\0"), None);
}

#[test]
fn names_order_like_their_bytes() {
    let mut names: Vec<Name> = ["bob", "", "alice", "al", "alicexyz", "\u{e9}"]
        .iter()
        .map(|n| name(n))
        .collect();
    names.sort();
    let sorted: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
    let mut expected = sorted.clone();
    expected.sort();
    assert_eq!(sorted, expected);
}

#[test]
fn names_display_escaped() {
    assert_eq!(name("alice").to_string(), "alice");
    assert_eq!(format!("{:?}", name("alice")), "\"alice\"");
    assert_eq!(Name::new(b"a\nb\x1b").unwrap().to_string(), "a\\nb\\u{1b}");
    assert_eq!(
        format!("{:?}", Name::new(b"a\"\n").unwrap()),
        "\"a\\\"\\n\""
    );
    assert_eq!(Name::new(b"jos\xc3\xa9").unwrap().to_string(), "jos\u{e9}");
    assert_eq!(Name::new(b"x\xffy").unwrap().to_string(), "x\u{fffd}y");
}

#[test]
fn frame_debug_is_short() {
    let frame = decode_one(&unhex(VECTOR_MESSAGE));
    assert_eq!(
        format!("{frame:?}"),
        "Frame { len: 30, type: 0, id: 0, src: \"alice\", dst: \"bob\", body_bytes: 6 }"
    );
}

#[test]
fn decode_error_displays() {
    assert_eq!(
        DecodeError::LengthOutOfRange(23).to_string(),
        "BIN24 frame len 23 outside 24..=1024"
    );
    let err: Box<dyn std::error::Error> = Box::new(DecodeError::LengthMismatch {
        declared: Some(30),
        actual: 29,
    });
    assert_eq!(err.to_string(), "BIN24 frame of 29 bytes declares len 30");
}

#[test]
fn copy_with_type_changes_only_the_type_and_owns_its_bytes() {
    let mut rng = XorShift(42);
    let raw = encode(
        TYPE_MESSAGE,
        0x0102_0304,
        rng.name(),
        rng.name(),
        &rng.bytes(500),
    )
    .unwrap();
    let frame = decode_one(&raw);
    let copy = frame.copy_with_type(TYPE_OFFLINE);
    assert_eq!(copy.len(), frame.len());
    assert_eq!(&copy[..2], &frame.as_bytes()[..2]);
    assert_eq!(&copy[2..4], &TYPE_OFFLINE.to_le_bytes());
    assert_eq!(&copy[4..], &frame.as_bytes()[4..]);

    let stored = Frame::from_bytes(copy.clone()).unwrap();
    assert_eq!(stored.frame_type(), TYPE_OFFLINE);
    assert_eq!(stored.message_id(), frame.message_id());
    assert_eq!(stored.src(), frame.src());
    assert_eq!(stored.dst(), frame.dst());
    assert_eq!(stored.body(), frame.body());

    // Not a view into the original's memory: neither range overlaps the other.
    let original = frame.as_bytes().as_ptr_range();
    let copied = copy.as_ptr_range();
    assert!(copied.end <= original.start || original.end <= copied.start);
    // The original is unchanged.
    assert_eq!(frame.frame_type(), TYPE_MESSAGE);
    assert_eq!(frame.as_bytes(), &raw);
}

#[test]
fn decode_is_zero_copy() {
    let first = unhex(VECTOR_MESSAGE);
    let second = unhex(VECTOR_EIGHT_BYTE_NAME);
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(&first);
    buf.extend_from_slice(&second);
    buf.extend_from_slice(&[0x1e]); // the start of a third frame
    let base = buf.as_ptr();

    let a = decode(&mut buf).unwrap().unwrap();
    let b = decode(&mut buf).unwrap().unwrap();
    assert_eq!(decode(&mut buf), Ok(None));

    assert_eq!(a.as_bytes().as_ptr(), base);
    assert_eq!(a.body().as_ptr(), base.wrapping_add(HEADER_BYTES));
    assert_eq!(b.as_bytes().as_ptr(), base.wrapping_add(first.len()));
    assert_eq!(
        b.body().as_ptr(),
        base.wrapping_add(first.len() + HEADER_BYTES)
    );
    assert_eq!(buf.as_ptr(), base.wrapping_add(first.len() + second.len()));
    assert_eq!(a.into_bytes().as_ptr(), base);
}

/// The original C++ client answers with the received frame's len and the first len-24 bytes
/// of "200\0", then whatever its buffer held. Such a frame decodes, and stays verbatim.
#[test]
fn original_client_answers_decode_verbatim() {
    let mut rng = XorShift(3);
    for received_len in [24usize, 25, 26, 27, 28, 30, 100, 1024] {
        let body_len = received_len - HEADER_BYTES;
        let mut body = b"200\0".to_vec();
        body.extend_from_slice(&rng.bytes(body_len.saturating_sub(4)));
        body.truncate(body_len);
        let mut raw = Vec::new();
        raw.extend_from_slice(&(received_len as u16).to_le_bytes());
        raw.extend_from_slice(&TYPE_ANSWER.to_le_bytes());
        raw.extend_from_slice(&7u32.to_le_bytes());
        raw.extend_from_slice(b"bob\0\0\0\0\0");
        raw.extend_from_slice(b"alice\0\0\0");
        raw.extend_from_slice(&body);

        let frame = decode_one(&raw);
        assert_eq!(frame.len(), received_len);
        assert_eq!(frame.frame_type(), TYPE_ANSWER);
        assert_eq!(frame.message_id(), 7);
        assert_eq!(frame.src(), name("bob"));
        assert_eq!(frame.dst(), name("alice"));
        assert_eq!(&frame.body()[..], &body[..]);
        assert_eq!(&frame.as_bytes()[..], &raw[..]);
    }
}
