//! BIN24's sign-in for `loadgen churn`: a message to oneself, which comes back once the name is
//! registered; it is answered, and the answer comes back too (so nothing is left unanswered, and
//! nothing goes to the store).

use crate::churn::{check_prefix, SignIn, Stage, Step};

pub static SIGN_IN: SignIn = SignIn {
    hello: |name| (frame(0, 0, name, name, b"churn"), Stage::Answer),
    answer,
    frame: |name| frame(0, 1, name, name, b"never finished"),
};

fn answer(name: &str, stage: Stage, input: &[u8]) -> Step {
    match stage {
        Stage::Answer => {
            let echo = frame(0, 0, name, name, b"churn");
            check_prefix(input, &echo).step(|| Step::Reply {
                read: echo.len(),
                out: frame(1, 0, name, name, b"200"),
                then: Stage::AnswerEcho,
            })
        }
        Stage::AnswerEcho => {
            check_prefix(input, &frame(1, 0, name, name, b"200")).step(|| Step::SignedIn)
        }
        _ => Step::Stray,
    }
}

/// len (LE u16, header included), type, messageID (LE u32), SRC, DST, body.
pub fn frame(kind: u16, id: u32, src: &str, dst: &str, body: &[u8]) -> Vec<u8> {
    let len = (24 + body.len()) as u16;
    let mut frame = Vec::with_capacity(usize::from(len));
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&kind.to_le_bytes());
    frame.extend_from_slice(&id.to_le_bytes());
    for name in [src, dst] {
        let mut field = [0u8; 8];
        let bytes = name.as_bytes();
        let n = bytes.len().min(8);
        field[..n].copy_from_slice(&bytes[..n]);
        frame.extend_from_slice(&field);
    }
    frame.extend_from_slice(body);
    frame
}
