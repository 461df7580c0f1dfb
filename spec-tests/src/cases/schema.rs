//! Schemas and evolution (PROTOCOL.md section 11; the exchange is
//! `docs/spec/wire.md` section 9). The harness mirrors the schema messages
//! from the wire doc with its own serde types, so it can describe a Testbed
//! of another version.

use crate::error::CaseResult;
use crate::peer::{Peer, blob, mid, ok_value};
use crate::subject::{self, Running, SubjectCmd};
use crate::{ensure, fail};
use serde::{Deserialize, Serialize};
use vox_core::wire::{
    self, Blob, ChannelDirection, ConnectionSettings, Metadata, MethodId, Payload, RequestId, ResponseBody,
};

/// `vox.schema.describe` (wire.md section 9).
fn describe_id() -> MethodId {
    MethodId::from_names("vox.schema", "describe")
}

#[derive(Debug, Serialize, Deserialize)]
struct SchemaQuery {
    method: MethodId,
    hash: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
enum SchemaAnswer {
    Same,
    Different(MethodSchema),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MethodSchema {
    graph: Vec<Node>,
    args: u32,
    ret: u32,
    err: Option<u32>,
    channels: Vec<ChannelSchema>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChannelSchema {
    name: String,
    direction: ChannelDirection,
    item: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Node {
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
struct Field {
    name: String,
    ty: u32,
    default: Option<Blob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Newtype,
    Tuple,
    Struct,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Variant {
    name: String,
    kind: Kind,
    fields: Vec<Field>,
}

fn field(name: &str, ty: u32) -> Field {
    Field { name: name.into(), ty, default: None }
}

fn query_payload(id: u64, method: MethodId) -> Payload {
    Payload::Request {
        id: RequestId(id),
        method_id: describe_id(),
        args: blob(&SchemaQuery { method, hash: [0; 32] }),
        channels: vec![],
        metadata: Metadata::new(),
    }
}

/// The node `r` of `s`, or a failure naming it.
fn node(s: &MethodSchema, r: u32) -> CaseResult<&Node> {
    match s.graph.get(r as usize) {
        Some(n) => Ok(n),
        None => fail!("schema.identity: reference {r} outside the {} nodes", s.graph.len()),
    }
}

/// Fields of the struct at `r` as (name, node) pairs.
fn struct_fields(s: &MethodSchema, r: u32) -> CaseResult<(String, Vec<(String, Node)>)> {
    match node(s, r)? {
        Node::Struct { name, fields } => {
            let mut out = Vec::new();
            for f in fields {
                out.push((f.name.clone(), node(s, f.ty)?.clone()));
            }
            Ok((name.clone(), out))
        }
        other => fail!("schema.identity: expected a struct at {r}, got {other:?}"),
    }
}

async fn describe(peer: &mut Peer, n: u64, method: &str) -> CaseResult<MethodSchema> {
    let id = peer.own_id(n);
    peer.send(0, query_payload(id, mid(method))).await?;
    match ok_value::<SchemaAnswer>(&peer.response(0, id).await?)? {
        SchemaAnswer::Different(s) => Ok(s),
        SchemaAnswer::Same => fail!("schema.identity: an all-zero hash was answered Same for {method}"),
    }
}

fn pairs(list: &[(&str, Node)]) -> Vec<(String, Node)> {
    list.iter().map(|(n, k)| (n.to_string(), k.clone())).collect()
}

/// The subject describes its Testbed methods: arguments as a struct of the
/// parameter names, return and error types, channel items; an unknown
/// method or a garbled query is a call-level answer and the connection
/// stays up.
pub async fn schema_identity_subject_describes_its_methods(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let r = describe_body(&mut peer).await;
    drop(peer);
    running.conclude(r).await
}

async fn describe_body(peer: &mut Peer) -> CaseResult {
    let s = describe(peer, 0, "reverse").await?;
    ensure!(
        struct_fields(&s, s.args)? == ("reverse args".into(), pairs(&[("s", Node::String)])),
        "schema.identity: reverse's arguments are {:?}",
        struct_fields(&s, s.args)?
    );
    ensure!(*node(&s, s.ret)? == Node::String && s.err.is_none() && s.channels.is_empty(), "reverse: {s:?}");

    let s = describe(peer, 1, "lookup").await?;
    ensure!(
        struct_fields(&s, s.ret)?
            == ("Person".into(), pairs(&[("id", Node::U32), ("name", Node::String), ("age", Node::U8)])),
        "schema.identity: lookup returns {:?}",
        struct_fields(&s, s.ret)?
    );
    let Some(err) = s.err else { fail!("schema.identity: lookup returns Result but has no error schema") };
    match node(&s, err)? {
        Node::Enum { name, variants } if name == "LookupError" && variants.len() == 1 => {
            let v = &variants[0];
            ensure!(v.name == "NotFound" && v.kind == Kind::Newtype, "LookupError variant {v:?}");
            ensure!(v.fields.len() == 1 && *node(&s, v.fields[0].ty)? == Node::U32, "NotFound fields {:?}", v.fields);
        }
        other => fail!("schema.identity: lookup's error is {other:?}"),
    }

    let s = describe(peer, 2, "generate").await?;
    ensure!(
        struct_fields(&s, s.args)?.1 == pairs(&[("n", Node::U32)]),
        "generate args {:?}",
        struct_fields(&s, s.args)?
    );
    match s.channels.as_slice() {
        [c] if c.name == "out"
            && c.direction == ChannelDirection::HandlerToCaller
            && *node(&s, c.item)? == Node::I32 => {}
        other => fail!("schema.identity: generate's channels are {other:?}"),
    }

    // An unknown method: UnknownMethod; a query that does not decode:
    // InvalidPayload. Neither ends anything.
    let id = peer.own_id(3);
    peer.send(0, query_payload(id, mid("no_such_method"))).await?;
    let body = peer.response(0, id).await?;
    ensure!(matches!(body, ResponseBody::UnknownMethod), "a query for an unknown method got {body:?}");
    let id = peer.own_id(4);
    peer.send(
        0,
        Payload::Request {
            id: RequestId(id),
            method_id: describe_id(),
            args: Blob::new(bytes::Bytes::from_static(&[0xff])),
            channels: vec![],
            metadata: Metadata::new(),
        },
    )
    .await?;
    let body = peer.response(0, id).await?;
    ensure!(matches!(body, ResponseBody::InvalidPayload { .. }), "a garbled query got {body:?}");
    let id = peer.own_id(5);
    peer.send(0, crate::peer::request(id, "reverse", "up", vec![])).await?;
    let r: String = ok_value(&peer.response(0, id).await?)?;
    ensure!(r == "pu", "reverse after the queries returned {r:?}");
    Ok(())
}

/// The harness's (another version's) schema of `method`, if it has one.
fn evolved(method: MethodId) -> Option<MethodSchema> {
    use Node::*;
    if method == mid("lookup") {
        // Person reordered, with an added optional field; LookupError with
        // an added variant before NotFound.
        let graph = vec![
            Struct { name: "lookup args".into(), fields: vec![field("id", 1)] },
            U32,
            Struct {
                name: "Person".into(),
                fields: vec![field("age", 3), field("nickname", 4), field("name", 5), field("id", 1)],
            },
            U8,
            Option(5),
            String,
            Enum {
                name: "LookupError".into(),
                variants: vec![
                    Variant { name: "Gone".into(), kind: Kind::Unit, fields: vec![] },
                    Variant { name: "NotFound".into(), kind: Kind::Newtype, fields: vec![field("0", 1)] },
                ],
            },
        ];
        Some(MethodSchema { graph, args: 0, ret: 2, err: Some(6), channels: vec![] })
    } else if method == mid("reverse") {
        // An added optional argument before `s`.
        let graph = vec![
            Struct { name: "reverse args".into(), fields: vec![field("prefix", 1), field("s", 2)] },
            Option(2),
            String,
        ];
        Some(MethodSchema { graph, args: 0, ret: 2, err: None, channels: vec![] })
    } else if method == mid("divide") {
        // divide returns a String here: a changed type.
        let graph =
            vec![Struct { name: "divide args".into(), fields: vec![field("a", 1), field("b", 1)] }, I64, String];
        Some(MethodSchema { graph, args: 0, ret: 2, err: Some(2), channels: vec![] })
    } else {
        None
    }
}

/// Serves the subject's schema queries from [`evolved`] for the methods
/// in `describes` (`UnknownMethod` for the others) and its calls with `serve`, until it closes the link.
/// Returns the methods queried and called, in order.
async fn serve_evolved(
    peer: &mut Peer,
    describes: &[&str],
    mut serve: impl FnMut(MethodId, &Blob) -> CaseResult<ResponseBody>,
) -> CaseResult<Vec<String>> {
    let mut log = Vec::new();
    let name = |m: MethodId| {
        ["lookup", "reverse", "divide"].iter().find(|n| mid(n) == m).map_or(m.to_string(), |n| n.to_string())
    };
    while let Some(m) = peer.recv("schema queries and calls").await? {
        match m.payload {
            Payload::Request { id, method_id, args, .. } if method_id == describe_id() => {
                let q: SchemaQuery = wire::decode("schema query", args.bytes())?;
                log.push(format!("query {}", name(q.method)));
                let ours = describes.iter().any(|n| mid(n) == q.method);
                let ret = match evolved(q.method).filter(|_| ours) {
                    Some(s) => ResponseBody::Ok(blob(&SchemaAnswer::Different(s))),
                    None => ResponseBody::UnknownMethod,
                };
                peer.send(m.connection_id.0, Payload::Response { id, ret, metadata: Metadata::new() }).await?;
            }
            Payload::Request { id, method_id, args, .. } => {
                log.push(format!("call {}", name(method_id)));
                let ret = serve(method_id, &args)?;
                peer.send(m.connection_id.0, Payload::Response { id, ret, metadata: Metadata::new() }).await?;
            }
            Payload::ProtocolError { description } => fail!("the subject sent ProtocolError({description:?})"),
            other => fail!("unexpected {other:?} from the subject"),
        }
    }
    Ok(log)
}

async fn client(cmd: &SubjectCmd, scenario: &str) -> CaseResult<(Running, Peer)> {
    subject::client(cmd, scenario, ConnectionSettings::default()).await
}

/// The subject, as caller, translates by name both ways: its arguments into
/// the harness's layout (an added optional argument is `None`), the
/// harness's return values and errors into its own (reordered fields, an
/// added field skipped, variant indices shifted).
pub async fn schema_evolution_subject_translates_by_name(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "evolved_schemas").await?;
    let r = async {
        let log = serve_evolved(&mut peer, &["lookup", "reverse"], |method, args| {
            Ok(if method == mid("lookup") {
                match wire::decode::<u32>("lookup args", args.bytes())? {
                    // (age, nickname, name, id): the harness's Person.
                    1 => ResponseBody::Ok(blob(&(36u8, Some("Countess".to_string()), "Ada".to_string(), 1u32))),
                    // NotFound is variant 1 here.
                    id => ResponseBody::User(blob(&(1u32, id))),
                }
            } else if method == mid("reverse") {
                let (prefix, s) = wire::decode::<(Option<String>, String)>("reverse args", args.bytes())?;
                ensure!(prefix.is_none(), "schema.evolution: the added optional argument arrived as {prefix:?}");
                ResponseBody::Ok(blob(&s.chars().rev().collect::<String>()))
            } else {
                ResponseBody::UnknownMethod
            })
        })
        .await?;
        ensure!(
            log == ["query lookup", "call lookup", "call lookup", "query reverse", "call reverse"],
            "schema.identity: once per connection and method, before first use; the subject sent {log:?}"
        );
        Ok(())
    }
    .await;
    drop(peer);
    running.conclude(r).await
}

/// A changed return type fails the call with `IncompatibleSchema` at the
/// exchange, before the request is sent, every time; another method on the
/// same connection still works (the harness answers its query
/// `UnknownMethod`, like a peer without schemas).
pub async fn schema_incompatible_subject_call_fails_connection_stays_up(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "incompatible_schema").await?;
    let r = async {
        let log = serve_evolved(&mut peer, &["divide"], |method, args| {
            Ok(if method == mid("reverse") {
                let s = wire::decode::<String>("reverse args", args.bytes())?;
                ResponseBody::Ok(blob(&s.chars().rev().collect::<String>()))
            } else {
                ResponseBody::UnknownMethod
            })
        })
        .await?;
        ensure!(
            log == ["query divide", "query reverse", "call reverse"],
            "schema.incompatible: the subject sent {log:?} (divide must not be sent, nor queried twice)"
        );
        Ok(())
    }
    .await;
    drop(peer);
    running.conclude(r).await
}
