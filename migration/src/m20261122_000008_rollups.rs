//! Request statistics (#10): per-minute rollups of request events, written by the log writer as
//! it inserts each batch (additive upserts, exact with many replicas), so statistics never scan
//! `request_logs`.
//!
//! `bucket_start` is the minute as unix seconds (a multiple of 60) rather than a timestamp:
//! hour and day buckets are then `bucket_start / 3600 * 3600` in SQL that SQLite and Postgres
//! read alike. "None" is 0 for the key ids and '' for the model, so the primary key has no NULLs
//! (a NULL never conflicts, which would break the upsert).
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Log-scale histogram buckets per latency kind (see `events::rollup` in the application).
const HIST_BUCKETS: usize = 24;

const COUNTERS: [&str; 14] = [
    "requests",
    "successes",
    "status_2xx",
    "status_4xx",
    "status_5xx",
    "status_other",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_micros",
    "latency_sum_ms",
    "ttft_sum_ms",
    "ttft_count",
];

#[derive(DeriveIden)]
enum RequestRollups {
    Table,
    BucketStart,
    Service,
    UpstreamKeyId,
    AccessKeyId,
    Model,
}

fn counter(name: String) -> ColumnDef {
    ColumnDef::new(Alias::new(name))
        .big_integer()
        .not_null()
        .default(0)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let mut t = Table::create();
        t.table(RequestRollups::Table)
            .if_not_exists()
            .col(
                ColumnDef::new(RequestRollups::BucketStart)
                    .big_integer()
                    .not_null(),
            )
            .col(ColumnDef::new(RequestRollups::Service).string().not_null())
            .col(
                ColumnDef::new(RequestRollups::UpstreamKeyId)
                    .big_integer()
                    .not_null(),
            )
            .col(
                ColumnDef::new(RequestRollups::AccessKeyId)
                    .big_integer()
                    .not_null(),
            )
            .col(ColumnDef::new(RequestRollups::Model).string().not_null())
            .primary_key(
                Index::create()
                    .col(RequestRollups::BucketStart)
                    .col(RequestRollups::Service)
                    .col(RequestRollups::UpstreamKeyId)
                    .col(RequestRollups::AccessKeyId)
                    .col(RequestRollups::Model),
            );
        for c in COUNTERS {
            t.col(counter(c.to_string()));
        }
        for kind in ["lat", "ttft"] {
            for i in 0..HIST_BUCKETS {
                t.col(counter(format!("{kind}_b{i:02}")));
            }
        }
        m.create_table(t).await?;
        // Stats of one service over a time range: the primary key leads with time, which serves
        // "all services"; a tenant user's query names its services.
        m.create_index(
            Index::create()
                .name("idx_request_rollups_service_bucket")
                .table(RequestRollups::Table)
                .col(RequestRollups::Service)
                .col(RequestRollups::BucketStart)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(RequestRollups::Table).to_owned())
            .await
    }
}
