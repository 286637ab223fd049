//! The audit record of every admin write, appended in the write's own transaction so that a
//! write without its record (or a record of a write that rolled back) cannot exist.
//!
//! Before and after are the target as the API shows it, so secrets are already masked there;
//! `redact` is the second line: whatever a view might carry under a secret's name is masked or
//! dropped before it is stored.
use sea_orm::ActiveValue::Set;
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::{Actor, Result, Via};
use crate::db::{self, entity::audit};

/// What was written: a kind (`service`, `key`, `access_key`, `pricing_rule`, `user`, `tenant`),
/// its id as the API names it (a slug, a number), and the tenant it belongs to.
pub struct Target {
    pub kind: &'static str,
    pub id: String,
    pub tenant_id: Option<i64>,
}

impl Target {
    pub fn new(kind: &'static str, id: impl ToString, tenant_id: Option<i64>) -> Self {
        Self {
            kind,
            id: id.to_string(),
            tenant_id,
        }
    }
}

/// The target before and after the write (absent before a create, after a delete).
#[derive(Default)]
pub struct Change {
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Change {
    pub fn created(after: &impl Serialize) -> Self {
        Self {
            before: None,
            after: snapshot(after),
        }
    }

    pub fn updated(before: &impl Serialize, after: &impl Serialize) -> Self {
        Self {
            before: snapshot(before),
            after: snapshot(after),
        }
    }

    pub fn deleted(before: &impl Serialize) -> Self {
        Self {
            before: snapshot(before),
            after: None,
        }
    }

    /// A write that is an action rather than a new state (a sync, a key test, an import):
    /// `after` holds its parameters and outcome.
    pub fn action(outcome: &impl Serialize) -> Self {
        Self {
            before: None,
            after: snapshot(outcome),
        }
    }
}

fn snapshot(v: &impl Serialize) -> Option<Value> {
    serde_json::to_value(v).ok().map(redact)
}

/// Field names whose values are never stored: passwords and tokens are dropped, key material is
/// masked (a mask of an already masked key reveals nothing more).
pub fn redact(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, field) in map.iter_mut() {
                    let name = k.to_ascii_lowercase();
                    // `token`, `access_token`, but not `tokens` (a count).
                    let credential = name.contains("password")
                        || name == "token"
                        || name.ends_with("_token")
                        || name == "secret";
                    if credential {
                        if !field.is_null() {
                            *field = Value::String("[redacted]".into());
                        }
                    } else if matches!(name.as_str(), "key" | "api_key" | "proxy") {
                        // Views show keys masked already (`sk-a...cdef`): a second mask would
                        // only blur what the operator needs to recognise the key.
                        if let Value::String(s) = field
                            && !s.contains("...")
                        {
                            *s = crate::crypto::mask(s);
                        }
                    } else {
                        walk(field);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Appends one record. Call it on the transaction that made the write, before committing.
pub async fn record<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    action: &'static str,
    target: Target,
    change: Change,
) -> Result<()> {
    db::audit::insert(
        db,
        audit::ActiveModel {
            ts: Set(chrono::Utc::now()),
            actor_id: Set((actor.id != 0).then_some(actor.id)),
            actor: Set(actor.username.clone()),
            via: Set(actor.via.as_str().into()),
            tenant_id: Set(target.tenant_id),
            action: Set(action.into()),
            target_type: Set(target.kind.into()),
            target_id: Set(target.id),
            before: Set(change.before),
            after: Set(change.after),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

// ---- Reading the log: `GET /admin/audit` ----

/// One audit entry: who wrote what, when, and the target before and after.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: i64,
    pub ts: chrono::DateTime<chrono::Utc>,
    /// The user's name, or `cli:<OS user>` for the offline CLI.
    pub actor: String,
    /// The user's id; null for the CLI.
    pub actor_id: Option<i64>,
    pub via: Via,
    /// The tenant the target belongs to; null for global targets (a global user, a global
    /// pricing rule).
    pub tenant_id: Option<i64>,
    /// `create`, `update`, `delete`, or an action's name (`logout`, `reset_password`, a sync...).
    pub action: String,
    /// `service`, `key`, `access_key`, `pricing_rule`, `user`, `tenant`...
    pub target_type: String,
    /// The target's id as the API names it (a number, a slug).
    pub target_id: String,
    /// The target as the API showed it, secrets masked; null for a create or an action.
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    /// Likewise after the write (an action's parameters and outcome); null for a delete.
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
}

impl TryFrom<audit::Model> for AuditEvent {
    type Error = super::Error;

    fn try_from(a: audit::Model) -> Result<Self> {
        let via = match a.via.as_str() {
            "api" => Via::Api,
            "cli" => Via::Cli,
            other => {
                return Err(super::Error::Internal(anyhow::anyhow!(
                    "audit entry {} has an unknown via '{other}'",
                    a.id
                )));
            }
        };
        Ok(Self {
            id: a.id,
            ts: a.ts,
            actor: a.actor,
            actor_id: a.actor_id,
            via,
            tenant_id: a.tenant_id,
            action: a.action,
            target_type: a.target_type,
            target_id: a.target_id,
            before: a.before,
            after: a.after,
        })
    }
}

/// Filters and paging of `GET /admin/audit`; each filter given narrows the entries. Values are
/// taken as text and checked here, so that a bad one is a 400 naming the parameter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The actor's name, exactly (a username, or `cli:<OS user>`).
    pub actor: Option<String>,
    /// `create`, `update`, `delete`, or an action's name.
    pub action: Option<String>,
    /// `service`, `key`, `access_key`, `pricing_rule`, `user`, `tenant`...
    pub target_type: Option<String>,
    /// The target's id as the API names it.
    pub target_id: Option<String>,
    /// Entries about this tenant's targets (admins of no tenant; a tenant's admin sees only
    /// their own tenant's entries anyway).
    #[param(value_type = Option<i64>)]
    pub tenant_id: Option<String>,
    /// Oldest time included, RFC 3339.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub since: Option<String>,
    /// Newest time, excluded, RFC 3339; not before `since`.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub until: Option<String>,
    /// The `next_cursor` of the previous page (the last id it held); pages go newest first.
    #[param(value_type = Option<i64>)]
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

fn bad(param: &str, why: &str) -> super::Error {
    super::Error::BadRequest(format!("{param}: {why}"))
}

fn parse_time(param: &str, v: Option<&str>) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    v.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| bad(param, "must be an RFC 3339 time (2026-11-22T10:00:00Z)"))
    })
    .transpose()
}

fn parse_id(param: &str, v: Option<&str>) -> Result<Option<i64>> {
    v.map(|s| {
        s.parse::<i64>()
            .map_err(|_| bad(param, "must be an integer id"))
    })
    .transpose()
}

impl AuditQuery {
    fn filter(&self, actor: &Actor) -> Result<(db::audit::AuditFilter, u64)> {
        let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let since = parse_time("since", nonempty(&self.since))?;
        let until = parse_time("until", nonempty(&self.until))?;
        if let (Some(s), Some(u)) = (since, until)
            && u < s
        {
            return Err(bad("until", "must not be before since"));
        }
        let limit = match nonempty(&self.limit) {
            None => 100,
            Some(l) => match l.parse::<u64>() {
                Ok(n @ 1..=1000) => n,
                _ => return Err(bad("limit", "must be between 1 and 1000")),
            },
        };
        let cursor = nonempty(&self.cursor)
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| bad("cursor", "not a cursor from this API"))
            })
            .transpose()?;
        let f = db::audit::AuditFilter {
            scope: actor.tenant_scope(),
            tenant_id: parse_id("tenant_id", nonempty(&self.tenant_id))?,
            actor: text(&self.actor),
            action: text(&self.action),
            target_type: text(&self.target_type),
            target_id: text(&self.target_id),
            since,
            until,
            before_id: cursor,
        };
        Ok((f, limit))
    }
}

/// The log newest first, for admins: a tenant's admin reads the entries about their tenant's
/// targets only, an admin of no tenant reads every entry.
pub async fn list(
    state: &crate::state::AppState,
    actor: &Actor,
    q: &AuditQuery,
) -> Result<super::List<AuditEvent>> {
    actor.require(super::Role::Admin)?;
    let (filter, limit) = q.filter(actor)?;
    let rows = db::audit::list(&state.db, &filter, limit).await?;
    let last = rows.last().map(|a| a.id);
    Ok(super::List::page(
        rows.into_iter()
            .map(AuditEvent::try_from)
            .collect::<Result<_>>()?,
        last,
        limit,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_passwords_and_tokens_and_masks_key_material() {
        let v = redact(serde_json::json!({
            "username": "ann",
            "password": "hunter2-long-password",
            "access_token": "eyJhbGciOi.x.y",
            "keys": [{"key": "sk-abcdefghijklmnopqrstuvwxyz", "label": "a"}],
            "proxy": "http://user:pw@proxy.example:8080",
            "tokens": 1234,
            "masked": {"key": "sk-a...wxyz"},
        }));
        assert_eq!(v["tokens"], 1234, "a count is not a credential");
        assert_eq!(v["masked"]["key"], "sk-a...wxyz", "a mask is kept as it is");
        assert_eq!(v["username"], "ann");
        assert_eq!(v["password"], "[redacted]");
        assert_eq!(v["access_token"], "[redacted]");
        assert_eq!(
            v["keys"][0]["key"],
            crate::crypto::mask("sk-abcdefghijklmnopqrstuvwxyz")
        );
        assert_eq!(v["keys"][0]["label"], "a");
        assert!(!v.to_string().contains("hunter2"));
        assert!(!v.to_string().contains("user:pw"));
    }
}
