//! CCM codec: header parsing (decode) and encoding, for a typical `Text` message with 4
//! attributes and 64 bytes of content.
//!
//! Decode runs over one read buffer holding 256 KiB of such messages back to back, each framed
//! by `Content-Length` as the server writes them; every message is a zero-copy
//! `split_to(n).freeze()` of that buffer, so the figure is the header parse (blank-line search,
//! UTF-8 check, attribute split) plus the reference counting, per message. The buffer is
//! refilled outside the measured routine. Encode measures the whole message, and the header
//! alone as the fan-out path writes it.

// Benches may unwrap, expect and panic: a failed assumption is a failed run (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use switchboard::protocol::ccm::codec;

const STREAM_BYTES: usize = 256 * 1024;
const CONTENT: [u8; 64] = [b'x'; 64];

/// Sender, Addressee, Message-Encoding and Content-Length: what the server relays.
fn attributes() -> [(&'static str, &'static [u8]); 3] {
    [
        ("Sender", b"alice"),
        ("Addressee", b"bob"),
        ("Message-Encoding", b"utf-8"),
    ]
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ccm_decode");
    let message = codec::encode("Text", &attributes(), &CONTENT);
    let count = STREAM_BYTES / message.len();
    let mut stream = Vec::with_capacity(count * message.len());
    for _ in 0..count {
        stream.extend_from_slice(&message);
    }
    group.throughput(Throughput::ElementsAndBytes {
        elements: count as u64,
        bytes: stream.len() as u64,
    });
    group.bench_function(format!("text_4attr_64B/{}B", message.len()), |b| {
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                let mut decoded = 0usize;
                while let Ok(Some(message)) = codec::decode(buf, false) {
                    black_box(&message);
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
    let mut group = c.benchmark_group("ccm_encode");
    let attributes = attributes();
    let whole = codec::encode("Text", &attributes, &CONTENT).len();
    group.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: whole as u64,
    });
    group.bench_function("message", |b| {
        b.iter(|| {
            black_box(codec::encode(
                black_box("Text"),
                black_box(&attributes),
                black_box(&CONTENT),
            ))
        })
    });
    let head = whole - CONTENT.len();
    group.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: head as u64,
    });
    group.bench_function("head", |b| {
        b.iter(|| {
            black_box(codec::encode_head(
                black_box("Text"),
                black_box(&attributes),
                black_box(CONTENT.len()),
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
