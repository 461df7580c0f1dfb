//! W3C trace context in request metadata (feature `otel`): a call carries
//! the `traceparent` (and `tracestate`) of the span it is made in, and the
//! handler's span continues that trace, so a chain of calls A → B → C is
//! one trace. The spans are `tracing` spans; tracing-opentelemetry's layer
//! gives them their OpenTelemetry identity.
//!
//! - Client side: `Caller::call_raw` writes the entries from its `call`
//!   span (a child of the current span), or from the current span when
//!   that one is disabled; without a valid span context nothing is written.
//! - Server side: the driver's `handle` span of each request takes a valid
//!   incoming `traceparent` as its remote parent. An invalid one is ignored,
//!   as an unknown metadata entry would be (every byte from the network is
//!   hostile: the parser is strict and bounded).
//! - The entries are flagged `NO_PROPAGATE` (rule `rpc.metadata`): a handler
//!   that forwards its request's metadata (`Metadata::for_forwarding`) does
//!   not pass its caller's `traceparent` on; its own call writes a fresh
//!   one, naming its own span as the parent. An entry already in a call's
//!   metadata is replaced.

use crate::wire::Metadata;

/// The metadata key of the W3C `traceparent`
/// (`00-<trace id>-<parent span id>-<flags>`, lowercase hex).
pub const TRACEPARENT_KEY: &str = crate::wire::runtime_key::TRACEPARENT;

/// The metadata key of the W3C `tracestate` (vendor entries), sent with a
/// `traceparent` when the span has any.
pub const TRACESTATE_KEY: &str = crate::wire::runtime_key::TRACESTATE;

/// The longest `tracestate` accepted from a peer (the W3C limit is 512
/// characters for what a vendor must propagate).
pub const MAX_TRACESTATE_LEN: usize = 512;

#[cfg(feature = "otel")]
mod otel {
    use super::*;
    use crate::wire::{MetadataValue, NO_PROPAGATE};
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The `traceparent` of a span context (version 00).
    pub fn traceparent(sc: &SpanContext) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags())
    }

    fn lower_hex(s: &str) -> bool {
        s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// Parses a `traceparent` strictly (W3C Trace Context, level 1): version
    /// 00 is exactly `00-` + 32 + `-` + 16 + `-` + 2 lowercase hex digits; a
    /// later version (01 to fe) may append `-` and more, which is ignored;
    /// version ff, all-zero ids and anything else are refused. The result is
    /// a remote span context.
    pub fn parse_traceparent(value: &str, state: Option<&str>) -> Option<SpanContext> {
        let head = value.get(..55)?;
        let tail = &value[55..];
        let (version, trace, span, flags) = (head.get(..2)?, head.get(3..35)?, head.get(36..52)?, head.get(53..55)?);
        let dashes = [2, 35, 52].iter().all(|&i| head.as_bytes()[i] == b'-');
        if !dashes || ![version, trace, span, flags].iter().all(|p| lower_hex(p)) || version == "ff" {
            return None;
        }
        if (version == "00" && !tail.is_empty()) || (version != "00" && !(tail.is_empty() || tail.starts_with('-'))) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8());
        let state = state
            .filter(|s| s.len() <= MAX_TRACESTATE_LEN)
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(SpanContext::new(trace_id, span_id, flags, true, state))
    }

    /// Writes the trace context of `span` (or of the current span, if
    /// `span` has none) into a call's metadata.
    pub(crate) fn inject(span: &tracing::Span, metadata: &mut Metadata) {
        let mut sc = span.context().span().span_context().clone();
        if !sc.is_valid() {
            sc = tracing::Span::current().context().span().span_context().clone();
        }
        if !sc.is_valid() {
            return;
        }
        metadata.0.retain(|e| e.key != TRACEPARENT_KEY && e.key != TRACESTATE_KEY);
        metadata.push(TRACEPARENT_KEY, MetadataValue::String(traceparent(&sc)), NO_PROPAGATE);
        let state = sc.trace_state().header();
        if !state.is_empty() {
            metadata.push(TRACESTATE_KEY, MetadataValue::String(state), NO_PROPAGATE);
        }
    }

    /// Makes a request's `traceparent`, if valid, the remote parent of the
    /// span that handles it.
    pub(crate) fn extract(span: &tracing::Span, metadata: &Metadata) {
        let Some(parent) = metadata.get_str(TRACEPARENT_KEY) else { return };
        let Some(sc) = parse_traceparent(parent, metadata.get_str(TRACESTATE_KEY)) else {
            tracing::debug!("ignoring an invalid traceparent in the request metadata");
            return;
        };
        // Without the tracing-opentelemetry layer there is no trace to join.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

#[cfg(feature = "otel")]
pub use otel::{parse_traceparent, traceparent};

/// Writes the trace context of `span` (or of the current span) into a
/// call's metadata.
#[inline(always)]
pub(crate) fn inject(span: &tracing::Span, metadata: &mut Metadata) {
    #[cfg(feature = "otel")]
    otel::inject(span, metadata);
    #[cfg(not(feature = "otel"))]
    let _ = (span, metadata);
}

/// Makes a request's `traceparent` the remote parent of its handler's span.
#[inline(always)]
pub(crate) fn extract(span: &tracing::Span, metadata: &Metadata) {
    #[cfg(feature = "otel")]
    otel::extract(span, metadata);
    #[cfg(not(feature = "otel"))]
    let _ = (span, metadata);
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_context_traceparent_round_trips() {
        let sc = parse_traceparent(GOOD, None).expect("valid");
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(traceparent(&sc), GOOD);
    }

    #[test]
    fn trace_context_hostile_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            &GOOD[..54],
            &format!("{GOOD}-extra"),
            &GOOD.replace("4bf9", "4BF9"),
            &GOOD.replacen('-', "_", 1),
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad:?} was accepted");
        }
        // A later version may append fields.
        assert!(parse_traceparent(&format!("01{}-later", &GOOD[2..]), None).is_some());
    }

    #[test]
    fn trace_context_oversized_tracestate_is_dropped() {
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE_LEN));
        let sc = parse_traceparent(GOOD, Some(&long)).expect("the parent is still valid");
        assert_eq!(sc.trace_state().header(), "");
        let sc = parse_traceparent(GOOD, Some("vendor=abc")).expect("valid");
        assert_eq!(sc.trace_state().header(), "vendor=abc");
    }
}
