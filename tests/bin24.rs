//! BIN24 over real sockets: the real server on ephemeral ports, a real offline store.

mod chatd;
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TempDir, TestServer, WAIT};
use switchboard::config::Config;
use switchboard::protocol::bin24::codec::{self, Name};

const ACK_TIMEOUT_MS: u64 = 300;

fn config(data: &TempDir) -> Config {
    Config {
        bin24_port: Some(0),
        bin24_ack_timeout_ms: ACK_TIMEOUT_MS,
        data_dir: data.0.clone(),
        ..Config::for_tests()
    }
}

fn name(text: &str) -> Name {
    Name::new(text.as_bytes()).expect("valid name")
}

/// A BIN24 client that reads whole frames.
struct Peer {
    user: String,
    stream: TcpStream,
    buffer: Vec<u8>,
    next_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    frame_type: u16,
    message_id: u32,
    src: String,
    dst: String,
    body: Vec<u8>,
    raw: Vec<u8>,
}

impl Peer {
    fn connect(addr: SocketAddr, user: &str) -> Peer {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Peer {
            user: user.to_string(),
            stream,
            buffer: Vec::new(),
            next_id: 0,
        }
    }

    fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).expect("send");
    }

    /// Send a message to `to`; returns its messageID.
    fn send(&mut self, to: &str, text: &str) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let frame = codec::encode(
            codec::TYPE_MESSAGE,
            id,
            name(&self.user),
            name(to),
            text.as_bytes(),
        )
        .expect("frame");
        self.send_raw(&frame);
        id
    }

    /// Answer a received message the way the original client does: same len, type 1, SRC and
    /// DST swapped, the first len-24 bytes of "200\\0" followed by garbage.
    fn answer(&mut self, to: &Received) {
        let mut body = b"200\0".to_vec();
        body.resize(to.body.len().max(3), b'?');
        body.truncate(to.body.len().max(3));
        let frame = codec::encode(
            codec::TYPE_ANSWER,
            to.message_id,
            name(&self.user),
            name(&to.src),
            &body,
        )
        .expect("frame");
        self.send_raw(&frame);
    }

    fn try_frame(&mut self) -> Option<Received> {
        if self.buffer.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([self.buffer[0], self.buffer[1]]));
        if self.buffer.len() < len {
            return None;
        }
        let raw: Vec<u8> = self.buffer.drain(..len).collect();
        let field = |at: usize| {
            let bytes: [u8; 8] = raw[at..at + 8].try_into().expect("8 bytes");
            String::from_utf8_lossy(Name::from_field(&bytes).as_bytes()).into_owned()
        };
        Some(Received {
            frame_type: u16::from_le_bytes([raw[2], raw[3]]),
            message_id: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            src: field(8),
            dst: field(16),
            body: raw[24..].to_vec(),
            raw,
        })
    }

    /// The next frame, waiting for it (bounded).
    fn recv(&mut self) -> Received {
        loop {
            if let Some(frame) = self.try_frame() {
                return frame;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("{}: connection closed while waiting for a frame", self.user),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(err) => panic!("{}: no frame arrived: {err}", self.user),
            }
        }
    }

    /// The server closes this connection (bounded wait); frames before the close are returned.
    fn expect_closed(&mut self) -> Vec<Received> {
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = self.try_frame() {
                frames.push(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return frames,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return frames,
                Err(err) => panic!("{}: not closed: {err}", self.user),
            }
        }
    }

    /// Register with the server: the first frame's SRC names the user. An answer to nobody
    /// is dropped by the server, so it registers without side effects.
    fn register(&mut self) {
        let frame = codec::encode(
            codec::TYPE_ANSWER,
            u32::MAX,
            name(&self.user),
            name("nobody"),
            b"200",
        )
        .expect("frame");
        self.send_raw(&frame);
    }
}

impl Peer {
    /// Register and wait until the server knows the name: a message to oneself comes back once
    /// it does. Returns any frames that arrived first (stored ones).
    fn register_and_wait(&mut self) -> Vec<Received> {
        let id = self.send(&self.user.clone(), "sync");
        let mut before = Vec::new();
        loop {
            let frame = self.recv();
            if frame.frame_type == codec::TYPE_MESSAGE && frame.message_id == id {
                // Answer it; the answer comes back too (its DST is ourselves).
                self.answer(&frame);
                continue;
            }
            if frame.frame_type == codec::TYPE_ANSWER && frame.message_id == id {
                return before;
            }
            before.push(frame);
        }
    }
}

fn expect_answer(frame: &Received, id: u32, from: &str, to: &str, text: &[u8]) {
    assert_eq!(frame.frame_type, codec::TYPE_ANSWER, "{frame:?}");
    assert_eq!(frame.message_id, id, "{frame:?}");
    assert_eq!(frame.src, from, "{frame:?}");
    assert_eq!(frame.dst, to, "{frame:?}");
    assert_eq!(frame.body, text, "{frame:?}");
    assert_eq!(frame.raw.len(), 24 + text.len());
}

#[test]
fn a_message_to_an_online_user_is_delivered_and_answered_200() {
    let data = TempDir::new("bin24-online");
    let server = TestServer::start(config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut bob = Peer::connect(addr, "bob");
    assert!(bob.register_and_wait().is_empty());
    let mut alice = Peer::connect(addr, "alice");
    assert!(alice.register_and_wait().is_empty());

    let id = alice.send("bob", "hi bob");
    let got = bob.recv();
    assert_eq!(
        got,
        Received {
            frame_type: codec::TYPE_MESSAGE,
            message_id: id,
            src: "alice".into(),
            dst: "bob".into(),
            body: b"hi bob".to_vec(),
            raw: got.raw.clone(),
        }
    );
    bob.answer(&got);
    let answer = alice.recv();
    assert_eq!(answer.frame_type, codec::TYPE_ANSWER);
    assert_eq!(answer.message_id, id);
    assert_eq!(answer.src, "bob");
    assert_eq!(
        answer.raw.len(),
        got.raw.len(),
        "relayed verbatim, garbage included"
    );
}

#[test]
fn a_message_to_an_offline_user_gets_300_then_reaches_it_once_as_type_2() {
    let data = TempDir::new("bin24-offline");
    let server = TestServer::start(config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Peer::connect(addr, "alice");
    let first = alice.send("carol", "one");
    expect_answer(&alice.recv(), first, "carol", "alice", b"300");
    let second = alice.send("carol", "two");
    expect_answer(&alice.recv(), second, "carol", "alice", b"300");

    let mut carol = Peer::connect(addr, "carol");
    carol.register();
    for (id, body) in [(first, "one"), (second, "two")] {
        let got = carol.recv();
        assert_eq!(got.frame_type, codec::TYPE_OFFLINE);
        assert_eq!(got.message_id, id);
        assert_eq!(got.src, "alice");
        assert_eq!(got.body, body.as_bytes());
    }
    drop(carol);

    // Delivered frames left the store: a new connection gets nothing stored. A live message
    // proves the connection is registered and that nothing came before it.
    let mut carol = Peer::connect(addr, "carol");
    assert!(
        carol.register_and_wait().is_empty(),
        "no stored frame may come again"
    );
}

#[test]
fn an_unanswering_recipient_is_closed_at_the_ack_timeout_and_gets_its_messages_later() {
    let data = TempDir::new("bin24-timeout");
    let server = TestServer::start(config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut bob = Peer::connect(addr, "bob");
    assert!(bob.register_and_wait().is_empty());
    let mut alice = Peer::connect(addr, "alice");
    assert!(alice.register_and_wait().is_empty());

    let started = Instant::now();
    let id = alice.send("bob", "are you alive?");
    let got = bob.recv();
    assert_eq!(got.message_id, id);
    // Bob does not answer: after the ack timeout alice hears "300" and bob is closed.
    expect_answer(&alice.recv(), id, "bob", "alice", b"300");
    assert!(started.elapsed() >= Duration::from_millis(ACK_TIMEOUT_MS));
    bob.expect_closed();

    // When bob comes back, the unanswered message is waiting for him as type 2.
    let mut bob = Peer::connect(addr, "bob");
    bob.register();
    let again = bob.recv();
    assert_eq!(again.frame_type, codec::TYPE_OFFLINE);
    assert_eq!(again.message_id, id);
    assert_eq!(again.body, b"are you alive?");
}

#[test]
fn a_bad_frame_closes_only_its_connection() {
    let data = TempDir::new("bin24-bad");
    let server = TestServer::start(config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Peer::connect(addr, "alice");
    assert!(alice.register_and_wait().is_empty());
    let mut mallory = Peer::connect(addr, "mallory");
    mallory.send_raw(&[0xff, 0xff, 0, 0]); // len 65535
    mallory.expect_closed();
    let mut eve = Peer::connect(addr, "eve");
    eve.register();
    let spoofed =
        codec::encode(codec::TYPE_MESSAGE, 0, name("alice"), name("alice"), b"x").expect("frame");
    eve.send_raw(&spoofed);
    eve.expect_closed();
    // Alice is untouched.
    let id = alice.send("alice", "still here");
    assert_eq!(alice.recv().message_id, id);
}

/// A port that was free a moment ago (the binary takes a fixed port number).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn spawn_chatd(port: u16, data: &TempDir) -> std::process::Child {
    chatd::command(&[("--bin24-port", port)])
        .arg("--data-dir")
        .arg(&data.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chatd")
}

fn connect_when_listening(addr: SocketAddr, user: &str) -> Peer {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                drop(stream);
                return Peer::connect(addr, user);
            }
            Err(err) => {
                assert!(Instant::now() < deadline, "chatd never listened: {err}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn frames_answered_300_survive_sigkill_and_arrive_exactly_once_in_order() {
    const MESSAGES: u32 = 200;
    let data = TempDir::new("bin24-kill");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut child = spawn_chatd(port, &data);
    let mut alice = connect_when_listening(addr, "alice");
    for index in 0..MESSAGES {
        alice.send("dave", &format!("message {index}"));
    }
    // Every "300" is a promise that the frame is durable.
    let mut promised = Vec::new();
    for _ in 0..MESSAGES {
        let answer = alice.recv();
        expect_answer(&answer, answer.message_id, "dave", "alice", b"300");
        promised.push(answer.message_id);
    }
    child.kill().expect("SIGKILL chatd");
    child.wait().expect("reap chatd");

    let mut child = spawn_chatd(port, &data);
    let mut dave = connect_when_listening(addr, "dave");
    dave.register();
    let mut delivered = Vec::new();
    for _ in 0..MESSAGES {
        let got = dave.recv();
        assert_eq!(got.frame_type, codec::TYPE_OFFLINE);
        assert_eq!(got.body, format!("message {}", got.message_id).as_bytes());
        delivered.push(got.message_id);
    }
    promised.sort_unstable();
    assert_eq!(delivered, promised, "every promised frame, once, in order");
    // Nothing more: dave's message to himself is the next thing he receives.
    let sync = dave.send("dave", "sync");
    let got = dave.recv();
    assert_eq!(got.frame_type, codec::TYPE_MESSAGE);
    assert_eq!(got.message_id, sync);
    child.kill().expect("kill chatd");
    child.wait().expect("reap chatd");
}

#[test]
fn a_backlog_larger_than_the_output_limit_is_delivered_whole() {
    // 6,000 stored frames of about 1 KB: more than the 4 MiB hard output limit, which a
    // backlog queued at once would trip, closing the user on every connect.
    const MESSAGES: u32 = 6000;
    let data = TempDir::new("bin24-backlog");
    let server = TestServer::start(config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Peer::connect(addr, "alice");
    let body = "b".repeat(990);
    for _ in 0..MESSAGES {
        alice.send("erin", &body);
    }
    for _ in 0..MESSAGES {
        let answer = alice.recv();
        assert_eq!(answer.body, b"300", "{answer:?}");
    }
    let mut erin = Peer::connect(addr, "erin");
    erin.register();
    for id in 0..MESSAGES {
        let got = erin.recv();
        assert_eq!(got.frame_type, codec::TYPE_OFFLINE);
        assert_eq!(got.message_id, id);
    }
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 0);
}

#[test]
fn chatd_refuses_to_start_on_a_corrupt_store_and_leaves_it_alone() {
    let data = TempDir::new("bin24-corrupt");
    std::fs::create_dir_all(&data.0).expect("mkdir");
    let file = data.0.join(switchboard::store::FILE_NAME);
    let garbage = b"this is not a redb database, and it must not be reset".repeat(100);
    std::fs::write(&file, &garbage).expect("write garbage");
    let output = chatd::command(&[("--bin24-port", free_port())])
        .arg("--data-dir")
        .arg(&data.0)
        .output()
        .expect("run chatd");
    assert_eq!(output.status.code(), Some(1));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("cannot open the offline store"), "log: {log}");
    assert!(
        log.contains(&*file.to_string_lossy()),
        "the error names the file: {log}"
    );
    assert_eq!(
        std::fs::read(&file).expect("read"),
        garbage,
        "the file is untouched"
    );
}
