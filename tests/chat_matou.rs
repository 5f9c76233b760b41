//! `chat matou` against a fake MATOU server and a fake peer, over real sockets, driving the
//! real binary; then two clients against the real server.
//!
//! The test thread plays the server one packet at a time (decoding with the library codec), so
//! each test can check exactly which bytes the client sends and can send what it needs to. It
//! plays the other end of private links too: as Dst it connects to the ports the client sends,
//! as Src it gives the client its own listeners, so a test controls when a file's bytes flow
//! and can prove that a transfer and messages do not wait for each other.
//!
//! Every wait is for an event (a packet arriving, a line printed, the process exiting) and is
//! bounded by `WAIT`, so a broken client fails with a message instead of hanging the suite.
//! Children are killed on every path by `Drop`, panics included.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use switchboard::protocol::matou::codec::{
    self, decode_from_client, decode_from_peer, DecodeError, ErrorCode, Limits, Packet,
};

mod child;
mod lobby;

use chatd::Chatd;
use child::Client;

const WAIT: Duration = Duration::from_secs(10);

/// How long the server listens for packets that must NOT come. Only absence is checked this
/// way: a slow client can make such a check pass wrongly, never fail wrongly.
const QUIET: Duration = Duration::from_millis(300);

const LOCALHOST: [u8; 4] = [127, 0, 0, 1];

/// A fresh empty folder under the system's temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("chat-matou-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the scratch folder");
        Scratch(dir)
    }

    fn downloads(&self) -> PathBuf {
        self.0.join("downloads")
    }

    /// The names in the download folder, sorted; hidden temporary files included.
    fn downloaded(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.downloads()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Bytes that are not random-looking enough to hide an offset error, but never repeat with a
/// short period either.
fn content(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
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

    fn accept(&self) -> Wire {
        Wire::new(
            child::accept_within(&self.listener, "fake server"),
            Side::Server,
        )
    }

    /// Accepts the client and checks that its first packet is exactly CONNECT_REQUEST.
    fn accept_joining(&self, name: &str) -> Wire {
        let mut wire = self.accept();
        wire.expect_bytes(&connect_request_bytes(name));
        wire
    }

    /// Accepts, checks the name and accepts it.
    fn accept_joined(&self, client: &mut Client, name: &str) -> Wire {
        let mut wire = self.accept_joining(name);
        wire.send(&codec::connect_response(true));
        client
            .stderr
            .wait_for(&format!("chat: connected as {name}\n"));
        wire
    }
}

/// The bytes of CONNECT_REQUEST, spelled out rather than encoded with the codec under test.
fn connect_request_bytes(name: &str) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 1];
    bytes.extend_from_slice(&(name.len() as i32).to_be_bytes());
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

/// Which decoder reads what the client sends on a connection.
#[derive(Clone, Copy)]
enum Side {
    /// The client's server connection.
    Server,
    /// A private link's connection.
    Peer,
}

/// The test's end of one of the client's connections.
struct Wire {
    stream: TcpStream,
    side: Side,
    pending: BytesMut,
}

enum Received {
    Packet(Packet),
    Closed,
    Nothing,
}

impl Wire {
    fn new(stream: TcpStream, side: Side) -> Wire {
        Wire {
            stream,
            side,
            pending: BytesMut::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("fake end: send");
    }

    /// Reads more into `pending`: `Some(false)` when nothing came by `deadline`, `None` when
    /// the stream ended.
    fn fill(&mut self, deadline: Instant) -> Option<bool> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Some(false);
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("fake end: set read timeout");
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
                Err(e) => panic!("fake end: read failed: {e}"),
            }
        }
    }

    fn decode(&mut self) -> Result<Option<Packet>, DecodeError> {
        let limits = Limits::default();
        match self.side {
            Side::Server => decode_from_client(&mut self.pending, &limits),
            Side::Peer => decode_from_peer(&mut self.pending, &limits),
        }
    }

    fn next(&mut self, deadline: Instant) -> Received {
        loop {
            match self.decode() {
                Ok(Some(packet)) => return Received::Packet(packet),
                Ok(None) => {}
                Err(e) => panic!("fake end: the client sent a bad packet: {e}"),
            }
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => return Received::Nothing,
                None => return Received::Closed,
            }
        }
    }

    fn packet(&mut self) -> Packet {
        match self.next(Instant::now() + WAIT) {
            Received::Packet(packet) => packet,
            Received::Closed => panic!("fake end: connection closed, expected a packet"),
            Received::Nothing => panic!(
                "fake end: no whole packet within {WAIT:?}; pending {:?}",
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
                Some(false) | None => {
                    panic!("fake end: expected {want:?}, got only {:?}", self.pending)
                }
            }
        }
        let got = self.pending.split_to(want.len());
        assert_eq!(&got[..], want, "the client's bytes");
    }

    /// Exactly `len` raw bytes (a file's).
    fn raw(&mut self, len: usize) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::with_capacity(len);
        while got.len() < len {
            if self.pending.is_empty() {
                match self.fill(deadline) {
                    Some(true) => {}
                    Some(false) | None => panic!(
                        "fake end: got {} of {len} raw bytes within {WAIT:?}",
                        got.len()
                    ),
                }
            }
            let take = self.pending.len().min(len - got.len());
            got.extend_from_slice(&self.pending[..take]);
            self.pending.advance(take);
        }
        got
    }

    /// Waits for the client to close the connection; every packet before the close is a
    /// failure.
    fn expect_close(&mut self) {
        match self.next(Instant::now() + WAIT) {
            Received::Closed => {}
            Received::Packet(p) => panic!("fake end: expected the close, got {p:?}"),
            Received::Nothing => panic!("fake end: the client did not close within {WAIT:?}"),
        }
    }

    fn expect_quiet(&mut self, what: &str) {
        match self.next(Instant::now() + QUIET) {
            Received::Nothing => {}
            Received::Packet(p) => panic!("fake end: {what}, got {p:?}"),
            Received::Closed => panic!("fake end: {what}, but the client closed"),
        }
    }

    /// PUBLIC_SIGN_OUT, exactly, then the close.
    fn expect_sign_out(&mut self) {
        self.expect_bytes(&[0, 0, 0, 15]);
        self.expect_close();
    }
}

impl Client {
    fn matou(port: u16, name: &str, scratch: &Scratch) -> Self {
        let downloads = scratch.downloads();
        Client::spawn(&[
            "matou",
            "--user",
            name,
            "--port",
            &port.to_string(),
            "--download-dir",
            downloads.to_str().expect("UTF-8 temporary path"),
        ])
    }
}

/// A private link between the client and the test.
struct FakeLink {
    message: Wire,
    file: Wire,
}

/// The client (alice) accepts `peer`'s request; the test, as `peer` (Src), listens and the
/// client connects to it. Each call in a test needs a new `peer`, since the lines it waits for
/// name the peer.
fn link_as_dst(server: &mut Wire, client: &mut Client, peer: &str) -> FakeLink {
    server.send(&codec::private_request_notify(peer.as_bytes()));
    client.stdout.wait_for(&format!(
        "* {peer} asks for a private link: /accept {peer}\n"
    ));
    client.type_text(format!("/accept {peer}\n").as_bytes());
    assert_eq!(
        server.packet(),
        Packet::PrivateAccept {
            username: peer.to_owned().into()
        }
    );
    let message = TcpListener::bind("127.0.0.1:0").expect("bind");
    let file = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = |l: &TcpListener| i32::from(l.local_addr().expect("address").port());
    server.send(&codec::private_src_address(
        peer.as_bytes(),
        &LOCALHOST,
        port(&message),
        port(&file),
    ));
    let link = FakeLink {
        message: Wire::new(
            child::accept_within(&message, "the message port"),
            Side::Peer,
        ),
        file: Wire::new(child::accept_within(&file, "the file port"), Side::Peer),
    };
    client
        .stdout
        .wait_for(&format!("* private link with {peer} open"));
    link
}

/// The client (alice) asks bob; the test, as bob (Dst), connects to the ports the client sends
/// from `from` (an address of the loopback network).
fn link_as_src(server: &mut Wire, client: &mut Client, bob_ip: [u8; 4]) -> (u16, u16) {
    client.type_text(b"/private bob\n");
    assert_eq!(
        server.packet(),
        Packet::PrivateRequest {
            username: "bob".into()
        }
    );
    server.send(&codec::private_dst_address(b"bob", &bob_ip));
    match server.packet() {
        Packet::PrivateSrcPorts {
            username,
            message_port,
            file_port,
        } => {
            assert_eq!(&username[..], b"bob");
            let port = |p: i32| u16::try_from(p).expect("a port");
            (port(message_port), port(file_port))
        }
        other => panic!("expected PRIVATE_SRC_PORTS, got {other:?}"),
    }
}

/// Connects to the client's port from `from` (so the client sees that source address).
fn connect_from(from: [u8; 4], port: u16) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local = SocketAddr::from((Ipv4Addr::from(from), 0));
    socket.bind(&local.into()).expect("bind the source address");
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    socket
        .connect_timeout(&to.into(), WAIT)
        .expect("connect to the client");
    socket.into()
}

fn open_as_src(server: &mut Wire, client: &mut Client) -> FakeLink {
    let (message_port, file_port) = link_as_src(server, client, LOCALHOST);
    let link = FakeLink {
        message: Wire::new(connect_from(LOCALHOST, message_port), Side::Peer),
        file: Wire::new(connect_from(LOCALHOST, file_port), Side::Peer),
    };
    client.stdout.wait_for("* private link with bob open");
    link
}

#[test]
fn joins_then_sends_public_lines_requests_and_accepts() {
    let scratch = Scratch::new("bytes");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");

    client.type_text(b"hello all\n");
    // type 4, then the string: exactly these bytes.
    wire.expect_bytes(b"\0\0\0\x04\0\0\0\x09hello all");
    client.type_text("caf\u{e9} //x\r\n".as_bytes());
    wire.expect_bytes(b"\0\0\0\x04\0\0\0\x09caf\xc3\xa9 //x");
    client.type_text(b"//slash\n");
    wire.expect_bytes(b"\0\0\0\x04\0\0\0\x06/slash");
    client.type_text(b"/private bob\n");
    wire.expect_bytes(b"\0\0\0\x06\0\0\0\x03bob");
    client.stderr.wait_for("asked bob for a private link");

    wire.send(&codec::private_request_notify(b"carol"));
    client
        .stdout
        .wait_for("* carol asks for a private link: /accept carol\n");
    client.type_text(b"/accept carol\n");
    wire.expect_bytes(b"\0\0\0\x08\0\0\0\x05carol");

    client.type_text(b"/quit\n");
    wire.expect_sign_out();
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert!(status.success(), "status {status}, stderr: {stderr:?}");
}

#[test]
fn lines_are_checked_before_they_are_sent() {
    let scratch = Scratch::new("checked");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");

    let long = "x".repeat(513);
    client.type_text(format!("{long}\na\tb\n/who\n/msg bob hi\n/private a.b\n\n").as_bytes());
    client.stderr.wait_for("at most 512 bytes");
    client.stderr.wait_for("control characters");
    client.stderr.wait_for("unknown command /who");
    client.stderr.wait_for("no private link with bob");
    client.stderr.wait_for("letters and digits");
    wire.expect_quiet("refused lines are not sent");
    let ok = "y".repeat(512);
    client.type_text(format!("{ok}\n").as_bytes());
    assert_eq!(
        wire.packet(),
        Packet::PublicMessage {
            message: ok.into_bytes().into()
        }
    );
    client.type_text(b"/help\n");
    client.stdout.wait_for("/send bob PATH");
}

#[test]
fn notifications_are_shown() {
    let scratch = Scratch::new("shown");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");

    wire.send(&codec::connect_notify(b"alice"));
    wire.send(&codec::connect_notify(b"bob"));
    wire.send(&codec::public_broadcast(b"bob", b"hi alice"));
    // A packet split across writes is put back together.
    let split = codec::public_broadcast(b"bob", b"in two");
    wire.send(&split[..7]);
    client.stdout.wait_for("bob: hi alice\n");
    wire.send(&split[7..]);
    wire.send(&codec::sign_out_notify(b"bob"));
    client.stdout.wait_for("* bob left\n");
    wire.send(&codec::error(ErrorCode::UnknownUser, b"no user named zed"));
    client
        .stderr
        .wait_for("chat: error 4 (unknown user): no user named zed\n");
    wire.expect_quiet("notifications are not answered");

    client.close_stdin();
    wire.expect_sign_out();
    assert!(client.wait_exit().success());
    assert_eq!(
        client.stdout.wait_closed(),
        "* alice joined\n* bob joined\nbob: hi alice\nbob: in two\n* bob left\n"
    );
}

#[test]
fn lines_typed_before_the_answer_are_sent_after_it() {
    let scratch = Scratch::new("held");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    client.type_text(b"early\n");
    client.close_stdin();
    let mut wire = server.accept_joining("alice");
    wire.expect_quiet("nothing before the answer");
    wire.send(&codec::connect_response(true));
    wire.expect_bytes(b"\0\0\0\x04\0\0\0\x05early");
    wire.expect_sign_out();
    assert!(client.wait_exit().success());
}

#[test]
fn a_refused_name_exits_1_saying_it_is_taken() {
    let scratch = Scratch::new("refused");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joining("alice");
    wire.send(&codec::connect_response(false));
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert_eq!(
        stderr,
        "chat: the server refused the name alice: it is taken (another user, of MATOU or of \
         another protocol, has it); run again with another --user\n"
    );
    wire.expect_close();
}

#[test]
fn invalid_user_names_exit_2() {
    let scratch = Scratch::new("invalid");
    for (name, problem) in [
        ("", "empty"),
        ("a b", "ASCII letters and digits"),
        ("../x", "ASCII letters and digits"),
        ("Zo\u{e9}", "`\u{e9}` (U+00E9) is not one"),
        (&"a".repeat(33), "32 bytes"),
    ] {
        let mut client = Client::matou(1, name, &scratch);
        let status = client.wait_exit();
        let stderr = client.stderr.wait_closed();
        assert_eq!(status.code(), Some(2), "{name:?}: stderr: {stderr:?}");
        assert!(stderr.contains(problem), "{name:?}: stderr: {stderr:?}");
    }
}

#[test]
fn sigterm_and_sigint_sign_out_and_exit_0() {
    for signal in ["TERM", "INT"] {
        let scratch = Scratch::new("signal");
        let server = FakeServer::start();
        let mut client = Client::matou(server.port, "alice", &scratch);
        let mut wire = server.accept_joined(&mut client, "alice");
        let mut link = open_as_src(&mut wire, &mut client);

        client.signal(signal);
        link.message.expect_bytes(&[0, 0, 0, 14]);
        link.message.expect_close();
        wire.expect_sign_out();
        let status = client.wait_exit();
        assert!(status.success(), "SIG{signal}: status {status}");
    }
}

#[test]
fn server_hangup_exits_0_and_malformed_packets_exit_1() {
    let scratch = Scratch::new("hangup");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let wire = server.accept_joined(&mut client, "alice");
    drop(wire);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert!(status.success(), "status {status}, stderr: {stderr:?}");
    assert!(
        stderr.contains("chat: connection closed by the server"),
        "{stderr:?}"
    );

    for bad in [
        // A client-to-server type from the server.
        &codec::public_message(b"x")[..],
        // A negative string size.
        b"\0\0\0\x03\xff\xff\xff\xff",
        // An address of 5 bytes.
        b"\0\0\0\x09\0\0\0\x03bob\0\0\0\x05",
    ] {
        let mut client = Client::matou(server.port, "alice", &scratch);
        let mut wire = server.accept_joined(&mut client, "alice");
        wire.send(bad);
        let status = client.wait_exit();
        let stderr = client.stderr.wait_closed();
        assert_eq!(status.code(), Some(1), "{bad:?}: stderr: {stderr:?}");
        assert!(
            stderr.contains("chat: malformed packet from the server: "),
            "stderr: {stderr:?}"
        );
        wire.expect_close();
    }
}

#[test]
fn connection_refused_exits_1_naming_the_address() {
    let scratch = Scratch::new("refusedconn");
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut client = Client::matou(port, "alice", &scratch);
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr:?}");
    assert!(
        stderr.contains("cargo run --release --bin chatd"),
        "{stderr:?}"
    );
}

// ---- private links with a fake peer ----

#[test]
fn as_dst_messages_and_a_file_flow_both_ways_at_once() {
    let scratch = Scratch::new("dst");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");
    let mut link = link_as_dst(&mut wire, &mut client, "bob");

    // Messages both ways.
    link.message.send(&codec::private_message(b"hello alice"));
    client.stdout.wait_for("bob (private): hello alice\n");
    client.type_text(b"/msg bob hello bob\n");
    assert_eq!(
        link.message.packet(),
        Packet::PrivateMessage {
            message: "hello bob".into()
        }
    );

    // Half a file, then messages both ways while the rest is held back: the transfer does not
    // hold up messages in either direction.
    let file = content(1 << 20);
    link.file.send(&codec::private_file(file.len() as i64));
    link.file.send(&file[..file.len() / 2]);
    client
        .stdout
        .wait_for("* bob is sending a file of 1048576 bytes\n");
    link.message.send(&codec::private_message(b"during"));
    client.stdout.wait_for("bob (private): during\n");
    client.type_text(b"/msg bob also during\nstill public\n");
    assert_eq!(
        link.message.packet(),
        Packet::PrivateMessage {
            message: "also during".into()
        }
    );
    assert_eq!(
        wire.packet(),
        Packet::PublicMessage {
            message: "still public".into()
        }
    );
    assert!(
        !client.stdout.text().contains("* received"),
        "the file cannot be complete yet"
    );
    link.file.send(&file[file.len() / 2..]);
    let out = client
        .stdout
        .wait_for("* received 1048576 bytes from bob: ");
    let saved = scratch.downloads().join("from-bob-1.bin");
    assert!(
        out.contains(&format!("from bob: {}\n", saved.display())),
        "{out}"
    );
    assert!(
        fs::read(&saved).expect("the saved file") == file,
        "byte-identical"
    );

    // A second file never replaces the first; an empty file is a file.
    link.file.send(&codec::private_file(0));
    let out = client.stdout.wait_for("* received 0 bytes from bob: ");
    assert!(out.contains("from-bob-2.bin"), "{out}");
    assert_eq!(scratch.downloaded(), ["from-bob-1.bin", "from-bob-2.bin"]);

    // bob signs out of the link.
    link.message.send(&codec::private_sign_out());
    client.stdout.wait_for("* bob closed the private link\n");
    link.message.expect_close();
    link.file.expect_close();
    client.type_text(b"/msg bob gone?\n");
    client.stderr.wait_for("no private link with bob");
    client.close_stdin();
    wire.expect_sign_out();
    assert!(client.wait_exit().success());
}

#[test]
fn as_src_a_stuck_transfer_does_not_block_messages() {
    let scratch = Scratch::new("src");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");
    let mut link = open_as_src(&mut wire, &mut client);

    // Far more than the socket buffers hold: while the test does not read the file
    // connection, the client's sender is stuck mid-file.
    let big = scratch.0.join("big file.bin");
    let file = content(64 << 20);
    fs::write(&big, &file).expect("write the file to send");
    client.type_text(format!("/send bob {}\n", big.display()).as_bytes());
    client.stdout.wait_for(&format!(
        "* sending 67108864 bytes to bob: {}\n",
        big.display()
    ));
    client.type_text(b"/msg bob while stuck\npublic too\n");
    assert_eq!(
        link.message.packet(),
        Packet::PrivateMessage {
            message: "while stuck".into()
        }
    );
    assert_eq!(
        wire.packet(),
        Packet::PublicMessage {
            message: "public too".into()
        }
    );
    link.message.send(&codec::private_message(b"and back"));
    client.stdout.wait_for("bob (private): and back\n");
    assert!(!client.stdout.text().contains("* sent"), "still stuck");

    // Now the file, exactly: the header, then every byte.
    assert_eq!(link.file.packet(), Packet::PrivateFile { size: 64 << 20 });
    assert!(link.file.raw(file.len()) == file, "byte-identical");
    client.stdout.wait_for(&format!(
        "* sent 67108864 bytes to bob: {}\n",
        big.display()
    ));

    // A file that cannot be read is refused without harm to the link.
    client.type_text(b"/send bob /nonexistent/file\n");
    client
        .stderr
        .wait_for("file not sent to bob: /nonexistent/file");
    client.type_text(b"/msg bob fine\n");
    assert_eq!(
        link.message.packet(),
        Packet::PrivateMessage {
            message: "fine".into()
        }
    );

    client.type_text(b"/close bob\n");
    link.message.expect_bytes(&[0, 0, 0, 14]);
    link.message.expect_close();
    link.file.expect_close();
    client.stdout.wait_for("* private link with bob closed\n");
    wire.expect_quiet("closing a link says nothing to the server");
}

#[test]
fn end_of_input_waits_for_a_file_being_sent() {
    let scratch = Scratch::new("eofwait");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");
    let mut link = open_as_src(&mut wire, &mut client);

    let path = scratch.0.join("f.bin");
    let file = content(32 << 20);
    fs::write(&path, &file).expect("write the file to send");
    client.type_text(format!("/send bob {}\n", path.display()).as_bytes());
    client.stdout.wait_for("* sending 33554432 bytes");
    client.close_stdin();
    client
        .stderr
        .wait_for("leaving once the 1 file(s) being sent are done");
    wire.expect_quiet("no sign-out while the file is being sent");
    assert_eq!(link.file.packet(), Packet::PrivateFile { size: 32 << 20 });
    assert!(link.file.raw(file.len()) == file, "byte-identical");
    link.message.expect_bytes(&[0, 0, 0, 14]);
    wire.expect_sign_out();
    assert!(client.wait_exit().success());
}

#[test]
fn connections_from_another_address_are_refused() {
    let scratch = Scratch::new("stranger");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");
    // The server says bob is at 127.0.0.2; a connection from 127.0.0.1 is someone else.
    let (message_port, file_port) = link_as_src(&mut wire, &mut client, [127, 0, 0, 2]);
    let mut stranger = Wire::new(connect_from(LOCALHOST, message_port), Side::Peer);
    client
        .stderr
        .wait_for("refused a connection from 127.0.0.1:");
    stranger.expect_close();

    let mut message = Wire::new(connect_from([127, 0, 0, 2], message_port), Side::Peer);
    let _file = Wire::new(connect_from([127, 0, 0, 2], file_port), Side::Peer);
    client.stdout.wait_for("* private link with bob open");
    client.type_text(b"/msg bob you are you\n");
    assert_eq!(
        message.packet(),
        Packet::PrivateMessage {
            message: "you are you".into()
        }
    );
}

#[test]
fn a_peer_closing_mid_file_leaves_no_partial_file() {
    let scratch = Scratch::new("partial");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");
    let mut link = link_as_dst(&mut wire, &mut client, "bob");

    link.file.send(&codec::private_file(1000));
    link.file.send(&[7; 400]);
    client
        .stdout
        .wait_for("* bob is sending a file of 1000 bytes\n");
    drop(link);
    client
        .stderr
        .wait_for("after 400 of 1000 bytes; partial file removed");
    client
        .stdout
        .wait_for("* private link with bob lost: bob closed it without signing out\n");
    assert!(
        scratch.downloaded().is_empty(),
        "{:?}",
        scratch.downloaded()
    );
    // The session goes on.
    client.type_text(b"still here\n");
    assert_eq!(
        wire.packet(),
        Packet::PublicMessage {
            message: "still here".into()
        }
    );
}

#[test]
fn bad_input_from_a_peer_closes_only_that_link() {
    let scratch = Scratch::new("badpeer");
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joined(&mut client, "alice");

    // A file larger than --max-file-bytes (default 4 GiB) is refused by closing the link.
    let mut link = link_as_dst(&mut wire, &mut client, "bob");
    link.file.send(&codec::private_file(5 << 30));
    client.stderr.wait_for(
        "bob announced a file of 5368709120 bytes, more than --max-file-bytes (4294967296)",
    );
    link.message.expect_close();
    link.file.expect_close();
    assert!(scratch.downloaded().is_empty());

    // An unknown packet type on the message connection.
    let mut link = link_as_dst(&mut wire, &mut client, "carol");
    link.message.send(b"\0\0\0\x63");
    client
        .stderr
        .wait_for("malformed packet from carol: MATOU packet type 99 is unknown");
    link.message.expect_close();
    link.file.expect_close();

    // A message over 512 bytes.
    let mut link = link_as_dst(&mut wire, &mut client, "dave");
    link.message.send(&codec::private_message(&[b'x'; 513]));
    client
        .stderr
        .wait_for("malformed packet from dave: MATOU size field");
    link.message.expect_close();

    // Through it all the server connection is untouched.
    client.type_text(b"fine\n");
    assert_eq!(
        wire.packet(),
        Packet::PublicMessage {
            message: "fine".into()
        }
    );
}

#[test]
fn files_past_a_peers_caps_are_refused_and_leave_nothing() {
    let scratch = Scratch::new("caps");
    let server = FakeServer::start();
    let downloads = scratch.downloads();
    let mut client = Client::spawn(&[
        "matou",
        "--user",
        "alice",
        "--port",
        &server.port.to_string(),
        "--download-dir",
        downloads.to_str().expect("UTF-8 temporary path"),
        "--receive-files-max",
        "2",
        "--receive-bytes-max",
        "1000",
    ]);
    let mut wire = server.accept_joined(&mut client, "alice");

    // Files: the third is refused before anything is written, and closes the link.
    let mut link = link_as_dst(&mut wire, &mut client, "bob");
    link.file.send(&codec::private_file(600));
    link.file.send(&[1; 600]);
    client.stdout.wait_for("* received 600 bytes from bob: ");
    link.file.send(&codec::private_file(0));
    client.stdout.wait_for("* received 0 bytes from bob: ");
    link.file.send(&codec::private_file(1));
    link.file.send(b"x");
    client.stderr.wait_for(
        "refused a file of 1 bytes from bob: bob has sent 2 files in this session, the most \
         --receive-files-max (2) allows",
    );
    link.message.expect_close();
    link.file.expect_close();
    assert_eq!(scratch.downloaded(), ["from-bob-1.bin", "from-bob-2.bin"]);

    // Bytes, per peer: carol has her own allowance; 600, then 500 more would pass 1000.
    let mut link = link_as_dst(&mut wire, &mut client, "carol");
    link.file.send(&codec::private_file(600));
    link.file.send(&[2; 600]);
    client.stdout.wait_for("* received 600 bytes from carol: ");
    link.file.send(&codec::private_file(500));
    link.file.send(&[3; 500]);
    client.stderr.wait_for(
        "refused a file of 500 bytes from carol: with the 600 bytes carol has sent in this \
         session it would pass --receive-bytes-max (1000)",
    );
    link.file.expect_close();
    assert_eq!(
        scratch.downloaded(),
        ["from-bob-1.bin", "from-bob-2.bin", "from-carol-1.bin"],
        "nothing partial left"
    );

    // The session goes on.
    client.type_text(b"still here\n");
    assert_eq!(
        wire.packet(),
        Packet::PublicMessage {
            message: "still here".into()
        }
    );
}

#[test]
fn files_go_to_the_per_user_data_folder_by_default() {
    let scratch = Scratch::new("xdg");
    let server = FakeServer::start();
    let data = scratch.0.join("data");
    let mut client = Client::spawn_with_env(
        &[
            "matou",
            "--user",
            "alice",
            "--port",
            &server.port.to_string(),
        ],
        &[("XDG_DATA_HOME", Some(data.as_os_str()))],
    );
    let mut wire = server.accept_joined(&mut client, "alice");
    let mut link = link_as_dst(&mut wire, &mut client, "bob");
    link.file.send(&codec::private_file(2));
    link.file.send(b"hi");
    let saved = data.join("switchboard/downloads/from-bob-1.bin");
    client.stdout.wait_for(&format!(
        "* received 2 bytes from bob: {}\n",
        saved.display()
    ));
    assert_eq!(fs::read(&saved).expect("the saved file"), b"hi");

    // Without XDG_DATA_HOME: under HOME.
    let home = scratch.0.join("home");
    let mut client = Client::spawn_with_env(
        &[
            "matou",
            "--user",
            "alice",
            "--port",
            &server.port.to_string(),
        ],
        &[("XDG_DATA_HOME", None), ("HOME", Some(home.as_os_str()))],
    );
    let mut wire = server.accept_joined(&mut client, "alice");
    let mut link = link_as_dst(&mut wire, &mut client, "bob");
    link.file.send(&codec::private_file(1));
    link.file.send(b"x");
    let saved = home.join(".local/share/switchboard/downloads/from-bob-1.bin");
    client.stdout.wait_for(&format!(
        "* received 1 bytes from bob: {}\n",
        saved.display()
    ));
}

#[test]
fn wrong_ports_are_hinted() {
    let scratch = Scratch::new("wrongport");
    // A ROOM server speaks first: `alias?` is no MATOU packet.
    let server = FakeServer::start();
    let mut client = Client::matou(server.port, "alice", &scratch);
    let mut wire = server.accept_joining("alice");
    wire.send(b"alias?");
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(
        stderr.contains(&format!(
            "port {} answered like ROOM, not MATOU",
            server.port
        )),
        "stderr: {stderr:?}"
    );

    // Silence (an OCM port waits for 32 bytes): a note, then the close is explained.
    let server = FakeServer::start();
    let downloads = scratch.downloads();
    let mut client = Client::spawn(&[
        "matou",
        "--user",
        "alice",
        "--port",
        &server.port.to_string(),
        "--download-dir",
        downloads.to_str().expect("UTF-8 temporary path"),
        "--silence-hint-ms",
        "50",
    ]);
    let wire = server.accept_joining("alice");
    client.stderr.wait_for(&format!(
        "nothing from port {} yet, where a MATOU server answers the name at once",
        server.port
    ));
    drop(wire);
    assert!(client.wait_exit().success());
    let stderr = client.stderr.wait_closed();
    assert!(
        stderr.contains("closed the connection before answering the name"),
        "stderr: {stderr:?}"
    );
}

#[test]
fn help_explains_the_commands_and_the_output() {
    let scratch = Scratch::new("help");
    let mut client = Client::spawn(&["matou", "--help"]);
    assert!(client.wait_exit().success());
    let help = client.stdout.wait_closed();
    for needle in [
        "--user",
        "--download-dir",
        "--max-file-bytes",
        "/private bob",
        "/accept bob",
        "/msg bob hi",
        "/send bob PATH",
        "/close bob",
        "/quit",
        "* bob asks for a private link: /accept bob",
        "bob (private): hi",
        "* received 1048576 bytes from bob: ",
        "from-NAME-N.bin",
        "~/.local/share/switchboard/downloads",
        "--receive-files-max",
        "--receive-bytes-max",
        "progress",
        "7777",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from {help}");
    }
    drop(scratch);
}

// ---- against the real server ----

/// Where `want` first appears in `text`, or a failure naming both.
#[track_caller]
fn position(text: &str, want: &str) -> usize {
    text.find(want)
        .unwrap_or_else(|| panic!("{want:?} missing from {text:?}"))
}

#[test]
fn two_clients_link_through_the_real_server_and_exchange_messages_and_files() {
    let server = Chatd::start(&["--matou-port"], &[]);
    let port = server.port("--matou-port");
    let (scratch_a, scratch_b) = (Scratch::new("real-alice"), Scratch::new("real-bob"));

    let mut bob = Client::matou(port, "bob", &scratch_b);
    bob.stderr.wait_for("chat: connected as bob\n");
    let mut alice = Client::matou(port, "alice", &scratch_a);
    alice.stderr.wait_for("chat: connected as alice\n");
    bob.stdout.wait_for("* alice joined\n");

    // The name is taken while alice is connected.
    let mut again = Client::matou(port, "alice", &scratch_a);
    let status = again.wait_exit();
    let stderr = again.stderr.wait_closed();
    assert_eq!(status.code(), Some(1), "stderr: {stderr:?}");
    assert!(stderr.contains("refused the name alice"), "{stderr:?}");

    // Public messages go through the server, to everyone.
    alice.type_text(b"hello room\n");
    bob.stdout.wait_for("alice: hello room\n");
    alice.stdout.wait_for("alice: hello room\n");

    // The private-link flow, brokered by the server.
    alice.type_text(b"/private bob\n");
    bob.stdout
        .wait_for("* alice asks for a private link: /accept alice\n");
    bob.type_text(b"/accept alice\n");
    alice.stdout.wait_for("* private link with bob open");
    bob.stdout.wait_for("* private link with alice open");

    alice.type_text(b"/msg bob hello bob\n");
    bob.stdout.wait_for("alice (private): hello bob\n");
    bob.type_text(b"/msg alice hello alice\n");
    alice.stdout.wait_for("bob (private): hello alice\n");

    // 1 MiB, byte-identical.
    let small = scratch_a.0.join("one.bin");
    let small_content = content(1 << 20);
    fs::write(&small, &small_content).expect("write the file");
    alice.type_text(format!("/send bob {}\n", small.display()).as_bytes());
    let saved = scratch_b.downloads().join("from-alice-1.bin");
    bob.stdout.wait_for(&format!(
        "* received 1048576 bytes from alice: {}\n",
        saved.display()
    ));
    assert!(
        fs::read(&saved).expect("the saved file") == small_content,
        "byte-identical"
    );
    alice.stdout.wait_for("* sent 1048576 bytes to bob: ");

    // A transfer that cannot finish while bob is stopped (far more than the socket buffers
    // hold), and a private message sent meanwhile.
    let big = scratch_a.0.join("big.bin");
    let big_content = content(128 << 20);
    fs::write(&big, &big_content).expect("write the file");
    bob.signal("STOP");
    alice.type_text(format!("/send bob {}\n", big.display()).as_bytes());
    alice.stdout.wait_for("* sending 134217728 bytes to bob: ");
    // Lines are handled in order and the message is written before the next line is read,
    // so once the note for `/nothing` is out, the message is on its way.
    alice.type_text(b"/msg bob during the transfer\n/nothing\n");
    alice.stderr.wait_for("unknown command /nothing");
    assert!(
        !alice.stdout.text().contains("* sent 134217728"),
        "the transfer cannot be done while bob is stopped"
    );
    bob.signal("CONT");
    let out = bob
        .stdout
        .wait_for("* received 134217728 bytes from alice: ");
    // The message, queued behind no file, arrived while the transfer still ran.
    assert!(
        position(&out, "alice (private): during the transfer\n")
            < position(&out, "* received 134217728 bytes"),
        "{out}"
    );
    let saved = scratch_b.downloads().join("from-alice-2.bin");
    assert!(
        fs::read(&saved).expect("the saved file") == big_content,
        "byte-identical"
    );

    // Each side sees the other close the link, then leave.
    bob.type_text(b"/close alice\n");
    alice.stdout.wait_for("* bob closed the private link\n");
    alice.type_text(b"/msg bob still there?\n");
    alice.stderr.wait_for("no private link with bob");
    alice.type_text(b"/quit\n");
    assert!(alice.wait_exit().success());
    bob.stdout.wait_for("* alice left\n");
    bob.close_stdin();
    assert!(bob.wait_exit().success());
}

/// The switchboard: ROOM members, identified CCM users and the OCM room `lobby` are in the
/// public room too. Their messages arrive as PUBLIC_BROADCAST from their name and their
/// comings and goings as CONNECT_NOTIFY / SIGN_OUT_NOTIFY, so `chat matou` shows them as it
/// shows MATOU users (the wire says nothing of their protocol).
#[test]
fn lobby_users_of_other_protocols_are_shown_with_their_names_and_presence() {
    let server = lobby::Lobby::start();
    let scratch = Scratch::new("lobby");
    let mut mia = server.matou("mia", &scratch.downloads());

    let mut rui = server.room("rui");
    mia.stdout.wait_for("* rui joined\n");
    // `chat room` sends `rui: hello mia`; the server takes off the alias prefix.
    rui.type_text(b"hello mia\n");
    mia.stdout.wait_for("rui: hello mia\n");

    let mut cid = server.ccm("cid");
    mia.stdout.wait_for("* cid joined\n");
    cid.type_text(b"@* hi all\n");
    mia.stdout.wait_for("cid: hi all\n");

    let mut olga = server.ocm("create", "olga");
    mia.stdout.wait_for("* olga joined\n");
    olga.type_text("こんにちは\n".as_bytes());
    mia.stdout.wait_for("olga: こんにちは\n");

    // A user of another protocol has no MATOU connection to link with.
    mia.type_text(b"/private rui\n");
    mia.stderr.wait_for("chat: error 4");

    rui.close_stdin();
    assert!(rui.wait_exit().success());
    mia.stdout.wait_for("* rui left\n");
    cid.close_stdin();
    assert!(cid.wait_exit().success());
    mia.stdout.wait_for("* cid left\n");

    mia.close_stdin();
    assert!(mia.wait_exit().success());
    let out = mia.stdout.wait_closed();
    assert!(
        out.starts_with(
            "* mia joined
"
        ),
        "{out}"
    );
}
