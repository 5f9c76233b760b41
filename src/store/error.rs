//! Why the store could not open, or failed while running.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Every message names the path it is about, so a log line is enough to act on.
#[derive(Debug)]
pub enum StoreError {
    /// `create_dir_all` of the data directory failed.
    CreateDir { dir: PathBuf, source: io::Error },
    /// The data directory's path is taken by something that is not a directory.
    NotADirectory { dir: PathBuf },
    /// The store file could not be opened or read: permission, missing parent, disk error.
    Io { path: PathBuf, source: io::Error },
    /// Another process (or another `OfflineStore` in this one) has the file open.
    Locked { path: PathBuf },
    /// The file is not a redb database, or its checksums or contents do not verify.
    Corrupt { path: PathBuf, detail: String },
    /// A redb database, but one this build cannot use (other file format or layout version).
    Unsupported { path: PathBuf, detail: String },
    /// Any other failure reported by the database while opening or closing.
    Database { path: PathBuf, detail: String },
    /// The cluster's offline store in Redis (`--cluster`) cannot be used: a bad URL.
    Redis { url: String, detail: String },
    /// The storage thread could not be started.
    Spawn { source: io::Error },
    /// The storage thread panicked (a bug); requests in flight were answered `Failed` if possible.
    ThreadPanicked { path: PathBuf },
    /// Some batches failed while the store ran (each was reported as `StoreEvent::Failed`).
    Failed {
        path: PathBuf,
        batches: u64,
        first: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CreateDir { dir, source } => write!(
                f,
                "cannot create the offline store's data directory {}: {source}",
                dir.display()
            ),
            StoreError::NotADirectory { dir } => write!(
                f,
                "the offline store's data directory {} exists but is not a directory",
                dir.display()
            ),
            StoreError::Io { path, source } => write!(
                f,
                "cannot open the offline store {}: {source}",
                path.display()
            ),
            StoreError::Locked { path } => write!(
                f,
                "cannot open the offline store {}: it is locked by another process (is another \
                 chatd running with the same data directory?)",
                path.display()
            ),
            StoreError::Corrupt { path, detail } => write!(
                f,
                "the offline store {} is corrupt or not a redb database ({detail}); it was left \
                 untouched: move it away to start with an empty store, or restore a backup",
                path.display()
            ),
            StoreError::Unsupported { path, detail } => write!(
                f,
                "the offline store {} cannot be used by this version of chatd: {detail}",
                path.display()
            ),
            StoreError::Database { path, detail } => {
                write!(f, "the offline store {} failed: {detail}", path.display())
            }
            StoreError::Redis { url, detail } => {
                write!(
                    f,
                    "the offline store in Redis {url} cannot be used: {detail}"
                )
            }
            StoreError::Spawn { source } => {
                write!(
                    f,
                    "cannot start the offline store's storage thread: {source}"
                )
            }
            StoreError::ThreadPanicked { path } => write!(
                f,
                "the storage thread of the offline store {} panicked",
                path.display()
            ),
            StoreError::Failed {
                path,
                batches,
                first,
            } => write!(
                f,
                "the offline store {} failed {batches} batch(es) of requests; the first: {first}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::CreateDir { source, .. }
            | StoreError::Io { source, .. }
            | StoreError::Spawn { source } => Some(source),
            _ => None,
        }
    }
}

impl StoreError {
    /// Sorts a redb error met while opening `path`.
    pub(crate) fn from_redb(path: &std::path::Path, error: redb::Error) -> StoreError {
        let path = path.to_path_buf();
        match error {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                StoreError::Locked { path }
            }
            // redb reports a file that is not a redb database (bad magic number, too short) as
            // an I/O error; it is a property of the file, not of the disk.
            redb::Error::Io(source)
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                StoreError::Corrupt {
                    path,
                    detail: source.to_string(),
                }
            }
            redb::Error::Io(source) => StoreError::Io { path, source },
            redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
            redb::Error::UpgradeRequired(version) => StoreError::Unsupported {
                path,
                detail: format!("its file format version is {version}"),
            },
            redb::Error::TableTypeMismatch { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TableIsNotMultimap(_)
            | redb::Error::TypeDefinitionChanged { .. } => StoreError::Unsupported {
                path,
                detail: format!("its tables have another layout ({error})"),
            },
            other => StoreError::Database {
                path,
                detail: other.to_string(),
            },
        }
    }
}
