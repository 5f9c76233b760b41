//! The reactor.
