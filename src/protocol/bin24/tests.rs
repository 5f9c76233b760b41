//! BIN24 logic without sockets or disks: fabricated frames, time and store completions.

use bytes::{Bytes, BytesMut};

use super::codec::{self, Name};
use super::*;
use crate::protocol::testing::RecordingOutbox;
use crate::protocol::{CloseMode, CloseReason, ConnId};
use crate::store::{StoreEvent, StoreRequest};

const ACK_MS: u64 = 3_000;
const GRACE_MS: u64 = 500;

fn ip(text: &str) -> std::net::IpAddr {
    text.parse().expect("test addresses are valid")
}

#[derive(Default)]
struct RecordingStore {
    requests: Vec<StoreRequest>,
}

impl StoreSink for RecordingStore {
    fn submit(&mut self, request: StoreRequest) {
        self.requests.push(request);
    }
}

impl RecordingStore {
    /// Tickets and frames of the Appends so far, for `user`.
    fn appends_for(&self, user: &str) -> Vec<(u64, Bytes)> {
        self.requests
            .iter()
            .filter_map(|request| match request {
                StoreRequest::Append {
                    ticket,
                    user: to,
                    frame,
                } if to == user.as_bytes() => Some((*ticket, frame.clone())),
                _ => None,
            })
            .collect()
    }

    fn loads(&self) -> Vec<(u64, Vec<u8>)> {
        self.requests
            .iter()
            .filter_map(|request| match request {
                StoreRequest::Load { ticket, user, .. } => Some((*ticket, user.clone())),
                _ => None,
            })
            .collect()
    }

    fn removes(&self) -> Vec<(Vec<u8>, Vec<u64>)> {
        self.requests
            .iter()
            .filter_map(|request| match request {
                StoreRequest::Remove { user, seqs } => Some((user.clone(), seqs.clone())),
                _ => None,
            })
            .collect()
    }
}

fn name(text: &str) -> Name {
    Name::new(text.as_bytes()).expect("test names are valid")
}

fn frame(kind: u16, id: u32, src: &str, dst: &str, body: &[u8]) -> Bytes {
    codec::encode(kind, id, name(src), name(dst), body).expect("test frames are valid")
}

fn message(id: u32, src: &str, dst: &str, body: &str) -> Bytes {
    frame(codec::TYPE_MESSAGE, id, src, dst, body.as_bytes())
}

fn answer(id: u32, src: &str, dst: &str, text: &[u8]) -> Bytes {
    frame(codec::TYPE_ANSWER, id, src, dst, text)
}

fn conn(slot: u32) -> ConnId {
    ConnId::new(slot, 1)
}

struct Harness {
    service: Bin24Service,
    out: RecordingOutbox,
    store: RecordingStore,
    now_ms: u64,
}

impl Harness {
    fn new() -> Self {
        Harness {
            service: Bin24Service::new(
                Bin24Config {
                    ack_timeout_ms: ACK_MS,
                    unacked_per_recipient_max: 4,
                    offline_window_bytes: 100,
                    delivery_grace_ms: GRACE_MS,
                    unconfirmed_bytes_per_conn_max: 1 << 20,
                    loaded_bytes_max: 1 << 20,
                    stalled_holder_ms: Bin24Config::default().stalled_holder_ms,
                    users: None,
                    sender_bytes_per_s_max: Bin24Config::default().sender_bytes_per_s_max,
                    pair_bytes_per_s_max: Bin24Config::default().pair_bytes_per_s_max,
                    timer_tick_ms: 10,
                    crossing_grace_ms: 0,
                },
                0,
            ),
            out: RecordingOutbox::default(),
            store: RecordingStore::default(),
            now_ms: 0,
        }
    }

    fn feed(&mut self, id: ConnId, bytes: &[u8]) {
        let mut input = BytesMut::from(bytes);
        self.service
            .on_data(id, &mut input, self.now_ms, &mut self.out, &mut self.store);
        assert!(input.is_empty(), "BIN24 keeps no partial frame here");
    }

    /// Accept `id` and register it as `user` with a harmless first frame (an answer to a
    /// user who is offline, which is dropped).
    fn connect(&mut self, id: ConnId, user: &str) {
        self.service.on_accept(id, ip("127.0.0.1"));
        self.feed(id, &answer(9999, user, "nobody", b"200"));
    }

    fn advance_to(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.service
            .on_timers(now_ms, &mut self.out, &mut self.store);
    }

    /// Advance to `until_ms` a timer tick at a time, as the reactor does.
    fn tick_to(&mut self, until_ms: u64) {
        while self.now_ms < until_ms {
            self.advance_to((self.now_ms + 10).min(until_ms));
        }
    }

    fn complete(&mut self, event: StoreEvent) {
        self.service
            .on_store_event(event, &mut self.out, &mut self.store);
    }

    fn close(&mut self, id: ConnId) {
        self.close_for(id, CloseReason::PeerReset);
    }

    fn close_for(&mut self, id: ConnId, reason: CloseReason) {
        self.service
            .on_close(id, reason, &mut self.out, &mut self.store);
    }

    /// The reactor reports the peer's TCP acknowledged (or never will) the buffer of `note`.
    fn notify(&mut self, id: ConnId, note: u64, acked: bool) {
        self.service
            .on_notify(id, note, acked, self.now_ms, &mut self.out, &mut self.store);
    }

    /// Every stored seq removed so far, in order.
    fn removed(&self) -> Vec<u64> {
        self.store
            .removes()
            .into_iter()
            .flat_map(|(_, seqs)| seqs)
            .collect()
    }
}

#[test]
fn a_message_to_an_online_user_is_forwarded_verbatim_and_its_answer_goes_back() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();

    let hello = message(0, "alice", "bob", "hi bob");
    h.feed(conn(1), &hello);
    assert_eq!(h.out.sent_to(conn(2)), std::slice::from_ref(&hello));
    assert_eq!(h.service.unacked_count(), 1);

    // The original client answers with the received len and garbage after "200\0".
    let mut garbage = b"200\0".to_vec();
    garbage.extend_from_slice(b"hi"); // len 30, as the message it answers
    let reply = answer(0, "bob", "alice", &garbage);
    h.feed(conn(2), &reply);
    assert_eq!(h.out.sent_to(conn(1)), [reply], "relayed verbatim");
    assert_eq!(h.service.unacked_count(), 0);

    // The timer was cancelled: nothing happens at the deadline.
    h.advance_to(10 * ACK_MS);
    assert!(h.out.closed.is_empty());
}

#[test]
fn the_first_frame_registers_the_user_and_asks_the_store_for_its_frames() {
    let mut h = Harness::new();
    h.service.on_accept(conn(1), ip("127.0.0.1"));
    h.feed(conn(1), &message(0, "alice", "bob", "x"));
    assert_eq!(h.store.loads().len(), 1);
    assert_eq!(h.store.loads()[0].1, b"alice");
    assert_eq!(h.service.online_count(), 1);
    // Later frames do not load again.
    h.feed(conn(1), &message(1, "alice", "bob", "y"));
    assert_eq!(h.store.loads().len(), 1);
}

#[test]
fn a_message_to_an_offline_user_is_stored_and_answered_300_once_durable() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.out.clear();
    let msg = message(3, "alice", "carol", "are you there?");
    h.feed(conn(1), &msg);
    let appends = h.store.appends_for("carol");
    assert_eq!(appends.len(), 1);
    let (ticket, stored) = appends[0].clone();
    // Stored as type 2, otherwise unchanged.
    let mut expected = msg.to_vec();
    expected[2] = 2;
    assert_eq!(stored.to_vec(), expected);
    assert!(h.out.sent.is_empty(), "no 300 before the frame is durable");

    h.complete(StoreEvent::Appended { ticket, seq: 17 });
    let expected_answer = answer(3, "carol", "alice", b"300");
    assert_eq!(expected_answer.len(), 27);
    assert_eq!(h.out.sent_to(conn(1)), [expected_answer]);
}

#[test]
fn the_contract_vector_for_300_matches() {
    // tests/vectors/bin24-frames.tsv: "the server answering alice: nobody is offline, id 3".
    let bytes = codec::encode_answer(3, name("nobody"), name("alice"), b"300");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "1b000100030000006e6f626f64790000616c696365000000333030"
    );
}

#[test]
fn a_full_store_answers_507_and_a_failed_store_never_answers_300() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.out.clear();
    h.feed(conn(1), &message(1, "alice", "carol", "a"));
    h.feed(conn(1), &message(2, "alice", "carol", "b"));
    let appends = h.store.appends_for("carol");
    h.complete(StoreEvent::Full {
        ticket: appends[0].0,
    });
    h.complete(StoreEvent::Failed {
        ticket: Some(appends[1].0),
        error: "disk on fire".to_string(),
    });
    assert_eq!(
        h.out.sent_to(conn(1)),
        [
            answer(1, "carol", "alice", b"507"),
            answer(2, "carol", "alice", b"507")
        ]
    );
}

#[test]
fn no_answer_within_the_ack_timeout_disconnects_the_recipient_and_stores_its_messages() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();
    h.feed(conn(1), &message(5, "alice", "bob", "first"));
    h.now_ms = 1_000;
    h.feed(conn(1), &message(6, "alice", "bob", "second"));

    h.advance_to(ACK_MS - 1);
    assert!(h.out.closed.is_empty(), "not before the deadline");
    h.advance_to(ACK_MS + 10);
    assert_eq!(
        h.out.closed,
        [(conn(2), CloseReason::Timeout, CloseMode::Now)]
    );
    // Both unanswered messages move to bob's store, in the order they were sent.
    let appends = h.store.appends_for("bob");
    assert_eq!(appends.len(), 2);
    let bodies: Vec<&[u8]> = appends.iter().map(|(_, f)| &f[24..]).collect();
    assert!(bodies.contains(&&b"first"[..]) && bodies.contains(&&b"second"[..]));
    // Bob is offline at once: a new message to him is stored, not sent to the closing socket.
    h.feed(conn(1), &message(7, "alice", "bob", "third"));
    assert_eq!(h.store.appends_for("bob").len(), 3);
    assert_eq!(
        h.out.sent_to(conn(2)).len(),
        2,
        "only the two messages sent before the timeout reached bob's socket"
    );

    // Each sender hears "300" (SRC = bob, DST = alice) once its frame is durable.
    for (seq, (ticket, _)) in h.store.appends_for("bob").into_iter().enumerate() {
        h.complete(StoreEvent::Appended {
            ticket,
            seq: seq as u64,
        });
    }
    let answers = h.out.sent_to(conn(1));
    assert_eq!(answers.len(), 3);
    for (answer_bytes, id) in answers.iter().zip([5u32, 6, 7]) {
        assert_eq!(answer_bytes, &answer(id, "bob", "alice", b"300"));
    }
    // The reactor then reports bob's close: nothing more happens.
    h.close(conn(2));
    assert_eq!(h.store.appends_for("bob").len(), 3);
}

#[test]
fn a_recipient_that_disconnects_with_unanswered_messages_gets_them_stored() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.feed(conn(1), &message(1, "alice", "bob", "one"));
    h.feed(conn(1), &message(2, "alice", "bob", "two"));
    h.close(conn(2));
    assert_eq!(h.store.appends_for("bob").len(), 2);
    assert_eq!(h.service.unacked_count(), 0);
    assert_eq!(h.service.online_count(), 1);
    // The timers were cancelled with them.
    h.advance_to(10 * ACK_MS);
    assert!(h.out.closed.is_empty());
}

#[test]
fn a_newer_connection_for_a_name_wins() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.feed(conn(1), &message(1, "alice", "bob", "to the old bob"));
    h.out.clear();
    h.connect(conn(3), "bob");
    assert_eq!(
        h.out.closed,
        [(conn(2), CloseReason::Replaced, CloseMode::Now)]
    );
    // The old connection's unanswered message went to the store.
    assert_eq!(h.store.appends_for("bob").len(), 1);
    // The old connection's page load is still in flight (one per user): once it is back,
    // the new connection loads from the start, so it sees that message too.
    let (old_load, _) = h.store.loads()[1].clone();
    h.complete(StoreEvent::Loaded {
        ticket: old_load,
        user: b"bob".to_vec(),
        frames: Vec::new(),
        more: false,
    });
    let last_request = h.store.requests.last().expect("a request");
    assert!(
        matches!(last_request, StoreRequest::Load { user, after_seq: 0, .. } if user == b"bob")
    );
    // The old connection's close changes nothing. A new message is stored behind the one
    // still being stored, so that it does not overtake it.
    h.close(conn(2));
    let msg = message(2, "alice", "bob", "to the new bob");
    h.feed(conn(1), &msg);
    assert!(h.out.sent_to(conn(3)).is_empty());
    let appends = h.store.appends_for("bob");
    assert_eq!(appends.len(), 2);
    for (seq, (ticket, _)) in (1..).zip(&appends) {
        h.complete(StoreEvent::Appended {
            ticket: *ticket,
            seq,
        });
    }
    let (ticket, _) = h.load_in_flight("bob");
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"bob".to_vec(),
        frames: (1..).zip(appends.iter().map(|(_, f)| f.clone())).collect(),
        more: false,
    });
    let to_new: Vec<Bytes> = h.out.notified.iter().map(|(_, b, _)| b.clone()).collect();
    assert_eq!(
        to_new,
        appends.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>()
    );
    // Stored while that page was read: one more page is asked for, and it is empty.
    let (ticket, after_seq) = h.load_in_flight("bob");
    assert_eq!(after_seq, 2);
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"bob".to_vec(),
        frames: Vec::new(),
        more: false,
    });
    // With the backlog queued, new messages go live to the new connection.
    let live = message(3, "alice", "bob", "live");
    h.feed(conn(1), &live);
    assert_eq!(h.out.sent_to(conn(3)), [live]);
    assert_eq!(h.service.online_count(), 2);
}

#[test]
fn a_frame_with_another_src_closes_the_connection() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();
    h.feed(conn(1), &message(1, "mallory", "bob", "spoofed"));
    assert_eq!(
        h.out.closed,
        [(conn(1), CloseReason::ProtocolError, CloseMode::Now)]
    );
    assert!(h.out.sent_to(conn(2)).is_empty());
    assert_eq!(h.out.rejected, 1);
}

#[test]
fn bad_types_lengths_and_empty_names_close_the_connection() {
    for bad in [
        frame(codec::TYPE_OFFLINE, 0, "alice", "bob", b"x"),
        frame(7, 0, "alice", "bob", b"x"),
        {
            let mut short = message(0, "alice", "bob", "x").to_vec();
            short[0] = 23;
            short[1] = 0;
            Bytes::from(short)
        },
        {
            let mut long = message(0, "alice", "bob", "x").to_vec();
            long[0] = 0x01;
            long[1] = 0x04; // 1025
            Bytes::from(long)
        },
        codec::encode(
            codec::TYPE_MESSAGE,
            0,
            Name::from_field(&[0; 8]),
            name("bob"),
            b"x",
        )
        .expect("frame"),
    ] {
        let mut h = Harness::new();
        h.service.on_accept(conn(1), ip("127.0.0.1"));
        h.feed(conn(1), &bad);
        assert_eq!(
            h.out.closed,
            [(conn(1), CloseReason::ProtocolError, CloseMode::Now)],
            "frame {bad:02x?}"
        );
        assert_eq!(h.service.online_count(), 0);
    }
}

#[test]
fn an_answer_for_an_unknown_message_id_is_forwarded_and_changes_nothing() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();
    let stray = answer(424242, "bob", "alice", b"200");
    h.feed(conn(2), &stray);
    assert_eq!(h.out.sent_to(conn(1)), [stray]);
    assert!(h.out.closed.is_empty());
}

#[test]
fn only_the_recipient_can_answer_a_message() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.connect(conn(3), "carol");
    h.feed(conn(1), &message(0, "alice", "bob", "for bob"));
    // Carol answers alice's message to bob: forwarded, but bob still owes the answer.
    h.feed(conn(3), &answer(0, "carol", "alice", b"200"));
    assert_eq!(h.service.unacked_count(), 1);
    h.advance_to(ACK_MS + 10);
    assert_eq!(
        h.out.closed,
        [(conn(2), CloseReason::Timeout, CloseMode::Now)]
    );
}

#[test]
fn an_answer_to_an_offline_user_is_dropped() {
    let mut h = Harness::new();
    h.connect(conn(2), "bob");
    h.out.clear();
    h.feed(conn(2), &answer(0, "bob", "alice", b"200"));
    assert!(h.out.sent.is_empty());
    assert!(
        h.store.appends_for("alice").is_empty(),
        "answers are never stored"
    );
}

#[test]
fn stored_frames_leave_the_store_only_once_acknowledged_and_the_grace_passed() {
    let mut h = Harness::new();
    h.service.on_accept(conn(1), ip("127.0.0.1"));
    h.feed(conn(1), &answer(0, "carol", "nobody", b"200"));
    let (ticket, _) = h.store.loads()[0].clone();
    let first = frame(codec::TYPE_OFFLINE, 0, "alice", "carol", b"one");
    let second = frame(codec::TYPE_OFFLINE, 1, "alice", "carol", b"two");
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames: vec![(10, first.clone()), (11, second.clone())],
        more: false,
    });
    let delivered: Vec<(ConnId, Bytes)> = h
        .out
        .notified
        .iter()
        .map(|(to, bytes, _)| (*to, bytes.clone()))
        .collect();
    assert_eq!(delivered, [(conn(1), first), (conn(1), second)]);

    let notes: Vec<u64> = h.out.notified.iter().map(|(_, _, note)| *note).collect();
    h.advance_to(100);
    h.notify(conn(1), notes[0], true);
    assert!(
        h.store.removes().is_empty(),
        "acknowledged by TCP is not read by the program: nothing leaves before the grace"
    );
    h.advance_to(100 + GRACE_MS - 1);
    assert!(h.store.removes().is_empty());
    h.advance_to(100 + GRACE_MS);
    // The second was never acknowledged: it stays stored.
    assert_eq!(h.removed(), [10]);
    assert_eq!(h.service.custody().delivered_grace, 1);
    // A note reported twice does nothing more.
    h.notify(conn(1), notes[0], true);
    h.advance_to(100 + 3 * GRACE_MS);
    assert_eq!(h.removed(), [10]);
}

#[test]
fn a_reset_within_the_grace_keeps_acknowledged_frames_stored() {
    let mut h = Harness::new();
    h.connect(conn(1), "carol");
    let (ticket, _) = h.store.loads()[0].clone();
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames: vec![(1, frame(codec::TYPE_OFFLINE, 0, "alice", "carol", b"x"))],
        more: false,
    });
    let note = h.out.notified[0].2;
    h.advance_to(10);
    h.notify(conn(1), note, true);
    // The program closed with the frame unread: its kernel sent a reset.
    h.close_for(conn(1), CloseReason::PeerReset);
    h.advance_to(10 * GRACE_MS);
    assert!(h.store.removes().is_empty(), "kept for the next login");
    assert_eq!(h.service.custody().kept_for_redelivery, 1);
}

#[test]
fn a_clean_close_delivers_what_was_acknowledged_and_keeps_the_rest() {
    let mut h = Harness::new();
    h.connect(conn(1), "carol");
    let (ticket, _) = h.store.loads()[0].clone();
    let frames = (1..=3u64)
        .map(|seq| {
            (
                seq,
                frame(codec::TYPE_OFFLINE, seq as u32, "alice", "carol", b"x"),
            )
        })
        .collect();
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames,
        more: false,
    });
    let notes: Vec<u64> = h.out.notified.iter().map(|(_, _, note)| *note).collect();
    h.notify(conn(1), notes[0], true);
    h.notify(conn(1), notes[1], true);
    // A FIN: the program read everything that had arrived before it closed.
    h.close_for(conn(1), CloseReason::PeerClosed);
    assert_eq!(h.removed(), [1, 2]);
    assert_eq!(h.service.custody().delivered_clean_close, 2);
    assert_eq!(h.service.custody().kept_for_redelivery, 1);
}

#[test]
fn an_answer_to_a_stored_frame_delivers_it_and_every_frame_before_it_at_once() {
    let mut h = Harness::new();
    h.connect(conn(2), "alice");
    h.connect(conn(1), "carol");
    let (ticket, _) = h.store.loads()[1].clone();
    let frames = (1..=3u64)
        .map(|seq| {
            (
                seq,
                frame(codec::TYPE_OFFLINE, 40 + seq as u32, "alice", "carol", b"x"),
            )
        })
        .collect();
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames,
        more: false,
    });
    h.out.clear();
    // An answer naming no stored frame confirms nothing.
    h.feed(conn(1), &answer(7, "carol", "alice", b"200"));
    assert!(h.store.removes().is_empty());
    // carol answers the second frame (alice's messageID 42): the first was read before it.
    let reply = answer(42, "carol", "alice", b"200");
    h.feed(conn(1), &reply);
    assert_eq!(h.removed(), [1, 2]);
    assert_eq!(h.service.custody().delivered_answered, 2);
    // Rule 5 holds: the answer is relayed to alice.
    assert!(h.out.sent_to(conn(2)).contains(&reply));
    // Its late acknowledgement changes nothing; the third still waits.
    let notes: Vec<u64> = h.out.notified.iter().map(|(_, _, note)| *note).collect();
    assert!(notes.is_empty(), "cleared above; nothing new was sent");
    h.close_for(conn(1), CloseReason::PeerReset);
    assert_eq!(h.removed(), [1, 2]);
}

#[test]
fn stored_frames_are_not_sent_to_a_connection_that_no_longer_holds_the_name() {
    let mut h = Harness::new();
    h.connect(conn(1), "carol");
    let (ticket, _) = h.store.loads()[0].clone();
    h.connect(conn(2), "carol");
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames: vec![(1, frame(codec::TYPE_OFFLINE, 0, "alice", "carol", b"x"))],
        more: false,
    });
    assert!(h.out.notified.is_empty());
}

#[test]
fn a_reused_message_id_stores_the_older_pending_message() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.connect(conn(3), "carol");
    h.feed(conn(1), &message(0, "alice", "bob", "old"));
    // Alice's client restarted its counter: messageID 0 again, to carol.
    h.feed(conn(1), &message(0, "alice", "carol", "new"));
    let appends = h.store.appends_for("bob");
    assert_eq!(
        appends.len(),
        1,
        "the older message is kept for bob, not lost"
    );
    assert_eq!(&appends[0].1[24..], b"old");
    assert_eq!(h.service.unacked_count(), 1);
}

#[test]
fn too_many_unanswered_messages_to_one_recipient_go_to_its_store() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();
    for id in 0..6 {
        h.feed(conn(1), &message(id, "alice", "bob", "m"));
    }
    // The harness allows 4 unanswered messages per recipient.
    assert_eq!(h.out.sent_to(conn(2)).len(), 4);
    assert_eq!(h.store.appends_for("bob").len(), 2);
}

#[test]
fn a_message_to_oneself_is_forwarded_and_answerable() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.out.clear();
    let note = message(0, "alice", "alice", "note to self");
    h.feed(conn(1), &note);
    assert_eq!(h.out.sent_to(conn(1)), [note]);
    h.feed(conn(1), &answer(0, "alice", "alice", b"200"));
    assert_eq!(h.service.unacked_count(), 0);
}

#[test]
fn frames_split_at_every_byte_are_handled_the_same() {
    let stream: Vec<u8> = [
        message(0, "alice", "bob", "one"),
        message(1, "alice", "bob", "two"),
    ]
    .concat();
    for split in 0..=stream.len() {
        let mut h = Harness::new();
        h.connect(conn(2), "bob");
        h.service.on_accept(conn(1), ip("127.0.0.1"));
        h.out.clear();
        let mut input = BytesMut::new();
        for part in [&stream[..split], &stream[split..]] {
            input.extend_from_slice(part);
            h.service
                .on_data(conn(1), &mut input, 0, &mut h.out, &mut h.store);
        }
        assert_eq!(h.out.sent_to(conn(2)).len(), 2, "split at {split}");
    }
}

fn stored(seqs: std::ops::Range<u64>) -> Vec<(u64, Bytes)> {
    seqs.map(|seq| {
        (
            seq,
            frame(
                codec::TYPE_OFFLINE,
                seq as u32,
                "alice",
                "carol",
                &[b'x'; 40],
            ),
        )
    })
    .collect()
}

#[test]
fn a_large_backlog_goes_out_a_window_at_a_time_in_pages() {
    // The harness window (and page) is 100 bytes; each stored frame here is 64 bytes.
    let mut h = Harness::new();
    h.service.on_accept(conn(1), ip("127.0.0.1"));
    h.feed(conn(1), &answer(0, "carol", "nobody", b"200"));
    let frames = stored(0..10);
    let mut next_page = 0;
    for acked in 0..100 {
        // Answer the load in flight with the next page of two frames.
        if let Some(StoreRequest::Load {
            ticket,
            after_seq,
            bytes_max,
            ..
        }) = h.store.requests.last().cloned()
        {
            assert_eq!(bytes_max, codec::FRAME_BYTES_MAX, "a page, never the whole");
            if next_page < frames.len() && (next_page == 0 || after_seq == next_page as u64 - 1) {
                let page: Vec<_> = frames[next_page..(next_page + 2).min(frames.len())].to_vec();
                next_page += page.len();
                h.complete(StoreEvent::Loaded {
                    ticket,
                    user: b"carol".to_vec(),
                    frames: page,
                    more: next_page < frames.len(),
                });
            }
        }
        // The window holds at most two 64-byte frames unacknowledged.
        let unacked = h.out.notified.len() - acked;
        assert!(unacked <= 2, "{unacked} frames in flight");
        if acked == h.out.notified.len() {
            break;
        }
        let note = h.out.notified[acked].2;
        h.notify(conn(1), note, true);
    }
    let delivered: Vec<Bytes> = h.out.notified.iter().map(|(_, b, _)| b.clone()).collect();
    let expected: Vec<Bytes> = frames.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(delivered, expected);
    h.advance_to(GRACE_MS);
    assert_eq!(h.removed(), (0..10).collect::<Vec<u64>>());
    assert_eq!(h.service.loaded_bytes(), 0, "nothing stays accounted");
}

#[test]
fn a_backlog_stops_when_its_connection_goes_away() {
    let mut h = Harness::new();
    h.service.on_accept(conn(1), ip("127.0.0.1"));
    h.feed(conn(1), &answer(0, "carol", "nobody", b"200"));
    let (ticket, _) = h.store.loads()[0].clone();
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames: stored(0..10),
        more: true,
    });
    let first_note = h.out.notified[0].2;
    // The connection closed before the first frame was acknowledged: nothing is removed,
    // nothing more is sent or loaded, and its memory is given back.
    h.notify(conn(1), first_note, false);
    h.close(conn(1));
    assert_eq!(h.out.notified.len(), 2);
    assert!(h.store.removes().is_empty());
    assert_eq!(h.store.loads().len(), 1);
    assert_eq!(h.service.loaded_bytes(), 0);
}

#[test]
fn reconnects_never_have_more_than_one_page_loading_per_user() {
    let mut h = Harness::new();
    h.connect(conn(1), "carol");
    assert_eq!(h.store.loads().len(), 1);
    // A storm of logins as carol while the first page is still loading.
    for slot in 2..50 {
        h.connect(conn(slot), "carol");
    }
    assert_eq!(h.store.loads().len(), 1, "one load in flight per user");
    let (ticket, _) = h.store.loads()[0].clone();
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames: stored(0..2),
        more: true,
    });
    // The page was for a connection replaced since: the holder loads from the start.
    assert!(h.out.notified.is_empty());
    assert_eq!(h.store.loads().len(), 2);
    match h.store.requests.last() {
        Some(StoreRequest::Load { after_seq, .. }) => assert_eq!(*after_seq, 0),
        other => panic!("not a load: {other:?}"),
    }
    assert!(h.service.loaded_bytes() <= codec::FRAME_BYTES_MAX);
}

#[test]
fn the_global_budget_makes_backlogs_wait_their_turn() {
    let mut h = Harness::new();
    h.service = Bin24Service::new(
        Bin24Config {
            offline_window_bytes: 100,
            // Room for one page (a page is at least one largest frame, 1024 bytes).
            loaded_bytes_max: 1500,
            delivery_grace_ms: GRACE_MS,
            ..Bin24Config::default()
        },
        0,
    );
    h.connect(conn(1), "carol");
    h.connect(conn(2), "dave");
    assert_eq!(h.store.loads().len(), 1, "dave waits for the budget");
    let (ticket, _) = h.store.loads()[0].clone();
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames: stored(0..1),
        more: false,
    });
    // carol's page arrived (64 bytes held): dave's page now fits.
    assert_eq!(h.store.loads().len(), 2);
    assert_eq!(h.store.loads()[1].1, b"dave");
}

/// carol (conn 1) was sent one stored frame her TCP never acknowledges, holding the whole
/// budget (one page); dave (conn 2) waits for it. Returns the harness at time 0.
fn carol_holds_the_budget_and_dave_waits() -> Harness {
    let mut h = Harness::new();
    h.service = Bin24Service::new(
        Bin24Config {
            offline_window_bytes: 100,
            // Room for one page (a page is at least one largest frame, 1024 bytes).
            loaded_bytes_max: 1500,
            delivery_grace_ms: GRACE_MS,
            stalled_holder_ms: STALL_MS,
            ..Bin24Config::default()
        },
        0,
    );
    h.connect(conn(1), "carol");
    let (ticket, _) = h.store.loads()[0].clone();
    // Two pages' worth of frames: the first 100-byte window goes out, the rest waits in
    // memory, and carol's held bytes keep a second page out of the budget.
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames: stored(0..20),
        more: true,
    });
    assert_eq!(
        h.out.notified.len(),
        2,
        "a window of 100 bytes: two 64-byte frames"
    );
    h.connect(conn(2), "dave");
    assert_eq!(h.store.loads().len(), 1, "dave waits for the budget");
    h
}

const STALL_MS: u64 = 1_000;

#[test]
fn a_login_that_acknowledges_nothing_while_others_wait_for_the_budget_is_closed() {
    let mut h = carol_holds_the_budget_and_dave_waits();
    h.tick_to(STALL_MS);
    assert!(h.out.closed.is_empty(), "not before the stall time");
    // Seen at the first sweep after the stall time: sweeps are a quarter of it apart.
    h.tick_to(STALL_MS + STALL_MS / 4 + 10);
    assert_eq!(
        h.out.closed,
        [(conn(1), CloseReason::SlowConsumer, CloseMode::Now)]
    );
    // What carol held is dave's now; her frames stay stored (none removed), sent again at
    // her next login.
    assert_eq!(h.store.loads().len(), 2);
    assert_eq!(h.store.loads()[1].1, b"dave");
    assert!(h.removed().is_empty());
    assert_eq!(h.service.custody().kept_for_redelivery, 2);
}

#[test]
fn a_login_that_acknowledges_slowly_keeps_its_share() {
    let mut h = carol_holds_the_budget_and_dave_waits();
    // carol's TCP acknowledges one frame in each stall time: slow, not stalled.
    let mut now_ms = 0;
    for _ in 0..6 {
        now_ms += STALL_MS * 3 / 4;
        h.tick_to(now_ms);
        let (_, _, note) = *h
            .out
            .notified
            .iter()
            .rev()
            .find(|(to, _, _)| *to == conn(1))
            .expect("a frame was sent to carol");
        h.notify(conn(1), note, true);
    }
    assert!(h.out.closed.is_empty(), "{:?}", h.out.closed);
}

#[test]
fn a_stalled_login_that_keeps_nobody_waiting_is_left_alone() {
    let mut h = carol_holds_the_budget_and_dave_waits();
    // dave leaves: nobody waits for what carol holds.
    h.close(conn(2));
    h.tick_to(10 * STALL_MS);
    assert!(h.out.closed.is_empty(), "{:?}", h.out.closed);
    // Someone comes to wait: the stall has lasted long enough already, so the next sweep
    // closes carol.
    h.connect(conn(3), "erin");
    h.tick_to(10 * STALL_MS + STALL_MS / 4 + 10);
    assert_eq!(
        h.out.closed,
        [(conn(1), CloseReason::SlowConsumer, CloseMode::Now)]
    );
}

#[test]
fn a_users_list_decides_who_logs_in_from_where() {
    let mut h = Harness::new();
    let users = super::users::UserList::parse(
        "alice 127.0.0.1
bob 10.0.0.0/8
",
    )
    .unwrap();
    h.service = Bin24Service::new(
        Bin24Config {
            users: Some(users),
            ..Bin24Config::default()
        },
        0,
    );
    h.service.on_accept(conn(1), ip("127.0.0.1"));
    h.feed(conn(1), &message(0, "alice", "bob", "hi"));
    h.service.on_accept(conn(2), ip("127.0.0.1"));
    h.feed(conn(2), &message(0, "bob", "alice", "from the wrong place"));
    h.service.on_accept(conn(3), ip("10.1.2.3"));
    h.feed(conn(3), &message(0, "mallory", "alice", "not listed"));
    assert_eq!(h.out.identified, [conn(1)]);
    assert!(h
        .out
        .closed
        .iter()
        .any(|c| *c == (conn(2), CloseReason::ProtocolError, CloseMode::Now)));
    assert!(h
        .out
        .closed
        .iter()
        .any(|c| *c == (conn(3), CloseReason::ProtocolError, CloseMode::Now)));
    assert_eq!(h.service.custody().logins_refused, 2);
    // Only alice's message was stored (for bob, listed but offline); a message to a name
    // that can never log in is refused with "507", not stored.
    h.feed(conn(1), &message(1, "alice", "nobody", "lost cause"));
    assert_eq!(h.store.appends_for("bob").len(), 1);
    assert!(h.store.appends_for("nobody").is_empty());
    let refused = h.out.sent_to(conn(1));
    assert_eq!(
        refused.last().map(|f| &f[24..]),
        Some(&b"507"[..]),
        "{refused:?}"
    );
}

#[test]
fn a_newer_login_replaces_the_holder_only_from_the_holders_address() {
    let mut h = Harness::new();
    h.service.on_accept(conn(1), ip("127.0.0.1"));
    h.feed(conn(1), &answer(0, "bob", "nobody", b"200"));
    h.service.on_accept(conn(2), ip("127.0.0.2"));
    h.feed(conn(2), &answer(0, "bob", "nobody", b"200"));
    assert_eq!(
        h.out.closed,
        [(conn(2), CloseReason::ProtocolError, CloseMode::Now)],
        "another address cannot push bob off"
    );
    h.service.on_accept(conn(3), ip("127.0.0.1"));
    h.feed(conn(3), &answer(0, "bob", "nobody", b"200"));
    assert!(h
        .out
        .closed
        .contains(&(conn(1), CloseReason::Replaced, CloseMode::Now)));
}

#[test]
fn only_a_valid_first_frame_marks_the_connection_identified() {
    // The reactor closes a connection that is not identified within its handshake deadline;
    // BIN24 identifies a user by its first valid frame, and by nothing less.
    let mut h = Harness::new();
    h.service.on_accept(conn(1), ip("127.0.0.1"));
    // Half a header: not yet a frame.
    let whole = message(1, "alice", "bob", "hi");
    let mut input = BytesMut::from(&whole[..10]);
    h.service
        .on_data(conn(1), &mut input, 0, &mut h.out, &mut h.store);
    assert!(h.out.identified.is_empty());
    input.extend_from_slice(&whole[10..]);
    h.service
        .on_data(conn(1), &mut input, 0, &mut h.out, &mut h.store);
    assert_eq!(h.out.identified, [conn(1)]);
    // Later frames do not mark it again.
    h.feed(conn(1), &message(2, "alice", "bob", "again"));
    assert_eq!(h.out.identified, [conn(1)]);

    // A first frame with an empty SRC, or a type a client may not send, identifies nobody.
    h.service.on_accept(conn(2), ip("127.0.0.1"));
    h.feed(conn(2), &message(1, "", "bob", "hi"));
    h.service.on_accept(conn(3), ip("127.0.0.1"));
    h.feed(conn(3), &frame(7, 1, "carol", "bob", b"x"));
    assert_eq!(h.out.identified, [conn(1)]);
}

#[test]
fn one_answer_settles_one_of_a_live_and_a_stored_message_with_the_same_key() {
    let mut h = Harness::new();
    h.connect(conn(2), "alice");
    h.connect(conn(1), "carol");
    let (ticket, _) = h.store.loads()[1].clone();
    // A stored frame from alice's earlier session, messageID 5...
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"carol".to_vec(),
        frames: vec![(1, frame(codec::TYPE_OFFLINE, 5, "alice", "carol", b"old"))],
        more: false,
    });
    // ...and a live one from her new session with the same messageID.
    h.feed(conn(2), &message(5, "alice", "carol", "new"));
    assert_eq!(h.service.unacked_count(), 1);
    h.feed(conn(1), &answer(5, "carol", "alice", b"200"));
    assert_eq!(h.service.unacked_count(), 0, "the live one first");
    assert!(h.store.removes().is_empty());
    h.feed(conn(1), &answer(5, "carol", "alice", b"200"));
    assert_eq!(h.removed(), [1], "the second answer settles the stored one");
}

#[test]
fn an_answer_the_server_held_back_does_not_time_its_recipient_out() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.feed(conn(1), &message(0, "alice", "bob", "hi"));
    // The store's queue filled and the server stopped reading for a while: bob's answer may
    // be sitting unread in bob's socket.
    h.service.note_input_held(ACK_MS - 100);
    h.advance_to(ACK_MS + 10);
    assert!(h.out.closed.is_empty(), "not bob's fault");
    // A whole new window; without another hold, no answer in it closes bob as usual.
    h.advance_to(2 * ACK_MS - 100);
    assert!(h.out.closed.is_empty());
    h.advance_to(2 * ACK_MS + 20);
    assert_eq!(
        h.out.closed,
        [(conn(2), CloseReason::Timeout, CloseMode::Now)]
    );
}

#[test]
fn a_sender_over_its_rates_is_answered_429_and_its_recipient_gets_nothing() {
    let mut h = Harness::new();
    h.service = Bin24Service::new(
        Bin24Config {
            sender_bytes_per_s_max: 4096,
            pair_bytes_per_s_max: 2048,
            ..Bin24Config::default()
        },
        0,
    );
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();
    let body = "x".repeat(codec::BODY_BYTES_MAX);
    // Two largest frames fill the pair's 2048 bytes; the third is refused, not forwarded.
    for id in 1..=3 {
        h.feed(conn(1), &message(id, "alice", "bob", &body));
    }
    assert_eq!(h.out.sent_to(conn(2)).len(), 2);
    assert_eq!(
        h.out.sent_to(conn(1)),
        [answer(3, "bob", "alice", codec::ANSWER_RATE_LIMITED)]
    );
    assert_eq!(h.out.rejected, 1);
    // Another recipient has its own pair budget, until the sender's total (4096) runs out.
    h.connect(conn(3), "dave");
    for id in 4..=6 {
        h.feed(conn(1), &message(id, "alice", "dave", &body));
    }
    assert_eq!(h.out.sent_to(conn(3)).len(), 2);
    assert_eq!(
        h.out.sent_to(conn(1)).last(),
        Some(&answer(6, "dave", "alice", codec::ANSWER_RATE_LIMITED))
    );
    // Frames for an offline user are not charged: the store has its own limits, and a
    // backlog reaches its user paced.
    for id in 10..=13 {
        h.feed(conn(1), &message(id, "alice", "carol", &body));
    }
    assert_eq!(h.store.appends_for("carol").len(), 4);
    // Nobody was closed for the flood, and a second later the sender may send again.
    assert!(h.out.closed.is_empty());
    h.advance_to(1_000);
    h.feed(conn(1), &message(14, "alice", "bob", "again"));
    assert_eq!(h.out.sent_to(conn(2)).len(), 3);
}

impl Harness {
    /// Answer `user`'s login page: nothing stored.
    fn complete_login_load(&mut self, user: &str) {
        let (ticket, _) = self
            .store
            .loads()
            .into_iter()
            .rfind(|(_, to)| to == user.as_bytes())
            .expect("the login asked for the stored frames");
        self.complete(StoreEvent::Loaded {
            ticket,
            user: user.as_bytes().to_vec(),
            frames: Vec::new(),
            more: false,
        });
    }

    /// The load in flight for `user`: its ticket and the seq it starts after.
    fn load_in_flight(&self, user: &str) -> (u64, u64) {
        self.store
            .requests
            .iter()
            .rev()
            .find_map(|request| match request {
                StoreRequest::Load {
                    ticket,
                    user: to,
                    after_seq,
                    ..
                } if to == user.as_bytes() => Some((*ticket, *after_seq)),
                _ => None,
            })
            .expect("a load was asked for")
    }

    /// Stored frames written to `id` so far.
    fn notified_to(&self, id: ConnId) -> Vec<Bytes> {
        self.out
            .notified
            .iter()
            .filter(|(to, _, _)| *to == id)
            .map(|(_, bytes, _)| bytes.clone())
            .collect()
    }
}

fn stored_copy(live: &Bytes) -> Bytes {
    let mut copy = live.to_vec();
    copy[2..4].copy_from_slice(&codec::TYPE_OFFLINE.to_le_bytes());
    Bytes::from(copy)
}

/// Bob at his cap of 4 unanswered: alice's 5th and 6th are stored ("300"); once he answers,
/// they go out on the same connection, oldest first, once each, and a message sent while they
/// wait is stored behind them instead of overtaking them; with the backlog all queued, live
/// delivery resumes.
#[test]
fn messages_stored_at_the_cap_go_out_on_the_same_connection_once_answers_come_in_order() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.complete_login_load("alice");
    h.complete_login_load("bob");
    let login_loads = h.store.loads().len();
    h.out.clear();
    let messages: Vec<Bytes> = (0..10)
        .map(|id| message(id, "alice", "bob", &format!("m{id}")))
        .collect();
    for m in &messages[..6] {
        h.feed(conn(1), m);
    }
    assert_eq!(h.out.sent_to(conn(2)), messages[..4]);
    let appends = h.store.appends_for("bob");
    assert_eq!(appends.len(), 2);
    // Durable, answered "300"; bob is still at his cap, so nothing is loaded for him yet.
    for (seq, (ticket, _)) in (100..).zip(&appends) {
        h.complete(StoreEvent::Appended {
            ticket: *ticket,
            seq,
        });
    }
    let stored_answers = h
        .out
        .sent_to(conn(1))
        .iter()
        .filter(|answer| &answer[24..] == codec::ANSWER_STORED)
        .count();
    assert_eq!(stored_answers, 2);
    assert_eq!(
        h.store.loads().len(),
        login_loads,
        "at the cap: nothing loaded"
    );

    // Bob answers one: under his cap, his stored frames are loaded for this connection.
    h.feed(conn(2), &answer(0, "bob", "alice", b"200"));
    assert_eq!(h.store.loads().len(), login_loads + 1);
    let (ticket, after_seq) = h.load_in_flight("bob");
    assert_eq!(after_seq, 0);
    // Alice's next message while the backlog is loading: stored behind it, not sent live.
    h.feed(conn(1), &messages[6]);
    assert_eq!(
        h.out.sent_to(conn(2)),
        messages[..4],
        "nothing overtakes the backlog"
    );
    let behind = h.store.appends_for("bob");
    assert_eq!(behind.len(), 3);
    assert_eq!(behind[2].1, stored_copy(&messages[6]));
    // It becomes durable while the page (read before it) is loading.
    h.complete(StoreEvent::Appended {
        ticket: behind[2].0,
        seq: 102,
    });
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"bob".to_vec(),
        frames: vec![(100, appends[0].1.clone()), (101, appends[1].1.clone())],
        more: false,
    });
    assert_eq!(
        h.notified_to(conn(2)),
        [stored_copy(&messages[4]), stored_copy(&messages[5])]
    );
    // The page said nothing more, but a frame became durable after it was read: asked for.
    let (ticket, after_seq) = h.load_in_flight("bob");
    assert_eq!(after_seq, 101);
    h.feed(conn(1), &messages[7]);
    assert_eq!(
        h.store.appends_for("bob").len(),
        4,
        "still behind the backlog"
    );
    let last = h.store.appends_for("bob")[3].0;
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"bob".to_vec(),
        frames: vec![(102, behind[2].1.clone())],
        more: false,
    });
    h.complete(StoreEvent::Appended {
        ticket: last,
        seq: 103,
    });
    let (ticket, after_seq) = h.load_in_flight("bob");
    assert_eq!(after_seq, 102);
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"bob".to_vec(),
        frames: vec![(103, stored_copy(&messages[7]))],
        more: false,
    });
    let expected: Vec<Bytes> = messages[4..8].iter().map(stored_copy).collect();
    assert_eq!(h.notified_to(conn(2)), expected, "in order, each once");
    assert_eq!(h.out.sent_to(conn(2)), messages[..4]);

    // The backlog is all queued: the next message goes live, behind it in the stream.
    h.feed(conn(1), &messages[8]);
    assert_eq!(h.out.sent_to(conn(2)).last(), Some(&messages[8]));
    assert_eq!(h.store.appends_for("bob").len(), 4);
    assert_eq!(h.notified_to(conn(2)), expected, "nothing sent twice");
    assert!(h.out.closed.is_empty());
}

/// The backlog sent on the same connection follows the custody rules: a frame the connection
/// drops before it counts as delivered stays stored and comes again at the next login, and one
/// answered leaves the store at once.
#[test]
fn a_backlog_sent_after_the_cap_that_drops_midway_stays_stored_for_the_next_login() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.complete_login_load("alice");
    h.complete_login_load("bob");
    for id in 0..7 {
        h.feed(conn(1), &message(id, "alice", "bob", "m"));
    }
    let appends = h.store.appends_for("bob");
    assert_eq!(appends.len(), 3);
    for (seq, (ticket, _)) in (200..).zip(&appends) {
        h.complete(StoreEvent::Appended {
            ticket: *ticket,
            seq,
        });
    }
    h.out.clear();
    for id in 0..4 {
        h.feed(conn(2), &answer(id, "bob", "alice", b"200"));
    }
    let (ticket, _) = h.load_in_flight("bob");
    let page: Vec<(u64, Bytes)> = (200..)
        .zip(appends.iter().map(|(_, f)| f.clone()))
        .collect();
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"bob".to_vec(),
        frames: page,
        more: false,
    });
    assert_eq!(h.notified_to(conn(2)).len(), 3);
    // Bob answers the first stored frame (messageID 4): delivered at once.
    h.feed(conn(2), &answer(4, "bob", "alice", b"200"));
    assert_eq!(h.removed(), [200]);
    // His TCP acknowledges the second, then the connection resets within the grace.
    let note = h.out.notified[1].2;
    h.advance_to(10);
    h.notify(conn(2), note, true);
    h.close(conn(2));
    h.advance_to(10 + 2 * GRACE_MS);
    assert_eq!(h.removed(), [200], "the rest stays stored");
    assert_eq!(h.service.custody().kept_for_redelivery, 2);

    // At the next login they are loaded again from after nothing: the store has only 201, 202.
    h.out.clear();
    h.connect(conn(3), "bob");
    let (_, after_seq) = h.load_in_flight("bob");
    assert_eq!(after_seq, 0);
    assert!(h.notified_to(conn(3)).is_empty());
}

impl Harness {
    /// Another node says it stored a frame (`id`, from `src`) for `dst` (a `Stored` notice:
    /// the stored frame's header).
    fn stored_elsewhere(&mut self, id: u32, src: &str, dst: &str) {
        let relay = crate::hub::Bin24Relay {
            to_node: Bytes::from_static(b"node-b"),
            to_incarnation: 1,
            from_node: Bytes::from_static(b"node-a"),
            from_incarnation: 1,
            step: crate::hub::Bin24Step::Stored,
            frame: frame(codec::TYPE_OFFLINE, id, src, dst, b""),
        };
        self.service.on_hub(
            crate::protocol::HubOutcome::Bin24Remote(Box::new(relay)),
            self.now_ms,
            &mut self.out,
            &mut self.store,
        );
    }

    /// This node's subscription is back after a lost link.
    fn resubscribed(&mut self) {
        self.service.on_hub(
            crate::protocol::HubOutcome::Bin24Resubscribed,
            self.now_ms,
            &mut self.out,
            &mut self.store,
        );
    }
}

/// Another node stored a frame for bob, online here with nothing stored at his login: its
/// `Stored` notice makes his store read again, the frame goes out on the same connection, and
/// from then until it is queued a new message to bob is stored behind it (order kept).
#[test]
fn a_stored_notice_for_an_online_user_loads_and_sends_the_frame_on_its_connection() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.complete_login_load("alice");
    h.complete_login_load("bob");
    let login_loads = h.store.loads().len();
    h.out.clear();

    h.stored_elsewhere(5, "zoe", "bob");
    assert_eq!(h.store.loads().len(), login_loads + 1, "bob's store read");
    let (ticket, after_seq) = h.load_in_flight("bob");
    assert_eq!(after_seq, 0);
    // Meanwhile alice's message to bob is stored behind what may be stored, not sent live.
    h.feed(conn(1), &message(1, "alice", "bob", "after"));
    assert!(h.out.sent_to(conn(2)).is_empty());
    assert_eq!(h.store.appends_for("bob").len(), 1);

    let zoes = frame(codec::TYPE_OFFLINE, 5, "zoe", "bob", b"from node a");
    h.complete(StoreEvent::Loaded {
        ticket,
        user: b"bob".to_vec(),
        frames: vec![(40, zoes.clone())],
        more: false,
    });
    assert_eq!(
        h.notified_to(conn(2)),
        [zoes],
        "on the same connection, once"
    );
    assert!(h.out.closed.is_empty());
}

/// A notice for a user not online here (gone meanwhile, or never here) reads nothing; one
/// for a user whose page is loading already reads the next page after it, not a second one
/// at once.
#[test]
fn a_stored_notice_for_a_user_not_online_here_does_nothing_and_one_while_loading_waits() {
    let mut h = Harness::new();
    h.connect(conn(2), "bob");
    let loads = h.store.loads().len();
    h.stored_elsewhere(5, "zoe", "carol");
    assert_eq!(h.store.loads().len(), loads, "carol is not online here");
    assert!(h.out.notified.is_empty());

    // bob's login page is still loading: the notice asks for another page after it.
    h.stored_elsewhere(6, "zoe", "bob");
    assert_eq!(h.store.loads().len(), loads, "one load per user at a time");
    h.complete_login_load("bob");
    assert_eq!(
        h.store.loads().len(),
        loads + 1,
        "the page after the notice"
    );
    h.complete_login_load("bob");
    assert_eq!(h.store.loads().len(), loads + 1);
}

/// After the subscription comes back, every online user's store is read once, through the
/// loaded-bytes budget (the users it has no room for wait their turn), and never again
/// until something new is said.
#[test]
fn after_the_subscription_comes_back_each_online_users_page_is_requested_once() {
    let mut h = Harness::new();
    // Room for one page at a time (a page is FRAME_BYTES_MAX here).
    h.service = Bin24Service::new(
        Bin24Config {
            offline_window_bytes: 100,
            loaded_bytes_max: codec::FRAME_BYTES_MAX,
            ..Bin24Config::default()
        },
        0,
    );
    let users = ["ana", "bob", "cid"];
    for (slot, user) in (1..).zip(users) {
        h.connect(conn(slot), user);
        h.complete_login_load(user);
    }
    let loads = h.store.loads().len();
    h.resubscribed();
    assert_eq!(h.store.loads().len(), loads + 1, "one page at a time fits");
    for _ in 0..users.len() {
        let (ticket, _) = h.store.loads().last().cloned().expect("a load");
        let user = h
            .store
            .requests
            .iter()
            .find_map(|request| match request {
                StoreRequest::Load {
                    ticket: t, user, ..
                } if *t == ticket => Some(user.clone()),
                _ => None,
            })
            .expect("the load's user");
        h.complete(StoreEvent::Loaded {
            ticket,
            user,
            frames: Vec::new(),
            more: false,
        });
    }
    let asked: Vec<Vec<u8>> = h.store.loads()[loads..]
        .iter()
        .map(|(_, user)| user.clone())
        .collect();
    let mut sorted = asked.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        users.map(|user| user.as_bytes().to_vec()),
        "each online user's page once: {asked:?}"
    );
    // Nothing stored: nothing more is asked, and a message goes live again.
    h.out.clear();
    h.feed(conn(1), &message(1, "ana", "bob", "live"));
    assert_eq!(h.out.sent_to(conn(2)).len(), 1);
}
