//! A web user's `direct` across cluster nodes gets exactly one answer (issue 21;
//! docs/CLUSTER.md, "Direct messages between protocols across nodes"): real chatd nodes
//! joined to a real `redis-server`.
//!
//! The recipient's node frozen (SIGSTOP) before the message is published: no receipt can
//! come, and the sender's node answers `error no-receipt` within its bound (ack timeout +
//! lease; at once when that node is taken for dead first), and nothing more after it.
//!
//! Without `redis-server` on the PATH the tests say so and return; under `CI=true` they fail.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;
mod redisd;

use std::process::Command;
use std::time::{Duration, Instant};

use chatd::Chatd;
use common::web::Web;
use redisd::{addr, metric, Redis};
use serde_json::json;

const ACK_TIMEOUT_MS: u64 = 300;
const LEASE_MS: u64 = 500;
/// How long after its publication a web direct to another node waits for its receipt.
const RECEIPT_WAIT_MS: u64 = ACK_TIMEOUT_MS + LEASE_MS;
/// What a loaded machine may add to a bound (scheduling, the look-up before publication).
const MARGIN: Duration = Duration::from_millis(1000);

fn web_node(redis: &Redis, name: &str) -> Chatd {
    redis.node(
        name,
        &["--web-port"],
        &[
            "--bin24-ack-timeout-ms",
            &ACK_TIMEOUT_MS.to_string(),
            "--cluster-lease-ms",
            &LEASE_MS.to_string(),
        ],
    )
}

/// Freezes `node` (SIGSTOP) and returns once it is stopped, so that nothing sent afterwards
/// can reach it running. Dropped, it is killed (SIGKILL) as any [`Chatd`].
fn freeze(node: &Chatd) {
    let pid = node.pid().to_string();
    let status = Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -STOP {pid} failed");
    let deadline = Instant::now() + common::WAIT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("chatd's stat");
        // "pid (comm) STATE ...": T is stopped.
        let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        if state == Some("T") {
            return;
        }
        assert!(Instant::now() < deadline, "chatd {pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// wes (web, node A) to wil (web, node B): `sent delivered`. Then B frozen: wes's next
/// `direct` is located and published as before, but no receipt can come: `error no-receipt`
/// within the bound, and nothing more once the deadline has passed too.
#[test]
fn a_web_direct_to_a_frozen_node_is_answered_no_receipt_within_its_bound_and_only_once() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut a = web_node(&redis, "node-a");
    let b = web_node(&redis, "node-b");
    let (mut wes, _) = Web::sign_in(addr(&a, "--web-port"), "wes");
    let (mut wil, _) = Web::sign_in(addr(&b, "--web-port"), "wil");
    let is = |id: u64| move |m: &serde_json::Value| m["id"] == id;

    wes.direct("wil", "hi wil", 1);
    assert_eq!(
        wil.await_message("direct", |_| true),
        json!({"type": "direct", "from": "wes", "protocol": "web", "text": "hi wil"})
    );
    assert_eq!(
        wes.await_message("sent", is(1)),
        json!({"type": "sent", "id": 1, "status": "delivered"})
    );

    freeze(&b);
    let sent = Instant::now();
    wes.direct("wil", "still there?", 2);
    let answer = wes.await_message("error", is(2));
    let waited = sent.elapsed();
    assert_eq!(
        answer,
        json!({"type": "error", "id": 2, "reason": "no-receipt"})
    );
    eprintln!("no-receipt after {waited:?}");
    let bound = Duration::from_millis(RECEIPT_WAIT_MS) + MARGIN;
    assert!(
        waited <= bound,
        "no-receipt after {waited:?}, over {bound:?}"
    );

    // Nothing more, past the deadline too (the recipient's node taken for dead may have
    // answered first): A answers in order, so whatever it sent wes came before the pong.
    std::thread::sleep(
        (sent + Duration::from_millis(RECEIPT_WAIT_MS + 200))
            .saturating_duration_since(Instant::now()),
    );
    wes.send_json(&json!({"type": "ping"}));
    loop {
        let message = wes.recv();
        match message["type"].as_str() {
            Some("pong") => break,
            Some("sent" | "error") => panic!("a second answer: {message}"),
            _ => {}
        }
    }
    let answered =
        |outcome: &str| format!("chatd_cluster_web_receipts_total{{outcome=\"{outcome}\"}}");
    assert_eq!(metric(&mut a, &answered("answered")), 1.0);
    assert_eq!(
        metric(&mut a, &answered("lapsed")) + metric(&mut a, &answered("expired")),
        1.0
    );
}
