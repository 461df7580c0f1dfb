//! A method by the hashes of the types it uses, and each type's schema on
//! its own: the units of the exchange (rule `schema.identity`: at most once
//! per connection and *type*). A [`MethodSchema`] splits into its
//! [`MethodSignature`] and one [`TypeSchema`] per type it names; the
//! receiving side puts them back together from the types it holds.

use super::hash::SchemaHash;
use super::limits::{args_seq, channels_seq, check_refs, name};
use super::method::MethodSchema;
use super::model::{Field, Node, SchemaGraph, TypeRef, Variant};
use crate::wire::ChannelDirection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One type's schema: the nodes reachable from its root, and nothing else.
/// Its hash is [`SchemaHash::of`] its root, computed by whoever holds it,
/// never taken from a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeSchema {
    /// The type's nodes.
    pub graph: SchemaGraph,
    /// The type itself.
    pub root: TypeRef,
}

impl TypeSchema {
    /// The type's hash.
    pub fn hash(&self) -> SchemaHash {
        SchemaHash::of(&self.graph, self.root)
    }

    /// The type at `root` of `graph`, cut out with what it reaches.
    pub fn extract(graph: &SchemaGraph, root: TypeRef) -> TypeSchema {
        let mut renumber: HashMap<TypeRef, TypeRef> = HashMap::new();
        let mut order = Vec::new();
        let mut stack = vec![root];
        while let Some(r) = stack.pop() {
            if renumber.contains_key(&r) {
                continue;
            }
            let Some(node) = graph.get(r) else { continue };
            renumber.insert(r, TypeRef(u32::try_from(order.len()).unwrap_or(u32::MAX)));
            order.push(r);
            stack.extend(refs(node).into_iter().rev());
        }
        let nodes = order
            .iter()
            .filter_map(|r| graph.get(*r))
            .map(|n| remap(n, &|t| renumber.get(&t).copied().unwrap_or(t)))
            .collect();
        TypeSchema { graph: SchemaGraph { nodes }, root: renumber.get(&root).copied().unwrap_or(root) }
    }

    /// Checks a type schema received from a peer: every reference inside
    /// its table.
    pub(crate) fn check(&self) -> Result<(), String> {
        check_refs(&self.graph, [self.root])
    }
}

/// One plain argument: its parameter name and the hash of its type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgSignature {
    /// The parameter name.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// The hash of its type.
    pub ty: SchemaHash,
}

/// One channel argument: name, direction and the hash of its item type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSignature {
    /// The parameter name.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// Which way its items flow.
    pub direction: ChannelDirection,
    /// The hash of the item type.
    pub item: SchemaHash,
}

/// A method by the hashes of the types it uses: two sides whose
/// signatures are equal have the same schema of the method.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodSignature {
    /// The plain arguments, in order.
    #[serde(deserialize_with = "args_seq")]
    pub args: Vec<ArgSignature>,
    /// The return type (`T` of `Result<T, E>`).
    pub ret: SchemaHash,
    /// The error type of a method returning `Result<T, E>`.
    pub err: Option<SchemaHash>,
    /// The channel arguments, in argument order.
    #[serde(deserialize_with = "channels_seq")]
    pub channels: Vec<ChannelSignature>,
}

impl MethodSignature {
    /// Every type hash the signature names, each once, in order.
    pub fn hashes(&self) -> Vec<SchemaHash> {
        let mut out: Vec<SchemaHash> = Vec::new();
        let all = self
            .args
            .iter()
            .map(|a| a.ty)
            .chain([self.ret])
            .chain(self.err)
            .chain(self.channels.iter().map(|c| c.item));
        for h in all {
            if !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }
}

impl MethodSchema {
    /// The method's signature and the schema of each type it names (in the
    /// order of [`MethodSignature::hashes`]).
    pub fn split(&self) -> (MethodSignature, Vec<(SchemaHash, TypeSchema)>) {
        let mut types: Vec<(SchemaHash, TypeSchema)> = Vec::new();
        let mut hash_of = |r: TypeRef| {
            let t = TypeSchema::extract(&self.graph, r);
            let h = t.hash();
            if !types.iter().any(|(x, _)| *x == h) {
                types.push((h, t));
            }
            h
        };
        let args = match self.graph.get(self.args) {
            Some(Node::Struct { fields, .. }) => fields.clone(),
            _ => Vec::new(),
        };
        let args = args.into_iter().map(|f| ArgSignature { name: f.name, ty: hash_of(f.ty) }).collect();
        let ret = hash_of(self.ret);
        let err = self.err.map(&mut hash_of);
        let channels = self
            .channels
            .iter()
            .map(|c| ChannelSignature { name: c.name.clone(), direction: c.direction, item: hash_of(c.item) })
            .collect();
        (MethodSignature { args, ret, err, channels }, types)
    }

    /// The method schema of `signature` for method `method`, from the type
    /// schemas `lookup` finds.
    ///
    /// # Errors
    /// A hash of the signature that `lookup` does not know.
    pub fn assemble<'t>(
        method: &str,
        signature: &MethodSignature,
        lookup: impl Fn(&SchemaHash) -> Option<&'t TypeSchema>,
    ) -> Result<MethodSchema, String> {
        let mut nodes: Vec<Node> = Vec::new();
        let mut placed: HashMap<SchemaHash, TypeRef> = HashMap::new();
        let mut place = |h: &SchemaHash| -> Result<TypeRef, String> {
            if let Some(r) = placed.get(h) {
                return Ok(*r);
            }
            let t = lookup(h).ok_or_else(|| format!("the signature names type {h}, whose schema was never sent"))?;
            let offset = u32::try_from(nodes.len()).map_err(|_| "too many schema nodes".to_owned())?;
            nodes.extend(t.graph.nodes.iter().map(|n| remap(n, &|r| TypeRef(r.0 + offset))));
            let r = TypeRef(t.root.0 + offset);
            placed.insert(*h, r);
            Ok(r)
        };
        let mut args = Vec::with_capacity(signature.args.len());
        for a in &signature.args {
            args.push((a.name.as_str(), place(&a.ty)?));
        }
        let ret = place(&signature.ret)?;
        let err = signature.err.as_ref().map(&mut place).transpose()?;
        let mut channels = Vec::with_capacity(signature.channels.len());
        for c in &signature.channels {
            channels.push((c.name.as_str(), c.direction, place(&c.item)?));
        }
        let builder = super::SchemaBuilder::from_nodes(nodes);
        Ok(MethodSchema::new(method, builder, args, ret, err, channels))
    }
}

/// The references a node holds, in declaration order.
pub(crate) fn refs(node: &Node) -> Vec<TypeRef> {
    match node {
        Node::Option(t) | Node::Seq(t) | Node::Array(t, _) => vec![*t],
        Node::Map(k, v) => vec![*k, *v],
        Node::Tuple(ts) => ts.clone(),
        Node::Struct { fields, .. } => fields.iter().map(|f| f.ty).collect(),
        Node::Enum { variants, .. } => variants.iter().flat_map(|v| v.fields.iter().map(|f| f.ty)).collect(),
        _ => Vec::new(),
    }
}

/// `node` with every reference passed through `f`.
fn remap(node: &Node, f: &dyn Fn(TypeRef) -> TypeRef) -> Node {
    let fields = |fs: &[Field]| -> Vec<Field> {
        fs.iter().map(|x| Field { name: x.name.clone(), ty: f(x.ty), default: x.default.clone() }).collect()
    };
    match node {
        Node::Option(t) => Node::Option(f(*t)),
        Node::Seq(t) => Node::Seq(f(*t)),
        Node::Array(t, n) => Node::Array(f(*t), *n),
        Node::Map(k, v) => Node::Map(f(*k), f(*v)),
        Node::Tuple(ts) => Node::Tuple(ts.iter().map(|t| f(*t)).collect()),
        Node::Struct { name, fields: fs } => Node::Struct { name: name.clone(), fields: fields(fs) },
        Node::Enum { name, variants } => Node::Enum {
            name: name.clone(),
            variants: variants
                .iter()
                .map(|v| Variant { name: v.name.clone(), kind: v.kind, fields: fields(&v.fields) })
                .collect(),
        },
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaBuilder;

    struct Line;
    struct Order;

    fn field<T: crate::schema::Schema>(b: &mut SchemaBuilder, name: &str) -> Field {
        Field { name: name.into(), ty: b.of::<T>(), default: None }
    }

    impl crate::schema::Schema for Line {
        fn describe(b: &mut SchemaBuilder) -> TypeRef {
            b.recursive::<Self>(|b| Node::Struct {
                name: "Line".into(),
                fields: vec![field::<String>(b, "sku"), field::<u32>(b, "qty")],
            })
        }
    }

    impl crate::schema::Schema for Order {
        fn describe(b: &mut SchemaBuilder) -> TypeRef {
            b.recursive::<Self>(|b| Node::Struct {
                name: "Order".into(),
                fields: vec![field::<Vec<Line>>(b, "lines"), field::<Option<String>>(b, "note")],
            })
        }
    }

    fn method() -> MethodSchema {
        let mut b = SchemaBuilder::new();
        let order = b.of::<Order>();
        let line = b.of::<Line>();
        let ret = b.of::<u64>();
        let item = b.of::<Line>();
        MethodSchema::new(
            "place",
            b,
            vec![("order", order), ("extra", line)],
            ret,
            None,
            vec![("lines", ChannelDirection::CallerToHandler, item)],
        )
    }

    #[test]
    fn schema_identity_split_names_each_type_once_and_assembles_back() {
        let m = method();
        let (sig, types) = m.split();
        // Order, Line (named twice: argument and item), u64.
        assert_eq!(types.len(), 3);
        assert_eq!(sig.hashes().len(), 3);
        assert_eq!(sig.args[1].ty, sig.channels[0].item);
        for (h, t) in &types {
            assert_eq!(*h, t.hash());
            t.check().expect("a cut-out type refers only inside itself");
        }
        // A type's hash is the same cut out as inside the method's graph.
        let (line, root) = SchemaGraph::of::<Line>();
        assert_eq!(SchemaHash::of(&line, root), sig.args[1].ty);
        let back = MethodSchema::assemble("place", &sig, |h| types.iter().find(|(x, _)| x == h).map(|(_, t)| t))
            .expect("every type is there");
        // Put back together, it splits into the same signature (the
        // method's own hash may differ: a type two roots share is one node
        // in the derived graph, two copies in the assembled one).
        assert_eq!(back.split().0, sig);
        assert_eq!(back.channels[0].direction, ChannelDirection::CallerToHandler);
    }

    #[test]
    fn schema_identity_a_cut_out_type_keeps_what_maps_and_tuples_reach() {
        // Other nodes first, so the cut-out renumbers.
        let mut b = SchemaBuilder::new();
        let _ = b.of::<Order>();
        let root = b.of::<(u8, std::collections::BTreeMap<String, Vec<i16>>)>();
        let graph = b.finish();
        let t = TypeSchema::extract(&graph, root);
        t.check().expect("every reference inside the cut-out");
        assert_eq!(t.graph.nodes.len(), 6, "tuple, u8, map, String, Vec, i16: {:?}", t.graph.nodes);
        assert_eq!(t.hash(), SchemaHash::of(&graph, root));
    }

    #[test]
    fn schema_identity_assemble_refuses_a_type_never_sent() {
        let (sig, types) = method().split();
        let err = MethodSchema::assemble("place", &sig, |h| types.iter().skip(1).find(|(x, _)| x == h).map(|(_, t)| t))
            .expect_err("one type is missing");
        assert!(err.contains("never sent"), "{err}");
    }
}
