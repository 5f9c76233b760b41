//! A flood on one protocol while another is timed, over real sockets (docs/RELIABILITY.md, "No
//! client can stall or starve the others"): the attacks tests/fairness.rs does not make.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bin24::Bin24;
use common::{Client, TempDir, TestServer};
use switchboard::config::Config;

/// The witness's worst echo allowed. As in tests/fairness.rs: the target is 50 ms, and this
/// debug build on a shared 2-core machine asserts what tells a stall from scheduling noise.
const WITNESS_MAX: Duration = Duration::from_millis(200);
const WITNESS_PERIOD: Duration = Duration::from_millis(50);

/// A ROOM member sending a line every [`WITNESS_PERIOD`] until `stop`, timing each echo and
/// counting them in `timed`; every echo's time, in order.
fn time_echoes(mut witness: Client, stop: &AtomicBool, timed: &AtomicUsize) -> Vec<Duration> {
    let mut echoes = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let line = format!("witness {}\n", timed.load(Ordering::SeqCst));
        let sent = Instant::now();
        witness.send(line.as_bytes());
        witness.read_through(line.as_bytes());
        echoes.push(sent.elapsed());
        timed.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(WITNESS_PERIOD.saturating_sub(sent.elapsed()));
    }
    echoes
}

/// Waits (bounded) until the witness has timed `count` echoes in all.
fn wait_for_echoes(timed: &AtomicUsize, count: usize) {
    let deadline = Instant::now() + common::WAIT;
    while timed.load(Ordering::SeqCst) < count {
        assert!(Instant::now() < deadline, "the witness stopped echoing");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// BIN24 senders flood offline users, unthrottled: every frame is a store append, made durable
/// by the storage thread with an fsync per group commit, and answered "300" when the commit
/// completes; the store's queue fills and BIN24's reading pauses. None of that may hold the loop
/// (ARCHITECTURE.md, "The offline store": the reactor never waits for the disk): a ROOM member
/// times its echo all along, and every frame is answered "300".
#[test]
fn a_flood_of_stored_bin24_frames_does_not_slow_a_room_member() {
    const SENDERS: usize = 2;
    const FRAMES: usize = 3000;
    let data = TempDir::new("attack-fairness-store");
    let server = TestServer::start(Config {
        bin24_port: Some(0),
        data_dir: data.0.clone(),
        // A small queue: the senders are paused often, as a long flood would be.
        store_requests_max: 64,
        ..Config::for_tests()
    });
    let bin24 = server.bin24.expect("BIN24 enabled");
    let witness = Client::join(server.room, "witness");
    let stop = Arc::new(AtomicBool::new(false));
    let timed = Arc::new(AtomicUsize::new(0));
    let timing = {
        let (stop, timed) = (Arc::clone(&stop), Arc::clone(&timed));
        std::thread::spawn(move || time_echoes(witness, &stop, &timed))
    };
    // A few echoes before the flood, the rest during it.
    wait_for_echoes(&timed, 3);

    let flooders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            std::thread::spawn(move || {
                let name = format!("flood{sender}");
                let mut client = Bin24::connect(bin24, &name);
                let mut answers = Bin24::wrap(client.stream.try_clone().expect("clone"), "answers");
                let reader = std::thread::spawn(move || {
                    (0..FRAMES)
                        .filter(|_| answers.recv().body == b"300")
                        .count()
                });
                let body = "f".repeat(1000);
                for index in 0..FRAMES {
                    client.send(&format!("off{}", index % 500), &body);
                }
                reader.join().expect("answers")
            })
        })
        .collect();
    let stored: usize = flooders
        .into_iter()
        .map(|flooder| flooder.join().expect("flooder"))
        .sum();
    let echoes = timed.load(Ordering::SeqCst) + 3;
    wait_for_echoes(&timed, echoes);
    stop.store(true, Ordering::SeqCst);
    let mut echoes = timing.join().expect("witness");
    echoes.sort();
    let count = echoes.len();
    let worst = echoes[count - 1];
    // A stalled loop delays every echo while the flood lasts; a loaded machine, a few.
    let late = echoes.iter().filter(|&&echo| echo >= WITNESS_MAX).count();
    eprintln!(
        "{stored} frames answered \"300\"; the ROOM witness: {count} echoes, median {:?}, \
         worst {worst:?}, {late} of them {WITNESS_MAX:?} or more",
        echoes[count / 2]
    );
    assert_eq!(stored, SENDERS * FRAMES, "every frame answered \"300\"");
    assert!(count >= 5, "only {count} echoes");
    assert!(
        late * 10 <= count,
        "{late} of the ROOM witness's {count} echoes took {WITNESS_MAX:?} or more during the \
         flood (worst {worst:?})"
    );
    server.stop();
}
