//! Which ids of one parity a peer has announced, remembered exactly for a
//! bounded window of the most recent ones (rules `rpc.channel.unknown`,
//! `connection.close.crossing`).
//!
//! A peer allocates ids in increasing order but may skip some. A message for
//! an id the peer never announced is a violation even when it is below the
//! highest id announced; only an id older than everything remembered may be
//! a late message for state that is gone (tolerated, counted). A bitmap of
//! the last [`WINDOW_IDS`] ids of the parity keeps that exact at a fixed
//! cost: at most `WINDOW_IDS / 8` bytes, allocated only once the peer
//! announces ids.

use std::collections::VecDeque;

/// How many ids of one parity are remembered exactly (1,024: 128 bytes).
pub(crate) const WINDOW_IDS: u64 = 1024;

const WORD_BITS: u64 = 64;
const WORDS: usize = (WINDOW_IDS / WORD_BITS) as usize;

/// What is known about an id of the window's parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Announced (the peer used it at some point).
    Announced,
    /// Never announced, and every id this old is still remembered: a
    /// message for it is a violation.
    Never,
    /// Older than the oldest remembered id, and ids before it were
    /// forgotten: it may be a late message for an announced id.
    Forgotten,
}

/// Ids of one parity (so consecutive ids differ by 2), announced in
/// increasing order.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdWindow {
    /// The id that bit 0 of `words[0]` stands for.
    base: u64,
    /// One bit per id `base + 2 * i`.
    words: VecDeque<u64>,
    /// The highest id announced.
    highest: Option<u64>,
    /// Whether ids below `base` were ever announced (and forgotten).
    slid: bool,
}

impl IdWindow {
    /// Records `id` as announced. Ids must come in increasing order (the
    /// caller refuses the others as violations first); an id at or below
    /// the highest one is ignored.
    pub(crate) fn insert(&mut self, id: u64) {
        match self.highest {
            Some(h) if id <= h => return,
            None => self.base = id,
            Some(_) => {}
        }
        self.highest = Some(id);
        let mut index = (id - self.base) / 2;
        if index >= WINDOW_IDS {
            // Forget the oldest words, as many as needed at once (a peer may
            // jump far ahead): ids below the new base are from now on
            // tolerated as possibly late.
            let forget = (index - WINDOW_IDS) / WORD_BITS + 1;
            let keep = u64::try_from(self.words.len()).unwrap_or(u64::MAX).saturating_sub(forget);
            let keep = usize::try_from(keep).unwrap_or(0);
            self.words.drain(..self.words.len() - keep);
            self.base += 2 * WORD_BITS * forget;
            self.slid = true;
            index = (id - self.base) / 2;
        }
        let word = usize::try_from(index / WORD_BITS).unwrap_or(WORDS - 1);
        while self.words.len() <= word {
            self.words.push_back(0);
        }
        if let Some(w) = self.words.get_mut(word) {
            *w |= 1 << (index % WORD_BITS);
        }
    }

    /// What is known about `id` (of the window's parity).
    pub(crate) fn seen(&self, id: u64) -> Seen {
        let Some(highest) = self.highest else { return Seen::Never };
        if id > highest {
            return Seen::Never;
        }
        if id < self.base {
            return if self.slid { Seen::Forgotten } else { Seen::Never };
        }
        let index = (id - self.base) / 2;
        let word = usize::try_from(index / WORD_BITS).unwrap_or(usize::MAX);
        match self.words.get(word) {
            Some(w) if w & (1 << (index % WORD_BITS)) != 0 => Seen::Announced,
            _ => Seen::Never,
        }
    }

    /// The highest id announced.
    pub(crate) fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_channel_unknown_skipped_id_below_the_high_water_mark_is_never_announced() {
        let mut w = IdWindow::default();
        w.insert(1);
        w.insert(5);
        assert_eq!(w.seen(1), Seen::Announced);
        assert_eq!(w.seen(3), Seen::Never);
        assert_eq!(w.seen(5), Seen::Announced);
        assert_eq!(w.seen(7), Seen::Never);
        // Below the first id ever announced: nothing was forgotten.
        let mut late_start = IdWindow::default();
        late_start.insert(101);
        assert_eq!(late_start.seen(99), Seen::Never);
    }

    #[test]
    fn rpc_channel_unknown_only_ids_older_than_the_window_are_tolerated() {
        let mut w = IdWindow::default();
        // Odd ids 1, 3, ..., every one announced, well past one window.
        let last = 1 + 2 * (3 * WINDOW_IDS);
        let mut id = 1;
        while id <= last {
            w.insert(id);
            id += 2;
        }
        // Everything in the last WINDOW_IDS ids is remembered exactly.
        for back in 0..WINDOW_IDS - WORD_BITS {
            assert_eq!(w.seen(last - 2 * back), Seen::Announced, "id {}", last - 2 * back);
        }
        assert_eq!(w.seen(1), Seen::Forgotten);
        assert!(w.words.len() <= WORDS, "window grew to {} words", w.words.len());
        // A skipped id inside the window is caught.
        let mut gap = IdWindow::default();
        gap.insert(1);
        gap.insert(1 + 2 * (WINDOW_IDS + 10));
        gap.insert(1 + 2 * (WINDOW_IDS + 12));
        assert_eq!(gap.seen(1 + 2 * (WINDOW_IDS + 11)), Seen::Never);
        assert_eq!(gap.seen(1), Seen::Forgotten);
    }

    #[test]
    fn rpc_channel_unknown_a_far_jump_forgets_at_once() {
        let mut w = IdWindow::default();
        w.insert(1);
        w.insert(u64::MAX);
        assert_eq!(w.seen(u64::MAX), Seen::Announced);
        assert_eq!(w.seen(u64::MAX - 2), Seen::Never);
        assert_eq!(w.seen(1), Seen::Forgotten);
        assert!(w.words.len() <= WORDS);
    }

    #[test]
    fn rpc_channel_unknown_empty_window_knows_no_id() {
        let w = IdWindow::default();
        assert_eq!(w.seen(1), Seen::Never);
        assert_eq!(w.highest(), None);
    }

    #[test]
    fn rpc_channel_unknown_window_is_exact_against_a_set_for_sparse_ids() {
        // Deterministic pseudo-random gaps: compare with a full set for the
        // ids the window must still remember.
        let mut w = IdWindow::default();
        let mut all = std::collections::BTreeSet::new();
        let mut id = 2u64;
        let mut x = 0x9e37_79b9_u64;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            id += 2 * (1 + x % 5);
            w.insert(id);
            all.insert(id);
        }
        let highest = id;
        let oldest_exact = highest - 2 * (WINDOW_IDS - WORD_BITS);
        let mut probe = oldest_exact;
        while probe <= highest + 4 {
            let expected = if all.contains(&probe) { Seen::Announced } else { Seen::Never };
            assert_eq!(w.seen(probe), expected, "id {probe}");
            probe += 2;
        }
    }
}
