//! Cluster mode's message format (`src/cluster/codec.rs`): what arrives on the Redis lobby
//! channel is input like any other.
//!
//! Invariants: decoding never panics; whatever decodes (an event or a lobby roster)
//! re-encodes to exactly the same bytes (the format has one form per message: exact lengths,
//! nothing optional), within the bounds.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard::cluster::codec;

fuzz_target!(|data: &[u8]| {
    let encoded = match codec::decode_message(Bytes::copy_from_slice(data)) {
        Ok(codec::Message::Event(envelope)) => {
            assert!(!envelope.node.is_empty() && envelope.node.len() <= codec::NODE_NAME_BYTES_MAX);
            codec::encode(
                &envelope.node,
                envelope.incarnation,
                envelope.seq,
                &envelope.event,
            )
            .expect("a decoded event encodes")
        }
        Ok(codec::Message::Roster(roster)) => {
            assert!(roster.roster.members.len() <= codec::ROSTER_ENTRIES_MAX);
            codec::encode_roster(&roster.node, roster.incarnation, roster.seq, &roster.roster)
                .expect("a decoded roster encodes")
        }
        Err(_) => return,
    };
    assert_eq!(&encoded[..], data, "re-encoding changed the message");
});
