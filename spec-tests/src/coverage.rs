//! Rule coverage: each rule id of `docs/spec/protocol.md` against the wire
//! cases that name it and, for rules only observable through the local
//! API, vox-core's own tests named after the rule.
//!
//! A wire case counts for a rule only if it runs over the transport whose
//! run must cover that rule ([`required_transport`]): TCP for every rule
//! but the transports' own (`transport.tls`, `transport.websocket`), which
//! need a case that runs over that transport. A tcp-only case therefore
//! never stands in for TLS, nor a tls-only case for TCP.

use crate::cases::CASES;
use crate::transport::Kind;
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
    /// The transport whose run covers it.
    pub transport: Kind,
    /// Wire cases naming the rule that run over that transport.
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

/// The transport whose run must cover rule `id`: the transport whose own
/// rule it is, or TCP.
pub fn required_transport(id: &str) -> Kind {
    Kind::ALL.into_iter().find(|k| k.own_rule() == Some(id)).unwrap_or(Kind::Tcp)
}

/// Maps every rule to its coverage.
pub fn compute(rules: Vec<Rule>, local: &[String]) -> Vec<RuleCoverage> {
    rules
        .into_iter()
        .map(|rule| {
            let transport = required_transport(&rule.id);
            let cases = CASES
                .iter()
                .filter(|c| c.rules.contains(&rule.id.as_str()) && c.runs_on(transport))
                .map(|c| c.name)
                .collect();
            let prefix = format!("{}_", snake(&rule.id));
            let local = local.iter().filter(|n| n.starts_with(&prefix)).cloned().collect();
            RuleCoverage { rule, transport, cases, local }
        })
        .collect()
}
