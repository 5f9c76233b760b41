//! No client can stall or starve the others (issue 15), over real sockets: each attack of the
//! issue runs against the server with default limits while witnesses (a ROOM member and a
//! MATOU member, each sending a message every 50 ms and timing its echo) measure what everyone
//! else sees; the test asserts their worst echo, and reads the server's counters to see the
//! limit that held.
//!
//! Every attack is bounded in size and time; each was sized to fail against the server before
//! the limit it tests (numbers in docs/RELIABILITY.md).

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::matou::{packet, string, Matou};
use common::{Client, TestServer, WAIT};
use switchboard::config::Config;
use switchboard::protocol::DatagramDrop;

/// The attacks are run one at a time, whatever the test harness's threads: one test's attack
/// must not be measured by another's witnesses.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The witnesses' echo limit during attacks 1 and 2 (see [`Witnesses::finish`]). The target is 50 ms, and
/// release builds meet it with room to spare (docs/RELIABILITY.md); this test runs a debug
/// build on a shared 2-core machine, where a loaded moment alone has cost 80 ms, so it asserts
/// what tells a stall from scheduling noise: before the limits, attack 2 stalled the loop for
/// 250 to 736 ms and attack 1 for seconds.
const WITNESS_MAX: Duration = Duration::from_millis(200);
const WITNESS_PERIOD: Duration = Duration::from_millis(50);

/// A ROOM member and a MATOU member, each on its own thread, sending a message every
/// [`WITNESS_PERIOD`] and timing how long its echo takes; they stop when told and report
/// their worst echo.
struct Witnesses {
    stop: Arc<AtomicBool>,
    threads: Vec<(&'static str, JoinHandle<Vec<Duration>>)>,
}

impl Witnesses {
    fn start(server: &TestServer) -> Witnesses {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut room = Client::join(server.room, "witness");
        let room_stop = Arc::clone(&stop);
        threads.push((
            "ROOM",
            std::thread::spawn(move || {
                echo_loop(&room_stop, |n, until| {
                    let line = format!("witness {n}\n");
                    room.send(line.as_bytes());
                    room.read_through(line.as_bytes());
                    let echoed = Instant::now();
                    // A well-behaved member reads everything the room sends it, all the time.
                    drain_until(&mut room, until);
                    echoed
                })
            }),
        ));
        if let Some(matou) = server.matou {
            let mut peer = Matou::sign_in_at(matou, "witness");
            let matou_stop = Arc::clone(&stop);
            threads.push((
                "MATOU",
                std::thread::spawn(move || {
                    echo_loop(&matou_stop, |n, _| {
                        let message = format!("echo {n}");
                        peer.send(&packet(4, &[&string(message.as_bytes())]));
                        peer.await_broadcast("witness", &message);
                        Instant::now()
                    })
                }),
            ));
        }
        Witnesses { stop, threads }
    }

    /// Stops the witnesses and asserts that each one's echoes but its worst were under `max`,
    /// and its worst under twice `max`. An attack that stalls the loop does so turn after turn
    /// while it lasts (before the limits, attack 2's worst echo was 655-736 ms and attack 1's
    /// seconds, with the slow ones many), whereas a debug build on a busy 2-core machine may
    /// lose one echo to the scheduler now and then (CI once saw 214 ms against 200, every
    /// other echo fast): one such echo is noise, two, or one over twice the limit, a stall.
    fn finish(self, max: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        for (protocol, thread) in self.threads {
            let mut echoes = thread.join().expect("witness panicked");
            echoes.sort_unstable();
            let count = echoes.len();
            let worst = echoes.last().copied().unwrap_or_default();
            let second = echoes.iter().rev().nth(1).copied().unwrap_or_default();
            eprintln!("{protocol} witness: {count} echoes, worst {worst:?}, second {second:?}");
            assert!(count >= 5, "{protocol} witness: only {count} echoes");
            assert!(
                second < max && worst < max * 2,
                "{protocol} witness waited {worst:?} and {second:?} for its two slowest echoes \
                 (limits {:?} and {max:?})",
                max * 2
            );
        }
    }
}

/// Calls `echo(n, until)` every [`WITNESS_PERIOD`]; it sends message `n`, returns when its
/// echo arrived, and may go on reading until `until`. Returns how long each echo took.
fn echo_loop(stop: &AtomicBool, mut echo: impl FnMut(usize, Instant) -> Instant) -> Vec<Duration> {
    let mut echoes = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let until = sent + WITNESS_PERIOD;
        let echoed = echo(echoes.len(), until);
        echoes.push(echoed - sent);
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
    }
    echoes
}

/// Reads and discards whatever arrives until `until`.
fn drain_until(client: &mut Client, until: Instant) {
    client.received.clear();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        client.stream.set_read_timeout(Some(left)).expect("timeout");
        match client.stream.read(&mut buf) {
            Ok(0) => panic!("{}: closed by the server", client.name),
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(err) => panic!("{}: {err}", client.name),
        }
    }
    client.stream.set_read_timeout(Some(WAIT)).expect("timeout");
}

/// Default limits, with ROOM and MATOU for the witnesses and whatever else `tweak` enables.
fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config {
        matou_port: Some(0),
        ..Config::for_tests()
    };
    tweak(&mut config);
    TestServer::start(config)
}

/// Loopback address number `n` (127.1.x.y): each its own host, as far as per-IP limits go.
fn loopback(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, 1 + (n % 250) as u8))
}

/// Attack 1: thousands of UDP sockets each send a few 5-byte datagrams to the stage-1 relay.
/// Without a fan-out budget every new socket's datagram goes to every earlier one: n sockets
/// cost n^2/2 sends (4,000 sockets, 8 million sends, seconds of stall). Spread over 40
/// addresses so the per-IP peer limit alone does not stop it.
#[test]
fn relay_amplification_does_not_stall_the_loop() {
    let _serial = one_at_a_time();
    let server = server_with(|config| config.ocm_relay_port = Some(0));
    let relay = server.ocm_relay.expect("relay enabled");
    let witnesses = Witnesses::start(&server);
    std::thread::sleep(WITNESS_PERIOD * 2);

    const SOCKETS: usize = 4_000;
    const PER_IP: usize = 100;
    let sockets: Vec<UdpSocket> = (0..SOCKETS)
        .map(|n| UdpSocket::bind((loopback(n / PER_IP), 0)).expect("bind UDP"))
        .collect();
    let started = Instant::now();
    for round in 0..3 {
        for socket in &sockets {
            // A full buffer on our side is fine: the attack is what arrives.
            let _ = socket.send_to(b"hello", relay);
        }
        eprintln!("round {round} sent at {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    witnesses.finish(WITNESS_MAX);

    let stats = server.stop();
    let budget = stats.datagrams_dropped_by_reason[DatagramDrop::FanoutBudget.index()];
    eprintln!(
        "relay: {} datagrams in, {} relayed, {} sends, {budget} refused for the fan-out budget",
        stats.datagrams_in, stats.datagrams_accepted, stats.datagrams_out
    );
    // What held depends on the machine's speed: the per-turn send budget leaves what it
    // cannot serve in the socket's receive buffer (the kernel drops the overflow), and the
    // fan-out budget caps what is sent at 250,000 a second with one second's worth at once.
    // Either way, about a second of attack cannot have caused more than that.
    assert!(
        stats.datagrams_out < 2 * 250_000,
        "{} sends",
        stats.datagrams_out
    );
    assert!(stats.datagrams_out > 0, "the relay served the attack too");
}

/// Writes `chunk` again and again for a second at `bytes_per_s`, sampling the kernel's TCP
/// memory every `sample_every_bytes`; the bytes sent (a write failing ends it early: the server
/// closed the flooder) and the highest sample.
fn flood_for_a_second(
    flooder: &mut Client,
    chunk: &[u8],
    bytes_per_s: usize,
    sample_every_bytes: usize,
) -> (usize, u64) {
    let started = Instant::now();
    let mut kernel_peak = 0;
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(1) {
        let due = Duration::from_secs_f64(sent as f64 / bytes_per_s as f64);
        if let Some(early) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(early);
        }
        if let Err(err) = flooder.stream.write_all(chunk) {
            eprintln!("flooder closed after {:?}: {err}", started.elapsed());
            break;
        }
        sent += chunk.len();
        if sent % sample_every_bytes < chunk.len() {
            kernel_peak = kernel_peak.max(kernel_tcp_bytes());
        }
    }
    (sent, kernel_peak)
}

/// Kernel memory of all TCP sockets on the machine, from /proc/net/sockstat (in pages).
fn kernel_tcp_bytes() -> u64 {
    // Unreadable or unparsable is a failure, not 0: a bound measured as 0 cannot fail.
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").expect("read /proc/net/sockstat");
    let pages = sockstat
        .lines()
        .find(|line| line.starts_with("TCP:"))
        .and_then(|line| line.split_whitespace().skip_while(|&w| w != "mem").nth(1))
        .and_then(|pages| pages.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no TCP mem in /proc/net/sockstat: {sockstat}"));
    pages * 4096
}

/// Attack 2: 200 ROOM members that never read, and one member sending as fast as it can for a
/// second. Every chunk goes to every member: the slow ones fill their kernel buffers and then
/// their queues until the output limit closes them, which must neither stall the loop (each
/// turn used to write up to 4 MiB of autotuned kernel buffer to each of them: 0.25-0.5 s turns)
/// nor cost unbounded kernel memory.
#[test]
fn slow_members_and_a_flooder_do_not_stall_the_fanout() {
    let _serial = one_at_a_time();
    let server = server_with(|_| {});
    let kernel_before = kernel_tcp_bytes();
    let witnesses = Witnesses::start(&server);
    std::thread::sleep(WITNESS_PERIOD * 2);

    const SLOW: usize = 200;
    let slow: Vec<TcpStream> = (0..SLOW)
        .map(|n| {
            let mut stream = TcpStream::connect(server.room).expect("connect");
            stream
                .write_all(format!("slow{n}").as_bytes())
                .expect("alias");
            stream
        })
        .collect();
    server.wait_connections(SLOW as u64 + 2);
    let mut flooder = Client::join(server.room, "flooder");
    let mut reader = flooder.stream.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    // 8 MiB/s, in 1 KiB chunks: far under the input limit (64 MiB/s), and every chunk goes to
    // 202 members.
    let (sent, kernel_peak) = flood_for_a_second(&mut flooder, &[b'f'; 1024], 8 << 20, 1 << 20);
    witnesses.finish(WITNESS_MAX);
    let kernel_growth = kernel_peak.saturating_sub(kernel_before);
    eprintln!(
        "flooder sent {} KiB; kernel TCP memory {} MiB before, peak {} MiB",
        sent / 1024,
        kernel_before >> 20,
        kernel_peak >> 20
    );
    let _ = flooder.stream.shutdown(std::net::Shutdown::Both);
    drop(slow);
    let _ = drain.join();
    let stats = server.stop();
    eprintln!("{stats}");
    // The target is 128 MiB with 200 slow members; the machine's other sockets count
    // too, so this asserts the growth during the attack.
    assert!(
        kernel_growth < 128 << 20,
        "kernel TCP memory grew by {} MiB",
        kernel_growth >> 20
    );
}

/// Attack 2 across the switchboard: the slow members are CCM and MATOU users in the lobby
/// who never read, and the flood is ROOM lines short enough to cross (each reaches every one
/// of them in its own wire form). What crosses goes through each recipient's own output
/// limits: the loop must not stall, the witnesses keep their echo, and kernel memory stays
/// bounded. (With the kernel's autotuned send buffers and no output limit, the ROOM
/// witness waited 883 ms.)
#[test]
fn slow_members_of_other_protocols_and_a_room_flooder_do_not_stall_the_lobby() {
    let _serial = one_at_a_time();
    let server = server_with(|config| config.ccm_port = Some(0));
    let kernel_before = kernel_tcp_bytes();
    let witnesses = Witnesses::start(&server);
    std::thread::sleep(WITNESS_PERIOD * 2);

    const SLOW_PER_PROTOCOL: usize = 100;
    let ccm = server.ccm.expect("CCM");
    let matou = server.matou.expect("MATOU");
    let mut slow_ccm = Vec::new();
    let mut slow_matou = Vec::new();
    for n in 0..SLOW_PER_PROTOCOL {
        let mut user = Client::connect(ccm, &format!("slowc{n}"));
        user.send(format!("CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\n\nslowc{n}").as_bytes());
        user.read_through(b"Content-Length: 0\n\n");
        slow_ccm.push(user);
        slow_matou.push(Matou::sign_in_at(matou, &format!("slowm{n}")));
    }
    server.wait_connections(2 * SLOW_PER_PROTOCOL as u64 + 2);
    let mut flooder = Client::join(server.room, "flooder");
    let mut reader = flooder.stream.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    // 400-byte lines: under MATOU's 512-byte public message once the sender's name is added.
    let mut line = [b'f'; 400];
    line[399] = b'\n';
    let (sent, kernel_peak) = flood_for_a_second(&mut flooder, &line, 4 << 20, 256 * 1024);
    witnesses.finish(WITNESS_MAX);
    let kernel_growth = kernel_peak.saturating_sub(kernel_before);
    eprintln!(
        "flooder sent {} KiB; kernel TCP memory {} MiB before, peak {} MiB",
        sent / 1024,
        kernel_before >> 20,
        kernel_peak >> 20
    );
    let _ = flooder.stream.shutdown(std::net::Shutdown::Both);
    drop(slow_ccm);
    drop(slow_matou);
    let _ = drain.join();
    let stats = server.stop();
    eprintln!("{stats}");
    assert!(
        kernel_growth < 128 << 20,
        "kernel TCP memory grew by {} MiB",
        kernel_growth >> 20
    );
    assert!(
        stats.bytes_out > 2 * (SLOW_PER_PROTOCOL as u64) * 100 * 1024,
        "the flood did not reach the lobby members: {stats}"
    );
}

/// Attack 5: PRIVATE_REQUEST to one victim, as fast as the flooder can write, for a second
/// while the victim is not reading. Each request used to notify the victim again (13.6 MiB in
/// a second), and the victim was closed as a slow consumer. Now the pair's rate lets through
/// a couple, the flooder gets ERROR 12 for the rest, and the victim stays.
#[test]
fn a_private_request_flood_is_cut_at_its_sender_and_the_victim_stays() {
    let _serial = one_at_a_time();
    let server = server_with(|_| {});
    let matou = server.matou.expect("MATOU");
    let witnesses = Witnesses::start(&server);
    let mut victim = Matou::sign_in_at(matou, "victim");
    let mut flooder = Matou::sign_in_at(matou, "mallory");

    let mut reader = flooder.stream.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let request = packet(6, &[&string(b"victim")]);
    let batch: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(request.len() * 1000)
        .collect();
    let started = Instant::now();
    let mut requests = 0usize;
    while started.elapsed() < Duration::from_secs(1) {
        if flooder.stream.write_all(&batch).is_err() {
            // Closed for not reading its ERRORs fast enough; the witnesses go on to the end.
            std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            break;
        }
        requests += 1000;
    }
    let _ = flooder.stream.shutdown(std::net::Shutdown::Both);
    let flooder_received = drain.join().expect("drain");
    // The issue sets no latency target for this attack; the witnesses show there was no stall
    // (in a debug build a turn that reads 256 KiB of 14-byte requests takes about 0.1 s).
    witnesses.finish(Duration::from_millis(500));

    // The victim reads only now: a couple of notifications, then mallory's departure (among
    // mallory's arrival and the witness's messages), and it is still served.
    let mut notifications = 0;
    loop {
        match victim.int() {
            3 => {
                victim.string();
            }
            5 => {
                victim.string();
                victim.string();
            }
            7 => {
                assert_eq!(victim.string(), "mallory");
                notifications += 1;
            }
            16 => {
                if victim.string() == "mallory" {
                    break;
                }
            }
            other => panic!("victim: unexpected packet type {other}"),
        }
    }
    victim.send(&packet(4, &[&string(b"still here")]));
    victim.await_broadcast("victim", "still here");
    eprintln!(
        "mallory sent {requests} requests, received {flooder_received} bytes; the victim got \
         {notifications} notifications"
    );
    assert!(notifications <= 4, "{notifications} notifications");
    // Mallory itself may have been closed for not reading its ERRORs fast enough: its own
    // output, its own problem. Nobody else was.
    let stats = server.stop();
    assert!(stats.slow_consumer_closes <= 1, "{stats}");
}

/// A TCP connection from `source` (any port) to `server`.
fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind source");
    socket.connect(&server.into()).expect("connect");
    socket.into()
}

/// Attack 4: silent connections from a few addresses fill the connection cap. A newcomer used
/// to wait in the backlog until the silent ones' handshake deadline (ROOM's is 60 s; 68 s in
/// the issue). Now the oldest connection still in its handshake is evicted for it. The cap is
/// 400 here (not 10,000) so the test needs few descriptors; the rule does not depend on it.
#[test]
fn a_newcomer_at_the_connection_cap_is_served_at_once() {
    let _serial = one_at_a_time();
    const CAP: usize = 400;
    let server = server_with(|config| config.connections_max = CAP);
    // 8 addresses, 50 silent connections each: within the per-IP limit.
    let mut silent: Vec<TcpStream> = (0..CAP)
        .map(|n| connect_from(loopback(1000 + n / 50), server.room))
        .collect();
    server.wait_connections(CAP as u64);

    let started = Instant::now();
    let mut newcomer = Client::connect(server.room, "newcomer");
    newcomer.expect(b"alias?");
    let waited = started.elapsed();
    newcomer.send(b"newcomer");
    newcomer.expect(b"b'newcomer' esta conectado ao chat");
    newcomer.expect(b"Voce esta conectado ao servidor!");
    eprintln!("newcomer got alias? after {waited:?}");
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");

    // The flood goes on; the newcomer, past its handshake, is never the one evicted.
    silent.extend((0..CAP).map(|n| connect_from(loopback(2000 + n / 50), server.room)));
    newcomer.send(b"still here");
    newcomer.read_through(b"still here");
    drop(silent);
    let stats = server.stop();
    eprintln!("{stats}");
    assert!(stats.handshake_evictions >= CAP as u64, "{stats}");
}

/// A TCRP create (operation 1) of `room` by `name`, from `source`; returns the answer's JSON.
fn tcrp_create(server: SocketAddr, source: IpAddr, room: &str, name: &str) -> String {
    let payload = format!("{{\"user_name\": \"{name}\", \"user_address\": [\"{source}\", 40000]}}");
    let mut request = vec![room.len() as u8, 1, 0];
    request.extend_from_slice(&[0u8; 21]);
    request.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    request.extend_from_slice(room.as_bytes());
    request.extend_from_slice(payload.as_bytes());
    let mut stream = connect_from(source, server);
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(&request).expect("request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("answer");
    String::from_utf8_lossy(answer.get(32..).unwrap_or_default()).into_owned()
}

/// Attack 3: one address creating rooms as fast as it can used to take all 10,000 and lock
/// everyone else out for the 600 s idle timeout. Now it gets 32, and others still create.
#[test]
fn one_address_cannot_take_every_ocm_room() {
    let _serial = one_at_a_time();
    let server = server_with(|config| {
        config.ocm_tcp_port = Some(0);
        config.ocm_udp_port = Some(0);
        config.admin_port = Some(0);
    });
    let tcrp = server.ocm_tcp.expect("OCM");
    let attacker = loopback(3000);
    let answers: Vec<String> = (0..100)
        .map(|n| tcrp_create(tcrp, attacker, &format!("room{n}"), "host"))
        .collect();
    let created = answers.iter().filter(|a| a.contains("202")).count();
    assert_eq!(created, 32, "{:?}", answers.last());
    assert!(answers[99].contains("500"), "{}", answers[99]);
    let other = tcrp_create(tcrp, loopback(3001), "mine", "alice");
    assert!(other.contains("202"), "{other}");
}

/// A TCRP request (`operation` 1 create, 2 join) of `room` by `name` whose chat goes to `udp`;
/// returns the member's token.
fn tcrp_enter(
    server: SocketAddr,
    operation: u8,
    room: &str,
    name: &str,
    udp: SocketAddr,
) -> String {
    let payload = format!(
        "{{\"user_name\": \"{name}\", \"user_address\": [\"{}\", {}]}}",
        udp.ip(),
        udp.port()
    );
    let mut request = vec![room.len() as u8, operation, 0];
    request.extend_from_slice(&[0u8; 21]);
    request.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    request.extend_from_slice(room.as_bytes());
    request.extend_from_slice(payload.as_bytes());
    let mut stream = TcpStream::connect(server).expect("connect TCRP");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(&request).expect("request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("answer");
    let json = String::from_utf8_lossy(answer.get(32..).unwrap_or_default()).into_owned();
    let at = json
        .find("\"token\": \"")
        .unwrap_or_else(|| panic!("{name}: no token in {json}"))
        + 10;
    json[at..at + 64].to_string()
}

/// Attack 1, OCM's variant: a full room, and one member sending 4 KB datagrams as fast as it
/// can. Each went to every member (a 2,000-member room and 2,000 datagrams stalled the loop
/// for over 2 s); the room is now at most 1,000 members, and the sender's fan-outs are held to
/// 20,000 sends a second.
#[test]
fn a_full_ocm_room_flooded_with_large_datagrams_does_not_stall_the_loop() {
    let _serial = one_at_a_time();
    let server = server_with(|config| {
        config.ocm_tcp_port = Some(0);
        config.ocm_udp_port = Some(0);
        config.admin_port = Some(0);
    });
    let (tcrp, chat) = (
        server.ocm_tcp.expect("OCM"),
        server.ocm_udp.expect("OCM UDP"),
    );
    const MEMBERS: usize = 1_000;
    let sockets: Vec<UdpSocket> = (0..MEMBERS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind UDP"))
        .collect();
    let addr = |n: usize| sockets[n].local_addr().expect("addr");
    let host_token = tcrp_enter(tcrp, 1, "big", "m0", addr(0));
    for n in 1..MEMBERS {
        tcrp_enter(tcrp, 2, "big", &format!("m{n}"), addr(n));
    }
    let witnesses = Witnesses::start(&server);
    std::thread::sleep(WITNESS_PERIOD * 2);

    let mut datagram = vec![3u8, 64];
    datagram.extend_from_slice(b"big");
    datagram.extend_from_slice(host_token.as_bytes());
    datagram.extend_from_slice(&[b'x'; 4000]);
    let refused = || {
        server
            .metric(
                "chatd_udp_datagrams_dropped_total{socket=\"ocm-udp\",reason=\"fanout_budget\"}",
            )
            .unwrap_or(0.0)
    };
    let started = Instant::now();
    let mut sent = 0u32;
    // 2,000 datagrams in about a second, and on until the budget has refused one: on a loaded
    // machine the kernel drops most of a burst before the loop reads it, so a fixed count
    // may never reach the budget (seen: 16 of 2,000 read).
    while sent < 2_000 || refused() == 0.0 {
        assert!(
            started.elapsed() < WAIT,
            "the fan-out budget never refused a datagram"
        );
        let _ = sockets[0].send_to(&datagram, chat);
        sent += 1;
        if sent.is_multiple_of(100) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    witnesses.finish(WITNESS_MAX);
    let stats = server.stop();
    let attack_s = started.elapsed().as_secs_f64();
    let budget = stats.datagrams_dropped_by_reason[DatagramDrop::FanoutBudget.index()];
    eprintln!(
        "{sent} datagrams of 4 KB to a room of {MEMBERS}: {} in, {} relayed, {} sends, {budget} \
         refused for the fan-out budget",
        stats.datagrams_in, stats.datagrams_accepted, stats.datagrams_out
    );
    // 20,000 sends a second for one source, a second's worth at once: whole fan-outs only.
    let allowed = 20_000.0 * (1.0 + attack_s);
    assert!(
        (stats.datagrams_out as f64) <= allowed,
        "{} sends in {attack_s:.2} s",
        stats.datagrams_out
    );
    let attempted =
        stats.datagrams_out + stats.datagrams_send_dropped + stats.datagrams_send_failed;
    assert!(
        attempted.is_multiple_of(MEMBERS as u64 - 1),
        "whole fan-outs: {attempted}"
    );
    assert!(budget > 0);
}
