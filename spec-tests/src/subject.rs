//! Starting the subject process in its three modes.

use crate::error::{CaseError, CaseResult};
use crate::fail;
use crate::peer::{PATIENCE, Peer};
use std::net::SocketAddr;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use vox_core::link::{self, Link, LinkConfig};
use vox_core::wire::ConnectionSettings;

/// How to start the subject: a shell command line.
#[derive(Clone, Debug)]
pub struct SubjectCmd(pub String);

impl SubjectCmd {
    /// `SUBJECT_CMD`, or the `vox-subject` binary next to the running
    /// harness executable.
    pub fn from_env() -> SubjectCmd {
        if let Ok(cmd) = std::env::var("SUBJECT_CMD")
            && !cmd.trim().is_empty()
        {
            return SubjectCmd(cmd);
        }
        let exe = std::env::current_exe().ok();
        let dir = exe.as_ref().and_then(|e| e.parent()).map(|d| d.to_path_buf()).unwrap_or_default();
        // Integration tests run from `target/<profile>/deps`.
        let candidates = [dir.join("vox-subject"), dir.join("..").join("vox-subject")];
        let found = candidates.iter().find(|p| p.exists()).unwrap_or(&candidates[0]);
        SubjectCmd(shell_quote(&found.to_string_lossy()))
    }

    fn spawn(&self, envs: &[(&str, &str)], stdout: bool) -> CaseResult<Child> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("exec {}", self.0));
        // Every mode makes its links over the run's transport.
        for (k, v) in crate::transport::current().subject_env() {
            cmd.env(k, v);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(if stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd.spawn()?)
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A running subject process.
pub struct Running {
    child: Child,
}

impl Running {
    async fn stderr(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = tokio::time::timeout(PATIENCE, e.read_to_string(&mut out)).await;
        }
        out.trim().replace('\n', " | ")
    }

    /// Waits for the subject to exit and requires success (exit 0).
    pub async fn finish(mut self) -> CaseResult {
        let status = match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Err(_) => fail!("the subject did not exit after the session ended (hang)"),
            Ok(s) => s?,
        };
        if !status.success() {
            let err = self.stderr().await;
            fail!("the subject exited with {status}: {err}");
        }
        Ok(())
    }

    /// Like [`Running::finish`], and returns what the subject wrote on
    /// stderr (lines joined with ` | `).
    pub async fn finish_stderr(mut self) -> CaseResult<String> {
        let status = match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Err(_) => fail!("the subject did not exit after the session ended (hang)"),
            Ok(s) => s?,
        };
        let err = self.stderr().await;
        if !status.success() {
            fail!("the subject exited with {status}: {err}");
        }
        Ok(err)
    }

    /// Waits for the subject to exit and requires that it did not crash
    /// (no signal, no panic exit code 101).
    pub async fn finish_no_crash(mut self) -> CaseResult {
        let status = match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Err(_) => fail!("the subject did not exit after the session ended (hang)"),
            Ok(s) => s?,
        };
        match status.code() {
            Some(101) | None => {
                let err = self.stderr().await;
                fail!("the subject crashed ({status}): {err}")
            }
            Some(_) => Ok(()),
        }
    }

    /// Ends a case: on success the subject must exit 0; on failure the
    /// subject's exit status and stderr are added to the message.
    pub async fn conclude(self, result: CaseResult) -> CaseResult {
        match result {
            Ok(()) => self.finish().await,
            Err(e) => match self.finish().await {
                Ok(()) => Err(e),
                Err(f) => Err(CaseError::Failed(format!("{e} [subject: {f}]"))),
            },
        }
    }

    /// Ends a case whose session must still be alive (a resumable session
    /// outlives its links for a recovery timeout, so the subject would not
    /// exit soon by itself): the subject must still be running, then it is
    /// killed. Call it while the harness still holds the session's link.
    pub async fn stop_alive(self) -> CaseResult {
        self.conclude_alive(Ok(())).await
    }

    /// Like [`Running::conclude`] for a session that must still be alive:
    /// on success the subject must still be running (it is then killed);
    /// on failure the subject is killed and its exit status, if it had
    /// already exited, and stderr are added to the message.
    pub async fn conclude_alive(mut self, result: CaseResult) -> CaseResult {
        let exited = self.child.try_wait()?;
        if exited.is_none() {
            let _ = self.child.start_kill();
            let _ = tokio::time::timeout(PATIENCE, self.child.wait()).await;
        }
        match (result, exited) {
            (Ok(()), None) => Ok(()),
            (Ok(()), Some(status)) => {
                let err = self.stderr().await;
                fail!("the subject exited ({status}) while its session should still be alive: {err}")
            }
            (Err(e), exited) => {
                let err = self.stderr().await;
                let status = exited.map(|s| format!("exited with {s}")).unwrap_or_else(|| "killed".into());
                Err(CaseError::Failed(format!("{e} [subject {status}: {err}]")))
            }
        }
    }

    /// Ends a case after which the subject may either have exited (then
    /// with success) or still be running (then it is killed).
    pub async fn conclude_stopped(mut self, result: CaseResult) -> CaseResult {
        match self.child.try_wait()? {
            Some(_) => self.conclude(result).await,
            None => self.conclude_alive(result).await,
        }
    }

    async fn early_exit(&mut self) -> CaseError {
        let status = self.child.wait().await;
        let err = self.stderr().await;
        CaseError::Failed(format!("the subject exited before connecting ({status:?}): {err}"))
    }
}

/// Starts the subject in `mode` against a fresh harness listener and returns
/// the accepted link (over the run's transport).
pub async fn connect_in(cmd: &SubjectCmd, mode: &str, scenario: &str) -> CaseResult<(Running, Link)> {
    connect_link(cmd, mode, scenario, &[]).await
}

/// Like [`connect_in`] with extra environment variables for the subject.
pub async fn connect_link(
    cmd: &SubjectCmd,
    mode: &str,
    scenario: &str,
    envs: &[(&str, &str)],
) -> CaseResult<(Running, Link)> {
    let (mut running, stream) = connect_stream(cmd, mode, scenario, envs).await?;
    // The subject may give up during the TLS handshake or WebSocket upgrade.
    let link = tokio::select! {
        l = tokio::time::timeout(PATIENCE, crate::transport::current().accept(stream)) => l,
        e = running.early_exit() => return Err(e),
    };
    let link = link.map_err(|_| CaseError::Timeout("the subject's TLS handshake or WebSocket upgrade".into()))??;
    Ok((running, link))
}

/// Starts the subject in `mode` against a fresh harness listener and returns
/// the accepted TCP connection as it is, before any TLS handshake or
/// WebSocket upgrade (the caller runs those, or writes raw bytes).
pub async fn connect_stream(
    cmd: &SubjectCmd,
    mode: &str,
    scenario: &str,
    envs: &[(&str, &str)],
) -> CaseResult<(Running, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let mut all = vec![("PEER_ADDR", addr.as_str()), ("SUBJECT_MODE", mode), ("CLIENT_SCENARIO", scenario)];
    all.extend_from_slice(envs);
    let child = cmd.spawn(&all, false)?;
    let mut running = Running { child };
    let accepted = tokio::select! {
        a = tokio::time::timeout(PATIENCE, listener.accept()) => a,
        e = running.early_exit() => return Err(e),
    };
    let (stream, _) = accepted.map_err(|_| CaseError::Timeout("the subject to connect".into()))??;
    stream.set_nodelay(true)?;
    Ok((running, stream))
}

/// Subject in `server` mode, handshake done with default harness settings.
pub async fn server(cmd: &SubjectCmd) -> CaseResult<(Running, Peer)> {
    server_with(cmd, &[]).await
}

/// Like [`server`], with extra environment variables for the subject.
pub async fn server_with(cmd: &SubjectCmd, envs: &[(&str, &str)]) -> CaseResult<(Running, Peer)> {
    let (running, link) = connect_link(cmd, "server", "", envs).await?;
    let mut peer = Peer::new(link);
    peer.accept_session(ConnectionSettings::default()).await?;
    Ok((running, peer))
}

/// Like [`server_with`], and also returns a second handle on the same TCP
/// socket, for writing bytes that are not whole link messages (a half-sent
/// frame). Write to it only once everything sent through the peer's link
/// has been written (after a round trip, e.g. [`Peer::barrier`]), and send
/// nothing through the link afterwards. TCP only (the case must be marked
/// tcp-only in [`crate::cases::RESTRICTED`]).
pub async fn server_raw(cmd: &SubjectCmd, envs: &[(&str, &str)]) -> CaseResult<(Running, Peer, TcpStream)> {
    crate::transport::current().require_tcp("subject::server_raw")?;
    let (running, stream) = connect_stream(cmd, "server", "", envs).await?;
    let std_stream = stream.into_std()?;
    let raw = TcpStream::from_std(std_stream.try_clone()?)?;
    let stream = TcpStream::from_std(std_stream)?;
    let mut peer = Peer::new(link::tcp(stream, LinkConfig::default()));
    peer.accept_session(ConnectionSettings::default()).await?;
    Ok((running, peer, raw))
}

/// Subject in `client` mode running `scenario`, handshake done with the
/// given root settings for the harness.
pub async fn client(cmd: &SubjectCmd, scenario: &str, settings: ConnectionSettings) -> CaseResult<(Running, Peer)> {
    let (running, link) = connect_in(cmd, "client", scenario).await?;
    let mut peer = Peer::new(link);
    peer.accept_session(settings).await?;
    Ok((running, peer))
}

/// Subject in `listen` mode: returns the address it printed.
pub async fn listen(cmd: &SubjectCmd) -> CaseResult<(Running, SocketAddr)> {
    listen_with(cmd, &[]).await
}

/// Like [`listen`], with extra environment variables for the subject.
pub async fn listen_with(cmd: &SubjectCmd, envs: &[(&str, &str)]) -> CaseResult<(Running, SocketAddr)> {
    let mut all = vec![("SUBJECT_MODE", "listen")];
    all.extend_from_slice(envs);
    let mut child = cmd.spawn(&all, true)?;
    let Some(stdout) = child.stdout.take() else { fail!("internal: no stdout pipe") };
    let mut running = Running { child };
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::select! {
        l = tokio::time::timeout(PATIENCE, lines.next_line()) => l,
        e = running.early_exit() => return Err(e),
    };
    let line = line.map_err(|_| CaseError::Timeout("LISTENING <addr> on the subject's stdout".into()))??;
    let Some(addr) = line.as_deref().and_then(|l| l.strip_prefix("LISTENING ")) else {
        fail!("the subject printed {line:?} instead of LISTENING <addr>");
    };
    let addr = addr.trim().parse().map_err(|e| CaseError::Failed(format!("bad address {addr:?}: {e}")))?;
    Ok((running, addr))
}

/// Connects a link to a listening subject, over the run's transport.
pub async fn dial(addr: SocketAddr) -> CaseResult<Link> {
    crate::transport::current().dial(addr).await
}

/// A raw TCP connection to a listening subject, for bytes that are not
/// whole link messages. TCP only (the case must be marked tcp-only in
/// [`crate::cases::RESTRICTED`]).
pub async fn dial_raw(addr: SocketAddr) -> CaseResult<TcpStream> {
    crate::transport::current().require_tcp("subject::dial_raw")?;
    Ok(TcpStream::connect(addr).await?)
}
