//! The audit log: appended in the transaction of the write it records; read newest first.
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr};

use super::entity::audit;

pub async fn insert<C: ConnectionTrait>(db: &C, am: audit::ActiveModel) -> Result<(), DbErr> {
    am.insert(db).await.map(|_| ())
}
