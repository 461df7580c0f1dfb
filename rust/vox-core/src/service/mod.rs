//! Typed services: what the [`service`](macro@service) macro generates code
//! against.
//!
//! - [`Client`]: a generated `<Name>Client`, built from a connection's
//!   [`Caller`]; [`OpenClient::open`] opens a virtual connection to a named
//!   service and returns the client in one call.
//! - [`ServiceDispatcher`]: a generated `<Name>Dispatcher<S>`, a
//!   [`Handler`] that serves an implementation `S` of the trait.
//! - [`ServiceRouter`]: serves several services; as an [`Acceptor`] it
//!   accepts inbound virtual connections by the service name in their
//!   `OpenConnection` metadata ([`SERVICE_KEY`]) and rejects unknown names
//!   with a reason ([`REJECT_REASON_KEY`]); as a [`Handler`] (say on the root
//!   connection) it routes each call by method id.
//! - [`ServiceError`]: what a call to a method returning `Result<T, E>`
//!   reports: the handler's own error decoded as `E`, or a [`CallError`].
//! - [`MethodInfo`]: the per-method table (`<Name>Client::METHODS`), with the
//!   retry policy from `#[vox(idem)]` and `#[vox(persist)]`.

use crate::driver::{BoxFuture, Call, CallError, ChannelArg, Handler, Rx, Tx};
use crate::session::{AcceptDecision, Acceptor, Caller, ConnectionRequest, SessionError, SessionHandle};
use crate::wire::{self, ConnectionSettings, Metadata, MethodId, kebab};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

#[cfg(feature = "tower")]
pub mod balance;
/// Turns a trait of `async fn` methods into a vox service.
///
/// On `trait Calculator` it generates:
///
/// - the trait itself, with every `async fn m(&self, ..) -> R` rewritten to
///   `fn m(&self, ..) -> impl Future<Output = R> + Send` and `Send + Sync +
///   'static` added as supertraits; implementors still write `async fn`;
/// - `CalculatorClient`: built from a connection's [`Caller`]
///   (`CalculatorClient::new`, [`Client::from_caller`], or
///   [`OpenClient::open`] on a session handle), with one `async` method per
///   trait method taking the same arguments. A method returning `R` returns
///   `Result<R, CallError>`; a method returning `Result<T, E>` returns
///   `Result<T, ServiceError<E>>`, where [`ServiceError::User`] carries the
///   handler's `Err(e)` decoded as `E`;
/// - `CalculatorDispatcher<S>`: a [`Handler`] serving an implementation `S`.
///   It decodes the non-channel arguments (as a tuple, in order), binds the
///   `Tx`/`Rx` arguments by index in argument order, and answers `Ok(v)` with
///   the value, `Err(e)` as a user error, undecodable arguments or
///   mismatched channels with `InvalidPayload`, and unknown method ids with
///   `UnknownMethod`;
/// - `SERVICE_NAME`, `METHODS` (a [`MethodInfo`] per method, in
///   declaration order) and `schemas()` on both generated types.
///
/// Method ids follow PROTOCOL.md section 7: `MethodId::from_names("Calculator",
/// "method_name")`, the kebab-cased names hashed with BLAKE3.
///
/// Arguments are owned types that implement `Serialize + DeserializeOwned`
/// and [`Schema`](crate::schema::Schema) (derive it: peers of another
/// version are then translated by field name, ADR 0008), or channel ends: `Rx<T>` means the handler receives (the caller creates
/// `(tx, rx) = channel()`, passes `rx` and keeps `tx`), `Tx<T>` means the
/// handler sends. Channels are recognised by the type names `Tx` and `Rx`;
/// they are only allowed as top-level arguments: in a return type, an error
/// type, or inside a `Vec`, `Option`, tuple or any other type they are a
/// compile error. So are methods that are not `async fn`, that do not take
/// `&self`, that are generic or have a default body.
///
/// Byte buffers: a `Vec<u8>` argument or return value (top level) costs one
/// copy per call direction, into the `Vec` the receiving side gets; the
/// sending side's `Vec` is written to the link from its own allocation.
/// An argument or return value spelled `Bytes` or `bytes::Bytes` (it must be
/// `bytes::Bytes`) is never copied: sent from where it is, received as a
/// slice of the message it came in. On the wire both are a plain `Vec<u8>`.
///
/// Method attributes: `#[vox(idem)]` marks a method idempotent (may be
/// re-executed after an ambiguous failure), `#[vox(persist)]` asks for its
/// outcome to be kept in the operation table (PROTOCOL.md section 10). They
/// are recorded in `METHODS`.
///
/// # Example
///
/// ```
/// use vox_core::driver::{Rx, Tx, channel};
/// use vox_core::service::{OpenClient, ServiceError, ServiceRouter};
/// use vox_core::session::SessionBuilder;
/// use vox_core::wire::ConnectionSettings;
///
/// /// Arithmetic over the wire.
/// #[vox_core::service]
/// pub trait Calculator {
///     /// Adds two numbers.
///     #[vox(idem)]
///     async fn add(&self, a: i64, b: i64) -> i64;
///     /// Divides, failing on zero.
///     async fn divide(&self, a: i64, b: i64) -> Result<i64, String>;
///     /// Sums the numbers the caller streams.
///     async fn sum(&self, numbers: Rx<i64>) -> i64;
///     /// Streams `from, from - 1, .., 0` back.
///     async fn countdown(&self, from: u32, out: Tx<u32>);
/// }
///
/// struct Calc;
///
/// impl Calculator for Calc {
///     async fn add(&self, a: i64, b: i64) -> i64 {
///         a + b
///     }
///     async fn divide(&self, a: i64, b: i64) -> Result<i64, String> {
///         if b == 0 { Err("division by zero".into()) } else { Ok(a / b) }
///     }
///     async fn sum(&self, mut numbers: Rx<i64>) -> i64 {
///         let mut total = 0;
///         while let Ok(Some(n)) = numbers.recv().await {
///             total += n;
///         }
///         total
///     }
///     async fn countdown(&self, from: u32, mut out: Tx<u32>) {
///         for i in (0..=from).rev() {
///             if out.send(&i).await.is_err() {
///                 break;
///             }
///         }
///         let _ = out.close().await;
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (a, b) = vox_core::link::memory_pair(Default::default());
/// let server = SessionBuilder::new()
///     .handler(CalculatorDispatcher::new(Calc))
///     .acceptor(ServiceRouter::new().serve(CalculatorDispatcher::new(Calc)));
/// let (server, client) =
///     tokio::join!(server.establish_acceptor(a), SessionBuilder::new().establish_initiator(b));
/// let (_server, client) = (server?, client?);
///
/// // On the root connection.
/// let calc = CalculatorClient::new(client.root.caller.clone());
/// assert_eq!(calc.add(2, 3).await?, 5);
/// assert_eq!(calc.divide(1, 0).await, Err(ServiceError::User("division by zero".to_string())));
///
/// // Streaming both ways.
/// let (mut tx, rx) = channel::<i64>();
/// let feed = async move {
///     for n in 1..=10 {
///         tx.send(&n).await?;
///     }
///     tx.close().await
/// };
/// let (total, fed) = tokio::join!(calc.sum(rx), feed);
/// fed?;
/// assert_eq!(total?, 55);
///
/// let (tx, mut rx) = channel::<u32>();
/// let collect = async move {
///     let mut got = Vec::new();
///     while let Some(n) = rx.recv().await? {
///         got.push(n);
///     }
///     Ok::<_, vox_core::driver::ChannelError>(got)
/// };
/// let (done, got) = tokio::join!(calc.countdown(2, tx), collect);
/// done?;
/// assert_eq!(got?, vec![2, 1, 0]);
///
/// // On a virtual connection opened by service name.
/// let calc2 = client.handle.open::<CalculatorClient>(ConnectionSettings::default()).await?;
/// assert_eq!(calc2.add(40, 2).await?, 42);
///
/// // The policy table.
/// assert!(CalculatorClient::METHODS[0].idem);
/// assert_eq!(CalculatorClient::METHODS[1].name, "divide");
/// # Ok(()) }
/// ```
mod evolve;
mod retry;
mod router;
mod server;
#[cfg(feature = "tower")]
pub mod tower;
pub use router::ServiceRouter;
pub use server::{DEFAULT_GRACE_PERIOD, DEFAULT_MAX_SESSIONS, ServeError, ServeReport, Server, Serving};

pub use vox_macros::service;

/// The `OpenConnection` metadata key naming the service a virtual connection
/// is for (a string; matched in kebab case, so `Calculator` and `calculator`
/// are the same service).
pub const SERVICE_KEY: &str = crate::wire::runtime_key::SERVICE;

pub use crate::wire::REJECT_REASON_KEY;

/// One method of a service, as declared: its names and retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodInfo {
    /// The service (trait) name.
    pub service: &'static str,
    /// The method name as written in the trait.
    pub name: &'static str,
    /// `#[vox(idem)]`: executing the call twice has the same effect as once,
    /// so it may be re-executed after an ambiguous failure.
    pub idem: bool,
    /// `#[vox(persist)]`: the outcome is kept in the operation table.
    pub persist: bool,
    /// Whether the method takes `Tx`/`Rx` arguments.
    pub has_channels: bool,
}

impl MethodInfo {
    /// The method id (PROTOCOL.md section 7).
    ///
    /// ```
    /// use vox_core::service::MethodInfo;
    /// use vox_core::wire::MethodId;
    /// let m = MethodInfo { service: "Testbed", name: "echo", idem: false, persist: false, has_channels: false };
    /// assert_eq!(m.id(), MethodId::from_names("Testbed", "echo"));
    /// ```
    pub fn id(&self) -> MethodId {
        MethodId::from_names(self.service, self.name)
    }

    /// Finds the method with id `id` in a `METHODS` table.
    pub fn find(methods: &'static [MethodInfo], id: MethodId) -> Option<&'static MethodInfo> {
        methods.iter().find(|m| m.id() == id)
    }
}

/// What a call to a method declared as returning `Result<T, E>` reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError<E> {
    /// The handler returned `Err(e)`.
    #[error("the service returned an error: {0}")]
    User(E),
    /// The call itself failed (see [`CallError`]); an application error that
    /// could not be decoded as `E` is [`CallError::InvalidResponse`].
    #[error(transparent)]
    Call(#[from] CallError),
}

impl<E> ServiceError<E> {
    /// The handler's own error, if that is what this is.
    pub fn user(&self) -> Option<&E> {
        match self {
            ServiceError::User(e) => Some(e),
            ServiceError::Call(_) => None,
        }
    }

    /// Who caused the error: a user error is the peer's (its handler said
    /// no); otherwise as [`CallError::fault`].
    pub fn fault(&self) -> crate::driver::Fault {
        match self {
            ServiceError::User(_) => crate::driver::Fault::Peer,
            ServiceError::Call(e) => e.fault(),
        }
    }

    /// Whether the same call may be attempted again (never for a user error).
    pub fn is_retryable(&self) -> bool {
        match self {
            ServiceError::User(_) => false,
            ServiceError::Call(e) => e.is_retryable(),
        }
    }
}

/// A generated `<Name>Client`.
pub trait Client: Sized + Clone + Send + Sync + 'static {
    /// The service name.
    const SERVICE_NAME: &'static str;
    /// The method table, in declaration order.
    const METHODS: &'static [MethodInfo];
    /// The schema of each method, in declaration order.
    fn schemas() -> &'static [crate::schema::MethodSchema];
    /// A client calling over `caller`'s connection.
    fn from_caller(caller: Caller) -> Self;
    /// The connection's caller.
    fn caller(&self) -> &Caller;
}

/// A generated `<Name>Dispatcher<S>`: a handler for one service.
pub trait ServiceDispatcher: Handler + Clone {
    /// The service name.
    const SERVICE_NAME: &'static str;
    /// The method table, in declaration order.
    const METHODS: &'static [MethodInfo];
    /// The schema of each method, in declaration order.
    fn schemas() -> &'static [crate::schema::MethodSchema];
}

/// Opens typed clients on virtual connections.
///
/// ```no_run
/// # #[vox_core::service] pub trait Calculator { async fn add(&self, a: i64, b: i64) -> i64; }
/// # async fn demo(handle: vox_core::session::SessionHandle) -> Result<(), Box<dyn std::error::Error>> {
/// use vox_core::service::OpenClient;
/// let calc = handle.open::<CalculatorClient>(Default::default()).await?;
/// println!("{}", calc.add(1, 2).await?);
/// // Dropping the client (its last caller) closes the connection.
/// # Ok(()) }
/// ```
pub trait OpenClient {
    /// Opens a virtual connection for `C`'s service (its name goes in the
    /// `OpenConnection` metadata under [`SERVICE_KEY`]) and returns the
    /// client. A rejection is [`SessionError::Rejected`]; see
    /// [`reject_reason`].
    fn open<C: Client>(&self, settings: ConnectionSettings) -> impl Future<Output = Result<C, SessionError>> + Send {
        self.open_with::<C>(settings, Metadata::new())
    }

    /// Like [`open`](OpenClient::open), with extra metadata after the
    /// service name.
    fn open_with<C: Client>(
        &self,
        settings: ConnectionSettings,
        metadata: Metadata,
    ) -> impl Future<Output = Result<C, SessionError>> + Send;
}

impl OpenClient for SessionHandle {
    async fn open_with<C: Client>(&self, settings: ConnectionSettings, metadata: Metadata) -> Result<C, SessionError> {
        let mut md = Metadata::new().with_str(SERVICE_KEY, C::SERVICE_NAME, 0);
        md.0.extend(metadata.0);
        let conn = self.open_connection(settings, md).await?;
        Ok(C::from_caller(conn.caller))
    }
}

/// The readable reason in a rejection's metadata, if any.
pub fn reject_reason(error: &SessionError) -> Option<&str> {
    match error {
        SessionError::Rejected { metadata } => metadata.get_str(REJECT_REASON_KEY),
        _ => None,
    }
}

mod sealed {
    pub trait Sealed {}
    impl<T> Sealed for crate::driver::Tx<T> {}
    impl<T> Sealed for crate::driver::Rx<T> {}
}

/// A channel end a client can hand to a call ([`Tx`] or [`Rx`]).
pub trait IntoChannelArg: sealed::Sealed {
    /// The end as a call argument, or `None` if it came from a handler.
    fn into_channel_arg(self) -> Option<ChannelArg>;
}

impl<T> IntoChannelArg for Tx<T> {
    fn into_channel_arg(self) -> Option<ChannelArg> {
        self.into_arg()
    }
}

impl<T> IntoChannelArg for Rx<T> {
    fn into_channel_arg(self) -> Option<ChannelArg> {
        self.into_arg()
    }
}

/// Support code for generated services; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    /// Hands a client's channel argument over, or fails the call.
    pub fn channel_arg<C: IntoChannelArg>(end: C, name: &'static str) -> Result<ChannelArg, CallError> {
        end.into_channel_arg().ok_or_else(|| {
            CallError::SendFailed(format!(
                "channel argument `{name}` is not a fresh end from `channel()` (ends bound by a handler cannot be passed on)"
            ))
        })
    }

    /// One call of a generated client's method, with its retries.
    ///
    /// # Cancel safety
    /// Dropping the future cancels the attempt in flight (`CancelRequest`) or
    /// stops waiting for the session to be attached again; no further
    /// attempt is made.
    ///
    /// # Errors
    /// As [`Caller::call`]. Without channels, on a resumable session, an
    /// error that [`CallError::is_retryable`] is retried under the caller's
    /// retry policy once the session is attached again; the last attempt's
    /// error comes back when the attempts are used up or the session ends.
    pub async fn call<A: serde::Serialize, R: DeserializeOwned>(
        caller: &Caller,
        info: &MethodInfo,
        method_id: MethodId,
        args: &A,
        channels: Vec<ChannelArg>,
    ) -> Result<R, CallError> {
        super::retry::call(caller, info, method_id, args, channels).await
    }

    /// [`call`] with schema evolution (ADR 0008).
    ///
    /// # Cancel safety
    /// As [`call`] (a dropped schema query is made again by a later call).
    ///
    /// # Errors
    /// As [`call`], and [`CallError::IncompatibleSchema`].
    pub async fn call_evolving<A: serde::Serialize, R: DeserializeOwned>(
        caller: &Caller,
        info: &MethodInfo,
        method_id: MethodId,
        schema: &crate::schema::MethodSchema,
        args: &A,
        channels: Vec<ChannelArg>,
    ) -> Result<R, CallError> {
        super::evolve::call(caller, info, method_id, schema, args, channels).await
    }

    /// Answers a `vox.schema.describe` call for a service whose methods
    /// have `ids` and `schemas`, in the same order.
    pub fn answer_schema(call: Call, ids: &[MethodId], infos: &[MethodInfo], schemas: &[crate::schema::MethodSchema]) {
        super::evolve::answer(call, ids, infos, schemas)
    }

    pub use super::evolve::ArgsError;

    /// The arguments of a request to a generated dispatcher, translated
    /// first if the caller's schema of the method differs (rule
    /// `schema.evolution`).
    ///
    /// # Errors
    /// They do not decode, or cannot be translated.
    pub fn decode_args<A: DeserializeOwned>(call: &Call) -> Result<A, ArgsError> {
        super::evolve::decode_args(call)
    }

    /// Answers a request whose arguments [`decode_args`] refused.
    pub fn args_failed(reply: crate::driver::ReplySink, info: &MethodInfo, e: ArgsError) {
        super::evolve::args_failed(reply, info, e)
    }

    /// Connects to `addr` with `builder` and returns a client of the root
    /// connection (the session lives as long as the client's callers).
    ///
    /// # Cancel safety
    /// As [`SessionBuilder::connect`](crate::session::SessionBuilder::connect):
    /// dropping the future abandons the setup.
    ///
    /// # Errors
    /// As [`SessionBuilder::connect`](crate::session::SessionBuilder::connect).
    pub async fn connect<C: Client>(
        builder: crate::session::SessionBuilder,
        addr: impl ToString,
    ) -> Result<C, SessionError> {
        let session = builder.connect(addr).await?;
        Ok(C::from_caller(session.root.caller))
    }

    /// A `Vec<u8>` argument or return value of a generated service, encoded
    /// as one byte string: the same bytes on the wire as a sequence of `u8`,
    /// but copied whole instead of element by element. Sent, it keeps the
    /// `Vec`'s allocation and the session writer sends from it (no copy);
    /// received, it is copied once, into the `Vec` the code gets.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ByteBuf(pub bytes::Bytes);

    impl ByteBuf {
        /// Takes `v` without copying it.
        pub fn from_vec(v: Vec<u8>) -> ByteBuf {
            ByteBuf(bytes::Bytes::from(v))
        }

        /// The bytes as a `Vec`; no copy for a received buffer (it owns its
        /// allocation).
        pub fn into_vec(self) -> Vec<u8> {
            Vec::from(self.0)
        }
    }

    impl serde::Serialize for ByteBuf {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            wire::serialize_shared(&self.0, s)
        }
    }

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    // The one copy: into an allocation of its own, which
                    // `into_vec` then hands over as it is.
                    Ok(ByteBuf::from_vec(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf::from_vec(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(ByteBuf::from_vec(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    /// Decodes a user error as `E`.
    pub fn typed<T, E: DeserializeOwned>(r: Result<T, CallError>) -> Result<T, ServiceError<E>> {
        match r {
            Ok(v) => Ok(v),
            Err(CallError::User(blob)) => match wire::decode::<E>("user error", blob.bytes()) {
                Ok(e) => Err(ServiceError::User(e)),
                Err(d) => Err(ServiceError::Call(CallError::InvalidResponse(d.to_string()))),
            },
            Err(e) => Err(ServiceError::Call(e)),
        }
    }
}

// Every key the runtime writes per call is decoded without an allocation
// only if it is in the wire layer's list; a key added here and not there
// would silently cost one again.
#[cfg(test)]
#[test]
fn metadata_runtime_keys_are_all_borrowed_when_decoded() {
    use crate::driver::trace::{TRACEPARENT_KEY, TRACESTATE_KEY};
    use crate::plumbing::operations::OP_ID_KEY;
    use crate::wire::{Metadata, MetadataKey, REJECT_REASON_KEY, RUNTIME_KEYS};
    let keys =
        [OP_ID_KEY, crate::driver::DEADLINE_KEY, TRACEPARENT_KEY, TRACESTATE_KEY, SERVICE_KEY, REJECT_REASON_KEY];
    assert_eq!(keys.len(), RUNTIME_KEYS.len());
    let mut md = Metadata::new();
    for key in keys.into_iter().chain(["x-user-key"]) {
        md = md.with_u64(key.to_owned(), 1, 0);
    }
    let bytes = crate::wire::encode("metadata", &md).unwrap();
    let back: Metadata = crate::wire::decode("metadata", &bytes.into()).unwrap();
    assert_eq!(back, md);
    let borrowed: Vec<bool> = back.0.iter().map(|e| matches!(e.key, MetadataKey::Borrowed(_))).collect();
    assert_eq!(borrowed, [true, true, true, true, true, true, false]);
}
