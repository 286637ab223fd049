//! On Postgres, `request_logs` becomes a table partitioned by day on `ts`, so that retention drops
//! whole partitions (no vacuum debt from mass deletes) and reads of a time range skip the days
//! outside it. SQLite keeps the plain table and deletes by time: this migration does nothing there.
//!
//! Partitions are named `request_logs_pYYYYMMDD` and cover one UTC day; `request_logs_default`
//! catches a row whose day has no partition yet, so an insert never fails. The gateway creates
//! the days ahead and drops the old ones (`keygate::db::logs`). A partitioned table's unique keys
//! must contain the partition key, hence the primary key `(id, ts)`.
//!
//! The table is rebuilt beside the old one under a temporary name and swapped in, with the old
//! table's indexes recreated from their definitions, so indexes added by earlier migrations
//! carry over without being listed here (on the parent they cascade to every partition).
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Days ahead of today that get a partition at once (the gateway keeps the same horizon).
const AHEAD_DAYS: i32 = 7;

async fn exec(m: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    m.get_connection().execute_unprepared(sql).await.map(|_| ())
}

async fn strings(m: &SchemaManager<'_>, sql: &str, col: &str) -> Result<Vec<String>, DbErr> {
    let rows = m
        .get_connection()
        .query_all_raw(Statement::from_string(DatabaseBackend::Postgres, sql))
        .await?;
    rows.iter().map(|r| r.try_get::<String>("", col)).collect()
}

/// `CREATE INDEX` statements for the indexes of `request_logs` other than its primary key.
async fn secondary_indexes(m: &SchemaManager<'_>) -> Result<Vec<String>, DbErr> {
    let defs = strings(
        m,
        "SELECT pg_get_indexdef(indexrelid) AS def FROM pg_index \
         WHERE indrelid = 'request_logs'::regclass AND NOT indisprimary",
        "def",
    )
    .await?;
    // A partitioned parent's index reads `ON ONLY t`; the plain table's must cover the table.
    Ok(defs
        .into_iter()
        .map(|d| d.replace(" ON ONLY ", " ON "))
        .collect())
}

/// Builds `request_logs_new` with `create` (which names the new table), copies every row into it,
/// and swaps it in for `request_logs` with the same secondary indexes.
async fn rebuild(
    m: &SchemaManager<'_>,
    create: &str,
    after_create: &[String],
) -> Result<(), DbErr> {
    let indexes = secondary_indexes(m).await?;
    exec(m, create).await?;
    for sql in after_create {
        exec(m, sql).await?;
    }
    exec(
        m,
        "INSERT INTO request_logs_new SELECT * FROM request_logs ON CONFLICT DO NOTHING",
    )
    .await?;
    exec(m, "DROP TABLE request_logs").await?;
    exec(m, "ALTER TABLE request_logs_new RENAME TO request_logs").await?;
    exec(
        m,
        "ALTER TABLE request_logs RENAME CONSTRAINT request_logs_new_pkey TO request_logs_pkey",
    )
    .await?;
    for sql in indexes {
        exec(m, &sql).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        // Every day that holds a row, plus today and the days ahead, as (name suffix, from, to).
        let days = strings(
            m,
            &format!(
                "SELECT to_char(d, 'YYYYMMDD') || ' ' || to_char(d, 'YYYY-MM-DD') || ' ' \
                 || to_char(d + 1, 'YYYY-MM-DD') AS day FROM ( \
                   SELECT (ts AT TIME ZONE 'UTC')::date AS d FROM request_logs \
                   UNION SELECT (now() AT TIME ZONE 'UTC')::date + g \
                   FROM generate_series(0, {AHEAD_DAYS}) g) s ORDER BY 1"
            ),
            "day",
        )
        .await?;
        let mut partitions: Vec<String> = days
            .iter()
            .filter_map(|d| {
                let mut it = d.split(' ');
                let (name, from, to) = (it.next()?, it.next()?, it.next()?);
                Some(format!(
                    "CREATE TABLE request_logs_p{name} PARTITION OF request_logs_new \
                     FOR VALUES FROM ('{from} 00:00:00+00') TO ('{to} 00:00:00+00')"
                ))
            })
            .collect();
        partitions
            .push("CREATE TABLE request_logs_default PARTITION OF request_logs_new DEFAULT".into());
        rebuild(
            m,
            "CREATE TABLE request_logs_new (LIKE request_logs INCLUDING DEFAULTS INCLUDING \
             CONSTRAINTS, PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)",
            &partitions,
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        // Dropping the parent drops its partitions. Ids are unique in practice (uuid v7); were one
        // id logged at two instants, the rollback keeps one row rather than failing.
        rebuild(
            m,
            "CREATE TABLE request_logs_new (LIKE request_logs INCLUDING DEFAULTS INCLUDING \
             CONSTRAINTS, PRIMARY KEY (id))",
            &[],
        )
        .await
    }
}
