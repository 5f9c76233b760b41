//! Bin24Service driven by several connections' arbitrary byte streams, split arbitrarily,
//! with peers closing, time passing, store requests completing (stored, full, failed,
//! loaded) in order, and queued stored frames reported written or not, in any order.
//!
//! Invariants: no panic; output only to open connections; everything sent to a client, and
//! every frame handed to the store, is exactly one well-formed frame of a type a client
//! reads (0 message, 1 answer, 2 stored message; 2 in the store).
#![no_main]

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use fuzz_support::{assert_to_open, Conns, Ops};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::bin24::codec::{self, Frame};
use switchboard::protocol::bin24::{Bin24Config, Bin24Service, StoreSink};
use switchboard::protocol::testing::RecordingOutbox;
use switchboard::protocol::ConnId;
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

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut service = Bin24Service::new(
        Bin24Config {
            ack_timeout_ms: 3_000,
            unacked_per_recipient_max: 4,
            offline_window_bytes: 2_048,
            timer_tick_ms: 10,
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
                    service.on_accept(id);
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
                if let Some(id) = conns.close(ops.slot()) {
                    close(&mut service, id, &mut notes, &mut out, &mut store);
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
                            let seq = next_seq;
                            next_seq += 1;
                            stored.entry(user).or_default().push((seq, frame));
                            StoreEvent::Appended { ticket, seq }
                        }
                    },
                    StoreRequest::Load { ticket, user } => StoreEvent::Loaded {
                        ticket,
                        frames: stored.get(&user).cloned().unwrap_or_default(),
                        user,
                    },
                    StoreRequest::Remove { user, seqs } => {
                        if let Some(frames) = stored.get_mut(&user) {
                            frames.retain(|(seq, _)| !seqs.contains(seq));
                        }
                        continue;
                    }
                };
                service.on_store_event(event, &mut out);
            }
            _ => {
                let how = usize::from(ops.byte());
                if notes.is_empty() {
                    continue;
                }
                let (_, note) = notes.swap_remove(how % notes.len());
                service.on_notify(note, how.is_multiple_of(2), &mut out, &mut store);
            }
        }
        loop {
            check_output(&mut out, &conns, &mut notes);
            let gone = conns.take_closed(&mut out.closed);
            if gone.is_empty() {
                break;
            }
            for id in gone {
                close(&mut service, id, &mut notes, &mut out, &mut store);
            }
        }
    }
});

/// The reactor frees the connection, reports its unwritten notes, and tells the service.
fn close(
    service: &mut Bin24Service,
    id: ConnId,
    notes: &mut Vec<(ConnId, u64)>,
    out: &mut RecordingOutbox,
    store: &mut QueuedStore,
) {
    let (unwritten, kept): (Vec<_>, Vec<_>) = notes.drain(..).partition(|(to, _)| *to == id);
    *notes = kept;
    service.on_close(id, store);
    for (_, note) in unwritten {
        service.on_notify(note, false, out, store);
    }
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
