//! Hints for the two mistakes a newcomer makes first: no server running, and the right server
//! on the wrong port (every protocol has its own port, and they are easy to mix up).
//!
//! A wrong port shows as bytes of another protocol, or as silence where the server should
//! speak: each client knows what its own server sends first, and [`guess`] recognises what the
//! other four send to a stranger's first bytes, so the hint can name the protocol that
//! answered. The guess is a hint, never a verdict: it only words a message about something
//! that already failed or is late.

use std::io;

/// The five protocols, as the hints name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Room,
    Bin24,
    Ccm,
    Matou,
    Ocm,
}

impl Protocol {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Room => "ROOM",
            Protocol::Bin24 => "BIN24",
            Protocol::Ccm => "CCM",
            Protocol::Matou => "MATOU",
            Protocol::Ocm => "OCM",
        }
    }

    /// The server's default port, and the `chat` subcommand that speaks the protocol.
    fn default_port(self) -> &'static str {
        match self {
            Protocol::Room => "55555",
            Protocol::Bin24 => "7000",
            Protocol::Ccm => "5454",
            Protocol::Matou => "7777",
            Protocol::Ocm => "9002 (TCP)",
        }
    }

    /// Which protocol's server listens on `port` by default.
    fn by_default_on(port: u16) -> Option<Protocol> {
        match port {
            55555 => Some(Protocol::Room),
            7000 => Some(Protocol::Bin24),
            5454 => Some(Protocol::Ccm),
            7777 => Some(Protocol::Matou),
            9002 => Some(Protocol::Ocm),
            _ => None,
        }
    }

    fn command(self) -> &'static str {
        match self {
            Protocol::Room => "room",
            Protocol::Bin24 => "bin24",
            Protocol::Ccm => "ccm",
            Protocol::Matou => "matou",
            Protocol::Ocm => "ocm",
        }
    }
}

/// How to start the server, for the hint after a refused connection.
const START_CHATD: &str = "cargo run --release --bin chatd";

/// The message for a failed connect: with a refusal, the hint to start the server.
pub(crate) fn connect_failed(addr: &str, expected: Protocol, error: &io::Error) -> String {
    let mut message = format!("chat: cannot connect to {addr}: {error}");
    if error.kind() == io::ErrorKind::ConnectionRefused {
        message.push_str(&format!(
            "\nchat: is chatd running? Start it with `{START_CHATD}` (it serves {} on port {} \
             by default; --port picks another)",
            expected.name(),
            expected.default_port()
        ));
    }
    message
}

/// `port 7000 answered like BIN24, not ROOM: ...`, for bytes that `guess` recognised, or a
/// sentence saying they match no protocol.
pub(crate) fn answered_like(port: u16, expected: Protocol, data: &[u8]) -> String {
    match guess(data).filter(|&seen| seen != expected) {
        Some(seen) => format!(
            "port {port} answered like {}, not {}: is it the {} port? (`chat {}` speaks {}; \
             the {} port is {} by default)",
            seen.name(),
            expected.name(),
            seen.name(),
            seen.command(),
            seen.name(),
            expected.name(),
            expected.default_port()
        ),
        None => format!(
            "port {port} does not answer like a {} server{} (the {} port is {} by default)",
            expected.name(),
            default_of_another(port, expected),
            expected.name(),
            expected.default_port()
        ),
    }
}

/// `; 7000 is BIN24's default port`, when `port` is another protocol's default.
fn default_of_another(port: u16, expected: Protocol) -> String {
    match Protocol::by_default_on(port).filter(|&other| other != expected) {
        Some(other) => format!("; {port} is {}'s default port", other.name()),
        None => String::new(),
    }
}

/// `nothing from port 9002 yet, where ...`, for a server that stays silent where the expected
/// protocol's server would have spoken (`what` completes "where a BIN24 server ...").
pub(crate) fn silent(port: u16, expected: Protocol, what: &str) -> String {
    format!(
        "nothing from port {port} yet, where a {} server {what}: is it the {} port? (it is {} \
         by default{}; still waiting)",
        expected.name(),
        expected.name(),
        expected.default_port(),
        default_of_another(port, expected)
    )
}

/// Which protocol's server sends `data` first, to a client of another protocol; `None` when
/// it looks like none of them.
pub(crate) fn guess(data: &[u8]) -> Option<Protocol> {
    // ROOM speaks first, with `alias?`, or later with its notices.
    const ROOM_STARTS: [&[u8]; 4] = [b"alias?", b"b'", b"b\"", b"Voce esta conectado"];
    // CCM answers a stranger with HTTP 400, and its own clients with `CCM\1.0`.
    if starts_with_ignore_case(data, b"HTTP/1.") || starts_with_ignore_case(data, b"CCM\\") {
        return Some(Protocol::Ccm);
    }
    if ROOM_STARTS
        .iter()
        .any(|start| data.starts_with(start) || (data.len() >= 2 && start.starts_with(data)))
    {
        return Some(Protocol::Room);
    }
    // MATOU: a big-endian i32 packet type, 1 to 17 (a stranger gets ERROR, 17).
    if let [0, 0, 0, kind, ..] = data {
        if (1..=17).contains(kind) {
            return Some(Protocol::Matou);
        }
    }
    // OCM: a 32-byte TCRP header (RoomNameSize, operation 1 or 2, state 0 to 3, then a
    // 29-byte big-endian size, mostly zeros) followed by a JSON object.
    if data.len() >= 33
        && matches!(data[1], 1 | 2)
        && data[2] <= 3
        && data[3..24].iter().all(|&b| b == 0)
        && data[32] == b'{'
    {
        return Some(Protocol::Ocm);
    }
    // BIN24: a little-endian length of 24 to 1024 and a type of 0, 1 or 2.
    if let [l0, l1, t0, 0, ..] = data {
        let len = u16::from_le_bytes([*l0, *l1]);
        if (24..=1024).contains(&len) && *t0 <= 2 {
            return Some(Protocol::Bin24);
        }
    }
    None
}

fn starts_with_ignore_case(data: &[u8], prefix: &[u8]) -> bool {
    data.len() >= prefix.len() && data[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_is_recognised_by_what_it_sends_a_stranger() {
        assert_eq!(guess(b"alias?"), Some(Protocol::Room));
        assert_eq!(guess(b"ali"), Some(Protocol::Room));
        assert_eq!(
            guess(b"b'bob' esta conectado ao chat"),
            Some(Protocol::Room)
        );
        assert_eq!(
            guess(b"HTTP/1.1 400 Bad Request\r\nDate: x"),
            Some(Protocol::Ccm)
        );
        assert_eq!(guess(b"ccm\\1.0 Identity\n"), Some(Protocol::Ccm));
        // MATOU ERROR (17) with its code, as a MATOU server answers a stranger.
        assert_eq!(guess(&[0, 0, 0, 17, 0, 0, 0, 1]), Some(Protocol::Matou));
        assert_eq!(guess(&[0, 0, 0, 2, 1]), Some(Protocol::Matou));
        // An OCM 500 answer.
        let mut ocm = vec![5, 1, 3];
        ocm.extend_from_slice(&[0; 28]);
        ocm.push(40);
        ocm.extend_from_slice(br#"{"status": 500}"#);
        assert_eq!(guess(&ocm), Some(Protocol::Ocm));
        // A BIN24 echo of a registration frame.
        let mut bin24 = vec![24, 0, 1, 0, 0xff, 0xff, 0xff, 0xff];
        bin24.extend_from_slice(b"alice\0\0\0alice\0\0\0");
        assert_eq!(guess(&bin24), Some(Protocol::Bin24));
        assert_eq!(guess(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(guess(b""), None);
    }

    #[test]
    fn hints_name_both_protocols_and_the_default_port() {
        let hint = answered_like(7000, Protocol::Room, &[24, 0, 1, 0, 0, 0, 0, 0]);
        assert!(
            hint.starts_with("port 7000 answered like BIN24, not ROOM"),
            "{hint}"
        );
        assert!(hint.contains("55555"), "{hint}");
        let hint = answered_like(7000, Protocol::Room, b"\x7fELF");
        assert!(
            hint.contains("does not answer like a ROOM server; 7000 is BIN24's default port"),
            "{hint}"
        );
        let hint = silent(7000, Protocol::Room, "asks `alias?` at once");
        assert!(
            hint.contains("(it is 55555 by default; 7000 is BIN24's default port; still"),
            "{hint}"
        );
        assert!(!silent(55555, Protocol::Room, "x").contains("default port"));
        assert!(!silent(1234, Protocol::Room, "x").contains("default port"));
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let message = connect_failed("127.0.0.1:7000", Protocol::Bin24, &refused);
        assert!(message.contains(START_CHATD), "{message}");
        let other = io::Error::from(io::ErrorKind::TimedOut);
        assert!(!connect_failed("x:1", Protocol::Bin24, &other).contains("chatd"));
    }
}
