//! The churn scenario: connections that arrive, sign in and leave, over and over.
//!
//! Where the other scenarios hold their clients for the whole run, this one opens `connects`
//! short-lived connections on an open-loop plan (connection `i` is due at `i / rate`), dealt
//! round-robin over the protocols given. Each one does its protocol's sign-in and waits for the
//! server's answer, which proves the server handled it, then leaves in one of the ways real
//! clients leave: a clean close, a reset (SO_LINGER 0), a close in the middle of a frame, or a
//! close before signing in at all. What the server must show afterwards (descriptors and memory
//! back near their baseline, nothing lost by the clients that stayed) is checked by
//! scripts/soak.sh, which runs this beside `loadgen mix`.
//!
//! The sign-ins, by protocol (names are unique per connection, so none is refused as taken):
//! - ROOM: wait for `alias?`, send an alias, wait for the greeting.
//! - BIN24: send a message to oneself, wait for it to come back, answer it and wait for the
//!   answer to come back too (so nothing is left unanswered, and nothing goes to the store).
//! - CCM: send Identity, wait for the Identity answer with the token.
//! - MATOU: send CONNECT_REQUEST, wait for CONNECT_RESPONSE 1.
//! - OCM (TCRP): ask to join a room that does not exist, wait for the 400 answer and the
//!   server's close (no room is created, so churn leaves no state behind on the server).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mio::{Events, Interest, Token};
use serde::Serialize;
use slab::Slab;

use crate::driver::{Loop, RunError, TIMER};
use crate::plan::SplitMix64;
pub use crate::registry::Protocol;
use crate::sockio::{read_chunk, write_pending, Chunk, Drained};
use crate::stats::{ErrorCounts, ErrorKind, LatencyHistogram, LatencySummary};
use crate::tls::Stream;

const FIRST_CONN_TOKEN: usize = 1;
/// Bytes taken per read: an answer is judged as it grows, before the next read can make it
/// too long.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Most bytes a sign-in answer may take before it counts as a protocol error (a MATOU client
/// also hears others' CONNECT_NOTIFY; a CCM client may hear a keepalive).
const ANSWER_BYTES_MAX: usize = 64 * 1024;
const PROGRESS_INTERVAL_US: u64 = 1_000_000;

/// How a connection leaves once signed in (or, for `BeforeSignIn`, instead of signing in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Clean,
    Reset,
    MidFrame,
    BeforeSignIn,
}

const ENDINGS: [Ending; 4] = [
    Ending::Clean,
    Ending::Reset,
    Ending::MidFrame,
    Ending::BeforeSignIn,
];

#[derive(Clone, Debug)]
pub struct ChurnConfig {
    /// The protocols to churn and their listeners, dealt round-robin.
    pub targets: Vec<(Protocol, SocketAddr)>,
    pub connects: u64,
    pub rate_per_s: u64,
    /// Most connections open at once; a connection due while at the cap waits (and its
    /// latency, measured from its intended time, shows the wait).
    pub concurrency_max: usize,
    /// Longest a connection may take from its intended time to its sign-in answer.
    pub sign_in_timeout_us: u64,
    pub seed: u64,
    pub progress: bool,
}

#[derive(Debug)]
pub enum ChurnError {
    Setup(String),
}

impl std::fmt::Display for ChurnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChurnError::Setup(why) => f.write_str(why),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EndingCounts {
    pub clean: u64,
    pub reset: u64,
    pub mid_frame: u64,
    pub before_sign_in: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    pub connects_planned: u64,
    pub connects_started: u64,
    /// Connections that got their sign-in answer (those ending before sign-in excluded).
    pub signed_in: u64,
    pub endings: EndingCounts,
    pub elapsed_s: f64,
    pub connects_per_s_target: u64,
    pub connects_per_s_achieved: f64,
    /// From the intended connect time to the sign-in answer.
    pub sign_in_latency: LatencySummary,
    pub errors: ErrorCounts,
    /// Per protocol: connections started.
    pub started_by_protocol: Vec<(Protocol, u64)>,
    /// With --tls: TLS handshakes completed (full ones: resumption is off), and their rate
    /// over the run.
    pub tls_handshakes: Option<u64>,
    pub tls_handshakes_per_s: Option<f64>,
}

impl ChurnReport {
    pub fn to_text(&self) -> String {
        let l = &self.sign_in_latency;
        let by_protocol: Vec<String> = self
            .started_by_protocol
            .iter()
            .map(|(p, n)| format!("{} {n}", p.name()))
            .collect();
        let mut text = format!(
            "churn: {started} of {planned} connections in {elapsed:.1} s ({achieved:.0}/s, \
             target {target}/s): {by_protocol}\n\
             signed in {signed_in}; endings: clean {clean}, reset {reset}, mid-frame {mid}, \
             before sign-in {before}\n\
             sign-in latency from intended time (ms): p50 {p50:.3} p90 {p90:.3} p99 {p99:.3} \
             p99.9 {p999:.3} max {max:.3}\n\
             errors: {errors} (connect {connect}, read {read}, write {write}, protocol {protocol})\n",
            started = self.connects_started,
            planned = self.connects_planned,
            elapsed = self.elapsed_s,
            achieved = self.connects_per_s_achieved,
            target = self.connects_per_s_target,
            by_protocol = by_protocol.join(", "),
            signed_in = self.signed_in,
            clean = self.endings.clean,
            reset = self.endings.reset,
            mid = self.endings.mid_frame,
            before = self.endings.before_sign_in,
            p50 = l.p50_ms,
            p90 = l.p90_ms,
            p99 = l.p99_ms,
            p999 = l.p999_ms,
            max = l.max_ms,
            errors = self.errors.total(),
            connect = self.errors.connect,
            read = self.errors.read,
            write = self.errors.write,
            protocol = self.errors.protocol,
        );
        if let (Some(done), Some(per_s)) = (self.tls_handshakes, self.tls_handshakes_per_s) {
            text.push_str(&format!(
                "TLS handshakes: {done} in {:.1} s ({per_s:.0}/s, full handshakes)\n",
                self.elapsed_s
            ));
        }
        for (kind, first) in &self.errors.first {
            text.push_str(&format!("  first {kind} error: {first}\n"));
        }
        text
    }

    /// Every planned connection ran and none failed.
    pub fn is_clean(&self) -> bool {
        self.errors.total() == 0 && self.connects_started == self.connects_planned
    }
}

/// What a connection waits for before it may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Connecting,
    /// With --tls: connected, the TLS handshake under way (part of connecting).
    Handshake,
    /// ROOM only: waiting for `alias?` before sending the alias.
    Prompt,
    /// Sign-in sent; waiting for the answer that proves it was handled.
    Answer,
    /// BIN24 only: the answer to our own message sent; waiting for it to come back.
    AnswerEcho,
    /// OCM only: answered; waiting for the server's close.
    ServerClose,
}

struct Conn {
    stream: Stream,
    protocol: Protocol,
    ending: Ending,
    stage: Stage,
    index: u64,
    intended_us: u64,
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
}

struct Run<'a> {
    cfg: &'a ChurnConfig,
    io: Loop,
    conns: Slab<Conn>,
    rng: SplitMix64,
    next_index: u64,
    start_us: u64,
    latency: LatencyHistogram,
    errors: ErrorCounts,
    endings: EndingCounts,
    signed_in: u64,
    started_by_protocol: Vec<u64>,
    progress_next_us: u64,
    tls_handshakes: u64,
}

/// Runs the whole plan; stops by itself when every connection has ended (each is bounded by
/// the sign-in timeout).
pub fn run(cfg: &ChurnConfig) -> Result<ChurnReport, ChurnError> {
    if cfg.targets.is_empty() || cfg.rate_per_s == 0 || cfg.concurrency_max == 0 {
        return Err(ChurnError::Setup(
            "churn needs a protocol, a rate and a concurrency above 0".to_string(),
        ));
    }
    let io = Loop::new().map_err(|e| match e {
        RunError::Setup(why) | RunError::Unreachable(why) => ChurnError::Setup(why),
    })?;
    let start_us = io.clock.now_us();
    let mut run = Run {
        cfg,
        io,
        conns: Slab::with_capacity(cfg.concurrency_max),
        rng: SplitMix64(cfg.seed),
        next_index: 0,
        start_us,
        latency: LatencyHistogram::new(),
        errors: ErrorCounts::default(),
        endings: EndingCounts::default(),
        signed_in: 0,
        started_by_protocol: vec![0; cfg.targets.len()],
        progress_next_us: start_us + PROGRESS_INTERVAL_US,
        tls_handshakes: 0,
    };
    run.event_loop()?;
    Ok(run.report())
}

impl Run<'_> {
    fn intended_us(&self, index: u64) -> u64 {
        self.start_us + index * 1_000_000 / self.cfg.rate_per_s
    }

    fn event_loop(&mut self) -> Result<(), ChurnError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now_us = self.io.clock.now_us();
            self.start_due(now_us);
            self.expire(now_us);
            if self.cfg.progress && now_us >= self.progress_next_us {
                self.progress_line(now_us);
                self.progress_next_us = now_us + PROGRESS_INTERVAL_US;
            }
            if self.next_index >= self.cfg.connects && self.conns.is_empty() {
                break;
            }
            self.io
                .pacer
                .arm_at(self.next_wake_us())
                .map_err(|e| ChurnError::Setup(format!("arming the timerfd: {e}")))?;
            if let Err(e) = self.io.poll.poll(&mut events, Some(Duration::from_secs(1))) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ChurnError::Setup(format!("poll: {e}")));
            }
            for event in events.iter() {
                if event.token() == TIMER {
                    self.io
                        .pacer
                        .acknowledge()
                        .map_err(|e| ChurnError::Setup(format!("reading the timerfd: {e}")))?;
                    continue;
                }
                // The peer's FIN or an error may have come with the data under this one edge.
                let hangup = event.is_read_closed() || event.is_error();
                self.drive(event.token().0 - FIRST_CONN_TOKEN, hangup);
            }
        }
        if self.cfg.progress {
            eprintln!();
        }
        Ok(())
    }

    /// The next connect due (if there is room for it) or the next sign-in deadline.
    fn next_wake_us(&self) -> u64 {
        let next_connect_us =
            if self.next_index < self.cfg.connects && self.conns.len() < self.cfg.concurrency_max {
                self.intended_us(self.next_index)
            } else {
                u64::MAX
            };
        // The oldest open connection's deadline bounds the wait; with many open, a 10 ms
        // granularity is plenty for timeouts of seconds.
        let deadline_us = self
            .conns
            .iter()
            .map(|(_, c)| c.intended_us + self.cfg.sign_in_timeout_us)
            .min()
            .unwrap_or(u64::MAX);
        let progress_us = if self.cfg.progress {
            self.progress_next_us
        } else {
            u64::MAX
        };
        next_connect_us.min(deadline_us).min(progress_us)
    }

    fn start_due(&mut self, now_us: u64) {
        while self.next_index < self.cfg.connects
            && self.conns.len() < self.cfg.concurrency_max
            && self.intended_us(self.next_index) <= now_us
        {
            let index = self.next_index;
            self.next_index += 1;
            self.start(index);
        }
    }

    fn start(&mut self, index: u64) {
        let protocols = self.cfg.targets.len();
        let slot = (index % protocols as u64) as usize;
        let (protocol, target) = self.cfg.targets[slot];
        self.started_by_protocol[slot] += 1;
        let ending = ENDINGS[self.rng.next() as usize % ENDINGS.len()];
        let intended_us = self.intended_us(index);
        let target = host_of_connection(crate::connect::hosts(), target, index, protocols);
        let connected = crate::connect::connect_tcp_to_host(target, index as usize)
            .and_then(|tcp| Stream::new(tcp, target).map_err(io::Error::other));
        let mut stream = match connected {
            Ok(stream) => stream,
            Err(e) => {
                self.errors.count(ErrorKind::Connect, || {
                    format!("{} connect to {target}: {e}", protocol.name())
                });
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.io.poll.registry().register(
            &mut stream,
            Token(key + FIRST_CONN_TOKEN),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.errors
                .count(ErrorKind::Connect, || format!("registering a socket: {e}"));
            return;
        }
        entry.insert(Conn {
            stream,
            protocol,
            ending,
            stage: Stage::Connecting,
            index,
            intended_us,
            out: Vec::new(),
            written: 0,
            input: Vec::new(),
        });
    }

    /// Connections past their sign-in deadline are errors, and leave.
    fn expire(&mut self, now_us: u64) {
        let timeout_us = self.cfg.sign_in_timeout_us;
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| now_us >= c.intended_us + timeout_us)
            .map(|(key, _)| key)
            .collect();
        for key in late {
            let conn = &self.conns[key];
            let (protocol, stage, index) = (conn.protocol, conn.stage, conn.index);
            self.errors.count(ErrorKind::Connect, || {
                format!(
                    "{} connection {index} got no answer within {} ms (stage {stage:?})",
                    protocol.name(),
                    timeout_us / 1_000
                )
            });
            self.remove(key);
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.io.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn fail(&mut self, key: usize, kind: ErrorKind, why: String) {
        let (protocol, index) = (self.conns[key].protocol, self.conns[key].index);
        self.errors.count(kind, || {
            format!("{} connection {index}: {why}", protocol.name())
        });
        self.remove(key);
    }

    fn drive(&mut self, key: usize, hangup: bool) {
        if !self.conns.contains(key) {
            return; // an event for a connection that already left
        }
        if self.conns[key].stage == Stage::Connecting {
            match self.conns[key].stream.peer_addr() {
                // A connection leaving before it signs in leaves before the handshake too:
                // for a TLS listener, a handshake cut short.
                Ok(_)
                    if self.conns[key].stream.is_tls()
                        && self.conns[key].ending != Ending::BeforeSignIn =>
                {
                    self.conns[key].stage = Stage::Handshake;
                }
                Ok(_) => self.connected(key),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    let why = match self.conns[key].stream.take_error() {
                        Ok(Some(err)) => err.to_string(),
                        _ => e.to_string(),
                    };
                    self.fail(key, ErrorKind::Connect, format!("connect failed: {why}"));
                    return;
                }
            }
            if !self.conns.contains(key) {
                return;
            }
        }
        if self.conns[key].stage == Stage::Handshake {
            // Every event tries again (the readiness is not kept here).
            let (mut readable, mut writable) = (true, true);
            match self.conns[key]
                .stream
                .handshake(&mut readable, &mut writable)
            {
                Ok(false) => return,
                Ok(true) => {
                    self.tls_handshakes += 1;
                    self.connected(key);
                }
                Err(e) => {
                    self.fail(key, ErrorKind::Connect, format!("TLS handshake: {e}"));
                    return;
                }
            }
            if !self.conns.contains(key) {
                return;
            }
        }
        if !self.flush(key) {
            return;
        }
        self.read(key, hangup);
    }

    fn connected(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if let Err(e) = conn.stream.set_nodelay(true) {
            let why = format!("TCP_NODELAY: {e}");
            self.fail(key, ErrorKind::Connect, why);
            return;
        }
        if conn.ending == Ending::BeforeSignIn {
            self.endings.before_sign_in += 1;
            self.leave(key);
            return;
        }
        let name = churn_name(conn.protocol, conn.index);
        (conn.out, conn.stage) = (conn.protocol.info().sign_in.hello)(&name);
        conn.written = 0;
    }

    /// Writes what is pending; false when the connection is gone.
    fn flush(&mut self, key: usize) -> bool {
        let conn = &mut self.conns[key];
        // TLS's encrypted backlog before anything newer (none over plain TCP).
        match conn.stream.write_backlog() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                self.fail(key, ErrorKind::Write, e.to_string());
                return false;
            }
        }
        let mut written = conn.written;
        let outcome = write_pending(&mut conn.stream, &conn.out, &mut written);
        conn.written = written;
        match outcome {
            Drained::All | Drained::WouldBlock => true,
            Drained::Failed(why) => {
                self.fail(key, ErrorKind::Write, why);
                false
            }
        }
    }

    /// Reads until a short read or `WouldBlock`, as the rest of the loadgen (see
    /// [`read_chunk`]), judging the answer as it grows.
    fn read(&mut self, key: usize, hangup: bool) {
        loop {
            let conn = &mut self.conns[key];
            // Every event reads (the readiness is not kept): the flag is not needed.
            let mut readable = true;
            let buf = &mut self.io.read_buf[..READ_CHUNK_BYTES];
            let (n, emptied) = match read_chunk(&mut conn.stream, buf, &mut readable, hangup) {
                Chunk::Bytes(n) => (n, false),
                Chunk::Emptied(n) => (n, true),
                Chunk::Drained => return,
                Chunk::Eof => {
                    if conn.stage == Stage::ServerClose {
                        if find(&conn.input, b"\"status\": 400").is_some() {
                            self.signed_in_now(key);
                            self.remove(key);
                        } else {
                            self.unexpected(key);
                        }
                    } else {
                        let stage = conn.stage;
                        self.fail(
                            key,
                            ErrorKind::Read,
                            format!("the server closed the connection at stage {stage:?}"),
                        );
                    }
                    return;
                }
                Chunk::Failed(e) => {
                    self.fail(key, ErrorKind::Read, e.to_string());
                    return;
                }
            };
            if conn.input.len() + n > ANSWER_BYTES_MAX {
                self.fail(key, ErrorKind::Protocol, "answer too long".to_string());
                return;
            }
            conn.input.extend_from_slice(&self.io.read_buf[..n]);
            if !self.advance(key) || emptied {
                return;
            }
        }
    }

    /// Checks what arrived against the stage; false when the connection is gone.
    fn advance(&mut self, key: usize) -> bool {
        let conn = &mut self.conns[key];
        let name = churn_name(conn.protocol, conn.index);
        match (conn.protocol.info().sign_in.answer)(&name, conn.stage, &conn.input) {
            Step::Wait => return true,
            Step::Unexpected => return self.unexpected(key),
            Step::Then(stage) => {
                conn.stage = stage;
                return true;
            }
            Step::Reply { read, out, then } => {
                conn.input.drain(..read);
                conn.out = out;
                conn.written = 0;
                conn.stage = then;
                return self.flush(key);
            }
            Step::Stray => {
                let why = format!("bytes at stage {:?}", conn.stage);
                self.fail(key, ErrorKind::Protocol, why);
                return false;
            }
            Step::SignedIn => {}
        }
        self.signed_in_now(key);
        self.leave(key);
        false
    }

    fn unexpected(&mut self, key: usize) -> bool {
        let conn = &self.conns[key];
        let got = String::from_utf8_lossy(&conn.input[..conn.input.len().min(80)]).into_owned();
        let stage = conn.stage;
        self.fail(
            key,
            ErrorKind::Protocol,
            format!("unexpected bytes at stage {stage:?}: {got:?}"),
        );
        false
    }

    fn signed_in_now(&mut self, key: usize) {
        let now_us = self.io.clock.now_us();
        let conn = &self.conns[key];
        self.latency
            .record(now_us.saturating_sub(conn.intended_us).max(1));
        self.signed_in += 1;
    }

    /// Leaves the way the connection was dealt.
    fn leave(&mut self, key: usize) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        let _ = self.io.poll.registry().deregister(&mut conn.stream);
        match conn.ending {
            Ending::Clean | Ending::BeforeSignIn => {
                if conn.ending == Ending::Clean {
                    self.endings.clean += 1;
                }
            }
            Ending::Reset => {
                self.endings.reset += 1;
                // SO_LINGER 0: close sends a reset instead of a FIN.
                let _ = socket2::SockRef::from(conn.stream.tcp()).set_linger(Some(Duration::ZERO));
            }
            Ending::MidFrame => {
                self.endings.mid_frame += 1;
                // Half of a valid frame, then the close: the server holds a partial frame
                // when the connection goes.
                let frame = partial_frame(conn.protocol, conn.index);
                let mut written = 0;
                let _ = write_pending(&mut conn.stream, &frame, &mut written);
            }
        }
        drop(conn);
    }

    fn progress_line(&self, now_us: u64) {
        let elapsed_s = (now_us - self.start_us) as f64 / 1e6;
        eprint!(
            "\rchurn {:>5.1}s: started {} of {}, open {}, signed in {}, errors {}   ",
            elapsed_s,
            self.next_index,
            self.cfg.connects,
            self.conns.len(),
            self.signed_in,
            self.errors.total()
        );
    }

    fn report(self) -> ChurnReport {
        let elapsed_s = (self.io.clock.now_us() - self.start_us) as f64 / 1e6;
        ChurnReport {
            connects_planned: self.cfg.connects,
            connects_started: self.next_index,
            signed_in: self.signed_in,
            endings: self.endings,
            elapsed_s,
            connects_per_s_target: self.cfg.rate_per_s,
            connects_per_s_achieved: if elapsed_s > 0.0 {
                self.next_index as f64 / elapsed_s
            } else {
                0.0
            },
            sign_in_latency: self.latency.summary(),
            errors: self.errors,
            started_by_protocol: self
                .cfg
                .targets
                .iter()
                .zip(self.started_by_protocol)
                .map(|((p, _), n)| (*p, n))
                .collect(),
            tls_handshakes: crate::tls::enabled().then_some(self.tls_handshakes),
            tls_handshakes_per_s: crate::tls::enabled()
                .then(|| per_second(self.tls_handshakes, elapsed_s)),
        }
    }
}

/// Where connection `index` goes with `hosts` (`--host`'s list, empty for one host): the
/// protocols take turns (connection `index` is protocol `index mod protocols`'s), and each
/// protocol's own connections take turns over the hosts. Numbering the hosts by `index` itself
/// would send a protocol to one host only whenever the two counts share a factor (four
/// protocols over two hosts: ROOM and MATOU to the first, BIN24 and CCM to the second).
fn host_of_connection(
    hosts: &[IpAddr],
    target: SocketAddr,
    index: u64,
    protocols: usize,
) -> SocketAddr {
    let of_protocol = index / protocols.max(1) as u64;
    crate::connect::host_of(hosts, target, of_protocol as usize)
}

pub enum Check {
    Wait,
    Bad,
    Done,
}

/// Whether `input` starts with `expected`: not yet (a prefix of it), no, or yes.
pub fn check_prefix(input: &[u8], expected: &[u8]) -> Check {
    let n = input.len().min(expected.len());
    if input[..n] != expected[..n] {
        Check::Bad
    } else if n < expected.len() {
        Check::Wait
    } else {
        Check::Done
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A name unique to the connection that every protocol accepts: BIN24 allows 8 bytes, MATOU
/// only letters and digits.
fn churn_name(protocol: Protocol, index: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = [b'0'; 7];
    let mut rest = index;
    for digit in digits.iter_mut().rev() {
        *digit = DIGITS[(rest % 36) as usize];
        rest /= 36;
    }
    let prefix = protocol.info().churn_prefix;
    format!("{prefix}{}", String::from_utf8_lossy(&digits))
}

/// The first half of a frame the protocol would accept after sign-in.
fn partial_frame(protocol: Protocol, index: u64) -> Vec<u8> {
    let mut whole = (protocol.info().sign_in.frame)(&churn_name(protocol, index));
    whole.truncate(whole.len() / 2);
    whole
}

/// How one protocol's client signs in, for churn: each protocol's folder has one, which the
/// registry lists.
pub struct SignIn {
    /// What the client writes once connected (nothing if the server speaks first), and the
    /// stage it then waits in.
    pub hello: fn(name: &str) -> (Vec<u8>, Stage),
    /// What the server's bytes so far mean at a stage.
    pub answer: fn(name: &str, stage: Stage, input: &[u8]) -> Step,
    /// A whole frame the protocol would accept after sign-in (churn sends half of it).
    pub frame: fn(name: &str) -> Vec<u8>,
}

/// What a protocol makes of the server's bytes so far.
pub enum Step {
    /// Not enough yet.
    Wait,
    /// Not what the server should have said.
    Unexpected,
    /// The sign-in is proven.
    SignedIn,
    /// Consume `read` bytes, write `out` and wait in stage `then`.
    Reply {
        read: usize,
        out: Vec<u8>,
        then: Stage,
    },
    /// Wait in stage `then` for the rest (OCM: the server's close).
    Then(Stage),
    /// The protocol expects no bytes at this stage.
    Stray,
}

impl Check {
    /// `Wait` and `Bad` as a [`Step`], `Done` as `done`.
    pub fn step(self, done: impl FnOnce() -> Step) -> Step {
        match self {
            Check::Wait => Step::Wait,
            Check::Bad => Step::Unexpected,
            Check::Done => done(),
        }
    }
}

/// `n` over `elapsed_s`, 0 for a run too short to tell.
fn per_second(n: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 {
        n as f64 / elapsed_s
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_spreads_its_connections_over_every_host() {
        let hosts: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        let target: SocketAddr = "127.0.0.1:5454".parse().unwrap();
        for protocols in 1..=4_usize {
            for slot in 0..protocols {
                let per_host: Vec<usize> = hosts
                    .iter()
                    .map(|host| {
                        (0..40_u64)
                            .filter(|index| *index as usize % protocols == slot)
                            .filter(|index| {
                                host_of_connection(&hosts, target, *index, protocols).ip() == *host
                            })
                            .count()
                    })
                    .collect();
                let own = per_host.iter().sum::<usize>();
                assert_eq!(
                    per_host,
                    [own - own / 2, own / 2],
                    "{protocols} protocols, protocol {slot}"
                );
            }
        }
        // One host: the scenario's own target, at its port.
        assert_eq!(host_of_connection(&[], target, 7, 4), target);
        assert_eq!(host_of_connection(&hosts, target, 5, 4).port(), 5454);
    }

    #[test]
    fn names_are_unique_short_and_alphanumeric() {
        let mut seen = std::collections::HashSet::new();
        for index in (0..100_000u64).chain([36u64.pow(7) - 1]) {
            let name = churn_name(Protocol::Matou, index);
            assert_eq!(name.len(), 8, "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
            assert!(seen.insert(name));
        }
    }

    #[test]
    fn prefix_check_waits_refuses_and_accepts() {
        assert!(matches!(check_prefix(b"ali", b"alias?"), Check::Wait));
        assert!(matches!(check_prefix(b"alx", b"alias?"), Check::Bad));
        assert!(matches!(
            check_prefix(b"alias?more", b"alias?"),
            Check::Done
        ));
        assert!(matches!(check_prefix(b"", b"alias?"), Check::Wait));
    }

    #[test]
    fn partial_frames_are_strictly_shorter_than_a_frame() {
        for protocol in [
            Protocol::Room,
            Protocol::Bin24,
            Protocol::Ccm,
            Protocol::Matou,
            Protocol::Ocm,
        ] {
            let partial = partial_frame(protocol, 7);
            assert!(!partial.is_empty(), "{protocol:?}");
        }
        // A BIN24 half frame announces more than it carries.
        let half = partial_frame(Protocol::Bin24, 7);
        assert!(usize::from(u16::from_le_bytes([half[0], half[1]])) > half.len());
    }
}
