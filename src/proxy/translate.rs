//! The translation stage: when the client's API and the upstream's format differ, the request is
//! rewritten for the upstream (path, method, body) and the answer is turned back on its way to the
//! client. Same-format calls never enter this file's work: they pass through untouched.
use std::collections::HashSet;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::TryStreamExt;
use parking_lot::RwLock;

use super::body::ReqBody;
use super::error::{ErrorKind, ProxyError};
use super::finish::Finish;
use super::ingress::Admitted;
use crate::domain::ResponsesMode;
use crate::formats::registry::{self, Plan, Prepared, Refusal};
use crate::formats::{Endpoint, Format};
use crate::snapshot::ServiceRt;

/// Services whose OpenAI upstream answered 404 to `/responses`: their Responses calls are
/// translated to chat completions from then on (the `auto` setting), on this replica.
#[derive(Default)]
pub struct ResponsesFallback(RwLock<HashSet<i64>>);

impl ResponsesFallback {
    /// Whether Responses calls go to the upstream's own `/responses`.
    pub fn native(&self, svc: &ServiceRt) -> bool {
        match svc.responses {
            ResponsesMode::Passthrough => true,
            ResponsesMode::Translate => false,
            ResponsesMode::Auto => !self.0.read().contains(&svc.id),
        }
    }

    pub fn learn(&self, svc: &ServiceRt) {
        if self.0.write().insert(svc.id) {
            tracing::info!(slug = %svc.slug, "upstream has no /responses: translating Responses calls to chat completions");
        }
    }
}

/// A call that is being translated.
pub struct Translated {
    pub plan: Plan,
    pub prepared: Prepared,
    /// An OpenAI embeddings client asked for base64 vectors.
    pub wants_base64: bool,
}

/// Decides whether the call is translated; when it is, reads the whole body, rewrites it and
/// points the admitted call at the upstream's path.
pub async fn prepare(
    fin: &Finish,
    adm: &mut Admitted,
    query: Option<&str>,
    native_responses: bool,
    body: &mut ReqBody,
    max_body: usize,
) -> Result<Option<Translated>, ProxyError> {
    let Some(plan) = registry::plan(
        fin.client_fmt,
        &adm.endpoint,
        fin.upstream_fmt,
        query,
        native_responses,
    ) else {
        return Ok(None);
    };
    let fmt = fin.client_fmt;
    let bytes = body
        .whole(max_body)
        .await
        .map_err(|(kind, msg)| ProxyError::new(kind, fmt, msg))?;
    let wants_base64 = adm.endpoint == Endpoint::Embeddings
        && crate::formats::gemini::embeddings_wants_base64(&bytes);
    let prepared = plan.request(&adm.endpoint, &bytes).map_err(|r| {
        let msg = match &r {
            Refusal::Unsupported(m) => format!(
                "not supported when translating to a {} upstream: {m}",
                fin.upstream_fmt.name()
            ),
            Refusal::BadRequest(m) => m.clone(),
        };
        ProxyError::new(ErrorKind::BadRequest, fmt, msg)
    })?;
    adm.url = format!("{}/{}", adm.svc.base_url, prepared.path);
    *body = ReqBody::Buffered(prepared.body.clone());
    Ok(Some(Translated {
        plan,
        prepared,
        wants_base64,
    }))
}

/// The headers sent upstream for a translated call: the client's format-specific headers do not
/// mean anything to another format, and the body is new.
pub fn upstream_headers(base: &HeaderMap, client: Format, upstream: Format) -> HeaderMap {
    let mut h = base.clone();
    h.remove(header::CONTENT_LENGTH);
    if client == Format::Anthropic && upstream != Format::Anthropic {
        h.remove("anthropic-version");
        h.remove("anthropic-beta");
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

/// An upstream error answer (a status passed to the client) re-worded in the client's format.
pub async fn error_answer(
    resp: reqwest::Response,
    fin: Finish,
    error_kind: Option<&str>,
    within: std::time::Duration,
) -> Response {
    let status = resp.status();
    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
    let body = read_all(resp, 1 << 20, within).await;
    let v = registry::translate_error(fin.client_fmt, fin.upstream_fmt, status.as_u16(), &body);
    let mut fin = fin;
    fin.status = status.as_u16();
    fin.head_sent();
    fin.end(false, Some(error_kind.unwrap_or("upstream_error")));
    let mut out = Response::new(Body::from(v.to_string()));
    *out.status_mut() = status;
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = retry_after {
        out.headers_mut().insert(header::RETRY_AFTER, v);
    }
    out
}

/// A successful non-stream answer, translated before the client's head goes out: one the
/// client's format cannot be written from is a 502 in the client's format, not a 200.
pub async fn whole_answer(
    resp: reqwest::Response,
    mut fin: Finish,
    t: &Translated,
    within: std::time::Duration,
) -> Response {
    let (status, _, body) = read_answer(resp, within).await;
    match t.plan.whole(&t.prepared, &body, t.wants_base64) {
        Ok((out, usage)) => {
            fin.tokens = usage.unwrap_or_default();
            fin.status = status.as_u16();
            fin.head_sent();
            fin.end(true, None);
            let mut r = Response::new(Body::from(out));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            let fmt = fin.client_fmt;
            fin.release_answered();
            fin.fail(ProxyError::new(
                ErrorKind::UpstreamFailed,
                fmt,
                format!("the upstream's answer could not be translated: {e}"),
            ))
        }
    }
}

/// An upstream answer read whole (at most 1 MiB, within `within`), with the headers that go back.
pub async fn read_answer(
    resp: reqwest::Response,
    within: std::time::Duration,
) -> (StatusCode, HeaderMap, Bytes) {
    let status = resp.status();
    let mut headers = super::headers::downstream(resp.headers());
    headers.remove(header::CONTENT_LENGTH);
    let body = read_all(resp, 1 << 20, within).await;
    (status, headers, body)
}

/// True when the client asks to count tokens in a format the upstream does not speak: keygate
/// answers with an estimate itself.
pub fn counts_locally(fin: &Finish, adm: &Admitted) -> bool {
    match &adm.endpoint {
        Endpoint::CountTokens => fin.upstream_fmt != Format::Anthropic,
        Endpoint::Gemini { method, .. } if method == "countTokens" => {
            fin.upstream_fmt != Format::Gemini
        }
        _ => false,
    }
}

/// The estimated count, answered without calling the upstream.
pub async fn count_tokens(
    mut fin: Finish,
    adm: &Admitted,
    body: &mut ReqBody,
    max_body: usize,
) -> Response {
    let fmt = fin.client_fmt;
    let bytes = match body.whole(max_body).await {
        Ok(b) => b,
        Err((kind, msg)) => return fin.fail(ProxyError::new(kind, fmt, msg)),
    };
    match registry::estimate_tokens(fmt, &adm.endpoint, &bytes) {
        Ok((v, _)) => {
            fin.status = 200;
            fin.head_sent();
            fin.end(true, None);
            let mut out = Response::new(Body::from(v.to_string()));
            out.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            out.headers_mut()
                .insert("x-keygate-estimated", HeaderValue::from_static("true"));
            out
        }
        Err(r) => fin.fail(ProxyError::new(ErrorKind::BadRequest, fmt, r.message())),
    }
}

/// True for an OpenAI upstream that has no Responses API (404 to `/responses`).
pub fn lacks_responses(adm: &Admitted, fin: &Finish, status: StatusCode) -> bool {
    adm.svc.responses == ResponsesMode::Auto
        && status == StatusCode::NOT_FOUND
        && adm.endpoint == Endpoint::Responses
        && fin.upstream_fmt == Format::OpenAi
}

/// Reads a small answer whole; an upstream that stalls its body is cut off at `within`, so the
/// request (and its lease) never hangs on it.
async fn read_all(resp: reqwest::Response, cap: usize, within: std::time::Duration) -> Bytes {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    let read = async {
        while let Ok(Some(chunk)) = stream.try_next().await {
            out.extend_from_slice(&chunk);
            if out.len() > cap {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    Bytes::from(out)
}
