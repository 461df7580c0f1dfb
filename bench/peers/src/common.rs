//! What every peer provides: a server it starts in the process and clients
//! that connect to it, over TCP loopback (NODELAY) or the peer's memory link.

use std::future::Future;

/// Any error of a peer or a workload.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// A result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Which transport a cell uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP on 127.0.0.1 with `TCP_NODELAY` on both ends.
    Tcp,
    /// The peer's in-process link (see each peer for what that is).
    Memory,
}

impl Transport {
    /// Its name in the table and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Memory => "memory",
        }
    }

    /// Parses [`Transport::name`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Transport::Tcp),
            "memory" => Some(Transport::Memory),
            _ => None,
        }
    }
}

/// One client of a peer's bench service. Clones share the connection.
pub trait Client: Clone + Send + Sync + 'static {
    /// `echo(Vec<u8>) -> Vec<u8>`: the natural owned signature.
    fn echo(&self, data: Vec<u8>) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// The server streams `0..n` as `u64` items; returns how many arrived.
    fn stream_down(&self, n: u64) -> impl Future<Output = Result<u64>> + Send;
    /// The client streams `0..n` as `u64` items; returns the server's count.
    fn stream_up(&self, n: u64) -> impl Future<Output = Result<u64>> + Send;
}

/// A peer: its server, started once per cell, and its way to connect.
pub trait Peer: Sized + Send + Sync + 'static {
    /// Its clients.
    type Client: Client;
    /// Whether it has streams (server→client and client→server).
    const STREAMS: bool;
    /// Starts the server in this process.
    fn start(transport: Transport) -> impl Future<Output = Result<Self>> + Send;
    /// A new client on its own connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Client>> + Send;
}

/// The error for a stream call on a peer without streams.
pub fn no_streams() -> Error {
    "this peer has no streams".into()
}
