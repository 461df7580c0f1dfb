//! A small service and session-pair helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use vox_core::driver::{Call, Handler};
use vox_core::link::{self, LinkConfig};
use vox_core::session::{AcceptDecision, Session, SessionBuilder};
use vox_core::wire::{ConnectionSettings, Metadata, MethodId};

pub fn mid(name: &str) -> MethodId {
    MethodId::from_names("Testbed", name)
}

/// The test service: echo, sum, generate, transform, divide, sleep_ms, panic, forget.
pub fn testbed() -> impl Handler + Clone {
    |mut call: Call| async move {
        let m = call.method_id;
        if m == mid("echo") {
            match call.decode_args::<String>() {
                Ok(s) => call.reply.ok(&s),
                Err(e) => call.reply.invalid_payload(e),
            }
        } else if m == mid("sum") {
            let mut rx = match call.channels.rx::<i32>(0) {
                Ok(rx) => rx,
                Err(e) => return call.reply.invalid_payload(e),
            };
            let mut total: i64 = 0;
            while let Ok(Some(v)) = rx.recv().await {
                total += i64::from(v);
            }
            call.reply.ok(&total);
        } else if m == mid("generate") {
            let n: u32 = match call.decode_args() {
                Ok(n) => n,
                Err(e) => return call.reply.invalid_payload(e),
            };
            let mut tx = match call.channels.tx::<i32>(0) {
                Ok(tx) => tx,
                Err(e) => return call.reply.invalid_payload(e),
            };
            for i in 0..n {
                if tx.send(&(i as i32)).await.is_err() {
                    break;
                }
            }
            let _ = tx.close().await;
            call.reply.ok(&());
        } else if m == mid("transform") {
            let (mut rx, mut tx) = match (call.channels.rx::<String>(0), call.channels.tx::<String>(1)) {
                (Ok(rx), Ok(tx)) => (rx, tx),
                _ => return call.reply.invalid_payload("expected (Rx<String>, Tx<String>)"),
            };
            while let Ok(Some(s)) = rx.recv().await {
                if tx.send(&s.to_uppercase()).await.is_err() {
                    break;
                }
            }
            let _ = tx.close().await;
            call.reply.ok(&());
        } else if m == mid("divide") {
            match call.decode_args::<(i64, i64)>() {
                Ok((_, 0)) => call.reply.user_error(&"division by zero".to_string()),
                Ok((a, b)) => call.reply.ok(&(a / b)),
                Err(e) => call.reply.invalid_payload(e),
            }
        } else if m == mid("sleep_ms") {
            let ms: u64 = call.decode_args().unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            call.reply.ok(&());
        } else if m == mid("wait_forever") {
            std::future::pending::<()>().await;
        } else if m == mid("panic") {
            panic!("handler panicked on purpose");
        } else if m == mid("forget") {
            drop(call.reply);
        } else {
            call.reply.unknown_method();
        }
    }
}

pub fn server_builder() -> SessionBuilder {
    let h = testbed();
    SessionBuilder::new().handler(h.clone()).acceptor(move |_req: &vox_core::session::ConnectionRequest| {
        AcceptDecision::Accept {
            settings: ConnectionSettings::default(),
            metadata: Metadata::new(),
            handler: Some(Arc::new(h.clone())),
        }
    })
}

pub async fn memory_sessions(server: SessionBuilder, client: SessionBuilder) -> (Session, Session) {
    let (a, b) = link::memory_pair(LinkConfig::default());
    let (s, c) = tokio::join!(server.establish_acceptor(a), client.establish_initiator(b));
    (s.expect("server session"), c.expect("client session"))
}

pub async fn tcp_sessions(server: SessionBuilder, client: SessionBuilder) -> (Session, Session) {
    let listener = server.listen("127.0.0.1:0").await.expect("listen");
    let addr = listener.local_addr().expect("addr");
    let (s, c) = tokio::join!(listener.accept(), client.connect(addr));
    (s.expect("server session"), c.expect("client session"))
}
