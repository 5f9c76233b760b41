//! Attacks on WEB's size promises over real sockets (docs/RELIABILITY.md, "Limits a hostile
//! client cannot pass": "a frame or message over the size is refused from its header (close
//! 1009) before it is buffered").

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::bin24::Bin24;
use common::web::Web;
use common::{Client, TempDir, TestServer};
use serde_json::json;
use switchboard::config::Config;

const MESSAGE_BYTES_MAX: usize = 4096;

/// A `say` of `text` padded with spaces (JSON allows them after the object) to exactly `bytes`.
fn say_of_length(text: &str, bytes: usize) -> Vec<u8> {
    let mut message = format!(r#"{{"type":"say","text":"{text}"}}"#).into_bytes();
    assert!(message.len() <= bytes);
    message.resize(bytes, b' ');
    message
}

/// A message is bounded as a whole, not only frame by frame: one sent in fragments may reach
/// `--web-message-bytes-max` exactly and is delivered; a continuation whose header takes the
/// message past it is refused from that header, with 1009, before its payload is sent (so
/// before anything of it can be buffered), and only that connection closes.
#[test]
fn a_fragmented_message_past_the_size_limit_is_refused_from_its_last_header() {
    let server = TestServer::start(Config {
        web_port: Some(0),
        web_message_bytes_max: MESSAGE_BYTES_MAX,
        ..Config::for_tests()
    });
    let web = server.web.expect("WEB enabled");
    let mut rui = Client::join(server.room, "rui");
    let (mut wanda, _) = Web::sign_in(web, "wanda");
    rui.expect(b"b'wanda' esta conectado ao chat");

    // Exactly at the limit, in three fragments: delivered whole.
    let text = "w".repeat(1000);
    let whole = say_of_length(&text, MESSAGE_BYTES_MAX);
    wanda.send_frame(false, 1, &whole[..1500]);
    wanda.send_frame(false, 0, &whole[1500..3000]);
    wanda.send_frame(true, 0, &whole[3000..]);
    rui.expect(format!("wanda: {text}").as_bytes());

    // 4,000 bytes in two fragments, then the header of a last one of 200 bytes, and nothing
    // more: the header alone must end it.
    let next = say_of_length("x", 4000);
    wanda.send_frame(false, 1, &next[..2000]);
    wanda.send_frame(false, 0, &next[2000..]);
    let last = wanda.frame(true, 0, &[b' '; 200]);
    // FIN and opcode, 126 and a 16-bit length, the mask: the payload is not sent.
    wanda.send_raw(&last[..8]);
    assert_eq!(wanda.expect_close(), 1009, "the message past the limit");

    // rui is still served: a second web user's line reaches him.
    let (mut vera, _) = Web::sign_in(web, "vera");
    rui.read_through(b"b'vera' esta conectado ao chat");
    vera.say("still here?");
    rui.read_through(b"vera: still here?");
    server.stop();
}

/// PROTOCOLS.md, WEB: a web user's `direct` to a BIN24 user gets BIN24's answer as its own
/// `sent` (delivered, stored) or `error`, exactly one, for that direct. The attack: ann's page
/// reconnects (a new session under the same name, as the page does after a network blip) while
/// her earlier direct to bob still awaits his answer, and sends another. Each direct must be
/// answered by its own outcome: the new one, answered "200" by bob, `sent delivered`; the old
/// one's fate must not be reported as the new one's.
#[test]
fn a_reconnected_web_user_gets_her_own_directs_outcome_not_her_last_sessions() {
    let data = TempDir::new("attack-web-bin24-ids");
    let server = TestServer::start(Config {
        web_port: Some(0),
        bin24_port: Some(0),
        data_dir: data.0.clone(),
        // The old direct is still unanswered when the new session sends.
        bin24_ack_timeout_ms: 60_000,
        ..Config::for_tests()
    });
    let web = server.web.expect("WEB enabled");
    let mut bob = Bin24::log_in(&server, "bob");
    let (mut ann, _) = Web::sign_in(web, "ann");
    ann.direct("bob", "from the first session", 1);
    let first = bob.recv();
    assert_eq!(first.body, b"from the first session");
    // The page reconnects: the old session is gone, its direct unanswered.
    drop(ann);
    server.wait_connections(1);
    let (mut ann, _) = Web::sign_in(web, "ann");
    ann.direct("bob", "from the second session", 2);
    let second = loop {
        let frame = bob.recv();
        if frame.body == b"from the second session" {
            break frame;
        }
    };
    // bob answers once whatever the second direct did to the first is settled: a reused
    // messageID would move the older message to bob's store (PROTOCOLS.md, BIN24) and answer
    // it "300" once durable. The store takes requests in order, so alice's frame to an offline
    // user, answered "300", is durable after it.
    let mut alice = Bin24::log_in(&server, "alice");
    alice.send("zed", "after the second direct");
    assert_eq!(alice.recv().body, b"300");
    bob.answer_with(&second, b"200");
    let answer = ann.await_message("sent", |_| true);
    assert_eq!(
        answer,
        json!({"type": "sent", "id": 2, "status": "delivered"}),
        "the second direct's own answer"
    );
    server.stop();
}
