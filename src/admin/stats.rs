//! `GET /admin/stats`: request statistics (`control::stats`).
use axum::extract::{Query, State};

use super::auth::AuthUser;
use super::error::{ApiResult, Problem};
use crate::control::stats::{self as control, StatsQuery, StatsResponse};
use crate::state::AppState;

/// Request statistics: totals and series per group, and live figures.
#[utoipa::path(get, operation_id = "getStats", path = "/admin/stats", tag = "stats", params(StatsQuery),
    security(("bearer" = [])),
    responses((status = 200, body = StatsResponse),
        (status = 400, description = "A parameter is invalid (named in `detail`)", body = Problem),
        (status = 404, description = "No such service", body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<StatsQuery>,
) -> ApiResult<axum::Json<StatsResponse>> {
    Ok(axum::Json(control::get(&state, &user, &q).await?))
}
