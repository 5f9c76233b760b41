//! OcmService driven by TCRP connections' arbitrary byte streams, split arbitrarily, and
//! arbitrary datagrams from a few addresses (some of which fail to send), with connections
//! closing and time passing through request deadlines and idle members.
//!
//! Invariants: no panic; output only to open connections; each TCRP connection gets at most
//! one answer, a well-formed one (header, then JSON with an integer status and a message),
//! and is closed with it; datagrams go only to addresses that have spoken or to the IP of a TCP
//! client (a request's address is bound to its connection's IP), carry UTF-8 text
//! within the size limit; rooms and members stay within their limits.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::BytesMut;
use fuzz_support::{assert_to_open, Conns, Ops, SLOTS};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ocm::{codec, json, OcmConfig, OcmService, TokenSource};
use switchboard::protocol::testing::{RecordingDatagrams, RecordingOutbox};

const ROOMS_MAX: usize = 3;
const ROOM_MEMBERS_MAX: usize = 3;

/// Tokens 00..01, 00..02, ... (64 hex digits), as the unit tests count them.
fn counting_tokens() -> TokenSource {
    let mut next = 0u64;
    Box::new(move |bytes: &mut [u8; 32]| {
        next += 1;
        *bytes = [0; 32];
        bytes[24..].copy_from_slice(&next.to_be_bytes());
        true
    })
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n % 4))
}

/// One of 16 addresses: 4 IPs (the TCP slots' IPs) times 4 ports (40000..=40003).
fn address(selector: u8) -> SocketAddr {
    SocketAddr::new(ip(selector), 40_000 + u16::from(selector / 4 % 4))
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut service = OcmService::new(
        OcmConfig {
            tcrp_payload_bytes_max: 1024,
            room_name_bytes_max: 32,
            user_name_bytes_max: 16,
            tcrp_request_timeout_ms: 10_000,
            idle_timeout_ms: 20_000,
            send_failures_max: 2,
            rooms_max: ROOMS_MAX,
            rooms_per_ip_max: 2,
            room_silent_timeout_ms: 5_000,
            room_members_max: ROOM_MEMBERS_MAX,
            sends_per_s_max: 1_000,
            sends_per_source_per_s_max: 100,
            ack_state1: false,
            timer_tick_ms: 10,
        },
        counting_tokens(),
        0,
    );
    let mut out = RecordingOutbox::default();
    let mut udp = RecordingDatagrams::default();
    let mut conns = Conns::default();
    let mut answered = [false; SLOTS];
    let mut spoken: Vec<SocketAddr> = Vec::new();
    let mut tcp_ips: Vec<IpAddr> = Vec::new();
    let mut now_ms = 0u64;
    while !ops.is_empty() {
        match ops.byte() % 7 {
            0 => {
                let slot = ops.slot();
                if let Some(id) = conns.accept(slot) {
                    answered[slot] = false;
                    tcp_ips.push(ip(slot as u8));
                    service.on_accept(id, ip(slot as u8), now_ms);
                }
            }
            1 => {
                let slot = ops.slot();
                let bytes = ops.chunk();
                if conns.is_open(slot) {
                    let id = conns.id(slot);
                    conns.input[slot].extend_from_slice(bytes);
                    service.on_data(id, &mut conns.input[slot], now_ms, &mut out);
                }
            }
            2 => {
                if let Some(id) = conns.close(ops.slot()) {
                    service.on_close(id);
                }
            }
            3 => {
                now_ms += u64::from(ops.u16());
                service.on_timers(now_ms, &mut out, &mut udp);
            }
            6 => {
                let to = address(ops.byte());
                match udp.failing.iter().position(|&a| a == to) {
                    Some(at) => {
                        udp.failing.swap_remove(at);
                    }
                    None => udp.failing.push(to),
                }
            }
            _ => {
                let from = address(ops.byte());
                let datagram = ops.chunk();
                if !spoken.contains(&from) {
                    spoken.push(from);
                }
                service.on_datagram(from, datagram, now_ms, &mut udp);
            }
        }
        assert_to_open(&conns, out.sent.iter().map(|(to, _)| to));
        for (to, bytes) in out.sent.drain(..) {
            let Some(slot) = conns.slot_of(to) else {
                continue;
            };
            assert!(!answered[slot], "a second answer on one connection");
            answered[slot] = true;
            assert!(
                out.closed.iter().any(|(closed, _, _)| *closed == to),
                "an answer without a close"
            );
            let mut buf = BytesMut::from(&bytes[..]);
            let answer = codec::decode_answer(&mut buf, usize::MAX)
                .expect("a well-formed answer")
                .expect("a whole answer");
            assert!(buf.is_empty(), "nothing after the answer");
            let text = std::str::from_utf8(&answer.json).expect("JSON is ASCII");
            json::parse_answer(text).expect("the answer's JSON");
        }
        for (to, text) in udp.sent.drain(..) {
            // A member's address is the one its datagrams come from, or the one its request
            // named, with the IP forced to its TCP connection's: never another IP.
            assert!(
                spoken.contains(&to) || tcp_ips.contains(&to.ip()),
                "a datagram to {to}, neither heard from nor a client's IP"
            );
            assert!(text.len() <= codec::TEXT_BYTES_MAX);
            assert!(std::str::from_utf8(&text).is_ok(), "text is UTF-8");
        }
        for id in conns.take_closed(&mut out.closed) {
            service.on_close(id);
        }
        assert!(service.rooms() <= ROOMS_MAX);
        assert!(service.members() <= ROOMS_MAX * ROOM_MEMBERS_MAX);
    }
});
