//! The service router: one session serving several services, each a
//! dispatcher, picked by name when a virtual connection opens (as the
//! acceptor) and by method on the root (as the handler).

use super::*;

#[derive(Clone)]
struct RouteEntry {
    name: &'static str,
    handler: Arc<dyn Handler>,
}

/// Serves several services.
///
/// - As an [`Acceptor`]: accepts an inbound virtual connection whose
///   `OpenConnection` metadata names a served service ([`SERVICE_KEY`]) and
///   serves it with that service's dispatcher; rejects any other, with the
///   reason under [`REJECT_REASON_KEY`].
/// - As a [`Handler`]: routes each call to the service owning its method id
///   (method ids include the service name), `UnknownMethod` otherwise.
///
/// ```
/// # #[vox_core::service] pub trait Calculator { async fn add(&self, a: i64, b: i64) -> i64; }
/// # struct Calc;
/// # impl Calculator for Calc { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
/// use vox_core::service::ServiceRouter;
/// use vox_core::session::SessionBuilder;
/// let router = ServiceRouter::new().serve(CalculatorDispatcher::new(Calc));
/// assert_eq!(router.service_names(), vec!["Calculator"]);
/// let builder = SessionBuilder::new().handler(router.clone()).acceptor(router);
/// # drop(builder);
/// ```
#[derive(Clone, Default)]
pub struct ServiceRouter {
    inner: Arc<RouterInner>,
}

#[derive(Default, Clone)]
struct RouterInner {
    settings: ConnectionSettings,
    by_name: BTreeMap<String, RouteEntry>,
    by_method: HashMap<MethodId, Arc<dyn Handler>>,
}

impl std::fmt::Debug for ServiceRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRouter").field("services", &self.service_names()).finish()
    }
}

impl ServiceRouter {
    /// No services; accepted connections get default settings.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner_mut(&mut self) -> &mut RouterInner {
        // Shared with a clone (e.g. one given to the acceptor): copy on write.
        Arc::make_mut(&mut self.inner)
    }

    /// Serves `dispatcher`'s service. A service of the same name served
    /// before is replaced.
    pub fn serve<D: ServiceDispatcher>(mut self, dispatcher: D) -> Self {
        let handler: Arc<dyn Handler> = Arc::new(dispatcher);
        let inner = self.inner_mut();
        if let Some(old) =
            inner.by_name.insert(kebab(D::SERVICE_NAME), RouteEntry { name: D::SERVICE_NAME, handler: handler.clone() })
        {
            let old_name = old.name;
            inner.by_method.retain(|_, h| !Arc::ptr_eq(h, &old.handler));
            tracing::debug!(service = old_name, "service replaced in router");
        }
        for m in D::METHODS {
            crate::driver::metrics::name_method(m.id(), m.service, m.name);
            inner.by_method.insert(m.id(), handler.clone());
        }
        self
    }

    /// Our settings for accepted connections.
    pub fn settings(mut self, settings: ConnectionSettings) -> Self {
        self.inner_mut().settings = settings;
        self
    }

    /// The names of the served services, sorted.
    pub fn service_names(&self) -> Vec<&'static str> {
        self.inner.by_name.values().map(|e| e.name).collect()
    }

    /// The handler serving `service` (matched in kebab case).
    pub fn handler_for(&self, service: &str) -> Option<Arc<dyn Handler>> {
        self.inner.by_name.get(&kebab(service)).map(|e| e.handler.clone())
    }
}

impl Acceptor for ServiceRouter {
    fn decide(&self, request: &ConnectionRequest) -> AcceptDecision {
        let reason = match request.metadata.get_str(SERVICE_KEY) {
            None => format!("no `{SERVICE_KEY}` entry in the OpenConnection metadata: cannot tell which service"),
            Some(name) => match self.inner.by_name.get(&kebab(name)) {
                Some(entry) => {
                    return AcceptDecision::Accept {
                        settings: self.inner.settings.clone(),
                        metadata: Metadata::new().with_str(SERVICE_KEY, entry.name, 0),
                        handler: Some(entry.handler.clone()),
                    };
                }
                None => format!("unknown service {name:?}; served here: {}", self.service_names().join(", ")),
            },
        };
        AcceptDecision::Reject(Metadata::new().with_str(REJECT_REASON_KEY, reason, 0))
    }
}

impl Handler for ServiceRouter {
    fn handle(&self, call: Call) -> BoxFuture {
        let method = match evolve::routed_method(&call) {
            Ok(m) => m,
            Err(reason) => return Box::pin(async move { call.reply.invalid_payload(reason) }),
        };
        match self.inner.by_method.get(&method) {
            Some(h) => h.handle(call),
            None => Box::pin(async move { call.reply.unknown_method() }),
        }
    }

    fn policy(&self, method: MethodId) -> crate::plumbing::operations::MethodPolicy {
        self.inner.by_method.get(&method).map(|h| h.policy(method)).unwrap_or_default()
    }
}
