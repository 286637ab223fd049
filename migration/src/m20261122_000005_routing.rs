//! Routing settings (#8): router routes, session affinity, egress (proxy, extra headers, private
//! CA), Azure OpenAI options and scheduled key validation per service; per key an egress proxy,
//! a cost factor for the `cost` strategy, and the result of the last validation; per request log
//! row, the router's target slug that served it.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Services {
    Table,
    Routes,
    Affinity,
    AffinityHeader,
    AffinityTtlS,
    EgressProxy,
    UpstreamHeaders,
    TlsCaPem,
    ApiVersion,
    DeploymentPath,
    ValidateIntervalS,
    ValidateConcurrency,
}

#[derive(DeriveIden)]
enum UpstreamKeys {
    Table,
    EgressProxy,
    CostFactor,
    ValidatedAt,
    ValidationError,
}

#[derive(DeriveIden)]
enum RequestLogs {
    Table,
    Target,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for col in [
            json_null(Services::Routes).take(),
            string(Services::Affinity).default("none").take(),
            string_null(Services::AffinityHeader).take(),
            integer(Services::AffinityTtlS).default(3600).take(),
            text_null(Services::EgressProxy).take(),
            json_null(Services::UpstreamHeaders).take(),
            text_null(Services::TlsCaPem).take(),
            string_null(Services::ApiVersion).take(),
            string_null(Services::DeploymentPath).take(),
            integer_null(Services::ValidateIntervalS).take(),
            integer(Services::ValidateConcurrency).default(4).take(),
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
        for col in [
            text_null(UpstreamKeys::EgressProxy).take(),
            double(UpstreamKeys::CostFactor).default(1.0).take(),
            timestamp_with_time_zone_null(UpstreamKeys::ValidatedAt).take(),
            text_null(UpstreamKeys::ValidationError).take(),
        ] {
            let mut col = col;
            m.alter_table(
                Table::alter()
                    .table(UpstreamKeys::Table)
                    .add_column(&mut col)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(RequestLogs::Table)
                .add_column(string_null(RequestLogs::Target))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Services::Routes,
            Services::Affinity,
            Services::AffinityHeader,
            Services::AffinityTtlS,
            Services::EgressProxy,
            Services::UpstreamHeaders,
            Services::TlsCaPem,
            Services::ApiVersion,
            Services::DeploymentPath,
            Services::ValidateIntervalS,
            Services::ValidateConcurrency,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Services::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        for col in [
            UpstreamKeys::EgressProxy,
            UpstreamKeys::CostFactor,
            UpstreamKeys::ValidatedAt,
            UpstreamKeys::ValidationError,
        ] {
            m.alter_table(
                Table::alter()
                    .table(UpstreamKeys::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(RequestLogs::Table)
                .drop_column(RequestLogs::Target)
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}
