//! Access keys: what clients send. Only the SHA-256 hash is stored.
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr};
use sea_orm::{EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entity::access_key;

pub async fn all_enabled(db: &DatabaseConnection) -> Result<Vec<access_key::Model>, DbErr> {
    access_key::Entity::find()
        .filter(access_key::Column::Enabled.eq(true))
        .all(db)
        .await
}

pub async fn list(
    db: &DatabaseConnection,
    tenant: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<access_key::Model>, DbErr> {
    let mut q = access_key::Entity::find().order_by_asc(access_key::Column::Id);
    if let Some(t) = tenant {
        q = q.filter(access_key::Column::TenantId.eq(t));
    }
    if let Some(a) = after {
        q = q.filter(access_key::Column::Id.gt(a));
    }
    q.limit(limit).all(db).await
}

pub async fn by_id<C: ConnectionTrait>(
    db: &C,
    id: i64,
) -> Result<Option<access_key::Model>, DbErr> {
    access_key::Entity::find_by_id(id).one(db).await
}

pub async fn insert<C: ConnectionTrait>(
    db: &C,
    am: access_key::ActiveModel,
) -> Result<access_key::Model, DbErr> {
    am.insert(db).await
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    am: access_key::ActiveModel,
) -> Result<access_key::Model, DbErr> {
    am.update(db).await
}

pub async fn delete<C: ConnectionTrait>(db: &C, id: i64) -> Result<bool, DbErr> {
    Ok(access_key::Entity::delete_by_id(id)
        .exec(db)
        .await?
        .rows_affected
        > 0)
}

/// Records an access key's live spend (from the coordination store).
pub async fn set_spent(db: &DatabaseConnection, id: i64, spent: i64) -> Result<(), DbErr> {
    use sea_orm::sea_query::Expr;
    access_key::Entity::update_many()
        .col_expr(access_key::Column::SpentMicros, Expr::value(spent))
        .filter(access_key::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}
