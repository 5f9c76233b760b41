//! The admin port: `GET /metrics` answered with the server's statistics in the Prometheus text
//! format, by the same reactor as everything else.
//!
//! Admin connections are the reactor's connections of their own kind ([`AdminHttp`]), in a
//! [`ConnTable`] of their own: read, queued, flushed, closed after their answer and timed out by
//! the same machinery as the chat connections, but never counted against `--connections-max`
//! or per IP, never in the handshake queue or the chat statistics, never seen by a protocol.
//! Each sends one request (read with a size limit), gets one answer and is closed; one that
//! takes longer than `--admin-request-timeout-ms` from accept to the end of its answer is closed
//! without one. At most `--admin-connections-max` are open at once; a connection beyond them is
//! answered 503 and closed as soon as it is accepted, so idle connections holding the slots
//! cannot leave a real request waiting in the kernel's backlog (issue 15: 1,000 idle
//! connections kept a GET unanswered for over 60 s).
//!
//! Tokens: the listener is token 2 and connections take tokens 8..16 by slot (the generation
//! in the high bits, as for chat connections), from the range the reactor keeps unused below
//! its TCP listeners.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::Bytes;
use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::Token;

use super::conn::{ConnKind, ConnTable, IoOutcome, OutputLimits};
use super::listen::{listen_tcp, BindError};
use super::tls::{self, TlsFailure};
use super::{insert_conn, note_readiness, Server};
use crate::chat::ConnId;
use crate::config::{Config, ADMIN_CONNECTIONS_CAP};
use crate::limits::{HandshakeDeadlines, RateLimit, TokenBucket};
use crate::metrics::{self, AdminMetrics, MetricsSnapshot};
use crate::protocol::{CloseMode, CloseReason, Outbox};
use crate::stats::{ProtocolStats, Stats};

pub(super) const ADMIN_LISTENER_TOKEN: usize = 2;
pub(super) const ADMIN_CONN_TOKEN_BASE: usize = 8;
pub(super) const ADMIN_CONN_TOKEN_END: usize = ADMIN_CONN_TOKEN_BASE + ADMIN_CONNECTIONS_CAP;
const _: () = assert!(ADMIN_CONN_TOKEN_END <= super::LISTENER_TOKEN_BASE);

/// Headers accepted in a request; more is answered 400.
const REQUEST_HEADERS_MAX: usize = 32;
/// Input read and thrown away before closing, so that a peer's unread bytes do not turn the
/// close into a reset that could discard the answer on its side.
const DRAIN_BYTES_MAX: usize = 64 * 1024;

/// The answers the admin port gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    InternalError,
    ServiceUnavailable,
}

impl Status {
    const ALL: [Status; 6] = [
        Status::Ok,
        Status::BadRequest,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::InternalError,
        Status::ServiceUnavailable,
    ];

    fn index(self) -> usize {
        match self {
            Status::Ok => 0,
            Status::BadRequest => 1,
            Status::NotFound => 2,
            Status::MethodNotAllowed => 3,
            Status::InternalError => 4,
            Status::ServiceUnavailable => 5,
        }
    }

    fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::InternalError => 500,
            Status::ServiceUnavailable => 503,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::InternalError => "Internal Server Error",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// What the bytes received so far ask for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Not a whole request yet, and still under the size limit.
    Incomplete,
    /// `GET /metrics`.
    Metrics,
    /// Anything else, answered with this status and no more.
    Refuse(Status),
}

/// Classify a request from its first bytes; `bytes_max` is the size limit of the request line
/// and headers. A body, if any, is ignored: the answer never depends on it.
pub(crate) fn classify(received: &[u8], bytes_max: usize) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(received) {
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            // A query string changes nothing: there is one text to give.
            let path = path.split_once('?').map_or(path, |(path, _)| path);
            if path != "/metrics" {
                Request::Refuse(Status::NotFound)
            } else if request.method != Some("GET") {
                Request::Refuse(Status::MethodNotAllowed)
            } else {
                Request::Metrics
            }
        }
        Ok(httparse::Status::Partial) if received.len() < bytes_max => Request::Incomplete,
        Ok(httparse::Status::Partial) | Err(_) => Request::Refuse(Status::BadRequest),
    }
}

/// A whole HTTP/1.1 answer; the connection closes after it.
pub(crate) fn response(status: Status, content_type: &str, body: &[u8]) -> Vec<u8> {
    let allow = if status == Status::MethodNotAllowed {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}\
         Connection: close\r\n\r\n",
        status.code(),
        status.reason(),
        body.len()
    );
    let mut bytes = Vec::with_capacity(head.len() + body.len());
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

fn refusal(status: Status) -> Vec<u8> {
    let body = format!("{}\n", status.reason().to_ascii_lowercase());
    response(status, "text/plain; charset=utf-8", body.as_bytes())
}

/// Connections refused with 503 in one loop turn at most: each costs an accept, a read, a
/// write and a close, and a flood of them must not hold the loop.
const ADMIN_REFUSALS_PER_TURN_MAX: usize = 64;

/// The kind of an admin connection: one HTTP exchange, its traffic counted in no protocol's
/// counters.
#[derive(Clone, Copy, Debug)]
pub(super) struct AdminHttp;

impl ConnKind for AdminHttp {
    fn counters(self, _stats: &mut Stats) -> Option<&mut ProtocolStats> {
        None
    }
}

/// The admin listener, its connections and its counters.
pub(super) struct Admin {
    listener: TcpListener,
    pub(super) addr: SocketAddr,
    /// Edge-triggered, as the other listeners: cleared only by WouldBlock.
    ready: bool,
    /// The connections, in a table of their own, so no chat limit, queue or counter sees
    /// them. Its statistics are never reported: the admin port's are `responses`.
    pub(super) table: ConnTable<AdminHttp>,
    /// Each connection's `--admin-request-timeout-ms` deadline, in accept order; entries of
    /// connections already gone are skipped when they expire.
    deadlines: HandshakeDeadlines,
    connections_max: usize,
    request_timeout_ms: u64,
    request_bytes_max: usize,
    /// Answers given, by `Status::index`.
    responses: [u64; Status::ALL.len()],
    /// `--admin-tls`: the port speaks https.
    tls: bool,
}

impl Admin {
    /// The admin listener `config` asks for (`--admin-port`, on `--admin-bind`), registered on
    /// its token; `None` when there is none.
    pub(super) fn bind(poll: &mio::Poll, config: &Config) -> Result<Option<Admin>, BindError> {
        let Some(port) = config.admin_port else {
            return Ok(None);
        };
        let (listener, addr) = listen_tcp(
            poll,
            "ADMIN",
            SocketAddr::new(config.admin_bind_addr, port),
            config.listen_backlog,
            0,
            // Never shared, even under --reuse-port: a scrape must reach the node it names
            // (each node of a cluster on one machine has an admin port of its own).
            false,
            Token(ADMIN_LISTENER_TOKEN),
        )?;
        // An answer is one buffer, queued once, and the request deadline bounds how long it
        // may take to write: no output limit applies. The linger time is the same deadline
        // counted from the answer, so the request deadline always comes first.
        let unlimited = OutputLimits {
            hard_bytes_max: usize::MAX,
            soft_bytes_max: usize::MAX,
            soft_duration_ms: u64::MAX,
        };
        Ok(Some(Admin {
            listener,
            addr,
            ready: false,
            table: ConnTable::new(unlimited, config.admin_request_timeout_ms),
            deadlines: HandshakeDeadlines::default(),
            connections_max: config.admin_connections_max.clamp(1, ADMIN_CONNECTIONS_CAP),
            request_timeout_ms: config.admin_request_timeout_ms,
            request_bytes_max: config.admin_request_bytes_max.max(16),
            responses: [0; Status::ALL.len()],
            tls: config.admin_tls,
        }))
    }

    pub(super) fn set_ready(&mut self) {
        self.ready = true;
    }

    /// A connection may be waiting in the backlog: to be served, or refused with 503 when
    /// every slot is taken.
    pub(super) fn accept_pending(&self) -> bool {
        self.ready
    }

    /// Answers a connection accepted beyond `--admin-connections-max` with 503 and closes it,
    /// without registering it: what the client sent so far is read and thrown away first (a
    /// close with unread input would reset the connection, and the client might never see
    /// the answer), the answer is a single small write into an empty send buffer, and the
    /// write side is shut so the client reads the answer, then EOF.
    fn refuse_over_cap(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let mut discard = [0u8; 1024];
        while matches!(stream.read(&mut discard), Ok(n) if n > 0) {}
        let answer = refusal(Status::ServiceUnavailable);
        match stream.write(&answer) {
            Ok(written) if written == answer.len() => {}
            Ok(_) | Err(_) => debug!("admin connection {peer}: 503 not written whole"),
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        self.responses[Status::ServiceUnavailable.index()] += 1;
        debug!(
            "admin connection {peer} refused: {} open",
            self.table.slab.len()
        );
    }

    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        self.deadlines.next_deadline_ms()
    }

    pub(super) fn metrics(&self) -> AdminMetrics {
        AdminMetrics {
            connections_open: self.table.slab.len() as u64,
            responses: Status::ALL
                .iter()
                .map(|status| (status.code(), self.responses[status.index()]))
                .collect(),
        }
    }
}

impl Server {
    /// An event for admin connection `id`.
    pub(super) fn handle_admin_event(&mut self, id: ConnId, event: &mio::event::Event) {
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        if note_readiness(&mut admin.table, id, event) {
            self.read_admin_request(id);
        }
    }

    /// Read the request until it is whole, then queue its answer and close after it. The
    /// request is never read past `--admin-request-bytes-max`.
    fn read_admin_request(&mut self, id: ConnId) {
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        let bytes_max = admin.request_bytes_max;
        let request = loop {
            let Some(conn) = admin.table.get_mut(id) else {
                return;
            };
            if !conn.accepts_input() || !conn.read_ready {
                return;
            }
            // At least one byte: a request still incomplete is shorter than the limit.
            let chunk = bytes_max
                .saturating_sub(conn.read_buf.len())
                .min(self.scratch.len());
            let outcome = conn.read_once(&mut self.scratch[..chunk]).0;
            if let Some(tls) = conn.tls.as_mut() {
                if tls.take_completed() {
                    self.tls_stats.admin.handshakes += 1;
                }
                if tls.wants_write() || (tls.can_send_plaintext() && conn.has_output()) {
                    admin.table.mark_flush(id.slot as usize);
                }
            }
            let Some(conn) = admin.table.get_mut(id) else {
                return;
            };
            let reason = match outcome {
                IoOutcome::Continue => match classify(&conn.read_buf, bytes_max) {
                    Request::Incomplete => continue,
                    request => break request,
                },
                IoOutcome::WouldBlock => {
                    conn.read_ready = false;
                    return;
                }
                // EOF before a whole request: nothing to answer.
                IoOutcome::Closed => CloseReason::PeerClosed,
                IoOutcome::Reset => CloseReason::PeerReset,
                IoOutcome::Error => CloseReason::IoError,
                IoOutcome::TlsFailed => {
                    let (failure, detail) = conn
                        .tls
                        .as_ref()
                        .and_then(|tls| tls.failure.clone())
                        .unwrap_or((TlsFailure::Other, String::from("unknown")));
                    self.tls_stats.admin.failures[failure.index()] += 1;
                    let peer = conn.peer;
                    self.tls_failure_logs[failure.index()].warn(self.now_ms, || {
                        format!(
                            "closing admin connection {peer}: TLS failed: {} ({detail})",
                            failure.describe()
                        )
                    });
                    CloseReason::ProtocolError
                }
            };
            admin.table.close(id, reason, CloseMode::Now);
            return;
        };
        let (status, bytes) = match request {
            Request::Metrics => match self.metrics_text() {
                Ok(text) => (
                    Status::Ok,
                    response(Status::Ok, metrics::CONTENT_TYPE, text.as_bytes()),
                ),
                Err(err) => {
                    warn!("rendering the metrics failed: {err}");
                    (Status::InternalError, refusal(Status::InternalError))
                }
            },
            Request::Refuse(status) => (status, refusal(status)),
            Request::Incomplete => return,
        };
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        admin.responses[status.index()] += 1;
        admin.table.send(id, Bytes::from(bytes));
        admin
            .table
            .close(id, CloseReason::Done, CloseMode::AfterFlush);
    }

    /// Write the queued answers, then free the admin connections marked for closing (phase 4).
    pub(super) fn flush_and_close_admin(&mut self) {
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        // No turn budget: at most `ADMIN_CONNECTIONS_CAP` answers are ever queued.
        admin
            .table
            .flush_pending(self.config.write_iovecs_max, usize::MAX);
        for slot in std::mem::take(&mut admin.table.close_list) {
            admin.table.discard_output(slot);
            let Some(mut conn) = admin.table.slab.try_remove(slot) else {
                continue;
            };
            conn.close_tls();
            // Read what the peer may still have sent, so that the close is not a reset that
            // could discard the answer on its side.
            let mut sink = [0u8; 4096];
            let mut drained = 0;
            while drained < DRAIN_BYTES_MAX {
                match conn.stream.read(&mut sink) {
                    Ok(n) if n > 0 => drained += n,
                    _ => break,
                }
            }
            if let Err(err) = self.poll.registry().deregister(&mut conn.stream) {
                debug!("deregister admin connection {}: {err}", conn.peer);
            }
            debug!("admin connection {} closed", conn.peer);
        }
    }

    /// Accept admin connections while there is room (phase 5).
    pub(super) fn accept_admin(&mut self) {
        if self.shutdown_deadline_ms.is_some() {
            return;
        }
        let now_ms = self.now_ms;
        let mut refused = 0;
        loop {
            let Some(admin) = self.admin.as_mut() else {
                return;
            };
            if !admin.accept_pending() {
                return;
            }
            if refused >= ADMIN_REFUSALS_PER_TURN_MAX {
                // The listener stays ready: the rest are refused next turn.
                return;
            }
            let (stream, peer) = match admin.listener.accept() {
                Ok(accepted) => accepted,
                Err(err) => {
                    match err.kind() {
                        io::ErrorKind::WouldBlock => {}
                        io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted => continue,
                        // Out of descriptors: the next connection attempt brings a new edge;
                        // retrying now would only spin.
                        _ => {
                            let addr = admin.addr;
                            self.accept_fail_log.warn(now_ms, || {
                                format!("accept on the admin port {addr} failed: {err}")
                            });
                        }
                    }
                    admin.ready = false;
                    return;
                }
            };
            let tls = if admin.tls {
                match self.tls.as_ref() {
                    Some(settings) => Some(&settings.config),
                    None => continue,
                }
            } else {
                None
            };
            // Below the cap, so the new slot, and with it the token, stays in the admin range.
            if admin.table.slab.len() >= admin.connections_max {
                refused += 1;
                if tls.is_some() {
                    // A plaintext 503 means nothing to a TLS client, and a handshake for it
                    // would cost more than the refusal is for: the connection just closes.
                    admin.responses[Status::ServiceUnavailable.index()] += 1;
                    drop(stream);
                } else {
                    admin.refuse_over_cap(stream, peer);
                }
                continue;
            }
            // Never drawn from: the request size limit bounds an admin connection's input.
            let unlimited = RateLimit {
                rate_per_s: 0,
                burst: 0,
            };
            let Some(id) = insert_conn(
                &self.poll,
                &mut self.next_generation,
                &mut admin.table,
                ADMIN_CONN_TOKEN_BASE,
                (stream, peer),
                AdminHttp,
                TokenBucket::full(unlimited, now_ms),
                tls,
            ) else {
                continue;
            };
            admin
                .deadlines
                .push(id, now_ms.saturating_add(admin.request_timeout_ms));
            debug!("admin connection {peer} accepted");
        }
    }

    /// Close admin connections past their deadline, answered or not (timers phase).
    pub(super) fn expire_admin(&mut self) {
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        while let Some(id) = admin.deadlines.pop_expired(self.now_ms) {
            if let Some(conn) = admin.table.get_mut(id) {
                if conn.closing().is_none()
                    && conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
                {
                    self.tls_stats.admin.failures[TlsFailure::HandshakeDeadline.index()] += 1;
                    let peer = conn.peer;
                    let failure = TlsFailure::HandshakeDeadline;
                    self.tls_failure_logs[failure.index()].warn(self.now_ms, || {
                        format!(
                            "closing admin connection {peer}: TLS failed: {}",
                            failure.describe()
                        )
                    });
                }
                debug!("admin connection {id} timed out");
                admin.table.close_now_overriding(id, CloseReason::Timeout);
            }
        }
        admin.table.expire_lingering();
    }

    /// Stop serving the admin port (shutdown): the listener and every connection go.
    pub(super) fn close_admin(&mut self) {
        let Some(mut admin) = self.admin.take() else {
            return;
        };
        if let Err(err) = self.poll.registry().deregister(&mut admin.listener) {
            debug!("deregister admin listener {}: {err}", admin.addr);
        }
        for (_, conn) in admin.table.slab.iter_mut() {
            if let Err(err) = self.poll.registry().deregister(&mut conn.stream) {
                debug!("deregister admin connection {}: {err}", conn.peer);
            }
        }
    }

    /// The metrics text, rendered now from the counters as they are.
    fn metrics_text(&self) -> Result<String, String> {
        let stats = self.stats();
        // A protocol with a plaintext and a TLS listener is one protocol.
        let mut kinds: Vec<crate::protocol::ProtocolKind> =
            self.listeners.iter().map(|entry| entry.kind).collect();
        kinds.sort_by_key(|kind| kind.index());
        kinds.dedup();
        let protocols = kinds
            .iter()
            .map(|&kind| {
                let counters = stats
                    .by_protocol
                    .get(kind.index())
                    .copied()
                    .unwrap_or_default();
                (kind.name().to_ascii_lowercase(), counters)
            })
            .collect();
        let udp_sockets = self
            .udp
            .iter()
            .map(|entry| {
                entry
                    .counters
                    .metrics(entry.kind.name().to_ascii_lowercase())
            })
            .collect();
        let snapshot = MetricsSnapshot {
            stats: &stats,
            protocols,
            udp_sockets,
            store: self.services.store_metrics(),
            switchboard: self.services.switchboard_metrics(),
            cluster: self.services.cluster().map(|cluster| cluster.metrics()),
            names: self.services.name_metrics(),
            loop_turns: &self.loop_turns,
            connections_max: self.config.connections_max as u64,
            admin: self.admin.as_ref().map(Admin::metrics).unwrap_or_default(),
            heap_in_use_bytes: super::trim::heap_in_use_bytes(),
        };
        let mut text = metrics::render(&snapshot)?;
        if self.tls.is_some() {
            let tls_kinds: Vec<_> = kinds
                .iter()
                .copied()
                .filter(|&kind| {
                    self.listeners
                        .iter()
                        .any(|entry| entry.tls && entry.kind == kind)
                })
                .collect();
            let families = self.tls_stats.families(&tls_kinds, self.config.admin_tls);
            tls::render_into(&mut text, &families)?;
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 8192;

    #[test]
    fn get_metrics_is_served_with_or_without_headers_or_a_query() {
        for request in [
            &b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"[..],
            b"GET /metrics HTTP/1.0\r\n\r\n",
            b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(classify(request, LIMIT), Request::Metrics);
        }
    }

    #[test]
    fn a_request_cut_anywhere_is_incomplete_until_its_blank_line() {
        let whole = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..whole.len() {
            assert_eq!(classify(&whole[..cut], LIMIT), Request::Incomplete, "{cut}");
        }
        assert_eq!(classify(whole, LIMIT), Request::Metrics);
    }

    #[test]
    fn other_paths_methods_and_garbage_are_refused() {
        let cases: [(&[u8], Status); 7] = [
            (b"GET / HTTP/1.1\r\n\r\n", Status::NotFound),
            (b"GET /metrics/x HTTP/1.1\r\n\r\n", Status::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Status::MethodNotAllowed),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Status::MethodNotAllowed),
            (b"BLAH\r\n\r\n", Status::BadRequest),
            (b"GET /metrics HTTP/9.9\r\n\r\n", Status::BadRequest),
            (b"\x00\xff\x16\x03\x01", Status::BadRequest),
        ];
        for (request, status) in cases {
            assert_eq!(
                classify(request, LIMIT),
                Request::Refuse(status),
                "{:?}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn a_request_that_reaches_the_size_limit_unfinished_is_refused() {
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        request.resize(100, b'a');
        assert_eq!(classify(&request, 101), Request::Incomplete);
        assert_eq!(classify(&request, 100), Request::Refuse(Status::BadRequest));
    }

    #[test]
    fn too_many_headers_are_refused() {
        let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for at in 0..=REQUEST_HEADERS_MAX {
            request.extend_from_slice(format!("X-{at}: 1\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        assert_eq!(
            classify(&request, LIMIT),
            Request::Refuse(Status::BadRequest)
        );
    }

    #[test]
    fn admin_traffic_adds_to_no_protocols_counters() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        let unlimited = RateLimit {
            rate_per_s: 0,
            burst: 0,
        };
        let conn = super::super::conn::Conn::new(
            TcpStream::from_std(accepted),
            1,
            AdminHttp,
            peer,
            TokenBucket::full(unlimited, 0),
        );
        let limits = OutputLimits {
            hard_bytes_max: usize::MAX,
            soft_bytes_max: usize::MAX,
            soft_duration_ms: u64::MAX,
        };
        let mut table = ConnTable::new(limits, 1000);
        let id = ConnId::new(table.slab.insert(conn) as u32, 1);
        let answer = refusal(Status::NotFound);
        table.count_frame_in(id);
        table.send(id, Bytes::from(answer.clone()));
        table.close(id, CloseReason::Done, CloseMode::AfterFlush);
        assert_eq!(table.flush_pending(64, usize::MAX), answer.len());
        assert_eq!(table.close_list, [id.slot as usize], "closed once written");
        let mut received = vec![0; answer.len()];
        client.read_exact(&mut received).expect("the answer");
        assert_eq!(received, answer);
        assert!(table
            .stats
            .by_protocol
            .iter()
            .all(|counters| *counters == ProtocolStats::default()));
    }

    #[test]
    fn answers_carry_their_length_and_close() {
        let answer = response(Status::Ok, metrics::CONTENT_TYPE, b"a 1\n");
        assert_eq!(
            answer,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
              Content-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        );
        let refused = String::from_utf8(refusal(Status::MethodNotAllowed)).expect("text");
        assert!(refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(refused.contains("\r\nAllow: GET\r\n"));
        assert!(refused.ends_with("\r\n\r\nmethod not allowed\n"));
    }
}
