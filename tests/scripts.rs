//! Every script in scripts/ answers `--help`, `-h` and bad arguments at once, by printing its
//! usage, without building or starting anything. The scripts are found by listing the folder,
//! so a new script is covered without touching this file.
//!
//! "Nothing built or started" is checked, not assumed: each script runs with every tool that
//! builds, installs or starts something (cargo, apt-get, python3, taskset, perf, redis-server...)
//! replaced by a stub that records its call, and with `CARGO_TARGET_DIR` pointing at a folder
//! whose `release/chatd` and `release/loadgen` are such stubs too.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Help and argument errors come before any work: far less than this, even on a busy machine.
const QUICK: Duration = Duration::from_secs(5);

/// What would do work if a script reached it (run by name from PATH).
const STUBBED_TOOLS: &[&str] = &[
    "cargo",
    "rustc",
    "rustup",
    "apt-get",
    "python3",
    "taskset",
    "perf",
    "strace",
    "redis-server",
    "redis-cli",
    "timeout",
    "inferno-flamegraph",
    "inferno-collapse-perf",
];

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Every file in scripts/, sorted.
fn script_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(scripts_dir())
        .expect("list scripts/")
        .map(|entry| entry.expect("a scripts/ entry"))
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // A listing that came back empty would make every test here pass without checking anything.
    assert!(names.iter().any(|name| name == "smoke.sh"), "{names:?}");
    names
}

/// A scratch folder with the stubs, removed on drop.
struct Sandbox {
    root: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        use std::os::unix::fs::PermissionsExt;

        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "switchboard-scripts-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        let bin = root.join("bin");
        let release = root.join("target/release");
        fs::create_dir_all(&bin).expect("create the stub folder");
        fs::create_dir_all(&release).expect("create the target folder");
        let log = root.join("calls.log");
        let stubs = STUBBED_TOOLS
            .iter()
            .map(|tool| bin.join(tool))
            .chain(["chatd", "loadgen"].map(|binary| release.join(binary)));
        for stub in stubs {
            let script = format!(
                "#!/bin/sh\necho \"{} $*\" >>'{}'\nexit 1\n",
                stub.display(),
                log.display()
            );
            fs::write(&stub, script).expect("write a stub");
            fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).expect("chmod a stub");
        }
        Sandbox { root }
    }

    /// What the stubs were asked to do (empty when nothing was).
    fn calls(&self) -> String {
        fs::read_to_string(self.root.join("calls.log")).unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
    /// What the script tried to build, install or start.
    calls: String,
}

/// `bash scripts/NAME ARGS...`, in the sandbox, killed (and failed) if it outlasts [`QUICK`].
fn run_script(name: &str, args: &[&str]) -> Outcome {
    let sandbox = Sandbox::new();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![sandbox.root.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(scripts_dir().join(name))
        .args(args)
        .env("PATH", std::env::join_paths(dirs).expect("a PATH"))
        .env("CARGO_TARGET_DIR", sandbox.root.join("target"))
        .env("FUZZ_WORK_DIR", sandbox.root.join("fuzz-work"))
        .env("FUZZ_TARGET_DIR", sandbox.root.join("fuzz-target"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bash");
    let pipes: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped stdout")),
        Box::new(child.stderr.take().expect("piped stderr")),
    ];
    let readers = pipes.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break status;
        }
        if started.elapsed() > QUICK {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "scripts/{name} {args:?} still ran after {QUICK:?}; it tried: {}",
                sandbox.calls()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let [stdout, stderr] = readers.map(|reader| reader.join().expect("read the script's output"));
    Outcome {
        code: status.code(),
        stdout,
        stderr,
        took,
        calls: sandbox.calls(),
    }
}

fn assert_did_nothing(name: &str, args: &[&str], outcome: &Outcome) {
    assert!(
        outcome.calls.is_empty(),
        "scripts/{name} {args:?} built or started something:\n{}",
        outcome.calls
    );
    assert!(outcome.took < QUICK, "{:?}", outcome.took);
}

#[test]
fn every_script_answers_help_with_its_usage_and_does_nothing_else() {
    for name in script_names() {
        for flag in ["--help", "-h"] {
            let outcome = run_script(&name, &[flag]);
            assert_eq!(
                outcome.code,
                Some(0),
                "scripts/{name} {flag}: stderr {}",
                outcome.stderr
            );
            assert!(
                outcome.stdout.contains("Usage:"),
                "scripts/{name} {flag} printed no usage: {:?}",
                outcome.stdout
            );
            assert_did_nothing(&name, &[flag], &outcome);
        }
    }
}

#[test]
fn every_script_refuses_an_unknown_option_and_does_nothing() {
    for name in script_names() {
        let args = ["--no-such-option"];
        let outcome = run_script(&name, &args);
        assert_eq!(
            outcome.code,
            Some(2),
            "scripts/{name} {args:?}: stderr {}",
            outcome.stderr
        );
        assert!(
            outcome.stderr.contains("Usage:") || outcome.stderr.contains("--help"),
            "scripts/{name} {args:?} says neither its usage nor where to find it: {:?}",
            outcome.stderr
        );
        assert_did_nothing(&name, &args, &outcome);
    }
}

#[test]
fn a_bad_count_or_a_missing_value_is_refused_before_anything_runs() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("smoke.sh", &["many"], "CLIENTS many"),
        ("smoke.sh", &["200", "10", "2000", "soon"], "DURATION soon"),
        ("smoke.sh", &["1", "2", "3", "4s", "5"], "at most four"),
        ("soak.sh", &["many"], "CONNECTS many"),
        ("fuzz.sh", &["many"], "SECONDS_PER_TARGET many"),
        ("fuzz.sh", &["1", "no_such_target"], "no fuzz target"),
        ("load.sh", &["--clients", "many"], "--clients many"),
        ("load.sh", &["--clients"], "--clients needs a value"),
        ("perf-stat.sh", &["--rate", "fast"], "--rate fast"),
        ("flamegraph.sh", &["--call-graph", "lbr"], "dwarf or fp"),
        ("compare-redis.sh", &["--runs", "many"], "--runs"),
        ("cluster.sh", &["many"], "N many"),
        ("cluster.sh", &["17"], "N 17"),
        ("cluster.sh", &[], "N (the number of nodes) is missing"),
        (
            "cluster.sh",
            &["2", "--redis-port"],
            "--redis-port needs a value",
        ),
        (
            "cluster.sh",
            &["2", "--cluster-lease-ms", "3"],
            "--cluster-lease-ms 3: a count of milliseconds, at least 4",
        ),
        ("cluster-bench.sh", &["--runs", "many"], "--runs many"),
        (
            "cluster-bench.sh",
            &["--saturation-rates", "100,fast"],
            "--saturation-rates 100,fast",
        ),
    ];
    let names = script_names();
    for &(name, args, says) in cases {
        assert!(names.iter().any(|n| n == name), "no scripts/{name}");
        let outcome = run_script(name, args);
        assert_eq!(
            outcome.code,
            Some(2),
            "scripts/{name} {args:?}: stderr {}",
            outcome.stderr
        );
        assert!(
            outcome.stderr.contains(says) && outcome.stderr.contains("Usage:"),
            "scripts/{name} {args:?} should say {says:?} and its usage: {:?}",
            outcome.stderr
        );
        assert_did_nothing(name, args, &outcome);
    }
}
