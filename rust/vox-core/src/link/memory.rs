//! In-process links.

use super::{Link, LinkConfig, LinkRx, LinkTx, RxSource};
use tokio::sync::mpsc;

/// Creates two connected in-process links: what one sends, the other receives.
///
/// Each direction is a bounded queue of `config.send_queue` messages, so a
/// sender whose peer does not read waits instead of piling up messages.
/// Messages are handed over as they are, without copying.
// rule: transport.memory
pub fn memory_pair(config: LinkConfig) -> (Link, Link) {
    let capacity = config.queue_capacity();
    let max = config.max_message_size;
    // rule: link.tx.backpressure — bounded in both directions.
    let (a_to_b, b_from_a) = mpsc::channel(capacity);
    let (b_to_a, a_from_b) = mpsc::channel(capacity);
    let a = Link { tx: LinkTx::new(a_to_b, None, max), rx: LinkRx::new(RxSource::Memory(a_from_b), max) };
    let b = Link { tx: LinkTx::new(b_to_a, None, max), rx: LinkRx::new(RxSource::Memory(b_from_a), max) };
    (a, b)
}
