use sea_orm::entity::prelude::*;

#[derive(Clone, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "access_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    pub prefix: String,
    /// Hex SHA-256 of the full key; the key itself is never stored.
    #[sea_orm(unique)]
    pub hash: String,
    pub slugs: Json,
    pub rpm: Option<i32>,
    pub tpm: Option<i32>,
    pub rpd: Option<i32>,
    /// Money in integer micro-units (1 unit = 1_000_000); the API shows units.
    pub budget_micros: Option<i64>,
    pub spent_micros: i64,
    pub expires_at: Option<DateTimeUtc>,
    pub enabled: bool,
    pub created_at: DateTimeUtc,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
