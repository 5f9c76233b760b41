//! The arithmetic of the limits a hostile client cannot pass: token buckets for input rates,
//! a bounded table of per-source datagram buckets, per-IP connection counts and the
//! handshake deadline queue. Pure: every call is given `now_ms`, nothing reads the clock or
//! touches a socket, so each rule is tested with fabricated time. The reactor applies them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;

use crate::chat::ConnId;

/// A token bucket: `rate_per_s` units a second, at most `burst` saved up. It starts full, so a
/// newcomer may send its first burst at once.
///
/// Credit is kept in thousandths of a unit (units/s times ms), so a rate of a few units a
/// second is exact at millisecond steps without floating point.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    credit_milli: u64,
    last_ms: u64,
}

/// A bucket's rate and size. A rate of 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub rate_per_s: u64,
    pub burst: u64,
}

impl RateLimit {
    pub fn is_unlimited(self) -> bool {
        self.rate_per_s == 0
    }

    fn capacity_milli(self) -> u64 {
        self.burst.saturating_mul(1000)
    }
}

impl TokenBucket {
    pub fn full(limit: RateLimit, now_ms: u64) -> Self {
        TokenBucket {
            credit_milli: limit.capacity_milli(),
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, limit: RateLimit, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.credit_milli = self
            .credit_milli
            .saturating_add(elapsed_ms.saturating_mul(limit.rate_per_s))
            .min(limit.capacity_milli());
    }

    /// Take `amount` units at `now_ms`. False when the bucket cannot cover it: the taker is
    /// over its rate (the credit is then left at zero, so a flood that continues stays over).
    pub fn take(&mut self, limit: RateLimit, amount: u64, now_ms: u64) -> bool {
        if limit.is_unlimited() {
            return true;
        }
        self.refill(limit, now_ms);
        let cost_milli = amount.saturating_mul(1000);
        match self.credit_milli.checked_sub(cost_milli) {
            Some(left) => {
                self.credit_milli = left;
                true
            }
            None => {
                self.credit_milli = 0;
                false
            }
        }
    }

    /// Whether `amount` units could be taken at `now_ms`, taking nothing. A shared bucket is
    /// checked this way before the taker's own is charged, so a refusal by one does not cost
    /// credit in the other.
    pub fn covers(&mut self, limit: RateLimit, amount: u64, now_ms: u64) -> bool {
        if limit.is_unlimited() {
            return true;
        }
        self.refill(limit, now_ms);
        self.credit_milli >= amount.saturating_mul(1000)
    }

    /// Whether the bucket would be full at `now_ms`: it then holds no more information than a
    /// new one, and may be forgotten.
    pub fn is_full_at(&self, limit: RateLimit, now_ms: u64) -> bool {
        let mut copy = *self;
        copy.refill(limit, now_ms);
        copy.credit_milli >= limit.capacity_milli()
    }
}

/// What [`SourceBuckets::admit`] decided about one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The source is over its rate.
    RateLimited,
    /// The table of sources is full of active ones: a new source cannot be tracked, so its
    /// datagram is dropped rather than letting memory grow.
    TableFull,
}

/// One token bucket per source (a datagram's source address), at most `sources_max` of them.
/// Buckets that are full again are forgotten when room is needed: a full bucket is what a new
/// source gets anyway, so forgetting it changes no decision.
#[derive(Debug)]
pub struct SourceBuckets<K> {
    limit: RateLimit,
    sources_max: usize,
    buckets: HashMap<K, TokenBucket>,
    /// After a sweep that freed nothing, no new sweep before this time: a flood of new
    /// sources must not make every datagram cost a pass over the table.
    no_sweep_before_ms: u64,
}

impl<K: Hash + Eq + Copy> SourceBuckets<K> {
    pub fn new(limit: RateLimit, sources_max: usize) -> Self {
        SourceBuckets {
            limit,
            sources_max: sources_max.max(1),
            buckets: HashMap::new(),
            no_sweep_before_ms: 0,
        }
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Count one datagram from `source` at `now_ms`.
    pub fn admit(&mut self, source: K, now_ms: u64) -> Admission {
        self.admit_n(source, 1, now_ms)
    }

    /// Count `amount` units from `source` at `now_ms`, all or nothing.
    pub fn admit_n(&mut self, source: K, amount: u64, now_ms: u64) -> Admission {
        let limit = self.limit;
        if limit.is_unlimited() {
            return Admission::Admitted;
        }
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.sources_max {
            self.sweep(now_ms);
            if self.buckets.len() >= self.sources_max {
                return Admission::TableFull;
            }
        }
        let bucket = match self.buckets.entry(source) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(TokenBucket::full(limit, now_ms)),
        };
        if bucket.take(limit, amount, now_ms) {
            Admission::Admitted
        } else {
            Admission::RateLimited
        }
    }

    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.no_sweep_before_ms {
            return;
        }
        let limit = self.limit;
        self.buckets
            .retain(|_, bucket| !bucket.is_full_at(limit, now_ms));
        if self.buckets.len() >= self.sources_max {
            // Time for an emptied bucket to fill again: nothing can be freed sooner.
            let refill_ms = limit
                .burst
                .saturating_mul(1000)
                .div_ceil(limit.rate_per_s.max(1));
            self.no_sweep_before_ms = now_ms.saturating_add(refill_ms.clamp(1, 1000));
        }
    }
}

/// What a fan-out of datagrams may send: one datagram in makes as many out as its room or relay
/// has other members, so the outgoing datagrams are what an amplification attack multiplies.
/// They are budgeted per sending source address and in total (per socket), in sends per second,
/// all or nothing per datagram: a datagram either goes to every member or to none (a partial
/// fan-out would favour whoever comes first in the member list).
#[derive(Debug)]
pub struct FanoutBudget<K> {
    per_source: SourceBuckets<K>,
    total_limit: RateLimit,
    total: TokenBucket,
}

impl<K: Hash + Eq + Copy> FanoutBudget<K> {
    /// `total` and `per_source` in sends per second (0: no limit); `sources_max` bounds the
    /// table of per-source buckets as in [`SourceBuckets`].
    pub fn new(total: RateLimit, per_source: RateLimit, sources_max: usize, now_ms: u64) -> Self {
        FanoutBudget {
            per_source: SourceBuckets::new(per_source, sources_max),
            total_limit: total,
            total: TokenBucket::full(total, now_ms),
        }
    }

    /// May `source` send a datagram to `sends` recipients at `now_ms`? When it may, the sends
    /// are taken from both budgets; when it may not, the total budget is left untouched (an
    /// over-budget source must not use up the others' share), and a source over its own rate
    /// keeps an empty bucket while the flood goes on.
    pub fn admit(&mut self, source: K, sends: u64, now_ms: u64) -> Admission {
        if sends == 0 {
            return Admission::Admitted;
        }
        if !self.total.covers(self.total_limit, sends, now_ms) {
            return Admission::RateLimited;
        }
        match self.per_source.admit_n(source, sends, now_ms) {
            Admission::Admitted => {
                self.total.take(self.total_limit, sends, now_ms);
                Admission::Admitted
            }
            refused => refused,
        }
    }
}

/// What one sender may make others receive (issue 15: "the one who causes output pays"): a
/// bucket for everything it sends to others, and one per recipient it sent to lately. Charged
/// all or nothing, so a refusal by one costs nothing in the other; a refused send is refused to
/// its sender and never reaches (or closes) its recipient.
#[derive(Debug)]
pub struct SenderBudget<K> {
    total: TokenBucket,
    per_recipient: HashMap<K, TokenBucket>,
}

/// Recipients a sender may have tracked before the buckets that are full again (what a new
/// recipient gets anyway) are swept out.
const SENDER_RECIPIENTS_SWEEP_AT: usize = 64;

impl<K: Hash + Eq + Copy> SenderBudget<K> {
    pub fn new(total: RateLimit, now_ms: u64) -> Self {
        SenderBudget {
            total: TokenBucket::full(total, now_ms),
            per_recipient: HashMap::new(),
        }
    }

    /// May the sender make `to` receive `amount` (`None`: a broadcast, charged to the total
    /// only) at `now_ms`?
    pub fn admit(
        &mut self,
        to: Option<K>,
        amount: u64,
        total: RateLimit,
        pair: RateLimit,
        now_ms: u64,
    ) -> bool {
        let Some(to) = to.filter(|_| !pair.is_unlimited()) else {
            return self.total.take(total, amount, now_ms);
        };
        if self.per_recipient.len() >= SENDER_RECIPIENTS_SWEEP_AT
            && !self.per_recipient.contains_key(&to)
        {
            self.per_recipient
                .retain(|_, bucket| !bucket.is_full_at(pair, now_ms));
        }
        let bucket = self
            .per_recipient
            .entry(to)
            .or_insert_with(|| TokenBucket::full(pair, now_ms));
        if !bucket.covers(pair, amount, now_ms) || !self.total.take(total, amount, now_ms) {
            return false;
        }
        bucket.take(pair, amount, now_ms)
    }

    /// Recipients tracked now.
    pub fn recipients(&self) -> usize {
        self.per_recipient.len()
    }
}

/// Open connections per peer IP address, for the per-IP connection limit.
#[derive(Debug, Default)]
pub struct PerIpCounts {
    counts: HashMap<IpAddr, u32>,
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry: one host, one count.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl PerIpCounts {
    /// Count a new connection from `ip` unless `ip` already has `max` (0: no limit). False when
    /// it is refused.
    pub fn try_add(&mut self, ip: IpAddr, max: u32) -> bool {
        let count = self.counts.entry(canonical(ip)).or_insert(0);
        if max != 0 && *count >= max {
            if *count == 0 {
                self.counts.remove(&canonical(ip));
            }
            return false;
        }
        *count += 1;
        true
    }

    /// A connection from `ip` closed.
    pub fn remove(&mut self, ip: IpAddr) {
        let key = canonical(ip);
        if let Entry::Occupied(mut entry) = self.counts.entry(key) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    pub fn count(&self, ip: IpAddr) -> u32 {
        self.counts.get(&canonical(ip)).copied().unwrap_or(0)
    }

    /// Addresses with at least one connection.
    pub fn addresses(&self) -> usize {
        self.counts.len()
    }
}

/// The reactor's handshake deadline, in whole milliseconds since start, of a connection
/// accepted at `accepted` (the clock since start, at full resolution): the accept time rounded
/// up to the millisecond, plus `timeout_ms`. So it is never reached before `timeout_ms` have
/// passed since the accept, and lies less than 1 ms after that.
pub fn handshake_deadline_ms(accepted: std::time::Duration, timeout_ms: u64) -> u64 {
    let whole_ms = u64::try_from(accepted.as_millis()).unwrap_or(u64::MAX);
    let rounded_up_ms = whole_ms.saturating_add(u64::from(
        !accepted.subsec_nanos().is_multiple_of(1_000_000),
    ));
    rounded_up_ms.saturating_add(timeout_ms)
}

/// Handshake deadlines of connections, oldest first. Every connection gets the same timeout
/// when it is accepted, and accept times only grow, so the deadlines are in order and a FIFO
/// serves as the timer: O(1) to arm, O(1) per expiry, nothing to cancel (a connection that
/// identified or closed is simply skipped when its entry comes due).
#[derive(Debug, Default)]
pub struct HandshakeDeadlines {
    queue: VecDeque<(ConnId, u64)>,
}

impl HandshakeDeadlines {
    pub fn push(&mut self, id: ConnId, deadline_ms: u64) {
        debug_assert!(self
            .queue
            .back()
            .is_none_or(|&(_, last)| last <= deadline_ms));
        self.queue.push_back((id, deadline_ms));
    }

    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.queue.front().map(|&(_, deadline_ms)| deadline_ms)
    }

    /// The next connection whose deadline is at or before `now_ms`.
    pub fn pop_expired(&mut self, now_ms: u64) -> Option<ConnId> {
        match self.queue.front() {
            Some(&(id, deadline_ms)) if deadline_ms <= now_ms => {
                self.queue.pop_front();
                Some(id)
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Connections still in their handshake, oldest first: at the connection cap the oldest is
/// evicted to admit a newcomer, so silent connections cannot hold every slot (issue 15, attack
/// 4). Entries of connections that identified or closed are skipped lazily; `is_handshaking`
/// says which.
#[derive(Debug, Default)]
pub struct HandshakeQueue {
    queue: VecDeque<ConnId>,
}

impl HandshakeQueue {
    pub fn push(&mut self, id: ConnId) {
        self.queue.push_back(id);
    }

    /// The oldest connection still handshaking, taken off the queue; stale entries before it
    /// go too.
    pub fn pop_oldest(&mut self, is_handshaking: impl Fn(ConnId) -> bool) -> Option<ConnId> {
        while let Some(id) = self.queue.pop_front() {
            if is_handshaking(id) {
                return Some(id);
            }
        }
        None
    }

    /// The oldest connection still handshaking, left on the queue; stale entries before it go.
    pub fn peek_oldest(&mut self, is_handshaking: impl Fn(ConnId) -> bool) -> Option<ConnId> {
        while let Some(&id) = self.queue.front() {
            if is_handshaking(id) {
                return Some(id);
            }
            self.queue.pop_front();
        }
        None
    }

    /// Drops stale entries once the queue has grown past `len_max` (connections that identified
    /// stay in the queue until they reach its front otherwise), so its length stays within a
    /// small multiple of the connections open.
    pub fn compact(&mut self, len_max: usize, is_handshaking: impl Fn(ConnId) -> bool) {
        if self.queue.len() > len_max {
            self.queue.retain(|&id| is_handshaking(id));
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    const LIMIT: RateLimit = RateLimit {
        rate_per_s: 1000,
        burst: 100,
    };

    #[test]
    fn a_bucket_allows_its_burst_at_once_then_its_rate() {
        let mut bucket = TokenBucket::full(LIMIT, 0);
        assert!(bucket.take(LIMIT, 100, 0));
        assert!(!bucket.take(LIMIT, 1, 0), "the burst is spent");
        // 1000 a second is one a millisecond.
        assert!(bucket.take(LIMIT, 10, 10));
        assert!(!bucket.take(LIMIT, 1, 10));
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_refused() {
        let mut bucket = TokenBucket::full(LIMIT, 0);
        for ms in 1..=10_000 {
            assert!(bucket.take(LIMIT, 1, ms), "refused at {ms} ms");
        }
    }

    #[test]
    fn a_sender_over_the_rate_is_refused_once_its_burst_is_gone() {
        let mut bucket = TokenBucket::full(LIMIT, 0);
        // Two a millisecond: one over the rate each ms, so the 100 of burst last about 100 ms.
        let first_refusal = (1..=1000).find(|&ms| !bucket.take(LIMIT, 2, ms));
        assert_eq!(first_refusal, Some(100));
    }

    #[test]
    fn credit_never_exceeds_the_burst_however_long_the_silence() {
        let mut bucket = TokenBucket::full(LIMIT, 0);
        assert!(bucket.take(LIMIT, 100, 0));
        assert!(bucket.is_full_at(LIMIT, 100));
        assert!(!bucket.take(LIMIT, 101, 1_000_000));
    }

    #[test]
    fn slow_rates_are_exact_at_millisecond_steps() {
        let limit = RateLimit {
            rate_per_s: 3,
            burst: 1,
        };
        let mut bucket = TokenBucket::full(limit, 0);
        assert!(bucket.take(limit, 1, 0));
        assert!(
            !bucket.take(limit, 1, 333),
            "a third of a second less a millisecond"
        );
        let mut bucket = TokenBucket::full(limit, 0);
        assert!(bucket.take(limit, 1, 0));
        assert!(bucket.take(limit, 1, 334));
    }

    #[test]
    fn a_rate_of_zero_means_no_limit() {
        let limit = RateLimit {
            rate_per_s: 0,
            burst: 0,
        };
        let mut bucket = TokenBucket::full(limit, 0);
        assert!(bucket.take(limit, u64::MAX, 0));
        let mut sources = SourceBuckets::new(limit, 1);
        for port in 0..100 {
            let from = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            assert_eq!(sources.admit(from, 0), Admission::Admitted);
        }
        assert!(sources.is_empty(), "nothing tracked without a limit");
    }

    #[test]
    fn sources_are_limited_separately() {
        let limit = RateLimit {
            rate_per_s: 10,
            burst: 2,
        };
        let flooder = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let member = SocketAddr::from((Ipv4Addr::LOCALHOST, 2));
        let mut sources = SourceBuckets::new(limit, 16);
        assert_eq!(sources.admit(flooder, 0), Admission::Admitted);
        assert_eq!(sources.admit(flooder, 0), Admission::Admitted);
        assert_eq!(sources.admit(flooder, 0), Admission::RateLimited);
        assert_eq!(sources.admit(member, 0), Admission::Admitted);
        // 10 a second: one more after 100 ms.
        assert_eq!(sources.admit(flooder, 100), Admission::Admitted);
        assert_eq!(sources.admit(flooder, 100), Admission::RateLimited);
    }

    #[test]
    fn a_full_table_forgets_idle_sources_and_refuses_while_all_are_active() {
        let limit = RateLimit {
            rate_per_s: 10,
            burst: 1,
        };
        let addr = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut sources = SourceBuckets::new(limit, 2);
        assert_eq!(sources.admit(addr(1), 0), Admission::Admitted);
        assert_eq!(sources.admit(addr(2), 0), Admission::Admitted);
        // Both buckets are empty (active): a third source cannot be tracked.
        assert_eq!(sources.admit(addr(3), 50), Admission::TableFull);
        assert_eq!(sources.len(), 2);
        // Known sources are still served by their own buckets; source 1 stays active.
        assert_eq!(sources.admit(addr(1), 100), Admission::Admitted);
        assert_eq!(sources.admit(addr(1), 190), Admission::RateLimited);
        // By 200 ms source 2 has refilled (idle): it alone is forgotten to make room.
        assert_eq!(sources.admit(addr(3), 200), Admission::Admitted);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources.admit(addr(1), 200), Admission::RateLimited);
    }

    #[test]
    fn a_failed_sweep_is_not_repeated_for_every_datagram() {
        let limit = RateLimit {
            rate_per_s: 10,
            burst: 1,
        };
        let addr = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut sources = SourceBuckets::new(limit, 1);
        assert_eq!(sources.admit(addr(1), 0), Admission::Admitted);
        assert_eq!(sources.admit(addr(2), 0), Admission::TableFull);
        assert_eq!(sources.no_sweep_before_ms, 100);
        assert_eq!(sources.admit(addr(2), 99), Admission::TableFull);
        assert_eq!(sources.admit(addr(2), 100), Admission::Admitted);
    }

    #[test]
    fn a_fanout_is_charged_per_source_and_in_total_all_or_nothing() {
        let total = RateLimit {
            rate_per_s: 1000,
            burst: 1000,
        };
        let per_source = RateLimit {
            rate_per_s: 400,
            burst: 400,
        };
        let addr = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut budget = FanoutBudget::new(total, per_source, 16, 0);
        assert_eq!(budget.admit(addr(1), 300, 0), Admission::Admitted);
        // 100 left for source 1: a fan-out of 200 is refused whole, nothing sent.
        assert_eq!(budget.admit(addr(1), 200, 0), Admission::RateLimited);
        // Others have their own share of the total (700 left of it).
        assert_eq!(budget.admit(addr(2), 400, 0), Admission::Admitted);
        assert_eq!(budget.admit(addr(3), 300, 0), Admission::Admitted);
        // The total is spent: even a fresh source is refused, and its own bucket untouched.
        assert_eq!(budget.admit(addr(4), 1, 0), Admission::RateLimited);
        // 1000 a second in total: 100 more after 100 ms; source 4 still has its whole 400.
        assert_eq!(budget.admit(addr(4), 100, 100), Admission::Admitted);
        assert_eq!(budget.admit(addr(4), 1, 100), Admission::RateLimited);
        // A datagram nobody receives costs nothing.
        assert_eq!(budget.admit(addr(1), 0, 100), Admission::Admitted);
    }

    #[test]
    fn a_sender_budget_limits_each_pair_and_the_sender_and_forgets_idle_pairs() {
        let total = RateLimit {
            rate_per_s: 10,
            burst: 10,
        };
        let pair = RateLimit {
            rate_per_s: 2,
            burst: 2,
        };
        let mut budget = SenderBudget::new(total, 0);
        assert!(budget.admit(Some(1), 1, total, pair, 0));
        assert!(budget.admit(Some(1), 1, total, pair, 0));
        assert!(!budget.admit(Some(1), 1, total, pair, 0), "the pair's rate");
        for to in 2..6 {
            assert!(budget.admit(Some(to), 2, total, pair, 0));
        }
        // The pairs refused above did not cost the total: 10 - 2 - 8 = 0 left now.
        assert!(
            !budget.admit(Some(7), 1, total, pair, 0),
            "the sender's rate"
        );
        assert!(!budget.admit(None, 1, total, pair, 0));
        assert!(budget.admit(None, 1, total, pair, 100), "10 a second");
        // Full buckets are forgotten once the map is large.
        for to in 100..(100 + SENDER_RECIPIENTS_SWEEP_AT as u32) {
            budget.admit(Some(to), 0, total, pair, 10_000);
        }
        assert!(budget.admit(Some(1), 1, total, pair, 20_000));
        assert!(budget.recipients() < 8, "{}", budget.recipients());
    }

    #[test]
    fn an_unlimited_fanout_budget_admits_everything() {
        let none = RateLimit {
            rate_per_s: 0,
            burst: 0,
        };
        let mut budget = FanoutBudget::new(none, none, 1, 0);
        for port in 0..100 {
            let from = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            assert_eq!(budget.admit(from, 1_000_000, 0), Admission::Admitted);
        }
    }

    #[test]
    fn per_ip_counts_refuse_the_next_connection_at_the_limit_and_accept_after_a_close() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let mut counts = PerIpCounts::default();
        assert!(counts.try_add(ip, 2));
        assert!(counts.try_add(ip, 2));
        assert!(!counts.try_add(ip, 2));
        assert!(
            counts.try_add(other, 2),
            "another address has its own count"
        );
        counts.remove(ip);
        assert!(counts.try_add(ip, 2));
        assert_eq!(counts.count(ip), 2);
        counts.remove(ip);
        counts.remove(ip);
        counts.remove(other);
        assert_eq!(
            counts.addresses(),
            0,
            "no entry is kept for an address with none"
        );
    }

    #[test]
    fn per_ip_limit_zero_is_no_limit_and_mapped_ipv6_counts_as_ipv4() {
        let mut counts = PerIpCounts::default();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..10_000 {
            assert!(counts.try_add(ip, 0));
        }
        let mut counts = PerIpCounts::default();
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert!(counts.try_add(ip, 1));
        assert!(!counts.try_add(mapped, 1));
        assert!(counts.try_add(IpAddr::V6(Ipv6Addr::LOCALHOST), 1));
    }

    #[test]
    fn the_oldest_still_handshaking_is_evicted_first_and_stale_entries_go() {
        let mut queue = HandshakeQueue::default();
        let ids: Vec<ConnId> = (0..5).map(|n| ConnId::new(n, 1)).collect();
        for &id in &ids {
            queue.push(id);
        }
        // 0 identified, 1 closed: 2 is the oldest still handshaking.
        let live = |id: ConnId| id.slot >= 2;
        assert_eq!(queue.peek_oldest(live), Some(ids[2]));
        assert_eq!(queue.len(), 3, "peeking drops the stale entries only");
        assert_eq!(queue.pop_oldest(live), Some(ids[2]));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop_oldest(|id| id.slot == 4), Some(ids[4]));
        assert_eq!(queue.pop_oldest(live), None);
        for &id in &ids {
            queue.push(id);
        }
        queue.compact(10, |_| false);
        assert_eq!(queue.len(), 5, "under its bound nothing is scanned");
        queue.compact(4, |id| id.slot % 2 == 0);
        assert_eq!(queue.len(), 3);
    }

    /// docs/RELIABILITY.md: closed at `--handshake-timeout-ms`, not before, and at most 1 ms
    /// late (before the loop's own wake-up latency), wherever the accept falls within its
    /// millisecond.
    #[test]
    fn a_handshake_deadline_is_never_early_and_less_than_a_millisecond_late() {
        use std::time::Duration;
        const TIMEOUT_MS: u64 = 300;
        for accepted in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(999_999),
            Duration::from_millis(1),
            Duration::from_micros(5_300),
            Duration::from_nanos(12_345_000_001),
        ] {
            let deadline_ms = handshake_deadline_ms(accepted, TIMEOUT_MS);
            let late = Duration::from_millis(deadline_ms)
                .checked_sub(accepted + Duration::from_millis(TIMEOUT_MS))
                .unwrap_or_else(|| {
                    panic!("accepted at {accepted:?}: deadline {deadline_ms} ms is early")
                });
            assert!(
                late < Duration::from_millis(1),
                "accepted at {accepted:?}: deadline {deadline_ms} ms is {late:?} late"
            );
            // The queue hands it out at its deadline's millisecond, not one before.
            let mut deadlines = HandshakeDeadlines::default();
            let id = ConnId::new(0, 1);
            deadlines.push(id, deadline_ms);
            assert_eq!(deadlines.next_deadline_ms(), Some(deadline_ms));
            assert_eq!(deadlines.pop_expired(deadline_ms - 1), None);
            assert_eq!(deadlines.pop_expired(deadline_ms), Some(id));
        }
        assert_eq!(handshake_deadline_ms(Duration::MAX, 1), u64::MAX);
    }

    #[test]
    fn handshake_deadlines_come_due_in_order_and_not_early() {
        let mut deadlines = HandshakeDeadlines::default();
        let a = ConnId::new(0, 1);
        let b = ConnId::new(1, 2);
        deadlines.push(a, 100);
        deadlines.push(b, 150);
        assert_eq!(deadlines.next_deadline_ms(), Some(100));
        assert_eq!(deadlines.pop_expired(99), None);
        assert_eq!(deadlines.pop_expired(100), Some(a));
        assert_eq!(deadlines.pop_expired(100), None);
        assert_eq!(deadlines.next_deadline_ms(), Some(150));
        assert_eq!(deadlines.pop_expired(1000), Some(b));
        assert!(deadlines.is_empty());
    }
}
