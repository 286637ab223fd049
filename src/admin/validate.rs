//! `POST /admin/services/{slug}/keys/{id}/test` and `POST /admin/services/{slug}/keys/test`:
//! test upstream keys now. The request, its reading and what it records live in
//! `crate::jobs::validate`, shared with the scheduled validation.
use axum::extract::{Path, Query, State};

use super::auth::{AuthUser, Role};
use super::error::{ApiError, ApiResult, List, Problem};
use super::keys::StatusFilter;
use super::services::find as find_service;
use crate::db;
use crate::jobs::{
    self,
    validate::{self, KeyTest},
};
use crate::state::AppState;

impl From<jobs::Error> for ApiError {
    fn from(e: jobs::Error) -> Self {
        match e {
            jobs::Error::Db(e) => e.into(),
            jobs::Error::Coord(e) => e.into(),
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Test one key now: a cheap upstream request (the model list), with its status, latency and
/// error. A key out of rotation that answers comes back; one the upstream refuses (401/403,
/// 402 or quota gone) goes out; a 429, 5xx or timeout changes nothing.
#[utoipa::path(post, operation_id = "testKey", path = "/admin/services/{slug}/keys/{id}/test", tag = "keys",
    params(("slug" = String, Path), ("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = KeyTest), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn test_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path((slug, id)): Path<(String, i64)>,
) -> ApiResult<axum::Json<KeyTest>> {
    user.require(Role::Operator)?;
    let svc = find_service(&state, &user, &slug).await?;
    let k = db::keys::by_id(&state.db, svc.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("key {id} not found in '{slug}'")))?;
    let keys = jobs::with_status(&state, vec![k]).await?;
    let mut tested = validate::test_keys(&state, &svc, keys, None).await?;
    Ok(axum::Json(tested.remove(0)))
}

/// Test a service's keys now (all, or those in the given statuses), `validate_concurrency` at a
/// time; one result per key, in id order. Each result is recorded as for a single key.
#[utoipa::path(post, operation_id = "testKeys", path = "/admin/services/{slug}/keys/test", tag = "keys",
    params(("slug" = String, Path), StatusFilter), security(("bearer" = [])),
    responses((status = 200, body = List<KeyTest>), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn test_all(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
    Query(filter): Query<StatusFilter>,
) -> ApiResult<axum::Json<List<KeyTest>>> {
    user.require(Role::Operator)?;
    let only = filter.statuses()?;
    let svc = find_service(&state, &user, &slug).await?;
    let keys = jobs::keys_in(&state, svc.id, &only).await?;
    let items = validate::test_keys(&state, &svc, keys, None).await?;
    Ok(axum::Json(List {
        items,
        next_cursor: None,
    }))
}
