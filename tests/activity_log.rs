//! What an operator sees at the default log level (info) while people chat: `chatd` as a child
//! process, its stderr read line by line; one line per connect and per disconnect, and a burst
//! of connections costing a bounded number of lines plus a summary that accounts for the rest.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// How long any single expectation may wait before the test fails (a hang is a failure).
const WAIT: Duration = Duration::from_secs(10);

/// chatd's info-level limit on these lines per second (src/reactor/activity.rs).
const LINES_PER_WINDOW: usize = 20;

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// chatd serving ROOM only, at its default log level; killed when dropped.
struct Chatd {
    child: Child,
    room: SocketAddr,
    lines: Receiver<String>,
}

impl Chatd {
    fn start() -> Chatd {
        let port = free_port();
        let mut child = chatd::command(&[("--room-port", port)])
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
            room: SocketAddr::from(([127, 0, 0, 1], port)),
            lines,
        };
        chatd.next_line_with("ROOM listening on ");
        chatd
    }

    /// The next log line containing every one of `parts` (lines before it are passed over).
    fn next_line_with(&mut self, parts: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chatd never logged a line with {parts:?}"));
            if line.contains(parts) {
                return line;
            }
        }
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number before `word` in `line` ("3 connects and ..." -> 3 for "connects").
fn count_before(line: &str, word: &str) -> usize {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == word)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    words[at - 1]
        .parse()
        .unwrap_or_else(|_| panic!("no count before {word:?} in {line:?}"))
}

#[test]
fn each_connect_and_disconnect_is_one_info_line() {
    let mut chatd = Chatd::start();
    let client = TcpStream::connect(chatd.room).expect("connect");
    let peer = client.local_addr().expect("client address");
    let connected = chatd.next_line_with(&format!("ROOM {peer} ("));
    assert!(connected.contains(" INFO "), "{connected}");
    assert!(connected.ends_with("connected (1 open)"), "{connected}");

    // Read the prompt first: a close with unread data is a reset ("peer reset").
    let mut prompt = [0u8; 6];
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    std::io::Read::read_exact(&mut &client, &mut prompt).expect("alias?");
    drop(client);
    let closed = chatd.next_line_with(&format!("ROOM {peer} ("));
    assert!(closed.contains(" INFO "), "{closed}");
    assert!(closed.ends_with("closed: peer closed (0 open)"), "{closed}");
}

#[test]
fn a_burst_of_connections_is_rate_limited_and_summed_up() {
    const CONNECTIONS: usize = 6 * LINES_PER_WINDOW;
    let chatd = Chatd::start();
    let clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect(chatd.room).expect("connect"))
        .collect();
    drop(clients);

    // Every connect and disconnect is either a line of its own or counted in a summary.
    let (mut connects, mut disconnects, mut own_lines) = (0, 0, 0);
    let deadline = Instant::now() + WAIT;
    while connects < CONNECTIONS || disconnects < CONNECTIONS {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = chatd.lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!("accounted for {connects} connects and {disconnects} disconnects only")
        });
        if line.contains("not logged") {
            assert!(line.contains(" INFO "), "{line}");
            connects += count_before(&line, "connects");
            disconnects += count_before(&line, "disconnects");
        } else if line.contains(") connected (") {
            connects += 1;
            own_lines += 1;
        } else if line.contains(") closed: ") {
            disconnects += 1;
            own_lines += 1;
        }
    }
    assert_eq!((connects, disconnects), (CONNECTIONS, CONNECTIONS));
    // 240 events within far less than the 6 s it would take to log them all at the limit.
    assert!(
        own_lines < 2 * CONNECTIONS,
        "{own_lines} lines: nothing was rate-limited"
    );
}
