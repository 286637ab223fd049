//! Tenants: who owns services, access keys and users. Admins of no tenant create, rename and
//! delete them; everyone reads the tenants they see (all for global users, their own otherwise).
//! A tenant that still owns anything is not deleted (the rows would cascade away with it), nor is
//! the default one.
use sea_orm::ActiveValue::Set;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::{self, Change, Target};
use super::{Actor, Error, List, Page, Result, Role};
use crate::db::{self, entity::tenant};
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantView {
    pub id: i64,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<tenant::Model> for TenantView {
    fn from(t: tenant::Model) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "acme"}))]
pub struct CreateTenant {
    /// 1 to 64 characters, not only spaces (leading and trailing spaces are dropped); unique.
    #[schema(max_length = 64, pattern = "\\S")]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    /// 1 to 64 characters, not only spaces (leading and trailing spaces are dropped); unique.
    #[schema(max_length = 64, pattern = "\\S")]
    pub name: Option<String>,
}

fn check_name(name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 64 {
        return Err(Error::BadRequest("name: must be 1 to 64 characters".into()));
    }
    Ok(n.to_string())
}

/// Tenants are above any one tenant: only an admin of none writes them.
fn require_global_admin(actor: &Actor) -> Result<()> {
    actor.require(Role::Admin)?;
    if actor.tenant_scope().is_some() {
        return Err(Error::Forbidden(
            "only an admin of no tenant may create, change or delete tenants",
        ));
    }
    Ok(())
}

fn taken(name: &str) -> impl Fn(sea_orm::DbErr) -> Error + '_ {
    move |e| match Error::from(e) {
        Error::Conflict(_) => Error::Conflict(format!("name: '{name}' is taken")),
        other => other,
    }
}

fn target(t: &TenantView) -> Target {
    // A tenant's own record belongs to it: its admins see renames of their tenant in the log.
    Target::new("tenant", t.id, Some(t.id))
}

fn not_found(id: i64) -> Error {
    Error::NotFound(format!("tenant {id} not found"))
}

/// The tenants the actor sees, by id.
pub async fn list(state: &AppState, actor: &Actor, page: &Page) -> Result<List<TenantView>> {
    let limit = page.limit()?;
    let rows = db::tenants::list(&state.db, actor.tenant_scope(), page.after()?, limit).await?;
    let last = rows.last().map(|t| t.id);
    Ok(List::page(
        rows.into_iter().map(Into::into).collect(),
        last,
        limit,
    ))
}

/// A tenant the actor sees (another tenant is not found, not forbidden).
pub async fn get(state: &AppState, actor: &Actor, id: i64) -> Result<TenantView> {
    if actor.tenant_scope().is_some_and(|t| t != id) {
        return Err(not_found(id));
    }
    db::tenants::by_id(&state.db, id)
        .await?
        .map(Into::into)
        .ok_or_else(|| not_found(id))
}

pub async fn create(state: &AppState, actor: &Actor, req: CreateTenant) -> Result<TenantView> {
    require_global_admin(actor)?;
    let name = check_name(&req.name)?;
    let txn = db::begin_write(&state.db).await?;
    let view: TenantView = db::tenants::insert(
        &txn,
        tenant::ActiveModel {
            name: Set(name.clone()),
            created_at: Set(chrono::Utc::now()),
            ..Default::default()
        },
    )
    .await
    .map_err(taken(&name))?
    .into();
    audit::record(&txn, actor, "create", target(&view), Change::created(&view)).await?;
    txn.commit().await?;
    Ok(view)
}

pub async fn update(
    state: &AppState,
    actor: &Actor,
    id: i64,
    req: PatchTenant,
) -> Result<TenantView> {
    require_global_admin(actor)?;
    let name = req.name.as_deref().map(check_name).transpose()?;
    let txn = db::begin_write(&state.db).await?;
    let found = db::tenants::by_id(&txn, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let before = TenantView::from(found.clone());
    let mut am: tenant::ActiveModel = found.into();
    if let Some(n) = &name {
        am.name = Set(n.clone());
    }
    let after: TenantView = db::tenants::update(&txn, am)
        .await
        .map_err(taken(name.as_deref().unwrap_or_default()))?
        .into();
    audit::record(
        &txn,
        actor,
        "update",
        target(&after),
        Change::updated(&before, &after),
    )
    .await?;
    txn.commit().await?;
    Ok(after)
}

/// Deletes an empty tenant. One that still owns services, access keys or users is refused
/// (409) rather than taking them with it; so is the default tenant, where global users' writes
/// land.
pub async fn delete(state: &AppState, actor: &Actor, id: i64) -> Result<()> {
    require_global_admin(actor)?;
    if id == db::DEFAULT_TENANT {
        return Err(Error::Conflict(
            "the default tenant cannot be deleted: the writes of users of no tenant go to it"
                .into(),
        ));
    }
    let txn = db::begin_write(&state.db).await?;
    let before: TenantView = db::tenants::by_id_locked(&txn, id)
        .await?
        .ok_or_else(|| not_found(id))?
        .into();
    let owned = db::tenants::owned(&txn, id).await?;
    if !owned.is_empty() {
        return Err(Error::Conflict(format!(
            "tenant {id} still owns {} service(s), {} access key(s) and {} user(s): delete them first",
            owned.services, owned.access_keys, owned.users
        )));
    }
    db::tenants::delete(&txn, id).await?;
    audit::record(
        &txn,
        actor,
        "delete",
        target(&before),
        Change::deleted(&before),
    )
    .await?;
    txn.commit().await?;
    Ok(())
}
