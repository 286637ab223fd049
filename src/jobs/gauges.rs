//! `keygate_keys{slug,status}`: how many upstream keys each service has in each status, counted
//! every 15 s from the durable status in the database and the live one in the coordination store
//! (cooling keys), as the key list shows them. Every replica reports the same figures.
use std::collections::BTreeMap;
use std::time::Duration;

use crate::coord::now_ms;
use crate::db;
use crate::domain::KeyStatus;
use crate::state::AppState;
use crate::telemetry::metrics as m;

const EVERY: Duration = Duration::from_secs(15);
const STATUSES: [KeyStatus; 5] = [
    KeyStatus::Active,
    KeyStatus::Cooling,
    KeyStatus::Exhausted,
    KeyStatus::Invalid,
    KeyStatus::Disabled,
];

pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.db_health.is_down() {
            continue;
        }
        if let Err(e) = count(&state).await {
            tracing::debug!(error = %e, "key status gauges not updated");
        }
    }
}

/// Counts once and sets the gauges (every status of every service, zeros included, so a status
/// that empties shows 0 rather than its last value).
pub async fn count(state: &AppState) -> anyhow::Result<BTreeMap<(String, &'static str), u64>> {
    let services = db::services::all(&state.db).await?;
    let keys = db::keys::statuses(&state.db).await?;
    let refs: Vec<crate::coord::KeyRef> = keys
        .iter()
        .map(|k| crate::coord::KeyRef {
            service_id: k.1,
            key_id: k.0,
        })
        .collect();
    let live = state.coord.live_states(&refs).await?;
    let now = now_ms();
    let slug_of: BTreeMap<i64, &str> = services.iter().map(|s| (s.id, s.slug.as_str())).collect();
    let mut counts: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for s in &services {
        for st in STATUSES {
            counts.insert((s.slug.clone(), st.as_str()), 0);
        }
    }
    for ((_, service_id, stored), l) in keys.iter().zip(live.iter()) {
        let Some(slug) = slug_of.get(service_id) else {
            continue;
        };
        *counts
            .entry((slug.to_string(), l.key_status(stored, now).as_str()))
            .or_insert(0) += 1;
    }
    for ((slug, status), n) in &counts {
        metrics::gauge!(m::KEYS, "slug" => slug.clone(), "status" => *status).set(*n as f64);
    }
    Ok(counts)
}
