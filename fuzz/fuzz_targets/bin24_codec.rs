//! BIN24 frames cut from a stream split anywhere.
//!
//! Invariants (beyond the decoder contract in `drive_decoder`): a frame is 24..=1024 bytes
//! and its len field says so; `Frame::from_bytes` accepts it back; it re-encodes to the same
//! bytes when its SRC and DST fields are in the normal form the encoder writes (zeroed after
//! the first NUL: the decoder normalises names, by contract, so other padding is not kept).
#![no_main]

use fuzz_support::{drive_decoder, split_reads};
use libfuzzer_sys::fuzz_target;
use switchboard::protocol::bin24::codec::{self, Frame};

fuzz_target!(|data: &[u8]| {
    drive_decoder(&split_reads(data), codec::decode, |frame, raw| {
        assert_eq!(frame.as_bytes(), raw);
        assert!((codec::HEADER_BYTES..=codec::FRAME_BYTES_MAX).contains(&frame.len()));
        assert_eq!(usize::from(u16::from_le_bytes([raw[0], raw[1]])), raw.len());
        assert_eq!(
            Frame::from_bytes(frame.as_bytes().clone()).as_ref(),
            Ok(&frame)
        );
        let (src, dst) = (frame.src(), frame.dst());
        let body = frame.body();
        assert_eq!(body.len(), frame.len() - codec::HEADER_BYTES);
        let encoded = codec::encode(frame.frame_type(), frame.message_id(), src, dst, &body)
            .expect("a decoded body fits a frame");
        let normal = raw[8..16] == src.to_field() && raw[16..24] == dst.to_field();
        if normal {
            assert_eq!(&encoded[..], raw, "re-encoding changed the frame");
        }
        // A copy with another type differs in the type field only.
        let retyped = frame.copy_with_type(codec::TYPE_OFFLINE);
        assert_eq!(&retyped[..2], &raw[..2]);
        assert_eq!(&retyped[4..], &raw[4..]);
        0
    });
});
