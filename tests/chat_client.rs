//! `chat room` against a fake ROOM server, over real sockets, driving the real binary.
//!
//! The test thread plays the server the way the original server.py does (send `alias?`, take
//! the first chunk as the alias, announce the join, relay), one step at a time, so each test
//! can also misbehave where it needs to (ask twice, send bad UTF-8, hang up).
//!
//! Every wait is for an event (bytes arriving, a line printed, the process exiting) and is
//! bounded by `WAIT`, so a broken client fails with a message instead of hanging the suite.
//! The child is killed on every path by `Client`'s `Drop`, panics included.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

mod chatd;
mod child;
mod lobby;

use chatd::Chatd;
use child::{show, Client};

const WAIT: Duration = Duration::from_secs(10);

/// How long the server listens for bytes that must NOT come. Only absence is checked this way:
/// a slow client can make such a check pass wrongly, never fail wrongly.
const QUIET: Duration = Duration::from_millis(300);

const WELCOME: &str = "Voce esta conectado ao servidor!";

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
        Peer { stream }
    }
}

/// The server's end of one client connection.
struct Peer {
    stream: TcpStream,
}

enum Received {
    Data(usize),
    Closed,
    Nothing,
}

impl Peer {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("fake server: send");
    }

    /// One read that gives up at `deadline`.
    fn read_some(&mut self, buf: &mut [u8], deadline: Instant) -> Received {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Received::Nothing;
        }
        self.stream
            .set_read_timeout(Some(left))
            .expect("fake server: set read timeout");
        match self.stream.read(buf) {
            Ok(0) => Received::Closed,
            Ok(n) => Received::Data(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Received::Nothing
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.read_some(buf, deadline),
            // A reset is the client going away too; what matters here is that it went.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Received::Closed,
            Err(e) => panic!("fake server: read failed: {e}"),
        }
    }

    /// Reads until as many bytes as `want` have arrived, then requires exactly `want`: ROOM has
    /// no framing, so extra or missing bytes are exactly the bugs to catch.
    fn expect(&mut self, want: &[u8]) {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want.len() {
            match self.read_some(&mut buf, deadline) {
                Received::Data(n) => got.extend_from_slice(&buf[..n]),
                Received::Closed => panic!(
                    "fake server: connection closed after {:?}, expected {:?}",
                    show(&got),
                    show(want)
                ),
                Received::Nothing => panic!(
                    "fake server: got {:?} within {WAIT:?}, expected {:?}",
                    show(&got),
                    show(want)
                ),
            }
        }
        assert_eq!(
            show(&got),
            show(want),
            "fake server: wrong bytes from the client"
        );
    }

    /// Waits for the client to close the connection; returns what it sent before closing.
    fn expect_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.read_some(&mut buf, deadline) {
                Received::Data(n) => got.extend_from_slice(&buf[..n]),
                Received::Closed => return got,
                Received::Nothing => panic!(
                    "fake server: the client did not close the connection within {WAIT:?} \
                     (received {:?})",
                    show(&got)
                ),
            }
        }
    }

    fn expect_quiet(&mut self, what: &str) {
        let mut buf = [0u8; 4096];
        match self.read_some(&mut buf, Instant::now() + QUIET) {
            Received::Nothing => {}
            Received::Data(n) => panic!("fake server: {what}, got {:?}", show(&buf[..n])),
            Received::Closed => panic!("fake server: {what}, but the client closed"),
        }
    }
}

impl Client {
    fn room(port: u16, nick: &str) -> Self {
        Client::spawn(&["room", "--nick", nick, "--port", &port.to_string()])
    }
}

/// Plays server.py's accept sequence. The two notices are sent one at a time, each once the
/// client has printed the previous, because back to back they may arrive as one chunk.
fn join(server: &FakeServer, client: &mut Client, nick: &str) -> Peer {
    let mut peer = server.accept();
    peer.send(b"alias?");
    peer.expect(nick.as_bytes());
    welcome(&mut peer, client, nick);
    peer
}

fn welcome(peer: &mut Peer, client: &mut Client, nick: &str) {
    let notice = format!("b'{nick}' esta conectado ao chat");
    peer.send(notice.as_bytes());
    client.stdout.wait_for(&format!("* {nick} joined\n"));
    peer.send(WELCOME.as_bytes());
    client.stdout.wait_for("* connected: you are in the room\n");
}

#[test]
fn handshake_sends_exactly_the_nick() {
    let server = FakeServer::start();
    let mut client = Client::room(server.port, "alice");
    let mut peer = join(&server, &mut client, "alice");

    client.close_stdin();
    let after_nick = peer.expect_close();
    assert_eq!(show(&after_nick), "", "nothing may follow the nick");
    assert!(client.wait_exit().success());
}

#[test]
fn typed_lines_are_held_until_joined_then_sent_as_nick_colon_line() {
    let server = FakeServer::start();
    let mut client = Client::room(server.port, "alice");
    // Typed before the connection is even accepted: must not merge into the alias.
    client.type_text(b"hello\n");

    let mut peer = server.accept();
    peer.send(b"alias?");
    peer.expect(b"alice");
    peer.expect_quiet("nothing may be sent before the server confirms the join");
    welcome(&mut peer, &mut client, "alice");
    peer.expect(b"alice: hello");

    // CRLF from a Windows-style source, and an empty line (the original sends `alice: `).
    client.type_text(b"crlf\r\n");
    peer.expect(b"alice: crlf");
    client.type_text(b"\n");
    peer.expect(b"alice: ");

    // The last line of input may lack its newline; it is still sent, then the client leaves.
    client.type_text(b"bye");
    client.close_stdin();
    assert_eq!(show(&peer.expect_close()), "alice: bye");
    assert!(client.wait_exit().success());
}

#[test]
fn received_chunks_are_printed_one_per_line() {
    let server = FakeServer::start();
    let mut client = Client::room(server.port, "alice");
    let mut peer = join(&server, &mut client, "alice");

    peer.send(b"bob: hi alice");
    client.stdout.wait_for("bob: hi alice\n");
    peer.send(b"bob: caf\xe9 \xff!");
    client.stdout.wait_for("bob: caf\u{fffd} \u{fffd}!\n");
    peer.send(b"bob: already a line\n");
    client.stdout.wait_for("bob: already a line\n");
    // A member's message that happens to read `alias?` is a message, not a request.
    peer.send(b"alias?");
    client.stdout.wait_for("alias?\n");
    peer.send(b"b'bob' acabou de sair do chat!");
    client.stdout.wait_for("* bob left\n");
    // No framing: notices and messages glued in one chunk are cut apart.
    peer.send(b"b'carol' esta conectado ao chatcarol: hib'd\\xc3\\xa9' acabou de sair do chat!");
    client.stdout.wait_for("* d\u{e9} left\n");

    client.close_stdin();
    assert_eq!(
        show(&peer.expect_close()),
        "",
        "`alias?` from a member was answered"
    );
    assert!(client.wait_exit().success());
    assert_eq!(
        client.stdout.wait_closed(),
        "* alice joined\n\
         * connected: you are in the room\n\
         bob: hi alice\n\
         bob: caf\u{fffd} \u{fffd}!\n\
         bob: already a line\n\
         alias?\n\
         * bob left\n\
         * carol joined\n\
         carol: hi\n\
         * d\u{e9} left\n"
    );
}

#[test]
fn repeated_alias_request_is_answered_again() {
    let server = FakeServer::start();
    let mut client = Client::room(server.port, "alice");
    let mut peer = server.accept();
    peer.send(b"alias?");
    peer.expect(b"alice");
    peer.send(b"alias?");
    peer.expect(b"alice");
    welcome(&mut peer, &mut client, "alice");

    client.type_text(b"hi\n");
    peer.expect(b"alice: hi");
    assert!(
        !client.stdout.text().contains("alias?"),
        "requests are not printed"
    );
}

#[test]
fn stdin_eof_closes_the_connection_and_exits_0() {
    let server = FakeServer::start();
    let mut client = Client::room(server.port, "alice");
    let mut peer = join(&server, &mut client, "alice");

    client.close_stdin();
    peer.expect_close();
    assert!(client.wait_exit().success());
    let stderr = client.stderr.wait_closed();
    assert!(
        !stderr.contains("closed by the server"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn server_hangup_exits_0_with_a_message() {
    let server = FakeServer::start();
    let mut client = Client::room(server.port, "alice");
    let peer = join(&server, &mut client, "alice");

    drop(peer);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert!(status.success(), "status {status}, stderr: {stderr:?}");
    assert!(
        stderr.contains("connection closed by the server"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn connection_refused_exits_1_naming_the_address() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut client = Client::room(port, "alice");
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("connect"),
        "stderr: {stderr:?}"
    );
    assert!(
        stderr.contains("is chatd running? Start it with `cargo run --release --bin chatd`"),
        "stderr: {stderr:?}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 2, "stderr: {stderr:?}");
}

#[test]
fn a_server_that_does_not_ask_for_the_alias_gets_a_wrong_port_note() {
    // Silence, as from a BIN24, CCM, MATOU or OCM port, which wait for the client.
    let server = FakeServer::start();
    let mut client = Client::spawn(&[
        "room",
        "--nick",
        "alice",
        "--port",
        &server.port.to_string(),
        "--silence-hint-ms",
        "50",
    ]);
    let mut peer = server.accept();
    client.stderr.wait_for(&format!(
        "nothing from port {} yet, where a ROOM server asks `alias?` at once",
        server.port
    ));
    // Still waiting: a late `alias?` is answered.
    peer.send(b"alias?");
    peer.expect(b"alice");

    // Another protocol's bytes are named: here a CCM server's answer to a stranger.
    let server = FakeServer::start();
    let mut client = Client::room(server.port, "alice");
    let mut peer = server.accept();
    peer.send(b"HTTP/1.1 400 Bad Request\r\n");
    client
        .stderr
        .wait_for(&format!("port {} answered like CCM, not ROOM", server.port));
    drop(peer);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert!(status.success(), "stderr: {stderr:?}");
    assert!(
        stderr.contains("closed the connection before asking for the nick"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn sigterm_and_sigint_close_the_connection_and_exit_0() {
    for signal in ["TERM", "INT"] {
        let server = FakeServer::start();
        let mut client = Client::room(server.port, "alice");
        let mut peer = join(&server, &mut client, "alice");

        client.signal(signal);
        assert_eq!(show(&peer.expect_close()), "", "SIG{signal}");
        let status = client.wait_exit();
        assert!(status.success(), "SIG{signal}: status {status}");
    }
}

#[test]
fn missing_nick_is_asked_for() {
    let server = FakeServer::start();
    let mut client = Client::spawn(&["room", "--port", &server.port.to_string()]);
    client.type_text(b"bob\nhello\n");
    let mut peer = join(&server, &mut client, "bob");
    peer.expect(b"bob: hello");
    client.stderr.wait_for("Escolha um nick para voce >>> ");
}

#[test]
fn empty_nick_is_rejected_before_connecting() {
    let mut client = Client::spawn(&["room", "--nick", "", "--port", "1"]);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(2), "stderr: {stderr:?}");
    assert!(stderr.contains("nick"), "stderr: {stderr:?}");

    let mut client = Client::spawn(&["room", "--port", "1"]);
    client.type_text(b"\n");
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(stderr.contains("must not be empty"), "stderr: {stderr:?}");
}

#[test]
fn long_lines_are_sent_whole_up_to_64_kib() {
    let server = FakeServer::start();
    let mut client = Client::room(server.port, "alice");
    let mut peer = join(&server, &mut client, "alice");

    let longest = "x".repeat(64 * 1024);
    client.type_text(format!("{longest}\n").as_bytes());
    peer.expect(format!("alice: {longest}").as_bytes());

    client.type_text(format!("{longest}y\nshort\n").as_bytes());
    peer.expect(b"alice: short");
    client.stderr.wait_for("not sent");
}

// ---- against the real server ----

#[test]
fn the_real_servers_glued_notices_are_shown_one_per_line() {
    let server = Chatd::start(&["--room-port"], &[]);
    let port = server.port("--room-port");
    let mut alice = Client::room(port, "alice");
    // chatd writes the join notice and the greeting back to back: one chunk, usually.
    alice
        .stdout
        .wait_for("* alice joined\n* connected: you are in the room\n");

    let mut bob = Client::room(port, "bob");
    bob.stdout.wait_for("* connected: you are in the room\n");
    alice.stdout.wait_for("* bob joined\n");
    bob.type_text(b"hi alice\n");
    alice.stdout.wait_for("bob: hi alice\n");
    bob.close_stdin();
    assert!(bob.wait_exit().success());
    alice.stdout.wait_for("* bob left\n");

    alice.close_stdin();
    assert!(alice.wait_exit().success());
    let out = alice.stdout.wait_closed();
    assert!(!out.contains("esta conectado"), "{out}");
}

/// The switchboard: users of CCM, MATOU and the OCM room `lobby` are in ROOM's room too. Their
/// messages arrive as `N: T` and their comings and goings as ROOM's own notices, so `chat room`
/// shows them as it shows ROOM members (the wire says nothing of their protocol).
#[test]
fn lobby_users_of_other_protocols_are_shown_with_their_names_and_presence() {
    let server = lobby::Lobby::start();
    let mut rui = server.room("rui");

    let mut cid = server.ccm("cid");
    rui.stdout.wait_for("* cid joined\n");
    cid.type_text(b"@* hello rui\n");
    rui.stdout.wait_for("cid: hello rui\n");

    let mut mia = server.matou("mia", &std::env::temp_dir());
    rui.stdout.wait_for("* mia joined\n");
    mia.type_text("olá rui\n".as_bytes());
    rui.stdout.wait_for("mia: olá rui\n");

    let mut olga = server.ocm("create", "olga");
    rui.stdout.wait_for("* olga joined\n");
    olga.type_text("こんにちは\n".as_bytes());
    rui.stdout.wait_for("olga: こんにちは\n");

    cid.close_stdin();
    assert!(cid.wait_exit().success());
    rui.stdout.wait_for("* cid left\n");
    mia.close_stdin();
    assert!(mia.wait_exit().success());
    rui.stdout.wait_for("* mia left\n");

    rui.close_stdin();
    assert!(rui.wait_exit().success());
    let out = rui.stdout.wait_closed();
    assert!(!out.contains("esta conectado"), "{out}");
    assert!(!out.contains("acabou de sair"), "{out}");
}
