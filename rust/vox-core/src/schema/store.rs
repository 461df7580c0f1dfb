//! The type schemas one side keeps of its peer on one connection: what the
//! peer sent once and may name again in a later signature (rule
//! `schema.identity`). Bounded by [`SchemaLimits::max_types`] and
//! [`SchemaLimits::max_stored_nodes`], so a peer cannot make this side keep
//! more than a few MiB; past the bound the exchange that needed more fails,
//! and nothing already held is forgotten (a signature may rely on it).

use super::hash::SchemaHash;
use super::limits::SchemaLimits;
use super::signature::TypeSchema;
use std::collections::HashMap;

/// The peer's type schemas, by the hash this side computed.
#[derive(Debug, Default)]
pub(crate) struct TypeStore {
    types: HashMap<SchemaHash, TypeSchema>,
    nodes: usize,
}

impl TypeStore {
    /// The type schema of `hash`, if the peer sent it.
    pub(crate) fn get(&self, hash: &SchemaHash) -> Option<&TypeSchema> {
        self.types.get(hash)
    }

    /// The hashes held (told to the peer so it does not send them again).
    pub(crate) fn hashes(&self) -> Vec<SchemaHash> {
        self.types.keys().copied().collect()
    }

    /// Keeps the type schemas of one message that `wanted` names and that
    /// are not held yet; the others are dropped. All or nothing: on an
    /// error nothing is kept.
    ///
    /// # Errors
    /// A schema whose references leave its table, or a bound of `limits`
    /// that keeping them would pass.
    pub(crate) fn admit(
        &mut self,
        received: Vec<TypeSchema>,
        wanted: &[SchemaHash],
        limits: &SchemaLimits,
    ) -> Result<(), String> {
        let mut new: Vec<(SchemaHash, TypeSchema)> = Vec::new();
        let mut nodes = 0usize;
        for t in received {
            t.check()?;
            let h = t.hash();
            if !wanted.contains(&h) || self.types.contains_key(&h) || new.iter().any(|(x, _)| *x == h) {
                continue;
            }
            nodes += t.graph.nodes.len();
            new.push((h, t));
        }
        if self.types.len() + new.len() > limits.max_types {
            return Err(format!(
                "schema limit exceeded: the peer's type schemas on this connection would be {} (at most {})",
                self.types.len() + new.len(),
                limits.max_types
            ));
        }
        if self.nodes + nodes > limits.max_stored_nodes {
            return Err(format!(
                "schema limit exceeded: the peer's type schemas on this connection would hold {} nodes (at most {})",
                self.nodes + nodes,
                limits.max_stored_nodes
            ));
        }
        self.nodes += nodes;
        self.types.extend(new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaGraph;

    fn of<T: crate::schema::Schema>() -> TypeSchema {
        let (graph, root) = SchemaGraph::of::<T>();
        TypeSchema { graph, root }
    }

    #[test]
    fn schema_identity_store_keeps_only_named_types_once() {
        let mut store = TypeStore::default();
        let (a, b) = (of::<Vec<String>>(), of::<(u8, bool)>());
        store.admit(vec![a.clone(), b.clone(), a.clone()], &[a.hash()], &SchemaLimits::DEFAULT).unwrap();
        assert_eq!(store.hashes(), vec![a.hash()]);
        assert!(store.get(&b.hash()).is_none(), "a type no signature names is not kept");
        store.admit(vec![a.clone()], &[a.hash()], &SchemaLimits::DEFAULT).unwrap();
        assert_eq!(store.nodes, a.graph.nodes.len(), "a type held is not counted twice");
    }

    #[test]
    fn session_decode_bounded_store_refuses_past_its_limits_and_keeps_what_it_had() {
        let limits = SchemaLimits { max_types: 1, ..SchemaLimits::DEFAULT };
        let mut store = TypeStore::default();
        let (a, b) = (of::<u8>(), of::<String>());
        store.admit(vec![a.clone()], &[a.hash()], &limits).unwrap();
        let err = store.admit(vec![b.clone()], &[b.hash()], &limits).unwrap_err();
        assert!(err.contains("at most 1"), "{err}");
        assert!(store.get(&a.hash()).is_some() && store.get(&b.hash()).is_none());

        // Exactly at the node bound is kept; one more is not.
        let big = of::<(u8, u16, u32)>();
        let limits = SchemaLimits { max_stored_nodes: big.graph.nodes.len(), ..SchemaLimits::DEFAULT };
        let mut store = TypeStore::default();
        store.admit(vec![big.clone()], &[big.hash()], &limits).unwrap();
        let more = of::<u8>();
        assert!(store.admit(vec![more.clone()], &[more.hash()], &limits).is_err());

        let limits = SchemaLimits { max_stored_nodes: 2, ..SchemaLimits::DEFAULT };
        let mut store = TypeStore::default();
        let err = store.admit(vec![big.clone()], &[big.hash()], &limits).unwrap_err();
        assert!(err.contains("nodes"), "{err}");
        assert!(store.hashes().is_empty());
    }

    #[test]
    fn session_decode_bounded_store_refuses_a_dangling_reference() {
        let bad = TypeSchema {
            graph: SchemaGraph { nodes: vec![crate::schema::Node::Seq(crate::schema::TypeRef(7))] },
            root: crate::schema::TypeRef(0),
        };
        let mut store = TypeStore::default();
        assert!(store.admit(vec![bad.clone()], &[bad.hash()], &SchemaLimits::DEFAULT).is_err());
    }
}
