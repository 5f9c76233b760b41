//! BIN24 over real sockets: the real server on ephemeral ports, a real offline store.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bin24::{name, Bin24, Received};
use common::{wait_unread, TempDir, TestServer, WAIT};
use switchboard::config::Config;
use switchboard::protocol::bin24::codec;

const ACK_TIMEOUT_MS: u64 = 300;

fn config(data: &TempDir) -> Config {
    Config {
        bin24_port: Some(0),
        bin24_ack_timeout_ms: ACK_TIMEOUT_MS,
        data_dir: data.0.clone(),
        ..Config::for_tests()
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
    let mut bob = Bin24::connect(addr, "bob");
    assert!(bob.register_and_wait().is_empty());
    let mut alice = Bin24::connect(addr, "alice");
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
    let mut alice = Bin24::connect(addr, "alice");
    let first = alice.send("carol", "one");
    expect_answer(&alice.recv(), first, "carol", "alice", b"300");
    let second = alice.send("carol", "two");
    expect_answer(&alice.recv(), second, "carol", "alice", b"300");

    let mut carol = Bin24::connect(addr, "carol");
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
    let mut carol = Bin24::connect(addr, "carol");
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
    let mut bob = Bin24::connect(addr, "bob");
    assert!(bob.register_and_wait().is_empty());
    let mut alice = Bin24::connect(addr, "alice");
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
    let mut bob = Bin24::connect(addr, "bob");
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
    let mut alice = Bin24::connect(addr, "alice");
    assert!(alice.register_and_wait().is_empty());
    let mut mallory = Bin24::connect(addr, "mallory");
    mallory.send_raw(&[0xff, 0xff, 0, 0]); // len 65535
    mallory.expect_closed();
    let mut eve = Bin24::connect(addr, "eve");
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

/// A chatd child serving BIN24 on a test's data directory (a restart keeps it, and its
/// address); SIGKILLed when dropped.
struct Bin24Chatd {
    child: std::process::Child,
    stderr: child::Output,
    addr: SocketAddr,
}

impl Bin24Chatd {
    /// Started on `data` with `extra` flags, on `port` if given or a free one. Ready when chatd
    /// logs that it listens on that port: no connect probe (one could reach another process
    /// holding the port, and polling it is sleep-and-hope). A first start whose port another
    /// process took meanwhile is retried on another; a restart's port must be its own.
    fn start(data: &TempDir, port: Option<u16>, extra: &[&str]) -> Bin24Chatd {
        Bin24Chatd::start_limited(data, port, extra, None)
    }

    /// [`Bin24Chatd::start`], with at most `file_size_max` bytes per file if given: a full disk
    /// without a tiny filesystem. RLIMIT_FSIZE makes a write or a truncate past it fail with
    /// EFBIG, as a full disk fails one with ENOSPC; SIGXFSZ, which would kill chatd instead,
    /// is ignored (an ignored signal stays ignored across exec).
    fn start_limited(
        data: &TempDir,
        port: Option<u16>,
        extra: &[&str],
        file_size_max: Option<u64>,
    ) -> Bin24Chatd {
        let tries = if port.is_some() { 1 } else { 5 };
        let mut port = port.unwrap_or_else(free_port);
        for _ in 0..tries {
            let mut command = chatd::command(&[("--bin24-port", port)]);
            command
                .arg("--data-dir")
                .arg(&data.0)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if let Some(bytes) = file_size_max {
                use std::os::unix::process::CommandExt;
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                // SAFETY: the closure runs in the child between fork and exec, where only
                // async-signal-safe calls are allowed: signal(2) and setrlimit(2) are, it
                // allocates nothing (last_os_error reads errno into a plain value) and takes
                // no lock; `limit` is a plain value moved in.
                unsafe {
                    command.pre_exec(move || {
                        if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
                            || libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            let mut child = command.spawn().expect("spawn chatd");
            let mut stderr =
                child::Output::collect("chatd stderr", child.stderr.take().expect("piped"));
            if stderr
                .wait_for_or_close(&format!("BIN24 listening on 127.0.0.1:{port}\n"))
                .is_some()
            {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                return Bin24Chatd {
                    child,
                    stderr,
                    addr,
                };
            }
            let _ = child.wait();
            eprintln!("chatd did not start on port {port}: {}", stderr.text());
            port = free_port();
        }
        panic!("chatd did not start on a BIN24 port");
    }

    /// SIGTERM, the clean stop: returns once chatd has exited 0.
    fn terminate(mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is this
        // test's own child, not yet reaped, so it names no other process.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "SIGTERM chatd"
        );
        self.stderr.wait_closed();
        let status = self.child.wait().expect("reap chatd");
        assert!(status.success(), "chatd's clean stop: {status}");
    }

    /// SIGKILL: no flush, no store shutdown.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL chatd");
        self.child.wait().expect("reap chatd");
    }
}

impl Drop for Bin24Chatd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn frames_answered_300_survive_sigkill_and_arrive_exactly_once_in_order() {
    const MESSAGES: u32 = 200;
    let data = TempDir::new("bin24-kill");
    let chatd = Bin24Chatd::start(&data, None, &[]);
    let addr = chatd.addr;
    let mut alice = Bin24::connect(addr, "alice");
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
    chatd.kill();

    let chatd = Bin24Chatd::start(&data, Some(addr.port()), &[]);
    let mut dave = Bin24::connect(addr, "dave");
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
    chatd.kill();
}

#[test]
fn a_backlog_larger_than_the_output_limit_is_delivered_whole() {
    // 6,000 stored frames of about 1 KB: more than the 4 MiB hard output limit, which a
    // backlog queued at once would trip, closing the user on every connect.
    const MESSAGES: u32 = 6000;
    let data = TempDir::new("bin24-backlog");
    let server = TestServer::start(config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let body = "b".repeat(990);
    for _ in 0..MESSAGES {
        alice.send("erin", &body);
    }
    for _ in 0..MESSAGES {
        let answer = alice.recv();
        assert_eq!(answer.body, b"300", "{answer:?}");
    }
    let mut erin = Bin24::connect(addr, "erin");
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

// Custody of stored frames: a frame leaves the store only when the recipient really has it.
// These tests attack that promise the way a client that does not read would.

/// A server whose delivery grace outlasts every test: an acknowledged frame counts as
/// delivered only by an answer or a clean close.
fn custody_config(data: &TempDir) -> Config {
    Config {
        bin24_delivery_grace_ms: 60_000,
        ..config(data)
    }
}

/// `count` messages from `from` to the offline `to`, each answered "300"; their messageIDs.
fn store_messages(from: &mut Bin24, to: &str, count: usize) -> Vec<u32> {
    let ids: Vec<u32> = (0..count)
        .map(|index| from.send(to, &format!("stored {index}")))
        .collect();
    for _ in 0..count {
        let answer = from.recv();
        assert_eq!(answer.body, b"300", "{answer:?}");
    }
    ids
}

/// The size of each frame `store_messages` stored, as delivered (type 2).
fn stored_frame_bytes(index: usize) -> usize {
    24 + format!("stored {index}").len()
}

/// Collect stored (type 2) frames until every id of `want` has come; returns every stored
/// frame received, duplicates included.
fn collect_stored(peer: &mut Bin24, want: &[u32]) -> Vec<u32> {
    let mut missing: std::collections::BTreeSet<u32> = want.iter().copied().collect();
    let mut got = Vec::new();
    while !missing.is_empty() {
        let frame = peer.recv();
        if frame.frame_type == codec::TYPE_OFFLINE {
            missing.remove(&frame.message_id);
            got.push(frame.message_id);
        }
    }
    got
}

#[test]
fn stored_frames_left_unread_by_a_connection_that_resets_are_delivered_next_time() {
    const MESSAGES: usize = 200;
    let data = TempDir::new("bin24-reset-unread");
    let server = TestServer::start(custody_config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let ids = store_messages(&mut alice, "bob", MESSAGES);

    // bob logs in, lets every stored frame arrive in his kernel, reads none and closes:
    // Linux answers unread data with a reset.
    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    let all_bytes: usize = (0..MESSAGES).map(stored_frame_bytes).sum();
    wait_unread(&bob.stream, all_bytes);
    drop(bob);
    server.wait_connections(1);

    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    let got = collect_stored(&mut bob, &ids);
    assert_eq!(got.len(), MESSAGES, "every frame once more, none lost");
}

#[test]
fn after_a_partial_read_and_a_reset_every_unread_frame_comes_again() {
    const MESSAGES: usize = 200;
    const READ: usize = 50;
    let data = TempDir::new("bin24-reset-partial");
    let server = TestServer::start(custody_config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let ids = store_messages(&mut alice, "bob", MESSAGES);

    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    let first: Vec<u32> = (0..READ).map(|_| bob.recv().message_id).collect();
    let rest_bytes: usize = (READ..MESSAGES).map(stored_frame_bytes).sum();
    wait_unread(&bob.stream, rest_bytes.saturating_sub(bob.buffered()));
    drop(bob);
    server.wait_connections(1);

    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    let unread: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| !first.contains(id))
        .collect();
    let second = collect_stored(&mut bob, &unread);
    let duplicates = second.iter().filter(|id| first.contains(id)).count();
    // Nothing was confirmed (no answer, no clean close, the grace not over), so the read
    // frames come again too: duplicates, never a loss.
    assert_eq!(second.len(), MESSAGES);
    assert_eq!(duplicates, READ);
}

#[test]
fn answered_stored_frames_leave_the_store_at_once() {
    const MESSAGES: usize = 20;
    let data = TempDir::new("bin24-answered");
    let server = TestServer::start(custody_config(&data));
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let ids = store_messages(&mut alice, "bob", MESSAGES);

    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    for _ in 0..MESSAGES {
        let frame = bob.recv();
        assert_eq!(frame.frame_type, codec::TYPE_OFFLINE);
        bob.answer(&frame);
    }
    // The answers reach alice (rule 5): once the last is back, every answer was processed.
    let mut answered = Vec::new();
    while answered.len() < MESSAGES {
        let frame = alice.recv();
        assert_eq!(frame.frame_type, codec::TYPE_ANSWER);
        answered.push(frame.message_id);
    }
    assert_eq!(answered, ids);
    // A reset now, inside the grace, cannot bring them back: they were answered.
    socket2::SockRef::from(&bob.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0 makes the close a reset");
    drop(bob);
    server.wait_connections(1);
    let mut bob = Bin24::connect(addr, "bob");
    assert!(
        bob.register_and_wait().is_empty(),
        "nothing stored any more"
    );
}

#[test]
fn acknowledged_frames_are_delivered_when_the_connection_outlives_the_grace() {
    const MESSAGES: usize = 20;
    let data = TempDir::new("bin24-grace");
    let server = TestServer::start(Config {
        bin24_delivery_grace_ms: 200,
        admin_port: Some(0),
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let ids = store_messages(&mut alice, "bob", MESSAGES);
    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    assert_eq!(collect_stored(&mut bob, &ids).len(), MESSAGES);
    // Past the grace, bob is still connected: they count as delivered. Then a reset.
    server.wait_metric(
        "chatd_bin24_stored_delivered_total{how=\"grace\"}",
        MESSAGES as f64,
    );
    socket2::SockRef::from(&bob.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0 makes the close a reset");
    drop(bob);
    server.wait_connections(1);
    let mut bob = Bin24::connect(addr, "bob");
    assert!(bob.register_and_wait().is_empty(), "delivered, not stored");
}

#[test]
fn a_storm_of_logins_claiming_a_name_loses_none_of_its_frames() {
    const MESSAGES: usize = 2000;
    let data = TempDir::new("bin24-storm");
    let server = TestServer::start(Config {
        bin24_offline_window_bytes: 4096,
        ..custody_config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let ids = store_messages(&mut alice, "bob", MESSAGES);
    // 100 connections in a row, each claiming bob with one frame and gone at once.
    for _ in 0..100 {
        let mut claim = Bin24::connect(addr, "bob");
        claim.register();
        drop(claim);
    }
    server.wait_connections(1);
    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    let got = collect_stored(&mut bob, &ids);
    assert!(got.len() >= MESSAGES);
}

#[test]
fn the_store_wide_cap_answers_507_whoever_the_recipient() {
    let data = TempDir::new("bin24-global-cap");
    let server = TestServer::start(Config {
        store_frames_max: 5,
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    // Five recipients, one frame each: far under the per-user limits, at the store's.
    for (index, to) in ["r1", "r2", "r3", "r4", "r5"].iter().enumerate() {
        let id = alice.send(to, &format!("m{index}"));
        expect_answer(&alice.recv(), id, to, "alice", b"300");
    }
    let id = alice.send("r6", "one too many");
    expect_answer(&alice.recv(), id, "r6", "alice", b"507");
    // Delivery frees room: r1 reads its frame and closes cleanly.
    let mut r1 = Bin24::connect(addr, "r1");
    r1.register();
    assert_eq!(r1.recv().frame_type, codec::TYPE_OFFLINE);
    drop(r1);
    server.wait_connections(1);
    let deadline = Instant::now() + WAIT;
    loop {
        let id = alice.send("r6", "now it fits");
        let answer = alice.recv();
        if answer.body == b"300" {
            break;
        }
        expect_answer(&answer, id, "r6", "alice", b"507");
        assert!(Instant::now() < deadline, "room never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// README `--offline-frames-per-user-max`, `--offline-bytes-per-user-max` and PROTOCOLS.md
/// BIN24 rule 7: a frame that would pass its recipient's limit is answered "507" and not
/// stored, while other recipients' frames still are (the limits are one user's, not the
/// store's), and the frames answered "300" arrive, nothing else. Delivery frees the user's
/// room. The store's own tests check the ledger; this checks the flags reach it behind BIN24.
#[test]
fn the_per_user_limits_answer_507_for_that_user_alone_and_delivery_frees_room() {
    const FRAMES_PER_USER_MAX: u64 = 3;
    const BYTES_PER_USER_MAX: u64 = 1000;
    let data = TempDir::new("bin24-per-user-cap");
    let server = TestServer::start(Config {
        offline_frames_per_user_max: FRAMES_PER_USER_MAX,
        offline_bytes_per_user_max: BYTES_PER_USER_MAX,
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let mut send = |to: &str, text: &str, expected: &[u8]| {
        let id = alice.send(to, text);
        expect_answer(&alice.recv(), id, to, "alice", expected);
    };
    // The frame count: bob's fourth is refused, carol still takes frames after it.
    for index in 0..FRAMES_PER_USER_MAX {
        send("bob", &format!("bob {index}"), b"300");
    }
    send("bob", "bob over", b"507");
    send("carol", "carol 0", b"300");
    send("bob", "bob over again", b"507");
    // The byte count: two 600-byte bodies pass 1,000 bytes for dave, a small one still fits.
    let big = "d".repeat(600);
    send("dave", &big, b"300");
    send("dave", &big, b"507");
    send("dave", "dave small", b"300");

    // Exactly the frames answered "300" arrive (after the sign-in's echo or before it: the
    // backlog loads from the store), then nothing: the refused ones were not stored.
    let stored = |peer: &mut Bin24, count: usize| -> Vec<Vec<u8>> {
        let mut frames = peer.register_and_wait();
        while frames.len() < count {
            frames.push(peer.recv());
        }
        peer.expect_quiet_for(Duration::from_millis(200));
        frames
            .into_iter()
            .map(|frame| {
                assert_eq!(frame.frame_type, codec::TYPE_OFFLINE, "{frame:?}");
                peer.answer(&frame);
                frame.body
            })
            .collect()
    };
    let mut bob = Bin24::connect(addr, "bob");
    let expected: Vec<Vec<u8>> = (0..FRAMES_PER_USER_MAX)
        .map(|index| format!("bob {index}").into_bytes())
        .collect();
    assert_eq!(
        stored(&mut bob, expected.len()),
        expected,
        "bob's stored frames"
    );
    let mut dave = Bin24::connect(addr, "dave");
    assert_eq!(
        stored(&mut dave, 2),
        vec![big.into_bytes(), b"dave small".to_vec()],
        "dave's stored frames"
    );

    // Answered, bob's frames leave the store: his room is back while he is offline again.
    drop(bob);
    server.wait_connections(2);
    let deadline = Instant::now() + WAIT;
    loop {
        let id = alice.send("bob", "room again");
        // Bob's answers to his stored frames come to alice as well: skip them.
        let answer = loop {
            let frame = alice.recv();
            if frame.message_id == id {
                break frame;
            }
        };
        if answer.body == b"300" {
            break;
        }
        expect_answer(&answer, id, "bob", "alice", b"507");
        assert!(Instant::now() < deadline, "bob's room never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// PROTOCOLS.md BIN24 (`--bin24-unacked-per-recipient-max`, 10,000): at most that many
/// messages await answers from one recipient; the next ones are stored ("300") instead of
/// sent, so a recipient that never answers cannot make the server hold unbounded frames for
/// it (each unanswered one is kept until its answer or the ack timeout). Nothing is lost, and
/// a recipient that stays connected is not left waiting for its next login: once it answers,
/// the stored ones arrive on the same connection as type 2, once, in order, before any later
/// message. Without that (the code before), bob gets nothing more until he logs in again, and
/// alice's later message is the next thing he gets.
#[test]
fn messages_beyond_the_unanswered_cap_are_stored_then_sent_on_the_same_connection() {
    const UNACKED_MAX: usize = 3;
    const SENT: usize = 6;
    let data = TempDir::new("bin24-unacked-cap");
    let server = TestServer::start(Config {
        bin24_unacked_per_recipient_max: UNACKED_MAX,
        // Long enough that the ack timeout does not close bob during the test.
        bin24_ack_timeout_ms: 30_000,
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut bob = Bin24::connect(addr, "bob");
    assert!(bob.register_and_wait().is_empty());
    let mut alice = Bin24::connect(addr, "alice");
    let ids: Vec<u32> = (0..SENT)
        .map(|index| alice.send("bob", &format!("m{index}")))
        .collect();
    // The first three are sent to bob, who does not answer; the rest are stored.
    let live: Vec<Received> = (0..UNACKED_MAX).map(|_| bob.recv()).collect();
    for (frame, id) in live.iter().zip(&ids) {
        assert_eq!(frame.frame_type, codec::TYPE_MESSAGE, "{frame:?}");
        assert_eq!(frame.message_id, *id, "{frame:?}");
    }
    for &id in &ids[UNACKED_MAX..] {
        expect_answer(&alice.recv(), id, "bob", "alice", b"300");
    }
    bob.expect_quiet_for(Duration::from_millis(100));
    // Bob answers; alice gets his answers, and the stored ones come to bob on this connection.
    for frame in &live {
        bob.answer(frame);
    }
    for &id in &ids[..UNACKED_MAX] {
        let answer = alice.recv();
        assert_eq!(answer.frame_type, codec::TYPE_ANSWER, "{answer:?}");
        assert_eq!(answer.message_id, id, "{answer:?}");
    }
    let stored: Vec<Received> = (UNACKED_MAX..SENT).map(|_| bob.recv()).collect();
    let got: Vec<(u16, u32)> = stored
        .iter()
        .map(|frame| (frame.frame_type, frame.message_id))
        .collect();
    let want: Vec<(u16, u32)> = ids[UNACKED_MAX..]
        .iter()
        .map(|&id| (codec::TYPE_OFFLINE, id))
        .collect();
    assert_eq!(
        got, want,
        "the stored ones, on the same connection, in order"
    );
    // Bob answers them: delivered, they leave the store; alice hears his answers.
    for frame in &stored {
        bob.answer(frame);
    }
    for &id in &ids[UNACKED_MAX..] {
        let answer = alice.recv();
        assert_eq!(answer.frame_type, codec::TYPE_ANSWER, "{answer:?}");
        assert_eq!(answer.message_id, id, "{answer:?}");
    }
    // The backlog is all sent: a new message goes to bob live, and is the next thing he gets.
    let fresh = alice.send("bob", "fresh");
    let frame = bob.recv();
    assert_eq!(
        (frame.frame_type, frame.message_id),
        (codec::TYPE_MESSAGE, fresh),
        "{frame:?}"
    );
    bob.answer(&frame);
    alice.recv();
    bob.expect_quiet_for(Duration::from_millis(200));
    // Each came once: nothing is left for his next login.
    drop(bob);
    server.wait_connections(1);
    let mut bob = Bin24::connect(addr, "bob");
    assert!(bob.register_and_wait().is_empty());
    bob.expect_quiet_for(Duration::from_millis(200));
}

/// README `--bin24-sender-bytes-per-s-max` (8 MiB) and PROTOCOLS.md BIN24: besides the pair
/// limit (`a_direct_message_flood_...`), the bytes one sender makes online users receive in
/// all are limited: frames spread over many recipients pass while the sender's bucket holds,
/// then each is answered "429" and neither delivered nor stored; the pair limit is off so
/// only the total refuses.
#[test]
fn frames_spread_over_many_recipients_are_limited_by_the_senders_total() {
    const RECIPIENTS: usize = 4;
    const SENT: usize = 8;
    let data = TempDir::new("bin24-sender-total");
    let server = TestServer::start(Config {
        // A bucket of four 1,024-byte frames, refilling one in a quarter second.
        bin24_sender_bytes_per_s_max: 4096,
        bin24_pair_bytes_per_s_max: 0,
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut recipients: Vec<Bin24> = (0..RECIPIENTS)
        .map(|index| {
            let mut peer = Bin24::connect(addr, &format!("u{index}"));
            assert!(peer.register_and_wait().is_empty());
            peer
        })
        .collect();
    let mut alice = Bin24::connect(addr, "alice");
    let body = "b".repeat(1000);
    let frames: Vec<u8> = (0..SENT)
        .flat_map(|index| {
            codec::encode(
                codec::TYPE_MESSAGE,
                index as u32,
                name("alice"),
                name(&format!("u{}", index % RECIPIENTS)),
                body.as_bytes(),
            )
            .expect("frame")
            .to_vec()
        })
        .collect();
    alice.send_raw(&frames);
    // The first four reach their recipients, who answer them.
    for (index, peer) in recipients.iter_mut().enumerate() {
        let frame = peer.recv();
        assert_eq!(
            (frame.frame_type, frame.message_id),
            (codec::TYPE_MESSAGE, index as u32),
            "{frame:?}"
        );
        peer.answer(&frame);
    }
    let mut refused = Vec::new();
    let mut answered = Vec::new();
    for _ in 0..SENT {
        let answer = alice.recv();
        assert_eq!(answer.frame_type, codec::TYPE_ANSWER, "{answer:?}");
        if answer.body == b"429" {
            refused.push(answer.message_id);
        } else {
            answered.push(answer.message_id);
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, [0, 1, 2, 3], "answered by their recipients");
    assert_eq!(refused, [4, 5, 6, 7], "answered 429 by the server");
    // Neither delivered nor stored: each recipient's next frame is a later one from a
    // witness, and nothing comes at a new login.
    let mut witness = Bin24::connect(addr, "witness");
    for (index, peer) in recipients.iter_mut().enumerate() {
        let id = witness.send(&format!("u{index}"), "marker");
        let frame = peer.recv();
        assert_eq!(
            (frame.src.as_str(), frame.message_id),
            ("witness", id),
            "{frame:?}"
        );
        peer.answer(&frame);
    }
    drop(recipients);
    server.wait_connections(2);
    let mut again = Bin24::connect(addr, "u0");
    assert!(
        again.register_and_wait().is_empty(),
        "nothing was stored for u0"
    );
    again.expect_quiet_for(Duration::from_millis(200));
}

/// PROTOCOLS.md BIN24 rule 2 bounds (`--bin24-unconfirmed-bytes-per-conn-max`, 64 MiB): at
/// most that many bytes of stored frames are sent to one connection and not yet delivered.
/// Bob's TCP takes everything sent (he reads) but he answers nothing and the grace is long, so
/// nothing counts as delivered: the server stops at the cap (at most one frame past it), and
/// sends the rest as he answers; each of the 40 arrives once.
#[test]
fn stored_frames_sent_and_unconfirmed_stay_within_the_per_connection_cap() {
    const STORED: usize = 40;
    const CAP_BYTES: usize = 8 * 1024;
    let data = TempDir::new("bin24-unconfirmed-cap");
    let server = TestServer::start(Config {
        bin24_unconfirmed_bytes_per_conn_max: CAP_BYTES,
        bin24_offline_window_bytes: 4096,
        ..custody_config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let body = "s".repeat(1000);
    let ids: Vec<u32> = (0..STORED).map(|_| alice.send("bob", &body)).collect();
    for _ in 0..STORED {
        assert_eq!(alice.recv().body, b"300");
    }
    let mut bob = Bin24::connect(addr, "bob");
    let mut got = bob.register_and_wait();
    // Read all that comes until a quiet spell: a slow server can only make this smaller.
    let quiet = |bob: &mut Bin24, got: &mut Vec<Received>| loop {
        if let Some(frame) = bob.try_frame() {
            got.push(frame);
            continue;
        }
        bob.stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut chunk = [0u8; 65536];
        let read = bob.stream.read(&mut chunk);
        bob.stream.set_read_timeout(Some(WAIT)).expect("timeout");
        match read {
            Ok(0) => panic!("bob closed"),
            Ok(n) => bob.buffer.extend_from_slice(&chunk[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return,
            Err(err) => panic!("bob: {err}"),
        }
    };
    quiet(&mut bob, &mut got);
    let unconfirmed: usize = got.iter().map(|frame| frame.raw.len()).sum();
    assert!(
        !got.is_empty() && unconfirmed <= CAP_BYTES + 1024,
        "{} frames, {unconfirmed} bytes sent unanswered; the cap is {CAP_BYTES}",
        got.len()
    );
    // Answering them lets the rest come, each once.
    let mut answered = 0;
    while answered < STORED {
        for frame in &got[answered..] {
            bob.answer(frame);
        }
        answered = got.len();
        if answered < STORED {
            got.push(bob.recv());
            quiet(&mut bob, &mut got);
            let unanswered: usize = got[answered..].iter().map(|frame| frame.raw.len()).sum();
            assert!(
                unanswered <= CAP_BYTES + 1024,
                "{unanswered} bytes unanswered"
            );
        }
    }
    let seen: Vec<u32> = got.iter().map(|frame| frame.message_id).collect();
    assert_eq!(seen, ids, "every stored frame once, in order");
}

#[test]
fn a_flood_to_offline_users_is_held_back_not_dropped_when_the_store_queue_is_full() {
    const SENDERS: usize = 4;
    const MESSAGES: usize = 1000;
    let data = TempDir::new("bin24-flood");
    const QUEUE_MAX: usize = 4;
    let server = TestServer::start(Config {
        // A tiny queue: the senders outrun the storage thread and must be paused.
        store_requests_max: QUEUE_MAX,
        admin_port: Some(0),
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = std::sync::Arc::new(server);
    let sampler = {
        let (server, flooding) = (server.clone(), flooding.clone());
        std::thread::spawn(move || {
            let mut deepest = 0.0f64;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                let depth = server.metric("chatd_store_pending_requests").unwrap_or(0.0);
                deepest = deepest.max(depth);
            }
            deepest
        })
    };
    let threads: Vec<_> = (0..SENDERS)
        .map(|sender| {
            std::thread::spawn(move || {
                let mut peer = Bin24::connect(addr, &format!("s{sender}"));
                let body = "f".repeat(900);
                let frames: Vec<u8> = (0..MESSAGES)
                    .flat_map(|index| {
                        codec::encode(
                            codec::TYPE_MESSAGE,
                            index as u32,
                            name(&format!("s{sender}")),
                            name(&format!("o{}", index % 97)),
                            body.as_bytes(),
                        )
                        .expect("frame")
                        .to_vec()
                    })
                    .collect();
                // Written while answers come back: a second thread would be needed if the
                // answers could fill our receive window first; 1,000 27-byte answers cannot.
                peer.send_raw(&frames);
                let mut stored = 0;
                for _ in 0..MESSAGES {
                    let answer = peer.recv();
                    assert_eq!(answer.body, b"300", "{answer:?}");
                    stored += 1;
                }
                stored
            })
        })
        .collect();
    let stored: usize = threads
        .into_iter()
        .map(|thread| thread.join().expect("sender"))
        .sum();
    assert_eq!(
        stored,
        SENDERS * MESSAGES,
        "every frame stored, none refused"
    );
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let deepest = sampler.join().expect("sampler");
    // Reading stops once the queue is full; the read in progress may add its frames: one
    // 16 KiB read holds at most 18 of these 924-byte frames.
    let bound = (QUEUE_MAX + 16 * 1024 / 924 + 1) as f64;
    assert!(
        deepest <= bound,
        "{deepest} store requests queued, bound {bound}"
    );
}

#[test]
fn a_users_list_decides_who_logs_in_and_a_name_moves_only_from_its_address() {
    let data = TempDir::new("bin24-users");
    let users = switchboard::protocol::bin24::UserList::parse(
        "alice 127.0.0.1\nbob 127.0.0.0/8\ncarol 10.0.0.0/8\n",
    )
    .expect("list");
    let server = TestServer::start(Config {
        bin24_users: Some(users),
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    assert!(alice.register_and_wait().is_empty());
    // Not listed, or listed elsewhere: closed at the first frame.
    for user in ["mallory", "carol"] {
        let mut peer = Bin24::connect(addr, user);
        peer.register();
        peer.expect_closed();
    }
    // A message to a name that can never log in is refused, not stored.
    let id = alice.send("mallory", "nobody reads this");
    expect_answer(&alice.recv(), id, "mallory", "alice", b"507");

    // bob from 127.0.0.1 holds the name; bob from 127.0.0.2 may not push him off.
    let mut bob = Bin24::connect(addr, "bob");
    assert!(bob.register_and_wait().is_empty());
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .expect("bind 127.0.0.2");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut intruder = Bin24::wrap(stream, "bob");
    intruder.register();
    intruder.expect_closed();
    // The real bob is still there.
    let id = alice.send("bob", "still yours");
    let got = bob.recv();
    assert_eq!((got.frame_type, got.message_id), (codec::TYPE_MESSAGE, id));
}

/// A full disk, at the process level (PROTOCOLS.md BIN24 rule 7, RELIABILITY.md "Storage
/// failures"): chatd runs with a file-size limit at its store file's size when empty, so the
/// first time the store needs more room its write fails. Senders then hear "507", never a
/// "300" for a frame that was not kept; every frame answered "300" before arrives once, in
/// order, after a restart with room again; a frame answered "507" may arrive too (a failed
/// commit's fate is unknown), at most once, and nothing else.
#[test]
fn a_full_disk_answers_507_and_every_frame_answered_300_before_arrives_after_a_restart() {
    const WINDOW: usize = 100;
    const MESSAGES_MAX: usize = 50_000;
    let data = TempDir::new("bin24-full-disk");
    // The store file as chatd creates it, holding nothing, closed cleanly (so that opening it
    // again needs no recovery, which may write).
    let chatd = Bin24Chatd::start(&data, None, &[]);
    let addr = chatd.addr;
    chatd.terminate();
    let empty = std::fs::metadata(data.0.join(switchboard::store::FILE_NAME))
        .expect("the store file")
        .len();
    let mut chatd = Bin24Chatd::start_limited(&data, Some(addr.port()), &[], Some(empty));

    // Windows of 100 messages of about 1 KB to offline dave until the disk refuses, then one
    // more window.
    let mut alice = Bin24::connect(addr, "alice");
    let body = |id: u32| format!("message {id} {}", "x".repeat(900));
    let (mut kept, mut refused) = (Vec::new(), Vec::new());
    let mut windows_after_refusal = 0;
    while windows_after_refusal < 2 {
        assert!(
            kept.len() + refused.len() < MESSAGES_MAX,
            "{} frames answered \"300\" under a {empty}-byte file limit, none refused",
            kept.len()
        );
        let ids: Vec<u32> = (0..WINDOW)
            .map(|_| alice.send("dave", &body(alice.next_id)))
            .collect();
        for id in ids {
            let answer = alice.recv();
            assert_eq!(answer.message_id, id, "answers in order: {answer:?}");
            assert_eq!(answer.frame_type, codec::TYPE_ANSWER, "{answer:?}");
            match &answer.body[..] {
                b"300" => {
                    assert!(refused.is_empty(), "#{id} answered 300 after a 507");
                    kept.push(id);
                }
                b"507" => refused.push(id),
                other => panic!("#{id} answered {:?}", String::from_utf8_lossy(other)),
            }
        }
        if !refused.is_empty() {
            windows_after_refusal += 1;
        }
    }
    chatd
        .stderr
        .wait_for("none of it is reported durable, and the store is stopped");
    eprintln!(
        "file limit {empty} bytes: {} frames answered 300, then {} answered 507; the log: {}",
        kept.len(),
        refused.len(),
        chatd
            .stderr
            .text()
            .lines()
            .find(|line| line.contains("failed:"))
            .unwrap_or("")
    );
    assert!(!kept.is_empty(), "the empty store had room for nothing");
    chatd.kill();

    // Room again: everything answered "300" arrives once, in order; a marker stored last
    // says the backlog is over.
    let chatd = Bin24Chatd::start(&data, Some(addr.port()), &[]);
    let mut alice = Bin24::connect(addr, "alice");
    alice.next_id = u32::MAX / 2;
    let marker = alice.send("dave", "marker");
    expect_answer(&alice.recv(), marker, "dave", "alice", b"300");
    let mut dave = Bin24::connect(addr, "dave");
    dave.register();
    let mut delivered = Vec::new();
    loop {
        let got = dave.recv();
        assert_eq!(got.frame_type, codec::TYPE_OFFLINE, "{got:?}");
        if got.message_id == marker {
            break;
        }
        assert_eq!(got.body, body(got.message_id).as_bytes());
        delivered.push(got.message_id);
    }
    eprintln!(
        "after the restart: {} frames delivered ({} answered 300)",
        delivered.len(),
        kept.len()
    );
    let (before, after_refusal) = delivered.split_at(delivered.len().min(kept.len()));
    assert_eq!(
        before,
        &kept[..],
        "every frame answered 300, once, in order"
    );
    for id in after_refusal {
        assert!(refused.contains(id), "#{id} arrived, never sent or twice");
    }
    let mut unique = after_refusal.to_vec();
    unique.dedup();
    assert_eq!(
        unique.len(),
        after_refusal.len(),
        "a refused frame arrived twice"
    );
    chatd.kill();
}

#[test]
fn frames_sent_when_chatd_is_killed_mid_backlog_arrive_after_restart() {
    const MESSAGES: usize = 3000;
    let data = TempDir::new("bin24-kill-backlog");
    let chatd = Bin24Chatd::start(&data, None, &[]);
    let addr = chatd.addr;
    let mut alice = Bin24::connect(addr, "alice");
    let ids = store_messages(&mut alice, "dave", MESSAGES);
    let mut dave = Bin24::connect(addr, "dave");
    dave.register();
    let first: Vec<u32> = (0..MESSAGES / 3).map(|_| dave.recv().message_id).collect();
    // Killed in the middle of the backlog, with frames written, acknowledged and unread.
    chatd.kill();
    drop(dave);

    let chatd = Bin24Chatd::start(&data, Some(addr.port()), &[]);
    let mut dave = Bin24::connect(addr, "dave");
    dave.register();
    let unread: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| !first.contains(id))
        .collect();
    let second = collect_stored(&mut dave, &unread);
    assert!(second.len() >= unread.len());
    chatd.kill();
}

#[test]
fn the_store_file_stays_within_a_small_multiple_of_the_store_wide_cap() {
    const CAP_BYTES: u64 = 512 * 1024;
    let data = TempDir::new("bin24-disk-cap");
    let server = TestServer::start(Config {
        store_bytes_max: CAP_BYTES,
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::connect(addr, "alice");
    let body = "d".repeat(1000);
    let mut stored = 0;
    let mut refused = 0;
    for round in 0..4 {
        for index in 0..1000 {
            alice.send(&format!("u{}", (round * 1000 + index) % 300), &body);
        }
        for _ in 0..1000 {
            match alice.recv().body.as_slice() {
                b"300" => stored += 1,
                b"507" => refused += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    assert_eq!(stored, CAP_BYTES as usize / 1024, "as many as fit, no more");
    assert_eq!(stored + refused, 4000);
    let file_bytes = std::fs::metadata(data.0.join(switchboard::store::FILE_NAME))
        .expect("the store's file")
        .len();
    eprintln!("store file: {file_bytes} bytes for a {CAP_BYTES}-byte cap");
    assert!(
        file_bytes <= 4 * CAP_BYTES + 2 * 1024 * 1024,
        "{file_bytes} bytes on disk for a {CAP_BYTES}-byte cap"
    );
}

#[test]
fn chatd_reads_its_users_file_and_refuses_a_bad_one_naming_the_line() {
    let data = TempDir::new("bin24-users-file");
    std::fs::create_dir_all(&data.0).expect("mkdir");
    let bad = data.0.join("users-bad");
    std::fs::write(&bad, "alice 127.0.0.1\nbob 127.0.0.1/40\n").expect("write");
    let output = chatd::command(&[("--bin24-port", free_port())])
        .arg("--data-dir")
        .arg(&data.0)
        .arg("--bin24-users")
        .arg(&bad)
        .output()
        .expect("run chatd");
    assert_eq!(output.status.code(), Some(2));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("users-bad, line 2") && log.contains("prefix"),
        "log: {log}"
    );

    // A good file: alice may log in, mallory may not.
    let good = data.0.join("users");
    std::fs::write(&good, "# who may log in\nalice 127.0.0.1\n").expect("write");
    let good = good.to_str().expect("a UTF-8 temp path");
    let chatd = Bin24Chatd::start(&data, None, &["--bin24-users", good]);
    let addr = chatd.addr;
    let mut alice = Bin24::connect(addr, "alice");
    assert!(alice.register_and_wait().is_empty());
    let mut mallory = Bin24::connect(addr, "mallory");
    mallory.register();
    mallory.expect_closed();
    chatd.kill();
}

/// A flood within the input budget (`--input-bytes-per-s-max`, 64 MiB/s, beyond which the
/// flooder itself is closed): 16 MiB/s, 8 MiB in half a second, twice the recipient's output
/// limit.
const FLOOD_BYTES_PER_S: f64 = 16.0 * 1024.0 * 1024.0;

/// Sleeps until `bytes` are due at [`FLOOD_BYTES_PER_S`] since `started`.
fn pace(started: Instant, bytes: usize) {
    let due = Duration::from_secs_f64(bytes as f64 / FLOOD_BYTES_PER_S);
    std::thread::sleep(due.saturating_sub(started.elapsed()));
}

/// What one sender's answers came to, counted on its own reading thread.
#[derive(Debug, Default)]
struct AnswerCounts {
    delivered: usize,
    stored: usize,
    refused_rate: usize,
    other: usize,
}

/// A flood of direct messages is cut at its sender, answered "429", instead of closing its
/// recipient as a slow consumer: bob reads nothing while mallory writes largest frames to him
/// at 16 MiB/s for half a second (before the limit, bob's queue passed the 4 MiB output
/// limit within that time and bob was closed, his frames going to the store).
#[test]
fn a_direct_message_flood_is_answered_429_and_its_recipient_stays() {
    let data = TempDir::new("bin24-flood");
    let server = TestServer::start(Config {
        // bob answers only after the flood; the ack timeout must not be what closes him.
        bin24_ack_timeout_ms: 20_000,
        admin_port: Some(0),
        ..config(&data)
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut bob = Bin24::connect(addr, "bob");
    bob.register_and_wait();
    let mut mallory = Bin24::connect(addr, "mallory");
    mallory.register_and_wait();
    let frames_before = server
        .metric("chatd_frames_in_total{protocol=\"bin24\"}")
        .expect("frames metric");

    let mut reader = Bin24::wrap(
        mallory.stream.try_clone().expect("clone"),
        "mallory (answers)",
    );
    let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
    reader
        .stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let answers = std::thread::spawn(move || {
        let mut counts = AnswerCounts::default();
        // Told how many frames were sent, it reads until each has had its answer.
        let mut expected = None;
        let deadline = Instant::now() + 2 * WAIT;
        loop {
            if expected.is_none() {
                expected = done_rx.try_recv().ok();
            }
            let total = counts.delivered + counts.stored + counts.refused_rate + counts.other;
            if expected == Some(total) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "answers missing: {counts:?} of {expected:?}"
            );
            if let Some(frame) = reader.try_frame() {
                match &frame.body[..frame.body.len().min(3)] {
                    b"200" => counts.delivered += 1,
                    b"300" => counts.stored += 1,
                    b"429" => counts.refused_rate += 1,
                    _ => counts.other += 1,
                }
                continue;
            }
            let mut chunk = [0u8; 65536];
            match reader.stream.read(&mut chunk) {
                Ok(0) => panic!("mallory was closed: {counts:?}"),
                Ok(n) => reader.buffer.extend_from_slice(&chunk[..n]),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(err) => panic!("mallory's answers: {err}"),
            }
        }
    });

    mallory
        .stream
        .set_write_timeout(Some(WAIT))
        .expect("write timeout");
    let body = "x".repeat(codec::BODY_BYTES_MAX);
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_millis(500) {
        let mut batch = Vec::with_capacity(64 * codec::FRAME_BYTES_MAX);
        for _ in 0..64 {
            let frame = codec::encode(
                codec::TYPE_MESSAGE,
                mallory.next_id,
                name("mallory"),
                name("bob"),
                body.as_bytes(),
            )
            .expect("frame");
            mallory.next_id += 1;
            batch.extend_from_slice(&frame);
        }
        mallory.stream.write_all(&batch).expect("mallory's flood");
        sent += 64;
        pace(started, sent * codec::FRAME_BYTES_MAX);
    }
    let flood_s = started.elapsed().as_secs_f64();
    // Once the server has read every frame, a message bob sends himself queues behind every
    // flood frame that was forwarded to him.
    server.wait_metric(
        "chatd_frames_in_total{protocol=\"bin24\"}",
        frames_before + sent as f64,
    );
    done_tx.send(sent).expect("answer counter");
    let sync = bob.send("bob", "after the flood");
    let mut forwarded = 0usize;
    loop {
        let frame = bob.recv();
        if frame.frame_type == codec::TYPE_MESSAGE {
            bob.answer(&frame);
            if frame.src == "bob" && frame.message_id == sync {
                break;
            }
            forwarded += 1;
        }
    }
    let counts = answers.join().expect("answer counter");
    eprintln!("mallory sent {sent} frames in {flood_s:.2} s; bob got {forwarded}; {counts:?}");
    assert_eq!(
        counts.delivered, forwarded,
        "bob answered every frame he got"
    );
    assert_eq!(
        counts.stored, 0,
        "bob was never closed, so nothing was stored"
    );
    assert_eq!(counts.other, 0);
    assert_eq!(counts.refused_rate, sent - forwarded);
    assert!(counts.refused_rate > 0, "the flood passed the limit");
    // The pair limit: a 2 MiB burst plus 2 MiB/s, in 1024-byte frames (plus what the server
    // read after the timer stopped: at most the time it took to read the rest).
    let allowed = 2048.0 + 2048.0 * (started.elapsed().as_secs_f64());
    assert!((forwarded as f64) <= allowed, "{forwarded} > {allowed}");
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 0, "{stats}");
}

/// The reconnect storm of docs/RELIABILITY.md on a real chatd, its memory sampled: 5,000
/// frames of 1,000 bytes (5 MB) stored for bob, then 100 logins claiming bob, each sending
/// one frame and gone at once, then bob reads everything. Each login used to load bob's whole
/// backlog: this test against the chatd of 9f849a3 saw it grow by 495 MiB (peak 509 MiB); now
/// one page at a time per user is in memory (grew under 1 MiB).
#[test]
fn a_storm_of_logins_keeps_chatd_memory_bounded_and_loses_nothing() {
    const MESSAGES: usize = 5_000;
    let chatd = chatd::Chatd::start(&["--bin24-port"], &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], chatd.port("--bin24-port")));
    let mut alice = Bin24::connect(addr, "alice");
    let body = "s".repeat(1000);
    let ids: Vec<u32> = (0..MESSAGES).map(|_| alice.send("bob", &body)).collect();
    for _ in 0..MESSAGES {
        assert_eq!(alice.recv().body, b"300");
    }
    let idle_kib = chatd.rss_kib();

    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = std::sync::Arc::clone(&sampling);
        let status = format!("/proc/{}/status", chatd.pid());
        std::thread::spawn(move || {
            let mut peak_kib = 0u64;
            while sampling.load(std::sync::atomic::Ordering::Acquire) {
                if let Some(kib) = std::fs::read_to_string(&status).ok().and_then(|text| {
                    text.lines()
                        .find_map(|line| line.strip_prefix("VmRSS:"))
                        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                }) {
                    peak_kib = peak_kib.max(kib);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak_kib
        })
    };
    for _ in 0..100 {
        let mut claim = Bin24::connect(addr, "bob");
        claim.register();
        drop(claim);
    }
    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    let got = collect_stored(&mut bob, &ids);
    sampling.store(false, std::sync::atomic::Ordering::Release);
    let peak_kib = sampler.join().expect("sampler");
    let grew_kib = peak_kib.saturating_sub(idle_kib);
    eprintln!("chatd: {idle_kib} KiB idle, peak {peak_kib} KiB during the storm");
    assert!(got.len() >= MESSAGES, "{} of {MESSAGES} arrived", got.len());
    // The backlog is 5 MB: a storm that loaded it per login would pass this many times over.
    assert!(
        grew_kib < 32 * 1024,
        "chatd grew by {grew_kib} KiB during the storm"
    );
}
