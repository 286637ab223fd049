//! Admin authentication: login issues an HS256 JWT; every other admin route extracts `AuthUser`,
//! which checks the token and that the user still exists and is enabled. Roles: admin > operator >
//! viewer; viewers only read.
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, Json};
use super::login_guard::{self, Throttled};
use crate::db;
use crate::state::AppState;

pub use crate::domain::Role;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
    iat: u64,
    /// The user's token version when issued: a later password or role change, disabling or a
    /// logout bumps it and this token stops working. (Absent in tokens from before: 0.)
    #[serde(default)]
    ver: i32,
}

/// The logged-in user, as the control layer's actor.
pub type AuthUser = crate::control::Actor;

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // Auth schemes are case-insensitive (RFC 9110 §11.1): `BEARER` is `Bearer`.
            .and_then(|v| match v.trim().split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token),
                _ => None,
            })
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token.trim(), &state.jwt_decoding, &v)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token"))?;
        let id: i64 = data
            .claims
            .sub
            .parse()
            .map_err(|_| ApiError::Unauthorized("invalid token subject"))?;
        // The control plane may read the database: a disabled or deleted user loses access at once.
        let user = db::users::by_id(&state.db, id)
            .await?
            .filter(|u| !u.disabled)
            .ok_or(ApiError::Unauthorized(
                "user is disabled or no longer exists",
            ))?;
        if user.token_version != data.claims.ver {
            return Err(ApiError::Unauthorized(
                "token revoked (password or role changed, or logged out): log in again",
            ));
        }
        let role = Role::parse(&user.role).ok_or(ApiError::Forbidden("unknown role"))?;
        Ok(AuthUser {
            id: user.id,
            username: user.username,
            role,
            tenant_id: user.tenant_id,
            via: crate::control::Via::Api,
        })
    }
}

/// No `Debug`: it carries a password.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"username": "admin", "password": "correct-horse-battery"}))]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// What a login can fail with: the usual problem, or 429 while backing off after failures.
pub enum LoginError {
    Api(ApiError),
    Throttled(Throttled),
}

impl From<ApiError> for LoginError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<Throttled> for LoginError {
    fn from(t: Throttled) -> Self {
        Self::Throttled(t)
    }
}

impl IntoResponse for LoginError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            Self::Throttled(t) => t.into_response(),
        }
    }
}

/// Log in with username and password; returns a bearer token for the admin API.
///
/// Failed logins back off exponentially per username and per client address; an attempt during
/// a backoff is refused with 429 and `Retry-After` without checking the password.
#[utoipa::path(post, operation_id = "login", path = "/admin/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A bearer token for the admin API", body = LoginResponse),
        (status = 401, description = "Wrong username or password, or the user is disabled", body = super::error::Problem),
        (status = 429, description = "Too many failed logins for this username or address",
            body = super::error::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the next attempt is considered")))))]
pub async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Json(req): Json<LoginRequest>,
) -> Result<axum::Json<LoginResponse>, LoginError> {
    let guard = &state.login_guard;
    let addr = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let username = req.username.trim();
    guard.check(username, addr)?;
    let user = db::users::by_username(&state.db, username)
        .await
        .map_err(ApiError::from)?;
    // Unknown and disabled users are verified too (against a dummy hash for unknown ones), so
    // every failure costs one hash and timing does not reveal which usernames exist.
    let (phc, enabled) = match &user {
        Some(u) => (u.password_hash.clone(), !u.disabled),
        None => (login_guard::DUMMY_HASH.to_string(), false),
    };
    let ok = guard.verify(username, addr, req.password, phc).await? && enabled;
    let Some(user) = user.filter(|_| ok) else {
        guard.failed(username, addr);
        tracing::info!(username = %username.chars().take(64).collect::<String>(), "admin login failed");
        return Err(ApiError::Unauthorized("wrong username or password").into());
    };
    guard.succeeded(username);
    issue(&state, &user).map_err(LoginError::Api)
}

/// A token for `user` at its current token version, valid `auth.jwt_ttl_secs`.
fn issue(
    state: &AppState,
    user: &crate::db::entity::user::Model,
) -> ApiResult<axum::Json<LoginResponse>> {
    let now = chrono::Utc::now().timestamp() as u64;
    let ttl = state.config.auth.jwt_ttl_secs;
    let claims = Claims {
        sub: user.id.to_string(),
        role: user.role.clone(),
        iat: now,
        exp: now + ttl,
        ver: user.token_version,
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &state.jwt_encoding)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(axum::Json(LoginResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: ttl,
    }))
}

/// Exchange a valid token for a fresh one (a full `jwt_ttl_secs` from now), so a session can
/// outlive one token's lifetime without keeping a password; revoked tokens cannot refresh.
#[utoipa::path(post, operation_id = "refreshToken", path = "/admin/auth/refresh", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = LoginResponse), (status = 401, body = super::error::Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<axum::Json<LoginResponse>> {
    let u = db::users::by_id(&state.db, user.id)
        .await?
        .ok_or(ApiError::Unauthorized("user no longer exists"))?;
    issue(&state, &u)
}

/// Log out: every token of this user stops working (on every device).
#[utoipa::path(post, operation_id = "logout", path = "/admin/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = super::error::Problem)))]
pub async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<axum::http::StatusCode> {
    crate::control::users::logout(&state, &user).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Who a token belongs to, as the database has it now (the role may have changed since login).
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub id: i64,
    pub username: String,
    pub role: Role,
    /// Null: a global user, who sees every tenant.
    pub tenant_id: Option<i64>,
}

/// The user the bearer token belongs to: what a client (the web console) shows and which
/// actions it offers.
#[utoipa::path(get, operation_id = "getCurrentUser", path = "/admin/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = super::error::Problem)))]
pub async fn me(user: AuthUser) -> axum::Json<Me> {
    axum::Json(Me {
        id: user.id,
        username: user.username,
        role: user.role,
        tenant_id: user.tenant_id,
    })
}
