//! The golden wire vectors: one example value of every message shape, shared
//! by `wire_golden.rs` (checked against `docs/spec/wire.md`) and
//! `wire_decode_never_panics.rs` (used as seeds for mutation).

use bytes::Bytes;
use vox_core::schema::{SchemaAnswer, SchemaBuilder, SchemaHash, SchemaQuery, TypeSchema};
use vox_core::wire::{
    Blob, ChannelDecl, ChannelDirection, ChannelId, ClientHello, ConduitMode, ConduitMsg, ConnectionId,
    ConnectionSettings, DecodeError, HandshakeMsg, Hello, HelloYourself, Message, MetadataValue, MethodId,
    NO_PROPAGATE, Parity, Payload, RequestId, ResponseBody, ResumeKey, SENSITIVE, ServerHello, StableFrame,
    StableHelloReply, StableMsg, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello, TransportMsg, decode, encode,
};
use vox_core::wire::{Metadata, PROTOCOL_VERSION};

/// One example value of one of the top-level message types a decoder is
/// called with.
#[derive(Clone, Debug, PartialEq)]
pub enum Vector {
    Transport(TransportMsg),
    Conduit(ConduitMsg),
    Handshake(HandshakeMsg),
    Message(Message),
    ClientHello(ClientHello),
    ServerHello(ServerHello),
    StableFrame(StableFrame),
    StableHelloReply(StableHelloReply),
    StableMsg(StableMsg),
    Metadata(Metadata),
    SchemaQuery(SchemaQuery),
    SchemaAnswer(SchemaAnswer),
}

impl Vector {
    /// The name passed to the codec for this vector's type.
    pub fn what(&self) -> &'static str {
        match self {
            Vector::Transport(_) => "TransportMsg",
            Vector::Conduit(_) => "ConduitMsg",
            Vector::Handshake(_) => "HandshakeMsg",
            Vector::Message(_) => "Message",
            Vector::ClientHello(_) => "ClientHello",
            Vector::ServerHello(_) => "ServerHello",
            Vector::StableFrame(_) => "StableFrame",
            Vector::StableHelloReply(_) => "StableHelloReply",
            Vector::StableMsg(_) => "StableMsg",
            Vector::Metadata(_) => "Metadata",
            Vector::SchemaQuery(_) => "SchemaQuery",
            Vector::SchemaAnswer(_) => "SchemaAnswer",
        }
    }

    /// The encoding with `vox_core::wire::encode`.
    pub fn encode(&self) -> Vec<u8> {
        let what = self.what();
        let encoded = match self {
            Vector::Transport(v) => encode(what, v),
            Vector::Conduit(v) => encode(what, v),
            Vector::Handshake(v) => encode(what, v),
            Vector::Message(v) => encode(what, v),
            Vector::ClientHello(v) => encode(what, v),
            Vector::ServerHello(v) => encode(what, v),
            Vector::StableFrame(v) => encode(what, v),
            Vector::StableHelloReply(v) => encode(what, v),
            Vector::StableMsg(v) => encode(what, v),
            Vector::Metadata(v) => encode(what, v),
            Vector::SchemaQuery(v) => encode(what, v),
            Vector::SchemaAnswer(v) => encode(what, v),
        };
        encoded.unwrap_or_else(|e| panic!("encoding a {what} failed: {e}"))
    }

    /// Decodes `input` as the same type as `self`.
    pub fn decode_same_type(&self, input: &Bytes) -> Result<Vector, DecodeError> {
        let what = self.what();
        Ok(match self {
            Vector::Transport(_) => Vector::Transport(decode(what, input)?),
            Vector::Conduit(_) => Vector::Conduit(decode(what, input)?),
            Vector::Handshake(_) => Vector::Handshake(decode(what, input)?),
            Vector::Message(_) => Vector::Message(decode(what, input)?),
            Vector::ClientHello(_) => Vector::ClientHello(decode(what, input)?),
            Vector::ServerHello(_) => Vector::ServerHello(decode(what, input)?),
            Vector::StableFrame(_) => Vector::StableFrame(decode(what, input)?),
            Vector::StableHelloReply(_) => Vector::StableHelloReply(decode(what, input)?),
            Vector::StableMsg(_) => Vector::StableMsg(decode(what, input)?),
            Vector::Metadata(_) => Vector::Metadata(decode(what, input)?),
            Vector::SchemaQuery(_) => Vector::SchemaQuery(decode(what, input)?),
            Vector::SchemaAnswer(_) => Vector::SchemaAnswer(decode(what, input)?),
        })
    }
}

/// Decodes `input` with every top-level decoder. Each result is `Ok` or
/// `Err`; a panic escapes to the caller.
pub fn decode_with_every_decoder(input: &Bytes) -> Vec<Result<Vector, DecodeError>> {
    vec![
        decode("TransportMsg", input).map(Vector::Transport),
        decode("ConduitMsg", input).map(Vector::Conduit),
        decode("HandshakeMsg", input).map(Vector::Handshake),
        decode("Message", input).map(Vector::Message),
        decode("ClientHello", input).map(Vector::ClientHello),
        decode("ServerHello", input).map(Vector::ServerHello),
        decode("StableFrame", input).map(Vector::StableFrame),
        decode("StableHelloReply", input).map(Vector::StableHelloReply),
        decode("StableMsg", input).map(Vector::StableMsg),
        decode("Metadata", input).map(Vector::Metadata),
        decode("SchemaQuery", input).map(Vector::SchemaQuery),
        decode("SchemaAnswer", input).map(Vector::SchemaAnswer),
    ]
}

/// The resume key used by the examples: bytes 0x00..=0x0f.
pub fn example_resume_key() -> ResumeKey {
    ResumeKey(Blob::from((0u8..16).collect::<Vec<u8>>()))
}

fn md(entries: &[(&str, MetadataValue, u64)]) -> Metadata {
    let mut out = Metadata::new();
    for (key, value, flags) in entries {
        out.push(*key, value.clone(), *flags);
    }
    out
}

fn string(s: &str) -> MetadataValue {
    MetadataValue::String(s.to_owned())
}

fn on(connection: u64, payload: Payload) -> Message {
    Message { connection_id: ConnectionId(connection), payload }
}

fn response(ret: ResponseBody) -> Message {
    on(0, Payload::Response { id: RequestId(7), ret, metadata: Metadata::new() })
}

/// The example handshake messages, as (handshake name, conduit name, value).
fn handshakes() -> Vec<(&'static str, &'static str, HandshakeMsg)> {
    vec![
        (
            "handshake.hello",
            "conduit.handshake.hello",
            HandshakeMsg::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                parity: Parity::Odd,
                root_settings: ConnectionSettings::default(),
                features: vec!["retry".to_owned()],
                resume_key: None,
            }),
        ),
        (
            "handshake.hello.resume",
            "conduit.handshake.hello.resume",
            HandshakeMsg::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                parity: Parity::Odd,
                root_settings: ConnectionSettings::default(),
                features: vec![vox_core::wire::SESSION_RESUME_FEATURE.to_owned()],
                resume_key: Some(example_resume_key()),
            }),
        ),
        (
            "handshake.hello_yourself",
            "conduit.handshake.hello_yourself",
            HandshakeMsg::HelloYourself(HelloYourself {
                protocol_version: PROTOCOL_VERSION,
                root_settings: ConnectionSettings { max_concurrent_requests: 32, max_initial_credit: 16 },
                features: vec![],
                resume_key: Some(example_resume_key()),
            }),
        ),
        ("handshake.lets_go", "conduit.handshake.lets_go", HandshakeMsg::LetsGo),
        (
            "handshake.sorry",
            "conduit.handshake.sorry",
            HandshakeMsg::Sorry { reason: "protocol version 9 unsupported".to_owned() },
        ),
    ]
}

/// The example session messages, one per payload kind, as (message name,
/// conduit name, value).
fn payloads() -> Vec<(&'static str, &'static str, Message)> {
    vec![
        (
            "payload.protocol_error",
            "conduit.payload.protocol_error",
            on(0, Payload::ProtocolError { description: "bad parity".to_owned() }),
        ),
        ("payload.ping", "conduit.payload.ping", on(0, Payload::Ping { nonce: 300 })),
        ("payload.pong", "conduit.payload.pong", on(0, Payload::Pong { nonce: 300 })),
        (
            "payload.open_connection",
            "conduit.payload.open_connection",
            on(
                3,
                Payload::OpenConnection {
                    parity: Parity::Even,
                    settings: ConnectionSettings { max_concurrent_requests: 8, max_initial_credit: 16 },
                    metadata: md(&[("tenant", string("acme"), 0)]),
                },
            ),
        ),
        (
            "payload.accept_connection",
            "conduit.payload.accept_connection",
            on(3, Payload::AcceptConnection { settings: ConnectionSettings::default(), metadata: Metadata::new() }),
        ),
        (
            "payload.reject_connection",
            "conduit.payload.reject_connection",
            on(5, Payload::RejectConnection { metadata: md(&[("reason", string("limit"), 0)]) }),
        ),
        (
            "payload.close_connection",
            "conduit.payload.close_connection",
            on(3, Payload::CloseConnection { metadata: Metadata::new() }),
        ),
        (
            "payload.request",
            "conduit.payload.request",
            on(
                0,
                Payload::Request {
                    id: RequestId(1),
                    method_id: MethodId(0x0123_4567_89ab_cdef),
                    args: Blob::from(&b"\x01\x02\x03"[..]),
                    channels: vec![
                        ChannelDecl {
                            id: ChannelId(1),
                            direction: ChannelDirection::CallerToHandler,
                            initial_credit: 16,
                        },
                        ChannelDecl {
                            id: ChannelId(3),
                            direction: ChannelDirection::HandlerToCaller,
                            initial_credit: 0,
                        },
                    ],
                    metadata: md(&[("op-id", MetadataValue::U64(42), NO_PROPAGATE)]),
                },
            ),
        ),
        (
            "payload.response",
            "conduit.payload.response",
            on(
                0,
                Payload::Response {
                    id: RequestId(1),
                    ret: ResponseBody::Ok(Blob::from(&b"\x2a"[..])),
                    metadata: md(&[("server", string("a"), 0)]),
                },
            ),
        ),
        (
            "payload.cancel_request",
            "conduit.payload.cancel_request",
            on(0, Payload::CancelRequest { id: RequestId(1) }),
        ),
        (
            "payload.channel_item",
            "conduit.payload.channel_item",
            on(0, Payload::ChannelItem { id: ChannelId(1), item: Blob::from(&b"hi"[..]) }),
        ),
        (
            "payload.close_channel",
            "conduit.payload.close_channel",
            on(0, Payload::CloseChannel { id: ChannelId(1), metadata: Metadata::new() }),
        ),
        (
            "payload.reset_channel",
            "conduit.payload.reset_channel",
            on(0, Payload::ResetChannel { id: ChannelId(3), metadata: md(&[("why", string("stop"), 0)]) }),
        ),
        (
            "payload.grant_credit",
            "conduit.payload.grant_credit",
            on(0, Payload::GrantCredit { id: ChannelId(3), additional: 16 }),
        ),
        (
            "payload.channel_items",
            "conduit.payload.channel_items",
            on(
                0,
                Payload::ChannelItems { id: ChannelId(1), items: vec![Blob::from(&b"hi"[..]), Blob::from(&b"!"[..])] },
            ),
        ),
    ]
}

/// Every golden vector, by its stable name (the first column of the table in
/// `docs/spec/wire.md`).
pub fn vectors() -> Vec<(&'static str, Vector)> {
    let hello = |mode| TransportMsg::Hello(TransportHello { magic: TRANSPORT_MAGIC, version: TRANSPORT_VERSION, mode });
    let mut out: Vec<(&'static str, Vector)> = vec![
        ("transport.hello.bare", Vector::Transport(hello(ConduitMode::Bare))),
        ("transport.hello.stable", Vector::Transport(hello(ConduitMode::Stable))),
        ("transport.accept.bare", Vector::Transport(TransportMsg::Accept { mode: ConduitMode::Bare })),
        ("transport.accept.stable", Vector::Transport(TransportMsg::Accept { mode: ConduitMode::Stable })),
        ("transport.reject", Vector::Transport(TransportMsg::Reject { reason: "no stable".to_owned() })),
    ];
    for (name, conduit_name, msg) in handshakes() {
        out.push((name, Vector::Handshake(msg.clone())));
        out.push((conduit_name, Vector::Conduit(ConduitMsg::Handshake(msg))));
    }
    for (name, conduit_name, msg) in payloads() {
        out.push((name, Vector::Message(msg.clone())));
        out.push((conduit_name, Vector::Conduit(ConduitMsg::Message(msg))));
    }
    out.extend([
        ("response.ok", Vector::Message(response(ResponseBody::Ok(Blob::from(&b"\x2a"[..]))))),
        ("response.user", Vector::Message(response(ResponseBody::User(Blob::from(&b"\x01"[..]))))),
        ("response.unknown_method", Vector::Message(response(ResponseBody::UnknownMethod))),
        (
            "response.invalid_payload",
            Vector::Message(response(ResponseBody::InvalidPayload { reason: "eof".to_owned() })),
        ),
        ("response.cancelled", Vector::Message(response(ResponseBody::Cancelled))),
        ("response.indeterminate", Vector::Message(response(ResponseBody::Indeterminate))),
        (
            "response.handler_failed",
            Vector::Message(response(ResponseBody::HandlerFailed { reason: "panic".to_owned() })),
        ),
        ("response.rejected", Vector::Message(response(ResponseBody::Rejected { reason: "conflict".to_owned() }))),
        ("response.deadline_exceeded", Vector::Message(response(ResponseBody::DeadlineExceeded))),
        (
            "response.incompatible_schema",
            Vector::Message(response(ResponseBody::IncompatibleSchema {
                method: "Shop.paint".to_owned(),
                path: "args.color: Color".to_owned(),
                field: "Blue".to_owned(),
                reason: "no such variant".to_owned(),
            })),
        ),
        ("metadata.empty", Vector::Metadata(Metadata::new())),
        ("metadata.string", Vector::Metadata(md(&[("k", string("v"), 0)]))),
        ("metadata.bytes", Vector::Metadata(md(&[("k", MetadataValue::Bytes(Blob::from(&b"\xde\xad"[..])), 0)]))),
        ("metadata.u64", Vector::Metadata(md(&[("k", MetadataValue::U64(1500), 0)]))),
        ("metadata.flags", Vector::Metadata(md(&[("token", string("s"), SENSITIVE | NO_PROPAGATE | (1 << 40))]))),
        ("metadata.duplicate_keys", Vector::Metadata(md(&[("k", string("1"), 0), ("k", MetadataValue::U64(2), 0)]))),
        ("stable.client_hello.new", Vector::ClientHello(ClientHello { resume_key: None, last_received: None })),
        (
            "stable.client_hello.resume",
            Vector::ClientHello(ClientHello { resume_key: Some(example_resume_key()), last_received: Some(41) }),
        ),
        (
            "stable.server_hello",
            Vector::ServerHello(ServerHello { resume_key: example_resume_key(), last_received: None }),
        ),
        (
            "stable.server_hello.resumed",
            Vector::ServerHello(ServerHello { resume_key: example_resume_key(), last_received: Some(7) }),
        ),
    ]);
    let ping = encode("ConduitMsg", &ConduitMsg::Message(on(0, Payload::Ping { nonce: 300 })))
        .unwrap_or_else(|e| panic!("encoding a ConduitMsg failed: {e}"));
    out.extend([
        ("stable.frame", Vector::StableFrame(StableFrame { seq: 0, ack: None, item: Blob::from(ping.clone()) })),
        ("stable.frame.ack", Vector::StableFrame(StableFrame { seq: 5, ack: Some(3), item: Blob::from(ping) })),
        (
            "stable.frame.wrap",
            Vector::StableFrame(StableFrame { seq: u32::MAX, ack: Some(u32::MAX - 1), item: Blob::default() }),
        ),
        (
            "stable.reply.welcome",
            Vector::StableHelloReply(StableHelloReply::Welcome(ServerHello {
                resume_key: example_resume_key(),
                last_received: Some(7),
            })),
        ),
        ("stable.reply.unknown_key", Vector::StableHelloReply(StableHelloReply::UnknownKey { reason: "gone".into() })),
        (
            "stable.msg.frame",
            Vector::StableMsg(StableMsg::Frame(StableFrame { seq: 1, ack: Some(0), item: Blob::default() })),
        ),
        ("stable.msg.ack", Vector::StableMsg(StableMsg::Ack { ack: 300 })),
        ("stable.msg.bye", Vector::StableMsg(StableMsg::Bye)),
    ]);
    out.extend(schema_vectors());
    out
}

/// `paint(color: Color) -> Color` with `enum Color { Red, Green }`.
#[derive(serde::Serialize, serde::Deserialize, vox_core::Schema)]
#[allow(dead_code)]
enum Color {
    Red,
    Green,
}

/// An item type with a defaulted field.
#[derive(serde::Serialize, serde::Deserialize, vox_core::Schema)]
#[allow(dead_code)]
struct Line {
    sku: String,
    #[serde(default)]
    qty: u32,
}

/// The schema of `paint(&self, color: Color) -> Color`.
pub fn example_paint_schema() -> vox_core::schema::MethodSchema {
    let mut b = SchemaBuilder::new();
    let color = b.of::<Color>();
    vox_core::schema::MethodSchema::new("paint", b, vec![("color", color)], color, None, vec![])
}

/// The schema of `feed(&self, lines: Rx<Line>) -> Result<u32, String>`.
pub fn example_feed_schema() -> vox_core::schema::MethodSchema {
    let mut b = SchemaBuilder::new();
    let line = b.of::<Line>();
    let ret = b.of::<u32>();
    let err = b.of::<String>();
    vox_core::schema::MethodSchema::new(
        "feed",
        b,
        vec![],
        ret,
        Some(err),
        vec![("lines", ChannelDirection::CallerToHandler, line)],
    )
}

fn schema_vectors() -> Vec<(&'static str, Vector)> {
    let (paint, paint_types) = example_paint_schema().split();
    let (feed, feed_types) = example_feed_schema().split();
    let types = |t: Vec<(SchemaHash, TypeSchema)>| t.into_iter().map(|(_, t)| t).collect::<Vec<_>>();
    // A held hash that is no real type's: bytes 0x00..=0x1f.
    let mut held = [0u8; 32];
    for (i, b) in held.iter_mut().enumerate() {
        *b = i as u8;
    }
    vec![
        (
            "schema.query",
            Vector::SchemaQuery(SchemaQuery {
                method: MethodId(0x0123456789abcdef),
                signature: paint.clone(),
                types: types(paint_types.clone()),
                held: vec![SchemaHash(held)],
            }),
        ),
        ("schema.answer.same", Vector::SchemaAnswer(SchemaAnswer::Same)),
        (
            "schema.answer.paint",
            Vector::SchemaAnswer(SchemaAnswer::Different { signature: paint, types: types(paint_types) }),
        ),
        (
            "schema.answer.feed",
            Vector::SchemaAnswer(SchemaAnswer::Different { signature: feed, types: types(feed_types) }),
        ),
    ]
}
