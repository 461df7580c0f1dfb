//! `spec-tests run [filter]` runs the conformance cases against the subject;
//! `spec-tests coverage [--allow-pending]` maps the rules of
//! `docs/spec/protocol.md` to cases; `spec-tests list` prints the table.

use std::path::PathBuf;
use std::process::ExitCode;
use vox_spec_tests::cases::CASES;
use vox_spec_tests::coverage;
use vox_spec_tests::runner;
use vox_spec_tests::subject::SubjectCmd;

fn root() -> PathBuf {
    std::env::var_os("VOX_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
}

fn run(filter: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spec-tests: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let cmd = SubjectCmd::from_env();
    eprintln!("spec-tests: subject command: {}", cmd.0);
    let started = std::time::Instant::now();
    let known = match std::env::var_os("SPEC_KNOWN_FAILURES") {
        Some(p) if p.is_empty() => Vec::new(),
        Some(p) => std::fs::read_to_string(p).map(|t| runner::parse_known(&t)).unwrap_or_default(),
        None => std::fs::read_to_string(root().join("spec-tests/known-failures.txt"))
            .map(|t| runner::parse_known(&t))
            .unwrap_or_default(),
    };
    let outcomes = rt.block_on(runner::run(filter, cmd, &known));
    let failed: Vec<_> = outcomes.iter().filter(|o| o.is_failure()).collect();
    let xfail = outcomes.iter().filter(|o| o.failure.is_some() && o.known.is_some()).count();
    println!(
        "spec-tests: {} cases, {} passed, {} failed, {} known failures in {:.1?}",
        outcomes.len(),
        outcomes.len() - failed.len() - xfail,
        failed.len(),
        xfail,
        started.elapsed()
    );
    for o in &failed {
        println!("{}", o.line());
    }
    if outcomes.is_empty() || !failed.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn coverage_cmd(allow_pending: bool) -> ExitCode {
    let root = root();
    let list = root.join("docs/spec/protocol.md");
    let text = match std::fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("spec-tests: cannot read {}: {e}", list.display());
            return ExitCode::from(2);
        }
    };
    let local = match coverage::local_tests(&root.join("rust/vox-core/tests")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("spec-tests: cannot scan vox-core tests: {e}");
            return ExitCode::from(2);
        }
    };
    let rules = coverage::parse_rules(&text);
    let known: Vec<&str> = rules.iter().map(|r| r.id.as_str()).collect();
    let mut bad_ids = Vec::new();
    for c in CASES {
        for r in c.rules {
            if !known.contains(r) {
                bad_ids.push(format!("{} names unknown rule {r}", c.name));
            }
        }
    }
    let report = coverage::compute(rules, &local);
    let mut missing = Vec::new();
    for rc in &report {
        if rc.cases.is_empty() && rc.local.is_empty() {
            println!("MISSING {}{}", rc.rule.id, if rc.rule.pending { " (pending)" } else { "" });
            missing.push(&rc.rule);
        } else if rc.cases.is_empty() {
            println!("LOCAL   {}: {}", rc.rule.id, rc.local.join(", "));
        } else {
            println!("WIRE    {}: {}", rc.rule.id, rc.cases.join(", "));
        }
    }
    for b in &bad_ids {
        println!("ERROR   {b}");
    }
    let covered = report.len() - missing.len();
    println!("coverage: {covered}/{} rules covered, {} missing", report.len(), missing.len());
    let only_pending = missing.iter().all(|r| r.pending);
    let missing_ok = missing.is_empty() || (allow_pending && only_pending);
    if !bad_ids.is_empty() || !missing_ok { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(args.get(1).map(String::as_str).unwrap_or("")),
        Some("coverage") => coverage_cmd(args.iter().any(|a| a == "--allow-pending")),
        Some("list") => {
            for c in CASES {
                println!("{} {:?} [{}]", c.name, c.direction, c.rules.join(", "));
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: spec-tests run [filter] | spec-tests coverage [--allow-pending] | spec-tests list");
            ExitCode::from(2)
        }
    }
}
