//! OCM's sign-in for `loadgen churn` (TCRP): a join of a room nobody creates, answered 400 and
//! closed by the server (so churn leaves no room behind). The answer is checked whole at the
//! close.

use crate::churn::{SignIn, Stage, Step};

pub static SIGN_IN: SignIn = SignIn {
    hello: |name| (join_missing(name), Stage::Answer),
    answer,
    frame: join_missing,
};

fn answer(_name: &str, stage: Stage, input: &[u8]) -> Step {
    match stage {
        // RoomNameSize, operation 2 echoed, state 0, then the size and a 400 JSON.
        Stage::Answer if input.len() < 3 => Step::Wait,
        Stage::Answer if input[1..3] != [2, 0] => Step::Unexpected,
        Stage::Answer => Step::Then(Stage::ServerClose),
        Stage::ServerClose => Step::Wait,
        _ => Step::Stray,
    }
}

/// A join (operation 2) of a room nobody creates.
fn join_missing(name: &str) -> Vec<u8> {
    const ROOM: &[u8] = b"churn-no-such-room";
    let payload = format!("{{\"user_name\": \"{name}\", \"user_address\": [\"127.0.0.1\", 9]}}");
    let mut request = vec![ROOM.len() as u8, 2, 0];
    request.extend_from_slice(&[0u8; 21]);
    request.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    request.extend_from_slice(ROOM);
    request.extend_from_slice(payload.as_bytes());
    request
}
