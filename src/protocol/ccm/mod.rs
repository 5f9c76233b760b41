//! CCM: Chat Communication Message (seed 000). HTTP-like text messages: identification with a
//! token, addressed delivery, a keepalive, and an HTTP answer to anything that is not CCM.

pub mod codec;
mod service;

pub use service::{os_token_source, CcmConfig, CcmService, Reason, TokenSource};

#[cfg(test)]
mod tests;
