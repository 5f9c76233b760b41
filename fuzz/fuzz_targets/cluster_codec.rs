//! Cluster mode's message format (`src/cluster/codec.rs`): what arrives on the Redis lobby
//! channel is input like any other.
//!
//! Invariants: decoding never panics; whatever decodes (an event or a lobby roster)
//! re-encodes to exactly the same bytes (the format has one form per message: exact lengths,
//! nothing optional), within the bounds; a CCM message or a MATOU private link step addressed
//! to another node names its nodes (seeds: `addressed_ccm_text`, `private_src_ports`); a BIN24
//! frame for another node names both nodes and is a whole BIN24 frame, its own length field
//! its length (seeds: `bin24_message`, `bin24_answer_200`); an OCM room event names its room
//! and its member's home node (seeds: `ocm_chat`, `ocm_closed`).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchboard::cluster::codec;
use switchboard::hub::HubEvent;

fuzz_target!(|data: &[u8]| {
    let encoded = match codec::decode_message(Bytes::copy_from_slice(data)) {
        Ok(codec::Message::Event(envelope)) => {
            assert!(!envelope.node.is_empty() && envelope.node.len() <= codec::NODE_NAME_BYTES_MAX);
            // Only the node named acts on it, and answers the one that sent it: never empty.
            if let HubEvent::Addressed(addressed) = &envelope.event {
                assert!(
                    !addressed.to_node.is_empty()
                        && addressed.to_node.len() <= codec::NODE_NAME_BYTES_MAX
                );
            }
            if let HubEvent::Private(link) = &envelope.event {
                assert!(!link.to_node.is_empty() && !link.from_node.is_empty());
                assert!(link.address.len() <= codec::ADDRESS_BYTES_MAX);
            }
            if let HubEvent::Bin24(relay) = &envelope.event {
                assert!(!relay.to_node.is_empty() && !relay.from_node.is_empty());
                assert!(
                    (codec::BIN24_FRAME_BYTES_MIN..=codec::BIN24_FRAME_BYTES_MAX)
                        .contains(&relay.frame.len())
                );
                assert_eq!(
                    usize::from(u16::from_le_bytes([relay.frame[0], relay.frame[1]])),
                    relay.frame.len()
                );
            }
            if let HubEvent::Ocm(event) = &envelope.event {
                assert!(!event.room.is_empty() && !event.home_node.is_empty());
                assert!(event.text.len() <= codec::OCM_TEXT_BYTES_MAX);
            }
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
