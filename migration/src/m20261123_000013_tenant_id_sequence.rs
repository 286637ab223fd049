//! The first migration inserted the default tenant with an explicit id (1), which on Postgres
//! leaves the `tenants.id` sequence at its start: the first tenant created through the API would
//! be given id 1 again and fail as a duplicate. Moves the sequence past the highest id. SQLite
//! picks the next rowid from the table itself and needs nothing.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DatabaseBackend::Postgres {
            m.get_connection()
                .execute_unprepared(
                    "SELECT setval(pg_get_serial_sequence('tenants', 'id'), \
                     (SELECT COALESCE(MAX(id), 0) + 1 FROM tenants), false)",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        // A sequence past the highest id is right under every schema version.
        Ok(())
    }
}
