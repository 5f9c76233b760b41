//! What Redis sends the reactor's two cluster links (`src/cluster/resp.rs`, parsed by the
//! reactor itself; `src/cluster/pubsub.rs`, the links that act on the replies) is input like
//! any other: a Redis that is not Redis, or a stream cut anywhere by the network.
//!
//! The first byte cuts the rest into reads (`split_reads`). Invariants:
//! - `resp::parse` never panics; `Ok(None)` and an error take nothing, a reply is cut from the
//!   front (`drive_decoder`'s contract);
//! - the cut never changes the result: the replies fed in reads are the replies parsed from
//!   the whole stream at once, and the stream ends the same way (the same error, or the same
//!   bytes left waiting);
//! - every reply is within the limits (array length, nesting, bulk and line length), and
//!   bytes left waiting never hold a first line longer than `LINE_BYTES_MAX`: a peer that
//!   never ends a line is refused, not buffered for ever;
//! - the replies fed to a `SubLink` and a `PubLink` (each lost link reconnected, as the
//!   reactor does) never panic; a message comes out only from a three-element `message` push,
//!   as its last element; `Subscribed` only once every channel was confirmed since the
//!   connection; the publishing link's queue stays within its byte bound and nothing is
//!   answered that was not asked.
#![no_main]

use bytes::BytesMut;
use fuzz_support::{drive_decoder, split_reads};
use libfuzzer_sys::fuzz_target;
use switchboard::cluster::pubsub::{Phase, PubLink, PubReply, SubLink, SubPush};
use switchboard::cluster::resp::{self, RespError, Value};

/// How a stream ended: an error, or these bytes waiting for the rest of a reply.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Error(RespError),
    Waiting(Vec<u8>),
}

/// Every reply parsed from `reads`, fed one after the other, and how the stream ended.
fn parse_reads(reads: &[&[u8]]) -> (Vec<Value>, End) {
    let mut buf = BytesMut::new();
    let mut values = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match resp::parse(&mut buf) {
                Ok(Some(value)) => values.push(value),
                Ok(None) => break,
                Err(error) => return (values, End::Error(error)),
            }
        }
    }
    (values, End::Waiting(buf.to_vec()))
}

fn check_limits(value: &Value, depth: usize) {
    match value {
        Value::Simple(text) | Value::Error(text) => {
            assert!(text.len() <= resp::LINE_BYTES_MAX, "a line past its bound");
            assert!(!text.contains(&b'\r'), "a line holding a CR");
        }
        Value::Bulk(bytes) => assert!(bytes.len() <= resp::BULK_BYTES_MAX),
        Value::Array(items) => {
            assert!(depth <= resp::DEPTH_MAX, "arrays nested past the bound");
            assert!(
                items.len() <= resp::ARRAY_LEN_MAX,
                "an array past the bound"
            );
            for item in items {
                check_limits(item, depth + 1);
            }
        }
        Value::Integer(_) | Value::Null => {}
    }
}

/// Bytes left waiting: a first line (after the type byte) with no CR within its bound would
/// have been refused.
fn check_waiting(waiting: &[u8]) {
    let Some(line) = waiting.get(1..) else {
        return;
    };
    let window = &line[..line.len().min(resp::LINE_BYTES_MAX + 1)];
    assert!(
        window.contains(&b'\r') || line.len() <= resp::LINE_BYTES_MAX,
        "{} bytes waiting on a line that cannot end within its bound",
        waiting.len()
    );
}

const TIMEOUT_MS: u64 = 1000;
const PING_EVERY_MS: u64 = 300;
const PUB_BYTES_MAX: usize = 256;
const CHANNELS: [&[u8]; 2] = [b"switchboard:lobby", b"switchboard:to:n"];

/// The subscription: every reply in order, a lost link reconnected at once.
fn drive_sub(values: &[Value]) {
    let mut link = SubLink::new(TIMEOUT_MS, PING_EVERY_MS, &CHANNELS, None);
    let mut now_ms = 0;
    link.connecting(now_ms);
    link.connected(now_ms);
    let mut confirmed = 0;
    for value in values {
        now_ms += 7;
        let written = link.output().len();
        link.wrote(written);
        link.flushed(now_ms);
        if let Value::Array(items) = value {
            if items
                .first()
                .and_then(Value::as_bytes)
                .is_some_and(|kind| kind.eq_ignore_ascii_case(b"subscribe"))
            {
                confirmed += 1;
            }
        }
        match link.on_reply(value.clone(), now_ms) {
            Ok(SubPush::Message(payload)) => {
                let Value::Array(items) = value else {
                    panic!("a message from a reply that is no array: {value:?}");
                };
                assert_eq!(
                    items.len(),
                    3,
                    "a message from a push of {} items",
                    items.len()
                );
                let kind = items[0].as_bytes().unwrap_or_default();
                assert!(kind.eq_ignore_ascii_case(b"message"), "not a message push");
                assert_eq!(items[2], Value::Bulk(payload), "not the push's payload");
            }
            Ok(SubPush::Subscribed) => {
                assert!(
                    confirmed >= CHANNELS.len(),
                    "subscribed after {confirmed} confirmations"
                );
                confirmed = 0;
            }
            Ok(SubPush::Nothing) => {}
            Err(_) => {
                link.lost(now_ms);
                assert!(link.output().is_empty(), "a lost link still writes");
                link.connecting(now_ms);
                link.connected(now_ms);
                confirmed = 0;
            }
        }
        if link.check(now_ms).is_err() {
            link.lost(now_ms);
            link.connecting(now_ms);
            link.connected(now_ms);
            confirmed = 0;
        }
        assert_eq!(link.phase(), Phase::Up);
    }
}

/// The publishing link: a PUBLISH queued before each reply (refused past the byte bound),
/// all, half or a third of what is queued written (commands written in part, a queue that
/// reaches its bound), every reply in order, a lost link reconnected at once.
fn drive_pub(values: &[Value]) {
    let mut link = PubLink::new(TIMEOUT_MS, PUB_BYTES_MAX, None);
    let mut now_ms = 0;
    for (index, value) in values.iter().enumerate() {
        now_ms += 7;
        let payload = [index as u8; 40];
        let before = link.queued_bytes();
        if !link.publish(CHANNELS[0], &payload) {
            assert_eq!(
                link.queued_bytes(),
                before,
                "a refused PUBLISH queued bytes"
            );
        }
        assert!(
            link.queued_bytes() <= PUB_BYTES_MAX,
            "the queue past its bound"
        );
        let written = link.output().len() / (1 + index % 3);
        link.wrote(written, now_ms);
        link.flushed(now_ms);
        let asked = link.awaiting();
        match link.on_reply(value.clone()) {
            Ok(reply) => {
                assert!(asked > 0, "a reply nothing asked for taken as {reply:?}");
                assert_eq!(link.awaiting(), asked - 1);
                match reply {
                    PubReply::Published => assert!(matches!(value, Value::Integer(_))),
                    PubReply::Refused(text) => assert_eq!(value, &Value::Error(text)),
                    PubReply::Alive | PubReply::Authenticated => {
                        assert!(matches!(value, Value::Simple(_)))
                    }
                }
            }
            Err(_) => {
                link.lost(now_ms);
                assert_eq!(link.awaiting(), 0, "a lost link still waits for replies");
                link.connecting(now_ms);
                link.connected();
            }
        }
        if link.check(now_ms).is_err() {
            link.lost(now_ms);
            link.connecting(now_ms);
            link.connected();
        }
        // A new connection's PING goes before what waited, past the bound by its own bytes.
        assert!(
            link.queued_bytes() <= PUB_BYTES_MAX + resp::command_len(&[b"PING"]),
            "the queue past its bound and a PING"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let reads = split_reads(data);
    // The decoder's contract, read by read.
    drive_decoder(&reads, resp::parse, |value, _| {
        check_limits(&value, 1);
        0
    });
    let whole: Vec<u8> = reads.concat();
    let (want, want_end) = parse_reads(&[&whole]);
    let (got, got_end) = parse_reads(&reads);
    assert_eq!(got, want, "the cut changed the replies");
    assert_eq!(got_end, want_end, "the cut changed how the stream ended");
    if let End::Waiting(waiting) = &want_end {
        check_waiting(waiting);
    }
    drive_sub(&want);
    drive_pub(&want);
});
