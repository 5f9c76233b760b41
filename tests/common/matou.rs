//! A blocking MATOU client for the integration tests: whole packets, bounded waits.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{TestServer, WAIT};

/// A MATOU string: its length (i32, big-endian), then its bytes.
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = int(bytes.len() as i32);
    out.extend_from_slice(bytes);
    out
}

/// A packet: its type, then its fields as given.
pub fn packet(kind: i32, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = int(kind);
    for field in fields {
        out.extend_from_slice(field);
    }
    out
}

pub fn int(value: i32) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

/// A blocking MATOU peer that reads whole packets; `name` labels its failures.
pub struct Matou {
    pub stream: TcpStream,
    pub name: String,
}

impl Matou {
    pub fn connect(server: &TestServer, name: &str) -> Matou {
        Matou::connect_to(server.matou.expect("MATOU enabled"), name)
    }

    pub fn connect_to(addr: SocketAddr, name: &str) -> Matou {
        Matou::wrap(TcpStream::connect(addr).expect("connect MATOU"), name)
    }

    pub fn wrap(stream: TcpStream, name: &str) -> Matou {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Matou {
            stream,
            name: name.to_string(),
        }
    }

    /// Connects and signs in as `name`; consumes its own CONNECT_NOTIFY.
    pub fn sign_in(server: &TestServer, name: &str) -> Matou {
        Matou::sign_in_at(server.matou.expect("MATOU enabled"), name)
    }

    pub fn sign_in_at(addr: SocketAddr, name: &str) -> Matou {
        let mut peer = Matou::connect_to(addr, name);
        peer.login(name, true);
        peer.expect_notify(3, name);
        peer
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn read_exact(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.stream
            .read_exact(&mut buf)
            .unwrap_or_else(|err| panic!("{}: reading {len} bytes: {err}", self.name));
        buf
    }

    pub fn int(&mut self) -> i32 {
        let bytes = self.read_exact(4);
        i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    pub fn string(&mut self) -> String {
        let len = self.int();
        assert!(
            (0..=4096).contains(&len),
            "{}: string size {len}",
            self.name
        );
        String::from_utf8(self.read_exact(len as usize)).expect("UTF-8")
    }

    pub fn expect_type(&mut self, expected: i32) {
        let kind = self.int();
        assert_eq!(kind, expected, "{}: packet type", self.name);
    }

    /// Logs in; the server must answer `accepted`.
    pub fn login(&mut self, name: &str, accepted: bool) {
        self.send(&packet(1, &[&string(name.as_bytes())]));
        self.expect_type(2);
        let answer = self.read_exact(1)[0];
        assert_eq!(
            answer,
            u8::from(accepted),
            "{}: acceptation for {name}",
            self.name
        );
    }

    /// A PUBLIC_MESSAGE.
    pub fn say(&mut self, message: &str) {
        self.send(&packet(4, &[&string(message.as_bytes())]));
    }

    pub fn expect_notify(&mut self, kind: i32, name: &str) {
        self.expect_type(kind);
        assert_eq!(self.string(), name, "{}: notification", self.name);
    }

    pub fn expect_broadcast(&mut self, from: &str, message: &str) {
        self.expect_type(5);
        assert_eq!(self.string(), from, "{}: broadcast sender", self.name);
        assert_eq!(self.string(), message, "{}: broadcast message", self.name);
    }

    /// Reads packets until a PUBLIC_BROADCAST of `message` from `from`, skipping notices.
    pub fn await_broadcast(&mut self, from: &str, message: &str) {
        loop {
            match self.int() {
                3 | 16 => {
                    self.string();
                }
                5 => {
                    let (who, what) = (self.string(), self.string());
                    if who == from && what == message {
                        return;
                    }
                }
                other => panic!("{}: unexpected packet type {other}", self.name),
            }
        }
    }

    /// An ERROR packet; returns its code.
    pub fn expect_error(&mut self) -> i32 {
        self.expect_type(17);
        let code = self.int();
        let reason = self.string();
        assert!(!reason.is_empty());
        code
    }

    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{}: expected close, got {:?}", self.name, &buf[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
            Err(err) => panic!("{}: expected close: {err}", self.name),
        }
    }

    /// Nothing arrives for `quiet`. Only absence is checked this way: a slow server can make
    /// it pass wrongly, never fail wrongly.
    pub fn expect_nothing_for(&mut self, quiet: Duration) {
        self.stream.set_read_timeout(Some(quiet)).expect("timeout");
        let mut buf = [0u8; 64];
        let result = self.stream.read(&mut buf);
        self.stream.set_read_timeout(Some(WAIT)).expect("timeout");
        match result {
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(n) => panic!("{}: expected silence, got {:?}", self.name, &buf[..n]),
            Err(err) => panic!("{}: {err}", self.name),
        }
    }
}
