//! Slow consumers over real sockets, for the protocols whose lobby output a client can stop
//! reading (docs/PROTOCOLS.md, ROOM "Slow members", MATOU, WEB "Output", SWITCHBOARD rule 5):
//! a client that stops reading while others chat (WEB, MATOU, CCM) is closed at its output
//! limit, the server's kernel holds at most its send buffer for a reader that stops, and
//! everyone else keeps receiving everything, promptly. ROOM's own cases are in tests/room.rs.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::matou::{packet, string, Matou};
use common::web::{upgrade_request, Web};
use common::{Client, TestServer, WAIT};
use serde_json::json;
use switchboard::config::Config;

/// Lobby messages the sender sends, in batches; each message reaches every lobby member.
const MESSAGES: usize = 5_000;
/// Under MATOU's 512-byte message limit, so every message is one PUBLIC_BROADCAST and one
/// WEB `lobby` message.
const MESSAGE_BYTES: usize = 400;
const BATCH: usize = 100;
/// The healthy members' worst wait for a batch, from its last message sent to its arrival.
/// A batch is 40 KB; a loop stalled behind the slow client (a blocking write, a turn spent
/// on its backlog) shows as seconds, a loaded 2-core machine as tens of milliseconds.
const BATCH_WAIT_MAX: Duration = Duration::from_secs(1);

/// Output limits small enough that a client which stops reading passes them within the test:
/// the healthy members never lag by more than one batch (40 KB), the slow one by megabytes.
fn config() -> Config {
    Config {
        matou_port: Some(0),
        web_port: Some(0),
        ccm_port: Some(0),
        output_hard_bytes_max: 1024 * 1024,
        output_soft_bytes_max: 256 * 1024,
        output_soft_duration_ms: 200,
        ..Config::for_tests()
    }
}

/// Message `seq`: `m` and six digits, padded to [`MESSAGE_BYTES`].
fn message(seq: usize) -> String {
    let mut text = format!("m{seq:06} ");
    text.extend(std::iter::repeat_n('x', MESSAGE_BYTES - text.len()));
    text
}

fn seq_of(text: &str) -> Option<usize> {
    text.strip_prefix('m')?.get(..6)?.parse().ok()
}

/// What a healthy member saw: how often each message arrived, and the lobby members it was
/// told left.
#[derive(Default)]
struct Seen {
    counts: HashMap<usize, usize>,
    left: Vec<String>,
}

impl Seen {
    fn assert_everything_once(&self, who: &str) {
        for seq in 0..MESSAGES {
            let seen = self.counts.get(&seq).copied().unwrap_or(0);
            assert_eq!(seen, 1, "{who} must receive message {seq} exactly once");
        }
    }
}

/// Reads MATOU packets until the broadcast of `last` from `from`.
fn matou_read_through(peer: &mut Matou, from: &str, last: &str, seen: &mut Seen) {
    loop {
        match peer.int() {
            3 => {
                peer.string();
            }
            16 => {
                let who = peer.string();
                seen.left.push(who);
            }
            5 => {
                let (who, text) = (peer.string(), peer.string());
                if who != from {
                    continue;
                }
                if let Some(seq) = seq_of(&text) {
                    *seen.counts.entry(seq).or_default() += 1;
                }
                if text == last {
                    return;
                }
            }
            other => panic!("{}: unexpected packet type {other}", peer.name),
        }
    }
}

/// Reads WEB messages until the lobby message `last` from `from`.
fn web_read_through(web: &mut Web, from: &str, last: &str, seen: &mut Seen) {
    loop {
        let message = web.recv();
        match message["type"].as_str() {
            Some("left") => seen
                .left
                .push(message["name"].as_str().unwrap_or("").into()),
            Some("lobby") if message["from"] == from => {
                let text = message["text"].as_str().expect("a lobby text");
                if let Some(seq) = seq_of(text) {
                    *seen.counts.entry(seq).or_default() += 1;
                }
                if text == last {
                    return;
                }
            }
            _ => {}
        }
    }
}

/// A WEB client with a 4 KiB receive buffer that upgrades and signs in as `name`, then never
/// reads a byte (not even the 101): its frames are written by hand, masked with a zero key.
fn silent_web_user(web: SocketAddr, name: &str) -> TcpStream {
    let mut client = Client::connect_small(web, name, 4096);
    client.send(upgrade_request("").as_bytes());
    let signin = json!({"type": "signin", "name": name}).to_string();
    assert!(signin.len() < 126, "one short frame");
    let mut frame = vec![0x81, 0x80 | signin.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(signin.as_bytes());
    client.send(&frame);
    client.stream
}

/// A MATOU user with a 4 KiB receive buffer, signed in as `name`; it reads nothing after its
/// own CONNECT_NOTIFY.
fn silent_matou_user(matou: SocketAddr, name: &str) -> TcpStream {
    let client = Client::connect_small(matou, name, 4096);
    let mut peer = Matou::wrap(client.stream, name);
    peer.login(name, true);
    peer.expect_notify(3, name);
    peer.stream
}

/// A CCM user with a 4 KiB receive buffer, identified as `name` (a lobby member); it reads
/// nothing after the answer to its identification.
fn silent_ccm_user(ccm: SocketAddr, name: &str) -> TcpStream {
    let mut client = Client::connect_small(ccm, name, 4096);
    client.send(format!("CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\n\n{name}").as_bytes());
    client.read_through(b"Content-Length: 0\n\n");
    client.stream
}

/// Everything the slow client was sent until the server closed it; panics if it never does.
fn read_until_closed(mut slow: TcpStream, who: &str) -> usize {
    slow.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = 0usize;
    let mut chunk = [0u8; 65536];
    loop {
        match slow.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(err) => panic!("{who}: reading what it was sent: {err}"),
        }
    }
}

/// A MATOU sender and a MATOU and a WEB member who read everything; `slow` (already signed
/// in as `slow_name`) never reads. The sender goes batch by batch, waiting until both healthy
/// members (and itself: its own broadcasts come back) have each batch. Asserts every healthy
/// member got every message once and each batch promptly, was told once that the slow one
/// left, and that the slow one was closed as a slow consumer, having received less than
/// it was sent.
fn the_others_get_everything_while_the_slow_one_is_closed(
    server: TestServer,
    mut sender: Matou,
    mut matou_reader: Matou,
    mut web_reader: Web,
    slow: TcpStream,
    slow_name: &str,
) {
    let mut seen_by_sender = Seen::default();
    let mut seen_by_matou = Seen::default();
    let mut seen_by_web = Seen::default();
    let mut worst_batch = Duration::ZERO;
    for batch_start in (0..MESSAGES).step_by(BATCH) {
        let mut bytes = Vec::new();
        for seq in batch_start..batch_start + BATCH {
            bytes.extend(packet(4, &[&string(message(seq).as_bytes())]));
        }
        sender.send(&bytes);
        let sent = Instant::now();
        let last = message(batch_start + BATCH - 1);
        web_read_through(&mut web_reader, "sender", &last, &mut seen_by_web);
        matou_read_through(&mut matou_reader, "sender", &last, &mut seen_by_matou);
        worst_batch = worst_batch.max(sent.elapsed());
        matou_read_through(&mut sender, "sender", &last, &mut seen_by_sender);
    }
    eprintln!("worst batch of {BATCH} messages took {worst_batch:?} to reach both members");
    for (who, seen) in [
        ("the sender", &seen_by_sender),
        ("the MATOU member", &seen_by_matou),
        ("the WEB member", &seen_by_web),
    ] {
        seen.assert_everything_once(who);
        let told = seen.left.iter().filter(|name| *name == slow_name).count();
        assert_eq!(told, 1, "{who} must be told once that {slow_name} left");
    }
    assert!(
        worst_batch < BATCH_WAIT_MAX,
        "a batch took {worst_batch:?} to reach the healthy members"
    );

    let got = read_until_closed(slow, slow_name);
    let sent_to_slow = MESSAGES * MESSAGE_BYTES;
    eprintln!("{slow_name} received {got} bytes before the close, of over {sent_to_slow}");
    assert!(
        got < sent_to_slow,
        "{slow_name} received {got} bytes; it should have been closed early"
    );
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 1, "{stats}");
}

/// Starts the server with the healthy members and the sender, then `slow_name` made by
/// `silent_user` (a member that never reads); once both readers saw it join, runs
/// [`the_others_get_everything_while_the_slow_one_is_closed`].
fn a_silent_member_is_closed_while_the_others_get_everything(
    slow_name: &str,
    silent_user: impl FnOnce(&TestServer, &str) -> TcpStream,
) {
    let server = TestServer::start(config());
    let matou = server.matou.expect("MATOU");
    let (mut web_reader, _) = Web::sign_in(server.web.expect("WEB"), "reader");
    let sender = Matou::sign_in_at(matou, "sender");
    let mut matou_reader = Matou::sign_in_at(matou, "mreader");
    let slow = silent_user(&server, slow_name);
    web_reader.await_message("joined", |m| m["name"] == slow_name);
    matou_reader.expect_notify(3, slow_name);
    the_others_get_everything_while_the_slow_one_is_closed(
        server,
        sender,
        matou_reader,
        web_reader,
        slow,
        slow_name,
    );
}

/// WEB "Output": a web client that does not read is closed as a slow consumer; MATOU and
/// WEB members reading all the while get every lobby message once, promptly.
#[test]
fn a_web_user_that_never_reads_is_closed_at_the_output_limit_and_others_get_everything() {
    a_silent_member_is_closed_while_the_others_get_everything("slowweb", |server, name| {
        silent_web_user(server.web.expect("WEB"), name)
    });
}

/// The same rule for MATOU (the reactor's output limits, as every protocol): a MATOU user who
/// stops reading while the lobby talks is closed; the others get everything.
#[test]
fn a_matou_user_that_never_reads_is_closed_at_the_output_limit_and_others_get_everything() {
    a_silent_member_is_closed_while_the_others_get_everything("slowm", |server, name| {
        silent_matou_user(server.matou.expect("MATOU"), name)
    });
}

/// Bytes written to the server's socket `local` -> `remote` and not yet acknowledged by the
/// peer (`tx_queue` in /proc/net/tcp: unacknowledged plus unsent); `None` if there is no such
/// socket.
fn send_queue_bytes(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => panic!("IPv4 loopback only"),
    };
    let (local, remote) = (hex(local), hex(remote));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let queues = fields.get(4)?;
        let tx_queue = queues.split(':').next()?;
        u64::from_str_radix(tx_queue, 16).ok()
    })
}

/// RELIABILITY.md, "writes per turn, kernel memory per connection": with
/// `--tcp-send-buffer-bytes` (128 KiB) a reader that stops costs about 256 KiB of the
/// server's kernel memory (Linux doubles SO_SNDBUF; at most one segment more), whatever is
/// queued for it: the rest waits in the server's own queue, under the output limits. Ten ROOM members stop reading
/// while a member sends 2 MiB; the server's kernel send queue toward each stalled one is read
/// from /proc/net/tcp once it stops growing. With kernel autotuning instead
/// (`tcp_send_buffer_bytes: 0`) it grew to 1.9 MB toward each.
#[test]
fn a_reader_that_stops_holds_at_most_its_send_buffer_in_the_servers_kernel() {
    const STALLED: usize = 10;
    let config = Config {
        // Nobody is closed during the test: the server keeps what the kernel refuses.
        output_hard_bytes_max: 64 * 1024 * 1024,
        output_soft_bytes_max: 64 * 1024 * 1024,
        ..Config::for_tests()
    };
    // Linux keeps twice SO_SNDBUF, and checks it before it appends a segment of up to
    // 64 KiB, so the queue may pass it by one segment (seen: 170 to 272 KiB, 256 KiB doubled).
    let kernel_bytes_per_reader_max = 2 * config.tcp_send_buffer_bytes as u64 + 64 * 1024;
    let server = TestServer::start(config);
    let stalled: Vec<Client> = (0..STALLED)
        .map(|n| Client::join(server.room, &format!("stalled{n}")))
        .collect();
    let mut sender = Client::join(server.room, "sender");
    let mut echo = sender.stream.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(echo.read(&mut buf), Ok(n) if n > 0) {}
    });
    let chunk = [b'f'; 1024];
    for _ in 0..2 * 1024 {
        sender.stream.write_all(&chunk).expect("send");
    }
    let peers: Vec<SocketAddr> = stalled
        .iter()
        .map(|client| client.stream.local_addr().expect("addr"))
        .collect();
    // Read until no send queue moved for 200 ms (bounded by WAIT): the kernel took all it
    // will take.
    let deadline = Instant::now() + WAIT;
    let mut last: Vec<Option<u64>> = Vec::new();
    let mut still_since = Instant::now();
    let queued = loop {
        let now: Vec<Option<u64>> = peers
            .iter()
            .map(|&peer| send_queue_bytes(server.room, peer))
            .collect();
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_millis(200) {
            break now;
        }
        assert!(Instant::now() < deadline, "the send queues never settled");
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("the server's kernel send queue toward each stalled reader: {queued:?}");
    for (n, bytes) in queued.iter().enumerate() {
        let bytes = bytes.unwrap_or_else(|| panic!("no server socket toward stalled{n}"));
        // The attack must have filled it: a stalled reader's kernel takes its receive buffer
        // (about 128 KiB here), the rest of the 2 MiB waits in the server.
        assert!(
            bytes >= 64 * 1024,
            "stalled{n}: only {bytes} bytes queued; the attack did not fill the send buffer"
        );
        assert!(
            bytes <= kernel_bytes_per_reader_max,
            "stalled{n}: {bytes} bytes in the server's kernel send queue"
        );
    }
    let _ = sender.stream.shutdown(std::net::Shutdown::Both);
    let _ = drain.join();
    drop(stalled);
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 0, "{stats}");
}

/// SWITCHBOARD rule 5: cross-protocol output goes through the recipient's own output limits,
/// "a slow recipient is closed as its protocol closes it": a CCM lobby member who stops
/// reading while MATOU lobby messages cross to it is closed; the others get everything.
#[test]
fn a_ccm_user_that_never_reads_is_closed_at_the_output_limit_and_others_get_everything() {
    a_silent_member_is_closed_while_the_others_get_everything("slowc", |server, name| {
        silent_ccm_user(server.ccm.expect("CCM"), name)
    });
}

/// PROTOCOLS.md WEB: a direct to a web user is `sent delivered` once the recipient's TCP
/// acknowledged it, `error not-delivered` if it closed first. bob stops reading, the lobby
/// fills his kernel buffers and queues more behind them, ann's direct waits behind that, and
/// bob resets: ann must hear `not-delivered`, never `delivered` (the reactor reports the
/// direct's note as never acknowledged when it drops bob's queue).
#[test]
fn a_direct_to_a_web_user_who_stopped_reading_and_reset_is_answered_not_delivered() {
    const FILLER: usize = 1_500;
    let server = TestServer::start(Config {
        matou_port: Some(0),
        web_port: Some(0),
        ..Config::for_tests()
    });
    let web = server.web.expect("WEB");
    let (mut ann, _) = Web::sign_in(web, "ann");
    let mut sender = Matou::sign_in_at(server.matou.expect("MATOU"), "sender");
    let bob = silent_web_user(web, "bob");
    ann.await_message("joined", |m| m["name"] == "bob");

    // 600 KB for bob: far more than his 4 KiB window and the server's send buffer hold, far
    // under the output limits (4 MiB, 1 MiB for 10 s), so he stays connected.
    let mut bytes = Vec::new();
    for seq in 0..FILLER {
        bytes.extend(packet(4, &[&string(message(seq).as_bytes())]));
    }
    sender.send(&bytes);
    let last = message(FILLER - 1);
    web_read_through(&mut ann, "sender", &last, &mut Seen::default());
    matou_read_through(&mut sender, "sender", &last, &mut Seen::default());

    ann.direct("bob", "behind the backlog", 7);
    // Frames are handled in order: the pong says the direct was queued for bob.
    ann.send_json(&json!({"type": "ping"}));
    ann.await_message("pong", |_| true);
    socket2::SockRef::from(&bob)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(bob);
    let answer = loop {
        let message = ann.recv();
        if message["id"] == 7 {
            break message;
        }
    };
    assert_eq!(
        answer,
        json!({"type": "error", "id": 7, "reason": "not-delivered"}),
        "the answer to a direct bob never received"
    );
    ann.await_message("left", |m| m["name"] == "bob");
}
