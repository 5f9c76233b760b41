//! The WebSocket frame codec, the HTTP handshake and the JSON messages, without sockets.

use bytes::BytesMut;

use super::codec::*;
use super::http::{self, Request};
use super::json::{self, ClientMessage};
use crate::protocol::testing::TestRng;

const MAX: usize = 4096;

fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_client(fin, opcode, payload, [0x37, 0xFA, 0x21, 0x3D])
}

/// Every message `reader` yields from `bytes` handed over in `pieces` (split points).
fn read_in_pieces(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Message>, Violation> {
    let mut reader = Reader::default();
    let mut input = BytesMut::new();
    let mut messages = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        input.extend_from_slice(&bytes[from..cut]);
        from = cut;
        while let Some(message) = reader.next(&mut input, MAX)? {
            messages.push(message);
        }
    }
    assert!(input.is_empty(), "{} bytes left", input.len());
    Ok(messages)
}

#[test]
fn rfc_6455_examples_decode() {
    // Section 5.7: a masked "Hello".
    let mut input = BytesMut::from(
        &[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ][..],
    );
    let frame = decode_frame(&mut input, MAX).unwrap().unwrap();
    assert_eq!((frame.fin, frame.opcode), (true, OP_TEXT));
    assert_eq!(&frame.payload[..], b"Hello");
    assert!(input.is_empty());
    // And the server's unmasked "Hello".
    assert_eq!(
        &text(b"Hello")[..],
        &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
    );
}

#[test]
fn lengths_of_every_size_class_round_trip() {
    for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut input = BytesMut::from(&masked(true, OP_BINARY, &payload)[..]);
        let frame = decode_frame(&mut input, 1 << 20).unwrap().unwrap();
        assert_eq!(&frame.payload[..], &payload[..], "{len}");
        // The server's encoding of the same length, read back by hand.
        let out = encode(OP_TEXT, &payload);
        let header = match len {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        };
        assert_eq!(out.len(), header + len);
        assert_eq!(&out[header..], &payload[..]);
    }
}

#[test]
fn a_stream_of_messages_reads_the_same_at_every_split_point_and_byte_by_byte() {
    let mut stream = Vec::new();
    stream.extend(masked(true, OP_TEXT, b"{\"type\":\"ping\"}"));
    stream.extend(masked(false, OP_TEXT, "fragm\u{e9}".as_bytes()));
    stream.extend(masked(true, OP_PING, b"p"));
    stream.extend(masked(false, OP_CONTINUATION, b"ented "));
    stream.extend(masked(true, OP_CONTINUATION, &[b'x'; 300]));
    stream.extend(masked(true, OP_PONG, b""));
    stream.extend(masked(true, OP_CLOSE, &1000u16.to_be_bytes()));
    let whole = read_in_pieces(&stream, &[]).unwrap();
    let mut fragmented = "fragm\u{e9}ented ".as_bytes().to_vec();
    fragmented.extend([b'x'; 300]);
    assert_eq!(
        whole,
        vec![
            Message::Text(bytes::Bytes::from_static(b"{\"type\":\"ping\"}")),
            Message::Ping(bytes::Bytes::from_static(b"p")),
            Message::Text(fragmented.into()),
            Message::Pong,
            Message::Close { code: Some(1000) },
        ]
    );
    for cut in 0..=stream.len() {
        assert_eq!(
            read_in_pieces(&stream, &[cut]).unwrap(),
            whole,
            "cut at {cut}"
        );
    }
    let every: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(read_in_pieces(&stream, &every).unwrap(), whole);
}

#[test]
fn a_character_split_between_fragments_is_valid_utf8_once_whole() {
    let e_acute = "\u{e9}".as_bytes();
    let mut stream = masked(false, OP_TEXT, &e_acute[..1]);
    stream.extend(masked(true, OP_CONTINUATION, &e_acute[1..]));
    assert_eq!(
        read_in_pieces(&stream, &[]).unwrap(),
        vec![Message::Text(bytes::Bytes::from_static(
            "\u{e9}".as_bytes()
        ))]
    );
}

#[test]
fn malformed_frames_earn_their_close_codes() {
    let long_ping = masked(true, OP_PING, &[0; 126]);
    let huge_length = {
        let mut frame = vec![0x81, 0xFF];
        frame.extend_from_slice(&u64::MAX.to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", vec![0x81, 0x01, b'a'], CLOSE_PROTOCOL_ERROR),
        ("rsv1", vec![0xC1, 0x80, 0, 0, 0, 0], CLOSE_PROTOCOL_ERROR),
        ("opcode 3", masked(true, 3, b""), CLOSE_PROTOCOL_ERROR),
        ("opcode 11", masked(true, 11, b""), CLOSE_PROTOCOL_ERROR),
        ("binary", masked(true, OP_BINARY, b"x"), CLOSE_UNSUPPORTED),
        (
            "fragmented ping",
            masked(false, OP_PING, b""),
            CLOSE_PROTOCOL_ERROR,
        ),
        ("long ping", long_ping, CLOSE_PROTOCOL_ERROR),
        (
            "lone continuation",
            masked(true, OP_CONTINUATION, b"x"),
            CLOSE_PROTOCOL_ERROR,
        ),
        (
            "not UTF-8",
            masked(true, OP_TEXT, &[0xC3]),
            CLOSE_INVALID_DATA,
        ),
        (
            "close of one byte",
            masked(true, OP_CLOSE, &[3]),
            CLOSE_PROTOCOL_ERROR,
        ),
        (
            "close reason not UTF-8",
            masked(true, OP_CLOSE, &[3, 232, 0xFF]),
            CLOSE_INVALID_DATA,
        ),
        (
            "frame too large",
            masked(true, OP_TEXT, &[b'a'; MAX + 1]),
            CLOSE_TOO_BIG,
        ),
        ("64-bit length", huge_length, CLOSE_PROTOCOL_ERROR),
        (
            "new message inside one",
            {
                let mut s = masked(false, OP_TEXT, b"a");
                s.extend(masked(true, OP_TEXT, b"b"));
                s
            },
            CLOSE_PROTOCOL_ERROR,
        ),
        (
            "message too large",
            {
                let mut s = masked(false, OP_TEXT, &[b'a'; MAX]);
                s.extend(masked(true, OP_CONTINUATION, b"b"));
                s
            },
            CLOSE_TOO_BIG,
        ),
    ];
    for (what, bytes, code) in cases {
        let got = read_in_pieces(&bytes, &[]).map(|_| ()).unwrap_err();
        assert_eq!(got.code, code, "{what}");
    }
}

#[test]
fn an_oversized_frame_is_refused_from_its_header_before_the_payload_arrives() {
    let frame = masked(true, OP_TEXT, &[b'a'; 70000]);
    let mut input = BytesMut::from(&frame[..14]);
    assert_eq!(decode_frame(&mut input, MAX), Err(FrameError::TooLarge));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = TestRng(22);
    for _ in 0..2000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let mut reader = Reader::default();
        let mut input = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = reader.next(&mut input, 32) {}
    }
}

#[test]
fn close_frames_are_cut_to_fit_on_a_character_boundary() {
    let reason = "\u{e9}".repeat(100);
    let frame = close(CLOSE_POLICY, &reason);
    assert!(frame.len() <= 2 + CONTROL_PAYLOAD_BYTES_MAX);
    assert!(std::str::from_utf8(&frame[4..]).is_ok());
    assert_eq!(&frame[2..4], &CLOSE_POLICY.to_be_bytes());
}

// ---- HTTP ----

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: chat:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, \
         Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn status(result: Result<Option<(Request, usize)>, http::Refused>) -> u16 {
    match result {
        Ok(Some((Request::Upgrade { .. }, _))) => 101,
        Ok(Some((Request::File { .. }, _))) => 200,
        Ok(None) => 0,
        Err(refused) => refused.status,
    }
}

#[test]
fn the_accept_key_is_rfc_6455s_example() {
    assert_eq!(
        http::accept_key(KEY.as_bytes()),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let request = upgrade("");
    let Ok(Some((Request::Upgrade { answer }, used))) = http::parse(request.as_bytes(), None)
    else {
        panic!("not an upgrade");
    };
    assert_eq!(used, request.len());
    let answer = String::from_utf8(answer.to_vec()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
}

#[test]
fn the_handshake_reads_the_same_at_every_split_point() {
    let request = upgrade("Origin: http://chat:8080\r\n");
    for cut in 0..request.len() {
        assert_eq!(
            status(http::parse(&request.as_bytes()[..cut], None)),
            0,
            "{cut}"
        );
    }
    assert_eq!(status(http::parse(request.as_bytes(), None)), 101);
}

#[test]
fn bad_requests_get_their_statuses() {
    let origins = vec!["https://ok.example".to_string()];
    let cases: Vec<(String, Option<&[String]>, u16)> = vec![
        (upgrade("Origin: http://evil\r\n"), None, 403),
        (upgrade("Origin: http://chat:8080\r\n"), None, 101),
        (upgrade("Origin: HTTP://CHAT:8080\r\n"), None, 101),
        // The page served over TLS (--web-tls-port, or a TLS tunnel keeping the Host).
        (upgrade("Origin: https://chat:8080\r\n"), None, 101),
        (upgrade("Origin: https://evil:8080\r\n"), None, 403),
        (upgrade("Origin: ftp://chat:8080\r\n"), None, 403),
        (upgrade("Origin: http://chat:8080\r\n"), Some(&origins), 403),
        (
            upgrade("Origin: https://ok.example\r\n"),
            Some(&origins),
            101,
        ),
        (upgrade("").replace("Version: 13", "Version: 8"), None, 426),
        (upgrade("").replace(KEY, "c2hvcnQ="), None, 400),
        (
            upgrade("").replace("Upgrade: websocket", "Upgrade: h2c"),
            None,
            400,
        ),
        (
            upgrade("").replace("keep-alive, Upgrade", "keep-alive"),
            None,
            400,
        ),
        (upgrade("").replace("GET", "POST"), None, 405),
        (upgrade("").replace("HTTP/1.1", "HTTP/1.0"), None, 505),
        (upgrade("").replace("/ws", "/other"), None, 404),
        ("GET / HTTP/1.1\r\n\r\n".into(), None, 200),
        ("HEAD /app.css HTTP/1.1\r\n\r\n".into(), None, 200),
        ("GET /?x=1 HTTP/1.1\r\n\r\n".into(), None, 200),
        ("GET / HTTP/1.1\r\nbad header\r\n\r\n".into(), None, 400),
        ("\0\0\0\r\n\r\n".into(), None, 400),
        (
            format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(http::HEAD_BYTES_MAX)),
            None,
            400,
        ),
    ];
    for (request, origins, expected) in cases {
        assert_eq!(
            status(http::parse(request.as_bytes(), origins)),
            expected,
            "{request:?}"
        );
    }
}

#[test]
fn the_page_is_whole_and_never_writes_markup_from_data() {
    assert!(http::PAGE_HTML.contains("<script src=\"/app.js\""));
    for id in [
        "name", "signin", "status", "messages", "to", "text", "send", "present",
    ] {
        assert!(http::PAGE_HTML.contains(&format!("id=\"{id}\"")), "#{id}");
    }
    assert!(!http::PAGE_JS.contains("innerHTML"));
    assert!(!http::PAGE_JS.contains("insertAdjacentHTML"));
    assert!(
        !http::PAGE_HTML.contains("<script>"),
        "no inline script: the CSP forbids it"
    );
    assert!(!http::PAGE_HTML.contains("http"), "no external resource");
}

// ---- JSON ----

#[test]
fn client_messages_parse_and_bad_ones_keep_their_id() {
    assert_eq!(
        json::parse(br#"{"type":"direct","to":"b","text":"t","id":7}"#),
        Ok(ClientMessage::Direct {
            to: "b".into(),
            text: "t".into(),
            id: Some(7)
        })
    );
    assert_eq!(
        json::parse(br#"{"type":"say","text":"\u00e9\n"}"#),
        Ok(ClientMessage::Say {
            text: "\u{e9}\n".into()
        })
    );
    assert_eq!(json::parse(br#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
    assert_eq!(
        json::parse(br#"{"type":"direct","to":"b","id":9}"#),
        Err(json::BadRequest { id: Some(9) })
    );
    for bad in [
        &br#"{"type":"fly"}"#[..],
        b"[]",
        b"{",
        b"",
        br#"{"type":"say","text":5}"#,
        br#"{"type":"direct","to":"b","text":"t","id":-1}"#,
        br#"{"type":"direct","to":"b","text":"t","id":1.5}"#,
        br#"{"type":"direct","to":"b","text":"t","id":9007199254740993}"#,
    ] {
        assert!(
            json::parse(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn server_messages_escape_what_they_carry() {
    let frame = json::lobby(crate::protocol::ProtocolKind::Room, b"r\"x", b"<b>\n\xFF");
    // One unmasked text frame whose payload is one JSON object.
    assert_eq!(frame[0], 0x81);
    let value: serde_json::Value = serde_json::from_slice(&frame[2..]).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"type":"lobby","from":"r\"x","protocol":"room","text":"<b>\n\u{fffd}"})
    );
    let sent: serde_json::Value =
        serde_json::from_slice(&json::sent(None, "delivered")[2..]).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"type":"sent","status":"delivered"})
    );
}
