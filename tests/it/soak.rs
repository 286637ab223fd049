//! Soak: three replicas (the real binary) on one Postgres and one Redis under steady load. Mid-run
//! one replica is stopped (SIGTERM, as an orchestrator does) and Redis is restarted. Afterwards
//! every answered request is logged exactly once, the statistics count exactly the logged rows,
//! and no lease is left held. `KEYGATE_SOAK_SECS` sets the length (default 60 s).
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{Value, json};

use crate::harness::eventually;
use crate::mock;
use crate::procs::{Proc, enterprise_env, fresh_database};
use crate::servers::OwnRedis;

const KEYS: [&str; 4] = [
    "sk-soak-key-000001",
    "sk-soak-key-000002",
    "sk-soak-key-000003",
    "sk-soak-key-000004",
];

#[derive(Default)]
struct Tally {
    /// Requests that got an HTTP answer (each is logged by the replica that answered).
    answered: AtomicU64,
    ok: AtomicU64,
    /// Answers other than 200, while Redis was down and otherwise.
    errors_outage: AtomicU64,
    errors_other: AtomicU64,
    /// Requests that reached no replica (the stopped one refusing connections): a client retries.
    refused: AtomicU64,
}

async fn sql_count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    let r = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    r.try_get_by_index::<i64>(0).unwrap()
}

async fn coordination(p: &Proc) -> String {
    let r = reqwest::get(format!("{}/readyz", p.base)).await;
    match r {
        Ok(r) => r.json::<Value>().await.map_or(String::new(), |v| {
            v["coordination"].as_str().unwrap_or("").to_string()
        }),
        Err(_) => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_lose_no_log_and_no_lease_through_a_replica_stop_and_a_redis_restart() {
    let secs: u64 = std::env::var("KEYGATE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let up = mock::start().await;
    let mut redis = OwnRedis::start();
    let db_url = fresh_database().await;
    let mut env = enterprise_env(&db_url, &redis.url(), "soak:");
    for (k, v) in [
        ("KEYGATE__JOBS__PERSIST_INTERVAL_MS", "500"),
        ("KEYGATE__PROXY__REFRESH_INTERVAL_MS", "100"),
        ("KEYGATE__SERVER__SHUTDOWN_GRACE_MS", "10000"),
        ("RUST_LOG", "warn"),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    let first = Proc::start(&env).await;
    let ak = first.slug("soak", &up.base, &KEYS).await;
    let mut procs = vec![first, Proc::start(&env).await, Proc::start(&env).await];
    let bases: Vec<String> = procs.iter().map(|p| p.base.clone()).collect();
    let http = reqwest::Client::new();
    let ak2 = ak.clone();
    let chat = move |base: String| {
        let (http, ak) = (http.clone(), ak2.clone());
        async move {
            http.post(format!("{base}/llm/soak/v1/chat/completions"))
                .bearer_auth(&ak)
                .json(
                    &json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}),
                )
                .send()
                .await
        }
    };
    // Each replica serves the slug (its snapshot has it); every answer counts toward the log.
    let warmup = AtomicU64::new(0);
    for base in &bases {
        assert!(
            eventually(Duration::from_secs(10), || async {
                let r = chat(base.clone()).await;
                if r.is_ok() {
                    warmup.fetch_add(1, Ordering::Relaxed);
                }
                r.is_ok_and(|r| r.status() == 200)
            })
            .await,
            "{base} serves the slug"
        );
    }
    let db = Database::connect(&db_url).await.unwrap();
    let before = warmup.load(Ordering::Relaxed) as i64;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let redis_down = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..8usize {
        let (tally, stop, redis_down, bases) = (
            tally.clone(),
            stop.clone(),
            redis_down.clone(),
            bases.clone(),
        );
        let chat = chat.clone();
        load.push(tokio::spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match chat(bases[n % bases.len()].clone()).await {
                    Ok(r) => {
                        tally.answered.fetch_add(1, Ordering::Relaxed);
                        if r.status() == 200 {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        } else if redis_down.load(Ordering::Relaxed) {
                            tally.errors_outage.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.errors_other.fetch_add(1, Ordering::Relaxed);
                        }
                        // Read to the end, so the answer is complete before the next one.
                        let _ = r.bytes().await;
                    }
                    Err(_) => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    let at = |f: f64| started + Duration::from_secs_f64(secs as f64 * f);

    // A third of the way: the third replica is asked to stop, mid-traffic.
    tokio::time::sleep_until(at(1.0 / 3.0).into()).await;
    procs[2].terminate();
    let code = procs[2].exited(Duration::from_secs(20)).await;
    assert_eq!(
        code,
        Some(0),
        "the stopped replica drains and exits cleanly"
    );

    // Two thirds: Redis goes away and comes back.
    tokio::time::sleep_until(at(2.0 / 3.0).into()).await;
    redis_down.store(true, Ordering::Relaxed);
    redis.down();
    let degraded = eventually(Duration::from_secs(10), || async {
        coordination(&procs[0]).await == "degraded" && coordination(&procs[1]).await == "degraded"
    })
    .await;
    assert!(degraded, "the replicas notice the outage");
    let ok_before = tally.ok.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(10), || async {
            tally.ok.load(Ordering::Relaxed) > ok_before + 50
        })
        .await,
        "requests are answered while Redis is down"
    );
    redis.up();
    let back = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            coordination(&procs[0]).await == "ok" && coordination(&procs[1]).await == "ok"
        })
        .await,
        "both go back to Redis"
    );
    let recovery = back.elapsed();
    redis_down.store(false, Ordering::Relaxed);

    tokio::time::sleep_until(at(1.0).into()).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let answered = tally.answered.load(Ordering::Relaxed) as i64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = sql_count(&db, "SELECT count(*) FROM request_logs").await - before;
        if rows >= answered || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all_logged = rows >= answered;
    let (ok, e_out, e_other, refused) = (
        tally.ok.load(Ordering::Relaxed),
        tally.errors_outage.load(Ordering::Relaxed),
        tally.errors_other.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak: {secs} s, 3 replicas (one stopped at {:.0} s), Redis restarted at {:.0} s: \
         {answered} answered ({ok} ok, {e_out} errors while Redis was down, {e_other} other errors), \
         {refused} connections refused by the stopped replica, {rows} rows logged, \
         back on Redis {:.2} s after it returned",
        secs as f64 / 3.0,
        secs as f64 * 2.0 / 3.0,
        recovery.as_secs_f64()
    );
    assert!(all_logged, "logged {rows} of {answered} answered requests");
    assert_eq!(
        rows, answered,
        "each answered request is logged exactly once"
    );
    assert_eq!(e_out + e_other, 0, "no request failed");
    // The statistics count exactly the rows logged.
    let stats = sql_count(
        &db,
        "SELECT CAST(SUM(requests) AS BIGINT) FROM request_stats WHERE grain = 60 AND dim = 's' AND service = 'soak'",
    )
    .await;
    let soak_rows = sql_count(
        &db,
        "SELECT count(*) FROM request_logs WHERE service = 'soak'",
    )
    .await;
    assert_eq!(stats, soak_rows);
    // No lease is left held once the load has stopped.
    let token = procs[0].token().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (none_held, held) = loop {
        let keys = procs[0]
            .admin(&token, "GET", "/admin/services/soak/keys", Value::Null)
            .await;
        let n: u64 = keys["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["in_flight"].as_u64().unwrap())
            .sum();
        if n == 0 || Instant::now() > deadline {
            break (n == 0, keys);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(none_held, "leases left held: {held}");
    procs.truncate(2);
}
