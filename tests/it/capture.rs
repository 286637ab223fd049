//! Body capture (per service, off by default, cut and redacted, its own retention), the keys'
//! failures by HTTP status, and request logging switched off.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock::{self, Behaviour};

const KEY: &str = "sk-capture-key-000001";

/// The newest log rows of a slug, once there are `n` of them.
async fn rows(app: &TestApp, slug: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = app
            .admin("GET", &format!("/admin/logs?service={slug}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        let items = v["items"].as_array().unwrap().clone();
        if items.len() >= n {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "{slug}: {n} log rows never came: {v}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn detail(app: &TestApp, id: &Value) -> Value {
    let (s, v) = app
        .admin(
            "GET",
            &format!("/admin/logs/{}", id.as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

both!(
    a_capturing_service_keeps_cut_redacted_bodies_with_the_log_row_until_their_retention,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let ak = app.with_service("cap", &up.base, &[KEY]).await;
        app.create_service("plain", "openai", &up.base).await;
        app.add_keys("plain", &[KEY]).await;

        // Bad settings are refused, naming the field.
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/cap",
                Some(json!({"capture": {"max_bytes": 0}})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .starts_with("capture.max_bytes"),
            "{v}"
        );
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/cap",
                Some(json!({"capture": {"max_bytes": 4096, "redact": ["Secret_Note"]}})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["capture"],
            json!({"max_bytes": 4096, "redact": ["Secret_Note"]})
        );
        let (_, v) = app.admin("GET", "/admin/services/plain", None).await;
        assert_eq!(v["capture"], Value::Null, "off by default");

        let body = json!({
            "model": "gpt-test",
            "messages": [{"role": "user", "content": "hello there"}],
            "api_key": "sk-client-put-this-here",
            "metadata": {"secret_note": "hush-hush"}
        });
        for slug in ["cap", "plain"] {
            let r = app
                .http
                .post(app.url(&format!("/llm/{slug}/v1/chat/completions")))
                .bearer_auth(&ak)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let row = &rows(&app, "cap", 1).await[0];
        assert!(
            row.get("request_body").is_none(),
            "lists carry no bodies: {row}"
        );
        let d = detail(&app, &row["id"]).await;
        let req = d["request_body"].as_str().unwrap();
        assert!(req.contains("hello there"), "{req}");
        assert!(
            !req.contains("sk-client-put-this-here") && !req.contains("hush-hush"),
            "{req}"
        );
        assert_eq!(req.matches("[redacted]").count(), 2, "{req}");
        let resp = d["response_body"].as_str().unwrap();
        assert!(resp.contains("\"chat.completion\""), "{resp}");
        let plain = &rows(&app, "plain", 1).await[0];
        let d = detail(&app, &plain["id"]).await;
        assert!(
            d.get("request_body").is_none() && d.get("response_body").is_none(),
            "{d}"
        );

        // A stream is kept as the client received it, cut at the cap and marked.
        let (s, _) = app
            .admin(
                "PATCH",
                "/admin/services/cap",
                Some(json!({"capture": {"max_bytes": 40}})),
            )
            .await;
        assert_eq!(s, 200);
        up.mock.set(
            KEY,
            Behaviour::Chunks {
                n: 5,
                gap: Duration::ZERO,
            },
        );
        // The snapshot refreshes every 100 ms in tests: ask until the new cap is in force.
        let deadline = Instant::now() + Duration::from_secs(10);
        let streamed = loop {
            let r = app
                .http
                .post(app.url("/llm/cap/v1/chat/completions"))
                .bearer_auth(&ak)
                .json(&json!({"model": "gpt-test", "stream": true, "messages": []}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let whole = r.bytes().await.unwrap().len();
            assert!(whole > 41, "the stream is longer than the cap: {whole}");
            // The newest row is this request's once its log row landed.
            let before = rows(&app, "cap", 1).await.len();
            let n = rows(&app, "cap", before).await;
            let d = detail(&app, &n[0]["id"]).await;
            let resp = d["response_body"].as_str().unwrap_or("").to_string();
            if d["streamed"] == json!(true) && resp.ends_with("…[cut at 40 bytes]") {
                break resp;
            }
            assert!(
                Instant::now() < deadline,
                "the streamed body is never cut at 40 bytes: {d}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert!(streamed.starts_with("data:"), "{streamed}");

        // Bodies go after their own retention; the log rows stay.
        let mut log = app.state.config.log.clone();
        log.body_retention_days = 1;
        let later = chrono::Utc::now() + chrono::Duration::days(2);
        let (_, bodies) = keygate::db::logs::prune_side_tables(&app.state.db, &log, later)
            .await
            .unwrap();
        assert!(bodies >= 2, "{bodies}");
        let d = detail(&app, &row["id"]).await;
        assert!(d.get("request_body").is_none(), "{d}");
        assert_eq!(d["status"], 200);
    }
);

both!(
    a_keys_failed_attempts_are_counted_by_the_status_its_upstream_answered,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        const FLAKY: &str = "sk-capture-flaky-0002";
        const PICKY: &str = "sk-capture-picky-0003";
        let ak = app.with_service("codes", &up.base, &[FLAKY, KEY]).await;
        app.create_service("picky", "openai", &up.base).await;
        app.add_keys("picky", &[PICKY]).await;
        up.mock.set(FLAKY, Behaviour::Status(502, None));
        up.mock.set(PICKY, Behaviour::Status(400, None));
        for _ in 0..4 {
            assert_eq!(
                app.chat("codes", &ak).await.status(),
                200,
                "retried on the good key"
            );
        }
        assert_eq!(
            app.chat("picky", &ak).await.status(),
            400,
            "a client error is passed on"
        );
        keygate::jobs::persist::flush(&app.state).await;

        let list = |slug: &'static str| {
            let app = &app;
            async move {
                let (s, v) = app
                    .admin("GET", &format!("/admin/services/{slug}/keys"), None)
                    .await;
                assert_eq!(s, 200, "{v}");
                v["items"].as_array().unwrap().clone()
            }
        };
        let keys = list("codes").await;
        let flaky = keys
            .iter()
            .find(|k| k["failures"]["5xx"].as_i64() > Some(0))
            .unwrap();
        let n = flaky["failures"]["5xx"].clone();
        assert_eq!(flaky["failures_by_status"], json!({"502": n}), "{flaky}");
        let good = keys.iter().find(|k| k["id"] != flaky["id"]).unwrap();
        assert_eq!(good["failures_by_status"], json!({}), "{good}");
        assert_eq!(good["successes"], 4);
        let picky = &list("picky").await[0];
        assert_eq!(picky["failures_by_status"], json!({"400": 1}), "{picky}");
    }
);

both!(
    with_request_logging_off_nothing_is_logged_but_the_live_figures_still_count,
    |b: Backend| async move {
        let up = mock::start().await;
        let mut shared = Shared::new(b).await;
        shared.config.log.requests = false;
        let app = TestApp::spawn_with(&shared.config).await;
        let ak = app.with_service("quiet", &up.base, &[KEY]).await;
        let live = |n: i64| {
            let app = &app;
            async move {
                eventually(Duration::from_secs(10), || async {
                    let (s, v) = app.admin("GET", "/admin/stats?service=quiet", None).await;
                    assert_eq!(s, 200, "{v}");
                    v["live"]["rpm"].as_i64() == Some(n)
                })
                .await
            }
        };
        for _ in 0..3 {
            assert_eq!(app.chat("quiet", &ak).await.status(), 200);
        }
        assert!(live(3).await, "the live figures count the requests");
        // The writer takes batches one after another: once a later request is counted live, the
        // batch of the first three has been through the writer.
        assert_eq!(app.chat("quiet", &ak).await.status(), 200);
        assert!(live(4).await);
        assert_eq!(
            keygate::db::logs::count_for_service(&app.state.db, "quiet")
                .await
                .unwrap(),
            0
        );
        let (_, v) = app.admin("GET", "/admin/logs?service=quiet", None).await;
        assert_eq!(v["items"], json!([]));
    }
);
