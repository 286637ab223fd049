//! Forwarding with failover: pick a key (one coordination call), send, classify the answer, mark
//! the key and retry on the next one while nothing has reached the client. Bodies stream both ways;
//! request bodies up to `retry_buffer_bytes` are buffered so that they can be sent again.
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::TryStreamExt;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::auth;
use super::error::{ErrorKind, Format, ProxyError};
use crate::coord::Outcome;
use crate::db::entity::request_log;
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
    Path((slug, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    handle(state, slug, path, Mode::Llm, req).await
}

pub async fn rest(
    State(state): State<AppState>,
    Path((slug, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    handle(state, slug, path, Mode::Rest, req).await
}

pub async fn default_slug(
    State(state): State<AppState>,
    Path(path): Path<String>,
    req: Request,
) -> Response {
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
        if is_hop_by_hop(name, &listed)
            || auth::CREDENTIAL_HEADERS.contains(&name.as_str())
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

fn retry_after_ms(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs >= 0.0).then(|| (secs * 1000.0) as u64);
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(ms.max(0) as u64)
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

async fn handle(state: AppState, slug: String, path: String, mode: Mode, req: Request) -> Response {
    let started = Instant::now();
    let guessed = guess_format(req.headers(), req.uri().path());
    let snap = state.snapshot.load_full();
    let Some(svc) = snap.services.get(&slug).cloned() else {
        return finish_err(
            &state,
            &slug,
            started,
            ProxyError::new(
                ErrorKind::UnknownSlug,
                guessed,
                format!("unknown slug '{slug}'"),
            ),
        );
    };
    let fmt = format_for(svc.kind, guessed);
    if (mode == Mode::Rest) != (svc.kind == Kind::Rest) {
        let hint = if svc.kind == Kind::Rest {
            "/proxy"
        } else {
            "/llm"
        };
        return finish_err(
            &state,
            &slug,
            started,
            ProxyError::new(
                ErrorKind::UnknownSlug,
                fmt,
                format!("slug '{slug}' is served under {hint}/{slug}/"),
            ),
        );
    }
    let query = req.uri().query().map(str::to_string);
    let access_key_id = match auth::check(
        &state,
        &snap,
        &svc,
        auth::credential(req.headers(), query.as_deref()),
    ) {
        Ok(id) => id,
        Err((kind, msg)) => {
            return finish_err(&state, &slug, started, ProxyError::new(kind, fmt, msg));
        }
    };
    drop(snap);
    if !svc.enabled {
        let e = ProxyError::new(
            ErrorKind::NoUsableKey,
            fmt,
            format!("slug '{slug}' is disabled"),
        );
        return finish_err(&state, &slug, started, e);
    }

    let (parts, body) = req.into_parts();
    let max_body = state.config.proxy.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        let e = ProxyError::new(
            ErrorKind::BodyTooLarge,
            fmt,
            format!("request body exceeds the limit of {max_body} bytes"),
        );
        return finish_err(&state, &slug, started, e);
    }
    let mut body = match declared {
        Some(n) if n <= state.config.proxy.retry_buffer_bytes as u64 => {
            match axum::body::to_bytes(body, n as usize).await {
                Ok(b) => ReqBody::Buffered(b),
                Err(_) => {
                    let e =
                        ProxyError::new(ErrorKind::BadRequest, fmt, "could not read request body");
                    return finish_err(&state, &slug, started, e);
                }
            }
        }
        _ => ReqBody::Stream(Some(limit_body(body, max_body))),
    };
    let model = match &body {
        ReqBody::Buffered(b) if !b.is_empty() => serde_json::from_slice::<ModelField>(b)
            .ok()
            .and_then(|m| m.model),
        _ => None,
    };

    let url = upstream_url(&svc, &path, mode, query.as_deref());
    let base_headers = request_headers(&parts.headers, matches!(body, ReqBody::Stream(_)));
    let method = parts.method.clone();
    let max_attempts = match body {
        ReqBody::Buffered(_) => svc.max_attempts.min(svc.keys.len().max(1) as u32),
        ReqBody::Stream(_) => 1,
    };

    let mut attempts = 0u32;
    let mut last_failure: Option<Failure> = None;
    while attempts < max_attempts {
        let pick = match state.coord.select_round_robin(svc.id, &svc.key_ids).await {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(m::COORD_ERRORS_TOTAL, "kind" => e.kind()).increment(1);
                tracing::error!(error = %e, slug = %slug, "coordination store failed");
                let e =
                    ProxyError::new(ErrorKind::NoUsableKey, fmt, "key selection is unavailable");
                return finish_err(&state, &slug, started, e);
            }
        };
        let Some(pick) = pick else { break };
        attempts += 1;
        let key = &svc.keys[pick.index];
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
                tracing::error!(key = %key.masked, slug = %slug, "upstream key is not a valid header value");
                report(
                    &state,
                    &svc,
                    key.id,
                    &key.masked,
                    Outcome::Invalid,
                    "invalid",
                    "key is not a valid header value",
                )
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
        let result = tokio::time::timeout(svc.request_timeout, send).await;
        let failure = match result {
            Err(_) => {
                metrics::counter!(m::UPSTREAM_ATTEMPTS_TOTAL, "slug" => slug.clone(), "outcome" => "timeout").increment(1);
                let o = Outcome::Fail {
                    threshold: state.config.proxy.failure_threshold,
                    ms: state.config.proxy.failure_cooldown_ms,
                };
                report(
                    &state,
                    &svc,
                    key.id,
                    &key.masked,
                    o,
                    "cooling",
                    "timeout waiting for upstream",
                )
                .await;
                Failure::Timeout
            }
            Ok(Err(e)) => {
                metrics::counter!(m::UPSTREAM_ATTEMPTS_TOTAL, "slug" => slug.clone(), "outcome" => "connect_error").increment(1);
                let o = Outcome::Fail {
                    threshold: state.config.proxy.failure_threshold,
                    ms: state.config.proxy.failure_cooldown_ms,
                };
                let reason = if e.is_connect() {
                    "connect error"
                } else {
                    "upstream request error"
                };
                tracing::warn!(key = %key.masked, slug = %slug, error = %e.without_url(), "upstream attempt failed");
                report(&state, &svc, key.id, &key.masked, o, "cooling", reason).await;
                Failure::Connect
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                match classify(status) {
                    Class::Deliver => {
                        let outcome = if status.is_success() || status.is_redirection() {
                            "ok"
                        } else {
                            "client_error"
                        };
                        metrics::counter!(m::UPSTREAM_ATTEMPTS_TOTAL, "slug" => slug.clone(), "outcome" => outcome).increment(1);
                        if pick.fails > 0 {
                            let st = state.clone();
                            let id = key.id;
                            tokio::spawn(async move {
                                let _ = st.coord.report(id, &Outcome::Ok, "").await;
                            });
                        }
                        log_request(
                            &state,
                            &svc,
                            access_key_id,
                            Some(key.id),
                            model,
                            &path,
                            status.as_u16(),
                            attempts,
                            started,
                            None,
                        );
                        return deliver(&slug, started, resp);
                    }
                    Class::Key(kind) => {
                        let retry_after = retry_after_ms(resp.headers());
                        let can_retry = matches!(body, ReqBody::Buffered(_));
                        // A 429 whose body says the quota is gone is exhaustion, not a rate limit.
                        let (kind, resp) = if kind == KeyFault::RateLimited && can_retry {
                            let text = read_small(resp).await;
                            let exhausted = text.contains("insufficient_quota")
                                || text.contains("quota_exceeded");
                            (if exhausted { KeyFault::Exhausted } else { kind }, None)
                        } else {
                            (kind, Some(resp))
                        };
                        let (outcome, status_word, label) = match kind {
                            KeyFault::Invalid => (Outcome::Invalid, "invalid", "invalid"),
                            KeyFault::Exhausted => (Outcome::Invalid, "exhausted", "exhausted"),
                            KeyFault::RateLimited => (
                                Outcome::Cool {
                                    ms: retry_after
                                        .unwrap_or(state.config.proxy.default_cooldown_ms),
                                },
                                "cooling",
                                "cooling",
                            ),
                            KeyFault::Server => (
                                Outcome::Fail {
                                    threshold: state.config.proxy.failure_threshold,
                                    ms: state.config.proxy.failure_cooldown_ms,
                                },
                                "cooling",
                                "server_error",
                            ),
                        };
                        metrics::counter!(m::UPSTREAM_ATTEMPTS_TOTAL, "slug" => slug.clone(), "outcome" => label).increment(1);
                        report(
                            &state,
                            &svc,
                            key.id,
                            &key.masked,
                            outcome,
                            status_word,
                            &format!("upstream answered {status}"),
                        )
                        .await;
                        if let Some(resp) = resp.filter(|_| !can_retry) {
                            // Streamed request body: it cannot be sent again, so the client gets the upstream answer.
                            log_request(
                                &state,
                                &svc,
                                access_key_id,
                                Some(key.id),
                                model,
                                &path,
                                status.as_u16(),
                                attempts,
                                started,
                                Some(label),
                            );
                            return deliver(&slug, started, resp);
                        }
                        Failure::Status {
                            status,
                            retry_after_ms: retry_after,
                        }
                    }
                }
            }
        };
        last_failure = Some(failure);
    }

    let err = match last_failure {
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
    log_request(
        &state,
        &svc,
        access_key_id,
        None,
        model,
        &path,
        err.kind.status().as_u16(),
        attempts,
        started,
        Some(err.kind.label()),
    );
    finish_err(&state, &slug, started, err)
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

/// Applies `max_body_bytes` to a body of unknown length as it streams.
fn limit_body(body: Body, max: usize) -> Body {
    let mut seen = 0usize;
    let stream = body
        .into_data_stream()
        .map_err(axum::Error::new)
        .and_then(move |chunk| {
            seen += chunk.len();
            let over = seen > max;
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
    Body::from_stream(stream)
}

async fn report(
    state: &AppState,
    svc: &ServiceRt,
    key_id: i64,
    masked: &str,
    outcome: Outcome,
    status_word: &'static str,
    reason: &str,
) {
    match state.coord.report(key_id, &outcome, status_word).await {
        Ok(r) => {
            let out_of_rotation = r.until != 0;
            if out_of_rotation {
                metrics::counter!(m::KEY_TRANSITIONS_TOTAL, "slug" => svc.slug.clone(), "to" => status_word).increment(1);
                tracing::warn!(key = %masked, key_id, slug = %svc.slug, to = status_word, reason, fails = r.fails, "upstream key out of rotation");
            }
        }
        Err(e) => {
            metrics::counter!(m::COORD_ERRORS_TOTAL, "kind" => e.kind()).increment(1);
            tracing::error!(error = %e, "could not record key outcome");
        }
    }
    // Durable statuses also go to the database (off the request path) so they survive a Redis flush.
    let durable = matches!(status_word, "invalid" | "exhausted").then_some(status_word);
    let db = state.db.clone();
    let reason = reason.to_string();
    tokio::spawn(async move {
        if let Err(e) = crate::db::keys::set_status(&db, key_id, durable, &reason).await {
            tracing::warn!(error = %e, key_id, "could not persist key status");
        }
    });
}

fn deliver(slug: &str, started: Instant, resp: reqwest::Response) -> Response {
    let status = resp.status();
    let headers = response_headers(resp.headers());
    let mut out = Response::new(Body::from_stream(resp.bytes_stream()));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    record(slug, status.as_u16(), started);
    out
}

fn finish_err(_state: &AppState, slug: &str, started: Instant, e: ProxyError) -> Response {
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

#[allow(clippy::too_many_arguments)]
fn log_request(
    state: &AppState,
    svc: &ServiceRt,
    access_key_id: Option<i64>,
    upstream_key_id: Option<i64>,
    model: Option<String>,
    path: &str,
    status: u16,
    attempts: u32,
    started: Instant,
    error_kind: Option<&str>,
) {
    use sea_orm::ActiveValue::Set;
    let row = request_log::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        ts: Set(chrono::Utc::now()),
        service: Set(svc.slug.clone()),
        access_key_id: Set(access_key_id),
        upstream_key_id: Set(upstream_key_id),
        model: Set(model),
        path: Set(path.chars().take(512).collect()),
        status: Set(status as i32),
        attempts: Set(attempts as i32),
        latency_ms: Set(started.elapsed().as_millis() as i64),
        ttft_ms: Set(None),
        prompt_tokens: Set(None),
        completion_tokens: Set(None),
        cost: Set(None),
        error_kind: Set(error_kind.map(str::to_string)),
    };
    // A full queue drops the row rather than slow the request.
    let _ = state.logs.try_send(row);
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
