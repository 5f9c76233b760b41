use super::*;

type Decoder = fn(&mut BytesMut, &Limits) -> Result<Option<Packet>, DecodeError>;

const DECODERS: [(&str, Decoder); 3] = [
    ("from_client", decode_from_client),
    ("from_server", decode_from_server),
    ("from_peer", decode_from_peer),
];

fn b(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

/// One packet of each type 1..=17, in type order, with fields that are not all alike, and the
/// decoder of the stream it belongs on.
fn samples() -> Vec<(Packet, Decoder)> {
    vec![
        (
            Packet::ConnectRequest {
                username: b(b"alice"),
            },
            decode_from_client,
        ),
        (
            Packet::ConnectResponse { accepted: true },
            decode_from_server,
        ),
        (
            Packet::ConnectNotify {
                username: b("jos\u{e9}".as_bytes()),
            },
            decode_from_server,
        ),
        (
            Packet::PublicMessage {
                message: b(b"hello, room"),
            },
            decode_from_client,
        ),
        (
            Packet::PublicBroadcast {
                username: b(b"alice"),
                message: b(b"hello, room"),
            },
            decode_from_server,
        ),
        (
            Packet::PrivateRequest {
                username: b(b"bob"),
            },
            decode_from_client,
        ),
        (
            Packet::PrivateRequestNotify {
                username: b(b"alice"),
            },
            decode_from_server,
        ),
        (
            Packet::PrivateAccept {
                username: b(b"alice"),
            },
            decode_from_client,
        ),
        (
            Packet::PrivateDstAddress {
                username: b(b"bob"),
                address: b(&[192, 168, 1, 20]),
            },
            decode_from_server,
        ),
        (
            Packet::PrivateSrcPorts {
                username: b(b"bob"),
                message_port: 40_001,
                file_port: 40_002,
            },
            decode_from_client,
        ),
        (
            Packet::PrivateSrcAddress {
                username: b(b"alice"),
                address: b(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                message_port: 40_001,
                file_port: 40_002,
            },
            decode_from_server,
        ),
        (
            Packet::PrivateMessage {
                message: b(b"psst"),
            },
            decode_from_peer,
        ),
        (Packet::PrivateFile { size: 10_000 }, decode_from_peer),
        (Packet::PrivateSignOut, decode_from_peer),
        (Packet::PublicSignOut, decode_from_client),
        (
            Packet::SignOutNotify {
                username: b(b"alice"),
            },
            decode_from_server,
        ),
        (
            Packet::Error {
                code: ErrorCode::UnknownUser.code(),
                reason: b(b"no such user"),
            },
            decode_from_server,
        ),
    ]
}

fn encoded(packet: &Packet) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode(packet, &mut dst);
    dst.to_vec()
}

fn decode_all(decoder: Decoder, buf: &mut BytesMut) -> Vec<Packet> {
    let mut packets = Vec::new();
    while let Some(packet) = decoder(buf, &Limits::default()).unwrap() {
        packets.push(packet);
    }
    packets
}

fn assert_need_more(decoder: Decoder, raw: &[u8], limits: &Limits) {
    let mut buf = BytesMut::from(raw);
    assert_eq!(decoder(&mut buf, limits), Ok(None), "{raw:?}");
    assert_eq!(&buf[..], raw, "Ok(None) consumes nothing");
}

fn decode_err(decoder: Decoder, raw: &[u8], limits: &Limits) -> DecodeError {
    let mut buf = BytesMut::from(raw);
    let err = decoder(&mut buf, limits).unwrap_err();
    assert_eq!(&buf[..], raw, "an error consumes nothing");
    err
}

/// Big-endian fields, concatenated.
fn be(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---- encoding ----

#[test]
fn samples_cover_every_type_in_order() {
    let types: Vec<i32> = samples().iter().map(|(p, _)| p.packet_type()).collect();
    assert_eq!(types, (1..=17).collect::<Vec<i32>>());
}

#[test]
fn type_constants_are_the_contracts_numbers() {
    assert_eq!(
        [
            CONNECT_REQUEST,
            CONNECT_RESPONSE,
            CONNECT_NOTIFY,
            PUBLIC_MESSAGE,
            PUBLIC_BROADCAST,
            PRIVATE_REQUEST,
            PRIVATE_REQUEST_NOTIFY,
            PRIVATE_ACCEPT,
            PRIVATE_DST_ADDRESS,
            PRIVATE_SRC_PORTS,
            PRIVATE_SRC_ADDRESS,
            PRIVATE_MESSAGE,
            PRIVATE_FILE,
            PRIVATE_SIGN_OUT,
            PUBLIC_SIGN_OUT,
            SIGN_OUT_NOTIFY,
            ERROR,
        ],
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    );
}

#[test]
fn exact_bytes_of_a_broadcast_and_a_source_address() {
    assert_eq!(
        &public_broadcast(b"al", b"hey")[..],
        be(&[&[0, 0, 0, 5], &[0, 0, 0, 2], b"al", &[0, 0, 0, 3], b"hey"])
    );
    assert_eq!(
        &private_src_address(b"al", &[127, 0, 0, 1], 0x1234, 65_535)[..],
        be(&[
            &[0, 0, 0, 11],
            &[0, 0, 0, 2],
            b"al",
            &[0, 0, 0, 4],
            &[127, 0, 0, 1],
            &[0, 0, 0x12, 0x34],
            &[0, 0, 0xff, 0xff],
        ])
    );
    assert_eq!(&connect_response(true)[..], [0, 0, 0, 2, 1]);
    assert_eq!(&connect_response(false)[..], [0, 0, 0, 2, 0]);
    assert_eq!(
        &private_file(0x0102_0304_0506_0708)[..],
        [0, 0, 0, 13, 1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(&public_sign_out()[..], [0, 0, 0, 15]);
    assert_eq!(&private_sign_out()[..], [0, 0, 0, 14]);
    assert_eq!(
        &error(ErrorCode::BadPort, b"x")[..],
        [0, 0, 0, 17, 0, 0, 0, 11, 0, 0, 0, 1, b'x']
    );
}

#[test]
fn free_functions_encode_what_encode_encodes() {
    let addr4: &[u8] = &[10, 0, 0, 1];
    let pairs: Vec<(Bytes, Packet)> = vec![
        (
            connect_request(b"alice"),
            Packet::ConnectRequest {
                username: b(b"alice"),
            },
        ),
        (
            connect_response(false),
            Packet::ConnectResponse { accepted: false },
        ),
        (
            connect_notify(b"alice"),
            Packet::ConnectNotify {
                username: b(b"alice"),
            },
        ),
        (
            public_message(b"hi"),
            Packet::PublicMessage { message: b(b"hi") },
        ),
        (
            public_broadcast(b"alice", b"hi"),
            Packet::PublicBroadcast {
                username: b(b"alice"),
                message: b(b"hi"),
            },
        ),
        (
            private_request(b"bob"),
            Packet::PrivateRequest {
                username: b(b"bob"),
            },
        ),
        (
            private_request_notify(b"alice"),
            Packet::PrivateRequestNotify {
                username: b(b"alice"),
            },
        ),
        (
            private_accept(b"alice"),
            Packet::PrivateAccept {
                username: b(b"alice"),
            },
        ),
        (
            private_dst_address(b"bob", addr4),
            Packet::PrivateDstAddress {
                username: b(b"bob"),
                address: Bytes::copy_from_slice(addr4),
            },
        ),
        (
            private_src_ports(b"bob", 1, 65_535),
            Packet::PrivateSrcPorts {
                username: b(b"bob"),
                message_port: 1,
                file_port: 65_535,
            },
        ),
        (
            private_src_address(b"alice", addr4, 7, 8),
            Packet::PrivateSrcAddress {
                username: b(b"alice"),
                address: Bytes::copy_from_slice(addr4),
                message_port: 7,
                file_port: 8,
            },
        ),
        (
            private_message(b"psst"),
            Packet::PrivateMessage {
                message: b(b"psst"),
            },
        ),
        (private_file(-1), Packet::PrivateFile { size: -1 }),
        (private_sign_out(), Packet::PrivateSignOut),
        (public_sign_out(), Packet::PublicSignOut),
        (
            sign_out_notify(b"alice"),
            Packet::SignOutNotify {
                username: b(b"alice"),
            },
        ),
        (
            error(ErrorCode::NotSignedIn, b"sign in first"),
            Packet::Error {
                code: 8,
                reason: b(b"sign in first"),
            },
        ),
    ];
    assert_eq!(pairs.len(), 17);
    for (bytes, packet) in pairs {
        assert_eq!(&bytes[..], encoded(&packet), "{packet:?}");
        assert_eq!(&bytes[..], &packet.to_bytes()[..], "{packet:?}");
        assert_eq!(bytes.len(), packet.encoded_len(), "{packet:?}");
    }
}

#[test]
fn encode_appends_to_what_is_in_the_buffer() {
    let mut dst = BytesMut::from(&b"xy"[..]);
    encode(&Packet::PublicSignOut, &mut dst);
    assert_eq!(&dst[..], b"xy\0\0\0\x0f");
}

// ---- decoding ----

#[test]
fn every_packet_round_trips_through_its_decoder() {
    for (packet, decoder) in samples() {
        let mut buf = BytesMut::from(&encoded(&packet)[..]);
        let decoded = decoder(&mut buf, &Limits::default()).unwrap();
        assert_eq!(decoded, Some(packet));
        assert!(buf.is_empty(), "one packet, nothing left over");
    }
}

#[test]
fn empty_strings_round_trip() {
    for packet in [
        Packet::ConnectRequest {
            username: Bytes::new(),
        },
        Packet::PublicMessage {
            message: Bytes::new(),
        },
    ] {
        let mut buf = BytesMut::from(&encoded(&packet)[..]);
        assert_eq!(
            decode_from_client(&mut buf, &Limits::default()),
            Ok(Some(packet))
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn fields_are_slices_of_the_read_buffer() {
    let mut buf = BytesMut::from(&public_broadcast(b"alice", b"hello")[..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::PublicBroadcast { username, message }) =
        decode_from_server(&mut buf, &Limits::default()).unwrap()
    else {
        panic!("not a broadcast");
    };
    assert_eq!(username.as_ptr() as usize, base + 8);
    assert_eq!(message.as_ptr() as usize, base + 8 + 5 + 4);
}

#[test]
fn every_split_point_needs_more_then_gives_the_packet() {
    for (packet, decoder) in samples() {
        let raw = encoded(&packet);
        for split in 0..raw.len() {
            let mut buf = BytesMut::from(&raw[..split]);
            assert_eq!(
                decoder(&mut buf, &Limits::default()),
                Ok(None),
                "{packet:?} cut at {split}"
            );
            assert_eq!(&buf[..], &raw[..split], "Ok(None) consumes nothing");
            buf.extend_from_slice(&raw[split..]);
            assert_eq!(
                decoder(&mut buf, &Limits::default()),
                Ok(Some(packet.clone())),
                "{packet:?} cut at {split}"
            );
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn one_byte_at_a_time_gives_every_packet_in_order() {
    for (_, decoder) in DECODERS {
        let expected: Vec<Packet> = samples()
            .into_iter()
            .filter(|(_, d)| std::ptr::fn_addr_eq(*d, decoder))
            .map(|(p, _)| p)
            .collect();
        let stream: Vec<u8> = expected.iter().flat_map(encoded).collect();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in &stream {
            buf.extend_from_slice(&[byte]);
            if let Some(packet) = decoder(&mut buf, &Limits::default()).unwrap() {
                got.push(packet);
            }
        }
        assert_eq!(got, expected);
        assert!(buf.is_empty());
    }
}

#[test]
fn several_packets_in_one_buffer_come_out_in_order_and_leave_a_partial_one() {
    let messages: Vec<Packet> = (0..50)
        .map(|i| Packet::PublicMessage {
            message: Bytes::from(format!("message {i}")),
        })
        .collect();
    let mut stream: Vec<u8> = messages.iter().flat_map(encoded).collect();
    stream.extend_from_slice(&encoded(&Packet::PublicSignOut));
    let partial = public_message(b"the next one");
    stream.extend_from_slice(&partial[..7]);

    let mut buf = BytesMut::from(&stream[..]);
    let got = decode_all(decode_from_client, &mut buf);
    assert_eq!(got.len(), 51);
    assert_eq!(&got[..50], &messages[..]);
    assert_eq!(got[50], Packet::PublicSignOut);
    assert_eq!(&buf[..], &partial[..7]);
}

#[test]
fn fewer_than_four_bytes_need_more() {
    for (_, decoder) in DECODERS {
        for raw in [&[][..], &[0], &[0, 0], &[0, 0, 0]] {
            assert_need_more(decoder, raw, &Limits::default());
        }
    }
}

#[test]
fn each_decoder_refuses_every_type_of_the_other_streams() {
    for (packet, own) in samples() {
        let raw = encoded(&packet);
        let kind = packet.packet_type();
        for (name, decoder) in DECODERS {
            if std::ptr::fn_addr_eq(decoder, own) {
                continue;
            }
            assert_eq!(
                decode_err(decoder, &raw, &Limits::default()),
                DecodeError::UnknownType(kind),
                "type {kind} on {name}"
            );
            // The type alone is enough to refuse it.
            assert_eq!(
                decode_err(decoder, &raw[..4], &Limits::default()),
                DecodeError::UnknownType(kind)
            );
        }
    }
}

#[test]
fn unknown_types_are_refused_as_soon_as_the_type_is_there() {
    for kind in [0, 18, 19, -1, i32::MIN, i32::MAX, 0x4745_5420] {
        for (_, decoder) in DECODERS {
            assert_eq!(
                decode_err(decoder, &kind.to_be_bytes(), &Limits::default()),
                DecodeError::UnknownType(kind)
            );
        }
    }
}

/// For each string that can be the first thing after the type (or after a fixed field):
/// (decoder, the bytes before the size field).
fn string_size_positions() -> Vec<(Decoder, Vec<u8>)> {
    let t = |kind: i32| kind.to_be_bytes().to_vec();
    let mut positions: Vec<(Decoder, Vec<u8>)> = vec![
        (decode_from_client, t(CONNECT_REQUEST)),
        (decode_from_server, t(CONNECT_NOTIFY)),
        (decode_from_client, t(PUBLIC_MESSAGE)),
        (decode_from_server, t(PUBLIC_BROADCAST)),
        (decode_from_client, t(PRIVATE_REQUEST)),
        (decode_from_server, t(PRIVATE_REQUEST_NOTIFY)),
        (decode_from_client, t(PRIVATE_ACCEPT)),
        (decode_from_server, t(PRIVATE_DST_ADDRESS)),
        (decode_from_client, t(PRIVATE_SRC_PORTS)),
        (decode_from_server, t(PRIVATE_SRC_ADDRESS)),
        (decode_from_peer, t(PRIVATE_MESSAGE)),
        (decode_from_server, t(SIGN_OUT_NOTIFY)),
    ];
    // The broadcast's message, after a whole username.
    positions.push((
        decode_from_server,
        be(&[&t(PUBLIC_BROADCAST), &[0, 0, 0, 2], b"al"]),
    ));
    // The error's reason, after its code.
    positions.push((decode_from_server, be(&[&t(ERROR), &[0, 0, 0, 3]])));
    positions
}

#[test]
fn negative_string_sizes_are_refused_without_the_body() {
    for (decoder, before) in string_size_positions() {
        for size in [-1, i32::MIN] {
            let raw = be(&[&before, &size.to_be_bytes()]);
            assert_eq!(
                decode_err(decoder, &raw, &Limits::default()),
                DecodeError::NegativeSize,
                "{raw:?}"
            );
        }
    }
}

#[test]
fn oversized_string_sizes_are_refused_without_the_body() {
    let limits = Limits::default();
    let over = i32::try_from(limits.string_bytes_max + 1).unwrap();
    for (decoder, before) in string_size_positions() {
        for size in [over, i32::MAX] {
            let raw = be(&[&before, &size.to_be_bytes()]);
            assert_eq!(
                decode_err(decoder, &raw, &limits),
                DecodeError::TooLarge,
                "{raw:?}"
            );
        }
        // At the limit, the decoder waits for the body.
        let at_limit = i32::try_from(limits.string_bytes_max).unwrap();
        assert_need_more(decoder, &be(&[&before, &at_limit.to_be_bytes()]), &limits);
    }
}

#[test]
fn the_string_limit_is_the_callers() {
    let limits = Limits {
        string_bytes_max: 5,
        ..Limits::default()
    };
    let mut buf = BytesMut::from(&public_message(b"12345")[..]);
    assert!(matches!(
        decode_from_client(&mut buf, &limits),
        Ok(Some(Packet::PublicMessage { .. }))
    ));
    assert_eq!(
        decode_err(decode_from_client, &public_message(b"123456"), &limits),
        DecodeError::TooLarge
    );
    // A string of exactly the default limit decodes with the default limits.
    let long = vec![b'x'; 4096];
    let mut buf = BytesMut::from(&public_message(&long)[..]);
    assert_eq!(
        decode_from_client(&mut buf, &Limits::default()),
        Ok(Some(Packet::PublicMessage {
            message: Bytes::from(long)
        }))
    );
}

#[test]
fn address_sizes_other_than_4_and_16_are_refused_without_the_body() {
    let name = be(&[&[0, 0, 0, 3], b"bob"]);
    for kind in [PRIVATE_DST_ADDRESS, PRIVATE_SRC_ADDRESS] {
        for size in [0, 1, 3, 5, 6, 8, 15, 17, 32, -4, -16, i32::MIN, i32::MAX] {
            let raw = be(&[&kind.to_be_bytes(), &name, &size.to_be_bytes()]);
            assert_eq!(
                decode_err(decode_from_server, &raw, &Limits::default()),
                DecodeError::BadAddressSize(size),
                "type {kind}, size {size}"
            );
        }
        for size in [4i32, 16] {
            let raw = be(&[&kind.to_be_bytes(), &name, &size.to_be_bytes()]);
            assert_need_more(decode_from_server, &raw, &Limits::default());
        }
    }
}

#[test]
fn file_sizes_are_checked_and_the_files_bytes_are_left_in_the_buffer() {
    let limits = Limits {
        file_bytes_max: 1000,
        ..Limits::default()
    };
    assert_eq!(
        decode_err(decode_from_peer, &private_file(-1), &limits),
        DecodeError::NegativeSize
    );
    assert_eq!(
        decode_err(decode_from_peer, &private_file(i64::MIN), &limits),
        DecodeError::NegativeSize
    );
    assert_eq!(
        decode_err(decode_from_peer, &private_file(1001), &limits),
        DecodeError::TooLarge
    );
    let mut buf = BytesMut::from(&private_file(1000)[..]);
    buf.extend_from_slice(&[7; 300]);
    assert_eq!(
        decode_from_peer(&mut buf, &limits),
        Ok(Some(Packet::PrivateFile { size: 1000 }))
    );
    assert_eq!(&buf[..], &[7; 300][..], "the file's bytes are the caller's");
    // The default allows a terabyte; an empty file is a file too.
    for size in [0, 1 << 40] {
        let mut buf = BytesMut::from(&private_file(size)[..]);
        assert_eq!(
            decode_from_peer(&mut buf, &Limits::default()),
            Ok(Some(Packet::PrivateFile { size }))
        );
    }
    assert_eq!(
        decode_err(
            decode_from_peer,
            &private_file((1 << 40) + 1),
            &Limits::default()
        ),
        DecodeError::TooLarge
    );
}

#[test]
fn any_non_zero_acceptation_byte_is_acceptance() {
    for (byte, accepted) in [(0u8, false), (1, true), (2, true), (255, true)] {
        let mut buf = BytesMut::from(&[0, 0, 0, 2, byte][..]);
        assert_eq!(
            decode_from_server(&mut buf, &Limits::default()),
            Ok(Some(Packet::ConnectResponse { accepted }))
        );
    }
}

// ---- errors ----

#[test]
fn error_codes_are_numbered_1_to_12_and_parse_back() {
    let codes: Vec<i32> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(codes, (1..=12).collect::<Vec<i32>>());
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        assert!(!code.as_str().is_empty());
    }
    assert_eq!(ErrorCode::from_code(0), None);
    assert_eq!(ErrorCode::from_code(13), None);
    assert_eq!(ErrorCode::BadPort.to_string(), "bad port (11)");
}

#[test]
fn decode_errors_name_their_error_code_and_say_what_is_wrong() {
    let cases = [
        (DecodeError::UnknownType(99), ErrorCode::UnknownType, "99"),
        (DecodeError::NegativeSize, ErrorCode::BadSize, "negative"),
        (DecodeError::TooLarge, ErrorCode::BadSize, "limit"),
        (DecodeError::BadAddressSize(7), ErrorCode::BadSize, "7"),
    ];
    for (err, code, word) in cases {
        assert_eq!(err.error_code(), code);
        let text = err.to_string();
        assert!(text.starts_with("MATOU "), "{text}");
        assert!(text.contains(word), "{text}");
    }
}

/// Deterministic garbage: xorshift64.
struct Garbage(u64);

impl Garbage {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn garbage_never_panics_and_errors_consume_nothing() {
    let mut rng = Garbage(0x9e37_79b9_7f4a_7c15);
    let limits = Limits {
        string_bytes_max: 64,
        file_bytes_max: 1 << 20,
    };
    for _ in 0..20_000 {
        let len = (rng.next() % 40) as usize;
        let mut raw: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Mostly small types and sizes, so that the garbage gets past the first checks.
        if raw.len() >= 4 {
            raw[..3].fill(0);
            raw[3] %= 19;
        }
        if raw.len() >= 8 && rng.next().is_multiple_of(2) {
            raw[4..7].fill(0);
        }
        for (_, decoder) in DECODERS {
            let mut buf = BytesMut::from(&raw[..]);
            match decoder(&mut buf, &limits) {
                // Re-encoding gives the bytes consumed, except an acceptation byte over 1.
                Ok(Some(Packet::ConnectResponse { .. })) => assert_eq!(buf.len(), raw.len() - 5),
                Ok(Some(packet)) => {
                    assert_eq!(&raw[..raw.len() - buf.len()], &encoded(&packet)[..]);
                }
                Ok(None) | Err(_) => assert_eq!(&buf[..], &raw[..]),
            }
        }
    }
}
