//! Bounds on schemas received from a peer (rule `session.decode.bounded`).
//!
//! Sequences inside a schema are decoded by the helpers below: each checks
//! the announced count against its limit before decoding any element, and
//! reserves at most [`MAX_PREALLOCATED_ELEMENTS`] up front, so a received
//! schema costs at most a constant factor of its encoded size.

use super::model::{Node, SchemaGraph, TypeRef};
use crate::wire::MAX_PREALLOCATED_ELEMENTS;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::marker::PhantomData;

/// The limits a received schema must respect.
///
/// Per message they bound what one decode may build; per connection
/// ([`max_types`](Self::max_types), [`max_stored_nodes`](Self::max_stored_nodes))
/// they bound what a peer can make this side keep: the type schemas it
/// sent, which later signatures may name again (rule `schema.identity`:
/// each type travels once per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaLimits {
    /// Nodes in one graph (default 1024).
    pub max_nodes: usize,
    /// Fields of one struct or variant, variants of one enum, elements of
    /// one tuple, channels of one method (default 256).
    pub max_members: usize,
    /// Bytes of one type, field or variant name (default 256).
    pub max_name_len: usize,
    /// Type schemas one message may carry or name as held, and type
    /// schemas a connection keeps of its peer (default 256).
    pub max_types: usize,
    /// Nodes of all the type schemas a connection keeps of its peer
    /// (default 16384: with the other limits, a few MiB at most).
    pub max_stored_nodes: usize,
}

impl SchemaLimits {
    /// The defaults, which decoding enforces.
    pub const DEFAULT: SchemaLimits =
        SchemaLimits { max_nodes: 1024, max_members: 256, max_name_len: 256, max_types: 256, max_stored_nodes: 16384 };
}

impl Default for SchemaLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

std::thread_local! {
    /// The limit a decode on this thread broke last (postcard keeps only
    /// "deserialization error" of a custom error's text).
    static HIT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

fn exceeded<E: serde::de::Error>(text: String) -> E {
    HIT.with(|h| *h.borrow_mut() = Some(text.clone()));
    E::custom(text)
}

/// Takes the limit the last decode on this thread broke, if any.
pub(crate) fn take_hit() -> Option<String> {
    HIT.with(|h| h.borrow_mut().take())
}

struct Bounded<T> {
    max: usize,
    what: &'static str,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let announced = seq.size_hint().unwrap_or(0);
        if announced > self.max {
            return Err(exceeded(format!("schema limit exceeded: {announced} {} (at most {})", self.what, self.max)));
        }
        let mut out = Vec::with_capacity(announced.min(MAX_PREALLOCATED_ELEMENTS));
        while let Some(v) = seq.next_element()? {
            if out.len() == self.max {
                return Err(exceeded(format!("schema limit exceeded: more than {} {}", self.max, self.what)));
            }
            out.push(v);
        }
        Ok(out)
    }
}

fn bounded<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    max: usize,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(Bounded { max, what, _t: PhantomData })
}

/// Sequence decoders for serde's `deserialize_with`, one per kind of list,
/// each bounded by its limit.
macro_rules! bounded_seqs {
    ($($name:ident: $limit:ident, $what:literal;)*) => {$(
        pub(crate) fn $name<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
            bounded(d, SchemaLimits::DEFAULT.$limit, $what)
        }
    )*};
}

bounded_seqs! {
    nodes_seq: max_nodes, "schema nodes";
    fields_seq: max_members, "fields";
    variants_seq: max_members, "variants";
    refs_seq: max_members, "tuple elements";
    channels_seq: max_members, "channels";
    args_seq: max_members, "arguments";
    types_seq: max_types, "type schemas";
    hashes_seq: max_types, "held type hashes";
}

pub(crate) fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.len() > SchemaLimits::DEFAULT.max_name_len {
        return Err(exceeded(format!(
            "schema limit exceeded: a name of {} bytes (at most {})",
            s.len(),
            SchemaLimits::DEFAULT.max_name_len
        )));
    }
    Ok(s)
}

/// The longest fixed-size array a received schema may declare.
pub(crate) const MAX_ARRAY_LEN: usize = 1 << 16;

/// Checks that every reference of `graph` (and each of `roots`) is inside
/// its node table; a received graph is only used after this.
pub(crate) fn check_refs(graph: &SchemaGraph, roots: impl IntoIterator<Item = TypeRef>) -> Result<(), String> {
    let len = graph.nodes.len();
    let ok = |r: &TypeRef| (r.0 as usize) < len;
    let bad = |r: &TypeRef| format!("schema node reference {} outside the table of {len} nodes", r.0);
    for r in roots {
        if !ok(&r) {
            return Err(bad(&r));
        }
    }
    for n in &graph.nodes {
        if let Node::Array(_, n) = n {
            if *n as usize > MAX_ARRAY_LEN {
                return Err(format!("schema limit exceeded: an array of {n} elements (at most {MAX_ARRAY_LEN})"));
            }
        }
        if let Some(r) = super::signature::refs(n).iter().find(|r| !ok(r)) {
            return Err(bad(r));
        }
    }
    Ok(())
}
