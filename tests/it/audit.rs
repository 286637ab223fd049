//! The audit log: every user and tenant write (and an access key's) leaves exactly one entry
//! naming who, what and the target before and after, with no password or full key anywhere;
//! `GET /admin/audit` filters, scopes to a tenant's admin and pages newest first.
use serde_json::{Value, json};

use crate::both;
use crate::harness::{ADMIN_PASSWORD, Backend, TestApp};

/// Every entry the admin sees, newest first, and the raw text of that response.
async fn all(app: &TestApp) -> (Vec<Value>, String) {
    let (s, v) = app.admin("GET", "/admin/audit?limit=1000", None).await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("next_cursor").is_none(), "{v}");
    (v["items"].as_array().unwrap().clone(), v.to_string())
}

/// The entry the last write left, checking it left exactly one (there were `before` entries).
async fn one_new(app: &TestApp, before: &[Value]) -> Value {
    let (after, _) = all(app).await;
    assert_eq!(
        after.len(),
        before.len() + 1,
        "one write, one entry: {after:#?}"
    );
    let newest = after[0].clone();
    assert!(
        before
            .first()
            .is_none_or(|b| newest["id"].as_i64() > b["id"].as_i64()),
        "{newest}"
    );
    newest
}

fn assert_entry(e: &Value, actor: &str, action: &str, target_type: &str, target_id: &Value) {
    assert_eq!(e["actor"], actor, "{e}");
    assert_eq!(e["action"], action, "{e}");
    assert_eq!(e["target_type"], target_type, "{e}");
    assert_eq!(
        e["target_id"],
        target_id.to_string().trim_matches('"'),
        "{e}"
    );
    assert_eq!(e["via"], "api", "{e}");
    assert!(e["ts"].as_str().is_some(), "{e}");
}

both!(
    every_user_and_tenant_write_leaves_one_entry_with_actor_before_and_after_and_no_secret,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let (_, me) = app.admin("GET", "/admin/auth/me", None).await;
        let (p1, p2) = ("first-secret-password-1", "second-secret-password-2");

        let n = all(&app).await.0;
        let (s, tenant) = app
            .admin("POST", "/admin/tenants", Some(json!({"name": "acme"})))
            .await;
        assert_eq!(s, 201, "{tenant}");
        let e = one_new(&app, &n).await;
        assert_entry(&e, "admin", "create", "tenant", &tenant["id"]);
        assert_eq!(e["actor_id"], me["id"]);
        assert_eq!(e["tenant_id"], tenant["id"]);
        assert_eq!(
            (e["before"].clone(), e["after"]["name"].clone()),
            (Value::Null, json!("acme"))
        );
        let tpath = format!("/admin/tenants/{}", tenant["id"]);

        let n = all(&app).await.0;
        let (s, _) = app
            .admin("PATCH", &tpath, Some(json!({"name": "acme-co"})))
            .await;
        assert_eq!(s, 200);
        let e = one_new(&app, &n).await;
        assert_entry(&e, "admin", "update", "tenant", &tenant["id"]);
        assert_eq!(
            (e["before"]["name"].clone(), e["after"]["name"].clone()),
            (json!("acme"), json!("acme-co"))
        );

        let n = all(&app).await.0;
        let (s, ann) = app
            .admin("POST", "/admin/users", Some(json!({"username": "ann", "password": p1, "role": "operator", "tenant_id": tenant["id"]})))
            .await;
        assert_eq!(s, 201, "{ann}");
        let e = one_new(&app, &n).await;
        assert_entry(&e, "admin", "create", "user", &ann["id"]);
        assert_eq!(e["tenant_id"], tenant["id"]);
        assert_eq!(
            (e["after"]["username"].clone(), e["after"]["role"].clone()),
            (json!("ann"), json!("operator"))
        );
        let upath = format!("/admin/users/{}", ann["id"]);

        let n = all(&app).await.0;
        let (s, _) = app
            .admin("PATCH", &upath, Some(json!({"role": "viewer"})))
            .await;
        assert_eq!(s, 200);
        let e = one_new(&app, &n).await;
        assert_entry(&e, "admin", "update", "user", &ann["id"]);
        assert_eq!(
            (e["before"]["role"].clone(), e["after"]["role"].clone()),
            (json!("operator"), json!("viewer"))
        );
        assert!(e["after"].get("credentials_changed").is_none(), "{e}");

        // Ann changes her own password: her entry, saying a password was set (never which).
        let t = app.login("ann", p1).await;
        let n = all(&app).await.0;
        let (s, v) = app
            .admin_as(
                &t,
                "PATCH",
                &upath,
                Some(json!({"password": p2, "current_password": p1})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let e = one_new(&app, &n).await;
        assert_entry(&e, "ann", "update", "user", &ann["id"]);
        assert_eq!(e["actor_id"], ann["id"]);
        assert_eq!(e["after"]["credentials_changed"], true, "{e}");

        let t = app.login("ann", p2).await;
        let n = all(&app).await.0;
        let (s, _) = app.admin_as(&t, "POST", "/admin/auth/logout", None).await;
        assert_eq!(s, 204);
        let e = one_new(&app, &n).await;
        assert_entry(&e, "ann", "logout", "user", &ann["id"]);

        // The offline reset (the CLI's), through the control layer the CLI calls.
        let cli = keygate::control::Actor::cli();
        let n = all(&app).await.0;
        let p3 = keygate::control::users::reset_password(&app.state.db, &cli, "ann")
            .await
            .unwrap();
        let e = one_new(&app, &n).await;
        assert_eq!(
            (e["via"].clone(), e["action"].clone()),
            (json!("cli"), json!("reset_password")),
            "{e}"
        );
        assert_eq!(e["actor"], cli.username.as_str());
        assert_eq!(e["actor_id"], Value::Null);
        assert_eq!(e["target_id"], ann["id"].to_string());
        app.login("ann", &p3).await;

        let n = all(&app).await.0;
        let (s, _) = app.admin("DELETE", &upath, None).await;
        assert_eq!(s, 204);
        let e = one_new(&app, &n).await;
        assert_entry(&e, "admin", "delete", "user", &ann["id"]);
        assert_eq!(
            (e["before"]["username"].clone(), e["after"].clone()),
            (json!("ann"), Value::Null)
        );

        let n = all(&app).await.0;
        let (s, _) = app.admin("DELETE", &tpath, None).await;
        assert_eq!(s, 204);
        let e = one_new(&app, &n).await;
        assert_entry(&e, "admin", "delete", "tenant", &tenant["id"]);

        // Refused writes leave nothing.
        let (n, _) = all(&app).await;
        let (s, _) = app.admin("DELETE", "/admin/tenants/1", None).await;
        assert_eq!(s, 409);
        let (s, _) = app
            .admin(
                "PATCH",
                &format!("/admin/users/{}", me["id"]),
                Some(json!({"role": "viewer"})),
            )
            .await;
        assert_eq!(s, 409);
        assert_eq!(all(&app).await.0.len(), n.len());

        let (_, text) = all(&app).await;
        for secret in [p1, p2, p3.as_str(), ADMIN_PASSWORD, "$argon2"] {
            assert!(!text.contains(secret), "{secret} in the audit log: {text}");
        }
    }
);

both!(
    an_access_key_created_through_the_api_is_audited_with_its_prefix_and_never_the_full_key,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let (s, k) = app
            .admin(
                "POST",
                "/admin/access-keys",
                Some(json!({"name": "team-a"})),
            )
            .await;
        assert_eq!(s, 201, "{k}");
        let full = k["key"].as_str().unwrap();
        let (s, v) = app
            .admin("GET", "/admin/audit?target_type=access_key", None)
            .await;
        assert_eq!(s, 200, "{v}");
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{v}");
        assert_entry(&items[0], "admin", "create", "access_key", &k["id"]);
        assert_eq!(items[0]["after"]["prefix"], k["prefix"], "{v}");
        assert!(full.starts_with(k["prefix"].as_str().unwrap()));
        let (_, text) = all(&app).await;
        assert!(
            !text.contains(full),
            "the full key is in the audit log: {text}"
        );
    }
);

both!(
    audit_entries_filter_by_actor_action_target_and_time_page_newest_first_and_scope_to_a_tenant,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let (_, acme) = app
            .admin("POST", "/admin/tenants", Some(json!({"name": "acme"})))
            .await;
        let acme = acme["id"].as_i64().unwrap();
        let (s, _) = app
            .admin("POST", "/admin/users", Some(json!({"username": "boss", "password": "boss-password", "role": "admin", "tenant_id": acme})))
            .await;
        assert_eq!(s, 201);
        let boss = app.login("boss", "boss-password").await;
        for name in ["a", "b", "c"] {
            let (s, _) = app
                .admin("POST", "/admin/tenants", Some(json!({"name": name})))
                .await;
            assert_eq!(s, 201);
        }
        let (s, v) = app
            .admin_as(
                &boss,
                "POST",
                "/admin/users",
                Some(
                    json!({"username": "worker", "password": "worker-password", "role": "viewer"}),
                ),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let worker = v["id"].as_i64().unwrap();
        let (s, _) = app
            .admin_as(
                &boss,
                "PATCH",
                &format!("/admin/users/{worker}"),
                Some(json!({"role": "operator"})),
            )
            .await;
        assert_eq!(s, 200);
        let (everything, _) = all(&app).await;
        assert_eq!(everything.len(), 7, "{everything:#?}");
        let ids: Vec<i64> = everything
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

        let get = |q: &'static str| {
            let app = &app;
            async move {
                let (s, v) = app.admin("GET", &format!("/admin/audit?{q}"), None).await;
                assert_eq!(s, 200, "{q}: {v}");
                v["items"].as_array().unwrap().clone()
            }
        };
        let by_boss = get("actor=boss").await;
        assert_eq!(by_boss.len(), 2);
        assert!(by_boss.iter().all(|e| e["actor"] == "boss"));
        let tenants = get("target_type=tenant").await;
        assert_eq!(tenants.len(), 4);
        assert_eq!(tenants[0]["after"]["name"], "c", "newest first");
        assert_eq!(get("action=update").await.len(), 1);
        let w = worker.to_string();
        let on_worker = app
            .admin(
                "GET",
                &format!("/admin/audit?target_type=user&target_id={w}"),
                None,
            )
            .await
            .1;
        assert_eq!(
            on_worker["items"].as_array().unwrap().len(),
            2,
            "{on_worker}"
        );
        assert_eq!(get("actor=nobody").await.len(), 0);

        // since is inclusive, until exclusive; split at the third entry (oldest first).
        let third = &everything[everything.len() - 3];
        let ts = third["ts"].as_str().unwrap();
        let q = |k: &str| format!("/admin/audit?{k}={}", urlencode(ts));
        let (_, since) = app.admin("GET", &q("since"), None).await;
        let (_, until) = app.admin("GET", &q("until"), None).await;
        let (since, until) = (
            since["items"].as_array().unwrap(),
            until["items"].as_array().unwrap(),
        );
        assert_eq!(since.last().unwrap()["id"], third["id"], "{since:#?}");
        assert_eq!(since.len() + until.len(), everything.len());
        assert!(
            until
                .iter()
                .all(|e| e["id"].as_i64() < third["id"].as_i64())
        );
        assert_eq!(get("since=2999-01-01T00:00:00Z").await.len(), 0);
        assert_eq!(get("until=2000-01-01T00:00:00Z").await.len(), 0);

        // Pages of 2, newest first, add up to the whole without repeats.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/admin/audit?limit=2&cursor={c}"),
                None => "/admin/audit?limit=2".to_string(),
            };
            let (s, v) = app.admin("GET", &path, None).await;
            assert_eq!(s, 200, "{v}");
            let page = v["items"].as_array().unwrap();
            assert!(page.len() <= 2);
            seen.extend(page.iter().map(|e| e["id"].as_i64().unwrap()));
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, ids);

        // The tenant's admin sees the entries about their tenant only: the tenant itself, its
        // users; not the other tenants, even when asking for them.
        let (s, v) = app.admin_as(&boss, "GET", "/admin/audit", None).await;
        assert_eq!(s, 200, "{v}");
        let theirs = v["items"].as_array().unwrap();
        assert_eq!(theirs.len(), 4, "{v}");
        assert!(theirs.iter().all(|e| e["tenant_id"] == acme), "{v}");
        let (_, v) = app
            .admin("GET", &format!("/admin/audit?tenant_id={acme}"), None)
            .await;
        assert_eq!(v["items"].as_array().unwrap().len(), 4, "{v}");
        let (_, v) = app
            .admin_as(&boss, "GET", "/admin/audit?tenant_id=1", None)
            .await;
        assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
        let worker_token = app.login("worker", "worker-password").await;
        let (s, v) = app
            .admin_as(&worker_token, "GET", "/admin/audit", None)
            .await;
        assert_eq!(s, 403, "operators do not read the audit log: {v}");

        for bad in [
            "since=yesterday",
            "until=2026-13-01T00:00:00Z",
            "limit=0",
            "limit=1001",
            "cursor=abc",
            "tenant_id=x",
            "since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        ] {
            let r = app
                .http
                .get(app.url(&format!("/admin/audit?{bad}")))
                .bearer_auth(&app.token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{bad}");
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            assert_eq!(ct, "application/problem+json", "{bad}");
            let v: Value = r.json().await.unwrap();
            let param = bad.split('=').next().unwrap();
            let named = if bad.contains("&until") {
                "until"
            } else {
                param
            };
            assert!(
                v["detail"].as_str().unwrap().starts_with(named),
                "{bad}: {v}"
            );
        }
    }
);

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

both!(
    every_service_key_and_pricing_write_leaves_one_entry_with_its_before_and_after_and_no_key,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        const A: &str = "sk-audit-first-0123456789abcdef";
        const B: &str = "sk-audit-second-0123456789abcdef";
        let base = "http://127.0.0.1:9/v1";
        // One write, one entry: checked for each, with what it must say.
        macro_rules! write {
            ($method:expr, $path:expr, $body:expr, $action:expr, $ty:expr, $id:expr) => {{
                let before = all(&app).await.0;
                let (s, v) = app.admin($method, &$path, $body).await;
                assert!((200..300).contains(&s), "{} {}: {s} {v}", $method, $path);
                let e = one_new(&app, &before).await;
                assert_entry(&e, "admin", $action, $ty, &json!($id));
                (v, e)
            }};
        }

        let (_, e) = write!(
            "POST",
            "/admin/services".to_string(),
            Some(json!({"slug": "aud", "kind": "openai", "base_url": base})),
            "create",
            "service",
            "aud"
        );
        assert!(e["before"].is_null() && e["after"]["slug"] == "aud", "{e}");
        let (_, e) = write!(
            "PATCH",
            "/admin/services/aud".to_string(),
            Some(json!({"max_attempts": 5})),
            "update",
            "service",
            "aud"
        );
        assert_eq!(
            (
                e["before"]["max_attempts"].as_i64(),
                e["after"]["max_attempts"].as_i64()
            ),
            (Some(3), Some(5)),
            "{e}"
        );

        let (_, e) = write!(
            "POST",
            "/admin/services/aud/keys".to_string(),
            Some(json!({"keys": [A, B]})),
            "add",
            "keys",
            "aud"
        );
        assert_eq!(e["after"]["added"], 2, "{e}");
        assert_eq!(
            e["after"]["keys"],
            json!([keygate::crypto::mask(A), keygate::crypto::mask(B)]),
            "{e}"
        );
        let (_, keys) = app.admin("GET", "/admin/services/aud/keys", None).await;
        let id = keys["items"][0]["id"].as_i64().unwrap();
        let (_, e) = write!(
            "PATCH",
            format!("/admin/services/aud/keys/{id}"),
            Some(json!({"label": "primary"})),
            "update",
            "key",
            format!("aud/{id}")
        );
        assert_eq!(
            (e["before"]["label"].clone(), e["after"]["label"].clone()),
            (Value::Null, json!("primary")),
            "{e}"
        );
        let (_, e) = write!(
            "POST",
            "/admin/services/aud/keys/batch".to_string(),
            Some(json!({"action": "disable", "ids": [id]})),
            "disable",
            "keys",
            "aud"
        );
        assert_eq!(e["after"]["ids"], json!([id]), "{e}");

        let before = all(&app).await.0;
        let (s, rule) = app
            .admin("POST", "/admin/pricing", Some(json!({"pattern": "aud-*", "slug": "aud", "input_per_mtok": 1, "output_per_mtok": 2})))
            .await;
        assert_eq!(s, 201, "{rule}");
        let rid = rule["id"].as_i64().unwrap();
        assert_entry(
            &one_new(&app, &before).await,
            "admin",
            "create",
            "pricing_rule",
            &json!(rid),
        );
        let (_, e) = write!(
            "PUT",
            format!("/admin/pricing/{rid}"),
            Some(
                json!({"pattern": "aud-*", "slug": "aud", "input_per_mtok": 3, "output_per_mtok": 4})
            ),
            "update",
            "pricing_rule",
            rid
        );
        assert_eq!(
            (
                e["before"]["input_per_mtok"].as_f64(),
                e["after"]["input_per_mtok"].as_f64()
            ),
            (Some(1.0), Some(3.0)),
            "{e}"
        );
        write!(
            "DELETE",
            format!("/admin/pricing/{rid}"),
            None, "delete", "pricing_rule", rid
        );
        let (_, e) = write!(
            "DELETE",
            format!("/admin/services/aud/keys/{id}"),
            None,
            "delete",
            "key",
            format!("aud/{id}")
        );
        assert_eq!(e["before"]["key"], keygate::crypto::mask(A), "{e}");
        let (_, e) = write!(
            "DELETE",
            "/admin/services/aud".to_string(),
            None, "delete", "service", "aud"
        );
        assert!(e["after"].is_null() && e["before"]["slug"] == "aud", "{e}");

        // A refused write leaves nothing.
        let before = all(&app).await.0;
        let (s, _) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": "Bad Slug", "kind": "openai", "base_url": base})),
            )
            .await;
        assert_eq!(s, 400);
        assert_eq!(all(&app).await.0.len(), before.len());

        let (_, text) = all(&app).await;
        assert!(
            !text.contains(A) && !text.contains(B),
            "a full key in the audit log"
        );
    }
);
