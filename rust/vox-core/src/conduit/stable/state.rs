//! The sans-IO core of the stable conduit: frame numbering, acknowledgements,
//! the replay buffer and duplicate detection. It does no I/O and keeps no
//! clock; the async wrapper in [`super`] feeds it events and sends what it
//! returns, which is what lets the property tests drive it directly.

use crate::wire::{Blob, StableFrame};
use std::collections::VecDeque;

/// Whether `a` comes strictly after `b` in wrapping `u32` sequence space
/// (rule `stable.seq`). Two seqs less than 2^31 apart compare correctly
/// across the wrap; the replay buffer never holds that many frames.
pub fn seq_after(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < (1 << 31)
}

/// What an inbound frame means.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// The next frame in order: deliver its item.
    Deliver(Blob),
    /// A frame at or below the last one delivered: ignored (rule `stable.seq`).
    Duplicate,
}

/// A peer broke the stable-conduit rules. Every variant ends the conduit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StableError {
    /// A frame skipped ahead: an earlier frame was lost, which a reliable
    /// link plus replay cannot produce.
    #[error("stable conduit: frame seq {got} arrived but seq {expected} was expected next")]
    Gap {
        /// The seq that should have come next.
        expected: u32,
        /// The seq that came.
        got: u32,
    },
    /// An ack named a frame this side never sent.
    #[error("stable conduit: peer acknowledged seq {ack}, but the next seq to be sent is {next}")]
    AckBeyondSent {
        /// The ack received.
        ack: u32,
        /// The seq this side would assign next.
        next: u32,
    },
    /// On resume the peer said it had received less than it had already
    /// acknowledged, so frames it needs are no longer in the replay buffer.
    #[error(
        "stable conduit: peer resumes after seq {peer_last:?}, but frames up to {first_kept:?} were acknowledged and dropped"
    )]
    ReplayGap {
        /// What the peer says it received last.
        peer_last: Option<u32>,
        /// The first seq this side still holds (or the next to assign).
        first_kept: u32,
    },
}

#[derive(Debug)]
struct Held {
    seq: u32,
    item: Blob,
}

/// Sequence, ack and replay state of one stable conduit, for both directions.
#[derive(Debug)]
pub struct StableState {
    next_seq: u32,
    /// Frames not yet acknowledged, in seq order (rule `stable.replay-buffer`).
    replay: VecDeque<Held>,
    replay_bytes: usize,
    limit: usize,
    /// Index in `replay` of the next frame to transmit on the current link.
    cursor: usize,
    last_received: Option<u32>,
    ack_sent: Option<u32>,
}

impl StableState {
    /// A fresh conduit whose replay buffer holds at most `limit_bytes` of
    /// items (rule `stable.replay-buffer.bounded`).
    pub fn new(limit_bytes: usize) -> Self {
        StableState {
            next_seq: 0,
            replay: VecDeque::new(),
            replay_bytes: 0,
            limit: limit_bytes,
            cursor: 0,
            last_received: None,
            ack_sent: None,
        }
    }

    /// Whether an item of `len` bytes fits now. An empty buffer takes any
    /// item, so a message larger than the limit still goes out (alone)
    /// instead of waiting forever.
    pub fn has_room(&self, len: usize) -> bool {
        self.replay.is_empty() || self.replay_bytes + len <= self.limit
    }

    /// Bytes held for replay.
    pub fn replay_bytes(&self) -> usize {
        self.replay_bytes
    }

    /// Frames held for replay.
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// Queues a new outbound item, assigning the next seq. Returns the item
    /// back when it does not fit; the caller waits for an ack and retries.
    pub fn push(&mut self, item: Blob) -> Result<u32, Blob> {
        if !self.has_room(item.len()) {
            return Err(item);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.replay_bytes += item.len();
        self.replay.push_back(Held { seq, item });
        Ok(seq)
    }

    /// The next frame to transmit on the current link, carrying the current
    /// ack. Frames come out in seq order; after [`Self::on_reattach`] the
    /// unacknowledged ones come out again first (rule `stable.replay-buffer`).
    pub fn next_to_send(&mut self) -> Option<StableFrame> {
        let held = self.replay.get(self.cursor)?;
        self.cursor += 1;
        self.ack_sent = self.last_received;
        Some(StableFrame { seq: held.seq, ack: self.last_received, item: held.item.clone() })
    }

    /// An ack this side owes and no frame has carried yet.
    pub fn take_owed_ack(&mut self) -> Option<u32> {
        match self.last_received {
            Some(l) if self.ack_sent != Some(l) => {
                self.ack_sent = Some(l);
                Some(l)
            }
            _ => None,
        }
    }

    /// The last seq delivered from the peer.
    pub fn last_received(&self) -> Option<u32> {
        self.last_received
    }

    /// An inbound frame (its piggybacked ack first, then its item).
    pub fn on_frame(&mut self, frame: StableFrame) -> Result<Inbound, StableError> {
        if let Some(ack) = frame.ack {
            self.on_ack(ack)?;
        }
        let expected = self.last_received.map_or(0, |l| l.wrapping_add(1));
        if frame.seq == expected {
            self.last_received = Some(frame.seq);
            return Ok(Inbound::Deliver(frame.item));
        }
        match self.last_received {
            // rule: stable.seq — at or below the last delivered: a replayed duplicate.
            Some(l) if !seq_after(frame.seq, l) => Ok(Inbound::Duplicate),
            _ => Err(StableError::Gap { expected, got: frame.seq }),
        }
    }

    /// An acknowledgement: drops every held frame up to `ack` (rule `stable.ack`).
    /// Returns how many frames were released.
    pub fn on_ack(&mut self, ack: u32) -> Result<usize, StableError> {
        if !seq_after(self.next_seq, ack) {
            return Err(StableError::AckBeyondSent { ack, next: self.next_seq });
        }
        let mut released = 0;
        while let Some(front) = self.replay.front() {
            if seq_after(front.seq, ack) {
                break;
            }
            self.replay_bytes -= front.item.len();
            self.replay.pop_front();
            released += 1;
        }
        self.cursor = self.cursor.saturating_sub(released);
        Ok(released)
    }

    /// Whether [`Self::on_reattach`] with `peer_last` would succeed, without
    /// changing anything (a server checks before it answers `Welcome`).
    pub fn check_reattach(&self, peer_last: Option<u32>) -> Result<(), StableError> {
        if let Some(ack) = peer_last {
            if !seq_after(self.next_seq, ack) {
                return Err(StableError::AckBeyondSent { ack, next: self.next_seq });
            }
        }
        let first_kept = match self.replay.iter().find(|h| peer_last.is_none_or(|ack| seq_after(h.seq, ack))) {
            Some(h) => h.seq,
            None => self.next_seq,
        };
        let wanted = peer_last.map_or(0, |l| l.wrapping_add(1));
        if wanted != first_kept {
            return Err(StableError::ReplayGap { peer_last, first_kept });
        }
        Ok(())
    }

    /// A new link replaced the old one and the peer says it received up to
    /// `peer_last`: release what it has, and transmit the rest again from the
    /// start, with the original seqs, before anything new.
    pub fn on_reattach(&mut self, peer_last: Option<u32>) -> Result<(), StableError> {
        if let Some(ack) = peer_last {
            // An ack from before our oldest held frame releases nothing; the
            // gap check below judges it.
            self.on_ack(ack)?;
        }
        let first_kept = self.replay.front().map_or(self.next_seq, |h| h.seq);
        let wanted = peer_last.map_or(0, |l| l.wrapping_add(1));
        if wanted != first_kept {
            return Err(StableError::ReplayGap { peer_last, first_kept });
        }
        self.cursor = 0;
        // The new link has carried no ack yet.
        self.ack_sent = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn blob(s: &'static str) -> Blob {
        Blob::new(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn seq_after_wraps() {
        assert!(seq_after(1, 0));
        assert!(seq_after(0, u32::MAX));
        assert!(!seq_after(u32::MAX, 0));
        assert!(!seq_after(5, 5));
        // Just under half the space apart is still ordered; exactly half is
        // not, either way: the order is antisymmetric.
        assert!(seq_after((1 << 31) - 1, 0) && !seq_after(0, (1 << 31) - 1));
        assert!(!seq_after(1 << 31, 0) && !seq_after(0, 1 << 31));
        assert!(!seq_after(7 + (1 << 31), 7) && !seq_after(7, 7 + (1 << 31)));
    }

    #[test]
    fn replay_resends_unacked_in_order_after_reattach() {
        let mut s = StableState::new(1024);
        for i in ["a", "b", "c"] {
            s.push(blob(i)).unwrap();
        }
        assert_eq!(s.next_to_send().unwrap().seq, 0);
        assert_eq!(s.next_to_send().unwrap().seq, 1);
        s.on_reattach(Some(0)).unwrap();
        let seqs: Vec<u32> = std::iter::from_fn(|| s.next_to_send()).map(|f| f.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
    }

    #[test]
    fn reattach_with_forgotten_frames_is_replay_gap() {
        let mut s = StableState::new(1024);
        s.push(blob("a")).unwrap();
        s.push(blob("b")).unwrap();
        s.on_ack(0).unwrap();
        assert!(matches!(s.on_reattach(None), Err(StableError::ReplayGap { .. })));
    }

    #[test]
    fn check_reattach_agrees_with_on_reattach() {
        for acked in [None, Some(0u32), Some(2)] {
            let mut base = StableState::new(1024);
            for i in ["a", "b", "c", "d"] {
                base.push(blob(i)).unwrap();
            }
            if let Some(a) = acked {
                base.on_ack(a).unwrap();
            }
            for peer_last in [None, Some(0), Some(1), Some(2), Some(3), Some(4), Some(u32::MAX)] {
                let checked = base.check_reattach(peer_last);
                let mut copy = StableState::new(1024);
                for i in ["a", "b", "c", "d"] {
                    copy.push(blob(i)).unwrap();
                }
                if let Some(a) = acked {
                    copy.on_ack(a).unwrap();
                }
                assert_eq!(checked, copy.on_reattach(peer_last), "acked {acked:?}, peer_last {peer_last:?}");
            }
        }
    }

    /// A state whose next outbound seq is `next` and which has delivered
    /// up to `last` from the peer, as if that many frames had gone by
    /// (the wrap of `u32` is otherwise out of reach of a test).
    fn at(limit: usize, next: u32, last: Option<u32>) -> StableState {
        StableState { next_seq: next, last_received: last, ..StableState::new(limit) }
    }

    fn frame(seq: u32, ack: Option<u32>) -> StableFrame {
        StableFrame { seq, ack, item: blob("x") }
    }

    // rule: stable.seq — only a frame at or below the last delivered one is
    // a replayed duplicate; one that skips ahead means a frame was lost.
    #[test]
    fn stable_seq_frame_skipping_ahead_is_a_gap_not_a_duplicate() {
        let mut s = StableState::new(1024);
        assert_eq!(s.on_frame(frame(1, None)), Err(StableError::Gap { expected: 0, got: 1 }));
        assert_eq!(s.on_frame(frame(0, None)), Ok(Inbound::Deliver(blob("x"))));
        assert_eq!(s.on_frame(frame(0, None)), Ok(Inbound::Duplicate));
        assert_eq!(s.on_frame(frame(2, None)), Err(StableError::Gap { expected: 1, got: 2 }));
        assert_eq!(s.last_received(), Some(0), "neither a duplicate nor a gap moves the receiver");
        // Across the wrap: u32::MAX then 0 are consecutive.
        let mut w = at(1024, 0, Some(u32::MAX - 1));
        assert_eq!(w.on_frame(frame(u32::MAX, None)), Ok(Inbound::Deliver(blob("x"))));
        assert_eq!(w.on_frame(frame(u32::MAX - 5, None)), Ok(Inbound::Duplicate));
        assert_eq!(w.on_frame(frame(1, None)), Err(StableError::Gap { expected: 0, got: 1 }));
        assert_eq!(w.on_frame(frame(0, None)), Ok(Inbound::Deliver(blob("x"))));
    }

    // rule: stable.replay-buffer.bounded — frames and bytes held are counted
    // exactly, released by acks, and the limit is exact.
    #[test]
    fn stable_replay_buffer_counts_held_frames_and_bytes_exactly() {
        let mut s = StableState::new(10);
        assert!(s.has_room(usize::MAX), "an empty buffer takes any item");
        assert_eq!(s.push(Blob::new(Bytes::from_static(b"abcd"))), Ok(0));
        assert_eq!((s.replay_len(), s.replay_bytes()), (1, 4));
        assert!(s.has_room(6) && !s.has_room(7), "4 held + 6 = the limit of 10");
        assert_eq!(s.push(Blob::new(Bytes::from_static(b"efg"))), Ok(1));
        assert_eq!((s.replay_len(), s.replay_bytes()), (2, 7));
        assert!(s.push(Blob::new(Bytes::from_static(b"hijk"))).is_err(), "7 + 4 is over the limit");
        assert_eq!(s.on_ack(0), Ok(1));
        assert_eq!((s.replay_len(), s.replay_bytes()), (1, 3));
        assert_eq!(s.on_ack(1), Ok(1));
        assert_eq!((s.replay_len(), s.replay_bytes()), (0, 0));
        // An oversized item goes out alone.
        assert_eq!(s.push(Blob::new(Bytes::from(vec![0; 32]))), Ok(2));
        assert_eq!(s.replay_bytes(), 32);
        assert!(!s.has_room(0) || s.replay_bytes() <= 10, "nothing more fits next to it");
    }

    // rule: stable.ack — an ack names a frame this side has sent.
    #[test]
    fn stable_ack_beyond_sent_is_refused_and_releases_nothing() {
        let mut s = StableState::new(1024);
        assert_eq!(s.on_ack(0), Err(StableError::AckBeyondSent { ack: 0, next: 0 }));
        s.push(blob("a")).unwrap();
        assert_eq!(s.on_ack(1), Err(StableError::AckBeyondSent { ack: 1, next: 1 }));
        assert_eq!(s.replay_len(), 1);
        // The piggybacked ack of a frame is judged before its item.
        assert_eq!(s.on_frame(frame(0, Some(3))), Err(StableError::AckBeyondSent { ack: 3, next: 1 }));
        assert_eq!(s.last_received(), None);
        assert_eq!(s.on_frame(frame(0, Some(0))), Ok(Inbound::Deliver(blob("x"))));
        assert_eq!(s.replay_len(), 0);
    }

    // rule: stable.ack — every delivered frame is acknowledged once, by the
    // next outbound frame or alone; a new link owes it again.
    #[test]
    fn stable_ack_owed_once_per_link() {
        let mut s = StableState::new(1024);
        assert_eq!(s.take_owed_ack(), None);
        s.on_frame(frame(0, None)).unwrap();
        assert_eq!(s.take_owed_ack(), Some(0));
        assert_eq!(s.take_owed_ack(), None);
        s.on_frame(frame(1, None)).unwrap();
        s.push(blob("a")).unwrap();
        assert_eq!(s.next_to_send().map(|f| f.ack), Some(Some(1)), "the frame carries the ack");
        assert_eq!(s.take_owed_ack(), None);
        s.on_reattach(None).unwrap();
        assert_eq!(s.take_owed_ack(), Some(1), "the new link has carried no ack yet");
    }

    mod model {
        //! `StableState` against an obviously-correct model (proptest;
        //! `PROPTEST_CASES`, default 1,000): sequence numbers are plain
        //! integers there, the replay buffer a list, and the receiver one
        //! number. Seqs start anywhere, so the wrap of `u32` is crossed.

        use super::super::*;
        use bytes::Bytes;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Push(usize),
            Send,
            OwedAck,
            /// An ack `back` frames below the next seq (0: beyond everything sent).
            Ack(u32),
            /// A frame `delta` after the expected one (negative: a replay).
            Frame {
                delta: i64,
                ack: Option<u32>,
            },
            /// A new link; the peer received up to `back` below our next seq.
            Reattach(Option<u32>),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0usize..12).prop_map(Op::Push),
                4 => Just(Op::Send),
                1 => Just(Op::OwedAck),
                2 => (0u32..5).prop_map(Op::Ack),
                4 => (-3i64..3, proptest::option::of(0u32..4)).prop_map(|(delta, ack)| Op::Frame { delta, ack }),
                1 => proptest::option::of(0u32..5).prop_map(Op::Reattach),
            ]
        }

        struct Model {
            limit: usize,
            /// Our next seq, unwrapped.
            next: u64,
            /// Held frames (seq, len), oldest first.
            held: Vec<(u64, usize)>,
            /// Index in `held` of the next frame to transmit.
            cursor: usize,
            /// The last seq delivered from the peer, unwrapped.
            last: Option<u64>,
            ack_sent: Option<u64>,
        }

        const fn wrap(seq: u64) -> u32 {
            seq as u32
        }

        impl Model {
            fn bytes(&self) -> usize {
                self.held.iter().map(|(_, len)| len).sum()
            }

            fn fits(&self, len: usize) -> bool {
                self.held.is_empty() || self.bytes() + len <= self.limit
            }

            /// An ack `back` below our next seq: `back == 0` names a frame never
            /// sent; one below seq 0 is the wrapped "nothing yet" and releases nothing.
            fn ack(&mut self, back: u32) -> Result<usize, StableError> {
                if back == 0 {
                    return Err(StableError::AckBeyondSent { ack: wrap(self.next), next: wrap(self.next) });
                }
                let ack = i128::from(self.next) - i128::from(back);
                let released = self.held.iter().take_while(|(seq, _)| i128::from(*seq) <= ack).count();
                self.held.drain(..released);
                self.cursor = self.cursor.saturating_sub(released);
                Ok(released)
            }
        }

        fn run(limit: usize, start: u64, peer_start: Option<u64>, ops: Vec<Op>) -> Result<(), TestCaseError> {
            let mut s =
                StableState { next_seq: wrap(start), last_received: peer_start.map(wrap), ..StableState::new(limit) };
            let mut m = Model { limit, next: start, held: Vec::new(), cursor: 0, last: peer_start, ack_sent: None };
            // The wrap is crossed with u64 offsets far from 0: keep the model's
            // integers away from underflow.
            for op in ops {
                match op {
                    Op::Push(len) => {
                        let got = s.push(Blob::new(Bytes::from(vec![7u8; len])));
                        if m.fits(len) {
                            prop_assert_eq!(got, Ok(wrap(m.next)));
                            m.held.push((m.next, len));
                            m.next += 1;
                        } else {
                            prop_assert!(got.is_err(), "{} bytes fit over {} held", len, m.bytes());
                        }
                    }
                    Op::Send => {
                        let got = s.next_to_send();
                        match m.held.get(m.cursor) {
                            Some(&(seq, len)) => {
                                let f = got.expect("a frame is due");
                                prop_assert_eq!((f.seq, f.ack, f.item.len()), (wrap(seq), m.last.map(wrap), len));
                                m.cursor += 1;
                                m.ack_sent = m.last;
                            }
                            None => prop_assert!(got.is_none(), "nothing is due"),
                        }
                    }
                    Op::OwedAck => {
                        let want = match m.last {
                            Some(l) if m.ack_sent != Some(l) => {
                                m.ack_sent = Some(l);
                                Some(wrap(l))
                            }
                            _ => None,
                        };
                        prop_assert_eq!(s.take_owed_ack(), want);
                    }
                    Op::Ack(back) => {
                        let ack = wrap(m.next.wrapping_sub(u64::from(back)));
                        prop_assert_eq!(s.on_ack(ack), m.ack(back));
                    }
                    Op::Frame { delta, ack } => {
                        let expected = m.last.map_or(0, |l| l + 1);
                        let seq = wrap(expected.wrapping_add_signed(delta));
                        let got = s.on_frame(StableFrame {
                            seq,
                            ack: ack.map(|back| wrap(m.next.wrapping_sub(u64::from(back)))),
                            item: Blob::new(Bytes::from_static(b"i")),
                        });
                        let want = match ack.map(|back| m.ack(back)) {
                            Some(Err(e)) => Err(e),
                            _ if delta == 0 => {
                                m.last = Some(expected);
                                Ok(Inbound::Deliver(Blob::new(Bytes::from_static(b"i"))))
                            }
                            // At or below the last delivered: a replay. A frame
                            // before the first one (nothing delivered) is a gap.
                            _ if delta < 0 && m.last.is_some() => Ok(Inbound::Duplicate),
                            _ => Err(StableError::Gap { expected: wrap(expected), got: seq }),
                        };
                        prop_assert_eq!(got, want);
                    }
                    Op::Reattach(back) => {
                        let peer_last = back.map(|b| wrap(m.next.wrapping_sub(u64::from(b))));
                        let checked = s.check_reattach(peer_last);
                        let got = s.on_reattach(peer_last);
                        prop_assert_eq!(&checked, &got, "check_reattach agrees with on_reattach");
                        let want = match back.map(|b| m.ack(b)) {
                            Some(Err(e)) => Err(e),
                            _ => {
                                let first_kept = m.held.first().map_or(m.next, |(seq, _)| *seq);
                                let wanted = peer_last.map_or(0, |l| l.wrapping_add(1));
                                if wanted == wrap(first_kept) {
                                    m.cursor = 0;
                                    m.ack_sent = None;
                                    Ok(())
                                } else {
                                    Err(StableError::ReplayGap { peer_last, first_kept: wrap(first_kept) })
                                }
                            }
                        };
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(s.replay_len(), m.held.len(), "frames held");
                prop_assert_eq!(s.replay_bytes(), m.bytes(), "bytes held");
                prop_assert_eq!(s.last_received(), m.last.map(wrap));
                for len in [0, 1, 5, limit] {
                    prop_assert_eq!(s.has_room(len), m.fits(len), "room for {}", len);
                }
            }
            Ok(())
        }

        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
            ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
        }

        proptest! {
            #![proptest_config(config())]

            /// rules stable.seq, stable.ack, stable.replay-buffer(.bounded):
            /// every answer, and the frames and bytes held, equal the model's.
            #[test]
            fn stable_state_matches_reference_model(
                limit in 0usize..24,
                start in prop_oneof![Just(0u64), Just(u64::from(u32::MAX) - 6), 7u64..1000],
                peer in prop_oneof![Just(None), Just(Some(u64::from(u32::MAX) - 3)), (5u64..1000).prop_map(Some)],
                ops in proptest::collection::vec(op(), 1..64),
            ) {
                run(limit, start, peer, ops)?;
            }
        }
    }
}
