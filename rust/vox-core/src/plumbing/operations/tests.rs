//! Unit tests of [`OperationTable`]'s own edge cases: the expired-id
//! watermark, the waiter limit, a clock that goes backwards, and the op id's
//! metadata encoding.

use super::*;
use crate::wire::{Metadata, MethodId, ResponseBody};
use std::time::{Duration, Instant};

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
