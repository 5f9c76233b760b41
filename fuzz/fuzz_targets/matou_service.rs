//! MatouService driven by several connections' arbitrary byte streams, split arbitrarily,
//! from IPv4, IPv6 and IPv4-mapped addresses, with peers closing and the reactor's handshake
//! deadline passing for connections not signed in.
//!
//! Invariants: no panic; output only to open connections; everything sent decodes as exactly
//! one server packet; a connection not signed in receives only CONNECT_RESPONSE and ERROR;
//! the user count is the number of open connections whose name was accepted; a brokered
//! address (PRIVATE_DST_ADDRESS, PRIVATE_SRC_ADDRESS) is the IP of the connection signed in
//! under the name it comes with, never another client's, and its ports are valid.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Bytes, BytesMut};
use fuzz_support::{assert_to_open, Conns, Ops, SLOTS};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::matou::codec::{self, Limits, Packet};
use switchboard::protocol::matou::{MatouConfig, MatouService};
use switchboard::protocol::testing::RecordingOutbox;

const IPS: [IpAddr; SLOTS] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 3)),
];

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let mut service = MatouService::new(MatouConfig {
        name_bytes_max: 32,
        message_bytes_max: 64,
        string_bytes_max: 256,
        pending_requests_per_user_max: 2,
        private_requests_per_s_max: 4,
        private_requests_per_pair_per_s_max: 2,
    });
    let mut out = RecordingOutbox::default();
    let mut conns = Conns::default();
    let mut signed_in = [false; SLOTS];
    // Each slot's accepted name: the CONNECT_NOTIFY that follows its acceptance names it.
    let mut names: [Option<Bytes>; SLOTS] = Default::default();
    let mut naming: Option<usize> = None;
    while !ops.is_empty() {
        match ops.byte() % 5 {
            0 => {
                let slot = ops.slot();
                if let Some(id) = conns.accept(slot) {
                    signed_in[slot] = false;
                    names[slot] = None;
                    service.on_accept(id, IPS[slot]);
                }
            }
            2 => {
                if let Some(id) = conns.close(ops.slot()) {
                    service.on_close(id, &mut out);
                }
            }
            4 => {
                // The reactor calls this only for open connections not yet signed in.
                let slot = ops.slot();
                if conns.is_open(slot) && !signed_in[slot] {
                    let id = conns.id(slot);
                    service.on_handshake_timeout(id, 10_000, &mut out);
                    assert!(
                        out.closed.iter().any(|&(to, _, _)| to == id),
                        "not closed at the handshake deadline"
                    );
                }
            }
            _ => {
                let slot = ops.slot();
                let bytes = ops.chunk();
                if conns.is_open(slot) {
                    let id = conns.id(slot);
                    conns.input[slot].extend_from_slice(bytes);
                    service.on_data(id, &mut conns.input[slot], 0, &mut out);
                }
            }
        }
        loop {
            assert_to_open(&conns, out.sent.iter().map(|(to, _)| to));
            for (to, bytes) in out.sent.drain(..) {
                let mut buf = BytesMut::from(&bytes[..]);
                let packet = codec::decode_from_server(&mut buf, &Limits::default())
                    .expect("the server writes well-formed packets")
                    .expect("one whole packet");
                assert!(buf.is_empty(), "one packet per send");
                let Some(slot) = conns.slot_of(to) else {
                    continue;
                };
                match &packet {
                    Packet::ConnectNotify { username } => {
                        if let Some(named) = naming.take() {
                            names[named] = Some(username.clone());
                        }
                    }
                    Packet::PrivateDstAddress { username, address }
                    | Packet::PrivateSrcAddress {
                        username, address, ..
                    } => {
                        let owner = (0..SLOTS)
                            .find(|&s| conns.is_open(s) && names[s].as_ref() == Some(username))
                            .expect("a brokered address names a signed-in user");
                        assert_eq!(&address[..], &ip_bytes(IPS[owner])[..], "another's address");
                    }
                    _ => {}
                }
                if let Packet::PrivateSrcAddress {
                    message_port,
                    file_port,
                    ..
                } = &packet
                {
                    assert!(
                        (1..=65_535).contains(message_port) && (1..=65_535).contains(file_port)
                    );
                }
                match packet {
                    Packet::ConnectResponse { accepted: true } => {
                        assert!(!signed_in[slot], "accepted twice");
                        signed_in[slot] = true;
                        naming = Some(slot);
                    }
                    Packet::ConnectResponse { .. } | Packet::Error { .. } => {}
                    other => assert!(signed_in[slot], "{other:?} to a connection not signed in"),
                }
            }
            let gone = conns.take_closed(&mut out.closed);
            if gone.is_empty() {
                break;
            }
            for id in gone {
                service.on_close(id, &mut out);
            }
        }
        let users = (0..SLOTS)
            .filter(|&s| conns.is_open(s) && signed_in[s])
            .count();
        assert_eq!(service.users(), users);
    }
});

/// An IP as MATOU carries it: 4 bytes for IPv4 (an IPv4-mapped address too), else 16.
fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
