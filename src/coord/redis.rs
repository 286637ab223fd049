//! Redis coordination store for many replicas, on a single Redis, a Sentinel-managed primary
//! (`sentinel.rs`: found through the Sentinels and followed across failovers) or a Redis
//! Cluster. Every change
//! happens inside a Lua script whose file name carries a version (`acquire_v6`), so a rolling
//! deploy never runs changed logic under an old name; scripts are loaded at start and called by
//! SHA (EVALSHA, falling back to EVAL). Each script's header documents its KEYS, ARGV and reply,
//! which the methods here read. (Taking a job lock is a single atomic `SET NX PX` and needs no
//! script.)
//!
//! Every key a script touches is declared in its KEYS, and the keys one call touches share a hash
//! tag, so each call stays in one Redis Cluster slot (on a single Redis the tags are just part of
//! the name). Layout under the configured prefix (which must not contain `{`):
//! - a service's state, one slot per service: `{s<service>}` (cursor, backoff),
//!   `{s<service>}:leases`, `{s<service>}:429`, `{s<service>}:aff:<session hash>` (session
//!   affinity) and its keys' hashes `{s<service>}:k:<key>` (health, leases in flight, limits, live
//!   balance, statistics);
//! - an access key's limits and spend, one slot per access key: `{c<access key>}`;
//! - `cfgver` (config version), `lock:<name>` (background job locks), `replicas` (heartbeats):
//!   one key per command;
//! - live figures, one slot per service slug: `live:{<slug>}:m:<minute>` (requests and tokens per
//!   second, fields `r:<sec>` / `t:<sec>`) and `live:{<slug>}:d:<day>` (fields `r`, `t`).
//!
//! A request makes one acquire call on its service's slot; when its access key has limits or a
//! budget (in another slot), a client call runs concurrently beside it, and a refusal by either
//! side gives back what the other took. On one primary (no cluster) the two sides of an acquire,
//! and of a release, go as one call of a script composed from both (`compose`), which saves the
//! server a script call and the request a reply per side. Reads over many slots (admin views, flushes) are grouped
//! per slot and issued concurrently.
//!
//! Upgrading from the layout before hash tags (acquire_v4): live state (cooldowns, leases,
//! counters, live balances and spend) starts fresh under the new names, and is seeded again from
//! the database where it has a durable figure; `cfgver` kept its name, so the config version
//! never goes back.
use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, Script};

use super::outage::{self, OnOutage, Outage, Prober};
use super::{
    Acquire, AcquireReq, ClientLimits, CoordError, DAY_SECS, Fault, KeyRef, KeyStats, Lease,
    LiveCounts, LiveDelta, LiveState, Policy, Released, Remaining, Report, StatClass, Usage,
    new_lease_id,
};

/// One service's live hashes: the previous and current minute (`r:<sec>`/`t:<sec>` fields), and
/// the day's `r`, `t`.
type LiveRow = (
    std::collections::HashMap<String, i64>,
    std::collections::HashMap<String, i64>,
    (Option<i64>, Option<i64>),
);

/// Reads over many slots run this many calls at once.
const FAN_OUT: usize = 32;

/// The connection: one multiplexed connection to a single Redis or to the primary the Sentinels
/// name, or a cluster connection that routes each command (and script call) by its keys' slot.
/// All pipeline concurrent commands and reconnect by themselves (the Sentinel one to whichever
/// node is the primary now).
#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::ConnectionManager),
    Sentinel(super::sentinel::SentinelConn),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Sentinel(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Sentinel(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How `RedisStore::connect` reaches Redis (`redis.cluster` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// One primary: `url` is one `redis://` URL.
    #[default]
    Single,
    /// A Redis Cluster: `url` is one or more seed node URLs, comma-separated.
    Cluster,
    /// A primary managed by Redis Sentinel: `url` is
    /// `redis+sentinel://[user:password@]host1:26379,host2:26379/<master name>`.
    Sentinel,
}

/// Picks the topology `url` asks for: a `redis+sentinel://` URL names Sentinels, otherwise
/// `cluster` (`redis.cluster`) tells a Redis Cluster from a single Redis.
pub fn topology_of(url: &str, cluster: bool) -> anyhow::Result<Topology> {
    match (super::sentinel::is_sentinel_url(url), cluster) {
        (true, true) => anyhow::bail!(
            "REDIS_URL names Sentinels (redis+sentinel://) and redis.cluster is set: choose one"
        ),
        (true, false) => Ok(Topology::Sentinel),
        (false, true) => Ok(Topology::Cluster),
        (false, false) => Ok(Topology::Single),
    }
}

/// A key's `until`, `fails`, `reason`, `inflight` (HMGET).
type StateRow = (Option<f64>, Option<i64>, Option<String>, Option<i64>);

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    policy: Policy,
    acquire: Script,
    release: Script,
    report: Script,
    renew: Script,
    unlock: Script,
    take_stats_script: Script,
    client_script: Script,
    client_undo: Script,
    grant_undo: Script,
    client_release: Script,
    /// client_v1 and acquire_v6 in one call, and release_v5 and client_release_v1 in one call:
    /// on a single Redis (never a cluster, where their keys are in different slots).
    acquire_client: Script,
    release_client: Script,
    /// Coordinates this replica's requests while Redis is down (degraded mode).
    pub(super) fallback: super::memory::MemoryStore,
    pub(super) outage: Arc<Outage>,
}

/// A script that defines each of `parts` (function name, script source) as a local function of
/// its own KEYS and ARGV, then runs `glue`, which calls them: two scripts whose keys share no slot
/// in one call, on a single Redis. The parts stay the files they are, used alone elsewhere.
fn compose(parts: &[(&str, &str)], glue: &str) -> String {
    let mut s = String::new();
    for (name, src) in parts {
        s.push_str(&format!("local function {name}(KEYS, ARGV)\n{src}\nend\n"));
    }
    s.push_str(glue);
    s
}

/// `"429=3,0=1"` (take_stats_v1's failures by status) into a map; malformed parts are skipped.
fn parse_codes(v: &str) -> std::collections::BTreeMap<u16, i64> {
    let mut out = std::collections::BTreeMap::new();
    for part in v.split(',').filter(|p| !p.is_empty()) {
        if let Some((code, n)) = part.split_once('=')
            && let (Ok(code), Ok(n)) = (code.parse::<u16>(), n.parse::<i64>())
        {
            *out.entry(code).or_insert(0) += n;
        }
    }
    out
}

/// One key's row of take_stats_v2.
fn stats_row(r: &[String]) -> KeyStats {
    let n = |i: usize| r.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    KeyStats {
        requests: n(0),
        successes: n(1),
        failures_4xx: n(2),
        failures_5xx: n(3),
        failures_network: n(4),
        tokens: n(5),
        cost: n(6),
        balance: r.get(7).and_then(|v| v.parse().ok()),
        last_used: n(8),
        failures_by_status: r.get(9).map(|v| parse_codes(v)).unwrap_or_default(),
    }
}

fn opt(v: Option<u32>) -> u32 {
    v.unwrap_or(0)
}

fn remaining(v: i64) -> Option<u64> {
    (v >= 0).then_some(v as u64)
}

impl RedisStore {
    pub async fn connect(
        url: &str,
        topology: Topology,
        prefix: &str,
        policy: Policy,
        on_outage: OnOutage,
    ) -> anyhow::Result<Self> {
        Self::connect_tls(url, topology, prefix, policy, on_outage, None, None).await
    }

    /// `connect`, trusting `ca_pem` (a private CA's certificate) for `rediss://` URLs instead of
    /// the system's trust store; `sentinel_password` authenticates to Sentinels that require one.
    pub async fn connect_tls(
        url: &str,
        topology: Topology,
        prefix: &str,
        policy: Policy,
        on_outage: OnOutage,
        ca_pem: Option<Vec<u8>>,
        sentinel_password: Option<&str>,
    ) -> anyhow::Result<Self> {
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: ca_pem.clone(),
        };
        anyhow::ensure!(
            !prefix.contains('{'),
            "redis.prefix must not contain '{{' (it would become the hash tag)"
        );
        // A Redis that stops answering fails requests fast (503) instead of hanging them; the
        // connection reconnects in the background with a capped backoff.
        let conn = match topology {
            Topology::Single => {
                anyhow::ensure!(
                    !url.contains(','),
                    "REDIS_URL lists several nodes: set redis.cluster = true for a Redis Cluster"
                );
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_max_delay(Duration::from_secs(2))
                    .set_number_of_retries(1);
                let client = match &ca_pem {
                    Some(_) => redis::Client::build_with_tls(url, certs())?,
                    None => redis::Client::open(url)?,
                };
                Conn::Single(client.get_connection_manager_with_config(cfg).await?)
            }
            Topology::Sentinel => {
                let parsed = super::sentinel::SentinelUrl::parse(url)?;
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                Conn::Sentinel(
                    super::sentinel::SentinelConn::connect(
                        &parsed,
                        sentinel_password,
                        ca_pem.clone(),
                        cfg,
                    )
                    .await?,
                )
            }
            Topology::Cluster => {
                let nodes: Vec<&str> = url
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect();
                // Retries cover a slot moving (MOVED/ASK) or a failover; the timeouts bound a
                // node that stops answering, as for a single Redis.
                let mut builder = redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(Duration::from_secs(2))
                    .retries(2);
                if ca_pem.is_some() {
                    builder = builder.certs(certs());
                }
                let client = builder.build()?;
                Conn::Cluster(client.get_async_connection().await?)
            }
        };
        let store = Self {
            conn,
            prefix: prefix.to_string(),
            policy,
            acquire: Script::new(include_str!("lua/acquire_v6.lua")),
            release: Script::new(include_str!("lua/release_v5.lua")),
            report: Script::new(include_str!("lua/report_v4.lua")),
            renew: Script::new(include_str!("lua/renew_v2.lua")),
            unlock: Script::new(include_str!("lua/unlock_v1.lua")),
            take_stats_script: Script::new(include_str!("lua/take_stats_v2.lua")),
            client_script: Script::new(include_str!("lua/client_v1.lua")),
            client_undo: Script::new(include_str!("lua/client_undo_v1.lua")),
            grant_undo: Script::new(include_str!("lua/grant_undo_v1.lua")),
            client_release: Script::new(include_str!("lua/client_release_v1.lua")),
            acquire_client: Script::new(&compose(
                &[
                    ("client", include_str!("lua/client_v1.lua")),
                    ("acquire", include_str!("lua/acquire_v6.lua")),
                    ("client_undo", include_str!("lua/client_undo_v1.lua")),
                ],
                include_str!("lua/acquire_client_v1.lua"),
            )),
            release_client: Script::new(&compose(
                &[
                    ("release", include_str!("lua/release_v5.lua")),
                    ("client_release", include_str!("lua/client_release_v1.lua")),
                ],
                include_str!("lua/release_client_v1.lua"),
            )),
            fallback: super::memory::MemoryStore::new(policy),
            outage: Outage::new(on_outage),
        };
        // Loading checks the scripts compile (and saves the first EVAL); a cluster loads them on
        // every primary, and a node that lacks one (a new primary) gets it by the EVAL fallback.
        let mut conn = store.conn.clone();
        for s in [
            &store.take_stats_script,
            &store.acquire,
            &store.release,
            &store.report,
            &store.renew,
            &store.unlock,
            &store.client_script,
            &store.client_undo,
            &store.grant_undo,
            &store.client_release,
        ] {
            let _: String = s.prepare_invoke().load_async(&mut conn).await?;
        }
        if store.single() {
            for s in [&store.acquire_client, &store.release_client] {
                let _: String = s.prepare_invoke().load_async(&mut conn).await?;
            }
        }
        Ok(store)
    }

    /// The primary the Sentinels named and this replica is connected to (`host:port`), for a
    /// `redis+sentinel://` URL.
    pub fn sentinel_primary(&self) -> Option<String> {
        match &self.conn {
            Conn::Sentinel(c) => Some(c.primary()),
            _ => None,
        }
    }

    /// One primary, not a cluster: a script may touch keys of different slots.
    fn single(&self) -> bool {
        !matches!(self.conn, Conn::Cluster(_))
    }

    /// The service's hash; every key of the service's state starts with it (one slot).
    fn svc(&self, id: i64) -> String {
        format!("{}{{s{id}}}", self.prefix)
    }
    fn key(&self, service_id: i64, key_id: i64) -> String {
        format!("{}{{s{service_id}}}:k:{key_id}", self.prefix)
    }
    /// The access key's hash: its own slot.
    fn client(&self, id: i64) -> String {
        format!("{}{{c{id}}}", self.prefix)
    }

    pub async fn acquire(&self, req: &AcquireReq<'_>) -> Result<Acquire, CoordError> {
        if req.keys.is_empty() {
            return Ok(Acquire::NoKey);
        }
        // The client's limits live in its own slot: checked beside the key choice, concurrently,
        // on the first attempt of a request whose access key has any. Without limits (the common
        // case) the key choice is the only call.
        let client = req.client.filter(|c| c.is_limited());
        let lease_id = new_lease_id();
        match client {
            None => {
                let k = self.acquire_key(req, &lease_id).await?;
                self.granted(req, k, &lease_id, Remaining::default())
            }
            Some(c) if self.single() => {
                // Both sides in one call, which gives back a side's charge itself.
                let r = self.acquire_with_client(req, &c, &lease_id).await?;
                let (k, cl) = r.split_at(6);
                self.decide(req, &c, k.to_vec(), cl, &lease_id, false).await
            }
            Some(c) => {
                let (k, cl) = tokio::join!(
                    self.acquire_key(req, &lease_id),
                    self.charge_client(&c, req.reserve)
                );
                // A side that failed to answer leaves the other's charge in place: it is undone
                // below when it can be, and otherwise expires with its lease or limit window.
                let (k, cl) = match (k, cl) {
                    (Ok(k), Ok(cl)) => (k, cl),
                    (Ok(k), Err(e)) => {
                        self.undo_grant(req, &k, &lease_id).await;
                        return Err(e);
                    }
                    (Err(e), Ok(cl)) => {
                        self.undo_client(&c, &cl, req.reserve).await;
                        return Err(e);
                    }
                    (Err(e), Err(_)) => return Err(e),
                };
                self.decide(req, &c, k, &cl, &lease_id, true).await
            }
        }
    }

    /// The request's answer from both sides' replies (`undo`: give back what a side took when
    /// the other refused; the combined script did so itself).
    async fn decide(
        &self,
        req: &AcquireReq<'_>,
        c: &ClientLimits,
        k: Vec<i64>,
        cl: &[i64],
        lease_id: &str,
        undo: bool,
    ) -> Result<Acquire, CoordError> {
        let [code, retry_after, rpm, rpd, tpm] = cl[..] else {
            return Err(CoordError::Reply(format!("client returned {cl:?}")));
        };
        let rem = Remaining {
            rpm: remaining(rpm),
            rpd: remaining(rpd),
            tpm: remaining(tpm),
        };
        // The order one combined call had: an upstream-wide backoff first, then the
        // client's limits, then the key choice.
        let refused = match (k.first().copied(), code) {
            (Some(4), _) => None,
            (_, 2) => Some(Acquire::ClientLimited {
                retry_after_ms: retry_after.max(1) as u64,
                remaining: rem,
            }),
            (_, 5) => Some(Acquire::OverBudget { spent: retry_after }),
            _ => None,
        };
        if let Some(refused) = refused {
            if undo {
                self.undo_grant(req, &k, lease_id).await;
            }
            return Ok(refused);
        }
        if undo && k.first() != Some(&1) && code == 1 {
            self.undo_client(c, cl, req.reserve).await;
        }
        self.granted(req, k, lease_id, rem)
    }

    /// acquire_v6 on the service's slot: `{code, index, fails, probe, retry_after_ms, cursor}`.
    async fn acquire_key(
        &self,
        req: &AcquireReq<'_>,
        lease_id: &str,
    ) -> Result<Vec<i64>, CoordError> {
        let mut inv = self.acquire.prepare_invoke();
        self.acquire_args(&mut inv, req, lease_id);
        let mut conn = self.conn.clone();
        let r: Vec<i64> = inv.invoke_async(&mut conn).await?;
        if r.len() != 6 {
            return Err(CoordError::Reply(format!("acquire returned {r:?}")));
        }
        Ok(r)
    }

    /// acquire_client_v1 (a single Redis): client_v1's reply after acquire_v6's, both sides
    /// settled.
    async fn acquire_with_client(
        &self,
        req: &AcquireReq<'_>,
        c: &ClientLimits,
        lease_id: &str,
    ) -> Result<Vec<i64>, CoordError> {
        let mut inv = self.acquire_client.prepare_invoke();
        inv.key(self.client(c.access_key_id));
        Self::client_args(&mut inv, c, req.reserve);
        self.acquire_args(&mut inv, req, lease_id);
        let mut conn = self.conn.clone();
        let r: Vec<i64> = inv.invoke_async(&mut conn).await?;
        if r.len() != 11 {
            return Err(CoordError::Reply(format!("acquire returned {r:?}")));
        }
        Ok(r)
    }

    /// acquire_v6's KEYS and ARGV, after any already on `inv`.
    fn acquire_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        req: &AcquireReq<'_>,
        lease_id: &str,
    ) {
        let svc = self.svc(req.service_id);
        inv.key(&svc)
            .key(format!("{svc}:leases"))
            .key(match req.session {
                Some(s) => format!("{svc}:aff:{}", s.id),
                None => format!("{svc}:aff"),
            });
        for k in req.keys.iter() {
            inv.key(self.key(req.service_id, k.id));
        }
        let excluded = req
            .excluded
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        inv.arg(req.strategy.script_name())
            .arg(opt(req.cap))
            .arg(req.lease_ttl_ms)
            .arg(lease_id)
            .arg(req.price.unwrap_or(0))
            .arg(rand::random::<u32>())
            .arg(self.policy.probe_lock_ms)
            // ARGV[8]: unused since acquire_v6 (the ids are in the key names).
            .arg("")
            .arg(&req.keys.overrides)
            .arg(excluded)
            .arg(if req.session.is_some() { 1 } else { 0 })
            .arg(req.session.map_or(0, |s| s.start % req.keys.len() as u64))
            .arg(req.session.map_or(0, |s| s.ttl_ms))
            .arg(self.policy.latency_tau_ms);
    }

    /// client_v1's ARGV.
    fn client_args(inv: &mut redis::ScriptInvocation<'_>, c: &ClientLimits, reserve: i64) {
        inv.arg(opt(c.rpm))
            .arg(opt(c.rpd))
            .arg(opt(c.tpm))
            .arg(c.budget.map(|b| b.to_string()).unwrap_or_default())
            .arg(c.spent)
            .arg(reserve);
    }

    /// client_v1 on the client's slot: `{code, retry_after_ms or spent, rpm, rpd, tpm remaining}`.
    async fn charge_client(&self, c: &ClientLimits, reserve: i64) -> Result<Vec<i64>, CoordError> {
        let mut conn = self.conn.clone();
        let mut inv = self.client_script.prepare_invoke();
        inv.key(self.client(c.access_key_id));
        Self::client_args(&mut inv, c, reserve);
        Ok(inv.invoke_async(&mut conn).await?)
    }

    /// Gives back a key granted to a request the client side refused (or could not answer).
    async fn undo_grant(&self, req: &AcquireReq<'_>, k: &[i64], lease_id: &str) {
        let [1, index, _, probe, _, cursor] = k[..] else {
            return;
        };
        let Some(spec) = usize::try_from(index - 1)
            .ok()
            .and_then(|i| req.keys.get(i))
        else {
            return;
        };
        let svc = self.svc(req.service_id);
        let mut conn = self.conn.clone();
        let r: Result<i64, _> = self
            .grant_undo
            .key(&svc)
            .key(format!("{svc}:leases"))
            .key(self.key(req.service_id, spec.id))
            .arg(format!("{}:{lease_id}", spec.id))
            .arg(opt(spec.rpm))
            .arg(probe)
            .arg(cursor)
            .arg(index as u64 % req.keys.len() as u64)
            .invoke_async(&mut conn)
            .await;
        // Not given back, the lease expires by itself after its ttl.
        if let Err(e) = r {
            tracing::warn!(error = %e, key_id = spec.id, "could not give back a refused request's lease");
        }
    }

    /// Gives back what `charge_client` took for a request the key side refused.
    async fn undo_client(&self, c: &ClientLimits, cl: &[i64], reserve: i64) {
        if cl.first() != Some(&1) {
            return;
        }
        let mut conn = self.conn.clone();
        let r: Result<i64, _> = self
            .client_undo
            .key(self.client(c.access_key_id))
            .arg(opt(c.rpm))
            .arg(opt(c.rpd))
            .arg(if c.budget.is_some() { reserve } else { 0 })
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, access_key_id = c.access_key_id, "could not give back a refused request's client charge");
        }
    }

    /// The key side's answer as an `Acquire` (the client side, if any, admitted the request).
    fn granted(
        &self,
        req: &AcquireReq<'_>,
        r: Vec<i64>,
        lease_id: &str,
        rem: Remaining,
    ) -> Result<Acquire, CoordError> {
        let [code, index, fails, probe, retry_after, _] = r[..] else {
            return Err(CoordError::Reply(format!("acquire returned {r:?}")));
        };
        Ok(match code {
            1 => {
                let i = usize::try_from(index - 1)
                    .ok()
                    .filter(|i| *i < req.keys.len())
                    .ok_or_else(|| CoordError::Reply(format!("acquire index {index}")))?;
                let key_id = req.keys[i].id;
                Acquire::Granted {
                    index: i,
                    lease: Lease {
                        service_id: req.service_id,
                        key_id,
                        member: format!("{key_id}:{lease_id}"),
                        local: false,
                    },
                    fails: fails.max(0) as u32,
                    probe: probe == 1,
                    remaining: rem,
                }
            }
            3 => Acquire::AtCapacity,
            4 => Acquire::ServiceBackoff {
                retry_after_ms: retry_after.max(1) as u64,
            },
            _ => Acquire::NoKey,
        })
    }

    pub async fn release(&self, lease: &Lease, u: &Usage) -> Result<Released, CoordError> {
        let settle = u.client.filter(|c| c.budget.is_some()).map(|c| c.spent);
        let client_tpm = u.client.and_then(|c| c.tpm).filter(|_| u.tokens > 0);
        // The client's tokens and spend (only when it has a tpm limit or a budget).
        let client = u
            .client
            .filter(|_| settle.is_some() || client_tpm.is_some());
        let client_args = |inv: &mut redis::ScriptInvocation<'_>| {
            inv.arg(u.tokens)
                .arg(opt(client_tpm))
                .arg(match settle {
                    Some(_) => (u.cost - u.reserved).to_string(),
                    None => String::new(),
                })
                .arg(settle.unwrap_or(0));
        };
        let (exhausted, client) = match client {
            // A single Redis: both shares in one call.
            Some(c) if self.single() => {
                let mut inv = self.release_client.prepare_invoke();
                self.release_args(&mut inv, lease, u);
                inv.key(self.client(c.access_key_id));
                client_args(&mut inv);
                let mut conn = self.conn.clone();
                let (_, _, exhausted, failed): (i64, String, i64, i64) =
                    inv.invoke_async(&mut conn).await?;
                let client = match failed {
                    0 => Ok(()),
                    _ => Err(CoordError::Reply("client_release_v1 failed".into())),
                };
                (exhausted, client)
            }
            _ => {
                let key_side = async {
                    let mut inv = self.release.prepare_invoke();
                    self.release_args(&mut inv, lease, u);
                    let mut conn = self.conn.clone();
                    let (_, _, exhausted): (i64, String, i64) = inv.invoke_async(&mut conn).await?;
                    Ok::<_, CoordError>(exhausted)
                };
                // On its own slot, beside the key's.
                let client_side = async {
                    let Some(c) = client else {
                        return Ok(());
                    };
                    let mut inv = self.client_release.prepare_invoke();
                    inv.key(self.client(c.access_key_id));
                    client_args(&mut inv);
                    let mut conn = self.conn.clone();
                    let _: i64 = inv.invoke_async(&mut conn).await?;
                    Ok::<_, CoordError>(())
                };
                let (exhausted, client) = tokio::join!(key_side, client_side);
                (exhausted?, client)
            }
        };
        // The key's side is done: failing the release now would make the caller settle it again
        // in process and count the key twice. Only the client's share of this one request is
        // lost (a cluster node down for the client's slot), and said.
        if let Err(e) = client {
            metrics::counter!(crate::telemetry::metrics::COORD_ERRORS_TOTAL, "kind" => e.kind())
                .increment(1);
            tracing::warn!(error = %e, "a release could not count the client's tokens and spend");
        }
        Ok(Released {
            exhausted: exhausted == 1,
        })
    }

    /// release_v5's KEYS and ARGV.
    fn release_args(&self, inv: &mut redis::ScriptInvocation<'_>, lease: &Lease, u: &Usage) {
        inv.key(format!("{}:leases", self.svc(lease.service_id)))
            .key(self.key(lease.service_id, lease.key_id))
            .arg(&lease.member)
            .arg(if u.success { 1 } else { 0 })
            .arg(u.tokens)
            .arg(u.cost)
            .arg(opt(u.key_tpm))
            .arg(u.key_balance.map(|b| b.to_string()).unwrap_or_default())
            .arg(u.latency_ms.map(|l| l.to_string()).unwrap_or_default())
            .arg(self.policy.latency_tau_ms)
            .arg(self.policy.success_tau_ms)
            .arg(if u.status == 0 {
                String::new()
            } else {
                u.status.to_string()
            });
    }

    pub async fn settle(&self, client: &ClientLimits, delta: i64) -> Result<(), CoordError> {
        if client.budget.is_none() || delta == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let key = self.client(client.access_key_id);
        let _: () = redis::pipe()
            .atomic()
            .cmd("HSETNX")
            .arg(&key)
            .arg("spent_micros")
            .arg(client.spent)
            .ignore()
            .cmd("HINCRBY")
            .arg(&key)
            .arg("spent_micros")
            .arg(delta)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Groups `keys` by service (one slot each), keeping each key's position in `keys`.
    fn by_service(keys: &[KeyRef]) -> Vec<(i64, Vec<(usize, i64)>)> {
        let mut groups: std::collections::BTreeMap<i64, Vec<(usize, i64)>> = Default::default();
        for (i, k) in keys.iter().enumerate() {
            groups.entry(k.service_id).or_default().push((i, k.key_id));
        }
        groups.into_iter().collect()
    }

    pub async fn take_stats(&self, keys: &[KeyRef]) -> Result<Vec<KeyStats>, CoordError> {
        // One script call per service and bounded batch (one call must not hold Redis for long),
        // each on its service's slot, a few at once.
        let mut calls = Vec::new();
        for (service_id, ids) in Self::by_service(keys) {
            for chunk in ids.chunks(256) {
                calls.push((service_id, chunk.to_vec()));
            }
        }
        let mut done = Vec::new();
        for batch in calls.chunks(FAN_OUT) {
            let mut futs = Vec::with_capacity(batch.len());
            for (service_id, chunk) in batch {
                futs.push(self.take_stats_of(*service_id, chunk));
            }
            done.extend(futures::future::try_join_all(futs).await?);
        }
        let mut out = vec![KeyStats::default(); keys.len()];
        for (at, s) in done.into_iter().flatten() {
            out[at] = s;
        }
        Ok(out)
    }

    /// take_stats_v2 over some keys of one service: (position, stats) per key.
    async fn take_stats_of(
        &self,
        service_id: i64,
        chunk: &[(usize, i64)],
    ) -> Result<Vec<(usize, KeyStats)>, CoordError> {
        let mut inv = self.take_stats_script.prepare_invoke();
        for (_, id) in chunk {
            inv.key(self.key(service_id, *id));
        }
        let mut conn = self.conn.clone();
        let rows: Vec<Vec<String>> = inv.invoke_async(&mut conn).await?;
        Ok(chunk
            .iter()
            .zip(rows)
            .map(|((at, _), r)| (*at, stats_row(&r)))
            .collect())
    }

    pub async fn spent(&self, access_key_ids: &[i64]) -> Result<Vec<Option<i64>>, CoordError> {
        // Each access key is its own slot: one HGET each, a few at once (on a single Redis they
        // share the connection's pipeline).
        let mut out = Vec::with_capacity(access_key_ids.len());
        for batch in access_key_ids.chunks(FAN_OUT) {
            let mut futs = Vec::with_capacity(batch.len());
            for id in batch {
                futs.push(self.spent_of(*id));
            }
            out.extend(futures::future::try_join_all(futs).await?);
        }
        Ok(out)
    }

    async fn spent_of(&self, access_key_id: i64) -> Result<Option<i64>, CoordError> {
        let mut conn = self.conn.clone();
        Ok(conn
            .hget(self.client(access_key_id), "spent_micros")
            .await?)
    }

    pub async fn renew(&self, lease: &Lease, ttl_ms: u64) -> Result<(), CoordError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .renew
            .key(format!("{}:leases", self.svc(lease.service_id)))
            .arg(&lease.member)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn report(
        &self,
        service_id: i64,
        key_id: i64,
        lease: Option<&Lease>,
        fault: Fault,
        n_keys: usize,
        took_ms: Option<u64>,
        class: Option<StatClass>,
    ) -> Result<Report, CoordError> {
        let svc = self.svc(service_id);
        let retry_after = match fault {
            Fault::RateLimited { retry_after_ms } => retry_after_ms.unwrap_or(0),
            _ => 0,
        };
        let p = &self.policy;
        let mut conn = self.conn.clone();
        let (fails, until, backoff): (i64, i64, i64) = self
            .report
            .key(&svc)
            .key(format!("{svc}:leases"))
            .key(self.key(service_id, key_id))
            .key(format!("{svc}:429"))
            .arg(fault.script_name())
            .arg(lease.map(|l| l.member.as_str()).unwrap_or(""))
            .arg(retry_after)
            .arg(p.failure_threshold)
            .arg(p.recovery_ms)
            .arg(p.backoff_base_ms)
            .arg(p.backoff_max_ms)
            .arg(n_keys)
            .arg(p.upstream_wide_window_ms)
            .arg(p.upstream_wide_percent)
            .arg(key_id)
            .arg(took_ms.map(|l| l.to_string()).unwrap_or_default())
            .arg(p.latency_tau_ms)
            .arg(p.success_tau_ms)
            .arg(class.map_or("", StatClass::script_name))
            .arg(class.map_or(0, StatClass::status))
            .invoke_async(&mut conn)
            .await?;
        Ok(Report {
            fails: fails.max(0) as u32,
            until,
            service_backoff_until: (backoff > 0).then_some(backoff),
        })
    }

    pub async fn live_states(&self, keys: &[KeyRef]) -> Result<Vec<LiveState>, CoordError> {
        // One pipeline per service (one slot), a few at once.
        let groups = Self::by_service(keys);
        let mut done = Vec::new();
        for batch in groups.chunks(FAN_OUT) {
            let mut futs = Vec::with_capacity(batch.len());
            for (service_id, ids) in batch {
                futs.push(self.live_states_of(*service_id, ids));
            }
            done.extend(futures::future::try_join_all(futs).await?);
        }
        let mut out = vec![LiveState::default(); keys.len()];
        for (at, s) in done.into_iter().flatten() {
            out[at] = s;
        }
        Ok(out)
    }

    /// Some keys of one service, in one pipeline: (position, state) per key.
    async fn live_states_of(
        &self,
        service_id: i64,
        ids: &[(usize, i64)],
    ) -> Result<Vec<(usize, LiveState)>, CoordError> {
        let mut pipe = redis::pipe();
        for (_, id) in ids {
            pipe.cmd("HMGET")
                .arg(self.key(service_id, *id))
                .arg("until")
                .arg("fails")
                .arg("reason")
                .arg("inflight");
        }
        let mut conn = self.conn.clone();
        let rows: Vec<StateRow> = pipe.query_async(&mut conn).await?;
        Ok(ids
            .iter()
            .zip(rows)
            .map(|((at, _), (u, f, r, i))| {
                (
                    *at,
                    LiveState {
                        until: u.unwrap_or(0.0) as i64,
                        fails: f.unwrap_or(0).max(0) as u32,
                        reason: r,
                        inflight: i.unwrap_or(0).max(0) as u32,
                    },
                )
            })
            .collect())
    }

    fn live_minute(&self, service: &str, minute: i64) -> String {
        format!("{}live:{{{service}}}:m:{minute}", self.prefix)
    }
    fn live_day(&self, service: &str, day: i64) -> String {
        format!("{}live:{{{service}}}:d:{day}", self.prefix)
    }

    /// Increments only, in one MULTI per service (its slot): exact under any number of writers,
    /// no read-modify-write.
    pub async fn add_live(&self, deltas: &[LiveDelta]) -> Result<(), CoordError> {
        let mut by_service: std::collections::BTreeMap<&str, Vec<&LiveDelta>> = Default::default();
        for d in deltas {
            by_service.entry(d.service.as_str()).or_default().push(d);
        }
        let groups: Vec<(&str, Vec<&LiveDelta>)> = by_service.into_iter().collect();
        for batch in groups.chunks(FAN_OUT) {
            let mut futs = Vec::with_capacity(batch.len());
            for (service, ds) in batch {
                futs.push(self.add_live_of(service, ds));
            }
            futures::future::try_join_all(futs).await?;
        }
        Ok(())
    }

    async fn add_live_of(&self, service: &str, ds: &[&LiveDelta]) -> Result<(), CoordError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for d in ds {
            let m = self.live_minute(service, d.sec.div_euclid(60));
            let day = self.live_day(service, d.sec.div_euclid(DAY_SECS));
            pipe.hincr(&m, format!("r:{}", d.sec), d.requests).ignore();
            pipe.hincr(&m, format!("t:{}", d.sec), d.tokens).ignore();
            pipe.expire(&m, 180).ignore();
            pipe.hincr(&day, "r", d.requests).ignore();
            pipe.hincr(&day, "t", d.tokens).ignore();
            pipe.expire(&day, 2 * DAY_SECS).ignore();
        }
        let mut conn = self.conn.clone();
        let _: () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    pub async fn live(&self, services: &[String], now: i64) -> Result<LiveCounts, CoordError> {
        // One pipeline per service (its slot), a few at once.
        let mut rows: Vec<LiveRow> = Vec::with_capacity(services.len());
        for batch in services.chunks(FAN_OUT) {
            let mut futs = Vec::with_capacity(batch.len());
            for svc in batch {
                futs.push(self.live_of(svc, now));
            }
            rows.extend(futures::future::try_join_all(futs).await?);
        }
        let mut out = LiveCounts::default();
        for (prev, cur, (rpd, tpd)) in rows {
            for (field, n) in prev.iter().chain(cur.iter()) {
                let Some((kind, sec)) = field.split_once(':') else {
                    continue;
                };
                if !sec.parse::<i64>().is_ok_and(|s| s > now - 60 && s <= now) {
                    continue;
                }
                match kind {
                    "r" => out.rpm += n,
                    "t" => out.tpm += n,
                    _ => {}
                }
            }
            out.rpd += rpd.unwrap_or(0);
            out.tpd += tpd.unwrap_or(0);
        }
        Ok(out)
    }

    /// One service's live hashes, in one pipeline (one slot).
    async fn live_of(&self, svc: &str, now: i64) -> Result<LiveRow, CoordError> {
        let minute = now.div_euclid(60);
        let mut conn = self.conn.clone();
        Ok(redis::pipe()
            .hgetall(self.live_minute(svc, minute - 1))
            .hgetall(self.live_minute(svc, minute))
            .hmget(self.live_day(svc, now.div_euclid(DAY_SECS)), &["r", "t"])
            .query_async(&mut conn)
            .await?)
    }

    pub async fn set_balance(&self, key: KeyRef, balance: Option<i64>) -> Result<(), CoordError> {
        let mut conn = self.conn.clone();
        let (service_id, key_id) = (key.service_id, key.key_id);
        // `bal_micros`: the integer field the v3 scripts debit with HINCRBY.
        match balance {
            Some(b) => {
                let _: i64 = conn
                    .hset(self.key(service_id, key_id), "bal_micros", b)
                    .await?;
            }
            None => {
                let _: i64 = conn
                    .hdel(self.key(service_id, key_id), "bal_micros")
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn config_version(&self) -> Result<u64, CoordError> {
        let mut conn = self.conn.clone();
        let v: Option<u64> = conn.get(format!("{}cfgver", self.prefix)).await?;
        Ok(v.unwrap_or(0))
    }

    pub async fn bump_config_version(&self) -> Result<u64, CoordError> {
        let mut conn = self.conn.clone();
        Ok(conn.incr(format!("{}cfgver", self.prefix), 1u64).await?)
    }

    fn lock(&self, name: &str) -> String {
        format!("{}lock:{name}", self.prefix)
    }

    /// One atomic command: `SET NX PX` takes the lock only if nobody holds it.
    pub async fn try_lock(&self, name: &str, token: &str, ttl_ms: u64) -> Result<bool, CoordError> {
        let mut conn = self.conn.clone();
        let r: Option<String> = redis::cmd("SET")
            .arg(self.lock(name))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut conn)
            .await?;
        Ok(r.is_some())
    }

    pub async fn unlock(&self, name: &str, token: &str) -> Result<bool, CoordError> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .unlock
            .key(self.lock(name))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Turns this replica degraded (once per outage) with a probe that turns it back.
    pub(super) fn went_down(&self, e: &CoordError) {
        if self.outage.went_down(e, Ping(self.conn.clone())) {
            metrics::counter!(crate::telemetry::metrics::COORD_ERRORS_TOTAL, "kind" => e.kind())
                .increment(1);
        }
    }

    /// An acquire while Redis is down: in process with this replica's share of the limits, or
    /// refused when the operator chose fail-closed.
    pub(super) fn acquire_degraded(&self, req: &AcquireReq<'_>) -> Result<Acquire, CoordError> {
        if self.outage.mode == OnOutage::Fail {
            return Err(CoordError::Unavailable);
        }
        let n = self.outage.replicas();
        let keys = outage::keys_share(req.keys, n);
        let shared = AcquireReq {
            keys: &keys,
            client: req.client.map(|c| outage::client_share(c, n)),
            cap: req.cap.map(|c| c.div_ceil(n).max(1)),
            ..req.clone()
        };
        Ok(match self.fallback.acquire(&shared) {
            Acquire::Granted {
                index,
                mut lease,
                fails,
                probe,
                remaining,
            } => {
                lease.local = true;
                Acquire::Granted {
                    index,
                    lease,
                    fails,
                    probe,
                    remaining,
                }
            }
            other => other,
        })
    }

    /// Records this replica as alive and counts the replicas seen in the last 15 s.
    pub async fn heartbeat(&self, replica: &str) -> Result<u32, CoordError> {
        let key = format!("{}replicas", self.prefix);
        let now = super::now_ms();
        let mut c = self.conn.clone();
        let (n,): (u32,) = redis::pipe()
            .atomic()
            .zadd(&key, replica, now)
            .ignore()
            .zrembyscore(&key, "-inf", now - 15_000)
            .ignore()
            .pexpire(&key, 60_000)
            .ignore()
            .zcard(&key)
            .query_async(&mut c)
            .await?;
        Ok(n)
    }

    pub async fn ping(&self) -> bool {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok()
    }
}

/// The outage probe's call: a PING on the shared connection (which reconnects by itself), or,
/// behind Sentinel, a ROLE that must say primary.
struct Ping(Conn);

impl Prober for Ping {
    async fn ping(&self) -> bool {
        if let Conn::Sentinel(s) = &self.0 {
            return s.answers_as_primary().await;
        }
        let mut c = self.0.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok()
    }
}
