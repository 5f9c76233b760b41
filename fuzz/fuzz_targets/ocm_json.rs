//! OCM's JSON: the strict reader on any text, and the writer (CPython's `json.dumps`) on
//! any string.
//!
//! Invariants: the reader never panics, whatever the nesting; what it reads re-encodes to
//! JSON that reads back the same; any string written as an answer's message and token reads
//! back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ocm::json;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(request) = json::parse_request(&text) {
        let again = json::encode_request(&request.user_name, request.user_address);
        let again = std::str::from_utf8(&again).expect("the writer writes ASCII");
        assert_eq!(json::parse_request(again), Ok(request));
    }
    if let Ok(answer) = json::parse_answer(&text) {
        if let Ok(status) = u16::try_from(answer.status) {
            let again = json::encode_answer(status, &answer.message, answer.token.as_deref());
            let again = std::str::from_utf8(&again).expect("the writer writes ASCII");
            assert_eq!(json::parse_answer(again), Ok(answer));
        }
    }
    let written = json::encode_answer(202, &text, Some(&text));
    assert!(written.is_ascii());
    let read = json::parse_answer(std::str::from_utf8(&written).unwrap()).expect("our own JSON");
    assert_eq!(read.message, text);
    assert_eq!(read.token.as_deref(), Some(&*text));
});
