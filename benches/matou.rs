//! MATOU codec: decode of PUBLIC_MESSAGE frames as the server reads them, and encode of the
//! PUBLIC_BROADCAST every public message fans out as.
//!
//! Decode runs over one read buffer holding 256 KiB of 64-byte messages back to back; every
//! packet is a zero-copy `split_to(n).freeze()` of that buffer, so the figure is the size
//! checks plus the reference counting, per packet. The buffer is refilled outside the measured
//! routine. Encode builds one broadcast (an 8-byte name, a 64-byte message) in a buffer of its
//! own, as the server does once per public message before cloning it to every recipient.

// Benches may unwrap, expect and panic: a failed assumption is a failed run (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use switchboard::protocol::matou::codec::{self, Limits};

const STREAM_BYTES: usize = 256 * 1024;
const MESSAGE: [u8; 64] = [b'x'; 64];
const NAME: &[u8] = b"alice123";

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("matou_decode");
    let packet = codec::public_message(&MESSAGE);
    let count = STREAM_BYTES / packet.len();
    let stream = packet.repeat(count);
    group.throughput(Throughput::ElementsAndBytes {
        elements: count as u64,
        bytes: stream.len() as u64,
    });
    let limits = Limits::default();
    group.bench_function(format!("public_message_64B/{}B", packet.len()), |b| {
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                let mut decoded = 0usize;
                while let Ok(Some(packet)) = codec::decode_from_client(buf, &limits) {
                    black_box(&packet);
                    decoded += 1;
                }
                assert_eq!(decoded, count);
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("matou_encode");
    let len = codec::public_broadcast(NAME, &MESSAGE).len();
    group.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: len as u64,
    });
    group.bench_function(format!("public_broadcast_64B/{len}B"), |b| {
        b.iter(|| {
            black_box(codec::public_broadcast(
                black_box(NAME),
                black_box(&MESSAGE),
            ))
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = decode, encode
}
criterion_main!(benches);
