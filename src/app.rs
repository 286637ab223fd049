//! Builds the whole gateway from a `Config`: stores, state, background tasks and listeners.
//! `App::build` binds (port 0 works, for tests) and `run_until` serves until shutdown.
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::http::HeaderName;
use jsonwebtoken::{DecodingKey, EncodingKey};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::coord::{
    Coord,
    memory::MemoryStore,
    redis::{RedisStore, topology_of},
};
use crate::crypto::sha256_hex;
use crate::server::EdgeConfig;
use crate::snapshot::Snapshot;
use crate::state::{AppState, Inner};
use crate::{admin, bootstrap, db, ops, proxy, telemetry};

pub struct App {
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    router: Router,
    admin_router: Option<Router>,
    state: AppState,
    tasks: Vec<JoinHandle<()>>,
}

/// The OpenAPI document of the control plane (what `/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    control_routes().1
}

fn control_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::Modify;
    let (router, mut api) = admin::routes()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .split_for_parts();
    admin::spec::ErrorContract.modify(&mut api);
    (router, api)
}

impl App {
    /// The shared state over the configured stores, with no task or listener started: the CLI
    /// runs the control layer on it. `build` starts the sinks on the receivers it returns.
    pub async fn build_state(
        config: Config,
    ) -> anyhow::Result<(AppState, crate::events::Receivers)> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = telemetry::metrics::handle();

        // Secrets first: a misconfigured replica stops before it touches the database.
        let cipher = bootstrap::cipher(&config)?;
        let jwt = bootstrap::jwt_secret(&config)?;
        let db = db::connect(&config.database).await?;
        bootstrap::ensure_admin(&db, &config).await?;
        // Fingerprints written before they were keyed (or under a rotated-out key) are brought
        // up to date, so duplicate detection stays exact; a second replica finds nothing to do.
        match db::rekey::fingerprints(&db, &cipher).await {
            Ok(r) if r.fingerprints > 0 => {
                tracing::info!(
                    keys = r.fingerprints,
                    "upstream key fingerprints recomputed"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "upstream key fingerprints not recomputed"),
        }

        let redis_ca = match &config.redis.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read redis.ca_file {}: {e}", path.display())
            })?),
            None => None,
        };
        let coord = match config.redis.url.as_ref().map(|u| u.expose_secret()) {
            Some(url) if !url.is_empty() => Coord::Redis(
                RedisStore::connect_tls(
                    url,
                    topology_of(url, config.redis.cluster)?,
                    &config.redis.prefix,
                    config.policy(),
                    config.redis.on_outage,
                    redis_ca,
                    config
                        .redis
                        .sentinel_password
                        .as_ref()
                        .map(|p| p.expose_secret()),
                )
                .await
                .map_err(|e| {
                    let nodes: Vec<String> = url.split(',').map(db::redacted_url).collect();
                    anyhow::anyhow!("cannot connect to Redis {}: {e}", nodes.join(","))
                })?,
            ),
            _ => {
                if config.is_enterprise() {
                    tracing::warn!(
                        "Postgres without REDIS_URL: key rotation and cooldowns are per replica"
                    );
                }
                Coord::Memory(MemoryStore::new(config.policy()))
            }
        };

        let egress = std::sync::Arc::new(
            crate::egress::Guard::parse(&config.egress.allow).map_err(anyhow::Error::msg)?,
        );
        let http = crate::egress::builder(&egress).build()?;

        let global_keys: HashSet<String> = config
            .proxy
            .global_proxy_keys
            .as_ref()
            .map(|k| {
                k.expose_secret()
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(sha256_hex)
                    .collect()
            })
            .unwrap_or_default();

        let (events, receivers) = crate::events::Events::new(config.log.queue_capacity);
        let version = coord.config_version().await?;
        let snapshot = Snapshot::load(&db, &cipher, &egress, version).await?;

        let state = AppState::new(Inner {
            jwt_encoding: EncodingKey::from_secret(jwt.expose_secret().as_bytes()),
            jwt_decoding: DecodingKey::from_secret(jwt.expose_secret().as_bytes()),
            snapshot: ArcSwap::from_pointee(snapshot),
            reload_lock: tokio::sync::Mutex::new(()),
            lease_released: tokio::sync::Notify::new(),
            hop_id: hop_id(&jwt),
            leases: Default::default(),
            responses_fallback: Default::default(),
            catalog: Default::default(),
            login_guard: admin::login_guard::LoginGuard::new(&config.auth),
            draining: std::sync::atomic::AtomicBool::new(false),
            audit_seen: std::sync::atomic::AtomicI64::new(0),
            db_health: Default::default(),
            global_keys,
            events: events.clone(),
            metrics,
            http,
            egress,
            cipher,
            coord,
            db,
            config,
        });
        Ok((state, receivers))
    }

    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (state, receivers) = Self::build_state(config.clone()).await?;
        let (events, db) = (state.events.clone(), state.db.clone());

        // With request logging off there is nothing to spool (and an old spool stays unread).
        let spool = config
            .log
            .requests
            .then(|| crate::events::log_writer::open_spool(&config.log, &config.database.data_dir))
            .flatten();
        let tasks = vec![
            tokio::spawn(crate::events::log_writer::run(
                db.clone(),
                events.clone(),
                receivers.requests,
                spool,
                state.coord.clone(),
                config.log.requests,
                std::time::Duration::from_millis(config.log.flush_interval_ms.max(10)),
            )),
            tokio::spawn(crate::events::key_status::run(
                db.clone(),
                events.clone(),
                receivers.keys,
            )),
            tokio::spawn(db::logs::run_retention(db, config.log.clone())),
            tokio::spawn(refresh_loop(state.clone())),
            tokio::spawn(proxy::leases::run(state.clone())),
            tokio::spawn(crate::jobs::validate::schedule(state.clone())),
            tokio::spawn(crate::jobs::sync::schedule(state.clone())),
            tokio::spawn(crate::jobs::persist::run(state.clone())),
            tokio::spawn(crate::jobs::gauges::run(state.clone())),
            tokio::spawn(state.db_health.clone().run(state.db.clone())),
        ];

        let (control, api) = control_routes();
        // A client trickling an admin body would hold a connection and a handler open; the data
        // plane is left out on purpose (LLM uploads may be slow and it bounds bodies itself).
        let control = control
            .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
            .merge(crate::console::routes())
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                admin::database_gate,
            ))
            .layer(RequestBodyTimeoutLayer::new(Duration::from_millis(
                config.server.admin_body_timeout_ms.max(1),
            )))
            .with_state(state.clone());
        let data = proxy::routes().with_state(state.clone()).layer(
            tower_http::catch_panic::CatchPanicLayer::custom(proxy::panic_response),
        );

        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.listen))?;
        let (router, admin_router, admin_listener) = match config.server.admin_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
                // Probes answer on the data port too, where the load balancer looks.
                let probes = Router::new()
                    .route("/healthz", axum::routing::get(ops::healthz))
                    .route("/readyz", axum::routing::get(ops::readyz))
                    .with_state(state.clone());
                let data = data.merge(probes).fallback(proxy::no_route);
                (layers(data), Some(layers(control)), Some(l))
            }
            None => (
                layers(data.merge(control).fallback(proxy::no_route)),
                None,
                None,
            ),
        };
        Ok(Self {
            listener,
            admin_listener,
            router,
            admin_router,
            state,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The control-plane port (the same as `port()` unless `admin_listen` is set).
    pub fn admin_port(&self) -> u16 {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
            .unwrap_or_else(|| self.port())
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then shuts down in order: `/readyz` answers 503
    /// (draining), the listeners stop accepting and in-flight requests (streams included) get up
    /// to `shutdown_grace_ms` to finish, queued request logs are written, background tasks stop.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let server = &self.state.config.server;
        let grace = Duration::from_millis(server.shutdown_grace_ms);
        let (tx, rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
        let state = self.state.clone();
        tokio::spawn(async move {
            shutdown.await;
            state.draining.store(true, Ordering::SeqCst);
            tracing::info!(grace_ms = grace.as_millis() as u64, "shutdown: draining");
            let _ = tx.send(Some(Instant::now()));
        });
        let stop = |mut rx: tokio::sync::watch::Receiver<Option<Instant>>| async move {
            let _ = rx.wait_for(Option::is_some).await;
        };
        let data = crate::server::serve(
            self.listener,
            self.router,
            EdgeConfig::new("data", server),
            stop(rx.clone()),
        );
        match (self.admin_listener, self.admin_router) {
            (Some(l), Some(r)) => {
                let admin =
                    crate::server::serve(l, r, EdgeConfig::new("admin", server), stop(rx.clone()));
                tokio::join!(data, admin);
            }
            _ => data.await,
        }
        let began = (*rx.borrow()).unwrap_or_else(Instant::now);
        // The flush gets what the drain left of the grace period, but never nothing: request logs
        // are the audit trail, and the queue is written in batches (a second is plenty).
        let left = grace
            .saturating_sub(began.elapsed())
            .max(Duration::from_secs(1));
        self.state.events.flush_and_close(left).await;
        for t in self.tasks {
            t.abort();
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

fn layers(router: Router) -> Router {
    let sensitive: Arc<[HeaderName]> = Arc::from(vec![
        HeaderName::from_static("authorization"),
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("x-goog-api-key"),
        HeaderName::from_static("x-proxy-key"),
    ]);
    let request_id = HeaderName::from_static("x-request-id");
    router
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &axum::http::Request<axum::body::Body>| {
                // Method and path only: the query may carry a credential (`?key=`).
                tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
            },
        ))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::from_shared(sensitive))
}

/// The loop-marker id: derived from the JWT secret, which every replica of a deployment shares
/// and other deployments do not, so keygate chained to another keygate is not a loop.
fn hop_id(jwt: &secrecy::SecretString) -> axum::http::HeaderValue {
    let digest = sha256_hex(&format!("keygate-hop\0{}", jwt.expose_secret()));
    axum::http::HeaderValue::from_str(&digest[..16]).expect("hex is a valid header value")
}

/// Every replica checks the shared config version and reloads its snapshot when it moved.
///
/// With in-process coordination there is no shared version: another process writing to the same
/// database (`keygate admin` on the server, or another replica without Redis) would go unseen
/// until a restart. Every admin write appends to the audit log in its own transaction, so the
/// log's newest id moving is the signal instead (one indexed read per tick, off the hot path).
async fn refresh_loop(state: AppState) {
    let every = Duration::from_millis(state.config.proxy.refresh_interval_ms.max(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let replica = crate::coord::new_lease_id();
    let mut next_heartbeat = tokio::time::Instant::now();
    let watch_db = matches!(state.coord, Coord::Memory(_));
    if watch_db && let Ok(id) = db::audit::latest_id(&state.db).await {
        state.saw_audit(id);
    }
    loop {
        tick.tick().await;
        if watch_db {
            match db::audit::latest_id(&state.db).await {
                // Another process wrote (this one's own writes were recorded as they reloaded).
                Ok(id) if state.saw_audit(id) => {
                    let v = match state.coord.bump_config_version().await {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot bump the config version");
                            continue;
                        }
                    };
                    if let Err(e) = state.reload_to(v, "remote").await {
                        tracing::warn!(error = %e, "snapshot reload failed; serving the previous one");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the audit log's newest id"),
            }
        }
        // While Redis is down the outage probe watches it; asking here would log every tick.
        if state.coord.degraded() {
            continue;
        }
        if tokio::time::Instant::now() >= next_heartbeat {
            next_heartbeat = tokio::time::Instant::now() + Duration::from_secs(2);
            if let Err(e) = state.coord.heartbeat(&replica).await {
                tracing::debug!(error = %e, "replica heartbeat failed");
            }
        }
        match state.coord.config_version().await {
            Ok(v) if v != state.snapshot.load().version => {
                if let Err(e) = state.reload_to(v, "remote").await {
                    tracing::warn!(error = %e, "snapshot reload failed; serving the previous one");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read config version"),
        }
    }
}
