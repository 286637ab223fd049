//! The key-status sink: durable status changes from the data plane -> `upstream_keys`.
use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;

use super::KeyStatusChange;

pub async fn run(db: DatabaseConnection, mut rx: mpsc::UnboundedReceiver<KeyStatusChange>) {
    while let Some(c) = rx.recv().await {
        if let Err(e) = crate::db::keys::set_status(&db, c.key_id, c.status, &c.reason).await {
            tracing::warn!(error = %e, key_id = c.key_id, "could not persist key status");
        }
    }
}
