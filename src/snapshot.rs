//! The data plane's view of configuration: services, their routable keys (decrypted) and access
//! keys, loaded from the database into memory and swapped atomically. The hot path reads only this.
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use sea_orm::DatabaseConnection;
use secrecy::SecretString;

use crate::coord::{ClientLimits, KeySet, KeySpec, Strategy};
use crate::crypto::{Cipher, mask};
use crate::db;

// The domain enums moved to `crate::domain`; these paths stay for the data plane.
pub use crate::domain::{Kind, RetryOn};

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
    /// Deadline for the whole request across attempts (to the response head).
    pub total_timeout: std::time::Duration,
    /// How long a request waits for a key under its concurrency cap.
    pub queue_timeout: std::time::Duration,
    pub lease_ttl_ms: u64,
    pub max_attempts: u32,
    pub retry_on: RetryOn,
    pub strategy: Strategy,
    pub responses: crate::domain::ResponsesMode,
    /// Model aliases and allow-list.
    pub models: crate::proxy::models::ModelRules,
    /// Router services: routes by model to target slugs (empty for other kinds).
    pub routes: crate::proxy::router::Routes,
    /// Session affinity, when the service binds sessions to keys.
    pub affinity: Option<crate::proxy::affinity::Affinity>,
    /// Per-key concurrency cap.
    pub cap: Option<u32>,
    pub enabled: bool,
    pub keys: Vec<KeyRt>,
    /// What the coordination store is given, in the order of `keys`.
    pub specs: KeySet,
}

impl ServiceRt {
    /// Sets the upstream credential for `secret` as the service's auth rule says (marked
    /// sensitive, so it never shows in logs), plus the `anthropic-version` an Anthropic upstream
    /// requires when the client sent none. False when the key cannot be a header value.
    pub fn set_auth(&self, headers: &mut HeaderMap, secret: &str) -> bool {
        let Ok(mut v) = HeaderValue::from_str(&self.auth_format.replace("{key}", secret)) else {
            return false;
        };
        v.set_sensitive(true);
        headers.insert(self.auth_header.clone(), v);
        if self.kind == Kind::Anthropic && !headers.contains_key("anthropic-version") {
            headers.insert(
                "anthropic-version",
                HeaderValue::from_static(crate::formats::anthropic::DEFAULT_VERSION),
            );
        }
        true
    }
}

pub struct AccessKeyRt {
    pub id: i64,
    pub tenant_id: i64,
    pub slugs: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub limits: ClientLimits,
}

/// A key's cost factor in millionths, clamped to what the store takes.
fn cost_ppm(factor: f64) -> u32 {
    if factor.is_finite() && factor >= 0.0 {
        (factor * 1e6).round().min(u32::MAX as f64) as u32
    } else {
        crate::coord::LIST_PRICE_PPM
    }
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

        let mut by_service: HashMap<i64, Vec<(KeyRt, KeySpec)>> = HashMap::new();
        let limit = |v: Option<i32>| v.filter(|v| *v > 0).map(|v| v as u32);
        for k in keys {
            match cipher.decrypt(&k.secret) {
                Ok(plain) => by_service.entry(k.service_id).or_default().push((
                    KeyRt {
                        id: k.id,
                        masked: mask(&plain),
                        secret: SecretString::from(plain),
                    },
                    KeySpec {
                        id: k.id,
                        weight: k.weight.max(1) as u32,
                        rpm: limit(k.rpm),
                        tpm: limit(k.tpm),
                        balance: k.balance_micros,
                        cost_ppm: cost_ppm(k.cost_factor),
                    },
                )),
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
            let (keys, specs): (Vec<KeyRt>, Vec<KeySpec>) = by_service
                .remove(&s.id)
                .unwrap_or_default()
                .into_iter()
                .unzip();
            let retry_on = RetryOn::from_db(&s.retry_on).unwrap_or_else(|e| {
                tracing::error!(slug = %s.slug, error = %e, "bad retry_on; using the default");
                RetryOn::default_policy()
            });
            let ms = |v: i32| std::time::Duration::from_millis(v.max(1) as u64);
            let models =
                crate::proxy::models::ModelRules::load(&s.slug, &s.model_aliases, &s.model_allow);
            let routes = crate::proxy::router::Routes::load(&s.slug, s.routes.as_ref());
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
                    request_timeout: ms(s.request_timeout_ms),
                    total_timeout: ms(s.total_timeout_ms),
                    queue_timeout: ms(s.queue_timeout_ms),
                    lease_ttl_ms: s.lease_ttl_ms.max(1000) as u64,
                    max_attempts: s.max_attempts.max(1) as u32,
                    retry_on,
                    strategy: Strategy::parse(&s.strategy).unwrap_or(Strategy::RoundRobin),
                    responses: crate::domain::ResponsesMode::parse(&s.responses)
                        .unwrap_or_default(),
                    models,
                    routes,
                    affinity: (s.affinity == "session").then(|| crate::proxy::affinity::Affinity {
                        header: s
                            .affinity_header
                            .as_deref()
                            .and_then(|h| HeaderName::try_from(h).ok())
                            .unwrap_or_else(|| {
                                HeaderName::from_static(crate::proxy::affinity::DEFAULT_HEADER)
                            }),
                        ttl_ms: s.affinity_ttl_s.max(1) as u64 * 1000,
                    }),
                    cap: limit(s.key_concurrency),
                    enabled: s.enabled,
                    keys,
                    specs: KeySet::new(specs),
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
                    limits: ClientLimits {
                        access_key_id: a.id,
                        rpm: limit(a.rpm),
                        rpd: limit(a.rpd),
                        tpm: limit(a.tpm),
                    },
                }),
            );
        }
        Ok(out)
    }
}
