//! Router slugs, session affinity and the latency / success_rate / cost strategies, through the
//! real gateway: the polyglot mock for cross-format targets, the per-key mock for skewed keys,
//! and a prompt-cache mock that only reports cache reads when a conversation returns to a key.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock::{self, Behaviour};
use crate::polyglot;

async fn chat_as(app: &TestApp, ak: &str, slug: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(&format!("/llm/{slug}/v1/chat/completions")))
        .bearer_auth(ak)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn hi(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// The request-log row of the newest request on `service`, once the writer has stored it.
async fn last_log(app: &TestApp, service: &str) -> keygate::db::entity::request_log::Model {
    use keygate::db::entity::request_log::{Column, Entity};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let row = Entity::find()
            .filter(Column::Service.eq(service))
            .order_by_desc(Column::Ts)
            .one(&app.state.db)
            .await
            .unwrap();
        match row {
            Some(r) => return r,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            None => panic!("no log row for '{service}'"),
        }
    }
}

both!(
    a_router_falls_back_from_a_target_without_keys_to_one_of_another_format,
    |b: Backend| async move {
        let poly = polyglot::start().await;
        let app = TestApp::spawn(b).await;
        // The first target has no key at all; the second speaks Anthropic and maps the name.
        app.create_service("oa-empty", "openai", &format!("{}/openai/v1", poly.base))
            .await;
        app.create_service("an", "anthropic", &format!("{}/anthropic/v1", poly.base))
            .await;
        app.add_keys("an", &["sk-ant-router-key-0001"]).await;
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/an",
                Some(json!({"model_aliases": {"gpt-*": "claude-sonnet-4-5"}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": "r", "kind": "router", "routes": [
                    {"model": "gpt-*", "targets": ["oa-empty", "an"]},
                ]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["routes"][0]["targets"], json!(["oa-empty", "an"]));
        let ak = app.access_key().await;

        let (s, v) = chat_as(&app, &ak, "r", hi("gpt-4o")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["object"], "chat.completion",
            "the OpenAI client gets OpenAI: {v}"
        );
        let call = poly.mock.last();
        assert_eq!(call.path, "/anthropic/v1/messages");
        let sent: Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(
            sent["model"], "claude-sonnet-4-5",
            "the target's alias applies"
        );

        let row = last_log(&app, "r").await;
        assert_eq!(row.target.as_deref(), Some("an"));
        assert_eq!(row.upstream_format.as_deref(), Some("anthropic"));
        assert_eq!(row.model.as_deref(), Some("gpt-4o"));
        assert_eq!(row.status, 200);

        // Streamed, the translated events arrive in the client's grammar.
        let r = app
            .http
            .post(app.url("/llm/r/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(&json!({"model": "gpt-4o", "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains("chat.completion.chunk"), "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }
);

both!(
    a_router_moves_on_when_a_target_fails_and_answers_in_the_clients_format_when_all_do,
    |b: Backend| async move {
        let poly = polyglot::start().await;
        let down = mock::start().await;
        down.mock
            .set("sk-down-key-000001", Behaviour::Status(500, None));
        let app = TestApp::spawn(b).await;
        app.create_service("down", "openai", &down.base).await;
        app.add_keys("down", &["sk-down-key-000001"]).await;
        app.create_service("an", "anthropic", &format!("{}/anthropic/v1", poly.base))
            .await;
        app.add_keys("an", &["sk-ant-router-key-0002"]).await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": "r", "kind": "router", "routes": [
                    {"model": "only-down", "targets": ["down"]},
                    {"model": "*", "targets": ["down", "an"]},
                ]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let ak = app.access_key().await;

        let (s, v) = chat_as(&app, &ak, "r", hi("claude-sonnet-4-5")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            down.mock.counts()["sk-down-key-000001"],
            1,
            "the first target was tried"
        );
        assert_eq!(last_log(&app, "r").await.target.as_deref(), Some("an"));

        // Every target fails: the client gets an error in its own format.
        let (s, v) = chat_as(&app, &ak, "r", hi("only-down")).await;
        assert_eq!(s, 502, "{v}");
        assert!(v["error"]["message"].is_string(), "OpenAI error shape: {v}");
        let r = app
            .http
            .post(app.url("/llm/r/v1/messages"))
            .header("x-api-key", &ak)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "only-down", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "Anthropic error shape: {v}");
    }
);

both!(
    router_routes_are_checked_when_written,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let mock = mock::start().await;
        app.create_service("oa", "openai", &mock.base).await;
        app.create_service("rest1", "rest", &mock.base).await;
        let post = |body: Value| {
            let app = &app;
            async move { app.admin("POST", "/admin/services", Some(body)).await }
        };
        let (s, v) = post(json!({"slug": "r1", "kind": "router",
            "routes": [{"model": "*", "targets": ["oa"]}]}))
        .await;
        assert_eq!(s, 201, "{v}");
        for (body, says) in [
            (
                json!({"slug": "r2", "kind": "router", "routes": [{"model": "*", "targets": ["r1"]}]}),
                "never routes to another",
            ),
            (
                json!({"slug": "r2", "kind": "router", "routes": [{"model": "*", "targets": ["nope"]}]}),
                "no service 'nope'",
            ),
            (
                json!({"slug": "r2", "kind": "router", "routes": [{"model": "*", "targets": ["rest1"]}]}),
                "REST",
            ),
            (
                json!({"slug": "r2", "kind": "router", "routes": [{"model": "*", "targets": ["r2"]}]}),
                "itself",
            ),
            (
                json!({"slug": "r2", "kind": "router", "routes": [{"model": "gpt-[", "targets": ["oa"]}]}),
                "routes[0].model",
            ),
            (
                json!({"slug": "r2", "kind": "router", "routes": []}),
                "at least one route",
            ),
            (
                json!({"slug": "r2", "kind": "router", "base_url": "http://x.example/v1",
                    "routes": [{"model": "*", "targets": ["oa"]}]}),
                "base_url",
            ),
            (
                json!({"slug": "o2", "kind": "openai", "base_url": "http://x.example/v1",
                    "routes": [{"model": "*", "targets": ["oa"]}]}),
                "only a service of kind router",
            ),
            (
                json!({"slug": "o2", "kind": "openai"}),
                "base_url: required",
            ),
        ] {
            let (s, v) = post(body.clone()).await;
            assert_eq!(s, 400, "{body} -> {v}");
            assert!(
                v["detail"].as_str().unwrap().contains(says),
                "{body} -> {v}"
            );
        }
        // A target cannot be deleted from under its router.
        let (s, v) = app.admin("DELETE", "/admin/services/oa", None).await;
        assert_eq!(s, 409, "{v}");
        assert!(v["detail"].as_str().unwrap().contains("r1"), "{v}");
        // A model no route takes is not found, in the client's format.
        let (s, _) = app
            .admin(
                "PATCH",
                "/admin/services/r1",
                Some(json!({"routes": [{"model": "gpt-*", "targets": ["oa"]}]})),
            )
            .await;
        assert_eq!(s, 200);
        let ak = app.access_key().await;
        let (s, v) = chat_as(&app, &ak, "r1", hi("claude-3")).await;
        assert_eq!(s, 404, "{v}");
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
    }
);

/// An OpenAI-compatible upstream with a per-key prompt cache: a conversation's prompt is a cache
/// hit only when it comes back to the key that saw it before.
#[derive(Clone, Default)]
struct CacheMock {
    seen: Arc<Mutex<HashSet<(String, String)>>>,
    hits: Arc<Mutex<usize>>,
    misses: Arc<Mutex<usize>>,
}

async fn cache_upstream(State(m): State<CacheMock>, req: Request) -> axum::Json<Value> {
    let key = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    // The conversation's opening message stands for its cached prefix.
    let prefix = v["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let hit = !m.seen.lock().insert((key, prefix));
    *if hit { &m.hits } else { &m.misses }.lock() += 1;
    axum::Json(json!({
        "id": "c", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101,
            "prompt_tokens_details": {"cached_tokens": if hit { 90 } else { 0 }}}
    }))
}

async fn start_cache_mock() -> (CacheMock, String) {
    let m = CacheMock::default();
    let app = axum::Router::new()
        .fallback(cache_upstream)
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (m, format!("http://127.0.0.1:{port}/v1"))
}

/// Three conversations of five turns each, interleaved and spread over `apps` in turn; each turn
/// names its session the way `how` says. Returns (cache hits, misses) as the upstream saw them.
async fn conversations(
    apps: &[&TestApp],
    ak: &str,
    how: &str,
    cache: &CacheMock,
) -> (usize, usize) {
    let mut n = 0;
    for turn in 0..5 {
        for conv in 0..3 {
            let app = apps[n % apps.len()];
            n += 1;
            let opening = format!("conversation {conv} opening");
            let mut messages = vec![json!({"role": "user", "content": opening})];
            for t in 0..turn {
                messages.push(json!({"role": "assistant", "content": format!("answer {t}")}));
                messages.push(json!({"role": "user", "content": format!("turn {t}")}));
            }
            let session = format!("session-{conv}");
            let mut req = app
                .http
                .post(app.url("/llm/cached/v1/chat/completions"))
                .bearer_auth(ak);
            let mut body = json!({"model": "m", "messages": messages});
            match how {
                "header" => req = req.header("x-session-id", &session),
                "prompt_cache_key" => body["prompt_cache_key"] = json!(session),
                "user" => body["user"] = json!(session),
                _ => {}
            }
            let r = req.json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let (h, m) = (*cache.hits.lock(), *cache.misses.lock());
    (h, m)
}

async fn cached_service(app: &TestApp, base: &str, affinity: &str) -> String {
    app.create_service("cached", "openai", base).await;
    let keys: Vec<String> = (0..4).map(|i| format!("sk-cache-key-00000{i}")).collect();
    app.add_keys(
        "cached",
        &keys.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let (s, v) = app
        .admin(
            "PATCH",
            "/admin/services/cached",
            Some(json!({"affinity": affinity})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["affinity"], affinity);
    app.access_key().await
}

both!(
    session_affinity_keeps_the_providers_prompt_cache_warm,
    |b: Backend| async move {
        for how in ["prompt_cache_key", "header", "user"] {
            let (cache, base) = start_cache_mock().await;
            let app = TestApp::spawn(b).await;
            let ak = cached_service(&app, &base, "session").await;
            let (hits, misses) = conversations(&[&app], &ak, how, &cache).await;
            // Each conversation misses once, on its first turn, then always finds its key.
            assert_eq!((hits, misses), (12, 3), "session named by {how}");
        }
        // Without affinity, round robin scatters the conversations over the keys.
        let (cache, base) = start_cache_mock().await;
        let app = TestApp::spawn(b).await;
        let ak = cached_service(&app, &base, "none").await;
        let (hits, misses) = conversations(&[&app], &ak, "prompt_cache_key", &cache).await;
        // Three conversations over four keys in turn: a turn rarely finds its key again.
        assert!(
            misses > 6,
            "round robin without affinity: {hits} hits, {misses} misses"
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_is_the_same_on_two_replicas_sharing_redis() {
    let shared = Shared::new(Backend::Postgres).await;
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    let (cache, base) = start_cache_mock().await;
    let ak = cached_service(&a, &base, "session").await;
    // The second replica sees the new slug and access key on its next refresh.
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.state.snapshot.load().version == a.state.snapshot.load().version
        })
        .await
    );
    let (hits, misses) = conversations(&[&a, &b], &ak, "prompt_cache_key", &cache).await;
    assert_eq!(
        (hits, misses),
        (12, 3),
        "turns alternate between the replicas"
    );
}

/// Mock hits per key.
fn counts(m: &mock::MockServer) -> HashMap<String, usize> {
    m.mock.counts()
}

/// An app whose circuit breaker never trips, so only the strategy moves traffic.
async fn patient_app(b: Backend) -> (Shared, TestApp) {
    let mut shared = Shared::new(b).await;
    shared.config.proxy.failure_threshold = 1_000_000;
    let app = TestApp::spawn_with(&shared.config).await;
    (shared, app)
}

both!(
    the_latency_success_rate_and_cost_strategies_move_traffic_on_a_skewed_upstream,
    |b: Backend| async move {
        let (_shared, app) = patient_app(b).await;
        let m = mock::start().await;
        m.mock.set(
            "sk-slow-key-000001",
            Behaviour::Slow(Duration::from_millis(150)),
        );
        m.mock
            .set("sk-fail-key-000001", Behaviour::Status(500, None));
        for (slug, keys) in [
            ("lat", ["sk-slow-key-000001", "sk-fast-key-000001"]),
            ("sr", ["sk-fail-key-000001", "sk-good-key-000001"]),
        ] {
            app.create_service(slug, "openai", &m.base).await;
            app.add_keys(slug, &keys).await;
        }
        app.create_service("cheap", "openai", &m.base).await;
        app.add_keys(
            "cheap",
            &[
                "sk-dear-key-000001",
                "sk-half-key-000001",
                "sk-half-key-000002",
            ],
        )
        .await;
        for (slug, strategy) in [
            ("lat", "latency"),
            ("sr", "success_rate"),
            ("cheap", "cost"),
        ] {
            let (s, v) = app
                .admin(
                    "PATCH",
                    &format!("/admin/services/{slug}"),
                    Some(json!({"strategy": strategy})),
                )
                .await;
            assert_eq!(s, 200, "{v}");
        }
        let (_, keys) = app.admin("GET", "/admin/services/cheap/keys", None).await;
        // Listed in the order they were added: the dear key first.
        for (i, k) in keys["items"].as_array().unwrap().iter().enumerate() {
            let factor = if i == 0 { 2.0 } else { 0.5 };
            let (s, v) = app
                .admin(
                    "PATCH",
                    &format!("/admin/services/cheap/keys/{}", k["id"]),
                    Some(json!({"cost_factor": factor})),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["cost_factor"], factor);
        }
        let ak = app.access_key().await;

        for _ in 0..20 {
            assert_eq!(chat_as(&app, &ak, "lat", hi("m")).await.0, 200);
        }
        let slow = counts(&m).get("sk-slow-key-000001").copied().unwrap_or(0);
        assert!(slow <= 3, "the slow key served {slow} of 20");

        // Every request succeeds (a failed attempt is retried on the other key); the failing
        // key is picked less and less.
        for _ in 0..60 {
            assert_eq!(chat_as(&app, &ak, "sr", hi("m")).await.0, 200);
        }
        let failing = counts(&m).get("sk-fail-key-000001").copied().unwrap_or(0);
        assert!(
            failing < 15,
            "the failing key was tried {failing} times in 60 requests"
        );

        for _ in 0..20 {
            assert_eq!(chat_as(&app, &ak, "cheap", hi("m")).await.0, 200);
        }
        let c = counts(&m);
        assert_eq!(
            c.get("sk-dear-key-000001"),
            None,
            "the dear key is never used"
        );
        assert_eq!(c["sk-half-key-000001"], 10);
        assert_eq!(c["sk-half-key-000002"], 10);
    }
);

async fn list(app: &TestApp, ak: &str, slug: &str, client: &str) -> (u16, Value) {
    let req = match client {
        "anthropic" => app
            .http
            .get(app.url(&format!("/llm/{slug}/v1/models")))
            .header("x-api-key", ak)
            .header("anthropic-version", "2023-06-01"),
        "gemini" => app
            .http
            .get(app.url(&format!("/llm/{slug}/v1beta/models")))
            .header("x-goog-api-key", ak),
        _ => app
            .http
            .get(app.url(&format!("/llm/{slug}/v1/models")))
            .bearer_auth(ak),
    };
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn ids(client: &str, v: &Value) -> Vec<String> {
    match client {
        "gemini" => v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["name"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("models/")
                    .to_string()
            })
            .collect(),
        _ => v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect(),
    }
}

both!(
    the_models_list_of_a_slug_is_filtered_by_its_allow_list_adds_aliases_and_is_cached,
    |b: Backend| async move {
        let poly = polyglot::start().await;
        let app = TestApp::spawn(b).await;
        app.create_service("an", "anthropic", &format!("{}/anthropic/v1", poly.base))
            .await;
        app.add_keys("an", &["sk-ant-list-key-0001"]).await;
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/an",
                Some(json!({"model_allow": ["claude-sonnet-*"],
                    "model_aliases": {"sonnet": "claude-sonnet-4-5-20250929", "claude-*": "claude-haiku-4-5-20251001"}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let ak = app.access_key().await;
        let calls = || {
            poly.mock
                .calls
                .lock()
                .iter()
                .filter(|c| c.path.ends_with("/models"))
                .count()
        };
        for client in ["openai", "anthropic", "gemini"] {
            let (s, v) = list(&app, &ak, "an", client).await;
            assert_eq!(s, 200, "{client}: {v}");
            assert_eq!(
                ids(client, &v),
                vec!["claude-sonnet-4-5-20250929", "sonnet"],
                "{client}: the haiku model is not allowed; a wildcard alias cannot be listed"
            );
        }
        assert_eq!(calls(), 1, "three lists, one upstream call");
        // A config change drops the cache.
        app.admin(
            "PATCH",
            "/admin/services/an",
            Some(json!({"model_allow": []})),
        )
        .await;
        let (_, v) = list(&app, &ak, "an", "openai").await;
        assert_eq!(
            ids("openai", &v),
            vec![
                "claude-sonnet-4-5-20250929",
                "claude-haiku-4-5-20251001",
                "sonnet"
            ]
        );
        assert_eq!(calls(), 2);
    }
);

both!(
    a_routers_models_list_is_the_union_of_its_targets_kept_to_its_routes,
    |b: Backend| async move {
        let poly = polyglot::start().await;
        let app = TestApp::spawn(b).await;
        for (slug, kind, prefix) in [
            ("oa", "openai", "/openai/v1"),
            ("an", "anthropic", "/anthropic/v1"),
            ("ge", "gemini", "/gemini/v1beta"),
        ] {
            app.create_service(slug, kind, &format!("{}{prefix}", poly.base))
                .await;
            app.add_keys(slug, &[&format!("sk-{slug}-list-key-0001")])
                .await;
        }
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": "r", "kind": "router",
                "model_aliases": {"best": "claude-sonnet-4-5-20250929"},
                "routes": [
                    {"model": "gpt-*", "targets": ["oa"]},
                    {"model": "claude-*", "targets": ["an", "oa"]},
                ]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let ak = app.access_key().await;
        let (s, v) = list(&app, &ak, "r", "openai").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            ids("openai", &v),
            vec![
                "gpt-4o",
                "claude-sonnet-4-5-20250929",
                "claude-haiku-4-5-20251001",
                "best"
            ],
            "the Gemini target is on no route, and its model no route takes"
        );
        let (s, v) = list(&app, &ak, "r", "gemini").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(ids("gemini", &v).len(), 4);
    }
);
