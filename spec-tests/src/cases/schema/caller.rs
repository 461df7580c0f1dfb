//! The subject calls through its generated `TestbedClient`; the harness
//! plays a Testbed of another version. The subject sends its arguments in
//! its own layout and translates what it receives (rule
//! `schema.evolution`), and sends each of its type schemas once per
//! connection (rule `schema.identity`).

use super::model::{Hash, SchemaAnswer, SchemaQuery, short};
use super::testbed::{self, Method};
use super::{describe_id, received_hashes};
use crate::error::CaseResult;
use crate::peer::{Peer, blob, mid};
use crate::subject::{self, Running, SubjectCmd};
use crate::{ensure, fail};
use std::collections::HashSet;
use vox_core::wire::{
    self, Blob, ChannelDecl, ChannelDirection, ConnectionSettings, Metadata, MethodId, Payload, ResponseBody,
};

/// The Testbed methods the subject's schema scenarios call.
const NAMES: [&str; 4] = ["lookup", "reverse", "divide", "generate"];

fn name_of(m: MethodId) -> String {
    NAMES.iter().find(|n| mid(n) == m).map_or(m.to_string(), |n| n.to_string())
}

/// How the harness answers one call.
enum Reply {
    /// A response.
    Body(ResponseBody),
    /// These items on the request's one handler-to-caller channel, closed,
    /// then this response.
    Stream(Vec<Blob>, ResponseBody),
}

/// What the harness saw of the subject's exchanges on one connection.
#[derive(Default)]
struct Exchanges {
    /// "query m" and "call m", in order.
    log: Vec<String>,
    /// The subject's types acknowledged by an answer.
    acked: HashSet<Hash>,
    /// The harness's types sent in answers.
    sent: HashSet<Hash>,
}

impl Exchanges {
    /// Checks a query of the subject against rule `schema.identity`: its
    /// signature hashes the subject's Testbed types as wire.md 9.6 says; it
    /// carries exactly the types of that signature not acknowledged yet on
    /// this connection; it names as held exactly the types the harness sent.
    fn check(&self, q: &SchemaQuery, name: &str) -> CaseResult {
        let expected = testbed::subject(name)?;
        ensure!(
            q.signature == expected.signature,
            "schema.identity: the subject's signature of {name} is {}; hashing its Testbed types as wire.md 9.6 \
             says gives {}",
            q.signature,
            expected.signature
        );
        let carried: HashSet<Hash> = received_hashes(&q.types, &format!("the query for {name}"))?.into_iter().collect();
        let owed: HashSet<Hash> = q.signature.hashes().into_iter().filter(|h| !self.acked.contains(h)).collect();
        ensure!(
            carried == owed,
            "schema.identity: the query for {name} carries {} type schemas ({}), expected those of its signature not \
             sent before on this connection ({}): each type crosses once, before or with first use",
            carried.len(),
            describe(&carried, &expected),
            describe(&owed, &expected)
        );
        let held: HashSet<Hash> = q.held.iter().copied().collect();
        ensure!(
            held == self.sent && held.len() == q.held.len(),
            "schema.identity: the query for {name} names {} held hashes ({}); the harness sent it {} type schemas \
             ({})",
            q.held.len(),
            shorts(q.held.iter()),
            self.sent.len(),
            shorts(self.sent.iter())
        );
        Ok(())
    }

    /// The answer to `q` from the harness's method `ours` (`None`: a method
    /// it has no schema of), and what it acknowledges.
    fn answer(&mut self, q: &SchemaQuery, ours: Option<Method>) -> ResponseBody {
        let Some(ours) = ours else { return ResponseBody::UnknownMethod };
        self.acked.extend(q.signature.hashes());
        if ours.signature == q.signature {
            return ResponseBody::Ok(blob(&SchemaAnswer::Same));
        }
        let known = q.signature.hashes();
        let types: Vec<_> = ours
            .types
            .into_iter()
            .filter(|t| {
                let h = testbed::h(t);
                !q.held.contains(&h) && !known.contains(&h)
            })
            .collect();
        self.sent.extend(types.iter().map(testbed::h));
        ResponseBody::Ok(blob(&SchemaAnswer::Different { signature: ours.signature, types }))
    }
}

fn shorts<'h>(hashes: impl Iterator<Item = &'h Hash>) -> String {
    hashes.map(short).collect::<Vec<_>>().join(", ")
}

/// Names the hashes in `set` by the type of `m` they are, for messages.
fn describe(set: &HashSet<Hash>, m: &Method) -> String {
    let names: Vec<String> =
        set.iter().map(|h| m.type_of(h).map_or("?".into(), |t| format!("{:?}", t.node(t.root)))).collect();
    names.join(", ")
}

/// Serves the subject's schema queries with `schema` (the harness's
/// version of a method, `None` for `UnknownMethod`) and its calls with
/// `call`, until it closes the link. Every query is checked
/// ([`Exchanges::check`]).
async fn serve(
    peer: &mut Peer,
    schema: impl Fn(&str) -> CaseResult<Option<Method>>,
    mut call: impl FnMut(&str, &Blob) -> CaseResult<Reply>,
) -> CaseResult<Vec<String>> {
    let mut x = Exchanges::default();
    while let Some(m) = peer.recv("schema queries and calls").await? {
        let conn = m.connection_id.0;
        match m.payload {
            Payload::Request { id, method_id, args, .. } if method_id == describe_id() => {
                let q: SchemaQuery = wire::decode("schema query", args.bytes())?;
                let name = name_of(q.method);
                x.log.push(format!("query {name}"));
                x.check(&q, &name)?;
                let ret = x.answer(&q, schema(&name)?);
                peer.send(conn, Payload::Response { id, ret, metadata: Metadata::new() }).await?;
            }
            Payload::Request { id, method_id, args, channels, .. } => {
                let name = name_of(method_id);
                x.log.push(format!("call {name}"));
                let ret = match call(&name, &args)? {
                    Reply::Body(ret) => ret,
                    Reply::Stream(items, ret) => {
                        stream(peer, conn, &channels, items).await?;
                        ret
                    }
                };
                peer.send(conn, Payload::Response { id, ret, metadata: Metadata::new() }).await?;
            }
            // Credit for the stream, granted as the subject reads.
            Payload::GrantCredit { .. } => {}
            Payload::ProtocolError { description } => fail!("the subject sent ProtocolError({description:?})"),
            other => fail!("unexpected {other:?} from the subject"),
        }
    }
    Ok(x.log)
}

/// Sends `items` on the one handler-to-caller channel of `channels`
/// within the credit the subject gives, then closes it.
async fn stream(peer: &mut Peer, conn: u64, channels: &[ChannelDecl], items: Vec<Blob>) -> CaseResult {
    let [c] = channels else { fail!("rpc.request: the request declares {channels:?}, expected one channel") };
    ensure!(c.direction == ChannelDirection::HandlerToCaller, "rpc.channel: the channel flows {:?}", c.direction);
    let mut credit = c.initial_credit;
    for item in items {
        while credit == 0 {
            match peer.expect("GrantCredit from the subject").await?.payload {
                Payload::GrantCredit { id, additional } if id == c.id => credit += additional,
                other => fail!("unexpected {other:?} while waiting for credit"),
            }
        }
        peer.send(conn, Payload::ChannelItem { id: c.id, item }).await?;
        credit -= 1;
    }
    peer.send(conn, Payload::CloseChannel { id: c.id, metadata: Metadata::new() }).await
}

async fn client(cmd: &SubjectCmd, scenario: &str) -> CaseResult<(Running, Peer)> {
    subject::client(cmd, scenario, ConnectionSettings::default()).await
}

/// The harness's lookup: Person is (age, nickname, name, id) and NotFound
/// is variant 1 (`testbed::evolved("lookup")`); the subject must send its
/// own layout of the argument, a bare u32.
fn lookup(args: &Blob) -> CaseResult<Reply> {
    let id: u32 = wire::decode("lookup args in the subject's layout", args.bytes())?;
    Ok(Reply::Body(match id {
        1 => ResponseBody::Ok(blob(&(36u8, Some("Countess"), "Ada", 1u32))),
        // Gone, the variant the subject lacks.
        3 => ResponseBody::User(blob(&0u32)),
        id => ResponseBody::User(blob(&(1u32, id))),
    }))
}

/// reverse of the subject's layout, a bare String (the harness's own has
/// an optional `prefix` first, which the subject must not fill in: the
/// receiver translates).
fn reverse(args: &Blob) -> CaseResult<Reply> {
    let s: String = match wire::decode("reverse args", args.bytes()) {
        Ok(s) => s,
        Err(e) => fail!("schema.evolution: reverse's arguments are not the subject's own (s: String): {e}"),
    };
    Ok(Reply::Body(ResponseBody::Ok(blob(&s.chars().rev().collect::<String>()))))
}

/// The subject, as caller, sends its requests in its own layout and
/// translates the harness's return values and errors by name (reordered
/// fields, an added field skipped, variant indices shifted); its queries
/// carry each of its types once per connection and name as held the types
/// the harness sent; a method whose signatures match (`generate`) is
/// answered `Same` and takes the plain path.
pub async fn schema_evolution_subject_translates_by_name(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "evolved_schemas").await?;
    let r = async {
        let schema = |name: &str| {
            Ok(match name {
                "lookup" | "reverse" => Some(testbed::evolved(name)?),
                "generate" => Some(testbed::subject(name)?),
                _ => None,
            })
        };
        let log = serve(&mut peer, schema, |name, args| match name {
            "lookup" => lookup(args),
            "reverse" => reverse(args),
            "generate" => {
                let n: u32 = wire::decode("generate args", args.bytes())?;
                let items = (0..n as i32).map(|i| blob(&i)).collect();
                Ok(Reply::Stream(items, ResponseBody::Ok(blob(&()))))
            }
            _ => Ok(Reply::Body(ResponseBody::UnknownMethod)),
        })
        .await?;
        ensure!(
            log == [
                "query lookup",
                "call lookup",
                "call lookup",
                "query reverse",
                "call reverse",
                "query generate",
                "call generate"
            ],
            "schema.identity: once per connection and method, before first use; the subject sent {log:?}"
        );
        Ok(())
    }
    .await;
    drop(peer);
    running.conclude(r).await
}

/// A value of a variant the subject lacks (the harness's `Gone` error)
/// fails that call only, with `IncompatibleSchema` naming the method, the
/// path and the variant, when it arrives; the next call of the same method
/// and another method work (the subject's scenario checks the outcomes).
pub async fn schema_incompatible_subject_unknown_variant_fails_that_call(cmd: SubjectCmd) -> CaseResult {
    let (running, mut peer) = client(&cmd, "unknown_variant").await?;
    let r = async {
        let schema = |name: &str| Ok(if name == "lookup" { Some(testbed::evolved(name)?) } else { None });
        let log = serve(&mut peer, schema, |name, args| match name {
            "lookup" => lookup(args),
            "reverse" => reverse(args),
            _ => Ok(Reply::Body(ResponseBody::UnknownMethod)),
        })
        .await?;
        ensure!(
            log == ["query lookup", "call lookup", "call lookup", "query reverse", "call reverse"],
            "schema.incompatible: the subject sent {log:?} (lookup(3), lookup(1), reverse expected)"
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
        let schema = |name: &str| Ok(if name == "divide" { Some(testbed::evolved(name)?) } else { None });
        let log = serve(&mut peer, schema, |name, args| match name {
            "reverse" => reverse(args),
            _ => Ok(Reply::Body(ResponseBody::UnknownMethod)),
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
