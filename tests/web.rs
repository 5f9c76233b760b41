//! WEB, the browser front door, over real sockets: the page, the WebSocket handshake and its
//! refusals, and web users in the switchboard's lobby and name space with ROOM, MATOU, CCM
//! and BIN24 users.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::web::{http, Web};
use common::{ccm, Client, TestServer};
use serde_json::json;
use switchboard::config::Config;

fn config() -> Config {
    Config {
        web_port: Some(0),
        ..Config::for_tests()
    }
}

#[test]
fn the_page_and_its_files_are_served_with_a_strict_policy() {
    let server = TestServer::start(config());
    let web = server.web.unwrap();
    let page = http(web, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"));
    assert!(page.contains("id=\"messages\""));
    let script = http(web, "GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(script.contains("Content-Type: text/javascript"), "{script}");
    assert!(
        !script.contains("innerHTML"),
        "the page never writes markup"
    );
    assert!(http(web, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 "));
    let post = http(
        web,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD"),
        "{post}"
    );
    assert!(http(web, "GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400 "));
}

#[test]
fn origins_other_than_the_pages_own_are_refused() {
    let server = TestServer::start(config());
    let web = server.web.unwrap();
    let refused = Web::open_with(web, "Origin: http://evil.example\r\n").err();
    assert!(refused.unwrap().starts_with("HTTP/1.1 403 "));
    // Host is 127.0.0.1 in the client's request: its own page's origin is allowed.
    Web::open_with(web, "Origin: http://127.0.0.1\r\n").unwrap();
    let wrong = http(
        web,
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    );
    assert!(wrong.starts_with("HTTP/1.1 426 "), "{wrong}");

    let listed = TestServer::start(Config {
        web_origins: Some(vec!["http://chat.example:8080".into()]),
        ..config()
    });
    let web = listed.web.unwrap();
    Web::open_with(web, "Origin: http://chat.example:8080\r\n").unwrap();
    let own_host = Web::open_with(web, "Origin: http://127.0.0.1\r\n").err();
    assert!(own_host.unwrap().starts_with("HTTP/1.1 403 "));
}

#[test]
fn web_users_share_the_lobby_presence_and_direct_messages() {
    let server = TestServer::start(config());
    let web = server.web.unwrap();
    let (mut ann, welcome) = Web::sign_in(web, "ann");
    assert_eq!(
        welcome["present"],
        json!([{"name": "ann", "protocol": "web"}])
    );
    let (mut bob, welcome) = Web::sign_in(web, "bob");
    assert_eq!(welcome["present"].as_array().unwrap().len(), 2);
    let joined = ann.recv();
    assert_eq!(
        joined,
        json!({"type": "joined", "name": "bob", "protocol": "web"})
    );

    bob.say("hello <b>all</b>");
    let expected = json!({"type": "lobby", "from": "bob", "protocol": "web",
                          "text": "hello <b>all</b>"});
    assert_eq!(ann.recv(), expected);
    assert_eq!(bob.recv(), expected, "the sender hears its own echo");

    ann.direct("bob", "psst", 7);
    assert_eq!(
        bob.recv(),
        json!({"type": "direct", "from": "ann", "protocol": "web", "text": "psst"})
    );
    assert_eq!(
        ann.recv(),
        json!({"type": "sent", "id": 7, "status": "delivered"})
    );
    ann.direct("nobody", "hi", 8);
    assert_eq!(
        ann.recv(),
        json!({"type": "error", "id": 8, "reason": "unknown-addressee"})
    );

    // A name is one user's: refused, and the connection stays for another try.
    let mut again = Web::open(web);
    again.send_json(&json!({"type": "signin", "name": "ann"}));
    assert_eq!(
        again.recv(),
        json!({"type": "refused", "reason": "name-taken"})
    );
    again.send_json(&json!({"type": "signin", "name": "bad name"}));
    assert_eq!(
        again.recv(),
        json!({"type": "refused", "reason": "invalid-name"})
    );
    again.send_json(&json!({"type": "signin", "name": "cid"}));
    assert_eq!(again.recv()["type"], "welcome");

    drop(bob);
    let left = ann.await_message("left", |m| m["name"] == "bob");
    assert_eq!(left["protocol"], "web");
}

#[test]
fn web_and_room_and_matou_users_hear_each_other_in_the_lobby() {
    let server = TestServer::start(Config {
        matou_port: Some(0),
        ..config()
    });
    let mut rui = Client::join(server.room, "rui");
    let (mut ann, welcome) = Web::sign_in(server.web.unwrap(), "ann");
    assert!(welcome["present"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "rui", "protocol": "room"})));
    rui.expect(b"b'ann' esta conectado ao chat");
    let mut mia = common::matou::Matou::sign_in(&server, "mia");
    ann.await_message("joined", |m| m["name"] == "mia" && m["protocol"] == "matou");

    rui.read_through(b"b'mia' esta conectado ao chat");
    ann.say("hi all");
    rui.expect(b"ann: hi all");
    mia.await_broadcast("ann", "hi all");

    rui.send(b"rui: hello web\n");
    let heard = ann.await_message("lobby", |m| m["from"] == "rui");
    assert_eq!(heard["protocol"], "room");
    assert_eq!(heard["text"], "hello web");

    mia.say("from matou");
    let heard = ann.await_message("lobby", |m| m["from"] == "mia");
    assert_eq!(heard["text"], "from matou");
    assert_eq!(heard["protocol"], "matou");
}

#[test]
fn frames_that_break_the_rules_close_with_their_code() {
    let server = TestServer::start(config());
    let web = server.web.unwrap();
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("binary", Web::open(web).frame(true, 2, b"x"), 1003),
        (
            "not UTF-8",
            Web::open(web).frame(true, 1, &[0xFF, 0xFE]),
            1007,
        ),
        (
            "oversized",
            Web::open(web).frame(true, 1, &vec![b'a'; 5000]),
            1009,
        ),
        ("reserved bit", vec![0xC1, 0x80, 0, 0, 0, 0], 1002),
    ];
    for (what, frame, code) in cases {
        let mut client = Web::open(web);
        client.send_raw(&frame);
        assert_eq!(client.expect_close(), code, "{what}");
    }
    // Not JSON: an error, and the connection stays.
    let mut client = Web::open(web);
    client.send_text("{not json");
    assert_eq!(
        client.recv(),
        json!({"type": "error", "reason": "bad-request"})
    );
    client.send_frame(true, 9, b"are you there");
    assert_eq!(client.recv_frame(), (10, b"are you there".to_vec()));
    // Fragmented, with a ping between the fragments.
    client.send_frame(false, 1, br#"{"type":"sig"#);
    client.send_frame(true, 9, b"");
    client.send_frame(true, 0, br#"nin","name":"frag"}"#);
    assert_eq!(client.recv_frame(), (10, Vec::new()));
    assert_eq!(client.recv()["type"], "welcome");
    client.send_frame(true, 8, &1000u16.to_be_bytes());
    assert_eq!(client.expect_close(), 1000);
}

#[test]
fn web_and_ccm_users_send_each_other_direct_messages_and_share_the_lobby() {
    let server = TestServer::start(Config {
        ccm_port: Some(0),
        ..config()
    });
    let (mut cat, token) = ccm::identify(server.ccm.expect("CCM enabled"), "cat");
    let (mut ann, welcome) = Web::sign_in(server.web.unwrap(), "ann");
    assert!(welcome["present"]
        .as_array()
        .unwrap()
        .contains(&json!({"name": "cat", "protocol": "ccm"})));

    ann.direct("cat", "hi cat", 1);
    cat.expect(
        b"CCM\\1.0 Text\nSender: ann\nAddressee: cat\nMessage-Encoding: utf-8\n\
          Content-Length: 6\n\nhi cat",
    );
    assert_eq!(
        ann.recv(),
        json!({"type": "sent", "id": 1, "status": "delivered"})
    );

    cat.send(&ccm::text(&token, "ann", "hi ann"));
    assert_eq!(
        ann.recv(),
        json!({"type": "direct", "from": "cat", "protocol": "ccm", "text": "hi ann"})
    );

    cat.send(&ccm::text(&token, "*", "to everyone"));
    assert_eq!(
        ann.recv(),
        json!({"type": "lobby", "from": "cat", "protocol": "ccm", "text": "to everyone"})
    );
    ann.say("back at you");
    ann.recv();
    cat.expect(
        b"CCM\\1.0 Text\nSender: ann\nAddressee: *\nMessage-Encoding: utf-8\n\
          Content-Length: 11\n\nback at you",
    );

    // One name space: a CCM user cannot take a web user's name, nor the other way round.
    let mut other = Client::connect(server.ccm.unwrap(), "ann again");
    other.send(b"CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: 3\n\nann");
    other.read_through(b"Reason: name-taken");
    let mut web_cat = Web::open(server.web.unwrap());
    web_cat.send_json(&json!({"type": "signin", "name": "cat"}));
    assert_eq!(
        web_cat.recv(),
        json!({"type": "refused", "reason": "name-taken"})
    );
}

#[test]
fn web_and_bin24_users_send_each_other_direct_messages() {
    let data = common::TempDir::new("web-bin24");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        bin24_ack_timeout_ms: 300,
        data_dir: data.0.clone(),
        ..config()
    });
    let mut bob = common::bin24::Bin24::log_in(&server, "bob");
    let (mut ann, _) = Web::sign_in(server.web.unwrap(), "ann");

    // BIN24 -> web: ann gets a direct; bob hears "200" from ann once it is written.
    let id = bob.send("ann", "hi ann");
    assert_eq!(
        ann.recv(),
        json!({"type": "direct", "from": "bob", "protocol": "bin24", "text": "hi ann"})
    );
    let answer = bob.recv();
    assert_eq!(
        (
            answer.frame_type,
            answer.message_id,
            &answer.src[..],
            &answer.body[..]
        ),
        (1, id, "ann", &b"200"[..])
    );

    // web -> BIN24: a type 0 with SRC = ann, messageIDs from ann's own counter.
    ann.direct("bob", "hi bob", 3);
    let frame = bob.recv();
    assert_eq!(
        (
            frame.frame_type,
            frame.message_id,
            &frame.src[..],
            &frame.dst[..]
        ),
        (0, 0, "ann", "bob")
    );
    assert_eq!(frame.body, b"hi bob");
    bob.answer_with(&frame, b"200");
    assert_eq!(
        ann.recv(),
        json!({"type": "sent", "id": 3, "status": "delivered"})
    );

    // bob does not answer within the ack timeout: BIN24 rule 6, he is closed and the message
    // waits in his store; ann hears "stored" once it is durable, and bob gets it next time.
    ann.direct("bob", "still there?", 4);
    let unanswered = bob.recv();
    assert_eq!(
        (unanswered.message_id, &unanswered.body[..]),
        (1, &b"still there?"[..])
    );
    bob.expect_closed();
    assert_eq!(
        ann.recv(),
        json!({"type": "sent", "id": 4, "status": "stored"})
    );
    // An offline BIN24 user holds no name: a web user cannot reach its store.
    ann.direct("bob", "hello?", 5);
    assert_eq!(
        ann.recv(),
        json!({"type": "error", "id": 5, "reason": "unknown-addressee"})
    );
    let mut bob = common::bin24::Bin24::connect(server.bin24.unwrap(), "bob");
    bob.register();
    let stored = bob.recv();
    assert_eq!(
        (stored.frame_type, &stored.src[..], &stored.body[..]),
        (2, "ann", &b"still there?"[..])
    );

    // A web name longer than BIN24's 8 bytes cannot be a BIN24 SRC.
    let (mut long, _) = Web::sign_in(server.web.unwrap(), "ninebytes");
    long.direct("bob", "hello", 6);
    assert_eq!(
        long.await_message("error", |_| true),
        json!({"type": "error", "id": 6, "reason": "too-large"})
    );
}

#[test]
fn the_admin_port_counts_web_like_every_protocol() {
    let server = TestServer::start(Config {
        admin_port: Some(0),
        ..config()
    });
    let mut rui = Client::join(server.room, "rui");
    let (mut ann, _) = Web::sign_in(server.web.unwrap(), "ann");
    rui.expect(b"b'ann' esta conectado ao chat");
    ann.say("counted");
    rui.expect(b"ann: counted");
    let mut bad = Web::open(server.web.unwrap());
    bad.send_text("not json");
    bad.recv();
    assert_eq!(
        server.metric(r#"chatd_connections_open{protocol="web"}"#),
        Some(2.0)
    );
    assert_eq!(
        server.metric(r#"chatd_switchboard_lobby_members{protocol="web"}"#),
        Some(1.0)
    );
    assert_eq!(
        server.metric(r#"chatd_switchboard_messages_total{origin="web",destination="room"}"#),
        Some(1.0)
    );
    assert_eq!(
        server.metric(r#"chatd_switchboard_notices_total{origin="web",destination="room"}"#),
        Some(1.0)
    );
    assert_eq!(server.metric("chatd_inputs_rejected_total"), Some(1.0));
    assert!(server.metric(r#"chatd_frames_in_total{protocol="web"}"#) >= Some(3.0));
}
