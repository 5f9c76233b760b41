//! RoomService driven by several connections' arbitrary byte streams, split arbitrarily,
//! with peers closing and time passing.
//!
//! Invariants: no panic; output only to open connections; before its greeting a connection
//! receives nothing but the alias prompt; a member's chunk reaches every member verbatim;
//! the member count matches the greetings; a connection without an alias is closed once its
//! handshake deadline has passed.
#![no_main]

use bytes::Bytes;
use fuzz_support::{assert_to_open, Conns, Ops, SLOTS};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::room::{codec, RoomConfig, RoomService};
use switchboard::protocol::testing::RecordingOutbox;

const HANDSHAKE_MS: u64 = 5_000;
const TICK_MS: u64 = 10;

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut service = RoomService::new(
        RoomConfig {
            handshake_timeout_ms: HANDSHAKE_MS,
            timer_tick_ms: TICK_MS,
        },
        0,
    );
    let mut out = RecordingOutbox::default();
    let mut conns = Conns::default();
    let mut member = [false; SLOTS];
    let mut accepted_ms = [0u64; SLOTS];
    let mut now_ms = 0u64;
    while !ops.is_empty() {
        let mut chunk_from_member: Option<Bytes> = None;
        match ops.byte() % 5 {
            0 => {
                let slot = ops.slot();
                if let Some(id) = conns.accept(slot) {
                    member[slot] = false;
                    accepted_ms[slot] = now_ms;
                    service.on_accept(id, now_ms, &mut out);
                }
            }
            1 | 4 => {
                let slot = ops.slot();
                let bytes = ops.chunk();
                if conns.is_open(slot) {
                    let id = conns.id(slot);
                    conns.input[slot].extend_from_slice(bytes);
                    if member[slot] && !conns.input[slot].is_empty() {
                        chunk_from_member = Some(Bytes::copy_from_slice(&conns.input[slot]));
                    }
                    service.on_data(id, &mut conns.input[slot], &mut out);
                    assert!(conns.input[slot].is_empty(), "ROOM consumes every byte");
                }
            }
            2 => {
                let slot = ops.slot();
                if let Some(id) = conns.close(slot) {
                    service.on_close(id, &mut out);
                }
            }
            _ => {
                now_ms += u64::from(ops.u16());
                service.on_timers(now_ms, &mut out);
                for slot in 0..SLOTS {
                    if conns.is_open(slot)
                        && !member[slot]
                        && now_ms >= accepted_ms[slot] + HANDSHAKE_MS + 2 * TICK_MS
                    {
                        let id = conns.id(slot);
                        assert!(
                            out.closed.iter().any(|(closed, _, _)| *closed == id),
                            "{id:?} is past its handshake deadline and still open"
                        );
                    }
                }
            }
        }
        check_output(&mut out, &conns, &mut member, chunk_from_member);
        // The reactor closes what the service asked it to, and tells it.
        loop {
            let gone = conns.take_closed(&mut out.closed);
            if gone.is_empty() {
                break;
            }
            for id in gone {
                service.on_close(id, &mut out);
            }
            check_output(&mut out, &conns, &mut member, None);
        }
        assert_eq!(
            service.member_count(),
            (0..SLOTS)
                .filter(|&s| conns.is_open(s) && member[s])
                .count()
        );
    }
});

fn check_output(
    out: &mut RecordingOutbox,
    conns: &Conns,
    member: &mut [bool; SLOTS],
    chunk_from_member: Option<Bytes>,
) {
    assert_to_open(conns, out.sent.iter().map(|(to, _)| to));
    if let Some(chunk) = chunk_from_member {
        for slot in (0..SLOTS).filter(|&s| conns.is_open(s) && member[s]) {
            assert_eq!(out.sent_to(conns.id(slot)), vec![chunk.clone()]);
        }
    }
    // A newcomer gets its own join notice, then the greeting, then room output.
    let mut greeting_due = [false; SLOTS];
    for (to, bytes) in out.sent.drain(..) {
        let Some(slot) = conns.slot_of(to) else {
            continue;
        };
        if greeting_due[slot] {
            assert_eq!(
                &bytes[..],
                codec::GREETING,
                "no greeting after the join notice"
            );
            greeting_due[slot] = false;
            member[slot] = true;
        } else if !member[slot] {
            if bytes.ends_with(b" esta conectado ao chat") {
                greeting_due[slot] = true;
            } else {
                assert_eq!(
                    &bytes[..],
                    codec::ALIAS_PROMPT,
                    "a non-member got room output"
                );
            }
        }
    }
    assert!(
        !greeting_due.contains(&true),
        "a join notice without a greeting"
    );
}
