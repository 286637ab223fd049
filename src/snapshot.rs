//! The data plane's view of configuration: services, their routable keys (decrypted) and access
//! keys, loaded from the database into memory and swapped atomically. The hot path reads only this.
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};

use crate::billing::pricing::{Price, PriceTable, Rule, Source};
use crate::coord::{ClientLimits, KeySet, KeySpec, Strategy};
use crate::crypto::{Cipher, mask};
use crate::{db, egress};

// The domain enums moved to `crate::domain`; these paths stay for the data plane.
pub use crate::domain::{Kind, RetryOn};

pub struct KeyRt {
    pub id: i64,
    pub secret: SecretString,
    pub masked: String,
    /// This key's own client, when it has an egress proxy (None: the service's).
    pub http: Option<reqwest::Client>,
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
    /// The service's client when it has an egress proxy or a private CA (None: the shared one).
    /// Use `client_for`, which also knows the keys' own proxies.
    pub http: Option<reqwest::Client>,
    /// Added to every upstream request (`proxy::headers::with_service`).
    pub upstream_headers: HeaderMap,
    /// Azure OpenAI options (deployment path, api-version).
    pub azure: Option<crate::proxy::azure::Azure>,
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
    /// Body capture settings (None: bodies are not kept).
    pub capture: Option<Arc<crate::events::capture::CaptureSettings>>,
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

impl ServiceRt {
    /// The HTTP client for a call with the key at `key_index` (in `keys`): the key's own when it
    /// has an egress proxy, else the service's (proxy and/or private CA), else `shared` (the
    /// process-wide `state.http`). Every upstream call a service makes goes through this: the
    /// data plane, key validation and balance sync alike, so egress settings hold for all.
    pub fn client_for<'a>(
        &'a self,
        key_index: usize,
        shared: &'a reqwest::Client,
    ) -> &'a reqwest::Client {
        self.keys
            .get(key_index)
            .and_then(|k| k.http.as_ref())
            .or(self.http.as_ref())
            .unwrap_or(shared)
    }
}

#[derive(Default)]
pub struct Snapshot {
    pub version: u64,
    pub services: HashMap<String, Arc<ServiceRt>>,
    /// By hex SHA-256 of the full key.
    pub access_keys: HashMap<String, Arc<AccessKeyRt>>,
    /// Prices of models per slug (stored rules over the built-in defaults).
    pub prices: PriceTable,
    /// The egress clients in use, handed to the next load for reuse.
    clients: egress::Clients,
}

/// A routable key before its service's egress is known. No `Debug`: it holds secrets.
struct LoadedKey {
    rt: KeyRt,
    spec: KeySpec,
    proxy: Option<SecretString>,
}

/// The service's client and the keys that can be reached as configured. Fails closed: a key
/// whose proxy cannot be built is left out, and so is every key of a service whose own egress
/// cannot be built, rather than sending their traffic past the proxy or CA the operator set.
/// Errors are logged without the proxy URL.
fn egress_of(
    s: &db::entity::service::Model,
    keys: Vec<LoadedKey>,
    cipher: &Cipher,
    guard: &Arc<egress::Guard>,
    prev: &egress::Clients,
    clients: &mut egress::Clients,
) -> (Option<reqwest::Client>, Vec<(KeyRt, KeySpec)>) {
    let ca = s.tls_ca_pem.as_deref().filter(|p| !p.trim().is_empty());
    let proxy = s
        .egress_proxy
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| egress::open_proxy(cipher, p).map_err(|e| e.to_string()))
        .transpose();
    let http = match proxy.and_then(|p| clients.get(guard, prev, p.as_deref(), ca)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(slug = %s.slug, error = %e, "service egress cannot be built: its keys are left out");
            return (None, Vec::new());
        }
    };
    let mut out = Vec::with_capacity(keys.len());
    for mut k in keys {
        if let Some(p) = &k.proxy {
            match clients.get(guard, prev, Some(p.expose_secret()), ca) {
                Ok(c) => k.rt.http = c,
                Err(e) => {
                    tracing::error!(slug = %s.slug, key_id = k.rt.id, error = %e, "key egress cannot be built: key left out");
                    continue;
                }
            }
        }
        out.push((k.rt, k.spec));
    }
    (http, out)
}

impl Snapshot {
    pub async fn load(
        db: &DatabaseConnection,
        cipher: &Cipher,
        guard: &Arc<egress::Guard>,
        version: u64,
    ) -> anyhow::Result<Self> {
        Self::load_after(db, cipher, guard, version, &Self::default()).await
    }

    /// Like `load`, reusing `prev`'s egress clients where the settings did not change.
    pub async fn load_after(
        db: &DatabaseConnection,
        cipher: &Cipher,
        guard: &Arc<egress::Guard>,
        version: u64,
        prev: &Snapshot,
    ) -> anyhow::Result<Self> {
        let services = db::services::all(db).await?;
        let keys = db::keys::routable(db).await?;
        let access = db::access_keys::all_enabled(db).await?;
        let prices = price_table(db::pricing::all(db).await?);

        let mut by_service: HashMap<i64, Vec<LoadedKey>> = HashMap::new();
        let limit = |v: Option<i32>| v.filter(|v| *v > 0).map(|v| v as u32);
        for k in keys {
            let proxy = k
                .egress_proxy
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(|p| egress::open_proxy(cipher, p))
                .transpose();
            match cipher.decrypt(&k.secret).and_then(|s| Ok((s, proxy?))) {
                Ok((plain, proxy)) => by_service.entry(k.service_id).or_default().push(LoadedKey {
                    rt: KeyRt {
                        id: k.id,
                        masked: mask(&plain),
                        secret: SecretString::from(plain),
                        http: None,
                    },
                    spec: KeySpec {
                        id: k.id,
                        weight: k.weight.max(1) as u32,
                        rpm: limit(k.rpm),
                        tpm: limit(k.tpm),
                        balance: k.balance_micros,
                        cost_ppm: cost_ppm(k.cost_factor),
                    },
                    proxy: proxy.map(SecretString::from),
                }),
                Err(e) => tracing::error!(key_id = k.id, error = %e, "upstream key skipped"),
            }
        }
        let mut clients = egress::Clients::default();
        let mut out = Snapshot {
            version,
            prices,
            ..Default::default()
        };
        for s in services {
            let Some(kind) = Kind::parse(&s.kind) else {
                tracing::error!(slug = %s.slug, kind = %s.kind, "service with unknown kind skipped");
                continue;
            };
            let azure = crate::proxy::azure::Azure::load(
                &s.slug,
                s.deployment_path.as_deref(),
                s.api_version.as_deref(),
            )
            .filter(|_| kind == Kind::OpenAi);
            let (dh, df) = kind.auth_defaults(azure.is_some());
            let auth_header = s
                .auth_header
                .as_deref()
                .and_then(|h| HeaderName::try_from(h).ok())
                .unwrap_or_else(|| HeaderName::from_static(dh));
            let loaded = by_service.remove(&s.id).unwrap_or_default();
            let (http, usable) = egress_of(&s, loaded, cipher, guard, &prev.clients, &mut clients);
            let (keys, specs): (Vec<KeyRt>, Vec<KeySpec>) = usable.into_iter().unzip();
            let upstream_headers = upstream_headers(&s, auth_header.as_str());
            let retry_on = RetryOn::from_db(&s.retry_on).unwrap_or_else(|e| {
                tracing::error!(slug = %s.slug, error = %e, "bad retry_on; using the default");
                RetryOn::default_policy()
            });
            let ms = |v: i32| std::time::Duration::from_millis(v.max(1) as u64);
            let models =
                crate::proxy::models::ModelRules::load(&s.slug, &s.model_aliases, &s.model_allow);
            let routes = crate::proxy::router::Routes::load(&s.slug, s.routes.as_ref());
            let strategy = Strategy::parse(&s.strategy).unwrap_or(Strategy::RoundRobin);
            let capture = s.capture.as_ref().and_then(|v| {
                crate::events::capture::CaptureSettings::from_db(v)
                    .map_err(|e| tracing::error!(slug = %s.slug, error = %e, "bad capture settings ignored"))
                    .ok()
                    .map(Arc::new)
            });
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
                    http,
                    upstream_headers,
                    azure,
                    max_attempts: s.max_attempts.max(1) as u32,
                    retry_on,
                    strategy,
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
                    capture,
                    cap: limit(s.key_concurrency),
                    enabled: s.enabled,
                    keys,
                    specs: KeySet::for_strategy(specs, strategy),
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
                        budget: a.budget_micros,
                        spent: a.spent_micros,
                    },
                }),
            );
        }
        out.clients = clients;
        Ok(out)
    }
}

/// The stored rules over the built-in defaults. A stored pattern that no longer compiles (a row
/// edited by hand; the API refuses them) is left out with an error line rather than failing the
/// whole load.
fn price_table(rows: Vec<db::entity::pricing_rule::Model>) -> PriceTable {
    let stored = rows.into_iter().filter_map(|r| {
        let matcher = crate::proxy::models::compile(&r.pattern)
            .inspect_err(|e| tracing::error!(rule_id = r.id, error = %e, "pricing rule skipped"))
            .ok()?;
        Some(Rule {
            source: Source::Rule(r.id),
            pattern: r.pattern,
            matcher,
            slug: r.slug,
            priority: r.priority,
            price: Price {
                input_per_mtok: r.input_per_mtok_micros,
                output_per_mtok: r.output_per_mtok_micros,
                cache_read_per_mtok: r.cache_read_per_mtok_micros,
                cache_write_per_mtok: r.cache_write_per_mtok_micros,
                per_request: r.per_request_micros,
            },
        })
    });
    PriceTable::new(
        stored
            .chain(crate::billing::defaults::rules().iter().cloned())
            .collect(),
    )
}

/// The service's extra headers; a stored set that fails the check (a row edited by hand) is
/// dropped whole with an error line, rather than half applied.
fn upstream_headers(s: &db::entity::service::Model, auth_header: &str) -> HeaderMap {
    let Some(obj) = s.upstream_headers.as_ref().and_then(|v| v.as_object()) else {
        return HeaderMap::new();
    };
    // A non-string value cannot be a header value: "\n" makes the check refuse it.
    let pairs = obj
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("\n")));
    crate::proxy::headers::service_headers(pairs, auth_header).unwrap_or_else(|e| {
        tracing::error!(slug = %s.slug, error = %e, "bad upstream_headers ignored");
        HeaderMap::new()
    })
}
