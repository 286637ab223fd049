//! Client credentials on the data plane: accepted from `Authorization: Bearer`, `x-api-key`,
//! `x-goog-api-key`, `X-Proxy-Key` or `?key=`, checked against the snapshot, never forwarded.
use axum::http::HeaderMap;
use chrono::Utc;

use crate::crypto::sha256_hex;
use std::sync::Arc;

use crate::snapshot::{AccessKeyRt, ServiceRt, Snapshot};
use crate::state::AppState;

use super::error::ErrorKind;

/// Headers that may carry the client's credential; all are stripped before forwarding.
pub const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "x-proxy-key",
];

pub fn credential<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
    for name in [
        "x-proxy-key",
        "authorization",
        "x-api-key",
        "x-goog-api-key",
    ] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            let v = if name == "authorization" {
                match v.split_once(' ') {
                    Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                    _ => continue,
                }
            } else {
                v
            };
            if !v.is_empty() {
                return Some(v.to_string());
            }
        }
    }
    query.and_then(|q| {
        url_pairs(q)
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    })
}

/// Query pairs, percent-decoded.
pub fn url_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// The access key that was used (None for a global proxy key), or why it was refused.
pub fn check(
    state: &AppState,
    snap: &Snapshot,
    svc: &ServiceRt,
    cred: Option<String>,
) -> Result<Option<Arc<AccessKeyRt>>, (ErrorKind, &'static str)> {
    let Some(cred) = cred else {
        return Err((ErrorKind::BadAccessKey, "missing access key"));
    };
    let h = sha256_hex(&cred);
    if state.global_keys.contains(&h) {
        return Ok(None);
    }
    let Some(ak) = snap.access_keys.get(&h) else {
        return Err((ErrorKind::BadAccessKey, "invalid access key"));
    };
    if ak.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err((ErrorKind::BadAccessKey, "access key expired"));
    }
    // An access key only ever reaches its own tenant's services; `slugs` narrows that further.
    let allowed = ak.tenant_id == svc.tenant_id
        && (ak.slugs.is_empty() || ak.slugs.iter().any(|s| s == &svc.slug));
    if !allowed {
        return Err((
            ErrorKind::SlugNotAllowed,
            "access key is not allowed on this slug",
        ));
    }
    Ok(Some(ak.clone()))
}
