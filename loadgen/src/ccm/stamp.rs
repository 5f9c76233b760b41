//! The stamp at the start of every CCM message's content: the shared text stamp
//! ([`crate::textstamp`]) with CCM's magic.

use crate::textstamp::TextStamp;
pub use crate::textstamp::{Read, Stamp, STAMP_BYTES};

pub const FORMAT: TextStamp = TextStamp {
    magic: *b"LGCM",
    too_short: "content shorter than the stamp",
    // The server takes up to 1 MiB; the argument checks keep content far below.
    max_bytes: usize::MAX,
    too_long: "",
};

pub fn write(content: &mut [u8], stamp: &Stamp) -> Result<(), &'static str> {
    FORMAT.write(content, stamp)
}

pub fn read(content: &[u8], run_id: u32) -> Read {
    FORMAT.read(content, run_id)
}
