//! The `stream_link` target: arbitrary bytes, cut into arbitrary chunks, fed
//! to a stream link (`vox_core::link::stream`) through a custom `AsyncRead`;
//! frames are received until end of stream or error and compared with a
//! model of the framing (rule `transport.stream`: a 32-bit little-endian
//! length prefix, then the bytes; rule `link.tx.max-size`: an announced
//! length above the limit is an error before anything is read for it).
//!
//! Input layout: byte 0 configures the link, byte 1 seeds the chunking, the
//! rest is the byte stream.
//! - byte 0, bits 0-2: the link's `max_message_size` (see [`MAX_SIZES`]);
//!   bits 3-5: a lower `restrict` limit, applied before the first receive
//!   (0 = none, see [`RESTRICTS`]); bit 6: the stream ends with an I/O error
//!   instead of a clean end; bit 7: every other read returns `Pending` first.
//! - byte 1: chunk sizes come from a xorshift generator seeded with it; its
//!   low two bits choose how large chunks get (1-3, 1-16, 1-300, 1-70000).

use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use vox_core::link::{self, LinkConfig, LinkError};

/// `max_message_size` choices (byte 0, bits 0-2).
pub const MAX_SIZES: [usize; 8] = [0, 1, 4, 255, 4096, 65_536, 1 << 20, link::DEFAULT_MAX_MESSAGE_SIZE];
/// `restrict` choices (byte 0, bits 3-5); `None` leaves the limit alone.
pub const RESTRICTS: [Option<usize>; 8] = [None, Some(0), Some(3), Some(16), Some(100), Some(1024), Some(65_536), None];
const CHUNK_CAPS: [usize; 4] = [3, 16, 300, 70_000];

/// Reads `data` in chunks, then ends cleanly or with an error.
struct Chunked {
    data: Bytes,
    pos: usize,
    rng: u32,
    cap: usize,
    pending_every_other: bool,
    owe_pending: bool,
    end_with_error: bool,
}

impl Chunked {
    fn next_chunk(&mut self) -> usize {
        // xorshift32; never zero because the seed is made odd.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        1 + (x as usize) % self.cap
    }
}

impl AsyncRead for Chunked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending_every_other {
            this.owe_pending = !this.owe_pending;
            if this.owe_pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        if this.pos == this.data.len() {
            return if this.end_with_error {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "fuzz: stream reset")))
            } else {
                Poll::Ready(Ok(()))
            };
        }
        let n = this.next_chunk().min(this.data.len() - this.pos).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// What the model expects after the frames.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// A clean end between frames.
    Eof,
    /// The stream failed (the reader's I/O error).
    Io,
    /// The stream ended inside a frame.
    Truncated { expected: usize, got: usize },
    /// A frame announced more than the limit.
    TooLarge { size: usize, max: usize },
}

/// The framing, written out plainly.
fn model(data: &[u8], max: usize, end_with_error: bool) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    let mut rest = data;
    loop {
        if rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > max {
                return (frames, End::TooLarge { size: len, max });
            }
            if rest.len() >= 4 + len {
                frames.push(&rest[4..4 + len]);
                rest = &rest[4 + len..];
                continue;
            }
        }
        let end = if end_with_error {
            End::Io
        } else if rest.is_empty() {
            End::Eof
        } else if rest.len() < 4 {
            End::Truncated { expected: 4, got: rest.len() }
        } else {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            End::Truncated { expected: 4 + len, got: rest.len() }
        };
        return (frames, end);
    }
}

/// Most frames one input may produce before the target stops reading (a
/// stream of empty frames is 4 bytes per frame).
const MAX_FRAMES: usize = 100_000;

/// The `stream_link` target.
pub fn run(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (cfg, seed, stream) = (data[0], data[1], &data[2..]);
    let max_message_size = MAX_SIZES[usize::from(cfg & 7)];
    let restrict = RESTRICTS[usize::from((cfg >> 3) & 7)];
    let end_with_error = cfg & 0x40 != 0;
    let pending_every_other = cfg & 0x80 != 0;
    let limit = restrict.map_or(max_message_size, |r| r.min(max_message_size));
    let (expected, expected_end) = model(stream, limit, end_with_error);

    // Paused clock: the link's frame deadline never fires, since the reader
    // below never leaves the runtime idle.
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
    rt.block_on(async {
        let reader = Chunked {
            data: Bytes::copy_from_slice(stream),
            pos: 0,
            rng: (u32::from(seed) * 2 + 0x9e37_79b9) | 1,
            cap: CHUNK_CAPS[usize::from(seed & 3)],
            pending_every_other,
            owe_pending: false,
            end_with_error,
        };
        let config = LinkConfig { max_message_size, ..LinkConfig::default() };
        let mut link = link::stream(reader, tokio::io::sink(), config);
        if let Some(r) = restrict {
            link.rx.restrict(r);
        }
        assert_eq!(link.rx.current_limit(), limit, "restrict() did not set the limit");
        let mut got = 0usize;
        let end = loop {
            match link.rx.recv().await {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= limit, "frame of {} bytes above the limit {limit}", frame.len());
                    let want = expected.get(got).unwrap_or_else(|| {
                        panic!("frame {got} received, but the model has only {} frames", expected.len())
                    });
                    assert_eq!(&frame[..], *want, "frame {got} differs from the model");
                    got += 1;
                    if got >= MAX_FRAMES {
                        return;
                    }
                }
                Ok(None) => break End::Eof,
                Err(LinkError::Io { .. }) => break End::Io,
                Err(LinkError::Truncated { expected, got }) => break End::Truncated { expected, got },
                Err(LinkError::TooLarge { size, max }) => break End::TooLarge { size, max },
                Err(other) => panic!("unexpected link error {other:?}"),
            }
        };
        assert_eq!(got, expected.len(), "received {got} frames, the model has {}", expected.len());
        assert_eq!(end, expected_end, "the stream ended differently from the model");
        // rule: link.rx.eof / link.rx.error — the end is sticky.
        match (end, link.rx.recv().await) {
            (End::Eof, Ok(None)) => {}
            (End::Eof, other) => panic!("recv after end of stream returned {other:?}"),
            (_, Err(LinkError::Dead)) => {}
            (_, other) => panic!("recv after a receive error returned {other:?}, not Dead"),
        }
        drop(link);
    });
}
