//! Background jobs of the control plane. Each replica runs them; work that one replica at a time
//! should do takes a lock in the coordination store (`Coord::try_lock`) first.
//!
//! - `validate`: tests upstream keys with a cheap request (on demand from the admin API, and on a
//!   schedule per service) and brings back keys out of rotation that answer again.
//! - `persist`: flushes live balances, spend and per-key statistics to the database.
//! - `sync`: reads keys' balances from the upstream's billing API (`billing::sync`), on demand
//!   and on a schedule per service; a key below the service's minimum goes out, one topped up
//!   comes back.
//!
//! What they share lives here: the keys with the status an operator sees, the client a key's
//! traffic goes through, putting a key back in rotation, and the per-service schedule.
pub mod gauges;
pub mod persist;
pub mod sync;
pub mod validate;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use sea_orm::DbErr;
use tokio::task::JoinSet;

use crate::coord::{Fault, Lock, now_ms};
use crate::db::{
    self,
    entity::{service, upstream_key},
};
use crate::domain::KeyStatus;
use crate::snapshot::ServiceRt;
use crate::state::AppState;
use crate::telemetry::metrics as m;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Coord(#[from] crate::coord::CoordError),
    #[error("service '{0}' is not in this replica's configuration yet")]
    NotLoaded(String),
    #[error("configuration reload failed: {0}")]
    Reload(anyhow::Error),
}

/// A key with the status an operator sees for it now.
pub struct Candidate {
    pub key: upstream_key::Model,
    pub status: KeyStatus,
}

/// Pairs keys with their current status (durable from the database, live from the store).
pub async fn with_status(
    state: &AppState,
    rows: Vec<upstream_key::Model>,
) -> Result<Vec<Candidate>, Error> {
    let ids: Vec<crate::coord::KeyRef> = rows
        .iter()
        .map(|k| crate::coord::KeyRef::new(k.service_id, k.id))
        .collect();
    let live = state.coord.live_states(&ids).await?;
    let now = now_ms();
    Ok(rows
        .into_iter()
        .zip(live)
        .map(|(key, l)| Candidate {
            status: l.key_status(&key.status, now),
            key,
        })
        .collect())
}

/// The service's keys whose status is one of `only` (every key when `only` is empty).
pub async fn keys_in(
    state: &AppState,
    service_id: i64,
    only: &[KeyStatus],
) -> Result<Vec<Candidate>, Error> {
    let rows = db::keys::of_service(&state.db, service_id).await?;
    let mut keys = with_status(state, rows).await?;
    if !only.is_empty() {
        keys.retain(|c| only.contains(&c.status));
    }
    Ok(keys)
}

/// The data plane's view of the service: the URL, auth rule, egress and timeout traffic uses.
pub fn runtime(state: &AppState, svc: &service::Model) -> Result<std::sync::Arc<ServiceRt>, Error> {
    state
        .snapshot
        .load()
        .services
        .get(&svc.slug)
        .cloned()
        .ok_or_else(|| Error::NotLoaded(svc.slug.clone()))
}

/// The client the key's traffic goes through. A key out of rotation is not in the snapshot, so
/// its own proxy is built here (without the service's private CA, which the snapshot keeps only
/// inside the service's client).
pub fn egress_client(
    state: &AppState,
    rt: &ServiceRt,
    key: &upstream_key::Model,
) -> Result<reqwest::Client, String> {
    if let Some(i) = rt.keys.iter().position(|k| k.id == key.id) {
        return Ok(rt.client_for(i, &state.http).clone());
    }
    match key.egress_proxy.as_deref() {
        Some(stored) => {
            let url = crate::egress::open_proxy(&state.cipher, stored)
                .map_err(|_| "the key's egress proxy cannot be decrypted".to_string())?;
            crate::egress::client(&state.egress, Some(&url), None)
        }
        None => Ok(rt.http.clone().unwrap_or_else(|| state.http.clone())),
    }
}

/// Puts a key back in rotation, as an operator's re-enable does. The durable status goes into
/// `am`, which the caller writes between `begin` and `finish`: `begin` drops any fault still
/// queued for the key first, so the sink cannot undo the write; `finish` clears its live health.
pub struct BackInRotation<'a> {
    state: &'a AppState,
    key_id: i64,
}

impl<'a> BackInRotation<'a> {
    pub fn begin(state: &'a AppState, key_id: i64, am: &mut upstream_key::ActiveModel) -> Self {
        db::keys::reactivate(am);
        state.events.key_reset(key_id);
        Self { state, key_id }
    }

    /// After the row is written. `why` ends the log line ("it answered a validation").
    pub async fn finish(
        self,
        rt: &ServiceRt,
        masked: &str,
        from: KeyStatus,
        why: &str,
    ) -> Result<(), Error> {
        self.state
            .coord
            .report(rt.id, self.key_id, None, Fault::Clear, 0)
            .await?;
        metrics::counter!(m::KEY_TRANSITIONS_TOTAL, "slug" => rt.slug.clone(), "to" => "active")
            .increment(1);
        tracing::info!(key = %masked, key_id = self.key_id, slug = %rt.slug, from = %from, "upstream key back in rotation: {why}");
        Ok(())
    }
}

/// Runs `run` for each service `due` names, every `tick`, until shutdown; then gives back the
/// locks of runs in progress.
///
/// `due` lists the services with their lock time. A run first takes the lock `<job>:<service
/// id>` in the coordination store for that long and keeps it when done, so the lock means both
/// "one replica at a time" and "once per interval". A replica that shuts down mid-run gives its
/// lock back, so another replica can redo the run at once. `run` gets the lock time and must
/// end within it.
pub async fn every_service<D, DF, R, RF>(
    state: AppState,
    job: &'static str,
    tick: Duration,
    due: D,
    run: R,
) where
    D: Fn(AppState) -> DF,
    DF: Future<Output = Result<Vec<(service::Model, Duration)>, DbErr>>,
    R: Fn(AppState, service::Model, Duration) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    let mut tick = tokio::time::interval(tick.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = state.events.on_shutdown();
    let mut runs = JoinSet::new();
    let mut held: HashMap<tokio::task::Id, Lock> = HashMap::new();
    loop {
        tokio::select! {
            done = &mut shutdown => {
                runs.shutdown().await;
                for lock in held.values() {
                    let _ = state.coord.unlock(lock).await;
                }
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            Some(ended) = runs.join_next_with_id(), if !runs.is_empty() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                // The lock stays in the store until its interval ends.
                held.remove(&id);
            }
            _ = tick.tick() => {
                let services = match due(state.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, job, "scheduled job: cannot list services");
                        continue;
                    }
                };
                for (svc, window) in services {
                    let name = format!("{job}:{}", svc.id);
                    match state.coord.try_lock(&name, window.as_millis() as u64).await {
                        Ok(Some(lock)) => {
                            let handle = runs.spawn(run(state.clone(), svc, window));
                            held.insert(handle.id(), lock);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, job, "scheduled job: coordination store unavailable");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// What one key's job (a test, a sync) produced: its result for the caller, the key's durable
/// status after it, and whether the config snapshot must reload.
pub struct Done<R> {
    pub result: R,
    pub key_id: i64,
    pub stored_after: String,
    pub reload: bool,
}

/// Runs `one` over `keys`, `at_once` at a time, results in the keys' order (a key `one` skips,
/// `Ok(None)`, is left out). Reloads the snapshot once if any key changed, then hands each result
/// the status an operator now sees (`finish`), live state included.
pub async fn over_keys<R, F, Fut>(
    state: &AppState,
    keys: Vec<Candidate>,
    at_once: usize,
    one: F,
    finish: impl Fn(R, KeyStatus) -> R,
) -> Result<Vec<R>, Error>
where
    F: Fn(Candidate) -> Fut,
    Fut: Future<Output = Result<Option<Done<R>>, Error>>,
{
    use futures::StreamExt;
    let service_of: std::collections::HashMap<i64, i64> =
        keys.iter().map(|c| (c.key.id, c.key.service_id)).collect();
    let done: Vec<Result<Option<Done<R>>, Error>> = futures::stream::iter(keys)
        .map(one)
        .buffered(at_once.max(1))
        .collect()
        .await;
    let done: Vec<Done<R>> = done
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    // A key whose durable status or balance changed is not in the snapshot as it is now.
    if done.iter().any(|d| d.reload) {
        state.config_changed().await.map_err(Error::Reload)?;
    }
    let ids: Vec<crate::coord::KeyRef> = done
        .iter()
        .map(|d| {
            crate::coord::KeyRef::new(service_of.get(&d.key_id).copied().unwrap_or(0), d.key_id)
        })
        .collect();
    let live = state.coord.live_states(&ids).await?;
    let now = now_ms();
    Ok(done
        .into_iter()
        .zip(live)
        .map(|(d, l)| finish(d.result, l.key_status(&d.stored_after, now)))
        .collect())
}

/// How long one key's call may take: the service's request timeout, cut to what is left before a
/// scheduled run's `deadline`; None once nothing is left (the key is not started).
pub fn time_left(
    request_timeout: Duration,
    deadline: Option<std::time::Instant>,
) -> Option<Duration> {
    match deadline {
        None => Some(request_timeout),
        Some(d) => {
            let left = d.saturating_duration_since(std::time::Instant::now());
            (!left.is_zero()).then(|| request_timeout.min(left))
        }
    }
}
