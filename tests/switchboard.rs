//! The switchboard over real sockets (contract section SWITCHBOARD): one name space for BIN24,
//! CCM and MATOU, one lobby for ROOM, MATOU, CCM and the OCM lobby room, presence notices,
//! BIN24<->CCM direct messages, counts by origin and destination; and `--isolate`, which keeps
//! every protocol apart.
//!
//! Each protocol's client is played by hand from the contract's wire formats (not with the
//! library's codecs, except BIN24's fixed frame layout), so a rendering bug cannot hide behind
//! a matching helper.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::bin24::{name, Bin24};
use common::matou::Matou;
use common::ocm::Ocm;
use common::{ccm, Client, TempDir, TestServer, WAIT};
use switchboard::config::Config;
use switchboard::protocol::bin24::codec as bin24;

const ACK_TIMEOUT_MS: u64 = 300;

/// ROOM, BIN24, CCM, MATOU and the admin port (and OCM when `ocm` is set), the switchboard on
/// unless `isolate`.
fn server(data: &TempDir, isolate: bool) -> TestServer {
    TestServer::start(Config {
        bin24_port: Some(0),
        bin24_ack_timeout_ms: ACK_TIMEOUT_MS,
        data_dir: data.0.clone(),
        ccm_port: Some(0),
        matou_port: Some(0),
        admin_port: Some(0),
        isolate,
        ..Config::for_tests()
    })
}

// ---- CCM ----

fn ccm_connect(server: &TestServer, label: &str) -> Client {
    Client::connect(server.ccm.expect("CCM enabled"), label)
}

/// The exact bytes of a CCM `Error` with `Reason: <reason>` and `sentence`.
fn ccm_error(reason: &str, sentence: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Error\nReason: {reason}\nContent-Length: {}\n\n{sentence}",
        sentence.len()
    )
    .into_bytes()
}

const NAME_TAKEN: &str = "that name is in use";

// ---- MATOU ----

// ---- BIN24 ----

// ---- OCM ----

// ---- ROOM ----

fn room_join(server: &TestServer, alias: &str) -> Client {
    Client::join(server.room, alias)
}

// ---- rule 1 ----

#[test]
fn rule1_a_name_held_in_one_protocol_is_refused_by_the_others_each_in_its_own_way() {
    let data = TempDir::new("switchboard-names");
    let server = server(&data, false);

    // ana holds her name in BIN24: CCM and MATOU refuse it, each its own way.
    let _ana = Bin24::log_in(&server, "ana");
    let mut ccm = ccm_connect(&server, "ccm");
    ccm.send(&ccm::identify_message("ana"));
    ccm.expect(&ccm_error("name-taken", NAME_TAKEN));
    let mut matou = Matou::connect(&server, "matou");
    matou.login("ana", false);

    // Both connections stay open for another try: CCM takes "bia", MATOU "caio".
    ccm.send(&ccm::identify_message("bia"));
    ccm::expect_identity(&mut ccm);
    matou.login("caio", true);
    matou.expect_notify(3, "caio");

    // Names held in CCM and MATOU: MATOU refuses bia, CCM refuses caio, BIN24 closes both.
    let mut matou2 = Matou::connect(&server, "matou2");
    matou2.login("bia", false);
    let mut ccm2 = ccm_connect(&server, "ccm2");
    ccm2.send(&ccm::identify_message("caio"));
    ccm2.expect(&ccm_error("name-taken", NAME_TAKEN));
    for held in ["bia", "caio"] {
        let mut bin = Bin24::connect(server.bin24.expect("BIN24 enabled"), held);
        bin.send(held, "mine?");
        bin.expect_closed();
    }

    // BIN24's own rule still holds between BIN24 connections: a newer ana replaces the older.
    let _newer = Bin24::log_in(&server, "ana");

    // A name is free again once its holder leaves: caio signs out of MATOU, CCM may take it.
    drop(matou);
    let mut ccm3 = ccm_connect(&server, "ccm3");
    let refused = ccm_error("name-taken", NAME_TAKEN);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        ccm3.send(&ccm::identify_message("caio"));
        ccm3.expect(b"CCM\\1.0 ");
        if ccm3.read_through(b"\n") == b"Identity\n" {
            break;
        }
        // MATOU's close has not been handled yet: the refusal, then try again (bounded).
        ccm3.expect(&refused[b"CCM\\1.0 Error\n".len()..]);
        assert!(std::time::Instant::now() < deadline, "caio was never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.stop();
}

// ---- rules 2 and 3 ----

#[test]
fn rules2_and_3_room_matou_and_ccm_users_share_one_lobby_with_presence() {
    let data = TempDir::new("switchboard-lobby");
    let server = server(&data, false);

    let mut rui = room_join(&server, "rui");
    let mut mia = Matou::sign_in(&server, "mia");
    rui.expect(b"b'mia' esta conectado ao chat");
    let (mut cid, cid_token) = ccm::identify(server.ccm.expect("CCM enabled"), "cid");
    rui.expect(b"b'cid' esta conectado ao chat");
    mia.expect_notify(3, "cid");

    // ROOM: the original client sends `alias: text` with a line ending; ROOM echoes it, the
    // others get N = rui and T without the prefix and the line ending.
    rui.send(b"rui: hello there\n");
    rui.expect(b"rui: hello there\n");
    mia.expect_broadcast("rui", "hello there");
    cid.expect(&ccm::delivered("rui", "*", "hello there"));

    // MATOU: PUBLIC_MESSAGE reaches ROOM as `N: T` and CCM as a Text to `*`.
    mia.say("oi gente");
    mia.expect_broadcast("mia", "oi gente");
    rui.expect(b"mia: oi gente");
    cid.expect(&ccm::delivered("mia", "*", "oi gente"));

    // CCM: a Text to `*`, not echoed to its sender.
    cid.send(&ccm::text(&cid_token, "*", "ola"));
    rui.expect(b"cid: ola");
    mia.expect_broadcast("cid", "ola");
    cid.expect_nothing_for(Duration::from_millis(100));

    // Rule 5: what MATOU cannot carry (a control character) does not reach MATOU, and is
    // counted; CCM carries it. The next line shows MATOU skipped only that one.
    rui.send(b"rui: tab\there\n");
    rui.expect(b"rui: tab\there\n");
    cid.expect(&ccm::delivered("rui", "*", "tab\there"));
    rui.send(b"rui: plain\n");
    rui.expect(b"rui: plain\n");
    mia.expect_broadcast("rui", "plain");
    cid.expect(&ccm::delivered("rui", "*", "plain"));
    let crossing = |family: &str, origin: &str, destination: &str| {
        let series = format!("{family}{{origin=\"{origin}\",destination=\"{destination}\"}}");
        server
            .metric(&series)
            .unwrap_or_else(|| panic!("{series} missing"))
    };
    assert_eq!(
        crossing("chatd_switchboard_messages_total", "room", "matou"),
        2.0
    );
    assert_eq!(
        crossing("chatd_switchboard_messages_total", "room", "ccm"),
        3.0
    );
    assert_eq!(
        crossing("chatd_switchboard_over_limit_total", "room", "matou"),
        1.0
    );
    assert_eq!(
        crossing("chatd_switchboard_messages_total", "matou", "room"),
        1.0
    );
    assert_eq!(
        crossing("chatd_switchboard_messages_total", "ccm", "matou"),
        1.0
    );
    // Presence: ROOM heard of mia and cid, MATOU of cid.
    assert_eq!(
        crossing("chatd_switchboard_notices_total", "matou", "room"),
        1.0
    );
    assert_eq!(
        crossing("chatd_switchboard_notices_total", "ccm", "room"),
        1.0
    );
    assert_eq!(
        crossing("chatd_switchboard_notices_total", "ccm", "matou"),
        1.0
    );

    // Leaving: ROOM's leave notice and MATOU's SIGN_OUT_NOTIFY; CCM has no presence message.
    drop(cid);
    rui.expect(b"b'cid' acabou de sair do chat!");
    mia.expect_notify(16, "cid");
    drop(rui);
    mia.expect_notify(16, "rui");
    drop(mia);
    server.stop();
}

// ---- --isolate ----

#[test]
fn isolate_keeps_every_protocol_apart_exactly_as_before() {
    let data = TempDir::new("switchboard-isolate");
    let server = server(&data, true);

    // One name in three protocols: each accepts it.
    let _ana = Bin24::log_in(&server, "ana");
    let (mut ana_ccm, _) = ccm::identify(server.ccm.expect("CCM enabled"), "ana");
    let mut ana_matou = Matou::sign_in(&server, "ana");

    // A ROOM line reaches ROOM only; a MATOU message MATOU only.
    let mut rui = room_join(&server, "rui");
    rui.send(b"rui: anyone?\n");
    rui.expect(b"rui: anyone?\n");
    ana_matou.say("so alone");
    ana_matou.expect_broadcast("ana", "so alone");
    rui.expect_nothing_for(Duration::from_millis(200));
    ana_matou.expect_nothing_for(Duration::from_millis(50));
    ana_ccm.expect_nothing_for(Duration::from_millis(50));
    // Nothing crossed, so nothing is counted: the switchboard's families are not even shown.
    assert_eq!(
        server.metric("chatd_switchboard_messages_total{origin=\"room\",destination=\"matou\"}"),
        None
    );
    server.stop();
}

// ---- rule 4 ----

#[test]
fn rule4_bin24_and_ccm_users_message_each_other_and_200_and_the_store_keep_their_meaning() {
    let data = TempDir::new("switchboard-direct");
    let server = server(&data, false);
    let mut bob = Bin24::log_in(&server, "bob");
    let (mut cat, cat_token) = ccm::identify(server.ccm.expect("CCM enabled"), "cat");

    // CCM -> BIN24: a type 0 with SRC = cat, DST = bob, messageIDs from cat's own counter.
    cat.send(&ccm::text(&cat_token, "bob", "hi bob"));
    let frame = bob.recv();
    assert_eq!(
        (
            frame.frame_type,
            frame.message_id,
            &frame.src[..],
            &frame.dst[..]
        ),
        (0, 0, "cat", "bob")
    );
    assert_eq!(frame.body, b"hi bob");
    // bob's answer ends the exchange: CCM has nothing to show for it.
    bob.answer_with(&frame, b"200");

    // BIN24 -> CCM: cat gets a Text from bob; bob hears "200" from cat once it is written.
    let id = bob.send("cat", "hi cat");
    cat.expect(&ccm::delivered("bob", "cat", "hi cat"));
    let answer = bob.recv();
    assert_eq!(
        (
            answer.frame_type,
            answer.message_id,
            &answer.src[..],
            &answer.dst[..]
        ),
        (1, id, "cat", "bob")
    );
    assert_eq!(answer.body, b"200");

    // What BIN24 cannot carry is refused to the CCM sender, whose connection stays open.
    cat.send(&ccm::text(&cat_token, "bob", &"x".repeat(1001)));
    cat.expect(&ccm_error(
        "too-large",
        "a message to a BIN24 user is at most 1000 bytes",
    ));
    let (mut longname, longname_token) =
        ccm::identify(server.ccm.expect("CCM enabled"), "ninebytes");
    longname.send(&ccm::text(&longname_token, "bob", "hello"));
    longname.expect(&ccm_error(
        "too-large",
        "your name is longer than the 8 bytes a BIN24 user can be sent from",
    ));
    // Nobody online anywhere by that name: CCM's own answer.
    cat.send(&ccm::text(&cat_token, "nobody", "hello?"));
    cat.expect(&ccm_error("unknown-addressee", "no user has that name"));

    // bob does not answer within the ack timeout: BIN24 rule 6, he is closed and the message
    // waits in his store; it reaches him, once, when he comes back.
    cat.send(&ccm::text(&cat_token, "bob", "still there?"));
    let unanswered = bob.recv();
    assert_eq!(
        (unanswered.message_id, &unanswered.body[..]),
        (1, &b"still there?"[..])
    );
    bob.expect_closed();
    // A CCM sender hears no "300"; the store's own gauge says when the frame is durable.
    server.wait_metric("chatd_store_frames", 1.0);
    // Log in with an answer to nobody (dropped by the server, so it registers without side
    // effects): the stored frame follows, as type 2.
    let mut bob = Bin24::connect(server.bin24.expect("BIN24 enabled"), "bob");
    let register = bin24::encode(
        bin24::TYPE_ANSWER,
        u32::MAX,
        name("bob"),
        name("nobody"),
        b"200",
    )
    .expect("frame");
    bob.stream.write_all(&register).expect("send");
    let stored = bob.recv();
    assert_eq!(
        (stored.frame_type, stored.message_id, &stored.src[..]),
        (bin24::TYPE_OFFLINE, 1, "cat")
    );
    assert_eq!(stored.body, b"still there?");

    let crossing = |family: &str, origin: &str, destination: &str| {
        let series = format!("{family}{{origin=\"{origin}\",destination=\"{destination}\"}}");
        server
            .metric(&series)
            .unwrap_or_else(|| panic!("{series} missing"))
    };
    assert_eq!(
        crossing("chatd_switchboard_messages_total", "ccm", "bin24"),
        2.0
    );
    assert_eq!(
        crossing("chatd_switchboard_messages_total", "bin24", "ccm"),
        1.0
    );
    assert_eq!(
        crossing("chatd_switchboard_over_limit_total", "ccm", "bin24"),
        2.0
    );
    server.stop();
}

// ---- all five at once ----

#[test]
fn all_five_protocols_at_once_one_lobby_one_name_space_and_direct_messages() {
    let data = TempDir::new("switchboard-all");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        bin24_ack_timeout_ms: ACK_TIMEOUT_MS,
        data_dir: data.0.clone(),
        ccm_port: Some(0),
        matou_port: Some(0),
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        admin_port: Some(0),
        lobby_ocm_room: "sala".to_string(),
        ..Config::for_tests()
    });

    // OCM: oli hosts the lobby room ("sala", by --lobby-ocm-room); ze is in a room named
    // "lobby", which is not the lobby here.
    let oli = Ocm::enter(&server, 1, "sala", "oli");
    let ze = Ocm::enter(&server, 1, "lobby", "ze");
    let mut bob = Bin24::log_in(&server, "bob");
    let mut rui = room_join(&server, "rui");
    let mut mia = Matou::sign_in(&server, "mia");
    rui.expect(b"b'mia' esta conectado ao chat");
    let (mut cid, cid_token) = ccm::identify(server.ccm.expect("CCM enabled"), "cid");
    rui.expect(b"b'cid' esta conectado ao chat");
    mia.expect_notify(3, "cid");

    // One name space across BIN24, CCM and MATOU, with everyone present.
    let mut taken = Matou::connect(&server, "taken");
    taken.login("bob", false);
    taken.login("cid", false);

    // Each origin reaches the other four forms (BIN24 has no lobby).
    rui.send(b"rui: ola a todos\n");
    rui.expect(b"rui: ola a todos\n");
    mia.expect_broadcast("rui", "ola a todos");
    cid.expect(&ccm::delivered("rui", "*", "ola a todos"));
    oli.expect("rui: ola a todos");

    oli.say("oi do ocm");
    rui.expect(b"oli: oi do ocm");
    mia.expect_broadcast("oli", "oi do ocm");
    cid.expect(&ccm::delivered("oli", "*", "oi do ocm"));

    mia.say("oi do matou");
    mia.expect_broadcast("mia", "oi do matou");
    rui.expect(b"mia: oi do matou");
    cid.expect(&ccm::delivered("mia", "*", "oi do matou"));
    oli.expect("mia: oi do matou");

    cid.send(&ccm::text(&cid_token, "*", "oi do ccm"));
    rui.expect(b"cid: oi do ccm");
    mia.expect_broadcast("cid", "oi do ccm");
    oli.expect("cid: oi do ccm");

    // Direct messages between BIN24 and CCM, with the lobby busy around them.
    cid.send(&ccm::text(&cid_token, "bob", "psst"));
    let frame = bob.recv();
    assert_eq!((&frame.src[..], &frame.body[..]), ("cid", &b"psst"[..]));
    bob.answer_with(&frame, b"200");
    let id = bob.send("cid", "oi cid");
    cid.expect(&ccm::delivered("bob", "cid", "oi cid"));
    let answer = bob.recv();
    assert_eq!((answer.message_id, &answer.body[..]), (id, &b"200"[..]));

    // The host leaves the lobby room: ROOM and MATOU are told; the room closes.
    oli.say("exit");
    rui.expect(b"b'oli' acabou de sair do chat!");
    mia.expect_notify(16, "oli");

    // ze's room is not the lobby: nothing of the above reached it, and what it says stays.
    ze.say("so aqui");
    ze.socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    assert!(
        ze.socket.recv_from(&mut buf).is_err(),
        "ze got {:?}",
        String::from_utf8_lossy(&buf)
    );
    rui.expect_nothing_for(Duration::from_millis(100));

    let lobby = |protocol: &str| {
        server
            .metric(&format!(
                "chatd_switchboard_lobby_members{{protocol=\"{protocol}\"}}"
            ))
            .unwrap_or(-1.0)
    };
    assert_eq!(
        [lobby("room"), lobby("matou"), lobby("ccm"), lobby("ocm")],
        [1.0, 1.0, 1.0, 0.0]
    );
    server.stop();
}

// ---- the original ROOM client in the lobby ----

#[test]
fn the_original_python_room_client_talks_with_matou_and_ccm_users_unchanged() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !python {
        common::cannot_run("python3 is not installed (CI installs it)");
        return;
    }
    let data = TempDir::new("switchboard-original");
    let server = server(&data, false);
    let mut mia = Matou::sign_in(&server, "mia");
    let (mut cid, cid_token) = ccm::identify(server.ccm.expect("CCM enabled"), "cid");
    mia.expect_notify(3, "cid");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/original/client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("ROOM_PORT", server.room.port().to_string())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3");
    let stdout = child.stdout.take().expect("stdout");
    let (line_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().expect("stdin");
    // ROOM has no framing: the client prints whatever one recv returned; look for the text.
    let expect_printed = |expected: &str| loop {
        match lines.recv_timeout(WAIT) {
            Ok(line) if line.contains(expected) => return,
            Ok(_) => continue,
            Err(err) => panic!("the original client never printed {expected:?}: {err}"),
        }
    };

    writeln!(stdin, "alice").expect("type nick");
    mia.expect_notify(3, "alice");
    writeln!(stdin, "ola, tudo bem?").expect("type line");
    mia.expect_broadcast("alice", "ola, tudo bem?");
    cid.expect(&ccm::delivered("alice", "*", "ola, tudo bem?"));

    mia.say("oi alice");
    mia.expect_broadcast("mia", "oi alice");
    expect_printed("mia: oi alice");
    cid.send(&ccm::text(&cid_token, "*", "bem-vinda"));
    expect_printed("cid: bem-vinda");
    mia.expect_broadcast("cid", "bem-vinda");

    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    mia.expect_notify(16, "alice");
    server.stop();
}

// ---- rule 5: a crossing is charged like any live delivery ----

#[test]
fn a_bin24_flood_to_a_ccm_user_is_answered_429_as_within_bin24() {
    let data = TempDir::new("switchboard-rate");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        data_dir: data.0.clone(),
        ccm_port: Some(0),
        admin_port: Some(0),
        // One full frame of burst, then a byte a second: the second big message is refused.
        bin24_sender_bytes_per_s_max: 1,
        ..Config::for_tests()
    });
    let mut bob = Bin24::log_in(&server, "bob");
    let (mut cat, _) = ccm::identify(server.ccm.expect("CCM enabled"), "cat");
    let big = "x".repeat(900);

    let first = bob.send("cat", &big);
    cat.expect(&ccm::delivered("bob", "cat", &big));
    let answer = bob.recv();
    assert_eq!((answer.message_id, &answer.body[..]), (first, &b"200"[..]));

    let second = bob.send("cat", &big);
    let answer = bob.recv();
    assert_eq!((answer.message_id, &answer.body[..]), (second, &b"429"[..]));
    assert_eq!((&answer.src[..], &answer.dst[..]), ("cat", "bob"));
    cat.expect_nothing_for(Duration::from_millis(100));
    assert_eq!(
        server.metric("chatd_switchboard_over_limit_total{origin=\"bin24\",destination=\"ccm\"}"),
        Some(1.0)
    );
    server.stop();
}

/// Issue 18: BIN24's sending limits hold for a CCM sender too (rule 5, the recipient
/// protocol's limits): over them the CCM sender gets CCM's `rate-limited` Error and the BIN24
/// user nothing, and stays connected.
#[test]
fn a_ccm_flood_to_a_bin24_user_is_refused_to_its_sender_and_the_bin24_user_stays() {
    let data = TempDir::new("switchboard-ccm-rate");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        data_dir: data.0.clone(),
        ccm_port: Some(0),
        admin_port: Some(0),
        // One full frame of burst, then a byte a second: the second big message is refused.
        bin24_sender_bytes_per_s_max: 1,
        ..Config::for_tests()
    });
    let mut bob = Bin24::log_in(&server, "bob");
    let (mut cat, cat_token) = ccm::identify(server.ccm.expect("CCM enabled"), "cat");
    let big = "x".repeat(900);

    cat.send(&ccm::text(&cat_token, "bob", &big));
    let frame = bob.recv();
    assert_eq!(
        (frame.frame_type, &frame.src[..], &frame.dst[..]),
        (0, "cat", "bob"),
        "{frame:?}"
    );
    assert_eq!(frame.body, big.as_bytes());
    bob.answer_with(&frame, b"200");

    for _ in 0..3 {
        cat.send(&ccm::text(&cat_token, "bob", &big));
        cat.expect(&ccm_error(
            "rate-limited",
            "sending to BIN24 users faster than allowed: the message was not delivered",
        ));
    }
    // bob is still connected and got none of them: the next frame he reads is the answer
    // to his own message to cat, which cat receives.
    let id = bob.send("cat", "still here");
    cat.expect(&ccm::delivered("bob", "cat", "still here"));
    let answer = bob.recv();
    assert_eq!(
        (answer.frame_type, answer.message_id, &answer.body[..]),
        (1, id, &b"200"[..]),
        "{answer:?}"
    );
    assert_eq!(
        server.metric("chatd_switchboard_over_limit_total{origin=\"ccm\",destination=\"bin24\"}"),
        Some(3.0)
    );
    assert_eq!(
        server.metric("chatd_switchboard_messages_total{origin=\"ccm\",destination=\"bin24\"}"),
        Some(1.0)
    );
    server.stop();
}

/// Issue 18: a CCM `*` is charged to its sender's budget for every lobby member of the other
/// protocols it reaches, so a CCM user alone in CCM cannot push more into ROOM and MATOU than
/// CCM's own rate allows; over it the sender gets `rate-limited`, and the lobby members get
/// nothing and stay connected.
#[test]
fn a_ccm_lobby_flood_is_refused_to_its_sender_and_the_other_lobby_members_stay() {
    let data = TempDir::new("switchboard-ccm-lobby-rate");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        data_dir: data.0.clone(),
        ccm_port: Some(0),
        matou_port: Some(0),
        admin_port: Some(0),
        // A byte a second: the budget is its burst, one largest CCM delivery (1 MiB + 9 KiB).
        ccm_sender_bytes_per_s_max: 1,
        ..Config::for_tests()
    });
    let mut rui = room_join(&server, "rui");
    let mut mia = Matou::sign_in(&server, "mia");
    rui.expect(b"b'mia' esta conectado ao chat");
    let (mut carol, carol_token) = ccm::identify(server.ccm.expect("CCM enabled"), "carol");
    rui.expect(b"b'carol' esta conectado ao chat");
    mia.expect_notify(3, "carol");

    // carol is alone in CCM: what she says costs her only what ROOM and MATOU receive.
    carol.send(&ccm::text(&carol_token, "*", "hi"));
    rui.expect(b"carol: hi");
    mia.expect_broadcast("carol", "hi");

    // 200,007 bytes to rui each (MATOU cannot carry 200,000 bytes, so mia costs nothing):
    // five fit in the budget, the sixth does not.
    let big = "x".repeat(200_000);
    let line = format!("carol: {big}");
    for _ in 0..5 {
        carol.send(&ccm::text(&carol_token, "*", &big));
        rui.expect(line.as_bytes());
    }
    carol.send(&ccm::text(&carol_token, "*", &big));
    carol.expect(&ccm_error(
        "rate-limited",
        "sending faster than allowed: the message was not delivered",
    ));

    // Both stay connected, and the sixth reached neither: what each reads next is mia's.
    mia.say("still here");
    mia.expect_broadcast("mia", "still here");
    rui.expect(b"mia: still here");
    carol.expect(&ccm::delivered("mia", "*", "still here"));
    let crossing = |family: &str, destination: &str| {
        let series = format!("{family}{{origin=\"ccm\",destination=\"{destination}\"}}");
        server.metric(&series)
    };
    assert_eq!(
        crossing("chatd_switchboard_messages_total", "room"),
        Some(6.0)
    );
    assert_eq!(
        crossing("chatd_switchboard_over_limit_total", "room"),
        Some(1.0)
    );
    assert_eq!(
        crossing("chatd_switchboard_messages_total", "matou"),
        Some(1.0)
    );
    // Five too large for MATOU, and the one refused.
    assert_eq!(
        crossing("chatd_switchboard_over_limit_total", "matou"),
        Some(6.0)
    );
    server.stop();
}
