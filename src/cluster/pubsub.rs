//! The reactor's two Redis links (docs/CLUSTER.md, "The reactor's Redis links"): one that
//! PUBLISHes this node's events, one subscribed to the lobby's channel and this node's own.
//! The reactor itself writes the one and reads the other, on non-blocking sockets in its own
//! poll: no thread hand-off on the way of an event (each cost tens of microseconds of
//! scheduling on a busy machine).
//!
//! [`PubLink`] and [`SubLink`] are sans-io: what to write, what a reply means, when a
//! deadline passed, when to reconnect, all in milliseconds given by the caller (unit tests
//! fabricate them). [`Links`] drives them over mio `TcpStream`s registered in the reactor's
//! poll, with the reactor's clock.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resp::{self, Value};
use super::{link_down, link_up, ClusterStats};

pub(super) const RECONNECT_DELAY_MIN_MS: u64 = 50;
pub(super) const RECONNECT_DELAY_MAX_MS: u64 = 2000;
/// Bytes taken from a socket per read: the subscription's buffer holds at most one whole
/// message and one read more.
const READ_BYTES: usize = 64 * 1024;

/// Why a link is taken for lost (logged).
#[derive(Debug, PartialEq, Eq)]
pub struct Lost(pub String);

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// None; the next attempt at `retry_at_ms`.
    Down {
        retry_at_ms: u64,
    },
    /// A non-blocking connect under way, given up at `deadline_ms`.
    Connecting {
        deadline_ms: u64,
    },
    Up,
}

/// A connection's phase and its reconnect delay (50 ms doubling to 2 s after each failure,
/// back to 50 ms once Redis answered on a new connection).
#[derive(Debug)]
struct Connection {
    phase: Phase,
    delay_ms: u64,
    timeout_ms: u64,
}

impl Connection {
    fn up(timeout_ms: u64) -> Connection {
        Connection {
            phase: Phase::Up,
            delay_ms: RECONNECT_DELAY_MIN_MS,
            timeout_ms: timeout_ms.max(1),
        }
    }

    fn connect_due(&self, now_ms: u64) -> bool {
        matches!(self.phase, Phase::Down { retry_at_ms } if now_ms >= retry_at_ms)
    }

    fn connecting(&mut self, now_ms: u64) {
        self.phase = Phase::Connecting {
            deadline_ms: now_ms + self.timeout_ms,
        };
    }

    fn failed(&mut self, now_ms: u64) {
        self.phase = Phase::Down {
            retry_at_ms: now_ms + self.delay_ms,
        };
        self.delay_ms = (self.delay_ms * 2).min(RECONNECT_DELAY_MAX_MS);
    }

    fn answered(&mut self) {
        self.delay_ms = RECONNECT_DELAY_MIN_MS;
    }

    fn check(&self, now_ms: u64) -> Result<(), Lost> {
        match self.phase {
            Phase::Connecting { deadline_ms } if now_ms >= deadline_ms => {
                Err(Lost(format!("no connection within {} ms", self.timeout_ms)))
            }
            _ => Ok(()),
        }
    }

    fn deadline_ms(&self) -> Option<u64> {
        match self.phase {
            Phase::Down { retry_at_ms } => Some(retry_at_ms),
            Phase::Connecting { deadline_ms } => Some(deadline_ms),
            Phase::Up => None,
        }
    }
}

/// Bytes waiting for a socket, and since when they stopped moving: a Redis that takes no
/// bytes for a command timeout (frozen, its buffers full) is a lost link.
#[derive(Debug, Default)]
struct Output {
    bytes: BytesMut,
    stalled_since_ms: Option<u64>,
}

impl Output {
    fn wrote(&mut self, len: usize) {
        self.bytes.advance(len);
        if len > 0 {
            self.stalled_since_ms = None;
        }
    }

    /// A write pass ended (the socket took what it would).
    fn flushed(&mut self, now_ms: u64) {
        if self.bytes.is_empty() {
            self.stalled_since_ms = None;
        } else {
            self.stalled_since_ms.get_or_insert(now_ms);
        }
    }

    fn deadline_ms(&self, timeout_ms: u64) -> Option<u64> {
        self.stalled_since_ms.map(|since| since + timeout_ms)
    }

    fn check(&self, now_ms: u64, timeout_ms: u64) -> Result<(), Lost> {
        match self.deadline_ms(timeout_ms) {
            Some(deadline) if now_ms >= deadline => {
                Err(Lost(format!("Redis took no bytes for {timeout_ms} ms")))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Auth,
    Ping,
    Publish,
}

/// What a reply on the publishing link meant.
#[derive(Debug, PartialEq, Eq)]
pub enum PubReply {
    Published,
    /// Redis refused a PUBLISH (its error text): the event is dropped.
    Refused(Bytes),
    /// The PING sent on a new connection is answered: Redis is there.
    Alive,
    /// AUTH accepted.
    Authenticated,
}

/// The publishing link, sans-io. Commands are appended to one output buffer, bounded in
/// bytes; each command written whole waits for its one reply, in order, within the command
/// timeout. A new connection starts with a PING: its answer is the link's return.
#[derive(Debug)]
pub struct PubLink {
    conn: Connection,
    out: Output,
    bytes_max: usize,
    /// AUTH for each new connection, when the URL has a password.
    auth: Option<Bytes>,
    /// Length and kind of each command in `out`, in order; the first may be partly written.
    queued: VecDeque<(usize, Command)>,
    front_written: usize,
    /// When each command written whole was written, and its kind: one reply each, in order.
    awaiting: VecDeque<(u64, Command)>,
    /// Since when the link is down (lost, and Redis has not answered a new connection's PING).
    down_since_ms: Option<u64>,
    /// How long events wait for a link that is down ([`PubLink::with_stale_ms`]).
    stale_ms: u64,
    /// The link has been down longer than `stale_ms`: what waited was dropped, and new events
    /// are dropped at once until it is back.
    stale: bool,
}

impl PubLink {
    /// A link connected (at start: the connection is made before the reactor runs).
    pub fn new(timeout_ms: u64, bytes_max: usize, auth: Option<Bytes>) -> PubLink {
        PubLink {
            conn: Connection::up(timeout_ms),
            out: Output::default(),
            bytes_max,
            auth,
            queued: VecDeque::new(),
            front_written: 0,
            awaiting: VecDeque::new(),
            down_since_ms: None,
            stale_ms: u64::MAX,
            stale: false,
        }
    }

    /// Events wait at most `stale_ms` of an outage for the link to come back (default: no
    /// limit but the byte bound). A short outage then loses nothing; past it the other nodes
    /// may have taken this node for dead, and a BIN24 frame's custody may have stored it, so
    /// what waited would come late or twice: it is dropped (counted), and the rosters
    /// exchanged when the link is back bring the presence it carried.
    pub fn with_stale_ms(mut self, stale_ms: u64) -> PubLink {
        self.stale_ms = stale_ms;
        self
    }

    /// Drop what waits once the link has been down for `stale_ms`; the events dropped.
    pub fn expire(&mut self, now_ms: u64) -> u64 {
        let Some(since_ms) = self.down_since_ms else {
            return 0;
        };
        if self.conn.phase == Phase::Up || now_ms < since_ms.saturating_add(self.stale_ms) {
            return 0;
        }
        self.stale = true;
        // Down: nothing is written in part, and a new connection's setup is not queued yet.
        let dropped = self
            .queued
            .drain(..)
            .filter(|&(_, kind)| kind == Command::Publish)
            .count() as u64;
        self.out.bytes.clear();
        self.front_written = 0;
        dropped
    }

    pub fn phase(&self) -> Phase {
        self.conn.phase
    }

    /// Queue `PUBLISH channel payload`, up or down; false (nothing queued) when that would
    /// pass the byte bound.
    pub fn publish(&mut self, channel: &[u8], payload: &[u8]) -> bool {
        if self.stale {
            return false;
        }
        let args: [&[u8]; 3] = [b"PUBLISH", channel, payload];
        let len = resp::command_len(&args);
        if self.out.bytes.len().saturating_add(len) > self.bytes_max {
            return false;
        }
        resp::encode_command(&mut self.out.bytes, &args);
        self.queued.push_back((len, Command::Publish));
        true
    }

    /// Bytes queued and not written yet.
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes.len()
    }

    /// What to write now (nothing unless the link is up).
    pub fn output(&self) -> &[u8] {
        match self.conn.phase {
            Phase::Up => &self.out.bytes,
            _ => &[],
        }
    }

    /// `len` bytes of [`PubLink::output`] were written at `now_ms`.
    pub fn wrote(&mut self, len: usize, now_ms: u64) {
        self.out.wrote(len);
        self.front_written += len;
        while let Some(&(command_len, kind)) = self.queued.front() {
            if self.front_written < command_len {
                break;
            }
            self.front_written -= command_len;
            self.queued.pop_front();
            self.awaiting.push_back((now_ms, kind));
        }
    }

    pub fn flushed(&mut self, now_ms: u64) {
        self.out.flushed(now_ms);
    }

    /// Commands written and not answered yet.
    pub fn awaiting(&self) -> usize {
        self.awaiting.len()
    }

    /// The reply to the oldest command waiting for one.
    pub fn on_reply(&mut self, value: Value) -> Result<PubReply, Lost> {
        let Some((_, kind)) = self.awaiting.pop_front() else {
            return Err(Lost(format!(
                "a reply nothing asked for ({})",
                describe(&value)
            )));
        };
        match (kind, value) {
            (Command::Publish, Value::Integer(_)) => Ok(PubReply::Published),
            (Command::Publish, Value::Error(text)) => Ok(PubReply::Refused(text)),
            (Command::Ping, Value::Simple(_)) => {
                self.conn.answered();
                self.down_since_ms = None;
                self.stale = false;
                Ok(PubReply::Alive)
            }
            (Command::Auth, Value::Simple(_)) => Ok(PubReply::Authenticated),
            (Command::Ping | Command::Auth, Value::Error(text)) => Err(Lost(format!(
                "Redis refused the connection's setup: {}",
                String::from_utf8_lossy(&text)
            ))),
            (_, other) => Err(Lost(format!("an unexpected reply ({})", describe(&other)))),
        }
    }

    /// A deadline passed: a connect, the oldest reply, or output that does not move.
    pub fn check(&self, now_ms: u64) -> Result<(), Lost> {
        self.conn.check(now_ms)?;
        if self.conn.phase != Phase::Up {
            return Ok(());
        }
        if let Some(&(sent_ms, _)) = self.awaiting.front() {
            if now_ms >= sent_ms + self.conn.timeout_ms {
                return Err(Lost(format!("no reply within {} ms", self.conn.timeout_ms)));
            }
        }
        self.out.check(now_ms, self.conn.timeout_ms)
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.conn.phase != Phase::Up {
            let expiry = self
                .down_since_ms
                .filter(|_| !self.stale && !self.queued.is_empty())
                .map(|since_ms| since_ms.saturating_add(self.stale_ms));
            return self.conn.deadline_ms().into_iter().chain(expiry).min();
        }
        let reply = self
            .awaiting
            .front()
            .map(|&(sent_ms, _)| sent_ms + self.conn.timeout_ms);
        reply
            .into_iter()
            .chain(self.out.deadline_ms(self.conn.timeout_ms))
            .min()
    }

    pub fn connect_due(&self, now_ms: u64) -> bool {
        self.conn.connect_due(now_ms)
    }

    pub fn connecting(&mut self, now_ms: u64) {
        self.conn.connecting(now_ms);
    }

    /// A new connection: AUTH if need be and a PING go first, then what waited.
    pub fn connected(&mut self) {
        let mut first = BytesMut::new();
        let mut setup = Vec::new();
        if let Some(auth) = &self.auth {
            first.extend_from_slice(auth);
            setup.push((auth.len(), Command::Auth));
        }
        let before = first.len();
        resp::encode_command(&mut first, &[b"PING"]);
        setup.push((first.len() - before, Command::Ping));
        first.extend_from_slice(&self.out.bytes);
        self.out = Output {
            bytes: first,
            stalled_since_ms: None,
        };
        for command in setup.into_iter().rev() {
            self.queued.push_front(command);
        }
        self.front_written = 0;
        self.conn.phase = Phase::Up;
    }

    /// The connection is lost (or could not be made): what was written and not answered is
    /// lost with it, and so is a command written in part; what waits stays (within the
    /// bound) for the next connection. Returns the events lost.
    pub fn lost(&mut self, now_ms: u64) -> u64 {
        let mut dropped = self
            .awaiting
            .drain(..)
            .filter(|&(_, kind)| kind == Command::Publish)
            .count() as u64;
        if self.front_written > 0 {
            if let Some((len, kind)) = self.queued.pop_front() {
                self.out.bytes.advance(len - self.front_written);
                dropped += u64::from(kind == Command::Publish);
            }
            self.front_written = 0;
        }
        // The setup of a connection that never wrote it: the next one has its own.
        while let Some(&(len, Command::Ping | Command::Auth)) = self.queued.front() {
            self.out.bytes.advance(len);
            self.queued.pop_front();
        }
        self.out.stalled_since_ms = None;
        self.conn.failed(now_ms);
        self.down_since_ms.get_or_insert(now_ms);
        dropped
    }
}

/// What the subscription brought.
#[derive(Debug, PartialEq, Eq)]
pub enum SubPush {
    /// A message on one of the channels: its payload.
    Message(Bytes),
    /// Every channel's subscription is confirmed (at start, or again after a lost link).
    Subscribed,
    /// Nothing for the reactor (a PING's answer, AUTH's).
    Nothing,
}

/// The subscription link, sans-io: SUBSCRIBE to every channel on one connection (Redis
/// writes one publisher's messages in the order it published them, whichever channel each
/// went to), confirmed within the command timeout; a quiet subscription PINGs every
/// `ping_every_ms`, and a PING not answered within the command timeout (counted from the
/// last reply read, when replies still come) is a lost link: a frozen Redis sends only
/// silence.
#[derive(Debug)]
pub struct SubLink {
    conn: Connection,
    out: Output,
    /// SUBSCRIBE with every channel (after AUTH, when the URL has a password).
    hello: Bytes,
    channels: usize,
    /// Confirmations still to come for this connection's SUBSCRIBE, and by when.
    confirming: Option<(usize, u64)>,
    ping_every_ms: u64,
    ping_sent_ms: Option<u64>,
    /// When the last reply was read.
    heard_ms: u64,
}

impl SubLink {
    /// A link whose SUBSCRIBE is written by [`SubLink::connected`], at start too.
    pub fn new(
        timeout_ms: u64,
        ping_every_ms: u64,
        channels: &[&[u8]],
        auth: Option<Bytes>,
    ) -> SubLink {
        let mut hello = BytesMut::new();
        if let Some(auth) = auth {
            hello.extend_from_slice(&auth);
        }
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend_from_slice(channels);
        resp::encode_command(&mut hello, &args);
        let mut link = SubLink {
            conn: Connection::up(timeout_ms),
            out: Output::default(),
            hello: hello.freeze(),
            channels: channels.len(),
            confirming: None,
            ping_every_ms: ping_every_ms.max(1),
            ping_sent_ms: None,
            heard_ms: 0,
        };
        link.conn.phase = Phase::Down { retry_at_ms: 0 };
        link
    }

    pub fn phase(&self) -> Phase {
        self.conn.phase
    }

    pub fn output(&self) -> &[u8] {
        match self.conn.phase {
            Phase::Up => &self.out.bytes,
            _ => &[],
        }
    }

    pub fn wrote(&mut self, len: usize) {
        self.out.wrote(len);
    }

    pub fn flushed(&mut self, now_ms: u64) {
        self.out.flushed(now_ms);
    }

    pub fn connect_due(&self, now_ms: u64) -> bool {
        self.conn.connect_due(now_ms)
    }

    pub fn connecting(&mut self, now_ms: u64) {
        self.conn.connecting(now_ms);
    }

    /// A new connection: subscribe.
    pub fn connected(&mut self, now_ms: u64) {
        self.out = Output::default();
        self.out.bytes.extend_from_slice(&self.hello);
        self.confirming = Some((self.channels, now_ms + self.conn.timeout_ms));
        self.ping_sent_ms = None;
        self.heard_ms = now_ms;
        self.conn.phase = Phase::Up;
    }

    pub fn on_reply(&mut self, value: Value, now_ms: u64) -> Result<SubPush, Lost> {
        self.heard_ms = now_ms;
        let items = match value {
            Value::Array(items) => items,
            Value::Error(text) => {
                return Err(Lost(format!(
                    "Redis refused: {}",
                    String::from_utf8_lossy(&text)
                )))
            }
            // AUTH's OK, or a PONG outside subscribed mode.
            Value::Simple(text) => {
                if text.eq_ignore_ascii_case(b"PONG") {
                    self.ping_sent_ms = None;
                }
                return Ok(SubPush::Nothing);
            }
            other => return Err(Lost(format!("an unexpected reply ({})", describe(&other)))),
        };
        let kind = items.first().and_then(Value::as_bytes).unwrap_or_default();
        if kind.eq_ignore_ascii_case(b"message") {
            let mut items = items;
            return match (items.len(), items.pop()) {
                (3, Some(Value::Bulk(payload))) => Ok(SubPush::Message(payload)),
                _ => Err(Lost("a malformed message push".into())),
            };
        }
        if kind.eq_ignore_ascii_case(b"subscribe") {
            if let Some((left, deadline_ms)) = self.confirming {
                if left <= 1 {
                    self.confirming = None;
                    self.conn.answered();
                    return Ok(SubPush::Subscribed);
                }
                self.confirming = Some((left - 1, deadline_ms));
            }
            return Ok(SubPush::Nothing);
        }
        if kind.eq_ignore_ascii_case(b"pong") {
            self.ping_sent_ms = None;
        }
        // Anything else (an unsubscribe Redis would send on its own) changes nothing.
        Ok(SubPush::Nothing)
    }

    /// A deadline passed (a connect, the confirmations, a PING's answer, output that does not
    /// move), or a PING is due (queued).
    pub fn check(&mut self, now_ms: u64) -> Result<(), Lost> {
        self.conn.check(now_ms)?;
        if self.conn.phase != Phase::Up {
            return Ok(());
        }
        let timeout_ms = self.conn.timeout_ms;
        if let Some((_, deadline_ms)) = self.confirming {
            if now_ms >= deadline_ms {
                return Err(Lost(format!(
                    "no answer to SUBSCRIBE within {timeout_ms} ms"
                )));
            }
        }
        match self.ping_sent_ms {
            Some(sent_ms) if now_ms >= sent_ms.max(self.heard_ms) + timeout_ms => {
                return Err(Lost(format!(
                    "no answer to PING within {timeout_ms} ms (timed out); last heard from Redis {} ms ago",
                    now_ms.saturating_sub(self.heard_ms)
                )));
            }
            Some(_) => {}
            None if self.confirming.is_none() && now_ms >= self.heard_ms + self.ping_every_ms => {
                resp::encode_command(&mut self.out.bytes, &[b"PING"]);
                self.ping_sent_ms = Some(now_ms);
            }
            None => {}
        }
        self.out.check(now_ms, timeout_ms)
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.conn.phase != Phase::Up {
            return self.conn.deadline_ms();
        }
        let timeout_ms = self.conn.timeout_ms;
        let confirm = self.confirming.map(|(_, deadline_ms)| deadline_ms);
        let ping = match self.ping_sent_ms {
            Some(sent_ms) => Some(sent_ms.max(self.heard_ms) + timeout_ms),
            None if self.confirming.is_none() => Some(self.heard_ms + self.ping_every_ms),
            None => None,
        };
        [confirm, ping, self.out.deadline_ms(timeout_ms)]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn lost(&mut self, now_ms: u64) {
        self.out = Output::default();
        self.confirming = None;
        self.ping_sent_ms = None;
        self.conn.failed(now_ms);
    }
}

/// A short description of a reply for a log line (never a whole payload).
fn describe(value: &Value) -> String {
    match value {
        Value::Simple(text) | Value::Error(text) => {
            String::from_utf8_lossy(&text[..text.len().min(64)]).into_owned()
        }
        Value::Integer(value) => format!("integer {value}"),
        Value::Bulk(bytes) => format!("a bulk string of {} bytes", bytes.len()),
        Value::Null => "null".into(),
        Value::Array(items) => format!("an array of {}", items.len()),
    }
}

/// `AUTH [username] password` for a URL with a password.
pub(super) fn auth_command(info: &redis::RedisConnectionInfo) -> Option<Bytes> {
    let password = info.password.as_deref()?;
    let mut args: Vec<&[u8]> = vec![b"AUTH"];
    if let Some(username) = info.username.as_deref() {
        args.push(username.as_bytes());
    }
    args.push(password.as_bytes());
    let mut out = BytesMut::new();
    resp::encode_command(&mut out, &args);
    Some(out.freeze())
}

/// One step of either link's connect, on its `socket`: opens a new connection once a
/// reconnect is due, and looks whether the connect under way has completed. True when it
/// has: the caller sets its link up (each does so its own way).
fn connect_step(
    conn: &mut Connection,
    socket: &mut Socket,
    readable: &mut bool,
    now_ms: u64,
) -> Result<bool, Lost> {
    if conn.connect_due(now_ms) {
        socket
            .open()
            .map_err(|err| Lost(format!("connect: {err}")))?;
        *readable = true;
        conn.connecting(now_ms);
    }
    match conn.phase {
        Phase::Connecting { .. } => socket
            .connect_done()
            .map_err(|err| Lost(format!("connect: {err}"))),
        _ => Ok(false),
    }
}

/// One socket to Redis, non-blocking, in the reactor's poll (edge-triggered: reads and
/// writes go on until `WouldBlock`, or the next event never comes).
pub(super) struct Socket {
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    stream: Option<TcpStream>,
    registry: Registry,
    token: Token,
    /// Bytes read and not parsed yet.
    pub(super) input: BytesMut,
}

impl Socket {
    /// A connection made before the reactor runs (blocking, then switched to non-blocking).
    pub(super) fn from_std(
        stream: std::net::TcpStream,
        addrs: Vec<SocketAddr>,
        registry: Registry,
        token: Token,
        input: BytesMut,
    ) -> io::Result<Socket> {
        stream.set_nonblocking(true)?;
        let mut socket = Socket {
            addrs,
            next_addr: 0,
            stream: None,
            registry,
            token,
            input,
        };
        socket.register(TcpStream::from_std(stream))?;
        Ok(socket)
    }

    fn register(&mut self, mut stream: TcpStream) -> io::Result<()> {
        self.registry.register(
            &mut stream,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.stream = Some(stream);
        Ok(())
    }

    fn set_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.addrs = addrs;
        self.next_addr = 0;
    }

    /// Start a non-blocking connect (to each address of the URL in turn, one per attempt).
    fn open(&mut self) -> io::Result<()> {
        self.close();
        let addr = *self
            .addrs
            .get(self.next_addr % self.addrs.len().max(1))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        self.next_addr = self.next_addr.wrapping_add(1);
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        self.register(stream)
    }

    /// Whether the connect under way completed; an error if it failed.
    fn connect_done(&mut self) -> io::Result<bool> {
        let Some(stream) = self.stream.as_ref() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no socket"));
        };
        if let Some(err) = stream.take_error()? {
            return Err(err);
        }
        match stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn close(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = self.registry.deregister(&mut stream);
        }
        self.input.clear();
    }

    /// Write as much of `data` as the socket takes.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(0);
        };
        let mut written = 0;
        while written < data.len() {
            match stream.write(&data[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(len) => written += len,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
        }
        Ok(written)
    }

    /// One read onto `input`: whether anything came (false: nothing now).
    fn read(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        loop {
            match stream.read(scratch) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "Redis closed the connection",
                    ))
                }
                Ok(len) => {
                    self.input.extend_from_slice(&scratch[..len]);
                    return Ok(true);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
    }
}

/// The two links over their sockets, with the reactor's clock (ms).
pub(super) struct Links {
    pub(super) publisher: PubLink,
    pub_socket: Socket,
    pub(super) subscriber: SubLink,
    sub_socket: Socket,
    scratch: Box<[u8]>,
    /// Since when each link is down (logged and counted once).
    pub_down_since: Option<Instant>,
    sub_down_since: Option<Instant>,
    /// Whether each socket may have bytes to read: set by its readiness events (and when it
    /// is new), cleared when a read finds nothing. Edge-triggered: a socket not read to
    /// `WouldBlock` gets no new event for what it holds.
    pub_readable: bool,
    sub_readable: bool,
}

/// What a turn's work on the links brought the reactor's side.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Turn {
    /// The publishing link is back after it was lost: this node's events published
    /// meanwhile were dropped.
    pub(super) publisher_back: bool,
}

impl Links {
    pub(super) fn new(
        publisher: PubLink,
        pub_socket: Socket,
        subscriber: SubLink,
        sub_socket: Socket,
    ) -> Links {
        Links {
            publisher,
            pub_socket,
            subscriber,
            sub_socket,
            scratch: vec![0; READ_BYTES].into_boxed_slice(),
            pub_down_since: None,
            sub_down_since: None,
            pub_readable: true,
            sub_readable: true,
        }
    }

    /// Redis's addresses from now on (its host name moved): each link's next connect tries
    /// them; a link that is up stays on the connection it has.
    pub(super) fn set_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.pub_socket.set_addrs(addrs.clone());
        self.sub_socket.set_addrs(addrs);
    }

    /// A readiness event on one of the sockets (which one is not told: a read that finds
    /// nothing costs one call).
    pub(super) fn on_event(&mut self) {
        self.pub_readable = true;
        self.sub_readable = true;
    }

    /// The next push of the subscription: parsed from what was read, and read only when no
    /// whole reply is there (the buffer holds one message and one read at most). `None` once
    /// the socket has nothing more (its next event wakes the reactor) or the link is down.
    pub(super) fn next_push(&mut self, now_ms: u64, stats: &ClusterStats) -> Option<SubPush> {
        while self.subscriber.phase() == Phase::Up {
            let lost = match resp::parse(&mut self.sub_socket.input) {
                Ok(Some(value)) => match self.subscriber.on_reply(value, now_ms) {
                    Ok(SubPush::Nothing) => continue,
                    Ok(SubPush::Subscribed) => {
                        if let Some(since) = self.sub_down_since.take() {
                            link_up(stats, "subscriber", since);
                        }
                        return Some(SubPush::Subscribed);
                    }
                    Ok(push) => return Some(push),
                    Err(lost) => lost,
                },
                Ok(None) if !self.sub_readable => return None,
                Ok(None) => match self.sub_socket.read(&mut self.scratch) {
                    Ok(true) => continue,
                    Ok(false) => {
                        self.sub_readable = false;
                        return None;
                    }
                    Err(err) => Lost(err.to_string()),
                },
                Err(err) => Lost(err.to_string()),
            };
            self.sub_lost(lost, now_ms, stats);
        }
        None
    }

    fn sub_lost(&mut self, lost: Lost, now_ms: u64, stats: &ClusterStats) {
        self.sub_socket.close();
        self.subscriber.lost(now_ms);
        if self.sub_down_since.is_none() {
            self.sub_down_since = Some(Instant::now());
            link_down(stats, "subscriber", &lost.0);
        } else {
            debug!("cluster: subscriber reconnect failed: {}", lost.0);
        }
    }

    fn pub_lost(&mut self, lost: Lost, now_ms: u64, stats: &ClusterStats) {
        self.pub_socket.close();
        let dropped = self.publisher.lost(now_ms);
        stats
            .publish_dropped
            .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        if self.pub_down_since.is_none() {
            self.pub_down_since = Some(Instant::now());
            link_down(stats, "publisher", &lost.0);
        } else {
            debug!("cluster: publisher reconnect failed: {}", lost.0);
        }
    }

    /// The end of a reactor turn: connects under way, the publishing link's replies,
    /// deadlines, a PING due, and both outputs written.
    pub(super) fn turn(&mut self, now_ms: u64, stats: &ClusterStats) -> Turn {
        let mut turn = Turn::default();
        // The publishing link.
        if let Err(lost) = self.pub_connect(now_ms) {
            self.pub_lost(lost, now_ms, stats);
        }
        // Read when the socket signalled readiness: replies, or Redis closing an idle link
        // (found at once, and the link made again before the next event needs it).
        if self.publisher.phase() == Phase::Up && self.pub_readable {
            if let Err(lost) = self.pub_read(stats, &mut turn) {
                self.pub_lost(lost, now_ms, stats);
            }
        }
        if self.publisher.phase() == Phase::Up {
            let written = self.pub_socket.write(self.publisher.output());
            match written {
                Ok(len) => {
                    self.publisher.wrote(len, now_ms);
                    self.publisher.flushed(now_ms);
                }
                Err(err) => self.pub_lost(Lost(err.to_string()), now_ms, stats),
            }
        }
        if let Err(lost) = self.publisher.check(now_ms) {
            self.pub_lost(lost, now_ms, stats);
        }
        let expired = self.publisher.expire(now_ms);
        if expired > 0 {
            stats
                .publish_dropped
                .fetch_add(expired, std::sync::atomic::Ordering::Relaxed);
            warn!(
                "cluster: {expired} events waited {} ms for the publisher's link to Redis and were dropped; events are dropped until it is back",
                self.publisher.stale_ms
            );
        }
        // The subscription (read in `next_push`, within the reactor's budget per turn).
        if let Err(lost) = self.sub_connect(now_ms) {
            self.sub_lost(lost, now_ms, stats);
        }
        if let Err(lost) = self.subscriber.check(now_ms) {
            self.sub_lost(lost, now_ms, stats);
        }
        if self.subscriber.phase() == Phase::Up {
            match self.sub_socket.write(self.subscriber.output()) {
                Ok(len) => {
                    self.subscriber.wrote(len);
                    self.subscriber.flushed(now_ms);
                }
                Err(err) => self.sub_lost(Lost(err.to_string()), now_ms, stats),
            }
        }
        turn
    }

    fn pub_connect(&mut self, now_ms: u64) -> Result<(), Lost> {
        let conn = &mut self.publisher.conn;
        if connect_step(conn, &mut self.pub_socket, &mut self.pub_readable, now_ms)? {
            self.publisher.connected();
        }
        Ok(())
    }

    fn sub_connect(&mut self, now_ms: u64) -> Result<(), Lost> {
        let conn = &mut self.subscriber.conn;
        if connect_step(conn, &mut self.sub_socket, &mut self.sub_readable, now_ms)? {
            self.subscriber.connected(now_ms);
        }
        Ok(())
    }

    /// Every reply there is on the publishing link (they are small: read to the end).
    fn pub_read(&mut self, stats: &ClusterStats, turn: &mut Turn) -> Result<(), Lost> {
        use std::sync::atomic::Ordering::Relaxed;
        loop {
            while let Some(value) =
                resp::parse(&mut self.pub_socket.input).map_err(|err| Lost(err.to_string()))?
            {
                match self.publisher.on_reply(value)? {
                    PubReply::Published => {
                        stats.published.fetch_add(1, Relaxed);
                    }
                    PubReply::Refused(text) => {
                        debug!(
                            "cluster: Redis refused a PUBLISH: {}",
                            String::from_utf8_lossy(&text)
                        );
                        stats.publish_dropped.fetch_add(1, Relaxed);
                    }
                    PubReply::Alive => {
                        if let Some(since) = self.pub_down_since.take() {
                            link_up(stats, "publisher", since);
                            turn.publisher_back = true;
                        }
                    }
                    PubReply::Authenticated => {}
                }
            }
            if !self
                .pub_socket
                .read(&mut self.scratch)
                .map_err(|err| Lost(err.to_string()))?
            {
                self.pub_readable = false;
                return Ok(());
            }
        }
    }

    pub(super) fn next_deadline_ms(&self) -> Option<u64> {
        [
            self.publisher.next_deadline_ms(),
            self.subscriber.next_deadline_ms(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// At a clean stop: what waits for Redis is written, and answered, within `timeout`
    /// (the reactor is done; a short wait here is its last).
    pub(super) fn finish(&mut self, timeout: Duration, stats: &ClusterStats) {
        let started = Instant::now();
        let mut turn = Turn::default();
        while self.publisher.phase() == Phase::Up
            && (self.publisher.queued_bytes() > 0 || self.publisher.awaiting() > 0)
            && started.elapsed() < timeout
        {
            let written = self.pub_socket.write(self.publisher.output());
            match written {
                Ok(len) => self.publisher.wrote(len, 0),
                Err(_) => break,
            }
            self.pub_readable = true;
            if self.pub_read(stats, &mut turn).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.pub_socket.close();
        self.sub_socket.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT_MS: u64 = 100;

    fn integer() -> Value {
        Value::Integer(1)
    }

    /// Every byte queued written at `now_ms`.
    fn write_all(link: &mut PubLink, now_ms: u64) -> usize {
        let len = link.output().len();
        link.wrote(len, now_ms);
        link.flushed(now_ms);
        len
    }

    #[test]
    fn publishes_wait_for_one_reply_each_within_the_command_timeout() {
        let mut link = PubLink::new(TIMEOUT_MS, 1 << 20, None);
        assert!(link.publish(b"c", b"one"));
        assert!(link.publish(b"c", b"two"));
        assert_eq!(link.next_deadline_ms(), None, "nothing written yet");
        write_all(&mut link, 10);
        assert_eq!(link.awaiting(), 2);
        assert_eq!(link.next_deadline_ms(), Some(10 + TIMEOUT_MS));
        assert_eq!(link.on_reply(integer()), Ok(PubReply::Published));
        assert!(link.publish(b"c", b"three"));
        write_all(&mut link, 50);
        // The oldest waiting one sets the deadline.
        assert_eq!(link.next_deadline_ms(), Some(10 + TIMEOUT_MS));
        assert_eq!(link.check(10 + TIMEOUT_MS - 1), Ok(()));
        assert!(link.check(10 + TIMEOUT_MS).is_err(), "a stalled Redis");
        assert_eq!(link.on_reply(integer()), Ok(PubReply::Published));
        assert_eq!(link.next_deadline_ms(), Some(50 + TIMEOUT_MS));
        assert_eq!(link.check(10 + TIMEOUT_MS), Ok(()));
        // An error reply is one event refused; a reply to nothing is a broken stream.
        assert_eq!(
            link.on_reply(Value::Error(Bytes::from_static(b"ERR x"))),
            Ok(PubReply::Refused(Bytes::from_static(b"ERR x")))
        );
        assert!(link.on_reply(integer()).is_err());
    }

    #[test]
    fn replies_are_counted_across_split_reads_of_a_pipeline() {
        let mut link = PubLink::new(TIMEOUT_MS, 1 << 20, None);
        for _ in 0..5 {
            assert!(link.publish(b"c", b"x"));
        }
        write_all(&mut link, 0);
        let wire = b":1\r\n:2\r\n-ERR no\r\n:3\r\n:4\r\n";
        for split in 0..wire.len() {
            let mut link = PubLink::new(TIMEOUT_MS, 1 << 20, None);
            for _ in 0..5 {
                assert!(link.publish(b"c", b"x"));
            }
            write_all(&mut link, 0);
            let mut input = BytesMut::new();
            let mut replies = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                input.extend_from_slice(part);
                while let Some(value) = resp::parse(&mut input).unwrap() {
                    replies.push(link.on_reply(value).unwrap());
                }
            }
            let published = replies
                .iter()
                .filter(|reply| **reply == PubReply::Published)
                .count();
            assert_eq!((published, replies.len()), (4, 5), "split at {split}");
            assert_eq!(link.awaiting(), 0);
        }
    }

    #[test]
    fn only_commands_written_whole_wait_for_a_reply() {
        let mut link = PubLink::new(TIMEOUT_MS, 1 << 20, None);
        assert!(link.publish(b"c", b"one"));
        assert!(link.publish(b"c", b"two"));
        let first = resp::command_len(&[b"PUBLISH", b"c", b"one"]);
        link.wrote(first - 1, 0);
        assert_eq!(link.awaiting(), 0);
        link.wrote(1, 0);
        assert_eq!(link.awaiting(), 1);
        link.wrote(3, 0);
        assert_eq!(link.awaiting(), 1);
        // Lost now: the first (written, unanswered) and the second (in part) are lost, and
        // nothing of them is written again.
        assert_eq!(link.lost(7), 2);
        assert_eq!(link.queued_bytes(), 0);
        assert_eq!(link.awaiting(), 0);
    }

    #[test]
    fn output_that_does_not_move_for_the_timeout_is_a_lost_link() {
        let mut link = PubLink::new(TIMEOUT_MS, 1 << 20, None);
        assert!(link.publish(b"c", &[0; 1000]));
        link.wrote(100, 5);
        link.flushed(5);
        assert_eq!(link.next_deadline_ms(), Some(5 + TIMEOUT_MS));
        // Progress pushes the deadline on.
        link.wrote(100, 60);
        link.flushed(60);
        assert_eq!(link.check(5 + TIMEOUT_MS), Ok(()));
        link.flushed(80);
        assert_eq!(
            link.check(60 + TIMEOUT_MS),
            Err(Lost(format!("Redis took no bytes for {TIMEOUT_MS} ms")))
        );
    }

    #[test]
    fn what_waits_is_bounded_in_bytes_up_or_down() {
        let one = resp::command_len(&[b"PUBLISH", b"c", &[0; 100]]);
        let mut link = PubLink::new(TIMEOUT_MS, 3 * one, None);
        assert!(link.publish(b"c", &[0; 100]));
        assert!(link.publish(b"c", &[0; 100]));
        assert!(link.publish(b"c", &[0; 100]), "exactly the bound");
        assert!(!link.publish(b"c", &[0; 100]), "over the bound");
        // Written, it no longer waits: room again, whether or not Redis answered.
        link.wrote(one, 0);
        assert!(link.publish(b"c", &[0; 100]));
        // While down too, and a connection's setup does not count against events.
        link.lost(1);
        assert!(!link.publish(b"c", &[0; 100]));
    }

    #[test]
    fn a_lost_link_reconnects_after_a_delay_doubling_to_two_seconds_and_starts_with_a_ping() {
        let mut link = PubLink::new(TIMEOUT_MS, 1 << 20, None);
        assert!(link.publish(b"c", b"kept"));
        assert_eq!(link.lost(1000), 0, "nothing was written");
        let mut delays = Vec::new();
        let mut now = 1000;
        for _ in 0..8 {
            let Phase::Down { retry_at_ms } = link.phase() else {
                panic!("not down");
            };
            assert!(!link.connect_due(retry_at_ms - 1));
            assert!(link.connect_due(retry_at_ms));
            assert_eq!(link.next_deadline_ms(), Some(retry_at_ms));
            delays.push(retry_at_ms - now);
            now = retry_at_ms;
            link.connecting(now);
            assert_eq!(link.next_deadline_ms(), Some(now + TIMEOUT_MS));
            assert!(link.check(now + TIMEOUT_MS).is_err(), "connect timed out");
            link.lost(now + TIMEOUT_MS);
            now += TIMEOUT_MS;
        }
        assert_eq!(delays, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        // Connected: a PING first, then what waited; its answer is the link's return and
        // the delay starts again at 50 ms.
        let Phase::Down { retry_at_ms } = link.phase() else {
            panic!("not down");
        };
        link.connecting(retry_at_ms);
        link.connected();
        assert!(link
            .output()
            .starts_with(b"*1\r\n$4\r\nPING\r\n*3\r\n$7\r\nPUBLISH"));
        write_all(&mut link, retry_at_ms);
        assert_eq!(link.awaiting(), 2);
        assert_eq!(
            link.on_reply(Value::Simple(Bytes::from_static(b"PONG"))),
            Ok(PubReply::Alive)
        );
        assert_eq!(link.on_reply(integer()), Ok(PubReply::Published));
        assert_eq!(link.lost(retry_at_ms + 1), 0);
        assert_eq!(
            link.phase(),
            Phase::Down {
                retry_at_ms: retry_at_ms + 1 + 50
            }
        );
    }

    #[test]
    fn events_wait_for_a_link_down_at_most_the_stale_time_then_are_dropped_until_it_is_back() {
        let mut link = PubLink::new(TIMEOUT_MS, 1 << 20, None).with_stale_ms(500);
        assert_eq!(link.lost(1000), 0);
        assert!(link.publish(b"c", b"one"));
        assert!(link.publish(b"c", b"two"));
        // A short outage loses nothing: the link is back before the stale time.
        assert_eq!(link.expire(1499), 0);
        assert_eq!(link.next_deadline_ms(), Some(1050), "the retry comes first");
        link.connecting(1050);
        link.connected();
        write_all(&mut link, 1050);
        assert_eq!(link.awaiting(), 3, "PING and both events");
        assert_eq!(
            link.on_reply(Value::Simple(Bytes::from_static(b"PONG"))),
            Ok(PubReply::Alive)
        );
        assert_eq!(link.on_reply(integer()), Ok(PubReply::Published));
        assert_eq!(link.on_reply(integer()), Ok(PubReply::Published));
        assert_eq!(link.expire(5000), 0, "up: nothing expires");

        // A long one: at the stale time (counted from the loss, not the events) what waits is
        // dropped, the reactor woken for it, and later events are dropped at once.
        assert_eq!(link.lost(6000), 0);
        assert!(link.publish(b"c", b"three"));
        assert!(link.publish(b"c", b"four"));
        let Phase::Down { retry_at_ms } = link.phase() else {
            panic!("not down");
        };
        link.connecting(retry_at_ms);
        link.lost(retry_at_ms + TIMEOUT_MS);
        // Retries at 6,050 and 6,250, then 6,550: the stale time comes first.
        assert_eq!(link.next_deadline_ms(), Some(6250));
        link.connecting(6250);
        link.lost(6250 + TIMEOUT_MS);
        assert_eq!(link.next_deadline_ms(), Some(6500));
        assert_eq!(link.expire(6499), 0);
        assert_eq!(link.expire(6500), 2);
        assert_eq!(link.queued_bytes(), 0);
        assert!(!link.publish(b"c", b"five"), "dropped at once while stale");
        assert_eq!(link.expire(9000), 0);
        // Back: the PING's answer ends the outage; events are queued again.
        let Phase::Down { retry_at_ms } = link.phase() else {
            panic!("not down");
        };
        link.connecting(retry_at_ms);
        link.connected();
        assert!(link.output().starts_with(b"*1\r\n$4\r\nPING\r\n"));
        assert_eq!(
            link.output().len(),
            b"*1\r\n$4\r\nPING\r\n".len(),
            "nothing else"
        );
        write_all(&mut link, retry_at_ms);
        assert!(!link.publish(b"c", b"six"), "not back until Redis answers");
        assert_eq!(
            link.on_reply(Value::Simple(Bytes::from_static(b"PONG"))),
            Ok(PubReply::Alive)
        );
        assert!(link.publish(b"c", b"seven"));
    }

    #[test]
    fn a_connection_lost_before_its_ping_was_written_does_not_send_it_twice() {
        let auth = Some(Bytes::from_static(b"*2\r\n$4\r\nAUTH\r\n$1\r\np\r\n"));
        let mut link = PubLink::new(TIMEOUT_MS, 1 << 20, auth);
        assert!(link.publish(b"c", b"x"));
        link.lost(0);
        link.connecting(50);
        link.connected();
        link.lost(60);
        link.connecting(160);
        link.connected();
        let mut want = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$1\r\np\r\n*1\r\n$4\r\nPING\r\n"[..]);
        resp::encode_command(&mut want, &[b"PUBLISH", b"c", b"x"]);
        assert_eq!(link.output(), &want[..]);
        write_all(&mut link, 170);
        let ok = Value::Simple(Bytes::from_static(b"OK"));
        assert_eq!(link.on_reply(ok), Ok(PubReply::Authenticated));
        assert!(link
            .on_reply(Value::Error(Bytes::from_static(b"NOAUTH")))
            .is_err());
    }

    fn message(payload: &'static [u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        resp::encode_command(&mut out, &[b"message", b"switchboard:lobby", payload]);
        out.to_vec()
    }

    fn subscribed(channel: &[u8], count: usize) -> Vec<u8> {
        let mut out = format!("*3\r\n$9\r\nsubscribe\r\n${}\r\n", channel.len()).into_bytes();
        out.extend_from_slice(channel);
        out.extend_from_slice(format!("\r\n:{count}\r\n").as_bytes());
        out
    }

    fn sub_link() -> SubLink {
        SubLink::new(TIMEOUT_MS, 250, &[b"lobby", b"own"], None)
    }

    /// Feed `wire` in the given parts, collecting the pushes.
    fn feed(link: &mut SubLink, parts: &[&[u8]], now_ms: u64) -> Vec<SubPush> {
        let mut input = BytesMut::new();
        let mut pushes = Vec::new();
        for part in parts {
            input.extend_from_slice(part);
            while let Some(value) = resp::parse(&mut input).unwrap() {
                match link.on_reply(value, now_ms).unwrap() {
                    SubPush::Nothing => {}
                    push => pushes.push(push),
                }
            }
        }
        pushes
    }

    #[test]
    fn the_subscription_is_confirmed_for_every_channel_within_the_timeout() {
        let mut link = sub_link();
        link.connecting(0);
        link.connected(5);
        assert_eq!(
            link.output(),
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$5\r\nlobby\r\n$3\r\nown\r\n"
        );
        assert_eq!(link.next_deadline_ms(), Some(5 + TIMEOUT_MS));
        assert_eq!(feed(&mut link, &[&subscribed(b"lobby", 1)], 10), []);
        assert_eq!(link.check(5 + TIMEOUT_MS - 1), Ok(()));
        assert_eq!(
            link.check(5 + TIMEOUT_MS),
            Err(Lost(format!(
                "no answer to SUBSCRIBE within {TIMEOUT_MS} ms"
            )))
        );
        let mut link = sub_link();
        link.connected(5);
        let both = [subscribed(b"lobby", 1), subscribed(b"own", 2)].concat();
        assert_eq!(feed(&mut link, &[&both], 10), [SubPush::Subscribed]);
        assert_eq!(link.check(5 + TIMEOUT_MS), Ok(()));
    }

    #[test]
    fn a_message_split_at_every_byte_comes_out_once_and_whole() {
        let wire = [message(b"\x01first"), message(b"second\r\n")].concat();
        for split in 0..=wire.len() {
            let mut link = sub_link();
            link.connected(0);
            let pushes = feed(&mut link, &[&wire[..split], &wire[split..]], 1);
            assert_eq!(
                pushes,
                [
                    SubPush::Message(Bytes::from_static(b"\x01first")),
                    SubPush::Message(Bytes::from_static(b"second\r\n"))
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_quiet_subscription_pings_and_an_unanswered_ping_is_a_lost_link() {
        let mut link = sub_link();
        link.connected(0);
        let both = [subscribed(b"lobby", 1), subscribed(b"own", 2)].concat();
        feed(&mut link, &[&both], 0);
        link.wrote(link.output().len());
        assert_eq!(link.next_deadline_ms(), Some(250), "a quarter lease");
        // A message is news from Redis: the PING waits.
        feed(&mut link, &[&message(b"m")], 100);
        assert_eq!(link.check(300), Ok(()));
        assert!(link.output().is_empty());
        assert_eq!(link.check(350), Ok(()));
        assert_eq!(link.output(), b"*1\r\n$4\r\nPING\r\n");
        link.wrote(link.output().len());
        assert_eq!(link.next_deadline_ms(), Some(350 + TIMEOUT_MS));
        // Answered: quiet again, the next PING a quarter lease after the answer.
        feed(&mut link, &[b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"], 360);
        assert_eq!(link.next_deadline_ms(), Some(360 + 250));
        assert_eq!(link.check(610), Ok(()));
        link.wrote(link.output().len());
        // Unanswered (messages read meanwhile push the deadline on: they were behind it).
        feed(&mut link, &[&message(b"late")], 650);
        assert_eq!(link.check(650 + TIMEOUT_MS - 1), Ok(()));
        assert_eq!(
            link.check(650 + TIMEOUT_MS),
            Err(Lost(format!(
                "no answer to PING within {TIMEOUT_MS} ms (timed out); last heard from Redis {TIMEOUT_MS} ms ago"
            )))
        );
        link.lost(750);
        assert_eq!(link.phase(), Phase::Down { retry_at_ms: 800 });
        assert!(link.output().is_empty());
    }

    #[test]
    fn a_refusal_or_a_malformed_push_is_a_lost_link() {
        let mut link = sub_link();
        link.connected(0);
        assert!(link
            .on_reply(Value::Error(Bytes::from_static(b"NOAUTH")), 1)
            .is_err());
        let short = Value::Array(vec![Value::Bulk(Bytes::from_static(b"message"))]);
        assert!(link.on_reply(short, 1).is_err());
        assert!(link.on_reply(Value::Integer(3), 1).is_err());
    }

    /// Links over real loopback sockets to `redis` (a fake Redis played by the test), the
    /// subscription confirmed: the links and the fake's ends of the publishing and
    /// subscription connections.
    fn links_to(
        redis: &std::net::TcpListener,
        registry: &mio::Registry,
    ) -> (Links, std::net::TcpStream, std::net::TcpStream) {
        let addr = redis.local_addr().unwrap();
        let open = |token| {
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (server, _) = redis.accept().unwrap();
            let socket = Socket::from_std(
                client,
                vec![addr],
                registry.try_clone().unwrap(),
                Token(token),
                BytesMut::new(),
            )
            .unwrap();
            (socket, server)
        };
        let (pub_socket, pub_server) = open(3);
        let (sub_socket, sub_server) = open(4);
        let mut subscriber = SubLink::new(1000, 10_000, &[b"lobby"], None);
        subscriber.connected(0);
        subscriber.wrote(subscriber.output().len());
        subscriber
            .on_reply(
                resp::parse(&mut BytesMut::from(&subscribed(b"lobby", 1)[..]))
                    .unwrap()
                    .unwrap(),
                0,
            )
            .unwrap();
        let links = Links::new(
            PubLink::new(1000, 1 << 20, None),
            pub_socket,
            subscriber,
            sub_socket,
        );
        (links, pub_server, sub_server)
    }

    /// The driver over real loopback sockets, against a fake Redis played by the test: a
    /// message written in two parts comes out once, a PUBLISH is written and its reply
    /// counted, a closed subscription is a lost link made again (non-blocking connect,
    /// SUBSCRIBE, confirmations) and counted down, then up.
    #[test]
    fn the_links_run_over_nonblocking_sockets_and_reconnect_when_redis_closes() {
        use std::io::{Read, Write};
        use std::net::TcpListener;
        use std::sync::atomic::Ordering::Relaxed;

        let redis = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(16);
        let stats = ClusterStats::default();
        let started = Instant::now();
        let now_ms = || started.elapsed().as_millis() as u64;
        let (mut links, mut pub_server, mut sub_server) = links_to(&redis, poll.registry());

        // Turns until `done` (each waits for an event, 10 ms at most), within 5 s.
        let mut until = |links: &mut Links, done: &mut dyn FnMut(&mut Links) -> bool| {
            while !done(links) {
                assert!(started.elapsed() < Duration::from_secs(5), "timed out");
                poll.poll(&mut events, Some(Duration::from_millis(10)))
                    .unwrap();
                if !events.is_empty() {
                    links.on_event();
                }
                links.turn(now_ms(), &stats);
            }
        };

        // A message in two writes: nothing until it is whole, then once.
        let wire = message(b"hello");
        sub_server.write_all(&wire[..9]).unwrap();
        until(&mut links, &mut |links| {
            links.sub_socket.input.len() == 9 || links.next_push(now_ms(), &stats).is_some()
        });
        assert_eq!(links.next_push(now_ms(), &stats), None);
        sub_server.write_all(&wire[9..]).unwrap();
        let mut got = None;
        until(&mut links, &mut |links| {
            got = links.next_push(now_ms(), &stats);
            got.is_some()
        });
        assert_eq!(got, Some(SubPush::Message(Bytes::from_static(b"hello"))));

        // A PUBLISH goes out at the turn's end; its reply is counted.
        assert!(links.publisher.publish(b"lobby", b"event"));
        let mut want = BytesMut::new();
        resp::encode_command(&mut want, &[b"PUBLISH", b"lobby", b"event"]);
        links.turn(now_ms(), &stats);
        let mut written = vec![0; want.len()];
        pub_server.read_exact(&mut written).unwrap();
        assert_eq!(written, &want[..]);
        pub_server.write_all(b":1\r\n").unwrap();
        until(&mut links, &mut |_| stats.published.load(Relaxed) == 1);

        // Redis closes the subscription: a lost link, made again after 50 ms.
        drop(sub_server);
        until(&mut links, &mut |links| {
            links.next_push(now_ms(), &stats);
            links.subscriber.phase() != Phase::Up
        });
        assert_eq!(stats.links_down.load(Relaxed), 1);
        until(&mut links, &mut |links| {
            links.subscriber.phase() == Phase::Up
        });
        let (mut sub_server, _) = redis.accept().unwrap();
        let mut subscribe = vec![0; resp::command_len(&[b"SUBSCRIBE", b"lobby"])];
        sub_server.read_exact(&mut subscribe).unwrap();
        assert_eq!(subscribe, b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nlobby\r\n");
        sub_server.write_all(&subscribed(b"lobby", 1)).unwrap();
        let mut got = None;
        until(&mut links, &mut |links| {
            got = links.next_push(now_ms(), &stats);
            got.is_some()
        });
        assert_eq!(got, Some(SubPush::Subscribed));
        assert_eq!(stats.links_down.load(Relaxed), 0);
        assert_eq!(stats.link_losses.load(Relaxed), 1);
    }

    /// Redis's host moved (the lease thread looked it up again): a link lost after the new
    /// addresses were handed over connects to them, not to the old one.
    #[test]
    fn a_lost_link_reconnects_to_the_addresses_handed_over() {
        use std::io::Read;
        use std::net::TcpListener;

        let (old, moved) = (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(16);
        let stats = ClusterStats::default();
        let started = Instant::now();
        let now_ms = || started.elapsed().as_millis() as u64;
        let (mut links, _pub_server, sub_server) = links_to(&old, poll.registry());
        links.set_addrs(vec![moved.local_addr().unwrap()]);
        // The old Redis is gone: a connect there is refused, and the test times out.
        drop((old, sub_server));
        while links.subscriber.phase() != Phase::Up
            || stats.link_losses.load(std::sync::atomic::Ordering::Relaxed) == 0
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never reconnected"
            );
            poll.poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            if !events.is_empty() {
                links.on_event();
            }
            links.turn(now_ms(), &stats);
            links.next_push(now_ms(), &stats);
        }
        let (mut sub_server, _) = moved.accept().unwrap();
        let mut subscribe = vec![0; resp::command_len(&[b"SUBSCRIBE", b"lobby"])];
        sub_server.read_exact(&mut subscribe).unwrap();
        assert_eq!(subscribe, b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nlobby\r\n");
    }
}
