use sea_orm::entity::prelude::*;

/// A price for the models a glob matches, globally or on one slug. Amounts in integer
/// micro-units of the currency (`crate::money`).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "pricing_rules")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub pattern: String,
    /// None: a global rule.
    pub slug: Option<String>,
    pub priority: i32,
    pub input_per_mtok_micros: i64,
    pub output_per_mtok_micros: i64,
    /// None: cache reads / writes are priced as input.
    pub cache_read_per_mtok_micros: Option<i64>,
    pub cache_write_per_mtok_micros: Option<i64>,
    pub per_request_micros: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
