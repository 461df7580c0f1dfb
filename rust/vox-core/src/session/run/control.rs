//! Requests from handles, through the control mailbox: opening and closing
//! virtual connections, the liveness signals of dropped handles, shutdown
//! and graceful draining, and a resumed conduit handed over by a listener.

use super::{Event, RunLoop, Step};
use crate::session::SessionError;
use crate::session::control::ControlMsg;
use crate::session::phase::CloseReason;
use crate::session::table::Released;
use crate::wire::{ConnectionId, Message, Metadata, Payload};
use std::sync::Arc;
use tokio::time::Instant;

/// A graceful shutdown in progress: new requests are refused, and the
/// session ends once no handler is in flight or at `deadline`.
pub(crate) struct Draining {
    idle: Arc<tokio::sync::Notify>,
    deadline: Instant,
}

/// While draining: a handler ended (check whether all are done) or the
/// grace period ran out.
pub(super) async fn drain_event(d: &Option<Draining>) -> Event {
    let Some(d) = d else { return std::future::pending().await };
    tokio::select! {
        _ = d.idle.notified() => Event::DrainProgress,
        _ = tokio::time::sleep_until(d.deadline) => Event::DrainDeadline,
    }
}

impl RunLoop {
    pub(super) fn on_control(&mut self, m: ControlMsg) -> Step {
        match m {
            ControlMsg::OpenConnection { settings, metadata, reply } => {
                if !self.phase.is_established() {
                    let _ = reply.send(Err(SessionError::Resuming));
                    return Step::Continue;
                }
                if self.table.len() >= self.config.max_connections {
                    let _ = reply.send(Err(SessionError::TooManyConnections { limit: self.config.max_connections }));
                    return Step::Continue;
                }
                match self.table.open_outbound(settings.clone(), reply) {
                    Ok((id, parity)) => {
                        // rule: connection.open
                        self.owe(Message {
                            connection_id: id,
                            payload: Payload::OpenConnection { parity, settings, metadata },
                        });
                    }
                    Err((reply, e)) => {
                        let _ = reply.send(Err(e));
                    }
                }
                Step::Continue
            }
            ControlMsg::CloseConnection { id, metadata, reply } => {
                let r = if id.is_root() {
                    Err(SessionError::CannotCloseRoot)
                } else if self.close_local(id, metadata) {
                    Ok(())
                } else {
                    Err(SessionError::UnknownConnection(id))
                };
                let _ = reply.send(r);
                Step::Continue
            }
            ControlMsg::ConnectionDropped(id) => {
                // rule: rpc.caller.liveness
                self.close_local(id, Metadata::new());
                Step::Continue
            }
            ControlMsg::RootDropped => {
                // rule: rpc.caller.liveness — no CloseConnection for id 0.
                self.root_released = true;
                Step::Continue
            }
            ControlMsg::Shutdown => Step::End(CloseReason::Shutdown, None, self.phase.is_established()),
            ControlMsg::Drain { grace } => {
                if self.draining.is_none() {
                    let idle = Arc::new(tokio::sync::Notify::new());
                    self.root.start_draining(idle.clone());
                    for core in self.table.open_cores() {
                        core.start_draining(idle.clone());
                    }
                    self.draining = Some(Draining { idle, deadline: Instant::now() + grace });
                }
                self.drain_check()
            }
            ControlMsg::Reattach(conduit) => {
                self.reattach(*conduit);
                Step::Continue
            }
        }
    }

    /// While draining: ends the session once no handler is in flight.
    pub(super) fn drain_check(&mut self) -> Step {
        if self.draining.is_none() {
            return Step::Continue;
        }
        let idle = self.root.is_idle() && self.table.open_cores().iter().all(|c| c.is_idle());
        if idle { Step::End(CloseReason::Shutdown, None, self.phase.is_established()) } else { Step::Continue }
    }

    fn close_local(&mut self, id: ConnectionId, metadata: Metadata) -> bool {
        match self.table.release(id, Released::ByUs) {
            Some(core) => {
                // Marking the core ended first means nothing of this
                // connection can be queued after the CloseConnection.
                core.on_lost(crate::plumbing::loss::LossCause::ConnectionClosed);
                self.owe(Message { connection_id: id, payload: Payload::CloseConnection { metadata } });
                true
            }
            None => false,
        }
    }
}
