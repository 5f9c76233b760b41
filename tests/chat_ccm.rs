//! `chat ccm` against a fake CCM server, over real sockets, driving the real binary; then two
//! clients against the real server.
//!
//! The test thread plays the server one message at a time (decoding with the library codec),
//! so each test can check exactly which bytes the client sends and can send what it needs to
//! (an Identity, an Error, a keepalive, a malformed message, a hang-up).
//!
//! Every wait is for an event (a message arriving, a line printed, the process exiting) and is
//! bounded by `WAIT`, so a broken client fails with a message instead of hanging the suite.
//! Children are killed on every path by `Drop`, panics included.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use switchboard::protocol::ccm::codec::{decode, encode, Message};

mod child;
mod lobby;

use chatd::Chatd;
use child::{show, Client};

const WAIT: Duration = Duration::from_secs(10);

/// How long the server listens for messages that must NOT come. Only absence is checked this
/// way: a slow client can make such a check pass wrongly, never fail wrongly.
const QUIET: Duration = Duration::from_millis(300);

const TOKEN: &str = "00112233445566778899aabbccddeeff";

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

    /// Accepts the client and checks that its first message is exactly the identification.
    fn accept_identifying(&self, name: &str) -> Peer {
        let mut peer = self.accept();
        let want = format!(
            "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{name}",
            name.len()
        );
        peer.expect_bytes(want.as_bytes());
        peer
    }

    /// Accepts, checks the identification and answers it with [`TOKEN`].
    fn accept_identified(&self, client: &mut Client, name: &str) -> Peer {
        let mut peer = self.accept_identifying(name);
        peer.send(&encode("Identity", &[("User", TOKEN.as_bytes())], b""));
        client
            .stderr
            .wait_for(&format!("chat: identified as {name}\n"));
        peer
    }
}

/// The server's end of one client connection.
struct Peer {
    stream: TcpStream,
    pending: BytesMut,
}

enum Received {
    Message(Message),
    Closed,
    Nothing,
}

impl Peer {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("fake server: send");
    }

    /// Reads more into `pending`; false when nothing came by `deadline` or the stream ended.
    fn fill(&mut self, deadline: Instant) -> Option<bool> {
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(false);
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("fake server: set read timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    return Some(true);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Some(false)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A reset is the client going away too; what matters here is that it went.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("fake server: read failed: {e}"),
            }
        }
    }

    /// The next message, or the end of the stream, or nothing by `deadline`. Decoded with
    /// `burst_ended` false, so a message without Content-Length never completes: the client
    /// must always write it.
    fn next(&mut self, deadline: Instant) -> Received {
        loop {
            match decode(&mut self.pending, false) {
                Ok(Some(message)) => return Received::Message(message),
                Ok(None) => {}
                Err(e) => panic!("fake server: the client sent a bad message: {e}"),
            }
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => return Received::Nothing,
                None => return Received::Closed,
            }
        }
    }

    fn message(&mut self) -> Message {
        match self.next(Instant::now() + WAIT) {
            Received::Message(message) => message,
            Received::Closed => panic!("fake server: connection closed, expected a message"),
            Received::Nothing => panic!(
                "fake server: no whole message within {WAIT:?}; pending {:?}",
                self.pending
            ),
        }
    }

    /// The next bytes are exactly `want`.
    fn expect_bytes(&mut self, want: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while self.pending.len() < want.len() {
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) | None => panic!(
                    "fake server: expected {:?}, got only {:?}",
                    show(want),
                    self.pending
                ),
            }
        }
        let got = self.pending.split_to(want.len());
        assert_eq!(show(&got), show(want), "the client's bytes");
    }

    /// Waits for the client to close the connection; every message before the close is a
    /// failure.
    fn expect_close(&mut self) {
        match self.next(Instant::now() + WAIT) {
            Received::Closed => {}
            Received::Message(m) => panic!("fake server: expected the close, got {m:?}"),
            Received::Nothing => panic!("fake server: the client did not close within {WAIT:?}"),
        }
    }

    fn expect_quiet(&mut self, what: &str) {
        match self.next(Instant::now() + QUIET) {
            Received::Nothing => {}
            Received::Message(m) => panic!("fake server: {what}, got {m:?}"),
            Received::Closed => panic!("fake server: {what}, but the client closed"),
        }
    }

    /// The client's goodbye, then its close.
    fn expect_disconnect(&mut self) {
        let goodbye = self.message();
        assert_message(&goodbye, "Disconnect", &[("Content-Length", "0")], b"");
        self.expect_close();
    }
}

/// `message` has this type, exactly these attributes in this order, and this content.
#[track_caller]
fn assert_message(message: &Message, kind: &str, attributes: &[(&str, &str)], content: &[u8]) {
    let got: Vec<(String, String)> = message
        .attributes
        .iter()
        .map(|(k, v)| (show(k), show(v)))
        .collect();
    let want: Vec<(String, String)> = attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        (show(&message.kind), got, show(&message.content)),
        (kind.to_string(), want, show(content)),
        "message {message:?}"
    );
}

#[track_caller]
fn assert_text(message: &Message, to: &str, text: &str) {
    let length = text.len().to_string();
    assert_message(
        message,
        "Text",
        &[
            ("Addressee", to),
            ("User", TOKEN),
            ("Message-Encoding", "utf-8"),
            ("Content-Length", &length),
        ],
        text.as_bytes(),
    );
}

/// A delivered message as the server writes it.
fn delivery(kind: &str, from: &str, to: &str, encoding: &str, content: &[u8]) -> Vec<u8> {
    encode(
        kind,
        &[
            ("Sender", from.as_bytes()),
            ("Addressee", to.as_bytes()),
            ("Message-Encoding", encoding.as_bytes()),
        ],
        content,
    )
    .to_vec()
}

fn error(reason: &str, sentence: &str) -> Vec<u8> {
    encode(
        "Error",
        &[("Reason", reason.as_bytes())],
        sentence.as_bytes(),
    )
    .to_vec()
}

impl Client {
    fn ccm(port: u16, name: &str) -> Self {
        Client::spawn(&["ccm", "--name", name, "--port", &port.to_string()])
    }
}

#[test]
fn identifies_then_sends_addressed_lines_with_the_token() {
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    let mut peer = server.accept_identified(&mut client, "alice");

    client.type_text(b"@bob hi\n");
    assert_text(&peer.message(), "bob", "hi");
    client.type_text(b"@* x\r\n");
    assert_text(&peer.message(), "*", "x");
    client.type_text("@carol  caf\u{e9} ok\n".as_bytes());
    assert_text(&peer.message(), "carol", " caf\u{e9} ok");

    client.close_stdin();
    peer.expect_disconnect();
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert!(status.success(), "status {status}, stderr: {stderr:?}");
    assert_eq!(client.stdout.wait_closed(), "", "sending prints nothing");
}

#[test]
fn lines_typed_before_the_identity_are_sent_after_it() {
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    client.type_text(b"@bob early\n");
    client.close_stdin();
    let mut peer = server.accept_identifying("alice");
    peer.expect_quiet("nothing before the Identity");

    peer.send(&encode("Identity", &[("User", TOKEN.as_bytes())], b""));
    assert_text(&peer.message(), "bob", "early");
    peer.expect_disconnect();
    assert!(client.wait_exit().success());
}

#[test]
fn lines_without_a_recipient_are_refused_with_a_hint() {
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    let mut peer = server.accept_identified(&mut client, "alice");

    client.type_text(b"hello\n@bob\n/who\n\n");
    client.stderr.wait_for("`@bob hello`");
    client.stderr.wait_for("unknown command /who");
    peer.expect_quiet("refused lines are not sent");
    client.type_text(b"@bob ok\n");
    assert_text(&peer.message(), "bob", "ok");
}

#[test]
fn incoming_messages_are_shown() {
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    let mut peer = server.accept_identified(&mut client, "alice");

    peer.send(&delivery("Text", "carol", "alice", "utf-8", b"hello"));
    client.stdout.wait_for("carol: hello\n");
    peer.send(&delivery("Text", "carol", "*", "utf-16", b"h\0i\0"));
    client.stdout.wait_for("carol (to all): hi\n");
    // Header and content in separate writes, as the real server sends them.
    let raw = delivery("Raw", "dave", "alice", "utf-8", &[7; 12]);
    let (head, content) = raw.split_at(raw.len() - 12);
    peer.send(head);
    thread::sleep(Duration::from_millis(50));
    peer.send(content);
    client.stdout.wait_for("dave sent Raw (12 bytes)\n");
    peer.expect_quiet("deliveries are not answered");

    client.close_stdin();
    peer.expect_disconnect();
    assert!(client.wait_exit().success());
    assert_eq!(
        client.stdout.wait_closed(),
        "carol: hello\ncarol (to all): hi\ndave sent Raw (12 bytes)\n"
    );
}

#[test]
fn keepalive_connect_is_answered_silently() {
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    let mut peer = server.accept_identified(&mut client, "alice");

    for _ in 0..2 {
        peer.send(b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
        let answer = peer.message();
        assert_message(&answer, "Connect", &[("Content-Length", "0")], b"");
        peer.expect_quiet("one Connect, one answer");
    }

    client.close_stdin();
    peer.expect_disconnect();
    assert!(client.wait_exit().success());
    assert_eq!(client.stdout.wait_closed(), "", "keepalives print nothing");
    let stderr = client.stderr.wait_closed();
    assert_eq!(stderr, "chat: identified as alice\n");
}

#[test]
fn an_error_to_the_identification_exits_1_with_the_reason() {
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    let mut peer = server.accept_identifying("alice");

    peer.send(&error("name-taken", "that name is in use"));
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.contains("chat: error name-taken: that name is in use\n")
            && stderr.contains("another --name"),
        "stderr: {stderr:?}"
    );
    peer.expect_close();
}

#[test]
fn an_error_once_identified_is_shown_and_the_session_goes_on() {
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    let mut peer = server.accept_identified(&mut client, "alice");

    client.type_text(b"@zed anyone?\n");
    assert_text(&peer.message(), "zed", "anyone?");
    peer.send(&error("unknown-addressee", "no user has that name"));
    client
        .stderr
        .wait_for("chat: error unknown-addressee: no user has that name\n");
    client.type_text(b"@bob still here\n");
    assert_text(&peer.message(), "bob", "still here");
}

#[test]
fn quit_and_stdin_eof_send_disconnect_and_exit_0() {
    for ending in [&b"/quit\n"[..], b""] {
        let server = FakeServer::start();
        let mut client = Client::ccm(server.port, "alice");
        let mut peer = server.accept_identified(&mut client, "alice");

        client.type_text(b"@bob last\n");
        client.type_text(ending);
        client.close_stdin();
        assert_text(&peer.message(), "bob", "last");
        peer.expect_disconnect();
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
    let mut client = Client::ccm(server.port, "alice");
    let peer = server.accept_identified(&mut client, "alice");

    drop(peer);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert!(status.success(), "status {status}, stderr: {stderr:?}");
    assert!(
        stderr.contains("chat: connection closed by the server"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn malformed_message_from_the_server_exits_1() {
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    let mut peer = server.accept_identified(&mut client, "alice");

    peer.send(b"HTTP/1.1 200 OK\r\n\r\n");
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.contains("chat: malformed message from the server: "),
        "stderr: {stderr:?}"
    );
    peer.expect_close();
}

#[test]
fn sigterm_and_sigint_exit_0() {
    for signal in ["TERM", "INT"] {
        let server = FakeServer::start();
        let mut client = Client::ccm(server.port, "alice");
        let mut peer = server.accept_identified(&mut client, "alice");

        client.signal(signal);
        peer.expect_close();
        let status = client.wait_exit();
        assert!(status.success(), "SIG{signal}: status {status}");
    }
}

#[test]
fn connection_refused_exits_1_naming_the_address() {
    let port = chatd::free_tcp_port();
    let mut client = Client::ccm(port, "alice");
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
fn wrong_ports_are_hinted() {
    // A ROOM server asks `alias?` first: no CCM message ever starts so.
    let server = FakeServer::start();
    let mut client = Client::ccm(server.port, "alice");
    let mut peer = server.accept_identifying("alice");
    peer.send(b"alias?");
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.contains(&format!("port {} answered like ROOM, not CCM", server.port)),
        "stderr: {stderr:?}"
    );

    // Silence (an OCM port waits for more bytes): a note; then the close is explained.
    let server = FakeServer::start();
    let mut client = Client::spawn(&[
        "ccm",
        "--name",
        "alice",
        "--port",
        &server.port.to_string(),
        "--silence-hint-ms",
        "50",
    ]);
    let peer = server.accept_identifying("alice");
    client.stderr.wait_for(&format!(
        "nothing from port {} yet, where a CCM server answers the name at once",
        server.port
    ));
    drop(peer);
    assert!(client.wait_exit().success());
    let stderr = client.stderr.wait_closed();
    assert!(
        stderr.contains("closed the connection before answering the name"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn invalid_names_exit_2() {
    for (name, problem) in [("", "empty"), ("a b", "spaces"), ("*", "everyone")] {
        let mut client = Client::ccm(1, name);
        let status = client.wait_exit();
        let stderr = client.stderr.wait_closed();
        assert_eq!(status.code(), Some(2), "{name:?}: stderr: {stderr:?}");
        assert!(stderr.contains(problem), "{name:?}: stderr: {stderr:?}");
    }
}

#[test]
fn help_explains_the_input_and_the_output() {
    let mut client = Client::spawn(&["ccm", "--help"]);
    assert!(client.wait_exit().success());
    let help = client.stdout.wait_closed();
    for needle in [
        "--name",
        "@bob hello there",
        "@* hi all",
        "/quit",
        "Disconnect",
        "carol (to all): hi",
        "sent Raw (12 bytes)",
        "chat: error unknown-addressee",
        "Connect",
        "another --name",
        "5454",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from {help}");
    }
}

// ---- against the real server ----

#[test]
fn two_clients_talk_through_the_real_server() {
    let server = Chatd::start(&["--ccm-port"], &[]);
    let port = server.port("--ccm-port");

    let mut bob = Client::ccm(port, "bob");
    bob.stderr.wait_for("chat: identified as bob\n");
    let mut alice = Client::ccm(port, "alice");
    alice.stderr.wait_for("chat: identified as alice\n");

    alice.type_text(b"@bob hello bob\n");
    bob.stdout.wait_for("alice: hello bob\n");
    bob.type_text(b"@* hi everyone\n");
    alice.stdout.wait_for("bob (to all): hi everyone\n");

    // Nobody named zed: the server says so, and the session goes on.
    alice.type_text(b"@zed anyone?\n");
    alice.stderr.wait_for("chat: error unknown-addressee: ");

    // The name is taken while alice is connected.
    let mut alice_again = Client::ccm(port, "alice");
    let status = alice_again.wait_exit();
    let stderr = alice_again.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(stderr.contains("chat: error name-taken: "), "{stderr:?}");

    alice.close_stdin();
    assert!(alice.wait_exit().success());
    bob.close_stdin();
    assert!(bob.wait_exit().success());
    assert_eq!(bob.stdout.wait_closed(), "alice: hello bob\n");
    assert_eq!(alice.stdout.wait_closed(), "bob (to all): hi everyone\n");
}

/// The switchboard: a lobby message from ROOM, MATOU or the OCM room `lobby` arrives as a Text
/// from its sender's name to `*`, and a BIN24 user's direct message as a Text from that user to
/// this one, so `chat ccm` shows them as it shows CCM users' (the wire says nothing of their
/// protocol). Presence is not sent to CCM, so none is shown.
#[test]
fn lobby_messages_and_direct_messages_from_other_protocols_show_their_sender() {
    let server = lobby::Lobby::start();
    let mut cid = server.ccm("cid");

    let mut rui = server.room("rui");
    rui.type_text(b"hello cid\n");
    cid.stdout.wait_for("rui (to all): hello cid\n");

    let mut mia = server.matou("mia", &std::env::temp_dir());
    mia.type_text("olá\n".as_bytes());
    cid.stdout.wait_for("mia (to all): olá\n");

    let mut olga = server.ocm("create", "olga");
    olga.type_text("こんにちは\n".as_bytes());
    cid.stdout.wait_for("olga (to all): こんにちは\n");

    let mut bob = server.bin24("bob");
    bob.type_text(b"cid: psst\n");
    cid.stdout.wait_for("bob: psst\n");
    bob.stdout.wait_for("[delivered]");

    cid.close_stdin();
    assert!(cid.wait_exit().success());
    let out = cid.stdout.wait_closed();
    // Presence is not sent to CCM: four lines, the four messages.
    assert_eq!(out.lines().count(), 4, "{out}");
}
