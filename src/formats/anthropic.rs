//! Anthropic Messages wire format: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/models`.
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Endpoint, count};
use crate::events::Tokens;
use crate::proxy::error::ErrorKind;

pub const DEFAULT_AUTH: (&str, &str) = ("x-api-key", "{key}");
/// Sent upstream when the client did not say which API version it speaks.
pub const DEFAULT_VERSION: &str = "2023-06-01";

pub fn recognise(path: &str) -> Option<Endpoint> {
    let p = path.strip_prefix("v1/").unwrap_or(path);
    Some(match p {
        "messages" => Endpoint::Messages,
        "messages/count_tokens" => Endpoint::CountTokens,
        _ => return None,
    })
}

/// Anthropic's `error.type` for a gateway error.
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadAccessKey => "authentication_error",
        ErrorKind::SlugNotAllowed => "permission_error",
        ErrorKind::UnknownSlug => "not_found_error",
        ErrorKind::BodyTooLarge => "request_too_large",
        ErrorKind::BadRequest | ErrorKind::ClientTimeout => "invalid_request_error",
        ErrorKind::RateLimited | ErrorKind::UpstreamRateLimited => "rate_limit_error",
        ErrorKind::NoUsableKey => "overloaded_error",
        ErrorKind::UpstreamFailed
        | ErrorKind::UpstreamTimeout
        | ErrorKind::LoopDetected
        | ErrorKind::Internal => "api_error",
    }
}

pub fn error_body(kind: ErrorKind, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(kind), "message": message}})
}

pub fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    Bytes::from(format!("event: error\ndata: {v}\n\n"))
}

/// Anthropic answers a prepaid account without credit with a 400 that names the balance.
pub fn quota_exhausted(_status: u16, body: &str) -> bool {
    body.contains("credit balance is too low")
}

/// `usage` of a message (also inside `message_start`). `input_tokens` excludes cache reads and
/// writes here, while keygate's `prompt` includes them, as OpenAI's does.
pub fn usage(v: &Value) -> Option<Tokens> {
    let u = [&v["usage"], &v["message"]["usage"]]
        .into_iter()
        .find(|u| u.is_object())?;
    if !(u["input_tokens"].is_u64() || u["output_tokens"].is_u64()) {
        return None;
    }
    let (read, write) = (
        count(&u["cache_read_input_tokens"]),
        count(&u["cache_creation_input_tokens"]),
    );
    let input = count(&u["input_tokens"]);
    Some(Tokens {
        // A delta that only reports output leaves the prompt to `message_start`.
        prompt: if input + read + write == 0 {
            0
        } else {
            input + read + write
        },
        completion: count(&u["output_tokens"]),
        cache_read: read,
        cache_write: write,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_adds_cache_tokens_to_the_prompt() {
        let v = json!({"type": "message_start", "message": {"usage": {"input_tokens": 10,
            "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 50, "output_tokens": 1}}});
        assert_eq!(
            usage(&v),
            Some(Tokens {
                prompt: 1060,
                completion: 1,
                cache_read: 1000,
                cache_write: 50
            })
        );
    }

    #[test]
    fn errors_have_the_anthropic_shape() {
        let v = error_body(ErrorKind::BadAccessKey, "m");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let ev = stream_error_event("broke");
        assert!(ev.starts_with(b"event: error\ndata: "));
    }
}
