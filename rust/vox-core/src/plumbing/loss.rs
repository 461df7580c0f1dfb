//! Why a connection ended: shared by the driver (which fails its calls and
//! channels with it) and the session (which decides it).

/// Why a connection (and with it every channel on it) ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LossCause {
    /// The connection was closed (`CloseConnection`, link gone, keepalive timeout).
    #[error("connection closed")]
    ConnectionClosed,
    /// The whole session was shut down locally.
    #[error("session shut down")]
    SessionShutdown,
    /// One side violated the protocol; the session was torn down
    /// ([session.protocol-error]).
    #[error("protocol error: {0}")]
    ProtocolError(String),
}
