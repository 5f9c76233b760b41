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

use crate::limits::{Admission, FanoutBudget, PerIpCounts, RateLimit};
use crate::protocol::{
    Clock, Context, DatagramDrop, DatagramOut, DatagramSent, DatagramService, Outbox,
};
use crate::timer::{TimerKey, TimerWheel};

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// A peer not heard from for this long is no longer relayed to, and forgotten.
    pub idle_timeout_ms: u64,
    /// A peer whose datagrams fail to send this many times in a row is forgotten.
    pub send_failures_max: u32,
    pub peers_max: usize,
    /// Most peers from one IP address: one host with many ports must not fill the table.
    /// 0: no limit.
    pub peers_per_ip_max: u32,
    /// Datagrams relayed per second, counted in sends (one datagram to 99 peers is 99): in
    /// total, and per sending address. A datagram the budget cannot cover goes to no one.
    pub sends_per_s_max: u64,
    pub sends_per_source_per_s_max: u64,
    /// Larger datagrams are dropped, not relayed.
    pub datagram_bytes_max: usize,
    pub timer_tick_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            idle_timeout_ms: 600_000,
            send_failures_max: 3,
            peers_max: 1_000,
            peers_per_ip_max: 100,
            sends_per_s_max: 250_000,
            sends_per_source_per_s_max: 20_000,
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
    per_ip: PerIpCounts,
    budget: FanoutBudget<SocketAddr>,
}

/// A send budget whose bucket holds one second of its rate, and at least one whole fan-out to
/// `fanout_max` recipients (a smaller bucket could never cover the largest room's datagram).
pub(crate) fn fanout_limit(rate_per_s: u64, fanout_max: usize) -> RateLimit {
    RateLimit {
        rate_per_s,
        burst: rate_per_s.max(fanout_max as u64),
    }
}

impl RelayService {
    pub fn new(config: RelayConfig, now_ms: u64) -> Self {
        let timers = TimerWheel::new(config.timer_tick_ms, WHEEL_SLOT_COUNT, now_ms);
        let budget = FanoutBudget::new(
            fanout_limit(config.sends_per_s_max, config.peers_max),
            fanout_limit(config.sends_per_source_per_s_max, config.peers_max),
            // Every source that can be relayed is a peer.
            config.peers_max,
            now_ms,
        );
        RelayService {
            config,
            peers: Slab::new(),
            by_address: HashMap::new(),
            timers,
            unreachable: Vec::new(),
            per_ip: PerIpCounts::default(),
            budget,
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
            None if self.peers.len() >= self.config.peers_max
                || !self.per_ip.try_add(from.ip(), self.config.peers_per_ip_max) =>
            {
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
        if let Some(peer) = self.peers.get_mut(sender) {
            peer.last_seen_ms = now_ms;
        }
        // Idle peers not yet forgotten are counted too: an upper bound, never an underestimate.
        let sends = self.peers.len().saturating_sub(1) as u64;
        if self.budget.admit(from, sends, now_ms) != Admission::Admitted {
            out.count_dropped_in(DatagramDrop::FanoutBudget);
            return;
        }
        out.count_datagram_in();
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
            self.per_ip.remove(peer.address.ip());
        }
    }
}

/// The stage-1 relay: every datagram to every other recent peer.
impl DatagramService for RelayService {
    fn on_datagram<D: DatagramOut>(&mut self, datagram: &[u8], cx: &Context, out: &mut D) {
        self.on_datagram(cx.peer, datagram, cx.now_ms, out);
    }

    fn on_timers<O: Outbox, D: DatagramOut>(
        &mut self,
        clock: &Clock,
        _out: &mut O,
        _datagrams: &mut D,
    ) {
        self.on_timers(clock.now_ms);
    }

    fn next_deadline_ms(&self) -> Option<u64> {
        self.next_deadline_ms()
    }
}
