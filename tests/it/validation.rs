//! Key validation: testing keys on demand (one, all, or by status) and the scheduled validation
//! that brings keys back once they answer, once per interval across replicas.
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock::{self, Behaviour, MockServer};

/// A gateway whose scheduler looks for due validations every 50 ms and accepts a 1 s interval
/// (production: every 5 s, 10 s at least), with the mock upstream.
struct Fixture {
    app: TestApp,
    up: MockServer,
    /// Holds the SQLite file's directory: bind it for as long as the app runs.
    _shared: Shared,
}

fn fast_jobs(shared: &mut Shared) {
    shared.config.jobs.validate_tick_ms = 50;
    shared.config.jobs.validate_min_interval_s = 1;
}

async fn fixture(b: Backend) -> Fixture {
    let mut shared = Shared::new(b).await;
    fast_jobs(&mut shared);
    Fixture {
        app: TestApp::spawn_with(&shared.config).await,
        up: mock::start().await,
        _shared: shared,
    }
}

/// Key ids of a slug, in the order the keys were added.
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

/// Validation requests the mock saw for `key` (the model list, not chat traffic).
fn validations(up: &MockServer, key: &str) -> Vec<mock::Seen> {
    up.mock
        .seen()
        .into_iter()
        .filter(|s| s.key == key && s.path == "/v1/models")
        .collect()
}

fn chats(up: &MockServer, key: &str) -> usize {
    up.mock
        .seen()
        .iter()
        .filter(|s| s.key == key && s.path == "/v1/chat/completions")
        .count()
}

async fn test_key(app: &TestApp, slug: &str, id: i64) -> (u16, Value) {
    app.admin(
        "POST",
        &format!("/admin/services/{slug}/keys/{id}/test"),
        None,
    )
    .await
}

const GOOD: &str = "sk-val-good-key-0001";
const BAD: &str = "sk-val-bad-key-00002";

both!(
    testing_a_key_reports_latency_for_a_good_key_and_the_refusal_for_a_bad_one,
    |b: Backend| async move {
        let Fixture {
            app,
            up,
            _shared: _dir,
        } = fixture(b).await;
        up.mock.set(BAD, Behaviour::Status(401, None));
        let ak = app.with_service("val", &up.base, &[GOOD, BAD]).await;
        let ids = key_ids(&app, "val").await;

        let (s, v) = test_key(&app, "val", ids[0]).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["key_id"], ids[0]);
        assert_eq!(v["key"], "sk-...001", "masked");
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["status"], 200);
        assert!(v["latency_ms"].is_u64(), "{v}");
        assert!(v["error"].is_null(), "{v}");
        assert_eq!(v["key_status_before"], "active");
        assert_eq!(v["key_status_after"], "active");
        let seen = validations(&up, GOOD);
        assert_eq!(seen.len(), 1, "one cheap request: the model list");
        assert_eq!(seen[0].headers["authorization"], format!("Bearer {GOOD}"));

        let (s, v) = test_key(&app, "val", ids[1]).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["status"], 401);
        assert!(v["error"].as_str().unwrap().contains("401"), "{v}");
        assert_eq!(v["key_status_before"], "active");
        assert_eq!(v["key_status_after"], "invalid", "a refused key goes out");
        assert!(!v.to_string().contains(BAD), "the secret never comes back");

        let bad = key_view(&app, "val", ids[1]).await;
        assert_eq!(bad["status"], "invalid");
        assert!(bad["validated_at"].is_string(), "{bad}");
        assert!(
            bad["validation_error"].as_str().unwrap().contains("401"),
            "{bad}"
        );
        let good = key_view(&app, "val", ids[0]).await;
        assert!(good["validated_at"].is_string() && good["validation_error"].is_null());
        // Traffic no longer reaches the refused key.
        for _ in 0..4 {
            assert_eq!(app.chat("val", &ak).await.status(), 200);
        }
        assert_eq!(chats(&up, BAD), 0);
        assert_eq!(chats(&up, GOOD), 4);

        // Unknown key or slug: 404 problem+json; a viewer may not test.
        let r = app
            .http
            .post(app.url("/admin/services/val/keys/999999/test"))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let (s, _) = test_key(&app, "nope", ids[0]).await;
        assert_eq!(s, 404);
        let (s, v) = app
            .admin(
                "POST",
                "/admin/users",
                Some(json!({"username": "vic", "password": "viewer-pass-1", "role": "viewer"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let viewer = app.login("vic", "viewer-pass-1").await;
        let path = format!("/admin/services/val/keys/{}/test", ids[0]);
        let (s, _) = app.admin_as(&viewer, "POST", &path, None).await;
        assert_eq!(s, 403);
        let (s, _) = app
            .admin_as(&viewer, "POST", "/admin/services/val/keys/test", None)
            .await;
        assert_eq!(s, 403);
    }
);

both!(
    a_key_taken_out_by_traffic_comes_back_when_the_scheduled_validation_finds_it_answering,
    |b: Backend| async move {
        let Fixture {
            app,
            up,
            _shared: _dir,
        } = fixture(b).await;
        up.mock.set(BAD, Behaviour::Status(401, None));
        let ak = app.with_service("sched", &up.base, &[GOOD, BAD]).await;
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/sched",
                Some(json!({"validate_interval_s": 1})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["validate_interval_s"], 1);
        let bad_id = key_ids(&app, "sched").await[1];

        // Round robin sends one of two requests to the bad key: 401, failover, key invalid.
        for _ in 0..2 {
            assert_eq!(app.chat("sched", &ak).await.status(), 200);
        }
        assert_eq!(chats(&up, BAD), 1);
        let svc_id = service_id(&app, "sched").await;
        assert!(
            eventually(Duration::from_secs(5), || async {
                let k = keygate::db::keys::by_id(&app.state.db, svc_id, bad_id)
                    .await
                    .unwrap()
                    .unwrap();
                k.status == "invalid"
            })
            .await,
            "the data plane stored the key as invalid"
        );
        // While the upstream still refuses it, validations keep it out.
        assert!(
            eventually(Duration::from_secs(5), || async {
                validations(&up, BAD).len() >= 2
            })
            .await,
            "the scheduled validation re-tests the invalid key"
        );
        assert_eq!(key_view(&app, "sched", bad_id).await["status"], "invalid");

        // The provider accepts the key again: the next run brings it back.
        up.mock.set(BAD, Behaviour::Ok);
        assert!(
            eventually(Duration::from_secs(5), || async {
                key_view(&app, "sched", bad_id).await["status"] == "active"
            })
            .await,
            "the key is active again"
        );
        let k = key_view(&app, "sched", bad_id).await;
        assert!(
            k["validation_error"].is_null() && k["last_error"].is_null(),
            "{k}"
        );
        assert!(
            eventually(Duration::from_secs(5), || async {
                assert_eq!(app.chat("sched", &ak).await.status(), 200);
                chats(&up, BAD) > 1
            })
            .await,
            "traffic reaches the key again"
        );
    }
);

async fn service_id(app: &TestApp, slug: &str) -> i64 {
    let (_, v) = app
        .admin("GET", &format!("/admin/services/{slug}"), None)
        .await;
    v["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_validate_a_service_once_per_interval() {
    let mut shared = Shared::new(Backend::Postgres).await;
    fast_jobs(&mut shared);
    let up = mock::start().await;
    up.mock.set(BAD, Behaviour::Status(401, None));
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    let ak = a.with_service("pair", &up.base, &[GOOD, BAD]).await;
    let (s, v) = a
        .admin(
            "PATCH",
            "/admin/services/pair",
            Some(json!({"validate_interval_s": 1})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for _ in 0..2 {
        assert_eq!(a.chat("pair", &ak).await.status(), 200);
    }
    // Both replicas run the scheduler every 50 ms; the key stays refused, so every run tests it.
    assert!(
        eventually(Duration::from_secs(10), || async {
            validations(&up, BAD).len() >= 4
        })
        .await,
        "scheduled validations ran"
    );
    let at: Vec<_> = validations(&up, BAD).iter().map(|s| s.at).collect();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    println!("two replicas, 1 s interval, gaps between validations: {gaps:?}");
    for g in &gaps {
        assert!(
            *g >= Duration::from_millis(900),
            "one run per interval across both replicas: {gaps:?}"
        );
    }
    drop(b);
}

both!(
    testing_all_keys_or_only_those_in_a_status,
    |b: Backend| async move {
        let Fixture {
            app,
            up,
            _shared: _dir,
        } = fixture(b).await;
        let (bad1, bad2) = ("sk-val-bulk-bad-0001", "sk-val-bulk-bad-0002");
        up.mock.set(bad1, Behaviour::Status(401, None));
        up.mock.set(bad2, Behaviour::Status(402, None));
        app.with_service("bulk", &up.base, &[GOOD, bad1, bad2])
            .await;
        let ids = key_ids(&app, "bulk").await;

        let (s, v) = app
            .admin("POST", "/admin/services/bulk/keys/test", None)
            .await;
        assert_eq!(s, 200, "{v}");
        let items = v["items"].as_array().unwrap();
        let got: Vec<(i64, bool, String)> = items
            .iter()
            .map(|t| {
                (
                    t["key_id"].as_i64().unwrap(),
                    t["ok"].as_bool().unwrap(),
                    t["key_status_after"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (ids[0], true, "active".into()),
                (ids[1], false, "invalid".into()),
                (ids[2], false, "exhausted".into()),
            ]
        );

        // Only the invalid key is tested, and it answers now.
        up.mock.set(bad1, Behaviour::Ok);
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/bulk/keys/test?status=invalid",
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{v}");
        assert_eq!(items[0]["key_id"], ids[1]);
        assert_eq!(items[0]["ok"], true);
        assert_eq!(items[0]["key_status_before"], "invalid");
        assert_eq!(items[0]["key_status_after"], "active");
        assert_eq!(
            validations(&up, GOOD).len(),
            1,
            "the active key was left alone"
        );
        assert_eq!(validations(&up, bad2).len(), 1);
        assert_eq!(key_view(&app, "bulk", ids[1]).await["status"], "active");

        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/bulk/keys/test?status=invalid,exhausted",
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{v}");
        assert_eq!(items[0]["key_id"], ids[2]);
        assert_eq!(items[0]["status"], 402);
        assert_eq!(items[0]["key_status_after"], "exhausted");

        let (s, v) = app
            .admin("POST", "/admin/services/bulk/keys/test?status=broken", None)
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().starts_with("status:"), "{v}");
        let (s, _) = app
            .admin("POST", "/admin/services/nope/keys/test", None)
            .await;
        assert_eq!(s, 404);
    }
);

both!(
    validation_settings_are_checked_and_shown_on_the_service,
    |b: Backend| async move {
        // The production floor of 10 s applies here.
        let app = TestApp::spawn(b).await;
        let base = json!({"slug": "vs", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"});
        for (field, value) in [
            ("validate_interval_s", 5),
            ("validate_interval_s", 86_401),
            ("validate_concurrency", 0),
            ("validate_concurrency", 65),
        ] {
            let mut body = base.clone();
            body[field] = json!(value);
            let (s, v) = app.admin("POST", "/admin/services", Some(body)).await;
            assert_eq!(s, 400, "{field}={value}: {v}");
            assert!(v["detail"].as_str().unwrap().starts_with(field), "{v}");
        }
        let (s, v) = app.admin("POST", "/admin/services", Some(base)).await;
        assert_eq!(s, 201, "{v}");
        assert!(v["validate_interval_s"].is_null(), "off by default: {v}");
        assert_eq!(v["validate_concurrency"], 4);
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/vs",
                Some(json!({"validate_interval_s": 60, "validate_concurrency": 8})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["validate_interval_s"], 60);
        assert_eq!(v["validate_concurrency"], 8);
        let (_, v) = app
            .admin(
                "PATCH",
                "/admin/services/vs",
                Some(json!({"validate_interval_s": 0})),
            )
            .await;
        assert!(v["validate_interval_s"].is_null(), "0 turns it off: {v}");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_is_tested_with_its_own_request_and_auth_header() {
    let Fixture {
        app,
        up,
        _shared: _dir,
    } = fixture(Backend::Sqlite).await;
    for (slug, kind, key) in [
        ("k-anthropic", "anthropic", "sk-ant-val-key-0001"),
        ("k-gemini", "gemini", "gm-val-key-00000001"),
        ("k-rest", "rest", "rest-val-key-000001"),
    ] {
        app.create_service(slug, kind, &up.base).await;
        app.add_keys(slug, &[key]).await;
        let id = key_ids(&app, slug).await[0];
        let (s, v) = test_key(&app, slug, id).await;
        assert_eq!((s, &v["ok"]), (200, &json!(true)), "{kind}: {v}");
        let seen: Vec<_> = up
            .mock
            .seen()
            .into_iter()
            .filter(|s| s.key == key)
            .collect();
        assert_eq!(seen.len(), 1, "{kind}");
        let h = &seen[0].headers;
        match kind {
            "anthropic" => {
                assert_eq!(seen[0].path, "/v1/models");
                assert_eq!(h["x-api-key"], key);
                assert!(h.contains_key("anthropic-version"));
            }
            "gemini" => {
                assert_eq!(seen[0].path, "/v1/models");
                assert_eq!(h["x-goog-api-key"], key);
            }
            _ => {
                assert_eq!(seen[0].path, "/v1/", "a REST upstream's root");
                assert_eq!(h["authorization"], format!("Bearer {key}"));
            }
        }
    }
}
