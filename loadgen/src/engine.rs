//! The TCP scenarios' engine: the part of a run every client-per-connection protocol (BIN24,
//! CCM, MATOU) drives the same way, over a per-protocol [`Wire`] part.
//!
//! The engine owns what a connection does between the loop's events and the protocol: the
//! readiness kept in userland, the non-blocking connect, the read loop with its budget and its
//! look at the clock for due sends, the flush of every connection that has bytes waiting, and
//! the [`Reactor`] the driver turns. The protocol says what a client sends first, how its bytes
//! decode, what a decoded message means for the bookkeeping, how its sends are flushed and
//! accounted, what its phases do with the clock, and how a connection fails.
//!
//! A protocol's `Run` implements [`Wire`] and is a [`Reactor`] by that alone.

use std::io;

use crate::driver::{Loop, Phases, Reactor, BYTES_PER_SEND_CHECK, READ_BUDGET_BYTES};
use crate::sockio::{read_chunk, Chunk, Conn};
use crate::stats::ErrorKind;

/// Where a client's connection stands, as far as the engine is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Nothing to drive: not connected yet, failed or closed.
    Down,
    /// A non-blocking connect in flight.
    Connecting,
    /// Connected, waiting for the server to confirm the client.
    Greeting,
    /// Confirmed by the server: a read error now is a lost connection, not a failed join.
    Joined,
}

/// A protocol's part of a TCP scenario: what the engine cannot know.
pub trait Wire: Phases {
    /// What a queued message carries for its send accounting.
    type Tag: Copy;
    /// One decoded message from the server.
    type Message;

    /// The loop and client `u`'s connection, borrowed together.
    fn conn(&mut self, u: usize) -> Option<(&mut Loop, &mut Conn<Self::Tag>)>;
    fn link(&self, u: usize) -> Link;
    /// The connect completed: queue what the client sends first and move it to `Greeting`.
    fn on_connected(&mut self, u: usize) -> io::Result<()>;
    /// The next whole message in client `u`'s read bytes, if there is one.
    fn decode(&mut self, u: usize) -> Result<Option<Self::Message>, String>;
    /// What the message means for the run: all bookkeeping, and any answer queued.
    fn on_message(&mut self, u: usize, message: Self::Message, now_us: u64);
    /// The socket has nothing more to read for now.
    fn on_drained(&mut self, _u: usize) {}
    /// EOF or a read error; an error unless the protocol expected it (see [`lost`]).
    fn on_server_close(&mut self, u: usize, why: String) {
        lost(self, u, why);
    }
    /// Counts the error, closes the connection and takes the client out of the run.
    fn fail(&mut self, u: usize, kind: ErrorKind, why: String);
    /// Writes client `u`'s pending bytes and accounts for the messages that went out; called
    /// only when it is connected, writable and has bytes pending.
    fn flush(&mut self, u: usize);
    /// An event on a socket that is no client's connection (the lobby's OCM UDP sockets, which
    /// share the loop with its TCP clients); `index` is the token minus one.
    fn on_other_event(&mut self, _index: usize, _readable: bool, _writable: bool) {}
}

/// A connection the server ended unexpectedly: a read error once joined, a failed connect
/// before.
pub fn lost<W: Wire + ?Sized>(w: &mut W, u: usize, why: String) {
    let kind = if w.link(u) == Link::Joined {
        ErrorKind::Read
    } else {
        ErrorKind::Connect
    };
    w.fail(u, kind, why);
}

/// Flushes every connection marked dirty.
pub fn flush_dirty<W: Wire>(w: &mut W) {
    for u in w.io_mut().dirty.take() {
        flush_ready(w, u);
    }
}

/// Whether some client still has messages queued (not written completely).
pub fn any_queued<W: Wire + ?Sized>(w: &mut W) -> bool {
    let mut u = 0;
    while let Some((_, conn)) = w.conn(u) {
        if !conn.queue.is_empty() {
            return true;
        }
        u += 1;
    }
    false
}

/// Closes every client's connection at the end of the run; returns the messages that were
/// still queued.
pub fn close_all<W: Wire + ?Sized>(w: &mut W) -> u64 {
    let (mut u, mut unsent) = (0, 0);
    while let Some((io, conn)) = w.conn(u) {
        unsent += conn.close(io.poll.registry());
        u += 1;
    }
    unsent
}

/// Hands client `u` to the protocol's flush when there is something to write and a socket to
/// take it: connected (greeting or joined), writable, bytes pending. Otherwise the next
/// writable edge, or the next byte queued, calls again.
fn flush_ready<W: Wire>(w: &mut W, u: usize) {
    if matches!(w.link(u), Link::Greeting | Link::Joined)
        && w.conn(u).is_some_and(|(_, conn)| {
            conn.writable && conn.stream.is_some() && conn.out.has_pending()
        })
    {
        w.flush(u);
    }
}

/// Acts on client `u`'s readiness according to where its connection stands.
fn drive<W: Wire>(w: &mut W, u: usize) {
    match w.link(u) {
        Link::Down => {}
        Link::Connecting => {
            let Some((_, conn)) = w.conn(u) else {
                return;
            };
            if !(conn.readable || conn.writable) {
                return;
            }
            match conn.is_connected() {
                Ok(true) => match w.on_connected(u) {
                    Ok(()) => {
                        if let Some((io, conn)) = w.conn(u) {
                            // The server may have written already; its edge is spent.
                            conn.readable = true;
                            io.dirty.mark(u);
                        }
                    }
                    Err(e) => w.fail(u, ErrorKind::Connect, format!("connect: {e}")),
                },
                Ok(false) => return,
                Err(e) => w.fail(u, ErrorKind::Connect, format!("connect: {e}")),
            }
            drive(w, u);
        }
        Link::Greeting | Link::Joined => {
            if w.conn(u).is_some_and(|(_, conn)| conn.readable) {
                read(w, u);
            }
            flush_ready(w, u);
        }
    }
}

/// Reads until a short read or `WouldBlock` (see [`read_chunk`]) or the budget, handing every
/// whole message to the protocol.
fn read<W: Wire>(w: &mut W, u: usize) {
    let mut budget = READ_BUDGET_BYTES;
    loop {
        let Some((io, conn)) = w.conn(u) else {
            return;
        };
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        if budget == 0 {
            io.still_ready.push(u);
            return;
        }
        let (n, emptied) =
            match read_chunk(stream, &mut io.read_buf, &mut conn.readable, conn.hangup) {
                Chunk::Bytes(n) => (n, false),
                Chunk::Emptied(n) => (n, true),
                Chunk::Drained => {
                    w.on_drained(u);
                    return;
                }
                ended => {
                    w.on_server_close(u, ended.why());
                    return;
                }
            };
        budget = budget.saturating_sub(n);
        conn.inbuf.extend_from_slice(&io.read_buf[..n]);
        // One clock read per read: every message in this chunk arrived together.
        let now_us = io.clock.now_us();
        loop {
            if !matches!(w.link(u), Link::Greeting | Link::Joined) {
                return;
            }
            match w.decode(u) {
                Ok(Some(message)) => w.on_message(u, message, now_us),
                Ok(None) => break,
                Err(e) => {
                    w.fail(u, ErrorKind::Protocol, format!("framing lost: {e}"));
                    return;
                }
            }
        }
        let Some((io, conn)) = w.conn(u) else {
            return;
        };
        if conn.out.has_pending() {
            io.dirty.mark(u); // the answers to what was read
        }
        io.bytes_since_send_check += n;
        if io.bytes_since_send_check >= BYTES_PER_SEND_CHECK {
            w.send_due();
        }
        if emptied {
            // As `Drained`: the socket has no more (CCM decodes a whole burst on it).
            w.on_drained(u);
            return;
        }
    }
}

impl<W: Wire> Reactor for W {
    fn on_event(&mut self, u: usize, readable: bool, writable: bool, hangup: bool) {
        let Some((_, conn)) = self.conn(u) else {
            self.on_other_event(u, readable, writable);
            return;
        };
        conn.readable |= readable;
        conn.writable |= writable;
        conn.hangup |= hangup;
        drive(self, u);
    }
    fn end_turn(&mut self) {
        for u in std::mem::take(&mut self.io_mut().still_ready) {
            drive(self, u);
        }
        flush_dirty(self);
    }
}
