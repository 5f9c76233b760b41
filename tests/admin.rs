//! The admin port over real sockets: `chatd --admin-port 0` as a child process, its address
//! read from the line it logs, `GET /metrics` checked line by line against the traffic a ROOM
//! client made, and bad requests answered without disturbing chat clients.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::{Client, WAIT};

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// chatd with ROOM on a free port, every other protocol off, and `extra` flags; killed when
/// dropped.
struct Chatd {
    child: Child,
    room: SocketAddr,
    lines: Receiver<String>,
}

impl Chatd {
    fn start(extra: &[&str]) -> Chatd {
        let mut child = chatd::command(&[("--room-port", free_port())])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chatd");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut chatd = Chatd {
            child,
            room: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        chatd.room = chatd.listening_on("ROOM listening on ");
        chatd
    }

    /// The log lines up to and including the first one containing `prefix`.
    fn lines_through(&mut self, prefix: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chatd never logged {prefix:?}; got {lines:?}"));
            let done = line.contains(prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// The address in the first log line containing `prefix` (lines before it are skipped).
    fn listening_on(&mut self, prefix: &str) -> SocketAddr {
        let lines = self.lines_through(prefix);
        let line = lines.last().map(String::as_str).unwrap_or_default();
        let (_, rest) = line.split_once(prefix).unwrap_or_default();
        let addr = rest.split_whitespace().next().unwrap_or_default();
        addr.parse()
            .unwrap_or_else(|_| panic!("no socket address in {line:?}"))
    }

    fn admin(&mut self) -> SocketAddr {
        self.listening_on("ADMIN listening on ")
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer: status code, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Send `request` as given, then read until the server closes.
fn exchange(admin: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(admin).expect("connect to the admin port");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(request).expect("send the request");
    read_answer(&mut stream)
}

fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("the admin port answers and closes");
    let text = String::from_utf8(raw).expect("a text answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("a header");
            (name.to_ascii_lowercase(), value.to_string())
        })
        .collect();
    let answer = Answer {
        status,
        headers,
        body: body.to_string(),
    };
    assert_eq!(
        answer.header("content-length"),
        Some(answer.body.len().to_string().as_str()),
        "Content-Length must match the body"
    );
    answer
}

/// Every line of the exposition is `# HELP`, `# TYPE` or `name{labels} value`; returns the
/// samples as (series, value).
fn parse_exposition(body: &str) -> Vec<(String, f64)> {
    assert!(body.ends_with('\n'), "the text ends with a newline");
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP chatd_") || comment.starts_with("TYPE chatd_"),
                "unexpected comment {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = series[name_end..]
                .strip_prefix('{')
                .and_then(|rest| rest.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels in {line:?}"));
            for pair in labels.split(',') {
                let (label, quoted) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                assert!(quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'));
            }
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            number => number
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.push((series.to_string(), value));
    }
    samples
}

fn metrics(admin: SocketAddr) -> Vec<(String, f64)> {
    let answer = exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    parse_exposition(&answer.body)
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(name, _)| name == series)
        .unwrap_or_else(|| panic!("{series} is missing"))
        .1
}

const ALIAS: &str = "alice";
const LINE: &[u8] = b"alice: hello there";

fn join_and_say_hello(room: SocketAddr) -> Client {
    let mut alice = Client::join(room, ALIAS);
    alice.send(LINE);
    alice.expect(LINE);
    alice
}

#[test]
fn metrics_show_the_room_connection_and_its_traffic_exactly() {
    let mut chatd = Chatd::start(&["--admin-port", "0"]);
    let admin = chatd.admin();
    let _alice = join_and_say_hello(chatd.room);

    let samples = metrics(admin);
    let room = |name: &str| value(&samples, &format!("{name}{{protocol=\"room\"}}"));
    assert_eq!(room("chatd_connections_open"), 1.0);
    assert_eq!(room("chatd_connections_accepted_total"), 1.0);
    assert_eq!(room("chatd_frames_in_total"), 1.0);
    // In: the alias, then the line. Out: the prompt, the join notice, the greeting, the line.
    assert_eq!(
        room("chatd_bytes_in_total"),
        (ALIAS.len() + LINE.len()) as f64
    );
    let out = b"alias?".len()
        + format!("b'{ALIAS}' esta conectado ao chat").len()
        + b"Voce esta conectado ao servidor!".len()
        + LINE.len();
    assert_eq!(room("chatd_bytes_out_total"), out as f64);
    assert_eq!(
        value(
            &samples,
            "chatd_connections_closed_total{protocol=\"room\",reason=\"peer_closed\"}"
        ),
        0.0
    );
    assert!(value(&samples, "chatd_loop_turn_duration_seconds_count") > 0.0);
    assert!(
        value(
            &samples,
            "chatd_loop_turn_duration_seconds_bucket{le=\"+Inf\"}"
        ) > 0.0
    );
    // Only the enabled protocol is shown, and the admin connection is not a ROOM one.
    assert!(!samples.iter().any(|(name, _)| name.contains("bin24")));
    assert_eq!(value(&samples, "chatd_admin_connections_open"), 1.0);
}

#[test]
fn a_bad_request_gets_400_and_the_room_client_goes_on_undisturbed() {
    let mut chatd = Chatd::start(&["--admin-port", "0"]);
    let admin = chatd.admin();
    let mut alice = join_and_say_hello(chatd.room);

    let bad = exchange(admin, b"BLAH\r\n\r\n");
    assert_eq!(bad.status, 400);
    assert_eq!(exchange(admin, b"GET / HTTP/1.1\r\n\r\n").status, 404);
    let post = exchange(
        admin,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));
    let mut oversized = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    oversized.resize(20_000, b'a');
    assert_eq!(exchange(admin, &oversized).status, 400);

    // A request arriving in pieces is answered once whole.
    let mut stream = TcpStream::connect(admin).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(b"GET /met").expect("first piece");
    stream.flush().expect("flush");
    stream
        .write_all(b"rics HTTP/1.1\r\n\r\n")
        .expect("second piece");
    assert_eq!(read_answer(&mut stream).status, 200);

    alice.send(b"alice: still here");
    alice.expect(b"alice: still here");
    let samples = metrics(admin);
    assert_eq!(
        value(&samples, "chatd_connections_open{protocol=\"room\"}"),
        1.0
    );
    assert_eq!(
        value(&samples, "chatd_admin_responses_total{code=\"400\"}"),
        2.0
    );
    assert_eq!(
        value(&samples, "chatd_admin_responses_total{code=\"404\"}"),
        1.0
    );
    assert_eq!(
        value(&samples, "chatd_admin_responses_total{code=\"405\"}"),
        1.0
    );
    // The request in pieces; this one is counted once answered.
    assert_eq!(
        value(&samples, "chatd_admin_responses_total{code=\"200\"}"),
        1.0
    );
}

#[test]
fn a_silent_admin_connection_is_closed_at_its_deadline_and_frees_its_slot() {
    let mut chatd = Chatd::start(&[
        "--admin-port",
        "0",
        "--admin-connections-max",
        "1",
        "--admin-request-timeout-ms",
        "300",
    ]);
    let admin = chatd.admin();
    let mut alice = join_and_say_hello(chatd.room);

    // Holds the only slot, sends nothing.
    let mut silent = TcpStream::connect(admin).expect("connect");
    silent.set_read_timeout(Some(WAIT)).expect("timeout");
    // Over the cap: answered 503 at once, not left in the backlog.
    let refused = exchange(admin, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body, "service unavailable\n");
    let mut rest = Vec::new();
    silent
        .read_to_end(&mut rest)
        .expect("closed, not timed out on our side");
    assert!(rest.is_empty(), "no answer to no request");
    // The slot is free again: served, alone.
    let answer = exchange(admin, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(answer.status, 200);
    let samples = parse_exposition(&answer.body);
    assert_eq!(value(&samples, "chatd_admin_connections_open"), 1.0);
    assert_eq!(
        value(&samples, "chatd_admin_responses_total{code=\"503\"}"),
        1.0
    );

    alice.send(b"alice: after");
    alice.expect(b"alice: after");
}

#[test]
fn without_the_flag_there_is_no_admin_port() {
    let mut chatd = Chatd::start(&["--stats-interval-ms", "50"]);
    // The first statistics line comes after every listener was logged.
    let logged = chatd.lines_through("stats: ");
    assert!(
        !logged.iter().any(|line| line.contains("ADMIN")),
        "{logged:?}"
    );
}

/// The attack 6: idle connections to the admin port. The slots fill, and every
/// connection beyond them is answered 503 and closed at once, so a real request never waits
/// behind the idle ones in the backlog (it used to get no answer within 60 s).
#[test]
fn idle_admin_connections_cannot_starve_a_request() {
    let mut chatd = Chatd::start(&["--admin-port", "0"]);
    let admin = chatd.admin();
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(admin).expect("connect"))
        .collect();
    let started = Instant::now();
    let answer = exchange(admin, b"GET /metrics HTTP/1.1\r\n\r\n");
    let waited = started.elapsed();
    // The 4 slots are held by idle connections until their 2 s deadline: a 503, at once.
    assert_eq!(answer.status, 503);
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    drop(idle);
}
