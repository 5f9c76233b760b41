//! JSON exactly as the original Python programs write it, and a small strict reader for the
//! two objects OCM exchanges. Depends on std only.
//!
//! Writing follows CPython's `json.dumps` with its defaults: separators `", "` and `": "`, and
//! `ensure_ascii`, so every character outside printable ASCII is a lowercase `\uXXXX` escape
//! (astral characters as a surrogate pair), with the short escapes `\" \\ \n \r \t \b \f`.
//! The original client compares nothing byte for byte, but the contract's vectors do, and
//! matching them is how we know the client parses what we send.
//!
//! Reading is RFC 8259 JSON (what `json.loads` accepts, minus its `NaN`/`Infinity`
//! extensions), parsed into a small tree and then checked for the expected shape. The two
//! failures are kept apart because the server treats them differently: a payload that is not
//! JSON at all is a plain user name, JSON of the wrong shape is a malformed request.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Deeper nesting is refused (as [`JsonError::Shape`]) rather than recursed into: the payload
/// is attacker-sized, the stack is not. No OCM object nests deeper than 2.
const DEPTH_MAX: usize = 128;

/// Appends `s` as `json.dumps(s)` writes it (quotes included).
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let push_unit = |out: &mut Vec<u8>, unit: u16| {
        out.extend_from_slice(b"\\u");
        for shift in [12, 8, 4, 0] {
            out.push(HEX[usize::from((unit >> shift) & 0xf)]);
        }
    };
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            // Printable ASCII, so the cast is lossless.
            ' '..='~' => out.push(c as u8),
            _ => {
                let mut units = [0u16; 2];
                for &unit in c.encode_utf16(&mut units).iter() {
                    push_unit(out, unit);
                }
            }
        }
    }
    out.push(b'"');
}

/// A TCRP answer body: `{"status": 202, "message": "...", "token": "..."}`, the token only
/// when given, keys in this order (the original's dict order).
pub fn encode_answer(status: u16, message: &str, token: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 6 * message.len());
    out.extend_from_slice(b"{\"status\": ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.extend_from_slice(b", \"message\": ");
    write_string(&mut out, message);
    if let Some(token) = token {
        out.extend_from_slice(b", \"token\": ");
        write_string(&mut out, token);
    }
    out.push(b'}');
    out
}

/// A TCRP request payload as the original client writes it:
/// `{"user_name": "<name>", "user_address": ["<ip>", <port>]}`.
pub fn encode_request(user_name: &str, user_address: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 6 * user_name.len());
    out.extend_from_slice(b"{\"user_name\": ");
    write_string(&mut out, user_name);
    out.extend_from_slice(b", \"user_address\": [");
    write_string(&mut out, &user_address.ip().to_string());
    out.extend_from_slice(b", ");
    out.extend_from_slice(user_address.port().to_string().as_bytes());
    out.extend_from_slice(b"]}");
    out
}

/// Why a text is not the object expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON at all; `offset` is the byte where parsing stopped.
    Syntax { offset: usize },
    /// JSON, but not the expected object (wrong type, missing key, bad address), or JSON this
    /// reader will not take (a lone surrogate, nesting over 128 levels).
    Shape(&'static str),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax { offset } => write!(f, "not JSON (at byte {offset})"),
            JsonError::Shape(what) => write!(f, "unexpected JSON: {what}"),
        }
    }
}

impl std::error::Error for JsonError {}

/// A TCRP request payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPayload {
    /// As sent; emptiness and length are the server's business.
    pub user_name: String,
    /// The client's UDP address. Its IP may be unspecified (a socket bound to all interfaces).
    pub user_address: SocketAddr,
}

/// Reads `{"user_name": "<name>", "user_address": ["<ip>", <port>]}`: keys in any order, other
/// keys ignored, the last of duplicate keys wins (as in Python). The address may also be the
/// 4-element form Python gives for an IPv6 socket (`[ip, port, flowinfo, scope_id]`). The port
/// must be an integer in 1..=65535.
pub fn parse_request(payload: &str) -> Result<RequestPayload, JsonError> {
    let Value::Object(members) = parse(payload)? else {
        return Err(JsonError::Shape("the request is not an object"));
    };
    let user_name = match last(&members, "user_name") {
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err(JsonError::Shape("user_name is not a string")),
        None => return Err(JsonError::Shape("no user_name")),
    };
    let address = match last(&members, "user_address") {
        Some(Value::Array(address)) => address,
        Some(_) => return Err(JsonError::Shape("user_address is not an array")),
        None => return Err(JsonError::Shape("no user_address")),
    };
    let (ip, port) = match address.as_slice() {
        [ip, port] => (ip, port),
        [ip, port, Value::Integer(Some(_)), Value::Integer(Some(_))] => (ip, port),
        _ => return Err(JsonError::Shape("user_address is not [ip, port]")),
    };
    let Value::String(ip) = ip else {
        return Err(JsonError::Shape("the address's ip is not a string"));
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| JsonError::Shape("the address's ip is not an IP address"))?;
    let port = match port {
        Value::Integer(Some(port)) => u16::try_from(*port).ok().filter(|&port| port != 0),
        _ => None,
    }
    .ok_or(JsonError::Shape("the address's port is not in 1..=65535"))?;
    Ok(RequestPayload {
        user_name,
        user_address: SocketAddr::new(ip, port),
    })
}

/// A TCRP answer body, for clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerPayload {
    pub status: i64,
    pub message: String,
    pub token: Option<String>,
}

/// Reads `{"status": <int>, "message": "<text>"}` with an optional `"token": "<text>"`.
pub fn parse_answer(json: &str) -> Result<AnswerPayload, JsonError> {
    let Value::Object(members) = parse(json)? else {
        return Err(JsonError::Shape("the answer is not an object"));
    };
    let Some(Value::Integer(Some(status))) = last(&members, "status") else {
        return Err(JsonError::Shape("no integer status"));
    };
    let Some(Value::String(message)) = last(&members, "message") else {
        return Err(JsonError::Shape("no string message"));
    };
    let token = match last(&members, "token") {
        None => None,
        Some(Value::String(token)) => Some(token.clone()),
        Some(_) => return Err(JsonError::Shape("token is not a string")),
    };
    Ok(AnswerPayload {
        status: *status,
        message: message.clone(),
        token,
    })
}

/// A parsed JSON value. Numbers keep only what OCM needs: the integer, if the literal is one.
#[derive(Debug)]
enum Value {
    Null,
    Bool,
    /// An integer literal within `i64`; `None` for a fraction, an exponent or a larger integer.
    Integer(Option<i64>),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

/// The value of the last member named `key`.
fn last<'a>(members: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Parses one JSON document, whitespace around it allowed, nothing after it.
fn parse(text: &str) -> Result<Value, JsonError> {
    let mut parser = Parser {
        text,
        pos: 0,
        unsupported: None,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos != text.len() {
        return Err(parser.syntax());
    }
    // Only now: a syntax error anywhere makes the text "not JSON", whatever came before it.
    match parser.unsupported {
        Some(what) => Err(JsonError::Shape(what)),
        None => Ok(value),
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// Something valid JSON can say that we will not take, found on the way.
    unsupported: Option<&'static str>,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn syntax(&self) -> JsonError {
        JsonError::Syntax { offset: self.pos }
    }

    /// Consumes `expected` or fails.
    fn expect(&mut self, expected: u8) -> Result<(), JsonError> {
        if self.peek() == Some(expected) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    /// JSON's whitespace: space, tab, LF, CR (not Unicode spaces).
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Value::Bool),
            Some(b'f') => self.literal("false", Value::Bool),
            Some(b'n') => self.literal("null", Value::Null),
            _ => Err(self.syntax()),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, JsonError> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.syntax())
        }
    }

    fn enter(&self, depth: usize) -> Result<(), JsonError> {
        if depth > DEPTH_MAX {
            Err(JsonError::Shape("JSON nested too deeply"))
        } else {
            Ok(())
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.enter(depth)?;
        self.expect(b'{')?;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.syntax());
            }
            let key = self.string()?;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            let value = self.value(depth)?;
            members.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => return Err(self.syntax()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.enter(depth)?;
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.syntax()),
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax()),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            self.at_least_one_digit()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            integer = false;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.at_least_one_digit()?;
        }
        let literal = &self.text[start..self.pos];
        Ok(Value::Integer(if integer {
            literal.parse().ok()
        } else {
            None
        }))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Result<(), JsonError> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.syntax());
        }
        self.digits();
        Ok(())
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control character at once.
            let rest = &self.text.as_bytes()[self.pos..];
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or(JsonError::Syntax {
                    offset: self.text.len(),
                })?;
            // The stop bytes are ASCII, so the run ends on a character boundary.
            out.push_str(&self.text[self.pos..self.pos + run]);
            self.pos += run;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                // A raw control character: json.loads refuses it too (strict mode).
                _ => return Err(self.syntax()),
            }
        }
    }

    /// The escape after a backslash.
    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let unit = self.hex4()?;
                out.push(self.code_point(unit)?);
                return Ok(());
            }
            _ => return Err(self.syntax()),
        };
        self.pos += 1;
        out.push(c);
        Ok(())
    }

    /// The character of a `\uXXXX` escape, joining a surrogate pair. A lone surrogate is valid
    /// JSON but no Rust string can hold it: it is noted as unsupported and stands as U+FFFD
    /// while the rest is still checked for syntax.
    fn code_point(&mut self, unit: u16) -> Result<char, JsonError> {
        if let Some(c) = char::from_u32(u32::from(unit)) {
            return Ok(c);
        }
        if (0xd800..0xdc00).contains(&unit) && self.text[self.pos..].starts_with("\\u") {
            let save = self.pos;
            self.pos += 2;
            let low = self.hex4()?;
            if (0xdc00..0xe000).contains(&low) {
                let c = 0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00);
                if let Some(c) = char::from_u32(c) {
                    return Ok(c);
                }
            }
            // Not a low surrogate: it is read again as an escape of its own.
            self.pos = save;
        }
        self.unsupported = Some("a lone surrogate in a string");
        Ok(char::REPLACEMENT_CHARACTER)
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let digits = self
            .text
            .as_bytes()
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.syntax())?;
        let mut unit = 0u16;
        for &digit in digits {
            let value = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                b'A'..=b'F' => digit - b'A' + 10,
                _ => return Err(self.syntax()),
            };
            unit = (unit << 4) | u16::from(value);
        }
        self.pos += 4;
        Ok(unit)
    }
}
