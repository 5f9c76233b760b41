//! UDP sockets: datagrams are read in a budgeted burst and handed to their protocol one by
//! one; sends go out at once and never wait (a full send buffer drops the datagram), up to
//! the socket's send budget for the turn; beyond it they wait in a bounded queue for the next
//! turns, so one fan-out to a large room cannot hold the loop.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;

use log::debug;
use mio::net::UdpSocket;

use crate::limits::SourceBuckets;
use crate::metrics::UdpSocketMetrics;
use crate::protocol::UdpKind;
use crate::protocol::{DatagramDrop, DatagramOut, DatagramSent};
use crate::stats::Stats;

/// One socket's counters, kept beside the socket so a send can count while the connection
/// table is lent to a protocol; summed into [`Stats`] when reported.
#[derive(Clone, Debug, Default)]
pub(crate) struct UdpCounters {
    pub datagrams_in: u64,
    pub datagrams_accepted: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub dropped_in: u64,
    /// `dropped_in` by reason, indexed by `DatagramDrop::index`.
    pub dropped_by_reason: [u64; DatagramDrop::COUNT],
    pub send_dropped: u64,
    pub send_failed: u64,
    pub recv_errors: u64,
    /// Sends put off to a later turn by the per-turn send budget (each also counts once sent,
    /// dropped or failed).
    pub sends_deferred: u64,
}

impl UdpCounters {
    pub(crate) fn add_to(&self, stats: &mut Stats) {
        stats.datagrams_in += self.datagrams_in;
        stats.datagrams_accepted += self.datagrams_accepted;
        stats.datagrams_out += self.datagrams_out;
        stats.bytes_in += self.bytes_in;
        stats.bytes_out += self.bytes_out;
        stats.datagrams_dropped_in += self.dropped_in;
        stats.rejected += self.dropped_in;
        stats.datagrams_send_dropped += self.send_dropped;
        stats.datagrams_send_failed += self.send_failed;
        stats.datagrams_sends_deferred += self.sends_deferred;
        for (total, count) in stats
            .datagrams_dropped_by_reason
            .iter_mut()
            .zip(self.dropped_by_reason)
        {
            *total += count;
        }
    }

    pub(crate) fn count_dropped_in(&mut self, why: DatagramDrop) {
        self.dropped_in += 1;
        self.dropped_by_reason[why.index()] += 1;
    }

    /// This socket's counters for the metrics, labelled `socket`.
    pub(crate) fn metrics(&self, socket: String) -> UdpSocketMetrics {
        UdpSocketMetrics {
            socket,
            datagrams_received: self.datagrams_in,
            datagrams_accepted: self.datagrams_accepted,
            datagrams_sent: self.datagrams_out,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            dropped_in: self.dropped_by_reason,
            send_dropped: self.send_dropped,
            send_failed: self.send_failed,
            sends_deferred: self.sends_deferred,
        }
    }
}

pub(crate) struct UdpEntry {
    pub socket: UdpSocket,
    pub kind: UdpKind,
    pub addr: SocketAddr,
    /// Edge-triggered: set by an event, cleared only by WouldBlock. A socket left ready after
    /// its per-turn budget is read again next turn without waiting for an edge.
    pub ready: bool,
    pub counters: UdpCounters,
    /// Per-source rate limit: a token bucket per source address.
    pub sources: SourceBuckets<SocketAddr>,
    /// Sends over this turn's budget, in order, for the next turns.
    pub deferred: DeferredSends,
}

/// Datagrams to send in a later turn, and what is left of this turn's send budget.
#[derive(Debug, Default)]
pub(crate) struct DeferredSends {
    queue: VecDeque<(SocketAddr, Bytes)>,
    /// Most datagrams waiting; beyond it a send is dropped (counted as `send_dropped`).
    queue_max: usize,
    /// Sends left in this turn.
    pub sends_left: usize,
}

impl DeferredSends {
    pub(crate) fn new(queue_max: usize) -> Self {
        DeferredSends {
            queue: VecDeque::new(),
            queue_max,
            sends_left: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops what still waits (the shutdown's grace is over), counting it as `send_dropped`:
    /// nothing leaves uncounted. Returns how many were dropped.
    pub(crate) fn discard(&mut self, counters: &mut UdpCounters) -> usize {
        let dropped = self.queue.len();
        counters.send_dropped += dropped as u64;
        self.queue.clear();
        dropped
    }

    /// Starts a turn with `budget` sends, and sends what waits from earlier turns first.
    pub(crate) fn start_turn(
        &mut self,
        budget: usize,
        socket: &UdpSocket,
        counters: &mut UdpCounters,
    ) {
        self.sends_left = budget;
        while self.sends_left > 0 {
            let Some((to, bytes)) = self.queue.pop_front() else {
                break;
            };
            self.sends_left -= 1;
            send_now(socket, counters, to, &bytes);
        }
        if self.queue.is_empty() && self.queue.capacity() > 1024 {
            self.queue = VecDeque::new();
        }
    }
}

fn send_now(
    socket: &UdpSocket,
    counters: &mut UdpCounters,
    to: SocketAddr,
    bytes: &[u8],
) -> DatagramSent {
    loop {
        match socket.send_to(bytes, to) {
            Ok(_) => {
                counters.datagrams_out += 1;
                counters.bytes_out += bytes.len() as u64;
                return DatagramSent::Sent;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // A full buffer: dropping beats blocking every other client on one socket.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                counters.send_dropped += 1;
                return DatagramSent::Dropped;
            }
            Err(err) => {
                counters.send_failed += 1;
                debug!("send_to {to}: {err}");
                return DatagramSent::Failed;
            }
        }
    }
}

/// What one `recv_from` gave.
pub(crate) enum Received {
    Datagram(usize, SocketAddr),
    WouldBlock,
    /// A transient error (an ICMP report for an earlier send, an interrupted call): go on.
    Skip,
}

impl UdpEntry {
    pub(crate) fn recv(&mut self, buf: &mut [u8]) -> Received {
        match self.socket.recv_from(buf) {
            Ok((len, from)) => {
                self.counters.datagrams_in += 1;
                self.counters.bytes_in += len as u64;
                Received::Datagram(len, from)
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.ready = false;
                Received::WouldBlock
            }
            Err(err) => {
                if err.kind() != io::ErrorKind::Interrupted {
                    self.counters.recv_errors += 1;
                    debug!("{} recv_from: {err}", self.kind.name());
                }
                Received::Skip
            }
        }
    }
}

/// A protocol's view of one UDP socket.
pub(crate) struct UdpOut<'a> {
    pub socket: &'a UdpSocket,
    pub counters: &'a mut UdpCounters,
    pub deferred: &'a mut DeferredSends,
    /// The datagram last put off: a fan-out puts off the same bytes for every member it has
    /// left, and they share one copy.
    pub last_deferred: Option<Bytes>,
}

impl<'a> UdpOut<'a> {
    pub(crate) fn new(entry: &'a mut UdpEntry) -> Self {
        UdpOut {
            socket: &entry.socket,
            counters: &mut entry.counters,
            deferred: &mut entry.deferred,
            last_deferred: None,
        }
    }
}

impl DatagramOut for UdpOut<'_> {
    /// At once while the turn's budget lasts and nothing waits (so each member's datagrams
    /// keep their order); otherwise queued for the next turns and reported sent (what becomes
    /// of it then is counted, not reported: a failure there is not held against the peer), or
    /// dropped when the queue is full.
    fn send_to(&mut self, to: SocketAddr, bytes: &[u8]) -> DatagramSent {
        let deferred = &mut *self.deferred;
        if deferred.sends_left > 0 && deferred.queue.is_empty() {
            deferred.sends_left -= 1;
            return send_now(self.socket, self.counters, to, bytes);
        }
        if deferred.queue.len() >= deferred.queue_max {
            self.counters.send_dropped += 1;
            return DatagramSent::Dropped;
        }
        let shared = match &self.last_deferred {
            Some(last) if last.as_ref() == bytes => last.clone(),
            _ => {
                let copy = Bytes::copy_from_slice(bytes);
                self.last_deferred = Some(copy.clone());
                copy
            }
        };
        deferred.queue.push_back((to, shared));
        self.counters.sends_deferred += 1;
        DatagramSent::Sent
    }

    fn count_dropped_in(&mut self, why: DatagramDrop) {
        self.counters.count_dropped_in(why);
        debug!("datagram dropped: {why:?}");
    }

    fn count_datagram_in(&mut self) {
        self.counters.datagrams_accepted += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_over_the_turns_budget_wait_in_order_and_share_one_copy() {
        let server = UdpSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let member = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind member");
        member
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let to = member.local_addr().expect("addr");
        let mut counters = UdpCounters::default();
        let mut deferred = DeferredSends::new(4);
        deferred.start_turn(2, &server, &mut counters);
        {
            let mut out = UdpOut {
                socket: &server,
                counters: &mut counters,
                deferred: &mut deferred,
                last_deferred: None,
            };
            for n in 0..7u8 {
                let text = if n < 5 {
                    b"same".to_vec()
                } else {
                    vec![b'0' + n]
                };
                let sent = out.send_to(to, &text);
                // 2 now, 4 put off, and the queue is full for the last one.
                let expected = if n < 6 {
                    DatagramSent::Sent
                } else {
                    DatagramSent::Dropped
                };
                assert_eq!(sent, expected, "send {n}");
            }
        }
        assert_eq!((counters.datagrams_out, counters.sends_deferred), (2, 4));
        assert_eq!(counters.send_dropped, 1);
        let first = &deferred.queue[0].1;
        assert_eq!(
            first.as_ptr(),
            deferred.queue[2].1.as_ptr(),
            "one copy shared"
        );
        // Next turn: the waiting ones go first, then new sends wait behind what is left.
        deferred.start_turn(3, &server, &mut counters);
        assert_eq!(counters.datagrams_out, 5);
        assert_eq!(deferred.sends_left, 0);
        deferred.start_turn(3, &server, &mut counters);
        assert_eq!(counters.datagrams_out, 6);
        assert!(deferred.is_empty());
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        for _ in 0..6 {
            let (len, _) = member.recv_from(&mut buf).expect("a datagram");
            got.push(buf[..len].to_vec());
        }
        assert_eq!(got[..5], vec![b"same".to_vec(); 5][..]);
        assert_eq!(got[5], b"5");

        // What still waits when the shutdown's grace is over is dropped and counted.
        deferred.sends_left = 0;
        {
            let mut out = UdpOut {
                socket: &server,
                counters: &mut counters,
                deferred: &mut deferred,
                last_deferred: None,
            };
            for _ in 0..3 {
                assert_eq!(out.send_to(to, b"late"), DatagramSent::Sent);
            }
        }
        let dropped_before = counters.send_dropped;
        assert_eq!(deferred.discard(&mut counters), 3);
        assert_eq!(counters.send_dropped, dropped_before + 3);
        assert!(deferred.is_empty());
    }
}
