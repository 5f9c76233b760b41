//! CCM over real sockets: the real server on an ephemeral port.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer};
use switchboard::config::Config;

const IDLE_MS: u64 = 200;
const ANSWER_MS: u64 = 150;

fn server() -> TestServer {
    TestServer::start(Config {
        ccm_port: Some(0),
        ccm_keepalive_idle_ms: IDLE_MS,
        ccm_keepalive_answer_ms: ANSWER_MS,
        ..Config::for_tests()
    })
}

/// Identify as `name`; returns the client and its token.
fn identify(server: &TestServer, name: &str) -> (Client, String) {
    let mut client = Client::connect(server.ccm.expect("CCM enabled"), name);
    let message = format!(
        "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{name}",
        name.len()
    );
    client.send(message.as_bytes());
    client.expect(b"CCM\\1.0 Identity\nUser: ");
    let token = client.read_through(b"\n");
    let token = String::from_utf8(token[..token.len() - 1].to_vec()).expect("hex token");
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    client.expect(b"Content-Length: 0\n\n");
    (client, token)
}

fn text(token: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nUser: {token}\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

fn delivered(from: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nSender: {from}\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn the_original_clients_exact_bytes_identify_juan_douglas() {
    let server = server();
    let mut client = Client::connect(server.ccm.expect("CCM"), "original");
    // No Content-Length: the message is what one read burst brought.
    client.send(
        b"CCM\\1.0 NotDefined\nSendDate: 10/11/2021 11;16;19\nMessage-Encoding: utf-8\n\nJuanDouglas",
    );
    client.expect(b"CCM\\1.0 Identity\nUser: ");
    // The name is taken now.
    let (mut other, _) = identify(&server, "someone");
    other.send(b"CCM\\1.0 Text\nAddressee: JuanDouglas\nContent-Length: 2\n\nhi");
    let got = client.read_through(b"\n\nhi");
    assert!(got.ends_with(
        b"CCM\\1.0 Text\nSender: someone\nAddressee: JuanDouglas\nMessage-Encoding: utf-8\nContent-Length: 2\n\nhi"
    ));
}

#[test]
fn two_users_exchange_messages_both_ways() {
    let server = server();
    let (mut alice, alice_token) = identify(&server, "alice");
    let (mut bob, bob_token) = identify(&server, "bob");
    alice.send(&text(&alice_token, "bob", "olá, bob"));
    bob.expect(&delivered("alice", "bob", "olá, bob"));
    bob.send(&text(&bob_token, "alice", "oi alice"));
    alice.expect(&delivered("bob", "alice", "oi alice"));
}

#[test]
fn an_unknown_addressee_gets_an_error() {
    let server = server();
    let (mut alice, token) = identify(&server, "alice");
    alice.send(&text(&token, "nobody", "hello?"));
    alice.expect(b"CCM\\1.0 Error\nReason: unknown-addressee\n");
    // Still connected and usable.
    alice.send(&text(&token, "alice", "to myself"));
    alice.read_through(b"\n\nto myself");
}

/// PROTOCOLS.md CCM rule 2 and README `--ccm-name-bytes-max` (64): a 65-byte name gets Error
/// `too-large` and the connection stays for another try; a 64-byte one is identified there
/// and receives what is addressed to it.
#[test]
fn a_name_of_64_bytes_is_identified_and_one_of_65_is_too_large() {
    let server = server();
    let mut client = Client::connect(server.ccm.expect("CCM"), "longest");
    let identification = |name: &str| {
        format!(
            "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{name}",
            name.len()
        )
    };
    client.send(identification(&"n".repeat(65)).as_bytes());
    client.expect(b"CCM\\1.0 Error\nReason: too-large\n");
    let longest = "n".repeat(64);
    client.send(identification(&longest).as_bytes());
    // The rest of the Error (its length and sentence) comes first.
    client.read_through(b"CCM\\1.0 Identity\nUser: ");
    client.read_through(b"Content-Length: 0\n\n");
    let (mut alice, token) = identify(&server, "alice");
    alice.send(&text(&token, &longest, "oi"));
    client.expect(&delivered("alice", &longest, "oi"));
}

/// PROTOCOLS.md CCM rule 5 and README `--ccm-keepalive-idle-ms`, `--ccm-keepalive-answer-ms`:
/// the ping comes after the idle time, and the close after the answer time counted from the
/// ping, neither early nor much late. The answer time is long here (1 s) so that the bound
/// above it (the margin is for a loaded debug build) tells it from twice its length.
#[test]
fn a_silent_identified_client_is_pinged_then_closed() {
    const SILENT_ANSWER_MS: u64 = 1000;
    const LATE_MARGIN_MS: u64 = 400;
    let server = TestServer::start(Config {
        ccm_port: Some(0),
        ccm_keepalive_idle_ms: IDLE_MS,
        ccm_keepalive_answer_ms: SILENT_ANSWER_MS,
        ..Config::for_tests()
    });
    let (mut silent, _) = identify(&server, "silent");
    let started = Instant::now();
    silent.expect(b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
    let pinged_after = started.elapsed();
    assert!(
        pinged_after >= Duration::from_millis(IDLE_MS - 20),
        "{pinged_after:?}"
    );
    assert!(
        pinged_after < Duration::from_millis(IDLE_MS + LATE_MARGIN_MS),
        "{pinged_after:?}"
    );
    let pinged = Instant::now();
    assert!(silent.expect_closed().is_empty());
    let closed_after = pinged.elapsed();
    assert!(
        closed_after >= Duration::from_millis(SILENT_ANSWER_MS - 20),
        "closed {closed_after:?} after the ping"
    );
    assert!(
        closed_after < Duration::from_millis(SILENT_ANSWER_MS + LATE_MARGIN_MS),
        "closed {closed_after:?} after the ping, answer time {SILENT_ANSWER_MS} ms"
    );
    server.wait_connections(0);
}

/// PROTOCOLS.md CCM rule 5: the keepalive counts silence, so a client that talks is never
/// pinged, and any CCM message (a Text here, not only a `Connect`) answers a ping. The talker
/// sends to itself every quarter idle period for five idle periods: each next thing it gets
/// is its own message, never a `Connect`. Then it goes quiet, is pinged, answers with a Text
/// within the window, and is still served after the window has passed.
#[test]
fn a_talking_client_is_never_pinged_and_any_message_answers_a_ping() {
    // Longer than the file's 200 ms, so that a stalled test thread (a loaded debug build)
    // does not look like silence: the talker speaks every 50 ms.
    const TALKER_IDLE_MS: u64 = 500;
    const TALKER_ANSWER_MS: u64 = 300;
    let server = TestServer::start(Config {
        ccm_port: Some(0),
        ccm_keepalive_idle_ms: TALKER_IDLE_MS,
        ccm_keepalive_answer_ms: TALKER_ANSWER_MS,
        ..Config::for_tests()
    });
    let (mut talker, token) = identify(&server, "talker");
    let talked = Instant::now();
    let mut round = 0;
    while talked.elapsed() < Duration::from_millis(4 * TALKER_IDLE_MS) {
        std::thread::sleep(Duration::from_millis(50));
        let body = format!("round {round}");
        talker.send(&text(&token, "talker", &body));
        talker.expect(&delivered("talker", "talker", &body));
        round += 1;
    }
    let quiet = Instant::now();
    talker.expect(b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
    assert!(quiet.elapsed() >= Duration::from_millis(TALKER_IDLE_MS - 20));
    talker.send(&text(&token, "talker", "here"));
    talker.expect(&delivered("talker", "talker", "here"));
    // Past the answer window: still served (another ping may come first, nothing else).
    std::thread::sleep(Duration::from_millis(TALKER_ANSWER_MS + 50));
    talker.send(&text(&token, "talker", "still here"));
    let got = talker.read_through(b"\n\nstill here");
    let last = delivered("talker", "talker", "still here");
    let before = &got[..got.len() - last.len()];
    assert!(
        got.ends_with(&last)
            && (before.is_empty() || before == b"CCM\\1.0 Connect\nContent-Length: 0\n\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn answering_the_keepalive_keeps_the_connection() {
    let server = server();
    let (mut alive, token) = identify(&server, "alive");
    for _ in 0..3 {
        alive.expect(b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
        alive.send(b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
    }
    alive.send(&text(&token, "alive", "still here"));
    alive.read_through(b"\n\nstill here");
}

#[test]
fn a_browser_gets_the_http_answer_and_is_closed() {
    let server = server();
    let mut browser = Client::connect(server.ccm.expect("CCM"), "browser");
    browser.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let answer = browser.expect_closed();
    let text = String::from_utf8(answer).expect("ASCII answer");
    let body = "This server uses the CCM (Chat Comunitcation message) protocol to communicate and I need to use this protocol!";
    assert_eq!(body.len(), 110);
    let date_line = text.lines().nth(1).expect("date line").to_string();
    assert!(
        date_line.starts_with("Date: ") && date_line.len() == "Date: MM/dd/yyyy HH:mm:ss".len()
    );
    let expected = format!(
        "HTTP/1.1 400 Bad Request\r\n{date_line}\r\nServer: CCM Server\r\nContent-Length: 110\r\nConnection: Closed\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\n{body}"
    );
    assert_eq!(text, expected);
}

#[test]
fn a_disconnect_frees_the_name() {
    let server = server();
    let (mut alice, _) = identify(&server, "alice");
    alice.send(b"CCM\\1.0 Disconnect\nContent-Length: 0\n\n");
    alice.expect_closed();
    server.wait_connections(0);
    identify(&server, "alice");
}

/// A flood of addressed messages is cut at its sender with Error `rate-limited`, instead of
/// closing its recipient as a slow consumer: bob reads nothing while mallory writes 60 KiB
/// messages to him at 16 MiB/s for half a second (without the limit, bob's queue passes
/// the 4 MiB output limit within that time).
#[test]
fn an_addressed_flood_is_refused_to_its_sender_and_its_recipient_stays() {
    use std::io::{Read, Write};
    let server = TestServer::start(Config {
        ccm_port: Some(0),
        admin_port: Some(0),
        ..Config::for_tests()
    });
    let (mut bob, bob_token) = identify(&server, "bob");
    let (mut mallory, mallory_token) = identify(&server, "mallory");
    let frames_before = server
        .metric("chatd_frames_in_total{protocol=\"ccm\"}")
        .expect("frames metric");

    let mut reader = mallory.stream.try_clone().expect("clone");
    reader
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let (done_tx, done_rx) = std::sync::mpsc::channel::<usize>();
    let refusals = std::thread::spawn(move || {
        let needle = b"CCM\\1.0 Error\nReason: rate-limited\n";
        let mut received = Vec::new();
        let mut expected = None;
        let deadline = Instant::now() + 2 * common::WAIT;
        loop {
            if expected.is_none() {
                expected = done_rx.try_recv().ok();
            }
            let refused = common::count(&received, needle);
            if expected == Some(refused) {
                return (refused, common::count(&received, b"CCM\\1.0 Error"));
            }
            assert!(
                Instant::now() < deadline,
                "{refused} refusals of {expected:?}"
            );
            let mut chunk = [0u8; 65536];
            match reader.read(&mut chunk) {
                Ok(0) => panic!("mallory was closed after {refused} refusals"),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => panic!("mallory's answers: {err}"),
            }
        }
    });

    let message = text(&mallory_token, "bob", &"x".repeat(60 * 1024));
    let batch = message.repeat(8);
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_millis(500) {
        mallory.stream.write_all(&batch).expect("mallory's flood");
        sent += 8;
        // Within the input budget (`--input-bytes-per-s-max`, 64 MiB/s, beyond which the
        // flooder itself is closed): 16 MiB/s, 8 MiB in the half second, twice bob's limit.
        let due = Duration::from_secs_f64((sent * message.len()) as f64 / (16.0 * 1048576.0));
        std::thread::sleep(due.saturating_sub(started.elapsed()));
    }
    // Once the server has read every message, one bob sends himself queues behind every
    // flood message that was delivered to him.
    server.wait_metric(
        "chatd_frames_in_total{protocol=\"ccm\"}",
        frames_before + sent as f64,
    );
    let expected_delivered_max =
        2.0 * 1024.0 * 1024.0 * (1.0 + started.elapsed().as_secs_f64()) / message.len() as f64;
    bob.send(&text(&bob_token, "bob", "after the flood"));
    let before_sync = bob.read_through(b"\n\nafter the flood");
    let delivered = common::count(&before_sync, b"Sender: mallory\n");
    // Every message was either delivered or refused, and only refused ones got an Error.
    let refused = sent - delivered;
    done_tx.send(refused).expect("refusal counter");
    let (counted, errors) = refusals.join().expect("refusal counter");
    eprintln!("mallory sent {sent} messages; bob got {delivered}; {counted} refused");
    assert_eq!(counted, refused);
    assert_eq!(errors, refused, "no other error");
    assert!(refused > 0, "the flood passed the limit");
    assert!(
        (delivered as f64) <= expected_delivered_max,
        "{delivered} > {expected_delivered_max}"
    );
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 0, "{stats}");
}

/// README `--ccm-sender-bytes-per-s-max` (8 MiB) and PROTOCOLS.md CCM rule 3: besides the
/// pair limit (`an_addressed_flood_...`), what one sender makes everyone together receive is
/// limited: messages spread over many addressees pass while the sender's bucket (a second's
/// worth, at least one largest message: about 1 MiB here) holds, then each is refused with
/// Error `rate-limited` and reaches nobody; the pair limit is off so only the total refuses.
#[test]
fn messages_spread_over_many_addressees_are_limited_by_the_senders_total() {
    const CONTENT_BYTES: usize = 200 * 1024;
    const SENT: usize = 8;
    const ADDRESSEES: usize = 4;
    let server = TestServer::start(Config {
        ccm_port: Some(0),
        // Slow enough that nothing refills while the burst is read: 64 KiB a second, the
        // bucket holding one largest message (1 MiB of content and its headers).
        ccm_sender_bytes_per_s_max: 64 * 1024,
        ccm_pair_bytes_per_s_max: 0,
        ..Config::for_tests()
    });
    let mut addressees: Vec<(Client, String)> = (0..ADDRESSEES)
        .map(|index| identify(&server, &format!("u{index}")))
        .collect();
    let (mut sender, sender_token) = identify(&server, "sender");
    let (mut witness, witness_token) = identify(&server, "witness");
    let burst: Vec<u8> = (0..SENT)
        .flat_map(|index| {
            let body = format!("{index:02}{}", "x".repeat(CONTENT_BYTES - 2));
            text(&sender_token, &format!("u{}", index % ADDRESSEES), &body)
        })
        .collect();
    sender.send(&burst);
    // 1,058,816 bytes of bucket over about 205,000 a message: five pass, three are refused.
    let refusal = b"CCM\\1.0 Error\nReason: rate-limited\n";
    for _ in 0..3 {
        sender.read_through(refusal);
    }
    let mut delivered = Vec::new();
    for (index, (addressee, _)) in addressees.iter_mut().enumerate() {
        witness.send(&text(&witness_token, &format!("u{index}"), "marker"));
        let got = addressee.read_through(b"\n\nmarker");
        let mut at = 0;
        while let Some(found) = common::find(&got[at..], b"Sender: sender\n") {
            at += found + 1;
            let body = common::find(&got[at..], b"\n\n").expect("a body") + at + 2;
            delivered.push(String::from_utf8_lossy(&got[body..body + 2]).into_owned());
        }
    }
    delivered.sort();
    assert_eq!(
        delivered,
        ["00", "01", "02", "03", "04"],
        "the first five, each once"
    );
    // Nothing more was refused, and the sender is still served.
    sender.send(&text(&sender_token, "sender", "still here"));
    let rest = sender.read_through(b"\n\nstill here");
    assert_eq!(common::count(&rest, b"CCM\\1.0 Error"), 0);
}
