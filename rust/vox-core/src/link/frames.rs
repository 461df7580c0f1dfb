//! Writing length-prefixed frames in batches.
//!
//! A [`FrameWriter`] owns the write half of a byte stream. Frames pushed
//! into it accumulate in memory and go out together in [`flush`]
//! (FrameWriter::flush), with vectored writes: a batch of many frames costs
//! about one system call. The stream link's own writer task uses it, and so
//! does the session writer once it has taken the stream over
//! ([`LinkTx::into_sink`](super::LinkTx::into_sink)), which is what keeps a
//! message to one task hop between its sender and the socket.

use super::LinkError;
use crate::wire::Spliced;
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Size of the length prefix in front of every frame.
pub(super) const PREFIX_LEN: usize = 4;

/// The largest length a prefix can announce.
pub(super) const MAX_FRAME_LEN: usize = u32::MAX as usize;

/// Bytes a writer gathers before it flushes, so a busy sender cannot
/// postpone the flush forever (and a batch's memory stays bounded).
pub const BATCH_BYTES: usize = 256 * 1024;

/// Frames smaller than this are copied into the batch's contiguous buffer;
/// larger ones are written from their own storage (the same limit as for
/// the payloads of encoded messages, [`crate::wire::SPLICE_MIN`]).
const COPY_LIMIT: usize = crate::wire::SPLICE_MIN;

/// The most slices handed to one vectored write (Linux accepts 1024).
const MAX_IOVECS: usize = 64;

/// The write half of a stream link with a batch of frames not yet written.
///
/// Nothing reaches the stream before [`flush`](FrameWriter::flush); the
/// caller decides how much to gather (up to about [`BATCH_BYTES`]).
pub struct FrameWriter {
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    batch: Batch,
    max_message_size: usize,
}

impl FrameWriter {
    pub(super) fn new(writer: Box<dyn AsyncWrite + Send + Unpin>, max_message_size: usize) -> FrameWriter {
        FrameWriter { writer, batch: Batch::default(), max_message_size: max_message_size.min(MAX_FRAME_LEN) }
    }

    /// Adds one frame carrying `msg`.
    ///
    /// Fails with [`LinkError::TooLarge`] (and adds nothing) if `msg` is
    /// longer than the link allows.
    pub fn push(&mut self, msg: Bytes) -> Result<(), LinkError> {
        // rule: link.tx.max-size
        if msg.len() > self.max_message_size {
            return Err(LinkError::TooLarge { size: msg.len(), max: self.max_message_size });
        }
        self.batch.push(msg);
        Ok(())
    }

    /// Adds one frame whose body `encode` appends to the given buffer, so
    /// the message is encoded straight into the batch without a buffer of
    /// its own.
    ///
    /// If `encode` fails, or what it wrote is longer than the link allows
    /// ([`LinkError::TooLarge`]), nothing is added.
    ///
    /// Payloads ([`Blob`](crate::wire::Blob)s) of at least 4 KiB that
    /// `encode` writes with [`wire::encode_into`](crate::wire::encode_into)
    /// are not copied into the batch: they are written from their own
    /// storage, in their place in the frame (the bytes on the stream are
    /// the same).
    pub fn push_with<E: From<LinkError>>(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.batch.small.len();
        self.batch.small.extend_from_slice(&[0; PREFIX_LEN]);
        let (encoded, spliced) = crate::wire::splicing(|| encode(&mut self.batch.small));
        if let Err(e) = encoded {
            self.batch.small.truncate(start);
            return Err(e);
        }
        let spliced_len: usize = spliced.iter().map(|(_, payload)| payload.len()).sum();
        let len = self.batch.small.len() - start - PREFIX_LEN + spliced_len;
        // rule: link.tx.max-size
        let prefix = match u32::try_from(len) {
            Ok(prefix) if len <= self.max_message_size => prefix,
            _ => {
                self.batch.small.truncate(start);
                return Err(LinkError::TooLarge { size: len, max: self.max_message_size }.into());
            }
        };
        // rule: transport.stream — 32-bit little-endian length, then the bytes.
        self.batch.small[start..start + PREFIX_LEN].copy_from_slice(&prefix.to_le_bytes());
        if !spliced.is_empty() {
            self.batch.splice(spliced);
        }
        self.batch.bytes += PREFIX_LEN + len;
        self.batch.frames += 1;
        Ok(())
    }

    /// Frames added since the last flush.
    pub fn pending_frames(&self) -> usize {
        self.batch.frames
    }

    /// Bytes (prefixes included) added since the last flush.
    pub fn pending_bytes(&self) -> usize {
        self.batch.bytes
    }

    /// Writes every frame added so far and flushes the stream.
    ///
    /// # Cancel safety
    /// Not cancel-safe: a dropped flush may have written part of the batch, and
    /// the pieces it wrote stay in it, so a later flush would write them again.
    /// After a cancelled flush, drop the writer (end the link) instead of
    /// flushing again.
    ///
    /// # Errors
    /// [`LinkError::Io`] when writing to or flushing the stream fails (a stream
    /// that accepts zero bytes counts as failed); the batch is then in an
    /// unknown state and the link is done.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        self.batch.write_to(&mut self.writer).await.map_err(write_error)
    }

    /// Writes what is left, flushes and shuts the write direction down; the
    /// peer then sees end-of-stream after the last frame.
    ///
    /// # Cancel safety
    /// Dropping the future drops the writer and its stream: frames not yet
    /// written are lost and the write direction is not shut down cleanly.
    ///
    /// # Errors
    /// [`LinkError::Io`] when writing, flushing or shutting the stream down
    /// fails.
    pub async fn shutdown(mut self) -> Result<(), LinkError> {
        self.flush().await?;
        // rule: link.rx.eof — the shutdown is what lets the peer see the end.
        self.writer.shutdown().await.map_err(write_error)
    }
}

fn write_error(source: io::Error) -> LinkError {
    LinkError::Io { context: "writing to a stream link", source }
}

/// One batch of frames on its way to the stream: a sequence of pieces, each
/// either a run of small frames copied together or one large message body.
#[derive(Default)]
struct Batch {
    /// Prefixes and small frames, copied.
    small: BytesMut,
    /// The pieces in order: completed runs of `small` and large bodies.
    pieces: Vec<Bytes>,
    /// Bytes in the batch, prefixes included.
    bytes: usize,
    /// Frames in the batch.
    frames: usize,
}

impl Batch {
    /// Adds a frame; the caller checked that its length fits a prefix.
    fn push(&mut self, msg: Bytes) {
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        self.bytes += PREFIX_LEN + msg.len();
        self.frames += 1;
        // rule: transport.stream — 32-bit little-endian length, then the bytes.
        self.small.extend_from_slice(&len.to_le_bytes());
        if msg.len() < COPY_LIMIT {
            self.small.extend_from_slice(&msg);
        } else {
            self.pieces.push(self.small.split().freeze());
            self.pieces.push(msg);
        }
    }

    /// Puts payloads taken by reference ([`crate::wire::splicing`]) in their
    /// places: what `small` holds before each one's position becomes a
    /// piece, then the payload is a piece of its own. The batch's order is
    /// kept: the pieces, then what is left in `small`.
    fn splice(&mut self, spliced: Spliced) {
        let mut split_off = 0;
        for (at, payload) in spliced {
            self.pieces.push(self.small.split_to(at - split_off).freeze());
            split_off = at;
            self.pieces.push(payload);
        }
    }

    /// Writes the whole batch and flushes; leaves the batch empty.
    async fn write_to<W: AsyncWrite + Unpin + ?Sized>(&mut self, writer: &mut W) -> io::Result<()> {
        if !self.small.is_empty() {
            self.pieces.push(self.small.split().freeze());
        }
        let mut first = 0;
        while first < self.pieces.len() {
            let n = {
                let end = self.pieces.len().min(first + MAX_IOVECS);
                let slices: Vec<io::IoSlice<'_>> = self.pieces[first..end]
                    .iter()
                    .filter(|piece| !piece.is_empty())
                    .map(|piece| io::IoSlice::new(piece))
                    .collect();
                if slices.is_empty() {
                    first = end;
                    continue;
                }
                writer.write_vectored(&slices).await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // Drop what was written; keep the rest of a partly written piece.
            let mut left = n;
            while left > 0 {
                let Some(piece) = self.pieces.get_mut(first) else { break };
                if piece.len() <= left {
                    left -= piece.len();
                    first += 1;
                } else {
                    piece.advance(left);
                    left = 0;
                }
            }
        }
        self.pieces.clear();
        self.bytes = 0;
        self.frames = 0;
        writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that takes at most `step` bytes per call, vectored or not,
    /// so every piece boundary gets split somewhere.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.step;
            for buf in bufs {
                let n = buf.len().min(left);
                self.out.extend_from_slice(&buf[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.step - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frames() -> Vec<Bytes> {
        vec![
            Bytes::new(),
            Bytes::from_static(b"small"),
            Bytes::from(vec![7u8; COPY_LIMIT + 3]),
            Bytes::from(vec![9u8; COPY_LIMIT * 2]),
            Bytes::from_static(b"tail"),
        ]
    }

    fn expected() -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames() {
            out.extend_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&frame);
        }
        out
    }

    #[tokio::test]
    async fn a_batch_survives_partial_vectored_writes() {
        for step in [1, 3, 4, 5, 4096, 1 << 20] {
            let mut writer = Trickle { out: Vec::new(), step };
            let mut batch = Batch::default();
            for frame in frames() {
                batch.push(frame);
            }
            batch.write_to(&mut writer).await.expect("write");
            assert_eq!(writer.out, expected(), "step {step}");
            // The batch is reusable and empty afterwards.
            assert_eq!((batch.bytes, batch.frames, batch.pieces.len(), batch.small.len()), (0, 0, 0, 0));
            batch.push(Bytes::from_static(b"again"));
            batch.write_to(&mut writer).await.expect("write");
            assert!(writer.out.ends_with(b"\x05\x00\x00\x00again"), "step {step}");
        }
    }

    /// An encoder that appends `bytes`.
    fn append(bytes: &[u8]) -> impl FnOnce(&mut BytesMut) -> Result<(), LinkError> + '_ {
        move |buf| {
            buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[tokio::test]
    async fn encoded_and_pushed_frames_go_out_in_order_and_refused_ones_leave_nothing() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut writer = FrameWriter::new(Box::new(near), 8);
        writer.push(Bytes::from_static(b"one")).expect("fits");
        writer.push_with(append(b"two")).expect("fits");
        // Too long for the link: refused, and the batch is as before.
        let too_long = writer.push_with(append(&[1; 9]));
        assert!(matches!(too_long, Err(LinkError::TooLarge { size: 9, max: 8 })), "{too_long:?}");
        assert!(matches!(writer.push(Bytes::from(vec![1; 9])), Err(LinkError::TooLarge { size: 9, max: 8 })));
        // An encoder that fails after writing part of its body adds nothing.
        let failed = writer.push_with(|buf| {
            buf.extend_from_slice(b"half");
            Err(LinkError::Closed)
        });
        assert!(matches!(failed, Err(LinkError::Closed)));
        assert_eq!((writer.pending_frames(), writer.pending_bytes()), (2, 14));
        writer.push_with(append(b"three")).expect("fits");
        writer.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"\x03\0\0\0one\x03\0\0\0two\x05\0\0\0three");
    }

    /// A message with payloads of either side of `SPLICE_MIN`, each large
    /// one twice, between two small frames.
    #[allow(clippy::type_complexity)]
    fn spliceable() -> (Bytes, Bytes, (u8, crate::wire::Blob, crate::wire::Blob, crate::wire::Blob, u8)) {
        use crate::wire::{Blob, SPLICE_MIN};
        let big = Bytes::from(vec![5u8; SPLICE_MIN * 3]);
        let under = Bytes::from(vec![6u8; SPLICE_MIN - 1]);
        (big.clone(), under.clone(), (7, Blob::new(big.clone()), Blob::new(under), Blob::new(big), 9))
    }

    #[tokio::test]
    async fn large_payloads_are_written_from_their_own_storage_as_the_same_bytes() {
        use crate::wire;
        use tokio::io::AsyncReadExt;
        let (big, under, value) = spliceable();
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut writer = FrameWriter::new(Box::new(near), usize::MAX);
        writer.push(Bytes::from_static(b"before")).expect("fits");
        writer.push_with(|buf| wire::encode_into("test", &value, buf).map_err(|_| LinkError::Closed)).expect("fits");
        // Both large payloads are pieces sharing the caller's memory; the
        // one under the limit was copied.
        let sharing = |b: &Bytes| writer.batch.pieces.iter().filter(|p| p.as_ptr() == b.as_ptr()).count();
        assert_eq!((sharing(&big), sharing(&under)), (2, 0));
        writer.push_with(append(b"after")).expect("fits");
        let encoded = wire::encode("test", &value).expect("encodes");
        let mut expected = b"\x06\0\0\0before".to_vec();
        expected.extend_from_slice(&u32::try_from(encoded.len()).expect("fits").to_le_bytes());
        expected.extend_from_slice(&encoded);
        expected.extend_from_slice(b"\x05\0\0\0after");
        assert_eq!((writer.pending_frames(), writer.pending_bytes()), (3, expected.len()));
        writer.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_frame_too_long_because_of_its_taken_payloads_is_refused_and_leaves_nothing() {
        use crate::wire;
        let (_, _, value) = spliceable();
        let (near, _far) = tokio::io::duplex(1 << 20);
        let max = wire::SPLICE_MIN * 4;
        let mut writer = FrameWriter::new(Box::new(near), max);
        writer.push(Bytes::from_static(b"kept")).expect("fits");
        let refused = writer.push_with(|buf| wire::encode_into("test", &value, buf).map_err(|_| LinkError::Closed));
        let size = wire::encode("test", &value).expect("encodes").len();
        assert!(
            matches!(refused, Err(LinkError::TooLarge { size: s, max: m }) if s == size && m == max),
            "{refused:?}"
        );
        assert_eq!((writer.pending_frames(), writer.pending_bytes(), writer.batch.pieces.len()), (1, 8, 0));
        assert_eq!(&writer.batch.small[..], b"\x04\0\0\0kept");
    }

    #[test]
    fn payloads_are_copied_outside_a_splicing_encode() {
        use crate::wire;
        let (_, _, value) = spliceable();
        let mut buf = BytesMut::new();
        wire::encode_into("test", &value, &mut buf).expect("encodes");
        assert_eq!(&buf[..], &wire::encode("test", &value).expect("encodes")[..]);
        // And a splicing that ended leaves nothing behind for the next one.
        let ((), taken) = wire::splicing(|| ());
        assert!(taken.is_empty());
        let mut again = BytesMut::new();
        wire::encode_into("test", &value, &mut again).expect("encodes");
        assert_eq!(again, buf);
    }

    #[test]
    fn nested_splicings_keep_their_payloads_apart_and_a_panic_inside_leaves_none() {
        use crate::wire::{self, Blob};
        let (big, _, _) = spliceable();
        let other = Bytes::from(vec![8u8; wire::SPLICE_MIN]);
        let (mut outer_buf, mut inner_buf) = (BytesMut::new(), BytesMut::new());
        // The outer one has taken a payload when the inner one starts.
        let ((at, ((), inner)), outer) = wire::splicing(|| {
            wire::encode_into("outer", &Blob::new(big.clone()), &mut outer_buf).expect("encodes");
            let at = outer_buf.len();
            let inner = wire::splicing(|| {
                wire::encode_into("inner", &Blob::new(other.clone()), &mut inner_buf).expect("encodes")
            });
            wire::encode_into("outer", &Blob::new(big.clone()), &mut outer_buf).expect("encodes");
            (at, inner)
        });
        let ptrs = |t: &wire::Spliced| t.iter().map(|(at, b)| (*at, b.as_ptr())).collect::<Vec<_>>();
        assert_eq!(ptrs(&inner), vec![(inner_buf.len(), other.as_ptr())]);
        assert_eq!(ptrs(&outer), vec![(at, big.as_ptr()), (outer_buf.len(), big.as_ptr())]);
        let panicked = std::panic::catch_unwind(|| {
            wire::splicing(|| {
                let mut buf = BytesMut::new();
                wire::encode_into("lost", &Blob::new(other.clone()), &mut buf).expect("encodes");
                panic!("inside a splicing");
            })
        });
        assert!(panicked.is_err());
        // Nothing is left on: the next encode copies everything.
        let mut buf = BytesMut::new();
        wire::encode_into("after", &Blob::new(big.clone()), &mut buf).expect("encodes");
        assert_eq!(&buf[..], &wire::encode("after", &Blob::new(big)).expect("encodes")[..]);
    }
}
