//! Gemini wire format: `/v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
//! `:countTokens`, `:embedContent`, `:batchEmbedContents`, `/v1beta/models`.
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Endpoint, count};
use crate::events::Tokens;
use crate::proxy::error::ErrorKind;

pub const DEFAULT_AUTH: (&str, &str) = ("x-goog-api-key", "{key}");

pub fn recognise(path: &str) -> Option<Endpoint> {
    let (version, rest) = path.split_once('/').unwrap_or((path, ""));
    if !version.starts_with("v1") {
        return None;
    }
    let m = rest.strip_prefix("models")?;
    if m.is_empty() {
        // `v1/models` is OpenAI's list; Gemini's is `v1beta/models`.
        return (version != "v1").then_some(Endpoint::Models);
    }
    let (model, method) = m.strip_prefix('/')?.split_once(':')?;
    Some(Endpoint::Gemini {
        model: model.to_string(),
        method: method.to_string(),
    })
}

/// Google's canonical status name for a gateway error.
pub fn status_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadAccessKey => "UNAUTHENTICATED",
        ErrorKind::SlugNotAllowed => "PERMISSION_DENIED",
        ErrorKind::UnknownSlug => "NOT_FOUND",
        ErrorKind::BodyTooLarge | ErrorKind::BadRequest => "INVALID_ARGUMENT",
        ErrorKind::ClientTimeout | ErrorKind::UpstreamTimeout => "DEADLINE_EXCEEDED",
        ErrorKind::NoUsableKey => "UNAVAILABLE",
        ErrorKind::UpstreamRateLimited | ErrorKind::RateLimited => "RESOURCE_EXHAUSTED",
        ErrorKind::LoopDetected => "ABORTED",
        ErrorKind::UpstreamFailed | ErrorKind::Internal => "INTERNAL",
    }
}

pub fn error_body(kind: ErrorKind, message: &str) -> Value {
    json!({"error": {"code": kind.status().as_u16(), "message": message, "status": status_name(kind)}})
}

pub fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"error": {"code": 502, "message": message, "status": "INTERNAL"}});
    Bytes::from(super::sse_data(&v))
}

/// Gemini reports both rate limits and spent quotas as 429 RESOURCE_EXHAUSTED; only a billing
/// message means the key itself is spent.
pub fn quota_exhausted(_status: u16, body: &str) -> bool {
    body.contains("check your plan and billing details") || body.contains("quota_exceeded")
}

/// `usageMetadata`: `promptTokenCount` (cached content included), `candidatesTokenCount` plus
/// `thoughtsTokenCount` (both billed as output), `cachedContentTokenCount`.
pub fn usage(v: &Value) -> Option<Tokens> {
    let g = &v["usageMetadata"];
    if !g.is_object() {
        return None;
    }
    Some(Tokens {
        prompt: count(&g["promptTokenCount"]),
        completion: count(&g["candidatesTokenCount"]) + count(&g["thoughtsTokenCount"]),
        cache_read: count(&g["cachedContentTokenCount"]),
        cache_write: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thoughts_count_as_output() {
        let v = json!({"usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6,
            "thoughtsTokenCount": 10, "cachedContentTokenCount": 2}});
        assert_eq!(
            usage(&v).map(|t| (t.prompt, t.completion, t.cache_read)),
            Some((4, 16, 2))
        );
    }

    #[test]
    fn errors_have_the_gemini_shape() {
        let v = error_body(ErrorKind::UnknownSlug, "m");
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["status"], "NOT_FOUND");
    }
}
