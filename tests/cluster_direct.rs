//! Direct messages across cluster nodes between protocols (SWITCHBOARD rule 4 and WEB's
//! `direct`; docs/CLUSTER.md, "Direct messages across nodes"): real chatd nodes joined to a
//! real `redis-server` (`--appendonly yes --appendfsync always`, as BIN24's offline store
//! there needs for "300").
//!
//! - BIN24 -> CCM: written to the CCM user on the other node, the "200" back; the CCM user
//!   gone: stored ("300"), and found at the name's next BIN24 login on the other node;
//! - CCM -> BIN24: BIN24's type 0 on the other node, its ack timeout there (unanswered:
//!   closed, stored, found at the next login on the first node);
//! - WEB -> CCM, WEB, BIN24 and back: `direct` both ways, `sent delivered` back to the web
//!   sender, `sent stored` when the BIN24 user does not answer, `unknown-addressee` for
//!   nobody.
//!
//! Without `redis-server` on the PATH the tests say so and return; under `CI=true` they fail.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;
mod redisd;

use std::io::Read;
use std::time::Duration;

use chatd::Chatd;
use common::bin24::{Bin24, Received};
use common::ccm::{identify as ccm_identify, text as ccm_text};
use common::web::Web;
use redisd::{addr, Redis};
use serde_json::json;
use switchboard::protocol::bin24::codec;

const FLAGS: &[&str] = &["--bin24-port", "--ccm-port", "--web-port"];
/// Short, so an unanswered frame is stored within the test; the custody timer on the
/// sender's node is this plus the lease (Redis's default 3000 ms here), never reached.
const ACK_TIMEOUT: [&str; 2] = ["--bin24-ack-timeout-ms", "300"];

/// What a CCM user receives from `from` (a BIN24 or web user, or another CCM user).
fn ccm_addressed(from: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nSender: {from}\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `user` logged in over BIN24 on `node`: the frames stored for it that came first.
fn bin24_log_in(node: &Chatd, user: &str) -> (Bin24, Vec<Received>) {
    let mut client = Bin24::connect(addr(node, "--bin24-port"), user);
    let before = client.register_and_wait();
    (client, before)
}

/// The answer to `client`'s message `id`, from `from`: its body.
fn answer_to(client: &mut Bin24, id: u32, from: &str) -> Vec<u8> {
    let frame = client.recv();
    assert_eq!(
        (
            frame.frame_type,
            frame.message_id,
            &frame.src[..],
            &frame.dst[..]
        ),
        (codec::TYPE_ANSWER, id, from, &client.user[..]),
        "{frame:?}"
    );
    frame.body
}

/// The stored frames that came before the sign-in's echo, or else the next frame (a
/// stored backlog is loaded from Redis and may come after the echo); then nothing more
/// for a moment (a frame twice would be caught here).
fn at_least_one(client: &mut Bin24, mut kept: Vec<Received>) -> Vec<Received> {
    if kept.is_empty() {
        kept.push(client.recv());
    }
    for frame in &kept {
        client.answer(frame);
    }
    assert_eq!(
        client.try_frame(),
        None,
        "{}: a frame was waiting",
        client.user
    );
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut chunk = [0u8; 1024];
    match client.stream.read(&mut chunk) {
        Ok(n) if n > 0 => panic!("{}: more: {:?}", client.user, &chunk[..n]),
        _ => {}
    }
    client.stream.set_read_timeout(Some(common::WAIT)).unwrap();
    kept
}

/// A BIN24 user on A and a CCM user on B: each direction, in order, once; the BIN24
/// sender's "200" comes back from B once the CCM user's TCP acknowledged it; the CCM user's
/// messages are BIN24's own on A (ana's answers go back to B, and cat is told nothing).
/// Then cat leaves: ana's next message is stored ("300") and reaches the name "cat" at its
/// next login, over BIN24, on A. And CCM -> BIN24 unanswered: closed on A after the ack
/// timeout, stored, and found when bob logs in on B.
#[test]
fn bin24_and_ccm_users_on_two_nodes_message_each_other_with_bin24s_answers() {
    let Some(redis) = Redis::start_durable() else {
        return;
    };
    let a = redis.node("node-a", FLAGS, &ACK_TIMEOUT);
    let b = redis.node("node-b", FLAGS, &ACK_TIMEOUT);
    let (mut ana, before) = bin24_log_in(&a, "ana");
    assert!(before.is_empty());
    let (mut cat, cat_token) = ccm_identify(addr(&b, "--ccm-port"), "cat");

    // BIN24 -> CCM across nodes: CCM's form on B, "200" back on A, in order.
    let texts = ["one", "two", "three"];
    let ids: Vec<u32> = texts.iter().map(|text| ana.send("cat", text)).collect();
    for text in texts {
        cat.expect(&ccm_addressed("ana", "cat", text));
    }
    for id in ids {
        assert_eq!(answer_to(&mut ana, id, "cat"), codec::ANSWER_DELIVERED);
    }

    // CCM -> BIN24 across nodes: BIN24's type 0 on A, from cat, messageIDs from 0.
    for body in ["back", "again"] {
        cat.send(&ccm_text(&cat_token, "ana", body));
    }
    for (id, body) in [(0, "back"), (1, "again")] {
        let got = ana.recv();
        assert_eq!(
            (got.frame_type, got.message_id, &got.src[..], &got.dst[..]),
            (codec::TYPE_MESSAGE, id, "cat", "ana")
        );
        assert_eq!(got.body, body.as_bytes());
        ana.answer(&got);
    }
    cat.expect_nothing_for(Duration::from_millis(200));

    // cat leaves: ana's message finds nobody holding "cat" (or, racing the release, cat's
    // node finds it gone): stored, "300", and delivered at the name's next login on A.
    drop(cat);
    let id = ana.send("cat", "are you there?");
    assert_eq!(answer_to(&mut ana, id, "cat"), codec::ANSWER_STORED);
    let (mut cat_bin24, kept) = Bin24::log_in_when_free(addr(&a, "--bin24-port"), "cat");
    let kept = at_least_one(&mut cat_bin24, kept);
    let [frame] = &kept[..] else {
        panic!("one frame kept for cat: {kept:?}");
    };
    assert_eq!(
        (frame.frame_type, frame.message_id, &frame.src[..]),
        (codec::TYPE_OFFLINE, id, "ana")
    );
    assert_eq!(frame.body, b"are you there?");
    drop(cat_bin24);

    // CCM -> BIN24, unanswered: bob on A is closed after the ack timeout (A's), the frame
    // stored, and bob finds it logging in on B.
    let (mut bob, _) = bin24_log_in(&a, "bob");
    let (mut cid, cid_token) = ccm_identify(addr(&b, "--ccm-port"), "cid");
    cid.send(&ccm_text(&cid_token, "bob", "answer me"));
    let got = bob.recv();
    assert_eq!(
        (got.frame_type, &got.src[..], &got.body[..]),
        (codec::TYPE_MESSAGE, "cid", &b"answer me"[..])
    );
    bob.expect_closed();
    let (mut bob, kept) = Bin24::log_in_when_free(addr(&b, "--bin24-port"), "bob");
    let kept = at_least_one(&mut bob, kept);
    let [frame] = &kept[..] else {
        panic!("one frame kept for bob: {kept:?}");
    };
    assert_eq!(
        (frame.frame_type, &frame.src[..], &frame.body[..]),
        (codec::TYPE_OFFLINE, "cid", &b"answer me"[..])
    );
    cid.expect_nothing_for(Duration::from_millis(50));
}

/// A web user on A and a CCM, a web and a BIN24 user on B: wes's `direct` reaches each in
/// its form, and `sent delivered` comes back (from the BIN24 user's "200"); each answers
/// and wes gets `direct`s (the web user's and the BIN24 user's senders hear theirs). A
/// BIN24 user that does not answer: `sent stored`, and the frame is found at bob's next
/// login on A. Nobody holds the name: `unknown-addressee`.
#[test]
fn a_web_user_and_ccm_web_and_bin24_users_on_another_node_message_each_other() {
    let Some(redis) = Redis::start_durable() else {
        return;
    };
    let a = redis.node("node-a", FLAGS, &ACK_TIMEOUT);
    let b = redis.node("node-b", FLAGS, &ACK_TIMEOUT);
    let (mut wes, _) = Web::sign_in(addr(&a, "--web-port"), "wes");
    let (mut cat, cat_token) = ccm_identify(addr(&b, "--ccm-port"), "cat");
    let (mut wil, _) = Web::sign_in(addr(&b, "--web-port"), "wil");
    let (mut bob, _) = bin24_log_in(&b, "bob");
    let is = |id: u64| move |m: &serde_json::Value| m["id"] == id;

    // WEB -> CCM, WEB, BIN24 on B.
    wes.direct("cat", "hi cat", 1);
    cat.expect(&ccm_addressed("wes", "cat", "hi cat"));
    assert_eq!(
        wes.await_message("sent", is(1)),
        json!({"type": "sent", "id": 1, "status": "delivered"})
    );
    wes.direct("wil", "hi wil", 2);
    assert_eq!(
        wil.await_message("direct", |_| true),
        json!({"type": "direct", "from": "wes", "protocol": "web", "text": "hi wil"})
    );
    assert_eq!(
        wes.await_message("sent", is(2)),
        json!({"type": "sent", "id": 2, "status": "delivered"})
    );
    wes.direct("bob", "hi bob", 3);
    let got = bob.recv();
    assert_eq!(
        (got.frame_type, got.message_id, &got.src[..], &got.body[..]),
        (codec::TYPE_MESSAGE, 0, "wes", &b"hi bob"[..])
    );
    bob.answer(&got);
    assert_eq!(
        wes.await_message("sent", is(3)),
        json!({"type": "sent", "id": 3, "status": "delivered"})
    );

    // CCM, WEB, BIN24 on B -> WEB on A.
    cat.send(&ccm_text(&cat_token, "wes", "from cat"));
    assert_eq!(
        wes.await_message("direct", |m| m["from"] == "cat"),
        json!({"type": "direct", "from": "cat", "protocol": "ccm", "text": "from cat"})
    );
    wil.direct("wes", "from wil", 7);
    assert_eq!(
        wes.await_message("direct", |m| m["from"] == "wil"),
        json!({"type": "direct", "from": "wil", "protocol": "web", "text": "from wil"})
    );
    assert_eq!(
        wil.await_message("sent", is(7)),
        json!({"type": "sent", "id": 7, "status": "delivered"})
    );
    let id = bob.send("wes", "from bob");
    assert_eq!(
        wes.await_message("direct", |m| m["from"] == "bob"),
        json!({"type": "direct", "from": "bob", "protocol": "bin24", "text": "from bob"})
    );
    assert_eq!(answer_to(&mut bob, id, "wes"), codec::ANSWER_DELIVERED);

    // Nobody: unknown, after the look-up.
    wes.direct("nobody", "lost?", 8);
    assert_eq!(
        wes.await_message("error", is(8)),
        json!({"type": "error", "id": 8, "reason": "unknown-addressee"})
    );

    // bob does not answer: B closes him after the ack timeout and stores the frame; wes
    // hears `sent stored`; bob finds it at his next login, on A.
    wes.direct("bob", "still there?", 9);
    let got = bob.recv();
    assert_eq!(got.body, b"still there?");
    bob.expect_closed();
    assert_eq!(
        wes.await_message("sent", is(9)),
        json!({"type": "sent", "id": 9, "status": "stored"})
    );
    let (mut bob, kept) = Bin24::log_in_when_free(addr(&a, "--bin24-port"), "bob");
    let kept = at_least_one(&mut bob, kept);
    let [frame] = &kept[..] else {
        panic!("one frame kept for bob: {kept:?}");
    };
    assert_eq!(
        (frame.frame_type, &frame.src[..], &frame.body[..]),
        (codec::TYPE_OFFLINE, "wes", &b"still there?"[..])
    );
}
