//! The schema model: a table of nodes referring to each other by index.

use super::limits::{fields_seq, name, nodes_seq, refs_seq, variants_seq};
use super::{Schema, SchemaBuilder};
use crate::wire::Blob;
use serde::{Deserialize, Serialize};

/// An index into a [`SchemaGraph`]'s node table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TypeRef(pub u32);

/// One type, as postcard lays it out (`docs/spec/wire.md` section 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    /// `()`: no bytes.
    Unit,
    /// One byte, 0 or 1.
    Bool,
    /// One raw byte.
    U8,
    /// Varint.
    U16,
    /// Varint.
    U32,
    /// Varint.
    U64,
    /// Varint.
    U128,
    /// One raw byte (two's complement).
    I8,
    /// Zigzag varint.
    I16,
    /// Zigzag varint.
    I32,
    /// Zigzag varint.
    I64,
    /// Zigzag varint.
    I128,
    /// Four raw bytes, little endian.
    F32,
    /// Eight raw bytes, little endian.
    F64,
    /// A UTF-8 character: length and bytes, like a string.
    Char,
    /// Length and UTF-8 bytes.
    String,
    /// Length and raw bytes (the same layout as a sequence of `u8`).
    Bytes,
    /// `00`, or `01` and the value.
    Option(TypeRef),
    /// Count, then the elements.
    Seq(TypeRef),
    /// Count, then key and value of each entry.
    Map(TypeRef, TypeRef),
    /// The elements in order, no count.
    Tuple(#[serde(deserialize_with = "refs_seq")] Vec<TypeRef>),
    /// `len` elements in order, no count.
    Array(TypeRef, u32),
    /// Named fields in declaration order (a tuple struct's are named `0`,
    /// `1`, …; a unit struct has none).
    Struct {
        /// The type's name (serde's, so `#[serde(rename)]` counts).
        #[serde(deserialize_with = "name")]
        name: String,
        /// The fields, in wire order.
        #[serde(deserialize_with = "fields_seq")]
        fields: Vec<Field>,
    },
    /// Variant index, then the variant's fields.
    Enum {
        /// The type's name.
        #[serde(deserialize_with = "name")]
        name: String,
        /// The variants, in index order.
        #[serde(deserialize_with = "variants_seq")]
        variants: Vec<Variant>,
    },
}

/// A named field of a struct or enum variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The field name (`0`, `1`, … for tuple fields).
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// Its type.
    pub ty: TypeRef,
    /// The postcard bytes of its declared default (`#[serde(default)]` or
    /// `#[vox(default)]`), used when a peer's version lacks the field. Not
    /// part of the hash: defaults do not change the layout. An `Option`
    /// field defaults to `None` without this.
    pub default: Option<Blob>,
}

/// How a variant's fields are written in Rust (the layout is the same for
/// all: the fields in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VariantKind {
    /// `A`.
    Unit,
    /// `A(T)`.
    Newtype,
    /// `A(T, U)`.
    Tuple,
    /// `A { x: T }`.
    Struct,
}

/// A named enum variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// The variant name.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// How it is written.
    pub kind: VariantKind,
    /// Its fields (named `0`, `1`, … unless struct-like).
    #[serde(deserialize_with = "fields_seq")]
    pub fields: Vec<Field>,
}

/// The nodes of one or more schemas; [`TypeRef`]s index into it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaGraph {
    /// The node table.
    #[serde(deserialize_with = "nodes_seq")]
    pub nodes: Vec<Node>,
}

impl SchemaGraph {
    /// The graph of `T` alone and its root.
    pub fn of<T: Schema>() -> (SchemaGraph, TypeRef) {
        let mut b = SchemaBuilder::new();
        let root = b.of::<T>();
        (b.finish(), root)
    }

    /// The node `r` refers to, if it is in the table.
    pub fn get(&self, r: TypeRef) -> Option<&Node> {
        self.nodes.get(r.0 as usize)
    }

    /// The name of the type at `r`, as used in error paths (`Point`,
    /// `Vec<Point>` is `[]`, primitives by their Rust name).
    pub fn type_name(&self, r: TypeRef) -> String {
        match self.get(r) {
            None => "?".into(),
            Some(Node::Struct { name, .. } | Node::Enum { name, .. }) => name.clone(),
            Some(Node::Option(t)) => format!("Option<{}>", self.type_name(*t)),
            Some(Node::Seq(t)) => format!("[{}]", self.type_name(*t)),
            Some(Node::Map(k, v)) => format!("Map<{}, {}>", self.type_name(*k), self.type_name(*v)),
            Some(Node::Tuple(ts)) => {
                let parts: Vec<String> = ts.iter().map(|t| self.type_name(*t)).collect();
                format!("({})", parts.join(", "))
            }
            Some(Node::Array(t, n)) => format!("[{}; {n}]", self.type_name(*t)),
            Some(other) => primitive_name(other).into(),
        }
    }
}

/// The Rust name of a primitive node.
pub(crate) fn primitive_name(n: &Node) -> &'static str {
    match n {
        Node::Unit => "()",
        Node::Bool => "bool",
        Node::U8 => "u8",
        Node::U16 => "u16",
        Node::U32 => "u32",
        Node::U64 => "u64",
        Node::U128 => "u128",
        Node::I8 => "i8",
        Node::I16 => "i16",
        Node::I32 => "i32",
        Node::I64 => "i64",
        Node::I128 => "i128",
        Node::F32 => "f32",
        Node::F64 => "f64",
        Node::Char => "char",
        Node::String => "String",
        Node::Bytes => "bytes",
        Node::Option(_) => "Option",
        Node::Seq(_) => "sequence",
        Node::Map(..) => "map",
        Node::Tuple(_) => "tuple",
        Node::Array(..) => "array",
        Node::Struct { .. } => "struct",
        Node::Enum { .. } => "enum",
    }
}
