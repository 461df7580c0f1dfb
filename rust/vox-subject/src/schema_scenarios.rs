//! Client scenarios of schema evolution (rules `schema.evolution`,
//! `schema.incompatible`, `schema.identity`): the subject calls through the generated
//! `TestbedClient`, and the harness answers its schema queries with
//! schemas of a different Testbed version.

use crate::SubjectError;
use crate::testbed::{LookupError, Person, TestbedClient};
use vox_core::driver::{CallError, channel};
use vox_core::service::ServiceError;
use vox_core::session::Caller;

/// The schema scenarios, with what they do.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "evolved_schemas",
        "lookup(1), lookup(9), reverse(\"abc\"), generate(2) through TestbedClient against a harness whose Person, \
         LookupError and reverse arguments are another version (reordered, added optional field, added variant) and \
         whose generate is the same",
    ),
    (
        "unknown_variant",
        "lookup(3) (the harness answers with a LookupError variant the subject lacks: IncompatibleSchema), then \
         lookup(1) and reverse(\"ok\") on the same connection",
    ),
    (
        "incompatible_schema",
        "divide(7, 2) twice (the harness's divide returns a String: IncompatibleSchema, nothing sent), then \
         reverse(\"ok\") on the same connection",
    ),
];

fn fail(scenario: &str, what: impl Into<String>) -> SubjectError {
    SubjectError::Scenario { scenario: scenario.into(), what: what.into() }
}

/// Runs schema scenario `name` (one of [`SCENARIOS`]) on `caller`.
///
/// # Errors
/// What the scenario did not see as expected.
pub async fn run(name: &str, caller: &Caller) -> Result<(), SubjectError> {
    let f = |what: String| fail(name, what);
    let client = TestbedClient::new(caller.clone());
    match name {
        "evolved_schemas" => {
            async {
                let p = client.lookup(1).await.map_err(|e| f(format!("lookup(1): {e:?}")))?;
                if p != (Person { id: 1, name: "Ada".into(), age: 36 }) {
                    return Err(f(format!("lookup(1) returned {p:?}")));
                }
                match client.lookup(9).await {
                    Err(ServiceError::User(LookupError::NotFound(9))) => {}
                    other => return Err(f(format!("lookup(9) returned {other:?}"))),
                }
                let r = client.reverse("abc".into()).await.map_err(|e| f(format!("reverse: {e}")))?;
                if r != "cba" {
                    return Err(f(format!("reverse returned {r:?}")));
                }
                // generate shares u32 with lookup: its query must not
                // carry that type again (rule schema.identity).
                let (tx, mut rx) = channel::<i32>();
                let read = async move {
                    let mut got = Vec::new();
                    while let Some(v) = rx.recv().await.map_err(|e| format!("recv: {e}"))? {
                        got.push(v);
                    }
                    Ok::<_, String>(got)
                };
                let (done, got) = tokio::join!(client.generate(2, tx), read);
                done.map_err(|e| f(format!("generate: {e}")))?;
                match got {
                    Ok(items) if items == [0, 1] => Ok(()),
                    other => Err(f(format!("generate(2) delivered {other:?}"))),
                }
            }
            .await
        }
        "unknown_variant" => {
            async {
                match client.lookup(3).await {
                    Err(ServiceError::Call(CallError::IncompatibleSchema { method, path, field, .. }))
                        if method == "Testbed.lookup" && path == "error: LookupError" && field == "Gone" => {}
                    other => return Err(f(format!("lookup(3) returned {other:?}"))),
                }
                let p = client.lookup(1).await.map_err(|e| f(format!("lookup(1) after the failure: {e:?}")))?;
                if p != (Person { id: 1, name: "Ada".into(), age: 36 }) {
                    return Err(f(format!("lookup(1) returned {p:?}")));
                }
                let r = client.reverse("ok".into()).await.map_err(|e| f(format!("reverse after the failure: {e}")))?;
                if r != "ko" {
                    return Err(f(format!("reverse returned {r:?}")));
                }
                Ok(())
            }
            .await
        }
        "incompatible_schema" => {
            async {
                for attempt in 1..=2 {
                    match client.divide(7, 2).await {
                        Err(ServiceError::Call(CallError::IncompatibleSchema { method, path, .. }))
                            if method == "Testbed.divide" && path == "return" => {}
                        other => return Err(f(format!("divide attempt {attempt} returned {other:?}"))),
                    }
                }
                let r = client.reverse("ok".into()).await.map_err(|e| f(format!("reverse after the failure: {e}")))?;
                if r != "ko" {
                    return Err(f(format!("reverse returned {r:?}")));
                }
                Ok(())
            }
            .await
        }
        other => Err(SubjectError::Config(format!("unknown schema scenario {other:?}"))),
    }
}
