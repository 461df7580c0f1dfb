//! The `vox-subject` binary; see the crate docs of `vox_subject` for its
//! environment variables.

use std::io::Write;
use std::process::ExitCode;
use vox_subject::{SubjectError, Transport, configure_from_env, scenarios, server_builder};

fn env(name: &str) -> Result<String, SubjectError> {
    std::env::var(name).map_err(|_| SubjectError::Config(format!("{name} is not set")))
}

async fn serve() -> Result<(), SubjectError> {
    let session = Transport::from_env()?.connect(configure_from_env(server_builder())?, &env("PEER_ADDR")?).await?;
    let reason = session.handle.closed().await;
    eprintln!("vox-subject: session ended: {reason:?}");
    drop(session);
    Ok(())
}

/// `SUBJECT_ACCEPT_STABLE=0` makes the listening subject refuse stable
/// conduits (any other value, or none, accepts them).
fn listen_builder() -> Result<vox_core::session::SessionBuilder, SubjectError> {
    let mut builder = configure_from_env(server_builder())?;
    match std::env::var("SUBJECT_ACCEPT_STABLE").as_deref() {
        Err(_) | Ok("1") => {}
        Ok("0") => builder.config_mut().accept_stable = false,
        Ok(other) => return Err(SubjectError::Config(format!("SUBJECT_ACCEPT_STABLE={other:?} (0 or 1)"))),
    }
    Ok(builder)
}

async fn listen() -> Result<(), SubjectError> {
    let listener = Transport::from_env()?.listen(listen_builder()?, "127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {addr}")?;
        out.flush()?;
    }
    // The first inbound link decides: its session, or why it failed (the
    // harness checks the subject exits after a refused link).
    let session = match listener.accept_attempt().await {
        Ok(session) => session,
        // A refused or failed establishment is an outcome, not a crash.
        Err(e) => {
            eprintln!("vox-subject: no session: {e}");
            return Ok(());
        }
    };
    // While the session lives, the listener keeps attaching links that
    // resume it (rule `session.resume`) by itself; this loop
    // only logs other outcomes and refuses a second session by dropping it.
    let more = async {
        loop {
            match listener.accept_attempt().await {
                Ok(other) => {
                    eprintln!("vox-subject: refusing a second session");
                    drop(other);
                }
                Err(e) => eprintln!("vox-subject: link refused: {e}"),
            }
        }
    };
    let reason = tokio::select! {
        reason = session.handle.closed() => reason,
        // `more` never ends.
        () = more => return Ok(()),
    };
    eprintln!("vox-subject: session ended: {reason:?}");
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
