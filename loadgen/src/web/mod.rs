//! The WEB scenario (`loadgen web`): many WebSocket clients in chatd's lobby
//! (docs/PROTOCOLS.md, "WEB: the browser front door").
//!
//! It is the ROOM fan-out ([`crate::room`], [`room::Wire::Web`]) over WEB's wire, as RESP is
//! over Redis's: every member upgrades `GET /ws` (with the `Origin` its page would send), signs
//! in with `{"type":"signin"}` once the server answered `101`, and is joined at its `welcome`;
//! senders send the same stamped message as ROOM's, without its newline (WEB's text allows no
//! control character) and with its own record marker ([`seal_say`]), as the `text` of a masked
//! `say` frame; every member (senders included: the server echoes a `say` to its sender)
//! receives it as a `lobby` message, and the scanner reads the text as ROOM's message again
//! ([`scan_text`]). So latency (from the intended time, no
//! coordinated omission), losses, duplicates and the report are ROOM's, measured by the same
//! code. Here: the client side of the wire ([`ws`]), the names, the message's frame, the
//! scenario's marker for the registry and the mix, and churn's sign-in.
//!
//! chatd limits a web user to `--web-messages-per-s-max` messages per second (20 by default):
//! each sender sends `--rate / --senders` per second (`--rate` defaults to 100 here, 10/s for
//! each of the 10 default senders), so a run above that needs the flag raised on chatd (or more
//! senders), and says so before starting ([`args::over_chatd_limit`]); the server's
//! `error rate-limited` answers are counted as protocol errors, and the messages as lost.

pub mod args;
pub mod ws;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use crate::record::{self, NoticeCounts, ALIAS_PREFIX_LEN};
use crate::room::{self, Framing};

/// What a WEB member keeps beside ROOM's: its frame reader, its masking keys, and the notices
/// (`welcome`, `joined`, `left`) it got.
#[derive(Debug)]
pub struct Conn {
    pub reader: ws::Reader,
    pub keys: ws::Keys,
    pub notices: NoticeCounts,
}

impl Conn {
    pub fn new(index: u32) -> Conn {
        Conn {
            reader: ws::Reader::new(),
            keys: ws::Keys::new(index),
            notices: NoticeCounts::default(),
        }
    }
}

/// A member's sign-in name: its ROOM alias with `lw` for `lg` (`lw000042`), so a ROOM member
/// of the same number in the same switchboard never holds it.
pub fn name(alias: &[u8; 8]) -> String {
    let mut name = *alias;
    name[1] = b'w';
    String::from_utf8_lossy(&name).into_owned()
}

/// WEB's framing of the fan-out: the upgrade as the hello; a message is the head of a masked
/// text frame, `{"type":"say","text":"`, the ROOM message whose newline becomes the closing
/// quote ([`seal_say`]), and `}`.
pub fn framing(target: SocketAddr, message_bytes: usize) -> Framing {
    let mut message_prefix = ws::client_head(ws::TEXT, ws::SAY_OPEN.len() + message_bytes + 1);
    let head = message_prefix.len();
    message_prefix.extend_from_slice(ws::SAY_OPEN);
    Framing {
        hello: Some(ws::upgrade_request(&target.to_string())),
        message_prefix,
        message_suffix: b"}",
        masked_head: Some(head),
    }
}

/// Where WEB's texts differ from ROOM's messages: the record's marker `@@SB:` is `@@WB:` (and
/// put back before the scan), so a ROOM member sharing the lobby (the mix's ROOM scenario)
/// never takes a WEB record for one of its own, nor a WEB member a ROOM record.
const MARKER_AT: usize = ALIAS_PREFIX_LEN + 2;
const WEB_MARKER: &[u8] = b"@@WB:";

/// Finishes a `say` frame written from [`framing`] in place: the record's marker becomes
/// WEB's, the message's last byte (the record's newline) the text's closing quote; then the
/// payload is masked with the connection's next key.
pub fn seal_say(frame: &mut [u8], head: usize, message_bytes: usize, keys: &mut ws::Keys) {
    let text_at = head + ws::SAY_OPEN.len();
    frame[text_at + MARKER_AT] = WEB_MARKER[2];
    frame[text_at + message_bytes - 1] = b'"';
    ws::seal(frame, head, keys.next_key());
}

/// Hands a lobby `text` to `scan` as the ROOM message it was made from (marker and newline
/// put back, in pieces, nothing copied); false, and nothing handed, when it is not a WEB
/// record's text (another protocol's lobby message).
pub fn scan_text(text: &[u8], mut scan: impl FnMut(&[u8])) -> bool {
    let marker = ALIAS_PREFIX_LEN..ALIAS_PREFIX_LEN + WEB_MARKER.len();
    if text.get(marker) != Some(WEB_MARKER) {
        return false;
    }
    scan(&text[..MARKER_AT]);
    scan(&record::MARKER[2..3]);
    scan(&text[MARKER_AT + 1..]);
    scan(b"\n");
    true
}

/// The scenario as the registry lists it: ROOM's fan-out over WEB's wire.
pub type Web = room::Fanout<true>;

/// WEB's sign-in for `loadgen churn`: the upgrade, then `signin`, proven by the `welcome`.
pub mod churn {
    use super::ws::{self, Event};
    use crate::churn::{find, SignIn, Stage, Step};

    pub static SIGN_IN: SignIn = SignIn {
        // Without `Origin`, as a client that is not a browser: the server checks it only when
        // it is there, and churn does not know the address it connects to here.
        hello: |_| (UPGRADE.to_vec(), Stage::Prompt),
        answer,
        frame: |_| {
            let say = br#"{"type":"say","text":"a message cut short"}"#;
            ws::client_frame(ws::TEXT, say, [1, 2, 3, 4])
        },
    };

    pub(super) const UPGRADE: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    pub(super) fn answer(name: &str, stage: Stage, input: &[u8]) -> Step {
        match stage {
            Stage::Prompt => {
                let Some(end) = find(input, b"\r\n\r\n") else {
                    return Step::Wait;
                };
                let mut upgraded = false;
                let head = &input[..end + 4];
                match ws::Reader::new().feed(head, |e| upgraded |= e == Event::Upgraded) {
                    Ok(()) if upgraded => Step::Reply {
                        read: end + 4,
                        out: ws::signin(name, [5, 6, 7, 8]),
                        then: Stage::Answer,
                    },
                    _ => Step::Unexpected,
                }
            }
            Stage::Answer => {
                let (mut welcome, mut refused) = (false, false);
                let fed = ws::Reader::upgraded().feed(input, |event| match event {
                    Event::Welcome => welcome = true,
                    Event::Refused(_) | Event::Closed(_) => refused = true,
                    _ => {}
                });
                match (fed, welcome, refused) {
                    (Err(_), ..) | (_, _, true) => Step::Unexpected,
                    (_, true, _) => Step::SignedIn,
                    _ => Step::Wait,
                }
            }
            _ => Step::Stray,
        }
    }
}
