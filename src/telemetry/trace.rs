//! Request tracing: one span per data-plane request, a child per upstream attempt and per
//! coordination call, exported over OTLP/HTTP when a collector is configured.
//!
//! - A client's W3C `traceparent` makes the request span its child; the upstream gets a
//!   `traceparent` naming the attempt span, so a trace runs client → keygate → provider.
//! - The export runs on the SDK's batch thread: a slow or dead collector never holds a request.
//!   Its failures count in `keygate_otel_export_failures_total` and log one WARN when exporting
//!   starts failing and one INFO when it works again, never a line per batch.
//! - Without a collector the spans still exist (log lines inside a request carry its fields) and
//!   nothing is exported.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::OtelConfig;

/// Set once the OTLP layer is installed: only then are `traceparent` headers read and written.
static ENABLED: AtomicBool = AtomicBool::new(false);

pub(super) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span URL, or None when traces are not exported.
fn traces_url(c: &OtelConfig) -> Option<String> {
    if c.disabled {
        return None;
    }
    fn nonempty(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    if let Some(url) = nonempty(&c.traces_endpoint) {
        return Some(url.to_string());
    }
    nonempty(&c.endpoint).map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
}

/// The tracer provider and tracer for `c`, or None when no collector is configured.
pub(super) fn pipeline(c: &OtelConfig) -> anyhow::Result<Option<(SdkTracerProvider, SdkTracer)>> {
    let Some(url) = traces_url(c) else {
        return Ok(None);
    };
    if !(0.0..=1.0).contains(&c.sample_ratio) {
        anyhow::bail!(
            "otel.sample_ratio (OTEL_TRACES_SAMPLER_ARG) must be between 0 and 1, got {}",
            c.sample_ratio
        );
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Counted {
            inner: exporter,
            failing: AtomicBool::new(false),
        })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            c.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(c.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("keygate");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Some((provider, tracer)))
}

/// The OTLP exporter, counting its failures.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let r = self.inner.export(batch).await;
        match &r {
            Err(e) => {
                metrics::counter!(super::metrics::OTEL_EXPORT_FAILURES_TOTAL).increment(1);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, spans = n, "trace export failed; spans are dropped until the collector answers");
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export works again");
                }
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Makes `span` the child of the client's `traceparent` (when exporting) and records its trace
/// id, so that log lines inside the request name the trace.
pub fn adopt_client_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    if headers.contains_key("traceparent") {
        let cx =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
    let id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(id));
}

/// Writes `span`'s `traceparent` (and `tracestate`) over whatever the client sent, so the
/// upstream's spans hang under this attempt. Without export the client's header passes as it is.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(
        &span.context(),
        &mut opentelemetry_http::HeaderInjector(headers),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_url_comes_from_the_traces_endpoint_else_the_base_endpoint_unless_disabled() {
        let mut c = OtelConfig::default();
        assert_eq!(traces_url(&c), None);
        c.endpoint = Some("http://collector:4318/".into());
        assert_eq!(
            traces_url(&c).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        c.traces_endpoint = Some("http://other:9999/spans".into());
        assert_eq!(traces_url(&c).as_deref(), Some("http://other:9999/spans"));
        c.disabled = true;
        assert_eq!(traces_url(&c), None);
    }

    #[test]
    fn a_sample_ratio_outside_zero_to_one_is_refused() {
        let c = OtelConfig {
            endpoint: Some("http://127.0.0.1:9".into()),
            sample_ratio: 1.5,
            ..Default::default()
        };
        let e = pipeline(&c).err().expect("refused").to_string();
        assert!(e.contains("sample_ratio"), "{e}");
    }
}
