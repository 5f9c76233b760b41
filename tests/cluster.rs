//! Cluster mode over a real Redis (issue 20): a `redis-server` this test starts (free port, no
//! persistence, its own directory; killed on drop) and two real `chatd` processes joined to it
//! with `--cluster`. ROOM, MATOU and CCM users on different nodes share one lobby, each in its
//! own wire form, presence included, and nothing arrives twice.
//!
//! Without `redis-server` on the PATH the tests say so and return; under `CI=true` they fail
//! (`common::cannot_run`), and .ci/run installs it.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;
mod redisd;

use std::process::Stdio;
use std::time::Duration;

use chatd::Chatd;
use common::bin24::Bin24;
use common::ccm::{flood_lobby, identify as ccm_identify, text as ccm_text};
use common::matou::Matou;
use common::Client;
use redisd::{addr, metric, Redis};

/// A chatd node serving `flags`' protocols, joined to `redis` as `name`, once its lobby
/// subscription is confirmed.
fn node(redis: &Redis, name: &str, flags: &[&'static str]) -> Chatd {
    node_with(redis, name, flags, &[])
}

/// As [`node`], with `extra` flags.
fn node_with(redis: &Redis, name: &str, flags: &[&'static str], extra: &[&str]) -> Chatd {
    redis.node(name, flags, extra)
}

/// Waits (bounded by `WAIT`) until the node has handed `count` events of other nodes to its
/// lobby.
fn wait_received(node: &mut Chatd, count: f64) {
    let deadline = std::time::Instant::now() + common::WAIT;
    while metric(node, "chatd_cluster_events_received_total") < count {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {count} events received"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ccm_delivered(from: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nSender: {from}\nAddressee: *\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

/// CCM's refusal of a name, with its sentence.
fn ccm_name_taken(sentence: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Error\nReason: name-taken\nContent-Length: {}\n\n{sentence}",
        sentence.len()
    )
    .into_bytes()
}

/// CCM's identification as `name`, on a connection already open.
fn ccm_identity(name: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{name}",
        name.len()
    )
    .into_bytes()
}

/// The sentence of CCM's refusal of a name held on this node or another.
const NAME_IN_USE: &str = "that name is in use";
/// ... and of a name the cluster could not confirm (Redis unreachable).
const NAME_UNCONFIRMED: &str = "the cluster could not confirm that name now; try again";

/// Signs in as `name` on `client`, asking again while the answer is no (another node's
/// release of the name is on its way), bounded by `common::WAIT`; how long it took.
fn matou_login_once_free(client: &mut Matou, name: &str) -> Duration {
    let started = std::time::Instant::now();
    loop {
        client.send(&common::matou::packet(
            1,
            &[&common::matou::string(name.as_bytes())],
        ));
        client.expect_type(2);
        if client.read_exact(1)[0] == 1 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < common::WAIT,
            "{name} was never freed for {}",
            client.name
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every check reads the exact next bytes a client receives, so an event delivered twice
/// shows as unexpected bytes at the next check; the last round ("end") closes every stream.
#[test]
fn room_matou_and_ccm_users_on_two_nodes_share_one_lobby_with_presence_and_nothing_twice() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut a = node(&redis, "node-a", &["--room-port", "--ccm-port"]);
    let mut b = node(&redis, "node-b", &["--room-port", "--matou-port"]);

    // On B: mia (MATOU) and rob (ROOM), who hear of each other locally.
    let mut mia = Matou::sign_in_at(addr(&b, "--matou-port"), "mia");
    let mut rob = Client::join(addr(&b, "--room-port"), "rob");
    mia.expect_notify(3, "rob");
    // A has their arrivals before anyone is in its lobby: nobody there hears of them.
    wait_received(&mut a, 2.0);

    // On A: rui (ROOM), whose arrival B's lobby members hear of through Redis, ROOM's own
    // protocol (rob) included.
    let mut rui = Client::join(addr(&a, "--room-port"), "rui");
    mia.expect_notify(3, "rui");
    rob.expect(b"b'rui' esta conectado ao chat");
    let (mut cid, cid_token) = ccm_identify(addr(&a, "--ccm-port"), "cid");
    rui.expect(b"b'cid' esta conectado ao chat");
    mia.expect_notify(3, "cid");
    rob.expect(b"b'cid' esta conectado ao chat");

    // ROOM on A: echoed by ROOM on A; N and T to CCM on A, MATOU and ROOM on B.
    rui.send(b"rui: hello there\n");
    rui.expect(b"rui: hello there\n");
    cid.expect(&ccm_delivered("rui", "hello there"));
    mia.expect_broadcast("rui", "hello there");
    rob.expect(b"rui: hello there");

    // MATOU on B, three in a row: each node receives them in the order they were said.
    for text in ["oi 1", "oi 2", "oi 3"] {
        mia.say(text);
    }
    for text in ["oi 1", "oi 2", "oi 3"] {
        mia.expect_broadcast("mia", text);
        rob.expect(format!("mia: {text}").as_bytes());
        rui.expect(format!("mia: {text}").as_bytes());
        cid.expect(&ccm_delivered("mia", text));
    }

    // CCM `*` on A: not echoed to its sender; ROOM on A, MATOU and ROOM on B.
    cid.send(&ccm_text(&cid_token, "*", "ola"));
    rui.expect(b"cid: ola");
    mia.expect_broadcast("cid", "ola");
    rob.expect(b"cid: ola");

    // ROOM on B: the last round; the very next bytes everyone receives are this line.
    rob.send(b"rob: end\n");
    rob.expect(b"rob: end\n");
    mia.expect_broadcast("rob", "end");
    rui.expect(b"rob: end");
    cid.expect(&ccm_delivered("rob", "end"));

    // Leaving: cid (CCM on A) is announced on both nodes; then rui (ROOM on A).
    drop(cid);
    rui.expect(b"b'cid' acabou de sair do chat!");
    mia.expect_notify(16, "cid");
    rob.expect(b"b'cid' acabou de sair do chat!");
    drop(rui);
    mia.expect_notify(16, "rui");
    rob.expect(b"b'rui' acabou de sair do chat!");

    // Nothing else arrived: no event was delivered twice, nor echoed back to its node.
    rob.expect_nothing_for(Duration::from_millis(200));
    mia.expect_nothing_for(Duration::from_millis(50));

    // Each node handed the other's six events to its lobby (A: rui and cid entering, their
    // two messages, their leaving; B: mia and rob entering, mia's three lines, rob's), and
    // none twice; every message on the channel decoded.
    for node in [&mut a, &mut b] {
        assert_eq!(metric(node, "chatd_cluster_events_received_total"), 6.0);
        assert_eq!(metric(node, "chatd_cluster_events_duplicate_total"), 0.0);
        assert_eq!(metric(node, "chatd_cluster_messages_malformed_total"), 0.0);
        assert_eq!(metric(node, "chatd_cluster_redis_link_down"), 0.0);
        assert_eq!(metric(node, "chatd_cluster_nodes_lapsed_total"), 0.0);
    }
    // B's users are still there for A; A's all left.
    assert_eq!(metric(&mut a, "chatd_cluster_remote_lobby_members"), 2.0);
    assert_eq!(metric(&mut b, "chatd_cluster_remote_lobby_members"), 0.0);
}

/// Redis killed (SIGKILL) and started again on its port: each node says its link is down,
/// keeps serving its local users, reconnects and resubscribes on its own, says so, and
/// cross-node traffic resumes.
#[test]
fn after_redis_is_killed_and_restarted_the_nodes_reconnect_and_the_lobby_spans_them_again() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let mut a = node(&redis, "node-a", &["--room-port"]);
    let mut b = node(&redis, "node-b", &["--room-port"]);
    let mut rui = Client::join(addr(&a, "--room-port"), "rui");
    wait_received(&mut b, 1.0);
    let mut rob = Client::join(addr(&b, "--room-port"), "rob");
    rui.expect(b"b'rob' esta conectado ao chat");
    rui.send(b"rui: before\n");
    rui.expect(b"rui: before\n");
    rob.expect(b"rui: before");

    redis.kill();
    for node in [&mut a, &mut b] {
        node.stderr
            .wait_for("cluster: the subscriber's link to Redis is down");
        redisd::wait_link_down(node);
    }
    // Local users are served meanwhile.
    rob.send(b"rob: alone\n");
    rob.expect(b"rob: alone\n");

    redis.start_again();
    for node in [&mut a, &mut b] {
        node.stderr
            .wait_for("cluster: the subscriber's link to Redis is back after");
        // A's publisher comes back on its own reconnect delay, in no order with the
        // subscribers: down longer than half a lease (its delay doubling past the outage),
        // it drops what it is given until it is back, "rui: after" included.
        redisd::wait_links_up(node);
    }
    // rob's line said while Redis was gone waits on B's publishing link for at most half a
    // lease and goes out when that link is back, which may be before or after A's
    // subscription is back: it reaches rui at most once, before anything rob says later,
    // anywhere among rui's own lines, or not at all.
    let mut late: Option<&[u8]> = Some(b"rob: alone");
    rui.send(b"rui: after\n");
    rui.read_through_skipping(b"rui: after\n", &mut late);
    rob.expect(b"rui: after");
    rob.send(b"rob: after\n");
    rob.expect(b"rob: after\n");
    rui.read_through_skipping(b"rob: after", &mut late);
    assert!(metric(&mut a, "chatd_cluster_redis_link_losses_total") >= 1.0);
}

/// Presence missed while Redis was gone (SIGKILL, then started again): a ROOM user who left
/// node B and another ROOM user who came to it meanwhile reach Redis nowhere (pub/sub keeps
/// nothing, and B's publisher drops what it cannot send). Once the links are back, the nodes
/// exchange their lobby rosters, and A's ROOM user is told the one left and the other came,
/// once each, though several rosters cross (each node asks when its subscriber and when its
/// publisher is back, and answers every ask).
#[test]
fn presence_missed_while_redis_was_gone_is_announced_from_the_rosters_once() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let lease = ["--cluster-lease-ms", "1000"];
    let mut a = node_with(&redis, "node-a", &["--room-port"], &lease);
    let mut b = node_with(&redis, "node-b", &["--room-port", "--matou-port"], &lease);
    let mut rui = Client::join(addr(&a, "--room-port"), "rui");
    wait_received(&mut b, 1.0);
    let bob = Client::join(addr(&b, "--room-port"), "bob");
    rui.expect(b"b'bob' esta conectado ao chat");

    redis.kill();
    for node in [&mut a, &mut b] {
        node.stderr
            .wait_for("cluster: the subscriber's link to Redis is down");
    }
    drop(bob);
    let room_members = "chatd_switchboard_lobby_members{protocol=\"room\"}";
    let deadline = std::time::Instant::now() + common::WAIT;
    while metric(&mut b, room_members) > 0.0 {
        assert!(std::time::Instant::now() < deadline, "bob never left B");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A ROOM user: a name (MATOU, CCM, BIN24) cannot be claimed while Redis is gone.
    let mut mia = Client::join(addr(&b, "--room-port"), "mia");
    // B's events wait for its publishing link at most half a lease of the outage, then are
    // dropped: bob's leaving and mia's arrival reach A only through B's roster.
    let dropped = "chatd_cluster_events_publish_dropped_total";
    let deadline = std::time::Instant::now() + common::WAIT;
    while metric(&mut b, dropped) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "B's waiting events never expired"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    redis.start_again();
    // The roster's changes, each once (in either order).
    let (left, came): (&[u8], &[u8]) = (
        b"b'bob' acabou de sair do chat!",
        b"b'mia' esta conectado ao chat",
    );
    let heard = rui.read_through(came);
    if heard == came {
        rui.expect(left);
    } else {
        assert_eq!(
            String::from_utf8_lossy(&heard),
            String::from_utf8_lossy(&[left, came].concat())
        );
    }
    a.stderr.wait_for("cluster: node node-b's roster brought ");
    assert!(metric(&mut a, "chatd_cluster_roster_presences_total") >= 1.0);
    // Nothing twice, while the rosters of both nodes' asks cross (two leases).
    rui.expect_nothing_for(Duration::from_millis(2000));
    assert_eq!(metric(&mut a, "chatd_cluster_remote_lobby_members"), 1.0);
    // B had missed nothing of A: its newcomer is told nothing.
    mia.expect_nothing_for(Duration::from_millis(50));
    // And the lobby spans both again.
    mia.send(b"back");
    rui.expect(b"mia: back");
}

/// A node killed with SIGKILL while a ROOM and a MATOU user are on it: its liveness key is
/// not renewed, and within the lease the other node's ROOM and MATOU users are told each of
/// them left, once; that node goes on serving.
#[test]
fn when_a_node_is_killed_the_other_node_announces_its_users_gone_within_the_lease() {
    let Some(redis) = Redis::start() else {
        return;
    };
    const LEASE_MS: u64 = 500;
    let lease = ["--cluster-lease-ms", "500"];
    let flags = &["--room-port", "--matou-port"];
    let mut a = node_with(&redis, "node-a", flags, &lease);
    let b = node_with(&redis, "node-b", flags, &lease);
    let mut rui = Client::join(addr(&a, "--room-port"), "rui");
    let mut mae = Matou::sign_in_at(addr(&a, "--matou-port"), "mae");
    rui.expect(b"b'mae' esta conectado ao chat");
    let rob = Client::join(addr(&b, "--room-port"), "rob");
    let mia = Matou::sign_in_at(addr(&b, "--matou-port"), "mia");
    rui.expect(b"b'rob' esta conectado ao chat");
    rui.expect(b"b'mia' esta conectado ao chat");
    mae.expect_notify(3, "rob");
    mae.expect_notify(3, "mia");
    assert_eq!(metric(&mut a, "chatd_cluster_remote_lobby_members"), 2.0);

    // Dropping a Chatd kills it with SIGKILL (Child::kill): no goodbye reaches Redis.
    drop(b);
    let killed = std::time::Instant::now();
    rui.expect(b"b'rob' acabou de sair do chat!");
    rui.expect(b"b'mia' acabou de sair do chat!");
    mae.expect_notify(16, "rob");
    mae.expect_notify(16, "mia");
    let took = killed.elapsed();
    eprintln!("leavings announced {} ms after the kill", took.as_millis());
    // B's key expires at most three quarters of a lease after its last renewal, which came
    // before the kill, and A lists the keys every quarter lease: the listing that finds it
    // gone is due within the lease (about 470 ms here). A listing may wait behind one publish
    // in progress, which the command deadline (a quarter lease) bounds: docs/CLUSTER.md
    // promises a lease and a quarter, no more.
    let promised = Duration::from_millis(LEASE_MS + LEASE_MS / 4);
    assert!(
        took < promised,
        "announced {} ms after the kill, promised within {} ms",
        took.as_millis(),
        promised.as_millis()
    );
    a.stderr.wait_for("cluster: node node-b (incarnation ");
    a.stderr
        .wait_for("is gone (its lease lapsed): 2 lobby members announced gone");
    assert_eq!(metric(&mut a, "chatd_cluster_nodes_lapsed_total"), 1.0);
    assert_eq!(metric(&mut a, "chatd_cluster_remote_lobby_members"), 0.0);

    // A goes on serving, and each leaving was announced once.
    rui.send(b"rui: still here\n");
    rui.expect(b"rui: still here\n");
    mae.expect_broadcast("rui", "still here");
    rui.expect_nothing_for(Duration::from_millis(2 * LEASE_MS));
    mae.expect_nothing_for(Duration::from_millis(50));
    drop((rob, mia));
}

/// A node killed and started again under the same name, long before its lease could lapse:
/// its first event is from a new incarnation, which ends the old one, so the other node's
/// users are told the old node's users left, then hear of the new node's users.
#[test]
fn a_node_restarted_under_its_name_is_a_new_node_and_its_old_users_are_announced_gone() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // A lease far longer than the test: only the new incarnation can end the old one.
    let lease = ["--cluster-lease-ms", "600000"];
    let mut a = node_with(&redis, "node-a", &["--room-port"], &lease);
    let b = node_with(&redis, "node-b", &["--room-port"], &lease);
    let mut rui = Client::join(addr(&a, "--room-port"), "rui");
    let rob = Client::join(addr(&b, "--room-port"), "rob");
    rui.expect(b"b'rob' esta conectado ao chat");

    // SIGKILL (Child::kill) before rob's connection closes (no leave reaches Redis), then
    // node-b again: a new process, a new incarnation.
    drop(b);
    drop(rob);
    let b = node_with(&redis, "node-b", &["--room-port"], &lease);
    let _neo = Client::join(addr(&b, "--room-port"), "neo");
    rui.expect(b"b'rob' acabou de sair do chat!");
    rui.expect(b"b'neo' esta conectado ao chat");
    a.stderr
        .wait_for("is gone (it restarted): 1 lobby members announced gone");
    assert_eq!(metric(&mut a, "chatd_cluster_nodes_lapsed_total"), 1.0);
    assert_eq!(metric(&mut a, "chatd_cluster_remote_lobby_members"), 1.0);
    rui.expect_nothing_for(Duration::from_millis(200));
}

/// Redis frozen (SIGSTOP): no error reaches the nodes, only silence. Each node's subscriber
/// PINGs a quiet Redis and takes no answer within its deadline (a quarter lease here) for a
/// lost link: it logs it (with how long Redis has been silent), the gauge says so, and local
/// users are served. After SIGCONT both resubscribe, the lobby spans them again, and nobody
/// was taken for gone: the keys that lapsed while Redis was frozen are no news until every
/// node had two leases to set its key again.
#[test]
fn a_frozen_redis_is_noticed_local_users_are_served_and_the_nodes_resume_after_it_thaws() {
    let Some(redis) = Redis::start() else {
        return;
    };
    const LEASE_MS: u64 = 500;
    let lease = ["--cluster-lease-ms", "500"];
    let mut a = node_with(&redis, "node-a", &["--room-port"], &lease);
    let mut b = node_with(&redis, "node-b", &["--room-port"], &lease);
    let mut rui = Client::join(addr(&a, "--room-port"), "rui");
    wait_received(&mut b, 1.0);
    let mut rob = Client::join(addr(&b, "--room-port"), "rob");
    rui.expect(b"b'rob' esta conectado ao chat");

    redis.signal("-STOP");
    for node in [&mut a, &mut b] {
        node.stderr.wait_for(
            "cluster: the subscriber's link to Redis is down (no answer to PING within 125 ms",
        );
        redisd::wait_link_down(node);
    }
    // Local users are served meanwhile; the reactor never waits for Redis.
    rob.send(b"rob: alone\n");
    rob.expect(b"rob: alone\n");
    rui.send(b"rui: alone\n");
    rui.expect(b"rui: alone\n");

    redis.signal("-CONT");
    for node in [&mut a, &mut b] {
        node.stderr
            .wait_for("cluster: the subscriber's link to Redis is back after");
        // A publisher lost to its unanswered "alone" comes back on its own reconnect delay,
        // in no order with the subscribers; stale (down half a lease: a reconnect made while
        // Redis was still frozen doubles the delay past it), it drops what it is given until
        // it is back, "after" included.
        redisd::wait_links_up(node);
    }
    // A line said while Redis was frozen may cross after it thawed, or not (it is lost, and
    // counted); nothing else may come (a leave notice would).
    let mut late_at_rob = Some(&b"rui: alone"[..]);
    let mut late_at_rui = Some(&b"rob: alone"[..]);
    rob.send(b"rob: after\n");
    rob.read_through_skipping(b"rob: after\n", &mut late_at_rob);
    rui.read_through_skipping(b"rob: after", &mut late_at_rui);
    rui.send(b"rui: after\n");
    rui.read_through_skipping(b"rui: after\n", &mut late_at_rui);
    rob.read_through_skipping(b"rui: after", &mut late_at_rob);
    // Past the grace after the link's return: still nobody announced gone.
    rui.expect_nothing_for(Duration::from_millis(4 * LEASE_MS));
    rob.expect_nothing_for(Duration::from_millis(50));
    for node in [&mut a, &mut b] {
        assert_eq!(metric(node, "chatd_cluster_redis_link_down"), 0.0);
        assert_eq!(metric(node, "chatd_cluster_nodes_lapsed_total"), 0.0);
    }
}

/// Redis unreachable at start: a clear error and exit status 1, before listening.
#[test]
fn an_unreachable_redis_at_start_is_a_clear_error_and_exit_status_1() {
    // A port nothing listens on: taken and released.
    let port = chatd::free_tcp_port();
    let output = chatd::command(&[("--room-port", chatd::free_tcp_port())])
        .args(["--cluster", &format!("redis://127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run chatd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("cannot join the cluster: redis://127.0.0.1:"),
        "stderr: {stderr}"
    );
}

/// A bad URL, node name or lease is refused at start.
#[test]
fn a_bad_cluster_url_or_node_name_is_refused() {
    for (args, want) in [
        (vec!["--cluster", "http://127.0.0.1:1"], "--cluster:"),
        (
            vec![
                "--cluster",
                "redis://127.0.0.1:1",
                "--node-name",
                &"n".repeat(65),
            ],
            "--node-name:",
        ),
        (
            vec!["--cluster", "redis://127.0.0.1:1", "--isolate"],
            "--isolate",
        ),
        (
            vec![
                "--cluster",
                "redis://127.0.0.1:1",
                "--cluster-lease-ms",
                "3",
            ],
            "--cluster-lease-ms: at least 4 ms, not 3",
        ),
    ] {
        let output = chatd::command(&[("--room-port", chatd::free_tcp_port())])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .expect("run chatd");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// Rule 1 across nodes: a name held on node A (in MATOU, CCM or BIN24) is refused on node B in
/// each protocol's own way: MATOU CONNECT_RESPONSE 0 and CCM `name-taken` (both connections
/// stay open for another try), BIN24 closes. A name freed on A (its holder left) can be taken
/// on B.
#[test]
fn a_name_held_on_one_node_is_refused_on_another_in_each_protocols_own_way() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let flags = &["--ccm-port", "--matou-port", "--bin24-port"];
    let a = node(&redis, "node-a", flags);
    let mut b = node(&redis, "node-b", flags);

    let mia = Matou::sign_in_at(addr(&a, "--matou-port"), "mia");
    let (cid, _) = ccm_identify(addr(&a, "--ccm-port"), "cid");
    let mut bob = Bin24::connect(addr(&a, "--bin24-port"), "bob");
    assert!(bob.register_and_wait().is_empty());

    let mut matou_b = Matou::connect_to(addr(&b, "--matou-port"), "matou on B");
    let mut ccm_b = Client::connect(addr(&b, "--ccm-port"), "ccm on B");
    for name in ["mia", "cid", "bob"] {
        matou_b.login(name, false);
        ccm_b.send(&ccm_identity(name));
        ccm_b.expect(&ccm_name_taken(NAME_IN_USE));
        let mut bin24_b = Bin24::connect(addr(&b, "--bin24-port"), name);
        bin24_b.register();
        assert!(bin24_b.expect_closed().is_empty(), "{name}: BIN24 on B");
    }

    // The holders leave A: their names free (A deletes its keys), and B grants them.
    drop((mia, cid, bob));
    let took = matou_login_once_free(&mut matou_b, "mia");
    eprintln!("mia free on B {} ms after leaving A", took.as_millis());
    matou_b.expect_notify(3, "mia");
    let mut tries = 0;
    loop {
        ccm_b.send(&ccm_identity("cid"));
        let head = ccm_b.read_through(b"\n");
        if head == b"CCM\\1.0 Identity\n" {
            break;
        }
        ccm_b.expect(&ccm_name_taken(NAME_IN_USE)[head.len()..]);
        tries += 1;
        assert!(tries < 1000, "cid never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    // bob's release is A's own, in no order with mia's and cid's (A may see his close in
    // another turn): his name is free on B once it reaches Redis, which B's grant of cid does
    // not prove. Until then B refuses it (BIN24 closes), and a refusal is one more claim taken.
    let (_bob_b, kept) = Bin24::log_in_when_free(addr(&b, "--bin24-port"), "bob");
    assert!(kept.is_empty(), "{kept:?}");
    // The claims B sent: the nine refused (three names in three protocols) and the three
    // granted at last, at least.
    assert!(metric(&mut b, "chatd_cluster_name_claims_taken_total") >= 9.0);
    assert!(metric(&mut b, "chatd_cluster_name_claims_granted_total") >= 3.0);
    assert_eq!(
        metric(&mut b, "chatd_cluster_name_claims_unconfirmed_total"),
        0.0
    );
}

/// Two nodes claim one name at the same moment, many times: exactly one of each pair gets it.
#[test]
fn of_two_nodes_claiming_one_name_at_once_exactly_one_gets_it() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", &["--matou-port"]);
    let b = node(&redis, "node-b", &["--matou-port"]);
    for round in 0..20 {
        let name = format!("race{round}");
        let mut at_a = Matou::connect_to(addr(&a, "--matou-port"), "at A");
        let mut at_b = Matou::connect_to(addr(&b, "--matou-port"), "at B");
        let request = common::matou::packet(1, &[&common::matou::string(name.as_bytes())]);
        at_a.send(&request);
        at_b.send(&request);
        let mut granted = 0;
        for client in [&mut at_a, &mut at_b] {
            client.expect_type(2);
            granted += u32::from(client.read_exact(1)[0]);
        }
        assert_eq!(granted, 1, "{name}: granted {granted} times");
    }
}

/// A node killed with SIGKILL holds names it never releases: their keys lapse within the
/// lease (they are renewed every quarter lease and set to expire after three quarters), and
/// another node grants them then, not before.
#[test]
fn the_names_of_a_killed_node_free_within_the_lease() {
    let Some(redis) = Redis::start() else {
        return;
    };
    const LEASE_MS: u64 = 500;
    let lease = ["--cluster-lease-ms", "500"];
    let flags = &["--ccm-port", "--matou-port"];
    let a = node_with(&redis, "node-a", flags, &lease);
    let b = node_with(&redis, "node-b", flags, &lease);
    let _mae = Matou::sign_in_at(addr(&a, "--matou-port"), "mae");
    let _cat = ccm_identify(addr(&a, "--ccm-port"), "cat");
    let mut matou_b = Matou::connect_to(addr(&b, "--matou-port"), "matou on B");
    // Held while A lives, for longer than a lease (A renews them).
    matou_b.login("mae", false);
    std::thread::sleep(Duration::from_millis(LEASE_MS));
    matou_b.login("mae", false);

    drop(a);
    let took = matou_login_once_free(&mut matou_b, "mae");
    eprintln!(
        "a killed node's name free on another {} ms after the kill (lease {LEASE_MS} ms)",
        took.as_millis()
    );
    // The names' keys expire at most three quarters of a lease after A's last renewal (before
    // the kill); the claim that finds one free takes at most the command deadline (a quarter
    // lease), and the asking again is 5 ms apart: within the lease, as docs/CLUSTER.md says.
    assert!(
        took < Duration::from_millis(LEASE_MS),
        "free {} ms after the kill, promised within the lease ({LEASE_MS} ms)",
        took.as_millis()
    );
    let (_cat_b, _) = ccm_identify(addr(&b, "--ccm-port"), "cat");
}

/// Redis frozen (SIGSTOP) while a name is claimed: the claim is refused within its bound
/// (the names thread's command deadline, a quarter lease), in each protocol's refusal form,
/// CCM's saying the cluster could not confirm it; meanwhile the node serves its other users
/// at once. After SIGCONT the name is granted.
#[test]
fn a_claim_while_redis_is_frozen_is_refused_in_bounded_time_and_the_node_keeps_serving() {
    let Some(redis) = Redis::start() else {
        return;
    };
    const LEASE_MS: u64 = 500;
    let lease = ["--cluster-lease-ms", "500"];
    let mut a = node_with(
        &redis,
        "node-a",
        &["--room-port", "--ccm-port", "--matou-port"],
        &lease,
    );
    let mut rui = Client::join(addr(&a, "--room-port"), "rui");
    let mut mia = Matou::connect_to(addr(&a, "--matou-port"), "mia");
    let mut cid = Client::connect(addr(&a, "--ccm-port"), "cid");

    redis.signal("-STOP");
    let asked = std::time::Instant::now();
    mia.send(&common::matou::packet(1, &[&common::matou::string(b"mia")]));
    cid.send(&ccm_identity("cid"));
    // The ROOM user is served while the claims wait.
    rui.send(b"rui: still served\n");
    rui.expect(b"rui: still served\n");
    let served = asked.elapsed();
    mia.expect_type(2);
    assert_eq!(mia.read_exact(1)[0], 0, "mia refused while Redis is frozen");
    let refused = asked.elapsed();
    cid.expect(&ccm_name_taken(NAME_UNCONFIRMED));
    eprintln!(
        "Redis frozen: ROOM served after {} ms, MATOU claim refused after {} ms (lease {LEASE_MS} ms)",
        served.as_millis(),
        refused.as_millis()
    );
    assert!(served < refused, "the ROOM user waited for the claim");
    // The command deadline (a quarter lease) finds the frozen Redis; the claim's own deadline
    // (the lease) is only the backstop for anything else, so a refusal at or past the lease
    // would mean the command deadline did not work.
    assert!(
        refused < Duration::from_millis(LEASE_MS),
        "refused after {} ms: not by the command deadline ({} ms)",
        refused.as_millis(),
        LEASE_MS / 4
    );
    a.stderr
        .wait_for("cluster: the names thread's link to Redis is down");
    assert!(metric(&mut a, "chatd_cluster_name_claims_unconfirmed_total") >= 2.0);

    redis.signal("-CONT");
    let took = matou_login_once_free(&mut mia, "mia");
    eprintln!("mia granted {} ms after Redis thawed", took.as_millis());
    mia.expect_notify(3, "mia");
    cid.send(&ccm_identity("cid"));
    cid.expect(b"CCM\\1.0 Identity\nUser: ");
}

/// Redis killed and started again, empty: each node sets its names again when its link is
/// back (before any new claim), so a name held on A stays refused on B.
#[test]
fn after_redis_restarts_empty_the_nodes_set_their_names_again() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let lease = ["--cluster-lease-ms", "500"];
    let flags = &["--ccm-port", "--matou-port"];
    let mut a = node_with(&redis, "node-a", flags, &lease);
    let mut b = node_with(&redis, "node-b", flags, &lease);
    let _mia = Matou::sign_in_at(addr(&a, "--matou-port"), "mia");
    let mut ccm_b = Client::connect(addr(&b, "--ccm-port"), "ccm on B");
    ccm_b.send(&ccm_identity("mia"));
    ccm_b.expect(&ccm_name_taken(NAME_IN_USE));

    redis.kill();
    a.stderr
        .wait_for("cluster: the names thread's link to Redis is down");
    redis.start_again();
    a.stderr
        .wait_for("cluster: the names thread's link to Redis is back after");
    // Those two lines may be older than the kill (a renewal over its deadline, a quarter lease
    // here, on a loaded machine, is a lost link too), so waiting for them may not wait at
    // all: B's claim is refused once A's key for mia is back (seen: granted).
    redis.wait_key(b"switchboard:name:mia");
    // B's link may still be the old one: its first command finds it broken and retries on a
    // new connection at once, so the answer is Redis's, not "could not confirm".
    ccm_b.send(&ccm_identity("mia"));
    ccm_b.expect(&ccm_name_taken(NAME_IN_USE));
    assert_eq!(
        metric(&mut b, "chatd_cluster_name_claims_unconfirmed_total"),
        0.0
    );
}

/// CCM's addressed delivery across nodes: a `Text` to a CCM user on the other node reaches it
/// in CCM's form, in the order sent, each once; the answer comes back the same way; a name no
/// node holds is `unknown-addressee`, as on one node.
#[test]
fn a_ccm_message_to_a_user_on_another_node_is_delivered_in_order_and_nobody_is_unknown() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut a = node(&redis, "node-a", &["--ccm-port"]);
    let mut b = node(&redis, "node-b", &["--ccm-port", "--matou-port"]);
    let (mut cid, cid_token) = ccm_identify(addr(&a, "--ccm-port"), "cid");
    // cid's arrival reaches B before mia signs in there: otherwise mia is told of it.
    wait_received(&mut b, 1.0);
    let (mut cat, cat_token) = ccm_identify(addr(&b, "--ccm-port"), "cat");
    let mut mia = Matou::sign_in_at(addr(&b, "--matou-port"), "mia");

    for body in ["one", "two", "three"] {
        cid.send(&ccm_text(&cid_token, "cat", body));
    }
    for body in ["one", "two", "three"] {
        cat.expect(&ccm_addressed("cid", "cat", body));
    }
    cat.send(&ccm_text(&cat_token, "cid", "back"));
    cid.expect(&ccm_addressed("cat", "cid", "back"));

    // Nobody, and a MATOU user on B (CCM does not cross to MATOU, as on one node): both
    // unknown, in order.
    for to in ["nobody", "mia"] {
        cid.send(&ccm_text(&cid_token, to, "lost?"));
        cid.expect(b"CCM\\1.0 Error\nReason: unknown-addressee\n");
        cid.read_through(b"no user has that name");
    }
    mia.expect_nothing_for(Duration::from_millis(50));
    cat.expect_nothing_for(Duration::from_millis(200));
    cid.expect_nothing_for(Duration::from_millis(50));
    assert_eq!(
        metric(&mut a, "chatd_cluster_messages_malformed_total"),
        0.0
    );
}

fn ccm_addressed(from: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nSender: {from}\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A name this node holds that another node holds when this node renews it (this node's key
/// lapsed while it was cut off, and the other node was granted the name meanwhile, as written
/// into Redis here): Redis's holder wins, the holder here is closed, and this node does not
/// touch the other node's key.
#[test]
fn a_name_another_node_took_while_this_one_was_cut_off_closes_its_holder_here() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut a = node_with(
        &redis,
        "node-a",
        &["--matou-port"],
        &["--cluster-lease-ms", "500"],
    );
    let mut mia = Matou::sign_in_at(addr(&a, "--matou-port"), "mia");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let other = "m:00000000000000ff:node-x";
    redis::cmd("SET")
        .arg("switchboard:name:mia")
        .arg(other)
        .query::<()>(&mut conn)
        .unwrap();
    // A's next renewal (a quarter lease) finds it.
    mia.expect_closed();
    a.stderr
        .wait_for("cluster: the name \"mia\" is another node's now");
    assert_eq!(metric(&mut a, "chatd_cluster_names_lost_total"), 1.0);
    assert_eq!(metric(&mut a, "chatd_cluster_names_held"), 0.0);
    let value: String = redis::cmd("GET")
        .arg("switchboard:name:mia")
        .query(&mut conn)
        .unwrap();
    assert_eq!(value, other);
    // The name is the other node's: refused here now.
    let mut again = Matou::connect_to(addr(&a, "--matou-port"), "mia again");
    again.login("mia", false);
}

/// MATOU's brokered private link between users on two nodes: the request reaches Dst on B,
/// the acceptance gives Src on A Dst's real address, Src's ports give Dst Src's address and
/// ports; a name no MATOU user holds on any node is ERROR 4 (unknown user), as on one node
/// (a CCM user's name too: private links need two MATOU users).
#[test]
fn a_matou_private_link_is_brokered_between_users_on_two_nodes() {
    use common::matou::{int, packet, string};
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", &["--matou-port"]);
    let mut b = node(&redis, "node-b", &["--matou-port", "--ccm-port"]);
    let mut mia = Matou::sign_in_at(addr(&a, "--matou-port"), "mia");
    // mia's arrival reaches B before max signs in there: otherwise max is told of it too.
    wait_received(&mut b, 1.0);
    let mut max = Matou::sign_in_at(addr(&b, "--matou-port"), "max");
    mia.expect_notify(3, "max");
    let _cat = ccm_identify(addr(&b, "--ccm-port"), "cat");
    max.expect_notify(3, "cat");
    mia.expect_notify(3, "cat");

    mia.send(&packet(6, &[&string(b"max")]));
    max.expect_notify(7, "mia");
    max.send(&packet(8, &[&string(b"mia")]));
    mia.expect_type(9);
    assert_eq!(mia.string(), "max");
    assert_eq!(mia.int(), 4);
    assert_eq!(mia.read_exact(4), [127, 0, 0, 1]);
    mia.send(&packet(10, &[&string(b"max"), &int(5000), &int(5001)]));
    max.expect_type(11);
    assert_eq!(max.string(), "mia");
    assert_eq!(max.int(), 4);
    assert_eq!(max.read_exact(4), [127, 0, 0, 1]);
    assert_eq!((max.int(), max.int()), (5000, 5001));

    // The link is brokered: its ports again are refused (ERROR 7), as on one node.
    mia.send(&packet(10, &[&string(b"max"), &int(5000), &int(5001)]));
    assert_eq!(mia.expect_error(), 7);
    // Nobody, and a CCM user on B: unknown user.
    for to in [&b"nobody"[..], b"cat"] {
        mia.send(&packet(6, &[&string(to)]));
        assert_eq!(mia.expect_error(), 4);
    }
    // An acceptance nobody asked for: ERROR 6, as on one node.
    max.send(&packet(8, &[&string(b"mia")]));
    assert_eq!(max.expect_error(), 6);
    max.expect_nothing_for(Duration::from_millis(100));
    mia.expect_nothing_for(Duration::from_millis(50));
}

/// While Redis is frozen nothing is published, and what waits for it is bounded in bytes,
/// not only in events: a CCM `*` flood of 1 MiB messages (160 MiB in all) leaves chatd's
/// memory well under what it sent, the excess is dropped and counted, and the sender is
/// still served.
#[test]
fn events_waiting_for_a_frozen_redis_are_bounded_in_bytes() {
    const MESSAGES: usize = 160;
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut a = node_with(
        &redis,
        "a",
        &["--ccm-port"],
        &[
            &chatd::CCM_UNTHROTTLED_FLAGS[..],
            // Long: the node must not take Redis's silence for its own death meanwhile.
            &["--cluster-lease-ms", "60000"],
        ]
        .concat(),
    );
    let (mut sender, token) = ccm_identify(addr(&a, "--ccm-port"), "flooder");
    let before_kib = a.rss_kib();
    redis.signal("-STOP");
    let body = "f".repeat(1024 * 1024 - 64);
    flood_lobby(&mut sender, &token, (0..MESSAGES).map(|_| body.as_str()));
    let grew_kib = a.rss_kib().saturating_sub(before_kib);
    let dropped = metric(&mut a, "chatd_cluster_events_publish_dropped_total");
    redis.signal("-CONT");
    eprintln!("chatd grew by {grew_kib} KiB; {dropped} events dropped");
    // 64 MiB may wait for the publisher and 4 MiB be in its hands; the flood was 160 MiB.
    assert!(
        grew_kib < 100 * 1024,
        "chatd grew by {grew_kib} KiB while Redis was frozen"
    );
    assert!(
        dropped > 0.0,
        "nothing was dropped: was anything published?"
    );
}

/// BIN24 across nodes (issue 21, first slice): ana on node A sends three messages to bob on
/// node B, who gets them in order, each once and verbatim, and answers; ana gets each answer
/// verbatim. A message bob does not answer within the ack timeout (300 ms here) closes bob on
/// B (rule 6) and ana gets "300"; the frame is kept in B's store and reaches bob (type 2) when
/// he logs in there again, and his answer to it reaches ana on A. A name no node holds:
/// stored on A, "300".
#[test]
fn a_bin24_message_to_a_user_on_another_node_is_answered_and_kept_when_unanswered() {
    use switchboard::protocol::bin24::codec;
    let Some(redis) = Redis::start() else {
        return;
    };
    let timeout = ["--bin24-ack-timeout-ms", "300"];
    let mut a = node_with(&redis, "node-a", &["--bin24-port"], &timeout);
    let mut b = node_with(&redis, "node-b", &["--bin24-port"], &timeout);
    let mut ana = Bin24::connect(addr(&a, "--bin24-port"), "ana");
    assert!(ana.register_and_wait().is_empty());
    let mut bob = Bin24::connect(addr(&b, "--bin24-port"), "bob");
    assert!(bob.register_and_wait().is_empty());

    let texts = ["one", "two", "three!"];
    let ids: Vec<u32> = texts.iter().map(|text| ana.send("bob", text)).collect();
    let mut answers = Vec::new();
    for (&id, text) in ids.iter().zip(texts) {
        let got = bob.recv();
        let header = (got.frame_type, got.message_id, &got.src[..], &got.dst[..]);
        assert_eq!(header, (codec::TYPE_MESSAGE, id, "ana", "bob"));
        assert_eq!(got.body, text.as_bytes());
        bob.answer(&got);
        answers.push(got);
    }
    for got in &answers {
        // The original client's answer: "200\0" cut or padded to the message's length.
        let mut body = b"200\0".to_vec();
        body.resize(got.body.len(), b'?');
        let answer = ana.recv();
        let header = (
            answer.frame_type,
            answer.message_id,
            &answer.src[..],
            &answer.dst[..],
        );
        assert_eq!(header, (codec::TYPE_ANSWER, got.message_id, "bob", "ana"));
        assert_eq!(answer.body, body);
    }

    // Rule 6 on B: bob does not answer; B closes him and ana hears "300".
    let id = ana.send("bob", "unanswered");
    let got = bob.recv();
    assert_eq!((got.message_id, &got.body[..]), (id, &b"unanswered"[..]));
    let started = std::time::Instant::now();
    assert!(bob.expect_closed().is_empty());
    let closed_after = started.elapsed();
    let stored = ana.recv();
    let header = (
        stored.frame_type,
        stored.message_id,
        &stored.src[..],
        &stored.dst[..],
    );
    assert_eq!(header, (codec::TYPE_ANSWER, id, "bob", "ana"));
    assert_eq!(stored.body, b"300");
    eprintln!("bob closed {} ms after receiving", closed_after.as_millis());

    // bob again on B: the frame is there, as type 2, once.
    let mut bob = Bin24::connect(addr(&b, "--bin24-port"), "bob");
    let kept = bob.register_and_wait();
    let frame = &bob.one_stored(kept);
    let header = (
        frame.frame_type,
        frame.message_id,
        &frame.src[..],
        &frame.dst[..],
    );
    assert_eq!(header, (codec::TYPE_OFFLINE, id, "ana", "bob"));
    assert_eq!(frame.body, b"unanswered");
    bob.answer(frame);
    // Rule 5 across nodes: ana is not on B, so B locates her and A hands her bob's answer.
    let answer = ana.recv();
    let header = (
        answer.frame_type,
        answer.message_id,
        &answer.src[..],
        &answer.dst[..],
    );
    assert_eq!(header, (codec::TYPE_ANSWER, id, "bob", "ana"));

    // Nobody holds "zed": stored on A, "300".
    let id = ana.send("zed", "anyone?");
    let stored = ana.recv();
    let header = (
        stored.frame_type,
        stored.message_id,
        &stored.src[..],
        &stored.dst[..],
    );
    assert_eq!(header, (codec::TYPE_ANSWER, id, "zed", "ana"));
    assert_eq!(stored.body, b"300");

    // bob's answer to the stored frame settled it on B; nothing else arrives anywhere.
    ana.expect_quiet_for(Duration::from_millis(200));
    bob.expect_quiet_for(Duration::from_millis(50));
    for node in [&mut a, &mut b] {
        assert_eq!(metric(node, "chatd_cluster_messages_malformed_total"), 0.0);
        assert_eq!(metric(node, "chatd_cluster_events_duplicate_total"), 0.0);
    }
}

/// A BIN24 message published for a node that died: no answer comes back, so after the ack
/// timeout and the lease the sender's node keeps the frame itself and its sender hears "300"
/// (custody stays with the sender's node until the recipient's node answers); the recipient,
/// once its name is free, logs in on that node and gets the frame (type 2).
#[test]
fn a_bin24_message_for_a_node_that_died_is_kept_by_the_senders_node() {
    use std::io::Read;
    use switchboard::protocol::bin24::codec;
    let Some(redis) = Redis::start() else {
        return;
    };
    let flags = [
        "--bin24-ack-timeout-ms",
        "300",
        "--cluster-lease-ms",
        "1000",
    ];
    let a = node_with(&redis, "node-a", &["--bin24-port"], &flags);
    let b = node_with(&redis, "node-b", &["--bin24-port"], &flags);
    let mut ana = Bin24::connect(addr(&a, "--bin24-port"), "ana");
    assert!(ana.register_and_wait().is_empty());
    let mut bob = Bin24::connect(addr(&b, "--bin24-port"), "bob");
    assert!(bob.register_and_wait().is_empty());

    // B dies (SIGKILL): bob's key still names it until it lapses, so the frame goes to B.
    drop(b);
    let sent = std::time::Instant::now();
    let id = ana.send("bob", "lost?");
    let kept = ana.recv();
    let waited = sent.elapsed();
    let header = (
        kept.frame_type,
        kept.message_id,
        &kept.src[..],
        &kept.dst[..],
    );
    assert_eq!(header, (codec::TYPE_ANSWER, id, "bob", "ana"));
    assert_eq!(kept.body, b"300");
    eprintln!("\"300\" from A {} ms after sending", waited.as_millis());
    assert!(
        waited >= Duration::from_millis(1300),
        "not before the ack timeout and the lease: {waited:?}"
    );
    // CLUSTER.md: kept, and "300" once durable, when no answer came within the ack timeout
    // and the lease; the store's write is one script in a healthy Redis, bounded by the
    // command deadline (a quarter lease), so the "300" comes within a quarter lease after.
    assert!(
        waited < Duration::from_millis(1300 + 1000 / 4),
        "\"300\" a quarter lease or more after the ack timeout and the lease: {waited:?}"
    );

    // bob on A once B's key has lapsed (refused, closed, until then): the frame, as type 2.
    let mut tries = 0;
    let mut bob = loop {
        let mut bob = Bin24::connect(addr(&a, "--bin24-port"), "bob");
        bob.send("bob", "sync");
        let mut chunk = [0u8; 4096];
        match bob.stream.read(&mut chunk) {
            Ok(0) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(n) => {
                bob.buffer.extend_from_slice(&chunk[..n]);
                break bob;
            }
            Err(err) => panic!("bob on A: {err}"),
        }
        tries += 1;
        assert!(tries < 500, "bob's name never freed on A");
        std::thread::sleep(Duration::from_millis(10));
    };
    let stored = loop {
        let frame = bob.recv();
        match frame.frame_type {
            codec::TYPE_OFFLINE => break frame,
            codec::TYPE_MESSAGE => bob.answer(&frame),
            _ => {}
        }
    };
    let header = (
        stored.frame_type,
        stored.message_id,
        &stored.src[..],
        &stored.dst[..],
    );
    assert_eq!(header, (codec::TYPE_OFFLINE, id, "ana", "bob"));
    assert_eq!(stored.body, b"lost?");
}

/// WEB in a cluster: a web user is a lobby member across nodes like a MATOU user (the hub
/// carries it generically), and its name is claimed through Redis like the others'.
#[test]
fn a_web_user_and_a_matou_user_on_two_nodes_share_the_lobby_and_the_name_space() {
    use common::web::Web;
    use serde_json::json;
    let Some(redis) = Redis::start() else {
        return;
    };
    let a = node(&redis, "node-a", &["--web-port"]);
    let b = node(&redis, "node-b", &["--matou-port"]);
    let mut mia = Matou::sign_in_at(addr(&b, "--matou-port"), "mia");
    let (mut wen, _) = Web::sign_in(addr(&a, "--web-port"), "wen");
    mia.expect_notify(3, "wen");

    wen.say("hello from a browser");
    mia.expect_broadcast("wen", "hello from a browser");
    mia.say("hello from matou");
    mia.expect_broadcast("mia", "hello from matou");
    let heard = wen.await_message("lobby", |m| m["from"] == "mia");
    assert_eq!(
        heard,
        json!({"type": "lobby", "from": "mia", "protocol": "matou", "text": "hello from matou"})
    );

    // mia's name is held on B: a web sign-in on A waits for Redis and is refused.
    let mut other = Web::open(addr(&a, "--web-port"));
    other.send_json(&json!({"type": "signin", "name": "mia"}));
    assert_eq!(
        other.recv(),
        json!({"type": "refused", "reason": "name-taken"})
    );

    drop(wen);
    mia.expect_notify(16, "wen");
}
