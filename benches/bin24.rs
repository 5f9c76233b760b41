//! BIN24 codec: decode, encode and the offline store's copy, for frames of 32, 128 and 1024
//! bytes.
//!
//! Decode runs over one read buffer holding 256 KiB of frames back to back, the way a busy
//! connection's input looks; each frame is a zero-copy `split_to(len).freeze()` of that buffer,
//! so the figure is header parsing plus the reference counting, per frame. The buffer is
//! refilled outside the measured routine.

// Benches may unwrap, expect and panic: a failed assumption is a failed run (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use switchboard::protocol::bin24::codec::{self, Frame, Name, HEADER_BYTES, TYPE_MESSAGE};

const FRAME_SIZES: [usize; 3] = [32, 128, 1024];
const STREAM_BYTES: usize = 256 * 1024;

fn names() -> (Name, Name) {
    match (Name::new(b"alice"), Name::new(b"bob")) {
        (Some(src), Some(dst)) => (src, dst),
        _ => unreachable!("short names without NUL are valid"),
    }
}

/// A frame of `size` bytes with a body of bytes that vary, so nothing is trivially constant.
fn frame(size: usize, message_id: u32) -> bytes::Bytes {
    let (src, dst) = names();
    let body: Vec<u8> = (0..size - HEADER_BYTES).map(|i| i as u8).collect();
    codec::encode(TYPE_MESSAGE, message_id, src, dst, &body)
        .unwrap_or_else(|| unreachable!("bodies here are at most 1000 bytes"))
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("bin24_decode");
    for size in FRAME_SIZES {
        let count = STREAM_BYTES / size;
        let mut stream = Vec::with_capacity(count * size);
        for id in 0..count {
            stream.extend_from_slice(&frame(size, id as u32));
        }
        group.throughput(Throughput::ElementsAndBytes {
            elements: count as u64,
            bytes: stream.len() as u64,
        });
        group.bench_with_input(BenchmarkId::new("frames", size), &stream, |b, stream| {
            b.iter_batched_ref(
                || BytesMut::from(&stream[..]),
                |buf| {
                    let mut decoded = 0usize;
                    while let Ok(Some(frame)) = codec::decode(buf) {
                        black_box(frame.message_id());
                        black_box(&frame);
                        decoded += 1;
                    }
                    assert_eq!(decoded, count);
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("bin24_encode");
    let (src, dst) = names();
    for size in FRAME_SIZES {
        let body: Vec<u8> = (0..size - HEADER_BYTES).map(|i| i as u8).collect();
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: size as u64,
        });
        group.bench_with_input(BenchmarkId::new("frame", size), &body, |b, body| {
            let mut id = 0u32;
            b.iter(|| {
                id = id.wrapping_add(1);
                black_box(codec::encode(
                    TYPE_MESSAGE,
                    black_box(id),
                    black_box(src),
                    black_box(dst),
                    black_box(body),
                ))
            })
        });
    }
    group.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: (HEADER_BYTES + codec::ANSWER_STORED.len()) as u64,
    });
    group.bench_function("answer", |b| {
        b.iter(|| {
            black_box(codec::encode_answer(
                black_box(7),
                black_box(dst),
                black_box(src),
                codec::ANSWER_STORED,
            ))
        })
    });
    group.finish();
}

fn copy_with_type(c: &mut Criterion) {
    let mut group = c.benchmark_group("bin24_copy_with_type");
    for size in FRAME_SIZES {
        let Ok(frame) = Frame::from_bytes(frame(size, 1)) else {
            unreachable!("encode makes valid frames")
        };
        group.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: size as u64,
        });
        group.bench_with_input(BenchmarkId::new("frame", size), &frame, |b, frame| {
            b.iter(|| black_box(frame.copy_with_type(black_box(codec::TYPE_OFFLINE))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = decode, encode, copy_with_type
}
criterion_main!(benches);
