//! Received files on disk: safe names, a temporary file while the bytes arrive, a final name
//! that never replaces an existing file, and caps on what one peer may make us store.
//!
//! MATOU sends no file name, only a size and the bytes, so nothing from the network ever
//! becomes part of a path: a file from bob is named `from-bob-N.bin`, where `bob` keeps only
//! the letters and digits of the peer's name. While it arrives it is written to a hidden
//! `.from-bob-PID-K.part` created with `create_new`, so two transfers never share a file; when
//! complete, the final name is reserved with `create_new` too and the temporary file is renamed
//! over that reservation. A transfer that fails removes its temporary file.
//!
//! Choosing N is O(1) amortised: the folder is read once per peer name, for the highest N
//! already there, and a counter goes on from it (trying the next number only when another
//! program took one meanwhile). Trying 1, 2, 3... for every file made receiving the 10,000th
//! file of a peer cost 10,000 failed opens, and 10,000 files 31 s of CPU.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Longest part of a peer's name kept in a file name (a valid name is at most 32 bytes).
const STEM_CHARS_MAX: usize = 32;

/// How many names in a row may turn out taken (by another program, between the folder's
/// reading and our `create_new`) before giving up.
const NAMES_TRIED_MAX: u32 = 1_000;

/// `from-<peer>`: the peer's letters and digits only, so no separator, dot or control
/// character from the network reaches the file system.
pub(super) fn safe_stem(peer: &str) -> String {
    let kept: String = peer
        .chars()
        .filter(|c| c.is_alphanumeric())
        .take(STEM_CHARS_MAX)
        .collect();
    if kept.is_empty() {
        "from-peer".into()
    } else {
        format!("from-{kept}")
    }
}

/// The final name of the `n`th file of a stem: `from-bob-1.bin`, `from-bob-2.bin`, ...
pub(super) fn final_name(stem: &str, n: u64) -> String {
    format!("{stem}-{n}.bin")
}

/// The `n` of a final name of `stem`, if `name` is one.
fn final_number(stem: &str, name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(stem)?
        .strip_prefix('-')?
        .strip_suffix(".bin")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What the user allows one peer to make us store in a session (the flags).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReceiveLimits {
    /// Files announced per peer (--receive-files-max).
    pub(super) files_max: u64,
    /// Bytes announced per peer, all files together (--receive-bytes-max).
    pub(super) bytes_max: u64,
}

/// Where received files go and what has been received, shared by every link's threads.
pub(super) struct Downloads {
    /// The folder, or why there is none (no --download-dir and no home folder).
    dir: Result<PathBuf, String>,
    limits: ReceiveLimits,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per stem, the next final number to try.
    next_final: HashMap<String, u64>,
    /// The number of the next temporary file.
    next_temp: u64,
    /// Per peer name: files and bytes announced so far.
    received: HashMap<String, (u64, u64)>,
    /// Every `create_new` tried, for the tests of the cost.
    attempts: u64,
}

impl Downloads {
    pub(super) fn new(dir: Result<PathBuf, String>, limits: ReceiveLimits) -> Downloads {
        Downloads {
            dir,
            limits,
            state: Mutex::new(State::default()),
        }
    }

    pub(super) fn dir(&self) -> Result<&Path, String> {
        self.dir.as_deref().map_err(Clone::clone)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked; the counts are still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A file of `size` bytes is announced by `peer`: counted, or refused (the reason) when it
    /// would take the peer over a cap. Nothing is on disk yet either way.
    pub(super) fn admit(&self, peer: &str, size: u64) -> Result<(), String> {
        let limits = self.limits;
        let mut state = self.state();
        let (files, bytes) = state.received.entry(peer.to_owned()).or_default();
        if *files >= limits.files_max {
            return Err(format!(
                "refused a file of {size} bytes from {peer}: {peer} has sent {files} files in \
                 this session, the most --receive-files-max ({}) allows",
                limits.files_max
            ));
        }
        if bytes.saturating_add(size) > limits.bytes_max {
            return Err(format!(
                "refused a file of {size} bytes from {peer}: with the {bytes} bytes {peer} has \
                 sent in this session it would pass --receive-bytes-max ({})",
                limits.bytes_max
            ));
        }
        *files += 1;
        *bytes += size;
        Ok(())
    }

    /// Creates the download folder if missing, then a new temporary file in it.
    pub(super) fn create(&self, peer: &str) -> io::Result<Download> {
        let dir = self
            .dir
            .as_ref()
            .map_err(|reason| io::Error::other(reason.clone()))?;
        fs::create_dir_all(dir)?;
        let stem = safe_stem(peer);
        let pid = std::process::id();
        for _ in 0..NAMES_TRIED_MAX {
            let n = {
                let mut state = self.state();
                state.attempts += 1;
                state.next_temp += 1;
                state.next_temp
            };
            let temp = dir.join(format!(".{stem}-{pid}-{n}.part"));
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(Download {
                        dir: dir.clone(),
                        stem,
                        temp,
                        file,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(too_many_taken(dir))
    }

    /// Reserves the next free final name of `stem` in `dir` with `create_new`.
    fn reserve_final(&self, dir: &Path, stem: &str) -> io::Result<PathBuf> {
        let mut state = self.state();
        let mut next = match state.next_final.get(stem) {
            Some(&next) => next,
            None => highest_final(dir, stem)? + 1,
        };
        for _ in 0..NAMES_TRIED_MAX {
            state.attempts += 1;
            let path = dir.join(final_name(stem, next));
            next += 1;
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => {
                    state.next_final.insert(stem.to_owned(), next);
                    return Ok(path);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    state.next_final.insert(stem.to_owned(), next);
                    return Err(e);
                }
            }
        }
        state.next_final.insert(stem.to_owned(), next);
        Err(too_many_taken(dir))
    }

    #[cfg(test)]
    fn attempts(&self) -> u64 {
        self.state().attempts
    }
}

/// The highest N of the `stem-N.bin` files in `dir`, 0 if none: one reading of the folder.
fn highest_final(dir: &Path, stem: &str) -> io::Result<u64> {
    let mut highest = 0;
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(n) = name.to_str().and_then(|name| final_number(stem, name)) {
            highest = highest.max(n);
        }
    }
    Ok(highest)
}

fn too_many_taken(dir: &Path) -> io::Error {
    io::Error::other(format!(
        "{NAMES_TRIED_MAX} names in a row were taken in {}",
        dir.display()
    ))
}

/// A file being received.
pub(super) struct Download {
    dir: PathBuf,
    stem: String,
    temp: PathBuf,
    file: File,
}

impl Download {
    pub(super) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    /// The file is complete: gives it its final name and returns it.
    pub(super) fn finish(self, downloads: &Downloads) -> io::Result<PathBuf> {
        let Download {
            dir,
            stem,
            temp,
            file,
        } = self;
        drop(file);
        let placed = downloads.reserve_final(&dir, &stem).and_then(|path| {
            // Renaming over our own empty reservation: nobody else's file is replaced.
            match fs::rename(&temp, &path) {
                Ok(()) => Ok(path),
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    Err(e)
                }
            }
        });
        if placed.is_err() {
            let _ = fs::remove_file(&temp);
        }
        placed
    }

    /// The transfer failed: the partial file is removed.
    pub(super) fn abandon(self) {
        drop(self.file);
        let _ = fs::remove_file(&self.temp);
    }
}

/// Where received files go by default: the per-user data folder of the XDG base directory
/// specification, `$XDG_DATA_HOME/switchboard/downloads`, or
/// `~/.local/share/switchboard/downloads` when XDG_DATA_HOME is unset or not absolute (as the
/// specification says). The error says why there is none.
pub(super) fn default_download_dir(
    xdg_data_home: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, String> {
    let data = match xdg_data_home.map(Path::new).filter(|p| p.is_absolute()) {
        Some(data) => data.to_path_buf(),
        None => match home.map(Path::new).filter(|p| p.is_absolute()) {
            Some(home) => home.join(".local").join("share"),
            None => {
                return Err(
                    "no folder for received files: neither XDG_DATA_HOME nor HOME is \
                            set; give one with --download-dir"
                        .into(),
                )
            }
        },
    };
    Ok(data.join("switchboard").join("downloads"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty folder under the system's temporary folder, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("chat-matou-files-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn stems_keep_only_letters_and_digits() {
        assert_eq!(safe_stem("bob"), "from-bob");
        assert_eq!(safe_stem("Zoé42"), "from-Zoé42");
        assert_eq!(safe_stem("../../etc/passwd"), "from-etcpasswd");
        assert_eq!(safe_stem("/abs"), "from-abs");
        assert_eq!(safe_stem("a\\b\0c\nd"), "from-abcd");
        assert_eq!(safe_stem(".."), "from-peer");
        assert_eq!(safe_stem(""), "from-peer");
        assert_eq!(
            safe_stem(&"x".repeat(100)),
            format!("from-{}", "x".repeat(32))
        );
        for hostile in ["../x", "a/b", "..", "C:\\x", "x\u{202e}y"] {
            let name = final_name(&safe_stem(hostile), 1);
            assert!(
                !name.contains('/') && !name.contains('\\') && !name.contains(".."),
                "{hostile:?} gave {name:?}"
            );
            assert_eq!(Path::new(&name).components().count(), 1, "{name:?}");
        }
        assert_eq!(final_name("from-bob", 3), "from-bob-3.bin");
    }

    fn downloads(dir: &Path) -> Downloads {
        Downloads::new(
            Ok(dir.to_path_buf()),
            ReceiveLimits {
                files_max: u64::MAX,
                bytes_max: u64::MAX,
            },
        )
    }

    #[test]
    fn downloads_never_overwrite_and_count_on_past_existing_names() {
        let scratch = Scratch::new("overwrite");
        let dir = scratch.0.join("downloads");
        let downloads = downloads(&dir);
        // Created if missing, nested folders included.
        let mut first = downloads.create("bob").unwrap();
        first.write(b"one").unwrap();
        fs::write(dir.join("from-bob-1.bin"), b"mine").unwrap();
        let mut second = downloads.create("bob").unwrap();
        second.write(b"two").unwrap();

        assert_eq!(
            first.finish(&downloads).unwrap(),
            dir.join("from-bob-2.bin")
        );
        // Another program takes the next name meanwhile: skipped, not replaced.
        fs::write(dir.join("from-bob-3.bin"), b"theirs").unwrap();
        assert_eq!(
            second.finish(&downloads).unwrap(),
            dir.join("from-bob-4.bin")
        );
        assert_eq!(fs::read(dir.join("from-bob-1.bin")).unwrap(), b"mine");
        assert_eq!(fs::read(dir.join("from-bob-2.bin")).unwrap(), b"one");
        assert_eq!(fs::read(dir.join("from-bob-3.bin")).unwrap(), b"theirs");
        assert_eq!(fs::read(dir.join("from-bob-4.bin")).unwrap(), b"two");
        assert_eq!(
            names(&dir),
            [
                "from-bob-1.bin",
                "from-bob-2.bin",
                "from-bob-3.bin",
                "from-bob-4.bin"
            ],
            "no temporary file left"
        );
        // Another peer's series is its own; a name that only looks like ours is not counted.
        fs::write(dir.join("from-bob-99.bin.txt"), b"").unwrap();
        fs::write(dir.join("from-bobby-50.bin"), b"").unwrap();
        let carol = downloads.create("carol").unwrap();
        assert_eq!(
            carol.finish(&downloads).unwrap(),
            dir.join("from-carol-1.bin")
        );
        let bob = downloads.create("bob").unwrap();
        assert_eq!(bob.finish(&downloads).unwrap(), dir.join("from-bob-5.bin"));
    }

    #[test]
    fn a_new_session_goes_on_after_the_highest_number_in_the_folder() {
        let scratch = Scratch::new("session");
        fs::create_dir_all(&scratch.0).unwrap();
        fs::write(scratch.0.join("from-bob-7.bin"), b"").unwrap();
        fs::write(scratch.0.join("from-bob-3.bin"), b"").unwrap();
        let downloads = downloads(&scratch.0);
        let bob = downloads.create("bob").unwrap();
        assert_eq!(
            bob.finish(&downloads).unwrap(),
            scratch.0.join("from-bob-8.bin")
        );
    }

    #[test]
    fn choosing_a_name_costs_the_same_for_the_first_file_and_the_thousandth() {
        let scratch = Scratch::new("cost");
        let downloads = downloads(&scratch.0);
        const FILES: u64 = 300;
        for _ in 0..FILES {
            let file = downloads.create("bob").unwrap();
            file.finish(&downloads).unwrap();
        }
        // One temporary and one final name per file, none tried twice: trying 1, 2, 3...
        // each time would have cost FILES * FILES / 2 here.
        assert_eq!(downloads.attempts(), 2 * FILES);
        assert_eq!(names(&scratch.0).len(), FILES as usize);
    }

    #[test]
    fn files_and_bytes_per_peer_are_capped() {
        let scratch = Scratch::new("caps");
        let downloads = Downloads::new(
            Ok(scratch.0.clone()),
            ReceiveLimits {
                files_max: 2,
                bytes_max: 100,
            },
        );
        assert_eq!(downloads.admit("bob", 60), Ok(()));
        let over = downloads.admit("bob", 41).unwrap_err();
        assert!(over.contains("--receive-bytes-max (100)"), "{over}");
        assert_eq!(downloads.admit("bob", 40), Ok(()));
        let over = downloads.admit("bob", 0).unwrap_err();
        assert!(
            over.contains("bob has sent 2 files") && over.contains("--receive-files-max (2)"),
            "{over}"
        );
        // Per peer: carol has her own allowance.
        assert_eq!(downloads.admit("carol", 100), Ok(()));
        // Refusing creates nothing.
        assert!(!scratch.0.exists());
    }

    #[test]
    fn the_default_folder_is_the_per_user_data_folder() {
        use std::ffi::OsStr;
        let some = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            default_download_dir(some("/x/data"), some("/home/a")),
            Ok(PathBuf::from("/x/data/switchboard/downloads"))
        );
        // A relative XDG_DATA_HOME is ignored, as the specification says.
        assert_eq!(
            default_download_dir(some("rel"), some("/home/a")),
            Ok(PathBuf::from("/home/a/.local/share/switchboard/downloads"))
        );
        assert_eq!(
            default_download_dir(None, some("/home/a")),
            Ok(PathBuf::from("/home/a/.local/share/switchboard/downloads"))
        );
        assert!(default_download_dir(None, None)
            .unwrap_err()
            .contains("--download-dir"));
        // Without a folder, receiving fails with that reason and nothing is created.
        let none = Downloads::new(
            Err("no folder".into()),
            ReceiveLimits {
                files_max: 1,
                bytes_max: 1,
            },
        );
        assert_eq!(none.create("bob").err().unwrap().to_string(), "no folder");
    }

    #[test]
    fn abandoned_downloads_leave_nothing() {
        let scratch = Scratch::new("abandon");
        let downloads = downloads(&scratch.0);
        let mut partial = downloads.create("../bob").unwrap();
        partial.write(b"half").unwrap();
        let left = names(&scratch.0);
        assert_eq!(left.len(), 1);
        assert!(
            left[0].starts_with(".from-bob-") && left[0].ends_with(".part"),
            "{left:?}"
        );
        partial.abandon();
        assert!(names(&scratch.0).is_empty());
    }
}
