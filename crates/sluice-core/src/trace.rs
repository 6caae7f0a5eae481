//! Trace context across the spike queue, as W3C `traceparent`: the gateway stores its
//! current span's context in each message it queues, and the worker's span for that message
//! continues the trace, so one trace shows a bulk send from the caller to every delivery.
//!
//! Spans have an OpenTelemetry context, and the W3C propagator is installed, only while the
//! binary exports traces (OTLP, off by default); otherwise nothing is carried and nothing is
//! continued.

use opentelemetry::global;
use opentelemetry::trace::TraceContextExt;
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header (and gRPC metadata key) that carries a trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of the current span, when it is being recorded (sampled).
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_sampled() {
        return None;
    }
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span `traceparent` names; a malformed value is ignored (the
/// span starts a trace of its own).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = global::get_text_map_propagator(|p| p.extract(&carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    fn trace_id(span: &tracing::Span) -> opentelemetry::trace::TraceId {
        span.context().span().span_context().trace_id()
    }

    /// Runs `f` with spans recorded by an OpenTelemetry tracer (sampling everything) and the
    /// W3C propagator, as the binary sets them up when it exports traces.
    fn traced(f: impl FnOnce()) {
        global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
    }

    #[test]
    fn without_an_exporter_nothing_is_carried() {
        let span = tracing::info_span!("enqueue");
        let _in = span.enter();
        assert_eq!(current_traceparent(), None);
    }

    #[test]
    fn a_queued_message_continues_the_trace_of_its_enqueue() {
        traced(|| {
            let enqueue = tracing::info_span!("enqueue");
            let carried = enqueue.in_scope(current_traceparent).expect("a sampled span has a traceparent");
            assert!(carried.starts_with("00-") && carried.ends_with("-01"), "{carried}");
            let deliver = tracing::info_span!("deliver");
            continue_trace(&deliver, &carried);
            assert_eq!(trace_id(&deliver), trace_id(&enqueue));
        });
    }

    #[test]
    fn a_malformed_traceparent_starts_a_trace_of_its_own() {
        traced(|| {
            let enqueue = tracing::info_span!("enqueue");
            let _ = enqueue.in_scope(current_traceparent);
            for bad in ["not a trace context", "00-00000000000000000000000000000000-0000000000000000-01"] {
                let deliver = tracing::info_span!("deliver");
                continue_trace(&deliver, bad);
                assert_ne!(trace_id(&deliver), trace_id(&enqueue), "{bad}");
            }
        });
    }
}
