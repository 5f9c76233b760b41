//! MATOU over real sockets: the real server on an ephemeral port, clients played by the test.
//!
//! Packets are built and read here by hand from the contract's table (big-endian i32 type,
//! strings as an i32 byte count and the bytes), not with the library's codec, so a codec bug
//! cannot hide behind a matching helper. The private part (messages and a file sent directly
//! between two clients) runs over sockets the test opens itself, with the addresses and ports
//! the server brokered.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;

use common::matou::{int, packet, string, Matou as Peer};
use common::{TestServer, WAIT};
use switchboard::config::Config;

fn server() -> TestServer {
    TestServer::start(Config {
        matou_port: Some(0),
        ..Config::for_tests()
    })
}

/// Log in `name` as a new client; everyone in `others` sees its CONNECT_NOTIFY.
fn arrive(server: &TestServer, name: &str, others: &mut [&mut Peer]) -> Peer {
    let mut peer = Peer::connect(server, name);
    peer.login(name, true);
    peer.expect_notify(3, name);
    for other in others.iter_mut() {
        other.expect_notify(3, name);
    }
    peer
}

#[test]
fn three_clients_log_in_see_each_other_and_broadcast() {
    let server = server();
    let mut alice = arrive(&server, "alice", &mut []);
    // A taken name is refused and the connection stays open for another try; so are names
    // that are empty, too long or not alphanumeric.
    let mut bob = Peer::connect(&server, "bob");
    bob.login("alice", false);
    bob.login("", false);
    bob.login(&"b".repeat(33), false);
    bob.login("bob smith", false);
    bob.login("bob", true);
    bob.expect_notify(3, "bob");
    alice.expect_notify(3, "bob");
    let mut carol = arrive(&server, "carol", &mut [&mut alice, &mut bob]);

    carol.send(&packet(4, &[&string("hello, all".as_bytes())]));
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.expect_broadcast("carol", "hello, all");
    }
    // An invalid message gets ERROR and is not broadcast; the sender stays connected.
    bob.send(&packet(4, &[&string(b"bad\nline")]));
    assert_eq!(bob.expect_error(), 3);
    bob.send(&packet(4, &[&string(&[b'x'; 513])]));
    assert_eq!(bob.expect_error(), 3);
    bob.send(&packet(4, &[&string(&[b'y'; 512])]));
    let longest = "y".repeat(512);
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.expect_broadcast("bob", &longest);
    }
}

/// PROTOCOLS.md MATOU rule 1 and README `--matou-name-bytes-max` (32): a name of exactly 32
/// bytes signs in and the others see it; 33 is refused and the connection stays for another
/// try (the test above checks only the refusal).
#[test]
fn a_name_of_32_bytes_signs_in_and_one_of_33_is_refused() {
    let server = server();
    let mut alice = arrive(&server, "alice", &mut []);
    let mut bob = Peer::connect(&server, "bob");
    bob.login(&"b".repeat(33), false);
    let longest = "b".repeat(32);
    bob.login(&longest, true);
    bob.expect_notify(3, &longest);
    alice.expect_notify(3, &longest);
}

#[test]
fn sign_out_and_abrupt_disconnect_notify_the_others() {
    let server = server();
    let mut alice = arrive(&server, "alice", &mut []);
    let mut bob = arrive(&server, "bob", &mut [&mut alice]);
    let mut carol = arrive(&server, "carol", &mut [&mut alice, &mut bob]);

    bob.send(&packet(15, &[]));
    bob.expect_closed();
    alice.expect_notify(16, "bob");
    carol.expect_notify(16, "bob");

    drop(carol);
    alice.expect_notify(16, "carol");
    // bob's name is free again.
    let _bob = arrive(&server, "bob", &mut [&mut alice]);
}

#[test]
fn bad_input_gets_an_error_then_a_close_and_touches_nobody_else() {
    let server = server();
    let mut alice = arrive(&server, "alice", &mut []);
    let mut mallory = arrive(&server, "mallory", &mut [&mut alice]);
    mallory.send(&packet(99, &[]));
    assert_eq!(mallory.expect_error(), 1);
    mallory.expect_closed();
    alice.expect_notify(16, "mallory");

    // A negative size, before login.
    let mut eve = Peer::connect(&server, "eve");
    eve.send(&packet(1, &[&int(-1)]));
    assert_eq!(eve.expect_error(), 2);
    eve.expect_closed();
    // A size over the limit, announced without its body.
    let mut trudy = Peer::connect(&server, "trudy");
    trudy.send(&packet(1, &[&int(1 << 30)]));
    assert_eq!(trudy.expect_error(), 2);
    trudy.expect_closed();

    alice.send(&packet(4, &[&string(b"still fine")]));
    alice.expect_broadcast("alice", "still fine");
}

#[test]
fn brokering_refuses_what_was_not_asked_for() {
    let server = server();
    let mut alice = arrive(&server, "alice", &mut []);
    let mut bob = arrive(&server, "bob", &mut [&mut alice]);
    // To oneself, to nobody, an accept with no request, ports with no accepted pair.
    alice.send(&packet(6, &[&string(b"alice")]));
    assert_eq!(alice.expect_error(), 5);
    alice.send(&packet(6, &[&string(b"nobody")]));
    assert_eq!(alice.expect_error(), 4);
    bob.send(&packet(8, &[&string(b"alice")]));
    assert_eq!(bob.expect_error(), 6);
    alice.send(&packet(10, &[&string(b"bob"), &int(5000), &int(5001)]));
    assert_eq!(alice.expect_error(), 7);
    // A request whose requester signs out before the accept: the accept is refused.
    let mut carol = arrive(&server, "carol", &mut [&mut alice, &mut bob]);
    carol.send(&packet(6, &[&string(b"bob")]));
    bob.expect_notify(7, "carol");
    carol.send(&packet(15, &[]));
    carol.expect_closed();
    bob.expect_notify(16, "carol");
    alice.expect_notify(16, "carol");
    bob.send(&packet(8, &[&string(b"carol")]));
    assert_eq!(bob.expect_error(), 6);
}

#[test]
fn a_brokered_link_carries_private_messages_and_a_file_directly() {
    let server = server();
    let mut alice = arrive(&server, "alice", &mut []);
    let mut bob = arrive(&server, "bob", &mut [&mut alice]);

    // alice (Src) asks for bob (Dst); bob accepts; alice learns bob's address.
    alice.send(&packet(6, &[&string(b"bob")]));
    bob.expect_notify(7, "alice");
    bob.send(&packet(8, &[&string(b"alice")]));
    alice.expect_type(9);
    assert_eq!(alice.string(), "bob");
    assert_eq!(alice.int(), 4);
    assert_eq!(alice.read_exact(4), Ipv4Addr::LOCALHOST.octets());

    // alice listens on two ports and sends them; bob learns alice's address and ports.
    let messages = TcpListener::bind("127.0.0.1:0").expect("listen");
    let files = TcpListener::bind("127.0.0.1:0").expect("listen");
    let message_port = messages.local_addr().expect("addr").port();
    let file_port = files.local_addr().expect("addr").port();
    alice.send(&packet(
        10,
        &[
            &string(b"bob"),
            &int(i32::from(message_port)),
            &int(i32::from(file_port)),
        ],
    ));
    bob.expect_type(11);
    assert_eq!(bob.string(), "alice");
    assert_eq!(bob.int(), 4);
    let ip = bob.read_exact(4);
    assert_eq!(ip, Ipv4Addr::LOCALHOST.octets());
    assert_eq!(bob.int(), i32::from(message_port));
    assert_eq!(bob.int(), i32::from(file_port));

    // bob connects to both ports, message port first.
    let ip = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
    let mut bob_messages = Peer::wrap(TcpStream::connect((ip, message_port)).expect("c"), "bm");
    let mut alice_messages = Peer::wrap(messages.accept().expect("accept").0, "am");
    let bob_files = TcpStream::connect((ip, file_port)).expect("connect file port");
    let mut alice_files = Peer::wrap(files.accept().expect("accept").0, "af");

    // bob sends alice a 1 MiB file in 4096-byte chunks, pausing halfway until a private
    // message has gone each way: messaging works while a transfer is in progress.
    let file: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let (halfway_tx, halfway_rx) = mpsc::channel::<()>();
    let (resume_tx, resume_rx) = mpsc::channel::<()>();
    let sent = file.clone();
    let sender = thread::spawn(move || {
        let mut stream = bob_files;
        stream
            .write_all(&packet(13, &[&(sent.len() as i64).to_be_bytes()]))
            .expect("file header");
        for (index, chunk) in sent.chunks(4096).enumerate() {
            if index == 128 {
                halfway_tx.send(()).expect("halfway");
                resume_rx.recv_timeout(WAIT).expect("resume");
            }
            stream.write_all(chunk).expect("chunk");
        }
    });
    halfway_rx
        .recv_timeout(WAIT)
        .expect("the transfer reaches halfway");
    bob_messages.send(&packet(12, &[&string("while the file flows".as_bytes())]));
    alice_messages.expect_type(12);
    assert_eq!(alice_messages.string(), "while the file flows");
    alice_messages.send(&packet(12, &[&string("got it, go on".as_bytes())]));
    bob_messages.expect_type(12);
    assert_eq!(bob_messages.string(), "got it, go on");
    resume_tx.send(()).expect("resume");

    alice_files.expect_type(13);
    let size_bytes = alice_files.read_exact(8);
    let mut size = [0u8; 8];
    size.copy_from_slice(&size_bytes);
    assert_eq!(i64::from_be_bytes(size), file.len() as i64);
    let received = alice_files.read_exact(file.len());
    sender.join().expect("sender");
    assert!(received == file, "the file arrived byte-identical");

    // bob closes the link; the server was never part of it and both stay logged in.
    bob_messages.send(&packet(14, &[]));
    alice_messages.expect_type(14);
    alice.send(&packet(4, &[&string(b"done")]));
    alice.expect_broadcast("alice", "done");
    bob.expect_broadcast("alice", "done");
}

/// The next packet that is not a sign-in or sign-out notice; returns its type.
fn next_packet_beyond_notices(peer: &mut Peer) -> i32 {
    loop {
        match peer.int() {
            3 | 16 => {
                peer.string();
            }
            other => return other,
        }
    }
}

/// PROTOCOLS.md MATOU rule 3 (`--matou-pending-requests-per-user-max`, 64): the requests one
/// user has waiting for an answer are bounded, so one user cannot grow the server's table of
/// pairs without bound. Over the cap the requester gets ERROR 10 and the target nothing; a
/// request repeated while pending is not a new one; an accept or the target leaving frees a
/// slot; other requesters have their own count. (The per-second request rates, set to 0
/// here, would otherwise refuse first.)
#[test]
fn pending_private_requests_are_capped_per_requester_with_error_10() {
    const PENDING_MAX: usize = 4;
    let server = TestServer::start(Config {
        matou_port: Some(0),
        matou_pending_requests_per_user_max: PENDING_MAX,
        matou_private_requests_per_s_max: 0,
        matou_private_requests_per_pair_per_s_max: 0,
        ..Config::for_tests()
    });
    let names: Vec<String> = (0..=PENDING_MAX).map(|index| format!("d{index}")).collect();
    let mut targets: Vec<Peer> = names
        .iter()
        .map(|name| Peer::sign_in(&server, name))
        .collect();
    let mut mallory = Peer::sign_in(&server, "mallory");
    let request = |to: &str| packet(6, &[&string(to.as_bytes())]);
    let notified = |target: &mut Peer| {
        assert_eq!(next_packet_beyond_notices(target), 7, "{}", target.name);
        assert_eq!(target.string(), "mallory", "{}", target.name);
    };

    for (name, target) in names.iter().zip(&mut targets).take(PENDING_MAX) {
        mallory.send(&request(name));
        notified(target);
    }
    mallory.send(&request(&names[PENDING_MAX]));
    assert_eq!(mallory.expect_error(), 10, "one request over the cap");
    // Asking d0 again while pending repeats the notice and takes no new slot.
    mallory.send(&request(&names[0]));
    notified(&mut targets[0]);
    mallory.send(&request(&names[PENDING_MAX]));
    assert_eq!(mallory.expect_error(), 10, "still at the cap");
    // Another requester is not held by mallory's count; and d4's next packet is its notice,
    // so the two refused requests reached d4 not at all.
    let mut other = Peer::sign_in(&server, "other");
    other.send(&request(&names[PENDING_MAX]));
    assert_eq!(next_packet_beyond_notices(&mut targets[PENDING_MAX]), 7);
    assert_eq!(targets[PENDING_MAX].string(), "other");

    // d0 accepts: mallory learns its address, and has a slot again.
    targets[0].send(&packet(8, &[&string(b"mallory")]));
    assert_eq!(next_packet_beyond_notices(&mut mallory), 9);
    assert_eq!(mallory.string(), names[0]);
    assert_eq!(mallory.int(), 4, "an IPv4 address");
    assert_eq!(mallory.read_exact(4), Ipv4Addr::LOCALHOST.octets());
    mallory.send(&request(&names[PENDING_MAX]));
    notified(&mut targets[PENDING_MAX]);
    mallory.send(&request("other"));
    assert_eq!(mallory.expect_error(), 10, "at the cap again");
    // d1 leaves: its pending request is dropped with it, freeing another slot.
    targets[1].send(&packet(15, &[]));
    loop {
        if next_packet_beyond_notices_named(&mut mallory, 16) == names[1] {
            break;
        }
    }
    mallory.send(&request("other"));
    assert_eq!(next_packet_beyond_notices(&mut other), 7);
    assert_eq!(other.string(), "mallory");
}

/// Reads packets until one of type `kind` (sign-in and sign-out notices skipped unless that is
/// the kind asked); returns its name field.
fn next_packet_beyond_notices_named(peer: &mut Peer, kind: i32) -> String {
    loop {
        let got = peer.int();
        let name = peer.string();
        if got == kind {
            return name;
        }
        assert!(
            got == 3 || got == 16,
            "{}: unexpected packet {got}",
            peer.name
        );
    }
}

/// README `--matou-private-requests-per-s-max` (20) and PROTOCOLS.md MATOU rule 3: besides
/// the per-pair rate (tests/fairness.rs), one user's requests to everyone together are
/// limited: a sender asking many different users at once gets a second's worth through
/// (each target notified) and ERROR 12 for the rest (their targets get nothing); the pair
/// limit is off here so that only the sender's total can refuse.
#[test]
fn private_requests_to_many_users_are_limited_per_sender_with_error_12() {
    const PER_S: usize = 5;
    const TARGETS: usize = 12;
    let server = TestServer::start(Config {
        matou_port: Some(0),
        matou_private_requests_per_s_max: PER_S as u64,
        matou_private_requests_per_pair_per_s_max: 0,
        ..Config::for_tests()
    });
    let names: Vec<String> = (0..TARGETS).map(|index| format!("t{index}")).collect();
    let mut targets: Vec<Peer> = names
        .iter()
        .map(|name| Peer::sign_in(&server, name))
        .collect();
    let mut mallory = Peer::sign_in(&server, "mallory");
    let requests: Vec<u8> = names
        .iter()
        .flat_map(|name| packet(6, &[&string(name.as_bytes())]))
        .collect();
    mallory.send(&requests);
    // Every request is answered in order: nothing (it passed) or ERROR 12; mallory gets
    // nothing else but sign-in notices meanwhile.
    let mut refused = 0;
    while refused + PER_S < TARGETS {
        let kind = next_packet_beyond_notices(&mut mallory);
        assert_eq!(kind, 17, "mallory: an ERROR expected");
        assert_eq!(mallory.int(), 12);
        mallory.string();
        refused += 1;
    }
    // Then a public message from a witness: whatever a target got from mallory came before it.
    let mut witness = Peer::sign_in(&server, "witness");
    witness.say("marker");
    let mut notified = 0;
    for (name, target) in names.iter().zip(&mut targets) {
        loop {
            match next_packet_beyond_notices(target) {
                7 => {
                    assert_eq!(target.string(), "mallory", "{name}");
                    notified += 1;
                }
                5 => {
                    assert_eq!(target.string(), "witness", "{name}");
                    assert_eq!(target.string(), "marker", "{name}");
                    break;
                }
                other => panic!("{name}: unexpected packet {other}"),
            }
        }
    }
    assert_eq!(
        (notified, refused),
        (PER_S, TARGETS - PER_S),
        "a second's worth passes, the rest is refused"
    );
}
