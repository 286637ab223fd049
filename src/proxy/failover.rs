//! The failover loop: pick a key (one coordination call), send, classify the answer, mark the key
//! and try the next one while nothing has reached the client and the attempt and time budgets
//! allow. It returns an outcome and builds no HTTP response; the lease of the key whose answer is
//! returned stays in the finaliser.
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

use axum::http::{HeaderMap, Method, StatusCode};
use futures::TryStreamExt;
use secrecy::ExposeSecret;

use super::body::{BodyFault, ReqBody};
use super::error::{ErrorKind, ProxyError};
use super::finish::Finish;
use super::headers;
use super::ingress::Admitted;
use crate::coord::{Acquire, AcquireReq, CoordError, Fault, Remaining};
use crate::egress::ssrf::UrlError;
use crate::formats::Format;
use crate::snapshot::ServiceRt;
use crate::state::AppState;
use crate::telemetry::metrics as m;

pub enum Outcome {
    /// An upstream answer for the client. `error_kind` is set when it is a failure passed
    /// through as the upstream sent it (a status the service does not retry).
    Answer {
        resp: reqwest::Response,
        error_kind: Option<&'static str>,
    },
    Error(ProxyError),
}

pub struct Ran {
    pub outcome: Outcome,
    /// The client's remaining allowance, for `x-ratelimit-*` headers.
    pub remaining: Option<Remaining>,
}

/// Why the last attempt did not produce an answer for the client.
#[derive(Debug)]
enum Failure {
    Status {
        status: StatusCode,
        retry_after_ms: Option<u64>,
    },
    Timeout,
    Connect,
}

/// What an upstream status says about the key that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFault {
    Invalid,
    Exhausted,
    RateLimited,
    Server,
}

pub enum Class {
    /// Goes to the client as it is (success, or a client error that says nothing about the key).
    Deliver,
    /// The key is at fault (or the upstream is failing): mark it and try another.
    Key(KeyFault),
}

/// The data plane's reading of an upstream status; key validation reads answers the same way.
pub fn classify(s: StatusCode) -> Class {
    match s.as_u16() {
        401 | 403 => Class::Key(KeyFault::Invalid),
        402 => Class::Key(KeyFault::Exhausted),
        429 => Class::Key(KeyFault::RateLimited),
        500..=599 => Class::Key(KeyFault::Server),
        _ => Class::Deliver,
    }
}

/// How long one attempt may wait for the answer's head. When the service's `request_timeout`
/// does not fit inside its `total_timeout` and a retry is possible, an attempt gets half the
/// total, so a hung key is blamed and the request still fails over within its budget.
fn attempt_timeout(request: Duration, total: Duration, max_attempts: u32) -> Duration {
    if max_attempts <= 1 || request < total {
        request.min(total)
    } else {
        total / 2
    }
}

pub async fn run(
    state: &AppState,
    fin: &mut Finish,
    adm: &Admitted,
    method: &Method,
    base: &HeaderMap,
    body: &mut ReqBody,
) -> Ran {
    let svc = &adm.svc;
    let fmt = fin.client_fmt;
    let upstream_fmt = fin.upstream_fmt;
    let err = |kind, msg: String| ProxyError::new(kind, fmt, msg);
    let retryable = !body.is_stream();
    let max_attempts = if retryable {
        svc.max_attempts.min(svc.keys.len().max(1) as u32)
    } else {
        1
    };
    let per_attempt = attempt_timeout(svc.request_timeout, svc.total_timeout, max_attempts);
    let deadline = fin.started + svc.total_timeout;
    let mut last_failure: Option<Failure> = None;
    let mut remaining = None;
    let slug = svc.slug.as_str();
    let outcome = |label: &'static str| {
        metrics::counter!(m::UPSTREAM_ATTEMPTS_TOTAL, "slug" => slug.to_string(), "outcome" => label)
            .increment(1);
    };

    // What the request will cost at least: its price per request plus its prompt (about four
    // bytes a token) at the input price. Keys whose balance is below it are skipped by the
    // balance strategy, and a budget must cover it.
    let estimate = fin.price.map(|p| {
        let prompt = match body {
            ReqBody::Buffered(b) => b.len() as u64 / 4,
            ReqBody::Stream(..) => 0,
        };
        p.estimate(prompt)
    });
    // Keys tried in this run (a Responses call retried as chat completions starts afresh).
    let mut excluded: Vec<i64> = Vec::new();
    while (excluded.len() as u32) < max_attempts && Instant::now() < deadline {
        let first = fin.attempts == 0;
        let areq = AcquireReq {
            service_id: svc.id,
            strategy: svc.strategy,
            keys: &svc.specs,
            excluded: &excluded,
            cap: svc.cap,
            lease_ttl_ms: svc.lease_ttl_ms,
            client: if first { fin.client } else { None },
            price: estimate,
            session: adm.session.as_ref(),
            reserve: if first && fin.client.is_some_and(|c| c.budget.is_some()) {
                estimate.unwrap_or(0)
            } else {
                0
            },
        };
        let queue_until = (Instant::now() + svc.queue_timeout).min(deadline);
        let granted = match acquire_waiting(state, &areq, queue_until).await {
            Ok(a) => a,
            Err(e) => {
                coord_failed(&e, slug);
                let e = err(
                    ErrorKind::NoUsableKey,
                    "key selection is unavailable".into(),
                );
                return Ran {
                    outcome: Outcome::Error(e),
                    remaining,
                };
            }
        };
        match granted {
            Acquire::Granted {
                index,
                lease,
                probe,
                remaining: rem,
                ..
            } => {
                if first {
                    remaining = Some(rem);
                    fin.reserved = areq.reserve;
                }
                excluded.push(lease.key_id);
                fin.hold(index, lease, probe);
            }
            Acquire::ClientLimited {
                retry_after_ms,
                remaining: rem,
            } => {
                metrics::counter!(m::CLIENT_RATE_LIMITED_TOTAL, "slug" => slug.to_string())
                    .increment(1);
                let mut e = err(
                    ErrorKind::RateLimited,
                    "rate limit of this access key reached; retry after the time in Retry-After"
                        .into(),
                );
                e.retry_after_secs = Some(retry_after_ms.div_ceil(1000).max(1));
                return Ran {
                    outcome: Outcome::Error(e),
                    remaining: Some(rem),
                };
            }
            Acquire::ServiceBackoff { retry_after_ms } => {
                let mut e = err(
                    ErrorKind::UpstreamRateLimited,
                    format!("the upstream of '{slug}' is rate limiting every key; backing off"),
                );
                e.retry_after_secs = Some(retry_after_ms.div_ceil(1000).max(1));
                return Ran {
                    outcome: Outcome::Error(e),
                    remaining,
                };
            }
            Acquire::OverBudget { spent } => {
                let budget = fin.client.and_then(|c| c.budget).unwrap_or(0);
                let e = err(
                    ErrorKind::BudgetExhausted,
                    format!(
                        "this access key's budget is used up ({} of {} spent)",
                        crate::money::format_units(spent),
                        crate::money::format_units(budget)
                    ),
                );
                return Ran {
                    outcome: Outcome::Error(e),
                    remaining,
                };
            }
            Acquire::AtCapacity => {
                let e = err(
                    ErrorKind::NoUsableKey,
                    format!("every key of '{slug}' is at its concurrency limit; try again"),
                );
                return Ran {
                    outcome: Outcome::Error(e),
                    remaining,
                };
            }
            Acquire::NoKey => break,
        }
        let index = fin.held().map(|h| h.index).unwrap_or(0);
        let Some(reqwest_body) = body.next() else {
            fin.release_untried();
            break;
        };
        let mut headers = base.clone();
        let key = &svc.keys[index];
        if !svc.set_auth(&mut headers, key.secret.expose_secret()) {
            fin.fault(Fault::Invalid, "key is not a valid header value")
                .await;
            last_failure = Some(Failure::Connect);
            continue;
        }
        // One span per attempt, to its answer's head; the upstream's `traceparent` names it.
        let attempt = tracing::info_span!(
            "upstream.attempt",
            otel.kind = "client",
            key_id = key.id,
            attempt = fin.attempts,
            status = tracing::field::Empty,
        );
        crate::telemetry::trace::inject(&attempt, &mut headers);
        // A literal address skips DNS, and so the guard in the resolver: checked here.
        let url = match state.egress.url(&adm.url) {
            Ok(u) => u,
            Err(e) => {
                fin.release_untried();
                return Ran {
                    outcome: Outcome::Error(egress_refused(slug, &e, fmt)),
                    remaining,
                };
            }
        };
        let send = svc
            .client_for(index, &state.http)
            .request(method.clone(), url)
            .headers(headers)
            .body(reqwest_body)
            .send()
            .instrument(attempt.clone());
        let timeout = per_attempt.min(deadline.saturating_duration_since(Instant::now()));
        // The key had all the time an attempt gets: a timeout is then the key's.
        let full = timeout >= per_attempt;
        let resp = match tokio::time::timeout(timeout, send).await {
            Err(_) if body.is_stream() && body.fault() != BodyFault::DONE => {
                // The client was still uploading its body: its stall, not the key's.
                fin.release_untried();
                let e = err(
                    ErrorKind::ClientTimeout,
                    "the request body did not arrive in time".into(),
                );
                return Ran {
                    outcome: Outcome::Error(e),
                    remaining,
                };
            }
            Err(_) if !full => {
                // The request ran out of time, not the key: release it without a verdict.
                outcome("deadline");
                fin.release_untried();
                last_failure = Some(Failure::Timeout);
                break;
            }
            Err(_) => {
                outcome("timeout");
                let reason = format!("no answer within {} ms", per_attempt.as_millis());
                fin.fault(Fault::Failure, &reason).await;
                last_failure = Some(Failure::Timeout);
                if !svc.retry_on.retries_timeout() {
                    break;
                }
                continue;
            }
            Ok(Err(_))
                if body.is_stream() && body.fault() != 0 && body.fault() != BodyFault::DONE =>
            {
                // The client's body failed (too large, or it broke off): not the key's fault.
                fin.release_untried();
                let e = if body.fault() == BodyFault::TOO_LARGE {
                    err(
                        ErrorKind::BodyTooLarge,
                        format!(
                            "request body exceeds the limit of {} bytes",
                            state.config.proxy.max_body_bytes
                        ),
                    )
                } else {
                    err(
                        ErrorKind::BadRequest,
                        "the request body could not be read".into(),
                    )
                };
                return Ran {
                    outcome: Outcome::Error(e),
                    remaining,
                };
            }
            Ok(Err(e)) if crate::egress::ssrf::refusal(&e).is_some() => {
                // The name resolved to addresses the guard refuses: the service's setup, not
                // the key's fault, and every key would meet the same.
                fin.release_untried();
                let why = crate::egress::ssrf::refusal(&e)
                    .cloned()
                    .map(UrlError::Refused);
                return Ran {
                    outcome: Outcome::Error(egress_refused(
                        slug,
                        &why.unwrap_or(UrlError::Invalid),
                        fmt,
                    )),
                    remaining,
                };
            }
            Ok(Err(e)) => {
                outcome("connect_error");
                let connect = e.is_connect();
                tracing::warn!(key = %fin.masked_key(), slug, error = %e.without_url(), "upstream attempt failed");
                let reason = if connect {
                    "connect error"
                } else {
                    "upstream request error"
                };
                fin.fault(Fault::Failure, reason).await;
                last_failure = Some(Failure::Connect);
                if !svc.retry_on.retries_connect() {
                    break;
                }
                continue;
            }
            Ok(Ok(resp)) => {
                attempt.record("status", resp.status().as_u16());
                fin.head_arrived(resp.status().as_u16());
                resp
            }
        };
        let status = resp.status();
        if status == StatusCode::LOOP_DETECTED && headers::is_loop(resp.headers(), &state.hop_id) {
            // Our own loop answer came back: the service points at keygate. Not the key's fault,
            // and retrying on another key would only go round again.
            fin.release_untried();
            let e = err(
                ErrorKind::LoopDetected,
                format!("slug '{slug}' points back at this keygate; fix its base_url"),
            );
            return Ran {
                outcome: Outcome::Error(e),
                remaining,
            };
        }
        let fault = match classify(status) {
            Class::Deliver => {
                outcome(if status.is_client_error() {
                    "client_error"
                } else {
                    "ok"
                });
                return Ran {
                    outcome: Outcome::Answer {
                        resp,
                        error_kind: None,
                    },
                    remaining,
                };
            }
            Class::Key(f) => f,
        };
        let retry_after = headers::retry_after_ms(resp.headers());
        let retry = retryable && svc.retry_on.retries(status.as_u16());
        // A 429 whose body says the quota is gone is exhaustion, not a rate limit.
        let (fault, resp) = if fault == KeyFault::RateLimited && retry {
            let text = read_small(resp).await;
            let exhausted = upstream_fmt.quota_exhausted(status.as_u16(), &text);
            (
                if exhausted {
                    KeyFault::Exhausted
                } else {
                    fault
                },
                None,
            )
        } else {
            (fault, Some(resp))
        };
        let (f, label) = match fault {
            KeyFault::Invalid => (Fault::Invalid, "invalid"),
            KeyFault::Exhausted => (Fault::Exhausted, "exhausted"),
            KeyFault::RateLimited => (
                Fault::RateLimited {
                    retry_after_ms: retry_after,
                },
                "cooling",
            ),
            KeyFault::Server => (Fault::Failure, "server_error"),
        };
        outcome(label);
        let report = fin.fault(f, &format!("upstream answered {status}")).await;
        if let Some(resp) = resp.filter(|_| !retry) {
            // Not retried (streamed body, or a status the service does not retry): the client
            // gets the upstream's answer as it is.
            return Ran {
                outcome: Outcome::Answer {
                    resp,
                    error_kind: Some(label),
                },
                remaining,
            };
        }
        if let Some(b) = report.and_then(|r| r.service_backoff_until) {
            let mut e = err(
                ErrorKind::UpstreamRateLimited,
                format!("the upstream of '{slug}' is rate limiting every key; backing off"),
            );
            let ms = (b - crate::coord::now_ms()).max(1) as u64;
            e.retry_after_secs = Some(ms.div_ceil(1000));
            return Ran {
                outcome: Outcome::Error(e),
                remaining,
            };
        }
        last_failure = Some(Failure::Status {
            status,
            retry_after_ms: retry_after,
        });
    }
    Ran {
        outcome: Outcome::Error(exhausted(
            svc,
            fmt,
            excluded.len() as u32,
            deadline,
            last_failure,
        )),
        remaining,
    }
}

/// The error after the loop ran out of keys, attempts or time.
fn exhausted(
    svc: &ServiceRt,
    fmt: Format,
    attempts: u32,
    deadline: Instant,
    last: Option<Failure>,
) -> ProxyError {
    let slug = &svc.slug;
    let err = |kind, msg: String| ProxyError::new(kind, fmt, msg);
    match last {
        None if Instant::now() >= deadline => err(
            ErrorKind::UpstreamTimeout,
            format!(
                "no answer within the deadline of {} ms",
                svc.total_timeout.as_millis()
            ),
        ),
        None => err(
            ErrorKind::NoUsableKey,
            format!("no usable upstream key for '{slug}'"),
        ),
        Some(Failure::Timeout) => err(
            ErrorKind::UpstreamTimeout,
            format!("upstream timed out after {attempts} attempt(s)"),
        ),
        Some(Failure::Status {
            status,
            retry_after_ms,
        }) if status == StatusCode::TOO_MANY_REQUESTS => {
            let mut e = err(
                ErrorKind::UpstreamRateLimited,
                format!("upstream rate limited every key tried ({attempts} attempt(s))"),
            );
            e.retry_after_secs = Some(retry_after_ms.unwrap_or(1000).div_ceil(1000).max(1));
            e
        }
        Some(Failure::Status { status, .. }) => err(
            ErrorKind::UpstreamFailed,
            format!(
                "upstream failed after {attempts} attempt(s); last status {}",
                status.as_u16()
            ),
        ),
        Some(Failure::Connect) => err(
            ErrorKind::UpstreamFailed,
            format!("upstream unreachable after {attempts} attempt(s)"),
        ),
    }
}

/// Acquires a key, waiting while every usable key is at its concurrency cap, until `until`.
async fn acquire_waiting(
    state: &AppState,
    req: &AcquireReq<'_>,
    until: Instant,
) -> Result<Acquire, CoordError> {
    let mut pause = Duration::from_millis(2);
    loop {
        let released = state.lease_released.notified();
        let r = state.coord.acquire(req).await?;
        let now = Instant::now();
        if r != Acquire::AtCapacity || now >= until {
            return Ok(r);
        }
        // Woken by a local release, or polling for releases on other replicas.
        let _ = tokio::time::timeout(pause.min(until - now), released).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Counts a coordination failure and logs it at most every 10 s: an outage must not turn every
/// request into an ERROR line.
fn coord_failed(e: &CoordError, slug: &str) {
    static LAST_LOGGED_MS: AtomicI64 = AtomicI64::new(0);
    metrics::counter!(m::COORD_ERRORS_TOTAL, "kind" => e.kind()).increment(1);
    if matches!(e, CoordError::Unavailable) {
        // Fail-closed during an outage: the outage itself was said once, when it began.
        return;
    }
    let now = crate::coord::now_ms();
    let last = LAST_LOGGED_MS.load(Ordering::Relaxed);
    if now - last >= 10_000
        && LAST_LOGGED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(error = %e, slug, "coordination store failed; requests get 503 until it answers");
    }
}

/// Reads up to 64 KiB of an error body, for classification; never forwarded.
pub async fn read_small(resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    let read = async {
        while let Ok(Some(chunk)) = stream.try_next().await {
            out.extend_from_slice(&chunk);
            if out.len() > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The client's error when the SSRF guard refuses the upstream: the class of address, not the
/// address itself (a client need not learn the operator's network); the log has it all.
fn egress_refused(slug: &str, e: &crate::egress::ssrf::UrlError, fmt: Format) -> ProxyError {
    use crate::egress::ssrf::UrlError;
    tracing::warn!(slug, reason = %e, "upstream request not sent");
    metrics::counter!(m::UPSTREAM_ATTEMPTS_TOTAL, "slug" => slug.to_string(), "outcome" => "egress_refused")
        .increment(1);
    let msg = match e {
        UrlError::Refused(r) => format!(
            "the upstream of '{slug}' is {}, which keygate does not call unless an operator \
             allows it with egress.allow",
            r.class
        ),
        UrlError::Invalid => format!("the upstream URL of '{slug}' is not a valid URL"),
    };
    ProxyError::new(ErrorKind::EgressRefused, fmt, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_key_faults_are_retried() {
        assert!(matches!(classify(StatusCode::OK), Class::Deliver));
        assert!(matches!(classify(StatusCode::BAD_REQUEST), Class::Deliver));
        assert!(matches!(classify(StatusCode::NOT_FOUND), Class::Deliver));
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED),
            Class::Key(KeyFault::Invalid)
        ));
        assert!(matches!(
            classify(StatusCode::PAYMENT_REQUIRED),
            Class::Key(KeyFault::Exhausted)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            Class::Key(KeyFault::RateLimited)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY),
            Class::Key(KeyFault::Server)
        ));
    }

    #[test]
    fn an_attempt_gets_half_the_total_when_its_timeout_does_not_fit() {
        let s = Duration::from_secs;
        assert_eq!(attempt_timeout(s(5), s(30), 3), s(5));
        assert_eq!(attempt_timeout(s(60), s(2), 3), Duration::from_millis(1000));
        assert_eq!(attempt_timeout(s(60), s(2), 1), s(2));
    }
}
