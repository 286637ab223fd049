//! DATA PLANE: the route table. `/llm/{slug}/...` for LLM kinds, `/proxy/{slug}/...` for REST,
//! `/v1/...` for the configured default slug.
mod attempt;
mod auth;
pub mod error;
mod forward;
pub mod usage;

use axum::Router;
use axum::routing::any;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/llm/{slug}/{*path}", any(forward::llm))
        .route("/proxy/{slug}/{*path}", any(forward::rest))
        .route("/v1/{*path}", any(forward::default_slug))
}
