//! The wake-up side of the handshake deadline (docs/RELIABILITY.md, "handshake deadline"):
//! the deadline's arithmetic is tested with fabricated time (`src/limits.rs`,
//! `src/protocol/room/tests.rs`); this attacks what they cannot see, that an idle reactor
//! really wakes for the deadline (its poll sleeps until it, not until some later event).
//! Nothing else happens on the server, so a reactor that did not wake for the deadline would
//! close these connections only at its next other event: here, never.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{TempDir, TestServer, WAIT};
use switchboard::config::Config;

const HANDSHAKE_MS: u64 = 150;
/// Silent connections per protocol, opened [`STAGGER`] apart so their deadlines fall at
/// different points of the loop's millisecond and of each other's sleeps.
const PER_PROTOCOL: usize = 5;
const STAGGER: Duration = Duration::from_millis(7);
/// The promise is "less than 2 ms after the deadline plus the loop's wake-up latency"; what a
/// test on a shared 2-core machine can tell apart from scheduling noise is a loop that does
/// not wake for the deadline (late by the next unrelated event: seconds, or never). The
/// median of all closes must be near the deadline, every one within a quarter second.
const MEDIAN_LATE_MAX: Duration = Duration::from_millis(50);
const LATE_MAX: Duration = Duration::from_millis(250);

/// How long after `started` (taken before the connect, so never after the accept) the server
/// first acted on a connection that sends nothing: its first byte (CCM's `Error`, MATOU's
/// ERROR 8) or the close, after the `greeting` it sends at accept (ROOM's `alias?`).
fn first_reaction(
    addr: SocketAddr,
    greeting: &'static [u8],
) -> std::thread::JoinHandle<Result<Duration, String>> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect");
    std::thread::spawn(move || {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut got = vec![0u8; greeting.len()];
        stream.read_exact(&mut got).expect("the greeting");
        assert_eq!(got, greeting);
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(_) => Ok(started.elapsed()),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(started.elapsed()),
            Err(err) => Err(format!("no reaction within {WAIT:?}: {err}")),
        }
    })
}

/// Opens [`PER_PROTOCOL`] silent connections to each of `protocols` (name, address, what the
/// server greets with), staggered, and asserts when the server acted on each; then that each
/// was counted as a handshake timeout.
fn assert_each_closed_at_its_deadline(
    server: TestServer,
    protocols: &[(&'static str, SocketAddr, &'static [u8])],
) {
    let mut waits = Vec::new();
    for _ in 0..PER_PROTOCOL {
        for &(name, addr, greeting) in protocols {
            waits.push((name, first_reaction(addr, greeting)));
        }
        std::thread::sleep(STAGGER);
    }
    let deadline = Duration::from_millis(HANDSHAKE_MS);
    let mut lates = Vec::new();
    for (name, wait) in waits {
        let waited = wait
            .join()
            .expect("reader thread")
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let late = waited.checked_sub(deadline).unwrap_or_else(|| {
            panic!("{name}: the server acted {waited:?} after the connect, before the deadline")
        });
        assert!(
            late < LATE_MAX,
            "{name}: closed {late:?} after the deadline"
        );
        lates.push(late);
    }
    lates.sort();
    let median = lates[lates.len() / 2];
    eprintln!(
        "late after the deadline: median {median:?}, worst {:?}",
        lates[lates.len() - 1]
    );
    assert!(
        median < MEDIAN_LATE_MAX,
        "the median close came {median:?} after the deadline"
    );
    let stats = server.stop();
    assert_eq!(
        stats.handshake_timeouts,
        (PER_PROTOCOL * protocols.len()) as u64,
        "{stats}"
    );
}

/// The reactor's own deadline (`--handshake-timeout-ms`), for the protocols it keeps it for.
/// No ROOM connection: ROOM's timer would wake the loop every tick and hide a missed wake-up.
#[test]
fn an_idle_reactor_wakes_for_each_handshake_deadline_on_every_tcp_protocol() {
    let data = TempDir::new("handshake-wakeup");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        ccm_port: Some(0),
        matou_port: Some(0),
        web_port: Some(0),
        data_dir: data.0.clone(),
        handshake_timeout_ms: HANDSHAKE_MS,
        ..Config::for_tests()
    });
    let protocols = [
        ("BIN24", server.bin24.expect("BIN24"), &b""[..]),
        ("CCM", server.ccm.expect("CCM"), &b""[..]),
        ("MATOU", server.matou.expect("MATOU"), &b""[..]),
        ("WEB", server.web.expect("WEB"), &b""[..]),
    ];
    assert_each_closed_at_its_deadline(server, &protocols);
}

/// ROOM keeps its own deadline (`--room-handshake-timeout-ms`) in its timer wheel; the
/// reactor must wake for the wheel's next deadline too.
#[test]
fn an_idle_reactor_wakes_for_each_room_alias_deadline() {
    let server = TestServer::start(Config {
        room_handshake_timeout_ms: HANDSHAKE_MS,
        ..Config::for_tests()
    });
    let protocols = [("ROOM", server.room, &b"alias?"[..])];
    assert_each_closed_at_its_deadline(server, &protocols);
}
