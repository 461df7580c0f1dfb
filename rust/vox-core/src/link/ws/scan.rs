//! The bytes under a WebSocket, watched before tungstenite sees them.
//!
//! tungstenite checks one fixed maximum, set when the WebSocket is made,
//! and reserves a frame's whole announced length as soon as it has parsed
//! the header; it does not say when a frame or message has started and not
//! finished. [`Scanned`] reads the frame headers itself as the bytes pass
//! (RFC 6455 §5.2: FIN and opcode, the 7/16/64-bit payload length, the
//! mask) and so:
//!
//! - refuses a data frame, or a fragmented message so far, longer than the
//!   link's limit *now* (lowered to the setup maximum while the peer is
//!   unauthenticated, rule `session.setup.limits`), and a control frame
//!   longer than 125 bytes, before tungstenite reserves anything for it;
//! - fails the read once a frame, or a fragmented message, has started
//!   and not finished within [`LinkConfig::frame_timeout`](crate::link::LinkConfig::frame_timeout)
//!   of its first byte (rule `session.keepalive`: a half-sent message never
//!   holds a link). Between messages nothing is timed; control frames
//!   inside a fragmented message do not restart its clock.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;

/// Where the scanner is in the frame sequence.
#[derive(Debug, Default)]
pub(super) struct FrameScan {
    /// Header bytes of the frame being read (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
    /// Bytes of the data message so far (its frames' payloads).
    message: u64,
    /// A data message started and its final frame has not yet passed.
    in_message: bool,
    /// Bytes that passed since the frame or message in progress started.
    pub(super) got: u64,
    /// Before the first frame: how much of the `\r\n\r\n` that ends the
    /// HTTP upgrade has been seen (`None`: frames from the first byte).
    http: Option<usize>,
}

/// A frame header that breaks the link's limits.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Violation {
    /// A data message longer than the limit in force.
    TooLarge { size: u64, limit: usize },
    /// A control frame longer than 125 bytes.
    ControlTooLong { size: u64 },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::TooLarge { size, limit } => write!(
                f,
                "websocket: a message of at least {size} bytes announced, over the link's limit of {limit} bytes now (the setup maximum until the handshake completes); refused from its frame header"
            ),
            Violation::ControlTooLong { size } => {
                write!(f, "websocket: a control frame of {size} bytes announced (at most {MAX_CONTROL})")
            }
        }
    }
}

impl FrameScan {
    /// A scanner whose stream starts with an HTTP upgrade request or
    /// response: frames start after the blank line that ends its header
    /// (an upgrade has no body), even within the same read.
    pub(super) fn after_http() -> Self {
        FrameScan { http: Some(0), ..FrameScan::default() }
    }

    /// Whether a frame or a fragmented message has started and not finished.
    pub(super) fn in_progress(&self) -> bool {
        self.have > 0 || self.payload_left > 0 || self.in_message
    }

    /// Length of the header whose first `have` bytes are in `header`, once
    /// known (the second byte gives it).
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    /// The header is complete: checks it and starts its payload.
    fn on_header(&mut self, limit: usize) -> Result<(), Violation> {
        let (b0, b1) = (self.header[0], self.header[1]);
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
            n => u64::from(n),
        };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        self.have = 0;
        if opcode >= 8 {
            if len > MAX_CONTROL {
                return Err(Violation::ControlTooLong { size: len });
            }
        } else {
            // A continuation adds to the message; a new data frame starts
            // one (tungstenite refuses the protocol errors themselves).
            let size = if opcode == 0 { self.message.saturating_add(len) } else { len };
            if size > limit as u64 {
                return Err(Violation::TooLarge { size, limit });
            }
            self.message = size;
            self.in_message = !fin;
        }
        self.payload_left = len;
        Ok(())
    }

    /// Passes `bytes` (the next bytes of the stream) through the scanner.
    pub(super) fn feed(&mut self, mut bytes: &[u8], limit: usize) -> Result<(), Violation> {
        while let Some(seen) = self.http {
            let Some((&b, rest)) = bytes.split_first() else { return Ok(()) };
            bytes = rest;
            let expected = b"\r\n\r\n"[seen];
            self.http = match (b == expected, seen) {
                (true, 3) => None,
                (true, n) => Some(n + 1),
                (false, _) => Some(usize::from(b == b'\r')),
            };
        }
        while !bytes.is_empty() {
            if !self.in_progress() {
                self.got = 0;
            }
            if self.payload_left > 0 {
                let n = bytes.len().min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                self.got += n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            self.got += 1;
            bytes = &bytes[1..];
            if self.header_len() == Some(self.have) {
                self.on_header(limit)?;
            }
        }
        if !self.in_message && self.payload_left == 0 && self.have == 0 {
            self.message = 0;
        }
        Ok(())
    }
}

/// A byte stream under a WebSocket, scanned as it is read (see the module
/// docs). Writes pass through untouched.
pub(super) struct Scanned<S> {
    inner: S,
    scan: FrameScan,
    /// The link's limit in force, shared with its `LinkRx`.
    limit: Arc<AtomicUsize>,
    frame_timeout: Option<Duration>,
    /// When the frame or message in progress started.
    started: Option<Instant>,
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S> Scanned<S> {
    /// Scans `inner` from its first byte, frames only when `http` is false,
    /// or after the HTTP upgrade's header when it is true.
    pub(super) fn new(inner: S, http: bool, limit: Arc<AtomicUsize>, frame_timeout: Option<Duration>) -> Self {
        let scan = if http { FrameScan::after_http() } else { FrameScan::default() };
        Scanned { inner, scan, limit, frame_timeout, started: None, stall: None }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Scanned<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                let limit = this.limit.load(Ordering::Relaxed);
                if let Err(v) = this.scan.feed(new, limit) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, v.to_string())));
                }
                if !this.scan.in_progress() {
                    this.started = None;
                } else if this.started.is_none() {
                    this.started = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let (Some(started), Some(timeout)) = (this.started, this.frame_timeout) else {
                    return Poll::Pending;
                };
                let Some(deadline) = started.checked_add(timeout) else { return Poll::Pending };
                let stall = this.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if stall.deadline() != deadline {
                    stall.as_mut().reset(deadline);
                }
                if Instant::now() < deadline && stall.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "websocket message stalled: {} bytes of it arrived and the rest did not within {timeout:?} of the first (LinkConfig::frame_timeout)",
                        this.scan.got
                    ),
                )))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Scanned<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: FIN, opcode, payload length, masked or not.
    fn header(fin: bool, opcode: u8, len: u64, masked: bool) -> Vec<u8> {
        let mut h = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let mask = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => h.push(mask | len as u8),
            126..=0xffff => {
                h.push(mask | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(mask | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    #[test]
    fn ws_scan_is_idle_exactly_between_whole_messages() {
        let mut scan = FrameScan::default();
        let mut frame = header(true, 2, 300, true);
        frame.extend(vec![0u8; 300]);
        // Byte by byte: in progress from the first byte to the last.
        for (i, b) in frame.iter().enumerate() {
            scan.feed(&[*b], 1024).expect("within the limit");
            assert_eq!(scan.in_progress(), i + 1 < frame.len(), "after byte {i}");
        }
        // Two messages in one read: idle after it.
        let mut two = frame.clone();
        two.extend(&frame);
        scan.feed(&two, 1024).expect("ok");
        assert!(!scan.in_progress());
        // An empty message is whole once its header is.
        scan.feed(&header(true, 2, 0, false), 1024).expect("ok");
        assert!(!scan.in_progress());
    }

    #[test]
    fn ws_scan_a_fragmented_message_is_in_progress_across_a_ping_until_its_final_frame() {
        let mut scan = FrameScan::default();
        let mut bytes = header(false, 2, 10, true);
        bytes.extend([0u8; 10]);
        scan.feed(&bytes, 1024).expect("ok");
        assert!(scan.in_progress(), "the message has not ended");
        let mut ping = header(true, 9, 3, true);
        ping.extend([0u8; 3]);
        scan.feed(&ping, 1024).expect("ok");
        assert!(scan.in_progress(), "a ping inside a fragmented message does not end it");
        let mut last = header(true, 0, 5, true);
        last.extend([0u8; 5]);
        scan.feed(&last, 1024).expect("ok");
        assert!(!scan.in_progress());
    }

    #[test]
    fn ws_scan_refuses_a_message_over_the_limit_from_its_header() {
        let mut scan = FrameScan::default();
        // 64-bit length, announced alone.
        let err = scan.feed(&header(true, 2, 1 << 20, true), 65536).expect_err("over the limit");
        assert_eq!(err, Violation::TooLarge { size: 1 << 20, limit: 65536 });
        // Fragments add up.
        let mut scan = FrameScan::default();
        let mut first = header(false, 2, 600, true);
        first.extend(vec![0u8; 600]);
        scan.feed(&first, 1000).expect("600 fits");
        let err = scan.feed(&header(true, 0, 600, true), 1000).expect_err("1200 does not");
        assert_eq!(err, Violation::TooLarge { size: 1200, limit: 1000 });
        // Exactly the limit passes.
        let mut scan = FrameScan::default();
        scan.feed(&header(true, 2, 1000, false), 1000).expect("at the limit");
    }

    #[test]
    fn ws_scan_frames_start_after_the_http_upgrade_header_in_the_same_read() {
        let mut scan = FrameScan::after_http();
        let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\r\n\r\n".to_vec();
        // A length byte of 127 in the header would be a 64-bit length if
        // it were read as a frame.
        assert!(scan.feed(&bytes, 16).is_ok());
        assert!(!scan.in_progress(), "the HTTP header is not a frame");
        bytes = header(true, 2, 100, false);
        assert_eq!(scan.feed(&bytes, 16), Err(Violation::TooLarge { size: 100, limit: 16 }), "the first frame is read");
        let mut scan = FrameScan::after_http();
        let mut both = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        both.extend(header(false, 2, 3, true));
        scan.feed(&both, 16).expect("ok");
        assert!(scan.in_progress(), "a frame started in the read that ended the header");
    }

    #[test]
    fn ws_scan_refuses_a_long_control_frame() {
        let mut scan = FrameScan::default();
        let err = scan.feed(&header(true, 9, 126, false), usize::MAX).expect_err("too long for a ping");
        assert_eq!(err, Violation::ControlTooLong { size: 126 });
    }
}
