//! Users of the admin API. Admins manage users; a tenant's admin manages that tenant's users
//! only (others are not found), and every admin of no tenant manages everyone. Anyone changes
//! their own password, given the current one. keygate always keeps an enabled admin of no tenant.
//! A password, role or disabled change and a logout revoke the user's tokens (token version).
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::{self, Change, Target};
use super::{Actor, Error, List, Page, Result, Role};
use crate::db::{self, entity::user};
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    /// Null: a global user, who sees every tenant.
    pub tenant_id: Option<i64>,
    pub username: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl TryFrom<user::Model> for UserView {
    type Error = Error;

    /// Fails only on a row edited by hand outside the API.
    fn try_from(u: user::Model) -> Result<Self> {
        Ok(Self {
            role: u.role.parse().map_err(|e| {
                Error::Internal(anyhow::anyhow!("user {} has a bad role: {e}", u.id))
            })?,
            id: u.id,
            tenant_id: u.tenant_id,
            username: u.username,
            disabled: u.disabled,
            created_at: u.created_at,
        })
    }
}

/// No `Debug`: it carries a password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1 to 64 characters, not only spaces (leading and trailing spaces are dropped).
    #[schema(max_length = 64, pattern = "\\S", example = "ops-alice")]
    pub username: String,
    /// At least 8 characters.
    #[schema(min_length = 8, example = "correct-horse-battery")]
    pub password: String,
    pub role: Role,
    /// An existing tenant. Absent: your own tenant, or a global user when you have none. A
    /// tenant's admin creates users of that tenant only.
    pub tenant_id: Option<i64>,
}

/// No `Debug`: it carries a password.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    /// At least 8 characters.
    #[schema(min_length = 8)]
    pub password: Option<String>,
    /// Required when you change your own password.
    pub current_password: Option<String>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

/// A user as the audit log keeps it: the view, and whether the write set a new password (never
/// the password or its hash).
#[derive(Serialize)]
struct Audited<'a> {
    #[serde(flatten)]
    user: &'a UserView,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    credentials_changed: bool,
}

fn audited(user: &UserView, credentials_changed: bool) -> Audited<'_> {
    Audited {
        user,
        credentials_changed,
    }
}

fn target(u: &UserView) -> Target {
    Target::new("user", u.id, u.tenant_id)
}

fn check_password(p: &str) -> Result<()> {
    if p.chars().count() < 8 {
        return Err(Error::BadRequest(
            "password: must be at least 8 characters".into(),
        ));
    }
    Ok(())
}

/// Argon2 takes tens of milliseconds of CPU: off the async workers, and before any transaction
/// opens (a SQLite write transaction holds the whole database).
async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || crate::crypto::hash_password(&password))
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map_err(Error::Internal)
}

async fn verify(password: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || crate::crypto::verify_password(&password, &phc))
        .await
        .unwrap_or(false)
}

/// A user the actor may see: everyone for global users, their own tenant's users otherwise
/// (another tenant's user is not found, not forbidden).
async fn find_in<C: ConnectionTrait>(db: &C, actor: &Actor, id: i64) -> Result<user::Model> {
    db::users::by_id(db, id)
        .await?
        .filter(|u| visible(actor, u))
        .ok_or_else(|| Error::NotFound(format!("user {id} not found")))
}

fn visible(actor: &Actor, u: &user::Model) -> bool {
    actor.tenant_scope().is_none_or(|t| u.tenant_id == Some(t))
}

/// An enabled admin of no tenant: the kind of user keygate must keep one of.
fn global_admin(u: &user::Model) -> bool {
    u.role == Role::Admin.as_str() && !u.disabled && u.tenant_id.is_none()
}

/// Refuses to leave keygate without an enabled admin of no tenant (nobody could then manage
/// tenants, global users or global settings).
async fn last_admin_guard<C: ConnectionTrait>(db: &C, id: i64) -> Result<()> {
    if db::users::other_active_admins(db, id).await? == 0 {
        return Err(Error::Conflict(
            "this is the last active admin: make another user admin first".into(),
        ));
    }
    Ok(())
}

/// Users the actor may see (admins only), by id.
pub async fn list(state: &AppState, actor: &Actor, page: &Page) -> Result<List<UserView>> {
    actor.require(Role::Admin)?;
    let limit = page.limit()?;
    let rows = db::users::list(&state.db, actor.tenant_scope(), page.after()?, limit).await?;
    let last = rows.last().map(|u| u.id);
    Ok(List::page(
        rows.into_iter()
            .map(UserView::try_from)
            .collect::<Result<_>>()?,
        last,
        limit,
    ))
}

/// Yourself, or (admins) a user you may see.
pub async fn get(state: &AppState, actor: &Actor, id: i64) -> Result<UserView> {
    if actor.id != id {
        actor.require(Role::Admin)?;
    }
    find_in(&state.db, actor, id).await?.try_into()
}

pub async fn create(state: &AppState, actor: &Actor, req: CreateUser) -> Result<UserView> {
    actor.require(Role::Admin)?;
    let name = req.username.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(Error::BadRequest(
            "username: must be 1 to 64 characters".into(),
        ));
    }
    check_password(&req.password)?;
    // A tenant's admin creates users of that tenant only (never global ones, nor another's).
    let tenant_id = match actor.tenant_scope() {
        None => req.tenant_id,
        Some(t) if req.tenant_id.is_none_or(|r| r == t) => Some(t),
        Some(_) => {
            return Err(Error::BadRequest(
                "tenant_id: you can only create users of your own tenant".into(),
            ));
        }
    };
    let password_hash = hash(req.password).await?;
    let txn = db::begin_write(&state.db).await?;
    if let Some(t) = tenant_id
        && db::tenants::by_id(&txn, t).await?.is_none()
    {
        return Err(Error::BadRequest(format!("tenant_id: no tenant {t}")));
    }
    let created = db::users::create(&txn, tenant_id, &name, password_hash, req.role.as_str())
        .await
        .map_err(|e| match Error::from(e) {
            Error::Conflict(_) => Error::Conflict(format!("username: '{name}' is taken")),
            other => other,
        })?;
    let view = UserView::try_from(created)?;
    audit::record(
        &txn,
        actor,
        "create",
        target(&view),
        Change::created(&audited(&view, false)),
    )
    .await?;
    txn.commit().await?;
    Ok(view)
}

/// Changes a user's password, role or disabled flag. Anyone may change their own password
/// (giving the current one); everything else is for admins.
pub async fn update(state: &AppState, actor: &Actor, id: i64, req: PatchUser) -> Result<UserView> {
    let own_password_only = actor.id == id && req.role.is_none() && req.disabled.is_none();
    if !own_password_only {
        actor.require(Role::Admin)?;
    }
    if let Some(p) = &req.password {
        check_password(p)?;
    }
    if actor.id == id && req.disabled == Some(true) {
        return Err(Error::BadRequest(
            "disabled: you cannot disable yourself".into(),
        ));
    }
    let existing = find_in(&state.db, actor, id).await?;
    if actor.id == id && req.password.is_some() {
        let ok = match req.current_password.clone() {
            Some(current) => verify(current, existing.password_hash.clone()).await,
            None => false,
        };
        if !ok {
            return Err(Error::BadRequest(
                "current_password: give your current password to change it".into(),
            ));
        }
    }
    let password_hash = match req.password {
        Some(p) => Some(hash(p).await?),
        None => None,
    };
    let txn = db::begin_write(&state.db).await?;
    // Read again inside the transaction: the row may have changed while the password hashed.
    let existing = find_in(&txn, actor, id).await?;
    let demoted = req.role.is_some_and(|r| r != Role::Admin) || req.disabled == Some(true);
    if demoted && global_admin(&existing) {
        last_admin_guard(&txn, id).await?;
    }
    let role_changed = req.role.is_some_and(|r| r.as_str() != existing.role);
    let newly_disabled = req.disabled == Some(true) && !existing.disabled;
    let credentials_changed = password_hash.is_some();
    let revoke_tokens = credentials_changed || role_changed || newly_disabled;
    let before = UserView::try_from(existing.clone())?;
    let updated = db::users::update(
        &txn,
        existing,
        db::users::UserPatch {
            password_hash,
            role: req.role.map(|r| r.as_str().to_string()),
            disabled: req.disabled,
            revoke_tokens,
        },
    )
    .await?;
    let after = UserView::try_from(updated)?;
    audit::record(
        &txn,
        actor,
        "update",
        target(&after),
        Change::updated(
            &audited(&before, false),
            &audited(&after, credentials_changed),
        ),
    )
    .await?;
    txn.commit().await?;
    Ok(after)
}

pub async fn delete(state: &AppState, actor: &Actor, id: i64) -> Result<()> {
    actor.require(Role::Admin)?;
    if actor.id == id {
        return Err(Error::BadRequest("id: you cannot delete yourself".into()));
    }
    let txn = db::begin_write(&state.db).await?;
    let found = find_in(&txn, actor, id).await?;
    if global_admin(&found) {
        last_admin_guard(&txn, id).await?;
    }
    let before = UserView::try_from(found)?;
    db::users::delete(&txn, id).await?;
    audit::record(
        &txn,
        actor,
        "delete",
        target(&before),
        Change::deleted(&audited(&before, false)),
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Sets a new random password for `username` and revokes their tokens; returns the password
/// (to show once). For the offline `keygate admin users reset-password`, which has a database
/// but no running server: it takes the connection, not the app state.
pub async fn reset_password(
    db: &DatabaseConnection,
    actor: &Actor,
    username: &str,
) -> Result<String> {
    actor.require(Role::Admin)?;
    let password = crate::crypto::random_token(20);
    let password_hash = hash(password.clone()).await?;
    let txn = db::begin_write(db).await?;
    let found = db::users::by_username(&txn, username)
        .await?
        .filter(|u| visible(actor, u))
        .ok_or_else(|| Error::NotFound(format!("no user named '{username}'")))?;
    let before = UserView::try_from(found.clone())?;
    let updated = db::users::update(
        &txn,
        found,
        db::users::UserPatch {
            password_hash: Some(password_hash),
            role: None,
            disabled: None,
            revoke_tokens: true,
        },
    )
    .await?;
    let after = UserView::try_from(updated)?;
    audit::record(
        &txn,
        actor,
        "reset_password",
        target(&after),
        Change::updated(&audited(&before, false), &audited(&after, true)),
    )
    .await?;
    txn.commit().await?;
    Ok(password)
}

/// Revokes every token of the actor (on every device). It is a write to their account, so it
/// is audited like one: action `logout` on the user.
pub async fn logout(state: &AppState, actor: &Actor) -> Result<()> {
    let txn = db::begin_write(&state.db).await?;
    db::users::revoke_tokens(&txn, actor.id).await?;
    audit::record(
        &txn,
        actor,
        "logout",
        Target::new("user", actor.id, actor.tenant_id),
        Change::action(&serde_json::json!({"sessions": "revoked"})),
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audited_user_carries_no_password_but_says_when_one_was_set() {
        let v = UserView {
            id: 7,
            tenant_id: Some(2),
            username: "ann".into(),
            role: Role::Operator,
            disabled: false,
            created_at: chrono::Utc::now(),
        };
        let c = Change::updated(&audited(&v, false), &audited(&v, true));
        let (before, after) = (c.before.unwrap(), c.after.unwrap());
        assert!(before.get("credentials_changed").is_none(), "{before}");
        assert_eq!(after["credentials_changed"], true, "{after}");
        assert_eq!(after["username"], "ann");
        assert!(!after.to_string().contains("password"), "{after}");
    }
}
