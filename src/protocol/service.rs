//! The seam between the reactor and the protocols: one trait every stream (TCP) service
//! implements, one every datagram (UDP) service implements, and the context each call gets.
//!
//! Every entry point has the same shape whatever the protocol, so the reactor dispatches
//! without knowing any protocol's rules, and a protocol with nothing to do at some event
//! leaves the default in place. The methods are generic over the [`Outbox`] (and
//! [`DatagramOut`]): the reactor picks a service with one `match` per event, and inside the
//! service every send (a fan-out's per-member `send`) is a static call.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use super::{CloseMode, CloseReason, ConnId, DatagramOut, HubOutcome, Outbox, ProtocolKind};
use crate::hub::{Endpoint, OcmMemberId, User};
use crate::store::{StoreError, StoreMetrics};

/// What time it is, for a call that is not about one peer (timers, completions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// The reactor's monotonic clock, in ms since the server started: every deadline.
    pub now_ms: u64,
    /// The wall clock, Unix time in ms, for answers that carry a date (CCM's HTTP `Date`).
    /// The reactor reads the wall clock once and adds its monotonic clock, so a clock step
    /// cannot disturb anything.
    pub unix_ms: u64,
}

impl Clock {
    /// The wall clock in whole seconds.
    pub fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }

    /// This clock, for a call about `peer`.
    pub fn with_peer(self, peer: SocketAddr) -> Context {
        Context {
            now_ms: self.now_ms,
            unix_ms: self.unix_ms,
            peer,
        }
    }
}

/// What every call about one peer is given: the time (as [`Clock`]) and the peer's address
/// (a connection's remote end, or a datagram's source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub now_ms: u64,
    pub unix_ms: u64,
    pub peer: SocketAddr,
}

impl Context {
    pub fn clock(&self) -> Clock {
        Clock {
            now_ms: self.now_ms,
            unix_ms: self.unix_ms,
        }
    }

    /// The wall clock in whole seconds.
    pub fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }
}

/// A protocol served over TCP connections. The reactor calls it; it answers through the
/// [`Outbox`] it is handed and never sees a socket or reads a clock.
pub trait StreamService {
    /// Whether the reactor enforces `--handshake-timeout-ms` on this protocol's connections
    /// (until the service calls [`Outbox::mark_identified`]), calling
    /// [`StreamService::on_handshake_timeout`] when it passes. A protocol that keeps its own
    /// deadline, with its own flag and close, says no.
    fn reactor_handshake_deadline(&self) -> bool {
        false
    }

    /// `id` was accepted from `cx.peer`.
    fn on_accept<O: Outbox>(&mut self, id: ConnId, cx: &Context, out: &mut O);

    /// Bytes arrived for `id` (one read's worth, appended to what was left unconsumed). What
    /// the service leaves in `input` is kept for the next call.
    fn on_data<O: Outbox>(&mut self, id: ConnId, input: &mut BytesMut, cx: &Context, out: &mut O);

    /// The socket had nothing more to read and `input` still holds unconsumed bytes (CCM: one
    /// read burst is one message without Content-Length).
    fn on_burst_end<O: Outbox>(
        &mut self,
        _id: ConnId,
        _input: &mut BytesMut,
        _cx: &Context,
        _out: &mut O,
    ) {
    }

    /// `id` is gone, for `reason`, whoever asked for it. Called once per accepted connection.
    fn on_close<O: Outbox>(&mut self, id: ConnId, reason: CloseReason, cx: &Context, out: &mut O);

    /// `id` did not identify within the reactor's handshake deadline (`timeout_ms`). The
    /// default closes it at once; a protocol with an error to say first says it.
    fn on_handshake_timeout<O: Outbox>(
        &mut self,
        id: ConnId,
        _timeout_ms: u64,
        _cx: &Context,
        out: &mut O,
    ) {
        out.close(id, CloseReason::HandshakeTimeout, CloseMode::Now);
    }

    /// A buffer queued with [`Outbox::send_notify`] was acknowledged by the peer's TCP
    /// (`acked`), or never will be. A [`Clock`], not a [`Context`]: the report may come after
    /// the connection is gone.
    fn on_notify<O: Outbox>(
        &mut self,
        _id: ConnId,
        _note: u64,
        _acked: bool,
        _clock: &Clock,
        _out: &mut O,
    ) {
    }

    /// Run what is due by `clock.now_ms`.
    fn on_timers<O: Outbox>(&mut self, _clock: &Clock, _out: &mut O) {}

    /// The hub decided, during another service's call, that this service must act
    /// ([`HubOutcome::service`] names it). The registry hands it over once that call returns.
    fn on_hub<O: Outbox>(&mut self, _outcome: HubOutcome, _clock: &Clock, _out: &mut O) {}

    /// The earliest time [`StreamService::on_timers`] has work, if any.
    fn next_deadline_ms(&self) -> Option<u64> {
        None
    }

    /// The reactor was woken by work this service handed off the loop's thread (BIN24's
    /// store): take what has completed.
    fn on_wake<O: Outbox>(&mut self, _clock: &Clock, _out: &mut O) {}

    /// Whether reading input must wait now (backpressure: work handed off is piling up). When
    /// it says yes the service knows input is held back from `clock.now_ms`.
    fn hold_input(&mut self, _clock: &Clock) -> bool {
        false
    }

    /// Whether input held back must still wait; the reactor resumes reading once it is not.
    fn input_held(&self) -> bool {
        false
    }

    /// Bytes this service holds for clients beyond the output queues (stored frames), for the
    /// heap trim after a burst.
    fn held_bytes(&self) -> usize {
        0
    }

    /// The offline store's gauges and counters, for a service that has one.
    fn store_metrics(&self) -> Option<StoreMetrics> {
        None
    }

    /// The server is stopping: make durable what must survive.
    fn shut_down(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `id` takes part in the switchboard now, as `name` of `protocol` (signed in, or a ROOM
/// member past its alias): in the lobby.
pub(crate) fn enter_lobby<O: Outbox>(protocol: ProtocolKind, id: ConnId, name: Bytes, out: &mut O) {
    if let Some(link) = out.hub() {
        let user = User {
            protocol,
            endpoint: Endpoint::Conn(id),
            name,
        };
        link.hub.enter_lobby(user, link.queue);
    }
}

/// `id` no longer takes part in the switchboard (it is closing, or signed off): out of the
/// lobby and its name free, now rather than when the close completes.
pub(crate) fn leave_hub<O: Outbox>(id: ConnId, out: &mut O) {
    if let Some(link) = out.hub() {
        link.hub.disconnect(id, link.queue);
    }
}

/// The cluster answered one of `id`'s look-ups; `locating` counts those still out (`None`: the
/// connection is gone). Once none is, the input held back behind them is read again.
pub(crate) fn located<O: Outbox>(id: ConnId, locating: Option<&mut u32>, out: &mut O) {
    if let Some(locating) = locating {
        *locating = locating.saturating_sub(1);
        if *locating == 0 {
            out.resume_input(id);
        }
    }
}

/// A protocol served over one UDP socket: answers go out through the [`DatagramOut`] of
/// that socket.
pub trait DatagramService {
    /// A datagram arrived from `cx.peer`.
    fn on_datagram<D: DatagramOut>(&mut self, datagram: &[u8], cx: &Context, out: &mut D);

    /// Run what is due by `clock.now_ms`, with the socket to send on (`datagrams`) and the
    /// connection table (`out`), for a service that also has TCP connections (OCM runs all
    /// its timers here, where both are at hand).
    fn on_timers<O: Outbox, D: DatagramOut>(
        &mut self,
        _clock: &Clock,
        _out: &mut O,
        _datagrams: &mut D,
    ) {
    }

    /// The earliest time [`DatagramService::on_timers`] has work, if any.
    fn next_deadline_ms(&self) -> Option<u64> {
        None
    }

    /// Send `bytes`, a lobby delivery of the switchboard, to this service's member `to` (OCM:
    /// a member of the lobby room), through `out`, its socket.
    fn on_hub_delivery<D: DatagramOut>(&mut self, _to: OcmMemberId, _bytes: &[u8], _out: &mut D) {}
}
