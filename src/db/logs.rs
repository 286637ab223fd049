//! Request logs: written in batches by a background task, never on the request path.
use std::time::Duration;

use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use tokio::sync::mpsc;

use super::entity::request_log;

/// Drains the channel into the database in batches of up to 500 rows or every 500 ms.
pub async fn run_writer(
    db: DatabaseConnection,
    mut rx: mpsc::Receiver<request_log::ActiveModel>,
    retention_days: u32,
) {
    let mut buf = Vec::with_capacity(500);
    let mut last_prune = std::time::Instant::now() - Duration::from_secs(3600);
    loop {
        let first = rx.recv().await;
        let Some(first) = first else { break };
        buf.push(first);
        let deadline = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(deadline);
        while buf.len() < 500 {
            tokio::select! {
                m = rx.recv() => match m { Some(m) => buf.push(m), None => break },
                _ = &mut deadline => break,
            }
        }
        let n = buf.len();
        if let Err(e) = request_log::Entity::insert_many(std::mem::take(&mut buf))
            .exec_without_returning(&db)
            .await
        {
            tracing::warn!(error = %e, rows = n, "request log batch dropped");
        }
        if retention_days > 0 && last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = std::time::Instant::now();
            if let Err(e) = prune(&db, retention_days).await {
                tracing::warn!(error = %e, "request log retention prune failed");
            }
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
