//! The Testbed service: its types and the hand-written dispatcher.
//!
//! Argument encoding (postcard): a method with one non-channel argument
//! encodes that value, one with several encodes their tuple, one with none
//! encodes `()`. Channel arguments travel as channel declarations of the
//! request, in argument order, never inside the args. Method ids are
//! `MethodId::from_names("Testbed", name)`.
//!
//! This file is the only dispatcher: a later `#[service]` macro replaces it.

use serde::{Deserialize, Serialize};
use vox_core::driver::{Call, Handler};
use vox_core::wire::{self, Blob, MethodId, ResponseBody};

/// The error of `divide`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MathError {
    /// The divisor was zero.
    DivisionByZero,
}

/// A record returned by `lookup`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// The id looked up.
    pub id: u32,
    /// A name.
    pub name: String,
    /// An age in years.
    pub age: u8,
}

/// The error of `lookup`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupError {
    /// No person has this id.
    NotFound(u32),
}

/// The people `lookup` knows: ids 1 and 2.
pub fn people(id: u32) -> Result<Person, LookupError> {
    match id {
        1 => Ok(Person { id, name: "Ada".into(), age: 36 }),
        2 => Ok(Person { id, name: "Grace".into(), age: 85 }),
        _ => Err(LookupError::NotFound(id)),
    }
}

/// The method id of Testbed method `name`.
pub fn mid(name: &str) -> MethodId {
    MethodId::from_names("Testbed", name)
}

/// Every Testbed method name.
pub const METHODS: &[&str] = &[
    "echo",
    "reverse",
    "divide",
    "lookup",
    "sum",
    "generate",
    "transform",
    "echo_bytes",
    "sleep_ms",
    "generate_retry_idem",
    "generate_retry_non_idem",
];

/// The Testbed handler. `echo` answers with the request's metadata as it
/// would be forwarded (order kept, `NO_PROPAGATE` entries stripped), so a
/// peer can check metadata handling on the wire.
pub fn testbed() -> impl Handler + Clone {
    |call: Call| dispatch(call)
}

async fn dispatch(mut call: Call) {
    let m = call.method_id;
    if m == mid("echo") {
        match call.decode_args::<String>() {
            Ok(s) => match wire::encode("echo result", &s) {
                Ok(bytes) => {
                    let metadata = call.metadata.for_forwarding();
                    call.reply.reply(ResponseBody::Ok(Blob(bytes.into())), metadata)
                }
                Err(e) => call.reply.invalid_payload(e),
            },
            Err(e) => call.reply.invalid_payload(e),
        }
    } else if m == mid("reverse") {
        match call.decode_args::<String>() {
            Ok(s) => call.reply.ok(&s.chars().rev().collect::<String>()),
            Err(e) => call.reply.invalid_payload(e),
        }
    } else if m == mid("divide") {
        match call.decode_args::<(i64, i64)>() {
            Ok((_, 0)) => call.reply.user_error(&MathError::DivisionByZero),
            Ok((a, b)) => call.reply.ok(&a.wrapping_div(b)),
            Err(e) => call.reply.invalid_payload(e),
        }
    } else if m == mid("lookup") {
        match call.decode_args::<u32>() {
            Ok(id) => match people(id) {
                Ok(p) => call.reply.ok(&p),
                Err(e) => call.reply.user_error(&e),
            },
            Err(e) => call.reply.invalid_payload(e),
        }
    } else if m == mid("echo_bytes") {
        match call.decode_args::<Vec<u8>>() {
            Ok(b) => call.reply.ok(&b),
            Err(e) => call.reply.invalid_payload(e),
        }
    } else if m == mid("sleep_ms") {
        match call.decode_args::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                call.reply.ok(&())
            }
            Err(e) => call.reply.invalid_payload(e),
        }
    } else if m == mid("sum") {
        if let Err(e) = call.decode_args::<()>() {
            return call.reply.invalid_payload(e);
        }
        let mut rx = match call.channels.rx::<i32>(0) {
            Ok(rx) => rx,
            Err(e) => return call.reply.invalid_payload(e),
        };
        let mut total: i64 = 0;
        loop {
            match rx.recv().await {
                Ok(Some(v)) => total += i64::from(v),
                Ok(None) => break,
                Err(e) => return call.reply.user_error(&e.to_string()),
            }
        }
        call.reply.ok(&total)
    } else if m == mid("generate") || m == mid("generate_retry_idem") || m == mid("generate_retry_non_idem") {
        let n = match call.decode_args::<u32>() {
            Ok(n) => n,
            Err(e) => return call.reply.invalid_payload(e),
        };
        let mut tx = match call.channels.tx::<i32>(0) {
            Ok(tx) => tx,
            Err(e) => return call.reply.invalid_payload(e),
        };
        for i in 0..n {
            // A reset (or a lost connection) stops the generator.
            if tx.send(&i32::try_from(i).unwrap_or(i32::MAX)).await.is_err() {
                return call.reply.ok(&());
            }
        }
        let _ = tx.close().await;
        call.reply.ok(&())
    } else if m == mid("transform") {
        if let Err(e) = call.decode_args::<()>() {
            return call.reply.invalid_payload(e);
        }
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
        call.reply.ok(&())
    } else {
        call.reply.unknown_method()
    }
}
