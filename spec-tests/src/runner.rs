//! Runs cases with bounded parallelism and reports them.

use crate::cases::{CASES, Case};
use crate::error::CaseError;
use crate::subject::SubjectCmd;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The longest one case may take before it counts as a hang.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many cases run at once.
pub const PARALLELISM: usize = 4;

/// The outcome of one case.
#[derive(Debug)]
pub struct Outcome {
    /// The case.
    pub case: &'static Case,
    /// `None` if it passed.
    pub failure: Option<String>,
    /// Why the case is expected to fail (a known bug), if it is.
    pub known: Option<String>,
}

impl Outcome {
    /// The report line.
    pub fn line(&self) -> String {
        let rules = self.case.rules.join(", ");
        match (&self.failure, &self.known) {
            (None, None) => format!("PASS {} [{}]", self.case.name, rules),
            (None, Some(why)) => format!("XPASS {} [{}] (listed as known failure: {why})", self.case.name, rules),
            (Some(what), None) => format!("FAIL {} [{}]: {}", self.case.name, rules, what),
            (Some(what), Some(why)) => format!("XFAIL {} [{}]: {} (known: {why})", self.case.name, rules, what),
        }
    }

    /// Whether this outcome fails the run.
    pub fn is_failure(&self) -> bool {
        self.failure.is_some() && self.known.is_none()
    }
}

/// Runs every case whose name contains `filter`, in parallel, printing one
/// line per case as it completes (only the failing ones unless `verbose`);
/// returns the outcomes in table order.
pub async fn run(filter: &str, cmd: SubjectCmd, known: &[(String, String)], verbose: bool) -> Vec<Outcome> {
    let sem = Arc::new(Semaphore::new(PARALLELISM));
    let mut set = tokio::task::JoinSet::new();
    for (index, case) in CASES.iter().enumerate().filter(|(_, c)| c.name.contains(filter)) {
        let sem = sem.clone();
        let cmd = cmd.clone();
        let known = known.iter().find(|(n, _)| n == case.name).map(|(_, why)| why.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            // The case runs in a task of its own so that a panic in the
            // harness is reported as this case's failure, never lost; a hung
            // case is aborted (which kills its subject).
            let mut task = tokio::spawn((case.run)(cmd));
            let failure = match tokio::time::timeout(CASE_TIMEOUT, &mut task).await {
                Err(_) => {
                    task.abort();
                    Some(format!("the case did not finish within {CASE_TIMEOUT:?} (hang)"))
                }
                Ok(Err(join)) => Some(format!("the case panicked: {join}")),
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(CaseError::Failed(e)))) => Some(e),
                Ok(Ok(Err(e))) => Some(e.to_string()),
            };
            let outcome = Outcome { case, failure, known };
            if verbose || outcome.is_failure() {
                println!("{}", outcome.line());
            }
            (index, outcome)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(o) => out.push(o),
            Err(e) => eprintln!("spec-tests: a case task failed: {e}"),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}

/// Parses a known-failures list: `<case> # <why>` per line, `#` comments.
pub fn parse_known(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('#') {
            Some((name, why)) => (name.trim().to_string(), why.trim().to_string()),
            None => (l.to_string(), "known failure".to_string()),
        })
        .collect()
}
