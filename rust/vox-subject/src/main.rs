//! The `vox-subject` binary; see the crate docs of `vox_subject` for its
//! environment variables.

use std::io::Write;
use std::process::ExitCode;
use vox_subject::{SubjectError, scenarios, server_builder};

fn env(name: &str) -> Result<String, SubjectError> {
    std::env::var(name).map_err(|_| SubjectError::Config(format!("{name} is not set")))
}

async fn serve() -> Result<(), SubjectError> {
    let session = server_builder().connect(env("PEER_ADDR")?).await?;
    let reason = session.handle.closed().await;
    eprintln!("vox-subject: session ended: {reason:?}");
    drop(session);
    Ok(())
}

async fn listen() -> Result<(), SubjectError> {
    let listener = server_builder().listen("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {addr}")?;
        out.flush()?;
    }
    match listener.accept().await {
        Ok(session) => {
            let reason = session.handle.closed().await;
            eprintln!("vox-subject: session ended: {reason:?}");
        }
        // A refused or failed establishment is an outcome, not a crash.
        Err(e) => eprintln!("vox-subject: no session: {e}"),
    }
    Ok(())
}

async fn run() -> Result<(), SubjectError> {
    let mode = std::env::var("SUBJECT_MODE").unwrap_or_else(|_| "server".into());
    match mode.as_str() {
        "server" => serve().await,
        "listen" => listen().await,
        "client" => scenarios::run(&env("CLIENT_SCENARIO")?, &env("PEER_ADDR")?).await,
        other => Err(SubjectError::Config(format!("unknown SUBJECT_MODE {other:?} (server, client or listen)"))),
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vox-subject: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vox-subject: {e}");
            ExitCode::FAILURE
        }
    }
}
