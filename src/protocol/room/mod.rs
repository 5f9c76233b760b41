//! ROOM.
pub mod codec;
