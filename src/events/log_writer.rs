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
    // 0 tokens means the upstream reported none: stored as NULL (unknown), not as a count.
    let tokens = |n: u64| (n > 0).then_some(n.min(i64::MAX as u64) as i64);
    request_log::ActiveModel {
        id: Set(ev.id),
        ts: Set(ev.ts),
        service: Set(ev.service.clone()),
        access_key_id: Set(ev.access_key_id),
        upstream_key_id: Set(ev.upstream_key_id),
        model: Set(ev.model.clone()),
        path: Set(ev.path.chars().take(512).collect()),
        status: Set(ev.status as i32),
        attempts: Set(ev.attempts.min(i32::MAX as u32) as i32),
        latency_ms: Set(ev.latency_ms.min(i64::MAX as u64) as i64),
        ttft_ms: Set(ev.ttft_ms.map(|t| t.min(i64::MAX as u64) as i64)),
        prompt_tokens: Set(tokens(ev.tokens.prompt)),
        completion_tokens: Set(tokens(ev.tokens.completion)),
        cache_read_tokens: Set(tokens(ev.tokens.cache_read)),
        cache_write_tokens: Set(tokens(ev.tokens.cache_write)),
        cost_micros: Set(ev.cost_micros),
        error_kind: Set(ev.error_kind.clone()),
        upstream_model: Set(ev.upstream_model.clone()),
        streamed: Set(ev.streamed),
        cancelled: Set(ev.cancelled),
        estimated: Set(ev.estimated),
        client_format: Set(Some(ev.client_format.to_string())),
        upstream_format: Set(Some(ev.upstream_format.to_string())),
        // A request that never reached a key tried none: NULL rather than `[]`.
        tried: Set(
            (!ev.tried.is_empty()).then(|| serde_json::to_string(&ev.tried).unwrap_or_default())
        ),
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
