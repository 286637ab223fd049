//! `/admin/stats`: history from the per-minute rollups (exact against a known traffic pattern,
//! per group and per bucket, never counted twice), live figures from the coordination store,
//! tenant isolation and parameter checks.
use std::time::{Duration, Instant};

use keygate::events::{RequestEvent, Tokens, log_writer};
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp, eventually};
use crate::mock::{self, Behaviour};

const GOOD: &str = "sk-stats-good-key-0001";
const BAD: &str = "sk-stats-bad-key-00002";

async fn stats(app: &TestApp, token: &str, query: &str) -> (u16, Value) {
    app.admin_as(token, "GET", &format!("/admin/stats{query}"), None)
        .await
}

/// Polls the stats for `query` (as `token`) until `done` holds, with a deadline; returns them.
async fn stats_until(
    app: &TestApp,
    token: &str,
    query: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = stats(app, token, query).await;
        assert_eq!(s, 200, "{v}");
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "stats{query} never got there: {v}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The stats for `query` once they count `n` requests in all.
async fn stats_with(app: &TestApp, query: &str, n: i64) -> Value {
    stats_until(app, &app.token, query, |v| {
        v["totals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["requests"].as_i64().unwrap())
            .sum::<i64>()
            == n
    })
    .await
}

fn group<'a>(v: &'a Value, field: &str, value: Value) -> &'a Value {
    v["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t[field] == value)
        .unwrap_or_else(|| panic!("no group {field}={value} in {v}"))
}

fn money(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

both!(
    stats_count_requests_statuses_tokens_and_cost_per_group_and_bucket_and_live,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/pricing",
                Some(json!({"pattern": "*", "per_request": 0.01})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let ak = app.with_service("st-ok", &up.base, &[GOOD]).await;
        app.create_service("st-bad", "openai", &up.base).await;
        app.add_keys("st-bad", &[BAD]).await;
        up.mock.set(BAD, Behaviour::Status(500, None));

        for _ in 0..6 {
            assert_eq!(app.chat("st-ok", &ak).await.status(), 200);
        }
        let mut bad = Vec::new();
        for _ in 0..2 {
            bad.push(app.chat("st-bad", &ak).await.status().as_u16());
        }
        assert!(bad.iter().all(|s| *s >= 500), "{bad:?}");

        let v = stats_with(&app, "?group_by=service", 8).await;
        let ok = group(&v, "service", json!("st-ok"));
        assert_eq!(ok["requests"], 6, "{ok}");
        assert_eq!(ok["successes"], 6);
        assert_eq!(ok["success_rate"], 1.0);
        assert_eq!(ok["status_2xx"], 6);
        assert_eq!(ok["status_5xx"], 0);
        // The mock reports 3 prompt and 1 completion tokens per answer.
        assert_eq!(ok["prompt_tokens"], 18);
        assert_eq!(ok["completion_tokens"], 6);
        assert!((money(&ok["cost"]) - 0.06).abs() < 1e-9, "{ok}");
        assert!(ok["latency_p50_ms"].as_f64().unwrap() <= ok["latency_p99_ms"].as_f64().unwrap());
        let failed = group(&v, "service", json!("st-bad"));
        assert_eq!(failed["requests"], 2, "{failed}");
        assert_eq!(failed["successes"], 0);
        assert_eq!(failed["success_rate"], 0.0);
        assert_eq!(failed["status_5xx"], 2);
        assert_eq!(failed["prompt_tokens"], 0);
        assert_eq!(v["totals"][0]["service"], "st-ok", "busiest group first");

        // The series add up to the totals, each point in its own bucket inside the range.
        for series in v["series"].as_array().unwrap() {
            let slug = series["group"]["service"].clone();
            let points = series["points"].as_array().unwrap();
            let sum: i64 = points.iter().map(|p| p["requests"].as_i64().unwrap()).sum();
            assert_eq!(
                sum,
                group(&v, "service", slug)["requests"].as_i64().unwrap()
            );
            for p in points {
                let t = chrono::DateTime::parse_from_rfc3339(p["t"].as_str().unwrap()).unwrap();
                assert_eq!(t.timestamp() % 60, 0, "{p}");
            }
        }
        let day = stats_with(&app, "?group_by=service&bucket=1d", 8).await;
        for series in day["series"].as_array().unwrap() {
            let slug = series["group"]["service"].clone();
            let mut sum = 0;
            for p in series["points"].as_array().unwrap() {
                let t = chrono::DateTime::parse_from_rfc3339(p["t"].as_str().unwrap()).unwrap();
                assert_eq!(
                    t.timestamp() % 86_400,
                    0,
                    "day buckets start at midnight: {p}"
                );
                sum += p["requests"].as_i64().unwrap();
            }
            assert_eq!(
                sum,
                group(&v, "service", slug)["requests"].as_i64().unwrap()
            );
        }

        // By upstream key: masked, never the key itself.
        let by_key = stats_with(&app, "?group_by=key&service=st-ok", 6).await;
        let k = &by_key["totals"][0];
        assert_eq!(k["requests"], 6);
        let masked = k["key"].as_str().unwrap();
        assert!(masked.contains("...") && masked != GOOD, "{masked}");
        assert!(!by_key.to_string().contains(GOOD));
        assert_eq!(k["status_2xx"], 6);
        assert!((money(&k["cost"]) - 0.06).abs() < 1e-9);

        // By model and by access key: every request, one group each.
        let by_model = stats_with(&app, "?group_by=model", 8).await;
        assert_eq!(group(&by_model, "model", json!("gpt-test"))["requests"], 8);
        let by_ak = stats_with(&app, "?group_by=access_key", 8).await;
        assert_eq!(by_ak["totals"].as_array().unwrap().len(), 1, "{by_ak}");
        assert_eq!(by_ak["totals"][0]["access_key"], "test");
        assert_eq!(by_ak["totals"][0]["prompt_tokens"], 18);

        // Live: exactly the traffic just sent (tokens: 4 per answer), none in flight.
        let v = stats_until(&app, &app.token, "", |v| v["live"]["rpm"] == 8).await;
        let live = &v["live"];
        assert_eq!(live["tpm"], 24, "{live}");
        assert!(live["rpd"].as_i64().unwrap() >= 8, "{live}");
        assert_eq!(live["in_flight"], 0);
        let (_, only_ok) = stats(&app, &app.token, "?service=st-ok").await;
        assert_eq!(only_ok["live"]["rpm"], 6, "{only_ok}");
        assert_eq!(only_ok["totals"].as_array().unwrap().len(), 1);
    }
);

fn event(service: &str, minute: i64, status: u16) -> RequestEvent {
    RequestEvent {
        id: uuid::Uuid::now_v7(),
        ts: chrono::DateTime::from_timestamp(minute * 60 + 5, 0).unwrap(),
        service: service.into(),
        access_key_id: None,
        upstream_key_id: None,
        tried: vec![],
        model: Some("m".into()),
        upstream_model: None,
        path: "/v1/chat/completions".into(),
        status,
        attempts: 1,
        latency_ms: 40,
        ttft_ms: Some(10),
        tokens: Tokens {
            prompt: 5,
            completion: 2,
            cache_read: 1,
            cache_write: 0,
        },
        cost_micros: Some(1_500),
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

both!(
    a_batch_written_twice_or_by_two_replicas_at_once_is_rolled_up_once,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("st-replay", "openai", "http://127.0.0.1:9/v1")
            .await;
        let minute = chrono::Utc::now().timestamp() / 60 - 3;
        let batch: Vec<RequestEvent> = vec![
            event("st-replay", minute, 200),
            event("st-replay", minute, 429),
            event("st-replay", minute + 1, 200),
        ];
        let db = app.state.db.clone();
        // Two writers race with the same batch (a replica and a spool replay)...
        let (x, y) = tokio::join!(
            log_writer::insert(db.clone(), &batch),
            log_writer::insert(db.clone(), &batch)
        );
        x.unwrap();
        y.unwrap();
        // ...then it comes again with one new event.
        let mut again = batch.clone();
        again.push(event("st-replay", minute + 1, 503));
        log_writer::insert(db, &again).await.unwrap();

        let range = format!(
            "?service=st-replay&from={}&to={}",
            minute * 60,
            (minute + 2) * 60
        );
        let v = stats_with(&app, &range, 4).await;
        let t = &v["totals"][0];
        assert_eq!(t["requests"], 4, "{v}");
        assert_eq!(
            (&t["status_2xx"], &t["status_4xx"], &t["status_5xx"]),
            (&json!(2), &json!(1), &json!(1))
        );
        assert_eq!(t["success_rate"], 0.5);
        assert_eq!(t["prompt_tokens"], 20);
        assert_eq!(t["completion_tokens"], 8);
        assert_eq!(t["cache_read_tokens"], 4);
        assert!((money(&t["cost"]) - 0.006).abs() < 1e-9, "{t}");
        // Every latency was 40 ms and every TTFT 10 ms: the estimates stay inside their buckets.
        let p50 = t["latency_p50_ms"].as_f64().unwrap();
        assert!((32.0..64.0).contains(&p50), "{t}");
        let ttft = t["ttft_p50_ms"].as_f64().unwrap();
        assert!((8.0..16.0).contains(&ttft), "{t}");
        let points: Vec<i64> = v["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_i64().unwrap())
            .collect();
        assert_eq!(points, vec![2, 2], "per minute bucket");
    }
);

both!(
    a_tenant_sees_only_its_own_services_stats,
    |b: Backend| async move {
        use sea_orm::{ActiveModelTrait, ActiveValue::Set};
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        keygate::db::entity::tenant::ActiveModel {
            id: Set(2),
            name: Set("other".into()),
            created_at: Set(chrono::Utc::now()),
        }
        .insert(&app.state.db)
        .await
        .unwrap();
        let ak = app.with_service("st-one", &up.base, &[GOOD]).await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/users",
                Some(json!({"username": "t2op", "password": "a-long-password-1",
                    "role": "operator", "tenant_id": 2})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let t2 = app.login("t2op", "a-long-password-1").await;
        let (s, v) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/services",
                Some(json!({"slug": "st-two", "kind": "openai", "base_url": up.base})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/services/st-two/keys",
                Some(json!({"keys": [{"key": "sk-stats-tenant-two-01"}]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/access-keys",
                Some(json!({"name": "t2"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let ak2 = v["key"].as_str().unwrap().to_string();

        for _ in 0..3 {
            assert_eq!(app.chat("st-one", &ak).await.status(), 200);
        }
        let reached = eventually(Duration::from_secs(10), || async {
            app.chat("st-two", &ak2).await.status() == 200
        })
        .await;
        assert!(reached, "tenant two's slug serves");

        // The global admin sees both; tenant two sees its own service only, live figures too.
        stats_with(&app, "", 4).await;
        let seen = stats_until(&app, &t2, "", |v| {
            v["totals"][0]["requests"] == 1 && v["live"]["rpm"] == 1
        })
        .await;
        let slugs: Vec<&str> = seen["totals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["service"].as_str().unwrap())
            .collect();
        assert_eq!(slugs, vec!["st-two"]);
        let (_, by_model) = stats(&app, &t2, "?group_by=model").await;
        assert_eq!(by_model["totals"][0]["requests"], 1, "{by_model}");
        let (s, v) = stats(&app, &t2, "?service=st-one").await;
        assert_eq!(
            s, 404,
            "another tenant's service does not exist for it: {v}"
        );
    }
);

both!(
    bad_stats_parameters_are_refused_naming_the_parameter,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        for (query, field) in [
            ("?group_by=tenant", "group_by"),
            ("?bucket=5m", "bucket"),
            ("?from=yesterday", "from"),
            ("?to=soon", "to"),
            ("?from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z", "from"),
            ("?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ] {
            let r = app
                .http
                .get(app.url(&format!("/admin/stats{query}")))
                .bearer_auth(&app.token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{query}");
            assert_eq!(
                r.headers()["content-type"],
                "application/problem+json",
                "{query}"
            );
            let v: Value = r.json().await.unwrap();
            let detail = v["detail"].as_str().unwrap();
            assert!(
                detail.starts_with(&format!("{field}:")),
                "{query}: {detail}"
            );
        }
        // Two days in days is fine, and so is an unknown service's absence: 404.
        let (s, v) = stats(
            &app,
            &app.token,
            "?bucket=1d&from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["totals"], json!([]));
        let (s, _) = stats(&app, &app.token, "?service=nope").await;
        assert_eq!(s, 404);
    }
);

both!(
    minute_statistics_past_their_retention_are_deleted_while_the_hourly_ones_still_answer,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("st-keep", "openai", "http://127.0.0.1:9/v1")
            .await;
        // Three requests ten days ago, in one hour.
        let hour = (chrono::Utc::now().timestamp() - 10 * 86_400) / 3600;
        let minute = hour * 60 + 7;
        let batch = vec![
            event("st-keep", minute, 200),
            event("st-keep", minute + 1, 200),
            event("st-keep", minute + 2, 500),
        ];
        log_writer::insert(app.state.db.clone(), &batch)
            .await
            .unwrap();
        let by_minute = format!(
            "?service=st-keep&bucket=1m&from={}&to={}",
            minute * 60,
            (minute + 3) * 60
        );
        let by_hour = format!(
            "?service=st-keep&bucket=1h&from={}&to={}",
            hour * 3600,
            (hour + 1) * 3600
        );
        stats_with(&app, &by_minute, 3).await;
        stats_with(&app, &by_hour, 3).await;

        let mut log = app.state.config.log.clone();
        log.minute_stats_days = 7;
        let (minutes, _) =
            keygate::db::logs::prune_side_tables(&app.state.db, &log, chrono::Utc::now())
                .await
                .unwrap();
        // One minute row per dimension (service, key, access key, model) per request minute.
        assert_eq!(minutes, 4 * 3);
        let (_, v) = stats(&app, &app.token, &by_minute).await;
        assert_eq!(v["totals"], json!([]), "the minutes are gone: {v}");
        let v = stats_with(&app, &by_hour, 3).await;
        let t = &v["totals"][0];
        assert_eq!((&t["requests"], &t["status_5xx"]), (&json!(3), &json!(1)));
    }
);
