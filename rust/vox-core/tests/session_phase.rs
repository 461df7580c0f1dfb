//! The session phase machine (rule `session.resume`, ADR 0003): every event
//! in every phase, the generation count across resumes, and what pending
//! work observes when the session ends.

use vox_core::driver::Fault;
use vox_core::session::{CloseReason, PhaseError, SessionPhase};
use vox_core::test_util::channel::LossCause;

/// The recovery deadline the resuming phases carry (any fixed instant).
fn deadline() -> tokio::time::Instant {
    static AT: std::sync::LazyLock<tokio::time::Instant> = std::sync::LazyLock::new(tokio::time::Instant::now);
    *AT
}

fn phases() -> Vec<SessionPhase> {
    vec![
        SessionPhase::Established { generation: 3, attachment: () },
        SessionPhase::Resuming { lost: 3, deadline: deadline(), redial: () },
        SessionPhase::Closing(CloseReason::Shutdown),
        SessionPhase::Closed(CloseReason::Shutdown),
    ]
}

fn name(p: &SessionPhase) -> &'static str {
    match p {
        SessionPhase::Established { .. } => "Established",
        SessionPhase::Resuming { .. } => "Resuming",
        SessionPhase::Closing(_) => "Closing",
        SessionPhase::Closed(_) => "Closed",
    }
}

/// An illegal event leaves the phase as it was and names both.
fn refused<T: std::fmt::Debug>(
    from: &SessionPhase,
    event: &'static str,
    got: Result<T, PhaseError>,
    after: &SessionPhase,
) {
    let error = got.expect_err("illegal event");
    assert_eq!(error, PhaseError { from: name(from), event });
    assert_eq!(error.to_string(), format!("illegal transition: {event} in phase {}", name(from)));
    assert_eq!(after, from, "a refused event changes nothing");
}

#[test]
fn session_phase_every_event_in_every_phase() {
    for start in phases() {
        let mut p = start.clone();
        match p.on_attachment_lost(deadline(), ()) {
            Ok((lost, ())) if matches!(start, SessionPhase::Established { .. }) => {
                assert_eq!(lost, 3);
                assert_eq!(p, SessionPhase::Resuming { lost: 3, deadline: deadline(), redial: () });
            }
            got => refused(&start, "attachment lost", got, &p),
        }
        let mut p = start.clone();
        match p.on_reattached(()) {
            Ok((generation, ())) if matches!(start, SessionPhase::Resuming { .. }) => {
                assert_eq!(generation, 4, "the next attachment has the next generation");
                assert_eq!(p, SessionPhase::Established { generation: 4, attachment: () });
            }
            got => refused(&start, "reattached", got, &p),
        }
        let mut p = start.clone();
        match p.on_closing(CloseReason::PeerClosed) {
            Ok(attachment) if !matches!(start, SessionPhase::Closing(_) | SessionPhase::Closed(_)) => {
                assert_eq!(attachment.is_some(), start.is_established(), "the attachment exists only when established");
                assert_eq!(p, SessionPhase::Closing(CloseReason::PeerClosed));
            }
            got => refused(&start, "closing", got, &p),
        }
        let mut p = start.clone();
        match p.on_closed() {
            Ok(reason) if matches!(start, SessionPhase::Closing(_)) => {
                assert_eq!(reason, CloseReason::Shutdown, "the first reason is the one reported");
                assert_eq!(p, SessionPhase::Closed(CloseReason::Shutdown));
            }
            got => refused(&start, "closed", got, &p),
        }
        assert_eq!(start.is_established(), matches!(start, SessionPhase::Established { .. }));
    }
}

#[test]
fn session_resume_generations_count_every_attachment() {
    let mut p = SessionPhase::established(());
    for generation in 1..=5 {
        assert_eq!(p, SessionPhase::Established { generation, attachment: () });
        assert_eq!(p.on_attachment_lost(deadline(), ()), Ok((generation, ())));
        assert!(!p.is_established());
        assert_eq!(p.on_reattached(()), Ok((generation + 1, ())));
        assert!(p.is_established());
    }
}

// rule: session.protocol-error — what pending calls and channel handles see.
#[test]
fn session_close_reason_loss_cause_and_text() {
    let cases = [
        (CloseReason::Shutdown, LossCause::SessionShutdown, "shut down locally"),
        (CloseReason::RootReleased, LossCause::SessionShutdown, "root connection released"),
        (CloseReason::PeerClosed, LossCause::ConnectionClosed, "the peer closed the link"),
        (CloseReason::LinkError("eof".into()), LossCause::ConnectionClosed, "link failed: eof"),
        (CloseReason::KeepaliveTimeout, LossCause::ConnectionClosed, "keepalive timeout"),
        (
            CloseReason::ResumeFailed("gone".into()),
            LossCause::ConnectionClosed,
            "could not be resumed on a new conduit: gone",
        ),
        (
            CloseReason::LocalProtocolError("bad".into()),
            LossCause::ProtocolError { fault: Fault::Peer, description: "bad".into() },
            "peer violated the protocol: bad",
        ),
        (
            CloseReason::PeerProtocolError("odd".into()),
            LossCause::ProtocolError { fault: Fault::Local, description: "odd".into() },
            "peer reported a protocol error: odd",
        ),
    ];
    for (reason, cause, text) in cases {
        assert_eq!(reason.loss_cause(), cause, "{reason:?}");
        assert!(reason.to_string().contains(text), "{reason:?} shows {reason}");
    }
}
