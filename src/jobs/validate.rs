//! Key validation: one cheap upstream request per key, read the way the data plane reads answers,
//! so operators learn which keys work before traffic does and keys that went out of rotation come
//! back once they answer again.
//!
//! The request is the upstream's model list, `GET {base_url}/models`, with the service's own auth
//! rule (the data plane's `ServiceRt::set_auth`: `Authorization: Bearer` for `openai`,
//! `x-api-key` + `anthropic-version` for `anthropic`, `x-goog-api-key` for `gemini`). A `rest`
//! service has no such list, so it gets `GET {base_url}/`. The answer is classified as on the data
//! plane (`proxy::failover::classify`): a status the data plane would hand the client as it is
//! (2xx, or a 4xx such as a 404 from a REST root) says the key was accepted; 401/403 mean
//! invalid; 402, or a 429 whose body says the quota is gone, exhausted; any other 429, a 5xx, a
//! timeout (the service's `request_timeout_ms`) or a connect error is passing trouble.
//!
//! What a test records, on demand or scheduled alike:
//! - accepted, and the key was out of rotation (`invalid`, `exhausted`, `cooling`): it comes back
//!   as an operator's re-enable brings it back (durable status `active`, live health cleared);
//! - refused: the key goes out as a data-plane attempt would take it out (`proxy::finish::report`).
//!   An operator who tests a key wants traffic off a key the upstream refuses;
//! - passing trouble: the key's health is left alone. A probe is not traffic: cooling a key, or
//!   counting towards its breaker, on one 429 or 5xx of a test would take healthy keys out on a
//!   flaky moment the data plane would have retried through;
//! - a `disabled` key is tested but never changes status: that is the operator's call.
//!
//! Every test stores `validated_at` and `validation_error` on the key.
//!
//! Scheduled validation (`services.validate_interval_s`, off by default) re-tests the keys out of
//! rotation. Every replica looks for due services every `jobs.validate_tick_ms`; a run first takes
//! the lock `validate:<service id>` in the coordination store for one interval and keeps it when
//! done, so the lock means both "one replica at a time" and "once per interval". A run starts no
//! test after 90% of the interval, so it never outlives its lock. A replica that shuts down
//! mid-run gives its lock back, so another replica can redo the run at once.
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use sea_orm::ActiveValue::Unchanged;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use utoipa::ToSchema;

use super::{BackInRotation, Candidate, Error, egress_client};
use crate::coord::Fault;
use crate::crypto::mask;
use crate::db::{
    self,
    entity::{service, upstream_key},
};
use crate::domain::{KeyStatus, Kind};
use crate::formats::Format;
use crate::proxy::failover::{Class, KeyFault, classify, read_small};
use crate::snapshot::ServiceRt;
use crate::state::AppState;
use crate::telemetry::metrics as m;

/// The statuses a scheduled validation re-tests.
pub const OUT_OF_ROTATION: [KeyStatus; 3] =
    [KeyStatus::Invalid, KeyStatus::Exhausted, KeyStatus::Cooling];

/// What testing one key found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyTest {
    pub key_id: i64,
    /// Masked (`sk-ab...wxyz`).
    pub key: String,
    /// The upstream accepted the key (it did not answer 401/402/403/429/5xx, and did answer).
    pub ok: bool,
    /// The upstream's HTTP status; null when no answer came (timeout, connect error).
    pub status: Option<u16>,
    /// Time to the answer's head.
    pub latency_ms: u64,
    /// What went wrong, when something did (never the key).
    pub error: Option<String>,
    pub key_status_before: KeyStatus,
    /// After the test: back to `active` when an out-of-rotation key answered, `invalid` or
    /// `exhausted` when the upstream refused it.
    pub key_status_after: KeyStatus,
}

/// Tests `keys` of `svc`, at most `validate_concurrency` at once, results in the keys' order.
/// With a `deadline` (scheduled runs) no test starts or lasts past it, and keys it leaves out are
/// missing from the result.
pub async fn test_keys(
    state: &AppState,
    svc: &service::Model,
    keys: Vec<Candidate>,
    deadline: Option<Instant>,
) -> Result<Vec<KeyTest>, Error> {
    // The data plane's view of the service: the same URL, auth rule and timeout traffic uses.
    let rt = super::runtime(state, svc)?;
    let at_once = svc.validate_concurrency.clamp(1, 64) as usize;
    super::over_keys(
        state,
        keys,
        at_once,
        |c| test_one(state, &rt, c, deadline),
        |t, after| KeyTest {
            key_status_after: after,
            ..t
        },
    )
    .await
}

async fn test_one(
    state: &AppState,
    rt: &ServiceRt,
    c: Candidate,
    deadline: Option<Instant>,
) -> Result<Option<super::Done<KeyTest>>, Error> {
    let Some(timeout) = super::time_left(rt.request_timeout, deadline) else {
        return Ok(None);
    };
    let Candidate {
        key,
        status: before,
    } = c;
    let (masked, probe) = match state.cipher.decrypt(&key.secret).map(SecretString::from) {
        Ok(secret) => (
            mask(secret.expose_secret()),
            match egress_client(state, rt, &key) {
                Ok(client) => {
                    probe(&client, &state.egress, rt, secret.expose_secret(), timeout).await
                }
                Err(e) => Probe::inconclusive(None, Duration::ZERO, &e),
            },
        ),
        Err(_) => (
            "(undecryptable)".to_string(),
            Probe::inconclusive(None, Duration::ZERO, "the stored key cannot be decrypted"),
        ),
    };
    metrics::counter!(m::KEY_VALIDATIONS_TOTAL, "slug" => rt.slug.clone(), "outcome" => probe.verdict.label())
        .increment(1);
    let (stored_after, back) = record(state, rt, &key, before, &probe, &masked).await?;
    Ok(Some(super::Done {
        key_id: key.id,
        // A key whose durable status went back to `active` is not in the snapshot yet.
        reload: back && key.status != KeyStatus::Active.as_str(),
        result: KeyTest {
            key_id: key.id,
            key: masked,
            ok: probe.verdict == Verdict::Accepted,
            status: probe.status,
            latency_ms: probe.latency.as_millis() as u64,
            error: probe.error,
            key_status_before: before,
            key_status_after: before,
        },
        stored_after,
    }))
}

/// Acts on what a test found (see the module notes); returns the key's durable status after it,
/// and whether the key came back into rotation.
async fn record(
    state: &AppState,
    rt: &ServiceRt,
    key: &upstream_key::Model,
    before: KeyStatus,
    probe: &Probe,
    masked: &str,
) -> Result<(String, bool), Error> {
    let mut am = upstream_key::ActiveModel {
        id: Unchanged(key.id),
        ..Default::default()
    };
    let mut stored_after = key.status.clone();
    let back = (probe.verdict == Verdict::Accepted && OUT_OF_ROTATION.contains(&before))
        .then(|| BackInRotation::begin(state, key.id, &mut am));
    if back.is_some() {
        stored_after = KeyStatus::Active.as_str().into();
    }
    if let Verdict::Refused(fault, to) = probe.verdict
        && before != to
        && before != KeyStatus::Disabled
    {
        let reason = probe.error.as_deref().unwrap_or("refused");
        crate::proxy::finish::report(state, rt, key.id, None, fault, reason, None, None).await;
        stored_after = to.as_str().into();
    }
    db::keys::set_validation(&state.db, am, probe.error.clone()).await?;
    let came_back = back.is_some();
    if let Some(back) = back {
        back.finish(rt, masked, before, "it answered a validation")
            .await?;
    }
    Ok((stored_after, came_back))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted,
    /// Refused for good: the fault to report and the status it leads to.
    Refused(Fault, KeyStatus),
    /// Says nothing lasting about the key.
    Inconclusive,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "ok",
            Self::Refused(_, s) => s.as_str(),
            Self::Inconclusive => "inconclusive",
        }
    }
}

struct Probe {
    verdict: Verdict,
    status: Option<u16>,
    latency: Duration,
    error: Option<String>,
}

impl Probe {
    fn inconclusive(status: Option<u16>, latency: Duration, error: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Inconclusive,
            status,
            latency,
            error: Some(error.into()),
        }
    }
}

/// The URL of the cheap request: the model list, or a REST upstream's root.
fn probe_url(rt: &ServiceRt) -> String {
    match rt.kind {
        Kind::Rest => format!("{}/", rt.base_url),
        // A router has no keys of its own, so it is never probed; its targets are.
        Kind::OpenAi | Kind::Anthropic | Kind::Gemini | Kind::Router => {
            format!("{}/models", rt.base_url)
        }
    }
}

async fn probe(
    client: &reqwest::Client,
    guard: &crate::egress::Guard,
    rt: &ServiceRt,
    secret: &str,
    timeout: Duration,
) -> Probe {
    let mut headers = HeaderMap::new();
    if !rt.set_auth(&mut headers, secret) {
        return Probe {
            verdict: Verdict::Refused(Fault::Invalid, KeyStatus::Invalid),
            status: None,
            latency: Duration::ZERO,
            error: Some("key is not a valid header value".into()),
        };
    }
    // A literal address skips DNS, and so the guard in the resolver: checked here. A refusal
    // says nothing of the key.
    let url = match guard.url(&probe_url(rt)) {
        Ok(u) => u,
        Err(e) => return Probe::inconclusive(None, Duration::ZERO, e.to_string()),
    };
    let started = Instant::now();
    let sent = tokio::time::timeout(timeout, client.get(url).headers(headers).send()).await;
    let latency = started.elapsed();
    let resp = match sent {
        Err(_) => {
            let msg = format!("no answer within {} ms", timeout.as_millis());
            return Probe::inconclusive(None, latency, msg);
        }
        Ok(Err(e)) if crate::egress::ssrf::refusal(&e).is_some() => {
            let r = crate::egress::ssrf::refusal(&e).map(ToString::to_string);
            let msg = format!("upstream address refused: {}", r.unwrap_or_default());
            return Probe::inconclusive(None, latency, msg);
        }
        Ok(Err(e)) if e.is_connect() => return Probe::inconclusive(None, latency, "connect error"),
        Ok(Err(_)) => return Probe::inconclusive(None, latency, "upstream request error"),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let verdict = match classify(status) {
        Class::Deliver => Verdict::Accepted,
        Class::Key(KeyFault::Invalid) => Verdict::Refused(Fault::Invalid, KeyStatus::Invalid),
        Class::Key(KeyFault::Exhausted) => Verdict::Refused(Fault::Exhausted, KeyStatus::Exhausted),
        // As on the data plane: a 429 whose body says the quota is gone is exhaustion.
        Class::Key(KeyFault::RateLimited) => {
            let body = read_small(resp).await;
            if Format::of_kind(rt.kind).quota_exhausted(status.as_u16(), &body) {
                Verdict::Refused(Fault::Exhausted, KeyStatus::Exhausted)
            } else {
                Verdict::Inconclusive
            }
        }
        Class::Key(KeyFault::Server) => Verdict::Inconclusive,
    };
    Probe {
        verdict,
        status: Some(status.as_u16()),
        latency,
        error: (verdict != Verdict::Accepted).then(|| format!("upstream answered {status}")),
    }
}

/// The scheduled validation: every `jobs.validate_tick_ms`, a run for each due service.
pub async fn schedule(state: AppState) {
    let tick = Duration::from_millis(state.config.jobs.validate_tick_ms);
    super::every_service(state, "validate", tick, due, run_once).await
}

/// Enabled services with a validation interval, locked for one interval.
async fn due(state: AppState) -> Result<Vec<(service::Model, Duration)>, sea_orm::DbErr> {
    Ok(db::services::with_validation(&state.db)
        .await?
        .into_iter()
        .filter_map(|svc| {
            let secs = svc.validate_interval_s.filter(|s| *s > 0)?;
            Some((svc, Duration::from_secs(secs as u64)))
        })
        .collect())
}

async fn run_once(state: AppState, svc: service::Model, interval: Duration) {
    let deadline = Instant::now() + interval * 9 / 10;
    let run = async {
        let keys = super::keys_in(&state, svc.id, &OUT_OF_ROTATION).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        test_keys(&state, &svc, keys, Some(deadline)).await
    };
    match run.await {
        Ok(r) if r.is_empty() => {}
        Ok(r) => {
            let back = r.iter().filter(|t| t.ok).count();
            tracing::info!(slug = %svc.slug, tested = r.len(), back, "scheduled key validation");
        }
        Err(e) => tracing::warn!(slug = %svc.slug, error = %e, "scheduled key validation failed"),
    }
}
