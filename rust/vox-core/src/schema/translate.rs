//! Running a [`Plan`] over one encoded value: reads the source layout,
//! writes the target's. Every length is checked against the input before
//! it is used, and nesting is capped, so hostile bytes cost at most their
//! own size and never panic.

use super::error::{Path, SchemaError};
use super::model::{Node, SchemaGraph, TypeRef};
use super::plan::{Fields, FromField, Op, Plan, ToField, VariantOp};

/// Values nested deeper than this (through recursive types) are refused.
pub(crate) const MAX_DEPTH: usize = 128;

struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

fn malformed(what: &str) -> SchemaError {
    Path::root("value").error(format!("malformed input: {what}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SchemaError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.input.len()).ok_or_else(|| malformed("truncated"))?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, SchemaError> {
        Ok(self.take(1)?[0])
    }

    /// A varint of at most `max` bytes, as a u64 if it fits (else u64::MAX).
    fn varint(&mut self, max: usize) -> Result<u64, SchemaError> {
        let mut v: u64 = 0;
        for i in 0..max {
            let b = self.byte()?;
            if i < 10 {
                v |= u64::from(b & 0x7f).checked_shl(7 * i as u32).unwrap_or(0);
            }
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("over-long varint"))
    }

    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    /// A count or length: at most what is left of the input.
    fn len(&mut self) -> Result<usize, SchemaError> {
        let n = self.varint(10)?;
        usize::try_from(n).ok().filter(|n| *n <= self.remaining()).ok_or_else(|| malformed("length beyond the input"))
    }

    /// Skips one value of `node` in `g`.
    fn skip(&mut self, g: &SchemaGraph, r: TypeRef, depth: usize) -> Result<(), SchemaError> {
        if depth > MAX_DEPTH {
            return Err(malformed("nested too deep"));
        }
        let node = g.get(r).ok_or_else(|| malformed("dangling schema reference"))?;
        match node {
            Node::Unit => {}
            Node::Bool | Node::U8 | Node::I8 => {
                self.take(1)?;
            }
            Node::U16 | Node::I16 => {
                self.varint(3)?;
            }
            Node::U32 | Node::I32 => {
                self.varint(5)?;
            }
            Node::U64 | Node::I64 => {
                self.varint(10)?;
            }
            Node::U128 | Node::I128 => {
                self.varint(19)?;
            }
            Node::F32 => {
                self.take(4)?;
            }
            Node::F64 => {
                self.take(8)?;
            }
            Node::Char | Node::String | Node::Bytes => {
                let n = self.len()?;
                self.take(n)?;
            }
            Node::Option(t) => match self.byte()? {
                0 => {}
                1 => self.skip(g, *t, depth + 1)?,
                _ => return Err(malformed("bad option tag")),
            },
            Node::Seq(t) => {
                for _ in 0..self.len()? {
                    self.skip(g, *t, depth + 1)?;
                }
            }
            Node::Map(k, v) => {
                for _ in 0..self.len()? {
                    self.skip(g, *k, depth + 1)?;
                    self.skip(g, *v, depth + 1)?;
                }
            }
            Node::Tuple(ts) => {
                for t in ts {
                    self.skip(g, *t, depth + 1)?;
                }
            }
            Node::Array(t, n) => {
                for _ in 0..*n {
                    self.skip(g, *t, depth + 1)?;
                }
            }
            Node::Struct { fields, .. } => {
                for f in fields {
                    self.skip(g, f.ty, depth + 1)?;
                }
            }
            Node::Enum { variants, .. } => {
                let i = self.varint(5)?;
                let v = usize::try_from(i)
                    .ok()
                    .and_then(|i| variants.get(i))
                    .ok_or_else(|| malformed("unknown variant"))?;
                for f in &v.fields {
                    self.skip(g, f.ty, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

impl Plan {
    /// Translates one value encoded with the source schema into the target
    /// layout.
    ///
    /// # Errors
    /// A value of a variant the target lacks (naming it), or input that is
    /// not a value of the source schema.
    pub fn translate(&self, input: &[u8]) -> Result<Vec<u8>, SchemaError> {
        let mut r = Reader { input, pos: 0 };
        let mut out = Vec::with_capacity(input.len() + 8);
        self.run(self.root, &mut r, &mut out, 0)?;
        if r.remaining() != 0 {
            return Err(malformed("trailing bytes"));
        }
        Ok(out)
    }

    fn run(&self, op: usize, r: &mut Reader<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), SchemaError> {
        if depth > MAX_DEPTH {
            return Err(malformed("nested too deep"));
        }
        match &self.ops[op] {
            Op::Copy(node) => {
                let start = r.pos;
                r.skip(&self.src, *node, depth)?;
                out.extend_from_slice(&r.input[start..r.pos]);
            }
            Op::Option(inner) => match r.byte()? {
                0 => out.push(0),
                1 => {
                    out.push(1);
                    self.run(*inner, r, out, depth + 1)?;
                }
                _ => return Err(malformed("bad option tag")),
            },
            Op::Seq(inner) => {
                let n = r.len()?;
                write_varint(out, n as u64);
                for _ in 0..n {
                    self.run(*inner, r, out, depth + 1)?;
                }
            }
            Op::Map(k, v) => {
                let n = r.len()?;
                write_varint(out, n as u64);
                for _ in 0..n {
                    self.run(*k, r, out, depth + 1)?;
                    self.run(*v, r, out, depth + 1)?;
                }
            }
            Op::Tuple(ops) => {
                for o in ops {
                    self.run(*o, r, out, depth + 1)?;
                }
            }
            Op::Array(inner, n) => {
                for _ in 0..*n {
                    self.run(*inner, r, out, depth + 1)?;
                }
            }
            Op::Struct(fields) => self.fields(fields, r, out, depth)?,
            Op::Enum(variants) => {
                let i = r.varint(5)?;
                let v = usize::try_from(i)
                    .ok()
                    .and_then(|i| variants.get(i))
                    .ok_or_else(|| malformed("unknown variant"))?;
                match v {
                    VariantOp::Unknown(e) => return Err(e.clone()),
                    VariantOp::To { index, fields } => {
                        write_varint(out, u64::from(*index));
                        self.fields(fields, r, out, depth)?;
                    }
                }
            }
            Op::Pending => return Err(malformed("unfinished plan")),
        }
        Ok(())
    }

    fn fields(&self, f: &Fields, r: &mut Reader<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), SchemaError> {
        if f.in_order {
            for from in &f.from {
                if let FromField::Keep { op, .. } = from {
                    self.run(*op, r, out, depth + 1)?;
                }
            }
            return Ok(());
        }
        let mut slots: Vec<Vec<u8>> = vec![Vec::new(); f.to.len()];
        for from in &f.from {
            match from {
                FromField::Skip(node) => r.skip(&self.src, *node, depth + 1)?,
                FromField::Keep { slot, op } => self.run(*op, r, &mut slots[*slot], depth + 1)?,
            }
        }
        for (to, slot) in f.to.iter().zip(slots) {
            match to {
                ToField::Slot => out.extend_from_slice(&slot),
                ToField::Default(bytes) => out.extend_from_slice(bytes),
            }
        }
        Ok(())
    }
}
