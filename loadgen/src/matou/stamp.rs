//! The stamp at the start of every MATOU public message: the shared text stamp
//! ([`crate::textstamp`]) with MATOU's magic. A PUBLIC_MESSAGE is at most 512 bytes with no
//! control characters (the contract's rule 2); the stamp is printable ASCII.

use crate::textstamp::TextStamp;
pub use crate::textstamp::{hex_at, Read, Stamp, STAMP_BYTES};

/// The largest message the contract allows (rule 2).
pub const MESSAGE_BYTES_MAX: usize = 512;

pub const FORMAT: TextStamp = TextStamp {
    magic: *b"LGMT",
    too_short: "message shorter than the stamp",
    max_bytes: MESSAGE_BYTES_MAX,
    too_long: "message longer than 512 bytes",
};

pub fn write(message: &mut [u8], stamp: &Stamp) -> Result<(), &'static str> {
    FORMAT.write(message, stamp)
}

pub fn read(message: &[u8], run_id: u32) -> Read {
    FORMAT.read(message, run_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_outside_the_contract_are_refused() {
        let stamp = Stamp {
            run_id: 1,
            sender: 2,
            seq: 3,
            intended_us: 4,
        };
        assert!(write(&mut [0u8; MESSAGE_BYTES_MAX], &stamp).is_ok());
        assert!(write(&mut [0u8; MESSAGE_BYTES_MAX + 1], &stamp).is_err());
    }
}
