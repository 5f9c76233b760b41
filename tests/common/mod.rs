//! Shared helpers for the integration tests: the real server on ephemeral ports, in-process,
//! and blocking clients that wait for expected bytes (bounded), never sleep-and-hope.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod bin24;
pub mod ccm;
pub mod matou;
pub mod ocm;
pub mod web;

use switchboard::config::Config;
use switchboard::reactor::{ProtocolKind, Server, ServerHandle, UdpKind};
use switchboard::stats::Stats;

/// How long any single expectation may wait before the test fails (a hang is a failure).
pub const WAIT: Duration = Duration::from_secs(10);

/// Called by a test that cannot do its job here (a tool it needs is missing): under `CI=true`
/// it fails, because a skip there would pass silently and hide that the job was never done;
/// elsewhere it says so loudly on stderr, and the caller returns.
pub fn cannot_run(reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and this test cannot do its job: {reason}"
    );
    eprintln!("SKIPPED: {reason} (under CI=true this fails)");
}

pub struct TestServer {
    pub room: SocketAddr,
    /// Set when the config enables BIN24.
    pub bin24: Option<SocketAddr>,
    /// Set when the config enables CCM.
    pub ccm: Option<SocketAddr>,
    /// Set when the config enables MATOU.
    pub matou: Option<SocketAddr>,
    /// Set when the config enables OCM: the TCRP listener and the chat socket (UDP).
    pub ocm_tcp: Option<SocketAddr>,
    pub ocm_udp: Option<SocketAddr>,
    /// Set when the config enables the stage-1 relay (UDP).
    pub ocm_relay: Option<SocketAddr>,
    /// Set when the config enables WEB.
    pub web: Option<SocketAddr>,
    /// Set when the config enables WEB over TLS (`web_tls_port`).
    pub web_tls: Option<SocketAddr>,
    /// Set when the config enables ROOM over TLS (`room_tls_port`).
    pub room_tls: Option<SocketAddr>,
    /// Set when the config enables the admin port.
    pub admin: Option<SocketAddr>,
    pub handle: ServerHandle,
    thread: Option<JoinHandle<io::Result<Stats>>>,
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        let server = Server::bind(config).expect("bind test server");
        let room = server
            .local_addr(ProtocolKind::Room)
            .expect("ROOM enabled in test config");
        let bin24 = server.local_addr(ProtocolKind::Bin24);
        let ccm = server.local_addr(ProtocolKind::Ccm);
        let matou = server.local_addr(ProtocolKind::Matou);
        let ocm_tcp = server.local_addr(ProtocolKind::Ocm);
        let ocm_udp = server.local_udp_addr(UdpKind::OcmChat);
        let ocm_relay = server.local_udp_addr(UdpKind::OcmRelay);
        let web = server.local_addr(ProtocolKind::Web);
        let web_tls = server.local_tls_addr(ProtocolKind::Web);
        let room_tls = server.local_tls_addr(ProtocolKind::Room);
        let admin = server.local_admin_addr();
        let handle = server.handle();
        let thread = std::thread::spawn(move || server.run());
        TestServer {
            room,
            bin24,
            ccm,
            matou,
            ocm_tcp,
            ocm_udp,
            ocm_relay,
            web,
            web_tls,
            room_tls,
            admin,
            handle,
            thread: Some(thread),
        }
    }

    /// The value of the metric sample `line_start` (a name with its labels, as the admin port
    /// writes it), read from the admin port, which the config must enable.
    pub fn metric(&self, line_start: &str) -> Option<f64> {
        let admin = self
            .admin
            .expect("the admin port enabled in the test config");
        let mut stream = std::net::TcpStream::connect(admin).expect("connect to the admin port");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("ask for the metrics");
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).expect("read the metrics");
        answer.lines().find_map(|line| {
            line.strip_prefix(line_start)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
    }

    /// Wait (bounded) until the metric sample `line_start` reaches `at_least`.
    pub fn wait_metric(&self, line_start: &str, at_least: f64) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let value = self.metric(line_start).unwrap_or(0.0);
            if value >= at_least {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{line_start} is {value}, never reached {at_least}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Shut down cleanly and return the final statistics.
    pub fn stop(mut self) -> Stats {
        self.handle.shutdown();
        let thread = self.thread.take().expect("running");
        thread
            .join()
            .expect("server thread panicked")
            .expect("server loop failed")
    }

    /// Wait until the server's open connection count is `count`.
    pub fn wait_connections(&self, count: u64) {
        let deadline = Instant::now() + WAIT;
        while self.handle.connections_open() != count {
            assert!(
                Instant::now() < deadline,
                "expected {count} open connections, server has {}",
                self.handle.connections_open()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            let _ = thread.join();
        }
    }
}

/// A blocking client that accumulates what arrives and checks it against expectations; over
/// TCP unless made [`Client::over`] another stream (a TLS one).
pub struct Client<S = TcpStream> {
    pub stream: S,
    pub received: Vec<u8>,
    pub name: String,
}

impl Client {
    pub fn connect(addr: SocketAddr, name: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("set timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            received: Vec::new(),
            name: name.to_string(),
        }
    }

    /// As [`Client::connect`], with a receive buffer of `recv_buffer_bytes` asked for before
    /// connecting: a client that stops reading then leaves most of what it is sent queued in
    /// the server.
    pub fn connect_small(addr: SocketAddr, name: &str, recv_buffer_bytes: usize) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .set_recv_buffer_size(recv_buffer_bytes)
            .expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(WAIT)).expect("set timeout");
        Client {
            stream,
            received: Vec::new(),
            name: name.to_string(),
        }
    }

    /// Connect, answer `alias?`, and consume the own join notice and the greeting.
    pub fn join(addr: SocketAddr, alias: &str) -> Client {
        let mut client = Client::connect(addr, alias);
        client.expect(b"alias?");
        client.send(alias.as_bytes());
        client.expect(format!("b'{alias}' esta conectado ao chat").as_bytes());
        client.expect(b"Voce esta conectado ao servidor!");
        client
    }

    /// Nothing may arrive for `quiet` (an absence can only be checked over a bounded time).
    pub fn expect_nothing_for(&mut self, quiet: Duration) {
        self.stream
            .set_read_timeout(Some(quiet))
            .expect("set timeout");
        let mut chunk = [0u8; 1024];
        let result = self.stream.read(&mut chunk);
        self.stream
            .set_read_timeout(Some(WAIT))
            .expect("set timeout");
        match result {
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) => panic!("{}: closed, expected silence", self.name),
            Ok(n) => panic!(
                "{}: expected silence, got {:?}",
                self.name,
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(err) => panic!("{}: read failed: {err}", self.name),
        }
    }
}

impl<S: Read + Write> Client<S> {
    /// A client over `stream`, already connected with its read timeout set (reads must end
    /// within a bound); `name` says which client failed.
    pub fn over(stream: S, name: &str) -> Self {
        Client {
            stream,
            received: Vec::new(),
            name: name.to_string(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        // A TLS stream may hold records back until flushed; a TCP one holds nothing.
        self.stream.flush().expect("flush");
    }

    /// Read more; false on EOF. Panics on timeout with what was expected.
    fn fill(&mut self, expecting: &dyn Fn() -> String) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.received.extend_from_slice(&chunk[..n]);
                true
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "{}: timed out waiting for {}; have {:?}",
                    self.name,
                    expecting(),
                    String::from_utf8_lossy(&self.received)
                )
            }
            Err(err) if err.kind() == ErrorKind::ConnectionReset => false,
            // rustls's end of a TLS stream whose peer closed without close_notify; a TCP
            // stream never reports it.
            Err(err) if err.kind() == ErrorKind::UnexpectedEof => false,
            Err(err) => panic!("{}: read failed: {err}", self.name),
        }
    }

    /// The next bytes to arrive must be exactly `expected`; they are consumed.
    pub fn expect(&mut self, expected: &[u8]) {
        while self.received.len() < expected.len() {
            let more = self.fill(&|| format!("{:?}", String::from_utf8_lossy(expected)));
            assert!(
                more,
                "{}: connection closed while waiting for {:?}; have {:?}",
                self.name,
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(&self.received)
            );
        }
        assert_eq!(
            String::from_utf8_lossy(&self.received[..expected.len()]),
            String::from_utf8_lossy(expected),
            "{}: unexpected bytes",
            self.name
        );
        self.received.drain(..expected.len());
    }

    /// Read until `needle` has arrived; returns and consumes everything up to and including it.
    pub fn read_through(&mut self, needle: &[u8]) -> Vec<u8> {
        // Resume the search where the last one stopped: rescanning the whole buffer after
        // every read would make long streams quadratic.
        let mut searched = 0;
        loop {
            if let Some(at) = find(&self.received[searched..], needle) {
                return self
                    .received
                    .drain(..searched + at + needle.len())
                    .collect();
            }
            searched = self.received.len().saturating_sub(needle.len() - 1);
            let more = self.fill(&|| format!("{:?}", String::from_utf8_lossy(needle)));
            assert!(
                more,
                "{}: closed before {:?} arrived",
                self.name,
                String::from_utf8_lossy(needle)
            );
        }
    }

    /// Reads up to and including `needle`; before it may come `late` (a line that may or may
    /// not cross, at most once), then taken, and nothing else.
    pub fn read_through_skipping(&mut self, needle: &[u8], late: &mut Option<&[u8]>) {
        let heard = self.read_through(needle);
        let before = &heard[..heard.len() - needle.len()];
        if before.is_empty() {
            return;
        }
        assert_eq!(
            Some(before),
            late.take(),
            "unexpected before {:?}: {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(before)
        );
    }

    /// The next `len` bytes, whatever they are; consumed.
    pub fn read_exact(&mut self, len: usize) -> Vec<u8> {
        while self.received.len() < len {
            let more = self.fill(&|| format!("{len} bytes"));
            assert!(more, "{}: closed before {len} bytes arrived", self.name);
        }
        self.received.drain(..len).collect()
    }

    /// The server must close this connection within [`WAIT`]; returns what arrived before.
    pub fn expect_closed(&mut self) -> Vec<u8> {
        while self.fill(&|| "the server to close the connection".to_string()) {}
        std::mem::take(&mut self.received)
    }
}

/// Wait (bounded by [`WAIT`]) until at least `bytes` wait unread in the socket's receive
/// queue, reading none of them.
pub fn wait_unread(stream: &TcpStream, bytes: usize) {
    let deadline = Instant::now() + WAIT;
    let mut peek = vec![0u8; bytes];
    loop {
        let queued = stream.peek(&mut peek).expect("peek");
        if queued >= bytes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {queued} of {bytes} bytes arrived unread"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let last_start = haystack.len() - needle.len();
    let mut start = 0;
    while start <= last_start {
        let offset = haystack[start..=last_start]
            .iter()
            .position(|&b| b == needle[0])?;
        let candidate = start + offset;
        if &haystack[candidate..candidate + needle.len()] == needle {
            return Some(candidate);
        }
        start = candidate + 1;
    }
    None
}

pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    let mut found = 0;
    let mut rest = haystack;
    while let Some(at) = find(rest, needle) {
        found += 1;
        rest = &rest[at + needle.len()..];
    }
    found
}

/// A fresh, empty directory for one test's offline store (removed by the returned guard).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchboard-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
