//! Reading a connection's bytes and writing its pending ones, shared by every TCP scenario.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::BytesMut;
use mio::{Registry, Token};

use crate::clock::Clock;
use crate::plan::{Due, Plan};
use crate::stats::OwnLags;
use crate::tls::Stream;

/// A TCP client connection as the scenarios keep it: the socket (TLS over it with `--tls`,
/// plaintext to the scenarios either way), its readiness (kept in
/// userland: an edge is reported once), the bytes read and not yet decoded, and the bytes and
/// messages waiting to go out.
#[derive(Debug)]
pub struct Conn<T> {
    pub stream: Option<Stream>,
    pub readable: bool,
    pub writable: bool,
    /// An event reported the server's FIN or a socket error (see [`read_chunk`]).
    pub hangup: bool,
    pub inbuf: BytesMut,
    pub out: OutBuf,
    /// The messages in `out`, for the send accounting (other bytes, such as answers, have none).
    pub queue: VecDeque<Queued<T>>,
}

impl<T> Default for Conn<T> {
    fn default() -> Conn<T> {
        Conn {
            stream: None,
            readable: false,
            writable: false,
            hangup: false,
            inbuf: BytesMut::new(),
            out: OutBuf::default(),
            queue: VecDeque::new(),
        }
    }
}

impl<T: Copy> Conn<T> {
    /// Starts a non-blocking connect to `target` as client `index` (its token `index + 1`).
    pub fn open(
        &mut self,
        registry: &Registry,
        target: SocketAddr,
        index: usize,
    ) -> Result<(), String> {
        let tcp = crate::connect::open(registry, target, index, Token(index + 1))?;
        let target = crate::connect::target_of(target, index);
        self.stream = Some(Stream::new(tcp, target)?);
        self.readable = false;
        self.writable = false;
        self.hangup = false;
        Ok(())
    }

    /// Whether its non-blocking connect has completed (see [`crate::connect::is_connected`])
    /// and, with `--tls`, its handshake too (advanced here as far as the socket allows, so
    /// that the handshake counts as part of connecting); not without a socket.
    pub fn is_connected(&mut self) -> io::Result<bool> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        if !crate::connect::is_connected(stream.tcp())? {
            return Ok(false);
        }
        stream.handshake(&mut self.readable, &mut self.writable)
    }

    /// Whether there are bytes to write: queued, or already encrypted by TLS and waiting for
    /// the socket.
    pub fn has_pending(&self) -> bool {
        self.out.has_pending() || self.stream.as_ref().is_some_and(Stream::has_backlog)
    }

    /// Writes the pending bytes and accounts for the messages now out (see [`flush_queued`]);
    /// why, if the connection cannot take writes any more.
    pub fn flush(
        &mut self,
        clock: &Clock,
        lags: SendLags<'_>,
        on_sent: impl FnMut(&Queued<T>, u64),
    ) -> Option<String> {
        let stream = self.stream.as_mut()?;
        // TLS's backlog first: while the socket cannot take it, nothing newer can go out.
        match stream.write_backlog() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                return None;
            }
            Err(e) => return Some(e.to_string()),
        }
        flush_queued(stream, &mut self.out, &mut self.queue, clock, lags, on_sent)
            .failure(&mut self.writable)
    }

    /// Closes the socket (deregistered first, which is tidier) and drops what was waiting;
    /// returns how many messages will now never go out.
    pub fn close(&mut self, registry: &Registry) -> u64 {
        let unsent = self.queue.len() as u64;
        self.queue.clear();
        self.out.clear();
        self.inbuf.clear();
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        unsent
    }
}

/// What writing a connection's pending bytes came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Everything pending was written.
    All,
    /// The socket buffer is full; the rest waits for the next writable event.
    WouldBlock,
    /// The connection cannot take writes any more; the text says why.
    Failed(String),
}

impl Drained {
    /// What the scenario does with the outcome: on `WouldBlock` it clears `writable` (the next
    /// writable edge resumes); a failure is handed back to be counted and the connection closed.
    pub fn failure(self, writable: &mut bool) -> Option<String> {
        match self {
            Drained::All => None,
            Drained::WouldBlock => {
                *writable = false;
                None
            }
            Drained::Failed(why) => Some(why),
        }
    }
}

/// What one read from a connection came to.
#[derive(Debug)]
pub enum Chunk {
    /// This many bytes are at the front of the buffer.
    Bytes(usize),
    /// This many bytes are at the front of the buffer, fewer than it holds: they emptied the
    /// socket, `readable` was cleared, the next readable edge resumes (as `Drained`, without
    /// the read that would only have returned `WouldBlock`).
    Emptied(usize),
    /// Nothing more to read: `readable` was cleared, the next readable edge resumes.
    Drained,
    /// The server closed the connection.
    Eof,
    Failed(io::Error),
}

impl Chunk {
    /// Why the connection ended, for a `Eof` or `Failed` chunk.
    pub fn why(&self) -> String {
        match self {
            Chunk::Failed(e) => format!("read: {e}"),
            _ => "the server closed the connection".to_string(),
        }
    }
}

/// One read into `buf`, retried when interrupted; clears `readable` when the socket is drained.
///
/// A read that returns fewer bytes than `buf` holds found the receive queue empty, and with
/// edge-triggered epoll any byte arriving later raises a new edge: it is `Emptied`, which saves
/// the read that would only return `WouldBlock` (Tokio's `PollEvented::poll_read` relies on
/// the same). Not when `hangup` (an event reported the peer's FIN or an error): those may have
/// come with the data under one edge, and no new edge will announce them, so the caller
/// reads on to the EOF or the error.
pub fn read_chunk(
    stream: &mut impl Read,
    buf: &mut [u8],
    readable: &mut bool,
    hangup: bool,
) -> Chunk {
    loop {
        return match stream.read(buf) {
            Ok(0) => Chunk::Eof,
            Ok(n) if n < buf.len() && !hangup => {
                *readable = false;
                Chunk::Emptied(n)
            }
            Ok(n) => Chunk::Bytes(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *readable = false;
                Chunk::Drained
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Chunk::Failed(e),
        };
    }
}

/// Write `out[*written..]` until it is all written or the socket would block, advancing
/// `written` by what the kernel took.
pub fn write_pending(stream: &mut impl Write, out: &[u8], written: &mut usize) -> Drained {
    while let Some(rest) = out.get(*written..).filter(|rest| !rest.is_empty()) {
        match stream.write(rest) {
            Ok(0) => return Drained::Failed("write returned 0".to_string()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Drained::Failed(e.to_string()),
        }
    }
    Drained::All
}

/// A connection's bytes due to go out: appended at the end, written from the front.
///
/// Offsets ([`OutBuf::end`], [`OutBuf::written`]) count every byte the buffer ever took, so a
/// message remembered by the offset just past its last byte is out once `written()` reaches it,
/// whatever was reclaimed from the front in between.
#[derive(Debug, Default)]
pub struct OutBuf {
    bytes: Vec<u8>,
    /// `bytes[..written]` are out.
    written: usize,
    /// Bytes reclaimed from the front (or dropped by `clear`) so far.
    dropped: usize,
}

/// Below this, a written prefix is left in place: moving the unwritten rest costs more than the
/// memory it frees.
const RECLAIM_BYTES_MIN: usize = 64 * 1024;

impl OutBuf {
    /// Bytes appended and not yet written.
    pub fn pending(&self) -> usize {
        self.bytes.len() - self.written
    }

    pub fn has_pending(&self) -> bool {
        self.written < self.bytes.len()
    }

    /// The offset just past the last byte appended.
    pub fn end(&self) -> usize {
        self.dropped + self.bytes.len()
    }

    /// The offset just past the last byte written.
    pub fn written(&self) -> usize {
        self.dropped + self.written
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// Appends `n` zero bytes for the caller to fill in place.
    pub fn append(&mut self, n: usize) -> &mut [u8] {
        let start = self.bytes.len();
        self.bytes.resize(start + n, 0);
        &mut self.bytes[start..]
    }

    /// Takes back the last `n` bytes appended (none of them written yet).
    pub fn unappend(&mut self, n: usize) {
        let keep = self.bytes.len().saturating_sub(n).max(self.written);
        self.bytes.truncate(keep);
    }

    /// Drops everything not yet written (the connection is gone).
    pub fn clear(&mut self) {
        self.dropped += self.bytes.len();
        self.bytes.clear();
        self.written = 0;
    }

    /// Writes the pending bytes until done or `WouldBlock` (see [`write_pending`]), then
    /// reclaims the written prefix: all of it when everything is out, else once it is large
    /// and at least half the buffer.
    pub fn write_to(&mut self, stream: &mut impl Write) -> Drained {
        let drained = write_pending(stream, &self.bytes, &mut self.written);
        if self.written == self.bytes.len() {
            self.clear();
        } else if self.written >= RECLAIM_BYTES_MIN && self.written * 2 >= self.bytes.len() {
            self.bytes.drain(..self.written);
            self.dropped += self.written;
            self.written = 0;
        }
        drained
    }
}

/// The connections with bytes queued since the last flush, each listed once: a turn's sends and
/// answers go out in one write per connection, not one per message.
#[derive(Debug, Default)]
pub struct DirtySet {
    marked: Vec<bool>,
    list: Vec<usize>,
}

impl DirtySet {
    pub fn mark(&mut self, i: usize) {
        if i >= self.marked.len() {
            self.marked.resize(i + 1, false);
        }
        if !self.marked[i] {
            self.marked[i] = true;
            self.list.push(i);
        }
    }

    /// The connections marked so far, in the order marked; all unmarked.
    pub fn take(&mut self) -> Vec<usize> {
        for &i in &self.list {
            self.marked[i] = false;
        }
        std::mem::take(&mut self.list)
    }
}

/// A message in a connection's [`OutBuf`], waiting to be fully written.
#[derive(Clone, Copy, Debug)]
pub struct Queued<T> {
    /// The buffer offset just past its last byte: it is out once `written()` reaches it.
    pub end: usize,
    pub intended_us: u64,
    /// When the loadgen found it due: socket-blocked time runs from here to the write attempt.
    pub noticed_us: u64,
    /// What the scenario needs to account for it (BIN24: its ledger index).
    pub tag: T,
}

impl<T> Queued<T> {
    /// The message `due` that was just appended to `out`.
    #[inline]
    pub fn new(out: &OutBuf, due: &Due, tag: T) -> Queued<T> {
        Queued {
            end: out.end(),
            intended_us: due.intended_us,
            noticed_us: due.noticed_us,
            tag,
        }
    }
}

/// What a run sent and could not send, counted as it goes (every scenario alike).
#[derive(Clone, Copy, Debug, Default)]
pub struct SendCounts {
    /// Messages fully written to a socket.
    pub sent: u64,
    /// Of them, those whose write completed inside the measured window.
    pub sent_in_window: u64,
    /// Due while the sender's local queue was full (its socket had not been writable).
    pub not_sent_queue_full: u64,
    /// Due after the sender's connection had failed.
    pub not_sent_connection_lost: u64,
    /// Still queued when the run ended.
    pub not_sent_at_end: u64,
}

/// Where a flush records the loadgen's own lags, measured the same way in every scenario.
pub struct SendLags<'a> {
    /// `None` before the sending phase: nothing is measured.
    pub plan: Option<&'a Plan>,
    pub own: &'a mut OwnLags,
    /// Messages fully written within the measured window.
    pub sent_in_window: &'a mut u64,
}

/// Writes a connection's pending bytes until done or `WouldBlock`, then takes every message now
/// fully out off `queue`: `on_sent` gets it and its send lag (µs from its intended time to the
/// end of the write), and outside the warmup its socket-blocked time and send lag are recorded.
///
/// Socket-blocked time ends when a write is attempted, not when it returns: the time inside
/// write() (on loopback it includes handing the bytes to the server's socket) is not time spent
/// waiting for the socket to become writable. It stays in the send lag.
pub fn flush_queued<T: Copy>(
    stream: &mut impl Write,
    out: &mut OutBuf,
    queue: &mut VecDeque<Queued<T>>,
    clock: &Clock,
    mut lags: SendLags<'_>,
    mut on_sent: impl FnMut(&Queued<T>, u64),
) -> Drained {
    let attempt_us = clock.now_us();
    let drained = out.write_to(stream);
    let done_us = clock.now_us();
    while let Some(queued) = queue.front().copied() {
        if queued.end > out.written() {
            break;
        }
        queue.pop_front();
        let lag_us = done_us.saturating_sub(queued.intended_us);
        on_sent(&queued, lag_us);
        lags.record(queued.intended_us, queued.noticed_us, attempt_us, done_us);
    }
    drained
}

impl SendLags<'_> {
    /// A message due at `intended_us` and noticed at `noticed_us` went out with the write
    /// attempted at `attempt_us` and done at `done_us`: outside the warmup, its socket-blocked
    /// time and its send lag; within the measured window, one more sent in it.
    #[inline]
    pub fn record(&mut self, intended_us: u64, noticed_us: u64, attempt_us: u64, done_us: u64) {
        let Some(plan) = self.plan else {
            return;
        };
        if !plan.is_warmup(intended_us) {
            self.own
                .socket_blocked
                .record(attempt_us.saturating_sub(noticed_us));
            self.own
                .send_lag
                .record(done_us.saturating_sub(intended_us));
        }
        if (plan.measure_start_us()..plan.measure_end_us()).contains(&done_us) {
            *self.sent_in_window += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `chunk` bytes per write, then would block after `capacity` in all.
    struct Sink {
        taken: Vec<u8>,
        chunk: usize,
        capacity: usize,
        interrupt_once: bool,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.interrupt_once {
                self.interrupt_once = false;
                return Err(io::ErrorKind::Interrupted.into());
            }
            let room = self.capacity - self.taken.len();
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(room);
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A socket's receive side as a script of what each read returns: `Ok(bytes)` (empty for
    /// EOF) or an error kind; a finished script would block.
    struct Source(VecDeque<Result<&'static [u8], io::ErrorKind>>);

    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                Some(Ok(bytes)) => {
                    assert!(bytes.len() <= buf.len(), "the script respects the buffer");
                    buf[..bytes.len()].copy_from_slice(bytes);
                    Ok(bytes.len())
                }
                Some(Err(kind)) => Err(kind.into()),
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    fn chunks(source: &mut Source, buf_len: usize, hangup: bool) -> Vec<String> {
        let mut buf = vec![0u8; buf_len];
        let mut readable = true;
        let mut seen = Vec::new();
        while readable {
            let chunk = read_chunk(source, &mut buf, &mut readable, hangup);
            let done = matches!(chunk, Chunk::Eof | Chunk::Failed(_));
            seen.push(format!("{chunk:?}"));
            if done {
                break;
            }
        }
        seen
    }

    #[test]
    fn a_short_read_empties_the_socket_without_a_would_block_read() {
        let mut source = Source(VecDeque::from([Ok(&b"hello"[..]), Ok(b"never read")]));
        assert_eq!(chunks(&mut source, 16, false), ["Emptied(5)"]);
        assert_eq!(
            source.0.len(),
            1,
            "the read after the short one was not made"
        );
    }

    #[test]
    fn a_full_read_reads_on() {
        let mut source = Source(VecDeque::from([Ok(&b"12345678"[..]), Ok(b"9")]));
        assert_eq!(chunks(&mut source, 8, false), ["Bytes(8)", "Emptied(1)"]);
        let mut exact = Source(VecDeque::from([Ok(&b"12345678"[..])]));
        assert_eq!(chunks(&mut exact, 8, false), ["Bytes(8)", "Drained"]);
    }

    #[test]
    fn after_a_hangup_a_short_read_reads_on_to_the_eof_or_the_error() {
        let mut fin = Source(VecDeque::from([Ok(&b"bye"[..]), Ok(b"")]));
        assert_eq!(chunks(&mut fin, 16, true), ["Bytes(3)", "Eof"]);
        let mut reset = Source(VecDeque::from([
            Ok(&b"bye"[..]),
            Err(io::ErrorKind::Interrupted),
            Err(io::ErrorKind::ConnectionReset),
        ]));
        let seen = chunks(&mut reset, 16, true);
        assert_eq!(seen[0], "Bytes(3)");
        assert!(seen[1].starts_with("Failed("), "{seen:?}");
    }

    #[test]
    fn writes_everything_across_short_writes_and_an_interruption() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: 3,
            capacity: 100,
            interrupt_once: true,
        };
        let mut written = 2;
        assert_eq!(
            write_pending(&mut sink, b"xxhello world", &mut written),
            Drained::All
        );
        assert_eq!(written, 13);
        assert_eq!(sink.taken, b"hello world");
    }

    #[test]
    fn stops_at_would_block_and_resumes_where_it_stopped() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: 4,
            capacity: 5,
            interrupt_once: false,
        };
        let mut written = 0;
        assert_eq!(
            write_pending(&mut sink, b"0123456789", &mut written),
            Drained::WouldBlock
        );
        assert_eq!(written, 5);
        sink.capacity = 10;
        assert_eq!(
            write_pending(&mut sink, b"0123456789", &mut written),
            Drained::All
        );
        assert_eq!(sink.taken, b"0123456789");
    }

    #[test]
    fn out_buf_offsets_survive_reclaiming_the_written_prefix() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: usize::MAX,
            capacity: RECLAIM_BYTES_MIN + 10,
            interrupt_once: false,
        };
        let mut out = OutBuf::default();
        out.extend(&[1; RECLAIM_BYTES_MIN]);
        let first_end = out.end();
        out.extend(&[2; 20]);
        let second_end = out.end();
        assert_eq!(out.write_to(&mut sink), Drained::WouldBlock);
        assert!(out.written() >= first_end && out.written() < second_end);
        assert_eq!(out.pending(), 10);
        // The written prefix was large and most of the buffer: reclaimed, offsets unchanged.
        assert_eq!(out.bytes.len(), 10);
        assert_eq!(out.end(), second_end);
        out.append(3).copy_from_slice(b"abc");
        out.unappend(3);
        assert_eq!(out.end(), second_end);
        sink.capacity += 10;
        assert_eq!(out.write_to(&mut sink), Drained::All);
        assert_eq!(out.written(), second_end);
        assert!(!out.has_pending());
        assert!(
            out.bytes.is_empty(),
            "everything out: the buffer is emptied"
        );
        assert_eq!(&sink.taken[RECLAIM_BYTES_MIN..], &[2; 20]);
    }

    #[test]
    fn out_buf_keeps_a_small_written_prefix() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: usize::MAX,
            capacity: 5,
            interrupt_once: false,
        };
        let mut out = OutBuf::default();
        out.extend(b"0123456789");
        assert_eq!(out.write_to(&mut sink), Drained::WouldBlock);
        assert_eq!((out.written(), out.pending(), out.bytes.len()), (5, 5, 10));
        out.clear();
        assert_eq!((out.written(), out.end(), out.pending()), (10, 10, 0));
    }

    #[test]
    fn a_flush_accounts_for_the_messages_fully_written_and_only_those() {
        let clock = Clock::start().unwrap();
        // Measured from 1 µs on for a long while: the message intended at 0 is warmup.
        let plan = Plan::new(1, 1, 0, 1, 1 << 40);
        let mut own = OwnLags::default();
        let mut sent_in_window = 0;
        let mut out = OutBuf::default();
        let mut queue = VecDeque::new();
        for (tag, intended_us) in [(7u64, 0), (8, 5), (9, 6)] {
            out.extend(b"0123");
            queue.push_back(Queued {
                end: out.end(),
                intended_us,
                noticed_us: intended_us,
                tag,
            });
        }
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: usize::MAX,
            capacity: 10,
            interrupt_once: false,
        };
        let mut sent = Vec::new();
        let lags = SendLags {
            plan: Some(&plan),
            own: &mut own,
            sent_in_window: &mut sent_in_window,
        };
        let drained = flush_queued(&mut sink, &mut out, &mut queue, &clock, lags, |q, _| {
            sent.push(q.tag)
        });
        assert_eq!(drained, Drained::WouldBlock);
        assert_eq!(sent, [7, 8], "the third message is only half written");
        assert_eq!(queue.len(), 1);
        assert_eq!(
            (own.socket_blocked.len(), own.send_lag.len()),
            (1, 1),
            "warmup not recorded"
        );
        assert_eq!(sent_in_window, 2);
    }

    #[test]
    fn a_dirty_connection_is_listed_once_until_taken() {
        let mut dirty = DirtySet::default();
        for i in [3, 0, 3, 7, 0] {
            dirty.mark(i);
        }
        assert_eq!(dirty.take(), [3, 0, 7]);
        assert!(dirty.take().is_empty());
        dirty.mark(3);
        assert_eq!(dirty.take(), [3], "taking unmarks");
    }

    #[test]
    fn a_zero_write_is_a_failure() {
        let mut sink = Sink {
            taken: Vec::new(),
            chunk: 0,
            capacity: 10,
            interrupt_once: false,
        };
        let mut written = 0;
        assert_eq!(
            write_pending(&mut sink, b"abc", &mut written),
            Drained::Failed("write returned 0".to_string())
        );
    }
}
