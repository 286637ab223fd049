//! Access keys: the keys clients send. The full key is returned once, at creation, and stored
//! only as a hash.
use sea_orm::ActiveValue::Set;
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::{self, Change, Target};
use super::services::valid_slug;
use super::{Actor, Error, List, Page, Result, Role};
use crate::crypto::{new_access_key, sha256_hex};
use crate::db::{self, entity::access_key};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct AccessKeyView {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    /// First characters of the key, to recognise it.
    pub prefix: String,
    /// Slugs it may call; empty = every slug of its tenant.
    pub slugs: Vec<String>,
    pub rpm: Option<i32>,
    pub tpm: Option<i32>,
    pub rpd: Option<i32>,
    /// In currency units (exact to 0.000001).
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub budget: Option<i64>,
    /// In currency units (exact to 0.000001).
    #[serde(with = "crate::money::units")]
    #[schema(value_type = f64)]
    pub spent: i64,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub enabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<access_key::Model> for AccessKeyView {
    fn from(a: access_key::Model) -> Self {
        Self {
            id: a.id,
            tenant_id: a.tenant_id,
            name: a.name,
            prefix: a.prefix,
            slugs: serde_json::from_value(a.slugs).unwrap_or_default(),
            rpm: a.rpm,
            tpm: a.tpm,
            rpd: a.rpd,
            budget: a.budget_micros,
            spent: a.spent_micros,
            expires_at: a.expires_at,
            enabled: a.enabled,
            created_at: a.created_at,
        }
    }
}

/// No `Debug`: it carries the full key.
#[derive(Serialize, ToSchema)]
pub struct CreatedAccessKey {
    /// The full key: shown this once, stored only as a hash.
    pub key: String,
    #[serde(flatten)]
    pub access_key: AccessKeyView,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "team-a", "slugs": ["openai"], "rpm": 600, "budget": 50}))]
pub struct CreateAccessKey {
    /// 1 to 128 characters, not only spaces.
    #[schema(max_length = 128, pattern = "\\S")]
    pub name: String,
    /// The slugs this key may call (empty or absent: every slug of its tenant).
    #[schema(value_type = Option<Vec<crate::admin::spec::Slug>>)]
    pub slugs: Option<Vec<String>>,
    /// Requests per minute at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub rpm: Option<i32>,
    /// Tokens per minute at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub tpm: Option<i32>,
    /// Requests per day at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub rpd: Option<i32>,
    /// In currency units (a decimal string is accepted too); stored exactly, to 0.000001.
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub budget: Option<i64>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The tenant that owns it (its slugs are that tenant's): a user of no tenant may name any
    /// tenant (default: the default tenant); a tenant's user creates in their own tenant only.
    pub tenant_id: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAccessKey {
    /// 1 to 128 characters, not only spaces.
    #[schema(max_length = 128, pattern = "\\S")]
    pub name: Option<String>,
    /// The slugs this key may call (empty or absent: every slug of its tenant).
    #[schema(value_type = Option<Vec<crate::admin::spec::Slug>>)]
    pub slugs: Option<Vec<String>>,
    /// Requests per minute at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub rpm: Option<i32>,
    /// Tokens per minute at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub tpm: Option<i32>,
    /// Requests per day at most (absent: unlimited).
    #[schema(minimum = 1)]
    pub rpd: Option<i32>,
    /// In currency units (a decimal string is accepted too); stored exactly, to 0.000001.
    #[serde(default, with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 1_000_000_000)]
    pub budget: Option<i64>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub enabled: Option<bool>,
}

fn check(
    name: Option<&str>,
    slugs: Option<&[String]>,
    limits: [(&str, Option<i32>); 3],
) -> Result<()> {
    if let Some(n) = name
        && (n.trim().is_empty() || n.chars().count() > 128)
    {
        return Err(Error::BadRequest(
            "name: must be 1 to 128 characters".into(),
        ));
    }
    if let Some(bad) = slugs.and_then(|s| s.iter().find(|s| !valid_slug(s))) {
        return Err(Error::BadRequest(format!(
            "slugs: '{bad}' is not a valid slug"
        )));
    }
    for (field, v) in limits {
        if v.is_some_and(|v| v < 1) {
            return Err(Error::BadRequest(format!("{field}: must be at least 1")));
        }
    }
    // The budget's range and sign were checked when the body was read (`money::units_opt`).
    Ok(())
}

async fn find(state: &AppState, user: &Actor, id: i64) -> Result<access_key::Model> {
    find_in(&state.db, user, id).await
}

/// The key, if it is in the actor's tenant (another tenant's key is not found, not forbidden).
async fn find_in<C: ConnectionTrait>(db: &C, user: &Actor, id: i64) -> Result<access_key::Model> {
    db::access_keys::by_id(db, id)
        .await?
        .filter(|a| user.tenant_scope().is_none_or(|t| t == a.tenant_id))
        .ok_or_else(|| Error::NotFound(format!("access key {id} not found")))
}

pub async fn list(state: &AppState, actor: &Actor, page: &Page) -> Result<List<AccessKeyView>> {
    let limit = page.limit()?;
    let rows = db::access_keys::list(&state.db, actor.tenant_scope(), page.after()?, limit).await?;
    let last = rows.last().map(|a| a.id);
    Ok(List::page(
        rows.into_iter().map(Into::into).collect(),
        last,
        limit,
    ))
}

pub async fn get(state: &AppState, actor: &Actor, id: i64) -> Result<AccessKeyView> {
    Ok(find(state, actor, id).await?.into())
}

pub async fn create(
    state: &AppState,
    actor: &Actor,
    req: CreateAccessKey,
) -> Result<CreatedAccessKey> {
    actor.require(Role::Operator)?;
    check(
        Some(&req.name),
        req.slugs.as_deref(),
        [("rpm", req.rpm), ("tpm", req.tpm), ("rpd", req.rpd)],
    )?;
    let (key, prefix) = new_access_key();
    let am = access_key::ActiveModel {
        tenant_id: Set(actor.tenant_for_new(&state.db, req.tenant_id).await?),
        name: Set(req.name.trim().to_string()),
        prefix: Set(prefix),
        hash: Set(sha256_hex(&key)),
        slugs: Set(serde_json::json!(req.slugs.unwrap_or_default())),
        rpm: Set(req.rpm),
        tpm: Set(req.tpm),
        rpd: Set(req.rpd),
        budget_micros: Set(req.budget),
        spent_micros: Set(0),
        expires_at: Set(req.expires_at),
        enabled: Set(true),
        created_at: Set(chrono::Utc::now()),
        ..Default::default()
    };
    let txn = db::begin_write(&state.db).await?;
    let view: AccessKeyView = db::access_keys::insert(&txn, am).await?.into();
    audit::record(&txn, actor, "create", target(&view), Change::created(&view)).await?;
    txn.commit().await?;
    state.config_changed().await?;
    Ok(CreatedAccessKey {
        key,
        access_key: view,
    })
}

pub async fn update(
    state: &AppState,
    actor: &Actor,
    id: i64,
    req: PatchAccessKey,
) -> Result<AccessKeyView> {
    actor.require(Role::Operator)?;
    check(
        req.name.as_deref(),
        req.slugs.as_deref(),
        [("rpm", req.rpm), ("tpm", req.tpm), ("rpd", req.rpd)],
    )?;
    let txn = db::begin_write(&state.db).await?;
    let found = find_in(&txn, actor, id).await?;
    let before = AccessKeyView::from(found.clone());
    let mut am: access_key::ActiveModel = found.into();
    if let Some(n) = req.name {
        am.name = Set(n.trim().to_string());
    }
    if let Some(s) = req.slugs {
        am.slugs = Set(serde_json::json!(s));
    }
    if req.rpm.is_some() {
        am.rpm = Set(req.rpm);
    }
    if req.tpm.is_some() {
        am.tpm = Set(req.tpm);
    }
    if req.rpd.is_some() {
        am.rpd = Set(req.rpd);
    }
    if req.budget.is_some() {
        am.budget_micros = Set(req.budget);
    }
    if req.expires_at.is_some() {
        am.expires_at = Set(req.expires_at);
    }
    if let Some(e) = req.enabled {
        am.enabled = Set(e);
    }
    let after: AccessKeyView = db::access_keys::update(&txn, am).await?.into();
    audit::record(
        &txn,
        actor,
        "update",
        target(&after),
        Change::updated(&before, &after),
    )
    .await?;
    txn.commit().await?;
    state.config_changed().await?;
    Ok(after)
}

pub async fn delete(state: &AppState, actor: &Actor, id: i64) -> Result<()> {
    actor.require(Role::Operator)?;
    let txn = db::begin_write(&state.db).await?;
    let before: AccessKeyView = find_in(&txn, actor, id).await?.into();
    db::access_keys::delete(&txn, before.id).await?;
    audit::record(
        &txn,
        actor,
        "delete",
        target(&before),
        Change::deleted(&before),
    )
    .await?;
    txn.commit().await?;
    state.config_changed().await?;
    Ok(())
}

fn target(a: &AccessKeyView) -> Target {
    Target::new("access_key", a.id, Some(a.tenant_id))
}
