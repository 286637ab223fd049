//! The path stage: which slug and service, which client format and endpoint, the upstream URL,
//! and whether the client may call it (credential, slug, loop marker). Nothing here awaits.
use std::sync::Arc;

use axum::http::{HeaderMap, Uri};

use super::error::{ErrorKind, ProxyError};
use super::finish::Finish;
use super::{auth, headers};
use crate::formats::{Endpoint, Format};
use crate::snapshot::{Kind, ServiceRt};
use crate::state::AppState;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// LLM kinds: a leading version segment (`v1/`, `v1beta/`) is dropped, as base_url has it.
    Llm,
    /// REST kind: the path is passed verbatim.
    Rest,
}

/// What the path stage established about an admitted request.
pub struct Admitted {
    pub svc: Arc<ServiceRt>,
    pub endpoint: Endpoint,
    pub url: String,
    /// The session the request belongs to, when the service binds sessions to keys.
    pub session: Option<crate::coord::Session>,
}

/// The request path after its first `skip` segments, still percent-encoded as the client sent
/// it: the router's decoded copy would turn `%2F` into `/` and `%3F` into `?` upstream.
pub fn raw_rest(path: &str, skip: usize) -> String {
    path.trim_start_matches('/')
        .splitn(skip + 1, '/')
        .nth(skip)
        .unwrap_or("")
        .to_string()
}

/// The client's format before the service is known, from the path, then from headers.
pub fn client_format(headers: &HeaderMap, path: &str, mode: Mode) -> (Format, Endpoint) {
    if mode == Mode::Rest {
        return (Format::Rest, Endpoint::Other);
    }
    if let Some(found) = Format::recognise(path) {
        // `/v1/models` is both OpenAI's and Anthropic's list; Anthropic's SDK always says
        // which API version it speaks.
        if found.1 == Endpoint::Models
            && found.0 == Format::OpenAi
            && headers.contains_key("anthropic-version")
        {
            return (Format::Anthropic, Endpoint::Models);
        }
        return found;
    }
    let f = if headers.contains_key("anthropic-version") {
        Format::Anthropic
    } else if headers.contains_key("x-goog-api-key") {
        Format::Gemini
    } else {
        Format::OpenAi
    };
    (f, Endpoint::Other)
}

/// Checks the request against the snapshot and fills what the finaliser logs.
pub fn admit(
    state: &AppState,
    fin: &mut Finish,
    endpoint: Endpoint,
    mode: Mode,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Admitted, ProxyError> {
    let fmt = fin.client_fmt;
    let err = |kind, msg: String| ProxyError::new(kind, fmt, msg);
    if headers::is_loop(headers, &state.hop_id) {
        return Err(err(
            ErrorKind::LoopDetected,
            "this request already passed through this keygate: a service's base_url points back at keygate".into(),
        ));
    }
    let snap = state.snapshot.load();
    let Some(svc) = snap.services.get(&fin.slug).cloned() else {
        fin.unknown_slug();
        return Err(err(
            ErrorKind::UnknownSlug,
            format!("unknown slug '{}'", fin.slug),
        ));
    };
    fin.svc = Some(svc.clone());
    fin.upstream_fmt = Format::of_kind(svc.kind);
    if mode == Mode::Rest || fin.client_fmt == Format::Rest {
        // A REST slug speaks whatever its upstream speaks; so do its errors' clients.
        if svc.kind != Kind::Rest {
            fin.client_fmt = Format::of_kind(svc.kind);
        }
    } else if endpoint == Endpoint::Other && svc.kind != Kind::Rest {
        // An endpoint no format claims: the upstream's own format is the best guess.
        fin.client_fmt = Format::of_kind(svc.kind);
    }
    let fmt = fin.client_fmt;
    let err = |kind, msg: String| ProxyError::new(kind, fmt, msg);
    if (mode == Mode::Rest) != (svc.kind == Kind::Rest) {
        let hint = if svc.kind == Kind::Rest {
            "/proxy"
        } else {
            "/llm"
        };
        return Err(err(
            ErrorKind::UnknownSlug,
            format!("slug '{}' is served under {hint}/{}/", svc.slug, svc.slug),
        ));
    }
    if has_dot_segment(&fin.path) {
        return Err(err(
            ErrorKind::BadRequest,
            "the path must not contain . or .. segments".into(),
        ));
    }
    let cred = auth::credential(headers, uri.query());
    match auth::check(state, &snap, &svc, cred) {
        Ok(ak) => {
            fin.access_key_id = ak.as_ref().map(|a| a.id);
            fin.client = ak.map(|a| a.limits).filter(|l| l.is_limited());
        }
        Err((kind, msg)) => return Err(err(kind, msg.into())),
    }
    if !svc.enabled {
        return Err(err(
            ErrorKind::NoUsableKey,
            format!("slug '{}' is disabled", svc.slug),
        ));
    }
    if let Endpoint::Gemini { model, .. } = &endpoint {
        fin.model = Some(model.clone());
    }
    let url = upstream_url(&svc, &fin.path, mode, uri.query());
    Ok(Admitted {
        svc,
        endpoint,
        url,
        session: None,
    })
}

/// Points a request admitted on a router at one of its targets: the target's service, format
/// and URL (with the model the router resolved, for a Gemini path). None when the target is
/// gone, disabled or not a keyed LLM service (the admin API refuses such routes; a target
/// deleted since is skipped).
pub fn retarget(
    state: &AppState,
    fin: &mut Finish,
    router: &Admitted,
    target: &str,
    uri: &Uri,
) -> Option<Admitted> {
    let svc = state.snapshot.load().services.get(target).cloned()?;
    if !svc.enabled || matches!(svc.kind, Kind::Router | Kind::Rest) {
        return None;
    }
    let mut url = upstream_url(&svc, &fin.path, Mode::Llm, uri.query());
    if let (Endpoint::Gemini { model, .. }, Some(asked)) = (&router.endpoint, &fin.model)
        && model != asked
    {
        url = url.replacen(&format!("models/{asked}:"), &format!("models/{model}:"), 1);
    }
    fin.svc = Some(svc.clone());
    fin.upstream_fmt = Format::of_kind(svc.kind);
    fin.target = Some(svc.slug.clone());
    Some(Admitted {
        svc,
        endpoint: router.endpoint.clone(),
        url,
        session: None,
    })
}

/// True when the path, once decoded, has a `.` or `..` segment (`%2F` counts as a slash): such a
/// path could climb out of the service's base URL on an upstream that normalises it.
fn has_dot_segment(path: &str) -> bool {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .split(['/', '\\'])
        .any(|seg| seg == "." || seg == "..")
}

/// Drops a leading API version segment (`v1`, `v1beta`, `v2alpha1`): base_url carries it.
fn strip_version(path: &str) -> &str {
    let (first, rest) = path.split_once('/').unwrap_or((path, ""));
    let is_version = first.len() >= 2
        && first.starts_with('v')
        && first[1..].starts_with(|c: char| c.is_ascii_digit())
        && first[1..].chars().all(|c| c.is_ascii_alphanumeric());
    if is_version { rest } else { path }
}

fn upstream_url(svc: &ServiceRt, path: &str, mode: Mode, query: Option<&str>) -> String {
    let p = match mode {
        Mode::Llm => strip_version(path),
        Mode::Rest => path,
    };
    let mut url = format!("{}/{}", svc.base_url, p.trim_start_matches('/'));
    if let Some(q) = query {
        // The client's `?key=` credential is never forwarded; the rest is re-encoded as sent.
        let kept: Vec<(String, String)> = auth::url_pairs(q).filter(|(k, _)| k != "key").collect();
        if !kept.is_empty() {
            url.push('?');
            url.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(kept)
                    .finish(),
            );
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_segment_is_dropped_once() {
        assert_eq!(strip_version("v1/chat/completions"), "chat/completions");
        assert_eq!(strip_version("chat/completions"), "chat/completions");
        assert_eq!(
            strip_version("v1beta/models/x:generateContent"),
            "models/x:generateContent"
        );
        assert_eq!(strip_version("videos/v1"), "videos/v1");
        assert_eq!(strip_version("v1"), "");
    }

    #[test]
    fn dot_segments_are_found_even_when_encoded() {
        assert!(has_dot_segment("v1/../admin"));
        assert!(has_dot_segment("v1/%2e%2e/admin"));
        assert!(has_dot_segment("a%2F..%2Fb"));
        assert!(!has_dot_segment("v1/chat/completions"));
    }
}
