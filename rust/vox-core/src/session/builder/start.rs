//! Turning a conduit whose handshake is done into a running session: the
//! root connection, the mailbox, the run loop's task and the handles given
//! to the application. Both sides, and every transport, end here.

use super::{Session, SessionBuilder};
use crate::driver::ConnectionCore;
use crate::plumbing::ops::SessionOps;
use crate::session::control::mailbox;
use crate::session::handle::{Caller, ConnectionHandle, CoreRef, LiveToken, RootSlot, SessionHandle};
use crate::session::machine::{Limits, Machine};
use crate::session::resume::NewConduit;
use crate::session::run::{Attachment, Resume, ResumeSide, RunLoop};
use crate::wire::ConnectionId;
use std::sync::Arc;
use tokio::sync::watch;

impl SessionBuilder {
    pub(super) fn start(self, conduit: NewConduit, resume: Option<Resume>) -> Session {
        let config = Arc::new(self.config);
        let negotiated = conduit.negotiated.clone();
        let peer_addr = conduit.rx.peer_addr();
        let peer_identity = conduit.rx.peer_identity();
        let link = Attachment::start(conduit, config.outbound_capacity);
        let (mailbox_tx, mailbox_rx) = mailbox(config.mailbox_capacity);
        let (closed_tx, closed_rx) = watch::channel(None);
        let (generation_tx, generation_rx) = watch::channel(1);
        let ops = config.operations.clone().map(|c| Arc::new(SessionOps::new(c)));
        let root_core = ConnectionCore::started(
            ConnectionId::ROOT,
            negotiated.local_parity,
            negotiated.local_root.clone(),
            negotiated.peer_root.clone(),
            link.outbound.clone(),
            self.root_handler,
            config.channel_limits(),
            ops.clone(),
        );
        root_core.set_peer_addr(peer_addr);
        root_core.set_peer_identity(peer_identity);
        let budgets = crate::session::budget::Budgets::new(&config.budgets, tokio::time::Instant::now());
        if let Some(Resume { key, side: ResumeSide::Acceptor { registry }, .. }) = &resume {
            registry.insert(key.clone(), mailbox_tx.clone(), negotiated.local_parity.opposite());
        }
        let root_slot = RootSlot::new(root_core.clone());
        let limits = Limits { max_connections: config.max_connections, keepalive: config.keepalive.clone() };
        let machine =
            Machine::new(link, root_core, negotiated.local_parity, limits, budgets, self.acceptor, mailbox_tx.clone());
        let run = RunLoop {
            machine,
            root_slot: root_slot.clone(),
            mailbox: mailbox_rx,
            config,
            closed_tx,
            generation_tx,
            ops,
            resume,
            draining: None,
        };
        tokio::spawn(run.run());
        let handle = SessionHandle {
            mailbox: mailbox_tx.clone(),
            closed: closed_rx,
            generation: generation_rx,
            op_ids: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        crate::driver::metrics::watch_session(handle.closed.clone(), handle.generation.clone());
        let caller = Caller::new(CoreRef::Root(root_slot), LiveToken::new(mailbox_tx, ConnectionId::ROOT))
            .in_session(handle.clone());
        Session { handle, root: ConnectionHandle { id: ConnectionId::ROOT, caller }, negotiated }
    }
}
