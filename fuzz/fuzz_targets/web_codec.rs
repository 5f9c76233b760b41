//! WEB's WebSocket frames cut from a client stream split anywhere, read by the frame decoder
//! and by the message reader; and the same bytes as an HTTP request head and as a JSON
//! message.
//!
//! Invariants (beyond the decoder contract in `drive_decoder`): a frame is masked by the mask
//! it carried, so masking its payload again with that mask and decoding gives the same frame
//! back; its payload is within the limit, a control frame's within 125 bytes and final; the
//! reader's text messages are UTF-8 and within the limit; the HTTP parser and the JSON parser
//! never panic, and an upgrade's answer carries the accept key.
#![no_main]

use bytes::BytesMut;
use fuzz_support::{drive_decoder, split_reads};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::web::codec::{self, Message, Reader};
use switchboard::protocol::web::{http, json};

fuzz_target!(|data: &[u8]| {
    // A small limit too, so that the size checks are reached by short inputs.
    let limit = if data.len().is_multiple_of(2) {
        4096
    } else {
        40
    };
    let reads = split_reads(data);
    drive_decoder(
        &reads,
        |buf| codec::decode_frame(buf, limit),
        |frame, raw| {
            assert!(frame.payload.len() <= limit);
            if frame.opcode & 0x08 != 0 {
                assert!(frame.fin && frame.payload.len() <= codec::CONTROL_PAYLOAD_BYTES_MAX);
            }
            let header = raw.len() - frame.payload.len();
            let mut mask = [0u8; 4];
            mask.copy_from_slice(&raw[header - 4..header]);
            let again = codec::encode_client(frame.fin, frame.opcode, &frame.payload, mask);
            let mut again = BytesMut::from(&again[..]);
            assert_eq!(codec::decode_frame(&mut again, limit), Ok(Some(frame)));
            assert!(again.is_empty());
            0
        },
    );

    let mut reader = Reader::default();
    let mut input = BytesMut::new();
    'reads: for read in &reads {
        input.extend_from_slice(read);
        loop {
            match reader.next(&mut input, limit) {
                Ok(Some(Message::Text(text))) => {
                    assert!(text.len() <= limit);
                    assert!(std::str::from_utf8(&text).is_ok());
                    let _ = json::parse(&text);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(violation) => {
                    assert!(matches!(violation.code, 1002 | 1003 | 1007 | 1009));
                    break 'reads;
                }
            }
        }
    }

    // The stream after its split byte, as the request a connection would send.
    let stream = reads.concat();
    let origins = ["http://a".to_string()];
    for origins in [None, Some(&origins[..])] {
        if let Ok(Some((http::Request::Upgrade { answer }, used))) = http::parse(&stream, origins) {
            assert!(used <= stream.len());
            assert!(answer.windows(21).any(|w| w == b"Sec-WebSocket-Accept:"));
        }
    }
    let _ = json::parse(&stream);
});
