//! The hub without sockets: fabricated connections, names and bytes. Every wire rendering is
//! checked byte for byte against the contract, and read back with the protocol's own decoder.
//! The hub keeps no timer (BIN24's answer timeout stays BIN24's); the one rate it applies
//! (BIN24's sending limits on CCM senders) is given the time, fabricated here.

use bytes::{Bytes, BytesMut};

use super::testing::RecordingHubOut;
use super::*;
use crate::protocol::bin24::codec as bin24_codec;
use crate::protocol::ccm::codec::{self as ccm_codec, Message};
use crate::protocol::matou::codec::{self as matou_codec, Packet};

fn conn(slot: u32) -> ConnId {
    ConnId::new(slot, 1)
}

fn at(slot: u32) -> Endpoint {
    Endpoint::Conn(conn(slot))
}

fn ocm(member: u64) -> Endpoint {
    Endpoint::Ocm(OcmMemberId(member))
}

fn hub() -> Hub {
    Hub::new(HubConfig::default())
}

fn isolated_hub() -> Hub {
    Hub::new(HubConfig {
        isolated: true,
        ..HubConfig::default()
    })
}

fn user(protocol: ProtocolKind, endpoint: Endpoint, name: &str) -> User {
    User {
        protocol,
        endpoint,
        name: Bytes::copy_from_slice(name.as_bytes()),
    }
}

fn said(origin: ProtocolKind, sender: &[u8], text: &[u8]) -> LobbyMessage {
    LobbyMessage {
        origin,
        sender: Bytes::copy_from_slice(sender),
        text: Bytes::copy_from_slice(text),
    }
}

fn name(raw: &str) -> bin24_codec::Name {
    bin24_codec::Name::new(raw.as_bytes()).expect("a test name fits BIN24")
}

/// Two lobby members of each lobby protocol: ROOM on slots 1, 2; MATOU 11, 12; CCM 21, 22;
/// OCM members 31, 32. BIN24 has no lobby. The entering notices are recorded, then cleared.
fn full_lobby() -> (Hub, RecordingHubOut) {
    let mut hub = hub();
    let mut out = RecordingHubOut::default();
    for (protocol, endpoints, names) in [
        (ProtocolKind::Room, [at(1), at(2)], ["ra", "rb"]),
        (ProtocolKind::Matou, [at(11), at(12)], ["ma", "mb"]),
        (ProtocolKind::Ccm, [at(21), at(22)], ["ca", "cb"]),
        (ProtocolKind::Ocm, [ocm(31), ocm(32)], ["oa", "ob"]),
    ] {
        for (endpoint, name) in endpoints.into_iter().zip(names) {
            assert!(hub.enter_lobby(user(protocol, endpoint, name), &mut out));
        }
    }
    out.clear();
    (hub, out)
}

fn decode_matou(bytes: &Bytes) -> Packet {
    let mut buf = BytesMut::from(&bytes[..]);
    let packet = matou_codec::decode_from_server(&mut buf, &matou_codec::Limits::default())
        .expect("valid MATOU")
        .expect("a whole packet");
    assert!(buf.is_empty(), "one packet, nothing after it");
    packet
}

fn decode_ccm(bytes: &Bytes) -> Message {
    let mut buf = BytesMut::from(&bytes[..]);
    // The server always writes Content-Length, so the message needs no burst end.
    let message = ccm_codec::decode(&mut buf, false)
        .expect("valid CCM")
        .expect("a whole message");
    assert!(buf.is_empty(), "one message, nothing after it");
    message
}

fn attributes(message: &Message) -> Vec<(String, String)> {
    message
        .attributes
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

/// What `out` delivered, per recipient protocol, as (endpoint, bytes).
fn delivered_to_protocol(out: &RecordingHubOut, protocol: ProtocolKind) -> Vec<(Endpoint, Bytes)> {
    out.delivered
        .iter()
        .filter(|(p, _, _)| *p == protocol)
        .map(|(_, e, b)| (*e, b.clone()))
        .collect()
}

// ---- vocabulary ----

#[test]
fn protocols_index_their_own_counters_and_labels_are_distinct() {
    for (at, protocol) in ProtocolKind::ALL.iter().enumerate() {
        assert_eq!(protocol.index(), at, "{protocol:?}");
    }
    let mut labels: Vec<_> = ProtocolKind::ALL.iter().map(|p| p.label()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), ProtocolKind::COUNT);
    assert!(!ProtocolKind::Bin24.has_lobby());
    assert_eq!(
        ProtocolKind::ALL.iter().filter(|p| p.has_lobby()).count(),
        ProtocolKind::COUNT - 1
    );
}

// ---- rule 1: names ----

#[test]
fn a_name_held_in_one_protocol_is_refused_by_the_others_each_in_its_own_way() {
    let mut hub = hub();
    assert_eq!(
        hub.claim_name(NamedProtocol::Matou, conn(1), b"alice"),
        Claim::Granted
    );
    assert_eq!(hub.holder(b"alice"), Some((NamedProtocol::Matou, conn(1))));
    assert_eq!(hub.name_of(conn(1)).map(|n| &n[..]), Some(&b"alice"[..]));

    // CCM: Error with Reason: name-taken; the connection stays open (no close is asked for).
    let Claim::Refused(refusal) = hub.claim_name(NamedProtocol::Ccm, conn(2), b"alice") else {
        panic!("CCM newcomer not refused");
    };
    assert_eq!(refusal.newcomer, NamedProtocol::Ccm);
    assert_eq!(refusal.holder, NamedProtocol::Matou);
    let answer = refusal.answer().expect("CCM answers a refusal");
    assert_eq!(
        &answer[..],
        &b"CCM\\1.0 Error\nReason: name-taken\nContent-Length: 19\n\nthat name is in use"[..]
    );
    let error = decode_ccm(&answer);
    assert_eq!(error.message_type(), Some(MessageType::Error));
    assert_eq!(
        error.attribute("Reason").map(|r| &r[..]),
        Some(&b"name-taken"[..])
    );

    // BIN24: no refusal frame: the connection is closed.
    let Claim::Refused(refusal) = hub.claim_name(NamedProtocol::Bin24, conn(3), b"alice") else {
        panic!("BIN24 newcomer not refused");
    };
    assert_eq!(refusal.answer(), None);

    // MATOU held by CCM: CONNECT_RESPONSE 0.
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(4), b"carol"),
        Claim::Granted
    );
    let Claim::Refused(refusal) = hub.claim_name(NamedProtocol::Matou, conn(5), b"carol") else {
        panic!("MATOU newcomer not refused");
    };
    assert_eq!(refusal.holder, NamedProtocol::Ccm);
    let answer = refusal.answer().expect("MATOU answers a refusal");
    assert_eq!(&answer[..], &[0, 0, 0, 2, 0][..]);
    assert_eq!(
        decode_matou(&answer),
        Packet::ConnectResponse { accepted: false }
    );

    // The refused did not take anything.
    assert_eq!(hub.holder(b"alice"), Some((NamedProtocol::Matou, conn(1))));
    assert_eq!(hub.holder(b"carol"), Some((NamedProtocol::Ccm, conn(4))));
    assert_eq!(hub.name_of(conn(2)), None);
    assert_eq!(hub.names_held(), 2);
}

#[test]
fn a_bin24_name_refuses_ccm_and_matou_newcomers() {
    let mut hub = hub();
    assert_eq!(
        hub.claim_name(NamedProtocol::Bin24, conn(1), b"bob"),
        Claim::Granted
    );
    for newcomer in [NamedProtocol::Ccm, NamedProtocol::Matou] {
        assert_eq!(
            hub.claim_name(newcomer, conn(2), b"bob"),
            Claim::Refused(Refusal {
                newcomer,
                holder: NamedProtocol::Bin24
            })
        );
    }
}

#[test]
fn names_are_compared_as_bytes_case_sensitively() {
    let mut hub = hub();
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(1), b"alice"),
        Claim::Granted
    );
    assert_eq!(
        hub.claim_name(NamedProtocol::Matou, conn(2), b"Alice"),
        Claim::Granted
    );
    assert_eq!(
        hub.claim_name(NamedProtocol::Bin24, conn(3), b"alice\0"),
        Claim::Granted,
        "a different byte string, even if BIN24 would cut it"
    );
    assert_eq!(hub.names_held(), 3);
}

#[test]
fn a_bin24_newcomer_replaces_a_bin24_holder_and_the_old_release_frees_nothing() {
    let mut hub = hub();
    assert_eq!(
        hub.claim_name(NamedProtocol::Bin24, conn(1), b"bob"),
        Claim::Granted
    );
    assert_eq!(
        hub.claim_name(NamedProtocol::Bin24, conn(2), b"bob"),
        Claim::Granted
    );
    assert_eq!(hub.holder(b"bob"), Some((NamedProtocol::Bin24, conn(2))));
    assert_eq!(hub.name_of(conn(1)), None);
    // The replaced connection closes later: that must not free the newcomer's name.
    assert_eq!(hub.release_name(conn(1)), None);
    assert_eq!(hub.holder(b"bob"), Some((NamedProtocol::Bin24, conn(2))));
    assert!(matches!(
        hub.claim_name(NamedProtocol::Ccm, conn(3), b"bob"),
        Claim::Refused(_)
    ));
    assert_eq!(hub.release_name(conn(2)).as_deref(), Some(&b"bob"[..]));
    assert_eq!(hub.holder(b"bob"), None);
    assert_eq!(hub.names_held(), 0);
}

#[test]
fn the_replace_rule_stays_within_bin24_and_ccm_or_matou_holders_are_not_replaced() {
    let mut hub = hub();
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(1), b"x"),
        Claim::Granted
    );
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(2), b"x"),
        Claim::Refused(Refusal {
            newcomer: NamedProtocol::Ccm,
            holder: NamedProtocol::Ccm
        })
    );
    assert_eq!(
        hub.claim_name(NamedProtocol::Matou, conn(3), b"y"),
        Claim::Granted
    );
    assert_eq!(
        hub.claim_name(NamedProtocol::Matou, conn(4), b"y"),
        Claim::Refused(Refusal {
            newcomer: NamedProtocol::Matou,
            holder: NamedProtocol::Matou
        })
    );
    assert_eq!(hub.holder(b"x"), Some((NamedProtocol::Ccm, conn(1))));
    assert_eq!(hub.holder(b"y"), Some((NamedProtocol::Matou, conn(3))));
}

#[test]
fn claiming_again_is_granted_and_a_second_name_releases_the_first() {
    let mut hub = hub();
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(1), b"first"),
        Claim::Granted
    );
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(1), b"first"),
        Claim::Granted
    );
    assert_eq!(hub.names_held(), 1);
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(1), b"second"),
        Claim::Granted
    );
    assert_eq!(hub.holder(b"first"), None);
    assert_eq!(hub.holder(b"second"), Some((NamedProtocol::Ccm, conn(1))));
    assert_eq!(hub.names_held(), 1);
}

#[test]
fn a_name_is_free_for_any_protocol_once_its_holder_leaves() {
    let mut hub = hub();
    let mut out = RecordingHubOut::default();
    assert_eq!(
        hub.claim_name(NamedProtocol::Matou, conn(1), b"alice"),
        Claim::Granted
    );
    hub.disconnect(conn(1), &mut out);
    assert_eq!(hub.holder(b"alice"), None);
    assert_eq!(
        hub.claim_name(NamedProtocol::Bin24, conn(2), b"alice"),
        Claim::Granted
    );
    // A stale generation of the slot is another connection.
    assert_eq!(hub.release_name(ConnId::new(2, 9)), None);
    assert_eq!(hub.holder(b"alice"), Some((NamedProtocol::Bin24, conn(2))));
}

// ---- rule 2: the lobby ----

#[test]
fn a_room_message_reaches_the_other_protocols_in_their_own_forms() {
    let (mut hub, mut out) = full_lobby();
    let alias = Bytes::from_static(b"alice");
    let chunk = Bytes::from_static(b"alice: hello there");
    hub.say(LobbyMessage::from_room(&alias, &chunk), &mut out);

    assert!(
        delivered_to_protocol(&out, ProtocolKind::Room).is_empty(),
        "ROOM relays its own"
    );

    let matou = delivered_to_protocol(&out, ProtocolKind::Matou);
    assert_eq!(
        matou.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![at(11), at(12)]
    );
    let expected_matou: &[u8] = b"\x00\x00\x00\x05\x00\x00\x00\x05alice\x00\x00\x00\x0bhello there";
    for (_, bytes) in &matou {
        assert_eq!(&bytes[..], expected_matou);
        assert_eq!(
            decode_matou(bytes),
            Packet::PublicBroadcast {
                username: Bytes::from_static(b"alice"),
                message: Bytes::from_static(b"hello there"),
            }
        );
    }

    let ccm = delivered_to_protocol(&out, ProtocolKind::Ccm);
    assert_eq!(
        ccm.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![at(21), at(22)]
    );
    let expected_ccm: &[u8] = b"CCM\\1.0 Text\nSender: alice\nAddressee: *\nMessage-Encoding: utf-8\nContent-Length: 11\n\nhello there";
    for (_, bytes) in &ccm {
        assert_eq!(&bytes[..], expected_ccm);
        let message = decode_ccm(bytes);
        assert_eq!(message.message_type(), Some(MessageType::Text));
        assert_eq!(
            attributes(&message),
            [
                ("Sender", "alice"),
                ("Addressee", "*"),
                ("Message-Encoding", "utf-8"),
                ("Content-Length", "11"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(&message.content[..], b"hello there");
    }

    let to_ocm = delivered_to_protocol(&out, ProtocolKind::Ocm);
    assert_eq!(
        to_ocm.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![ocm(31), ocm(32)]
    );
    for (_, bytes) in &to_ocm {
        assert_eq!(&bytes[..], b"alice: hello there");
    }

    let counts = hub.counts();
    assert_eq!(counts.messages(ProtocolKind::Room, ProtocolKind::Matou), 2);
    assert_eq!(counts.messages(ProtocolKind::Room, ProtocolKind::Ccm), 2);
    assert_eq!(counts.messages(ProtocolKind::Room, ProtocolKind::Ocm), 2);
    assert_eq!(counts.messages(ProtocolKind::Room, ProtocolKind::Room), 0);
    assert_eq!(out.delivered.len(), 6);
}

#[test]
fn every_origin_reaches_every_other_lobby_protocol_and_never_its_own() {
    for origin in [
        ProtocolKind::Room,
        ProtocolKind::Matou,
        ProtocolKind::Ccm,
        ProtocolKind::Ocm,
    ] {
        let (mut hub, mut out) = full_lobby();
        hub.say(said(origin, b"bob", b"hey"), &mut out);
        for to in [
            ProtocolKind::Room,
            ProtocolKind::Matou,
            ProtocolKind::Ccm,
            ProtocolKind::Ocm,
        ] {
            let got = delivered_to_protocol(&out, to);
            if to == origin {
                assert!(got.is_empty(), "{origin:?} to itself");
                continue;
            }
            assert_eq!(got.len(), 2, "{origin:?} to {to:?}");
            let expected: Bytes = match to {
                ProtocolKind::Room | ProtocolKind::Ocm => Bytes::from_static(b"bob: hey"),
                ProtocolKind::Matou => matou_codec::public_broadcast(b"bob", b"hey"),
                ProtocolKind::Ccm => Bytes::from_static(
                    b"CCM\\1.0 Text\nSender: bob\nAddressee: *\nMessage-Encoding: utf-8\nContent-Length: 3\n\nhey",
                ),
                ProtocolKind::Bin24 | ProtocolKind::Web => unreachable!(),
            };
            for (_, bytes) in got {
                assert_eq!(bytes, expected, "{origin:?} to {to:?}");
            }
            assert_eq!(hub.counts().messages(origin, to), 2);
        }
        assert_eq!(out.delivered.len(), 6, "{origin:?}");
    }
}

#[test]
fn one_bytes_per_form_is_shared_by_every_recipient_of_that_form() {
    let (mut hub, mut out) = full_lobby();
    for slot in 100..147 {
        assert!(hub.enter_lobby(user(ProtocolKind::Room, at(slot), "r"), &mut out));
    }
    out.clear();
    hub.say(said(ProtocolKind::Matou, b"ma", b"zero copy"), &mut out);
    let room = delivered_to_protocol(&out, ProtocolKind::Room);
    assert_eq!(room.len(), 49);
    let to_ocm = delivered_to_protocol(&out, ProtocolKind::Ocm);
    let ccm = delivered_to_protocol(&out, ProtocolKind::Ccm);
    // ROOM's `N: T` and OCM's datagram are the same bytes: one buffer for both.
    let line_ptr = room[0].1.as_ptr();
    for (_, bytes) in room.iter().chain(&to_ocm) {
        assert_eq!(bytes.as_ptr(), line_ptr);
    }
    let ccm_ptr = ccm[0].1.as_ptr();
    assert!(ccm.iter().all(|(_, bytes)| bytes.as_ptr() == ccm_ptr));
    assert_ne!(ccm_ptr, line_ptr);

    out.clear();
    hub.say(said(ProtocolKind::Ccm, b"ca", b"again"), &mut out);
    let matou = delivered_to_protocol(&out, ProtocolKind::Matou);
    assert_eq!(matou.len(), 2);
    assert_eq!(matou[0].1.as_ptr(), matou[1].1.as_ptr());
}

#[test]
fn a_message_without_recipients_in_other_protocols_delivers_nothing() {
    let mut hub = hub();
    let mut out = RecordingHubOut::default();
    for slot in 1..4 {
        hub.enter_lobby(user(ProtocolKind::Room, at(slot), "r"), &mut out);
    }
    out.clear();
    hub.say(said(ProtocolKind::Room, b"r", b"only rooms here"), &mut out);
    assert!(out.delivered.is_empty());
    assert_eq!(hub.counts(), &Counts::default());
    // The event still happened: a cluster would carry it to other nodes.
    assert_eq!(
        out.events,
        vec![HubEvent::Said(said(
            ProtocolKind::Room,
            b"r",
            b"only rooms here"
        ))]
    );
}

#[test]
fn a_form_the_recipient_protocol_cannot_carry_is_not_delivered_and_is_counted() {
    // MATOU: over 512 bytes.
    let (mut hub, mut out) = full_lobby();
    let long = vec![b'a'; 513];
    hub.say(said(ProtocolKind::Room, b"r", &long), &mut out);
    assert!(delivered_to_protocol(&out, ProtocolKind::Matou).is_empty());
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Ccm).len(), 2);
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Ocm).len(), 2);
    assert_eq!(
        hub.counts()
            .over_limit(ProtocolKind::Room, ProtocolKind::Matou),
        2
    );
    assert_eq!(
        hub.counts()
            .messages(ProtocolKind::Room, ProtocolKind::Matou),
        0
    );

    // 512 bytes is MATOU's limit exactly: delivered.
    let (mut hub, mut out) = full_lobby();
    hub.say(said(ProtocolKind::Room, b"r", &vec![b'a'; 512]), &mut out);
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Matou).len(), 2);

    // MATOU: a control character (a ROOM chunk typed with `nc` ends in LF).
    let (mut hub, mut out) = full_lobby();
    hub.say(said(ProtocolKind::Room, b"r", b"hi\n"), &mut out);
    assert!(delivered_to_protocol(&out, ProtocolKind::Matou).is_empty());
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Ocm).len(), 2);
    assert_eq!(
        hub.counts()
            .over_limit(ProtocolKind::Room, ProtocolKind::Matou),
        2
    );

    // OCM: `N: T` over 4094 bytes. 4094 exactly fits.
    let (mut hub, mut out) = full_lobby();
    hub.say(
        said(ProtocolKind::Matou, b"ab", &vec![b'x'; 4090]),
        &mut out,
    );
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Ocm).len(), 2);
    hub.say(
        said(ProtocolKind::Matou, b"ab", &vec![b'x'; 4091]),
        &mut out,
    );
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Ocm).len(), 2);
    assert_eq!(
        hub.counts()
            .over_limit(ProtocolKind::Matou, ProtocolKind::Ocm),
        2
    );
    assert_eq!(
        hub.counts()
            .messages(ProtocolKind::Matou, ProtocolKind::Ocm),
        2
    );
    // ROOM has no such limit.
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Room).len(), 4);

    // Bytes that are not UTF-8 (ROOM is raw bytes) only ROOM can carry.
    let (mut hub, mut out) = full_lobby();
    hub.say(said(ProtocolKind::Ocm, b"o", b"\xff\xfe"), &mut out);
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Room).len(), 2);
    assert!(delivered_to_protocol(&out, ProtocolKind::Matou).is_empty());
    assert!(delivered_to_protocol(&out, ProtocolKind::Ccm).is_empty());
    let (mut hub, mut out) = full_lobby();
    hub.say(said(ProtocolKind::Room, b"\xffname", b"text"), &mut out);
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Room).len(), 0);
    assert!(
        out.delivered.is_empty(),
        "a non-UTF-8 alias: no other form can carry it"
    );
    for to in [ProtocolKind::Matou, ProtocolKind::Ccm, ProtocolKind::Ocm] {
        assert_eq!(hub.counts().over_limit(ProtocolKind::Room, to), 2, "{to:?}");
    }
}

#[test]
fn a_sender_name_cannot_forge_ccm_attributes() {
    let (mut hub, mut out) = full_lobby();
    hub.say(
        said(ProtocolKind::Room, b"eve\nAddressee: bob\n", b"boo"),
        &mut out,
    );
    let ccm = delivered_to_protocol(&out, ProtocolKind::Ccm);
    assert_eq!(ccm.len(), 2);
    let message = decode_ccm(&ccm[0].1);
    assert_eq!(
        attributes(&message)
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["Sender", "Addressee", "Message-Encoding", "Content-Length"]
    );
    assert_eq!(
        message.attribute("Addressee").map(|a| &a[..]),
        Some(&b"*"[..])
    );
    assert_eq!(&message.content[..], b"boo");
}

// ---- where N and T come from ----

#[test]
fn a_room_chunk_loses_a_leading_alias_prefix_and_one_line_ending_and_nothing_else() {
    let alias = Bytes::from_static(b"alice");
    let cases: &[(&[u8], &[u8])] = &[
        (b"alice: hello", b"hello"),
        (b"alice: ", b""),
        (b"alice: alice: x", b"alice: x"),
        (b"hello", b"hello"),
        (b"alice:hello", b"alice:hello"),
        (b"alice", b"alice"),
        (b"bob: hello", b"bob: hello"),
        (b"Alice: hello", b"Alice: hello"),
        // One line ending is ROOM's terminal framing, not text (and MATOU forbids control
        // characters); only one, and only at the end.
        (b"alice: hi\n", b"hi"),
        (b"alice: hi\r\n", b"hi"),
        (b"hi\n\n", b"hi\n"),
        (b"a\nb", b"a\nb"),
        (b"hi\r", b"hi\r"),
    ];
    for &(chunk, text) in cases {
        let chunk = Bytes::copy_from_slice(chunk);
        let message = LobbyMessage::from_room(&alias, &chunk);
        assert_eq!(message.origin, ProtocolKind::Room);
        assert_eq!(&message.sender[..], b"alice");
        assert_eq!(&message.text[..], text, "{chunk:?}");
        // A slice of the chunk, not a copy (an empty slice is `Bytes`'s static empty one).
        if text.is_empty() {
            continue;
        }
        let chunk_range = chunk.as_ptr() as usize..=chunk.as_ptr() as usize + chunk.len();
        assert!(chunk_range.contains(&(message.text.as_ptr() as usize)));
    }
}

#[test]
fn matou_n_and_t_are_the_username_and_the_public_message() {
    let message = LobbyMessage::from_matou(&Bytes::from_static(b"bob"), &Bytes::from_static(b"hi"));
    assert_eq!(message, said(ProtocolKind::Matou, b"bob", b"hi"));
}

fn ccm_message(raw: &[u8]) -> Message {
    let mut buf = BytesMut::from(raw);
    ccm_codec::decode(&mut buf, true)
        .expect("valid CCM")
        .expect("whole")
}

#[test]
fn a_ccm_text_to_everyone_is_a_lobby_message_with_its_content_as_utf8() {
    let carol = Bytes::from_static(b"carol");
    let utf8 = ccm_message(b"CCM\\1.0 Text\nAddressee: *\nMessage-Encoding: utf-8\n\nol\xc3\xa1");
    let message = LobbyMessage::from_ccm(&carol, &utf8)
        .expect("decodable")
        .expect("a lobby message");
    assert_eq!(message, said(ProtocolKind::Ccm, b"carol", "olá".as_bytes()));
    assert_eq!(
        message.text.as_ptr(),
        utf8.content.as_ptr(),
        "UTF-8 is shared"
    );

    // No Message-Encoding: UTF-8, the contract's default. The type name is case-insensitive.
    let bare = ccm_message(b"CCM\\1.0 text\nAddressee: *\n\nhi");
    assert_eq!(
        LobbyMessage::from_ccm(&carol, &bare).expect("ok"),
        Some(said(ProtocolKind::Ccm, b"carol", b"hi"))
    );

    // UTF-16 (the original's .NET clients): decoded to UTF-8.
    let utf16 = ccm_message(b"CCM\\1.0 Text\nAddressee: *\nMessage-Encoding: unicode\n\nh\0i\0");
    assert_eq!(
        LobbyMessage::from_ccm(&carol, &utf16).expect("ok"),
        Some(said(ProtocolKind::Ccm, b"carol", b"hi"))
    );

    // A UTF-8 BOM is dropped, as CCM's decoder drops it.
    let bom = ccm_message(b"CCM\\1.0 Text\nAddressee: *\n\n\xef\xbb\xbfhi");
    assert_eq!(
        LobbyMessage::from_ccm(&carol, &bom).expect("ok"),
        Some(said(ProtocolKind::Ccm, b"carol", b"hi"))
    );

    // Not lobby messages: a named addressee, another type, no addressee.
    let not_lobby: [&[u8]; 3] = [
        b"CCM\\1.0 Text\nAddressee: bob\n\nhi",
        b"CCM\\1.0 Raw\nAddressee: *\n\nhi",
        b"CCM\\1.0 Text\n\nhi",
    ];
    for raw in not_lobby {
        assert_eq!(
            LobbyMessage::from_ccm(&carol, &ccm_message(raw)).expect("ok"),
            None,
            "{}",
            String::from_utf8_lossy(raw)
        );
    }

    // Content invalid in its encoding, or an encoding CCM does not know: an error.
    let bad = ccm_message(b"CCM\\1.0 Text\nAddressee: *\nMessage-Encoding: utf-8\n\n\xff");
    assert_eq!(
        LobbyMessage::from_ccm(&carol, &bad),
        Err(ccm_codec::TextError::Invalid)
    );
    let unknown = ccm_message(b"CCM\\1.0 Text\nAddressee: *\nMessage-Encoding: ebcdic\n\nhi");
    assert_eq!(
        LobbyMessage::from_ccm(&carol, &unknown),
        Err(ccm_codec::TextError::UnknownEncoding)
    );
}

#[test]
fn an_ocm_datagram_is_a_lobby_message_only_in_the_lobby_room_and_not_exit() {
    assert_eq!(
        LobbyMessage::from_ocm("lobby", b"lobby", "oscar", b"hello"),
        Some(said(ProtocolKind::Ocm, b"oscar", b"hello"))
    );
    assert_eq!(
        LobbyMessage::from_ocm("lobby", b"lobby", "oscar", b"exit"),
        None
    );
    assert_eq!(
        LobbyMessage::from_ocm("lobby", b"other", "oscar", b"hello"),
        None
    );
    assert_eq!(
        LobbyMessage::from_ocm("lobby", b"Lobby", "oscar", b"hello"),
        None
    );
    assert_eq!(
        LobbyMessage::from_ocm("hall", b"hall", "oscar", b"exit now"),
        Some(said(ProtocolKind::Ocm, b"oscar", b"exit now"))
    );
    let hub = Hub::new(HubConfig {
        ocm_lobby_room: "hall".to_string(),
        ..HubConfig::default()
    });
    assert!(hub.is_ocm_lobby_room(b"hall"));
    assert!(!hub.is_ocm_lobby_room(b"lobby"));
}

// ---- rule 3: presence ----

#[test]
fn entering_and_leaving_are_announced_to_room_and_matou_only() {
    let (mut hub, mut out) = full_lobby();
    assert!(hub.enter_lobby(user(ProtocolKind::Ccm, at(23), "carol"), &mut out));
    let room = delivered_to_protocol(&out, ProtocolKind::Room);
    assert_eq!(room.len(), 2);
    for (_, bytes) in &room {
        assert_eq!(&bytes[..], b"b'carol' esta conectado ao chat");
    }
    assert_eq!(room[0].1.as_ptr(), room[1].1.as_ptr());
    let matou = delivered_to_protocol(&out, ProtocolKind::Matou);
    assert_eq!(matou.len(), 2);
    for (_, bytes) in &matou {
        assert_eq!(&bytes[..], b"\x00\x00\x00\x03\x00\x00\x00\x05carol");
        assert_eq!(
            decode_matou(bytes),
            Packet::ConnectNotify {
                username: Bytes::from_static(b"carol")
            }
        );
    }
    assert!(delivered_to_protocol(&out, ProtocolKind::Ccm).is_empty());
    assert!(delivered_to_protocol(&out, ProtocolKind::Ocm).is_empty());
    // 4 each from the lobby's own two CCM users, then these 2.
    assert_eq!(
        hub.counts().notices(ProtocolKind::Ccm, ProtocolKind::Room),
        6
    );
    assert_eq!(
        hub.counts().notices(ProtocolKind::Ccm, ProtocolKind::Matou),
        6
    );

    out.clear();
    assert!(hub.leave_lobby(at(23), &mut out));
    let room = delivered_to_protocol(&out, ProtocolKind::Room);
    assert_eq!(room.len(), 2);
    for (_, bytes) in &room {
        assert_eq!(&bytes[..], b"b'carol' acabou de sair do chat!");
    }
    for (_, bytes) in delivered_to_protocol(&out, ProtocolKind::Matou) {
        assert_eq!(&bytes[..], b"\x00\x00\x00\x10\x00\x00\x00\x05carol");
        assert_eq!(
            decode_matou(&bytes),
            Packet::SignOutNotify {
                username: Bytes::from_static(b"carol")
            }
        );
    }
    assert_eq!(out.delivered.len(), 4);
    assert!(!hub.leave_lobby(at(23), &mut out), "left already");
}

#[test]
fn a_protocol_does_not_hear_the_hub_announce_its_own_users() {
    // Each service announces its own users itself; the hub only adds the others.
    let (mut hub, mut out) = full_lobby();
    hub.enter_lobby(user(ProtocolKind::Room, at(3), "rc"), &mut out);
    assert!(delivered_to_protocol(&out, ProtocolKind::Room).is_empty());
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Matou).len(), 2);
    out.clear();
    hub.enter_lobby(user(ProtocolKind::Matou, at(13), "mc"), &mut out);
    assert!(delivered_to_protocol(&out, ProtocolKind::Matou).is_empty());
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Room).len(), 3);
    out.clear();
    hub.enter_lobby(user(ProtocolKind::Ocm, ocm(33), "oc"), &mut out);
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Room).len(), 3);
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Matou).len(), 3);
    assert_eq!(out.delivered.len(), 6);
}

#[test]
fn room_notices_write_the_name_as_a_python_bytes_repr() {
    let mut hub = hub();
    let mut out = RecordingHubOut::default();
    hub.enter_lobby(user(ProtocolKind::Room, at(1), "r"), &mut out);
    let cases: [(&str, &[u8]); 2] = [
        ("josé", b"b'jos\\xc3\\xa9' esta conectado ao chat"),
        ("o'neil", b"b\"o'neil\" esta conectado ao chat"),
    ];
    for (name, notice) in cases {
        out.clear();
        hub.enter_lobby(user(ProtocolKind::Ocm, ocm(9), name), &mut out);
        assert_eq!(
            out.delivered_to(at(1)),
            vec![Bytes::copy_from_slice(notice)]
        );
        hub.leave_lobby(ocm(9), &mut out);
    }
}

#[test]
fn a_name_matou_cannot_carry_is_not_announced_to_matou() {
    let mut hub = hub();
    let mut out = RecordingHubOut::default();
    hub.enter_lobby(user(ProtocolKind::Matou, at(1), "m"), &mut out);
    hub.enter_lobby(user(ProtocolKind::Ccm, at(2), "c"), &mut out);
    out.clear();
    hub.enter_lobby(
        User {
            protocol: ProtocolKind::Room,
            endpoint: at(3),
            name: Bytes::from_static(b"\xffbad"),
        },
        &mut out,
    );
    assert!(out.delivered.is_empty());
    assert_eq!(
        hub.counts()
            .over_limit(ProtocolKind::Room, ProtocolKind::Matou),
        1
    );
    assert_eq!(
        hub.counts()
            .notices(ProtocolKind::Room, ProtocolKind::Matou),
        0
    );
}

#[test]
fn bin24_users_are_not_in_the_lobby_and_an_endpoint_enters_once() {
    let (mut hub, mut out) = full_lobby();
    assert!(!hub.enter_lobby(user(ProtocolKind::Bin24, at(40), "bob"), &mut out));
    assert_eq!(hub.lobby_count(ProtocolKind::Bin24), 0);
    assert!(!hub.enter_lobby(user(ProtocolKind::Room, at(1), "again"), &mut out));
    assert!(out.delivered.is_empty());
    assert_eq!(hub.lobby_count(ProtocolKind::Room), 2);
}

#[test]
fn leaving_keeps_the_remaining_members_reachable() {
    let mut hub = hub();
    let mut out = RecordingHubOut::default();
    for slot in 1..=5 {
        hub.enter_lobby(user(ProtocolKind::Room, at(slot), "r"), &mut out);
    }
    // Swap-removal moves the last member into the hole: the moved one must stay reachable
    // and removable.
    hub.disconnect(conn(2), &mut out);
    hub.disconnect(conn(5), &mut out);
    hub.disconnect(conn(1), &mut out);
    assert_eq!(hub.lobby_count(ProtocolKind::Room), 2);
    out.clear();
    hub.say(said(ProtocolKind::Ocm, b"o", b"hi"), &mut out);
    let mut reached: Vec<_> = out.delivered.iter().map(|(_, e, _)| *e).collect();
    reached.sort_by_key(|e| match e {
        Endpoint::Conn(c) => c.slot,
        Endpoint::Ocm(_) => u32::MAX,
    });
    assert_eq!(reached, vec![at(3), at(4)]);
    assert!(hub.leave_lobby(at(4), &mut out));
    assert!(hub.leave_lobby(at(3), &mut out));
    assert_eq!(hub.lobby_count(ProtocolKind::Room), 0);
}

#[test]
fn a_disconnect_leaves_the_lobby_and_frees_the_name() {
    let (mut hub, mut out) = full_lobby();
    assert_eq!(
        hub.claim_name(NamedProtocol::Matou, conn(11), b"ma"),
        Claim::Granted
    );
    hub.disconnect(conn(11), &mut out);
    assert_eq!(hub.holder(b"ma"), None);
    assert_eq!(hub.lobby_count(ProtocolKind::Matou), 1);
    for (_, bytes) in delivered_to_protocol(&out, ProtocolKind::Room) {
        assert_eq!(&bytes[..], b"b'ma' acabou de sair do chat!");
    }
    assert_eq!(
        out.events,
        vec![HubEvent::Presence(Presence {
            origin: ProtocolKind::Matou,
            name: Bytes::from_static(b"ma"),
            kind: PresenceKind::Left,
        })]
    );
    // An OCM member leaves by its own identity.
    assert!(hub.leave_lobby(ocm(31), &mut out));
    assert_eq!(hub.lobby_count(ProtocolKind::Ocm), 1);
}

// ---- rule 4: direct messages ----

/// bob is a BIN24 user on slot 1; carol a CCM user on slot 2; mike a MATOU user on slot 3.
fn named_hub() -> Hub {
    let mut hub = hub();
    for (protocol, slot, name) in [
        (NamedProtocol::Bin24, 1, "bob"),
        (NamedProtocol::Ccm, 2, "carol"),
        (NamedProtocol::Matou, 3, "mike"),
    ] {
        assert_eq!(
            hub.claim_name(protocol, conn(slot), name.as_bytes()),
            Claim::Granted
        );
    }
    hub
}

#[test]
fn a_ccm_text_to_a_bin24_user_becomes_a_type0_frame_with_a_counter_per_ccm_sender() {
    let mut hub = named_hub();
    let mut out = RecordingHubOut::default();
    let content = Bytes::from_static(b"hello bob");
    let CcmDirect::ToBin24 { to, frame, message } =
        hub.ccm_direct(conn(2), MessageType::Text, b"bob", &content, 0, &mut out)
    else {
        panic!("not routed to BIN24");
    };
    assert_eq!(to, conn(1));
    let expected: &[u8] = b"\x21\x00\x00\x00\x00\x00\x00\x00carol\0\0\0bob\0\0\0\0\0hello bob";
    assert_eq!(&frame.as_bytes()[..], expected);
    assert_eq!(frame.frame_type(), bin24_codec::TYPE_MESSAGE);
    assert_eq!(frame.src(), name("carol"));
    assert_eq!(frame.dst(), name("bob"));
    assert_eq!(&frame.body()[..], b"hello bob");
    // It decodes as a BIN24 frame.
    let mut buf = BytesMut::from(&frame.as_bytes()[..]);
    assert_eq!(bin24_codec::decode(&mut buf), Ok(Some(frame.clone())));
    assert_eq!(
        message,
        DirectMessage {
            origin: ProtocolKind::Ccm,
            sender: Bytes::from_static(b"carol"),
            recipient: Bytes::from_static(b"bob"),
            message_id: 0,
            body: Bytes::from_static(b"hello bob"),
        }
    );
    assert_eq!(out.events, vec![HubEvent::Direct(message)]);

    // Raw crosses too; the counter goes on.
    let CcmDirect::ToBin24 { frame, .. } =
        hub.ccm_direct(conn(2), MessageType::Raw, b"bob", &content, 0, &mut out)
    else {
        panic!("Raw not routed");
    };
    assert_eq!(frame.message_id(), 1);

    // Another CCM sender has its own counter.
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(4), b"dave"),
        Claim::Granted
    );
    let CcmDirect::ToBin24 { frame, .. } =
        hub.ccm_direct(conn(4), MessageType::Text, b"bob", &content, 0, &mut out)
    else {
        panic!("not routed");
    };
    assert_eq!(frame.message_id(), 0);
    let CcmDirect::ToBin24 { frame, .. } =
        hub.ccm_direct(conn(2), MessageType::Text, b"bob", &content, 0, &mut out)
    else {
        panic!("not routed");
    };
    assert_eq!(frame.message_id(), 2);
    assert_eq!(
        hub.counts()
            .messages(ProtocolKind::Ccm, ProtocolKind::Bin24),
        4
    );
}

/// Issue 18: rule 5, BIN24's sending limits, applied to a CCM sender as to a BIN24 one.
#[test]
fn a_ccm_flood_to_a_bin24_user_is_refused_by_bin24s_sending_limits() {
    let mut hub = Hub::new(HubConfig {
        limits: FormLimits {
            // A byte a second, per sender: the burst is one largest BIN24 frame (1024 bytes).
            bin24_sender_bytes_per_s_max: 1,
            ..FormLimits::default()
        },
        ..HubConfig::default()
    });
    for (protocol, slot, name) in [
        (NamedProtocol::Bin24, 1, "bob"),
        (NamedProtocol::Ccm, 2, "carol"),
        (NamedProtocol::Ccm, 3, "dave"),
    ] {
        assert_eq!(
            hub.claim_name(protocol, conn(slot), name.as_bytes()),
            Claim::Granted
        );
    }
    let mut out = RecordingHubOut::default();
    let big = Bytes::from(vec![b'a'; 900]);
    let first = hub.ccm_direct(conn(2), MessageType::Text, b"bob", &big, 0, &mut out);
    assert!(matches!(first, CcmDirect::ToBin24 { .. }), "{first:?}");
    let refused = CcmDirect::Refused {
        error: render::ccm_error(
            Reason::RateLimited,
            "sending to BIN24 users faster than allowed: the message was not delivered",
        ),
    };
    assert_eq!(
        hub.ccm_direct(conn(2), MessageType::Text, b"bob", &big, 10, &mut out),
        refused
    );
    // dave has his own budget; carol's is back once its bytes have trickled in.
    let CcmDirect::ToBin24 { frame, .. } =
        hub.ccm_direct(conn(3), MessageType::Text, b"bob", &big, 10, &mut out)
    else {
        panic!("dave is not over his own rate");
    };
    assert_eq!(frame.message_id(), 0);
    let CcmDirect::ToBin24 { frame, .. } = hub.ccm_direct(
        conn(2),
        MessageType::Text,
        b"bob",
        &big,
        1_000_000,
        &mut out,
    ) else {
        panic!("carol's budget refills");
    };
    // The refused message took no messageID.
    assert_eq!(frame.message_id(), 1);
    let counts = hub.counts();
    assert_eq!(counts.messages(ProtocolKind::Ccm, ProtocolKind::Bin24), 3);
    assert_eq!(counts.over_limit(ProtocolKind::Ccm, ProtocolKind::Bin24), 1);
}

/// Issue 18: a lobby message priced and refused reaches nobody, and every recipient it
/// would have had is counted over the limit, carried or not.
#[test]
fn a_priced_lobby_message_costs_its_carried_forms_and_a_refusal_counts_every_recipient() {
    let (mut hub, mut out) = full_lobby();
    out.clear();
    let priced = hub.price(said(ProtocolKind::Room, b"rui", b"hi"));
    // ROOM's lobby is the origin's: MATOU, CCM and OCM each have two members.
    let matou = matou_codec::public_broadcast(b"rui", b"hi").len() as u64;
    let ccm = render::ccm_lobby(b"rui", b"hi").map_or(0, |bytes| bytes.len() as u64);
    let ocm = b"rui: hi".len() as u64;
    assert_eq!(
        priced.crossing(),
        Crossing {
            recipients: 6,
            bytes: 2 * (matou + ccm + ocm),
        }
    );
    hub.refuse_priced(priced);
    assert!(out.delivered.is_empty() && out.events.is_empty());
    for to in [ProtocolKind::Matou, ProtocolKind::Ccm, ProtocolKind::Ocm] {
        assert_eq!(hub.counts().over_limit(ProtocolKind::Room, to), 2, "{to:?}");
        assert_eq!(hub.counts().messages(ProtocolKind::Room, to), 0, "{to:?}");
    }
    // A control character MATOU cannot carry is not charged for MATOU's members.
    let priced = hub.price(said(ProtocolKind::Room, b"rui", b"a\tb"));
    assert_eq!(priced.crossing().recipients, 4);
    // A recipient protocol that does not admit the fan-out gets nothing, counted.
    hub.say_priced(priced, &mut out, |to, _| to != ProtocolKind::Ocm);
    assert!(delivered_to_protocol(&out, ProtocolKind::Ocm).is_empty());
    assert_eq!(delivered_to_protocol(&out, ProtocolKind::Ccm).len(), 2);
    assert_eq!(
        hub.counts()
            .over_limit(ProtocolKind::Room, ProtocolKind::Ocm),
        4
    );
    assert_eq!(
        hub.counts()
            .over_limit(ProtocolKind::Room, ProtocolKind::Matou),
        4
    );
}

#[test]
fn what_bin24_cannot_carry_from_ccm_gets_a_ccm_too_large_error() {
    let mut hub = named_hub();
    let mut out = RecordingHubOut::default();
    // Content: 1000 bytes fit, 1001 do not.
    let fits = Bytes::from(vec![b'a'; 1000]);
    assert!(matches!(
        hub.ccm_direct(conn(2), MessageType::Text, b"bob", &fits, 0, &mut out),
        CcmDirect::ToBin24 { .. }
    ));
    let over = Bytes::from(vec![b'a'; 1001]);
    let CcmDirect::Refused { error } =
        hub.ccm_direct(conn(2), MessageType::Text, b"bob", &over, 0, &mut out)
    else {
        panic!("1001 bytes not refused");
    };
    let error = decode_ccm(&error);
    assert_eq!(error.message_type(), Some(MessageType::Error));
    assert_eq!(
        error.attribute("Reason").map(|r| &r[..]),
        Some(&b"too-large"[..])
    );

    // A sender name over 8 bytes: 8 fit, 9 do not.
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(5), b"eightchr"),
        Claim::Granted
    );
    assert!(matches!(
        hub.ccm_direct(conn(5), MessageType::Text, b"bob", &fits, 0, &mut out),
        CcmDirect::ToBin24 { .. }
    ));
    assert_eq!(
        hub.claim_name(NamedProtocol::Ccm, conn(6), b"ninechars"),
        Claim::Granted
    );
    let CcmDirect::Refused { error } =
        hub.ccm_direct(conn(6), MessageType::Text, b"bob", &fits, 0, &mut out)
    else {
        panic!("a 9-byte sender not refused");
    };
    assert_eq!(
        decode_ccm(&error).attribute("Reason").map(|r| &r[..]),
        Some(&b"too-large"[..])
    );
    assert_eq!(
        hub.counts()
            .over_limit(ProtocolKind::Ccm, ProtocolKind::Bin24),
        2
    );
    assert_eq!(
        hub.counts()
            .messages(ProtocolKind::Ccm, ProtocolKind::Bin24),
        2
    );
    // Refused messages use no messageID: the next one is the counter's next.
    let CcmDirect::ToBin24 { frame, .. } =
        hub.ccm_direct(conn(2), MessageType::Text, b"bob", &fits, 0, &mut out)
    else {
        panic!("not routed");
    };
    assert_eq!(frame.message_id(), 1);
}

#[test]
fn ccm_messages_to_anyone_but_an_online_bin24_user_follow_ccm_rules() {
    let mut hub = named_hub();
    let mut out = RecordingHubOut::default();
    let content = Bytes::from_static(b"x");
    let cases: [(ConnId, MessageType, &[u8]); 9] = [
        (conn(2), MessageType::Text, b"nobody"),
        (conn(2), MessageType::Text, b"carol"),
        (conn(2), MessageType::Text, b"mike"),
        (conn(2), MessageType::Text, b"*"),
        (conn(2), MessageType::Audio, b"bob"),
        (conn(2), MessageType::Streaming, b"bob"),
        // Not an identified CCM user: a BIN24 connection, a MATOU one, an unknown one.
        (conn(1), MessageType::Text, b"bob"),
        (conn(3), MessageType::Text, b"bob"),
        (conn(9), MessageType::Text, b"bob"),
    ];
    for (from, kind, addressee) in cases {
        assert_eq!(
            hub.ccm_direct(from, kind, addressee, &content, 0, &mut out),
            CcmDirect::NotCrossing,
            "{from:?} {kind:?} {}",
            String::from_utf8_lossy(addressee)
        );
    }
    assert!(out.events.is_empty());
    assert_eq!(hub.counts(), &Counts::default());
}

fn bin24_frame(frame_type: u16, id: u32, src: &str, dst: &str, body: &[u8]) -> bin24_codec::Frame {
    let bytes = bin24_codec::encode(frame_type, id, name(src), name(dst), body).expect("fits");
    bin24_codec::Frame::from_bytes(bytes).expect("a frame")
}

#[test]
fn a_bin24_message_to_a_ccm_user_is_a_ccm_text_and_200_once_written() {
    let mut hub = named_hub();
    let mut out = RecordingHubOut::default();
    let frame = bin24_frame(0, 7, "bob", "carol", b"hi carol");
    let Bin24Direct::ToCcm {
        to,
        bytes,
        note,
        message,
    } = hub.bin24_direct(&frame, &mut out)
    else {
        panic!("not routed to CCM");
    };
    assert_eq!(to, conn(2));
    assert_eq!(
        &bytes[..],
        &b"CCM\\1.0 Text\nSender: bob\nAddressee: carol\nMessage-Encoding: utf-8\nContent-Length: 8\n\nhi carol"[..]
    );
    let text = decode_ccm(&bytes);
    assert_eq!(text.attribute("Sender").map(|v| &v[..]), Some(&b"bob"[..]));
    assert_eq!(
        text.attribute("Addressee").map(|v| &v[..]),
        Some(&b"carol"[..])
    );
    assert_eq!(&text.content[..], b"hi carol");
    assert_eq!(message.message_id, 7);
    assert_eq!(out.events, vec![HubEvent::Direct(message)]);
    assert_eq!(hub.awaiting_write_count(), 1);
    assert_eq!(
        hub.counts()
            .messages(ProtocolKind::Bin24, ProtocolKind::Ccm),
        1
    );

    // Written: the sender hears "200": type 1, same messageID, SRC = carol, DST = bob.
    let Some(Written::Answered {
        sender,
        answer,
        origin: None,
    }) = hub.on_written(note, true)
    else {
        panic!("no answer");
    };
    assert_eq!(sender, name("bob"));
    let expected: &[u8] = b"\x1b\x00\x01\x00\x07\x00\x00\x00carol\0\0\0bob\0\0\0\0\x00200";
    assert_eq!(&answer[..], expected);
    let answer = bin24_codec::Frame::from_bytes(answer).expect("a BIN24 frame");
    assert_eq!(answer.frame_type(), bin24_codec::TYPE_ANSWER);
    assert_eq!(answer.message_id(), 7);
    assert_eq!(answer.src(), name("carol"));
    assert_eq!(answer.dst(), name("bob"));
    assert_eq!(&answer.body()[..], bin24_codec::ANSWER_DELIVERED);

    // Reported once.
    assert_eq!(hub.on_written(note, true), None);
    assert_eq!(hub.awaiting_write_count(), 0);
}

#[test]
fn a_bin24_message_the_ccm_user_never_got_goes_back_to_bin24_for_the_store() {
    let mut hub = named_hub();
    let mut out = RecordingHubOut::default();
    let frame = bin24_frame(0, 3, "bob", "carol", b"lost?");
    let Bin24Direct::ToCcm { note, .. } = hub.bin24_direct(&frame, &mut out) else {
        panic!("not routed");
    };
    let second = bin24_frame(0, 4, "bob", "carol", b"second");
    let Bin24Direct::ToCcm { note: note2, .. } = hub.bin24_direct(&second, &mut out) else {
        panic!("not routed");
    };
    assert_ne!(note, note2, "each delivery its own note");
    assert_eq!(
        hub.on_written(note, false),
        Some(Written::Unwritten {
            recipient: name("carol"),
            sender: name("bob"),
            message_id: 3,
            frame,
            origin: None,
        })
    );
    assert!(matches!(
        hub.on_written(note2, true),
        Some(Written::Answered { .. })
    ));
    assert_eq!(hub.awaiting_write_count(), 0);
}

#[test]
fn bin24_frames_to_anyone_but_an_online_ccm_user_follow_bin24_rules() {
    let mut hub = named_hub();
    let mut out = RecordingHubOut::default();
    for frame in [
        bin24_frame(0, 1, "bob", "nobody", b"x"),
        bin24_frame(0, 1, "bob", "bob", b"x"),
        bin24_frame(0, 1, "bob", "mike", b"x"),
        // An answer is BIN24's to forward.
        bin24_frame(1, 1, "bob", "carol", b"200"),
    ] {
        assert_eq!(hub.bin24_direct(&frame, &mut out), Bin24Direct::NotCrossing);
    }
    assert!(out.events.is_empty());
    assert_eq!(hub.awaiting_write_count(), 0);
}

#[test]
fn a_bin24_sender_name_that_is_not_utf8_is_written_with_replacement_characters() {
    let mut hub = named_hub();
    let mut out = RecordingHubOut::default();
    let src = bin24_codec::Name::new(b"b\xffb").expect("fits");
    let bytes = bin24_codec::encode(0, 1, src, name("carol"), b"hi").expect("fits");
    let frame = bin24_codec::Frame::from_bytes(bytes).expect("frame");
    let Bin24Direct::ToCcm { bytes, .. } = hub.bin24_direct(&frame, &mut out) else {
        panic!("not routed");
    };
    let text = decode_ccm(&bytes);
    assert_eq!(
        text.attribute("Sender").map(|v| &v[..]),
        Some("b\u{fffd}b".as_bytes())
    );
}

// ---- isolated ----

#[test]
fn an_isolated_hub_is_inert() {
    let mut hub = isolated_hub();
    let mut out = RecordingHubOut::default();
    assert!(hub.is_isolated());
    // Every claim is granted: each service's own rules are all that apply.
    for protocol in [
        NamedProtocol::Bin24,
        NamedProtocol::Ccm,
        NamedProtocol::Matou,
    ] {
        assert_eq!(hub.claim_name(protocol, conn(1), b"same"), Claim::Granted);
    }
    assert_eq!(hub.names_held(), 0);
    assert!(!hub.enter_lobby(user(ProtocolKind::Room, at(1), "r"), &mut out));
    assert!(!hub.enter_lobby(user(ProtocolKind::Matou, at(2), "m"), &mut out));
    hub.say(said(ProtocolKind::Ccm, b"c", b"anyone?"), &mut out);
    hub.announce(
        Presence {
            origin: ProtocolKind::Ocm,
            name: Bytes::from_static(b"o"),
            kind: PresenceKind::Entered,
        },
        &mut out,
    );
    assert_eq!(
        hub.ccm_direct(
            conn(2),
            MessageType::Text,
            b"same",
            &Bytes::from_static(b"x"),
            0,
            &mut out
        ),
        CcmDirect::NotCrossing
    );
    let frame = bin24_frame(0, 1, "same", "same", b"x");
    assert_eq!(hub.bin24_direct(&frame, &mut out), Bin24Direct::NotCrossing);
    assert!(out.delivered.is_empty());
    assert!(out.events.is_empty());
    assert_eq!(hub.counts(), &Counts::default());
    assert_eq!(hub.lobby_count(ProtocolKind::Room), 0);
}

// ---- events and counts ----

#[test]
fn the_hub_reports_every_event_it_acts_on_as_plain_data() {
    let mut hub = hub();
    let mut out = RecordingHubOut::default();
    hub.enter_lobby(user(ProtocolKind::Room, at(1), "ra"), &mut out);
    hub.enter_lobby(user(ProtocolKind::Ocm, ocm(2), "oa"), &mut out);
    hub.say(said(ProtocolKind::Ocm, b"oa", b"hi"), &mut out);
    hub.leave_lobby(ocm(2), &mut out);
    let presence = |origin, name: &'static [u8], kind| {
        HubEvent::Presence(Presence {
            origin,
            name: Bytes::from_static(name),
            kind,
        })
    };
    assert_eq!(
        out.events,
        vec![
            presence(ProtocolKind::Room, b"ra", PresenceKind::Entered),
            presence(ProtocolKind::Ocm, b"oa", PresenceKind::Entered),
            HubEvent::Said(said(ProtocolKind::Ocm, b"oa", b"hi")),
            presence(ProtocolKind::Ocm, b"oa", PresenceKind::Left),
        ]
    );
}

#[test]
fn counts_are_kept_by_origin_and_destination() {
    let (mut hub, mut out) = full_lobby();
    // Entering: 4 protocols x 2 members; each entry announced to the other protocols' ROOM
    // and MATOU members who were already there.
    let notices = hub.counts().notices;
    assert_eq!(
        notices[ProtocolKind::Room.index()][ProtocolKind::Matou.index()],
        0,
        "MATOU came later"
    );
    assert_eq!(
        notices[ProtocolKind::Matou.index()][ProtocolKind::Room.index()],
        4
    );
    assert_eq!(
        notices[ProtocolKind::Ccm.index()][ProtocolKind::Room.index()],
        4
    );
    assert_eq!(
        notices[ProtocolKind::Ccm.index()][ProtocolKind::Matou.index()],
        4
    );
    assert_eq!(
        notices[ProtocolKind::Ocm.index()][ProtocolKind::Room.index()],
        4
    );
    assert_eq!(
        notices[ProtocolKind::Ocm.index()][ProtocolKind::Matou.index()],
        4
    );
    let total: u64 = notices.iter().flatten().sum();
    assert_eq!(total, 20);

    for _ in 0..3 {
        hub.say(said(ProtocolKind::Ccm, b"ca", b"m"), &mut out);
    }
    hub.say(said(ProtocolKind::Room, b"ra", b"m"), &mut out);
    let counts = hub.counts();
    assert_eq!(counts.messages(ProtocolKind::Ccm, ProtocolKind::Room), 6);
    assert_eq!(counts.messages(ProtocolKind::Ccm, ProtocolKind::Matou), 6);
    assert_eq!(counts.messages(ProtocolKind::Ccm, ProtocolKind::Ocm), 6);
    assert_eq!(counts.messages(ProtocolKind::Ccm, ProtocolKind::Ccm), 0);
    assert_eq!(counts.messages(ProtocolKind::Room, ProtocolKind::Ccm), 2);
    let total: u64 = counts.messages.iter().flatten().sum();
    assert_eq!(total, 24);
    assert_eq!(total as usize, out.delivered.len());
}

// ---- the hub writes what the protocols' own services write ----

fn ccm_feed(
    service: &mut crate::protocol::ccm::CcmService,
    out: &mut crate::protocol::testing::RecordingOutbox,
    id: ConnId,
    bytes: &[u8],
) {
    let mut input = BytesMut::from(bytes);
    service.on_data(id, &mut input, true, 0, 0, out);
    assert!(input.is_empty());
}

#[test]
fn ccm_renderings_are_what_the_ccm_service_itself_writes() {
    use crate::protocol::ccm::{CcmConfig, CcmService};
    let mut next = 0u8;
    let tokens = Box::new(move |bytes: &mut [u8; 16]| {
        next += 1;
        *bytes = [next; 16];
        true
    });
    let mut service = CcmService::new(CcmConfig::default(), tokens, 0);
    let mut out = crate::protocol::testing::RecordingOutbox::default();
    for slot in 1..=3 {
        service.on_accept(conn(slot), 0);
    }
    ccm_feed(
        &mut service,
        &mut out,
        conn(1),
        b"CCM\\1.0 NotDefined\n\nalice",
    );
    ccm_feed(
        &mut service,
        &mut out,
        conn(2),
        b"CCM\\1.0 NotDefined\n\nbob",
    );
    out.clear();

    // CCM's own name-taken answer and the hub's refusal of a CCM newcomer are the same bytes.
    ccm_feed(
        &mut service,
        &mut out,
        conn(3),
        b"CCM\\1.0 NotDefined\n\nalice",
    );
    let refusal = Refusal {
        newcomer: NamedProtocol::Ccm,
        holder: NamedProtocol::Matou,
    };
    assert_eq!(
        out.sent_to(conn(3)),
        vec![refusal.answer().expect("an answer")]
    );

    // A `*` Text from a CCM user, as CCM delivers it to the other CCM users.
    out.clear();
    ccm_feed(
        &mut service,
        &mut out,
        conn(1),
        b"CCM\\1.0 Text\nAddressee: *\nMessage-Encoding: utf-8\n\nhello all",
    );
    let to_bob: Vec<u8> = out.sent_to(conn(2)).concat();
    assert_eq!(
        to_bob,
        render::ccm_lobby(b"alice", b"hello all").expect("fits")
    );

    // A named Text, as CCM delivers it: the hub's BIN24-to-CCM form.
    out.clear();
    ccm_feed(
        &mut service,
        &mut out,
        conn(1),
        b"CCM\\1.0 Text\nAddressee: bob\nMessage-Encoding: utf-8\n\nhi bob",
    );
    let to_bob: Vec<u8> = out.sent_to(conn(2)).concat();
    assert_eq!(to_bob, render::ccm_text(b"alice", b"bob", b"hi bob"));
}

#[test]
fn room_notices_are_what_the_room_service_itself_writes() {
    use crate::protocol::room::{RoomConfig, RoomService};
    let mut service = RoomService::new(RoomConfig::default(), 0);
    let mut out = crate::protocol::testing::RecordingOutbox::default();
    service.on_accept(conn(1), 0, &mut out);
    service.on_accept(conn(2), 0, &mut out);
    service.on_data(conn(1), &mut BytesMut::from(&b"r\xc3\xa9mi"[..]), &mut out);
    service.on_data(conn(2), &mut BytesMut::from(&b"watcher"[..]), &mut out);
    out.clear();
    service.on_close(conn(1), &mut out);
    assert_eq!(
        out.sent_to(conn(2)),
        vec![render::room_presence("rémi".as_bytes(), PresenceKind::Left)]
    );
    let mut hub = hub();
    let mut hub_out = RecordingHubOut::default();
    hub.enter_lobby(user(ProtocolKind::Room, at(2), "watcher"), &mut hub_out);
    hub.enter_lobby(user(ProtocolKind::Ocm, ocm(1), "rémi"), &mut hub_out);
    service.on_accept(conn(3), 0, &mut out);
    out.clear();
    service.on_data(conn(3), &mut BytesMut::from("rémi".as_bytes()), &mut out);
    assert_eq!(out.sent_to(conn(2)), hub_out.delivered_to(at(2)));
}

/// Issue 20: another node's lobby message reaches every local lobby member, the origin
/// protocol's own included (its service here never saw it), and is not reported as an event
/// (so the cluster never publishes it again).
#[test]
fn a_remote_lobby_message_reaches_every_local_member_and_is_not_reported_again() {
    let (mut hub, mut out) = full_lobby();
    hub.say_remote(
        said(ProtocolKind::Room, b"rz", b"from afar"),
        &mut out,
        |_, _| true,
    );
    let line = Bytes::from_static(b"rz: from afar");
    for endpoint in [at(1), at(2), ocm(31), ocm(32)] {
        assert_eq!(
            out.delivered_to(endpoint),
            vec![line.clone()],
            "{endpoint:?}"
        );
    }
    for endpoint in [at(11), at(12)] {
        let delivered = out.delivered_to(endpoint);
        assert_eq!(delivered.len(), 1);
        assert_eq!(
            delivered[0],
            render::matou_broadcast(b"rz", b"from afar", &FormLimits::default()).unwrap()
        );
    }
    for endpoint in [at(21), at(22)] {
        assert_eq!(
            out.delivered_to(endpoint),
            vec![render::ccm_lobby(b"rz", b"from afar").unwrap()]
        );
    }
    assert!(out.events.is_empty());
}

#[test]
fn a_remote_presence_reaches_room_and_matou_members_of_every_origin_and_is_not_reported() {
    let (mut hub, mut out) = full_lobby();
    let presence = Presence {
        origin: ProtocolKind::Matou,
        name: Bytes::from_static(b"mz"),
        kind: PresenceKind::Entered,
    };
    hub.announce_remote(&presence, &mut out);
    let room = render::room_presence(b"mz", PresenceKind::Entered);
    let matou = render::matou_presence(b"mz", PresenceKind::Entered, &FormLimits::default());
    assert_eq!(out.delivered_to(at(1)), vec![room.clone()]);
    assert_eq!(out.delivered_to(at(2)), vec![room]);
    assert_eq!(out.delivered_to(at(11)), vec![matou.clone().unwrap()]);
    assert_eq!(out.delivered_to(at(12)), vec![matou.unwrap()]);
    assert!(out.delivered_to(at(21)).is_empty());
    assert!(out.events.is_empty());
}

#[test]
fn a_clustered_hub_reports_a_lobby_message_with_no_local_audience() {
    let mut hub = Hub::new(HubConfig {
        clustered: true,
        ..HubConfig::default()
    });
    let mut out = RecordingHubOut::default();
    assert!(hub.has_audience_besides(ProtocolKind::Room));
    let message = said(ProtocolKind::Room, b"ra", b"anyone?");
    hub.say(message.clone(), &mut out);
    assert!(out.delivered.is_empty());
    assert_eq!(out.events, vec![HubEvent::Said(message)]);
    assert!(!hub_is_clustered_by_default());
}

fn hub_is_clustered_by_default() -> bool {
    hub().has_audience_besides(ProtocolKind::Room)
}
