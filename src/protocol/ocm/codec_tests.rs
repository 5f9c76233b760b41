//! Codec and JSON tests: the contract's vectors byte for byte, framing at every split point,
//! limits, and JSON checked against CPython's `json.dumps` output (baked in below).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::ocm::json::{self, JsonError, RequestPayload};

// ---- the contract's vectors ----

/// The contract's vectors, copied into the repository (tests/vectors/README.md).
const REQUESTS: &str = include_str!("../../../tests/vectors/ocm-tcrp-requests.tsv");
const ANSWERS: &str = include_str!("../../../tests/vectors/ocm-tcrp-answers.tsv");

/// The token the answer vectors show in place of a random one.
pub(crate) const VECTOR_TOKEN: &str =
    "abababababababababababababababababababababababababababababababab";

/// One row of a vector file: (case, room, bytes).
pub(crate) struct VectorRow {
    pub case: String,
    pub room: String,
    pub bytes: Vec<u8>,
}

pub(crate) fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn rows(text: &str) -> Vec<VectorRow> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "row {line:?}");
            VectorRow {
                case: fields[0].to_string(),
                room: fields[1].to_string(),
                bytes: unhex(fields[2]),
            }
        })
        .collect()
}

pub(crate) fn request_rows() -> Vec<VectorRow> {
    rows(REQUESTS)
}

pub(crate) fn answer_rows() -> Vec<VectorRow> {
    rows(ANSWERS)
}

/// The answer vector for `case`, with `token` in place of the vector's stand-in token.
pub(crate) fn answer_vector(case: &str, token: &str) -> Vec<u8> {
    let row = answer_rows()
        .into_iter()
        .find(|row| row.case == case)
        .unwrap_or_else(|| panic!("no answer vector {case}"));
    let json = String::from_utf8(row.bytes[HEADER_BYTES..].to_vec()).unwrap();
    let json = json.replace(VECTOR_TOKEN, token);
    assert_eq!(
        json.len(),
        row.bytes.len() - HEADER_BYTES,
        "tokens have one length"
    );
    let mut bytes = row.bytes[..HEADER_BYTES].to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes
}

fn chars(room: &str) -> u8 {
    u8::try_from(room.chars().count()).unwrap()
}

#[test]
fn every_request_vector_decodes_and_reencodes_byte_for_byte() {
    let rows = request_rows();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let (operation, name, port) = match row.case.as_str() {
            "create" => (OPERATION_CREATE, "alice", 40001),
            "join-japanese" => (OPERATION_JOIN, "太郎", 40002),
            other => panic!("request vector {other} has no expectation here"),
        };
        let mut buf = BytesMut::from(&row.bytes[..]);
        let request = decode_request(&mut buf, 65536).unwrap().unwrap();
        assert!(buf.is_empty(), "{}", row.case);
        assert_eq!(request.operation, operation);
        assert_eq!(request.state, STATE_REQUEST);
        assert_eq!(&request.room[..], row.room.as_bytes());
        let payload = std::str::from_utf8(&request.payload).unwrap();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(
            json::parse_request(payload),
            Ok(RequestPayload {
                user_name: name.to_string(),
                user_address: address,
            })
        );
        let encoded = encode_request(
            operation,
            STATE_REQUEST,
            row.room.as_bytes(),
            &json::encode_request(name, address),
        )
        .unwrap();
        assert_eq!(&encoded[..], &row.bytes[..], "{}", row.case);
    }
}

#[test]
fn every_answer_vector_is_encoded_byte_for_byte() {
    let rows = answer_rows();
    assert_eq!(rows.len(), 7);
    for row in rows {
        let room = row.room.as_str();
        let (operation, state, status, message, token) = match row.case.as_str() {
            "success-create" => (
                OPERATION_CREATE,
                STATE_DONE,
                STATUS_DONE,
                MESSAGE_DONE.to_string(),
                Some(VECTOR_TOKEN),
            ),
            "success-join" => (
                OPERATION_JOIN,
                STATE_DONE,
                STATUS_DONE,
                MESSAGE_DONE.to_string(),
                Some(VECTOR_TOKEN),
            ),
            "exists" | "exists-japanese-room" => (
                OPERATION_CREATE,
                STATE_REQUEST,
                STATUS_REFUSED,
                room_exists_message(room),
                None,
            ),
            "missing" => (
                OPERATION_JOIN,
                STATE_REQUEST,
                STATUS_REFUSED,
                room_missing_message(room),
                None,
            ),
            "malformed" => (
                OPERATION_CREATE,
                STATE_ERROR,
                STATUS_FAILED,
                MESSAGE_FAILED.to_string(),
                None,
            ),
            "ack-state1" => (
                OPERATION_CREATE,
                STATE_ACK,
                STATUS_ACCEPTED,
                MESSAGE_ACCEPTED.to_string(),
                None,
            ),
            other => panic!("answer vector {other} has no expectation here"),
        };
        let json = json::encode_answer(status, &message, token);
        let encoded = encode_answer(chars(room), operation, state, &json);
        assert_eq!(&encoded[..], &row.bytes[..], "{}", row.case);

        // And the client reads it back.
        let mut buf = BytesMut::from(&row.bytes[..]);
        let answer = decode_answer(&mut buf, 65536).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            (answer.room_chars, answer.operation, answer.state),
            (chars(room), operation, state)
        );
        let parsed = json::parse_answer(std::str::from_utf8(&answer.json).unwrap()).unwrap();
        assert_eq!(parsed.status, i64::from(status));
        assert_eq!(parsed.message, message);
        assert_eq!(parsed.token.as_deref(), token);
    }
}

#[test]
fn answer_vectors_take_any_token() {
    let token = "0123456789abcdef".repeat(4);
    let bytes = answer_vector("success-join", &token);
    let expected = encode_answer(
        5,
        OPERATION_JOIN,
        STATE_DONE,
        &json::encode_answer(STATUS_DONE, MESSAGE_DONE, Some(&token)),
    );
    assert_eq!(bytes, &expected[..]);
}

// ---- TCRP framing ----

fn sample_request() -> Vec<u8> {
    encode_request(
        OPERATION_JOIN,
        STATE_REQUEST,
        "部屋一".as_bytes(),
        b"payload!",
    )
    .unwrap()
    .to_vec()
}

#[test]
fn request_round_trip() {
    let raw = sample_request();
    assert_eq!(raw.len(), HEADER_BYTES + 9 + 8);
    assert_eq!(&raw[..3], &[9, OPERATION_JOIN, STATE_REQUEST]);
    assert_eq!(&raw[3..31], &[0; 28]);
    assert_eq!(raw[31], 8);
    let mut buf = BytesMut::from(&raw[..]);
    let request = decode_request(&mut buf, 8).unwrap().unwrap();
    assert_eq!(
        request,
        TcrpRequest {
            operation: OPERATION_JOIN,
            state: STATE_REQUEST,
            room: Bytes::from("部屋一"),
            payload: Bytes::from_static(b"payload!"),
        }
    );
    assert!(buf.is_empty());
}

#[test]
fn request_fields_are_slices_of_the_read_buffer() {
    let raw = sample_request();
    let mut buf = BytesMut::from(&raw[..]);
    let start = buf.as_ptr() as usize;
    let request = decode_request(&mut buf, 64).unwrap().unwrap();
    assert_eq!(request.room.as_ptr() as usize, start + HEADER_BYTES);
    assert_eq!(request.payload.as_ptr() as usize, start + HEADER_BYTES + 9);
}

#[test]
fn empty_room_and_payload_decode() {
    let raw = encode_request(7, 9, b"", b"").unwrap();
    assert_eq!(raw.len(), HEADER_BYTES);
    let mut buf = BytesMut::from(&raw[..]);
    let request = decode_request(&mut buf, 0).unwrap().unwrap();
    assert_eq!((request.operation, request.state), (7, 9));
    assert!(request.room.is_empty() && request.payload.is_empty());
}

#[test]
fn every_split_point_needs_more_and_consumes_nothing() {
    for raw in [sample_request(), request_rows()[1].bytes.clone()] {
        for cut in 0..raw.len() {
            let mut buf = BytesMut::from(&raw[..cut]);
            assert_eq!(decode_request(&mut buf, 1024), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &raw[..cut], "Ok(None) consumes nothing");
            buf.extend_from_slice(&raw[cut..]);
            let request = decode_request(&mut buf, 1024).unwrap().unwrap();
            assert_eq!(request.payload.len() + request.room.len(), raw.len() - 32);
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn one_byte_at_a_time() {
    let raw = sample_request();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for &byte in &raw {
        buf.extend_from_slice(&[byte]);
        if let Some(request) = decode_request(&mut buf, 1024).unwrap() {
            decoded.push(request);
        }
    }
    assert_eq!(decoded.len(), 1);
    assert_eq!(&decoded[0].payload[..], b"payload!");
    assert!(buf.is_empty());
}

#[test]
fn requests_back_to_back_leave_the_rest() {
    let mut raw = sample_request();
    raw.extend_from_slice(&sample_request()[..40]);
    let mut buf = BytesMut::from(&raw[..]);
    assert!(decode_request(&mut buf, 1024).unwrap().is_some());
    assert_eq!(buf.len(), 40);
    assert_eq!(decode_request(&mut buf, 1024), Ok(None));
    assert_eq!(buf.len(), 40);
}

/// A header alone, declaring `size` (29 bytes, big-endian).
fn header_declaring(size: [u8; 29]) -> Vec<u8> {
    let mut raw = vec![5, OPERATION_CREATE, STATE_REQUEST];
    raw.extend_from_slice(&size);
    raw
}

fn size_field(value: u64) -> [u8; 29] {
    let mut size = [0u8; 29];
    size[21..].copy_from_slice(&value.to_be_bytes());
    size
}

#[test]
fn oversized_payload_is_refused_from_the_header_alone() {
    let max = 1000;
    let raw = header_declaring(size_field(1001));
    let mut buf = BytesMut::from(&raw[..]);
    let err = decode_request(&mut buf, max).unwrap_err();
    assert_eq!(
        err,
        TcrpError::PayloadTooLarge {
            header: TcrpHeader {
                room_name_size: 5,
                operation: OPERATION_CREATE,
                state: STATE_REQUEST,
                payload_bytes: 1001,
            },
            payload_bytes_max: max,
        }
    );
    assert_eq!(buf.len(), HEADER_BYTES, "an error consumes nothing");
    assert!(err.to_string().contains("1001"));

    // At the limit the body is awaited.
    let raw = header_declaring(size_field(1000));
    let mut buf = BytesMut::from(&raw[..]);
    assert_eq!(decode_request(&mut buf, max), Ok(None));

    // Fewer than 32 bytes: no verdict yet.
    let mut buf = BytesMut::from(&raw[..31]);
    assert_eq!(decode_request(&mut buf, 0), Ok(None));

    let raw = header_declaring(size_field(u64::MAX));
    let mut buf = BytesMut::from(&raw[..]);
    assert!(decode_request(&mut buf, usize::MAX).is_err());
}

#[test]
fn sizes_beyond_u64_are_too_large_whatever_the_limit() {
    for high in 0..21 {
        let mut size = [0u8; 29];
        size[high] = 1;
        let raw = header_declaring(size);
        let mut buf = BytesMut::from(&raw[..]);
        match decode_request(&mut buf, usize::MAX) {
            Err(TcrpError::PayloadTooLarge { header, .. }) => {
                assert_eq!(header.payload_bytes, u64::MAX, "byte {high}");
            }
            other => panic!("byte {high}: {other:?}"),
        }
        let mut buf = BytesMut::from(&raw[..]);
        assert!(decode_answer(&mut buf, usize::MAX).is_err());
    }
    let err = decode_request(&mut BytesMut::from(&header_declaring([0xff; 29])[..]), 10);
    assert!(err.unwrap_err().to_string().contains("beyond u64"));
}

#[test]
fn answer_round_trip_and_split_points() {
    let raw = encode_answer(3, OPERATION_JOIN, STATE_DONE, b"{\"status\": 202}");
    assert_eq!(&raw[..3], &[3, OPERATION_JOIN, STATE_DONE]);
    assert_eq!(raw[31] as usize, raw.len() - HEADER_BYTES);
    for cut in 0..raw.len() {
        let mut buf = BytesMut::from(&raw[..cut]);
        assert_eq!(decode_answer(&mut buf, 1024), Ok(None));
        assert_eq!(buf.len(), cut);
    }
    let mut buf = BytesMut::from(&raw[..]);
    let answer = decode_answer(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(
        answer,
        TcrpAnswer {
            room_chars: 3,
            operation: OPERATION_JOIN,
            state: STATE_DONE,
            json: Bytes::from_static(b"{\"status\": 202}"),
        }
    );
}

#[test]
fn a_room_name_over_255_bytes_cannot_be_encoded() {
    assert_eq!(
        encode_request(OPERATION_CREATE, STATE_REQUEST, &[b'r'; 256], b"x"),
        Err(EncodeError::RoomNameTooLong)
    );
    assert!(encode_request(OPERATION_CREATE, STATE_REQUEST, &[b'r'; 255], b"x").is_ok());
}

// ---- datagrams ----

const TOKEN: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn datagram_round_trip() {
    let raw = encode_datagram("部屋".as_bytes(), TOKEN, "こんにちは".as_bytes()).unwrap();
    assert_eq!(&raw[..2], &[6, 64]);
    let datagram = parse_datagram(&raw).unwrap();
    assert_eq!(datagram.room, "部屋".as_bytes());
    assert_eq!(datagram.token, TOKEN);
    assert_eq!(datagram.message, "こんにちは".as_bytes());

    let raw = encode_datagram(b"", b"", b"").unwrap();
    assert_eq!(raw, [0, 0]);
    let datagram = parse_datagram(&raw).unwrap();
    assert!(datagram.room.is_empty() && datagram.token.is_empty() && datagram.message.is_empty());

    let raw = encode_datagram(&[b'r'; 255], &[b't'; 255], b"hi").unwrap();
    let datagram = parse_datagram(&raw).unwrap();
    assert_eq!((datagram.room.len(), datagram.token.len()), (255, 255));
    assert_eq!(datagram.message, b"hi");
}

#[test]
fn every_truncation_of_a_datagram() {
    let raw = encode_datagram(b"lobby", TOKEN, b"hello").unwrap();
    let message_start = 2 + 5 + 64;
    for cut in 0..raw.len() {
        let result = parse_datagram(&raw[..cut]);
        if cut < message_start {
            assert_eq!(result, Err(DatagramError::Truncated), "cut at {cut}");
        } else {
            // Only the message is short: still a datagram, with less to say.
            let datagram = result.unwrap();
            assert_eq!(datagram.message, &b"hello"[..cut - message_start]);
        }
    }
}

#[test]
fn datagram_size_limit() {
    let message = vec![b'm'; DATAGRAM_BYTES_MAX - 2 - 5 - 64];
    let raw = encode_datagram(b"lobby", TOKEN, &message).unwrap();
    assert_eq!(raw.len(), DATAGRAM_BYTES_MAX);
    assert!(parse_datagram(&raw).is_ok());

    let mut over = raw.clone();
    over.push(b'm');
    assert_eq!(parse_datagram(&over), Err(DatagramError::TooLarge));
    assert_eq!(
        encode_datagram(b"lobby", TOKEN, &over[2 + 5 + 64..]),
        Err(EncodeError::DatagramTooLarge)
    );
    assert_eq!(
        encode_datagram(&[b'r'; 256], TOKEN, b""),
        Err(EncodeError::RoomNameTooLong)
    );
    assert_eq!(
        encode_datagram(b"lobby", &[b't'; 256], b""),
        Err(EncodeError::TokenTooLong)
    );
}

// ---- texts ----

#[test]
fn leave_texts_are_the_originals() {
    assert_eq!(
        leave_text("太郎", "部屋一"),
        "太郎が部屋一から退出しました。"
    );
    assert_eq!(
        host_leave_text("alice", "lobby"),
        "aliceがlobbyから退出しました。\nホストが退出したため、チャットルーム:lobbyを終了します。"
    );
}

// ---- JSON writing: expected bytes are CPython's json.dumps output ----

/// (what, message, json.dumps({"status": 400, "message": message})).
const DUMPS_ANSWERS: &[(&str, &str, &str)] = &[
    (
        "ascii",
        "alice",
        r#"{"status": 400, "message": "alice"}"#,
    ),
    (
        "japanese",
        "太郎",
        r#"{"status": 400, "message": "\u592a\u90ce"}"#,
    ),
    (
        "quotes",
        "say \"hi\"",
        r#"{"status": 400, "message": "say \"hi\""}"#,
    ),
    (
        "backslash",
        "C:\\dir\\",
        r#"{"status": 400, "message": "C:\\dir\\"}"#,
    ),
    (
        "short escapes",
        "\u{a}\u{d}\u{9}\u{8}\u{c}",
        r#"{"status": 400, "message": "\n\r\t\b\f"}"#,
    ),
    (
        "other controls",
        "\u{0}\u{1}\u{2}\u{3}\u{4}\u{5}\u{6}\u{7}\u{b}\u{e}\u{f}\u{10}\u{11}\u{12}\u{13}\u{14}\u{15}\u{16}\u{17}\u{18}\u{19}\u{1a}\u{1b}\u{1c}\u{1d}\u{1e}\u{1f}\u{7f}",
        r#"{"status": 400, "message": "\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\u000b\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f\u007f"}"#,
    ),
    (
        "emoji",
        "😀 ok",
        r#"{"status": 400, "message": "\ud83d\ude00 ok"}"#,
    ),
    (
        "mixed",
        "部屋 <lobby> / 'x' \u{e9}\u{2028}\u{ffff}\u{10ffff}",
        r#"{"status": 400, "message": "\u90e8\u5c4b <lobby> / 'x' \u00e9\u2028\uffff\udbff\udfff"}"#,
    ),
    (
        "empty",
        "",
        r#"{"status": 400, "message": ""}"#,
    ),
];

/// (user name, json.dumps({"user_name": name, "user_address": ("127.0.0.1", 40001)})).
const DUMPS_REQUESTS: &[(&str, &str)] = &[
    (
        "alice",
        r#"{"user_name": "alice", "user_address": ["127.0.0.1", 40001]}"#,
    ),
    (
        "太郎",
        r#"{"user_name": "\u592a\u90ce", "user_address": ["127.0.0.1", 40001]}"#,
    ),
    (
        "a\"b\\c😀",
        r#"{"user_name": "a\"b\\c\ud83d\ude00", "user_address": ["127.0.0.1", 40001]}"#,
    ),
];

#[test]
fn json_writer_matches_json_dumps() {
    for &(what, message, expected) in DUMPS_ANSWERS {
        let written = json::encode_answer(400, message, None);
        assert_eq!(String::from_utf8(written).unwrap(), expected, "{what}");
    }
}

#[test]
fn json_request_encoder_matches_json_dumps() {
    let address: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    for &(name, expected) in DUMPS_REQUESTS {
        let written = json::encode_request(name, address);
        assert_eq!(String::from_utf8(written).unwrap(), expected, "{name}");
    }
}

#[test]
fn json_token_answer_matches_json_dumps() {
    let written = json::encode_answer(202, "x", Some(VECTOR_TOKEN));
    assert_eq!(
        String::from_utf8(written).unwrap(),
        format!(r#"{{"status": 202, "message": "x", "token": "{VECTOR_TOKEN}"}}"#)
    );
}

#[test]
fn json_written_strings_read_back() {
    for &(what, message, expected) in DUMPS_ANSWERS {
        let answer = json::parse_answer(expected).unwrap();
        assert_eq!(answer.message, message, "{what}");
        assert_eq!((answer.status, answer.token), (400, None));
    }
}

// ---- JSON reading ----

fn request(name: &str, address: &str) -> Result<RequestPayload, JsonError> {
    Ok(RequestPayload {
        user_name: name.to_string(),
        user_address: address.parse().unwrap(),
    })
}

#[test]
fn json_parser_accepts_requests_in_any_layout() {
    let cases: &[(&str, Result<RequestPayload, JsonError>)] = &[
        (
            r#"{"user_name": "alice", "user_address": ["127.0.0.1", 40001]}"#,
            request("alice", "127.0.0.1:40001"),
        ),
        (
            " \t\r\n{\"user_address\":[\"10.0.0.2\",1],\"user_name\":\"bob\"} \n",
            request("bob", "10.0.0.2:1"),
        ),
        (
            r#"{ "extra": {"nested": [1, 2.5e3, true, false, null]}, "user_name" : "c" ,
                "user_address" : [ "::1" , 65535 ] , "more": "x" }"#,
            request("c", "[::1]:65535"),
        ),
        (
            r#"{"user_name": "\u592a\u90ce \ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t \u00E9", "user_address": ["0.0.0.0", 9]}"#,
            request("太郎 😀 \"q\" \\ / \u{8}\u{c}\n\r\t é", "0.0.0.0:9"),
        ),
        (
            r#"{"user_name": "first", "user_address": ["1.1.1.1", 1], "user_name": "last"}"#,
            request("last", "1.1.1.1:1"),
        ),
        (
            r#"{"user_name": "v6", "user_address": ["fe80::1", 4000, 0, 3]}"#,
            request("v6", "[fe80::1]:4000"),
        ),
        (
            r#"{"user_name": "", "user_address": ["127.0.0.1", 1]}"#,
            request("", "127.0.0.1:1"),
        ),
        (
            r#"{"user_name": "太郎", "user_address": ["127.0.0.1", 2]}"#,
            request("太郎", "127.0.0.1:2"),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(&json::parse_request(text), expected, "{text}");
    }
}

#[test]
fn json_parser_tells_wrong_shapes_from_non_json() {
    let shapes = [
        r#"["alice", ["127.0.0.1", 1]]"#,
        r#""alice""#,
        "123",
        "null",
        "{}",
        r#"{"user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": 5, "user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": null, "user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": "a"}"#,
        r#"{"user_name": "a", "user_address": "127.0.0.1:1"}"#,
        r#"{"user_name": "a", "user_address": []}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1"]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 1, 2]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 1, 2, "x"]}"#,
        r#"{"user_name": "a", "user_address": [2130706433, 1]}"#,
        r#"{"user_name": "a", "user_address": ["localhost", 1]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.256", 1]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 0]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 65536]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", -1]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 1.5]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 4e4]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 99999999999999999999999]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", "40001"]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", true]}"#,
        r#"{"user_name": "\ud800", "user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": "\udc00x", "user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": "\ud83dx", "user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": "\ud83d\u0041", "user_address": ["127.0.0.1", 1]}"#,
    ];
    for text in shapes {
        assert!(
            matches!(json::parse_request(text), Err(JsonError::Shape(_))),
            "{text}: {:?}",
            json::parse_request(text)
        );
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(matches!(
        json::parse_request(&deep),
        Err(JsonError::Shape(_))
    ));

    let not_json = [
        "alice",
        "太郎",
        "",
        "   ",
        "{",
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 1],}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 1]} x"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 1]}{}"#,
        r#"{'user_name': 'a'}"#,
        r#"{user_name: "a"}"#,
        "NaN",
        "-Infinity",
        "{\"user_name\": \"a\tb\", \"user_address\": [\"127.0.0.1\", 1]}",
        r#"{"user_name": "\x41", "user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": "\u12", "user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": "\u12g4", "user_address": ["127.0.0.1", 1]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 01]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", +1]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 1.]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1", 1e]}"#,
        r#"{"user_name": "a", "user_address": ["127.0.0.1" 1]}"#,
        r#"{"user_name" "a"}"#,
        r#"{"user_name": "a""#,
        r#"{"user_name": "a"#,
        r#"{"user_name": tru}"#,
        // A syntax error after a lone surrogate: not JSON, not a shape problem.
        r#"{"user_name": "\ud800", "user_address": ["127.0.0.1", 1]"#,
        "\u{feff}{}",
    ];
    for text in not_json {
        assert!(
            matches!(json::parse_request(text), Err(JsonError::Syntax { .. })),
            "{text}: {:?}",
            json::parse_request(text)
        );
    }
}

#[test]
fn json_answer_parser_shapes() {
    assert!(json::parse_answer(r#"{"status": "202", "message": "x"}"#).is_err());
    assert!(json::parse_answer(r#"{"status": 202}"#).is_err());
    assert!(json::parse_answer(r#"{"status": 202, "message": "x", "token": 1}"#).is_err());
    assert!(json::parse_answer("[]").is_err());
    assert!(json::parse_answer("{").is_err());
}
