//! Switchboard: a single-threaded, edge-triggered chat server speaking five wire protocols.
//!
//! Module map and dependency rules (they point one way; keep them so):
//!
//! ```text
//! reactor  ->  protocol  ->  chat/store  ->  timer
//!                  \-> protocol/<name>/codec  (depends on `bytes` only)
//! protocol services  ->  hub  ->  protocol/<name>/codec, chat  (wiring pending)
//! ```
//!
//! - [`reactor`] is the only code that touches mio or socket2 and the only code that reads the
//!   clock. It owns the sockets, the connection slab, the output queues and the loop phases.
//! - [`protocol`] holds one folder per wire protocol (ROOM, BIN24, CCM, MATOU, OCM), and the
//!   seam the reactor drives them through: [`protocol::StreamService`] and
//!   [`protocol::DatagramService`], [`protocol::ProtocolKind`] and [`protocol::UdpKind`] with
//!   their ports, and [`protocol::registry::Services`], the one place a kind picks a service.
//!   `codec.rs` is pure decode/encode over `BytesMut`/`Bytes`; `service.rs` is the protocol's
//!   server logic (ROOM's, the first and smallest, is in its `mod.rs`), sans-io: bytes and
//!   `now_ms` in, effects out through the [`protocol::Outbox`] trait (and
//!   [`protocol::DatagramOut`] for UDP). Everything there is testable with fabricated bytes and
//!   fabricated time.
//! - [`hub`] is the switchboard between the protocols: one lobby and one name space, its own
//!   vocabulary of plain-data events, and each event rendered once per recipient wire form.
//!   It uses the protocols' codecs, never their services; sans-io like them (wiring pending).
//! - [`chat`] holds what the protocols share (per-connection state maps, member lists).
//! - [`store`] is BIN24's durable offline store: a storage thread over redb, reached from the
//!   protocol only through a trait (`bin24::StoreSink`) and answering with events the reactor
//!   hands back, so BIN24's rules are tested without a disk.
//! - [`cluster`] is cluster mode (`--cluster`): two threads own the Redis connections and
//!   exchange the hub's lobby events with the other nodes, handing them back through a waker
//!   as the store does.
//! - [`timer`] is the hashed timer wheel; it is given `now`, it never reads the clock.
//! - [`limits`] is the arithmetic of the anti-abuse limits (token buckets, per-IP counts,
//!   handshake deadlines); like the timer it is given `now`; the reactor applies it.
//! - [`config`] holds every port, limit and timer, with its default and its unit in its name.
//! - [`stats`] and [`histogram`] are the plain counters the reactor keeps; [`metrics`] renders
//!   them in the Prometheus text format for the admin port, only when asked.

pub mod chat;
pub mod cluster;
pub mod config;
pub mod histogram;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod reactor;
pub mod stats;
pub mod store;
pub mod timer;
pub mod tls;
