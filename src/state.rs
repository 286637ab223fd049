//! The one shared state, cheap to clone; handlers of both planes extract it directly.
use std::collections::HashSet;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use jsonwebtoken::{DecodingKey, EncodingKey};
use sea_orm::DatabaseConnection;

use crate::admin::login_guard::LoginGuard;
use crate::config::Config;
use crate::coord::Coord;
use crate::crypto::Cipher;
use crate::events::Events;
use crate::snapshot::Snapshot;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: DatabaseConnection,
    pub coord: Coord,
    pub snapshot: ArcSwap<Snapshot>,
    pub cipher: Cipher,
    pub jwt_encoding: EncodingKey,
    pub jwt_decoding: DecodingKey,
    pub http: reqwest::Client,
    /// The SSRF guard (`egress.allow`): every upstream client resolves through it, and URLs with
    /// a literal address are checked with it before sending.
    pub egress: Arc<crate::egress::Guard>,
    /// Hex SHA-256 of each `GLOBAL_PROXY_KEYS` entry.
    pub global_keys: HashSet<String>,
    /// Request and key events, consumed by the sinks in `events` (never the database directly).
    pub events: Events,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// This deployment's id in the `x-keygate-hop` loop marker (shared by its replicas).
    pub hop_id: axum::http::HeaderValue,
    /// Services whose upstream turned out to lack the Responses API.
    pub responses_fallback: crate::proxy::translate::ResponsesFallback,
    /// Upstream model lists, cached briefly for `/v1/models`.
    pub catalog: crate::proxy::listing::Catalog,
    /// Leases held by in-flight requests, renewed by one task.
    pub leases: crate::proxy::leases::Renewer,
    /// Woken whenever this replica releases a lease, so requests queued at a cap retry at once.
    pub lease_released: tokio::sync::Notify,
    /// Serialises snapshot reloads so an older load never replaces a newer one.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Bounds admin password hashing and backs off failed logins.
    pub login_guard: LoginGuard,
    /// Set when shutdown begins: `/readyz` answers 503 so load balancers stop sending traffic.
    pub draining: AtomicBool,
    /// Whether the database answers (one probe per replica).
    pub db_health: Arc<crate::db::health::DbHealth>,
    /// With in-process coordination, the newest audit-log id the snapshot reflects: another
    /// process's write (the CLI's) shows as a newer id, which `app::refresh_loop` reloads for.
    /// This process's own writes set it before their reload, so they do not cause a second one.
    pub audit_seen: std::sync::atomic::AtomicI64,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Reloads the snapshot unless it is already at `version`. The load reads the database after
    /// the version was read, so a snapshot is never older than the version it carries.
    pub async fn reload_to(&self, version: u64, trigger: &'static str) -> anyhow::Result<()> {
        let _g = self.reload_lock.lock().await;
        if self.snapshot.load().version == version {
            return Ok(());
        }
        let snap = Snapshot::load_after(
            &self.db,
            &self.cipher,
            &self.egress,
            version,
            &self.snapshot.load(),
        )
        .await?;
        self.snapshot.store(Arc::new(snap));
        metrics::counter!(crate::telemetry::metrics::SNAPSHOT_RELOADS_TOTAL, "trigger" => trigger)
            .increment(1);
        Ok(())
    }

    /// Called by the control plane after every write: announce to all replicas, reload here now.
    pub async fn config_changed(&self) -> anyhow::Result<()> {
        if matches!(self.coord, crate::coord::Coord::Memory(_)) {
            // Read before the reload, so the snapshot is at least as new as this id.
            self.saw_audit(crate::db::audit::latest_id(&self.db).await?);
        }
        let v = self.coord.bump_config_version().await?;
        self.reload_to(v, "local").await
    }

    /// Records an audit-log id the next snapshot load will reflect; true when it is newer than
    /// any recorded before.
    pub fn saw_audit(&self, id: Option<i64>) -> bool {
        let id = id.unwrap_or(0);
        self.audit_seen.fetch_max(id, Ordering::SeqCst) < id
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
