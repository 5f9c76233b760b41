//! MATOU's sign-in for `loadgen churn`: CONNECT_REQUEST, answered by CONNECT_RESPONSE 1.

use crate::churn::{check_prefix, SignIn, Stage, Step};

pub static SIGN_IN: SignIn = SignIn {
    hello: |name| {
        let mut packet = 1i32.to_be_bytes().to_vec();
        string(&mut packet, name);
        (packet, Stage::Answer)
    },
    answer,
    frame: |_| {
        let mut packet = 4i32.to_be_bytes().to_vec();
        string(&mut packet, "never finished");
        packet
    },
};

fn answer(_name: &str, stage: Stage, input: &[u8]) -> Step {
    if stage != Stage::Answer {
        return Step::Stray;
    }
    check_prefix(input, &[0, 0, 0, 2, 1]).step(|| Step::SignedIn)
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as i32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}
