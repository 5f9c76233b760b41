//! BIN24: direct messages between named users, answered "200" by the recipient, with a
//! 3 s answer timeout and a durable offline store (seed 001).

pub mod codec;
mod service;
mod stored;
pub mod users;

pub use service::{Bin24Config, Bin24Service, CustodyCounts, StoreSink};
pub use stored::Bin24Stored;
pub use users::{UserList, UsersFileError};

#[cfg(test)]
mod tests;
