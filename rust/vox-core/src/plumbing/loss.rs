//! Why a connection ended, and who was at fault: shared by the driver (which
//! fails its calls and channels with it) and the session (which decides it).

/// Who caused an error (DESIGN.md, "How the code is laid out"). Only an
/// error of the environment can be worth retrying; a peer's or our own
/// mistake happens again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The peer: it broke the protocol, or it refused or failed the request.
    Peer,
    /// This program: API misuse, its own cancellation, deadline or shutdown.
    Local,
    /// Neither side's code: the network, the link or the machine (a link
    /// lost, a connection closed under the call, a keepalive timeout).
    Environment,
}

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
    /// ([session.protocol-error]). `fault` says which: [`Fault::Peer`] when
    /// we caught the peer breaking a rule (and sent `ProtocolError`),
    /// [`Fault::Local`] when the peer reported that we broke one.
    #[error("protocol error ({}): {description}", blame(*fault))]
    ProtocolError {
        /// Who broke the rule.
        fault: Fault,
        /// The violation, as detected or as the peer described it.
        description: String,
    },
}

impl LossCause {
    /// Who ended the connection.
    pub fn fault(&self) -> Fault {
        match self {
            LossCause::ConnectionClosed => Fault::Environment,
            LossCause::SessionShutdown => Fault::Local,
            LossCause::ProtocolError { fault, .. } => *fault,
        }
    }
}

/// Who broke the protocol, in words for error texts.
pub(crate) fn blame(fault: Fault) -> &'static str {
    match fault {
        Fault::Peer => "the peer broke a rule",
        Fault::Local => "the peer reports that we broke a rule",
        Fault::Environment => "a link fault",
    }
}
