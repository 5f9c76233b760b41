//! BIN24 messages that cross the switchboard to a CCM user, over real sockets: what the
//! sender's "200" promises, and the window it leaves (docs/PROTOCOLS.md, switchboard rule 4;
//! docs/RELIABILITY.md, "BIN24 custody").

// Tests may unwrap, expect and panic: a failed assumption is a failed test (Cargo.toml's
// [lints] deny them in the library and the binaries).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::bin24::Bin24;
use common::{ccm, wait_unread, TempDir, TestServer};
use switchboard::config::Config;
use switchboard::protocol::bin24::codec;

fn server(data: &TempDir) -> TestServer {
    TestServer::start(Config {
        bin24_port: Some(0),
        ccm_port: Some(0),
        admin_port: Some(0),
        data_dir: data.0.clone(),
        ..Config::for_tests()
    })
}

/// The documented window: "200" means the CCM user's TCP acknowledged the bytes (the contract
/// asks only that they were written), not that the program read them. A CCM client that lets
/// the message arrive, never reads it and resets loses it, and nothing is stored for it. CCM
/// has no answer frame, so the server cannot know better; a BIN24 recipient that answers has
/// no such window. Should this window be closed one day, this test fails and the docs change
/// with it.
#[test]
fn a_bin24_message_answered_200_is_lost_when_the_ccm_user_resets_with_it_unread() {
    let data = TempDir::new("bin24-ccm-window");
    let server = server(&data);
    let mut bob = Bin24::log_in(&server, "bob");
    let (cat, _) = ccm::identify(server.ccm.expect("CCM enabled"), "cat");
    server.wait_connections(2);

    let id = bob.send("cat", "are you there?");
    let delivered = "CCM\\1.0 Text\nSender: bob\nAddressee: cat\nMessage-Encoding: utf-8\n\
                     Content-Length: 14\n\nare you there?";
    // In cat's kernel, acknowledged by its TCP, read by nobody; bob hears "200" for it.
    wait_unread(&cat.stream, delivered.len());
    let answer = bob.recv();
    assert_eq!(
        (
            answer.frame_type,
            answer.message_id,
            &answer.src[..],
            &answer.body[..]
        ),
        (codec::TYPE_ANSWER, id, "cat", codec::ANSWER_DELIVERED)
    );
    let mut peek = vec![0u8; delivered.len()];
    cat.stream.peek(&mut peek).expect("peek");
    assert_eq!(String::from_utf8_lossy(&peek), delivered);

    // cat closes with the message unread: Linux sends a reset, and the message is gone.
    drop(cat);
    server.wait_connections(1);
    // A store request made at cat's close would be seen by this login's load (the store runs
    // requests in order), and its frame would come before the answer to the sync message.
    let mut cat_over_bin24 = Bin24::connect(server.bin24.expect("BIN24 enabled"), "cat");
    assert!(
        cat_over_bin24.register_and_wait().is_empty(),
        "no stored frame waits for the name"
    );
    assert_eq!(server.metric("chatd_store_frames"), Some(0.0));
    server.stop();
}
