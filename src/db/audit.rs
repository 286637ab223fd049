//! The audit log: appended in the transaction of the write it records; read newest first.
use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbErr};
use sea_orm::{EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entity::audit;

pub async fn insert<C: ConnectionTrait>(db: &C, am: audit::ActiveModel) -> Result<(), DbErr> {
    am.insert(db).await.map(|_| ())
}

/// The newest entry's id: it moves with every admin write, whichever process made it.
pub async fn latest_id<C: ConnectionTrait>(db: &C) -> Result<Option<i64>, DbErr> {
    Ok(audit::Entity::find()
        .select_only()
        .column_as(audit::Column::Id.max(), "latest")
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten())
}

/// What a read of the log keeps; each filter given narrows it.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    /// The reader's tenant (a tenant admin): only entries about that tenant's targets.
    pub scope: Option<i64>,
    pub tenant_id: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// Inclusive.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive.
    pub until: Option<DateTime<Utc>>,
    /// Entries older than this id (the previous page's last).
    pub before_id: Option<i64>,
}

/// Newest first (by id: ids grow with commit order closely enough, and ties in `ts` need a
/// stable order anyway).
pub async fn list<C: ConnectionTrait>(
    db: &C,
    f: &AuditFilter,
    limit: u64,
) -> Result<Vec<audit::Model>, DbErr> {
    use audit::Column as A;
    let mut c = Condition::all();
    if let Some(t) = f.scope {
        c = c.add(A::TenantId.eq(t));
    }
    if let Some(t) = f.tenant_id {
        c = c.add(A::TenantId.eq(t));
    }
    if let Some(a) = &f.actor {
        c = c.add(A::Actor.eq(a.as_str()));
    }
    if let Some(a) = &f.action {
        c = c.add(A::Action.eq(a.as_str()));
    }
    if let Some(t) = &f.target_type {
        c = c.add(A::TargetType.eq(t.as_str()));
    }
    if let Some(t) = &f.target_id {
        c = c.add(A::TargetId.eq(t.as_str()));
    }
    if let Some(s) = f.since {
        c = c.add(A::Ts.gte(s));
    }
    if let Some(u) = f.until {
        c = c.add(A::Ts.lt(u));
    }
    if let Some(b) = f.before_id {
        c = c.add(A::Id.lt(b));
    }
    audit::Entity::find()
        .filter(c)
        .order_by_desc(A::Id)
        .limit(limit)
        .all(db)
        .await
}
