//! Why two schemas cannot be translated (rule `schema.incompatible`).

/// A difference between two schemas that translation cannot bridge, or a
/// value that cannot be translated. Names where: the access path from the
/// root (`args.order.lines[]`) with the type holding the field
/// (`args.order.lines[]: Line`), and the field or variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("incompatible schema at {path}, field `{field}`: {reason}")]
pub struct SchemaError {
    /// The access path to the value holding the field, and its type.
    pub path: String,
    /// The field or variant (empty when the whole value at `path` differs).
    pub field: String,
    /// What differs.
    pub reason: String,
}

/// One step of the access path of a value being planned or translated.
#[derive(Clone, Debug)]
pub(crate) enum Seg {
    /// The root: `args`, `return`, `error`, `item`, `value`.
    Root(String),
    /// A named field of the struct type `ty`.
    Field { ty: String, name: String },
    /// A variant of the enum type `ty`.
    Variant { ty: String, name: String },
    /// Inside a sequence, option, map or tuple.
    Inner(&'static str),
}

/// The access path while walking two schemas.
#[derive(Clone, Debug, Default)]
pub(crate) struct Path(pub(crate) Vec<Seg>);

impl Path {
    pub(crate) fn root(label: &str) -> Path {
        Path(vec![Seg::Root(label.to_owned())])
    }

    pub(crate) fn with(&self, seg: Seg) -> Path {
        let mut p = self.clone();
        p.0.push(seg);
        p
    }

    fn render(segs: &[Seg]) -> String {
        let mut s = String::new();
        for seg in segs {
            match seg {
                Seg::Root(r) => s.push_str(r),
                Seg::Field { name, .. } => {
                    s.push('.');
                    s.push_str(name);
                }
                Seg::Variant { name, .. } => {
                    s.push_str("::");
                    s.push_str(name);
                }
                Seg::Inner(i) => s.push_str(i),
            }
        }
        s
    }

    /// An error at this path: the field is the last field or variant on
    /// it, the path what leads to the type holding it.
    pub(crate) fn error(&self, reason: impl Into<String>) -> SchemaError {
        let last = self.0.iter().rposition(|s| matches!(s, Seg::Field { .. } | Seg::Variant { .. }));
        match last.map(|i| (i, &self.0[i])) {
            Some((i, Seg::Field { ty, name } | Seg::Variant { ty, name })) => SchemaError {
                path: format!("{}: {ty}", Path::render(&self.0[..i])),
                field: name.clone(),
                reason: reason.into(),
            },
            _ => SchemaError { path: Path::render(&self.0), field: String::new(), reason: reason.into() },
        }
    }
}
