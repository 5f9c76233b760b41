//! The loadgen is built by the top-level commands the scripts and docs use: a plain
//! `cargo build --release --bins` at the repository's root (no `--workspace`, no `-p loadgen`)
//! must leave target/release/loadgen beside chatd, as cargo's own view of the workspace says.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn a_plain_cargo_build_at_the_top_builds_the_loadgen_too() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let id_of = |name: &str| {
        metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no package {name}"))["id"]
            .clone()
    };
    let defaults = metadata["workspace_default_members"]
        .as_array()
        .expect("cargo metadata lists workspace_default_members (cargo 1.71 and later)");
    for name in ["switchboard", "loadgen"] {
        assert!(
            defaults.contains(&id_of(name)),
            "{name} is not built by a plain `cargo build` at the top: {defaults:?}"
        );
    }
}
