//! The client side of OCM, without I/O: names, the TCRP request and the judgement of its answer,
//! the chat and exit datagrams, what a received text is, and who must see which leave text.
//! Framing and JSON are the library's (`switchboard::protocol::ocm::{codec, json}`).

use std::net::SocketAddr;

use bytes::Bytes;
use switchboard::protocol::ocm::codec::{
    self, TcrpAnswer, MESSAGE_ACCEPTED, MESSAGE_DONE, OPERATION_CREATE, OPERATION_JOIN, STATE_ACK,
    STATE_DONE, STATE_REQUEST, STATUS_ACCEPTED, STATUS_DONE,
};
use switchboard::protocol::ocm::json;

/// The token the server hands out: 64 hex characters.
pub const TOKEN_HEX_LEN: usize = 64;
/// What separates the sender's name from the message in a relayed chat text.
const NAME_SEPARATOR: &[u8] = b": ";

/// Room `r` of a run: the run id keeps rooms a previous run left open (its hosts never left)
/// from colliding with this run's. 16 ASCII bytes.
pub fn room_name(run_id: u32, r: usize) -> String {
    format!("lg{run_id:08x}-{:05}", r + 1)
}

/// Member `u` of a run (`room * members + k`; k = 0 is the room's host): `lg00001`, ...
pub fn member_name(u: usize) -> String {
    format!("lg{:05}", u + 1)
}

/// The TCRP operation of a member: the host creates its room, the guests join it.
pub fn operation(is_host: bool) -> u8 {
    if is_host {
        OPERATION_CREATE
    } else {
        OPERATION_JOIN
    }
}

/// A TCRP request as the original client writes it: header, room name, then the JSON naming
/// the member and the UDP address it will chat from.
pub fn request(operation: u8, room: &str, name: &str, udp: SocketAddr) -> Bytes {
    let payload = json::encode_request(name, udp);
    // Room names are 16 bytes (`room_name`): always within RoomNameSize.
    codec::encode_request(operation, STATE_REQUEST, room.as_bytes(), &payload).unwrap_or_default()
}

/// A TCRP answer, judged against the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// State 1, status 200: the document's acknowledgement (only sent when the server is
    /// configured to); the real answer follows on the same connection.
    Acknowledged,
    /// State 2, status 202, the contract's message, a 64-hex token, in `json.dumps` form.
    Granted(Bytes),
    /// Anything else, in words.
    Refused(String),
}

/// Judges the answer to `operation` on `room`.
pub fn judge_answer(answer: &TcrpAnswer, operation: u8, room: &str) -> Answer {
    let refuse = |why: String| Answer::Refused(why);
    let Ok(text) = std::str::from_utf8(&answer.json) else {
        return refuse(format!("state {} answer body is not UTF-8", answer.state));
    };
    let parsed = match json::parse_answer(text) {
        Ok(parsed) => parsed,
        Err(e) => return refuse(format!("state {} answer: {e}: {text:?}", answer.state)),
    };
    if answer.state != STATE_DONE && answer.state != STATE_ACK {
        return refuse(format!(
            "state {} status {}: {}",
            answer.state, parsed.status, parsed.message
        ));
    }
    let room_chars = room.chars().count();
    if answer.operation != operation || usize::from(answer.room_chars) != room_chars {
        return refuse(format!(
            "answer header says operation {} and a {}-character room (want {operation} and \
             {room_chars})",
            answer.operation, answer.room_chars
        ));
    }
    if answer.state == STATE_ACK {
        let canonical = json::encode_answer(STATUS_ACCEPTED, MESSAGE_ACCEPTED, None);
        return if answer.json[..] == canonical[..] {
            Answer::Acknowledged
        } else {
            refuse(format!("state 1 answer is not the contract's: {text:?}"))
        };
    }
    let token = match parsed.token.as_deref() {
        Some(token) if is_token(token) => token,
        Some(token) => return refuse(format!("token {token:?} is not 64 hex characters")),
        None => return refuse(format!("state 2 answer without a token: {text:?}")),
    };
    if parsed.status != i64::from(STATUS_DONE) || parsed.message != MESSAGE_DONE {
        return refuse(format!(
            "state 2 with status {} and message {:?}",
            parsed.status, parsed.message
        ));
    }
    // Exactly what json.dumps writes (separators, \u escapes, key order).
    let canonical = json::encode_answer(STATUS_DONE, MESSAGE_DONE, Some(token));
    if answer.json[..] != canonical[..] {
        return refuse(format!("state 2 answer not in json.dumps form: {text:?}"));
    }
    Answer::Granted(Bytes::copy_from_slice(token.as_bytes()))
}

fn is_token(token: &str) -> bool {
    token.len() == TOKEN_HEX_LEN && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A datagram carrying `message` to `room` with `token`. `None` if it would not fit a datagram
/// (the arguments are checked so that it always does).
pub fn datagram(room: &str, token: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    codec::encode_datagram(room.as_bytes(), token, message).ok()
}

/// The largest message a member of this run can send: the datagram must stay within the
/// client limit, and the relayed `<name>: <message>` within the server's.
pub fn message_bytes_max(room_bytes: usize, name_bytes: usize) -> usize {
    let by_datagram =
        codec::DATAGRAM_BYTES_MAX - codec::DATAGRAM_HEADER_BYTES - room_bytes - TOKEN_HEX_LEN;
    let by_text = codec::TEXT_BYTES_MAX - name_bytes - NAME_SEPARATOR.len();
    by_datagram.min(by_text)
}

/// A relayed chat text split into the sender's name and the message, if it has the shape.
pub fn split_chat(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = text
        .windows(NAME_SEPARATOR.len())
        .position(|w| w == NAME_SEPARATOR)?;
    Some((&text[..at], &text[at + NAME_SEPARATOR.len()..]))
}

/// One leave text a member must receive in the exit phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedLeave {
    /// The member that left (its `exit` sent at its intended time).
    pub leaver: usize,
    pub text: Bytes,
    pub received: bool,
}

/// Who sends `exit`, in order, and who must see which leave text, for one room whose members
/// `joined` (the host first: guests join only once the host created the room).
///
/// Every guest but the last leaves first, in order; then the host leaves, and the last guest,
/// still in the room, is the one who sees the host's closing text (had every guest left
/// first, the host's text would go to nobody and could not be checked). The last guest never
/// sends `exit`: the room is gone by then.
///
/// Returns the leavers in order, and for each joined member the texts it must receive.
pub fn exit_plan(joined: &[usize], names: &[String], room: &str) -> ExitPlan {
    let mut plan = ExitPlan::default();
    let Some((&host, guests)) = joined.split_first() else {
        return plan;
    };
    let (witness, leaving) = match guests.split_last() {
        Some((&last, others)) => (Some(last), others),
        None => (None, &[][..]),
    };
    for (i, &guest) in leaving.iter().enumerate() {
        plan.leavers.push(guest);
        let text = Bytes::from(codec::leave_text(&names[guest], room));
        let still_in = std::iter::once(host)
            .chain(leaving[i + 1..].iter().copied())
            .chain(witness);
        for receiver in still_in {
            plan.expected.push((
                receiver,
                ExpectedLeave {
                    leaver: guest,
                    text: text.clone(),
                    received: false,
                },
            ));
        }
    }
    plan.leavers.push(host);
    if let Some(witness) = witness {
        plan.expected.push((
            witness,
            ExpectedLeave {
                leaver: host,
                text: Bytes::from(codec::host_leave_text(&names[host], room)),
                received: false,
            },
        ));
    }
    plan
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitPlan {
    /// Members that send `exit`, in order (guests, then the host last).
    pub leavers: Vec<usize>,
    /// (receiver, what it must receive).
    pub expected: Vec<(usize, ExpectedLeave)>,
}

/// What a leave text that arrived at a member means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaveMatch {
    /// One of its expected texts, the first time (index into its list).
    Expected(usize),
    /// One of its expected texts, again.
    Again,
    /// Not a text it should get.
    Unexpected,
}

/// Matches `text` against the member's expected leave texts and marks it received.
pub fn match_leave(expected: &mut [ExpectedLeave], text: &[u8]) -> LeaveMatch {
    let mut seen = false;
    for (i, leave) in expected.iter_mut().enumerate() {
        if leave.text[..] == *text {
            if !leave.received {
                leave.received = true;
                return LeaveMatch::Expected(i);
            }
            seen = true;
        }
    }
    if seen {
        LeaveMatch::Again
    } else {
        LeaveMatch::Unexpected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// Test vectors from the contract (tests/vectors/ocm-tcrp-*.tsv), whole messages in hex.
    const SUCCESS_CREATE: &str = "05010200000000000000000000000000000000000000000000000000000000b97b22737461747573223a203230322c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75356238635c75346538365c75333035375c75333037655c75333035375c75333035665c7533303032222c2022746f6b656e223a202261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162227d";
    const EXISTS: &str = "05010000000000000000000000000000000000000000000000000000000000677b22737461747573223a203430302c20226d657373616765223a20225c75393065385c7535633462206c6f626279205c75333036665c75333035395c75333036375c75333036625c75356235385c75353732385c75333035375c75333037655c7533303539227d";
    const MISSING: &str = "070200000000000000000000000000000000000000000000000000000000005d7b22737461747573223a203430302c20226d657373616765223a20225c75393065385c7535633462206e6f7768657265205c75333036665c75356235385c75353732385c75333035375c75333037655c75333035625c7533303933227d";
    const MALFORMED: &str = "01010300000000000000000000000000000000000000000000000000000000c87b22737461747573223a203530302c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75356238635c75346538365c75333036375c75333034645c75333037655c75333035625c75333039335c75333036375c75333035375c75333035665c75333030325c6e5c75353136355c75353239625c75333035375c75373666345c75333035375c75333036365c75333034665c75333036305c75333035355c75333034345c7533303032227d";
    const ACK: &str = "050101000000000000000000000000000000000000000000000000000000006c7b22737461747573223a203230302c20226d657373616765223a20225c75333065615c75333061665c75333061385c75333062395c75333063385c75333039325c75353364375c75373430365c75333035375c75333037655c75333035375c75333035665c7533303032227d";
    const CREATE_REQUEST: &str = "050100000000000000000000000000000000000000000000000000000000003c6c6f6262797b22757365725f6e616d65223a2022616c696365222c2022757365725f61646472657373223a205b223132372e302e302e31222c2034303030315d7d";

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn answer(hex: &str) -> TcrpAnswer {
        let mut buf = BytesMut::from(&unhex(hex)[..]);
        let answer = codec::decode_answer(&mut buf, 1 << 16).unwrap().unwrap();
        assert!(buf.is_empty());
        answer
    }

    fn granted(state: u8, operation: u8, room_chars: u8, json: &[u8]) -> TcrpAnswer {
        let mut buf = BytesMut::from(&codec::encode_answer(room_chars, operation, state, json)[..]);
        codec::decode_answer(&mut buf, 1 << 16).unwrap().unwrap()
    }

    #[test]
    fn names_and_sizes() {
        assert_eq!(room_name(0xdead_beef, 0), "lgdeadbeef-00001");
        assert_eq!(room_name(1, 9_999), "lg00000001-10000");
        assert_eq!(member_name(0), "lg00001");
        assert_eq!(member_name(9_999), "lg10000");
        // 4096 - 2 - 16 - 64 by the datagram; 4094 - 7 - 2 by the relayed text.
        assert_eq!(message_bytes_max(16, 7), 4_014);
        assert_eq!(message_bytes_max(0, 200), 3_892);
        assert_eq!(operation(true), OPERATION_CREATE);
        assert_eq!(operation(false), OPERATION_JOIN);
    }

    #[test]
    fn the_request_is_the_original_clients() {
        let udp: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(
            &request(OPERATION_CREATE, "lobby", "alice", udp)[..],
            &unhex(CREATE_REQUEST)[..]
        );
    }

    #[test]
    fn the_contracts_success_answer_is_granted() {
        let token = Bytes::from("ab".repeat(32));
        assert_eq!(
            judge_answer(&answer(SUCCESS_CREATE), OPERATION_CREATE, "lobby"),
            Answer::Granted(token.clone())
        );
        // The same answer to a join, or for a room of another length, is a breach.
        assert!(matches!(
            judge_answer(&answer(SUCCESS_CREATE), OPERATION_JOIN, "lobby"),
            Answer::Refused(_)
        ));
        assert!(matches!(
            judge_answer(&answer(SUCCESS_CREATE), OPERATION_CREATE, "lobby2"),
            Answer::Refused(_)
        ));
        // RoomNameSize counts characters: a 3-character Japanese room is 3, not 9.
        let json = json::encode_answer(202, MESSAGE_DONE, Some(&"0f".repeat(32)));
        assert!(matches!(
            judge_answer(&granted(2, 2, 3, &json), OPERATION_JOIN, "部屋一"),
            Answer::Granted(_)
        ));
        assert!(matches!(
            judge_answer(&granted(2, 2, 9, &json), OPERATION_JOIN, "部屋一"),
            Answer::Refused(_)
        ));
    }

    #[test]
    fn refusals_and_contract_breaches_are_refused() {
        for (hex, operation, room, says) in [
            (EXISTS, OPERATION_CREATE, "lobby", "status 400"),
            (MISSING, OPERATION_JOIN, "nowhere", "status 400"),
            (MALFORMED, OPERATION_CREATE, "x", "state 3 status 500"),
        ] {
            match judge_answer(&answer(hex), operation, room) {
                Answer::Refused(why) => assert!(why.contains(says), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        let good_token = "0123456789abcdef".repeat(4);
        for (state, json) in [
            // short token, non-hex token, no token
            (2, json::encode_answer(202, MESSAGE_DONE, Some("abcd"))),
            (
                2,
                json::encode_answer(202, MESSAGE_DONE, Some(&"zz".repeat(32))),
            ),
            (2, json::encode_answer(202, MESSAGE_DONE, None)),
            // wrong status or message with state 2
            (2, json::encode_answer(200, MESSAGE_DONE, Some(&good_token))),
            (2, json::encode_answer(202, "done", Some(&good_token))),
            // state 0 with a token is still a refusal
            (0, json::encode_answer(202, MESSAGE_DONE, Some(&good_token))),
            // not json.dumps's form (compact separators, raw UTF-8)
            (
                2,
                format!(
                    "{{\"status\":202,\"message\":\"{MESSAGE_DONE}\",\"token\":\"{good_token}\"}}"
                )
                .into_bytes(),
            ),
            // not JSON
            (2, b"{status: 202".to_vec()),
        ] {
            let verdict = judge_answer(&granted(state, 1, 5, &json), OPERATION_CREATE, "lobby");
            assert!(
                matches!(verdict, Answer::Refused(_)),
                "{}: {verdict:?}",
                String::from_utf8_lossy(&json)
            );
        }
    }

    #[test]
    fn a_state_1_acknowledgement_is_recognised() {
        assert_eq!(
            judge_answer(&answer(ACK), OPERATION_CREATE, "lobby"),
            Answer::Acknowledged
        );
        let odd = json::encode_answer(200, "ok", None);
        assert!(matches!(
            judge_answer(&granted(1, 1, 5, &odd), OPERATION_CREATE, "lobby"),
            Answer::Refused(_)
        ));
    }

    #[test]
    fn datagrams_and_chat_texts() {
        let token = "ab".repeat(32);
        let d = datagram("lobby", token.as_bytes(), b"hi").unwrap();
        assert_eq!(d[..2], [5, 64]);
        assert_eq!(&d[2..7], b"lobby");
        assert_eq!(&d[7..71], token.as_bytes());
        assert_eq!(&d[71..], b"hi");
        assert!(datagram("lobby", token.as_bytes(), &[b'x'; 4096]).is_none());
        assert_eq!(
            split_chat(b"lg00001: LGOC..: x"),
            Some((&b"lg00001"[..], &b"LGOC..: x"[..]))
        );
        assert_eq!(split_chat(b"lg00001:LGOC"), None);
        assert_eq!(split_chat(b": x"), Some((&b""[..], &b"x"[..])));
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(member_name).collect()
    }

    fn texts_for(plan: &ExitPlan, receiver: usize) -> Vec<(usize, String)> {
        plan.expected
            .iter()
            .filter(|(r, _)| *r == receiver)
            .map(|(_, e)| (e.leaver, String::from_utf8(e.text.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn exit_plan_guests_leave_then_the_host_and_the_last_guest_sees_it() {
        let names = names(4);
        let plan = exit_plan(&[0, 1, 2, 3], &names, "r");
        assert_eq!(
            plan.leavers,
            vec![1, 2, 0],
            "guests in order, the host last"
        );
        let left = |u: usize| (u, format!("{}がrから退出しました。", names[u]));
        let closed = (
            0,
            "lg00001がrから退出しました。\nホストが退出したため、チャットルーム:rを終了します。"
                .to_string(),
        );
        assert_eq!(texts_for(&plan, 0), vec![left(1), left(2)]);
        assert!(texts_for(&plan, 1).is_empty(), "gone before anyone else");
        assert_eq!(
            texts_for(&plan, 2),
            vec![left(1)],
            "still in when guest 1 left"
        );
        assert_eq!(texts_for(&plan, 3), vec![left(1), left(2), closed]);
        // Guest 2 was still in the room when guest 1 left.
        let plan_with_2_first = exit_plan(&[0, 2, 1, 3], &names, "r");
        assert_eq!(texts_for(&plan_with_2_first, 1), vec![left(2)]);
    }

    #[test]
    fn exit_plan_small_rooms() {
        let names = names(2);
        // Host and one guest: the guest stays, the host leaves, the guest sees it.
        let plan = exit_plan(&[0, 1], &names, "r");
        assert_eq!(plan.leavers, vec![0]);
        assert_eq!(plan.expected.len(), 1);
        assert_eq!(plan.expected[0].0, 1);
        // The host alone: it leaves, nobody to tell.
        let plan = exit_plan(&[0], &names, "r");
        assert_eq!(plan.leavers, vec![0]);
        assert!(plan.expected.is_empty());
        assert_eq!(exit_plan(&[], &names, "r"), ExitPlan::default());
    }

    #[test]
    fn leave_texts_are_matched_once() {
        let names = names(3);
        let mut plan = exit_plan(&[0, 1, 2], &names, "r");
        let mut mine: Vec<ExpectedLeave> = plan
            .expected
            .drain(..)
            .filter(|(r, _)| *r == 2)
            .map(|(_, e)| e)
            .collect();
        let host_text = mine[1].text.clone();
        assert_eq!(match_leave(&mut mine, &host_text), LeaveMatch::Expected(1));
        assert_eq!(match_leave(&mut mine, &host_text), LeaveMatch::Again);
        assert_eq!(
            match_leave(&mut mine, "lg00003がrから退出しました。".as_bytes()),
            LeaveMatch::Unexpected,
            "its own leave text"
        );
        let guest_text = mine[0].text.clone();
        assert_eq!(match_leave(&mut mine, &guest_text), LeaveMatch::Expected(0));
        assert!(mine.iter().all(|e| e.received));
    }
}
