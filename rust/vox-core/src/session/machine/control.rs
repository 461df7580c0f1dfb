//! Requests from handles, through the control mailbox: opening and closing
//! virtual connections, the liveness signals of dropped handles, and
//! shutdown. Draining (a timer) and a resumed conduit handed over by a
//! listener (a new attachment) are the run loop's.

use super::{Machine, Step};
use crate::session::SessionError;
use crate::session::control::ControlMsg;
use crate::session::phase::CloseReason;
use crate::session::table::Released;
use crate::wire::{ConnectionId, Message, Metadata, Payload};

impl<A, R> Machine<A, R> {
    /// Decides a request from a handle. `Err` gives back what is not a
    /// decision but work for the run loop (`Drain`, `Reattach`, `Snapshot`).
    pub(crate) fn on_control(&mut self, m: ControlMsg) -> Result<Step, ControlMsg> {
        Ok(match m {
            ControlMsg::OpenConnection { settings, metadata, reply } => {
                if !self.phase.is_established() {
                    let _ = reply.send(Err(SessionError::Resuming));
                    return Ok(Step::Continue);
                }
                if self.table.len() >= self.limits.max_connections {
                    let _ = reply.send(Err(SessionError::TooManyConnections { limit: self.limits.max_connections }));
                    return Ok(Step::Continue);
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
            m @ (ControlMsg::Drain { .. } | ControlMsg::Reattach(_) | ControlMsg::Snapshot { .. }) => return Err(m),
        })
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
