//! Attacks on WEB's size promises over real sockets (docs/RELIABILITY.md, "Limits a hostile
//! client cannot pass": "a frame or message over the size is refused from its header (close
//! 1009) before it is buffered").

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::web::Web;
use common::{Client, TestServer};
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
