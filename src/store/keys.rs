//! Byte layout of what the store keeps, as pure functions over bytes.
//!
//! A frame's key is the user's name NUL-padded to 8 bytes followed by its sequence number
//! big-endian: byte order is then (user, seq) order, so one user's frames are one contiguous
//! range that iterates oldest first. Every decoder here returns `None` on bytes of the wrong
//! shape instead of panicking: what comes back from the disk is checked, not trusted.

/// A BIN24 name is at most 8 bytes.
pub(crate) const NAME_BYTES: usize = 8;
/// Name, then the big-endian sequence number.
pub(crate) const FRAME_KEY_BYTES: usize = NAME_BYTES + 8;

/// A user's name as stored: the name bytes, NUL-padded to 8.
pub(crate) type Name = [u8; NAME_BYTES];
pub(crate) type FrameKey = [u8; FRAME_KEY_BYTES];

/// The name of `user`, or why it cannot be one: longer than 8 bytes, or holding a NUL (a BIN24
/// name ends at its first NUL, so a key with one inside was not cut where it should have been).
pub(crate) fn name_of(user: &[u8]) -> Result<Name, String> {
    if user.len() > NAME_BYTES {
        return Err(format!(
            "invalid user key \"{}\": {} bytes, at most {NAME_BYTES}",
            user.escape_ascii(),
            user.len()
        ));
    }
    if user.contains(&0) {
        return Err(format!(
            "invalid user key \"{}\": it holds a NUL byte",
            user.escape_ascii()
        ));
    }
    let mut name = [0; NAME_BYTES];
    name[..user.len()].copy_from_slice(user);
    Ok(name)
}

pub(crate) fn frame_key(name: &Name, seq: u64) -> FrameKey {
    let mut key = [0; FRAME_KEY_BYTES];
    key[..NAME_BYTES].copy_from_slice(name);
    key[NAME_BYTES..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// First and last possible key of `name`'s frames (both inclusive).
pub(crate) fn user_range(name: &Name) -> (FrameKey, FrameKey) {
    (frame_key(name, 0), frame_key(name, u64::MAX))
}

/// The (name, seq) of a stored key, or `None` if it does not have the shape of one.
pub(crate) fn decode_frame_key(key: &[u8]) -> Option<(Name, u64)> {
    let key: &FrameKey = key.try_into().ok()?;
    let (name, seq) = key.split_at(NAME_BYTES);
    Some((
        name.try_into().ok()?,
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

/// Metadata values are u64 little-endian.
pub(crate) fn encode_u64(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_nul_padded_to_8_bytes() {
        assert_eq!(&name_of(b"bob").unwrap(), b"bob\0\0\0\0\0");
        assert_eq!(&name_of(b"12345678").unwrap(), b"12345678");
        assert_eq!(name_of(b"").unwrap(), [0; NAME_BYTES]);
    }

    #[test]
    fn names_longer_than_8_or_holding_a_nul_are_refused_with_a_reason() {
        let long = name_of(b"123456789").unwrap_err();
        assert!(long.contains("9 bytes"), "{long}");
        let nul = name_of(b"a\0b").unwrap_err();
        assert!(nul.contains("NUL"), "{nul}");
        assert!(nul.contains("a\\x00b"), "{nul}");
    }

    #[test]
    fn frame_keys_round_trip_and_sort_by_user_then_seq() {
        let ann = name_of(b"ann").unwrap();
        let annie = name_of(b"annie").unwrap();
        let key = frame_key(&ann, 0x0102_0304_0506_0708);
        assert_eq!(decode_frame_key(&key), Some((ann, 0x0102_0304_0506_0708)));

        // Byte order is (user, seq) order, seq numerically (big-endian), not by its bytes' LE.
        let mut keys = [
            frame_key(&annie, 1),
            frame_key(&ann, 256),
            frame_key(&ann, 2),
            frame_key(&ann, u64::MAX),
        ];
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| decode_frame_key(k).unwrap()).collect();
        assert_eq!(
            decoded,
            vec![(ann, 2), (ann, 256), (ann, u64::MAX), (annie, 1)]
        );
    }

    #[test]
    fn a_user_range_holds_exactly_that_users_keys() {
        let ann = name_of(b"ann").unwrap();
        let (first, last) = user_range(&ann);
        for seq in [0, 1, u64::MAX] {
            let key = frame_key(&ann, seq);
            assert!(first <= key && key <= last);
        }
        for other in [&b"an"[..], b"annie", b"ann\x01", b"bob"] {
            let key = frame_key(&name_of(other).unwrap(), 7);
            assert!(!(first <= key && key <= last), "{:?}", other.escape_ascii());
        }
    }

    #[test]
    fn decoders_refuse_bytes_of_the_wrong_shape() {
        assert_eq!(decode_frame_key(&[0; 15]), None);
        assert_eq!(decode_frame_key(&[0; 17]), None);
        assert_eq!(decode_frame_key(&[]), None);
        assert_eq!(decode_u64(&[1; 7]), None);
        assert_eq!(decode_u64(&encode_u64(42)), Some(42));
    }
}
