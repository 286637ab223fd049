//! Whether the database answers, kept by one probe per replica so that callers never wait on a
//! dead database: the admin API answers 503 at once and `/readyz` says `database: down`, while
//! the data plane goes on serving from its snapshot and the request logs spool.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sea_orm::DatabaseConnection;

use crate::telemetry::metrics as m;

/// How often the probe pings, and how long one ping may take.
const EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(1);
const FAILURES: u32 = 3;

#[derive(Debug, Default)]
pub struct DbHealth {
    down: AtomicBool,
}

impl DbHealth {
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// One ping, bounded: true when the database answered in time.
    pub async fn ping(db: &DatabaseConnection) -> bool {
        tokio::time::timeout(PING_TIMEOUT, db.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Pings every second for the life of the process; says each change of state once. Down
    /// takes `FAILURES` missed pings in a row (a slow moment under load is not an outage); up,
    /// one answer. An embedded SQLite file is not probed: it cannot be unreachable.
    pub async fn run(self: std::sync::Arc<Self>, db: DatabaseConnection) {
        metrics::gauge!(m::DB_UP).set(1.0);
        if db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return;
        }
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut missed = 0u32;
        loop {
            tick.tick().await;
            missed = if Self::ping(&db).await { 0 } else { missed + 1 };
            let up = missed < FAILURES;
            if !up && missed > FAILURES {
                continue;
            }
            let was_down = self.down.swap(!up, Ordering::Relaxed);
            if was_down == up {
                metrics::gauge!(m::DB_UP).set(if up { 1.0 } else { 0.0 });
                if up {
                    tracing::info!("the database answers again");
                } else {
                    tracing::warn!(
                        "the database does not answer: admin requests get 503, the data plane serves from its snapshot and request logs spool"
                    );
                }
            }
        }
    }
}
