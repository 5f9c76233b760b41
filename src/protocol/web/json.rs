//! WEB's messages: JSON objects, one per text message (docs/PROTOCOLS.md, "WEB"). Parsed and
//! escaped by `serde_json`; every server message comes out as a whole text frame, ready to
//! queue (and to share between recipients).

use bytes::Bytes;
use serde_json::{Map, Value};

use super::codec;
use crate::hub::{PresenceKind, ProtocolKind};

/// What a client may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Signin {
        name: String,
    },
    Say {
        text: String,
    },
    Direct {
        to: String,
        text: String,
        id: Option<u64>,
    },
    Ping,
}

/// A message that is not one of [`ClientMessage`]: not JSON, not an object, an unknown
/// `type`, a field missing or of the wrong kind. `id` is the request's, when it had a usable
/// one, so that the answer can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRequest {
    pub id: Option<u64>,
}

/// The largest `id` a page can hold exactly (a JavaScript number: 2^53).
pub const ID_MAX: u64 = 1 << 53;

pub fn parse(text: &[u8]) -> Result<ClientMessage, BadRequest> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(text) else {
        return Err(BadRequest { id: None });
    };
    let id = match object.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) if id <= ID_MAX => Ok(Some(id)),
            _ => Err(()),
        },
        Some(_) => Err(()),
    };
    let Ok(id) = id else {
        return Err(BadRequest { id: None });
    };
    let bad = BadRequest { id };
    let string = |field: &str| match object.get(field) {
        Some(Value::String(value)) => Ok(value.clone()),
        _ => Err(bad),
    };
    match object.get("type").and_then(Value::as_str) {
        Some("signin") => Ok(ClientMessage::Signin {
            name: string("name")?,
        }),
        Some("say") => Ok(ClientMessage::Say {
            text: string("text")?,
        }),
        Some("direct") => Ok(ClientMessage::Direct {
            to: string("to")?,
            text: string("text")?,
            id,
        }),
        Some("ping") => Ok(ClientMessage::Ping),
        _ => Err(bad),
    }
}

/// A string field from bytes that may not be UTF-8 (ROOM carries any bytes): U+FFFD in place
/// of what is not.
fn string(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

fn frame(fields: Vec<(&str, Value)>) -> Bytes {
    let object: Map<String, Value> = fields
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    codec::text(Value::Object(object).to_string().as_bytes())
}

fn kind(value: &str) -> Value {
    Value::String(value.to_string())
}

/// `{"type":"lobby","from":N,"protocol":P,"text":T}`.
pub fn lobby(origin: ProtocolKind, sender: &[u8], text: &[u8]) -> Bytes {
    frame(vec![
        ("type", kind("lobby")),
        ("from", string(sender)),
        ("protocol", kind(origin.label())),
        ("text", string(text)),
    ])
}

/// `{"type":"direct","from":N,"protocol":P,"text":T}`.
pub fn direct(origin: ProtocolKind, sender: &[u8], text: &[u8]) -> Bytes {
    frame(vec![
        ("type", kind("direct")),
        ("from", string(sender)),
        ("protocol", kind(origin.label())),
        ("text", string(text)),
    ])
}

/// `{"type":"joined"|"left","name":N,"protocol":P}`.
pub fn presence(origin: ProtocolKind, name: &[u8], presence: PresenceKind) -> Bytes {
    let word = match presence {
        PresenceKind::Entered => "joined",
        PresenceKind::Left => "left",
    };
    frame(vec![
        ("type", kind(word)),
        ("name", string(name)),
        ("protocol", kind(origin.label())),
    ])
}

/// `{"type":"welcome","name":N,"present":[{"name":..,"protocol":..},..]}`.
pub fn welcome(name: &[u8], present: &[(ProtocolKind, Bytes)]) -> Bytes {
    let present = present
        .iter()
        .map(|(protocol, name)| {
            let mut member = Map::new();
            member.insert("name".to_string(), string(name));
            member.insert("protocol".to_string(), kind(protocol.label()));
            Value::Object(member)
        })
        .collect();
    frame(vec![
        ("type", kind("welcome")),
        ("name", string(name)),
        ("present", Value::Array(present)),
    ])
}

/// `{"type":"refused","reason":R}`.
pub fn refused(reason: &str) -> Bytes {
    frame(vec![("type", kind("refused")), ("reason", kind(reason))])
}

/// `{"type":"sent","id":I,"status":S}` (`id` left out when the request had none).
pub fn sent(id: Option<u64>, status: &str) -> Bytes {
    let mut fields = vec![("type", kind("sent"))];
    if let Some(id) = id {
        fields.push(("id", Value::from(id)));
    }
    fields.push(("status", kind(status)));
    frame(fields)
}

/// `{"type":"error","id":I,"reason":R}` (`id` left out when the request had none).
pub fn error(id: Option<u64>, reason: &str) -> Bytes {
    let mut fields = vec![("type", kind("error"))];
    if let Some(id) = id {
        fields.push(("id", Value::from(id)));
    }
    fields.push(("reason", kind(reason)));
    frame(fields)
}

pub fn pong() -> Bytes {
    frame(vec![("type", kind("pong"))])
}
