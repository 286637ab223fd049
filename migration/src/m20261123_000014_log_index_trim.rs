//! Request logs: two indexes that no query reads, dropped, since every row written updates each
//! index of the table (the log writer's database cost is mostly index upkeep).
//! - `ix_request_logs_ts` (ts): `ix_request_logs_ts_id` (ts desc, id desc) leads with the same
//!   column and serves every time range and the retention delete, in either direction, and the
//!   page order without a sort.
//! - `ix_request_logs_model_ts` (model, ts): the model filter matches `model` or
//!   `upstream_model` (`db::logs::LogFilter`), which an index on `model` alone cannot serve; the
//!   planner walks the time index instead (checked with EXPLAIN on 200 000 rows).
//!
//! On a partitioned table dropping the parent's index drops its partitions' too.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum RequestLogs {
    Table,
    Ts,
    Model,
}

const TS: &str = "ix_request_logs_ts";
const MODEL_TS: &str = "ix_request_logs_model_ts";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for name in [TS, MODEL_TS] {
            m.drop_index(
                Index::drop()
                    .if_exists()
                    .name(name)
                    .table(RequestLogs::Table)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .if_not_exists()
                .name(TS)
                .table(RequestLogs::Table)
                .col(RequestLogs::Ts)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name(MODEL_TS)
                .table(RequestLogs::Table)
                .col(RequestLogs::Model)
                .col(RequestLogs::Ts)
                .to_owned(),
        )
        .await
    }
}
