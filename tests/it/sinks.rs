//! Event sinks: request logs survive a database outage and a shutdown without loss or duplicates,
//! a spool left by a crash is replayed at start, and key status writes are coalesced.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait};
use serde_json::json;

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock;
use crate::servers::OwnPostgres;

pub(crate) fn event(service: &str, n: u64) -> keygate::events::RequestEvent {
    keygate::events::RequestEvent {
        id: uuid::Uuid::now_v7(),
        ts: chrono::Utc::now(),
        service: service.to_string(),
        access_key_id: None,
        upstream_key_id: None,
        tried: Vec::new(),
        model: Some("m".into()),
        upstream_model: None,
        path: "v1/chat/completions".into(),
        status: 200,
        attempts: 1,
        latency_ms: n,
        ttft_ms: None,
        tokens: Default::default(),
        cost_micros: None,
        error_kind: None,
        streamed: false,
        cancelled: false,
        estimated: false,
        client_format: "openai",
        upstream_format: "openai",
        target: None,
        bodies: None,
    }
}

async fn rows(db: &DatabaseConnection, slug: &str) -> u64 {
    keygate::db::logs::count_for_service(db, slug)
        .await
        .unwrap_or(0)
}

/// Total size of the spool files under a data directory.
fn spool_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("spool"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answered_request_is_logged_exactly_once_across_a_postgres_outage() {
    let pg = Arc::new(
        tokio::task::spawn_blocking(OwnPostgres::start)
            .await
            .unwrap(),
    );
    let admin = Database::connect(format!("{}/postgres", pg.base))
        .await
        .unwrap();
    admin
        .execute_unprepared("CREATE DATABASE keygate")
        .await
        .unwrap();
    admin.close().await.unwrap();
    // The shared Redis and secrets of the enterprise mode, but the database is our own.
    let mut shared = Shared::new(Backend::Postgres).await;
    shared.config.database.url = Some(format!("{}/keygate", pg.base).into());
    let data_dir = shared.config.database.data_dir.clone();
    let up = mock::start().await;
    let app = Arc::new(TestApp::spawn_with(&shared.config).await);
    let ak = Arc::new(
        app.with_service("outage", &up.base, &["sk-outage-key-01"])
            .await,
    );

    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let non_200 = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hard_end = Instant::now() + Duration::from_secs(90);
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (app, ak, answered, failed, non_200, stop) = (
            app.clone(),
            ak.clone(),
            answered.clone(),
            failed.clone(),
            non_200.clone(),
            stop.clone(),
        );
        loops.push(tokio::spawn(async move {
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > hard_end {
                    break;
                }
                let r = app
                    .http
                    .post(app.url("/llm/outage/v1/chat/completions"))
                    .bearer_auth(ak.as_str())
                    .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                match r {
                    Ok(r) => {
                        if r.status() != 200 {
                            non_200.fetch_add(1, Ordering::Relaxed);
                        }
                        match r.bytes().await {
                            Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Samples the spool size on disk (a metric gauge would be shared with other tests' apps).
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, stop, dir) = (peak.clone(), stop.clone(), data_dir.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                peak.fetch_max(spool_bytes(&dir), Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    let n = || answered.load(Ordering::Relaxed);

    assert!(
        eventually(Duration::from_secs(30), || async { n() >= 300 }).await,
        "load is flowing"
    );
    let before_outage = n();
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    let down_at = Instant::now();
    // Postgres stays down at least 10 s, and keygate keeps answering from its snapshot meanwhile.
    assert!(
        eventually(Duration::from_secs(60), || async {
            down_at.elapsed() >= Duration::from_secs(11) && n() >= before_outage + 300
        })
        .await,
        "keygate kept answering while Postgres was down ({} answers during the outage)",
        n() - before_outage
    );
    let during_outage = n() - before_outage;
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.restart())
        .await
        .unwrap();
    let down_for = down_at.elapsed();
    let after_restart = n();
    assert!(
        eventually(Duration::from_secs(30), || async {
            started.elapsed() >= Duration::from_secs(15) && n() >= after_restart + 300
        })
        .await,
        "load continues after Postgres is back"
    );
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    sampler.await.unwrap();
    let load_for = started.elapsed();
    let total = n();

    let db = app.state.db.clone();
    let drained = Instant::now();
    let all_in = eventually(Duration::from_secs(60), || async {
        rows(&db, "outage").await >= total
    })
    .await;
    let logged = rows(&db, "outage").await;
    println!(
        "postgres outage: {total} answered requests in {load_for:.1?} ({during_outage} while Postgres \
         was down for {down_for:.1?}; {} client errors, {} non-200), {logged} rows in request_logs \
         ({:.1?} after the load ended), spool peak {} bytes, spool now {} bytes",
        failed.load(Ordering::Relaxed),
        non_200.load(Ordering::Relaxed),
        drained.elapsed(),
        peak.load(Ordering::Relaxed),
        spool_bytes(&data_dir),
    );
    assert!(all_in, "every answered request reaches request_logs");
    assert_eq!(logged, total, "no row lost, none written twice");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no client request failed"
    );
    assert!(
        peak.load(Ordering::Relaxed) > 0,
        "the outage went through the spool"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            spool_bytes(&data_dir) == 0
        })
        .await,
        "the replayed spool is truncated"
    );
}

both!(
    request_events_queued_at_shutdown_are_in_the_database_after_the_app_stops,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        // More than two batches, queued faster than any insert: they are in the queue when the
        // shutdown flush starts.
        for n in 0..1_200 {
            app.state.events.request(event("flushed", n));
        }
        app.state
            .events
            .flush_and_close(Duration::from_secs(30))
            .await;
        let db = app.state.db.clone();
        drop(app);
        assert_eq!(rows(&db, "flushed").await, 1_200);
    }
);

both!(
    a_shutdown_cuts_the_log_writers_linger_short_instead_of_outwaiting_the_flush,
    |b: Backend| async move {
        let shared = Shared::new(b).await;
        let mut c = shared.config.clone();
        // A linger far longer than the flush may take: only a cut-short linger writes in time.
        c.log.flush_interval_ms = 600_000;
        let app = TestApp::spawn_with(&c).await;
        // The writer takes the first event at once and lingers on it; the rest queue behind.
        for n in 0..50 {
            app.state.events.request(event("lingered", n));
        }
        app.state
            .events
            .flush_and_close(Duration::from_secs(10))
            .await;
        let db = app.state.db.clone();
        drop(app);
        assert_eq!(rows(&db, "lingered").await, 50);
    }
);

both!(
    a_spool_left_by_a_crashed_process_is_replayed_at_start_without_duplicates,
    |b: Backend| async move {
        let shared = Shared::new(b).await;
        let dir = shared.config.database.data_dir.join("spool");
        std::fs::create_dir_all(&dir).unwrap();
        let lines: Vec<String> = (0..700)
            .map(|n| {
                json!({
                    "id": uuid::Uuid::now_v7(), "ts": chrono::Utc::now(), "service": "crashed",
                    "access_key_id": null, "upstream_key_id": null, "model": "m",
                    "path": "v1/chat/completions", "status": 200, "attempts": 1,
                    "latency_ms": n, "ttft_ms": null, "tokens": {"prompt": 3, "completion": 1},
                    "error_kind": null, "streamed": false,
                    "client_format": "openai", "upstream_format": "openai"
                })
                .to_string()
            })
            .collect();
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(dir.join("requests.ndjson"), &text).unwrap();
        // The crashed process had replayed the first 200 before it died, without truncating.
        {
            let db = keygate::db::connect(&shared.config.database).await.unwrap();
            let spool = keygate::events::spool::Spool::open(&dir, 1 << 20).unwrap();
            let (first, _) = spool.peek(200).unwrap();
            drop(spool);
            keygate::db::entity::request_log::Entity::insert_many(
                first.iter().map(keygate::db::log_rows::row),
            )
            .exec_without_returning(&db)
            .await
            .unwrap();
            assert_eq!(rows(&db, "crashed").await, 200);
            db.close().await.unwrap();
        }
        let app = TestApp::spawn_with(&shared.config).await;
        let db = app.state.db.clone();
        let replayed = eventually(Duration::from_secs(20), || async {
            rows(&db, "crashed").await >= 700
        })
        .await;
        assert!(replayed, "spooled events reach the database");
        assert_eq!(rows(&db, "crashed").await, 700);
        assert!(
            eventually(Duration::from_secs(5), || async {
                std::fs::metadata(dir.join("requests.ndjson"))
                    .map(|m| m.len())
                    .unwrap_or(1)
                    == 0
            })
            .await,
            "the replayed spool is truncated"
        );
    }
);

/// Counts UPDATEs of each upstream key in a table of the test's own database.
async fn count_key_updates(db: &DatabaseConnection) {
    let sql: &[&str] = match db.get_database_backend() {
        DbBackend::Postgres => &[
            "CREATE TABLE key_writes (key_id BIGINT NOT NULL)",
            "CREATE FUNCTION count_key_write() RETURNS trigger AS $$ BEGIN \
             INSERT INTO key_writes VALUES (NEW.id); RETURN NULL; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER count_key_write AFTER UPDATE ON upstream_keys \
             FOR EACH ROW EXECUTE FUNCTION count_key_write()",
        ],
        _ => &[
            "CREATE TABLE key_writes (key_id INTEGER NOT NULL)",
            "CREATE TRIGGER count_key_write AFTER UPDATE ON upstream_keys \
             BEGIN INSERT INTO key_writes VALUES (NEW.id); END",
        ],
    };
    for s in sql {
        db.execute_unprepared(s).await.unwrap();
    }
}

async fn key_writes(db: &DatabaseConnection, id: i64) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM key_writes WHERE key_id = {id}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn key(db: &DatabaseConnection, id: i64) -> keygate::db::entity::upstream_key::Model {
    keygate::db::entity::upstream_key::Entity::find_by_id(id)
        .one(db)
        .await
        .unwrap()
        .unwrap()
}

both!(
    many_faults_on_one_key_within_a_second_make_at_most_two_writes_and_the_last_one_wins,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        app.with_service("flaky", &up.base, &["sk-flaky-key-01"])
            .await;
        let db = app.state.db.clone();
        let id = keygate::db::entity::upstream_key::Entity::find()
            .one(&db)
            .await
            .unwrap()
            .unwrap()
            .id;
        count_key_updates(&db).await;
        let change = |status, reason: String| keygate::events::KeyStatusChange {
            key_id: id,
            status,
            reason,
            epoch: 0,
        };
        // The first fault of the key is written at once and opens a one-second window.
        app.state
            .events
            .key_status(change(None, "server_error 0".into()));
        assert!(
            eventually(Duration::from_secs(5), || async {
                key_writes(&db, id).await == 1
            })
            .await,
            "the first change is written without waiting"
        );
        // An upstream outage inside that window: a fault per request, one of them durable.
        for n in 1..200 {
            app.state
                .events
                .key_status(change(None, format!("server_error {n}")));
        }
        app.state
            .events
            .key_status(change(Some("invalid"), "invalid".into()));
        // A later transient fault must not undo the durable status it follows.
        app.state
            .events
            .key_status(change(None, "server_error last".into()));
        let persisted = eventually(Duration::from_secs(5), || async {
            let k = key(&db, id).await;
            k.status == "invalid" && k.last_error.as_deref() == Some("server_error last")
        })
        .await;
        let writes = key_writes(&db, id).await;
        println!("[{b:?}] 202 key status changes -> {writes} database writes");
        assert!(persisted, "the final status and reason are persisted");
        assert!((1..=2).contains(&writes), "{writes} writes");

        // A change still inside its one-second window is written by the shutdown flush.
        app.state
            .events
            .key_status(change(Some("exhausted"), "quota".into()));
        app.state
            .events
            .flush_and_close(Duration::from_secs(10))
            .await;
        let k = key(&db, id).await;
        assert_eq!(
            (k.status.as_str(), k.last_error.as_deref()),
            ("exhausted", Some("quota"))
        );
        let text = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("keygate_key_status_writes_total"),
            "the write counter is exported"
        );
    }
);

both!(
    a_fault_queued_before_a_key_is_put_back_is_never_written_over_it,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        app.with_service("back", &up.base, &["sk-back-key-000001"])
            .await;
        let db = app.state.db.clone();
        let id = keygate::db::entity::upstream_key::Entity::find()
            .one(&db)
            .await
            .unwrap()
            .unwrap()
            .id;
        let ev = &app.state.events;
        let change = |status, reason: &str| keygate::events::KeyStatusChange {
            key_id: id,
            status,
            reason: reason.into(),
            epoch: 0,
        };
        // The first change opens the one-second window; the durable one waits inside it.
        ev.key_status(change(None, "server_error"));
        assert!(
            eventually(Duration::from_secs(5), || async {
                key(&db, id).await.last_error.as_deref() == Some("server_error")
            })
            .await
        );
        ev.key_status(change(Some("invalid"), "invalid"));
        // The operator re-enables the key before the window ends (what PATCH status=active and a
        // validation that finds the key answering do).
        ev.key_reset(id);
        ev.key_status(change(None, "after the reset"));
        assert!(
            eventually(Duration::from_secs(5), || async {
                key(&db, id).await.last_error.as_deref() == Some("after the reset")
            })
            .await,
            "changes after the reset are written"
        );
        assert_eq!(
            key(&db, id).await.status,
            "active",
            "the stale fault was dropped"
        );
    }
);
