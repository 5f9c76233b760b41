//! OCM logic without sockets: fabricated bytes, addresses, time and tokens.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};

use super::codec::tests::{answer_vector, request_rows};
use super::codec::{self, OPERATION_CREATE, OPERATION_JOIN, STATE_REQUEST};
use super::json;
use super::*;
use crate::protocol::testing::TestRng as Rng;
use crate::protocol::testing::{RecordingDatagrams, RecordingOutbox};
use crate::protocol::{CloseMode, CloseReason, ConnId, DatagramDrop};

const IDLE_MS: u64 = 60_000;
const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// Tokens 00..01, 00..02, ...: deterministic.
fn counting_tokens() -> TokenSource {
    let mut next = 0u16;
    Box::new(move |bytes: &mut [u8; 32]| {
        next += 1;
        *bytes = [0; 32];
        bytes[30..].copy_from_slice(&next.to_be_bytes());
        true
    })
}

fn token(n: u16) -> String {
    format!("{n:064x}")
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn udp(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(last), port)
}

fn config() -> OcmConfig {
    OcmConfig {
        tcrp_payload_bytes_max: 1024,
        room_name_bytes_max: 32,
        user_name_bytes_max: 16,
        tcrp_request_timeout_ms: REQUEST_TIMEOUT_MS,
        idle_timeout_ms: IDLE_MS,
        send_failures_max: 3,
        rooms_max: 4,
        rooms_per_ip_max: 0,
        room_silent_timeout_ms: 0,
        room_members_max: 3,
        sends_per_s_max: 0,
        sends_per_source_per_s_max: 0,
        ack_state1: false,
        timer_tick_ms: 10,
    }
}

fn payload(name: &str, address: SocketAddr) -> Vec<u8> {
    json::encode_request(name, address)
}

/// `name`'s whole request for `operation` on `room`, chatting from 127.0.0.`last`:`port`.
fn request_for(operation: u8, room: &str, name: &str, last: u8, port: u16) -> Bytes {
    let payload = payload(name, udp(last, port));
    codec::encode_request(operation, STATE_REQUEST, room.as_bytes(), &payload).unwrap()
}

fn answer(room_chars: u8, operation: u8, state: u8, status: u16, message: &str) -> Bytes {
    codec::encode_answer(
        room_chars,
        operation,
        state,
        &json::encode_answer(status, message, None),
    )
}

fn failed(room_chars: u8, operation: u8) -> Bytes {
    answer(
        room_chars,
        operation,
        codec::STATE_ERROR,
        codec::STATUS_FAILED,
        codec::MESSAGE_FAILED,
    )
}

struct Harness {
    service: OcmService,
    out: RecordingOutbox,
    udp: RecordingDatagrams,
    now_ms: u64,
    next_slot: u32,
}

impl Harness {
    fn new() -> Self {
        Self::with(config(), counting_tokens())
    }

    fn configured(config: OcmConfig) -> Self {
        Self::with(config, counting_tokens())
    }

    fn with(config: OcmConfig, tokens: TokenSource) -> Self {
        Harness {
            service: OcmService::new(config, tokens, 0),
            out: RecordingOutbox::default(),
            udp: RecordingDatagrams::default(),
            now_ms: 0,
            next_slot: 0,
        }
    }

    fn accept(&mut self, peer_ip: IpAddr) -> ConnId {
        self.next_slot += 1;
        let id = ConnId::new(self.next_slot, 1);
        self.service.on_accept(id, peer_ip, self.now_ms);
        id
    }

    fn data(&mut self, id: ConnId, bytes: &[u8]) {
        let mut input = BytesMut::from(bytes);
        self.service
            .on_data(id, &mut input, self.now_ms, &mut self.out);
        assert!(input.is_empty() || self.out.closed.is_empty());
    }

    /// One connection, one whole request; returns what was sent to it, after checking it was
    /// closed once answered.
    fn request_raw(&mut self, peer_ip: IpAddr, raw: &[u8]) -> Vec<Bytes> {
        let id = self.accept(peer_ip);
        self.data(id, raw);
        assert_eq!(
            self.closed(id),
            [(CloseReason::Done, CloseMode::AfterFlush)],
            "closed once answered"
        );
        self.service.on_close(id);
        self.out.sent_to(id)
    }

    fn request(&mut self, peer_ip: IpAddr, operation: u8, room: &str, payload: &[u8]) -> Bytes {
        let raw = codec::encode_request(operation, STATE_REQUEST, room.as_bytes(), payload);
        let sent = self.request_raw(peer_ip, &raw.unwrap());
        assert_eq!(sent.len(), 1, "exactly one answer");
        sent[0].clone()
    }

    fn closed(&self, id: ConnId) -> Vec<(CloseReason, CloseMode)> {
        self.out
            .closed
            .iter()
            .filter(|(to, _, _)| *to == id)
            .map(|&(_, reason, mode)| (reason, mode))
            .collect()
    }

    /// Creates `room` for `name` at 127.0.0.`last`, UDP port `port`; returns the token.
    fn create(&mut self, room: &str, name: &str, last: u8, port: u16) -> String {
        self.enter(OPERATION_CREATE, room, name, last, port)
    }

    fn join(&mut self, room: &str, name: &str, last: u8, port: u16) -> String {
        self.enter(OPERATION_JOIN, room, name, last, port)
    }

    /// `name` at 127.0.0.`last` asks `operation` on `room`, chatting from UDP `port`; returns
    /// the one answer.
    fn ask(&mut self, operation: u8, room: &str, name: &str, last: u8, port: u16) -> Bytes {
        self.request(ip(last), operation, room, &payload(name, udp(last, port)))
    }

    fn enter(&mut self, operation: u8, room: &str, name: &str, last: u8, port: u16) -> String {
        let sent = self.ask(operation, room, name, last, port);
        let mut buf = BytesMut::from(&sent[..]);
        let answer = codec::decode_answer(&mut buf, 4096).unwrap().unwrap();
        assert_eq!(answer.state, codec::STATE_DONE, "{name} enters {room}");
        let parsed = json::parse_answer(std::str::from_utf8(&answer.json).unwrap()).unwrap();
        parsed.token.unwrap()
    }

    fn say(&mut self, from: SocketAddr, room: &str, token: &str, message: &str) {
        let datagram =
            codec::encode_datagram(room.as_bytes(), token.as_bytes(), message.as_bytes()).unwrap();
        self.service
            .on_datagram(from, &datagram, self.now_ms, &mut self.udp);
    }

    fn texts_to(&self, to: SocketAddr) -> Vec<String> {
        self.udp
            .sent_to(to)
            .iter()
            .map(|bytes| String::from_utf8(bytes.to_vec()).unwrap())
            .collect()
    }

    fn advance_to(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.service.on_timers(now_ms, &mut self.out, &mut self.udp);
    }

    /// alice hosts "lobby" from 127.0.0.1:40001, bob (.2:40002) and carol (.3:40003) join.
    fn lobby(&mut self) -> [String; 3] {
        let alice = self.create("lobby", "alice", 1, 40001);
        let bob = self.join("lobby", "bob", 2, 40002);
        let carol = self.join("lobby", "carol", 3, 40003);
        [alice, bob, carol]
    }
}

const ALICE: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 40001);
const BOB: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)), 40002);
const CAROL: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3)), 40003);

// ---- TCRP answers, byte for byte ----

#[test]
fn create_answers_the_success_vector_and_the_creator_hosts() {
    let mut h = Harness::new();
    let sent = h.ask(OPERATION_CREATE, "lobby", "alice", 1, 40001);
    assert_eq!(&sent[..], answer_vector("success-create", &token(1)));
    assert_eq!(h.out.frames_in, 1);
    assert_eq!(h.out.rejected, 0);
    assert_eq!((h.service.rooms(), h.service.members()), (1, 1));
}

#[test]
fn join_answers_the_success_vector_with_its_own_token() {
    let mut h = Harness::new();
    h.create("lobby", "alice", 1, 40001);
    let sent = h.ask(OPERATION_JOIN, "lobby", "bob", 2, 40002);
    assert_eq!(&sent[..], answer_vector("success-join", &token(2)));
    assert_eq!((h.service.rooms(), h.service.members()), (1, 2));
}

#[test]
fn create_of_an_existing_room_answers_exists() {
    let mut h = Harness::new();
    h.create("lobby", "alice", 1, 40001);
    h.create("部屋一", "太郎", 1, 40002);
    let sent = h.ask(OPERATION_CREATE, "lobby", "bob", 2, 40002);
    assert_eq!(&sent[..], answer_vector("exists", ""));
    let sent = h.ask(OPERATION_CREATE, "部屋一", "bob", 2, 40002);
    assert_eq!(&sent[..], answer_vector("exists-japanese-room", ""));
    assert_eq!((h.service.rooms(), h.service.members()), (2, 2));
    assert_eq!(h.out.rejected, 0, "a refusal is an answer, not a rejection");
}

#[test]
fn join_of_a_missing_room_answers_missing() {
    let mut h = Harness::new();
    let sent = h.ask(OPERATION_JOIN, "nowhere", "bob", 2, 40002);
    assert_eq!(&sent[..], answer_vector("missing", ""));
    assert_eq!(h.service.rooms(), 0);
}

#[test]
fn the_original_clients_request_vectors_are_served() {
    let mut h = Harness::new();
    let rows = request_rows();
    let create = rows.iter().find(|row| row.case == "create").unwrap();
    let join = rows.iter().find(|row| row.case == "join-japanese").unwrap();
    let sent = h.request_raw(ip(1), &create.bytes);
    assert_eq!(
        sent,
        [Bytes::from(answer_vector("success-create", &token(1)))]
    );

    // 部屋一 does not exist yet: 400, then it does.
    let sent = h.request_raw(ip(1), &join.bytes);
    let missing = answer(
        3,
        OPERATION_JOIN,
        STATE_REQUEST,
        codec::STATUS_REFUSED,
        &codec::room_missing_message("部屋一"),
    );
    assert_eq!(sent, [missing]);
    h.create("部屋一", "host", 1, 40009);
    let sent = h.request_raw(ip(1), &join.bytes);
    let mut expected = answer_vector("success-join", &token(3));
    expected[0] = 3; // 部屋一 is 3 characters (9 bytes)
    assert_eq!(sent, [Bytes::from(expected)]);
}

/// (what, operation, state, room, payload, the answer's RoomNameSize).
type MalformedCase = (&'static str, u8, u8, Vec<u8>, Vec<u8>, u8);

#[test]
fn malformed_requests_answer_500_with_state_3() {
    let good = payload("alice", udp(1, 40001));
    let long_room = "r".repeat(33);
    let cases: Vec<MalformedCase> = vec![
        ("operation 3", 3, 0, b"x".to_vec(), good.clone(), 1),
        ("operation 0", 0, 0, b"x".to_vec(), good.clone(), 1),
        ("state 1", 1, 1, b"x".to_vec(), good.clone(), 1),
        ("state 3", 2, 3, b"x".to_vec(), good.clone(), 1),
        ("empty room", 1, 0, b"".to_vec(), good.clone(), 0),
        ("room not UTF-8", 1, 0, b"\xffab".to_vec(), good.clone(), 3),
        (
            "room too long",
            1,
            0,
            long_room.into_bytes(),
            good.clone(),
            33,
        ),
        ("empty payload", 1, 0, b"x".to_vec(), b"".to_vec(), 1),
        (
            "payload not UTF-8",
            1,
            0,
            b"x".to_vec(),
            b"al\xffce".to_vec(),
            1,
        ),
        (
            "JSON array",
            1,
            0,
            b"x".to_vec(),
            b"[\"alice\"]".to_vec(),
            1,
        ),
        ("JSON number", 2, 0, b"x".to_vec(), b"12".to_vec(), 1),
        (
            "no address",
            1,
            0,
            b"x".to_vec(),
            br#"{"user_name": "alice"}"#.to_vec(),
            1,
        ),
        (
            "bad ip",
            1,
            0,
            b"x".to_vec(),
            br#"{"user_name": "alice", "user_address": ["127.0.0", 1]}"#.to_vec(),
            1,
        ),
        (
            "port 0",
            1,
            0,
            b"x".to_vec(),
            br#"{"user_name": "alice", "user_address": ["127.0.0.1", 0]}"#.to_vec(),
            1,
        ),
        (
            "port 65536",
            1,
            0,
            b"x".to_vec(),
            br#"{"user_name": "alice", "user_address": ["127.0.0.1", 65536]}"#.to_vec(),
            1,
        ),
        (
            "empty user name",
            1,
            0,
            b"x".to_vec(),
            br#"{"user_name": "", "user_address": ["127.0.0.1", 1]}"#.to_vec(),
            1,
        ),
        (
            "user name too long",
            1,
            0,
            b"x".to_vec(),
            payload("seventeen-bytes!!", udp(1, 1)),
            1,
        ),
        (
            "plain name too long",
            1,
            0,
            b"x".to_vec(),
            b"seventeen-bytes!!".to_vec(),
            1,
        ),
    ];
    for (what, operation, state, room, body, room_chars) in cases {
        let mut h = Harness::new();
        let raw = codec::encode_request(operation, state, &room, &body).unwrap();
        let sent = h.request_raw(ip(1), &raw);
        assert_eq!(sent, [failed(room_chars, operation)], "{what}");
        assert_eq!(h.out.rejected, 1, "{what}");
        assert_eq!(h.service.rooms(), 0, "{what}");
    }

    // The contract's vector: room "x", operation 1.
    let mut h = Harness::new();
    let sent = h.request(ip(1), OPERATION_CREATE, "x", b"[1, 2]");
    assert_eq!(&sent[..], answer_vector("malformed", ""));
}

#[test]
fn a_plain_name_payload_is_accepted() {
    let mut h = Harness::new();
    let sent = h.request(ip(1), OPERATION_CREATE, "lobby", "太郎".as_bytes());
    assert_eq!(&sent[..], answer_vector("success-create", &token(1)));
    // Not JSON either: a broken object is a name too, as the original takes it.
    let sent = h.request(ip(2), OPERATION_JOIN, "lobby", b"{bob");
    assert_eq!(&sent[..], answer_vector("success-join", &token(2)));
}

#[test]
fn no_randomness_answers_500() {
    let mut h = Harness::with(config(), Box::new(|_: &mut [u8; 32]| false));
    let sent = h.ask(OPERATION_CREATE, "lobby", "alice", 1, 1);
    assert_eq!(sent, failed(5, OPERATION_CREATE));
    assert_eq!(h.service.rooms(), 0, "no room without a host token");
}

#[test]
fn a_colliding_token_is_drawn_again() {
    // 1, 1, 2: the second member must not get token 1.
    let mut draws = [1u8, 1, 2].into_iter();
    let tokens: TokenSource = Box::new(move |bytes: &mut [u8; 32]| {
        *bytes = [0; 32];
        bytes[31] = draws.next().unwrap_or(9);
        true
    });
    let mut h = Harness::with(config(), tokens);
    assert_eq!(h.create("lobby", "alice", 1, 40001), token(1));
    assert_eq!(h.join("lobby", "bob", 2, 40002), token(2));
}

#[test]
fn limits_on_rooms_and_members_answer_500() {
    let mut h = Harness::new();
    for room in ["a", "b", "c", "d"] {
        h.create(room, "host", 1, 40001);
    }
    let sent = h.request(ip(1), OPERATION_CREATE, "e", &payload("host", udp(1, 1)));
    assert_eq!(sent, failed(1, OPERATION_CREATE));
    assert_eq!(h.service.rooms(), 4);

    h.join("a", "g1", 2, 40002);
    h.join("a", "g2", 3, 40003);
    let sent = h.request(ip(4), OPERATION_JOIN, "a", &payload("g3", udp(4, 1)));
    assert_eq!(sent, failed(1, OPERATION_JOIN));
    assert_eq!(h.out.rejected, 2);
}

/// The issue's attack 3: one IP created every room and locked everyone out.
#[test]
fn one_ip_cannot_take_every_room() {
    let mut h = Harness::configured(OcmConfig {
        rooms_per_ip_max: 2,
        ..config()
    });
    h.create("a", "host", 1, 40001);
    h.create("b", "host", 1, 40002);
    let sent = h.request(ip(1), OPERATION_CREATE, "c", &payload("host", udp(1, 1)));
    assert_eq!(sent, failed(1, OPERATION_CREATE));
    // Another address still creates; joining is not limited.
    h.create("c", "other", 2, 40001);
    h.join("a", "guest", 1, 40003);
    // A room closed frees its place for its host's address.
    let a_host = token(1);
    h.say(udp(1, 40001), "a", &a_host, "exit");
    h.create("d", "host", 1, 40004);
    assert_eq!(h.service.rooms(), 3);
}

#[test]
fn rooms_nobody_speaks_in_are_closed_soon_and_others_stay() {
    let mut h = Harness::configured(OcmConfig {
        room_silent_timeout_ms: 5_000,
        ..config()
    });
    let quiet = h.create("quiet", "alice", 1, 40001);
    h.join("quiet", "bob", 2, 40002);
    let alive = h.create("alive", "carol", 3, 40003);
    h.advance_to(1_000);
    h.say(CAROL, "alive", &alive, "hi");
    h.advance_to(4_990);
    assert_eq!(h.service.rooms(), 2);
    h.advance_to(5_000);
    assert_eq!(h.service.rooms(), 1, "the quiet room is gone");
    // Its members knew their addresses from the request: they are told, as when a host leaves.
    let closing =
        "aliceがquietから退出しました。\nホストが退出したため、チャットルーム:quietを終了します。";
    assert_eq!(h.texts_to(BOB), [closing]);
    h.say(ALICE, "quiet", &quiet, "too late");
    assert_eq!(h.udp.dropped_in, [DatagramDrop::UnknownRoom]);
    // A new room under the same name gets its own timer, not the old one's.
    h.advance_to(7_000);
    let again = h.create("quiet", "dave", 4, 40004);
    h.advance_to(11_000);
    h.say(udp(4, 40004), "quiet", &again, "spoken");
    h.advance_to(12_000);
    assert_eq!(h.service.rooms(), 2);
    // A room that closed early leaves its timer behind; the room that takes its slot is not
    // closed by that timer, only by its own.
    h.advance_to(20_000);
    let gone = h.create("gone", "eve", 5, 40005);
    h.say(udp(5, 40005), "gone", &gone, "exit");
    h.advance_to(20_010);
    h.create("next", "frank", 6, 40006);
    h.advance_to(25_000);
    assert_eq!(h.service.rooms(), 3, "the old timer spared the new room");
    h.advance_to(25_010);
    assert_eq!(h.service.rooms(), 2);
    h.advance_to(60_000);
    assert_eq!(h.service.rooms(), 2, "rooms that spoke live on");
}

#[test]
fn one_request_per_connection_the_rest_is_ignored() {
    let mut h = Harness::new();
    let first = request_for(OPERATION_CREATE, "lobby", "alice", 1, 40001);
    let second = request_for(OPERATION_CREATE, "other", "alice", 1, 40001);
    let id = h.accept(ip(1));
    let mut input = BytesMut::from(&first[..]);
    input.extend_from_slice(&second);
    h.service.on_data(id, &mut input, 0, &mut h.out);
    assert!(input.is_empty(), "the rest is dropped, not left to grow");
    let mut more = BytesMut::from(&second[..]);
    h.service.on_data(id, &mut more, 0, &mut h.out);
    assert!(more.is_empty());
    assert_eq!(h.out.sent_to(id).len(), 1);
    assert_eq!(h.service.rooms(), 1);
}

#[test]
fn a_request_split_across_reads_is_answered_once_whole() {
    let mut h = Harness::new();
    let raw = request_for(OPERATION_CREATE, "lobby", "alice", 1, 40001);
    let id = h.accept(ip(1));
    let mut input = BytesMut::new();
    for &byte in raw.iter() {
        assert!(h.out.sent.is_empty());
        input.extend_from_slice(&[byte]);
        h.service.on_data(id, &mut input, 0, &mut h.out);
    }
    assert_eq!(
        h.out.sent_to(id),
        [Bytes::from(answer_vector("success-create", &token(1)))]
    );
}

#[test]
fn an_oversized_payload_is_answered_500_from_the_header() {
    let mut h = Harness::new();
    let id = h.accept(ip(1));
    let mut header = vec![5, OPERATION_JOIN, STATE_REQUEST];
    header.extend_from_slice(&[0; 27]);
    header.extend_from_slice(&1025u16.to_be_bytes());
    h.data(id, &header);
    assert_eq!(h.out.sent_to(id), [failed(5, OPERATION_JOIN)]);
    assert_eq!(
        h.closed(id),
        [(CloseReason::ProtocolError, CloseMode::AfterFlush)]
    );
    assert_eq!(h.out.rejected, 1);

    // A size past u64.
    let id = h.accept(ip(1));
    let mut header = vec![1, OPERATION_CREATE, STATE_REQUEST, 1];
    header.extend_from_slice(&[0; 28]);
    h.data(id, &header);
    assert_eq!(h.out.sent_to(id), [failed(1, OPERATION_CREATE)]);
}

#[test]
fn the_request_timeout_closes_a_silent_connection() {
    let mut h = Harness::new();
    let silent = h.accept(ip(1));
    let partial = h.accept(ip(2));
    h.data(partial, &[5, 1, 0]);
    let done = h.accept(ip(3));
    let raw = codec::encode_request(OPERATION_CREATE, 0, b"lobby", &payload("c", udp(3, 1)));
    h.data(done, &raw.unwrap());
    let gone = h.accept(ip(4));
    h.service.on_close(gone);
    assert!(h.service.next_deadline_ms().is_some());

    h.advance_to(REQUEST_TIMEOUT_MS - 10);
    assert_eq!(h.out.closed.len(), 1, "only the answered one so far");
    h.advance_to(REQUEST_TIMEOUT_MS);
    for id in [silent, partial] {
        assert_eq!(
            h.closed(id),
            [(CloseReason::HandshakeTimeout, CloseMode::Now)]
        );
        assert!(h.out.sent_to(id).is_empty());
    }
    assert_eq!(h.closed(done), [(CloseReason::Done, CloseMode::AfterFlush)]);
    assert!(h.closed(gone).is_empty());
    assert_eq!(h.out.rejected, 2);

    // Bytes that arrive after the close are ignored.
    h.data(silent, &[0; 40]);
    assert!(h.out.sent_to(silent).is_empty());
}

#[test]
fn ack_state1_sends_the_acknowledgement_first() {
    let mut h = Harness::configured(OcmConfig {
        ack_state1: true,
        ..config()
    });
    let raw = request_for(OPERATION_CREATE, "lobby", "alice", 1, 40001);
    let sent = h.request_raw(ip(1), &raw);
    assert_eq!(
        sent,
        [
            Bytes::from(answer_vector("ack-state1", "")),
            Bytes::from(answer_vector("success-create", &token(1))),
        ]
    );
    // A refusal is acknowledged first too; a request with a bad operation is not.
    let raw = codec::encode_request(OPERATION_CREATE, 0, b"lobby", b"bob").unwrap();
    assert_eq!(h.request_raw(ip(2), &raw).len(), 2);
    let raw = codec::encode_request(9, 0, b"lobby", b"bob").unwrap();
    assert_eq!(h.request_raw(ip(2), &raw), [failed(5, 9)]);
}

// ---- chat ----

#[test]
fn chat_goes_to_every_other_member_and_not_back() {
    let mut h = Harness::new();
    let [alice, bob, _carol] = h.lobby();
    h.say(ALICE, "lobby", &alice, "hello");
    assert_eq!(h.texts_to(BOB), ["alice: hello"]);
    assert_eq!(h.texts_to(CAROL), ["alice: hello"]);
    assert!(h.texts_to(ALICE).is_empty());
    h.say(BOB, "lobby", &bob, "やあ 😀");
    assert_eq!(h.texts_to(ALICE), ["bob: やあ 😀"]);
    assert_eq!(h.texts_to(CAROL), ["alice: hello", "bob: やあ 😀"]);
    assert_eq!(h.texts_to(BOB), ["alice: hello"]);
    assert_eq!(h.udp.datagrams_in, 2);
    assert!(h.udp.dropped_in.is_empty());
}

#[test]
fn a_rooms_fanout_is_budgeted_per_sender_and_cut_whole() {
    let mut h = Harness::configured(OcmConfig {
        // Each text costs 2 sends: alice may send 2 a second (4 sends), everyone 3 (6).
        sends_per_source_per_s_max: 4,
        sends_per_s_max: 6,
        ..config()
    });
    let [alice, bob, _carol] = h.lobby();
    for n in 0..3 {
        h.say(ALICE, "lobby", &alice, &format!("a{n}"));
    }
    assert_eq!(h.texts_to(BOB), ["alice: a0", "alice: a1"]);
    assert_eq!(h.texts_to(CAROL), ["alice: a0", "alice: a1"]);
    assert_eq!(h.udp.dropped_in, [DatagramDrop::FanoutBudget]);
    // Bob has his own budget, but only one text's worth of the total is left.
    h.say(BOB, "lobby", &bob, "b0");
    h.say(BOB, "lobby", &bob, "b1");
    assert_eq!(h.texts_to(CAROL), ["alice: a0", "alice: a1", "bob: b0"]);
    assert_eq!(h.udp.dropped_in.len(), 2);
    // A second later everyone's budget is back; exits are never refused.
    h.now_ms = 1000;
    h.say(ALICE, "lobby", &alice, "a3");
    assert_eq!(
        h.texts_to(BOB).last().map(String::as_str),
        Some("alice: a3")
    );
    h.say(BOB, "lobby", &bob, "exit");
    h.say(BOB, "lobby", &bob, "exit");
    assert_eq!(h.service.members(), 2);
}

#[test]
fn rooms_are_separate() {
    let mut h = Harness::new();
    let alice = h.create("lobby", "alice", 1, 40001);
    h.create("other", "bob", 2, 40002);
    h.say(ALICE, "lobby", &alice, "hello");
    assert!(h.udp.sent.is_empty());
}

#[test]
fn an_unspecified_address_takes_the_tcp_peer_ip() {
    let mut h = Harness::new();
    let alice = h.create("lobby", "alice", 1, 40001);
    let sent = h.request(
        ip(2),
        OPERATION_JOIN,
        "lobby",
        &payload("bob", "0.0.0.0:40002".parse().unwrap()),
    );
    assert_eq!(&sent[..], answer_vector("success-join", &token(2)));
    h.say(ALICE, "lobby", &alice, "hi");
    assert_eq!(h.texts_to(BOB), ["alice: hi"]);
}

#[test]
fn a_name_already_in_the_room_is_refused_and_free_again_once_it_leaves() {
    let mut h = Harness::new();
    h.create("lobby", "alice", 1, 40001);
    let bob = h.join("lobby", "bob", 2, 40002);
    let sent = h.ask(OPERATION_JOIN, "lobby", "bob", 3, 40003);
    assert_eq!(sent, failed(5, OPERATION_JOIN));
    // Another room may have its own bob.
    h.create("other", "bob", 4, 40004);
    h.say(BOB, "lobby", &bob, "exit");
    h.join("lobby", "bob", 3, 40003);
}

#[test]
fn chat_never_goes_to_another_ip_than_the_requests() {
    let mut h = Harness::new();
    let alice = h.create("lobby", "alice", 1, 40001);
    // bob asks from ip(2) but names ip(9): the room's chat must not be aimed at ip(9).
    let sent = h.request(
        ip(2),
        OPERATION_JOIN,
        "lobby",
        &payload("bob", SocketAddr::new(ip(9), 40002)),
    );
    assert_eq!(&sent[..], answer_vector("success-join", &token(2)));
    h.say(ALICE, "lobby", &alice, "hi");
    assert_eq!(h.texts_to(BOB), ["alice: hi"]);
    assert!(h.texts_to(SocketAddr::new(ip(9), 40002)).is_empty());
}

#[test]
fn the_token_is_bound_to_the_requests_ip() {
    let mut h = Harness::new();
    let [alice, _, _] = h.lobby();
    // alice's token from bob's IP: dropped.
    h.say(udp(2, 40001), "lobby", &alice, "spoof");
    assert_eq!(h.udp.dropped_in, [DatagramDrop::WrongAddress]);
    assert!(h.udp.sent.is_empty());
    assert_eq!(h.udp.datagrams_in, 0);
    // The same IP as an IPv4-mapped IPv6 address (a dual-stack socket) is the same IP.
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:40001".parse().unwrap();
    h.say(mapped, "lobby", &alice, "v6");
    assert_eq!(h.texts_to(BOB), ["alice: v6"]);
}

#[test]
fn unknown_rooms_and_bad_tokens_are_dropped() {
    let mut h = Harness::new();
    let [alice, _, _] = h.lobby();
    let other = h.create("other", "dave", 1, 40004);
    h.say(ALICE, "nowhere", &alice, "x");
    h.say(ALICE, "lobby", &token(99), "x");
    h.say(ALICE, "lobby", &other, "x");
    h.say(ALICE, "lobby", "short", "x");
    let not_utf8 = codec::encode_datagram(b"\xff", alice.as_bytes(), b"x").unwrap();
    h.service.on_datagram(ALICE, &not_utf8, 0, &mut h.udp);
    assert_eq!(
        h.udp.dropped_in,
        [
            DatagramDrop::UnknownRoom,
            DatagramDrop::BadToken,
            DatagramDrop::BadToken,
            DatagramDrop::BadToken,
            DatagramDrop::UnknownRoom,
        ]
    );
    assert!(h.udp.sent.is_empty());
}

#[test]
fn malformed_datagrams_are_dropped() {
    let mut h = Harness::new();
    let [alice, _, _] = h.lobby();
    let whole = codec::encode_datagram(b"lobby", alice.as_bytes(), b"hi").unwrap();
    h.service.on_datagram(ALICE, &whole[..10], 0, &mut h.udp);
    h.service.on_datagram(ALICE, &[], 0, &mut h.udp);
    let mut over = whole.clone();
    over.resize(4097, b'x');
    h.service.on_datagram(ALICE, &over, 0, &mut h.udp);
    let not_text = codec::encode_datagram(b"lobby", alice.as_bytes(), b"\xff\xfe").unwrap();
    h.service.on_datagram(ALICE, &not_text, 0, &mut h.udp);
    assert_eq!(h.udp.dropped_in, [DatagramDrop::Malformed; 4]);
    assert!(h.udp.sent.is_empty());
}

#[test]
fn a_text_over_4094_bytes_is_dropped_not_cut() {
    let mut h = Harness::configured(OcmConfig {
        user_name_bytes_max: 255,
        ..config()
    });
    let name = "n".repeat(100);
    let host = h.create("r", &name, 1, 40001);
    h.join("r", "bob", 2, 40002);
    // The longest message a datagram for room "r" carries, yet its text is 4131 bytes.
    let long = "m".repeat(4096 - 2 - 1 - 64);
    h.say(ALICE, "r", &host, &long);
    assert_eq!(h.udp.dropped_in, [DatagramDrop::Malformed]);
    assert!(h.udp.sent.is_empty());
    assert_eq!(h.udp.datagrams_in, 0);
    // Exactly 4094 bytes of text go out.
    h.say(ALICE, "r", &host, &long[..4094 - 102]);
    assert_eq!(h.udp.sent_to(BOB)[0].len(), codec::TEXT_BYTES_MAX);
}

#[test]
fn each_datagram_refreshes_the_members_address() {
    let mut h = Harness::new();
    let [alice, bob, _] = h.lobby();
    let bob_moved = udp(2, 50000);
    h.say(bob_moved, "lobby", &bob, "moved");
    h.say(ALICE, "lobby", &alice, "hi");
    assert_eq!(h.texts_to(bob_moved), ["alice: hi"]);
    assert!(h.texts_to(BOB).is_empty());
}

#[test]
fn a_plain_name_member_learns_its_address_from_its_first_datagram() {
    let mut h = Harness::new();
    let alice = h.create("lobby", "alice", 1, 40001);
    let sent = h.request(ip(2), OPERATION_JOIN, "lobby", b"bob");
    assert_eq!(&sent[..], answer_vector("success-join", &token(2)));
    let bob = token(2);
    h.say(ALICE, "lobby", &alice, "anyone?");
    assert!(h.udp.sent.is_empty(), "bob's address is not known yet");
    h.say(BOB, "lobby", &bob, "here");
    assert_eq!(h.texts_to(ALICE), ["bob: here"]);
    h.say(ALICE, "lobby", &alice, "hi bob");
    assert_eq!(h.texts_to(BOB), ["alice: hi bob"]);
}

#[test]
fn a_guest_leaves_with_exit() {
    let mut h = Harness::new();
    let [alice, bob, _] = h.lobby();
    h.say(BOB, "lobby", &bob, "exit");
    assert_eq!(h.texts_to(ALICE), ["bobがlobbyから退出しました。"]);
    assert_eq!(h.texts_to(CAROL), ["bobがlobbyから退出しました。"]);
    assert!(h.texts_to(BOB).is_empty());
    assert_eq!((h.service.rooms(), h.service.members()), (1, 2));
    // Its token is gone.
    h.say(BOB, "lobby", &bob, "still here?");
    assert_eq!(h.udp.dropped_in, [DatagramDrop::BadToken]);
    h.udp.clear();
    h.say(ALICE, "lobby", &alice, "bye bob");
    assert!(h.texts_to(BOB).is_empty());
    assert_eq!(h.texts_to(CAROL), ["alice: bye bob"]);
}

#[test]
fn the_host_leaving_closes_the_room() {
    let mut h = Harness::new();
    let [alice, bob, _] = h.lobby();
    h.say(ALICE, "lobby", &alice, "exit");
    let closing =
        "aliceがlobbyから退出しました。\nホストが退出したため、チャットルーム:lobbyを終了します。";
    assert_eq!(h.texts_to(BOB), [closing]);
    assert_eq!(h.texts_to(CAROL), [closing]);
    assert!(h.texts_to(ALICE).is_empty());
    assert_eq!((h.service.rooms(), h.service.members()), (0, 0));
    h.say(BOB, "lobby", &bob, "hello?");
    assert_eq!(h.udp.dropped_in, [DatagramDrop::UnknownRoom]);
    // The name is free again, and old tokens are worthless in the new room.
    let dave = h.create("lobby", "dave", 4, 40004);
    assert_eq!(dave, token(4));
    h.say(BOB, "lobby", &bob, "hello?");
    assert_eq!(h.udp.dropped_in[1], DatagramDrop::BadToken);
}

#[test]
fn japanese_names_in_texts() {
    let mut h = Harness::new();
    let host = h.create("部屋一", "太郎", 1, 40001);
    let guest = h.join("部屋一", "花子", 2, 40002);
    h.say(BOB, "部屋一", &guest, "こんにちは");
    assert_eq!(h.texts_to(ALICE), ["花子: こんにちは"]);
    h.say(BOB, "部屋一", &guest, "exit");
    assert_eq!(h.texts_to(ALICE)[1], "花子が部屋一から退出しました。");
    h.join("部屋一", "次郎", 3, 40003);
    h.say(ALICE, "部屋一", &host, "exit");
    assert_eq!(
        h.texts_to(CAROL),
        ["太郎が部屋一から退出しました。\nホストが退出したため、チャットルーム:部屋一を終了します。"]
    );
}

// ---- idle and unreachable members ----

#[test]
fn an_idle_guest_is_removed_and_told() {
    let mut h = Harness::new();
    let [alice, bob, carol] = h.lobby();
    h.advance_to(30_000);
    h.say(ALICE, "lobby", &alice, "still here");
    h.say(CAROL, "lobby", &carol, "me too");
    h.udp.clear();
    // bob has said nothing since joining at 0.
    h.advance_to(IDLE_MS - 10);
    assert_eq!(h.service.members(), 3);
    h.advance_to(IDLE_MS);
    assert_eq!(h.service.members(), 2);
    let left = "bobがlobbyから退出しました。";
    assert_eq!(
        h.texts_to(BOB),
        [left],
        "its own leave text closes the client"
    );
    assert_eq!(h.texts_to(ALICE), [left]);
    assert_eq!(h.texts_to(CAROL), [left]);
    h.say(BOB, "lobby", &bob, "late");
    assert_eq!(h.udp.dropped_in, [DatagramDrop::BadToken]);

    // The others spoke at 30 s: the timer re-armed for the remainder, not a full period.
    h.udp.clear();
    h.advance_to(30_000 + IDLE_MS - 10);
    assert_eq!(h.service.members(), 2);
    h.advance_to(30_000 + IDLE_MS);
    assert_eq!(h.service.rooms(), 0, "alice, the host, went idle too");
}

#[test]
fn an_idle_host_closes_the_room_and_is_told() {
    let mut h = Harness::new();
    let [_, bob, carol] = h.lobby();
    h.advance_to(1_000);
    h.say(BOB, "lobby", &bob, "hi");
    h.say(CAROL, "lobby", &carol, "hi");
    h.udp.clear();
    h.advance_to(IDLE_MS);
    assert_eq!((h.service.rooms(), h.service.members()), (0, 0));
    let closing =
        "aliceがlobbyから退出しました。\nホストが退出したため、チャットルーム:lobbyを終了します。";
    assert_eq!(h.texts_to(BOB), [closing]);
    assert_eq!(h.texts_to(CAROL), [closing]);
    assert_eq!(h.texts_to(ALICE), ["aliceがlobbyから退出しました。"]);
    assert_eq!(h.service.next_deadline_ms(), None, "no timers left behind");
}

#[test]
fn a_member_whose_sends_keep_failing_is_removed_untold() {
    let mut h = Harness::new();
    let [alice, _, _] = h.lobby();
    h.udp.failing.push(BOB);
    h.say(ALICE, "lobby", &alice, "1");
    h.say(ALICE, "lobby", &alice, "2");
    assert_eq!(h.service.members(), 3);
    h.say(ALICE, "lobby", &alice, "3");
    assert_eq!(h.service.members(), 2);
    assert_eq!(
        h.texts_to(CAROL),
        [
            "alice: 1",
            "alice: 2",
            "alice: 3",
            "bobがlobbyから退出しました。"
        ]
    );
    assert_eq!(h.texts_to(ALICE), ["bobがlobbyから退出しました。"]);
    assert_eq!(h.udp.failed, 3, "nothing more is tried for bob");
}

#[test]
fn failures_must_be_in_a_row() {
    let mut h = Harness::new();
    let [alice, _, _] = h.lobby();
    for round in 0..4 {
        h.udp.failing.push(BOB);
        h.say(ALICE, "lobby", &alice, "fails");
        h.say(ALICE, "lobby", &alice, "fails");
        h.udp.failing.clear();
        h.say(ALICE, "lobby", &alice, "gets through");
        assert_eq!(h.service.members(), 3, "round {round}");
    }
}

#[test]
fn a_full_socket_buffer_is_not_the_members_fault() {
    let mut h = Harness::new();
    let [alice, _, _] = h.lobby();
    h.udp.full = true;
    for _ in 0..10 {
        h.say(ALICE, "lobby", &alice, "lost");
    }
    assert_eq!(h.udp.dropped_out, 20);
    h.udp.full = false;
    assert_eq!(h.service.members(), 3);
    h.say(ALICE, "lobby", &alice, "ok");
    assert_eq!(h.texts_to(BOB), ["alice: ok"]);
}

#[test]
fn an_unreachable_host_closes_the_room() {
    let mut h = Harness::new();
    let [_, bob, _] = h.lobby();
    h.udp.failing.push(ALICE);
    for _ in 0..3 {
        h.say(BOB, "lobby", &bob, "anyone");
    }
    assert_eq!(h.service.rooms(), 0);
    assert_eq!(
        h.texts_to(CAROL).last().map(String::as_str),
        Some("aliceがlobbyから退出しました。\nホストが退出したため、チャットルーム:lobbyを終了します。")
    );
}

// ---- the stage-1 relay ----

fn relay_config() -> RelayConfig {
    RelayConfig {
        idle_timeout_ms: IDLE_MS,
        send_failures_max: 3,
        peers_max: 3,
        peers_per_ip_max: 0,
        sends_per_s_max: 0,
        sends_per_source_per_s_max: 0,
        datagram_bytes_max: 4096,
        timer_tick_ms: 10,
    }
}

#[test]
fn one_ip_cannot_fill_the_relay() {
    let mut relay = RelayService::new(
        RelayConfig {
            peers_max: 10,
            peers_per_ip_max: 2,
            ..relay_config()
        },
        0,
    );
    let mut out = RecordingDatagrams::default();
    for port in 1..=5 {
        relay.on_datagram(udp(1, port), b"hi", 0, &mut out);
    }
    assert_eq!(relay.peers(), 2);
    assert_eq!(out.dropped_in, [DatagramDrop::OverLimit; 3]);
    // Another host still gets in, and a forgotten peer frees its address's place.
    relay.on_datagram(udp(2, 1), b"hi", 0, &mut out);
    assert_eq!(relay.peers(), 3);
    relay.on_datagram(udp(2, 1), b"still here", IDLE_MS / 2, &mut out);
    relay.on_timers(IDLE_MS);
    assert_eq!(relay.peers(), 1);
    relay.on_datagram(udp(1, 9), b"back", IDLE_MS, &mut out);
    assert_eq!(relay.peers(), 2);
}

/// The issue's attack 1: every new socket's first datagram went to every peer before it, so
/// n sockets cost n^2/2 sends. The fan-out budget bounds the sends per second however many
/// sockets send.
#[test]
fn the_relay_fanout_is_budgeted_per_source_and_in_total() {
    let mut relay = RelayService::new(
        RelayConfig {
            peers_max: 100,
            sends_per_s_max: 200,
            sends_per_source_per_s_max: 50,
            ..relay_config()
        },
        0,
    );
    let mut udp = RecordingDatagrams::default();
    for n in 1..=100 {
        relay.on_datagram(udp_addr(n), b"x", 0, &mut udp);
    }
    assert_eq!(relay.peers(), 100);
    // The buckets hold at least one whole fan-out (99 sends) even below the rate; within the
    // first 200 sends of the total, every fan-out was whole.
    let sent = udp.sent.len();
    assert!(sent <= 200, "{sent} sends at once");
    assert!(sent >= 100, "{sent}");
    let refused = udp
        .dropped_in
        .iter()
        .filter(|&&why| why == DatagramDrop::FanoutBudget)
        .count();
    assert_eq!(refused as u64 + udp.datagrams_in, 100);
    // One source is held to its own rate: a second datagram from a peer that just used its
    // bucket is refused, while the total refills for the others.
    udp.clear();
    relay.on_datagram(udp_addr(1), b"y", 1000, &mut udp);
    assert_eq!(udp.sent.len(), 99, "a whole fan-out after a second");
    relay.on_datagram(udp_addr(1), b"z", 1000, &mut udp);
    assert_eq!(udp.dropped_in.last(), Some(&DatagramDrop::FanoutBudget));
    relay.on_datagram(udp_addr(2), b"w", 1000, &mut udp);
    assert_eq!(udp.sent.len(), 2 * 99, "another source still gets through");
}

#[test]
fn the_relay_forwards_to_every_other_peer_unchanged() {
    let mut relay = RelayService::new(relay_config(), 0);
    let mut udp = RecordingDatagrams::default();
    let [p1, p2, p3] = [udp_addr(1), udp_addr(2), udp_addr(3)];
    let framed = b"\x05alicehello";
    relay.on_datagram(p1, framed, 0, &mut udp);
    assert!(udp.sent.is_empty(), "nobody else yet");
    relay.on_datagram(p2, "こんにちは".as_bytes(), 1, &mut udp);
    relay.on_datagram(p3, b"", 2, &mut udp);
    relay.on_datagram(p1, b"again", 3, &mut udp);
    assert_eq!(
        udp.sent_to(p1),
        [Bytes::from("こんにちは"), Bytes::from_static(b"")]
    );
    assert_eq!(
        udp.sent_to(p2),
        [Bytes::from_static(b""), Bytes::from_static(b"again")]
    );
    assert_eq!(udp.sent_to(p3), [Bytes::from_static(b"again")]);
    assert_eq!((relay.peers(), udp.datagrams_in), (3, 4));

    relay.on_datagram(p1, &[0; 4097], 4, &mut udp);
    assert_eq!(udp.dropped_in, [DatagramDrop::Malformed]);
}

fn udp_addr(n: u8) -> SocketAddr {
    udp(n, 9000 + u16::from(n))
}

#[test]
fn the_relay_forgets_idle_peers() {
    let mut relay = RelayService::new(relay_config(), 0);
    let mut udp = RecordingDatagrams::default();
    let [p1, p2] = [udp_addr(1), udp_addr(2)];
    relay.on_datagram(p1, b"a", 0, &mut udp);
    relay.on_datagram(p2, b"b", 10_000, &mut udp);
    relay.on_timers(IDLE_MS - 10);
    assert_eq!(relay.peers(), 2);
    // p1 is past the idle limit: not relayed to, even before its timer runs.
    relay.on_datagram(p2, b"c", IDLE_MS, &mut udp);
    assert_eq!(udp.sent_to(p1), [Bytes::from_static(b"b")]);
    relay.on_timers(IDLE_MS);
    assert_eq!(relay.peers(), 1);
    // p2 spoke at 60 s: its timer re-armed for the remainder.
    relay.on_timers(2 * IDLE_MS - 10);
    assert_eq!(relay.peers(), 1);
    relay.on_timers(2 * IDLE_MS);
    assert_eq!(relay.peers(), 0);
    assert_eq!(relay.next_deadline_ms(), None);
}

#[test]
fn the_relay_forgets_unreachable_peers_but_not_for_a_full_buffer() {
    let mut relay = RelayService::new(relay_config(), 0);
    let mut udp = RecordingDatagrams::default();
    let [p1, p2, p3] = [udp_addr(1), udp_addr(2), udp_addr(3)];
    for peer in [p1, p2, p3] {
        relay.on_datagram(peer, b"hi", 0, &mut udp);
    }
    udp.full = true;
    for _ in 0..5 {
        relay.on_datagram(p1, b"lost", 1, &mut udp);
    }
    udp.full = false;
    assert_eq!(relay.peers(), 3);
    udp.failing.push(p2);
    relay.on_datagram(p1, b"1", 2, &mut udp);
    relay.on_datagram(p1, b"2", 2, &mut udp);
    assert_eq!(relay.peers(), 3);
    relay.on_datagram(p1, b"3", 2, &mut udp);
    assert_eq!(relay.peers(), 2);
    relay.on_datagram(p1, b"4", 2, &mut udp);
    assert_eq!(udp.failed, 3);
    assert_eq!(udp.sent_to(p3).last(), Some(&Bytes::from_static(b"4")));
}

#[test]
fn the_relay_refuses_new_peers_when_full() {
    let mut relay = RelayService::new(relay_config(), 0);
    let mut udp = RecordingDatagrams::default();
    for n in 1..=3 {
        relay.on_datagram(udp_addr(n), b"hi", 0, &mut udp);
    }
    udp.sent.clear();
    relay.on_datagram(udp_addr(4), b"let me in", 0, &mut udp);
    assert_eq!(udp.dropped_in, [DatagramDrop::OverLimit]);
    assert!(udp.sent.is_empty());
    assert_eq!(relay.peers(), 3);
    // Known peers still get through, and a forgotten peer frees a place.
    relay.on_datagram(udp_addr(1), b"ok", 0, &mut udp);
    assert_eq!(udp.sent.len(), 2);
    relay.on_timers(IDLE_MS);
    relay.on_datagram(udp_addr(4), b"let me in", IDLE_MS, &mut udp);
    assert_eq!(relay.peers(), 1);
}

/// Requests valid and not, cut anywhere, datagrams with live, dead and foreign tokens from
/// right and wrong addresses, garbage, and time passing: the service never panics, answers
/// every TCRP connection at most once with a well-formed answer, and sends only UTF-8 text
/// within the size limit.
#[test]
fn random_traffic_never_breaks_the_service_or_its_output() {
    const ROOMS: [&str; 3] = ["lobby", "部屋", "r"];
    const NAMES: [&str; 4] = ["alice", "bob", "carol", "名前"];
    const MESSAGES: [&str; 4] = ["hi", "exit", "", "こんにちは"];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut h = Harness::new();
    // (room, token, ip last byte) of every success answer seen.
    let mut tokens: Vec<(String, String, u8)> = Vec::new();
    let mut successes = 0;
    let mut relayed = 0;
    for _ in 0..20_000 {
        match rng.below(10) {
            0..=3 => {
                let last = 1 + rng.below(3) as u8;
                let room = ROOMS[rng.below(ROOMS.len())];
                let operation = [OPERATION_CREATE, OPERATION_JOIN, 7][rng.below(3)];
                let name = NAMES[rng.below(NAMES.len())];
                let body = match rng.below(4) {
                    0 => name.as_bytes().to_vec(),
                    1 => (0..rng.below(40)).map(|_| rng.next_u64() as u8).collect(),
                    _ => payload(name, udp(last, 40_000 + rng.below(3) as u16)),
                };
                let mut raw =
                    codec::encode_request(operation, STATE_REQUEST, room.as_bytes(), &body)
                        .unwrap()
                        .to_vec();
                if rng.below(6) == 0 {
                    raw.truncate(rng.below(raw.len() + 1));
                }
                if rng.below(10) == 0 {
                    let at = rng.below(raw.len().max(1));
                    if let Some(byte) = raw.get_mut(at) {
                        *byte = rng.next_u64() as u8;
                    }
                }
                let id = h.accept(ip(last));
                // The connection's unconsumed input stays for the next chunk, as in the reactor.
                let mut input = BytesMut::new();
                for chunk in raw.chunks(1 + rng.below(40)) {
                    input.extend_from_slice(chunk);
                    h.service.on_data(id, &mut input, h.now_ms, &mut h.out);
                }
                let sent = h.out.sent_to(id);
                assert!(sent.len() <= 1, "one answer per request");
                if let Some(answer) = sent.first() {
                    let mut buf = BytesMut::from(&answer[..]);
                    let decoded = codec::decode_answer(&mut buf, 4096).unwrap().unwrap();
                    assert!(buf.is_empty(), "nothing after the answer");
                    let text = std::str::from_utf8(&decoded.json).unwrap();
                    let parsed = json::parse_answer(text).unwrap();
                    if let Some(token) = parsed.token {
                        successes += 1;
                        let room = String::from_utf8_lossy(&raw[32..32 + raw[0] as usize]);
                        tokens.push((room.into_owned(), token, last));
                    }
                }
                h.service.on_close(id);
                h.out.clear();
            }
            4..=7 if !tokens.is_empty() => {
                let (room, token, last) = tokens[rng.below(tokens.len())].clone();
                let from_last = if rng.below(8) == 0 { 9 } else { last };
                let from = udp(from_last, 40_000 + rng.below(3) as u16);
                let message = MESSAGES[rng.below(MESSAGES.len())];
                h.say(from, &room, &token, message);
            }
            8 => {
                let datagram: Vec<u8> = (0..rng.below(80)).map(|_| rng.next_u64() as u8).collect();
                h.service
                    .on_datagram(udp(1, 40_000), &datagram, h.now_ms, &mut h.udp);
            }
            _ => {
                let now_ms = h.now_ms + rng.below(IDLE_MS as usize / 4) as u64;
                h.advance_to(now_ms);
                h.out.clear();
            }
        }
        for (_, text) in h.udp.sent.drain(..) {
            relayed += 1;
            assert!(text.len() <= codec::TEXT_BYTES_MAX);
            assert!(std::str::from_utf8(&text).is_ok(), "text is UTF-8");
        }
        assert!(h.service.rooms() <= 4 && h.service.members() <= 4 * 3);
    }
    // The run must have reached the states worth testing, not only refusals of garbage.
    assert!(successes > 500, "only {successes} rooms entered");
    assert!(relayed > 500, "only {relayed} datagrams sent");
}
