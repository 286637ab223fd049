//! Request logs: retention and reads. Rows are written by `events::log_writer`.
use std::time::Duration;

use super::entity::request_log;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};

/// Deletes rows past the retention once an hour (0 days keeps them forever).
pub async fn run_retention(db: DatabaseConnection, retention_days: u32) {
    if retention_days == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = prune(&db, retention_days).await {
            tracing::warn!(error = %e, "request log retention prune failed");
        }
    }
}

pub async fn prune(db: &DatabaseConnection, days: u32) -> Result<u64, DbErr> {
    let cutoff = chrono::Utc::now() - chrono::Duration::days(days as i64);
    Ok(request_log::Entity::delete_many()
        .filter(request_log::Column::Ts.lt(cutoff))
        .exec(db)
        .await?
        .rows_affected)
}

pub async fn count_for_service(db: &DatabaseConnection, slug: &str) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    request_log::Entity::find()
        .filter(request_log::Column::Service.eq(slug))
        .count(db)
        .await
}
