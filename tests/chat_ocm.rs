//! `chat ocm` against a fake OCM server, over real sockets, driving the real binary; then
//! clients against the real server.
//!
//! The test thread plays the server: a TCP listener for the TCRP request and a UDP socket for
//! the chat, so each test can check exactly which bytes the client sends (compared with the
//! contract's vectors) and can answer what it needs to (a completion, a refusal, an
//! acknowledgement first, a malformed answer, a removal, a room closing).
//!
//! Every wait is for an event (a connection, a datagram, a line printed, the process exiting)
//! and is bounded by `WAIT`, so a broken client fails with a message instead of hanging the
//! suite. Children are killed on every path by `Drop`, panics included.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use switchboard::protocol::ocm::json;

mod child;
mod lobby;

use chatd::Chatd;
use child::{show, Client};

const WAIT: Duration = Duration::from_secs(10);

/// How long the fake server listens for datagrams that must NOT come. Only absence is checked
/// this way: a slow client can make such a check pass wrongly, never fail wrongly.
const QUIET: Duration = Duration::from_millis(300);

const TOKEN: &str = "abababababababababababababababababababababababababababababababab";

/// vectors/ocm-tcrp-requests.tsv, with the client's UDP port 40001 / 40002.
const REQUEST_CREATE: &str = "050100000000000000000000000000000000000000000000000000000000003c6c6f6262797b22757365725f6e616d65223a2022616c696365222c2022757365725f61646472657373223a205b223132372e302e302e31222c2034303030315d7d";
const REQUEST_JOIN_JAPANESE: &str = "0902000000000000000000000000000000000000000000000000000000000043e983a8e5b18be4b8807b22757365725f6e616d65223a20225c75353932615c7539306365222c2022757365725f61646472657373223a205b223132372e302e302e31222c2034303030325d7d";

/// vectors/ocm-tcrp-answers.tsv (the token is TOKEN).
const SUCCESS_CREATE: &str = "05010200000000000000000000000000000000000000000000000000000000b97b22737461747573223a203230322c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75356238635c75346538365c75333035375c75333037655c75333035375c75333035665c7533303032222c2022746f6b656e223a202261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162227d";
const SUCCESS_JOIN: &str = "05020200000000000000000000000000000000000000000000000000000000b97b22737461747573223a203230322c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75356238635c75346538365c75333035375c75333037655c75333035375c75333035665c7533303032222c2022746f6b656e223a202261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162227d";
const EXISTS: &str = "05010000000000000000000000000000000000000000000000000000000000677b22737461747573223a203430302c20226d657373616765223a20225c75393065385c7535633462206c6f626279205c75333036665c75333035395c75333036375c75333036625c75356235385c75353732385c75333035375c75333037655c7533303539227d";
const MISSING: &str = "070200000000000000000000000000000000000000000000000000000000005d7b22737461747573223a203430302c20226d657373616765223a20225c75393065385c7535633462206e6f7768657265205c75333036665c75356235385c75353732385c75333035375c75333037655c75333035625c7533303933227d";
const MALFORMED: &str = "01010300000000000000000000000000000000000000000000000000000000c87b22737461747573223a203530302c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75356238635c75346538365c75333036375c75333034645c75333037655c75333035625c75333039335c75333036375c75333035375c75333035665c75333030325c6e5c75353136355c75353239625c75333035375c75373666345c75333035375c75333036365c75333034665c75333036305c75333035355c75333034345c7533303032227d";
const ACK: &str = "050101000000000000000000000000000000000000000000000000000000006c7b22737461747573223a203230302c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75353364375c75373430365c75333035375c75333037655c75333035375c75333035665c7533303032227d";

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A request vector with the client's real UDP port in place of the vector's, and the
/// header's payload size to match.
fn request_vector(hex: &str, vector_port: u16, port: u16) -> Vec<u8> {
    let bytes = unhex(hex);
    let body_start = 32 + usize::from(bytes[0]);
    let json = show(&bytes[body_start..]).replace(&vector_port.to_string(), &port.to_string());
    let mut want = bytes[..body_start].to_vec();
    want[3..32].fill(0);
    want[24..32].copy_from_slice(&(json.len() as u64).to_be_bytes());
    want.extend_from_slice(json.as_bytes());
    want
}

/// What the client's datagram for `message` must be.
fn datagram(room: &str, message: &str) -> Vec<u8> {
    let mut d = vec![room.len() as u8, TOKEN.len() as u8];
    d.extend_from_slice(room.as_bytes());
    d.extend_from_slice(TOKEN.as_bytes());
    d.extend_from_slice(message.as_bytes());
    d
}

struct FakeServer {
    listener: TcpListener,
    udp: UdpSocket,
    tcp_port: u16,
    udp_port: u16,
}

impl FakeServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake TCRP listener");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind the fake UDP socket");
        FakeServer {
            tcp_port: listener.local_addr().expect("TCP address").port(),
            udp_port: udp.local_addr().expect("UDP address").port(),
            listener,
            udp,
        }
    }

    fn client(&self, args: &[&str]) -> Client {
        let mut all: Vec<&str> = vec!["ocm"];
        all.extend_from_slice(args);
        let (tcp, udp) = (self.tcp_port.to_string(), self.udp_port.to_string());
        all.extend_from_slice(&["--tcp-port", &tcp, "--udp-port", &udp]);
        Client::spawn(&all)
    }

    /// Accepts the client's connection, waiting at most `WAIT`.
    fn accept(&self) -> TcpStream {
        let stream = child::accept_within(&self.listener, "fake server");
        stream
            .set_read_timeout(Some(WAIT))
            .expect("fake server: set read timeout");
        stream
    }

    /// Accepts and reads one whole request; returns the connection, the request's bytes and
    /// the UDP address it names.
    fn request(&self) -> (TcpStream, Vec<u8>, SocketAddr) {
        let mut stream = self.accept();
        let mut request = vec![0u8; 32];
        stream
            .read_exact(&mut request)
            .expect("fake server: the request's header");
        assert!(
            request[3..24].iter().all(|&b| b == 0),
            "payload size {request:?}"
        );
        let payload = u64::from_be_bytes(request[24..32].try_into().unwrap()) as usize;
        let rest = usize::from(request[0]) + payload;
        request.resize(32 + rest, 0);
        stream
            .read_exact(&mut request[32..])
            .expect("fake server: the request's body");
        let json = std::str::from_utf8(&request[32 + usize::from(request[0])..])
            .expect("the payload is UTF-8");
        let payload = json::parse_request(json).expect("the payload is the request JSON");
        (stream, request, payload.user_address)
    }

    /// Reads the request, checks it against `want` (hex of the vector, whose UDP port was
    /// `vector_port`), answers with `answer`. Returns the client's UDP address.
    fn answer(&self, want: &str, vector_port: u16, answer: &[&str]) -> (TcpStream, SocketAddr) {
        let (mut stream, request, udp) = self.request();
        assert_eq!(
            show(&request),
            show(&request_vector(want, vector_port, udp.port())),
            "the request's bytes"
        );
        assert_eq!(udp.ip().to_string(), "127.0.0.1", "the UDP address");
        for part in answer {
            stream.write_all(&unhex(part)).expect("fake server: answer");
        }
        (stream, udp)
    }

    /// alice has created lobby: returns the client's UDP address.
    fn created(&self, client: &mut Client) -> SocketAddr {
        let (_stream, udp) = self.answer(REQUEST_CREATE, 40001, &[SUCCESS_CREATE]);
        client.stderr.wait_for("chat: created lobby as alice\n");
        udp
    }

    fn send_to(&self, text: &str, client: SocketAddr) {
        self.udp
            .send_to(text.as_bytes(), client)
            .expect("fake server: send a datagram");
    }

    /// The next datagram and its source, or `None` if nothing came within `wait`.
    fn datagram_within(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.udp
                .set_read_timeout(Some(left))
                .expect("fake server: set the UDP timeout");
            match self.udp.recv_from(&mut buf) {
                Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("fake server: receive failed: {e}"),
            }
        }
    }

    /// The next datagram is exactly `want`, from `from`.
    #[track_caller]
    fn expect_datagram(&self, want: &[u8], from: SocketAddr) {
        let Some((got, source)) = self.datagram_within(WAIT) else {
            panic!(
                "fake server: no datagram within {WAIT:?}; expected {:?}",
                show(want)
            );
        };
        assert_eq!(show(&got), show(want), "the client's datagram");
        assert_eq!(source, from, "the datagram's source");
    }

    #[track_caller]
    fn expect_quiet(&self, what: &str) {
        if let Some((got, _)) = self.datagram_within(QUIET) {
            panic!("fake server: {what}, got {:?}", show(&got));
        }
    }
}

#[track_caller]
fn assert_exit(client: &mut Client, code: i32) -> String {
    let status = client.wait_exit();
    let stderr = client.stderr.wait_closed();
    assert_eq!(status.code(), Some(code), "stderr: {stderr:?}");
    stderr
}

#[test]
fn create_sends_the_vector_request_then_lines_as_datagrams() {
    let server = FakeServer::start();
    let mut client = server.client(&["create", "lobby", "--name", "alice"]);
    let udp = server.created(&mut client);

    client.type_text(b"hello\n");
    server.expect_datagram(&datagram("lobby", "hello"), udp);
    client.type_text("caf\u{e9} \u{2615}\r\n".as_bytes());
    server.expect_datagram(&datagram("lobby", "caf\u{e9} \u{2615}"), udp);
    client.type_text(b"\n   \n");
    client.type_text(b"exit\n");
    server.expect_datagram(&datagram("lobby", "exit"), udp);

    let stderr = assert_exit(&mut client, 0);
    assert_eq!(stderr, "chat: created lobby as alice\n");
    assert_eq!(client.stdout.wait_closed(), "", "sending prints nothing");
    server.expect_quiet("nothing after exit");
}

#[test]
fn join_with_japanese_names_sends_the_vector_request() {
    let server = FakeServer::start();
    let mut client = server.client(&["join", "部屋一", "--name", "太郎"]);
    let success = SUCCESS_JOIN.replacen("05", "03", 1);
    let (_stream, udp) = server.answer(REQUEST_JOIN_JAPANESE, 40002, &[&success]);
    client.stderr.wait_for("chat: joined 部屋一 as 太郎\n");

    client.type_text("こんにちは\n".as_bytes());
    server.expect_datagram(&datagram("部屋一", "こんにちは"), udp);
    client.close_stdin();
    server.expect_datagram(&datagram("部屋一", "exit"), udp);
    assert_exit(&mut client, 0);
}

#[test]
fn an_acknowledgement_before_the_answer_is_accepted() {
    let server = FakeServer::start();
    let mut client = server.client(&["create", "lobby", "--name", "alice"]);
    let (mut stream, udp) = server.answer(REQUEST_CREATE, 40001, &[ACK]);
    thread::sleep(Duration::from_millis(50));
    stream.write_all(&unhex(SUCCESS_CREATE)).expect("answer");
    client.stderr.wait_for("chat: created lobby as alice\n");
    client.type_text(b"hi\n");
    server.expect_datagram(&datagram("lobby", "hi"), udp);
}

#[test]
fn received_text_is_shown_and_strangers_are_ignored() {
    let server = FakeServer::start();
    let mut client = server.client(&["create", "lobby", "--name", "alice"]);
    let udp = server.created(&mut client);

    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind a stranger");
    stranger
        .send_to(b"eve: spoofed", udp)
        .expect("send from a stranger");
    server.send_to("bob: hi", udp);
    client.stdout.wait_for("bob: hi\n");
    server.send_to("bobがlobbyから退出しました。", udp);
    client
        .stdout
        .wait_for("bobがlobbyから退出しました。  (bob left lobby)\n");
    // Not a terminal: text is shown as it is.
    server.send_to("carol: a\tb", udp);
    client.stdout.wait_for("carol: a\tb\n");
    server.expect_quiet("received text is not answered");

    client.close_stdin();
    server.expect_datagram(&datagram("lobby", "exit"), udp);
    assert_exit(&mut client, 0);
    assert_eq!(
        client.stdout.wait_closed(),
        "bob: hi\nbobがlobbyから退出しました。  (bob left lobby)\ncarol: a\tb\n"
    );
}

#[test]
fn quit_and_end_of_input_send_exit() {
    for ending in [&b"/quit\n"[..], b""] {
        let server = FakeServer::start();
        let mut client = server.client(&["create", "lobby", "--name", "alice"]);
        let udp = server.created(&mut client);
        client.type_text(b"last\n");
        client.type_text(ending);
        client.close_stdin();
        server.expect_datagram(&datagram("lobby", "last"), udp);
        server.expect_datagram(&datagram("lobby", "exit"), udp);
        assert_exit(&mut client, 0);
        server.expect_quiet("one exit");
    }
}

#[test]
fn sigterm_and_sigint_send_exit_and_exit_0() {
    for signal in ["TERM", "INT"] {
        let server = FakeServer::start();
        let mut client = server.client(&["create", "lobby", "--name", "alice"]);
        let udp = server.created(&mut client);
        client.signal(signal);
        server.expect_datagram(&datagram("lobby", "exit"), udp);
        assert_exit(&mut client, 0);
    }
}

#[test]
fn a_signal_while_waiting_for_the_answer_exits_0() {
    let server = FakeServer::start();
    let mut client = server.client(&["create", "lobby", "--name", "alice"]);
    let (mut stream, _request, _udp) = server.request();
    client.signal("TERM");
    assert_exit(&mut client, 0);
    // The client closed its side.
    let mut buf = [0u8; 1];
    assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
    server.expect_quiet("no token, no exit");
}

#[test]
fn lines_too_long_for_one_datagram_are_refused() {
    let server = FakeServer::start();
    let mut client = server.client(&["create", "lobby", "--name", "alice"]);
    let udp = server.created(&mut client);

    let most = 4096 - 2 - "lobby".len() - TOKEN.len();
    client.type_text(format!("{}\n", "x".repeat(most + 1)).as_bytes());
    client
        .stderr
        .wait_for(&format!("line not sent: a message is at most {most} bytes"));
    client.type_text(format!("{}\n", "y".repeat(10_000)).as_bytes());
    client.stderr.wait_for("line not sent");
    server.expect_quiet("refused lines are not sent");
    client.type_text(format!("{}\n", "z".repeat(most)).as_bytes());
    server.expect_datagram(&datagram("lobby", &"z".repeat(most)), udp);
}

#[test]
fn own_leave_text_means_removed_and_exits_0_without_exit() {
    let server = FakeServer::start();
    let mut client = server.client(&["create", "lobby", "--name", "alice"]);
    let udp = server.created(&mut client);

    server.send_to("aliceがlobbyから退出しました。", udp);
    let stderr = assert_exit(&mut client, 0);
    assert!(
        stderr.contains("chat: the server removed you from room lobby"),
        "{stderr:?}"
    );
    assert_eq!(
        client.stdout.wait_closed(),
        "aliceがlobbyから退出しました。  (the server removed you from lobby)\n"
    );
    server.expect_quiet("a removed member says no more");
}

#[test]
fn the_hosts_leave_closes_the_room_and_exits_0() {
    let server = FakeServer::start();
    let mut client = server.client(&["join", "lobby", "--name", "alice"]);
    let (mut stream, _request, udp) = server.request();
    stream.write_all(&unhex(SUCCESS_JOIN)).expect("answer");
    client.stderr.wait_for("chat: joined lobby as alice\n");

    let closing =
        "carolがlobbyから退出しました。\nホストが退出したため、チャットルーム:lobbyを終了します。";
    server.send_to(closing, udp);
    let stderr = assert_exit(&mut client, 0);
    assert!(
        stderr.contains("chat: room lobby is closed: its host left\n"),
        "{stderr:?}"
    );
    assert_eq!(
        client.stdout.wait_closed(),
        "carolがlobbyから退出しました。  (carol left lobby)\n\
         ホストが退出したため、チャットルーム:lobbyを終了します。  (the host left, so room lobby \
         is closed)\n"
    );
    server.expect_quiet("the room is gone: no exit");
}

#[test]
fn refusals_exit_1_saying_which_with_the_servers_message() {
    for (operation, answer, message) in [
        (
            "create",
            EXISTS,
            "cannot create room lobby: a room named lobby already exists; join it with `chat \
             ocm join lobby --name alice`, or create one with another name (the server said: \
             部屋 lobby はすでに存在します)",
        ),
        (
            "join",
            MISSING,
            "cannot join room nowhere: no room is named nowhere; create it with `chat ocm \
             create nowhere --name alice`, or check the name (the server said: 部屋 nowhere は\
             存在しません)",
        ),
        (
            "create",
            MALFORMED,
            "cannot create room x: the server could not serve the request (it found it \
             malformed, or could not create the room now); try again (the server said: \
             リクエストを完了できませんでした。 入力し直してください。)",
        ),
    ] {
        let server = FakeServer::start();
        let room = match answer {
            MISSING => "nowhere",
            MALFORMED => "x",
            _ => "lobby",
        };
        let mut client = server.client(&[operation, room, "--name", "alice"]);
        let (mut stream, _request, _udp) = server.request();
        stream.write_all(&unhex(answer)).expect("answer");
        let stderr = assert_exit(&mut client, 1);
        assert_eq!(stderr, format!("chat: {message}\n"), "{operation} {room}");
        server.expect_quiet("no token, no datagram");
    }
}

#[test]
fn malformed_answers_exit_1() {
    let oversized = {
        let mut header = vec![5u8, 1, 2];
        header.extend_from_slice(&[0xff; 29]);
        header
    };
    let not_json = {
        let body = b"not json";
        let mut answer = vec![5u8, 1, 2];
        answer.extend_from_slice(&[0; 21]);
        answer.extend_from_slice(&(body.len() as u64).to_be_bytes());
        answer.extend_from_slice(body);
        answer
    };
    let short = unhex(SUCCESS_CREATE)[..40].to_vec();
    for (answer, problem) in [
        (&oversized[..], "over the 65536-byte limit"),
        (&not_json[..], "not JSON"),
        (&short[..], "incomplete answer"),
        (b"", "closed the connection without answering"),
    ] {
        let server = FakeServer::start();
        let mut client = server.client(&["create", "lobby", "--name", "alice"]);
        let (mut stream, _request, _udp) = server.request();
        stream.write_all(answer).expect("answer");
        drop(stream);
        let stderr = assert_exit(&mut client, 1);
        assert!(stderr.contains(problem), "{problem}: {stderr:?}");
        if !answer.is_empty() {
            assert!(stderr.contains("malformed answer"), "{stderr:?}");
        }
    }
}

#[test]
fn another_protocols_server_is_named() {
    // What a ROOM server says first, and a MATOU server's ERROR to a stranger.
    for (answer, protocol) in [
        (&b"alias?"[..], "ROOM"),
        (&[0, 0, 0, 17, 0, 0, 0, 1, 0, 0, 0, 0][..], "MATOU"),
    ] {
        let server = FakeServer::start();
        let mut client = server.client(&["create", "lobby", "--name", "alice"]);
        let (mut stream, _request, _udp) = server.request();
        stream.write_all(answer).expect("answer");
        drop(stream);
        let stderr = assert_exit(&mut client, 1);
        let hint = format!("answered like {protocol}, not OCM");
        assert!(stderr.contains(&hint), "{protocol}: {stderr:?}");
    }
}

#[test]
fn connection_refused_exits_1_naming_the_address() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut client = Client::spawn(&[
        "ocm",
        "create",
        "lobby",
        "--name",
        "alice",
        "--tcp-port",
        &port.to_string(),
    ]);
    let stderr = assert_exit(&mut client, 1);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("connect"),
        "{stderr:?}"
    );
    assert!(
        stderr.contains("cargo run --release --bin chatd"),
        "{stderr:?}"
    );
}

#[test]
fn invalid_arguments_exit_2() {
    let long_room = "x".repeat(256);
    for (args, problem) in [
        (&["create", "lobby", "--name", ""][..], "empty"),
        (&["create", "", "--name", "alice"][..], "empty"),
        (&["join", &long_room, "--name", "alice"][..], "255"),
        (&["leave", "lobby", "--name", "alice"][..], "leave"),
        (&["create", "lobby"][..], "--name"),
        (
            &["create", "lobby", "--name", "a", "--udp-port", "0"][..],
            "0",
        ),
    ] {
        let mut all = vec!["ocm"];
        all.extend_from_slice(args);
        let mut client = Client::spawn(&all);
        let stderr = assert_exit(&mut client, 2);
        assert!(stderr.contains(problem), "{args:?}: {stderr:?}");
    }
}

#[test]
fn help_explains_the_phases_the_input_and_the_output() {
    let mut client = Client::spawn(&["ocm", "--help"]);
    assert!(client.wait_exit().success());
    let help = client.stdout.wait_closed();
    for needle in [
        "create",
        "join",
        "--name",
        "--tcp-port",
        "--udp-port",
        "9002",
        "9003",
        "exit",
        "/quit",
        "bob: hi",
        "4096 bytes",
        "600 s",
        "idle",
        "host",
        "status 1",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from {help}");
    }
}

// ---- against the real server ----

/// The real server with only OCM on.
struct OcmChatd(Chatd);

impl OcmChatd {
    fn start(extra: &[&str]) -> Self {
        OcmChatd(Chatd::start(&["--ocm-tcp-port", "--ocm-udp-port"], extra))
    }

    fn client(&self, operation: &str, room: &str, name: &str) -> Client {
        Client::spawn(&[
            "ocm",
            operation,
            room,
            "--name",
            name,
            "--tcp-port",
            &self.0.port("--ocm-tcp-port").to_string(),
            "--udp-port",
            &self.0.port("--ocm-udp-port").to_string(),
        ])
    }

    /// A client that has created or joined `room`.
    fn member(&self, operation: &str, room: &str, name: &str) -> Client {
        let mut client = self.client(operation, room, name);
        let done = if operation == "create" {
            "created"
        } else {
            "joined"
        };
        client
            .stderr
            .wait_for(&format!("chat: {done} {room} as {name}\n"));
        client
    }
}

const LEFT_BOB: &str = "bobがlobbyから退出しました。  (bob left lobby)";

#[test]
fn members_talk_through_the_real_server_and_the_host_closes_the_room() {
    let server = OcmChatd::start(&[]);
    let mut alice = server.member("create", "lobby", "alice");
    let mut bob = server.member("join", "lobby", "bob");

    alice.type_text(b"hello bob\n");
    bob.stdout.wait_for("alice: hello bob\n");
    bob.type_text("こんにちは alice\n".as_bytes());
    alice.stdout.wait_for("bob: こんにちは alice\n");

    // The room exists; another is missing.
    let mut again = server.client("create", "lobby", "eve");
    let stderr = assert_exit(&mut again, 1);
    assert!(
        stderr.contains("a room named lobby already exists")
            && stderr.contains("部屋 lobby はすでに存在します"),
        "{stderr:?}"
    );
    let mut lost = server.client("join", "nowhere", "eve");
    let stderr = assert_exit(&mut lost, 1);
    assert!(
        stderr.contains("no room is named nowhere")
            && stderr.contains("部屋 nowhere は存在しません"),
        "{stderr:?}"
    );

    // A guest leaves: the host is told.
    bob.type_text(b"exit\n");
    assert_exit(&mut bob, 0);
    alice.stdout.wait_for(&format!("{LEFT_BOB}\n"));
    // Nobody echoes a member's own lines back to it.
    assert_eq!(bob.stdout.wait_closed(), "alice: hello bob\n");

    // The host leaves: the room closes for everyone in it.
    let mut carol = server.member("join", "lobby", "carol");
    alice.type_text(b"bye\n");
    carol.stdout.wait_for("alice: bye\n");
    alice.close_stdin();
    assert_exit(&mut alice, 0);
    let stderr = assert_exit(&mut carol, 0);
    assert!(
        stderr.contains("chat: room lobby is closed: its host left\n"),
        "{stderr:?}"
    );
    assert_eq!(
        carol.stdout.wait_closed(),
        "alice: bye\naliceがlobbyから退出しました。  (alice left lobby)\n\
         ホストが退出したため、チャットルーム:lobbyを終了します。  (the host left, so room lobby \
         is closed)\n"
    );
    assert_eq!(
        alice.stdout.wait_closed(),
        format!("bob: こんにちは alice\n{LEFT_BOB}\n")
    );

    // The name is free again.
    let mut dave = server.member("create", "lobby", "dave");
    dave.close_stdin();
    assert_exit(&mut dave, 0);
}

#[test]
fn a_silent_member_is_removed_by_the_real_server() {
    let server = OcmChatd::start(&["--ocm-idle-timeout-ms", "300"]);
    let mut alice = server.member("create", "quiet", "alice");
    let stderr = assert_exit(&mut alice, 0);
    assert!(
        stderr.contains("chat: the server removed you from room quiet"),
        "{stderr:?}"
    );
    assert_eq!(
        alice.stdout.wait_closed(),
        "aliceがquietから退出しました。  (the server removed you from quiet)\n"
    );
    // The host's removal closed the room: its name can be created again.
    let mut bob = server.member("create", "quiet", "bob");
    bob.close_stdin();
    assert_exit(&mut bob, 0);
}

#[test]
fn the_real_servers_acknowledgement_first_is_accepted() {
    let server = OcmChatd::start(&["--ocm-ack-state1"]);
    let mut alice = server.member("create", "acked", "alice");
    let mut bob = server.member("join", "acked", "bob");
    alice.type_text(b"hi\n");
    bob.stdout.wait_for("alice: hi\n");
    alice.close_stdin();
    assert_exit(&mut alice, 0);
    assert_exit(&mut bob, 0);
}

/// The switchboard: in the OCM room `lobby`, a lobby message from ROOM, CCM or MATOU arrives as
/// the datagram `N: T`, as a member's own line would, so `chat ocm` shows it with its sender's
/// name (the wire says nothing of its protocol). Presence is not sent to OCM.
#[test]
fn in_the_lobby_room_lines_from_other_protocols_show_their_sender() {
    let server = lobby::Lobby::start();
    let mut olga = server.ocm("create", "olga");

    let mut rui = server.room("rui");
    rui.type_text(b"hello olga\n");
    olga.stdout.wait_for("rui: hello olga\n");

    let mut cid = server.ccm("cid");
    cid.type_text(b"@* hi all\n");
    olga.stdout.wait_for("cid: hi all\n");

    let mut mia = server.matou("mia", &std::env::temp_dir());
    mia.type_text("olá\n".as_bytes());
    olga.stdout.wait_for("mia: olá\n");

    olga.close_stdin();
    assert!(olga.wait_exit().success());
    let out = olga.stdout.wait_closed();
    // Presence is not sent to OCM: three lines, the three messages.
    assert_eq!(out.lines().count(), 3, "{out}");
}
