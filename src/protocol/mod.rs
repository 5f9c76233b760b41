//! The protocols' server logic and codecs, sans-io.
//!
//! A protocol service is driven by the reactor through one seam, [`StreamService`] (TCP) or
//! [`DatagramService`] (UDP): a connection was accepted, bytes arrived, a connection is gone,
//! time passed, a datagram arrived; each call gets a [`Context`] (the time, the wall clock for
//! dated answers, the peer). It answers through an [`Outbox`]: bytes to queue for a
//! connection, or a connection to close (or a [`DatagramOut`]). It never sees a socket or a
//! clock, so every rule is testable with fabricated bytes and `now_ms` values. Which protocols
//! exist and on which ports is [`ProtocolKind`] and [`UdpKind`]; [`registry::Services`] holds
//! the enabled services and is the one place that picks a service by kind.

use std::net::SocketAddr;

use bytes::Bytes;

pub use crate::chat::ConnId;

pub mod bin24;
pub mod ccm;
mod kind;
pub mod matou;
pub mod ocm;
pub mod registry;
pub mod room;
mod service;
pub mod switch;
pub mod testing;
pub mod web;

pub use kind::{ProtocolKind, UdpKind};
pub(crate) use service::{enter_lobby, leave_hub, located};
pub use service::{Clock, Context, DatagramService, StreamService};
pub use switch::{
    HubLink, HubOutcome, HubQueue, LobbyGate, RemoteSender, Switched, SwitchedDatagrams,
    HELD_INPUT_BYTES_MAX,
};

/// Why a connection is closed. Logged, and counted in the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side cleanly (EOF: a FIN).
    PeerClosed,
    /// The peer reset the connection (a program that closes with unread data makes its
    /// kernel send a reset), or a write found it gone.
    PeerReset,
    /// A socket error other than a reset.
    IoError,
    /// The peer sent something the protocol cannot accept; framing can no longer be trusted.
    ProtocolError,
    /// The peer did not finish its handshake (alias, identification) in time.
    HandshakeTimeout,
    /// The peer did not answer a keepalive or an acknowledgement in time.
    Timeout,
    /// The output queue passed its hard limit, or stayed over its soft limit too long.
    SlowConsumer,
    /// The same user connected again; the older connection gives way.
    Replaced,
    /// The protocol finished its exchange (an answer, then close).
    Done,
    /// The server is shutting down.
    Shutdown,
    /// The peer sent faster than its input budget allows (`--input-bytes-per-s-max`).
    InputRate,
}

impl CloseReason {
    /// Every reason, in [`CloseReason::index`] order: the statistics count closes per reason.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::PeerClosed,
        CloseReason::PeerReset,
        CloseReason::IoError,
        CloseReason::ProtocolError,
        CloseReason::HandshakeTimeout,
        CloseReason::Timeout,
        CloseReason::SlowConsumer,
        CloseReason::Replaced,
        CloseReason::Done,
        CloseReason::Shutdown,
        CloseReason::InputRate,
    ];
    pub const COUNT: usize = CloseReason::ALL.len();

    /// This reason's place in [`CloseReason::ALL`] (and in per-reason counters).
    pub fn index(self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::PeerReset => 1,
            CloseReason::IoError => 2,
            CloseReason::ProtocolError => 3,
            CloseReason::HandshakeTimeout => 4,
            CloseReason::Timeout => 5,
            CloseReason::SlowConsumer => 6,
            CloseReason::Replaced => 7,
            CloseReason::Done => 8,
            CloseReason::Shutdown => 9,
            CloseReason::InputRate => 10,
        }
    }

    /// A metric label value: lowercase, no spaces.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::PeerReset => "peer_reset",
            CloseReason::IoError => "io_error",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Replaced => "replaced",
            CloseReason::Done => "done",
            CloseReason::Shutdown => "shutdown",
            CloseReason::InputRate => "input_rate",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer closed",
            CloseReason::PeerReset => "peer reset",
            CloseReason::IoError => "i/o error",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::Done => "exchange done",
            CloseReason::Shutdown => "server shutdown",
            CloseReason::InputRate => "input rate",
        }
    }
}

/// How to close: at once (queued output is dropped), or once the queued output has been
/// written (an error answer, then close), bounded by the reactor's linger limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    Now,
    AfterFlush,
}

/// Where a protocol's effects go. The reactor implements it over real sockets; tests
/// implement it by recording.
///
/// Sending to a connection that is gone, or closing at once ([`CloseMode::Now`]), is a no-op:
/// protocols need not track the reactor's view of liveness, only their
/// own. A connection closing after flush still takes output, which is then flushed before it
/// closes.
pub trait Outbox {
    /// Queue `bytes` for `to`. A fan-out passes clones of one `Bytes` (a reference count,
    /// not a copy).
    fn send(&mut self, to: ConnId, bytes: Bytes);

    /// Queue `bytes` for `to` like [`Outbox::send`], and report `note` back to the protocol once
    /// the peer's TCP has acknowledged every byte of them (`acked` true), or once the connection
    /// has closed without that (false). Notes of one connection are reported in the order they
    /// were queued. BIN24 counts a stored frame as delivered only after its acknowledgement.
    /// Returns false, and reports nothing, when the bytes could not be queued (the connection
    /// is gone or closing).
    fn send_notify(&mut self, to: ConnId, bytes: Bytes, note: u64) -> bool;

    /// Ask for `id` to be closed. The protocol is told through its `on_close` when it is gone,
    /// whoever asked for it.
    fn close(&mut self, id: ConnId, reason: CloseReason, mode: CloseMode);

    /// Count a rejected input (malformed, oversized, out of order) in the statistics.
    fn count_rejected(&mut self) {}

    /// Count one frame (message, chunk) received from `from`, in the statistics (in total and
    /// for `from`'s protocol).
    fn count_frame_in(&mut self, _from: ConnId) {}

    /// `id` has identified its user (BIN24's first valid frame, CCM's accepted name, MATOU's
    /// name taken): the reactor's handshake deadline no longer applies to it.
    fn mark_identified(&mut self, _id: ConnId) {}

    /// `id`'s service left input unread while it waited (a name claim in a cluster) and now
    /// reads again: the reactor hands it what is buffered, without waiting for more bytes.
    fn resume_input(&mut self, _id: ConnId) {}

    /// The switchboard's hub and the queue its answers go to, for this call; `None` under
    /// `--isolate` (and where no hub is wired, as in a service's own tests). See
    /// [`switch`].
    fn hub(&mut self) -> Option<HubLink<'_>> {
        None
    }
}

/// What became of one datagram handed to [`DatagramOut::send_to`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramSent {
    /// The kernel took it.
    Sent,
    /// The socket's send buffer was full: the datagram was dropped (and counted) rather than
    /// blocking the loop. Not the peer's fault.
    Dropped,
    /// The send failed for this destination (unreachable, refused, invalid): protocols count
    /// these per peer and forget a peer after several in a row.
    Failed,
}

/// Why an incoming datagram was thrown away; counted in the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramDrop {
    /// Too short, sizes that do not add up, or over the size limit.
    Malformed,
    /// The room it names does not exist.
    UnknownRoom,
    /// The token is not one of that room's.
    BadToken,
    /// The token is right but the datagram came from another IP address than the token's.
    WrongAddress,
    /// A limit (peers, rooms, the table of rate-tracked sources) is full.
    OverLimit,
    /// Its source address sent faster than `--udp-datagrams-per-source-per-s-max`.
    RateLimited,
    /// Relaying it would pass the fan-out budget (`--udp-sends-per-s-max` in total,
    /// `--udp-sends-per-source-per-s-max` for its source): it is sent to no one.
    FanoutBudget,
}

impl DatagramDrop {
    /// Every reason, in the order of [`DatagramDrop::index`].
    pub const ALL: [DatagramDrop; 7] = [
        DatagramDrop::Malformed,
        DatagramDrop::UnknownRoom,
        DatagramDrop::BadToken,
        DatagramDrop::WrongAddress,
        DatagramDrop::OverLimit,
        DatagramDrop::RateLimited,
        DatagramDrop::FanoutBudget,
    ];
    pub const COUNT: usize = DatagramDrop::ALL.len();

    /// A dense index, for counters kept per reason.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The reason as a word: in the statistics line, and as a metric label value.
    pub fn label(self) -> &'static str {
        self.as_str()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DatagramDrop::Malformed => "malformed",
            DatagramDrop::UnknownRoom => "unknown_room",
            DatagramDrop::BadToken => "bad_token",
            DatagramDrop::WrongAddress => "wrong_address",
            DatagramDrop::OverLimit => "over_limit",
            DatagramDrop::RateLimited => "rate_limited",
            DatagramDrop::FanoutBudget => "fanout_budget",
        }
    }
}

/// Where a datagram protocol's output goes: one UDP socket. The reactor sends at once,
/// without blocking; tests record.
pub trait DatagramOut {
    /// Send `bytes` to `to` now. Never blocks: a full send buffer drops the datagram.
    fn send_to(&mut self, to: SocketAddr, bytes: &[u8]) -> DatagramSent;

    /// Count an incoming datagram that was thrown away.
    fn count_dropped_in(&mut self, why: DatagramDrop);

    /// Count one datagram accepted (relayed, or acted on).
    fn count_datagram_in(&mut self) {}

    /// The switchboard's hub, as [`Outbox::hub`], for a datagram protocol's calls.
    fn hub(&mut self) -> Option<HubLink<'_>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_indexes_its_own_counter_and_labels_are_distinct() {
        for (at, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), at, "{reason:?}");
            assert!(reason
                .label()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        let mut labels: Vec<_> = CloseReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), CloseReason::COUNT);
    }

    #[test]
    fn every_datagram_drop_indexes_its_own_counter_and_labels_are_distinct() {
        for (at, why) in DatagramDrop::ALL.iter().enumerate() {
            assert_eq!(why.index(), at, "{why:?}");
        }
        let mut labels: Vec<_> = DatagramDrop::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DatagramDrop::COUNT);
    }
}
