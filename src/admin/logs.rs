//! `/admin/logs`: the request log read back (`control::logs`), filtered and paged newest first,
//! one row by id, and a filtered range exported as CSV or NDJSON, streamed.
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use chrono::Utc;

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult, Problem};
use crate::control::logs::{self as control, ExportQuery, LogPage, LogPaging, LogQuery, LogView};
use crate::state::AppState;

/// A query string serde refuses (a parameter given twice) as problem+json, like every other 400.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// List request logs, newest first.
#[utoipa::path(get, operation_id = "listLogs", path = "/admin/logs", tag = "logs", params(LogQuery, LogPaging),
    security(("bearer" = [])),
    responses((status = 200, body = LogPage), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    q: Result<Query<LogQuery>, QueryRejection>,
    paging: Result<Query<LogPaging>, QueryRejection>,
) -> ApiResult<axum::Json<LogPage>> {
    let page = control::list(&state, &user, query(q)?, query(paging)?).await?;
    Ok(axum::Json(page))
}

/// Get one request log row.
#[utoipa::path(get, operation_id = "getLog", path = "/admin/logs/{id}", tag = "logs", params(("id" = String, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = LogView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<LogView>> {
    Ok(axum::Json(control::get(&state, &user, &id).await?))
}

/// Export the filtered request log as CSV or NDJSON, newest first, streamed from the database
/// in chunks (`limit` and `cursor` do not apply: the whole filtered range is exported).
#[utoipa::path(get, operation_id = "exportLogs", path = "/admin/logs/export", tag = "logs", params(ExportQuery, LogQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "The matching rows, oldest first, in the asked format",
            content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, body = Problem)))]
pub async fn export(
    State(state): State<AppState>,
    user: AuthUser,
    q: Result<Query<LogQuery>, QueryRejection>,
    x: Result<Query<ExportQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let format = query(x)?.format;
    let export = control::export(&state, &user, query(q)?, format.as_deref())?;
    let format = export.format();
    let filename = format!(
        "attachment; filename=\"keygate-logs-{}.{}\"",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        format.extension()
    );
    let stream = futures::stream::unfold(export, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    });
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (header::CONTENT_DISPOSITION, filename),
        ],
        Body::from_stream(stream),
    ))
}
