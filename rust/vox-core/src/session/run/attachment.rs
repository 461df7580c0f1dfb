//! What the loop owns of the conduit it is attached to. Kept in one value
//! so that losing the conduit drops all of it at once: nothing queued for
//! an old attachment can reach a new conduit. (What the session owes the
//! peer on this attachment, and the outstanding ping, are the machine's,
//! cleared by `Machine::on_attachment_lost`.)

use crate::conduit::ConduitRx;
use crate::plumbing::outbound::{Finish, Outbound, spawn_writer};
use crate::session::resume::NewConduit;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The loop's part of one attachment. When the attachment ends, all of it
/// is dropped together (the writer aborted), so nothing queued for an old
/// attachment can reach a new conduit.
pub(crate) struct Attachment {
    pub(crate) outbound: Outbound,
    /// `None` once the task ended (its handle must not be polled again).
    /// The attachment itself exists only inside `SessionPhase::Established`.
    pub(crate) writer: Option<JoinHandle<Result<(), crate::plumbing::outbound::WriterError>>>,
    pub(crate) finish: Option<oneshot::Sender<Finish>>,
    pub(crate) conduit: Option<ConduitRx>,
    /// Both sides agreed on `vox.channel-items` in this conduit's handshake:
    /// the peer may send `ChannelItems`.
    pub(crate) channel_items: bool,
}

impl Attachment {
    pub(crate) fn start(conduit: NewConduit, capacity: usize) -> Attachment {
        let (finish_tx, finish_rx) = oneshot::channel();
        let channel_items = conduit.negotiated.channel_items;
        let (outbound, writer) = spawn_writer(conduit.tx, capacity, finish_rx, channel_items);
        Attachment { outbound, writer: Some(writer), finish: Some(finish_tx), conduit: Some(conduit.rx), channel_items }
    }
}
