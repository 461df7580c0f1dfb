//! The harness calls, the subject is the handler side: it answers schema
//! queries, keeps the harness's type schemas, and translates the
//! arguments it receives from the harness's layout (rule
//! `schema.evolution`: the receiver translates).

use super::model::{Arg, Hash, Kind, Node, SchemaAnswer, SchemaQuery, Signature, TypeSchema};
use super::testbed::{self, Method, h};
use super::{describe_id, received_hashes};
use crate::error::CaseResult;
use crate::peer::{Peer, blob, mid, ok_value};
use crate::subject;
use crate::subject::SubjectCmd;
use crate::{ensure, fail};
use serde::Serialize;
use vox_core::wire::{self, Blob, ChannelDirection, Metadata, MethodId, Payload, RequestId, ResponseBody};

/// The harness's side of one connection: request ids in order.
struct Calls<'p> {
    peer: &'p mut Peer,
    n: u64,
}

impl Calls<'_> {
    /// Sends a request of `method` with `args` (already encoded) and
    /// waits for its response.
    async fn raw(&mut self, method: MethodId, args: Blob) -> CaseResult<ResponseBody> {
        let id = self.peer.own_id(self.n);
        self.n += 1;
        let req = Payload::Request {
            id: RequestId(id),
            method_id: method,
            args,
            channels: vec![],
            metadata: Metadata::new(),
        };
        self.peer.send(0, req).await?;
        self.peer.response(0, id).await
    }

    /// Calls Testbed method `name` with `args`.
    async fn call<T: Serialize + ?Sized>(&mut self, name: &str, args: &T) -> CaseResult<ResponseBody> {
        self.raw(mid(name), blob(args)).await
    }

    /// Sends `query` and returns the response.
    async fn query(&mut self, query: &SchemaQuery) -> CaseResult<ResponseBody> {
        self.raw(describe_id(), blob(query)).await
    }

    /// Sends `query` for Testbed method `name`, whose signature differs
    /// from the subject's; the answer must be `Different`, with the
    /// subject's signature `expected` and type schemas whose hashes are
    /// checked here. Returns them.
    async fn different(
        &mut self,
        name: &str,
        query: &SchemaQuery,
        expected: &Signature,
    ) -> CaseResult<Vec<TypeSchema>> {
        let (signature, types) = match ok_value::<SchemaAnswer>(&self.query(query).await?)? {
            SchemaAnswer::Different { signature, types } => (signature, types),
            SchemaAnswer::Same => fail!("schema.identity: a query for {name} with another signature was answered Same"),
        };
        ensure!(
            signature == *expected,
            "schema.identity: the subject's signature of {name} is {signature}; hashing its Testbed types as wire.md \
             9.6 says gives {expected}"
        );
        let hashes = received_hashes(&types, &format!("the answer for {name}"))?;
        for (t, hash) in types.iter().zip(&hashes) {
            ensure!(
                signature.hashes().contains(hash),
                "schema.identity: the answer for {name} carries a type its signature does not name: {t:?}"
            );
            ensure!(
                !query.held.contains(hash) && !query.signature.hashes().contains(hash),
                "schema.identity: the answer for {name} carries {t:?}, which the query named as held or in its own \
                 signature"
            );
        }
        Ok(types)
    }
}

/// The query for method `name` with the signature of `m`, the type
/// schemas `types` and the `held` hashes.
fn query(name: &str, m: &Method, types: Vec<TypeSchema>, held: Vec<Hash>) -> SchemaQuery {
    SchemaQuery { method: mid(name), signature: m.signature.clone(), types, held }
}

/// The type of `hash` among `types`, or a failure naming it.
fn find<'t>(types: &'t [TypeSchema], hash: &Hash, what: &str) -> CaseResult<&'t TypeSchema> {
    match types.iter().find(|t| h(t) == *hash) {
        Some(t) => Ok(t),
        None => fail!("schema.identity: the answer names {what} by hash but carries no schema of it: {types:?}"),
    }
}

/// Fields of the struct at the root of `t`, as (name, node).
fn struct_fields(t: &TypeSchema) -> CaseResult<(String, Vec<(String, Node)>)> {
    match t.node(t.root) {
        Some(Node::Struct { name, fields }) => {
            let mut out = Vec::new();
            for f in fields {
                let Some(n) = t.node(f.ty) else { fail!("schema.identity: dangling field type in {t:?}") };
                out.push((f.name.clone(), n.clone()));
            }
            Ok((name.clone(), out))
        }
        _ => fail!("schema.identity: expected a struct, got {t:?}"),
    }
}

fn pairs(list: &[(&str, Node)]) -> Vec<(String, Node)> {
    list.iter().map(|(n, k)| (n.to_string(), k.clone())).collect()
}

/// The subject answers a query whose signature differs from its own with
/// its signature of the method and the schemas of its types, leaving out
/// those the query names (held, or in its own signature); it keeps the
/// harness's types for later queries; an unknown method, a garbled query
/// and a signature naming a type never sent are call-level answers, and
/// the connection stays up.
pub async fn schema_identity_subject_describes_its_methods(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let r = describe_body(&mut Calls { peer: &mut peer, n: 0 }).await;
    drop(peer);
    running.conclude(r).await
}

async fn describe_body(c: &mut Calls<'_>) -> CaseResult {
    // reverse: the harness's version has an added optional argument. Its
    // only type, String, is in the query's signature: nothing comes back.
    let ours = testbed::evolved("reverse")?;
    let q = query("reverse", &ours, ours.types.clone(), vec![]);
    let types = c.different("reverse", &q, &testbed::subject("reverse")?.signature).await?;
    ensure!(types.is_empty(), "schema.identity: the answer for reverse carries {types:?}; String was in the query");

    // lookup: Person and LookupError come back; u32 (in the query) does not.
    let theirs = testbed::subject("lookup")?;
    let ours = testbed::evolved("lookup")?;
    let q = query("lookup", &ours, ours.types.clone(), vec![]);
    let types = c.different("lookup", &q, &theirs.signature).await?;
    ensure!(
        types.len() == 2,
        "schema.identity: the answer for lookup carries {} types, expected Person and LookupError",
        types.len()
    );
    let person = struct_fields(find(&types, &theirs.signature.ret, "lookup's return type")?)?;
    ensure!(
        person == ("Person".into(), pairs(&[("id", Node::U32), ("name", Node::String), ("age", Node::U8)])),
        "schema.identity: lookup returns {person:?}"
    );
    let err = theirs.signature.err.unwrap_or_default();
    let err = find(&types, &err, "lookup's error type")?;
    match err.node(err.root) {
        Some(Node::Enum { name, variants }) if name == "LookupError" && variants.len() == 1 => {
            let v = &variants[0];
            ensure!(v.name == "NotFound" && v.kind == Kind::Newtype, "schema.identity: LookupError's variant {v:?}");
            ensure!(
                v.fields.len() == 1 && err.node(v.fields[0].ty) == Some(&Node::U32),
                "schema.identity: NotFound's fields {:?} in {err:?}",
                v.fields
            );
        }
        _ => fail!("schema.identity: lookup's error is {err:?}"),
    }

    // generate: u32 crossed with lookup's query and is not sent again (the
    // subject keeps it); the item type i32 comes back, () (in the query)
    // does not.
    let theirs = testbed::subject("generate")?;
    let ours = testbed::evolved("generate")?;
    let fresh = ours.types.iter().filter(|t| **t != testbed::u32_()).cloned().collect();
    let types = c.different("generate", &query("generate", &ours, fresh, vec![]), &theirs.signature).await?;
    match theirs.signature.channels.as_slice() {
        [ch] if ch.name == "out" && ch.direction == ChannelDirection::HandlerToCaller => {
            let item = find(&types, &ch.item, "generate's item type")?;
            ensure!(item.node(item.root) == Some(&Node::I32), "schema.identity: generate's items are {item:?}");
        }
        other => fail!("internal: generate's channels {other:?}"),
    }
    ensure!(types.len() == 1, "schema.identity: the answer for generate carries {types:?}, expected i32 alone");

    // divide: the query names i64 and String (sent before) and holds
    // MathError: nothing comes back.
    let ours = testbed::evolved("divide")?;
    let q = query("divide", &ours, vec![], vec![h(&testbed::math_error())]);
    let types = c.different("divide", &q, &testbed::subject("divide")?.signature).await?;
    ensure!(types.is_empty(), "schema.identity: the answer for divide carries {types:?}, though MathError was held");

    // The same signature: Same, and the plain path (the harness's hash of
    // Vec<u8>, a two-node type, must be the subject's).
    let vec_u8 = TypeSchema { graph: vec![Node::Seq(1), Node::U8], root: 0 };
    let sig = Signature {
        args: vec![Arg { name: "b".into(), ty: h(&vec_u8) }],
        ret: h(&vec_u8),
        err: None,
        channels: vec![],
    };
    let q = SchemaQuery { method: mid("echo_bytes"), signature: sig, types: vec![vec_u8], held: vec![] };
    let a: SchemaAnswer = ok_value(&c.query(&q).await?)?;
    ensure!(
        a == SchemaAnswer::Same,
        "schema.identity: the query for echo_bytes with the subject's own signature got {a:?}"
    );

    // Call-level refusals, none of which ends anything.
    let q = query("no_such_method", &testbed::subject("reverse")?, vec![testbed::string()], vec![]);
    let body = c.query(&q).await?;
    ensure!(matches!(body, ResponseBody::UnknownMethod), "schema.identity: a query for an unknown method got {body:?}");
    let body = c.raw(describe_id(), Blob::new(bytes::Bytes::from_static(&[0xff]))).await?;
    ensure!(matches!(body, ResponseBody::InvalidPayload { .. }), "schema.identity: a garbled query got {body:?}");
    let never = [0xab; 32];
    let sig = Signature { args: vec![Arg { name: "ms".into(), ty: never }], ret: never, err: None, channels: vec![] };
    let q = SchemaQuery { method: mid("sleep_ms"), signature: sig, types: vec![], held: vec![] };
    let body = c.query(&q).await?;
    ensure!(
        matches!(body, ResponseBody::InvalidPayload { .. }),
        "schema.identity: a query whose signature names a type never sent got {body:?}"
    );

    // The connection is up, and the refused query left sleep_ms plain.
    let body = c.call("echo_bytes", &vec![1u8, 2, 3]).await?;
    ensure!(ok_value::<Vec<u8>>(&body)? == [1, 2, 3], "echo_bytes after the queries returned {body:?}");
    let body = c.call("sleep_ms", &0u64).await?;
    ok_value::<()>(&body)?;
    Ok(())
}

/// The harness sends its own (reordered, extended) schema of `reverse`,
/// then arguments in its own layout: the subject translates them by name
/// (an argument it lacks is skipped, whatever its type). What the subject
/// sends back stays in its own layout: the harness, as receiver, would
/// translate it.
pub async fn schema_evolution_subject_translates_arguments_it_receives(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let r = receiver_translates_body(&mut Calls { peer: &mut peer, n: 0 }).await;
    drop(peer);
    running.conclude(r).await
}

async fn receiver_translates_body(c: &mut Calls<'_>) -> CaseResult {
    let ours = testbed::evolved("reverse_reordered")?;
    c.different(
        "reverse",
        &query("reverse", &ours, ours.types.clone(), vec![]),
        &testbed::subject("reverse")?.signature,
    )
    .await?;
    // (count: u64, s: String, prefix: Option<String>).
    for (count, s, prefix) in [(300u64, "abc", Some("pre")), (0, "xyz", None)] {
        let body = c.call("reverse", &(count, s, prefix)).await?;
        let got: String = ok_value(&body)?;
        let want: String = s.chars().rev().collect();
        ensure!(
            got == want,
            "schema.evolution: reverse({count}, {s:?}, {prefix:?}) in the harness's layout returned {got:?}, expected {want:?}"
        );
    }

    // lookup with the harness's Person and LookupError: the arguments are
    // the same; the results come in the subject's layout.
    let ours = testbed::evolved("lookup")?;
    let q = query("lookup", &ours, ours.types.clone(), vec![]);
    c.different("lookup", &q, &testbed::subject("lookup")?.signature).await?;
    let body = c.call("lookup", &1u32).await?;
    let p: (u32, String, u8) = match &body {
        ResponseBody::Ok(b) => wire::decode("Person in the subject's layout", b.bytes())?,
        other => fail!("schema.evolution: lookup(1) got {other:?}"),
    };
    ensure!(
        p == (1, "Ada".into(), 36),
        "schema.evolution: the subject's lookup(1) is {p:?}, not (id, name, age) of Ada"
    );
    let body = c.call("lookup", &9u32).await?;
    let e: (u32, u32) = match &body {
        ResponseBody::User(b) => wire::decode("LookupError in the subject's layout", b.bytes())?,
        other => fail!("schema.evolution: lookup(9) got {other:?}"),
    };
    ensure!(
        e == (0, 9),
        "schema.evolution: lookup(9)'s error is (variant, id) {e:?}; NotFound is variant 0 on the subject"
    );
    Ok(())
}

/// The harness's schema differs in a way no value can cross: `divide`'s
/// `b` is a String, `lookup`'s `id` is called `key`. The subject answers
/// the queries, then fails each request of those methods with
/// `IncompatibleSchema` naming the method, the path and the field; other
/// methods keep working and the connection stays up.
///
/// No Testbed method takes an enum (or a struct holding one) from the
/// caller, so the other half of the rule, a value of a variant the handler
/// lacks failing only that call, cannot be checked with the harness as
/// caller; `schema_incompatible_subject_unknown_variant_fails_that_call`
/// checks it with the subject as caller.
pub async fn schema_incompatible_subject_refuses_arguments_it_cannot_translate(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = subject::server(&cmd).await?;
    let r = refuses_body(&mut Calls { peer: &mut peer, n: 0 }).await;
    drop(peer);
    running.conclude(r).await
}

async fn refuses_body(c: &mut Calls<'_>) -> CaseResult {
    let ours = testbed::evolved("divide_retyped")?;
    c.different("divide", &query("divide", &ours, ours.types.clone(), vec![]), &testbed::subject("divide")?.signature)
        .await?;
    for attempt in 1..=2 {
        let body = c.call("divide", &(7i64, "2")).await?;
        incompatible(&body, "Testbed.divide", "b", &format!("divide attempt {attempt}"))?;
    }
    let ours = testbed::evolved("lookup_renamed")?;
    let q = query("lookup", &ours, ours.types.clone(), vec![]);
    c.different("lookup", &q, &testbed::subject("lookup")?.signature).await?;
    let body = c.call("lookup", &1u32).await?;
    incompatible(&body, "Testbed.lookup", "id", "lookup")?;

    let body = c.call("reverse", "ok").await?;
    ensure!(ok_value::<String>(&body)? == "ko", "schema.incompatible: reverse after the failures got {body:?}");
    Ok(())
}

/// Checks an `IncompatibleSchema` answer for `method` naming `field` in
/// the arguments.
fn incompatible(body: &ResponseBody, method: &str, field: &str, what: &str) -> CaseResult {
    match body {
        ResponseBody::IncompatibleSchema { method: m, path, field: f, reason } => {
            ensure!(
                m == method && f == field && path.starts_with("args") && !reason.is_empty(),
                "schema.incompatible: {what} got IncompatibleSchema {{ method: {m:?}, path: {path:?}, field: {f:?}, \
                 reason: {reason:?} }}; expected method {method:?}, a path in the arguments (args…), field {field:?}"
            );
            Ok(())
        }
        other => fail!("schema.incompatible: {what} got {other:?}, expected IncompatibleSchema"),
    }
}
