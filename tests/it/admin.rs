//! Control plane: login, roles, validation, key import in every format, masking.
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp};

both!(
    login_rejects_a_wrong_password_and_tokens_are_required,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let r = app
            .http
            .post(app.url("/admin/auth/login"))
            .json(&json!({"username": "admin", "password": "wrong-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let (s, _) = app
            .admin_as("not-a-token", "GET", "/admin/services", None)
            .await;
        assert_eq!(s, 401);
        let (s, v) = app.admin("GET", "/admin/services", None).await;
        assert_eq!(s, 200);
        assert!(v["items"].as_array().unwrap().is_empty());
    }
);

both!(viewer_can_read_but_not_write, |b: Backend| async move {
    let app = TestApp::spawn(b).await;
    let (s, v) = app
        .admin(
            "POST",
            "/admin/users",
            Some(json!({"username": "vera", "password": "viewer-pass-1", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(v.get("password_hash").is_none());
    let viewer = app.login("vera", "viewer-pass-1").await;
    let (s, _) = app.admin_as(&viewer, "GET", "/admin/services", None).await;
    assert_eq!(s, 200);
    let (s, v) = app
        .admin_as(
            &viewer,
            "POST",
            "/admin/services",
            Some(json!({"slug": "x", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["status"], 403);
    let (s, _) = app
        .admin_as(
            &viewer,
            "POST",
            "/admin/access-keys",
            Some(json!({"name": "n"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = app.admin_as(&viewer, "GET", "/admin/users", None).await;
    assert_eq!(s, 403, "only admins see users");
    // Disabling a user locks them out at once, even with a valid token.
    let id = v_id(&app, "vera").await;
    let (s, _) = app
        .admin(
            "PATCH",
            &format!("/admin/users/{id}"),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app.admin_as(&viewer, "GET", "/admin/services", None).await;
    assert_eq!(s, 401);
});

async fn v_id(app: &TestApp, name: &str) -> i64 {
    let (_, v) = app.admin("GET", "/admin/users", None).await;
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == name)
        .unwrap()["id"]
        .as_i64()
        .unwrap()
}

both!(
    validation_errors_are_problem_json_naming_the_field,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        for (body, field) in [
            (
                json!({"slug": "Bad Slug", "kind": "openai", "base_url": "http://h/v1"}),
                "slug",
            ),
            (
                json!({"slug": "ok", "kind": "cohere", "base_url": "http://h/v1"}),
                "kind",
            ),
            (
                json!({"slug": "ok", "kind": "openai", "base_url": "not a url"}),
                "base_url",
            ),
            (
                json!({"slug": "ok", "kind": "openai", "base_url": "http://h/v1", "strategy": "fastest"}),
                "strategy",
            ),
        ] {
            let (s, v) = app.admin("POST", "/admin/services", Some(body)).await;
            assert_eq!(s, 400, "{v}");
            assert!(v["detail"].as_str().unwrap().starts_with(field), "{v}");
            assert_eq!(v["status"], 400);
            assert!(v["type"].as_str().is_some() && v["title"].as_str().is_some());
        }
        let (s, v) = app
            .admin("POST", "/admin/services", Some(json!({"slug": "ok"})))
            .await;
        assert_eq!(s, 400);
        assert!(v["detail"].as_str().unwrap().contains("kind"), "{v}");
        app.create_service("dup", "openai", "http://127.0.0.1:9/v1")
            .await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": "dup", "kind": "openai", "base_url": "http://h/v1"})),
            )
            .await;
        assert_eq!(s, 409, "{v}");
    }
);

async fn import(app: &TestApp, slug: &str, ct: &str, body: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(&format!("/admin/services/{slug}/keys/import")))
        .bearer_auth(&app.token)
        .header("content-type", ct)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn key_count(app: &TestApp, slug: &str) -> usize {
    let (_, v) = app
        .admin("GET", &format!("/admin/services/{slug}/keys"), None)
        .await;
    v["items"].as_array().unwrap().len()
}

both!(
    imports_plain_text_csv_json_and_multipart_reporting_duplicates,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("imp", "openai", "http://127.0.0.1:9/v1")
            .await;
        let (s, v) = import(
            &app,
            "imp",
            "text/plain",
            "# my keys\nsk-text-0001\n\nsk-text-0002\nsk-text-0001\n",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["added"].as_u64(), v["duplicates"].as_u64()),
            (Some(2), Some(1))
        );
        let (s, v) = import(
            &app,
            "imp",
            "text/csv",
            "key,balance\nsk-csv-00001,10.5\nsk-text-0002,1\n",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["added"].as_u64(), v["duplicates"].as_u64()),
            (Some(1), Some(1))
        );
        let (s, v) = import(
            &app,
            "imp",
            "application/json",
            r#"{"keys":[{"key":"sk-json-0001","label":"j","weight":2}]}"#,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["added"], 1);
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::text("sk-multi-0001\nsk-multi-0002\n").file_name("keys.txt"),
        );
        let r = app
            .http
            .post(app.url("/admin/services/imp/keys/import"))
            .bearer_auth(&app.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["added"], 2);
        assert_eq!(key_count(&app, "imp").await, 6);
        let (s, v) = import(&app, "imp", "application/xml", "<keys/>").await;
        assert_eq!(s, 415, "{v}");
    }
);

both!(
    malformed_import_is_400_naming_every_bad_line_and_imports_nothing,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("bad", "openai", "http://127.0.0.1:9/v1")
            .await;
        let (s, v) = import(
            &app,
            "bad",
            "text/plain",
            "sk-fine-00001\nsk has spaces\nsk-fine-00002\n\u{7}bell\n",
        )
        .await;
        assert_eq!(s, 400, "{v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("line 2") && detail.contains("line 4"),
            "{detail}"
        );
        assert!(
            !detail.contains("line 1") && !detail.contains("line 3"),
            "{detail}"
        );
        let (s, v) = import(
            &app,
            "bad",
            "text/csv",
            "sk-fine-00001,5\nsk-fine-00002,lots\n",
        )
        .await;
        assert_eq!(s, 400);
        assert!(v["detail"].as_str().unwrap().contains("line 2"), "{v}");
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/bad/keys",
                Some(json!({"keys": [{"key": "sk-fine-00001"}, {"key": ""}]})),
            )
            .await;
        assert_eq!(s, 400);
        assert!(v["detail"].as_str().unwrap().contains("keys[1]"), "{v}");
        assert_eq!(key_count(&app, "bad").await, 0, "nothing half-imported");
    }
);

both!(
    keys_are_masked_everywhere_after_creation,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("m", "openai", "http://127.0.0.1:9/v1")
            .await;
        let secret = "sk-very-secret-value-0123456789";
        app.add_keys("m", &[secret]).await;
        let (s, v) = app.admin("GET", "/admin/services/m/keys", None).await;
        assert_eq!(s, 200);
        let text = v.to_string();
        assert!(!text.contains(secret), "{text}");
        assert_eq!(v["items"][0]["key"], "sk-v...6789");
        let r = app
            .http
            .get(app.url("/admin/services/m/keys/export"))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let csv = r.text().await.unwrap();
        assert!(
            csv.contains("sk-v...6789") && !csv.contains(secret),
            "{csv}"
        );
        // The access key is shown once, then only its prefix.
        let (_, created) = app
            .admin("POST", "/admin/access-keys", Some(json!({"name": "n"})))
            .await;
        let full = created["key"].as_str().unwrap();
        assert!(full.starts_with("kg-"));
        let (_, listed) = app.admin("GET", "/admin/access-keys", None).await;
        assert!(!listed.to_string().contains(full));
        assert_eq!(listed["items"][0]["prefix"], &full[..8]);
        // Stored encrypted: the database never holds the plain secret.
        let rows = keygate::db::keys::list(&app.state.db, 1, None, 10)
            .await
            .unwrap();
        assert!(
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| !r.secret.contains(secret) && r.secret.starts_with("v2:"))
        );
    }
);

both!(deleted_access_key_stops_working, |b: Backend| async move {
    let up = crate::mock::start().await;
    let app = TestApp::spawn(b).await;
    let ak = app.with_service("del", &up.base, &["sk-del-key-001"]).await;
    assert_eq!(app.chat("del", &ak).await.status(), 200);
    let (_, v) = app.admin("GET", "/admin/access-keys", None).await;
    let id = v["items"][0]["id"].as_i64().unwrap();
    let (s, _) = app
        .admin("DELETE", &format!("/admin/access-keys/{id}"), None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(app.chat("del", &ak).await.status(), 401);
    let (s, _) = app
        .admin("DELETE", &format!("/admin/access-keys/{id}"), None)
        .await;
    assert_eq!(s, 404);
});

both!(
    tenant_admins_see_and_change_only_their_own_tenant,
    |b: Backend| async move {
        use sea_orm::{ActiveModelTrait, ActiveValue::Set};
        let up = crate::mock::start().await;
        let app = TestApp::spawn(b).await;
        keygate::db::entity::tenant::ActiveModel {
            id: Set(2),
            name: Set("other".into()),
            created_at: Set(chrono::Utc::now()),
        }
        .insert(&app.state.db)
        .await
        .unwrap();
        let ak1 = app
            .with_service("t1-slug", &up.base, &["sk-tenant-one-1"])
            .await;
        let (s, v) = app
        .admin("POST", "/admin/users", Some(json!({"username": "t2admin", "password": "tenant-two-pass", "role": "admin", "tenant_id": 2})))
        .await;
        assert_eq!(s, 201, "{v}");
        let t2 = app.login("t2admin", "tenant-two-pass").await;
        // Users: only its own tenant; new users land in it; other tenants' users are invisible.
        let (_, v) = app.admin_as(&t2, "GET", "/admin/users", None).await;
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["t2admin"]);
        let (s, v) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/users",
                Some(json!({"username": "t2op", "password": "tenant-two-op", "role": "operator"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(
            v["tenant_id"], 2,
            "created in the caller's tenant, never global"
        );
        let (s, _) = app
        .admin_as(&t2, "POST", "/admin/users", Some(json!({"username": "sneaky", "password": "tenant-two-op", "role": "admin", "tenant_id": 1})))
        .await;
        assert_eq!(s, 400);
        let (s, _) = app
            .admin_as(
                &t2,
                "PATCH",
                "/admin/users/1",
                Some(json!({"password": "taken-over-now"})),
            )
            .await;
        assert_eq!(s, 404, "the global admin is out of reach");
        let (s, _) = app.admin_as(&t2, "DELETE", "/admin/users/1", None).await;
        assert_eq!(s, 404);
        // Services and access keys: another tenant's slug can't be seen or called.
        let (_, v) = app.admin_as(&t2, "GET", "/admin/services", None).await;
        assert!(v["items"].as_array().unwrap().is_empty(), "{v}");
        let (s, _) = app
            .admin_as(&t2, "GET", "/admin/services/t1-slug/keys", None)
            .await;
        assert_eq!(s, 404);
        let (s, v) = app
            .admin_as(
                &t2,
                "POST",
                "/admin/access-keys",
                Some(json!({"name": "reach-out", "slugs": ["t1-slug"]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let foreign = v["key"].as_str().unwrap().to_string();
        assert_eq!(app.chat("t1-slug", &foreign).await.status(), 403);
        assert_eq!(app.chat("t1-slug", &ak1).await.status(), 200);
    }
);

both!(
    a_bad_enum_value_is_refused_naming_the_allowed_values,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let svc = |extra: Value| {
            let mut body = json!({"slug": "e", "kind": "openai", "base_url": "http://h/v1"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        for (body, field, allowed) in [
            (
                svc(json!({"kind": "cohere"})),
                "kind",
                "`openai`, `anthropic`, `gemini`, `rest`",
            ),
            (
                svc(json!({"strategy": "fastest"})),
                "strategy",
                "`round_robin`, `weighted`, `least_used`, `random`, `balance`",
            ),
            (
                svc(json!({"retry_on": ["auth", "teapot"]})),
                "retry_on",
                "auth, quota, rate_limit, server_error, timeout, connect",
            ),
            (
                svc(json!({"retry_on": "401,abc"})),
                "retry_on",
                "auth, quota",
            ),
        ] {
            let (s, v) = app.admin("POST", "/admin/services", Some(body)).await;
            assert_eq!(s, 400, "{v}");
            let detail = v["detail"].as_str().unwrap();
            assert!(detail.starts_with(field), "{detail}");
            assert!(detail.contains(allowed), "{detail}");
            assert_eq!(v["type"], "https://keygate.dev/problems/validation");
        }
        let (s, v) = app
            .admin(
                "POST",
                "/admin/users",
                Some(json!({"username": "r", "password": "long-enough-1", "role": "root"})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("role") && detail.contains("`viewer`, `operator`, `admin`"),
            "{detail}"
        );
        app.create_service("e", "openai", "http://127.0.0.1:9/v1")
            .await;
        app.add_keys("e", &["sk-enum-key-0001"]).await;
        let (_, v) = app.admin("GET", "/admin/services/e/keys", None).await;
        let id = v["items"][0]["id"].as_i64().unwrap();
        let path = format!("/admin/services/e/keys/{id}");
        let (s, v) = app
            .admin("PATCH", &path, Some(json!({"status": "paused"})))
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("`active`, `cooling`"),
            "{v}"
        );
        let (s, v) = app
            .admin("PATCH", &path, Some(json!({"status": "cooling"})))
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("use active or disabled"),
            "{v}"
        );
        let (s, v) = app
            .admin("PATCH", &path, Some(json!({"status": "disabled"})))
            .await;
        assert_eq!((s, &v["status"]), (200, &json!("disabled")), "{v}");
    }
);

both!(
    retry_on_takes_classes_or_the_old_status_string_and_answers_in_classes,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("r", "openai", "http://127.0.0.1:9/v1")
            .await;
        let (_, v) = app.admin("GET", "/admin/services/r", None).await;
        assert_eq!(
            v["retry_on"],
            json!([
                "auth",
                "quota",
                "rate_limit",
                "server_error",
                "timeout",
                "connect"
            ]),
            "the default: every class"
        );
        assert_eq!(
            (&v["kind"], &v["strategy"]),
            (&json!("openai"), &json!("round_robin"))
        );
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/r",
                Some(json!({"retry_on": ["rate_limit", 408], "strategy": "balance"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["retry_on"], json!(["rate_limit", 408]));
        assert_eq!(v["strategy"], "balance");
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/r",
                Some(json!({"retry_on": "401,429,5xx"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["retry_on"],
            json!(["rate_limit", "server_error", "timeout", "connect", 401]),
            "the old form keeps its meaning: timeouts and connect errors were always retried"
        );
        let (_, v) = app.admin("GET", "/admin/services/r", None).await;
        assert_eq!(
            v["retry_on"],
            json!(["rate_limit", "server_error", "timeout", "connect", 401])
        );
    }
);

both!(
    amounts_are_decimal_units_on_the_wire_and_exact_underneath,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        app.create_service("money", "openai", "http://127.0.0.1:9/v1")
            .await;
        let (s, v) = import(
            &app,
            "money",
            "text/csv",
            "key,balance\nsk-money-00001,0.24\n",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (_, v) = app.admin("GET", "/admin/services/money/keys", None).await;
        assert_eq!(v["items"][0]["balance"], json!(0.24));
        let id = v["items"][0]["id"].as_i64().unwrap();
        let rows = keygate::db::keys::list(&app.state.db, 1, None, 10)
            .await
            .unwrap();
        assert_eq!(rows[0].balance_micros, Some(240_000), "stored as micros");
        // 0.1 + 0.2 as the client's arithmetic gives it is stored as 0.3 exactly.
        let (s, v) = app
            .admin(
                "PATCH",
                &format!("/admin/services/money/keys/{id}"),
                Some(json!({"balance": 0.1 + 0.2})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["balance"], json!(0.3));
        let csv = app
            .http
            .get(app.url("/admin/services/money/keys/export"))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            csv.lines().nth(1).unwrap().ends_with(",active,0.3,1"),
            "{csv}"
        );

        let (s, v) = app
            .admin(
                "POST",
                "/admin/access-keys",
                Some(json!({"name": "b", "budget": "12.345678"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(
            (&v["budget"], &v["spent"]),
            (&json!(12.345678), &json!(0.0))
        );
        for (budget, says) in [
            (json!(-1), "must not be negative"),
            (json!(1e300), "at most 1000000000"),
            (json!("ten"), "is not a decimal number"),
            (json!(true), "expected an amount"),
        ] {
            let (s, v) = app
                .admin(
                    "POST",
                    "/admin/access-keys",
                    Some(json!({"name": "b", "budget": budget})),
                )
                .await;
            assert_eq!(s, 400, "{v}");
            let detail = v["detail"].as_str().unwrap();
            assert!(
                detail.starts_with("budget") && detail.contains(says),
                "{detail}"
            );
        }
        let (s, v) = import(&app, "money", "text/csv", "sk-money-00002,-0.5\n").await;
        assert_eq!(s, 400, "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains("non-negative"),
            "{v}"
        );
    }
);
