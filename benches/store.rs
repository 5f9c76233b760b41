//! Offline store throughput through the real storage thread and real files (durable commits).
//!
//! - `append/group_commit/N`: a burst of 512 appends submitted at once, waited for until every
//!   one is `Appended` (durable), with at most N requests per transaction: N = 1 is one fsync per
//!   message, N = 512 is the default.
//! - `drain/load_remove_10000`: what a reconnect costs: `Load` of a user's 10,000 frames then one
//!   `Remove` of all of them, waited for until both are done (filling the store is not timed).
//!
//! Run by hand with `cargo bench --bench store` (about a minute and a half); CI only builds it.
//! Results read as elements/s: messages appended, or frames loaded and removed, per second.
//! The files live in the system temp dir, so the figures are that disk's fsync.

// Benches may unwrap, expect and panic: a failed assumption is a failed run (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard::store::{OfflineStore, StoreConfig, StoreEvent, StoreRequest};

const BURST: usize = 512;
const GROUP_COMMIT_SIZES: [usize; 3] = [1, 64, 512];
const DRAIN_FRAMES: usize = 10_000;
/// Users the append bursts rotate over.
const USERS: usize = 64;
/// A BIN24 frame of typical size: 24-byte header and a short text.
const FRAME_BYTES: usize = 100;
/// No wait in a bench may take longer; a hang is a failure, not a slow figure.
const WAIT: Duration = Duration::from_secs(60);

/// A store in its own temp dir (removed on drop) and the receiving end of its wake callback.
struct Bench {
    // Dropped before the dir is removed: fields drop in declaration order.
    store: Option<OfflineStore>,
    woken: Receiver<()>,
    dir: PathBuf,
    next_ticket: u64,
    frame: Bytes,
    users: Vec<Vec<u8>>,
}

impl Bench {
    fn open(group_commit_max: usize) -> Bench {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-store-bench-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (tx, woken) = mpsc::channel();
        let config = StoreConfig {
            data_dir: dir.clone(),
            frames_per_user_max: u64::MAX,
            bytes_per_user_max: u64::MAX,
            frames_max: u64::MAX,
            bytes_max: u64::MAX,
            group_commit_max,
        };
        let store = OfflineStore::open(
            config,
            Box::new(move || {
                let _ = tx.send(());
            }),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut frame = vec![b'm'; FRAME_BYTES];
        frame[0..2].copy_from_slice(&(FRAME_BYTES as u16).to_le_bytes());
        frame[2..4].copy_from_slice(&2u16.to_le_bytes());
        Bench {
            store: Some(store),
            woken,
            dir,
            next_ticket: 0,
            frame: Bytes::from(frame),
            users: (0..USERS)
                .map(|u| format!("user{u}").into_bytes())
                .collect(),
        }
    }

    fn store(&self) -> &OfflineStore {
        self.store.as_ref().expect("open")
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    fn next_event(&self) -> StoreEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(event) = self.store().try_recv() {
                return event;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.woken.recv_timeout(left).expect("store event in time");
        }
    }

    fn append_burst(&mut self, count: usize, user: Option<&[u8]>) -> Vec<u64> {
        for i in 0..count {
            let ticket = self.ticket();
            let user = user.unwrap_or(&self.users[i % USERS]).to_vec();
            let frame = self.frame.clone();
            self.store().submit(StoreRequest::Append {
                ticket,
                user,
                frame,
            });
        }
        (0..count)
            .map(|_| match self.next_event() {
                StoreEvent::Appended { seq, .. } => seq,
                other => panic!("append: {other:?}"),
            })
            .collect()
    }

    /// Load `user`'s frames and remove them all; returns how many there were.
    fn drain(&mut self, user: &[u8]) -> usize {
        let ticket = self.ticket();
        self.store().submit(StoreRequest::Load {
            ticket,
            user: user.to_vec(),
            after_seq: 0,
            bytes_max: usize::MAX,
        });
        let frames = match self.next_event() {
            StoreEvent::Loaded { frames, .. } => frames,
            other => panic!("load: {other:?}"),
        };
        let seqs = frames.iter().map(|&(seq, _)| seq).collect();
        self.store().submit(StoreRequest::Remove {
            user: user.to_vec(),
            seqs,
        });
        let deadline = Instant::now() + WAIT;
        while self.store().pending() > 0 {
            assert!(Instant::now() < deadline, "remove not done in time");
            let _ = self.woken.recv_timeout(Duration::from_millis(1));
        }
        frames.len()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            if let Err(e) = store.close() {
                eprintln!("{e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(BURST as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    for size in GROUP_COMMIT_SIZES {
        let mut bench = Bench::open(size);
        group.bench_with_input(BenchmarkId::new("group_commit", size), &size, |b, _| {
            b.iter(|| bench.append_burst(BURST, None))
        });
        let commits = bench.store().commits();
        let appends = bench.next_ticket;
        eprintln!(
            "append/group_commit/{size}: {appends} appends in {commits} commits ({:.1} per commit)",
            appends as f64 / commits.max(1) as f64
        );
    }
    group.finish();
}

fn drain(c: &mut Criterion) {
    let mut group = c.benchmark_group("drain");
    group.throughput(Throughput::Elements(DRAIN_FRAMES as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(8));
    let mut bench = Bench::open(512);
    let user = b"drained".to_vec();
    group.bench_function("load_remove_10000", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                bench.append_burst(DRAIN_FRAMES, Some(&user));
                let started = Instant::now();
                let drained = bench.drain(&user);
                timed += started.elapsed();
                assert_eq!(drained, DRAIN_FRAMES);
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(benches, append, drain);
criterion_main!(benches);
