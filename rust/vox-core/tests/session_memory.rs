// The workspace denies unsafe code. This test needs one exception: a
// counting `#[global_allocator]`, an `unsafe impl GlobalAlloc` that only
// forwards to `std::alloc::System` and counts live bytes, so that the
// memory held by a session can be measured across many connection cycles.
#![allow(unsafe_code)]

//! Bounded state of the session layer: connection open/close cycles leave
//! the connection table empty and memory flat, and concurrent users of the
//! control mailbox never push it past its capacity.

mod common {
    pub mod raw_peer;
    pub mod testbed;
}
use common::raw_peer::PATIENCE;
use common::testbed::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};
use vox_core::session::{Session, SessionBuilder, SessionError};
use vox_core::wire::{ConnectionSettings, Metadata};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY (whole impl): every method forwards to `System` with the caller's
// arguments unchanged; the only addition is an atomic counter update.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is process-wide, so the tests of this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Growth allowed over 10,000 cycles after the warm-up.
const GROWTH_BOUND: isize = 64 * 1024;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("hang: {what}"))
}

#[derive(Clone, Copy, Debug)]
enum Release {
    /// `open_connection` then `close_connection`.
    CloseConnection,
    /// `open_connection` then drop the handle (rule `rpc.caller.liveness`).
    DropHandle,
}

async fn cycles(client: &Session, n: usize, how: Release) {
    for i in 0..n {
        let conn = client
            .handle
            .open_connection(ConnectionSettings::default(), Metadata::new())
            .await
            .unwrap_or_else(|e| panic!("cycle {i} ({how:?}): open failed: {e}"));
        match how {
            Release::CloseConnection => client.handle.close_connection(conn.id, Metadata::new()).await.unwrap(),
            Release::DropHandle => drop(conn),
        }
    }
    // A root round trip: the peer has handled every close before it answers.
    let echoed: String = client.root.caller.call(mid("echo"), &"settle".to_string(), vec![]).await.unwrap();
    assert_eq!(echoed, "settle");
}

fn open_close_cycles_leave_table_empty_and_memory_flat(how: Release) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    current_thread().block_on(async {
        // A limit of one connection on both sides: any entry left behind
        // in either connection table makes the next open fail.
        let (server, client) =
            memory_sessions(server_builder().max_connections(1), SessionBuilder::new().max_connections(1)).await;
        within("warm-up", cycles(&client, 1_000, how)).await;
        let warm = live_bytes();
        within("cycles", cycles(&client, 10_000, how)).await;
        let after = live_bytes();
        let growth = after - warm;
        println!(
            "{how:?}: live bytes after 1,000 warm-up cycles: {warm}; after 10,000 more: {after}; growth: {growth} bytes \
             (bound {GROWTH_BOUND})"
        );
        assert!(growth < GROWTH_BOUND, "{how:?}: memory grew by {growth} bytes over 10,000 open/close cycles");

        // The tables are empty: exactly one connection fits again.
        let one = within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new()))
            .await
            .expect("the table must be empty after the cycles");
        let two = within("open", client.handle.open_connection(ConnectionSettings::default(), Metadata::new())).await;
        assert!(matches!(two, Err(SessionError::TooManyConnections { limit: 1 })), "{two:?}");
        drop(one);
        assert_eq!(client.handle.close_reason(), None);
        assert_eq!(server.handle.close_reason(), None);
    });
}

#[test]
fn session_memory_open_close_connection_cycles_leave_table_empty_and_memory_flat() {
    open_close_cycles_leave_table_empty_and_memory_flat(Release::CloseConnection);
}

#[test]
fn session_memory_open_drop_handle_cycles_leave_table_empty_and_memory_flat() {
    open_close_cycles_leave_table_empty_and_memory_flat(Release::DropHandle);
}

/// 64 tasks each run `per_task` open/close cycles at once.
async fn hammer(client: &Session, tasks: usize, per_task: usize) {
    let mut joins = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let handle = client.handle.clone();
        joins.push(tokio::spawn(async move {
            for i in 0..per_task {
                let conn = handle
                    .open_connection(ConnectionSettings::default(), Metadata::new())
                    .await
                    .unwrap_or_else(|e| panic!("task {t} cycle {i}: {e}"));
                handle.close_connection(conn.id, Metadata::new()).await.unwrap();
            }
        }));
    }
    for j in joins {
        within("hammer task", j).await.expect("task");
    }
}

#[test]
fn session_mailbox_concurrent_open_close_never_exceeds_capacity_and_reaches_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One thread: the 64 tasks all run before the run loop gets the thread
    // back, so the queue fills to its capacity and the rest must wait.
    current_thread().block_on(async {
        let (_server, client) = memory_sessions(server_builder(), SessionBuilder::new()).await;
        hammer(&client, 64, 50).await;
        let (high, cap) = (client.handle.mailbox_high_water(), client.handle.mailbox_capacity());
        println!("current-thread: mailbox high water {high} of capacity {cap}");
        assert!(high <= cap, "mailbox queue held {high} > capacity {cap}");
        assert_eq!(high, cap, "64 concurrent openers while the run loop is busy must fill the queue");
        assert_eq!(client.handle.close_reason(), None);
    });
}

#[test]
fn session_mailbox_concurrent_open_close_never_exceeds_capacity_multi_thread() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut client_builder = SessionBuilder::new();
        client_builder.config_mut().mailbox_capacity = 4;
        let (_server, client) = memory_sessions(server_builder(), client_builder).await;
        hammer(&client, 64, 50).await;
        let (high, cap) = (client.handle.mailbox_high_water(), client.handle.mailbox_capacity());
        println!("multi-thread: mailbox high water {high} of capacity {cap}");
        assert_eq!(cap, 4);
        assert!(high <= cap, "mailbox queue held {high} > capacity {cap}");
        assert!(high >= 1);
        assert_eq!(client.handle.close_reason(), None);
    });
}
