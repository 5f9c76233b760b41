//! `chat bin24` against a fake BIN24 server, over real sockets, driving the real binary; then
//! two clients against the real server.
//!
//! The test thread plays the server one frame at a time (decoding with the library codec), so
//! each test can check exactly which frames the client sends and can send what it needs to
//! (stored messages, odd answers, a malformed frame, a hang-up).
//!
//! Every wait is for an event (a frame arriving, a line printed, the process exiting) and is
//! bounded by `WAIT`, so a broken client fails with a message instead of hanging the suite.
//! Children are killed on every path by `Drop`, panics included.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use switchboard::protocol::bin24::codec::{
    decode, encode, encode_answer, Frame, Name, TYPE_ANSWER, TYPE_MESSAGE, TYPE_OFFLINE,
};

mod child;
mod lobby;

use chatd::Chatd;
use child::Client;

const WAIT: Duration = Duration::from_secs(10);

/// How long the server listens for frames that must NOT come. Only absence is checked this
/// way: a slow client can make such a check pass wrongly, never fail wrongly.
const QUIET: Duration = Duration::from_millis(300);

fn name(text: &str) -> Name {
    Name::new(text.as_bytes()).expect("a valid name")
}

struct FakeServer {
    listener: TcpListener,
    port: u16,
}

impl FakeServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake server");
        let port = listener.local_addr().expect("fake server address").port();
        FakeServer { listener, port }
    }

    /// Accepts the client's connection, waiting at most `WAIT`.
    fn accept(&self) -> Peer {
        let stream = child::accept_within(&self.listener, "fake server");
        Peer {
            stream,
            pending: BytesMut::new(),
        }
    }

    /// Accepts the client and checks its first frame: the registration, which must name the
    /// user and have no effect for anyone else.
    fn accept_registered(&self, user: &str) -> Peer {
        let mut peer = self.accept();
        let first = peer.frame();
        assert_eq!(first.src(), name(user), "the registration frame's SRC");
        assert_eq!(first.frame_type(), TYPE_ANSWER, "registration: {first:?}");
        assert_eq!(first.dst(), name(user), "registration: {first:?}");
        assert_eq!(first.message_id(), u32::MAX, "registration: {first:?}");
        assert!(first.body().is_empty(), "registration: {first:?}");
        peer
    }
}

/// The server's end of one client connection.
struct Peer {
    stream: TcpStream,
    pending: BytesMut,
}

enum Received {
    Frame(Frame),
    Closed,
    Nothing,
}

impl Peer {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("fake server: send");
    }

    /// The next frame, or the end of the stream, or nothing by `deadline`.
    fn next(&mut self, deadline: Instant) -> Received {
        let mut buf = [0u8; 4096];
        loop {
            match decode(&mut self.pending) {
                Ok(Some(frame)) => return Received::Frame(frame),
                Ok(None) => {}
                Err(e) => panic!("fake server: the client sent a bad frame: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Received::Nothing;
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("fake server: set read timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return Received::Closed,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Received::Nothing
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset is the client going away too; what matters here is that it went.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Received::Closed,
                Err(e) => panic!("fake server: read failed: {e}"),
            }
        }
    }

    fn frame(&mut self) -> Frame {
        match self.next(Instant::now() + WAIT) {
            Received::Frame(frame) => frame,
            Received::Closed => panic!("fake server: connection closed, expected a frame"),
            Received::Nothing => panic!("fake server: no frame within {WAIT:?}"),
        }
    }

    /// Waits for the client to close the connection; every frame before the close is a
    /// failure.
    fn expect_close(&mut self) {
        match self.next(Instant::now() + WAIT) {
            Received::Closed => {}
            Received::Frame(frame) => panic!("fake server: expected the close, got {frame:?}"),
            Received::Nothing => panic!("fake server: the client did not close within {WAIT:?}"),
        }
    }

    fn expect_quiet(&mut self, what: &str) {
        match self.next(Instant::now() + QUIET) {
            Received::Nothing => {}
            Received::Frame(frame) => panic!("fake server: {what}, got {frame:?}"),
            Received::Closed => panic!("fake server: {what}, but the client closed"),
        }
    }
}

#[track_caller]
fn assert_frame(frame: &Frame, frame_type: u16, id: u32, src: &str, dst: &str, body: &[u8]) {
    assert_eq!(
        (
            frame.frame_type(),
            frame.message_id(),
            frame.src(),
            frame.dst(),
            &frame.body()[..],
        ),
        (frame_type, id, name(src), name(dst), body),
        "frame {frame:?}"
    );
}

fn message(frame_type: u16, id: u32, from: &str, to: &str, text: &[u8]) -> Vec<u8> {
    encode(frame_type, id, name(from), name(to), text)
        .expect("a short message")
        .to_vec()
}

impl Client {
    fn bin24(port: u16, user: &str) -> Self {
        Client::spawn(&["bin24", "--user", user, "--port", &port.to_string()])
    }
}

#[test]
fn registers_then_sends_addressed_and_default_lines() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");

    client.type_text(b"bob: hi\n");
    let first = peer.frame();
    assert_frame(&first, TYPE_MESSAGE, 0, "alice", "bob", b"hi");
    assert_eq!(first.len(), 26, "exactly the header and `hi`");

    client.type_text(b"/to bob\nagain\n");
    // The frame right after `hi` is `again`: `/to` sent nothing.
    assert_frame(&peer.frame(), TYPE_MESSAGE, 1, "alice", "bob", b"again");
    client.stderr.wait_for("plain lines now go to bob");

    // Addressed lines still go where they say, and count on.
    client.type_text(b"carol: hey\r\n");
    assert_frame(&peer.frame(), TYPE_MESSAGE, 2, "alice", "carol", b"hey");

    client.close_stdin();
    peer.expect_close();
    assert!(client.wait_exit().success());
    assert_eq!(client.stdout.wait_closed(), "", "sending prints nothing");
}

#[test]
fn registration_echo_is_not_shown() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");

    // What our server does with it: forward it to its DST, the user itself.
    peer.send(&encode_answer(u32::MAX, name("alice"), name("alice"), b""));
    client.stderr.wait_for("signed in as alice");
    peer.send(&message(TYPE_OFFLINE, 0, "bob", "alice", b"first"));
    client
        .stdout
        .wait_for("<- bob: first  [stored while you were offline]\n");
    assert_frame(&peer.frame(), TYPE_ANSWER, 0, "alice", "bob", b"200");

    client.close_stdin();
    peer.expect_close();
    assert!(client.wait_exit().success());
    assert_eq!(
        client.stdout.wait_closed(),
        "<- bob: first  [stored while you were offline]\n"
    );
}

#[test]
fn incoming_message_is_shown_and_answered_200() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");

    peer.send(&message(TYPE_MESSAGE, 41, "carol", "alice", b"hello"));
    client.stdout.wait_for("<- carol: hello\n");
    let answer = peer.frame();
    assert_frame(&answer, TYPE_ANSWER, 41, "alice", "carol", b"200");
    peer.expect_quiet("one message, one answer");

    // Bytes that are not UTF-8 are shown lossily, and still answered.
    peer.send(&message(TYPE_MESSAGE, 42, "carol", "alice", b"caf\xe9"));
    client.stdout.wait_for("<- carol: caf\u{fffd}\n");
    assert_frame(&peer.frame(), TYPE_ANSWER, 42, "alice", "carol", b"200");
}

#[test]
fn offline_message_is_shown_and_answered_200_like_a_live_one() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");

    peer.send(&message(
        TYPE_OFFLINE,
        3,
        "dave",
        "alice",
        b"while you were out",
    ));
    client
        .stdout
        .wait_for("<- dave: while you were out  [stored while you were offline]\n");
    assert_frame(&peer.frame(), TYPE_ANSWER, 3, "alice", "dave", b"200");
    peer.expect_quiet("one stored message, one answer");
}

#[test]
fn answers_show_what_became_of_each_message() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");

    client.type_text(b"bob: one\nbob: two\nbob: three\nbob: four\n");
    for id in 0..4 {
        assert_eq!(peer.frame().message_id(), id);
    }
    // As the original client answers: the received len, "200\0" then whatever was in memory.
    peer.send(&encode_answer(
        0,
        name("bob"),
        name("alice"),
        b"200\0garbage",
    ));
    client.stdout.wait_for("-> bob: one  [delivered]\n");
    peer.send(&encode_answer(1, name("bob"), name("alice"), b"300"));
    client
        .stdout
        .wait_for("-> bob: two  [stored for later: bob is offline]\n");
    peer.send(&encode_answer(2, name("bob"), name("alice"), b"507"));
    client
        .stdout
        .wait_for("-> bob: three  [refused: bob's store is full]\n");
    peer.send(&encode_answer(3, name("bob"), name("alice"), b"418 teapot"));
    client
        .stdout
        .wait_for("-> bob: four  [answer: 418 teapot]\n");
    // bob got #1 from the store after all.
    peer.send(&encode_answer(1, name("bob"), name("alice"), b"200"));
    client.stdout.wait_for("-> bob: two  [delivered]\n");
    peer.send(&encode_answer(99, name("eve"), name("alice"), b"200"));
    client
        .stdout
        .wait_for("-> eve: (message #99, not sent in this session)  [delivered]\n");

    client.close_stdin();
    peer.expect_close();
    assert!(client.wait_exit().success());
}

#[test]
fn lines_over_1000_bytes_are_refused_not_cut() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");

    let longest = "x".repeat(1000);
    client.type_text(format!("bob: {longest}y\n").as_bytes());
    client.stderr.wait_for("1001 bytes not sent");
    // A refused line uses no messageID, and the longest body goes out whole.
    client.type_text(format!("bob: {longest}\n").as_bytes());
    let frame = peer.frame();
    assert_frame(&frame, TYPE_MESSAGE, 0, "alice", "bob", longest.as_bytes());
    assert_eq!(frame.len(), 1024);

    // Over the line limit: skipped whole, not sent in pieces.
    client.type_text(format!("bob: {}\nbob: after\n", "z".repeat(100_000)).as_bytes());
    assert_frame(&peer.frame(), TYPE_MESSAGE, 1, "alice", "bob", b"after");
    client.stderr.wait_for("line longer than");
}

#[test]
fn lines_without_a_recipient_are_refused() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");

    client.type_text(b"hello\n/who\n/to toolongname\n");
    client.stderr.wait_for("no recipient");
    client.stderr.wait_for("unknown command /who");
    client.stderr.wait_for("at most 8 bytes");
    client.type_text(b"bob: ok\n");
    assert_frame(&peer.frame(), TYPE_MESSAGE, 0, "alice", "bob", b"ok");
}

#[test]
fn quit_and_stdin_eof_exit_0() {
    for ending in [&b"/quit\n"[..], b""] {
        let server = FakeServer::start();
        let mut client = Client::bin24(server.port, "alice");
        let mut peer = server.accept_registered("alice");

        client.type_text(b"bob: last\n");
        client.type_text(ending);
        client.close_stdin();
        assert_frame(&peer.frame(), TYPE_MESSAGE, 0, "alice", "bob", b"last");
        peer.expect_close();
        let status = client.wait_exit();
        let stderr = client.stderr.wait_closed();
        assert!(status.success(), "status {status}, stderr: {stderr:?}");
        assert!(
            !stderr.contains("closed by the server"),
            "stderr: {stderr:?}"
        );
    }
}

#[test]
fn server_hangup_exits_0_with_a_message() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");
    peer.send(&encode_answer(u32::MAX, name("alice"), name("alice"), b""));
    client.stderr.wait_for("signed in as alice");

    drop(peer);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert!(status.success(), "status {status}, stderr: {stderr:?}");
    assert!(
        stderr.contains("chat: connection closed by the server")
            && stderr.contains("another connection with this user name replaced this one"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn malformed_frame_from_the_server_exits_1() {
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");

    // len 5: shorter than the header, so framing is lost.
    peer.send(&[5, 0, 0, 0, 0, 0]);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.contains("chat: bad frame from the server: "),
        "stderr: {stderr:?}"
    );
    peer.expect_close();
}

#[test]
fn sigterm_and_sigint_exit_0() {
    for signal in ["TERM", "INT"] {
        let server = FakeServer::start();
        let mut client = Client::bin24(server.port, "alice");
        let mut peer = server.accept_registered("alice");

        client.signal(signal);
        peer.expect_close();
        let status = client.wait_exit();
        assert!(status.success(), "SIG{signal}: status {status}");
    }
}

#[test]
fn connection_refused_exits_1_naming_the_address() {
    let port = chatd::free_tcp_port();
    let mut client = Client::bin24(port, "alice");
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("connect"),
        "stderr: {stderr:?}"
    );
    assert!(
        stderr.contains("cargo run --release --bin chatd"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn another_protocols_server_is_named() {
    // A ROOM server speaks first, `alias?`, which is no BIN24 frame.
    let server = FakeServer::start();
    let mut client = Client::bin24(server.port, "alice");
    let mut peer = server.accept_registered("alice");
    peer.send(b"alias?");
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.contains(&format!(
            "port {} answered like ROOM, not BIN24",
            server.port
        )),
        "stderr: {stderr:?}"
    );
}

#[test]
fn silence_after_signing_in_gets_a_wrong_port_note_then_a_close_is_explained() {
    let server = FakeServer::start();
    let mut client = Client::spawn(&[
        "bin24",
        "--user",
        "alice",
        "--port",
        &server.port.to_string(),
        "--silence-hint-ms",
        "50",
    ]);
    let peer = server.accept_registered("alice");
    client.stderr.wait_for(&format!(
        "nothing from port {} yet, where a BIN24 server echoes the sign-in at once",
        server.port
    ));
    // Still connected: the note is a hint, not an end.
    drop(peer);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert!(status.success(), "stderr: {stderr:?}");
    assert!(
        stderr.contains("closed the connection before signing you in"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn invalid_user_names_exit_2() {
    for (user, problem) in [("", "empty"), ("ninechars", "at most 8 bytes")] {
        let mut client = Client::bin24(1, user);
        let status = client.wait_exit();
        let stderr = client.stderr.wait_closed();
        assert_eq!(status.code(), Some(2), "{user:?}: stderr: {stderr:?}");
        assert!(stderr.contains(problem), "{user:?}: stderr: {stderr:?}");
    }
    // 8 bytes is the most the SRC field holds, and fine.
    let server = FakeServer::start();
    let _client = Client::bin24(server.port, "12345678");
    server.accept_registered("12345678");
}

#[test]
fn help_explains_the_input_and_the_fates() {
    let mut client = Client::spawn(&["bin24", "--help"]);
    assert!(client.wait_exit().success());
    let help = client.stdout.wait_closed();
    for needle in [
        "bob: hello there",
        "/to bob",
        "/quit",
        "\"200\"",
        "-> bob: hello there  [delivered]",
        "[stored for later: bob is offline]",
        "[refused: bob's store is full]",
        "[no answer yet]",
        "<- carol: hi",
        "[stored while you were offline]",
        "1000 bytes",
        "bidirectional controls",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from {help}");
    }
}

// ---- against the real server ----

#[test]
fn two_clients_talk_through_the_real_server() {
    let server = Chatd::start(&["--bin24-port"], &[]);
    let port = server.port("--bin24-port");

    let mut bob = Client::bin24(port, "bob");
    bob.stderr.wait_for("signed in as bob");
    let mut alice = Client::bin24(port, "alice");
    alice.stderr.wait_for("signed in as alice");

    alice.type_text(b"bob: hello bob\n");
    bob.stdout.wait_for("<- alice: hello bob\n");
    alice.stdout.wait_for("-> bob: hello bob  [delivered]\n");

    // Nobody named zed is connected: the server stores the message and says so.
    alice.type_text(b"/to zed\nare you there?\n");
    alice
        .stdout
        .wait_for("-> zed: are you there?  [stored for later: zed is offline]\n");

    // ...and delivers it when zed comes; zed's client answers it, the server passes the
    // answer on, and alice sees the message delivered after all.
    let mut zed = Client::bin24(port, "zed");
    zed.stdout
        .wait_for("<- alice: are you there?  [stored while you were offline]\n");
    alice
        .stdout
        .wait_for("-> zed: are you there?  [delivered]\n");

    // Signing in as bob again replaces the first bob, which is told and exits 0.
    let _bob_again = Client::bin24(port, "bob");
    let status = bob.wait_exit();
    let stderr = bob.stderr.wait_closed();
    assert!(status.success(), "status {status}, stderr: {stderr:?}");
    assert!(
        stderr.contains("connection closed by the server"),
        "stderr: {stderr:?}"
    );

    alice.close_stdin();
    assert!(alice.wait_exit().success());
    assert!(
        !alice.stdout.wait_closed().contains("no answer yet"),
        "every message was answered"
    );
}

/// The server's end of a raw BIN24 connection, for checking exact frames.
struct RawUser {
    peer: Peer,
}

impl RawUser {
    /// Connects and signs in as `user` with an empty answer to itself, as the client does.
    fn sign_in(port: u16, user: &str) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to chatd");
        let mut peer = Peer {
            stream,
            pending: BytesMut::new(),
        };
        peer.send(&encode_answer(u32::MAX, name(user), name(user), b""));
        let echo = peer.frame();
        assert_frame(&echo, TYPE_ANSWER, u32::MAX, user, user, b"");
        RawUser { peer }
    }
}

#[test]
fn a_stored_frame_is_answered_with_its_message_id_through_the_real_server() {
    let server = Chatd::start(&["--bin24-port"], &[]);
    let port = server.port("--bin24-port");

    // alice stores a frame for the offline bob, with an id no client would count to soon.
    let mut alice = RawUser::sign_in(port, "alice");
    alice
        .peer
        .send(&message(TYPE_MESSAGE, 7_000_001, "alice", "bob", b"ping"));
    assert_frame(
        &alice.peer.frame(),
        TYPE_ANSWER,
        7_000_001,
        "bob",
        "alice",
        b"300",
    );

    // bob's client gets it as type 2 and answers it: the server forwards the answer to alice.
    let mut bob = Client::bin24(port, "bob");
    bob.stdout
        .wait_for("<- alice: ping  [stored while you were offline]\n");
    assert_frame(
        &alice.peer.frame(),
        TYPE_ANSWER,
        7_000_001,
        "bob",
        "alice",
        b"200",
    );
    alice.peer.expect_quiet("one stored frame, one answer");

    bob.close_stdin();
    assert!(bob.wait_exit().success());
}

/// The switchboard: a CCM user's Text to a BIN24 user's name arrives as a BIN24 message whose
/// SRC is the CCM name, so `chat bin24` shows it like any other, and its answer reaches the CCM
/// user; lobby traffic around it (ROOM, CCM `*`) does not reach BIN24, which has no lobby.
#[test]
fn a_direct_message_from_a_ccm_user_shows_its_sender_and_can_be_answered() {
    let server = lobby::Lobby::start();
    let mut bob = server.bin24("bob");
    let mut cid = server.ccm("cid");
    let mut rui = server.room("rui");
    rui.type_text(b"hello lobby\n");
    cid.stdout.wait_for("rui (to all): hello lobby\n");

    cid.type_text(b"@bob hi there\n");
    bob.stdout.wait_for("<- cid: hi there\n");
    bob.type_text(b"cid: hi back\n");
    cid.stdout.wait_for("bob: hi back\n");
    bob.stdout.wait_for("[delivered]");

    bob.close_stdin();
    assert!(bob.wait_exit().success());
    let out = bob.stdout.wait_closed();
    assert!(!out.contains("hello lobby"), "{out}");
}
