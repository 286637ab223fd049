//! `/admin/services/{slug}/keys`: upstream keys (`control::keys` does the work). Secrets go in
//! once and come out masked only.
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::auth::{AuthUser, Role};
use super::error::{ApiError, ApiResult, Json, List, Page, Problem};
use crate::control::import::Format;
use crate::control::keys::{
    self as control, AddKeys, AddKeysResult, ImportOptions, KeyBatch, KeyBatchResult, KeyView,
    PatchKey, StatusFilter,
};
use crate::state::AppState;

/// List a service's upstream keys (masked).
#[utoipa::path(get, operation_id = "listKeys", path = "/admin/services/{slug}/keys", tag = "keys", params(("slug" = String, Path), Page),
    security(("bearer" = [])), responses((status = 200, body = List<KeyView>), (status = 404, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
    Query(page): Query<Page>,
) -> ApiResult<axum::Json<List<KeyView>>> {
    Ok(axum::Json(
        control::list(&state, &user, &slug, &page).await?,
    ))
}

/// Add keys to a service (JSON).
#[utoipa::path(post, operation_id = "addKeys", path = "/admin/services/{slug}/keys", tag = "keys", request_body = AddKeys,
    params(("slug" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = AddKeysResult), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn add(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
    Json(req): Json<AddKeys>,
) -> ApiResult<axum::Json<AddKeysResult>> {
    Ok(axum::Json(control::add(&state, &user, &slug, req).await?))
}

/// Import keys: JSON, CSV (`key,balance`) or plain text (one key a line; blank lines and `#`
/// comments skipped), by Content-Type, or a multipart upload of such a file. All or nothing;
/// `?dry_run=true` reports every bad line and the count of new and duplicate keys first.
#[utoipa::path(post, operation_id = "importKeys", path = "/admin/services/{slug}/keys/import", tag = "keys",
    params(("slug" = String, Path), ImportOptions), security(("bearer" = [])),
    request_body(content(
        (String = "text/plain"), (String = "text/csv"), (AddKeys = "application/json"),
        (Vec<u8> = "multipart/form-data"))),
    responses((status = 200, body = AddKeysResult), (status = 400, body = Problem),
        (status = 415, body = Problem)))]
pub async fn import(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
    Query(opts): Query<ImportOptions>,
    req: Request,
) -> ApiResult<axum::Json<AddKeysResult>> {
    // Permission and the slug first: a viewer or a wrong slug learns nothing from the body.
    user.require(Role::Operator)?;
    crate::control::services::find(&state, &user, &slug).await?;
    let (format, bytes) = import_body(&state, req).await?;
    let dry_run = opts.dry_run == Some(true);
    Ok(axum::Json(
        control::import(&state, &user, &slug, format, &bytes, dry_run).await?,
    ))
}

/// The file an import carries: the body itself, typed by its Content-Type, or the first part of
/// a multipart upload with a .json, .csv or .txt name or type (or a part named `keys`).
async fn import_body(state: &AppState, req: Request) -> ApiResult<(Format, axum::body::Bytes)> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if ct
        .as_deref()
        .is_some_and(|c| c.starts_with("multipart/form-data"))
    {
        let mut mp = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("body: {}", e.body_text())))?;
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| ApiError::BadRequest(format!("body: {}", e.body_text())))?
        {
            let fmt = Format::detect(field.content_type(), field.file_name())
                .or_else(|| (field.name() == Some("keys")).then_some(Format::Text));
            if let Some(fmt) = fmt {
                let data = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::BadRequest(format!("body: {}", e.body_text())))?;
                return Ok((fmt, data));
            }
        }
        return Err(ApiError::BadRequest(
            "file: no part with a .json, .csv or .txt file (or a text/csv, text/plain, application/json type)".into(),
        ));
    }
    let fmt = Format::detect(ct.as_deref(), None).ok_or_else(|| {
        ApiError::Unsupported(
            "Content-Type: use application/json, text/csv, text/plain or multipart/form-data"
                .into(),
        )
    })?;
    let bytes = axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024)
        .await
        .map_err(|_| ApiError::TooLarge("body: larger than 16 MiB".into()))?;
    Ok((fmt, bytes))
}

/// Export a service's keys as CSV (masked: `id,key,label,status,balance,weight`; balance in
/// currency units, exact decimal text), all of them or those in the given statuses.
#[utoipa::path(get, operation_id = "exportKeys", path = "/admin/services/{slug}/keys/export", tag = "keys",
    params(("slug" = String, Path), StatusFilter), security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String),
        (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn export(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
    Query(filter): Query<StatusFilter>,
) -> ApiResult<impl IntoResponse> {
    let body = control::export_csv(&state, &user, &slug, &filter).await?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body))
}

/// Change a key's label, weight, balance or status (`active` re-enables it).
#[utoipa::path(patch, operation_id = "updateKey", path = "/admin/services/{slug}/keys/{id}", tag = "keys", request_body = PatchKey,
    params(("slug" = String, Path), ("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn patch(
    State(state): State<AppState>,
    user: AuthUser,
    Path((slug, id)): Path<(String, i64)>,
    Json(req): Json<PatchKey>,
) -> ApiResult<axum::Json<KeyView>> {
    Ok(axum::Json(
        control::update(&state, &user, &slug, id, req).await?,
    ))
}

/// Delete a key.
#[utoipa::path(delete, operation_id = "deleteKey", path = "/admin/services/{slug}/keys/{id}", tag = "keys",
    params(("slug" = String, Path), ("id" = i64, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path((slug, id)): Path<(String, i64)>,
) -> ApiResult<StatusCode> {
    control::delete(&state, &user, &slug, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enable, disable or delete many keys at once: those with the given ids, or every key in a
/// status (`{"action": "enable", "status": "invalid"}` puts back every invalid key).
#[utoipa::path(post, operation_id = "batchKeys", path = "/admin/services/{slug}/keys/batch", tag = "keys",
    request_body = KeyBatch, params(("slug" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = KeyBatchResult), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn batch(
    State(state): State<AppState>,
    user: AuthUser,
    Path(slug): Path<String>,
    Json(req): Json<KeyBatch>,
) -> ApiResult<axum::Json<KeyBatchResult>> {
    Ok(axum::Json(control::batch(&state, &user, &slug, req).await?))
}
