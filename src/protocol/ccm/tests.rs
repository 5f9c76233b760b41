//! CCM logic without sockets: fabricated bytes, time and tokens.

use bytes::{Bytes, BytesMut};

use super::codec;
use super::*;
use crate::protocol::testing::RecordingOutbox;
use crate::protocol::{CloseMode, CloseReason, ConnId};

const IDLE_MS: u64 = 5_000;
const ANSWER_MS: u64 = 3_600;
/// 2021-10-11 11:16:19 UTC.
const UNIX_SECS: u64 = 1_633_950_979;

/// The original client's identity message, exactly (no Content-Length).
const ORIGINAL_IDENTITY: &[u8] =
    b"CCM\\1.0 NotDefined\nSendDate: 10/11/2021 11;16;19\nMessage-Encoding: utf-8\n\nJuanDouglas";

fn conn(slot: u32) -> ConnId {
    ConnId::new(slot, 1)
}

/// Tokens 000...01, 000...02, ...: deterministic.
fn counting_tokens() -> TokenSource {
    let mut next = 0u8;
    Box::new(move |bytes: &mut [u8; 16]| {
        next += 1;
        *bytes = [0; 16];
        bytes[15] = next;
        true
    })
}

fn token(n: u8) -> String {
    format!("{:032x}", n)
}

struct Harness {
    service: CcmService,
    out: RecordingOutbox,
    now_ms: u64,
}

impl Harness {
    fn new() -> Self {
        Harness::with_rates(0, 0)
    }

    fn with_rates(sender_bytes_per_s_max: u64, pair_bytes_per_s_max: u64) -> Self {
        Harness {
            service: CcmService::new(
                CcmConfig {
                    keepalive_idle_ms: IDLE_MS,
                    keepalive_answer_ms: ANSWER_MS,
                    name_bytes_max: 16,
                    sender_bytes_per_s_max,
                    pair_bytes_per_s_max,
                    timer_tick_ms: 10,
                },
                counting_tokens(),
                0,
            ),
            out: RecordingOutbox::default(),
            now_ms: 0,
        }
    }

    /// Bytes arrive in one read burst (the socket then has no more).
    fn burst(&mut self, id: ConnId, bytes: &[u8]) {
        let mut input = BytesMut::from(bytes);
        self.service
            .on_data(id, &mut input, true, self.now_ms, UNIX_SECS, &mut self.out);
    }

    fn connect(&mut self, id: ConnId, name: &str) {
        self.service.on_accept(id, self.now_ms);
        self.burst(id, &identity(name));
    }

    fn text_to(&self, id: ConnId) -> Vec<String> {
        // Consecutive buffers to one connection form its byte stream; join them.
        let joined: Vec<u8> = self.out.sent_to(id).concat();
        vec![String::from_utf8_lossy(&joined).into_owned()]
    }

    fn advance_to(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.service.on_timers(now_ms, &mut self.out);
    }
}

fn identity(name: &str) -> Vec<u8> {
    format!("CCM\\1.0 NotDefined\nMessage-Encoding: utf-8\n\n{name}").into_bytes()
}

fn text(to: &str, body: &str) -> Vec<u8> {
    format!(
        "CCM\\1.0 Text\nAddressee: {to}\nMessage-Encoding: utf-8\nContent-Length: {}\n\n{body}",
        body.len()
    )
    .into_bytes()
}

fn identity_answer(n: u8) -> String {
    format!(
        "CCM\\1.0 Identity\nUser: {}\nContent-Length: 0\n\n",
        token(n)
    )
}

#[test]
fn the_original_clients_exact_message_identifies_juan_douglas() {
    let mut h = Harness::new();
    h.service.on_accept(conn(1), 0);
    // Without the end of the read burst the message is not complete (no Content-Length).
    let mut input = BytesMut::from(ORIGINAL_IDENTITY);
    h.service
        .on_data(conn(1), &mut input, false, 0, UNIX_SECS, &mut h.out);
    assert!(h.out.sent.is_empty());
    h.service
        .on_data(conn(1), &mut input, true, 0, UNIX_SECS, &mut h.out);
    assert_eq!(h.text_to(conn(1)), [identity_answer(1)]);
    assert_eq!(h.service.identified_count(), 1);
}

#[test]
fn anything_that_is_not_ccm_gets_the_http_answer_and_is_closed() {
    for stranger in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"hello there",
        b"CCX\\1.0 Text",
    ] {
        let mut h = Harness::new();
        h.service.on_accept(conn(1), 0);
        h.burst(conn(1), stranger);
        let sent = h.out.sent_to(conn(1));
        assert_eq!(sent, [codec::http_bad_request(UNIX_SECS)]);
        let answer = String::from_utf8_lossy(&sent[0]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\nDate: 10/11/2021 11:16:19\r\n"));
        assert_eq!(
            h.out.closed,
            [(conn(1), CloseReason::ProtocolError, CloseMode::AfterFlush)]
        );
    }
}

#[test]
fn detection_waits_for_four_bytes_case_insensitively() {
    let mut h = Harness::new();
    h.service.on_accept(conn(1), 0);
    let mut input = BytesMut::from(&b"cc"[..]);
    h.service
        .on_data(conn(1), &mut input, true, 0, UNIX_SECS, &mut h.out);
    assert!(h.out.sent.is_empty() && h.out.closed.is_empty());
    input.extend_from_slice(b"m\\1.0 NotDefined\n\nana");
    h.service
        .on_data(conn(1), &mut input, true, 0, UNIX_SECS, &mut h.out);
    assert_eq!(h.text_to(conn(1)), [identity_answer(1)]);
}

#[test]
fn names_are_unique_and_a_refusal_keeps_the_connection_open() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.out.clear();
    h.connect(conn(2), "alice");
    let answer = &h.text_to(conn(2))[0];
    assert!(
        answer.starts_with("CCM\\1.0 Error\nReason: name-taken\n"),
        "{answer}"
    );
    assert!(h.out.closed.is_empty());
    // Another try on the same connection works.
    h.out.clear();
    h.burst(conn(2), &identity("bob"));
    assert_eq!(h.text_to(conn(2)), [identity_answer(2)]);
}

#[test]
fn an_empty_name_is_refused() {
    let mut h = Harness::new();
    h.connect(conn(1), "  \r\n");
    assert!(h.text_to(conn(1))[0].contains("Reason: not-identified"));
    assert_eq!(h.service.identified_count(), 0);
    assert!(h.out.closed.is_empty());
}

#[test]
fn a_name_over_its_limit_is_too_large_and_the_connection_stays_for_another_try() {
    let mut h = Harness::new();
    // The harness's limit is 16 bytes: 17 is refused, exactly 16 is taken.
    h.connect(conn(1), "abcdefghijklmnopq");
    let answer = &h.text_to(conn(1))[0];
    assert!(
        answer.starts_with("CCM\\1.0 Error\nReason: too-large\n"),
        "{answer}"
    );
    assert_eq!(h.service.identified_count(), 0);
    assert!(h.out.closed.is_empty());
    h.out.clear();
    h.burst(conn(1), &identity("abcdefghijklmnop"));
    assert_eq!(h.text_to(conn(1)), [identity_answer(1)]);
    assert_eq!(h.service.identified_count(), 1);
}

#[test]
fn a_text_reaches_its_addressee_with_sender_and_content_length() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();
    h.burst(conn(1), &text("bob", "olá bob"));
    let expected = format!(
        "CCM\\1.0 Text\nSender: alice\nAddressee: bob\nMessage-Encoding: utf-8\nContent-Length: {}\n\nolá bob",
        "olá bob".len()
    );
    assert_eq!(h.text_to(conn(2)), [expected]);
    assert!(h.out.sent_to(conn(1)).is_empty());
}

#[test]
fn raw_audio_and_streaming_are_delivered_with_their_type() {
    for kind in ["Raw", "Audio", "Streaming"] {
        let mut h = Harness::new();
        h.connect(conn(1), "alice");
        h.connect(conn(2), "bob");
        h.out.clear();
        let message = format!("CCM\\1.0 {kind}\nAddressee: bob\nContent-Length: 3\n\n\x00\x01\x02");
        h.burst(conn(1), message.as_bytes());
        let got = h.out.sent_to(conn(2)).concat();
        assert!(got.starts_with(format!("CCM\\1.0 {kind}\nSender: alice\n").as_bytes()));
        assert!(got.ends_with(b"Content-Length: 3\n\n\x00\x01\x02"));
    }
}

#[test]
fn addressee_star_reaches_everyone_else() {
    let mut h = Harness::new();
    for (slot, name) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        h.connect(conn(slot), name);
    }
    h.out.clear();
    h.burst(conn(1), &text("*", "hi all"));
    assert!(h.out.sent_to(conn(1)).is_empty());
    for slot in [2, 3] {
        assert!(h.text_to(conn(slot))[0].ends_with("\n\nhi all"));
    }
}

#[test]
fn an_unknown_addressee_gets_an_error_and_the_connection_stays() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.out.clear();
    h.burst(conn(1), &text("nobody", "hello?"));
    assert!(h.text_to(conn(1))[0].starts_with("CCM\\1.0 Error\nReason: unknown-addressee\n"));
    assert!(h.out.closed.is_empty());
}

#[test]
fn a_wrong_user_token_is_an_error_and_closes() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();
    // Alice uses bob's token.
    let forged = format!(
        "CCM\\1.0 Text\nUser: {}\nAddressee: bob\nContent-Length: 1\n\nx",
        token(2)
    );
    h.burst(conn(1), forged.as_bytes());
    assert!(h.text_to(conn(1))[0].contains("Reason: invalid-token"));
    assert_eq!(
        h.out.closed,
        [(conn(1), CloseReason::ProtocolError, CloseMode::AfterFlush)]
    );
    assert!(h.out.sent_to(conn(2)).is_empty());
    // The right token is accepted.
    let mut h2 = Harness::new();
    h2.connect(conn(1), "alice");
    h2.connect(conn(2), "bob");
    h2.out.clear();
    let good = format!(
        "CCM\\1.0 Text\nUser: {}\nAddressee: bob\nContent-Length: 1\n\nx",
        token(1)
    );
    h2.burst(conn(1), good.as_bytes());
    assert!(h2.out.closed.is_empty());
    assert_eq!(h2.out.sent_to(conn(2)).len(), 2);
}

#[test]
fn a_malformed_header_after_identification_is_an_error_then_close() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.out.clear();
    h.burst(conn(1), b"CCM\\1.0 Text\nthis line has no colon\n\nx");
    assert!(h.text_to(conn(1))[0].contains("Reason: bad-header"));
    assert_eq!(
        h.out.closed,
        [(conn(1), CloseReason::ProtocolError, CloseMode::AfterFlush)]
    );
    // Its name is free at once.
    h.connect(conn(2), "alice");
    assert_eq!(h.service.identified_count(), 1);
}

#[test]
fn an_oversized_content_length_is_too_large() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.out.clear();
    h.burst(
        conn(1),
        b"CCM\\1.0 Text\nAddressee: x\nContent-Length: 99999999\n\n",
    );
    assert!(h.text_to(conn(1))[0].contains("Reason: too-large"));
    assert_eq!(h.out.closed.len(), 1);
}

#[test]
fn keepalive_connect_after_idle_then_close_without_an_answer() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.out.clear();
    h.advance_to(IDLE_MS - 10);
    assert!(h.out.sent.is_empty(), "not before 5000 ms of silence");
    h.advance_to(IDLE_MS + 10);
    assert_eq!(
        h.text_to(conn(1)),
        ["CCM\\1.0 Connect\nContent-Length: 0\n\n".to_string()]
    );
    h.advance_to(IDLE_MS + ANSWER_MS - 10);
    assert!(
        h.out.closed.is_empty(),
        "not before 3600 ms without an answer"
    );
    h.advance_to(IDLE_MS + ANSWER_MS + 30);
    assert_eq!(
        h.out.closed,
        [(conn(1), CloseReason::Timeout, CloseMode::Now)]
    );
}

#[test]
fn an_answer_to_the_keepalive_keeps_the_connection() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.advance_to(IDLE_MS + 10);
    h.now_ms = IDLE_MS + 1_000;
    h.burst(conn(1), b"CCM\\1.0 Connect\nContent-Length: 0\n\n");
    h.advance_to(IDLE_MS + ANSWER_MS + 100);
    assert!(h.out.closed.is_empty());
    // The next keepalive comes 5000 ms after the answer.
    h.out.clear();
    h.advance_to(IDLE_MS + 1_000 + IDLE_MS - 20);
    assert!(h.out.sent.is_empty());
    h.advance_to(IDLE_MS + 1_000 + IDLE_MS + 20);
    assert_eq!(h.out.sent.len(), 1);
}

#[test]
fn traffic_keeps_the_keepalive_away() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.connect(conn(2), "bob");
    h.out.clear();
    for step in 1..=10 {
        h.now_ms = step * 2_000;
        h.burst(conn(1), &text("bob", "still here"));
        h.advance_to(step * 2_000 + 1);
    }
    assert!(h
        .out
        .sent_to(conn(1))
        .iter()
        .all(|b| !b.starts_with(b"CCM\\1.0 Connect")));
    assert!(h.out.closed.iter().all(|(id, _, _)| *id != conn(1)));
}

#[test]
fn disconnect_closes_and_frees_the_name_and_token() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.burst(conn(1), b"CCM\\1.0 Disconnect\nContent-Length: 0\n\n");
    assert_eq!(
        h.out.closed,
        [(conn(1), CloseReason::Done, CloseMode::AfterFlush)]
    );
    h.service.on_close(conn(1));
    h.out.clear();
    h.connect(conn(2), "alice");
    assert_eq!(h.text_to(conn(2)), [identity_answer(2)]);
}

#[test]
fn closing_frees_the_name() {
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    h.service.on_close(conn(1));
    assert_eq!(h.service.identified_count(), 0);
    h.advance_to(10 * IDLE_MS);
    assert!(
        h.out.closed.is_empty(),
        "no keepalive for a closed connection"
    );
}

#[test]
fn messages_with_content_length_split_anywhere_are_delivered_once() {
    let stream = [text("bob", "one"), text("bob", "two")].concat();
    for split in 0..=stream.len() {
        let mut h = Harness::new();
        h.connect(conn(1), "alice");
        h.connect(conn(2), "bob");
        h.out.clear();
        let mut input = BytesMut::new();
        for part in [&stream[..split], &stream[split..]] {
            input.extend_from_slice(part);
            // Mid-burst: messages with Content-Length need no end of burst.
            h.service
                .on_data(conn(1), &mut input, false, 0, UNIX_SECS, &mut h.out);
        }
        let got = h.out.sent_to(conn(2)).concat();
        assert!(got.ends_with(b"\n\ntwo"), "split at {split}");
        assert_eq!(h.out.sent_to(conn(2)).len(), 4, "split at {split}");
    }
}

#[test]
fn a_name_in_utf16_is_decoded_by_its_message_encoding() {
    let mut h = Harness::new();
    h.service.on_accept(conn(1), 0);
    let name: Vec<u8> = "José"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut message = b"CCM\\1.0 NotDefined\nMessage-Encoding: unicode\n\n".to_vec();
    message.extend_from_slice(&name);
    h.burst(conn(1), &message);
    assert_eq!(h.text_to(conn(1)), [identity_answer(1)]);
    // Now "José" is taken, whatever encoding the next one uses.
    h.connect(conn(2), "José");
    assert!(h.text_to(conn(2))[0].contains("name-taken"));
    let _ = Bytes::new();
}

#[test]
fn only_an_accepted_name_marks_the_connection_identified() {
    // The reactor closes a connection that is not identified within its handshake deadline:
    // detection, a refused name or an empty one do not count; an accepted name does.
    let mut h = Harness::new();
    h.connect(conn(1), "alice");
    assert_eq!(h.out.identified, [conn(1)]);
    h.service.on_accept(conn(2), 0);
    let mut input = BytesMut::from(&b"CCM\\"[..]);
    h.service
        .on_data(conn(2), &mut input, false, 0, UNIX_SECS, &mut h.out);
    assert_eq!(h.out.identified, [conn(1)], "detected is not identified");
    h.burst(conn(2), &identity("alice"));
    h.burst(conn(2), &identity(" "));
    assert_eq!(
        h.out.identified,
        [conn(1)],
        "taken and empty names do not identify"
    );
    h.burst(conn(2), &identity("bob"));
    assert_eq!(h.out.identified, [conn(1), conn(2)]);
    // Messages after that do not mark it again.
    h.burst(conn(2), &text("alice", "hi"));
    assert_eq!(h.out.identified, [conn(1), conn(2)]);
}

#[test]
fn a_connection_not_identified_by_the_deadline_is_told_why_then_closed() {
    let mut h = Harness::new();
    // Silent, and one whose name was taken: both still unidentified.
    h.connect(conn(1), "alice");
    h.service.on_accept(conn(2), 0);
    h.service.on_accept(conn(3), 0);
    h.burst(conn(3), &identity("alice"));
    h.out.clear();
    for id in [conn(2), conn(3)] {
        h.service.on_handshake_timeout(id, 10_000, &mut h.out);
        let answer = &h.text_to(id)[0];
        assert!(
            answer.starts_with("CCM\\1.0 Error\nReason: not-identified\n"),
            "{answer}"
        );
        assert!(answer.contains("within 10000 ms"), "{answer}");
    }
    assert_eq!(
        h.out.closed,
        [
            (
                conn(2),
                CloseReason::HandshakeTimeout,
                CloseMode::AfterFlush
            ),
            (
                conn(3),
                CloseReason::HandshakeTimeout,
                CloseMode::AfterFlush
            ),
        ]
    );
    // After the close a new connection may take a name; alice keeps hers.
    h.service.on_close(conn(2));
    h.service.on_close(conn(3));
    assert_eq!(h.service.identified_count(), 1);
}

#[test]
fn a_stranger_answered_with_http_gets_nothing_more_at_the_deadline() {
    let mut h = Harness::new();
    h.service.on_accept(conn(1), 0);
    h.burst(conn(1), b"GET / HTTP/1.1\r\n\r\n");
    h.out.clear();
    h.service.on_handshake_timeout(conn(1), 10_000, &mut h.out);
    assert!(h.out.sent.is_empty());
    assert!(h.out.closed.is_empty());
}

/// "The one who causes output pays": addressed messages are budgeted per sender and per pair
/// in bytes delivered; what is over is refused to the sender (Error rate-limited), never
/// queued for its recipient. Buckets hold at least one largest message (about 1 MiB), so the
/// rates here are set in MiB.
#[test]
fn addressed_floods_are_refused_to_their_sender_not_delivered() {
    const MIB: u64 = 1024 * 1024;
    let mut h = Harness::with_rates(3 * MIB, 2 * MIB);
    h.connect(conn(1), "mallory");
    h.connect(conn(2), "victim");
    h.connect(conn(3), "other");
    h.out.clear();
    let body = "x".repeat(256 * 1024);
    for _ in 0..16 {
        h.burst(conn(1), &text("victim", &body));
    }
    let delivered = h
        .out
        .sent_to(conn(2))
        .iter()
        .map(|b| b.len())
        .sum::<usize>() as u64;
    // The pair's 2 MiB: 7 messages of 256 KiB and their headers.
    assert!(
        delivered <= 2 * MIB && delivered > 2 * MIB - 300 * 1024,
        "{delivered}"
    );
    let errors = h.text_to(conn(1))[0]
        .matches("Reason: rate-limited")
        .count();
    assert_eq!(errors, 16 - 7);
    assert!(h.out.closed.is_empty(), "nobody is closed for it");
    // The sender's total (3 MiB, 1.75 of it spent) still lets it reach someone else: 4 more.
    h.out.clear();
    for _ in 0..8 {
        h.burst(conn(1), &text("other", &body));
    }
    let to_other = h.out.sent_to(conn(3)).len() / 2;
    assert_eq!(to_other, 4);
    // The victim may still talk back, and a second later mallory may send again.
    h.out.clear();
    h.burst(conn(2), &text("mallory", "stop it"));
    assert!(h.text_to(conn(1))[0].ends_with("stop it"));
    h.now_ms = 1000;
    h.burst(conn(1), &text("victim", "sorry"));
    assert!(h.text_to(conn(2))[0].ends_with("sorry"));
}
