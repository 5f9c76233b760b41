//! OCM's TCRP over TCP: requests (as the server reads them) and answers (as a client reads
//! them) cut from a stream split anywhere, and the JSON in them.
//!
//! Invariants (beyond the decoder contract in `drive_decoder`): a request or answer
//! re-encodes to the bytes it was cut from (the 21 high bytes of the payload size are zero
//! in anything accepted); the payload size is within the limit; a JSON payload that parses
//! re-encodes (as the original programs write it) to JSON that parses to the same values.
#![no_main]

use fuzz_support::{drive_decoder, split_reads};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ocm::{codec, json};

fuzz_target!(|data: &[u8]| {
    let payload_bytes_max = if data.len().is_multiple_of(2) {
        65_536
    } else {
        64
    };
    let reads = split_reads(data);
    drive_decoder(
        &reads,
        |buf| codec::decode_request(buf, payload_bytes_max),
        |request, raw| {
            assert!(request.payload.len() <= payload_bytes_max);
            let header = codec::TcrpHeader::parse(raw).unwrap();
            let encoded = codec::encode_request(
                request.operation,
                request.state,
                &request.room,
                &request.payload,
            )
            .expect("a decoded room name fits");
            assert_eq!(&encoded[..], raw);
            assert_eq!(usize::from(header.room_name_size), request.room.len());
            if let Ok(text) = std::str::from_utf8(&request.payload) {
                check_request_json(text);
            }
            0
        },
    );
    drive_decoder(
        &reads,
        |buf| codec::decode_answer(buf, payload_bytes_max),
        |answer, raw| {
            assert!(answer.json.len() <= payload_bytes_max);
            let encoded = codec::encode_answer(
                answer.room_chars,
                answer.operation,
                answer.state,
                &answer.json,
            );
            assert_eq!(&encoded[..], raw);
            if let Ok(text) = std::str::from_utf8(&answer.json) {
                check_answer_json(text);
            }
            0
        },
    );
});

fn check_request_json(text: &str) {
    if let Ok(request) = json::parse_request(text) {
        let again = json::encode_request(&request.user_name, request.user_address);
        let again = std::str::from_utf8(&again).expect("the writer writes ASCII");
        assert_eq!(json::parse_request(again), Ok(request));
    }
}

fn check_answer_json(text: &str) {
    if let Ok(answer) = json::parse_answer(text) {
        let Ok(status) = u16::try_from(answer.status) else {
            return;
        };
        let again = json::encode_answer(status, &answer.message, answer.token.as_deref());
        let again = std::str::from_utf8(&again).expect("the writer writes ASCII");
        assert_eq!(json::parse_answer(again), Ok(answer));
    }
}
