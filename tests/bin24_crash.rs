//! Crash safety of BIN24's durable offline store (protocols.md, BIN24 rules 4 and 7): a real
//! chatd child is killed with SIGKILL while senders stream messages to offline and online
//! recipients, at a random count of "300" answers, then restarted on the same data directory.
//!
//! Each round checks, from what the clients saw:
//! - every message answered "300" is delivered exactly once, as type 2, after the restart;
//! - every message answered "200" (delivered live) is delivered once and never stored;
//! - a message that got no answer is delivered at most once;
//! - nothing is delivered that was not sent, and each sender's stored frames keep their order;
//! - after a clean stop and another restart, nothing delivered comes again.
//!
//! "Everything stored has arrived" is known, not guessed: after each restart a marker message
//! is stored for every recipient and answered "300" before it signs in. Stored frames go out
//! oldest first, so every earlier stored frame arrives before the marker.
//!
//! The rounds are random: the seed is printed, and `BIN24_CRASH_SEED=<seed>` replays them.
//!
//! And the clean stop (SIGTERM, docs/ARCHITECTURE.md "Shutdown" and "The offline store"): a
//! backlog cut short while its client is not reading arrives whole after the restart (frames
//! read may come again, as the contract allows, once), and every frame chatd took in while
//! appends were in flight is durable after it, each "300" among them.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child;
mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use child::Output;
use common::{wait_unread, TempDir, WAIT};
use switchboard::protocol::bin24::codec::{self, Frame, Name};
use switchboard::protocol::testing::TestRng;

const ROUNDS: usize = 5;
const SENDERS: [&str; 3] = ["s0", "s1", "s2"];
/// Never signed in before the crash: everything sent to them goes to the store.
const OFFLINE: [&str; 4] = ["off0", "off1", "off2", "off3"];
/// Signed in and answering before the crash: their messages are forwarded live.
const ONLINE: [&str; 2] = ["on0", "on1"];
const MARKER: &str = "marker";
/// Most messages a sender has sent and not yet had answered (each round draws its window up
/// to this): traffic keeps flowing during the kill without piling everything into the kernel's
/// buffers at once, and small windows make many small group commits, so kill points are fine.
const SENDER_WINDOW_MAX: usize = 64;
/// Far above the test's length, so an online recipient never times out under a busy machine:
/// an ack timeout would store a live message too, which the contract allows to arrive twice.
const ACK_TIMEOUT_MS: u64 = 120_000;

/// A chatd child process with its stderr collected (it logs where it listens).
struct Chatd {
    child: Child,
    stderr: Output,
    port: u16,
}

/// A port that was free a moment ago (chatd takes a fixed BIN24 port: 0 disables BIN24).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl Chatd {
    /// Start on `data`, on `port` if given (a restart keeps its address) or a free one. Should
    /// another process take the port in between, chatd exits at bind and a new port is tried.
    fn start(data: &TempDir, port: Option<u16>) -> Chatd {
        Chatd::start_with(data, port, &[])
    }

    /// [`Chatd::start`] with `extra` flags.
    fn start_with(data: &TempDir, port: Option<u16>, extra: &[&str]) -> Chatd {
        let mut port = port.unwrap_or_else(free_port);
        for _ in 0..5 {
            let mut child = chatd::command(&[("--bin24-port", port)])
                .args([
                    "--bin24-ack-timeout-ms",
                    &ACK_TIMEOUT_MS.to_string(),
                    "--data-dir",
                ])
                .arg(&data.0)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn chatd");
            let mut stderr =
                Output::collect("chatd stderr", child.stderr.take().expect("piped stderr"));
            if stderr.wait_for_or_close("BIN24 listening on").is_some() {
                return Chatd {
                    child,
                    stderr,
                    port,
                };
            }
            let _ = child.wait();
            let log = stderr.text();
            assert!(
                log.contains("cannot listen for BIN24"),
                "chatd exited at start, not for its port: {log}"
            );
            port = free_port();
        }
        panic!("chatd could not bind a BIN24 port in 5 tries");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// SIGKILL: no flush, no store shutdown.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL chatd");
        self.child.wait().expect("reap chatd");
    }

    /// SIGTERM: the clean stop, which finishes every store request it has taken (durably).
    /// Returns chatd's log.
    fn terminate(mut self) -> String {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => break status,
                // std has no wait with a timeout; polling try_wait is the portable bounded wait.
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                None => panic!("chatd did not stop on SIGTERM: {}", self.stderr.text()),
            }
        };
        let log = self.stderr.wait_closed();
        assert!(
            status.success(),
            "chatd's clean stop failed: {status}; {log}"
        );
        log
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn name(text: &str) -> Name {
    Name::new(text.as_bytes()).expect("valid name")
}

fn text(name: Name) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

/// A BIN24 client that reads whole frames. A closed connection is an answer, not a failure:
/// after the kill every client sees one.
struct Peer {
    user: String,
    stream: TcpStream,
    buffer: BytesMut,
    next_id: u32,
}

impl Peer {
    fn connect(addr: SocketAddr, user: &str) -> Peer {
        Peer::over(TcpStream::connect(addr).expect("connect"), user)
    }

    /// As [`Peer::connect`], with a receive buffer of `recv_buffer_bytes` asked for before
    /// connecting (which also stops the kernel from sizing it itself).
    fn connect_with_recv_buffer(addr: SocketAddr, user: &str, recv_buffer_bytes: usize) -> Peer {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .set_recv_buffer_size(recv_buffer_bytes)
            .expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        Peer::over(socket.into(), user)
    }

    fn over(stream: TcpStream, user: &str) -> Peer {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Peer {
            user: user.to_string(),
            stream,
            buffer: BytesMut::new(),
            next_id: 0,
        }
    }

    /// Send a message; its messageID, or the error once the server is gone.
    fn send(&mut self, to: &str, body: &[u8]) -> std::io::Result<u32> {
        let id = self.next_id;
        let frame = codec::encode(codec::TYPE_MESSAGE, id, name(&self.user), name(to), body)
            .expect("body fits a frame");
        self.stream.write_all(&frame)?;
        self.next_id += 1;
        Ok(id)
    }

    /// Answer a live message "200", as its recipient.
    fn answer(&mut self, message: &Frame) -> std::io::Result<()> {
        let frame = codec::encode(
            codec::TYPE_ANSWER,
            message.message_id(),
            name(&self.user),
            message.src(),
            codec::ANSWER_DELIVERED,
        )
        .expect("frame");
        self.stream.write_all(&frame)
    }

    /// The first frame's SRC signs the user in; an answer to nobody has no other effect.
    fn sign_in(&mut self) {
        let frame = codec::encode(
            codec::TYPE_ANSWER,
            u32::MAX,
            name(&self.user),
            name("nobody"),
            codec::ANSWER_DELIVERED,
        )
        .expect("frame");
        self.stream.write_all(&frame).expect("sign in");
    }

    /// The next frame; `None` once the server has closed the connection (or died).
    fn recv(&mut self) -> Option<Frame> {
        loop {
            match codec::decode(&mut self.buffer) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(err) => panic!("{}: the server sent a bad frame: {err}", self.user),
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return None,
                Err(err) => panic!("{}: no frame arrived: {err}", self.user),
            }
        }
    }

    fn recv_required(&mut self) -> Frame {
        match self.recv() {
            Some(frame) => frame,
            None => panic!("{}: the server closed the connection", self.user),
        }
    }

    /// Sign in and wait until the server knows the name: a message to oneself comes back once
    /// it does. Nothing else may arrive first (this user has nothing stored).
    fn sign_in_and_wait(&mut self) {
        let me = self.user.clone();
        let id = self.send(&me, b"sync").expect("send sync");
        let echo = self.recv_required();
        assert_eq!(
            (echo.frame_type(), echo.message_id()),
            (codec::TYPE_MESSAGE, id),
            "{me}: expected its own sync message first"
        );
        self.answer(&echo).expect("answer sync");
        let answer = self.recv_required();
        assert_eq!(
            (answer.frame_type(), answer.message_id()),
            (codec::TYPE_ANSWER, id),
            "{me}: expected the answer to its sync message"
        );
    }
}

/// One message a sender sent, and how the server answered it (if it did before dying).
#[derive(Debug)]
struct Sent {
    to: String,
    body: Vec<u8>,
    answer: Option<Vec<u8>>,
}

/// Send `plan` (recipient, body) in order, at most `window` unanswered, and record the
/// answers; each "300" is also reported on `stored`. Returns when every message is answered
/// or the server is gone.
fn run_sender(
    mut peer: Peer,
    plan: Vec<(String, Vec<u8>)>,
    window: usize,
    stored: Sender<()>,
) -> Vec<Sent> {
    let mut sent: Vec<Sent> = Vec::with_capacity(plan.len());
    let mut answered = 0;
    loop {
        while sent.len() < plan.len() && sent.len() - answered < window {
            let (to, body) = &plan[sent.len()];
            match peer.send(to, body) {
                Ok(id) => assert_eq!(id as usize, sent.len()),
                Err(_) => return sent, // the server was killed
            }
            sent.push(Sent {
                to: to.clone(),
                body: body.clone(),
                answer: None,
            });
        }
        if answered == plan.len() {
            return sent;
        }
        let Some(answer) = peer.recv() else {
            return sent;
        };
        assert_eq!(answer.frame_type(), codec::TYPE_ANSWER, "{}", peer.user);
        assert_eq!(text(answer.dst()), peer.user);
        let index = answer.message_id() as usize;
        let Some(message) = sent.get_mut(index) else {
            panic!("{}: an answer to message {index}, never sent", peer.user);
        };
        assert_eq!(
            text(answer.src()),
            message.to,
            "{}: answer {index}",
            peer.user
        );
        assert!(
            message.answer.is_none(),
            "{}: message {index} answered twice",
            peer.user
        );
        let body = answer.body().to_vec();
        if body == codec::ANSWER_STORED {
            // The receiver is gone once the test has what it waits for.
            let _ = stored.send(());
        }
        message.answer = Some(body);
        answered += 1;
    }
}

/// An online recipient: answers every live message "200" until the server dies; returns what
/// arrived.
fn run_online(mut peer: Peer) -> Vec<Frame> {
    let mut received = Vec::new();
    while let Some(frame) = peer.recv() {
        let answered = frame.frame_type() != codec::TYPE_MESSAGE || peer.answer(&frame).is_ok();
        received.push(frame);
        if !answered {
            break; // the server was killed
        }
    }
    received
}

/// Store a marker for every recipient (each must be answered "300"), then sign each in and
/// collect its stored frames up to its marker, which must come last. Returns them per
/// recipient, marker excluded.
fn collect_stored(addr: SocketAddr, recipients: &[&str], marker: &[u8]) -> Vec<Vec<Frame>> {
    let mut sender = Peer::connect(addr, MARKER);
    for recipient in recipients {
        sender.send(recipient, marker).expect("send marker");
    }
    let mut answered = Vec::new();
    for _ in recipients {
        let answer = sender.recv_required();
        assert_eq!(answer.frame_type(), codec::TYPE_ANSWER);
        answered.push(answer.message_id());
        assert_eq!(
            &answer.body()[..],
            codec::ANSWER_STORED,
            "a marker for an offline recipient must be stored: {answer:?}"
        );
    }
    answered.sort_unstable();
    assert!(
        answered.iter().copied().eq(0..recipients.len() as u32),
        "each marker answered once: {answered:?}"
    );
    recipients
        .iter()
        .map(|recipient| {
            let mut peer = Peer::connect(addr, recipient);
            peer.sign_in();
            let mut frames = Vec::new();
            loop {
                let frame = peer.recv_required();
                assert_eq!(
                    frame.frame_type(),
                    codec::TYPE_OFFLINE,
                    "{recipient}: only stored frames may arrive: {frame:?}"
                );
                assert_eq!(text(frame.dst()), *recipient);
                if text(frame.src()) == MARKER && &frame.body()[..] == marker {
                    // Everything read, a clean close: what the recipient's TCP acknowledged is
                    // delivered, once chatd reads the FIN. A signal first stops all reading,
                    // and delivery unknown at shutdown stays stored: come back to the next
                    // login (at-least-once), as the next restart's check would see.
                    let peer_port = peer.stream.local_addr().expect("local address").port();
                    drop(peer);
                    wait_closed_by_server(addr.port(), peer_port);
                    return frames;
                }
                frames.push(frame);
            }
        })
        .collect()
}

/// Waits (bounded by `WAIT`) until the server's end of the loopback connection between its
/// `server_port` and the client's `client_port` has left ESTABLISHED and CLOSE_WAIT (the
/// server read the client's FIN and closed), per the kernel's /proc/net/tcp.
fn wait_closed_by_server(server_port: u16, client_port: u16) {
    const ESTABLISHED: &str = "01";
    const CLOSE_WAIT: &str = "08";
    let hex_port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let open = table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && hex_port(fields[1]) == Some(server_port)
                && hex_port(fields[2]) == Some(client_port)
                && (fields[3] == ESTABLISHED || fields[3] == CLOSE_WAIT)
        });
        if !open {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "chatd never closed its end of the connection from port {client_port}"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// One delivery of a message: where, and how.
#[derive(Debug)]
struct Delivery {
    to: String,
    frame_type: u16,
    body: Vec<u8>,
}

fn one_round(round: usize, rng: &mut TestRng) {
    let data = TempDir::new("bin24-crash");
    let chatd = Chatd::start(&data, None);
    let addr = chatd.addr();

    let online: Vec<_> = ONLINE
        .iter()
        .map(|user| {
            let mut peer = Peer::connect(addr, user);
            peer.sign_in_and_wait();
            thread::spawn(move || run_online(peer))
        })
        .collect();

    // Most messages go to offline recipients, where durability is at stake.
    let mut offline_messages = 0;
    let plans: Vec<Vec<(String, Vec<u8>)>> = SENDERS
        .iter()
        .map(|sender| {
            let count = 100 + rng.below(200);
            (0..count)
                .map(|index| {
                    let to = if rng.below(5) == 0 {
                        ONLINE[rng.below(ONLINE.len())]
                    } else {
                        offline_messages += 1;
                        OFFLINE[rng.below(OFFLINE.len())]
                    };
                    let mut body = format!("r{round}/{sender}/{index}/{to}/").into_bytes();
                    body.resize(body.len() + rng.below(200), b'x');
                    (to.to_string(), body)
                })
                .collect()
        })
        .collect();
    let kill_after_stored = 1 + rng.below(offline_messages);
    let window = 1 + rng.below(SENDER_WINDOW_MAX);
    eprintln!(
        "round {round}: {} messages, {offline_messages} to offline users, window {window}, \
         SIGKILL after {kill_after_stored} \"300\" answers",
        plans.iter().map(Vec::len).sum::<usize>()
    );

    let (stored_tx, stored_rx) = mpsc::channel();
    let senders: Vec<_> = SENDERS
        .iter()
        .zip(plans)
        .map(|(user, plan)| {
            let peer = Peer::connect(addr, user);
            let stored = stored_tx.clone();
            thread::spawn(move || run_sender(peer, plan, window, stored))
        })
        .collect();
    drop(stored_tx);
    for seen in 0..kill_after_stored {
        match stored_rx.recv_timeout(WAIT) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => {
                panic!("round {round}: only {seen} \"300\" answers within {WAIT:?}")
            }
            Err(RecvTimeoutError::Disconnected) => panic!(
                "round {round}: the senders finished with {seen} \"300\" answers, {offline_messages} \
                 messages to offline users"
            ),
        }
    }
    chatd.kill();

    let sent: Vec<Vec<Sent>> = senders
        .into_iter()
        .map(|sender| sender.join().expect("sender thread"))
        .collect();
    let mut deliveries: HashMap<(String, u32), Vec<Delivery>> = HashMap::new();
    for (user, thread) in ONLINE.iter().zip(online) {
        for frame in thread.join().expect("online recipient thread") {
            assert_eq!(
                frame.frame_type(),
                codec::TYPE_MESSAGE,
                "round {round}: {user} had nothing stored: {frame:?}"
            );
            deliveries
                .entry((text(frame.src()), frame.message_id()))
                .or_default()
                .push(Delivery {
                    to: user.to_string(),
                    frame_type: frame.frame_type(),
                    body: frame.body().to_vec(),
                });
        }
    }

    // Restart on the same directory and the same port; sign everyone in.
    let chatd = Chatd::start(&data, Some(addr.port()));
    let addr = chatd.addr();
    let recipients: Vec<&str> = OFFLINE.iter().chain(ONLINE.iter()).copied().collect();
    let first_marker = format!("end of round {round}, first restart").into_bytes();
    let stored = collect_stored(addr, &recipients, &first_marker);
    for (recipient, frames) in recipients.iter().zip(&stored) {
        // A sender's messages are stored in the order sent, and leave in that order.
        let mut last_id: BTreeMap<String, u32> = BTreeMap::new();
        for frame in frames {
            let src = text(frame.src());
            if let Some(&last) = last_id.get(&src) {
                assert!(
                    frame.message_id() > last,
                    "round {round}: {recipient} got {src}'s stored message {} after {last}",
                    frame.message_id()
                );
            }
            last_id.insert(src.clone(), frame.message_id());
            deliveries
                .entry((src, frame.message_id()))
                .or_default()
                .push(Delivery {
                    to: recipient.to_string(),
                    frame_type: frame.frame_type(),
                    body: frame.body().to_vec(),
                });
        }
    }

    let mut promised = 0;
    let mut unanswered = 0;
    let mut unanswered_delivered = 0;
    for (user, messages) in SENDERS.iter().zip(&sent) {
        for (id, message) in messages.iter().enumerate() {
            let key = (user.to_string(), id as u32);
            let got = deliveries.remove(&key).unwrap_or_default();
            for delivery in &got {
                assert_eq!(
                    (&delivery.to, &delivery.body),
                    (&message.to, &message.body),
                    "round {round}: {user}'s message {id} arrived changed"
                );
            }
            let types: Vec<u16> = got.iter().map(|d| d.frame_type).collect();
            match message.answer.as_deref() {
                Some(codec::ANSWER_STORED) => {
                    promised += 1;
                    assert_eq!(
                        types,
                        [codec::TYPE_OFFLINE],
                        "round {round}: {user}'s message {id} to {} was answered \"300\": it \
                         must arrive exactly once, stored",
                        message.to
                    );
                }
                Some(codec::ANSWER_DELIVERED) => assert_eq!(
                    types,
                    [codec::TYPE_MESSAGE],
                    "round {round}: {user}'s message {id} to {} was answered \"200\": \
                     delivered live once, never stored",
                    message.to
                ),
                Some(other) => panic!(
                    "round {round}: {user}'s message {id} answered {:?}",
                    String::from_utf8_lossy(other)
                ),
                None => {
                    unanswered += 1;
                    unanswered_delivered += types.len();
                    assert!(
                        types.len() <= 1,
                        "round {round}: {user}'s unanswered message {id} to {} arrived {} times",
                        message.to,
                        types.len()
                    );
                }
            }
        }
    }
    assert!(
        deliveries.is_empty(),
        "round {round}: delivered but never sent: {deliveries:?}"
    );
    assert!(promised >= kill_after_stored, "round {round}");
    eprintln!(
        "round {round}: {promised} answered \"300\", {unanswered} unanswered at the kill, \
         {unanswered_delivered} of those delivered"
    );

    // What was delivered left the store: after a clean stop and another restart, each
    // recipient's new marker is the only thing waiting for it.
    chatd.terminate();
    let chatd = Chatd::start(&data, Some(addr.port()));
    let second_marker = format!("end of round {round}, second restart").into_bytes();
    let again = collect_stored(chatd.addr(), &recipients, &second_marker);
    for (recipient, frames) in recipients.iter().zip(again) {
        assert!(
            frames.is_empty(),
            "round {round}: {recipient} got {} stored frames a second time, the first {:?}",
            frames.len(),
            frames.first()
        );
    }
    chatd.kill();
}

#[test]
fn messages_answered_300_survive_sigkill_at_random_points_and_arrive_exactly_once() {
    let seed = match std::env::var("BIN24_CRASH_SEED") {
        Ok(text) => text
            .parse::<u64>()
            .expect("BIN24_CRASH_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos() as u64)
            .unwrap_or(1),
    };
    // xorshift is stuck at 0.
    let seed = seed.max(1);
    eprintln!("seed {seed}: replay with BIN24_CRASH_SEED={seed}");
    let mut rng = TestRng(seed);
    for round in 0..ROUNDS {
        one_round(round, &mut rng);
    }
}

/// Flags for the SIGTERM tests: no stored frame counts as delivered by the grace during a test
/// (only a read would tell, and the test's client does not answer), and a stop does not wait
/// long for output a client is not reading.
const TERM_FLAGS: [&str; 4] = [
    "--bin24-delivery-grace-ms",
    "60000",
    "--shutdown-grace-ms",
    "200",
];

/// Send `count` messages to `to` at once, then read their answers: all must be "300".
fn store_all(sender: &mut Peer, to: &str, count: usize, body: &dyn Fn(usize) -> Vec<u8>) {
    for index in 0..count {
        let id = sender.send(to, &body(index)).expect("send");
        assert_eq!(id as usize, index);
    }
    for _ in 0..count {
        let answer = sender.recv_required();
        assert_eq!(
            (answer.frame_type(), &answer.body()[..]),
            (codec::TYPE_ANSWER, codec::ANSWER_STORED),
            "{answer:?}"
        );
    }
}

#[test]
fn a_backlog_cut_by_sigterm_while_its_client_is_not_reading_arrives_whole_after_restart() {
    const FRAMES: usize = 2000;
    const READ_FIRST: usize = 100;
    let data = TempDir::new("bin24-term-backlog");
    let chatd = Chatd::start_with(&data, None, &TERM_FLAGS);
    let addr = chatd.addr();
    let body = |index: usize| {
        let mut body = format!("backlog {index} ").into_bytes();
        body.resize(900, b'.');
        body
    };
    let mut alice = Peer::connect(addr, "alice");
    store_all(&mut alice, "dave", FRAMES, &body);

    // dave reads the first frames, then stops reading while the backlog keeps coming: 32 KiB
    // wait in his kernel (acknowledged by his TCP, unread), more in flight and in the store
    // (chatd sends a window of unacknowledged frames at a time). His receive buffer is set, not
    // left to the kernel's sizing, which on a loaded machine once stopped taking data with
    // 30,208 bytes unread (about 90 KiB on a quiet one): set at 128 KiB it holds about 160 KiB
    // here, and the rest of the 1.8 MB backlog stays in flight and in the store.
    let mut dave = Peer::connect_with_recv_buffer(addr, "dave", 128 * 1024);
    dave.sign_in();
    let read: Vec<u32> = (0..READ_FIRST)
        .map(|_| dave.recv_required().message_id())
        .collect();
    wait_unread(&dave.stream, 32 * 1024);
    chatd.terminate();
    drop(dave);

    let chatd = Chatd::start_with(&data, Some(addr.port()), &TERM_FLAGS);
    let got = collect_stored(chatd.addr(), &["dave"], b"end of the backlog").remove(0);
    let mut times: BTreeMap<u32, usize> = BTreeMap::new();
    for frame in &got {
        assert_eq!(text(frame.src()), "alice");
        let id = frame.message_id();
        assert!((id as usize) < FRAMES, "never sent: {frame:?}");
        assert_eq!(&frame.body()[..], &body(id as usize)[..], "arrived changed");
        *times.entry(id).or_default() += 1;
    }
    let again = read.iter().filter(|id| times.contains_key(id)).count();
    for id in 0..FRAMES as u32 {
        let n = times.get(&id).copied().unwrap_or(0);
        if read.contains(&id) {
            // Read but never answered nor acknowledged for the grace: its delivery was unknown,
            // so it may come again (at-least-once), once.
            assert!(
                n <= 1,
                "read frame {id} arrived {n} times after the restart"
            );
        } else {
            assert_eq!(n, 1, "frame {id}, never read by dave, arrived {n} times");
        }
    }
    eprintln!(
        "{} frames after the restart: all {} unread, {again} of the {READ_FIRST} read again",
        got.len(),
        FRAMES - READ_FIRST
    );
    chatd.kill();
}

/// `frames in=N` of chatd's last statistics line (logged once it has stopped).
fn frames_in(log: &str) -> usize {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("stopped: "))
        .unwrap_or_else(|| panic!("no final statistics in the log: {log}"));
    let after = &line[line.find("frames in=").expect("frames in=") + "frames in=".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a count")
}

/// alice sends `frames` messages to offline dave at once; SIGTERM after 100 "300"s; chatd
/// restarted on its data dir. Returns (frames chatd took in, "300"s alice heard, whether the
/// grace ran out), after checking what holds either way.
fn sigterm_with_appends_in_flight(frames: usize, shutdown_grace_ms: &str) -> (usize, usize, bool) {
    let data = TempDir::new("bin24-term-appends");
    // Small group commits, so that many appends are still queued when the signal comes.
    let flags = [
        "--bin24-delivery-grace-ms",
        "60000",
        "--shutdown-grace-ms",
        shutdown_grace_ms,
        "--store-group-commit-max",
        "4",
    ];
    let chatd = Chatd::start_with(&data, None, &flags);
    let addr = chatd.addr();
    let body = |index: usize| format!("in flight {index}").into_bytes();
    // alice is the only client: every frame chatd takes in is one of hers, to offline dave.
    let mut alice = Peer::connect(addr, "alice");
    for index in 0..frames {
        assert_eq!(
            alice.send("dave", &body(index)).expect("send") as usize,
            index
        );
    }
    let mut answers: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while answers.len() < 100 {
        let answer = alice.recv_required();
        answers.insert(answer.message_id(), answer.body().to_vec());
    }
    let stopping = Instant::now();
    let log = chatd.terminate();
    eprintln!("chatd stopped {:?} after SIGTERM", stopping.elapsed());
    while let Some(answer) = alice.recv() {
        let previous = answers.insert(answer.message_id(), answer.body().to_vec());
        assert!(previous.is_none(), "answered twice: {answer:?}");
    }
    let taken = frames_in(&log);
    assert!(taken <= frames);
    for (id, text) in &answers {
        assert_eq!(&text[..], codec::ANSWER_STORED, "message {id}");
        assert!(
            (*id as usize) < taken,
            "answered {id}, yet only {taken} taken in"
        );
    }

    let chatd = Chatd::start_with(&data, Some(addr.port()), &flags);
    let got = collect_stored(chatd.addr(), &["dave"], b"end of the appends").remove(0);
    let ids: Vec<u32> = got.iter().map(Frame::message_id).collect();
    for frame in &got {
        assert_eq!(&frame.body()[..], &body(frame.message_id() as usize)[..]);
    }
    // Every frame chatd took in was submitted to the store and made durable before it exited,
    // whether or not its "300" went out; each arrives once, in order. Those never taken in got
    // no answer: their sender knows they were not stored.
    assert!(
        ids.iter().copied().eq(0..taken as u32),
        "taken in: {taken}; arrived after the restart: {} ({:?}...)",
        ids.len(),
        &ids[..ids.len().min(10)]
    );
    let grace_over = log.contains("shutdown grace period over");
    eprintln!(
        "{frames} sent, {taken} taken in before the stop, {} answered \"300\", {} durable \
         without their \"300\"{}",
        answers.len(),
        taken - answers.len(),
        if grace_over {
            " (the grace ran out)"
        } else {
            ""
        }
    );
    chatd.kill();
    (taken, answers.len(), grace_over)
}

#[test]
fn sigterm_with_appends_in_flight_answers_300_for_every_frame_taken_in() {
    // Within the grace the stop waits for the store, so every frame made durable also has its
    // "300" out; past it chatd says so (and what is left is made durable, unanswered).
    let (taken, answered, grace_over) = sigterm_with_appends_in_flight(1000, "5000");
    if grace_over {
        eprintln!("the 5 s grace ran out on this machine: not checked that all were answered");
    } else {
        assert_eq!(answered, taken, "a durable frame's \"300\" was not sent");
    }
}

#[test]
fn sigterm_past_the_grace_with_appends_in_flight_still_makes_every_frame_taken_in_durable() {
    // 200 ms is far from enough for 2,000 appends in groups of 4: the store's close at exit
    // does the rest, and the senders of those frames hear nothing (they were not told "300").
    sigterm_with_appends_in_flight(2000, "200");
}
