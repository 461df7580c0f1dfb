//! The handler side of one connection (rule `schema.evolution`: the
//! receiver translates). It answers the schema queries of its peer's
//! callers, keeps their type schemas (bounded, `store.rs`) and, per method
//! whose caller signature differs, the plan that turns the caller's
//! arguments and caller-to-handler items into this side's layout.
//!
//! Pure state: no IO. The driver core owns one per connection (carried
//! across a resume with the root connection) and asks [`inbound`] per
//! request; while no method needs translating that is one atomic load.
//!
//! [`inbound`]: HandlerSchemas::inbound

use super::error::{Path, SchemaError};
use super::exchange::{SchemaAnswer, SchemaQuery};
use super::limits::SchemaLimits;
use super::method::MethodSchema;
use super::plan::Plan;
use super::store::TypeStore;
use crate::wire::{ChannelDirection, MethodId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How the handler side takes the requests of one method whose caller
/// schema differs.
#[derive(Clone, Debug)]
pub(crate) enum Inbound {
    /// Translate the arguments and caller-to-handler items.
    Translate(Arc<InboundPlans>),
    /// No value can cross: every request fails with `IncompatibleSchema`.
    Incompatible(SchemaError),
}

/// The plans of one method, from its caller's layout into this side's.
#[derive(Debug)]
pub(crate) struct InboundPlans {
    /// `Service.method`, for errors.
    pub(crate) method: String,
    /// The arguments (`None`: the same layout).
    pub(crate) args: Option<Plan>,
    /// Per channel argument, in this side's order: the items of a
    /// caller-to-handler channel whose item type differs.
    pub(crate) channels: Vec<Option<Plan>>,
}

/// The schema state of one connection's handler side.
#[derive(Debug, Default)]
pub(crate) struct HandlerSchemas {
    translating: AtomicBool,
    state: parking_lot::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    store: TypeStore,
    /// Only methods this side serves (the query is answered only for
    /// them), so bounded by the local program.
    inbound: HashMap<MethodId, Inbound>,
}

impl HandlerSchemas {
    /// How to take a request of `method`: `None` for the plain path.
    pub(crate) fn inbound(&self, method: MethodId) -> Option<Inbound> {
        if !self.translating.load(Ordering::Acquire) {
            return None;
        }
        self.state.lock().inbound.get(&method).cloned()
    }

    /// Answers `query` for the local method `local` (named `name`,
    /// `Service.method`), keeping the caller's types and, if the two
    /// signatures differ, the plan for its requests.
    ///
    /// # Errors
    /// The query is malformed or passes a bound: said in words, nothing
    /// kept.
    pub(crate) fn answer(&self, query: SchemaQuery, local: &MethodSchema, name: &str) -> Result<SchemaAnswer, String> {
        let (ours, types) = local.split();
        let mut state = self.state.lock();
        let wanted = query.signature.hashes();
        state.store.admit(query.types, &wanted, &SchemaLimits::DEFAULT)?;
        if query.signature == ours {
            state.inbound.remove(&query.method);
            return Ok(SchemaAnswer::Same);
        }
        let theirs = MethodSchema::assemble(name, &query.signature, |h| state.store.get(h))?;
        match plans(&theirs, local, name) {
            Ok(None) => {
                state.inbound.remove(&query.method);
            }
            Ok(Some(p)) => {
                tracing::debug!(method = name, "caller schema differs; its requests are translated");
                state.inbound.insert(query.method, Inbound::Translate(Arc::new(p)));
            }
            Err(e) => {
                tracing::debug!(method = name, error = %e, "caller schema is incompatible");
                state.inbound.insert(query.method, Inbound::Incompatible(e));
            }
        }
        self.translating.store(!state.inbound.is_empty(), Ordering::Release);
        let known = |h: &super::hash::SchemaHash| query.held.contains(h) || wanted.contains(h);
        let types = types.into_iter().filter(|(h, _)| !known(h)).map(|(_, t)| t).collect();
        Ok(SchemaAnswer::Different { signature: ours, types })
    }
}

/// The plans from the caller's schema `theirs` into `ours`; `None` when
/// nothing the handler receives needs translating.
fn plans(theirs: &MethodSchema, ours: &MethodSchema, name: &str) -> Result<Option<InboundPlans>, SchemaError> {
    let args = Plan::build_at(&theirs.graph, theirs.args, &ours.graph, ours.args, "args")?;
    let mut channels = Vec::with_capacity(ours.channels.len());
    for c in &ours.channels {
        let label = format!("channel {}", c.name);
        let Some(tc) = theirs.channels.iter().find(|x| x.name == c.name) else {
            return Err(Path::root(&label).error("the caller has no channel argument of this name"));
        };
        if tc.direction != c.direction {
            return Err(Path::root(&label).error("the channel flows the other way on the caller's side"));
        }
        channels.push(match c.direction {
            ChannelDirection::CallerToHandler => {
                Some(Plan::build_at(&theirs.graph, tc.item, &ours.graph, c.item, &label)?).filter(|p| !p.is_identity())
            }
            ChannelDirection::HandlerToCaller => None,
        });
    }
    let args = Some(args).filter(|p| !p.is_identity());
    if args.is_none() && channels.iter().all(Option::is_none) {
        return Ok(None);
    }
    Ok(Some(InboundPlans { method: name.to_owned(), args, channels }))
}
