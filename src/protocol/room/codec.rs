//! ROOM codec.
