//! The data-plane pipeline's exits: every request ends in the finaliser exactly once, whether the
//! client cancels, a key hangs, a service points back at keygate, or the coordination store is
//! gone.
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock::{self, Behaviour};
use keygate::db::entity::request_log;

async fn rows(app: &TestApp, slug: &str) -> Vec<request_log::Model> {
    request_log::Entity::find()
        .filter(request_log::Column::Service.eq(slug))
        .all(&app.state.db)
        .await
        .unwrap()
}

/// The slug's log rows once `done` holds for them, or what there is after `within`.
async fn rows_when(
    app: &TestApp,
    slug: &str,
    within: Duration,
    done: impl Fn(&[request_log::Model]) -> bool,
) -> Vec<request_log::Model> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = rows(app, slug).await;
        if done(&got) || std::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

both!(
    a_client_that_cancels_a_stream_is_logged_and_charged_for_the_usage_seen,
    |b: Backend| async move {
        let up = mock::start().await;
        let gate = Arc::new(Notify::new());
        up.mock
            .set("sk-cancel-key-01", Behaviour::UsageThenHold(gate.clone()));
        let app = TestApp::spawn(b).await;
        let ak = app
            .with_service("cancel", &up.base, &["sk-cancel-key-01"])
            .await;
        let mut r = app
            .http
            .post(app.url("/llm/cancel/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(&json!({"model": "gpt-test", "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let first = r.chunk().await.unwrap().expect("a first event");
        assert!(String::from_utf8_lossy(&first).contains("usage"));
        // The client goes away while the upstream is still holding the stream open.
        drop(r);

        let logged = rows_when(&app, "cancel", Duration::from_secs(10), |r| !r.is_empty()).await;
        assert_eq!(
            logged.len(),
            1,
            "the cancelled request reaches the log, once"
        );
        let row = &logged[0];
        assert_eq!(row.status, 200, "the head had gone out");
        assert_eq!(row.error_kind.as_deref(), Some("client_cancelled"));
        assert_eq!(
            (row.prompt_tokens, row.completion_tokens),
            (Some(11), Some(2)),
            "usage seen before the cancel is charged"
        );
        let key_id = row.upstream_key_id.expect("the key is recorded");
        assert!(
            eventually(Duration::from_secs(5), || async {
                let service_id = app.state.snapshot.load().services["cancel"].id;
                let key = keygate::coord::KeyRef::new(service_id, key_id);
                let live = app.state.coord.live_states(&[key]).await.unwrap();
                live[0].inflight == 0
            })
            .await,
            "the lease is released"
        );
        gate.notify_waiters();
    }
);

both!(
    a_hung_key_leaves_rotation_when_the_total_timeout_is_shorter_than_the_request_timeout,
    |b: Backend| async move {
        let up = mock::start().await;
        up.mock
            .set("sk-hung-aaaa-01", Behaviour::Slow(Duration::from_secs(30)));
        let app = TestApp::spawn(b).await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(
                    json!({"slug": "hung", "kind": "openai", "base_url": up.base,
                    "request_timeout_ms": 10_000, "total_timeout_ms": 1_000, "max_attempts": 3}),
                ),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        app.add_keys(
            "hung",
            &["sk-hung-aaaa-01", "sk-hung-bbbb-02", "sk-hung-cccc-03"],
        )
        .await;
        let ak = app.access_key().await;
        for i in 0..9 {
            let r = app.chat("hung", &ak).await;
            assert_eq!(r.status(), 200, "request {i} fails over within its budget");
        }
        let hung_calls = up
            .mock
            .counts()
            .get("sk-hung-aaaa-01")
            .copied()
            .unwrap_or(0);
        assert!(
            (1..=3).contains(&hung_calls),
            "the hung key is tried until it trips, then skipped: {hung_calls} calls"
        );
        let statuses = app.key_statuses("hung").await;
        let hung = statuses
            .iter()
            .find(|(k, _)| *k == keygate::crypto::mask("sk-hung-aaaa-01"))
            .map(|(_, s)| s.as_str());
        assert_eq!(hung, Some("cooling"), "{statuses:?}");
        let logged = rows_when(&app, "hung", Duration::from_secs(5), |r| r.len() == 9).await;
        assert_eq!(logged.len(), 9);
        assert!(
            logged.iter().any(|r| r.attempts == 2),
            "requests that met the hung key were retried on another"
        );
    }
);

both!(
    a_service_pointing_back_at_keygate_gets_508_and_goes_round_once,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let own = format!("{}/llm/selfish/v1", app.base);
        app.create_service("selfish", "openai", &own).await;
        app.add_keys("selfish", &["sk-self-loop-01", "sk-self-loop-02"])
            .await;
        let ak = app.access_key().await;
        let r = app.chat("selfish", &ak).await;
        assert_eq!(r.status(), 508);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "loop_detected", "{v}");
        let logged = rows_when(&app, "selfish", Duration::from_secs(5), |r| r.len() >= 2).await;
        // The client's request and the one that came back round: nothing more.
        assert_eq!(logged.len(), 2, "no amplification");
        assert!(logged.iter().all(|r| r.status == 508));
        let statuses = app.key_statuses("selfish").await;
        assert!(
            statuses.iter().all(|(_, s)| s == "active"),
            "a loop is not the keys' fault: {statuses:?}"
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_because_redis_is_down_fail_closed_is_answered_503_and_logged() {
    let up = mock::start().await;
    let mut redis = crate::servers::OwnRedis::start();
    let mut shared = Shared::new(Backend::Postgres).await;
    shared.config.redis.url = Some(secrecy::SecretString::from(redis.url()));
    shared.config.redis.on_outage = keygate::coord::outage::OnOutage::Fail;
    let app = TestApp::spawn_with(&shared.config).await;
    let ak = app
        .with_service("redisless", &up.base, &["sk-redisless-01"])
        .await;
    assert_eq!(app.chat("redisless", &ak).await.status(), 200);

    redis.down();
    let r = app.chat("redisless", &ak).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_usable_key", "{v}");

    let logged = rows_when(&app, "redisless", Duration::from_secs(10), |r| r.len() == 2).await;
    assert_eq!(logged.len(), 2, "both requests are logged: {logged:?}");
    assert!(
        logged
            .iter()
            .any(|r| r.status == 503 && r.error_kind.as_deref() == Some("no_usable_key"))
    );
}
