//! The request-log sink: request events -> `request_logs` rows, in batches, off the hot path.
use std::time::Duration;

use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::sync::mpsc;

use super::{Events, RequestEvent};
use crate::db::entity::request_log;
use crate::telemetry::metrics as m;

const BATCH: usize = 500;

pub fn row(ev: &RequestEvent) -> request_log::ActiveModel {
    use sea_orm::ActiveValue::Set;
    let tokens = |n: u64| (n > 0).then_some(n.min(i32::MAX as u64) as i32);
    request_log::ActiveModel {
        id: Set(ev.id),
        ts: Set(ev.ts),
        service: Set(ev.service.clone()),
        access_key_id: Set(ev.access_key_id),
        upstream_key_id: Set(ev.upstream_key_id),
        model: Set(ev.model.clone()),
        path: Set(ev.path.chars().take(512).collect()),
        status: Set(ev.status as i32),
        attempts: Set(ev.attempts as i32),
        latency_ms: Set(ev.latency_ms as i64),
        ttft_ms: Set(ev.ttft_ms.map(|t| t as i64)),
        prompt_tokens: Set(tokens(ev.tokens.prompt)),
        completion_tokens: Set(tokens(ev.tokens.completion)),
        cost: Set(None),
        error_kind: Set(ev.error_kind.clone()),
    }
}

/// Drains request events into the database in batches of up to 500 rows or every 200 ms.
pub async fn run(db: DatabaseConnection, events: Events, mut rx: mpsc::Receiver<RequestEvent>) {
    let mut shutdown = events.on_shutdown();
    let mut buf: Vec<RequestEvent> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { break };
                buf.push(first);
                let deadline = tokio::time::sleep(Duration::from_millis(200));
                tokio::pin!(deadline);
                while buf.len() < BATCH {
                    tokio::select! {
                        m = rx.recv() => match m { Some(m) => buf.push(m), None => break },
                        _ = &mut deadline => break,
                    }
                }
                write(&db, &mut buf).await;
            }
            done = &mut shutdown => {
                rx.close();
                while let Some(ev) = rx.recv().await {
                    buf.push(ev);
                    if buf.len() >= BATCH {
                        write(&db, &mut buf).await;
                    }
                }
                write(&db, &mut buf).await;
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}

async fn write(db: &DatabaseConnection, buf: &mut Vec<RequestEvent>) {
    if buf.is_empty() {
        return;
    }
    let n = buf.len();
    metrics::gauge!(m::LOG_QUEUE_DEPTH).decrement(n as f64);
    let rows: Vec<_> = buf.drain(..).map(|e| row(&e)).collect();
    if let Err(e) = request_log::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await
    {
        tracing::warn!(error = %e, rows = n, "request log batch dropped");
    }
}
