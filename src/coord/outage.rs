//! Redis outages. While Redis does not answer, each replica coordinates its own requests in its
//! in-process store (degraded mode) with its share of every limit, or, when the operator chose
//! fail-closed, refuses them at once. Either way the state change is said once (a WARN, a gauge
//! and a counter), not per request, and a probe brings the replica back to Redis by itself.
//!
//! What degraded mode gives up, documented for operators: rotation and leases are exact per
//! replica rather than across replicas; per-key and per-client limits are divided by the number
//! of replicas last seen alive (so their sum stays within the limit); budgets admit a replica's
//! share of what was left; live figures are not counted; key state (cooldowns, balances spent)
//! made during the outage stays in the replica that made it. Statistics of the requests served
//! are flushed to the database as usual.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::{ClientLimits, KeySet, KeySpec};
use crate::telemetry::metrics as m;

/// What a replica does while Redis is unreachable (`redis.on_outage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOutage {
    /// Serve from the in-process store with a share of the limits (the default).
    Degrade,
    /// Refuse data-plane requests with 503 until Redis answers again.
    Fail,
}

#[derive(Debug)]
pub struct Outage {
    down: AtomicBool,
    pub mode: OnOutage,
    /// Replicas seen alive in the last heartbeat window (at least 1).
    replicas: AtomicU32,
}

impl Outage {
    pub fn new(mode: OnOutage) -> Arc<Self> {
        Arc::new(Self {
            down: AtomicBool::new(false),
            mode,
            replicas: AtomicU32::new(1),
        })
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    pub fn set_replicas(&self, n: u32) {
        self.replicas.store(n.max(1), Ordering::Relaxed);
    }

    /// Redis failed a call: the first caller to see it turns the replica degraded (or
    /// fail-closed) and starts the probe that turns it back. True when this call did.
    pub fn went_down(self: &Arc<Self>, why: &dyn std::fmt::Display, probe: impl Prober) -> bool {
        if self.down.swap(true, Ordering::AcqRel) {
            return false;
        }
        metrics::gauge!(m::COORD_DEGRADED).set(1.0);
        metrics::counter!(m::COORD_OUTAGES_TOTAL).increment(1);
        match self.mode {
            OnOutage::Degrade => {
                tracing::warn!(error = %why, replicas = self.replicas(), "Redis is unreachable: coordinating in process with this replica's share of the limits until it answers")
            }
            OnOutage::Fail => {
                tracing::warn!(error = %why, "Redis is unreachable: refusing requests (redis.on_outage = fail) until it answers")
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if probe.ping().await {
                    me.down.store(false, Ordering::Release);
                    metrics::gauge!(m::COORD_DEGRADED).set(0.0);
                    tracing::info!("Redis answers again: coordinating across replicas");
                    return;
                }
            }
        });
        true
    }
}

/// Asks Redis whether it answers (the probe's one call).
pub trait Prober: Send + 'static {
    fn ping(&self) -> impl std::future::Future<Output = bool> + Send;
}

/// `limit` split over `n` replicas, never below 1 (a limit of 0 stays 0: it admits nothing).
fn share(limit: u32, n: u32) -> u32 {
    if limit == 0 {
        0
    } else {
        limit.div_ceil(n).max(1)
    }
}

/// The keys with each one's rate limits split over `n` replicas.
pub fn keys_share(keys: &KeySet, n: u32) -> KeySet {
    let specs: Vec<KeySpec> = keys
        .specs
        .iter()
        .map(|k| KeySpec {
            rpm: k.rpm.map(|l| share(l, n)),
            tpm: k.tpm.map(|l| share(l, n)),
            ..k.clone()
        })
        .collect();
    KeySet::new(specs)
}

/// The client's limits split over `n` replicas; its budget admits a share of what is left.
pub fn client_share(c: ClientLimits, n: u32) -> ClientLimits {
    ClientLimits {
        rpm: c.rpm.map(|l| share(l, n)),
        rpd: c.rpd.map(|l| share(l, n)),
        tpm: c.tpm.map(|l| share(l, n)),
        budget: c
            .budget
            .map(|b| c.spent + (b - c.spent).max(0) / i64::from(n.max(1))),
        ..c
    }
}

/// A connection-level Redis failure (refused, reset, timed out), as opposed to a script error
/// or an unexpected reply, which an in-process store would not cure.
pub fn is_outage(e: &super::CoordError) -> bool {
    match e {
        super::CoordError::Redis(e) => {
            e.is_io_error()
                || e.is_connection_refusal()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error()
                // A Redis Cluster that lost a slot's primary answers CLUSTERDOWN until it heals;
                // a demoted primary answers READONLY until the Sentinels name another.
                || matches!(
                    e.kind(),
                    redis::ErrorKind::Server(
                        redis::ServerErrorKind::ClusterDown | redis::ServerErrorKind::ReadOnly
                    )
                )
        }
        super::CoordError::Reply(_) | super::CoordError::Unavailable => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_split_over_replicas_rounding_up_and_zero_stays_zero() {
        assert_eq!(share(10, 2), 5);
        assert_eq!(share(10, 3), 4);
        assert_eq!(share(1, 4), 1);
        assert_eq!(share(0, 4), 0);
        let c = ClientLimits {
            access_key_id: 1,
            rpm: Some(10),
            rpd: None,
            tpm: Some(1000),
            budget: Some(1_000),
            spent: 400,
        };
        let s = client_share(c, 2);
        assert_eq!((s.rpm, s.rpd, s.tpm), (Some(5), None, Some(500)));
        assert_eq!(
            s.budget,
            Some(700),
            "the spent 400 plus half of the 600 left"
        );
    }
}
