//! Benchmark rows for schema evolution (issue 21), ignored by default:
//!
//! ```sh
//! cargo test --release -p vox-core --test schema_bench -- --ignored --nocapture
//! ```
//!
//! Over one in-memory session, sequential calls of `place(order) -> Order`:
//! - `raw`: the pre-schema path of generated clients
//!   (`service::__private::call`: encode, retries with an operation id,
//!   decode), the baseline;
//! - `matching`: the generated client with equal schemas on both sides
//!   (one cache probe, then the same path);
//! - `translated`: a v1 client calling a v2 handler (arguments and return
//!   value translated by name).
//!
//! Rounds alternate the three so machine noise hits them alike; the best
//! round of each is printed (ns per call), with the translation alone
//! (`Plan::translate` of one value).

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use vox_core::link::{self, LinkConfig};
use vox_core::schema::{Plan, SchemaGraph};
use vox_core::session::{Session, SessionBuilder};

mod v1 {
    use super::*;
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Order {
        pub id: u64,
        pub qty: u32,
        pub sku: String,
        pub tags: Vec<String>,
    }
    #[vox_core::service]
    pub trait Shop {
        async fn place(&self, order: Order) -> Order;
    }
    pub struct Impl;
    impl Shop for Impl {
        async fn place(&self, order: Order) -> Order {
            order
        }
    }
}

mod v2 {
    use super::*;
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, vox_core::Schema)]
    pub struct Order {
        pub sku: String,
        pub note: Option<String>,
        pub tags: Vec<String>,
        pub qty: u32,
        pub id: u64,
    }
    #[vox_core::service]
    pub trait Shop {
        async fn place(&self, order: Order) -> Order;
    }
    pub struct Impl;
    impl Shop for Impl {
        async fn place(&self, order: Order) -> Order {
            order
        }
    }
}

async fn pair(server: SessionBuilder) -> (Session, Session) {
    let (a, b) = link::memory_pair(LinkConfig::default());
    let (s, c) = tokio::join!(server.establish_acceptor(a), SessionBuilder::new().establish_initiator(b));
    (s.expect("server"), c.expect("client"))
}

fn order() -> v1::Order {
    v1::Order { id: 42, qty: 3, sku: "SKU-12345".into(), tags: vec!["a".into(), "bb".into()] }
}

/// A call the way generated clients made it before schemas.
async fn old_path(caller: &vox_core::session::Caller, id: vox_core::wire::MethodId, o: &v1::Order) -> v1::Order {
    let info = &v1::ShopClient::METHODS[0];
    vox_core::service::__private::call(caller, info, id, &(o.clone(),), vec![]).await.unwrap()
}

const CALLS: u32 = 5_000;
const ROUNDS: usize = 7;

fn per_call(d: Duration) -> f64 {
    d.as_nanos() as f64 / f64::from(CALLS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn schema_bench_matching_and_translated_calls() {
    let (_s1, c1) = pair(SessionBuilder::new().handler(v1::ShopDispatcher::new(v1::Impl))).await;
    let (_s2, c2) = pair(SessionBuilder::new().handler(v2::ShopDispatcher::new(v2::Impl))).await;
    let raw_caller = c1.root.caller.clone();
    let matching = v1::ShopClient::new(c1.root.caller.clone());
    let translated = v1::ShopClient::new(c2.root.caller.clone());
    let place = v1::ShopClient::METHODS[0].id();
    let o = order();
    // Warm up (and make the one schema query of each client).
    for _ in 0..500 {
        let _: v1::Order = old_path(&raw_caller, place, &o).await;
        matching.place(o.clone()).await.unwrap();
        assert_eq!(translated.place(o.clone()).await.unwrap(), o);
    }
    let (mut raw, mut same, mut xl) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..CALLS {
            let _: v1::Order = old_path(&raw_caller, place, &o).await;
        }
        raw = raw.min(t.elapsed());
        let t = Instant::now();
        for _ in 0..CALLS {
            matching.place(o.clone()).await.unwrap();
        }
        same = same.min(t.elapsed());
        let t = Instant::now();
        for _ in 0..CALLS {
            translated.place(o.clone()).await.unwrap();
        }
        xl = xl.min(t.elapsed());
    }

    // The translation alone, both directions of the call.
    let (g1, r1) = SchemaGraph::of::<v1::Order>();
    let (g2, r2) = SchemaGraph::of::<v2::Order>();
    let to_v2 = Plan::build(&g1, r1, &g2, r2).unwrap();
    let to_v1 = Plan::build(&g2, r2, &g1, r1).unwrap();
    let bytes = postcard::to_stdvec(&o).unwrap();
    let n = 100_000u32;
    let t = Instant::now();
    for _ in 0..n {
        let b = to_v2.translate(std::hint::black_box(&bytes)).unwrap();
        std::hint::black_box(to_v1.translate(&b).unwrap());
    }
    let plans = t.elapsed().as_nanos() as f64 / f64::from(n);

    println!("schema bench ({CALLS} sequential calls per round, best of {ROUNDS}, in-memory session):");
    println!("| path | ns/call | vs raw |");
    println!("|---|---:|---:|");
    for (name, d) in [
        ("raw call (pre-schema path)", raw),
        ("generated client, matching schemas", same),
        ("generated client, translated (v1 -> v2)", xl),
    ] {
        println!("| {name} | {:.0} | {:+.1} % |", per_call(d), (per_call(d) / per_call(raw) - 1.0) * 100.0);
    }
    println!("| Plan::translate v1->v2 + v2->v1 of one Order (no IO) | {plans:.0} | |");
}
