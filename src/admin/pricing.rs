//! `/admin/pricing`: prices per model glob, global or on one slug (`control::pricing` holds the
//! rules of who may write what), and `check`, which says what prices a model and why.
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::auth::AuthUser;
use super::error::{ApiResult, Json, List, Page, Problem};
use crate::control::pricing::{
    self as control, CheckQuery, PriceCheck, PricingRuleBody, PricingRuleView,
};
use crate::state::AppState;

/// List pricing rules (global ones and those on your tenant's slugs).
#[utoipa::path(get, operation_id = "listPricingRules", path = "/admin/pricing", tag = "pricing", params(Page),
    security(("bearer" = [])), responses((status = 200, body = List<PricingRuleView>),
        (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<List<PricingRuleView>>> {
    Ok(axum::Json(control::list(&state, &user, &page).await?))
}

/// Create a pricing rule. It applies at once, on every replica, over the built-in defaults.
#[utoipa::path(post, operation_id = "createPricingRule", path = "/admin/pricing", tag = "pricing", request_body = PricingRuleBody,
    security(("bearer" = [])),
    responses((status = 201, body = PricingRuleView), (status = 400, body = Problem),
        (status = 403, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<PricingRuleBody>,
) -> ApiResult<(StatusCode, axum::Json<PricingRuleView>)> {
    let created = control::create(&state, &user, req).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

/// Replace a pricing rule whole (an absent amount becomes 0, or "priced as input" for the cache
/// amounts; an absent slug makes it global).
#[utoipa::path(put, operation_id = "replacePricingRule", path = "/admin/pricing/{id}", tag = "pricing", request_body = PricingRuleBody,
    params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = PricingRuleView), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn replace(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
    Json(req): Json<PricingRuleBody>,
) -> ApiResult<axum::Json<PricingRuleView>> {
    Ok(axum::Json(control::replace(&state, &user, id, req).await?))
}

/// Delete a pricing rule; the model falls back to the next rule, or the built-in default.
#[utoipa::path(delete, operation_id = "deletePricingRule", path = "/admin/pricing/{id}", tag = "pricing",
    params(("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    control::delete(&state, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Explain which price the gateway applies to a model: the stored rule or default entry that
/// matched, its prices, and an example cost. 404 when nothing prices the model.
#[utoipa::path(get, operation_id = "checkPrice", path = "/admin/pricing/check", tag = "pricing", params(CheckQuery),
    security(("bearer" = [])),
    responses((status = 200, body = PriceCheck), (status = 400, body = Problem),
        (status = 404, body = Problem)))]
pub async fn check(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<CheckQuery>,
) -> ApiResult<axum::Json<PriceCheck>> {
    Ok(axum::Json(control::check(&state, &user, q).await?))
}
