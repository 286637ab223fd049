//! `/admin/services`: the slugs (`control::services` validates, applies defaults and audits).
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::auth::AuthUser;
use super::error::{ApiResult, Json, List, Page, Problem};
use crate::control::services::{self as control, CreateService, PatchService, ServiceView};
use crate::state::AppState;

/// List services.
#[utoipa::path(get, operation_id = "listServices", path = "/admin/services", tag = "services", params(Page),
    security(("bearer" = [])), responses((status = 200, body = List<ServiceView>)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<List<ServiceView>>> {
    Ok(axum::Json(control::list(&state, &user, &page).await?))
}

/// Create a service (a slug).
#[utoipa::path(post, operation_id = "createService", path = "/admin/services", tag = "services", request_body = CreateService,
    security(("bearer" = [])),
    responses((status = 201, body = ServiceView), (status = 400, body = Problem),
        (status = 409, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateService>,
) -> ApiResult<(StatusCode, axum::Json<ServiceView>)> {
    let created = control::create(&state, &user, req).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Get a service.
#[utoipa::path(get, operation_id = "getService", path = "/admin/services/{slug}", tag = "services", security(("bearer" = [])),
    params(("slug" = String, Path)),
    responses((status = 200, body = ServiceView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
) -> ApiResult<axum::Json<ServiceView>> {
    Ok(axum::Json(control::get(&state, &user, &slug).await?))
}

/// Update a service.
#[utoipa::path(patch, operation_id = "updateService", path = "/admin/services/{slug}", tag = "services",
    request_body = PatchService, security(("bearer" = [])), params(("slug" = String, Path)),
    responses((status = 200, body = ServiceView), (status = 400, body = Problem),
        (status = 404, body = Problem)))]
pub async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
    Json(req): Json<PatchService>,
) -> ApiResult<axum::Json<ServiceView>> {
    Ok(axum::Json(
        control::update(&state, &user, &slug, req).await?,
    ))
}

/// Delete a service, its keys and the pricing rules on its slug.
#[utoipa::path(delete, operation_id = "deleteService", path = "/admin/services/{slug}", tag = "services",
    security(("bearer" = [])), params(("slug" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
) -> ApiResult<StatusCode> {
    control::delete(&state, &user, &slug).await?;
    Ok(StatusCode::NO_CONTENT)
}
