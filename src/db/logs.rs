//! Request logs: retention (partition upkeep on Postgres) and reads. Rows are written by `events::log_writer`.
use std::time::Duration;

use super::entity::request_log;
use super::log_partitions;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};

/// Keeps `request_logs` within the retention once an hour, starting at once (0 days keeps rows
/// forever). On Postgres it also creates the daily partitions ahead of time, so the first run of
/// a fresh deploy makes tomorrow's, and retention drops whole days rather than deleting rows.
pub async fn run_retention(db: DatabaseConnection, retention_days: u32) {
    let partitioned = match log_partitions::partitioned(&db).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether request_logs is partitioned; deleting by time");
            false
        }
    };
    if retention_days == 0 && !partitioned {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = prune(&db, retention_days).await {
            tracing::warn!(error = %e, "request log retention failed");
        }
    }
}

/// One retention pass at the current time; see [`prune_at`].
pub async fn prune(db: &DatabaseConnection, days: u32) -> Result<Pruned, DbErr> {
    prune_at(db, days, chrono::Utc::now()).await
}

/// What a retention pass removed (and, on Postgres, the partitions it created).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rows_deleted: u64,
    pub partitions: log_partitions::Changes,
}

/// Removes logs older than `days` before `now` (0 removes nothing): on a partitioned Postgres
/// table by dropping whole days after making sure the days ahead of `now` have partitions;
/// elsewhere by deleting rows by time.
pub async fn prune_at(
    db: &DatabaseConnection,
    days: u32,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Pruned, DbErr> {
    let cutoff = (days > 0).then(|| now - chrono::Duration::days(days as i64));
    if log_partitions::partitioned(db).await? {
        let changes = log_partitions::maintain(db, now, cutoff).await?;
        if !changes.created.is_empty() || !changes.dropped.is_empty() || changes.deleted > 0 {
            tracing::info!(created = ?changes.created, dropped = ?changes.dropped, deleted = changes.deleted, "request log partitions maintained");
        }
        return Ok(Pruned {
            rows_deleted: changes.deleted,
            partitions: changes,
        });
    }
    let Some(cutoff) = cutoff else {
        return Ok(Pruned::default());
    };
    let rows_deleted = request_log::Entity::delete_many()
        .filter(request_log::Column::Ts.lt(cutoff))
        .exec(db)
        .await?
        .rows_affected;
    if rows_deleted > 0 {
        tracing::info!(
            rows = rows_deleted,
            "request logs past the retention deleted"
        );
    }
    Ok(Pruned {
        rows_deleted,
        partitions: Default::default(),
    })
}

pub async fn count_for_service(db: &DatabaseConnection, slug: &str) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    request_log::Entity::find()
        .filter(request_log::Column::Service.eq(slug))
        .count(db)
        .await
}
