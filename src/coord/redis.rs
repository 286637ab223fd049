//! Redis coordination store for many replicas. Every change happens inside a Lua script whose file
//! name carries a version (`acquire_v4`), so a rolling deploy never runs changed logic under an old
//! name; scripts are loaded at start and called by SHA (EVALSHA, falling back to EVAL). Each
//! script's header documents its KEYS, ARGV and reply, which the methods here read. (Taking a job
//! lock is a single atomic `SET NX PX` and needs no script.)
//!
//! Layout under the configured prefix: `s:<service>` (cursor, backoff), `s:<service>:leases`,
//! `s:<service>:429`, `s:<service>:aff:<session hash>` (session affinity), `k:<key>` (health,
//! leases in flight, limits, live balance), `a:<access key>` (client limits), `cfgver`,
//! `lock:<name>` (background job locks), `live:<slug>:m:<minute>` (requests and tokens per
//! second, fields `r:<sec>` / `t:<sec>`) and `live:<slug>:d:<day>` (fields `r`, `t`). Keys are computed inside scripts, so Redis Cluster is
//! not supported; use a single primary (with replicas or Sentinel).
use std::time::Duration;

use redis::{AsyncCommands, Script};

use super::{
    Acquire, AcquireReq, ClientLimits, CoordError, DAY_SECS, Fault, KeyStats, Lease, LiveCounts,
    LiveDelta, LiveState, Policy, Released, Remaining, Report, StatClass, Usage, new_lease_id,
};

/// One service's live hashes: the previous and current minute (`r:<sec>`/`t:<sec>` fields), and
/// the day's `r`, `t`.
type LiveRow = (
    std::collections::HashMap<String, i64>,
    std::collections::HashMap<String, i64>,
    (Option<i64>, Option<i64>),
);

#[derive(Clone)]
pub struct RedisStore {
    /// One multiplexed connection shared by every request: concurrent commands are pipelined
    /// onto it, and it reconnects by itself.
    conn: redis::aio::ConnectionManager,
    prefix: String,
    policy: Policy,
    acquire: Script,
    release: Script,
    report: Script,
    renew: Script,
    unlock: Script,
    take_stats_script: Script,
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

fn opt(v: Option<u32>) -> u32 {
    v.unwrap_or(0)
}

fn remaining(v: i64) -> Option<u64> {
    (v >= 0).then_some(v as u64)
}

impl RedisStore {
    pub async fn connect(url: &str, prefix: &str, policy: Policy) -> anyhow::Result<Self> {
        // A Redis that stops answering fails requests fast (503) instead of hanging them; the
        // manager reconnects in the background with a capped backoff.
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(1);
        let conn = redis::Client::open(url)?
            .get_connection_manager_with_config(cfg)
            .await?;
        let store = Self {
            conn,
            prefix: prefix.to_string(),
            policy,
            acquire: Script::new(include_str!("lua/acquire_v4.lua")),
            release: Script::new(include_str!("lua/release_v4.lua")),
            report: Script::new(include_str!("lua/report_v3.lua")),
            renew: Script::new(include_str!("lua/renew_v2.lua")),
            unlock: Script::new(include_str!("lua/unlock_v1.lua")),
            take_stats_script: Script::new(include_str!("lua/take_stats_v1.lua")),
        };
        let mut conn = store.conn.clone();
        for s in [
            &store.take_stats_script,
            &store.acquire,
            &store.release,
            &store.report,
            &store.renew,
            &store.unlock,
        ] {
            let _: String = s.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(store)
    }

    fn svc(&self, id: i64) -> String {
        format!("{}s:{id}", self.prefix)
    }
    fn key(&self, id: i64) -> String {
        format!("{}k:{id}", self.prefix)
    }
    fn client(&self, id: Option<i64>) -> String {
        match id {
            Some(id) => format!("{}a:{id}", self.prefix),
            None => format!("{}a:none", self.prefix),
        }
    }

    pub async fn acquire(&self, req: &AcquireReq<'_>) -> Result<Acquire, CoordError> {
        if req.keys.is_empty() {
            return Ok(Acquire::NoKey);
        }
        let lease_id = new_lease_id();
        let svc = self.svc(req.service_id);
        let mut inv = self.acquire.prepare_invoke();
        inv.key(&svc)
            .key(format!("{svc}:leases"))
            .key(self.client(req.client.map(|c| c.access_key_id)))
            .key(match req.session {
                Some(s) => format!("{svc}:aff:{}", s.id),
                None => format!("{svc}:aff"),
            });
        let c = req.client;
        let excluded = req
            .excluded
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        inv.arg(req.strategy.script_name())
            .arg(opt(req.cap))
            .arg(req.lease_ttl_ms)
            .arg(&lease_id)
            .arg(if c.is_some() { 1 } else { 0 })
            .arg(opt(c.and_then(|c| c.rpm)))
            .arg(opt(c.and_then(|c| c.rpd)))
            .arg(opt(c.and_then(|c| c.tpm)))
            .arg(req.price.unwrap_or(0))
            .arg(rand::random::<u32>())
            .arg(self.policy.probe_lock_ms)
            .arg(&self.prefix)
            .arg(&req.keys.ids_csv)
            .arg(&req.keys.overrides)
            .arg(excluded)
            .arg(if req.session.is_some() { 1 } else { 0 })
            .arg(req.session.map_or(0, |s| s.start % req.keys.len() as u64))
            .arg(req.session.map_or(0, |s| s.ttl_ms))
            .arg(self.policy.latency_tau_ms)
            .arg(
                c.and_then(|c| c.budget)
                    .map(|b| b.to_string())
                    .unwrap_or_default(),
            )
            .arg(c.map_or(0, |c| c.spent))
            .arg(req.reserve);
        let mut conn = self.conn.clone();
        let r: Vec<i64> = inv.invoke_async(&mut conn).await?;
        let [code, index, fails, probe, retry_after, rpm, rpd, tpm] = r[..] else {
            return Err(CoordError::Reply(format!("acquire returned {r:?}")));
        };
        let rem = Remaining {
            rpm: remaining(rpm),
            rpd: remaining(rpd),
            tpm: remaining(tpm),
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
                    },
                    fails: fails.max(0) as u32,
                    probe: probe == 1,
                    remaining: rem,
                }
            }
            2 => Acquire::ClientLimited {
                retry_after_ms: retry_after.max(1) as u64,
                remaining: rem,
            },
            3 => Acquire::AtCapacity,
            4 => Acquire::ServiceBackoff {
                retry_after_ms: retry_after.max(1) as u64,
            },
            5 => Acquire::OverBudget { spent: retry_after },
            _ => Acquire::NoKey,
        })
    }

    pub async fn release(&self, lease: &Lease, u: &Usage) -> Result<Released, CoordError> {
        let mut conn = self.conn.clone();
        let settle = u.client.filter(|c| c.budget.is_some()).map(|c| c.spent);
        let (_, _, exhausted): (i64, String, i64) = self
            .release
            .key(format!("{}:leases", self.svc(lease.service_id)))
            .key(self.key(lease.key_id))
            .key(self.client(u.client.map(|c| c.access_key_id)))
            .arg(&lease.member)
            .arg(if u.success { 1 } else { 0 })
            .arg(u.tokens)
            .arg(u.cost)
            .arg(opt(u.key_tpm))
            .arg(opt(u.client.and_then(|c| c.tpm)))
            .arg(u.key_balance.map(|b| b.to_string()).unwrap_or_default())
            .arg(u.latency_ms.map(|l| l.to_string()).unwrap_or_default())
            .arg(self.policy.latency_tau_ms)
            .arg(self.policy.success_tau_ms)
            .arg(match settle {
                Some(_) => (u.cost - u.reserved).to_string(),
                None => String::new(),
            })
            .arg(settle.unwrap_or(0))
            .arg(if u.status == 0 {
                String::new()
            } else {
                u.status.to_string()
            })
            .invoke_async(&mut conn)
            .await?;
        Ok(Released {
            exhausted: exhausted == 1,
        })
    }

    pub async fn settle(&self, client: &ClientLimits, delta: i64) -> Result<(), CoordError> {
        if client.budget.is_none() || delta == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let key = self.client(Some(client.access_key_id));
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

    pub async fn take_stats(&self, key_ids: &[i64]) -> Result<Vec<KeyStats>, CoordError> {
        let mut out = Vec::with_capacity(key_ids.len());
        let mut conn = self.conn.clone();
        // Bounded batches: one script call must not hold Redis for long.
        for chunk in key_ids.chunks(256) {
            let mut inv = self.take_stats_script.prepare_invoke();
            for id in chunk {
                inv.key(self.key(*id));
            }
            let rows: Vec<Vec<String>> = inv.invoke_async(&mut conn).await?;
            for r in rows {
                let n = |i: usize| r.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                out.push(KeyStats {
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
                });
            }
        }
        Ok(out)
    }

    pub async fn spent(&self, access_key_ids: &[i64]) -> Result<Vec<Option<i64>>, CoordError> {
        if access_key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for id in access_key_ids {
            pipe.cmd("HGET")
                .arg(self.client(Some(*id)))
                .arg("spent_micros");
        }
        Ok(pipe.query_async(&mut conn).await?)
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
            .key(self.key(key_id))
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

    pub async fn live_states(&self, key_ids: &[i64]) -> Result<Vec<LiveState>, CoordError> {
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for id in key_ids {
            pipe.cmd("HMGET")
                .arg(self.key(*id))
                .arg("until")
                .arg("fails")
                .arg("reason")
                .arg("inflight");
        }
        let rows: Vec<(Option<f64>, Option<i64>, Option<String>, Option<i64>)> =
            pipe.query_async(&mut conn).await?;
        Ok(rows
            .into_iter()
            .map(|(u, f, r, i)| LiveState {
                until: u.unwrap_or(0.0) as i64,
                fails: f.unwrap_or(0).max(0) as u32,
                reason: r,
                inflight: i.unwrap_or(0).max(0) as u32,
            })
            .collect())
    }

    fn live_minute(&self, service: &str, minute: i64) -> String {
        format!("{}live:{service}:m:{minute}", self.prefix)
    }
    fn live_day(&self, service: &str, day: i64) -> String {
        format!("{}live:{service}:d:{day}", self.prefix)
    }

    /// Increments only, in one MULTI: exact under any number of writers, no read-modify-write.
    pub async fn add_live(&self, deltas: &[LiveDelta]) -> Result<(), CoordError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for d in deltas {
            let m = self.live_minute(&d.service, d.sec.div_euclid(60));
            let day = self.live_day(&d.service, d.sec.div_euclid(DAY_SECS));
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
        let mut out = LiveCounts::default();
        let mut conn = self.conn.clone();
        for chunk in services.chunks(256) {
            let mut pipe = redis::pipe();
            for svc in chunk {
                let minute = now.div_euclid(60);
                pipe.hgetall(self.live_minute(svc, minute - 1))
                    .hgetall(self.live_minute(svc, minute))
                    .hmget(self.live_day(svc, now.div_euclid(DAY_SECS)), &["r", "t"]);
            }
            let rows: Vec<LiveRow> = {
                let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                flat.chunks(3)
                    .map(|c| {
                        Ok((
                            redis::from_redis_value(c[0].clone())?,
                            redis::from_redis_value(c[1].clone())?,
                            redis::from_redis_value(c[2].clone())?,
                        ))
                    })
                    .collect::<Result<_, redis::RedisError>>()?
            };
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
        }
        Ok(out)
    }

    pub async fn set_balance(&self, key_id: i64, balance: Option<i64>) -> Result<(), CoordError> {
        let mut conn = self.conn.clone();
        // `bal_micros`: the integer field the v3 scripts debit with HINCRBY.
        match balance {
            Some(b) => {
                let _: i64 = conn.hset(self.key(key_id), "bal_micros", b).await?;
            }
            None => {
                let _: i64 = conn.hdel(self.key(key_id), "bal_micros").await?;
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

    pub async fn ping(&self) -> bool {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok()
    }
}
