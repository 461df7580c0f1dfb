//! Builds a [`SchemaGraph`] from Rust types, once per type.

use super::Schema;
use super::model::{Node, SchemaGraph, TypeRef};
use std::any::TypeId;
use std::collections::HashMap;

/// Collects the nodes of the types it is asked about; each Rust type is
/// described once (so shared types appear once and recursive types become
/// cycles).
#[derive(Debug, Default)]
pub struct SchemaBuilder {
    nodes: Vec<Node>,
    seen: HashMap<TypeId, TypeRef>,
}

impl SchemaBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reference of `T`, describing it first if it is new.
    pub fn of<T: Schema>(&mut self) -> TypeRef {
        if let Some(r) = self.seen.get(&TypeId::of::<T>()) {
            return *r;
        }
        let r = T::describe(self);
        self.seen.insert(TypeId::of::<T>(), r);
        r
    }

    /// Adds a node that contains no reference to the type being described.
    pub fn node(&mut self, node: Node) -> TypeRef {
        let r = TypeRef(u32::try_from(self.nodes.len()).expect("fewer than 2^32 schema nodes"));
        self.nodes.push(node);
        r
    }

    /// Describes `T`, which may contain itself: its reference is reserved
    /// (and known to [`of`](Self::of)) before `build` runs. Derived impls
    /// of structs and enums use this.
    pub fn recursive<T: Schema>(&mut self, build: impl FnOnce(&mut Self) -> Node) -> TypeRef {
        let r = self.node(Node::Unit);
        self.seen.insert(TypeId::of::<T>(), r);
        let node = build(self);
        self.nodes[r.0 as usize] = node;
        r
    }

    /// A builder holding `nodes` already (a graph put together from type
    /// schemas received from a peer), to which more nodes can be added.
    pub(crate) fn from_nodes(nodes: Vec<Node>) -> Self {
        SchemaBuilder { nodes, seen: HashMap::new() }
    }

    /// The graph built so far.
    pub fn finish(self) -> SchemaGraph {
        SchemaGraph { nodes: self.nodes }
    }
}
