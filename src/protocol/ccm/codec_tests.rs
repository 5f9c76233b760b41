use super::*;

/// The original client's identity message (tests/vectors/ccm.txt, itself a copy of the
/// contract's); `the_identity_vector_is_the_vector_file_s` keeps the two the same.
const VECTOR_IDENTITY: &str = "43434d5c312e30204e6f74446566696e65640a53656e64446174653a2031302f31312f323032312031313b31363b31390a4d6573736167652d456e636f64696e673a207574662d380a0a4a75616e446f75676c6173";

#[test]
fn the_identity_vector_is_the_vector_file_s() {
    let file = include_str!("../../../tests/vectors/ccm.txt");
    let mut lines = file.lines();
    assert_eq!(
        lines.next(),
        Some("original client identity message (hex):")
    );
    assert_eq!(lines.next(), Some(VECTOR_IDENTITY));
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_one(raw: &[u8], burst_ended: bool) -> Message {
    let mut buf = BytesMut::from(raw);
    let message = decode(&mut buf, burst_ended).unwrap().unwrap();
    assert!(buf.is_empty(), "one message, nothing left over");
    message
}

fn decode_err(raw: &[u8], burst_ended: bool) -> DecodeError {
    let mut buf = BytesMut::from(raw);
    let err = decode(&mut buf, burst_ended).unwrap_err();
    assert_eq!(&buf[..], raw, "an error consumes nothing");
    err
}

fn assert_need_more(raw: &[u8], burst_ended: bool) {
    let mut buf = BytesMut::from(raw);
    assert_eq!(decode(&mut buf, burst_ended), Ok(None));
    assert_eq!(&buf[..], raw, "Ok(None) consumes nothing");
}

fn attrs(message: &Message) -> Vec<(&[u8], &[u8])> {
    message
        .attributes
        .iter()
        .map(|(k, v)| (&k[..], &v[..]))
        .collect()
}

fn text_message() -> Vec<u8> {
    b"CCM\\1.0 Text\nSender: alice\nAddressee: bob\nMessage-Encoding: utf-8\nContent-Length: 5\n\nhello"
        .to_vec()
}

// ---- the original client's bytes ----

#[test]
fn original_identity_waits_for_the_burst_to_end() {
    assert_need_more(&unhex(VECTOR_IDENTITY), false);
}

#[test]
fn original_identity_decodes_at_burst_end() {
    let message = decode_one(&unhex(VECTOR_IDENTITY), true);
    assert_eq!(&message.version[..], b"1.0");
    assert_eq!(&message.kind[..], b"NotDefined");
    assert_eq!(message.message_type(), Some(MessageType::NotDefined));
    assert_eq!(
        attrs(&message),
        vec![
            (&b"SendDate"[..], &b"10/11/2021 11;16;19"[..]),
            (b"Message-Encoding", b"utf-8"),
        ]
    );
    assert_eq!(
        message.attribute("message-encoding").map(|v| &v[..]),
        Some(&b"utf-8"[..])
    );
    assert_eq!(message.attribute("Content-Length"), None);
    assert_eq!(&message.content[..], b"JuanDouglas");
}

// ---- framing ----

#[test]
fn content_length_cuts_exactly_and_leaves_the_rest() {
    let mut raw = text_message();
    raw.extend_from_slice(b"CCM\\1.0 Conn");
    let mut buf = BytesMut::from(&raw[..]);
    // The burst flag does not matter when Content-Length is there.
    let message = decode(&mut buf, true).unwrap().unwrap();
    assert_eq!(&message.content[..], b"hello");
    assert_eq!(message.message_type(), Some(MessageType::Text));
    assert_eq!(&buf[..], b"CCM\\1.0 Conn");
    assert_eq!(decode(&mut buf, false), Ok(None));
    assert_eq!(&buf[..], b"CCM\\1.0 Conn");
}

#[test]
fn two_messages_back_to_back() {
    let mut raw = text_message();
    raw.extend_from_slice(b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
    let mut buf = BytesMut::from(&raw[..]);
    let first = decode(&mut buf, false).unwrap().unwrap();
    let second = decode(&mut buf, false).unwrap().unwrap();
    assert_eq!(&first.content[..], b"hello");
    assert_eq!(second.message_type(), Some(MessageType::Connect));
    assert!(second.content.is_empty());
    assert!(buf.is_empty());
    assert_eq!(decode(&mut buf, true), Ok(None));
}

#[test]
fn crlf_headers() {
    let message = decode_one(
        b"CCM\\1.0 Text\r\nSender: alice\r\nContent-Length: 3\r\n\r\nabc",
        false,
    );
    assert_eq!(&message.kind[..], b"Text");
    assert_eq!(
        attrs(&message),
        vec![(&b"Sender"[..], &b"alice"[..]), (b"Content-Length", b"3")]
    );
    assert_eq!(&message.content[..], b"abc");
}

#[test]
fn every_blank_line_form_ends_the_header() {
    for (ending, blank) in [
        ("\n", "\n"),
        ("\r\n", "\r\n"),
        ("\n", "\r\n"),
        ("\r\n", "\n"),
    ] {
        let raw = format!("CCM\\1.0 Raw{ending}A: 1{ending}Content-Length: 2{ending}{blank}xy");
        let message = decode_one(raw.as_bytes(), false);
        assert_eq!(&message.kind[..], b"Raw", "{raw:?}");
        assert_eq!(
            attrs(&message),
            vec![(&b"A"[..], &b"1"[..]), (b"Content-Length", b"2")],
            "{raw:?}"
        );
        assert_eq!(&message.content[..], b"xy", "{raw:?}");
    }
}

#[test]
fn header_without_attributes() {
    let message = decode_one(b"ccm\\1.0 disconnect\n\n", true);
    assert!(message.attributes.is_empty());
    assert!(message.content.is_empty());
    assert_eq!(message.message_type(), Some(MessageType::Disconnect));
    assert_eq!(&message.kind[..], b"disconnect", "kind as sent");
}

#[test]
fn values_are_trimmed_keys_are_as_sent() {
    let message = decode_one(
        b"CCM\\1.0 Text\nSender:alice\nX-Odd :  \t spaced value \t\nEmpty:\nContent-Length:0\n\n",
        false,
    );
    assert_eq!(
        attrs(&message),
        vec![
            (&b"Sender"[..], &b"alice"[..]),
            (b"X-Odd ", b"spaced value"),
            (b"Empty", b""),
            (b"Content-Length", b"0"),
        ]
    );
}

#[test]
fn attribute_lookup_is_case_insensitive_and_first_wins() {
    let message = decode_one(b"CCM\\1.0 Text\nA: 1\na: 2\n\n", true);
    assert_eq!(message.attribute("A").map(|v| &v[..]), Some(&b"1"[..]));
    assert_eq!(message.attribute("a").map(|v| &v[..]), Some(&b"1"[..]));
    assert_eq!(message.attribute("b"), None);
}

#[test]
fn unknown_type_is_kept() {
    let message = decode_one(b"CCM\\2.5 Telepathy\n\n", true);
    assert_eq!(&message.version[..], b"2.5");
    assert_eq!(&message.kind[..], b"Telepathy");
    assert_eq!(message.message_type(), None);
}

#[test]
fn burst_without_content_length_takes_everything() {
    let raw = b"CCM\\1.0 Text\nAddressee: bob\n\nline one\nline two\n\nCCM\\1.0 not a header";
    assert_need_more(raw, false);
    let message = decode_one(raw, true);
    assert_eq!(
        &message.content[..],
        b"line one\nline two\n\nCCM\\1.0 not a header"
    );
}

#[test]
fn every_split_point_yields_the_message_once() {
    let mut raw = text_message();
    raw.extend_from_slice(b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
    let first_len = text_message().len();
    for split in 0..=raw.len() {
        let mut buf = BytesMut::from(&raw[..split]);
        let mut out = Vec::new();
        while let Some(message) = decode(&mut buf, false).unwrap() {
            out.push(message);
        }
        buf.extend_from_slice(&raw[split..]);
        while let Some(message) = decode(&mut buf, false).unwrap() {
            out.push(message);
        }
        assert!(buf.is_empty(), "split {split}");
        assert_eq!(out.len(), 2, "split {split}");
        assert_eq!(&out[0].content[..], b"hello", "split {split}");
        assert_eq!(out[1].message_type(), Some(MessageType::Connect));
        if split >= first_len {
            // The first message was complete before the second half arrived.
            assert_eq!(&out[0].content[..], b"hello");
        }
    }
}

#[test]
fn one_byte_at_a_time() {
    let raw = text_message();
    let mut buf = BytesMut::new();
    for (i, &byte) in raw.iter().enumerate() {
        buf.extend_from_slice(&[byte]);
        let got = decode(&mut buf, false).unwrap();
        if i + 1 < raw.len() {
            assert_eq!(got, None, "after {} bytes", i + 1);
            assert_eq!(buf.len(), i + 1, "nothing consumed");
        } else {
            let message = got.unwrap();
            assert_eq!(&message.content[..], b"hello");
            assert_eq!(
                message.attribute("sender").map(|v| &v[..]),
                Some(&b"alice"[..])
            );
            assert!(buf.is_empty());
        }
    }
}

// ---- limits ----

#[test]
fn header_too_large() {
    let mut raw = b"CCM\\1.0 Text\nX: ".to_vec();
    raw.resize(HEADER_BYTES_MAX, b'a');
    assert_need_more(&raw, false);
    assert_need_more(&raw, true);
    raw.push(b'a');
    assert_eq!(decode_err(&raw, false), DecodeError::HeaderTooLarge);
}

#[test]
fn header_of_exactly_the_limit_is_accepted() {
    let mut raw = b"CCM\\1.0 Text\nX: ".to_vec();
    raw.resize(HEADER_BYTES_MAX - 2, b'a');
    raw.extend_from_slice(b"\n\n");
    assert_eq!(raw.len(), HEADER_BYTES_MAX);
    let message = decode_one(&raw, true);
    assert_eq!(message.attributes.len(), 1);
    // One more byte of header and the blank line no longer fits.
    let mut raw = b"CCM\\1.0 Text\nX: ".to_vec();
    raw.resize(HEADER_BYTES_MAX - 1, b'a');
    raw.extend_from_slice(b"\n\n");
    assert_eq!(decode_err(&raw, true), DecodeError::HeaderTooLarge);
}

#[test]
fn declared_content_too_large_before_the_body() {
    let raw = format!(
        "CCM\\1.0 Raw\nContent-Length: {}\n\n",
        CONTENT_BYTES_MAX + 1
    );
    assert_eq!(
        decode_err(raw.as_bytes(), false),
        DecodeError::ContentTooLarge
    );
    let raw = b"CCM\\1.0 Raw\nContent-Length: 99999999999999999999999999999\n\n";
    assert_eq!(decode_err(raw, false), DecodeError::ContentTooLarge);
    // The limit itself is fine: it waits for the body.
    let raw = format!("CCM\\1.0 Raw\nContent-Length: {CONTENT_BYTES_MAX}\n\n");
    assert_need_more(raw.as_bytes(), true);
}

#[test]
fn burst_content_too_large() {
    let mut raw = b"CCM\\1.0 Raw\n\n".to_vec();
    raw.resize(raw.len() + CONTENT_BYTES_MAX, b'x');
    assert_eq!(decode_one(&raw, true).content.len(), CONTENT_BYTES_MAX);
    raw.push(b'x');
    assert_eq!(decode_err(&raw, true), DecodeError::ContentTooLarge);
    // Refused while still reading too: buffering more cannot make it acceptable.
    assert_eq!(decode_err(&raw, false), DecodeError::ContentTooLarge);
}

// ---- malformed headers ----

#[test]
fn bad_content_length() {
    for value in ["", "abc", "-1", "+1", "1 2", "0x10", "1.0", "١"] {
        let raw = format!("CCM\\1.0 Raw\nContent-Length: {value}\n\n");
        assert_eq!(
            decode_err(raw.as_bytes(), true),
            DecodeError::BadContentLength,
            "{value:?}"
        );
    }
    let raw = b"CCM\\1.0 Raw\nContent-Length: 1\ncontent-length: 2\n\nab";
    assert_eq!(decode_err(raw, true), DecodeError::BadContentLength);
    // Repeating the same length is harmless.
    let message = decode_one(
        b"CCM\\1.0 Raw\nContent-Length: 1\nContent-Length: 01\n\na",
        true,
    );
    assert_eq!(&message.content[..], b"a");
}

#[test]
fn non_utf8_header() {
    assert_eq!(
        decode_err(b"CCM\\1.0 Text\nSender: \xff\xfe\n\n", true),
        DecodeError::NotUtf8Header
    );
    assert_eq!(
        decode_err(b"CCM\\1.0 T\xc3\n\n", true),
        DecodeError::NotUtf8Header
    );
    // Non-UTF-8 content is fine: it is bytes, decoded by Message-Encoding.
    let message = decode_one(b"CCM\\1.0 Raw\nContent-Length: 2\n\n\xff\xfe", true);
    assert_eq!(&message.content[..], b"\xff\xfe");
    // UTF-8 beyond ASCII is fine in the header.
    let message = decode_one("CCM\\1.0 Text\nSender: João\n\n".as_bytes(), true);
    assert_eq!(
        message.attribute("Sender").map(|v| &v[..]),
        Some("João".as_bytes())
    );
}

#[test]
fn bad_start_lines() {
    for raw in [
        &b"CCM\\1.0\n\n"[..],
        b"CCM\\ Text\n\n",
        b"CCM\\1.0 \n\n",
        b"CCM\\1.0 Text extra\n\n",
        b"CCM\\1.0  Text\n\n",
        b"CCM\\\n\n",
        b"CCM\\1.0\tText\n\n",
    ] {
        assert_eq!(
            decode_err(raw, true),
            DecodeError::BadStartLine,
            "{}",
            raw.escape_ascii()
        );
    }
    for raw in [
        &b"CCX\\1.0 Text\n\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CC\0",
        b"\n\n",
        b"x",
    ] {
        assert_eq!(
            decode_err(raw, true),
            DecodeError::NotCcm,
            "{}",
            raw.escape_ascii()
        );
    }
    // A trailing CR on the start line is tolerated.
    let message = decode_one(b"CCM\\1.0 Text\r\n\n", true);
    assert_eq!(&message.kind[..], b"Text");
}

#[test]
fn not_ccm_is_refused_before_the_header_ends() {
    assert_eq!(decode_err(b"GET ", false), DecodeError::NotCcm);
    assert_eq!(decode_err(b"Cx", false), DecodeError::NotCcm);
    assert_need_more(b"", false);
    assert_need_more(b"cC", false);
    assert_need_more(b"CCM\\1.0 Text\nSender: a", true);
}

#[test]
fn attribute_without_colon_or_key() {
    for raw in [
        &b"CCM\\1.0 Text\nSender alice\n\n"[..],
        b"CCM\\1.0 Text\n: alice\n\n",
        b"CCM\\1.0 Text\nA: 1\n \n\n",
        b"CCM\\1.0 Text\r\nA: 1\r\n\r\r\n\r\n",
    ] {
        assert_eq!(
            decode_err(raw, true),
            DecodeError::BadAttribute,
            "{}",
            raw.escape_ascii()
        );
    }
}

#[test]
fn errors_display() {
    for err in [
        DecodeError::NotCcm,
        DecodeError::BadStartLine,
        DecodeError::BadAttribute,
        DecodeError::BadContentLength,
        DecodeError::HeaderTooLarge,
        DecodeError::ContentTooLarge,
        DecodeError::NotUtf8Header,
    ] {
        assert!(err.to_string().starts_with("CCM"), "{err:?}");
    }
    assert!(!TextError::Invalid.to_string().is_empty());
    assert!(!TextError::UnknownEncoding.to_string().is_empty());
}

// ---- zero copy ----

#[test]
fn fields_point_into_the_received_buffer() {
    let raw = text_message();
    let buf = BytesMut::from(&raw[..]);
    let base = buf.as_ptr() as usize;
    let range = base..base + raw.len();
    let mut buf = buf;
    let message = decode(&mut buf, false).unwrap().unwrap();
    let inside = |b: &Bytes| range.contains(&(b.as_ptr() as usize));
    assert!(inside(&message.content));
    assert_eq!(message.content.as_ptr() as usize, base + raw.len() - 5);
    assert!(inside(&message.version));
    assert!(inside(&message.kind));
    for (k, v) in &message.attributes {
        assert!(inside(k) && inside(v));
    }
    let sender = message.attribute("Sender").unwrap();
    assert_eq!(
        sender.as_ptr() as usize,
        base + b"CCM\\1.0 Text\nSender: ".len()
    );
}

// ---- detection ----

#[test]
fn detect_cases() {
    use Detection::*;
    for (raw, expected) in [
        (&b""[..], NeedMore),
        (b"C", NeedMore),
        (b"c", NeedMore),
        (b"cc", NeedMore),
        (b"CCM", NeedMore),
        (b"cCm", NeedMore),
        (b"ccm\\", Ccm),
        (b"CCM\\", Ccm),
        (b"CCM\\1.0", Ccm),
        (b"CCM\\1.0 Text\n\n", Ccm),
        (b"GET ", NotCcm),
        (b"G", NotCcm),
        (b"CCX\\", NotCcm),
        (b"CC\0", NotCcm),
        (b"CCM/", NotCcm),
        (b"CCM|", NotCcm),
        (b"\x16\x03\x01", NotCcm),
    ] {
        assert_eq!(detect(raw), expected, "{}", raw.escape_ascii());
    }
}

// ---- the HTTP answer ----

#[test]
fn http_answer_byte_for_byte() {
    assert_eq!(HTTP_BODY.len(), 110);
    let expected = "HTTP/1.1 400 Bad Request\r\n\
                    Date: 11/10/2021 11:26:19\r\n\
                    Server: CCM Server\r\n\
                    Content-Length: 110\r\n\
                    Connection: Closed\r\n\
                    Content-Type: text/html; charset=iso-8859-1\r\n\
                    \r\n\
                    This server uses the CCM (Chat Comunitcation message) protocol to communicate and I need to use this protocol!";
    let answer = http_bad_request(1_636_543_579);
    assert_eq!(&answer[..], expected.as_bytes());
    assert!(answer.ends_with(HTTP_BODY));
    let blank = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(answer.len() - blank - 4, 110);
}

#[test]
fn http_dates() {
    for (secs, expected) in [
        (0, "01/01/1970 00:00:00"),
        (59, "01/01/1970 00:00:59"),
        (86_399, "01/01/1970 23:59:59"),
        (946_684_799, "12/31/1999 23:59:59"),
        (951_782_400, "02/29/2000 00:00:00"),
        (951_868_799, "02/29/2000 23:59:59"),
        (978_307_200, "01/01/2001 00:00:00"),
        (1_636_543_579, "11/10/2021 11:26:19"),
        (1_709_251_199, "02/29/2024 23:59:59"),
        (2_147_483_647, "01/19/2038 03:14:07"),
        (2_147_483_648, "01/19/2038 03:14:08"),
        (4_107_456_000, "02/28/2100 00:00:00"),
        (4_107_542_399, "02/28/2100 23:59:59"),
        (4_107_542_400, "03/01/2100 00:00:00"),
        (253_402_300_799, "12/31/9999 23:59:59"),
    ] {
        assert_eq!(http_date(secs), expected, "{secs}");
    }
    // Absurd inputs still format, without overflow.
    assert!(!http_date(u64::MAX).is_empty());
}

// ---- encoding ----

#[test]
fn encode_layout() {
    let out = encode(
        "Text",
        &[("Sender", b"alice"), ("Addressee", b"bob")],
        b"hi",
    );
    assert_eq!(
        &out[..],
        b"CCM\\1.0 Text\nSender: alice\nAddressee: bob\nContent-Length: 2\n\nhi"
    );
    let out = encode(MessageType::Connect.as_str(), &[], b"");
    assert_eq!(&out[..], b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
}

#[test]
fn content_length_written_once() {
    let out = encode(
        "Identity",
        &[("User", b"ab"), ("content-length", b"0")],
        b"",
    );
    assert_eq!(
        &out[..],
        b"CCM\\1.0 Identity\nUser: ab\ncontent-length: 0\n\n"
    );
    let count = |raw: &[u8]| {
        raw.split(|&b| b == b'\n')
            .filter(|line| line.to_ascii_lowercase().starts_with(b"content-length:"))
            .count()
    };
    assert_eq!(count(&out), 1);
    assert_eq!(count(&encode("Text", &[("A", b"1")], b"xyz")), 1);
}

#[test]
fn encode_round_trips() {
    let content: Vec<u8> = (0..=255u8).collect();
    let attributes: &[(&str, &[u8])] = &[
        ("Sender", b"alice"),
        ("Addressee", b"*"),
        ("Message-Encoding", b"utf-16"),
        ("Empty", b""),
    ];
    for kind in MessageType::ALL {
        let out = encode(kind.as_str(), attributes, &content);
        // Content-Length frames it whatever the burst flag says.
        let message = decode_one(&out, false);
        assert_eq!(message.message_type(), Some(kind));
        assert_eq!(&message.version[..], b"1.0");
        let mut expected: Vec<(&[u8], &[u8])> =
            attributes.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        expected.push((b"Content-Length", b"256"));
        assert_eq!(attrs(&message), expected);
        assert_eq!(&message.content[..], &content[..]);
    }
}

#[test]
fn encode_head_then_content_equals_encode() {
    let attributes: &[(&str, &[u8])] = &[("Sender", b"alice"), ("Addressee", b"bob")];
    for content in [&b""[..], b"x", &[7u8; 1000]] {
        let mut joined = encode_head("Audio", attributes, content.len()).to_vec();
        joined.extend_from_slice(content);
        assert_eq!(joined, encode("Audio", attributes, content).to_vec());
    }
    let head = encode_head("Raw", &[], 1_048_576);
    assert_eq!(&head[..], b"CCM\\1.0 Raw\nContent-Length: 1048576\n\n");
}

#[test]
fn encode_cannot_break_a_line() {
    let out = encode(
        "Text",
        &[("Sender", b"eve\r\nAddressee: *\n\nforged")],
        b"ok",
    );
    let message = decode_one(&out, false);
    assert_eq!(message.attributes.len(), 2);
    assert_eq!(
        message.attribute("Sender").map(|v| &v[..]),
        Some(&b"eve  Addressee: *  forged"[..])
    );
    assert_eq!(&message.content[..], b"ok");
}

#[test]
fn message_type_names() {
    for kind in MessageType::ALL {
        assert_eq!(MessageType::parse(kind.as_str().as_bytes()), Some(kind));
        assert_eq!(
            MessageType::parse(kind.as_str().to_uppercase().as_bytes()),
            Some(kind)
        );
        assert_eq!(kind.to_string(), kind.as_str());
    }
    assert_eq!(
        MessageType::parse(b"connectvoice"),
        Some(MessageType::ConnectVoice)
    );
    assert_eq!(MessageType::parse(b""), None);
    assert_eq!(MessageType::parse(b"Text "), None);
    assert_eq!(MessageType::parse(b"Texts"), None);
}

// ---- text decoding ----

const JAPANESE: &str = "こんにちは、世界 🎌";
const PORTUGUESE: &str = "Olá, João! Ação e coração.";

fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
    text.encode_utf16()
        .flat_map(|u| {
            if big_endian {
                u.to_be_bytes()
            } else {
                u.to_le_bytes()
            }
        })
        .collect()
}

#[test]
fn text_utf8() {
    for name in [
        None,
        Some(&b"utf-8"[..]),
        Some(b"UTF8"),
        Some(b"  Utf-8 \t"),
    ] {
        assert_eq!(
            decode_text(JAPANESE.as_bytes(), name).as_deref(),
            Ok(JAPANESE)
        );
        assert_eq!(
            decode_text(PORTUGUESE.as_bytes(), name).as_deref(),
            Ok(PORTUGUESE)
        );
    }
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(PORTUGUESE.as_bytes());
    assert_eq!(decode_text(&bom, None).as_deref(), Ok(PORTUGUESE));
    assert_eq!(decode_text(b"\xff", None), Err(TextError::Invalid));
    assert_eq!(
        decode_text(b"\xe3\x81", Some(b"utf-8")),
        Err(TextError::Invalid)
    );
    assert_eq!(decode_text(b"", None).as_deref(), Ok(""));
}

#[test]
fn text_ascii() {
    for name in [&b"us-ascii"[..], b"ASCII"] {
        assert_eq!(
            decode_text(b"JuanDouglas", Some(name)).as_deref(),
            Ok("JuanDouglas")
        );
        assert_eq!(
            decode_text(PORTUGUESE.as_bytes(), Some(name)),
            Err(TextError::Invalid)
        );
        assert_eq!(decode_text(b"a\x80", Some(name)), Err(TextError::Invalid));
    }
}

#[test]
fn text_latin1() {
    let latin1: Vec<u8> = PORTUGUESE.chars().map(|c| c as u32 as u8).collect();
    assert!(PORTUGUESE.chars().all(|c| (c as u32) < 0x100));
    for name in [&b"iso-8859-1"[..], b"Latin1", b"ISO-8859-1 "] {
        assert_eq!(decode_text(&latin1, Some(name)).as_deref(), Ok(PORTUGUESE));
    }
    let all: Vec<u8> = (0..=255u8).collect();
    let text = decode_text(&all, Some(b"latin1")).unwrap();
    assert!(text.chars().map(|c| c as u32).eq(0..=255u32));
}

#[test]
fn text_utf16() {
    for text in [JAPANESE, PORTUGUESE] {
        let le = utf16(text, false);
        let be = utf16(text, true);
        for name in [&b"utf-16"[..], b"Unicode", b"UTF-16LE"] {
            assert_eq!(decode_text(&le, Some(name)).as_deref(), Ok(text));
            let mut with_bom = vec![0xFF, 0xFE];
            with_bom.extend_from_slice(&le);
            assert_eq!(decode_text(&with_bom, Some(name)).as_deref(), Ok(text));
            let mut with_bom = vec![0xFE, 0xFF];
            with_bom.extend_from_slice(&be);
            assert_eq!(decode_text(&with_bom, Some(name)).as_deref(), Ok(text));
        }
        assert_eq!(decode_text(&be, Some(b"utf-16be")).as_deref(), Ok(text));
        let mut with_bom = vec![0xFF, 0xFE];
        with_bom.extend_from_slice(&le);
        assert_eq!(
            decode_text(&with_bom, Some(b"utf-16BE")).as_deref(),
            Ok(text)
        );
    }
    assert_eq!(
        decode_text(b"a\0b", Some(b"utf-16")),
        Err(TextError::Invalid)
    );
    // An unpaired surrogate.
    assert_eq!(
        decode_text(&[0x00, 0xD8, 0x41, 0x00], Some(b"unicode")),
        Err(TextError::Invalid)
    );
    assert_eq!(
        decode_text(&[0xFF, 0xFE], Some(b"utf-16")).as_deref(),
        Ok("")
    );
}

#[test]
fn text_utf32() {
    let le: Vec<u8> = JAPANESE
        .chars()
        .flat_map(|c| (c as u32).to_le_bytes())
        .collect();
    assert_eq!(decode_text(&le, Some(b"utf-32")).as_deref(), Ok(JAPANESE));
    let mut be = vec![0, 0, 0xFE, 0xFF];
    be.extend(JAPANESE.chars().flat_map(|c| (c as u32).to_be_bytes()));
    assert_eq!(decode_text(&be, Some(b"utf-32")).as_deref(), Ok(JAPANESE));
    assert_eq!(
        decode_text(&[0, 0xD8, 0, 0], Some(b"utf-32")),
        Err(TextError::Invalid)
    );
    assert_eq!(
        decode_text(&[1, 2, 3], Some(b"utf-32")),
        Err(TextError::Invalid)
    );
}

#[test]
fn text_unknown_encoding() {
    for name in [&b""[..], b"ebcdic", b"utf-7", b"shift_jis", b"utf-8x"] {
        assert_eq!(
            decode_text(b"abc", Some(name)),
            Err(TextError::UnknownEncoding)
        );
    }
}
