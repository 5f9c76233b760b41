//! The durable offline store: BIN24 frames kept for users who are offline, surviving restart
//! and kill -9 (protocols.md, BIN24 rules 2, 4, 6, 7 and 8).
//!
//! The reactor never waits for the disk. [`OfflineStore::submit`] puts a request on an
//! unbounded channel and returns; a storage thread takes the first waiting request and up to
//! `group_commit_max - 1` more, runs them in order in one redb write transaction, commits it
//! durably (fsync) once for all of them (group commit), queues one [`StoreEvent`] per request
//! and calls the `wake` callback once. The reactor passes a callback that wakes its poll, then
//! drains [`OfflineStore::try_recv`]. This module depends on std, bytes, redb and log only.
//!
//! On disk (`<data_dir>/offline.redb`): a `frames` table keyed by (user name NUL-padded to 8
//! bytes, sequence number big-endian), so a user's frames are one range that iterates oldest
//! first, holding each frame's bytes as given; a `meta` table with the layout version and the
//! next sequence number, so a number is never handed out twice, across restarts included. The
//! per-user counters that enforce the limits are rebuilt from the frames table at open.

mod error;
mod keys;
mod ledger;
mod worker;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use log::error;

use crate::histogram::{AtomicHistogram, Histogram};

pub use error::StoreError;

/// The store's file inside [`StoreConfig::data_dir`].
pub const FILE_NAME: &str = "offline.redb";

/// A user's key: the BIN24 name bytes up to the first NUL (at most 8 bytes, no NUL).
pub type UserKey = Vec<u8>;

/// Whether `user` can be a user key (see [`UserKey`]); why not otherwise.
pub(crate) fn check_user_key(user: &[u8]) -> Result<(), String> {
    keys::name_of(user).map(|_| ())
}

/// What the reactor asks of the store. Requests run in the order they were submitted.
#[derive(Clone, Debug)]
pub enum StoreRequest {
    /// Store `frame` (already type 2, ready to send) after every frame stored for `user` before.
    Append {
        ticket: u64,
        user: UserKey,
        frame: Bytes,
    },
    /// Read `user`'s frames after `after_seq`, oldest first, as many as fit in `bytes_max`
    /// (at least one): a backlog is loaded a page at a time, so a large one never sits in
    /// memory whole. Sees every Append submitted before it.
    Load {
        ticket: u64,
        user: UserKey,
        after_seq: u64,
        bytes_max: usize,
    },
    /// Remove these frames of `user` (they were delivered). Unknown seqs are ignored.
    Remove { user: UserKey, seqs: Vec<u64> },
}

/// What the store answers, one event per `Append` and `Load`; a `Remove` is answered only if
/// it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// The frame is durable (its commit has returned). `seq` identifies it for Remove.
    Appended { ticket: u64, seq: u64 },
    /// Not stored: the user's store is full (frames or bytes limit), or the whole store is
    /// (`--store-frames-max`, `--store-bytes-max`). Nothing was written.
    Full { ticket: u64 },
    Loaded {
        ticket: u64,
        user: UserKey,
        frames: Vec<(u64, Bytes)>,
        /// More frames follow the last one returned.
        more: bool,
    },
    /// The store failed (I/O error, corruption found at run time). `ticket` if tied to a request.
    /// The server treats this as fatal for durability and logs it at error level.
    Failed { ticket: Option<u64>, error: String },
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Created if missing; the store is the file [`FILE_NAME`] inside it.
    pub data_dir: PathBuf,
    /// Most frames stored for one user.
    pub frames_per_user_max: u64,
    /// Most bytes (sum of frame lengths) stored for one user.
    pub bytes_per_user_max: u64,
    /// Most frames and bytes stored for every user together: the disk's bound, whatever the
    /// number of recipients.
    pub frames_max: u64,
    pub bytes_max: u64,
    /// Most requests run in one transaction (one durable commit); 0 counts as 1.
    pub group_commit_max: usize,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            data_dir: PathBuf::from("data"),
            frames_per_user_max: 100_000,
            bytes_per_user_max: 64 * 1024 * 1024,
            frames_max: 10_000_000,
            bytes_max: 1024 * 1024 * 1024,
            group_commit_max: 512,
        }
    }
}

/// What the front and the storage thread share.
pub(crate) struct Shared {
    /// Requests submitted whose events are not yet queued.
    pending: AtomicUsize,
    /// Durable commits done.
    commits: AtomicU64,
    /// How long each durable commit took (the fsync), for the metrics.
    commit_latency: AtomicHistogram,
    /// Frames, bytes and users held, as of the last commit.
    stored_frames: AtomicU64,
    stored_bytes: AtomicU64,
    stored_users: AtomicU64,
    /// Appends refused because the whole store was at its limit.
    refused_store_full: AtomicU64,
    /// A batch failed and the storage thread stopped using the database until a restart.
    stopped: AtomicBool,
    /// The front is closing: a storage thread that is retrying (Redis unreachable) gives up
    /// after a bound instead of holding the shutdown for ever.
    closing: AtomicBool,
    wake: Mutex<Box<dyn Fn() + Send>>,
}

impl Shared {
    pub(crate) fn new(wake: Box<dyn Fn() + Send>) -> Shared {
        Shared {
            pending: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
            commit_latency: AtomicHistogram::default(),
            stored_frames: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            stored_users: AtomicU64::new(0),
            refused_store_full: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            wake: Mutex::new(wake),
        }
    }

    /// `count` requests are answered (their events queued), for [`OfflineStore::pending`].
    pub(crate) fn finished(&self, count: usize) {
        self.pending.fetch_sub(count, Ordering::SeqCst);
    }

    /// One durable write (a commit, or a Redis script that wrote) took `took`.
    pub(crate) fn record_commit(&self, took: std::time::Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_latency.record(took);
    }

    /// What the store holds now, for the metrics.
    pub(crate) fn set_usage(&self, frames: u64, bytes: u64, users: u64) {
        self.stored_frames.store(frames, Ordering::Relaxed);
        self.stored_bytes.store(bytes, Ordering::Relaxed);
        self.stored_users.store(users, Ordering::Relaxed);
    }

    /// An append refused because the whole store is at its limit.
    pub(crate) fn count_store_full(&self) {
        self.refused_store_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the front has started closing.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Call the reactor's callback. A panic in it is logged, not carried into the storage
    /// thread, which must go on answering requests.
    pub(crate) fn wake(&self) {
        // The lock is never held across a panic (caught below), so poisoning cannot happen;
        // recovering from it anyway costs nothing.
        let wake = self
            .wake
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if panic::catch_unwind(AssertUnwindSafe(&**wake)).is_err() {
            error!("offline store: the wake callback panicked");
        }
    }
}

/// A reading of the store's gauges and counters ([`OfflineStore::metrics`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Requests submitted and not yet answered: the storage thread's queue depth.
    pub pending_requests: u64,
    /// Durable commits since open.
    pub commits: u64,
    /// Time each durable commit took.
    pub commit_latency: Histogram,
    /// Frames and bytes held for offline users, and how many users hold any, as of the last
    /// commit.
    pub stored_frames: u64,
    pub stored_bytes: u64,
    pub stored_users: u64,
    /// Appends refused ("507") because the whole store was at `--store-frames-max` or
    /// `--store-bytes-max`.
    pub refused_store_full: u64,
    /// A batch failed (I/O error, corruption met at run time): since then every append is
    /// refused ("507") and every load and remove fails (frames stay stored) until a restart.
    pub stopped: bool,
    /// Filled in by the server from BIN24's custody of stored frames (the store itself does
    /// not know them): frames delivered by how, frames kept for redelivery, refused logins,
    /// and stored bytes held in memory.
    pub delivered_answered: u64,
    pub delivered_grace: u64,
    pub delivered_clean_close: u64,
    pub kept_for_redelivery: u64,
    pub logins_refused: u64,
    pub loaded_bytes: u64,
}

/// The reactor's handle on the store. Not `Sync`: it belongs to one thread.
pub struct OfflineStore {
    requests: Option<Sender<StoreRequest>>,
    events: Receiver<StoreEvent>,
    /// For `submit` to answer by itself when the storage thread is gone.
    events_tx: Sender<StoreEvent>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), StoreError>>>,
    path: PathBuf,
}

impl OfflineStore {
    /// Open (or create) the store and start the storage thread. A corrupt or unreadable store is a
    /// clear error, never a silent reset. `wake` is called (from the storage thread) after each batch
    /// of events is ready.
    ///
    /// Opening reads the whole file once (redb's integrity check, then the per-user counters).
    pub fn open(
        config: StoreConfig,
        wake: Box<dyn Fn() + Send>,
    ) -> Result<OfflineStore, StoreError> {
        OfflineStore::open_on(config, worker::Source::File, wake)
    }

    /// [`OfflineStore::open`] on a redb storage backend the caller supplies instead of the file
    /// [`FILE_NAME`] in `config.data_dir` (which is still created, and names the store in
    /// messages). For tests that make the disk fail or watch what reaches it: a backend that
    /// wraps redb's `FileBackend` on that file, fails its writes or syncs, and records them.
    /// `chatd` always opens the file.
    pub fn open_on_backend(
        config: StoreConfig,
        backend: impl redb::StorageBackend,
        wake: Box<dyn Fn() + Send>,
    ) -> Result<OfflineStore, StoreError> {
        OfflineStore::open_on(config, worker::Source::backend(backend), wake)
    }

    fn open_on(
        config: StoreConfig,
        source: worker::Source,
        wake: Box<dyn Fn() + Send>,
    ) -> Result<OfflineStore, StoreError> {
        prepare_dir(&config.data_dir)?;
        let path = config.data_dir.join(FILE_NAME);
        let shared = Arc::new(Shared::new(wake));
        let worker = worker::Worker::open(&path, source, &config, Arc::clone(&shared))?;
        let group_commit_max = config.group_commit_max;
        OfflineStore::start(path, shared, move |requests, events| {
            worker.run(requests, events, group_commit_max)
        })
    }

    /// A store whose storage thread runs `run` (the redb worker, or another backend such as
    /// the cluster's Redis store, `crate::cluster::offline`): it takes the requests in order
    /// from its channel, queues one event per request as [`StoreRequest`] says, calls
    /// [`Shared::finished`] after queueing them and [`Shared::wake`], and returns once the
    /// channel is closed and empty. `path` names the store in messages.
    pub(crate) fn start(
        path: PathBuf,
        shared: Arc<Shared>,
        run: impl FnOnce(Receiver<StoreRequest>, Sender<StoreEvent>) -> Result<(), StoreError>
            + Send
            + 'static,
    ) -> Result<OfflineStore, StoreError> {
        let (requests, requests_rx) = mpsc::channel();
        let (events_tx, events) = mpsc::channel();
        let thread_events = events_tx.clone();
        let thread = std::thread::Builder::new()
            .name("store".to_string())
            .spawn(move || run(requests_rx, thread_events))
            .map_err(|source| StoreError::Spawn { source })?;
        Ok(OfflineStore {
            requests: Some(requests),
            events,
            events_tx,
            shared,
            thread: Some(thread),
            path,
        })
    }

    /// Never blocks (unbounded std mpsc channel; the reactor bounds what it submits).
    pub fn submit(&self, request: StoreRequest) {
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        let refused = match &self.requests {
            Some(requests) => requests.send(request).err().map(|e| e.0),
            None => Some(request),
        };
        if let Some(request) = refused {
            // The storage thread is gone (it panicked outside a batch): answer here, so that no
            // request waits forever.
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            let error = "the offline store's storage thread has stopped".to_string();
            let ticket = match request {
                StoreRequest::Append { ticket, .. } | StoreRequest::Load { ticket, .. } => {
                    Some(ticket)
                }
                StoreRequest::Remove { .. } => None,
            };
            let _ = self.events_tx.send(StoreEvent::Failed { ticket, error });
            self.shared.wake();
        }
    }

    /// Next completed event, if any; never blocks.
    pub fn try_recv(&self) -> Option<StoreEvent> {
        self.events.try_recv().ok()
    }

    /// Requests submitted and not yet completed (for shutdown and stats). A request counts as
    /// completed once its event (if it has one) is queued for [`OfflineStore::try_recv`].
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Durable commits done since open: with group commit, far fewer than appends.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// What the store holds and how its commits went, for the metrics; a few atomic loads.
    pub fn metrics(&self) -> StoreMetrics {
        StoreMetrics {
            pending_requests: self.pending() as u64,
            commits: self.commits(),
            commit_latency: self.shared.commit_latency.snapshot(),
            stored_frames: self.shared.stored_frames.load(Ordering::Relaxed),
            stored_bytes: self.shared.stored_bytes.load(Ordering::Relaxed),
            stored_users: self.shared.stored_users.load(Ordering::Relaxed),
            refused_store_full: self.shared.refused_store_full.load(Ordering::Relaxed),
            stopped: self.shared.stopped.load(Ordering::Relaxed),
            ..StoreMetrics::default()
        }
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finish every submitted request (durably), stop the thread, and return. Used at shutdown.
    ///
    /// Events not yet received are dropped. An error also reports batches that failed earlier
    /// (each was already answered with [`StoreEvent::Failed`]).
    pub fn close(mut self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        // The storage thread finishes what is queued, then sees the channel closed.
        self.shared.closing.store(true, Ordering::SeqCst);
        drop(self.requests.take());
        match self.thread.take() {
            None => Ok(()),
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(StoreError::ThreadPanicked {
                    path: self.path.clone(),
                })
            }),
        }
    }
}

impl Drop for OfflineStore {
    /// Finishes pending work and stops the thread, like [`OfflineStore::close`]; an error is
    /// logged, never a panic.
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            error!("{e}");
        }
    }
}

/// `create_dir_all`, with a clear error when the path is taken by a file.
fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.exists() && !dir.is_dir() {
        return Err(StoreError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })
}
