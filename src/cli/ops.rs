//! One admin operation, run two ways: in process against the configured database through the
//! control layer (the same functions the HTTP handlers call), or over HTTP against a running
//! keygate (`--url`). Both produce the JSON the admin API answers with, so what is printed does
//! not depend on the mode.
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::control::{self, Actor, Page};
use crate::state::AppState;

/// What a command asks for. Bodies are the admin API's JSON bodies; in process they are read
/// into the control layer's request types, so a bad field is refused the same way.
#[derive(Debug, Clone)]
pub enum Op {
    ListServices,
    GetService(String),
    CreateService(Value),
    UpdateService(String, Value),
    DeleteService(String),
    ListKeys(String),
    AddKeys(String, Value),
    ImportKeys {
        slug: String,
        format: control::import::Format,
        bytes: Vec<u8>,
        dry_run: bool,
    },
    BatchKeys(String, Value),
    DeleteKey(String, i64),
    TestKeys(String, Option<i64>),
    SyncKeys(String, Option<i64>),
    ListAccessKeys,
    GetAccessKey(i64),
    CreateAccessKey(Value),
    UpdateAccessKey(i64, Value),
    DeleteAccessKey(i64),
    ListUsers,
    CreateUser(Value),
    UpdateUser(i64, Value),
    DeleteUser(i64),
    ListPricing,
    CreatePricing(Value),
    ReplacePricing(i64, Value),
    DeletePricing(i64),
    CheckPrice {
        model: String,
        slug: Option<String>,
    },
    Stats(Vec<(String, String)>),
    ListTenants,
    CreateTenant(Value),
    UpdateTenant(i64, Value),
    DeleteTenant(i64),
    /// One page of the audit log (its filters and `limit`), newest first.
    Audit(Vec<(String, String)>),
}

/// A failed operation, classified the same way in both modes (see `cli::exit_code`).
#[derive(Debug)]
pub struct Failure {
    /// The HTTP status the admin API answers (or would answer) with; 0 when none came.
    pub status: u16,
    pub detail: String,
}

impl From<control::Error> for Failure {
    fn from(e: control::Error) -> Self {
        use control::Error as E;
        let status = match &e {
            E::BadRequest(_) => 400,
            E::Unauthorized(_) => 401,
            E::Forbidden(_) => 403,
            E::NotFound(_) => 404,
            E::Conflict(_) => 409,
            E::TooLarge(_) => 413,
            E::Unsupported(_) => 415,
            E::Unavailable | E::DatabaseDown => 503,
            E::Internal(_) => 500,
        };
        let detail = match e {
            // The whole cause chain: this is the operator's own terminal, not a client.
            E::Internal(e) => format!("{e:#}"),
            other => other.to_string(),
        };
        Failure { status, detail }
    }
}

fn body<T: DeserializeOwned>(v: &Value) -> Result<T, Failure> {
    serde_json::from_value(v.clone()).map_err(|e| Failure {
        status: 400,
        detail: e.to_string(),
    })
}

fn json(v: impl serde::Serialize) -> Result<Value, Failure> {
    serde_json::to_value(v).map_err(|e| Failure {
        status: 500,
        detail: e.to_string(),
    })
}

/// Every page of a list, following `next_cursor`.
const PAGE: u64 = 1000;

impl Op {
    /// Runs it in process, as `actor`, through the control layer.
    pub async fn local(&self, state: &AppState, actor: &Actor) -> Result<Value, Failure> {
        use control::*;
        Ok(match self {
            Op::ListServices => {
                all_pages(|p| async move {
                    let l = services::list(state, actor, &p).await?;
                    Ok((json(&l.items)?, l.next_cursor))
                })
                .await?
            }
            Op::GetService(slug) => json(services::get(state, actor, slug).await?)?,
            Op::CreateService(b) => json(services::create(state, actor, body(b)?).await?)?,
            Op::UpdateService(slug, b) => {
                json(services::update(state, actor, slug, body(b)?).await?)?
            }
            Op::DeleteService(slug) => {
                services::delete(state, actor, slug).await?;
                Value::Null
            }
            Op::ListKeys(slug) => {
                all_pages(|p| async move {
                    let l = keys::list(state, actor, slug, &p).await?;
                    Ok((json(&l.items)?, l.next_cursor))
                })
                .await?
            }
            Op::AddKeys(slug, b) => json(keys::add(state, actor, slug, body(b)?).await?)?,
            Op::ImportKeys {
                slug,
                format,
                bytes,
                dry_run,
            } => json(keys::import(state, actor, slug, *format, bytes, *dry_run).await?)?,
            Op::BatchKeys(slug, b) => json(keys::batch(state, actor, slug, body(b)?).await?)?,
            Op::DeleteKey(slug, id) => {
                keys::delete(state, actor, slug, *id).await?;
                Value::Null
            }
            Op::TestKeys(slug, id) => {
                let which = match id {
                    Some(id) => keys::Which::One(*id),
                    None => keys::Which::InStatus(&[]),
                };
                json(keys::test(state, actor, slug, which).await?)?
            }
            Op::SyncKeys(slug, id) => {
                let which = match id {
                    Some(id) => keys::Which::One(*id),
                    None => keys::Which::InStatus(&[]),
                };
                json(keys::sync(state, actor, slug, which).await?)?
            }
            Op::ListAccessKeys => {
                all_pages(|p| async move {
                    let l = access_keys::list(state, actor, &p).await?;
                    Ok((json(&l.items)?, l.next_cursor))
                })
                .await?
            }
            Op::GetAccessKey(id) => json(access_keys::get(state, actor, *id).await?)?,
            Op::CreateAccessKey(b) => json(access_keys::create(state, actor, body(b)?).await?)?,
            Op::UpdateAccessKey(id, b) => {
                json(access_keys::update(state, actor, *id, body(b)?).await?)?
            }
            Op::DeleteAccessKey(id) => {
                access_keys::delete(state, actor, *id).await?;
                Value::Null
            }
            Op::ListUsers => {
                all_pages(|p| async move {
                    let l = users::list(state, actor, &p).await?;
                    Ok((json(&l.items)?, l.next_cursor))
                })
                .await?
            }
            Op::CreateUser(b) => json(users::create(state, actor, body(b)?).await?)?,
            Op::UpdateUser(id, b) => json(users::update(state, actor, *id, body(b)?).await?)?,
            Op::DeleteUser(id) => {
                users::delete(state, actor, *id).await?;
                Value::Null
            }
            Op::ListPricing => {
                all_pages(|p| async move {
                    let l = pricing::list(state, actor, &p).await?;
                    Ok((json(&l.items)?, l.next_cursor))
                })
                .await?
            }
            Op::CreatePricing(b) => json(pricing::create(state, actor, body(b)?).await?)?,
            Op::ReplacePricing(id, b) => {
                json(pricing::replace(state, actor, *id, body(b)?).await?)?
            }
            Op::DeletePricing(id) => {
                pricing::delete(state, actor, *id).await?;
                Value::Null
            }
            Op::CheckPrice { model, slug } => json(
                pricing::check(
                    state,
                    actor,
                    pricing::CheckQuery {
                        model: Some(model.clone()),
                        slug: slug.clone(),
                    },
                )
                .await?,
            )?,
            Op::Stats(q) => {
                let q: stats::StatsQuery = body(&Value::Object(
                    q.iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ))?;
                json(stats::get(state, actor, &q).await?)?
            }
            Op::ListTenants => {
                all_pages(|p| async move {
                    let l = tenants::list(state, actor, &p).await?;
                    Ok((json(&l.items)?, l.next_cursor))
                })
                .await?
            }
            Op::CreateTenant(b) => json(tenants::create(state, actor, body(b)?).await?)?,
            Op::UpdateTenant(id, b) => json(tenants::update(state, actor, *id, body(b)?).await?)?,
            Op::DeleteTenant(id) => {
                tenants::delete(state, actor, *id).await?;
                Value::Null
            }
            Op::Audit(q) => {
                let q: audit::AuditQuery = body(&query_object(q))?;
                json(audit::list(state, actor, &q).await?.items)?
            }
        })
    }

    /// The admin API request for it: method, path (slugs and ids escaped), query and body.
    fn http(&self) -> (Method, String, Vec<(String, String)>, Option<Body>) {
        let s = |slug: &str| urlencoding(slug);
        let j = |v: &Value| Some(Body::Json(v.clone()));
        match self {
            Op::ListServices => (Method::GET, "/admin/services".into(), vec![], None),
            Op::GetService(slug) => (
                Method::GET,
                format!("/admin/services/{}", s(slug)),
                vec![],
                None,
            ),
            Op::CreateService(b) => (Method::POST, "/admin/services".into(), vec![], j(b)),
            Op::UpdateService(slug, b) => (
                Method::PATCH,
                format!("/admin/services/{}", s(slug)),
                vec![],
                j(b),
            ),
            Op::DeleteService(slug) => (
                Method::DELETE,
                format!("/admin/services/{}", s(slug)),
                vec![],
                None,
            ),
            Op::ListKeys(slug) => (
                Method::GET,
                format!("/admin/services/{}/keys", s(slug)),
                vec![],
                None,
            ),
            Op::AddKeys(slug, b) => (
                Method::POST,
                format!("/admin/services/{}/keys", s(slug)),
                vec![],
                j(b),
            ),
            Op::ImportKeys {
                slug,
                format,
                bytes,
                dry_run,
            } => (
                Method::POST,
                format!("/admin/services/{}/keys/import", s(slug)),
                vec![("dry_run".into(), dry_run.to_string())],
                Some(Body::Raw(format.content_type(), bytes.clone())),
            ),
            Op::BatchKeys(slug, b) => (
                Method::POST,
                format!("/admin/services/{}/keys/batch", s(slug)),
                vec![],
                j(b),
            ),
            Op::DeleteKey(slug, id) => (
                Method::DELETE,
                format!("/admin/services/{}/keys/{id}", s(slug)),
                vec![],
                None,
            ),
            Op::TestKeys(slug, Some(id)) => (
                Method::POST,
                format!("/admin/services/{}/keys/{id}/test", s(slug)),
                vec![],
                None,
            ),
            Op::TestKeys(slug, None) => (
                Method::POST,
                format!("/admin/services/{}/keys/test", s(slug)),
                vec![],
                None,
            ),
            Op::SyncKeys(slug, Some(id)) => (
                Method::POST,
                format!("/admin/services/{}/keys/{id}/sync", s(slug)),
                vec![],
                None,
            ),
            Op::SyncKeys(slug, None) => (
                Method::POST,
                format!("/admin/services/{}/sync", s(slug)),
                vec![],
                None,
            ),
            Op::ListAccessKeys => (Method::GET, "/admin/access-keys".into(), vec![], None),
            Op::GetAccessKey(id) => (
                Method::GET,
                format!("/admin/access-keys/{id}"),
                vec![],
                None,
            ),
            Op::CreateAccessKey(b) => (Method::POST, "/admin/access-keys".into(), vec![], j(b)),
            Op::UpdateAccessKey(id, b) => (
                Method::PATCH,
                format!("/admin/access-keys/{id}"),
                vec![],
                j(b),
            ),
            Op::DeleteAccessKey(id) => (
                Method::DELETE,
                format!("/admin/access-keys/{id}"),
                vec![],
                None,
            ),
            Op::ListUsers => (Method::GET, "/admin/users".into(), vec![], None),
            Op::CreateUser(b) => (Method::POST, "/admin/users".into(), vec![], j(b)),
            Op::UpdateUser(id, b) => (Method::PATCH, format!("/admin/users/{id}"), vec![], j(b)),
            Op::DeleteUser(id) => (Method::DELETE, format!("/admin/users/{id}"), vec![], None),
            Op::ListPricing => (Method::GET, "/admin/pricing".into(), vec![], None),
            Op::CreatePricing(b) => (Method::POST, "/admin/pricing".into(), vec![], j(b)),
            Op::ReplacePricing(id, b) => {
                (Method::PUT, format!("/admin/pricing/{id}"), vec![], j(b))
            }
            Op::DeletePricing(id) => (Method::DELETE, format!("/admin/pricing/{id}"), vec![], None),
            Op::CheckPrice { model, slug } => {
                let mut q = vec![("model".to_string(), model.clone())];
                if let Some(s) = slug {
                    q.push(("slug".into(), s.clone()));
                }
                (Method::GET, "/admin/pricing/check".into(), q, None)
            }
            Op::Stats(q) => (Method::GET, "/admin/stats".into(), q.clone(), None),
            Op::ListTenants => (Method::GET, "/admin/tenants".into(), vec![], None),
            Op::CreateTenant(b) => (Method::POST, "/admin/tenants".into(), vec![], j(b)),
            Op::UpdateTenant(id, b) => {
                (Method::PATCH, format!("/admin/tenants/{id}"), vec![], j(b))
            }
            Op::DeleteTenant(id) => (Method::DELETE, format!("/admin/tenants/{id}"), vec![], None),
            Op::Audit(q) => (Method::GET, "/admin/audit".into(), q.clone(), None),
        }
    }

    fn is_list(&self) -> bool {
        matches!(
            self,
            Op::ListServices
                | Op::ListKeys(_)
                | Op::ListAccessKeys
                | Op::ListUsers
                | Op::ListPricing
        )
    }

    /// Runs it against a running keygate's admin API.
    pub async fn remote(&self, api: &Remote) -> Result<Value, Failure> {
        let (method, path, mut query, body) = self.http();
        if let Op::Audit(_) = self {
            // One page, as in process: its `items`.
            let page = api.call(method, &path, &query, body).await?;
            return Ok(page.get("items").cloned().unwrap_or(Value::Array(vec![])));
        }
        if !self.is_list() {
            return api.call(method, &path, &query, body).await;
        }
        // Lists: every page.
        query.push(("limit".into(), PAGE.to_string()));
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = query.clone();
            if let Some(c) = &cursor {
                q.push(("cursor".into(), c.clone()));
            }
            let page = api.call(method.clone(), &path, &q, None).await?;
            if let Some(a) = page.get("items").and_then(Value::as_array) {
                items.extend(a.iter().cloned());
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }
}

/// Query parameters as the JSON object serde reads a query struct from.
fn query_object(q: &[(String, String)]) -> Value {
    Value::Object(
        q.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Collects a list's pages in process (the items of each page as a JSON array).
async fn all_pages<F, Fut>(mut page: F) -> Result<Value, Failure>
where
    F: FnMut(Page) -> Fut,
    Fut: std::future::Future<Output = Result<(Value, Option<String>), Failure>>,
{
    let mut items = Vec::new();
    let mut cursor = None;
    loop {
        let (v, next) = page(Page {
            cursor: cursor.take(),
            limit: Some(PAGE),
        })
        .await?;
        if let Value::Array(a) = v {
            items.extend(a);
        }
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(Value::Array(items))
}

pub enum Body {
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// A running keygate's admin API, with a bearer token.
pub struct Remote {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Remote {
    /// Logs in with a username and password, for a token.
    pub async fn login(base: &str, username: &str, password: &str) -> Result<String, Failure> {
        let api = Remote {
            base: base.trim_end_matches('/').to_string(),
            token: String::new(),
            http: reqwest::Client::new(),
        };
        let v = api
            .call(
                Method::POST,
                "/admin/auth/login",
                &[],
                Some(Body::Json(
                    serde_json::json!({"username": username, "password": password}),
                )),
            )
            .await?;
        v.get("access_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(Failure {
                status: 0,
                detail: "login answered without an access_token".into(),
            })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<Body>,
    ) -> Result<Value, Failure> {
        let mut url =
            reqwest::Url::parse(&format!("{}{path}", self.base)).map_err(|e| Failure {
                status: 400,
                detail: format!("--url: {e}"),
            })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = self.http.request(method, url);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        req = match body {
            Some(Body::Json(v)) => req.json(&v),
            Some(Body::Raw(ct, bytes)) => req.header(reqwest::header::CONTENT_TYPE, ct).body(bytes),
            None => req,
        };
        let resp = req.send().await.map_err(|e| Failure {
            status: 0,
            detail: format!("cannot reach {}: {e}", self.base),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Failure {
            status: 0,
            detail: format!("reading the answer: {e}"),
        })?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| Failure {
                status: 0,
                detail: format!("the answer is not JSON ({e}): is {} a keygate?", self.base),
            });
        }
        // The admin API's errors are problem+json; `detail` says what was wrong.
        let detail = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&bytes)
                    .trim()
                    .chars()
                    .take(500)
                    .collect()
            });
        Err(Failure {
            status: status.as_u16(),
            detail,
        })
    }
}

/// Percent-encodes a path segment (a slug is `[a-z0-9-]`, but a typo should reach the server
/// as what was typed, to be refused there, not as another path).
fn urlencoding(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
