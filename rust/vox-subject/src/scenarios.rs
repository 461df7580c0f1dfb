//! Client scenarios: the subject calls the harness, which plays the Testbed
//! server (and sometimes misbehaves on purpose).

use crate::SubjectError;
use crate::testbed::{LookupError, MathError, Person, mid};
use std::time::Duration;
use vox_core::driver::{CallError, channel};
use vox_core::session::{CloseReason, Session, SessionBuilder};
use vox_core::wire::{self, ConnectionSettings, Metadata};

/// Every scenario name, with what it does (the schema ones are in
/// [`crate::schema_scenarios::SCENARIOS`]).
pub const SCENARIOS: &[(&str, &str)] = &[
    ("basic_calls", "echo, divide (ok and user error), lookup on the root"),
    ("sum_channel", "sum(Rx<i32>) of 1..=100; the harness may answer before the channel ends"),
    ("generate_channel", "generate(40) into a Tx<i32>; items checked in order"),
    ("concurrent_echo", "8 echo calls at once (the harness advertises max_concurrent_requests = 1)"),
    ("virtual_connection", "opens a virtual connection, echoes on it, drops its caller, then echoes on the root"),
    ("cancel", "sleep_ms(60000) abandoned after 100 ms, then echo"),
    ("open_rejected", "opens a virtual connection and expects a rejection"),
    (
        "await_protocol_error",
        "calls echo and generate(100) (never reading), expects the session to end with a local protocol error",
    ),
    ("drop_root", "echo, then drops the root caller and expects the session to end"),
    ("establish_fails", "expects the prologue or handshake to fail"),
    (
        "release_after_close",
        "sum(Rx<i32>) answered early; then sends 1 and 2, closes the channel and releases the root at once",
    ),
];

fn fail(scenario: &str, what: impl Into<String>) -> SubjectError {
    SubjectError::Scenario { scenario: scenario.into(), what: what.into() }
}

async fn echo(session: &Session, s: &str) -> Result<String, CallError> {
    session.root.caller.call(mid("echo"), &s.to_string(), vec![]).await
}

/// Runs scenario `name` against the harness at `addr`.
pub async fn run(name: &str, addr: &str) -> Result<(), SubjectError> {
    let f = |what: String| fail(name, what);
    let transport = crate::Transport::from_env()?;
    if name == "establish_fails" {
        let builder = crate::configure_from_env(SessionBuilder::new())?.handshake_timeout(Duration::from_secs(10));
        return match transport.connect(builder, addr).await {
            Ok(_) => Err(f("the session was established".into())),
            Err(e) => {
                eprintln!("vox-subject: establishment failed as expected: {e}");
                Ok(())
            }
        };
    }
    let session = transport.connect(crate::configure_from_env(SessionBuilder::new())?, addr).await?;
    let caller = session.root.caller.clone();
    match name {
        "basic_calls" => {
            let e = echo(&session, "hello").await.map_err(|e| f(format!("echo: {e}")))?;
            if e != "hello" {
                return Err(f(format!("echo returned {e:?}")));
            }
            let q: i64 =
                caller.call(mid("divide"), &(7i64, 2i64), vec![]).await.map_err(|e| f(format!("divide: {e}")))?;
            if q != 3 {
                return Err(f(format!("divide(7, 2) returned {q}")));
            }
            match caller.call::<_, i64>(mid("divide"), &(1i64, 0i64), vec![]).await {
                Err(CallError::User(b)) => {
                    let err: MathError = wire::decode("MathError", b.bytes()).map_err(|e| f(e.to_string()))?;
                    if err != MathError::DivisionByZero {
                        return Err(f(format!("divide(1, 0) error {err:?}")));
                    }
                }
                other => return Err(f(format!("divide(1, 0) returned {other:?}"))),
            }
            let p: Person = caller.call(mid("lookup"), &1u32, vec![]).await.map_err(|e| f(format!("lookup: {e}")))?;
            if p.id != 1 {
                return Err(f(format!("lookup(1) returned {p:?}")));
            }
            match caller.call::<_, Person>(mid("lookup"), &9u32, vec![]).await {
                Err(CallError::User(b)) => {
                    let err: LookupError = wire::decode("LookupError", b.bytes()).map_err(|e| f(e.to_string()))?;
                    if err != LookupError::NotFound(9) {
                        return Err(f(format!("lookup(9) error {err:?}")));
                    }
                }
                other => return Err(f(format!("lookup(9) returned {other:?}"))),
            }
        }
        "sum_channel" => {
            let (mut tx, rx) = channel::<i32>();
            let arg = rx.into_arg().ok_or_else(|| f("rx into_arg".into()))?;
            let call = caller.call::<_, i64>(mid("sum"), &(), vec![arg]);
            let send = async move {
                for i in 1..=100 {
                    tx.send(&i).await.map_err(|e| format!("send {i}: {e}"))?;
                }
                tx.close().await.map_err(|e| format!("close: {e}"))
            };
            let (total, sent) = tokio::join!(call, send);
            sent.map_err(f)?;
            let total = total.map_err(|e| f(format!("sum: {e}")))?;
            if total != 5050 {
                return Err(f(format!("sum returned {total}")));
            }
        }
        "generate_channel" => {
            let (tx, mut rx) = channel::<i32>();
            let arg = tx.into_arg().ok_or_else(|| f("tx into_arg".into()))?;
            let call = caller.call::<_, ()>(mid("generate"), &40u32, vec![arg]);
            let read = async move {
                let mut got = Vec::new();
                while let Some(v) = rx.recv().await.map_err(|e| format!("recv: {e}"))? {
                    got.push(v);
                }
                Ok::<_, String>(got)
            };
            let (done, got) = tokio::join!(call, read);
            done.map_err(|e| f(format!("generate: {e}")))?;
            let got = got.map_err(f)?;
            if got != (0..40).collect::<Vec<i32>>() {
                return Err(f(format!("generate delivered {got:?}")));
            }
        }
        "release_after_close" => {
            let (mut tx, rx) = channel::<i32>();
            let arg = rx.into_arg().ok_or_else(|| f("rx into_arg".into()))?;
            let total: i64 = caller.call(mid("sum"), &(), vec![arg]).await.map_err(|e| f(format!("sum: {e}")))?;
            if total != 3 {
                return Err(f(format!("sum returned {total}")));
            }
            for i in 1..=2 {
                tx.send(&i).await.map_err(|e| f(format!("send {i}: {e}")))?;
            }
            tx.close().await.map_err(|e| f(format!("close: {e}")))?;
        }
        "concurrent_echo" => {
            let calls = (0..8).map(|i| {
                let c = caller.clone();
                async move { (i, c.call::<_, String>(mid("echo"), &format!("m{i}"), vec![]).await) }
            });
            let mut set = tokio::task::JoinSet::new();
            for c in calls {
                set.spawn(c);
            }
            while let Some(r) = set.join_next().await {
                let (i, r) = r.map_err(|e| f(format!("task: {e}")))?;
                let s = r.map_err(|e| f(format!("echo {i}: {e}")))?;
                if s != format!("m{i}") {
                    return Err(f(format!("echo {i} returned {s:?}")));
                }
            }
        }
        "virtual_connection" => {
            let conn = session
                .handle
                .open_connection(ConnectionSettings::default(), Metadata::new().with_str("purpose", "spec", 0))
                .await
                .map_err(|e| f(format!("open: {e}")))?;
            let s: String =
                conn.caller.call(mid("echo"), &"virtual".to_string(), vec![]).await.map_err(|e| f(e.to_string()))?;
            if s != "virtual" {
                return Err(f(format!("echo on the virtual connection returned {s:?}")));
            }
            drop(conn);
            let s = echo(&session, "root").await.map_err(|e| f(format!("echo on root after close: {e}")))?;
            if s != "root" {
                return Err(f(format!("echo on root returned {s:?}")));
            }
        }
        "cancel" => {
            let sleeping = caller.call::<_, ()>(mid("sleep_ms"), &60_000u64, vec![]);
            if tokio::time::timeout(Duration::from_millis(100), sleeping).await.is_ok() {
                return Err(f("sleep_ms(60000) completed".into()));
            }
            let s = echo(&session, "after cancel").await.map_err(|e| f(format!("echo after cancel: {e}")))?;
            if s != "after cancel" {
                return Err(f(format!("echo returned {s:?}")));
            }
        }
        "open_rejected" => {
            if let Ok(c) = session.handle.open_connection(ConnectionSettings::default(), Metadata::new()).await {
                return Err(f(format!("the connection {} was accepted", c.id)));
            }
            let s = echo(&session, "still up").await.map_err(|e| f(format!("echo after rejection: {e}")))?;
            if s != "still up" {
                return Err(f(format!("echo returned {s:?}")));
            }
        }
        "await_protocol_error" => {
            let (tx, rx) = channel::<i32>();
            let arg = tx.into_arg().ok_or_else(|| f("tx into_arg".into()))?;
            let generate = caller.call::<_, ()>(mid("generate"), &100u32, vec![arg]);
            let echoing = echo(&session, "x");
            let ended = async {
                let (_g, _e) = tokio::join!(generate, echoing);
                session.handle.closed().await
            };
            let reason = tokio::time::timeout(Duration::from_secs(10), ended)
                .await
                .map_err(|_| f("the session did not end".into()))?;
            drop(rx);
            if !matches!(reason, CloseReason::LocalProtocolError(_)) {
                return Err(f(format!("the session ended with {reason:?}, not a local protocol error")));
            }
            return Ok(());
        }
        "drop_root" => {
            echo(&session, "bye").await.map_err(|e| f(format!("echo: {e}")))?;
            let handle = session.handle.clone();
            drop(caller);
            drop(session);
            let reason = tokio::time::timeout(Duration::from_secs(10), handle.closed())
                .await
                .map_err(|_| f("the session did not end after the root caller was dropped".into()))?;
            if !matches!(reason, CloseReason::RootReleased) {
                return Err(f(format!("the session ended with {reason:?}")));
            }
            return Ok(());
        }
        schema if crate::schema_scenarios::SCENARIOS.iter().any(|(n, _)| *n == schema) => {
            crate::schema_scenarios::run(schema, &caller).await?
        }
        other => return Err(SubjectError::Config(format!("unknown CLIENT_SCENARIO {other:?}"))),
    }
    // A graceful end: releasing the root ends the session once everything
    // queued has been written (rule rpc.caller.liveness); exiting before
    // that would cut off the last messages.
    let handle = session.handle.clone();
    drop(caller);
    drop(session);
    match tokio::time::timeout(Duration::from_secs(10), handle.closed()).await {
        Ok(CloseReason::RootReleased) => Ok(()),
        Ok(other) => Err(f(format!("the session ended with {other:?} after the scenario"))),
        Err(_) => Err(f("the session did not end after the root caller was dropped".into())),
    }
}
