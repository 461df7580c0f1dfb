//! Rule coverage: each rule id of `docs/spec/protocol.md` against the wire
//! cases that name it and, for rules only observable through the local
//! API, vox-core's own tests named after the rule.

use crate::cases::CASES;
use std::path::Path;

/// One rule of the project's rule list.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule id, e.g. `rpc.channel.close`.
    pub id: String,
    /// Marked `(pending)` in the list: not implemented by vox-core yet.
    pub pending: bool,
}

/// The coverage of one rule.
#[derive(Debug)]
pub struct RuleCoverage {
    /// The rule.
    pub rule: Rule,
    /// Wire cases naming the rule.
    pub cases: Vec<&'static str>,
    /// vox-core tests named after the rule.
    pub local: Vec<String>,
}

/// Parses rule lines: ``- `rule.id` ...`` (with `(pending)` for rules
/// not implemented yet).
pub fn parse_rules(text: &str) -> Vec<Rule> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("- `")?;
            let (id, tail) = rest.split_once('`')?;
            Some(Rule { id: id.to_string(), pending: tail.contains("(pending)") })
        })
        .collect()
}

/// The snake-case prefix of test names for a rule id.
pub fn snake(id: &str) -> String {
    id.replace(['.', '-'], "_")
}

/// Test function names in `dir/*.rs`.
pub fn local_tests(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p)?;
            for line in text.lines() {
                let l = line.trim_start();
                let l = l.strip_prefix("async fn ").or_else(|| l.strip_prefix("fn "));
                if let Some(name) = l.and_then(|l| l.split('(').next()) {
                    names.push(name.trim().to_string());
                }
            }
        }
    }
    Ok(names)
}

/// Maps every rule to its coverage.
pub fn compute(rules: Vec<Rule>, local: &[String]) -> Vec<RuleCoverage> {
    rules
        .into_iter()
        .map(|rule| {
            let cases = CASES.iter().filter(|c| c.rules.contains(&rule.id.as_str())).map(|c| c.name).collect();
            let prefix = format!("{}_", snake(&rule.id));
            let local = local.iter().filter(|n| n.starts_with(&prefix)).cloned().collect();
            RuleCoverage { rule, cases, local }
        })
        .collect()
}
