//! Request logs: retention (partition upkeep on Postgres) and reads. Rows are written by `events::log_writer`.
use std::time::Duration;

use super::entity::{request_log, service};
use super::log_partitions;
use chrono::{DateTime, Utc};
use sea_orm::prelude::{Expr, Uuid};
use sea_orm::sea_query::{ExprTrait, Query};
use sea_orm::{ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use sea_orm::{QueryOrder, QuerySelect};

/// Keeps `request_logs` within the retention once an hour, starting at once (0 days keeps rows
/// forever). On Postgres it also creates the daily partitions ahead of time, so the first run of
/// a fresh deploy makes tomorrow's, and retention drops whole days rather than deleting rows.
/// The same pass trims per-minute statistics and captured bodies to their own retentions.
pub async fn run_retention(db: DatabaseConnection, log: crate::config::LogConfig) {
    let partitioned = match log_partitions::partitioned(&db).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether request_logs is partitioned; deleting by time");
            false
        }
    };
    if log.retention_days == 0
        && !partitioned
        && log.minute_stats_days == 0
        && log.body_retention_days == 0
    {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = prune(&db, log.retention_days).await {
            tracing::warn!(error = %e, "request log retention failed");
        }
        let now = chrono::Utc::now();
        if let Err(e) = prune_side_tables(&db, &log, now).await {
            tracing::warn!(error = %e, "statistics or body retention failed");
        }
    }
}

/// Deletes per-minute statistics older than `log.minute_stats_days` and captured bodies older
/// than `log.body_retention_days` (0 keeps them). Returns the rows deleted from each.
pub async fn prune_side_tables(
    db: &DatabaseConnection,
    log: &crate::config::LogConfig,
    now: DateTime<Utc>,
) -> Result<(u64, u64), DbErr> {
    use sea_orm::ConnectionTrait;
    use sea_orm::sea_query::Alias;
    let mut stats = 0;
    if log.minute_stats_days > 0 {
        let cutoff = now.timestamp() - i64::from(log.minute_stats_days) * 86_400;
        let q = Query::delete()
            .from_table(Alias::new("request_stats"))
            .and_where(Expr::col(Alias::new("grain")).eq(60))
            .and_where(Expr::col(Alias::new("bucket_start")).lt(cutoff))
            .to_owned();
        stats = db.execute(&q).await?.rows_affected();
    }
    let mut bodies = 0;
    if log.body_retention_days > 0 {
        let cutoff = now - chrono::Duration::days(i64::from(log.body_retention_days));
        let q = Query::delete()
            .from_table(Alias::new("request_bodies"))
            .and_where(Expr::col(Alias::new("ts")).lt(cutoff))
            .to_owned();
        bodies = db.execute(&q).await?.rows_affected();
    }
    if stats > 0 || bodies > 0 {
        tracing::info!(
            minute_stats = stats,
            bodies,
            "statistics and bodies past their retention deleted"
        );
    }
    Ok((stats, bodies))
}

/// One retention pass at the current time; see [`prune_at`].
pub async fn prune(db: &DatabaseConnection, days: u32) -> Result<Pruned, DbErr> {
    prune_at(db, days, chrono::Utc::now()).await
}

/// What a retention pass removed (and, on Postgres, the partitions it created).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rows_deleted: u64,
    pub partitions: log_partitions::Changes,
}

/// Removes logs older than `days` before `now` (0 removes nothing): on a partitioned Postgres
/// table by dropping whole days after making sure the days ahead of `now` have partitions;
/// elsewhere by deleting rows by time.
pub async fn prune_at(
    db: &DatabaseConnection,
    days: u32,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Pruned, DbErr> {
    let cutoff = (days > 0).then(|| now - chrono::Duration::days(days as i64));
    if log_partitions::partitioned(db).await? {
        let changes = log_partitions::maintain(db, now, cutoff).await?;
        if !changes.created.is_empty() || !changes.dropped.is_empty() || changes.deleted > 0 {
            tracing::info!(created = ?changes.created, dropped = ?changes.dropped, deleted = changes.deleted, "request log partitions maintained");
        }
        return Ok(Pruned {
            rows_deleted: changes.deleted,
            partitions: changes,
        });
    }
    let Some(cutoff) = cutoff else {
        return Ok(Pruned::default());
    };
    let rows_deleted = request_log::Entity::delete_many()
        .filter(request_log::Column::Ts.lt(cutoff))
        .exec(db)
        .await?
        .rows_affected;
    if rows_deleted > 0 {
        tracing::info!(
            rows = rows_deleted,
            "request logs past the retention deleted"
        );
    }
    Ok(Pruned {
        rows_deleted,
        partitions: Default::default(),
    })
}

/// The captured bodies of one request, if it has any (still within their retention).
pub async fn bodies(
    db: &DatabaseConnection,
    id: Uuid,
) -> Result<Option<crate::events::capture::Bodies>, DbErr> {
    use sea_orm::ConnectionTrait;
    use sea_orm::sea_query::Alias;
    let q = Query::select()
        .columns([Alias::new("request"), Alias::new("response")])
        .from(Alias::new("request_bodies"))
        .and_where(Expr::col(Alias::new("id")).eq(id))
        .to_owned();
    let Some(r) = db.query_one(&q).await? else {
        return Ok(None);
    };
    Ok(Some(crate::events::capture::Bodies {
        request: r.try_get("", "request")?,
        response: r.try_get("", "response")?,
    }))
}

pub async fn count_for_service(db: &DatabaseConnection, slug: &str) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    request_log::Entity::find()
        .filter(request_log::Column::Service.eq(slug))
        .count(db)
        .await
}

/// Which rows a log read may see and which it asks for; every field narrows the set.
#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    /// The caller's tenant: only rows of its services (None: a global user sees every row).
    pub tenant: Option<i64>,
    pub service: Option<String>,
    pub access_key_id: Option<i64>,
    pub upstream_key_id: Option<i64>,
    /// The client's or the upstream's model name.
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    pub status: Option<StatusMatch>,
    pub error_kind: Option<String>,
    pub streamed: Option<bool>,
    pub estimated: Option<bool>,
    pub target: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(i32),
    /// `4xx`: 400 to 499.
    Class(i32),
}

/// The position after a row in (ts desc, id desc) order. Uuid v7 ids are time-ordered but two
/// replicas' clocks are not, so the id only breaks ties between equal timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    pub ts: DateTime<Utc>,
    pub id: Uuid,
}

impl LogFilter {
    fn condition(&self) -> Condition {
        use request_log::Column as C;
        let mut c = Condition::all();
        if let Some(t) = self.tenant {
            c = c.add(
                Expr::col((request_log::Entity, C::Service)).in_subquery(
                    Query::select()
                        .column(service::Column::Slug)
                        .from(service::Entity)
                        .and_where(service::Column::TenantId.eq(t))
                        .to_owned(),
                ),
            );
        }
        let eq = |c: Condition, col: C, v: &Option<String>| match v {
            Some(v) => c.add(col.eq(v.clone())),
            None => c,
        };
        c = eq(c, C::Service, &self.service);
        c = eq(c, C::UpstreamModel, &self.upstream_model);
        c = eq(c, C::ErrorKind, &self.error_kind);
        c = eq(c, C::Target, &self.target);
        if let Some(m) = &self.model {
            c = c.add(
                Condition::any()
                    .add(C::Model.eq(m.clone()))
                    .add(C::UpstreamModel.eq(m.clone())),
            );
        }
        if let Some(id) = self.access_key_id {
            c = c.add(C::AccessKeyId.eq(id));
        }
        if let Some(id) = self.upstream_key_id {
            c = c.add(C::UpstreamKeyId.eq(id));
        }
        c = match self.status {
            Some(StatusMatch::Exact(s)) => c.add(C::Status.eq(s)),
            Some(StatusMatch::Class(k)) => c.add(C::Status.between(k * 100, k * 100 + 99)),
            None => c,
        };
        // Postgres indexes statuses from 300 only (migration 015). The planner uses a partial
        // index when the query implies its predicate, which a bound parameter does not show under
        // a generic plan: the predicate is added as the same literal.
        if matches!(self.status, Some(StatusMatch::Exact(s)) if s >= 300)
            || matches!(self.status, Some(StatusMatch::Class(k)) if k >= 3)
        {
            c = c.add(Expr::cust(r#""request_logs"."status" >= 300"#));
        }
        if let Some(s) = self.streamed {
            c = c.add(C::Streamed.eq(s));
        }
        if let Some(e) = self.estimated {
            c = c.add(C::Estimated.eq(e));
        }
        if let Some(f) = self.from {
            c = c.add(C::Ts.gte(f));
        }
        if let Some(t) = self.to {
            c = c.add(C::Ts.lt(t));
        }
        c
    }
}

/// One page of rows matching `f`, newest first, strictly after `after`. Rows inserted while a
/// client pages are either newer than its cursor (not in later pages) or fall in order.
pub async fn page(
    db: &DatabaseConnection,
    f: &LogFilter,
    after: Option<LogCursor>,
    limit: u64,
) -> Result<Vec<request_log::Model>, DbErr> {
    page_query(f, after, limit).all(db).await
}

/// The query `page` runs (public so a test can EXPLAIN it).
pub fn page_query(
    f: &LogFilter,
    after: Option<LogCursor>,
    limit: u64,
) -> sea_orm::Select<request_log::Entity> {
    use request_log::Column as C;
    let mut q = request_log::Entity::find().filter(f.condition());
    if let Some(a) = after {
        q = q.filter(
            Condition::any()
                .add(C::Ts.lt(a.ts))
                .add(Condition::all().add(C::Ts.eq(a.ts)).add(C::Id.lt(a.id))),
        );
    }
    q.order_by_desc(C::Ts).order_by_desc(C::Id).limit(limit)
}

/// One row, if it exists and the tenant may see it.
pub async fn by_id(
    db: &DatabaseConnection,
    tenant: Option<i64>,
    id: Uuid,
) -> Result<Option<request_log::Model>, DbErr> {
    use request_log::Column as C;
    let f = LogFilter {
        tenant,
        ..Default::default()
    };
    let mut q = request_log::Entity::find_by_id(id).filter(f.condition());
    // Postgres has no index on the id alone (migration 015): the row's time, which its uuid v7
    // carries (`events::log_id`), narrows the read to a second of the time index either side.
    if let Some(t) = crate::events::id_time(id) {
        let margin = chrono::Duration::seconds(1);
        q = q.filter(C::Ts.gte(t - margin)).filter(C::Ts.lt(t + margin));
    }
    q.one(db).await
}
