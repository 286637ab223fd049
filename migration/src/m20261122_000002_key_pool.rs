//! Key pool settings per service: total deadline, queue wait for a key under its concurrency cap,
//! lease TTL, and which upstream statuses are retried on another key.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Services {
    Table,
    TotalTimeoutMs,
    QueueTimeoutMs,
    LeaseTtlMs,
    RetryOn,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for col in [
            integer(Services::TotalTimeoutMs).default(300_000).take(),
            integer(Services::QueueTimeoutMs).default(5_000).take(),
            integer(Services::LeaseTtlMs).default(60_000).take(),
            string(Services::RetryOn)
                .default("401,402,403,429,5xx")
                .take(),
        ] {
            let mut col = col;
            m.alter_table(
                Table::alter()
                    .table(Services::Table)
                    .add_column(&mut col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Services::TotalTimeoutMs,
            Services::QueueTimeoutMs,
            Services::LeaseTtlMs,
            Services::RetryOn,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Services::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
