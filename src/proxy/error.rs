//! Errors the gateway itself returns on the data plane, in the error shape of the client's format
//! (OpenAI, Anthropic or Gemini), so that SDKs surface them properly. The shapes live with each
//! format in `crate::formats`.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use crate::formats::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadAccessKey,
    SlugNotAllowed,
    UnknownSlug,
    BodyTooLarge,
    BadRequest,
    ClientTimeout,
    RateLimited,
    /// The access key's budget is spent (OpenAI code `insufficient_quota`).
    BudgetExhausted,
    UpstreamFailed,
    UpstreamRateLimited,
    NoUsableKey,
    UpstreamTimeout,
    /// The service does not offer the model the client asked for (its allow-list).
    ModelNotAllowed,
    /// The request already passed through this keygate deployment: a service points back at it.
    LoopDetected,
    /// The SSRF guard refused the upstream's address (`egress.allow` does not admit it).
    EgressRefused,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadAccessKey => StatusCode::UNAUTHORIZED,
            Self::SlugNotAllowed => StatusCode::FORBIDDEN,
            Self::UnknownSlug => StatusCode::NOT_FOUND,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            // As OpenAI answers a spent account.
            Self::BudgetExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Self::UpstreamRateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::NoUsableKey => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::LoopDetected => StatusCode::LOOP_DETECTED,
            Self::EgressRefused => StatusCode::BAD_GATEWAY,
            Self::ModelNotAllowed => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Low-cardinality label (metrics, request logs).
    pub fn label(self) -> &'static str {
        match self {
            Self::BadAccessKey => "bad_access_key",
            Self::SlugNotAllowed => "slug_not_allowed",
            Self::UnknownSlug => "unknown_slug",
            Self::BodyTooLarge => "body_too_large",
            Self::BadRequest => "bad_request",
            Self::ClientTimeout => "client_timeout",
            Self::RateLimited => "rate_limited",
            Self::BudgetExhausted => "insufficient_quota",
            Self::UpstreamFailed => "upstream_failed",
            Self::UpstreamRateLimited => "upstream_rate_limited",
            Self::NoUsableKey => "no_usable_key",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::LoopDetected => "loop_detected",
            Self::EgressRefused => "egress_refused",
            Self::ModelNotAllowed => "model_not_found",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: String,
    pub format: Format,
    pub retry_after_secs: Option<u64>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, format: Format, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            format,
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let body = self.format.error_body(self.kind, &self.message);
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ProxyError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let s = r.status();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (s, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn each_format_has_its_own_error_shape() {
        let (s, v) = body(ProxyError::new(ErrorKind::NoUsableKey, Format::OpenAi, "m")).await;
        assert_eq!(s, 503);
        assert_eq!(v["error"]["message"], "m");
        assert_eq!(v["error"]["code"], "no_usable_key");
        assert!(v["error"].get("param").is_some());
        let (_, v) = body(ProxyError::new(
            ErrorKind::BadAccessKey,
            Format::Anthropic,
            "m",
        ))
        .await;
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let (_, v) = body(ProxyError::new(ErrorKind::UnknownSlug, Format::Gemini, "m")).await;
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["status"], "NOT_FOUND");
    }
}
