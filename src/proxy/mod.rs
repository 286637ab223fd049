//! DATA PLANE. A request goes through these stages, each in its own file:
//! 1. `ingress`: slug, service, client format and endpoint, credential, loop marker, upstream URL;
//! 2. `headers`: what is forwarded upstream and back;
//! 3. `body`: buffer (retryable) or stream (one attempt), with the size limit;
//! 4. `failover`: pick a key, send, classify, mark, retry: returns an outcome, builds no HTTP;
//! 5. `meter`: the answer streams to the client while usage and TTFB are read;
//! 6. `finish`: the single finaliser every exit passes through (lease, metrics, one event).
//!
//! Routes: `/llm/{slug}/...` for LLM kinds, `/proxy/{slug}/...` for REST, `/v1/...` for the
//! configured default slug. The data plane reads only the config snapshot and the coordination
//! store, and hands events to `crate::events`; it never names the database.
pub mod affinity;
pub mod auth;
pub mod azure;
pub mod body;
pub mod error;
pub mod failover;
pub mod finish;
pub mod headers;
pub mod ingress;
pub mod leases;
pub mod listing;
pub mod meter;
pub mod models;
pub mod router;
pub mod translate;
pub mod usage;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::Response;
use axum::routing::any;
use tracing::Instrument;

use error::{ErrorKind, ProxyError};
use failover::Outcome;
use finish::Finish;
use ingress::Mode;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/llm/{slug}/{*path}", any(llm))
        .route("/llm/{slug}", any(llm))
        .route("/llm/{slug}/", any(llm))
        .route("/proxy/{slug}/{*path}", any(rest))
        // No path at all is still a data-plane request: it gets an answer in the client's
        // format (unknown slug, missing key, or the REST base URL itself), never an empty 404.
        .route("/proxy/{slug}", any(rest))
        .route("/proxy/{slug}/", any(rest))
        .route("/v1/{*path}", any(default_slug))
        .route("/v1", any(default_slug))
        .route("/v1/", any(default_slug))
}

/// Any other path outside the control plane: a 404 in the format the request looks like (the
/// OpenAI shape when nothing says otherwise), so a client's SDK can read it.
pub async fn no_route(req: Request) -> Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().trim_start_matches('/');
    let (fmt, _) = ingress::client_format(req.headers(), path, Mode::Llm);
    ProxyError::new(
        ErrorKind::UnknownSlug,
        fmt,
        "no such path: the data plane serves /llm/<slug>/..., /proxy/<slug>/... and /v1/...",
    )
    .into_response()
}

/// A panic on the data plane becomes a 500 in the OpenAI error shape (the format most clients
/// read) instead of a dropped connection; the finaliser has already logged the request as it
/// unwound.
pub fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    use axum::response::IntoResponse;
    let body = crate::formats::Format::OpenAi.error_body(ErrorKind::Internal, "internal error");
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(body),
    )
        .into_response()
}

/// The slug segment, still percent-encoded: a slug is `[a-z0-9-]`, so anything encoded is
/// simply an unknown slug, never a parse error.
fn slug_of(path: &str) -> String {
    path.trim_start_matches('/')
        .split('/')
        .nth(1)
        .unwrap_or("")
        .to_string()
}

async fn llm(State(state): State<AppState>, req: Request) -> Response {
    let slug = slug_of(req.uri().path());
    let path = ingress::raw_rest(req.uri().path(), 2);
    handle(state, slug, path, Mode::Llm, req).await
}

async fn rest(State(state): State<AppState>, req: Request) -> Response {
    let slug = slug_of(req.uri().path());
    let path = ingress::raw_rest(req.uri().path(), 2);
    handle(state, slug, path, Mode::Rest, req).await
}

async fn default_slug(State(state): State<AppState>, req: Request) -> Response {
    let path = format!("v1/{}", ingress::raw_rest(req.uri().path(), 1));
    let Some(slug) = state.config.proxy.default_slug.clone() else {
        let (fmt, _) = ingress::client_format(req.headers(), &path, Mode::Llm);
        let mut fin = Finish::start(&state, "_default", &path, fmt);
        fin.unknown_slug();
        return fin.fail(ProxyError::new(
            ErrorKind::UnknownSlug,
            fmt,
            "no default slug is configured: call /llm/<slug>/v1/... or set KEYGATE_DEFAULT_SLUG",
        ));
    };
    handle(state, slug, path, Mode::Llm, req).await
}

/// One request in its span (`llm.request`), the parent of its attempts and coordination calls
/// and, with a client's `traceparent`, the child of the client's span.
async fn handle(state: AppState, slug: String, path: String, mode: Mode, req: Request) -> Response {
    use tracing::field::Empty;
    let span = tracing::info_span!(
        "llm.request",
        otel.kind = "server",
        slug = %slug,
        method = %req.method(),
        client_format = Empty,
        upstream_format = Empty,
        model = Empty,
        upstream_model = Empty,
        status = Empty,
        attempts = Empty,
        prompt_tokens = Empty,
        completion_tokens = Empty,
        cost = Empty,
        error_kind = Empty,
        trace_id = Empty,
    );
    crate::telemetry::trace::adopt_client_parent(&span, req.headers());
    pipeline(state, slug, path, mode, req)
        .instrument(span)
        .await
}

/// The pipeline: each stage either hands on or ends the request through the finaliser.
async fn pipeline(
    state: AppState,
    slug: String,
    path: String,
    mode: Mode,
    req: Request,
) -> Response {
    let (fmt, endpoint) = ingress::client_format(req.headers(), &path, mode);
    tracing::Span::current().record("client_format", fmt.name());
    let mut fin = Finish::start(&state, &slug, &path, fmt);
    if path.is_empty() && mode == Mode::Llm {
        let e = ProxyError::new(
            ErrorKind::BadRequest,
            fmt,
            format!(
                "no API path: call /llm/{slug}/v1/... (for example /llm/{slug}/v1/chat/completions)"
            ),
        );
        return fin.fail(e);
    }
    let mut adm = match ingress::admit(&state, &mut fin, endpoint, mode, req.headers(), req.uri()) {
        Ok(a) => a,
        Err(e) => return fin.fail(e),
    };
    let (parts, body) = req.into_parts();
    let proxy = &state.config.proxy;
    let mut body = match body::take(
        &parts.headers,
        body,
        proxy.max_body_bytes,
        proxy.retry_buffer_bytes,
    )
    .await
    {
        Ok(b) => b,
        Err((kind, msg)) => {
            let fmt = fin.client_fmt;
            return fin.fail(ProxyError::new(kind, fmt, msg));
        }
    };
    if let Err(e) = azure::read_model(&fin, &adm, &mut body, proxy.max_body_bytes).await {
        return fin.fail(e);
    }
    if fin.model.is_none()
        && let body::ReqBody::Buffered(b) = &body
        && !b.is_empty()
    {
        fin.model = fin.client_fmt.model_in_body(b);
    }
    if let Err(e) = models::apply(&mut fin, &mut adm, &mut body) {
        return fin.fail(e);
    }
    if listing::is_list(&adm, &parts.method, &fin.path) {
        return listing::answer(&state, fin, adm, &parts.headers).await;
    }
    if adm.svc.kind == crate::domain::Kind::Router {
        return route(&state, fin, adm, &parts, body).await;
    }
    match serve(&state, fin, adm, &parts, body, true).await {
        Ok(resp) | Err((_, resp)) => resp,
    }
}

/// A router slug: the targets of the route that takes the model, in order, each served as its
/// own slug, until one answers or fails in a way the next cannot help with.
async fn route(
    state: &AppState,
    mut fin: Finish,
    adm: ingress::Admitted,
    parts: &axum::http::request::Parts,
    mut body: body::ReqBody,
) -> Response {
    let routed = fin.upstream_model.clone().or_else(|| fin.model.clone());
    let Some(targets) = adm
        .svc
        .routes
        .targets(routed.as_deref())
        .map(<[String]>::to_vec)
    else {
        let e = ProxyError::new(
            ErrorKind::ModelNotAllowed,
            fin.client_fmt,
            format!(
                "the model '{}' does not exist or is not offered on '{}'",
                routed.unwrap_or_default(),
                adm.svc.slug
            ),
        );
        return fin.fail(e);
    };
    // Only a buffered body can be sent to another target.
    let again = body.buffered();
    let mut failed = None;
    for (i, target) in targets.iter().enumerate() {
        let last = i + 1 == targets.len() || again.is_none();
        if i > 0 {
            if let Some(b) = &again {
                body = body::ReqBody::Buffered(b.clone());
            }
            fin.upstream_model = routed.clone().filter(|r| Some(r) != fin.model.as_ref());
        }
        let Some(mut tadm) = ingress::retarget(state, &mut fin, &adm, target, &parts.uri) else {
            failed = Some(format!("target '{target}' is missing or disabled"));
            if last {
                break;
            }
            continue;
        };
        if let Err(e) = models::apply(&mut fin, &mut tadm, &mut body) {
            if last {
                return fin.fail(e);
            }
            continue;
        }
        match serve(state, fin, tadm, parts, body, last).await {
            Ok(resp) => return resp,
            Err((f, _)) if !last => {
                metrics::counter!(crate::telemetry::metrics::ROUTER_FALLBACKS_TOTAL,
                    "slug" => adm.svc.slug.clone(), "target" => target.clone())
                .increment(1);
                fin = f;
                body = body::ReqBody::Buffered(bytes::Bytes::new());
            }
            Err((_, resp)) => return resp,
        }
    }
    let e = ProxyError::new(
        ErrorKind::NoUsableKey,
        fin.client_fmt,
        format!(
            "no target of '{}' could serve the request ({})",
            adm.svc.slug,
            failed.unwrap_or_else(|| "every target failed".into())
        ),
    );
    fin.fail(e)
}

/// One service serves the request. With `last` false (a router has more targets), a failure that
/// another target may serve, before any byte reached the client, hands the request back instead
/// of answering: `Err((fin, _))`. Otherwise the response is final (`Ok`, or `Err` with it).
async fn serve(
    state: &AppState,
    mut fin: Finish,
    mut adm: ingress::Admitted,
    parts: &axum::http::request::Parts,
    mut body: body::ReqBody,
    last: bool,
) -> Result<Response, (Finish, Response)> {
    let proxy = &state.config.proxy;
    adm.session = affinity::session(&adm.svc, &parts.headers, body.buffered().as_deref());
    fin.prompt = body.buffered();
    // Priced by the model sent upstream, on the slug that serves it.
    fin.price = fin
        .upstream_model
        .as_deref()
        .or(fin.model.as_deref())
        .and_then(|m| state.snapshot.load().prices.price(&adm.svc.slug, m));
    if translate::counts_locally(&fin, &adm) {
        fin.estimated = true;
        return Ok(translate::count_tokens(fin, &adm, &mut body, proxy.max_body_bytes).await);
    }
    let query = parts.uri.query();
    let head = parts.method == Method::HEAD;
    // Every stream is metered: an OpenAI chat stream whose client did not ask for usage asks for
    // it on the client's behalf, and the usage chunk is kept from the client.
    let mut hide_usage = false;
    if fin.client_fmt == crate::formats::Format::OpenAi
        && fin.upstream_fmt == crate::formats::Format::OpenAi
        && adm.endpoint == crate::formats::Endpoint::ChatCompletions
        && let body::ReqBody::Buffered(b) = &body
        && let Some(asked) = crate::formats::registry::ask_stream_usage(b)
    {
        body = body::ReqBody::Buffered(asked);
        hide_usage = true;
    }
    // A Responses call to an OpenAI upstream without `/responses` is tried once more, translated.
    let mut native = state.responses_fallback.native(&adm.svc);
    let original = body.buffered();
    loop {
        let tr = match translate::prepare(
            &fin,
            &mut adm,
            query,
            native,
            &mut body,
            proxy.max_body_bytes,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => return Ok(fin.fail(e)),
        };
        let model = tr.as_ref().and_then(|t| t.prepared.model.as_deref());
        if let Err(e) = azure::route(&fin, &mut adm, model) {
            return Ok(fin.fail(e));
        }
        let method = tr
            .as_ref()
            .map(|t| t.prepared.method.clone())
            .unwrap_or_else(|| parts.method.clone());
        let base = match &tr {
            None => headers::upstream(&parts.headers, &state.hop_id, body.is_stream()),
            Some(_) => translate::upstream_headers(
                &headers::upstream(&parts.headers, &state.hop_id, false),
                fin.client_fmt,
                fin.upstream_fmt,
            ),
        };
        let base = headers::with_service(base, &adm.svc.upstream_headers);
        let ran = failover::run(state, &mut fin, &adm, &method, &base, &mut body).await;
        let client = fin.client;
        let mut resp = match ran.outcome {
            Outcome::Answer { resp, error_kind }
                if tr.is_none()
                    && native
                    && translate::lacks_responses(&adm, &fin, resp.status()) =>
            {
                // A 404 for a model the upstream does not have is the client's answer; only a
                // missing route means the upstream has no Responses API.
                let (status, headers, text) =
                    translate::read_answer(resp, adm.svc.request_timeout).await;
                if String::from_utf8_lossy(&text).contains("model_not_found") {
                    fin.status = status.as_u16();
                    fin.head_sent();
                    fin.end(false, error_kind);
                    let mut out = Response::new(axum::body::Body::from(text));
                    *out.status_mut() = status;
                    *out.headers_mut() = headers;
                    return Ok(out);
                }
                state.responses_fallback.learn(&adm.svc);
                fin.release_answered();
                native = false;
                match &original {
                    Some(b) => body = body::ReqBody::Buffered(b.clone()),
                    None => {
                        // A streamed body cannot be sent again: the client gets the 404, and
                        // the next call is translated.
                        fin.status = status.as_u16();
                        fin.head_sent();
                        fin.end(false, Some("upstream_error"));
                        let mut out = Response::new(axum::body::Body::from(text));
                        *out.status_mut() = status;
                        *out.headers_mut() = headers;
                        return Ok(out);
                    }
                }
                continue;
            }
            // A failing upstream passed through as it answered (its status is not retried):
            // another target may still serve the request.
            Outcome::Answer { resp, error_kind }
                if !last
                    && error_kind.is_some()
                    && (resp.status().is_server_error()
                        || resp.status() == axum::http::StatusCode::TOO_MANY_REQUESTS) =>
            {
                drop(resp);
                fin.release_untried();
                return Err((fin, Response::default()));
            }
            Outcome::Answer { resp, error_kind } => match &tr {
                None if hide_usage
                    && resp.status().is_success()
                    && resp
                        .headers()
                        .get(axum::http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("text/event-stream")) =>
                {
                    let hidden = meter::Translating {
                        transform: Box::<crate::formats::registry::HiddenUsage>::default(),
                        content_type: "text/event-stream",
                    };
                    meter::deliver(resp, fin, error_kind, head, Some(hidden))
                }
                None => meter::deliver(resp, fin, error_kind, head, None),
                Some(t) if resp.status().is_success() => {
                    // The client's name stays in the log; the upstream's is `upstream_model`.
                    if fin.model.is_none() {
                        fin.model = t.prepared.model.clone();
                    }
                    let sse = resp
                        .headers()
                        .get(axum::http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with("text/event-stream"));
                    match t.plan.stream(&t.prepared).filter(|_| sse) {
                        Some(transform) => {
                            let translating = meter::Translating {
                                transform: Box::new(transform),
                                content_type: t.plan.content_type(true),
                            };
                            meter::deliver(resp, fin, error_kind, head, Some(translating))
                        }
                        None => {
                            let within = adm.svc.request_timeout;
                            translate::whole_answer(resp, fin, t, within).await
                        }
                    }
                }
                Some(_) => {
                    let within = adm.svc.request_timeout;
                    translate::error_answer(resp, fin, error_kind, within).await
                }
            },
            Outcome::Error(e) if !last && router::falls_back_on(e.kind) => {
                fin.release_untried();
                return Err((fin, Response::default()));
            }
            Outcome::Error(e) => fin.fail(e),
        };
        if let (Some(c), Some(rem)) = (client, ran.remaining) {
            headers::limits(resp.headers_mut(), &c, &rem);
        }
        return Ok(resp);
    }
}
