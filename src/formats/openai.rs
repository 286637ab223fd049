//! OpenAI (and OpenAI-compatible) wire format: `/v1/chat/completions`, `/v1/responses`,
//! `/v1/embeddings`, `/v1/models`.
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Endpoint, count};
use crate::events::Tokens;
use crate::proxy::error::ErrorKind;

pub const DEFAULT_AUTH: (&str, &str) = ("authorization", "Bearer {key}");

pub fn recognise(path: &str) -> Option<Endpoint> {
    let p = path.strip_prefix("v1/").unwrap_or(path);
    Some(match p {
        "chat/completions" => Endpoint::ChatCompletions,
        "embeddings" => Endpoint::Embeddings,
        "models" => Endpoint::Models,
        _ if p == "responses" || p.starts_with("responses/") => Endpoint::Responses,
        _ if p.starts_with("models/") && !p.contains(':') => Endpoint::Models,
        _ => return None,
    })
}

/// OpenAI's `error.type` for a gateway error.
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadAccessKey => "authentication_error",
        ErrorKind::SlugNotAllowed => "permission_error",
        ErrorKind::UnknownSlug => "not_found_error",
        ErrorKind::BodyTooLarge | ErrorKind::BadRequest | ErrorKind::ClientTimeout => {
            "invalid_request_error"
        }
        ErrorKind::NoUsableKey => "service_unavailable",
        ErrorKind::UpstreamRateLimited | ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::UpstreamFailed
        | ErrorKind::UpstreamTimeout
        | ErrorKind::LoopDetected
        | ErrorKind::Internal => "api_error",
    }
}

pub fn error_body(kind: ErrorKind, message: &str) -> Value {
    json!({"error": {"message": message, "type": error_type(kind), "code": kind.label(), "param": null}})
}

pub fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"error": {"message": message, "type": "api_error", "code": "upstream_failed", "param": null}});
    Bytes::from(super::sse_data(&v))
}

pub fn quota_exhausted(_status: u16, body: &str) -> bool {
    body.contains("insufficient_quota")
}

/// `usage` of a chat completion (`prompt_tokens`, `completion_tokens`,
/// `prompt_tokens_details.cached_tokens`) or of a Responses API object (`input_tokens`,
/// `output_tokens`, `input_tokens_details.cached_tokens`; in a stream inside `response`).
pub fn usage(v: &Value) -> Option<Tokens> {
    let u = [&v["usage"], &v["response"]["usage"]]
        .into_iter()
        .find(|u| u.is_object())?;
    let prompt = &u["prompt_tokens"];
    if prompt.is_u64() || u["completion_tokens"].is_u64() {
        return Some(Tokens {
            prompt: count(prompt),
            completion: count(&u["completion_tokens"]),
            cache_read: count(&u["prompt_tokens_details"]["cached_tokens"]),
            cache_write: 0,
        });
    }
    if u["input_tokens"].is_u64() || u["output_tokens"].is_u64() {
        // The Responses API names them like Anthropic does, but input includes cached tokens.
        // An Anthropic-shaped usage has `cache_read_input_tokens` instead of the details.
        if u.get("cache_read_input_tokens").is_some()
            || u.get("cache_creation_input_tokens").is_some()
        {
            return None;
        }
        return Some(Tokens {
            prompt: count(&u["input_tokens"]),
            completion: count(&u["output_tokens"]),
            cache_read: count(&u["input_tokens_details"]["cached_tokens"]),
            cache_write: 0,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_usage_counts_cached_prompt_tokens() {
        let v = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 64}}});
        assert_eq!(
            usage(&v),
            Some(Tokens {
                prompt: 100,
                completion: 7,
                cache_read: 64,
                cache_write: 0
            })
        );
    }

    #[test]
    fn responses_usage_is_read_from_the_completed_event() {
        let v = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 9,
            "output_tokens": 3, "input_tokens_details": {"cached_tokens": 4}}}});
        assert_eq!(
            usage(&v).map(|t| (t.prompt, t.completion, t.cache_read)),
            Some((9, 3, 4))
        );
    }

    #[test]
    fn errors_have_the_openai_shape() {
        let v = error_body(ErrorKind::NoUsableKey, "m");
        assert_eq!(v["error"]["code"], "no_usable_key");
        assert_eq!(v["error"]["type"], "service_unavailable");
        assert!(v["error"].get("param").is_some());
        assert!(quota_exhausted(
            429,
            r#"{"error":{"code":"insufficient_quota"}}"#
        ));
        assert!(!quota_exhausted(
            429,
            r#"{"error":{"code":"rate_limit_exceeded"}}"#
        ));
    }
}
