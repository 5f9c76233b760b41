//! SIGHUP never ends chatd: without TLS it is logged and ignored, and every client keeps being
//! served (a terminal that hangs up sends it to a foreground chatd). With TLS it reloads the
//! certificate: tests/tls.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;

use std::net::SocketAddr;

use chatd::Chatd;
use common::Client;

fn kill(chatd: &Chatd, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &chatd.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal}");
}

#[test]
fn sighup_without_tls_is_logged_and_ignored_and_clients_keep_being_served() {
    let mut chatd = Chatd::start(&["--room-port"], &[]);
    let room = SocketAddr::from(([127, 0, 0, 1], chatd.port("--room-port")));
    let mut ana = Client::join(room, "ana");
    ana.send(b"ana: before\n");
    ana.expect(b"ana: before\n");

    kill(&chatd, "-HUP");
    chatd
        .stderr
        .wait_for("SIGHUP: nothing served over TLS, nothing to reload; ignored, still serving");

    // The client connected before is served, and a new one is accepted.
    ana.send(b"ana: after\n");
    ana.expect(b"ana: after\n");
    let mut bob = Client::join(room, "bob");
    ana.expect(b"b'bob' esta conectado ao chat");
    bob.send(b"bob: hello\n");
    bob.expect(b"bob: hello\n");
    ana.expect(b"bob: hello\n");

    // Nor was it taken for a first stop signal: SIGTERM is, and chatd exits cleanly (not
    // "second signal: exiting without waiting").
    kill(&chatd, "-TERM");
    let log = chatd.stderr.wait_closed();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(!log.contains("second signal"), "{log}");
    assert_eq!(log.matches("SIGHUP").count(), 1, "{log}");
}
