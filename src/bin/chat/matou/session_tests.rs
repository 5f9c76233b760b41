use super::*;

use bytes::BytesMut;
use switchboard::protocol::matou::codec::decode_from_server;

/// A server packet as the client's reader would hand it over: encoded, then decoded.
fn packet(bytes: &[u8]) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode_from_server(&mut buf, &codec::Limits::default())
        .unwrap()
        .unwrap();
    assert!(buf.is_empty(), "one packet: {bytes:?}");
    packet
}

fn receive(session: &mut Session, bytes: &[u8]) -> Vec<Action> {
    let mut out = Vec::new();
    session.on_server(packet(bytes), &mut out);
    out
}

fn line(session: &mut Session, text: &str) -> Vec<Action> {
    let mut out = Vec::new();
    session.on_line(text.as_bytes(), &mut out);
    out
}

fn peer(session: &mut Session, id: LinkId, event: PeerEvent) -> Vec<Action> {
    let mut out = Vec::new();
    session.on_peer(id, event, &mut out);
    out
}

fn joined() -> Session {
    let mut s = Session::new("alice".into(), true);
    let out = receive(&mut s, &codec::connect_response(true));
    assert_eq!(out, [Action::Note("connected as alice".into())]);
    s
}

fn show(text: &str) -> Action {
    Action::Show(format!("{text}\n"))
}

fn send(bytes: Bytes) -> Action {
    Action::Send(bytes)
}

fn is_note(actions: &[Action], needle: &str) -> bool {
    matches!(actions, [Action::Note(n)] if n.contains(needle))
}

const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// alice asked bob, bob accepted, the link is open as Src; returns its id.
fn linked_as_src(s: &mut Session, peer_name: &str) -> LinkId {
    line(s, &format!("/private {peer_name}"));
    let out = receive(s, &codec::private_dst_address(peer_name.as_bytes(), &LOCAL));
    let [Action::Listen { id, .. }] = out[..] else {
        panic!("expected Listen, got {out:?}");
    };
    let mut out = Vec::new();
    s.on_listening(id, Ok((4000, 4001)), &mut out);
    out.clear();
    s.on_link_up(id, &mut out);
    id
}

#[test]
fn the_first_packet_is_the_name() {
    let s = Session::new("alice".into(), true);
    assert_eq!(&s.connect_request()[..], b"\0\0\0\x01\0\0\0\x05alice");
}

#[test]
fn commands_are_parsed() {
    assert_eq!(parse_command("hello all"), Ok(Command::Public("hello all")));
    assert_eq!(parse_command("//etc"), Ok(Command::Public("/etc")));
    assert_eq!(parse_command("/private bob"), Ok(Command::Private("bob")));
    assert_eq!(parse_command("/private bob  "), Ok(Command::Private("bob")));
    assert_eq!(parse_command("/accept bob"), Ok(Command::Accept("bob")));
    assert_eq!(parse_command("/close bob"), Ok(Command::Close("bob")));
    assert_eq!(
        parse_command("/msg bob hi there"),
        Ok(Command::Msg("bob", "hi there"))
    );
    assert_eq!(
        parse_command("/msg bob  two"),
        Ok(Command::Msg("bob", " two"))
    );
    assert_eq!(parse_command("/msg bob "), Ok(Command::Msg("bob", "")));
    assert_eq!(
        parse_command("/send bob my file.bin"),
        Ok(Command::Send("bob", "my file.bin"))
    );
    assert_eq!(parse_command("/quit"), Ok(Command::Quit));
    assert_eq!(parse_command("/help"), Ok(Command::Help));
    for (bad, why) in [
        ("/private", "usage: /private NAME"),
        ("/private bob carol", "usage: /private NAME"),
        ("/private b.b", "letters and digits"),
        ("/accept ../x", "letters and digits"),
        ("/msg bob", "usage: /msg NAME TEXT"),
        ("/msg b-b hi", "letters and digits"),
        ("/send bob", "usage: /send NAME PATH"),
        ("/send bob  ", "usage: /send NAME PATH"),
        ("/quit now", "unknown command /quit"),
        ("/who", "unknown command /who"),
        ("/\x1b[2J", "unknown command /\u{fffd}[2J"),
    ] {
        match parse_command(bad) {
            Err(problem) => assert!(problem.contains(why), "{bad:?}: {problem}"),
            Ok(command) => panic!("{bad:?} parsed as {command:?}"),
        }
    }
}

#[test]
fn names_and_messages_are_validated() {
    assert_eq!(name_problem("alice42"), None);
    assert_eq!(name_problem("Zoé"), None);
    assert_eq!(name_problem(&"a".repeat(32)), None);
    assert!(name_problem("").unwrap().contains("empty"));
    assert!(name_problem(&"a".repeat(33)).unwrap().contains("32 bytes"));
    for bad in ["a b", "a_b", "a/b", "a\nb", ".."] {
        assert!(name_problem(bad).unwrap().contains("letters"), "{bad:?}");
        assert!(
            own_name_problem(bad).unwrap().contains("letters"),
            "{bad:?}"
        );
    }
    // One's own name: ASCII only, each refusal in one line saying which rule.
    assert_eq!(own_name_problem("alice42"), None);
    assert!(own_name_problem("").unwrap().contains("empty"));
    assert!(own_name_problem(&"a".repeat(33))
        .unwrap()
        .contains("at most 32 bytes (this one has 33)"));
    assert_eq!(
        own_name_problem("Zoé").unwrap(),
        "a user name has only ASCII letters and digits (a-z, A-Z, 0-9), and `é` (U+00E9) is \
         not one"
    );
    // Cyrillic а, fullwidth ａ: look-alikes.
    assert!(own_name_problem("\u{430}lice").unwrap().contains("U+0430"));
    assert!(own_name_problem("\u{ff41}lice").unwrap().contains("U+FF41"));
    assert_eq!(
        name_problem("a\u{202e}b").unwrap(),
        "a user name has only letters and digits, and U+202E is not one"
    );
    assert!(!own_name_problem("a\nb").unwrap().contains('\n'));
    assert_eq!(message_problem(""), None);
    assert_eq!(message_problem(&"é".repeat(256)), None);
    assert!(message_problem(&"é".repeat(257))
        .unwrap()
        .contains("512 bytes"));
    for bad in ["a\tb", "a\rb", "\x1b[2J", "a\u{85}b"] {
        assert!(message_problem(bad).unwrap().contains("control"), "{bad:?}");
    }
}

#[test]
fn lines_before_the_answer_are_held_then_handled() {
    let mut s = Session::new("alice".into(), true);
    assert_eq!(line(&mut s, "early"), []);
    assert_eq!(line(&mut s, "/private bob"), []);
    let mut out = Vec::new();
    s.on_input_end(&mut out);
    assert_eq!(out, []);
    let out = receive(&mut s, &codec::connect_response(true));
    assert_eq!(
        out,
        [
            Action::Note("connected as alice".into()),
            send(codec::public_message(b"early")),
            send(codec::private_request(b"bob")),
            Action::Note("asked bob for a private link; waiting for bob to accept".into()),
            send(codec::public_sign_out()),
            Action::Quit,
        ]
    );
}

#[test]
fn a_refused_name_fails_saying_it_is_taken_in_one_line() {
    let mut s = Session::new("alice".into(), true);
    let out = receive(&mut s, &codec::connect_response(false));
    let [Action::Fail(problem)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(
        problem,
        "the server refused the name alice: it is taken (another user, of MATOU or of another \
         protocol, has it); run again with another --user"
    );
}

#[test]
fn public_lines_are_checked_then_sent() {
    let mut s = joined();
    assert_eq!(
        line(&mut s, "hello there"),
        [send(codec::public_message(b"hello there"))]
    );
    assert_eq!(
        line(&mut s, "caf\u{e9}"),
        [send(codec::public_message("caf\u{e9}".as_bytes()))]
    );
    assert_eq!(line(&mut s, "   "), []);
    assert!(is_note(
        &line(&mut s, &"x".repeat(513)),
        "at most 512 bytes"
    ));
    assert!(is_note(&line(&mut s, "a\tb"), "control characters"));
    // Not UTF-8: sent as UTF-8 all the same.
    let mut out = Vec::new();
    s.on_line(b"caf\xe9", &mut out);
    assert_eq!(out, [send(codec::public_message("caf\u{fffd}".as_bytes()))]);
    assert!(
        matches!(&line(&mut s, "/help")[..], [Action::Show(h)] if h.contains("/send bob PATH"))
    );
}

#[test]
fn server_notifications_are_shown() {
    let mut s = joined();
    assert_eq!(
        receive(&mut s, &codec::connect_notify(b"bob")),
        [show("* bob joined")]
    );
    assert_eq!(
        receive(&mut s, &codec::public_broadcast(b"bob", b"hi \x1b[2J")),
        [show("bob: hi \u{fffd}[2J")]
    );
    // As in every client: bidi controls and zero-width characters go, a tab stays.
    assert_eq!(
        receive(
            &mut s,
            &codec::public_broadcast("b\u{200b}ob".as_bytes(), "a\tb\u{202e}c".as_bytes())
        ),
        [show("b\u{fffd}ob: a\tb\u{fffd}c")]
    );
    assert_eq!(
        receive(&mut s, &codec::sign_out_notify(b"bob")),
        [show("* bob left")]
    );
    assert_eq!(
        receive(
            &mut s,
            &codec::error(ErrorCode::UnknownUser, b"no user zed")
        ),
        [Action::Note("error 4 (unknown user): no user zed".into())]
    );
    assert_eq!(
        receive(&mut s, &codec::error(ErrorCode::UnknownUser, b""))[..],
        [Action::Note("error 4 (unknown user)".into())]
    );
    let mut odd = codec::error(ErrorCode::UnknownUser, b"x\ny").to_vec();
    odd[4..8].copy_from_slice(&99i32.to_be_bytes());
    assert_eq!(
        receive(&mut s, &odd),
        [Action::Note("error 99: x\u{fffd}y".into())]
    );
    assert!(is_note(
        &receive(&mut s, &codec::connect_response(true)),
        "second CONNECT_RESPONSE"
    ));
}

#[test]
fn without_a_terminal_text_is_shown_as_is() {
    let mut s = Session::new("alice".into(), false);
    receive(&mut s, &codec::connect_response(true));
    assert_eq!(
        receive(&mut s, &codec::public_broadcast(b"bob", b"a\x07b")),
        [show("bob: a\x07b")]
    );
}

#[test]
fn src_side_of_a_private_link() {
    let mut s = joined();
    assert_eq!(
        line(&mut s, "/private bob"),
        [
            send(codec::private_request(b"bob")),
            Action::Note("asked bob for a private link; waiting for bob to accept".into()),
        ]
    );
    let out = receive(&mut s, &codec::private_dst_address(b"bob", &LOCAL));
    assert_eq!(
        out,
        [Action::Listen {
            id: 1,
            peer: "bob".into(),
            peer_ip: IpAddr::from(LOCAL),
        }]
    );
    let mut out = Vec::new();
    s.on_listening(1, Ok((4000, 4001)), &mut out);
    assert_eq!(out, [send(codec::private_src_ports(b"bob", 4000, 4001))]);

    // Not open yet.
    assert!(is_note(&line(&mut s, "/msg bob hi"), "not open yet"));
    let mut out = Vec::new();
    s.on_link_up(1, &mut out);
    assert!(matches!(&out[..], [Action::Show(l)] if l.starts_with("* private link with bob open")));

    assert_eq!(
        line(&mut s, "/msg bob hi there"),
        [Action::PeerSend {
            id: 1,
            packet: codec::private_message(b"hi there"),
        }]
    );
    assert!(is_note(&line(&mut s, "/msg bob a\tb"), "control"));
    assert!(is_note(&line(&mut s, "/msg carol hi"), "/private carol"));
    assert_eq!(
        peer(&mut s, 1, PeerEvent::Message(Bytes::from_static(b"yo\x1b"))),
        [show("bob (private): yo\u{fffd}")]
    );
    assert!(is_note(
        &line(&mut s, "/private bob"),
        "already a private link"
    ));

    assert_eq!(
        peer(&mut s, 1, PeerEvent::SignOut),
        [Action::CloseLink(1), show("* bob closed the private link")]
    );
    // Late events of the closed link are ignored.
    assert_eq!(peer(&mut s, 1, PeerEvent::Closed), []);
    assert!(is_note(
        &line(&mut s, "/msg bob hi"),
        "no private link with bob"
    ));
}

#[test]
fn dst_side_of_a_private_link() {
    let mut s = joined();
    assert_eq!(
        receive(&mut s, &codec::private_request_notify(b"carol")),
        [show("* carol asks for a private link: /accept carol")]
    );
    assert!(is_note(&line(&mut s, "/accept dave"), "has not asked"));
    assert_eq!(
        line(&mut s, "/accept carol"),
        [send(codec::private_accept(b"carol"))]
    );
    let v6 = std::net::Ipv6Addr::LOCALHOST;
    let out = receive(
        &mut s,
        &codec::private_src_address(b"carol", &v6.octets(), 5000, 5001),
    );
    assert_eq!(
        out,
        [Action::Connect {
            id: 1,
            peer: "carol".into(),
            message: "[::1]:5000".parse().unwrap(),
            file: "[::1]:5001".parse().unwrap(),
        }]
    );
    let mut out = Vec::new();
    s.on_link_up(1, &mut out);
    assert!(matches!(&out[..], [Action::Show(_)]));
    assert_eq!(
        line(&mut s, "/close carol"),
        [
            Action::PeerSend {
                id: 1,
                packet: codec::private_sign_out(),
            },
            Action::CloseLink(1),
            show("* private link with carol closed"),
        ]
    );
}

#[test]
fn addresses_nobody_asked_for_are_ignored() {
    let mut s = joined();
    assert!(is_note(
        &receive(&mut s, &codec::private_dst_address(b"bob", &LOCAL)),
        "no private link was asked"
    ));
    assert!(is_note(
        &receive(&mut s, &codec::private_src_address(b"bob", &LOCAL, 1, 2)),
        "was accepted"
    ));
    // A name that is not a valid user name never becomes a command or a file name.
    assert!(is_note(
        &receive(&mut s, &codec::private_request_notify(b"../x")),
        "not a valid user name"
    ));
    assert!(is_note(&line(&mut s, "/accept x"), "has not asked"));
    // Port 0 is not a port.
    receive(&mut s, &codec::private_request_notify(b"bob"));
    line(&mut s, "/accept bob");
    assert!(is_note(
        &receive(&mut s, &codec::private_src_address(b"bob", &LOCAL, 0, 2)),
        "bad address or port"
    ));
}

#[test]
fn a_link_that_fails_to_open_is_forgotten() {
    let mut s = joined();
    line(&mut s, "/private bob");
    receive(&mut s, &codec::private_dst_address(b"bob", &LOCAL));
    let mut out = Vec::new();
    s.on_link_failed(1, "timed out", &mut out);
    assert_eq!(
        out,
        [Action::Note(
            "cannot open the private link with bob: timed out".into()
        )]
    );
    // A link that comes up after it was closed is closed again.
    let mut out = Vec::new();
    s.on_link_up(1, &mut out);
    assert_eq!(out, [Action::CloseLink(1)]);
    // And a new request makes a new link, with a new id.
    line(&mut s, "/private bob");
    let out = receive(&mut s, &codec::private_dst_address(b"bob", &LOCAL));
    assert!(matches!(out[..], [Action::Listen { id: 2, .. }]));
}

#[test]
fn several_links_at_once() {
    let mut s = joined();
    let bob = linked_as_src(&mut s, "bob");
    let carol = linked_as_src(&mut s, "carol");
    assert_ne!(bob, carol);
    assert_eq!(
        line(&mut s, "/msg carol hi"),
        [Action::PeerSend {
            id: carol,
            packet: codec::private_message(b"hi"),
        }]
    );
    assert_eq!(
        peer(&mut s, bob, PeerEvent::Message(Bytes::from_static(b"x"))),
        [show("bob (private): x")]
    );
    // bad input from bob closes bob's link only
    let out = peer(
        &mut s,
        bob,
        PeerEvent::Failed("malformed packet from bob".into()),
    );
    assert_eq!(out[0], Action::CloseLink(bob));
    assert!(is_note(&out[1..], "private link with bob closed"));
    assert!(matches!(
        &line(&mut s, "/msg carol still")[..],
        [Action::PeerSend { .. }]
    ));
}

#[test]
fn files_are_sent_and_received() {
    let mut s = joined();
    let id = linked_as_src(&mut s, "bob");
    assert_eq!(
        line(&mut s, "/send bob a b.bin"),
        [Action::SendFile {
            id,
            path: PathBuf::from("a b.bin"),
        }]
    );
    let out = line(&mut s, "/send bob c.bin");
    assert!(matches!(&out[0], Action::Note(n) if n.contains("queued")));
    assert!(is_note(&line(&mut s, "/send carol x"), "no private link"));
    let sent = |path: &str| PeerEvent::SendEnded {
        size: 3,
        path: path.into(),
        result: Ok(()),
    };
    assert_eq!(
        peer(
            &mut s,
            id,
            PeerEvent::SendStarted {
                size: 3,
                path: "a b.bin".into()
            }
        ),
        [show("* sending 3 bytes to bob: a b.bin")]
    );
    assert_eq!(
        peer(&mut s, id, sent("a b.bin")),
        [show("* sent 3 bytes to bob: a b.bin")]
    );
    let out = peer(
        &mut s,
        id,
        PeerEvent::SendRefused {
            path: "c.bin".into(),
            reason: "No such file".into(),
        },
    );
    assert!(is_note(&out, "c.bin: No such file"));

    assert_eq!(
        peer(&mut s, id, PeerEvent::FileIncoming(1024)),
        [show("* bob is sending a file of 1024 bytes")]
    );
    assert_eq!(
        peer(
            &mut s,
            id,
            PeerEvent::FileReceived {
                size: 1024,
                path: "downloads/from-bob-1.bin".into(),
            }
        ),
        [show(
            "* received 1024 bytes from bob: downloads/from-bob-1.bin"
        )]
    );
    let out = peer(
        &mut s,
        id,
        PeerEvent::FileFailed {
            reason: "file from bob incomplete".into(),
            fatal: false,
        },
    );
    assert!(is_note(&out, "incomplete"));
    // An oversized announcement closes the link.
    let out = peer(
        &mut s,
        id,
        PeerEvent::FileFailed {
            reason: "bob announced a file of 9 bytes, more than --max-file-bytes (8)".into(),
            fatal: true,
        },
    );
    assert_eq!(out[0], Action::CloseLink(id));
    assert!(is_note(&out[1..], "--max-file-bytes"));
}

#[test]
fn a_failed_send_closes_the_link() {
    let mut s = joined();
    let id = linked_as_src(&mut s, "bob");
    line(&mut s, "/send bob f");
    let out = peer(
        &mut s,
        id,
        PeerEvent::SendEnded {
            size: 9,
            path: "f".into(),
            result: Err("broken pipe".into()),
        },
    );
    assert_eq!(out[0], Action::CloseLink(id));
    assert!(is_note(&out[1..], "sending f to bob failed: broken pipe"));
}

#[test]
fn quit_signs_out_of_every_link_then_the_server() {
    let mut s = joined();
    let bob = linked_as_src(&mut s, "bob");
    line(&mut s, "/private carol");
    receive(&mut s, &codec::private_dst_address(b"carol", &LOCAL));
    let carol = 2;
    line(&mut s, "/send bob f");
    let out = line(&mut s, "/quit");
    assert_eq!(
        out,
        [
            Action::PeerSend {
                id: bob,
                packet: codec::private_sign_out(),
            },
            Action::CloseLink(bob),
            Action::Note("1 file(s) to bob not sent: the private link closed".into()),
            // Still being set up: nothing to sign out of.
            Action::CloseLink(carol),
            send(codec::public_sign_out()),
            Action::Quit,
        ]
    );
}

#[test]
fn end_of_input_waits_for_files_being_sent() {
    let mut s = joined();
    let id = linked_as_src(&mut s, "bob");
    line(&mut s, "/send bob f");
    let mut out = Vec::new();
    s.on_input_end(&mut out);
    assert!(is_note(
        &out,
        "leaving once the 1 file(s) being sent are done"
    ));
    let out = peer(
        &mut s,
        id,
        PeerEvent::SendEnded {
            size: 1,
            path: "f".into(),
            result: Ok(()),
        },
    );
    assert_eq!(
        out,
        [
            show("* sent 1 bytes to bob: f"),
            Action::PeerSend {
                id,
                packet: codec::private_sign_out(),
            },
            Action::CloseLink(id),
            send(codec::public_sign_out()),
            Action::Quit,
        ]
    );
}

#[test]
fn a_signal_leaves_at_once() {
    let mut s = joined();
    let id = linked_as_src(&mut s, "bob");
    line(&mut s, "/send bob f");
    let mut out = Vec::new();
    s.on_signal(&mut out);
    assert_eq!(out.last(), Some(&Action::Quit));
    assert!(out.contains(&Action::CloseLink(id)));
    // Before the name is accepted there is nothing to sign out of.
    let mut s = Session::new("alice".into(), true);
    let mut out = Vec::new();
    s.on_signal(&mut out);
    assert_eq!(out, [Action::Quit]);
}

#[test]
fn leaving_drops_pending_requests_of_who_left() {
    let mut s = joined();
    receive(&mut s, &codec::private_request_notify(b"bob"));
    receive(&mut s, &codec::sign_out_notify(b"bob"));
    assert!(is_note(&line(&mut s, "/accept bob"), "has not asked"));
}

#[test]
fn late_file_news_of_a_closed_link_is_still_shown() {
    let mut s = joined();
    let id = linked_as_src(&mut s, "bob");
    peer(&mut s, id, PeerEvent::Closed);
    let out = peer(
        &mut s,
        id,
        PeerEvent::FileFailed {
            reason: "file from bob incomplete".into(),
            fatal: false,
        },
    );
    assert_eq!(out, [Action::Note("file from bob incomplete".into())]);
    let out = peer(
        &mut s,
        id,
        PeerEvent::FileReceived {
            size: 1,
            path: "d/from-bob-1.bin".into(),
        },
    );
    assert_eq!(out, [show("* received 1 bytes from bob: d/from-bob-1.bin")]);
    // Nothing else of it.
    assert_eq!(
        peer(&mut s, id, PeerEvent::Message(Bytes::from_static(b"x"))),
        []
    );
    assert_eq!(peer(&mut s, 99, PeerEvent::FileIncoming(1)), []);
}

#[test]
fn a_failed_send_awaited_by_end_of_input_is_reported_before_leaving() {
    let mut s = joined();
    let id = linked_as_src(&mut s, "bob");
    line(&mut s, "/send bob f");
    let mut out = Vec::new();
    s.on_input_end(&mut out);
    let out = peer(
        &mut s,
        id,
        PeerEvent::SendEnded {
            size: 9,
            path: "f".into(),
            result: Err("broken pipe".into()),
        },
    );
    assert_eq!(out[0], Action::CloseLink(id));
    assert!(matches!(&out[1], Action::Note(n) if n.contains("broken pipe")));
    assert_eq!(out[2..], [send(codec::public_sign_out()), Action::Quit]);
}
