//! Control-plane errors as `application/problem+json` (RFC 9457). Infrastructure errors map to HTTP
//! here and only here: not found -> 404, unique violation -> 409, pool exhausted -> 503, anything
//! else -> an opaque 500 with the cause chain logged.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sea_orm::DbErr;
use serde::Serialize;
use utoipa::ToSchema;

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("the database is busy; try again")]
    Unavailable,
    #[error(
        "the database is unreachable: the admin API is unavailable until it answers (the data plane keeps serving); /readyz says when"
    )]
    DatabaseDown,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<DbErr> for ApiError {
    fn from(e: DbErr) -> Self {
        if crate::db::is_unique_violation(&e) {
            Self::Conflict("a record with the same unique value already exists".into())
        } else if matches!(
            e.sql_err(),
            Some(sea_orm::SqlErr::ForeignKeyConstraintViolation(_))
        ) {
            Self::BadRequest("a referenced record (e.g. tenant_id) does not exist".into())
        } else if matches!(e, DbErr::RecordNotFound(_)) {
            Self::NotFound("record not found".into())
        } else if crate::db::is_pool_exhausted(&e) {
            tracing::warn!(error = %e, "database unavailable");
            Self::Unavailable
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<crate::coord::CoordError> for ApiError {
    fn from(e: crate::coord::CoordError) -> Self {
        Self::Internal(e.into())
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable | Self::DatabaseDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "validation",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::TooLarge(_) => "payload-too-large",
            Self::Unsupported(_) => "unsupported-media-type",
            Self::Unavailable | Self::DatabaseDown => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(e) => {
                tracing::error!(error = ?e, "admin request failed");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        let p = Problem {
            kind: format!("https://keygate.dev/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
        };
        let mut resp = (status, axum::Json(p)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON body extractor whose rejections are problem+json naming what was wrong.
pub struct Json<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            // A body of the wrong shape: serde's message leads with the field's path and, for an
            // enum, lists the allowed values (`kind: unknown variant `cohere`, expected one of
            // `openai`, ...`). The generic prefix would push the field name out of the lead.
            Err(JsonRejection::JsonDataError(e)) => {
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&text);
                Err(ApiError::BadRequest(detail.to_string()))
            }
            Err(rej) => Err(ApiError::BadRequest(rej.body_text())),
        }
    }
}

/// Cursor pagination: `?cursor=<last id>&limit=<n>` (default 100, at most 1000).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct Page {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u64>,
}

impl Page {
    pub fn after(&self) -> ApiResult<Option<i64>> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest("cursor: not a cursor from this API".into()))
            })
            .transpose()
    }

    pub fn limit(&self) -> ApiResult<u64> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=1000) => Ok(n),
            Some(_) => Err(ApiError::BadRequest(
                "limit: must be between 1 and 1000".into(),
            )),
        }
    }
}

/// `{"items": [...], "next_cursor": "..."}`
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> List<T> {
    /// Builds a page; `ids` are the ids of `items` in order, `limit` the page size asked for.
    pub fn page(items: Vec<T>, last_id: Option<i64>, limit: u64) -> Self {
        let next_cursor = (items.len() as u64 == limit)
            .then_some(last_id)
            .flatten()
            .map(|i| i.to_string());
        Self { items, next_cursor }
    }
}
