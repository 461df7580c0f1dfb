//! Issue 18, point 9: `Vec<u8>` arguments and return values of a typed
//! service travel as one byte string: the same bytes as serde's sequence of
//! `u8` (so peers that encode a `Vec<u8>` plainly interoperate), copied
//! whole; `bytes::Bytes` ones too, shared instead of copied. (How many
//! copies a call costs: `tests/byte_copies.rs`.)

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::testbed::memory_sessions;
use std::time::Instant;
use vox_core::session::SessionBuilder;
use vox_core::wire::{self, MethodId};

/// Byte buffers in and out.
#[vox_core::service]
pub trait Store {
    /// Returns what it was given.
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    /// Returns the buffer reversed, or an error for an empty one.
    async fn reverse(&self, tag: u32, data: Vec<u8>) -> Result<Vec<u8>, String>;
    /// Returns the second half of what it was given.
    async fn tail(&self, data: bytes::Bytes) -> Result<bytes::Bytes, String>;
}

#[derive(Clone)]
struct Mem;

impl Store for Mem {
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }

    async fn reverse(&self, _tag: u32, mut data: Vec<u8>) -> Result<Vec<u8>, String> {
        if data.is_empty() {
            return Err("empty".into());
        }
        data.reverse();
        Ok(data)
    }

    async fn tail(&self, data: bytes::Bytes) -> Result<bytes::Bytes, String> {
        // A slice of what arrived, answered as it is: no copy on either side.
        Ok(data.slice(data.len() / 2..))
    }
}

#[tokio::test]
async fn rpc_byte_buffers_round_trip_through_a_typed_service() {
    let (_s, c) =
        memory_sessions(SessionBuilder::new().handler(StoreDispatcher::new(Mem)), SessionBuilder::new()).await;
    let store = StoreClient::new(c.root.caller.clone());
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    assert_eq!(store.echo(big.clone()).await.expect("echo"), big);
    eprintln!("1 MiB Vec<u8> echo over the memory link (debug build): {:?}", started.elapsed());
    assert_eq!(store.reverse(1, vec![1, 2, 3]).await.expect("reverse"), vec![3, 2, 1]);
    assert!(store.reverse(1, vec![]).await.is_err());
    assert_eq!(store.echo(Vec::new()).await.expect("empty"), Vec::<u8>::new());
}

#[tokio::test]
async fn rpc_byte_buffers_are_the_same_bytes_as_a_plain_vec_u8() {
    // A plain caller encodes `(Vec<u8>,)` with serde's sequence; the typed
    // dispatcher reads it, and its answer decodes as a plain `Vec<u8>`.
    let (_s, c) =
        memory_sessions(SessionBuilder::new().handler(StoreDispatcher::new(Mem)), SessionBuilder::new()).await;
    let data = vec![0u8, 1, 255, 7, 128];
    let got: Vec<u8> =
        c.root.caller.call(MethodId::from_names("Store", "echo"), &(data.clone(),), vec![]).await.expect("call");
    assert_eq!(got, data);
    let plain = wire::encode("plain", &(data.clone(),)).unwrap();
    let as_bytes = wire::encode("bytes", &(vox_core::service::__private::ByteBuf::from_vec(data),)).unwrap();
    assert_eq!(plain, as_bytes, "identical on the wire");
}

#[tokio::test]
async fn rpc_bytes_arguments_and_results_travel_as_byte_strings() {
    let (_s, c) =
        memory_sessions(SessionBuilder::new().handler(StoreDispatcher::new(Mem)), SessionBuilder::new()).await;
    let store = StoreClient::new(c.root.caller.clone());
    let big = bytes::Bytes::from((0..(1 << 20)).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    assert_eq!(store.tail(big.clone()).await.expect("tail"), big.slice(big.len() / 2..));
    assert_eq!(store.tail(bytes::Bytes::new()).await.expect("empty"), bytes::Bytes::new());
    // The same bytes as a plain `Vec<u8>`: a plain caller's call works.
    let got: Vec<u8> =
        c.root.caller.call(MethodId::from_names("Store", "tail"), &(vec![1u8, 2, 3, 4],), vec![]).await.expect("call");
    assert_eq!(got, vec![3, 4]);
}
