//! CCM messages cut from a stream split anywhere, read bursts ending at each read (or, when
//! the input's last byte is even, never: then only Content-Length frames a message).
//!
//! Invariants (beyond the decoder contract in `drive_decoder`): every field is a slice of
//! the bytes consumed, content last; limits hold; a Content-Length is the content's length;
//! content decodes as text without panicking; and a message re-encoded by the server's
//! encoder decodes back to the same type, attributes and content (plus the Content-Length
//! the encoder adds), where no field holds a CR (which the encoder turns into a space so that
//! a relayed value can never end a line).
#![no_main]

use bytes::BytesMut;
use fuzz_support::{drive_decoder, split_reads};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ccm::codec::{self, Message};

fuzz_target!(|data: &[u8]| {
    let burst_ended = data.last().is_some_and(|b| b % 2 == 1);
    drive_decoder(
        &split_reads(data),
        |buf| codec::decode(buf, burst_ended),
        |message, raw| {
            check(&message, raw);
            0
        },
    );
});

fn check(message: &Message, raw: &[u8]) {
    assert!(raw[..4].eq_ignore_ascii_case(codec::MAGIC));
    assert!(raw.ends_with(&message.content));
    assert!(message.content.len() <= codec::CONTENT_BYTES_MAX);
    assert!(raw.len() - message.content.len() <= codec::HEADER_BYTES_MAX);
    assert!(!message.kind.is_empty() && !message.version.is_empty());
    if let Some(length) = message.attribute("Content-Length") {
        let length: usize = std::str::from_utf8(length).unwrap().parse().unwrap();
        assert_eq!(length, message.content.len());
    }
    let _ = codec::decode_text(
        &message.content,
        message.attribute("Message-Encoding").map(|v| &v[..]),
    );
    let _ = message.message_type();

    let fields =
        std::iter::once(&message.kind).chain(message.attributes.iter().flat_map(|(k, v)| [k, v]));
    if fields.into_iter().any(|f| f.contains(&b'\r')) {
        return;
    }
    // The header was checked to be UTF-8, so every field is.
    let kind = std::str::from_utf8(&message.kind).unwrap();
    let keys: Vec<&str> = message
        .attributes
        .iter()
        .map(|(k, _)| std::str::from_utf8(k).unwrap())
        .collect();
    let attributes: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&message.attributes)
        .map(|(k, (_, v))| (*k, &v[..]))
        .collect();
    let encoded = codec::encode(kind, &attributes, &message.content);
    let mut buf = BytesMut::from(&encoded[..]);
    let again = codec::decode(&mut buf, false)
        .expect("the encoder's output decodes")
        .expect("the encoder's output is whole");
    assert!(buf.is_empty());
    assert_eq!(again.kind, message.kind);
    assert_eq!(again.content, message.content);
    let mut expected = message.attributes.clone();
    if message.attribute("Content-Length").is_none() {
        expected.push((
            "Content-Length".into(),
            message.content.len().to_string().into(),
        ));
    }
    assert_eq!(again.attributes, expected);
}
