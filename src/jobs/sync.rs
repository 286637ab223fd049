//! Balance sync of upstream keys: each key's balance read from the upstream's billing API
//! (`billing::sync`, with the service's `balance_sync` settings) and acted on.
//!
//! What a sync records, on demand or scheduled alike:
//! - read: the key's stored balance and its live balance in the coordination store become the
//!   upstream's figure (the upstream is the truth; debits since are in it), `sync_error` clears;
//! - the balance is below the service's `min_balance`, or not above zero, and the key is in
//!   rotation (`active`, `cooling`): it goes out as `exhausted`, as a data-plane attempt takes it
//!   out (`proxy::finish::report`), with the balance in the reason;
//! - the key is `exhausted` and the balance is enough again (topped up): it comes back as an
//!   operator's re-enable brings it back;
//! - not read (the billing API refused, timed out, answered something else): `sync_error` says
//!   why and the balance stays as it was. The key's status is left alone: a billing endpoint may
//!   refuse keys the API accepts (OpenRouter's `/credits` wants a management key), so its 401
//!   says nothing about traffic;
//! - `invalid` and `disabled` keys keep their status whatever the balance (the key is refused,
//!   or the operator's call).
//!
//! Every sync stores `balance_synced_at`, the time of the attempt (with `sync_error` null when it
//! read the balance), as a validation stores `validated_at`.
//!
//! The schedule (`balance_sync.interval_s`) syncs the keys in rotation and the exhausted ones;
//! disabled and invalid keys only on demand. Every replica looks for due services every
//! `jobs.sync_tick_ms`; a run takes the lock `sync:<service id>` for the interval ±10% at random
//! (`jobs::every_service`), so runs spread out and one replica syncs a service once per interval.
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use rand::Rng;
use sea_orm::ActiveValue::{Set, Unchanged};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use utoipa::ToSchema;

use super::{BackInRotation, Candidate, Error, egress_client};
use crate::billing::sync::{self as billing, BalanceSync, Reading, SyncError};
use crate::coord::Fault;
use crate::crypto::mask;
use crate::db::{
    self,
    entity::{service, upstream_key},
};
use crate::domain::KeyStatus;
use crate::money::format_units;
use crate::snapshot::ServiceRt;
use crate::state::AppState;
use crate::telemetry::metrics as m;

/// Billing calls in flight at once per service.
const AT_ONCE: usize = 4;

/// The statuses a scheduled sync reads.
pub const SCHEDULED: [KeyStatus; 3] = [KeyStatus::Active, KeyStatus::Cooling, KeyStatus::Exhausted];

/// What syncing one key found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeySync {
    pub key_id: i64,
    /// Masked (`sk-ab...wxyz`).
    pub key: String,
    /// The balance was read.
    pub ok: bool,
    /// The key's balance after the sync, in currency units: the upstream's figure, or the one
    /// kept when it could not be read.
    #[serde(with = "crate::money::units_opt")]
    #[schema(value_type = Option<f64>)]
    pub balance: Option<i64>,
    /// The currency the upstream named (null when it does not say).
    pub currency: Option<String>,
    pub balance_synced_at: chrono::DateTime<chrono::Utc>,
    /// Why the balance could not be read (never the key); null when it was.
    pub sync_error: Option<String>,
    pub key_status_before: KeyStatus,
    /// `exhausted` when the balance is below the service's minimum, `active` when an exhausted
    /// key was topped up.
    pub key_status_after: KeyStatus,
}

/// The service's settings, or None when it has none (or a row edited by hand holds bad ones).
pub fn settings_of(svc: &service::Model) -> Option<BalanceSync> {
    let v = svc.balance_sync.as_ref()?;
    match BalanceSync::from_db(v) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(slug = %svc.slug, error = %e, "service has unreadable balance_sync settings");
            None
        }
    }
}

/// Syncs `keys` of `svc`, `AT_ONCE` at a time, results in the keys' order. With a `deadline`
/// (scheduled runs) no sync starts or lasts past it, and keys it leaves out are missing from the
/// result.
pub async fn sync_keys(
    state: &AppState,
    svc: &service::Model,
    settings: &BalanceSync,
    keys: Vec<Candidate>,
    deadline: Option<Instant>,
) -> Result<Vec<KeySync>, Error> {
    let rt = super::runtime(state, svc)?;
    super::over_keys(
        state,
        keys,
        AT_ONCE,
        |c| sync_one(state, &rt, settings, c, deadline),
        |s, after| KeySync {
            key_status_after: after,
            ..s
        },
    )
    .await
}

async fn sync_one(
    state: &AppState,
    rt: &ServiceRt,
    settings: &BalanceSync,
    c: Candidate,
    deadline: Option<Instant>,
) -> Result<Option<super::Done<KeySync>>, Error> {
    let Some(timeout) = super::time_left(rt.request_timeout, deadline) else {
        return Ok(None);
    };
    let Candidate {
        key,
        status: before,
    } = c;
    let (masked, read) = match state.cipher.decrypt(&key.secret).map(SecretString::from) {
        Ok(secret) => (
            mask(secret.expose_secret()),
            read(state, rt, settings, &key, secret.expose_secret(), timeout).await,
        ),
        Err(_) => (
            "(undecryptable)".to_string(),
            Err(SyncError::Egress(
                "the stored key cannot be decrypted".into(),
            )),
        ),
    };
    let outcome = read.as_ref().map_or_else(SyncError::kind, |_| "ok");
    metrics::counter!(m::KEY_BALANCE_SYNCS_TOTAL, "slug" => rt.slug.clone(), "outcome" => outcome)
        .increment(1);
    if let Err(e) = &read {
        tracing::info!(key = %masked, key_id = key.id, slug = %rt.slug, error = %e, "balance sync failed");
    }
    record(state, rt, settings, key, before, read, masked)
        .await
        .map(Some)
}

/// One key's billing call, through the key's egress with the service's auth rule and headers.
async fn read(
    state: &AppState,
    rt: &ServiceRt,
    settings: &BalanceSync,
    key: &upstream_key::Model,
    secret: &str,
    timeout: Duration,
) -> Result<Reading, SyncError> {
    let mut auth = HeaderMap::new();
    if !rt.set_auth(&mut auth, secret) {
        return Err(SyncError::Header);
    }
    let client = egress_client(state, rt, key).map_err(SyncError::Egress)?;
    let call = billing::Call {
        client: &client,
        guard: &state.egress,
        base_url: &rt.base_url,
        headers: crate::proxy::headers::with_service(auth, &rt.upstream_headers),
        timeout,
        secret,
    };
    billing::read(settings, &call).await
}

/// Acts on what a sync found (see the module notes).
async fn record(
    state: &AppState,
    rt: &ServiceRt,
    settings: &BalanceSync,
    key: upstream_key::Model,
    before: KeyStatus,
    read: Result<Reading, SyncError>,
    masked: String,
) -> Result<super::Done<KeySync>, Error> {
    let mut am = upstream_key::ActiveModel {
        id: Unchanged(key.id),
        ..Default::default()
    };
    let mut stored_after = key.status.clone();
    let mut changed = false;
    let mut back = None;
    let (balance, currency, sync_error) = match read {
        Err(e) => (key.balance_micros, None, Some(e.to_string())),
        Ok(Reading {
            balance_micros: balance,
            currency,
        }) => {
            am.balance_micros = Set(Some(balance));
            changed = key.balance_micros != Some(balance);
            let too_low = settings.too_low(balance);
            if !too_low && before == KeyStatus::Exhausted {
                back = Some(BackInRotation::begin(state, key.id, &mut am));
                stored_after = KeyStatus::Active.as_str().into();
                changed = true;
            }
            if too_low && matches!(before, KeyStatus::Active | KeyStatus::Cooling) {
                let reason = too_low_reason(balance, settings.min_balance);
                crate::proxy::finish::report(
                    state,
                    rt,
                    key.id,
                    None,
                    Fault::Exhausted,
                    &reason,
                    None,
                    None,
                )
                .await;
                // Stored with the sync too, so the reload below leaves the key out at once.
                am.status = Set(KeyStatus::Exhausted.as_str().into());
                am.last_error = Set(Some(reason));
                stored_after = KeyStatus::Exhausted.as_str().into();
                changed = true;
            }
            (Some(balance), currency, None)
        }
    };
    let at = db::keys::set_sync(&state.db, am, sync_error.clone()).await?;
    // Back in rotation first: that clears the key's live state, balance included.
    if let Some(back) = back {
        back.finish(rt, &masked, before, "a balance sync found it topped up")
            .await?;
    }
    if sync_error.is_none()
        && let Some(b) = balance
    {
        state
            .coord
            .set_balance(crate::coord::KeyRef::new(key.service_id, key.id), Some(b))
            .await?;
    }
    Ok(super::Done {
        key_id: key.id,
        result: KeySync {
            key_id: key.id,
            key: masked,
            ok: sync_error.is_none(),
            balance,
            currency,
            balance_synced_at: at,
            sync_error,
            key_status_before: before,
            key_status_after: before,
        },
        stored_after,
        // The snapshot carries balances and leaves out keys out of rotation.
        reload: changed,
    })
}

/// The reason a key goes out on its synced balance (the key's `last_error`).
fn too_low_reason(balance: i64, min: i64) -> String {
    if balance < min {
        format!(
            "balance {} is below the service's minimum {} (balance sync)",
            format_units(balance),
            format_units(min)
        )
    } else {
        format!(
            "balance {} is used up (balance sync)",
            format_units(balance)
        )
    }
}

/// The scheduled sync: every `jobs.sync_tick_ms`, a run for each due service.
pub async fn schedule(state: AppState) {
    let tick = Duration::from_millis(state.config.jobs.sync_tick_ms);
    super::every_service(state, "sync", tick, due, run_once).await
}

/// Enabled services with a sync interval, each locked for its interval ±10%.
async fn due(state: AppState) -> Result<Vec<(service::Model, Duration)>, sea_orm::DbErr> {
    let services = db::services::with_balance_sync(&state.db).await?;
    let mut rng = rand::rng();
    Ok(services
        .into_iter()
        .filter_map(|svc| {
            let secs = settings_of(&svc)?.interval_s.filter(|s| *s > 0)?;
            let window = Duration::from_secs(secs as u64).mul_f64(rng.random_range(0.9..=1.1));
            Some((svc, window))
        })
        .collect())
}

async fn run_once(state: AppState, svc: service::Model, window: Duration) {
    let deadline = Instant::now() + window * 9 / 10;
    let Some(settings) = settings_of(&svc) else {
        return;
    };
    let run = async {
        let keys = super::keys_in(&state, svc.id, &SCHEDULED).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        sync_keys(&state, &svc, &settings, keys, Some(deadline)).await
    };
    match run.await {
        Ok(r) if r.is_empty() => {}
        Ok(r) => {
            let failed = r.iter().filter(|s| !s.ok).count();
            let out = r
                .iter()
                .filter(|s| s.key_status_after == KeyStatus::Exhausted)
                .count();
            tracing::info!(slug = %svc.slug, synced = r.len(), failed, exhausted = out, "scheduled balance sync");
        }
        Err(e) => tracing::warn!(slug = %svc.slug, error = %e, "scheduled balance sync failed"),
    }
}
