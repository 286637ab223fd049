//! The first cut of the data model from design.md: tenants, users, services (slugs), upstream keys,
//! access keys, pricing rules and request logs. A default tenant (id 1) is created here.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    TenantId,
    Username,
    PasswordHash,
    Role,
    Disabled,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Services {
    Table,
    Id,
    TenantId,
    Slug,
    Name,
    Kind,
    BaseUrl,
    AuthHeader,
    AuthFormat,
    Strategy,
    ModelAliases,
    ModelAllow,
    ConnectTimeoutMs,
    RequestTimeoutMs,
    MaxAttempts,
    KeyConcurrency,
    Enabled,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum UpstreamKeys {
    Table,
    Id,
    ServiceId,
    Secret,
    Fingerprint,
    Label,
    Weight,
    Status,
    Balance,
    QuotaTotal,
    QuotaUsed,
    Rpm,
    Tpm,
    LastUsedAt,
    LastError,
    ConsecutiveFailures,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AccessKeys {
    Table,
    Id,
    TenantId,
    Name,
    Prefix,
    Hash,
    Slugs,
    Rpm,
    Tpm,
    Rpd,
    Budget,
    Spent,
    ExpiresAt,
    Enabled,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PricingRules {
    Table,
    Id,
    Pattern,
    InputPer1m,
    OutputPer1m,
    PerRequest,
    Priority,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RequestLogs {
    Table,
    Id,
    Ts,
    Service,
    AccessKeyId,
    UpstreamKeyId,
    Model,
    Path,
    Status,
    Attempts,
    LatencyMs,
    TtftMs,
    PromptTokens,
    CompletionTokens,
    Cost,
    ErrorKind,
}

fn now() -> SimpleExpr {
    Expr::current_timestamp().into()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Tenants::Table)
                .if_not_exists()
                .col(big_pk_auto(Tenants::Id))
                .col(string_uniq(Tenants::Name))
                .col(timestamp_with_time_zone(Tenants::CreatedAt).default(now()))
                .to_owned(),
        )
        .await?;
        m.exec_stmt(
            Query::insert()
                .into_table(Tenants::Table)
                .columns([Tenants::Id, Tenants::Name])
                .values_panic([1i64.into(), "default".into()])
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Users::Table)
                .if_not_exists()
                .col(big_pk_auto(Users::Id))
                .col(big_integer_null(Users::TenantId))
                .col(string_uniq(Users::Username))
                .col(string(Users::PasswordHash))
                .col(string(Users::Role))
                .col(boolean(Users::Disabled).default(false))
                .col(timestamp_with_time_zone(Users::CreatedAt).default(now()))
                .foreign_key(
                    ForeignKey::create()
                        .from(Users::Table, Users::TenantId)
                        .to(Tenants::Table, Tenants::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Services::Table)
                .if_not_exists()
                .col(big_pk_auto(Services::Id))
                .col(big_integer(Services::TenantId))
                .col(string_uniq(Services::Slug))
                .col(string(Services::Name))
                .col(string(Services::Kind))
                .col(string(Services::BaseUrl))
                .col(string_null(Services::AuthHeader))
                .col(string_null(Services::AuthFormat))
                .col(string(Services::Strategy))
                .col(json(Services::ModelAliases))
                .col(json(Services::ModelAllow))
                .col(integer(Services::ConnectTimeoutMs))
                .col(integer(Services::RequestTimeoutMs))
                .col(integer(Services::MaxAttempts))
                .col(integer_null(Services::KeyConcurrency))
                .col(boolean(Services::Enabled).default(true))
                .col(timestamp_with_time_zone(Services::CreatedAt).default(now()))
                .col(timestamp_with_time_zone(Services::UpdatedAt).default(now()))
                .foreign_key(
                    ForeignKey::create()
                        .from(Services::Table, Services::TenantId)
                        .to(Tenants::Table, Tenants::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(UpstreamKeys::Table)
                .if_not_exists()
                .col(big_pk_auto(UpstreamKeys::Id))
                .col(big_integer(UpstreamKeys::ServiceId))
                .col(text(UpstreamKeys::Secret))
                .col(string(UpstreamKeys::Fingerprint))
                .col(string_null(UpstreamKeys::Label))
                .col(integer(UpstreamKeys::Weight).default(1))
                .col(string(UpstreamKeys::Status))
                .col(double_null(UpstreamKeys::Balance))
                .col(double_null(UpstreamKeys::QuotaTotal))
                .col(double(UpstreamKeys::QuotaUsed).default(0.0))
                .col(integer_null(UpstreamKeys::Rpm))
                .col(integer_null(UpstreamKeys::Tpm))
                .col(timestamp_with_time_zone_null(UpstreamKeys::LastUsedAt))
                .col(text_null(UpstreamKeys::LastError))
                .col(integer(UpstreamKeys::ConsecutiveFailures).default(0))
                .col(timestamp_with_time_zone(UpstreamKeys::CreatedAt).default(now()))
                .foreign_key(
                    ForeignKey::create()
                        .from(UpstreamKeys::Table, UpstreamKeys::ServiceId)
                        .to(Services::Table, Services::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_upstream_keys_service_fingerprint")
                .table(UpstreamKeys::Table)
                .col(UpstreamKeys::ServiceId)
                .col(UpstreamKeys::Fingerprint)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AccessKeys::Table)
                .if_not_exists()
                .col(big_pk_auto(AccessKeys::Id))
                .col(big_integer(AccessKeys::TenantId))
                .col(string(AccessKeys::Name))
                .col(string(AccessKeys::Prefix))
                .col(string_uniq(AccessKeys::Hash))
                .col(json(AccessKeys::Slugs))
                .col(integer_null(AccessKeys::Rpm))
                .col(integer_null(AccessKeys::Tpm))
                .col(integer_null(AccessKeys::Rpd))
                .col(double_null(AccessKeys::Budget))
                .col(double(AccessKeys::Spent).default(0.0))
                .col(timestamp_with_time_zone_null(AccessKeys::ExpiresAt))
                .col(boolean(AccessKeys::Enabled).default(true))
                .col(timestamp_with_time_zone(AccessKeys::CreatedAt).default(now()))
                .foreign_key(
                    ForeignKey::create()
                        .from(AccessKeys::Table, AccessKeys::TenantId)
                        .to(Tenants::Table, Tenants::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PricingRules::Table)
                .if_not_exists()
                .col(big_pk_auto(PricingRules::Id))
                .col(string(PricingRules::Pattern))
                .col(double(PricingRules::InputPer1m).default(0.0))
                .col(double(PricingRules::OutputPer1m).default(0.0))
                .col(double(PricingRules::PerRequest).default(0.0))
                .col(integer(PricingRules::Priority).default(0))
                .col(timestamp_with_time_zone(PricingRules::CreatedAt).default(now()))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RequestLogs::Table)
                .if_not_exists()
                .col(pk_uuid(RequestLogs::Id))
                .col(timestamp_with_time_zone(RequestLogs::Ts))
                .col(string(RequestLogs::Service))
                .col(big_integer_null(RequestLogs::AccessKeyId))
                .col(big_integer_null(RequestLogs::UpstreamKeyId))
                .col(string_null(RequestLogs::Model))
                .col(string(RequestLogs::Path))
                .col(integer(RequestLogs::Status))
                .col(integer(RequestLogs::Attempts))
                .col(big_integer(RequestLogs::LatencyMs))
                .col(big_integer_null(RequestLogs::TtftMs))
                .col(integer_null(RequestLogs::PromptTokens))
                .col(integer_null(RequestLogs::CompletionTokens))
                .col(double_null(RequestLogs::Cost))
                .col(string_null(RequestLogs::ErrorKind))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_request_logs_ts")
                .table(RequestLogs::Table)
                .col(RequestLogs::Ts)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            RequestLogs::Table.into_iden(),
            PricingRules::Table.into_iden(),
            AccessKeys::Table.into_iden(),
            UpstreamKeys::Table.into_iden(),
            Services::Table.into_iden(),
            Users::Table.into_iden(),
            Tenants::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
