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

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryTrait, RuntimeErr,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::rollup;
use super::spool::{Mark, Spool};
use super::{Events, RequestEvent};
use crate::config::LogConfig;
use crate::coord::Coord;
use crate::db::entity::request_log;
use crate::telemetry::metrics as m;

/// Most events per transaction. The statistics are upserted once per transaction, one row per
/// group and grain whatever the batch's size, so larger batches (and a longer
/// `log.flush_interval_ms`) make them cheaper per request: at 500 events and 200 ms, logging cost
/// 12-18 % of throughput against logging off in the bench. The cap is well above what one replica
/// serves in a flush interval (about 6,000 requests a second on SQLite in the bench), so the
/// interval, not the cap, sets how often the statistics are written: at 2,000, a replica serving
/// 3,000 requests a second wrote them twice a second. On Postgres a batch is one statement whatever
/// its size; on SQLite it is cut into statements of `INSERT_ROWS`.
const BATCH: usize = 10_000;
/// Rows per INSERT statement: 25 bound values a row stays under SQLite's 32766 parameters.
const INSERT_ROWS: usize = 500;
/// Quick retries of a batch before it goes to the spool (only while the database looked up).
const RETRIES: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];
/// One insert may not hold the writer longer than this (a hung database looks like a down one).
const INSERT_TIMEOUT: Duration = Duration::from_secs(5);
/// No retry starts after this long: a slow failure is a down database, not a blip.
const RETRY_BUDGET: Duration = Duration::from_secs(1);
const REPLAY_MIN: Duration = Duration::from_millis(250);
const REPLAY_MAX: Duration = Duration::from_secs(5);

pub fn row(ev: &RequestEvent) -> request_log::ActiveModel {
    use sea_orm::ActiveValue::Set;
    // 0 tokens means the upstream reported none: stored as NULL (unknown), not as a count.
    let tokens = |n: u64| (n > 0).then_some(n.min(i64::MAX as u64) as i64);
    request_log::ActiveModel {
        id: Set(ev.id),
        ts: Set(ev.ts),
        service: Set(ev.service.clone()),
        access_key_id: Set(ev.access_key_id),
        upstream_key_id: Set(ev.upstream_key_id),
        model: Set(ev.model.clone()),
        path: Set(cut(&ev.path, PATH_MAX).to_owned()),
        status: Set(ev.status as i32),
        attempts: Set(ev.attempts.min(i32::MAX as u32) as i32),
        latency_ms: Set(ev.latency_ms.min(i64::MAX as u64) as i64),
        ttft_ms: Set(ev.ttft_ms.map(|t| t.min(i64::MAX as u64) as i64)),
        prompt_tokens: Set(tokens(ev.tokens.prompt)),
        completion_tokens: Set(tokens(ev.tokens.completion)),
        cache_read_tokens: Set(tokens(ev.tokens.cache_read)),
        cache_write_tokens: Set(tokens(ev.tokens.cache_write)),
        cost_micros: Set(ev.cost_micros),
        error_kind: Set(ev.error_kind.clone()),
        upstream_model: Set(ev.upstream_model.clone()),
        streamed: Set(ev.streamed),
        cancelled: Set(ev.cancelled),
        estimated: Set(ev.estimated),
        client_format: Set(Some(ev.client_format.to_string())),
        upstream_format: Set(Some(ev.upstream_format.to_string())),
        target: Set(ev.target.clone()),
        tried: Set(tried_json(ev)),
    }
}

/// Longest path kept in a row, in characters.
const PATH_MAX: usize = 512;

/// The first `max` characters of `s`.
fn cut(s: &str, max: usize) -> &str {
    // No more bytes than `max` means no more characters: most paths, without walking them.
    if s.len() <= max {
        return s;
    }
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// The keys tried as a JSON array; a request that never reached a key tried none: NULL rather
/// than `[]`.
fn tried_json(ev: &RequestEvent) -> Option<String> {
    (!ev.tried.is_empty()).then(|| serde_json::to_string(&ev.tried).unwrap_or_default())
}

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
    let res = match tokio::time::timeout(INSERT_TIMEOUT, insert_and_roll_up(db, events)).await {
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

/// One transaction: the rows, then the rollups of the rows that were new. A timeout drops the
/// transaction, which rolls it back: rows and rollups land together or not at all.
async fn insert_and_roll_up(
    db: &DatabaseConnection,
    events: &[RequestEvent],
) -> Result<u64, DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        return insert_and_roll_up_pg(db.get_postgres_connection_pool(), events).await;
    }
    let txn = db.begin().await?;
    // Postgres took its own path above; here (SQLite) the id is the primary key.
    let mut new = std::collections::HashSet::with_capacity(events.len());
    for chunk in events.chunks(INSERT_ROWS) {
        let mut q = request_log::Entity::insert_many(chunk.iter().map(row))
            .on_conflict(
                OnConflict::column(request_log::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .into_query();
        // Under DO NOTHING, RETURNING names exactly the rows this statement inserted (both
        // backends).
        q.returning_col(request_log::Column::Id);
        for r in txn.query_all(&q).await? {
            new.insert(r.try_get::<uuid::Uuid>("", "id")?);
        }
    }
    rollup::record(&txn, events.iter().filter(|e| new.contains(&e.id))).await?;
    insert_bodies(&txn, events.iter().filter(|e| new.contains(&e.id))).await?;
    txn.commit().await?;
    Ok(new.len() as u64)
}

/// Postgres: the whole batch in one short statement, each column bound as one array and turned
/// back into rows by `unnest` on the server, instead of up to 500 rows of 25 bound values per
/// statement. The server no longer parses, plans and binds thousands of VALUES expressions, and
/// the statement is the same text whatever the batch size, so it is prepared once per connection.
///
/// The `unnest` calls sit in the select list, where they advance in step (arrays of one length
/// give one row per index), rather than in `FROM unnest(a, b, ...)`: that form is a function scan
/// that first copies every row into a tuple store and then reads it back. Timed inside Postgres on
/// 4,000-row batches, alternating the two forms: 7.2 µs a row against 10.0.
///
/// Binary `COPY` was tried instead and taken out again: it spent about 3 µs a request less
/// Postgres CPU with one gateway alone, but in the bench's same-run comparison the gateway
/// logging by `COPY` served 5.9 % less than one logging by this insert (24 paired rounds at
/// concurrency 32), and logging by `COPY` cost 8.1 % against logging off over 48 rounds. The
/// cause was not pinned down; one candidate is that `COPY` writes through a small bulk-write
/// ring of buffers, so the backend itself writes out dirty heap pages (and flushes WAL first)
/// as it goes.
macro_rules! pg_insert_logs {
    () => {
        "INSERT INTO request_logs (id, ts, service, access_key_id, \
    upstream_key_id, model, path, status, attempts, latency_ms, ttft_ms, prompt_tokens, \
    completion_tokens, cache_read_tokens, cache_write_tokens, cost_micros, error_kind, \
    upstream_model, streamed, cancelled, estimated, client_format, upstream_format, target, tried) \
    SELECT unnest($1::uuid[]), unnest($2::timestamptz[]), unnest($3::text[]), \
    unnest($4::int8[]), unnest($5::int8[]), unnest($6::text[]), unnest($7::text[]), \
    unnest($8::int4[]), unnest($9::int4[]), unnest($10::int8[]), unnest($11::int8[]), \
    unnest($12::int8[]), unnest($13::int8[]), unnest($14::int8[]), unnest($15::int8[]), \
    unnest($16::int8[]), unnest($17::text[]), unnest($18::text[]), unnest($19::bool[]), \
    unnest($20::bool[]), unnest($21::bool[]), unnest($22::text[]), unnest($23::text[]), \
    unnest($24::text[]), unnest($25::text[])"
    };
}
/// Every row new: the unique `(ts, id)` index refuses a row written before, failing the batch.
const PG_INSERT_LOGS: &str = pg_insert_logs!();
/// Rows written before skipped, and the new ones named. `ON CONFLICT` costs the server a
/// speculative insertion per row (about 15 % of the insert in the bench), so it is only used for
/// a batch that the plain insert found written before, in part or whole.
const PG_INSERT_LOGS_SKIPPING: &str = concat!(
    pg_insert_logs!(),
    " ON CONFLICT (ts, id) DO NOTHING RETURNING id"
);

/// `insert_and_roll_up` on Postgres. A batch is new unless it is written again: a retry after a
/// lost commit reply, or a spool replay after a crash between the commit and the spool's ack.
async fn insert_and_roll_up_pg(
    pool: &sea_orm::sqlx::PgPool,
    events: &[RequestEvent],
) -> Result<u64, DbErr> {
    match write_pg(pool, events, false).await {
        Err(e) if crate::db::is_unique_violation(&e) => write_pg(pool, events, true).await,
        other => other,
    }
}

/// The rows, the rollups of the new ones and their bodies, in one transaction of the pool's.
async fn write_pg(
    pool: &sea_orm::sqlx::PgPool,
    events: &[RequestEvent],
    skip_written: bool,
) -> Result<u64, DbErr> {
    let mut tx = pool.begin().await.map_err(crate::db::sqlx_err)?;
    let new: Option<std::collections::HashSet<uuid::Uuid>> =
        insert_logs_pg(&mut tx, events, skip_written)
            .await?
            .map(|ids| ids.into_iter().collect());
    let fresh = || {
        events
            .iter()
            .filter(|e| new.as_ref().is_none_or(|n| n.contains(&e.id)))
    };
    crate::db::rollups::add_pg(&mut tx, &rollup::aggregate(fresh())).await?;
    insert_bodies_pg(&mut tx, fresh()).await?;
    tx.commit().await.map_err(crate::db::sqlx_err)?;
    Ok(new.map_or(events.len(), |n| n.len()) as u64)
}

/// The rows' columns as arrays, borrowing the events' strings. With `skip_written`, rows already
/// there are skipped and the ids inserted returned; else every row must be new (None).
async fn insert_logs_pg(
    tx: &mut sea_orm::sqlx::PgConnection,
    events: &[RequestEvent],
    skip_written: bool,
) -> Result<Option<Vec<uuid::Uuid>>, DbErr> {
    use sea_orm::sqlx::Row;
    let n = events.len();
    let opt = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
    // 0 tokens means the upstream reported none: NULL (unknown), as in `row`.
    let tokens = |v: u64| (v > 0).then_some(v.min(i64::MAX as u64) as i64);
    let col = |f: &dyn Fn(&RequestEvent) -> Option<i64>| nulls_or(events.iter().map(f).collect());
    let mut id = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut service = Vec::with_capacity(n);
    let mut model = Vec::with_capacity(n);
    let mut path = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut latency = Vec::with_capacity(n);
    let mut error_kind = Vec::with_capacity(n);
    let mut upstream_model = Vec::with_capacity(n);
    let mut streamed = Vec::with_capacity(n);
    let mut cancelled = Vec::with_capacity(n);
    let mut estimated = Vec::with_capacity(n);
    let mut client_format = Vec::with_capacity(n);
    let mut upstream_format = Vec::with_capacity(n);
    let mut target = Vec::with_capacity(n);
    let mut tried = Vec::with_capacity(n);
    for ev in events {
        id.push(ev.id);
        ts.push(ev.ts);
        service.push(ev.service.as_str());
        model.push(ev.model.as_deref());
        path.push(cut(&ev.path, PATH_MAX));
        status.push(ev.status as i32);
        attempts.push(ev.attempts.min(i32::MAX as u32) as i32);
        latency.push(ev.latency_ms.min(i64::MAX as u64) as i64);
        error_kind.push(ev.error_kind.as_deref());
        upstream_model.push(ev.upstream_model.as_deref());
        streamed.push(ev.streamed);
        cancelled.push(ev.cancelled);
        estimated.push(ev.estimated);
        client_format.push(ev.client_format);
        upstream_format.push(ev.upstream_format);
        target.push(ev.target.as_deref());
        tried.push(tried_json(ev));
    }
    let sql = if skip_written {
        PG_INSERT_LOGS_SKIPPING
    } else {
        PG_INSERT_LOGS
    };
    let q = sea_orm::sqlx::query(sql)
        .bind(id)
        .bind(ts)
        .bind(service)
        .bind(col(&|e| e.access_key_id))
        .bind(col(&|e| e.upstream_key_id))
        .bind(nulls_or(model))
        .bind(path)
        .bind(status)
        .bind(attempts)
        .bind(latency)
        .bind(col(&|e| opt(e.ttft_ms)))
        .bind(col(&|e| tokens(e.tokens.prompt)))
        .bind(col(&|e| tokens(e.tokens.completion)))
        .bind(col(&|e| tokens(e.tokens.cache_read)))
        .bind(col(&|e| tokens(e.tokens.cache_write)))
        .bind(col(&|e| e.cost_micros))
        .bind(nulls_or(error_kind))
        .bind(nulls_or(upstream_model))
        .bind(streamed)
        .bind(cancelled)
        .bind(estimated)
        .bind(client_format)
        .bind(upstream_format)
        .bind(nulls_or(target))
        .bind(nulls_or(tried));
    if !skip_written {
        q.execute(&mut *tx).await.map_err(crate::db::sqlx_err)?;
        return Ok(None);
    }
    let rows = q.fetch_all(&mut *tx).await.map_err(crate::db::sqlx_err)?;
    rows.iter()
        .map(|r| r.try_get::<uuid::Uuid, _>(0))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(crate::db::sqlx_err)
}

/// A column's values as one array, or NULL when every value is NULL. The insert's `unnest` calls
/// advance in step and pad a shorter set with NULLs, so `unnest(NULL)` gives NULL on every row:
/// a column nothing in the batch filled (a cost without pricing, a time to first token without
/// streams, an error kind without errors) is neither encoded here nor parsed by the server.
fn nulls_or<T>(values: Vec<Option<T>>) -> Option<Vec<Option<T>>> {
    values.iter().any(Option::is_some).then_some(values)
}

/// Captured bodies of the new rows, as in `insert_bodies`, a few rows a statement.
async fn insert_bodies_pg<'a>(
    tx: &mut sea_orm::sqlx::PgConnection,
    events: impl Iterator<Item = &'a RequestEvent>,
) -> Result<(), DbErr> {
    let rows: Vec<_> = events
        .filter_map(|e| e.bodies.as_ref().map(|b| (e, b)))
        .collect();
    for chunk in rows.chunks(50) {
        sea_orm::sqlx::query(
            "INSERT INTO request_bodies (id, ts, request, response) \
             SELECT unnest($1::uuid[]), unnest($2::timestamptz[]), unnest($3::text[]), \
             unnest($4::text[]) ON CONFLICT (id) DO NOTHING",
        )
        .bind(chunk.iter().map(|(e, _)| e.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|(e, _)| e.ts).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|(_, b)| b.request.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|(_, b)| b.response.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await
        .map_err(crate::db::sqlx_err)?;
    }
    Ok(())
}

/// Captured bodies of the new rows (`request_bodies`), in the batch's transaction.
async fn insert_bodies<'a, C: ConnectionTrait>(
    db: &C,
    events: impl Iterator<Item = &'a RequestEvent>,
) -> Result<(), DbErr> {
    use sea_orm::sea_query::{Alias, Query};
    let rows: Vec<_> = events
        .filter_map(|e| e.bodies.as_ref().map(|b| (e, b)))
        .collect();
    // Bodies can be large: a few per statement keeps each one small.
    for chunk in rows.chunks(50) {
        let mut q = Query::insert();
        q.into_table(Alias::new("request_bodies")).columns([
            Alias::new("id"),
            Alias::new("ts"),
            Alias::new("request"),
            Alias::new("response"),
        ]);
        for (e, b) in chunk {
            q.values_panic([
                e.id.into(),
                e.ts.into(),
                b.request.clone().into(),
                b.response.clone().into(),
            ]);
        }
        q.on_conflict(
            sea_orm::sea_query::OnConflict::column(Alias::new("id"))
                .do_nothing()
                .to_owned(),
        );
        db.execute(&q).await?;
    }
    Ok(())
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
