//! Two replicas sharing one Postgres and one Redis: rotation is exact across them and a change made
//! through one reaches the other's data plane within 2 s. The same on a real 3-primary Redis
//! Cluster (`redis.cluster = true`): rotation, an access key's and a key's rpm, and a budget stay
//! exact across two replicas while the state is spread over the primaries.
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock;
use crate::servers::redis_cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_rotate_exactly_and_share_config_changes() {
    let up = mock::start().await;
    let shared = Shared::new(Backend::Postgres).await;
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    let ak = a
        .with_service(
            "pool",
            &up.base,
            &["sk-repl-aaaa-1", "sk-repl-bbbb-2", "sk-repl-cccc-3"],
        )
        .await;

    // B learns about the service and the access key from A's change.
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.chat("pool", &ak).await.status() == 200
        })
        .await,
        "replica B serves the slug created on A within 2 s"
    );
    let before = up.mock.counts();
    for i in 0..300 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.chat("pool", &ak).await.status(), 200);
    }
    let after = up.mock.counts();
    let per_key: Vec<(String, usize)> = ["sk-repl-aaaa-1", "sk-repl-bbbb-2", "sk-repl-cccc-3"]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                after.get(*k).copied().unwrap_or(0) - before.get(*k).copied().unwrap_or(0),
            )
        })
        .collect();
    println!("two replicas, 300 alternating requests, per key: {per_key:?}");
    for (k, n) in &per_key {
        assert_eq!(*n, 100, "key {k}: {per_key:?}");
    }

    // A key added through A's admin API is used by B within 2 s.
    let t0 = Instant::now();
    a.add_keys("pool", &["sk-repl-new-4444"]).await;
    let used = eventually(Duration::from_secs(2), || async {
        assert_eq!(b.chat("pool", &ak).await.status(), 200);
        up.mock.counts().contains_key("sk-repl-new-4444")
    })
    .await;
    println!("key added on A first used via B after {:?}", t0.elapsed());
    assert!(used, "replica B used the new key within 2 s");
    for s in up
        .mock
        .seen()
        .iter()
        .filter(|s| s.key == "sk-repl-new-4444")
    {
        assert_eq!(s.path, "/v1/chat/completions");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_marked_invalid_on_one_replica_is_skipped_by_the_other() {
    let up = mock::start().await;
    up.mock
        .set("sk-shared-bad-401", mock::Behaviour::Status(401, None));
    let shared = Shared::new(Backend::Postgres).await;
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    let ak = a
        .with_service("mark", &up.base, &["sk-shared-bad-401", "sk-shared-good-1"])
        .await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.chat("mark", &ak).await.status() == 200
        })
        .await
    );
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.chat("mark", &ak).await.status(), 200);
    }
    assert_eq!(
        up.mock.counts()["sk-shared-bad-401"],
        1,
        "marked once, skipped by both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_a_fresh_database_both_come_up() {
    let shared = Shared::new(Backend::Postgres).await;
    let (a, b) = tokio::join!(
        keygate::App::build(shared.config.clone()),
        keygate::App::build(shared.config.clone())
    );
    let (a, b) = (a.expect("replica A starts"), b.expect("replica B starts"));
    let users = keygate::db::users::count(&a.state().db).await.unwrap();
    assert_eq!(users, 1, "one bootstrap admin, not two");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_rotation_and_rate_limits_are_exact_across_two_replicas() {
    use serde_json::json;
    let up = mock::start().await;
    let shared = Shared::new(Backend::Postgres).await;
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    crate::pool::service(
        &a,
        "wx",
        &up.base,
        json!({"strategy": "weighted"}),
        &[
            ("sk-wx-1-aaaa", 1),
            ("sk-wx-2-bbbb", 2),
            ("sk-wx-3-cccc", 3),
        ],
    )
    .await;
    let ak = a.access_key().await;
    let limited = crate::pool::access_key(&a, json!({"rpm": 10})).await;
    // Replica B has the slug and both access keys once `limited` gets its first 200 there (only
    // a 200 spends from its budget).
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.chat("wx", &limited).await.status() == 200
        })
        .await
    );
    let first_spent = std::time::Instant::now();
    let before = up.mock.counts();
    for i in 0..600 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.chat("wx", &ak).await.status(), 200);
    }
    let after = up.mock.counts();
    let got: Vec<usize> = ["sk-wx-1-aaaa", "sk-wx-2-bbbb", "sk-wx-3-cccc"]
        .iter()
        .map(|k| after[*k] - before.get(*k).copied().unwrap_or(0))
        .collect();
    println!("two replicas, weighted 1/2/3, 600 alternating requests: {got:?}");
    assert_eq!(got, vec![100, 200, 300]);
    // rpm 10 (one was used above to wait for replica B): 9 more, then refusals, on either replica.
    let mut ok = 0;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        match app.chat("wx", &limited).await.status().as_u16() {
            200 => ok += 1,
            429 => {}
            s => panic!("{s}"),
        }
    }
    // GCRA gives one request back every 6 s: on a loaded machine the 600 requests above may take
    // that long, and exactly that many more are then admitted.
    let refilled = (first_spent.elapsed().as_secs() / 6) as usize;
    assert!(
        (9..=9 + refilled).contains(&ok),
        "10 per minute across both replicas: {ok} admitted, {refilled} refilled"
    );
}

/// Two replicas on one Postgres and the 3-primary Redis Cluster.
async fn on_cluster() -> (Shared, TestApp, TestApp) {
    let mut shared = Shared::new(Backend::Postgres).await;
    shared.config.redis.url = Some(secrecy::SecretString::from(redis_cluster().to_string()));
    shared.config.redis.cluster = true;
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    (shared, a, b)
}

/// Waits until replica B loaded the config A has now.
async fn same_config(a: &TestApp, b: &TestApp) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.state.snapshot.load().version == a.state.snapshot.load().version
        })
        .await,
        "replica B loads A's config"
    );
}

/// How many of this test's Redis keys (by its prefix) each primary holds.
async fn keys_per_node(shared: &Shared) -> Vec<usize> {
    let prefix = &shared.config.redis.prefix;
    let mut out = Vec::new();
    for url in redis_cluster().split(',') {
        let client = redis::Client::open(url).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut c)
            .await
            .unwrap();
        out.push(keys.len());
    }
    out
}

async fn key_id(app: &TestApp, slug: &str, key: &str) -> i64 {
    let (s, v) = app
        .admin("GET", &format!("/admin/services/{slug}/keys"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let items = v.get("items").unwrap_or(&v).as_array().unwrap().clone();
    let masked = keygate::crypto::mask(key);
    items
        .iter()
        .find(|k| k["key"] == masked.as_str())
        .and_then(|k| k["id"].as_i64())
        .unwrap_or_else(|| panic!("key {masked} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_round_robin_across_two_replicas_gives_each_key_exactly_its_share() {
    let up = mock::start().await;
    let (shared, a, b) = on_cluster().await;
    let names = ["sk-clu-rr-aaaa-1", "sk-clu-rr-bbbb-2", "sk-clu-rr-cccc-3"];
    // Three services: their state lands in three slots, on more than one primary.
    let ak = a.with_service("clu", &up.base, &names).await;
    a.with_service("clu2", &up.base, &["sk-clu-two-dddd-4"])
        .await;
    a.with_service("clu3", &up.base, &["sk-clu-three-eeee-5"])
        .await;
    same_config(&a, &b).await;
    for i in 0..300 {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.chat("clu", &ak).await.status(), 200);
    }
    for (i, slug) in ["clu2", "clu3"].iter().enumerate() {
        let app = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.chat(slug, &ak).await.status(), 200);
    }
    let counts = up.mock.counts();
    let per_key: Vec<usize> = names.iter().map(|k| counts[*k]).collect();
    let nodes = keys_per_node(&shared).await;
    println!(
        "redis cluster, two replicas, 300 alternating round-robin requests, per key: {per_key:?}; keygate keys per primary: {nodes:?}"
    );
    assert_eq!(per_key, vec![100, 100, 100]);
    assert!(
        nodes.iter().filter(|n| **n > 0).count() >= 2,
        "the state is spread over the primaries: {nodes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_an_access_key_rpm_and_a_key_rpm_each_admit_exactly_n_across_two_replicas()
 {
    let up = mock::start().await;
    let (_shared, a, b) = on_cluster().await;
    a.with_service("lim", &up.base, &["sk-clu-lim-aaaa-1", "sk-clu-lim-bbbb-2"])
        .await;
    let limited = crate::pool::access_key(&a, json!({"rpm": 10})).await;
    // A service of one key limited to 6 rpm, used by an access key without limits.
    let free = a
        .with_service("krpm", &up.base, &["sk-clu-krpm-cccc-3"])
        .await;
    let id = key_id(&a, "krpm", "sk-clu-krpm-cccc-3").await;
    let (s, v) = a
        .admin(
            "PATCH",
            &format!("/admin/services/krpm/keys/{id}"),
            Some(json!({"rpm": 6})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    same_config(&a, &b).await;
    let started = Instant::now();
    let mut client_ok = 0;
    let mut key_ok = 0;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        match app.chat("lim", &limited).await.status().as_u16() {
            200 => client_ok += 1,
            429 => {}
            s => panic!("access key limited: {s}"),
        }
        let s = app.chat("krpm", &free).await.status().as_u16();
        if s == 200 {
            key_ok += 1;
        }
    }
    // GCRA gives one request back every 6 s (access key) or 10 s (key): a slow run may see that.
    let secs = started.elapsed().as_secs() as usize;
    println!(
        "redis cluster, two replicas, 20 alternating requests each: access key rpm 10 admitted {client_ok}, key rpm 6 admitted {key_ok} (in {secs} s)"
    );
    assert!(
        (10..=10 + secs / 6).contains(&client_ok),
        "access key rpm 10: {client_ok}"
    );
    assert!((6..=6 + secs / 10).contains(&key_ok), "key rpm 6: {key_ok}");
    let counts = up.mock.counts();
    assert_eq!(
        counts["sk-clu-krpm-cccc-3"], key_ok,
        "refused requests never reach the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_budget_is_exact_across_two_replicas_under_concurrency() {
    let up = mock::start().await;
    let (_shared, a, b) = on_cluster().await;
    a.create_service("oa", "openai", &up.base).await;
    a.add_keys("oa", &["sk-clu-budget-0001", "sk-clu-budget-0002"])
        .await;
    let (s, v) = a
        .admin(
            "POST",
            "/admin/pricing",
            Some(json!({"pattern": "*", "per_request": 0.08})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = a
        .admin(
            "POST",
            "/admin/access-keys",
            Some(json!({"name": "budgeted", "budget": 0.8})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ak = v["key"].as_str().unwrap().to_string();
    same_config(&a, &b).await;
    // 20 requests at once, half on each replica: exactly 10 fit the budget.
    let calls = (0..20).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let ak = ak.clone();
        async move { app.chat("oa", &ak).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    println!(
        "redis cluster, two replicas, budget for 10 requests, 20 at once: {ok} answered, {refused} refused"
    );
    assert_eq!((ok, refused), (10, 10), "{statuses:?}");
    assert_eq!(up.mock.seen().len(), 10);
}

/// `calls` of a command in `INFO commandstats` (0 if never called).
async fn calls(url: &str, command: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// On one primary the access key's side rides on the key's script call (`acquire_client_v1`):
/// one round trip either way. (A cluster needs two: the sides hash to different slots.)
async fn on_one_primary_an_acquire_is_one_script_call_even_when_the_access_key_has_limits() {
    use keygate::coord::redis::{RedisStore, Topology};
    use keygate::coord::{Acquire, AcquireReq, ClientLimits, Coord, KeySet, KeySpec, Strategy};
    // A Redis of this test's own: nobody else's calls in its statistics.
    let redis = crate::servers::OwnRedis::start();
    let url = redis.url();
    let store = RedisStore::connect(
        &url,
        Topology::Single,
        "rt:",
        crate::contract::policy(),
        keygate::coord::outage::OnOutage::Degrade,
    )
    .await
    .unwrap();
    let coord = Coord::Redis(store);
    let keys = KeySet::new(
        (1..=3)
            .map(|id| KeySpec {
                id,
                weight: 1,
                rpm: None,
                tpm: None,
                balance: None,
                cost_ppm: 1_000_000,
            })
            .collect(),
    );
    let mut req = AcquireReq {
        service_id: 1,
        strategy: Strategy::RoundRobin,
        keys: &keys,
        excluded: &[],
        cap: None,
        lease_ttl_ms: 60_000,
        client: Some(ClientLimits {
            access_key_id: 5,
            rpm: None,
            rpd: None,
            tpm: None,
            budget: None,
            spent: 0,
        }),
        price: None,
        session: None,
        reserve: 0,
    };
    let scripts = || async { calls(&url, "evalsha").await + calls(&url, "eval").await };
    let before = scripts().await;
    assert!(matches!(
        coord.acquire(&req).await.unwrap(),
        Acquire::Granted { .. }
    ));
    let unlimited = scripts().await - before;
    req.client = Some(ClientLimits {
        rpm: Some(100),
        budget: Some(1_000_000),
        ..req.client.unwrap()
    });
    let before = scripts().await;
    assert!(matches!(
        coord.acquire(&req).await.unwrap(),
        Acquire::Granted { .. }
    ));
    let limited = scripts().await - before;
    println!(
        "script calls per acquire: {unlimited} for an access key without limits, {limited} with rpm and a budget"
    );
    assert_eq!((unlimited, limited), (1, 1));
}
