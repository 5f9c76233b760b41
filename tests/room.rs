//! ROOM over real sockets: the real server on an ephemeral port.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chatd;
mod child; // chatd::Chatd collects its stderr with it
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

/// PROTOCOLS.md ROOM alias rules 2 and 3: a first read of more than 1024 bytes gives an
/// alias of its first 1024 bytes exactly, and the bytes after them are the new member's first
/// message, relayed right after its join notice and greeting (to every member, itself
/// included). One write of 1,058 bytes is one loopback segment (far below its MSS), queued
/// whole before the server's read, so it is one read.
#[test]
fn a_first_read_over_1024_bytes_is_an_alias_of_1024_and_a_first_message() {
    let server = TestServer::start(Config::for_tests());
    let mut alice = Client::join(server.room, "alice");
    let mut long = Client::connect(server.room, "long");
    long.expect(b"alias?");
    let alias = "a".repeat(1023) + "z";
    let first_message = "bz: the bytes after the first 1024";
    long.send(format!("{alias}{first_message}").as_bytes());
    alice.expect(&join_notice(&alias));
    alice.expect(first_message.as_bytes());
    long.expect(&join_notice(&alias));
    long.expect(b"Voce esta conectado ao servidor!");
    long.expect(first_message.as_bytes());
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
    // All from 127.0.0.1: over the per-IP limit a server would use.
    let server = TestServer::start(Config {
        connections_per_ip_max: 0,
        ..Config::for_tests()
    });
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
    // Never early in real time: the deadline counts from the accept's millisecond rounded
    // up, and `started` was taken before the connect.
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

/// Wait (bounded) until a chatd child listens on `addr`.
fn wait_listening(child: &mut std::process::Child, addr: std::net::SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => return,
            Err(_) if Instant::now() < deadline => {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!("chatd exited early: {status}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("chatd never listened on {addr}: {err}"),
        }
    }
}

#[test]
fn chatd_exits_zero_on_sigterm_within_the_grace_period() {
    let port = free_port();
    let mut child = chatd::command(&[("--room-port", port)])
        .args(["--shutdown-grace-ms", "500"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(&mut child, addr);
    let mut alice = Client::join(addr, "alice");

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

/// A chatd child whose member `sloth` never reads while 640 KiB wait for it in chatd's
/// queue (more than the kernel's buffers hold, under the slow-consumer limits).
struct UnreadBacklog {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _sloth: Client,
    flooder: Client,
}

impl Drop for UnreadBacklog {
    fn drop(&mut self) {
        // A failed test leaves no chatd behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chatd_with_an_unread_backlog(shutdown_grace_ms: &str) -> UnreadBacklog {
    let port = free_port();
    let mut child = chatd::command(&[("--room-port", port)])
        .args(["--shutdown-grace-ms", shutdown_grace_ms])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(&mut child, addr);
    // sloth's receive buffer is small, so what it is sent stays queued in chatd.
    let mut sloth = Client::connect_small(addr, "sloth", 4096);
    sloth.expect(b"alias?");
    sloth.send(b"sloth");
    sloth.read_through(b"Voce esta conectado ao servidor!");
    let mut flooder = Client::join(addr, "flooder");
    // ROOM echoes a line to its sender too: once the last echo is back, every copy for
    // sloth has been queued.
    let line = format!("{}\n", "f".repeat(1023));
    for _ in 0..639 {
        flooder.send(line.as_bytes());
    }
    flooder.send(b"LAST\n");
    flooder.read_through(b"LAST");
    UnreadBacklog {
        child,
        addr,
        _sloth: sloth,
        flooder,
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Wait (bounded by [`WAIT`]) for the child to exit; its status and its log.
fn exit_and_log(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "chatd did not exit");
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read log");
    (exit, log)
}

#[test]
fn output_a_member_never_reads_is_dropped_at_the_shutdown_grace_and_chatd_exits_zero() {
    const GRACE_MS: u64 = 500;
    let mut backlog = chatd_with_an_unread_backlog(&GRACE_MS.to_string());
    let signalled = Instant::now();
    signal(&backlog.child, "TERM");
    let (exit, log) = exit_and_log(&mut backlog.child);
    let took = signalled.elapsed();
    assert!(exit.success(), "chatd exited with {exit}; log: {log}");
    assert!(
        took >= Duration::from_millis(GRACE_MS),
        "exited after {took:?}, before the grace: nothing was left to flush"
    );
    // README `--shutdown-grace-ms`: the grace bounds the stop, so chatd is gone soon after it
    // (the 2 s margin, as in `chatd_exits_zero_on_sigterm_within_the_grace_period`, is for
    // the rest of a debug build's exit on a loaded machine).
    assert!(
        took < Duration::from_millis(GRACE_MS) + Duration::from_secs(2),
        "exited {took:?} after the signal, the grace being {GRACE_MS} ms"
    );
    assert!(
        log.contains("shutdown grace period over with"),
        "the dropped output is not reported; log: {log}"
    );
    // The flooder, who read along, got the rest of its echoes and the close.
    backlog.flooder.expect_closed();
}

#[test]
fn a_second_signal_exits_at_once_however_long_the_grace() {
    let mut backlog = chatd_with_an_unread_backlog("60000");
    let signalled = Instant::now();
    signal(&backlog.child, "TERM");
    // The first signal was taken once chatd has closed its listener.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(backlog.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "chatd still accepts after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(&backlog.child, "INT");
    let (exit, log) = exit_and_log(&mut backlog.child);
    assert!(exit.success(), "chatd exited with {exit}; log: {log}");
    assert!(log.contains("second signal"), "log: {log}");
    // Well inside the 60 s grace: the second signal ended it (WAIT bounds the wait).
    assert!(signalled.elapsed() < WAIT, "took {:?}", signalled.elapsed());
}

#[test]
fn input_beyond_the_read_budget_is_served_on_later_turns_without_a_new_edge() {
    // With a 1 KiB budget a 1 MB burst takes about a thousand turns. Edge-triggered epoll
    // reports the burst once: if the ready list did not bring the connection back, the
    // relay would stall with data still in the kernel.
    const BURST_BYTES: usize = 1024 * 1024;
    let config = Config {
        read_budget_bytes: 1024,
        read_chunk_bytes: 1024,
        ..Config::for_tests()
    };
    let server = TestServer::start(config);
    let mut flooder = Client::join(server.room, "flooder");
    let mut other = Client::join(server.room, "other");
    flooder.read_through(&join_notice("other"));

    let mut burst = vec![b'.'; BURST_BYTES];
    burst[BURST_BYTES - 4..].copy_from_slice(b"END;");
    let mut writer = flooder.stream.try_clone().expect("clone");
    let write_thread = std::thread::spawn(move || writer.write_all(&burst).expect("burst"));

    // The other member keeps being served while the burst is relayed, and then gets it all.
    other.send(b"other: interleaved");
    let mut seen = other.read_through(b"END;");
    if count(&seen, b"other: interleaved") == 0 {
        seen.extend(other.read_through(b"other: interleaved"));
    }
    assert_eq!(count(&seen, b"other: interleaved"), 1);
    let flooder_seen = flooder.read_through(b"END;");
    write_thread.join().expect("writer");
    assert_eq!(count(&seen, b"."), BURST_BYTES - 4);
    assert_eq!(count(&flooder_seen, b"."), BURST_BYTES - 4);
}

#[test]
fn running_out_of_descriptors_pauses_accepting_and_serving_goes_on() {
    // 24 descriptors leave chatd room for about 16 connections (stdio, epoll, the waker, the
    // signal pipe and the listener take the rest); further accepts fail with EMFILE.
    const CONNECTIONS: usize = 30;
    let port = free_port();
    let command = format!(
        "ulimit -n 24 && exec '{}' --bin24-port 0 --ccm-port 0 --matou-port 0 --ocm-tcp-port 0 --ocm-udp-port 0 --ocm-relay-port 0 --web-port 0 --room-port {port} --accept-pause-ms 20",
        env!("CARGO_BIN_EXE_chatd")
    );
    let mut child = Command::new("bash")
        .args(["-c", &command])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chatd");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(&mut child, addr);

    let mut member = Client::join(addr, "member");
    let mut accepted = Vec::new();
    let mut waiting = None;
    for index in 0..CONNECTIONS {
        let mut client = Client::connect(addr, &format!("c{index}"));
        client
            .stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut prompt = [0u8; 6];
        match client.stream.read_exact(&mut prompt) {
            Ok(()) => {
                assert_eq!(&prompt, b"alias?");
                accepted.push(client);
            }
            Err(_) => {
                // Not accepted within half a second: the server is out of descriptors.
                client.stream.set_read_timeout(Some(WAIT)).expect("timeout");
                waiting = Some(client);
                break;
            }
        }
    }
    let mut waiting = waiting.expect("the descriptor limit should have deferred a connection");
    // Open the rest too, so the limit is exceeded for certain even if a slow machine made an
    // accepted connection look deferred above; they wait behind `waiting` in the backlog.
    let backlog: Vec<Client> = (accepted.len() + 1..CONNECTIONS)
        .map(|index| Client::connect(addr, &format!("c{index}")))
        .collect();
    assert!(!accepted.is_empty());

    // Established clients are served while accepting is paused.
    member.send(b"member: still served");
    member.expect(b"member: still served");

    // Descriptors come back when clients leave; the waiting connection is then accepted.
    accepted.truncate(accepted.len().saturating_sub(4));
    waiting.expect(b"alias?");
    drop(backlog);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "chatd exited with {exit}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read log");
    assert!(log.contains("pausing accepts"), "log: {log}");
    assert!(log.contains("accept_pauses="), "log: {log}");
}

#[test]
fn a_member_over_the_soft_limit_for_its_duration_is_closed_below_the_hard_limit() {
    // The hard limit is far above anything sent here, so only the soft rule can close the
    // slow member: over 64 KiB queued for 300 ms while the room keeps talking.
    const MESSAGE_BYTES: usize = 1000;
    const BATCH: usize = 100;
    const SENT_BYTES_MAX: usize = 48 * 1024 * 1024;
    let config = Config {
        output_hard_bytes_max: 64 * 1024 * 1024,
        output_soft_bytes_max: 64 * 1024,
        output_soft_duration_ms: 300,
        ..Config::for_tests()
    };
    let server = TestServer::start(config);
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

    let mut body = vec![b'x'; MESSAGE_BYTES];
    body[..8].copy_from_slice(b"sender: ");
    body[MESSAGE_BYTES - 1] = b';';
    let leave = leave_notice("slow");
    let mut sent_bytes = 0;
    let mut closed = false;
    while !closed {
        assert!(
            sent_bytes < SENT_BYTES_MAX,
            "the slow member was not closed after {sent_bytes} bytes"
        );
        for _ in 0..BATCH {
            sender.send(&body);
        }
        sender.send(b"sender: batch;");
        sent_bytes += BATCH * MESSAGE_BYTES;
        let seen = reader.read_through(b"sender: batch;");
        closed = count(&seen, &leave) == 1;
        sender.read_through(b"sender: batch;");
    }
    let stats = server.stop();
    assert_eq!(stats.slow_consumer_closes, 1);
    assert!(
        sent_bytes < 64 * 1024 * 1024,
        "closed by the soft rule, not the hard one"
    );
}

#[test]
fn chatd_fails_clearly_when_its_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let output = chatd::command(&[("--room-port", port)])
        .output()
        .expect("run chatd");
    assert_eq!(output.status.code(), Some(1));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains(&format!(
            "cannot listen for ROOM on 127.0.0.1:{port} (bind)"
        )),
        "log: {log}"
    );
}

#[test]
fn shutdown_flushes_output_still_queued_for_a_slow_member() {
    // 8 MB is more than the kernel's socket buffers hold on loopback (they autotune to a few
    // MB), so most of it is still in the server's queue when shutdown begins.
    const MESSAGES: usize = 8000;
    const MESSAGE_BYTES: usize = 1000;
    const BATCH: usize = 100;
    let config = Config {
        output_hard_bytes_max: 64 * 1024 * 1024,
        output_soft_bytes_max: 64 * 1024 * 1024,
        shutdown_grace_ms: 10_000,
        ..Config::for_tests()
    };
    let server = TestServer::start(config);
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

    let mut body = vec![b'x'; MESSAGE_BYTES];
    body[..8].copy_from_slice(b"sender: ");
    for _ in 0..MESSAGES / BATCH {
        for _ in 0..BATCH {
            sender.send(&body);
        }
        sender.send(b"sender: batch;");
        // The sender's own echo tells when the server has queued the batch for everyone.
        sender.read_through(b"sender: batch;");
    }

    let stopping = std::thread::spawn(move || server.stop());
    slow.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut received = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match slow.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err) => panic!("slow member read: {err}"),
        }
    }
    let stats = stopping.join().expect("server thread");
    assert_eq!(
        count(&received, b"sender: "),
        MESSAGES + MESSAGES / BATCH,
        "every queued message must be flushed before the close"
    );
    assert!(received.ends_with(b"sender: batch;"));
    assert_eq!(stats.drops, 0);
}
