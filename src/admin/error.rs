//! Control-plane errors as `application/problem+json` (RFC 9457). Infrastructure errors map to HTTP
//! here and only here: not found -> 404, unique violation -> 409, pool exhausted -> 503, anything
//! else -> an opaque 500 with the cause chain logged.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

/// The control layer's error is the admin API's: each variant maps to one status here.
pub use crate::control::Error as ApiError;
pub use crate::control::{List, Page};

pub type ApiResult<T> = crate::control::Result<T>;

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable | Self::DatabaseDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "validation",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::TooLarge(_) => "payload-too-large",
            Self::Unsupported(_) => "unsupported-media-type",
            Self::Unavailable | Self::DatabaseDown => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(e) => {
                tracing::error!(error = ?e, "admin request failed");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        let p = Problem {
            kind: format!("https://keygate.dev/problems/{}", self.slug()),
            ..problem(status, detail)
        };
        let mut resp = (status, axum::Json(p)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON body extractor whose rejections are problem+json naming what was wrong.
pub struct Json<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        if !json_content_type(req.headers()) {
            return Err(ApiError::Unsupported(
                "Expected request with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::TooLarge(rej.body_text()));
            }
            Err(rej) => return Err(ApiError::BadRequest(rej.body_text())),
        };
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Json(v)),
            // JSON has one number type: `3.0` is the integer 3 to JSON Schema (and to the
            // clients generated from this API's document), so an integer field takes it.
            Err(JsonRejection::JsonDataError(e)) => match integral_floats(&bytes) {
                Some(v) => serde_json::from_value(v)
                    .map(Json)
                    .map_err(|_| data_error(e)),
                None => Err(data_error(e)),
            },
            // axum gives a missing or wrong Content-Type 415 and a body over `DefaultBodyLimit`
            // 413; those statuses are kept, everything else (bad JSON) is a 400.
            Err(rej) => Err(match rej.status() {
                StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::Unsupported(rej.body_text()),
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(rej.body_text()),
                _ => ApiError::BadRequest(rej.body_text()),
            }),
        }
    }
}

/// A body of the wrong shape: serde's message leads with the field's path and, for an enum,
/// lists the allowed values (`kind: unknown variant `cohere`, expected one of `openai`, ...`).
/// The generic prefix would push the field name out of the lead.
fn data_error(e: axum::extract::rejection::JsonDataError) -> ApiError {
    let text = e.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(&text);
    ApiError::BadRequest(detail.to_string())
}

/// `application/json` or any `application/*+json`, parameters aside (what `axum::Json` takes).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The body with every integral float (`3.0`) made an integer, or None when it has none (or
/// is not JSON): then the first error stands as it was.
fn integral_floats(bytes: &[u8]) -> Option<serde_json::Value> {
    fn fix(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    *v = serde_json::Value::from(f as i64);
                    true
                } else {
                    false
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().fold(false, |c, x| fix(x) | c),
            serde_json::Value::Object(o) => o.values_mut().fold(false, |c, x| fix(x) | c),
            _ => false,
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    fix(&mut v).then_some(v)
}

/// The one error contract of the admin API: any error response that is not problem+json yet
/// (a `Path` or `Query` rejection's text/plain, the router's empty 405, any other extractor's
/// rejection) is rewritten as one, keeping its status and headers (`Allow` on a 405). Handlers'
/// own errors are `ApiError`s already and pass through untouched.
pub async fn problem_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if is_problem {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Rejection texts are a line; anything larger is not one and is not echoed.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = if status.is_server_error() {
        tracing::error!(status = status.as_u16(), detail = %text, "admin request failed outside a handler");
        "internal error; see the server log".to_string()
    } else if text.is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                "this path does not take this method; see Allow".into()
            }
            StatusCode::NOT_FOUND => "no such admin API path".into(),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        }
    } else {
        text
    };
    let p = problem(status, detail);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    let body = serde_json::to_vec(&p).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A path under `/admin` that no route matches.
pub async fn no_route() -> ApiError {
    ApiError::NotFound("no such admin API path".into())
}

fn problem(status: StatusCode, detail: String) -> Problem {
    let slug = match status {
        StatusCode::BAD_REQUEST => "validation",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::TOO_MANY_REQUESTS => "too-many-requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    Problem {
        kind: format!("https://keygate.dev/problems/{slug}"),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
    }
}
