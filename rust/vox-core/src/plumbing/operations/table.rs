//! The table itself: one record per operation id, the finished records by
//! deadline, and the memory of expired ids; every transition is a method of
//! [`OperationTable`] that takes the current time from the caller.

use super::records::{ExpiryQueue, Record, RecordState, Records};
use crate::wire::{IdSet, id_set};
use std::collections::VecDeque;
use std::time::Instant;

use super::{
    Admission, ArgsDigest, Completion, ConflictKind, MethodPolicy, OpId, OpState, OperationConfig, OperationStats,
    Rejection, Ticket, TicketError, WaiterId,
};
use crate::wire::{MethodId, ResponseBody};

/// Expired ids: exact for the most recent `cap`, a watermark below.
#[derive(Debug)]
struct ExpiredIds {
    cap: usize,
    order: VecDeque<OpId>,
    set: IdSet<OpId>,
    /// The highest id that was forgotten from the exact set.
    watermark: Option<u64>,
}

impl ExpiredIds {
    fn contains(&self, op: OpId) -> bool {
        self.set.contains(&op) || self.watermark.is_some_and(|w| op.0 <= w)
    }

    fn insert(&mut self, op: OpId) {
        if self.set.insert(op) {
            self.order.push_back(op);
        }
        while self.order.len() > self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.set.remove(&old);
            self.watermark = Some(self.watermark.map_or(old.0, |w| w.max(old.0)));
        }
    }
}

/// The operation table of one session. Owned by one task; not shared.
#[derive(Debug)]
pub struct OperationTable {
    config: OperationConfig,
    records: Records,
    /// Finished records in deadline order: expiry and early eviction both
    /// take from the front.
    finished: ExpiryQueue,
    expired: ExpiredIds,
    next_execution: u64,
    next_waiter: u64,
    /// The latest time seen; an earlier `now` is taken as this one, so a
    /// non-monotonic caller cannot bring a record back to life.
    clock: Option<Instant>,
    stats: OperationStats,
}

impl OperationTable {
    /// An empty table.
    pub fn new(config: OperationConfig) -> OperationTable {
        let expired =
            ExpiredIds { cap: config.max_expired_ids, order: VecDeque::new(), set: id_set(), watermark: None };
        OperationTable {
            config,
            records: Records::new(),
            finished: ExpiryQueue::new(),
            expired,
            next_execution: 0,
            next_waiter: 0,
            clock: None,
            stats: OperationStats::default(),
        }
    }

    /// Admits one attempt of operation `op`.
    ///
    /// `has_channels`: the attempt carries channels. Together with the
    /// record's state and the method's policy this decides the [`Admission`];
    /// a mismatching method or args, an expired id, or a full table is a
    /// [`Rejection`]. Expiry up to `now` runs first.
    pub fn admit(
        &mut self,
        op: OpId,
        method: MethodId,
        digest: ArgsDigest,
        policy: MethodPolicy,
        has_channels: bool,
        now: Instant,
    ) -> Result<Admission, Rejection> {
        let now = self.tick(now);
        self.expire(now);
        let max_waiters = self.config.max_waiters_per_op;
        let Some(record) = self.records.get_mut(op) else {
            return self.admit_new(op, method, digest, policy);
        };
        if record.method != method {
            return Err(Rejection::Conflict {
                op,
                kind: ConflictKind::Method { recorded: record.method, attempted: method },
            });
        }
        if record.digest != digest {
            return Err(Rejection::Conflict { op, kind: ConflictKind::Args });
        }
        // The recorded policy decides, not the attempt's: the method matched,
        // so they only differ if the caller passed a wrong one.
        let idem = record.policy.idem;
        match &mut record.state {
            RecordState::Live { waiters } => {
                if !has_channels {
                    if waiters.len() >= max_waiters {
                        return Err(Rejection::TooManyWaiters { op, limit: max_waiters });
                    }
                    let waiter = WaiterId(self.next_waiter);
                    self.next_waiter += 1;
                    waiters.push(waiter);
                    Ok(Admission::Attach(waiter))
                } else if idem {
                    let stale = Ticket { op, execution: record.execution };
                    record.execution = self.next_execution;
                    self.next_execution += 1;
                    Ok(Admission::Supersede { ticket: Ticket { op, execution: record.execution }, stale })
                } else {
                    Ok(Admission::FailIndeterminate)
                }
            }
            RecordState::Sealed { outcome, .. } => Ok(Admission::Replay(ResponseBody::clone(outcome))),
            RecordState::Released | RecordState::Indeterminate => {
                if !idem {
                    return Ok(Admission::FailIndeterminate);
                }
                // The new execution number makes its expiry entry stale.
                record.state = RecordState::Live { waiters: Vec::new() };
                record.execution = self.next_execution;
                self.next_execution += 1;
                Ok(Admission::ReExecute(Ticket { op, execution: record.execution }))
            }
        }
    }

    fn admit_new(
        &mut self,
        op: OpId,
        method: MethodId,
        digest: ArgsDigest,
        policy: MethodPolicy,
    ) -> Result<Admission, Rejection> {
        if self.expired.contains(op) {
            return Err(Rejection::Expired { op });
        }
        if self.records.len() >= self.config.max_records {
            // Expire early the finished record closest to its deadline; Live
            // records are never evicted (their outcome is still owed).
            let Some(victim) = self.finished.pop_due(None, &self.records) else {
                return Err(Rejection::Full { capacity: self.config.max_records });
            };
            self.records.remove(victim);
            self.expired.insert(victim);
            self.stats.evicted_early += 1;
        }
        let execution = self.next_execution;
        self.next_execution += 1;
        self.records.insert(Record {
            op,
            method,
            digest,
            policy,
            execution,
            state: RecordState::Live { waiters: Vec::new() },
        });
        Ok(Admission::Execute(Ticket { op, execution }))
    }

    /// Reports the outcome of an execution: the record becomes Sealed
    /// (persist) or Released (volatile), and the attached attempts to answer
    /// with the same outcome are returned.
    pub fn complete(&mut self, ticket: Ticket, outcome: ResponseBody, now: Instant) -> Result<Completion, TicketError> {
        let waiters = self.finish(ticket, now, |policy| {
            if policy.persist {
                // Sealed keeps user errors too: a retry must see the same
                // error, not a second execution (rule `retry.duplicate.sealed`).
                RecordState::Sealed { outcome: Box::new(outcome.clone()) }
            } else {
                RecordState::Released
            }
        })?;
        Ok(Completion { outcome, waiters })
    }

    /// Reports that an execution's outcome became unknown (its attachment
    /// broke while it used channels): the record becomes Indeterminate and the
    /// attached attempts to answer with `Indeterminate` are returned.
    pub fn interrupt(&mut self, ticket: Ticket, now: Instant) -> Result<Vec<WaiterId>, TicketError> {
        self.finish(ticket, now, |_| RecordState::Indeterminate)
    }

    /// Moves the current, live execution named by `ticket` to the finished
    /// state `make` builds, and hands back its waiters.
    fn finish(
        &mut self,
        ticket: Ticket,
        now: Instant,
        make: impl FnOnce(MethodPolicy) -> RecordState,
    ) -> Result<Vec<WaiterId>, TicketError> {
        let now = self.tick(now);
        let deadline = now + self.config.ttl;
        let op = ticket.op;
        let record = self.records.get_mut(op).ok_or(TicketError::Unknown { op })?;
        if record.execution != ticket.execution {
            return Err(TicketError::Stale { op, execution: ticket.execution, current: record.execution });
        }
        let RecordState::Live { waiters } = &mut record.state else {
            return Err(TicketError::Finished { op, execution: ticket.execution });
        };
        let waiters = std::mem::take(waiters);
        record.state = make(record.policy);
        let execution = record.execution;
        self.finished.push(op, execution, deadline, &self.records);
        Ok(waiters)
    }

    /// Removes an attached attempt whose reply sink is gone (its attachment
    /// broke). Returns whether it was attached; `false` is not an error, the
    /// execution may have completed in between.
    pub fn detach(&mut self, op: OpId, waiter: WaiterId) -> bool {
        match self.records.get_mut(op).map(|r| &mut r.state) {
            Some(RecordState::Live { waiters }) => {
                let before = waiters.len();
                waiters.retain(|w| *w != waiter);
                waiters.len() != before
            }
            _ => false,
        }
    }

    /// Removes finished records whose TTL has passed by `now`; their ids are
    /// remembered as expired. Returns how many were removed. [`admit`]
    /// calls it; a driver may also call it on a timer to free memory sooner.
    ///
    /// [`admit`]: OperationTable::admit
    pub fn expire(&mut self, now: Instant) -> usize {
        let now = self.tick(now);
        let mut removed = 0;
        while let Some(op) = self.finished.pop_due(Some(now), &self.records) {
            self.records.remove(op);
            self.expired.insert(op);
            removed += 1;
        }
        self.stats.expired += removed as u64;
        removed
    }

    /// The state of `op`'s record, if it has one.
    pub fn state(&self, op: OpId) -> Option<OpState> {
        self.records.get(op).map(|r| match r.state {
            RecordState::Live { .. } => OpState::Live,
            RecordState::Sealed { .. } => OpState::Sealed,
            RecordState::Released => OpState::Released,
            RecordState::Indeterminate => OpState::Indeterminate,
        })
    }

    /// Whether `op` would be rejected as expired (it has no record and is in
    /// the expired-id memory).
    pub fn is_expired(&self, op: OpId) -> bool {
        self.records.get(op).is_none() && self.expired.contains(op)
    }

    /// Number of records (all states).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.len() == 0
    }

    /// Counters.
    pub fn stats(&self) -> OperationStats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &OperationConfig {
        &self.config
    }

    fn tick(&mut self, now: Instant) -> Instant {
        let now = self.clock.map_or(now, |c| c.max(now));
        self.clock = Some(now);
        now
    }
}
