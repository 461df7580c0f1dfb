//! [`SessionOps`]: every decision of the table turned into the right
//! handles — attached attempts answered with their execution's outcome (or
//! `Indeterminate`, or dropped when they leave), a superseded execution's
//! task stopped, and no handle of a finished execution kept.

use super::{Decision, SessionOps};
use crate::plumbing::operations::{ArgsDigest, MethodPolicy, OpId, OperationConfig, Ticket};
use crate::wire::{Blob, MethodId, ResponseBody};
use tokio::sync::oneshot::error::TryRecvError;

const OP: OpId = OpId(7);
const METHOD: MethodId = MethodId(1);
const IDEM: MethodPolicy = MethodPolicy { idem: true, persist: false };
const PLAIN: MethodPolicy = MethodPolicy { idem: false, persist: false };

fn ops(max_waiters_per_op: usize) -> SessionOps {
    SessionOps::new(OperationConfig { max_waiters_per_op, ..OperationConfig::default() })
}

fn admit(ops: &SessionOps, policy: MethodPolicy, channels: bool) -> Decision {
    ops.admit(OP, METHOD, ArgsDigest::of(b"args"), policy, channels)
}

fn run(ops: &SessionOps, policy: MethodPolicy, channels: bool) -> Ticket {
    match admit(ops, policy, channels) {
        Decision::Run(ticket) => ticket,
        _ => panic!("expected Run"),
    }
}

fn attach(ops: &SessionOps) -> (crate::plumbing::operations::WaiterId, tokio::sync::oneshot::Receiver<ResponseBody>) {
    match admit(ops, PLAIN, false) {
        Decision::Attach { op, waiter, outcome } => {
            assert_eq!(op, OP);
            (waiter, outcome)
        }
        _ => panic!("expected Attach"),
    }
}

fn running(ops: &SessionOps) -> usize {
    ops.inner.lock().running.len()
}

fn waiting(ops: &SessionOps) -> usize {
    ops.inner.lock().waiters.len()
}

fn ok() -> ResponseBody {
    ResponseBody::Ok(Blob::default())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime")
}

/// Whether the task was aborted; a task that is not is seen at once (paused
/// clock), so a missing abort fails instead of hanging.
async fn aborted(task: tokio::task::JoinHandle<()>) -> bool {
    match tokio::time::timeout(std::time::Duration::from_secs(1), task).await {
        Ok(joined) => joined.is_err_and(|e| e.is_cancelled()),
        Err(_) => false,
    }
}

// rule: retry.duplicate.live — an attached attempt gets the one execution's
// outcome; afterwards nothing of the execution is kept.
#[test]
fn retry_duplicate_live_attached_attempt_gets_the_outcome_and_nothing_is_kept() {
    runtime().block_on(async {
        let ops = ops(4);
        let ticket = run(&ops, PLAIN, false);
        let task = tokio::spawn(std::future::pending::<()>());
        ops.started(ticket, task.abort_handle());
        let (_, mut outcome) = attach(&ops);
        assert_eq!(outcome.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(ops.complete(ticket, ok()), Some(ok()));
        assert_eq!(outcome.try_recv(), Ok(ok()));
        assert_eq!((running(&ops), waiting(&ops)), (0, 0), "the finished execution's handles are dropped");
        assert!(!task.is_finished(), "completing never aborts the execution's own task");
        task.abort();
    });
}

// rule: retry.channel.recovery — an interrupted execution's attached
// attempts are answered Indeterminate.
#[test]
fn retry_interrupted_execution_answers_its_waiters_indeterminate() {
    runtime().block_on(async {
        let ops = ops(4);
        let ticket = run(&ops, PLAIN, false);
        ops.started(ticket, tokio::spawn(async {}).abort_handle());
        let (_, mut first) = attach(&ops);
        let (_, mut second) = attach(&ops);
        ops.interrupt(ticket);
        assert_eq!(first.try_recv(), Ok(ResponseBody::Indeterminate));
        assert_eq!(second.try_recv(), Ok(ResponseBody::Indeterminate));
        assert_eq!((running(&ops), waiting(&ops)), (0, 0));
        // The record is Indeterminate now: a non-idem retry fails closed.
        assert!(matches!(admit(&ops, PLAIN, false), Decision::Answer(ResponseBody::Indeterminate)));
    });
}

// An attempt that goes away is detached: its sink is dropped and its place
// among the execution's waiters is free again.
#[test]
fn retry_detached_attempt_frees_its_place_and_its_sink() {
    let ops = ops(1);
    let ticket = run(&ops, PLAIN, false);
    let (waiter, mut outcome) = attach(&ops);
    assert!(matches!(admit(&ops, PLAIN, false), Decision::Answer(ResponseBody::Rejected { .. })), "one waiter at most");
    ops.detach(OP, waiter);
    assert_eq!(outcome.try_recv(), Err(TryRecvError::Closed), "the sink of a detached attempt is dropped");
    assert_eq!(waiting(&ops), 0);
    let (_, mut again) = attach(&ops);
    assert_eq!(ops.complete(ticket, ok()), Some(ok()));
    assert_eq!(again.try_recv(), Ok(ok()));
}

// rule: retry.channel.volatile.rebinding — an idem retry with fresh channels
// supersedes the live execution: its task is stopped, its late completion
// refused, and the new execution is the one that can be stopped next.
#[test]
fn retry_channel_volatile_rebinding_superseded_execution_is_stopped() {
    runtime().block_on(async {
        let ops = ops(4);
        let stale = run(&ops, IDEM, true);
        let old_task = tokio::spawn(std::future::pending::<()>());
        ops.started(stale, old_task.abort_handle());
        let fresh = run(&ops, IDEM, true);
        assert_ne!(fresh, stale);
        assert!(aborted(old_task).await, "the superseded execution's task is aborted");
        let new_task = tokio::spawn(std::future::pending::<()>());
        ops.started(fresh, new_task.abort_handle());
        // The stale execution's late report changes nothing of the new one.
        assert!(ops.complete(stale, ok()).is_none(), "a superseded execution's completion is refused");
        ops.interrupt(stale);
        assert_eq!(running(&ops), 1, "the new execution's handle is kept");
        assert!(!new_task.is_finished());
        let third = run(&ops, IDEM, true);
        assert!(aborted(new_task).await, "the newest execution is the one stopped");
        assert_eq!(ops.complete(third, ok()), Some(ok()));
    });
}

#[test]
fn session_ops_debug_names_itself() {
    assert!(format!("{:?}", ops(1)).starts_with("SessionOps"));
}
