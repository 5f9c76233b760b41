//! `loadgen --tls` against a real chatd (the switchboard library's server, in this process)
//! with a ROOM TLS listener: a short bounded ROOM run delivers everything, `churn --tls`
//! counts its handshakes, and a CA that did not sign the server's certificate fails every
//! connect, saying why. Certificates are made at run time (rcgen), never committed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::thread::JoinHandle;

use serde_json::Value;
use switchboard::config::Config;
use switchboard::reactor::{ProtocolKind, Server, ServerHandle};

/// A temp directory with `ca.pem`, `other_ca.pem`, `cert.pem` (127.0.0.1, signed by `ca.pem`)
/// and `key.pem`; removed on drop.
struct Pki(PathBuf);

impl Pki {
    fn new(label: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("loadgen-tls-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            (params.self_signed(&key).unwrap(), key)
        };
        let (ca_cert, ca_key) = ca("loadgen tls test CA");
        let (other, _) = ca("loadgen tls other CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("other_ca.pem"), other.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Pki(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// chatd serving ROOM in plaintext and over TLS on ephemeral ports; stopped on drop.
struct Chatd {
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
    tls_port: u16,
}

impl Chatd {
    fn start(pki: &Pki) -> Chatd {
        let server = Server::bind(Config {
            room_tls_port: Some(0),
            tls_cert_path: Some(pki.path("cert.pem").into()),
            tls_key_path: Some(pki.path("key.pem").into()),
            ..Config::for_tests()
        })
        .unwrap();
        let tls_port = server.local_tls_addr(ProtocolKind::Room).unwrap().port();
        let handle = server.handle();
        let thread = std::thread::spawn(move || {
            server.run().unwrap();
        });
        Chatd {
            handle,
            thread: Some(thread),
            tls_port,
        }
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the loadgen with `args` and `--json`; returns its exit code, stderr and report.
fn loadgen(args: &[&str], json: &std::path::Path) -> (Option<i32>, String, Option<Value>) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let report = std::fs::read(json)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).unwrap());
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.code(), format!("{stdout}{stderr}"), report)
}

#[test]
fn a_short_room_run_over_tls_delivers_everything() {
    let pki = Pki::new("room");
    let chatd = Chatd::start(&pki);
    let json = pki.0.join("room.json");
    let (code, text, report) = loadgen(
        &[
            "room",
            "--tls",
            "--ca",
            &pki.path("ca.pem"),
            "--port",
            &chatd.tls_port.to_string(),
            "--clients",
            "8",
            "--senders",
            "4",
            "--rate",
            "200",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
        ],
        &json,
    );
    assert_eq!(code, Some(0), "{text}");
    let report = report.unwrap();
    assert_eq!(report["connections"]["joined"], 8, "{text}");
    let expected = report["deliveries"]["expected"].as_u64().unwrap();
    assert!(expected > 0, "{text}");
    assert_eq!(report["deliveries"]["delivered"], expected, "{text}");
    assert_eq!(report["losses"]["total"], 0, "{text}");
    for kind in ["connect", "read", "write", "protocol"] {
        assert_eq!(report["errors"][kind], 0, "{kind}: {text}");
    }
}

#[test]
fn churn_over_tls_counts_a_full_handshake_per_signed_in_connection() {
    let pki = Pki::new("churn");
    let chatd = Chatd::start(&pki);
    let json = pki.0.join("churn.json");
    let (code, text, report) = loadgen(
        &[
            "churn",
            "--tls",
            "--ca",
            &pki.path("ca.pem"),
            "--protocols",
            "room",
            "--room-port",
            &chatd.tls_port.to_string(),
            "--connects",
            "24",
        ],
        &json,
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("TLS handshakes: "), "{text}");
    let report = report.unwrap();
    let started = report["connects_started"].as_u64().unwrap();
    let before = report["endings"]["before_sign_in"].as_u64().unwrap();
    assert_eq!(started, 24, "{text}");
    // Every connection but those leaving at once handshakes (those cut it short on purpose).
    assert_eq!(report["tls_handshakes"], started - before, "{text}");
    assert!(
        report["tls_handshakes_per_s"].as_f64().unwrap() > 0.0,
        "{text}"
    );
}

#[test]
fn a_ca_that_did_not_sign_the_certificate_fails_every_connect_saying_why() {
    let pki = Pki::new("wrongca");
    let chatd = Chatd::start(&pki);
    let json = pki.0.join("wrong.json");
    let (code, text, _) = loadgen(
        &[
            "room",
            "--tls",
            "--ca",
            &pki.path("other_ca.pem"),
            "--port",
            &chatd.tls_port.to_string(),
            "--clients",
            "2",
            "--senders",
            "1",
            "--rate",
            "10",
            "--duration",
            "100ms",
            "--warmup",
            "0ms",
        ],
        &json,
    );
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
}
