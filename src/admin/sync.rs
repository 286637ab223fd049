//! `POST /admin/services/{slug}/keys/{id}/sync` and `POST /admin/services/{slug}/sync`: read
//! keys' balances from the upstream's billing API now. The adapters live in `billing::sync`,
//! what a result does to a key in `jobs::sync`, shared with the scheduled sync.
use axum::extract::{Path, State};

use super::auth::{AuthUser, Role};
use super::error::{ApiError, ApiResult, List, Problem};
use super::services::find as find_service;
use crate::billing::sync::BalanceSync;
use crate::db::{self, entity::service};
use crate::jobs::{self, sync::KeySync};
use crate::state::AppState;

/// The service's settings, or a 409 naming the field to set.
fn settings(svc: &service::Model) -> ApiResult<BalanceSync> {
    jobs::sync::settings_of(svc).ok_or_else(|| {
        ApiError::Conflict(format!(
            "balance_sync: service '{}' has no balance sync settings; set them with PATCH /admin/services/{}",
            svc.slug, svc.slug
        ))
    })
}

/// Sync one key's balance now from the upstream's billing API. A key below the service's
/// `min_balance` goes out as `exhausted`; an exhausted key topped up comes back. When the
/// balance cannot be read, `sync_error` says why and the balance is kept.
#[utoipa::path(post, operation_id = "syncKey", path = "/admin/services/{slug}/keys/{id}/sync", tag = "keys",
    params(("slug" = String, Path), ("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = KeySync), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn sync_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path((slug, id)): Path<(String, i64)>,
) -> ApiResult<axum::Json<KeySync>> {
    user.require(Role::Operator)?;
    let svc = find_service(&state, &user, &slug).await?;
    let settings = settings(&svc)?;
    let k = db::keys::by_id(&state.db, svc.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("key {id} not found in '{slug}'")))?;
    let keys = jobs::with_status(&state, vec![k]).await?;
    let mut synced = jobs::sync::sync_keys(&state, &svc, &settings, keys, None).await?;
    Ok(axum::Json(synced.remove(0)))
}

/// Sync every key of a service now, a few at a time; one result per key, in id order, each
/// recorded as for a single key.
#[utoipa::path(post, operation_id = "syncKeys", path = "/admin/services/{slug}/sync", tag = "keys",
    params(("slug" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = List<KeySync>), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn sync_all(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
) -> ApiResult<axum::Json<List<KeySync>>> {
    user.require(Role::Operator)?;
    let svc = find_service(&state, &user, &slug).await?;
    let settings = settings(&svc)?;
    let keys = jobs::keys_in(&state, svc.id, &[]).await?;
    let items = jobs::sync::sync_keys(&state, &svc, &settings, keys, None).await?;
    Ok(axum::Json(List {
        items,
        next_cursor: None,
    }))
}
