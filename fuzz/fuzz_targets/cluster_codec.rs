//! Cluster mode's message format (`src/cluster/codec.rs`): what arrives on the Redis lobby
//! channel is input like any other.
//!
//! Invariants: decoding never panics; whatever decodes re-encodes to exactly the same bytes
//! (the format has one form per event: exact lengths, nothing optional), within the bounds;
//! a CCM message addressed to another node names a node (seed: `addressed_ccm_text`).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard::cluster::codec;
use switchboard::hub::HubEvent;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = codec::decode(Bytes::copy_from_slice(data)) {
        assert!(!envelope.node.is_empty() && envelope.node.len() <= codec::NODE_NAME_BYTES_MAX);
        if let HubEvent::Addressed(addressed) = &envelope.event {
            // Only the node named acts on it: never an empty name.
            assert!(
                !addressed.to_node.is_empty()
                    && addressed.to_node.len() <= codec::NODE_NAME_BYTES_MAX
            );
        }
        let encoded = codec::encode(
            &envelope.node,
            envelope.incarnation,
            envelope.seq,
            &envelope.event,
        )
        .expect("a decoded event encodes");
        assert_eq!(&encoded[..], data, "re-encoding changed the message");
    }
});
