//! OCM: TCRP request decode and answer encode, chat datagram parse, and the relay of one chat
//! datagram to a 1,000-member room (and to 1,000 stage-1 peers).
//!
//! Decode runs over one read buffer holding 256 KiB of the original client's create request
//! (the contract's vector shape) back to back; each request is a zero-copy `split_to` of it.
//! The buffer is refilled outside the measured routine. The answer figure is the whole 202
//! answer: JSON with its `\uXXXX` escapes plus the header.
//!
//! The relay figures drive the real services through a `DatagramOut` that only counts, so they
//! measure the server's side of a fan-out (lookup, checks, text encoding once, the loop over
//! the members), not the kernel's `sendto`. Throughput is in deliveries.

// Benches may unwrap, expect and panic: a failed assumption is a failed run (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use switchboard::protocol::ocm::{
    codec, json, os_token_source, OcmConfig, OcmService, RelayConfig, RelayService,
};
use switchboard::protocol::testing::RecordingOutbox;
use switchboard::protocol::{ConnId, DatagramDrop, DatagramOut, DatagramSent};

const STREAM_BYTES: usize = 256 * 1024;
const ROOM_MEMBERS: u16 = 1_000;
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Takes every datagram and throws it away.
#[derive(Default)]
struct Discard {
    sent: u64,
}

impl DatagramOut for Discard {
    fn send_to(&mut self, to: SocketAddr, bytes: &[u8]) -> DatagramSent {
        black_box((to, bytes));
        self.sent += 1;
        DatagramSent::Sent
    }

    fn count_dropped_in(&mut self, why: DatagramDrop) {
        panic!("the bench's datagram was dropped: {why:?}");
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)
}

fn create_request() -> Vec<u8> {
    let payload = json::encode_request("alice", localhost(40001));
    codec::encode_request(
        codec::OPERATION_CREATE,
        codec::STATE_REQUEST,
        b"lobby",
        &payload,
    )
    .unwrap()
    .to_vec()
}

fn tcrp(c: &mut Criterion) {
    let mut group = c.benchmark_group("ocm_tcrp");
    let request = create_request();
    let count = STREAM_BYTES / request.len();
    let stream = request.repeat(count);
    group.throughput(Throughput::ElementsAndBytes {
        elements: count as u64,
        bytes: stream.len() as u64,
    });
    group.bench_function(format!("decode_request/{}B", request.len()), |b| {
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                let mut decoded = 0usize;
                while let Ok(Some(request)) = codec::decode_request(buf, 65_536) {
                    black_box(&request);
                    decoded += 1;
                }
                assert_eq!(decoded, count);
            },
            BatchSize::LargeInput,
        )
    });

    let answer_bytes = codec::encode_answer(
        5,
        codec::OPERATION_CREATE,
        codec::STATE_DONE,
        &json::encode_answer(codec::STATUS_DONE, codec::MESSAGE_DONE, Some(TOKEN)),
    )
    .len();
    group.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: answer_bytes as u64,
    });
    group.bench_function(format!("encode_answer_202/{answer_bytes}B"), |b| {
        b.iter(|| {
            let json = json::encode_answer(
                codec::STATUS_DONE,
                black_box(codec::MESSAGE_DONE),
                Some(black_box(TOKEN)),
            );
            black_box(codec::encode_answer(
                5,
                codec::OPERATION_CREATE,
                codec::STATE_DONE,
                &json,
            ))
        })
    });

    // The request's JSON payload, as the server reads it.
    let payload = json::encode_request("alice", localhost(40001));
    let payload = std::str::from_utf8(&payload).unwrap().to_string();
    group.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: payload.len() as u64,
    });
    group.bench_function(format!("parse_request_json/{}B", payload.len()), |b| {
        b.iter(|| black_box(json::parse_request(black_box(&payload))))
    });
    group.finish();
}

fn datagram(c: &mut Criterion) {
    let mut group = c.benchmark_group("ocm_datagram");
    let datagram = codec::encode_datagram(b"lobby", TOKEN.as_bytes(), &[b'x'; 64]).unwrap();
    group.throughput(Throughput::ElementsAndBytes {
        elements: 1,
        bytes: datagram.len() as u64,
    });
    group.bench_function(format!("parse/{}B", datagram.len()), |b| {
        b.iter(|| black_box(codec::parse_datagram(black_box(&datagram))))
    });
    group.finish();
}

/// A service with one room of `ROOM_MEMBERS` members (the host first), all at 127.0.0.1 on
/// their own ports; returns it with the host's token.
fn full_room() -> (OcmService, String) {
    let mut service = OcmService::new(OcmConfig::default(), os_token_source(), 0);
    let mut out = RecordingOutbox::default();
    let mut host_token = None;
    for n in 0..ROOM_MEMBERS {
        let id = ConnId::new(u32::from(n), 1);
        let operation = if n == 0 {
            codec::OPERATION_CREATE
        } else {
            codec::OPERATION_JOIN
        };
        let payload = json::encode_request(&format!("user{n}"), localhost(20_000 + n));
        let raw = codec::encode_request(operation, codec::STATE_REQUEST, b"lobby", &payload);
        service.on_accept(id, IpAddr::from([127, 0, 0, 1]), 0);
        service.on_data(id, &mut BytesMut::from(&raw.unwrap()[..]), 0, &mut out);
        service.on_close(id);
        if n == 0 {
            let mut answer = BytesMut::from(&out.sent_to(id)[0][..]);
            let answer = codec::decode_answer(&mut answer, 4096).unwrap().unwrap();
            let json = std::str::from_utf8(&answer.json).unwrap();
            host_token = json::parse_answer(json).unwrap().token;
        }
        out.clear();
    }
    assert_eq!(service.members(), usize::from(ROOM_MEMBERS));
    (service, host_token.unwrap())
}

fn relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("ocm_relay");
    let recipients = u64::from(ROOM_MEMBERS) - 1;
    group.throughput(Throughput::Elements(recipients));

    let (mut service, host_token) = full_room();
    let message = "x".repeat(64);
    let datagram =
        codec::encode_datagram(b"lobby", host_token.as_bytes(), message.as_bytes()).unwrap();
    let host = localhost(20_000);
    let mut discard = Discard::default();
    group.bench_function("room_chat_64B/1000_members", |b| {
        b.iter(|| service.on_datagram(host, black_box(&datagram), 1, &mut discard))
    });
    assert!(discard.sent >= recipients);

    let mut stage1 = RelayService::new(RelayConfig::default(), 0);
    let mut discard = Discard::default();
    for n in 0..ROOM_MEMBERS {
        stage1.on_datagram(localhost(20_000 + n), b"hello", 0, &mut discard);
    }
    let text = vec![b'x'; 64];
    group.bench_function("stage1_64B/1000_peers", |b| {
        b.iter(|| stage1.on_datagram(host, black_box(&text), 1, &mut discard))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = tcrp, datagram, relay
}
criterion_main!(benches);
