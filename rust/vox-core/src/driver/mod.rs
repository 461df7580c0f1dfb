//! Per-connection drivers: the state that runs requests and channels on one connection.

pub mod channel;
