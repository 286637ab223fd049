//! Header policy: what is forwarded upstream and back, the loop-detection hop marker, and the
//! `x-ratelimit-*` / `Retry-After` headers.
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use super::auth;
use crate::coord::{ClientLimits, Remaining};

/// Carries the hop ids of the keygate deployments a request went through. A request that arrives
/// with this deployment's id is a loop (a service pointing back at keygate) and gets 508.
pub const HOP: HeaderName = HeaderName::from_static("x-keygate-hop");

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

/// True when the request already went through the deployment whose hop id is `ours`.
pub fn is_loop(incoming: &HeaderMap, ours: &HeaderValue) -> bool {
    let ours = ours.as_bytes();
    incoming.get_all(HOP).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|id| id.trim_ascii() == ours)
    })
}

/// The headers sent upstream: the client's, less hop-by-hop headers, its credentials and
/// `Accept-Encoding` (answers arrive uncompressed so usage can be read from them), plus this
/// deployment's hop id. `Content-Length` is kept only for a body sent as it was declared.
pub fn upstream(incoming: &HeaderMap, hop_id: &HeaderValue, keep_length: bool) -> HeaderMap {
    let listed = connection_listed(incoming);
    let mut out = HeaderMap::with_capacity(incoming.len() + 2);
    for (name, value) in incoming {
        if is_hop_by_hop(name, &listed)
            || auth::CREDENTIAL_HEADERS.contains(&name.as_str())
            || name == header::ACCEPT_ENCODING
            || name == HOP
            || (!keep_length && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    // Earlier hops are kept so a loop through several deployments is caught too.
    let mut hops = incoming
        .get_all(HOP)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if let Ok(ours) = hop_id.to_str() {
        if !hops.is_empty() {
            hops.push(',');
        }
        hops.push_str(ours);
    }
    if let Ok(v) = HeaderValue::from_str(&hops) {
        out.insert(HOP, v);
    }
    out
}

/// Headers a service may not add upstream: the connection's (hop-by-hop, `host`), the body's
/// (keygate sets or strips them per call: a wrong length or encoding breaks the request, and
/// answers must arrive uncompressed to be metered) and keygate's own loop marker. The service's
/// auth header is refused too (`service_headers`): the key is keygate's to set.
const NOT_ADDABLE: [&str; 5] = [
    "content-length",
    "content-type",
    "content-encoding",
    "accept-encoding",
    "x-keygate-hop",
];

/// A header name an operator configures (`auth_header`, `affinity_header`, the names of
/// `upstream_headers`). The HTTP token grammar admits punctuation such as `'`, `*` or `|` that no
/// API's header uses, so a paste like `admin'--` would be taken and the key sent under a junk
/// name: letters, digits, `-` and `_` only. Never a header of the connection (hop-by-hop,
/// `proxy-*`, `host`) or `content-length`, which keygate and the HTTP client own.
pub fn configurable_name(raw: &str) -> Result<HeaderName, String> {
    if raw.is_empty()
        || !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{raw:?} is not a header name (letters, digits, - and _ only)"
        ));
    }
    let n = HeaderName::try_from(raw).map_err(|_| format!("{raw:?} is not a header name"))?;
    if HOP_BY_HOP.contains(&n.as_str())
        || n.as_str().starts_with("proxy-")
        || n == header::CONTENT_LENGTH
    {
        return Err(format!(
            "'{n}' belongs to the connection (hop-by-hop, host or content-length), not to a service"
        ));
    }
    Ok(n)
}

/// The auth header's name: a `configurable_name` that keygate does not set itself.
pub fn auth_header_name(raw: &str) -> Result<HeaderName, String> {
    let n = configurable_name(raw)?;
    if NOT_ADDABLE.contains(&n.as_str()) {
        return Err(format!(
            "'{n}' is set by keygate per call; it cannot carry the key"
        ));
    }
    Ok(n)
}

/// A service's extra upstream headers (`{"name": "value"}`) as a header map, or what is wrong
/// with the first bad one. The message names the header, never its value (it may be a token).
pub fn service_headers<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    auth_header: &str,
) -> Result<HeaderMap, String> {
    let mut out = HeaderMap::new();
    for (name, value) in pairs {
        let n = configurable_name(name.trim())?;
        if NOT_ADDABLE.contains(&n.as_str()) {
            return Err(format!(
                "'{n}' is set by keygate or the connection, not by a service"
            ));
        }
        if n.as_str().eq_ignore_ascii_case(auth_header.trim()) {
            return Err(format!(
                "'{n}' is this service's auth header: it carries the upstream key"
            ));
        }
        let mut v = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of '{n}' is not a valid header value"))?;
        v.set_sensitive(true);
        out.insert(n, v);
    }
    Ok(out)
}

/// The service's headers on top of the client's: the operator's value wins over a client's
/// header of the same name. The auth header is set after this, per attempt.
pub fn with_service(mut h: HeaderMap, service: &HeaderMap) -> HeaderMap {
    for (name, value) in service {
        h.insert(name.clone(), value.clone());
    }
    h
}

/// The headers of an upstream answer that go back to the client.
pub fn downstream(upstream: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if !is_hop_by_hop(name, &listed) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The longest cooldown an upstream's Retry-After can impose on a key (one day).
const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// Retry-After in ms (seconds or an HTTP date), clamped to a day; 0 or garbage = no hint, so the
/// key's own backoff applies instead.
pub fn retry_after_ms(h: &HeaderMap) -> Option<u64> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let ms = if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs <= 0.0 {
            return None;
        }
        (secs * 1000.0).min(MAX_RETRY_AFTER_MS as f64) as u64
    } else {
        let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        let ms = (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
        u64::try_from(ms).ok()?
    };
    (ms > 0).then_some(ms.min(MAX_RETRY_AFTER_MS))
}

/// `x-ratelimit-*` headers for the client's own limits.
pub fn limits(h: &mut HeaderMap, limits: &ClientLimits, rem: &Remaining) {
    let mut put = |name: &'static str, v: Option<u64>| {
        if let Some(v) = v {
            h.insert(HeaderName::from_static(name), HeaderValue::from(v));
        }
    };
    put("x-ratelimit-limit-requests", limits.rpm.map(u64::from));
    put("x-ratelimit-remaining-requests", rem.rpm);
    put("x-ratelimit-limit-requests-day", limits.rpd.map(u64::from));
    put("x-ratelimit-remaining-requests-day", rem.rpd);
    put("x-ratelimit-limit-tokens", limits.tpm.map(u64::from));
    put("x-ratelimit-remaining-tokens", rem.tpm);
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let out = upstream(&h, &HeaderValue::from_static("abc"), false);
        assert_eq!(out.len(), 2);
        assert!(out.contains_key("content-type"));
        assert_eq!(out.get(HOP).unwrap(), "abc");
    }

    #[test]
    fn service_headers_refuse_the_auth_header_and_connection_headers() {
        let ok = service_headers(
            [("X-Org", "acme"), ("anthropic-beta", "b")],
            "authorization",
        )
        .unwrap();
        assert_eq!(ok.get("x-org").unwrap(), "acme");
        for bad in [
            "authorization",
            "Host",
            "content-length",
            "connection",
            "x-keygate-hop",
            "a b",
        ] {
            let e = service_headers([(bad, "secret-value")], "Authorization").unwrap_err();
            assert!(!e.contains("secret-value"), "{e}");
        }
        assert!(service_headers([("x-ok", "line\nbreak")], "authorization").is_err());
        let mut client = HeaderMap::new();
        client.insert("x-org", HeaderValue::from_static("client"));
        let merged = with_service(client, &ok);
        assert_eq!(merged.get("x-org").unwrap(), "acme");
    }

    #[test]
    fn configured_header_names_are_plain_tokens_outside_the_connections_own() {
        for ok in ["Authorization", "x-api-key", "api_key", "X-Session-Id"] {
            assert!(configurable_name(ok).is_ok(), "{ok}");
            assert!(auth_header_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "admin'--",
            "",
            "a b",
            "x:y",
            "connection",
            "Keep-Alive",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "host",
            "content-length",
        ] {
            assert!(configurable_name(bad).is_err(), "{bad}");
        }
        assert!(configurable_name("content-type").is_ok());
        assert!(auth_header_name("content-type").is_err());
        assert!(auth_header_name("x-keygate-hop").is_err());
    }

    #[test]
    fn our_own_hop_id_is_a_loop_and_another_deployments_is_not() {
        let ours = HeaderValue::from_static("aaaa");
        let mut h = HeaderMap::new();
        h.insert(HOP, HeaderValue::from_static("bbbb"));
        assert!(!is_loop(&h, &ours));
        let out = upstream(&h, &ours, false);
        assert_eq!(out.get(HOP).unwrap(), "bbbb,aaaa");
        assert!(is_loop(&out, &ours));
    }
}
