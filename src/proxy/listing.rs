//! `GET /v1/models` on any slug: the models a client may call there. A keyed slug lists its
//! upstream's models that pass its allow-list, plus its plain aliases; a router lists the union of
//! its targets' lists, kept to the models some route takes, with its own rules on top. Upstream
//! lists are cached per service for a minute (and dropped with any config change), and the
//! answer is written in the client's format.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::Response;
use parking_lot::Mutex;

use super::body::ReqBody;
use super::error::{ErrorKind, ProxyError};
use super::failover::{self, Outcome};
use super::finish::Finish;
use super::ingress::Admitted;
use super::{headers, translate};
use crate::domain::Kind;
use crate::formats::{Endpoint, Format};
use crate::snapshot::ServiceRt;
use crate::state::AppState;

const FRESH_FOR: Duration = Duration::from_secs(60);

/// Upstream model lists by service id, with the snapshot version they were read under.
#[derive(Default)]
pub struct Catalog(Mutex<HashMap<i64, (Instant, u64, Arc<Vec<String>>)>>);

impl Catalog {
    fn get(&self, svc: i64, version: u64) -> Option<Arc<Vec<String>>> {
        let m = self.0.lock();
        let (at, v, ids) = m.get(&svc)?;
        (*v == version && at.elapsed() < FRESH_FOR).then(|| ids.clone())
    }

    fn put(&self, svc: i64, version: u64, ids: Arc<Vec<String>>) {
        let mut m = self.0.lock();
        m.retain(|_, (at, v, _)| *v == version && at.elapsed() < FRESH_FOR);
        m.insert(svc, (Instant::now(), version, ids));
    }
}

/// True for a request to list models (not to retrieve one).
pub fn is_list(adm: &Admitted, method: &Method, path: &str) -> bool {
    adm.endpoint == Endpoint::Models && method == Method::GET && path.ends_with("models")
}

pub async fn answer(
    state: &AppState,
    mut fin: Finish,
    adm: Admitted,
    client_headers: &HeaderMap,
) -> Response {
    let router = adm.svc.kind == Kind::Router;
    let sources: Vec<Arc<ServiceRt>> = if router {
        let snap = state.snapshot.load();
        adm.svc
            .routes
            .all_targets()
            .into_iter()
            .filter_map(|t| snap.services.get(t).cloned())
            .filter(|s| s.enabled && !matches!(s.kind, Kind::Router | Kind::Rest))
            .collect()
    } else {
        vec![adm.svc.clone()]
    };
    let mut ids: Vec<String> = Vec::new();
    let mut failure = None;
    for svc in &sources {
        match upstream_ids(state, &mut fin, svc, client_headers).await {
            Ok(list) => ids.extend(svc.models.list(&list)),
            Err(e) => failure = Some(e),
        }
    }
    fin.svc = Some(adm.svc.clone());
    if ids.is_empty()
        && let Some(e) = failure
    {
        // Nothing to list and a source failed: say why rather than answer an empty list.
        return fin.fail(e);
    }
    if router {
        ids.retain(|id| adm.svc.routes.targets(Some(id)).is_some());
        ids = adm.svc.models.list(&ids);
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    let body = fin.client_fmt.encode_models(&ids);
    fin.status = 200;
    fin.head_sent();
    fin.end(true, None);
    let mut out = Response::new(axum::body::Body::from(body));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

/// The model ids a service's upstream lists, from the cache or asked with one of its keys.
async fn upstream_ids(
    state: &AppState,
    fin: &mut Finish,
    svc: &Arc<ServiceRt>,
    client_headers: &HeaderMap,
) -> Result<Arc<Vec<String>>, ProxyError> {
    let version = state.snapshot.load().version;
    if let Some(ids) = state.catalog.get(svc.id, version) {
        return Ok(ids);
    }
    let upstream = Format::of_kind(svc.kind);
    // One page as large as each API allows, rather than following cursors.
    let query = match upstream {
        Format::Anthropic => "?limit=1000",
        Format::Gemini => "?pageSize=1000",
        _ => "",
    };
    let mut adm = Admitted {
        svc: svc.clone(),
        endpoint: Endpoint::Models,
        url: format!("{}/models{query}", svc.base_url),
        session: None,
    };
    fin.svc = Some(svc.clone());
    fin.upstream_fmt = upstream;
    // The same egress as traffic: Azure's api-version, the service's extra headers.
    super::azure::route(fin, &mut adm, None)?;
    let base = headers::with_service(
        translate::upstream_headers(
            &headers::upstream(client_headers, &state.hop_id, false),
            fin.client_fmt,
            upstream,
        ),
        &svc.upstream_headers,
    );
    let mut body = ReqBody::Buffered(bytes::Bytes::new());
    let ran = failover::run(state, fin, &adm, &Method::GET, &base, &mut body).await;
    match ran.outcome {
        Outcome::Answer { resp, .. } => {
            let (status, _, text) = translate::read_answer(resp, svc.request_timeout).await;
            fin.release_answered();
            if !status.is_success() {
                return Err(ProxyError::new(
                    ErrorKind::UpstreamFailed,
                    fin.client_fmt,
                    format!(
                        "the model list of '{}' answered {}",
                        svc.slug,
                        status.as_u16()
                    ),
                ));
            }
            let ids = Arc::new(upstream.decode_models(&text));
            state.catalog.put(svc.id, version, ids.clone());
            Ok(ids)
        }
        Outcome::Error(e) => Err(e),
    }
}
