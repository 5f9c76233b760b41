//! The stage-1 relay (the seed's first stage), sans-io: every datagram is forwarded unchanged
//! to every other peer heard from within the idle limit. No rooms, no tokens: a peer is an
//! address that has sent something.
//!
//! The document frames a datagram as `usernamelen u8 | username | message` and the original
//! stage-1 client sends plain text; relaying the bytes verbatim serves both.

use std::collections::HashMap;
use std::net::SocketAddr;

use log::debug;
use slab::Slab;

use crate::protocol::{DatagramDrop, DatagramOut, DatagramSent};
use crate::timer::{TimerKey, TimerWheel};

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// A peer not heard from for this long is no longer relayed to, and forgotten.
    pub idle_timeout_ms: u64,
    /// A peer whose datagrams fail to send this many times in a row is forgotten.
    pub send_failures_max: u32,
    pub peers_max: usize,
    /// Larger datagrams are dropped, not relayed.
    pub datagram_bytes_max: usize,
    pub timer_tick_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            idle_timeout_ms: 600_000,
            send_failures_max: 3,
            peers_max: 10_000,
            datagram_bytes_max: 4096,
            timer_tick_ms: 10,
        }
    }
}

/// See the service's wheel: 10 ms ticks, about 41 s per revolution.
const WHEEL_SLOT_COUNT: usize = 4096;

#[derive(Debug)]
struct Peer {
    address: SocketAddr,
    last_seen_ms: u64,
    send_failures: u32,
    idle: TimerKey,
}

pub struct RelayService {
    config: RelayConfig,
    peers: Slab<Peer>,
    by_address: HashMap<SocketAddr, usize>,
    timers: TimerWheel<usize>,
    /// Peers to forget once the current fan-out is over; kept for its allocation.
    unreachable: Vec<usize>,
}

impl RelayService {
    pub fn new(config: RelayConfig, now_ms: u64) -> Self {
        let timers = TimerWheel::new(config.timer_tick_ms, WHEEL_SLOT_COUNT, now_ms);
        RelayService {
            config,
            peers: Slab::new(),
            by_address: HashMap::new(),
            timers,
            unreachable: Vec::new(),
        }
    }

    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.next_deadline_ms()
    }

    /// A datagram arrived from `from`: it becomes (or stays) a peer, and the datagram goes to
    /// every other live peer.
    pub fn on_datagram<D: DatagramOut>(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now_ms: u64,
        out: &mut D,
    ) {
        if datagram.len() > self.config.datagram_bytes_max {
            out.count_dropped_in(DatagramDrop::Malformed);
            return;
        }
        let sender = match self.by_address.get(&from) {
            Some(&key) => key,
            None if self.peers.len() >= self.config.peers_max => {
                out.count_dropped_in(DatagramDrop::OverLimit);
                return;
            }
            None => {
                let key = self.peers.vacant_key();
                let due_ms = now_ms.saturating_add(self.config.idle_timeout_ms);
                let idle = self.timers.insert(due_ms, key);
                self.peers.insert(Peer {
                    address: from,
                    last_seen_ms: now_ms,
                    send_failures: 0,
                    idle,
                });
                self.by_address.insert(from, key);
                debug!("relay: new peer {from}");
                key
            }
        };
        out.count_datagram_in();
        if let Some(peer) = self.peers.get_mut(sender) {
            peer.last_seen_ms = now_ms;
        }
        let idle_ms = self.config.idle_timeout_ms;
        for (key, peer) in self.peers.iter_mut() {
            // The timer forgets an idle peer at its tick; until then it is skipped here, so
            // "sent within the idle limit" holds to the millisecond.
            if key == sender || now_ms.saturating_sub(peer.last_seen_ms) >= idle_ms {
                continue;
            }
            match out.send_to(peer.address, datagram) {
                DatagramSent::Sent => peer.send_failures = 0,
                // A full socket buffer says nothing about this peer.
                DatagramSent::Dropped => {}
                DatagramSent::Failed => {
                    peer.send_failures = peer.send_failures.saturating_add(1);
                    if peer.send_failures >= self.config.send_failures_max {
                        self.unreachable.push(key);
                    }
                }
            }
        }
        while let Some(key) = self.unreachable.pop() {
            debug!("relay: forgetting an unreachable peer");
            self.forget(key);
        }
    }

    /// Forgets idle peers.
    pub fn on_timers(&mut self, now_ms: u64) {
        while let Some(key) = self.timers.poll_expired(now_ms) {
            let idle_ms = self.config.idle_timeout_ms;
            let Some(peer) = self.peers.get_mut(key) else {
                continue;
            };
            let due_ms = peer.last_seen_ms.saturating_add(idle_ms);
            if now_ms >= due_ms {
                debug!("relay: forgetting idle peer {}", peer.address);
                self.forget(key);
            } else {
                peer.idle = self.timers.insert(due_ms, key);
            }
        }
    }

    fn forget(&mut self, key: usize) {
        if let Some(peer) = self.peers.try_remove(key) {
            self.timers.cancel(peer.idle);
            self.by_address.remove(&peer.address);
        }
    }
}
