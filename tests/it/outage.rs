//! A Redis outage under load: the data plane keeps serving (degraded: each replica coordinates
//! in process with its share of the limits), says so once, and goes back to Redis by itself; or,
//! fail-closed, refuses at once in the client's format.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use keygate::coord::outage::OnOutage;
use secrecy::SecretString;
use serde_json::json;

use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock;
use crate::servers::{OwnPostgres, OwnRedis, OwnRedisCluster};

async fn ready(app: &TestApp) -> (u16, serde_json::Value) {
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn shared_on(redis: &OwnRedis, on_outage: OnOutage) -> Shared {
    let mut s = Shared::new(Backend::Postgres).await;
    s.config.redis.url = Some(SecretString::from(redis.url()));
    s.config.redis.on_outage = on_outage;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_keep_serving_through_a_redis_outage_with_their_share_of_limits_and_return() {
    let up = mock::start().await;
    let mut redis = OwnRedis::start();
    let shared = shared_on(&redis, OnOutage::Degrade).await;
    let a = Arc::new(TestApp::spawn_with(&shared.config).await);
    let b = Arc::new(TestApp::spawn_with(&shared.config).await);
    let ak = a
        .with_service(
            "steady",
            &up.base,
            &["sk-outage-key-0001", "sk-outage-key-0002"],
        )
        .await;
    let (s, limited) = a
        .admin(
            "POST",
            "/admin/access-keys",
            Some(json!({"name": "ten", "rpm": 10})),
        )
        .await;
    assert_eq!(s, 201, "{limited}");
    let limited = limited["key"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.state.coord.replicas() == 2 && b.state.coord.replicas() == 2
        })
        .await,
        "each replica learns there are two"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.chat("steady", &ak).await.status() == 200
        })
        .await,
        "the second replica has the slug"
    );

    // Load on both replicas for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for app in [a.clone(), b.clone()] {
        let (stop, ok, failed, ak) = (stop.clone(), ok.clone(), failed.clone(), ak.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = app.chat("steady", &ak).await.status();
                if status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let served = |n: u64| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + n;
            eventually(Duration::from_secs(10), || async {
                ok.load(Ordering::Relaxed) >= target
            })
            .await
        }
    };
    assert!(served(20).await);

    redis.down();
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.state.coord.degraded() && b.state.coord.degraded()
        })
        .await,
        "both replicas notice the outage"
    );
    assert!(
        served(50).await,
        "requests keep being answered during the outage"
    );
    let (status, body) = ready(&a).await;
    assert_eq!(
        status, 200,
        "a degraded replica stays in the load balancer: {body}"
    );
    assert_eq!(body["coordination"], "degraded");
    // The access key's 10 a minute, split over two replicas: five on this one.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(a.chat("steady", &limited).await.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);

    redis.up();
    assert!(
        eventually(Duration::from_secs(10), || async {
            !a.state.coord.degraded() && !b.state.coord.degraded()
        })
        .await,
        "both replicas go back to Redis by themselves"
    );
    assert!(served(20).await);
    assert!(redis.keys().await > 0, "requests coordinate in Redis again");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed before, during or after"
    );
    // Requests served in process still reach the keys' statistics.
    keygate::jobs::persist::flush(&a.state).await;
    keygate::jobs::persist::flush(&b.state).await;
    let (_, keys) = a.admin("GET", "/admin/services/steady/keys", None).await;
    let total: i64 = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["successes"].as_i64().unwrap())
        .sum();
    assert!(total >= 90, "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_in_the_clients_format_during_an_outage_and_serves_after() {
    let up = mock::start().await;
    let mut redis = OwnRedis::start();
    let shared = shared_on(&redis, OnOutage::Fail).await;
    let app = TestApp::spawn_with(&shared.config).await;
    let ak = app
        .with_service("strict", &up.base, &["sk-outage-key-0003"])
        .await;
    assert_eq!(app.chat("strict", &ak).await.status(), 200);
    redis.down();
    let r = app.chat("strict", &ak).await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].is_string(),
        "OpenAI error shape: {body}"
    );
    assert!(app.state.coord.degraded());
    let (status, body) = ready(&app).await;
    assert_eq!(
        (status, &body["coordination"]),
        (503, &json!("down")),
        "{body}"
    );
    for _ in 0..5 {
        assert_eq!(app.chat("strict", &ak).await.status(), 503);
    }
    redis.up();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.chat("strict", &ak).await.status() == 200
        })
        .await,
        "served again once Redis answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_the_admin_api_and_readyz_say_so_at_once_while_the_data_plane_serves() {
    let pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let admin = sea_orm::Database::connect(format!("{}/postgres", pg.base))
        .await
        .unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(&admin, "CREATE DATABASE keygate")
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut shared = Shared::new(Backend::Postgres).await;
    shared.config.database.url = Some(format!("{}/keygate", pg.base).into());
    let up = mock::start().await;
    let app = TestApp::spawn_with(&shared.config).await;
    let ak = app
        .with_service("pgless", &up.base, &["sk-outage-key-0004"])
        .await;
    assert_eq!(ready(&app).await.0, 200);

    let pg = Arc::new(pg);
    let stopper = pg.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.state.db_health.is_down()
        })
        .await,
        "the probe notices"
    );
    let (status, body) = ready(&app).await;
    assert_eq!((status, &body["database"]), (503, &json!("down")), "{body}");
    let r = app
        .http
        .get(app.url("/admin/services"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = r.json().await.unwrap();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("database is unreachable"),
        "{p}"
    );
    // The data plane serves from its snapshot.
    for _ in 0..5 {
        assert_eq!(app.chat("pgless", &ak).await.status(), 200);
    }

    let starter = pg.clone();
    tokio::task::spawn_blocking(move || starter.restart())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            ready(&app).await.0 == 200
        })
        .await,
        "ready again once the database answers"
    );
    let (s, _) = app.admin("GET", "/admin/services", None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_a_redis_cluster_keeps_serving_while_the_cluster_is_down_and_returns_to_it() {
    let up = mock::start().await;
    let mut cluster = OwnRedisCluster::start();
    let mut shared = Shared::new(Backend::Postgres).await;
    shared.config.redis.url = Some(SecretString::from(cluster.url()));
    shared.config.redis.cluster = true;
    let app = TestApp::spawn_with(&shared.config).await;
    let ak = app
        .with_service(
            "clu-out",
            &up.base,
            &["sk-clu-out-key-0001", "sk-clu-out-key-0002"],
        )
        .await;
    for _ in 0..5 {
        assert_eq!(app.chat("clu-out", &ak).await.status(), 200);
    }
    assert!(!app.state.coord.degraded());

    cluster.down();
    let t0 = std::time::Instant::now();
    let during = std::sync::Mutex::new(Vec::new());
    assert!(
        eventually(Duration::from_secs(10), || async {
            let s = app.chat("clu-out", &ak).await.status().as_u16();
            during.lock().unwrap().push(s);
            app.state.coord.degraded()
        })
        .await,
        "the replica notices the cluster is gone"
    );
    let mut statuses = during.into_inner().unwrap();
    for _ in 0..10 {
        statuses.push(app.chat("clu-out", &ak).await.status().as_u16());
    }
    println!(
        "redis cluster down: degraded after {:?}, statuses during the outage {statuses:?}",
        t0.elapsed()
    );
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    cluster.up();
    let t1 = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || async {
            assert_eq!(app.chat("clu-out", &ak).await.status(), 200);
            !app.state.coord.degraded()
        })
        .await,
        "the replica goes back to the cluster by itself"
    );
    println!(
        "redis cluster back: coordinating in it again after {:?}",
        t1.elapsed()
    );
    for _ in 0..5 {
        assert_eq!(app.chat("clu-out", &ak).await.status(), 200);
    }
    assert!(!app.state.coord.degraded());
    assert!(
        cluster.keys().await > 0,
        "requests coordinate in the cluster again"
    );
}
