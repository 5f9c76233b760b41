//! The printable stamp at the start of every CCM content, MATOU public message and OCM chat
//! message: one layout, told apart by its magic.
//!
//! Those protocols carry text (CCM declares `Message-Encoding: utf-8`, MATOU forbids control
//! characters, OCM relays `<name>: <message>`), so the stamp is fixed-width lowercase hex rather
//! than BIN24's binary layout:
//!
//! ```text
//! offset 0   magic      4 bytes, one per protocol ("LGCM", "LGMT", "LGOC")
//! offset 4   8 hex      run id: messages of another run (or another client) are told apart
//! offset 12  8 hex      sender, the user (member) index
//! offset 20  8 hex      seq, the message's number within its sender's plan
//! offset 28  16 hex     intended send time, µs since the loadgen's epoch
//! offset 44  8 hex      check: a 32-bit hash of bytes 0..44 (see `check`)
//! offset 52  '.' padding up to the message size
//! ```
//!
//! Every byte is printable ASCII. The check and the padding catch a message the server altered;
//! one without the magic, or with another run's id, is foreign: counted, never mistaken for one
//! of this run's messages.
//!
//! [`Stamp`] and [`Read`] are BIN24's too: its frames carry the same fields in a binary layout
//! (`bin24::stamp`).

/// The smallest message: the stamp without padding.
pub const STAMP_BYTES: usize = 52;
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

/// One protocol's stamp: its magic, and the words its errors use for what carries the stamp.
pub struct TextStamp {
    pub magic: [u8; 4],
    /// The error for a message shorter than [`STAMP_BYTES`] ("content shorter than the stamp").
    pub too_short: &'static str,
    /// The largest message the protocol allows, and the error for a longer one.
    pub max_bytes: usize,
    pub too_long: &'static str,
}

impl TextStamp {
    /// Writes `stamp` into `out` and pads the rest; `out` must hold from [`STAMP_BYTES`] to
    /// `max_bytes` bytes.
    pub fn write(&self, out: &mut [u8], stamp: &Stamp) -> Result<(), &'static str> {
        if out.len() < STAMP_BYTES {
            return Err(self.too_short);
        }
        if out.len() > self.max_bytes {
            return Err(self.too_long);
        }
        out[0..4].copy_from_slice(&self.magic);
        put_hex(&mut out[4..12], u64::from(stamp.run_id));
        put_hex(&mut out[12..20], u64::from(stamp.sender));
        put_hex(&mut out[20..28], u64::from(stamp.seq));
        put_hex(&mut out[28..44], stamp.intended_us);
        let sum = check(&out[..CHECKED_BYTES]);
        put_hex(&mut out[44..52], u64::from(sum));
        out[STAMP_BYTES..].fill(PAD);
        Ok(())
    }

    /// Reads the stamp of a received message.
    pub fn read(&self, message: &[u8], run_id: u32) -> Read {
        if message.len() < 12
            || message[0..4] != self.magic
            || hex_at(message, 4, 12) != Some(u64::from(run_id))
        {
            return Read::Foreign;
        }
        if message.len() < STAMP_BYTES {
            return Read::Malformed(self.too_short);
        }
        if hex_at(message, 44, 52) != Some(u64::from(check(&message[..CHECKED_BYTES]))) {
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
}

/// `value` as exactly `out.len()` lowercase hex digits (the high digits dropped if it is wider).
pub fn put_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The lowercase hex number in `bytes[from..to]` (at most 16 digits).
pub fn hex_at(bytes: &[u8], from: usize, to: usize) -> Option<u64> {
    bytes.get(from..to)?.iter().try_fold(0u64, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(digit))
    })
}

/// A 32-bit hash to notice damage, not meant against an adversary: FNV-1a's step taken a
/// 64-bit word at a time, then MurmurHash3's finaliser. Every delivery is checked, and
/// byte-at-a-time FNV-1a over the 44 bytes was a sixth of the loop's user time at 2,000,000
/// deliveries/s; this is 6 multiplications instead of 44. Each step is a bijection of the
/// state for a given word, so a change in one word always changes the 64-bit state.
fn check(bytes: &[u8]) -> u32 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        hash = (hash ^ u64::from_le_bytes(w)).wrapping_mul(PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash as u32
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

    const FORMATS: [&TextStamp; 3] = [
        &crate::ccm::stamp::FORMAT,
        &crate::matou::stamp::FORMAT,
        &crate::ocm::stamp::FORMAT,
    ];

    /// MATOU's rule 2 (no control characters), OCM's relay (no spaces): the stamp is graphic.
    fn printable(message: &[u8]) -> bool {
        message.iter().all(|b| b.is_ascii_graphic())
    }

    #[test]
    fn round_trip_with_and_without_padding() {
        for format in FORMATS {
            for len in [STAMP_BYTES, 64, 200, 512] {
                let mut message = vec![0u8; len];
                format.write(&mut message, &STAMP).unwrap();
                assert!(printable(&message), "{len}: {message:?}");
                assert_eq!(&message[..4], &format.magic);
                assert_eq!(&message[4..12], b"deadbeef");
                assert!(message[STAMP_BYTES..].iter().all(|&b| b == b'.'));
                assert_eq!(format.read(&message, STAMP.run_id), Read::Ours(STAMP));
            }
            let max = Stamp {
                run_id: u32::MAX,
                sender: u32::MAX,
                seq: u32::MAX,
                intended_us: u64::MAX,
            };
            let mut message = vec![0u8; STAMP_BYTES];
            format.write(&mut message, &max).unwrap();
            assert!(printable(&message));
            assert_eq!(format.read(&message, u32::MAX), Read::Ours(max));
            let zero = Stamp {
                run_id: 0,
                sender: 0,
                seq: 0,
                intended_us: 0,
            };
            format.write(&mut message, &zero).unwrap();
            assert!(printable(&message));
            assert_eq!(format.read(&message, 0), Read::Ours(zero));
            assert_eq!(
                format.write(&mut [0u8; STAMP_BYTES - 1], &STAMP),
                Err(format.too_short)
            );
        }
    }

    #[test]
    fn other_runs_other_clients_and_other_protocols_are_foreign() {
        for format in FORMATS {
            let mut message = vec![0u8; 64];
            format.write(&mut message, &STAMP).unwrap();
            assert_eq!(format.read(&message, STAMP.run_id + 1), Read::Foreign);
            assert_eq!(format.read(b"hello", STAMP.run_id), Read::Foreign);
            assert_eq!(format.read(b"", STAMP.run_id), Read::Foreign);
            let mut upper = format.magic.to_vec();
            upper.extend_from_slice(b"DEADBEEF");
            assert_eq!(format.read(&upper, STAMP.run_id), Read::Foreign);
            for other in FORMATS {
                if other.magic != format.magic {
                    assert_eq!(other.read(&message, STAMP.run_id), Read::Foreign);
                }
            }
        }
    }

    #[test]
    fn every_single_bit_flip_in_the_stamp_is_caught() {
        for format in FORMATS {
            let mut message = vec![0u8; 64];
            format.write(&mut message, &STAMP).unwrap();
            for at in 12..STAMP_BYTES {
                for bit in 0..8 {
                    let mut bad = message.clone();
                    bad[at] ^= 1 << bit;
                    assert!(
                        matches!(format.read(&bad, STAMP.run_id), Read::Malformed(_)),
                        "byte {at} bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn damage_is_malformed() {
        for format in FORMATS {
            let mut message = vec![0u8; 64];
            format.write(&mut message, &STAMP).unwrap();
            for at in [12, 19, 20, 30, 43, 44, 51] {
                let mut bad = message.clone();
                bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
                assert_eq!(
                    format.read(&bad, STAMP.run_id),
                    Read::Malformed("stamp check mismatch"),
                    "byte {at}"
                );
            }
            let mut bad = message.clone();
            bad[60] = b'x';
            assert_eq!(
                format.read(&bad, STAMP.run_id),
                Read::Malformed("padding altered")
            );
            assert_eq!(
                format.read(&message[..40], STAMP.run_id),
                Read::Malformed(format.too_short)
            );
            // A field that is not hex, with a check that matches it: still malformed.
            let mut bad = message.clone();
            bad[13] = b'g';
            let sum = check(&bad[..CHECKED_BYTES]);
            put_hex(&mut bad[44..52], u64::from(sum));
            assert_eq!(
                format.read(&bad, STAMP.run_id),
                Read::Malformed("stamp field not hex")
            );
        }
    }
}
