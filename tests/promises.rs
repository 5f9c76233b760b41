//! Attacks on documented promises that had only sans-io tests, or none over real sockets:
//! each drives the real server through its flags' defaults or the `Config` the flag sets.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::web::Web;
use common::{count, Client, TestServer};
use serde_json::json;
use switchboard::config::Config;

/// README `--web-messages-per-s-max` (20, a second's worth at once) and PROTOCOLS.md WEB:
/// over the rate a `say` is answered `error rate-limited` and reaches nobody. A web user sends
/// 60 at once: about 20 pass (the burst, and what refills while they are read), the rest are
/// refused; a ROOM member gets exactly those that passed, once each, and none of the others.
/// The sans-io tests check the bucket; this checks the flag's default reaches the service
/// behind a real socket.
#[test]
fn web_says_over_the_rate_are_refused_to_their_sender_and_reach_nobody() {
    const SAYS: usize = 60;
    let config = Config {
        web_port: Some(0),
        ..Config::for_tests()
    };
    let rate_per_s = config.web_messages_per_s_max as usize;
    assert_eq!(rate_per_s, 20, "the default the README documents");
    let server = TestServer::start(config);
    let mut member = Client::join(server.room, "member");
    let (mut web, _) = Web::sign_in(server.web.expect("WEB"), "webby");
    member.read_through(b"b'webby' esta conectado ao chat");

    let marker = |n: usize| format!("say{n:03};");
    let started = Instant::now();
    let mut frames = Vec::new();
    for n in 0..SAYS {
        let text = json!({"type": "say", "text": marker(n)}).to_string();
        frames.extend(web.frame(true, 1, text.as_bytes()));
    }
    web.send_raw(&frames);
    // Every say is answered in order: its echo (a lobby message) or an error.
    let mut passed = Vec::new();
    let mut refused = 0;
    while passed.len() + refused < SAYS {
        let answer = web.recv();
        match answer["type"].as_str() {
            Some("lobby") => {
                assert_eq!(answer["from"], "webby", "{answer}");
                passed.push(answer["text"].as_str().expect("text").to_string());
            }
            Some("error") => {
                assert_eq!(answer["reason"], "rate-limited", "{answer}");
                refused += 1;
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    // What a bucket of 20 tokens refilled at 20/s can have let through in that time.
    let allowed = rate_per_s + (elapsed.as_secs_f64() * rate_per_s as f64).ceil() as usize;
    eprintln!("{} passed, {refused} refused in {elapsed:?}", passed.len());
    assert!(
        (rate_per_s..=allowed).contains(&passed.len()),
        "{} of {SAYS} passed in {elapsed:?}; the rate allows {rate_per_s} to {allowed}",
        passed.len()
    );
    let expected: Vec<String> = (0..passed.len()).map(marker).collect();
    assert_eq!(passed, expected, "the first ones pass, in order");

    // All 60 were handled before their answers came back, and a lobby message reaches the
    // ROOM member before anything the room sends later: its own line closes the stream.
    member.send(b"member: end;");
    let seen = member.read_through(b"member: end;");
    for n in 0..SAYS {
        let times = count(&seen, marker(n).as_bytes());
        let want = usize::from(n < passed.len());
        assert_eq!(
            times,
            want,
            "{}: seen {times} times by the member",
            marker(n)
        );
    }
}

/// RELIABILITY.md `--connections-max`: "accepting resumes at 90%", so a server at its cap
/// does not flap between accepting and refusing. With a cap of 20 members (all past their
/// handshake, so none can be evicted), a newcomer waits in the backlog while 19 remain, and
/// is accepted once 18 do.
#[test]
fn at_the_connection_cap_accepting_resumes_only_a_tenth_below_it() {
    const CAP: usize = 20;
    let server = TestServer::start(Config {
        connections_max: CAP,
        ..Config::for_tests()
    });
    let mut members: Vec<Client> = (0..CAP)
        .map(|n| Client::join(server.room, &format!("m{n}")))
        .collect();
    server.wait_connections(CAP as u64);
    let mut newcomer = Client::connect(server.room, "newcomer");
    newcomer.expect_nothing_for(Duration::from_millis(200));

    drop(members.pop());
    server.wait_connections(CAP as u64 - 1);
    // Absence only: a slow server can make this pass wrongly, never fail wrongly.
    newcomer.expect_nothing_for(Duration::from_millis(300));
    assert_eq!(server.handle.connections_open(), CAP as u64 - 1);

    drop(members.pop());
    newcomer.expect(b"alias?");
    server.wait_connections(CAP as u64 - 1);
}

/// What each TCP protocol's server answers at once to `hello`, so that an accepted connection
/// is told apart from a refused one by an answer, not by a timed silence.
fn tcp_hellos(server: &TestServer) -> Vec<(&'static str, SocketAddr, Vec<u8>)> {
    let bin24_self_message = switchboard::protocol::bin24::codec::encode(
        switchboard::protocol::bin24::codec::TYPE_MESSAGE,
        1,
        common::bin24::name("probe"),
        common::bin24::name("probe"),
        b"hello",
    )
    .expect("frame")
    .to_vec();
    let mut ocm_bad_operation = vec![1u8, 9, 0];
    ocm_bad_operation.extend_from_slice(&[0u8; 21]);
    ocm_bad_operation.extend_from_slice(&1u64.to_be_bytes());
    ocm_bad_operation.extend_from_slice(b"rx");
    vec![
        // ROOM speaks first: `alias?`.
        ("ROOM", server.room, Vec::new()),
        // Echoed: a message to oneself.
        ("BIN24", server.bin24.expect("BIN24"), bin24_self_message),
        // The HTTP 400 answer.
        (
            "CCM",
            server.ccm.expect("CCM"),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ),
        // CONNECT_RESPONSE.
        (
            "MATOU",
            server.matou.expect("MATOU"),
            common::matou::packet(1, &[&common::matou::string(b"probe")]),
        ),
        // The page.
        (
            "WEB",
            server.web.expect("WEB"),
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
        ),
        // The 500 answer to an unknown operation.
        ("OCM TCRP", server.ocm_tcp.expect("OCM"), ocm_bad_operation),
    ]
}

/// Connect to `addr` from `source`, send `hello`, and return what arrives before the
/// server closes or goes quiet for `quiet`, and whether it closed.
fn first_answer(source: &str, addr: SocketAddr, hello: &[u8]) -> (Vec<u8>, bool) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let source: std::net::SocketAddr = format!("{source}:0").parse().expect("address");
    socket.bind(&source.into()).expect("bind");
    socket.connect(&addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    // Refused at accept, the write may meet a reset: that is an answer too.
    let _ = stream.write_all(hello);
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return (got, true),
            Err(_) if !got.is_empty() => return (got, false),
            Err(err) => panic!("{addr}: neither an answer nor a close: {err}"),
        }
    }
}

/// README `--connections-per-ip-max` (256): connections from one IP are counted over every
/// TCP protocol together, and the next one is closed at accept, before its protocol answers
/// anything, whichever protocol's port it reaches; another address has its own count, and a
/// close makes room. tests/limits.rs checks ROOM and MATOU; this checks every TCP listener.
#[test]
fn the_per_ip_limit_counts_and_refuses_on_every_tcp_protocols_port() {
    let data = common::TempDir::new("per-ip-every-protocol");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        ccm_port: Some(0),
        matou_port: Some(0),
        web_port: Some(0),
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        data_dir: data.0.clone(),
        connections_per_ip_max: 6,
        ..Config::for_tests()
    });
    let hellos = tcp_hellos(&server);
    assert_eq!(hellos.len(), 6);
    // Each protocol answers from 127.0.0.2 (its own count), so a silence below is a refusal.
    for (protocol, addr, hello) in &hellos {
        let (answer, _) = first_answer("127.0.0.2", *addr, hello);
        assert!(!answer.is_empty(), "{protocol}: no answer when accepted");
    }
    server.wait_connections(0);
    // Six held from 127.0.0.1, one per protocol, silent.
    let held: Vec<TcpStream> = hellos
        .iter()
        .map(|(_, addr, _)| TcpStream::connect(addr).expect("connect"))
        .collect();
    server.wait_connections(6);
    for (protocol, addr, hello) in &hellos {
        let (answer, closed) = first_answer("127.0.0.1", *addr, hello);
        assert!(
            closed && answer.is_empty(),
            "{protocol}: the seventh connection from one IP got {:?} (closed: {closed})",
            String::from_utf8_lossy(&answer)
        );
    }
    // A close makes room, on any port.
    drop(held);
    server.wait_connections(0);
    let (protocol, addr, hello) = &hellos[4];
    let (answer, _) = first_answer("127.0.0.1", *addr, hello);
    assert!(
        !answer.is_empty(),
        "{protocol}: refused after the others closed"
    );
    let stats = server.stop();
    assert_eq!(stats.connections_refused_per_ip, 6, "{stats}");
}

/// README `--web-messages-per-s-max` (20): "lobby and direct messages one web user may send a
/// second", one budget for both. A web user sends 30 directs then 10 says at once: about 20
/// pass in all (not 20 directs and 10 says, as separate budgets would let), each answered
/// (`sent`, or the lobby echo) or refused `rate-limited` (with the direct's id); the
/// recipient gets exactly the directs that passed.
#[test]
fn web_directs_and_says_share_one_rate_and_refused_directs_reach_nobody() {
    const DIRECTS: usize = 30;
    const SAYS: usize = 10;
    let server = TestServer::start(Config {
        web_port: Some(0),
        ..Config::for_tests()
    });
    let rate_per_s = 20;
    let web = server.web.expect("WEB");
    let (mut ann, _) = Web::sign_in(web, "ann");
    let (mut bob, _) = Web::sign_in(web, "bob");
    let mut frames = Vec::new();
    for n in 0..DIRECTS {
        let direct = json!({"type": "direct", "to": "bob", "text": format!("d{n:02}"), "id": n});
        frames.extend(ann.frame(true, 1, direct.to_string().as_bytes()));
    }
    for n in 0..SAYS {
        let say = json!({"type": "say", "text": format!("s{n:02}")});
        frames.extend(ann.frame(true, 1, say.to_string().as_bytes()));
    }
    let started = Instant::now();
    ann.send_raw(&frames);
    let (mut directs_sent, mut directs_refused) = (Vec::new(), Vec::new());
    let (mut says_passed, mut says_refused) = (0, 0);
    while directs_sent.len() + directs_refused.len() < DIRECTS || says_passed + says_refused < SAYS
    {
        let answer = ann.recv();
        match (answer["type"].as_str(), answer["id"].as_u64()) {
            (Some("sent"), Some(id)) => directs_sent.push(id),
            (Some("error"), Some(id)) => {
                assert_eq!(answer["reason"], "rate-limited", "{answer}");
                directs_refused.push(id);
            }
            (Some("error"), None) => {
                assert_eq!(answer["reason"], "rate-limited", "{answer}");
                says_refused += 1;
            }
            (Some("lobby"), _) if answer["from"] == "ann" => says_passed += 1,
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let passed = directs_sent.len() + says_passed;
    let allowed = rate_per_s + (elapsed.as_secs_f64() * rate_per_s as f64).ceil() as usize;
    assert!(
        (rate_per_s..=allowed).contains(&passed),
        "{} directs and {says_passed} says passed in {elapsed:?}; one budget allows \
         {rate_per_s} to {allowed} in all",
        directs_sent.len()
    );
    // Bob gets exactly the directs that passed, then a later say (cat's: ann's budget is
    // spent), in order.
    let (mut cat, _) = Web::sign_in(web, "cat");
    cat.say("end");
    let mut got = Vec::new();
    loop {
        let message = bob.recv();
        match message["type"].as_str() {
            Some("direct") => got.push(message["text"].as_str().expect("text").to_string()),
            Some("lobby") if message["from"] == "cat" => break,
            _ => {}
        }
    }
    let mut expected: Vec<String> = directs_sent.iter().map(|n| format!("d{n:02}")).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "bob got exactly the directs answered `sent`");
}
