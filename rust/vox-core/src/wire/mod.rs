//! The wire format: every message of the vox protocol and its encoding.
//!
//! Encoding is postcard (see `docs/spec/wire.md` for the byte layout).
//! Decoders never panic and never allocate more than their input justifies.

mod blob;
mod codec;
mod id_map;
mod ids;
mod item_chunks;
mod message;
mod metadata;
mod rope;

pub use blob::Blob;
pub(crate) use blob::serialize_shared;
pub use codec::{
    DecodeError, DecodeLimits, EncodeError, MAX_PREALLOCATED_ELEMENTS, bounded_seq, decode, decode_slice, decode_with,
    encode, encode_into,
};
pub(crate) use codec::{SPLICE_MIN, Spliced, splicing};
pub(crate) use id_map::{IdMap, IdSet, id_map, id_set};
pub use ids::{ChannelId, ConnectionId, IdAllocator, MethodId, Parity, RequestId, kebab};
pub use item_chunks::encode_item;
pub use message::{
    CHANNEL_ITEMS_FEATURE, ChannelDecl, ChannelDirection, ClientHello, ConduitMode, ConduitMsg, ConnectionSettings,
    HandshakeMsg, Hello, HelloYourself, MAX_CHANNEL_ITEMS, Message, PROTOCOL_VERSION, Payload, ResponseBody, ResumeKey,
    SESSION_RESUME_FEATURE, ServerHello, StableFrame, StableHelloReply, StableMsg, TRANSPORT_MAGIC, TRANSPORT_VERSION,
    TransportHello, TransportMsg,
};
pub(crate) use metadata::runtime_key;
pub use metadata::{
    IntoMetadataKey, Metadata, MetadataEntry, MetadataKey, MetadataValue, NO_PROPAGATE, REJECT_REASON_KEY,
    RUNTIME_KEYS, SENSITIVE,
};
pub use rope::encode_payload;
pub(crate) use rope::{encode_conduit, encode_conduit_into};
