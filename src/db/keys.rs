//! Upstream keys of a service. Secrets arrive here already encrypted.
use std::collections::HashSet;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr,
};
use sea_orm::{DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entity::upstream_key;

/// Ids per `IN (...)`: well under both backends' bind-parameter limits.
const CHUNK: usize = 500;

/// Statuses that keep a key in the snapshot used by the data plane.
pub const ROUTABLE: [&str; 2] = ["active", "cooling"];

pub async fn routable(db: &DatabaseConnection) -> Result<Vec<upstream_key::Model>, DbErr> {
    upstream_key::Entity::find()
        .filter(upstream_key::Column::Status.is_in(ROUTABLE))
        .order_by_asc(upstream_key::Column::Id)
        .all(db)
        .await
}

pub async fn list(
    db: &DatabaseConnection,
    service_id: i64,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<upstream_key::Model>, DbErr> {
    let mut q = upstream_key::Entity::find()
        .filter(upstream_key::Column::ServiceId.eq(service_id))
        .order_by_asc(upstream_key::Column::Id);
    if let Some(a) = after {
        q = q.filter(upstream_key::Column::Id.gt(a));
    }
    q.limit(limit).all(db).await
}

/// Every key of a service, in id order.
pub async fn of_service(
    db: &DatabaseConnection,
    service_id: i64,
) -> Result<Vec<upstream_key::Model>, DbErr> {
    upstream_key::Entity::find()
        .filter(upstream_key::Column::ServiceId.eq(service_id))
        .order_by_asc(upstream_key::Column::Id)
        .all(db)
        .await
}

/// Stores when and with what error (None: it answered) a validation tested the key, with whatever
/// else `am` carries (a `reactivate` when the test brought the key back).
pub async fn set_validation(
    db: &DatabaseConnection,
    mut am: upstream_key::ActiveModel,
    error: Option<String>,
) -> Result<(), DbErr> {
    am.validated_at = Set(Some(Utc::now()));
    am.validation_error = Set(error);
    match am.update(db).await {
        Ok(_) | Err(DbErr::RecordNotUpdated) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Stores a balance sync's time and error (None: it read the balance) with whatever else `am`
/// carries (the balance, a status change); returns the time stored.
pub async fn set_sync(
    db: &DatabaseConnection,
    mut am: upstream_key::ActiveModel,
    error: Option<String>,
) -> Result<chrono::DateTime<Utc>, DbErr> {
    let now = Utc::now();
    am.balance_synced_at = Set(Some(now));
    am.sync_error = Set(error);
    match am.update(db).await {
        Ok(_) | Err(DbErr::RecordNotUpdated) => Ok(now),
        Err(e) => Err(e),
    }
}

pub async fn by_id<C: ConnectionTrait>(
    db: &C,
    service_id: i64,
    id: i64,
) -> Result<Option<upstream_key::Model>, DbErr> {
    upstream_key::Entity::find_by_id(id)
        .filter(upstream_key::Column::ServiceId.eq(service_id))
        .one(db)
        .await
}

/// A key ready to insert: encrypted secret and its fingerprint.
pub struct NewKey {
    pub secret_enc: String,
    pub fingerprint: String,
    pub label: Option<String>,
    pub weight: i32,
    /// Micro-units.
    pub balance_micros: Option<i64>,
    /// Sealed (`egress::seal_proxy`).
    pub egress_proxy_enc: Option<String>,
}

/// What `insert_new` would do with these fingerprints, without writing: (new, duplicates), a
/// fingerprint repeated in the list counting as a duplicate after its first time.
pub async fn count_new(
    db: &DatabaseConnection,
    service_id: i64,
    fps: &[String],
) -> Result<(usize, usize), DbErr> {
    let mut seen: HashSet<String> = HashSet::new();
    for chunk in fps.chunks(500) {
        let existing: Vec<String> = upstream_key::Entity::find()
            .select_only()
            .column(upstream_key::Column::Fingerprint)
            .filter(upstream_key::Column::ServiceId.eq(service_id))
            .filter(upstream_key::Column::Fingerprint.is_in(chunk.to_vec()))
            .into_tuple()
            .all(db)
            .await?;
        seen.extend(existing);
    }
    let new = fps.iter().filter(|f| seen.insert((*f).clone())).count();
    Ok((new, fps.len() - new))
}

/// Inserts keys whose fingerprint is not yet in the service, in one transaction.
/// Returns (added, duplicates).
///
/// Reads the existing fingerprints, then inserts: run it in a write transaction from the start
/// (`db::begin_write`), which the caller commits.
pub async fn insert_new(
    txn: &DatabaseTransaction,
    service_id: i64,
    keys: Vec<NewKey>,
) -> Result<(usize, usize), DbErr> {
    let fps: Vec<String> = keys.iter().map(|k| k.fingerprint.clone()).collect();
    let mut seen: HashSet<String> = HashSet::new();
    for chunk in fps.chunks(500) {
        let existing: Vec<String> = upstream_key::Entity::find()
            .select_only()
            .column(upstream_key::Column::Fingerprint)
            .filter(upstream_key::Column::ServiceId.eq(service_id))
            .filter(upstream_key::Column::Fingerprint.is_in(chunk.to_vec()))
            .into_tuple()
            .all(txn)
            .await?;
        seen.extend(existing);
    }
    let now = Utc::now();
    let (mut added, mut dup) = (0, 0);
    let mut batch = Vec::new();
    for k in keys {
        if !seen.insert(k.fingerprint.clone()) {
            dup += 1;
            continue;
        }
        added += 1;
        batch.push(upstream_key::ActiveModel {
            service_id: Set(service_id),
            secret: Set(k.secret_enc),
            fingerprint: Set(k.fingerprint),
            label: Set(k.label),
            weight: Set(k.weight),
            status: Set("active".into()),
            balance_micros: Set(k.balance_micros),
            egress_proxy: Set(k.egress_proxy_enc),
            quota_total_micros: Set(None),
            quota_used_micros: Set(0),
            rpm: Set(None),
            tpm: Set(None),
            last_used_at: Set(None),
            last_error: Set(None),
            consecutive_failures: Set(0),
            created_at: Set(now),
            ..Default::default()
        });
        if batch.len() >= 200 {
            upstream_key::Entity::insert_many(std::mem::take(&mut batch))
                .exec_without_returning(txn)
                .await?;
        }
    }
    if !batch.is_empty() {
        upstream_key::Entity::insert_many(batch)
            .exec_without_returning(txn)
            .await?;
    }
    Ok((added, dup))
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    am: upstream_key::ActiveModel,
) -> Result<upstream_key::Model, DbErr> {
    am.update(db).await
}

/// Puts a key back in rotation (an operator re-enabled it, or a validation found it answering):
/// its durable status and the failure record it carried are cleared. The caller also clears its
/// live health in the coordination store (`Fault::Clear`).
pub fn reactivate(am: &mut upstream_key::ActiveModel) {
    am.status = Set("active".into());
    am.last_error = Set(None);
    am.consecutive_failures = Set(0);
}

/// Records a health transition decided by the data plane (off the hot path).
pub async fn set_status(
    db: &DatabaseConnection,
    id: i64,
    status: Option<&str>,
    error: &str,
) -> Result<(), DbErr> {
    let mut am = upstream_key::ActiveModel {
        id: sea_orm::ActiveValue::Unchanged(id),
        last_error: Set(Some(error.to_string())),
        last_used_at: Set(Some(Utc::now())),
        ..Default::default()
    };
    if let Some(s) = status {
        am.status = Set(s.to_string());
    }
    match am.update(db).await {
        Ok(_) | Err(DbErr::RecordNotUpdated) => Ok(()),
        Err(e) => Err(e),
    }
}

pub async fn delete<C: ConnectionTrait>(db: &C, service_id: i64, id: i64) -> Result<bool, DbErr> {
    let r = upstream_key::Entity::delete_many()
        .filter(upstream_key::Column::Id.eq(id))
        .filter(upstream_key::Column::ServiceId.eq(service_id))
        .exec(db)
        .await?;
    Ok(r.rows_affected > 0)
}

/// The service's keys among `ids`, in id order (ids of other services are not found).
pub async fn by_ids(
    db: &DatabaseConnection,
    service_id: i64,
    ids: &[i64],
) -> Result<Vec<upstream_key::Model>, DbErr> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        out.extend(
            upstream_key::Entity::find()
                .filter(upstream_key::Column::ServiceId.eq(service_id))
                .filter(upstream_key::Column::Id.is_in(chunk.to_vec()))
                .all(db)
                .await?,
        );
    }
    out.sort_by_key(|k| k.id);
    Ok(out)
}

/// The stored (encrypted) secrets of the keys among `ids`, of any service: for showing the keys
/// a log row names, masked.
pub async fn secrets_by_ids(
    db: &DatabaseConnection,
    ids: &[i64],
) -> Result<Vec<(i64, String)>, DbErr> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        out.extend(
            upstream_key::Entity::find()
                .select_only()
                .column(upstream_key::Column::Id)
                .column(upstream_key::Column::Secret)
                .filter(upstream_key::Column::Id.is_in(chunk.to_vec()))
                .into_tuple::<(i64, String)>()
                .all(db)
                .await?,
        );
    }
    Ok(out)
}

/// Writes the columns `am` sets (e.g. a `reactivate`) on the service's keys `ids`, in the
/// caller's transaction (all or none).
pub async fn update_many(
    txn: &DatabaseTransaction,
    service_id: i64,
    ids: &[i64],
    am: upstream_key::ActiveModel,
) -> Result<(), DbErr> {
    for chunk in ids.chunks(CHUNK) {
        upstream_key::Entity::update_many()
            .set(am.clone())
            .filter(upstream_key::Column::ServiceId.eq(service_id))
            .filter(upstream_key::Column::Id.is_in(chunk.to_vec()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// Deletes the service's keys `ids`, in the caller's transaction (all or none).
pub async fn delete_many(
    txn: &DatabaseTransaction,
    service_id: i64,
    ids: &[i64],
) -> Result<(), DbErr> {
    for chunk in ids.chunks(CHUNK) {
        upstream_key::Entity::delete_many()
            .filter(upstream_key::Column::ServiceId.eq(service_id))
            .filter(upstream_key::Column::Id.is_in(chunk.to_vec()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

pub async fn ids_of_service(db: &DatabaseConnection, service_id: i64) -> Result<Vec<i64>, DbErr> {
    upstream_key::Entity::find()
        .select_only()
        .column(upstream_key::Column::Id)
        .filter(upstream_key::Column::ServiceId.eq(service_id))
        .into_tuple()
        .all(db)
        .await
}

/// (id, service id, stored status) of every key, for the key status gauges.
pub async fn statuses(db: &DatabaseConnection) -> Result<Vec<(i64, i64, String)>, DbErr> {
    upstream_key::Entity::find()
        .select_only()
        .column(upstream_key::Column::Id)
        .column(upstream_key::Column::ServiceId)
        .column(upstream_key::Column::Status)
        .order_by_asc(upstream_key::Column::Id)
        .into_tuple()
        .all(db)
        .await
}

/// Every key as (key id, service id), by id, for the statistics flush.
pub async fn all_ids(db: &DatabaseConnection) -> Result<Vec<(i64, i64)>, DbErr> {
    upstream_key::Entity::find()
        .select_only()
        .column(upstream_key::Column::Id)
        .column(upstream_key::Column::ServiceId)
        .order_by_asc(upstream_key::Column::Id)
        .into_tuple()
        .all(db)
        .await
}

/// Adds a key's statistics since the last flush, and records its live balance and last use.
pub async fn add_stats(
    db: &DatabaseConnection,
    id: i64,
    s: &crate::coord::KeyStats,
) -> Result<(), DbErr> {
    use sea_orm::sea_query::{Expr, ExprTrait};
    use upstream_key::Column as C;
    let add = |c: C, n: i64| (c, Expr::col(c).add(n));
    let mut q = upstream_key::Entity::update_many().filter(C::Id.eq(id));
    for (c, e) in [
        add(C::RequestsTotal, s.requests),
        add(C::SuccessesTotal, s.successes),
        add(C::Failures4xx, s.failures_4xx),
        add(C::Failures5xx, s.failures_5xx),
        add(C::FailuresNetwork, s.failures_network),
        add(C::TokensTotal, s.tokens),
        add(C::CostTotalMicros, s.cost),
    ] {
        q = q.col_expr(c, e);
    }
    if let Some(b) = s.balance {
        q = q.col_expr(C::BalanceMicros, Expr::value(b));
    }
    if s.last_used > 0
        && let Some(t) = chrono::DateTime::from_timestamp_millis(s.last_used)
    {
        q = q.col_expr(C::LastUsedAt, Expr::value(t));
    }
    q.exec(db).await?;
    add_status_counts(db, id, &s.failures_by_status).await
}

/// Adds to a key's failures by status (`key_status_counts`), additively: replicas flushing at
/// once each add what they took.
async fn add_status_counts(
    db: &DatabaseConnection,
    id: i64,
    counts: &std::collections::BTreeMap<u16, i64>,
) -> Result<(), DbErr> {
    use sea_orm::sea_query::{Alias, Expr, OnConflict, Query};
    if counts.is_empty() {
        return Ok(());
    }
    let mut q = Query::insert();
    q.into_table(Alias::new("key_status_counts")).columns([
        Alias::new("key_id"),
        Alias::new("status"),
        Alias::new("count"),
    ]);
    for (status, n) in counts {
        q.values_panic([id.into(), i32::from(*status).into(), (*n).into()]);
    }
    q.on_conflict(
        OnConflict::columns([Alias::new("key_id"), Alias::new("status")])
            .value(
                Alias::new("count"),
                Expr::cust("key_status_counts.count + excluded.count"),
            )
            .to_owned(),
    );
    db.execute(&q).await.map(|_| ())
}

/// Failures by status of each key given (status 0 = no answer).
pub async fn status_counts(
    db: &DatabaseConnection,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, std::collections::BTreeMap<u16, i64>>, DbErr> {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    let mut out: std::collections::HashMap<i64, std::collections::BTreeMap<u16, i64>> =
        Default::default();
    for chunk in ids.chunks(500) {
        let mut q = Query::select();
        q.columns([
            Alias::new("key_id"),
            Alias::new("status"),
            Alias::new("count"),
        ])
        .from(Alias::new("key_status_counts"))
        .and_where(Expr::col(Alias::new("key_id")).is_in(chunk.iter().copied()));
        for r in db.query_all(&q).await? {
            let (id, status, n): (i64, i32, i64) = (
                r.try_get("", "key_id")?,
                r.try_get("", "status")?,
                r.try_get("", "count")?,
            );
            if n != 0 {
                out.entry(id)
                    .or_default()
                    .insert(u16::try_from(status).unwrap_or(0), n);
            }
        }
    }
    Ok(out)
}
