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
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
