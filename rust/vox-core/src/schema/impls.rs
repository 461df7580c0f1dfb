//! [`Schema`] for primitives and std types.

use super::model::Node;
use super::{Schema, SchemaBuilder, TypeRef};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

macro_rules! leaf {
    ($($t:ty => $n:ident),* $(,)?) => {$(
        impl Schema for $t {
            fn describe(b: &mut SchemaBuilder) -> TypeRef {
                b.node(Node::$n)
            }
        }
    )*};
}

leaf!(
    () => Unit, bool => Bool, u8 => U8, u16 => U16, u32 => U32, u64 => U64, u128 => U128,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64, i128 => I128, f32 => F32, f64 => F64,
    char => Char, String => String, bytes::Bytes => Bytes, crate::wire::Blob => Bytes,
);

// usize/isize travel as u64/i64 in postcard (varint of the value).
impl Schema for usize {
    fn describe(b: &mut SchemaBuilder) -> TypeRef {
        b.of::<u64>()
    }
}
impl Schema for isize {
    fn describe(b: &mut SchemaBuilder) -> TypeRef {
        b.of::<i64>()
    }
}

macro_rules! wrapper {
    ($($w:ident),*) => {$(
        impl<T: Schema> Schema for $w<T> {
            fn describe(b: &mut SchemaBuilder) -> TypeRef {
                b.of::<T>()
            }
        }
    )*};
}
use std::rc::Rc;
use std::sync::Arc;
wrapper!(Box, Arc, Rc);

impl<T: Schema> Schema for Option<T> {
    fn describe(b: &mut SchemaBuilder) -> TypeRef {
        let t = b.of::<T>();
        b.node(Node::Option(t))
    }
}

macro_rules! seq {
    ($($s:ident),*) => {$(
        impl<T: Schema> Schema for $s<T> {
            fn describe(b: &mut SchemaBuilder) -> TypeRef {
                let t = b.of::<T>();
                b.node(Node::Seq(t))
            }
        }
    )*};
}
seq!(Vec, VecDeque, BTreeSet);

impl<T: Schema, S: 'static> Schema for HashSet<T, S> {
    fn describe(b: &mut SchemaBuilder) -> TypeRef {
        let t = b.of::<T>();
        b.node(Node::Seq(t))
    }
}

impl<K: Schema, V: Schema> Schema for BTreeMap<K, V> {
    fn describe(b: &mut SchemaBuilder) -> TypeRef {
        let (k, v) = (b.of::<K>(), b.of::<V>());
        b.node(Node::Map(k, v))
    }
}

impl<K: Schema, V: Schema, S: 'static> Schema for HashMap<K, V, S> {
    fn describe(b: &mut SchemaBuilder) -> TypeRef {
        let (k, v) = (b.of::<K>(), b.of::<V>());
        b.node(Node::Map(k, v))
    }
}

impl<T: Schema, const N: usize> Schema for [T; N] {
    fn describe(b: &mut SchemaBuilder) -> TypeRef {
        let t = b.of::<T>();
        b.node(Node::Array(t, u32::try_from(N).expect("array length fits u32")))
    }
}

macro_rules! tuple {
    ($($t:ident),+) => {
        impl<$($t: Schema),+> Schema for ($($t,)+) {
            fn describe(b: &mut SchemaBuilder) -> TypeRef {
                let elems = vec![$(b.of::<$t>()),+];
                b.node(Node::Tuple(elems))
            }
        }
    };
}
tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);
tuple!(A, B, C, D, E, F);
tuple!(A, B, C, D, E, F, G);
tuple!(A, B, C, D, E, F, G, H);
