//! `spec-tests run [filter] [--only <filter>] [--repeat <n>]` runs the
//! conformance cases whose name contains the filter against the subject,
//! `n` times in a row (default 1), stopping at the first failing run;
//! `spec-tests coverage [--allow-pending]` maps the rules of
//! `docs/spec/protocol.md` to cases; `spec-tests list` prints the table.

use std::path::PathBuf;
use std::process::ExitCode;
use vox_spec_tests::cases::{CASES, RESTRICTED};
use vox_spec_tests::coverage;
use vox_spec_tests::runner;
use vox_spec_tests::subject::SubjectCmd;
use vox_spec_tests::transport::{self, Kind};

fn root() -> PathBuf {
    std::env::var_os("VOX_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// The options of `spec-tests run`.
struct RunOpts {
    filter: String,
    repeat: u32,
}

fn parse_run(args: &[String]) -> Result<RunOpts, String> {
    let mut opts = RunOpts { filter: String::new(), repeat: 1 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--only" => opts.filter = it.next().ok_or("--only needs a filter")?.clone(),
            "--repeat" => {
                let n = it.next().ok_or("--repeat needs a count")?;
                opts.repeat = n.parse().map_err(|_| format!("--repeat {n:?}: not a count"))?;
                if opts.repeat == 0 {
                    return Err("--repeat 0: nothing to run".into());
                }
            }
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            other => opts.filter = other.to_string(),
        }
    }
    Ok(opts)
}

fn run(opts: &RunOpts) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spec-tests: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let transport = match transport::init() {
        Ok(t) => t.kind,
        Err(e) => {
            eprintln!("spec-tests: transport: {e}");
            return ExitCode::from(2);
        }
    };
    let code = run_over(opts, &rt, transport);
    transport::cleanup();
    code
}

fn run_over(opts: &RunOpts, rt: &tokio::runtime::Runtime, transport: Kind) -> ExitCode {
    let cmd = SubjectCmd::from_env();
    eprintln!("spec-tests: subject command: {}", cmd.0);
    eprintln!("spec-tests: transport: {} (SPEC_TRANSPORT)", transport.name());
    let started = std::time::Instant::now();
    let known = match std::env::var_os("SPEC_KNOWN_FAILURES") {
        Some(p) if p.is_empty() => Vec::new(),
        Some(p) => std::fs::read_to_string(p).map(|t| runner::parse_known(&t)).unwrap_or_default(),
        None => std::fs::read_to_string(root().join("spec-tests/known-failures.txt"))
            .map(|t| runner::parse_known(&t))
            .unwrap_or_default(),
    };
    let repeat = opts.repeat;
    for round in 1..=repeat {
        // One run prints every case; repeated runs only failures.
        let outcomes = rt.block_on(runner::run(&opts.filter, cmd.clone(), &known, repeat == 1, transport));
        let failed: Vec<_> = outcomes.iter().filter(|o| o.is_failure()).collect();
        let xfail = outcomes.iter().filter(|o| o.failure.is_some() && o.known.is_some()).count();
        let skipped = outcomes.iter().filter(|o| o.skipped.is_some()).count();
        let last = round == repeat || outcomes.is_empty() || !failed.is_empty();
        if !last {
            continue;
        }
        let of = if repeat > 1 { format!(" (run {round} of {repeat})") } else { String::new() };
        println!(
            "spec-tests: {} cases over {}, {} passed, {} failed, {} known failures, {} skipped (not for {}) in {:.1?}{of}",
            outcomes.len(),
            transport.name(),
            outcomes.len() - failed.len() - xfail - skipped,
            failed.len(),
            xfail,
            skipped,
            transport.name(),
            started.elapsed()
        );
        for o in &failed {
            println!("{}", o.line());
        }
        if outcomes.len() == skipped {
            println!("spec-tests: no case ran");
            return ExitCode::FAILURE;
        }
        // A whole run over a transport other than TCP must have run and
        // passed a case of that transport's own rule (the static coverage
        // check counts those cases for their transport's run only).
        if let Some(rule) = transport.own_rule().filter(|_| opts.filter.is_empty())
            && !outcomes.iter().any(|o| o.passed() && o.case.rules.contains(&rule))
        {
            println!("spec-tests: coverage: no case of rule {rule} passed in this {} run", transport.name());
            return ExitCode::FAILURE;
        }
        if !failed.is_empty() {
            if repeat > 1 {
                println!("spec-tests: run {round} of {repeat} failed (the {} run(s) before it passed)", round - 1);
            }
            return ExitCode::FAILURE;
        }
    }
    if repeat > 1 {
        println!("spec-tests: all {repeat} runs passed");
    }
    ExitCode::SUCCESS
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
    for (name, _, _) in RESTRICTED {
        if !CASES.iter().any(|c| c.name == *name) {
            bad_ids.push(format!("cases::RESTRICTED names unknown case {name}"));
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
            println!("WIRE    {} ({} run): {}", rc.rule.id, rc.transport.name(), rc.cases.join(", "));
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
        Some("run") => match parse_run(&args[1..]) {
            Ok(opts) => run(&opts),
            Err(e) => {
                eprintln!("spec-tests run: {e}");
                ExitCode::from(2)
            }
        },
        Some("coverage") => coverage_cmd(args.iter().any(|a| a == "--allow-pending")),
        Some("list") => {
            for c in CASES {
                println!("{} {:?} [{}]", c.name, c.direction, c.rules.join(", "));
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: spec-tests run [filter] [--only <filter>] [--repeat <n>] | spec-tests coverage [--allow-pending] | spec-tests list"
            );
            ExitCode::from(2)
        }
    }
}
