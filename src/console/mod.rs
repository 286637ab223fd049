//! The web console: a buildless single-page app (plain ES modules in `assets/`, type-checked by
//! `tsc --checkJs` in `scripts/e2e.sh`) embedded in the binary and served at `/`, beside the admin
//! API it calls. Only two kinds of path are added: `/` (the page; screens are hash routes such as
//! `/#/services`) and `/console/{version}/{file}` (its assets), so nothing under `/llm`, `/proxy`,
//! `/v1`, `/admin`, `/docs` or the probes is shadowed.
//!
//! Assets carry the hash of the whole set in their path: they are cached for a year, and a new
//! build changes every path at once. The page itself is revalidated by ETag on every load.
use std::io::Write;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// No inline script or style, nothing from another origin: the app talks to its own API only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

macro_rules! assets {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("assets/", $name)) as &[u8])),*]
    };
}

/// Every file of `assets/` except the page (a unit test checks the list is complete).
const ASSETS: &[(&str, &[u8])] = assets![
    "app.css",
    "icon.svg",
    "main.js",
    "api.js",
    "dom.js",
    "i18n.js",
    "charts.js",
    "ui.js",
    "view-login.js",
    "view-dashboard.js",
    "view-services.js",
    "view-keys.js",
    "view-access-keys.js",
    "view-pricing.js",
    "view-logs.js",
    "view-users.js",
    "view-connect.js",
];

const INDEX: &str = include_str!("assets/index.html");

struct Asset {
    body: Vec<u8>,
    gzip: Vec<u8>,
    content_type: &'static str,
}

struct Bundle {
    version: String,
    index: Asset,
    index_etag: String,
    files: Vec<(&'static str, Asset)>,
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

fn asset(name: &str, body: Vec<u8>) -> Asset {
    Asset {
        gzip: gzip(&body),
        content_type: content_type(name),
        body,
    }
}

/// Built once, on the first request: hashing and compressing ~100 KB takes a few milliseconds.
static BUNDLE: LazyLock<Bundle> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for (name, body) in ASSETS {
        h.update(name.as_bytes());
        h.update(body);
    }
    h.update(INDEX.as_bytes());
    let version = hex::encode(h.finalize())[..12].to_string();
    let html = INDEX.replace("{{v}}", &version);
    Bundle {
        index_etag: format!("\"{version}\""),
        index: asset("index.html", html.into_bytes()),
        files: ASSETS
            .iter()
            .map(|(n, b)| (*n, asset(n, b.to_vec())))
            .collect(),
        version,
    }
});

/// The asset set's version (the path segment after `/console/`).
pub fn version() -> &'static str {
    &BUNDLE.version
}

/// Bytes of the page and its assets, as stored and gzipped: `(raw, gzip)`.
pub fn size() -> (usize, usize) {
    let b = &*BUNDLE;
    b.files
        .iter()
        .map(|(_, a)| a)
        .chain(std::iter::once(&b.index))
        .fold((0, 0), |(r, g), a| (r + a.body.len(), g + a.gzip.len()))
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/console/{version}/{file}", get(file))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            parts.next().map(str::trim) == Some("gzip")
                && !parts.any(|p| p.trim().replace(' ', "") == "q=0")
        })
}

fn respond(a: &Asset, headers: &HeaderMap, cache: &'static str) -> Response {
    let gz = accepts_gzip(headers);
    let mut resp = if gz { a.gzip.clone() } else { a.body.clone() }.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gz {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    secure(h);
    resp
}

fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

async fn index(headers: HeaderMap) -> Response {
    let b = &*BUNDLE;
    let etag = HeaderValue::from_str(&b.index_etag).expect("hex etag");
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag);
        return resp;
    }
    let mut resp = respond(&b.index, &headers, "no-cache");
    resp.headers_mut().insert(header::ETAG, etag);
    resp
}

async fn file(Path((version, name)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let b = &*BUNDLE;
    let Some((_, a)) = b.files.iter().find(|(n, _)| *n == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A page from an older build (a replica not yet upgraded) still gets a file, just not one
    // that could be cached under the wrong version.
    let cache = if version == b.version {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    respond(a, &headers, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_in_assets_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/console/assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "index.html")
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = ASSETS.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn the_page_links_its_assets_under_the_version() {
        let b = &*BUNDLE;
        let html = String::from_utf8(b.index.body.clone()).unwrap();
        assert!(html.contains(&format!("/console/{}/main.js", b.version)));
        assert!(!html.contains("{{v}}"));
        assert!(!html.contains("<script>"), "no inline script under the CSP");
    }

    #[test]
    fn gzip_is_chosen_only_when_accepted() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, "br, gzip;q=0.8".parse().unwrap());
        assert!(accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, "gzip;q=0, br".parse().unwrap());
        assert!(!accepts_gzip(&h));
    }
}
