//! UDP sockets: datagrams are read in a budgeted burst and handed to their protocol one by
//! one; sends go out at once and never wait (a full send buffer drops the datagram).

use std::io;
use std::net::SocketAddr;

use log::debug;
use mio::net::UdpSocket;

use super::services::UdpKind;
use crate::limits::SourceBuckets;
use crate::metrics::UdpSocketMetrics;
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
        for (total, count) in stats
            .datagrams_dropped_by_reason
            .iter_mut()
            .zip(self.dropped_by_reason)
        {
            *total += count;
        }
    }

    /// Every send tried, whatever became of it: what the per-turn send budget counts.
    pub(crate) fn sends_attempted(&self) -> u64 {
        self.datagrams_out + self.send_dropped + self.send_failed
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
}

impl DatagramOut for UdpOut<'_> {
    fn send_to(&mut self, to: SocketAddr, bytes: &[u8]) -> DatagramSent {
        loop {
            match self.socket.send_to(bytes, to) {
                Ok(_) => {
                    self.counters.datagrams_out += 1;
                    self.counters.bytes_out += bytes.len() as u64;
                    return DatagramSent::Sent;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // A full buffer: dropping beats blocking every other client on one socket.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.counters.send_dropped += 1;
                    return DatagramSent::Dropped;
                }
                Err(err) => {
                    self.counters.send_failed += 1;
                    debug!("send_to {to}: {err}");
                    return DatagramSent::Failed;
                }
            }
        }
    }

    fn count_dropped_in(&mut self, why: DatagramDrop) {
        self.counters.count_dropped_in(why);
        debug!("datagram dropped: {why:?}");
    }

    fn count_datagram_in(&mut self) {
        self.counters.datagrams_accepted += 1;
    }
}

/// Stands in for OCM's chat socket when OCM is disabled: nothing to send to.
pub(crate) struct NoDatagrams;

impl DatagramOut for NoDatagrams {
    fn send_to(&mut self, _to: SocketAddr, _bytes: &[u8]) -> DatagramSent {
        DatagramSent::Dropped
    }

    fn count_dropped_in(&mut self, _why: DatagramDrop) {}
}
