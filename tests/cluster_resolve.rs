//! Cluster mode with Redis named by a host name (`--cluster redis://localhost:PORT`), not an
//! IP literal: the reactor's links connect to addresses the lease thread looks up again while
//! a link is down (src/cluster/resolve.rs), the other threads look the name up at each
//! connect. Redis killed and started again, every link finds it again and the lobby spans the
//! nodes again. (That the looked-up addresses reach the links is src/cluster/pubsub.rs's unit
//! test; a name that really moves cannot be made on loopback.)
//!
//! Without `redis-server` on the PATH the test says so and returns; under `CI=true` it fails
//! (`common::cannot_run`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;
mod redisd;

use std::time::{Duration, Instant};

use chatd::Chatd;
use common::Client;
use redisd::{addr, metric, node_at, Redis};

/// Waits (bounded by `WAIT`) until `series` on `node` is `value`.
fn wait_metric(node: &mut Chatd, series: &str, value: f64) {
    let deadline = Instant::now() + common::WAIT;
    while metric(node, series) != value {
        assert!(Instant::now() < deadline, "{series} never {value}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn with_redis_named_by_host_the_nodes_find_it_again_after_a_restart() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let url = format!("redis://localhost:{}", redis.port);
    let lease = ["--cluster-lease-ms", "1000"];
    let mut a = node_at(&url, "node-a", &["--room-port"], &lease);
    let mut b = node_at(&url, "node-b", &["--room-port"], &lease);
    let mut rui = Client::join(addr(&a, "--room-port"), "rui");
    wait_metric(&mut b, "chatd_cluster_events_received_total", 1.0);
    let mut rob = Client::join(addr(&b, "--room-port"), "rob");
    rui.expect(b"b'rob' esta conectado ao chat");

    redis.kill();
    for node in [&mut a, &mut b] {
        node.stderr
            .wait_for("cluster: the subscriber's link to Redis is down");
        assert_eq!(metric(node, "chatd_cluster_redis_link_down"), 1.0);
    }
    redis.start_again();
    // Every link back: the lease thread's, the names thread's, the publisher's, the
    // subscriber's.
    for node in [&mut a, &mut b] {
        node.stderr
            .wait_for("cluster: the subscriber's link to Redis is back after");
        wait_metric(node, "chatd_cluster_redis_link_down", 0.0);
    }
    // Cross-node traffic again, both ways.
    rui.send(b"rui: after\n");
    rui.expect(b"rui: after\n");
    rob.expect(b"rui: after");
    rob.send(b"rob: after\n");
    rob.expect(b"rob: after\n");
    rui.expect(b"rob: after");
    for node in [&mut a, &mut b] {
        assert!(metric(node, "chatd_cluster_redis_link_losses_total") >= 1.0);
    }
}
