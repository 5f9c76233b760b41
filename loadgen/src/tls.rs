//! `--tls`: every TCP connection of a run speaks TLS (rustls) to the server's TLS ports.
//!
//! A [`Stream`] is what a scenario's connection reads and writes: the non-blocking mio socket,
//! and with `--tls` a `rustls::ClientConnection` driven over it (read_tls, process_new_packets,
//! reader; writer, write_tls), so that the scenarios see plaintext as before. Plain TCP is the
//! same socket calls behind one branch on a `None`.
//!
//! The handshake is part of connecting: a connection is connected, for the engine and for the
//! connect latency, once its handshake is done ([`Stream::handshake`]). Session resumption is
//! off: every connection makes a full handshake, which is what `churn --tls` counts.
//!
//! Reads keep the plaintext path's edge-triggered contract: a read returns fewer bytes than
//! asked only when the socket itself would block (or ended), because the scenarios take a
//! short read as "socket emptied" and wait for the next edge. So a TLS read decrypts and
//! copies on until the buffer is full or the socket has nothing more.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use clap::Args;
use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The TLS flags of every TCP scenario (and churn).
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Speak TLS on every TCP connection (point the ports at chatd's --*-tls-port). The
    /// handshake counts as part of connecting; OCM's and MATOU's UDP/direct legs stay plain
    #[arg(long)]
    pub tls: bool,

    /// With --tls: trust the certificate authorities in this PEM file instead of the system's
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<PathBuf>,
}

/// The run's TLS client set-up, when `--tls` is on: recorded once, like `--host`'s list, in
/// the one place every scenario's common arguments pass through.
static SETUP: OnceLock<Setup> = OnceLock::new();

struct Setup {
    config: Arc<ClientConfig>,
    /// The name to check the server's certificate against: `--host` when it is a name;
    /// `None` when `--host` gives addresses, and then each connection checks its own
    /// server's IP address (several hosts: host i mod n).
    name: Option<ServerName<'static>>,
}

/// Records `--tls` for the run (nothing without it). `hosts` is `--host`.
pub fn setup(args: &TlsArgs, hosts: &str) -> Result<(), String> {
    if !args.tls {
        return Ok(());
    }
    let config = client_config(args)?;
    let first = hosts.split(',').map(str::trim).next().unwrap_or_default();
    let name = match first.parse::<IpAddr>() {
        Ok(_) => None,
        Err(_) => Some(ServerName::try_from(first.to_owned()).map_err(|_| {
            format!("--tls: {first:?} is no host name to check a certificate against")
        })?),
    };
    let _ = SETUP.set(Setup { config, name });
    Ok(())
}

/// Whether the run speaks TLS.
pub fn enabled() -> bool {
    SETUP.get().is_some()
}

fn client_config(args: &TlsArgs) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &args.ca {
        Some(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca: cannot read {shown}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("--ca: {shown} holds no PEM certificate"));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("--ca: {shown} holds a bad certificate: {e}"))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(
                    "--tls: no certificate authority in the system's store; give --ca FILE".into(),
                );
            }
        }
    }
    let provider = switchboard::tls::crypto_provider();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("--tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A client connection's byte stream: plain TCP, or TLS over it.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
}

impl Stream {
    /// `tcp` connecting to `target`, over TLS when the run has `--tls`.
    pub fn new(tcp: TcpStream, target: SocketAddr) -> Result<Stream, String> {
        match SETUP.get() {
            None => Ok(Stream { tcp, tls: None }),
            Some(setup) => {
                let name = setup
                    .name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()));
                Stream::over_tls(tcp, Arc::clone(&setup.config), name)
            }
        }
    }

    /// `tcp` with a TLS client of `config` checking the server's certificate against `name`.
    fn over_tls(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Stream, String> {
        let conn = ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
        Ok(Stream {
            tcp,
            tls: Some(Box::new(conn)),
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.tcp.take_error()
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.tcp.set_nodelay(nodelay)
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Advances the TLS handshake of a connected socket as far as the socket allows:
    /// `Ok(true)` once it is done (at once for plain TCP), `Ok(false)` to wait for the next
    /// edge (`readable`/`writable` cleared where the socket would block), or why it failed.
    pub fn handshake(&mut self, readable: &mut bool, writable: &mut bool) -> io::Result<bool> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(true);
        };
        loop {
            while tls.wants_write() {
                match tls.write_tls(&mut self.tcp) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        *writable = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            // What is left of the client's last flight goes with the first write.
            if !tls.is_handshaking() {
                return Ok(true);
            }
            match tls.read_tls(&mut self.tcp) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    ))
                }
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // The alert tells the server why; our error is what counts.
                        let _ = tls.write_tls(&mut self.tcp);
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("TLS handshake: {e}"),
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *readable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether TLS holds bytes already encrypted that the socket has not taken yet.
    pub fn has_backlog(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Writes TLS's encrypted backlog; `WouldBlock` when the socket fills first.
    pub fn write_backlog(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            None => Ok(()),
            Some(tls) => write_backlog(tls, &mut self.tcp),
        }
    }
}

fn write_backlog(tls: &mut ClientConnection, tcp: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(tcp) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_mut() {
            None => self.tcp.read(buf),
            Some(tls) => read_tls_into(tls, &mut self.tcp, buf),
        }
    }
}

/// Plaintext into `buf` until it is full or the socket would block (or ended): a short
/// count means the socket has nothing more, as over plain TCP.
fn read_tls_into(
    tls: &mut ClientConnection,
    tcp: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut filled = 0;
    // An error after some bytes: those go first; the error comes again on the next read
    // (rustls keeps a failed state, the socket its end).
    let ended = |filled: usize, e: io::Error| if filled > 0 { Ok(filled) } else { Err(e) };
    loop {
        while filled < buf.len() {
            match tls.reader().read(&mut buf[filled..]) {
                // The server's close_notify: the end, after what is already here.
                Ok(0) => return Ok(filled),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The TCP connection ended without close_notify: an end like over plain
                // TCP (the scenarios count what arrived, a cut message is never whole).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return ended(filled, e),
            }
        }
        if filled == buf.len() {
            return Ok(filled);
        }
        match tls.read_tls(tcp) {
            Ok(n) => {
                let processed = tls.process_new_packets();
                // Alerts, and key updates' answers; a full socket leaves them for the next
                // write.
                while tls.wants_write() {
                    match tls.write_tls(tcp) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                if let Err(e) = processed {
                    return ended(filled, io::Error::new(io::ErrorKind::InvalidData, e));
                }
                if n == 0 {
                    // rustls now knows the stream ended: its reader says how on the next
                    // pass (close_notify seen or not), after the plaintext it still holds.
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return ended(filled, e),
        }
    }
}

impl Write for Stream {
    /// Over TLS: takes nothing while earlier ciphertext waits for the socket (`WouldBlock`, as
    /// a full socket would say), then encrypts `data` and writes what the socket takes; what
    /// it does not take is the backlog that [`Stream::write_backlog`] sends on the next
    /// writable edge. So at most one write's worth waits in TLS beside the socket buffer.
    #[inline]
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.write(data);
        };
        write_backlog(tls, &mut self.tcp)?;
        let taken = tls.writer().write(data)?;
        match write_backlog(tls, &mut self.tcp) {
            Ok(()) => Ok(taken),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(taken),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.write_backlog() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.tcp.deregister(registry)
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
