//! Every metric name keygate emits, in one place, and the Prometheus recorder.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// 1 while the database answers this replica's probe, 0 while it does not.
pub const DB_UP: &str = "keygate_db_up";
/// 1 while Redis is unreachable and this replica coordinates in process (or refuses, fail-closed).
pub const COORD_DEGRADED: &str = "keygate_coord_degraded";
/// Times this replica lost Redis (each outage once).
pub const COORD_OUTAGES_TOTAL: &str = "keygate_coord_outages_total";
/// Times this replica moved to another Redis primary named by the Sentinels (a failover).
pub const COORD_PRIMARY_CHANGES_TOTAL: &str = "keygate_coord_primary_changes_total";
/// Span batches the OTLP exporter could not deliver (the collector is down or refused them).
pub const OTEL_EXPORT_FAILURES_TOTAL: &str = "keygate_otel_export_failures_total";
/// Data-plane requests, by `slug` and `status` (HTTP status returned to the client).
pub const REQUESTS_TOTAL: &str = "keygate_requests_total";
/// Time from request to response head, by `slug`.
pub const REQUEST_DURATION: &str = "keygate_request_duration_seconds";
/// Upstream attempts, by `slug` and `outcome` (ok, client_error, invalid, exhausted, cooling,
/// server_error, connect_error, timeout).
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "keygate_upstream_attempts_total";
/// Key health transitions, by `slug` and `to` (invalid, exhausted, cooling, and active when a
/// half-open trial brings a tripped key back).
pub const KEY_TRANSITIONS_TOTAL: &str = "keygate_key_transitions_total";
/// Key validation requests (`jobs::validate`), by `slug` and `outcome` (ok, invalid, exhausted,
/// inconclusive).
pub const KEY_VALIDATIONS_TOTAL: &str = "keygate_key_validations_total";
/// Balance syncs of keys (`jobs::sync`), by `slug` and `outcome` (ok, or the error's kind:
/// setup, timeout, connect, refused, answer).
pub const KEY_BALANCE_SYNCS_TOTAL: &str = "keygate_key_balance_syncs_total";
/// Upstream-wide 429 backoffs of a service, by `slug`.
pub const SERVICE_BACKOFFS_TOTAL: &str = "keygate_service_backoffs_total";
/// Requests refused because the access key is over its RPM/RPD/TPM, by `slug`.
pub const CLIENT_RATE_LIMITED_TOTAL: &str = "keygate_client_rate_limited_total";
/// Coordination store errors on the hot path, by `kind`.
pub const COORD_ERRORS_TOTAL: &str = "keygate_coord_errors_total";
/// Request events waiting for the log writer.
pub const LOG_QUEUE_DEPTH: &str = "keygate_log_queue_depth";
/// Request events that could not be kept, by `reason` (queue_full, spool_full, spool_error,
/// spool_corrupt, no_spool, rejected).
pub const REQUEST_EVENTS_DROPPED_TOTAL: &str = "keygate_request_events_dropped_total";
/// Bytes in the local spool file of request events (written while the database is unreachable).
pub const LOG_SPOOL_BYTES: &str = "keygate_log_spool_bytes";
/// Request-log rows inserted into the database (replays of rows already there not counted).
pub const LOG_ROWS_WRITTEN_TOTAL: &str = "keygate_log_rows_written_total";
/// Request-log batch inserts that failed (each attempt, replays included).
pub const LOG_BATCHES_FAILED_TOTAL: &str = "keygate_log_batches_failed_total";
/// Key status writes to the database (after coalescing: at most one per key per second).
pub const KEY_STATUS_WRITES_TOTAL: &str = "keygate_key_status_writes_total";
/// Snapshot reloads, by `trigger` (local, remote).
pub const SNAPSHOT_RELOADS_TOTAL: &str = "keygate_snapshot_reloads_total";
/// Client connections open now, by `listener` (data, admin). At `server.max_connections` further
/// clients wait in the accept queue.
pub const CONNECTIONS_OPEN: &str = "keygate_connections_open";
/// Admin password verifications actually run (Argon2), whatever their outcome. Throttled login
/// attempts never reach a hash, so under a password-guessing flood this stays bounded.
pub const LOGIN_HASHES_TOTAL: &str = "keygate_login_hashes_total";
/// Admin login attempts refused with 429 because the username or client address is backing off.
pub const LOGIN_THROTTLED_TOTAL: &str = "keygate_login_throttled_total";
/// Requests a router handed to its next target, by router `slug` and the `target` that failed.
pub const ROUTER_FALLBACKS_TOTAL: &str = "keygate_router_fallbacks_total";

/// Tokens of answered requests, by `slug`, `model` (the client's; at most `MODEL_LABELS` distinct
/// values per process, then `other`) and `kind` (prompt, completion, cache_read, cache_write).
pub const TOKENS_TOTAL: &str = "keygate_tokens_total";
/// What answered requests cost, in micro-units of the pricing currency, by `slug` and `model`.
pub const COST_MICROS_TOTAL: &str = "keygate_cost_micros_total";
/// Upstream keys by `slug` and `status` (active, cooling, exhausted, invalid, disabled), counted
/// every 15 s by each replica from the database and the coordination store.
pub const KEYS: &str = "keygate_keys";
/// Time of each coordination-store (Redis) call, by `op` (acquire, release, report, settle).
pub const COORD_CALL_DURATION: &str = "keygate_coord_call_duration_seconds";

/// Distinct `model` label values one process reports; later ones are counted as `other` (model
/// names come from clients, and an unbounded label would grow the metrics without end).
const MODEL_LABELS: usize = 200;

/// The `model` label for `m`: itself while fewer than `MODEL_LABELS` were seen, else `other`.
pub fn model_label(m: Option<&str>) -> String {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    let Some(m) = m.filter(|m| !m.is_empty()) else {
        return "none".into();
    };
    let mut g = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let seen = g.get_or_insert_with(Default::default);
    if seen.contains(m) {
        return m.to_string();
    }
    if seen.len() < MODEL_LABELS {
        seen.insert(m.to_string());
        return m.to_string();
    }
    "other".into()
}

const COORD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns the handle that renders it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), BUCKETS)
                .expect("static bucket list is non-empty")
                .set_buckets_for_metric(Matcher::Full(COORD_CALL_DURATION.into()), COORD_BUCKETS)
                .expect("static bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            metrics::describe_counter!(REQUESTS_TOTAL, "Data-plane requests by slug and status");
            metrics::describe_counter!(
                TOKENS_TOTAL,
                "Tokens of answered requests by slug, model and kind"
            );
            metrics::describe_counter!(
                COST_MICROS_TOTAL,
                "Cost of answered requests in micro-units of the pricing currency"
            );
            metrics::describe_gauge!(KEYS, "Upstream keys by slug and status");
            metrics::describe_histogram!(
                COORD_CALL_DURATION,
                metrics::Unit::Seconds,
                "Coordination-store call time by operation"
            );
            metrics::describe_gauge!(DB_UP, "1 while the database answers this replica's probe");
            metrics::describe_gauge!(
                COORD_DEGRADED,
                "1 while Redis is unreachable and this replica coordinates alone"
            );
            metrics::describe_counter!(
                COORD_OUTAGES_TOTAL,
                "Redis outages this replica went through"
            );
            metrics::describe_counter!(
                COORD_PRIMARY_CHANGES_TOTAL,
                "Redis primaries this replica moved to on a Sentinel failover"
            );
            metrics::describe_counter!(
                OTEL_EXPORT_FAILURES_TOTAL,
                "Trace span batches the OTLP exporter could not deliver"
            );
            metrics::describe_histogram!(
                REQUEST_DURATION,
                metrics::Unit::Seconds,
                "Time from request to response head"
            );
            metrics::describe_counter!(UPSTREAM_ATTEMPTS_TOTAL, "Upstream attempts by outcome");
            metrics::describe_counter!(KEY_TRANSITIONS_TOTAL, "Upstream key health transitions");
            metrics::describe_counter!(KEY_VALIDATIONS_TOTAL, "Key validation requests by outcome");
            metrics::describe_counter!(KEY_BALANCE_SYNCS_TOTAL, "Key balance syncs by outcome");
            metrics::describe_counter!(SERVICE_BACKOFFS_TOTAL, "Upstream-wide 429 backoffs");
            metrics::describe_counter!(
                CLIENT_RATE_LIMITED_TOTAL,
                "Requests over an access key's limits"
            );
            metrics::describe_counter!(COORD_ERRORS_TOTAL, "Coordination store errors");
            metrics::describe_counter!(SNAPSHOT_RELOADS_TOTAL, "Config snapshot reloads");
            metrics::describe_gauge!(LOG_QUEUE_DEPTH, "Request events waiting for the log writer");
            metrics::describe_counter!(
                REQUEST_EVENTS_DROPPED_TOTAL,
                "Request events that could not be kept, by reason"
            );
            metrics::describe_gauge!(
                LOG_SPOOL_BYTES,
                metrics::Unit::Bytes,
                "Size of the local spool of request events"
            );
            metrics::describe_counter!(LOG_ROWS_WRITTEN_TOTAL, "Request-log rows inserted");
            metrics::describe_counter!(
                LOG_BATCHES_FAILED_TOTAL,
                "Failed request-log batch inserts"
            );
            metrics::describe_counter!(
                KEY_STATUS_WRITES_TOTAL,
                "Key status writes to the database"
            );
            metrics::describe_gauge!(CONNECTIONS_OPEN, "Client connections open, by listener");
            metrics::describe_counter!(LOGIN_HASHES_TOTAL, "Admin password hashes verified");
            metrics::describe_counter!(
                LOGIN_THROTTLED_TOTAL,
                "Admin logins refused while backing off"
            );
            metrics::describe_counter!(
                ROUTER_FALLBACKS_TOTAL,
                "Router requests passed on to the next target"
            );
            // Histogram samples queue up until upkeep folds them into buckets; without a
            // scrape they would pile up, so upkeep runs on its own.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn the metrics upkeep thread");
            handle
        })
        .clone()
}
