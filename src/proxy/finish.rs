//! The finaliser: every request ends here exactly once, whatever the exit (an answer streamed to
//! its end, an error keygate returns, a broken stream, the client going away, a coordination
//! failure, a panic). It releases the lease with the usage seen so far, records the request
//! metrics and emits one `RequestEvent`. A `Finish` that is dropped without being ended (the
//! client cancelled, or a panic unwound the handler) ends itself in `Drop`.
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::error::{ErrorKind, ProxyError};
use crate::billing::pricing::Price;

use crate::coord::{ClientLimits, Coord, Fault, Lease, Released, Report, StatClass, Usage};
use crate::events::{KeyStatusChange, RequestEvent, Tokens};
use crate::formats::Format;
use crate::snapshot::ServiceRt;
use crate::state::AppState;
use crate::telemetry::metrics as m;

/// HTTP status logged for a client that went away before the answer's head (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

/// The lease on the key currently serving the request.
pub struct Held {
    pub index: usize,
    pub lease: Lease,
    /// This request is the half-open trial of a key that tripped on failures.
    pub probe: bool,
    renewal: u64,
    /// When the attempt on this key was sent, and how long its answer's head took.
    sent: Instant,
    head_ms: Option<u64>,
    /// The status of the answer's head, once it came.
    head_status: Option<u16>,
}

pub struct Finish {
    state: AppState,
    pub started: Instant,
    /// Metric label: the slug, or `_unknown` for slugs that do not exist (attacker-controlled).
    label: String,
    pub slug: String,
    pub svc: Option<Arc<ServiceRt>>,
    pub client_fmt: Format,
    pub upstream_fmt: Format,
    pub access_key_id: Option<i64>,
    pub client: Option<ClientLimits>,
    pub model: Option<String>,
    /// The model sent upstream, when an alias changed it.
    pub upstream_model: Option<String>,
    pub path: String,
    pub attempts: u32,
    pub tried: Vec<i64>,
    held: Option<Held>,
    /// Status of the answer's head once it went to the client (0 before).
    pub status: u16,
    pub ttft: Option<Duration>,
    pub tokens: Tokens,
    pub streamed: bool,
    /// The token counts are keygate's estimate, not the upstream's.
    pub estimated: bool,
    /// For a router slug: the target serving the request (`svc` is then the target).
    pub target: Option<String>,
    /// The price of the model on the serving slug, when a rule or the default table has one.
    pub price: Option<Price>,
    /// Micro-units set aside from the client's budget at the first acquire, not yet settled.
    pub reserved: i64,
    /// What the request cost, once its usage is known.
    cost: Option<i64>,
    /// The request body, to estimate its prompt tokens from when the upstream reports none.
    pub prompt: Option<bytes::Bytes>,
    /// The request's span (`llm.request`): its fields are filled in as the request ends, and
    /// work done off the request's task (releases, reports) runs inside it.
    pub span: tracing::Span,
    /// The answer as the client received it, up to the service's capture size (None: the
    /// service captures no bodies, or no answer came through the meter).
    pub response_capture: Option<Vec<u8>>,
    done: bool,
}

impl Finish {
    pub fn start(state: &AppState, slug: &str, path: &str, fmt: Format) -> Self {
        Self {
            state: state.clone(),
            started: Instant::now(),
            label: slug.to_string(),
            slug: slug.to_string(),
            svc: None,
            client_fmt: fmt,
            upstream_fmt: fmt,
            access_key_id: None,
            client: None,
            model: None,
            upstream_model: None,
            path: path.to_string(),
            attempts: 0,
            tried: Vec::new(),
            held: None,
            status: 0,
            ttft: None,
            tokens: Tokens::default(),
            streamed: false,
            estimated: false,
            target: None,
            price: None,
            reserved: 0,
            cost: None,
            prompt: None,
            response_capture: None,
            span: tracing::Span::current(),
            done: false,
        }
    }

    /// The slug named no service: keep it out of metric labels.
    pub fn unknown_slug(&mut self) {
        self.label = crate::events::UNKNOWN_SERVICE.into();
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Takes the lease of a granted attempt; it is renewed while the request lives.
    pub fn hold(&mut self, index: usize, lease: Lease, probe: bool) {
        let ttl = self.svc.as_ref().map(|s| s.lease_ttl_ms).unwrap_or(30_000);
        let renewal = self.state.leases.add(lease.clone(), ttl);
        self.attempts += 1;
        self.tried.push(lease.key_id);
        self.held = Some(Held {
            index,
            lease,
            probe,
            renewal,
            sent: Instant::now(),
            head_ms: None,
            head_status: None,
        });
    }

    /// The held key's answer head arrived: its latency, for the latency strategy.
    pub fn head_arrived(&mut self, status: u16) {
        if let Some(h) = &mut self.held {
            h.head_ms = Some(h.sent.elapsed().as_millis() as u64);
            h.head_status = Some(status);
        }
    }

    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    pub fn masked_key(&self) -> &str {
        match (&self.svc, &self.held) {
            (Some(svc), Some(h)) => &svc.keys[h.index].masked,
            _ => "",
        }
    }

    fn take_held(&mut self) -> Option<Held> {
        let h = self.held.take()?;
        self.state.leases.remove(h.renewal);
        Some(h)
    }

    /// The key failed: record the fault (which releases its lease) before another is tried.
    pub async fn fault(&mut self, fault: Fault, reason: &str) -> Option<Report> {
        let h = self.take_held()?;
        let svc = self.svc.clone()?;
        let (st, reason) = (self.state.clone(), reason.to_string());
        // Its own task: a client that goes away mid-report must not leave the fault unrecorded
        // and the lease held; nor may a failed report.
        let took = Some(
            h.head_ms
                .unwrap_or_else(|| h.sent.elapsed().as_millis() as u64),
        );
        // A refusal came with a 4xx head, a failure with a 5xx head or with none at all.
        let class = match (fault, h.head_status) {
            (Fault::Failure, None) => StatClass::Network,
            (Fault::Failure, Some(s)) => StatClass::Server(s),
            (_, s) => StatClass::Client(s.unwrap_or(0)),
        };
        let task = tokio::spawn(
            async move {
                let r = report(
                    &st,
                    &svc,
                    h.lease.key_id,
                    Some(&h.lease),
                    fault,
                    &reason,
                    took,
                    Some(class),
                )
                .await;
                if r.is_none() {
                    let _ = st.coord.release(&h.lease, &Usage::default()).await;
                }
                st.lease_released.notify_waiters();
                r
            }
            .instrument(self.span.clone()),
        );
        task.await.ok().flatten()
    }

    /// Lets the key go without a verdict (the request's own deadline or body was at fault).
    pub fn release_untried(&mut self) {
        if let Some(h) = self.take_held() {
            self.release(h, &Usage::default());
        }
    }

    /// The key answered well but the answer is not the one the client gets (it is asked again
    /// another way): release it as a success, with no usage.
    pub fn release_answered(&mut self) {
        if let Some(h) = self.take_held() {
            self.release_with_usage(h, true);
        }
    }

    fn release(&self, h: Held, usage: &Usage) {
        // The in-process store answers at once; Redis is released off the client's path.
        let svc = self.svc.clone();
        match &self.state.coord {
            Coord::Memory(mem) => {
                let r = mem.release(&h.lease, usage);
                self.state.lease_released.notify_waiters();
                spent_balance(&self.state, svc.as_deref(), &h.lease, r);
            }
            Coord::Redis(_) => {
                let (st, usage) = (self.state.clone(), *usage);
                tokio::spawn(async move {
                    match st.coord.release(&h.lease, &usage).await {
                        Ok(r) => spent_balance(&st, svc.as_deref(), &h.lease, r),
                        Err(e) => {
                            metrics::counter!(m::COORD_ERRORS_TOTAL, "kind" => e.kind())
                                .increment(1);
                            tracing::warn!(error = %e, "lease release failed; it will expire by its TTL");
                        }
                    }
                    st.lease_released.notify_waiters();
                }.instrument(self.span.clone()));
            }
        }
    }

    /// An error keygate answers itself: the single exit for every refusal and failure that
    /// produced no upstream answer.
    pub fn fail(mut self, e: ProxyError) -> Response {
        self.release_untried();
        self.status = e.kind.status().as_u16();
        self.head_sent();
        self.emit(Some(e.kind.label()), false);
        let loop_detected = e.kind == ErrorKind::LoopDetected;
        let mut resp = e.into_response();
        if loop_detected {
            resp.headers_mut()
                .insert(super::headers::HOP, self.state.hop_id.clone());
        }
        resp
    }

    /// Records the time to the response head (the request-duration histogram).
    pub fn head_sent(&self) {
        metrics::histogram!(m::REQUEST_DURATION, "slug" => self.label.clone())
            .record(self.started.elapsed().as_secs_f64());
    }

    /// The answer went to the client to its end: release with usage, and log.
    pub fn end(mut self, success: bool, error_kind: Option<&str>) {
        if let Some(h) = self.take_held() {
            self.release_with_usage(h, success);
        }
        self.emit(error_kind, false);
    }

    /// The upstream stream broke after bytes reached the client: the key is marked (off the
    /// client's path) and the request logged.
    pub fn end_broken(mut self, reason: &'static str) {
        if let (Some(h), Some(svc)) = (self.take_held(), self.svc.clone()) {
            let st = self.state.clone();
            tokio::spawn(
                async move {
                    report(
                        &st,
                        &svc,
                        h.lease.key_id,
                        Some(&h.lease),
                        Fault::Failure,
                        reason,
                        None,
                        Some(StatClass::Server(h.head_status.unwrap_or(0))),
                    )
                    .await;
                    st.lease_released.notify_waiters();
                }
                .instrument(self.span.clone()),
            );
        }
        self.emit(Some("stream_broken"), false);
    }

    fn release_with_usage(&mut self, h: Held, success: bool) {
        let Some(svc) = self.svc.clone() else { return };
        if h.probe && success {
            metrics::counter!(m::KEY_TRANSITIONS_TOTAL, "slug" => svc.slug.clone(), "to" => "active")
                .increment(1);
            tracing::info!(key = %svc.keys[h.index].masked, key_id = h.lease.key_id, slug = %svc.slug, to = "active", reason = "trial request succeeded", "upstream key back in rotation");
        }
        let spec = &svc.specs[h.index];
        // The answer came: its usage is what it cost (a cancelled stream: what was delivered).
        let cost = self.price.map(|p| p.cost(&self.tokens));
        self.cost = cost;
        let usage = Usage {
            success,
            tokens: self.tokens.total(),
            cost: cost.unwrap_or(0),
            key_tpm: spec.tpm,
            client: self.client,
            key_balance: spec.balance,
            latency_ms: h.head_ms,
            reserved: std::mem::take(&mut self.reserved),
            status: h.head_status.unwrap_or(0),
        };
        self.release(h, &usage);
    }

    fn emit(&mut self, error_kind: Option<&str>, cancelled: bool) {
        self.done = true;
        // Set aside at acquire and never settled by a release (the request got no answer):
        // give it back.
        let reserved = std::mem::take(&mut self.reserved);
        if reserved != 0
            && let Some(c) = self.client
        {
            let st = self.state.clone();
            tokio::spawn(
                async move {
                    if let Err(e) = st.coord.settle(&c, -reserved).await {
                        metrics::counter!(m::COORD_ERRORS_TOTAL, "kind" => e.kind()).increment(1);
                    }
                }
                .instrument(self.span.clone()),
            );
        }
        let status = self.status;
        metrics::counter!(m::REQUESTS_TOTAL, "slug" => self.label.clone(), "status" => status.to_string())
            .increment(1);
        if status < 400 && self.svc.is_some() {
            self.count_usage();
        }
        self.record_span(status, error_kind);
        let bodies = self.captured();
        let ts = chrono::Utc::now();
        self.state.events.request(RequestEvent {
            id: crate::events::log_id(ts),
            ts,
            service: self.label.clone(),
            access_key_id: self.access_key_id,
            upstream_key_id: self.tried.last().copied(),
            tried: std::mem::take(&mut self.tried),
            model: self.model.take(),
            upstream_model: self.upstream_model.take(),
            path: std::mem::take(&mut self.path),
            status,
            attempts: self.attempts,
            latency_ms: self.started.elapsed().as_millis() as u64,
            ttft_ms: self.ttft.map(|t| t.as_millis() as u64),
            tokens: self.tokens,
            cost_micros: self.cost,
            error_kind: error_kind.map(str::to_string),
            streamed: self.streamed,
            cancelled,
            estimated: self.estimated,
            client_format: self.client_fmt.name(),
            upstream_format: self.upstream_fmt.name(),
            target: self.target.take(),
            bodies,
        });
    }
}

impl Finish {
    /// Tokens and cost of an answered request, by slug and model.
    fn count_usage(&self) {
        let model = m::model_label(self.model.as_deref());
        let t = &self.tokens;
        for (kind, n) in [
            ("prompt", t.prompt),
            ("completion", t.completion),
            ("cache_read", t.cache_read),
            ("cache_write", t.cache_write),
        ] {
            if n > 0 {
                metrics::counter!(m::TOKENS_TOTAL, "slug" => self.label.clone(), "model" => model.clone(), "kind" => kind)
                    .increment(n);
            }
        }
        if let Some(c) = self.cost.filter(|c| *c > 0) {
            metrics::counter!(m::COST_MICROS_TOTAL, "slug" => self.label.clone(), "model" => model)
                .increment(c as u64);
        }
    }

    /// Fills in the request span's outcome (its attributes in the exported trace).
    fn record_span(&self, status: u16, error_kind: Option<&str>) {
        let s = &self.span;
        s.record("status", status);
        s.record("attempts", self.attempts);
        s.record("upstream_format", self.upstream_fmt.name());
        if let Some(m) = &self.model {
            s.record("model", m.as_str());
        }
        if let Some(m) = &self.upstream_model {
            s.record("upstream_model", m.as_str());
        }
        s.record("prompt_tokens", self.tokens.prompt);
        s.record("completion_tokens", self.tokens.completion);
        if let Some(c) = self.cost {
            s.record("cost", crate::money::format_units(c).as_str());
        }
        if let Some(k) = error_kind {
            s.record("error_kind", k);
        }
    }

    /// The bodies to store with the log row, cut and redacted, when the service captures them.
    fn captured(&mut self) -> Option<Box<crate::events::capture::Bodies>> {
        let capture = self.svc.as_ref()?.capture.clone()?;
        Some(Box::new(crate::events::capture::Bodies {
            request: self.prompt.as_deref().map(|b| capture.keep(b)),
            response: self.response_capture.take().map(|b| capture.keep(&b)),
        }))
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Unwinding from a panic, or the client went away (the server dropped the handler or
        // the response body). Usage seen so far is charged: the upstream did the work.
        let kind = if std::thread::panicking() {
            "panic"
        } else {
            "client_cancelled"
        };
        if self.status == 0 {
            self.status = if kind == "panic" { 500 } else { CLIENT_CLOSED };
        }
        let answered = self.status < 400;
        if let Some(h) = self.take_held() {
            if answered {
                self.release_with_usage(h, true);
            } else {
                self.release(h, &Usage::default());
            }
        }
        self.emit(Some(kind), true);
    }
}

/// A debit took the key's live balance to zero: it is out as `exhausted` (the store already took
/// it out, in the same step); say so as every other transition is said, and persist it.
fn spent_balance(state: &AppState, svc: Option<&ServiceRt>, lease: &Lease, r: Released) {
    if !r.exhausted {
        return;
    }
    let slug = svc.map(|s| s.slug.clone()).unwrap_or_default();
    let masked = svc
        .and_then(|s| s.keys.iter().find(|k| k.id == lease.key_id))
        .map(|k| k.masked.clone())
        .unwrap_or_default();
    metrics::counter!(m::KEY_TRANSITIONS_TOTAL, "slug" => slug.clone(), "to" => "exhausted")
        .increment(1);
    tracing::warn!(key = %masked, key_id = lease.key_id, slug = %slug, to = "exhausted", reason = "balance used up", "upstream key out of rotation");
    state.events.key_status(KeyStatusChange {
        key_id: lease.key_id,
        status: Some("exhausted"),
        reason: "balance used up".into(),
        epoch: 0,
    });
}

/// Records a key fault in the coordination store, with a metric and a log line on every
/// transition out of rotation; the status goes to the key-status sink (coalesced, off the path).
pub async fn report(
    state: &AppState,
    svc: &ServiceRt,
    key_id: i64,
    lease: Option<&Lease>,
    fault: Fault,
    reason: &str,
    took_ms: Option<u64>,
    class: Option<StatClass>,
) -> Option<Report> {
    let masked = svc
        .keys
        .iter()
        .find(|k| k.id == key_id)
        .map(|k| k.masked.as_str())
        .unwrap_or("");
    let r = match state
        .coord
        .report_timed(svc.id, key_id, lease, fault, svc.keys.len(), took_ms, class)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!(m::COORD_ERRORS_TOTAL, "kind" => e.kind()).increment(1);
            tracing::error!(error = %e, "could not record key outcome");
            return None;
        }
    };
    let to = match fault {
        Fault::Invalid => Some("invalid"),
        Fault::Exhausted => Some("exhausted"),
        Fault::RateLimited { .. } if r.service_backoff_until.is_some() => None,
        Fault::RateLimited { .. } => Some("cooling"),
        Fault::Failure if r.until > crate::coord::now_ms() => Some("cooling"),
        Fault::Failure | Fault::Clear => None,
    };
    if let Some(b) = r.service_backoff_until {
        metrics::counter!(m::SERVICE_BACKOFFS_TOTAL, "slug" => svc.slug.clone()).increment(1);
        tracing::warn!(slug = %svc.slug, until_ms = b, reason, "most keys rate-limited at once: backing off the whole service");
    }
    if let Some(to) = to {
        metrics::counter!(m::KEY_TRANSITIONS_TOTAL, "slug" => svc.slug.clone(), "to" => to)
            .increment(1);
        tracing::warn!(key = %masked, key_id, slug = %svc.slug, to, reason, fails = r.fails, until_ms = r.until, "upstream key out of rotation");
    }
    let durable = match fault {
        Fault::Invalid => Some("invalid"),
        Fault::Exhausted => Some("exhausted"),
        _ => None,
    };
    state.events.key_status(KeyStatusChange {
        key_id,
        status: durable,
        reason: reason.to_string(),
        epoch: 0,
    });
    Some(r)
}
