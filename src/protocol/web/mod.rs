//! WEB (issue 22): the switchboard in a browser. One page at `/` (HTML, CSS and JS built into
//! the binary) and a WebSocket at `/ws` whose text messages are JSON objects
//! (docs/PROTOCOLS.md, "WEB"). A web user holds its name in the one name space and is a lobby
//! member like a MATOU user; its direct messages reach web, CCM and BIN24 users.

pub mod codec;
pub mod http;
pub mod json;
mod service;

pub use service::{WebConfig, WebService};

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod tests;
