//! Logs and traces. Logs go to stderr, as text or as JSON lines (`--log-format`). Traces go
//! over OTLP/gRPC to a collector when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, configured by the standard `OTEL_*`
//! variables (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_RESOURCE_ATTRIBUTES`, ...);
//! with neither, nothing is exported.

use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (for log pipelines).
    Json,
}

/// What [`init`] installed; [`Telemetry::shutdown`] sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops the trace export. Call it outside the runtime's threads, while the
    /// runtime still runs (the exporter's tasks live there).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: trace export did not shut down cleanly: {e}");
        }
    }
}

/// Installs the global subscriber. `SLUICE_LOG` (or `RUST_LOG`) filters the log lines, `info`
/// by default; traces take Sluice's own spans at info and above.
/// Must run inside the Tokio runtime: the trace exporter's batches are sent from its tasks.
pub fn init(format: LogFormat, role: &str) -> Telemetry {
    let filter = std::env::var("SLUICE_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).boxed(),
    };
    let (provider, problem) = match exporting() {
        true => match tracer_provider(role) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
        false => (None, None),
    };
    // Sluice's own spans at info and above, whatever SLUICE_LOG says of the log lines.
    if provider.is_some() {
        // What carries trace context across the queue (sluice_core::trace) and from callers.
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    }
    let otel = provider.as_ref().map(|p| {
        let spans = tracing_subscriber::filter::Targets::new().with_target("sluice", tracing::Level::INFO);
        tracing_opentelemetry::layer().with_tracer(p.tracer("sluice")).with_filter(spans)
    });
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init();
    if let Some(e) = problem {
        tracing::warn!(error = %e, "cannot export traces (OTEL_EXPORTER_OTLP_ENDPOINT); running without");
    } else if provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { provider }
}

fn exporting() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

fn tracer_provider(role: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
    // The SDK's default batch processor exports from a thread of its own, where tonic finds
    // no runtime; this one exports from a task.
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(format!("sluice-{role}"));
    }
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource.build()).build())
}
