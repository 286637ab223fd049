//! `/admin/access-keys`: the keys clients send. The full key is returned once, at creation.
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use sea_orm::ActiveValue::Set;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{AuthUser, Role};
use super::error::{ApiError, ApiResult, Json, List, Page, Problem};
use super::services::valid_slug;
use crate::crypto::{new_access_key, sha256_hex};
use crate::db::{self, entity::access_key};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessKeyView {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    /// First characters of the key, to recognise it.
    pub prefix: String,
    /// Slugs it may call; empty = every slug of its tenant.
    pub slugs: Vec<String>,
    pub rpm: Option<i32>,
    pub tpm: Option<i32>,
    pub rpd: Option<i32>,
    /// In currency units (exact to 0.000001).
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub budget: Option<i64>,
    /// In currency units (exact to 0.000001).
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub spent: i64,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub enabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<access_key::Model> for AccessKeyView {
    fn from(a: access_key::Model) -> Self {
        Self {
            id: a.id,
            tenant_id: a.tenant_id,
            name: a.name,
            prefix: a.prefix,
            slugs: serde_json::from_value(a.slugs).unwrap_or_default(),
            rpm: a.rpm,
            tpm: a.tpm,
            rpd: a.rpd,
            budget: a.budget_micros,
            spent: a.spent_micros,
            expires_at: a.expires_at,
            enabled: a.enabled,
            created_at: a.created_at,
        }
    }
}

/// No `Debug`: it carries the full key.
#[derive(Serialize, ToSchema)]
pub struct CreatedAccessKey {
    /// The full key: shown this once, stored only as a hash.
    pub key: String,
    #[serde(flatten)]
    pub access_key: AccessKeyView,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "team-a", "slugs": ["openai"], "rpm": 600, "budget": 50}))]
pub struct CreateAccessKey {
    /// 1 to 128 characters, not only spaces.
    #[schema(max_length = 128, pattern = "\\S")]
    pub name: String,
    /// The slugs this key may call (empty or absent: every slug of its tenant).
    #[schema(value_type = Option<Vec<super::spec::Slug>>)]
    pub slugs: Option<Vec<String>>,
    /// Requests per minute at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub rpm: Option<i32>,
    /// Tokens per minute at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub tpm: Option<i32>,
    /// Requests per day at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub rpd: Option<i32>,
    /// In currency units (a decimal string is accepted too); stored exactly, to 0.000001.
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub budget: Option<i64>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAccessKey {
    /// 1 to 128 characters, not only spaces.
    #[schema(max_length = 128, pattern = "\\S")]
    pub name: Option<String>,
    /// The slugs this key may call (empty or absent: every slug of its tenant).
    #[schema(value_type = Option<Vec<super::spec::Slug>>)]
    pub slugs: Option<Vec<String>>,
    /// Requests per minute at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub rpm: Option<i32>,
    /// Tokens per minute at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub tpm: Option<i32>,
    /// Requests per day at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub rpd: Option<i32>,
    /// In currency units (a decimal string is accepted too); stored exactly, to 0.000001.
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub budget: Option<i64>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub enabled: Option<bool>,
}

fn check(
    name: Option<&str>,
    slugs: Option<&[String]>,
    limits: [(&str, Option<i32>); 3],
) -> ApiResult<()> {
    if let Some(n) = name
        && (n.trim().is_empty() || n.chars().count() > 128)
    {
        return Err(ApiError::BadRequest(
            "name: must be 1 to 128 characters".into(),
        ));
    }
    if let Some(bad) = slugs.and_then(|s| s.iter().find(|s| !valid_slug(s))) {
        return Err(ApiError::BadRequest(format!(
            "slugs: '{bad}' is not a valid slug"
        )));
    }
    for (field, v) in limits {
        if v.is_some_and(|v| v < 1) {
            return Err(ApiError::BadRequest(format!("{field}: must be at least 1")));
        }
    }
    // The budget's range and sign were checked when the body was read (`money::units_opt`).
    Ok(())
}

async fn find(state: &AppState, user: &AuthUser, id: i64) -> ApiResult<access_key::Model> {
    db::access_keys::by_id(&state.db, id)
        .await?
        .filter(|a| user.tenant_scope().is_none_or(|t| t == a.tenant_id))
        .ok_or_else(|| ApiError::NotFound(format!("access key {id} not found")))
}

/// List access keys (prefix only).
#[utoipa::path(get, operation_id = "listAccessKeys", path = "/admin/access-keys", tag = "access-keys", params(Page),
    security(("bearer" = [])), responses((status = 200, body = List<AccessKeyView>)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<List<AccessKeyView>>> {
    let limit = page.limit()?;
    let rows = db::access_keys::list(&state.db, user.tenant_scope(), page.after()?, limit).await?;
    let last = rows.last().map(|a| a.id);
    Ok(axum::Json(List::page(
        rows.into_iter().map(Into::into).collect(),
        last,
        limit,
    )))
}

/// Create an access key; the response carries the full key, the only time it is shown.
#[utoipa::path(post, operation_id = "createAccessKey", path = "/admin/access-keys", tag = "access-keys", request_body = CreateAccessKey,
    security(("bearer" = [])),
    responses((status = 201, body = CreatedAccessKey), (status = 400, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateAccessKey>,
) -> ApiResult<(StatusCode, axum::Json<CreatedAccessKey>)> {
    user.require(Role::Operator)?;
    check(
        Some(&req.name),
        req.slugs.as_deref(),
        [("rpm", req.rpm), ("tpm", req.tpm), ("rpd", req.rpd)],
    )?;
    let (key, prefix) = new_access_key();
    let am = access_key::ActiveModel {
        tenant_id: Set(user.write_tenant()),
        name: Set(req.name.trim().to_string()),
        prefix: Set(prefix),
        hash: Set(sha256_hex(&key)),
        slugs: Set(serde_json::json!(req.slugs.unwrap_or_default())),
        rpm: Set(req.rpm),
        tpm: Set(req.tpm),
        rpd: Set(req.rpd),
        budget_micros: Set(req.budget),
        spent_micros: Set(0),
        expires_at: Set(req.expires_at),
        enabled: Set(true),
        created_at: Set(chrono::Utc::now()),
        ..Default::default()
    };
    let a = db::access_keys::insert(&state.db, am).await?;
    state.config_changed().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedAccessKey {
            key,
            access_key: a.into(),
        }),
    ))
}

/// Get an access key.
#[utoipa::path(get, operation_id = "getAccessKey", path = "/admin/access-keys/{id}", tag = "access-keys", params(("id" = i64, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = AccessKeyView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<AccessKeyView>> {
    Ok(axum::Json(find(&state, &user, id).await?.into()))
}

/// Update an access key.
#[utoipa::path(patch, operation_id = "updateAccessKey", path = "/admin/access-keys/{id}", tag = "access-keys", params(("id" = i64, Path)),
    request_body = PatchAccessKey, security(("bearer" = [])),
    responses((status = 200, body = AccessKeyView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
    Json(req): Json<PatchAccessKey>,
) -> ApiResult<axum::Json<AccessKeyView>> {
    user.require(Role::Operator)?;
    check(
        req.name.as_deref(),
        req.slugs.as_deref(),
        [("rpm", req.rpm), ("tpm", req.tpm), ("rpd", req.rpd)],
    )?;
    let mut am: access_key::ActiveModel = find(&state, &user, id).await?.into();
    if let Some(n) = req.name {
        am.name = Set(n.trim().to_string());
    }
    if let Some(s) = req.slugs {
        am.slugs = Set(serde_json::json!(s));
    }
    if req.rpm.is_some() {
        am.rpm = Set(req.rpm);
    }
    if req.tpm.is_some() {
        am.tpm = Set(req.tpm);
    }
    if req.rpd.is_some() {
        am.rpd = Set(req.rpd);
    }
    if req.budget.is_some() {
        am.budget_micros = Set(req.budget);
    }
    if req.expires_at.is_some() {
        am.expires_at = Set(req.expires_at);
    }
    if let Some(e) = req.enabled {
        am.enabled = Set(e);
    }
    let a = db::access_keys::update(&state.db, am).await?;
    state.config_changed().await?;
    Ok(axum::Json(a.into()))
}

/// Delete an access key; it stops working on every replica within the refresh interval.
#[utoipa::path(delete, operation_id = "deleteAccessKey", path = "/admin/access-keys/{id}", tag = "access-keys", params(("id" = i64, Path)),
    security(("bearer" = [])), responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    user.require(Role::Operator)?;
    let a = find(&state, &user, id).await?;
    db::access_keys::delete(&state.db, a.id).await?;
    state.config_changed().await?;
    Ok(StatusCode::NO_CONTENT)
}
