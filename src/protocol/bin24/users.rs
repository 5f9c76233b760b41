//! Who may be a BIN24 user (`--bin24-users FILE`).
//!
//! The wire has no password: a frame's SRC is the whole login. Without a list, anyone who can
//! reach the port can claim any name, receive its stored frames and push its holder off, so a
//! list binds each name to the addresses it may connect from. The file is plain text, one user
//! per line:
//!
//! ```text
//! # name  addresses or networks it may connect from
//! alice   127.0.0.1
//! bob     10.0.0.0/8 192.168.1.20 ::1
//! ```
//!
//! Blank lines and text after `#` are ignored. A name is 1 to 8 bytes without NUL or
//! whitespace (what the 8-byte SRC field carries); an address is an IPv4 or IPv6 address, with
//! an optional `/prefix`. An IPv4 client reaching an IPv6 listener as `::ffff:a.b.c.d` matches
//! the IPv4 entries.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use super::codec::Name;

/// One address or network of the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix_bits: u8,
}

impl Network {
    fn parse(text: &str) -> Result<Network, String> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("\"{text}\" is not an IP address or network"))?;
        let bits_max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match prefix_text {
            None => bits_max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&bits| bits <= bits_max)
                .ok_or_else(|| format!("\"{text}\": the prefix must be 0 to {bits_max}"))?,
        };
        Ok(Network { addr, prefix_bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix_bits)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix_bits)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix_bits: u8) -> bool {
    let full_bytes = usize::from(prefix_bits / 8);
    let rest_bits = prefix_bits % 8;
    if net.get(..full_bytes) != ip.get(..full_bytes) {
        return false;
    }
    if rest_bits == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest_bits);
    match (net.get(full_bytes), ip.get(full_bytes)) {
        (Some(n), Some(i)) => n & mask == i & mask,
        _ => false,
    }
}

/// Why a users file was refused, with the line it is about.
#[derive(Debug)]
pub struct UsersFileError {
    pub path: String,
    pub line: usize,
    pub detail: String,
}

impl fmt::Display for UsersFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "BIN24 users file {}: {}", self.path, self.detail)
        } else {
            write!(
                f,
                "BIN24 users file {}, line {}: {}",
                self.path, self.line, self.detail
            )
        }
    }
}

impl std::error::Error for UsersFileError {}

/// The users allowed to log in, and from where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserList {
    users: HashMap<Name, Vec<Network>>,
}

/// Most bytes read from a users file: a list of names is small; a huge file is a mistake.
const USERS_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

impl UserList {
    /// Read and parse `path`; every mistake is an error naming its line.
    pub fn load(path: &Path) -> Result<UserList, UsersFileError> {
        let shown = path.display().to_string();
        let fail = |line, detail| UsersFileError {
            path: shown.clone(),
            line,
            detail,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| fail(0, format!("cannot read it: {e}")))?
            .len();
        if size > USERS_FILE_BYTES_MAX {
            return Err(fail(
                0,
                format!("{size} bytes, more than the {USERS_FILE_BYTES_MAX} a users file may have"),
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(0, format!("cannot read it: {e}")))?;
        UserList::parse(&text).map_err(|(line, detail)| fail(line, detail))
    }

    /// Parse the file's text; an error is (line number from 1, what is wrong).
    pub fn parse(text: &str) -> Result<UserList, (usize, String)> {
        let mut users: HashMap<Name, Vec<Network>> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let Some(name_text) = fields.next() else {
                continue;
            };
            let name = Name::new(name_text.as_bytes())
                .filter(|name| !name.is_empty())
                .ok_or_else(|| {
                    (
                        number,
                        format!("\"{name_text}\" is not a BIN24 name (1 to 8 bytes, no NUL)"),
                    )
                })?;
            let networks = fields
                .map(Network::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|detail| (number, detail))?;
            if networks.is_empty() {
                return Err((
                    number,
                    format!("user \"{name_text}\" has no address it may connect from"),
                ));
            }
            if users.insert(name, networks).is_some() {
                return Err((number, format!("user \"{name_text}\" is listed twice")));
            }
        }
        Ok(UserList { users })
    }

    /// Whether `name` may log in from `ip`.
    pub fn allows(&self, name: &Name, ip: IpAddr) -> bool {
        self.users
            .get(name)
            .is_some_and(|networks| networks.iter().any(|net| net.contains(ip)))
    }

    /// Whether `name` is a user at all (a message to anyone else can never be delivered).
    pub fn knows(&self, name: &Name) -> bool {
        self.users.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> Name {
        Name::new(text.as_bytes()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn names_map_to_addresses_and_networks_of_both_families() {
        let list = UserList::parse(
            "# who may log in\n\
             alice 127.0.0.1\n\
             \n\
             bob   10.1.0.0/16 ::1   # two places\n\
             carol 2001:db8::/32\n\
             all   0.0.0.0/0\n",
        )
        .unwrap();
        assert_eq!(list.len(), 4);
        assert!(list.allows(&name("alice"), ip("127.0.0.1")));
        assert!(!list.allows(&name("alice"), ip("127.0.0.2")));
        assert!(list.allows(&name("bob"), ip("10.1.255.3")));
        assert!(!list.allows(&name("bob"), ip("10.2.0.1")));
        assert!(list.allows(&name("bob"), ip("::1")));
        assert!(list.allows(&name("carol"), ip("2001:db8:ffff::9")));
        assert!(!list.allows(&name("carol"), ip("2001:db9::1")));
        assert!(list.allows(&name("all"), ip("203.0.113.9")));
        assert!(!list.allows(&name("all"), ip("::2")));
        // An IPv4 client seen through an IPv6 listener.
        assert!(list.allows(&name("alice"), ip("::ffff:127.0.0.1")));
        assert!(!list.allows(&name("mallory"), ip("127.0.0.1")));
        assert!(list.knows(&name("bob")) && !list.knows(&name("mallory")));
    }

    #[test]
    fn prefixes_that_are_not_whole_bytes_mask_the_right_bits() {
        let list = UserList::parse("a 192.168.1.128/25\n").unwrap();
        assert!(list.allows(&name("a"), ip("192.168.1.200")));
        assert!(!list.allows(&name("a"), ip("192.168.1.127")));
    }

    #[test]
    fn mistakes_name_their_line() {
        for (text, line, words) in [
            ("alice\n", 1, "no address"),
            ("ok 1.2.3.4\nbad 1.2.3\n", 2, "not an IP"),
            ("a 1.2.3.4/33\n", 1, "prefix"),
            ("a ::1/129\n", 1, "prefix"),
            ("a 1.2.3.4\na ::1\n", 2, "twice"),
            ("waytoolongname 1.2.3.4\n", 1, "not a BIN24 name"),
        ] {
            let (at, detail) = UserList::parse(text).unwrap_err();
            assert_eq!(at, line, "{text:?}: {detail}");
            assert!(detail.contains(words), "{text:?}: {detail}");
        }
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let err = UserList::load(Path::new("/nonexistent/bin24-users")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/bin24-users") && text.contains("cannot read"),
            "{text}"
        );
    }
}
