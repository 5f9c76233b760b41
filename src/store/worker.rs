//! The storage thread: opens the redb file, then runs requests in batches, one write
//! transaction and one durable commit per batch (group commit).

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use log::{debug, error, info, warn};
use redb::{
    Builder, Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata,
    StorageBackend, TableDefinition, WriteTransaction,
};

use super::keys::{self, Name};
use super::ledger::{Admit, Ledger, Limits, Usage, FIRST_SEQ};
use super::{Shared, StoreConfig, StoreError, StoreEvent, StoreRequest};

/// (user name NUL-padded to 8, seq big-endian) -> the frame's bytes as given.
const FRAMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("frames");
/// Small named values, u64 little-endian.
const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");
/// The layout of the tables above; a file with another one is refused, not misread.
const META_LAYOUT: &[u8] = b"layout";
const LAYOUT_VERSION: u64 = 1;
/// The next sequence number to hand out, written with every batch that appends.
const META_NEXT_SEQ: &[u8] = b"next_seq";

/// redb's page cache. Its default (1 GiB) is sized for a database server; the store's working
/// set is the tail of the frames table and the page of a backlog being loaded, and the OS page
/// cache holds the rest. Measured under a 15 s flood to 30,000 offline users (4 senders):
/// with 64 MiB the resident size stayed 72 MB above the idle server's after the flood; with
/// 8 MiB, 12 MB, at the same append rate.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

pub(crate) struct Worker {
    db: Database,
    path: PathBuf,
    ledger: Ledger,
    shared: Arc<Shared>,
    /// Set after a batch failed (an I/O error, corruption met at run time, a panic): every later
    /// request is answered `Failed` without touching the database, until a restart reopens it.
    /// Not retried in place: redb latches an I/O error (every later operation of this
    /// `Database` fails with `PreviousIo`), and reopening after a failed fsync is what Linux
    /// makes unsafe (the kernel may drop the pages it could not write while its cache still
    /// shows them, so a reopen would build on data that is not on disk). A restart runs redb's
    /// recovery from the file.
    broken: Option<String>,
    failed_batches: u64,
    first_failure: Option<String>,
}

/// Counts of a batch's requests, for the debug line.
#[derive(Default)]
struct BatchCounts {
    appends: usize,
    full: usize,
    loads: usize,
    removes: usize,
}

/// Creates the database on a backend, given the builder's settings.
type CreateOnBackend = Box<dyn FnOnce(&Builder) -> Result<Database, DatabaseError> + Send>;

/// Where the database lives: the file (production), or a backend a test supplies.
pub(crate) enum Source {
    File,
    Backend(CreateOnBackend),
}

impl Source {
    /// `backend` in place of the file at `path` (which still names the store in messages).
    pub(crate) fn backend(backend: impl StorageBackend) -> Source {
        Source::Backend(Box::new(move |builder: &Builder| {
            builder.create_with_backend(backend)
        }))
    }
}

impl Worker {
    /// Open (or create) the database at `path` (or on the backend `source` names), verify it
    /// and load the counters.
    pub(crate) fn open(
        path: &Path,
        source: Source,
        config: &StoreConfig,
        shared: Arc<Shared>,
    ) -> Result<Worker, StoreError> {
        let started = Instant::now();
        // redb promises no panic on a corrupt file only with the integrity check; a panic anyway
        // (a bug) is still an error for the caller, not a crash.
        let opened = panic::catch_unwind(AssertUnwindSafe(|| open_database(path, source)))
            .unwrap_or_else(|_| {
                Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: "the database panicked while opening it".to_string(),
                })
            })?;
        let (db, usage, next_seq) = opened;
        let limits = Limits {
            frames_per_user_max: config.frames_per_user_max,
            bytes_per_user_max: config.bytes_per_user_max,
            frames_max: config.frames_max,
            bytes_max: config.bytes_max,
        };
        let ledger = Ledger::new(limits, usage, next_seq);
        info!(
            "offline store {}: opened in {} ms, {} user(s) with frames, next seq {}",
            path.display(),
            started.elapsed().as_millis(),
            ledger.users(),
            ledger.next_seq()
        );
        let worker = Worker {
            db,
            path: path.to_path_buf(),
            ledger,
            shared,
            broken: None,
            failed_batches: 0,
            first_failure: None,
        };
        worker.publish_usage();
        Ok(worker)
    }

    /// Make what the store holds (as of the last commit) readable from the reactor thread.
    fn publish_usage(&self) {
        let total = self.ledger.total();
        let users = u64::try_from(self.ledger.users()).unwrap_or(u64::MAX);
        self.shared.set_usage(total.frames, total.bytes, users);
    }

    /// The thread's body: batches until every sender is gone, then close the database.
    pub(crate) fn run(
        mut self,
        requests: Receiver<StoreRequest>,
        events: Sender<StoreEvent>,
        group_commit_max: usize,
    ) -> Result<(), StoreError> {
        let group_commit_max = group_commit_max.max(1);
        // `recv` fails only once every sender is gone and the queue is empty: what was submitted
        // before the front closed is still done.
        while let Ok(first) = requests.recv() {
            let mut batch = Vec::with_capacity(group_commit_max.min(1024));
            batch.push(first);
            while batch.len() < group_commit_max {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let count = batch.len();
            for event in self.execute(batch) {
                // The front holds a receiver for as long as it may submit; if it is gone, no
                // one is waiting for the event.
                let _ = events.send(event);
            }
            // After the events: a front that sees `pending() == 0` finds every event queued.
            self.shared.finished(count);
            self.shared.wake();
        }
        self.close()
    }

    fn close(self) -> Result<(), StoreError> {
        let path = self.path;
        if self.broken.is_none() {
            self.db.close().map_err(|e| StoreError::Database {
                path: path.clone(),
                detail: format!("closing: {e}"),
            })?;
        }
        match self.first_failure {
            Some(first) => Err(StoreError::Failed {
                path,
                batches: self.failed_batches,
                first,
            }),
            None => Ok(()),
        }
    }

    /// Run one batch in one write transaction and return its events, in request order (a
    /// `Remove` has an event only if it failed).
    pub(crate) fn execute(&mut self, batch: Vec<StoreRequest>) -> Vec<StoreEvent> {
        if let Some(why) = &self.broken {
            let why = why.clone();
            return failed_events(&batch, &why);
        }
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.try_execute(&batch)))
            .unwrap_or_else(|payload| {
                Err(format!(
                    "the storage thread panicked ({})",
                    panic_message(payload.as_ref())
                ))
            });
        match outcome {
            Ok(events) => events,
            Err(why) => {
                self.ledger.rollback();
                self.failed_batches += 1;
                // The commit's fate is unknown to us (an fsync that failed may have left it whole
                // in the file, never half: redb commits are atomic), so no request of the batch
                // may be answered as durable; the store stops (see `broken`).
                error!(
                    "offline store {}: a batch of {} request(s) failed: {why}; none of it is \
                     reported durable, and the store is stopped: appends are refused (\"507\") \
                     and stored frames wait until chatd is restarted",
                    self.path.display(),
                    batch.len()
                );
                self.first_failure.get_or_insert_with(|| why.clone());
                let stopped = format!("the store stopped after a failure ({why})");
                self.broken.get_or_insert(stopped);
                self.shared.stopped.store(true, Ordering::Relaxed);
                failed_events(&batch, &why)
            }
        }
    }

    fn try_execute(&mut self, batch: &[StoreRequest]) -> Result<Vec<StoreEvent>, String> {
        let started = Instant::now();
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| e.to_string())?;
        let mut events = Vec::with_capacity(batch.len());
        let mut counts = BatchCounts::default();
        let wrote = self
            .apply(&txn, batch, &mut events, &mut counts)
            .map_err(|e| e.to_string())?;
        let ran = started.elapsed();
        let commit_started = Instant::now();
        if wrote {
            txn.commit().map_err(|e| e.to_string())?;
            self.shared.record_commit(commit_started.elapsed());
        } else {
            // Nothing to make durable (only loads, refused appends, removes of nothing).
            txn.abort().map_err(|e| e.to_string())?;
        }
        self.ledger.commit();
        self.publish_usage();
        debug!(
            "offline store batch: {} request(s) ({} appended, {} full, {} loads, {} removes), \
             run {} us, {} {} us",
            batch.len(),
            counts.appends,
            counts.full,
            counts.loads,
            counts.removes,
            ran.as_micros(),
            if wrote { "commit" } else { "no commit" },
            commit_started.elapsed().as_micros()
        );
        Ok(events)
    }

    /// Apply the batch inside `txn`; returns whether it wrote anything.
    fn apply(
        &mut self,
        txn: &WriteTransaction,
        batch: &[StoreRequest],
        events: &mut Vec<StoreEvent>,
        counts: &mut BatchCounts,
    ) -> Result<bool, redb::Error> {
        let mut frames = txn.open_table(FRAMES)?;
        let mut wrote = false;
        let mut appended = false;
        for request in batch {
            match request {
                StoreRequest::Append {
                    ticket,
                    user,
                    frame,
                } => {
                    let ticket = *ticket;
                    let name = match keys::name_of(user) {
                        Ok(name) => name,
                        Err(error) => {
                            events.push(StoreEvent::Failed {
                                ticket: Some(ticket),
                                error,
                            });
                            continue;
                        }
                    };
                    match self.ledger.admit(&name, frame.len() as u64) {
                        Admit::Seq(seq) => {
                            frames.insert(&keys::frame_key(&name, seq)[..], frame.as_ref())?;
                            wrote = true;
                            appended = true;
                            counts.appends += 1;
                            events.push(StoreEvent::Appended { ticket, seq });
                        }
                        Admit::Full => {
                            counts.full += 1;
                            events.push(StoreEvent::Full { ticket });
                        }
                        Admit::StoreFull => {
                            counts.full += 1;
                            self.shared.count_store_full();
                            events.push(StoreEvent::Full { ticket });
                        }
                        Admit::SeqExhausted => events.push(StoreEvent::Failed {
                            ticket: Some(ticket),
                            error: "the store's sequence numbers are used up".to_string(),
                        }),
                    }
                }
                StoreRequest::Load {
                    ticket,
                    user,
                    after_seq,
                    bytes_max,
                } => {
                    counts.loads += 1;
                    let name = match keys::name_of(user) {
                        Ok(name) => name,
                        Err(error) => {
                            events.push(StoreEvent::Failed {
                                ticket: Some(*ticket),
                                error,
                            });
                            continue;
                        }
                    };
                    match load(&frames, &name, *after_seq, *bytes_max) {
                        Ok((loaded, more)) => events.push(StoreEvent::Loaded {
                            ticket: *ticket,
                            user: user.clone(),
                            frames: loaded,
                            more,
                        }),
                        Err(LoadError::Corrupt(error)) => events.push(StoreEvent::Failed {
                            ticket: Some(*ticket),
                            error: format!("{}: {error}", self.path.display()),
                        }),
                        Err(LoadError::Storage(e)) => return Err(e),
                    }
                }
                StoreRequest::Remove { user, seqs } => {
                    counts.removes += 1;
                    let name = match keys::name_of(user) {
                        Ok(name) => name,
                        Err(error) => {
                            events.push(StoreEvent::Failed {
                                ticket: None,
                                error,
                            });
                            continue;
                        }
                    };
                    for &seq in seqs {
                        if let Some(removed) = frames.remove(&keys::frame_key(&name, seq)[..])? {
                            self.ledger.release(&name, removed.value().len() as u64);
                            wrote = true;
                        }
                    }
                }
            }
        }
        drop(frames);
        if appended {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_NEXT_SEQ, &keys::encode_u64(self.ledger.next_seq())[..])?;
        }
        Ok(wrote)
    }
}

enum LoadError {
    /// An entry of the wrong shape: this request fails, the batch goes on.
    Corrupt(String),
    /// The database failed: the batch fails.
    Storage(redb::Error),
}

/// `name`'s frames after `after_seq`, oldest first, while they fit in `bytes_max` (at least
/// one), and whether more follow.
fn load(
    frames: &impl ReadableTable<&'static [u8], &'static [u8]>,
    name: &Name,
    after_seq: u64,
    bytes_max: usize,
) -> Result<(Vec<(u64, Bytes)>, bool), LoadError> {
    let first = keys::frame_key(name, after_seq.saturating_add(1));
    let (_, last) = keys::user_range(name);
    let mut loaded = Vec::new();
    let mut loaded_bytes = 0usize;
    let range = frames
        .range::<&[u8]>(&first[..]..=&last[..])
        .map_err(|e| LoadError::Storage(e.into()))?;
    for entry in range {
        let (key, value) = entry.map_err(|e| LoadError::Storage(e.into()))?;
        match keys::decode_frame_key(key.value()) {
            Some((stored, seq)) if stored == *name => {
                let frame = value.value();
                if !loaded.is_empty() && loaded_bytes.saturating_add(frame.len()) > bytes_max {
                    return Ok((loaded, true));
                }
                loaded_bytes = loaded_bytes.saturating_add(frame.len());
                loaded.push((seq, Bytes::copy_from_slice(frame)));
            }
            _ => {
                return Err(LoadError::Corrupt(format!(
                    "corrupt entry in the frames table: key {:?}",
                    key.value().escape_ascii().to_string()
                )))
            }
        }
    }
    Ok((loaded, false))
}

/// `Failed` for every request that has a ticket, and one without a ticket if the batch had
/// removes (their frames stay stored, so they will be delivered again: at-least-once).
fn failed_events(batch: &[StoreRequest], why: &str) -> Vec<StoreEvent> {
    let mut events = Vec::new();
    let mut removes = 0;
    for request in batch {
        match request {
            StoreRequest::Append { ticket, .. } | StoreRequest::Load { ticket, .. } => {
                events.push(StoreEvent::Failed {
                    ticket: Some(*ticket),
                    error: why.to_string(),
                })
            }
            StoreRequest::Remove { .. } => removes += 1,
        }
    }
    if removes > 0 {
        events.push(StoreEvent::Failed {
            ticket: None,
            error: format!("{removes} remove request(s) not done: {why}"),
        });
    }
    events
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    }
}

type Opened = (Database, HashMap<Name, Usage>, u64);

/// Open or create the file, with its integrity checked, make the tables, and read back what
/// the ledger needs: each user's usage and the next sequence number.
fn open_database(path: &Path, source: Source) -> Result<Opened, StoreError> {
    let redb_error = |e: redb::Error| StoreError::from_redb(path, e);
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let shown = path.display().to_string();
    let mut builder = Builder::new();
    builder
        .set_cache_size(CACHE_BYTES)
        // Verify every page's checksum at open: a corrupt file is an error, never a panic or
        // a silent reset. The cost is one read of the file per start.
        .set_check_integrity_on_open(true)
        .set_repair_callback(move |session| {
            // Called at 0.3 only when the last commit does not verify and redb falls back to the
            // one before it: expected after a power loss (that commit never returned), a sign
            // of damage otherwise. Either way it is not silent.
            if (session.progress() - 0.3).abs() < 1e-6 {
                warn!(
                    "offline store {shown}: the last commit does not verify; rolling back to the \
                     commit before it (expected only after a power loss or an OS crash)"
                );
            }
        });
    let db = match source {
        Source::File => builder.create(path),
        Source::Backend(create) => create(&builder),
    }
    .map_err(|e| redb_error(e.into()))?;

    let txn = db.begin_write().map_err(|e| redb_error(e.into()))?;
    let (usage, next_seq) = {
        let mut meta = txn.open_table(META).map_err(|e| redb_error(e.into()))?;
        let frames = txn.open_table(FRAMES).map_err(|e| redb_error(e.into()))?;
        let read_u64 = |key: &[u8]| -> Result<Option<u64>, StoreError> {
            match meta.get(key).map_err(|e| redb_error(e.into()))? {
                None => Ok(None),
                Some(value) => keys::decode_u64(value.value()).map(Some).ok_or_else(|| {
                    corrupt(format!(
                        "metadata {:?} has {} bytes, not 8",
                        String::from_utf8_lossy(key),
                        value.value().len()
                    ))
                }),
            }
        };
        let layout = read_u64(META_LAYOUT)?;
        let stored_next_seq = read_u64(META_NEXT_SEQ)?;
        match layout {
            Some(LAYOUT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Unsupported {
                    path: path.to_path_buf(),
                    detail: format!(
                        "its table layout is version {other}, this build knows {LAYOUT_VERSION}"
                    ),
                })
            }
            None => {
                if !frames.is_empty().map_err(|e| redb_error(e.into()))? {
                    return Err(corrupt("frames stored but no layout version".to_string()));
                }
                meta.insert(META_LAYOUT, &keys::encode_u64(LAYOUT_VERSION)[..])
                    .map_err(|e| redb_error(e.into()))?;
            }
        }

        let mut usage: HashMap<Name, Usage> = HashMap::new();
        let mut max_seq = None;
        for entry in frames.iter().map_err(|e| redb_error(e.into()))? {
            let (key, value) = entry.map_err(|e| redb_error(e.into()))?;
            let (name, seq) = keys::decode_frame_key(key.value()).ok_or_else(|| {
                corrupt(format!(
                    "a key of the frames table has {} bytes, not {}",
                    key.value().len(),
                    keys::FRAME_KEY_BYTES
                ))
            })?;
            let entry = usage.entry(name).or_default();
            entry.frames += 1;
            entry.bytes += value.value().len() as u64;
            max_seq = max_seq.max(Some(seq));
        }
        // Both: the stored counter survives the removal of every frame; the highest key guards
        // against a counter that fell behind.
        let next_seq = stored_next_seq
            .unwrap_or(FIRST_SEQ)
            .max(max_seq.map_or(FIRST_SEQ, |seq| seq.saturating_add(1)));
        (usage, next_seq)
    };
    txn.commit().map_err(|e| redb_error(e.into()))?;
    Ok((db, usage, next_seq))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "switchboard-store-unit-{}-{n}-{tag}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open_worker(dir: &TempDir, frames_per_user_max: u64) -> Worker {
        let config = StoreConfig {
            data_dir: dir.0.clone(),
            frames_per_user_max,
            ..StoreConfig::default()
        };
        let shared = Arc::new(Shared::new(Box::new(|| {})));
        Worker::open(
            &dir.0.join(super::super::FILE_NAME),
            Source::File,
            &config,
            shared,
        )
        .unwrap()
    }

    fn append(ticket: u64, user: &str, frame: &str) -> StoreRequest {
        StoreRequest::Append {
            ticket,
            user: user.as_bytes().to_vec(),
            frame: Bytes::copy_from_slice(frame.as_bytes()),
        }
    }

    fn load(ticket: u64, user: &str) -> StoreRequest {
        StoreRequest::Load {
            ticket,
            user: user.as_bytes().to_vec(),
            after_seq: 0,
            bytes_max: usize::MAX,
        }
    }

    fn loaded(user: &str, ticket: u64, frames: &[(u64, &str)]) -> StoreEvent {
        StoreEvent::Loaded {
            ticket,
            user: user.as_bytes().to_vec(),
            frames: frames
                .iter()
                .map(|&(seq, f)| (seq, Bytes::copy_from_slice(f.as_bytes())))
                .collect(),
            more: false,
        }
    }

    #[test]
    fn a_backlog_loads_a_page_at_a_time_from_where_the_last_page_ended() {
        let dir = TempDir::new("pages");
        let mut worker = open_worker(&dir, 100);
        worker.execute(vec![
            append(1, "ann", "aaaa"),
            append(2, "bob", "bbbb"),
            append(3, "ann", "cccc"),
            append(4, "ann", "dddd"),
        ]);
        let page = |after_seq, bytes_max| StoreRequest::Load {
            ticket: 9,
            user: b"ann".to_vec(),
            after_seq,
            bytes_max,
        };
        let frames = |list: &[(u64, &str)]| -> Vec<(u64, Bytes)> {
            list.iter()
                .map(|&(seq, f)| (seq, Bytes::copy_from_slice(f.as_bytes())))
                .collect()
        };
        let events = worker.execute(vec![page(0, 8), page(3, 8), page(0, 1), page(4, 8)]);
        let expected = [
            (frames(&[(1, "aaaa"), (3, "cccc")]), true),
            (frames(&[(4, "dddd")]), false),
            // A page smaller than one frame still carries that frame.
            (frames(&[(1, "aaaa")]), true),
            (frames(&[]), false),
        ];
        assert_eq!(events.len(), expected.len());
        for (event, (want, want_more)) in events.into_iter().zip(expected) {
            match event {
                StoreEvent::Loaded { frames, more, .. } => {
                    assert_eq!((frames, more), (want, want_more));
                }
                other => panic!("not Loaded: {other:?}"),
            }
        }
    }

    #[test]
    fn one_batch_sees_its_own_appends_and_removes_in_order_with_one_commit() {
        let dir = TempDir::new("batch");
        let mut worker = open_worker(&dir, 100);
        let events = worker.execute(vec![
            append(1, "ann", "a1"),
            append(2, "bob", "b1"),
            append(3, "ann", "a2"),
            load(4, "ann"),
            StoreRequest::Remove {
                user: b"ann".to_vec(),
                seqs: vec![1, 2, 99],
            },
            load(5, "ann"),
            load(6, "bob"),
            load(7, "nobody"),
        ]);
        assert_eq!(
            events,
            vec![
                StoreEvent::Appended { ticket: 1, seq: 1 },
                StoreEvent::Appended { ticket: 2, seq: 2 },
                StoreEvent::Appended { ticket: 3, seq: 3 },
                loaded("ann", 4, &[(1, "a1"), (3, "a2")]),
                // Seq 2 is bob's: a remove for ann leaves it alone; 99 is unknown.
                loaded("ann", 5, &[(3, "a2")]),
                loaded("bob", 6, &[(2, "b1")]),
                loaded("nobody", 7, &[]),
            ]
        );
        assert_eq!(worker.shared.commits.load(Ordering::Relaxed), 1);
        assert_eq!(
            worker.ledger.usage(&keys::name_of(b"ann").unwrap()).frames,
            1
        );
    }

    #[test]
    fn a_batch_that_writes_nothing_does_not_commit() {
        let dir = TempDir::new("readonly");
        let mut worker = open_worker(&dir, 1);
        worker.execute(vec![append(1, "ann", "a1")]);
        assert_eq!(worker.shared.commits.load(Ordering::Relaxed), 1);
        let events = worker.execute(vec![
            load(2, "ann"),
            append(3, "ann", "refused"),
            StoreRequest::Remove {
                user: b"ann".to_vec(),
                seqs: vec![42],
            },
        ]);
        assert_eq!(
            events,
            vec![
                loaded("ann", 2, &[(1, "a1")]),
                StoreEvent::Full { ticket: 3 }
            ]
        );
        assert_eq!(worker.shared.commits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_invalid_user_key_fails_only_its_request() {
        let dir = TempDir::new("badkey");
        let mut worker = open_worker(&dir, 100);
        let events = worker.execute(vec![
            append(1, "toolongname", "x"),
            append(2, "ann", "a1"),
            StoreRequest::Load {
                ticket: 3,
                user: b"a\0b".to_vec(),
                after_seq: 0,
                bytes_max: 1024,
            },
            StoreRequest::Remove {
                user: b"123456789".to_vec(),
                seqs: vec![1],
            },
        ]);
        assert_eq!(events.len(), 4);
        assert!(
            matches!(&events[0], StoreEvent::Failed { ticket: Some(1), error } if error.contains("at most 8"))
        );
        assert_eq!(events[1], StoreEvent::Appended { ticket: 2, seq: 1 });
        assert!(
            matches!(&events[2], StoreEvent::Failed { ticket: Some(3), error } if error.contains("NUL"))
        );
        assert!(matches!(
            &events[3],
            StoreEvent::Failed { ticket: None, .. }
        ));
    }

    #[test]
    fn a_stopped_worker_answers_every_request_with_failed() {
        let dir = TempDir::new("broken");
        let mut worker = open_worker(&dir, 100);
        worker.broken = Some("stopped for the test".to_string());
        let events = worker.execute(vec![
            append(1, "ann", "a1"),
            StoreRequest::Remove {
                user: b"ann".to_vec(),
                seqs: vec![1],
            },
            load(2, "ann"),
            StoreRequest::Remove {
                user: b"bob".to_vec(),
                seqs: vec![1],
            },
        ]);
        let tickets: Vec<_> = events
            .iter()
            .map(|e| match e {
                StoreEvent::Failed { ticket, .. } => *ticket,
                other => panic!("not Failed: {other:?}"),
            })
            .collect();
        assert_eq!(tickets, vec![Some(1), Some(2), None]);
        assert!(
            matches!(&events[2], StoreEvent::Failed { error, .. } if error.starts_with("2 remove"))
        );
    }

    #[test]
    fn sequence_numbers_continue_after_reopen_even_with_every_frame_removed() {
        let dir = TempDir::new("seq");
        {
            let mut worker = open_worker(&dir, 100);
            worker.execute(vec![append(1, "ann", "a1"), append(2, "ann", "a2")]);
            worker.execute(vec![StoreRequest::Remove {
                user: b"ann".to_vec(),
                seqs: vec![1, 2],
            }]);
            worker.close().unwrap();
        }
        let mut worker = open_worker(&dir, 100);
        assert_eq!(worker.ledger.users(), 0);
        assert_eq!(
            worker.execute(vec![append(3, "ann", "a3")]),
            vec![StoreEvent::Appended { ticket: 3, seq: 3 }]
        );
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&"boom".to_string()), "boom");
        assert_eq!(panic_message(&42), "no message");
    }
}
