//! Model aliases and allow-lists per service, through the real gateway and the polyglot mock.
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp};
use crate::polyglot::{self, PolyglotServer};

async fn setup(b: Backend) -> (TestApp, PolyglotServer, String) {
    let poly = polyglot::start().await;
    let app = TestApp::spawn(b).await;
    for (slug, kind, prefix) in [
        ("oa", "openai", "/openai/v1"),
        ("ge", "gemini", "/gemini/v1beta"),
    ] {
        app.create_service(slug, kind, &format!("{}{prefix}", poly.base))
            .await;
        app.add_keys(slug, &[&format!("sk-{slug}-routing-key-01")])
            .await;
    }
    let ak = app.access_key().await;
    (app, poly, ak)
}

/// The admin handler reloads this replica's snapshot before it answers, so the data plane sees
/// the change at once.
async fn patch(app: &TestApp, slug: &str, body: Value) -> (u16, Value) {
    app.admin("PATCH", &format!("/admin/services/{slug}"), Some(body))
        .await
}

async fn chat(app: &TestApp, ak: &str, slug: &str, model: &str) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/llm/{slug}/v1/chat/completions")))
        .bearer_auth(ak)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

both!(
    aliases_with_wildcards_rewrite_the_model_and_the_log_keeps_both_names,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        let (s, v) = patch(
            &app,
            "oa",
            json!({"model_aliases": {"gpt4": "gpt-4o", "gpt-*-preview": "gpt-4.1", "gpt-4-*": "gpt-4o-mini"}}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["model_aliases"]["gpt4"], "gpt-4o");
        for (asked, sent) in [
            ("gpt4", "gpt-4o"),
            ("gpt-4-turbo", "gpt-4o-mini"),
            ("gpt-5-preview", "gpt-4.1"),
            ("o3", "o3"),
        ] {
            assert_eq!(chat(&app, &ak, "oa", asked).await.status(), 200);
            let body: Value = serde_json::from_slice(&poly.mock.last().body).unwrap();
            assert_eq!(body["model"], sent, "{asked}");
        }
        // Gemini carries the model in the path.
        patch(
            &app,
            "ge",
            json!({"model_aliases": {"fast": "gemini-2.5-flash"}}),
        )
        .await;
        let r = app
            .http
            .post(app.url("/llm/ge/v1beta/models/fast:generateContent"))
            .header("x-goog-api-key", &ak)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            poly.mock.last().path,
            "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
        );

        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let db = app.state.db.clone();
        let mut row = None;
        for _ in 0..200 {
            row = keygate::db::entity::request_log::Entity::find()
                .filter(keygate::db::entity::request_log::Column::Model.eq("gpt4"))
                .one(&db)
                .await
                .unwrap();
            if row.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let row = row.expect("the aliased call is logged");
        assert_eq!(row.upstream_model.as_deref(), Some("gpt-4o"));
    }
);

both!(
    a_model_outside_the_allow_list_gets_404_in_each_client_format,
    |b: Backend| async move {
        let (app, _poly, ak) = setup(b).await;
        let (s, _) = patch(
            &app,
            "oa",
            json!({"model_allow": ["gpt-4o*"], "model_aliases": {"fast": "gpt-4o-mini"}}),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(chat(&app, &ak, "oa", "gpt-4o").await.status(), 200);
        assert_eq!(
            chat(&app, &ak, "oa", "fast").await.status(),
            200,
            "an alias of an allowed model"
        );
        let r = chat(&app, &ak, "oa", "o3").await;
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");

        let r = app
            .http
            .post(app.url("/llm/oa/v1/messages"))
            .header("x-api-key", &ak)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "not_found_error", "{v}");

        patch(&app, "ge", json!({"model_allow": ["gemini-2.5-*"]})).await;
        let r = app
            .http
            .post(app.url("/llm/ge/v1beta/models/gemini-1.0-pro:generateContent"))
            .header("x-goog-api-key", &ak)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["status"], "NOT_FOUND", "{v}");
    }
);

both!(
    bad_model_patterns_are_refused_naming_the_field,
    |b: Backend| async move {
        let (app, _poly, _ak) = setup(b).await;
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/oa",
                Some(json!({"model_aliases": {"gpt-[": "x"}})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["detail"].as_str().unwrap().starts_with("model_aliases"),
            "{v}"
        );
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/oa",
                Some(json!({"model_allow": [""]})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["detail"].as_str().unwrap().starts_with("model_allow"),
            "{v}"
        );
    }
);
