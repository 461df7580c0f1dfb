//! The server-side session operation table (PROTOCOL.md section 10).
//!
//! Every logical call that carries an operation id (metadata key
//! [`OP_ID_KEY`]) gets one record here, keyed by that id, for as long as the
//! session lives (the table is session-scoped and survives a resume, rule
//! `session.resume`). A record moves
//! `Absent -> Live -> Sealed(outcome) | Released | Indeterminate`, and each
//! attempt of the call is admitted against it with [`OperationTable::admit`],
//! which returns an explicit [`Admission`] (run, attach, replay, re-run, fail
//! closed) or a typed [`Rejection`].
//!
//! The table is sans-IO: no tasks, no locks, no clock of its own. The driver
//! owns it (one task), passes the current time in, and maps the opaque
//! [`Ticket`]s and [`WaiterId`]s it hands out to handler tasks and reply
//! sinks.
//!
//! ```
//! use std::time::Instant;
//! use vox_core::plumbing::operations::{Admission, ArgsDigest, MethodPolicy, OpId, OperationConfig, OperationTable};
//! use vox_core::wire::{MethodId, ResponseBody};
//!
//! let mut table = OperationTable::new(OperationConfig::default());
//! let (op, method, args) = (OpId(7), MethodId(1), ArgsDigest::of(b"args"));
//! let persist = MethodPolicy { idem: false, persist: true };
//! let now = Instant::now();
//!
//! // First attempt: run the handler.
//! let Ok(Admission::Execute(ticket)) = table.admit(op, method, args, persist, false, now) else { panic!() };
//! // A duplicate while it runs attaches to it: no second execution.
//! let Ok(Admission::Attach(waiter)) = table.admit(op, method, args, persist, false, now) else { panic!() };
//! // Completion names the waiters to answer with the same outcome.
//! let done = table.complete(ticket, ResponseBody::Ok(Default::default()), now).unwrap();
//! assert_eq!(done.waiters, vec![waiter]);
//! // A later duplicate gets the sealed outcome replayed.
//! assert!(matches!(table.admit(op, method, args, persist, false, now), Ok(Admission::Replay(ResponseBody::Ok(_)))));
//! ```

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::wire::{Metadata, MetadataValue, MethodId, NO_PROPAGATE, ResponseBody};

/// The request metadata key that carries the operation id (a `U64` value).
pub const OP_ID_KEY: &str = "vox.op-id";

/// An operation id: every attempt of one logical call carries the same one;
/// a new call gets a new one (rule `retry.op-id`).
///
/// Callers should allocate them in increasing order (a per-session counter):
/// the table's memory of expired ids is exact only for the most recent ones
/// and conservative below a watermark (see [`OperationConfig::max_expired_ids`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl std::fmt::Display for OpId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The `vox.op-id` entry is present but does not hold a `U64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata key `vox.op-id` must hold a U64 value")]
pub struct OpIdError;

/// Reads the operation id of a request: `Ok(None)` when the call carries none
/// (it is then not tracked by the table), an error when the entry is
/// malformed (the driver answers `InvalidPayload` rather than guessing).
///
/// ```
/// use vox_core::plumbing::operations::{OpId, read_op_id, write_op_id};
/// use vox_core::wire::Metadata;
/// let mut md = Metadata::new();
/// assert_eq!(read_op_id(&md), Ok(None));
/// write_op_id(&mut md, OpId(42));
/// write_op_id(&mut md, OpId(42)); // idempotent: one entry per request
/// assert_eq!(read_op_id(&md), Ok(Some(OpId(42))));
/// assert_eq!(md.0.len(), 1);
/// ```
pub fn read_op_id(metadata: &Metadata) -> Result<Option<OpId>, OpIdError> {
    match metadata.get(OP_ID_KEY).map(|e| &e.value) {
        None => Ok(None),
        Some(MetadataValue::U64(v)) => Ok(Some(OpId(*v))),
        Some(_) => Err(OpIdError),
    }
}

/// Sets the operation id of a request, replacing an existing `vox.op-id`
/// entry so that a retried attempt never carries two ids.
///
/// The entry is flagged `NO_PROPAGATE`: a handler that forwards its metadata
/// to a downstream call must not hand that call the same id, since the
/// downstream call is a different logical call (a different method, so the
/// downstream table would reject it as a conflict or, worse, replay).
pub fn write_op_id(metadata: &mut Metadata, op: OpId) {
    match metadata.0.iter_mut().find(|e| e.key == OP_ID_KEY) {
        Some(entry) => {
            entry.value = MetadataValue::U64(op.0);
            entry.flags |= NO_PROPAGATE;
        }
        None => metadata.push(OP_ID_KEY, MetadataValue::U64(op.0), NO_PROPAGATE),
    }
}

/// A digest of a request's serialized args, used to detect a reused id with
/// different args (rule `retry.op-id`).
///
/// It must be computed over bytes that are the same for every attempt: if the
/// args encoding embeds channel ids (fresh per attempt, rule
/// `retry.channel.volatile.rebinding`), hash a form with those ids left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArgsDigest(pub [u8; 32]);

impl ArgsDigest {
    /// BLAKE3 of the args bytes.
    pub fn of(args: &[u8]) -> ArgsDigest {
        ArgsDigest(*blake3::hash(args).as_bytes())
    }
}

/// Per-method retry policy (PROTOCOL.md section 10). The default is
/// volatile and non-idem, the safe choice: nothing kept, nothing re-run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MethodPolicy {
    /// Running the method twice has the same effect as running it once, so a
    /// retry whose earlier outcome is unknown or gone may run it again.
    pub idem: bool,
    /// The final outcome (including a user error) is kept and replayed to
    /// duplicates; otherwise it is delivered and dropped (`Released`).
    pub persist: bool,
}

/// Limits of an [`OperationTable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationConfig {
    /// How long a finished record (Sealed, Released, Indeterminate) is kept
    /// after it finished. A Live record never expires.
    pub ttl: Duration,
    /// The most records (of any state) the table holds. When a new id arrives
    /// at capacity, the finished record closest to expiry is expired early
    /// (its id is then rejected as [`Rejection::Expired`], exactly as after
    /// its TTL); if every record is Live, the attempt gets [`Rejection::Full`].
    pub max_records: usize,
    /// The most attempts attached to one Live execution; one more gets
    /// [`Rejection::TooManyWaiters`]. Waiters of a dead attachment should be
    /// removed with [`OperationTable::detach`].
    pub max_waiters_per_op: usize,
    /// How many expired ids are remembered exactly. Older ones fold into a
    /// watermark: every id at or below the highest forgotten id that has no
    /// record is rejected as expired. This is never unsafe (an expired id is
    /// never taken as new) but may reject a genuinely new id that is lower
    /// than the watermark, i.e. a first attempt that arrives after later
    /// calls' records already expired; with increasing ids that is a call
    /// delayed by more than a TTL, which fails closed.
    pub max_expired_ids: usize,
}

impl Default for OperationConfig {
    fn default() -> Self {
        OperationConfig {
            ttl: Duration::from_secs(60),
            max_records: 4096,
            max_waiters_per_op: 8,
            max_expired_ids: 4096,
        }
    }
}

/// An attempt attached to a live execution; the driver maps it to the
/// attempt's reply sink and answers it when the execution completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WaiterId(pub u64);

/// The right to report the outcome of one execution of an operation.
///
/// It names the execution, not just the operation: after the operation was
/// re-executed, a ticket of the earlier execution is stale and
/// [`OperationTable::complete`] / [`OperationTable::interrupt`] refuse it, so
/// a late event from an old attachment never acts on the new execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    op: OpId,
    execution: u64,
}

impl Ticket {
    /// The operation this ticket belongs to.
    pub fn op(&self) -> OpId {
        self.op
    }

    /// The execution number (unique within the table, increasing).
    pub fn execution(&self) -> u64 {
        self.execution
    }
}

/// What to do with an admitted attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New id: run the handler, then report with the ticket.
    Execute(Ticket),
    /// A duplicate of a live execution (rule `retry.duplicate.live`): do not
    /// run anything; answer this attempt when the execution completes.
    Attach(WaiterId),
    /// A duplicate of a sealed operation (rule `retry.duplicate.sealed`):
    /// answer with this outcome, which may be a user error.
    Replay(ResponseBody),
    /// An idem operation whose earlier outcome is gone (Released) or unknown
    /// (Indeterminate): run the handler again.
    ReExecute(Ticket),
    /// An idem, channel-bearing duplicate of a live execution: the live
    /// execution's channels belong to a dead attachment, so run again with the
    /// new attempt's fresh channels (rule `retry.channel.volatile.rebinding`).
    /// `stale` is the superseded execution: the driver cancels it and answers
    /// its attempt with `Indeterminate`; its ticket is refused from now on.
    /// Attempts attached to it are carried over to the new execution.
    Supersede {
        /// The new execution.
        ticket: Ticket,
        /// The superseded execution.
        stale: Ticket,
    },
    /// A non-idem operation whose outcome is gone or unknown, or whose live
    /// execution's channels are dead (rule `retry.channel.recovery.non-idem`):
    /// answer `Indeterminate`; nothing runs.
    FailIndeterminate,
}

/// Why a recorded id does not match an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// The attempt calls another method.
    Method {
        /// The method of the record.
        recorded: MethodId,
        /// The method of the attempt.
        attempted: MethodId,
    },
    /// Same method, different args.
    Args,
}

/// An attempt the table refuses; the driver answers it with an error
/// response and nothing runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The id is recorded for another method or other args (rule `retry.op-id`).
    #[error("operation id {op} conflicts with its record: {kind:?}")]
    Conflict {
        /// The id.
        op: OpId,
        /// What differs.
        kind: ConflictKind,
    },
    /// The id's record expired; it is not taken as new.
    #[error("operation id {op} has expired")]
    Expired {
        /// The id.
        op: OpId,
    },
    /// Every record is Live and the table is at capacity.
    #[error("operation table full ({capacity} live operations)")]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
    /// The live execution already has the maximum number of attached attempts.
    #[error("operation {op} has {limit} attached attempts already")]
    TooManyWaiters {
        /// The id.
        op: OpId,
        /// The configured limit.
        limit: usize,
    },
}

/// A ticket the table refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// No record for the ticket's id (never issued here, or finished and
    /// expired since).
    #[error("no record for operation {op}")]
    Unknown {
        /// The id.
        op: OpId,
    },
    /// The operation was re-executed since this ticket was issued.
    #[error("stale ticket for operation {op}: execution {execution}, current {current}")]
    Stale {
        /// The id.
        op: OpId,
        /// The ticket's execution.
        execution: u64,
        /// The record's current execution.
        current: u64,
    },
    /// This execution already completed or was interrupted.
    #[error("execution {execution} of operation {op} has already finished")]
    Finished {
        /// The id.
        op: OpId,
        /// The execution.
        execution: u64,
    },
}

/// The result of [`OperationTable::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The outcome, handed back for the executing attempt's own reply.
    pub outcome: ResponseBody,
    /// Attached attempts to answer with the same outcome.
    pub waiters: Vec<WaiterId>,
}

/// The state of a record, as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpState {
    /// Executing.
    Live,
    /// Finished; the outcome is kept (persist methods).
    Sealed,
    /// Finished; the outcome was delivered and dropped (volatile methods).
    Released,
    /// The execution's outcome is unknown.
    Indeterminate,
}

/// Counters of an [`OperationTable`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationStats {
    /// Finished records removed because their TTL passed.
    pub expired: u64,
    /// Finished records removed before their TTL because the table was full.
    pub evicted_early: u64,
}

#[derive(Debug)]
enum RecordState {
    Live { waiters: Vec<WaiterId> },
    Sealed { outcome: ResponseBody },
    Released { deadline: Instant },
    Indeterminate { deadline: Instant },
}

#[derive(Debug)]
struct Record {
    method: MethodId,
    digest: ArgsDigest,
    policy: MethodPolicy,
    /// The current execution; tickets of other executions are stale.
    execution: u64,
    state: RecordState,
}

/// Expired ids: exact for the most recent `cap`, a watermark below.
#[derive(Debug)]
struct ExpiredIds {
    cap: usize,
    order: VecDeque<OpId>,
    set: HashSet<OpId>,
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
    records: HashMap<OpId, Record>,
    /// Finished records by (deadline, id): expiry and early eviction both
    /// take from the front. Exactly the finished records are in here, so it
    /// is bounded by `max_records`.
    finished: BTreeSet<(Instant, OpId)>,
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
            ExpiredIds { cap: config.max_expired_ids, order: VecDeque::new(), set: HashSet::new(), watermark: None };
        OperationTable {
            config,
            records: HashMap::new(),
            finished: BTreeSet::new(),
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
        let Some(record) = self.records.get_mut(&op) else {
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
            RecordState::Sealed { outcome, .. } => Ok(Admission::Replay(outcome.clone())),
            RecordState::Released { deadline } | RecordState::Indeterminate { deadline } => {
                if !idem {
                    return Ok(Admission::FailIndeterminate);
                }
                self.finished.remove(&(*deadline, op));
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
            let Some(&(deadline, victim)) = self.finished.first() else {
                return Err(Rejection::Full { capacity: self.config.max_records });
            };
            self.finished.remove(&(deadline, victim));
            self.records.remove(&victim);
            self.expired.insert(victim);
            self.stats.evicted_early += 1;
        }
        let execution = self.next_execution;
        self.next_execution += 1;
        self.records
            .insert(op, Record { method, digest, policy, execution, state: RecordState::Live { waiters: Vec::new() } });
        Ok(Admission::Execute(Ticket { op, execution }))
    }

    /// Reports the outcome of an execution: the record becomes Sealed
    /// (persist) or Released (volatile), and the attached attempts to answer
    /// with the same outcome are returned.
    pub fn complete(&mut self, ticket: Ticket, outcome: ResponseBody, now: Instant) -> Result<Completion, TicketError> {
        let waiters = self.finish(ticket, now, |policy, deadline| {
            if policy.persist {
                // Sealed keeps user errors too: a retry must see the same
                // error, not a second execution (rule `retry.duplicate.sealed`).
                RecordState::Sealed { outcome: outcome.clone() }
            } else {
                RecordState::Released { deadline }
            }
        })?;
        Ok(Completion { outcome, waiters })
    }

    /// Reports that an execution's outcome became unknown (its attachment
    /// broke while it used channels): the record becomes Indeterminate and the
    /// attached attempts to answer with `Indeterminate` are returned.
    pub fn interrupt(&mut self, ticket: Ticket, now: Instant) -> Result<Vec<WaiterId>, TicketError> {
        self.finish(ticket, now, |_, deadline| RecordState::Indeterminate { deadline })
    }

    /// Moves the current, live execution named by `ticket` to the finished
    /// state `make` builds, and hands back its waiters.
    fn finish(
        &mut self,
        ticket: Ticket,
        now: Instant,
        make: impl FnOnce(MethodPolicy, Instant) -> RecordState,
    ) -> Result<Vec<WaiterId>, TicketError> {
        let now = self.tick(now);
        let deadline = now + self.config.ttl;
        let op = ticket.op;
        let record = self.records.get_mut(&op).ok_or(TicketError::Unknown { op })?;
        if record.execution != ticket.execution {
            return Err(TicketError::Stale { op, execution: ticket.execution, current: record.execution });
        }
        let RecordState::Live { waiters } = &mut record.state else {
            return Err(TicketError::Finished { op, execution: ticket.execution });
        };
        let waiters = std::mem::take(waiters);
        record.state = make(record.policy, deadline);
        self.finished.insert((deadline, op));
        Ok(waiters)
    }

    /// Removes an attached attempt whose reply sink is gone (its attachment
    /// broke). Returns whether it was attached; `false` is not an error, the
    /// execution may have completed in between.
    pub fn detach(&mut self, op: OpId, waiter: WaiterId) -> bool {
        match self.records.get_mut(&op).map(|r| &mut r.state) {
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
        while let Some(&(deadline, op)) = self.finished.first() {
            if deadline > now {
                break;
            }
            self.finished.remove(&(deadline, op));
            self.records.remove(&op);
            self.expired.insert(op);
            removed += 1;
        }
        self.stats.expired += removed as u64;
        removed
    }

    /// The state of `op`'s record, if it has one.
    pub fn state(&self, op: OpId) -> Option<OpState> {
        self.records.get(&op).map(|r| match r.state {
            RecordState::Live { .. } => OpState::Live,
            RecordState::Sealed { .. } => OpState::Sealed,
            RecordState::Released { .. } => OpState::Released,
            RecordState::Indeterminate { .. } => OpState::Indeterminate,
        })
    }

    /// Whether `op` would be rejected as expired (it has no record and is in
    /// the expired-id memory).
    pub fn is_expired(&self, op: OpId) -> bool {
        !self.records.contains_key(&op) && self.expired.contains(op)
    }

    /// Number of records (all states).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_expired_ids: usize) -> OperationConfig {
        OperationConfig { ttl: Duration::from_millis(10), max_records: 16, max_waiters_per_op: 2, max_expired_ids }
    }

    fn run_and_expire(t: &mut OperationTable, op: u64, now: Instant) {
        let p = MethodPolicy::default();
        let Ok(Admission::Execute(tk)) = t.admit(OpId(op), MethodId(1), ArgsDigest::of(b""), p, false, now) else {
            panic!("expected Execute")
        };
        t.complete(tk, ResponseBody::Cancelled, now).unwrap();
        assert_eq!(t.expire(now + Duration::from_millis(10)), 1);
    }

    #[test]
    fn expired_ids_fold_into_watermark_when_memory_is_full() {
        let base = Instant::now();
        let mut t = OperationTable::new(cfg(2));
        for (i, op) in [5, 3, 9].into_iter().enumerate() {
            run_and_expire(&mut t, op, base + Duration::from_millis(10 * i as u64));
        }
        // 5 was forgotten from the exact set: everything <= 5 is now expired.
        assert!(t.is_expired(OpId(3)) && t.is_expired(OpId(5)) && t.is_expired(OpId(9)));
        assert!(t.is_expired(OpId(1)), "below the watermark: conservative");
        assert!(!t.is_expired(OpId(6)) && !t.is_expired(OpId(10)));
    }

    #[test]
    fn zero_exact_memory_is_a_pure_watermark() {
        let base = Instant::now();
        let mut t = OperationTable::new(cfg(0));
        run_and_expire(&mut t, 4, base);
        assert!(t.is_expired(OpId(4)) && t.is_expired(OpId(0)) && !t.is_expired(OpId(5)));
    }

    #[test]
    fn too_many_waiters_is_typed_and_detach_frees_a_slot() {
        let now = Instant::now();
        let mut t = OperationTable::new(cfg(4));
        let (op, m, d, p) = (OpId(1), MethodId(1), ArgsDigest::of(b"a"), MethodPolicy::default());
        assert!(matches!(t.admit(op, m, d, p, false, now), Ok(Admission::Execute(_))));
        let Ok(Admission::Attach(w1)) = t.admit(op, m, d, p, false, now) else { panic!() };
        assert!(matches!(t.admit(op, m, d, p, false, now), Ok(Admission::Attach(_))));
        assert_eq!(t.admit(op, m, d, p, false, now), Err(Rejection::TooManyWaiters { op, limit: 2 }));
        assert!(t.detach(op, w1));
        assert!(!t.detach(op, w1));
        assert!(matches!(t.admit(op, m, d, p, false, now), Ok(Admission::Attach(_))));
    }

    #[test]
    fn clock_going_backwards_does_not_revive_or_extend() {
        let base = Instant::now();
        let mut t = OperationTable::new(cfg(4));
        run_and_expire(&mut t, 1, base + Duration::from_millis(100));
        // An earlier `now` is taken as the latest one seen.
        let p = MethodPolicy::default();
        let r = t.admit(OpId(1), MethodId(1), ArgsDigest::of(b""), p, false, base);
        assert_eq!(r, Err(Rejection::Expired { op: OpId(1) }));
    }

    #[test]
    fn op_id_metadata_roundtrip_and_malformed() {
        let mut md = Metadata::new().with_str(OP_ID_KEY, "nope", 0);
        assert_eq!(read_op_id(&md), Err(OpIdError));
        write_op_id(&mut md, OpId(9));
        assert_eq!(read_op_id(&md), Ok(Some(OpId(9))));
        assert!(md.for_forwarding().is_empty(), "an op id is never forwarded downstream");
    }
}
