//! One granted attempt: the lease on a key for the life of the request. The lease is renewed while
//! the request lives (a long stream), released with the usage when the answer ends, and released
//! without a verdict if the request is dropped (client gone). A replica that dies leaves leases
//! that expire by their TTL.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

use crate::coord::{ClientLimits, Fault, Lease, Report, Usage};
use crate::snapshot::ServiceRt;
use crate::state::AppState;
use crate::telemetry::metrics as m;

/// What the request log row needs, filled in as the request goes.
#[derive(Clone)]
pub struct LogCtx {
    pub access_key_id: Option<i64>,
    pub model: Option<String>,
    pub path: String,
    pub started: Instant,
}

pub struct Attempt {
    pub state: AppState,
    pub svc: Arc<ServiceRt>,
    pub index: usize,
    pub lease: Lease,
    pub client: Option<ClientLimits>,
    /// This request is the half-open trial of a key that tripped on failures.
    pub probe: bool,
    renew: AbortHandle,
    done: bool,
}

impl Attempt {
    pub fn new(
        state: AppState,
        svc: Arc<ServiceRt>,
        index: usize,
        lease: Lease,
        client: Option<ClientLimits>,
        probe: bool,
    ) -> Self {
        let ttl = svc.lease_ttl_ms;
        let (st, l) = (state.clone(), lease.clone());
        let renew = tokio::spawn(async move {
            let every = Duration::from_millis((ttl / 3).max(100));
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = st.coord.renew(&l, ttl).await {
                    tracing::warn!(error = %e, "lease renewal failed");
                }
            }
        })
        .abort_handle();
        Self {
            state,
            svc,
            index,
            lease,
            client,
            probe,
            renew,
            done: false,
        }
    }

    pub fn key_id(&self) -> i64 {
        self.lease.key_id
    }

    pub fn masked(&self) -> &str {
        &self.svc.keys[self.index].masked
    }

    /// The key answered: release the lease with the usage (off the client's path) and log.
    pub fn finish(
        mut self,
        success: bool,
        (prompt, completion): (u64, u64),
        status: u16,
        log: &LogCtx,
        attempts: u32,
    ) {
        self.done = true;
        self.renew.abort();
        if self.probe && success {
            metrics::counter!(m::KEY_TRANSITIONS_TOTAL, "slug" => self.svc.slug.clone(), "to" => "active")
                .increment(1);
            tracing::info!(key = %self.masked(), key_id = self.lease.key_id, slug = %self.svc.slug, to = "active", reason = "trial request succeeded", "upstream key back in rotation");
        }
        let spec = &self.svc.specs[self.index];
        let usage = Usage {
            success,
            tokens: prompt.saturating_add(completion),
            cost: 0,
            key_tpm: spec.tpm,
            client: self.client,
            key_balance: spec.balance,
        };
        let (st, lease) = (self.state.clone(), self.lease.clone());
        tokio::spawn(async move {
            if let Err(e) = st.coord.release(&lease, &usage).await {
                metrics::counter!(m::COORD_ERRORS_TOTAL, "kind" => e.kind()).increment(1);
                tracing::warn!(error = %e, "lease release failed; it will expire by its TTL");
            }
            st.lease_released.notify_waiters();
        });
        write_log(
            &self.state,
            &self.svc,
            log,
            Some(self.lease.key_id),
            status,
            attempts,
            (prompt, completion),
            None,
        );
    }

    /// The key failed: record the fault (releasing the lease) before another key is tried.
    pub async fn fail(mut self, fault: Fault, reason: &str) -> Option<Report> {
        self.renew.abort();
        let r = report(
            &self.state,
            &self.svc,
            self.lease.key_id,
            self.masked(),
            Some(&self.lease),
            fault,
            reason,
        )
        .await;
        // Only now: if the request is dropped mid-report, Drop still releases the lease.
        self.done = true;
        self.state.lease_released.notify_waiters();
        r
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.renew.abort();
        let (st, lease) = (self.state.clone(), self.lease.clone());
        tokio::spawn(async move {
            let _ = st.coord.release(&lease, &Usage::default()).await;
            st.lease_released.notify_waiters();
        });
    }
}

/// Records a key fault in the coordination store, with a metric and a log line on every
/// transition out of rotation; durable statuses also go to the database (off the request path).
pub async fn report(
    state: &AppState,
    svc: &ServiceRt,
    key_id: i64,
    masked: &str,
    lease: Option<&Lease>,
    fault: Fault,
    reason: &str,
) -> Option<Report> {
    let r = match state
        .coord
        .report(svc.id, key_id, lease, fault, svc.keys.len())
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
    state.events.key_status(crate::events::KeyStatusChange {
        key_id,
        status: durable,
        reason: reason.to_string(),
    });
    Some(r)
}

#[allow(clippy::too_many_arguments)]
pub fn write_log(
    state: &AppState,
    svc: &ServiceRt,
    log: &LogCtx,
    upstream_key_id: Option<i64>,
    status: u16,
    attempts: u32,
    (prompt, completion): (u64, u64),
    error_kind: Option<&str>,
) {
    state.events.request(crate::events::RequestEvent {
        id: uuid::Uuid::now_v7(),
        ts: chrono::Utc::now(),
        service: svc.slug.clone(),
        access_key_id: log.access_key_id,
        upstream_key_id,
        tried: Vec::new(),
        model: log.model.clone(),
        upstream_model: None,
        path: log.path.clone(),
        status,
        attempts,
        latency_ms: log.started.elapsed().as_millis() as u64,
        ttft_ms: None,
        tokens: crate::events::Tokens {
            prompt,
            completion,
            ..Default::default()
        },
        cost_micros: None,
        error_kind: error_kind.map(str::to_string),
        streamed: false,
        cancelled: false,
        estimated: false,
        client_format: "openai",
        upstream_format: "openai",
    });
}
