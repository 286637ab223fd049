//! `/admin/tenants`: admins of no tenant write; everyone reads the tenants they see
//! (`control::tenants` does the work).
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::auth::AuthUser;
use super::error::{ApiResult, Json, List, Page, Problem};
use crate::control::tenants::{self as control, CreateTenant, PatchTenant, TenantView};
use crate::state::AppState;

/// List tenants (a tenant's user: their own only).
#[utoipa::path(get, operation_id = "listTenants", path = "/admin/tenants", tag = "tenants", params(Page),
    security(("bearer" = [])), responses((status = 200, body = List<TenantView>)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<List<TenantView>>> {
    Ok(axum::Json(control::list(&state, &user, &page).await?))
}

/// Create a tenant (admins of no tenant).
#[utoipa::path(post, operation_id = "createTenant", path = "/admin/tenants", tag = "tenants", request_body = CreateTenant,
    security(("bearer" = [])),
    responses((status = 201, body = TenantView), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateTenant>,
) -> ApiResult<(StatusCode, axum::Json<TenantView>)> {
    let created = control::create(&state, &user, req).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Get a tenant.
#[utoipa::path(get, operation_id = "getTenant", path = "/admin/tenants/{id}", tag = "tenants", params(("id" = i64, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<TenantView>> {
    Ok(axum::Json(control::get(&state, &user, id).await?))
}

/// Rename a tenant (admins of no tenant).
#[utoipa::path(patch, operation_id = "updateTenant", path = "/admin/tenants/{id}", tag = "tenants", params(("id" = i64, Path)),
    request_body = PatchTenant, security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
    Json(req): Json<PatchTenant>,
) -> ApiResult<axum::Json<TenantView>> {
    Ok(axum::Json(control::update(&state, &user, id, req).await?))
}

/// Delete a tenant that owns nothing any more (admins of no tenant); never the default tenant.
#[utoipa::path(delete, operation_id = "deleteTenant", path = "/admin/tenants/{id}", tag = "tenants", params(("id" = i64, Path)),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "The default tenant, or a tenant that still owns services, access keys or users", body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    control::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
