//! The durable offline store against real files in temporary directories: order, visibility,
//! removal, sequence numbers, limits, group commit, clear errors at open, and durability
//! across close, drop and kill -9 (a child process killed while it appends); and `chatd` stopping
//! with a clear error when its data directory cannot be used (as root too).

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
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
            "switchboard-store-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn store_file(&self) -> PathBuf {
        self.0.join(FILE_NAME)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        ..StoreConfig::default()
    }
}

/// An open store plus what its wake callback did.
struct Harness {
    store: OfflineStore,
    woken: Receiver<()>,
    wakes: Arc<AtomicUsize>,
    next_ticket: u64,
}

impl Harness {
    fn open(config: StoreConfig) -> Harness {
        Harness::try_open(config).unwrap_or_else(|e| panic!("open: {e}"))
    }

    fn try_open(config: StoreConfig) -> Result<Harness, StoreError> {
        let (tx, woken) = mpsc::channel();
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&wakes);
        let store = OfflineStore::open(
            config,
            Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(());
            }),
        )?;
        Ok(Harness {
            store,
            woken,
            wakes,
            next_ticket: 1,
        })
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket - 1
    }

    /// Submit an append; returns its ticket.
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

    fn remove(&mut self, user: &str, seqs: Vec<u64>) {
        self.store.submit(StoreRequest::Remove {
            user: user.as_bytes().to_vec(),
            seqs,
        });
    }

    /// The next event, waiting for a wake (bounded) when none is queued.
    fn next_event(&mut self) -> StoreEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(event) = self.store.try_recv() {
                return event;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.woken.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no store event within {WAIT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("the wake callback was dropped"),
            }
        }
    }

    fn events(&mut self, count: usize) -> Vec<StoreEvent> {
        (0..count).map(|_| self.next_event()).collect()
    }

    /// Append and wait until it is durable; returns its seq.
    fn append(&mut self, user: &str, frame: &[u8]) -> u64 {
        let ticket = self.submit_append(user, frame);
        match self.next_event() {
            StoreEvent::Appended { ticket: t, seq } if t == ticket => seq,
            other => panic!("append {ticket}: {other:?}"),
        }
    }

    /// Append and expect `Full`.
    fn append_full(&mut self, user: &str, frame: &[u8]) {
        let ticket = self.submit_append(user, frame);
        assert_eq!(self.next_event(), StoreEvent::Full { ticket });
    }

    fn load(&mut self, user: &str) -> Vec<(u64, Bytes)> {
        let ticket = self.submit_load(user);
        expect_loaded(self.next_event(), ticket, user)
    }

    /// Wait until every submitted request is done (removes have no event).
    fn settle(&mut self) {
        let deadline = Instant::now() + WAIT;
        while self.store.pending() > 0 {
            assert!(Instant::now() < deadline, "requests still pending");
            let _ = self.woken.recv_timeout(Duration::from_millis(10));
        }
    }

    fn close(self) {
        self.store.close().unwrap_or_else(|e| panic!("close: {e}"));
    }
}

fn expect_loaded(event: StoreEvent, ticket: u64, user: &str) -> Vec<(u64, Bytes)> {
    match event {
        StoreEvent::Loaded {
            ticket: t,
            user: u,
            frames,
            ..
        } if t == ticket && u == user.as_bytes() => frames,
        other => panic!("load {ticket} of {user}: {other:?}"),
    }
}

fn payloads(frames: &[(u64, Bytes)]) -> Vec<Vec<u8>> {
    frames.iter().map(|(_, frame)| frame.to_vec()).collect()
}

fn seqs(frames: &[(u64, Bytes)]) -> Vec<u64> {
    frames.iter().map(|&(seq, _)| seq).collect()
}

/// A frame of realistic shape: a 24-byte BIN24 header then `text`.
fn frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0u8; 24];
    frame[0..2].copy_from_slice(&((24 + text.len()) as u16).to_le_bytes());
    frame[2..4].copy_from_slice(&2u16.to_le_bytes());
    frame.extend_from_slice(text.as_bytes());
    frame
}

#[test]
fn append_then_load_returns_the_frames_oldest_first_as_given() {
    let dir = TempDir::new("order");
    let mut h = Harness::open(config(dir.path()));
    let sent: Vec<Vec<u8>> = (0..20).map(|i| frame(&format!("message {i}"))).collect();
    let mut appended = Vec::new();
    for f in &sent {
        appended.push(h.append("alice", f));
    }
    let frames = h.load("alice");
    assert_eq!(payloads(&frames), sent);
    assert_eq!(seqs(&frames), appended);
    assert!(h.load("bob").is_empty());
    h.close();
}

#[test]
fn a_load_sees_every_append_submitted_before_it_in_the_same_batch_or_earlier_ones() {
    let dir = TempDir::new("visible");
    let mut h = Harness::open(config(dir.path()));
    // Across batches: durable first, loaded later.
    let first = h.append("alice", b"one");
    // Submitted back to back with no wait: mostly the same batch, and either way in order.
    let a = h.submit_append("alice", b"two");
    let b = h.submit_append("alice", b"three");
    let load = h.submit_load("alice");
    let events = h.events(3);
    let (seq_two, seq_three) = match (&events[0], &events[1]) {
        (
            StoreEvent::Appended {
                ticket: ta,
                seq: sa,
            },
            StoreEvent::Appended {
                ticket: tb,
                seq: sb,
            },
        ) if *ta == a && *tb == b => (*sa, *sb),
        other => panic!("{other:?}"),
    };
    let frames = expect_loaded(events[2].clone(), load, "alice");
    assert_eq!(seqs(&frames), vec![first, seq_two, seq_three]);
    assert_eq!(
        payloads(&frames),
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    h.close();
}

#[test]
fn remove_removes_only_the_named_seqs_of_that_user_and_ignores_unknown_ones() {
    let dir = TempDir::new("remove");
    let mut h = Harness::open(config(dir.path()));
    let alice: Vec<u64> = (0..5)
        .map(|i| h.append("alice", &frame(&i.to_string())))
        .collect();
    let bob = h.append("bob", b"bob's");
    // alice's 2nd and 4th, bob's seq named for alice (not hers), and a seq never handed out.
    h.remove("alice", vec![alice[1], alice[3], bob, 999_999]);
    h.settle();
    assert_eq!(seqs(&h.load("alice")), vec![alice[0], alice[2], alice[4]]);
    assert_eq!(seqs(&h.load("bob")), vec![bob]);
    // Removing again is harmless.
    h.remove("alice", vec![alice[1]]);
    h.remove("alice", vec![alice[0], alice[2], alice[4]]);
    h.settle();
    assert!(h.load("alice").is_empty());
    assert!(h.store.try_recv().is_none(), "a remove has no event");
    h.close();
}

#[test]
fn seqs_strictly_increase_and_are_never_reused_across_close_and_reopen() {
    let dir = TempDir::new("seqs");
    let mut all = Vec::new();
    for round in 0..3 {
        let mut h = Harness::open(config(dir.path()));
        for i in 0..10 {
            let user = if i % 2 == 0 { "even" } else { "odd" };
            all.push(h.append(user, format!("{round}-{i}").as_bytes()));
        }
        // Remove everything, so that "highest stored key + 1" alone would reuse seqs.
        h.remove("even", all.clone());
        h.remove("odd", all.clone());
        h.settle();
        assert!(h.load("even").is_empty() && h.load("odd").is_empty());
        h.close();
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
}

#[test]
fn frames_survive_close_and_reopen_and_drop_and_reopen() {
    let dir = TempDir::new("reopen");
    let mut expected = Vec::new();
    {
        let mut h = Harness::open(config(dir.path()));
        for i in 0..50 {
            let f = frame(&format!("closed {i}"));
            let seq = h.append("carol", &f);
            expected.push((seq, f));
        }
        h.close();
    }
    {
        let mut h = Harness::open(config(dir.path()));
        for i in 0..50 {
            let f = frame(&format!("dropped {i}"));
            let seq = h.append("carol", &f);
            expected.push((seq, f));
        }
        drop(h); // Drop stops the thread and releases the file like close does.
    }
    let mut h = Harness::open(config(dir.path()));
    let loaded: Vec<(u64, Vec<u8>)> = h
        .load("carol")
        .into_iter()
        .map(|(seq, f)| (seq, f.to_vec()))
        .collect();
    assert_eq!(loaded, expected);
    h.close();
}

#[test]
fn close_and_drop_finish_every_submitted_request_durably() {
    let dir = TempDir::new("finish");
    let mut h = Harness::open(config(dir.path()));
    for i in 0..1000 {
        h.submit_append("dave", format!("c{i}").as_bytes());
    }
    assert!(h.store.pending() > 0 || h.store.try_recv().is_some());
    h.close();

    let mut h = Harness::open(config(dir.path()));
    for i in 0..1000 {
        h.submit_append("dave", format!("d{i}").as_bytes());
    }
    drop(h);

    let mut h = Harness::open(config(dir.path()));
    let expected: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("c{i}").into_bytes())
        .chain((0..1000).map(|i| format!("d{i}").into_bytes()))
        .collect();
    assert_eq!(payloads(&h.load("dave")), expected);
    h.close();
}

#[test]
fn the_frame_limit_refuses_with_full_stores_nothing_holds_after_reopen_and_removal_frees_room() {
    let dir = TempDir::new("framelimit");
    let limited = StoreConfig {
        frames_per_user_max: 3,
        ..config(dir.path())
    };
    let mut h = Harness::open(limited.clone());
    let kept: Vec<u64> = (0..3).map(|i| h.append("erin", &[i])).collect();
    h.append_full("erin", b"fourth");
    // The limit is per user.
    h.append("frank", b"frank's first");
    assert_eq!(payloads(&h.load("erin")), vec![vec![0], vec![1], vec![2]]);
    h.close();

    // The counters are rebuilt from the file: still full after a restart.
    let mut h = Harness::open(limited);
    h.append_full("erin", b"fourth again");
    h.remove("erin", vec![kept[0]]);
    let seq = h.append("erin", b"fits now");
    h.append_full("erin", b"full again");
    let frames = h.load("erin");
    assert_eq!(seqs(&frames), vec![kept[1], kept[2], seq]);
    h.close();
}

#[test]
fn the_byte_limit_refuses_with_full_stores_nothing_holds_after_reopen_and_removal_frees_room() {
    let dir = TempDir::new("bytelimit");
    let limited = StoreConfig {
        bytes_per_user_max: 100,
        ..config(dir.path())
    };
    let mut h = Harness::open(limited.clone());
    let a = h.append("gina", &[b'a'; 60]);
    h.append_full("gina", &[b'b'; 41]);
    let b = h.append("gina", &[b'b'; 40]); // exactly 100 bytes now
    h.append_full("gina", &[b'c'; 1]);
    h.close();

    let mut h = Harness::open(limited);
    h.append_full("gina", &[b'c'; 1]);
    h.remove("gina", vec![a]);
    let c = h.append("gina", &[b'c'; 60]);
    h.append_full("gina", &[b'd'; 1]);
    assert_eq!(seqs(&h.load("gina")), vec![b, c]);
    h.close();
}

#[test]
fn many_users_interleaved_each_keep_their_own_order() {
    let dir = TempDir::new("interleaved");
    let mut h = Harness::open(config(dir.path()));
    let users: Vec<String> = (0..50).map(|u| format!("user{u}")).collect();
    let rounds = 40;
    let mut submitted = 0;
    for i in 0..rounds {
        for u in 0..users.len() {
            // A different permutation of the users each round (7 and 50 are coprime).
            let user = &users[(u * 7 + i) % users.len()];
            h.submit_append(user, format!("{user}:{i}").as_bytes());
            submitted += 1;
        }
    }
    for event in h.events(submitted) {
        assert!(matches!(event, StoreEvent::Appended { .. }), "{event:?}");
    }
    for user in &users {
        let frames = h.load(user);
        let expected: Vec<Vec<u8>> = (0..rounds)
            .map(|i| format!("{user}:{i}").into_bytes())
            .collect();
        assert_eq!(payloads(&frames), expected, "{user}");
        assert!(seqs(&frames).windows(2).all(|w| w[0] < w[1]));
    }
    h.close();
}

#[test]
fn group_commit_makes_10000_appends_durable_with_far_fewer_commits_and_wakes() {
    let dir = TempDir::new("group");
    let mut h = Harness::open(config(dir.path()));
    let count = 10_000;
    let tickets: Vec<u64> = (0..count)
        .map(|i| h.submit_append(&format!("u{}", i % 16), &frame(&format!("burst {i}"))))
        .collect();
    let mut seqs_by_ticket = Vec::with_capacity(count);
    for (ticket, event) in tickets.iter().zip(h.events(count)) {
        match event {
            StoreEvent::Appended { ticket: t, seq } if t == *ticket => seqs_by_ticket.push(seq),
            other => panic!("ticket {ticket}: {other:?}"),
        }
    }
    // Events come back in submission order, seqs handed out in that order.
    assert!(seqs_by_ticket.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(h.store.pending(), 0);
    let commits = h.store.commits();
    let wakes = h.wakes.load(Ordering::SeqCst);
    eprintln!("10000 appends: {commits} commits, {wakes} wakes");
    // 512 requests per transaction at most: at least 20 commits; far fewer than 10,000.
    assert!((20..=1000).contains(&commits), "{commits} commits");
    // One wake per batch: at least one, never one per request.
    assert!(
        wakes >= 1 && wakes as u64 <= commits,
        "{wakes} wakes, {commits} commits"
    );
    h.close();
}

#[test]
fn a_group_commit_max_of_1_commits_once_per_append() {
    let dir = TempDir::new("group1");
    let mut h = Harness::open(StoreConfig {
        group_commit_max: 1,
        ..config(dir.path())
    });
    for i in 0..20 {
        h.submit_append("solo", &[i]);
    }
    assert_eq!(h.events(20).len(), 20);
    assert_eq!(h.store.commits(), 20);
    h.close();
}

#[test]
fn a_panicking_wake_callback_does_not_stop_the_store() {
    let dir = TempDir::new("wakepanic");
    let store = OfflineStore::open(
        config(dir.path()),
        Box::new(|| panic!("wake callback panics on purpose")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + WAIT;
    for ticket in 1..=3 {
        store.submit(StoreRequest::Append {
            ticket,
            user: b"ivan".to_vec(),
            frame: Bytes::from_static(b"still stored"),
        });
        let event = loop {
            if let Some(event) = store.try_recv() {
                break event;
            }
            assert!(Instant::now() < deadline, "no event");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(matches!(event, StoreEvent::Appended { ticket: t, .. } if t == ticket));
    }
    store.close().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_invalid_user_key_is_answered_failed_and_the_store_goes_on() {
    let dir = TempDir::new("badkey");
    let mut h = Harness::open(config(dir.path()));
    let ticket = h.submit_append("ninebytes", b"x");
    match h.next_event() {
        StoreEvent::Failed {
            ticket: Some(t),
            error,
        } if t == ticket => assert!(error.contains("at most 8"), "{error}"),
        other => panic!("{other:?}"),
    }
    h.append("ok", b"fine");
    h.close();
}

#[test]
fn a_garbage_file_is_a_clear_error_naming_the_path_and_is_left_untouched() {
    let dir = TempDir::new("garbage");
    let garbage: Vec<u8> = (0..16_384u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(dir.store_file(), &garbage).unwrap();
    let error = Harness::try_open(config(dir.path()))
        .err()
        .expect("open must fail");
    let message = error.to_string();
    eprintln!("{message}");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert!(
        message.contains(&dir.store_file().display().to_string()),
        "{message}"
    );
    assert_eq!(
        fs::read(dir.store_file()).unwrap(),
        garbage,
        "never a silent reset"
    );

    // Too short to hold a header.
    fs::write(dir.store_file(), &garbage[..100]).unwrap();
    let error = Harness::try_open(config(dir.path()))
        .err()
        .expect("open must fail");
    eprintln!("{error}");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert_eq!(fs::read(dir.store_file()).unwrap(), &garbage[..100]);
}

#[test]
fn a_store_damaged_in_the_middle_is_a_clear_error_naming_the_path() {
    let dir = TempDir::new("damaged");
    {
        let mut h = Harness::open(config(dir.path()));
        for i in 0..2000 {
            h.submit_append(
                &format!("u{}", i % 8),
                &frame(&format!("frame {i} {}", "x".repeat(200))),
            );
        }
        h.events(2000);
        h.close();
    }
    let mut bytes = fs::read(dir.store_file()).unwrap();
    let len = bytes.len();
    assert!(len > 64 * 1024, "store file of {len} bytes");
    // Overwrite everything past the header region with garbage: every tree page is damaged.
    for (i, byte) in bytes.iter_mut().enumerate().skip(8192) {
        *byte = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    fs::write(dir.store_file(), &bytes).unwrap();
    let error = Harness::try_open(config(dir.path()))
        .err()
        .expect("open must fail");
    let message = error.to_string();
    eprintln!("{message}");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error:?}");
    assert!(
        message.contains(&dir.store_file().display().to_string()),
        "{message}"
    );
    assert_eq!(
        fs::read(dir.store_file()).unwrap(),
        bytes,
        "never a silent reset"
    );
}

#[test]
fn a_data_dir_that_is_a_regular_file_is_a_clear_error() {
    let dir = TempDir::new("notadir");
    let file = dir.path().join("data");
    fs::write(&file, b"not a directory").unwrap();
    let error = Harness::try_open(config(&file))
        .err()
        .expect("open must fail");
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::NotADirectory { .. }),
        "{error:?}"
    );
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("not a directory"), "{message}");

    // A data dir below a regular file cannot be created.
    let below = file.join("sub");
    let error = Harness::try_open(config(&below))
        .err()
        .expect("open must fail");
    assert!(matches!(error, StoreError::CreateDir { .. }), "{error:?}");
    assert!(error.to_string().contains(&below.display().to_string()));
}

#[test]
fn a_store_open_elsewhere_is_a_clear_locked_error() {
    let dir = TempDir::new("locked");
    let h = Harness::open(config(dir.path()));
    let error = Harness::try_open(config(dir.path()))
        .err()
        .expect("second open must fail");
    let message = error.to_string();
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
    assert!(
        message.contains(&dir.store_file().display().to_string()),
        "{message}"
    );
    h.close();
    // Released at close.
    Harness::open(config(dir.path())).close();
}

/// Runs `chatd` (BIN24 on, so it opens its store in `data`) until it exits, bounded by
/// [`WAIT`]; returns its exit code and stderr. `as_nobody` runs it as uid/gid 65534, for a
/// test running as root, where file permissions would not apply to chatd.
#[cfg(unix)]
fn chatd_exit(scratch: &Path, data: &Path, as_nobody: bool) -> (Option<i32>, String) {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let mut command = if as_nobody {
        // A copy that uid 65534 can run wherever the build lives (say, below a 0700 home).
        let binary = scratch.join("chatd");
        fs::copy(env!("CARGO_BIN_EXE_chatd"), &binary).expect("copy chatd");
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let mut command = Command::new(binary);
        command.uid(65534).gid(65534);
        command
    } else {
        Command::new(env!("CARGO_BIN_EXE_chatd"))
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    command
        .args(chatd::port_args(&[("--bin24-port", port)]))
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start chatd");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    // Its stderr ends when it exits; a chatd that serves instead is killed and fails the test.
    let Ok(stderr) = rx.recv_timeout(WAIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "chatd with the data directory {} did not exit",
            data.display()
        );
    };
    let status = child.wait().expect("wait for chatd");
    (status.code(), stderr)
}

/// chatd stops at once, with exit status 1 and one error line naming the path and why.
#[cfg(unix)]
fn assert_chatd_refuses(exit: (Option<i32>, String), expected: &str) {
    let (code, stderr) = exit;
    assert_eq!(code, Some(1), "exit status; stderr: {stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    assert!(
        line.contains(&format!("cannot open the offline store: {expected}")),
        "{line:?} does not say {expected:?}"
    );
    assert!(!stderr.contains("listening on"), "it served: {stderr}");
}

#[cfg(unix)]
#[test]
fn a_data_dir_that_cannot_be_created_stops_chatd_with_a_clear_error() {
    let dir = TempDir::new("uncreatable");
    let file = dir.path().join("file");
    fs::write(&file, b"not a directory").unwrap();
    // Root too: no permission lets a directory be created below a regular file.
    let data = file.join("data");
    assert_chatd_refuses(
        chatd_exit(dir.path(), &data, false),
        &format!(
            "cannot create the offline store's data directory {}: Not a directory",
            data.display()
        ),
    );
}

#[cfg(unix)]
#[test]
fn an_unreadable_data_dir_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;

    let dir = TempDir::new("unreadable");
    let data = dir.path().join("data");
    Harness::open(config(&data)).close();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o000)).unwrap();
    // Root (and CAP_DAC_OVERRIDE) ignores permissions: then chatd runs as nobody (uid 65534),
    // for which they apply, and the store is checked through chatd only.
    let as_root = fs::read_dir(&data).is_ok();
    let library = (!as_root).then(|| Harness::try_open(config(&data)));
    let chatd = chatd_exit(dir.path(), &data, as_root);
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    let store_file = data.join(FILE_NAME).display().to_string();
    assert_chatd_refuses(
        chatd,
        &format!("cannot open the offline store {store_file}: Permission denied"),
    );
    if let Some(result) = library {
        let error = result.err().expect("open must fail");
        let message = error.to_string();
        assert!(matches!(error, StoreError::Io { .. }), "{error:?}");
        assert!(message.contains("ermission denied"), "{message}");
        assert!(message.contains(&store_file), "{message}");
    }
}

/// The child side of the crash test: does nothing unless the parent test set the variable.
const CHILD_DIR_VAR: &str = "SWITCHBOARD_STORE_CRASH_CHILD_DIR";
const CHILD_ROUND_VAR: &str = "SWITCHBOARD_STORE_CRASH_CHILD_ROUND";
const CRASH_USER: &str = "victim";

fn crash_frame(round: u64, index: u64) -> Vec<u8> {
    frame(&format!("round {round} frame {index}"))
}

#[test]
fn crash_child() {
    let (Ok(dir), Ok(round)) = (std::env::var(CHILD_DIR_VAR), std::env::var(CHILD_ROUND_VAR))
    else {
        return;
    };
    let round: u64 = round.parse().expect("round");
    let mut h = Harness::open(StoreConfig {
        group_commit_max: 64,
        ..config(Path::new(&dir))
    });
    let mut stdout = std::io::stdout().lock();
    let started = Instant::now();
    let mut next = 0u64;
    let mut in_flight = 0;
    // Keep appending, about 100 in flight, until killed (or, as a safety net, for 60 s).
    while started.elapsed() < Duration::from_secs(60) {
        while in_flight < 100 {
            let ticket = h.submit_append(CRASH_USER, &crash_frame(round, next));
            assert_eq!(ticket, next + 1);
            next += 1;
            in_flight += 1;
        }
        match h.next_event() {
            StoreEvent::Appended { ticket, seq } => {
                // Printed only once the commit holding the frame has returned.
                writeln!(stdout, "DURABLE {seq} {}", ticket - 1).unwrap();
                stdout.flush().unwrap();
                in_flight -= 1;
            }
            other => panic!("child: {other:?}"),
        }
    }
    std::process::exit(3);
}

/// Kill -9 a child while it appends: every frame it reported durable is there after reopen,
/// in order, exactly once, twice in a row on the same store.
#[test]
fn frames_reported_durable_survive_kill_9() {
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().expect("test binary");
    // (seq, round, index) of every frame a child reported durable.
    let mut durable: Vec<(u64, u64, u64)> = Vec::new();
    for (round, kill_after) in [(0u64, 300usize), (1, 137)] {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_VAR, dir.path())
            .env(CHILD_ROUND_VAR, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (lines_tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let parse = |line: &str| -> Option<(u64, u64)> {
            // libtest may print its own text on the same line; take what follows the marker.
            let rest = &line[line.find("DURABLE ")? + "DURABLE ".len()..];
            let mut fields = rest.split_whitespace().map(|f| f.parse::<u64>());
            match (fields.next(), fields.next()) {
                (Some(Ok(seq)), Some(Ok(index))) => Some((seq, index)),
                _ => None,
            }
        };
        let deadline = Instant::now() + WAIT;
        let mut reported = 0;
        while reported < kill_after {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((seq, index)) = parse(&line) {
                        durable.push((seq, round, index));
                        reported += 1;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("child reported {reported} durable frames, then stopped or hung");
                }
            }
        }
        child.kill().expect("kill -9 the child"); // SIGKILL on Unix
        let status = child.wait().expect("reap child");
        assert!(!status.success(), "child was killed: {status:?}");
        // Lines written before the kill are durable too.
        loop {
            match lines.recv_timeout(WAIT) {
                Ok(line) => {
                    if let Some((seq, index)) = parse(&line) {
                        durable.push((seq, round, index));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("child's stdout not closed"),
            }
        }
        reader.join().expect("reader thread");

        let mut h = Harness::open(config(dir.path()));
        let stored = h.load(CRASH_USER);
        h.close();
        eprintln!(
            "round {round}: {} frames reported durable so far, {} stored",
            durable.len(),
            stored.len()
        );
        let stored_seqs = seqs(&stored);
        assert!(
            stored_seqs.windows(2).all(|w| w[0] < w[1]),
            "stored frames in order, each once"
        );
        // Stored frames are in append order: (round, index) increases with seq.
        let mut previous = None;
        for (_, bytes) in &stored {
            let text = String::from_utf8_lossy(&bytes[24..]).to_string();
            let mut words = text.split(' ');
            let (r, i) = match (words.next(), words.next(), words.next(), words.next()) {
                (Some("round"), Some(r), Some("frame"), Some(i)) => {
                    (r.parse::<u64>().unwrap(), i.parse::<u64>().unwrap())
                }
                _ => panic!("unexpected stored frame {text:?}"),
            };
            assert!(previous < Some((r, i)), "{previous:?} then {:?}", (r, i));
            previous = Some((r, i));
        }
        for &(seq, r, i) in &durable {
            let found: Vec<_> = stored.iter().filter(|(s, _)| *s == seq).collect();
            assert_eq!(
                found.len(),
                1,
                "seq {seq} (round {r} frame {i}) stored once"
            );
            assert_eq!(found[0].1.to_vec(), crash_frame(r, i), "seq {seq}");
        }
    }
}

#[test]
fn metrics_count_what_is_held_and_time_each_commit_and_survive_a_reopen() {
    let dir = TempDir::new("metrics");
    let mut store = Harness::open(config(dir.path()));
    assert_eq!(store.store.metrics().stored_frames, 0);
    let first = store.append("ann", &frame("one"));
    store.append("ann", &frame("two"));
    store.append("bob", &frame("three"));
    let metrics = store.store.metrics();
    assert_eq!(metrics.stored_frames, 3);
    assert_eq!(
        metrics.stored_bytes,
        (frame("one").len() + frame("two").len() + frame("three").len()) as u64
    );
    assert_eq!(metrics.stored_users, 2);
    assert_eq!(metrics.pending_requests, 0);
    assert!(metrics.commits >= 1);
    // One latency sample per durable commit.
    assert_eq!(metrics.commit_latency.count, metrics.commits);
    store.remove("ann", vec![first]);
    store.settle();
    let metrics = store.store.metrics();
    assert_eq!(metrics.stored_frames, 2);
    assert_eq!(metrics.stored_users, 2);
    store.close();

    // Counted from the file at open.
    let reopened = Harness::open(config(dir.path()));
    let metrics = reopened.store.metrics();
    assert_eq!((metrics.stored_frames, metrics.stored_users), (2, 2));
    assert_eq!(metrics.commits, 0);
    reopened.close();
}
