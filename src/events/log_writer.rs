//! The request-log sink: request events -> `request_logs` rows, in batches, off the hot path,
//! without losing any while the database is away.
//!
//! Rows are inserted with `ON CONFLICT (id) DO NOTHING` (`(ts, id)` on Postgres, whose table is
//! partitioned by `ts`), so writing a batch twice is harmless; the per-minute rollups are added in
//! the same transaction from the rows that insert reported new (`events::rollup`), so they are
//! never counted twice either.
//! A batch that still fails after a few quick retries goes to the spool, and so does every batch
//! after it while the spool holds anything (order is kept); a replay loop with capped exponential
//! backoff drains the spool into the database once it answers. The channel is always drained:
//! while the database is down no insert is awaited on the receive path, only spool appends.
use std::path::Path;
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::rollup;
use super::spool::{Mark, Spool};
use super::{Events, RequestEvent};
use crate::config::LogConfig;
use crate::coord::Coord;
use crate::telemetry::metrics as m;

/// Most events per transaction. The statistics are upserted once per transaction, one row per
/// group and grain whatever the batch's size, so larger batches (and a longer
/// `log.flush_interval_ms`) make them cheaper per request: at 500 events and 200 ms, logging cost
/// 12-18 % of throughput against logging off in the bench. The cap is well above what one replica
/// serves in a flush interval (about 6,000 requests a second on SQLite in the bench), so the
/// interval, not the cap, sets how often the statistics are written: at 2,000, a replica serving
/// 3,000 requests a second wrote them twice a second. On Postgres a batch is one statement whatever
/// its size; on SQLite it is cut into statements of `db::log_rows::INSERT_ROWS`.
const BATCH: usize = 10_000;
/// Quick retries of a batch before it goes to the spool (only while the database looked up).
const RETRIES: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];
/// One insert may not hold the writer longer than this (a hung database looks like a down one).
const INSERT_TIMEOUT: Duration = Duration::from_secs(5);
/// No retry starts after this long: a slow failure is a down database, not a blip.
const RETRY_BUDGET: Duration = Duration::from_secs(1);
const REPLAY_MIN: Duration = Duration::from_millis(250);
const REPLAY_MAX: Duration = Duration::from_secs(5);

/// Opens the spool in `log.spool_dir` (default `<data_dir>/spool`). None when spooling is off
/// (`spool_max_bytes = 0`) or the directory is unusable: keygate still serves, and says so,
/// because a read-only image without a spool volume should not stop the gateway.
pub fn open_spool(log: &LogConfig, data_dir: &Path) -> Option<Spool> {
    if log.spool_max_bytes == 0 {
        return None;
    }
    let dir = log
        .spool_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("spool"));
    match Spool::open(&dir, log.spool_max_bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, dir = %dir.display(), "cannot open the request spool: request logs are dropped while the database is unreachable (set log.spool_dir to a writable directory)");
            None
        }
    }
}

/// Drains request events into the database in batches of up to `BATCH` rows, each written
/// `linger` after its first event arrived (at once while a backlog is queued), through the spool
/// while the database is unreachable, until shutdown.
pub async fn run(
    db: DatabaseConnection,
    events: Events,
    mut rx: mpsc::Receiver<RequestEvent>,
    spool: Option<Spool>,
    coord: Coord,
    log_requests: bool,
    linger: Duration,
) {
    let mut shutdown = events.on_shutdown();
    // The writer only needs the shutdown hook; holding a sender would keep its own channel open.
    drop(events);
    let mut w = Writer {
        db,
        log_requests,
        spool,
        down: false,
        backoff: REPLAY_MIN,
        // A spool left by a previous run is replayed at once.
        next_replay: Instant::now(),
        replaying: None,
    };
    let mut buf: Vec<RequestEvent> = Vec::with_capacity(BATCH);
    // The last batch filled up: more events are queued, so the next one is taken at once. Else a
    // linger per batch would cap the writer at BATCH / linger events a second, below what one
    // replica can serve, and the queue would overflow.
    let mut backlog = false;
    loop {
        let replay_at = w.replay_due();
        tokio::select! {
            done = &mut shutdown => {
                w.finish(&mut rx, done.ok()).await;
                return;
            }
            first = rx.recv() => {
                let Some(first) = first else {
                    w.finish(&mut rx, None).await;
                    return;
                };
                buf.push(first);
                // Lingers without looking at the queue: waking for every event would cost the
                // hot path a task wake-up (often a thread wake-up) per request. A shutdown cuts
                // the linger short, so the flush's share of the grace period (at least a second)
                // is not spent waiting out the linger.
                let mut stop = None;
                if !backlog {
                    tokio::select! {
                        _ = tokio::time::sleep(linger) => {}
                        done = &mut shutdown => stop = Some(done),
                    }
                }
                while buf.len() < BATCH {
                    match rx.try_recv() {
                        Ok(m) => buf.push(m),
                        Err(_) => break,
                    }
                }
                backlog = buf.len() >= BATCH;
                metrics::gauge!(m::LOG_QUEUE_DEPTH).decrement(buf.len() as f64);
                rollup::count_live(&coord, &buf);
                w.accept(std::mem::take(&mut buf)).await;
                if let Some(done) = stop {
                    w.finish(&mut rx, done.ok()).await;
                    return;
                }
            }
            res = async { (&mut w.replaying.as_mut().expect("guarded").0).await }, if w.replaying.is_some() => {
                w.replayed(res);
            }
            _ = tokio::time::sleep_until(replay_at.unwrap_or_else(Instant::now)), if replay_at.is_some() => {
                w.start_replay();
            }
        }
    }
}

type Replay = (JoinHandle<Result<(), DbErr>>, Mark);

struct Writer {
    db: DatabaseConnection,
    /// `log.requests`: off, batches only feed the live figures and are then dropped.
    log_requests: bool,
    spool: Option<Spool>,
    /// The database did not take the last write: one WARN when this turns on, one INFO when off.
    down: bool,
    backoff: Duration,
    next_replay: Instant,
    /// The replay insert in flight. It runs beside the receive loop so that a database that
    /// hangs never stops the channel from draining into the spool.
    replaying: Option<Replay>,
}

impl Writer {
    fn spooled(&self) -> bool {
        self.spool.as_ref().is_some_and(|s| !s.is_empty())
    }

    fn replay_due(&self) -> Option<Instant> {
        (self.replaying.is_none() && self.spooled()).then_some(self.next_replay)
    }

    /// A fresh batch: to the database if nothing waits in the spool, else behind it.
    async fn accept(&mut self, batch: Vec<RequestEvent>) {
        if !self.log_requests {
            return;
        }
        if self.spooled() {
            self.spool(batch);
            return;
        }
        // Quick retries ride out a dropped connection; once the database looks down (or a try
        // was slow), the batch goes straight to the spool and the replay loop takes over.
        let retries: &[Duration] = if self.down { &[] } else { &RETRIES };
        let started = Instant::now();
        let mut last = None;
        for pause in std::iter::once(&Duration::ZERO).chain(retries) {
            if last.is_some() && started.elapsed() > RETRY_BUDGET {
                break;
            }
            tokio::time::sleep(*pause).await;
            match insert(self.db.clone(), &batch).await {
                Ok(()) => {
                    self.up();
                    return;
                }
                Err(e) => last = Some(e),
            }
        }
        self.went_down(last.as_ref());
        self.spool(batch);
    }

    fn spool(&mut self, batch: Vec<RequestEvent>) {
        match self.spool.as_mut() {
            Some(s) => {
                s.append(&batch);
            }
            None => {
                metrics::counter!(m::REQUEST_EVENTS_DROPPED_TOTAL, "reason" => "no_spool")
                    .increment(batch.len() as u64);
            }
        }
    }

    /// Sends the oldest spooled chunk to the database (in the background).
    fn start_replay(&mut self) {
        let Some(spool) = self.spool.as_ref() else {
            return;
        };
        match spool.peek(BATCH) {
            Ok((events, mark)) => {
                let db = self.db.clone();
                let task = tokio::spawn(async move { insert(db, &events).await });
                self.replaying = Some((task, mark));
            }
            Err(e) => {
                tracing::error!(error = %e, path = %spool.path().display(), "cannot read the request spool");
                self.next_replay = Instant::now() + REPLAY_MAX;
            }
        }
    }

    fn replayed(&mut self, res: Result<Result<(), DbErr>, tokio::task::JoinError>) {
        let Some((_, mark)) = self.replaying.take() else {
            return;
        };
        let res = res.unwrap_or_else(|e| Err(DbErr::Custom(format!("replay task: {e}"))));
        match res {
            Ok(()) => {
                if let Some(spool) = self.spool.as_mut()
                    && let Err(e) = spool.ack(mark)
                {
                    tracing::error!(error = %e, path = %spool.path().display(), "cannot truncate the request spool");
                }
                self.backoff = REPLAY_MIN;
                self.next_replay = Instant::now();
                if !self.spooled() {
                    self.up();
                }
            }
            Err(e) => {
                self.went_down(Some(&e));
                self.next_replay = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(REPLAY_MAX);
            }
        }
    }

    fn went_down(&mut self, e: Option<&DbErr>) {
        if !self.down {
            self.down = true;
            self.backoff = REPLAY_MIN;
            self.next_replay = Instant::now() + REPLAY_MIN;
            let error = e.map(|e| e.to_string()).unwrap_or_default();
            if self.spool.is_some() {
                tracing::warn!(%error, "database unreachable for request logs: spooling them until it answers");
            } else {
                tracing::warn!(%error, "database unreachable for request logs and no spool: dropping them until it answers");
            }
        }
    }

    fn up(&mut self) {
        if self.down {
            self.down = false;
            tracing::info!("database reachable again for request logs");
        }
    }

    /// Shutdown: everything still queued goes to the database, or to the spool if it is down or
    /// the spool already holds older events; then the spool is flushed to disk.
    async fn finish(
        &mut self,
        rx: &mut mpsc::Receiver<RequestEvent>,
        done: Option<oneshot::Sender<()>>,
    ) {
        rx.close();
        if self.down && self.spool.is_none() {
            // Nowhere to keep them, and one insert timeout per batch would outlast the grace
            // period: count them and go.
            let mut n = 0u64;
            while rx.recv().await.is_some() {
                n += 1;
            }
            metrics::gauge!(m::LOG_QUEUE_DEPTH).decrement(n as f64);
            metrics::counter!(m::REQUEST_EVENTS_DROPPED_TOTAL, "reason" => "no_spool").increment(n);
            if let Some(done) = done {
                let _ = done.send(());
            }
            return;
        }
        if let Some((task, _)) = self.replaying.as_mut() {
            let res = task.await;
            self.replayed(res);
        }
        let mut buf = Vec::with_capacity(BATCH);
        while let Some(ev) = rx.recv().await {
            buf.push(ev);
            if buf.len() >= BATCH {
                metrics::gauge!(m::LOG_QUEUE_DEPTH).decrement(buf.len() as f64);
                self.accept(std::mem::take(&mut buf)).await;
            }
        }
        if !buf.is_empty() {
            metrics::gauge!(m::LOG_QUEUE_DEPTH).decrement(buf.len() as f64);
            self.accept(buf).await;
        }
        if let Some(s) = self.spool.as_mut() {
            if let Err(e) = s.sync() {
                tracing::error!(error = %e, path = %s.path().display(), "cannot flush the request spool to disk");
            }
            if !s.is_empty() {
                tracing::warn!(path = %s.path().display(), bytes = s.bytes(), "request events left in the spool; the next start replays them");
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Inserts rows idempotently (and rolls them up once). Rows the database refuses for their content (not for being
/// unreachable) are dropped one by one, so that one bad row cannot wedge the spool.
pub async fn insert(db: DatabaseConnection, events: &[RequestEvent]) -> Result<(), DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    let backend = db.get_database_backend();
    match insert_rows(&db, events).await {
        Err(e) if rejected(backend, &e) => {}
        other => return other,
    }
    for ev in events {
        match insert_rows(&db, std::slice::from_ref(ev)).await {
            Err(e) if rejected(backend, &e) => {
                metrics::counter!(m::REQUEST_EVENTS_DROPPED_TOTAL, "reason" => "rejected")
                    .increment(1);
                tracing::error!(error = %e, id = %ev.id, "request log row refused by the database; dropped");
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
    }
    Ok(())
}

async fn insert_rows(db: &DatabaseConnection, events: &[RequestEvent]) -> Result<(), DbErr> {
    let res =
        match tokio::time::timeout(INSERT_TIMEOUT, crate::db::log_rows::write_batch(db, events))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(DbErr::Custom("request log insert timed out".into())),
        };
    match res {
        Ok(n) => {
            metrics::counter!(m::LOG_ROWS_WRITTEN_TOTAL).increment(n);
            Ok(())
        }
        Err(e) => {
            metrics::counter!(m::LOG_BATCHES_FAILED_TOTAL).increment(1);
            Err(e)
        }
    }
}

/// The database answered and refused the data itself (a constraint or a value out of range),
/// as opposed to being unreachable, shutting down or overloaded: retrying cannot help.
fn rejected(backend: DbBackend, e: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(err)) | DbErr::Query(RuntimeErr::SqlxError(err))) = e
    else {
        return false;
    };
    let sea_orm::sqlx::Error::Database(d) = err.as_ref() else {
        return false;
    };
    let Some(code) = d.code() else { return false };
    match backend {
        // SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation).
        DbBackend::Postgres => code.starts_with("22") || code.starts_with("23"),
        // (Extended) result codes: TOOBIG, CONSTRAINT, MISMATCH, RANGE.
        _ => code
            .parse::<u32>()
            .is_ok_and(|n| matches!(n & 0xff, 18 | 19 | 20 | 25)),
    }
}
