//! CCM's sign-in for `loadgen churn`: Identity, answered by the Identity with the token.

use crate::churn::{find, SignIn, Stage, Step};

pub static SIGN_IN: SignIn = SignIn {
    hello: |name| {
        let identity = format!(
            "CCM\\1.0 Identity\nContent-Length: {}\n\n{name}",
            name.len()
        );
        (identity.into_bytes(), Stage::Answer)
    },
    answer,
    frame: |_| b"CCM\\1.0 Text\nAddressee: nobody\nContent-Length: 40\n\nhalf".to_vec(),
};

fn answer(_name: &str, stage: Stage, input: &[u8]) -> Step {
    if stage != Stage::Answer {
        return Step::Stray;
    }
    let Some(end) = find(input, b"\n\n") else {
        return Step::Wait;
    };
    if input[..end].starts_with(b"CCM\\1.0 Identity\nUser: ") {
        Step::SignedIn
    } else {
        Step::Unexpected
    }
}
