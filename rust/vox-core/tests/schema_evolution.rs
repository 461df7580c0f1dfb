//! Two versions of the same service in one binary, talking over in-memory
//! sessions: a v1 client with a v2 server and the other way round, for every
//! change of issue 21's Must-show list (rules `schema.identity`,
//! `schema.evolution`, `schema.incompatible`).

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use vox_core::driver::{BoxFuture, Call, CallError, ChannelError, Handler, MethodPolicy, Rx, Tx, channel};
use vox_core::link::{self, LinkConfig};
use vox_core::schema::{SchemaAnswer, SchemaHash, SchemaQuery};
use vox_core::service::ServiceError;
use vox_core::session::{Session, SessionBuilder};
use vox_core::wire::MethodId;

mod v1 {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Order {
        pub id: u64,
        pub qty: u32,
        pub color: Color,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub enum Color {
        Red,
        Green,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Parcel {
        pub id: u64,
        #[serde(default)]
        pub weight: u32,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Retyped {
        pub qty: u32,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Line {
        pub sku: String,
        pub qty: u32,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub enum BillError {
        Empty,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub enum Event {
        Tick { n: u32 },
    }

    #[vox_core::service]
    pub trait Shop {
        /// Echoes the order as the handler decoded it.
        async fn place(&self, order: Order) -> Order;
        /// Echoes the colour.
        async fn paint(&self, color: Color) -> Color;
        /// The handler's favourite colour.
        async fn favourite(&self) -> Color;
        /// The weight the handler saw.
        async fn weigh(&self, parcel: Parcel) -> u32;
        /// `qty` changes type in v2.
        async fn count(&self, r: Retyped) -> u32;
        /// v2's `Line` has a required `price`.
        async fn bill(&self, lines: Vec<Line>) -> Result<u64, BillError>;
        /// A stream of evolving items, caller to handler.
        async fn feed(&self, lines: Rx<Line>) -> u32;
        /// A stream of evolving items, handler to caller.
        async fn watch(&self, events: Tx<Event>);
        /// Unchanged.
        async fn ping(&self) -> u32;
    }

    pub struct Impl;
    impl Shop for Impl {
        async fn place(&self, order: Order) -> Order {
            order
        }
        async fn paint(&self, color: Color) -> Color {
            color
        }
        async fn favourite(&self) -> Color {
            Color::Green
        }
        async fn weigh(&self, parcel: Parcel) -> u32 {
            parcel.weight
        }
        async fn count(&self, r: Retyped) -> u32 {
            r.qty
        }
        async fn bill(&self, lines: Vec<Line>) -> Result<u64, BillError> {
            if lines.is_empty() { Err(BillError::Empty) } else { Ok(lines.iter().map(|l| u64::from(l.qty)).sum()) }
        }
        async fn feed(&self, mut lines: Rx<Line>) -> u32 {
            let mut total = 0;
            while let Ok(Some(l)) = lines.recv().await {
                total += l.qty;
            }
            total
        }
        async fn watch(&self, mut events: Tx<Event>) {
            for n in 0..3 {
                let _ = events.send(&Event::Tick { n }).await;
            }
            let _ = events.close().await;
        }
        async fn ping(&self) -> u32 {
            1
        }
    }
}

mod v2 {
    use super::*;

    /// Reordered, with an added optional field.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Order {
        pub color: Color,
        pub note: Option<String>,
        pub qty: u32,
        pub id: u64,
    }
    /// An added variant, in the middle (indices shift; names match).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub enum Color {
        Red,
        Blue,
        Green,
    }
    /// `weight` removed.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Parcel {
        pub id: u64,
    }
    /// `qty` changed type.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Retyped {
        pub qty: String,
    }
    /// A required field added.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Line {
        pub qty: u32,
        pub price: u64,
        pub sku: String,
    }
    /// An added variant of an error.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub enum BillError {
        TooLarge { max: u64 },
        Empty,
    }
    /// An item enum with an added variant.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub enum Event {
        Alarm,
        Tick { n: u32 },
    }

    #[vox_core::service]
    pub trait Shop {
        /// Echoes the order as the handler decoded it.
        async fn place(&self, order: Order) -> Order;
        /// Echoes the colour.
        async fn paint(&self, color: Color) -> Color;
        /// The handler's favourite colour.
        async fn favourite(&self) -> Color;
        /// The weight the handler saw (none: 0).
        async fn weigh(&self, parcel: Parcel) -> u32;
        /// `qty` changed type.
        async fn count(&self, r: Retyped) -> u32;
        /// Prices the lines.
        async fn bill(&self, lines: Vec<Line>) -> Result<u64, BillError>;
        /// A stream of evolving items, caller to handler.
        async fn feed(&self, lines: Rx<Line>) -> u32;
        /// A stream of evolving items, handler to caller.
        async fn watch(&self, events: Tx<Event>);
        /// Unchanged.
        async fn ping(&self) -> u32;
    }

    pub struct Impl;
    impl Shop for Impl {
        async fn place(&self, order: Order) -> Order {
            order
        }
        async fn paint(&self, color: Color) -> Color {
            color
        }
        async fn favourite(&self) -> Color {
            Color::Blue
        }
        async fn weigh(&self, _parcel: Parcel) -> u32 {
            0
        }
        async fn count(&self, r: Retyped) -> u32 {
            r.qty.len() as u32
        }
        async fn bill(&self, lines: Vec<Line>) -> Result<u64, BillError> {
            match lines.iter().map(|l| l.price * u64::from(l.qty)).sum() {
                0 => Err(BillError::Empty),
                t if t > 1000 => Err(BillError::TooLarge { max: 1000 }),
                t => Ok(t),
            }
        }
        async fn feed(&self, mut lines: Rx<Line>) -> u32 {
            let mut total = 0;
            while let Ok(Some(l)) = lines.recv().await {
                total += l.qty;
            }
            total
        }
        async fn watch(&self, mut events: Tx<Event>) {
            let _ = events.send(&Event::Tick { n: 0 }).await;
            let _ = events.send(&Event::Alarm).await;
            let _ = events.send(&Event::Tick { n: 2 }).await;
            let _ = events.close().await;
        }
        async fn ping(&self) -> u32 {
            2
        }
    }
}

async fn sessions(server: SessionBuilder) -> (Session, Session) {
    let (a, b) = link::memory_pair(LinkConfig::default());
    let (s, c) = tokio::join!(server.establish_acceptor(a), SessionBuilder::new().establish_initiator(b));
    (s.expect("server session"), c.expect("client session"))
}

/// A v1 client of a v2 server.
async fn v1_to_v2() -> (Session, Session, v1::ShopClient) {
    let (s, c) = sessions(SessionBuilder::new().handler(v2::ShopDispatcher::new(v2::Impl))).await;
    let client = v1::ShopClient::new(c.root.caller.clone());
    (s, c, client)
}

/// A v2 client of a v1 server.
async fn v2_to_v1() -> (Session, Session, v2::ShopClient) {
    let (s, c) = sessions(SessionBuilder::new().handler(v1::ShopDispatcher::new(v1::Impl))).await;
    let client = v2::ShopClient::new(c.root.caller.clone());
    (s, c, client)
}

fn incompatible<T: std::fmt::Debug>(r: Result<T, CallError>) -> (String, String, String) {
    match r {
        Err(CallError::IncompatibleSchema { method, path, field, .. }) => (method, path, field),
        other => panic!("expected IncompatibleSchema, got {other:?}"),
    }
}

#[test]
fn schema_identity_versions_differ_only_where_types_changed() {
    let (a, b) = (v1::ShopClient::schemas(), v2::ShopClient::schemas());
    let names: Vec<&str> = v1::ShopClient::METHODS.iter().map(|m| m.name).collect();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(a[i].hash() == b[i].hash(), *name == "ping", "{name}");
    }
    // The same service built twice has the same hashes.
    assert_eq!(v1::ShopClient::schemas()[0].hash(), v1::ShopDispatcher::<v1::Impl>::schemas()[0].hash());
}

#[tokio::test]
async fn schema_identity_matching_hashes_answer_same() {
    let (_s, c) = sessions(SessionBuilder::new().handler(v1::ShopDispatcher::new(v1::Impl))).await;
    let client = v1::ShopClient::new(c.root.caller.clone());
    assert_eq!(client.ping().await, Ok(1));
    assert_eq!(client.place(v1::Order { id: 1, qty: 2, color: v1::Color::Red }).await.unwrap().qty, 2);
    // Raw: the query for `ping` with the same signature answers `Same`.
    let q = query(8, &v1::ShopClient::schemas()[8], vec![]);
    let raw: SchemaAnswer = c.root.caller.call(vox_core::schema::schema_method_id(), &q, vec![]).await.unwrap();
    assert_eq!(raw, SchemaAnswer::Same);
}

#[tokio::test]
async fn schema_evolution_added_optional_and_reordered_fields_v1_client_v2_server() {
    let (_s, _c, shop) = v1_to_v2().await;
    let order = v1::Order { id: 7, qty: 3, color: v1::Color::Green };
    // Args translated into v2's layout (note: None), the echo back into v1's.
    assert_eq!(shop.place(order.clone()).await, Ok(order));
}

#[tokio::test]
async fn schema_evolution_added_optional_and_reordered_fields_v2_client_v1_server() {
    let (_s, _c, shop) = v2_to_v1().await;
    let order = v2::Order { color: v2::Color::Red, note: Some("fragile".into()), qty: 3, id: 7 };
    // v1 never sees the note; it comes back as None.
    assert_eq!(shop.place(order).await, Ok(v2::Order { color: v2::Color::Red, note: None, qty: 3, id: 7 }));
}

#[tokio::test]
async fn schema_evolution_added_variant_unused_and_used() {
    let (_s1, _c1, old) = v1_to_v2().await;
    // Variant indices shifted: Green is 1 in v1 and 2 in v2.
    assert_eq!(old.paint(v1::Color::Green).await, Ok(v1::Color::Green));
    // schema.incompatible: the v2 handler returns the variant v1 lacks.
    let (method, path, field) = incompatible(old.favourite().await);
    assert_eq!((method.as_str(), path.as_str(), field.as_str()), ("Shop.favourite", "return: Color", "Blue"));
    // The connection stays up.
    assert_eq!(old.ping().await, Ok(2));

    let (_s2, _c2, new) = v2_to_v1().await;
    assert_eq!(new.paint(v2::Color::Green).await, Ok(v2::Color::Green));
    assert_eq!(new.favourite().await, Ok(v2::Color::Green));
    // A value of the new variant fails where it is received: the v1
    // handler cannot translate it, and answers IncompatibleSchema.
    let (method, path, field) = incompatible(new.paint(v2::Color::Blue).await);
    assert_eq!((method.as_str(), path.as_str(), field.as_str()), ("Shop.paint", "args.color: Color", "Blue"));
    assert_eq!(new.ping().await, Ok(1));
}

#[tokio::test]
async fn schema_evolution_removed_field_both_directions() {
    let (_s1, _c1, old) = v1_to_v2().await;
    // v1's weight is skipped on the way to v2.
    assert_eq!(old.weigh(v1::Parcel { id: 1, weight: 70 }).await, Ok(0));
    let (_s2, _c2, new) = v2_to_v1().await;
    // v1 lacks nothing it has no default for: weight takes its default.
    assert_eq!(new.weigh(v2::Parcel { id: 1 }).await, Ok(0));
}

#[tokio::test]
async fn schema_incompatible_changed_type_both_directions_connection_stays_up() {
    let (_s1, _c1, old) = v1_to_v2().await;
    let (method, path, field) = incompatible(old.count(v1::Retyped { qty: 3 }).await);
    assert_eq!((method.as_str(), path.as_str(), field.as_str()), ("Shop.count", "args.r: Retyped", "qty"));
    assert_eq!(old.ping().await, Ok(2));
    // Every later call of the method fails the same way, without a new query.
    assert!(matches!(old.count(v1::Retyped { qty: 3 }).await, Err(CallError::IncompatibleSchema { .. })));

    let (_s2, _c2, new) = v2_to_v1().await;
    let (_, path, field) = incompatible(new.count(v2::Retyped { qty: "3".into() }).await);
    assert_eq!((path.as_str(), field.as_str()), ("args.r: Retyped", "qty"));
    assert_eq!(new.ping().await, Ok(1));
}

#[tokio::test]
async fn schema_incompatible_missing_required_field() {
    let (_s1, _c1, old) = v1_to_v2().await;
    // v2's Line requires a price v1 cannot give.
    match old.bill(vec![v1::Line { sku: "a".into(), qty: 1 }]).await {
        Err(ServiceError::Call(CallError::IncompatibleSchema { method, path, field, reason })) => {
            assert_eq!(method, "Shop.bill");
            assert_eq!(path, "args.lines[]: Line");
            assert_eq!(field, "price");
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected IncompatibleSchema, got {other:?}"),
    }
    assert_eq!(old.ping().await, Ok(2));

    // The other way the price is simply skipped, and the v1 error crosses
    // into v2's (reordered) error enum.
    let (_s2, _c2, new) = v2_to_v1().await;
    assert_eq!(new.bill(vec![v2::Line { qty: 4, price: 99, sku: "a".into() }]).await, Ok(4));
    assert_eq!(new.bill(vec![]).await, Err(ServiceError::User(v2::BillError::Empty)));
}

#[tokio::test]
async fn schema_evolution_channel_items_caller_to_handler() {
    // v2 client feeds v2 lines to a v1 handler: price skipped per item,
    // including the items sent before the call started.
    let (_s, _c, new) = v2_to_v1().await;
    let (mut tx, rx) = channel::<v2::Line>();
    tx.send(&v2::Line { qty: 1, price: 5, sku: "early".into() }).await.unwrap();
    let call = tokio::spawn(async move { new.feed(rx).await });
    for qty in 2..=4 {
        tx.send(&v2::Line { qty, price: 5, sku: "x".into() }).await.unwrap();
    }
    tx.close().await.unwrap();
    assert_eq!(call.await.unwrap(), Ok(1 + 2 + 3 + 4));

    // v1 client to v2 handler: v2 requires a price, so the call fails
    // before anything is sent, and the kept end says so.
    let (_s, _c, old) = v1_to_v2().await;
    let (mut tx, rx) = channel::<v1::Line>();
    let (_, path, field) = incompatible(old.feed(rx).await);
    assert_eq!((path.as_str(), field.as_str()), ("channel lines: Line", "price"));
    assert!(tx.send(&v1::Line { sku: "late".into(), qty: 1 }).await.is_err());
}

#[tokio::test]
async fn schema_evolution_channel_items_handler_to_caller() {
    // v2 handler sends Tick, Alarm, Tick to a v1 caller: the Alarm item
    // fails alone, the channel goes on.
    let (_s, _c, old) = v1_to_v2().await;
    let (tx, mut rx) = channel::<v1::Event>();
    let call = tokio::spawn(async move { old.watch(tx).await });
    assert_eq!(rx.recv().await, Ok(Some(v1::Event::Tick { n: 0 })));
    match rx.recv().await {
        Err(ChannelError::IncompatibleSchema { method, path, field, .. }) => {
            assert_eq!(
                (method.as_str(), path.as_str(), field.as_str()),
                ("Shop.watch", "channel events: Event", "Alarm")
            );
        }
        other => panic!("expected IncompatibleSchema, got {other:?}"),
    }
    assert_eq!(rx.recv().await, Ok(Some(v1::Event::Tick { n: 2 })));
    assert_eq!(rx.recv().await, Ok(None));
    assert_eq!(call.await.unwrap(), Ok(()));

    // v1 handler to v2 caller: every v1 event exists in v2 (other index).
    let (_s, _c, new) = v2_to_v1().await;
    let (tx, mut rx) = channel::<v2::Event>();
    let call = tokio::spawn(async move { new.watch(tx).await });
    for n in 0..3 {
        assert_eq!(rx.recv().await, Ok(Some(v2::Event::Tick { n })));
    }
    assert_eq!(rx.recv().await, Ok(None));
    assert_eq!(call.await.unwrap(), Ok(()));
}

/// Counts the schema queries and other calls reaching a handler.
#[derive(Clone)]
struct Counting<H> {
    inner: H,
    queries: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

impl<H: Handler> Handler for Counting<H> {
    fn handle(&self, call: Call) -> BoxFuture {
        let n = if call.method_id == vox_core::schema::schema_method_id() { &self.queries } else { &self.calls };
        n.fetch_add(1, Ordering::Relaxed);
        self.inner.handle(call)
    }
    fn policy(&self, method: MethodId) -> MethodPolicy {
        self.inner.policy(method)
    }
}

#[tokio::test]
async fn schema_identity_exchange_happens_once_per_connection_and_method() {
    let (queries, calls) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let handler = Counting { inner: v2::ShopDispatcher::new(v2::Impl), queries: queries.clone(), calls: calls.clone() };
    let (_s, c) = sessions(SessionBuilder::new().handler(handler)).await;
    let old = v1::ShopClient::new(c.root.caller.clone());
    // Clients built from clones of the caller share the connection's cache.
    let again = v1::ShopClient::new(c.root.caller.clone());
    let (a, b) = tokio::join!(old.paint(v1::Color::Red), again.paint(v1::Color::Green));
    assert_eq!((a, b), (Ok(v1::Color::Red), Ok(v1::Color::Green)));
    for _ in 0..3 {
        assert_eq!(old.paint(v1::Color::Red).await, Ok(v1::Color::Red));
        assert_eq!(old.ping().await, Ok(2));
    }
    assert_eq!(queries.load(Ordering::Relaxed), 2, "one query for paint, one for ping");
    assert_eq!(calls.load(Ordering::Relaxed), 8);
}

/// A peer whose schema answers are `answer`, and which answers every
/// other call with `7u32`.
async fn hostile_answer(answer: Vec<u8>) -> (Session, Session, v1::ShopClient) {
    let handler = move |call: Call| {
        let answer = answer.clone();
        async move {
            if call.method_id == vox_core::schema::schema_method_id() {
                call.reply.ok_raw(bytes::Bytes::from(answer));
            } else {
                call.reply.ok(&7u32);
            }
        }
    };
    let (s, c) = sessions(SessionBuilder::new().handler(handler)).await;
    let client = v1::ShopClient::new(c.root.caller.clone());
    (s, c, client)
}

/// The bytes of `SchemaAnswer::Different` up to its type schemas: a
/// signature with no arguments, return type hash `[0; 32]`, no error, no
/// channels.
fn different_without_types() -> Vec<u8> {
    let mut answer = vec![0x01, 0x00];
    answer.extend([0u8; 32]);
    answer.extend([0x00, 0x00]);
    answer
}

#[tokio::test]
async fn schema_identity_received_schema_with_dangling_reference_is_incompatible_not_fatal() {
    // One type schema, one node: a Seq of node 9, which does not exist.
    let mut answer = different_without_types();
    answer.extend([0x01, 0x01, 0x12, 0x09, 0x00]);
    let (_s, c, shop) = hostile_answer(answer).await;
    let (method, path, _) = incompatible(shop.ping().await);
    assert_eq!((method.as_str(), path.as_str()), ("Shop.ping", "schema answer"));
    // The connection is fine: a raw call still works.
    let n: u32 = c.root.caller.call(MethodId::from_names("Shop", "ping"), &(), vec![]).await.unwrap();
    assert_eq!(n, 7);
}

#[tokio::test]
async fn session_decode_bounded_received_schema_over_the_node_limit_is_refused() {
    // One type schema announcing 5000 nodes (the limit is 1024), then
    // 5000 Units.
    let mut answer = different_without_types();
    answer.extend([0x01, 0x88, 0x27]);
    answer.extend(std::iter::repeat_n(0u8, 5000));
    answer.push(0);
    let (_s, _c, shop) = hostile_answer(answer).await;
    match shop.ping().await {
        Err(CallError::IncompatibleSchema { reason, .. }) => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("expected IncompatibleSchema, got {other:?}"),
    }
    assert_eq!(vox_core::schema::SchemaLimits::default().max_nodes, 1024);
}

#[tokio::test]
async fn schema_identity_peer_without_schemas_keeps_the_plain_path() {
    // A hand-written handler answers the query UnknownMethod: no
    // translation, the call goes through positionally.
    let handler = |call: Call| async move {
        if call.method_id == vox_core::schema::schema_method_id() {
            call.reply.unknown_method();
        } else {
            call.reply.ok(&5u32);
        }
    };
    let (_s, c) = sessions(SessionBuilder::new().handler(handler)).await;
    let shop = v1::ShopClient::new(c.root.caller.clone());
    assert_eq!(shop.ping().await, Ok(5));
}

/// The query a caller with schema `local` of method `index` sends, with
/// the type schemas of `local` and `held` hashes.
fn query(index: usize, local: &vox_core::schema::MethodSchema, held: Vec<SchemaHash>) -> SchemaQuery {
    let (signature, types) = local.split();
    let types = types.into_iter().map(|(_, t)| t).collect();
    SchemaQuery { method: v1::ShopClient::METHODS[index].id(), signature, types, held }
}

#[tokio::test]
async fn schema_evolution_the_receiver_translates_arguments_sent_in_the_callers_layout() {
    // A caller that follows the protocol and translates nothing itself: it
    // sends v2's schema of `place`, then v2's bytes. The v1 handler
    // translates them by name (note dropped, fields reordered), and answers
    // in its own layout, which the caller then translates (here: reads as
    // v1, as a v1 order is what it got).
    let (_s, c) = sessions(SessionBuilder::new().handler(v1::ShopDispatcher::new(v1::Impl))).await;
    let local = &v2::ShopClient::schemas()[0];
    let (signature, types) = local.split();
    let q = SchemaQuery {
        method: v1::ShopClient::METHODS[0].id(),
        signature,
        types: types.into_iter().map(|(_, t)| t).collect(),
        held: vec![],
    };
    let answer: SchemaAnswer = c.root.caller.call(vox_core::schema::schema_method_id(), &q, vec![]).await.unwrap();
    let SchemaAnswer::Different { signature, .. } = answer else { panic!("v1 and v2 differ") };
    assert_eq!(signature, v1::ShopClient::schemas()[0].split().0);
    let order = v2::Order { color: v2::Color::Green, note: Some("fragile".into()), qty: 3, id: 9 };
    let got: v1::Order = c.root.caller.call(v1::ShopClient::METHODS[0].id(), &(order,), vec![]).await.unwrap();
    assert_eq!(got, v1::Order { id: 9, qty: 3, color: v1::Color::Green });
}

#[tokio::test]
async fn schema_identity_each_type_crosses_a_connection_once() {
    // Caller to handler: the generated client's queries never repeat a type
    // schema, though paint, favourite and place all use Color.
    let sent = Arc::new(parking_lot::Mutex::new(Vec::<SchemaHash>::new()));
    let record = sent.clone();
    let inner = v2::ShopDispatcher::new(v2::Impl);
    let handler = move |call: Call| {
        if call.method_id == vox_core::schema::schema_method_id() {
            let q = SchemaQuery::decode(&call.args).expect("a valid query");
            record.lock().extend(q.types.iter().map(|t| t.hash()));
        }
        inner.handle(call)
    };
    let (_s, c) = sessions(SessionBuilder::new().handler(handler)).await;
    let old = v1::ShopClient::new(c.root.caller.clone());
    assert_eq!(old.paint(v1::Color::Red).await, Ok(v1::Color::Red));
    assert!(incompatible(old.favourite().await).2 == "Blue");
    let order = v1::Order { id: 1, qty: 1, color: v1::Color::Green };
    assert_eq!(old.place(order.clone()).await, Ok(order));
    assert_eq!(old.ping().await, Ok(2));
    let sent = sent.lock().clone();
    let mut unique = sent.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), sent.len(), "a type schema crossed twice: {sent:?}");
    let (color, root) = vox_core::schema::SchemaGraph::of::<v1::Color>();
    assert!(sent.contains(&SchemaHash::of(&color, root)));

    // Handler to caller: an answer leaves out the types the query names as
    // held, and those of the caller's own signature.
    let (_s, c) = sessions(SessionBuilder::new().handler(v2::ShopDispatcher::new(v2::Impl))).await;
    let describe = |q: SchemaQuery| {
        let caller = c.root.caller.clone();
        async move { caller.call::<_, SchemaAnswer>(vox_core::schema::schema_method_id(), &q, vec![]).await.unwrap() }
    };
    let first = describe(query(1, &v1::ShopClient::schemas()[1], vec![])).await;
    let SchemaAnswer::Different { types, .. } = first else { panic!("paint differs") };
    let (v2_color, root) = vox_core::schema::SchemaGraph::of::<v2::Color>();
    let v2_color = SchemaHash::of(&v2_color, root);
    assert_eq!(types.iter().map(|t| t.hash()).collect::<Vec<_>>(), vec![v2_color], "paint uses one type");
    let second = describe(query(2, &v1::ShopClient::schemas()[2], vec![v2_color])).await;
    let SchemaAnswer::Different { types, .. } = second else { panic!("favourite differs") };
    assert!(types.is_empty(), "Color was held: {types:?}");
}
