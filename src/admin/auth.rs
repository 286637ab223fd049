//! Admin authentication: login issues an HS256 JWT; every other admin route extracts `AuthUser`,
//! which checks the token and that the user still exists and is enabled. Roles: admin > operator >
//! viewer; viewers only read.
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, Json};
use crate::crypto;
use crate::db;
use crate::state::AppState;

pub use crate::domain::Role;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
    iat: u64,
}

#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub tenant_id: Option<i64>,
}

impl AuthUser {
    pub fn require(&self, min: Role) -> ApiResult<()> {
        if self.role >= min {
            Ok(())
        } else {
            Err(ApiError::Forbidden("your role does not allow this action"))
        }
    }

    /// The tenant the user's writes go to and reads are limited to (None = all, for global users).
    pub fn tenant_scope(&self) -> Option<i64> {
        self.tenant_id
    }

    pub fn write_tenant(&self) -> i64 {
        self.tenant_id.unwrap_or(db::DEFAULT_TENANT)
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
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
        let role = Role::parse(&user.role).ok_or(ApiError::Forbidden("unknown role"))?;
        Ok(AuthUser {
            id: user.id,
            username: user.username,
            role,
            tenant_id: user.tenant_id,
        })
    }
}

/// No `Debug`: it carries a password.
#[derive(Deserialize, ToSchema)]
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

/// Log in with username and password; returns a bearer token for the admin API.
#[utoipa::path(post, path = "/admin/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = super::error::Problem)))]
pub async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<axum::Json<LoginResponse>> {
    let user = db::users::by_username(&state.db, req.username.trim()).await?;
    // Verify against a dummy hash when the user is unknown so timing does not reveal usernames.
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3xS0zLcyZr2jNGyCkqDtB4U7qBd7Y0cMPV0eP3z6V9s";
    let ok = match &user {
        Some(u) if !u.disabled => crypto::verify_password(&req.password, &u.password_hash),
        _ => {
            crypto::verify_password(&req.password, DUMMY);
            false
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(username = %req.username.chars().take(64).collect::<String>(), "admin login failed");
        return Err(ApiError::Unauthorized("wrong username or password"));
    };
    let now = chrono::Utc::now().timestamp() as u64;
    let ttl = state.config.auth.jwt_ttl_secs;
    let claims = Claims {
        sub: user.id.to_string(),
        role: user.role.clone(),
        iat: now,
        exp: now + ttl,
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &state.jwt_encoding)
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(axum::Json(LoginResponse {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: ttl,
    }))
}
