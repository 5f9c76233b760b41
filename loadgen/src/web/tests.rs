//! WEB's client side without sockets: the upgrade, masked frames, the reader of the server's
//! frames (split anywhere), and the `say` frame the fan-out writes.

use super::ws::{self, Reader};
use super::{framing, name, scan_text, seal_say};
use crate::record::{self, Record, Scanned, Scanner, ALIAS_PREFIX_LEN};

/// The events `input` gives, fed in pieces of `piece` bytes, as text (owned).
fn events(reader: &mut Reader, input: &[u8], piece: usize) -> Result<Vec<String>, String> {
    let mut seen = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        reader.feed(chunk, |event| seen.push(format!("{event:?}")))?;
    }
    Ok(seen)
}

/// A server frame (unmasked), final.
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=65_535 => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// The payload of a masked client frame, unmasked, and its opcode.
fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
    assert_eq!(frame[0] & 0x80, 0x80, "final");
    assert_eq!(frame[1] & 0x80, 0x80, "masked");
    let (len, at) = match frame[1] & 0x7F {
        126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
        127 => (
            u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key = &frame[at..at + 4];
    let payload: Vec<u8> = (frame[at + 4..].iter().enumerate())
        .map(|(i, b)| b ^ key[i % 4])
        .collect();
    assert_eq!(payload.len(), len, "the length field is the payload's");
    (frame[0] & 0x0F, payload)
}

const UPGRADED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

#[test]
fn the_upgrade_request_carries_the_sample_key_and_a_matching_origin() {
    let request = String::from_utf8(ws::upgrade_request("127.0.0.1:8080")).unwrap();
    assert!(request.starts_with("GET /ws HTTP/1.1\r\n"), "{request}");
    assert!(
        request.contains("\r\nHost: 127.0.0.1:8080\r\n"),
        "{request}"
    );
    assert!(
        request.contains("\r\nOrigin: http://127.0.0.1:8080\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
    assert!(request.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    assert!(request.ends_with("\r\n\r\n"));
}

#[test]
fn the_upgrade_answer_is_checked_and_frames_behind_it_are_read() {
    let mut input = UPGRADED.to_vec();
    input.extend(server_frame(
        1,
        br#"{"type":"welcome","name":"lw000000","present":[]}"#,
    ));
    for piece in 1..=input.len() {
        let seen = events(&mut Reader::new(), &input, piece).unwrap();
        assert_eq!(seen, ["Upgraded", "Welcome"], "pieces of {piece}");
    }
    let wrong_accept = String::from_utf8_lossy(UPGRADED).replace("xOo=", "xOx=");
    let why = events(&mut Reader::new(), wrong_accept.as_bytes(), 4096).unwrap_err();
    assert!(why.contains("Sec-WebSocket-Accept"), "{why}");
    let forbidden = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
    let why = events(&mut Reader::new(), forbidden, 4096).unwrap_err();
    assert!(why.contains("403 Forbidden"), "{why}");
    let endless = vec![b'x'; 9 * 1024];
    assert!(events(&mut Reader::new(), &endless, 4096).is_err());
}

#[test]
fn client_frames_are_masked_with_the_right_length_in_every_size_class() {
    let mut keys = ws::Keys::new(7);
    for len in [0, 1, 125, 126, 65_535, 65_536] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let key = keys.next_key();
        let frame = ws::client_frame(ws::TEXT, &payload, key);
        assert_eq!(unmask(&frame), (ws::TEXT, payload.clone()), "length {len}");
        // The head the fan-out writes once, sealed per message, is the same frame.
        let mut sealed = ws::client_head(ws::TEXT, len);
        let head = sealed.len();
        sealed.extend_from_slice(&payload);
        ws::seal(&mut sealed, head, key);
        assert_eq!(sealed, frame, "length {len}");
    }
    assert_ne!(keys.next_key(), keys.next_key(), "the keys vary");
    let (opcode, json) = unmask(&ws::signin("lw000003", [9, 8, 7, 6]));
    assert_eq!(opcode, 1);
    assert_eq!(json, br#"{"type":"signin","name":"lw000003"}"#);
    assert_eq!(
        unmask(&ws::pong(b"hi", [1, 1, 1, 1])),
        (0xA, b"hi".to_vec())
    );
}

#[test]
fn a_say_frame_carries_the_room_message_as_json_text_and_scans_back_to_its_record() {
    let message_bytes = 80;
    let framing = framing("127.0.0.1:8080".parse().unwrap(), message_bytes);
    let head = framing.masked_head.unwrap();
    // As the fan-out writes it: prefix, `lg000001: ` and the record, suffix; then sealed.
    let mut frame = framing.message_prefix.clone();
    let mut message = vec![0; message_bytes];
    message[..ALIAS_PREFIX_LEN].copy_from_slice(b"lg000001: ");
    let stamp = Record {
        sender: 3,
        seq: 41,
        intended_us: 1_234_567,
        len: message_bytes - ALIAS_PREFIX_LEN,
    };
    record::encode_into(&mut message[ALIAS_PREFIX_LEN..], &stamp).unwrap();
    frame.extend_from_slice(&message);
    frame.extend_from_slice(framing.message_suffix);
    seal_say(&mut frame, head, message_bytes, &mut ws::Keys::new(1));
    let (opcode, json) = unmask(&frame);
    assert_eq!(opcode, 1);
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(value["type"], "say");
    let text = value["text"].as_str().unwrap();
    let mut sent = message[..message_bytes - 1].to_vec();
    sent[12] = b'W';
    assert_eq!(text.as_bytes(), sent, "WEB's marker, no newline");
    assert!(
        !text.chars().any(char::is_control),
        "WEB refuses control characters"
    );
    // A ROOM member that gets the text finds no record in it.
    let mut found = Vec::new();
    Scanner::new().feed(format!("lw000001: {text}\n").as_bytes(), |s| found.push(s));
    assert_eq!(found, []);
    // A WEB member's scanner gets ROOM's message back.
    let mut scanner = Scanner::new();
    let ours = scan_text(text.as_bytes(), |piece| {
        scanner.feed(piece, |s| found.push(s))
    });
    assert!(ours);
    assert_eq!(found, [Scanned::Record(stamp)]);
    // ROOM's own message, reaching a WEB member through the lobby, is not scanned.
    let room_text = &message[..message_bytes - 1];
    assert!(!scan_text(room_text, |_| panic!("scanned")));
    assert!(!scan_text(b"hi", |_| panic!("scanned")));
}

#[test]
fn server_messages_become_events_whatever_the_split() {
    let mut input = Vec::new();
    for json in [
        r#"{"type":"lobby","from":"bob","protocol":"room","text":"caf\u00e9 \"x\""}"#,
        r#"{"type":"joined","name":"bob","protocol":"matou"}"#,
        r#"{"type":"left","name":"bob","protocol":"matou"}"#,
        r#"{"type":"refused","reason":"name-taken"}"#,
        r#"{"type":"error","id":7,"reason":"rate-limited"}"#,
        r#"{"type":"direct","from":"carol","protocol":"ccm","text":"hi"}"#,
        r#"{"type":"sent","id":7,"status":"delivered"}"#,
        r#"{"type":"pong"}"#,
    ] {
        input.extend(server_frame(1, json.as_bytes()));
    }
    input.extend(server_frame(9, b"are you there"));
    input.extend(server_frame(10, b"unasked pong"));
    // A fragmented text, a ping between its fragments.
    let mut first = server_frame(1, br#"{"type":"lobby","from":"#);
    first[0] &= 0x7F;
    input.extend(first);
    input.extend(server_frame(9, b""));
    input.extend(server_frame(
        0,
        br#""dan","protocol":"web","text":"split"}"#,
    ));
    input.extend(server_frame(8, &1001u16.to_be_bytes()));
    let expected = [
        r#"Lobby { from: "bob", protocol: "room", text: "café \"x\"" }"#,
        "Joined",
        "Left",
        r#"Refused("name-taken")"#,
        r#"Error("rate-limited")"#,
        r#"Direct { from: "carol", text: "hi" }"#,
        "Sent",
        "Pong",
        "Ping([97, 114, 101, 32, 121, 111, 117, 32, 116, 104, 101, 114, 101])",
        "Ping([])",
        r#"Lobby { from: "dan", protocol: "web", text: "split" }"#,
        "Closed(1001)",
    ];
    for piece in [1, 2, 3, 7, 64, input.len()] {
        let seen = events(&mut Reader::upgraded(), &input, piece).unwrap();
        assert_eq!(seen, expected, "pieces of {piece}");
    }
    let bare_close = server_frame(8, b"");
    assert_eq!(
        events(&mut Reader::upgraded(), &bare_close, 9).unwrap(),
        ["Closed(1005)"]
    );
}

#[test]
fn what_a_server_must_not_send_is_an_error_and_stays_one() {
    let masked = ws::client_frame(1, br#"{"type":"pong"}"#, [1, 2, 3, 4]);
    let mut reserved = server_frame(1, br#"{"type":"pong"}"#);
    reserved[0] |= 0x40;
    let mut long_ping = server_frame(9, &[0; 126]);
    long_ping[1] = 126;
    let mut fragmented_ping = server_frame(9, b"x");
    fragmented_ping[0] &= 0x7F;
    let mut open = server_frame(1, br#"{"type":"#);
    open[0] &= 0x7F;
    let mut nested = open.clone();
    nested.extend(open.clone());
    let cases: [(&str, Vec<u8>); 9] = [
        ("masked", masked),
        ("reserved", reserved),
        ("binary", server_frame(2, b"\x00")),
        ("opcode 0x3", server_frame(3, b"")),
        ("over 125", long_ping),
        ("fragmented", fragmented_ping),
        ("continuation", server_frame(0, b"x")),
        ("inside a fragmented", nested),
        ("not a JSON", server_frame(1, b"{not json")),
    ];
    for (words, input) in cases {
        let mut reader = Reader::upgraded();
        let why = events(&mut reader, &input, 4096).unwrap_err();
        assert!(why.contains(words), "{words}: {why}");
        let again = reader.feed(&server_frame(1, br#"{"type":"pong"}"#), |_| {});
        assert_eq!(again, Err(why), "the reader stays failed");
    }
    let unknown = server_frame(1, br#"{"type":"hello"}"#);
    let why = events(&mut Reader::upgraded(), &unknown, 4096).unwrap_err();
    assert!(why.contains("unknown message type"), "{why}");
    let without_text = server_frame(1, br#"{"type":"lobby","from":"bob"}"#);
    let why = events(&mut Reader::upgraded(), &without_text, 4096).unwrap_err();
    assert!(why.contains("text"), "{why}");
}

#[test]
fn names_are_the_aliases_with_lw() {
    let mut alias = [0; 8];
    record::write_alias(&mut alias, 42);
    assert_eq!(name(&alias), "lw000042");
}

/// `loadgen web`'s flags and the mix's WEB share against chatd's default rate per web user.
mod rate_per_user {
    use clap::Parser as _;
    use switchboard::config::Config;

    use super::super::args::{mix_share_over_chatd_limit, over_chatd_limit};
    use crate::mix::planned_rate;
    use crate::registry::ScenarioArgs as _;
    use crate::room::RoomConfig;

    pub(super) fn web_config(flags: &[&str]) -> RoomConfig {
        let argv = [&["loadgen", "web"], flags].concat();
        match crate::Cli::try_parse_from(argv).map(|c| c.scenario) {
            Ok(crate::Scenario::Web(args)) => args.config().unwrap().0,
            other => panic!("not a web command line: {other:?}"),
        }
    }

    fn per_sender(cfg: &RoomConfig) -> f64 {
        cfg.pace.rate_per_s as f64 / cfg.senders as f64
    }

    #[test]
    fn the_defaults_stay_within_chatds_default_rate_per_web_user() {
        let max = Config::default().web_messages_per_s_max;
        assert!(max > 0, "chatd limits web users by default");
        let cfg = web_config(&[]);
        assert_eq!(
            (cfg.clients, cfg.senders, cfg.pace.rate_per_s),
            (100, 10, 100)
        );
        assert!(per_sender(&cfg) <= max as f64 / 2.0, "with room to spare");
        assert_eq!(over_chatd_limit(per_sender(&cfg), "the defaults"), None);
        // ROOM keeps its own default: no limiter there.
        let room = match crate::Cli::try_parse_from(["loadgen", "room"]).map(|c| c.scenario) {
            Ok(crate::Scenario::Room(args)) => args.config().unwrap().0,
            other => panic!("not a room command line: {other:?}"),
        };
        assert_eq!(room.pace.rate_per_s, 1_000);
    }

    #[test]
    fn a_rate_over_the_limit_is_told_with_the_flag_that_raises_it() {
        let at_limit = web_config(&["--rate", "200"]);
        assert_eq!(over_chatd_limit(per_sender(&at_limit), "--rate 200"), None);
        let over = web_config(&["--rate", "201"]);
        let note = over_chatd_limit(per_sender(&over), "--rate 201 over --senders 10").unwrap();
        assert!(
            note.starts_with("--rate 201 over --senders 10 is 20.1 messages/s"),
            "{note}"
        );
        assert!(
            note.contains("--web-messages-per-s-max 21 or more"),
            "{note}"
        );
        // More senders bring the same rate within it.
        let spread = web_config(&["--rate", "1000", "--senders", "50"]);
        assert_eq!(over_chatd_limit(per_sender(&spread), ""), None);
    }

    #[test]
    fn the_mix_web_share_is_within_the_limit_at_the_default_rate_per_client() {
        // A tenth of the share sends, rounded: 10 x --rate-per-client each, at most 14 when
        // the tenth rounds down (14 clients, 1 sender), 19 when the senders are capped.
        for clients in 1..=19_000 {
            let note = mix_share_over_chatd_limit(clients, planned_rate(clients, 1.0));
            assert_eq!(note, None, "{clients} clients");
        }
        let cases = [(167, 2.0, true), (167, 2.5, false), (14, 2.0, false)];
        for (clients, rate_per_client, within) in cases {
            let rate = planned_rate(clients, rate_per_client);
            let note = mix_share_over_chatd_limit(clients, rate);
            assert_eq!(
                note.is_none(),
                within,
                "{clients} at {rate_per_client}: {note:?}"
            );
        }
        let note = mix_share_over_chatd_limit(14, 28).unwrap();
        assert!(note.contains("28 messages/s over 1 senders"), "{note}");
    }
}

/// Churn's WEB sign-in, without sockets.
mod churn {
    use super::super::churn::{answer, UPGRADE};
    use super::ws;
    use crate::churn::{Stage, Step};

    #[test]
    fn the_sign_in_waits_for_101_then_the_welcome() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: \
            s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(matches!(
            answer("w1", Stage::Prompt, &head[..20]),
            Step::Wait
        ));
        let Step::Reply { read, out, then } = answer("w1", Stage::Prompt, head) else {
            panic!("no reply to the upgrade");
        };
        assert_eq!((read, then), (head.len(), Stage::Answer));
        assert_eq!(out, ws::signin("w1", [5, 6, 7, 8]));
        let forbidden = b"HTTP/1.1 403 Forbidden\r\n\r\n";
        assert!(matches!(
            answer("w1", Stage::Prompt, forbidden),
            Step::Unexpected
        ));
        let frame = |json: &str| {
            let mut f = vec![0x81, json.len() as u8];
            f.extend_from_slice(json.as_bytes());
            f
        };
        let joined = frame(r#"{"type":"joined","name":"w0","protocol":"web"}"#);
        let mut welcome = joined.clone();
        welcome.extend(frame(r#"{"type":"welcome","name":"w1","present":[]}"#));
        assert!(matches!(answer("w1", Stage::Answer, &joined), Step::Wait));
        assert!(matches!(
            answer("w1", Stage::Answer, &welcome[..joined.len() + 3]),
            Step::Wait
        ));
        assert!(matches!(
            answer("w1", Stage::Answer, &welcome),
            Step::SignedIn
        ));
        let refused = frame(r#"{"type":"refused","reason":"name-taken"}"#);
        assert!(matches!(
            answer("w1", Stage::Answer, &refused),
            Step::Unexpected
        ));
    }

    #[test]
    fn the_upgrade_request_is_the_one_the_codec_writes_without_origin() {
        let with_origin = String::from_utf8(ws::upgrade_request("localhost")).unwrap();
        let without: String = (with_origin.split("\r\n"))
            .filter(|line| !line.starts_with("Origin:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(without.as_bytes(), UPGRADE);
    }
}

mod against_chatd {
    use switchboard::config::Config;
    use switchboard::reactor::{ProtocolKind, Server};

    use crate::args::Pace;
    use crate::registry::{run_alone, ScenarioKind};
    use crate::room::{RoomConfig, RoomOutcome, Wire};
    use crate::web::Web;

    /// Runs `loadgen web` with 12 members against a chatd started here whose web users may
    /// send `per_s_max` messages a second (0: no limit); the outcome and the report's text and
    /// exit code.
    fn run(per_s_max: u64, senders: usize, rate_per_s: u64) -> (RoomOutcome, String, i32) {
        let server = Server::bind(Config {
            web_port: Some(0),
            web_messages_per_s_max: per_s_max,
            ..Config::for_tests()
        })
        .unwrap();
        let cfg = RoomConfig {
            wire: Wire::Web,
            target: server.local_addr(ProtocolKind::Web).unwrap(),
            clients: 12,
            senders,
            message_bytes: 80,
            pace: Pace {
                rate_per_s,
                duration_us: 1_000_000,
                warmup_us: 200_000,
                drain_us: 3_000_000,
                connect_rate_per_s: 2_000,
                seed: 0,
                progress: false,
            },
        };
        let handle = server.handle();
        let server_thread = std::thread::spawn(move || server.run());
        let outcome = run_alone::<Web>(&cfg);
        handle.shutdown();
        server_thread.join().unwrap().unwrap();
        let outcome = outcome.unwrap_or_else(|e| panic!("{e:?}"));
        let report = Web::report(&cfg, 1, false, &outcome);
        (outcome, report.to_text(), report.outcome.exit_code)
    }

    #[test]
    fn every_member_gets_every_lobby_message_and_nothing_is_lost() {
        let (run, text, exit_code) = run(0, 3, 150);
        assert_eq!(run.clients_joined, 12, "{text}");
        assert_eq!(run.ran.errors.total(), 0, "{text}");
        assert_eq!(run.ran.sends.sent, 180, "{text}");
        // Every member, the sender too: the server echoes a `say`.
        assert_eq!(run.seq.delivered, 180 * 12, "{text}");
        assert_eq!((run.undelivered, run.seq.gap_losses), (0, 0), "{text}");
        assert_eq!(run.seq.duplicates_or_reorders, 0, "{text}");
        assert_eq!(
            run.delivery_latency.len(),
            150 * 12,
            "the warm-up is not timed: {text}"
        );
        // Each newcomer is announced to the members already there; each got its welcome.
        assert_eq!(
            (run.notices.joins, run.notices.greetings),
            (66, 12),
            "{text}"
        );
        assert_eq!(exit_code, 0, "{text}");
        assert!(text.starts_with("scenario          WEB against"), "{text}");
    }

    #[test]
    fn a_run_with_the_default_flags_gets_no_rate_limited_answer_from_a_default_chatd() {
        let server = Server::bind(Config {
            web_port: Some(0),
            ..Config::for_tests()
        })
        .unwrap();
        let limit = Config::for_tests().web_messages_per_s_max;
        assert_eq!(
            limit,
            Config::default().web_messages_per_s_max,
            "chatd's default limit"
        );
        let port = server
            .local_addr(ProtocolKind::Web)
            .unwrap()
            .port()
            .to_string();
        let shortened = ["--duration", "1s", "--warmup", "200ms", "--drain", "2s"];
        let cfg = super::rate_per_user::web_config(&[&["--port", &port], &shortened[..]].concat());
        let handle = server.handle();
        let server_thread = std::thread::spawn(move || server.run());
        let outcome = run_alone::<Web>(&cfg);
        handle.shutdown();
        server_thread.join().unwrap().unwrap();
        let run = outcome.unwrap_or_else(|e| panic!("{e:?}"));
        let text = Web::report(&cfg, 1, false, &run).to_text();
        assert_eq!(run.clients_joined, 100, "{text}");
        assert_eq!(run.ran.errors.total(), 0, "{text}");
        assert!(!text.contains("rate-limited"), "{text}");
        assert_eq!((run.undelivered, run.seq.gap_losses), (0, 0), "{text}");
        assert_eq!(run.ran.sends.sent, 120, "100/s over 1.2 s: {text}");
    }

    #[test]
    fn messages_beyond_chatds_rate_limit_are_errors_and_losses_with_a_note() {
        // 50 messages a second per sender, chatd's default allows 20.
        let (run, text, exit_code) = run(20, 2, 100);
        assert!(run.ran.errors.protocol > 0, "{text}");
        assert!(
            text.contains(r#"the server answered error "rate-limited""#),
            "{text}"
        );
        assert!(text.contains("--web-messages-per-s-max"), "{text}");
        assert!(run.undelivered + run.seq.gap_losses > 0, "{text}");
        assert_eq!(exit_code, 1, "{text}");
    }
}
