//! OCM's chat datagram: a whole datagram, as UDP delivers it.
//!
//! Invariants: a datagram that parses is at most 4096 bytes and re-encodes to exactly its
//! bytes; one that does not is over 4096 bytes or shorter than its sizes say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ocm::codec::{self, DatagramError};

fuzz_target!(|data: &[u8]| {
    match codec::parse_datagram(data) {
        Ok(datagram) => {
            assert!(data.len() <= codec::DATAGRAM_BYTES_MAX);
            assert_eq!(datagram.room.len(), usize::from(data[0]));
            assert_eq!(datagram.token.len(), usize::from(data[1]));
            let encoded = codec::encode_datagram(datagram.room, datagram.token, datagram.message)
                .expect("a parsed datagram fits");
            assert_eq!(&encoded[..], data);
        }
        Err(DatagramError::TooLarge) => assert!(data.len() > codec::DATAGRAM_BYTES_MAX),
        Err(DatagramError::Truncated) => {
            assert!(data.len() < 2 || data.len() < 2 + usize::from(data[0]) + usize::from(data[1]));
        }
    }
});
