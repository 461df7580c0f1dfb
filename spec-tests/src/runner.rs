//! Runs cases with bounded parallelism and reports them.

use crate::cases::{CASES, Case};
use crate::error::CaseError;
use crate::subject::SubjectCmd;
use crate::transport::Kind;
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
    /// Why the case was not run over this run's transport, if it was not
    /// (`cases::RESTRICTED`).
    pub skipped: Option<String>,
}

impl Outcome {
    /// The report line.
    pub fn line(&self) -> String {
        let rules = self.case.rules.join(", ");
        if let Some(why) = &self.skipped {
            return format!("SKIP {} [{}]: {}", self.case.name, rules, why);
        }
        match (&self.failure, &self.known) {
            (None, None) => format!("PASS {} [{}]", self.case.name, rules),
            (None, Some(why)) => format!("XPASS {} [{}] (listed as known failure: {why})", self.case.name, rules),
            (Some(what), None) => format!("FAIL {} [{}]: {}", self.case.name, rules, what),
            (Some(what), Some(why)) => format!("XFAIL {} [{}]: {} (known: {why})", self.case.name, rules, what),
        }
    }

    /// Whether this outcome fails the run.
    pub fn is_failure(&self) -> bool {
        self.skipped.is_none() && self.failure.is_some() && self.known.is_none()
    }

    /// Whether the case ran and passed.
    pub fn passed(&self) -> bool {
        self.skipped.is_none() && self.failure.is_none()
    }
}

/// Runs every case whose name contains `filter` over `transport`, in
/// parallel, printing one line per case as it completes (only the failing
/// ones unless `verbose`); returns the outcomes in table order. A case that
/// does not run over `transport` (`cases::RESTRICTED`) is not run: its
/// outcome is skipped, with the reason.
pub async fn run(
    filter: &str,
    cmd: SubjectCmd,
    known: &[(String, String)],
    verbose: bool,
    transport: Kind,
) -> Vec<Outcome> {
    let sem = Arc::new(Semaphore::new(PARALLELISM));
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    for (index, case) in CASES.iter().enumerate().filter(|(_, c)| c.name.contains(filter)) {
        if let Some((only, why)) = case.only_on().filter(|(k, _)| *k != transport) {
            let skipped = Some(format!("only over {} ({why}); this run is over {}", only.name(), transport.name()));
            let outcome = Outcome { case, failure: None, known: None, skipped };
            if verbose {
                println!("{}", outcome.line());
            }
            out.push((index, outcome));
            continue;
        }
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
            let outcome = Outcome { case, failure, known, skipped: None };
            if verbose || outcome.is_failure() {
                println!("{}", outcome.line());
            }
            (index, outcome)
        });
    }
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
