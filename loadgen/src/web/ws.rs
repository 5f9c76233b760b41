//! The client side of WEB's wire (docs/PROTOCOLS.md, "WEB: the browser front door"): the HTTP
//! upgrade, masked client frames, and a reader of the server's (unmasked) frames that hands
//! over each JSON message as an [`Event`]. Sans-io: the caller owns the socket and the output.
//!
//! The server's codec (`switchboard::protocol::web::codec`) writes the client's frames here
//! (`encode_client`, `unmask`), but its reader takes masked client frames only: the reader of
//! the server's frames is this module's.
//!
//! The upgrade uses the RFC 6455 sample key, whose accept value is known
//! ([`ACCEPT`]): the loadgen checks the server's SHA-1 without computing one. A browser picks a
//! random key so that a caching proxy never answers from its cache; on loopback there is none.

use std::borrow::Cow;

use serde::Deserialize;
use switchboard::protocol::web::codec;

/// The RFC 6455 (section 1.3) sample `Sec-WebSocket-Key`, and the `Sec-WebSocket-Accept` a
/// server must answer it with.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The longest answer head to the upgrade the reader waits for.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// The largest server message (all its fragments) the reader accepts: the server's texts are
/// at most a few KiB (`--web-message-bytes-max` bounds what it accepts, its lobby texts are
/// smaller still), the `welcome` with its member list the largest.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

const OPCODE_CONTINUATION: u8 = 0x0;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;
const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;

/// The upgrade request for the WebSocket at `/ws` on `host` (`127.0.0.1:8080`), with the
/// `Origin` a page served from there would send (the server checks it against the `Host`).
pub fn upgrade_request(host: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// The head of a final masked client frame (with its masking key, zero until [`seal`] sets
/// it) for `opcode` and a payload of `payload_bytes`.
pub fn client_head(opcode: u8, payload_bytes: usize) -> Vec<u8> {
    let mut frame = codec::encode_client(true, opcode, &vec![0; payload_bytes], [0; 4]);
    frame.truncate(frame.len() - payload_bytes);
    frame
}

/// Sets the masking key of the frame in `frame` (its head `head` bytes long, then the plain
/// payload) and masks the payload in place.
pub fn seal(frame: &mut [u8], head: usize, key: [u8; 4]) {
    frame[head - 4..head].copy_from_slice(&key);
    codec::unmask(&mut frame[head..], key);
}

/// A whole final masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    codec::encode_client(true, opcode, payload, key)
}

/// The text frame signing `name` in.
pub fn signin(name: &str, key: [u8; 4]) -> Vec<u8> {
    let json = format!(r#"{{"type":"signin","name":"{name}"}}"#);
    client_frame(OPCODE_TEXT, json.as_bytes(), key)
}

/// The pong answering a ping's `payload`.
pub fn pong(payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    client_frame(OPCODE_PONG, payload, key)
}

/// The JSON that opens a lobby message, its text next (one that needs no escaping), then
/// `"}`.
pub const SAY_OPEN: &[u8] = br#"{"type":"say","text":""#;
pub const TEXT: u8 = OPCODE_TEXT;

/// Masking keys: a xorshift per connection, seeded apart. The server must unmask whatever the
/// key; varying it makes sure it does.
#[derive(Clone, Debug)]
pub struct Keys(u32);

impl Keys {
    pub fn new(seed: u32) -> Keys {
        Keys(seed.wrapping_mul(0x9E37_79B9) | 1)
    }
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_le_bytes()
    }
}

/// One server message, as the reader hands it over.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The upgrade was answered `101` with the right accept value.
    Upgraded,
    Welcome,
    Refused(&'a str),
    Lobby {
        from: &'a str,
        protocol: &'a str,
        text: &'a str,
    },
    Direct {
        from: &'a str,
        text: &'a str,
    },
    Joined,
    Left,
    Sent,
    /// `error`, with its reason.
    Error(&'a str),
    Pong,
    /// A ping frame: answer it with a pong of this payload.
    Ping(&'a [u8]),
    /// A close frame, with its status code (1005 when it had none).
    Closed(u16),
}

/// The server's JSON message: every field any type has, unknown ones ignored.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    protocol: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

/// Reads one connection: the upgrade's answer, then frames.
#[derive(Debug, Default)]
pub struct Reader {
    upgraded: bool,
    /// Bytes of an unfinished head or frame, kept until the rest comes.
    pending: Vec<u8>,
    /// A fragmented text message being reassembled.
    fragments: Option<Vec<u8>>,
    failed: Option<String>,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    /// A reader past the upgrade: frames only.
    pub fn upgraded() -> Reader {
        Reader {
            upgraded: true,
            ..Reader::default()
        }
    }

    /// Reads `input`, calling `sink` for each event. After the first error every call returns
    /// it: what follows cannot be framed.
    pub fn feed(&mut self, input: &[u8], mut sink: impl FnMut(Event<'_>)) -> Result<(), String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let result = if self.pending.is_empty() {
            let used = self.take(input, &mut sink);
            used.map(|used| self.pending.extend_from_slice(&input[used..]))
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(input);
            let used = self.take(&buf, &mut sink);
            used.map(|used| {
                buf.drain(..used);
                self.pending = buf;
            })
        };
        if let Err(why) = &result {
            self.failed = Some(why.clone());
        }
        result
    }

    /// Handles everything whole at the front of `buf`; how many bytes that was.
    fn take(&mut self, buf: &[u8], sink: &mut impl FnMut(Event<'_>)) -> Result<usize, String> {
        let mut at = 0;
        if !self.upgraded {
            let Some(end) = find(buf, b"\r\n\r\n") else {
                if buf.len() > HEAD_BYTES_MAX {
                    return Err(format!(
                        "an upgrade answer head over {HEAD_BYTES_MAX} bytes"
                    ));
                }
                return Ok(0);
            };
            check_upgrade(&buf[..end])?;
            self.upgraded = true;
            sink(Event::Upgraded);
            at = end + 4;
        }
        while let Some((frame, used)) = Frame::parse(&buf[at..])? {
            at += used;
            self.on_frame(frame, sink)?;
        }
        Ok(at)
    }

    fn on_frame(
        &mut self,
        frame: Frame<'_>,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<(), String> {
        match (frame.opcode, frame.fin) {
            (OPCODE_TEXT, true) if self.fragments.is_none() => message(frame.payload, sink),
            (OPCODE_TEXT, false) if self.fragments.is_none() => {
                self.fragments = Some(frame.payload.to_vec());
                Ok(())
            }
            (OPCODE_CONTINUATION, fin) => {
                let Some(whole) = self.fragments.as_mut() else {
                    return Err("a continuation frame without a message to continue".into());
                };
                whole.extend_from_slice(frame.payload);
                if whole.len() > MESSAGE_BYTES_MAX {
                    return Err(format!("a message over {MESSAGE_BYTES_MAX} bytes"));
                }
                if fin {
                    let whole = self.fragments.take().unwrap_or_default();
                    message(&whole, sink)?;
                }
                Ok(())
            }
            (OPCODE_TEXT, _) => Err("a new message inside a fragmented one".into()),
            (OPCODE_BINARY, _) => Err("a binary frame (the server sends text only)".into()),
            (OPCODE_CLOSE, _) => {
                let code = match frame.payload {
                    [a, b, ..] => u16::from_be_bytes([*a, *b]),
                    _ => 1005,
                };
                sink(Event::Closed(code));
                Ok(())
            }
            (OPCODE_PING, _) => {
                sink(Event::Ping(frame.payload));
                Ok(())
            }
            (OPCODE_PONG, _) => Ok(()),
            (opcode, _) => Err(format!("unknown opcode {opcode:#x}")),
        }
    }
}

/// The upgrade answer's head (without its blank line) is a `101` with the expected accept.
fn check_upgrade(head: &[u8]) -> Result<(), String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("the upgrade was answered {status:?}"));
    }
    let accept = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim())
    });
    if accept != Some(ACCEPT) {
        return Err(format!(
            "Sec-WebSocket-Accept {accept:?}, expected {ACCEPT:?}"
        ));
    }
    Ok(())
}

/// One whole text message: its JSON as an event.
fn message(json: &[u8], sink: &mut impl FnMut(Event<'_>)) -> Result<(), String> {
    let m: Incoming<'_> =
        serde_json::from_slice(json).map_err(|e| format!("not a JSON message ({e})"))?;
    let field = |value: &'_ Option<Cow<'_, str>>, name: &str| -> Result<(), String> {
        match value {
            Some(_) => Ok(()),
            None => Err(format!("a {:?} message without {name:?}", m.kind)),
        }
    };
    match &*m.kind {
        "welcome" => sink(Event::Welcome),
        "refused" => sink(Event::Refused(m.reason.as_deref().unwrap_or_default())),
        "lobby" => {
            field(&m.from, "from")?;
            field(&m.text, "text")?;
            sink(Event::Lobby {
                from: m.from.as_deref().unwrap_or_default(),
                protocol: m.protocol.as_deref().unwrap_or_default(),
                text: m.text.as_deref().unwrap_or_default(),
            });
        }
        "direct" => sink(Event::Direct {
            from: m.from.as_deref().unwrap_or_default(),
            text: m.text.as_deref().unwrap_or_default(),
        }),
        "joined" => sink(Event::Joined),
        "left" => sink(Event::Left),
        "sent" => sink(Event::Sent),
        "error" => sink(Event::Error(m.reason.as_deref().unwrap_or_default())),
        "pong" => sink(Event::Pong),
        other => return Err(format!("an unknown message type {other:?}")),
    }
    Ok(())
}

/// A server frame, its payload where it lies (the server does not mask).
struct Frame<'a> {
    fin: bool,
    opcode: u8,
    payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The whole frame at the front of `buf` and its length, or `None` until it is all there.
    fn parse(buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, String> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err("a frame with reserved bits set (no extension was agreed)".into());
        }
        if b1 & MASKED != 0 {
            return Err("a masked server frame".into());
        }
        let (fin, opcode) = (b0 & FIN != 0, b0 & 0x0F);
        let (len, head) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if opcode >= OPCODE_CLOSE && (!fin || len > 125) {
            return Err("a control frame fragmented or over 125 bytes".into());
        }
        if len > MESSAGE_BYTES_MAX as u64 {
            return Err(format!("a frame of {len} bytes, over {MESSAGE_BYTES_MAX}"));
        }
        let end = head + len as usize;
        let Some(payload) = buf.get(head..end) else {
            return Ok(None);
        };
        Ok(Some((
            Frame {
                fin,
                opcode,
                payload,
            },
            end,
        )))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
