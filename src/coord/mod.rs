//! Coordination store: everything that changes per request and must agree across replicas (key
//! choice, leases, health, rate limits, config version). Two implementations with one behaviour,
//! proven by one contract test suite: `memory` for a single process, `redis` (versioned Lua
//! scripts, one round trip per call, on a single Redis or a Redis Cluster) for many replicas.
//!
//! Per attempt the data plane makes one `acquire` call (client rate limits + key choice + lease),
//! then either `release` (the key answered; usage and success, off the client's critical path) or
//! `report` (the key failed; health transition and lease release) before trying another key. On
//! Redis, an access key with limits or a budget keeps them in its own slot: its first attempt
//! then makes two concurrent calls (the client's and the key's), never more.
pub mod memory;
mod observed;
pub mod outage;
pub mod redis;
pub mod sentinel;

pub(crate) use observed::Observed;

use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Instrument;

use crate::domain::KeyStatus;
pub use crate::domain::Strategy;

/// What the store needs to know about one key of the service (from the config snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub id: i64,
    pub weight: u32,
    /// Upstream key's own limits (None = unlimited).
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    /// Balance recorded in the database, in micro-units (`crate::money`); seeds the live balance.
    pub balance: Option<i64>,
    /// Relative price of the key in millionths (1_000_000 = list price), for the `cost` strategy.
    pub cost_ppm: u32,
}

/// A key's cost factor at list price.
pub const LIST_PRICE_PPM: u32 = 1_000_000;

/// A service's keys as the store is given them, with the compact form the Lua script takes built
/// once (when the config snapshot loads), not per request.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySet {
    pub specs: Vec<KeySpec>,
    /// `;index:weight:rpm:tpm:balance:cost...` for keys with anything but the defaults (1-based
    /// index; each entry starts with `;`, so the script can find one key's alone).
    overrides: String,
}

impl KeySet {
    pub fn new(specs: Vec<KeySpec>) -> Self {
        Self::build(specs, true)
    }

    /// The set a service with `strategy` needs: only the `balance` strategy reads balances in
    /// the acquire script (the release seeds a live balance from the key's own spec), so the
    /// others leave them out of the per-call argument and keep it empty in the common case.
    pub fn for_strategy(specs: Vec<KeySpec>, strategy: Strategy) -> Self {
        Self::build(specs, strategy == Strategy::Balance)
    }

    fn build(specs: Vec<KeySpec>, balances: bool) -> Self {
        let overrides = specs
            .iter()
            .enumerate()
            .filter(|(_, k)| {
                k.weight > 1
                    || k.rpm.is_some()
                    || k.tpm.is_some()
                    || (balances && k.balance.is_some())
                    || k.cost_ppm != LIST_PRICE_PPM
            })
            .map(|(i, k)| {
                format!(
                    ";{}:{}:{}:{}:{}:{}",
                    i + 1,
                    k.weight.max(1),
                    k.rpm.unwrap_or(0),
                    k.tpm.unwrap_or(0),
                    k.balance
                        .filter(|_| balances)
                        .map(|b| b.to_string())
                        .unwrap_or_default(),
                    k.cost_ppm
                )
            })
            .collect::<String>();
        Self { specs, overrides }
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

impl std::ops::Deref for KeySet {
    type Target = [KeySpec];
    fn deref(&self) -> &[KeySpec] {
        &self.specs
    }
}

/// A key and the service it belongs to: the store keeps a key's state with its service's (one
/// Redis Cluster slot per service), so naming a key takes both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef {
    pub service_id: i64,
    pub key_id: i64,
}

impl KeyRef {
    pub fn new(service_id: i64, key_id: i64) -> Self {
        Self { service_id, key_id }
    }

    /// The key ids of `keys`, in order (the in-process store needs no more).
    pub fn ids(keys: &[KeyRef]) -> Vec<i64> {
        keys.iter().map(|k| k.key_id).collect()
    }
}

/// Limits of the access key a request came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    pub access_key_id: i64,
    pub rpm: Option<u32>,
    pub rpd: Option<u32>,
    pub tpm: Option<u32>,
    /// Budget in micro-units (None = unlimited).
    pub budget: Option<i64>,
    /// What the database says was spent: seeds the live figure the first time it is needed.
    pub spent: i64,
}

impl ClientLimits {
    pub fn is_limited(&self) -> bool {
        self.rpm.is_some() || self.rpd.is_some() || self.tpm.is_some() || self.budget.is_some()
    }
}

/// What an attempt's outcome counts as in a key's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatClass {
    /// The key answered with this 4xx (a refusal, a rate limit, or a client error passed on).
    Client(u16),
    /// The key answered with this 5xx.
    Server(u16),
    /// No answer: timeout or connection error.
    Network,
}

impl StatClass {
    pub(crate) fn script_name(self) -> &'static str {
        match self {
            Self::Client(_) => "4xx",
            Self::Server(_) => "5xx",
            Self::Network => "net",
        }
    }

    /// The attempt's HTTP status, 0 for no answer (how `failures_by_status` counts it).
    pub fn status(self) -> u16 {
        match self {
            Self::Client(s) | Self::Server(s) => s,
            Self::Network => 0,
        }
    }
}

/// A key's statistics since they were last taken, and its live money (`take_stats`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyStats {
    pub requests: i64,
    pub successes: i64,
    pub failures_4xx: i64,
    pub failures_5xx: i64,
    pub failures_network: i64,
    pub tokens: i64,
    pub cost: i64,
    /// The live balance in micro-units, when the store holds one.
    pub balance: Option<i64>,
    /// ms epoch the key was last given to a request (0 = never).
    pub last_used: i64,
    /// Attempts that did not succeed, by the HTTP status the key answered (0 = no answer).
    pub failures_by_status: std::collections::BTreeMap<u16, i64>,
}

impl KeyStats {
    /// Adds `other`'s counts (the balance and last use: the newer or present one).
    pub fn merge(&mut self, other: KeyStats) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.failures_4xx += other.failures_4xx;
        self.failures_5xx += other.failures_5xx;
        self.failures_network += other.failures_network;
        self.tokens += other.tokens;
        self.cost += other.cost;
        self.balance = self.balance.or(other.balance);
        self.last_used = self.last_used.max(other.last_used);
        for (code, n) in other.failures_by_status {
            *self.failures_by_status.entry(code).or_insert(0) += n;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
            && self.tokens == 0
            && self.cost == 0
            && self.failures_by_status.is_empty()
    }
}

/// Health and lease settings, fixed per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive failures (5xx, timeout, connect error) that take a key out.
    pub failure_threshold: u32,
    /// How long a tripped key stays out before a half-open trial request.
    pub recovery_ms: u64,
    /// First 429 backoff without Retry-After; doubles per consecutive 429, up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// 429s from at least `upstream_wide_percent` of a service's keys (and at least 2) within
    /// `upstream_wide_window_ms` mean the limit is upstream-wide: the service backs off instead.
    pub upstream_wide_window_ms: u64,
    pub upstream_wide_percent: u32,
    /// How long a half-open trial holds the key before another trial may start.
    pub probe_lock_ms: u64,
    /// Time constant of the peak-EWMA latency the `latency` strategy reads.
    pub latency_tau_ms: u64,
    /// Time constant of the decayed success counts the `success_rate` strategy reads.
    pub success_tau_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            recovery_ms: 30_000,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            upstream_wide_window_ms: 10_000,
            upstream_wide_percent: 60,
            probe_lock_ms: 30_000,
            latency_tau_ms: 10_000,
            success_tau_ms: 60_000,
        }
    }
}

/// One acquire call.
#[derive(Debug, Clone)]
pub struct AcquireReq<'a> {
    pub service_id: i64,
    pub strategy: Strategy,
    pub keys: &'a KeySet,
    /// Keys already tried by this request.
    pub excluded: &'a [i64],
    /// Per-key concurrency cap.
    pub cap: Option<u32>,
    pub lease_ttl_ms: u64,
    /// Charged on the first attempt of a request only.
    pub client: Option<ClientLimits>,
    /// Price of the request in micro-units when known (balance strategy).
    pub price: Option<i64>,
    /// Session affinity: the request's session, when the service binds sessions to keys.
    pub session: Option<&'a Session>,
    /// Micro-units set aside from the client's budget on the first attempt (its estimated
    /// price); the release settles it against the real cost.
    pub reserve: i64,
}

/// A session bound to a key (session affinity), named by a hash so that client identifiers never
/// reach the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Hex of a hash of the service and the client's session key.
    pub id: String,
    /// Where an unbound session starts looking for a key: the same on every replica.
    pub start: u64,
    pub ttl_ms: u64,
}

impl Session {
    pub fn new(service_id: i64, key: &str, ttl_ms: u64) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(service_id.to_be_bytes());
        h.update(key.as_bytes());
        let d = h.finalize();
        let start = u64::from_be_bytes(d[..8].try_into().unwrap_or_default());
        Self {
            id: hex::encode(&d[..16]),
            start,
            ttl_ms,
        }
    }
}

/// Remaining allowance of the client, for `x-ratelimit-*` headers (None = no such limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Remaining {
    pub rpm: Option<u64>,
    pub rpd: Option<u64>,
    pub tpm: Option<u64>,
}

/// A lease on a key: held for the whole life of a request, renewed while it lives, expiring by
/// itself if the replica holding it dies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub service_id: i64,
    pub key_id: i64,
    /// `<key id>:<lease id>`
    pub member: String,
    /// Granted by the in-process store while Redis was down: released there too.
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Acquire {
    Granted {
        /// Index into `AcquireReq::keys`.
        index: usize,
        lease: Lease,
        fails: u32,
        /// This request is the half-open trial of a key that tripped on failures.
        probe: bool,
        remaining: Remaining,
    },
    /// The client is over one of its limits.
    ClientLimited {
        retry_after_ms: u64,
        remaining: Remaining,
    },
    /// Every usable key is at its concurrency cap: wait and try again.
    AtCapacity,
    /// The service is backing off after an upstream-wide 429.
    ServiceBackoff { retry_after_ms: u64 },
    /// The client's budget does not cover the request.
    OverBudget { spent: i64 },
    /// No key is usable (all invalid, exhausted, cooling or over their own limits).
    NoKey,
}

/// What went wrong with a key on an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 401/403: out of rotation until re-enabled.
    Invalid,
    /// 402 or an insufficient-quota answer: out until re-enabled.
    Exhausted,
    /// 429: cooling until Retry-After or an exponential backoff.
    RateLimited { retry_after_ms: Option<u64> },
    /// 5xx, connect error, timeout: counts towards the failure threshold.
    Failure,
    /// Operator re-enabled the key: forget its health state.
    Clear,
}

impl Fault {
    fn script_name(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Exhausted => "exhausted",
            Self::RateLimited { .. } => "rate_limited",
            Self::Failure => "failure",
            Self::Clear => "clear",
        }
    }
}

/// The key's state after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub fails: u32,
    /// ms epoch the key is out of rotation until; 0 = in rotation, -1 = until re-enabled.
    pub until: i64,
    /// Set when this report started an upstream-wide backoff of the service (ms epoch).
    pub service_backoff_until: Option<i64>,
}

/// The end of a request whose key answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub success: bool,
    pub tokens: u64,
    /// Cost in micro-units (0 = unknown), debited exactly from the key's live balance.
    pub cost: i64,
    pub key_tpm: Option<u32>,
    pub client: Option<ClientLimits>,
    /// The key's balance in the database, in micro-units: seeds the live balance on first use.
    pub key_balance: Option<i64>,
    /// Milliseconds from sending to the answer's head; None when the key was not observed (its
    /// answer never came, or the request ended before it).
    pub latency_ms: Option<u64>,
    /// What was set aside from the client's budget at acquire: the budget is charged
    /// `cost - reserved` now.
    pub reserved: i64,
    /// The answer's HTTP status (0 = unknown): a release that is not a success counts it in the
    /// key's `failures_by_status`.
    pub status: u16,
}

/// What a release found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Released {
    /// The debit took the key's live balance to zero or below: it is now `exhausted`.
    pub exhausted: bool,
}

/// Live state of a key, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveState {
    pub until: i64,
    pub fails: u32,
    pub reason: Option<String>,
    pub inflight: u32,
}

impl LiveState {
    /// The status an operator sees: a durable status stored in the database (`invalid`,
    /// `exhausted`, `disabled`) wins; otherwise the live one, as seen at `now_ms`.
    pub fn key_status(&self, stored: &str, now_ms: i64) -> KeyStatus {
        match KeyStatus::parse(stored) {
            Some(s @ (KeyStatus::Invalid | KeyStatus::Exhausted | KeyStatus::Disabled)) => s,
            _ => self
                .status(now_ms)
                .and_then(KeyStatus::parse)
                .unwrap_or(KeyStatus::Active),
        }
    }

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

/// Requests that ended in one second for one service, and their tokens (prompt + completion):
/// what the live figures of `/admin/stats` count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDelta {
    pub service: String,
    /// Unix seconds the requests ended in.
    pub sec: i64,
    pub requests: i64,
    pub tokens: i64,
}

/// Live figures of a set of services, summed over every replica's traffic. The minute figures
/// count the 60 whole seconds up to and including the current one; the day figures count since
/// 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveCounts {
    pub rpm: i64,
    pub rpd: i64,
    pub tpm: i64,
    pub tpd: i64,
}

impl std::ops::AddAssign for LiveCounts {
    fn add_assign(&mut self, o: Self) {
        self.rpm += o.rpm;
        self.rpd += o.rpd;
        self.tpm += o.tpm;
        self.tpd += o.tpd;
    }
}

pub(crate) const DAY_SECS: i64 = 86_400;

/// A named lock held in the store, for work one replica at a time should do (background jobs).
/// It ends with `unlock` or when its TTL passes. The token, fresh per acquisition, makes the
/// release exact: a holder whose lock expired and was taken by someone else cannot release the
/// new holder's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub name: String,
    token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("unexpected script reply: {0}")]
    Reply(String),
    /// Redis is down and `redis.on_outage = fail`: refused without trying it.
    #[error("the coordination store is unreachable")]
    Unavailable,
}

impl CoordError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Reply(_) => "reply",
            Self::Unavailable => "unavailable",
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

    pub async fn acquire(&self, req: &AcquireReq<'_>) -> Result<Acquire, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.acquire(req)),
            Self::Redis(r) => {
                if r.outage.is_down() {
                    return r.acquire_degraded(req);
                }
                match timed(
                    "acquire",
                    r.acquire(req)
                        .instrument(tracing::info_span!("coord.acquire")),
                )
                .await
                {
                    Err(e) if outage::is_outage(&e) => {
                        r.went_down(&e);
                        r.acquire_degraded(req)
                    }
                    other => other,
                }
            }
        }
    }

    pub async fn release(&self, lease: &Lease, usage: &Usage) -> Result<Released, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.release(lease, usage)),
            Self::Redis(r) => {
                // A lease of the outage (or any lease while Redis is down) is settled in process,
                // so its statistics still reach the database.
                if lease.local || r.outage.is_down() {
                    return Ok(r.fallback.release(lease, usage));
                }
                match timed(
                    "release",
                    r.release(lease, usage)
                        .instrument(tracing::info_span!("coord.release", key_id = lease.key_id)),
                )
                .await
                {
                    Err(e) if outage::is_outage(&e) => {
                        r.went_down(&e);
                        Ok(r.fallback.release(lease, usage))
                    }
                    other => other,
                }
            }
        }
    }

    /// Charges (or refunds, when negative) `delta` micro-units to the client's budget: for a
    /// request that ends without a release to carry the settlement.
    pub async fn settle(&self, client: &ClientLimits, delta: i64) -> Result<(), CoordError> {
        match self {
            Self::Memory(m) => {
                m.settle(client, delta);
                Ok(())
            }
            Self::Redis(r) if r.outage.is_down() => {
                r.fallback.settle(client, delta);
                Ok(())
            }
            Self::Redis(r) => {
                timed(
                    "settle",
                    r.settle(client, delta)
                        .instrument(tracing::info_span!("coord.settle")),
                )
                .await
            }
        }
    }

    /// Takes the keys' statistics gathered since the last call (each replica's flush adds them
    /// to the database, so nothing is counted twice), with their live balances.
    pub async fn take_stats(&self, keys: &[KeyRef]) -> Result<Vec<KeyStats>, CoordError> {
        let key_ids = &KeyRef::ids(keys);
        match self {
            Self::Memory(m) => Ok(m.take_stats(key_ids)),
            Self::Redis(r) => {
                // What the outage's requests counted in process joins what Redis counted.
                let local = r.fallback.take_stats(key_ids);
                if r.outage.is_down() {
                    return Ok(local);
                }
                let mut shared = r.take_stats(keys).await?;
                for (s, l) in shared.iter_mut().zip(local) {
                    s.merge(l);
                }
                Ok(shared)
            }
        }
    }

    /// The live spend of access keys (None where the store has none yet).
    pub async fn spent(&self, access_key_ids: &[i64]) -> Result<Vec<Option<i64>>, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.spent(access_key_ids)),
            Self::Redis(r) => r.spent(access_key_ids).await,
        }
    }

    pub async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<(), CoordError> {
        match self {
            Self::Memory(m) => {
                m.renew(lease, ttl_ms);
                Ok(())
            }
            Self::Redis(r) if lease.local || r.outage.is_down() => {
                r.fallback.renew(lease, ttl_ms);
                Ok(())
            }
            Self::Redis(r) => r.renew(lease, ttl_ms).await,
        }
    }

    /// Records a fault of `key_id` (releasing `lease` if given). `n_keys` is the service's key count.
    pub async fn report(
        &self,
        service_id: i64,
        key_id: i64,
        lease: Option<&Lease>,
        fault: Fault,
        n_keys: usize,
    ) -> Result<Report, CoordError> {
        self.report_timed(service_id, key_id, lease, fault, n_keys, None, None)
            .await
    }

    /// `report` of a failed attempt that took `took_ms` (the latency strategy counts it), counted
    /// in the key's statistics as `class`.
    #[allow(clippy::too_many_arguments)]
    pub async fn report_timed(
        &self,
        service_id: i64,
        key_id: i64,
        lease: Option<&Lease>,
        fault: Fault,
        n_keys: usize,
        took_ms: Option<u64>,
        class: Option<StatClass>,
    ) -> Result<Report, CoordError> {
        match self {
            Self::Memory(m) => {
                Ok(m.report(service_id, key_id, lease, fault, n_keys, took_ms, class))
            }
            Self::Redis(r) => {
                let local = || {
                    Ok(r.fallback
                        .report(service_id, key_id, lease, fault, n_keys, took_ms, class))
                };
                if lease.is_some_and(|l| l.local) || r.outage.is_down() {
                    return local();
                }
                match timed(
                    "report",
                    r.report(service_id, key_id, lease, fault, n_keys, took_ms, class)
                        .instrument(tracing::info_span!(
                            "coord.report",
                            key_id,
                            fault = fault.script_name()
                        )),
                )
                .await
                {
                    Err(e) if outage::is_outage(&e) => {
                        r.went_down(&e);
                        local()
                    }
                    other => other,
                }
            }
        }
    }

    /// Adds request counts to the services' live figures (called per log batch, off the hot path).
    pub async fn add_live(&self, deltas: &[LiveDelta]) -> Result<(), CoordError> {
        match self {
            Self::Memory(m) => {
                m.add_live(deltas);
                Ok(())
            }
            // Live figures are shared or not at all: the outage's requests are not counted.
            Self::Redis(r) if r.outage.is_down() => Ok(()),
            Self::Redis(r) => r.add_live(deltas).await,
        }
    }

    /// The live figures of `services` summed, as of unix second `now`.
    pub async fn live(&self, services: &[String], now: i64) -> Result<LiveCounts, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.live(services, now)),
            Self::Redis(r) => r.live(services, now).await,
        }
    }

    pub async fn live_states(&self, keys: &[KeyRef]) -> Result<Vec<LiveState>, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.live_states(&KeyRef::ids(keys))),
            Self::Redis(r) if r.outage.is_down() => Ok(r.fallback.live_states(&KeyRef::ids(keys))),
            Self::Redis(r) => r.live_states(keys).await,
        }
    }

    /// Sets a key's live balance in micro-units (an operator changed it).
    pub async fn set_balance(&self, key: KeyRef, balance: Option<i64>) -> Result<(), CoordError> {
        match self {
            Self::Memory(m) => {
                m.set_balance(key.key_id, balance);
                Ok(())
            }
            Self::Redis(r) => r.set_balance(key, balance).await,
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

    /// Takes the lock `name` for `ttl_ms` unless someone (this replica included) holds it.
    pub async fn try_lock(&self, name: &str, ttl_ms: u64) -> Result<Option<Lock>, CoordError> {
        let lock = Lock {
            name: name.to_string(),
            token: new_lease_id(),
        };
        let taken = match self {
            Self::Memory(m) => m.try_lock(&lock.name, &lock.token, ttl_ms),
            Self::Redis(r) => r.try_lock(&lock.name, &lock.token, ttl_ms).await?,
        };
        Ok(taken.then_some(lock))
    }

    /// Releases `lock` if it is still the holder; false when it had expired (or been taken since).
    pub async fn unlock(&self, lock: &Lock) -> Result<bool, CoordError> {
        match self {
            Self::Memory(m) => Ok(m.unlock(&lock.name, &lock.token)),
            Self::Redis(r) => r.unlock(&lock.name, &lock.token).await,
        }
    }

    /// The Redis primary in use when the Sentinels name it (`host:port`), else None.
    pub fn sentinel_primary(&self) -> Option<String> {
        match self {
            Self::Redis(r) => r.sentinel_primary(),
            Self::Memory(_) => None,
        }
    }

    /// Redis is down and this replica coordinates in process (or refuses, fail-closed).
    pub fn degraded(&self) -> bool {
        matches!(self, Self::Redis(r) if r.outage.is_down())
    }

    /// Replicas seen alive at the last heartbeat (1 in process).
    pub fn replicas(&self) -> u32 {
        match self {
            Self::Memory(_) => 1,
            Self::Redis(r) => r.outage.replicas(),
        }
    }

    /// Says this replica is alive and learns how many are (the share of limits in an outage).
    pub async fn heartbeat(&self, replica: &str) -> Result<u32, CoordError> {
        match self {
            Self::Memory(_) => Ok(1),
            Self::Redis(r) if r.outage.is_down() => Ok(r.outage.replicas()),
            Self::Redis(r) => {
                let n = r.heartbeat(replica).await?;
                r.outage.set_replicas(n);
                Ok(n)
            }
        }
    }

    pub async fn ping(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(r) => r.ping().await,
        }
    }
}

/// Times a Redis call into `keygate_coord_call_duration_seconds{op}`.
async fn timed<T>(op: &'static str, f: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    metrics::histogram!(crate::telemetry::metrics::COORD_CALL_DURATION, "op" => op)
        .record(started.elapsed().as_secs_f64());
    out
}

/// Wall-clock milliseconds since the epoch (the Redis scripts use the server's clock instead).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn new_lease_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

const MINUTE_MS: f64 = 60_000.0;
const DAY_MS: f64 = 86_400_000.0;

/// Generic cell rate algorithm, shared by the memory store (the Lua scripts carry the same
/// arithmetic). `limit` per `period_ms`; returns (allowed, new tat, retry after ms, remaining).
pub(crate) fn gcra(
    tat: f64,
    now: f64,
    period: f64,
    limit: u32,
    cost: f64,
) -> (bool, f64, u64, u64) {
    let t = period / limit as f64;
    let base = tat.max(now);
    if cost == 0.0 {
        // Admission only: at least one unit must be left.
        if base - now <= period - t {
            return (true, base, 0, ((period - (base - now)) / t).floor() as u64);
        }
        return (false, base, (base - now - period + t).ceil() as u64, 0);
    }
    let new = base + cost * t;
    if new - now > period {
        return (false, base, (new - now - period).ceil() as u64, 0);
    }
    (true, new, 0, ((period - (new - now)) / t).floor() as u64)
}
