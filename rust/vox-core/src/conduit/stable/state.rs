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

    /// Whether there is anything to transmit (a frame or an owed ack).
    pub fn has_output(&self) -> bool {
        self.cursor < self.replay.len() || (self.last_received.is_some() && self.ack_sent != self.last_received)
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
        Blob(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn seq_after_wraps() {
        assert!(seq_after(1, 0));
        assert!(seq_after(0, u32::MAX));
        assert!(!seq_after(u32::MAX, 0));
        assert!(!seq_after(5, 5));
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
}
