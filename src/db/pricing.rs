//! Pricing rules: a glob on the model, a priority and an optional slug, prices in micro-units.
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection,
};
use sea_orm::{DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entity::pricing_rule;

/// Every rule, for the snapshot.
pub async fn all(db: &DatabaseConnection) -> Result<Vec<pricing_rule::Model>, DbErr> {
    pricing_rule::Entity::find()
        .order_by_asc(pricing_rule::Column::Id)
        .all(db)
        .await
}

/// Global rules and those on `slugs`; every rule when `slugs` is None.
fn visible(slugs: Option<&[String]>) -> Condition {
    match slugs {
        None => Condition::all(),
        Some(s) => Condition::any()
            .add(pricing_rule::Column::Slug.is_null())
            .add(pricing_rule::Column::Slug.is_in(s.iter().cloned())),
    }
}

pub async fn list(
    db: &DatabaseConnection,
    slugs: Option<&[String]>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<pricing_rule::Model>, DbErr> {
    let mut q = pricing_rule::Entity::find()
        .filter(visible(slugs))
        .order_by_asc(pricing_rule::Column::Id);
    if let Some(a) = after {
        q = q.filter(pricing_rule::Column::Id.gt(a));
    }
    q.limit(limit).all(db).await
}

pub async fn by_id(
    db: &DatabaseConnection,
    slugs: Option<&[String]>,
    id: i64,
) -> Result<Option<pricing_rule::Model>, DbErr> {
    pricing_rule::Entity::find_by_id(id)
        .filter(visible(slugs))
        .one(db)
        .await
}

pub async fn insert<C: ConnectionTrait>(
    db: &C,
    mut am: pricing_rule::ActiveModel,
) -> Result<pricing_rule::Model, DbErr> {
    am.created_at = Set(Utc::now());
    am.insert(db).await
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    am: pricing_rule::ActiveModel,
) -> Result<pricing_rule::Model, DbErr> {
    am.update(db).await
}

pub async fn delete<C: ConnectionTrait>(db: &C, id: i64) -> Result<bool, DbErr> {
    Ok(pricing_rule::Entity::delete_by_id(id)
        .exec(db)
        .await?
        .rows_affected
        > 0)
}
