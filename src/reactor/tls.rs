//! TLS on the TCP front doors (issue 23): rustls driven sans-io by the reactor.
//!
//! A connection accepted on a TLS listener carries a [`TlsConn`] beside its socket. Reading
//! hands the socket to rustls (`read_tls`), processes the records, and appends the plaintext
//! they carried to the connection's read buffer, the same buffer a plaintext connection's
//! bytes go to, so the protocols never see TLS. Writing takes the plaintext the protocols
//! queued, encrypts a batch of it (`writer().write_vectored`, which coalesces many small
//! buffers into full records) and writes the records (`write_tls`) until the kernel pushes
//! back. A plaintext connection has `tls: None` and takes none of these paths: one branch per
//! read and per flush is all TLS costs it.
//!
//! Limits: plaintext handed to rustls leaves the connection's queue (and its output limits)
//! only once all its records are in the kernel, so at most one batch
//! ([`TLS_BATCH_BYTES`]) is ever outside the accounting; rustls' own buffers are capped
//! ([`TLS_BUFFER_BYTES`]). A handshake not finished within `--handshake-timeout-ms` of the
//! accept is closed by the reactor's handshake deadline, whatever the protocol.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use mio::net::TcpStream;
use prometheus::proto::{Counter, Metric, MetricFamily, MetricType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::protocol::ProtocolKind;

/// Cap of rustls' outgoing buffers (plaintext waiting for the handshake, records waiting for
/// the kernel): a writer beyond it is told so and keeps the rest in the reactor's queue,
/// under the output limits.
pub(crate) const TLS_BUFFER_BYTES: usize = 64 * 1024;
/// Plaintext encrypted per batch. The batch leaves the connection's queue once all its
/// records are written, so this bounds what the output limits do not see.
pub(crate) const TLS_BATCH_BYTES: usize = 64 * 1024;
/// Buffers handed to one `write_vectored` into rustls.
const TLS_BATCH_IOVECS_MAX: usize = 256;
/// `write_tls` calls a close or a failure may make to get its alert out without blocking.
const CLOSE_WRITES_MAX: usize = 4;

/// The certificate and key files, and the server configuration made of them (replaced on
/// reload; connections made before keep theirs).
pub(crate) struct TlsSettings {
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
    pub(crate) config: Arc<ServerConfig>,
}

impl TlsSettings {
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<TlsSettings, TlsLoadError> {
        Ok(TlsSettings {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            config: load_server_config(cert_path, key_path)?,
        })
    }

    /// Read the files again; on success new connections get the new configuration.
    pub(crate) fn reload(&mut self) -> Result<(), TlsLoadError> {
        self.config = load_server_config(&self.cert_path, &self.key_path)?;
        Ok(())
    }
}

/// Why a certificate or key could not be used: names the file and the reason.
#[derive(Debug)]
pub struct TlsLoadError {
    pub what: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for TlsLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TLS {} {}: {}",
            self.what,
            self.path.display(),
            self.reason
        )
    }
}

impl std::error::Error for TlsLoadError {}

/// A server configuration from a PEM certificate chain (leaf first) and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1), with the ring provider and TLS 1.2 and 1.3.
pub(crate) fn load_server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsLoadError> {
    let cert_error = |reason: String| TlsLoadError {
        what: "certificate",
        path: cert_path.to_path_buf(),
        reason,
    };
    let key_error = |reason: String| TlsLoadError {
        what: "key",
        path: key_path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|err| cert_error(pem_reason(&err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| cert_error(pem_reason(&err)))?;
    if certs.is_empty() {
        return Err(cert_error(
            "no certificate in it (expected a PEM CERTIFICATE block)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|err| key_error(pem_reason(&err)))?;
    let provider = crate::tls::crypto_provider();
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| cert_error(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(Arc::new)
        .map_err(|err| {
            key_error(format!(
                "does not fit the certificate or is unusable: {err}"
            ))
        })
}

fn pem_reason(err: &rustls::pki_types::pem::Error) -> String {
    match err {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read it: {io}"),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM item of the expected kind in it".into()
        }
        other => format!("not valid PEM: {other:?}"),
    }
}

/// Why a TLS handshake (or a TLS connection) failed, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The first byte is not a TLS record's: a client speaking the plaintext protocol.
    PlaintextClient,
    /// TLS records that cannot be decoded or decrypted.
    BadRecord,
    /// The peer sent an alert (a client that rejects the server's certificate does).
    AlertReceived,
    /// The handshake was not finished within `--handshake-timeout-ms`.
    HandshakeDeadline,
    /// Anything else: no common version or cipher suite, a misbehaving peer. (A peer that
    /// just closes in the middle of the handshake is a close, not a failure.)
    Other,
}

impl TlsFailure {
    pub(crate) const ALL: [TlsFailure; 5] = [
        TlsFailure::PlaintextClient,
        TlsFailure::BadRecord,
        TlsFailure::AlertReceived,
        TlsFailure::HandshakeDeadline,
        TlsFailure::Other,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            TlsFailure::PlaintextClient => "plaintext_client",
            TlsFailure::BadRecord => "bad_record",
            TlsFailure::AlertReceived => "alert_received",
            TlsFailure::HandshakeDeadline => "handshake_deadline",
            TlsFailure::Other => "other",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            TlsFailure::PlaintextClient => "a plaintext client on a TLS port",
            TlsFailure::BadRecord => "a bad TLS record",
            TlsFailure::AlertReceived => "the client sent an alert",
            TlsFailure::HandshakeDeadline => "the handshake was not finished in time",
            TlsFailure::Other => "TLS error",
        }
    }

    /// The failure `err` is, given the connection's first byte.
    pub(crate) fn classify(err: &rustls::Error, first_byte: Option<u8>) -> TlsFailure {
        // A TLS record starts with its content type: 20 to 23 (24 is heartbeat, unused).
        if first_byte.is_some_and(|byte| !(20..=23).contains(&byte)) {
            return TlsFailure::PlaintextClient;
        }
        match err {
            rustls::Error::AlertReceived(_) => TlsFailure::AlertReceived,
            rustls::Error::InvalidMessage(_)
            | rustls::Error::DecryptError
            | rustls::Error::PeerSentOversizedRecord => TlsFailure::BadRecord,
            _ => TlsFailure::Other,
        }
    }
}

/// A connection's TLS state.
pub(crate) struct TlsConn {
    session: ServerConnection,
    /// Plaintext at the front of the connection's queue already handed to `session` whose
    /// records are not all written: it leaves the queue when they are.
    encrypted_ahead: usize,
    /// The first byte the peer sent, to tell a plaintext client from a bad record.
    first_byte: Option<u8>,
    /// The handshake finished and has not been reported yet.
    completed_unreported: bool,
    /// What made processing fail, once it did.
    pub(crate) failure: Option<(TlsFailure, String)>,
}

/// What one TLS read came to.
pub(crate) struct TlsRead {
    /// Bytes read from the socket (0: EOF).
    pub(crate) wire_bytes: usize,
    /// The peer closed: EOF, or its close_notify.
    pub(crate) eof: bool,
    /// The records could not be processed (`TlsConn::failure` says why).
    pub(crate) failed: bool,
    /// Whether the socket's receive queue may hold more (see `conn::stays_read_ready`).
    pub(crate) full_read: bool,
}

/// Reads from the socket for rustls, noting what was asked and got (a short read ends
/// readiness, as for a plaintext read) and the connection's first byte.
struct CountingRead<'a> {
    stream: &'a mut TcpStream,
    asked: usize,
    got: usize,
    first_byte: &'a mut Option<u8>,
}

impl Read for CountingRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.stream.read(buf)?;
        self.asked = buf.len();
        self.got = read;
        if self.first_byte.is_none() && read > 0 {
            *self.first_byte = buf.first().copied();
        }
        Ok(read)
    }
}

impl TlsConn {
    pub(crate) fn new(config: &Arc<ServerConfig>) -> Result<TlsConn, rustls::Error> {
        let mut session = ServerConnection::new(Arc::clone(config))?;
        session.set_buffer_limit(Some(TLS_BUFFER_BYTES));
        Ok(TlsConn {
            session,
            encrypted_ahead: 0,
            first_byte: None,
            completed_unreported: false,
            failure: None,
        })
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// Records are waiting to be written.
    pub(crate) fn wants_write(&self) -> bool {
        self.session.wants_write()
    }

    /// Plaintext may go out (the handshake is over and nothing failed).
    pub(crate) fn can_send_plaintext(&self) -> bool {
        !self.session.is_handshaking() && self.failure.is_none()
    }

    /// Whether the handshake finished since the last call (reported once).
    pub(crate) fn take_completed(&mut self) -> bool {
        std::mem::take(&mut self.completed_unreported)
    }

    /// One read from the socket into rustls, the records processed, and the plaintext they
    /// carried appended to `plaintext` (through `scratch`). An I/O error is returned as is.
    pub(crate) fn read(
        &mut self,
        stream: &mut TcpStream,
        scratch: &mut [u8],
        plaintext: &mut bytes::BytesMut,
    ) -> io::Result<TlsRead> {
        let mut source = CountingRead {
            stream,
            asked: 0,
            got: 0,
            first_byte: &mut self.first_byte,
        };
        let wire_bytes = self.session.read_tls(&mut source)?;
        let full_read = source.got >= source.asked && source.asked > 0;
        let mut result = TlsRead {
            wire_bytes,
            eof: wire_bytes == 0,
            failed: false,
            full_read,
        };
        let was_handshaking = self.session.is_handshaking();
        match self.session.process_new_packets() {
            Ok(state) => {
                let mut left = state.plaintext_bytes_to_read();
                while left > 0 {
                    let chunk = left.min(scratch.len());
                    let Some(buf) = scratch.get_mut(..chunk) else {
                        break;
                    };
                    match self.session.reader().read(buf) {
                        Ok(0) => break,
                        Ok(read) => {
                            plaintext.extend_from_slice(&buf[..read]);
                            left = left.saturating_sub(read);
                        }
                        Err(_) => break,
                    }
                }
                if state.peer_has_closed() {
                    result.eof = true;
                }
                if was_handshaking && !self.session.is_handshaking() {
                    self.completed_unreported = true;
                }
            }
            Err(err) => {
                let failure = TlsFailure::classify(&err, self.first_byte);
                self.failure = Some((failure, err.to_string()));
                result.failed = true;
            }
        }
        Ok(result)
    }

    /// Write pending records to `stream` until none is left or the kernel pushes back.
    /// Returns the write calls made, and the error that stopped them, if any.
    pub(crate) fn write_records(&mut self, stream: &mut TcpStream) -> (u64, Option<io::Error>) {
        let mut calls = 0;
        while self.session.wants_write() {
            calls += 1;
            match self.session.write_tls(stream) {
                Ok(0) => {
                    return (
                        calls,
                        Some(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
                    )
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return (calls, Some(err)),
            }
        }
        (calls, None)
    }

    /// The plaintext of the last batch, once all its records are written (0 before): it may
    /// leave the connection's queue.
    pub(crate) fn take_written_batch(&mut self) -> usize {
        if self.session.wants_write() {
            return 0;
        }
        std::mem::take(&mut self.encrypted_ahead)
    }

    /// Encrypt the next batch from the front of `out` (up to [`TLS_BATCH_BYTES`]; rustls
    /// coalesces the buffers into full records). Returns the plaintext bytes taken, which
    /// stay in `out` until [`TlsConn::take_written_batch`] gives them back.
    pub(crate) fn encrypt_batch(&mut self, out: &VecDeque<Bytes>) -> io::Result<usize> {
        debug_assert_eq!(self.encrypted_ahead, 0);
        let mut slices = Vec::with_capacity(TLS_BATCH_IOVECS_MAX.min(out.len()));
        let mut batch_bytes = 0;
        for chunk in out {
            slices.push(IoSlice::new(chunk));
            batch_bytes += chunk.len();
            if batch_bytes >= TLS_BATCH_BYTES || slices.len() >= TLS_BATCH_IOVECS_MAX {
                break;
            }
        }
        if slices.is_empty() {
            return Ok(0);
        }
        let accepted = self.session.writer().write_vectored(&slices)?;
        self.encrypted_ahead = accepted;
        Ok(accepted)
    }

    /// Best effort, never blocking: send close_notify after a finished handshake, and
    /// whatever records are pending (the alert of a failed one).
    pub(crate) fn close(&mut self, stream: &mut TcpStream) {
        if self.failure.is_none() && !self.session.is_handshaking() {
            self.session.send_close_notify();
        }
        for _ in 0..CLOSE_WRITES_MAX {
            if !self.session.wants_write() {
                break;
            }
            match self.session.write_tls(stream) {
                Ok(written) if written > 0 => {}
                _ => break,
            }
        }
    }
}

/// Handshakes and failures on one kind of listener.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TlsCounters {
    pub(crate) handshakes: u64,
    pub(crate) failures: [u64; TlsFailure::ALL.len()],
}

/// The TLS counters of every protocol and of the admin port, and of certificate reloads.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsStats {
    pub(crate) by_protocol: [TlsCounters; ProtocolKind::COUNT],
    pub(crate) admin: TlsCounters,
    pub(crate) reloads_ok: u64,
    pub(crate) reloads_failed: u64,
}

impl TlsStats {
    pub(crate) fn protocol(&mut self, kind: ProtocolKind) -> &mut TlsCounters {
        &mut self.by_protocol[kind.index()]
    }

    /// The metric families, in the Prometheus model, for the admin port's text.
    pub(crate) fn families(&self, protocols: &[ProtocolKind], admin: bool) -> Vec<MetricFamily> {
        let mut rows: Vec<(String, TlsCounters)> = protocols
            .iter()
            .map(|kind| {
                (
                    kind.name().to_ascii_lowercase(),
                    self.by_protocol[kind.index()],
                )
            })
            .collect();
        if admin {
            rows.push(("admin".into(), self.admin));
        }
        let handshakes = rows
            .iter()
            .map(|(protocol, counters)| counter(&[("protocol", protocol)], counters.handshakes))
            .collect();
        let failures = rows
            .iter()
            .flat_map(|(protocol, counters)| {
                TlsFailure::ALL.iter().map(move |failure| {
                    counter(
                        &[("protocol", protocol), ("reason", failure.label())],
                        counters.failures[failure.index()],
                    )
                })
            })
            .collect();
        let reloads = vec![
            counter(&[("result", "ok")], self.reloads_ok),
            counter(&[("result", "failed")], self.reloads_failed),
        ];
        vec![
            family(
                "chatd_tls_handshakes_total",
                "TLS handshakes completed, by listener protocol.",
                handshakes,
            ),
            family(
                "chatd_tls_handshake_failures_total",
                "TLS connections closed for a failure, by listener protocol and reason.",
                failures,
            ),
            family(
                "chatd_tls_reloads_total",
                "Certificate and key reloads (SIGHUP), by result.",
                reloads,
            ),
        ]
    }
}

fn counter(labels: &[(&str, &str)], value: u64) -> Metric {
    let mut metric = Metric::from_label(crate::metrics::label_pairs(labels));
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    metric.set_counter(counter);
    metric
}

fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(MetricType::COUNTER);
    family.set_metric(metrics);
    family
}

/// The TLS families as Prometheus text, appended to `text`.
pub(crate) fn render_into(text: &mut String, families: &[MetricFamily]) -> Result<(), String> {
    use prometheus::Encoder;
    let mut bytes = Vec::new();
    prometheus::TextEncoder::new()
        .encode(families, &mut bytes)
        .map_err(|err| err.to_string())?;
    text.push_str(&String::from_utf8(bytes).map_err(|err| err.to_string())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_told_from_the_first_byte_and_the_error() {
        let bad = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(
            TlsFailure::classify(&bad, Some(b'G')),
            TlsFailure::PlaintextClient
        );
        assert_eq!(
            TlsFailure::classify(&bad, Some(0x16)),
            TlsFailure::BadRecord
        );
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA);
        assert_eq!(
            TlsFailure::classify(&alert, Some(0x16)),
            TlsFailure::AlertReceived
        );
        assert_eq!(
            TlsFailure::classify(&rustls::Error::HandshakeNotComplete, Some(0x16)),
            TlsFailure::Other
        );
    }

    #[test]
    fn a_missing_or_invalid_file_is_named_with_its_reason() {
        let dir = std::env::temp_dir().join(format!("tls-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.pem");
        let err = load_server_config(&missing, &missing).expect_err("missing");
        assert_eq!(err.what, "certificate");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        assert!(err.to_string().contains("cannot read"), "{err}");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let err = load_server_config(&garbage, &garbage).expect_err("garbage");
        assert!(err.to_string().contains("no certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
