//! Forwarding with failover: pick a key (one coordination call), send, classify the answer, mark
//! the key and retry on the next one while nothing has reached the client. Bodies stream both ways;
//! request bodies up to `retry_buffer_bytes` are buffered so that they can be sent again.
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::attempt::{Attempt, LogCtx, write_log};
use super::auth;
use super::error::{ErrorKind, Format, ProxyError};
use super::usage::UsageScanner;
use crate::coord::{Acquire, AcquireReq, ClientLimits, Fault, Remaining};
use crate::snapshot::{Kind, ServiceRt};
use crate::state::AppState;
use crate::telemetry::metrics as m;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// LLM kinds: a leading version segment (`v1/`, `v1beta/`) is dropped, as base_url has it.
    Llm,
    /// REST kind: the path is passed verbatim.
    Rest,
}

pub async fn llm(
    State(state): State<AppState>,
    Path((slug, _)): Path<(String, String)>,
    req: Request,
) -> Response {
    let path = raw_rest(req.uri().path(), 2);
    handle(state, slug, path, Mode::Llm, req).await
}

pub async fn rest(
    State(state): State<AppState>,
    Path((slug, _)): Path<(String, String)>,
    req: Request,
) -> Response {
    let path = raw_rest(req.uri().path(), 2);
    handle(state, slug, path, Mode::Rest, req).await
}

/// The request path after its first `skip` segments, still percent-encoded as the client sent
/// it: the router's decoded copy would turn `%2F` into `/` and `%3F` into `?` upstream.
fn raw_rest(path: &str, skip: usize) -> String {
    path.trim_start_matches('/')
        .splitn(skip + 1, '/')
        .nth(skip)
        .unwrap_or("")
        .to_string()
}

/// True when the path, once decoded, has a `.` or `..` segment (`%2F` counts as a slash): such a
/// path could climb out of the service's base URL on an upstream that normalises it.
fn has_dot_segment(path: &str) -> bool {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .split(['/', '\\'])
        .any(|seg| seg == "." || seg == "..")
}

pub async fn default_slug(State(state): State<AppState>, req: Request) -> Response {
    let path = raw_rest(req.uri().path(), 1);
    let Some(slug) = state.config.proxy.default_slug.clone() else {
        let f = guess_format(req.headers(), req.uri().path());
        return ProxyError::new(
            ErrorKind::UnknownSlug,
            f,
            "no default slug is configured: call /llm/<slug>/v1/... or set KEYGATE_DEFAULT_SLUG",
        )
        .into_response();
    };
    handle(state, slug, format!("v1/{path}"), Mode::Llm, req).await
}

/// The client's wire format, for error shapes, before the service is known.
fn guess_format(headers: &HeaderMap, path: &str) -> Format {
    if headers.contains_key("anthropic-version") || path.ends_with("/messages") {
        Format::Anthropic
    } else if headers.contains_key("x-goog-api-key")
        || path.contains(":generateContent")
        || path.contains(":streamGenerateContent")
    {
        Format::Gemini
    } else {
        Format::OpenAi
    }
}

fn format_for(kind: Kind, guessed: Format) -> Format {
    match kind {
        Kind::Anthropic => Format::Anthropic,
        Kind::Gemini => Format::Gemini,
        Kind::OpenAi | Kind::Rest => guessed,
    }
}

/// Drops a leading API version segment (`v1`, `v1beta`, `v2alpha1`): base_url carries it.
fn strip_version(path: &str) -> &str {
    let (first, rest) = path.split_once('/').unwrap_or((path, ""));
    let is_version = first.len() >= 2
        && first.starts_with('v')
        && first[1..].starts_with(|c: char| c.is_ascii_digit())
        && first[1..].chars().all(|c| c.is_ascii_alphanumeric());
    if is_version { rest } else { path }
}

fn upstream_url(svc: &ServiceRt, path: &str, mode: Mode, query: Option<&str>) -> String {
    let p = match mode {
        Mode::Llm => strip_version(path),
        Mode::Rest => path,
    };
    let mut url = format!("{}/{}", svc.base_url, p.trim_start_matches('/'));
    if let Some(q) = query {
        let kept: Vec<(String, String)> = auth::url_pairs(q).filter(|(k, _)| k != "key").collect();
        if !kept.is_empty() {
            url.push('?');
            url.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(kept)
                    .finish(),
            );
        }
    }
    url
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

fn is_hop_by_hop(name: &HeaderName, listed: &[String]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || listed.iter().any(|l| l == name.as_str())
}

fn connection_listed(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect()
}

fn request_headers(incoming: &HeaderMap, keep_length: bool) -> HeaderMap {
    let listed = connection_listed(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        // Accept-Encoding is dropped so answers arrive uncompressed: usage is read from them.
        if is_hop_by_hop(name, &listed)
            || auth::CREDENTIAL_HEADERS.contains(&name.as_str())
            || name == header::ACCEPT_ENCODING
            || (!keep_length && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if !is_hop_by_hop(name, &listed) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The longest cooldown an upstream's Retry-After can impose on a key (one day).
const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// Retry-After in ms (seconds or an HTTP date), clamped to a day; 0 or garbage = no hint, so the
/// key's own backoff applies instead.
fn retry_after_ms(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let ms = if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs <= 0.0 {
            return None;
        }
        (secs * 1000.0).min(MAX_RETRY_AFTER_MS as f64) as u64
    } else {
        let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        let ms = (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
        u64::try_from(ms).ok()?
    };
    (ms > 0).then_some(ms.min(MAX_RETRY_AFTER_MS))
}
#[derive(Deserialize)]
struct ModelField {
    model: Option<String>,
}

/// Why an attempt did not produce a response for the client.
#[derive(Debug)]
enum Failure {
    Status {
        status: StatusCode,
        retry_after_ms: Option<u64>,
    },
    Timeout,
    Connect,
}

enum ReqBody {
    /// Buffered: can be sent again on another key.
    Buffered(Bytes),
    /// Streamed straight through: one attempt only.
    Stream(Option<Body>),
}

/// `x-ratelimit-*` headers for the client's own limits.
fn limit_headers(h: &mut HeaderMap, limits: &ClientLimits, rem: &Remaining) {
    let mut put = |name: &'static str, v: Option<u64>| {
        if let Some(v) = v {
            h.insert(HeaderName::from_static(name), HeaderValue::from(v));
        }
    };
    put("x-ratelimit-limit-requests", limits.rpm.map(u64::from));
    put("x-ratelimit-remaining-requests", rem.rpm);
    put("x-ratelimit-limit-requests-day", limits.rpd.map(u64::from));
    put("x-ratelimit-remaining-requests-day", rem.rpd);
    put("x-ratelimit-limit-tokens", limits.tpm.map(u64::from));
    put("x-ratelimit-remaining-tokens", rem.tpm);
}

/// Acquires a key, waiting while every usable key is at its concurrency cap, until `until`.
async fn acquire_waiting(
    state: &AppState,
    req: &AcquireReq<'_>,
    until: Instant,
) -> Result<Acquire, crate::coord::CoordError> {
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

async fn handle(state: AppState, slug: String, path: String, mode: Mode, req: Request) -> Response {
    let started = Instant::now();
    let guessed = guess_format(req.headers(), req.uri().path());
    let snap = state.snapshot.load_full();
    let Some(svc) = snap.services.get(&slug).cloned() else {
        let e = ProxyError::new(
            ErrorKind::UnknownSlug,
            guessed,
            format!("unknown slug '{slug}'"),
        );
        return finish_err(&slug, started, e);
    };
    let fmt = format_for(svc.kind, guessed);
    if (mode == Mode::Rest) != (svc.kind == Kind::Rest) {
        let hint = if svc.kind == Kind::Rest {
            "/proxy"
        } else {
            "/llm"
        };
        let msg = format!("slug '{slug}' is served under {hint}/{slug}/");
        return finish_err(
            &slug,
            started,
            ProxyError::new(ErrorKind::UnknownSlug, fmt, msg),
        );
    }
    if has_dot_segment(&path) {
        let e = ProxyError::new(
            ErrorKind::BadRequest,
            fmt,
            "the path must not contain . or .. segments",
        );
        return finish_err(&slug, started, e);
    }
    let query = req.uri().query().map(str::to_string);
    let cred = auth::credential(req.headers(), query.as_deref());
    let (access_key_id, client) = match auth::check(&state, &snap, &svc, cred) {
        Ok(ak) => (
            ak.as_ref().map(|a| a.id),
            ak.map(|a| a.limits).filter(|l| l.is_limited()),
        ),
        Err((kind, msg)) => return finish_err(&slug, started, ProxyError::new(kind, fmt, msg)),
    };
    drop(snap);
    if !svc.enabled {
        let e = ProxyError::new(
            ErrorKind::NoUsableKey,
            fmt,
            format!("slug '{slug}' is disabled"),
        );
        return finish_err(&slug, started, e);
    }

    let (parts, body) = req.into_parts();
    let max_body = state.config.proxy.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        let msg = format!("request body exceeds the limit of {max_body} bytes");
        return finish_err(
            &slug,
            started,
            ProxyError::new(ErrorKind::BodyTooLarge, fmt, msg),
        );
    }
    let body_fault = BodyFault::default();
    let mut body = match declared {
        Some(n) if n <= state.config.proxy.retry_buffer_bytes as u64 => {
            match axum::body::to_bytes(body, n as usize).await {
                Ok(b) => ReqBody::Buffered(b),
                Err(_) => {
                    let e =
                        ProxyError::new(ErrorKind::BadRequest, fmt, "could not read request body");
                    return finish_err(&slug, started, e);
                }
            }
        }
        _ => ReqBody::Stream(Some(limit_body(body, max_body, body_fault.clone()))),
    };
    let model = match &body {
        ReqBody::Buffered(b) if !b.is_empty() => serde_json::from_slice::<ModelField>(b)
            .ok()
            .and_then(|m| m.model),
        _ => None,
    };
    let log = LogCtx {
        access_key_id,
        model,
        path: path.clone(),
        started,
    };

    let url = upstream_url(&svc, &path, mode, query.as_deref());
    let base_headers = request_headers(&parts.headers, matches!(body, ReqBody::Stream(_)));
    let method = parts.method.clone();
    let max_attempts = match body {
        ReqBody::Buffered(_) => svc.max_attempts.min(svc.keys.len().max(1) as u32),
        ReqBody::Stream(_) => 1,
    };
    let deadline = started + svc.total_timeout;

    let streamed = matches!(body, ReqBody::Stream(_));
    let head = method == axum::http::Method::HEAD;
    let mut attempts = 0u32;
    let mut tried: Vec<i64> = Vec::new();
    let mut last_failure: Option<Failure> = None;
    let mut remaining = Remaining::default();
    while attempts < max_attempts && Instant::now() < deadline {
        let areq = AcquireReq {
            service_id: svc.id,
            strategy: svc.strategy,
            keys: &svc.specs,
            excluded: &tried,
            cap: svc.cap,
            lease_ttl_ms: svc.lease_ttl_ms,
            client: if attempts == 0 { client } else { None },
            price: None,
        };
        let queue_until = (Instant::now() + svc.queue_timeout).min(deadline);
        let granted = match acquire_waiting(&state, &areq, queue_until).await {
            Ok(a) => a,
            Err(e) => {
                metrics::counter!(m::COORD_ERRORS_TOTAL, "kind" => e.kind()).increment(1);
                tracing::error!(error = %e, slug = %slug, "coordination store failed");
                let e =
                    ProxyError::new(ErrorKind::NoUsableKey, fmt, "key selection is unavailable");
                return finish_err(&slug, started, e);
            }
        };
        let (index, lease, probe) = match granted {
            Acquire::Granted {
                index,
                lease,
                probe,
                remaining: rem,
                ..
            } => {
                if attempts == 0 {
                    remaining = rem;
                }
                (index, lease, probe)
            }
            Acquire::ClientLimited {
                retry_after_ms,
                remaining: rem,
            } => {
                metrics::counter!(m::CLIENT_RATE_LIMITED_TOTAL, "slug" => slug.clone())
                    .increment(1);
                let mut e = ProxyError::new(
                    ErrorKind::RateLimited,
                    fmt,
                    "rate limit of this access key reached; retry after the time in Retry-After",
                );
                e.retry_after_secs = Some(retry_after_ms.div_ceil(1000).max(1));
                let mut resp = finish_err(&slug, started, e);
                if let Some(c) = &client {
                    limit_headers(resp.headers_mut(), c, &rem);
                }
                return resp;
            }
            Acquire::ServiceBackoff { retry_after_ms } => {
                let mut e = ProxyError::new(
                    ErrorKind::UpstreamRateLimited,
                    fmt,
                    format!("the upstream of '{slug}' is rate limiting every key; backing off"),
                );
                e.retry_after_secs = Some(retry_after_ms.div_ceil(1000).max(1));
                return finish_err(&slug, started, e);
            }
            Acquire::AtCapacity => {
                let e = ProxyError::new(
                    ErrorKind::NoUsableKey,
                    fmt,
                    format!("every key of '{slug}' is at its concurrency limit; try again"),
                );
                return finish_err(&slug, started, e);
            }
            Acquire::NoKey => break,
        };
        attempts += 1;
        tried.push(lease.key_id);
        let attempt = Attempt::new(state.clone(), svc.clone(), index, lease, client, probe);
        let key = &svc.keys[index];
        let reqwest_body = match &mut body {
            ReqBody::Buffered(b) => reqwest::Body::from(b.clone()),
            ReqBody::Stream(s) => match s.take() {
                Some(b) => reqwest::Body::wrap_stream(b.into_data_stream()),
                None => break,
            },
        };
        let mut headers = base_headers.clone();
        let auth_value = svc.auth_format.replace("{key}", key.secret.expose_secret());
        match HeaderValue::from_str(&auth_value) {
            Ok(mut v) => {
                v.set_sensitive(true);
                headers.insert(svc.auth_header.clone(), v);
            }
            Err(_) => {
                attempt
                    .fail(Fault::Invalid, "key is not a valid header value")
                    .await;
                last_failure = Some(Failure::Connect);
                continue;
            }
        }
        if svc.kind == Kind::Anthropic && !headers.contains_key("anthropic-version") {
            headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        }
        let send = state
            .http
            .request(method.clone(), &url)
            .headers(headers)
            .body(reqwest_body)
            .send();
        let timeout = svc
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        // Cut short by the request's own deadline: the key had less than its timeout.
        let truncated = timeout < svc.request_timeout;
        let outcome = |label: &'static str| {
            metrics::counter!(m::UPSTREAM_ATTEMPTS_TOTAL, "slug" => slug.clone(), "outcome" => label)
                .increment(1);
        };
        let resp = match tokio::time::timeout(timeout, send).await {
            Err(_) if truncated => {
                // The request ran out of time, not the key: release it without a verdict.
                outcome("deadline");
                drop(attempt);
                last_failure = Some(Failure::Timeout);
                break;
            }
            Err(_) if streamed && body_fault.get() != BodyFault::DONE => {
                // The client was still uploading its body: its stall, not the key's.
                drop(attempt);
                let e = ProxyError::new(
                    ErrorKind::ClientTimeout,
                    fmt,
                    "the request body did not arrive in time",
                );
                return finish_err(&slug, started, e);
            }
            Err(_) => {
                outcome("timeout");
                attempt
                    .fail(Fault::Failure, "timeout waiting for upstream")
                    .await;
                last_failure = Some(Failure::Timeout);
                continue;
            }
            Ok(Err(_)) if body_fault.get() != 0 => {
                // The client's body failed (too large, or it broke off): not the key's fault.
                drop(attempt);
                let (kind, msg) = if body_fault.get() == BodyFault::TOO_LARGE {
                    (
                        ErrorKind::BodyTooLarge,
                        format!("request body exceeds the limit of {max_body} bytes"),
                    )
                } else {
                    (
                        ErrorKind::BadRequest,
                        "the request body could not be read".to_string(),
                    )
                };
                return finish_err(&slug, started, ProxyError::new(kind, fmt, msg));
            }
            Ok(Err(e)) => {
                outcome("connect_error");
                let connect = e.is_connect();
                tracing::warn!(key = %key.masked, slug = %slug, error = %e.without_url(), "upstream attempt failed");
                let reason = if connect {
                    "connect error"
                } else {
                    "upstream request error"
                };
                attempt.fail(Fault::Failure, reason).await;
                last_failure = Some(Failure::Connect);
                continue;
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let fault = match classify(status) {
            Class::Deliver => {
                outcome(if status.is_client_error() {
                    "client_error"
                } else {
                    "ok"
                });
                let mut out = deliver(&slug, started, fmt, resp, attempt, log, attempts, head);
                if let Some(c) = &client {
                    limit_headers(out.headers_mut(), c, &remaining);
                }
                return out;
            }
            Class::Key(f) => f,
        };
        let retry_after = retry_after_ms(resp.headers());
        let retry = matches!(body, ReqBody::Buffered(_)) && svc.retry_on.retries(status.as_u16());
        // A 429 whose body says the quota is gone is exhaustion, not a rate limit.
        let (fault, resp) = if fault == KeyFault::RateLimited && retry {
            let text = read_small(resp).await;
            let exhausted = text.contains("insufficient_quota") || text.contains("quota_exceeded");
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
        let report = attempt
            .fail(f, &format!("upstream answered {status}"))
            .await;
        if let Some(resp) = resp.filter(|_| !retry) {
            // Not retried (streamed body, or a status the service does not retry): the client
            // gets the upstream's answer as it is.
            write_log(
                &state,
                &svc,
                &log,
                Some(tried[tried.len() - 1]),
                status.as_u16(),
                attempts,
                (0, 0),
                Some(label),
            );
            return passthrough(&slug, started, resp);
        }
        if let Some(b) = report.and_then(|r| r.service_backoff_until) {
            let mut e = ProxyError::new(
                ErrorKind::UpstreamRateLimited,
                fmt,
                format!("the upstream of '{slug}' is rate limiting every key; backing off"),
            );
            let ms = (b - crate::coord::now_ms()).max(1) as u64;
            e.retry_after_secs = Some(ms.div_ceil(1000));
            write_log(
                &state,
                &svc,
                &log,
                None,
                429,
                attempts,
                (0, 0),
                Some("upstream_backoff"),
            );
            return finish_err(&slug, started, e);
        }
        last_failure = Some(Failure::Status {
            status,
            retry_after_ms: retry_after,
        });
    }

    let err = match last_failure {
        None if Instant::now() >= deadline => ProxyError::new(
            ErrorKind::UpstreamTimeout,
            fmt,
            format!(
                "no answer within the deadline of {} ms",
                svc.total_timeout.as_millis()
            ),
        ),
        None => ProxyError::new(
            ErrorKind::NoUsableKey,
            fmt,
            format!("no usable upstream key for '{slug}'"),
        ),
        Some(Failure::Timeout) => ProxyError::new(
            ErrorKind::UpstreamTimeout,
            fmt,
            format!("upstream timed out after {attempts} attempt(s)"),
        ),
        Some(Failure::Status {
            status,
            retry_after_ms,
        }) if status == StatusCode::TOO_MANY_REQUESTS => {
            let mut e = ProxyError::new(
                ErrorKind::UpstreamRateLimited,
                fmt,
                format!("upstream rate limited every key tried ({attempts} attempt(s))"),
            );
            e.retry_after_secs = Some(retry_after_ms.unwrap_or(1000).div_ceil(1000).max(1));
            e
        }
        Some(Failure::Status { status, .. }) => ProxyError::new(
            ErrorKind::UpstreamFailed,
            fmt,
            format!(
                "upstream failed after {attempts} attempt(s); last status {}",
                status.as_u16()
            ),
        ),
        Some(Failure::Connect) => ProxyError::new(
            ErrorKind::UpstreamFailed,
            fmt,
            format!("upstream unreachable after {attempts} attempt(s)"),
        ),
    };
    write_log(
        &state,
        &svc,
        &log,
        None,
        err.kind.status().as_u16(),
        attempts,
        (0, 0),
        Some(err.kind.label()),
    );
    finish_err(&slug, started, err)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFault {
    Invalid,
    Exhausted,
    RateLimited,
    Server,
}

enum Class {
    /// Goes to the client as it is (success, or a client error that says nothing about the key).
    Deliver,
    /// The key is at fault (or the upstream is failing): mark it and try another.
    Key(KeyFault),
}

fn classify(s: StatusCode) -> Class {
    match s.as_u16() {
        401 | 403 => Class::Key(KeyFault::Invalid),
        402 => Class::Key(KeyFault::Exhausted),
        429 => Class::Key(KeyFault::RateLimited),
        500..=599 => Class::Key(KeyFault::Server),
        _ => Class::Deliver,
    }
}

/// Reads up to 64 KiB of an error body, for classification; never forwarded.
async fn read_small(resp: reqwest::Response) -> String {
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

/// What went wrong with a streamed request body, if anything: the client's fault, not the key's.
#[derive(Clone, Default)]
struct BodyFault(Arc<AtomicU8>);

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;
    /// The whole body went upstream.
    const DONE: u8 = 3;

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Applies `max_body_bytes` to a body of unknown length as it streams, and notes in `fault`
/// when the client's body failed (too large, or the client broke off).
fn limit_body(body: Body, max: usize, fault: BodyFault) -> Body {
    let mut seen = 0usize;
    let broken = fault.clone();
    let done = fault.clone();
    let stream = body
        .into_data_stream()
        .map_err(move |e| {
            broken.0.store(BodyFault::BROKEN, Ordering::Relaxed);
            axum::Error::new(e)
        })
        .and_then(move |chunk| {
            seen += chunk.len();
            let over = seen > max;
            if over {
                fault.0.store(BodyFault::TOO_LARGE, Ordering::Relaxed);
            }
            async move {
                if over {
                    Err(axum::Error::new(std::io::Error::other(
                        "request body too large",
                    )))
                } else {
                    Ok(chunk)
                }
            }
        });
    // Marks the end of the client's body, so a timeout while it is still uploading is not
    // blamed on the key.
    let end = futures::stream::once(async move {
        done.0.store(BodyFault::DONE, Ordering::Relaxed);
        None::<Result<Bytes, axum::Error>>
    })
    .filter_map(|x| async move { x });
    Body::from_stream(stream.chain(end))
}

/// The terminal event a client gets when the upstream stream breaks after bytes were sent.
fn stream_error_event(fmt: Format) -> Bytes {
    let msg = "the upstream stream failed before it completed";
    let ev = match fmt {
        Format::OpenAi => format!(
            "data: {}\n\n",
            serde_json::json!({"error": {"message": msg, "type": "api_error", "code": "upstream_failed", "param": null}})
        ),
        Format::Anthropic => format!(
            "event: error\ndata: {}\n\n",
            serde_json::json!({"type": "error", "error": {"type": "api_error", "message": msg}})
        ),
        Format::Gemini => format!(
            "data: {}\n\n",
            serde_json::json!({"error": {"code": 502, "message": msg, "status": "INTERNAL"}})
        ),
    };
    Bytes::from(ev)
}

struct Metered {
    inner: futures::stream::BoxStream<'static, Result<Bytes, reqwest::Error>>,
    /// Content-Length of the answer: the server stops polling once that much went out, so the
    /// end is recognised by the count rather than by the stream's end.
    expected: Option<u64>,
    sent: u64,
    /// Longest wait for the next chunk before the stream counts as broken.
    idle: Duration,
    attempt: Option<Attempt>,
    scanner: UsageScanner,
    sse: bool,
    fmt: Format,
    status: u16,
    log: LogCtx,
    attempts: u32,
}

impl Metered {
    /// The whole answer went through: release the lease with the usage.
    fn end(&mut self, attempt: Attempt) {
        self.scanner.finish();
        let tokens = (self.scanner.prompt, self.scanner.completion);
        attempt.finish(
            self.status < 400,
            tokens,
            self.status,
            &self.log,
            self.attempts,
        );
    }
}

#[allow(clippy::too_many_arguments)]
/// Streams the upstream answer to the client unchanged, reading usage as it goes; releases the
/// lease at the end, or marks the key and ends an SSE stream with an error event if it breaks.
fn deliver(
    slug: &str,
    started: Instant,
    fmt: Format,
    resp: reqwest::Response,
    attempt: Attempt,
    log: LogCtx,
    attempts: u32,
    head: bool,
) -> Response {
    let status = resp.status();
    let headers = response_headers(resp.headers());
    // An answer with no body (HEAD, 204, 304, Content-Length: 0) is never polled by the server,
    // so it ends here.
    let bodyless = head
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || resp.content_length() == Some(0);
    if bodyless {
        attempt.finish(
            status.as_u16() < 400,
            (0, 0),
            status.as_u16(),
            &log,
            attempts,
        );
        let mut out = Response::new(Body::empty());
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        record(slug, status.as_u16(), started);
        return out;
    }
    let idle = attempt.svc.request_timeout;
    let sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let m = Metered {
        expected: resp.content_length(),
        sent: 0,
        idle,
        inner: resp.bytes_stream().boxed(),
        attempt: Some(attempt),
        scanner: UsageScanner::new(sse),
        sse,
        fmt,
        status: status.as_u16(),
        log,
        attempts,
    };
    let stream = futures::stream::unfold(m, |mut m| async move {
        let attempt = m.attempt.take()?;
        let next = match tokio::time::timeout(m.idle, m.inner.next()).await {
            Ok(Some(Ok(chunk))) => Some(Ok(chunk)),
            Ok(Some(Err(e))) => Some(Err(e.without_url().to_string())),
            Ok(None) => None,
            Err(_) => Some(Err(format!("no data for {} ms", m.idle.as_millis()))),
        };
        match next {
            Some(Ok(chunk)) => {
                m.scanner.feed(&chunk);
                m.sent += chunk.len() as u64;
                if m.expected.is_some_and(|n| m.sent >= n) {
                    m.end(attempt);
                } else {
                    m.attempt = Some(attempt);
                }
                Some((Ok::<Bytes, std::io::Error>(chunk), m))
            }
            None => {
                m.end(attempt);
                None
            }
            Some(Err(e)) => {
                tracing::warn!(key = %attempt.masked(), error = %e, "upstream stream broke mid-way");
                let svc = attempt.svc.clone();
                let key_id = attempt.key_id();
                let state = attempt.state.clone();
                tokio::spawn(async move {
                    attempt.fail(Fault::Failure, "stream broke mid-way").await;
                });
                write_log(
                    &state,
                    &svc,
                    &m.log,
                    Some(key_id),
                    m.status,
                    m.attempts,
                    (0, 0),
                    Some("stream_broken"),
                );
                if m.sse {
                    Some((Ok(stream_error_event(m.fmt)), m))
                } else {
                    Some((Err(std::io::Error::other("upstream body broke")), m))
                }
            }
        }
    });
    let mut out = Response::new(Body::from_stream(stream));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    record(slug, status.as_u16(), started);
    out
}

/// An upstream answer passed through as it is (no lease left to manage).
fn passthrough(slug: &str, started: Instant, resp: reqwest::Response) -> Response {
    let status = resp.status();
    let headers = response_headers(resp.headers());
    let mut out = Response::new(Body::from_stream(resp.bytes_stream()));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    record(slug, status.as_u16(), started);
    out
}

fn finish_err(slug: &str, started: Instant, e: ProxyError) -> Response {
    let status = e.kind.status().as_u16();
    // Unknown slugs are attacker-controlled: keep them out of metric labels.
    let label = if e.kind == ErrorKind::UnknownSlug {
        "_unknown"
    } else {
        slug
    };
    record(label, status, started);
    e.into_response()
}

fn record(slug: &str, status: u16, started: Instant) {
    metrics::counter!(m::REQUESTS_TOTAL, "slug" => slug.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(m::REQUEST_DURATION, "slug" => slug.to_string())
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_segment_is_dropped_once() {
        assert_eq!(strip_version("v1/chat/completions"), "chat/completions");
        assert_eq!(strip_version("chat/completions"), "chat/completions");
        assert_eq!(
            strip_version("v1beta/models/x:generateContent"),
            "models/x:generateContent"
        );
        assert_eq!(strip_version("videos/v1"), "videos/v1");
        assert_eq!(strip_version("v1"), "");
    }

    #[test]
    fn retry_after_accepts_seconds() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after_ms(&h), Some(7000));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after_ms(&h), None);
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer client"));
        h.insert("x-api-key", HeaderValue::from_static("client"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let out = request_headers(&h, false);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("content-type"));
    }

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
}
