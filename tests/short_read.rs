//! The reactor stops reading a connection at a read shorter than its buffer (the receive queue
//! was empty; a later byte raises a new edge) instead of reading on to WouldBlock, except when
//! the event reported the peer's FIN or an error: over real sockets, the cases that rule must
//! get right.
//!
//! "FIN with the data" is made deterministic with TCP_CORK: the written bytes wait in the
//! client's kernel, and the shutdown puts the FIN on that same segment, so the server's one
//! edge brings both. A reactor that stopped at the short read would never learn of the FIN.

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Shutdown;

use common::{Client, TestServer};
use switchboard::config::Config;

fn leave_notice(alias: &str) -> Vec<u8> {
    format!("b'{alias}' acabou de sair do chat!").into_bytes()
}

/// Write `bytes` and the FIN as one TCP segment: corked, the bytes wait for the shutdown,
/// which sends them with the FIN on the same segment.
fn send_with_fin(client: &mut Client, bytes: &[u8]) {
    socket2::SockRef::from(&client.stream)
        .set_tcp_cork(true)
        .expect("TCP_CORK");
    client.send(bytes);
    client.stream.shutdown(Shutdown::Write).expect("shutdown");
}

#[test]
fn room_a_line_arriving_with_the_fin_is_delivered_and_the_sender_leaves() {
    let server = TestServer::start(Config::for_tests());
    let mut alice = Client::join(server.room, "alice");
    let mut bob = Client::join(server.room, "bob");
    alice.expect(b"b'bob' esta conectado ao chat");
    server.wait_connections(2);

    send_with_fin(&mut alice, b"alice: last words");
    bob.expect(b"alice: last words");
    bob.expect(&leave_notice("alice"));
    server.wait_connections(1);
    drop(alice);
    let stats = server.stop();
    assert_eq!(stats.connections_closed, 1, "alice's close was seen");
}

#[test]
fn ccm_a_burst_arriving_with_the_fin_is_one_message_and_the_sender_is_closed() {
    let server = TestServer::start(Config {
        ccm_port: Some(0),
        ..Config::for_tests()
    });
    let ccm = server.ccm.expect("CCM enabled");
    let mut bob = Client::connect(ccm, "bob");
    bob.send(b"CCM\\1.0 NotDefined\nContent-Length: 3\n\nbob");
    bob.read_through(b"Content-Length: 0\n\n");
    // No Content-Length: the message is the burst, and the burst ends at the FIN.
    let mut alice = Client::connect(ccm, "alice");
    alice.send(b"CCM\\1.0 NotDefined\nContent-Length: 5\n\nalice");
    alice.read_through(b"Content-Length: 0\n\n");
    server.wait_connections(2);

    send_with_fin(
        &mut alice,
        b"CCM\\1.0 Text\nAddressee: bob\nMessage-Encoding: utf-8\n\nsee you, bob",
    );
    bob.expect(
        b"CCM\\1.0 Text\nSender: alice\nAddressee: bob\nMessage-Encoding: utf-8\nContent-Length: 12\n\nsee you, bob",
    );
    server.wait_connections(1);
    alice.expect_closed();
    // Alice's name is free again: the server forgot her.
    let mut again = Client::connect(ccm, "alice again");
    again.send(b"CCM\\1.0 NotDefined\nContent-Length: 5\n\nalice");
    again.expect(b"CCM\\1.0 Identity\nUser: ");
}

/// A read that fills the buffer may have left more behind: reading goes on. With 8-byte reads,
/// a burst of exactly three buffers and one of three and a bit must each arrive whole as one
/// CCM message (a reactor that stopped at a full read would end the burst after 8 bytes).
#[test]
fn ccm_a_burst_that_fills_the_read_buffer_is_read_on_to_its_end() {
    const CHUNK: usize = 8;
    let server = TestServer::start(Config {
        ccm_port: Some(0),
        read_chunk_bytes: CHUNK,
        ..Config::for_tests()
    });
    let ccm = server.ccm.expect("CCM enabled");
    let mut bob = Client::connect(ccm, "bob");
    bob.send(b"CCM\\1.0 NotDefined\nContent-Length: 3\n\nbob");
    bob.read_through(b"Content-Length: 0\n\n");
    let mut alice = Client::connect(ccm, "alice");
    alice.send(b"CCM\\1.0 NotDefined\nContent-Length: 5\n\nalice");
    alice.read_through(b"Content-Length: 0\n\n");

    let header = b"CCM\\1.0 Text\nAddressee: bob\n\n";
    for extra in [0, 3] {
        // Content long enough that the header plus content is a multiple of CHUNK, plus extra.
        let mut len = CHUNK * 4 - header.len() % CHUNK + extra;
        if (header.len() + len) % CHUNK != extra {
            len += CHUNK;
        }
        let content: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let mut message = header.to_vec();
        message.extend_from_slice(&content);
        assert_eq!(message.len() % CHUNK, extra);
        alice.send(&message);
        let mut expected = format!(
            "CCM\\1.0 Text\nSender: alice\nAddressee: bob\nMessage-Encoding: utf-8\nContent-Length: {}\n\n",
            content.len()
        )
        .into_bytes();
        expected.extend_from_slice(&content);
        bob.expect(&expected);
    }
}

/// ROOM text arriving in pieces, the first exactly one read buffer long: every byte is
/// delivered, in order, nothing lost at the boundary.
#[test]
fn room_text_in_pieces_filling_the_read_buffer_all_arrives() {
    const CHUNK: usize = 16;
    let server = TestServer::start(Config {
        read_chunk_bytes: CHUNK,
        ..Config::for_tests()
    });
    let mut alice = Client::join(server.room, "alice");
    let mut bob = Client::join(server.room, "bob");
    alice.expect(b"b'bob' esta conectado ao chat");
    let first = [b'x'; CHUNK];
    alice.send(&first);
    bob.expect(&first);
    alice.send(b"and then some more");
    bob.expect(b"and then some more");
    // Pieces that follow each other at once: all of them arrive, whatever the reads.
    let long: Vec<u8> = (0..CHUNK * 5 + 7).map(|i| b'a' + (i % 26) as u8).collect();
    alice.send(&long);
    bob.expect(&long);
}

/// The point of the rule: a small message costs one read, not a read and a WouldBlock.
#[test]
fn a_small_message_costs_one_read_call() {
    const MESSAGES: u64 = 50;
    let server = TestServer::start(Config::for_tests());
    let mut alice = Client::join(server.room, "alice");
    let mut bob = Client::join(server.room, "bob");
    alice.expect(b"b'bob' esta conectado ao chat");
    for i in 0..MESSAGES {
        let line = format!("alice: {i:04}");
        alice.send(line.as_bytes());
        bob.expect(line.as_bytes());
    }
    let stats = server.stop();
    // Two aliases and the messages, one read each (reading on to WouldBlock made it twice
    // that); a little room for a message the kernel happened to split.
    let floor = MESSAGES + 2;
    assert!(
        (floor..floor + MESSAGES / 10).contains(&stats.read_calls),
        "{} read calls for {MESSAGES} messages and 2 aliases",
        stats.read_calls
    );
}
