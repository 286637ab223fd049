//! Services (slugs).
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr,
};
use sea_orm::{DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entity::{pricing_rule, service};

pub async fn all(db: &DatabaseConnection) -> Result<Vec<service::Model>, DbErr> {
    service::Entity::find()
        .order_by_asc(service::Column::Id)
        .all(db)
        .await
}

/// Enabled services with a scheduled key validation.
pub async fn with_validation(db: &DatabaseConnection) -> Result<Vec<service::Model>, DbErr> {
    service::Entity::find()
        .filter(service::Column::ValidateIntervalS.gt(0))
        .filter(service::Column::Enabled.eq(true))
        .order_by_asc(service::Column::Id)
        .all(db)
        .await
}

/// Enabled services with balance sync settings.
pub async fn with_balance_sync(db: &DatabaseConnection) -> Result<Vec<service::Model>, DbErr> {
    service::Entity::find()
        .filter(service::Column::BalanceSync.is_not_null())
        .filter(service::Column::Enabled.eq(true))
        .order_by_asc(service::Column::Id)
        .all(db)
        .await
}

pub async fn list(
    db: &DatabaseConnection,
    tenant: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<service::Model>, DbErr> {
    let mut q = service::Entity::find().order_by_asc(service::Column::Id);
    if let Some(t) = tenant {
        q = q.filter(service::Column::TenantId.eq(t));
    }
    if let Some(a) = after {
        q = q.filter(service::Column::Id.gt(a));
    }
    q.limit(limit).all(db).await
}

/// The slugs of a tenant's services.
pub async fn slugs_of_tenant(db: &DatabaseConnection, tenant: i64) -> Result<Vec<String>, DbErr> {
    service::Entity::find()
        .select_only()
        .column(service::Column::Slug)
        .filter(service::Column::TenantId.eq(tenant))
        .into_tuple()
        .all(db)
        .await
}

pub async fn by_slug(db: &DatabaseConnection, slug: &str) -> Result<Option<service::Model>, DbErr> {
    service::Entity::find()
        .filter(service::Column::Slug.eq(slug))
        .one(db)
        .await
}

pub async fn insert<C: ConnectionTrait>(
    db: &C,
    mut am: service::ActiveModel,
) -> Result<service::Model, DbErr> {
    let now = Utc::now();
    am.created_at = Set(now);
    am.updated_at = Set(now);
    am.insert(db).await
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    mut am: service::ActiveModel,
) -> Result<service::Model, DbErr> {
    am.updated_at = Set(Utc::now());
    am.update(db).await
}

/// Deletes a service and the pricing rules on its slug. Run it in a transaction (the caller's,
/// which also holds the audit record) so both go together: a slug created later (perhaps by
/// another tenant) must not inherit the rules.
pub async fn delete(txn: &DatabaseTransaction, s: &service::Model) -> Result<bool, DbErr> {
    pricing_rule::Entity::delete_many()
        .filter(pricing_rule::Column::Slug.eq(s.slug.as_str()))
        .exec(txn)
        .await?;
    Ok(service::Entity::delete_by_id(s.id)
        .exec(txn)
        .await?
        .rows_affected
        > 0)
}

/// The slug of a router whose routes name `target`, if any.
pub async fn routers_targeting(
    db: &DatabaseConnection,
    target: &str,
) -> Result<Option<String>, DbErr> {
    let routers = service::Entity::find()
        .filter(service::Column::Kind.eq("router"))
        .all(db)
        .await?;
    Ok(routers
        .into_iter()
        .find(|r| {
            r.routes
                .as_ref()
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|route| route.get("targets")?.as_array())
                .flatten()
                .any(|t| t.as_str() == Some(target))
        })
        .map(|r| r.slug))
}
