//! The vox-core side: a bench service served by a `driver::Handler` closure,
//! session pairs over the memory link and TCP loopback, and the workloads.

use crate::BenchError;
use bytes::Bytes;
use serde::{Serialize, Serializer};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use vox_core::driver::{Call, Handler, Rx, channel};
use vox_core::link::{self, LinkConfig};
use vox_core::session::{AcceptDecision, Caller, ConnectionRequest, Session, SessionBuilder};
use vox_core::wire::{Blob, ConnectionSettings, Metadata, MethodId};

/// The bench service's method ids, hashed once (hashing names per call
/// would put blake3 into every measured call).
pub struct Methods {
    echo: MethodId,
    generate: MethodId,
    sum: MethodId,
    hold: MethodId,
}

static METHODS: LazyLock<Methods> = LazyLock::new(|| {
    let m = |name| MethodId::from_names("Bench", name);
    Methods { echo: m("echo"), generate: m("generate"), sum: m("sum"), hold: m("hold") }
});

/// Initial credit of the channels the client creates (0: vox-core's default).
static CREDIT: AtomicU32 = AtomicU32::new(0);

/// Sets the initial credit of stream channels (`--credit`); 0 keeps the default.
pub fn set_credit(credit: u32) {
    CREDIT.store(credit, Ordering::Relaxed);
}

fn stream_channel() -> (vox_core::driver::Tx<u64>, Rx<u64>) {
    match CREDIT.load(Ordering::Relaxed) {
        0 => channel::<u64>(),
        c => vox_core::driver::channel_with_credit::<u64>(c),
    }
}

/// Serializes a byte slice as one postcard byte string (length + bytes).
pub struct BufRef<'a>(pub &'a [u8]);

impl Serialize for BufRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Receivers parked by `hold` calls, so their channels stay open and idle.
pub type Held = Arc<Mutex<Vec<Rx<u64>>>>;

/// The bench service:
/// - `echo(bytes) -> bytes`: answers with the argument bytes as they came;
/// - `generate(n, Tx<u64>)`: streams `0..n` to the caller;
/// - `sum(n, Rx<u64>) -> u64`: counts what the caller streams;
/// - `hold(Rx<u64>)`: parks the receiver and returns, leaving the channel open.
pub fn handler(held: Held) -> impl Handler + Clone {
    move |mut call: Call| {
        let held = held.clone();
        async move {
            let m = call.method_id;
            let ids = &*METHODS;
            if m == ids.echo {
                let Call { args, reply, .. } = call;
                reply.ok_raw(args);
            } else if m == ids.generate {
                let (n, mut tx) = match (call.decode_args::<u64>(), call.channels.tx::<u64>(0)) {
                    (Ok(n), Ok(tx)) => (n, tx),
                    _ => return call.reply.invalid_payload("expected (u64, Tx<u64>)"),
                };
                for i in 0..n {
                    if tx.send(&i).await.is_err() {
                        break;
                    }
                }
                let _ = tx.close().await;
                call.reply.ok(&());
            } else if m == ids.sum {
                let mut rx = match call.channels.rx::<u64>(0) {
                    Ok(rx) => rx,
                    Err(e) => return call.reply.invalid_payload(e),
                };
                let mut count: u64 = 0;
                while let Ok(Some(_)) = rx.recv().await {
                    count += 1;
                }
                call.reply.ok(&count);
            } else if m == ids.hold {
                match call.channels.rx::<u64>(0) {
                    Ok(rx) => {
                        held.lock().unwrap_or_else(|e| e.into_inner()).push(rx);
                        call.reply.ok(&());
                    }
                    Err(e) => call.reply.invalid_payload(e),
                }
            } else {
                call.reply.unknown_method();
            }
        }
    }
}

/// A server builder serving the bench service on the root connection and on
/// every virtual connection; `max_channels` per connection on both.
pub fn server_builder(held: Held, max_channels: usize) -> SessionBuilder {
    let h = handler(held);
    let mut b =
        SessionBuilder::new().handler(h.clone()).acceptor(move |_req: &ConnectionRequest| AcceptDecision::Accept {
            settings: ConnectionSettings::default(),
            metadata: Metadata::new(),
            handler: Some(Arc::new(h.clone())),
        });
    b.config_mut().max_channels_per_connection = max_channels;
    b
}

/// A client builder allowing `max_channels` per connection.
pub fn client_builder(max_channels: usize) -> SessionBuilder {
    let mut b = SessionBuilder::new();
    b.config_mut().max_channels_per_connection = max_channels;
    b
}

/// Which transport a session pair uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `vox_core::link::memory_pair` (vox) / `tokio::io::duplex` (baseline).
    Memory,
    /// TCP loopback.
    Tcp,
}

impl Transport {
    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Memory => "memory",
            Transport::Tcp => "tcp",
        }
    }
}

/// A server and a client session.
pub struct Pair {
    /// The serving side; only kept alive.
    #[allow(dead_code)]
    pub server: Session,
    /// The calling side.
    pub client: Session,
}

/// Establishes a session pair over `transport`.
pub async fn pair(transport: Transport, server: SessionBuilder, client: SessionBuilder) -> Result<Pair, BenchError> {
    let (s, c) = match transport {
        Transport::Memory => {
            let (a, b) = link::memory_pair(LinkConfig::default());
            tokio::join!(server.establish_acceptor(a), client.establish_initiator(b))
        }
        Transport::Tcp => {
            let listener = server.listen("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::join!(listener.accept(), client.connect(addr))
        }
    };
    Ok(Pair { server: s?, client: c? })
}

async fn echo(caller: &Caller, payload: &[u8]) -> Result<(), BenchError> {
    // `Blob` is vox's zero-copy byte string: the returned bytes share the
    // received message's buffer instead of being copied out of it.
    let back: Blob = caller.call(METHODS.echo, &BufRef(payload), vec![]).await?;
    if back.len() != payload.len() {
        return Err(BenchError::Check("vox echo has the wrong length"));
    }
    Ok(())
}

/// `n` sequential echoes of `payload`; each round-trip time in µs.
pub async fn sequential(caller: &Caller, payload: &[u8], n: usize) -> Result<Vec<f64>, BenchError> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        echo(caller, payload).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(lat)
}

/// `n` sequential echoes of `payload` through `Caller::call_raw`: the
/// payload is shared, not encoded, and the reply is the received bytes (the
/// zero-copy way to move bulk bytes); each round-trip time in µs.
pub async fn sequential_bytes(caller: &Caller, payload: &Bytes, n: usize) -> Result<Vec<f64>, BenchError> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let back = caller.call_raw(METHODS.echo, payload.clone(), vec![], Metadata::new()).await?;
        if back.ret.len() != payload.len() {
            return Err(BenchError::Check("vox echo has the wrong length"));
        }
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(lat)
}

/// `total` echoes of `payload` from `in_flight` concurrent tasks on one caller.
pub async fn pipelined(
    caller: &Caller,
    payload: &[u8],
    total: usize,
    in_flight: usize,
) -> Result<Duration, BenchError> {
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(in_flight);
    for k in 0..in_flight {
        let caller = caller.clone();
        let payload = payload.to_vec();
        let n = total / in_flight + usize::from(k < total % in_flight);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                echo(&caller, &payload).await?;
            }
            Ok::<_, BenchError>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|_| BenchError::Check("a pipelined task panicked"))??;
    }
    Ok(t.elapsed())
}

/// The server streams `n` items to the client.
pub async fn stream_down(caller: &Caller, n: u64) -> Result<Duration, BenchError> {
    let t = Instant::now();
    let (tx, mut rx) = stream_channel();
    let arg = tx.into_arg().ok_or(BenchError::Check("unbound Tx"))?;
    let call = caller.call::<u64, ()>(METHODS.generate, &n, vec![arg]);
    let collect = async move {
        let mut expected = 0u64;
        while let Some(i) = rx.recv().await? {
            if i != expected {
                return Err(BenchError::Check("vox stream: wrong item"));
            }
            expected += 1;
        }
        Ok(expected)
    };
    let (done, got) = tokio::join!(call, collect);
    done?;
    if got? != n {
        return Err(BenchError::Check("vox stream: wrong count"));
    }
    Ok(t.elapsed())
}

/// The client streams `n` items to the server.
pub async fn stream_up(caller: &Caller, n: u64) -> Result<Duration, BenchError> {
    let t = Instant::now();
    let (mut tx, rx) = stream_channel();
    let arg = rx.into_arg().ok_or(BenchError::Check("unbound Rx"))?;
    let call = caller.call::<u64, u64>(METHODS.sum, &n, vec![arg]);
    let feed = async move {
        for i in 0..n {
            tx.send(&i).await?;
        }
        tx.close().await?;
        Ok::<_, BenchError>(())
    };
    let (count, fed) = tokio::join!(call, feed);
    fed?;
    if count? != n {
        return Err(BenchError::Check("vox sink: wrong count"));
    }
    Ok(t.elapsed())
}

/// Opens one channel on `caller`'s connection and leaves it idle: the
/// server parks the receiver, the returned sender is kept by the caller.
pub async fn hold_channel(caller: &Caller) -> Result<vox_core::driver::Tx<u64>, BenchError> {
    let (tx, rx) = channel::<u64>();
    let arg = rx.into_arg().ok_or(BenchError::Check("unbound Rx"))?;
    caller.call::<(), ()>(METHODS.hold, &(), vec![arg]).await?;
    Ok(tx)
}

/// One echo, to make sure the server handled everything sent before.
pub async fn settle(caller: &Caller) -> Result<(), BenchError> {
    echo(caller, b"settle").await
}
