//! `POST /admin/services/{slug}/keys/{id}/sync` and `POST /admin/services/{slug}/sync`: read
//! keys' balances from the upstream's billing API now (`control::keys::sync`).
use axum::extract::{Path, State};

use super::auth::AuthUser;
use super::error::{ApiResult, List, Problem};
use crate::control::keys::{self as control, Which};
use crate::jobs::sync::KeySync;
use crate::state::AppState;

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
    let mut synced = control::sync(&state, &user, &slug, Which::One(id)).await?;
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
    let items = control::sync(&state, &user, &slug, Which::InStatus(&[])).await?;
    Ok(axum::Json(List {
        items,
        next_cursor: None,
    }))
}
