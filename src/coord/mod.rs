//! Coordination store: everything that changes per request and must agree across replicas
//! (round-robin cursors, key health, config version). Two implementations with one behaviour:
//! `memory` for a single process, `redis` (Lua scripts, one round trip per call) for many.
pub mod memory;
pub mod redis;

use std::time::{SystemTime, UNIX_EPOCH};

/// The key chosen for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index into the candidate list that was passed in.
    pub index: usize,
    /// Consecutive failures recorded for the key before this attempt.
    pub fails: u32,
}

/// What happened on an attempt, as far as the key's health is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 401/403: out of rotation until re-enabled.
    Invalid,
    /// 429 and similar: out of rotation for `ms`.
    Cool { ms: u64 },
    /// 5xx, connect error, timeout: counts towards `threshold`, then out for `ms`.
    Fail { threshold: u32, ms: u64 },
    /// Success: resets the failure count.
    Ok,
    /// Re-enabled by an operator: forget all state.
    Clear,
}

/// The key's state after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub fails: u32,
    /// ms epoch the key is out of rotation until; 0 = in rotation, -1 = until re-enabled.
    pub until: i64,
}

/// Live state of a key, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveState {
    pub until: i64,
    pub fails: u32,
    pub reason: Option<String>,
}

impl LiveState {
    /// The status the key shows while out of rotation (`invalid`, `exhausted`, `cooling`), or None
    /// when it is in rotation, as seen at `now_ms`.
    pub fn status(&self, now_ms: i64) -> Option<&str> {
        if self.until == -1 {
            Some(self.reason.as_deref().unwrap_or("invalid"))
        } else if self.until > now_ms {
            Some("cooling")
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("unexpected script reply: {0}")]
    Reply(String),
}

impl CoordError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Pool(_) => "pool",
            Self::Reply(_) => "reply",
        }
    }
}

/// Closed dispatch over the two stores (no boxed trait object on the hot path).
#[derive(Clone)]
pub enum Coord {
    Memory(memory::MemoryStore),
    Redis(redis::RedisStore),
}

impl Coord {
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// Advances the service's cursor and returns the first usable key from there.
    pub async fn select_round_robin(
        &self,
        service_id: i64,
        key_ids: &[i64],
    ) -> Result<Option<Pick>, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.select_round_robin(service_id, key_ids)),
            Self::Redis(r) => r.select_round_robin(service_id, key_ids).await,
        }
    }

    pub async fn report(
        &self,
        key_id: i64,
        outcome: &Outcome,
        reason: &str,
    ) -> Result<Report, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.report(key_id, outcome, reason)),
            Self::Redis(r) => r.report(key_id, outcome, reason).await,
        }
    }

    pub async fn live_states(&self, key_ids: &[i64]) -> Result<Vec<LiveState>, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.live_states(key_ids)),
            Self::Redis(r) => r.live_states(key_ids).await,
        }
    }

    pub async fn config_version(&self) -> Result<u64, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.config_version()),
            Self::Redis(r) => r.config_version().await,
        }
    }

    /// Announces a control-plane change; every replica reloads its snapshot when it sees it.
    pub async fn bump_config_version(&self) -> Result<u64, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.bump_config_version()),
            Self::Redis(r) => r.bump_config_version().await,
        }
    }

    pub async fn ping(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(r) => r.ping().await,
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
