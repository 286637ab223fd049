//! Operations endpoints: liveness, readiness (database and coordination store), Prometheus metrics.
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `unavailable` (a store is down) or `draining` (shutting down).
    pub status: &'static str,
    /// `ok`/`down`, absent for /healthz.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    /// `ok`, `down`, or `degraded` (Redis is down and this replica serves in process, which
    /// still counts as ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordination: Option<&'static str>,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, operation_id = "getHealth", path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        database: None,
        coordination: None,
    })
}

/// Readiness: the database and the coordination store (Redis) answer, and no shutdown has begun.
#[utoipa::path(get, operation_id = "getReadiness", path = "/readyz", tag = "ops",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Health>) {
    // Draining first, without probing the stores: the answer must not depend on them, and a
    // replica on its way out should not spend connections on pings.
    if state.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health {
                status: "draining",
                database: None,
                coordination: None,
            }),
        );
    }
    // A database the probe found down is not asked again (the answer must come at once); a
    // ping is bounded by a second either way.
    let db =
        async { !state.db_health.is_down() && crate::db::health::DbHealth::ping(&state.db).await };
    let (db_ok, coord_ok) = tokio::join!(db, state.coord.ping());
    // Degraded (Redis down, serving in process) is still ready: taking every replica out of
    // the load balancer would turn a Redis outage into a full one.
    let degraded = !coord_ok
        && state.coord.degraded()
        && state.config.redis.on_outage == crate::coord::outage::OnOutage::Degrade;
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let ready = db_ok && (coord_ok || degraded);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(Health {
            status: if ready { "ok" } else { "unavailable" },
            database: Some(word(db_ok)),
            coordination: Some(if degraded { "degraded" } else { word(coord_ok) }),
        }),
    )
}

/// Prometheus metrics in text exposition format.
#[utoipa::path(get, operation_id = "getMetrics", path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
