//! Money (#9): pricing rules per service with cache-token prices; balance sync settings per
//! service; per key the last remote balance sync and running request statistics (flushed from
//! the coordination store).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum PricingRules {
    Table,
    Slug,
    CacheReadPerMtokMicros,
    CacheWritePerMtokMicros,
}

#[derive(DeriveIden, Clone, Copy)]
enum Services {
    Table,
    BalanceSync,
}

#[derive(DeriveIden, Clone, Copy)]
enum UpstreamKeys {
    Table,
    BalanceSyncedAt,
    SyncError,
    RequestsTotal,
    SuccessesTotal,
    #[sea_orm(iden = "failures_4xx")]
    Failures4xx,
    #[sea_orm(iden = "failures_5xx")]
    Failures5xx,
    FailuresNetwork,
    TokensTotal,
    CostTotalMicros,
}

async fn add(
    m: &SchemaManager<'_>,
    table: impl IntoIden + Clone,
    cols: Vec<ColumnDef>,
) -> Result<(), DbErr> {
    // SQLite alters one column per statement.
    for mut col in cols {
        m.alter_table(
            Table::alter()
                .table(table.clone())
                .add_column(&mut col)
                .to_owned(),
        )
        .await?;
    }
    Ok(())
}

async fn drop(
    m: &SchemaManager<'_>,
    table: impl IntoIden + Clone,
    cols: Vec<DynIden>,
) -> Result<(), DbErr> {
    for col in cols {
        m.alter_table(
            Table::alter()
                .table(table.clone())
                .drop_column(col)
                .to_owned(),
        )
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        add(
            m,
            PricingRules::Table,
            vec![
                string_null(PricingRules::Slug).take(),
                big_integer_null(PricingRules::CacheReadPerMtokMicros).take(),
                big_integer_null(PricingRules::CacheWritePerMtokMicros).take(),
            ],
        )
        .await?;
        add(
            m,
            Services::Table,
            vec![json_null(Services::BalanceSync).take()],
        )
        .await?;
        add(
            m,
            UpstreamKeys::Table,
            vec![
                timestamp_with_time_zone_null(UpstreamKeys::BalanceSyncedAt).take(),
                text_null(UpstreamKeys::SyncError).take(),
                big_integer(UpstreamKeys::RequestsTotal).default(0).take(),
                big_integer(UpstreamKeys::SuccessesTotal).default(0).take(),
                big_integer(UpstreamKeys::Failures4xx).default(0).take(),
                big_integer(UpstreamKeys::Failures5xx).default(0).take(),
                big_integer(UpstreamKeys::FailuresNetwork).default(0).take(),
                big_integer(UpstreamKeys::TokensTotal).default(0).take(),
                big_integer(UpstreamKeys::CostTotalMicros).default(0).take(),
            ],
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        drop(
            m,
            PricingRules::Table,
            vec![
                PricingRules::Slug.into_iden(),
                PricingRules::CacheReadPerMtokMicros.into_iden(),
                PricingRules::CacheWritePerMtokMicros.into_iden(),
            ],
        )
        .await?;
        drop(m, Services::Table, vec![Services::BalanceSync.into_iden()]).await?;
        drop(
            m,
            UpstreamKeys::Table,
            [
                UpstreamKeys::BalanceSyncedAt,
                UpstreamKeys::SyncError,
                UpstreamKeys::RequestsTotal,
                UpstreamKeys::SuccessesTotal,
                UpstreamKeys::Failures4xx,
                UpstreamKeys::Failures5xx,
                UpstreamKeys::FailuresNetwork,
                UpstreamKeys::TokensTotal,
                UpstreamKeys::CostTotalMicros,
            ]
            .into_iter()
            .map(IntoIden::into_iden)
            .collect(),
        )
        .await
    }
}
