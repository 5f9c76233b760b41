//! A BIN24 frame that the sender's node stores for a user who stays online on another node
//! reaches that user on the same connection, not at its next login (docs/CLUSTER.md, "Frames
//! stored for a user online elsewhere"), over a real `redis-server` and real `chatd` nodes:
//!
//! - the sender's node lost its publishing link for longer than events wait (half a lease):
//!   the crossing frame is dropped, the custody timer stores it and answers "300", and the
//!   `Stored` notice it publishes (the link is back by then) makes the recipient's node load
//!   it;
//! - the recipient's node lost its subscription while the frame and the notice crossed: once
//!   resubscribed it reads its online users' stores again.
//!
//! In both, the recipient gets the frame once, as type 2, on the connection it had all along.
//! Without `redis-server` on the PATH the tests say so and return; under `CI=true` they fail.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;
mod redisd;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatd::Chatd;
use common::bin24::{Bin24, Received};
use redisd::{
    admin_connection, client_id, client_ids_from, command, let_clients_in, metric, tcp_ports_of,
    wait_metric, Redis,
};
use switchboard::protocol::bin24::codec;

const DROPPED: &str = "chatd_cluster_events_publish_dropped_total";

fn addr(node: &Chatd) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.port("--bin24-port")))
}

/// Redis takes no new client (every connection held now stays): a node's reconnect is
/// refused until [`let_clients_in`].
fn refuse_new_clients(conn: &mut redis::Connection) {
    command(conn, &["CONFIG", "SET", "maxclients", "1"]);
}

/// The ids Redis gives `node`'s subscriptions (`CLIENT LIST TYPE pubsub`, by local port): a
/// subscription made again has another id.
fn subscriptions_of(conn: &mut redis::Connection, node: &Chatd) -> Vec<String> {
    let ports = tcp_ports_of(node.pid());
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query(conn)
        .expect("CLIENT LIST");
    client_ids_from(&list, &ports, |_| true)
}

/// Frames stored for `user` in Redis now.
fn stored(redis: &Redis, user: &str) -> i64 {
    let key = format!("switchboard:bin24:{user}");
    redis.query_int(&[b"XLEN", key.as_bytes()])
}

/// Waits (bounded) until Redis holds `count` frames for `user`.
fn wait_stored(redis: &Redis, user: &str, count: i64) {
    let deadline = Instant::now() + common::WAIT;
    while stored(redis, user) != count {
        assert!(
            Instant::now() < deadline,
            "{user}: {} frames in Redis, not {count}",
            stored(redis, user)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The answer to message `id`, waiting for it; other frames are an error.
fn answer_to(client: &mut Bin24, id: u32) -> Vec<u8> {
    let frame = client.recv();
    assert_eq!(
        (frame.frame_type, frame.message_id),
        (codec::TYPE_ANSWER, id),
        "{}: {frame:?}",
        client.user
    );
    frame.body
}

/// ana on A, bob on B, and one message ana→bob delivered live and answered "200" (both
/// nodes' links are up, and A's location cache names B for bob).
fn ana_and_bob(a: &Chatd, b: &Chatd) -> (Bin24, Bin24) {
    let (mut ana, _) = Bin24::log_in_when_free(addr(a), "ana");
    let (mut bob, before) = Bin24::log_in_when_free(addr(b), "bob");
    assert!(before.is_empty(), "nothing stored for bob: {before:?}");
    let id = ana.send("bob", "warm");
    let live = bob.recv();
    assert_eq!(
        (live.frame_type, live.message_id),
        (codec::TYPE_MESSAGE, id)
    );
    bob.answer(&live);
    assert_eq!(&answer_to(&mut ana, id)[..3], codec::ANSWER_DELIVERED);
    (ana, bob)
}

/// The frame `id` from ana, stored and sent to bob as type 2; bob answers it, it leaves Redis,
/// and nothing more comes (once).
fn bob_gets_it_once(redis: &Redis, bob: &mut Bin24, id: u32, text: &str) {
    let frame: Received = bob.recv();
    let header = (
        frame.frame_type,
        frame.message_id,
        &frame.src[..],
        &frame.dst[..],
        &frame.body[..],
    );
    assert_eq!(
        header,
        (codec::TYPE_OFFLINE, id, "ana", "bob", text.as_bytes())
    );
    bob.answer(&frame);
    wait_stored(redis, "bob", 0);
    bob.expect_quiet_for(Duration::from_millis(300));
}

/// A's publishing link is lost (`CLIENT KILL ID`) and Redis takes no new client for longer
/// than events wait for it (half a lease): ana's message to bob, online on B, is dropped on
/// A. Redis takes clients again, A publishes again, and A's custody timer (the ack timeout
/// and the lease) stores the frame and answers "300". Its `Stored` notice makes B load it:
/// bob gets it on the connection he had all along, soon after the "300", once. B's
/// subscription is the one it had all along, so nothing but the notice told it.
#[test]
fn a_frame_stored_by_the_senders_node_reaches_its_recipient_online_elsewhere_by_a_notice() {
    let Some(redis) = Redis::start_durable() else {
        return;
    };
    const ACK_TIMEOUT_MS: u64 = 300;
    const LEASE_MS: u64 = 5000;
    // Events wait 2.5 s for a link; the publisher is back within 2 s of Redis taking clients
    // (its reconnect delay, doubling to 2 s), well before the custody timer (5.3 s).
    let flags = [
        "--bin24-ack-timeout-ms",
        "300",
        "--cluster-lease-ms",
        "5000",
    ];
    let mut a = redis.node("node-a", &["--bin24-port"], &flags);
    let b = redis.node("node-b", &["--bin24-port"], &flags);
    let (mut ana, mut bob) = ana_and_bob(&a, &b);
    let mut admin = admin_connection(&redis);
    // A's publisher's last command is a PUBLISH (the warm-up message).
    let publisher = client_id(&mut admin, &a, "publish");
    let dropped_before = metric(&mut a, DROPPED);
    let b_subscription = subscriptions_of(&mut admin, &b);
    assert_eq!(b_subscription.len(), 1, "B's one subscription");

    refuse_new_clients(&mut admin);
    let killed = command(&mut admin, &["CLIENT", "KILL", "ID", &publisher]);
    assert_eq!(killed, redis::Value::Int(1));
    a.stderr
        .wait_for("cluster: the publisher's link to Redis is down (");
    let sent = Instant::now();
    let id = ana.send("bob", "stored on A");
    // The crossing frame waited half a lease for the link and was dropped: B never sees it.
    wait_metric(&mut a, DROPPED, dropped_before + 1.0);
    let_clients_in(&mut admin);
    a.stderr
        .wait_for("cluster: the publisher's link to Redis is back after");
    assert!(
        sent.elapsed() < Duration::from_millis(ACK_TIMEOUT_MS + LEASE_MS),
        "the publisher came back after the custody timer: the test proves nothing"
    );

    assert_eq!(answer_to(&mut ana, id), codec::ANSWER_STORED);
    let stored_at = Instant::now();
    assert!(
        sent.elapsed() >= Duration::from_millis(ACK_TIMEOUT_MS + LEASE_MS),
        "\"300\" before the custody timer: {:?}",
        sent.elapsed()
    );
    bob_gets_it_once(&redis, &mut bob, id, "stored on A");
    let after = stored_at.elapsed();
    eprintln!(
        "bob got the frame A stored {} ms after its \"300\"",
        after.as_millis()
    );
    assert!(
        after < Duration::from_secs(2),
        "the notice took {after:?} to bring the frame"
    );
    assert_eq!(
        subscriptions_of(&mut admin, &b),
        b_subscription,
        "B's subscription was made again: its re-read, not the notice, may have told it"
    );
}

/// Redis closes both nodes' subscriptions and takes no new client meanwhile: ana's message to
/// bob (online on B) goes to Redis while B is not subscribed, A's custody timer stores it
/// and answers "300", and A's `Stored` notice is lost the same way. Once Redis takes clients
/// again B resubscribes and reads its online users' stores: bob gets the frame on the
/// connection he had all along, once.
#[test]
fn a_node_whose_subscription_comes_back_sends_its_online_users_what_was_stored_meanwhile() {
    let Some(redis) = Redis::start_durable() else {
        return;
    };
    // A lease of 4 s: Redis commands may take a second (a quarter lease) before a link is
    // taken for lost, so a loaded machine does not cost A its offline store's connection
    // while Redis refuses new ones.
    let flags = [
        "--bin24-ack-timeout-ms",
        "300",
        "--cluster-lease-ms",
        "4000",
    ];
    let a = redis.node("node-a", &["--bin24-port"], &flags);
    let mut b = redis.node("node-b", &["--bin24-port"], &flags);
    let (mut ana, mut bob) = ana_and_bob(&a, &b);
    let mut admin = admin_connection(&redis);

    refuse_new_clients(&mut admin);
    let killed = command(&mut admin, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, redis::Value::Int(2), "both nodes' subscriptions");
    b.stderr
        .wait_for("cluster: the subscriber's link to Redis is down (");
    let id = ana.send("bob", "while B was away");
    assert_eq!(answer_to(&mut ana, id), codec::ANSWER_STORED);
    let bob_key = "switchboard:bin24:bob";
    let in_redis = command(&mut admin, &["XLEN", bob_key]);
    assert_eq!(in_redis, redis::Value::Int(1), "the frame is in Redis");
    assert_eq!(
        metric(&mut b, "chatd_cluster_redis_link_down"),
        1.0,
        "B resubscribed too early: the notice may have reached it"
    );
    bob.expect_quiet_for(Duration::from_millis(100));

    let_clients_in(&mut admin);
    b.stderr
        .wait_for("cluster: the subscriber's link to Redis is back after");
    let back_at = Instant::now();
    bob_gets_it_once(&redis, &mut bob, id, "while B was away");
    let after = back_at.elapsed();
    eprintln!(
        "bob got the frame {} ms after B resubscribed",
        after.as_millis()
    );
    assert!(
        after < Duration::from_secs(2),
        "{after:?} after B resubscribed"
    );
}
