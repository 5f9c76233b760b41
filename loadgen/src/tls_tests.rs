//! [`Stream`] over TLS against an in-test rustls server on a std listener thread, driven the
//! way the engine drives it (mio edges, `read_chunk`, `write_pending`); certificates are made
//! at run time (rcgen).

use super::*;

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::sockio::{read_chunk, write_pending, Chunk, Drained};

static NEXT: AtomicU32 = AtomicU32::new(0);

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let name = format!("loadgen test CA {}", NEXT.fetch_add(1, Ordering::Relaxed));
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        #[allow(deprecated)] // the provider the loadgen uses (see client_config)
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Arc::new(config)
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let path = std::env::temp_dir().join(format!(
            "loadgen-tls-{}-{}-ca.pem",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, self.cert.pem()).unwrap();
        let config = client_config(&TlsArgs {
            tls: true,
            ca: Some(path.clone()),
        });
        let _ = std::fs::remove_file(&path);
        config.unwrap()
    }
}

/// A one-connection TLS server running `serve` once its handshake is done (a failed
/// handshake ends it quietly: the client's error is under test).
fn tls_server(
    config: Arc<ServerConfig>,
    serve: impl FnOnce(&mut StreamOwned<ServerConnection, std::net::TcpStream>) + Send + 'static,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
        while tls.conn.is_handshaking() {
            if tls.conn.complete_io(&mut tls.sock).is_err() {
                return;
            }
        }
        serve(&mut tls);
    });
    (addr, handle)
}

/// The client's side as the engine keeps it: the stream, its poll, its readiness.
struct Client {
    stream: Stream,
    poll: Poll,
    events: Events,
    readable: bool,
    writable: bool,
    /// An event reported the server's FIN (as the engine's `hangup`).
    hangup: bool,
}

impl Client {
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Client {
        let tcp = TcpStream::connect(addr).unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        let mut stream = Stream::over_tls(tcp, config, name).unwrap();
        let poll = Poll::new().unwrap();
        poll.registry()
            .register(
                &mut stream,
                Token(1),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        Client {
            stream,
            poll,
            events: Events::with_capacity(8),
            readable: false,
            writable: false,
            hangup: false,
        }
    }

    /// Waits for the next edge (10 s at most: a hang fails the test, not the machine).
    fn wait(&mut self) {
        self.poll
            .poll(&mut self.events, Some(Duration::from_secs(10)))
            .unwrap();
        assert!(!self.events.is_empty(), "no event within 10 s");
        for event in self.events.iter() {
            self.readable |= event.is_readable() || event.is_read_closed();
            self.writable |= event.is_writable();
            self.hangup |= event.is_read_closed() || event.is_error();
        }
    }

    /// Connects and handshakes as the engine's `is_connected` does, edge by edge.
    fn handshake(&mut self) -> io::Result<()> {
        loop {
            self.wait();
            if !crate::connect::is_connected(self.stream.tcp())? {
                continue;
            }
            if self
                .stream
                .handshake(&mut self.readable, &mut self.writable)?
            {
                return Ok(());
            }
        }
    }

    /// Reads `n` bytes the engine's way: on readable edges, until a short read says the
    /// socket is empty.
    fn read_exactly(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < n {
            assert!(Instant::now() < deadline, "only {} of {n} bytes", got.len());
            if !self.readable {
                self.wait();
                continue;
            }
            match read_chunk(&mut self.stream, &mut buf, &mut self.readable, self.hangup) {
                Chunk::Bytes(k) | Chunk::Emptied(k) => got.extend_from_slice(&buf[..k]),
                Chunk::Drained => {}
                other => panic!("{other:?} after {} bytes", got.len()),
            }
        }
        got
    }
}

#[test]
fn plaintext_crosses_both_ways_on_edges_with_the_short_read_contract() {
    let ca = Ca::new();
    // More than one record, and more than the read buffer: the short-read rule must not
    // leave records decrypted-but-unread or unread in the socket behind a short read.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let sent = big.clone();
    let (addr, server) = tls_server(ca.server_config(), move |tls| {
        tls.write_all(&sent).unwrap();
        let mut echo = [0u8; 5];
        tls.read_exact(&mut echo).unwrap();
        tls.write_all(&echo).unwrap();
    });
    let mut client = Client::connect(addr, ca.client_config());
    client.handshake().unwrap();
    assert!(client.stream.is_tls());
    assert!(client.read_exactly(big.len()) == big, "the bytes differ");
    let mut written = 0;
    loop {
        match write_pending(&mut client.stream, b"hello", &mut written) {
            Drained::All => break,
            Drained::WouldBlock => client.wait(),
            Drained::Failed(why) => panic!("{why}"),
        }
    }
    while client.stream.has_backlog() {
        match client.stream.write_backlog() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => client.wait(),
            other => other.unwrap(),
        }
    }
    assert_eq!(client.read_exactly(5), b"hello");
    server.join().unwrap();
}

#[test]
fn a_full_socket_leaves_a_backlog_that_goes_out_in_order_on_the_next_edges() {
    let ca = Ca::new();
    let total = 8 << 20;
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (addr, server) = tls_server(ca.server_config(), move |tls| {
        // Reads nothing until the client has filled its socket.
        go_rx.recv().unwrap();
        let mut got = vec![0u8; total];
        tls.read_exact(&mut got).unwrap();
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "the bytes arrived out of order or altered"
        );
    });
    let mut client = Client::connect(addr, ca.client_config());
    client.handshake().unwrap();
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut written = 0;
    let mut blocked = false;
    while written < total || client.stream.has_backlog() {
        let outcome = match client.stream.write_backlog() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Drained::WouldBlock,
            Err(e) => Drained::Failed(e.to_string()),
            Ok(()) => write_pending(&mut client.stream, &data, &mut written),
        };
        match outcome {
            Drained::All => {}
            Drained::WouldBlock => {
                if !blocked {
                    blocked = true;
                    go_tx.send(()).unwrap();
                }
                client.writable = false;
                while !client.writable {
                    client.wait();
                }
            }
            Drained::Failed(why) => panic!("{why}"),
        }
    }
    assert!(blocked, "8 MiB should have filled the socket");
    server.join().unwrap();
}

#[test]
fn an_unknown_authority_fails_the_handshake() {
    let (theirs, ours) = (Ca::new(), Ca::new());
    let (addr, server) = tls_server(theirs.server_config(), |_| {});
    let mut client = Client::connect(addr, ours.client_config());
    let error = client.handshake().unwrap_err();
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    server.join().unwrap();
}

#[test]
fn a_server_closing_during_the_handshake_is_an_error_that_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        // Takes the whole ClientHello, then closes cleanly (a FIN, no reset).
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf);
    });
    let mut client = Client::connect(addr, Ca::new().client_config());
    let error = client.handshake().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("closed the connection during the TLS handshake")
            || error.kind() == io::ErrorKind::ConnectionReset,
        "{error}"
    );
    server.join().unwrap();
}

#[test]
fn the_server_closing_after_data_reads_as_the_end_after_the_data() {
    let ca = Ca::new();
    let (addr, server) = tls_server(ca.server_config(), |tls| {
        tls.write_all(b"bye").unwrap();
        tls.conn.send_close_notify();
        tls.flush().unwrap();
    });
    let mut client = Client::connect(addr, ca.client_config());
    client.handshake().unwrap();
    assert_eq!(client.read_exactly(3), b"bye");
    server.join().unwrap();
    let mut buf = [0u8; 16];
    loop {
        if !client.readable {
            client.wait();
        }
        match read_chunk(
            &mut client.stream,
            &mut buf,
            &mut client.readable,
            client.hangup,
        ) {
            Chunk::Eof => break,
            Chunk::Drained => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let path = std::env::temp_dir().join(format!("loadgen-tls-{}-empty.pem", std::process::id()));
    std::fs::write(&path, "nothing here\n").unwrap();
    let error = client_config(&TlsArgs {
        tls: true,
        ca: Some(path.clone()),
    })
    .unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(error.contains("holds no PEM certificate"), "{error}");
}
