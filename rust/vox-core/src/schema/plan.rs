//! Building a translation plan between two schemas (rule
//! `schema.evolution`): pure, no IO, once per pair of remote schema and
//! local type.

use super::error::{Path, SchemaError, Seg};
use super::hash::SchemaHash;
use super::model::{Field, Node, SchemaGraph, TypeRef};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Translates values encoded with a source schema into the postcard layout
/// of a target schema, by field and variant name. Built once by
/// [`Plan::build`]; [`Plan::translate`] then runs per value.
#[derive(Clone, Debug)]
pub struct Plan {
    pub(crate) src: Arc<SchemaGraph>,
    pub(crate) ops: Vec<Op>,
    pub(crate) root: usize,
}

/// One step of a plan; children are indices into `Plan::ops`.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// The same layout on both sides: skip by the source node, copy.
    Copy(TypeRef),
    Option(usize),
    Seq(usize),
    Map(usize, usize),
    Tuple(Vec<usize>),
    Array(usize, u32),
    Struct(Fields),
    /// Per source variant index.
    Enum(Vec<VariantOp>),
    /// Reserved while a recursive pair is being planned.
    Pending,
}

/// How the fields of a source struct (or variant) become the target's.
#[derive(Clone, Debug)]
pub(crate) struct Fields {
    /// Per source field, in source order.
    pub(crate) from: Vec<FromField>,
    /// Per target field, in target order.
    pub(crate) to: Vec<ToField>,
    /// True when `from` keeps every field, in target order, with no
    /// default in between: translate straight into the output.
    pub(crate) in_order: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum FromField {
    /// The target lacks it: skip by the source node.
    Skip(TypeRef),
    /// Translate with `op` into target slot `slot`.
    Keep { slot: usize, op: usize },
}

#[derive(Clone, Debug)]
pub(crate) enum ToField {
    /// Filled from a source field.
    Slot,
    /// The source lacks it: these bytes (the default, or `None`).
    Default(Bytes),
}

#[derive(Clone, Debug)]
pub(crate) enum VariantOp {
    To {
        index: u32,
        fields: Fields,
    },
    /// The target has no variant of this name: only a value of it fails.
    Unknown(SchemaError),
}

struct Builder<'g> {
    src: &'g SchemaGraph,
    dst: &'g SchemaGraph,
    ops: Vec<Op>,
    memo: HashMap<(TypeRef, TypeRef), usize>,
    src_hash: HashMap<TypeRef, SchemaHash>,
    dst_hash: HashMap<TypeRef, SchemaHash>,
}

impl Plan {
    /// Plans the translation of values of `src_root` (in `src`) into the
    /// layout of `dst_root` (in `dst`). Both graphs must have every
    /// reference inside their tables (built ones do; received ones are
    /// checked on decode).
    ///
    /// # Errors
    /// A difference that no value can cross: a changed type, or a target
    /// field without default that the source lacks.
    pub fn build(
        src: &SchemaGraph,
        src_root: TypeRef,
        dst: &SchemaGraph,
        dst_root: TypeRef,
    ) -> Result<Plan, SchemaError> {
        Plan::build_at(src, src_root, dst, dst_root, "value")
    }

    /// As [`build`](Self::build), with `label` as the first segment of
    /// error paths (`args`, `return`, `error`, `item`).
    pub(crate) fn build_at(
        src: &SchemaGraph,
        src_root: TypeRef,
        dst: &SchemaGraph,
        dst_root: TypeRef,
        label: &str,
    ) -> Result<Plan, SchemaError> {
        let mut b = Builder {
            src,
            dst,
            ops: Vec::new(),
            memo: HashMap::new(),
            src_hash: HashMap::new(),
            dst_hash: HashMap::new(),
        };
        let root = b.plan(src_root, dst_root, &Path::root(label))?;
        Ok(Plan { src: Arc::new(src.clone()), ops: b.ops, root })
    }

    /// Whether the plan copies values unchanged (the two layouts are the
    /// same).
    pub fn is_identity(&self) -> bool {
        matches!(self.ops[self.root], Op::Copy(_))
    }
}

impl Builder<'_> {
    fn same(&mut self, s: TypeRef, d: TypeRef) -> bool {
        let (src, dst) = (self.src, self.dst);
        let hs = *self.src_hash.entry(s).or_insert_with(|| SchemaHash::of(src, s));
        let hd = *self.dst_hash.entry(d).or_insert_with(|| SchemaHash::of(dst, d));
        hs == hd
    }

    fn push(&mut self, op: Op) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    fn plan(&mut self, s: TypeRef, d: TypeRef, path: &Path) -> Result<usize, SchemaError> {
        if let Some(i) = self.memo.get(&(s, d)) {
            return Ok(*i);
        }
        if self.same(s, d) {
            let i = self.push(Op::Copy(s));
            self.memo.insert((s, d), i);
            return Ok(i);
        }
        let (src, dst) = (self.src, self.dst);
        let (Some(sn), Some(dn)) = (src.get(s), dst.get(d)) else {
            return Err(path.error("a schema node reference is outside its table"));
        };
        let slot = self.push(Op::Pending);
        self.memo.insert((s, d), slot);
        let op = match (sn, dn) {
            (Node::Option(a), Node::Option(b)) => Op::Option(self.plan(*a, *b, &path.with(Seg::Inner("?")))?),
            (Node::Seq(a), Node::Seq(b)) => Op::Seq(self.plan(*a, *b, &path.with(Seg::Inner("[]")))?),
            (Node::Map(ka, va), Node::Map(kb, vb)) => Op::Map(
                self.plan(*ka, *kb, &path.with(Seg::Inner("{key}")))?,
                self.plan(*va, *vb, &path.with(Seg::Inner("{}")))?,
            ),
            (Node::Tuple(a), Node::Tuple(b)) if a.len() == b.len() => {
                let mut ops = Vec::with_capacity(a.len());
                for (x, y) in a.iter().zip(b) {
                    ops.push(self.plan(*x, *y, &path.with(Seg::Inner("()")))?);
                }
                Op::Tuple(ops)
            }
            (Node::Array(a, n), Node::Array(b, m)) if n == m => {
                Op::Array(self.plan(*a, *b, &path.with(Seg::Inner("[]")))?, *n)
            }
            (Node::Struct { name, fields: sf }, Node::Struct { name: dname, fields: df }) => {
                let _ = name;
                Op::Struct(self.fields(sf, df, dname, path)?)
            }
            (Node::Enum { variants: sv, .. }, Node::Enum { name: dname, variants: dv }) => {
                let mut ops = Vec::with_capacity(sv.len());
                for v in sv {
                    let vpath = path.with(Seg::Variant { ty: dname.clone(), name: v.name.clone() });
                    match dv.iter().position(|w| w.name == v.name) {
                        None => ops.push(VariantOp::Unknown(vpath.error(format!(
                            "the sender's variant `{}` does not exist in the receiver's {dname}",
                            v.name
                        )))),
                        Some(i) => {
                            let fields = self.fields(&v.fields, &dv[i].fields, dname, &vpath)?;
                            ops.push(VariantOp::To { index: i as u32, fields });
                        }
                    }
                }
                Op::Enum(ops)
            }
            (a, b) if layout_equal(src, a, dst, b) => Op::Copy(s),
            _ => {
                return Err(path.error(format!(
                    "changed type: the sender's {} is {} on the receiver",
                    src.type_name(s),
                    dst.type_name(d)
                )));
            }
        };
        self.ops[slot] = op;
        Ok(slot)
    }

    fn fields(&mut self, sf: &[Field], df: &[Field], dname: &str, path: &Path) -> Result<Fields, SchemaError> {
        let mut from = Vec::with_capacity(sf.len());
        let mut filled = vec![false; df.len()];
        for f in sf {
            match df.iter().position(|g| g.name == f.name) {
                None => from.push(FromField::Skip(f.ty)),
                Some(slot) => {
                    let fpath = path.with(Seg::Field { ty: dname.to_owned(), name: f.name.clone() });
                    let op = self.plan(f.ty, df[slot].ty, &fpath)?;
                    filled[slot] = true;
                    from.push(FromField::Keep { slot, op });
                }
            }
        }
        let mut to = Vec::with_capacity(df.len());
        for (g, was) in df.iter().zip(&filled) {
            if *was {
                to.push(ToField::Slot);
            } else if let Some(default) = &g.default {
                to.push(ToField::Default(default.bytes().clone()));
            } else if matches!(self.dst.get(g.ty), Some(Node::Option(_))) {
                to.push(ToField::Default(Bytes::from_static(&[0])));
            } else {
                let fpath = path.with(Seg::Field { ty: dname.to_owned(), name: g.name.clone() });
                return Err(fpath.error(format!(
                    "required field of type {} is missing on the sender and has no default",
                    self.dst.type_name(g.ty)
                )));
            }
        }
        let in_order = from.len() == to.len()
            && from.iter().enumerate().all(|(i, f)| matches!(f, FromField::Keep { slot, .. } if *slot == i));
        Ok(Fields { from, to, in_order })
    }
}

/// Different nodes with the same bytes on the wire: a byte string and a
/// sequence of `u8` (equal nodes have equal hashes and never get here).
fn layout_equal(src: &SchemaGraph, a: &Node, dst: &SchemaGraph, b: &Node) -> bool {
    let bytes = |g: &SchemaGraph, n: &Node| match n {
        Node::Bytes => true,
        Node::Seq(t) => matches!(g.get(*t), Some(Node::U8)),
        _ => false,
    };
    bytes(src, a) && bytes(dst, b)
}
