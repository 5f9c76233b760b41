//! CcmService driven by several connections' arbitrary byte streams, split arbitrarily
//! (a read burst ending after some reads and not others), with peers closing and time
//! passing through the keepalive, and the reactor's handshake deadline passing for
//! connections that have not identified.
//!
//! Invariants: no panic; output only to open connections; what a connection receives is
//! either the HTTP 400 answer, followed by nothing and a close, or a sequence of whole CCM
//! messages of known types, each with a Content-Length, ending at a message boundary after
//! every call (a relayed header and its shared content arrive together).
#![no_main]

use bytes::BytesMut;
use fuzz_support::{assert_to_open, Conns, Ops, SLOTS};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ccm::{codec, CcmConfig, CcmService, TokenSource};
use switchboard::protocol::testing::RecordingOutbox;

/// 2021-10-11 11:16:19 UTC, as in the unit tests.
const UNIX_SECS: u64 = 1_633_950_979;

fn counting_tokens() -> TokenSource {
    let mut next = 0u64;
    Box::new(move |bytes: &mut [u8; 16]| {
        next += 1;
        *bytes = [0; 16];
        bytes[8..].copy_from_slice(&next.to_be_bytes());
        true
    })
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut service = CcmService::new(
        CcmConfig {
            keepalive_idle_ms: 5_000,
            keepalive_answer_ms: 3_600,
            name_bytes_max: 16,
            sender_bytes_per_s_max: 8 * 1024 * 1024,
            pair_bytes_per_s_max: 2 * 1024 * 1024,
            timer_tick_ms: 10,
        },
        counting_tokens(),
        0,
    );
    let mut out = RecordingOutbox::default();
    let mut conns = Conns::default();
    // What each connection has received and not yet parsed; whether it got the HTTP answer.
    let mut received: [BytesMut; SLOTS] = Default::default();
    let mut refused = [false; SLOTS];
    let mut identified = [false; SLOTS];
    let mut now_ms = 0u64;
    while !ops.is_empty() {
        match ops.byte() % 7 {
            0 => {
                let slot = ops.slot();
                if let Some(id) = conns.accept(slot) {
                    received[slot].clear();
                    refused[slot] = false;
                    identified[slot] = false;
                    service.on_accept(id, now_ms);
                }
            }
            op @ (1 | 4 | 5) => {
                let slot = ops.slot();
                let bytes = ops.chunk();
                if conns.is_open(slot) {
                    let id = conns.id(slot);
                    conns.input[slot].extend_from_slice(bytes);
                    let burst_ended = op != 4;
                    service.on_data(
                        id,
                        &mut conns.input[slot],
                        burst_ended,
                        now_ms,
                        UNIX_SECS,
                        &mut out,
                    );
                }
            }
            2 => {
                if let Some(id) = conns.close(ops.slot()) {
                    service.on_close(id);
                }
            }
            6 => {
                // The reactor calls this only for open connections not yet identified.
                let slot = ops.slot();
                if conns.is_open(slot) && !identified[slot] {
                    let id = conns.id(slot);
                    service.on_handshake_timeout(id, 10_000, &mut out);
                    assert!(
                        refused[slot] || out.closed.iter().any(|&(to, _, _)| to == id),
                        "not closed at the handshake deadline"
                    );
                }
            }
            _ => {
                now_ms += u64::from(ops.u16());
                service.on_timers(now_ms, &mut out);
            }
        }
        for id in out.identified.drain(..) {
            if let Some(slot) = conns.slot_of(id) {
                identified[slot] = true;
            }
        }
        loop {
            assert_to_open(&conns, out.sent.iter().map(|(to, _)| to));
            for (to, bytes) in out.sent.drain(..) {
                if let Some(slot) = conns.slot_of(to) {
                    assert!(!refused[slot], "output after the HTTP answer");
                    received[slot].extend_from_slice(&bytes);
                }
            }
            for (received, refused) in received.iter_mut().zip(&mut refused) {
                check_received(received, refused);
            }
            let gone = conns.take_closed(&mut out.closed);
            if gone.is_empty() {
                break;
            }
            for id in gone {
                service.on_close(id);
            }
        }
        for (slot, &refused) in refused.iter().enumerate() {
            assert!(
                !refused || !conns.is_open(slot),
                "the HTTP answer without a close"
            );
        }
    }
});

fn check_received(received: &mut BytesMut, refused: &mut bool) {
    if received.starts_with(b"HTTP/") {
        assert_eq!(&received[..], &codec::http_bad_request(UNIX_SECS)[..]);
        *refused = true;
        received.clear();
        return;
    }
    while !received.is_empty() {
        let message = codec::decode(received, false)
            .expect("the server writes well-formed CCM")
            .expect("the server's output ends at a message boundary");
        assert!(
            message.message_type().is_some(),
            "an unknown type from the server"
        );
        assert!(message.attribute("Content-Length").is_some());
    }
}
