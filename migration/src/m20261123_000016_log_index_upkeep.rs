//! Request logs on Postgres: indexes that cost the log writer less to keep up. Most of the
//! writer's database time is index upkeep (a `perf` profile of a backend inserting batches puts
//! about half of it in `btinsert`), so each index is built the way rows actually arrive.
//!
//! - The unique time index becomes `(ts, id)` in ascending order; it was `(ts DESC, id DESC)`, the
//!   page order. Rows arrive in time order, so every insert landed on the descending index's first
//!   leaf. A btree keeps a cached path only to its last leaf (inserts there skip the descent from
//!   the root) and splits its last leaf unevenly so that ascending inserts fill pages, while a full
//!   first leaf is split in half and left half empty. Measured by inserting 2,000-row batches of
//!   ascending times in `psql` (100,000 rows): the descending index cost about 3 µs a row more than
//!   the ascending one and took 7.1 MB against 4.0 MB. Pages are still read newest first: a btree
//!   is scanned backwards as cheaply as forwards, and `ON CONFLICT (ts, id)` infers the index
//!   whatever its order.
//! - The other indexes are built with `deduplicate_items = off`. Their keys end in `ts`, so two
//!   entries are almost never equal, and deduplication would only cost a fruitless pass over each
//!   full leaf before it splits (`_bt_dedup_pass`, about 5 % of the profile). A partitioned index's
//!   storage options cannot be altered, so each is built anew (new partitions inherit the option).
//!
//! Every index is built under a new name before the old one is dropped, so the table is never
//! without its conflict target or a filter's index.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (name, columns and options before, after) of each index rebuilt.
const INDEXES: &[(&str, &str, &str)] = &[
    (
        "ux_request_logs_ts_id",
        "UNIQUE INDEX {} ON request_logs (ts DESC, id DESC)",
        "UNIQUE INDEX {} ON request_logs (ts, id)",
    ),
    (
        "ix_request_logs_service_ts",
        "INDEX {} ON request_logs (service, ts)",
        "INDEX {} ON request_logs (service, ts) WITH (deduplicate_items = off)",
    ),
    (
        "ix_request_logs_access_key_ts",
        "INDEX {} ON request_logs (access_key_id, ts)",
        "INDEX {} ON request_logs (access_key_id, ts) WITH (deduplicate_items = off)",
    ),
    (
        "ix_request_logs_upstream_key_ts",
        "INDEX {} ON request_logs (upstream_key_id, ts)",
        "INDEX {} ON request_logs (upstream_key_id, ts) WITH (deduplicate_items = off)",
    ),
    (
        "ix_request_logs_status_ts",
        "INDEX {} ON request_logs (status, ts) WHERE status >= 300",
        "INDEX {} ON request_logs (status, ts) WITH (deduplicate_items = off) WHERE status >= 300",
    ),
];

async fn rebuild(m: &SchemaManager<'_>, up: bool) -> Result<(), DbErr> {
    let db = m.get_connection();
    // SQLite keeps its schema (migration 015): its fallback is for small installations.
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for (name, before, after) in INDEXES {
        let def = if up { after } else { before };
        let tmp = format!("{name}_new");
        db.execute_unprepared(&format!("CREATE {}", def.replace("{}", &tmp)))
            .await?;
        db.execute_unprepared(&format!("DROP INDEX IF EXISTS {name}"))
            .await?;
        db.execute_unprepared(&format!("ALTER INDEX {tmp} RENAME TO {name}"))
            .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        rebuild(m, true).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        rebuild(m, false).await
    }
}
