use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub ts: DateTimeUtc,
    /// The user who wrote (None: the offline CLI).
    pub actor_id: Option<i64>,
    pub actor: String,
    /// `api` or `cli`.
    pub via: String,
    /// The tenant the target belongs to (None: global, e.g. a global pricing rule or user).
    pub tenant_id: Option<i64>,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    /// The target as the API showed it (secrets masked); None for a create.
    pub before: Option<Json>,
    /// None for a delete.
    pub after: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
