//! WebService driven by several connections: HTTP requests and WebSocket frames (raw bytes,
//! whole client frames, and JSON requests with names from a small set), split arbitrarily,
//! with peers closing, time passing, the handshake deadline, and written notes reported.
//!
//! Invariants: no panic; output only to open connections; a connection's first output is an
//! HTTP answer, and only after a 101 does it get frames; every frame is a whole, unmasked,
//! final server frame, a text frame one JSON object with a `type`; a connection is welcomed
//! at most once; the user count is the number of open connections welcomed.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use bytes::BytesMut;
use fuzz_support::{assert_to_open, Conns, Ops, SLOTS};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::testing::RecordingOutbox;
use switchboard::protocol::web::codec::encode_client;
use switchboard::protocol::web::{WebConfig, WebService};
use switchboard::protocol::{Clock, CloseReason, StreamService};

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: \
    Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const NAMES: [&str; 4] = ["ann", "bob", "", "a b"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Nothing,
    Http,
    Upgraded,
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut service = WebService::new(WebConfig {
        message_bytes_max: 256,
        text_bytes_max: 32,
        messages_per_s_max: 4,
        ..WebConfig::default()
    });
    let mut out = RecordingOutbox::default();
    let mut conns = Conns::default();
    let mut seen = [Seen::Nothing; SLOTS];
    let mut welcomed = [false; SLOTS];
    let mut now_ms = 0u64;
    // `out.notified` entries already checked (they wait there for their note).
    let mut checked = 0;
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 4000));
    while !ops.is_empty() {
        let clock = Clock { now_ms, unix_ms: 0 };
        let cx = clock.with_peer(peer);
        match ops.byte() % 8 {
            0 => {
                let slot = ops.slot();
                let upgrade = !ops.byte().is_multiple_of(4);
                if let Some(id) = conns.accept(slot) {
                    seen[slot] = Seen::Nothing;
                    welcomed[slot] = false;
                    service.on_accept(id, &cx, &mut out);
                    // Mostly a valid upgrade at once, so that frames reach the service;
                    // otherwise the request is whatever the input sends.
                    if upgrade {
                        conns.input[slot].extend_from_slice(UPGRADE);
                        service.on_data(id, &mut conns.input[slot], &cx, &mut out);
                    }
                }
            }
            1 => {
                let slot = ops.slot();
                if let Some(id) = conns.close(slot) {
                    service.on_close(id, CloseReason::PeerClosed, &cx, &mut out);
                }
            }
            2 => {
                let slot = ops.slot();
                if conns.is_open(slot) && !welcomed[slot] {
                    service.on_handshake_timeout(conns.id(slot), 10_000, &cx, &mut out);
                }
            }
            3 => now_ms += u64::from(ops.u16()),
            4 => {
                if let Some((to, _, note)) = out.notified.pop() {
                    checked = checked.min(out.notified.len());
                    let acked = ops.byte().is_multiple_of(2);
                    service.on_notify(to, note, acked, &clock, &mut out);
                }
            }
            5 => {
                // A JSON request as one whole frame.
                let slot = ops.slot();
                let name = NAMES[ops.slot()];
                let text = String::from_utf8_lossy(ops.chunk()).into_owned();
                let request = match ops.byte() % 4 {
                    0 => serde_json::json!({"type": "signin", "name": name}),
                    1 => serde_json::json!({"type": "say", "text": text}),
                    2 => serde_json::json!({"type": "direct", "to": name, "text": text, "id": 1}),
                    _ => serde_json::json!({"type": "ping"}),
                };
                let frame = encode_client(true, 1, request.to_string().as_bytes(), [1, 2, 3, 4]);
                feed(&mut service, &mut conns, slot, &frame, &cx, &mut out);
            }
            6 => {
                // Any payload as one whole frame of the opcode and FIN the input picks.
                let slot = ops.slot();
                let head = ops.byte();
                let payload = ops.chunk();
                let frame = encode_client(head & 0x80 != 0, head & 0x0F, payload, [9, 8, 7, 6]);
                feed(&mut service, &mut conns, slot, &frame, &cx, &mut out);
            }
            _ => {
                let slot = ops.slot();
                let bytes = ops.chunk();
                feed(&mut service, &mut conns, slot, bytes, &cx, &mut out);
            }
        }
        loop {
            assert_to_open(&conns, out.sent.iter().map(|(to, _)| to));
            assert_to_open(&conns, out.notified[checked..].iter().map(|(to, _, _)| to));
            // Direct messages go out with notes: they are frames too.
            let sent: Vec<_> = out
                .sent
                .drain(..)
                .chain(
                    out.notified[checked..]
                        .iter()
                        .map(|(to, bytes, _)| (*to, bytes.clone())),
                )
                .collect();
            for (to, bytes) in sent {
                let Some(slot) = conns.slot_of(to) else {
                    continue;
                };
                if bytes.starts_with(b"HTTP/1.1 ") {
                    assert_eq!(seen[slot], Seen::Nothing, "a second HTTP answer");
                    seen[slot] = if bytes.starts_with(b"HTTP/1.1 101 ") {
                        Seen::Upgraded
                    } else {
                        Seen::Http
                    };
                    continue;
                }
                assert_eq!(seen[slot], Seen::Upgraded, "a frame before the upgrade");
                check_frame(&bytes, &mut welcomed[slot]);
            }
            let gone = conns.take_closed(&mut out.closed);
            for &id in &gone {
                service.on_close(id, CloseReason::ProtocolError, &cx, &mut out);
            }
            // Notes to connections gone are reported unwritten, as the reactor reports them.
            let (live, dead): (Vec<_>, Vec<_>) = out
                .notified
                .drain(..)
                .partition(|(to, _, _)| conns.slot_of(*to).is_some());
            out.notified = live;
            // Every entry left was checked above (nothing since queues with a note).
            checked = out.notified.len();
            for &(to, _, note) in &dead {
                service.on_notify(to, note, false, &clock, &mut out);
            }
            if gone.is_empty() && dead.is_empty() {
                break;
            }
        }
        let users = (0..SLOTS)
            .filter(|&s| conns.is_open(s) && welcomed[s])
            .count();
        assert_eq!(service.users(), users);
    }
});

fn feed(
    service: &mut WebService,
    conns: &mut Conns,
    slot: usize,
    bytes: &[u8],
    cx: &switchboard::protocol::Context,
    out: &mut RecordingOutbox,
) {
    if conns.is_open(slot) {
        let id = conns.id(slot);
        conns.input[slot].extend_from_slice(bytes);
        service.on_data(id, &mut conns.input[slot], cx, out);
    }
}

/// One whole server frame: final, unmasked, its length exact; a text frame is one JSON object
/// with a `type`, and a welcome comes once.
fn check_frame(bytes: &[u8], welcomed: &mut bool) {
    assert!(bytes.len() >= 2);
    assert_eq!(bytes[0] & 0xF0, 0x80, "final, no reserved bits");
    assert_eq!(bytes[1] & 0x80, 0, "not masked");
    let (len, at) = match bytes[1] & 0x7F {
        126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(be) as usize, 10)
        }
        short => (usize::from(short), 2),
    };
    assert_eq!(bytes.len(), at + len, "one whole frame per send");
    let payload = BytesMut::from(&bytes[at..]);
    match bytes[0] & 0x0F {
        1 => {
            let value: serde_json::Value =
                serde_json::from_slice(&payload).expect("a text frame is JSON");
            let kind = value["type"].as_str().expect("with a type");
            if kind == "welcome" {
                assert!(!*welcomed, "welcomed twice");
                *welcomed = true;
            }
        }
        8 => assert!(payload.len() >= 2 && payload.len() <= 125),
        10 => assert!(payload.len() <= 125),
        other => panic!("opcode {other} from the server"),
    }
}
