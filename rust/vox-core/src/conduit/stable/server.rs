//! The server side: the registry that finds a conduit by its resume key
//! when a client comes back on a new link, and the watchdog that ends a
//! broken conduit nobody came back for.

use super::hello::{StableSetupError, recv_decoded, send_encoded};
use super::shared::{Phase, StableShared};
use super::{StableConfig, StableEnd, StableRx, StableTx, halves};
use crate::link::Link;
use crate::sync::Mutex;
use crate::wire::{Blob, ClientHello, ResumeKey, ServerHello, StableHelloReply};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// Server-side index of live stable conduits by resume key, so a client
/// coming back on a new link finds its conduit. Entries are weak: a conduit
/// that ended is dropped from the index on the next insertion.
#[derive(Clone, Default)]
pub struct StableRegistry {
    inner: Arc<Mutex<HashMap<Bytes, Weak<StableShared>>>>,
}

impl std::fmt::Debug for StableRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableRegistry").field("conduits", &self.inner.lock().len()).finish()
    }
}

/// What a stable link brought to the server.
pub enum StableAccepted {
    /// A new conduit: run the session handshake on it.
    New(StableTx, StableRx),
    /// The link was attached to an existing conduit; nothing more to do.
    Resumed,
}

impl std::fmt::Debug for StableAccepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StableAccepted::New(..) => f.write_str("New"),
            StableAccepted::Resumed => f.write_str("Resumed"),
        }
    }
}

/// A fresh resume key: 32 bytes from the operating system's random source
/// (rule `stable.resume-key` asks for at least 16).
fn fresh_key() -> Result<ResumeKey, StableSetupError> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| StableSetupError::Hello(format!("no randomness for a resume key: {e}")))?;
    Ok(ResumeKey(Blob::new(Bytes::copy_from_slice(&key))))
}

impl StableRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        StableRegistry::default()
    }

    /// Live conduits.
    pub fn len(&self) -> usize {
        self.inner.lock().values().filter(|w| w.strong_count() > 0).count()
    }

    /// Whether no conduit is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Server side of a link whose prologue asked for `stable`: reads the
    /// `ClientHello` and either starts a new conduit or attaches the link to
    /// the conduit named by its resume key. An unknown key is refused with
    /// `UnknownKey` and the link is closed.
    ///
    /// # Cancel safety
    /// Dropping the future drops the link: no conduit is created, and no link
    /// is attached to an existing one (that conduit stays broken, so its client
    /// may redial).
    ///
    /// # Errors
    /// [`StableSetupError::Hello`] if no valid `ClientHello` comes within
    /// [`StableConfig::hello_timeout`] (the client's fault) or no resume key
    /// could be made; [`StableSetupError::UnknownKey`] (after telling the
    /// client) for a key of no live conduit or a position it cannot resume from
    /// (that conduit then ends); [`StableSetupError::Link`] when the link
    /// fails.
    pub async fn accept(&self, mut link: Link, config: StableConfig) -> Result<StableAccepted, StableSetupError> {
        let limit = config.hello_timeout;
        let hello = tokio::time::timeout(limit, recv_decoded::<ClientHello>(&mut link, "ClientHello"))
            .await
            .map_err(|_| StableSetupError::Hello(format!("no ClientHello within {limit:?}")))??;
        let Some(key) = hello.resume_key else {
            let key = fresh_key()?;
            send_encoded(
                &link.tx,
                "StableHelloReply",
                &StableHelloReply::Welcome(ServerHello { resume_key: key.clone(), last_received: None }),
            )
            .await?;
            let shared = StableShared::new(key.clone(), config, link);
            {
                let mut map = self.inner.lock();
                map.retain(|_, w| w.strong_count() > 0);
                map.insert(key.0.bytes().clone(), Arc::downgrade(&shared));
            }
            tokio::spawn(watchdog(shared.clone()));
            let (tx, rx) = halves(shared);
            return Ok(StableAccepted::New(tx, rx));
        };
        let found = self.inner.lock().get(key.0.bytes()).and_then(Weak::upgrade);
        let live = found.filter(|s| !matches!(s.core.lock().phase, Phase::Closed(_)));
        let Some(shared) = live else {
            let reason = "unknown or expired resume key".to_string();
            send_encoded(&link.tx, "StableHelloReply", &StableHelloReply::UnknownKey { reason: reason.clone() })
                .await?;
            let _ = link.tx.close().await;
            return Err(StableSetupError::UnknownKey(reason));
        };
        // Judge the client's position before answering: a Welcome followed
        // by a failed attach would look like a resume that then broke.
        let position = shared.core.lock().sm.check_reattach(hello.last_received);
        if let Err(e) = position {
            let reason = format!("cannot resume: {e}");
            send_encoded(&link.tx, "StableHelloReply", &StableHelloReply::UnknownKey { reason: reason.clone() })
                .await?;
            let _ = link.tx.close().await;
            shared.finish(StableEnd::Violation(e));
            return Err(StableSetupError::UnknownKey(reason));
        }
        let reply = ServerHello { resume_key: shared.key.clone(), last_received: shared.last_received() };
        send_encoded(&link.tx, "StableHelloReply", &StableHelloReply::Welcome(reply)).await?;
        shared.attach(link, hello.last_received).map_err(|e| StableSetupError::Hello(e.to_string()))?;
        Ok(StableAccepted::Resumed)
    }
}

/// Server recovery task: after a break, ends the conduit if no link comes
/// back within the recovery timeout.
async fn watchdog(shared: Arc<StableShared>) {
    loop {
        shared.broken.notified().await;
        let epoch = {
            let core = shared.core.lock();
            match core.phase {
                Phase::Closed(_) => return,
                Phase::Attached(_) => continue,
                Phase::Broken(_) => core.epoch,
            }
        };
        let limit = shared.config.recovery_timeout;
        tokio::time::sleep(limit).await;
        let still_broken = {
            let core = shared.core.lock();
            core.epoch == epoch && matches!(core.phase, Phase::Broken(_))
        };
        if still_broken {
            shared.finish(StableEnd::RecoveryTimeout(limit));
            return;
        }
    }
}
