//! How an `openai` service serves the Responses API: `auto` (the default: pass through, and
//! translate to chat completions once the upstream answers 404), `passthrough` or `translate`.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Services {
    Table,
    Responses,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Services::Table)
                .add_column(string(Services::Responses).default("auto"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Services::Table)
                .drop_column(Services::Responses)
                .to_owned(),
        )
        .await
    }
}
