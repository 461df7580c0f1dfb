//! Session resume on a replacement conduit (rule `session.resume`).
//!
//! A session that asked for it (`Hello` lists
//! [`SESSION_RESUME_FEATURE`](crate::wire::SESSION_RESUME_FEATURE)) gets a
//! resume key in `HelloYourself`. When its conduit ends (a bare link breaks,
//! or a stable conduit gives up), the session does not: it enters
//! `Resuming`, fails what was in flight on the lost attachment, and waits for
//! a new conduit that completed a handshake presenting the key. The
//! initiator redials (`redial`); the acceptor's listener routes a resuming
//! `Hello` to the session through the `SessionRegistry`. A key the
//! acceptor does not know is refused with `Sorry`, so a client can never
//! take a new server session for its old one.

use super::SessionError;
use super::control::MailboxTx;
use super::handshake::Negotiated;
use crate::conduit::{ConduitRx, ConduitTx};
use crate::link::Backoff;
use crate::sync::Mutex;
use crate::wire::{Blob, Parity, ResumeKey};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A conduit whose handshake bound it to an existing session.
pub struct NewConduit {
    pub(crate) tx: ConduitTx,
    pub(crate) rx: ConduitRx,
    pub(crate) negotiated: Negotiated,
}

impl std::fmt::Debug for NewConduit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewConduit").field("negotiated", &self.negotiated).finish_non_exhaustive()
    }
}

/// Session resume settings.
#[derive(Clone, Debug)]
pub struct SessionResumeConfig {
    /// Initiator: ask for a resume key and, when the conduit is lost, redial
    /// and resume instead of ending (needs a way to redial: `connect`,
    /// `connect_waiting` or `establish_resumable`). Default: off.
    pub request: bool,
    /// Acceptor (through a `Listener`): issue a key when the initiator asks.
    /// Default: on.
    pub offer: bool,
    /// How long a session waits in `Resuming` for a replacement conduit
    /// before it ends with `CloseReason::ResumeFailed`.
    pub recovery_timeout: Duration,
    /// Redial pacing of the initiator.
    pub backoff: Backoff,
}

impl Default for SessionResumeConfig {
    fn default() -> Self {
        SessionResumeConfig {
            request: false,
            offer: true,
            recovery_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
        }
    }
}

/// A fresh 32-byte key from the OS random source.
pub(crate) fn fresh_key() -> Result<ResumeKey, SessionError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| SessionError::Setup(format!("no randomness for a session resume key: {e}")))?;
    Ok(ResumeKey(Blob::new(bytes::Bytes::copy_from_slice(&key))))
}

/// Live resumable sessions of one acceptor, by key. Entries are added when a
/// session starts with a key and removed when it ends, so the map holds only
/// live sessions.
#[derive(Clone, Default)]
pub(crate) struct SessionRegistry {
    inner: Arc<Mutex<HashMap<ResumeKey, RegistryEntry>>>,
}

#[derive(Clone)]
struct RegistryEntry {
    mailbox: MailboxTx,
    /// The initiator's parity, which a resuming `Hello` must repeat.
    parity: Parity,
}

impl SessionRegistry {
    pub(crate) fn insert(&self, key: ResumeKey, mailbox: MailboxTx, parity: Parity) {
        self.inner.lock().insert(key, RegistryEntry { mailbox, parity });
    }

    pub(crate) fn remove(&self, key: &ResumeKey) {
        self.inner.lock().remove(key);
    }

    /// The session's mailbox if `key` names a live session that the
    /// initiator `parity` may resume.
    pub(crate) fn lookup(&self, key: &ResumeKey, parity: Parity) -> Result<MailboxTx, String> {
        match self.inner.lock().get(key) {
            None => Err("unknown session resume key (the session ended or never existed)".into()),
            Some(e) if e.parity != parity => {
                Err(format!("a resuming Hello must keep the session's parity {:?}", e.parity))
            }
            Some(e) => Ok(e.mailbox.clone()),
        }
    }
}

/// Why one resume attempt failed.
#[derive(Debug)]
pub(crate) enum RedialError {
    /// Worth another try (I/O, the link closed during setup).
    Transient(String),
    /// Final: the acceptor refused the key, or the handshake is incompatible.
    Permanent(String),
}

/// One resume attempt: dial, prologue, conduit, resuming handshake.
pub(crate) type RedialAttempt =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<NewConduit, RedialError>> + Send>> + Send + Sync>;

/// The initiator's side of resuming: how to make an attempt.
#[derive(Clone)]
pub(crate) struct Redialer {
    pub(crate) attempt: RedialAttempt,
    pub(crate) backoff: Backoff,
}

/// Retries `redialer`'s attempt with backoff until one succeeds, one fails
/// permanently, or `deadline` passes (then the last error is reported).
pub(crate) async fn redial(redialer: Redialer, deadline: Instant) -> Result<NewConduit, String> {
    let mut attempt: u32 = 0;
    let mut last = String::from("no attempt was made before the recovery timeout");
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("recovery timeout; last error: {last}"));
        }
        match tokio::time::timeout_at(deadline, (redialer.attempt)()).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(RedialError::Permanent(e))) => return Err(e),
            Ok(Err(RedialError::Transient(e))) => last = e,
            Err(_) => return Err(format!("recovery timeout; last error: {last}")),
        }
        attempt = attempt.saturating_add(1);
        let delay = redialer.backoff.delay(attempt);
        tracing::debug!(error = %last, ?delay, "session resume attempt failed; retrying");
        tokio::time::sleep_until((Instant::now() + delay).min(deadline)).await;
    }
}
