//! The acceptor side of one link: the prologue, the conduit (bare, a new
//! stable one, or a link for an existing one), the acceptor handshake, and
//! handing a resuming conduit to its session. Every step runs under the
//! setup deadlines, since the peer is unauthenticated until it is done.

#[cfg(doc)]
use super::Listener;
use super::{Accepted, Session, SessionBuilder, prepare_conduit};
use crate::conduit::stable::StableAccepted;
use crate::conduit::{self, ConduitRx, ConduitTx};
use crate::link::Link;
use crate::session::SessionError;
#[cfg(doc)]
use crate::session::handshake::SetupLimits;
use crate::session::handshake::{self, HandshakeError, HelloDecision, Negotiated};
use crate::session::resume::{self, NewConduit};
use crate::session::run::{Resume, ResumeSide};
use crate::transport::{self, AcceptModes};
use crate::wire::{ConduitMode, SESSION_RESUME_FEATURE};
use std::time::Duration;

impl SessionBuilder {
    /// Runs the acceptor side over `link`. A link that resumes an existing
    /// stable conduit is not a new session: use
    /// [`establish_acceptor_any`](Self::establish_acceptor_any) (or
    /// [`Listener::accept`], which handles it) to tell the two apart.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started.
    ///
    /// # Errors
    /// As [`establish_acceptor_any`](Self::establish_acceptor_any), and
    /// [`SessionError::Setup`] when the link resumed an existing session's
    /// stable conduit instead of starting a session.
    pub async fn establish_acceptor(self, link: Link) -> Result<Session, SessionError> {
        match self.establish_acceptor_any(link).await? {
            Accepted::New(s) => Ok(s),
            Accepted::Resumed => {
                Err(SessionError::Setup("the link resumed an existing session's stable conduit".into()))
            }
        }
    }

    /// Runs the acceptor side over `link`: a new session, a new link for an
    /// existing session's stable conduit, or a new conduit that resumes an
    /// existing session by its key (rule `session.resume`). A key this
    /// builder's sessions do not hold is refused with `Sorry`.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the setup: the link (or conduit) is dropped
    /// and no session is started. A resuming conduit is handed to its session
    /// only when the future completes.
    ///
    /// # Errors
    /// [`SessionError::HandshakeTimeout`] when the first message or the whole
    /// setup misses its deadline; [`SessionError::Setup`] with the cause when
    /// the prologue, the stable conduit's hello or the handshake fails (a
    /// violation by the peer, or a resume key no session here holds), or the
    /// resumed session ended meanwhile.
    pub async fn establish_acceptor_any(self, link: Link) -> Result<Accepted, SessionError> {
        self.accept_setup(std::future::ready(Ok(link)), std::future::pending()).await
    }

    /// [`establish_acceptor_any`](Self::establish_acceptor_any), cut short
    /// when `cancel` completes (a listener making room for newer links).
    ///
    /// rule: session.setup.limits — every step has a deadline: the first
    /// message within [`SetupLimits::prologue_timeout`], the whole setup
    /// within [`SessionConfig::handshake_timeout`]. `link` may still have
    /// work to do (a TLS or WebSocket handshake): that counts as part of the
    /// setup, held to the prologue deadline. A setup that fails, times
    /// out or is cut short aborts its conduit at once: a stable conduit is
    /// not left to close gracefully, waiting for acknowledgements that an
    /// unauthenticated peer need never send.
    pub(super) async fn accept_setup(
        self,
        link: impl std::future::Future<Output = Result<Link, SessionError>>,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<Accepted, SessionError> {
        let timeout = self.config.handshake_timeout;
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(1 << 30));
        let timed_out = || SessionError::HandshakeTimeout(timeout);
        let cancelled = || {
            SessionError::Setup(
                "unfinished setup closed to make room for a newer link (SetupLimits::max_pending_setups)".into(),
            )
        };
        tokio::pin!(cancel);
        // The transport's own handshake (TLS, WebSocket upgrade), if any:
        // like the prologue, the peer's first bytes, so held to its deadline.
        let prologue_timeout = self.config.setup.prologue_timeout;
        let (first_deadline, first_timeout) = match now.checked_add(prologue_timeout) {
            Some(d) if d < deadline => (d, prologue_timeout),
            _ => (deadline, timeout),
        };
        let link = tokio::select! {
            r = tokio::time::timeout_at(first_deadline, link) => {
                r.map_err(|_| SessionError::HandshakeTimeout(first_timeout))??
            }
            () = &mut cancel => return Err(cancelled()),
        };
        // The prologue, and a stable conduit's hello, on the raw link:
        // cutting this short drops the link, which closes it at once.
        let conduit = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.accept_conduit(link)) => r.map_err(|_| timed_out())??,
            () = &mut cancel => return Err(cancelled()),
        };
        let Some((tx, mut rx)) = conduit else { return Ok(Accepted::Resumed) };
        prepare_conduit(&self.config, &mut rx);
        // The handshake, with the conduit kept out here so that it can be
        // aborted however this ends.
        let mut fresh = None;
        let outcome = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.accept_handshake(&tx, &mut rx, &mut fresh)) => {
                r.map_err(|_| timed_out()).and_then(|r| r.map_err(SessionError::from))
            }
            () = &mut cancel => Err(cancelled()),
        };
        let (negotiated, resumed) = match outcome {
            Ok(x) => x,
            Err(e) => {
                // What is queued (a Sorry) still goes out first.
                abandon(tx, self.config.protocol_error_deadline).await;
                return Err(e);
            }
        };
        // rule: session.setup.limits — the peer is a session peer now.
        rx.unrestrict();
        if !resumed {
            let resume =
                fresh.map(|key| Resume { key, side: ResumeSide::Acceptor { registry: self.session_registry.clone() } });
            return Ok(Accepted::New(self.start(NewConduit { tx, rx, negotiated }, resume)));
        }
        // The session may have ended since the lookup: then the link is
        // closed, and the client's next attempt is refused.
        let ended = || SessionError::Setup("the resumed session ended during the handshake".into());
        let key = negotiated.resume_key.clone();
        let mailbox =
            key.as_ref().and_then(|k| self.session_registry.lookup(k, negotiated.local_parity.opposite()).ok());
        let Some(mb) = mailbox else {
            abandon(tx, self.config.protocol_error_deadline).await;
            return Err(ended());
        };
        let reattach =
            mb.send(crate::session::control::ControlMsg::Reattach(Box::new(NewConduit { tx, rx, negotiated })));
        match tokio::time::timeout_at(deadline, reattach).await {
            Ok(Ok(())) => Ok(Accepted::Resumed),
            Ok(Err(_)) => Err(ended()),
            Err(_) => Err(timed_out()),
        }
    }

    /// The acceptor's prologue and conduit setup: a bare conduit, a new
    /// stable conduit, or `None` for a link that joined an existing stable
    /// conduit.
    async fn accept_conduit(&self, mut link: Link) -> Result<Option<(ConduitTx, ConduitRx)>, SessionError> {
        let limits = &self.config.setup;
        let modes = AcceptModes { bare: true, stable: self.config.accept_stable };
        // rule: session.setup.limits — until the handshake completes the peer
        // is unauthenticated: every message it sends (prologue, a stable
        // ClientHello, which is read on this link, Hello, LetsGo) is refused
        // above the setup maximum from its length prefix, before anything is
        // allocated for it; and its first message must come soon.
        link.rx.restrict(limits.max_message_size);
        let mode = match transport::accept_within(&mut link, modes, Some(limits.prologue_timeout)).await {
            Ok(m) => m,
            Err(transport::PrologueError::Timeout(d)) => return Err(SessionError::HandshakeTimeout(d)),
            Err(e) => {
                // rule: transport.prologue.reject-close — close (not
                // drop) so the reject reaches the peer before the end.
                let _ = link.tx.close().await;
                return Err(e.into());
            }
        };
        Ok(Some(match mode {
            ConduitMode::Bare => conduit::bare(link),
            ConduitMode::Stable => match self.stable_registry.accept(link, self.config.stable.clone()).await {
                Ok(StableAccepted::New(tx, rx)) => conduit::from_stable(tx, rx),
                Ok(StableAccepted::Resumed) => return Ok(None),
                Err(e) => return Err(SessionError::Setup(e.to_string())),
            },
        }))
    }

    /// The acceptor's handshake; `fresh` receives the resume key issued to a
    /// new resumable session.
    async fn accept_handshake(
        &self,
        tx: &ConduitTx,
        rx: &mut ConduitRx,
        fresh: &mut Option<crate::wire::ResumeKey>,
    ) -> Result<(Negotiated, bool), HandshakeError> {
        let registry = &self.session_registry;
        let offer = self.config.session_resume.offer;
        let decide = |hello: &crate::wire::Hello| match &hello.resume_key {
            Some(key) => match registry.lookup(key, hello.parity) {
                Ok(_) => HelloDecision::Resume(key.clone()),
                Err(reason) => HelloDecision::Refuse(reason),
            },
            None if offer && hello.features.iter().any(|f| f == SESSION_RESUME_FEATURE) => match resume::fresh_key() {
                Ok(k) => {
                    *fresh = Some(k.clone());
                    HelloDecision::New(Some(k))
                }
                Err(e) => HelloDecision::Refuse(e.to_string()),
            },
            None => HelloDecision::New(None),
        };
        let batches = self.config.channel_item_batches;
        handshake::accept_deciding(tx, rx, self.config.root_settings.clone(), decide, batches).await
    }
}

/// Ends a conduit whose setup failed or was cut short: what is queued (a
/// `Sorry`) is written, then the link is closed without waiting for the
/// peer, within `within` whatever the peer does.
async fn abandon(tx: ConduitTx, within: Duration) {
    let abort = async move {
        if let Ok(writer) = tx.into_writer().await {
            let _ = writer.abort().await;
        }
    };
    // Dropping what is left at the deadline ends the conduit at once.
    let _ = tokio::time::timeout(within, abort).await;
}
