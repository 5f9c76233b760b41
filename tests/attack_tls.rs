//! Attacks on the TLS front doors over real sockets, in process (docs/RELIABILITY.md, "Limits a
//! hostile client cannot pass"): TLS handshakes that never finish must not keep others out.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/pki.rs"]
mod pki;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use common::{Client, TestServer, WAIT};
use pki::Pki;
use switchboard::config::Config;

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` whose handshake has finished.
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("name");
    let session = ClientConnection::new(Arc::clone(config), name).expect("client session");
    let mut stream = StreamOwned::new(session, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("TLS handshake");
    }
    stream
}

/// The first flight of a real client: its ClientHello.
fn client_hello(config: &Arc<ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("name");
    let mut session = ClientConnection::new(Arc::clone(config), name).expect("session");
    let mut hello = Vec::new();
    session.write_tls(&mut hello).expect("ClientHello");
    hello
}

fn tls_config(pki: &Pki) -> Config {
    Config {
        room_tls_port: Some(0),
        tls_cert_path: Some(pki.cert_path()),
        tls_key_path: Some(pki.key_path()),
        admin_port: Some(0),
        ..Config::for_tests()
    }
}

/// `--connections-max` (README, docs/RELIABILITY.md): "at the cap a newcomer evicts the oldest
/// connection still in its handshake", and a TLS handshake counts as one. The attack fills a
/// cap of 20 with 10 TLS handshakes stopped halfway and 9 finished TLS sessions that never
/// send an alias, beside one member who joined; both deadlines are a minute away, so only
/// eviction can make room. A TLS newcomer and a plaintext one must each be served at once,
/// the oldest stalled handshakes be the ones closed, and the member stay.
#[test]
fn stalled_tls_handshakes_at_the_connection_cap_are_evicted_for_newcomers() {
    let pki = Pki::new("attack-cap");
    let server = TestServer::start(Config {
        connections_max: 20,
        handshake_timeout_ms: 60_000,
        room_handshake_timeout_ms: 60_000,
        ..tls_config(&pki)
    });
    let room_tls = server.room_tls.expect("ROOM over TLS");
    let client = pki.client_config();
    let mut member = Client::join(server.room, "member");

    let hello = client_hello(&client);
    let halfway: Vec<Client> = (0..10)
        .map(|index| {
            let mut stalled = Client::connect(room_tls, &format!("halfway {index}"));
            stalled.send(&hello[..hello.len() / 2]);
            stalled
        })
        .collect();
    // Each is the oldest in turn only once the server holds it: wait for it before the next
    // kind, so which ones are oldest is known.
    server.wait_connections(11);
    let silent: Vec<Client<TlsStream>> = (0..9)
        .map(|index| {
            let mut session =
                Client::over(tls_connect(room_tls, &client), &format!("silent {index}"));
            session.read_through(b"alias?");
            session
        })
        .collect();
    server.wait_connections(20);

    let started = Instant::now();
    let mut newcomer = Client::over(tls_connect(room_tls, &client), "tls newcomer");
    newcomer.read_through(b"alias?");
    newcomer.send(b"tlsnew");
    newcomer.read_through(b"Voce esta conectado ao servidor!");
    let mut plain = Client::connect(server.room, "plain newcomer");
    plain.read_through(b"alias?");
    let served_in = started.elapsed();
    eprintln!("both newcomers served in {served_in:?}");
    assert!(
        served_in < Duration::from_secs(2),
        "newcomers waited {served_in:?}; only an eviction frees a slot before a minute"
    );
    server.wait_metric("chatd_handshake_evictions_total", 2.0);

    // The two oldest were stopped halfway through their TLS handshakes: closed.
    let mut halfway = halfway.into_iter();
    for _ in 0..2 {
        let mut evicted = halfway.next().expect("a stalled handshake");
        evicted.expect_closed();
    }
    // The member, past its handshake, stays and hears the TLS newcomer.
    member.read_through(b"b'tlsnew' esta conectado ao chat");
    drop(silent);
    server.stop();
}

/// The loop turns the server has made (its turn histogram's count, on the admin port).
fn loop_turns(server: &TestServer) -> f64 {
    server
        .metric("chatd_loop_turn_duration_seconds_count")
        .expect("the turn histogram")
}

/// No client can slow the others (docs/RELIABILITY.md, "No client can stall or starve the
/// others"), a TLS handshake flood included: for each ClientHello the server computes a key
/// share and signs (about 0.4 ms in release, 5 ms in a debug build), and an attacker may replay
/// one recorded ClientHello at no cost of its own. The attack sends it on 128 connections at
/// once; a turn takes at most `TLS_HANDSHAKE_READS_PER_TURN_MAX` (4) handshake steps, so the 128
/// take at least 32 turns, others' work served between them, and a ROOM member's line sent in
/// the middle of the burst is echoed. Seen (debug, shared machine): 34 turns, the echo 76 ms;
/// without the budget 3 or 4 turns, the echo waiting for the whole burst, 515 to 670 ms.
#[test]
fn a_burst_of_replayed_client_hellos_is_answered_a_few_a_turn() {
    const HELLOS: usize = 128;
    let pki = Pki::new("attack-flood");
    let server = TestServer::start(tls_config(&pki));
    let room_tls = server.room_tls.expect("ROOM over TLS");
    let hello = client_hello(&pki.client_config());
    let mut member = Client::join(server.room, "member");
    let mut burst: Vec<TcpStream> = (0..HELLOS)
        .map(|_| {
            let stream = TcpStream::connect(room_tls).expect("connect");
            stream.set_read_timeout(Some(WAIT)).expect("timeout");
            stream
        })
        .collect();
    server.wait_connections(HELLOS as u64 + 1);

    let turns_before = loop_turns(&server);
    for stream in &mut burst {
        std::io::Write::write_all(stream, &hello).expect("hello");
    }
    let sent = Instant::now();
    member.send(b"member: during the burst");
    member.read_through(b"member: during the burst");
    let echo = sent.elapsed();
    for stream in &mut burst {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).expect("the server's first flight"),
            1,
            "a ServerHello"
        );
    }
    let answered_in = sent.elapsed();
    let turns_taken = loop_turns(&server) - turns_before;
    eprintln!(
        "{HELLOS} ClientHellos answered in {turns_taken} turns, {answered_in:?}; the member's \
         echo took {echo:?}"
    );
    assert!(
        turns_taken >= (HELLOS / 4) as f64,
        "{HELLOS} ClientHellos answered in {turns_taken} turns"
    );
    server.stop();
}

/// A web user over TLS (wss) that stops reading is closed by the output limits like any other
/// (README, TLS "Limits": the plaintext queued counts until its records are in the kernel), and
/// a plaintext web user reading all along gets every lobby line, in order, and is told once
/// that the slow one left. tests/tls.rs attacks the same over ROOM; this is WEB's service and
/// frames over TLS.
#[test]
fn a_wss_user_that_stops_reading_is_closed_and_the_others_get_everything() {
    const LINES: usize = 2_000;
    const BATCH: usize = 100;
    let pki = Pki::new("attack-wss-slow");
    let server = TestServer::start(Config {
        web_port: Some(0),
        web_tls_port: Some(0),
        output_hard_bytes_max: 512 * 1024,
        output_soft_bytes_max: 256 * 1024,
        output_soft_duration_ms: 200,
        ..tls_config(&pki)
    });
    let (mut reader, _) = common::web::Web::sign_in(server.web.expect("WEB"), "reader");
    let mut rui = Client::join(server.room, "rui");

    // slowweb: a 4 KiB receive window, the upgrade and the sign-in over TLS, then no more reads.
    let tcp = {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket
            .connect(&server.web_tls.expect("WEB over TLS").into())
            .expect("connect");
        TcpStream::from(socket)
    };
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let name = ServerName::try_from("localhost").expect("name");
    let session = ClientConnection::new(pki.client_config(), name).expect("client session");
    let mut slow = Client::over(StreamOwned::new(session, tcp), "slowweb");
    slow.send(common::web::upgrade_request("").as_bytes());
    slow.read_through(b"\r\n\r\n");
    let signin = br#"{"type":"signin","name":"slowweb"}"#;
    let mask = [0x5au8, 0x1c, 0x33, 0x7e];
    let mut frame = vec![0x81, 0x80 | signin.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(signin.iter().enumerate().map(|(at, b)| b ^ mask[at % 4]));
    slow.send(&frame);
    slow.read_through(b"welcome");
    reader.await_message("joined", |m| m["name"] == "slowweb");

    // ROOM relays what one read brings as one lobby message, cut anywhere: the reader's texts,
    // put back together, must hold each of rui's lines once, in order.
    let line = |seq: usize| format!("rui: l{seq:05} {}\n", "w".repeat(393));
    let mut heard = String::new();
    let mut left_told = 0;
    for batch in (0..LINES).step_by(BATCH) {
        let bytes: String = (batch..batch + BATCH).map(line).collect();
        rui.send(bytes.as_bytes());
        let last = line(batch + BATCH - 1);
        rui.read_through(last.as_bytes());
        let last_marker = format!("l{:05} ", batch + BATCH - 1);
        while !heard.contains(&last_marker) {
            let message = reader.recv();
            match message["type"].as_str() {
                Some("left") if message["name"] == "slowweb" => left_told += 1,
                Some("lobby") if message["from"] == "rui" => {
                    heard.push_str(message["text"].as_str().expect("a lobby text"));
                }
                _ => {}
            }
        }
    }
    let markers: Vec<usize> = heard
        .match_indices(' ')
        .filter_map(|(at, _)| heard.get(at.checked_sub(6)?..at))
        .filter_map(|marker| marker.strip_prefix('l')?.parse().ok())
        .collect();
    assert!(
        markers.iter().copied().eq(0..LINES),
        "the reader got rui's lines once each, in order: {} markers",
        markers.len()
    );
    if left_told == 0 {
        reader.await_message("left", |m| m["name"] == "slowweb");
        left_told = 1;
    }
    assert_eq!(left_told, 1, "told once that slowweb left");
    let got = slow.expect_closed().len();
    eprintln!("slowweb got {got} more bytes of plaintext before its close");
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 1, "{stats}");
}
