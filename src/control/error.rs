//! What an application service can answer besides success. The admin API maps each variant to
//! an HTTP status and a problem+json body (`admin::error`); the CLI maps it to an exit code
//! (`cli`). Infrastructure errors are classified here and only here: unique violation ->
//! conflict, missing row -> not found, pool exhausted -> unavailable, anything else -> internal.
use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
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

pub type Result<T> = std::result::Result<T, Error>;

impl From<DbErr> for Error {
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
        } else if matches!(e, DbErr::RecordNotUpdated) {
            // The row was there when the service read it and gone when it wrote: deleted by a
            // request in between. To the caller it is simply not found (any more).
            Self::NotFound("record not found (deleted meanwhile)".into())
        } else if crate::db::is_pool_exhausted(&e) {
            tracing::warn!(error = %e, "database unavailable");
            Self::Unavailable
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<crate::coord::CoordError> for Error {
    fn from(e: crate::coord::CoordError) -> Self {
        Self::Internal(e.into())
    }
}
