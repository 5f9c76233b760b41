//! The stamp in the body of every BIN24 message the loadgen sends.
//!
//! BIN24 is framed, so unlike ROOM's record the stamp need not be found in a byte stream: it is
//! a fixed binary layout at the start of the body, little-endian like the frame header.
//!
//! ```text
//! offset 0   [u8; 4] magic "LG24"
//! offset 4   u32     run id: stored frames left over by an earlier run are told apart
//! offset 8   u32     sender, the user index
//! offset 12  u32     seq, the message's number within its sender's plan (messageID - 1)
//! offset 16  u64     intended send time, µs since the loadgen's epoch
//! offset 24  u32     check: FNV-1a of bytes 0..24
//! offset 28  padding '.' up to the body size
//! ```
//!
//! The check and the padding catch a body the server altered; a body without the magic, or
//! with another run's id, is foreign (an earlier run's stored frame, another client): counted,
//! never mistaken for one of this run's messages.

// The same stamp and reading as the text protocols', in a binary layout.
pub use crate::textstamp::{Read, Stamp};

/// The smallest body: the stamp without padding.
pub const STAMP_BYTES: usize = 28;
const MAGIC: [u8; 4] = *b"LG24";
const PAD: u8 = b'.';
const CHECKED_BYTES: usize = 24;

/// Writes `stamp` into `out` and pads the rest. `out` is at least [`STAMP_BYTES`] long (the
/// argument checks make it so); a shorter one is left untouched and reported.
pub fn write(out: &mut [u8], stamp: &Stamp) -> Result<(), &'static str> {
    if out.len() < STAMP_BYTES {
        return Err("body shorter than the stamp");
    }
    out[0..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&stamp.run_id.to_le_bytes());
    out[8..12].copy_from_slice(&stamp.sender.to_le_bytes());
    out[12..16].copy_from_slice(&stamp.seq.to_le_bytes());
    out[16..24].copy_from_slice(&stamp.intended_us.to_le_bytes());
    let check = fnv1a(&out[..CHECKED_BYTES]);
    out[24..28].copy_from_slice(&check.to_le_bytes());
    out[STAMP_BYTES..].fill(PAD);
    Ok(())
}

/// Reads the stamp of a received body.
pub fn read(body: &[u8], run_id: u32) -> Read {
    if body.len() < 8 || body[0..4] != MAGIC || u32_at(body, 4) != run_id {
        return Read::Foreign;
    }
    if body.len() < STAMP_BYTES {
        return Read::Malformed("body shorter than the stamp");
    }
    if fnv1a(&body[..CHECKED_BYTES]) != u32_at(body, 24) {
        return Read::Malformed("stamp check mismatch");
    }
    if body[STAMP_BYTES..].iter().any(|&b| b != PAD) {
        return Read::Malformed("padding altered");
    }
    let mut intended = [0; 8];
    intended.copy_from_slice(&body[16..24]);
    Read::Ours(Stamp {
        run_id,
        sender: u32_at(body, 8),
        seq: u32_at(body, 12),
        intended_us: u64::from_le_bytes(intended),
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut out = [0; 4];
    out.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(out)
}

/// FNV-1a, 32 bits: enough to notice damage, not meant against an adversary.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        run_id: 0xdead_beef,
        sender: 41,
        seq: 123_456,
        intended_us: 9_876_543_210,
    };

    #[test]
    fn round_trip_with_and_without_padding() {
        for len in [STAMP_BYTES, 64, 1000] {
            let mut body = vec![0u8; len];
            write(&mut body, &STAMP).unwrap();
            assert_eq!(&body[..4], b"LG24");
            assert!(body[STAMP_BYTES..].iter().all(|&b| b == b'.'));
            assert_eq!(read(&body, STAMP.run_id), Read::Ours(STAMP));
        }
        assert!(write(&mut [0u8; STAMP_BYTES - 1], &STAMP).is_err());
    }

    #[test]
    fn other_runs_and_other_clients_are_foreign() {
        let mut body = vec![0u8; 64];
        write(&mut body, &STAMP).unwrap();
        assert_eq!(read(&body, STAMP.run_id + 1), Read::Foreign);
        assert_eq!(read(b"hello", STAMP.run_id), Read::Foreign);
        assert_eq!(read(b"", STAMP.run_id), Read::Foreign);
        assert_eq!(read(b"200", STAMP.run_id), Read::Foreign);
    }

    #[test]
    fn damage_is_malformed() {
        let mut body = vec![0u8; 64];
        write(&mut body, &STAMP).unwrap();
        for at in [8, 12, 16, 23, 24, 27] {
            let mut bad = body.clone();
            bad[at] ^= 1;
            assert_eq!(
                read(&bad, STAMP.run_id),
                Read::Malformed("stamp check mismatch"),
                "byte {at}"
            );
        }
        let mut bad = body.clone();
        bad[50] = b'x';
        assert_eq!(read(&bad, STAMP.run_id), Read::Malformed("padding altered"));
        assert_eq!(
            read(&body[..20], STAMP.run_id),
            Read::Malformed("body shorter than the stamp")
        );
    }
}
