//! The type schemas and signatures of Testbed methods: the subject's
//! version (`rust/vox-subject/src/testbed.rs`, which the harness must
//! describe exactly as the subject does to compare hashes) and the
//! harness's own evolved versions.

use super::model::{Arg, Chan, Hash, Kind, Node, Signature, TypeSchema, field, variant};
use crate::error::CaseResult;
use crate::fail;
use vox_core::wire::ChannelDirection;

pub fn unit() -> TypeSchema {
    TypeSchema::leaf(Node::Unit)
}
pub fn u32_() -> TypeSchema {
    TypeSchema::leaf(Node::U32)
}
pub fn u64_() -> TypeSchema {
    TypeSchema::leaf(Node::U64)
}
pub fn i32_() -> TypeSchema {
    TypeSchema::leaf(Node::I32)
}
pub fn i64_() -> TypeSchema {
    TypeSchema::leaf(Node::I64)
}
pub fn string() -> TypeSchema {
    TypeSchema::leaf(Node::String)
}
pub fn opt_string() -> TypeSchema {
    TypeSchema { graph: vec![Node::Option(1), Node::String], root: 0 }
}

/// The subject's `Person { id: u32, name: String, age: u8 }`.
pub fn person() -> TypeSchema {
    let fields = vec![field("id", 1), field("name", 2), field("age", 3)];
    TypeSchema {
        graph: vec![Node::Struct { name: "Person".into(), fields }, Node::U32, Node::String, Node::U8],
        root: 0,
    }
}

/// The subject's `enum LookupError { NotFound(u32) }`.
pub fn lookup_error() -> TypeSchema {
    let variants = vec![variant("NotFound", Kind::Newtype, vec![field("0", 1)])];
    TypeSchema { graph: vec![Node::Enum { name: "LookupError".into(), variants }, Node::U32], root: 0 }
}

/// The subject's `enum MathError { DivisionByZero }`.
pub fn math_error() -> TypeSchema {
    let variants = vec![variant("DivisionByZero", Kind::Unit, vec![])];
    TypeSchema::leaf(Node::Enum { name: "MathError".into(), variants })
}

/// The harness's Person: reordered, with an added optional `nickname`
/// (one `String` node shared by `nickname` and `name`, as a builder that
/// describes each type once makes it).
pub fn person_evolved() -> TypeSchema {
    let fields = vec![field("age", 1), field("nickname", 2), field("name", 3), field("id", 4)];
    let graph =
        vec![Node::Struct { name: "Person".into(), fields }, Node::U8, Node::Option(3), Node::String, Node::U32];
    TypeSchema { graph, root: 0 }
}

/// The harness's LookupError: a variant `Gone` added before `NotFound`
/// (so `NotFound` is index 1 here).
pub fn lookup_error_evolved() -> TypeSchema {
    let variants = vec![variant("Gone", Kind::Unit, vec![]), variant("NotFound", Kind::Newtype, vec![field("0", 1)])];
    TypeSchema { graph: vec![Node::Enum { name: "LookupError".into(), variants }, Node::U32], root: 0 }
}

/// The hash of a type the harness built itself (so it has no dangling
/// reference).
pub fn h(t: &TypeSchema) -> Hash {
    t.hash().unwrap_or_default()
}

/// A signature and the schemas of the types it names.
pub struct Method {
    pub signature: Signature,
    pub types: Vec<TypeSchema>,
}

impl Method {
    /// `args` (name, type), `ret`, `err`, `channels` (name, direction,
    /// item).
    fn new(
        args: Vec<(&str, TypeSchema)>,
        ret: TypeSchema,
        err: Option<TypeSchema>,
        channels: Vec<(&str, ChannelDirection, TypeSchema)>,
    ) -> Method {
        let mut types: Vec<TypeSchema> = Vec::new();
        let mut named = |t: TypeSchema| {
            let hash = h(&t);
            if !types.iter().any(|x| h(x) == hash) {
                types.push(t);
            }
            hash
        };
        let args = args.into_iter().map(|(n, t)| Arg { name: n.into(), ty: named(t) }).collect();
        let ret = named(ret);
        let err = err.map(&mut named);
        let channels =
            channels.into_iter().map(|(n, direction, t)| Chan { name: n.into(), direction, item: named(t) }).collect();
        Method { signature: Signature { args, ret, err, channels }, types }
    }

    /// The schema of the type `hash`, if this method names it.
    pub fn type_of(&self, hash: &Hash) -> Option<&TypeSchema> {
        self.types.iter().find(|t| h(t) == *hash)
    }
}

/// The subject's signature of Testbed method `name` (the methods the
/// schema cases use).
pub fn subject(name: &str) -> CaseResult<Method> {
    use ChannelDirection::HandlerToCaller;
    Ok(match name {
        "reverse" => Method::new(vec![("s", string())], string(), None, vec![]),
        "lookup" => Method::new(vec![("id", u32_())], person(), Some(lookup_error()), vec![]),
        "divide" => Method::new(vec![("a", i64_()), ("b", i64_())], i64_(), Some(math_error()), vec![]),
        "generate" => Method::new(vec![("n", u32_())], unit(), None, vec![("out", HandlerToCaller, i32_())]),
        other => fail!("internal: no subject signature of {other}"),
    })
}

/// The harness's own (another version's) signature of Testbed method
/// `name`, as [`subject`]'s with the changes each case relies on.
pub fn evolved(name: &str) -> CaseResult<Method> {
    use ChannelDirection::HandlerToCaller;
    Ok(match name {
        // An added optional argument before `s` (the subject, as caller,
        // can translate its own arguments into this).
        "reverse" => Method::new(vec![("prefix", opt_string()), ("s", string())], string(), None, vec![]),
        // Reordered, with an argument the subject lacks (skipped) and an
        // optional one (skipped too): only the subject as handler can take
        // it.
        "reverse_reordered" => {
            Method::new(vec![("count", u64_()), ("s", string()), ("prefix", opt_string())], string(), None, vec![])
        }
        "lookup" => Method::new(vec![("id", u32_())], person_evolved(), Some(lookup_error_evolved()), vec![]),
        // divide returns a String here: a changed return type.
        "divide" => Method::new(vec![("a", i64_()), ("b", i64_())], string(), Some(string()), vec![]),
        // `b` is a String here: a changed argument type.
        "divide_retyped" => Method::new(vec![("a", i64_()), ("b", string())], i64_(), Some(math_error()), vec![]),
        // `id` renamed `key`: the subject's required `id` is missing.
        "lookup_renamed" => Method::new(vec![("key", u32_())], person(), Some(lookup_error()), vec![]),
        // generate's items are i64 here.
        "generate" => Method::new(vec![("n", u32_())], unit(), None, vec![("out", HandlerToCaller, i64_())]),
        other => fail!("internal: no evolved signature of {other}"),
    })
}
