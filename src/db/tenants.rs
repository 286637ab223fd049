//! Tenants: who owns services, access keys and users.
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr};
use sea_orm::{EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entity::{access_key, service, tenant, user};

pub async fn list<C: ConnectionTrait>(
    db: &C,
    only: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<tenant::Model>, DbErr> {
    let mut q = tenant::Entity::find().order_by_asc(tenant::Column::Id);
    if let Some(t) = only {
        q = q.filter(tenant::Column::Id.eq(t));
    }
    if let Some(a) = after {
        q = q.filter(tenant::Column::Id.gt(a));
    }
    q.limit(limit).all(db).await
}

pub async fn by_id<C: ConnectionTrait>(db: &C, id: i64) -> Result<Option<tenant::Model>, DbErr> {
    tenant::Entity::find_by_id(id).one(db).await
}

/// The tenant, its row locked until the transaction ends (`FOR UPDATE` on Postgres; SQLite's
/// write transaction holds the whole database already). A service, access key or user being
/// inserted for it takes a share lock on this row for its foreign key, so the two serialise: a
/// delete cannot miss a row that commits in between and cascade it away.
pub async fn by_id_locked<C: ConnectionTrait>(
    db: &C,
    id: i64,
) -> Result<Option<tenant::Model>, DbErr> {
    let mut q = tenant::Entity::find_by_id(id);
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        q = q.lock_exclusive();
    }
    q.one(db).await
}

pub async fn insert<C: ConnectionTrait>(
    db: &C,
    am: tenant::ActiveModel,
) -> Result<tenant::Model, DbErr> {
    am.insert(db).await
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    am: tenant::ActiveModel,
) -> Result<tenant::Model, DbErr> {
    am.update(db).await
}

pub async fn delete<C: ConnectionTrait>(db: &C, id: i64) -> Result<bool, DbErr> {
    Ok(tenant::Entity::delete_by_id(id)
        .exec(db)
        .await?
        .rows_affected
        > 0)
}

/// What a tenant still owns: its deletion would cascade to these rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owned {
    pub services: u64,
    pub access_keys: u64,
    pub users: u64,
}

impl Owned {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

pub async fn owned<C: ConnectionTrait>(db: &C, id: i64) -> Result<Owned, DbErr> {
    Ok(Owned {
        services: service::Entity::find()
            .filter(service::Column::TenantId.eq(id))
            .count(db)
            .await?,
        access_keys: access_key::Entity::find()
            .filter(access_key::Column::TenantId.eq(id))
            .count(db)
            .await?,
        users: user::Entity::find()
            .filter(user::Column::TenantId.eq(id))
            .count(db)
            .await?,
    })
}
