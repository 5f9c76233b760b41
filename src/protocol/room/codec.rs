//! ROOM wire format: a raw byte stream with no framing.
//!
//! The server's only texts are the alias prompt, the greeting and the join/leave notices,
//! which name the alias the way the original Python server does: it formats the `bytes`
//! object itself, so the alias appears as CPython's `repr()` of bytes (`b'alice'`).

use bytes::{Bytes, BytesMut};

/// Sent alone on accept, and again after an empty alias.
pub const ALIAS_PROMPT: &[u8] = b"alias?";
/// Sent to the newcomer only, after its join notice.
pub const GREETING: &[u8] = b"Voce esta conectado ao servidor!";
const JOIN_SUFFIX: &[u8] = b" esta conectado ao chat";
const LEAVE_SUFFIX: &[u8] = b" acabou de sair do chat!";

/// The original reads the alias with one `recv(1024)`.
pub const ALIAS_BYTES_MAX: usize = 1024;

/// Append CPython's `repr()` of a `bytes` object holding `raw` to `out`.
///
/// The rules of `bytes.__repr__`: single quotes unless the bytes contain `'` and no `"`;
/// backslash and the chosen quote are escaped; TAB, LF, CR get their short escapes; any other
/// byte below 0x20 or from 0x7f up is `\xhh` in lowercase hex.
pub fn bytes_repr_into(raw: &[u8], out: &mut Vec<u8>) {
    let quote = if raw.contains(&b'\'') && !raw.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    out.reserve(raw.len() + 3);
    out.push(b'b');
    out.push(quote);
    for &byte in raw {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ if byte == quote => {
                out.push(b'\\');
                out.push(byte);
            }
            0x20..=0x7e => out.push(byte),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'x',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0x0f)],
                ]);
            }
        }
    }
    out.push(quote);
}

/// CPython's `repr()` of a `bytes` object holding `raw`.
pub fn bytes_repr(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_repr_into(raw, &mut out);
    out
}

/// `<repr> esta conectado ao chat`, given the alias's repr.
pub fn join_notice(alias_repr: &[u8]) -> Bytes {
    concat(alias_repr, JOIN_SUFFIX)
}

/// `<repr> acabou de sair do chat!`, given the alias's repr.
pub fn leave_notice(alias_repr: &[u8]) -> Bytes {
    concat(alias_repr, LEAVE_SUFFIX)
}

fn concat(head: &[u8], tail: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(head.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(tail);
    Bytes::from(out)
}

/// Take the alias from the start of a connection's input: the first chunk, at most
/// [`ALIAS_BYTES_MAX`] bytes, with trailing CR and LF removed (so `nc` users may type
/// `alice⏎`). Returns `None` when nothing has arrived. The alias may come back empty, which
/// the caller answers with the prompt again. Bytes past the first 1024 stay in `input`: the
/// original would have read them with its next `recv` as a message.
pub fn take_alias(input: &mut BytesMut) -> Option<Bytes> {
    if input.is_empty() {
        return None;
    }
    let taken = input.len().min(ALIAS_BYTES_MAX);
    let mut alias = input.split_to(taken).freeze();
    let trimmed = alias
        .iter()
        .rposition(|&b| b != b'\r' && b != b'\n')
        .map_or(0, |last| last + 1);
    alias.truncate(trimmed);
    Some(alias)
}

/// Take everything that has arrived as one chunk to relay verbatim (zero-copy: the chunk is
/// the read buffer's bytes, shared by every recipient).
pub fn take_chunk(input: &mut BytesMut) -> Option<Bytes> {
    if input.is_empty() {
        None
    } else {
        Some(input.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract's vectors (tests/vectors/room-notices.tsv, itself a copy of the
    /// contract's), as a table; `the_table_is_the_vector_file` keeps the two the same.
    const NOTICE_VECTORS: &[(&str, &str)] = &[
        ("616c696365", "b'alice'"),
        ("6a6f73c3a9", "b'jos\\xc3\\xa9'"),
        ("6f276e65696c", "b\"o'neil\""),
        ("7361792022686922", "b'say \"hi\"'"),
        ("626f74682722", "b'both\\'\"'"),
        ("6261636b5c736c617368", "b'back\\\\slash'"),
        ("7461620968657265", "b'tab\\there'"),
        ("6e65770a6c696e65", "b'new\\nline'"),
        ("63720d78", "b'cr\\rx'"),
        ("007fff", "b'\\x00\\x7f\\xff'"),
        ("", "b''"),
        ("e5a4aae9838e", "b'\\xe5\\xa4\\xaa\\xe9\\x83\\x8e'"),
    ];

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_table_is_the_vector_file() {
        let file = include_str!("../../../tests/vectors/room-notices.tsv");
        let rows: Vec<&str> = file.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(rows.len(), NOTICE_VECTORS.len());
        for (row, (hex, repr)) in rows.iter().zip(NOTICE_VECTORS) {
            let expected =
                format!("{hex}\t{repr} esta conectado ao chat\t{repr} acabou de sair do chat!");
            assert_eq!(*row, expected);
        }
    }

    #[test]
    fn repr_matches_the_contract_vectors() {
        for (hex, repr) in NOTICE_VECTORS {
            let raw = unhex(hex);
            assert_eq!(
                String::from_utf8(bytes_repr(&raw)).unwrap(),
                *repr,
                "alias {hex}"
            );
            let join = join_notice(&bytes_repr(&raw));
            assert_eq!(
                &join[..],
                format!("{repr} esta conectado ao chat").as_bytes()
            );
            let leave = leave_notice(&bytes_repr(&raw));
            assert_eq!(
                &leave[..],
                format!("{repr} acabou de sair do chat!").as_bytes()
            );
        }
    }

    /// CPython's rules, written out independently of the implementation for all 256 bytes.
    #[test]
    fn repr_of_every_single_byte() {
        for byte in 0u8..=255 {
            let expected = match byte {
                b'\'' => "b\"'\"".to_string(),
                b'\\' => "b'\\\\'".to_string(),
                b'\t' => "b'\\t'".to_string(),
                b'\n' => "b'\\n'".to_string(),
                b'\r' => "b'\\r'".to_string(),
                0x20..=0x7e => format!("b'{}'", byte as char),
                _ => format!("b'\\x{byte:02x}'"),
            };
            assert_eq!(
                String::from_utf8(bytes_repr(&[byte])).unwrap(),
                expected,
                "byte {byte:#04x}"
            );
        }
    }

    #[test]
    fn repr_quote_choice() {
        // Both quotes present: single quotes, the single one escaped, the double one not.
        assert_eq!(bytes_repr(b"'\""), b"b'\\'\"'");
        // Only double quotes: single quotes, nothing escaped.
        assert_eq!(bytes_repr(b"\"\""), b"b'\"\"'");
        // Only single quotes: double quotes, nothing escaped.
        assert_eq!(bytes_repr(b"''"), b"b\"''\"");
        // A backslash next to a quote is still doubled under either quote.
        assert_eq!(bytes_repr(b"\\'"), b"b\"\\\\'\"");
    }

    #[test]
    fn alias_is_the_first_chunk_trimmed_of_line_endings() {
        let mut input = BytesMut::from(&b"alice\r\n"[..]);
        assert_eq!(
            take_alias(&mut input).unwrap(),
            Bytes::from_static(b"alice")
        );
        assert!(input.is_empty());

        // Only trailing CR/LF go; inner ones and other whitespace stay.
        let mut input = BytesMut::from(&b"a\nb \n\n"[..]);
        assert_eq!(
            take_alias(&mut input).unwrap(),
            Bytes::from_static(b"a\nb ")
        );

        let mut input = BytesMut::from(&b"\r\n"[..]);
        assert_eq!(take_alias(&mut input).unwrap(), Bytes::new());

        let mut empty = BytesMut::new();
        assert_eq!(take_alias(&mut empty), None);
    }

    #[test]
    fn alias_is_cut_at_1024_bytes_and_the_rest_stays() {
        let mut raw = vec![b'x'; ALIAS_BYTES_MAX];
        raw.extend_from_slice(b"after");
        let mut input = BytesMut::from(&raw[..]);
        let alias = take_alias(&mut input).unwrap();
        assert_eq!(alias.len(), ALIAS_BYTES_MAX);
        assert_eq!(&input[..], b"after");
    }

    #[test]
    fn chunk_takes_everything_without_copying() {
        let mut input = BytesMut::with_capacity(64);
        input.extend_from_slice(b"alice: hello");
        let before = input.as_ptr();
        let chunk = take_chunk(&mut input).unwrap();
        assert_eq!(&chunk[..], b"alice: hello");
        assert_eq!(
            chunk.as_ptr(),
            before,
            "the chunk must be the read buffer's own bytes"
        );
        assert!(input.is_empty());
        assert_eq!(take_chunk(&mut input), None);
    }
}
