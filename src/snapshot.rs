//! The data plane's view of configuration: services, their routable keys (decrypted) and access
//! keys, loaded from the database into memory and swapped atomically. The hot path reads only this.
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::HeaderName;
use sea_orm::DatabaseConnection;
use secrecy::SecretString;

use crate::crypto::{Cipher, mask};
use crate::db;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Anthropic,
    Gemini,
    Rest,
}

impl Kind {
    pub const ALL: [&'static str; 4] = ["openai", "anthropic", "gemini", "rest"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "openai" => Self::OpenAi,
            "anthropic" => Self::Anthropic,
            "gemini" => Self::Gemini,
            "rest" => Self::Rest,
            _ => return None,
        })
    }

    /// Upstream auth header and value template used when the service sets none.
    pub fn default_auth(self) -> (&'static str, &'static str) {
        match self {
            Self::OpenAi | Self::Rest => ("authorization", "Bearer {key}"),
            Self::Anthropic => ("x-api-key", "{key}"),
            Self::Gemini => ("x-goog-api-key", "{key}"),
        }
    }
}

pub struct KeyRt {
    pub id: i64,
    pub secret: SecretString,
    pub masked: String,
}

pub struct ServiceRt {
    pub id: i64,
    pub tenant_id: i64,
    pub slug: String,
    pub kind: Kind,
    /// Without a trailing slash.
    pub base_url: String,
    pub auth_header: HeaderName,
    pub auth_format: String,
    pub request_timeout: std::time::Duration,
    pub max_attempts: u32,
    pub enabled: bool,
    pub keys: Vec<KeyRt>,
    /// Key ids in the order of `keys` (what the coordination store is given).
    pub key_ids: Vec<i64>,
}

pub struct AccessKeyRt {
    pub id: i64,
    pub tenant_id: i64,
    pub slugs: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct Snapshot {
    pub version: u64,
    pub services: HashMap<String, Arc<ServiceRt>>,
    /// By hex SHA-256 of the full key.
    pub access_keys: HashMap<String, Arc<AccessKeyRt>>,
}

impl Snapshot {
    pub async fn load(
        db: &DatabaseConnection,
        cipher: &Cipher,
        version: u64,
    ) -> anyhow::Result<Self> {
        let services = db::services::all(db).await?;
        let keys = db::keys::routable(db).await?;
        let access = db::access_keys::all_enabled(db).await?;

        let mut by_service: HashMap<i64, Vec<KeyRt>> = HashMap::new();
        for k in keys {
            match cipher.decrypt(&k.secret) {
                Ok(plain) => by_service.entry(k.service_id).or_default().push(KeyRt {
                    id: k.id,
                    masked: mask(&plain),
                    secret: SecretString::from(plain),
                }),
                Err(e) => tracing::error!(key_id = k.id, error = %e, "upstream key skipped"),
            }
        }
        let mut out = Snapshot {
            version,
            ..Default::default()
        };
        for s in services {
            let Some(kind) = Kind::parse(&s.kind) else {
                tracing::error!(slug = %s.slug, kind = %s.kind, "service with unknown kind skipped");
                continue;
            };
            let (dh, df) = kind.default_auth();
            let auth_header = s
                .auth_header
                .as_deref()
                .and_then(|h| HeaderName::try_from(h).ok())
                .unwrap_or_else(|| HeaderName::from_static(dh));
            let keys = by_service.remove(&s.id).unwrap_or_default();
            let key_ids = keys.iter().map(|k| k.id).collect();
            out.services.insert(
                s.slug.clone(),
                Arc::new(ServiceRt {
                    id: s.id,
                    tenant_id: s.tenant_id,
                    slug: s.slug,
                    kind,
                    base_url: s.base_url.trim_end_matches('/').to_string(),
                    auth_header,
                    auth_format: s.auth_format.unwrap_or_else(|| df.to_string()),
                    request_timeout: std::time::Duration::from_millis(
                        s.request_timeout_ms.max(1) as u64
                    ),
                    max_attempts: s.max_attempts.max(1) as u32,
                    enabled: s.enabled,
                    keys,
                    key_ids,
                }),
            );
        }
        for a in access {
            let slugs = serde_json::from_value::<Vec<String>>(a.slugs).unwrap_or_default();
            out.access_keys.insert(
                a.hash,
                Arc::new(AccessKeyRt {
                    id: a.id,
                    tenant_id: a.tenant_id,
                    slugs,
                    expires_at: a.expires_at,
                }),
            );
        }
        Ok(out)
    }
}
