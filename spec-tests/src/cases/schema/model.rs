//! The schema messages of `docs/spec/wire.md` section 9, mirrored with the
//! harness's own serde types, and the canonical type hash of section 9.6,
//! written from the doc alone: a subject whose hashes differ from these
//! cannot interoperate with another implementation of the doc.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use vox_core::wire::{Blob, ChannelDirection, MethodId};

/// A `SchemaHash`: 32 raw bytes.
pub type Hash = [u8; 32];

/// The arguments of `vox.schema.describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaQuery {
    pub method: MethodId,
    pub signature: Signature,
    pub types: Vec<TypeSchema>,
    pub held: Vec<Hash>,
}

/// The return value of `vox.schema.describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SchemaAnswer {
    Same,
    Different { signature: Signature, types: Vec<TypeSchema> },
}

/// A `MethodSignature`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub args: Vec<Arg>,
    pub ret: Hash,
    pub err: Option<Hash>,
    pub channels: Vec<Chan>,
}

/// An `ArgSignature`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arg {
    pub name: String,
    pub ty: Hash,
}

/// A `ChannelSignature`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chan {
    pub name: String,
    pub direction: ChannelDirection,
    pub item: Hash,
}

/// A `TypeSchema`: one type's nodes and its root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeSchema {
    pub graph: Vec<Node>,
    pub root: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Node {
    Unit,
    Bool,
    U8,
    U16,
    U32,
    U64,
    U128,
    I8,
    I16,
    I32,
    I64,
    I128,
    F32,
    F64,
    Char,
    String,
    Bytes,
    Option(u32),
    Seq(u32),
    Map(u32, u32),
    Tuple(Vec<u32>),
    Array(u32, u32),
    Struct { name: String, fields: Vec<Field> },
    Enum { name: String, variants: Vec<Variant> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub ty: u32,
    pub default: Option<Blob>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Kind {
    Unit,
    Newtype,
    Tuple,
    Struct,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub name: String,
    pub kind: Kind,
    pub fields: Vec<Field>,
}

pub fn field(name: &str, ty: u32) -> Field {
    Field { name: name.into(), ty, default: None }
}

pub fn variant(name: &str, kind: Kind, fields: Vec<Field>) -> Variant {
    Variant { name: name.into(), kind, fields }
}

impl TypeSchema {
    /// A type of one node without references (a primitive).
    pub fn leaf(node: Node) -> TypeSchema {
        TypeSchema { graph: vec![node], root: 0 }
    }

    /// The node `r`, if it is in the table.
    pub fn node(&self, r: u32) -> Option<&Node> {
        self.graph.get(r as usize)
    }

    /// The hash of wire.md section 9.6, or why there is none (a reference
    /// outside the table).
    pub fn hash(&self) -> Result<Hash, String> {
        let mut w = Walk { graph: &self.graph, numbers: HashMap::new(), out: b"vox.schema.v1".to_vec() };
        w.visit(self.root)?;
        Ok(*blake3::hash(&w.out).as_bytes())
    }
}

impl Signature {
    /// Every type hash the signature names (arguments, return, error,
    /// channel items), each once.
    pub fn hashes(&self) -> Vec<Hash> {
        let all = self
            .args
            .iter()
            .map(|a| a.ty)
            .chain([self.ret])
            .chain(self.err)
            .chain(self.channels.iter().map(|c| c.item));
        let mut out: Vec<Hash> = Vec::new();
        for h in all {
            if !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }
}

/// The first 8 bytes of a hash in hex (as vox-core prints them), for
/// messages.
pub fn short(h: &Hash) -> String {
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `(name: hash, …) -> ret ! err [channel direction item, …]`.
impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args: Vec<String> = self.args.iter().map(|a| format!("{}: {}", a.name, short(&a.ty))).collect();
        write!(f, "({}) -> {}", args.join(", "), short(&self.ret))?;
        if let Some(e) = &self.err {
            write!(f, " ! {}", short(e))?;
        }
        for c in &self.channels {
            write!(f, " [{} {:?} {}]", c.name, c.direction, short(&c.item))?;
        }
        Ok(())
    }
}

/// The canonical pre-order walk: numbers nodes in the order first met.
struct Walk<'g> {
    graph: &'g [Node],
    numbers: HashMap<u32, u32>,
    out: Vec<u8>,
}

impl Walk<'_> {
    fn u32(&mut self, v: usize) {
        // Counts and lengths here are bounded far below u32::MAX by the
        // decode limits.
        self.out.extend_from_slice(&(v as u32).to_le_bytes());
    }

    fn text(&mut self, s: &str) {
        self.u32(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn fields(&mut self, fields: &[Field]) -> Result<(), String> {
        self.u32(fields.len());
        for f in fields {
            self.text(&f.name);
            self.visit(f.ty)?;
        }
        Ok(())
    }

    fn visit(&mut self, r: u32) -> Result<(), String> {
        if let Some(n) = self.numbers.get(&r) {
            let n = *n as usize;
            self.out.push(0xff);
            self.u32(n);
            return Ok(());
        }
        let number = self.numbers.len() as u32;
        self.numbers.insert(r, number);
        let graph = self.graph;
        let node = graph.get(r as usize).ok_or_else(|| format!("reference {r} outside the {} nodes", graph.len()))?;
        self.out.push(tag(node));
        match node {
            Node::Option(t) | Node::Seq(t) => self.visit(*t)?,
            Node::Map(k, v) => {
                self.visit(*k)?;
                self.visit(*v)?;
            }
            Node::Tuple(ts) => {
                self.u32(ts.len());
                for t in ts {
                    self.visit(*t)?;
                }
            }
            Node::Array(t, n) => {
                self.u32(*n as usize);
                self.visit(*t)?;
            }
            Node::Struct { name, fields } => {
                self.text(name);
                self.fields(fields)?;
            }
            Node::Enum { name, variants } => {
                self.text(name);
                self.u32(variants.len());
                for v in variants {
                    self.text(&v.name);
                    self.out.push(v.kind as u8);
                    self.fields(&v.fields)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The tag of a node: its variant index in the `Node` table.
fn tag(n: &Node) -> u8 {
    use Node::*;
    match n {
        Unit => 0,
        Bool => 1,
        U8 => 2,
        U16 => 3,
        U32 => 4,
        U64 => 5,
        U128 => 6,
        I8 => 7,
        I16 => 8,
        I32 => 9,
        I64 => 10,
        I128 => 11,
        F32 => 12,
        F64 => 13,
        Char => 14,
        String => 15,
        Bytes => 16,
        Option(_) => 17,
        Seq(_) => 18,
        Map(..) => 19,
        Tuple(_) => 20,
        Array(..) => 21,
        Struct { .. } => 22,
        Enum { .. } => 23,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hash_walk_numbers_nodes_by_walk_not_by_table() {
        // The same struct with its field types in either table order.
        let a = TypeSchema {
            graph: vec![
                Node::Struct { name: "P".into(), fields: vec![field("x", 1), field("y", 2)] },
                Node::U8,
                Node::String,
            ],
            root: 0,
        };
        let b = TypeSchema {
            graph: vec![
                Node::String,
                Node::U8,
                Node::Struct { name: "P".into(), fields: vec![field("x", 1), field("y", 0)] },
            ],
            root: 2,
        };
        assert_eq!(a.hash(), b.hash());
        // A field type changed: another hash; a default: the same.
        let mut c = a.clone();
        c.graph[1] = Node::U16;
        assert_ne!(a.hash(), c.hash());
        let mut d = a.clone();
        if let Node::Struct { fields, .. } = &mut d.graph[0] {
            fields[0].default = Some(Blob::from(vec![7u8]));
        }
        assert_eq!(a.hash(), d.hash());
    }

    #[test]
    fn hash_of_a_shared_node_differs_from_two_equal_nodes() {
        // wire.md 9.6: "met before" is per node, so sharing is part of the
        // hash (vox-core describes each Rust type once).
        let shared = TypeSchema { graph: vec![Node::Tuple(vec![1, 1]), Node::String], root: 0 };
        let apart = TypeSchema { graph: vec![Node::Tuple(vec![1, 2]), Node::String, Node::String], root: 0 };
        assert_ne!(shared.hash(), apart.hash());
    }

    #[test]
    fn hash_of_a_dangling_reference_is_refused() {
        assert!(TypeSchema { graph: vec![Node::Seq(3)], root: 0 }.hash().is_err());
    }

    /// The types of the known answers of wire.md 9.6, with their hashes
    /// (computed by vox-core).
    fn known() -> Vec<(TypeSchema, &'static str)> {
        let color = TypeSchema::leaf(Node::Enum {
            name: "Color".into(),
            variants: vec![variant("Red", Kind::Unit, vec![]), variant("Green", Kind::Unit, vec![])],
        });
        // A back reference: the walk meets node 0 again.
        let tree = TypeSchema {
            graph: vec![Node::Struct { name: "Tree".into(), fields: vec![field("kids", 1)] }, Node::Seq(0)],
            root: 0,
        };
        // One node referred to twice; the table order differs from the walk's.
        let pair = TypeSchema { graph: vec![Node::String, Node::Tuple(vec![0, 0])], root: 1 };
        // The array length is hashed before the element.
        let array = TypeSchema { graph: vec![Node::U8, Node::Array(0, 4)], root: 1 };
        let map = TypeSchema { graph: vec![Node::String, Node::I64, Node::Option(1), Node::Map(0, 2)], root: 3 };
        vec![
            (TypeSchema::leaf(Node::U32), "563efac3ccba5c65f6ad833bf2b65c028d42b4baa3cd4f9124b082bd683b763b"),
            (color, "7c743b226f1796de324c6996a86d14ffb5ce91c410d83a39086866f6c4e27a47"),
            (tree, "b37e4998dc8efe9719f0f6733e2a10aea8c4722c249ebe5fc55b70916f7ec9ca"),
            (pair, "88094a78d349e8b3dd87ed54bb81df36a1ca25f9698939c0267e174c87d91312"),
            (array, "5ad5990d8950d2963dca6c606b5a2795a876b8ad8f538fb2905d9f4fb392cd55"),
            (map, "ccb3273beb921b7120e76d1ce40a81b195bfb375a7615709516f68acb80bf09b"),
        ]
    }

    #[test]
    fn hash_matches_the_known_answers_of_wire_md() {
        // The walk above was written from the doc's description only.
        for (t, want) in known() {
            assert_eq!(hex(&t.hash().unwrap()), want, "{t:?}");
        }
    }

    /// The rows of the "Known answers" table of wire.md 9.6: (type,
    /// canonical bytes after the domain string, hash).
    fn doc_known_answers() -> Vec<(String, Vec<u8>, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/spec/wire.md");
        let text = std::fs::read_to_string(&path).expect("read docs/spec/wire.md");
        let start = text.find("Known answers:").expect("wire.md has a Known answers table");
        let rows = text[start..].lines().skip(1).skip_while(|l| l.trim().is_empty()).take_while(|l| l.starts_with('|'));
        let mut out = Vec::new();
        for row in rows.skip(2) {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`')).collect();
            let [ty, encoding, hash] = cells[..] else { panic!("row {row:?} does not have three cells") };
            let digits: String = encoding.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap_or_else(|e| panic!("{ty}: {e}")))
                .collect();
            out.push((ty.to_owned(), bytes, hash.to_owned()));
        }
        out
    }

    #[test]
    fn hash_known_answers_of_wire_md_are_the_blake3_of_their_encoding() {
        // Keeps the doc's worked encodings honest, and ties them to the
        // types above.
        let rows = doc_known_answers();
        assert_eq!(rows.len(), known().len(), "{rows:?}");
        for (ty, encoding, hash) in &rows {
            let mut input = b"vox.schema.v1".to_vec();
            input.extend(encoding);
            assert_eq!(hex(blake3::hash(&input).as_bytes()), *hash, "wire.md 9.6, row {ty}");
        }
        let doc: Vec<&str> = rows.iter().map(|(_, _, h)| h.as_str()).collect();
        let ours: Vec<&str> = known().into_iter().map(|(_, h)| h).collect();
        assert_eq!(doc, ours, "the known answers of wire.md 9.6 and of this test differ");
    }
}
