//! `/admin/users`: admin role (a tenant's admin: that tenant's users); `control::users` does
//! the work.
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::auth::AuthUser;
use super::error::{ApiResult, Json, List, Page, Problem};
use crate::control::users::{self as control, CreateUser, PatchUser, UserView};
use crate::state::AppState;

/// List users (a tenant's admin: that tenant's users).
#[utoipa::path(get, operation_id = "listUsers", path = "/admin/users", tag = "users", params(Page),
    security(("bearer" = [])),
    responses((status = 200, body = List<UserView>), (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<List<UserView>>> {
    Ok(axum::Json(control::list(&state, &user, &page).await?))
}

/// Create a user (a tenant's admin: in that tenant only).
#[utoipa::path(post, operation_id = "createUser", path = "/admin/users", tag = "users", request_body = CreateUser,
    security(("bearer" = [])),
    responses((status = 201, body = UserView), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateUser>,
) -> ApiResult<(StatusCode, axum::Json<UserView>)> {
    let created = control::create(&state, &user, req).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Get a user.
#[utoipa::path(get, operation_id = "getUser", path = "/admin/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<UserView>> {
    Ok(axum::Json(control::get(&state, &user, id).await?))
}

/// Change a user's password, role or disabled flag.
#[utoipa::path(patch, operation_id = "updateUser", path = "/admin/users/{id}", tag = "users", request_body = PatchUser,
    security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
    Json(req): Json<PatchUser>,
) -> ApiResult<axum::Json<UserView>> {
    Ok(axum::Json(control::update(&state, &user, id, req).await?))
}

/// Delete a user.
#[utoipa::path(delete, operation_id = "deleteUser", path = "/admin/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    control::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
