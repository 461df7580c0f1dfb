//! The settings a session runs with ([`SessionConfig`]) and their
//! defaults, kept apart from the builder so the run loop and the setup code
//! can share one definition without depending on how sessions are built.

use crate::conduit::stable::StableConfig;
use crate::link::LinkConfig;
use crate::plumbing::operations::OperationConfig;
#[cfg(doc)]
use crate::session::SessionBuilder;
use crate::session::handshake::SetupLimits;
use crate::session::resume::SessionResumeConfig;
use crate::wire::{ConduitMode, ConnectionSettings, PROTOCOL_VERSION, Parity};
use std::time::Duration;

/// Periodic ping settings (rule `session.keepalive`).
#[derive(Clone, Debug)]
pub struct KeepaliveConfig {
    /// How often to ping.
    pub interval: Duration,
    /// How long a pong may take before the session is torn down.
    pub timeout: Duration,
}

/// Session settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The initiator's session parity (the acceptor takes the other).
    pub parity: Parity,
    /// Our settings for the root connection.
    pub root_settings: ConnectionSettings,
    /// The most virtual connections at once (either side's); above it,
    /// inbound opens are rejected and local opens fail.
    pub max_connections: usize,
    /// Periodic ping (rule `session.keepalive`). On by default: every 10 s,
    /// and a pong must come within 20 s, so a peer that went silent (or
    /// stopped halfway through a frame, which holds back its pong) cannot
    /// hold a session. `None` turns it off.
    pub keepalive: Option<KeepaliveConfig>,
    /// The longest the prologue plus handshake may take.
    pub handshake_timeout: Duration,
    /// Limits on a peer that has not completed the handshake (rule
    /// `session.setup.limits`): the setup-phase message size (64 KiB), the
    /// prologue deadline (2 s), and for listeners the bound on unfinished
    /// setups (256, the oldest is closed beyond it) and the TCP backlog
    /// (1024). See [`SetupLimits`].
    pub setup: SetupLimits,
    /// Capacity of the control mailbox's bounded queue.
    pub mailbox_capacity: usize,
    /// Capacity of the outbound queue, in messages.
    pub outbound_capacity: usize,
    /// The most channels alive at once on one connection.
    pub max_channels_per_connection: usize,
    /// How far the window of a channel this side receives on may grow while
    /// its consumer keeps up, in items (default 8192, and never past about
    /// 256 KiB of queued items of the size last taken). Receivers start at
    /// the channel's initial credit (16 unless chosen otherwise) and double
    /// the window whenever a grant falls due with nothing left queued, so a
    /// fast stream is not held to one grant round trip per 8 items; a slow
    /// consumer never grows it. Set it to 0 to keep every window at its
    /// initial credit, i.e. receive buffers of exactly that many items.
    pub max_receive_window: u32,
    /// How long a graceful end may spend writing the last messages.
    pub linger: Duration,
    /// Link settings for the TCP conveniences.
    pub link: LinkConfig,
    /// The protocol version to announce (tests use other values).
    pub protocol_version: u32,
    /// Which conduit the initiator asks for: `Bare` (default) or `Stable`
    /// (survives link breaks; needs a way to redial, see
    /// [`SessionBuilder::connect`]).
    pub conduit: ConduitMode,
    /// Whether an acceptor agrees to `Stable` conduits (default: yes).
    pub accept_stable: bool,
    /// Stable-conduit settings (replay limit, recovery timeout, backoff).
    pub stable: StableConfig,
    /// Session resume on a replacement conduit (rule `session.resume`).
    pub session_resume: SessionResumeConfig,
    /// The session's operation table (PROTOCOL.md section 10); `None`
    /// serves requests with an operation id as plain calls.
    pub operations: Option<OperationConfig>,
    /// Bounds on the sequences in every decoded message: metadata entries,
    /// channel declarations, features (rule `session.decode.bounded`).
    pub decode_limits: crate::wire::DecodeLimits,
    /// Per-session budgets on legal but costly behaviour (rule
    /// `session.abuse-budget`).
    pub budgets: crate::session::AbuseBudgets,
    /// After a violation, the longest the `ProtocolError` may take to be
    /// written before the link is closed regardless (rule
    /// `session.protocol-error`). Default 500 ms.
    pub protocol_error_deadline: Duration,
    /// Offer (as initiator) or accept (as acceptor) the handshake feature
    /// [`CHANNEL_ITEMS_FEATURE`](crate::wire::CHANNEL_ITEMS_FEATURE): when
    /// both sides agree, the writer sends the items of one channel that are
    /// queued one after another as one `ChannelItems` message, credit still
    /// counted per item. Default: yes.
    pub channel_item_batches: bool,
}

impl SessionConfig {
    pub(crate) fn channel_limits(&self) -> crate::driver::channel::ChannelLimits {
        crate::driver::channel::ChannelLimits {
            max_channels: self.max_channels_per_connection,
            max_receive_window: self.max_receive_window,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            parity: Parity::Odd,
            root_settings: ConnectionSettings::default(),
            max_connections: 1024,
            keepalive: Some(KeepaliveConfig { interval: Duration::from_secs(10), timeout: Duration::from_secs(20) }),
            handshake_timeout: Duration::from_secs(10),
            setup: SetupLimits::default(),
            mailbox_capacity: 32,
            outbound_capacity: 256,
            max_channels_per_connection: 4096,
            max_receive_window: crate::driver::channel::DEFAULT_MAX_RECEIVE_WINDOW,
            linger: Duration::from_secs(5),
            link: LinkConfig::default(),
            protocol_version: PROTOCOL_VERSION,
            conduit: ConduitMode::Bare,
            accept_stable: true,
            stable: StableConfig::default(),
            session_resume: SessionResumeConfig::default(),
            operations: Some(OperationConfig::default()),
            decode_limits: crate::wire::DecodeLimits::default(),
            budgets: crate::session::AbuseBudgets::default(),
            protocol_error_deadline: Duration::from_millis(500),
            channel_item_batches: true,
        }
    }
}
