//! `/admin/access-keys`: the keys clients send (`control::access_keys` does the work).
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::auth::AuthUser;
use super::error::{ApiResult, Json, List, Page, Problem};
use crate::control::access_keys::{
    self as control, AccessKeyView, CreateAccessKey, CreatedAccessKey, PatchAccessKey,
};
use crate::state::AppState;

/// List access keys (prefix only).
#[utoipa::path(get, operation_id = "listAccessKeys", path = "/admin/access-keys", tag = "access-keys", params(Page),
    security(("bearer" = [])), responses((status = 200, body = List<AccessKeyView>)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<List<AccessKeyView>>> {
    Ok(axum::Json(control::list(&state, &user, &page).await?))
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
    let created = control::create(&state, &user, req).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
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
    Ok(axum::Json(control::get(&state, &user, id).await?))
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
    Ok(axum::Json(control::update(&state, &user, id, req).await?))
}

/// Delete an access key; it stops working on every replica within the refresh interval.
#[utoipa::path(delete, operation_id = "deleteAccessKey", path = "/admin/access-keys/{id}", tag = "access-keys", params(("id" = i64, Path)),
    security(("bearer" = [])), responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    control::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
