//! vox-core: the vox RPC session runtime.
//!
//! Layers, bottom up (see `PROTOCOL.md`): [`link`] carries whole messages,
//! [`transport`] runs the prologue, [`conduit`] (de)serializes messages,
//! [`session`] multiplexes connections over one conduit, and [`driver`] runs
//! requests and channels on each connection.

pub mod conduit;
pub mod driver;
mod id_window;
pub mod link;
pub mod service;
pub mod session;
pub mod sync;
pub mod transport;
pub mod wire;

pub use service::service;
