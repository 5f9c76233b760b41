//! A blocking BIN24 client for the integration tests: whole frames, bounded waits.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use switchboard::protocol::bin24::codec::{self, Name};

use super::{TestServer, WAIT};

pub fn name(text: &str) -> Name {
    Name::new(text.as_bytes()).expect("valid name")
}

/// A frame as received: its fields, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub frame_type: u16,
    pub message_id: u32,
    pub src: String,
    pub dst: String,
    pub body: Vec<u8>,
    pub raw: Vec<u8>,
}

/// A BIN24 client that reads whole frames.
pub struct Bin24 {
    pub user: String,
    pub stream: TcpStream,
    pub buffer: Vec<u8>,
    pub next_id: u32,
}

impl Bin24 {
    pub fn connect(addr: SocketAddr, user: &str) -> Bin24 {
        Bin24::wrap(TcpStream::connect(addr).expect("connect"), user)
    }

    /// A client on a connection made elsewhere (another source address, a clone).
    pub fn wrap(stream: TcpStream, user: &str) -> Bin24 {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Bin24 {
            user: user.to_string(),
            stream,
            buffer: Vec::new(),
            next_id: 0,
        }
    }

    /// Connects and logs in as `user`, waiting until the server knows the name; nothing was
    /// stored for it.
    pub fn log_in(server: &TestServer, user: &str) -> Bin24 {
        let mut peer = Bin24::connect(server.bin24.expect("BIN24 enabled"), user);
        let before = peer.register_and_wait();
        assert!(
            before.is_empty(),
            "{user}: frames before the sign-in: {before:?}"
        );
        peer
    }

    /// Bytes read but not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn send_raw(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).expect("send");
    }

    /// Sends a message to `to`; returns its messageID.
    pub fn send(&mut self, to: &str, text: &str) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let frame = codec::encode(
            codec::TYPE_MESSAGE,
            id,
            name(&self.user),
            name(to),
            text.as_bytes(),
        )
        .expect("frame");
        self.send_raw(&frame);
        id
    }

    /// Answers a received message the way the original client does: same len, type 1, SRC and
    /// DST swapped, the first len-24 bytes of "200\\0" followed by garbage.
    pub fn answer(&mut self, to: &Received) {
        let mut body = b"200\0".to_vec();
        body.resize(to.body.len().max(3), b'?');
        body.truncate(to.body.len().max(3));
        self.answer_with(to, &body);
    }

    /// Answers a received message with `body`.
    pub fn answer_with(&mut self, to: &Received, body: &[u8]) {
        let frame = codec::encode(
            codec::TYPE_ANSWER,
            to.message_id,
            name(&self.user),
            name(&to.src),
            body,
        )
        .expect("frame");
        self.send_raw(&frame);
    }

    pub fn try_frame(&mut self) -> Option<Received> {
        if self.buffer.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([self.buffer[0], self.buffer[1]]));
        if self.buffer.len() < len {
            return None;
        }
        let raw: Vec<u8> = self.buffer.drain(..len).collect();
        let field = |at: usize| {
            let bytes: [u8; 8] = raw[at..at + 8].try_into().expect("8 bytes");
            String::from_utf8_lossy(Name::from_field(&bytes).as_bytes()).into_owned()
        };
        Some(Received {
            frame_type: u16::from_le_bytes([raw[2], raw[3]]),
            message_id: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            src: field(8),
            dst: field(16),
            body: raw[24..].to_vec(),
            raw,
        })
    }

    /// The next frame, waiting for it (bounded).
    pub fn recv(&mut self) -> Received {
        loop {
            if let Some(frame) = self.try_frame() {
                return frame;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("{}: connection closed while waiting for a frame", self.user),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(err) => panic!("{}: no frame arrived: {err}", self.user),
            }
        }
    }

    /// The server closes this connection (bounded wait); frames before the close are returned.
    pub fn expect_closed(&mut self) -> Vec<Received> {
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = self.try_frame() {
                frames.push(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return frames,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return frames,
                Err(err) => panic!("{}: not closed: {err}", self.user),
            }
        }
    }

    /// Registers with the server: the first frame's SRC names the user. An answer to nobody
    /// is dropped by the server, so it registers without side effects.
    pub fn register(&mut self) {
        let frame = codec::encode(
            codec::TYPE_ANSWER,
            u32::MAX,
            name(&self.user),
            name("nobody"),
            b"200",
        )
        .expect("frame");
        self.send_raw(&frame);
    }

    /// Logs in as `user` at `addr`, retried while the name cannot be granted yet (in a
    /// cluster: another node's release or lapsed lease has not reached Redis, or a names
    /// thread reconnecting refuses claims: the login is closed). Returns the client and the
    /// frames that came before the sign-in's echo (stored ones).
    pub fn log_in_when_free(addr: SocketAddr, user: &str) -> (Bin24, Vec<Received>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut client = Bin24::connect(addr, user);
            let id = client.send(user, "sync");
            let mut before = Vec::new();
            let signed_in = loop {
                if let Some(frame) = client.try_frame() {
                    if frame.frame_type == codec::TYPE_MESSAGE && frame.message_id == id {
                        client.answer(&frame);
                    } else if frame.frame_type == codec::TYPE_ANSWER && frame.message_id == id {
                        break true;
                    } else {
                        before.push(frame);
                    }
                    continue;
                }
                let mut chunk = [0u8; 4096];
                match client.stream.read(&mut chunk) {
                    Ok(0) => break false,
                    Ok(n) => client.buffer.extend_from_slice(&chunk[..n]),
                    Err(err) if err.kind() == ErrorKind::ConnectionReset => break false,
                    Err(err) => panic!("{user}: signing in: {err}"),
                }
            };
            if signed_in {
                return (client, before);
            }
            assert!(Instant::now() < deadline, "{user} never signed in");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The one frame stored for this user: `before` (what came before the sign-in's echo), or
    /// else the next frame (a backlog loaded from elsewhere may come after the echo).
    pub fn one_stored(&mut self, mut before: Vec<Received>) -> Received {
        if before.is_empty() {
            before.push(self.recv());
        }
        match <[Received; 1]>::try_from(before) {
            Ok([frame]) => frame,
            Err(frames) => panic!("{}: one stored frame, not {frames:?}", self.user),
        }
    }

    /// Nothing more arrives within `quiet` (nothing buffered either).
    pub fn expect_quiet_for(&mut self, quiet: Duration) {
        assert_eq!(self.try_frame(), None, "{}: a frame was waiting", self.user);
        self.stream.set_read_timeout(Some(quiet)).expect("timeout");
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) => panic!("{}: {n} more bytes: {:?}", self.user, &chunk[..n]),
            Err(err) => assert!(
                matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{}: {err}",
                self.user
            ),
        }
        self.stream.set_read_timeout(Some(WAIT)).expect("timeout");
    }

    /// Registers and waits until the server knows the name: a message to oneself comes back
    /// once it does. Returns any frames that arrived first (stored ones).
    pub fn register_and_wait(&mut self) -> Vec<Received> {
        let id = self.send(&self.user.clone(), "sync");
        let mut before = Vec::new();
        loop {
            let frame = self.recv();
            if frame.frame_type == codec::TYPE_MESSAGE && frame.message_id == id {
                // Answer it; the answer comes back too (its DST is ourselves).
                self.answer(&frame);
                continue;
            }
            if frame.frame_type == codec::TYPE_ANSWER && frame.message_id == id {
                return before;
            }
            before.push(frame);
        }
    }
}
