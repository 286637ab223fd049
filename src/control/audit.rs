//! The audit record of every admin write, appended in the write's own transaction so that a
//! write without its record (or a record of a write that rolled back) cannot exist.
//!
//! Before and after are the target as the API shows it, so secrets are already masked there;
//! `redact` is the second line: whatever a view might carry under a secret's name is masked or
//! dropped before it is stored.
use sea_orm::ActiveValue::Set;
use sea_orm::ConnectionTrait;
use serde::Serialize;
use serde_json::Value;

use super::{Actor, Result};
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
                    if name.contains("password") || name.contains("token") {
                        if !field.is_null() {
                            *field = Value::String("[redacted]".into());
                        }
                    } else if matches!(name.as_str(), "key" | "secret" | "api_key" | "proxy") {
                        if let Value::String(s) = field {
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
        }));
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
