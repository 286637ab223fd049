//! The key-status sink: durable status changes from the data plane -> `upstream_keys`,
//! coalesced so that each key gets at most one database write per second. During an upstream
//! outage every request faults a key; without coalescing that is one UPDATE per request.
//!
//! The first change of a key is written at once; changes within the next second are merged and
//! written when it ends. Merging keeps the outcome of applying them all in order (the latest
//! durable status and the latest reason), so nothing is lost: the last change is always written.
//! A write that fails is kept and retried; pending changes are flushed on shutdown.
use std::collections::HashMap;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Events, KeyStatusChange};
use crate::telemetry::metrics as m;

const WINDOW: Duration = Duration::from_secs(1);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub async fn run(
    db: DatabaseConnection,
    events: Events,
    mut rx: mpsc::UnboundedReceiver<KeyStatusChange>,
) {
    let mut shutdown = events.on_shutdown();
    let epochs = events.key_epochs();
    // Only the shutdown hook is needed; a sender held here would keep the channel open.
    drop(events);
    let mut sink = Sink {
        db,
        keys: HashMap::new(),
        failing: false,
        epochs,
    };
    loop {
        let due = sink.next_due();
        tokio::select! {
            done = &mut shutdown => {
                rx.close();
                while let Some(c) = rx.recv().await {
                    sink.merge(c, Instant::now());
                }
                sink.flush_all().await;
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            c = rx.recv() => {
                let Some(c) = c else {
                    sink.flush_all().await;
                    return;
                };
                let now = Instant::now();
                sink.merge(c, now);
                // Take whatever else is queued before writing: it may belong to the same window.
                while let Ok(c) = rx.try_recv() {
                    sink.merge(c, now);
                }
                sink.write_due(Instant::now()).await;
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                sink.write_due(Instant::now()).await;
            }
        }
    }
}

struct Sink {
    db: DatabaseConnection,
    keys: HashMap<i64, Key>,
    /// Writes are failing: one WARN when they start to, one INFO when they work again.
    failing: bool,
    epochs: std::sync::Arc<super::KeyEpochs>,
}

#[derive(Default)]
struct Key {
    /// When the next write may happen (the end of the window opened by the last write).
    not_before: Option<Instant>,
    pending: Option<Pending>,
    /// Consecutive failed writes, for the retry backoff.
    failures: u32,
}

struct Pending {
    status: Option<&'static str>,
    reason: String,
    epoch: u64,
}

impl Sink {
    /// Folds a change into the key's pending write, as applying both in order would: `set_status`
    /// leaves the status alone when a change carries none, so an earlier durable status stays.
    fn merge(&mut self, c: KeyStatusChange, now: Instant) {
        let k = self.keys.entry(c.key_id).or_default();
        match &mut k.pending {
            // A change from a newer epoch replaces one made before the key was put back.
            Some(p) if p.epoch < c.epoch => {
                *p = Pending {
                    status: c.status,
                    reason: c.reason,
                    epoch: c.epoch,
                }
            }
            Some(p) => {
                if c.status.is_some() {
                    p.status = c.status;
                }
                p.reason = c.reason;
            }
            None => {
                k.pending = Some(Pending {
                    status: c.status,
                    reason: c.reason,
                    epoch: c.epoch,
                })
            }
        }
        // Keys whose window has passed and that have nothing pending need no memory.
        if self.keys.len() > 1024 {
            self.keys
                .retain(|_, k| k.pending.is_some() || k.not_before.is_some_and(|t| t > now));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.keys
            .values()
            .filter(|k| k.pending.is_some())
            .filter_map(|k| k.not_before)
            .min()
    }

    async fn write_due(&mut self, now: Instant) {
        let due: Vec<i64> = self
            .keys
            .iter()
            .filter(|(_, k)| k.pending.is_some() && k.not_before.is_none_or(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.write(id).await;
        }
    }

    async fn flush_all(&mut self) {
        let ids: Vec<i64> = self
            .keys
            .iter()
            .filter(|(_, k)| k.pending.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut lost = 0;
        for id in ids {
            if !self.write(id).await {
                lost += 1;
            }
        }
        if lost > 0 {
            tracing::warn!(
                keys = lost,
                "key status changes not persisted at shutdown (database unreachable)"
            );
        }
    }

    /// Writes the key's pending change; on failure keeps it for a retry after a backoff.
    async fn write(&mut self, id: i64) -> bool {
        let Some(k) = self.keys.get_mut(&id) else {
            return true;
        };
        let Some(p) = k.pending.take() else {
            return true;
        };
        if p.epoch < self.epochs.current(id) {
            // The key was put back in rotation after this change: it is stale.
            return true;
        }
        let res = tokio::time::timeout(
            WRITE_TIMEOUT,
            crate::db::keys::set_status(&self.db, id, p.status, &p.reason),
        )
        .await;
        let k = self.keys.get_mut(&id).expect("present above");
        let error = match res {
            Ok(Ok(())) => {
                metrics::counter!(m::KEY_STATUS_WRITES_TOTAL).increment(1);
                k.failures = 0;
                k.not_before = Some(Instant::now() + WINDOW);
                if self.failing {
                    self.failing = false;
                    tracing::info!("key status writes reach the database again");
                }
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        // Kept for a retry: the sink awaits its writes, so nothing newer was merged meanwhile.
        k.pending = Some(p);
        k.failures += 1;
        let backoff = (WINDOW * 2u32.saturating_pow(k.failures - 1)).min(RETRY_MAX);
        k.not_before = Some(Instant::now() + backoff);
        if !self.failing {
            self.failing = true;
            tracing::warn!(%error, key_id = id, "cannot persist key status; will retry");
        }
        false
    }
}
