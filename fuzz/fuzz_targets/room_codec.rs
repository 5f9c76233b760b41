//! ROOM's handshake and relay cutting, and the alias's Python repr in the notices.
//!
//! Invariants: the alias is the first read's first 1024 bytes less trailing CR/LF; a chunk is
//! everything buffered; the repr is printable ASCII that reads back (as a Python bytes
//! literal) to exactly the alias.
#![no_main]

use bytes::BytesMut;
use fuzz_support::split_reads;
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::room::codec;

fuzz_target!(|data: &[u8]| {
    let mut input = BytesMut::new();
    let mut joined = false;
    for read in split_reads(data) {
        input.extend_from_slice(read);
        // As the service: aliases until a non-empty one, then chunks.
        loop {
            let before = input.to_vec();
            if joined {
                match codec::take_chunk(&mut input) {
                    None => assert!(before.is_empty()),
                    Some(chunk) => {
                        assert_eq!(&chunk[..], &before[..]);
                        assert!(input.is_empty());
                    }
                }
                break;
            }
            let Some(alias) = codec::take_alias(&mut input) else {
                assert!(before.is_empty(), "no alias from {} bytes", before.len());
                break;
            };
            let taken = before.len() - input.len();
            assert_eq!(taken, before.len().min(codec::ALIAS_BYTES_MAX));
            assert_eq!(&input[..], &before[taken..]);
            assert!(before[..taken].starts_with(&alias));
            assert!(before[alias.len()..taken]
                .iter()
                .all(|&b| b == b'\r' || b == b'\n'));
            assert!(!alias.ends_with(b"\r") && !alias.ends_with(b"\n"));
            check_repr(&alias);
            joined = !alias.is_empty();
        }
    }
});

fn check_repr(raw: &[u8]) {
    let repr = codec::bytes_repr(raw);
    assert!(
        repr.iter().all(|&b| (0x20..0x7f).contains(&b)),
        "repr not printable"
    );
    assert_eq!(
        read_python_bytes(&repr).as_deref(),
        Some(raw),
        "repr does not read back"
    );
    let join = codec::join_notice(&repr);
    assert!(join.starts_with(&repr));
    let leave = codec::leave_notice(&repr);
    assert!(leave.starts_with(&repr));
}

/// What Python reads from a `b'...'` or `b"..."` literal with the escapes `bytes.__repr__`
/// writes; `None` if it is not one.
fn read_python_bytes(literal: &[u8]) -> Option<Vec<u8>> {
    let [b'b', quote @ (b'\'' | b'"'), body @ .., last] = literal else {
        return None;
    };
    if last != quote {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == *quote {
            return None;
        }
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        match body.get(i + 1)? {
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let hex = std::str::from_utf8(body.get(i + 2..i + 4)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            _ => return None,
        }
        i += 2;
    }
    Some(out)
}
