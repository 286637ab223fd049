//! Session affinity: requests of one session go to the key that served it before, so the
//! provider's prompt cache (which is per key or per account) keeps hitting. The binding lives in
//! the coordination store and is read and moved inside the same acquire call, so every replica
//! agrees and the attempt still costs one round trip.
use axum::http::{HeaderMap, HeaderName};
use serde::Deserialize;

use crate::coord::Session;
use crate::snapshot::ServiceRt;

/// A service's affinity settings (present only when `affinity` is `session`).
#[derive(Debug, Clone)]
pub struct Affinity {
    /// The header a client names its session in (default `x-session-id`).
    pub header: HeaderName,
    pub ttl_ms: u64,
}

pub const DEFAULT_HEADER: &str = "x-session-id";

/// The fields of a request body that name a session, in any client format.
#[derive(Deserialize)]
struct SessionFields<'a> {
    /// OpenAI: the key the provider routes prompt caching by.
    #[serde(borrow, default)]
    prompt_cache_key: Option<std::borrow::Cow<'a, str>>,
    /// OpenAI: the end user.
    #[serde(borrow, default)]
    user: Option<std::borrow::Cow<'a, str>>,
    /// Anthropic: `metadata.user_id`.
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<std::borrow::Cow<'a, str>>,
}

/// The request's session, when the service binds sessions and the request names one: the
/// header first, then `prompt_cache_key`, `user` and `metadata.user_id` in the body.
pub fn session(svc: &ServiceRt, headers: &HeaderMap, body: Option<&[u8]>) -> Option<Session> {
    let aff = svc.affinity.as_ref()?;
    let from_header = headers
        .get(&aff.header)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let key = match from_header {
        Some(h) => h.to_string(),
        None => {
            let f: SessionFields = serde_json::from_slice(body?).ok()?;
            let key = f
                .prompt_cache_key
                .or(f.user)
                .or(f.metadata.and_then(|m| m.user_id))?;
            if key.is_empty() {
                return None;
            }
            key.into_owned()
        }
    };
    Some(Session::new(svc.id, &key, aff.ttl_ms))
}
