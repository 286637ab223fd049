//! `POST /admin/services/{slug}/keys/{id}/test` and `POST /admin/services/{slug}/keys/test`:
//! test upstream keys now (`control::keys::test`).
use axum::extract::{Path, Query, State};

use super::auth::AuthUser;
use super::error::{ApiResult, List, Problem};
use crate::control::keys::{self as control, StatusFilter, Which};
use crate::jobs::validate::KeyTest;
use crate::state::AppState;

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
    let mut tested = control::test(&state, &user, &slug, Which::One(id)).await?;
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
    let only = filter.statuses()?;
    let items = control::test(&state, &user, &slug, Which::InStatus(&only)).await?;
    Ok(axum::Json(List {
        items,
        next_cursor: None,
    }))
}
