use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "services")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: i64,
    #[sea_orm(unique)]
    pub slug: String,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub auth_header: Option<String>,
    pub auth_format: Option<String>,
    pub strategy: String,
    pub responses: String,
    pub model_aliases: Json,
    pub model_allow: Json,
    pub connect_timeout_ms: i32,
    pub request_timeout_ms: i32,
    pub max_attempts: i32,
    pub key_concurrency: Option<i32>,
    pub enabled: bool,
    pub total_timeout_ms: i32,
    pub queue_timeout_ms: i32,
    pub lease_ttl_ms: i32,
    /// Retry policy as `domain::RetryOn::to_db` writes it (`auth,rate_limit,408`); rows from before
    /// retry classes hold statuses (`401,429,5xx`), which `RetryOn::from_db` still reads.
    pub retry_on: String,
    /// Router services: `[{"model": glob, "targets": [slug, ...]}]` (see `proxy::router`).
    pub routes: Option<Json>,
    /// `none` | `session`.
    pub affinity: String,
    pub affinity_header: Option<String>,
    pub affinity_ttl_s: i32,
    /// Outbound proxy URL (`http://`, `https://`, `socks5://`); may hold credentials.
    pub egress_proxy: Option<String>,
    /// Extra headers sent upstream: `{"name": "value"}`.
    pub upstream_headers: Option<Json>,
    /// PEM of a private CA the upstream's certificate may chain to.
    pub tls_ca_pem: Option<String>,
    /// Azure OpenAI: the `api-version` query parameter.
    pub api_version: Option<String>,
    /// Azure OpenAI: the path a model's calls go to, `{model}` replaced by the deployment.
    pub deployment_path: Option<String>,
    /// Scheduled validation of out-of-rotation keys (None = off).
    pub validate_interval_s: Option<i32>,
    pub validate_concurrency: i32,
    /// Remote balance sync settings (`billing::sync`), None = off.
    pub balance_sync: Option<Json>,
    /// Request/response body capture settings (`events::capture`), None = off.
    pub capture: Option<Json>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
