//! The case table. Every case names the rules it covers and the direction.

use crate::error::CaseResult;
use crate::subject::SubjectCmd;
use crate::transport::Kind;
use std::future::Future;
use std::pin::Pin;

mod channels;
mod client;
mod connections;
mod limits;
mod resume;
mod rpc;
mod schema;
mod session;
mod stable;
mod transport;
mod transports;

/// A running case.
pub type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// Who drives the exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The subject initiates the link and serves; the harness calls it.
    HarnessCalls,
    /// The subject initiates the link and runs a client scenario; the
    /// harness plays the Testbed server.
    SubjectCalls,
    /// The subject listens (link, transport and session acceptor); the
    /// harness initiates.
    SubjectAccepts,
}

/// One conformance case.
#[derive(Debug)]
pub struct Case {
    /// Unique name, in rule-id style.
    pub name: &'static str,
    /// Rule ids of `docs/spec/protocol.md` it covers.
    pub rules: &'static [&'static str],
    /// Who drives.
    pub direction: Direction,
    /// The case itself.
    pub run: fn(SubjectCmd) -> CaseFuture,
}

impl Case {
    /// The one transport this case runs on, and why, if it does not run on
    /// every transport (see [`RESTRICTED`]).
    pub fn only_on(&self) -> Option<(Kind, &'static str)> {
        RESTRICTED.iter().find(|(n, _, _)| *n == self.name).map(|(_, k, why)| (*k, *why))
    }

    /// Whether the case runs over `kind`.
    pub fn runs_on(&self, kind: Kind) -> bool {
        self.only_on().is_none_or(|(k, _)| k == kind)
    }
}

/// The one place that says which cases run on one transport only, and why;
/// every other case runs on every transport (`SPEC_TRANSPORT`). Over the
/// other transports these cases are reported as `SKIP` with the reason,
/// never run and never counted as passed. The tcp-only ones write bytes
/// that are not whole link messages on the raw TCP stream (the helpers that
/// hand out a raw stream, `subject::server_raw` and `subject::dial_raw`,
/// fail the case over any other transport, so a case missing here cannot
/// pass by accident); the tls-only and ws-only ones check their transport's
/// own rule and would fail over TCP.
pub static RESTRICTED: &[(&str, Kind, &str)] = &[
    (
        "transport_prologue_bare_accepted_raw_frames",
        Kind::Tcp,
        "writes and reads length-prefixed frames as raw TCP bytes (transport.stream)",
    ),
    ("link_rx_oversized_frame_closes_without_waiting", Kind::Tcp, "writes a raw 4 GiB length prefix on the TCP stream"),
    (
        "session_setup_limits_oversized_first_message_closes",
        Kind::Tcp,
        "writes a raw 15 MiB length prefix and part of its body on the TCP stream",
    ),
    ("session_keepalive_half_sent_frame_closes_link", Kind::Tcp, "writes half a frame as raw TCP bytes"),
    ("transport_tls_session_over_verified_tls", Kind::Tls, "checks TLS itself (rule transport.tls)"),
    ("transport_tls_subject_rejects_unverified_server", Kind::Tls, "checks TLS itself (rule transport.tls)"),
    ("transport_tls_mutual_identity_reaches_handler", Kind::Tls, "checks TLS itself (rule transport.tls)"),
    ("transport_websocket_binary_messages", Kind::Ws, "checks WebSocket itself (rule transport.websocket)"),
    ("transport_websocket_text_message_is_link_error", Kind::Ws, "checks WebSocket itself (rule transport.websocket)"),
];

macro_rules! case {
    ($m:ident :: $f:ident, $dir:ident, [$($r:literal),* $(,)?]) => {
        Case { name: stringify!($f), rules: &[$($r),*], direction: Direction::$dir, run: |c| Box::pin($m::$f(c)) }
    };
}

/// Every case.
pub static CASES: &[Case] = &[
    // ---- link, transport prologue, handshake (subject accepts)
    case!(
        transport::transport_prologue_bare_accepted_raw_frames,
        SubjectAccepts,
        ["transport.prologue", "transport.stream", "link.message", "conduit.bare", "session.handshake"]
    ),
    case!(
        transport::transport_prologue_stable_rejected_no_fallback,
        SubjectAccepts,
        ["transport.prologue.no-fallback", "transport.prologue.reject-close"]
    ),
    case!(
        transport::transport_prologue_unknown_version_rejected,
        SubjectAccepts,
        ["transport.prologue", "transport.prologue.reject-close"]
    ),
    case!(transport::transport_prologue_bad_magic_closes, SubjectAccepts, ["transport.prologue"]),
    case!(transport::transport_prologue_garbage_closes, SubjectAccepts, ["transport.prologue", "link.rx.error"]),
    case!(
        transport::link_rx_oversized_frame_closes_without_waiting,
        SubjectAccepts,
        ["link.tx.max-size", "link.rx.error", "transport.stream"]
    ),
    case!(transport::session_handshake_acceptor_version_mismatch_sorry, SubjectAccepts, ["session.handshake"]),
    case!(transport::session_handshake_acceptor_sorry_instead_of_letsgo_closes, SubjectAccepts, ["session.handshake"]),
    case!(
        transport::session_parity_acceptor_takes_opposite,
        SubjectAccepts,
        ["session.parity", "session.handshake", "connection.open"]
    ),
    // ---- TLS and WebSocket (one transport each, see RESTRICTED)
    case!(
        transports::transport_tls_session_over_verified_tls,
        SubjectAccepts,
        ["transport.tls", "session.handshake", "session.resume"]
    ),
    case!(transports::transport_tls_subject_rejects_unverified_server, SubjectCalls, ["transport.tls"]),
    case!(transports::transport_tls_mutual_identity_reaches_handler, SubjectAccepts, ["transport.tls"]),
    case!(transports::transport_websocket_binary_messages, SubjectAccepts, ["transport.websocket", "link.message"]),
    case!(transports::transport_websocket_text_message_is_link_error, SubjectAccepts, ["transport.websocket"]),
    // ---- stable conduit and resume (subject accepts)
    case!(
        stable::conduit_stable_hello_issues_resume_key,
        SubjectAccepts,
        ["conduit.stable", "stable.resume-key", "stable.seq", "stable.ack", "session.handshake"]
    ),
    case!(stable::stable_seq_duplicate_frame_ignored, SubjectAccepts, ["stable.seq", "rpc.response.one-per-request"]),
    case!(stable::stable_seq_gap_is_error, SubjectAccepts, ["stable.seq", "session.protocol-error"]),
    case!(
        stable::stable_ack_beyond_sent_on_frame_is_protocol_error,
        SubjectAccepts,
        ["stable.ack", "session.protocol-error"]
    ),
    case!(
        stable::stable_ack_beyond_sent_alone_is_protocol_error,
        SubjectAccepts,
        ["stable.ack", "session.protocol-error"]
    ),
    case!(
        stable::stable_undecodable_link_message_is_protocol_error,
        SubjectAccepts,
        ["conduit.stable", "session.protocol-error"]
    ),
    case!(
        stable::stable_frame_item_undecodable_is_protocol_error,
        SubjectAccepts,
        ["conduit.stable", "session.protocol-error"]
    ),
    case!(
        stable::stable_replay_buffer_resends_unacked_after_reconnect,
        SubjectAccepts,
        ["stable.replay-buffer", "session.resume", "stable.ack"]
    ),
    case!(stable::stable_resume_key_unknown_rejected, SubjectAccepts, ["stable.resume-key"]),
    case!(
        stable::session_resume_new_server_session_not_resumed,
        SubjectAccepts,
        ["session.resume", "stable.resume-key"]
    ),
    // ---- setup limits and bounded decoding (subject accepts)
    case!(
        limits::session_setup_limits_oversized_first_message_closes,
        SubjectAccepts,
        ["session.setup.limits", "link.tx.max-size"]
    ),
    case!(limits::session_setup_limits_oversized_hello_closes, SubjectAccepts, ["session.setup.limits"]),
    case!(
        limits::session_setup_limits_silent_link_closed_after_prologue_deadline,
        SubjectAccepts,
        ["session.setup.limits"]
    ),
    case!(
        limits::session_decode_bounded_hello_features_refused,
        SubjectAccepts,
        ["session.decode.bounded", "session.handshake"]
    ),
    // ---- session resume on a bare conduit, retry across it (subject accepts)
    case!(resume::session_resume_without_feature_has_no_key, SubjectAccepts, ["session.resume", "session.handshake"]),
    case!(resume::session_resume_unknown_key_is_refused, SubjectAccepts, ["session.resume", "session.handshake"]),
    case!(resume::session_resume_while_old_link_still_open, SubjectAccepts, ["session.resume"]),
    case!(
        resume::channel_retry_non_idem_fails_closed,
        SubjectAccepts,
        ["retry.channel.recovery.non-idem", "retry.channel.disconnect.closes", "session.resume", "retry.op-id"]
    ),
    case!(
        resume::channel_retry_idem_reruns_with_fresh_channels,
        SubjectAccepts,
        ["retry.channel.volatile.rebinding", "retry.channel.disconnect.closes", "session.resume", "retry.op-id"]
    ),
    // ---- prologue and handshake (subject initiates)
    case!(
        transport::transport_prologue_initiator_refuses_other_mode,
        SubjectCalls,
        ["transport.prologue.no-fallback", "transport.prologue"]
    ),
    case!(transport::transport_prologue_initiator_reject_closes, SubjectCalls, ["transport.prologue.reject-close"]),
    case!(transport::session_handshake_initiator_version_mismatch_sorry, SubjectCalls, ["session.handshake"]),
    case!(transport::session_handshake_initiator_sorry_closes, SubjectCalls, ["session.handshake"]),
    // ---- session (harness calls)
    case!(session::session_keepalive_ping_pong, HarnessCalls, ["session.keepalive", "session.message.connection-id"]),
    case!(
        session::session_keepalive_on_by_default,
        HarnessCalls,
        ["session.keepalive", "session.message.connection-id"]
    ),
    case!(session::session_keepalive_unanswered_ping_closes_link, HarnessCalls, ["session.keepalive"]),
    case!(session::session_keepalive_answered_pings_keep_session, HarnessCalls, ["session.keepalive"]),
    case!(
        session::session_keepalive_half_sent_frame_closes_link,
        HarnessCalls,
        ["session.keepalive", "transport.stream"]
    ),
    case!(
        session::session_message_ping_on_virtual_connection_is_protocol_error,
        HarnessCalls,
        ["session.message.connection-id", "session.protocol-error"]
    ),
    case!(
        session::session_message_undecodable_is_protocol_error,
        HarnessCalls,
        ["session.message", "session.protocol-error"]
    ),
    case!(
        session::session_message_handshake_after_established_is_protocol_error,
        HarnessCalls,
        ["session.handshake", "session.protocol-error"]
    ),
    case!(session::session_protocol_error_from_peer_ends_session, HarnessCalls, ["session.protocol-error"]),
    case!(
        session::link_rx_eof_ends_session_cleanly,
        HarnessCalls,
        ["link.rx.eof", "session.handshake", "session.parity"]
    ),
    case!(
        limits::session_decode_bounded_request_metadata_is_protocol_error,
        HarnessCalls,
        ["session.decode.bounded", "session.protocol-error", "rpc.metadata"]
    ),
    case!(
        limits::session_decode_bounded_request_channels_is_protocol_error,
        HarnessCalls,
        ["session.decode.bounded", "session.protocol-error", "rpc.channel.allocation"]
    ),
    // ---- abuse budgets (harness calls)
    case!(
        limits::session_abuse_budget_pings,
        HarnessCalls,
        ["session.abuse-budget", "session.keepalive", "session.protocol-error"]
    ),
    case!(
        limits::session_abuse_budget_rejected_opens,
        HarnessCalls,
        ["session.abuse-budget", "connection.open.rejection", "session.protocol-error"]
    ),
    case!(
        limits::session_abuse_budget_cancelled_requests,
        HarnessCalls,
        ["session.abuse-budget", "rpc.cancel", "session.protocol-error"]
    ),
    case!(
        limits::session_abuse_budget_late_messages,
        HarnessCalls,
        ["session.abuse-budget", "rpc.channel.crossing", "session.protocol-error"]
    ),
    // ---- requests and responses (harness calls)
    case!(
        rpc::rpc_request_testbed_calls,
        HarnessCalls,
        ["rpc.request", "session.message", "session.symmetry", "conduit.bare"]
    ),
    case!(rpc::rpc_echo_bytes_size_sweep, HarnessCalls, ["link.message", "transport.stream", "rpc.request"]),
    case!(rpc::rpc_error_scope_user_errors, HarnessCalls, ["rpc.error.scope"]),
    case!(rpc::rpc_unknown_method_keeps_connection, HarnessCalls, ["rpc.unknown-method", "rpc.error.scope"]),
    case!(rpc::rpc_invalid_payload_keeps_connection, HarnessCalls, ["rpc.invalid-payload", "rpc.error.scope"]),
    case!(rpc::rpc_pipelining_slow_handler_does_not_block, HarnessCalls, ["rpc.pipelining", "link.order"]),
    case!(rpc::rpc_cancel_gets_cancelled_response, HarnessCalls, ["rpc.cancel", "rpc.response.one-per-request"]),
    case!(rpc::rpc_cancel_crossing_after_response_is_ignored, HarnessCalls, ["rpc.cancel.crossing"]),
    case!(rpc::rpc_deadline_exceeded_stops_the_handler, HarnessCalls, ["rpc.deadline"]),
    case!(
        rpc::rpc_request_id_wrong_parity_is_protocol_error,
        HarnessCalls,
        ["rpc.request.id", "session.protocol-error"]
    ),
    case!(rpc::rpc_request_id_in_flight_is_protocol_error, HarnessCalls, ["rpc.request.id"]),
    case!(
        rpc::rpc_response_one_per_request_pipelined,
        HarnessCalls,
        ["rpc.response.one-per-request", "rpc.pipelining"]
    ),
    case!(rpc::rpc_response_never_requested_is_protocol_error, HarnessCalls, ["rpc.response.one-per-request"]),
    case!(rpc::rpc_metadata_order_duplicates_and_flags, HarnessCalls, ["rpc.metadata"]),
    case!(
        rpc::rpc_max_concurrent_requests_exceeded_is_protocol_error,
        HarnessCalls,
        ["rpc.flow-control.max-concurrent-requests", "session.connection-settings"]
    ),
    // ---- channels (harness calls)
    case!(
        channels::rpc_channel_generate_in_order_with_credit,
        HarnessCalls,
        ["rpc.channel", "rpc.channel.item", "rpc.flow-control.credit", "link.order", "rpc.channel.close"]
    ),
    case!(channels::rpc_flow_control_zero_initial_credit_waits_for_grant, HarnessCalls, ["rpc.flow-control.credit"]),
    case!(
        channels::rpc_channel_sum_early_items,
        HarnessCalls,
        ["rpc.channel.early-items", "rpc.channel.allocation", "rpc.channel"]
    ),
    case!(
        channels::rpc_channel_transform_both_directions,
        HarnessCalls,
        ["rpc.channel", "rpc.channel.allocation", "rpc.channel.close"]
    ),
    case!(
        channels::rpc_flow_control_early_item_beyond_credit_is_protocol_error,
        HarnessCalls,
        ["rpc.flow-control.credit", "rpc.channel.early-items"]
    ),
    case!(channels::rpc_channel_close_item_after_close_is_protocol_error, HarnessCalls, ["rpc.channel.close"]),
    case!(channels::rpc_channel_unknown_id_is_protocol_error, HarnessCalls, ["rpc.channel.unknown"]),
    case!(
        channels::rpc_channel_unknown_id_below_high_water_item_is_protocol_error,
        HarnessCalls,
        ["rpc.channel.unknown", "session.protocol-error"]
    ),
    case!(
        channels::rpc_channel_unknown_id_below_high_water_grant_is_protocol_error,
        HarnessCalls,
        ["rpc.channel.unknown", "rpc.flow-control.credit"]
    ),
    case!(
        channels::rpc_channel_wrong_direction_is_protocol_error,
        HarnessCalls,
        ["rpc.channel.unknown", "rpc.channel"]
    ),
    case!(channels::rpc_channel_allocation_wrong_parity_is_protocol_error, HarnessCalls, ["rpc.channel.allocation"]),
    case!(channels::rpc_channel_reset_stops_sender, HarnessCalls, ["rpc.channel.reset", "rpc.channel.crossing"]),
    case!(
        channels::rpc_channel_crossing_grant_after_own_reset_tolerated,
        HarnessCalls,
        ["rpc.channel.crossing", "rpc.channel.reset"]
    ),
    case!(
        channels::rpc_channel_crossing_late_messages_tolerated,
        HarnessCalls,
        ["rpc.channel.crossing", "rpc.channel.lifecycle"]
    ),
    // ---- connections (harness calls)
    case!(
        connections::connection_open_accept_and_call,
        HarnessCalls,
        ["connection.open", "connection.parity", "session.connection-settings"]
    ),
    case!(connections::connection_open_wrong_parity_is_protocol_error, HarnessCalls, ["connection.open"]),
    case!(connections::connection_open_id_in_use_is_protocol_error, HarnessCalls, ["connection.open"]),
    case!(connections::connection_message_before_open_is_protocol_error, HarnessCalls, ["connection.open"]),
    case!(
        connections::connection_unknown_id_below_high_water_is_protocol_error,
        HarnessCalls,
        ["rpc.channel.unknown", "connection.close.crossing", "connection.open"]
    ),
    case!(connections::connection_open_rejection_over_limit, HarnessCalls, ["connection.open.rejection"]),
    case!(
        connections::connection_parity_request_id_follows_opener,
        HarnessCalls,
        ["connection.parity", "rpc.request.id"]
    ),
    case!(connections::connection_root_close_is_protocol_error, HarnessCalls, ["connection.root"]),
    case!(
        connections::connection_close_then_message_is_protocol_error,
        HarnessCalls,
        ["connection.close", "connection.close.crossing"]
    ),
    case!(connections::connection_close_cancels_in_flight_handlers, HarnessCalls, ["connection.close"]),
    // ---- the subject calls the harness
    case!(
        client::client_basic_calls,
        SubjectCalls,
        ["session.symmetry", "session.parity", "rpc.request", "rpc.request.id", "rpc.channel.allocation"]
    ),
    case!(
        client::client_sum_channel_respects_credit,
        SubjectCalls,
        ["rpc.flow-control.credit", "rpc.channel.lifecycle", "rpc.channel.close", "rpc.channel.allocation"]
    ),
    case!(
        client::client_channel_close_survives_root_release,
        SubjectCalls,
        ["rpc.channel.close", "rpc.caller.liveness", "rpc.channel.lifecycle"]
    ),
    case!(
        client::client_generate_channel,
        SubjectCalls,
        ["rpc.channel", "rpc.channel.item", "rpc.flow-control.credit", "link.order"]
    ),
    case!(
        client::client_respects_max_concurrent_requests,
        SubjectCalls,
        ["rpc.flow-control.max-concurrent-requests", "session.connection-settings"]
    ),
    case!(
        client::client_virtual_connection_close_crossing,
        SubjectCalls,
        ["connection.open", "connection.close", "connection.close.crossing", "rpc.caller.liveness", "session.parity"]
    ),
    case!(client::client_cancel_late_response_ignored, SubjectCalls, ["rpc.cancel", "rpc.cancel.crossing"]),
    case!(client::client_open_rejected, SubjectCalls, ["connection.open.rejection"]),
    // ---- schemas and evolution (PROTOCOL.md section 11)
    case!(schema::schema_identity_subject_describes_its_methods, HarnessCalls, ["schema.identity"]),
    case!(schema::schema_evolution_subject_translates_arguments_it_receives, HarnessCalls, ["schema.evolution"]),
    case!(
        schema::schema_incompatible_subject_refuses_arguments_it_cannot_translate,
        HarnessCalls,
        ["schema.incompatible"]
    ),
    case!(schema::schema_evolution_subject_translates_by_name, SubjectCalls, ["schema.evolution", "schema.identity"]),
    case!(schema::schema_incompatible_subject_unknown_variant_fails_that_call, SubjectCalls, ["schema.incompatible"]),
    case!(schema::schema_incompatible_subject_call_fails_connection_stays_up, SubjectCalls, ["schema.incompatible"]),
    case!(
        client::client_duplicate_response_is_protocol_error,
        SubjectCalls,
        ["rpc.response.one-per-request", "session.protocol-error"]
    ),
    case!(client::client_response_never_requested_is_protocol_error, SubjectCalls, ["rpc.response.one-per-request"]),
    case!(client::client_item_without_credit_is_protocol_error, SubjectCalls, ["rpc.flow-control.credit"]),
    case!(client::client_drop_root_ends_session, SubjectCalls, ["rpc.caller.liveness"]),
];
