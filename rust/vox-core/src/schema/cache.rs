//! Per connection, the caller side: what it learnt about each method's
//! schema on the other side, the plans built from it (once per connection
//! and method), and the exchange's record of which type schemas crossed
//! (once per connection and type).

use super::error::{Path, SchemaError};
use super::exchange::{SchemaAnswer, SchemaQuery};
use super::hash::SchemaHash;
use super::limits::SchemaLimits;
use super::method::MethodSchema;
use super::plan::Plan;
use super::store::TypeStore;
use crate::wire::{ChannelDirection, MethodId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::OnceCell;

/// How a caller treats one method on one connection.
#[derive(Clone, Debug)]
pub enum Translation {
    /// The handler side has the same schema, or says nothing about schemas
    /// (an older peer, an unknown method): the plain postcard path.
    Same,
    /// The schemas differ and can be translated.
    Translate(Arc<MethodPlans>),
    /// The schemas differ in a way no value can cross: every call fails.
    Incompatible(SchemaError),
}

/// The plans of one method whose two sides differ. Each side translates
/// what it receives (rule `schema.evolution`): the caller uses the plans of
/// the return value, the error and handler-to-caller items. The plans of
/// the arguments and caller-to-handler items are the ones the handler side
/// builds; the caller builds them too, so that a difference no value can
/// cross fails at the exchange, before any call is sent.
#[derive(Clone, Debug)]
pub struct MethodPlans {
    /// Local arguments → remote.
    pub args: Plan,
    /// Remote return value → local.
    pub ret: Plan,
    /// Remote error → local (methods returning `Result`).
    pub err: Option<Plan>,
    /// Per channel argument, in local argument order.
    pub channels: Vec<Plan>,
    /// Which way each channel flows.
    directions: Vec<ChannelDirection>,
}

impl MethodPlans {
    /// Plans the translation between the caller's schema `local` and the
    /// handler side's `remote`.
    ///
    /// # Errors
    /// The first difference no value can cross.
    pub fn build(local: &MethodSchema, remote: &MethodSchema) -> Result<MethodPlans, SchemaError> {
        let (l, r) = (&local.graph, &remote.graph);
        let args = Plan::build_at(l, local.args, r, remote.args, "args")?;
        let ret = Plan::build_at(r, remote.ret, l, local.ret, "return")?;
        let err = match (local.err, remote.err) {
            (Some(le), Some(re)) => Some(Plan::build_at(r, re, l, le, "error")?),
            (None, None) => None,
            _ => {
                return Err(
                    Path::root("return").error("one side returns Result<T, E> and the other a plain value".to_owned())
                );
            }
        };
        let mut channels = Vec::with_capacity(local.channels.len());
        for c in &local.channels {
            let label = format!("channel {}", c.name);
            let Some(rc) = remote.channels.iter().find(|x| x.name == c.name) else {
                return Err(Path::root(&label).error("the handler side has no channel argument of this name"));
            };
            if rc.direction != c.direction {
                return Err(Path::root(&label).error("the channel flows the other way on the handler side"));
            }
            channels.push(match c.direction {
                ChannelDirection::CallerToHandler => Plan::build_at(l, c.item, r, rc.item, &label)?,
                ChannelDirection::HandlerToCaller => Plan::build_at(r, rc.item, l, c.item, &label)?,
            });
        }
        Ok(MethodPlans { args, ret, err, channels, directions: local.channels.iter().map(|c| c.direction).collect() })
    }

    /// The plan of channel `index` if this side translates its items: a
    /// handler-to-caller channel whose item types differ.
    pub fn received_items(&self, index: usize) -> Option<&Plan> {
        let received = self.directions.get(index) == Some(&ChannelDirection::HandlerToCaller);
        self.channels.get(index).filter(|p| received && !p.is_identity())
    }

    /// Whether everything the caller receives has the same layout on both
    /// sides (only what the handler receives differs).
    fn receives_as_is(&self) -> bool {
        self.ret.is_identity()
            && self.err.as_ref().is_none_or(Plan::is_identity)
            && (0..self.channels.len()).all(|i| self.received_items(i).is_none())
    }
}

/// The schema state of one connection's caller side, shared by every
/// clone of its caller. Holds one entry per method this side has called
/// (bounded by the local program), and the handler side's type schemas
/// (bounded by [`SchemaLimits`]).
#[derive(Debug, Default)]
pub struct SchemaCache {
    methods: parking_lot::Mutex<HashMap<MethodId, Arc<OnceCell<Translation>>>>,
    /// One exchange at a time per connection, so a type two first calls
    /// share crosses once.
    exchange: tokio::sync::Mutex<Exchange>,
}

impl SchemaCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of `method`: already known (the fast path), or to be
    /// filled once by whoever gets there first (the others wait).
    pub fn entry(&self, method: MethodId) -> Arc<OnceCell<Translation>> {
        self.methods.lock().entry(method).or_default().clone()
    }

    /// The connection's exchange state, held for the whole of one
    /// exchange.
    pub(crate) async fn exchange(&self) -> tokio::sync::MutexGuard<'_, Exchange> {
        self.exchange.lock().await
    }
}

/// Which type schemas crossed on one connection: the caller's own that the
/// handler side acknowledged (by answering), and the handler side's it
/// received.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    acked: HashSet<SchemaHash>,
    store: TypeStore,
}

impl Exchange {
    /// The query for `method`, whose local schema is `local`: its
    /// signature, the type schemas not acknowledged yet, the handler
    /// side's types already held.
    pub(crate) fn query(&self, method: MethodId, local: &MethodSchema) -> SchemaQuery {
        let (signature, types) = local.split();
        let types = types.into_iter().filter(|(h, _)| !self.acked.contains(h)).map(|(_, t)| t).collect();
        SchemaQuery { method, signature, types, held: self.store.hashes() }
    }

    /// What the answer to the query for `local` (named `name`,
    /// `Service.method`) means for its calls. The caller's types are
    /// acknowledged by any answer.
    pub(crate) fn on_answer(&mut self, local: &MethodSchema, name: &str, answer: SchemaAnswer) -> Translation {
        let (ours, _) = local.split();
        self.acked.extend(ours.hashes());
        let (signature, types) = match answer {
            SchemaAnswer::Same => return Translation::Same,
            SchemaAnswer::Different { signature, types } => (signature, types),
        };
        let invalid = |reason: String| {
            Translation::Incompatible(SchemaError {
                path: "schema answer".into(),
                field: String::new(),
                reason: format!("the peer's schema answer is invalid: {reason}"),
            })
        };
        if let Err(e) = self.store.admit(types, &signature.hashes(), &SchemaLimits::DEFAULT) {
            return invalid(e);
        }
        // The caller's own types, named by the handler's signature, are
        // looked up locally: the answer leaves them out.
        let own = local.split().1;
        let lookup = |h: &SchemaHash| self.store.get(h).or_else(|| own.iter().find(|(x, _)| x == h).map(|(_, t)| t));
        let remote = match MethodSchema::assemble(name, &signature, lookup) {
            Ok(r) => r,
            Err(e) => return invalid(e),
        };
        match MethodPlans::build(local, &remote) {
            Ok(p) if p.receives_as_is() => Translation::Same,
            Ok(p) => Translation::Translate(Arc::new(p)),
            Err(e) => Translation::Incompatible(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Field, Node, SchemaBuilder};

    /// `m(a: u32[, b: Option<u32>]) -> R` where R is a struct with `x: u32`
    /// and, if `ret_note`, an added `note: Option<u32>`.
    fn method(extra_arg: bool, ret_note: bool) -> MethodSchema {
        let mut b = SchemaBuilder::new();
        let u = b.of::<u32>();
        let o = b.of::<Option<u32>>();
        let mut fields = vec![Field { name: "x".into(), ty: u, default: None }];
        if ret_note {
            fields.push(Field { name: "note".into(), ty: o, default: None });
        }
        let ret = b.node(Node::Struct { name: "R".into(), fields });
        let mut args = vec![("a", u)];
        if extra_arg {
            args.push(("b", o));
        }
        MethodSchema::new("m", b, args, ret, None, vec![])
    }

    fn answer(remote: &MethodSchema) -> SchemaAnswer {
        let (signature, types) = remote.split();
        SchemaAnswer::Different { signature, types: types.into_iter().map(|(_, t)| t).collect() }
    }

    #[test]
    fn schema_evolution_caller_takes_the_plain_path_when_only_what_the_handler_receives_differs() {
        let local = method(false, false);
        let mut x = Exchange::default();
        // The handler has an added argument: it translates; the caller
        // receives the same layout and keeps the plain path.
        let t = x.on_answer(&local, "S.m", answer(&method(true, false)));
        assert!(matches!(t, Translation::Same), "{t:?}");
        // The handler's return value has an added field: the caller translates.
        let t = x.on_answer(&local, "S.m", answer(&method(false, true)));
        assert!(matches!(t, Translation::Translate(_)), "{t:?}");
    }

    #[test]
    fn schema_identity_a_query_leaves_out_what_was_acknowledged_and_names_what_is_held() {
        let local = method(false, false);
        let mut x = Exchange::default();
        let first = x.query(MethodId(1), &local);
        assert_eq!(first.types.len(), 2, "u32 and R, each once");
        assert!(first.held.is_empty());
        let _ = x.on_answer(&local, "S.m", answer(&method(false, true)));
        let second = x.query(MethodId(1), &local);
        assert!(second.types.is_empty(), "acknowledged by the answer");
        let held = method(false, true).split().1;
        let r = held.iter().find(|(_, t)| matches!(t.graph.get(t.root), Some(Node::Struct { .. }))).unwrap();
        assert!(second.held.contains(&r.0), "the handler's R is held: {:?}", second.held);
    }
}
