//! The OCM stage-1 RelayService driven by arbitrary datagrams from a few addresses, some of
//! which fail to send or find the socket full, with time passing.
//!
//! Invariants: no panic; each datagram is relayed verbatim, at most once to each address,
//! never back to its sender, only to addresses heard from within the idle limit, and not at
//! all when over the size limit; peers stay within their limit.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fuzz_support::Ops;
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ocm::{RelayConfig, RelayService};
use switchboard::protocol::testing::RecordingDatagrams;

const IDLE_MS: u64 = 20_000;
const PEERS_MAX: usize = 4;
const DATAGRAM_BYTES_MAX: usize = 64;

/// One of 8 addresses, IPv4 and IPv6: more than the peer limit.
fn address(selector: u8) -> SocketAddr {
    let port = 40_000 + u16::from(selector / 2 % 4);
    if selector.is_multiple_of(2) {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut relay = RelayService::new(
        RelayConfig {
            idle_timeout_ms: IDLE_MS,
            send_failures_max: 2,
            peers_max: PEERS_MAX,
            peers_per_ip_max: 4,
            sends_per_s_max: 200,
            sends_per_source_per_s_max: 50,
            datagram_bytes_max: DATAGRAM_BYTES_MAX,
            timer_tick_ms: 10,
        },
        0,
    );
    let mut udp = RecordingDatagrams::default();
    let mut last_heard_ms: HashMap<SocketAddr, u64> = HashMap::new();
    let mut now_ms = 0u64;
    while !ops.is_empty() {
        match ops.byte() % 6 {
            3 => {
                now_ms += u64::from(ops.u16());
                relay.on_timers(now_ms);
            }
            4 => {
                let to = address(ops.byte());
                match udp.failing.iter().position(|&a| a == to) {
                    Some(at) => {
                        udp.failing.swap_remove(at);
                    }
                    None => udp.failing.push(to),
                }
            }
            5 => udp.full = !udp.full,
            _ => {
                let from = address(ops.byte());
                let datagram = ops.chunk();
                relay.on_datagram(from, datagram, now_ms, &mut udp);
                let mut seen = Vec::new();
                for (to, bytes) in udp.sent.drain(..) {
                    assert_eq!(&bytes[..], datagram, "relayed changed");
                    assert!(datagram.len() <= DATAGRAM_BYTES_MAX);
                    assert_ne!(to, from, "relayed back to its sender");
                    assert!(!seen.contains(&to), "relayed twice to {to}");
                    seen.push(to);
                    let heard = last_heard_ms.get(&to).copied();
                    assert!(
                        heard.is_some_and(|ms| now_ms - ms < IDLE_MS),
                        "relayed to {to}, not heard from within the idle limit"
                    );
                }
                if datagram.len() <= DATAGRAM_BYTES_MAX {
                    last_heard_ms.insert(from, now_ms);
                }
            }
        }
        assert!(relay.peers() <= PEERS_MAX);
    }
});
