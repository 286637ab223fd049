use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "upstream_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub service_id: i64,
    /// AES-256-GCM ciphertext (`v1:` + base64 of nonce and ciphertext).
    pub secret: String,
    pub fingerprint: String,
    pub label: Option<String>,
    pub weight: i32,
    pub status: String,
    /// Money in integer micro-units (1 unit = 1_000_000); the API shows units.
    pub balance_micros: Option<i64>,
    pub quota_total_micros: Option<i64>,
    pub quota_used_micros: i64,
    pub rpm: Option<i32>,
    pub tpm: Option<i32>,
    pub last_used_at: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub consecutive_failures: i32,
    /// Outbound proxy for this key only (overrides the service's); may hold credentials.
    pub egress_proxy: Option<String>,
    /// Relative price of this key (1.0 = list price): the `cost` strategy picks the lowest.
    pub cost_factor: f64,
    pub validated_at: Option<DateTimeUtc>,
    pub validation_error: Option<String>,
    /// When the balance was last read from the upstream's billing API, and what went wrong then.
    pub balance_synced_at: Option<DateTimeUtc>,
    pub sync_error: Option<String>,
    /// Running statistics, flushed from the coordination store.
    pub requests_total: i64,
    pub successes_total: i64,
    pub failures_4xx: i64,
    pub failures_5xx: i64,
    pub failures_network: i64,
    pub tokens_total: i64,
    pub cost_total_micros: i64,
    pub created_at: DateTimeUtc,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamKey")
            .field("id", &self.id)
            .field("service_id", &self.service_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
