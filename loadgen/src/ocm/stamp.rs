//! The stamp at the start of every OCM chat message.
//!
//! OCM messages are UTF-8 text that the server relays as `<name>: <message>`, so the stamp is
//! printable, fixed-width lowercase hex (CCM's layout with its own magic):
//!
//! ```text
//! offset 0   "LGOC"     magic
//! offset 4   8 hex      run id: messages of another run (or another client) are told apart
//! offset 12  8 hex      sender, the member's index in the run
//! offset 20  8 hex      seq, the message's number within its sender's plan
//! offset 28  16 hex     intended send time, µs since the loadgen's epoch
//! offset 44  8 hex      check: FNV-1a of bytes 0..44
//! offset 52  '.' padding up to the message size
//! ```
//!
//! The check and the padding catch a message the server altered; text without the magic, or
//! with another run's id, is foreign: counted, never mistaken for one of this run's messages.
//! The stamp never starts with `exit`, so the server never takes it for a leave request.

/// The smallest message: the stamp without padding.
pub const STAMP_BYTES: usize = 52;
const MAGIC: &[u8; 4] = b"LGOC";
const PAD: u8 = b'.';
const CHECKED_BYTES: usize = 44;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub run_id: u32,
    pub sender: u32,
    pub seq: u32,
    pub intended_us: u64,
}

/// What a received message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    Ours(Stamp),
    /// Not this run's: no magic, or another run id.
    Foreign,
    /// This run's magic and id, but damaged.
    Malformed(&'static str),
}

/// Writes `stamp` into `out` and pads the rest; `out` must hold at least [`STAMP_BYTES`].
pub fn write(out: &mut [u8], stamp: &Stamp) -> Result<(), &'static str> {
    if out.len() < STAMP_BYTES {
        return Err("message shorter than the stamp");
    }
    out[0..4].copy_from_slice(MAGIC);
    put_hex(&mut out[4..12], u64::from(stamp.run_id));
    put_hex(&mut out[12..20], u64::from(stamp.sender));
    put_hex(&mut out[20..28], u64::from(stamp.seq));
    put_hex(&mut out[28..44], stamp.intended_us);
    let check = fnv1a(&out[..CHECKED_BYTES]);
    put_hex(&mut out[44..52], u64::from(check));
    out[STAMP_BYTES..].fill(PAD);
    Ok(())
}

/// Reads the stamp of a received message.
pub fn read(message: &[u8], run_id: u32) -> Read {
    if message.len() < 12
        || &message[0..4] != MAGIC
        || hex_at(message, 4, 12) != Some(u64::from(run_id))
    {
        return Read::Foreign;
    }
    if message.len() < STAMP_BYTES {
        return Read::Malformed("message shorter than the stamp");
    }
    if hex_at(message, 44, 52) != Some(u64::from(fnv1a(&message[..CHECKED_BYTES]))) {
        return Read::Malformed("stamp check mismatch");
    }
    if message[STAMP_BYTES..].iter().any(|&b| b != PAD) {
        return Read::Malformed("padding altered");
    }
    match (
        hex_at(message, 12, 20),
        hex_at(message, 20, 28),
        hex_at(message, 28, 44),
    ) {
        (Some(sender), Some(seq), Some(intended_us)) => Read::Ours(Stamp {
            run_id,
            sender: sender as u32,
            seq: seq as u32,
            intended_us,
        }),
        _ => Read::Malformed("stamp field not hex"),
    }
}

/// `value` as exactly `out.len()` lowercase hex digits (the high digits dropped if it is wider).
fn put_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The lowercase hex number in `bytes[from..to]` (at most 16 digits).
fn hex_at(bytes: &[u8], from: usize, to: usize) -> Option<u64> {
    bytes.get(from..to)?.iter().try_fold(0u64, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(digit))
    })
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
    fn round_trip_printable_with_and_without_padding() {
        for len in [STAMP_BYTES, 64, 3_000] {
            let mut message = vec![0u8; len];
            write(&mut message, &STAMP).unwrap();
            assert!(
                message.iter().all(|b| b.is_ascii_graphic()),
                "printable, no spaces or control bytes"
            );
            assert_eq!(&message[..12], b"LGOCdeadbeef");
            assert!(!message.starts_with(b"exit"));
            assert!(message[STAMP_BYTES..].iter().all(|&b| b == b'.'));
            assert_eq!(read(&message, STAMP.run_id), Read::Ours(STAMP));
        }
        assert!(write(&mut [0u8; STAMP_BYTES - 1], &STAMP).is_err());
        let max = Stamp {
            run_id: u32::MAX,
            sender: u32::MAX,
            seq: u32::MAX,
            intended_us: u64::MAX,
        };
        let mut message = vec![0u8; STAMP_BYTES];
        write(&mut message, &max).unwrap();
        assert_eq!(read(&message, u32::MAX), Read::Ours(max));
        let zero = Stamp {
            run_id: 0,
            sender: 0,
            seq: 0,
            intended_us: 0,
        };
        write(&mut message, &zero).unwrap();
        assert_eq!(read(&message, 0), Read::Ours(zero));
    }

    #[test]
    fn other_runs_and_other_clients_are_foreign() {
        let mut message = vec![0u8; 64];
        write(&mut message, &STAMP).unwrap();
        assert_eq!(read(&message, STAMP.run_id + 1), Read::Foreign);
        assert_eq!(read(b"hello", STAMP.run_id), Read::Foreign);
        assert_eq!(read(b"", STAMP.run_id), Read::Foreign);
        assert_eq!(read(b"LGOCDEADBEEF", STAMP.run_id), Read::Foreign);
        // CCM's stamp (another magic) is not ours either.
        assert_eq!(read(b"LGCMdeadbeef00000000", STAMP.run_id), Read::Foreign);
    }

    #[test]
    fn damage_is_malformed() {
        let mut message = vec![0u8; 64];
        write(&mut message, &STAMP).unwrap();
        for at in [12, 19, 20, 30, 43, 44, 51] {
            let mut bad = message.clone();
            bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
            assert_eq!(
                read(&bad, STAMP.run_id),
                Read::Malformed("stamp check mismatch"),
                "byte {at}"
            );
        }
        let mut bad = message.clone();
        bad[60] = b'x';
        assert_eq!(read(&bad, STAMP.run_id), Read::Malformed("padding altered"));
        assert_eq!(
            read(&message[..40], STAMP.run_id),
            Read::Malformed("message shorter than the stamp")
        );
    }
}
