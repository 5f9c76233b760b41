//! Hub events written in each protocol's wire form, and each protocol's wire read back into
//! hub events ("where N and T come from", contract rule 2).
//!
//! Every rendering goes through the protocol's own codec, so a hub delivery is byte for byte
//! what that protocol's service would have written. The checks here are the recipient
//! protocol's limits (rule 5): a form a recipient's protocol could not carry is not rendered.

use bytes::{BufMut, Bytes, BytesMut};

use super::event::{LobbyMessage, PresenceKind, ProtocolKind};
use crate::protocol::bin24::codec::{self as bin24, Name};
use crate::protocol::ccm::codec::{self as ccm, Message, MessageType};
use crate::protocol::ccm::Reason;
use crate::protocol::matou::codec as matou;
use crate::protocol::room::codec as room;

/// The recipients' limits a rendering must respect (contract rule 5). The defaults are the
/// protocols' own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormLimits {
    /// MATOU's public message limit (its section, rule 2: 512 bytes, no control characters).
    pub matou_message_bytes_max: usize,
    /// MATOU's framing limit for any string (a sender's name in PUBLIC_BROADCAST or a notify).
    pub matou_string_bytes_max: usize,
    /// OCM's server-to-client text limit (its section, rule 4).
    pub ocm_text_bytes_max: usize,
    /// BIN24's sending limits (`--bin24-sender-bytes-per-s-max`, per recipient
    /// `--bin24-pair-bytes-per-s-max`), which a CCM user's messages to BIN24 users obey as a
    /// BIN24 sender's frames do. 0: no limit.
    pub bin24_sender_bytes_per_s_max: u64,
    pub bin24_pair_bytes_per_s_max: u64,
}

impl Default for FormLimits {
    fn default() -> Self {
        FormLimits {
            matou_message_bytes_max: 512,
            matou_string_bytes_max: matou::Limits::default().string_bytes_max,
            ocm_text_bytes_max: crate::protocol::ocm::codec::TEXT_BYTES_MAX,
            bin24_sender_bytes_per_s_max: 8 * 1024 * 1024,
            bin24_pair_bytes_per_s_max: 2 * 1024 * 1024,
        }
    }
}

/// `N: T`: what a ROOM member receives (the bytes a ROOM client sends itself), and the datagram
/// an OCM lobby member receives.
pub fn line(sender: &[u8], text: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(sender.len() + 2 + text.len());
    out.put_slice(sender);
    out.put_slice(b": ");
    out.put_slice(text);
    out.freeze()
}

/// The OCM datagram for a lobby message, if OCM can carry it: UTF-8 text of at most
/// [`FormLimits::ocm_text_bytes_max`] bytes. `line` is [`line()`] of N and T, shared with
/// ROOM's form.
pub fn ocm_line_fits(line: &[u8], limits: &FormLimits) -> bool {
    line.len() <= limits.ocm_text_bytes_max && std::str::from_utf8(line).is_ok()
}

/// PUBLIC_BROADCAST (5) with username N and message T, if MATOU can carry it: N UTF-8 within
/// the string limit; T what MATOU's own rule 2 admits (UTF-8, at most 512 bytes, no control
/// character).
pub fn matou_broadcast(sender: &[u8], text: &[u8], limits: &FormLimits) -> Option<Bytes> {
    let text_ok = text.len() <= limits.matou_message_bytes_max
        && std::str::from_utf8(text).is_ok_and(|t| !t.chars().any(char::is_control));
    (text_ok && matou_name_fits(sender, limits)).then(|| matou::public_broadcast(sender, text))
}

/// CONNECT_NOTIFY (3) or SIGN_OUT_NOTIFY (16) with N, if MATOU can carry N.
pub fn matou_presence(name: &[u8], kind: PresenceKind, limits: &FormLimits) -> Option<Bytes> {
    if !matou_name_fits(name, limits) {
        return None;
    }
    Some(match kind {
        PresenceKind::Entered => matou::connect_notify(name),
        PresenceKind::Left => matou::sign_out_notify(name),
    })
}

fn matou_name_fits(name: &[u8], limits: &FormLimits) -> bool {
    name.len() <= limits.matou_string_bytes_max && std::str::from_utf8(name).is_ok()
}

/// ROOM's notices, `b'N' esta conectado ao chat` / `b'N' acabou de sair do chat!`, with N
/// written as ROOM writes an alias (CPython's bytes repr). Any bytes can be written so.
pub fn room_presence(name: &[u8], kind: PresenceKind) -> Bytes {
    let repr = room::bytes_repr(name);
    match kind {
        PresenceKind::Entered => room::join_notice(&repr),
        PresenceKind::Left => room::leave_notice(&repr),
    }
}

/// `CCM\1.0 Text`, `Sender: N`, `Addressee: *`, `Message-Encoding: utf-8`, `Content-Length`,
/// content T; if CCM can carry it: T UTF-8 (the encoding it declares) within CCM's content
/// limit, and N UTF-8 (a CCM header is UTF-8, or the client must drop the connection).
pub fn ccm_lobby(sender: &[u8], text: &[u8]) -> Option<Bytes> {
    let fits = text.len() <= ccm::CONTENT_BYTES_MAX
        && std::str::from_utf8(text).is_ok()
        && std::str::from_utf8(sender).is_ok();
    let bytes = fits.then(|| ccm_text(sender, b"*", text))?;
    (bytes.len() - text.len() <= ccm::HEADER_BYTES_MAX).then_some(bytes)
}

/// A `Text` as CCM's own service delivers one: Sender, Addressee, Message-Encoding utf-8,
/// Content-Length, content. The codec replaces CR and LF in a value, so no name can forge an
/// attribute.
pub fn ccm_text(sender: &[u8], addressee: &[u8], content: &[u8]) -> Bytes {
    ccm::encode(
        MessageType::Text.as_str(),
        &[
            ("Sender", sender),
            ("Addressee", addressee),
            ("Message-Encoding", b"utf-8"),
        ],
        content,
    )
}

/// A CCM `Error` with `Reason: <code>` and a sentence, as CCM's own service answers.
pub fn ccm_error(reason: Reason, sentence: &str) -> Bytes {
    ccm::encode(
        MessageType::Error.as_str(),
        &[("Reason", reason.code().as_bytes())],
        sentence.as_bytes(),
    )
}

/// BIN24's answer "200" for `message_id`: SRC = the recipient that was written to, DST = the
/// sender, as a BIN24 recipient's own answer names them.
pub fn bin24_delivered(message_id: u32, recipient: Name, sender: Name) -> Bytes {
    bin24::encode_answer(message_id, recipient, sender, bin24::ANSWER_DELIVERED)
}

impl LobbyMessage {
    /// ROOM: N = the member's alias; T = the chunk without a leading `<alias>: ` (the original
    /// client sends `alias: text`), else the whole chunk; then without one trailing line
    /// ending (`\r\n` or `\n`): in ROOM it is the terminal's framing, and MATOU forbids
    /// control characters in a message. T is a slice of the chunk, no copy.
    pub fn from_room(alias: &Bytes, chunk: &Bytes) -> LobbyMessage {
        let prefix = alias.len() + 2;
        let mut text = if chunk.len() >= prefix
            && chunk.starts_with(alias)
            && &chunk[alias.len()..prefix] == b": "
        {
            chunk.slice(prefix..)
        } else {
            chunk.clone()
        };
        let line_ending = if text.ends_with(b"\r\n") {
            2
        } else {
            usize::from(text.ends_with(b"\n"))
        };
        text.truncate(text.len() - line_ending);
        LobbyMessage {
            origin: ProtocolKind::Room,
            sender: alias.clone(),
            text,
        }
    }

    /// MATOU: N = the signed-in username; T = the message of a PUBLIC_MESSAGE (4) that MATOU's
    /// own rules accepted.
    pub fn from_matou(username: &Bytes, message: &Bytes) -> LobbyMessage {
        LobbyMessage {
            origin: ProtocolKind::Matou,
            sender: username.clone(),
            text: message.clone(),
        }
    }

    /// CCM: a `Text` with `Addressee: *` from the identified user `name`; T = its content as
    /// UTF-8 text (decoded by its Message-Encoding; UTF-8 content is shared, not copied).
    /// `Ok(None)`: not a lobby message (another type, or a named addressee). An error: the
    /// content is not valid in its encoding, or names an encoding CCM does not know.
    pub fn from_ccm(
        name: &Bytes,
        message: &Message,
    ) -> Result<Option<LobbyMessage>, ccm::TextError> {
        let to_all = message
            .attribute("Addressee")
            .is_some_and(|addressee| &addressee[..] == b"*");
        if message.message_type() != Some(MessageType::Text) || !to_all {
            return Ok(None);
        }
        let encoding = message.attribute("Message-Encoding").map(|v| &v[..]);
        let is_utf8 = encoding.is_none_or(|name| {
            let name = name.trim_ascii();
            name.eq_ignore_ascii_case(b"utf-8") || name.eq_ignore_ascii_case(b"utf8")
        });
        let content = &message.content;
        let text = if is_utf8
            && !content.starts_with(b"\xEF\xBB\xBF")
            && std::str::from_utf8(content).is_ok()
        {
            content.clone()
        } else {
            Bytes::from(ccm::decode_text(content, encoding)?.into_bytes())
        };
        Ok(Some(LobbyMessage {
            origin: ProtocolKind::Ccm,
            sender: name.clone(),
            text,
        }))
    }

    /// OCM: a chat datagram's message from member `name` to `room`; a lobby message only when
    /// `room` is the lobby room (`--lobby-ocm-room`) and the message is not `exit`.
    pub fn from_ocm(
        lobby_room: &str,
        room: &[u8],
        name: &str,
        message: &[u8],
    ) -> Option<LobbyMessage> {
        if room != lobby_room.as_bytes() || message == crate::protocol::ocm::codec::EXIT_MESSAGE {
            return None;
        }
        Some(LobbyMessage {
            origin: ProtocolKind::Ocm,
            sender: Bytes::copy_from_slice(name.as_bytes()),
            text: Bytes::copy_from_slice(message),
        })
    }
}
