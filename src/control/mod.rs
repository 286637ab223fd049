//! CONTROL: the application services behind both the admin REST API (`admin/`, thin axum
//! handlers) and the `keygate admin` CLI (`cli/`). Validation, defaults, tenancy and role checks,
//! the audit record and the snapshot refresh after a write live here, once; the callers only
//! translate their transport (HTTP extractors and problem+json, or arguments, tables and exit
//! codes) to and from these functions.
pub mod access_keys;
pub mod audit;
mod error;
pub mod import;
pub mod keys;
pub mod logs;
pub mod pricing;
pub mod services;
pub mod stats;
pub mod tenants;
pub mod users;

use serde::Serialize;
use utoipa::ToSchema;

pub use crate::domain::Role;
pub use error::{Error, Result};

/// Who is acting: a logged-in API user, or the operator running the CLI on the server.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The user's id; 0 for the offline CLI, which is no user.
    pub id: i64,
    pub username: String,
    pub role: Role,
    /// None: a global user, who sees and may write every tenant.
    pub tenant_id: Option<i64>,
    pub via: Via,
}

/// How a write arrived, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Api,
    Cli,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Cli => "cli",
        }
    }
}

impl Actor {
    /// The CLI against the configured database: whoever can read the server's configuration
    /// (and so its database credentials) already holds every right, so it acts as a global
    /// admin. The audit log names it `cli:<OS user>`.
    pub fn cli() -> Self {
        let who = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Self {
            id: 0,
            username: format!("cli:{who}"),
            role: Role::Admin,
            tenant_id: None,
            via: Via::Cli,
        }
    }

    pub fn require(&self, min: Role) -> Result<()> {
        if self.role >= min {
            Ok(())
        } else {
            Err(Error::Forbidden("your role does not allow this action"))
        }
    }

    /// The tenant the actor's writes go to and reads are limited to (None = all, for global users).
    pub fn tenant_scope(&self) -> Option<i64> {
        self.tenant_id
    }

    /// The tenant a new service or access key belongs to: a tenant's user creates in their own
    /// tenant only; a user of no tenant names any existing tenant (`tenant_id`), by default the
    /// default one.
    pub async fn tenant_for_new<C: sea_orm::ConnectionTrait>(
        &self,
        db: &C,
        requested: Option<i64>,
    ) -> Result<i64> {
        match (self.tenant_id, requested) {
            (Some(own), None) => Ok(own),
            (Some(own), Some(r)) if r == own => Ok(own),
            (Some(_), Some(_)) => Err(Error::BadRequest(
                "tenant_id: you can only create in your own tenant".into(),
            )),
            (None, None) => Ok(crate::db::DEFAULT_TENANT),
            (None, Some(r)) => match crate::db::tenants::by_id(db, r).await? {
                Some(t) => Ok(t.id),
                None => Err(Error::BadRequest(format!("tenant_id: no tenant {r}"))),
            },
        }
    }
}

/// Cursor pagination: `?cursor=<last id>&limit=<n>` (default 100, at most 1000).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct Page {
    /// The `next_cursor` of the previous page (the last id it held).
    #[param(value_type = Option<i64>)]
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

impl Page {
    pub fn after(&self) -> Result<Option<i64>> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| Error::BadRequest("cursor: not a cursor from this API".into()))
            })
            .transpose()
    }

    pub fn limit(&self) -> Result<u64> {
        match self.limit {
            None => Ok(100),
            Some(n @ 1..=1000) => Ok(n),
            Some(_) => Err(Error::BadRequest(
                "limit: must be between 1 and 1000".into(),
            )),
        }
    }
}

/// `{"items": [...], "next_cursor": "..."}`
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> List<T> {
    /// Builds a page; `last_id` is the id of the last of `items`, `limit` the page size asked for.
    pub fn page(items: Vec<T>, last_id: Option<i64>, limit: u64) -> Self {
        let next_cursor = (items.len() as u64 == limit)
            .then_some(last_id)
            .flatten()
            .map(|i| i.to_string());
        Self { items, next_cursor }
    }
}
