//! Re-encryption and re-fingerprinting of stored secrets, in batches that each commit: a run that
//! stops half-way (a crash, a deploy) is resumed by running it again, which skips what is already
//! current.
//!
//! - `fingerprints` runs at every start: fingerprints written before they were keyed (or under a
//!   previous encryption key) are recomputed, so duplicate detection stays exact.
//! - `rotate` (`keygate admin rotate-encryption-key`) also re-encrypts every secret sealed with a
//!   previous key: upstream keys and the keys' and services' egress proxies.
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::entity::{service, upstream_key};
use crate::crypto::Cipher;

const BATCH: u64 = 500;

/// What a pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rekeyed {
    pub secrets: u64,
    pub proxies: u64,
    pub fingerprints: u64,
    /// Rows whose secret no configured key opens (left as they are).
    pub undecryptable: u64,
}

/// Recomputes fingerprints that are not of the current scheme and key.
pub async fn fingerprints(db: &DatabaseConnection, cipher: &Cipher) -> Result<Rekeyed, DbErr> {
    pass(db, cipher, false).await
}

/// Re-encrypts everything a previous key sealed, and recomputes fingerprints.
pub async fn rotate(db: &DatabaseConnection, cipher: &Cipher) -> Result<Rekeyed, DbErr> {
    let mut out = pass(db, cipher, true).await?;
    let mut after = 0i64;
    loop {
        let rows = service::Entity::find()
            .filter(service::Column::Id.gt(after))
            .filter(service::Column::EgressProxy.is_not_null())
            .order_by_asc(service::Column::Id)
            .limit(BATCH)
            .all(db)
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let txn = db.begin().await?;
        for s in rows {
            let Some(sealed) = s.egress_proxy.clone() else {
                continue;
            };
            if cipher.is_current(&sealed) {
                continue;
            }
            match cipher.decrypt(&sealed) {
                Ok(plain) => {
                    let mut am: service::ActiveModel = s.into();
                    am.egress_proxy = Set(Some(cipher.encrypt(&plain)));
                    am.update(&txn).await?;
                    out.proxies += 1;
                }
                Err(_) => out.undecryptable += 1,
            }
        }
        txn.commit().await?;
    }
    Ok(out)
}

async fn pass(db: &DatabaseConnection, cipher: &Cipher, reseal: bool) -> Result<Rekeyed, DbErr> {
    let mut out = Rekeyed::default();
    let mut after = 0i64;
    loop {
        let rows = upstream_key::Entity::find()
            .filter(upstream_key::Column::Id.gt(after))
            .order_by_asc(upstream_key::Column::Id)
            .limit(BATCH)
            .all(db)
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let txn = db.begin().await?;
        for k in rows {
            let Ok(plain) = cipher.decrypt(&k.secret) else {
                out.undecryptable += 1;
                continue;
            };
            let fingerprint_stale = !cipher.is_current_fingerprint(&k.fingerprint, &plain);
            let secret_stale = reseal && !cipher.is_current(&k.secret);
            let proxy = match &k.egress_proxy {
                Some(p) if reseal && !cipher.is_current(p) => cipher.decrypt(p).ok(),
                _ => None,
            };
            if !fingerprint_stale && !secret_stale && proxy.is_none() {
                continue;
            }
            let mut am: upstream_key::ActiveModel = k.into();
            if fingerprint_stale {
                am.fingerprint = Set(cipher.fingerprint(&plain));
                out.fingerprints += 1;
            }
            if secret_stale {
                am.secret = Set(cipher.encrypt(&plain));
                out.secrets += 1;
            }
            if let Some(p) = proxy {
                am.egress_proxy = Set(Some(cipher.encrypt(&p)));
                out.proxies += 1;
            }
            am.update(&txn).await?;
        }
        txn.commit().await?;
    }
    Ok(out)
}
