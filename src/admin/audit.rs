//! `GET /admin/audit`: the log of admin writes, newest first (`control::audit` reads it).
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult, List, Problem};
use crate::control::audit::{self as control, AuditEvent, AuditQuery};
use crate::state::AppState;

/// List audit entries, newest first (admins; a tenant's admin: that tenant's entries).
#[utoipa::path(get, operation_id = "listAuditEvents", path = "/admin/audit", tag = "audit", params(AuditQuery),
    security(("bearer" = [])),
    responses((status = 200, body = List<AuditEvent>), (status = 400, body = Problem),
        (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<axum::Json<List<AuditEvent>>> {
    // A query serde refuses (a parameter given twice) is a 400 problem like every other.
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(axum::Json(control::list(&state, &user, &q).await?))
}
