//! OCM rooms across cluster nodes (issue 21) over a real Redis: a `redis-server` this test
//! starts (free port, no persistence, its own directory; killed on drop) and real `chatd`
//! nodes joined to it with `--cluster`. Members create and join over one node's TCRP and chat
//! over UDP, to their own node or to another one (as `--reuse-port` may make the kernel do).
//!
//! Without `redis-server` on the PATH the tests say so and return; under `CI=true` they fail
//! (`common::cannot_run`).
//!
//! Requests and datagrams are built by hand from the contract (tests/common/ocm.rs), not with
//! the library's codec. "Nothing else arrived" is checked by a later datagram arriving first
//! (UDP on loopback, one socket sending in order), not by a timed silence.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;
mod redisd;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatd::Chatd;
use common::ocm::tcrp_request;
use common::{Client, WAIT};
use redisd::{metric, node_at, Redis};

const OCM: &[&str] = &["--ocm-tcp-port", "--ocm-udp-port"];

/// An OCM node joined to `redis` as `name`, once its subscription is confirmed.
fn node(redis: &Redis, name: &str, extra: &[&str]) -> Chatd {
    redis.node(name, OCM, extra)
}

/// The OCM rooms thread's metrics named in `expected` (series with labels, value), once
/// they all have those values (a look-up's count may follow the datagram it served).
fn expect_ocm_metrics(node: &mut Chatd, expected: &[(&str, f64)]) {
    let mut seen = Vec::new();
    let reached = eventually(|| {
        seen = expected
            .iter()
            .map(|(series, _)| metric(node, series))
            .collect();
        seen.iter()
            .zip(expected)
            .all(|(value, (_, want))| value == want)
    });
    assert!(reached, "expected {expected:?}, saw {seen:?}");
}

fn tcrp(node: &Chatd) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.port("--ocm-tcp-port")))
}

fn udp(node: &Chatd) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.port("--ocm-udp-port")))
}

/// A TCRP answer: its state byte and its JSON.
fn request(
    at: SocketAddr,
    operation: u8,
    room: &str,
    name: &str,
    chat: SocketAddr,
) -> (u8, String) {
    let mut tcp = TcpStream::connect(at).expect("connect TCRP");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp.write_all(&tcrp_request(room, operation, name, chat))
        .expect("send the request");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).expect("answered, then closed");
    assert!(answer.len() > 32, "{name}: a whole answer: {answer:?}");
    (
        answer[2],
        String::from_utf8_lossy(&answer[32..]).into_owned(),
    )
}

/// A member: its socket, its room and token, and the node whose socket speaks to it.
struct Member {
    name: String,
    room: String,
    token: String,
    socket: UdpSocket,
    /// Its node's chat socket: what it receives comes from there.
    home: SocketAddr,
}

impl Member {
    /// Created (`operation` 1) or joined (2) through `node`'s TCRP; granted.
    fn enter(node: &Chatd, operation: u8, room: &str, name: &str) -> Member {
        Member::try_enter(node, operation, room, name)
            .unwrap_or_else(|(state, json)| panic!("{name}: granted expected, got {state}: {json}"))
    }

    /// As [`Member::enter`]; the answer's state and JSON when refused.
    fn try_enter(
        node: &Chatd,
        operation: u8,
        room: &str,
        name: &str,
    ) -> Result<Member, (u8, String)> {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        let (state, json) = request(
            tcrp(node),
            operation,
            room,
            name,
            socket.local_addr().unwrap(),
        );
        if state != 2 {
            return Err((state, json));
        }
        let at = json.find("\"token\": \"").expect("a token") + 10;
        Ok(Member {
            name: name.to_string(),
            room: room.to_string(),
            token: json[at..at + 64].to_string(),
            socket,
            home: udp(node),
        })
    }

    fn create(node: &Chatd, room: &str, name: &str) -> Member {
        Member::enter(node, 1, room, name)
    }

    fn join(node: &Chatd, room: &str, name: &str) -> Member {
        Member::enter(node, 2, room, name)
    }

    fn datagram(&self, message: &str) -> Vec<u8> {
        let mut bytes = vec![self.room.len() as u8, self.token.len() as u8];
        bytes.extend_from_slice(self.room.as_bytes());
        bytes.extend_from_slice(self.token.as_bytes());
        bytes.extend_from_slice(message.as_bytes());
        bytes
    }

    /// Says `message` to its own node.
    fn say(&self, message: &str) {
        self.say_to(self.home, message);
    }

    /// Says `message` to the chat socket at `to` (another node's, maybe).
    fn say_to(&self, to: SocketAddr, message: &str) {
        self.socket
            .send_to(&self.datagram(message), to)
            .expect("send a datagram");
    }

    /// The next datagram must be exactly `expected`, from its node's socket.
    fn expect(&self, expected: &str) {
        let mut buf = [0u8; 65536];
        let (len, from) = self.socket.recv_from(&mut buf).unwrap_or_else(|err| {
            panic!(
                "{}: nothing arrived while waiting for {expected:?}: {err}",
                self.name
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&buf[..len]),
            expected,
            "{}: unexpected datagram",
            self.name
        );
        assert_eq!(from, self.home, "{}: not from its node's socket", self.name);
    }
}

fn leave_text(name: &str, room: &str) -> String {
    format!("{name}が{room}から退出しました。")
}

fn host_leave_text(name: &str, room: &str) -> String {
    format!(
        "{name}が{room}から退出しました。\nホストが退出したため、チャットルーム:{room}を終了します。"
    )
}

/// A 400 answer's JSON, as Python's `json.dumps` writes it (non-ASCII as `\uXXXX`).
fn refused_json(message: &str) -> String {
    let escaped: String = message
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\u{:04x}", c as u32)
            }
        })
        .collect();
    format!("{{\"status\": 400, \"message\": \"{escaped}\"}}")
}

fn chat_socket() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

/// Retries `attempt` (every 10 ms) until it is true; false after `WAIT`.
fn eventually(mut attempt: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if attempt() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A room created through A's TCRP is joined through B's; chat said to either node reaches
/// the members of both, each from its own node's socket; Redis's refusals apply across nodes
/// (the room exists, the name is taken in the room, no such room).
#[test]
fn a_room_created_on_one_node_is_joined_on_another_and_chat_crosses_both_ways() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let ana = Member::create(&a, "sala", "ana");
    let bob = Member::join(&b, "sala", "bob");
    let cid = Member::join(&a, "sala", "cid");

    ana.say("oi");
    bob.expect("ana: oi");
    cid.expect("ana: oi");
    bob.say("hello");
    ana.expect("bob: hello");
    cid.expect("bob: hello");
    cid.say("やあ");
    ana.expect("cid: やあ");
    bob.expect("cid: やあ");

    // Each node's refusals are Redis's: the room exists on A, ana is a member through A.
    let (state, json) = request(tcrp(&b), 1, "sala", "dan", chat_socket());
    assert_eq!(
        (state, json),
        (0, refused_json("部屋 sala はすでに存在します"))
    );
    let (state, json) = request(tcrp(&b), 2, "sala", "ana", chat_socket());
    assert_eq!(
        (state, json.contains("\"status\": 500")),
        (3, true),
        "{json}"
    );
    let (state, json) = request(tcrp(&b), 2, "nada", "dan", chat_socket());
    assert_eq!((state, json), (0, refused_json("部屋 nada は存在しません")));
    // Nothing else reached anyone: the next line is the next datagram for each.
    ana.say("still");
    bob.expect("ana: still");
    cid.expect("ana: still");

    // B asked Redis three joins (bob's; ana's name, taken; "nada", missing); the create of a
    // room B has a view of was refused by B itself. A asked a create and a join.
    let mut b = b;
    expect_ocm_metrics(
        &mut b,
        &[
            (
                "chatd_cluster_ocm_requests_total{operation=\"create\"}",
                0.0,
            ),
            ("chatd_cluster_ocm_requests_total{operation=\"join\"}", 3.0),
            ("chatd_cluster_ocm_refusals_total{reason=\"exists\"}", 0.0),
            (
                "chatd_cluster_ocm_refusals_total{reason=\"name_taken\"}",
                1.0,
            ),
            ("chatd_cluster_ocm_refusals_total{reason=\"missing\"}", 1.0),
            ("chatd_cluster_ocm_refusals_total{reason=\"full\"}", 0.0),
            (
                "chatd_cluster_ocm_refusals_total{reason=\"unavailable\"}",
                0.0,
            ),
            ("chatd_cluster_ocm_lookups_total{outcome=\"found\"}", 0.0),
            ("chatd_cluster_ocm_link_down", 0.0),
        ],
    );
    let mut a = a;
    expect_ocm_metrics(
        &mut a,
        &[
            (
                "chatd_cluster_ocm_requests_total{operation=\"create\"}",
                1.0,
            ),
            ("chatd_cluster_ocm_requests_total{operation=\"join\"}", 1.0),
            (
                "chatd_cluster_ocm_refusals_total{reason=\"name_taken\"}",
                0.0,
            ),
        ],
    );
}

/// A datagram reaches a node that did not issue its token (with `--reuse-port` the kernel
/// may pick any node): that node looks the token up, serves it (its own members get the line
/// from it) and passes it on (the home node's members from theirs); the token stays bound to
/// its IP there too, and a token nobody issued is dropped.
#[test]
fn a_token_is_checked_by_whichever_node_the_datagram_reaches() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let ana = Member::create(&a, "sala", "ana");
    let bob = Member::join(&b, "sala", "bob");
    let cid = Member::join(&a, "sala", "cid");

    // ana's token (A's) to B, twice: looked up once, then from B's cache.
    ana.say_to(udp(&b), "via b");
    bob.expect("ana: via b");
    cid.expect("ana: via b");
    ana.say_to(udp(&b), "again");
    bob.expect("ana: again");
    cid.expect("ana: again");
    // bob's token (B's) to A: the same, the other way.
    bob.say_to(udp(&a), "via a");
    ana.expect("bob: via a");
    cid.expect("bob: via a");

    // ana's token from another IP (127.0.0.2) is refused at B as at A; a made-up token too.
    let elsewhere = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    elsewhere
        .send_to(&ana.datagram("spoofed"), udp(&b))
        .unwrap();
    let mut forged = ana.datagram("forged");
    let at = 2 + "sala".len();
    forged[at..at + 64].copy_from_slice(&[b'0'; 64]);
    ana.socket.send_to(&forged, udp(&b)).unwrap();
    bob.socket.send_to(&forged, udp(&b)).unwrap();
    // Sent after them, from B: the next thing anyone receives.
    bob.say_to(udp(&b), "after");
    ana.expect("bob: after");
    cid.expect("bob: after");

    // B looked up ana's token once (then it was cached), A bob's; the made-up token is
    // unknown (looked up once or twice: an unknown token is not cached). Its lookup goes to
    // Redis while bob's "after", a token B issued, is served at once: wait for the count.
    let (mut a, mut b) = (a, b);
    expect_ocm_metrics(
        &mut b,
        &[
            ("chatd_cluster_ocm_lookups_total{outcome=\"found\"}", 1.0),
            ("chatd_cluster_ocm_lookups_total{outcome=\"failed\"}", 0.0),
        ],
    );
    let unknown = "chatd_cluster_ocm_lookups_total{outcome=\"unknown\"}";
    assert!(
        eventually(|| metric(&mut b, unknown) >= 1.0),
        "the made-up token was never looked up: {}",
        metric(&mut b, unknown)
    );
    expect_ocm_metrics(
        &mut a,
        &[
            ("chatd_cluster_ocm_lookups_total{outcome=\"found\"}", 1.0),
            ("chatd_cluster_ocm_lookups_total{outcome=\"unknown\"}", 0.0),
        ],
    );
}

/// The host's exit closes the room on every node, whichever node the exit reaches: every
/// member is told as the protocol tells them, their tokens are dead, and the name is free
/// again across the cluster. A guest's exit is told to the others on every node.
#[test]
fn the_hosts_exit_closes_the_room_on_every_node() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let ana = Member::create(&a, "sala", "ana");
    let bob = Member::join(&b, "sala", "bob");
    let cid = Member::join(&a, "sala", "cid");
    let dan = Member::join(&b, "sala", "dan");

    // A guest leaves through the other node's socket.
    dan.say_to(udp(&a), "exit");
    for member in [&ana, &bob, &cid] {
        member.expect(&leave_text("dan", "sala"));
    }

    ana.say("exit");
    bob.expect(&host_leave_text("ana", "sala"));
    cid.expect(&host_leave_text("ana", "sala"));
    // The room is gone everywhere: its name is free on B (once Redis has the close).
    let mut eve = None;
    assert!(
        eventually(|| {
            eve = Member::try_enter(&b, 1, "sala", "eve").ok();
            eve.is_some()
        }),
        "the room's name was not free again on B"
    );
    let eve = eve.unwrap();
    let fay = Member::join(&a, "sala", "fay");
    // The old room's tokens speak to nobody, on either node, in the new room of that name.
    for node in [&a, &b] {
        bob.say_to(udp(node), "ghost");
        cid.say_to(udp(node), "ghost");
    }
    fay.say("after");
    eve.expect("fay: after");
    eve.say_to(udp(&a), "hi fay");
    fay.expect("eve: hi fay");
    // Their names were freed with the old room.
    let _bob_again = Member::join(&a, "sala", "bob");
}

/// The host exit of a room hosted on B, sent to A (A looked the token up): closed on both.
#[test]
fn a_hosts_exit_through_the_other_node_closes_the_room() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let hal = Member::create(&b, "quarto", "hal");
    let ivy = Member::join(&a, "quarto", "ivy");
    let joe = Member::join(&b, "quarto", "joe");
    hal.say_to(udp(&a), "exit");
    ivy.expect(&host_leave_text("hal", "quarto"));
    joe.expect(&host_leave_text("hal", "quarto"));
    assert!(
        eventually(|| request(tcrp(&a), 1, "quarto", "kim", chat_socket()).0 == 2),
        "the room's name was not free again"
    );
}

/// A node killed with SIGKILL: the rooms it hosted close on the other node (their members
/// there get the host's leave text), its members of rooms hosted elsewhere leave (the
/// others get their leave text), within a lease and a quarter (docs/CLUSTER.md: the lapse is
/// checked within the lease, and the check may wait behind one command's deadline, a quarter
/// lease); the survivor's own rooms go on.
#[test]
fn a_killed_nodes_rooms_close_and_its_members_leave_within_a_lease_and_a_quarter() {
    let Some(redis) = Redis::start() else {
        return;
    };
    const LEASE_MS: u64 = 500;
    let lease = ["--cluster-lease-ms", "500"];
    let a = node(&redis, "node-a", &lease);
    let b = node(&redis, "node-b", &lease);
    let ana = Member::create(&b, "on-b", "ana");
    let bob = Member::join(&a, "on-b", "bob");
    let cid = Member::create(&a, "on-a", "cid");
    let dan = Member::join(&b, "on-a", "dan");
    let eve = Member::join(&a, "on-a", "eve");
    // Both rooms span both nodes: a line each way shows it.
    ana.say("hi");
    bob.expect("ana: hi");
    dan.say("hi");
    cid.expect("dan: hi");
    eve.expect("dan: hi");

    drop(b);
    let killed = Instant::now();
    bob.expect(&host_leave_text("ana", "on-b"));
    cid.expect(&leave_text("dan", "on-a"));
    eve.expect(&leave_text("dan", "on-a"));
    let took = killed.elapsed();
    eprintln!(
        "a killed node's OCM members gone {} ms after the kill",
        took.as_millis()
    );
    assert!(
        took < Duration::from_millis(LEASE_MS * 5 / 4),
        "{} ms after the kill",
        took.as_millis()
    );
    // A goes on: its own room serves, and dan's name is free in it again once its entry
    // expires (three quarters of a lease after B's last renewal: about when A saw the lapse).
    cid.say("still");
    eve.expect("cid: still");
    assert!(
        eventually(|| request(tcrp(&a), 2, "on-a", "dan", chat_socket()).0 == 2),
        "dan's name was not free again"
    );
    assert!(killed.elapsed() < Duration::from_millis(3 * LEASE_MS));
    drop((ana, dan));
}

/// Redis frozen (SIGSTOP): a create or join cannot be confirmed, so it is refused with the
/// contract's 500 within the wait (the lease: docs/CLUSTER.md, "No answer within the lease"),
/// never a room of this node alone; the node goes on serving its members meanwhile. After
/// SIGCONT rooms are created and joined again.
#[test]
fn while_redis_is_frozen_requests_are_refused_and_local_chat_goes_on() {
    let Some(redis) = Redis::start() else {
        return;
    };
    const LEASE_MS: u64 = 500;
    let lease = ["--cluster-lease-ms", "500"];
    let mut a = node(&redis, "node-a", &lease);
    let mut b = node(&redis, "node-b", &lease);
    let ana = Member::create(&a, "sala", "ana");
    let cid = Member::join(&a, "sala", "cid");
    let bob = Member::join(&b, "sala", "bob");

    redis.signal("-STOP");
    let asked = Instant::now();
    let (state, json) = request(tcrp(&a), 1, "nova", "dan", chat_socket());
    assert_eq!(state, 3, "refused while Redis is frozen: {json}");
    assert!(json.contains("\"status\": 500"), "{json}");
    let refused = asked.elapsed();
    eprintln!(
        "refused {} ms after the request (lease {LEASE_MS} ms)",
        refused.as_millis()
    );
    // The OCM thread's command deadline (a quarter lease) finds the frozen Redis; the
    // service's own wait (the lease) is only the backstop, so a refusal at or past the lease
    // means the command deadline did not work (with it broken: refused after 505 ms).
    assert!(
        refused < Duration::from_millis(LEASE_MS),
        "refused after {} ms, promised within the lease ({LEASE_MS} ms)",
        refused.as_millis()
    );
    let (state, _) = request(tcrp(&b), 2, "sala", "eve", chat_socket());
    assert_eq!(state, 3, "a join is refused too");
    expect_ocm_metrics(
        &mut a,
        &[(
            "chatd_cluster_ocm_refusals_total{reason=\"unavailable\"}",
            1.0,
        )],
    );
    // A's own members still hear each other.
    ana.say("local");
    cid.expect("ana: local");

    redis.signal("-CONT");
    a.stderr
        .wait_for("cluster: the OCM rooms thread's link to Redis is back after");
    // Every link that noticed the freeze comes back on its own reconnect delay, A's OCM
    // thread's in no order with B's (whose refused join took it down too), nor with A's
    // subscription (lost to its PING deadline; a line B says before it is back never reaches
    // A) nor A's publisher (lost with "ana: local" unanswered; stale, it drops what it is
    // given until it is back): wait for all of them on both nodes.
    for node in [&mut a, &mut b] {
        redisd::wait_links_up(node);
    }
    // The refused create made nothing anywhere: the name is free, on B too.
    let dan = Member::create(&b, "nova", "dan");
    let fay = Member::join(&a, "nova", "fay");
    dan.say("ok");
    fay.expect("dan: ok");
    // The old room spans the nodes again (a line said while frozen may or may not cross).
    let mut buf = [0u8; 4096];
    ana.say("back");
    loop {
        let (len, _) = bob.socket.recv_from(&mut buf).expect("bob hears ana again");
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text == "ana: back" {
            break;
        }
        assert_eq!(
            text, "ana: local",
            "only the line said while frozen may come first"
        );
    }
}

/// Redis killed and started again, empty: each node sets its rooms, names and tokens again,
/// so a room made before is joined through the other node again, and a token is checked by
/// the other node again.
#[test]
fn after_redis_restarts_empty_the_rooms_and_tokens_are_set_again() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let lease = ["--cluster-lease-ms", "500"];
    let mut a = node(&redis, "node-a", &lease);
    let mut b = node(&redis, "node-b", &lease);
    let ana = Member::create(&a, "sala", "ana");
    let bob = Member::join(&b, "sala", "bob");

    redis.kill();
    redis.start_again();
    for node in [&mut a, &mut b] {
        node.stderr
            .wait_for("cluster: the OCM rooms thread's link to Redis is back after");
        node.stderr
            .wait_for("cluster: the subscriber's link to Redis is back after");
    }
    // Those lines may be older than the kill (a renewal over its deadline, a quarter lease
    // here, on a loaded machine, is a lost link too), so waiting for them may not wait at
    // all. A's renewal sets the room, then ana's entry in its members with her token (one
    // script): once that entry is back, so are the others.
    assert!(
        eventually(|| redis.query_int(&[b"HEXISTS", b"switchboard:ocm:members:sala", b"ana"]) == 1),
        "A never set its records again"
    );
    // Renewed on A's reconnect: the room is there for B's join, ana's name is taken in it.
    let cid = Member::join(&b, "sala", "cid");
    let (state, _) = request(tcrp(&b), 2, "sala", "ana", chat_socket());
    assert_eq!(state, 3, "ana's name is still taken in the room");
    // B has never seen ana's token: it looks it up in the restored records.
    ana.say_to(udp(&b), "restored");
    bob.expect("ana: restored");
    cid.expect("ana: restored");
}

/// The OCM lobby room spans the nodes too: its lines also go to the lobby (`Said`), which
/// brings them to the other node's members of that room, so the room's own event must not
/// bring them again: each line arrives once.
#[test]
fn a_lobby_room_line_reaches_the_other_nodes_members_once() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let ana = Member::create(&a, "lobby", "ana");
    let bob = Member::join(&b, "lobby", "bob");
    let cid = Member::join(&a, "lobby", "cid");
    ana.say("one");
    bob.expect("ana: one");
    cid.expect("ana: one");
    bob.say("two");
    // Were "ana: one" delivered twice, bob's or ana's next datagram would not be these.
    ana.expect("bob: two");
    cid.expect("bob: two");
    ana.say("three");
    bob.expect("ana: three");
}

/// A line of the lobby room said through the node that is not its sender's (as
/// `--reuse-port` may make the kernel do) reaches every lobby member of every protocol on
/// every node once, as a line said to the sender's own node does: the OCM members of the
/// room on both nodes and the ROOM users on both. (Before, the ROOM users got nothing.)
#[test]
fn a_lobby_room_line_through_the_other_node_reaches_every_protocols_lobby_once() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let ports = &["--ocm-tcp-port", "--ocm-udp-port", "--room-port"];
    let mut a = node_at(&redis.url(), "node-a", ports, &[]);
    let mut b = node_at(&redis.url(), "node-b", ports, &[]);
    let ana = Member::create(&a, "lobby", "ana");
    let bob = Member::join(&b, "lobby", "bob");
    let cid = Member::join(&a, "lobby", "cid");
    // The OCM members' arrivals in the lobby have reached the other node before the ROOM
    // users come (who would be told of a late one).
    for (node, others) in [(&mut a, 1.0), (&mut b, 2.0)] {
        assert!(eventually(|| metric(
            node,
            "chatd_cluster_remote_lobby_members"
        ) == others));
    }
    let room = |node: &Chatd| SocketAddr::from(([127, 0, 0, 1], node.port("--room-port")));
    let mut rui = Client::join(room(&a), "rui");
    assert!(eventually(|| metric(
        &mut b,
        "chatd_cluster_remote_lobby_members"
    ) == 3.0));
    let mut rob = Client::join(room(&b), "rob");
    rui.expect(b"b'rob' esta conectado ao chat");

    // Each line once everyone has the one before (a line to B is served a Redis round trip
    // after one to A: said back to back, they could cross).
    for (to, line) in [(udp(&a), "at home"), (udp(&b), "via b")] {
        ana.say_to(to, line);
        let line = format!("ana: {line}");
        bob.expect(&line);
        cid.expect(&line);
        rui.expect(line.as_bytes());
        rob.expect(line.as_bytes());
    }
    // Each once: the next line said is the next thing each receives.
    cid.say("end");
    ana.expect("cid: end");
    bob.expect("cid: end");
    rui.expect(b"cid: end");
    rob.expect(b"cid: end");
}

/// The documented loss (docs/CLUSTER.md, "A lobby-room line said through another node"): a
/// line of the lobby room whose datagram reaches a node other than its sender's home node is
/// said to the lobby by the home node alone, so while that home node is dead and not yet
/// taken for dead (SIGKILL here, 500 ms lease), the line is heard by nobody: the next thing
/// every lobby member on the surviving node gets is the sender's leave, not the line.
#[test]
fn a_lobby_room_line_through_another_node_is_lost_while_its_home_node_is_dead() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let ports = &["--ocm-tcp-port", "--ocm-udp-port", "--room-port"];
    let lease = ["--cluster-lease-ms", "500"];
    let a = node_at(&redis.url(), "node-a", ports, &lease);
    let mut b = node_at(&redis.url(), "node-b", ports, &lease);
    // The lobby room is hosted on B (it outlives A); ana's home is A.
    let bob = Member::create(&b, "lobby", "bob");
    let ana = Member::join(&a, "lobby", "ana");
    let cid = Member::join(&b, "lobby", "cid");
    assert!(eventually(|| metric(
        &mut b,
        "chatd_cluster_remote_lobby_members"
    ) == 1.0));
    let mut rob = Client::join(
        SocketAddr::from(([127, 0, 0, 1], b.port("--room-port"))),
        "rob",
    );
    // Through B while A lives: everyone on B hears it (and B now knows ana's token).
    ana.say_to(udp(&b), "via b");
    bob.expect("ana: via b");
    cid.expect("ana: via b");
    rob.expect(b"ana: via b");

    drop(a); // SIGKILL, reaped: ana's home is gone, and B has not taken it for dead yet
    ana.say_to(udp(&b), "lost");
    // B took the line (ana's token, her address) and left it to her home node, which is
    // dead: the next thing each hears is her leave once B takes A for dead.
    bob.expect(&leave_text("ana", "lobby"));
    cid.expect(&leave_text("ana", "lobby"));
    rob.expect(b"b'ana' acabou de sair do chat!");
    // Nothing else is on its way: the next line said is the next thing each receives.
    cid.say("end");
    bob.expect("cid: end");
    rob.expect(b"cid: end");
}

/// A TCP proxy in front of Redis for one node: `cut` closes every connection through it and
/// refuses new ones (accepted and closed at once) until `restore`. Its threads end with the
/// test process.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(redis: &Redis) -> Proxy {
        let to = SocketAddr::from(([127, 0, 0, 1], redis.port));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            cut: Arc::new(AtomicBool::new(false)),
            streams: Arc::new(Mutex::new(Vec::new())),
        };
        let (cut, streams) = (Arc::clone(&proxy.cut), Arc::clone(&proxy.streams));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let mut held = streams.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// A member that joined through B while A was cut off from Redis (its `joined` event never
/// reached A) is read from Redis when A's subscriber is back, so when B dies A's member of
/// the room is told that it left. (Before, A did not know it, and told nothing.)
#[test]
fn a_member_that_joined_while_a_node_was_cut_off_is_announced_gone_with_its_node() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let proxy = Proxy::start(&redis);
    let lease = ["--cluster-lease-ms", "2000"];
    let mut a = node_at(&proxy.url(), "node-a", OCM, &lease);
    let mut b = node_at(&redis.url(), "node-b", OCM, &lease);
    let ana = Member::create(&a, "sala", "ana");
    let published = metric(&mut b, "chatd_cluster_events_published_total");

    proxy.cut();
    // A is cut off for this join only (well within its lease: B does not take A for dead),
    // until B has published it (`joined`), so that A cannot have heard of it.
    let bob = Member::join(&b, "sala", "bob");
    assert!(
        eventually(|| metric(&mut b, "chatd_cluster_events_published_total") > published),
        "B did not publish bob's joining"
    );
    proxy.restore();
    a.stderr
        .wait_for("cluster: the subscriber's link to Redis is back after");
    a.stderr.wait_for(
        "cluster: OCM room \"sala\": 1 member(s) of other nodes missed while cut off, read from Redis",
    );
    // A and B still span the room: bob's line reaches ana.
    bob.say("oi");
    ana.expect("bob: oi");

    drop(b);
    ana.expect(&leave_text("bob", "sala"));
}

/// A member of B that left while A was cut off from Redis (B's `left` never reached A) is
/// told gone to A's members once A is back: A's read of the room finds Redis no longer lists
/// him. Once, and only him: dan, still there, is not, and his line comes next. (Before, A
/// told nothing until B died.) The bound (docs/CLUSTER.md): both of A's links back (each
/// reconnects within its delay, at most 2 s) and a quarter lease; here the cut is short.
#[test]
fn a_member_that_left_while_a_node_was_cut_off_is_told_gone_when_it_is_back() {
    let Some(redis) = Redis::start() else {
        return;
    };
    const LEASE_MS: u64 = 2000;
    let proxy = Proxy::start(&redis);
    let lease = ["--cluster-lease-ms", "2000"];
    let mut a = node_at(&proxy.url(), "node-a", OCM, &lease);
    let mut b = node_at(&redis.url(), "node-b", OCM, &lease);
    let ana = Member::create(&a, "sala", "ana");
    let bob = Member::join(&b, "sala", "bob");
    let dan = Member::join(&b, "sala", "dan");
    // Their lines follow their `joined` on B's one publishing connection: A knows both.
    bob.say("oi");
    ana.expect("bob: oi");
    dan.expect("bob: oi");
    dan.say("oi");
    ana.expect("dan: oi");
    let published = metric(&mut b, "chatd_cluster_events_published_total");

    proxy.cut();
    bob.say("exit");
    assert!(
        eventually(|| metric(&mut b, "chatd_cluster_events_published_total") > published),
        "B did not publish bob's leaving"
    );
    assert!(
        eventually(|| redis.query_int(&[b"HEXISTS", b"switchboard:ocm:members:sala", b"bob"]) == 0),
        "bob's leave did not reach Redis"
    );
    dan.expect(&leave_text("bob", "sala"));
    proxy.restore();
    let back = Instant::now();
    ana.expect(&leave_text("bob", "sala"));
    let took = back.elapsed();
    a.stderr.wait_for(
        "cluster: OCM room \"sala\": 1 member(s) of other nodes left while cut off, read from Redis",
    );
    eprintln!("bob's leave told to ana {took:?} after A's link was restored");
    assert!(
        took < Duration::from_millis(2 * 2000 + LEASE_MS / 4),
        "told {took:?} after the link was back"
    );
    // Nothing else on its way (no second leave, dan not taken for gone): dan's line is next.
    dan.say("end");
    ana.expect("dan: end");
}

/// A room hosted on B whose host left while A was cut off (B's `closed` never reached A) is
/// closed on A once A is back: A's read finds no such room in Redis, and B's records are all
/// there, so ana is told the host's leave, as a close is told. (Before, A kept the room until
/// B died.)
#[test]
fn a_room_closed_while_a_node_was_cut_off_is_closed_there_when_it_is_back() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let proxy = Proxy::start(&redis);
    let lease = ["--cluster-lease-ms", "2000"];
    let mut a = node_at(&proxy.url(), "node-a", OCM, &lease);
    let b = node_at(&redis.url(), "node-b", OCM, &lease);
    let bob = Member::create(&b, "sala", "bob");
    let ana = Member::join(&a, "sala", "ana");

    proxy.cut();
    bob.say("exit");
    assert!(
        eventually(|| redis.query_int(&[b"EXISTS", b"switchboard:ocm:room:sala"]) == 0),
        "bob's close did not reach Redis"
    );
    proxy.restore();
    ana.expect(&host_leave_text("bob", "sala"));
    a.stderr.wait_for(
        "cluster: OCM room \"sala\": closed on its host's node while this node was cut off, read from Redis",
    );
    // A no longer holds the room: its name is free through A too.
    let eve = Member::create(&a, "sala", "eve");
    let fay = Member::join(&b, "sala", "fay");
    eve.say("oi");
    fay.expect("eve: oi");
}

/// `flags` limit the rooms to `fits`: that many rooms created through A and B alternately
/// fit, one more is refused with the contract's 500 through either node, and once one room
/// closes (its host's exit) one more fits again.
fn room_limits_count_every_nodes_rooms(flags: &[&str], fits: usize) {
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", flags);
    let b = node(&redis, "node-b", flags);
    let nodes = [&a, &b];
    let hosts: Vec<Member> = (0..fits)
        .map(|i| Member::create(nodes[i % 2], &format!("room-{i}"), &format!("host-{i}")))
        .collect();
    for node in nodes {
        let (state, json) = Member::try_enter(node, 1, "one-more", "eve")
            .err()
            .expect("one room too many");
        assert_eq!(state, 3, "{json}");
        assert!(json.contains("\"status\": 500"), "{json}");
    }
    hosts[0].say("exit");
    // Once the host's node has closed its room in Redis, through the other node.
    let other = nodes[(fits + 1) % 2];
    assert!(
        eventually(|| Member::try_enter(other, 1, "one-more", "eve").is_ok()),
        "no room freed by the close"
    );
    let (state, _) = Member::try_enter(nodes[0], 1, "another", "flo")
        .err()
        .expect("full again");
    assert_eq!(state, 3);
}

/// `--ocm-rooms-max` counts the cluster's rooms, not one node's.
#[test]
fn ocm_rooms_max_counts_every_nodes_rooms() {
    room_limits_count_every_nodes_rooms(
        &["--ocm-rooms-max", "2", "--ocm-rooms-per-ip-max", "0"],
        2,
    );
}

/// `--ocm-rooms-per-ip-max` counts the cluster's rooms whose host came from one IP (every
/// client here is 127.0.0.1).
#[test]
fn ocm_rooms_per_ip_max_counts_every_nodes_rooms() {
    room_limits_count_every_nodes_rooms(&["--ocm-rooms-per-ip-max", "3"], 3);
}
