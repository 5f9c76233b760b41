//! A tiny blocking WebSocket client for the WEB tests, written from RFC 6455 apart from the
//! server's codec (so that a codec bug cannot hide behind the same bug): handshake, masked
//! frames out, frames in, JSON messages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use serde_json::{json, Value};

use super::WAIT;

/// The answer to a raw HTTP request: the whole of it, read until the server closed.
pub fn http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A handshake request for `/ws` with `extra` header lines (each ending in CRLF).
pub fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

pub struct Web {
    pub stream: TcpStream,
    /// Bytes read and not yet taken as frames.
    buffered: Vec<u8>,
    /// Changes with every frame, so that masks differ.
    mask_seed: u32,
}

impl Web {
    /// Connect and upgrade (no `Origin`: not a browser).
    pub fn open(addr: SocketAddr) -> Web {
        Web::open_with(addr, "").unwrap_or_else(|status| panic!("upgrade refused: {status}"))
    }

    /// Connect and upgrade with `extra` header lines; the status line when it is not 101.
    pub fn open_with(addr: SocketAddr, extra: &str) -> Result<Web, String> {
        Web::upgrade(TcpStream::connect(addr).expect("connect"), extra)
    }

    /// Upgrade `stream`, a connection made elsewhere (a small receive buffer, another source
    /// address), with `extra` header lines; the status line when it is not 101.
    pub fn upgrade(mut stream: TcpStream, extra: &str) -> Result<Web, String> {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .write_all(upgrade_request(extra).as_bytes())
            .expect("send the handshake");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head.lines().next().unwrap_or("").to_string();
        if !status.starts_with("HTTP/1.1 101 ") {
            return Err(status);
        }
        // RFC 6455's own example key and accept value (section 1.3).
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{head}"
        );
        Ok(Web {
            stream,
            buffered: Vec::new(),
            mask_seed: 0x1234_5678,
        })
    }

    /// Open, sign in as `name`, and return the welcome.
    pub fn sign_in(addr: SocketAddr, name: &str) -> (Web, Value) {
        let mut web = Web::open(addr);
        web.send_json(&json!({"type": "signin", "name": name}));
        let welcome = web.recv();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["name"], name);
        (web, welcome)
    }

    /// One frame, masked as a client must.
    pub fn frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_103_515_245)
            .wrapping_add(12_345);
        let mask = self.mask_seed.to_be_bytes();
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else if payload.len() <= 0xFFFF {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(at, b)| b ^ mask[at % 4]));
        frame
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let frame = self.frame(fin, opcode, payload);
        self.send_raw(&frame);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, 1, text.as_bytes());
    }

    pub fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string());
    }

    pub fn say(&mut self, text: &str) {
        self.send_json(&json!({"type": "say", "text": text}));
    }

    pub fn direct(&mut self, to: &str, text: &str, id: u64) {
        self.send_json(&json!({"type": "direct", "to": to, "text": text, "id": id}));
    }

    /// The next frame: (opcode, payload); panics on EOF or after [`WAIT`].
    pub fn recv_frame(&mut self) -> (u8, Vec<u8>) {
        self.try_recv_frame()
            .expect("a frame, not the end of the stream")
    }

    /// The next frame, or `None` at EOF.
    pub fn try_recv_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            assert!(Instant::now() < deadline, "no frame within {WAIT:?}");
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(err) => panic!("read: {err}"),
            }
        }
    }

    fn take_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buffered;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[0] & 0x80, 0x80, "the server sends whole messages");
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(be) as usize, 10)
            }
            126 | 127 => return None,
            short => (short as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let opcode = b[0] & 0x0F;
        let payload = b[at..at + len].to_vec();
        self.buffered.drain(..at + len);
        Some((opcode, payload))
    }

    /// The next message, as JSON (it must be a text frame).
    pub fn recv(&mut self) -> Value {
        let (opcode, payload) = self.recv_frame();
        assert_eq!(opcode, 1, "a text frame, got {opcode}: {payload:?}");
        serde_json::from_slice(&payload).expect("JSON")
    }

    /// Messages until one of `kind` that `matches` (others, such as presence, are skipped),
    /// bounded by [`WAIT`].
    pub fn await_message(&mut self, kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let message = self.recv();
            if message["type"] == kind && matches(&message) {
                return message;
            }
            assert!(Instant::now() < deadline, "no {kind} within {WAIT:?}");
        }
    }

    /// The server's close frame: its status code; then the connection ends.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.recv_frame();
            if opcode == 8 {
                assert!(payload.len() >= 2, "a close frame with a code");
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                assert!(
                    self.try_recv_frame().is_none(),
                    "nothing after the close frame"
                );
                return code;
            }
        }
    }
}
