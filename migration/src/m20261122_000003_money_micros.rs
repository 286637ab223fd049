//! Money becomes integer micro-units (1 currency unit = 1_000_000) and `request_logs` gains the
//! columns the data plane's request events carry.
//!
//! Every `double` money column is replaced by a BIGINT column named with a `_micros` suffix
//! (`balance` -> `balance_micros`), copied with `ROUND(x * 1000000)`, and the old column dropped.
//! The new name is deliberate: a replica still running the previous release during a rolling
//! deploy fails loudly on a missing column instead of reading 240000 micros as 240000 units, and
//! nobody reading the schema can mistake the unit. The API keeps the short names in currency
//! units. Add, copy, drop (rather than `ALTER COLUMN TYPE`) is the one path SQLite has too (it
//! drops columns since 3.35; the bundled one is newer).
//!
//! The pricing columns also take the names design.md gives them (`input_per_mtok`, ...).
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (table, old double column, new BIGINT micros column, nullable)
const MONEY: [(&str, &str, &str, bool); 9] = [
    ("upstream_keys", "balance", "balance_micros", true),
    ("upstream_keys", "quota_total", "quota_total_micros", true),
    ("upstream_keys", "quota_used", "quota_used_micros", false),
    ("access_keys", "budget", "budget_micros", true),
    ("access_keys", "spent", "spent_micros", false),
    ("request_logs", "cost", "cost_micros", true),
    (
        "pricing_rules",
        "input_per1m",
        "input_per_mtok_micros",
        false,
    ),
    (
        "pricing_rules",
        "output_per1m",
        "output_per_mtok_micros",
        false,
    ),
    ("pricing_rules", "per_request", "per_request_micros", false),
];

#[derive(DeriveIden)]
enum RequestLogs {
    UpstreamModel,
    CacheReadTokens,
    CacheWriteTokens,
    Streamed,
    Cancelled,
    Estimated,
    ClientFormat,
    UpstreamFormat,
    Tried,
}

/// Columns of `request_logs` the request events fill; all nullable or defaulted, so old rows and
/// old writers stay valid.
fn log_columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef::new(RequestLogs::UpstreamModel)
            .string()
            .null()
            .take(),
        ColumnDef::new(RequestLogs::CacheReadTokens)
            .big_integer()
            .null()
            .take(),
        ColumnDef::new(RequestLogs::CacheWriteTokens)
            .big_integer()
            .null()
            .take(),
        ColumnDef::new(RequestLogs::Streamed)
            .boolean()
            .not_null()
            .default(false)
            .take(),
        ColumnDef::new(RequestLogs::Cancelled)
            .boolean()
            .not_null()
            .default(false)
            .take(),
        ColumnDef::new(RequestLogs::Estimated)
            .boolean()
            .not_null()
            .default(false)
            .take(),
        ColumnDef::new(RequestLogs::ClientFormat)
            .string()
            .null()
            .take(),
        ColumnDef::new(RequestLogs::UpstreamFormat)
            .string()
            .null()
            .take(),
        // JSON array of key ids, as text: both backends, no JSON operators needed to read it.
        ColumnDef::new(RequestLogs::Tried).text().null().take(),
    ]
}

const TOKEN_COLUMNS: [&str; 2] = ["prompt_tokens", "completion_tokens"];

async fn add(m: &SchemaManager<'_>, table: &str, mut col: ColumnDef) -> Result<(), DbErr> {
    m.alter_table(
        Table::alter()
            .table(Alias::new(table))
            .add_column(&mut col)
            .to_owned(),
    )
    .await
}

async fn drop(m: &SchemaManager<'_>, table: &str, col: &str) -> Result<(), DbErr> {
    m.alter_table(
        Table::alter()
            .table(Alias::new(table))
            .drop_column(Alias::new(col))
            .to_owned(),
    )
    .await
}

async fn exec(m: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    m.get_connection().execute_unprepared(sql).await.map(|_| ())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let pg = m.get_database_backend() == DatabaseBackend::Postgres;
        for (table, old, new, nullable) in MONEY {
            let mut col = ColumnDef::new(Alias::new(new));
            col.big_integer();
            if nullable {
                col.null();
            } else {
                col.not_null().default(0);
            }
            add(m, table, col).await?;
            // Postgres goes through NUMERIC, whose cast from a double keeps its shortest decimal
            // (0.24, not 0.2399999...), so rounding starts from what was written. SQLite has no
            // decimal type; the double product is within far less than half a micro of the
            // intended value for any amount the API accepted, so ROUND lands on it.
            let copy = if pg {
                format!(
                    r#"UPDATE "{table}" SET "{new}" = ROUND(CAST("{old}" AS NUMERIC) * 1000000)::BIGINT WHERE "{old}" IS NOT NULL"#
                )
            } else {
                format!(
                    r#"UPDATE "{table}" SET "{new}" = CAST(ROUND("{old}" * 1000000) AS INTEGER) WHERE "{old}" IS NOT NULL"#
                )
            };
            exec(m, &copy).await?;
            drop(m, table, old).await?;
        }
        // SQLite's INTEGER is already 64-bit whatever the declared type, so only Postgres widens.
        if pg {
            for c in TOKEN_COLUMNS {
                exec(
                    m,
                    &format!(r#"ALTER TABLE "request_logs" ALTER COLUMN "{c}" TYPE BIGINT"#),
                )
                .await?;
            }
        }
        for col in log_columns() {
            add(m, "request_logs", col).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let pg = m.get_database_backend() == DatabaseBackend::Postgres;
        for col in log_columns() {
            drop(m, "request_logs", &col.get_column_name()).await?;
        }
        if pg {
            // Counts past the 32-bit range are clamped rather than failing the rollback.
            for c in TOKEN_COLUMNS {
                exec(
                    m,
                    &format!(
                        r#"ALTER TABLE "request_logs" ALTER COLUMN "{c}" TYPE INTEGER USING LEAST("{c}", 2147483647)::INTEGER"#
                    ),
                )
                .await?;
            }
        }
        for (table, old, new, nullable) in MONEY.into_iter().rev() {
            let mut col = ColumnDef::new(Alias::new(old));
            col.double();
            if nullable {
                col.null();
            } else {
                col.not_null().default(0.0);
            }
            add(m, table, col).await?;
            let real = if pg { "DOUBLE PRECISION" } else { "REAL" };
            exec(
                m,
                &format!(
                    r#"UPDATE "{table}" SET "{old}" = CAST("{new}" AS {real}) / 1000000.0 WHERE "{new}" IS NOT NULL"#
                ),
            )
            .await?;
            drop(m, table, new).await?;
        }
        Ok(())
    }
}
