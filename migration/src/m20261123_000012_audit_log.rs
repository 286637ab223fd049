//! `audit_log`: one row per admin write (API or CLI), written in the write's own transaction:
//! who (user id and name, or the CLI), when, what (action and target), and the target's view
//! before and after, as the API shows it (secrets masked).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    Ts,
    ActorId,
    Actor,
    Via,
    TenantId,
    Action,
    TargetType,
    TargetId,
    Before,
    After,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(AuditLog::Table)
                .if_not_exists()
                .col(big_pk_auto(AuditLog::Id))
                .col(timestamp_with_time_zone(AuditLog::Ts))
                .col(big_integer_null(AuditLog::ActorId))
                .col(string(AuditLog::Actor))
                .col(string(AuditLog::Via))
                .col(big_integer_null(AuditLog::TenantId))
                .col(string(AuditLog::Action))
                .col(string(AuditLog::TargetType))
                .col(string(AuditLog::TargetId))
                .col(json_null(AuditLog::Before))
                .col(json_null(AuditLog::After))
                .to_owned(),
        )
        .await?;
        // The reads: newest first (by id), optionally one tenant's, one target's or one actor's.
        for (name, cols) in [
            ("idx_audit_tenant", vec![AuditLog::TenantId, AuditLog::Id]),
            (
                "idx_audit_target",
                vec![AuditLog::TargetType, AuditLog::TargetId, AuditLog::Id],
            ),
            ("idx_audit_actor", vec![AuditLog::Actor, AuditLog::Id]),
            ("idx_audit_ts", vec![AuditLog::Ts]),
        ] {
            let mut idx = Index::create();
            idx.name(name).table(AuditLog::Table);
            for c in cols {
                idx.col(c);
            }
            m.create_index(idx.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(AuditLog::Table).to_owned())
            .await
    }
}
