//! CONTROL PLANE: the admin route table and the OpenAPI document it produces. No logic here.
mod access_keys;
mod audit;
pub mod auth;
pub mod error;
mod keys;
pub mod login_guard;
mod logs;
mod pricing;
mod services;
pub mod spec;
mod stats;
mod sync;
mod tenants;
mod users;
mod validate;

use axum::extract::DefaultBodyLimit;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "keygate admin API", description = "Control plane of the keygate LLM API gateway."),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Log in for a bearer token"),
        (name = "users", description = "Admin API users (admin role)"),
        (name = "tenants", description = "Tenants: who owns services, access keys and users"),
        (name = "audit", description = "The log of admin writes (admin role)"),
        (name = "services", description = "Services: one slug per upstream API"),
        (name = "keys", description = "Upstream keys of a service (always masked)"),
        (name = "access-keys", description = "Keys clients use to call the data plane"),
        (name = "pricing", description = "Prices per model, global or per slug, over the built-in defaults"),
        (name = "logs", description = "The request log: filtered pages, one row, export"),
        (name = "stats", description = "Request statistics: history from per-minute and per-hour rollups, live figures across replicas"),
        (name = "ops", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::patch, users::delete))
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::get, tenants::patch, tenants::delete))
        .routes(routes!(audit::list))
        .routes(routes!(services::list, services::create))
        .routes(routes!(services::get, services::patch, services::delete))
        .routes(routes!(keys::list, keys::add))
        .routes(routes!(keys::import))
        .routes(routes!(keys::export))
        .routes(routes!(keys::batch))
        .routes(routes!(keys::patch, keys::delete))
        .routes(routes!(validate::test_all))
        .routes(routes!(validate::test_one))
        .routes(routes!(sync::sync_all))
        .routes(routes!(sync::sync_one))
        .routes(routes!(access_keys::list, access_keys::create))
        .routes(routes!(
            access_keys::get,
            access_keys::patch,
            access_keys::delete
        ))
        .routes(routes!(pricing::list, pricing::create))
        .routes(routes!(pricing::check))
        .routes(routes!(pricing::replace, pricing::delete))
        .routes(routes!(logs::list))
        .routes(routes!(logs::export))
        .routes(routes!(logs::get))
        .routes(routes!(stats::get))
        // Below the static routes in matching priority: any other path under /admin is a 404
        // problem, not the data plane's or an empty one.
        .route("/admin", axum::routing::any(error::no_route))
        .route("/admin/{*rest}", axum::routing::any(error::no_route))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .layer(axum::middleware::from_fn(error::problem_errors))
}

/// Admin requests while the database is down get 503 at once (problem+json) instead of waiting
/// out the connection pool; probes, metrics and the API document still answer.
pub async fn database_gate(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.db_health.is_down() && req.uri().path().starts_with("/admin") {
        let mut r = error::ApiError::DatabaseDown.into_response();
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        return r;
    }
    next.run(req).await
}
