//! `connect` and `Conn` against an in-test rustls server on a std listener: certificates are
//! made at run time (rcgen), so no key is ever committed.

use super::*;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::{self, JoinHandle};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// A certificate authority of the test's own.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        // Each its own name: a CA of the same name would be a bad signature, not an unknown
        // issuer.
        let name = format!("chat test CA {}", NEXT.fetch_add(1, Ordering::Relaxed));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate for `names`, valid from `valid.0` to `valid.1` (years).
    fn issue(&self, names: &[&str], valid: (i32, i32)) -> Arc<ServerConfig> {
        let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.not_before = rcgen::date_time_ymd(valid.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(valid.1, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        #[allow(deprecated)] // the provider the client uses (see client_config)
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Arc::new(config)
    }

    /// The CA's certificate in a PEM file of the test's own.
    fn pem_file(&self) -> PathBuf {
        write_temp("ca.pem", &self.cert.pem())
    }
}

fn write_temp(name: &str, contents: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("chat-tls-{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

const VALID: (i32, i32) = (2020, 4000);

/// A one-connection server on an ephemeral port running `serve` on the accepted socket.
fn server(serve: impl FnOnce(TcpStream) + Send + 'static) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve(stream);
    });
    (port, handle)
}

/// A TLS server that sends `greeting`, then echoes every chunk back until the client closes.
fn echo_server(config: Arc<ServerConfig>, greeting: &'static [u8]) -> (u16, JoinHandle<()>) {
    server(move |tcp| {
        let conn = ServerConnection::new(config).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        // A failed handshake ends the server quietly: the client's error is under test.
        if tls.write_all(greeting).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tls.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

fn tls_args(ca: Option<PathBuf>, handshake_ms: u64) -> TlsArgs {
    TlsArgs {
        tls: true,
        ca,
        tls_handshake_ms: handshake_ms,
    }
}

fn connect_to(host: &str, port: u16, args: &TlsArgs) -> Result<Conn, String> {
    connect(host, port, &format!("{host}:{port}"), args, |e| {
        format!("refused: {e}")
    })
}

fn read_exactly(conn: &Conn, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    (&*conn).read_exact(&mut got).unwrap();
    got
}

#[test]
fn tls_carries_bytes_both_ways_with_a_reader_blocked_meanwhile() {
    let ca = Ca::new();
    let (port, server) = echo_server(ca.issue(&["localhost", "127.0.0.1"], VALID), b"alias?\n");
    let conn =
        Arc::new(connect_to("127.0.0.1", port, &tls_args(Some(ca.pem_file()), 5000)).unwrap());
    assert!(conn.is_tls());
    // The greeting sent right behind the handshake is there for the first read.
    assert_eq!(read_exactly(&conn, 7), b"alias?\n");
    // A reader blocked on the socket must not hold the writer up: the echo only comes once
    // the write has gone through.
    let reader = {
        let conn = Arc::clone(&conn);
        thread::spawn(move || read_exactly(&conn, 11))
    };
    (&*conn).write_all(b"hello world").unwrap();
    assert_eq!(reader.join().unwrap(), b"hello world");
    conn.shutdown(Shutdown::Both).unwrap();
    server.join().unwrap();
}

#[test]
fn a_host_name_is_checked_against_the_certificate_too() {
    let ca = Ca::new();
    let (port, server) = echo_server(ca.issue(&["localhost"], VALID), b"hi");
    let conn = connect_to("localhost", port, &tls_args(Some(ca.pem_file()), 5000));
    // `localhost` may resolve to ::1 first where nothing listens; that is a refusal, not TLS.
    match conn {
        Ok(conn) => assert_eq!(read_exactly(&conn, 2), b"hi"),
        Err(e) => assert!(e.starts_with("refused"), "{e}"),
    }
    drop(server);
}

#[test]
fn a_large_message_crosses_in_several_records() {
    let ca = Ca::new();
    let (port, server) = echo_server(ca.issue(&["127.0.0.1"], VALID), b"");
    let conn = connect_to("127.0.0.1", port, &tls_args(Some(ca.pem_file()), 5000)).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let conn = Arc::new(conn);
    // The echo comes back while the rest is still being written: both at once.
    let writer = {
        let (conn, big) = (Arc::clone(&conn), big.clone());
        thread::spawn(move || (&*conn).write_all(&big).unwrap())
    };
    let got = read_exactly(&conn, big.len());
    assert!(got == big, "the echo differs from what was sent");
    writer.join().unwrap();
    drop(server);
}

#[test]
fn a_writer_blocked_on_a_full_socket_does_not_stop_the_reader() {
    // The server writes everything before it reads anything; the client writes as much at
    // the same time. The client's writer fills its socket and blocks: its reader must still
    // get the server's bytes in, or both sides wait for each other forever.
    const BYTES: usize = 8 << 20;
    let ca = Ca::new();
    let config = ca.issue(&["127.0.0.1"], VALID);
    let (port, server) = server(move |tcp| {
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
        tls.write_all(&vec![7u8; BYTES]).unwrap();
        let mut got = vec![0u8; BYTES];
        tls.read_exact(&mut got).unwrap();
        assert!(
            got.iter().all(|&b| b == 9),
            "the client's bytes arrived altered"
        );
    });
    let conn =
        Arc::new(connect_to("127.0.0.1", port, &tls_args(Some(ca.pem_file()), 5000)).unwrap());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let conn = Arc::clone(&conn);
        let done_tx = done_tx.clone();
        thread::spawn(move || {
            let got = read_exactly(&conn, BYTES);
            done_tx.send(got.iter().all(|&b| b == 7)).unwrap();
        });
    }
    {
        let conn = Arc::clone(&conn);
        thread::spawn(move || {
            (&*conn).write_all(&vec![9u8; BYTES]).unwrap();
            done_tx.send(true).unwrap();
        });
    }
    for _ in 0..2 {
        let intact = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("reader and writer waited for each other");
        assert!(intact, "the server's bytes arrived altered");
    }
    server.join().unwrap();
}

#[test]
fn the_server_closing_reads_as_the_end() {
    let ca = Ca::new();
    let config = ca.issue(&["127.0.0.1"], VALID);
    let (port, server) = server(move |tcp| {
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
        tls.write_all(b"bye").unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    });
    let conn = connect_to("127.0.0.1", port, &tls_args(Some(ca.pem_file()), 5000)).unwrap();
    assert_eq!(read_exactly(&conn, 3), b"bye");
    let mut buf = [0u8; 8];
    assert_eq!((&conn).read(&mut buf).unwrap(), 0);
    server.join().unwrap();
}

#[test]
fn an_abrupt_close_without_close_notify_reads_as_the_end_too() {
    let ca = Ca::new();
    let config = ca.issue(&["127.0.0.1"], VALID);
    let (port, server) = server(move |tcp| {
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
        tls.write_all(b"x").unwrap();
        // Dropped here: the TCP connection ends without an alert.
    });
    let conn = connect_to("127.0.0.1", port, &tls_args(Some(ca.pem_file()), 5000)).unwrap();
    assert_eq!(read_exactly(&conn, 1), b"x");
    server.join().unwrap();
    let mut buf = [0u8; 8];
    assert_eq!((&conn).read(&mut buf).unwrap(), 0);
}

fn failure(host: &str, port: u16, args: &TlsArgs) -> String {
    match connect_to(host, port, args) {
        Ok(_) => panic!("the connection should have failed"),
        Err(message) => {
            assert!(!message.contains('\n'), "one line: {message}");
            message
        }
    }
}

/// Connecting over TLS to 127.0.0.1:`port`, trusting `ca`, fails with a message saying `says`.
fn assert_tls_fails_saying(port: u16, ca: PathBuf, handshake_ms: u64, says: &str) {
    let message = failure("127.0.0.1", port, &tls_args(Some(ca), handshake_ms));
    assert!(message.contains(says), "{message}");
}

#[test]
fn a_certificate_from_another_authority_is_an_unknown_issuer() {
    let (theirs, ours) = (Ca::new(), Ca::new());
    let (port, server) = echo_server(theirs.issue(&["127.0.0.1"], VALID), b"");
    let ca_file = ours.pem_file();
    let message = failure("127.0.0.1", port, &tls_args(Some(ca_file.clone()), 5000));
    assert_eq!(
        message,
        format!(
            "chat: TLS with 127.0.0.1:{port} failed: the server's certificate is not signed by \
             the CA in {}",
            ca_file.display()
        )
    );
    server.join().unwrap();
}

#[test]
fn a_certificate_from_another_authority_of_the_same_name_is_a_bad_signature() {
    let (theirs, ours) = (Ca::new(), Ca::new());
    let mut ours_renamed = CertificateParams::new(Vec::<String>::new()).unwrap();
    ours_renamed.distinguished_name = theirs_name(&theirs);
    ours_renamed.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let impostor = Ca {
        cert: ours_renamed.self_signed(&ours.key).unwrap(),
        key: ours.key,
    };
    let (port, server) = echo_server(theirs.issue(&["127.0.0.1"], VALID), b"");
    assert_tls_fails_saying(
        port,
        impostor.pem_file(),
        5000,
        "does not verify against the CA in",
    );
    server.join().unwrap();
}

fn theirs_name(ca: &Ca) -> rcgen::DistinguishedName {
    ca.cert.params().distinguished_name.clone()
}

#[test]
fn an_expired_certificate_is_named_so() {
    let ca = Ca::new();
    let (port, server) = echo_server(ca.issue(&["127.0.0.1"], (2001, 2002)), b"");
    let message = failure("127.0.0.1", port, &tls_args(Some(ca.pem_file()), 5000));
    assert!(
        message.ends_with("the server's certificate has expired"),
        "{message}"
    );
    server.join().unwrap();
}

#[test]
fn a_certificate_for_another_name_is_a_mismatch() {
    let ca = Ca::new();
    let (port, server) = echo_server(ca.issue(&["chat.example"], VALID), b"");
    assert_tls_fails_saying(
        port,
        ca.pem_file(),
        5000,
        "the server's certificate is not valid for \"127.0.0.1\"",
    );
    server.join().unwrap();
}

#[test]
fn a_plaintext_server_talking_first_does_not_answer_in_tls() {
    // ROOM's plaintext port asks for the alias at once.
    let (port, server) = server(|mut tcp| {
        let _ = tcp.write_all(b"alias?\n");
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf);
    });
    assert_tls_fails_saying(
        port,
        Ca::new().pem_file(),
        5000,
        "the server does not answer in TLS: is port",
    );
    server.join().unwrap();
}

#[test]
fn a_handshake_cut_short_says_the_server_closed() {
    // A plaintext server that drops what it cannot parse, or a TLS one going away.
    let (port, server) = server(|mut tcp| {
        let mut buf = [0u8; 16];
        let _ = tcp.read(&mut buf);
    });
    assert_tls_fails_saying(
        port,
        Ca::new().pem_file(),
        5000,
        "the server closed the connection during the handshake",
    );
    server.join().unwrap();
}

#[test]
fn a_silent_server_times_the_handshake_out() {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (port, server) = server(move |_tcp| {
        // Holds the connection open, saying nothing, until the client has given up.
        let _ = done_rx.recv();
    });
    assert_tls_fails_saying(
        port,
        Ca::new().pem_file(),
        100,
        "no TLS answer within 100 ms",
    );
    done_tx.send(()).unwrap();
    server.join().unwrap();
}

#[test]
fn a_bad_ca_file_is_refused_before_connecting() {
    let missing = std::env::temp_dir().join("chat-tls-no-such-ca.pem");
    let message = failure("127.0.0.1", 9, &tls_args(Some(missing), 100));
    assert!(
        message.starts_with("chat: cannot read the CA file"),
        "{message}"
    );
    let empty = write_temp("empty.pem", "not a certificate\n");
    let message = failure("127.0.0.1", 9, &tls_args(Some(empty), 100));
    assert!(message.contains("holds no PEM certificate"), "{message}");
}

#[test]
fn without_tls_the_connection_is_plain() {
    let (port, server) = server(|mut tcp| tcp.write_all(b"alias?\n").unwrap());
    let conn = connect_to("127.0.0.1", port, &TlsArgs::default()).unwrap();
    assert!(!conn.is_tls());
    assert_eq!(read_exactly(&conn, 7), b"alias?\n");
    server.join().unwrap();
}
