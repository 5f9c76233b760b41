//! Attacks on documented promises that had only sans-io tests, or none over real sockets:
//! each drives the real server through its flags' defaults or the `Config` the flag sets.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

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
