use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "request_logs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub ts: DateTimeUtc,
    pub service: String,
    pub access_key_id: Option<i64>,
    pub upstream_key_id: Option<i64>,
    pub model: Option<String>,
    pub path: String,
    pub status: i32,
    pub attempts: i32,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    /// Integer micro-units of the currency.
    pub cost_micros: Option<i64>,
    pub error_kind: Option<String>,
    /// The model sent upstream, when aliasing changed it.
    pub upstream_model: Option<String>,
    pub streamed: bool,
    pub cancelled: bool,
    /// Token counts were estimated, not reported by the upstream.
    pub estimated: bool,
    pub client_format: Option<String>,
    pub upstream_format: Option<String>,
    /// JSON array of the upstream key ids tried, in order.
    pub tried: Option<String>,
    /// For a router slug: the target slug that served the request (or was tried last).
    pub target: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
