//! Money on the data plane: the cost of each request from its usage and the pricing rules,
//! debits from keys' live balances and access keys' budgets (exact across replicas), the balance
//! strategy's skipping of poor keys, and the flush of live figures to the database.
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock;
use crate::polyglot;

/// A gateway that flushes live money and statistics to the database every 100 ms.
async fn app_with_fast_flush(b: Backend) -> (Shared, TestApp) {
    let mut shared = Shared::new(b).await;
    shared.config.jobs.persist_interval_ms = 100;
    let app = TestApp::spawn_with(&shared.config).await;
    (shared, app)
}

async fn price(app: &TestApp, rule: Value) {
    let (s, v) = app.admin("POST", "/admin/pricing", Some(rule)).await;
    assert_eq!(s, 201, "{v}");
}

async fn access_key_with_budget(app: &TestApp, budget: f64) -> (i64, String) {
    let (s, v) = app
        .admin(
            "POST",
            "/admin/access-keys",
            Some(json!({"name": "budgeted", "budget": budget})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    (
        v["id"].as_i64().unwrap(),
        v["key"].as_str().unwrap().to_string(),
    )
}

async fn chat(app: &TestApp, ak: &str, slug: &str, stream: bool) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/llm/{slug}/v1/chat/completions")))
        .bearer_auth(ak)
        .json(&json!({"model": "gpt-4o", "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

fn db_key(
    app: &TestApp,
) -> impl std::future::Future<Output = Vec<keygate::db::entity::upstream_key::Model>> + '_ {
    use sea_orm::{EntityTrait, QueryOrder};
    async move {
        keygate::db::entity::upstream_key::Entity::find()
            .order_by_asc(keygate::db::entity::upstream_key::Column::Id)
            .all(&app.state.db)
            .await
            .unwrap()
    }
}

/// The fixtures' usage: 1117 prompt tokens (1024 of them cache reads) and 46 completion tokens.
/// At 2.5 / 10 / 1.25 per 1M and 0.08 per request: 93 * 2.5 + 46 * 10 + 1024 * 1.25 = 1972.5
/// micros, rounded once to 1973, plus 80000.
const FIXTURE_COST: i64 = 81_973;

both!(
    a_rule_with_token_and_request_prices_gives_the_exact_cost_over_streams_and_whole_answers,
    |b: Backend| async move {
        let poly = polyglot::start().await;
        let (_shared, app) = app_with_fast_flush(b).await;
        app.create_service("oa", "openai", &format!("{}/openai/v1", poly.base))
            .await;
        app.add_keys("oa", &["sk-oa-money-key-0001"]).await;
        price(
            &app,
            json!({"pattern": "gpt-4o*", "input_per_mtok": 2.5, "output_per_mtok": 10,
                "cache_read_per_mtok": 1.25, "per_request": 0.08}),
        )
        .await;
        let (ak_id, ak) = access_key_with_budget(&app, 100.0).await;
        for stream in [false, true, false, true, true, false] {
            let r = chat(&app, &ak, "oa", stream).await;
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            if stream {
                // keygate asked for the usage chunk; the client, which did not, never sees it.
                assert!(!text.contains("\"choices\":[]"), "{text}");
                let sent: Value = serde_json::from_slice(&poly.mock.last().body).unwrap();
                assert_eq!(sent["stream_options"]["include_usage"], true);
            }
        }

        use keygate::db::entity::request_log::{Column, Entity};
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let db = app.state.db.clone();
        let logged = eventually(Duration::from_secs(5), || async {
            Entity::find()
                .filter(Column::Service.eq("oa"))
                .all(&db)
                .await
                .unwrap()
                .len()
                == 6
        })
        .await;
        assert!(logged, "six log rows");
        let rows = Entity::find()
            .filter(Column::Service.eq("oa"))
            .all(&db)
            .await
            .unwrap();
        for r in &rows {
            assert_eq!(
                r.cost_micros,
                Some(FIXTURE_COST),
                "streamed: {}",
                r.streamed
            );
            assert_eq!(
                (r.prompt_tokens, r.completion_tokens),
                (Some(1117), Some(46))
            );
        }
        // The access key's spend and the key's statistics reach the database.
        let flushed = eventually(Duration::from_secs(5), || async {
            let ak = keygate::db::entity::access_key::Entity::find_by_id(ak_id)
                .one(&db)
                .await
                .unwrap()
                .unwrap();
            let k = &db_key(&app).await[0];
            ak.spent_micros == 6 * FIXTURE_COST
                && k.cost_total_micros == 6 * FIXTURE_COST
                && k.requests_total == 6
                && k.successes_total == 6
                && k.tokens_total == 6 * 1163
                && k.last_used_at.is_some()
        })
        .await;
        assert!(
            flushed,
            "spend and statistics persisted: {:?}",
            db_key(&app).await[0]
        );
    }
);

both!(
    an_access_key_over_its_budget_is_refused_in_its_clients_format,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        app.create_service("oa", "openai", &up.base).await;
        app.add_keys("oa", &["sk-budget-key-00001"]).await;
        price(&app, json!({"pattern": "*", "per_request": 0.08})).await;
        let (_, ak) = access_key_with_budget(&app, 0.4).await;
        for n in 1..=5 {
            assert_eq!(
                chat(&app, &ak, "oa", false).await.status(),
                200,
                "request {n}"
            );
        }
        let r = chat(&app, &ak, "oa", false).await;
        assert_eq!(r.status(), 429);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");
        let r = app
            .http
            .post(app.url("/llm/oa/v1/messages"))
            .header("x-api-key", &ak)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "m", "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "billing_error", "{v}");
        assert_eq!(
            up.mock.seen().len(),
            5,
            "refused requests never reach the upstream"
        );

        // A budget of 0 admits nothing.
        let (_, none) = access_key_with_budget(&app, 0.0).await;
        assert_eq!(chat(&app, &none, "oa", false).await.status(), 429);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_exhaustion_is_exact_across_two_replicas_under_concurrency() {
    let shared = Shared::new(Backend::Postgres).await;
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    let up = mock::start().await;
    a.create_service("oa", "openai", &up.base).await;
    a.add_keys("oa", &["sk-budget-key-00002", "sk-budget-key-00003"])
        .await;
    price(&a, json!({"pattern": "*", "per_request": 0.08})).await;
    let (_, ak) = access_key_with_budget(&a, 0.8).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.state.snapshot.load().version == a.state.snapshot.load().version
        })
        .await
    );
    // 20 requests at once, half on each replica: exactly 10 fit the budget.
    let calls = (0..20).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let ak = ak.clone();
        async move { chat(app, &ak, "oa", false).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, refused), (10, 10), "{statuses:?}");
    assert_eq!(up.mock.seen().len(), 10);
}

both!(
    the_balance_strategy_skips_a_key_whose_balance_is_below_the_price,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        app.create_service("bal", "openai", &up.base).await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/bal/keys",
                Some(json!({"keys": [
                    {"key": "sk-poor-key-000001", "balance": 0.1},
                    {"key": "sk-rich-key-000001", "balance": 50},
                ]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        app.admin(
            "PATCH",
            "/admin/services/bal",
            Some(json!({"strategy": "balance"})),
        )
        .await;
        price(&app, json!({"pattern": "*", "per_request": 0.3})).await;
        let ak = app.access_key().await;
        for _ in 0..5 {
            assert_eq!(chat(&app, &ak, "bal", false).await.status(), 200);
        }
        let counts = up.mock.counts();
        assert_eq!(counts.get("sk-poor-key-000001"), None, "{counts:?}");
        assert_eq!(counts["sk-rich-key-000001"], 5);
    }
);

both!(
    a_key_whose_balance_runs_out_becomes_exhausted_with_a_reason,
    |b: Backend| async move {
        let up = mock::start().await;
        let (_shared, app) = app_with_fast_flush(b).await;
        app.create_service("bal", "openai", &up.base).await;
        app.admin(
            "POST",
            "/admin/services/bal/keys",
            Some(json!({"keys": [{"key": "sk-thin-key-000001", "balance": 0.1}]})),
        )
        .await;
        price(&app, json!({"pattern": "*", "per_request": 0.08})).await;
        let ak = app.access_key().await;
        // Round robin does not look at balances: the second request takes it below zero.
        assert_eq!(chat(&app, &ak, "bal", false).await.status(), 200);
        assert_eq!(chat(&app, &ak, "bal", false).await.status(), 200);
        assert_eq!(chat(&app, &ak, "bal", false).await.status(), 503);
        assert_eq!(up.mock.seen().len(), 2);
        let persisted = eventually(Duration::from_secs(5), || async {
            let k = &db_key(&app).await[0];
            k.status == "exhausted"
                && k.last_error.as_deref() == Some("balance used up")
                && k.balance_micros == Some(100_000 - 2 * 80_000)
        })
        .await;
        assert!(persisted, "{:?}", db_key(&app).await[0]);
    }
);

both!(
    an_answer_without_usage_is_charged_by_keygates_own_count_and_marked_estimated,
    |b: Backend| async move {
        let up = mock::start().await;
        up.mock.set(
            "sk-nousage-key-0001",
            mock::Behaviour::Chunks {
                n: 20,
                gap: Duration::from_millis(1),
            },
        );
        let app = TestApp::spawn(b).await;
        app.create_service("oa", "openai", &up.base).await;
        app.add_keys("oa", &["sk-nousage-key-0001"]).await;
        price(
            &app,
            json!({"pattern": "*", "input_per_mtok": 1000, "output_per_mtok": 1000}),
        )
        .await;
        let ak = app.access_key().await;
        let r = chat(&app, &ak, "oa", true).await;
        assert_eq!(r.status(), 200);
        r.text().await.unwrap();
        use keygate::db::entity::request_log::{Column, Entity};
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let db = app.state.db.clone();
        let found = eventually(Duration::from_secs(5), || async {
            Entity::find()
                .filter(Column::Service.eq("oa"))
                .one(&db)
                .await
                .unwrap()
                .is_some()
        })
        .await;
        assert!(found);
        let row = Entity::find()
            .filter(Column::Service.eq("oa"))
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert!(row.estimated, "{row:?}");
        let (p, c) = (row.prompt_tokens.unwrap(), row.completion_tokens.unwrap());
        // "hi" in one user message; twenty deltas "t0".."t19".
        assert!((1..=4).contains(&p), "prompt {p}");
        assert!((20..=60).contains(&c), "completion {c}");
        assert_eq!(row.cost_micros, Some((p + c) * 1000));
    }
);
