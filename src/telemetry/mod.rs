//! Logging, traces and metrics setup. Log lines go to stderr (text or JSON); trace spans go to an
//! OTLP/HTTP collector when one is configured (`otel`), never from the request path: spans are
//! batched and sent from the SDK's own thread.
pub mod metrics;
pub mod trace;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::OtelConfig;

/// Keeps the trace pipeline alive; `shutdown` flushes the spans still queued.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends what is queued and stops the exporter (off the async workers: it blocks).
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// Installs the global subscriber: stderr logs, plus OTLP export of keygate's spans when `otel`
/// names a collector. A second call (tests spawning many apps) keeps the first subscriber.
pub fn init(format: &str, otel: &OtelConfig) -> Telemetry {
    init_with(format, otel, "info,sqlx=warn,sea_orm=warn")
}

/// For `keygate admin`: the command's answer is its output, so only warnings and errors are
/// logged (to standard error) unless `RUST_LOG` says otherwise.
pub fn init_cli(format: &str) {
    let _ = init_with(
        format,
        &OtelConfig::default(),
        "warn,sqlx=error,sea_orm=error",
    );
}

fn init_with(format: &str, otel: &OtelConfig, default_filter: &str) -> Telemetry {
    // The OpenTelemetry crates log their own export errors through `tracing`: those would be
    // spans' events feeding the exporter that failed. The exporter wrapper reports instead.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter))
        .add_directive("opentelemetry=off".parse().expect("static directive"))
        .add_directive("opentelemetry_sdk=off".parse().expect("static directive"))
        .add_directive("opentelemetry_otlp=off".parse().expect("static directive"))
        .add_directive("opentelemetry_http=off".parse().expect("static directive"));
    let (provider, otel_layer) = match trace::pipeline(otel) {
        Ok(Some((provider, tracer))) => {
            // Only keygate's own spans (the request, its attempts, coordination calls) are
            // exported; a dependency's span would be noise in every trace.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("keygate", LevelFilter::INFO));
            (Some(provider), Some(layer))
        }
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("keygate: traces are off: {e}");
            (None, None)
        }
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let res = if format == "json" {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    let installed = res.is_ok();
    if installed && provider.is_some() {
        trace::set_enabled();
    }
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

/// Logs only (what tests use).
pub fn init_tracing(format: &str) {
    let _ = init(format, &OtelConfig::default());
}
