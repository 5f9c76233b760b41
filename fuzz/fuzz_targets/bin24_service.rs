//! Bin24Service driven by several connections' arbitrary byte streams, split arbitrarily,
//! with peers closing, time passing, store requests completing (stored, full, failed,
//! loaded a page at a time) in order, queued stored frames reported acknowledged by TCP or
//! not, in any order, and connections ending cleanly or by a reset.
//!
//! Invariants: no panic; output only to open connections; everything sent to a client, and
//! every frame handed to the store, is exactly one well-formed frame of a type a client
//! reads (0 message, 1 answer, 2 stored message; 2 in the store); stored frames held in
//! memory stay within the configured budget (plus one page, which always may load).
#![no_main]

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use fuzz_support::{assert_to_open, Conns, Ops};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::bin24::codec::{self, Frame};
use switchboard::protocol::bin24::{Bin24Config, Bin24Service, StoreSink};
use switchboard::protocol::testing::RecordingOutbox;
use switchboard::protocol::{CloseReason, ConnId};
use switchboard::store::{StoreEvent, StoreRequest};

#[derive(Default)]
struct QueuedStore {
    requests: VecDeque<StoreRequest>,
}

impl StoreSink for QueuedStore {
    fn submit(&mut self, request: StoreRequest) {
        if let StoreRequest::Append { frame, .. } = &request {
            let frame = Frame::from_bytes(frame.clone()).expect("the store gets whole frames");
            assert_eq!(frame.frame_type(), codec::TYPE_OFFLINE);
        }
        self.requests.push_back(request);
    }
}

const LOADED_BYTES_MAX: usize = 6_000;

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut service = Bin24Service::new(
        Bin24Config {
            ack_timeout_ms: 3_000,
            unacked_per_recipient_max: 4,
            offline_window_bytes: 2_048,
            delivery_grace_ms: 500,
            unconfirmed_bytes_per_conn_max: 8_192,
            loaded_bytes_max: LOADED_BYTES_MAX,
            stalled_holder_ms: 10_000,
            users: None,
            // Small enough that a fuzzed flood reaches the "429" refusals.
            sender_bytes_per_s_max: 8_192,
            pair_bytes_per_s_max: 4_096,
            timer_tick_ms: 10,
            // Not in a cluster: no frame crosses, so this is never used.
            crossing_grace_ms: 3_000,
        },
        0,
    );
    let mut out = RecordingOutbox::default();
    let mut store = QueuedStore::default();
    // What the store holds: user -> (seq, frame), oldest first.
    let mut stored: HashMap<Vec<u8>, Vec<(u64, Bytes)>> = HashMap::new();
    let mut next_seq = 0u64;
    // Stored frames queued to a connection and not yet reported: (to, note).
    let mut notes: Vec<(ConnId, u64)> = Vec::new();
    let mut conns = Conns::default();
    let mut now_ms = 0u64;
    while !ops.is_empty() {
        match ops.byte() % 7 {
            0 => {
                if let Some(id) = conns.accept(ops.slot()) {
                    let ip = std::net::IpAddr::from([127, 0, 0, ops.byte() % 2]);
                    service.on_accept(id, ip);
                }
            }
            1 | 6 => {
                let slot = ops.slot();
                let bytes = ops.chunk();
                if conns.is_open(slot) {
                    let id = conns.id(slot);
                    conns.input[slot].extend_from_slice(bytes);
                    service.on_data(id, &mut conns.input[slot], now_ms, &mut out, &mut store);
                }
            }
            2 => {
                let reason = match ops.byte() % 3 {
                    0 => CloseReason::PeerClosed,
                    1 => CloseReason::PeerReset,
                    _ => CloseReason::IoError,
                };
                if let Some(id) = conns.close(ops.slot()) {
                    close(&mut service, id, reason, &mut notes, &mut out, &mut store);
                }
            }
            3 => {
                now_ms += u64::from(ops.u16());
                service.on_timers(now_ms, &mut out, &mut store);
            }
            4 => {
                let how = ops.byte();
                let Some(request) = store.requests.pop_front() else {
                    continue;
                };
                let event = match request {
                    StoreRequest::Append {
                        ticket,
                        user,
                        frame,
                    } => match how % 4 {
                        0 => StoreEvent::Full { ticket },
                        1 => StoreEvent::Failed {
                            ticket: Some(ticket),
                            error: "fuzz".into(),
                        },
                        _ => {
                            next_seq += 1;
                            let seq = next_seq;
                            stored.entry(user).or_default().push((seq, frame));
                            StoreEvent::Appended { ticket, seq }
                        }
                    },
                    StoreRequest::Load {
                        ticket,
                        user,
                        after_seq,
                        bytes_max,
                    } => {
                        let mut frames = Vec::new();
                        let mut bytes = 0;
                        let mut more = false;
                        for (seq, frame) in stored.get(&user).into_iter().flatten() {
                            if *seq <= after_seq {
                                continue;
                            }
                            if !frames.is_empty() && bytes + frame.len() > bytes_max {
                                more = true;
                                break;
                            }
                            bytes += frame.len();
                            frames.push((*seq, frame.clone()));
                        }
                        StoreEvent::Loaded {
                            ticket,
                            frames,
                            user,
                            more,
                        }
                    }
                    StoreRequest::Remove { user, seqs } => {
                        if let Some(frames) = stored.get_mut(&user) {
                            frames.retain(|(seq, _)| !seqs.contains(seq));
                        }
                        continue;
                    }
                };
                service.on_store_event(event, &mut out, &mut store);
            }
            _ => {
                let how = usize::from(ops.byte());
                if notes.is_empty() {
                    continue;
                }
                let (to, note) = notes.swap_remove(how % notes.len());
                let acked = how.is_multiple_of(2);
                service.on_notify(to, note, acked, now_ms, &mut out, &mut store);
            }
        }
        loop {
            check_output(&mut out, &conns, &mut notes);
            let gone = conns.take_closed(&mut out.closed);
            if gone.is_empty() {
                break;
            }
            for id in gone {
                close(
                    &mut service,
                    id,
                    CloseReason::Replaced,
                    &mut notes,
                    &mut out,
                    &mut store,
                );
            }
        }
        assert!(
            service.loaded_bytes() <= LOADED_BYTES_MAX + codec::FRAME_BYTES_MAX * 2,
            "{} bytes of stored frames held",
            service.loaded_bytes()
        );
    }
});

/// The reactor frees the connection, reports its unacknowledged notes, then tells the
/// service.
fn close(
    service: &mut Bin24Service,
    id: ConnId,
    reason: CloseReason,
    notes: &mut Vec<(ConnId, u64)>,
    out: &mut RecordingOutbox,
    store: &mut QueuedStore,
) {
    let (unacked, kept): (Vec<_>, Vec<_>) = notes.drain(..).partition(|(to, _)| *to == id);
    *notes = kept;
    for (to, note) in unacked {
        service.on_notify(to, note, false, 0, out, store);
    }
    service.on_close(id, reason, out, store);
}

fn check_output(out: &mut RecordingOutbox, conns: &Conns, notes: &mut Vec<(ConnId, u64)>) {
    assert_to_open(conns, out.sent.iter().map(|(to, _)| to));
    assert_to_open(conns, out.notified.iter().map(|(to, _, _)| to));
    for (_, bytes) in out.sent.drain(..) {
        let frame = Frame::from_bytes(bytes).expect("one whole frame");
        assert!(frame.frame_type() <= codec::TYPE_OFFLINE);
    }
    for (to, bytes, note) in out.notified.drain(..) {
        let frame = Frame::from_bytes(bytes).expect("one whole frame");
        assert_eq!(frame.frame_type(), codec::TYPE_OFFLINE);
        notes.push((to, note));
    }
}
