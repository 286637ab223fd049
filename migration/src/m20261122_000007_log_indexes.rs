//! Request logs (#10): indexes serving the log filters, each ending in the time column so a
//! filtered page is an index range scan in (ts desc) order. Plain `IF NOT EXISTS` indexes that
//! run on SQLite and Postgres alike.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum RequestLogs {
    Table,
    Id,
    Ts,
    Service,
    AccessKeyId,
    UpstreamKeyId,
    Model,
    Status,
}

/// (name, leading filter column); every index continues with `ts`.
const BY_FILTER: [(&str, RequestLogs); 5] = [
    ("ix_request_logs_service_ts", RequestLogs::Service),
    ("ix_request_logs_access_key_ts", RequestLogs::AccessKeyId),
    (
        "ix_request_logs_upstream_key_ts",
        RequestLogs::UpstreamKeyId,
    ),
    ("ix_request_logs_model_ts", RequestLogs::Model),
    ("ix_request_logs_status_ts", RequestLogs::Status),
];

const TS_ID: &str = "ix_request_logs_ts_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // The page order, newest first with the id as tie-break: the unfiltered list and the
        // cursor condition walk it.
        m.create_index(
            Index::create()
                .if_not_exists()
                .name(TS_ID)
                .table(RequestLogs::Table)
                .col((RequestLogs::Ts, IndexOrder::Desc))
                .col((RequestLogs::Id, IndexOrder::Desc))
                .to_owned(),
        )
        .await?;
        for (name, col) in BY_FILTER {
            m.create_index(
                Index::create()
                    .if_not_exists()
                    .name(name)
                    .table(RequestLogs::Table)
                    .col(col)
                    .col(RequestLogs::Ts)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for name in std::iter::once(TS_ID).chain(BY_FILTER.iter().map(|(n, _)| *n)) {
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
}
