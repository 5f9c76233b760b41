//! Redis's address, looked up again while a link to it is down, so that a Redis whose name
//! moves (a failover, a container started again with a new address) is found again.
//!
//! The threads on the `redis` crate (lease, names, OCM rooms, offline store) look the host up
//! at each connect already. The reactor's publishing and subscription links connect
//! non-blocking to addresses they were given, and a look-up blocks: the lease thread, which
//! blocks on Redis anyway, looks the name up after a renewal while any link is down, and hands
//! addresses that changed to the reactor with the live nodes (`Incoming::RedisAddrs`). An IP
//! literal is its own address: never looked up.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The host of `--cluster redis://HOST:PORT` and the addresses the reactor's links use now.
#[derive(Debug)]
pub(super) struct RedisHost {
    host: String,
    port: u16,
    /// Sorted: a name whose addresses come back in another order has not moved.
    current: Vec<SocketAddr>,
}

impl RedisHost {
    /// `current`: the addresses the links started with.
    pub(super) fn new(host: &str, port: u16, current: &[SocketAddr]) -> RedisHost {
        RedisHost {
            host: host.to_string(),
            port,
            current: sorted(current.to_vec()),
        }
    }

    /// Whether the host is an IP literal (`127.0.0.1`, `::1`, or `[::1]` as a URL writes it).
    pub(super) fn is_ip_literal(&self) -> bool {
        let bare = self
            .host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(&self.host);
        bare.parse::<IpAddr>().is_ok()
    }

    /// The addresses the reactor's links should use from now on, if they changed: looked up
    /// with `lookup` only for a name, and only while a link is down (`links_down`; a link that
    /// works needs no other address). A failed look-up or an empty answer keeps the current
    /// addresses: the links go on trying them, and the next renewal looks again.
    pub(super) fn refresh(
        &mut self,
        links_down: bool,
        lookup: impl FnOnce(&str, u16) -> std::io::Result<Vec<SocketAddr>>,
    ) -> Option<Vec<SocketAddr>> {
        if !links_down || self.is_ip_literal() {
            return None;
        }
        let found = match lookup(&self.host, self.port) {
            Ok(found) if !found.is_empty() => found,
            Ok(_) => return None,
            Err(err) => {
                log::debug!(
                    "cluster: looking up Redis's host {} failed: {err}",
                    self.host
                );
                return None;
            }
        };
        let found_sorted = sorted(found.clone());
        if found_sorted == self.current {
            return None;
        }
        self.current = found_sorted;
        Some(found)
    }

    pub(super) fn host(&self) -> &str {
        &self.host
    }
}

/// The system's look-up (blocking: never on the reactor).
pub(super) fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

fn sorted(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 6379))
    }

    /// A look-up that must not happen.
    fn no_lookup(host: &str, _: u16) -> std::io::Result<Vec<SocketAddr>> {
        panic!("{host} looked up")
    }

    #[test]
    fn an_ip_literal_is_never_looked_up() {
        for host in ["127.0.0.1", "::1", "[::1]", "10.0.0.1"] {
            let mut redis = RedisHost::new(host, 6379, &[at(1)]);
            assert!(redis.is_ip_literal(), "{host}");
            assert_eq!(redis.refresh(true, no_lookup), None, "{host}");
        }
        for host in [
            "localhost",
            "redis",
            "redis.internal",
            "[redis]",
            "10.0.0.1.example",
        ] {
            assert!(!RedisHost::new(host, 6379, &[]).is_ip_literal(), "{host}");
        }
    }

    #[test]
    fn a_name_is_looked_up_only_while_a_link_is_down() {
        let mut redis = RedisHost::new("redis", 6379, &[at(1)]);
        assert_eq!(redis.refresh(false, no_lookup), None);
        let mut asked = None;
        let moved = redis.refresh(true, |host, port| {
            asked = Some((host.to_string(), port));
            Ok(vec![at(2)])
        });
        assert_eq!(asked, Some(("redis".to_string(), 6379)));
        assert_eq!(moved, Some(vec![at(2)]));
    }

    #[test]
    fn only_addresses_that_changed_are_handed_on() {
        let mut redis = RedisHost::new("redis", 6379, &[at(1), at(2)]);
        // The same ones in another order (round-robin DNS): not moved.
        assert_eq!(redis.refresh(true, |_, _| Ok(vec![at(2), at(1)])), None);
        // One gone: moved, in the order the look-up gave.
        assert_eq!(
            redis.refresh(true, |_, _| Ok(vec![at(3), at(2)])),
            Some(vec![at(3), at(2)])
        );
        // Then the same again: nothing new.
        assert_eq!(redis.refresh(true, |_, _| Ok(vec![at(2), at(3)])), None);
    }

    #[test]
    fn a_failed_or_empty_lookup_keeps_the_addresses() {
        let mut redis = RedisHost::new("redis", 6379, &[at(1)]);
        let failed = redis.refresh(true, |_, _| Err(std::io::ErrorKind::TimedOut.into()));
        assert_eq!(failed, None);
        assert_eq!(redis.refresh(true, |_, _| Ok(Vec::new())), None);
        // Still at the first address: a move to it is no move.
        assert_eq!(redis.refresh(true, |_, _| Ok(vec![at(1)])), None);
        assert_eq!(
            redis.refresh(true, |_, _| Ok(vec![at(4)])),
            Some(vec![at(4)])
        );
    }

    #[test]
    fn localhost_is_found_by_the_system_lookup() {
        let found = lookup("localhost", 6379).unwrap();
        assert!(
            found.iter().all(|addr| addr.ip().is_loopback()),
            "{found:?}"
        );
        assert!(!found.is_empty());
    }
}
