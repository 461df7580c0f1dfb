//! Rule `rpc.metadata` (PROTOCOL.md section 8) as seen by an operator:
//! values flagged `SENSITIVE` never reach logs, traces, `Debug` output or
//! error messages, and `NO_PROPAGATE` entries are stripped when forwarding.
//!
//! Each test installs a capturing `tracing` subscriber (TRACE, with span
//! events) as the thread's default; `#[tokio::test]` runs a current-thread
//! runtime, so every task of both sessions logs into it.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}

use bytes::Bytes;
use common::raw_peer::*;
use common::testbed::*;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use vox_core::driver::{Call, CallError, Handler};
use vox_core::session::{Caller, SessionBuilder};
use vox_core::wire::{
    self, Blob, ConnectionId, Message, Metadata, MetadataEntry, MetadataValue, NO_PROPAGATE, Parity, Payload,
    RequestId, ResponseBody, SENSITIVE,
};

const SECRET: &str = "hunter2-secret";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> CaptureWriter {
        CaptureWriter(self.0.clone())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Installs a TRACE-level subscriber writing here as this thread's default.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(FmtSpan::FULL)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

fn secret_metadata() -> Metadata {
    let mut md = Metadata::new().with_str("trace-id", "visible-trace", 0).with_str("token", SECRET, SENSITIVE);
    md.push("raw-token", MetadataValue::Bytes(Blob::from(SECRET.as_bytes().to_vec())), SENSITIVE | NO_PROPAGATE);
    md.push("token", MetadataValue::String(format!("again-{SECRET}")), SENSITIVE | (1 << 17));
    md
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} leaks the sensitive value:\n{text}");
    assert!(!text.contains("hunter2"), "{what} leaks part of the sensitive value:\n{text}");
}

/// The testbed plus `echo_md` (replies with the request metadata) and
/// `describe` (fails with the `Debug` text of its `Call`, as careless user
/// code might).
fn md_builder() -> SessionBuilder {
    let tb = testbed();
    SessionBuilder::new()
        .handler(move |call: Call| {
            let tb = tb.clone();
            async move {
                if call.method_id == mid("echo_md") {
                    let md = call.metadata.clone();
                    call.reply.reply(ResponseBody::Ok(Blob::default()), md);
                } else if call.method_id == mid("describe") {
                    let text = format!("{call:?}");
                    call.reply.user_error(&text);
                } else {
                    tb.handle(call).await;
                }
            }
        })
        .acceptor(|req: &vox_core::session::ConnectionRequest| {
            // Acceptor code that logs what it sees, as an operator might.
            tracing::info!(request = ?req, "connection request");
            vox_core::session::AcceptDecision::Reject(Metadata::new().with_str("reason", "test", 0))
        })
}

#[tokio::test]
async fn rpc_metadata_sensitive_values_never_appear_in_logs_debug_output_or_errors() {
    let capture = Capture::default();
    let _guard = capture.install();
    let md = secret_metadata();

    // Debug of the metadata and of every message that carries it.
    assert_no_secret("Metadata Debug", &format!("{md:?} {md:#?}"));
    for e in &md.0 {
        assert_no_secret("MetadataEntry Debug", &format!("{e:?}"));
    }
    let request = Payload::Request {
        id: RequestId(1),
        method_id: mid("echo"),
        args: Blob::default(),
        channels: vec![],
        metadata: md.clone(),
    };
    let response = Payload::Response { id: RequestId(1), ret: ResponseBody::Cancelled, metadata: md.clone() };
    let open = Payload::OpenConnection { parity: Parity::Odd, settings: Default::default(), metadata: md.clone() };
    for p in [&request, &response, &open] {
        assert_no_secret("Payload Debug", &format!("{p:?}"));
        let m = Message { connection_id: ConnectionId(0), payload: p.clone() };
        assert_no_secret("Message Debug", &format!("{m:?} {m:#?}"));
    }
    // The serialized form still carries it: redaction is for humans only.
    let bytes = wire::encode("metadata", &md).unwrap();
    assert!(bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));

    // Calls between two runtimes.
    let (_server, client) = memory_sessions(md_builder(), SessionBuilder::new()).await;
    let caller = &client.root.caller;
    let resp = caller.call_raw(mid("echo_md"), Bytes::new(), vec![], md.clone()).await.unwrap();
    assert_eq!(resp.metadata, md, "sensitive values still travel");
    assert_no_secret("RawResponse Debug", &format!("{resp:?}"));
    let err = caller.call_raw(mid("no_such_method"), Bytes::new(), vec![], md.clone()).await.unwrap_err();
    assert_no_secret("CallError", &format!("{err} {err:?}"));
    let err = caller.call_raw(mid("describe"), Bytes::new(), vec![], md.clone()).await.unwrap_err();
    let CallError::User(b) = &err else { panic!("{err:?}") };
    let described: String = wire::decode("user error", b.bytes()).unwrap();
    assert!(described.contains("token"), "the Debug text names the key: {described}");
    assert_no_secret("Call Debug", &described);
    let err = caller.call_raw(mid("echo"), Bytes::from_static(&[0xff]), vec![], md.clone()).await.unwrap_err();
    assert_no_secret("CallError", &format!("{err} {err:?}"));
    let rejected = client.handle.open_connection(Default::default(), md.clone()).await.unwrap_err();
    assert_no_secret("SessionError", &format!("{rejected} {rejected:?}"));

    // A violating raw peer whose messages carry sensitive metadata.
    let (s, mut raw) = raw_initiator(md_builder(), Parity::Odd).await;
    let valid = Payload::Request {
        id: RequestId(1),
        method_id: mid("echo_md"),
        args: Blob::default(),
        channels: vec![],
        metadata: md.clone(),
    };
    raw.send(0, valid).await;
    raw.recv_until(|m| matches!(m.payload, Payload::Response { .. })).await;
    raw.send(3, open.clone()).await;
    raw.recv_until(|m| matches!(m.payload, Payload::RejectConnection { .. })).await;
    let wrong_parity = Payload::Request {
        id: RequestId(2),
        method_id: mid("echo"),
        args: Blob::default(),
        channels: vec![],
        metadata: md.clone(),
    };
    raw.send(0, wrong_parity).await;
    let description = raw.expect_protocol_error().await;
    assert_no_secret("ProtocolError description", &description);
    let reason = tokio::time::timeout(PATIENCE, s.handle.closed()).await.unwrap();
    assert_no_secret("CloseReason", &format!("{reason} {reason:?}"));

    let logs = capture.text();
    assert!(logs.contains("peer violated the protocol"), "the capture works:\n{logs}");
    assert!(logs.contains("connection request"), "the acceptor's log line was captured:\n{logs}");
    assert!(logs.contains("visible-trace"), "non-sensitive values of the same metadata are logged:\n{logs}");
    assert_no_secret("captured logs", &logs);
}

#[test]
fn rpc_metadata_for_forwarding_strips_no_propagate_and_keeps_the_rest_in_order() {
    let md = Metadata(vec![
        MetadataEntry { key: "a".into(), value: MetadataValue::U64(1), flags: 0 },
        MetadataEntry { key: "hop".into(), value: MetadataValue::String("x".into()), flags: NO_PROPAGATE },
        MetadataEntry { key: "token".into(), value: MetadataValue::String(SECRET.into()), flags: SENSITIVE },
        MetadataEntry { key: "a".into(), value: MetadataValue::U64(2), flags: 1 << 33 },
        MetadataEntry { key: "hop".into(), value: MetadataValue::U64(3), flags: NO_PROPAGATE | SENSITIVE | (1 << 5) },
    ]);
    let fwd = md.for_forwarding();
    assert_eq!(fwd.0, vec![md.0[0].clone(), md.0[2].clone(), md.0[3].clone()]);
    assert_eq!(fwd.for_forwarding(), fwd, "idempotent");
    assert!(Metadata::new().for_forwarding().is_empty());
}

#[tokio::test]
async fn rpc_metadata_for_forwarding_relay_handler_strips_no_propagate_downstream() {
    let capture = Capture::default();
    let _guard = capture.install();
    // The server relays each `relay` call back to the client's `echo_md`
    // (rule session.symmetry), forwarding the metadata.
    let back: Arc<OnceLock<Caller>> = Arc::new(OnceLock::new());
    let server = {
        let back = back.clone();
        SessionBuilder::new().handler(move |call: Call| {
            let back = back.clone();
            async move {
                let Some(down) = back.get().cloned() else { return call.reply.unknown_method() };
                let fwd = call.metadata.for_forwarding();
                match down.call_raw(mid("echo_md"), Bytes::new(), vec![], fwd).await {
                    Ok(r) => call.reply.reply(ResponseBody::Ok(Blob::default()), r.metadata),
                    Err(e) => call.reply.user_error(&e.to_string()),
                }
            }
        })
    };
    let (server, client) = memory_sessions(server, md_builder()).await;
    back.set(server.root.caller.clone()).unwrap();
    let md = secret_metadata().with_str("hop-only", "local", NO_PROPAGATE | (1 << 50));
    let resp = client.root.caller.call_raw(mid("relay"), Bytes::new(), vec![], md.clone()).await.unwrap();
    let expected: Vec<MetadataEntry> = md.0.iter().filter(|e| e.flags & NO_PROPAGATE == 0).cloned().collect();
    assert_eq!(resp.metadata.0, expected, "downstream saw everything but NO_PROPAGATE, flags intact");
    assert!(resp.metadata.get("raw-token").is_none() && resp.metadata.get("hop-only").is_none());
    assert_no_secret("captured logs", &capture.text());
}
