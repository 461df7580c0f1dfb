//! The stable hash of a schema (rule `schema.identity`): BLAKE3 over a
//! canonical encoding of the graph reachable from the roots.
//!
//! The encoding is a pre-order walk from each root in turn: every node not
//! seen before is written as a tag byte and its contents (names as a
//! little-endian `u32` length and UTF-8 bytes, counts as `u32`, children
//! inline); a node seen before is the tag `ff` and the `u32` number it got
//! when first written. Node numbers follow the walk, not the table, so the
//! bytes depend only on the structure and names, never on the order in
//! which a builder happened to meet the types. Default values are not
//! hashed.

use super::model::{Field, Node, SchemaGraph, TypeRef, VariantKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// BLAKE3 of a schema's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SchemaHash(pub [u8; 32]);

impl std::fmt::Debug for SchemaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SchemaHash({self})")
    }
}

impl std::fmt::Display for SchemaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl SchemaHash {
    /// The hash of the type at `root`.
    pub fn of(graph: &SchemaGraph, root: TypeRef) -> SchemaHash {
        Self::of_roots(graph, &[root], &[])
    }

    /// The hash of several roots hashed together, with `labels` (for
    /// example channel names) mixed in before them.
    pub(crate) fn of_roots(graph: &SchemaGraph, roots: &[TypeRef], labels: &[&str]) -> SchemaHash {
        let mut c = Canon { graph, seen: HashMap::new(), out: blake3::Hasher::new() };
        c.out.update(b"vox.schema.v1");
        for l in labels {
            c.name(l);
        }
        for r in roots {
            c.visit(*r);
        }
        SchemaHash(*c.out.finalize().as_bytes())
    }
}

struct Canon<'g> {
    graph: &'g SchemaGraph,
    seen: HashMap<TypeRef, u32>,
    out: blake3::Hasher,
}

impl Canon<'_> {
    fn u32(&mut self, v: u32) {
        self.out.update(&v.to_le_bytes());
    }

    fn name(&mut self, s: &str) {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.out.update(s.as_bytes());
    }

    fn fields(&mut self, fields: &[Field]) {
        self.u32(u32::try_from(fields.len()).unwrap_or(u32::MAX));
        for f in fields {
            self.name(&f.name);
            self.visit(f.ty);
        }
    }

    fn visit(&mut self, r: TypeRef) {
        if let Some(n) = self.seen.get(&r) {
            let n = *n;
            self.out.update(&[0xff]);
            self.u32(n);
            return;
        }
        let number = u32::try_from(self.seen.len()).unwrap_or(u32::MAX);
        self.seen.insert(r, number);
        let graph = self.graph;
        let Some(node) = graph.get(r) else {
            // A dangling reference (only in an unvalidated graph).
            self.out.update(&[0xfe]);
            return;
        };
        self.out.update(&[tag(node)]);
        match node {
            Node::Option(t) | Node::Seq(t) => self.visit(*t),
            Node::Map(k, v) => {
                self.visit(*k);
                self.visit(*v);
            }
            Node::Tuple(ts) => {
                self.u32(u32::try_from(ts.len()).unwrap_or(u32::MAX));
                for t in ts {
                    self.visit(*t);
                }
            }
            Node::Array(t, n) => {
                self.u32(*n);
                self.visit(*t);
            }
            Node::Struct { name, fields } => {
                self.name(name);
                self.fields(fields);
            }
            Node::Enum { name, variants } => {
                self.name(name);
                self.u32(u32::try_from(variants.len()).unwrap_or(u32::MAX));
                for v in variants {
                    self.name(&v.name);
                    self.out.update(&[match v.kind {
                        VariantKind::Unit => 0,
                        VariantKind::Newtype => 1,
                        VariantKind::Tuple => 2,
                        VariantKind::Struct => 3,
                    }]);
                    self.fields(&v.fields);
                }
            }
            _ => {}
        }
    }
}

/// The tag byte of each node kind in the canonical encoding (stable: part
/// of the hash).
fn tag(n: &Node) -> u8 {
    match n {
        Node::Unit => 0,
        Node::Bool => 1,
        Node::U8 => 2,
        Node::U16 => 3,
        Node::U32 => 4,
        Node::U64 => 5,
        Node::U128 => 6,
        Node::I8 => 7,
        Node::I16 => 8,
        Node::I32 => 9,
        Node::I64 => 10,
        Node::I128 => 11,
        Node::F32 => 12,
        Node::F64 => 13,
        Node::Char => 14,
        Node::String => 15,
        Node::Bytes => 16,
        Node::Option(_) => 17,
        Node::Seq(_) => 18,
        Node::Map(..) => 19,
        Node::Tuple(_) => 20,
        Node::Array(..) => 21,
        Node::Struct { .. } => 22,
        Node::Enum { .. } => 23,
    }
}
