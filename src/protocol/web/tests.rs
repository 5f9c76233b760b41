//! WEB's service without sockets: fabricated bytes and `now_ms` values, a recording outbox
//! (no hub: the rules of WEB among its own users; the switchboard's are in tests/web.rs and
//! the registry's tests).

use std::net::{Ipv4Addr, SocketAddr};

use bytes::BytesMut;
use serde_json::{json, Value};

use super::codec::{self, encode_client};
use super::*;
use crate::protocol::testing::RecordingOutbox;
use crate::protocol::{Clock, CloseMode, CloseReason, ConnId, StreamService};

fn conn(slot: u32) -> ConnId {
    ConnId::new(slot, 1)
}

struct Harness {
    service: WebService,
    out: RecordingOutbox,
    now_ms: u64,
}

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: \
    Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

impl Harness {
    fn new(config: WebConfig) -> Self {
        Harness {
            service: WebService::new(config),
            out: RecordingOutbox::default(),
            now_ms: 0,
        }
    }

    fn cx(&self) -> crate::protocol::Context {
        Clock {
            now_ms: self.now_ms,
            unix_ms: 0,
        }
        .with_peer(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)))
    }

    fn data(&mut self, id: ConnId, bytes: &[u8]) {
        let cx = self.cx();
        let mut input = BytesMut::from(bytes);
        self.service.on_data(id, &mut input, &cx, &mut self.out);
    }

    fn open(&mut self, id: ConnId) {
        let cx = self.cx();
        self.service.on_accept(id, &cx, &mut self.out);
        self.data(id, UPGRADE);
        let answer = self.out.sent_to(id);
        assert!(answer[0].starts_with(b"HTTP/1.1 101 "));
        self.out.clear();
    }

    fn send(&mut self, id: ConnId, value: Value) {
        let frame = encode_client(
            true,
            codec::OP_TEXT,
            value.to_string().as_bytes(),
            [1, 2, 3, 4],
        );
        self.data(id, &frame);
    }

    fn sign_in(&mut self, id: ConnId, name: &str) {
        self.open(id);
        self.send(id, json!({"type": "signin", "name": name}));
        assert_eq!(self.messages(id)[0]["type"], "welcome");
        assert!(self.out.identified.contains(&id));
        self.out.clear();
    }

    /// The JSON messages sent to `id`.
    fn messages(&self, id: ConnId) -> Vec<Value> {
        self.out
            .sent_to(id)
            .iter()
            .map(|frame| {
                assert_eq!(frame[0], 0x81, "a whole text frame");
                let at = if frame[1] == 126 { 4 } else { 2 };
                serde_json::from_slice(&frame[at..]).unwrap()
            })
            .collect()
    }
}

#[test]
fn users_sign_in_hear_each_other_and_leave() {
    let mut h = Harness::new(WebConfig::default());
    h.sign_in(conn(1), "ann");
    h.open(conn(2));
    h.send(conn(2), json!({"type": "signin", "name": "bob"}));
    assert_eq!(
        h.messages(conn(2)),
        [json!({"type": "welcome", "name": "bob", "present": [
            {"name": "ann", "protocol": "web"}, {"name": "bob", "protocol": "web"}]})]
    );
    assert_eq!(
        h.messages(conn(1)),
        [json!({"type": "joined", "name": "bob", "protocol": "web"})]
    );
    h.out.clear();
    h.send(conn(2), json!({"type": "say", "text": "hi"}));
    let said = json!({"type": "lobby", "from": "bob", "protocol": "web", "text": "hi"});
    assert_eq!(h.messages(conn(1)), std::slice::from_ref(&said));
    assert_eq!(h.messages(conn(2)), [said]);
    // One frame, shared: the same bytes for both.
    assert_eq!(
        h.out.sent_to(conn(1))[0].as_ptr(),
        h.out.sent_to(conn(2))[0].as_ptr()
    );
    h.out.clear();
    let cx = h.cx();
    h.service
        .on_close(conn(2), CloseReason::PeerClosed, &cx, &mut h.out);
    assert_eq!(
        h.messages(conn(1)),
        [json!({"type": "left", "name": "bob", "protocol": "web"})]
    );
    assert_eq!(h.service.users(), 1);
}

#[test]
fn names_and_texts_are_checked_and_the_connection_stays() {
    let mut h = Harness::new(WebConfig {
        text_bytes_max: 5,
        ..WebConfig::default()
    });
    h.sign_in(conn(1), "ann");
    h.open(conn(2));
    h.send(conn(2), json!({"type": "say", "text": "early"}));
    for name in ["ann", "", "a b", "\u{430}nn", &"x".repeat(33)] {
        h.send(conn(2), json!({"type": "signin", "name": name}));
    }
    let reasons: Vec<Value> = h.messages(conn(2));
    assert_eq!(
        reasons,
        [
            json!({"type": "error", "reason": "not-signed-in"}),
            json!({"type": "refused", "reason": "name-taken"}),
            json!({"type": "refused", "reason": "invalid-name"}),
            json!({"type": "refused", "reason": "invalid-name"}),
            json!({"type": "refused", "reason": "invalid-name"}),
            json!({"type": "refused", "reason": "too-long"}),
        ]
    );
    h.out.clear();
    h.send(conn(1), json!({"type": "say", "text": "toolong"}));
    h.send(conn(1), json!({"type": "say", "text": "a\u{7}"}));
    h.send(
        conn(1),
        json!({"type": "direct", "to": "ann", "text": "me", "id": 3}),
    );
    h.send(conn(1), json!({"type": "signin", "name": "again"}));
    assert_eq!(
        h.messages(conn(1)),
        [
            json!({"type": "error", "reason": "too-large"}),
            json!({"type": "error", "reason": "invalid-text"}),
            json!({"type": "error", "id": 3, "reason": "to-self"}),
            json!({"type": "refused", "reason": "already-signed-in"}),
        ]
    );
    assert!(h.out.closed.is_empty());
}

#[test]
fn a_user_over_its_message_rate_is_refused_until_the_rate_allows_again() {
    let mut h = Harness::new(WebConfig {
        messages_per_s_max: 2,
        ..WebConfig::default()
    });
    h.sign_in(conn(1), "ann");
    for _ in 0..3 {
        h.send(conn(1), json!({"type": "say", "text": "x"}));
    }
    let reasons: Vec<_> = h
        .messages(conn(1))
        .iter()
        .map(|m| m["type"].clone())
        .collect();
    assert_eq!(reasons, ["lobby", "lobby", "error"]);
    assert_eq!(h.messages(conn(1))[2]["reason"], "rate-limited");
    h.out.clear();
    h.now_ms = 499;
    h.send(conn(1), json!({"type": "say", "text": "x"}));
    assert_eq!(h.messages(conn(1))[0]["reason"], "rate-limited");
    h.out.clear();
    h.now_ms = 1_500;
    h.send(conn(1), json!({"type": "say", "text": "x"}));
    assert_eq!(h.messages(conn(1))[0]["type"], "lobby");
}

#[test]
fn web_to_web_direct_is_confirmed_once_written_or_reported_lost() {
    let mut h = Harness::new(WebConfig::default());
    h.sign_in(conn(1), "ann");
    h.sign_in(conn(2), "bob");
    h.send(
        conn(1),
        json!({"type": "direct", "to": "bob", "text": "hi", "id": 5}),
    );
    let (to, bytes, note) = h.out.notified[0].clone();
    assert_eq!(to, conn(2));
    let delivered: Value = serde_json::from_slice(&bytes[2..]).unwrap();
    assert_eq!(
        delivered,
        json!({"type": "direct", "from": "ann", "protocol": "web", "text": "hi"})
    );
    assert!(
        h.messages(conn(1)).is_empty(),
        "nothing before it is written"
    );
    let clock = h.cx().clock();
    h.service.on_notify(conn(2), note, true, &clock, &mut h.out);
    assert_eq!(
        h.messages(conn(1)),
        [json!({"type": "sent", "id": 5, "status": "delivered"})]
    );
    h.out.clear();
    h.send(
        conn(1),
        json!({"type": "direct", "to": "bob", "text": "again", "id": 6}),
    );
    let note = h.out.notified[0].2;
    h.service
        .on_notify(conn(2), note, false, &clock, &mut h.out);
    assert_eq!(
        h.messages(conn(1)),
        [json!({"type": "error", "id": 6, "reason": "not-delivered"})]
    );
    // Without a hub, a name no web user holds is unknown.
    h.out.clear();
    h.send(
        conn(1),
        json!({"type": "direct", "to": "cat", "text": "x", "id": 7}),
    );
    assert_eq!(h.messages(conn(1))[0]["reason"], "unknown-addressee");
}

#[test]
fn not_signing_in_in_time_closes_with_1008_and_a_page_fetch_is_answered_and_closed() {
    let mut h = Harness::new(WebConfig::default());
    h.open(conn(1));
    let cx = h.cx();
    assert!(h.service.reactor_handshake_deadline());
    h.service
        .on_handshake_timeout(conn(1), 10_000, &cx, &mut h.out);
    let frames = h.out.sent_to(conn(1));
    assert_eq!(
        &frames[0][..4],
        &[0x88, frames[0].len() as u8 - 2, 0x03, 0xF0]
    );
    assert_eq!(
        h.out.closed,
        [(
            conn(1),
            CloseReason::HandshakeTimeout,
            CloseMode::AfterFlush
        )]
    );

    h.out.clear();
    h.service.on_accept(conn(2), &cx, &mut h.out);
    h.data(conn(2), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(h.out.sent_to(conn(2))[0].starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(
        h.out.closed,
        [(conn(2), CloseReason::Done, CloseMode::AfterFlush)]
    );
}

#[test]
fn a_close_frame_is_answered_with_its_code_and_bad_frames_close_with_theirs() {
    let mut h = Harness::new(WebConfig::default());
    h.open(conn(1));
    h.data(
        conn(1),
        &encode_client(true, codec::OP_CLOSE, &1001u16.to_be_bytes(), [9, 9, 9, 9]),
    );
    assert_eq!(&h.out.sent_to(conn(1))[0][..], &codec::close(1001, "")[..]);
    assert_eq!(h.out.closed[0].1, CloseReason::PeerClosed);
    // Input after the close is ignored.
    h.out.clear();
    h.send(conn(1), json!({"type": "ping"}));
    assert!(h.out.sent.is_empty());

    h.open(conn(2));
    h.data(
        conn(2),
        &encode_client(true, codec::OP_BINARY, b"x", [1, 1, 1, 1]),
    );
    assert_eq!(&h.out.sent_to(conn(2))[0][2..4], &1003u16.to_be_bytes());
    assert_eq!(
        h.out.closed[0],
        (conn(2), CloseReason::ProtocolError, CloseMode::AfterFlush)
    );
    assert_eq!(h.out.rejected, 1);
}
