//! What one method uses: its arguments, return value, error and channel
//! items, as roots of one graph.

use super::SchemaBuilder;
use super::hash::SchemaHash;
use super::limits::{channels_seq, name};
use super::model::{Field, Node, SchemaGraph, TypeRef};
use crate::wire::ChannelDirection;
use serde::{Deserialize, Serialize};

/// One channel argument of a method.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSchema {
    /// The parameter name.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// Which way its items flow.
    pub direction: ChannelDirection,
    /// The item type.
    pub item: TypeRef,
}

/// The schemas of one method (rule `schema.identity`). The arguments are a
/// struct named `<method> args` whose fields are the plain (non-channel)
/// parameters, in order: an argument added as `Option<T>` is an added
/// field.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodSchema {
    /// The nodes of every type below.
    pub graph: SchemaGraph,
    /// The arguments struct.
    pub args: TypeRef,
    /// The return type (`T` of `Result<T, E>`).
    pub ret: TypeRef,
    /// The error type `E` of a method returning `Result<T, E>`.
    pub err: Option<TypeRef>,
    /// The channel arguments, in argument order.
    #[serde(deserialize_with = "channels_seq")]
    pub channels: Vec<ChannelSchema>,
    /// The hash of all of the above; recomputed on decode, never taken from
    /// the peer.
    #[serde(skip)]
    hash: Option<SchemaHash>,
}

/// Equal parts (the cached hash follows from them).
impl PartialEq for MethodSchema {
    fn eq(&self, o: &Self) -> bool {
        (&self.graph, self.args, self.ret, self.err, &self.channels) == (&o.graph, o.args, o.ret, o.err, &o.channels)
    }
}

impl Eq for MethodSchema {}

impl MethodSchema {
    /// The schema of a method from its parts, described in `builder`.
    /// `args` are the plain parameters `(name, type, default)` in order;
    /// `channels` the channel parameters.
    pub fn new(
        method: &str,
        mut builder: SchemaBuilder,
        args: Vec<(&str, TypeRef)>,
        ret: TypeRef,
        err: Option<TypeRef>,
        channels: Vec<(&str, ChannelDirection, TypeRef)>,
    ) -> MethodSchema {
        let fields = args.into_iter().map(|(n, ty)| Field { name: n.to_owned(), ty, default: None }).collect();
        let args = builder.node(Node::Struct { name: format!("{method} args"), fields });
        let channels = channels
            .into_iter()
            .map(|(n, direction, item)| ChannelSchema { name: n.to_owned(), direction, item })
            .collect();
        let mut m = MethodSchema { graph: builder.finish(), args, ret, err, channels, hash: None };
        m.hash = Some(m.compute_hash());
        m
    }

    /// The method's hash.
    pub fn hash(&self) -> SchemaHash {
        self.hash.unwrap_or_else(|| self.compute_hash())
    }

    fn compute_hash(&self) -> SchemaHash {
        let mut roots = vec![self.args, self.ret];
        roots.extend(self.err);
        roots.extend(self.channels.iter().map(|c| c.item));
        let mut labels: Vec<String> = vec![if self.err.is_some() { "err".into() } else { "-".into() }];
        for c in &self.channels {
            let dir = match c.direction {
                ChannelDirection::CallerToHandler => "in",
                ChannelDirection::HandlerToCaller => "out",
            };
            labels.push(format!("{}:{dir}", c.name));
        }
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        SchemaHash::of_roots(&self.graph, &roots, &labels)
    }
}
