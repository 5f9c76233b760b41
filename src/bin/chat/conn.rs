//! The connection to the server, plain TCP or TLS (`--tls`), behind one type so that the five
//! subcommands read and write it exactly as they did a `TcpStream`.
//!
//! Every subcommand reads on one thread and writes on another through a shared `&Conn`. Over
//! TLS both directions share one rustls state, so it sits behind a mutex that is never held
//! across a blocking socket call: the reader reads raw bytes unlocked and only feeds them in
//! under the lock, so a writer is never stuck behind a reader waiting for the server; a writer
//! seals its records under the lock and writes them after letting it go (under a second lock
//! that keeps records in the order they were sealed), so a reader is never stuck behind a
//! writer waiting for a full socket to drain: a server that stops reading until we read can
//! still be read.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clap::Args;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore};

/// The TLS flags every subcommand takes.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct TlsArgs {
    /// Speak TLS to the server (chatd's --<protocol>-tls-port). The server's certificate must
    /// be valid for --host (a name, or an IP address as an IP SAN) and signed by a trusted
    /// authority: the system's, or --ca's
    #[arg(long)]
    pub tls: bool,

    /// With --tls: trust the certificate authorities in this PEM file instead of the system's
    /// (e.g. the CA of a self-signed chatd certificate)
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,

    /// Milliseconds the TLS handshake may take before giving up (tests make it short)
    #[arg(long, default_value_t = 10_000, hide = true)]
    pub tls_handshake_ms: u64,
}

/// Raw bytes read from the socket at a time over TLS: one full TLS record and its header.
const RAW_READ_BYTES: usize = 16 * 1024 + 512;

/// How long closing may spend sending the close_notify alert before the connection goes.
const CLOSE_NOTIFY_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// A connected stream to the server: plain TCP, or TLS over it once its handshake is done.
pub(crate) struct Conn {
    tcp: TcpStream,
    tls: Option<Shared>,
}

/// What both directions share over TLS.
struct Shared {
    state: Mutex<Tls>,
    /// Held from sealing records to their last byte in the socket, so that records leave in
    /// the order rustls sealed them (their sequence numbers) whoever writes them.
    sending: Mutex<()>,
}

/// The TLS state both directions share.
struct Tls {
    conn: ClientConnection,
    /// Bytes read from the socket that rustls has not taken yet.
    unfed: Vec<u8>,
}

impl Conn {
    pub(crate) fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.tcp.set_nodelay(nodelay)
    }

    /// Bounds each read from the socket, as `TcpStream::set_read_timeout` does; over TLS a
    /// timed-out read loses nothing (the bytes read before are kept for the next read).
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(timeout)
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// Shuts the socket down, waking a blocked reader or writer. Over TLS it first tells the
    /// server the close is deliberate (close_notify) if no other thread is using the TLS
    /// state right now; a writer stuck on a full socket must not keep the client open.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if let Some(shared) = &self.tls {
            if let Ok(mut state) = shared.state.try_lock() {
                state.conn.send_close_notify();
                let sealed = state.sealed();
                drop(state);
                if let Ok(_sending) = shared.sending.try_lock() {
                    let _ = self.tcp.set_write_timeout(Some(CLOSE_NOTIFY_WRITE_TIMEOUT));
                    let _ = (&self.tcp).write_all(&sealed);
                }
            }
        }
        self.tcp.shutdown(how)
    }

    /// Whether the connection is TLS, for the tests of the connect path.
    #[cfg(test)]
    fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

// A thread that panicked mid-call left the TLS state as consistent as rustls keeps it between
// calls; the session ends with the next error anyway.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Writes what rustls has sealed, taking the sending lock before letting the state go
    /// and writing after: the state is free while the socket takes its time.
    fn send(&self, tcp: &TcpStream, mut state: MutexGuard<'_, Tls>) -> io::Result<()> {
        let sealed = state.sealed();
        if sealed.is_empty() {
            return Ok(());
        }
        let _sending = lock(&self.sending);
        drop(state);
        (&*tcp).write_all(&sealed)
    }
}

impl Tls {
    /// Hands rustls what it can take of the bytes read and processes them; what it has to
    /// answer (alerts, key updates) is then for [`Shared::send`].
    fn feed(&mut self) -> io::Result<()> {
        let mut rest: &[u8] = &self.unfed;
        let taken = self.conn.read_tls(&mut rest)?;
        if taken == 0 {
            return Err(io::Error::other(
                "TLS: the server's bytes cannot be taken in",
            ));
        }
        self.unfed.drain(..taken);
        self.conn
            .process_new_packets()
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The records rustls has sealed and not yet handed out.
    fn sealed(&mut self) -> Vec<u8> {
        let mut sealed = Vec::new();
        while self.conn.wants_write() {
            // Into a Vec, which takes everything: no error is possible.
            if self.conn.write_tls(&mut sealed).is_err() {
                break;
            }
        }
        sealed
    }
}

impl Read for &Conn {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(shared) = &self.tls else {
            return (&self.tcp).read(out);
        };
        let mut raw = [0u8; RAW_READ_BYTES];
        loop {
            {
                let mut tls = lock(&shared.state);
                match tls.conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The server closed the TCP connection without a close_notify (chatd
                    // killed, or simply closing): to the user, as over plaintext, the
                    // server closed the connection. Nothing here relies on the close to
                    // mark the end of a message, so truncation cannot be mistaken for one.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if !tls.unfed.is_empty() {
                    let fed = tls.feed();
                    // On an error rustls has sealed the alert that tells the server why.
                    shared.send(&self.tcp, tls)?;
                    fed?;
                    continue;
                }
            }
            match (&self.tcp).read(&mut raw) {
                Ok(0) => {
                    let mut tls = lock(&shared.state);
                    // Tells rustls the stream has ended, so that its reader says so.
                    tls.conn.read_tls(&mut io::empty())?;
                    if let Err(e) = tls.conn.process_new_packets() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    return match tls.conn.reader().read(out) {
                        Ok(n) => Ok(n),
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::UnexpectedEof | io::ErrorKind::WouldBlock
                            ) =>
                        {
                            Ok(0)
                        }
                        Err(e) => Err(e),
                    };
                }
                Ok(n) => lock(&shared.state).unfed.extend_from_slice(&raw[..n]),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(shared) = &self.tls else {
            return (&self.tcp).write(data);
        };
        let mut state = lock(&shared.state);
        let taken = state.conn.writer().write(data)?;
        shared.send(&self.tcp, state)?;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.tls {
            None => (&self.tcp).flush(),
            Some(shared) => shared.send(&self.tcp, lock(&shared.state)),
        }
    }
}

/// Connects to `host`:`port` (`addr` is how messages show it), over TLS when `tls.tls`.
/// `refused` words a failed TCP connect (the subcommands' hints); the TLS failures get
/// one line each saying what went wrong and what to try.
pub(crate) fn connect(
    host: &str,
    port: u16,
    addr: &str,
    tls: &TlsArgs,
    refused: impl FnOnce(&io::Error) -> String,
) -> Result<Conn, String> {
    // Before connecting: a bad --ca or host is the user's to fix, whatever the server.
    let client = match tls.tls {
        false => None,
        true => {
            let config = client_config(tls.ca.as_deref())?;
            let name = ServerName::try_from(host.to_owned()).map_err(|_| {
                format!(
                    "chat: --tls needs a host name or an IP address to check the server's \
                     certificate against; {host:?} is neither"
                )
            })?;
            let conn = ClientConnection::new(config, name)
                .map_err(|e| format!("chat: cannot start TLS: {e}"))?;
            Some(conn)
        }
    };
    let tcp = TcpStream::connect((host, port)).map_err(|e| refused(&e))?;
    let Some(mut conn) = client else {
        return Ok(Conn { tcp, tls: None });
    };
    let limit = Duration::from_millis(tls.tls_handshake_ms.max(1));
    handshake(&mut conn, &tcp, limit).map_err(|e| {
        let failure = Failure {
            host,
            port,
            ca: tls.ca.as_deref(),
            limit,
        };
        format!("chat: TLS with {addr} failed: {}", failure.words(&e))
    })?;
    Ok(Conn {
        tcp,
        tls: Some(Shared {
            state: Mutex::new(Tls {
                conn,
                unfed: Vec::new(),
            }),
            sending: Mutex::new(()),
        }),
    })
}

/// The trust anchors: `ca`'s certificates, or the system's.
fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("chat: cannot read the CA file {shown}: {e}"))?;
            if certs.is_empty() {
                return Err(format!(
                    "chat: the CA file {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!("chat: the CA file {shown} holds a bad certificate: {e}")
                })?;
            }
        }
        None => {
            // Unreadable entries are skipped: one broken file in the system store should not
            // stop the others from counting. None at all is the user's to know about.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "chat: --tls found no certificate authority in the system's store; give \
                     the server's CA with --ca FILE"
                        .into(),
                );
            }
        }
    }
    let provider = switchboard::tls::crypto_provider();
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("chat: cannot set TLS up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why a handshake failed.
#[derive(Debug)]
enum HandshakeError {
    /// The server closed (or reset) the connection before the handshake was done.
    Cut,
    /// Nothing, or not enough, within the limit.
    TimedOut,
    Tls(rustls::Error),
    Io(io::Error),
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HandshakeError::TimedOut,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => HandshakeError::Cut,
            _ => HandshakeError::Io(e),
        }
    }
}

/// Runs the handshake on the still unshared socket within `limit`. Application data the
/// server sends right behind its Finished stays in `conn` for the first read.
fn handshake(
    conn: &mut ClientConnection,
    tcp: &TcpStream,
    limit: Duration,
) -> Result<(), HandshakeError> {
    let deadline = Instant::now() + limit;
    let left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero())
            .then_some(left)
            .ok_or(HandshakeError::TimedOut)
    };
    loop {
        tcp.set_write_timeout(Some(left()?))?;
        while conn.wants_write() {
            conn.write_tls(&mut &*tcp)?;
        }
        if !conn.is_handshaking() {
            break;
        }
        tcp.set_read_timeout(Some(left()?))?;
        if conn.read_tls(&mut &*tcp)? == 0 {
            return Err(HandshakeError::Cut);
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the server why (its log shows the alert); the failure is ours to report.
            while conn.wants_write() {
                if conn.write_tls(&mut &*tcp).is_err() {
                    break;
                }
            }
            return Err(HandshakeError::Tls(e));
        }
    }
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)?;
    Ok(())
}

/// What a failure message needs to know about the attempt.
struct Failure<'a> {
    host: &'a str,
    port: u16,
    ca: Option<&'a Path>,
    limit: Duration,
}

impl Failure<'_> {
    /// The rest of `chat: TLS with ADDR failed: ...`.
    fn words(&self, error: &HandshakeError) -> String {
        let not_tls = format!(
            "is port {} a TLS port? (chatd's are set with --<protocol>-tls-port; the \
             plaintext ports do not speak TLS)",
            self.port
        );
        match error {
            HandshakeError::Cut => {
                format!("the server closed the connection during the handshake: {not_tls}")
            }
            HandshakeError::TimedOut => format!(
                "no TLS answer within {} ms: {not_tls}",
                self.limit.as_millis()
            ),
            HandshakeError::Io(e) => e.to_string(),
            HandshakeError::Tls(rustls::Error::InvalidCertificate(e)) => self.certificate(e),
            // Bytes that are no TLS record: a plaintext server talking first (ROOM's
            // `alias?`, a MATOU or OCM answer to our hello).
            HandshakeError::Tls(rustls::Error::InvalidMessage(_)) => {
                format!("the server does not answer in TLS: {not_tls}")
            }
            HandshakeError::Tls(rustls::Error::AlertReceived(alert)) => {
                format!("the server refused the handshake ({})", AlertWords(*alert))
            }
            HandshakeError::Tls(e) => e.to_string(),
        }
    }

    fn certificate(&self, error: &CertificateError) -> String {
        let trusted = match self.ca {
            Some(ca) => format!("the CA in {}", ca.display()),
            None => {
                "the system's certificate authorities (give the server's CA with --ca FILE)".into()
            }
        };
        match error {
            CertificateError::UnknownIssuer => {
                format!("the server's certificate is not signed by {trusted}")
            }
            CertificateError::BadSignature => {
                format!(
                    "the server's certificate does not verify against {trusted} (bad \
                     signature: signed by another CA of the same name?)"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (is this machine's clock right?)".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not valid for {:?} (connect with --host set to \
                     a name or address the certificate names)",
                    self.host
                )
            }
            other => format!("the server's certificate is refused: {other}"),
        }
    }
}

/// An alert the server sent, as a person reads it.
struct AlertWords(AlertDescription);

impl fmt::Display for AlertWords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            AlertDescription::ProtocolVersion => f.write_str("no TLS version in common"),
            AlertDescription::HandshakeFailure => f.write_str("no cipher suite in common"),
            AlertDescription::UnrecognisedName => {
                f.write_str("it serves no certificate for that name")
            }
            other => write!(f, "alert {other:?}"),
        }
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
