//! OCM: Online Chat Messenger (seed 004). Rooms are created and joined over TCP with TCRP
//! (one request, one answer, close); members then chat over UDP with the token they were given.

pub mod codec;
pub mod json;
mod relay;
mod service;

pub use relay::{RelayConfig, RelayService};
pub use service::{os_token_source, OcmConfig, OcmService, TokenSource};

#[cfg(test)]
mod tests;
