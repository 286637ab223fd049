//! Remote balance sync: each adapter against a mock billing API answering as the real one does,
//! a key going out below the minimum and back after a top-up, errors kept without the key, the
//! schedule (once per interval across replicas), and the text import's forms.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};

/// How the mock billing API answers for one key.
#[derive(Clone)]
enum Billing {
    /// The key's balance as decimal text in currency units.
    Balance(&'static str),
    /// OpenRouter: a key without a limit, whose account has these credits and usage.
    Unlimited {
        credits: &'static str,
        usage: &'static str,
    },
    /// 401 with OpenAI's message, which repeats the key.
    Refused,
    /// 200 with an HTML page.
    NotJson,
    /// Answers after this long.
    Slow(Duration),
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    key: String,
    at: std::time::Instant,
}

#[derive(Clone, Default)]
struct Mock(Arc<MockInner>);

#[derive(Default)]
struct MockInner {
    keys: Mutex<HashMap<String, Billing>>,
    seen: Mutex<Vec<Seen>>,
}

impl Mock {
    fn set(&self, key: &str, b: Billing) {
        self.0.keys.lock().insert(key.to_string(), b);
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.seen.lock().clone()
    }

    /// Billing requests `key` made (chat traffic left out).
    fn syncs(&self, key: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.key == key && !s.path.ends_with("/chat/completions"))
            .collect()
    }

    fn chats(&self, key: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.key == key && s.path.ends_with("/chat/completions"))
            .count()
    }
}

/// The key from `Authorization: Bearer` or, for services set up so, `x-api-key`.
fn key_of(h: &HeaderMap) -> String {
    let bearer = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let api_key = h.get("x-api-key").and_then(|v| v.to_str().ok());
    bearer.or(api_key).unwrap_or_default().to_string()
}

/// A JSON number with exactly this decimal text.
fn num(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// `text` plus `micros`, as decimal text (the mock's own arithmetic, exact).
fn plus(text: &str, micros: i64) -> String {
    keygate::money::format_units(keygate::money::parse_units(text).unwrap() + micros)
}

async fn handle(State(mock): State<Mock>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let key = key_of(&parts.headers);
    let path = parts.uri.path().to_string();
    mock.0.seen.lock().push(Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        key: key.clone(),
        at: std::time::Instant::now(),
    });
    if path.ends_with("/chat/completions") {
        return axum::Json(json!({"id": "c", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
        .into_response();
    }
    let billing = mock.0.keys.lock().get(&key).cloned();
    let balance = match billing {
        None | Some(Billing::Refused) => {
            let msg = format!("Incorrect API key provided: {key}.");
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"message": msg, "type": "invalid_request_error"}})),
            )
                .into_response();
        }
        Some(Billing::NotJson) => return "<html>maintenance</html>".into_response(),
        Some(Billing::Slow(d)) => {
            tokio::time::sleep(d).await;
            "1"
        }
        Some(Billing::Unlimited { credits, usage }) => {
            return match path.as_str() {
                "/api/v1/key" => axum::Json(json!({"data": {"label": "sk-or-v1-au7...890",
                    "limit": null, "limit_remaining": null, "usage": num(usage),
                    "is_free_tier": false}})),
                "/api/v1/credits" => axum::Json(json!({"data": {
                    "total_credits": num(credits), "total_usage": num(usage)}})),
                _ => return StatusCode::NOT_FOUND.into_response(),
            }
            .into_response();
        }
        Some(Billing::Balance(b)) => b,
    };
    let body = match path.as_str() {
        // The hard limit is 5 more than the balance, and 500 cents are used.
        "/dashboard/billing/subscription" => json!({"object": "billing_subscription",
            "has_payment_method": true, "soft_limit_usd": num(&plus(balance, 5_000_000)),
            "hard_limit_usd": num(&plus(balance, 5_000_000)),
            "system_hard_limit_usd": num(&plus(balance, 5_000_000)), "access_until": 0}),
        "/dashboard/billing/usage" => json!({"object": "list", "total_usage": 500}),
        "/api/v1/key" => json!({"data": {"label": "sk-or-v1-au7...890",
            "limit": num(&plus(balance, 1_000_000)), "limit_remaining": num(balance), "usage": 1,
            "is_free_tier": false}}),
        "/v1/user/info" => json!({"code": 20000, "message": "OK", "status": true, "data": {
            "id": "u1", "name": "n", "balance": "0.00", "chargeBalance": balance,
            "totalBalance": balance, "status": "normal"}}),
        "/user/balance" => json!({"is_available": true, "balance_infos": [{"currency": "CNY",
            "total_balance": balance, "granted_balance": "0.00",
            "topped_up_balance": balance}]}),
        "/v1/users/me/balance" => json!({"code": 0, "data": {"available_balance": num(balance),
            "voucher_balance": 0, "cash_balance": num(balance)}, "scode": "0x0",
            "status": true}),
        // A reseller's own shape: total and used, 2.5 used.
        "/reseller/wallet" if parts.method == "POST" => json!({"ok": true, "wallet": {
            "total": plus(balance, 2_500_000), "used": 2.5}, "unit": "CNY"}),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    axum::Json(body).into_response()
}

struct MockServer {
    mock: Mock,
    /// `http://127.0.0.1:<port>`
    origin: String,
}

async fn start_mock() -> MockServer {
    let mock = Mock::default();
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    MockServer {
        mock,
        origin: format!("http://127.0.0.1:{port}"),
    }
}

/// A gateway whose sync scheduler looks every 50 ms and accepts a 1 s interval (production:
/// every 5 s, 60 s at least).
fn fast_jobs(shared: &mut Shared) {
    shared.config.jobs.sync_tick_ms = 50;
    shared.config.jobs.sync_min_interval_s = 1;
}

async fn create(app: &TestApp, body: Value) {
    let (s, v) = app.admin("POST", "/admin/services", Some(body)).await;
    assert_eq!(s, 201, "create service: {v}");
}

async fn key_ids(app: &TestApp, slug: &str) -> Vec<i64> {
    let (s, v) = app
        .admin("GET", &format!("/admin/services/{slug}/keys"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_i64().unwrap())
        .collect()
}

async fn key_view(app: &TestApp, slug: &str, id: i64) -> Value {
    let (_, v) = app
        .admin("GET", &format!("/admin/services/{slug}/keys"), None)
        .await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .expect("the key is listed")
}

async fn sync_key(app: &TestApp, slug: &str, id: i64) -> Value {
    let (s, v) = app
        .admin(
            "POST",
            &format!("/admin/services/{slug}/keys/{id}/sync"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn sync_all(app: &TestApp, slug: &str) -> Vec<Value> {
    let (s, v) = app
        .admin("POST", &format!("/admin/services/{slug}/sync"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

/// One adapter against the mock: the service, its key, what the mock holds for it, and what a
/// sync reads and asks for.
struct Case {
    slug: &'static str,
    base: String,
    settings: Value,
    key: &'static str,
    billing: Billing,
    balance: f64,
    currency: Value,
    paths: Vec<&'static str>,
}

both!(
    each_adapter_reads_the_exact_balance_from_its_billing_api,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let up = start_mock().await;
        let o = &up.origin;
        let cases = vec![
            Case {
                slug: "oa",
                base: format!("{o}/v1"),
                settings: json!({"adapter": "openai_billing"}),
                key: "sk-oa-billing-0001",
                billing: Billing::Balance("12.34"),
                balance: 12.34,
                currency: json!("USD"),
                paths: vec![
                    "/dashboard/billing/subscription",
                    "/dashboard/billing/usage",
                ],
            },
            Case {
                slug: "or",
                base: format!("{o}/api/v1"),
                settings: json!({"adapter": "openrouter"}),
                key: "sk-or-v1-limited-01",
                billing: Billing::Balance("74.5"),
                balance: 74.5,
                currency: json!("USD"),
                paths: vec!["/api/v1/key"],
            },
            Case {
                slug: "or-free",
                base: format!("{o}/api/v1"),
                settings: json!({"adapter": "openrouter"}),
                key: "sk-or-v1-unlimited-1",
                billing: Billing::Unlimited {
                    credits: "100.5",
                    usage: "25.75",
                },
                balance: 74.75,
                currency: json!("USD"),
                paths: vec!["/api/v1/key", "/api/v1/credits"],
            },
            Case {
                slug: "sf",
                base: format!("{o}/v1"),
                settings: json!({"adapter": "siliconflow"}),
                key: "sk-sf-user-info-0001",
                billing: Billing::Balance("88.88"),
                balance: 88.88,
                currency: Value::Null,
                paths: vec!["/v1/user/info"],
            },
            Case {
                slug: "ds",
                base: format!("{o}/v1"),
                settings: json!({"adapter": "deepseek"}),
                key: "sk-ds-balance-000001",
                billing: Billing::Balance("110.000001"),
                balance: 110.000001,
                currency: json!("CNY"),
                paths: vec!["/user/balance"],
            },
            Case {
                slug: "ms",
                base: format!("{o}/v1"),
                settings: json!({"adapter": "moonshot"}),
                key: "sk-ms-balance-000001",
                billing: Billing::Balance("49.58894"),
                balance: 49.58894,
                currency: Value::Null,
                paths: vec!["/v1/users/me/balance"],
            },
        ];
        for Case {
            slug,
            base,
            settings,
            key,
            billing,
            balance: want,
            currency,
            paths,
        } in cases
        {
            create(
                &app,
                json!({"slug": slug, "kind": "openai", "base_url": base, "balance_sync": settings}),
            )
            .await;
            app.add_keys(slug, &[key]).await;
            up.mock.set(key, billing);
            let id = key_ids(&app, slug).await[0];
            let r = sync_key(&app, slug, id).await;
            assert_eq!(r["ok"], true, "{slug}: {r}");
            assert_eq!(r["balance"], json!(want), "{slug}: {r}");
            assert_eq!(r["currency"], currency, "{slug}: {r}");
            assert!(r["sync_error"].is_null() && r["balance_synced_at"].is_string());
            assert_eq!(r["key_status_after"], "active");
            let seen = up.mock.syncs(key);
            let got: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
            assert_eq!(got, paths, "{slug}");
            for s in &seen {
                assert_eq!(s.method, "GET");
                assert_eq!(
                    s.headers["authorization"],
                    format!("Bearer {key}"),
                    "{slug}"
                );
            }
            let k = key_view(&app, slug, id).await;
            assert_eq!(k["balance"], json!(want), "{slug}: {k}");
            assert!(
                k["balance_synced_at"].is_string() && k["sync_error"].is_null(),
                "{k}"
            );
        }
        // OpenAI's usage is asked for the month so far.
        let usage = up
            .mock
            .syncs("sk-oa-billing-0001")
            .into_iter()
            .find(|s| s.path == "/dashboard/billing/usage")
            .unwrap();
        let q = usage.query.unwrap();
        assert!(
            q.starts_with("start_date=") && q.contains("&end_date="),
            "{q}"
        );
        assert!(q[11..21].ends_with("-01"), "{q}");

        // A reseller with its own shape, method, path and auth header.
        create(
            &app,
            json!({"slug": "res", "kind": "openai", "base_url": format!("{o}/v1"),
                "auth_header": "x-api-key", "auth_format": "{key}",
                "balance_sync": {"adapter": "custom", "method": "POST",
                    "path": "/reseller/wallet?unit=cny", "total_pointer": "/wallet/total",
                    "used_pointer": "/wallet/used", "currency_pointer": "/unit"}}),
        )
        .await;
        let key = "rs-custom-key-000001";
        app.add_keys("res", &[key]).await;
        up.mock.set(key, Billing::Balance("7.25"));
        let id = key_ids(&app, "res").await[0];
        let r = sync_key(&app, "res", id).await;
        assert_eq!(
            (&r["ok"], &r["balance"]),
            (&json!(true), &json!(7.25)),
            "{r}"
        );
        assert_eq!(r["currency"], "CNY");
        let seen = up.mock.syncs(key);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("POST", "/reseller/wallet")
        );
        assert_eq!(seen[0].query.as_deref(), Some("unit=cny"));
        assert_eq!(seen[0].headers["x-api-key"], key);
        assert!(!seen[0].headers.contains_key("authorization"));
    }
);

both!(
    a_key_below_the_minimum_goes_out_and_comes_back_when_topped_up,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let up = start_mock().await;
        let (rich, poor) = ("sk-ds-rich-key-00001", "sk-ds-poor-key-00002");
        create(
            &app,
            json!({"slug": "pool", "kind": "openai", "base_url": format!("{}/v1", up.origin),
                "balance_sync": {"adapter": "deepseek", "min_balance": 1}}),
        )
        .await;
        app.add_keys("pool", &[rich, poor]).await;
        let ak = app.access_key().await;
        up.mock.set(rich, Billing::Balance("20"));
        up.mock.set(poor, Billing::Balance("0.5"));
        let ids = key_ids(&app, "pool").await;

        let items = sync_all(&app, "pool").await;
        let got: Vec<(i64, &str, f64)> = items
            .iter()
            .map(|r| {
                (
                    r["key_id"].as_i64().unwrap(),
                    r["key_status_after"].as_str().unwrap(),
                    r["balance"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![(ids[0], "active", 20.0), (ids[1], "exhausted", 0.5)]
        );
        let k = key_view(&app, "pool", ids[1]).await;
        assert_eq!(k["status"], "exhausted");
        let reason = k["last_error"].as_str().unwrap();
        assert!(
            reason.contains("balance 0.5") && reason.contains("minimum 1"),
            "{reason}"
        );
        for _ in 0..4 {
            assert_eq!(app.chat("pool", &ak).await.status(), 200);
        }
        assert_eq!(up.mock.chats(poor), 0, "traffic stays off the poor key");
        assert_eq!(up.mock.chats(rich), 4);

        // Topped up: the next sync brings it back, and traffic reaches it.
        up.mock.set(poor, Billing::Balance("5"));
        let r = sync_key(&app, "pool", ids[1]).await;
        assert_eq!(r["key_status_before"], "exhausted");
        assert_eq!(r["key_status_after"], "active", "{r}");
        let k = key_view(&app, "pool", ids[1]).await;
        assert_eq!(
            (&k["status"], &k["balance"]),
            (&json!("active"), &json!(5.0))
        );
        assert!(k["last_error"].is_null(), "{k}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                assert_eq!(app.chat("pool", &ak).await.status(), 200);
                up.mock.chats(poor) > 0
            })
            .await,
            "traffic reaches the topped-up key"
        );
    }
);

both!(
    a_failed_sync_keeps_the_balance_and_stores_the_error_without_the_key,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let up = start_mock().await;
        let key = "sk-ms-flaky-key-0001";
        create(
            &app,
            json!({"slug": "flaky", "kind": "openai", "base_url": format!("{}/v1", up.origin),
                "request_timeout_ms": 300, "balance_sync": {"adapter": "moonshot"}}),
        )
        .await;
        app.add_keys("flaky", &[key]).await;
        let id = key_ids(&app, "flaky").await[0];
        up.mock.set(key, Billing::Balance("3"));
        assert_eq!(sync_key(&app, "flaky", id).await["balance"], 3.0);

        for (billing, says) in [
            (Billing::Refused, "answered 401: Incorrect API key provided"),
            (Billing::NotJson, "did not answer JSON"),
            (
                Billing::Slow(Duration::from_secs(3)),
                "no answer from the billing API within 300 ms",
            ),
        ] {
            up.mock.set(key, billing);
            let r = sync_key(&app, "flaky", id).await;
            assert_eq!(r["ok"], false, "{r}");
            assert_eq!(r["balance"], 3.0, "the balance is kept: {r}");
            let err = r["sync_error"].as_str().unwrap();
            assert!(err.contains(says), "{err}");
            assert!(
                !r.to_string().contains(key),
                "the key never comes back: {r}"
            );
            let k = key_view(&app, "flaky", id).await;
            assert_eq!(k["sync_error"], err);
            assert_eq!(
                (&k["balance"], &k["status"]),
                (&json!(3.0), &json!("active"))
            );
        }
        // The upstream's message names the key masked.
        up.mock.set(key, Billing::Refused);
        let r = sync_key(&app, "flaky", id).await;
        assert!(
            r["sync_error"]
                .as_str()
                .unwrap()
                .contains(&keygate::crypto::mask(key)),
            "{r}"
        );

        // It reads again: the error clears.
        up.mock.set(key, Billing::Balance("2.5"));
        let r = sync_key(&app, "flaky", id).await;
        assert!(r["sync_error"].is_null() && r["balance"] == 2.5, "{r}");
    }
);

both!(
    sync_settings_are_checked_shown_and_required_by_the_endpoints,
    |b: Backend| async move {
        // The production floor of 60 s applies here.
        let app = TestApp::spawn(b).await;
        let base = json!({"slug": "bs", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"});
        for (settings, field) in [
            (json!({"adapter": "paypal"}), "balance_sync.adapter"),
            (
                json!({"adapter": "deepseek", "interval_s": 30}),
                "balance_sync.interval_s",
            ),
            (
                json!({"adapter": "deepseek", "min_balance": -1}),
                "balance_sync.min_balance",
            ),
            (
                json!({"adapter": "custom", "remaining_pointer": "/a"}),
                "balance_sync.path",
            ),
            (
                json!({"adapter": "custom", "path": "/w", "remaining_pointer": "a"}),
                "balance_sync.remaining_pointer",
            ),
            (
                json!({"adapter": "moonshot", "path": "/w"}),
                "balance_sync.path",
            ),
            (
                json!({"adapter": "deepseek", "colour": "red"}),
                "balance_sync",
            ),
        ] {
            let mut body = base.clone();
            body["balance_sync"] = settings.clone();
            let (s, v) = app.admin("POST", "/admin/services", Some(body)).await;
            assert_eq!(s, 400, "{settings}: {v}");
            let detail = v["detail"].as_str().unwrap();
            assert!(detail.starts_with(field), "{settings}: {detail}");
        }
        let mut body = base.clone();
        body["balance_sync"] = json!({"adapter": "paypal"});
        let (_, v) = app.admin("POST", "/admin/services", Some(body)).await;
        assert!(
            v["detail"].as_str().unwrap().contains("openai_billing"),
            "{v}"
        );

        let (s, v) = app.admin("POST", "/admin/services", Some(base)).await;
        assert_eq!(s, 201, "{v}");
        assert!(v["balance_sync"].is_null(), "off by default: {v}");
        app.add_keys("bs", &["sk-bs-key-00000001"]).await;
        let id = key_ids(&app, "bs").await[0];
        for path in [
            "/admin/services/bs/sync".to_string(),
            format!("/admin/services/bs/keys/{id}/sync"),
        ] {
            let (s, v) = app.admin("POST", &path, None).await;
            assert_eq!(s, 409, "{path}: {v}");
            assert!(
                v["detail"].as_str().unwrap().starts_with("balance_sync:"),
                "{v}"
            );
        }

        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/bs",
                Some(
                    json!({"balance_sync": {"adapter": "custom", "path": "/v1/wallet",
                    "remaining_pointer": "/data/left", "interval_s": 300, "min_balance": 0.5}}),
                ),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["balance_sync"],
            json!({"adapter": "custom", "path": "/v1/wallet", "remaining_pointer": "/data/left",
                "interval_s": 300, "min_balance": 0.5})
        );
        let (_, v) = app.admin("GET", "/admin/services/bs", None).await;
        assert_eq!(v["balance_sync"]["min_balance"], 0.5);
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/bs",
                Some(json!({"name": "renamed"})),
            )
            .await;
        assert_eq!(
            (s, &v["balance_sync"]["adapter"]),
            (200, &json!("custom")),
            "kept"
        );
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/bs",
                Some(json!({"balance_sync": null})),
            )
            .await;
        assert_eq!(s, 200);
        assert!(v["balance_sync"].is_null(), "null turns it off: {v}");

        let (s, v) = app
            .admin(
                "POST",
                "/admin/users",
                Some(json!({"username": "vera", "password": "viewer-pass-1", "role": "viewer"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let viewer = app.login("vera", "viewer-pass-1").await;
        let (s, _) = app
            .admin_as(&viewer, "POST", "/admin/services/bs/sync", None)
            .await;
        assert_eq!(s, 403);
        let (s, _) = app.admin("POST", "/admin/services/nope/sync", None).await;
        assert_eq!(s, 404);
    }
);

both!(
    the_scheduled_sync_follows_the_upstream_balance_on_its_interval,
    |b: Backend| async move {
        let mut shared = Shared::new(b).await;
        fast_jobs(&mut shared);
        let app = TestApp::spawn_with(&shared.config).await;
        let up = start_mock().await;
        let key = "sk-sf-scheduled-0001";
        up.mock.set(key, Billing::Balance("9"));
        create(
            &app,
            json!({"slug": "sched", "kind": "openai", "base_url": format!("{}/v1", up.origin),
                "balance_sync": {"adapter": "siliconflow", "interval_s": 1, "min_balance": 1}}),
        )
        .await;
        app.add_keys("sched", &[key]).await;
        let id = key_ids(&app, "sched").await[0];
        assert!(
            eventually(Duration::from_secs(5), || async {
                key_view(&app, "sched", id).await["balance"] == 9.0
            })
            .await,
            "the first scheduled run reads the balance"
        );
        // Spent down upstream: a later run takes the key out; topped up, one brings it back.
        up.mock.set(key, Billing::Balance("0.25"));
        assert!(
            eventually(Duration::from_secs(5), || async {
                key_view(&app, "sched", id).await["status"] == "exhausted"
            })
            .await,
            "a scheduled run finds the balance below the minimum"
        );
        up.mock.set(key, Billing::Balance("4"));
        assert!(
            eventually(Duration::from_secs(5), || async {
                let k = key_view(&app, "sched", id).await;
                k["status"] == "active" && k["balance"] == 4.0
            })
            .await,
            "a scheduled run finds it topped up"
        );
        drop(shared);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_sync_a_service_once_per_interval() {
    let mut shared = Shared::new(Backend::Postgres).await;
    fast_jobs(&mut shared);
    let up = start_mock().await;
    let key = "sk-ds-pair-key-00001";
    up.mock.set(key, Billing::Balance("50"));
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    create(
        &a,
        json!({"slug": "pair", "kind": "openai", "base_url": format!("{}/v1", up.origin),
            "balance_sync": {"adapter": "deepseek", "interval_s": 1}}),
    )
    .await;
    a.add_keys("pair", &[key]).await;
    // Both replicas look every 50 ms; the lock lets one sync per interval (1 s ± 10%).
    assert!(
        eventually(Duration::from_secs(10), || async {
            up.mock.syncs(key).len() >= 4
        })
        .await,
        "scheduled syncs ran"
    );
    let at: Vec<_> = up.mock.syncs(key).iter().map(|s| s.at).collect();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    println!("two replicas, 1 s interval ± 10%, gaps between syncs: {gaps:?}");
    for g in &gaps {
        assert!(
            *g >= Duration::from_millis(850),
            "one sync per interval across both replicas: {gaps:?}"
        );
    }
    drop(b);
}

async fn import_text(app: &TestApp, slug: &str, body: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(&format!("/admin/services/{slug}/keys/import")))
        .bearer_auth(&app.token)
        .header("content-type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The keys as stored, decrypted.
async fn stored_keys(app: &TestApp, slug: &str) -> Vec<(String, Option<i64>)> {
    let (_, v) = app
        .admin("GET", &format!("/admin/services/{slug}"), None)
        .await;
    let id = v["id"].as_i64().unwrap();
    keygate::db::keys::of_service(&app.state.db, id)
        .await
        .unwrap()
        .into_iter()
        .map(|k| {
            (
                app.state.cipher.decrypt(&k.secret).unwrap(),
                k.balance_micros,
            )
        })
        .collect()
}

both!(
    the_text_import_reads_key_and_balance_and_several_keys_a_line,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("txt", "openai", "http://127.0.0.1:9/v1")
            .await;
        let (s, v) = import_text(
            &app,
            "txt",
            "# from the console\nsk-key1-balance,0.24\n\nsk-comma-00001,sk-comma-00002\n\
             sk-space-00001 sk-space-00002\nsk-semi-000001;sk-semi-000002\n\
             sk-mixed-00001, sk-mixed-00002 ;sk-mixed-00003\n",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["added"], 10, "{v}");
        let stored = stored_keys(&app, "txt").await;
        assert_eq!(stored[0], ("sk-key1-balance".to_string(), Some(240_000)));
        let keys: Vec<&str> = stored.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sk-key1-balance",
                "sk-comma-00001",
                "sk-comma-00002",
                "sk-space-00001",
                "sk-space-00002",
                "sk-semi-000001",
                "sk-semi-000002",
                "sk-mixed-00001",
                "sk-mixed-00002",
                "sk-mixed-00003",
            ]
        );
        assert!(stored.iter().skip(1).all(|(_, b)| b.is_none()));

        // A line that is neither form is named, and nothing of that import is stored.
        let (s, v) = import_text(
            &app,
            "txt",
            "sk-later-000001\nsk-a-000000001,abc,0.2\nsk-later-000002,-3\n",
        )
        .await;
        assert_eq!(s, 400, "{v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("line 2") && detail.contains("line 3") && !detail.contains("line 1"),
            "{detail}"
        );
        assert_eq!(stored_keys(&app, "txt").await.len(), stored.len());

        // No form stores a key with a separator in it.
        for (ct, body) in [
            ("application/json", r#"["sk-json-00001,sk-json-00002"]"#),
            ("text/csv", "\"sk-csv-000001;sk-csv-000002\",1\n"),
        ] {
            let r = app
                .http
                .post(app.url("/admin/services/txt/keys/import"))
                .bearer_auth(&app.token)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{ct}");
        }
        let stored = stored_keys(&app, "txt").await;
        assert!(
            stored.iter().all(|(k, _)| !k.contains([',', ';', ' '])),
            "{:?}",
            stored.iter().map(|(k, _)| k.len()).collect::<Vec<_>>()
        );
    }
);
