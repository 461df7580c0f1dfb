//! The client side: opening a conduit (prologue and hello on a fresh link)
//! and the recovery task that redials after each break with the resume key.

use super::hello::{StableSetupError, recv_decoded, send_encoded};
use super::shared::{Phase, StableShared};
use super::{StableConfig, StableEnd, StableRx, StableTx, halves};
use crate::link::{Link, LinkSource};
use crate::transport;
use crate::wire::{ClientHello, ConduitMode, ServerHello, StableHelloReply};
use std::sync::Arc;
use std::time::Duration;

/// Client: prologue and hello on a fresh link. Returns the link and the
/// server's answer.
async fn hello_on(
    mut link: Link,
    hello: ClientHello,
    limit: Duration,
) -> Result<(Link, ServerHello), StableSetupError> {
    let attempt = async {
        transport::initiate(&mut link, ConduitMode::Stable).await?;
        send_encoded(&link.tx, "ClientHello", &hello).await?;
        match recv_decoded::<StableHelloReply>(&mut link, "StableHelloReply").await? {
            StableHelloReply::Welcome(sh) => Ok(sh),
            StableHelloReply::UnknownKey { reason } => Err(StableSetupError::UnknownKey(reason)),
        }
    };
    let sh = tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| StableSetupError::Hello(format!("no answer to ClientHello within {limit:?}")))??;
    Ok((link, sh))
}

/// Opens a new stable conduit through `source` (client side). The conduit
/// redials through the same source after every break.
///
/// # Cancel safety
/// As [`connect_over`]; dropping the future while dialing leaves nothing
/// behind.
///
/// # Errors
/// As [`connect_over`], and [`StableSetupError::Link`] if dialing fails.
pub async fn connect(
    source: Arc<dyn LinkSource>,
    config: StableConfig,
) -> Result<(StableTx, StableRx), StableSetupError> {
    let link = source.dial().await?;
    connect_over(link, source, config).await
}

/// Like [`connect`], with the first link already dialed (for example by
/// [`crate::link::connect_waiting`]).
///
/// # Cancel safety
/// Dropping the future drops the link and no conduit is made on this side. If
/// the server had already answered, its side of the conduit waits for a
/// reconnect that never comes and ends after its recovery timeout.
///
/// # Errors
/// [`StableSetupError::Prologue`] if the transport prologue fails,
/// [`StableSetupError::Hello`] if no valid `ServerHello` comes within
/// [`StableConfig::hello_timeout`] or it claims frames were received (the
/// server's fault), [`StableSetupError::UnknownKey`] if the server refuses,
/// [`StableSetupError::Link`] when the link fails.
pub async fn connect_over(
    link: Link,
    source: Arc<dyn LinkSource>,
    config: StableConfig,
) -> Result<(StableTx, StableRx), StableSetupError> {
    let (link, sh) =
        hello_on(link, ClientHello { resume_key: None, last_received: None }, config.hello_timeout).await?;
    if sh.last_received.is_some() {
        return Err(StableSetupError::Hello("a new conduit's ServerHello claims frames were received".into()));
    }
    let shared = StableShared::new(sh.resume_key, config, link);
    tokio::spawn(redial(shared.clone(), source));
    Ok(halves(shared))
}

/// The longest a redial waits for the reader to finish the broken link.
const DRAIN_BEFORE_REDIAL: Duration = Duration::from_millis(500);

/// Client recovery task: after each break, redials with backoff until the
/// recovery timeout, presenting the resume key.
async fn redial(shared: Arc<StableShared>, source: Arc<dyn LinkSource>) {
    loop {
        shared.broken.notified().await;
        let epoch = {
            let core = shared.core.lock();
            match &core.phase {
                Phase::Closed(_) => return,
                Phase::Attached(_) => continue,
                Phase::Broken(_) => core.epoch,
            }
        };
        // What the broken link still delivers (the peer's last frames, say
        // its ProtocolError before it closed) is read before anything
        // replaces or ends the conduit: the writer may have seen the break
        // first. Bounded, for a link that never ends.
        let drained = async {
            loop {
                let notified = shared.reader_drained.notified();
                if shared.core.lock().drained_epoch.is_some_and(|e| e >= epoch) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_BEFORE_REDIAL, drained).await;
        let limit = shared.config.recovery_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let mut attempt = 0u32;
        let outcome = loop {
            let wait = shared.config.backoff.delay(attempt);
            if tokio::time::Instant::now() + wait >= deadline {
                break Err(StableEnd::RecoveryTimeout(limit));
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
            if matches!(shared.core.lock().phase, Phase::Closed(_)) {
                return;
            }
            let hello = ClientHello { resume_key: Some(shared.key.clone()), last_received: shared.last_received() };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let dialed = match tokio::time::timeout(left, source.dial()).await {
                Ok(Ok(link)) => hello_on(link, hello, left.min(shared.config.hello_timeout)).await,
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(StableSetupError::Hello("dial timed out".into())),
            };
            match dialed {
                // A different key means a new server session: never treat it as resumed.
                Ok((_, sh)) if sh.resume_key != shared.key => {
                    break Err(StableEnd::UnknownKey("the server answered with a different session's key".into()));
                }
                Ok((link, sh)) => break Ok((link, sh.last_received)),
                Err(StableSetupError::UnknownKey(reason)) => break Err(StableEnd::UnknownKey(reason)),
                Err(e) => tracing::debug!(attempt, error = %e, "stable conduit redial failed; retrying"),
            }
        };
        match outcome {
            Ok((link, peer_last)) => {
                if shared.attach(link, peer_last).is_err() {
                    return;
                }
            }
            Err(end) => {
                shared.finish(end);
                return;
            }
        }
    }
}
