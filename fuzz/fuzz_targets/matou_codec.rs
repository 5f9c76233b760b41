//! MATOU packets cut from a stream split anywhere, by each of the three decoders (client to
//! server, server to client, peer to peer).
//!
//! Invariants (beyond the decoder contract in `drive_decoder`): a packet re-encodes to the
//! bytes it was cut from (a CONNECT_RESPONSE's byte normalised to 0 or 1: any non-zero byte
//! reads as acceptance, as Java's readBoolean does), and decodes back to itself; after a
//! PRIVATE_FILE header the file's bytes are skipped, as a peer reads them.
#![no_main]

use bytes::BytesMut;
use fuzz_support::{drive_decoder, split_reads};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::matou::codec::{self, DecodeError, Limits, Packet};

type Decoder = fn(&mut BytesMut, &Limits) -> Result<Option<Packet>, DecodeError>;

fuzz_target!(|data: &[u8]| {
    // Small limits too, so that the limit checks are reached by short inputs.
    let limits = if data.len().is_multiple_of(2) {
        Limits::default()
    } else {
        Limits {
            string_bytes_max: 32,
            file_bytes_max: 4096,
        }
    };
    let reads = split_reads(data);
    let decoders: [Decoder; 3] = [
        codec::decode_from_client,
        codec::decode_from_server,
        codec::decode_from_peer,
    ];
    for decode in decoders {
        drive_decoder(
            &reads,
            |buf| decode(buf, &limits),
            |packet, raw| check(&packet, raw, decode, &limits),
        );
    }
});

fn check(packet: &Packet, raw: &[u8], decode: Decoder, limits: &Limits) -> u64 {
    let encoded = packet.to_bytes();
    assert_eq!(packet.encoded_len(), encoded.len());
    let mut expected = raw.to_vec();
    if let Packet::ConnectResponse { accepted } = packet {
        expected[4] = u8::from(*accepted);
    }
    assert_eq!(
        &encoded[..],
        &expected[..],
        "re-encoding changed the packet"
    );
    let mut again = BytesMut::new();
    codec::encode(packet, &mut again);
    assert_eq!(again, encoded);
    assert_eq!(decode(&mut again, limits), Ok(Some(packet.clone())));
    assert!(again.is_empty());
    match packet {
        Packet::PrivateFile { size } => {
            assert!(*size >= 0 && *size as u64 <= limits.file_bytes_max);
            *size as u64
        }
        _ => 0,
    }
}
