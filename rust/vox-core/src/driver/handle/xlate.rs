//! Channel items of a method whose item type differs between the two
//! sides (rule `schema.evolution`: the receiver translates). The caller's
//! kept `Rx` translates each item with the plan the schema exchange built,
//! set on the pair before the call binds it; a handler's `Rx` gets its plan
//! from the call's binder. No `Tx` translates.

use super::slot::{ChannelSlot, SlotRef, SlotState, index};
use super::{ChannelError, Role};
use crate::schema::{Plan, SchemaError};
use bytes::Bytes;
use std::sync::{Arc, OnceLock};

/// The translation of one channel's items, once known.
pub(crate) type Xlate = Arc<OnceLock<ItemPlan>>;

/// A channel item plan and the method it belongs to (for errors).
pub(crate) struct ItemPlan {
    plan: Plan,
    method: String,
}

impl ItemPlan {
    pub(crate) fn translate(&self, item: &[u8]) -> Result<Bytes, ChannelError> {
        self.plan.translate(item).map(Bytes::from).map_err(|e| incompatible(&self.method, e))
    }
}

fn incompatible(method: &str, e: SchemaError) -> ChannelError {
    ChannelError::IncompatibleSchema { method: method.to_owned(), path: e.path, field: e.field, reason: e.reason }
}

/// A plan known from the start (a handler's end).
pub(crate) fn fixed(plan: Plan, method: String) -> Xlate {
    Arc::new(OnceLock::from(ItemPlan { plan, method }))
}

/// `item` translated if a plan is set, else as it is.
pub(super) fn apply(xlate: &Option<Xlate>, item: Bytes) -> Result<Bytes, ChannelError> {
    match xlate.as_ref().and_then(|x| x.get()) {
        Some(p) => p.translate(&item),
        None => Ok(item),
    }
}

impl ChannelSlot {
    /// As `keep_early`, for a typed item of a caller-side pair that may
    /// translate: a kept item is translated under the pair's lock, so an
    /// item kept while the plan is being set is never left untranslated.
    pub(super) fn keep_early_translated(&mut self, item: Bytes, xlate: &Xlate) -> Result<Option<Bytes>, ChannelError> {
        let ChannelSlot::Paired(pair, credit) = self else { return Ok(Some(item)) };
        let mut ends = pair.ends.lock();
        match &mut ends[index(Role::Sender)] {
            SlotState::Unbound { early, .. } if !early.closed && early.items.len() < *credit as usize => {
                let item = match xlate.get() {
                    Some(p) => p.translate(&item)?,
                    None => item,
                };
                early.items.push(item);
                Ok(None)
            }
            _ => Ok(Some(item)),
        }
    }
}

impl SlotRef {
    /// Sets the item plan of the kept end (before the call binds it) and
    /// translates the items a `Tx` end kept before the call.
    pub(crate) fn translate_items(&self, plan: Plan, method: String) -> Result<(), ChannelError> {
        let mut ends = self.pair.ends.lock();
        let plan = self.pair.xlate.get_or_init(|| ItemPlan { plan, method });
        if let SlotState::Unbound { early, .. } = &mut ends[index(self.role)] {
            for item in &mut early.items {
                *item = plan.translate(item)?;
            }
        }
        Ok(())
    }
}
