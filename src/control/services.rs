//! Services (the slugs): validation and defaults of their settings. Writes need the operator role,
//! are audited, and announce a config change.
use sea_orm::ActiveValue::Set;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::{self, Change, Target};
use super::{Actor, Error, List, Page, Result, Role};
use crate::billing::sync::BalanceSync;
use crate::crypto::{Cipher, mask};
use crate::db::{self, entity::service};
use crate::domain::{Affinity, Kind, RetryOn, Strategy};
use crate::egress;
use crate::events::capture::CaptureSettings;
use crate::proxy::router::RouteSpec;
use crate::proxy::{azure, headers};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceView {
    pub id: i64,
    pub tenant_id: i64,
    pub slug: String,
    pub name: String,
    pub kind: Kind,
    pub base_url: String,
    pub auth_header: Option<String>,
    pub auth_format: Option<String>,
    pub strategy: Strategy,
    /// How Responses API calls (`/v1/responses`) reach an `openai` upstream.
    pub responses: crate::domain::ResponsesMode,
    /// Model aliases: glob of the name a client asks for -> the model sent upstream.
    pub model_aliases: std::collections::BTreeMap<String, String>,
    /// Globs of the models clients may call (empty = all).
    pub model_allow: Vec<String>,
    /// Router services: routes in order, each a model glob and its target slugs in fallback
    /// order (empty for other kinds).
    pub routes: Vec<RouteSpec>,
    pub affinity: Affinity,
    /// Header a client names its session in (default `x-session-id`).
    pub affinity_header: Option<String>,
    /// How long a session stays bound to its key after its last request.
    pub affinity_ttl_s: i32,
    pub request_timeout_ms: i32,
    pub total_timeout_ms: i32,
    pub max_attempts: i32,
    /// Seconds between scheduled validations of the keys out of rotation (null = off).
    pub validate_interval_s: Option<i32>,
    /// Keys tested at once by a validation.
    pub validate_concurrency: i32,
    /// Where the keys' balances are read from (null: no balance sync).
    pub balance_sync: Option<BalanceSync>,
    /// Request/response body capture (null: off, the default).
    pub capture: Option<CaptureSettings>,
    /// Failures retried on another key, in the canonical form: retry classes, then any extra
    /// statuses (`["auth", "quota", "rate_limit", "server_error", "timeout", "connect"]`).
    #[schema(value_type = Vec<crate::domain::RetryRule>)]
    pub retry_on: RetryOn,
    pub key_concurrency: Option<i32>,
    pub queue_timeout_ms: i32,
    pub lease_ttl_ms: i32,
    /// Outbound proxy for upstream calls, credentials masked (`http://***@proxy:3128`).
    pub egress_proxy: Option<String>,
    /// Headers added to every upstream request; values masked (they often carry tokens).
    pub upstream_headers: std::collections::BTreeMap<String, String>,
    /// Hex SHA-256 of each private CA certificate trusted beside the public roots (empty: none).
    pub tls_ca_sha256: Vec<String>,
    /// Azure OpenAI: the `api-version` query parameter added to every upstream call.
    pub api_version: Option<String>,
    /// Azure OpenAI: where per-deployment calls go under base_url (`deployments/{model}`).
    pub deployment_path: Option<String>,
    pub enabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl ServiceView {
    /// Fails only on a row edited by hand outside the API (the API writes valid values only).
    /// The cipher opens the stored proxy URL, which is shown masked.
    pub fn of(s: service::Model, cipher: &Cipher) -> Result<Self> {
        let bad = |field: &str, e: String| {
            Error::Internal(anyhow::anyhow!(
                "service '{}' has a bad {field}: {e}",
                s.slug
            ))
        };
        Ok(Self {
            kind: s.kind.parse().map_err(|e| bad("kind", e))?,
            strategy: s.strategy.parse().map_err(|e| bad("strategy", e))?,
            responses: s.responses.parse().map_err(|e| bad("responses", e))?,
            model_aliases: serde_json::from_value(s.model_aliases.clone())
                .map_err(|e| bad("model_aliases", e.to_string()))?,
            model_allow: serde_json::from_value(s.model_allow.clone())
                .map_err(|e| bad("model_allow", e.to_string()))?,
            routes: match &s.routes {
                Some(r) => {
                    serde_json::from_value(r.clone()).map_err(|e| bad("routes", e.to_string()))?
                }
                None => Vec::new(),
            },
            affinity: s.affinity.parse().map_err(|e| bad("affinity", e))?,
            affinity_header: s.affinity_header.clone(),
            affinity_ttl_s: s.affinity_ttl_s,
            retry_on: RetryOn::from_db(&s.retry_on).map_err(|e| bad("retry_on", e))?,
            balance_sync: s
                .balance_sync
                .as_ref()
                .map(BalanceSync::from_db)
                .transpose()
                .map_err(|e| bad("balance_sync", e))?,
            capture: s
                .capture
                .as_ref()
                .map(CaptureSettings::from_db)
                .transpose()
                .map_err(|e| bad("capture", e))?,
            egress_proxy: s.egress_proxy.as_deref().map(|p| {
                egress::open_proxy(cipher, p)
                    .map(|u| egress::mask_proxy(&u))
                    .unwrap_or_else(|_| "(undecryptable)".into())
            }),
            upstream_headers: s
                .upstream_headers
                .as_ref()
                .and_then(|v| v.as_object())
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), mask(v.as_str().unwrap_or(""))))
                .collect(),
            tls_ca_sha256: s
                .tls_ca_pem
                .as_deref()
                .map(egress::ca_fingerprints)
                .unwrap_or_default(),
            api_version: s.api_version.clone(),
            deployment_path: s.deployment_path.clone(),
            id: s.id,
            tenant_id: s.tenant_id,
            slug: s.slug,
            name: s.name,
            base_url: s.base_url,
            auth_header: s.auth_header,
            auth_format: s.auth_format,
            request_timeout_ms: s.request_timeout_ms,
            total_timeout_ms: s.total_timeout_ms,
            max_attempts: s.max_attempts,
            validate_interval_s: s.validate_interval_s,
            validate_concurrency: s.validate_concurrency,
            key_concurrency: s.key_concurrency,
            queue_timeout_ms: s.queue_timeout_ms,
            lease_ttl_ms: s.lease_ttl_ms,
            enabled: s.enabled,
            created_at: s.created_at,
            updated_at: s.updated_at,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"slug": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1", "strategy": "round_robin", "name": "OpenAI"}))]
pub struct CreateService {
    /// `[a-z0-9][a-z0-9-]{0,62}`
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "openai")]
    pub slug: String,
    /// The tenant that owns it: a user of no tenant may name any tenant (default: the default
    /// tenant); a tenant's user creates in their own tenant only.
    pub tenant_id: Option<i64>,
    pub kind: Kind,
    /// For LLM kinds, includes the version segment (`https://api.openai.com/v1`). Required for
    /// every kind but `router`, which has none.
    #[schema(
        pattern = "^https?://[^/?#@\\s]+(/[^?#\\s]*)?$",
        example = "https://api.openai.com/v1"
    )]
    pub base_url: Option<String>,
    /// Default `round_robin`.
    pub strategy: Option<Strategy>,
    /// How Responses API calls reach an `openai` upstream (default `auto`).
    pub responses: Option<crate::domain::ResponsesMode>,
    /// Model aliases with wildcards, e.g. `{"gpt4": "gpt-4o", "claude-*": "claude-sonnet-4-5"}`;
    /// the most specific pattern wins. Replaces the whole map.
    pub model_aliases: Option<std::collections::BTreeMap<String, String>>,
    /// Globs of the models clients may call, e.g. `["gpt-4o*", "o3"]`; empty = all. A model
    /// outside it gets 404 (`model_not_found`) in the client's format.
    pub model_allow: Option<Vec<String>>,
    /// Router services only: `[{"model": "gpt-*", "targets": ["openai", "backup"]}]`, first
    /// match wins; targets are tried in order while they fail before answering. Targets must be
    /// existing LLM slugs, not routers. Replaces the whole list.
    pub routes: Option<Vec<RouteSpec>>,
    /// `session` keeps a client's session on one key while it is usable (default `none`).
    pub affinity: Option<Affinity>,
    /// Header a client names its session in (default `x-session-id`).
    #[schema(pattern = "^[!#$%&'*+.^_`|~0-9A-Za-z-]*$")]
    pub affinity_header: Option<String>,
    /// How long a session stays bound to its key after its last request, 1 to 86400 (default
    /// 3600).
    #[schema(minimum = 1, maximum = 86_400)]
    pub affinity_ttl_s: Option<i32>,
    pub name: Option<String>,
    /// Header that carries the upstream key (default per kind).
    #[schema(pattern = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
    pub auth_header: Option<String>,
    /// Value template with `{key}` (default per kind, e.g. `Bearer {key}`).
    #[schema(pattern = "\\{key\\}", example = "Bearer {key}")]
    pub auth_format: Option<String>,
    /// Time to the upstream's response head per attempt (default 60000).
    #[schema(minimum = 100, maximum = 3_600_000)]
    pub request_timeout_ms: Option<i32>,
    /// Keys tried per request at most (default 3).
    #[schema(minimum = 1, maximum = 20)]
    pub max_attempts: Option<i32>,
    /// Re-test the keys out of rotation (`invalid`, `exhausted`, `cooling`) every this many
    /// seconds and bring back those that answer; 10 to 86400, 0 = off (the default).
    #[schema(minimum = 0, maximum = 86_400)]
    pub validate_interval_s: Option<i32>,
    /// Keys a validation tests at once, 1 to 64 (default 4).
    #[schema(minimum = 1, maximum = 64)]
    pub validate_concurrency: Option<i32>,
    /// Read the keys' balances from the upstream's billing API, on demand
    /// (`POST .../sync`) and every `interval_s` seconds: `{"adapter": "deepseek",
    /// "interval_s": 300, "min_balance": 1}`. Off by default.
    pub balance_sync: Option<BalanceSync>,
    /// Keep the first `max_bytes` of each request's and answer's body with its log row, with
    /// credential fields and the `redact` fields replaced: `{"max_bytes": 16384, "redact":
    /// ["messages"]}`. Off by default; kept `log.body_retention_days`.
    pub capture: Option<CaptureSettings>,
    /// Deadline for a whole request across attempts, to the response head (default 300000).
    #[schema(minimum = 100, maximum = 3_600_000)]
    pub total_timeout_ms: Option<i32>,
    /// Failures retried on another key: retry classes and extra statuses, or the older status
    /// string (default: every class).
    #[schema(value_type = Option<crate::domain::RetryOnInput>)]
    pub retry_on: Option<RetryOn>,
    /// Requests in flight per key at most (unset = unlimited; 0 clears it).
    #[schema(minimum = 0, maximum = 100_000)]
    pub key_concurrency: Option<i32>,
    /// How long a request waits for a key when all are at their cap (default 5000).
    #[schema(minimum = 0, maximum = 600_000)]
    pub queue_timeout_ms: Option<i32>,
    /// Lease lifetime, renewed while the request lives (default 60000).
    #[schema(minimum = 1_000, maximum = 3_600_000)]
    pub lease_ttl_ms: Option<i32>,
    /// Outbound proxy for upstream calls: `http://`, `https://`, `socks5://` or `socks5h://`
    /// (names resolved by the proxy), with `user:password@` when it needs them. Stored
    /// encrypted, shown masked; a key's own `egress_proxy` overrides it. `null` or `""` clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub egress_proxy: Option<Option<SecretString>>,
    /// Headers added to every upstream request, `{"name": "value"}`; they replace a client's
    /// header of the same name. Refused: the service's auth header, `host`, `content-length`,
    /// `content-type`, `content-encoding`, `accept-encoding`, hop-by-hop headers and
    /// `x-keygate-hop`. Replaces the whole map; `{}` clears it.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub upstream_headers: Option<std::collections::BTreeMap<String, SecretString>>,
    /// PEM of private CA certificates the upstream's certificate may chain to, trusted beside
    /// the public roots. `null` or `""` clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub tls_ca_pem: Option<Option<String>>,
    /// Azure OpenAI (`openai` kind): the `api-version` query parameter added to every upstream
    /// call, replacing a client's. With it or `deployment_path` set, the key goes in `api-key`
    /// unless `auth_header` says otherwise. `null` or `""` clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub api_version: Option<Option<String>>,
    /// Azure OpenAI (`openai` kind): the path under base_url that per-deployment calls (chat,
    /// completions, embeddings, audio, images) go through, `{model}` replaced by the model sent
    /// upstream (after aliases), e.g. `deployments/{model}` with base_url
    /// `https://<resource>.openai.azure.com/openai`. `null` or `""` clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub deployment_path: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// Egress and Azure settings shared by create and update: None = unchanged, Some(None) = clear.
#[derive(Default)]
pub struct EgressSettings {
    pub egress_proxy: Option<Option<SecretString>>,
    pub upstream_headers: Option<std::collections::BTreeMap<String, SecretString>>,
    pub tls_ca_pem: Option<Option<String>>,
    pub api_version: Option<Option<String>>,
    pub deployment_path: Option<Option<String>>,
}

macro_rules! egress_of {
    ($req:expr) => {
        EgressSettings {
            egress_proxy: $req.egress_proxy.take(),
            upstream_headers: $req.upstream_headers.take(),
            tls_ca_pem: $req.tls_ca_pem.take(),
            api_version: $req.api_version.take(),
            deployment_path: $req.deployment_path.take(),
        }
    };
}

/// A field that can be cleared: absent = unchanged, `null` or `""` = clear, else the value.
pub fn clearable<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    let v = Option::<String>::deserialize(d)?;
    Ok(Some(v.filter(|s| !s.trim().is_empty()).map(T::from)))
}

/// Key pool settings shared by create and update.
#[derive(Debug, Default)]
pub struct PoolSettings {
    pub total_timeout_ms: Option<i32>,
    pub retry_on: Option<RetryOn>,
    pub key_concurrency: Option<i32>,
    pub queue_timeout_ms: Option<i32>,
    pub lease_ttl_ms: Option<i32>,
}

macro_rules! pool_of {
    ($req:expr) => {
        PoolSettings {
            total_timeout_ms: $req.total_timeout_ms,
            retry_on: $req.retry_on.take(),
            key_concurrency: $req.key_concurrency,
            queue_timeout_ms: $req.queue_timeout_ms,
            lease_ttl_ms: $req.lease_ttl_ms,
        }
    };
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchService {
    pub name: Option<String>,
    #[schema(
        pattern = "^https?://[^/?#@\\s]+(/[^?#\\s]*)?$",
        example = "https://api.openai.com/v1"
    )]
    pub base_url: Option<String>,
    pub strategy: Option<Strategy>,
    /// How Responses API calls reach an `openai` upstream (default `auto`).
    pub responses: Option<crate::domain::ResponsesMode>,
    /// Model aliases with wildcards, e.g. `{"gpt4": "gpt-4o", "claude-*": "claude-sonnet-4-5"}`;
    /// the most specific pattern wins. Replaces the whole map.
    pub model_aliases: Option<std::collections::BTreeMap<String, String>>,
    /// Globs of the models clients may call, e.g. `["gpt-4o*", "o3"]`; empty = all. A model
    /// outside it gets 404 (`model_not_found`) in the client's format.
    pub model_allow: Option<Vec<String>>,
    /// Router services only: `[{"model": "gpt-*", "targets": ["openai", "backup"]}]`, first
    /// match wins; targets are tried in order while they fail before answering. Targets must be
    /// existing LLM slugs, not routers. Replaces the whole list.
    pub routes: Option<Vec<RouteSpec>>,
    /// `session` keeps a client's session on one key while it is usable (default `none`).
    pub affinity: Option<Affinity>,
    /// Header a client names its session in (default `x-session-id`).
    #[schema(pattern = "^[!#$%&'*+.^_`|~0-9A-Za-z-]*$")]
    pub affinity_header: Option<String>,
    /// How long a session stays bound to its key after its last request, 1 to 86400 (default
    /// 3600).
    #[schema(minimum = 1, maximum = 86_400)]
    pub affinity_ttl_s: Option<i32>,
    #[schema(pattern = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
    pub auth_header: Option<String>,
    #[schema(pattern = "\\{key\\}", example = "Bearer {key}")]
    pub auth_format: Option<String>,
    #[schema(minimum = 100, maximum = 3_600_000)]
    pub request_timeout_ms: Option<i32>,
    #[schema(minimum = 1, maximum = 20)]
    pub max_attempts: Option<i32>,
    /// Re-test the keys out of rotation (`invalid`, `exhausted`, `cooling`) every this many
    /// seconds and bring back those that answer; 10 to 86400, 0 = off.
    #[schema(minimum = 0, maximum = 86_400)]
    pub validate_interval_s: Option<i32>,
    /// Keys a validation tests at once, 1 to 64.
    #[schema(minimum = 1, maximum = 64)]
    pub validate_concurrency: Option<i32>,
    /// Balance sync settings, replaced whole; `null` turns balance sync off.
    #[serde(default, deserialize_with = "crate::billing::sync::patch")]
    #[schema(value_type = Option<BalanceSync>)]
    pub balance_sync: Option<Option<BalanceSync>>,
    /// Body capture settings, replaced whole; `null` turns capture off.
    #[serde(default, deserialize_with = "crate::billing::sync::patch")]
    #[schema(value_type = Option<CaptureSettings>)]
    pub capture: Option<Option<CaptureSettings>>,
    /// Deadline for a whole request across attempts, to the response head (default 300000).
    #[schema(minimum = 100, maximum = 3_600_000)]
    pub total_timeout_ms: Option<i32>,
    /// Failures retried on another key: retry classes and extra statuses, or the older status
    /// string.
    #[schema(value_type = Option<crate::domain::RetryOnInput>)]
    pub retry_on: Option<RetryOn>,
    /// Requests in flight per key at most (unset = unlimited; 0 clears it).
    #[schema(minimum = 0, maximum = 100_000)]
    pub key_concurrency: Option<i32>,
    /// How long a request waits for a key when all are at their cap (default 5000).
    #[schema(minimum = 0, maximum = 600_000)]
    pub queue_timeout_ms: Option<i32>,
    /// Lease lifetime, renewed while the request lives (default 60000).
    #[schema(minimum = 1_000, maximum = 3_600_000)]
    pub lease_ttl_ms: Option<i32>,
    /// Outbound proxy for upstream calls: `http://`, `https://`, `socks5://` or `socks5h://`
    /// (names resolved by the proxy), with `user:password@` when it needs them. Stored
    /// encrypted, shown masked; a key's own `egress_proxy` overrides it. `null` or `""` clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub egress_proxy: Option<Option<SecretString>>,
    /// Headers added to every upstream request, `{"name": "value"}`; they replace a client's
    /// header of the same name. Refused: the service's auth header, `host`, `content-length`,
    /// `content-type`, `content-encoding`, `accept-encoding`, hop-by-hop headers and
    /// `x-keygate-hop`. Replaces the whole map; `{}` clears it.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    pub upstream_headers: Option<std::collections::BTreeMap<String, SecretString>>,
    /// PEM of private CA certificates the upstream's certificate may chain to, trusted beside
    /// the public roots. `null` or `""` clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub tls_ca_pem: Option<Option<String>>,
    /// Azure OpenAI (`openai` kind): the `api-version` query parameter added to every upstream
    /// call, replacing a client's. With it or `deployment_path` set, the key goes in `api-key`
    /// unless `auth_header` says otherwise. `null` or `""` clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub api_version: Option<Option<String>>,
    /// Azure OpenAI (`openai` kind): the path under base_url that per-deployment calls (chat,
    /// completions, embeddings, audio, images) go through, `{model}` replaced by the model sent
    /// upstream (after aliases), e.g. `deployments/{model}` with base_url
    /// `https://<resource>.openai.azure.com/openai`. `null` or `""` clears it.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub deployment_path: Option<Option<String>>,
    pub enabled: Option<bool>,
}

pub fn valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Also the SSRF guard on a literal address (a name is checked when keygate connects:
/// `egress::ssrf`).
fn check_base_url(guard: &egress::Guard, u: &str) -> Result<String> {
    let parsed =
        url::Url::parse(u).map_err(|e| Error::BadRequest(format!("base_url: not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::BadRequest(
            "base_url: must be an http(s) URL with a host".into(),
        ));
    }
    if parsed.query().is_some() || !parsed.username().is_empty() {
        return Err(Error::BadRequest(
            "base_url: must not carry a query or credentials".into(),
        ));
    }
    guard
        .check_url(&parsed)
        .map_err(|r| Error::BadRequest(format!("base_url: {r}")))?;
    Ok(u.trim_end_matches('/').to_string())
}

fn check_pool(p: &PoolSettings) -> Result<()> {
    if p.total_timeout_ms
        .is_some_and(|t| !(100..=3_600_000).contains(&t))
    {
        return Err(Error::BadRequest(
            "total_timeout_ms: must be 100 to 3600000".into(),
        ));
    }
    if p.key_concurrency
        .is_some_and(|c| !(0..=100_000).contains(&c))
    {
        return Err(Error::BadRequest(
            "key_concurrency: must be 0 to 100000".into(),
        ));
    }
    if p.queue_timeout_ms
        .is_some_and(|t| !(0..=600_000).contains(&t))
    {
        return Err(Error::BadRequest(
            "queue_timeout_ms: must be 0 to 600000".into(),
        ));
    }
    if p.lease_ttl_ms
        .is_some_and(|t| !(1_000..=3_600_000).contains(&t))
    {
        return Err(Error::BadRequest(
            "lease_ttl_ms: must be 1000 to 3600000".into(),
        ));
    }
    Ok(())
}

/// Checks and sets the egress and Azure settings, then checks them against the rest of the
/// service as it will be stored: Azure options need kind `openai`, and no extra header may be
/// the auth header (`pending_auth_header`: one this request sets but `am` does not hold yet).
fn apply_egress(
    am: &mut service::ActiveModel,
    e: EgressSettings,
    pending_auth_header: Option<&str>,
    cipher: &Cipher,
    guard: &std::sync::Arc<egress::Guard>,
) -> Result<()> {
    let bad = |field: &str, msg: String| Error::BadRequest(format!("{field}: {msg}"));
    if let Some(p) = e.egress_proxy {
        let sealed = p
            .map(|url| {
                egress::check_proxy(guard, url.expose_secret())
                    .map_err(|m| bad("egress_proxy", m))?;
                Ok::<_, Error>(egress::seal_proxy(cipher, url.expose_secret()))
            })
            .transpose()?;
        am.egress_proxy = Set(sealed);
    }
    if let Some(pem) = e.tls_ca_pem {
        if let Some(pem) = &pem {
            // Built once here so a snapshot load never meets a CA reqwest refuses.
            egress::client(guard, None, Some(pem)).map_err(Error::BadRequest)?;
        }
        am.tls_ca_pem = Set(pem);
    }
    if let Some(v) = e.api_version {
        if let Some(v) = &v {
            azure::check_api_version(v).map_err(|m| bad("api_version", m))?;
        }
        am.api_version = Set(v);
    }
    if let Some(t) = e.deployment_path {
        let t = t
            .map(|t| azure::check_deployment_path(&t))
            .transpose()
            .map_err(|m| bad("deployment_path", m))?;
        am.deployment_path = Set(t);
    }
    if let Some(h) = e.upstream_headers {
        let plain: serde_json::Map<String, serde_json::Value> = h
            .iter()
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.expose_secret().into()))
            .collect();
        am.upstream_headers = Set((!plain.is_empty()).then_some(plain.into()));
    }
    let set =
        |v: &sea_orm::ActiveValue<Option<String>>| v.try_as_ref().is_some_and(Option::is_some);
    let azure = set(&am.api_version) || set(&am.deployment_path);
    let kind = am.kind.try_as_ref().and_then(|k| Kind::parse(k));
    if azure && kind != Some(Kind::OpenAi) {
        let field = if set(&am.deployment_path) {
            "deployment_path"
        } else {
            "api_version"
        };
        return Err(bad(field, "Azure options are for kind openai only".into()));
    }
    let auth_header = pending_auth_header
        .map(str::to_string)
        .or_else(|| am.auth_header.try_as_ref().cloned().flatten())
        .unwrap_or_else(|| {
            kind.map(|k| k.auth_defaults(azure).0)
                .unwrap_or("authorization")
                .to_string()
        });
    if let Some(Some(obj)) = am
        .upstream_headers
        .try_as_ref()
        .map(|v| v.as_ref().and_then(|v| v.as_object()))
    {
        let pairs = obj
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("\n")));
        headers::service_headers(pairs, &auth_header).map_err(|m| bad("upstream_headers", m))?;
    }
    Ok(())
}

fn apply_pool(am: &mut service::ActiveModel, p: PoolSettings) {
    if let Some(t) = p.total_timeout_ms {
        am.total_timeout_ms = Set(t);
    }
    if let Some(r) = p.retry_on {
        am.retry_on = Set(r.to_db());
    }
    if let Some(c) = p.key_concurrency {
        am.key_concurrency = Set((c > 0).then_some(c));
    }
    if let Some(t) = p.queue_timeout_ms {
        am.queue_timeout_ms = Set(t);
    }
    if let Some(t) = p.lease_ttl_ms {
        am.lease_ttl_ms = Set(t);
    }
}

/// Every alias pattern and allow-list entry must be a valid glob, and every alias target a
/// model name.
fn check_models(
    aliases: Option<&std::collections::BTreeMap<String, String>>,
    allow: Option<&Vec<String>>,
) -> Result<()> {
    use crate::proxy::models::compile;
    for (pattern, target) in aliases.into_iter().flatten() {
        compile(pattern).map_err(|e| Error::BadRequest(format!("model_aliases: {e}")))?;
        if target.trim().is_empty() {
            return Err(Error::BadRequest(format!(
                "model_aliases: '{pattern}' maps to an empty model name"
            )));
        }
    }
    for pattern in allow.into_iter().flatten() {
        compile(pattern).map_err(|e| Error::BadRequest(format!("model_allow: {e}")))?;
    }
    Ok(())
}

/// Every route's glob compiles and every target is an existing keyed LLM slug of the tenant:
/// not a router (a router never routes to another), not a REST slug, not the router itself.
async fn check_routes(
    state: &AppState,
    user: &Actor,
    router: &str,
    routes: &[RouteSpec],
) -> Result<serde_json::Value> {
    for (i, r) in routes.iter().enumerate() {
        crate::proxy::models::compile(&r.model)
            .map_err(|e| Error::BadRequest(format!("routes[{i}].model: {e}")))?;
        if r.targets.is_empty() {
            return Err(Error::BadRequest(format!(
                "routes[{i}].targets: a route needs at least one target"
            )));
        }
        for t in &r.targets {
            if t == router {
                return Err(Error::BadRequest(format!(
                    "routes[{i}].targets: a router cannot route to itself"
                )));
            }
            let target = find(state, user, t)
                .await
                .map_err(|_| Error::BadRequest(format!("routes[{i}].targets: no service '{t}'")))?;
            match target.kind.parse::<Kind>() {
                Ok(Kind::Router) => {
                    return Err(Error::BadRequest(format!(
                        "routes[{i}].targets: '{t}' is a router; a router never routes to another"
                    )));
                }
                Ok(Kind::Rest) => {
                    return Err(Error::BadRequest(format!(
                        "routes[{i}].targets: '{t}' is a REST slug, not an LLM one"
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(serde_json::json!(routes))
}

fn check_affinity(header: Option<&str>, ttl_s: Option<i32>) -> Result<()> {
    if let Some(h) = header.filter(|h| !h.is_empty()) {
        headers::configurable_name(h)
            .map_err(|m| Error::BadRequest(format!("affinity_header: {m}")))?;
    }
    if ttl_s.is_some_and(|t| !(1..=86_400).contains(&t)) {
        return Err(Error::BadRequest(
            "affinity_ttl_s: must be 1 to 86400".into(),
        ));
    }
    Ok(())
}

fn check_auth(header: Option<&str>, format: Option<&str>) -> Result<()> {
    if let Some(h) = header {
        headers::auth_header_name(h).map_err(|m| Error::BadRequest(format!("auth_header: {m}")))?;
    }
    if let Some(f) = format
        && !f.contains("{key}")
    {
        return Err(Error::BadRequest("auth_format: must contain {key}".into()));
    }
    Ok(())
}

/// The interval's floor comes from the configuration (`jobs.validate_min_interval_s`).
fn check_validation(
    state: &AppState,
    interval_s: Option<i32>,
    concurrency: Option<i32>,
) -> Result<()> {
    let min = state.config.jobs.validate_min_interval_s.max(1) as i32;
    if interval_s.is_some_and(|s| s != 0 && !(min..=86_400).contains(&s)) {
        return Err(Error::BadRequest(format!(
            "validate_interval_s: must be {min} to 86400, or 0 to turn it off"
        )));
    }
    if concurrency.is_some_and(|c| !(1..=64).contains(&c)) {
        return Err(Error::BadRequest(
            "validate_concurrency: must be 1 to 64".into(),
        ));
    }
    Ok(())
}

/// The interval's floor comes from the configuration (`jobs.sync_min_interval_s`); a router has
/// no keys to sync.
fn check_balance_sync(
    state: &AppState,
    router: bool,
    settings: Option<&Option<BalanceSync>>,
) -> Result<()> {
    let Some(Some(s)) = settings else {
        return Ok(());
    };
    if router {
        return Err(Error::BadRequest(
            "balance_sync: a router has no keys of its own; set it on its targets".into(),
        ));
    }
    s.check(state.config.jobs.sync_min_interval_s)
        .map_err(Error::BadRequest)
}

fn check_limits(timeout: Option<i32>, attempts: Option<i32>) -> Result<()> {
    if timeout.is_some_and(|t| !(100..=3_600_000).contains(&t)) {
        return Err(Error::BadRequest(
            "request_timeout_ms: must be 100 to 3600000".into(),
        ));
    }
    if attempts.is_some_and(|a| !(1..=20).contains(&a)) {
        return Err(Error::BadRequest("max_attempts: must be 1 to 20".into()));
    }
    Ok(())
}

pub async fn find(state: &AppState, user: &Actor, slug: &str) -> Result<service::Model> {
    db::services::by_slug(&state.db, slug)
        .await?
        .filter(|s| user.tenant_scope().is_none_or(|t| t == s.tenant_id))
        .ok_or_else(|| Error::NotFound(format!("service '{slug}' not found")))
}

pub async fn list(state: &AppState, user: &Actor, page: &Page) -> Result<List<ServiceView>> {
    let limit = page.limit()?;
    let rows = db::services::list(&state.db, user.tenant_scope(), page.after()?, limit).await?;
    let last = rows.last().map(|s| s.id);
    Ok(List::page(
        rows.into_iter()
            .map(|s| ServiceView::of(s, &state.cipher))
            .collect::<Result<_>>()?,
        last,
        limit,
    ))
}

pub async fn create(state: &AppState, user: &Actor, mut req: CreateService) -> Result<ServiceView> {
    user.require(Role::Operator)?;
    if !valid_slug(&req.slug) {
        return Err(Error::BadRequest(
            "slug: must match [a-z0-9][a-z0-9-]{0,62}".into(),
        ));
    }
    let base_url = match (req.kind, req.base_url.as_deref()) {
        (Kind::Router, None) => String::new(),
        (Kind::Router, Some(_)) => {
            return Err(Error::BadRequest(
                "base_url: a router has none; it sends requests to its routes' targets".into(),
            ));
        }
        (_, Some(u)) => check_base_url(&state.egress, u)?,
        (_, None) => return Err(Error::BadRequest("base_url: required".into())),
    };
    check_models(req.model_aliases.as_ref(), req.model_allow.as_ref())?;
    let routes = match (req.kind, req.routes.take()) {
        (Kind::Router, Some(r)) if !r.is_empty() => {
            Some(check_routes(state, user, &req.slug, &r).await?)
        }
        (Kind::Router, _) => {
            return Err(Error::BadRequest(
                "routes: a router needs at least one route".into(),
            ));
        }
        (_, Some(_)) => {
            return Err(Error::BadRequest(
                "routes: only a service of kind router has routes".into(),
            ));
        }
        (_, None) => None,
    };
    check_affinity(req.affinity_header.as_deref(), req.affinity_ttl_s)?;
    check_auth(req.auth_header.as_deref(), req.auth_format.as_deref())?;
    check_limits(req.request_timeout_ms, req.max_attempts)?;
    check_validation(state, req.validate_interval_s, req.validate_concurrency)?;
    let balance_sync = req.balance_sync.take().map(Some);
    check_balance_sync(state, req.kind == Kind::Router, balance_sync.as_ref())?;
    if let Some(c) = &req.capture {
        c.check()
            .map_err(|e| Error::BadRequest(format!("capture.{e}")))?;
    }
    let pool = pool_of!(req);
    check_pool(&pool)?;
    let egress = egress_of!(req);
    let mut am = service::ActiveModel {
        tenant_id: Set(user.tenant_for_new(&state.db, req.tenant_id).await?),
        name: Set(req.name.unwrap_or_else(|| req.slug.clone())),
        slug: Set(req.slug.clone()),
        kind: Set(req.kind.as_str().into()),
        base_url: Set(base_url),
        auth_header: Set(req.auth_header.map(|h| h.to_ascii_lowercase())),
        auth_format: Set(req.auth_format),
        strategy: Set(req.strategy.unwrap_or_default().as_str().into()),
        responses: Set(req.responses.unwrap_or_default().as_str().into()),
        model_aliases: Set(serde_json::json!(
            req.model_aliases.take().unwrap_or_default()
        )),
        model_allow: Set(serde_json::json!(
            req.model_allow.take().unwrap_or_default()
        )),
        routes: Set(routes),
        affinity: Set(req.affinity.unwrap_or_default().as_str().into()),
        affinity_header: Set(req.affinity_header.map(|h| h.to_ascii_lowercase())),
        affinity_ttl_s: Set(req.affinity_ttl_s.unwrap_or(3600)),
        connect_timeout_ms: Set(10_000),
        request_timeout_ms: Set(req.request_timeout_ms.unwrap_or(60_000)),
        max_attempts: Set(req.max_attempts.unwrap_or(3)),
        validate_interval_s: Set(req.validate_interval_s.filter(|s| *s > 0)),
        validate_concurrency: Set(req.validate_concurrency.unwrap_or(4)),
        balance_sync: Set(balance_sync.flatten().map(|b| b.to_db())),
        capture: Set(req.capture.take().map(|c| c.to_db())),
        key_concurrency: Set(None),
        total_timeout_ms: Set(300_000),
        queue_timeout_ms: Set(5_000),
        lease_ttl_ms: Set(60_000),
        retry_on: Set(RetryOn::default_policy().to_db()),
        enabled: Set(req.enabled.unwrap_or(true)),
        ..Default::default()
    };
    apply_pool(&mut am, pool);
    apply_egress(&mut am, egress, None, &state.cipher, &state.egress)?;
    let txn = db::begin_write(&state.db).await?;
    let s = db::services::insert(&txn, am)
        .await
        .map_err(|e| match Error::from(e) {
            Error::Conflict(_) => Error::Conflict(format!("slug: '{}' already exists", req.slug)),
            other => other,
        })?;
    let view = ServiceView::of(s, &state.cipher)?;
    audit::record(&txn, user, "create", target(&view), Change::created(&view)).await?;
    txn.commit().await?;
    state.config_changed().await?;
    Ok(view)
}

pub async fn get(state: &AppState, user: &Actor, slug: &str) -> Result<ServiceView> {
    let s = find(state, user, slug).await?;
    ServiceView::of(s, &state.cipher)
}

pub async fn update(
    state: &AppState,
    user: &Actor,
    slug: &str,
    mut req: PatchService,
) -> Result<ServiceView> {
    user.require(Role::Operator)?;
    check_models(req.model_aliases.as_ref(), req.model_allow.as_ref())?;
    check_auth(req.auth_header.as_deref(), req.auth_format.as_deref())?;
    check_limits(req.request_timeout_ms, req.max_attempts)?;
    check_affinity(req.affinity_header.as_deref(), req.affinity_ttl_s)?;
    check_validation(state, req.validate_interval_s, req.validate_concurrency)?;
    let pool = pool_of!(req);
    check_pool(&pool)?;
    let egress = egress_of!(req);
    let existing = find(state, user, slug).await?;
    let before = ServiceView::of(existing.clone(), &state.cipher)?;
    let is_router = existing.kind == Kind::Router.as_str();
    if is_router && req.base_url.is_some() {
        return Err(Error::BadRequest(
            "base_url: a router has none; it sends requests to its routes' targets".into(),
        ));
    }
    let routes = match req.routes.take() {
        Some(_) if !is_router => {
            return Err(Error::BadRequest(
                "routes: only a service of kind router has routes".into(),
            ));
        }
        Some(r) if r.is_empty() => {
            return Err(Error::BadRequest(
                "routes: a router needs at least one route".into(),
            ));
        }
        Some(r) => Some(check_routes(state, user, slug, &r).await?),
        None => None,
    };
    let mut am: service::ActiveModel = existing.into();
    apply_pool(&mut am, pool);
    apply_egress(
        &mut am,
        egress,
        req.auth_header.as_deref(),
        &state.cipher,
        &state.egress,
    )?;
    if let Some(n) = req.name {
        am.name = Set(n);
    }
    if let Some(u) = req.base_url {
        am.base_url = Set(check_base_url(&state.egress, &u)?);
    }
    if let Some(s) = req.strategy {
        am.strategy = Set(s.as_str().into());
    }
    if let Some(r) = req.responses {
        am.responses = Set(r.as_str().into());
    }
    if let Some(a) = req.model_aliases.take() {
        am.model_aliases = Set(serde_json::json!(a));
    }
    if let Some(l) = req.model_allow.take() {
        am.model_allow = Set(serde_json::json!(l));
    }
    if let Some(r) = routes {
        am.routes = Set(Some(r));
    }
    if let Some(a) = req.affinity {
        am.affinity = Set(a.as_str().into());
    }
    if let Some(h) = req.affinity_header {
        // An empty name goes back to the default header.
        am.affinity_header = Set(Some(h.to_ascii_lowercase()).filter(|h| !h.is_empty()));
    }
    if let Some(t) = req.affinity_ttl_s {
        am.affinity_ttl_s = Set(t);
    }
    if let Some(h) = req.auth_header {
        am.auth_header = Set(Some(h.to_ascii_lowercase()));
    }
    if let Some(f) = req.auth_format {
        am.auth_format = Set(Some(f));
    }
    if let Some(t) = req.request_timeout_ms {
        am.request_timeout_ms = Set(t);
    }
    if let Some(a) = req.max_attempts {
        am.max_attempts = Set(a);
    }
    if let Some(v) = req.validate_interval_s {
        am.validate_interval_s = Set((v > 0).then_some(v));
    }
    if let Some(c) = req.validate_concurrency {
        am.validate_concurrency = Set(c);
    }
    if let Some(b) = req.balance_sync.take() {
        check_balance_sync(state, is_router, Some(&b))?;
        am.balance_sync = Set(b.map(|b| b.to_db()));
    }
    if let Some(c) = req.capture.take() {
        if let Some(c) = &c {
            c.check()
                .map_err(|e| Error::BadRequest(format!("capture.{e}")))?;
        }
        am.capture = Set(c.map(|c| c.to_db()));
    }
    if let Some(e) = req.enabled {
        am.enabled = Set(e);
    }
    let txn = db::begin_write(&state.db).await?;
    let after = ServiceView::of(db::services::update(&txn, am).await?, &state.cipher)?;
    audit::record(
        &txn,
        user,
        "update",
        target(&after),
        Change::updated(&before, &after),
    )
    .await?;
    txn.commit().await?;
    state.config_changed().await?;
    Ok(after)
}

pub async fn delete(state: &AppState, user: &Actor, slug: &str) -> Result<()> {
    user.require(Role::Operator)?;
    let s = find(state, user, slug).await?;
    if let Some(router) = db::services::routers_targeting(&state.db, slug).await? {
        return Err(Error::Conflict(format!(
            "'{slug}' is a target of router '{router}'; remove it from the router's routes first"
        )));
    }
    let key_ids = db::keys::ids_of_service(&state.db, s.id).await?;
    let before = ServiceView::of(s.clone(), &state.cipher)?;
    let txn = db::begin_write(&state.db).await?;
    db::services::delete(&txn, &s).await?;
    audit::record(
        &txn,
        user,
        "delete",
        target(&before),
        Change::deleted(&before),
    )
    .await?;
    txn.commit().await?;
    for id in key_ids {
        state
            .coord
            .report(s.id, id, None, crate::coord::Fault::Clear, 0)
            .await?;
    }
    state.config_changed().await?;
    Ok(())
}

fn target(s: &ServiceView) -> Target {
    Target::new("service", &s.slug, Some(s.tenant_id))
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs_follow_the_contract() {
        for ok in ["a", "openai", "my-slug-1", "0x"] {
            assert!(super::valid_slug(ok), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", &"a".repeat(64)] {
            assert!(!super::valid_slug(bad), "{bad}");
        }
    }
}
