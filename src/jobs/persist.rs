//! Keeps the database true to the coordination store's money and statistics: each key's
//! requests, successes, failures by class, tokens and cost since the last flush (taken atomically,
//! so every replica may flush without counting anything twice), its live balance and when it was
//! last used, and each budgeted access key's spend. Runs every `jobs.persist_interval_ms` and once
//! more at shutdown.
use std::time::Duration;

use crate::db;
use crate::state::AppState;

pub async fn run(state: AppState) {
    let every = Duration::from_millis(state.config.jobs.persist_interval_ms.max(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = state.events.on_shutdown();
    loop {
        tokio::select! {
            done = &mut shutdown => {
                flush(&state).await;
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            _ = tick.tick() => flush(&state).await,
        }
    }
}

/// One flush; failures are logged and the figures stay in the store for the next one (the
/// counters are only taken when the keys can be listed; a failed write loses that key's delta,
/// which the WARN says).
pub async fn flush(state: &AppState) {
    match db::keys::all_ids(&state.db).await {
        Ok(ids) => match state
            .coord
            .take_stats(
                &ids.iter()
                    .map(|(key, service)| crate::coord::KeyRef::new(*service, *key))
                    .collect::<Vec<_>>(),
            )
            .await
        {
            Ok(stats) => {
                for ((id, _), s) in ids.iter().zip(stats) {
                    if s.is_empty() && s.balance.is_none() && s.last_used == 0 {
                        continue;
                    }
                    if let Err(e) = db::keys::add_stats(&state.db, *id, &s).await {
                        tracing::warn!(key_id = id, error = %e, "key statistics not persisted");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read key statistics from the store"),
        },
        Err(e) => tracing::debug!(error = %e, "key statistics flush skipped"),
    }
    let budgeted: Vec<(i64, i64)> = state
        .snapshot
        .load()
        .access_keys
        .values()
        .filter(|a| a.limits.budget.is_some())
        .map(|a| (a.id, a.limits.spent))
        .collect();
    if budgeted.is_empty() {
        return;
    }
    let ids: Vec<i64> = budgeted.iter().map(|(id, _)| *id).collect();
    match state.coord.spent(&ids).await {
        Ok(live) => {
            for ((id, stored), live) in budgeted.into_iter().zip(live) {
                if let Some(spent) = live.filter(|s| *s != stored)
                    && let Err(e) = db::access_keys::set_spent(&state.db, id, spent).await
                {
                    tracing::warn!(access_key_id = id, error = %e, "spend not persisted");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read access-key spend from the store"),
    }
}
