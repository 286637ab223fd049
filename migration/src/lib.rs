//! Schema migrations for keygate, one change per dated file; they run on SQLite and Postgres alike.
pub use sea_orm_migration::prelude::*;

mod m20261122_000001_initial;
mod m20261122_000002_key_pool;
mod m20261122_000003_money_micros;
mod m20261122_000004_service_responses;
mod m20261122_000005_routing;
mod m20261122_000006_money;
mod m20261122_000007_log_indexes;
mod m20261122_000008_rollups;
mod m20261122_000009_log_partitions;
mod m20261123_000010_request_stats;
mod m20261123_000011_token_version;
mod m20261123_000012_audit_log;
mod m20261123_000013_tenant_id_sequence;
mod m20261123_000014_log_index_trim;
mod m20261123_000015_log_write_cost;
mod m20261123_000016_log_index_upkeep;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_initial::Migration),
            Box::new(m20261122_000002_key_pool::Migration),
            Box::new(m20261122_000003_money_micros::Migration),
            Box::new(m20261122_000004_service_responses::Migration),
            Box::new(m20261122_000005_routing::Migration),
            Box::new(m20261122_000006_money::Migration),
            Box::new(m20261122_000007_log_indexes::Migration),
            Box::new(m20261122_000008_rollups::Migration),
            Box::new(m20261122_000009_log_partitions::Migration),
            Box::new(m20261123_000010_request_stats::Migration),
            Box::new(m20261123_000011_token_version::Migration),
            Box::new(m20261123_000012_audit_log::Migration),
            Box::new(m20261123_000013_tenant_id_sequence::Migration),
            Box::new(m20261123_000014_log_index_trim::Migration),
            Box::new(m20261123_000015_log_write_cost::Migration),
            Box::new(m20261123_000016_log_index_upkeep::Migration),
        ]
    }
}
