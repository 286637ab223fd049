//! Two replicas sharing one Postgres and one Redis: rotation is exact across them and a change made
//! through one reaches the other's data plane within 2 s.
use std::time::{Duration, Instant};

use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock;

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
