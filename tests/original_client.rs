//! The original Python ROOM client (tests/original/client.py) against the real server: it
//! must work unchanged.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Client, TestServer, WAIT};
use switchboard::config::Config;

fn python3_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Kills the client on every path: its receive thread loops forever once the server is gone.
struct Original {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Original {
    /// ROOM has no framing: the client prints whatever one `recv` returned, so two relayed
    /// chunks that arrive together share a printed line. Look for the text, not a whole line.
    fn expect_printed(&self, expected: &str) {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) if line.contains(expected) => return,
                Ok(_) => continue,
                Err(err) => panic!("the original client never printed {expected:?}: {err}"),
            }
        }
    }
}

impl Drop for Original {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_original_python_client_joins_sends_and_receives() {
    if !python3_available() {
        common::cannot_run("python3 is not installed (CI installs it)");
        return;
    }
    let server = TestServer::start(Config::for_tests());
    let mut bob = Client::join(server.room, "bob");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/original/client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .env("ROOM_PORT", server.room.port().to_string())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python3");
    let stdout = child.stdout.take().expect("stdout");
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let original = Original { child, lines };

    // The nick typed at the prompt; the client answers `alias?` with it.
    writeln!(stdin, "alice").expect("type nick");
    bob.expect(b"b'alice' esta conectado ao chat");

    // A line typed in the original client reaches the room as `alice: <line>`.
    writeln!(stdin, "ola, tudo bem?").expect("type line");
    bob.expect(b"alice: ola, tudo bem?");

    // A member's message is printed by the original client.
    bob.send(b"bob: oi alice");
    bob.expect(b"bob: oi alice");
    original.expect_printed("bob: oi alice");

    // When the original client goes away, the room hears of it.
    drop(stdin);
    drop(original);
    bob.stream
        .set_read_timeout(Some(WAIT + Duration::from_secs(1)))
        .expect("timeout");
    bob.expect(b"b'alice' acabou de sair do chat!");
}
