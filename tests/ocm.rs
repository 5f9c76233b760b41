//! OCM over real sockets: TCRP over TCP, chat over UDP, and the stage-1 relay, against the
//! real server on ephemeral ports.
//!
//! The requests and datagrams are built here by hand from the contract, not with the
//! library's codec, so a codec bug cannot hide behind a matching test helper. Answers are
//! compared byte for byte with the contract's vectors (tests/vectors/ocm-tcrp-answers.tsv, a copy; see its README).
//!
//! UDP on loopback is not lossy at these rates, and the server sends each member's datagrams
//! from one socket in order, so "B's line did not reach B" is checked by sending a later line
//! from someone else and seeing that one arrive first: an event, not a timed silence.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::ocm::Ocm;
use common::{TestServer, WAIT};
use switchboard::config::Config;
use switchboard::protocol::DatagramDrop;

const LEAVE_SUFFIX: &str = "から退出しました。";

fn server_with(config: Config) -> TestServer {
    TestServer::start(Config {
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        ocm_relay_port: Some(0),
        ..config
    })
}

fn server() -> TestServer {
    server_with(Config::for_tests())
}

/// A TCRP request as the original client writes it: header, room name, JSON payload.
fn request(room: &str, operation: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![room.len() as u8, operation, 0];
    let size = (payload.len() as u64).to_be_bytes();
    bytes.extend_from_slice(&[0u8; 21]);
    bytes.extend_from_slice(&size);
    bytes.extend_from_slice(room.as_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn json_payload(name: &str, udp: SocketAddr) -> Vec<u8> {
    format!(
        "{{\"user_name\": \"{name}\", \"user_address\": [\"{}\", {}]}}",
        udp.ip(),
        udp.port()
    )
    .into_bytes()
}

/// Send one request and read the whole answer: exactly one, then the server closes.
fn exchange(server: &TestServer, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server.ocm_tcp.expect("OCM enabled")).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(request).expect("send request");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the server answers, then closes");
    answer
}

/// The answer's JSON body, after checking its header says exactly that many bytes.
fn answer_json(answer: &[u8]) -> (u8, u8, u8, String) {
    assert!(answer.len() >= 32, "short answer {answer:?}");
    let mut size = [0u8; 8];
    size.copy_from_slice(&answer[24..32]);
    assert!(answer[3..24].iter().all(|&b| b == 0));
    let size = u64::from_be_bytes(size) as usize;
    assert_eq!(answer.len(), 32 + size, "one answer and nothing more");
    let json = String::from_utf8(answer[32..].to_vec()).expect("UTF-8 JSON");
    (answer[0], answer[1], answer[2], json)
}

/// The token of a success answer (state 2, status 202).
fn token_of(answer: &[u8]) -> String {
    let (_, _, state, json) = answer_json(answer);
    assert_eq!(state, 2, "success answer expected, got {json}");
    let at = json.find("\"token\": \"").expect("token") + 10;
    let token = json[at..at + 64].to_string();
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    token
}

/// The vector's answer bytes for `case`, with the placeholder token replaced by `token`.
fn vector_answer(case: &str, token: Option<&str>) -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/ocm-tcrp-answers.tsv"
    );
    let text = std::fs::read_to_string(path).expect("read the answers vector");
    let line = text
        .lines()
        .find(|line| line.split('\t').next() == Some(case))
        .unwrap_or_else(|| panic!("no vector {case}"));
    let hex = line.split('\t').nth(2).expect("hex column");
    let mut bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    if let Some(token) = token {
        let placeholder = "ab".repeat(32);
        let at = common::find(&bytes, placeholder.as_bytes()).expect("placeholder token");
        bytes[at..at + 64].copy_from_slice(token.as_bytes());
    }
    bytes
}

type Member = Ocm;

fn new_socket(ip: &str) -> UdpSocket {
    let socket = UdpSocket::bind((ip, 0)).expect("bind UDP");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    socket
}

/// The next datagram `socket` receives, which must come from `relay`.
fn relayed(socket: &UdpSocket, relay: SocketAddr) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let (len, from) = socket.recv_from(&mut buf).expect("a relayed datagram");
    assert_eq!(from, relay);
    buf[..len].to_vec()
}

/// Stops `server`, which must have counted exactly `expected` datagrams dropped as over a
/// limit (`over_limit`).
fn assert_over_limit_drops(server: TestServer, expected: u64) {
    let stats = server.stop();
    assert_eq!(
        stats.datagrams_dropped_by_reason[DatagramDrop::OverLimit.index()],
        expected,
        "{stats}"
    );
}

/// What the others are told when `member` leaves.
fn leave_text(member: &Member) -> String {
    format!("{}が{}{LEAVE_SUFFIX}", member.name, member.room)
}

#[test]
fn a_room_relays_each_line_to_the_other_members_and_closes_when_the_host_leaves() {
    let server = server();
    let host = Member::create(&server, "lobby", "alice");
    let bob = Member::join(&server, "lobby", "bob");
    let carol = Member::join(&server, "lobby", "carol");

    host.say("hello");
    bob.expect("alice: hello");
    carol.expect("alice: hello");
    bob.say("hi alice");
    host.expect("bob: hi alice");
    carol.expect("bob: hi alice");
    carol.say("こんにちは");
    host.expect("carol: こんにちは");
    bob.expect("carol: こんにちは");
    // No line came back to its sender: each one's next datagram above was someone else's,
    // and carol's next is bob's leave text below.

    // A guest leaves: the others are told, and its token no longer works.
    bob.say("exit");
    host.expect(&leave_text(&bob));
    carol.expect(&leave_text(&bob));
    bob.say("still here?");
    carol.say("after bob");
    host.expect("carol: after bob");

    // The host leaves: the room is closed, and its name can be created again.
    host.say("exit");
    carol.expect(&format!(
        "{}\nホストが退出したため、チャットルーム:lobbyを終了します。",
        leave_text(&host)
    ));
    carol.say("anyone?");
    let again = Member::create(&server, "lobby", "dave");
    let erin = Member::join(&server, "lobby", "erin");
    erin.say("new room");
    again.expect("erin: new room");
}

#[test]
fn answers_are_byte_exact_for_every_outcome() {
    let server = server();
    let socket = new_socket("127.0.0.1");
    let addr = socket.local_addr().expect("addr");

    let created = exchange(&server, &request("lobby", 1, &json_payload("alice", addr)));
    let token = token_of(&created);
    assert_eq!(created, vector_answer("success-create", Some(&token)));

    let joined = exchange(&server, &request("lobby", 2, &json_payload("bob", addr)));
    let token = token_of(&joined);
    assert_eq!(joined, vector_answer("success-join", Some(&token)));

    let exists = exchange(&server, &request("lobby", 1, &json_payload("carol", addr)));
    assert_eq!(exists, vector_answer("exists", None));

    let missing = exchange(
        &server,
        &request("nowhere", 2, &json_payload("carol", addr)),
    );
    assert_eq!(missing, vector_answer("missing", None));

    let room = "部屋一";
    exchange(&server, &request(room, 1, &json_payload("dave", addr)));
    let exists = exchange(&server, &request(room, 1, &json_payload("erin", addr)));
    assert_eq!(exists, vector_answer("exists-japanese-room", None));

    // A state that is not a request: malformed, answered 500 with state 3.
    let mut bad = request("x", 1, &json_payload("frank", addr));
    bad[2] = 1;
    assert_eq!(exchange(&server, &bad), vector_answer("malformed", None));
}

#[test]
fn every_token_is_new() {
    let server = server();
    let socket = new_socket("127.0.0.1");
    let addr = socket.local_addr().expect("addr");
    let mut tokens = std::collections::HashSet::new();
    tokens.insert(token_of(&exchange(
        &server,
        &request("r", 1, &json_payload("host", addr)),
    )));
    for i in 0..50 {
        let answer = exchange(
            &server,
            &request("r", 2, &json_payload(&format!("g{i}"), addr)),
        );
        assert!(
            tokens.insert(token_of(&answer)),
            "a token was handed out twice"
        );
    }
}

#[test]
fn a_token_works_only_from_its_own_ip_and_room() {
    let server = server();
    let host = Member::create(&server, "lobby", "alice");
    let bob = Member::join(&server, "lobby", "bob");
    let other_room = Member::create(&server, "other", "zoe");

    // bob's token sent from another loopback address: dropped.
    let elsewhere = new_socket("127.0.0.2");
    elsewhere
        .send_to(&bob.datagram("spoofed"), bob.server)
        .expect("send");
    // zoe's token presented for lobby: dropped.
    let mut wrong_room = other_room.datagram("wrong room");
    wrong_room[0] = 5;
    wrong_room.splice(2..2 + 5, b"lobby".iter().copied());
    host.socket.send_to(&wrong_room, host.server).expect("send");
    // A datagram whose sizes run past its end: dropped.
    host.socket
        .send_to(&[200, 64, b'x'], host.server)
        .expect("send");

    bob.say("genuine");
    host.expect("bob: genuine");
    let stats = server.stop();
    assert!(
        stats.datagrams_dropped_in >= 3,
        "the three bad datagrams are counted: {stats}"
    );
}

#[test]
fn a_silent_member_is_removed_and_told_and_a_silent_host_closes_the_room() {
    let server = server_with(Config {
        ocm_idle_timeout_ms: 300,
        ..Config::for_tests()
    });
    let host = Member::create(&server, "lobby", "alice");
    let bob = Member::join(&server, "lobby", "bob");
    // alice keeps talking; bob stays silent and is removed after the idle limit.
    let removed = leave_text(&bob);
    let mut told_host = false;
    let mut buf = [0u8; 4096];
    host.socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let deadline = std::time::Instant::now() + WAIT;
    while !told_host {
        assert!(
            std::time::Instant::now() < deadline,
            "bob was never removed"
        );
        host.say("tick");
        if let Ok((len, _)) = host.socket.recv_from(&mut buf) {
            assert_eq!(String::from_utf8_lossy(&buf[..len]), removed);
            told_host = true;
        }
    }
    // bob received alice's ticks, then its own leave text.
    let mut buf = [0u8; 4096];
    loop {
        let (len, _) = bob.socket.recv_from(&mut buf).expect("bob is told");
        let text = String::from_utf8_lossy(&buf[..len]).to_string();
        if text == removed {
            break;
        }
        assert_eq!(text, "alice: tick");
    }

    // Now alice falls silent too: she is told, and the room is gone.
    host.socket.set_read_timeout(Some(WAIT)).expect("timeout");
    loop {
        let (len, _) = host.socket.recv_from(&mut buf).expect("alice is told");
        let text = String::from_utf8_lossy(&buf[..len]).to_string();
        if text == leave_text(&host) {
            break;
        }
    }
    let again = Member::create(&server, "lobby", "carol");
    drop(again);
}

#[test]
fn the_stage1_relay_forwards_each_datagram_verbatim_to_the_other_peers() {
    let server = server();
    let relay = server.ocm_relay.expect("relay enabled");
    let peers: Vec<UdpSocket> = (0..3).map(|_| new_socket("127.0.0.1")).collect();
    let recv = |socket: &UdpSocket| relayed(socket, relay);
    // Each peer becomes known by sending; every datagram goes to the peers known before it.
    peers[0].send_to(b"\x05alicehello", relay).expect("send");
    peers[1]
        .send_to(b"plain text from bob", relay)
        .expect("send");
    assert_eq!(recv(&peers[0]), b"plain text from bob");
    peers[2]
        .send_to("\x05carolこんにちは".as_bytes(), relay)
        .expect("send");
    assert_eq!(recv(&peers[0]), "\x05carolこんにちは".as_bytes());
    assert_eq!(recv(&peers[1]), "\x05carolこんにちは".as_bytes());
    peers[0].send_to(b"\x05aliceagain", relay).expect("send");
    assert_eq!(recv(&peers[1]), b"\x05aliceagain");
    assert_eq!(recv(&peers[2]), b"\x05aliceagain");
    // Nothing came back to its sender: peer 0's next datagram is bob's.
    peers[1].send_to(b"last", relay).expect("send");
    assert_eq!(recv(&peers[0]), b"last");
    assert_eq!(recv(&peers[2]), b"last");
}

/// A TCRP request's state byte (2 granted, 3 the 500 answer) and its JSON.
fn tcrp_outcome(server: &TestServer, room: &str, operation: u8, name: &str) -> (u8, String) {
    let udp = new_socket("127.0.0.1").local_addr().expect("addr");
    let (_, _, state, json) = answer_json(&exchange(
        server,
        &request(room, operation, &json_payload(name, udp)),
    ));
    (state, json)
}

/// PROTOCOLS.md OCM TCRP (`--ocm-room-members-max` 1,000, `--ocm-rooms-max` 10,000): a join
/// to a full room and a create on a full server are answered 500, so members and rooms (and
/// the fan-out each datagram costs) stay bounded; a departure makes room again. The rooms
/// per address limit is turned off here so that the server-wide one is what refuses.
#[test]
fn a_full_room_and_a_full_server_answer_500_and_a_departure_makes_room() {
    let server = server_with(Config {
        ocm_room_members_max: 3,
        ocm_rooms_max: 2,
        ocm_rooms_per_ip_max: 0,
        ..Config::for_tests()
    });
    let refused = |(state, json): (u8, String)| {
        assert_eq!(state, 3, "refused expected, got {json}");
        assert!(json.contains("\"status\": 500"), "{json}");
    };
    let host = Member::create(&server, "full", "host");
    let _first = Member::join(&server, "full", "first");
    let second = Member::join(&server, "full", "second");
    refused(tcrp_outcome(&server, "full", 2, "third"));
    // The members are untouched by the refusal.
    second.say("still three");
    host.expect("second: still three");
    second.say("exit");
    host.expect(&leave_text(&second));
    let _third = Member::join(&server, "full", "third");

    // Rooms: "full" and one more fill the server.
    let other_host = Member::create(&server, "other", "oh");
    refused(tcrp_outcome(&server, "third-room", 1, "th"));
    // A join of an existing room is not a new room.
    let guest = Member::join(&server, "other", "guest");
    other_host.say("exit");
    // The host's exit closes its room (the guest is told), freeing a room for the next create.
    guest.expect(&format!(
        "{}\nホストが退出したため、チャットルーム:otherを終了します。",
        leave_text(&other_host)
    ));
    let _again = Member::create(&server, "third-room", "th");
}

/// PROTOCOLS.md stage-1 relay (`--ocm-relay-peers-max` 1,000, `--ocm-relay-peers-per-ip-max`
/// 100): a datagram from a new peer beyond either is dropped and counted (`over_limit`): it
/// reaches nobody and its sender does not become a peer (so gets nothing relayed), while the
/// known peers go on. "Reaches nobody" is an event: a later datagram arrives first.
#[test]
fn relay_peers_beyond_the_per_ip_and_total_caps_are_dropped_and_counted() {
    let server = server_with(Config {
        ocm_relay_peers_max: 3,
        ocm_relay_peers_per_ip_max: 2,
        ..Config::for_tests()
    });
    let relay = server.ocm_relay.expect("relay enabled");
    let recv = |socket: &UdpSocket| relayed(socket, relay);
    let local: Vec<UdpSocket> = (0..3).map(|_| new_socket("127.0.0.1")).collect();
    local[0].send_to(b"a0", relay).expect("send");
    local[1].send_to(b"a1", relay).expect("send");
    assert_eq!(recv(&local[0]), b"a1");
    // A third peer from 127.0.0.1: over the per-IP cap.
    local[2]
        .send_to(b"a2 over the per-ip cap", relay)
        .expect("send");
    local[1].send_to(b"a1 again", relay).expect("send");
    assert_eq!(
        recv(&local[0]),
        b"a1 again",
        "the over-cap datagram was relayed"
    );
    // Another address still has room: the third peer in all.
    let elsewhere = new_socket("127.0.0.2");
    elsewhere.send_to(b"b0", relay).expect("send");
    assert_eq!(recv(&local[0]), b"b0");
    assert_eq!(recv(&local[1]), b"b0");
    // A fourth address: over the total cap.
    let fourth = new_socket("127.0.0.3");
    fourth
        .send_to(b"c0 over the total cap", relay)
        .expect("send");
    local[0].send_to(b"a0 last", relay).expect("send");
    assert_eq!(
        recv(&local[1]),
        b"a0 last",
        "the over-cap datagram was relayed"
    );
    assert_eq!(recv(&elsewhere), b"a0 last");
    // Both refusals counted as such, not as any other drop.
    assert_over_limit_drops(server, 2);
}

/// README `--udp-sources-max` (65,536): the table of rate-tracked source addresses per UDP
/// socket is bounded; while every tracked source is active (its bucket not full again), a
/// datagram from a new source is dropped and counted (`over_limit`) before any protocol sees
/// it; once a tracked source has been quiet long enough for its bucket to refill, a new
/// source takes its place. Over the relay socket, with a slow rate (1 a second, burst 5) so
/// that "active" lasts a second.
#[test]
fn a_full_table_of_rate_tracked_sources_drops_new_sources_until_one_goes_quiet() {
    let server = server_with(Config {
        udp_datagrams_per_source_per_s_max: 1,
        udp_datagrams_per_source_burst_max: 5,
        udp_sources_max: 2,
        ..Config::for_tests()
    });
    let relay = server.ocm_relay.expect("relay enabled");
    let recv = |socket: &UdpSocket| relayed(socket, relay);
    let first = new_socket("127.0.0.1");
    let second = new_socket("127.0.0.1");
    let newcomer = new_socket("127.0.0.1");
    first.send_to(b"a", relay).expect("send");
    second.send_to(b"b", relay).expect("send");
    assert_eq!(recv(&first), b"b");
    // Both tracked sources are active: the newcomer is dropped before the relay sees it.
    newcomer.send_to(b"c: table full", relay).expect("send");
    second.send_to(b"d", relay).expect("send");
    assert_eq!(recv(&first), b"d", "the newcomer's datagram was relayed");
    // A second later both buckets are full again: the newcomer's source takes a slot.
    std::thread::sleep(Duration::from_millis(1200));
    newcomer.send_to(b"e", relay).expect("send");
    assert_eq!(recv(&first), b"e");
    assert_eq!(recv(&second), b"e");
    assert_over_limit_drops(server, 1);
}

/// README `--ocm-room-silent-timeout-ms` (120,000) and PROTOCOLS.md OCM: a room none of whose
/// members sent an accepted datagram that long after its creation is closed (its members get
/// the host's leave text, its name is free), never before; a room someone spoke in stays. So
/// rooms created and abandoned do not hold a slot (of `--ocm-rooms-max` and the creator's
/// `--ocm-rooms-per-ip-max`) for the whole idle time.
#[test]
fn a_room_nobody_speaks_in_is_closed_at_the_silent_timeout_and_a_spoken_one_stays() {
    const SILENT_MS: u64 = 300;
    let server = server_with(Config {
        ocm_room_silent_timeout_ms: SILENT_MS,
        ..Config::for_tests()
    });
    let created = std::time::Instant::now();
    let quiet_host = Member::create(&server, "quiet", "qh");
    let quiet_guest = Member::join(&server, "quiet", "qg");
    let spoken_host = Member::create(&server, "spoken", "sh");
    let spoken_guest = Member::join(&server, "spoken", "sg");
    spoken_guest.say("hello");
    spoken_host.expect("sg: hello");

    quiet_guest.expect(&format!(
        "{}\nホストが退出したため、チャットルーム:quietを終了します。",
        leave_text(&quiet_host)
    ));
    let closed_after = created.elapsed();
    assert!(
        closed_after >= Duration::from_millis(SILENT_MS),
        "closed {closed_after:?} after its creation, before {SILENT_MS} ms"
    );
    // Its name is free again: a create succeeds (it would be answered 400 while it exists).
    let _again = Member::create(&server, "quiet", "qh2");
    // The spoken room outlived the timeout: it is still there to join, and still relays.
    std::thread::sleep(Duration::from_millis(SILENT_MS));
    let late = Member::join(&server, "spoken", "late");
    spoken_host.say("still open");
    late.expect("sh: still open");
}
