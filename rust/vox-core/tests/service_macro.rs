//! Round trips through `#[service]`-generated clients and dispatchers over
//! in-memory sessions: plain calls, user errors, channel arguments in both
//! directions, unknown methods, invalid payloads, routing virtual
//! connections by service name, and the method policy table.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use vox_core::driver::{CallError, ChannelError, Rx, Tx, channel};
use vox_core::link::{self, LinkConfig};
use vox_core::service::{
    Client, MethodInfo, OpenClient, REJECT_REASON_KEY, SERVICE_KEY, ServiceError, ServiceRouter, reject_reason,
};
use vox_core::session::{Session, SessionBuilder, SessionError};
use vox_core::wire::{ConnectionSettings, Metadata, MethodId};

/// An application error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, vox_core::Schema)]
pub enum MathError {
    /// Division by zero.
    DivideByZero,
    /// Too big.
    Overflow {
        /// The limit.
        limit: i64,
    },
}

/// The service under test.
#[vox_core::service]
pub trait Arith {
    /// Adds.
    #[vox(idem)]
    async fn add(&self, a: i64, b: i64) -> i64;
    /// No arguments, no return value.
    async fn ping(&self);
    /// A typed user error.
    #[vox(idem, persist)]
    async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// A client-to-handler stream.
    #[vox(persist)]
    async fn sum(&self, numbers: Rx<i32>) -> i64;
    /// A handler-to-client stream after a plain argument.
    async fn generate(&self, count: u32, out: Tx<u32>) -> Result<u32, String>;
    /// Both directions, with a plain argument between the channels.
    async fn transform(&self, input: Rx<String>, suffix: String, output: Tx<String>) -> usize;
    /// How many calls were served.
    async fn calls(&self) -> u32;
}

/// Another service, to test routing.
#[vox_core::service]
pub trait Echo {
    /// Echoes.
    async fn echo(&self, s: String) -> String;
}

#[derive(Default)]
struct ArithImpl {
    calls: AtomicU32,
}

impl Arith for ArithImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        a + b
    }
    async fn ping(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
    async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if b == 0 {
            return Err(MathError::DivideByZero);
        }
        if a > 1_000_000 {
            return Err(MathError::Overflow { limit: 1_000_000 });
        }
        Ok(a / b)
    }
    async fn sum(&self, mut numbers: Rx<i32>) -> i64 {
        let mut total = 0i64;
        while let Ok(Some(n)) = numbers.recv().await {
            total += i64::from(n);
        }
        total
    }
    async fn generate(&self, count: u32, mut out: Tx<u32>) -> Result<u32, String> {
        if count > 1000 {
            return Err(format!("{count} is too many"));
        }
        for i in 0..count {
            out.send(&i).await.map_err(|e| e.to_string())?;
        }
        out.close().await.map_err(|e| e.to_string())?;
        Ok(count)
    }
    async fn transform(&self, mut input: Rx<String>, suffix: String, mut output: Tx<String>) -> usize {
        let mut n = 0;
        while let Ok(Some(s)) = input.recv().await {
            n += 1;
            if output.send(&format!("{}{suffix}", s.to_uppercase())).await.is_err() {
                break;
            }
        }
        let _ = output.close().await;
        n
    }
    async fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }
}

struct EchoImpl;

impl Echo for EchoImpl {
    async fn echo(&self, s: String) -> String {
        s
    }
}

async fn sessions(server: SessionBuilder) -> (Session, Session) {
    let (a, b) = link::memory_pair(LinkConfig::default());
    let (s, c) = tokio::join!(server.establish_acceptor(a), SessionBuilder::new().establish_initiator(b));
    (s.expect("server session"), c.expect("client session"))
}

async fn arith_pair() -> (Session, Session, ArithClient) {
    let (s, c) = sessions(SessionBuilder::new().handler(ArithDispatcher::new(ArithImpl::default()))).await;
    let client = ArithClient::new(c.root.caller.clone());
    (s, c, client)
}

#[tokio::test]
async fn plain_calls_round_trip() {
    let (_s, _c, arith) = arith_pair().await;
    assert_eq!(arith.add(2, 40).await, Ok(42));
    assert_eq!(arith.ping().await, Ok(()));
    assert_eq!(arith.calls().await, Ok(2));
}

#[tokio::test]
async fn user_errors_are_decoded_into_the_declared_type() {
    let (_s, _c, arith) = arith_pair().await;
    assert_eq!(arith.divide(84, 2).await, Ok(42));
    let err = arith.divide(1, 0).await.unwrap_err();
    assert_eq!(err, ServiceError::User(MathError::DivideByZero));
    assert_eq!(err.user(), Some(&MathError::DivideByZero));
    assert!(!err.is_retryable());
    assert_eq!(arith.divide(2_000_000, 1).await, Err(ServiceError::User(MathError::Overflow { limit: 1_000_000 })));
}

#[tokio::test]
async fn rx_argument_streams_to_the_handler() {
    let (_s, _c, arith) = arith_pair().await;
    let (mut tx, rx) = channel::<i32>();
    let feed = async move {
        // More than the default credit of 16.
        for i in 1..=100 {
            tx.send(&i).await?;
        }
        tx.close().await
    };
    let (total, fed) = tokio::join!(arith.sum(rx), feed);
    fed.expect("feed");
    assert_eq!(total, Ok(5050));
}

#[tokio::test]
async fn tx_argument_streams_to_the_caller() {
    let (_s, _c, arith) = arith_pair().await;
    let (tx, mut rx) = channel::<u32>();
    let collect = async move {
        let mut got = Vec::new();
        while let Some(n) = rx.recv().await? {
            got.push(n);
        }
        Ok::<_, ChannelError>(got)
    };
    let (ret, got) = tokio::join!(arith.generate(40, tx), collect);
    assert_eq!(ret, Ok(40));
    assert_eq!(got.expect("items"), (0..40).collect::<Vec<_>>());

    // The user error of a channel-bearing method; the unused channel ends.
    let (tx, mut rx) = channel::<u32>();
    let (ret, end) = tokio::join!(arith.generate(5000, tx), rx.recv());
    assert_eq!(ret, Err(ServiceError::User("5000 is too many".to_string())));
    assert_eq!(end, Ok(None));
}

#[tokio::test]
async fn both_directions_with_a_plain_argument_between_the_channels() {
    let (_s, _c, arith) = arith_pair().await;
    let (mut in_tx, in_rx) = channel::<String>();
    let (out_tx, mut out_rx) = channel::<String>();
    let drive = async move {
        let mut got = Vec::new();
        for word in ["a", "b", "c"] {
            in_tx.send(&word.to_string()).await?;
            got.push(out_rx.recv().await?.expect("an answer per item"));
        }
        in_tx.close().await?;
        assert_eq!(out_rx.recv().await?, None);
        Ok::<_, ChannelError>(got)
    };
    let (n, got) = tokio::join!(arith.transform(in_rx, "!".to_string(), out_tx), drive);
    assert_eq!(n, Ok(3));
    assert_eq!(got.expect("drive"), vec!["A!", "B!", "C!"]);
}

#[tokio::test]
async fn unknown_method_and_invalid_payload() {
    let (_s, c, _arith) = arith_pair().await;
    let caller = &c.root.caller;
    // A method the service does not have.
    let r = caller.call::<_, i64>(MethodId::from_names("Arith", "multiply"), &(1i64, 2i64), vec![]).await;
    assert!(matches!(r, Err(CallError::UnknownMethod { .. })), "{:?}", r);
    // A method of another service.
    let r = caller.call::<_, String>(EchoClient::METHODS[0].id(), &"x".to_string(), vec![]).await;
    assert!(matches!(r, Err(CallError::UnknownMethod { .. })), "{:?}", r);
    // Arguments that do not decode as (i64, i64).
    let r = caller.call_raw(ArithClient::METHODS[0].id(), Bytes::from_static(&[0x01]), vec![], Metadata::new()).await;
    assert!(matches!(r, Err(CallError::InvalidPayload(_))), "{r:?}");
    // Trailing bytes after the arguments.
    let r = caller.call_raw(ArithClient::METHODS[1].id(), Bytes::from_static(&[0x01]), vec![], Metadata::new()).await;
    assert!(matches!(r, Err(CallError::InvalidPayload(_))), "{r:?}");
    // A channel method called without its channel.
    let r = caller.call::<_, i64>(ArithClient::METHODS[3].id(), &(), vec![]).await;
    assert!(matches!(r, Err(CallError::InvalidPayload(_))), "{r:?}");
    // The connection is still fine.
    assert_eq!(ArithClient::new(caller.clone()).add(1, 1).await, Ok(2));
}

#[tokio::test]
async fn wire_format_matches_hand_written_calls() {
    // The generated client encodes the arguments as a tuple, which postcard
    // lays out like the values one after another: a hand-written caller and
    // the generated dispatcher interoperate.
    let (_s, c, _arith) = arith_pair().await;
    let id = MethodId::from_names("Arith", "add");
    assert_eq!(ArithClient::METHODS[0].id(), id);
    let r: i64 = c.root.caller.call(id, &(20i64, 22i64), vec![]).await.expect("call");
    assert_eq!(r, 42);
}

fn router() -> ServiceRouter {
    ServiceRouter::new().serve(ArithDispatcher::new(ArithImpl::default())).serve(EchoDispatcher::new(EchoImpl))
}

#[tokio::test]
async fn router_accepts_virtual_connections_by_service_name() {
    let (_s, c) = sessions(SessionBuilder::new().acceptor(router())).await;
    let arith = c.handle.open::<ArithClient>(ConnectionSettings::default()).await.expect("open Arith");
    let echo = c.handle.open::<EchoClient>(ConnectionSettings::default()).await.expect("open Echo");
    assert_ne!(arith.caller().connection_id(), echo.caller().connection_id());
    assert_eq!(arith.add(1, 2).await, Ok(3));
    assert_eq!(echo.echo("hi".into()).await, Ok("hi".to_string()));
    // Each connection only serves its own service.
    let wrong = EchoClient::from_caller(arith.caller().clone());
    let err = wrong.echo("x".into()).await.expect_err("Arith's connection has no Echo.echo");
    // A generated client names the method it called (issue 18, point 8).
    assert_eq!(err, CallError::UnknownMethod { method: "Echo.echo".into() });
    assert!(err.to_string().contains("unknown method Echo.echo"), "{err}");
    // Names match in kebab case.
    let md = Metadata::new().with_str(SERVICE_KEY, "echo", 0);
    let conn = c.handle.open_connection(ConnectionSettings::default(), md).await.expect("open by kebab name");
    assert_eq!(EchoClient::new(conn.caller).echo("k".into()).await, Ok("k".to_string()));
}

#[tokio::test]
async fn router_rejects_unknown_or_missing_service_names_with_a_reason() {
    let (_s, c) =
        sessions(SessionBuilder::new().acceptor(ServiceRouter::new().serve(EchoDispatcher::new(EchoImpl)))).await;
    let err = c.handle.open::<ArithClient>(ConnectionSettings::default()).await.unwrap_err();
    assert!(matches!(err, SessionError::Rejected { .. }), "{err:?}");
    let reason = reject_reason(&err).expect("a reason");
    assert!(reason.contains("unknown service \"Arith\"") && reason.contains("Echo"), "{reason}");

    let err = c.handle.open_connection(ConnectionSettings::default(), Metadata::new()).await.unwrap_err();
    let SessionError::Rejected { metadata } = &err else { panic!("{err:?}") };
    assert!(metadata.get_str(REJECT_REASON_KEY).expect("reason").contains(SERVICE_KEY));

    // The session is still fine.
    assert!(c.handle.open::<EchoClient>(ConnectionSettings::default()).await.is_ok());
}

#[tokio::test]
async fn router_as_root_handler_routes_by_method_id() {
    let r = router();
    let (_s, c) = sessions(SessionBuilder::new().handler(r.clone()).acceptor(r)).await;
    let arith = ArithClient::new(c.root.caller.clone());
    let echo = EchoClient::new(c.root.caller.clone());
    assert_eq!(arith.add(5, 5).await, Ok(10));
    assert_eq!(echo.echo("root".into()).await, Ok("root".to_string()));
    let r = c.root.caller.call::<_, ()>(MethodId::from_names("Nobody", "nothing"), &(), vec![]).await;
    assert!(matches!(r, Err(CallError::UnknownMethod { .. })), "{:?}", r);
}

/// Keeps subscribers' channels beyond the call that announced them.
#[vox_core::service]
pub trait Hub {
    /// Stores `out` and returns.
    async fn subscribe(&self, out: Tx<String>);
}

#[derive(Default)]
struct HubImpl {
    subscribers: std::sync::Mutex<Vec<Tx<String>>>,
}

impl Hub for HubImpl {
    async fn subscribe(&self, out: Tx<String>) {
        self.subscribers.lock().expect("lock").push(out);
    }
}

#[tokio::test]
async fn dropping_the_client_closes_its_virtual_connection() {
    let (_s, c) =
        sessions(SessionBuilder::new().acceptor(ServiceRouter::new().serve(HubDispatcher::new(HubImpl::default()))))
            .await;
    let hub = c.handle.open::<HubClient>(ConnectionSettings::default()).await.expect("open");
    let (tx, mut rx) = channel::<String>();
    hub.subscribe(tx).await.expect("subscribe");
    // The channel outlives the call; it ends with the connection, which
    // closes when its last caller (the client) is dropped.
    drop(hub);
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.expect("channel ended");
    assert_eq!(end, Err(ChannelError::ConnectionClosed));
}

#[test]
fn policy_table_records_idem_and_persist() {
    let m = ArithClient::METHODS;
    assert_eq!(ArithClient::SERVICE_NAME, "Arith");
    assert_eq!(<ArithClient as Client>::SERVICE_NAME, "Arith");
    assert_eq!(ArithDispatcher::<ArithImpl>::METHODS, m);
    let names: Vec<_> = m.iter().map(|m| m.name).collect();
    assert_eq!(names, ["add", "ping", "divide", "sum", "generate", "transform", "calls"]);
    let policy: Vec<_> = m.iter().map(|m| (m.idem, m.persist, m.has_channels)).collect();
    assert_eq!(
        policy,
        [
            (true, false, false),
            (false, false, false),
            (true, true, false),
            (false, true, true),
            (false, false, true),
            (false, false, true),
            (false, false, false),
        ]
    );
    let divide = MethodInfo::find(m, MethodId::from_names("arith", "divide")).expect("found by id");
    assert_eq!(divide.name, "divide");
    assert!(MethodInfo::find(m, MethodId::from_names("Arith", "nope")).is_none());
    // Ids follow PROTOCOL.md section 7 and are distinct.
    for (i, a) in m.iter().enumerate() {
        assert_eq!(a.id(), MethodId::from_names("Arith", a.name));
        assert!(m[i + 1..].iter().all(|b| b.id() != a.id()));
    }
}

#[tokio::test]
async fn a_shared_implementation_serves_every_connection() {
    let imp = Arc::new(ArithImpl::default());
    let router = ServiceRouter::new().serve(ArithDispatcher::from_arc(imp.clone()));
    let (_s, c) = sessions(SessionBuilder::new().acceptor(router)).await;
    for _ in 0..3 {
        let a = c.handle.open::<ArithClient>(ConnectionSettings::default()).await.expect("open");
        a.ping().await.expect("ping");
    }
    assert_eq!(imp.calls.load(Ordering::Relaxed), 3);
}

/// A service with no methods still expands.
#[vox_core::service]
pub trait Nothing {}

struct NothingImpl;
impl Nothing for NothingImpl {}

#[tokio::test]
async fn a_service_without_methods_answers_unknown_method() {
    let (_s, c) = sessions(SessionBuilder::new().handler(NothingDispatcher::new(NothingImpl))).await;
    assert!(NothingClient::METHODS.is_empty());
    let r = c.root.caller.call::<_, ()>(MethodId::from_names("Nothing", "x"), &(), vec![]).await;
    assert!(matches!(r, Err(CallError::UnknownMethod { .. })), "{:?}", r);
}

#[test]
fn retry_policy_of_each_method_comes_from_its_attributes() {
    use vox_core::driver::{Handler, MethodPolicy};
    let d = ArithDispatcher::new(ArithImpl::default());
    let policy = |name: &str| d.policy(MethodId::from_names("Arith", name));
    assert_eq!(policy("add"), MethodPolicy { idem: true, persist: false });
    assert_eq!(policy("ping"), MethodPolicy { idem: false, persist: false });
    assert_eq!(policy("divide"), MethodPolicy { idem: true, persist: true });
    assert_eq!(policy("sum"), MethodPolicy { idem: false, persist: true });
    // Another service's method, or none at all: the safe default.
    assert_eq!(d.policy(MethodId::from_names("Echo", "echo")), MethodPolicy::default());
}
