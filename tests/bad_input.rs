//! The bad-input matrix: every protocol on one real server, over real sockets.
//!
//! Each case opens a fresh connection, sends something a client should not send (truncated
//! frames, lying or oversized lengths, invalid UTF-8, control characters, unknown types,
//! frames out of order, floods of tiny frames, silence) and asserts the documented answer
//! (docs/PROTOCOLS.md): the error frame where the protocol has one, and whether the connection
//! is closed or kept. After every case, well-behaved witness clients of every protocol, signed
//! in before the first case, must still be served, and the server's open connection count must
//! come back to its baseline: bad input touches only the connection that sent it.
//!
//! Frames are written by hand from the contract, not with the library's codecs, so a codec
//! bug cannot hide behind a matching helper.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{find, TempDir, TestServer, WAIT};
use switchboard::config::Config;

/// Deadlines shortened so that silence cases finish in a fraction of a second. ROOM's and
/// TCRP's cases need one round trip before their deadline; BIN24's, CCM's and MATOU's include
/// clients that try several times before signing in, so theirs leaves room for a loaded CI
/// machine.
const HANDSHAKE_TIMEOUT_MS: u64 = 300;
const IDENTIFY_TIMEOUT_MS: u64 = 1_500;

fn config(data: &TempDir) -> Config {
    Config {
        bin24_port: Some(0),
        ccm_port: Some(0),
        matou_port: Some(0),
        ocm_tcp_port: Some(0),
        ocm_udp_port: Some(0),
        web_port: Some(0),
        room_handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS,
        handshake_timeout_ms: IDENTIFY_TIMEOUT_MS,
        ocm_tcrp_request_timeout_ms: HANDSHAKE_TIMEOUT_MS,
        data_dir: data.0.clone(),
        ..Config::for_tests()
    }
}

/// A raw TCP client: sends bytes, accumulates what arrives, waits (bounded) for what it expects.
struct Raw {
    label: String,
    stream: TcpStream,
    received: Vec<u8>,
    /// Where the next search for an expected answer starts, so an old answer is not taken for a
    /// new one.
    cursor: usize,
    closed: bool,
}

impl Raw {
    fn connect(addr: SocketAddr, label: &str) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            label: label.to_string(),
            stream,
            received: Vec::new(),
            cursor: 0,
            closed: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// One read; false at EOF or reset.
    fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 65_536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.received.extend_from_slice(&chunk[..n]);
                true
            }
            Err(err) if err.kind() == ErrorKind::ConnectionReset => false,
            Err(err) => panic!("{}: nothing arrived: {err}", self.label),
        }
    }

    /// Wait until `needle` arrives after the cursor; move the cursor past it.
    fn expect(&mut self, needle: &[u8]) {
        loop {
            if let Some(at) = find(&self.received[self.cursor..], needle) {
                self.cursor += at + needle.len();
                return;
            }
            assert!(
                !self.closed && self.read_more(),
                "{}: closed before {:?} arrived; got {:?}",
                self.label,
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.received[self.cursor..])
            );
        }
    }

    /// Wait for the server to close the connection (bounded by the read timeout).
    fn expect_closed(&mut self) {
        let started = Instant::now();
        while !self.closed {
            if !self.read_more() {
                self.closed = true;
            }
            assert!(started.elapsed() < WAIT * 2, "{}: not closed", self.label);
        }
    }
}

/// A client that connects and sends `bytes` (maybe nothing) but never identifies is closed at
/// the handshake deadline and not before it, after the protocol's error frame starting with
/// `answer` (BIN24 has none: nothing at all).
fn closed_at_deadline(addr: SocketAddr, label: &str, bytes: &[u8], answer: &[u8]) {
    const _: () = assert!(IDENTIFY_TIMEOUT_MS > HANDSHAKE_TIMEOUT_MS);
    let started = Instant::now();
    let mut silent = Raw::connect(addr, label);
    silent.send(bytes);
    silent.expect_closed();
    assert!(
        started.elapsed() >= Duration::from_millis(IDENTIFY_TIMEOUT_MS),
        "{label}: closed after {:?}, before the deadline",
        started.elapsed()
    );
    assert!(
        silent.received.starts_with(answer) && (answer.is_empty() == silent.received.is_empty()),
        "{label}: got {:?}, expected {answer:?}",
        String::from_utf8_lossy(&silent.received)
    );
}

fn be32(value: i32) -> [u8; 4] {
    value.to_be_bytes()
}

// ---------------------------------------------------------------------------------------------
// Frame builders, from the contract's tables.

/// BIN24: len (LE u16, header included), type (LE u16), messageID (LE u32), SRC, DST, body.
fn bin24(kind: u16, id: u32, src: &[u8], dst: &[u8], body: &[u8]) -> Vec<u8> {
    let len = (24 + body.len()) as u16;
    let mut frame = Vec::with_capacity(usize::from(len));
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&kind.to_le_bytes());
    frame.extend_from_slice(&id.to_le_bytes());
    for name in [src, dst] {
        let mut field = [0u8; 8];
        field[..name.len()].copy_from_slice(name);
        frame.extend_from_slice(&field);
    }
    frame.extend_from_slice(body);
    frame
}

/// CCM: the header lines, a blank line, the content (with Content-Length).
fn ccm(kind: &str, attributes: &[(&str, &str)], content: &[u8]) -> Vec<u8> {
    let mut message = format!("CCM\\1.0 {kind}\n");
    for (key, value) in attributes {
        message.push_str(&format!("{key}: {value}\n"));
    }
    message.push_str(&format!("Content-Length: {}\n\n", content.len()));
    let mut bytes = message.into_bytes();
    bytes.extend_from_slice(content);
    bytes
}

fn ccm_error(reason: &str) -> Vec<u8> {
    format!("CCM\\1.0 Error\nReason: {reason}\n").into_bytes()
}

/// MATOU: i32 type, then fields; a string is an i32 byte count and the bytes.
fn matou(kind: i32, fields: &[&[u8]]) -> Vec<u8> {
    let mut packet = be32(kind).to_vec();
    for field in fields {
        packet.extend_from_slice(field);
    }
    packet
}

fn matou_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = be32(bytes.len() as i32).to_vec();
    out.extend_from_slice(bytes);
    out
}

/// MATOU ERROR (17) with its code; the reason string follows.
fn matou_error(code: i32) -> Vec<u8> {
    let mut bytes = be32(17).to_vec();
    bytes.extend_from_slice(&be32(code));
    bytes
}

/// TCRP: RoomNameSize, Operation, State, 29-byte big-endian payload size, room name, payload.
fn tcrp(room: &[u8], operation: u8, state: u8, payload_bytes: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![room.len() as u8, operation, state];
    bytes.extend_from_slice(&[0u8; 21]);
    bytes.extend_from_slice(&payload_bytes.to_be_bytes());
    bytes.extend_from_slice(room);
    bytes.extend_from_slice(payload);
    bytes
}

fn ocm_json(name: &str, udp: SocketAddr) -> Vec<u8> {
    format!(
        "{{\"user_name\": \"{name}\", \"user_address\": [\"{}\", {}]}}",
        udp.ip(),
        udp.port()
    )
    .into_bytes()
}

/// The 500 answer's fixed header bytes after RoomNameSize: the operation echoed, state 3.
const TCRP_MALFORMED_STATE: u8 = 3;

// ---------------------------------------------------------------------------------------------
// Witnesses: one well-behaved client per protocol, checked after every case.

struct Witnesses {
    room: Raw,
    bin24: Raw,
    ccm: Raw,
    matou: Raw,
    ocm_tcp: SocketAddr,
    checks: u32,
    baseline: u64,
}

impl Witnesses {
    fn sign_in(server: &TestServer) -> Witnesses {
        let mut room = Raw::connect(server.room, "room witness");
        room.expect(b"alias?");
        room.send(b"wroom");
        room.expect(b"Voce esta conectado ao servidor!");

        let mut bin24 = Raw::connect(server.bin24.expect("BIN24"), "bin24 witness");
        // An answer to nobody registers the name without side effects.
        bin24.send(&self::bin24(1, u32::MAX, b"wbin24", b"nobody", b"200"));

        let mut ccm = Raw::connect(server.ccm.expect("CCM"), "ccm witness");
        ccm.send(&self::ccm("Identity", &[], b"wccm"));
        ccm.expect(b"CCM\\1.0 Identity\nUser: ");

        let mut matou = Raw::connect(server.matou.expect("MATOU"), "matou witness");
        matou.send(&self::matou(1, &[&matou_string(b"wmatou")]));
        matou.expect(&[0, 0, 0, 2, 1]);

        let mut witnesses = Witnesses {
            room,
            bin24,
            ccm,
            matou,
            ocm_tcp: server.ocm_tcp.expect("OCM"),
            checks: 0,
            baseline: 4,
        };
        witnesses.check();
        server.wait_connections(witnesses.baseline);
        witnesses
    }

    /// Every witness is still served: each gets an answer that only a working connection gets.
    fn check(&mut self) {
        self.checks += 1;
        let tag = format!("check{:05}", self.checks);

        self.room.send(tag.as_bytes());
        self.room.expect(tag.as_bytes());

        // A message to oneself comes back; answering it settles it (and comes back too).
        let id = self.checks;
        let message = bin24(0, id, b"wbin24", b"wbin24", tag.as_bytes());
        self.bin24.send(&message);
        self.bin24.expect(&message);
        let answer = bin24(1, id, b"wbin24", b"wbin24", b"200");
        self.bin24.send(&answer);
        self.bin24.expect(&answer);

        // An unknown addressee is answered with an Error and the connection stays.
        self.ccm.send(&ccm("Text", &[("Addressee", &tag)], b"hi"));
        self.ccm.expect(&ccm_error("unknown-addressee"));

        let mut broadcast = matou(5, &[&matou_string(b"wmatou")]);
        broadcast.extend_from_slice(&matou_string(tag.as_bytes()));
        self.matou.send(&matou(4, &[&matou_string(tag.as_bytes())]));
        self.matou.expect(&broadcast);

        // The TCRP listener still creates rooms.
        let mut tcrp_client = Raw::connect(self.ocm_tcp, "ocm witness");
        let udp: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        tcrp_client.send(&tcrp(
            tag.as_bytes(),
            1,
            0,
            ocm_json("w", udp).len() as u64,
            &ocm_json("w", udp),
        ));
        tcrp_client.expect(b"\"status\": 202");
        tcrp_client.expect_closed();
    }

    /// After a case: the witnesses work and the bad connection is gone.
    fn after_case(&mut self, server: &TestServer) {
        self.check();
        server.wait_connections(self.baseline);
    }
}

fn start(label: &str) -> (TempDir, TestServer, Witnesses) {
    let data = TempDir::new(label);
    let server = TestServer::start(config(&data));
    let witnesses = Witnesses::sign_in(&server);
    (data, server, witnesses)
}

// ---------------------------------------------------------------------------------------------
// ROOM: raw text, so "bad" input is silence and odd aliases; everything a member sends is
// relayed verbatim.

#[test]
fn room_bad_input_matrix() {
    let (_data, server, mut w) = start("bad-room");

    // Connects and sends nothing: closed at the handshake deadline, nobody is told.
    let mut silent = Raw::connect(server.room, "room silent");
    silent.expect(b"alias?");
    silent.expect_closed();
    w.after_case(&server);

    // Empty aliases do not reset the deadline.
    let mut stalling = Raw::connect(server.room, "room empty aliases");
    stalling.expect(b"alias?");
    stalling.send(b"\r\n");
    stalling.expect(b"alias?");
    stalling.send(b"\n");
    stalling.expect(b"alias?");
    stalling.expect_closed();
    w.after_case(&server);

    // Invalid UTF-8 and control characters in the alias: joined, shown as Python's repr.
    let mut odd = Raw::connect(server.room, "room odd alias");
    odd.expect(b"alias?");
    odd.send(b"\xff\x01al\x07\x1b[2J");
    let notice: &[u8] = b"b'\\xff\\x01al\\x07\\x1b[2J' esta conectado ao chat";
    odd.expect(notice);
    w.room.expect(notice);
    drop(odd);
    w.room
        .expect(b"b'\\xff\\x01al\\x07\\x1b[2J' acabou de sair do chat!");
    w.after_case(&server);

    // A flood of one-byte writes: every byte relayed, in order.
    let mut flood = Raw::connect(server.room, "room flood");
    flood.expect(b"alias?");
    flood.send(b"flooder");
    flood.expect(b"Voce esta conectado ao servidor!");
    let bytes: Vec<u8> = (0..5_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for byte in &bytes {
        flood.send(std::slice::from_ref(byte));
    }
    flood.expect(&bytes);
    w.room.expect(&bytes);
    drop(flood);
    w.room.expect(b"b'flooder' acabou de sair do chat!");
    w.after_case(&server);
}

// ---------------------------------------------------------------------------------------------
// BIN24: bad frames close the connection without an answer (the protocol has no error frame).

#[test]
fn bin24_bad_input_matrix() {
    let (_data, server, mut w) = start("bad-bin24");
    let addr = server.bin24.expect("BIN24");

    // Silence, and a truncated first frame then silence: never identified, closed at the
    // deadline.
    closed_at_deadline(addr, "bin24 silent", b"", b"");
    w.after_case(&server);
    closed_at_deadline(
        addr,
        "bin24 truncated",
        &bin24(0, 0, b"slow", b"wbin24", b"x")[..20],
        b"",
    );
    w.after_case(&server);

    let closing_cases: Vec<(&str, Vec<u8>)> = vec![
        // len below the header: checked as soon as its two bytes arrive.
        ("len below 24", vec![10, 0]),
        // len above 1024, announced without a body.
        ("len above 1024", vec![0xd0, 0x07]),
        ("len 65535", vec![0xff, 0xff]),
        (
            "type 2 from a client",
            bin24(2, 0, b"mallory", b"wbin24", b"x"),
        ),
        ("unknown type", bin24(9, 0, b"mallory", b"wbin24", b"x")),
        ("empty SRC", bin24(0, 0, b"", b"wbin24", b"x")),
        ("a witness's name, then another", {
            let mut two = bin24(1, 0, b"eve", b"nobody", b"200");
            two.extend_from_slice(&bin24(0, 1, b"wbin24", b"wbin24", b"spoof"));
            two
        }),
    ];
    for (label, bytes) in closing_cases {
        let mut bad = Raw::connect(addr, label);
        bad.send(&bytes);
        bad.expect_closed();
        assert!(
            bad.received.is_empty(),
            "{label}: closed without an answer, got {:?}",
            bad.received
        );
        w.after_case(&server);
    }

    // An answer to nothing as the first frame: it registers, nothing else happens.
    let mut answerer = Raw::connect(addr, "answer to nothing");
    answerer.send(&bin24(1, 77, b"ans", b"wbin24", b"200"));
    // Forwarded verbatim to its DST (online), settling nothing.
    w.bin24.expect(&bin24(1, 77, b"ans", b"wbin24", b"200"));
    let echo = bin24(0, 1, b"ans", b"ans", b"alive");
    answerer.send(&echo);
    answerer.expect(&echo);
    answerer.send(&bin24(1, 1, b"ans", b"ans", b"200"));
    answerer.expect(&bin24(1, 1, b"ans", b"ans", b"200"));
    drop(answerer);
    w.after_case(&server);

    // Invalid UTF-8 and control characters in names and body: bytes, relayed verbatim.
    let mut odd = Raw::connect(addr, "odd bytes");
    let frame = bin24(
        0,
        5,
        b"\xff\x01\x1b[",
        b"\xff\x01\x1b[",
        b"\x00\xff\x07\r\n",
    );
    odd.send(&frame);
    odd.expect(&frame);
    odd.send(&bin24(1, 5, b"\xff\x01\x1b[", b"\xff\x01\x1b[", b"200"));
    drop(odd);
    w.after_case(&server);

    // A flood of tiny frames in one burst: 20,000 answers to nobody, then a message to self.
    let mut flood = Raw::connect(addr, "flood");
    let mut burst = Vec::new();
    for id in 0..20_000u32 {
        burst.extend_from_slice(&bin24(1, id, b"flood", b"nobody", b""));
    }
    let last = bin24(0, 1, b"flood", b"flood", b"after the flood");
    burst.extend_from_slice(&last);
    flood.send(&burst);
    flood.expect(&last);
    flood.send(&bin24(1, 1, b"flood", b"flood", b"200"));
    drop(flood);
    w.after_case(&server);

    // A length that promises more than is sent, then silence: the server waits for the rest
    // (the frame is not cut short); the rest completes it.
    let mut liar = Raw::connect(addr, "truncated");
    liar.send(&bin24(1, 0, b"liar", b"nobody", b"200"));
    let whole = bin24(0, 2, b"liar", b"liar", &[b'z'; 100]);
    liar.send(&whole[..60]);
    w.check(); // the server serves others meanwhile
    liar.send(&whole[60..]);
    liar.expect(&whole);
    liar.send(&bin24(1, 2, b"liar", b"liar", b"200"));
    drop(liar);
    w.after_case(&server);
}

// ---------------------------------------------------------------------------------------------
// CCM: bad input gets an Error (or the HTTP answer) and, where the contract says so, a close.

#[test]
fn ccm_bad_input_matrix() {
    let (_data, server, mut w) = start("bad-ccm");
    let addr = server.ccm.expect("CCM");

    // Not CCM at all: the exact HTTP answer, then the close.
    let mut browser = Raw::connect(addr, "http client");
    browser.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    browser.expect(b"HTTP/1.1 400 Bad Request\r\n");
    browser.expect(b"I need to use this protocol!");
    browser.expect_closed();
    w.after_case(&server);

    // Binary garbage in the first four bytes: the same answer.
    let mut garbage = Raw::connect(addr, "binary garbage");
    garbage.send(&[0xff, 0x00, 0x1b, 0x07, 0x80]);
    garbage.expect(b"HTTP/1.1 400 Bad Request\r\n");
    garbage.expect_closed();
    w.after_case(&server);

    // Silence, a header cut short, and taken names then silence: never identified, so an
    // Error (not-identified) and the close at the deadline.
    let not_identified = ccm_error("not-identified");
    closed_at_deadline(addr, "ccm silent", b"", &not_identified);
    w.after_case(&server);
    closed_at_deadline(addr, "ccm truncated", b"CCM\\1.0 NotDef", &not_identified);
    w.after_case(&server);
    let mut taken_then_silent = ccm("Identity", &[], b"wccm");
    taken_then_silent.extend(ccm("Identity", &[], b"wccm"));
    closed_at_deadline(
        addr,
        "ccm name taken, then silence",
        &taken_then_silent,
        &ccm_error("name-taken"),
    );
    w.after_case(&server);

    let closing_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "header over 8 KiB",
            {
                let mut big = b"CCM\\1.0 Text\nX-Padding: ".to_vec();
                big.extend(std::iter::repeat_n(b'a', 9_000));
                big
            },
            "too-large",
        ),
        (
            "content length over 1 MiB",
            b"CCM\\1.0 Text\nAddressee: x\nContent-Length: 2000000\n\n".to_vec(),
            "too-large",
        ),
        (
            "content length that is not a number",
            b"CCM\\1.0 Text\nAddressee: x\nContent-Length: -5\n\n".to_vec(),
            "bad-header",
        ),
        (
            "a start line without a type",
            b"CCM\\1.0\nAddressee: x\nContent-Length: 1\n\nx".to_vec(),
            "bad-header",
        ),
    ];
    for (label, bytes, reason) in closing_cases {
        let mut bad = Raw::connect(addr, label);
        bad.send(&bytes);
        bad.expect(&ccm_error(reason));
        bad.expect_closed();
        w.after_case(&server);
    }

    // Identified, then out-of-contract messages.
    let identified = |label: &str, name: &str| {
        let mut client = Raw::connect(addr, label);
        client.send(&ccm("Identity", &[], name.as_bytes()));
        client.expect(b"CCM\\1.0 Identity\nUser: ");
        client
    };

    let mut no_addressee = identified("no addressee", "noaddr");
    no_addressee.send(&ccm("Text", &[], b"to whom?"));
    no_addressee.expect(&ccm_error("bad-header"));
    no_addressee.expect_closed();
    w.after_case(&server);

    let mut unknown_type = identified("unknown type", "bogus");
    unknown_type.send(&ccm("Bogus", &[("Addressee", "wccm")], b"x"));
    unknown_type.expect(&ccm_error("bad-header"));
    unknown_type.expect_closed();
    w.after_case(&server);

    let mut wrong_token = identified("wrong token", "badtoken");
    wrong_token.send(&ccm(
        "Text",
        &[
            ("User", "00000000000000000000000000000000"),
            ("Addressee", "wccm"),
        ],
        b"x",
    ));
    wrong_token.expect(&ccm_error("invalid-token"));
    wrong_token.expect_closed();
    w.after_case(&server);

    // A name that is not valid UTF-8: an Error, the connection stays for another try.
    let mut bad_name = Raw::connect(addr, "invalid UTF-8 name");
    bad_name.send(&ccm("Identity", &[], b"\xff\xfe\xfd"));
    bad_name.expect(&ccm_error("bad-header"));
    bad_name.send(&ccm("Identity", &[], b"retry"));
    bad_name.expect(b"CCM\\1.0 Identity\nUser: ");
    drop(bad_name);
    w.after_case(&server);

    // A taken name: an Error, the connection stays.
    let mut taken = Raw::connect(addr, "taken name");
    taken.send(&ccm("Identity", &[], b"wccm"));
    taken.expect(&ccm_error("name-taken"));
    drop(taken);
    w.after_case(&server);

    // A flood of tiny messages, then one that gets an answer: all processed, in order.
    let mut flood = identified("flood", "flooder");
    let mut burst = Vec::new();
    for _ in 0..5_000 {
        burst.extend_from_slice(&ccm("NotDefined", &[], b""));
    }
    burst.extend_from_slice(&ccm("Text", &[("Addressee", "nobody-here")], b"x"));
    flood.send(&burst);
    flood.expect(&ccm_error("unknown-addressee"));
    drop(flood);
    w.after_case(&server);

    // A Content-Length that promises more than is sent: the server waits for the rest.
    let mut liar = identified("truncated", "liar");
    let whole = ccm("Text", &[("Addressee", "wccm")], &[b'q'; 100]);
    liar.send(&whole[..whole.len() - 90]);
    w.check();
    liar.send(&whole[whole.len() - 90..]);
    w.ccm
        .expect(b"CCM\\1.0 Text\nSender: liar\nAddressee: wccm\n");
    w.ccm.expect(&[b'q'; 100]);
    drop(liar);
    w.after_case(&server);
}

// ---------------------------------------------------------------------------------------------
// MATOU: ERROR packets; a bad size or type also closes.

#[test]
fn matou_bad_input_matrix() {
    let (_data, server, mut w) = start("bad-matou");
    let addr = server.matou.expect("MATOU");

    closed_at_deadline(addr, "matou silent", b"", &matou_error(8));
    w.after_case(&server);
    closed_at_deadline(
        addr,
        "matou truncated",
        &matou(1, &[&matou_string(b"slowpoke")])[..9],
        &matou_error(8),
    );
    w.after_case(&server);

    let closing_cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("unknown type", matou(99, &[]), 1),
        ("a server-to-client type", matou(5, &[]), 1),
        ("negative size", matou(1, &[&be32(-1)]), 2),
        (
            "size over the limit, no body",
            matou(1, &[&be32(1 << 30)]),
            2,
        ),
    ];
    for (label, bytes, code) in closing_cases {
        let mut bad = Raw::connect(addr, label);
        bad.send(&bytes);
        bad.expect(&matou_error(code));
        bad.expect_closed();
        w.after_case(&server);
    }

    // Out of order: packets before sign-in are refused with ERROR 8 and the connection stays.
    let mut early = Raw::connect(addr, "before sign-in");
    early.send(&matou(4, &[&matou_string(b"hello?")]));
    early.expect(&matou_error(8));
    early.send(&matou(15, &[]));
    early.expect(&matou_error(8));
    // Names refused: invalid UTF-8, control characters, taken; the connection stays.
    for name in [&b"\xff\xfe"[..], b"a\x07b", b"", b"wmatou", b"two words"] {
        early.send(&matou(1, &[&matou_string(name)]));
        early.expect(&[0, 0, 0, 2, 0]);
    }
    early.send(&matou(1, &[&matou_string(b"late")]));
    early.expect(&[0, 0, 0, 2, 1]);
    w.matou.expect(&matou(3, &[&matou_string(b"late")]));

    // Answers to nothing: an accept with no request, ports for no link.
    early.send(&matou(8, &[&matou_string(b"wmatou")]));
    early.expect(&matou_error(6));
    early.send(&matou(
        10,
        &[&matou_string(b"wmatou"), &be32(1000), &be32(1001)],
    ));
    early.expect(&matou_error(7));
    // Control characters and invalid UTF-8 in a public message: ERROR 3, nothing broadcast.
    early.send(&matou(4, &[&matou_string(b"\x1b[2Jclear")]));
    early.expect(&matou_error(3));
    early.send(&matou(4, &[&matou_string(b"\xc3\x28")]));
    early.expect(&matou_error(3));
    // A truncated packet, then the rest: the server waits for the whole string.
    let whole = matou(4, &[&matou_string(b"patience pays")]);
    early.send(&whole[..10]);
    w.check();
    early.send(&whole[10..]);
    let mut broadcast = matou(5, &[&matou_string(b"late")]);
    broadcast.extend_from_slice(&matou_string(b"patience pays"));
    early.expect(&broadcast);
    w.matou.expect(&broadcast);
    drop(early);
    w.matou.expect(&matou(16, &[&matou_string(b"late")]));
    w.after_case(&server);

    // A flood of tiny packets: 5,000 sign-outs before sign-in, each refused in order.
    let mut flood = Raw::connect(addr, "flood");
    let mut burst = Vec::new();
    for _ in 0..5_000 {
        burst.extend_from_slice(&matou(15, &[]));
    }
    burst.extend_from_slice(&matou(1, &[&matou_string(b"flooder")]));
    flood.send(&burst);
    flood.expect(&[0, 0, 0, 2, 1]);
    let refusals = common::count(&flood.received, &matou_error(8));
    assert_eq!(refusals, 5_000, "one ERROR 8 per packet before sign-in");
    drop(flood);
    w.after_case(&server);
}

// ---------------------------------------------------------------------------------------------
// OCM: TCRP answers 500 (state 3) then closes; silence is closed at the request deadline;
// bad datagrams are dropped and a room's members keep chatting.

#[test]
fn ocm_bad_input_matrix() {
    let (_data, server, mut w) = start("bad-ocm");
    let addr = server.ocm_tcp.expect("OCM");
    let udp: SocketAddr = "127.0.0.1:40001".parse().expect("address");
    let payload = ocm_json("mallory", udp);

    let malformed_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "unknown operation",
            tcrp(b"r1", 9, 0, payload.len() as u64, &payload),
        ),
        (
            "state other than 0",
            tcrp(b"r2", 1, 2, payload.len() as u64, &payload),
        ),
        (
            "empty room name",
            tcrp(b"", 1, 0, payload.len() as u64, &payload),
        ),
        (
            "room name not UTF-8",
            tcrp(b"\xff\xfe", 1, 0, payload.len() as u64, &payload),
        ),
        ("empty payload", tcrp(b"r3", 1, 0, 0, b"")),
        ("payload not UTF-8", tcrp(b"r4", 1, 0, 3, b"\xff\xfe\xfd")),
        (
            "JSON of another shape",
            tcrp(b"r5", 1, 0, 11, b"[1, 2, 3.5]"),
        ),
        ("port out of range", {
            let port_zero = b"{\"user_name\": \"m\", \"user_address\": [\"1.2.3.4\", 0]}";
            tcrp(b"r6", 1, 0, port_zero.len() as u64, port_zero)
        }),
        // Answered from the header alone: the body is never read.
        (
            "payload size over the limit",
            tcrp(b"r7", 1, 0, 1 << 40, b""),
        ),
    ];
    for (label, bytes) in malformed_cases {
        let mut bad = Raw::connect(addr, label);
        bad.send(&bytes);
        bad.expect(b"\"status\": 500");
        bad.expect_closed();
        assert_eq!(
            bad.received.get(2),
            Some(&TCRP_MALFORMED_STATE),
            "{label}: state 3 in the answer header"
        );
        w.after_case(&server);
    }

    // Silence, and a header then silence: closed at the request deadline without an answer.
    for (label, bytes) in [
        ("sends nothing", Vec::new()),
        (
            "header only",
            tcrp(b"r8", 1, 0, payload.len() as u64, b"r8"),
        ),
    ] {
        let mut silent = Raw::connect(addr, label);
        silent.send(&bytes);
        silent.expect_closed();
        assert!(silent.received.is_empty(), "{label}: no answer");
        w.after_case(&server);
    }

    // Datagrams: garbage, oversized, wrong token and wrong room are dropped; members chat on.
    let chat = server.ocm_udp.expect("OCM UDP");
    let host_socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    host_socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let guest_socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    guest_socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let token = |operation: u8, name: &str, socket: &UdpSocket| {
        let payload = ocm_json(name, socket.local_addr().expect("address"));
        let mut client = Raw::connect(addr, name);
        client.send(&tcrp(b"den", operation, 0, payload.len() as u64, &payload));
        client.expect(b"\"status\": 202");
        client.expect_closed();
        let text = String::from_utf8_lossy(&client.received).into_owned();
        let at = text.find("\"token\": \"").expect("token") + 10;
        text[at..at + 64].to_string()
    };
    let host_token = token(1, "hosta", &host_socket);
    let _guest_token = token(2, "guestb", &guest_socket);
    let datagram = |room: &[u8], token: &[u8], message: &[u8]| {
        let mut bytes = vec![room.len() as u8, token.len() as u8];
        bytes.extend_from_slice(room);
        bytes.extend_from_slice(token);
        bytes.extend_from_slice(message);
        bytes
    };
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let bad_datagrams: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0xff],
        vec![200, 200, 1, 2, 3],
        vec![b'x'; 5_000],
        datagram(b"den", &[b'0'; 64], b"wrong token"),
        datagram(b"nowhere", host_token.as_bytes(), b"wrong room"),
        datagram(b"den", host_token.as_bytes(), b"\xff\xfe not UTF-8"),
    ];
    for bytes in &bad_datagrams {
        stranger.send_to(bytes, chat).expect("send");
        host_socket.send_to(bytes, chat).expect("send");
    }
    host_socket
        .send_to(
            &datagram(b"den", host_token.as_bytes(), b"still here"),
            chat,
        )
        .expect("send");
    let mut buf = [0u8; 8_192];
    let (n, _) = guest_socket
        .recv_from(&mut buf)
        .expect("the guest hears the host");
    assert_eq!(&buf[..n], "hosta: still here".as_bytes());
    w.after_case(&server);

    let stats = server.stop();
    assert!(
        stats.datagrams_dropped_in >= bad_datagrams.len() as u64,
        "bad datagrams are dropped and counted: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// WEB: HTTP refusals answer with a status and close; frame violations send a close frame
// with their code and close; a bad request inside the WebSocket is answered `error` or
// `refused` and the connection stays.

/// A client frame, masked, written from RFC 6455 by hand.
fn ws(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xA1, 0x02, 0xC3, 0x04];
    let mut frame = vec![first_byte];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65_536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(at, b)| b ^ mask[at % 4]));
    frame
}

fn ws_text(text: &str) -> Vec<u8> {
    ws(0x81, text.as_bytes())
}

const WS_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// The server's close frame with `code` (unmasked; its reason follows).
fn ws_close(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

fn web_open(addr: SocketAddr, label: &str) -> Raw {
    let mut client = Raw::connect(addr, label);
    client.send(WS_UPGRADE);
    client.expect(b"HTTP/1.1 101 Switching Protocols\r\n");
    client.expect(b"\r\n\r\n");
    client
}

#[test]
fn web_bad_input_matrix() {
    let (_data, server, mut w) = start("bad-web");
    let addr = server.web.expect("WEB");

    closed_at_deadline(addr, "web silent", b"", b"");
    w.after_case(&server);
    closed_at_deadline(addr, "web never signs in", WS_UPGRADE, b"HTTP/1.1 101 ");
    w.after_case(&server);
    closed_at_deadline(addr, "web truncated request", &WS_UPGRADE[..20], b"");
    w.after_case(&server);

    let mut huge_head = b"GET / HTTP/1.1\r\nX: ".to_vec();
    huge_head.extend(std::iter::repeat_n(b'a', 9_000));
    let http_cases: Vec<(&str, Vec<u8>, &[u8])> = vec![
        (
            "not HTTP",
            b"\x16\x03\x01 hello\r\n\r\n".to_vec(),
            b"HTTP/1.1 400 ",
        ),
        ("head too large", huge_head, b"HTTP/1.1 400 "),
        (
            "another path",
            b"GET /etc/passwd HTTP/1.1\r\n\r\n".to_vec(),
            b"HTTP/1.1 404 ",
        ),
        (
            "another method",
            b"DELETE / HTTP/1.1\r\n\r\n".to_vec(),
            b"HTTP/1.1 405 ",
        ),
        (
            "another origin",
            [
                &WS_UPGRADE[..WS_UPGRADE.len() - 2],
                b"Origin: http://evil\r\n\r\n",
            ]
            .concat(),
            b"HTTP/1.1 403 ",
        ),
    ];
    for (label, bytes, answer) in http_cases {
        let mut bad = Raw::connect(addr, label);
        bad.send(&bytes);
        bad.expect(answer);
        bad.expect_closed();
        w.after_case(&server);
    }

    let mut huge_length = vec![0x81, 0xFF];
    huge_length.extend_from_slice(&u64::MAX.to_be_bytes());
    let frame_cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved bit", ws(0xC1, b"x"), 1002),
        ("unknown opcode", ws(0x83, b""), 1002),
        ("binary", ws(0x82, b"\x00\x01"), 1003),
        ("invalid UTF-8", ws(0x81, b"\xc3\x28"), 1007),
        ("a 64-bit length with its top bit", huge_length, 1002),
        (
            "over the size limit, no body",
            ws(0x81, &[b'a'; 5_000])[..8].to_vec(),
            1009,
        ),
        ("continuation without a start", ws(0x80, b"x"), 1002),
        ("fragmented ping", ws(0x09, b""), 1002),
    ];
    for (label, bytes, code) in frame_cases {
        let mut bad = web_open(addr, label);
        bad.send(&bytes);
        bad.expect(&[0x88]);
        bad.expect(&ws_close(code));
        bad.expect_closed();
        w.after_case(&server);
    }

    // Inside the WebSocket: refused requests, and the connection stays.
    let mut early = web_open(addr, "web before sign-in");
    for (request, answer) in [
        ("{not json", r#""reason":"bad-request""#),
        (r#"{"type":"teleport"}"#, r#""reason":"bad-request""#),
        (
            r#"{"type":"say","text":"hi"}"#,
            r#""reason":"not-signed-in""#,
        ),
        (
            r#"{"type":"signin","name":"wmatou"}"#,
            r#""reason":"name-taken""#,
        ),
        (
            r#"{"type":"signin","name":"a\u0007b"}"#,
            r#""reason":"invalid-name""#,
        ),
        (r#"{"type":"signin","name":"late"}"#, r#""type":"welcome""#),
        (
            r#"{"type":"say","text":"\u001b[2J"}"#,
            r#""reason":"invalid-text""#,
        ),
        (
            r#"{"type":"direct","to":"nobody","text":"x","id":1}"#,
            r#""reason":"unknown-addressee""#,
        ),
    ] {
        early.send(&ws_text(request));
        early.expect(answer.as_bytes());
    }
    w.matou.expect(&matou(3, &[&matou_string(b"late")]));
    // A truncated frame, then the rest: the server waits for the whole frame.
    let whole = ws_text(r#"{"type":"say","text":"patience pays"}"#);
    early.send(&whole[..7]);
    w.check();
    early.send(&whole[7..]);
    early.expect(br#""text":"patience pays""#);
    w.room.expect(b"late: patience pays");
    drop(early);
    w.matou.expect(&matou(16, &[&matou_string(b"late")]));
    w.after_case(&server);

    // A flood of tiny frames: 5,000 pings, each answered in order.
    let mut flood = web_open(addr, "web flood");
    let mut burst = Vec::new();
    for _ in 0..5_000 {
        burst.extend_from_slice(&ws_text(r#"{"type":"ping"}"#));
    }
    burst.extend_from_slice(&ws_text(r#"{"type":"signin","name":"flooder"}"#));
    flood.send(&burst);
    flood.expect(br#""type":"welcome""#);
    let pongs = common::count(&flood.received, br#"{"type":"pong"}"#);
    assert_eq!(pongs, 5_000, "one pong per ping");
    drop(flood);
    w.after_case(&server);
}
