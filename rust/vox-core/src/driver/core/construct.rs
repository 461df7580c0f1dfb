//! Making a core: a fresh one for a new connection, or the successor of a
//! core whose attachment ended, for a resumed session. Both go through one
//! `build` so the two cannot drift apart in what they start with.

use super::flush::FlushPhase;
use super::{ConnectionCore, CoreState, CoreStats};
use crate::driver::channel::{ChannelLimits, Registry, RegistryConfig};
use crate::driver::handler::Handler;
use crate::driver::liveness::Liveness;
use crate::plumbing::ops::SessionOps;
use crate::plumbing::outbound::Outbound;
use crate::sync::Mutex;
use crate::wire::id_map;
use crate::wire::{ConnectionId, ConnectionSettings, IdAllocator, Parity};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::Semaphore;

impl ConnectionCore {
    /// A driver core for connection `id`, allocating request and channel ids
    /// of `local_parity`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: ConnectionId,
        local_parity: Parity,
        local_settings: ConnectionSettings,
        peer_settings: ConnectionSettings,
        outbound: Outbound,
        handler: Option<Arc<dyn Handler>>,
        limits: ChannelLimits,
        ops: Option<Arc<SessionOps>>,
    ) -> Arc<ConnectionCore> {
        let registry = Registry::new(Self::registry_config(local_parity, &local_settings, limits));
        let schemas = Arc::default();
        Self::build(
            id,
            local_parity,
            local_settings,
            peer_settings,
            outbound,
            handler,
            limits,
            ops,
            registry,
            None,
            schemas,
        )
    }

    /// [`ConnectionCore::new`], started: its flush task runs (until the
    /// core is lost). Everything that serves a live connection makes its
    /// core this way, so no caller has to remember to start it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn started(
        id: ConnectionId,
        local_parity: Parity,
        local_settings: ConnectionSettings,
        peer_settings: ConnectionSettings,
        outbound: Outbound,
        handler: Option<Arc<dyn Handler>>,
        limits: ChannelLimits,
        ops: Option<Arc<SessionOps>>,
    ) -> Arc<ConnectionCore> {
        let core = Self::new(id, local_parity, local_settings, peer_settings, outbound, handler, limits, ops);
        tokio::spawn(core.clone().run_flush());
        core
    }

    fn registry_config(local_parity: Parity, local: &ConnectionSettings, limits: ChannelLimits) -> RegistryConfig {
        RegistryConfig {
            local_parity,
            max_initial_credit: local.max_initial_credit,
            max_channels: limits.max_channels,
            tombstones: 1024,
            max_receive_window: limits.max_receive_window,
        }
    }

    /// The same connection on a new attachment of a resumed session (rule
    /// `session.resume`): same id, parity, handler, operation table and schema state, the
    /// newly negotiated settings, a new outbound path, and nothing in flight.
    /// Its request and channel ids continue above this core's, so nothing of
    /// the old attachment's ids is reused (rule `retry.channel.volatile.rebinding`).
    /// Call it after [`ConnectionCore::on_lost`] on this core. Like
    /// [`ConnectionCore::started`], the successor runs its own flush task.
    pub(crate) fn successor(
        &self,
        outbound: Outbound,
        local_settings: ConnectionSettings,
        peer_settings: ConnectionSettings,
    ) -> Arc<ConnectionCore> {
        let registry = Registry::succeeding(
            Self::registry_config(self.local_parity, &local_settings, self.limits),
            &self.registry,
        );
        let requests = self.state.lock().requests.continuation();
        let core = Self::build(
            self.id,
            self.local_parity,
            local_settings,
            peer_settings,
            outbound,
            self.handler.clone(),
            self.limits,
            self.ops.clone(),
            registry,
            Some(requests),
            self.schemas.clone(),
        );
        tokio::spawn(core.clone().run_flush());
        core
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        id: ConnectionId,
        local_parity: Parity,
        local_settings: ConnectionSettings,
        peer_settings: ConnectionSettings,
        outbound: Outbound,
        handler: Option<Arc<dyn Handler>>,
        limits: ChannelLimits,
        ops: Option<Arc<SessionOps>>,
        registry: Registry,
        requests: Option<IdAllocator>,
        schemas: Arc<crate::schema::HandlerSchemas>,
    ) -> Arc<ConnectionCore> {
        let slots = Arc::new(Semaphore::new(peer_settings.max_concurrent_requests as usize));
        Arc::new(ConnectionCore {
            id,
            local_parity,
            local_settings,
            peer_settings,
            registry,
            outbound,
            slots,
            state: Mutex::new(CoreState {
                lost: Liveness::Live,
                requests: requests.unwrap_or_else(|| IdAllocator::new(local_parity)),
                calls: id_map(),
                handlers: id_map(),
                cancels_due: VecDeque::new(),
                draining: None,
                flush_waker: None,
                flush: FlushPhase::Running,
                stats: CoreStats::default(),
            }),
            handler,
            ops,
            limits,
            schemas,
            peer: std::sync::OnceLock::new(),
            identity: std::sync::OnceLock::new(),
        })
    }
}
