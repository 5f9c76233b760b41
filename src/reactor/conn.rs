//! Connections: userland readiness, the read buffer, the output queue and its limits, and the
//! table of all connections, which is the [`Outbox`] the protocols act through.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use bytes::{Buf, Bytes, BytesMut};
use log::debug;
use mio::net::TcpStream;
use slab::Slab;

use crate::chat::ConnId;
use crate::limits::TokenBucket;
use crate::protocol::{CloseMode, CloseReason, Outbox};
use crate::stats::{ProtocolStats, Stats};

use super::tls::TlsConn;
use super::ProtocolKind;

/// What a table's connections are: a chat table's are of a [`ProtocolKind`], whose traffic
/// adds to `Stats::by_protocol`; the admin port's are counted apart. A table is generic over
/// it, rather than a connection carrying a kind to branch on, so a send costs the same as
/// before the admin port shared the table.
pub(crate) trait ConnKind: Copy {
    /// The per-protocol counters this kind's traffic adds to, if any.
    fn counters(self, stats: &mut Stats) -> Option<&mut ProtocolStats>;
}

impl ConnKind for ProtocolKind {
    #[inline]
    fn counters(self, stats: &mut Stats) -> Option<&mut ProtocolStats> {
        stats.by_protocol.get_mut(self.index())
    }
}

/// Most buffers one vectored write may carry (Linux's IOV_MAX is 1024; more gains nothing).
const IOVECS_CAP: usize = 256;
/// An emptied output or notes queue above this many slots gives its memory back. Queues keep
/// their largest capacity otherwise: a member that once had 512 notices queued in a join storm
/// would hold 16 KiB for the rest of its life (measured: 15.9 KB per idle joined ROOM member),
/// while a small queue is reused turn after turn without touching the allocator.
const QUEUE_IDLE_SLOTS_MAX: usize = 4;
/// An emptied read buffer above this many bytes gives its memory back, for the same reason: a
/// connection that once read a 16 KiB chunk need not keep it while it is idle. Below it, the
/// buffer is kept, so a steady sender of small frames does not allocate per read.
const READ_BUF_IDLE_BYTES_MAX: usize = 4096;

/// What one socket operation came to. A peer reset is `Closed`, not an error worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IoOutcome {
    /// Made progress; more may be possible.
    Continue,
    /// The kernel has nothing more now; wait for the next edge.
    WouldBlock,
    /// The peer closed cleanly (a read returned EOF).
    Closed,
    /// The peer reset the connection, or it is gone under a write.
    Reset,
    Error,
    /// TLS records that could not be processed (`TlsConn::failure` says why); the
    /// connection must be closed.
    TlsFailed,
}

fn classify(err: &io::Error) -> IoOutcome {
    match err.kind() {
        io::ErrorKind::WouldBlock => IoOutcome::WouldBlock,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => IoOutcome::Reset,
        io::ErrorKind::UnexpectedEof => IoOutcome::Closed,
        _ => IoOutcome::Error,
    }
}

/// Whether a stream socket is still worth reading after a read returned `read` bytes of the
/// `asked` it was given. A full read may have left more behind; a short one emptied the
/// receive queue, and new bytes will raise a new edge, unless a FIN or an error arrived under
/// the edge already seen (`hangup_seen`): nothing will announce those again.
pub(crate) fn stays_read_ready(read: usize, asked: usize, hangup_seen: bool) -> bool {
    read >= asked || hangup_seen
}

/// Bytes written to `stream` that its peer's TCP has not acknowledged yet (SIOCOUTQ).
///
/// `unsafe` because no dependency wraps this ioctl, and it is the one way to learn what the
/// peer has received: BIN24 counts a stored frame as delivered only once acknowledged.
fn unacked_bytes(stream: &TcpStream) -> io::Result<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ's number on Linux) writes one c_int through its argument,
    // which points to `queued`, a live, writable c_int; the descriptor is an open TCP socket
    // owned by `stream` for the whole call. Nothing else is read or written.
    let rc = unsafe {
        libc::ioctl(
            stream.as_raw_fd(),
            libc::TIOCOUTQ,
            &mut queued as *mut libc::c_int,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(queued).unwrap_or(0))
}

/// How often a connection waiting for its peer's acknowledgements is asked again: at once
/// while they arrive, backing off to this while they do not (a peer that stopped reading).
const ACK_CHECK_INTERVAL_MIN_MS: u64 = 1;
const ACK_CHECK_INTERVAL_MAX_MS: u64 = 250;

pub(crate) struct Conn<K = ProtocolKind> {
    pub(crate) stream: TcpStream,
    pub(crate) generation: u32,
    pub(crate) kind: K,
    pub(crate) peer: SocketAddr,
    /// Edge-triggered readiness kept in userland: set by an event, cleared by WouldBlock or
    /// by a short read (see [`Conn::read_once`]).
    pub(crate) read_ready: bool,
    /// An event reported the peer's FIN or a socket error (`is_read_closed`/`is_error`).
    /// Sticky: both are final. While set, a short read does not end readiness, because the
    /// EOF or the error waits behind the data and no further edge will announce it.
    pub(crate) hangup_seen: bool,
    pub(crate) write_ready: bool,
    pub(crate) read_buf: BytesMut,
    out: VecDeque<Bytes>,
    /// Bytes queued and not yet written: how far behind this reader is.
    out_bytes: usize,
    /// Since when `out_bytes` has been over the soft limit without a break.
    soft_over_since_ms: Option<u64>,
    in_ready_list: bool,
    in_close_list: bool,
    closing: Option<(CloseReason, CloseMode)>,
    /// Bytes ever queued and ever written: a note is due once `written_bytes_total` reaches
    /// the offset where its buffer ends.
    queued_bytes_total: u64,
    written_bytes_total: u64,
    /// (end offset, note) of buffers queued with `send_notify`, in queue order; each is
    /// reported once the peer has acknowledged its end offset.
    notes: VecDeque<(u64, u64)>,
    /// When to ask the kernel again what the peer acknowledged, while notes wait on it.
    ack_check_at_ms: Option<u64>,
    ack_check_interval_ms: u64,
    /// The protocol said the user is identified (ROOM: its alias taken; OCM's TCRP
    /// connections never are): the reactor's handshake deadline no longer applies, and the
    /// connection is no longer evictable at the connection cap.
    pub(crate) identified: bool,
    /// Input budget (`--input-bytes-per-s-max`), taken from by every read.
    pub(crate) input_budget: TokenBucket,
    /// Not read for now (backpressure from the store); listed in the server's paused list.
    pub(crate) input_paused: bool,
    /// TLS state, for a connection accepted on a TLS listener. Boxed: a plaintext connection
    /// pays one pointer for it, and a branch per read and per flush.
    pub(crate) tls: Option<Box<TlsConn>>,
}

impl<K> Conn<K> {
    pub(crate) fn new(
        stream: TcpStream,
        generation: u32,
        kind: K,
        peer: SocketAddr,
        input_budget: TokenBucket,
    ) -> Self {
        Conn {
            stream,
            generation,
            kind,
            peer,
            read_ready: false,
            hangup_seen: false,
            // A write that is not possible yet just returns WouldBlock, so start optimistic:
            // the first answer (a prompt) then goes out without waiting for an edge.
            write_ready: true,
            read_buf: BytesMut::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            soft_over_since_ms: None,
            in_ready_list: false,
            in_close_list: false,
            closing: None,
            queued_bytes_total: 0,
            written_bytes_total: 0,
            notes: VecDeque::new(),
            ack_check_at_ms: None,
            ack_check_interval_ms: ACK_CHECK_INTERVAL_MIN_MS,
            identified: false,
            input_budget,
            input_paused: false,
            tls: None,
        }
    }

    /// Whether input from this connection should still be processed.
    pub(crate) fn accepts_input(&self) -> bool {
        self.closing.is_none()
    }

    pub(crate) fn closing(&self) -> Option<(CloseReason, CloseMode)> {
        self.closing
    }

    /// One read of at most `scratch.len()` bytes, appended to the read buffer.
    ///
    /// A read that returns fewer bytes than it asked for clears `read_ready`: the receive
    /// queue was empty at that moment, and with edge-triggered epoll any byte arriving later
    /// raises a new edge, so the read that would only return WouldBlock is saved (Tokio's
    /// `PollEvented::poll_read` relies on the same). Not when `hangup_seen`: a FIN or an error
    /// that came with the data under one edge raises no new one, so reading goes on to the
    /// EOF or the error.
    ///
    /// Reading goes through a reactor-wide scratch buffer because `Read::read` wants
    /// initialised memory: copying the bytes that arrived costs less than zeroing a whole
    /// chunk of the read buffer on every read, and needs no `unsafe`.
    pub(crate) fn read_once(&mut self, scratch: &mut [u8]) -> (IoOutcome, usize) {
        if self.tls.is_some() {
            return self.read_once_tls(scratch);
        }
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return (IoOutcome::Closed, 0),
                Ok(n) => {
                    self.read_buf.extend_from_slice(&scratch[..n]);
                    if !stays_read_ready(n, scratch.len(), self.hangup_seen) {
                        self.read_ready = false;
                    }
                    return (IoOutcome::Continue, n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let outcome = classify(&err);
                    if outcome == IoOutcome::Error {
                        debug!("read from {}: {err}", self.peer);
                    }
                    return (outcome, 0);
                }
            }
        }
    }

    /// [`Conn::read_once`] for a TLS connection: one read of the socket into rustls, and the
    /// plaintext of the records it completed appended to the read buffer. The count is of
    /// bytes read from the socket (what the input budget is about).
    fn read_once_tls(&mut self, scratch: &mut [u8]) -> (IoOutcome, usize) {
        let Some(tls) = self.tls.as_mut() else {
            return (IoOutcome::Error, 0);
        };
        loop {
            match tls.read(&mut self.stream, scratch, &mut self.read_buf) {
                Ok(read) if read.failed => return (IoOutcome::TlsFailed, read.wire_bytes),
                Ok(read) if read.eof && read.wire_bytes == 0 => return (IoOutcome::Closed, 0),
                Ok(read) => {
                    // A close_notify that came with data: the data first, the next read
                    // returns the EOF.
                    if !read.eof && !read.full_read && !self.hangup_seen {
                        self.read_ready = false;
                    }
                    return (IoOutcome::Continue, read.wire_bytes);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let outcome = classify(&err);
                    if outcome == IoOutcome::Error {
                        debug!("TLS read from {}: {err}", self.peer);
                    }
                    return (outcome, 0);
                }
            }
        }
    }

    /// [`Conn::flush`] for a TLS connection: records pending in rustls go first; a batch of
    /// plaintext leaves the queue once its records are all written (so the output limits see
    /// it until then), and the next batch is encrypted, until the queue is empty, the kernel
    /// pushes back or `bytes_max` plaintext bytes went out. While the handshake runs, only its
    /// records go out, and the queue waits (WouldBlock, without clearing `write_ready`: the
    /// handshake's end lists the connection for a flush).
    fn flush_tls(&mut self, bytes_max: usize) -> (IoOutcome, usize, u64) {
        let mut written_total = 0;
        let mut calls_total = 0;
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return (IoOutcome::Error, written_total, calls_total);
            };
            let (calls, err) = tls.write_records(&mut self.stream);
            calls_total += calls;
            if let Some(err) = err {
                let outcome = classify(&err);
                match outcome {
                    IoOutcome::WouldBlock => self.write_ready = false,
                    IoOutcome::Error => debug!("TLS write to {}: {err}", self.peer),
                    _ => {}
                }
                return (outcome, written_total, calls_total);
            }
            let batch = tls.take_written_batch();
            let can_send = tls.can_send_plaintext();
            if batch > 0 {
                written_total += batch;
                self.consume(batch);
            }
            if !can_send {
                let outcome = if self.out.is_empty() {
                    IoOutcome::Continue
                } else {
                    IoOutcome::WouldBlock
                };
                return (outcome, written_total, calls_total);
            }
            if self.out.is_empty() || written_total >= bytes_max {
                return (IoOutcome::Continue, written_total, calls_total);
            }
            let Some(tls) = self.tls.as_mut() else {
                return (IoOutcome::Error, written_total, calls_total);
            };
            match tls.encrypt_batch(&self.out) {
                Ok(0) => return (IoOutcome::Continue, written_total, calls_total),
                Ok(_) => {}
                Err(err) => {
                    debug!("TLS encrypt for {}: {err}", self.peer);
                    return (IoOutcome::Error, written_total, calls_total);
                }
            }
        }
    }

    /// Whether the connection has anything to write: queued output, or TLS records.
    pub(crate) fn has_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Best effort before the socket is dropped: a TLS connection's close_notify, or the
    /// alert of its failure.
    pub(crate) fn close_tls(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.close(&mut self.stream);
        }
    }

    /// Write queued output until the queue is empty, the kernel pushes back, or `bytes_max`
    /// have been written (the turn's write budget; what is left goes out next turn).
    /// Returns the outcome, the bytes written and the write calls made.
    pub(crate) fn flush(&mut self, iovecs_max: usize, bytes_max: usize) -> (IoOutcome, usize, u64) {
        if self.tls.is_some() {
            return self.flush_tls(bytes_max);
        }
        let iovecs_max = iovecs_max.clamp(1, IOVECS_CAP);
        let mut written_total = 0;
        let mut calls = 0;
        while !self.out.is_empty() && written_total < bytes_max {
            let mut slices = [IoSlice::new(&[]); IOVECS_CAP];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(self.out.iter().take(iovecs_max)) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            calls += 1;
            match self.stream.write_vectored(&slices[..count]) {
                Ok(0) => return (IoOutcome::Closed, written_total, calls),
                Ok(written) => {
                    written_total += written;
                    self.consume(written);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let outcome = classify(&err);
                    if outcome == IoOutcome::Error {
                        debug!("write to {}: {err}", self.peer);
                    }
                    if outcome == IoOutcome::WouldBlock {
                        self.write_ready = false;
                    }
                    return (outcome, written_total, calls);
                }
            }
        }
        (IoOutcome::Continue, written_total, calls)
    }

    /// Drop `written` bytes from the front of the queue.
    fn consume(&mut self, mut written: usize) {
        self.out_bytes -= written;
        self.written_bytes_total += written as u64;
        while written > 0 {
            let Some(front) = self.out.front_mut() else {
                debug_assert!(false, "kernel reported more bytes written than queued");
                return;
            };
            if written >= front.len() {
                written -= front.len();
                self.out.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }

    /// Whether a written note waits for its acknowledgement (notes of bytes still queued wait
    /// for the write first).
    fn awaits_ack(&self) -> bool {
        self.notes
            .front()
            .is_some_and(|&(end, _)| end <= self.written_bytes_total)
    }

    /// Ask the kernel how much the peer has acknowledged and pop the notes it covers, calling
    /// `due` with each. Returns whether any was popped.
    fn pop_acked_notes(&mut self, mut due: impl FnMut(u64)) -> bool {
        if !self.awaits_ack() {
            return false;
        }
        let unacked = match unacked_bytes(&self.stream) {
            Ok(unacked) => unacked,
            Err(err) => {
                debug!("SIOCOUTQ on {}: {err}", self.peer);
                return false;
            }
        };
        let acked_total = self.written_bytes_total.saturating_sub(unacked);
        let mut popped = false;
        while let Some(&(end, note)) = self.notes.front() {
            if end > acked_total {
                break;
            }
            self.notes.pop_front();
            due(note);
            popped = true;
        }
        popped
    }

    /// The peer closed cleanly (EOF): report what it acknowledged before, unless a reset
    /// came after the FIN (then the kernel dropped the queue and nothing more is known, so
    /// the close counts as a reset). Returns whether the close is still clean.
    pub(crate) fn final_ack_check(&mut self, mut due: impl FnMut(u64)) -> bool {
        match self.stream.take_error() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return false,
        }
        self.pop_acked_notes(&mut due);
        true
    }

    /// Gives back the memory of emptied queues and of an emptied read buffer that grew large,
    /// so an idle connection costs little (the target: under 1 KiB per idle connection).
    pub(crate) fn release_idle_memory(&mut self) {
        if self.out.is_empty() && self.out.capacity() > QUEUE_IDLE_SLOTS_MAX {
            self.out = VecDeque::new();
        }
        if self.notes.is_empty() && self.notes.capacity() > QUEUE_IDLE_SLOTS_MAX {
            self.notes = VecDeque::new();
        }
        if self.read_buf.is_empty() && self.read_buf.capacity() > READ_BUF_IDLE_BYTES_MAX {
            self.read_buf = BytesMut::new();
        }
    }
}

/// Output limits, copied from the configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutputLimits {
    pub(crate) hard_bytes_max: usize,
    pub(crate) soft_bytes_max: usize,
    pub(crate) soft_duration_ms: u64,
}

/// Every connection, plus the lists the loop phases work through. Protocols see it only as an
/// [`Outbox`].
pub(crate) struct ConnTable<K = ProtocolKind> {
    pub(crate) slab: Slab<Conn<K>>,
    /// Connections with queued output, flushed once per turn before the loop sleeps.
    pub(crate) flush_list: FlushSet,
    /// Connections that hit their read budget: no new edge will come, so serve them next turn.
    pub(crate) ready_list: Vec<usize>,
    /// Connections to free at the end of the turn.
    pub(crate) close_list: Vec<usize>,
    /// Connections closing after their output drained, with their linger deadline.
    pub(crate) lingering: Vec<(ConnId, u64)>,
    pub(crate) stats: Stats,
    pub(crate) limits: OutputLimits,
    pub(crate) close_linger_ms: u64,
    pub(crate) now_ms: u64,
    /// Output queued across all connections (the shutdown waits for it to reach zero).
    pub(crate) out_bytes_total: usize,
    /// Notes of `send_notify` that are due: (connection, its protocol, note, acknowledged).
    pub(crate) notes_due: Vec<(ConnId, K, u64, bool)>,
    /// Connections whose service reads again the input it left while it waited
    /// ([`Outbox::resume_input`]).
    pub(crate) resumed: Vec<ConnId>,
    /// Connections whose written notes wait for the peer's acknowledgement.
    ack_watch: Vec<ConnId>,
    slow_consumer_log: super::LimitLog,
}

impl<K: ConnKind> ConnTable<K> {
    pub(crate) fn new(limits: OutputLimits, close_linger_ms: u64) -> Self {
        ConnTable {
            slab: Slab::new(),
            flush_list: FlushSet::default(),
            ready_list: Vec::new(),
            close_list: Vec::new(),
            lingering: Vec::new(),
            stats: Stats::default(),
            limits,
            close_linger_ms,
            now_ms: 0,
            out_bytes_total: 0,
            notes_due: Vec::new(),
            resumed: Vec::new(),
            ack_watch: Vec::new(),
            slow_consumer_log: super::LimitLog::default(),
        }
    }

    /// Ask the kernel about the acknowledgements of every watched connection that is due,
    /// turning acknowledged notes into due notes; connections with nothing left to wait for
    /// leave the watch.
    pub(crate) fn check_acks(&mut self) {
        if self.ack_watch.is_empty() {
            return;
        }
        let now_ms = self.now_ms;
        let notes_due = &mut self.notes_due;
        let slab = &mut self.slab;
        self.ack_watch.retain(|&id| {
            let slot = id.slot as usize;
            let Some(conn) = slab.get_mut(slot).filter(|c| c.generation == id.generation) else {
                return false;
            };
            if !conn.awaits_ack() {
                conn.ack_check_at_ms = None;
                return false;
            }
            let Some(at_ms) = conn.ack_check_at_ms else {
                return false;
            };
            if at_ms > now_ms {
                return true;
            }
            let kind = conn.kind;
            let progressed = conn.pop_acked_notes(|note| notes_due.push((id, kind, note, true)));
            if !conn.awaits_ack() {
                conn.ack_check_at_ms = None;
                return false;
            }
            conn.ack_check_interval_ms = if progressed {
                ACK_CHECK_INTERVAL_MIN_MS
            } else {
                (conn.ack_check_interval_ms * 2).min(ACK_CHECK_INTERVAL_MAX_MS)
            };
            conn.ack_check_at_ms = Some(now_ms + conn.ack_check_interval_ms);
            true
        });
    }

    /// When the next acknowledgement check is due, if any connection waits for one.
    pub(crate) fn next_ack_check_ms(&self) -> Option<u64> {
        self.ack_watch
            .iter()
            .filter_map(|id| {
                self.slab
                    .get(id.slot as usize)
                    .filter(|conn| conn.generation == id.generation)
                    .and_then(|conn| conn.ack_check_at_ms)
            })
            .min()
    }

    /// The live connection `id` names, if its generation still matches.
    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn<K>> {
        self.slab
            .get_mut(id.slot as usize)
            .filter(|conn| conn.generation == id.generation)
    }

    pub(crate) fn id_of(&self, slot: usize) -> Option<ConnId> {
        self.slab
            .get(slot)
            .map(|conn| ConnId::new(slot as u32, conn.generation))
    }

    pub(crate) fn mark_ready(&mut self, slot: usize) {
        if let Some(conn) = self.slab.get_mut(slot) {
            if !conn.in_ready_list {
                conn.in_ready_list = true;
                self.ready_list.push(slot);
            }
        }
    }

    pub(crate) fn unmark_ready(&mut self, slot: usize) {
        if let Some(conn) = self.slab.get_mut(slot) {
            conn.in_ready_list = false;
        }
    }

    pub(crate) fn mark_flush(&mut self, slot: usize) {
        if self.slab.contains(slot) {
            self.flush_list.insert(slot);
        }
    }

    fn push_close(&mut self, slot: usize) {
        if let Some(conn) = self.slab.get_mut(slot) {
            if !conn.in_close_list {
                conn.in_close_list = true;
                self.close_list.push(slot);
            }
        }
    }

    /// Flush every connection with pending output once, in slot order from where the last
    /// turn left off, until `budget_bytes` have been written in all. Slot order, not the order
    /// output was queued in, so that no protocol's members are written first: a lobby message
    /// reaches its own protocol's members and the others' in one order (the switchboard queues
    /// the others' copies after its own). The start moves on every turn, so no connection is
    /// always first; when the budget runs out, the next turn starts with the first connection
    /// not served, and the one the budget ran out in goes last. Connections whose output
    /// drained while closing after flush move to the close list. Returns the bytes written.
    pub(crate) fn flush_pending(&mut self, iovecs_max: usize, budget_bytes: usize) -> usize {
        let mut written_turn = 0;
        let start = self.flush_list.cursor;
        // Where the next turn starts: the first connection the budget left unserved, or one
        // past this turn's start.
        let mut next_start = None;
        // The connection the budget ran out in: after the ones not reached at all.
        let mut cut = None;
        let mut walk = self.flush_list.from(start);
        while let Some(slot) = walk.next_in(&self.flush_list) {
            if written_turn >= budget_bytes {
                next_start = Some(slot);
                break;
            }
            self.flush_list.remove(slot);
            let Some(conn) = self.slab.get_mut(slot) else {
                continue;
            };
            if !conn.write_ready || matches!(conn.closing, Some((_, CloseMode::Now))) {
                // The next writable edge puts it back on the list.
                continue;
            }
            let before = conn.out_bytes;
            let (outcome, written, calls) = conn.flush(iovecs_max, budget_bytes - written_turn);
            written_turn += written;
            self.stats.bytes_out += written as u64;
            if let Some(counters) = conn.kind.counters(&mut self.stats) {
                counters.bytes_out += written as u64;
            }
            self.stats.write_calls += calls;
            self.out_bytes_total -= before - conn.out_bytes;
            if conn.out_bytes <= self.limits.soft_bytes_max {
                conn.soft_over_since_ms = None;
            }
            let id = ConnId::new(slot as u32, conn.generation);
            if conn.awaits_ack() {
                // On loopback the acknowledgement is often back before the write returns.
                let kind = conn.kind;
                let notes_due = &mut self.notes_due;
                conn.pop_acked_notes(|note| notes_due.push((id, kind, note, true)));
                if conn.awaits_ack() && conn.ack_check_at_ms.is_none() {
                    conn.ack_check_interval_ms = ACK_CHECK_INTERVAL_MIN_MS;
                    conn.ack_check_at_ms = Some(self.now_ms + ACK_CHECK_INTERVAL_MIN_MS);
                    self.ack_watch.push(id);
                }
            }
            conn.release_idle_memory();
            let drained_while_closing =
                !conn.has_output() && matches!(conn.closing, Some((_, CloseMode::AfterFlush)));
            if outcome == IoOutcome::Continue && !conn.out.is_empty() {
                cut = Some(slot);
            }
            match outcome {
                IoOutcome::Continue | IoOutcome::WouldBlock => {
                    if drained_while_closing {
                        self.push_close(slot);
                    }
                }
                IoOutcome::Closed | IoOutcome::Reset => {
                    self.close(id, CloseReason::PeerReset, CloseMode::Now)
                }
                IoOutcome::Error | IoOutcome::TlsFailed => {
                    self.close(id, CloseReason::IoError, CloseMode::Now)
                }
            }
        }
        if let Some(slot) = cut {
            self.flush_list.insert(slot);
            next_start = next_start.or(Some(slot + 1));
        }
        self.flush_list.cursor = next_start.unwrap_or(start + 1);
        written_turn
    }

    /// Close `id` at once even if it is already closing after flush.
    pub(crate) fn close_now_overriding(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(conn) = self.get_mut(id) {
            conn.closing = None;
        }
        self.close(id, reason, CloseMode::Now);
    }

    /// Close at once every connection closing after flush whose linger time is over with
    /// output still queued (timers phase).
    pub(crate) fn expire_lingering(&mut self) {
        if self.lingering.is_empty() {
            return;
        }
        let now_ms = self.now_ms;
        let lingering = std::mem::take(&mut self.lingering);
        let mut keep = Vec::with_capacity(lingering.len());
        for (id, deadline_ms) in lingering {
            let Some(conn) = self.get_mut(id) else {
                continue;
            };
            match conn.closing {
                Some((reason, CloseMode::AfterFlush)) if now_ms >= deadline_ms => {
                    debug!("{id}: output not drained within the linger time");
                    conn.read_ready = false;
                    // Escalate: `close` ignores a second request of the same mode.
                    self.close_now_overriding(id, reason);
                }
                Some((_, CloseMode::AfterFlush)) => keep.push((id, deadline_ms)),
                _ => {}
            }
        }
        self.lingering.extend(keep);
    }

    /// Remove a connection's queued output from the accounting (it is being closed).
    pub(crate) fn discard_output(&mut self, slot: usize) -> usize {
        let Some(conn) = self.slab.get_mut(slot) else {
            return 0;
        };
        let dropped = conn.out.len();
        self.flush_list.remove(slot);
        self.out_bytes_total -= conn.out_bytes;
        conn.out.clear();
        conn.out_bytes = 0;
        let id = ConnId::new(slot as u32, conn.generation);
        for (_, note) in conn.notes.drain(..) {
            self.notes_due.push((id, conn.kind, note, false));
        }
        conn.ack_check_at_ms = None;
        dropped
    }
}

impl<K: ConnKind> ConnTable<K> {
    /// Queue `bytes` for `to`; false when they were not queued (connection gone or closing,
    /// or closed for passing an output limit).
    fn queue(&mut self, to: ConnId, bytes: Bytes) -> bool {
        let now_ms = self.now_ms;
        let limits = self.limits;
        let Some(conn) = self
            .slab
            .get_mut(to.slot as usize)
            .filter(|conn| conn.generation == to.generation)
        else {
            // The recipient is gone; what that means (nothing, or an offline copy) is the
            // protocol's business, so it is not counted as a drop here.
            return false;
        };
        if conn.closing.is_some_and(|(_, mode)| mode == CloseMode::Now) {
            return false;
        }
        if bytes.is_empty() {
            return true;
        }
        let queued_bytes = conn.out_bytes + bytes.len();
        let over_soft_too_long = queued_bytes > limits.soft_bytes_max
            && conn
                .soft_over_since_ms
                .is_some_and(|since| now_ms.saturating_sub(since) >= limits.soft_duration_ms);
        if queued_bytes > limits.hard_bytes_max || over_soft_too_long {
            let peer = conn.peer;
            // Once a second at most, with a count: 200 slow members closed at once would
            // otherwise be 200 lines.
            self.slow_consumer_log.warn(now_ms, || {
                format!(
                    "closing {peer} ({to}): slow consumer, {queued_bytes} bytes queued (hard limit {}, soft {} for {} ms)",
                    limits.hard_bytes_max, limits.soft_bytes_max, limits.soft_duration_ms
                )
            });
            self.stats.slow_consumer_closes += 1;
            if queued_bytes > limits.hard_bytes_max {
                self.stats.slow_consumer_hard_closes += 1;
            } else {
                self.stats.slow_consumer_soft_closes += 1;
            }
            self.stats.drops += 1;
            self.close(to, CloseReason::SlowConsumer, CloseMode::Now);
            return false;
        }
        if queued_bytes > limits.soft_bytes_max && conn.soft_over_since_ms.is_none() {
            conn.soft_over_since_ms = Some(now_ms);
        }
        conn.out_bytes = queued_bytes;
        conn.queued_bytes_total += bytes.len() as u64;
        self.out_bytes_total += bytes.len();
        conn.out.push_back(bytes);
        self.stats.frames_out += 1;
        if let Some(counters) = conn.kind.counters(&mut self.stats) {
            counters.frames_out += 1;
        }
        self.mark_flush(to.slot as usize);
        true
    }
}

impl<K: ConnKind> Outbox for ConnTable<K> {
    fn send(&mut self, to: ConnId, bytes: Bytes) {
        self.queue(to, bytes);
    }

    fn send_notify(&mut self, to: ConnId, bytes: Bytes, note: u64) -> bool {
        if !self.queue(to, bytes) {
            return false;
        }
        if let Some(conn) = self.get_mut(to) {
            let end = conn.queued_bytes_total;
            conn.notes.push_back((end, note));
            if end <= conn.written_bytes_total {
                // An empty buffer: nothing to write, but it is reported in order, after the
                // acknowledgement of what was written before it, which the flush checks.
                self.mark_flush(to.slot as usize);
            }
        }
        true
    }

    fn close(&mut self, id: ConnId, reason: CloseReason, mode: CloseMode) {
        let now_ms = self.now_ms;
        let linger_ms = self.close_linger_ms;
        let Some(conn) = self.get_mut(id) else {
            return;
        };
        let mode = match (conn.closing, mode) {
            // Already closing at once: nothing can soften that.
            (Some((_, CloseMode::Now)), _) => return,
            (Some(_), CloseMode::AfterFlush) => return,
            (_, mode) => mode,
        };
        conn.closing = Some((reason, mode));
        let drained = !conn.has_output();
        match mode {
            CloseMode::Now => self.push_close(id.slot as usize),
            CloseMode::AfterFlush if drained => self.push_close(id.slot as usize),
            CloseMode::AfterFlush => {
                self.lingering.push((id, now_ms.saturating_add(linger_ms)));
                self.mark_flush(id.slot as usize);
            }
        }
    }

    fn count_rejected(&mut self) {
        self.stats.rejected += 1;
    }

    fn count_frame_in(&mut self, from: ConnId) {
        self.stats.frames_in += 1;
        if let Some(conn) = self.slab.get(from.slot as usize) {
            if let Some(counters) = conn.kind.counters(&mut self.stats) {
                counters.frames_in += 1;
            }
        }
    }

    fn mark_identified(&mut self, id: ConnId) {
        if let Some(conn) = self.get_mut(id) {
            conn.identified = true;
        }
    }

    fn resume_input(&mut self, id: ConnId) {
        if self.get_mut(id).is_some() {
            self.resumed.push(id);
        }
    }
}

/// The connections with output to flush, as one bit per slot: each at most once, walked in
/// slot order from any start.
#[derive(Debug, Default)]
pub(crate) struct FlushSet {
    words: Vec<u64>,
    len: usize,
    /// Where the next walk starts (a slot; past the end wraps to 0).
    cursor: usize,
}

impl FlushSet {
    pub(crate) fn insert(&mut self, slot: usize) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & bit == 0 {
            self.words[word] |= bit;
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, slot: usize) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if let Some(bits) = self.words.get_mut(word) {
            if *bits & bit != 0 {
                *bits &= !bit;
                self.len -= 1;
            }
        }
    }

    pub(crate) fn contains(&self, slot: usize) -> bool {
        self.words
            .get(slot / 64)
            .is_some_and(|bits| bits & (1u64 << (slot % 64)) != 0)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The order the next walk takes.
    #[cfg(test)]
    pub(crate) fn order(&self) -> Vec<usize> {
        let mut walk = self.from(self.cursor);
        std::iter::from_fn(|| walk.next_in(self)).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slots in the set, in slot order from `start`, wrapping around once. Each word is
    /// read when the walk reaches it, so a slot inserted ahead of the walk is met in it, and
    /// one inserted behind it waits for the next walk.
    fn from(&self, start: usize) -> FlushWalk {
        let words = self.words.len();
        let start = if start >= words * 64 { 0 } else { start };
        FlushWalk {
            start_word: start / 64,
            start_bit: start % 64,
            step: 0,
            words,
            bits: None,
        }
    }
}

/// A walk over a [`FlushSet`]; it reads the set afresh at every word, so it holds no borrow
/// (see [`FlushWalk::next_in`]).
struct FlushWalk {
    start_word: usize,
    start_bit: usize,
    /// Words visited so far; the start word is visited twice (its bits from the start, then
    /// those before it).
    step: usize,
    words: usize,
    /// What is left of the current word.
    bits: Option<(usize, u64)>,
}

impl FlushWalk {
    fn next_in(&mut self, set: &FlushSet) -> Option<usize> {
        loop {
            if let Some((word, bits)) = self.bits.as_mut() {
                if *bits != 0 {
                    let bit = bits.trailing_zeros() as usize;
                    *bits &= *bits - 1;
                    let slot = *word * 64 + bit;
                    if set.contains(slot) {
                        return Some(slot);
                    }
                    continue;
                }
            }
            if self.words == 0 || self.step > self.words {
                return None;
            }
            let word = (self.start_word + self.step) % self.words;
            let mut bits = set.words.get(word).copied().unwrap_or(0);
            if self.step == 0 {
                bits &= !0u64 << self.start_bit;
            } else if self.step == self.words {
                bits &= (1u64 << self.start_bit).wrapping_sub(1);
            }
            self.step += 1;
            self.bits = Some((word, bits));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_pair() -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        let budget = crate::limits::TokenBucket::full(
            crate::limits::RateLimit {
                rate_per_s: 0,
                burst: 0,
            },
            0,
        );
        let conn = Conn::new(
            TcpStream::from_std(accepted),
            0,
            ProtocolKind::Room,
            peer,
            budget,
        );
        (conn, client)
    }

    /// A server connection speaking TLS with a fresh self-signed certificate, and a rustls
    /// client session over the other end (driven by hand, sans-io as the server is).
    fn tls_pair() -> (Conn, std::net::TcpStream, rustls::ClientConnection) {
        use std::sync::Arc;
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        #[allow(deprecated)] // ring, as the server's provider (see Cargo.toml)
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (mut conn, client) = conn_pair();
        conn.tls = Some(Box::new(
            TlsConn::new(&Arc::new(server_config)).expect("server session"),
        ));
        let session = rustls::ClientConnection::new(
            Arc::new(client_config),
            "localhost".try_into().expect("name"),
        )
        .expect("client session");
        (conn, client, session)
    }

    /// Move whatever the client has to send, and whatever arrived for it, once.
    fn client_io(client: &mut std::net::TcpStream, session: &mut rustls::ClientConnection) {
        while session.wants_write() {
            session.write_tls(client).expect("client write");
        }
        client
            .set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .expect("timeout");
        if session.wants_read() {
            match session.read_tls(client) {
                Ok(_) => {
                    session.process_new_packets().expect("client process");
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => panic!("client read: {err}"),
            }
        }
    }

    #[test]
    fn tls_output_waits_for_the_handshake_and_stays_counted_until_its_records_are_written() {
        let (mut conn, mut client, mut session) = tls_pair();
        let mut scratch = [0u8; 4096];
        // A prompt queued at accept, as ROOM's `alias?`: not written before the handshake.
        conn.out.push_back(Bytes::from_static(b"alias?"));
        conn.out_bytes += 6;
        let (outcome, written, _) = conn.flush(64, usize::MAX);
        assert_eq!((outcome, written), (IoOutcome::WouldBlock, 0));
        assert!(
            conn.write_ready,
            "the handshake's end lists it for a flush, no edge needed"
        );
        assert_eq!(conn.out_bytes, 6, "still under the output limits");

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while session.is_handshaking() || conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
        {
            assert!(std::time::Instant::now() < deadline, "handshake stuck");
            client_io(&mut client, &mut session);
            conn.read_ready = true;
            let _ = conn.read_once(&mut scratch);
            assert!(
                conn.read_buf.is_empty(),
                "no plaintext from handshake records"
            );
            if conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
                let (_, written, _) = conn.flush(64, usize::MAX);
                assert_eq!(written, 0, "only handshake records before its end");
                assert_eq!(conn.out_bytes, 6);
            }
        }
        assert!(conn.tls.as_mut().expect("tls").take_completed());

        // Now the prompt goes out, and leaves the queue once its record is written.
        let (outcome, written, _) = conn.flush(64, usize::MAX);
        assert_eq!((outcome, written), (IoOutcome::Continue, 6));
        assert_eq!(conn.out_bytes, 0);
        assert!(!conn.has_output());
        let mut got = Vec::new();
        while got.len() < 6 {
            assert!(std::time::Instant::now() < deadline, "prompt never arrived");
            client_io(&mut client, &mut session);
            let mut buf = [0u8; 64];
            if let Ok(n) = session.reader().read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got, b"alias?");

        // And the client's plaintext lands in the read buffer the service reads.
        session
            .writer()
            .write_all(b"bob")
            .expect("client plaintext");
        client_io(&mut client, &mut session);
        while conn.read_buf.is_empty() {
            assert!(std::time::Instant::now() < deadline, "input never arrived");
            conn.read_ready = true;
            let _ = conn.read_once(&mut scratch);
        }
        assert_eq!(conn.read_buf.as_ref(), b"bob");
    }

    #[test]
    fn only_a_full_read_or_a_hangup_keeps_a_connection_read_ready() {
        assert!(
            !stays_read_ready(5, 16, false),
            "short: the queue was empty"
        );
        assert!(stays_read_ready(16, 16, false), "full: more may wait");
        assert!(
            stays_read_ready(5, 16, true),
            "the FIN or error waits behind"
        );
    }

    /// Wait (bounded) until `conn`'s socket has `bytes` to read, so one read sees them all.
    fn wait_readable(conn: &Conn, bytes: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut peek = vec![0u8; bytes + 1];
        while conn.stream.peek(&mut peek).unwrap_or(0) < bytes {
            assert!(std::time::Instant::now() < deadline, "data never arrived");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_short_read_ends_readiness_unless_a_hangup_was_seen() {
        let (mut conn, mut client) = conn_pair();
        let mut scratch = [0u8; 16];
        client.write_all(b"hello").expect("write");
        wait_readable(&conn, 5);
        conn.read_ready = true;
        assert_eq!(conn.read_once(&mut scratch), (IoOutcome::Continue, 5));
        assert!(!conn.read_ready, "a short read saves the WouldBlock read");

        // The FIN came with the data: the read after it must happen, and return EOF.
        client.write_all(b"bye").expect("write");
        client
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        wait_readable(&conn, 3);
        conn.read_ready = true;
        conn.hangup_seen = true;
        assert_eq!(conn.read_once(&mut scratch), (IoOutcome::Continue, 3));
        assert!(conn.read_ready, "a hangup seen keeps reading");
        assert_eq!(conn.read_once(&mut scratch).0, IoOutcome::Closed);
        assert_eq!(conn.read_buf.as_ref(), b"hellobye");
    }

    #[test]
    fn a_read_that_fills_the_buffer_keeps_readiness() {
        let (mut conn, mut client) = conn_pair();
        let mut scratch = [0u8; 8];
        client.write_all(b"12345678").expect("write");
        wait_readable(&conn, 8);
        conn.read_ready = true;
        assert_eq!(conn.read_once(&mut scratch), (IoOutcome::Continue, 8));
        assert!(conn.read_ready, "more may wait behind a full read");
        // Nothing did: the next read says so, and readiness ends there as before.
        assert_eq!(conn.read_once(&mut scratch).0, IoOutcome::WouldBlock);
    }

    #[test]
    fn emptied_queues_and_large_read_buffers_give_their_memory_back() {
        let (mut conn, _client) = conn_pair();
        for _ in 0..512 {
            conn.out.push_back(Bytes::from_static(b"a notice"));
            conn.out_bytes += 8;
        }
        conn.read_buf.extend_from_slice(&[0u8; 16 * 1024]);
        conn.read_buf.clear();
        assert!(conn.out.capacity() >= 512);

        let (outcome, written, _) = conn.flush(64, usize::MAX);
        assert_eq!((outcome, written), (IoOutcome::Continue, 512 * 8));
        conn.release_idle_memory();
        assert_eq!(conn.out.capacity(), 0);
        assert_eq!(conn.read_buf.capacity(), 0);
    }

    #[test]
    fn the_flush_set_walks_its_slots_in_order_from_any_start_once_each() {
        let mut set = FlushSet::default();
        for slot in [3, 64, 65, 130, 0, 64] {
            set.insert(slot);
        }
        assert_eq!(set.len(), 5, "a slot is in the set once");
        let walk_from = |set: &FlushSet, start: usize| {
            let mut walk = set.from(start);
            std::iter::from_fn(|| walk.next_in(set)).collect::<Vec<_>>()
        };
        assert_eq!(walk_from(&set, 0), [0, 3, 64, 65, 130]);
        assert_eq!(walk_from(&set, 4), [64, 65, 130, 0, 3]);
        assert_eq!(walk_from(&set, 65), [65, 130, 0, 3, 64]);
        assert_eq!(
            walk_from(&set, 131),
            [0, 3, 64, 65, 130],
            "after the last: wraps"
        );
        assert_eq!(
            walk_from(&set, 10_000),
            [0, 3, 64, 65, 130],
            "past the end: from 0"
        );
        set.remove(64);
        set.remove(64);
        assert_eq!(set.len(), 4);
        assert_eq!(walk_from(&set, 64), [65, 130, 0, 3]);
        // Removed while walking: not met; inserted ahead of the walk in a later word: met.
        let mut walk = set.from(0);
        assert_eq!(walk.next_in(&set), Some(0));
        set.remove(3);
        set.insert(129);
        let rest: Vec<usize> = std::iter::from_fn(|| walk.next_in(&set)).collect();
        assert_eq!(rest, [65, 129, 130]);
        let empty = FlushSet::default();
        assert_eq!(walk_from(&empty, 0), Vec::<usize>::new());
    }

    /// The switchboard queues a lobby message for its own protocol's members first and for the
    /// others' after: the flush must not follow that order, or one protocol's members would
    /// always be written first. They are written in slot order, from a start that moves on
    /// every turn.
    #[test]
    fn output_goes_out_in_slot_order_from_a_start_that_moves_every_turn() {
        let limits = OutputLimits {
            hard_bytes_max: 1 << 30,
            soft_bytes_max: 1 << 30,
            soft_duration_ms: 1000,
        };
        let mut table = ConnTable::new(limits, 1000);
        let mut ids = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (conn, client) = conn_pair();
            let slot = table.slab.insert(conn);
            ids.push(ConnId::new(slot as u32, 0));
            clients.push(client);
        }
        let slots: Vec<usize> = ids.iter().map(|id| id.slot as usize).collect();
        let mut firsts = Vec::new();
        for _ in 0..4 {
            // Queued in reverse slot order, as a protocol's own members after another's.
            for &id in ids.iter().rev() {
                table.send(id, Bytes::from_static(b"a lobby line"));
            }
            let order = table.flush_list.order();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, slots, "every connection once");
            let turn = order
                .iter()
                .position(|&slot| slot == sorted[0])
                .expect("in it");
            let rotated: Vec<usize> = order[turn..]
                .iter()
                .chain(&order[..turn])
                .copied()
                .collect();
            assert_eq!(rotated, slots, "slot order, wrapping around: {order:?}");
            firsts.push(order[0]);
            table.flush_pending(64, usize::MAX);
            assert!(table.flush_list.is_empty());
        }
        firsts.sort_unstable();
        firsts.dedup();
        assert_eq!(
            firsts.len(),
            4,
            "a different connection first on every turn"
        );
    }

    #[test]
    fn a_turns_write_budget_defers_the_rest_to_the_front_of_the_next_turn() {
        let limits = OutputLimits {
            hard_bytes_max: 1 << 30,
            soft_bytes_max: 1 << 30,
            soft_duration_ms: 1000,
        };
        let mut table = ConnTable::new(limits, 1000);
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (conn, client) = conn_pair();
            let slot = table.slab.insert(conn);
            ids.push(ConnId::new(slot as u32, 0));
            clients.push(client);
        }
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        for &id in &ids {
            for _ in 0..4 {
                table.send(id, chunk.clone());
            }
        }
        // 40 KiB: the first connection takes it all (its writes stop at the budget, within
        // one vectored write's worth), the other two wait.
        let written = table.flush_pending(1, 40 * 1024);
        assert_eq!(written, 48 * 1024);
        let order = table.flush_list.order();
        let slots: Vec<usize> = ids.iter().map(|id| id.slot as usize).collect();
        assert_eq!(
            order,
            [slots[1], slots[2], slots[0]],
            "the unserved go first"
        );
        // A new output for a waiting connection does not list it twice.
        table.send(ids[1], chunk.clone());
        assert_eq!(table.flush_list.len(), 3);
        let written = table.flush_pending(64, usize::MAX);
        assert_eq!(written, 16 * 1024 + 5 * 16 * 1024 + 4 * 16 * 1024);
        assert!(table.flush_list.is_empty());
        assert_eq!(table.out_bytes_total, 0);
    }

    #[test]
    fn a_frame_in_is_counted_for_its_senders_protocol() {
        let limits = OutputLimits {
            hard_bytes_max: 1 << 20,
            soft_bytes_max: 1 << 20,
            soft_duration_ms: 1000,
        };
        let mut table = ConnTable::new(limits, 1000);
        let (room, _room_client) = conn_pair();
        let (mut ccm, _ccm_client) = conn_pair();
        ccm.kind = ProtocolKind::Ccm;
        let room = ConnId::new(table.slab.insert(room) as u32, 0);
        let ccm = ConnId::new(table.slab.insert(ccm) as u32, 0);
        table.count_frame_in(room);
        table.count_frame_in(ccm);
        table.count_frame_in(ccm);
        assert_eq!(table.stats.frames_in, 3);
        let by = |kind: ProtocolKind| table.stats.by_protocol[kind.index()].frames_in;
        assert_eq!(
            (
                by(ProtocolKind::Room),
                by(ProtocolKind::Ccm),
                by(ProtocolKind::Bin24)
            ),
            (1, 2, 0)
        );
    }

    #[test]
    fn small_buffers_and_queues_in_use_are_kept() {
        let (mut conn, _client) = conn_pair();
        conn.read_buf.extend_from_slice(b"partial fr");
        conn.out.push_back(Bytes::from_static(b"queued"));
        for _ in 0..100 {
            conn.out.push_back(Bytes::from_static(b"more"));
        }
        conn.release_idle_memory();
        assert_eq!(conn.read_buf.as_ref(), b"partial fr");
        assert_eq!(conn.out.len(), 101, "a queue in use is never dropped");

        let mut small = conn_pair().0;
        small.read_buf.extend_from_slice(b"x");
        small.read_buf.clear();
        let capacity = small.read_buf.capacity();
        small.release_idle_memory();
        assert_eq!(
            small.read_buf.capacity(),
            capacity,
            "a small buffer is reused"
        );
    }
}
