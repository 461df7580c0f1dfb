//! The seed corpora: valid encodings of representative messages and a few
//! edge cases for the decoder and link targets, and encoded scenarios for
//! the `session` target.
//!
//! A scenario is written in the byte layout `arbitrary` reads it back from
//! ([`Enc`]): integers little endian at their full width, an enum as a
//! `u32` that `arbitrary` scales to the variant (`(v * count) >> 32`),
//! [`Few`] as a count byte then the values, and the actions one after the
//! other until the end of the input. [`all`] checks that every scenario
//! reads back unchanged, so the two cannot drift apart silently.

use crate::session::*;
use arbitrary::{Arbitrary, Unstructured};
use vox_core::wire::{
    self, Blob, ChannelDecl, ChannelDirection, ChannelId, ClientHello, ConduitMode, ConduitMsg, ConnectionId,
    ConnectionSettings, HandshakeMsg, Hello, HelloYourself, Message, Metadata, MetadataValue, MethodId,
    PROTOCOL_VERSION, Parity, Payload, RequestId, ResponseBody, ResumeKey, SENSITIVE, SESSION_RESUME_FEATURE,
    ServerHello, StableFrame, StableHelloReply, StableMsg, TRANSPORT_MAGIC, TRANSPORT_VERSION, TransportHello,
    TransportMsg,
};

/// One seed file: target, file name, contents.
pub type Seed = (&'static str, String, Vec<u8>);

/// Writes a value in the layout `arbitrary` reads it from.
pub trait Enc {
    /// Appends the encoding of `self`.
    fn enc(&self, out: &mut Vec<u8>);
}

/// The `u32` that `arbitrary`'s derive maps to variant `index` of `count`.
fn tag(out: &mut Vec<u8>, index: u64, count: u64) {
    let v = ((index << 32).div_ceil(count)) as u32;
    out.extend_from_slice(&v.to_le_bytes());
}

impl Enc for u8 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }
}
impl Enc for u16 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}
impl Enc for u32 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}
impl Enc for u64 {
    fn enc(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl<T: Enc, const N: usize> Enc for Few<T, N> {
    fn enc(&self, out: &mut Vec<u8>) {
        assert!(self.0.len() <= N, "Few<_, {N}> with {} values", self.0.len());
        (self.0.len() as u8).enc(out);
        for v in &self.0 {
            v.enc(out);
        }
    }
}

impl Enc for Scenario {
    fn enc(&self, out: &mut Vec<u8>) {
        self.setup.enc(out);
        for a in &self.actions {
            a.enc(out);
        }
    }
}

impl Enc for Setup {
    fn enc(&self, out: &mut Vec<u8>) {
        self.mode.enc(out);
        self.parity.enc(out);
        self.max_concurrent.enc(out);
        self.max_credit.enc(out);
        self.features.enc(out);
        self.server.enc(out);
        self.finish.enc(out);
    }
}

impl Enc for Mode {
    fn enc(&self, out: &mut Vec<u8>) {
        tag(out, *self as u64, 2);
    }
}
impl Enc for Side {
    fn enc(&self, out: &mut Vec<u8>) {
        tag(out, *self as u64, 2);
    }
}
impl Enc for Feature {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            Feature::Unknown(n) => {
                tag(out, 0, 2);
                n.enc(out);
            }
            Feature::Empty => tag(out, 1, 2),
        }
    }
}
impl Enc for ServerKnobs {
    fn enc(&self, out: &mut Vec<u8>) {
        tag(out, *self as u64, 3);
    }
}
impl Enc for Finish {
    fn enc(&self, out: &mut Vec<u8>) {
        tag(out, *self as u64, 5);
    }
}
impl Enc for Dir {
    fn enc(&self, out: &mut Vec<u8>) {
        tag(out, *self as u64, 2);
    }
}
impl Enc for HandshakeSel {
    fn enc(&self, out: &mut Vec<u8>) {
        tag(out, *self as u64, 4);
    }
}

impl Enc for Credit {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            Credit::Small(n) => {
                tag(out, 0, 2);
                n.enc(out);
            }
            Credit::Raw(n) => {
                tag(out, 1, 2);
                n.enc(out);
            }
        }
    }
}

impl Enc for ConnSel {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            ConnSel::Root => tag(out, 0, 3),
            ConnSel::Opened(k) => {
                tag(out, 1, 3);
                k.enc(out);
            }
            ConnSel::Raw(id) => {
                tag(out, 2, 3);
                id.enc(out);
            }
        }
    }
}

macro_rules! enc_id_sel {
    ($t:ident) => {
        impl Enc for $t {
            fn enc(&self, out: &mut Vec<u8>) {
                match self {
                    $t::Next => tag(out, 0, 3),
                    $t::Recent(k) => {
                        tag(out, 1, 3);
                        k.enc(out);
                    }
                    $t::Raw(id) => {
                        tag(out, 2, 3);
                        id.enc(out);
                    }
                }
            }
        }
    };
}
enc_id_sel!(ReqSel);
enc_id_sel!(ChanSel);
enc_id_sel!(NewConn);

impl Enc for ItemSel {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            ItemSel::U32(v) => {
                tag(out, 0, 2);
                v.enc(out);
            }
            ItemSel::Bytes(b) => {
                tag(out, 1, 2);
                b.enc(out);
            }
        }
    }
}

impl Enc for MetaEntry {
    fn enc(&self, out: &mut Vec<u8>) {
        match self.key {
            Key::OpId => tag(out, 0, 5),
            Key::Service => tag(out, 1, 5),
            Key::Reject => tag(out, 2, 5),
            Key::Deadline => tag(out, 3, 5),
            Key::Other(n) => {
                tag(out, 4, 5);
                n.enc(out);
            }
        }
        match self.value {
            Val::U64(n) => {
                tag(out, 0, 4);
                n.enc(out);
            }
            Val::Big(n) => {
                tag(out, 1, 4);
                n.enc(out);
            }
            Val::Str(n) => {
                tag(out, 2, 4);
                n.enc(out);
            }
            Val::Bytes(n) => {
                tag(out, 3, 4);
                n.enc(out);
            }
        }
        self.flags.enc(out);
    }
}

impl Enc for Body {
    fn enc(&self, out: &mut Vec<u8>) {
        let i = match self {
            Body::Ok(n) => {
                tag(out, 0, 9);
                n.enc(out);
                return;
            }
            Body::User => 1,
            Body::UnknownMethod => 2,
            Body::InvalidPayload => 3,
            Body::Cancelled => 4,
            Body::Indeterminate => 5,
            Body::HandlerFailed => 6,
            Body::Rejected => 7,
            Body::DeadlineExceeded => 8,
        };
        tag(out, i, 9);
    }
}

impl Enc for ServerChan {
    fn enc(&self, out: &mut Vec<u8>) {
        match self {
            ServerChan::None => tag(out, 0, 3),
            ServerChan::ToPeer(n) => {
                tag(out, 1, 3);
                n.enc(out);
            }
            ServerChan::FromPeer => tag(out, 2, 3),
        }
    }
}

impl Enc for Method {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 8;
        match self {
            Method::Echo { len } => {
                tag(out, 0, N);
                len.enc(out);
            }
            Method::Drain => tag(out, 1, N),
            Method::Generate { n } => {
                tag(out, 2, N);
                n.enc(out);
            }
            Method::Transform => tag(out, 3, N),
            Method::Wait => tag(out, 4, N),
            Method::Sleep { ms } => {
                tag(out, 5, N);
                ms.enc(out);
            }
            Method::BadArgs => tag(out, 6, N),
            Method::Unknown { id } => {
                tag(out, 7, N);
                id.enc(out);
            }
        }
    }
}

impl Enc for ChanSpec {
    fn enc(&self, out: &mut Vec<u8>) {
        self.id.enc(out);
        self.dir.enc(out);
        self.credit.enc(out);
    }
}

impl Enc for CallSpec {
    fn enc(&self, out: &mut Vec<u8>) {
        self.conn.enc(out);
        self.id.enc(out);
        self.method.enc(out);
        self.channels.enc(out);
        self.meta.enc(out);
    }
}

impl Enc for Action {
    fn enc(&self, out: &mut Vec<u8>) {
        const N: u64 = 21;
        match self {
            Action::Call(c) => {
                tag(out, 0, N);
                c.enc(out);
            }
            Action::Cancel { conn, id } => {
                tag(out, 1, N);
                conn.enc(out);
                id.enc(out);
            }
            Action::Item { conn, chan, item } => {
                tag(out, 2, N);
                conn.enc(out);
                chan.enc(out);
                item.enc(out);
            }
            Action::CloseChannel { conn, chan, meta } => {
                tag(out, 3, N);
                conn.enc(out);
                chan.enc(out);
                meta.enc(out);
            }
            Action::ResetChannel { conn, chan } => {
                tag(out, 4, N);
                conn.enc(out);
                chan.enc(out);
            }
            Action::Grant { conn, chan, credit } => {
                tag(out, 5, N);
                conn.enc(out);
                chan.enc(out);
                credit.enc(out);
            }
            Action::Open { id, parity, max_concurrent, max_credit, meta } => {
                tag(out, 6, N);
                id.enc(out);
                parity.enc(out);
                max_concurrent.enc(out);
                max_credit.enc(out);
                meta.enc(out);
            }
            Action::CloseConnection { conn, meta } => {
                tag(out, 7, N);
                conn.enc(out);
                meta.enc(out);
            }
            Action::Accept { conn } => {
                tag(out, 8, N);
                conn.enc(out);
            }
            Action::Reject { conn } => {
                tag(out, 9, N);
                conn.enc(out);
            }
            Action::Respond { conn, id, body } => {
                tag(out, 10, N);
                conn.enc(out);
                id.enc(out);
                body.enc(out);
            }
            Action::Ping { nonce } => {
                tag(out, 11, N);
                nonce.enc(out);
            }
            Action::Pong { nonce } => {
                tag(out, 12, N);
                nonce.enc(out);
            }
            Action::ServerCall { method, args_len, channel } => {
                tag(out, 13, N);
                method.enc(out);
                args_len.enc(out);
                channel.enc(out);
            }
            Action::ServerOpen => tag(out, 14, N),
            Action::Settle => tag(out, 15, N),
            Action::Advance { ms } => {
                tag(out, 16, N);
                ms.enc(out);
            }
            Action::BreakLink => tag(out, 17, N),
            Action::Handshake(h) => {
                tag(out, 18, N);
                h.enc(out);
            }
            Action::Garbage { bytes } => {
                tag(out, 19, N);
                bytes.enc(out);
            }
            Action::ProtocolError => tag(out, 20, N),
        }
    }
}

/// Encodes a scenario and checks that `arbitrary` reads it back unchanged.
pub fn encode_scenario(s: &Scenario) -> Vec<u8> {
    let mut out = Vec::new();
    s.enc(&mut out);
    let back = Scenario::arbitrary_take_rest(Unstructured::new(&out)).expect("arbitrary");
    assert_eq!(&back, s, "the seed encoder and arbitrary disagree");
    out
}

// ---------------------------------------------------------------- helpers

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    wire::encode("seed", v).expect("encode seed")
}

fn md() -> Metadata {
    let mut m = Metadata::new().with_str("trace-id", "abc", 0).with_u64("vox.op-id", 7, 2);
    m.push("token", MetadataValue::Bytes(Blob::from(vec![1u8, 2, 3])), SENSITIVE | 1 << 9);
    m
}

fn msg(conn: u64, payload: Payload) -> ConduitMsg {
    ConduitMsg::Message(Message { connection_id: ConnectionId(conn), payload })
}

/// One message of each payload kind (and each response body).
pub fn messages() -> Vec<(&'static str, ConduitMsg)> {
    let settings = ConnectionSettings::default();
    let mut v = vec![
        ("protocol-error", msg(0, Payload::ProtocolError { description: "bad id".into() })),
        ("ping", msg(0, Payload::Ping { nonce: 42 })),
        ("pong", msg(0, Payload::Pong { nonce: u64::MAX })),
        ("open", msg(3, Payload::OpenConnection { parity: Parity::Odd, settings: settings.clone(), metadata: md() })),
        ("accept", msg(2, Payload::AcceptConnection { settings: settings.clone(), metadata: Metadata::new() })),
        (
            "reject",
            msg(2, Payload::RejectConnection { metadata: Metadata::new().with_str("vox-reject-reason", "no", 0) }),
        ),
        ("close-conn", msg(5, Payload::CloseConnection { metadata: Metadata::new() })),
        (
            "request",
            msg(
                0,
                Payload::Request {
                    id: RequestId(1),
                    method_id: MethodId::from_names("Testbed", "echo"),
                    args: Blob::from(enc(&"hello")),
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
                    metadata: md(),
                },
            ),
        ),
        ("cancel", msg(0, Payload::CancelRequest { id: RequestId(9) })),
        ("item", msg(0, Payload::ChannelItem { id: ChannelId(1), item: Blob::from(enc(&7u32)) })),
        ("close-chan", msg(0, Payload::CloseChannel { id: ChannelId(1), metadata: Metadata::new() })),
        ("reset-chan", msg(0, Payload::ResetChannel { id: ChannelId(3), metadata: md() })),
        ("grant", msg(7, Payload::GrantCredit { id: ChannelId(3), additional: u32::MAX })),
    ];
    let bodies = [
        ("ok", ResponseBody::Ok(Blob::from(enc(&5u64)))),
        ("user", ResponseBody::User(Blob::from(enc(&"division by zero")))),
        ("unknown-method", ResponseBody::UnknownMethod),
        ("invalid-payload", ResponseBody::InvalidPayload { reason: "eof".into() }),
        ("cancelled", ResponseBody::Cancelled),
        ("indeterminate", ResponseBody::Indeterminate),
        ("handler-failed", ResponseBody::HandlerFailed { reason: "panic".into() }),
        ("rejected", ResponseBody::Rejected { reason: "conflict".into() }),
        ("deadline-exceeded", ResponseBody::DeadlineExceeded),
    ];
    for (name, ret) in bodies {
        let m = msg(0, Payload::Response { id: RequestId(1), ret, metadata: Metadata::new() });
        v.push((name, m));
    }
    v
}

/// The handshake messages.
pub fn handshakes() -> Vec<(&'static str, ConduitMsg)> {
    let key = ResumeKey(Blob::from(vec![0xabu8; 16]));
    vec![
        (
            "hello",
            ConduitMsg::Handshake(HandshakeMsg::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                parity: Parity::Odd,
                root_settings: ConnectionSettings::default(),
                features: vec![],
                resume_key: None,
            })),
        ),
        (
            "hello-resume",
            ConduitMsg::Handshake(HandshakeMsg::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                parity: Parity::Even,
                root_settings: ConnectionSettings { max_concurrent_requests: 1, max_initial_credit: 0 },
                features: vec![SESSION_RESUME_FEATURE.into(), "x".into()],
                resume_key: Some(key.clone()),
            })),
        ),
        (
            "hello-yourself",
            ConduitMsg::Handshake(HandshakeMsg::HelloYourself(HelloYourself {
                protocol_version: PROTOCOL_VERSION,
                root_settings: ConnectionSettings::default(),
                features: vec![SESSION_RESUME_FEATURE.into()],
                resume_key: Some(key),
            })),
        ),
        ("lets-go", ConduitMsg::Handshake(HandshakeMsg::LetsGo)),
        ("sorry", ConduitMsg::Handshake(HandshakeMsg::Sorry { reason: "version".into() })),
    ]
}

/// Edge cases every decoder gets: empty, a lone byte, a huge varint length
/// or count, an unknown variant.
fn edges(target: &'static str, out: &mut Vec<Seed>) {
    let cases: [(&str, &[u8]); 6] = [
        ("edge-empty", &[]),
        ("edge-zero", &[0]),
        ("edge-unknown-variant", &[0x7f]),
        ("edge-huge-varint", &[0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        ("edge-overlong-varint", &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
        ("edge-ff", &[0xff; 16]),
    ];
    for (name, bytes) in cases {
        out.push((target, name.to_string(), bytes.to_vec()));
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

// ---------------------------------------------------------------- scenarios

fn setup() -> Setup {
    Setup {
        mode: Mode::Bare,
        parity: Side::Odd,
        max_concurrent: 64,
        max_credit: 64,
        features: Few(vec![]),
        server: ServerKnobs::Default,
        finish: Finish::LetsGo,
    }
}

fn call(method: Method, channels: Vec<ChanSpec>) -> Action {
    Action::Call(CallSpec { conn: ConnSel::Root, id: ReqSel::Next, method, channels: Few(channels), meta: Few(vec![]) })
}

fn chan(dir: Dir, credit: u8) -> ChanSpec {
    ChanSpec { id: ChanSel::Next, dir, credit: Credit::Small(credit) }
}

fn item(v: u32) -> Action {
    Action::Item { conn: ConnSel::Root, chan: ChanSel::Recent(0), item: ItemSel::U32(v) }
}

const ROOT: ConnSel = ConnSel::Root;

/// The `session` seeds: (name, scenario).
pub fn scenarios() -> Vec<(&'static str, Scenario)> {
    use Action::*;
    let s = |actions: Vec<Action>| Scenario { setup: setup(), actions };
    let with = |setup: Setup, actions: Vec<Action>| Scenario { setup, actions };
    let stable = Setup { mode: Mode::Stable, ..setup() };
    let even = Setup { parity: Side::Even, features: Few(vec![Feature::Unknown(1), Feature::Empty]), ..setup() };
    let tight = Setup { server: ServerKnobs::Tight, ..setup() };
    let keepalive = Setup { server: ServerKnobs::Keepalive, ..setup() };
    let op = |n: u8| Few(vec![MetaEntry { key: Key::OpId, value: Val::U64(n), flags: 2 }]);
    vec![
        ("ping", s(vec![Ping { nonce: 1 }])),
        ("nothing", s(vec![])),
        ("echo", s(vec![call(Method::Echo { len: 4 }, vec![]), Settle])),
        ("echo-big", s(vec![call(Method::Echo { len: 255 }, vec![])])),
        (
            "drain",
            s(vec![
                call(Method::Drain, vec![chan(Dir::CallerToHandler, 16)]),
                item(1),
                item(2),
                item(3),
                CloseChannel { conn: ROOT, chan: ChanSel::Recent(0), meta: Few(vec![]) },
            ]),
        ),
        ("drain-over-credit", s(vec![call(Method::Drain, vec![chan(Dir::CallerToHandler, 1)]), item(1), item(2)])),
        (
            "generate-grant",
            s(vec![
                call(Method::Generate { n: 20 }, vec![chan(Dir::HandlerToCaller, 4)]),
                Settle,
                Grant { conn: ROOT, chan: ChanSel::Recent(0), credit: Credit::Small(16) },
                Settle,
            ]),
        ),
        (
            "generate-reset",
            s(vec![
                call(Method::Generate { n: 30 }, vec![chan(Dir::HandlerToCaller, 2)]),
                ResetChannel { conn: ROOT, chan: ChanSel::Recent(0) },
                Grant { conn: ROOT, chan: ChanSel::Recent(0), credit: Credit::Raw(u32::MAX) },
            ]),
        ),
        (
            "transform",
            s(vec![
                call(Method::Transform, vec![chan(Dir::CallerToHandler, 8), chan(Dir::HandlerToCaller, 8)]),
                Item { conn: ROOT, chan: ChanSel::Recent(1), item: ItemSel::U32(5) },
                Item { conn: ROOT, chan: ChanSel::Recent(1), item: ItemSel::Bytes(Few(vec![0xff])) },
                CloseChannel { conn: ROOT, chan: ChanSel::Recent(1), meta: Few(vec![]) },
            ]),
        ),
        ("cancel-wait", s(vec![call(Method::Wait, vec![]), Settle, Cancel { conn: ROOT, id: ReqSel::Recent(0) }])),
        ("cancel-unknown", s(vec![Cancel { conn: ROOT, id: ReqSel::Raw(99) }])),
        ("sleep", s(vec![call(Method::Sleep { ms: 1500 }, vec![]), Advance { ms: 2000 }])),
        (
            "deadline-sleep",
            s(vec![
                Action::Call(CallSpec {
                    conn: ROOT,
                    id: ReqSel::Next,
                    method: Method::Sleep { ms: 5000 },
                    channels: Few(vec![]),
                    meta: Few(vec![MetaEntry { key: Key::Deadline, value: Val::Big(1_000_000), flags: 2 }]),
                }),
                Advance { ms: 2000 },
                Action::Call(CallSpec {
                    conn: ROOT,
                    id: ReqSel::Next,
                    method: Method::Drain,
                    channels: Few(vec![chan(Dir::CallerToHandler, 4)]),
                    meta: Few(vec![MetaEntry { key: Key::Deadline, value: Val::U64(0), flags: 0 }]),
                }),
                item(1),
            ]),
        ),
        (
            "deadline-not-u64",
            s(vec![Action::Call(CallSpec {
                conn: ROOT,
                id: ReqSel::Next,
                method: Method::Echo { len: 1 },
                channels: Few(vec![]),
                meta: Few(vec![MetaEntry { key: Key::Deadline, value: Val::Str(4), flags: 0 }]),
            })]),
        ),
        ("bad-args", s(vec![call(Method::BadArgs, vec![chan(Dir::HandlerToCaller, 1)])])),
        ("unknown-method", s(vec![call(Method::Unknown { id: 12345 }, vec![chan(Dir::CallerToHandler, 0)])])),
        (
            "op-id-duplicate",
            s(vec![
                Action::Call(CallSpec {
                    conn: ROOT,
                    id: ReqSel::Next,
                    method: Method::Echo { len: 1 },
                    channels: Few(vec![]),
                    meta: op(1),
                }),
                Action::Call(CallSpec {
                    conn: ROOT,
                    id: ReqSel::Next,
                    method: Method::Echo { len: 1 },
                    channels: Few(vec![]),
                    meta: op(1),
                }),
                Action::Call(CallSpec {
                    conn: ROOT,
                    id: ReqSel::Next,
                    method: Method::Echo { len: 2 },
                    channels: Few(vec![]),
                    meta: op(1),
                }),
            ]),
        ),
        (
            "open-call-close",
            s(vec![
                Open { id: NewConn::Next, parity: Side::Even, max_concurrent: 8, max_credit: 8, meta: Few(vec![]) },
                Settle,
                Action::Call(CallSpec {
                    conn: ConnSel::Opened(0),
                    id: ReqSel::Next,
                    method: Method::Echo { len: 1 },
                    channels: Few(vec![]),
                    meta: Few(vec![]),
                }),
                Settle,
                CloseConnection { conn: ConnSel::Opened(0), meta: Few(vec![]) },
                Action::Call(CallSpec {
                    conn: ConnSel::Opened(0),
                    id: ReqSel::Next,
                    method: Method::Echo { len: 1 },
                    channels: Few(vec![]),
                    meta: Few(vec![]),
                }),
            ]),
        ),
        (
            "open-rejected",
            s(vec![
                Open {
                    id: NewConn::Next,
                    parity: Side::Odd,
                    max_concurrent: 1,
                    max_credit: 0,
                    meta: Few(vec![MetaEntry { key: Key::Reject, value: Val::Str(3), flags: 0 }]),
                },
                Settle,
                Open { id: NewConn::Next, parity: Side::Odd, max_concurrent: 1, max_credit: 0, meta: Few(vec![]) },
            ]),
        ),
        (
            "open-twice",
            s(vec![
                Open { id: NewConn::Next, parity: Side::Odd, max_concurrent: 1, max_credit: 0, meta: Few(vec![]) },
                Open { id: NewConn::Recent(0), parity: Side::Odd, max_concurrent: 1, max_credit: 0, meta: Few(vec![]) },
            ]),
        ),
        (
            "server-call",
            s(vec![
                ServerCall { method: 1, args_len: 4, channel: ServerChan::None },
                Settle,
                Respond { conn: ROOT, id: ReqSel::Next, body: Body::Ok(3) },
                Respond { conn: ROOT, id: ReqSel::Recent(0), body: Body::User },
            ]),
        ),
        (
            "server-call-channels",
            s(vec![
                ServerCall { method: 2, args_len: 0, channel: ServerChan::ToPeer(20) },
                ServerCall { method: 3, args_len: 0, channel: ServerChan::FromPeer },
                Settle,
                Grant { conn: ROOT, chan: ChanSel::Recent(1), credit: Credit::Small(8) },
                Item { conn: ROOT, chan: ChanSel::Recent(0), item: ItemSel::U32(1) },
                CloseChannel { conn: ROOT, chan: ChanSel::Recent(0), meta: Few(vec![]) },
                Respond { conn: ROOT, id: ReqSel::Next, body: Body::Cancelled },
                Respond { conn: ROOT, id: ReqSel::Next, body: Body::Ok(0) },
            ]),
        ),
        (
            "server-open",
            s(vec![
                ServerOpen,
                Settle,
                Accept { conn: ConnSel::Opened(0) },
                Settle,
                Respond { conn: ConnSel::Opened(0), id: ReqSel::Next, body: Body::UnknownMethod },
                Settle,
            ]),
        ),
        ("server-open-reject", s(vec![ServerOpen, Settle, Reject { conn: ConnSel::Opened(0) }])),
        ("accept-unopened", s(vec![Accept { conn: ConnSel::Raw(2) }])),
        ("unknown-channel", s(vec![Item { conn: ROOT, chan: ChanSel::Raw(1001), item: ItemSel::U32(0) }])),
        ("close-root", s(vec![CloseConnection { conn: ROOT, meta: Few(vec![]) }])),
        (
            "wrong-parity-request",
            s(vec![Action::Call(CallSpec {
                conn: ROOT,
                id: ReqSel::Raw(2),
                method: Method::Echo { len: 0 },
                channels: Few(vec![]),
                meta: Few(vec![]),
            })]),
        ),
        (
            "request-unopened-conn",
            s(vec![Action::Call(CallSpec {
                conn: ConnSel::Raw(77),
                id: ReqSel::Next,
                method: Method::Echo { len: 0 },
                channels: Few(vec![]),
                meta: Few(vec![]),
            })]),
        ),
        ("unsolicited-response", s(vec![Respond { conn: ROOT, id: ReqSel::Raw(4), body: Body::Ok(1) }])),
        ("pong-unsolicited", s(vec![Pong { nonce: 5 }, Ping { nonce: 5 }])),
        ("handshake-again", s(vec![Handshake(HandshakeSel::Hello)])),
        ("garbage", s(vec![Garbage { bytes: Few(vec![0xff, 0xff, 0xff]) }])),
        ("peer-protocol-error", s(vec![call(Method::Wait, vec![]), ProtocolError])),
        ("stable-echo", with(stable.clone(), vec![call(Method::Echo { len: 2 }, vec![]), Settle])),
        (
            "stable-break",
            with(
                stable.clone(),
                vec![
                    call(Method::Generate { n: 40 }, vec![chan(Dir::HandlerToCaller, 8)]),
                    BreakLink,
                    Grant { conn: ROOT, chan: ChanSel::Recent(0), credit: Credit::Small(32) },
                    Advance { ms: 100 },
                    BreakLink,
                    call(Method::Echo { len: 8 }, vec![]),
                ],
            ),
        ),
        ("stable-garbage", with(stable, vec![Garbage { bytes: Few(vec![0x00, 0x7f]) }])),
        (
            "even-parity",
            with(
                even,
                vec![
                    call(Method::Echo { len: 1 }, vec![]),
                    Open { id: NewConn::Next, parity: Side::Even, max_concurrent: 2, max_credit: 2, meta: Few(vec![]) },
                ],
            ),
        ),
        (
            "tight-limits",
            with(
                tight,
                vec![
                    call(Method::Wait, vec![]),
                    call(Method::Wait, vec![]),
                    call(Method::Wait, vec![]),
                    call(Method::Drain, vec![chan(Dir::CallerToHandler, 5)]),
                ],
            ),
        ),
        ("keepalive", with(keepalive, vec![call(Method::Sleep { ms: 3000 }, vec![]), Advance { ms: 5000 }])),
        ("finish-wrong-version", with(Setup { finish: Finish::WrongVersion, ..setup() }, vec![])),
        ("finish-sorry", with(Setup { finish: Finish::Sorry, ..setup() }, vec![])),
        ("finish-message-first", with(Setup { finish: Finish::MessageFirst, ..setup() }, vec![Ping { nonce: 2 }])),
        ("finish-close", with(Setup { finish: Finish::Close, ..setup() }, vec![])),
    ]
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();

    // decode_transport
    let t = "decode_transport";
    for (name, m) in [
        (
            "hello-bare",
            TransportMsg::Hello(TransportHello {
                magic: TRANSPORT_MAGIC,
                version: TRANSPORT_VERSION,
                mode: ConduitMode::Bare,
            }),
        ),
        (
            "hello-stable",
            TransportMsg::Hello(TransportHello {
                magic: TRANSPORT_MAGIC,
                version: TRANSPORT_VERSION,
                mode: ConduitMode::Stable,
            }),
        ),
        (
            "hello-bad-magic",
            TransportMsg::Hello(TransportHello { magic: *b"HTTP", version: 9, mode: ConduitMode::Bare }),
        ),
        ("accept", TransportMsg::Accept { mode: ConduitMode::Stable }),
        ("reject", TransportMsg::Reject { reason: "conduit mode `stable` is not supported".into() }),
    ] {
        out.push((t, name.into(), enc(&m)));
    }
    edges(t, &mut out);

    // decode_conduit
    let t = "decode_conduit";
    for (name, m) in handshakes().into_iter().chain(messages()) {
        out.push((t, name.into(), enc(&m)));
    }
    edges(t, &mut out);

    // decode_stable
    let t = "decode_stable";
    let item = Blob::from(enc(&messages()[7].1));
    for (name, m) in [
        ("frame-request", StableMsg::Frame(StableFrame { seq: 0, ack: None, item: item.clone() })),
        (
            "frame-acked",
            StableMsg::Frame(StableFrame { seq: u32::MAX, ack: Some(17), item: Blob::from(enc(&messages()[1].1)) }),
        ),
        (
            "frame-garbage-item",
            StableMsg::Frame(StableFrame { seq: 3, ack: Some(2), item: Blob::from(vec![0xffu8; 4]) }),
        ),
        ("ack", StableMsg::Ack { ack: 300 }),
        ("bye", StableMsg::Bye),
    ] {
        out.push((t, name.into(), enc(&m)));
    }
    edges(t, &mut out);

    // decode_stable_hello
    let t = "decode_stable_hello";
    let key = ResumeKey(Blob::from(vec![7u8; 16]));
    out.push((t, "client-new".into(), enc(&ClientHello { resume_key: None, last_received: None })));
    out.push((t, "client-resume".into(), enc(&ClientHello { resume_key: Some(key.clone()), last_received: Some(41) })));
    let welcome = StableHelloReply::Welcome(ServerHello { resume_key: key, last_received: Some(u32::MAX) });
    out.push((t, "reply-welcome".into(), enc(&welcome)));
    out.push((t, "reply-unknown-key".into(), enc(&StableHelloReply::UnknownKey { reason: "expired".into() })));
    edges(t, &mut out);

    // stream_link: [config, chunking seed] + stream bytes (see stream.rs)
    let t = "stream_link";
    let frames: Vec<u8> = messages().iter().take(6).flat_map(|(_, m)| frame(&enc(m))).collect();
    let hello = frame(&enc(&TransportMsg::Hello(TransportHello {
        magic: TRANSPORT_MAGIC,
        version: TRANSPORT_VERSION,
        mode: ConduitMode::Bare,
    })));
    let with = |cfg: u8, seed: u8, body: &[u8]| {
        let mut v = vec![cfg, seed];
        v.extend_from_slice(body);
        v
    };
    out.push((t, "frames-default".into(), with(7, 1, &frames)));
    out.push((t, "frames-bytewise-pending".into(), with(0x80 | 7, 0, &frames)));
    out.push((t, "frames-big-chunks-error-end".into(), with(0x40 | 6, 3, &frames)));
    out.push((t, "hello-restricted".into(), with(7 | 3 << 3, 2, &hello)));
    out.push((t, "empty-frames".into(), with(0, 1, &[0u8; 12])));
    out.push((t, "too-large".into(), with(3, 1, &frame(&[1u8; 300]))));
    out.push((t, "too-large-huge-prefix".into(), with(7, 1, &[0xff, 0xff, 0xff, 0xff, 1, 2])));
    let mut truncated = frames.clone();
    truncated.truncate(frames.len() - 3);
    out.push((t, "truncated-body".into(), with(7, 2, &truncated)));
    out.push((t, "truncated-prefix".into(), with(7, 0, &[5, 0])));
    out.push((t, "no-bytes".into(), vec![7, 0]));

    // session
    for (name, s) in scenarios() {
        out.push(("session", name.into(), encode_scenario(&s)));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_scenario_reads_back_unchanged() {
        for (name, s) in super::scenarios() {
            let bytes = super::encode_scenario(&s);
            assert!(!bytes.is_empty(), "{name}");
        }
    }
}
