//! ROOM over real sockets: the real server on an ephemeral port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{count, Client, TestServer, WAIT};
use switchboard::config::Config;

fn join_notice(alias: &str) -> Vec<u8> {
    format!("b'{alias}' esta conectado ao chat").into_bytes()
}

fn leave_notice(alias: &str) -> Vec<u8> {
    format!("b'{alias}' acabou de sair do chat!").into_bytes()
}

#[test]
fn three_clients_see_joins_in_order_and_each_line_exactly_once() {
    let server = TestServer::start(Config::for_tests());
    let mut alice = Client::join(server.room, "alice");
    let mut bob = Client::join(server.room, "bob");
    alice.expect(&join_notice("bob"));
    let mut carol = Client::join(server.room, "carol");
    alice.expect(&join_notice("carol"));
    bob.expect(&join_notice("carol"));

    // Each line reaches all three, the sender included, verbatim and exactly once: the next
    // bytes on every stream are exactly the line, with nothing before or between.
    let lines: [(&str, &[u8]); 3] = [
        ("alice", b"alice: hello"),
        ("bob", b"bob: ol\xc3\xa1, tudo bem?"),
        ("carol", b"carol: raw \x00\xff bytes\r\n"),
    ];
    for (sender, line) in lines {
        match sender {
            "alice" => alice.send(line),
            "bob" => bob.send(line),
            _ => carol.send(line),
        }
        for client in [&mut alice, &mut bob, &mut carol] {
            client.expect(line);
        }
    }
    // A final marker proves no duplicate is still on its way ahead of it.
    alice.send(b"alice: end");
    for client in [&mut alice, &mut bob, &mut carol] {
        client.expect(b"alice: end");
    }
}

#[test]
fn a_client_that_goes_away_produces_the_leave_notice_for_the_others() {
    let server = TestServer::start(Config::for_tests());
    let mut alice = Client::join(server.room, "alice");
    let mut bob = Client::join(server.room, "bob");
    alice.expect(&join_notice("bob"));
    let carol = Client::join(server.room, "carol");
    alice.expect(&join_notice("carol"));
    bob.expect(&join_notice("carol"));

    // A killed process's socket is closed by its kernel: the server sees EOF.
    drop(carol);
    alice.expect(&leave_notice("carol"));
    bob.expect(&leave_notice("carol"));

    // A reset (SO_LINGER 0, as after a crash with unread data) counts as leaving too.
    let bob_socket = socket2::SockRef::from(&bob.stream);
    bob_socket.set_linger(Some(Duration::ZERO)).expect("linger");
    drop(bob);
    alice.expect(&leave_notice("bob"));

    // The room still works for who is left, and the server counts one connection.
    alice.send(b"alice: still here");
    alice.expect(b"alice: still here");
    server.wait_connections(1);
}

#[test]
fn a_killed_chat_process_produces_the_leave_notice() {
    let server = TestServer::start(Config::for_tests());
    let mut alice = Client::join(server.room, "alice");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["room", "--nick", "dave", "--host", "127.0.0.1", "--port"])
        .arg(server.room.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chat");
    alice.expect(&join_notice("dave"));
    child.kill().expect("kill chat");
    child.wait().expect("reap chat");
    alice.expect(&leave_notice("dave"));
}

#[test]
fn thousand_clients_each_receive_every_message_of_a_burst() {
    const CLIENTS: usize = 1000;
    const MESSAGES: usize = 20;
    let server = TestServer::start(Config::for_tests());
    let mut clients: Vec<Client> = Vec::with_capacity(CLIENTS);
    for index in 0..CLIENTS {
        let alias = format!("u{index:04}");
        clients.push(Client::join(server.room, &alias));
    }
    // Everyone has seen the last join once its notice reaches the first client.
    let last = format!("u{:04}", CLIENTS - 1);
    clients[0].read_through(&join_notice(&last));

    let message = |seq: usize| format!("u0000: burst {seq:03};").into_bytes();
    for seq in 0..MESSAGES {
        clients[0].send(&message(seq));
    }
    let final_message = message(MESSAGES - 1);
    for client in &mut clients {
        let stream = client.read_through(&final_message);
        for seq in 0..MESSAGES {
            assert_eq!(
                count(&stream, &message(seq)),
                1,
                "{} must receive burst message {seq} exactly once",
                client.name
            );
        }
    }
    server.wait_connections(CLIENTS as u64);
}

#[test]
fn a_member_that_never_reads_is_closed_at_the_output_limit_and_others_get_everything() {
    const MESSAGES: usize = 4000;
    const MESSAGE_BYTES: usize = 1000;
    const BATCH: usize = 100;
    let config = Config {
        output_hard_bytes_max: 1024 * 1024,
        output_soft_bytes_max: 256 * 1024,
        output_soft_duration_ms: 200,
        ..Config::for_tests()
    };
    let server = TestServer::start(config);

    // The slow member shrinks its receive window so the limit is reached without first
    // filling megabytes of kernel buffers.
    let slow_socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    slow_socket.set_recv_buffer_size(4096).expect("rcvbuf");
    slow_socket
        .connect(&server.room.into())
        .expect("connect slow");
    let mut slow = TcpStream::from(slow_socket);
    let mut prompt = [0u8; 6];
    slow.read_exact(&mut prompt).expect("prompt");
    slow.write_all(b"slow").expect("alias");

    let mut sender = Client::join(server.room, "sender");
    let mut reader = Client::join(server.room, "reader");
    sender.read_through(&join_notice("reader"));

    // The sender goes batch by batch, waiting until the healthy members have each batch, so
    // they never lag by more than one batch (100 KB, below the soft limit), while the member
    // that never reads falls megabytes behind.
    let message = |seq: usize| {
        let mut body = vec![b'x'; MESSAGE_BYTES];
        let header = format!("sender: {seq:06} ");
        body[..header.len()].copy_from_slice(header.as_bytes());
        body[MESSAGE_BYTES - 1] = b';';
        body
    };
    let mut seen_by_reader = Vec::new();
    let mut seen_by_sender = Vec::new();
    for batch_start in (0..MESSAGES).step_by(BATCH) {
        for seq in batch_start..batch_start + BATCH {
            sender.send(&message(seq));
        }
        let last = message(batch_start + BATCH - 1);
        seen_by_reader.extend(reader.read_through(&last));
        seen_by_sender.extend(sender.read_through(&last));
    }
    for (who, stream) in [("reader", &seen_by_reader), ("sender", &seen_by_sender)] {
        let counts = sequence_counts(stream, b"sender: ", MESSAGES);
        for (seq, seen) in counts.iter().enumerate() {
            assert_eq!(*seen, 1, "{who} must receive message {seq} exactly once");
        }
    }
    assert_eq!(count(&seen_by_reader, &leave_notice("slow")), 1);

    // The slow member was cut off: reading what it was sent ends in EOF or a reset before
    // all 4 MB arrived. (What the server's kernel had already accepted into its send buffer,
    // which loopback autotuning grows to megabytes, is still delivered before the FIN.)
    slow.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = 0usize;
    let mut chunk = [0u8; 65536];
    loop {
        match slow.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(err) => panic!("slow member read: {err}"),
        }
    }
    assert!(
        got < MESSAGES * MESSAGE_BYTES,
        "the slow member received {got} bytes; it should have been closed early"
    );
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 1);
}

/// How often each sequence number appears after `prefix` (six digits) in one pass over
/// `stream`.
fn sequence_counts(stream: &[u8], prefix: &[u8], sequences: usize) -> Vec<usize> {
    let mut counts = vec![0; sequences];
    let mut at = 0;
    while let Some(found) = common::find(&stream[at..], prefix) {
        let digits_at = at + found + prefix.len();
        let digits = &stream[digits_at..(digits_at + 6).min(stream.len())];
        if let Some(seq) = std::str::from_utf8(digits)
            .ok()
            .and_then(|text| text.parse::<usize>().ok())
        {
            if seq < sequences {
                counts[seq] += 1;
            }
        }
        at = digits_at;
    }
    counts
}

#[test]
fn the_connection_cap_defers_the_next_connection_until_one_leaves() {
    let config = Config {
        connections_max: 2,
        ..Config::for_tests()
    };
    let server = TestServer::start(config);
    let first = Client::join(server.room, "first");
    let _second = Client::join(server.room, "second");
    server.wait_connections(2);

    // The third connection completes in the kernel's backlog but is not accepted: no prompt.
    let mut third = Client::connect(server.room, "third");
    third.expect_nothing_for(Duration::from_millis(300));
    assert_eq!(server.handle.connections_open(), 2);

    drop(first);
    third.expect(b"alias?");
    server.wait_connections(2);
}

#[test]
fn a_connection_without_an_alias_is_closed_at_the_handshake_limit() {
    const LIMIT_MS: u64 = 200;
    let config = Config {
        room_handshake_timeout_ms: LIMIT_MS,
        ..Config::for_tests()
    };
    let server = TestServer::start(config);
    let mut watcher = Client::join(server.room, "watcher");

    let started = Instant::now();
    let mut silent = Client::connect(server.room, "silent");
    silent.expect(b"alias?");
    let mut empty = Client::connect(server.room, "empty");
    empty.expect(b"alias?");
    // An empty alias (just a line ending) is asked again; the deadline keeps running.
    empty.send(b"\r\n");
    empty.expect(b"alias?");

    assert!(silent.expect_closed().is_empty());
    assert!(empty.expect_closed().is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(LIMIT_MS),
        "closed before the handshake limit"
    );
    // Neither was ever a member: no leave notice, and the member is untouched.
    watcher.send(b"watcher: ok");
    watcher.expect(b"watcher: ok");
    server.wait_connections(1);
}

#[test]
fn shutdown_through_the_handle_flushes_and_returns_statistics() {
    let server = TestServer::start(Config::for_tests());
    let mut alice = Client::join(server.room, "alice");
    alice.send(b"alice: bye");
    alice.expect(b"alice: bye");
    let stats = server.stop();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.frames_in, 1);
    assert!(alice.expect_closed().is_empty());
}

/// A port that was free a moment ago (the binary takes a fixed port number).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn chatd_exits_zero_on_sigterm_within_the_grace_period() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args([
            "--room-port",
            &port.to_string(),
            "--shutdown-grace-ms",
            "500",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let deadline = Instant::now() + WAIT;
    let mut alice = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                drop(stream);
                break Client::join(addr, "alice");
            }
            Err(_) if Instant::now() < deadline => {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!("chatd exited early: {status}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("chatd never listened on {addr}: {err}"),
        }
    };

    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            signalled.elapsed() < WAIT,
            "chatd did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(exit.success(), "chatd exited with {exit}");
    assert!(
        signalled.elapsed() < Duration::from_millis(500) + Duration::from_secs(2),
        "chatd took {:?} to exit",
        signalled.elapsed()
    );
    assert!(alice.expect_closed().is_empty());
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read log");
    assert!(log.contains("SIGTERM"), "log: {log}");
    assert!(log.contains("stopped: connections"), "log: {log}");
}
