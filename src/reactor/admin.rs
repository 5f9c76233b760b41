//! The admin port: `GET /metrics` answered with the server's statistics in the Prometheus text
//! format, by the same reactor as everything else.
//!
//! Admin connections are ordinary non-blocking sockets kept apart from the chat connections
//! (not counted against `--connections-max`, not seen by any protocol): each sends one request
//! (read with a size limit), gets one answer and is closed; one that takes longer than
//! `--admin-request-timeout-ms` from accept to the end of its answer is closed without one.
//! At most `--admin-connections-max` are open at once; a connection beyond them is answered 503
//! and closed as soon as it is accepted, so idle connections holding the slots cannot leave a
//! real request waiting in the kernel's backlog (issue 15: 1,000 idle connections kept a GET
//! unanswered for over 60 s).
//!
//! Tokens: the listener is token 2 and connections take tokens 8..16, by slab slot, from the
//! range the reactor keeps unused below its TCP listeners. A slot is reused only by an accept,
//! which runs after every event of the turn, and a freed socket is deregistered and closed,
//! so no stale event can reach a newcomer and no generation is needed.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use slab::Slab;

use super::listen::{bind_tcp, BindError};
use super::Server;
use crate::config::{Config, ADMIN_CONNECTIONS_CAP};
use crate::metrics::{self, AdminMetrics, MetricsSnapshot};

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

struct AdminConn {
    stream: TcpStream,
    peer: SocketAddr,
    /// The request so far, at most the size limit.
    request: Vec<u8>,
    /// The answer and how much of it is written; `None` while the request is incomplete.
    answer: Option<(Vec<u8>, usize)>,
    deadline_ms: u64,
    read_ready: bool,
    write_ready: bool,
}

/// The admin listener, its connections and its counters.
pub(super) struct Admin {
    listener: TcpListener,
    pub(super) addr: SocketAddr,
    /// Edge-triggered, as the other listeners: cleared only by WouldBlock.
    ready: bool,
    conns: Slab<AdminConn>,
    connections_max: usize,
    request_timeout_ms: u64,
    request_bytes_max: usize,
    /// Answers given, by `Status::index`.
    responses: [u64; Status::ALL.len()],
}

impl Admin {
    /// The admin listener `config` asks for (`--admin-port`, on `--admin-bind`), registered on
    /// its token; `None` when there is none.
    pub(super) fn bind(poll: &mio::Poll, config: &Config) -> Result<Option<Admin>, BindError> {
        let Some(port) = config.admin_port else {
            return Ok(None);
        };
        let addr = SocketAddr::new(config.admin_bind_addr, port);
        let mut listener = bind_tcp("ADMIN", addr, config.listen_backlog, 0)?;
        let fail = |step, source| BindError {
            protocol: "ADMIN",
            addr,
            step,
            source,
        };
        let addr = listener
            .local_addr()
            .map_err(|source| fail("getsockname", source))?;
        poll.registry()
            .register(
                &mut listener,
                Token(ADMIN_LISTENER_TOKEN),
                Interest::READABLE,
            )
            .map_err(|source| fail("epoll_ctl", source))?;
        Ok(Some(Admin::new(
            listener,
            addr,
            config.admin_connections_max,
            config.admin_request_timeout_ms,
            config.admin_request_bytes_max,
        )))
    }

    fn new(
        listener: TcpListener,
        addr: SocketAddr,
        connections_max: usize,
        request_timeout_ms: u64,
        request_bytes_max: usize,
    ) -> Admin {
        Admin {
            listener,
            addr,
            ready: false,
            conns: Slab::new(),
            connections_max: connections_max.clamp(1, ADMIN_CONNECTIONS_CAP),
            request_timeout_ms,
            request_bytes_max: request_bytes_max.max(16),
            responses: [0; Status::ALL.len()],
        }
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
        debug!("admin connection {peer} refused: {} open", self.conns.len());
    }

    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        self.conns.iter().map(|(_, conn)| conn.deadline_ms).min()
    }

    pub(super) fn metrics(&self) -> AdminMetrics {
        AdminMetrics {
            connections_open: self.conns.len() as u64,
            responses: Status::ALL
                .iter()
                .map(|status| (status.code(), self.responses[status.index()]))
                .collect(),
        }
    }
}

/// What to do with an admin connection after serving an event.
enum Next {
    Keep,
    Close,
}

impl Server {
    /// An event for admin connection `slot`.
    pub(super) fn handle_admin_event(&mut self, slot: usize, event: &mio::event::Event) {
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        let Some(conn) = admin.conns.get_mut(slot) else {
            return;
        };
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            conn.read_ready = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            conn.write_ready = true;
        }
        if let Next::Close = self.serve_admin_conn(slot) {
            self.close_admin_conn(slot);
        }
    }

    /// Read the request until it is whole, answer it, write the answer.
    fn serve_admin_conn(&mut self, slot: usize) -> Next {
        let Some(admin) = self.admin.as_mut() else {
            return Next::Close;
        };
        let bytes_max = admin.request_bytes_max;
        let Some(conn) = admin.conns.get_mut(slot) else {
            return Next::Close;
        };
        if conn.answer.is_none() {
            let mut chunk = [0u8; 2048];
            let request = loop {
                if !conn.read_ready {
                    return Next::Keep;
                }
                let room = bytes_max
                    .saturating_sub(conn.request.len())
                    .min(chunk.len());
                match conn.stream.read(&mut chunk[..room]) {
                    // EOF before a whole request: nothing to answer.
                    Ok(0) => return Next::Close,
                    Ok(n) => {
                        conn.request.extend_from_slice(&chunk[..n]);
                        match classify(&conn.request, bytes_max) {
                            Request::Incomplete => {}
                            request => break request,
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        conn.read_ready = false;
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        debug!("admin read from {}: {err}", conn.peer);
                        return Next::Close;
                    }
                }
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
                Request::Incomplete => return Next::Keep,
            };
            let Some(admin) = self.admin.as_mut() else {
                return Next::Close;
            };
            admin.responses[status.index()] += 1;
            let Some(conn) = admin.conns.get_mut(slot) else {
                return Next::Close;
            };
            conn.answer = Some((bytes, 0));
        }
        let Some(conn) = self
            .admin
            .as_mut()
            .and_then(|admin| admin.conns.get_mut(slot))
        else {
            return Next::Close;
        };
        let Some((bytes, written)) = conn.answer.as_mut() else {
            return Next::Keep;
        };
        while *written < bytes.len() {
            if !conn.write_ready {
                return Next::Keep;
            }
            match conn.stream.write(&bytes[*written..]) {
                Ok(0) => return Next::Close,
                Ok(n) => *written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => conn.write_ready = false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!("admin write to {}: {err}", conn.peer);
                    return Next::Close;
                }
            }
        }
        Next::Close
    }

    fn close_admin_conn(&mut self, slot: usize) {
        let Some(admin) = self.admin.as_mut() else {
            return;
        };
        let Some(mut conn) = admin.conns.try_remove(slot) else {
            return;
        };
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
            let (mut stream, peer) = match admin.listener.accept() {
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
            if admin.conns.len() >= admin.connections_max {
                refused += 1;
                admin.refuse_over_cap(stream, peer);
                continue;
            }
            let entry = admin.conns.vacant_entry();
            let slot = entry.key();
            if slot >= ADMIN_CONNECTIONS_CAP {
                // Not reachable: the slab never holds more than `connections_max`.
                continue;
            }
            if let Err(err) = self.poll.registry().register(
                &mut stream,
                Token(ADMIN_CONN_TOKEN_BASE + slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("cannot register admin connection from {peer}: {err}");
                continue;
            }
            debug!("admin connection {peer} accepted");
            entry.insert(AdminConn {
                stream,
                peer,
                request: Vec::new(),
                answer: None,
                deadline_ms: now_ms.saturating_add(admin.request_timeout_ms),
                read_ready: false,
                write_ready: true,
            });
        }
    }

    /// Close admin connections past their deadline (timers phase).
    pub(super) fn expire_admin(&mut self) {
        let now_ms = self.now_ms;
        let Some(admin) = self.admin.as_ref() else {
            return;
        };
        let expired: Vec<usize> = admin
            .conns
            .iter()
            .filter(|(_, conn)| now_ms >= conn.deadline_ms)
            .map(|(slot, _)| slot)
            .collect();
        for slot in expired {
            debug!("admin connection timed out");
            self.close_admin_conn(slot);
        }
    }

    /// Stop serving the admin port (shutdown): the listener and every connection go.
    pub(super) fn close_admin(&mut self) {
        let Some(mut admin) = self.admin.take() else {
            return;
        };
        if let Err(err) = self.poll.registry().deregister(&mut admin.listener) {
            debug!("deregister admin listener {}: {err}", admin.addr);
        }
        for mut conn in admin.conns.drain() {
            if let Err(err) = self.poll.registry().deregister(&mut conn.stream) {
                debug!("deregister admin connection {}: {err}", conn.peer);
            }
        }
    }

    /// The metrics text, rendered now from the counters as they are.
    fn metrics_text(&self) -> Result<String, String> {
        let stats = self.stats();
        let protocols = self
            .listeners
            .iter()
            .map(|entry| {
                let counters = stats
                    .by_protocol
                    .get(entry.kind.index())
                    .copied()
                    .unwrap_or_default();
                (entry.kind.name().to_ascii_lowercase(), counters)
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
            loop_turns: &self.loop_turns,
            connections_max: self.config.connections_max as u64,
            admin: self.admin.as_ref().map(Admin::metrics).unwrap_or_default(),
        };
        metrics::render(&snapshot)
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
