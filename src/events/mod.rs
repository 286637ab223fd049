//! Request and key events: what the data plane emits, and the sinks that consume them off the hot
//! path. The data plane never names the database; it hands one `RequestEvent` per request (from
//! the proxy's finaliser) and `KeyStatusChange`s to `Events`, and the sinks here persist them.
//!
//! - `log_writer`: request events -> `request_logs`, in batches; failed batches are retried, and
//!   while the database is unreachable events spool to a bounded local file that is replayed in
//!   order when it returns. On shutdown the queue is flushed (or spooled).
//! - `key_status`: durable key status changes, coalesced to at most one write per key per second.
pub mod capture;
pub mod key_status;
pub mod log_writer;
pub mod rollup;
pub mod spool;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::telemetry::metrics as m;

/// The service name of requests whose slug named no service.
pub const UNKNOWN_SERVICE: &str = "_unknown";

/// Token counts of one request, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    #[serde(default)]
    pub cache_read: u64,
    #[serde(default)]
    pub cache_write: u64,
}

impl Tokens {
    /// What rate limits (TPM) count.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// One data-plane request, as it ended. Exactly one per request, whatever the exit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestEvent {
    /// UUID v7: time-ordered, and the idempotency key of the log row (a replayed spool never
    /// writes a row twice).
    pub id: uuid::Uuid,
    pub ts: DateTime<Utc>,
    /// The slug the client called (`_unknown` is never stored: unknown slugs are not logged).
    pub service: String,
    pub access_key_id: Option<i64>,
    /// The key that produced the answer (or the last one tried).
    pub upstream_key_id: Option<i64>,
    /// Every key tried, in order.
    #[serde(default)]
    pub tried: Vec<i64>,
    /// The model the client asked for.
    pub model: Option<String>,
    /// The model sent upstream (after aliasing), when it differs.
    #[serde(default)]
    pub upstream_model: Option<String>,
    pub path: String,
    pub status: u16,
    pub attempts: u32,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub tokens: Tokens,
    /// Cost in micro-units of the currency (1 = 0.000001), when priced.
    #[serde(default)]
    pub cost_micros: Option<i64>,
    /// Low-cardinality reason when the request did not end in an upstream success.
    pub error_kind: Option<String>,
    pub streamed: bool,
    /// The client went away before the answer ended.
    #[serde(default)]
    pub cancelled: bool,
    /// Token counts were estimated, not reported by the upstream.
    #[serde(default)]
    pub estimated: bool,
    /// Wire formats: the client's (from the path) and the upstream's (from the service kind).
    pub client_format: &'static str,
    pub upstream_format: &'static str,
    /// For a router slug: the target slug that served the request (or was tried last).
    #[serde(default)]
    pub target: Option<String>,
    /// Captured bodies, already cut and redacted (services with `capture` set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bodies: Option<Box<capture::Bodies>>,
}

/// A request event's id: a uuid v7 that carries the event's own timestamp (to the millisecond), so
/// the id alone says where its row sits in time. The log table on Postgres has no index on the id
/// (`migration` 015): `db::logs::by_id` reads the time index around `id_time` instead.
pub fn log_id(ts: DateTime<Utc>) -> uuid::Uuid {
    let at = uuid::Timestamp::from_unix(
        uuid::NoContext,
        ts.timestamp().max(0) as u64,
        ts.timestamp_subsec_nanos(),
    );
    uuid::Uuid::new_v7(at)
}

/// The time a uuid v7 carries (None for other versions).
pub fn id_time(id: uuid::Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// A key fault as the database should remember it: a durable status (`invalid`, `exhausted`),
/// or None for a passing fault that only updates `last_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatusChange {
    pub key_id: i64,
    pub status: Option<&'static str>,
    pub reason: String,
    /// The key's reset epoch when the change was emitted (set by `Events::key_status`): a change
    /// from before an operator or a validation put the key back is stale and never written.
    pub epoch: u64,
}

/// Per key, how many times it was put back in rotation by hand or by a validation.
#[derive(Default)]
pub struct KeyEpochs(parking_lot::Mutex<std::collections::HashMap<i64, u64>>);

impl KeyEpochs {
    pub fn current(&self, key_id: i64) -> u64 {
        self.0.lock().get(&key_id).copied().unwrap_or(0)
    }
}

/// The handle the data plane emits through. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Events(Arc<Inner>);

struct Inner {
    requests: mpsc::Sender<RequestEvent>,
    /// Looked up once: a registry lookup per request costs more than the increment.
    queue_depth: metrics::Gauge,
    keys: mpsc::UnboundedSender<KeyStatusChange>,
    epochs: Arc<KeyEpochs>,
    closed: AtomicBool,
    /// Asks the writers to flush and stop; each answers when done.
    shutdown: parking_lot::Mutex<Vec<oneshot::Sender<oneshot::Sender<()>>>>,
}

/// The receiving ends, handed to the sinks when they start.
pub struct Receivers {
    pub requests: mpsc::Receiver<RequestEvent>,
    pub keys: mpsc::UnboundedReceiver<KeyStatusChange>,
}

impl Events {
    pub fn new(capacity: usize) -> (Self, Receivers) {
        let (rtx, rrx) = mpsc::channel(capacity.max(16));
        let (ktx, krx) = mpsc::unbounded_channel();
        (
            Self(Arc::new(Inner {
                requests: rtx,
                queue_depth: metrics::gauge!(m::LOG_QUEUE_DEPTH),
                keys: ktx,
                epochs: Arc::default(),
                closed: AtomicBool::new(false),
                shutdown: parking_lot::Mutex::new(Vec::new()),
            })),
            Receivers {
                requests: rrx,
                keys: krx,
            },
        )
    }

    /// Hands a request event to the log writer. A full queue is counted, never waited on: the
    /// writer drains into the spool when the database is slow, so a full queue means the spool
    /// is full too.
    pub fn request(&self, ev: RequestEvent) {
        // A slug that names no service belongs to no tenant and is chosen by whoever calls:
        // such requests are counted in metrics, not stored.
        if ev.service == UNKNOWN_SERVICE {
            return;
        }
        match self.0.requests.try_send(ev) {
            Ok(()) => self.0.queue_depth.increment(1.0),
            Err(_) => metrics::counter!(m::REQUEST_EVENTS_DROPPED_TOTAL, "reason" => "queue_full")
                .increment(1),
        }
    }

    pub fn key_status(&self, mut change: KeyStatusChange) {
        change.epoch = self.0.epochs.current(change.key_id);
        let _ = self.0.keys.send(change);
    }

    /// The key was put back in rotation (its row written `active`): status changes emitted before
    /// now and not yet written are dropped, so a late write cannot take it out again.
    pub fn key_reset(&self, key_id: i64) {
        *self.0.epochs.0.lock().entry(key_id).or_default() += 1;
    }

    pub fn key_epochs(&self) -> Arc<KeyEpochs> {
        self.0.epochs.clone()
    }

    /// Registers a sink that wants to hear about shutdown: it gets a sender to answer on once it
    /// has flushed.
    pub fn on_shutdown(&self) -> oneshot::Receiver<oneshot::Sender<()>> {
        let (tx, rx) = oneshot::channel();
        self.0.shutdown.lock().push(tx);
        rx
    }

    /// Flushes every sink (queue to the database, or to the spool if it is down) and waits for
    /// them, at most `within`. Called once, after the listeners have drained.
    pub async fn flush_and_close(&self, within: std::time::Duration) {
        if self.0.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let waiters: Vec<_> = std::mem::take(&mut *self.0.shutdown.lock());
        let mut dones = Vec::new();
        for w in waiters {
            let (tx, rx) = oneshot::channel();
            if w.send(tx).is_ok() {
                dones.push(rx);
            }
        }
        let all = futures::future::join_all(dones);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("event sinks did not flush within the shutdown grace period");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_id_carries_its_event_time_to_the_millisecond() {
        let ts = DateTime::parse_from_rfc3339("2026-11-23T04:05:06.789123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = log_id(ts);
        assert_eq!(id.get_version_num(), 7);
        let back = id_time(id).unwrap();
        assert_eq!(back.timestamp_millis(), ts.timestamp_millis());
        // Two events in the same millisecond still get different ids.
        assert_ne!(log_id(ts), id);
    }

    #[test]
    fn only_a_uuid_v7_has_a_time() {
        assert_eq!(id_time(uuid::Uuid::new_v4()), None);
        assert!(id_time(uuid::Uuid::now_v7()).is_some());
    }
}
