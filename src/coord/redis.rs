//! Redis coordination store for many replicas. Every change happens inside a Lua script whose
//! name carries a version (`select_rr_v1`), so a rolling deploy never runs changed logic under an
//! old name; scripts are loaded at start and called by SHA (EVALSHA, falling back to EVAL).
use deadpool_redis::{Config as PoolConfig, Pool, Runtime};
use redis::{AsyncCommands, Script};

use super::{CoordError, LiveState, Outcome, Pick, Report};

#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    prefix: String,
    select_rr: Script,
    report: Script,
}

impl RedisStore {
    pub async fn connect(url: &str, prefix: &str, pool_size: usize) -> anyhow::Result<Self> {
        let mut cfg = PoolConfig::from_url(url);
        cfg.pool = Some(deadpool_redis::PoolConfig::new(pool_size));
        let pool = cfg.create_pool(Some(Runtime::Tokio1))?;
        let store = Self {
            pool,
            prefix: prefix.to_string(),
            select_rr: Script::new(include_str!("lua/select_rr_v1.lua")),
            report: Script::new(include_str!("lua/report_v1.lua")),
        };
        let mut conn = store.pool.get().await?;
        for s in [&store.select_rr, &store.report] {
            let _: String = s.prepare_invoke().load_async(&mut *conn).await?;
        }
        Ok(store)
    }

    fn key_state(&self, id: i64) -> String {
        format!("{}key:{id}", self.prefix)
    }

    pub async fn select_round_robin(
        &self,
        service_id: i64,
        key_ids: &[i64],
    ) -> Result<Option<Pick>, CoordError> {
        if key_ids.is_empty() {
            return Ok(None);
        }
        let mut inv = self.select_rr.prepare_invoke();
        inv.key(format!("{}rr:{service_id}", self.prefix));
        for id in key_ids {
            inv.key(self.key_state(*id));
        }
        let mut conn = self.pool.get().await?;
        let (idx, fails): (i64, i64) = inv.invoke_async(&mut *conn).await?;
        if idx == 0 {
            return Ok(None);
        }
        if idx < 1 || idx as usize > key_ids.len() {
            return Err(CoordError::Reply(format!("select_rr index {idx}")));
        }
        Ok(Some(Pick {
            index: idx as usize - 1,
            fails: fails.max(0) as u32,
        }))
    }

    pub async fn report(
        &self,
        key_id: i64,
        outcome: &Outcome,
        reason: &str,
    ) -> Result<Report, CoordError> {
        let (kind, ms, threshold) = match outcome {
            Outcome::Invalid => ("invalid", 0, 0),
            Outcome::Cool { ms } => ("cool", *ms, 0),
            Outcome::Fail { threshold, ms } => ("fail", *ms, *threshold),
            Outcome::Ok => ("ok", 0, 0),
            Outcome::Clear => ("clear", 0, 0),
        };
        let mut conn = self.pool.get().await?;
        let (fails, until): (i64, i64) = self
            .report
            .key(self.key_state(key_id))
            .arg(kind)
            .arg(ms)
            .arg(threshold)
            .arg(reason)
            .invoke_async(&mut *conn)
            .await?;
        Ok(Report {
            fails: fails.max(0) as u32,
            until,
        })
    }

    pub async fn live_states(&self, key_ids: &[i64]) -> Result<Vec<LiveState>, CoordError> {
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.get().await?;
        let mut pipe = redis::pipe();
        for id in key_ids {
            pipe.cmd("HMGET")
                .arg(self.key_state(*id))
                .arg("until")
                .arg("fails")
                .arg("reason");
        }
        let rows: Vec<(Option<i64>, Option<i64>, Option<String>)> =
            pipe.query_async(&mut *conn).await?;
        Ok(rows
            .into_iter()
            .map(|(u, f, r)| LiveState {
                until: u.unwrap_or(0),
                fails: f.unwrap_or(0).max(0) as u32,
                reason: r,
            })
            .collect())
    }

    pub async fn config_version(&self) -> Result<u64, CoordError> {
        let mut conn = self.pool.get().await?;
        let v: Option<u64> = conn.get(format!("{}cfgver", self.prefix)).await?;
        Ok(v.unwrap_or(0))
    }

    pub async fn bump_config_version(&self) -> Result<u64, CoordError> {
        let mut conn = self.pool.get().await?;
        Ok(conn.incr(format!("{}cfgver", self.prefix), 1u64).await?)
    }

    pub async fn ping(&self) -> bool {
        match self.pool.get().await {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut *c)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }
}
