//! The offline store's durability promises, attacked through the disk itself: the store runs on
//! a redb storage backend that wraps the real file and can fail its writes or its syncs, hold a
//! sync, and record every write and completed sync (`OfflineStore::open_on_backend`).
//!
//! - A store I/O failure answers "507"; "300" is never sent for a frame that is not durable
//!   (docs/PROTOCOLS.md, BIN24 rule 7): the failing commit fails every request of its batch, the
//!   file holds that batch whole or not at all, the store then refuses clearly (it is stopped
//!   until a restart), and a restart serves again with nothing acknowledged lost.
//! - "300" means on disk: every `Appended` event (what makes BIN24 answer "300") comes after a
//!   completed sync that followed the write of that frame's bytes.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use switchboard::protocol::bin24::codec::{self, Name};
use switchboard::protocol::bin24::{Bin24Config, Bin24Service};
use switchboard::protocol::testing::RecordingOutbox;
use switchboard::protocol::ConnId;
use switchboard::store::{
    OfflineStore, StoreConfig, StoreError, StoreEvent, StoreRequest, FILE_NAME,
};

/// How long any single wait may take before the test fails (a hang is a failure).
const WAIT: Duration = Duration::from_secs(30);

/// A fresh directory under the system temp dir, unique per process and test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-store-faults-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Which calls the backend fails once armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Writes,
    Syncs,
}

#[derive(Debug)]
enum Op {
    /// A write that reached the file, with its bytes.
    Write(Vec<u8>),
    /// A sync of the file that returned Ok.
    SyncDone,
    /// The test took the `Appended` event of this ticket.
    Seen(u64),
}

#[derive(Debug, Default)]
struct Disk {
    /// Once armed, `calls_before_fault` more calls of that kind succeed, then every one fails
    /// (a disk that has gone bad stays bad).
    fault: Option<(Fault, u64)>,
    failures: u64,
    record: bool,
    ops: Vec<Op>,
    /// While set, a sync waits before it reaches the file (the commit calling it is held).
    hold_syncs: bool,
    syncs_waiting: usize,
}

impl Disk {
    fn fails(&mut self, kind: Fault) -> bool {
        match &mut self.fault {
            Some((armed, left)) if *armed == kind => {
                if *left == 0 {
                    self.failures += 1;
                    true
                } else {
                    *left -= 1;
                    false
                }
            }
            _ => false,
        }
    }
}

/// The test's handle on what the backend does; shared with the backend the store owns.
#[derive(Clone, Debug, Default)]
struct DiskControl(Arc<(Mutex<Disk>, Condvar)>);

impl DiskControl {
    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.0 .0.lock().unwrap()
    }

    fn arm(&self, kind: Fault, calls_before_fault: u64) {
        self.lock().fault = Some((kind, calls_before_fault));
    }

    fn record(&self, on: bool) {
        self.lock().record = on;
    }

    fn push(&self, op: Op) {
        self.lock().ops.push(op);
    }

    fn hold_syncs(&self) {
        self.lock().hold_syncs = true;
    }

    fn release_syncs(&self) {
        self.lock().hold_syncs = false;
        self.0 .1.notify_all();
    }

    /// Wait until a sync is held (its commit is under way and cannot finish).
    fn wait_for_a_held_sync(&self) {
        let deadline = Instant::now() + WAIT;
        let mut disk = self.lock();
        while disk.syncs_waiting == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no sync reached the disk within {WAIT:?}");
            disk = self.0 .1.wait_timeout(disk, left).unwrap().0;
        }
    }

    fn failures(&self) -> u64 {
        self.lock().failures
    }
}

/// redb's own file backend, with faults and a record in front of it.
#[derive(Debug)]
struct FaultyBackend {
    inner: FileBackend,
    control: DiskControl,
}

fn injected() -> io::Error {
    // EIO, as a failing disk reports it.
    io::Error::from_raw_os_error(5)
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if self.control.lock().fails(Fault::Writes) {
            return Err(injected());
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        {
            let (lock, held) = &*self.control.0;
            let mut disk = lock.lock().unwrap();
            if disk.fails(Fault::Syncs) {
                return Err(injected());
            }
            disk.syncs_waiting += 1;
            held.notify_all();
            while disk.hold_syncs {
                disk = held.wait(disk).unwrap();
            }
            disk.syncs_waiting -= 1;
        }
        self.inner.sync_data()?;
        let mut disk = self.control.lock();
        if disk.record {
            disk.ops.push(Op::SyncDone);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if self.control.lock().fails(Fault::Writes) {
            return Err(injected());
        }
        self.inner.write(offset, data)?;
        let mut disk = self.control.lock();
        if disk.record {
            disk.ops.push(Op::Write(data.to_vec()));
        }
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        ..StoreConfig::default()
    }
}

/// An open store plus the wakes of its callback.
struct Harness {
    store: OfflineStore,
    woken: Receiver<()>,
    next_ticket: u64,
}

impl Harness {
    /// The store on the real file in `dir`, through a [`FaultyBackend`] that `control` steers.
    fn faulty(dir: &Path, control: &DiskControl) -> Harness {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(FILE_NAME))
            .unwrap();
        let backend = FaultyBackend {
            inner: FileBackend::new(file).unwrap(),
            control: control.clone(),
        };
        let (tx, woken) = mpsc::channel();
        let store = OfflineStore::open_on_backend(
            config(dir),
            backend,
            Box::new(move || {
                let _ = tx.send(());
            }),
        )
        .unwrap_or_else(|e| panic!("open on the faulty backend: {e}"));
        Harness {
            store,
            woken,
            next_ticket: 1,
        }
    }

    /// The store on the file in `dir`, as chatd opens it (a restart).
    fn file(dir: &Path) -> Harness {
        let (tx, woken) = mpsc::channel();
        let store = OfflineStore::open(
            config(dir),
            Box::new(move || {
                let _ = tx.send(());
            }),
        )
        .unwrap_or_else(|e| panic!("reopen: {e}"));
        Harness {
            store,
            woken,
            next_ticket: 1,
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket - 1
    }

    fn submit_append(&mut self, user: &str, frame: &[u8]) -> u64 {
        let ticket = self.ticket();
        self.store.submit(StoreRequest::Append {
            ticket,
            user: user.as_bytes().to_vec(),
            frame: Bytes::copy_from_slice(frame),
        });
        ticket
    }

    fn submit_load(&mut self, user: &str) -> u64 {
        let ticket = self.ticket();
        self.store.submit(StoreRequest::Load {
            ticket,
            user: user.as_bytes().to_vec(),
            after_seq: 0,
            bytes_max: usize::MAX,
        });
        ticket
    }

    /// Wait (bounded) for a wake.
    fn wait_wake(&self) {
        match self.woken.recv_timeout(WAIT) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => panic!("no store event within {WAIT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the wake callback was dropped"),
        }
    }

    fn next_event(&mut self) -> StoreEvent {
        loop {
            if let Some(event) = self.store.try_recv() {
                return event;
            }
            self.wait_wake();
        }
    }

    fn append(&mut self, user: &str, frame: &[u8]) -> u64 {
        let ticket = self.submit_append(user, frame);
        match self.next_event() {
            StoreEvent::Appended { ticket: t, seq } if t == ticket => seq,
            other => panic!("append {ticket}: {other:?}"),
        }
    }

    fn load(&mut self, user: &str) -> Vec<Vec<u8>> {
        let ticket = self.submit_load(user);
        match self.next_event() {
            StoreEvent::Loaded {
                ticket: t, frames, ..
            } if t == ticket => frames.into_iter().map(|(_, f)| f.to_vec()).collect(),
            other => panic!("load {ticket} of {user}: {other:?}"),
        }
    }
}

fn texts(frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// Commit a batch of five appends while the disk fails `fault`, with the batch made
/// deterministic: the five are submitted while the commit before them is held in its sync, so
/// the storage thread takes all five together. Returns the store and the failed batch's texts.
fn fail_a_batch(dir: &Path, fault: Fault) -> (Harness, Vec<String>) {
    let control = DiskControl::default();
    let mut h = Harness::faulty(dir, &control);
    h.append("ann", b"before: durable");
    control.hold_syncs();
    let held = h.submit_append("ann", b"held: durable");
    control.wait_for_a_held_sync();
    let batch: Vec<String> = (1..=5).map(|i| format!("batch {i}")).collect();
    let tickets: Vec<u64> = batch
        .iter()
        .enumerate()
        .map(|(i, text)| h.submit_append(["ann", "bob"][i % 2], text.as_bytes()))
        .collect();
    // Armed while the held commit is past its checks: it finishes, the next batch fails.
    control.arm(fault, 0);
    control.release_syncs();
    assert!(
        matches!(h.next_event(), StoreEvent::Appended { ticket, .. } if ticket == held),
        "the commit held in its sync succeeds"
    );
    let events: Vec<StoreEvent> = tickets.iter().map(|_| h.next_event()).collect();
    assert!(control.failures() > 0, "the fault was hit");
    for (event, ticket) in events.iter().zip(&tickets) {
        assert!(
            matches!(event, StoreEvent::Failed { ticket: Some(t), .. } if t == ticket),
            "every request of the failing batch is answered Failed (BIN24: \"507\"), never \
             Appended (\"300\"): {event:?}"
        );
    }
    (h, batch)
}

/// After the failure: refused clearly (Failed for appends and loads, the `stopped` metric), the
/// close reports it, nothing panicked.
fn after_the_failure(mut h: Harness) {
    let later = h.submit_append("carol", b"later");
    assert!(
        matches!(h.next_event(), StoreEvent::Failed { ticket: Some(t), .. } if t == later),
        "an append after the failure is refused, never reported durable"
    );
    let load = h.submit_load("ann");
    assert!(
        matches!(h.next_event(), StoreEvent::Failed { ticket: Some(t), .. } if t == load),
        "a load after the failure fails (the frames stay stored for after a restart)"
    );
    h.store.submit(StoreRequest::Remove {
        user: b"ann".to_vec(),
        seqs: vec![1],
    });
    assert!(
        matches!(h.next_event(), StoreEvent::Failed { ticket: None, .. }),
        "a remove after the failure is reported failed (the frame stays: at-least-once)"
    );
    assert!(h.store.metrics().stopped, "the stopped gauge is set");
    match h.store.close() {
        Err(StoreError::Failed { batches, .. }) => assert!(batches >= 1),
        other => panic!("close after a failure must report it: {other:?}"),
    }
}

#[test]
fn a_commit_whose_writes_fail_fails_its_whole_batch_stores_none_of_it_and_stops_the_store() {
    let dir = TempDir::new("writes");
    let (h, batch) = fail_a_batch(dir.path(), Fault::Writes);
    after_the_failure(h);

    let mut h = Harness::file(dir.path());
    let ann = texts(&h.load("ann"));
    let bob = texts(&h.load("bob"));
    // The failing writes never reached the file: the batch is absent, what came before is whole.
    assert_eq!(ann, ["before: durable", "held: durable"]);
    assert!(bob.is_empty(), "bob: {bob:?}");
    assert!(batch.iter().all(|text| !ann.contains(text)));
    assert!(h.load("carol").is_empty());
    // Served again after the restart.
    h.append("carol", b"after the restart");
    assert_eq!(texts(&h.load("carol")), ["after the restart"]);
    h.store.close().unwrap();
}

#[test]
fn a_commit_whose_fsync_fails_fails_its_whole_batch_and_the_file_holds_it_whole_or_not_at_all() {
    let dir = TempDir::new("syncs");
    let (h, batch) = fail_a_batch(dir.path(), Fault::Syncs);
    after_the_failure(h);

    let mut h = Harness::file(dir.path());
    let ann = texts(&h.load("ann"));
    let bob = texts(&h.load("bob"));
    assert_eq!(&ann[..2], ["before: durable", "held: durable"]);
    let stored: Vec<&String> = batch
        .iter()
        .filter(|text| ann.contains(text) || bob.contains(text))
        .collect();
    // The fsync failed after the batch's pages and header were written: the page cache may hold
    // the whole commit, so after a restart it may be there (the senders heard "507", so a
    // delivery later is at worst a duplicate of a resend), but never half of it.
    eprintln!(
        "after the failed fsync the reopened file holds {} of the batch's {} frames",
        stored.len(),
        batch.len()
    );
    assert!(
        stored.is_empty() || stored.len() == batch.len(),
        "half a batch after reopening: {stored:?} of {batch:?}"
    );
    assert_eq!(
        ann.len() + bob.len(),
        2 + stored.len(),
        "ann {ann:?} bob {bob:?}"
    );
    h.append("carol", b"after the restart");
    assert_eq!(texts(&h.load("carol")), ["after the restart"]);
    h.store.close().unwrap();
}

fn name(text: &str) -> Name {
    Name::new(text.as_bytes()).unwrap()
}

fn message(id: u32, src: &str, dst: &str, body: &str) -> Bytes {
    codec::encode(
        codec::TYPE_MESSAGE,
        id,
        name(src),
        name(dst),
        body.as_bytes(),
    )
    .unwrap()
}

/// BIN24's logic on the real store: frames in, store events drained through the service as the
/// reactor's wake does.
struct Bin24OnDisk {
    service: Bin24Service,
    out: RecordingOutbox,
    h: Harness,
}

impl Bin24OnDisk {
    fn feed(&mut self, conn: ConnId, bytes: &[u8]) {
        let mut input = BytesMut::from(bytes);
        self.service
            .on_data(conn, &mut input, 0, &mut self.out, &mut self.h.store);
        assert!(input.is_empty());
    }

    /// Drain store events into the service until `done` holds.
    fn drain_until(&mut self, done: impl Fn(&RecordingOutbox) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(event) = self.h.store.try_recv() {
                self.service
                    .on_store_event(event, &mut self.out, &mut self.h.store);
            }
            if done(&self.out) {
                return;
            }
            assert!(Instant::now() < deadline, "not done within {WAIT:?}");
            let _ = self.h.woken.recv_timeout(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_disk_failure_answers_507_to_bin24_senders_never_300_and_bin24_goes_on() {
    let dir = TempDir::new("bin24");
    let control = DiskControl::default();
    let mut b = Bin24OnDisk {
        service: Bin24Service::new(Bin24Config::default(), 0),
        out: RecordingOutbox::default(),
        h: Harness::faulty(dir.path(), &control),
    };
    let alice = ConnId::new(1, 1);
    let carol = ConnId::new(2, 1);
    let answer =
        |id: u32, text: &[u8]| codec::encode_answer(id, name("carol"), name("alice"), text);
    b.service.on_accept(alice, "127.0.0.1".parse().unwrap());
    b.feed(
        alice,
        &message(1, "alice", "carol", "stored before the failure"),
    );
    b.drain_until(|out| out.sent_to(alice).len() == 1);
    assert_eq!(b.out.sent_to(alice), [answer(1, b"300")]);

    control.arm(Fault::Writes, 0);
    let mut burst = Vec::new();
    for id in 2..=6 {
        burst.extend_from_slice(&message(id, "alice", "carol", "while the disk fails"));
    }
    b.feed(alice, &burst);
    b.drain_until(|out| out.sent_to(alice).len() == 6);
    b.feed(alice, &message(7, "alice", "carol", "after the failure"));
    b.drain_until(|out| out.sent_to(alice).len() == 7);
    let expected: Vec<Bytes> = std::iter::once(answer(1, b"300"))
        .chain((2..=7).map(|id| answer(id, b"507")))
        .collect();
    assert_eq!(
        b.out.sent_to(alice),
        expected,
        "507 for every frame not durable"
    );

    // carol logs in: her backlog cannot be loaded now (it stays stored), and she is served live.
    b.service.on_accept(carol, "127.0.0.1".parse().unwrap());
    b.feed(carol, &message(1, "carol", "alice", "hello alice"));
    b.drain_until(|out| out.sent_to(alice).len() == 8);
    assert_eq!(
        b.out.sent_to(alice)[7],
        message(1, "carol", "alice", "hello alice")
    );
    assert!(
        b.out.closed.is_empty(),
        "nobody is closed: {:?}",
        b.out.closed
    );
    assert!(
        b.out.notified.is_empty(),
        "no stored frame is sent: the load failed"
    );

    let Bin24OnDisk { h, .. } = b;
    assert!(h.store.close().is_err(), "the failure is reported at close");
    // After a restart carol's frame answered "300" is still there, and only it.
    let mut h = Harness::file(dir.path());
    let stored = h.load("carol");
    assert_eq!(stored.len(), 1, "{:?}", texts(&stored));
    assert!(stored[0].ends_with(b"stored before the failure"));
    assert_eq!(&stored[0][2..4], &2u16.to_le_bytes(), "stored as type 2");
    h.store.close().unwrap();
}

#[test]
fn every_append_reported_durable_was_written_then_fsynced_before_its_event() {
    let dir = TempDir::new("order");
    let control = DiskControl::default();
    let mut h = Harness::faulty(dir.path(), &control);
    control.record(true);
    let marker = |ticket: u64| format!("<frame of ticket {ticket:06}>").into_bytes();
    let mut seen = Vec::new();
    // Waves of 1 to 25 appends, so batches of many sizes commit.
    for wave in 0..40usize {
        let tickets: Vec<u64> = (0..=(wave * 7) % 25)
            .map(|i| {
                let ticket = h.next_ticket;
                let user = ["ann", "bob", "carol"][i % 3];
                let mut frame = vec![b'x'; 24 + (wave * 13) % 200];
                frame.extend_from_slice(&marker(ticket));
                assert_eq!(h.submit_append(user, &frame), ticket);
                ticket
            })
            .collect();
        for &ticket in &tickets {
            match h.next_event() {
                StoreEvent::Appended { ticket: t, .. } if t == ticket => {
                    control.push(Op::Seen(ticket));
                    seen.push(ticket);
                }
                other => panic!("append {ticket}: {other:?}"),
            }
        }
    }
    let commits = h.store.commits();
    assert!(
        (commits as usize) < seen.len(),
        "group commit ran: {commits} commits for {} appends",
        seen.len()
    );
    let disk = control.lock();
    // Where each frame's bytes were first written: one pass over the writes (debug builds are
    // slow at searching every write for every marker).
    let prefix = b"<frame of ticket ";
    let mut first_write: HashMap<u64, usize> = HashMap::new();
    for (at, op) in disk.ops.iter().enumerate() {
        let Op::Write(data) = op else { continue };
        let mut from = 0;
        while let Some(found) = data[from..].windows(prefix.len()).position(|w| w == prefix) {
            let digits = from + found + prefix.len();
            if let Some(ticket) = data
                .get(digits..digits + 6)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u64>().ok())
            {
                first_write.entry(ticket).or_insert(at);
            }
            from = digits;
        }
    }
    for &ticket in &seen {
        let seen_at = disk
            .ops
            .iter()
            .position(|op| matches!(op, Op::Seen(t) if *t == ticket))
            .unwrap();
        let written_at = first_write
            .get(&ticket)
            .copied()
            .filter(|&at| at < seen_at)
            .unwrap_or_else(|| {
                panic!("ticket {ticket} was reported durable before its bytes were written")
            });
        assert!(
            disk.ops[written_at..seen_at]
                .iter()
                .any(|op| matches!(op, Op::SyncDone)),
            "ticket {ticket} was reported durable with no completed sync after its write"
        );
    }
    drop(disk);
    h.store.close().unwrap();
}
