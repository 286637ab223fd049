//! `/admin/users`: admin role only.
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{AuthUser, Role};
use super::error::{ApiError, ApiResult, Json, List, Page, Problem};
use crate::db::{self, entity::user};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub tenant_id: Option<i64>,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl TryFrom<user::Model> for UserView {
    type Error = ApiError;

    /// Fails only on a row edited by hand outside the API.
    fn try_from(u: user::Model) -> ApiResult<Self> {
        Ok(Self {
            role: u.role.parse().map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("user {} has a bad role: {e}", u.id))
            })?,
            id: u.id,
            tenant_id: u.tenant_id,
            username: u.username,
            disabled: u.disabled,
            created_at: u.created_at,
        })
    }
}

/// No `Debug`: it carries a password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 characters, not only spaces (leading and trailing spaces are dropped).
    #[schema(max_length = 64, pattern = "\\S", example = "ops-alice")]
    pub username: String,
    /// At least 8 characters.
    #[schema(min_length = 8, example = "correct-horse-battery")]
    pub password: String,
    pub role: Role,
    pub tenant_id: Option<i64>,
}

/// No `Debug`: it carries a password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    /// At least 8 characters.
    #[schema(min_length = 8)]
    pub password: Option<String>,
    /// Required when you change your own password.
    pub current_password: Option<String>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

fn check_password(p: &str) -> ApiResult<()> {
    if p.chars().count() < 8 {
        return Err(ApiError::BadRequest(
            "password: must be at least 8 characters".into(),
        ));
    }
    Ok(())
}

/// List users.
#[utoipa::path(get, operation_id = "listUsers", path = "/admin/users", tag = "users", params(Page),
    security(("bearer" = [])),
    responses((status = 200, body = List<UserView>), (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<List<UserView>>> {
    user.require(Role::Admin)?;
    let limit = page.limit()?;
    let rows = db::users::list(&state.db, user.tenant_scope(), page.after()?, limit).await?;
    let last = rows.last().map(|u| u.id);
    Ok(axum::Json(List::page(
        rows.into_iter()
            .map(UserView::try_from)
            .collect::<ApiResult<_>>()?,
        last,
        limit,
    )))
}

/// Create a user.
#[utoipa::path(post, operation_id = "createUser", path = "/admin/users", tag = "users", request_body = CreateUser,
    security(("bearer" = [])),
    responses((status = 201, body = UserView), (status = 400, body = Problem),
        (status = 409, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateUser>,
) -> ApiResult<(StatusCode, axum::Json<UserView>)> {
    user.require(Role::Admin)?;
    let name = req.username.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::BadRequest(
            "username: must be 1 to 64 characters".into(),
        ));
    }
    check_password(&req.password)?;
    // A tenant's admin creates users of that tenant only (never global ones).
    let tenant_id = match user.tenant_scope() {
        None => req.tenant_id,
        Some(t) if req.tenant_id.is_none_or(|r| r == t) => Some(t),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "tenant_id: you can only create users of your own tenant".into(),
            ));
        }
    };
    let hash = crate::crypto::hash_password(&req.password)?;
    let u = db::users::create(&state.db, tenant_id, name, hash, req.role.as_str())
        .await
        .map_err(|e| match ApiError::from(e) {
            ApiError::Conflict(_) => ApiError::Conflict(format!("username: '{name}' is taken")),
            other => other,
        })?;
    Ok((StatusCode::CREATED, axum::Json(u.try_into()?)))
}

/// A user the caller may see: everyone for global users, their own tenant's users otherwise.
async fn find(state: &AppState, caller: &AuthUser, id: i64) -> ApiResult<user::Model> {
    db::users::by_id(&state.db, id)
        .await?
        .filter(|u| caller.tenant_scope().is_none_or(|t| u.tenant_id == Some(t)))
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))
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
    if user.id != id {
        user.require(Role::Admin)?;
    }
    Ok(axum::Json(find(&state, &user, id).await?.try_into()?))
}

/// Change a user's password, role or disabled flag.
#[utoipa::path(patch, operation_id = "updateUser", path = "/admin/users/{id}", tag = "users", request_body = PatchUser,
    security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 400, body = Problem),
        (status = 404, body = Problem)))]
pub async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
    Json(req): Json<PatchUser>,
) -> ApiResult<axum::Json<UserView>> {
    // Anyone may change their own password; everything else is for admins.
    let own_password_only = user.id == id && req.role.is_none() && req.disabled.is_none();
    if !own_password_only {
        user.require(Role::Admin)?;
    }
    if let Some(p) = &req.password {
        check_password(p)?;
    }
    if user.id == id && req.disabled == Some(true) {
        return Err(ApiError::BadRequest(
            "disabled: you cannot disable yourself".into(),
        ));
    }
    let existing = find(&state, &user, id).await?;
    if user.id == id && req.password.is_some() {
        let ok = match req.current_password.clone() {
            Some(current) => {
                let phc = existing.password_hash.clone();
                tokio::task::spawn_blocking(move || crate::crypto::verify_password(&current, &phc))
                    .await
                    .unwrap_or(false)
            }
            None => false,
        };
        if !ok {
            return Err(ApiError::BadRequest(
                "current_password: give your current password to change it".into(),
            ));
        }
    }
    let demoted = req.role.is_some_and(|r| r != Role::Admin) || req.disabled == Some(true);
    if demoted && existing.role == "admin" && !existing.disabled && existing.tenant_id.is_none() {
        last_admin_guard(&state, id).await?;
    }
    let role_changed = req.role.is_some_and(|r| r.as_str() != existing.role);
    let revoke_tokens = req.password.is_some() || role_changed || req.disabled == Some(true);
    let password_hash = req
        .password
        .as_deref()
        .map(crate::crypto::hash_password)
        .transpose()?;
    let u = db::users::update(
        &state.db,
        existing,
        db::users::UserPatch {
            password_hash,
            role: req.role.map(|r| r.as_str().to_string()),
            disabled: req.disabled,
            revoke_tokens,
        },
    )
    .await?;
    Ok(axum::Json(u.try_into()?))
}

/// Delete a user.
#[utoipa::path(delete, operation_id = "deleteUser", path = "/admin/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    user.require(Role::Admin)?;
    if user.id == id {
        return Err(ApiError::BadRequest(
            "id: you cannot delete yourself".into(),
        ));
    }
    let target = find(&state, &user, id).await?;
    if target.role == "admin" && !target.disabled && target.tenant_id.is_none() {
        last_admin_guard(&state, id).await?;
    }
    db::users::delete(&state.db, target.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses to leave keygate without an enabled admin of no tenant (nobody could then manage
/// users or global settings).
async fn last_admin_guard(state: &AppState, id: i64) -> ApiResult<()> {
    if db::users::other_active_admins(&state.db, id).await? == 0 {
        return Err(ApiError::Conflict(
            "this is the last active admin: make another user admin first".into(),
        ));
    }
    Ok(())
}
