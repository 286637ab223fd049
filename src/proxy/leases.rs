//! One lease renewer per process. A lease must outlive its TTL only while its request lives (a long
//! stream); instead of a timer task per request, held leases are registered here and one task
//! renews those that have reached a third of their TTL. Most requests end long before that, so
//! their only cost is an insert and a remove.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::coord::Lease;
use crate::state::AppState;

struct Entry {
    lease: Lease,
    ttl_ms: u64,
    renewed: Instant,
}

#[derive(Default)]
pub struct Renewer {
    held: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

/// How often the renewer looks; the shortest lease TTL is 1 s, renewed at a third of it.
const TICK: Duration = Duration::from_millis(250);

impl Renewer {
    pub fn add(&self, lease: Lease, ttl_ms: u64) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.held.lock().insert(
            id,
            Entry {
                lease,
                ttl_ms,
                renewed: Instant::now(),
            },
        );
        id
    }

    pub fn remove(&self, id: u64) {
        self.held.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn due(&self) -> Vec<(Lease, u64)> {
        let now = Instant::now();
        let mut due = Vec::new();
        for e in self.held.lock().values_mut() {
            if now.duration_since(e.renewed) >= Duration::from_millis(e.ttl_ms / 3) {
                e.renewed = now;
                due.push((e.lease.clone(), e.ttl_ms));
            }
        }
        due
    }
}

/// Renews due leases until the process stops.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = state.leases.due();
        if due.is_empty() {
            continue;
        }
        let renewals = due.iter().map(|(l, ttl)| state.coord.renew(l, *ttl));
        for r in futures::future::join_all(renewals).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "lease renewal failed");
            }
        }
    }
}
