//! Logs and traces. Spans always get real OpenTelemetry contexts (so trace
//! context propagates through a service even when it exports nothing); they
//! are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
//! traces-specific variant) is set. The SDK reads `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]` and
//! `OTEL_EXPORTER_OTLP_PROTOCOL` itself.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{self, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("building the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("installing the tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the tracer provider alive; call [`Telemetry::shutdown`] to flush.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

fn otlp_endpoint_configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The tracer provider: batch OTLP export when an endpoint is configured,
/// otherwise spans are created and dropped.
pub fn tracer_provider(
    default_service_name: &str,
) -> Result<(SdkTracerProvider, bool), TelemetryError> {
    let mut resource = Resource::builder();
    // The env wins when set; otherwise name the service after its subcommand.
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(default_service_name.to_owned());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let exporting = otlp_endpoint_configured();
    if exporting {
        builder = builder.with_batch_exporter(opentelemetry_otlp::SpanExporter::builder().build()?);
    }
    Ok((builder.build(), exporting))
}

impl Telemetry {
    /// Installs the global subscriber: stderr logs filtered by `RUST_LOG`
    /// (default `info`) and an OpenTelemetry layer for request spans.
    pub fn init(default_service_name: &str, format: LogFormat) -> Result<Self, TelemetryError> {
        Self::init_with_filter(default_service_name, format, "info")
    }

    fn init_with_filter(
        default_service_name: &str,
        format: LogFormat,
        default_filter: &str,
    ) -> Result<Self, TelemetryError> {
        let (provider, exporting) = tracer_provider(default_service_name)?;
        let tracer = provider.tracer("mlmesh");
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(crate::propagation::new_propagator());

        let log_filter = log_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        );
        // Colour only for people: pipes (docker logs, kubectl logs, `mlmesh up`)
        // would get raw escape codes.
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        let fmt = match format {
            LogFormat::Text => fmt.boxed(),
            LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        };
        // Its own filter: quieting logs with RUST_LOG must not drop request spans,
        // and the exporter's own HTTP client must not trace itself.
        let otel_filter = otel_filter();
        tracing_subscriber::registry()
            .with(fmt.with_filter(log_filter))
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    // Both run at every poll of every request future (a clock
                    // read, a context attach and detach): busy/idle times are
                    // not worth that, and mlmesh reads a span's context through
                    // the span (`OpenTelemetrySpanExt::context`), not from the
                    // globally active one.
                    .with_tracked_inactivity(false)
                    .with_context_activation(false)
                    // Every request span was made at the same line of
                    // mesh-kit or the frontend's client, on one of a pool's
                    // threads: five attributes (one a thread name copied to
                    // a `String`) per span that tell nothing.
                    .with_location(false)
                    .with_threads(false)
                    .with_filter(otel_filter),
            )
            .try_init()?;
        if exporting {
            tracing::info!("exporting traces over OTLP");
        }
        Ok(Self { provider })
    }

    /// Flushes buffered spans; bounded so a dead collector cannot hang shutdown.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "flushing traces at shutdown");
        }
    }
}

/// The log lines' filter: `env`'s directives, events only. A span the fmt
/// layer sees has its fields rendered to a string when it opens, for every
/// request, though almost none ever logs (about 4% of each service's CPU); a
/// request's fields live in its trace, and the rare line inside one names
/// what it needs itself.
///
/// The events-only part says it lets every level through, so `env`'s level
/// is its hint too: without one the combination has none, the process-wide
/// maximum becomes TRACE, and every `log` record a library writes (tract
/// writes eight per inference) goes through the `log` bridge and the filters
/// only to be dropped (~5k instructions per model call).
fn log_filter<S>(env: EnvFilter) -> impl tracing_subscriber::layer::Filter<S> {
    let hint = env.max_level_hint().unwrap_or(LevelFilter::TRACE);
    env.and(filter::filter_fn(|meta| meta.is_event()).with_max_level_hint(hint))
}

/// The OpenTelemetry layer's filter: spans and events at INFO and above,
/// except the HTTP stack's and the exporter's own. Fixed targets, so a
/// `Targets` rather than an `EnvFilter`: an `EnvFilter` also answers
/// span-field directives, and to do so takes a lock and looks the span up
/// in a map at every enter and exit of every request span (each poll of a
/// request's future), for directives this filter never has.
fn otel_filter() -> Targets {
    Targets::new().with_default(LevelFilter::INFO).with_targets(
        [
            "h2",
            "hyper",
            "hyper_util",
            "reqwest",
            "tower",
            "opentelemetry",
        ]
        .map(|t| (t, LevelFilter::OFF)),
    )
}

/// For test binaries: installs the subscriber once (no exporter unless the
/// environment configures one), so spans get real trace contexts and
/// exemplars can be checked. Later calls are no-ops.
pub fn init_for_tests() {
    static ONCE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        // Leaked on purpose: the provider must outlive every test in the binary.
        if let Ok(t) = Telemetry::init_with_filter("mlmesh-test", LogFormat::Text, "error") {
            std::mem::forget(t);
        }
    });
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::Registry;
    use tracing_subscriber::layer::Filter;

    use super::*;

    #[test]
    fn the_log_filter_hints_its_directives_level() {
        for (directives, level) in [
            ("info", LevelFilter::INFO),
            ("warn", LevelFilter::WARN),
            ("warn,hyper=debug", LevelFilter::DEBUG),
            ("trace", LevelFilter::TRACE),
        ] {
            let f = log_filter::<Registry>(EnvFilter::new(directives));
            assert_eq!(
                Filter::<Registry>::max_level_hint(&f),
                Some(level),
                "{directives}"
            );
        }
    }

    #[test]
    fn spans_of_the_http_stack_and_exporter_are_not_traced() {
        let f = otel_filter();
        for target in ["mesh_kit::server", "frontend::upstream", "model_inference"] {
            assert!(f.would_enable(target, &tracing::Level::INFO), "{target}");
            assert!(!f.would_enable(target, &tracing::Level::DEBUG), "{target}");
        }
        for target in [
            "hyper::proto::h1",
            "h2::codec",
            "reqwest::connect",
            "opentelemetry_sdk",
        ] {
            assert!(!f.would_enable(target, &tracing::Level::ERROR), "{target}");
        }
    }
}
