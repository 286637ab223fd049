//! Tenants: admins of no tenant create, rename and delete them (never the default one, never one
//! that still owns something); a tenant's admin manages only that tenant, and everything of
//! another tenant is not found for them.
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp};

const BASE: &str = "http://127.0.0.1:9/v1";

/// Creates a user as `token`; returns the response body (asserting 201).
async fn user(app: &TestApp, token: &str, body: Value) -> Value {
    let (s, v) = app
        .admin_as(token, "POST", "/admin/users", Some(body))
        .await;
    assert_eq!(s, 201, "create user: {v}");
    v
}

async fn tenant(app: &TestApp, name: &str) -> i64 {
    let (s, v) = app
        .admin("POST", "/admin/tenants", Some(json!({"name": name})))
        .await;
    assert_eq!(s, 201, "create tenant: {v}");
    assert_eq!(v["name"], name);
    v["id"].as_i64().unwrap()
}

fn detail(v: &Value) -> &str {
    v["detail"].as_str().unwrap_or_default()
}

both!(
    tenants_are_created_renamed_and_deleted_with_409s_for_taken_names_owned_rows_and_the_default_tenant,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let acme = tenant(&app, "acme").await;
        let (s, v) = app.admin("POST", "/admin/tenants", Some(json!({"name": "acme"}))).await;
        assert_eq!(s, 409, "{v}");
        assert!(detail(&v).contains("'acme' is taken"), "{v}");
        for bad in ["", "   ", &"x".repeat(65)] {
            let (s, v) = app.admin("POST", "/admin/tenants", Some(json!({"name": bad}))).await;
            assert_eq!(s, 400, "{bad:?}: {v}");
            assert!(detail(&v).starts_with("name:"), "{v}");
        }
        let (s, v) = app.admin("GET", "/admin/tenants", None).await;
        assert_eq!(s, 200, "{v}");
        let names: Vec<&str> = v["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["default", "acme"]);

        let path = format!("/admin/tenants/{acme}");
        let (s, v) = app.admin("PATCH", &path, Some(json!({"name": "acme-co"}))).await;
        assert_eq!((s, v["name"].as_str()), (200, Some("acme-co")), "{v}");
        let (s, v) = app.admin("PATCH", &path, Some(json!({"name": "default"}))).await;
        assert_eq!(s, 409, "{v}");
        let (s, v) = app.admin("GET", &path, None).await;
        assert_eq!((s, v["name"].as_str()), (200, Some("acme-co")), "a refused rename changes nothing: {v}");
        let (s, _) = app.admin("PATCH", "/admin/tenants/9999", Some(json!({"name": "x"}))).await;
        assert_eq!(s, 404);

        // A user of the tenant keeps it; so does a service or an access key made by its admin.
        let u = user(&app, &app.token, json!({"username": "acme-admin", "password": "acme-password", "role": "admin", "tenant_id": acme})).await;
        assert_eq!(u["tenant_id"], acme);
        let (s, v) = app.admin("DELETE", &path, None).await;
        assert_eq!(s, 409, "{v}");
        assert!(detail(&v).contains("1 user(s)"), "{v}");
        let t = app.login("acme-admin", "acme-password").await;
        let (s, v) = app
            .admin_as(&t, "POST", "/admin/services", Some(json!({"slug": "acme-svc", "kind": "openai", "base_url": BASE})))
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, k) = app.admin_as(&t, "POST", "/admin/access-keys", Some(json!({"name": "acme-key"}))).await;
        assert_eq!(s, 201, "{k}");
        assert_eq!(k["tenant_id"], acme);
        let (s, v) = app.admin("DELETE", &path, None).await;
        assert_eq!(s, 409, "{v}");
        assert!(detail(&v).contains("1 service(s), 1 access key(s) and 1 user(s)"), "{v}");

        let (s, _) = app.admin_as(&t, "DELETE", "/admin/services/acme-svc", None).await;
        assert_eq!(s, 204);
        let (s, _) = app.admin_as(&t, "DELETE", &format!("/admin/access-keys/{}", k["id"]), None).await;
        assert_eq!(s, 204);
        let (s, _) = app.admin("DELETE", &format!("/admin/users/{}", u["id"]), None).await;
        assert_eq!(s, 204);
        let (s, v) = app.admin("DELETE", &path, None).await;
        assert_eq!(s, 204, "an empty tenant goes: {v}");
        let (s, _) = app.admin("GET", &path, None).await;
        assert_eq!(s, 404);

        let (s, v) = app.admin("DELETE", "/admin/tenants/1", None).await;
        assert_eq!(s, 409, "{v}");
        assert!(detail(&v).contains("default tenant"), "{v}");
        // A user of a tenant that does not exist (any more) is refused, naming the field.
        let (s, v) = app
            .admin("POST", "/admin/users", Some(json!({"username": "ghost", "password": "ghost-password", "role": "viewer", "tenant_id": acme})))
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(detail(&v).starts_with("tenant_id:"), "{v}");
    }
);

both!(
    a_tenant_admin_manages_only_their_tenant_and_finds_nothing_of_another_while_a_global_admin_sees_all,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let acme = tenant(&app, "acme").await;
        let (_, me) = app.admin("GET", "/admin/auth/me", None).await;
        let root = me["id"].as_i64().unwrap();
        let global_op = user(&app, &app.token, json!({"username": "global-op", "password": "global-op-pw", "role": "operator"})).await;
        let global_op = global_op["id"].as_i64().unwrap();
        let ta = user(&app, &app.token, json!({"username": "acme-admin", "password": "acme-password", "role": "admin", "tenant_id": acme})).await;
        app.create_service("global-svc", "openai", BASE).await;
        let (_, gk) = app.admin("POST", "/admin/access-keys", Some(json!({"name": "global-key"}))).await;
        let t = app.login("acme-admin", "acme-password").await;

        // Tenants: their own only, read-only.
        let (s, v) = app.admin_as(&t, "GET", "/admin/tenants", None).await;
        assert_eq!(s, 200, "{v}");
        let ids: Vec<i64> = v["items"].as_array().unwrap().iter().map(|t| t["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, [acme]);
        assert_eq!(app.admin_as(&t, "GET", "/admin/tenants/1", None).await.0, 404);
        assert_eq!(app.admin_as(&t, "GET", &format!("/admin/tenants/{acme}"), None).await.0, 200);
        assert_eq!(app.admin_as(&t, "POST", "/admin/tenants", Some(json!({"name": "mine"}))).await.0, 403);
        assert_eq!(app.admin_as(&t, "PATCH", &format!("/admin/tenants/{acme}"), Some(json!({"name": "x"}))).await.0, 403);
        assert_eq!(app.admin_as(&t, "DELETE", &format!("/admin/tenants/{acme}"), None).await.0, 403);

        // Users: another tenant's (or a global) user is not found, whatever the method.
        for id in [root, global_op] {
            let p = format!("/admin/users/{id}");
            assert_eq!(app.admin_as(&t, "GET", &p, None).await.0, 404);
            assert_eq!(app.admin_as(&t, "PATCH", &p, Some(json!({"role": "viewer"}))).await.0, 404);
            assert_eq!(app.admin_as(&t, "DELETE", &p, None).await.0, 404);
        }
        let (s, v) = app.admin_as(&t, "GET", "/admin/users", None).await;
        assert_eq!(s, 200, "{v}");
        let names: Vec<&str> = v["items"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect();
        assert_eq!(names, ["acme-admin"]);
        // Their users land in their tenant; a global user or another tenant's is refused.
        let mine = user(&app, &t, json!({"username": "acme-op", "password": "acme-op-pw", "role": "operator"})).await;
        assert_eq!(mine["tenant_id"], acme);
        let (s, v) = app
            .admin_as(&t, "POST", "/admin/users", Some(json!({"username": "escape", "password": "escape-pw", "role": "admin", "tenant_id": 1})))
            .await;
        assert_eq!(s, 400, "{v}");
        // ...nor moved out of it.
        let mine_path = format!("/admin/users/{}", mine["id"]);
        let (s, v) = app.admin_as(&t, "PATCH", &mine_path, Some(json!({"tenant_id": 1}))).await;
        assert_eq!(s, 400, "{v}");
        let (s, v) = app.admin_as(&t, "PATCH", &mine_path, Some(json!({"role": "viewer"}))).await;
        assert_eq!((s, v["role"].as_str()), (200, Some("viewer")), "{v}");

        // Services and access keys of another tenant are not found either.
        for (m, body) in [("GET", None), ("PATCH", Some(json!({"name": "mine now"}))), ("DELETE", None)] {
            assert_eq!(app.admin_as(&t, m, "/admin/services/global-svc", body).await.0, 404, "{m} service");
        }
        assert_eq!(app.admin_as(&t, "GET", "/admin/services/global-svc/keys", None).await.0, 404);
        let gk_path = format!("/admin/access-keys/{}", gk["id"]);
        assert_eq!(app.admin_as(&t, "GET", &gk_path, None).await.0, 404);
        assert_eq!(app.admin_as(&t, "DELETE", &gk_path, None).await.0, 404);
        let (_, v) = app.admin_as(&t, "GET", "/admin/services", None).await;
        assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
        let (s, v) = app
            .admin_as(&t, "POST", "/admin/services", Some(json!({"slug": "acme-svc", "kind": "openai", "base_url": BASE})))
            .await;
        assert_eq!((s, v["tenant_id"].as_i64()), (201, Some(acme)), "{v}");

        // The global admin sees and writes both tenants.
        let (s, v) = app.admin("GET", "/admin/services/acme-svc", None).await;
        assert_eq!((s, v["tenant_id"].as_i64()), (200, Some(acme)), "{v}");
        let (_, v) = app.admin("GET", "/admin/users", None).await;
        assert_eq!(v["items"].as_array().unwrap().len(), 4, "{v}");
        let (s, _) = app.admin("PATCH", &mine_path, Some(json!({"disabled": true}))).await;
        assert_eq!(s, 200);
        let (s, v) = app.admin("GET", &format!("/admin/users/{}", ta["id"]), None).await;
        assert_eq!((s, v["tenant_id"].as_i64()), (200, Some(acme)), "{v}");
        let other = user(&app, &app.token, json!({"username": "acme-viewer", "password": "acme-viewer-pw", "role": "viewer", "tenant_id": acme})).await;
        assert_eq!(other["tenant_id"], acme);
        // A tenant's admin is no admin of keygate: the last global admin is still guarded.
        let (s, v) = app.admin("PATCH", &format!("/admin/users/{root}"), Some(json!({"role": "operator"}))).await;
        assert_eq!(s, 409, "{v}");
    }
);

both!(
    a_tenant_deleted_while_a_user_is_created_in_it_never_takes_the_new_user_with_it,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        for i in 0..8 {
            let t = tenant(&app, &format!("race-{i}")).await;
            let name = format!("racer-{i}");
            let body = json!({"username": name, "password": "racer-password", "role": "viewer", "tenant_id": t});
            let path = format!("/admin/tenants/{t}");
            let (created, deleted) = tokio::join!(
                app.admin("POST", "/admin/users", Some(body)),
                app.admin("DELETE", &path, None),
            );
            // Either the user was first (the delete is refused) or the tenant was gone first
            // (the user is refused): never both, which would have cascaded the user away.
            match (created.0, deleted.0) {
                (201, 409) => {
                    let (s, _) = app
                        .admin("GET", &format!("/admin/users/{}", created.1["id"]), None)
                        .await;
                    assert_eq!(s, 200);
                }
                (400, 204) => {}
                other => panic!("round {i}: {other:?}: {created:?} {deleted:?}"),
            }
        }
    }
);

both!(
    an_admin_of_no_tenant_provisions_a_tenants_service_and_access_key_which_only_that_tenant_then_sees,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let acme = tenant(&app, "acme").await;
        let other = tenant(&app, "other").await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": "acme-llm", "kind": "openai", "base_url": BASE, "tenant_id": acme})),
            )
            .await;
        assert_eq!((s, v["tenant_id"].as_i64()), (201, Some(acme)), "{v}");
        let (s, v) = app
            .admin(
                "POST",
                "/admin/access-keys",
                Some(json!({"name": "acme-app", "slugs": ["acme-llm"], "tenant_id": acme})),
            )
            .await;
        assert_eq!((s, v["tenant_id"].as_i64()), (201, Some(acme)), "{v}");
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services",
                Some(json!({"slug": "nowhere", "kind": "openai", "base_url": BASE, "tenant_id": 9999})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(detail(&v).starts_with("tenant_id:"), "{v}");

        // Acme's admin sees what was made for acme, and cannot create in another tenant.
        user(&app, &app.token, json!({"username": "acme-admin", "password": "acme-password-1", "role": "admin", "tenant_id": acme})).await;
        let t = app.login("acme-admin", "acme-password-1").await;
        let (s, v) = app.admin_as(&t, "GET", "/admin/services/acme-llm", None).await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = app.admin_as(&t, "GET", "/admin/access-keys", None).await;
        assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{s} {v}");
        let (s, v) = app
            .admin_as(
                &t,
                "POST",
                "/admin/services",
                Some(json!({"slug": "sneaky", "kind": "openai", "base_url": BASE, "tenant_id": other})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        let (s, _) = app.admin("GET", "/admin/services/sneaky", None).await;
        assert_eq!(s, 404, "a refused create wrote nothing");
    }
);
