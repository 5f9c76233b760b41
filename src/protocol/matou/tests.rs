//! MATOU logic without sockets: fabricated connections, addresses and bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Bytes, BytesMut};

use super::codec::{self, ErrorCode, Limits, Packet};
use super::*;
use crate::protocol::testing::RecordingOutbox;
use crate::protocol::testing::TestRng as Rng;
use crate::protocol::{CloseMode, CloseReason, ConnId};

const ALICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const BOB_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
const CAROL_IP: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42));

fn conn(slot: u32) -> ConnId {
    ConnId::new(slot, 1)
}

fn alice() -> ConnId {
    conn(1)
}

fn bob() -> ConnId {
    conn(2)
}

fn carol() -> ConnId {
    conn(3)
}

struct Harness {
    service: MatouService,
    out: RecordingOutbox,
    now_ms: u64,
}

impl Harness {
    fn new() -> Self {
        Harness::with_config(MatouConfig::default())
    }

    fn with_config(config: MatouConfig) -> Self {
        Harness {
            service: MatouService::new(config),
            out: RecordingOutbox::default(),
            now_ms: 0,
        }
    }

    fn data(&mut self, id: ConnId, bytes: &[u8]) {
        let mut input = BytesMut::from(bytes);
        self.service
            .on_data(id, &mut input, self.now_ms, &mut self.out);
        assert!(input.is_empty(), "a whole packet is consumed");
    }

    /// Accept the connection and sign it in as `name`; forget what was sent.
    fn sign_in(&mut self, id: ConnId, ip: IpAddr, name: &str) {
        self.service.on_accept(id, ip);
        self.data(id, &codec::connect_request(name.as_bytes()));
        assert_eq!(
            self.packets_to(id).first(),
            Some(&Packet::ConnectResponse { accepted: true }),
            "{name} accepted"
        );
        self.forget();
    }

    /// Forget what was sent and counted so far (`RecordingOutbox::clear` keeps the counters).
    fn forget(&mut self) {
        self.out.clear();
        self.out.frames_in = 0;
        self.out.rejected = 0;
    }

    /// Alice, Bob and Carol (on IPv6) signed in.
    fn three_users() -> Self {
        let mut h = Harness::new();
        h.sign_in(alice(), ALICE_IP, "alice");
        h.sign_in(bob(), BOB_IP, "bob");
        h.sign_in(carol(), CAROL_IP, "carol");
        h
    }

    /// What was sent to `id`, decoded as a client decodes it; nothing may be left over.
    fn packets_to(&self, id: ConnId) -> Vec<Packet> {
        let mut stream = BytesMut::from(&self.out.sent_to(id).concat()[..]);
        let mut packets = Vec::new();
        while let Some(packet) = codec::decode_from_server(&mut stream, &Limits::default()).unwrap()
        {
            packets.push(packet);
        }
        assert!(stream.is_empty(), "only whole packets are sent");
        packets
    }

    fn errors_to(&self, id: ConnId) -> Vec<i32> {
        self.packets_to(id)
            .into_iter()
            .filter_map(|packet| match packet {
                Packet::Error { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    }
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn notify(name: &str) -> Packet {
    Packet::ConnectNotify { username: b(name) }
}

fn signed_out(name: &str) -> Packet {
    Packet::SignOutNotify { username: b(name) }
}

fn broadcast(name: &str, message: &str) -> Packet {
    Packet::PublicBroadcast {
        username: b(name),
        message: b(message),
    }
}

fn code(code: ErrorCode) -> Vec<i32> {
    vec![code.code()]
}

/// Raw bytes of a packet with one string, for types and sizes the encoders would not write.
fn raw(kind: i32, size: i32, body: &[u8]) -> Vec<u8> {
    [&kind.to_be_bytes()[..], &size.to_be_bytes(), body].concat()
}

// ---- rule 1: names ----

#[test]
fn acceptance_then_connect_notify_to_every_user_newcomer_included() {
    let mut h = Harness::new();
    h.sign_in(alice(), ALICE_IP, "alice");
    h.service.on_accept(conn(9), ALICE_IP); // connected, never signed in

    h.service.on_accept(bob(), BOB_IP);
    h.data(bob(), &codec::connect_request(b"bob"));

    assert_eq!(
        h.packets_to(bob()),
        [Packet::ConnectResponse { accepted: true }, notify("bob")]
    );
    assert_eq!(h.packets_to(alice()), [notify("bob")]);
    assert!(h.out.sent_to(conn(9)).is_empty(), "not a member yet");
    assert!(h.out.closed.is_empty());
    assert_eq!(h.service.users(), 2);
}

#[test]
fn connect_notify_is_encoded_once_and_shared() {
    let mut h = Harness::new();
    h.sign_in(alice(), ALICE_IP, "alice");
    h.service.on_accept(bob(), BOB_IP);
    h.data(bob(), &codec::connect_request(b"bob"));
    let to_alice = &h.out.sent_to(alice())[0];
    let to_bob = &h.out.sent_to(bob())[1];
    assert_eq!(
        to_alice.as_ptr(),
        to_bob.as_ptr(),
        "one buffer, two references"
    );
}

#[test]
fn a_refused_name_keeps_the_connection_open_for_another_try() {
    let mut h = Harness::new();
    h.sign_in(alice(), ALICE_IP, "alice");
    h.service.on_accept(bob(), BOB_IP);

    h.data(bob(), &codec::connect_request(b"alice"));
    assert_eq!(
        h.packets_to(bob()),
        [Packet::ConnectResponse { accepted: false }]
    );
    assert!(
        h.out.sent_to(alice()).is_empty(),
        "a refusal is not announced"
    );
    assert!(h.out.closed.is_empty());
    assert_eq!(h.out.rejected, 1);
    h.out.clear();

    h.data(bob(), &codec::connect_request(b"bob"));
    assert_eq!(
        h.packets_to(bob()),
        [Packet::ConnectResponse { accepted: true }, notify("bob")]
    );
    assert_eq!(h.service.users(), 2);
}

#[test]
fn names_that_are_refused() {
    let thirty_three = "a".repeat(33);
    let refused: [&[u8]; 20] = [
        b"alice", // taken
        b"",
        thirty_three.as_bytes(),
        b"bob smith",
        b"bob-smith",
        b"bob_smith",
        b"bob!",
        b"bob\n",
        b"bob\0",
        "bob\u{1f600}".as_bytes(),
        b"\xff\xfe",
        b"bo\xc3", // cut in the middle of a character
        // Look-alikes and invisible characters (issue 15): Cyrillic a, fullwidth letters, a
        // right-to-left override, a zero-width space, and letters of other scripts.
        "\u{430}lice".as_bytes(),
        "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}".as_bytes(),
        "bob\u{202e}".as_bytes(),
        "b\u{200b}ob".as_bytes(),
        "Jos\u{e9}".as_bytes(),
        "\u{540d}\u{524d}".as_bytes(),
        "\u{0662}".as_bytes(), // an Arabic-Indic digit
        "\u{2167}".as_bytes(), // Roman numeral eight, alphanumeric to Unicode
    ];
    let mut h = Harness::new();
    h.sign_in(alice(), ALICE_IP, "alice");
    h.service.on_accept(bob(), BOB_IP);
    for name in refused {
        h.out.clear();
        h.data(bob(), &codec::connect_request(name));
        assert_eq!(
            h.packets_to(bob()),
            [Packet::ConnectResponse { accepted: false }],
            "{name:?}"
        );
    }
    assert_eq!(h.out.rejected, refused.len() as u64);
    assert!(h.out.closed.is_empty());
    assert_eq!(h.service.users(), 1);
}

#[test]
fn names_that_are_accepted_are_ascii_letters_and_digits() {
    let thirty_two = "a".repeat(32);
    let names = ["bob", "Bob42", "42", thirty_two.as_str(), "ZZtop9"];
    let mut h = Harness::new();
    for (slot, name) in (10..).zip(names) {
        h.sign_in(conn(slot), ALICE_IP, name);
    }
    assert_eq!(h.service.users(), names.len());
}

#[test]
fn a_name_is_free_again_once_its_user_left() {
    let mut h = Harness::new();
    h.sign_in(alice(), ALICE_IP, "alice");
    h.data(alice(), &codec::public_sign_out());
    h.sign_in(bob(), BOB_IP, "alice");
    h.service.on_close(alice(), &mut h.out);
    h.sign_in(carol(), CAROL_IP, "bob");
    assert_eq!(h.service.users(), 2);
}

#[test]
fn packets_before_acceptance_get_error_8_and_the_connection_stays() {
    let mut h = Harness::new();
    h.sign_in(alice(), ALICE_IP, "alice");
    h.service.on_accept(bob(), BOB_IP);
    let early = [
        codec::public_message(b"hi"),
        codec::private_request(b"alice"),
        codec::private_accept(b"alice"),
        codec::private_src_ports(b"alice", 4000, 4001),
        codec::public_sign_out(),
    ];
    for packet in &early {
        h.data(bob(), packet);
    }
    assert_eq!(h.errors_to(bob()), vec![8; early.len()]);
    assert!(h.out.sent_to(alice()).is_empty(), "nothing reached alice");
    assert!(h.out.closed.is_empty());
    assert_eq!(h.out.rejected, early.len() as u64);
    assert_eq!(h.out.frames_in, early.len() as u64);

    h.out.clear();
    h.data(bob(), &codec::connect_request(b"bob"));
    assert_eq!(h.packets_to(alice()), [notify("bob")]);
}

#[test]
fn a_second_connect_request_gets_error_9_and_the_connection_stays() {
    let mut h = Harness::new();
    h.sign_in(alice(), ALICE_IP, "alice");
    h.data(alice(), &codec::connect_request(b"alice2"));
    assert_eq!(h.errors_to(alice()), code(ErrorCode::AlreadySignedIn));
    assert!(h.out.closed.is_empty());
    assert_eq!(h.service.users(), 1);
    h.out.clear();
    h.data(alice(), &codec::public_message(b"still here"));
    assert_eq!(h.packets_to(alice()), [broadcast("alice", "still here")]);
}

// ---- rule 2: public messages ----

#[test]
fn a_public_message_reaches_every_user_the_sender_included() {
    let mut h = Harness::three_users();
    h.service.on_accept(conn(9), ALICE_IP); // not signed in
    h.data(bob(), &codec::public_message("ol\u{e1}, room".as_bytes()));
    for id in [alice(), bob(), carol()] {
        assert_eq!(h.packets_to(id), [broadcast("bob", "ol\u{e1}, room")]);
    }
    assert!(h.out.sent_to(conn(9)).is_empty());
    let shared: Vec<_> = h.out.sent.iter().map(|(_, bytes)| bytes.as_ptr()).collect();
    assert!(shared.windows(2).all(|w| w[0] == w[1]), "encoded once");
}

#[test]
fn messages_of_512_bytes_pass_and_513_bytes_get_error_3() {
    let mut h = Harness::three_users();
    let at_limit = "m".repeat(512);
    h.data(alice(), &codec::public_message(at_limit.as_bytes()));
    assert_eq!(h.packets_to(bob()), [broadcast("alice", &at_limit)]);
    h.out.clear();

    let over = "m".repeat(513);
    h.data(alice(), &codec::public_message(over.as_bytes()));
    assert_eq!(h.errors_to(alice()), code(ErrorCode::InvalidMessage));
    assert!(h.out.sent_to(bob()).is_empty(), "not broadcast");
    assert!(h.out.closed.is_empty());
}

#[test]
fn control_characters_and_bad_utf8_get_error_3_and_are_not_broadcast() {
    let mut h = Harness::three_users();
    let invalid: [&[u8]; 7] = [
        b"line\nbreak",
        b"carriage\rreturn",
        b"tab\there",
        b"nul\0",
        b"del\x7f",
        "next line\u{85}".as_bytes(),
        b"not utf-8 \xc3\x28",
    ];
    for message in invalid {
        h.data(alice(), &codec::public_message(message));
    }
    assert_eq!(h.errors_to(alice()), vec![3; invalid.len()]);
    assert!(h.out.sent_to(bob()).is_empty());
    assert!(h.out.closed.is_empty());
    assert_eq!(h.out.rejected, invalid.len() as u64);
}

#[test]
fn an_empty_message_is_broadcast() {
    let mut h = Harness::three_users();
    h.data(alice(), &codec::public_message(b""));
    assert_eq!(h.packets_to(carol()), [broadcast("alice", "")]);
}

// ---- rule 3: private links ----

fn ports_to_dst(name: &str, address: &[u8], message_port: i32, file_port: i32) -> Packet {
    Packet::PrivateSrcAddress {
        username: b(name),
        address: Bytes::copy_from_slice(address),
        message_port,
        file_port,
    }
}

#[test]
fn a_private_request_notifies_dst_only() {
    let mut h = Harness::three_users();
    h.data(alice(), &codec::private_request(b"bob"));
    assert_eq!(
        h.packets_to(bob()),
        [Packet::PrivateRequestNotify {
            username: b("alice")
        }]
    );
    assert!(h.out.sent_to(alice()).is_empty());
    assert!(h.out.sent_to(carol()).is_empty());
}

/// The attack 5: PRIVATE_REQUEST to one victim, over and over. The victim receives at
/// most the pair's rate; the sender gets ERROR 12 for the rest, and its rate to anyone holds
/// too.
#[test]
fn private_request_floods_are_refused_to_their_sender_per_pair_and_per_sender() {
    let mut h = Harness::with_config(MatouConfig {
        private_requests_per_s_max: 5,
        private_requests_per_pair_per_s_max: 2,
        pending_requests_per_user_max: 1000,
        ..MatouConfig::default()
    });
    h.sign_in(alice(), ALICE_IP, "alice");
    h.sign_in(bob(), BOB_IP, "bob");
    for n in 0..10 {
        h.sign_in(conn(10 + n), CAROL_IP, &format!("user{n}"));
    }
    h.forget();
    for _ in 0..100 {
        h.data(alice(), &codec::private_request(b"bob"));
    }
    assert_eq!(h.packets_to(bob()).len(), 2, "the pair's second's worth");
    assert_eq!(h.errors_to(alice()), vec![12; 98]);
    assert!(h.out.closed.is_empty(), "nobody is closed for it");
    // The other 3 of alice's 5 go to other users; then she is refused for anyone.
    h.forget();
    for n in 0..10 {
        h.data(
            alice(),
            &codec::private_request(format!("user{n}").as_bytes()),
        );
    }
    let notified = (0..10)
        .filter(|&n| !h.out.sent_to(conn(10 + n)).is_empty())
        .count();
    assert_eq!(notified, 3);
    assert_eq!(h.errors_to(alice()), vec![12; 7]);
    // Bob's own requests are his own budget; a second later alice may ask again.
    h.forget();
    h.data(bob(), &codec::private_request(b"alice"));
    assert_eq!(h.packets_to(alice()).len(), 1);
    h.now_ms = 1000;
    h.data(alice(), &codec::private_request(b"bob"));
    assert_eq!(h.packets_to(bob()).len(), 1);
}

#[test]
fn a_private_request_to_oneself_gets_error_5() {
    let mut h = Harness::three_users();
    h.data(alice(), &codec::private_request(b"alice"));
    assert_eq!(h.errors_to(alice()), code(ErrorCode::RequestToSelf));
    assert!(h.out.closed.is_empty());
}

#[test]
fn a_private_request_to_an_unknown_user_gets_error_4() {
    let mut h = Harness::three_users();
    h.service.on_accept(conn(9), BOB_IP);
    h.data(conn(9), &codec::connect_request(b"no one")); // refused: not signed in
    h.out.clear();
    for name in [&b"dave"[..], b"", b"Bob", b"no one"] {
        h.data(alice(), &codec::private_request(name));
    }
    assert_eq!(h.errors_to(alice()), vec![4; 4]);
    assert!(h.out.sent_to(conn(9)).is_empty());
}

#[test]
fn an_accept_without_a_pending_request_gets_error_6() {
    let mut h = Harness::three_users();
    // Nothing asked; an unknown name; the request went the other way.
    h.data(bob(), &codec::private_accept(b"alice"));
    h.data(bob(), &codec::private_accept(b"dave"));
    h.data(alice(), &codec::private_request(b"bob"));
    h.data(alice(), &codec::private_accept(b"bob"));
    // Carol was not asked.
    h.data(carol(), &codec::private_accept(b"alice"));
    assert_eq!(h.errors_to(bob()), vec![6, 6]);
    assert_eq!(h.errors_to(alice()), code(ErrorCode::NoPendingRequest));
    assert_eq!(h.errors_to(carol()), code(ErrorCode::NoPendingRequest));
    // Accepting twice: the second finds nothing pending.
    h.out.clear();
    h.data(bob(), &codec::private_accept(b"alice"));
    h.data(bob(), &codec::private_accept(b"alice"));
    assert_eq!(h.errors_to(bob()), code(ErrorCode::NoPendingRequest));
    assert_eq!(h.packets_to(alice()).len(), 1, "one address");
}

#[test]
fn ports_without_an_accepted_pair_get_error_7() {
    let mut h = Harness::three_users();
    h.data(alice(), &codec::private_src_ports(b"bob", 4000, 4001));
    h.data(alice(), &codec::private_src_ports(b"dave", 4000, 4001));
    h.data(alice(), &codec::private_request(b"bob"));
    h.data(alice(), &codec::private_src_ports(b"bob", 4000, 4001)); // pending only
    h.data(bob(), &codec::private_accept(b"alice"));
    h.data(bob(), &codec::private_src_ports(b"alice", 4000, 4001)); // Dst, not Src
    h.data(carol(), &codec::private_src_ports(b"bob", 4000, 4001));
    assert_eq!(h.errors_to(alice()), vec![7, 7, 7]);
    assert_eq!(h.errors_to(bob()), code(ErrorCode::LinkNotAccepted));
    assert_eq!(h.errors_to(carol()), code(ErrorCode::LinkNotAccepted));
    assert!(h.out.closed.is_empty());
}

#[test]
fn ports_outside_1_to_65535_get_error_11_and_the_pair_stays_accepted() {
    let mut h = Harness::three_users();
    h.data(alice(), &codec::private_request(b"bob"));
    h.data(bob(), &codec::private_accept(b"alice"));
    h.out.clear();
    for (message_port, file_port) in [(0, 4001), (4000, 0), (65_536, 4001), (-1, 4001)] {
        h.data(
            alice(),
            &codec::private_src_ports(b"bob", message_port, file_port),
        );
    }
    assert_eq!(h.errors_to(alice()), vec![11; 4]);
    assert!(h.out.sent_to(bob()).is_empty());
    h.data(alice(), &codec::private_src_ports(b"bob", 1, 65_535));
    assert_eq!(
        h.packets_to(bob()),
        [ports_to_dst("alice", &[192, 0, 2, 10], 1, 65_535)]
    );
}

#[test]
fn the_whole_brokering_over_ipv4_byte_for_byte() {
    let mut h = Harness::three_users();
    h.data(alice(), &codec::private_request(b"bob"));
    assert_eq!(
        h.out.sent_to(bob()).concat(),
        [&[0, 0, 0, 7, 0, 0, 0, 5][..], b"alice"].concat()
    );
    h.out.clear();

    h.data(bob(), &codec::private_accept(b"alice"));
    // PRIVATE_DST_ADDRESS to Src: Dst's name, size 4, Dst's address.
    assert_eq!(
        h.out.sent_to(alice()).concat(),
        [
            &[0, 0, 0, 9, 0, 0, 0, 3][..],
            b"bob",
            &[0, 0, 0, 4, 198, 51, 100, 20],
        ]
        .concat()
    );
    assert!(h.out.sent_to(bob()).is_empty());
    h.out.clear();

    h.data(alice(), &codec::private_src_ports(b"bob", 40_000, 40_001));
    // PRIVATE_SRC_ADDRESS to Dst: Src's name, size 4, Src's address, the ports.
    assert_eq!(
        h.out.sent_to(bob()).concat(),
        [
            &[0, 0, 0, 11, 0, 0, 0, 5][..],
            b"alice",
            &[0, 0, 0, 4, 192, 0, 2, 10],
            &40_000i32.to_be_bytes(),
            &40_001i32.to_be_bytes(),
        ]
        .concat()
    );
    assert!(h.out.sent_to(alice()).is_empty());
    assert!(h.out.sent_to(carol()).is_empty());
    h.out.clear();

    // Done and forgotten: the same ports again are not for an accepted pair.
    h.data(alice(), &codec::private_src_ports(b"bob", 40_000, 40_001));
    assert_eq!(h.errors_to(alice()), code(ErrorCode::LinkNotAccepted));
    assert_eq!(h.out.rejected, 1);
}

#[test]
fn the_whole_brokering_over_ipv6_byte_for_byte() {
    let carol_address = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
    ];
    let mut h = Harness::three_users();
    // Carol (IPv6) is Src: Alice's IPv4 address goes to her, hers to Alice.
    h.data(carol(), &codec::private_request(b"alice"));
    h.data(alice(), &codec::private_accept(b"carol"));
    assert_eq!(
        h.packets_to(carol()),
        [Packet::PrivateDstAddress {
            username: b("alice"),
            address: Bytes::copy_from_slice(&[192, 0, 2, 10]),
        }]
    );
    h.data(carol(), &codec::private_src_ports(b"alice", 5000, 5001));
    assert_eq!(
        h.out.sent_to(alice()).concat(),
        [
            &[0, 0, 0, 7, 0, 0, 0, 5][..],
            b"carol",
            &[0, 0, 0, 11, 0, 0, 0, 5],
            b"carol",
            &[0, 0, 0, 16],
            &carol_address,
            &5000i32.to_be_bytes(),
            &5001i32.to_be_bytes(),
        ]
        .concat()
    );
    // And the other way round: Carol as Dst.
    h.out.clear();
    h.data(bob(), &codec::private_request(b"carol"));
    h.data(carol(), &codec::private_accept(b"bob"));
    assert_eq!(
        h.packets_to(bob()),
        [Packet::PrivateDstAddress {
            username: b("carol"),
            address: Bytes::copy_from_slice(&carol_address),
        }]
    );
}

#[test]
fn an_ipv4_mapped_ipv6_peer_gets_a_4_byte_address() {
    let mut h = Harness::new();
    let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped());
    h.sign_in(alice(), mapped, "alice");
    h.sign_in(bob(), BOB_IP, "bob");
    h.data(bob(), &codec::private_request(b"alice"));
    h.data(alice(), &codec::private_accept(b"bob"));
    h.data(bob(), &codec::private_src_ports(b"alice", 7000, 7001));
    h.out.clear();
    h.data(alice(), &codec::private_request(b"bob"));
    h.data(bob(), &codec::private_accept(b"alice"));
    assert_eq!(
        h.packets_to(alice())[0],
        Packet::PrivateDstAddress {
            username: b("bob"),
            address: Bytes::copy_from_slice(&[198, 51, 100, 20]),
        }
    );
    h.out.clear();
    h.data(alice(), &codec::private_src_ports(b"bob", 7000, 7001));
    assert_eq!(
        h.packets_to(bob()),
        [ports_to_dst("alice", &[203, 0, 113, 7], 7000, 7001)]
    );
}

#[test]
fn src_leaving_mid_brokering_makes_the_later_accept_an_error() {
    let mut h = Harness::three_users();
    h.data(alice(), &codec::private_request(b"bob"));
    h.data(alice(), &codec::public_sign_out());
    h.out.clear();
    h.data(bob(), &codec::private_accept(b"alice"));
    assert_eq!(h.errors_to(bob()), code(ErrorCode::NoPendingRequest));
    assert!(h.out.sent_to(alice()).is_empty());

    // A newcomer who takes the name does not inherit the request.
    h.service.on_close(alice(), &mut h.out);
    h.sign_in(conn(4), ALICE_IP, "alice");
    h.data(bob(), &codec::private_accept(b"alice"));
    assert_eq!(h.errors_to(bob()), code(ErrorCode::NoPendingRequest));
}

#[test]
fn dst_leaving_mid_brokering_makes_the_later_ports_an_error() {
    let mut h = Harness::three_users();
    h.data(alice(), &codec::private_request(b"bob"));
    h.data(bob(), &codec::private_accept(b"alice"));
    h.service.on_close(bob(), &mut h.out); // EOF
    h.out.clear();
    h.data(alice(), &codec::private_src_ports(b"bob", 4000, 4001));
    assert_eq!(h.errors_to(alice()), code(ErrorCode::LinkNotAccepted));

    h.sign_in(conn(4), BOB_IP, "bob");
    h.data(alice(), &codec::private_src_ports(b"bob", 4000, 4001));
    assert_eq!(h.errors_to(alice()), code(ErrorCode::LinkNotAccepted));
    assert!(h.out.sent_to(conn(4)).is_empty());
}

#[test]
fn pending_requests_per_user_are_limited() {
    let mut h = Harness::with_config(MatouConfig {
        pending_requests_per_user_max: 2,
        ..MatouConfig::default()
    });
    h.sign_in(alice(), ALICE_IP, "alice");
    h.sign_in(bob(), BOB_IP, "bob");
    h.sign_in(carol(), CAROL_IP, "carol");
    h.sign_in(conn(4), BOB_IP, "dave");

    h.data(alice(), &codec::private_request(b"bob"));
    h.data(alice(), &codec::private_request(b"carol"));
    // Asking again while pending repeats the notification, it is not a third request.
    h.data(alice(), &codec::private_request(b"bob"));
    assert!(h.errors_to(alice()).is_empty());
    assert_eq!(h.packets_to(bob()).len(), 2);

    h.data(alice(), &codec::private_request(b"dave"));
    assert_eq!(
        h.errors_to(alice()),
        code(ErrorCode::TooManyPendingRequests)
    );
    assert!(h.out.sent_to(conn(4)).is_empty());

    // An accept frees a slot; so does a Dst leaving.
    h.data(bob(), &codec::private_accept(b"alice"));
    h.data(alice(), &codec::private_request(b"dave"));
    assert_eq!(h.packets_to(conn(4)).len(), 1);
    h.data(carol(), &codec::public_sign_out());
    h.sign_in(conn(5), CAROL_IP, "erin");
    h.out.clear();
    h.data(alice(), &codec::private_request(b"erin"));
    assert!(h.errors_to(alice()).is_empty());
    assert_eq!(h.packets_to(conn(5)).len(), 1);
}

// ---- rule 4: leaving ----

#[test]
fn sign_out_notifies_the_others_then_closes_after_flush() {
    let mut h = Harness::three_users();
    h.data(bob(), &codec::public_sign_out());
    assert_eq!(h.packets_to(alice()), [signed_out("bob")]);
    assert_eq!(h.packets_to(carol()), [signed_out("bob")]);
    assert!(h.out.sent_to(bob()).is_empty(), "the others only");
    assert_eq!(
        h.out.closed,
        [(bob(), CloseReason::Done, CloseMode::AfterFlush)]
    );
    assert_eq!(h.service.users(), 2);
    assert_eq!(h.out.rejected, 0);
}

#[test]
fn sign_out_then_close_notifies_once() {
    let mut h = Harness::three_users();
    h.data(bob(), &codec::public_sign_out());
    h.service.on_close(bob(), &mut h.out);
    assert_eq!(h.packets_to(alice()), [signed_out("bob")]);
    // A second close (the reactor's slot is reused later) changes nothing either.
    h.service.on_close(bob(), &mut h.out);
    assert_eq!(h.packets_to(alice()), [signed_out("bob")]);
}

#[test]
fn input_after_sign_out_is_ignored() {
    let mut h = Harness::three_users();
    let mut input = BytesMut::new();
    input.extend_from_slice(&codec::public_sign_out());
    input.extend_from_slice(&codec::public_message(b"too late"));
    h.service.on_data(bob(), &mut input, h.now_ms, &mut h.out);
    assert!(input.is_empty());
    h.data(bob(), &codec::public_message(b"later still"));
    assert_eq!(h.packets_to(alice()), [signed_out("bob")]);
    assert_eq!(h.out.frames_in, 1);
}

#[test]
fn eof_notifies_the_others() {
    let mut h = Harness::three_users();
    h.service.on_close(carol(), &mut h.out);
    assert_eq!(h.packets_to(alice()), [signed_out("carol")]);
    assert_eq!(h.packets_to(bob()), [signed_out("carol")]);
    assert!(h.out.closed.is_empty(), "already gone");
    assert_eq!(h.service.users(), 2);
}

#[test]
fn a_connection_gone_before_acceptance_notifies_nobody() {
    let mut h = Harness::three_users();
    h.service.on_accept(conn(9), ALICE_IP);
    h.data(conn(9), &codec::connect_request(b"alice")); // refused
    h.out.clear();
    h.service.on_close(conn(9), &mut h.out);
    assert!(h.out.sent.is_empty());
    assert_eq!(h.service.users(), 3);
}

#[test]
fn members_stay_reachable_as_others_leave_in_any_order() {
    let mut h = Harness::three_users();
    h.sign_in(conn(4), BOB_IP, "dave");
    h.service.on_close(alice(), &mut h.out); // the first member: the last moves into its place
    h.service.on_close(conn(4), &mut h.out); // the one that moved
    h.out.clear();
    h.data(carol(), &codec::public_message(b"who is here"));
    assert_eq!(h.packets_to(bob()), [broadcast("carol", "who is here")]);
    assert_eq!(h.packets_to(carol()), [broadcast("carol", "who is here")]);
    assert_eq!(h.out.sent.len(), 2);
}

// ---- rule 5: lost framing ----

#[test]
fn an_unknown_type_gets_error_1_then_close_and_the_others_learn_it() {
    let mut h = Harness::three_users();
    h.data(bob(), &99i32.to_be_bytes());
    assert_eq!(h.errors_to(bob()), code(ErrorCode::UnknownType));
    assert_eq!(
        h.out.closed,
        [(bob(), CloseReason::ProtocolError, CloseMode::AfterFlush)]
    );
    assert_eq!(h.packets_to(alice()), [signed_out("bob")]);
    assert_eq!(h.packets_to(carol()), [signed_out("bob")]);
    assert_eq!(h.out.rejected, 1);
    assert_eq!(h.service.users(), 2);

    h.service.on_close(bob(), &mut h.out);
    assert_eq!(h.packets_to(alice()), [signed_out("bob")], "once");
}

#[test]
fn a_server_to_client_type_from_a_client_is_an_unknown_type() {
    let mut h = Harness::three_users();
    h.data(bob(), &codec::public_broadcast(b"alice", b"forged"));
    h.data(carol(), &codec::private_message(b"not here"));
    assert_eq!(h.errors_to(bob()), code(ErrorCode::UnknownType));
    assert_eq!(h.errors_to(carol()), code(ErrorCode::UnknownType));
    assert_eq!(
        h.out.closed,
        [
            (bob(), CloseReason::ProtocolError, CloseMode::AfterFlush),
            (carol(), CloseReason::ProtocolError, CloseMode::AfterFlush),
        ]
    );
    assert_eq!(
        h.packets_to(alice()),
        [signed_out("bob"), signed_out("carol")]
    );
}

#[test]
fn an_oversized_size_gets_error_2_then_close_without_waiting_for_the_body() {
    let mut h = Harness::three_users();
    // 4097 announced: only the 8 header bytes are sent.
    h.data(bob(), &raw(codec::PUBLIC_MESSAGE, 4097, b""));
    assert_eq!(h.errors_to(bob()), code(ErrorCode::BadSize));
    assert_eq!(
        h.out.closed,
        [(bob(), CloseReason::ProtocolError, CloseMode::AfterFlush)]
    );
    assert_eq!(h.packets_to(alice()), [signed_out("bob")]);
}

#[test]
fn a_negative_size_gets_error_2_then_close() {
    let mut h = Harness::three_users();
    h.data(carol(), &raw(codec::PRIVATE_REQUEST, -1, b""));
    assert_eq!(h.errors_to(carol()), code(ErrorCode::BadSize));
    assert_eq!(
        h.out.closed,
        [(carol(), CloseReason::ProtocolError, CloseMode::AfterFlush)]
    );
    assert_eq!(h.packets_to(bob()), [signed_out("carol")]);
}

#[test]
fn a_protocol_error_before_acceptance_notifies_nobody() {
    let mut h = Harness::three_users();
    h.service.on_accept(conn(9), ALICE_IP);
    h.data(conn(9), &raw(codec::CONNECT_REQUEST, 1 << 20, b""));
    assert_eq!(h.errors_to(conn(9)), code(ErrorCode::BadSize));
    assert_eq!(h.out.closed.len(), 1);
    assert!(h.out.sent_to(alice()).is_empty());
    h.service.on_close(conn(9), &mut h.out);
    assert!(h.out.sent_to(alice()).is_empty());
}

#[test]
fn a_long_name_under_the_framing_limit_is_only_refused() {
    let mut h = Harness::new();
    h.service.on_accept(alice(), ALICE_IP);
    h.data(alice(), &codec::connect_request(&[b'a'; 4096]));
    assert_eq!(
        h.packets_to(alice()),
        [Packet::ConnectResponse { accepted: false }]
    );
    assert!(h.out.closed.is_empty());
}

#[test]
fn input_after_a_protocol_error_is_ignored() {
    let mut h = Harness::three_users();
    let mut input = BytesMut::new();
    input.extend_from_slice(&0i32.to_be_bytes());
    input.extend_from_slice(&codec::public_message(b"after the error"));
    h.service.on_data(bob(), &mut input, h.now_ms, &mut h.out);
    assert!(input.is_empty());
    h.data(bob(), &codec::public_message(b"and later"));
    assert_eq!(h.packets_to(alice()), [signed_out("bob")]);
    assert_eq!(h.out.frames_in, 0);
}

// ---- framing across calls ----

#[test]
fn a_packet_split_across_calls_is_handled_once_whole() {
    let mut h = Harness::three_users();
    let packet = codec::public_message(b"bit by bit");
    let mut input = BytesMut::new();
    for &byte in &packet[..packet.len() - 1] {
        input.extend_from_slice(&[byte]);
        h.service.on_data(alice(), &mut input, h.now_ms, &mut h.out);
        assert!(h.out.sent.is_empty());
    }
    assert_eq!(input.len(), packet.len() - 1, "partial input stays");
    input.extend_from_slice(&packet[packet.len() - 1..]);
    h.service.on_data(alice(), &mut input, h.now_ms, &mut h.out);
    assert!(input.is_empty());
    assert_eq!(h.packets_to(bob()), [broadcast("alice", "bit by bit")]);
    assert_eq!(h.out.frames_in, 1);
}

#[test]
fn every_packet_in_one_call_is_handled_and_a_partial_one_waits() {
    let mut h = Harness::new();
    h.service.on_accept(alice(), ALICE_IP);
    h.sign_in(bob(), BOB_IP, "bob");
    let mut input = BytesMut::new();
    input.extend_from_slice(&codec::connect_request(b"alice"));
    for i in 0..5 {
        input.extend_from_slice(&codec::public_message(format!("m{i}").as_bytes()));
    }
    input.extend_from_slice(&codec::private_request(b"bob"));
    let tail = codec::public_message(b"unfinished");
    input.extend_from_slice(&tail[..9]);
    h.service.on_data(alice(), &mut input, h.now_ms, &mut h.out);

    assert_eq!(&input[..], &tail[..9]);
    let mut expected = vec![notify("alice")];
    expected.extend((0..5).map(|i| broadcast("alice", &format!("m{i}"))));
    expected.push(Packet::PrivateRequestNotify {
        username: b("alice"),
    });
    assert_eq!(h.packets_to(bob()), expected);
    assert_eq!(h.out.frames_in, 7);
}

#[test]
fn data_for_a_connection_never_accepted_is_dropped() {
    let mut h = Harness::three_users();
    let mut input = BytesMut::from(&codec::connect_request(b"ghost")[..]);
    h.service.on_data(conn(9), &mut input, h.now_ms, &mut h.out);
    assert!(input.is_empty());
    assert!(h.out.sent.is_empty());
    // Nor does a stale generation of a live slot speak for it.
    let mut input = BytesMut::from(&codec::public_message(b"stale")[..]);
    h.service
        .on_data(ConnId::new(1, 7), &mut input, h.now_ms, &mut h.out);
    assert!(h.out.sent.is_empty());
    h.service.on_close(ConnId::new(1, 7), &mut h.out);
    assert!(h.out.sent.is_empty());
    assert_eq!(h.service.users(), 3);
}

/// Streams of valid packets, garbage and everything between, cut at random points, from
/// connections that come and go: the service never panics, keeps its user count within the
/// open connections, and everything it sends decodes as a server packet.
#[test]
fn random_streams_never_break_the_service_or_its_output() {
    const NAMES: [&str; 4] = ["alice", "bob", "carol", "x"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut h = Harness::new();
    let mut generation = [1u32; 4];
    let mut open = [false; 4];
    // Each connection's unconsumed input stays for the next chunk, as in the reactor.
    let mut buffers: [BytesMut; 4] = Default::default();
    let mut sent_total = 0;
    let mut users_max = 0;
    for _ in 0..20_000 {
        let slot = rng.below(4);
        let id = ConnId::new(slot as u32, generation[slot]);
        if !open[slot] {
            h.service.on_accept(id, ALICE_IP);
            open[slot] = true;
            continue;
        }
        let name = NAMES[rng.below(NAMES.len())].as_bytes();
        let mut bytes = match rng.below(16) {
            0..=3 => codec::connect_request(name).to_vec(),
            4 | 5 => codec::public_message(b"hello").to_vec(),
            6 | 7 => codec::private_request(name).to_vec(),
            8 | 9 => codec::private_accept(name).to_vec(),
            10 | 11 => codec::private_src_ports(name, rng.below(70_000) as i32, 5001).to_vec(),
            12 => codec::public_sign_out().to_vec(),
            13 => codec::public_message(&[rng.next_u64() as u8; 3]).to_vec(),
            14 => raw(rng.below(20) as i32, rng.next_u64() as i32, b"abc"),
            _ => (0..rng.below(16)).map(|_| rng.next_u64() as u8).collect(),
        };
        // Now and then a packet cut short, to be finished (or not) by a later chunk.
        if rng.below(8) == 0 {
            bytes.truncate(rng.below(bytes.len() + 1));
        }
        buffers[slot].extend_from_slice(&bytes);
        h.service
            .on_data(id, &mut buffers[slot], h.now_ms, &mut h.out);
        if rng.below(50) == 0 || h.out.closed.iter().any(|(closed, _, _)| *closed == id) {
            h.service.on_close(id, &mut h.out);
            buffers[slot].clear();
            generation[slot] += 1;
            open[slot] = false;
        }
        assert!(h.service.users() <= open.iter().filter(|&&o| o).count());
        users_max = users_max.max(h.service.users());
        sent_total += h.out.sent.len();
        for (_, sent) in h.out.sent.drain(..) {
            let mut buf = BytesMut::from(&sent[..]);
            let decoded = codec::decode_from_server(&mut buf, &Limits::default());
            assert!(
                matches!(decoded, Ok(Some(_))) && buf.is_empty(),
                "the server sent a malformed packet: {sent:?}"
            );
        }
        h.out.closed.clear();
    }
    // The run must have reached the states worth testing, not only refusals of garbage.
    assert!(
        users_max >= 3,
        "at most {users_max} users were ever signed in"
    );
    assert!(sent_total > 5_000, "only {sent_total} packets were sent");
}

#[test]
fn only_a_name_taken_marks_the_connection_identified() {
    // The reactor closes a connection that is not identified within its handshake deadline:
    // packets before sign-in and refused names do not count; a name taken does.
    let mut h = Harness::new();
    h.sign_in(alice(), ALICE_IP, "alice");
    assert_eq!(h.out.identified, [alice()]);
    h.service.on_accept(bob(), BOB_IP);
    h.data(bob(), &codec::public_message(b"hello?"));
    h.data(bob(), &codec::connect_request(b"alice"));
    h.data(bob(), &codec::connect_request(b"not a name"));
    assert_eq!(h.out.identified, [alice()]);
    h.data(bob(), &codec::connect_request(b"bob"));
    assert_eq!(h.out.identified, [alice(), bob()]);
}

#[test]
fn a_connection_not_signed_in_by_the_deadline_gets_error_8_then_closes() {
    let mut h = Harness::three_users();
    // One silent, one refused (name taken) and silent since.
    h.service.on_accept(conn(4), ALICE_IP);
    h.service.on_accept(conn(5), BOB_IP);
    h.data(conn(5), &codec::connect_request(b"alice"));
    h.forget();
    for id in [conn(4), conn(5)] {
        h.service.on_handshake_timeout(id, 10_000, &mut h.out);
        assert_eq!(h.errors_to(id), [ErrorCode::NotSignedIn as i32]);
    }
    assert_eq!(
        h.out.closed,
        [
            (
                conn(4),
                CloseReason::HandshakeTimeout,
                CloseMode::AfterFlush
            ),
            (
                conn(5),
                CloseReason::HandshakeTimeout,
                CloseMode::AfterFlush
            ),
        ]
    );
    // Whatever else they send before the close is ignored; nobody else heard a thing.
    h.forget();
    h.data(conn(4), &codec::connect_request(b"dave"));
    assert!(h.out.sent.is_empty());
    h.service.on_close(conn(4), &mut h.out);
    h.service.on_close(conn(5), &mut h.out);
    assert!(
        h.out.sent.is_empty(),
        "no sign-out notice for users who never signed in"
    );
}
