//! Server statistics: plain counters on the reactor thread, logged as one line.

use std::fmt;

use crate::protocol::{CloseReason, DatagramDrop, ProtocolKind};

/// One TCP protocol's share of the connection and traffic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtocolStats {
    pub connections_open: u64,
    pub connections_accepted: u64,
    /// Closes by reason, indexed by `CloseReason::index`.
    pub closes: [u64; CloseReason::COUNT],
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_closed: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `read` calls on connections, and vectored `write` calls: with frames out, they show
    /// how well output is batched (frames per write) and where kernel time goes.
    pub read_calls: u64,
    pub write_calls: u64,
    /// Output buffers (messages, notices) queued for a connection and thrown away because it
    /// closed before they could be written (including a slow consumer's whole queue).
    pub drops: u64,
    /// Connections closed for exceeding an output limit.
    pub slow_consumer_closes: u64,
    /// Inputs rejected as malformed, oversized or out of order.
    pub rejected: u64,
    /// Times accepting paused for lack of descriptors (EMFILE, ENFILE).
    pub accept_pauses: u64,
    /// UDP: datagrams received, those a protocol accepted (relayed or acted on), those sent;
    /// received ones thrown away (malformed, unknown room, wrong token or address; also in
    /// `rejected`), sends dropped on a full socket buffer, and sends that failed.
    pub datagrams_in: u64,
    pub datagrams_accepted: u64,
    pub datagrams_out: u64,
    pub datagrams_dropped_in: u64,
    pub datagrams_send_dropped: u64,
    pub datagrams_send_failed: u64,
    /// Sends put off to a later turn by `--udp-sends-per-turn-max`.
    pub datagrams_sends_deferred: u64,
    /// `datagrams_dropped_in` by reason, indexed by [`DatagramDrop::index`].
    pub datagrams_dropped_by_reason: [u64; DatagramDrop::ALL.len()],
    /// Limit closes: connections closed for not identifying within their handshake deadline
    /// (every TCP protocol), connections refused at accept for passing the per-IP limit, and
    /// connections closed for sending beyond their input budget.
    pub handshake_timeouts: u64,
    /// Connections still in their handshake closed at the connection cap, oldest first, to
    /// admit a newcomer (also counted in `handshake_timeouts`: their handshake ran out of time
    /// early).
    pub handshake_evictions: u64,
    pub connections_refused_per_ip: u64,
    pub input_rate_closes: u64,
    /// Slow-consumer closes split by the limit that closed them: the hard limit at once, or the
    /// soft limit held too long (together `slow_consumer_closes`).
    pub slow_consumer_hard_closes: u64,
    pub slow_consumer_soft_closes: u64,
    /// The counters above split by TCP protocol (UDP sockets keep their own), for the metrics,
    /// indexed by [`ProtocolKind::index`].
    pub by_protocol: [ProtocolStats; ProtocolKind::COUNT],
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections open={} accepted={} closed={} | frames in={} out={} | bytes in={} out={} \
             | read_calls={} write_calls={} | drops={} slow_consumer_closes={} rejected={} \
             accept_pauses={} | datagrams in={} accepted={} out={} dropped_in={} \
             send_dropped={} send_failed={} deferred={} ({}) | handshake_timeouts={} evicted={} \
             refused_per_ip={} input_rate_closes={}",
            self.connections_open,
            self.connections_accepted,
            self.connections_closed,
            self.frames_in,
            self.frames_out,
            self.bytes_in,
            self.bytes_out,
            self.read_calls,
            self.write_calls,
            self.drops,
            self.slow_consumer_closes,
            self.rejected,
            self.accept_pauses,
            self.datagrams_in,
            self.datagrams_accepted,
            self.datagrams_out,
            self.datagrams_dropped_in,
            self.datagrams_send_dropped,
            self.datagrams_send_failed,
            self.datagrams_sends_deferred,
            DroppedByReason(&self.datagrams_dropped_by_reason),
            self.handshake_timeouts,
            self.handshake_evictions,
            self.connections_refused_per_ip,
            self.input_rate_closes
        )
    }
}

/// `reason=count` for every reason, space separated.
struct DroppedByReason<'a>(&'a [u64; DatagramDrop::ALL.len()]);

impl fmt::Display for DroppedByReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, why) in DatagramDrop::ALL.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", why.as_str(), self.0[why.index()])?;
        }
        Ok(())
    }
}
