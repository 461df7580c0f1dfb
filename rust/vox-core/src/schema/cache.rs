//! Per connection: what the caller learnt about each method's schema on
//! the other side, and the plans built from it (once per connection and
//! method).

use super::error::{Path, SchemaError};
use super::method::MethodSchema;
use super::plan::Plan;
use crate::wire::{ChannelDirection, MethodId};
use std::collections::HashMap;
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

/// The plans of one method whose two sides differ. The caller translates
/// both ways: arguments and caller-to-handler items from its layout into
/// the handler's, the rest from the handler's into its own.
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
        Ok(MethodPlans { args, ret, err, channels })
    }
}

/// The schema state of one connection, shared by every clone of its
/// caller. Holds one entry per method this side has called (bounded by the
/// local program, not by the peer).
#[derive(Debug, Default)]
pub struct SchemaCache {
    methods: parking_lot::Mutex<HashMap<MethodId, Arc<OnceCell<Translation>>>>,
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

    /// What is known about `method`, without waiting.
    pub fn known(&self, method: MethodId) -> Option<Translation> {
        self.methods.lock().get(&method).and_then(|c| c.get().cloned())
    }
}
