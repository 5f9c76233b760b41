//! Received files on disk: safe names, a temporary file while the bytes arrive, and a final
//! name that never replaces an existing file.
//!
//! MATOU sends no file name, only a size and the bytes, so nothing from the network ever
//! becomes part of a path: a file from bob is named `from-bob-N.bin` with the first free N,
//! where `bob` keeps only the letters and digits of the peer's name. While it arrives it is
//! written to a hidden `.from-bob-K.part` created with `create_new`, so two transfers never
//! share a file; when complete, the final name is reserved with `create_new` too and the
//! temporary file is renamed over that reservation. A transfer that fails removes its
//! temporary file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Longest part of a peer's name kept in a file name (a valid name is at most 32 bytes).
const STEM_CHARS_MAX: usize = 32;

/// How many numbers are tried for a free name before giving up.
const NAMES_TRIED_MAX: u32 = 100_000;

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

/// The final name of the `n`th candidate: `from-bob-1.bin`, `from-bob-2.bin`, ...
pub(super) fn final_name(stem: &str, n: u32) -> String {
    format!("{stem}-{n}.bin")
}

fn temp_name(stem: &str, n: u32) -> String {
    format!(".{stem}-{n}.part")
}

/// Creates the first file of the series that does not exist yet; `create_new` makes the
/// check and the creation one step, so a name is never taken twice, even by another process.
fn create_first_free(dir: &Path, name: impl Fn(u32) -> String) -> io::Result<(PathBuf, File)> {
    for n in 1..=NAMES_TRIED_MAX {
        let path = dir.join(name(n));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{NAMES_TRIED_MAX} names are already taken in {}",
        dir.display()
    )))
}

/// A file being received.
pub(super) struct Download {
    dir: PathBuf,
    stem: String,
    temp: PathBuf,
    file: File,
}

impl Download {
    /// Creates the download folder if missing, then a new temporary file in it.
    pub(super) fn create(dir: &Path, peer: &str) -> io::Result<Download> {
        fs::create_dir_all(dir)?;
        let stem = safe_stem(peer);
        let (temp, file) = create_first_free(dir, |n| temp_name(&stem, n))?;
        Ok(Download {
            dir: dir.to_path_buf(),
            stem,
            temp,
            file,
        })
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    /// The file is complete: gives it its final name and returns it.
    pub(super) fn finish(self) -> io::Result<PathBuf> {
        let Download {
            dir,
            stem,
            temp,
            file,
        } = self;
        drop(file);
        let placed = create_first_free(&dir, |n| final_name(&stem, n)).and_then(|(path, _)| {
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

    #[test]
    fn downloads_never_overwrite_and_use_the_first_free_name() {
        let scratch = Scratch::new("overwrite");
        let dir = scratch.0.join("downloads");
        // Created if missing, nested folders included.
        let mut first = Download::create(&dir, "bob").unwrap();
        first.write(b"one").unwrap();
        fs::write(dir.join("from-bob-1.bin"), b"mine").unwrap();
        let mut second = Download::create(&dir, "bob").unwrap();
        second.write(b"two").unwrap();

        assert_eq!(first.finish().unwrap(), dir.join("from-bob-2.bin"));
        assert_eq!(second.finish().unwrap(), dir.join("from-bob-3.bin"));
        assert_eq!(fs::read(dir.join("from-bob-1.bin")).unwrap(), b"mine");
        assert_eq!(fs::read(dir.join("from-bob-2.bin")).unwrap(), b"one");
        assert_eq!(fs::read(dir.join("from-bob-3.bin")).unwrap(), b"two");
        assert_eq!(
            names(&dir),
            ["from-bob-1.bin", "from-bob-2.bin", "from-bob-3.bin"],
            "no temporary file left"
        );
    }

    #[test]
    fn abandoned_downloads_leave_nothing() {
        let scratch = Scratch::new("abandon");
        let mut partial = Download::create(&scratch.0, "../bob").unwrap();
        partial.write(b"half").unwrap();
        assert_eq!(names(&scratch.0), [".from-bob-1.part"]);
        partial.abandon();
        assert!(names(&scratch.0).is_empty());
    }
}
