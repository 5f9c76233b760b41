//! ROOM logic without sockets: fabricated connections, bytes and time.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::testing::RecordingOutbox;

const HANDSHAKE_MS: u64 = 1_000;

fn service() -> RoomService {
    RoomService::new(
        RoomConfig {
            handshake_timeout_ms: HANDSHAKE_MS,
            timer_tick_ms: 10,
        },
        0,
    )
}

fn id(slot: u32) -> ConnId {
    ConnId::new(slot, 1)
}

fn feed(room: &mut RoomService, who: ConnId, bytes: &[u8], out: &mut RecordingOutbox) {
    let mut input = BytesMut::from(bytes);
    room.on_data(who, &mut input, out);
    assert!(input.is_empty(), "ROOM consumes every byte it is given");
}

fn join(room: &mut RoomService, who: ConnId, alias: &[u8], out: &mut RecordingOutbox) {
    room.on_accept(who, 0, out);
    feed(room, who, alias, out);
}

fn texts(sent: Vec<Bytes>) -> Vec<String> {
    sent.iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[test]
fn accept_sends_only_the_prompt() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    room.on_accept(id(0), 0, &mut out);
    assert_eq!(texts(out.sent_to(id(0))), ["alias?"]);
    assert_eq!(room.member_count(), 0);
}

#[test]
fn join_notice_goes_to_everyone_then_greeting_to_the_newcomer() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    join(&mut room, id(0), b"alice", &mut out);
    out.clear();
    join(&mut room, id(1), b"bob\n", &mut out);
    assert_eq!(texts(out.sent_to(id(0))), ["b'bob' esta conectado ao chat"]);
    assert_eq!(
        texts(out.sent_to(id(1))),
        [
            "alias?",
            "b'bob' esta conectado ao chat",
            "Voce esta conectado ao servidor!"
        ]
    );
}

#[test]
fn nothing_reaches_a_connection_before_its_alias() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    join(&mut room, id(0), b"alice", &mut out);
    room.on_accept(id(1), 0, &mut out);
    out.clear();
    feed(&mut room, id(0), b"alice: hi", &mut out);
    join(&mut room, id(2), b"carol", &mut out);
    assert!(
        out.sent_to(id(1)).is_empty(),
        "a pending connection is not a member"
    );
}

#[test]
fn chunks_are_relayed_verbatim_to_every_member_including_the_sender() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    for (slot, alias) in [(0, &b"a"[..]), (1, b"b"), (2, b"c")] {
        join(&mut room, id(slot), alias, &mut out);
    }
    out.clear();
    let chunk = b"b: ol\xc3\xa1 \x00\xff raw bytes\r\n";
    feed(&mut room, id(1), chunk, &mut out);
    for slot in 0..3 {
        assert_eq!(out.sent_to(id(slot)), [Bytes::from_static(chunk)]);
    }
    assert_eq!(out.frames_in, 1);
}

#[test]
fn bytes_after_the_alias_in_the_same_read_are_the_first_message() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    join(&mut room, id(0), b"alice", &mut out);
    out.clear();
    room.on_accept(id(1), 0, &mut out);
    let mut input = vec![b'x'; codec::ALIAS_BYTES_MAX];
    input.extend_from_slice(b"tail");
    feed(&mut room, id(1), &input, &mut out);
    let to_alice = out.sent_to(id(0));
    assert_eq!(to_alice.len(), 2, "join notice, then the tail as a chunk");
    assert_eq!(&to_alice[1][..], b"tail");
}

#[test]
fn empty_alias_is_asked_again_and_the_deadline_keeps_running() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    room.on_accept(id(0), 0, &mut out);
    feed(&mut room, id(0), b"\r\n", &mut out);
    assert_eq!(texts(out.sent_to(id(0))), ["alias?", "alias?"]);
    assert_eq!(room.member_count(), 0);

    room.on_timers(HANDSHAKE_MS - 1, &mut out);
    assert!(out.closed.is_empty(), "not before the deadline");
    room.on_timers(HANDSHAKE_MS + 10, &mut out);
    assert_eq!(
        out.closed,
        [(id(0), CloseReason::HandshakeTimeout, CloseMode::Now)]
    );
}

#[test]
fn silent_connection_is_closed_at_the_handshake_deadline() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    room.on_accept(id(0), 0, &mut out);
    assert!(room.next_deadline_ms().is_some());
    room.on_timers(HANDSHAKE_MS + 10, &mut out);
    assert_eq!(
        out.closed,
        [(id(0), CloseReason::HandshakeTimeout, CloseMode::Now)]
    );
    // The reactor then reports the close; no leave notice for a non-member.
    out.clear();
    room.on_close(id(0), &mut out);
    assert!(out.sent.is_empty());
}

/// PROTOCOLS.md ROOM rule 6: the deadline fires not before `--room-handshake-timeout-ms`
/// after accept, in real time, and at most one timer tick after the timeout counted from the
/// accept's millisecond rounded up, wherever the accept falls within its millisecond and on the tick grid; and the
/// service asks to be woken no later than that, so the reactor's sleep cannot add to it.
/// Time is fabricated in microseconds; the service sees what the reactor hands it, the clock
/// rounded down to the millisecond, so a call at `now_ms` may happen as early as `now_ms`.
#[test]
fn the_handshake_deadline_fires_never_early_in_real_time_and_at_most_one_tick_late() {
    const TICK_MS: u64 = 10;
    const US_PER_MS: u64 = 1_000;
    for accepted_us in [
        0, 1, 999, 1_000, 1_001, 7_999, 9_000, 9_999, 10_000, 19_500, 1_234_567,
    ] {
        let accepted_ms = accepted_us / US_PER_MS;
        let accepted_rounded_up_ms = accepted_us.div_ceil(US_PER_MS);
        let mut room = service();
        let mut out = RecordingOutbox::default();
        room.on_timers(accepted_ms, &mut out);
        room.on_accept(id(0), accepted_ms, &mut out);
        let due_us = accepted_us + HANDSHAKE_MS * US_PER_MS;
        let latest_ms = accepted_rounded_up_ms + HANDSHAKE_MS + TICK_MS;
        let wake_ms = room.next_deadline_ms().expect("a deadline is armed");
        // Earlier is only a spurious wake-up; later would make the close late.
        assert!(
            wake_ms <= latest_ms,
            "accepted at {accepted_us} us: wakes at {wake_ms} ms, latest {latest_ms} ms"
        );
        // The reactor's timers phase, at every millisecond of its clock.
        let closed_at_ms = (accepted_ms..latest_ms + TICK_MS).find(|&now_ms| {
            room.on_timers(now_ms, &mut out);
            !out.closed.is_empty()
        });
        let closed_at_ms = closed_at_ms.expect("closed within two ticks of the deadline");
        assert!(
            closed_at_ms * US_PER_MS >= due_us,
            "accepted at {accepted_us} us: closed as early as {closed_at_ms} ms, due at {due_us} us"
        );
        assert!(
            closed_at_ms <= latest_ms,
            "accepted at {accepted_us} us: closed at {closed_at_ms} ms, over a tick after {} ms",
            accepted_rounded_up_ms + HANDSHAKE_MS
        );
        assert_eq!(
            out.closed,
            [(id(0), CloseReason::HandshakeTimeout, CloseMode::Now)]
        );
    }
}

#[test]
fn a_member_is_never_closed_by_the_handshake_timer() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    join(&mut room, id(0), b"alice", &mut out);
    room.on_timers(10 * HANDSHAKE_MS, &mut out);
    assert!(out.closed.is_empty());
    assert_eq!(room.next_deadline_ms(), None, "the deadline was cancelled");
}

#[test]
fn leave_notice_goes_to_those_who_remain() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    join(&mut room, id(0), b"alice", &mut out);
    join(&mut room, id(1), b"jos\xc3\xa9", &mut out);
    join(&mut room, id(2), b"carol", &mut out);
    out.clear();
    room.on_close(id(1), &mut out);
    let notice = "b'jos\\xc3\\xa9' acabou de sair do chat!";
    assert_eq!(texts(out.sent_to(id(0))), [notice]);
    assert_eq!(texts(out.sent_to(id(2))), [notice]);
    assert!(out.sent_to(id(1)).is_empty());
    assert_eq!(room.member_count(), 2);
}

#[test]
fn removal_keeps_the_member_list_consistent() {
    // Remove members in an order that moves others around the list, then check that every
    // remaining member still receives exactly one copy of a broadcast.
    let mut room = service();
    let mut out = RecordingOutbox::default();
    for slot in 0..6 {
        join(&mut room, id(slot), format!("m{slot}").as_bytes(), &mut out);
    }
    for slot in [0, 3, 5] {
        room.on_close(id(slot), &mut out);
    }
    out.clear();
    feed(&mut room, id(1), b"hello", &mut out);
    let mut recipients: Vec<u32> = out.sent.iter().map(|(to, _)| to.slot).collect();
    recipients.sort_unstable();
    assert_eq!(recipients, [1, 2, 4]);
}

#[test]
fn duplicate_aliases_are_allowed() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    join(&mut room, id(0), b"same", &mut out);
    join(&mut room, id(1), b"same", &mut out);
    assert_eq!(room.member_count(), 2);
}

#[test]
fn a_stale_id_from_an_earlier_generation_is_ignored() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    join(&mut room, id(0), b"alice", &mut out);
    room.on_close(id(0), &mut out);
    let newcomer = ConnId::new(0, 2);
    room.on_accept(newcomer, 0, &mut out);
    out.clear();
    // Data for the old generation must not reach anyone, nor disturb the newcomer.
    feed(&mut room, id(0), b"ghost", &mut out);
    room.on_close(id(0), &mut out);
    assert!(out.sent.is_empty());
    feed(&mut room, newcomer, b"bob", &mut out);
    assert_eq!(room.member_count(), 1);
}

#[test]
fn closing_twice_is_harmless() {
    let mut room = service();
    let mut out = RecordingOutbox::default();
    join(&mut room, id(0), b"alice", &mut out);
    join(&mut room, id(1), b"bob", &mut out);
    room.on_close(id(1), &mut out);
    out.clear();
    room.on_close(id(1), &mut out);
    assert!(out.sent.is_empty());
}
