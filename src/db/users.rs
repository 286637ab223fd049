//! Users of the admin API.
use chrono::Utc;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr};
use sea_orm::{EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entity::user;

pub async fn by_username<C: ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<Option<user::Model>, DbErr> {
    user::Entity::find()
        .filter(user::Column::Username.eq(name))
        .one(db)
        .await
}

pub async fn by_id<C: ConnectionTrait>(db: &C, id: i64) -> Result<Option<user::Model>, DbErr> {
    user::Entity::find_by_id(id).one(db).await
}

pub async fn list<C: ConnectionTrait>(
    db: &C,
    tenant: Option<i64>,
    after: Option<i64>,
    limit: u64,
) -> Result<Vec<user::Model>, DbErr> {
    let mut q = user::Entity::find().order_by_asc(user::Column::Id);
    if let Some(t) = tenant {
        q = q.filter(user::Column::TenantId.eq(t));
    }
    if let Some(a) = after {
        q = q.filter(user::Column::Id.gt(a));
    }
    q.limit(limit).all(db).await
}

pub async fn count<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    user::Entity::find().count(db).await
}

pub async fn create<C: ConnectionTrait>(
    db: &C,
    tenant_id: Option<i64>,
    username: &str,
    password_hash: String,
    role: &str,
) -> Result<user::Model, DbErr> {
    user::ActiveModel {
        tenant_id: Set(tenant_id),
        username: Set(username.to_string()),
        password_hash: Set(password_hash),
        role: Set(role.to_string()),
        disabled: Set(false),
        token_version: Set(0),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(db)
    .await
}

pub struct UserPatch {
    pub password_hash: Option<String>,
    pub role: Option<String>,
    pub disabled: Option<bool>,
    /// Bump the token version: every token issued before stops working.
    pub revoke_tokens: bool,
}

pub async fn update<C: ConnectionTrait>(
    db: &C,
    existing: user::Model,
    p: UserPatch,
) -> Result<user::Model, DbErr> {
    let version = existing.token_version;
    let mut am: user::ActiveModel = existing.into();
    if let Some(h) = p.password_hash {
        am.password_hash = Set(h);
    }
    if let Some(r) = p.role {
        am.role = Set(r);
    }
    if let Some(d) = p.disabled {
        am.disabled = Set(d);
    }
    if p.revoke_tokens {
        am.token_version = Set(version + 1);
    }
    am.update(db).await
}

/// Revokes every token of user `id` (logout, password reset).
pub async fn revoke_tokens<C: ConnectionTrait>(db: &C, id: i64) -> Result<(), DbErr> {
    use sea_orm::sea_query::{Expr, ExprTrait};
    user::Entity::update_many()
        .col_expr(
            user::Column::TokenVersion,
            Expr::col(user::Column::TokenVersion).add(1),
        )
        .filter(user::Column::Id.eq(id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Enabled admins of no tenant other than `except`: who would be left to administer keygate.
/// Their rows stay locked until the transaction ends (Postgres; SQLite's write transaction
/// holds the database), so two admins demoting each other at once cannot both pass: the second
/// waits, then no longer counts the first. All of them are locked, `except` too, in id order, so
/// two such transactions wait on each other instead of deadlocking.
pub async fn other_active_admins<C: ConnectionTrait>(db: &C, except: i64) -> Result<u64, DbErr> {
    let mut q = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::Role.eq("admin"))
        .filter(user::Column::Disabled.eq(false))
        .filter(user::Column::TenantId.is_null())
        .order_by_asc(user::Column::Id);
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        q = q.lock_exclusive();
    }
    let ids: Vec<i64> = q.into_tuple().all(db).await?;
    Ok(ids.into_iter().filter(|&id| id != except).count() as u64)
}

pub async fn delete<C: ConnectionTrait>(db: &C, id: i64) -> Result<bool, DbErr> {
    Ok(user::Entity::delete_by_id(id).exec(db).await?.rows_affected > 0)
}
