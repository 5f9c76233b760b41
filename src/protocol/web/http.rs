//! WEB's HTTP side: the one request a connection makes (the page, one of its two files, or
//! the WebSocket upgrade), parsed with `httparse`, and the answers.

use base64::Engine;
use bytes::Bytes;
use sha1::{Digest, Sha1};

/// The page and its two files, built into the binary: no build step, no external resource.
pub const PAGE_HTML: &str = include_str!("page/index.html");
pub const PAGE_JS: &str = include_str!("page/app.js");
pub const PAGE_CSS: &str = include_str!("page/app.css");

/// Scripts and styles from this origin only (the two files above: no inline script, no
/// eval), connections to this origin only, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The largest request head (request line and headers).
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
const HEADERS_MAX: usize = 32;

/// RFC 6455 1.3: appended to the client's key before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A file of the page: the whole answer, then close.
    File { answer: Bytes },
    /// The WebSocket: answer `answer` (101) and speak frames from then on.
    Upgrade { answer: Bytes },
}

/// A request refused: the answer (an error status), then close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub answer: Bytes,
}

/// Reads the request head at the start of `input`: `Ok(None)` until it is all there; else
/// what it asks and how many bytes the head took. `origins`: `--web-origins` (`None`: only
/// `http://<Host>` and `https://<Host>`).
pub fn parse(
    input: &[u8],
    origins: Option<&[String]>,
) -> Result<Option<(Request, usize)>, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = match request.parse(input) {
        Ok(httparse::Status::Complete(bytes)) => bytes,
        Ok(httparse::Status::Partial) if input.len() > HEAD_BYTES_MAX => {
            return Err(refuse(400, "the request head is too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(refuse(400, "malformed request")),
    };
    if head_bytes > HEAD_BYTES_MAX {
        return Err(refuse(400, "the request head is too large"));
    }
    if request.version != Some(1) {
        return Err(refuse(505, "HTTP/1.1 only"));
    }
    let method = request.method.unwrap_or("");
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(refuse(405, "GET or HEAD only")),
    };
    let path = request.path.unwrap_or("");
    // A query string changes nothing (a browser may add one to defeat a cache).
    let path = path.split('?').next().unwrap_or("");
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    let file = match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", PAGE_HTML)),
        "/app.js" => Some(("text/javascript; charset=utf-8", PAGE_JS)),
        "/app.css" => Some(("text/css; charset=utf-8", PAGE_CSS)),
        _ => None,
    };
    if let Some((content_type, body)) = file {
        return Ok(Some((
            Request::File {
                answer: file_answer(content_type, body, head_only),
            },
            head_bytes,
        )));
    }
    if path != "/ws" {
        return Err(refuse(404, "not found"));
    }
    if head_only {
        return Err(refuse(405, "the WebSocket is GET only"));
    }
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or(b"");
        if !origin_allowed(origin, host, origins) {
            return Err(refuse(403, "this origin may not open the WebSocket"));
        }
    }
    let has_token = |name: &str, token: &str| {
        request
            .headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(name))
            .flat_map(|header| header.value.split(|&b| b == b','))
            .any(|value| value.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(refuse(400, "a WebSocket upgrade is expected at /ws"));
    }
    if header("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Refused {
            status: 426,
            answer: answer(
                426,
                "Upgrade Required",
                &[("Sec-WebSocket-Version", "13")],
                "text/plain; charset=utf-8",
                b"WebSocket version 13 only\n",
                false,
            ),
        });
    }
    let key = header("sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .unwrap_or(b"");
    let key_is_16_bytes = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|decoded| decoded.len() == 16);
    if !key_is_16_bytes {
        return Err(refuse(400, "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let accept = accept_key(key);
    let upgrade = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Ok(Some((
        Request::Upgrade {
            answer: Bytes::from(upgrade),
        },
        head_bytes,
    )))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 4.2.2): base64 of SHA-1 of key + GUID.
pub fn accept_key(key: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(key);
    hasher.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hasher.finalize())
}

/// Whether a page of `origin` may open the WebSocket: one of `origins`, or without that
/// list, `http://<host>` or `https://<host>` (the request's own host: the page this server
/// served, over its TLS port or through a TLS tunnel in front of it, whose Host is its own).
pub fn origin_allowed(origin: &[u8], host: &[u8], origins: Option<&[String]>) -> bool {
    match origins {
        Some(origins) => origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin)),
        None => {
            !host.is_empty()
                && [&b"http://"[..], b"https://"].iter().any(|scheme| {
                    origin.len() == scheme.len() + host.len()
                        && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                        && origin[scheme.len()..].eq_ignore_ascii_case(host)
                })
        }
    }
}

fn file_answer(content_type: &str, body: &str, head_only: bool) -> Bytes {
    answer(
        200,
        "OK",
        &[
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-store"),
        ],
        content_type,
        body.as_bytes(),
        head_only,
    )
}

fn refuse(status: u16, sentence: &str) -> Refused {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let extra: &[(&str, &str)] = if status == 405 {
        &[("Allow", "GET, HEAD")]
    } else {
        &[]
    };
    let body = format!("{sentence}\n");
    Refused {
        status,
        answer: answer(
            status,
            reason,
            extra,
            "text/plain; charset=utf-8",
            body.as_bytes(),
            false,
        ),
    }
}

fn answer(
    status: u16,
    reason: &str,
    extra: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Bytes {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body);
    }
    Bytes::from(bytes)
}
