//! ROOM fan-out: one chunk relayed to 10, 1,000 and 10,000 members.
//!
//! The chunk is encoded once and each recipient gets a clone of the same `Bytes` (a reference
//! count); the outbox appends to per-connection queues the way the reactor's does, so the
//! figure is the protocol's cost per delivery without the socket writes.

// Benches may unwrap, expect and panic: a failed assumption is a failed run (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use switchboard::protocol::room::{RoomConfig, RoomService};
use switchboard::protocol::{CloseMode, CloseReason, ConnId, Outbox};

/// Per-connection queues indexed by slot, as the reactor keeps them.
struct QueueOutbox {
    queues: Vec<VecDeque<Bytes>>,
    queued_bytes: Vec<usize>,
}

impl Outbox for QueueOutbox {
    fn send(&mut self, to: ConnId, bytes: Bytes) {
        let slot = to.slot as usize;
        self.queued_bytes[slot] += bytes.len();
        self.queues[slot].push_back(bytes);
    }

    fn send_notify(&mut self, to: ConnId, bytes: Bytes, _note: u64) -> bool {
        self.send(to, bytes);
        true
    }

    fn close(&mut self, _id: ConnId, _reason: CloseReason, _mode: CloseMode) {}
}

impl QueueOutbox {
    fn drain(&mut self) {
        for (queue, bytes) in self.queues.iter_mut().zip(&mut self.queued_bytes) {
            queue.clear();
            *bytes = 0;
        }
    }
}

fn room_with_members(members: usize) -> (RoomService, QueueOutbox) {
    let mut room = RoomService::new(RoomConfig::default(), 0);
    let mut out = QueueOutbox {
        queues: (0..members).map(|_| VecDeque::with_capacity(4)).collect(),
        queued_bytes: vec![0; members],
    };
    for slot in 0..members {
        let id = ConnId::new(slot as u32, 1);
        room.on_accept(id, 0, &mut out);
        let mut alias = BytesMut::from(format!("member{slot}").as_bytes());
        room.on_data(id, &mut alias, &mut out);
        // Drain as we go: the join notices alone would be O(n^2) memory at 10,000 members.
        out.queues.iter_mut().for_each(VecDeque::clear);
    }
    out.drain();
    (room, out)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("room_fanout");
    let message = b"member0: a typical chat line of about sixty bytes, give or take";
    for members in [10usize, 1_000, 10_000] {
        let (mut room, mut out) = room_with_members(members);
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::new("deliveries", members), &members, |b, _| {
            b.iter(|| {
                let mut input = BytesMut::from(&message[..]);
                room.on_data(ConnId::new(0, 1), &mut input, &mut out);
                black_box(&out.queues[members - 1]);
                out.drain();
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(std::time::Duration::from_secs(3))
        .warm_up_time(std::time::Duration::from_secs(1));
    targets = fanout
}
criterion_main!(benches);
