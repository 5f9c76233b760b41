//! The location cache of BIN24 crossings (docs/CLUSTER.md, "Where names are: the location
//! cache"): a node sends a BIN24 message to the node the last look-up of its DST named,
//! without asking Redis again; a stale entry never loses the message. Real chatd nodes joined
//! to a real `redis-server` (`--appendonly yes --appendfsync always`).
//!
//! - bob moves from B to C: ana's next message from A, sent to B from the cache, comes back
//!   from B and reaches bob on C live (not stored on B, not "300");
//! - bob's node B is killed and bob logs in on C: once A took B for dead, ana's next message
//!   goes to C at once (the dead node's entries went with it), not to B and then "300" from
//!   A's custody timer.
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
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatd::Chatd;
use common::bin24::{Bin24, Received};
use redisd::{metric, Redis};
use switchboard::protocol::bin24::codec;

fn addr(node: &Chatd) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.port("--bin24-port")))
}

/// Retried until `user`'s name is free on the cluster (its earlier holder's release or lease
/// reached Redis): a BIN24 login of a name another node still holds is closed.
fn log_in_when_free(node: &Chatd, user: &str) -> Bin24 {
    let (client, before) = Bin24::log_in_when_free(addr(node), user);
    assert!(
        before.is_empty(),
        "{user}: unexpected before signing in: {before:?}"
    );
    client
}

/// `to` gets ana's message `id` live (type 0, `body`) and answers it; ana gets the answer.
fn delivered_live(ana: &mut Bin24, to: &mut Bin24, id: u32, body: &str) -> Received {
    let got = to.recv();
    let header = (got.frame_type, got.message_id, &got.src[..], &got.dst[..]);
    assert_eq!(header, (codec::TYPE_MESSAGE, id, "ana", &to.user[..]));
    assert_eq!(got.body, body.as_bytes());
    to.answer(&got);
    let answer = ana.recv();
    let header = (answer.frame_type, answer.message_id, &answer.src[..]);
    assert_eq!(header, (codec::TYPE_ANSWER, id, &to.user[..]));
    assert!(answer.body.starts_with(b"200"), "{answer:?}");
    answer
}

/// The node's location-cache counts: (hits, misses, bounces).
fn locations(node: &mut Chatd) -> (f64, f64, f64) {
    let series =
        |outcome: &str| format!("chatd_cluster_bin24_locations_total{{outcome=\"{outcome}\"}}");
    (
        metric(node, &series("hit")),
        metric(node, &series("miss")),
        metric(node, &series("bounced")),
    )
}

/// A user who logs out of one node and into another gets the next message there, live,
/// though the sender's node still has the old node in its cache: that node sends it back
/// and the sender's node locates it again. Nothing is stored, nothing arrives twice.
#[test]
fn a_bin24_user_who_moved_to_another_node_gets_the_next_message_there() {
    let Some(redis) = Redis::start_durable() else {
        return;
    };
    let flags = ["--bin24-ack-timeout-ms", "300"];
    let mut a = redis.node("node-a", &["--bin24-port"], &flags);
    let b = redis.node("node-b", &["--bin24-port"], &flags);
    let c = redis.node("node-c", &["--bin24-port"], &flags);
    let mut ana = log_in_when_free(&a, "ana");
    let mut bob = log_in_when_free(&b, "bob");
    // Located once (bob on B): the cache has it now, and the next one is sent from it.
    for text in ["one", "two"] {
        let id = ana.send("bob", text);
        delivered_live(&mut ana, &mut bob, id, text);
    }
    assert_eq!(
        locations(&mut a),
        (1.0, 1.0, 0.0),
        "(hits, misses, bounces)"
    );

    // bob leaves B cleanly and logs in on C.
    drop(bob);
    let mut bob = log_in_when_free(&c, "bob");
    let texts = ["three", "four", "five"];
    let ids: Vec<u32> = texts.iter().map(|text| ana.send("bob", text)).collect();
    for (&id, text) in ids.iter().zip(texts) {
        delivered_live(&mut ana, &mut bob, id, text);
    }
    // "three" went to B from the cache and came back; "four" and "five" followed it from
    // the cache (more hits, bounced too) or waited behind its look-up (not counted): every
    // message is a hit or a miss at most once, and only a cached send bounces.
    let (hits, misses, bounces) = locations(&mut a);
    assert!(bounces >= 1.0, "B sent \"three\" back: {bounces}");
    assert!(bounces <= hits - 1.0, "{hits} hits, {bounces} bounces");
    assert!(
        hits + misses <= 5.0,
        "{hits} hits, {misses} misses for 5 messages"
    );
    // Nothing was stored for bob anywhere (a stale cache must not leave it on B).
    assert_eq!(
        redis.query_int(&[b"XLEN", b"switchboard:bin24:bob"]),
        0,
        "stored for bob"
    );
    ana.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut chunk = [0u8; 256];
    match ana.stream.read(&mut chunk) {
        Ok(n) if n > 0 => panic!("ana got more: {:?}", &chunk[..n]),
        _ => {}
    }
}

/// The node that held a name dies: once the sender's node takes it for dead, its cache
/// entries go, so the next message to that name is located afresh (on the node the user
/// logged in to since) instead of waiting out the custody timer for a dead node.
#[test]
fn the_cache_forgets_the_names_of_a_node_taken_for_dead() {
    let Some(redis) = Redis::start_durable() else {
        return;
    };
    // Custody on A for a message sent to a dead node: the ack timeout plus the lease (2.3 s).
    let flags = [
        "--bin24-ack-timeout-ms",
        "300",
        "--cluster-lease-ms",
        "2000",
    ];
    let mut a = redis.node("node-a", &["--bin24-port"], &flags);
    let b = redis.node("node-b", &["--bin24-port"], &flags);
    let c = redis.node("node-c", &["--bin24-port"], &flags);
    let mut ana = log_in_when_free(&a, "ana");
    let mut bob = log_in_when_free(&b, "bob");
    let id = ana.send("bob", "one");
    delivered_live(&mut ana, &mut bob, id, "one");

    // B dies (SIGKILL): bob's key lapses with B's lease, and A takes B for dead.
    drop(b);
    drop(bob);
    let gone = a.stderr.wait_for("is gone (its lease lapsed)");
    assert!(gone.contains("node node-b"), "{gone}");
    let mut bob = log_in_when_free(&c, "bob");
    let sent = Instant::now();
    let id = ana.send("bob", "two");
    delivered_live(&mut ana, &mut bob, id, "two");
    // Well within the custody timer a message sent to B would have waited for.
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    eprintln!("delivered on C {} ms after sending", took.as_millis());
    // Both located in Redis: the first found nothing cached, the second found B's entries
    // gone with B.
    assert_eq!(
        locations(&mut a),
        (0.0, 2.0, 0.0),
        "(hits, misses, bounces)"
    );
}
