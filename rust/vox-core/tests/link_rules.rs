//! Link rules (`PROTOCOL.md` §2), checked on every kind of link: in-memory,
//! a stream link over `tokio::io::duplex`, TCP loopback and a Unix socket.

use bytes::Bytes;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::time::timeout;
use vox_core::link::{
    DEFAULT_MAX_MESSAGE_SIZE, Link, LinkConfig, LinkError, LinkRx, LinkTx, connect_tcp, memory_pair, stream, tcp,
};

/// With the clock paused, a timeout only fires once no task can make
/// progress, so this bound detects a send that is truly stuck, without
/// depending on how fast the machine is.
const STUCK: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Duplex,
    Tcp,
    #[cfg(unix)]
    Unix,
}

async fn pair(kind: Kind, config: LinkConfig) -> (Link, Link) {
    match kind {
        Kind::Memory => memory_pair(config),
        Kind::Duplex => {
            let (a, b) = tokio::io::duplex(64 * 1024);
            (duplex_link(a, config.clone()), duplex_link(b, config))
        }
        Kind::Tcp => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (client, accepted) = tokio::join!(connect_tcp(addr, config.clone()), listener.accept());
            (client.unwrap(), tcp(accepted.unwrap().0, config))
        }
        #[cfg(unix)]
        Kind::Unix => {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "vox-link-test-{}-{}.sock",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let (client, accepted) =
                tokio::join!(vox_core::link::connect_unix(&path, config.clone()), listener.accept());
            // Connected sockets do not need the name any more.
            std::fs::remove_file(&path).unwrap();
            (client.unwrap(), vox_core::link::unix(accepted.unwrap().0, config))
        }
    }
}

fn duplex_link(end: DuplexStream, config: LinkConfig) -> Link {
    let (reader, writer) = tokio::io::split(end);
    stream(reader, writer, config)
}

/// A stream link on one end of a duplex, with the raw other end to write or
/// inspect frames by hand.
fn raw_duplex(config: LinkConfig, buffer: usize) -> (Link, DuplexStream) {
    let (raw, end) = tokio::io::duplex(buffer);
    (duplex_link(end, config), raw)
}

fn config(max_message_size: usize, send_queue: usize) -> LinkConfig {
    LinkConfig { max_message_size, send_queue, ..LinkConfig::default() }
}

/// A message that says which one it is, so reordering, loss and duplication
/// all show up; every 97th is large enough to span many reads.
fn numbered(i: usize) -> Bytes {
    let mut msg = format!("message {i};").into_bytes();
    let repeat = if i % 97 == 0 { 10_000 } else { i % 7 };
    let tail = msg.repeat(repeat);
    msg.extend_from_slice(&tail);
    Bytes::from(msg)
}

async fn recv_msg(rx: &mut LinkRx) -> Bytes {
    rx.recv().await.unwrap().expect("unexpected end of stream")
}

/// Polls a future exactly once.
fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> impl Future<Output = Poll<F::Output>> {
    let mut fut = Some(fut);
    std::future::poll_fn(move |cx: &mut Context<'_>| match fut.take() {
        Some(fut) => Poll::Ready(fut.poll(cx)),
        None => unreachable!("polled after completion"),
    })
}

/// Sends numbered messages until a send cannot complete; returns how many
/// were sent. The stuck send is dropped.
async fn fill_until_stuck(tx: &LinkTx, limit: usize) -> usize {
    for i in 0..limit {
        if timeout(STUCK, tx.send(numbered(i))).await.is_err() {
            return i;
        }
    }
    panic!("{limit} sends never waited: the send queue is not bounded");
}

// ---------------------------------------------------------------- link.order

async fn check_order(kind: Kind) {
    const COUNT: usize = 2000;
    let (a, b) = pair(kind, LinkConfig::default()).await;
    let (a_tx, _a_rx) = a.split();
    let (_b_tx, mut b_rx) = b.split();
    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            a_tx.send(numbered(i)).await.unwrap();
        }
        a_tx.close().await.unwrap();
    });
    for i in 0..COUNT {
        assert_eq!(recv_msg(&mut b_rx).await, numbered(i), "message {i} on {kind:?}");
    }
    assert_eq!(b_rx.recv().await.unwrap(), None, "nothing after the last message on {kind:?}");
    sender.await.unwrap();
}

#[tokio::test]
async fn link_order_memory() {
    check_order(Kind::Memory).await;
}

#[tokio::test]
async fn link_order_duplex() {
    check_order(Kind::Duplex).await;
}

#[tokio::test]
async fn link_order_tcp() {
    check_order(Kind::Tcp).await;
}

#[cfg(unix)]
#[tokio::test]
async fn link_order_unix() {
    check_order(Kind::Unix).await;
}

// -------------------------------------------------------------- link.message

async fn check_empty_messages(kind: Kind) {
    let sequence: [&[u8]; 7] = [b"", b"a", b"", b"", b"bc", b"\0\0\0\0", b""];
    let (a, mut b) = pair(kind, LinkConfig::default()).await;
    for msg in sequence {
        a.tx.send(Bytes::from_static(msg)).await.unwrap();
    }
    a.tx.close().await.unwrap();
    for (i, msg) in sequence.iter().enumerate() {
        assert_eq!(&recv_msg(&mut b.rx).await[..], *msg, "message {i} on {kind:?}");
    }
    assert_eq!(b.rx.recv().await.unwrap(), None, "on {kind:?}");
}

#[tokio::test]
async fn link_message_empty_messages_memory() {
    check_empty_messages(Kind::Memory).await;
}

#[tokio::test]
async fn link_message_empty_messages_duplex() {
    check_empty_messages(Kind::Duplex).await;
}

#[tokio::test]
async fn link_message_empty_messages_tcp() {
    check_empty_messages(Kind::Tcp).await;
}

#[cfg(unix)]
#[tokio::test]
async fn link_message_empty_messages_unix() {
    check_empty_messages(Kind::Unix).await;
}

// ------------------------------------------------------------ link.tx.max-size

async fn check_max_size_at_send(kind: Kind) {
    let (a, mut b) = pair(kind, config(16, 4)).await;
    assert_eq!(a.tx.max_message_size(), 16);
    assert_eq!(b.rx.max_message_size(), 16);
    match a.tx.send(Bytes::from(vec![1; 17])).await {
        Err(LinkError::TooLarge { size: 17, max: 16 }) => {}
        other => panic!("expected TooLarge on {kind:?}, got {other:?}"),
    }
    // The refusal leaves the link usable, and exactly the maximum passes.
    a.tx.send(Bytes::from(vec![2; 16])).await.unwrap();
    a.tx.close().await.unwrap();
    assert_eq!(recv_msg(&mut b.rx).await, vec![2; 16], "on {kind:?}");
    assert_eq!(b.rx.recv().await.unwrap(), None, "the refused message must not arrive on {kind:?}");
}

#[tokio::test]
async fn link_tx_max_size_rejected_at_send_memory() {
    check_max_size_at_send(Kind::Memory).await;
}

#[tokio::test]
async fn link_tx_max_size_rejected_at_send_duplex() {
    check_max_size_at_send(Kind::Duplex).await;
}

#[tokio::test]
async fn link_tx_max_size_rejected_at_send_tcp() {
    check_max_size_at_send(Kind::Tcp).await;
}

#[cfg(unix)]
#[tokio::test]
async fn link_tx_max_size_rejected_at_send_unix() {
    check_max_size_at_send(Kind::Unix).await;
}

#[tokio::test]
async fn link_tx_max_size_is_capped_by_the_32_bit_prefix() {
    let (link, _raw) = raw_duplex(config(usize::MAX, 4), 64);
    assert_eq!(link.tx.max_message_size(), u32::MAX as usize);
    assert_eq!(link.rx.max_message_size(), u32::MAX as usize);
    let (memory, _) = memory_pair(config(usize::MAX, 4));
    assert_eq!(memory.tx.max_message_size(), usize::MAX);
}

#[tokio::test]
async fn link_rx_max_size_is_error_without_allocating() {
    let (mut link, mut raw) = raw_duplex(LinkConfig::default(), 1024);
    // 4 GiB - 1 announced; a receiver that allocated it first would need 4 GiB.
    raw.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    raw.write_all(b"some body bytes").await.unwrap();
    match link.rx.recv().await {
        Err(LinkError::TooLarge { size, max }) => {
            assert_eq!(size, u32::MAX as usize);
            assert_eq!(max, DEFAULT_MAX_MESSAGE_SIZE);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // rule: link.rx.error — nothing more is read, even a valid frame.
    raw.write_all(&[1, 0, 0, 0, b'x']).await.unwrap();
    assert!(matches!(link.rx.recv().await, Err(LinkError::Dead)));
    assert!(matches!(link.rx.recv().await, Err(LinkError::Dead)));
}

#[tokio::test]
async fn link_rx_max_size_boundary_on_stream() {
    let (mut link, mut raw) = raw_duplex(config(8, 4), 1024);
    raw.write_all(&[8, 0, 0, 0]).await.unwrap();
    raw.write_all(b"12345678").await.unwrap();
    raw.write_all(&[9, 0, 0, 0]).await.unwrap();
    assert_eq!(recv_msg(&mut link.rx).await, &b"12345678"[..]);
    assert!(matches!(link.rx.recv().await, Err(LinkError::TooLarge { size: 9, max: 8 })));
    assert!(matches!(link.rx.recv().await, Err(LinkError::Dead)));
}

// ----------------------------------------------------------------- link.rx.eof

async fn check_eof_repeats(kind: Kind) {
    let (a, mut b) = pair(kind, LinkConfig::default()).await;
    a.tx.send(Bytes::from_static(b"last")).await.unwrap();
    a.tx.close().await.unwrap();
    assert_eq!(recv_msg(&mut b.rx).await, &b"last"[..], "on {kind:?}");
    for _ in 0..3 {
        assert_eq!(b.rx.recv().await.unwrap(), None, "on {kind:?}");
    }
    // The other direction is independent and still works.
    b.tx.send(Bytes::from_static(b"reply")).await.unwrap();
    let mut a_rx = a.rx;
    assert_eq!(recv_msg(&mut a_rx).await, &b"reply"[..], "on {kind:?}");
}

#[tokio::test]
async fn link_rx_eof_repeats_memory() {
    check_eof_repeats(Kind::Memory).await;
}

#[tokio::test]
async fn link_rx_eof_repeats_duplex() {
    check_eof_repeats(Kind::Duplex).await;
}

#[tokio::test]
async fn link_rx_eof_repeats_tcp() {
    check_eof_repeats(Kind::Tcp).await;
}

#[cfg(unix)]
#[tokio::test]
async fn link_rx_eof_repeats_unix() {
    check_eof_repeats(Kind::Unix).await;
}

async fn check_eof_after_tx_dropped(kind: Kind) {
    let (a, mut b) = pair(kind, LinkConfig::default()).await;
    for i in 0..10 {
        a.tx.send(numbered(i)).await.unwrap();
    }
    // Dropped rather than closed: what was queued is still delivered.
    drop(a.tx);
    for i in 0..10 {
        assert_eq!(recv_msg(&mut b.rx).await, numbered(i), "on {kind:?}");
    }
    assert_eq!(b.rx.recv().await.unwrap(), None, "on {kind:?}");
    assert_eq!(b.rx.recv().await.unwrap(), None, "on {kind:?}");
}

#[tokio::test]
async fn link_rx_eof_after_tx_dropped_memory() {
    check_eof_after_tx_dropped(Kind::Memory).await;
}

#[tokio::test]
async fn link_rx_eof_after_tx_dropped_duplex() {
    check_eof_after_tx_dropped(Kind::Duplex).await;
}

#[tokio::test]
async fn link_rx_eof_after_tx_dropped_tcp() {
    check_eof_after_tx_dropped(Kind::Tcp).await;
}

// --------------------------------------------------------------- link.rx.error

#[tokio::test]
async fn link_rx_error_link_is_dead() {
    let (mut link, mut raw) = raw_duplex(LinkConfig::default(), 1024);
    raw.write_all(&[2, 0, 0, 0, b'o', b'k']).await.unwrap();
    // A frame announcing 10 bytes, of which only 3 arrive before the end.
    raw.write_all(&[10, 0, 0, 0, b'a', b'b', b'c']).await.unwrap();
    drop(raw);
    assert_eq!(recv_msg(&mut link.rx).await, &b"ok"[..]);
    match link.rx.recv().await {
        Err(LinkError::Truncated { expected: 14, got: 7 }) => {}
        other => panic!("expected Truncated, got {other:?}"),
    }
    for _ in 0..3 {
        assert!(matches!(link.rx.recv().await, Err(LinkError::Dead)));
    }
}

#[tokio::test]
async fn link_rx_error_truncated_prefix_is_dead() {
    let (mut link, mut raw) = raw_duplex(LinkConfig::default(), 1024);
    raw.write_all(&[1, 0]).await.unwrap();
    drop(raw);
    assert!(matches!(link.rx.recv().await, Err(LinkError::Truncated { expected: 4, got: 2 })));
    assert!(matches!(link.rx.recv().await, Err(LinkError::Dead)));
}

/// A reader whose transport fails.
struct FailingReader;

impl AsyncRead for FailingReader {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer reset")))
    }
}

#[tokio::test]
async fn link_rx_error_io_error_is_reported_then_dead() {
    let mut link = stream(FailingReader, tokio::io::sink(), LinkConfig::default());
    match link.rx.recv().await {
        Err(error @ LinkError::Io { .. }) => {
            let text = error.to_string();
            assert!(text.contains("reading") && text.contains("peer reset"), "unhelpful error: {text}");
        }
        other => panic!("expected an i/o error, got {other:?}"),
    }
    assert!(matches!(link.rx.recv().await, Err(LinkError::Dead)));
}

// ------------------------------------------------------- link.tx.backpressure

/// Sends until a send cannot complete while the peer does not read, then
/// starts reading and checks the waiting send completes and nothing was lost.
/// Returns how many sends completed before one had to wait.
async fn check_backpressure(kind: Kind, config: LinkConfig, size: usize, limit: usize, stuck: Duration) -> usize {
    let (a, mut b) = pair(kind, config).await;
    let msg = |i: usize| {
        let mut body = vec![0u8; size];
        body[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Bytes::from(body)
    };
    for sent in 0..limit {
        let mut send = pin!(a.tx.send(msg(sent)));
        if timeout(stuck, send.as_mut()).await.is_ok() {
            continue;
        }
        // Stuck: the peer reading must be what lets it through.
        let reader = async {
            for i in 0..=sent {
                assert_eq!(recv_msg(&mut b.rx).await, msg(i), "message {i} on {kind:?}");
            }
        };
        let (result, ()) = tokio::join!(send, reader);
        result.unwrap();
        eprintln!("{kind:?}: {sent} sends completed before one waited");
        return sent;
    }
    panic!("{limit} messages of {size} bytes sent on {kind:?} without ever waiting: unbounded buffering");
}

#[tokio::test(start_paused = true)]
async fn link_tx_backpressure_when_peer_does_not_read_memory() {
    let sent = check_backpressure(Kind::Memory, config(1024, 4), 64, 1000, STUCK).await;
    assert_eq!(sent, 4, "a memory link queues exactly send_queue messages");
}

#[tokio::test(start_paused = true)]
async fn link_tx_backpressure_when_peer_does_not_read_duplex() {
    // 1 KiB messages against a 64 KiB duplex buffer, a 64 KiB writer buffer
    // and a queue of 4: a bounded link waits long before 1000 messages.
    let sent = check_backpressure(Kind::Duplex, config(4096, 4), 1024, 1000, STUCK).await;
    assert!(sent >= 4, "waited with room in the queue after {sent} messages");
    // Duplex buffer + writer buffer + queue, with slack for one batch in flight.
    assert!(sent <= 64 + 64 + 2 * 4 + 2, "{sent} messages buffered before waiting");
}

#[tokio::test]
async fn link_tx_backpressure_when_peer_does_not_read_tcp() {
    // Real time here (the kernel moves the bytes): a send that looks stuck
    // only because the machine is slow still passes, since the test then
    // reads everything; only a link that never waits fails. 64 MiB is far
    // beyond what loopback socket buffers hold.
    let sent = check_backpressure(Kind::Tcp, config(1 << 20, 4), 64 * 1024, 1024, Duration::from_millis(500)).await;
    assert!(sent >= 4, "waited with room in the queue after {sent} messages");
}

// ------------------------------------------------------ link.tx.cancel-safe

async fn check_cancel_safe(kind: Kind) {
    const QUEUE: usize = 4;
    let (a, mut b) = pair(kind, config(1 << 20, QUEUE)).await;
    // The send that got stuck is dropped inside `fill_until_stuck`.
    let sent = fill_until_stuck(&a.tx, 100_000).await;
    // And one more, dropped after it has started waiting.
    {
        let mut send = Box::pin(a.tx.send(Bytes::from_static(b"dropped")));
        assert!(poll_once(send.as_mut()).await.is_pending(), "the queue should be full on {kind:?}");
    }
    for i in 0..sent {
        assert_eq!(recv_msg(&mut b.rx).await, numbered(i), "message {i} on {kind:?}");
    }
    // No capacity leaked: a full queue's worth goes through without waiting.
    for i in 0..QUEUE {
        let after = Bytes::from(format!("after {i}"));
        timeout(STUCK, a.tx.send(after)).await.expect("capacity leaked by dropped sends").unwrap();
    }
    a.tx.close().await.unwrap();
    for i in 0..QUEUE {
        assert_eq!(recv_msg(&mut b.rx).await, format!("after {i}").as_bytes(), "on {kind:?}");
    }
    assert_eq!(b.rx.recv().await.unwrap(), None, "a dropped send was published on {kind:?}");
}

#[tokio::test(start_paused = true)]
async fn link_tx_cancel_safe_dropped_send_publishes_nothing_memory() {
    check_cancel_safe(Kind::Memory).await;
}

#[tokio::test(start_paused = true)]
async fn link_tx_cancel_safe_dropped_send_publishes_nothing_duplex() {
    check_cancel_safe(Kind::Duplex).await;
}

#[tokio::test(start_paused = true)]
async fn link_rx_recv_is_cancel_safe_mid_frame() {
    // No frame deadline: the paused clock jumps past it while the frame
    // waits for its second half (`frame_timeout` has its own tests).
    let (mut link, mut raw) = raw_duplex(LinkConfig { frame_timeout: None, ..LinkConfig::default() }, 1024);
    raw.write_all(&[6, 0, 0, 0, b'h', b'e']).await.unwrap();
    tokio::select! {
        result = link.rx.recv() => panic!("half a frame was returned: {result:?}"),
        () = tokio::time::sleep(STUCK) => {}
    }
    raw.write_all(b"llo!").await.unwrap();
    assert_eq!(recv_msg(&mut link.rx).await, &b"hello!"[..]);
}

#[tokio::test]
async fn link_tx_closed_when_memory_peer_is_gone() {
    let (a, b) = memory_pair(LinkConfig::default());
    drop(b);
    assert!(matches!(a.tx.send(Bytes::from_static(b"x")).await, Err(LinkError::Closed)));
}

#[tokio::test]
async fn link_tx_closed_when_stream_write_fails() {
    let (link, raw) = raw_duplex(LinkConfig::default(), 64);
    drop(raw);
    let mut closed = false;
    for _ in 0..1000 {
        match link.tx.send(Bytes::from_static(b"into the void")).await {
            Ok(()) => tokio::task::yield_now().await,
            Err(LinkError::Closed) => {
                closed = true;
                break;
            }
            Err(other) => panic!("expected Closed, got {other:?}"),
        }
    }
    assert!(closed, "sends kept succeeding after the transport failed");
    assert!(matches!(link.tx.close().await, Err(LinkError::Io { .. })));
}

// ------------------------------------------------------------------ link.split

fn assert_send_static<T: Send + 'static>() {}

async fn check_split(kind: Kind) {
    const COUNT: usize = 500;
    assert_send_static::<LinkTx>();
    assert_send_static::<LinkRx>();
    let (a, b) = pair(kind, LinkConfig::default()).await;
    let (a_tx, a_rx) = a.split();
    let (b_tx, b_rx) = b.split();
    let sender = |tx: LinkTx, offset: usize| {
        tokio::spawn(async move {
            for i in 0..COUNT {
                tx.send(numbered(offset + i)).await.unwrap();
            }
            tx.close().await.unwrap();
        })
    };
    let receiver = |mut rx: LinkRx| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(msg) = rx.recv().await.unwrap() {
                got.push(msg);
            }
            got
        })
    };
    let senders = [sender(a_tx, 0), sender(b_tx, COUNT)];
    let (at_b, at_a) = (receiver(b_rx), receiver(a_rx));
    for task in senders {
        task.await.unwrap();
    }
    assert_eq!(at_b.await.unwrap(), (0..COUNT).map(numbered).collect::<Vec<_>>(), "a to b on {kind:?}");
    assert_eq!(at_a.await.unwrap(), (COUNT..2 * COUNT).map(numbered).collect::<Vec<_>>(), "b to a on {kind:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_split_halves_move_to_different_tasks_memory() {
    check_split(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_split_halves_move_to_different_tasks_tcp() {
    check_split(Kind::Tcp).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_split_halves_move_to_different_tasks_unix() {
    check_split(Kind::Unix).await;
}

// ----------------------------------------------------------- transport.stream

#[tokio::test]
async fn transport_stream_length_prefix_is_32_bit_little_endian() {
    let (mut link, mut raw) = raw_duplex(LinkConfig::default(), 4096);
    link.tx.send(Bytes::from_static(b"abc")).await.unwrap();
    link.tx.send(Bytes::from(vec![7; 300])).await.unwrap();
    link.tx.send(Bytes::new()).await.unwrap();
    link.tx.close().await.unwrap();
    let mut written = Vec::new();
    raw.read_to_end(&mut written).await.unwrap();
    let mut expected = vec![3, 0, 0, 0, b'a', b'b', b'c', 0x2c, 0x01, 0, 0];
    expected.extend_from_slice(&[7; 300]);
    expected.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(written, expected);

    // And the reading side decodes the same layout.
    raw.write_all(&[2, 0, 0, 0, b'h', b'i', 0x00, 0x01, 0, 0]).await.unwrap();
    raw.write_all(&[9; 256]).await.unwrap();
    drop(raw);
    assert_eq!(recv_msg(&mut link.rx).await, &b"hi"[..]);
    assert_eq!(recv_msg(&mut link.rx).await, vec![9; 256]);
    assert_eq!(link.rx.recv().await.unwrap(), None);
}

#[cfg(unix)]
#[tokio::test]
async fn transport_stream_connect_failure_says_where() {
    let missing = std::env::temp_dir().join(format!("vox-link-test-missing-{}.sock", std::process::id()));
    match vox_core::link::connect_unix(&missing, LinkConfig::default()).await {
        Err(error @ LinkError::Io { .. }) => {
            assert!(error.to_string().contains(&*missing.to_string_lossy()), "no path in: {error}");
        }
        Err(other) => panic!("expected an i/o error, got {other}"),
        Ok(_) => panic!("connected to a socket that does not exist"),
    }
}

// ---------------------------------------------------------- transport.memory

#[tokio::test]
async fn transport_memory_pair_is_connected_both_ways() {
    let (a, b) = memory_pair(LinkConfig::default());
    let (mut a, mut b) = (a, b);
    a.tx.send(Bytes::from_static(b"ping")).await.unwrap();
    b.tx.send(Bytes::from_static(b"pong")).await.unwrap();
    assert_eq!(recv_msg(&mut b.rx).await, &b"ping"[..]);
    assert_eq!(recv_msg(&mut a.rx).await, &b"pong"[..]);
}
