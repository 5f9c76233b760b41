//! `--web-receipts-per-sender-max` and `--web-receipts-max` over real nodes and a real
//! `redis-server`: with the recipient's node frozen (no receipt can come), a web sender's
//! `direct`s to it are published and await their receipt up to each bound, and the one over a
//! bound is answered `error busy` at once, not sent. (The bounds' logic with fabricated time:
//! src/hub/claims.rs.)
//!
//! Without `redis-server` on the PATH the test says so and returns; under `CI=true` it fails.

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

/// Long enough that the frozen node is not taken for dead, nor any receipt's deadline
/// reached, while the test runs (the receipts' wait is the ack timeout and the lease).
const LEASE_MS: &str = "20000";

/// Freezes `node` (SIGSTOP) and returns once it is stopped. Dropped, it is killed (SIGKILL).
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
        if stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]) == Some("T") {
            return;
        }
        assert!(Instant::now() < deadline, "chatd {pid} did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The answer to `sender`'s direct `id`: it must be the next answer (`sent` or `error`) the
/// sender gets, so none of its earlier directs was answered (they await their receipt).
fn next_answer(sender: &mut Web, id: u64) -> serde_json::Value {
    loop {
        let message = sender.recv();
        if matches!(message["type"].as_str(), Some("sent" | "error")) {
            assert_eq!(message["id"], id, "an answer to another direct: {message}");
            return message;
        }
    }
}

#[test]
fn web_directs_await_their_receipt_up_to_each_bound_and_one_more_is_busy() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let lease = ["--cluster-lease-ms", LEASE_MS];
    let bounds = [
        "--web-receipts-per-sender-max",
        "2",
        "--web-receipts-max",
        "3",
    ];
    let mut a = redis.node(
        "node-a",
        &["--web-port"],
        &[&lease[..], &bounds[..]].concat(),
    );
    let b = redis.node("node-b", &["--web-port"], &lease);
    let (mut wes, _) = Web::sign_in(addr(&a, "--web-port"), "wes");
    let (mut wen, _) = Web::sign_in(addr(&a, "--web-port"), "wen");
    let (mut wil, _) = Web::sign_in(addr(&b, "--web-port"), "wil");

    // Across while B runs: answered from the receipt, its place freed.
    wes.direct("wil", "hi", 1);
    wil.await_message("direct", |_| true);
    assert_eq!(
        next_answer(&mut wes, 1),
        json!({"type": "sent", "id": 1, "status": "delivered"})
    );

    freeze(&b);
    let busy = |id: u64| json!({"type": "error", "id": id, "reason": "busy"});
    // wes at its bound (2 awaiting), then one over it.
    wes.direct("wil", "one", 2);
    wes.direct("wil", "two", 3);
    wes.direct("wil", "three", 4);
    assert_eq!(next_answer(&mut wes, 4), busy(4));
    // wen takes the node's third place (its bound), then one over it.
    wen.direct("wil", "one", 1);
    wen.direct("wil", "two", 2);
    assert_eq!(next_answer(&mut wen, 2), busy(2));

    let outcome =
        |outcome: &str| format!("chatd_cluster_web_receipts_total{{outcome=\"{outcome}\"}}");
    assert_eq!(metric(&mut a, &outcome("refused")), 2.0);
    assert_eq!(metric(&mut a, &outcome("answered")), 1.0);
    assert_eq!(metric(&mut a, &outcome("expired")), 0.0);
}

/// The bounds need --cluster, and are at least 1.
#[test]
fn the_receipt_bounds_need_the_cluster_and_at_least_one() {
    let chatd = env!("CARGO_BIN_EXE_chatd");
    let refused = |args: &[&str]| {
        let out = Command::new(chatd).args(args).output().expect("run chatd");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let why = refused(&["--web-receipts-max", "5"]);
    assert!(why.contains("--cluster"), "{why}");
    let url = "redis://127.0.0.1:1";
    for flag in ["--web-receipts-max", "--web-receipts-per-sender-max"] {
        let why = refused(&["--cluster", url, flag, "0"]);
        assert!(why.contains(flag) && why.contains("0"), "{why}");
    }
}
