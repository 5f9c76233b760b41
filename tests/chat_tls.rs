//! `chat <protocol> --tls --ca FILE` against the real `chatd`'s TLS ports (issue 23), driving
//! the real binaries. Certificates are made at run time with rcgen in a temp directory,
//! never committed. A TLS client and a plaintext one share the room; a wrong CA, a plaintext
//! port and a wrong name each end with one clear line and exit status 1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child;

use std::path::{Path, PathBuf};

use chatd::Chatd;
use child::Client;

/// A CA and a server certificate for `names` signed by it, in PEM files of a fresh temp
/// directory (removed on drop); `other_ca.pem` is an unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(label: &str, names: &[&str]) -> Pki {
        let dir = std::env::temp_dir().join(format!("chat-tls-{label}-{}", std::process::id()));
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
        let (ca_cert, ca_key) = ca("chat_tls test CA");
        let (other, _) = ca("chat_tls other CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|&name| name.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("other_ca.pem"), other.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        path_arg(&self.dir.join(name))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 temp path").to_string()
}

/// chatd serving ROOM in plaintext on a free port and over TLS on an ephemeral one; returns
/// it with the TLS port (as chatd logged it).
fn chatd_with_room_tls(pki: &Pki) -> (Chatd, u16) {
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let mut chatd = Chatd::start(
        &["--room-port"],
        &[
            "--room-tls-port",
            "0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let text = chatd.stderr.wait_for(" (TLS)");
    let port = text
        .lines()
        .filter_map(|line| {
            line.split_once("ROOM listening on ")?
                .1
                .split_once(" (TLS)")
        })
        .find_map(|(addr, _)| addr.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no ROOM TLS listening line in {text}"))
        .port();
    (chatd, port)
}

/// The port of `protocol`'s TLS listener, as chatd logged it (`BIN24 listening on ADDR (TLS)`);
/// chatd logs every listener in one burst before the plaintext ones Chatd::start waits for.
fn tls_port(chatd: &mut Chatd, protocol: &str) -> u16 {
    let text = chatd.stderr.wait_for(" (TLS)");
    text.lines()
        .filter_map(|line| {
            line.split_once(&format!("{protocol} listening on "))?
                .1
                .split_once(" (TLS)")
        })
        .find_map(|(addr, _)| addr.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no {protocol} TLS listening line in {text}"))
        .port()
}

fn room_tls(port: u16, host: &str, ca: &str, nick: &str) -> Client {
    Client::spawn(&[
        "room",
        "--tls",
        "--ca",
        ca,
        "--host",
        host,
        "--port",
        &port.to_string(),
        "--nick",
        nick,
    ])
}

#[test]
fn a_tls_room_client_and_a_plaintext_one_talk_in_the_same_room() {
    let pki = Pki::new("room", &["localhost", "127.0.0.1"]);
    let (chatd, tls_port) = chatd_with_room_tls(&pki);
    let plain_port = chatd.port("--room-port");

    // By address (an IP SAN), then by name: both are in the certificate.
    let mut alice = room_tls(tls_port, "127.0.0.1", &pki.path("ca.pem"), "alice");
    alice.stdout.wait_for("* connected: you are in the room\n");
    let mut bob = Client::spawn(&["room", "--nick", "bob", "--port", &plain_port.to_string()]);
    bob.stdout.wait_for("* connected: you are in the room\n");
    alice.stdout.wait_for("* bob joined\n");

    alice.type_text(b"over tls\n");
    bob.stdout.wait_for("alice: over tls\n");
    bob.type_text(b"in the clear\n");
    alice.stdout.wait_for("bob: in the clear\n");

    // `localhost` may resolve to ::1 first, where chatd does not listen: then the refusal
    // names the connect, not TLS, and this half says nothing.
    let mut carol = room_tls(tls_port, "localhost", &pki.path("ca.pem"), "carol");
    if carol
        .stdout
        .wait_for_or_close("* connected: you are in the room\n")
        .is_some()
    {
        alice.stdout.wait_for("* carol joined\n");
        carol.close_stdin();
        assert!(carol.wait_exit().success());
    }

    alice.close_stdin();
    assert!(alice.wait_exit().success(), "{}", alice.stderr.text());
    bob.stdout.wait_for("* alice left\n");
    bob.close_stdin();
    assert!(bob.wait_exit().success());
}

/// The one line a failed TLS client printed, after checking it exited with status 1.
fn failure_line(client: &mut Client) -> String {
    let status = client.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", client.stderr.text());
    let text = client.stderr.wait_closed();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {text:?}");
    lines[0].to_string()
}

#[test]
fn a_wrong_ca_a_plaintext_port_and_a_name_not_in_the_certificate_each_fail_in_one_line() {
    // For `localhost` only: 127.0.0.1 is a name the certificate does not give.
    let pki = Pki::new("bad", &["localhost"]);
    let (chatd, tls_port) = chatd_with_room_tls(&pki);
    let plain_port = chatd.port("--room-port");

    let other_ca = pki.path("other_ca.pem");
    let mut wrong_ca = room_tls(tls_port, "127.0.0.1", &other_ca, "eve");
    let line = failure_line(&mut wrong_ca);
    assert_eq!(
        line,
        format!(
            "chat: TLS with 127.0.0.1:{tls_port} failed: the server's certificate is not \
             signed by the CA in {other_ca}"
        )
    );

    // ROOM's plaintext port asks `alias?` at once: no TLS record.
    let mut plaintext = room_tls(plain_port, "127.0.0.1", &pki.path("ca.pem"), "eve");
    let line = failure_line(&mut plaintext);
    assert!(
        line.contains("the server does not answer in TLS: is port"),
        "{line}"
    );

    let mut wrong_name = room_tls(tls_port, "127.0.0.1", &pki.path("ca.pem"), "eve");
    let line = failure_line(&mut wrong_name);
    assert!(
        line.contains("the server's certificate is not valid for \"127.0.0.1\""),
        "{line}"
    );
}

#[test]
fn bin24_ccm_matou_and_ocm_speak_tls_to_their_tls_ports_beside_plaintext_clients() {
    let pki = Pki::new("all", &["127.0.0.1"]);
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let mut chatd = Chatd::start(
        &[
            "--bin24-port",
            "--ccm-port",
            "--matou-port",
            "--ocm-tcp-port",
            "--ocm-udp-port",
        ],
        &[
            "--bin24-tls-port",
            "0",
            "--ccm-tls-port",
            "0",
            "--matou-tls-port",
            "0",
            "--ocm-tcp-tls-port",
            "0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let ca = pki.path("ca.pem");
    let port = |chatd: &Chatd, flag: &str| chatd.port(flag).to_string();
    let tls = |port: u16| {
        [
            "--tls".to_string(),
            "--ca".into(),
            ca.clone(),
            "--port".into(),
            port.to_string(),
        ]
    };

    // BIN24: a message over TLS to a plaintext user, and its delivery answer back.
    let bin24_tls = tls_port(&mut chatd, "BIN24");
    let mut bob = Client::spawn(&[
        "bin24",
        "--user",
        "bob",
        "--port",
        &port(&chatd, "--bin24-port"),
    ]);
    bob.stderr.wait_for("signed in as bob");
    let mut alice_args = vec!["bin24".to_string(), "--user".into(), "alice".into()];
    alice_args.extend(tls(bin24_tls));
    let mut alice = Client::spawn(&alice_args.iter().map(String::as_str).collect::<Vec<_>>());
    alice.stderr.wait_for("signed in as alice");
    alice.type_text(b"bob: over tls\n");
    bob.stdout.wait_for("<- alice: over tls\n");
    alice.stdout.wait_for("-> bob: over tls  [delivered]\n");

    // CCM: identified over TLS, a message to the plaintext user.
    let ccm_tls = tls_port(&mut chatd, "CCM");
    let mut cid = Client::spawn(&[
        "ccm",
        "--name",
        "cid",
        "--port",
        &port(&chatd, "--ccm-port"),
    ]);
    cid.stderr.wait_for("chat: identified as cid\n");
    let mut cat_args = vec!["ccm".to_string(), "--name".into(), "cat".into()];
    cat_args.extend(tls(ccm_tls));
    let mut cat = Client::spawn(&cat_args.iter().map(String::as_str).collect::<Vec<_>>());
    cat.stderr.wait_for("chat: identified as cat\n");
    cat.type_text(b"@cid hello cid\n");
    cid.stdout.wait_for("cat: hello cid\n");

    // MATOU: connected over TLS, seen joining by the plaintext user.
    let matou_tls = tls_port(&mut chatd, "MATOU");
    let mut mia = Client::spawn(&[
        "matou",
        "--user",
        "mia",
        "--port",
        &port(&chatd, "--matou-port"),
    ]);
    mia.stderr.wait_for("chat: connected as mia\n");
    let mut max_args = vec!["matou".to_string(), "--user".into(), "max".into()];
    max_args.extend(tls(matou_tls));
    let mut max = Client::spawn(&max_args.iter().map(String::as_str).collect::<Vec<_>>());
    max.stderr.wait_for("chat: connected as max\n");
    mia.stdout.wait_for("* max joined\n");

    // OCM: the room created over TLS (TCRP), joined in plaintext; the chat itself is UDP.
    let ocm_tls = tls_port(&mut chatd, "OCM");
    let udp = port(&chatd, "--ocm-udp-port");
    let mut olga_args: Vec<String> = [
        "ocm",
        "create",
        "tlsroom",
        "--name",
        "olga",
        "--udp-port",
        &udp,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    olga_args.extend([
        "--tls".to_string(),
        "--ca".into(),
        ca.clone(),
        "--tcp-port".into(),
        ocm_tls.to_string(),
    ]);
    let mut olga = Client::spawn(&olga_args.iter().map(String::as_str).collect::<Vec<_>>());
    olga.stderr.wait_for("chat: created tlsroom as olga\n");
    let tcp = port(&chatd, "--ocm-tcp-port");
    let mut oleg = Client::spawn(&[
        "ocm",
        "join",
        "tlsroom",
        "--name",
        "oleg",
        "--tcp-port",
        &tcp,
        "--udp-port",
        &udp,
    ]);
    oleg.stderr.wait_for("chat: joined tlsroom as oleg\n");
    olga.type_text(b"hello oleg\n");
    oleg.stdout.wait_for("olga: hello oleg\n");
}
