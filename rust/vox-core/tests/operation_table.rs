//! The session operation table (PROTOCOL.md section 10): one test per rule,
//! then a model-based test that drives the real table and a small reference
//! model with random admit / complete / interrupt / detach / advance-time
//! sequences and checks that they agree, that a non-idem operation id runs at
//! most once ever, and that every admitted attempt ends in exactly one outcome.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 1,000).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vox_core::test_util::operations::{
    Admission, ArgsDigest, ConflictKind, MethodPolicy, OpId, OpState, OperationConfig, OperationStats, OperationTable,
    Rejection, Ticket, TicketError, WaiterId,
};
use vox_core::wire::{Blob, MethodId, ResponseBody};

const TTL: Duration = Duration::from_millis(50);

fn config() -> OperationConfig {
    OperationConfig { ttl: TTL, max_records: 8, max_waiters_per_op: 4, max_expired_ids: 64 }
}

const VOLATILE: MethodPolicy = MethodPolicy { idem: false, persist: false };
const PERSIST: MethodPolicy = MethodPolicy { idem: false, persist: true };
const IDEM: MethodPolicy = MethodPolicy { idem: true, persist: false };

const M: MethodId = MethodId(10);

fn args() -> ArgsDigest {
    ArgsDigest::of(b"args")
}

fn ok(byte: u8) -> ResponseBody {
    ResponseBody::Ok(Blob::from(vec![byte]))
}

fn execute(t: &mut OperationTable, op: u64, policy: MethodPolicy, channels: bool, now: Instant) -> Ticket {
    match t.admit(OpId(op), M, args(), policy, channels, now) {
        Ok(Admission::Execute(ticket)) => ticket,
        other => panic!("expected Execute, got {other:?}"),
    }
}

#[test]
fn retry_duplicate_live_attaches_without_second_execution() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    let ticket = execute(&mut t, 1, VOLATILE, false, now);
    let Ok(Admission::Attach(w1)) = t.admit(OpId(1), M, args(), VOLATILE, false, now) else { panic!() };
    let Ok(Admission::Attach(w2)) = t.admit(OpId(1), M, args(), VOLATILE, false, now) else { panic!() };
    assert_ne!(w1, w2);
    assert_eq!(t.state(OpId(1)), Some(OpState::Live));
    let done = t.complete(ticket, ok(7), now).unwrap();
    assert_eq!(done.outcome, ok(7));
    assert_eq!(done.waiters, vec![w1, w2], "every attached attempt gets the one execution's result");
}

#[test]
fn retry_duplicate_sealed_replays_outcome() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    let ticket = execute(&mut t, 1, PERSIST, false, now);
    t.complete(ticket, ok(3), now).unwrap();
    assert_eq!(t.state(OpId(1)), Some(OpState::Sealed));
    for _ in 0..2 {
        assert_eq!(t.admit(OpId(1), M, args(), PERSIST, false, now), Ok(Admission::Replay(ok(3))));
    }
}

#[test]
fn retry_duplicate_sealed_replays_user_error() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    let ticket = execute(&mut t, 1, PERSIST, false, now);
    let err = ResponseBody::User(Blob::from(b"no such account".to_vec()));
    t.complete(ticket, err.clone(), now).unwrap();
    assert_eq!(t.admit(OpId(1), M, args(), PERSIST, false, now), Ok(Admission::Replay(err)));
}

#[test]
fn retry_op_id_conflict_different_method_rejected() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    execute(&mut t, 1, VOLATILE, false, now);
    let other = MethodId(11);
    assert_eq!(
        t.admit(OpId(1), other, args(), VOLATILE, false, now),
        Err(Rejection::Conflict { op: OpId(1), kind: ConflictKind::Method { recorded: M, attempted: other } })
    );
    assert_eq!(t.state(OpId(1)), Some(OpState::Live), "a conflict does not touch the record");
}

#[test]
fn retry_op_id_conflict_different_args_rejected() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    let ticket = execute(&mut t, 1, PERSIST, false, now);
    t.complete(ticket, ok(1), now).unwrap();
    assert_eq!(
        t.admit(OpId(1), M, ArgsDigest::of(b"other args"), PERSIST, false, now),
        Err(Rejection::Conflict { op: OpId(1), kind: ConflictKind::Args })
    );
}

#[test]
fn retry_released_non_idem_fails_indeterminate() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    let ticket = execute(&mut t, 1, VOLATILE, false, now);
    t.complete(ticket, ok(1), now).unwrap();
    assert_eq!(t.state(OpId(1)), Some(OpState::Released));
    assert_eq!(t.admit(OpId(1), M, args(), VOLATILE, false, now), Ok(Admission::FailIndeterminate));
    // Indeterminate + non-idem fails closed as well.
    let ticket = execute(&mut t, 2, VOLATILE, true, now);
    assert_eq!(t.interrupt(ticket, now), Ok(vec![]));
    assert_eq!(t.state(OpId(2)), Some(OpState::Indeterminate));
    assert_eq!(t.admit(OpId(2), M, args(), VOLATILE, true, now), Ok(Admission::FailIndeterminate));
}

#[test]
fn retry_released_idem_reexecutes() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    let first = execute(&mut t, 1, IDEM, false, now);
    t.complete(first, ok(1), now).unwrap();
    let Ok(Admission::ReExecute(second)) = t.admit(OpId(1), M, args(), IDEM, false, now) else { panic!() };
    assert_eq!(second.op(), OpId(1));
    assert!(second.execution() > first.execution());
    assert_eq!(t.state(OpId(1)), Some(OpState::Live));
    // Indeterminate + idem re-executes too.
    t.interrupt(second, now).unwrap();
    assert!(matches!(t.admit(OpId(1), M, args(), IDEM, true, now), Ok(Admission::ReExecute(_))));
}

#[test]
fn retry_channel_recovery_non_idem_live_fails_indeterminate() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    let ticket = execute(&mut t, 1, VOLATILE, true, now);
    // The retry brings fresh channels; the live execution's are dead: fail closed.
    assert_eq!(t.admit(OpId(1), M, args(), VOLATILE, true, now), Ok(Admission::FailIndeterminate));
    assert_eq!(t.state(OpId(1)), Some(OpState::Live));
    // Idem with channels supersedes the live execution instead.
    let old = execute(&mut t, 2, IDEM, true, now);
    let Ok(Admission::Attach(w)) = t.admit(OpId(2), M, args(), IDEM, false, now) else { panic!() };
    let Ok(Admission::Supersede { ticket: new, stale }) = t.admit(OpId(2), M, args(), IDEM, true, now) else {
        panic!()
    };
    assert_eq!(stale, old);
    assert!(matches!(t.complete(old, ok(0), now), Err(TicketError::Stale { .. })));
    assert_eq!(t.complete(new, ok(1), now).unwrap().waiters, vec![w], "waiters move to the new execution");
    let _ = ticket;
}

#[test]
fn operation_ttl_live_never_expires() {
    let base = Instant::now();
    let mut t = OperationTable::new(config());
    let ticket = execute(&mut t, 1, PERSIST, false, base);
    let later = base + TTL * 1000;
    assert_eq!(t.expire(later), 0);
    assert!(matches!(t.admit(OpId(1), M, args(), PERSIST, false, later), Ok(Admission::Attach(_))));
    t.complete(ticket, ok(1), later).unwrap();
    // The TTL counts from completion.
    assert_eq!(t.admit(OpId(1), M, args(), PERSIST, false, later + TTL / 2), Ok(Admission::Replay(ok(1))));
    assert_eq!(t.expire(later + TTL), 1);
    assert_eq!(t.state(OpId(1)), None);
}

#[test]
fn operation_ttl_expired_id_rejected_not_absent() {
    let base = Instant::now();
    for policy in [VOLATILE, PERSIST, IDEM] {
        let mut t2 = OperationTable::new(config());
        let ticket = execute(&mut t2, 1, policy, false, base);
        t2.complete(ticket, ok(1), base).unwrap();
        assert_eq!(t2.admit(OpId(1), M, args(), policy, false, base + TTL), Err(Rejection::Expired { op: OpId(1) }));
        assert_eq!(t2.state(OpId(1)), None);
    }
    // Also when the id's memory has folded into the watermark.
    let cfg = OperationConfig { max_expired_ids: 1, ..config() };
    let mut t = OperationTable::new(cfg);
    for op in [1, 2, 3] {
        let ticket = execute(&mut t, op, VOLATILE, false, base);
        t.complete(ticket, ok(1), base).unwrap();
    }
    assert_eq!(t.expire(base + TTL), 3);
    for op in [1, 2, 3] {
        assert_eq!(t.admit(OpId(op), M, args(), VOLATILE, false, base + TTL), Err(Rejection::Expired { op: OpId(op) }));
    }
    execute(&mut t, 4, VOLATILE, false, base + TTL);
}

// The expired-id memory is exact for exactly `max_expired_ids` ids: a new
// id below them is still new until one more expiry folds the oldest into
// the watermark. Every expiry is counted.
#[test]
fn operation_ttl_expired_ids_are_exact_for_exactly_the_cap() {
    let base = Instant::now();
    let cfg = OperationConfig { max_expired_ids: 2, ..config() };
    let mut t = OperationTable::new(cfg);
    for op in [10, 20] {
        let ticket = execute(&mut t, op, VOLATILE, false, base);
        t.complete(ticket, ok(1), base).unwrap();
    }
    assert_eq!(t.expire(base + TTL), 2);
    assert_eq!(t.stats().expired, 2);
    assert!(t.is_expired(OpId(10)) && t.is_expired(OpId(20)));
    assert!(!t.is_expired(OpId(5)) && !t.is_expired(OpId(15)), "two ids fit the exact memory: no watermark yet");
    let ticket = execute(&mut t, 30, VOLATILE, false, base + TTL);
    t.complete(ticket, ok(1), base + TTL).unwrap();
    assert_eq!(t.expire(base + TTL * 2), 1);
    assert_eq!(t.stats(), OperationStats { expired: 3, evicted_early: 0 });
    assert!(t.is_expired(OpId(5)) && t.is_expired(OpId(10)), "the oldest folded into the watermark");
    assert!(t.is_expired(OpId(20)) && t.is_expired(OpId(30)));
    assert!(!t.is_expired(OpId(15)) && !t.is_expired(OpId(25)), "above the watermark, only the exact ids");
    execute(&mut t, 25, VOLATILE, false, base + TTL * 2);
}

// The table's inspection: its configuration, whether it holds any record,
// and ids as they appear in its errors.
#[test]
fn operation_table_reports_its_config_emptiness_and_ids() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    assert_eq!(t.config(), &config());
    assert!(t.is_empty());
    assert_eq!(t.len(), 0);
    execute(&mut t, 42, VOLATILE, false, now);
    assert!(!t.is_empty() && t.len() == 1);
    assert_eq!(OpId(42).to_string(), "42");
    let expired = Rejection::Expired { op: OpId(42) };
    assert_eq!(expired.to_string(), "operation id 42 has expired");
}

#[test]
fn operation_table_bounded_full_is_typed_error() {
    let now = Instant::now();
    let cfg = OperationConfig { max_records: 2, ..config() };
    let mut t = OperationTable::new(cfg);
    let a = execute(&mut t, 1, PERSIST, false, now);
    execute(&mut t, 2, PERSIST, false, now);
    assert_eq!(t.admit(OpId(3), M, args(), PERSIST, false, now), Err(Rejection::Full { capacity: 2 }));
    assert_eq!(t.len(), 2);
    // A finished record is evictable: it is expired early, and its id is then
    // rejected as expired rather than taken as new.
    t.complete(a, ok(1), now).unwrap();
    execute(&mut t, 3, PERSIST, false, now);
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats().evicted_early, 1);
    assert_eq!(t.admit(OpId(1), M, args(), PERSIST, false, now), Err(Rejection::Expired { op: OpId(1) }));
}

#[test]
fn operation_stale_ticket_rejected() {
    let now = Instant::now();
    let mut t = OperationTable::new(config());
    let first = execute(&mut t, 1, IDEM, true, now);
    t.interrupt(first, now).unwrap();
    let Ok(Admission::ReExecute(second)) = t.admit(OpId(1), M, args(), IDEM, true, now) else { panic!() };
    let stale = TicketError::Stale { op: OpId(1), execution: first.execution(), current: second.execution() };
    assert_eq!(t.complete(first, ok(9), now), Err(stale.clone()));
    assert_eq!(t.interrupt(first, now), Err(stale));
    assert_eq!(t.state(OpId(1)), Some(OpState::Live), "the stale ticket did not act on the new execution");
    t.complete(second, ok(1), now).unwrap();
    assert_eq!(
        t.complete(second, ok(1), now),
        Err(TicketError::Finished { op: OpId(1), execution: second.execution() })
    );
    // A ticket for an id the table never saw.
    let mut other = OperationTable::new(config());
    assert_eq!(other.complete(second, ok(1), now), Err(TicketError::Unknown { op: OpId(1) }));
}

// --- model-based test

const OPS: u64 = 6;
const MAX_RECORDS: usize = 4;
const MAX_WAITERS: usize = 3;

/// Methods 0..4; the policy is a function of the method.
fn policy_of(method: u64) -> MethodPolicy {
    MethodPolicy { idem: method >= 2, persist: method % 2 == 1 }
}

#[derive(Clone, Debug)]
enum Event {
    /// An attempt of `op`; `wrong_method` / `wrong_args` make it differ from
    /// the op's usual call.
    Admit { op: u64, wrong_method: bool, wrong_args: bool, channels: bool },
    /// Complete the `slot`-th ticket ever issued (maybe stale or finished).
    Complete { slot: usize, outcome: u8 },
    /// Interrupt the `slot`-th ticket ever issued.
    Interrupt { slot: usize },
    /// Detach the `slot`-th waiter ever issued.
    Detach { slot: usize },
    /// Move the clock forward.
    Advance { ms: u64 },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        5 => (0..OPS, prop::bool::weighted(0.1), prop::bool::weighted(0.1), any::<bool>()).prop_map(
            |(op, wrong_method, wrong_args, channels)| Event::Admit { op, wrong_method, wrong_args, channels }
        ),
        3 => (0..16usize, 0..3u8).prop_map(|(slot, outcome)| Event::Complete { slot, outcome }),
        1 => (0..16usize).prop_map(|slot| Event::Interrupt { slot }),
        1 => (0..16usize).prop_map(|slot| Event::Detach { slot }),
        2 => (0..40u64).prop_map(|ms| Event::Advance { ms }),
    ]
}

fn outcome_of(k: u8) -> ResponseBody {
    match k {
        0 => ok(1),
        1 => ResponseBody::User(Blob::from(vec![2])),
        _ => ResponseBody::Cancelled,
    }
}

/// The reference model: unbounded exact memory, linear scans, no cleverness.
#[derive(Clone, Debug, PartialEq)]
enum MState {
    Live { waiters: Vec<usize> },
    Sealed(ResponseBody),
    Released,
    Indeterminate,
}

#[derive(Clone, Debug)]
struct MRec {
    method: u64,
    wrong_args: bool,
    /// Index (into `Harness::tickets`) of the current execution.
    current: usize,
    state: MState,
    /// Set when finished: (deadline in model milliseconds, how many
    /// executions finished before this one). Records with one deadline
    /// expire in the order they finished.
    deadline: Option<(u64, u64)>,
}

/// What the model predicts for an admission.
#[derive(Debug, PartialEq)]
enum Expect {
    Execute,
    Attach,
    Replay(ResponseBody),
    ReExecute,
    Supersede,
    FailIndeterminate,
    ConflictMethod,
    ConflictArgs,
    Expired,
    Full,
    TooManyWaiters,
}

/// How an admitted attempt ended.
#[derive(Clone, Debug, PartialEq)]
enum End {
    Answered(ResponseBody),
    Rejected,
    /// Its reply sink was removed by the driver (detach).
    Detached,
}

struct Harness {
    table: OperationTable,
    base: Instant,
    now_ms: u64,
    records: HashMap<u64, MRec>,
    expired: Vec<u64>,
    /// Every ticket issued: (real ticket, attempt index of the executor).
    tickets: Vec<(Ticket, usize)>,
    /// Every waiter issued: (real id, op, attempt index).
    waiters: Vec<(WaiterId, u64, usize)>,
    /// Per attempt, how it ended (None: still owed an outcome).
    attempts: Vec<Option<End>>,
    /// Executions per op: (count, any of them non-idem).
    executions: HashMap<u64, (u32, bool)>,
    /// Executions finished so far.
    finished: u64,
}

impl Harness {
    fn new() -> Harness {
        let config = OperationConfig {
            ttl: TTL,
            max_records: MAX_RECORDS,
            max_waiters_per_op: MAX_WAITERS,
            max_expired_ids: 64,
        };
        Harness {
            table: OperationTable::new(config),
            base: Instant::now(),
            now_ms: 0,
            records: HashMap::new(),
            expired: Vec::new(),
            tickets: Vec::new(),
            waiters: Vec::new(),
            attempts: Vec::new(),
            executions: HashMap::new(),
            finished: 0,
        }
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    fn end(&mut self, attempt: usize, end: End) {
        assert_eq!(self.attempts[attempt], None, "attempt {attempt} ended twice");
        self.attempts[attempt] = Some(end);
    }

    fn model_expire(&mut self) {
        let now = self.now_ms;
        let due: Vec<u64> =
            self.records.iter().filter(|(_, r)| r.deadline.is_some_and(|(d, _)| d <= now)).map(|(op, _)| *op).collect();
        for op in due {
            self.records.remove(&op);
            self.expired.push(op);
        }
    }

    fn count_execution(&mut self, op: u64, method: u64) {
        let e = self.executions.entry(op).or_insert((0, false));
        e.0 += 1;
        e.1 |= !policy_of(method).idem;
        assert!(!(e.1 && e.0 > 1), "non-idem operation {op} executed {} times", e.0);
    }

    fn predict(&mut self, op: u64, method: u64, wrong_args: bool, channels: bool) -> Expect {
        self.model_expire();
        let Some(rec) = self.records.get(&op) else {
            if self.expired.contains(&op) {
                return Expect::Expired;
            }
            if self.records.len() >= MAX_RECORDS {
                let victim = self.records.iter().filter_map(|(op, r)| r.deadline.map(|d| (d, *op))).min();
                let Some((_, victim)) = victim else { return Expect::Full };
                self.records.remove(&victim);
                self.expired.push(victim);
            }
            return Expect::Execute;
        };
        if rec.method != method {
            return Expect::ConflictMethod;
        }
        if rec.wrong_args != wrong_args {
            return Expect::ConflictArgs;
        }
        let idem = policy_of(method).idem;
        match &rec.state {
            MState::Live { waiters } if !channels => {
                if waiters.len() >= MAX_WAITERS {
                    Expect::TooManyWaiters
                } else {
                    Expect::Attach
                }
            }
            MState::Live { .. } if idem => Expect::Supersede,
            MState::Live { .. } => Expect::FailIndeterminate,
            MState::Sealed(outcome) => Expect::Replay(outcome.clone()),
            MState::Released | MState::Indeterminate if idem => Expect::ReExecute,
            MState::Released | MState::Indeterminate => Expect::FailIndeterminate,
        }
    }

    fn admit(&mut self, op: u64, wrong_method: bool, wrong_args: bool, channels: bool) {
        let usual = op % 4;
        let method = if wrong_method { (usual + 1) % 4 } else { usual };
        let expect = self.predict(op, method, wrong_args, channels);
        let attempt = self.attempts.len();
        self.attempts.push(None);
        let digest = ArgsDigest::of(if wrong_args { b"other" } else { b"usual" });
        let real = self.table.admit(OpId(op), MethodId(method), digest, policy_of(method), channels, self.now());
        match (expect, real) {
            (Expect::Execute, Ok(Admission::Execute(ticket))) => {
                self.count_execution(op, method);
                let current = self.tickets.len();
                self.tickets.push((ticket, attempt));
                let rec = MRec { method, wrong_args, current, state: MState::Live { waiters: vec![] }, deadline: None };
                self.records.insert(op, rec);
            }
            (Expect::ReExecute, Ok(Admission::ReExecute(ticket))) => {
                self.count_execution(op, method);
                let current = self.tickets.len();
                self.tickets.push((ticket, attempt));
                let rec = self.records.get_mut(&op).unwrap();
                rec.current = current;
                rec.state = MState::Live { waiters: vec![] };
                rec.deadline = None;
            }
            (Expect::Supersede, Ok(Admission::Supersede { ticket, stale })) => {
                self.count_execution(op, method);
                let current = self.tickets.len();
                self.tickets.push((ticket, attempt));
                let rec = self.records.get_mut(&op).unwrap();
                let (old_ticket, old_attempt) = self.tickets[rec.current];
                assert_eq!(stale, old_ticket);
                rec.current = current;
                // The driver answers the superseded execution's attempt.
                self.end(old_attempt, End::Answered(ResponseBody::Indeterminate));
            }
            (Expect::Attach, Ok(Admission::Attach(w))) => {
                self.waiters.push((w, op, attempt));
                let Some(MRec { state: MState::Live { waiters }, .. }) = self.records.get_mut(&op) else { panic!() };
                waiters.push(attempt);
            }
            (Expect::Replay(body), Ok(Admission::Replay(real))) => {
                assert_eq!(body, real);
                self.end(attempt, End::Answered(real));
            }
            (Expect::FailIndeterminate, Ok(Admission::FailIndeterminate)) => {
                self.end(attempt, End::Answered(ResponseBody::Indeterminate));
            }
            (Expect::ConflictMethod, Err(Rejection::Conflict { kind: ConflictKind::Method { .. }, .. }))
            | (Expect::ConflictArgs, Err(Rejection::Conflict { kind: ConflictKind::Args, .. }))
            | (Expect::Expired, Err(Rejection::Expired { .. }))
            | (Expect::Full, Err(Rejection::Full { .. }))
            | (Expect::TooManyWaiters, Err(Rejection::TooManyWaiters { .. })) => self.end(attempt, End::Rejected),
            (expect, real) => panic!("op {op}: model expected {expect:?}, table said {real:?}"),
        }
    }

    /// The model's verdict on a ticket, and the record if it is current and live.
    fn check_ticket(&self, slot: usize) -> Result<(), &'static str> {
        let (ticket, _) = self.tickets[slot];
        match self.records.get(&ticket.op().0) {
            None => Err("unknown"),
            Some(rec) if rec.current != slot => Err("stale"),
            Some(MRec { state: MState::Live { .. }, .. }) => Ok(()),
            Some(_) => Err("finished"),
        }
    }

    fn finish(&mut self, slot: usize, outcome: Option<ResponseBody>) {
        if self.tickets.is_empty() {
            return;
        }
        let slot = slot % self.tickets.len();
        let (ticket, executor) = self.tickets[slot];
        let expect = self.check_ticket(slot);
        let now = self.now();
        let real = match outcome.clone() {
            Some(body) => self.table.complete(ticket, body, now).map(|c| c.waiters),
            None => self.table.interrupt(ticket, now),
        };
        match (expect, real) {
            (Ok(()), Ok(real_waiters)) => {
                let op = ticket.op().0;
                let rec = self.records.get_mut(&op).unwrap();
                let MState::Live { waiters } = std::mem::replace(&mut rec.state, MState::Released) else { panic!() };
                let persist = policy_of(rec.method).persist;
                rec.state = match &outcome {
                    Some(body) if persist => MState::Sealed(body.clone()),
                    Some(_) => MState::Released,
                    None => MState::Indeterminate,
                };
                rec.deadline = Some((self.now_ms + TTL.as_millis() as u64, self.finished));
                self.finished += 1;
                let answer = outcome.unwrap_or(ResponseBody::Indeterminate);
                let expected_waiters: Vec<WaiterId> =
                    waiters.iter().map(|a| self.waiters.iter().find(|w| w.2 == *a).unwrap().0).collect();
                assert_eq!(real_waiters, expected_waiters);
                self.end(executor, End::Answered(answer.clone()));
                for a in waiters {
                    self.end(a, End::Answered(answer.clone()));
                }
            }
            (Err("unknown"), Err(TicketError::Unknown { .. }))
            | (Err("stale"), Err(TicketError::Stale { .. }))
            | (Err("finished"), Err(TicketError::Finished { .. })) => {}
            (expect, real) => panic!("ticket {ticket:?}: model expected {expect:?}, table said {real:?}"),
        }
    }

    fn detach(&mut self, slot: usize) {
        if self.waiters.is_empty() {
            return;
        }
        let (w, op, attempt) = self.waiters[slot % self.waiters.len()];
        let attached = match self.records.get_mut(&op) {
            Some(MRec { state: MState::Live { waiters }, .. }) if waiters.contains(&attempt) => {
                waiters.retain(|a| *a != attempt);
                true
            }
            _ => false,
        };
        assert_eq!(self.table.detach(OpId(op), w), attached);
        if attached {
            self.end(attempt, End::Detached);
        }
    }

    fn apply(&mut self, event: &Event) {
        match *event {
            Event::Admit { op, wrong_method, wrong_args, channels } => {
                self.admit(op, wrong_method, wrong_args, channels)
            }
            Event::Complete { slot, outcome } => self.finish(slot, Some(outcome_of(outcome))),
            Event::Interrupt { slot } => self.finish(slot, None),
            Event::Detach { slot } => self.detach(slot),
            Event::Advance { ms } => {
                self.now_ms += ms;
                self.model_expire();
                self.table.expire(self.now());
            }
        }
        self.check_states();
    }

    fn check_states(&self) {
        for op in 0..OPS {
            let model = self.records.get(&op).map(|r| match r.state {
                MState::Live { .. } => OpState::Live,
                MState::Sealed(_) => OpState::Sealed,
                MState::Released => OpState::Released,
                MState::Indeterminate => OpState::Indeterminate,
            });
            assert_eq!(self.table.state(OpId(op)), model, "op {op}");
            assert_eq!(self.table.is_expired(OpId(op)), self.expired.contains(&op), "op {op}");
        }
        assert!(self.table.len() <= MAX_RECORDS);
    }

    /// Completes every live execution, then checks every attempt ended once.
    fn drain(&mut self) {
        for slot in 0..self.tickets.len() {
            if self.check_ticket(slot).is_ok() {
                self.finish(slot, Some(ok(0)));
            }
        }
        for (i, end) in self.attempts.iter().enumerate() {
            assert!(end.is_some(), "attempt {i} never got an outcome");
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn operation_table_matches_reference_model(events in proptest::collection::vec(event(), 1..80)) {
        let mut h = Harness::new();
        for e in &events {
            h.apply(e);
        }
        h.drain();
    }
}
