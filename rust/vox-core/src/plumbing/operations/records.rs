//! Where the table keeps its records, and the order in which finished ones
//! expire.
//!
//! A busy server's table is full (`max_records`, nearly all Released) and
//! turns over one record per call. Kept as values of a hash map, every
//! record also paid for the map's empty buckets, and a map that keeps
//! removing and inserting at half load doubles once for its tombstones:
//! 4096 records of 88 bytes sat in 16384 buckets, 1.46 MB, and 2.2 MB
//! while it grew (docs/perf.md, issue 20). Here the map holds only an index
//! and the records sit densely in a `Vec`.
//!
//! Finished records expire in the order they finished, because every
//! deadline is the table's monotonic clock plus one fixed TTL; so the
//! expiry order is a FIFO rather than a sorted set. A record that runs
//! again (an idem re-execution) leaves its old entry behind, recognised by
//! its execution number and skipped.

use super::{ArgsDigest, MethodPolicy, OpId, WaiterId};
use crate::wire::{IdMap, MethodId, ResponseBody, id_map};
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug)]
pub(super) enum RecordState {
    Live {
        waiters: Vec<WaiterId>,
    },
    /// Boxed: a `ResponseBody` inline would make every record of the
    /// table (up to `max_records`, nearly all of them Released) twice the
    /// size.
    Sealed {
        outcome: Box<ResponseBody>,
    },
    Released,
    Indeterminate,
}

#[derive(Debug)]
pub(super) struct Record {
    pub(super) op: OpId,
    pub(super) method: MethodId,
    pub(super) digest: ArgsDigest,
    pub(super) policy: MethodPolicy,
    /// The current execution; tickets of other executions are stale, and so
    /// are expiry entries of other executions.
    pub(super) execution: u64,
    pub(super) state: RecordState,
}

/// The records by id: an index map to dense slots. Every index in the
/// map is below `slots.len()` and names the slot holding that id's record:
/// `insert` pushes before it indexes, `remove` re-points the slot it moves.
#[derive(Debug)]
pub(super) struct Records {
    index: IdMap<OpId, usize>,
    slots: Vec<Record>,
}

impl Records {
    pub(super) fn new() -> Records {
        Records { index: id_map(), slots: Vec::new() }
    }

    pub(super) fn get(&self, op: OpId) -> Option<&Record> {
        self.index.get(&op).map(|&i| &self.slots[i])
    }

    pub(super) fn get_mut(&mut self, op: OpId) -> Option<&mut Record> {
        self.index.get(&op).map(|&i| &mut self.slots[i])
    }

    /// Adds `record`, replacing any record of the same id.
    pub(super) fn insert(&mut self, record: Record) {
        match self.index.get(&record.op) {
            Some(&i) => self.slots[i] = record,
            None => {
                self.index.insert(record.op, self.slots.len());
                self.slots.push(record);
            }
        }
    }

    /// Removes `op`'s record: the last slot moves into its place.
    pub(super) fn remove(&mut self, op: OpId) -> Option<Record> {
        let i = self.index.remove(&op)?;
        let record = self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.op, i);
        }
        Some(record)
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

/// One finished execution, due to expire at `deadline`.
#[derive(Clone, Copy, Debug)]
struct Due {
    deadline: Instant,
    op: OpId,
    execution: u64,
}

/// Finished executions in the order they finished, which is their deadline
/// order. Entries of executions that ran again are stale and skipped; the
/// queue is compacted when they outnumber the records, so it stays within
/// twice the table's capacity.
#[derive(Debug)]
pub(super) struct ExpiryQueue {
    queue: VecDeque<Due>,
}

impl ExpiryQueue {
    pub(super) fn new() -> ExpiryQueue {
        ExpiryQueue { queue: VecDeque::new() }
    }

    /// Queues the finished `execution` of `op`, due at `deadline` (never
    /// earlier than any queued one).
    pub(super) fn push(&mut self, op: OpId, execution: u64, deadline: Instant, records: &Records) {
        self.queue.push_back(Due { deadline, op, execution });
        if self.queue.len() > 2 * records.len() + 16 {
            self.queue.retain(|due| is_current(due, records));
        }
    }

    /// Takes the finished record that is due first, if it is due by
    /// `by` (any, with `None`); stale entries on the way are dropped.
    pub(super) fn pop_due(&mut self, by: Option<Instant>, records: &Records) -> Option<OpId> {
        while let Some(due) = self.queue.front().copied() {
            if by.is_some_and(|by| due.deadline > by) {
                return None;
            }
            self.queue.pop_front();
            if is_current(&due, records) {
                return Some(due.op);
            }
        }
        None
    }
}

/// Whether `due` names its record's current, finished execution.
fn is_current(due: &Due, records: &Records) -> bool {
    records.get(due.op).is_some_and(|r| r.execution == due.execution && !matches!(r.state, RecordState::Live { .. }))
}

#[cfg(test)]
impl ExpiryQueue {
    fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(op: u64, execution: u64, state: RecordState) -> Record {
        Record {
            op: OpId(op),
            method: MethodId(op),
            digest: ArgsDigest::of(&op.to_le_bytes()),
            policy: MethodPolicy::default(),
            execution,
            state,
        }
    }

    #[test]
    fn operation_records_removal_moves_the_last_slot_and_keeps_every_id_found() {
        let mut r = Records::new();
        for op in 1..=4 {
            r.insert(record(op, op, RecordState::Released));
        }
        assert_eq!(r.remove(OpId(1)).map(|x| x.op), Some(OpId(1)));
        assert!(r.remove(OpId(1)).is_none() && r.get(OpId(1)).is_none());
        for op in 2..=4 {
            assert_eq!(r.get(OpId(op)).map(|x| x.execution), Some(op), "op {op}");
        }
        // Removing the last slot moves nothing.
        assert!(r.remove(OpId(3)).is_some() && r.remove(OpId(4)).is_some());
        assert_eq!(r.get(OpId(2)).map(|x| x.op), Some(OpId(2)));
        // Inserting an id again replaces its record.
        r.insert(record(2, 9, RecordState::Indeterminate));
        assert_eq!((r.len(), r.get_mut(OpId(2)).map(|x| x.execution)), (1, Some(9)));
    }

    #[test]
    fn operation_expiry_skips_stale_and_live_entries_and_stays_within_twice_the_records() {
        let t0 = Instant::now();
        let mut r = Records::new();
        let mut q = ExpiryQueue::new();
        r.insert(record(1, 0, RecordState::Released));
        r.insert(record(2, 0, RecordState::Released));
        r.insert(record(3, 0, RecordState::Released));
        // Op 1 runs again and again (idem re-executions): each leaves a
        // stale entry behind. The queue compacts only once they are more
        // than twice the records plus 16, so the work stays amortised O(1).
        let mut longest = 0;
        for execution in 0..100 {
            r.get_mut(OpId(1)).unwrap().execution = execution;
            q.push(OpId(1), execution, t0 + Duration::from_millis(execution), &r);
            longest = longest.max(q.len());
        }
        assert_eq!(longest, 2 * r.len() + 16, "compacted before the stale entries outnumbered the records");
        q.push(OpId(2), 0, t0 + Duration::from_millis(100), &r);
        // Only op 1's last execution is current; nothing is due before it.
        assert_eq!(q.pop_due(Some(t0 + Duration::from_millis(98)), &r), None);
        assert_eq!(q.pop_due(Some(t0 + Duration::from_millis(99)), &r), Some(OpId(1)));
        // A record that runs again while its entry waits is skipped.
        r.get_mut(OpId(2)).unwrap().state = RecordState::Live { waiters: Vec::new() };
        assert_eq!(q.pop_due(None, &r), None);
        assert_eq!(q.len(), 0);
    }
}

#[cfg(test)]
mod record_size {
    use super::{OpId, Record};

    // A busy server's table is full and holds each record once, plus an
    // index entry in a map that may have four buckets per record (the
    // inline `ResponseBody` once made a map entry 168 bytes).
    #[test]
    fn operation_table_record_is_at_most_72_bytes_and_its_index_entry_16() {
        let size = std::mem::size_of::<Record>();
        assert!(size <= 72, "an operation table record is {size} bytes");
        assert_eq!(std::mem::size_of::<(OpId, usize)>(), 16);
    }
}
