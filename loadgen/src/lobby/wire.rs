//! The lobby's own wire parts, without I/O: its users' names, its stamp, and the reader that
//! finds lobby lines in a ROOM member's byte stream. Everything else is the protocols' own
//! client code (`room`, `ccm::wire`, `matou::wire`, `ocm::wire`), reused as it is.
//!
//! One stamp for every protocol: the printable text stamp ([`crate::textstamp`]) with its own
//! magic, `LGLB`, and `sender` = the member's index in the lobby. It survives every rendering
//! the switchboard makes: it is ASCII without spaces or control characters (MATOU's rule 2,
//! CCM's utf-8, OCM's text), and a ROOM sender writes it as the original client does,
//! `alias: <stamp>\n`, whose one trailing line ending the server drops when it crosses.

use bytes::{Buf, Bytes, BytesMut};

use super::ledger::Kind;
use crate::textstamp::TextStamp;
pub use crate::textstamp::{Read, Stamp, STAMP_BYTES};

pub const FORMAT: TextStamp = TextStamp {
    magic: *b"LGLB",
    too_short: "lobby message shorter than the stamp",
    max_bytes: MESSAGE_BYTES_MAX,
    too_long: "lobby message longer than MATOU carries",
};

/// The largest lobby text: MATOU's public message limit, the smallest of the four.
pub const MESSAGE_BYTES_MAX: usize = 512;

/// Member `i` of the lobby, the `number`-th (from 0) of its protocol: `ly`, the protocol's
/// letter, the run id in 8 hex digits and `number + 1` in 5 digits (`lymdeadbeef00001`).
/// BIN24, CCM and MATOU share one name space in chatd, and the other scenarios' names start
/// `lg` (BIN24, MATOU, OCM, ROOM) or `lc` (CCM): `ly` keeps a lobby run beside them, and the run
/// id beside another lobby run. Alphanumeric, 16 bytes: within every protocol's name rules.
pub fn member_name(kind: Kind, run_id: u32, number: usize) -> String {
    let letter = match kind {
        Kind::Room => 'r',
        Kind::Matou => 'm',
        Kind::Ccm => 'c',
        Kind::Ocm => 'o',
        Kind::Web => 'w',
    };
    format!("ly{letter}{run_id:08x}{:05}", number + 1)
}

/// What a ROOM member's stream holds, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomItem {
    /// `alias?`: the server asks for the alias.
    Prompt,
    /// `Voce esta conectado ao servidor!`: the member is in the room.
    Greeting,
    /// A lobby message: `text` is the stamp (and its padding), `before` what came between the
    /// previous one and it (its last 64 bytes at least), which ends with `<sender name>: `
    /// (presence notices and the line ending of a ROOM echo may come first).
    Line { before: Bytes, text: Bytes },
}

const PROMPT: &[u8] = b"alias?";
const GREETING: &[u8] = b"Voce esta conectado ao servidor!";
/// Bytes kept when what is looked for is not in sight: enough for the `name: ` before the next
/// stamp and a magic (or greeting) cut by the read, so nothing is scanned twice for long.
const KEEP_BYTES: usize = 64;

/// Where a ROOM member is in its stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoomStage {
    #[default]
    Prompt,
    Greeting,
    Lines,
}

/// The next item in a ROOM member's bytes, taken off `buf` (`Ok(None)`: more bytes needed).
///
/// ROOM has no framing: the server relays every chunk as it read it, its notices have no line
/// ending, and lobby lines from the other protocols come as `N: T` without one. What makes a
/// line findable is the stamp: its magic starts it and every lobby text of a run has the same
/// length, `text_bytes`.
pub fn next_room_item(
    buf: &mut BytesMut,
    stage: RoomStage,
    text_bytes: usize,
) -> Result<Option<RoomItem>, String> {
    match stage {
        RoomStage::Prompt => {
            let have = buf.len().min(PROMPT.len());
            if buf[..have] != PROMPT[..have] {
                return Err(format!(
                    "expected `alias?` from the server, got {:?}",
                    String::from_utf8_lossy(&buf[..buf.len().min(64)])
                ));
            }
            if have < PROMPT.len() {
                return Ok(None);
            }
            buf.advance(PROMPT.len());
            Ok(Some(RoomItem::Prompt))
        }
        RoomStage::Greeting => match find(buf, GREETING) {
            Some(at) => {
                buf.advance(at + GREETING.len());
                Ok(Some(RoomItem::Greeting))
            }
            None => {
                trim(buf);
                Ok(None)
            }
        },
        RoomStage::Lines => match find(buf, &FORMAT.magic) {
            Some(at) if buf.len() >= at + text_bytes => {
                let before = buf.split_to(at).freeze();
                let text = buf.split_to(text_bytes).freeze();
                Ok(Some(RoomItem::Line { before, text }))
            }
            Some(_) => Ok(None),
            None => {
                trim(buf);
                Ok(None)
            }
        },
    }
}

/// Cuts a stretch without what is looked for down to its end.
fn trim(buf: &mut BytesMut) {
    if buf.len() > KEEP_BYTES {
        buf.advance(buf.len() - KEEP_BYTES);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `before` (the bytes ahead of a stamp in a ROOM stream) ends with `<name>: `.
pub fn names_sender(before: &[u8], name: &[u8]) -> bool {
    before.len() >= name.len() + 2
        && before.ends_with(b": ")
        && &before[before.len() - 2 - name.len()..before.len() - 2] == name
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u32 = 0xdead_beef;

    fn stamp_text(sender: u32, seq: u32, len: usize) -> Vec<u8> {
        let mut text = vec![0u8; len];
        FORMAT
            .write(
                &mut text,
                &Stamp {
                    run_id: RUN,
                    sender,
                    seq,
                    intended_us: 1_000 + u64::from(seq),
                },
            )
            .unwrap();
        text
    }

    #[test]
    fn names_are_distinct_per_protocol_and_run_and_alphanumeric() {
        let names = [
            member_name(Kind::Room, RUN, 0),
            member_name(Kind::Matou, RUN, 0),
            member_name(Kind::Ccm, RUN, 0),
            member_name(Kind::Ocm, RUN, 0),
            member_name(Kind::Ccm, RUN + 1, 0),
        ];
        assert_eq!(names[1], "lymdeadbeef00001");
        for (i, a) in names.iter().enumerate() {
            assert_eq!(a.len(), 16);
            assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert!(!a.starts_with("lg") && !a.starts_with("lc"));
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(member_name(Kind::Room, RUN, 99_998), "lyrdeadbeef99999");
    }

    #[test]
    fn the_stamp_survives_as_printable_text_and_refuses_what_matou_cannot_carry() {
        let text = stamp_text(7, 3, 64);
        assert!(text.iter().all(u8::is_ascii_graphic));
        match FORMAT.read(&text, RUN) {
            Read::Ours(stamp) => assert_eq!((stamp.sender, stamp.seq), (7, 3)),
            other => panic!("{other:?}"),
        }
        let mut long = vec![0u8; MESSAGE_BYTES_MAX + 1];
        assert!(FORMAT
            .write(
                &mut long,
                &Stamp {
                    run_id: RUN,
                    sender: 0,
                    seq: 0,
                    intended_us: 0
                }
            )
            .is_err());
        // The other scenarios' stamps are not the lobby's.
        assert_eq!(crate::matou::stamp::read(&text, RUN), Read::Foreign);
    }

    #[test]
    fn room_handshake_then_glued_lines_whatever_the_split() {
        let a = stamp_text(1, 0, 60);
        let b = stamp_text(2, 0, 60);
        let c = stamp_text(0, 0, 60);
        // The prompt, a notice, the greeting, then: a line from MATOU (no line ending), a ROOM
        // echo (`alias: text\n`), a presence notice, a line from CCM.
        let mut stream = b"alias?".to_vec();
        stream.extend_from_slice(b"b'lyr' esta conectado ao chatVoce esta conectado ao servidor!");
        stream.extend_from_slice(b"lymdeadbeef00001: ");
        stream.extend_from_slice(&a);
        stream.extend_from_slice(b"lyrdeadbeef00001: ");
        stream.extend_from_slice(&c);
        stream.extend_from_slice(b"\nb'lycdeadbeef00002' esta conectado ao chat");
        stream.extend_from_slice(b"lycdeadbeef00001: ");
        stream.extend_from_slice(&b);
        for split in [1, 5, 7, 40, 90, 130, stream.len()] {
            let mut buf = BytesMut::new();
            let mut stage = RoomStage::Prompt;
            let mut items = Vec::new();
            for piece in stream.chunks(split) {
                buf.extend_from_slice(piece);
                while let Some(item) = next_room_item(&mut buf, stage, 60).unwrap() {
                    stage = match item {
                        RoomItem::Prompt => RoomStage::Greeting,
                        RoomItem::Greeting | RoomItem::Line { .. } => RoomStage::Lines,
                    };
                    items.push(item);
                }
            }
            assert_eq!(items.len(), 5, "split {split}");
            assert_eq!(items[0], RoomItem::Prompt);
            assert_eq!(items[1], RoomItem::Greeting);
            let lines: Vec<(Bytes, Bytes)> = items[2..]
                .iter()
                .map(|item| match item {
                    RoomItem::Line { before, text } => (before.clone(), text.clone()),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(&lines[0].1[..], &a[..]);
            assert!(names_sender(&lines[0].0, b"lymdeadbeef00001"));
            assert_eq!(&lines[1].1[..], &c[..]);
            assert!(names_sender(&lines[1].0, b"lyrdeadbeef00001"));
            assert!(!names_sender(&lines[1].0, b"lymdeadbeef00001"));
            assert_eq!(&lines[2].1[..], &b[..]);
            assert!(lines[2].0.ends_with(b"chatlycdeadbeef00001: "));
            assert!(names_sender(&lines[2].0, b"lycdeadbeef00001"));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_room_server_that_does_not_prompt_is_refused() {
        let mut buf = BytesMut::from(&b"hello"[..]);
        assert!(next_room_item(&mut buf, RoomStage::Prompt, 60).is_err());
        let mut buf = BytesMut::from(&b"ali"[..]);
        assert_eq!(next_room_item(&mut buf, RoomStage::Prompt, 60), Ok(None));
    }

    #[test]
    fn a_long_stretch_without_a_stamp_keeps_only_its_end() {
        let mut buf = BytesMut::from(&vec![b'x'; 100_000][..]);
        buf.extend_from_slice(b"name: ");
        assert_eq!(next_room_item(&mut buf, RoomStage::Lines, 60), Ok(None));
        assert_eq!(buf.len(), KEEP_BYTES);
        assert!(buf.ends_with(b"name: "));
    }
}
