//! Configuration: built-in defaults -> optional `keygate.toml` (or `KEYGATE_CONFIG`) -> environment
//! `KEYGATE__SECTION__FIELD` -> the short names operators expect (`DATABASE_URL`, `REDIS_URL`, ...).
use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub crypto: CryptoConfig,
    pub log: LogConfig,
    pub jobs: JobsConfig,
    #[serde(default)]
    pub otel: OtelConfig,
    #[serde(default)]
    pub egress: EgressConfig,
}

/// Where keygate may send requests (`crate::egress::ssrf`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Non-public destinations keygate may call anyway: CIDRs, addresses or host names
    /// (`.internal` admits every name under it). A list in the file, or one comma-separated
    /// string (`KEYGATE__EGRESS__ALLOW=127.0.0.0/8,::1/128,vllm.internal`). Empty: only public
    /// addresses are called.
    #[serde(deserialize_with = "string_or_list")]
    pub allow: Vec<String>,
}

/// A list of strings, given as a list or as one comma-separated string.
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    let items = match Either::deserialize(d)? {
        Either::One(s) => vec![s],
        Either::Many(v) => v,
    };
    Ok(items
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Trace export (OpenTelemetry, OTLP over HTTP/protobuf). The standard `OTEL_*` variables set
/// these too: `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SDK_DISABLED`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// Collector base URL (`http://collector:4318`); spans go to `<endpoint>/v1/traces`. Unset:
    /// no traces are exported.
    pub endpoint: Option<String>,
    /// The full URL for spans, when it is not `<endpoint>/v1/traces`.
    pub traces_endpoint: Option<String>,
    pub service_name: String,
    /// Share of new traces recorded, 0 to 1; a client's `traceparent` decision is followed.
    pub sample_ratio: f64,
    /// Turns export off whatever else is set.
    pub disabled: bool,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            traces_endpoint: None,
            service_name: "keygate".into(),
            sample_ratio: 1.0,
            disabled: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Data plane and (unless `admin_listen` is set) control plane.
    pub listen: SocketAddr,
    /// Optional separate address for `/admin`, `/docs`, `/openapi.json` and `/metrics`.
    pub admin_listen: Option<SocketAddr>,
    /// A client must send its whole request head within this time (slow-header defence), ms.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no bytes moving either way for this long is closed, ms.
    pub idle_timeout_ms: u64,
    /// Concurrent client connections per listener; further accepts wait (and say so in the log).
    pub max_connections: usize,
    /// Admin routes must receive their whole request body within this time, ms.
    pub admin_body_timeout_ms: u64,
    /// On shutdown, in-flight requests (streams included) get this long to finish, ms.
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...` for enterprise mode; `sqlite://path?mode=rwc` or empty for the embedded default.
    pub url: Option<SecretString>,
    /// Directory for the embedded default: the SQLite file and generated secrets live here.
    pub data_dir: PathBuf,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Empty: the in-process coordination store (one replica only). One `redis://` URL for a
    /// single Redis; with `cluster`, one or more seed nodes of the Redis Cluster, comma-separated
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`); for a primary managed by Redis Sentinel,
    /// `redis+sentinel://[user:password@]host1:26379,host2:26379/mymaster` (the Sentinels and
    /// the master name they monitor; the credentials are the data nodes'; `rediss+sentinel://`
    /// for TLS).
    pub url: Option<SecretString>,
    /// `url` names a Redis Cluster (`REDIS_CLUSTER=true`): keygate's state is spread over its
    /// primaries by hash tags, one slot per service and one per access key.
    pub cluster: bool,
    /// Every Redis key keygate writes starts with this prefix (which must not contain `{`: the
    /// hash tags follow it).
    pub prefix: String,
    /// While Redis is unreachable: `degrade` (serve, coordinating in process with this replica's
    /// share of the limits) or `fail` (refuse with 503).
    pub on_outage: crate::coord::outage::OnOutage,
    /// PEM file of the CA that signed the Redis server's certificate, for `rediss://` URLs to a
    /// Redis with a private CA (`REDIS_CA_FILE`). Unset: the system's trust store.
    pub ca_file: Option<std::path::PathBuf>,
    /// Password of Sentinels that require one (`requirepass` in sentinel.conf), for a
    /// `redis+sentinel://` URL (`REDIS_SENTINEL_PASSWORD`). Unset: the Sentinels are asked
    /// without one.
    pub sentinel_password: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_secret: Option<SecretString>,
    pub jwt_ttl_secs: u64,
    pub admin_username: String,
    pub admin_password: Option<SecretString>,
    /// Password hashes computed at once (Argon2 runs on the blocking pool behind this limit).
    pub login_concurrency: usize,
    /// First lockout after a failed login, doubled per further failure (per username and per IP), ms.
    pub login_backoff_base_ms: u64,
    /// Longest lockout after failed logins, ms.
    pub login_backoff_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Slug served under `/v1/...`.
    pub default_slug: Option<String>,
    /// Comma-separated keys accepted on every slug, in addition to access keys from the database.
    pub global_proxy_keys: Option<SecretString>,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Request bodies up to this size are buffered so a failed attempt can be retried on another key;
    /// larger ones stream straight through with a single attempt.
    pub retry_buffer_bytes: usize,
    /// How often each replica checks the shared config version (ms).
    pub refresh_interval_ms: u64,
    /// Consecutive 5xx/timeout/connect failures before a key is taken out of rotation.
    pub failure_threshold: u32,
    /// How long a tripped key stays out before one trial request (half-open) may use it (ms).
    pub recovery_ms: u64,
    /// Cooldown after a first 429 without Retry-After; doubles per 429 in a row (ms).
    pub backoff_base_ms: u64,
    /// Longest 429 backoff (ms).
    pub backoff_max_ms: u64,
    /// 429s from this share (percent) of a service's keys within the window below are treated as
    /// an upstream-wide limit: the service backs off instead of cooling every key.
    pub upstream_wide_percent: u32,
    pub upstream_wide_window_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoConfig {
    /// 32 bytes, base64 or hex; encrypts upstream key secrets at rest.
    pub encryption_key: Option<SecretString>,
    /// Keys rotated out, comma-separated: they still decrypt what they sealed until
    /// `keygate admin rotate-encryption-key` has re-encrypted it with `encryption_key`.
    pub previous_keys: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// Write request logs and their statistics (`request_logs`, `request_stats`). Off, requests
    /// are still counted in the live figures and the keys' statistics, but nothing is logged.
    pub requests: bool,
    /// Days of request logs to keep; 0 keeps them forever.
    pub retention_days: u32,
    /// Days of per-minute statistics to keep (hourly ones stay); 0 keeps them forever.
    pub minute_stats_days: u32,
    /// Days of captured request/response bodies to keep (services opt in); 0 keeps them forever.
    pub body_retention_days: u32,
    /// Request events waiting for the log writer (memory); beyond it events go to the spool.
    pub queue_capacity: usize,
    /// How long the log writer gathers events before writing them as one batch (ms): the longest
    /// a request takes to show in the log and the statistics. Each batch upserts one statistics
    /// row per group whatever its size, so a longer interval costs the database less.
    pub flush_interval_ms: u64,
    /// Largest size of the local spool file that holds request events while the database is
    /// unreachable; replayed in order when it returns. 0 disables spooling.
    pub spool_max_bytes: u64,
    /// Directory of the spool file; empty = `<data_dir>/spool`.
    pub spool_dir: Option<PathBuf>,
}

/// Background jobs (`crate::jobs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// How often each replica looks for services whose scheduled key validation is due (ms).
    pub validate_tick_ms: u64,
    /// The shortest `validate_interval_s` the admin API accepts. 10 s keeps a pool of keys from
    /// hammering its upstream; tests lower it to watch several runs go by.
    pub validate_min_interval_s: u32,
    /// How often live balances, spend and key statistics are written to the database (ms).
    pub persist_interval_ms: u64,
    /// How often each replica looks for services whose scheduled balance sync is due (ms).
    pub sync_tick_ms: u64,
    /// The shortest `balance_sync.interval_s` the admin API accepts. 60 s keeps a pool of keys
    /// from hammering its upstream's billing API; tests lower it to watch several runs go by.
    pub sync_min_interval_s: u32,
}

impl Config {
    /// Loads the layered configuration from the process environment.
    pub fn load() -> anyhow::Result<Self> {
        let file = std::env::var("KEYGATE_CONFIG").unwrap_or_else(|_| "keygate.toml".into());
        Self::load_from(Some(file.as_str()), |k| std::env::var(k).ok())
    }

    /// The built-in defaults alone (tests start from these).
    pub fn defaults() -> Self {
        Self::load_from(None, |_| None).expect("built-in defaults are valid")
    }

    pub fn load_from(
        file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let mut b = config::Config::builder()
            .set_default("server.listen", "0.0.0.0:8000")?
            .set_default("database.data_dir", "./data")?
            .set_default("database.max_connections", 20)?
            .set_default("redis.prefix", "keygate:")?
            .set_default("redis.cluster", false)?
            .set_default("auth.jwt_ttl_secs", 3600)?
            .set_default("auth.admin_username", "admin")?
            .set_default("auth.login_concurrency", 1)?
            .set_default("auth.login_backoff_base_ms", 500)?
            .set_default("auth.login_backoff_max_ms", 300_000)?
            .set_default("server.header_read_timeout_ms", 10_000)?
            .set_default("server.idle_timeout_ms", 75_000)?
            .set_default("server.max_connections", 20_000)?
            .set_default("server.admin_body_timeout_ms", 15_000)?
            .set_default("server.shutdown_grace_ms", 30_000)?
            .set_default("proxy.max_body_bytes", 32 * 1024 * 1024)?
            .set_default("proxy.retry_buffer_bytes", 4 * 1024 * 1024)?
            .set_default("proxy.refresh_interval_ms", 500)?
            .set_default("proxy.failure_threshold", 3)?
            .set_default("proxy.recovery_ms", 30_000)?
            .set_default("proxy.backoff_base_ms", 1_000)?
            .set_default("proxy.backoff_max_ms", 300_000)?
            .set_default("proxy.upstream_wide_percent", 60)?
            .set_default("proxy.upstream_wide_window_ms", 10_000)?
            .set_default("redis.on_outage", "degrade")?
            .set_default("log.format", "text")?
            .set_default("log.retention_days", 30)?
            .set_default("log.requests", true)?
            .set_default("log.minute_stats_days", 14)?
            .set_default("log.body_retention_days", 7)?
            .set_default("log.queue_capacity", 50_000)?
            .set_default("log.flush_interval_ms", 1_000)?
            .set_default("log.spool_max_bytes", 256 * 1024 * 1024)?
            .set_default("jobs.validate_tick_ms", 5_000)?
            .set_default("jobs.validate_min_interval_s", 10)?
            .set_default("jobs.persist_interval_ms", 10_000)?
            .set_default("jobs.sync_tick_ms", 5_000)?
            .set_default("jobs.sync_min_interval_s", 60)?;
        if let Some(f) = file {
            b = b.add_source(config::File::with_name(f).required(false));
        }
        let env_map: std::collections::HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("KEYGATE__"))
            .filter_map(|(k, _)| env(&k).map(|v| (k, v)))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("KEYGATE")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env_map)),
        );
        let short = [
            ("DATABASE_URL", "database.url"),
            ("REDIS_URL", "redis.url"),
            ("REDIS_CLUSTER", "redis.cluster"),
            ("JWT_SECRET", "auth.jwt_secret"),
            ("ADMIN_USERNAME", "auth.admin_username"),
            ("ADMIN_PASSWORD", "auth.admin_password"),
            ("GLOBAL_PROXY_KEYS", "proxy.global_proxy_keys"),
            ("KEYGATE_ENCRYPTION_KEY", "crypto.encryption_key"),
            ("KEYGATE_PREVIOUS_ENCRYPTION_KEYS", "crypto.previous_keys"),
            ("KEYGATE_DEFAULT_SLUG", "proxy.default_slug"),
            ("REDIS_CA_FILE", "redis.ca_file"),
            ("REDIS_SENTINEL_PASSWORD", "redis.sentinel_password"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel.endpoint"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "otel.traces_endpoint"),
            ("OTEL_SERVICE_NAME", "otel.service_name"),
            ("OTEL_TRACES_SAMPLER_ARG", "otel.sample_ratio"),
            ("OTEL_SDK_DISABLED", "otel.disabled"),
        ];
        for (var, key) in short {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                b = b.set_override(key, v)?;
            }
        }
        if let Some(port) = env("PORT").filter(|v| !v.is_empty()) {
            let port: u16 = port
                .parse()
                .map_err(|_| anyhow::anyhow!("PORT must be a port number, got {port:?}"))?;
            b = b.set_override("server.listen", format!("0.0.0.0:{port}"))?;
        }
        Ok(b.build()?.try_deserialize()?)
    }

    /// Key health settings for the coordination store.
    pub fn policy(&self) -> crate::coord::Policy {
        let p = &self.proxy;
        crate::coord::Policy {
            failure_threshold: p.failure_threshold.max(1),
            recovery_ms: p.recovery_ms,
            backoff_base_ms: p.backoff_base_ms.max(1),
            backoff_max_ms: p.backoff_max_ms.max(p.backoff_base_ms),
            upstream_wide_window_ms: p.upstream_wide_window_ms,
            upstream_wide_percent: p.upstream_wide_percent.clamp(1, 100),
            probe_lock_ms: p.recovery_ms.max(1_000),
            ..Default::default()
        }
    }

    /// Enterprise mode: shared Postgres. Secrets must then be given, not generated per replica.
    pub fn is_enterprise(&self) -> bool {
        use secrecy::ExposeSecret;
        self.database
            .url
            .as_ref()
            .is_some_and(|u| u.expose_secret().starts_with("postgres"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn short_env_names_override_defaults() {
        let env = |k: &str| match k {
            "DATABASE_URL" => Some("postgres://u:p@h/db".to_string()),
            "PORT" => Some("9001".to_string()),
            "GLOBAL_PROXY_KEYS" => Some("a,b".to_string()),
            _ => None,
        };
        let c = Config::load_from(None, env).unwrap();
        assert_eq!(c.server.listen.port(), 9001);
        assert!(c.is_enterprise());
        assert_eq!(c.proxy.global_proxy_keys.unwrap().expose_secret(), "a,b");
    }

    #[test]
    fn redis_cluster_is_off_by_default_and_redis_cluster_true_turns_it_on() {
        let c = Config::load_from(None, |_| None).unwrap();
        assert!(!c.redis.cluster);
        let env = |k: &str| match k {
            "REDIS_URL" => Some("redis://10.0.0.1:6379,redis://10.0.0.2:6379".to_string()),
            "REDIS_CLUSTER" => Some("true".to_string()),
            _ => None,
        };
        let c = Config::load_from(None, env).unwrap();
        assert!(c.redis.cluster);
        assert_eq!(
            c.redis.url.unwrap().expose_secret(),
            "redis://10.0.0.1:6379,redis://10.0.0.2:6379"
        );
    }

    #[test]
    fn a_sentinel_url_and_the_sentinels_password_come_from_the_short_env_names() {
        let env = |k: &str| match k {
            "REDIS_URL" => Some("redis+sentinel://s1:26379,s2:26379/mymaster".to_string()),
            "REDIS_SENTINEL_PASSWORD" => Some("sentinel-secret".to_string()),
            _ => None,
        };
        let c = Config::load_from(None, env).unwrap();
        let url = c.redis.url.unwrap();
        assert_eq!(
            crate::coord::redis::topology_of(url.expose_secret(), c.redis.cluster).unwrap(),
            crate::coord::redis::Topology::Sentinel
        );
        assert_eq!(
            c.redis.sentinel_password.unwrap().expose_secret(),
            "sentinel-secret"
        );
        assert!(
            crate::coord::redis::topology_of(url.expose_secret(), true).is_err(),
            "a Sentinel URL with redis.cluster set is refused"
        );
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let env = |k: &str| match k {
            "JWT_SECRET" => Some("super-secret-jwt".to_string()),
            "REDIS_SENTINEL_PASSWORD" => Some("sentinel-secret".to_string()),
            "ADMIN_PASSWORD" => Some("hunter2hunter2".to_string()),
            _ => None,
        };
        let c = Config::load_from(None, env).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("super-secret-jwt"));
        assert!(!dbg.contains("hunter2hunter2"));
        assert!(!dbg.contains("sentinel-secret"));
    }

    #[test]
    fn the_egress_allow_list_is_a_list_or_one_comma_separated_string() {
        // A string is what `KEYGATE__EGRESS__ALLOW` gives; the binary tests set it for real.
        let dir = tempfile::tempdir().unwrap();
        for (i, body) in [
            r#"allow = "127.0.0.0/8, ::1/128,vllm.internal""#,
            r#"allow = ["127.0.0.0/8", "::1/128", "vllm.internal"]"#,
        ]
        .iter()
        .enumerate()
        {
            let f = dir.path().join(format!("k{i}.toml"));
            std::fs::write(&f, format!("[egress]\n{body}\n")).unwrap();
            let c = Config::load_from(Some(f.to_str().unwrap()), |_| None).unwrap();
            assert_eq!(c.egress.allow, ["127.0.0.0/8", "::1/128", "vllm.internal"]);
        }
        assert!(Config::defaults().egress.allow.is_empty());
    }

    #[test]
    fn bad_port_is_a_clear_error() {
        let env = |k: &str| (k == "PORT").then(|| "eighty".to_string());
        let err = Config::load_from(None, env).unwrap_err().to_string();
        assert!(err.contains("PORT"), "{err}");
    }
}
