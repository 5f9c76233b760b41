//! The stamp at the start of every OCM chat message: the shared text stamp
//! ([`crate::textstamp`]) with OCM's magic. The server relays messages as `<name>: <message>`;
//! the stamp is printable and never starts with `exit`, so the server never takes it for a leave
//! request.

use crate::textstamp::TextStamp;
pub use crate::textstamp::{Read, Stamp, STAMP_BYTES};

pub const FORMAT: TextStamp = TextStamp {
    magic: *b"LGOC",
    too_short: "message shorter than the stamp",
    // The argument checks keep messages within a datagram.
    max_bytes: usize::MAX,
    too_long: "",
};

pub fn write(message: &mut [u8], stamp: &Stamp) -> Result<(), &'static str> {
    FORMAT.write(message, stamp)
}

pub fn read(message: &[u8], run_id: u32) -> Read {
    FORMAT.read(message, run_id)
}
