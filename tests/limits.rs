//! Limits a hostile client cannot pass, over real sockets: handshake deadlines on every TCP
//! protocol, the per-IP connection limit, the per-connection input budget and the per-source
//! datagram rate. Each test also shows that a well-behaved client on the same server is not
//! touched, and reads the server's statistics to see the limit counted.
//!
//! Timers and budgets are configured small, so every test runs in well under a second.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::ocm::Ocm;
use common::{Client, TempDir, TestServer, WAIT};
use switchboard::config::Config;
use switchboard::protocol::bin24::codec::{self as bin24, Name};
use switchboard::protocol::matou::codec as matou;
use switchboard::protocol::DatagramDrop;

const HANDSHAKE_MS: u64 = 300;

fn bin24_message(id: u32, from: &str, to: &str, text: &str) -> Vec<u8> {
    let name = |text: &str| Name::new(text.as_bytes()).expect("valid name");
    bin24::encode(
        bin24::TYPE_MESSAGE,
        id,
        name(from),
        name(to),
        text.as_bytes(),
    )
    .expect("short body")
    .to_vec()
}

fn ccm_identity(name: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{name}",
        name.len()
    )
    .into_bytes()
}

fn ccm_text(to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn connections_that_never_identify_are_closed_at_the_deadline_on_every_tcp_protocol() {
    let data = TempDir::new("limits-handshake");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        ccm_port: Some(0),
        matou_port: Some(0),
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        web_port: Some(0),
        data_dir: data.0.clone(),
        handshake_timeout_ms: HANDSHAKE_MS,
        ocm_tcrp_request_timeout_ms: HANDSHAKE_MS,
        ..Config::for_tests()
    });
    let web_addr = server.web.expect("WEB");
    let bin24_addr = server.bin24.expect("BIN24");
    let ccm_addr = server.ccm.expect("CCM");
    let matou_addr = server.matou.expect("MATOU");
    let ocm_addr = server.ocm_tcp.expect("OCM");

    // Identified clients, which must outlive the deadline. One name per user: BIN24, CCM
    // and MATOU share one name space (the switchboard).
    let mut bin24_alice = Client::connect(bin24_addr, "bin24 alice");
    bin24_alice.send(&bin24_message(1, "alice", "carol", "to someone offline"));
    bin24_alice.read_through(b"300");
    let mut ccm_alice = Client::connect(ccm_addr, "ccm alice");
    ccm_alice.send(&ccm_identity("cathy"));
    ccm_alice.read_through(b"Content-Length: 0\n\n");
    let mut ccm_bob = Client::connect(ccm_addr, "ccm bob");
    ccm_bob.send(&ccm_identity("bob"));
    ccm_bob.read_through(b"Content-Length: 0\n\n");
    let mut matou_alice = Client::connect(matou_addr, "matou alice");
    matou_alice.send(&matou::connect_request(b"maria"));
    matou_alice.expect(&matou::connect_response(true));
    // Not the OCM room named `lobby`, which the other protocols' lobby messages reach.
    let host = Ocm::enter(&server, 1, "den", "host");
    let guest = Ocm::enter(&server, 2, "den", "guest");
    server.wait_connections(4);

    let started = Instant::now();
    // Per protocol: one that sends nothing, and one that keeps the server busy without ever
    // identifying (a partial frame, a taken name, half a request).
    let mut doomed = vec![
        Client::connect(bin24_addr, "bin24 silent"),
        Client::connect(ccm_addr, "ccm silent"),
        Client::connect(matou_addr, "matou silent"),
        Client::connect(ocm_addr, "ocm silent"),
    ];
    let mut bin24_partial = Client::connect(bin24_addr, "bin24 partial");
    bin24_partial.send(&bin24_message(1, "mallory", "alice", "hi")[..10]);
    let mut ccm_taken = Client::connect(ccm_addr, "ccm taken name");
    ccm_taken.send(&ccm_identity("cathy"));
    ccm_taken.read_through(b"name-taken");
    let mut matou_taken = Client::connect(matou_addr, "matou taken name");
    matou_taken.send(&matou::connect_request(b"maria"));
    matou_taken.expect(&matou::connect_response(false));
    let mut ocm_partial = Client::connect(ocm_addr, "ocm partial");
    ocm_partial.send(&[5, 1, 0]);
    // WEB: the deadline covers the HTTP request and, after the upgrade, the sign-in.
    let web_silent = Client::connect(web_addr, "web silent");
    let mut web_upgraded = Client::connect(web_addr, "web upgraded, never signs in");
    web_upgraded.send(common::web::upgrade_request("").as_bytes());
    web_upgraded.read_through(b"\r\n\r\n");
    doomed.extend([
        bin24_partial,
        ccm_taken,
        matou_taken,
        ocm_partial,
        web_silent,
        web_upgraded,
    ]);

    for client in &mut doomed {
        client.expect_closed();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(HANDSHAKE_MS),
        "closed before the deadline"
    );
    server.wait_connections(4);

    // The identified ones are still served, past the deadline.
    let mut bin24_bob = Client::connect(bin24_addr, "bin24 bob");
    bin24_bob.send(&bin24_message(1, "bert", "alice", "still there?"));
    bin24_alice.read_through(b"still there?");
    ccm_alice.send(&ccm_text("bob", "still there?"));
    ccm_bob.read_through(b"still there?");
    matou_alice.send(&matou::public_message(b"still there"));
    matou_alice.read_through(b"still there");
    host.say("still there?");
    guest.expect("host: still there?");

    drop(bin24_bob);
    let stats = server.stop();
    assert_eq!(stats.handshake_timeouts, 10, "{stats}");
}

/// One hostile client of the trickle test: what it sends at each step, and when it was
/// closed.
struct Trickler {
    client: Client,
    /// Sent one at a time, a step apart; each keeps the connection unidentified.
    steps: Vec<Vec<u8>>,
    sent: usize,
    closed_after: Option<Duration>,
}

impl Trickler {
    fn new(client: Client, steps: Vec<Vec<u8>>) -> Trickler {
        Trickler {
            client,
            steps,
            sent: 0,
            closed_after: None,
        }
    }

    /// Whether the server has closed the connection, waiting at most `wait` for news.
    fn closed_within(&mut self, wait: Duration) -> bool {
        use std::io::{ErrorKind, Read};
        self.client
            .stream
            .set_read_timeout(Some(wait))
            .expect("set timeout");
        let mut chunk = [0u8; 4096];
        loop {
            match self.client.stream.read(&mut chunk) {
                Ok(0) => return true,
                // Prompts and refusals (`alias?`, name-taken) arrive while it trickles.
                Ok(_) => continue,
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false
                }
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return true,
                Err(err) => panic!("{}: read failed: {err}", self.client.name),
            }
        }
    }
}

/// Input that keeps arriving must not buy time: a client that trickles a partial frame byte
/// by byte, or retries a refused name, is closed at the deadline counted from accept, not
/// from its last byte. Each sends a quarter deadline apart for up to ten deadlines, so a
/// deadline that restarted on data would never close any of them.
#[test]
fn trickling_input_does_not_move_the_handshake_deadline_on_any_tcp_protocol() {
    let data = TempDir::new("limits-trickle");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        ccm_port: Some(0),
        matou_port: Some(0),
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        web_port: Some(0),
        data_dir: data.0.clone(),
        handshake_timeout_ms: HANDSHAKE_MS,
        room_handshake_timeout_ms: HANDSHAKE_MS,
        ocm_tcrp_request_timeout_ms: HANDSHAKE_MS,
        ..Config::for_tests()
    });
    let mut ccm_holder = Client::connect(server.ccm.expect("CCM"), "ccm holder");
    ccm_holder.send(&ccm_identity("cathy"));
    ccm_holder.read_through(b"Content-Length: 0\n\n");
    let mut matou_holder = Client::connect(server.matou.expect("MATOU"), "matou holder");
    matou_holder.send(&matou::connect_request(b"maria"));
    matou_holder.expect(&matou::connect_response(true));

    let bytes = |frame: &[u8]| -> Vec<Vec<u8>> { frame.iter().map(|&b| vec![b]).collect() };
    let retries = |attempt: &[u8]| -> Vec<Vec<u8>> { vec![attempt.to_vec(); 40] };
    // A BIN24 frame with a body long enough that 40 bytes never complete it.
    let bin24_frame = bin24_message(1, "mallory", "alice", &"x".repeat(200));
    // A CCM header that never ends, a MATOU request and an OCM TCRP request cut short.
    let ccm_header = format!(
        "CCM\\1.0 NotDefined\nMessage-Encoding: utf-8{}",
        "x".repeat(64)
    );
    let matou_request = matou::connect_request(&[b'm'; 60]);
    // Its 32-byte header alone, never finished.
    let mut ocm_request = vec![5u8, 1, 0];
    ocm_request.resize(32, 0);
    // WEB: an HTTP request that never ends, and after the upgrade a masked text frame of 200
    // bytes that never completes (header: FIN + text, masked length 126 + 16 bits, the mask).
    let web_request = common::web::upgrade_request("").into_bytes();
    let mut web_frame = vec![0x81, 0x80 | 126, 0, 200, 1, 2, 3, 4];
    web_frame.resize(8 + 200, b'x');
    let connect = |addr: Option<SocketAddr>, name: &str| Client::connect(addr.expect(name), name);
    let mut tricklers = vec![
        Trickler::new(connect(server.bin24, "bin24 partial frame"), {
            let mut steps = bytes(&bin24_frame);
            steps.truncate(40);
            steps
        }),
        Trickler::new(connect(server.ccm, "ccm endless header"), {
            let mut steps = bytes(ccm_header.as_bytes());
            steps.truncate(40);
            steps
        }),
        Trickler::new(
            connect(server.ccm, "ccm taken name"),
            retries(&ccm_identity("cathy")),
        ),
        Trickler::new(connect(server.matou, "matou partial request"), {
            let mut steps = bytes(&matou_request);
            steps.truncate(40);
            steps
        }),
        Trickler::new(
            connect(server.matou, "matou taken name"),
            retries(&matou::connect_request(b"maria")),
        ),
        Trickler::new(connect(server.ocm_tcp, "ocm partial request"), {
            let mut steps = bytes(&ocm_request);
            steps.truncate(31);
            steps
        }),
        Trickler::new(
            Client::connect(server.room, "room empty alias"),
            retries(b"\n"),
        ),
        Trickler::new(connect(server.web, "web endless request"), {
            let mut steps = bytes(&web_request);
            steps.truncate(40);
            steps
        }),
        Trickler::new(
            connect(server.web, "web partial frame after the upgrade"),
            {
                let mut steps = vec![common::web::upgrade_request("").into_bytes()];
                steps.extend(bytes(&web_frame).into_iter().take(39));
                steps
            },
        ),
    ];
    assert!(
        tricklers.iter().all(|t| t.steps.len() > 4),
        "every trickle outlasts the deadline"
    );

    let step = Duration::from_millis(HANDSHAKE_MS / 4);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(HANDSHAKE_MS * 10) {
        let mut open = 0;
        for trickler in tricklers.iter_mut().filter(|t| t.closed_after.is_none()) {
            if trickler.sent < trickler.steps.len() {
                // A write racing the server's close may fail: the read below tells.
                let _ = trickler
                    .client
                    .stream
                    .write_all(&trickler.steps[trickler.sent]);
                trickler.sent += 1;
            }
            if trickler.closed_within(step / 8) {
                trickler.closed_after = Some(started.elapsed());
            } else {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        std::thread::sleep(step);
    }
    for trickler in &tricklers {
        let closed_after = trickler
            .closed_after
            .unwrap_or_else(|| panic!("{}: still open after ten deadlines", trickler.client.name));
        assert!(
            trickler.sent < trickler.steps.len(),
            "{}: closed only after its trickle ended ({closed_after:?})",
            trickler.client.name
        );
    }

    // The identified ones are still served.
    ccm_holder.send(&ccm_text("nobody", "still there?"));
    ccm_holder.read_through(b"unknown-addressee");
    matou_holder.send(&matou::public_message(b"still there"));
    matou_holder.read_through(b"still there");
    let stats = server.stop();
    // All nine, ROOM and WEB included: none was closed for anything but its deadline.
    assert_eq!(stats.handshake_timeouts, 9, "{stats}");
}

/// A TCP connection to `to` from the local address `from` (another loopback address).
fn connect_from(from: &str, to: SocketAddr, name: &str) -> Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("address");
    socket.bind(&local.into()).expect("bind");
    socket.connect(&to.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    Client {
        stream,
        received: Vec::new(),
        name: name.to_string(),
    }
}

#[test]
fn the_per_ip_limit_refuses_the_next_connection_and_accepts_again_after_one_closes() {
    let server = TestServer::start(Config {
        matou_port: Some(0),
        connections_per_ip_max: 3,
        ..Config::for_tests()
    });
    let matou_addr = server.matou.expect("MATOU");
    // Counted across protocols: two ROOM members and one MATOU connection.
    let first = Client::join(server.room, "first");
    let mut second = Client::join(server.room, "second");
    let _matou = Client::connect(matou_addr, "matou");
    server.wait_connections(3);

    // The fourth from 127.0.0.1 is closed at once, whatever its protocol: no `alias?`.
    let mut refused = Client::connect(server.room, "refused");
    assert!(refused.expect_closed().is_empty());
    let mut refused_matou = Client::connect(matou_addr, "refused matou");
    assert!(refused_matou.expect_closed().is_empty());
    // Another address has its own count.
    let mut elsewhere = connect_from("127.0.0.2", server.room, "elsewhere");
    elsewhere.expect(b"alias?");
    // The members are untouched.
    second.send(b"second: ok");
    second.read_through(b"second: ok");

    drop(first);
    drop(elsewhere);
    server.wait_connections(2);
    let mut again = Client::connect(server.room, "again");
    again.expect(b"alias?");

    let stats = server.stop();
    assert_eq!(stats.connections_refused_per_ip, 2, "{stats}");
}

#[test]
fn a_client_flooding_beyond_its_input_budget_is_closed_and_others_are_not() {
    const FLOOD_BYTES: usize = 1024 * 1024;
    let server = TestServer::start(Config {
        input_bytes_per_s_max: 64 * 1024,
        input_burst_bytes_max: 64 * 1024,
        ..Config::for_tests()
    });
    let mut normal = Client::join(server.room, "normal");
    let mut flooder = Client::join(server.room, "flooder");
    normal.read_through(b"b'flooder' esta conectado ao chat");

    let mut writer = flooder.stream.try_clone().expect("clone");
    // The server closes the flooder midway, so the write may fail: that is the point.
    let write_thread = std::thread::spawn(move || {
        let _ = writer.write_all(&vec![b'.'; FLOOD_BYTES]);
    });
    flooder.expect_closed();
    write_thread.join().expect("writer");
    let seen = normal.read_through(b"b'flooder' acabou de sair do chat!");
    // What the budget let through was relayed; nothing beyond it reached the protocol.
    let relayed = seen.iter().filter(|&&byte| byte == b'.').count();
    assert!(
        relayed <= 64 * 1024,
        "{relayed} bytes of the flood reached the room, over the 64 KiB burst"
    );

    // A client within its budget is served as before.
    for line in 0..20 {
        let message = format!("normal: line {line};");
        normal.send(message.as_bytes());
        normal.read_through(message.as_bytes());
    }
    server.wait_connections(1);
    let stats = server.stop();
    assert_eq!(stats.input_rate_closes, 1, "{stats}");
    assert_eq!(stats.slow_consumer_closes, 0, "{stats}");
    assert!(
        stats.bytes_in < FLOOD_BYTES as u64,
        "the flood was cut short: {stats}"
    );
}

#[test]
fn a_datagram_flood_is_dropped_and_counted_while_members_still_chat() {
    const FLOOD_DATAGRAMS: u64 = 2000;
    const RATE_PER_S: u64 = 50;
    const BURST: u64 = 20;
    let server = TestServer::start(Config {
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        ocm_relay_port: Some(0),
        udp_datagrams_per_source_per_s_max: RATE_PER_S,
        udp_datagrams_per_source_burst_max: BURST,
        ..Config::for_tests()
    });
    let host = Ocm::enter(&server, 1, "lobby", "host");
    let guest = Ocm::enter(&server, 2, "lobby", "guest");
    host.say("before");
    guest.expect("host: before");

    // A flooder on each UDP socket. Its datagrams are queued on the server's socket before
    // the members' next ones, so once those arrive the flood has been dealt with.
    let flooder = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let relay = server.ocm_relay.expect("relay");
    for _ in 0..FLOOD_DATAGRAMS {
        flooder
            .send_to(b"\x05\x40lobbyflood", host.server)
            .expect("flood");
        flooder.send_to(b"flood", relay).expect("flood relay");
    }
    host.say("after");
    guest.expect("host: after");
    // The relay still serves well-behaved peers.
    let peer_a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    peer_a.set_read_timeout(Some(WAIT)).expect("timeout");
    let peer_b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    peer_a.send_to(b"a here", relay).expect("send");
    peer_b.send_to(b"b here", relay).expect("send");
    let mut buf = [0u8; 64];
    loop {
        let (len, _) = peer_a.recv_from(&mut buf).expect("relayed to peer a");
        if &buf[..len] == b"b here" {
            break;
        }
    }

    let stats = server.stop();
    let rate_limited = stats.datagrams_dropped_by_reason[DatagramDrop::RateLimited.index()];
    // Per socket, at most the burst plus the rate over the test's run got through.
    let allowed = 2 * (BURST + RATE_PER_S * 20);
    assert!(
        rate_limited >= 2 * FLOOD_DATAGRAMS - allowed,
        "rate-limited drops: {rate_limited}; {stats}"
    );
    assert!(stats.datagrams_dropped_in >= rate_limited);
}

/// A connection closing after its output is flushed (`CloseMode::AfterFlush`) while its
/// reader never reads: the close must come at `--close-linger-ms`, not wait for a flush that
/// never ends and hold the descriptor for ever.
#[test]
fn a_close_after_flush_to_a_reader_that_never_reads_ends_at_the_linger_time() {
    const LINGER_MS: u64 = 300;
    let server = TestServer::start(Config {
        ccm_port: Some(0),
        close_linger_ms: LINGER_MS,
        // Neither the CCM rate limits nor the slow-consumer limits may close rita first.
        ccm_sender_bytes_per_s_max: 0,
        ccm_pair_bytes_per_s_max: 0,
        // Nor may a keepalive close anyone during the test.
        ccm_keepalive_idle_ms: 60_000,
        ..Config::for_tests()
    });
    let addr = server.ccm.expect("CCM");
    // rita's receive buffer is small, so most of what she is sent stays queued in chatd.
    let mut rita = Client::connect_small(addr, "rita", 4096);
    rita.send(&ccm_identity("rita"));
    rita.read_through(b"Content-Length: 0\n\n");
    let mut sam = Client::connect(addr, "sam");
    sam.send(&ccm_identity("sam"));
    sam.read_through(b"Content-Length: 0\n\n");

    // 704 KiB for rita: more than chatd's socket buffer (--tcp-send-buffer-bytes, 128 KiB,
    // doubled by the kernel) and hers hold, under the 1 MiB soft output limit.
    let body = "r".repeat(64 * 1024);
    for _ in 0..11 {
        sam.send(&ccm_text("rita", &body));
    }
    // sam's texts are handled in order: once his next one is refused, all of rita's are queued.
    sam.send(&ccm_text("nobody", "x"));
    sam.read_through(b"unknown-addressee");

    // A malformed header: CCM answers Error, then closes rita after the flush.
    let asked = Instant::now();
    rita.send(b"CCM\\1.0 Text\nthis line has no colon\n\nx");
    server.wait_connections(1);
    let closed_after = asked.elapsed();
    assert!(
        closed_after >= Duration::from_millis(LINGER_MS),
        "closed after {closed_after:?}: before the linger time, so nothing was waiting to flush"
    );
    // It was rita who was closed: what the kernel held for her, then the end.
    rita.expect_closed();
    // sam is still served.
    sam.send(&ccm_text("nobody", "y"));
    sam.read_through(b"unknown-addressee");
    drop(server);
}

/// `--accepts-per-turn-max`: a burst of connections is taken a few per turn, so one turn
/// never spends itself on accepting. With one per turn, 200 connections cost at least 200
/// turns (the loop comes back to the listener without a new edge), and a member already
/// in the room is served meanwhile.
#[test]
fn a_connect_burst_is_accepted_at_most_accepts_per_turn_max_a_turn() {
    const CONNECTIONS: u64 = 200;
    let server = TestServer::start(Config {
        accepts_per_turn_max: 1,
        admin_port: Some(0),
        ..Config::for_tests()
    });
    let mut member = Client::join(server.room, "member");
    let turns = || loop_turns(&server);
    let turns_before = turns();
    let burst: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(server.room).expect("connect"))
        .collect();
    member.send(b"member: during the burst");
    member.read_through(b"member: during the burst");
    server.wait_connections(CONNECTIONS + 1);
    let turns_taken = turns() - turns_before;
    assert!(
        turns_taken >= CONNECTIONS as f64,
        "{CONNECTIONS} connections accepted in {turns_taken} turns"
    );
    drop(burst);
}

/// `--udp-datagrams-per-turn-max`: a burst of datagrams on one socket is read a few per turn,
/// so other work is served in between. With 4 a turn, 200 datagrams cost at least 50 turns.
#[test]
fn a_datagram_burst_is_read_at_most_udp_datagrams_per_turn_max_a_turn() {
    const DATAGRAMS: u64 = 200;
    const PER_TURN: usize = 4;
    let server = TestServer::start(Config {
        ocm_relay_port: Some(0),
        udp_datagrams_per_turn_max: PER_TURN,
        admin_port: Some(0),
        ..Config::for_tests()
    });
    let relay = server.ocm_relay.expect("relay");
    let turns = || loop_turns(&server);
    let turns_before = turns();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    // Small datagrams: 200 fit in the server's default receive buffer, so none is lost.
    for n in 0..DATAGRAMS {
        socket
            .send_to(format!("d{n}").as_bytes(), relay)
            .expect("send");
    }
    server.wait_metric(
        "chatd_udp_datagrams_received_total{socket=\"ocm-relay\"}",
        DATAGRAMS as f64,
    );
    let turns_taken = turns() - turns_before;
    assert!(
        turns_taken >= (DATAGRAMS / PER_TURN as u64) as f64,
        "{DATAGRAMS} datagrams read in {turns_taken} turns"
    );
}

/// `--udp-sends-per-turn-max`: a fan-out larger than the budget is sent over several turns
/// (the rest waits in the socket's bounded queue), so no turn spends itself on one socket.
/// 50 relay peers joining one by one cause 1,225 sends; at 8 a turn that is at least 153 turns.
#[test]
fn relay_fan_outs_are_sent_at_most_udp_sends_per_turn_max_a_turn() {
    const PEERS: usize = 50;
    const PER_TURN: usize = 8;
    let server = TestServer::start(Config {
        ocm_relay_port: Some(0),
        udp_sends_per_turn_max: PER_TURN,
        admin_port: Some(0),
        ..Config::for_tests()
    });
    let relay = server.ocm_relay.expect("relay");
    let turns = || loop_turns(&server);
    let turns_before = turns();
    // Each peer's first datagram goes to every peer before it: 0 + 1 + ... + 49 sends.
    let peers: Vec<UdpSocket> = (0..PEERS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind UDP"))
        .collect();
    for peer in &peers {
        peer.send_to(b"hi", relay).expect("send");
    }
    let sends = (PEERS * (PEERS - 1) / 2) as f64;
    server.wait_metric(
        "chatd_udp_datagrams_sent_total{socket=\"ocm-relay\"}",
        sends,
    );
    let turns_taken = turns() - turns_before;
    assert!(
        turns_taken >= (sends / PER_TURN as f64).floor(),
        "{sends} sends in {turns_taken} turns"
    );
}

/// The loop turns the server has made (its turn histogram's count, on the admin port).
fn loop_turns(server: &TestServer) -> f64 {
    server
        .metric("chatd_loop_turn_duration_seconds_count")
        .expect("the turn histogram")
}
