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
