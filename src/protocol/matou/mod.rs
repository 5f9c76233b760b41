//! MATOU (seed 003): a public room with unique user names, and private links between two
//! users that the server only brokers (it hands each side the other's address; messages and
//! files then go directly between the clients).

pub mod codec;
mod service;

pub use service::{MatouConfig, MatouService};

#[cfg(test)]
mod tests;
