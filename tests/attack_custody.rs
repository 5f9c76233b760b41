//! Attacks on "nothing answered is ever lost" and on the memory BIN24's custody may hold, over
//! real sockets against the real server (docs/RELIABILITY.md, "Promises and their attacks").

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::bin24::{Bin24, Received};
use common::web::Web;
use common::{ccm, Client, TempDir, TestServer, WAIT};
use switchboard::config::Config;
use switchboard::protocol::bin24::codec;

/// A TCP connection to `addr` whose receive buffer is about `recv_buffer_bytes` (asked before
/// connecting, so the window it offers stays small): a peer that stops reading then leaves
/// almost everything it is sent unacknowledged in the server.
fn connect_small(addr: SocketAddr, recv_buffer_bytes: usize) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .set_recv_buffer_size(recv_buffer_bytes)
        .expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// Poll the metric sample `line_start` (bounded by [`WAIT`]) until `done` says so; its value.
fn wait_metric_until(server: &TestServer, line_start: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = server.metric(line_start).unwrap_or(0.0);
        if done(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{line_start} stayed at {value}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Switchboard rule 4 (docs/PROTOCOLS.md): a BIN24 message to a CCM or web user is answered
/// "200" once the recipient's TCP acknowledged it; "if the CCM user closes first, the frame goes
/// to the CCM name's BIN24 store and the sender hears 300 once it is durable (never lost)", and
/// the same for a web user (PROTOCOLS.md, WEB). The attack: cat offers a tiny window and reads
/// nothing while bob (BIN24) sends 400 messages of 1,000 bytes, far more than cat's kernel
/// takes; then cat resets. Every message must get exactly one answer, "200" (cat's TCP took it:
/// the documented window) or "300"; every "300" must arrive, once and in bob's order, when the
/// name logs in over BIN24, and nothing else.
fn bin24_messages_never_acknowledged_are_stored_answered_300_and_arrive_once(over_web: bool) {
    const MESSAGES: usize = 400;
    let data = TempDir::new("attack-bin24-custody");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        ccm_port: Some(0),
        web_port: Some(0),
        admin_port: Some(0),
        data_dir: data.0.clone(),
        // Every answer below comes from cat's TCP or its close, none from bob's own ack rule.
        bin24_ack_timeout_ms: 60_000,
        ..Config::for_tests()
    });
    let bin24 = server.bin24.expect("BIN24 enabled");
    let mut bob = Bin24::log_in(&server, "bob");
    // cat, signed in over a 4 KiB receive buffer, reading nothing from here on; kept (as
    // either client) only to be dropped, which resets the connection.
    let (cat, destination): (Box<dyn std::any::Any>, &str) = if over_web {
        let stream = connect_small(server.web.expect("WEB enabled"), 4096);
        let mut cat = Web::upgrade(stream, "").expect("upgrade");
        cat.send_json(&serde_json::json!({"type": "signin", "name": "cat"}));
        assert_eq!(cat.recv()["type"], "welcome");
        (Box::new(cat), "web")
    } else {
        let stream = connect_small(server.ccm.expect("CCM enabled"), 4096);
        let mut cat = Client::over(stream, "cat");
        cat.stream.set_read_timeout(Some(WAIT)).expect("timeout");
        cat.send(&ccm::identify_message("cat"));
        ccm::expect_identity(&mut cat);
        (Box::new(cat), "ccm")
    };

    // bob's messageIDs go on from his sign-in's; each body names its own.
    let body = |id: u32| format!("{id:04} {}", "c".repeat(995));
    for _ in 0..MESSAGES {
        let id = bob.next_id;
        assert_eq!(bob.send("cat", &body(id)), id);
    }
    // All of them handed to cat's connection before it goes: each crossing is counted.
    server.wait_metric(
        &format!(
            "chatd_switchboard_messages_total{{origin=\"bin24\",destination=\"{destination}\"}}"
        ),
        MESSAGES as f64,
    );
    // cat closes with everything unread: Linux resets the connection.
    drop(cat);

    let mut answers: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while answers.len() < MESSAGES {
        let answer = bob.recv();
        assert_eq!(
            (answer.frame_type, &answer.src[..], &answer.dst[..]),
            (codec::TYPE_ANSWER, "cat", "bob"),
            "{answer:?}"
        );
        assert!(
            answer.body == b"200" || answer.body == b"300",
            "answer {answer:?}"
        );
        let id = answer.message_id;
        assert!(
            answers.insert(id, answer.body).is_none(),
            "message {id} answered twice"
        );
    }
    let stored: Vec<u32> = answers
        .iter()
        .filter(|(_, body)| body.as_slice() == b"300")
        .map(|(&id, _)| id)
        .collect();
    eprintln!(
        "over {destination}: {} of {MESSAGES} answered \"300\"",
        stored.len()
    );
    // cat's kernel held about 8 KiB: most of the 436 KB were never acknowledged.
    assert!(
        stored.len() > MESSAGES / 2,
        "only {} of {MESSAGES} answered \"300\": the attack did not leave them unacknowledged",
        stored.len()
    );

    // The name logs in over BIN24: every frame answered "300" arrives once, in order, as type 2.
    let mut cat = Bin24::connect(bin24, "cat");
    cat.register();
    let mut got: Vec<Received> = Vec::new();
    while got.len() < stored.len() {
        let frame = cat.recv();
        assert_eq!(
            (frame.frame_type, &frame.src[..], &frame.dst[..]),
            (codec::TYPE_OFFLINE, "bob", "cat"),
            "{frame:?}"
        );
        assert_eq!(
            frame.body,
            body(frame.message_id).as_bytes(),
            "message {}'s body",
            frame.message_id
        );
        cat.answer(&frame);
        got.push(frame);
    }
    let got_ids: Vec<u32> = got.iter().map(|frame| frame.message_id).collect();
    assert_eq!(
        got_ids, stored,
        "exactly the frames answered \"300\", once, in order"
    );
    // Answered, they leave the store; nothing else was stored for cat.
    wait_metric_until(&server, "chatd_store_frames", |frames| frames == 0.0);
    cat.expect_quiet_for(Duration::from_millis(100));
    server.stop();
}

#[test]
fn bin24_messages_a_ccm_user_never_acknowledged_are_stored_answered_300_and_arrive_once() {
    bin24_messages_never_acknowledged_are_stored_answered_300_and_arrive_once(false);
}

#[test]
fn bin24_messages_a_web_user_never_acknowledged_are_stored_answered_300_and_arrive_once() {
    bin24_messages_never_acknowledged_are_stored_answered_300_and_arrive_once(true);
}

/// BIN24 rules 2 and 6 (docs/PROTOCOLS.md): a message forwarded live and not answered when its
/// recipient's connection ends goes to the recipient's store, and its sender hears "300" once
/// it is durable. Here the connection ends by the output limit (a slow consumer), not by the ack
/// timeout that tests/bin24.rs attacks: bob offers a tiny window and reads nothing while alice,
/// unthrottled, sends 1,000 messages of 1,000 bytes (over the 256 KiB output limit once the
/// kernel buffers are full). bob is closed as a slow consumer; every message is answered once,
/// "300"; at his next login every one arrives once, in alice's order. Meanwhile carol and dave
/// talk as usual.
#[test]
fn messages_to_a_bin24_user_closed_as_a_slow_consumer_are_stored_and_arrive_once() {
    const MESSAGES: usize = 1000;
    let data = TempDir::new("attack-bin24-slow-consumer");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        data_dir: data.0.clone(),
        output_hard_bytes_max: 256 * 1024,
        // Below the output limits, as chatd --help asks, so that his backlog can reach him.
        bin24_offline_window_bytes: 64 * 1024,
        // Only the output limit may close bob, and nothing may refuse alice's flood.
        bin24_ack_timeout_ms: 60_000,
        bin24_sender_bytes_per_s_max: 0,
        bin24_pair_bytes_per_s_max: 0,
        ..Config::for_tests()
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::log_in(&server, "alice");
    let mut carol = Bin24::log_in(&server, "carol");
    let mut dave = Bin24::log_in(&server, "dave");
    let mut bob = Bin24::wrap(connect_small(addr, 4096), "bob");
    let synced = bob.next_id;
    bob.send("bob", "sync");
    // His own message comes back once the server knows him; its answer is all he ever reads.
    let sync = bob.recv();
    assert_eq!(sync.message_id, synced);
    bob.answer(&sync);
    assert_eq!(bob.recv().body[..3], *b"200");

    let body = |id: u32| format!("{id:04} {}", "s".repeat(995));
    let ids: Vec<u32> = (0..MESSAGES)
        .map(|_| {
            let id = alice.next_id;
            assert_eq!(alice.send("bob", &body(id)), id);
            id
        })
        .collect();
    let mut answers: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while answers.len() < MESSAGES {
        let answer = alice.recv();
        assert_eq!(answer.frame_type, codec::TYPE_ANSWER, "{answer:?}");
        let id = answer.message_id;
        assert!(
            answers.insert(id, answer.body.clone()).is_none(),
            "message {id} answered twice"
        );
        assert_eq!(answer.body, b"300", "message {id}: {answer:?}");
    }
    // Others are served as usual.
    let id = carol.send("dave", "still here");
    let heard = dave.recv();
    assert_eq!(heard.body, b"still here");
    dave.answer(&heard);
    let answer = carol.recv();
    assert_eq!((answer.message_id, &answer.body[..3]), (id, &b"200"[..]));

    drop(bob);
    server.wait_connections(3);
    let mut bob = Bin24::connect(addr, "bob");
    bob.register();
    let mut got = Vec::new();
    while got.len() < MESSAGES {
        let frame = bob.recv();
        assert_eq!(
            (frame.frame_type, &frame.src[..]),
            (codec::TYPE_OFFLINE, "alice"),
            "{frame:?}"
        );
        assert_eq!(frame.body, body(frame.message_id).as_bytes());
        // A short answer: relayed to alice, who reads no more, a full-length one (as the
        // original client writes) would pass her output limit.
        bob.answer_with(&frame, b"200");
        got.push(frame.message_id);
    }
    assert_eq!(got, ids, "every message once, in alice's order");
    bob.expect_quiet_for(Duration::from_millis(100));
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 1, "{stats}");
}

/// BIN24 rules 1 and 2 (docs/PROTOCOLS.md): a second login for a name from the holder's address
/// wins, "the older one is closed, and what it had not answered moves to the store, ahead of the
/// newcomer's stored frames", and stored frames leave the store only once delivered. The attack:
/// bob's first session takes his three stored frames and two live messages and answers none;
/// a second login as bob takes over. Alice hears "300" for the two live ones (never "200"),
/// and the new session gets all five, once, in alice's order.
#[test]
fn a_relogin_loses_nothing_the_old_session_took_without_answering() {
    let data = TempDir::new("attack-bin24-relogin");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        data_dir: data.0.clone(),
        // Only the takeover may end the first session; no stored frame counts as delivered
        // by the grace.
        bin24_ack_timeout_ms: 60_000,
        bin24_delivery_grace_ms: 60_000,
        ..Config::for_tests()
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::log_in(&server, "alice");
    let mut ids = Vec::new();
    for index in 0..3 {
        ids.push(alice.send("bob", &format!("stored {index}")));
        assert_eq!(alice.recv().body, b"300");
    }

    let mut first = Bin24::connect(addr, "bob");
    first.register();
    for (index, id) in ids.iter().enumerate() {
        let frame = first.recv();
        assert_eq!(
            (frame.frame_type, frame.message_id, frame.body.clone()),
            (
                codec::TYPE_OFFLINE,
                *id,
                format!("stored {index}").into_bytes()
            )
        );
    }
    for index in 0..2 {
        let id = alice.send("bob", &format!("live {index}"));
        let frame = first.recv();
        assert_eq!(
            (frame.frame_type, frame.message_id, frame.body.clone()),
            (
                codec::TYPE_MESSAGE,
                id,
                format!("live {index}").into_bytes()
            )
        );
        ids.push(id);
    }

    // The second login, from the same address: the first is closed, nothing it held is lost.
    let mut second = Bin24::connect(addr, "bob");
    second.register();
    first.expect_closed();
    for id in &ids[3..] {
        let answer = alice.recv();
        assert_eq!(
            (answer.message_id, &answer.body[..]),
            (*id, &b"300"[..]),
            "the live message moved to the store"
        );
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let frame = second.recv();
        assert_eq!(frame.frame_type, codec::TYPE_OFFLINE, "{frame:?}");
        second.answer_with(&frame, b"200");
        got.push(frame.message_id);
    }
    assert_eq!(got, ids, "all five, once, in alice's order");
    second.expect_quiet_for(Duration::from_millis(100));
    server.stop();
}

/// `--bin24-loaded-bytes-max` (chatd --help, docs/RELIABILITY.md): stored frames held in memory
/// for every connection together (pages loading, loaded, sent and not acknowledged by the peer's
/// TCP) stay within the cap, a backlog waiting its turn beyond it. The attack: six users with 30
/// stored frames of 1 KiB each log in at once over tiny receive windows and read nothing, so
/// every frame sent stays unacknowledged; each one's window alone (2 KiB) would let them hold
/// 12 KiB or more against a cap of 8 KiB. Then they read and answer: every frame arrives once, in
/// order, and the memory held returns to nothing.
#[test]
fn stored_frames_in_memory_stay_within_the_global_cap_while_many_backlogs_wait() {
    const USERS: usize = 6;
    const STORED: usize = 30;
    const CAP_BYTES: usize = 8 * 1024;
    const FRAME_BYTES: usize = 24 + 1000;
    let data = TempDir::new("attack-bin24-loaded");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        admin_port: Some(0),
        data_dir: data.0.clone(),
        bin24_loaded_bytes_max: CAP_BYTES,
        bin24_offline_window_bytes: 2048,
        // Only an answer confirms a frame here: a frame acknowledged by TCP and not answered is
        // not counted in memory any more, but stays in the store.
        bin24_delivery_grace_ms: 60_000,
        ..Config::for_tests()
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let users: Vec<String> = (0..USERS).map(|index| format!("user{index}")).collect();
    let body = |user: usize, index: usize| format!("{user}:{index:03} {}", "m".repeat(994));

    let mut alice = Bin24::log_in(&server, "alice");
    let mut ids: Vec<Vec<u32>> = vec![Vec::new(); USERS];
    for index in 0..STORED {
        for (user, name) in users.iter().enumerate() {
            ids[user].push(alice.send(name, &body(user, index)));
        }
    }
    for _ in 0..USERS * STORED {
        assert_eq!(alice.recv().body, b"300");
    }

    let peers: Vec<Bin24> = users
        .iter()
        .map(|name| {
            let mut peer = Bin24::wrap(connect_small(addr, 2048), name);
            peer.register();
            peer
        })
        .collect();
    // The attack has filled the budget once the gauge is within a page of the cap; from then on
    // every sample must stay within it (a page may bring one frame past its reservation).
    let bound = (CAP_BYTES + FRAME_BYTES) as f64;
    let filled = wait_metric_until(&server, "chatd_bin24_loaded_bytes", |bytes| {
        bytes >= (CAP_BYTES - 2048) as f64
    });
    assert!(
        filled <= bound,
        "{filled} bytes loaded; the cap is {CAP_BYTES}"
    );
    let mut peak = filled;
    let watch_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < watch_until {
        let bytes = server.metric("chatd_bin24_loaded_bytes").unwrap_or(0.0);
        peak = peak.max(bytes);
        assert!(
            bytes <= bound,
            "{bytes} bytes of stored frames in memory; the cap is {CAP_BYTES}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("loaded bytes: peak seen {peak}, cap {CAP_BYTES}");

    // Users whose backlog is still waiting for the budget have nothing unread yet.
    let waiting = peers
        .iter()
        .filter(|peer| {
            peer.stream.set_nonblocking(true).expect("nonblocking");
            let mut byte = [0u8; 1];
            let unread = peer.stream.peek(&mut byte).is_ok();
            peer.stream.set_nonblocking(false).expect("blocking");
            !unread
        })
        .count();
    eprintln!("{waiting} of {USERS} users got nothing while the others held the budget");

    // Now they read and answer, all at once: each user's frames arrive once, in order, and the
    // memory and the store empty.
    let readers: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(user, mut peer)| {
            let want = ids[user].clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < STORED {
                    let frame = peer.recv();
                    assert_eq!(frame.frame_type, codec::TYPE_OFFLINE, "{frame:?}");
                    let index = got.len();
                    assert_eq!(
                        frame.body,
                        body(user, index).as_bytes(),
                        "{}: frame {index}",
                        peer.user
                    );
                    peer.answer(&frame);
                    got.push(frame.message_id);
                }
                assert_eq!(got, want, "{}: every frame once, in order", peer.user);
                peer
            })
        })
        .collect();
    let mut peers: Vec<Bin24> = readers
        .into_iter()
        .map(|reader| reader.join().expect("reader"))
        .collect();
    wait_metric_until(&server, "chatd_store_frames", |frames| frames == 0.0);
    wait_metric_until(&server, "chatd_bin24_loaded_bytes", |bytes| bytes == 0.0);
    for peer in &mut peers {
        peer.expect_quiet_for(Duration::from_millis(50));
    }
    server.stop();
}

/// The global budget of `--bin24-loaded-bytes-max` counts a stored frame until the recipient's
/// TCP acknowledges it, so logins that never read hold their share; a user who reads and
/// answers must still get her turn: a holder whose TCP acknowledges nothing for
/// `--output-soft-duration-ms` while she waits is closed as a slow consumer. Four such logins
/// hold an 8 KiB budget here (with the defaults, about 128 to 256 of them hold 64 MiB: one
/// address may open 256); rita, reading and answering, must get her 10 stored frames. Seen
/// before the stall close: none of them within 10 s. The holders' frames stay stored.
#[test]
fn a_reading_user_gets_her_backlog_while_logins_that_never_read_hold_the_budget() {
    const HOLDERS: usize = 4;
    const STORED: usize = 30;
    const CAP_BYTES: usize = 8 * 1024;
    const STALL_MS: u64 = 300;
    let data = TempDir::new("attack-bin24-budget-holders");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        admin_port: Some(0),
        data_dir: data.0.clone(),
        bin24_loaded_bytes_max: CAP_BYTES,
        bin24_offline_window_bytes: 2048,
        bin24_delivery_grace_ms: 60_000,
        output_soft_duration_ms: STALL_MS,
        ..Config::for_tests()
    });
    let addr = server.bin24.expect("BIN24 enabled");
    let mut alice = Bin24::log_in(&server, "alice");
    let holders: Vec<String> = (0..HOLDERS).map(|index| format!("hold{index}")).collect();
    let mut sent = 0;
    for _ in 0..STORED {
        for holder in &holders {
            alice.send(holder, &"h".repeat(1000));
            sent += 1;
        }
    }
    let rita_ids: Vec<u32> = (0..10)
        .map(|index| alice.send("rita", &format!("for rita {index}")))
        .collect();
    sent += rita_ids.len();
    for _ in 0..sent {
        assert_eq!(alice.recv().body, b"300");
    }
    let _holding: Vec<Bin24> = holders
        .iter()
        .map(|name| {
            let mut holder = Bin24::wrap(connect_small(addr, 2048), name);
            holder.register();
            holder
        })
        .collect();
    wait_metric_until(&server, "chatd_bin24_loaded_bytes", |bytes| {
        bytes >= (CAP_BYTES - 2048) as f64
    });

    let mut rita = Bin24::connect(addr, "rita");
    rita.register();
    let mut got = Vec::new();
    while got.len() < rita_ids.len() {
        let frame = rita.recv();
        assert_eq!(frame.frame_type, codec::TYPE_OFFLINE, "{frame:?}");
        rita.answer(&frame);
        got.push(frame.message_id);
    }
    assert_eq!(got, rita_ids);
    // Whether holders were closed for it (stalled) or their kernels took a little more
    // meanwhile, their frames stay stored: none removed.
    let stored = wait_metric_until(&server, "chatd_store_frames", |frames| {
        frames <= (HOLDERS * STORED) as f64
    });
    assert_eq!(
        stored,
        (HOLDERS * STORED) as f64,
        "rita's frames left the store, the holders' stay"
    );
    server.stop();
}
