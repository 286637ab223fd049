//! Account safety: the last admin stays, a password change needs the current one, and password
//! or role changes, disabling and logout revoke the user's tokens; refresh renews a valid one.
use serde_json::{Value, json};

use crate::both;
use crate::harness::{ADMIN_PASSWORD, Backend, TestApp};

async fn as_token(
    app: &TestApp,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> u16 {
    app.admin_as(token, method, path, body).await.0
}

both!(
    the_last_active_admin_cannot_be_demoted_disabled_or_deleted,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let (_, me) = app.admin("GET", "/admin/auth/me", None).await;
        let me = me["id"].as_i64().unwrap();
        let (s, v) = app
            .admin(
                "POST",
                "/admin/users",
                Some(
                    json!({"username": "other", "password": "other-password", "role": "operator"}),
                ),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let other = v["id"].as_i64().unwrap();
        // The other admin would demote the first one, the only admin: refused.
        let (s, v) = app
            .admin(
                "POST",
                "/admin/users",
                Some(json!({"username": "second", "password": "second-password", "role": "admin"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let second = v["id"].as_i64().unwrap();
        let t2 = app.login("second", "second-password").await;
        let (s, _) = app
            .admin_as(
                &t2,
                "PATCH",
                &format!("/admin/users/{me}"),
                Some(json!({"disabled": true})),
            )
            .await;
        assert_eq!(s, 200, "with two admins one may be disabled");
        let (s, v) = app
            .admin_as(
                &t2,
                "PATCH",
                &format!("/admin/users/{second}"),
                Some(json!({"role": "viewer"})),
            )
            .await;
        // Demoting yourself as the last active admin is refused too.
        assert_eq!(s, 409, "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains("last active admin"),
            "{v}"
        );
        let (s, _) = app
            .admin_as(&t2, "DELETE", &format!("/admin/users/{other}"), None)
            .await;
        assert_eq!(s, 204, "an operator can go");
        let (s, _) = app
            .admin_as(
                &t2,
                "PATCH",
                &format!("/admin/users/{me}"),
                Some(json!({"disabled": false})),
            )
            .await;
        assert_eq!(s, 200);
        let t1 = app.login("admin", ADMIN_PASSWORD).await;
        let (s, _) = app
            .admin_as(&t1, "DELETE", &format!("/admin/users/{second}"), None)
            .await;
        assert_eq!(s, 204, "two admins again: one may be deleted");
        let (s, v) = app
            .admin_as(
                &t1,
                "PATCH",
                &format!("/admin/users/{me}"),
                Some(json!({"role": "operator"})),
            )
            .await;
        assert_eq!(s, 409, "the last one stays: {v}");
    }
);

both!(
    changing_a_password_needs_the_current_one_and_revokes_tokens_as_do_role_changes_disabling_and_logout,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let (s, v) = app
            .admin("POST", "/admin/users", Some(json!({"username": "op", "password": "op-password-1", "role": "operator"})))
            .await;
        assert_eq!(s, 201, "{v}");
        let op = v["id"].as_i64().unwrap();
        let t = app.login("op", "op-password-1").await;
        let me = format!("/admin/users/{op}");
        let (s, v) = app.admin_as(&t, "PATCH", &me, Some(json!({"password": "op-password-2"}))).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().starts_with("current_password"), "{v}");
        let (s, _) = app
            .admin_as(&t, "PATCH", &me, Some(json!({"password": "op-password-2", "current_password": "wrong-one"})))
            .await;
        assert_eq!(s, 400);
        let (s, _) = app
            .admin_as(&t, "PATCH", &me, Some(json!({"password": "op-password-2", "current_password": "op-password-1"})))
            .await;
        assert_eq!(s, 200);
        assert_eq!(as_token(&app, &t, "GET", "/admin/auth/me", None).await, 401, "the old token is revoked");
        let t = app.login("op", "op-password-2").await;
        assert_eq!(as_token(&app, &t, "GET", "/admin/auth/me", None).await, 200);

        // Refresh gives a working token; logout revokes every token, refreshed ones included.
        let (s, r) = app.admin_as(&t, "POST", "/admin/auth/refresh", None).await;
        assert_eq!(s, 200, "{r}");
        let fresh = r["access_token"].as_str().unwrap().to_string();
        assert_eq!(as_token(&app, &fresh, "GET", "/admin/auth/me", None).await, 200);
        assert_eq!(as_token(&app, &t, "POST", "/admin/auth/logout", None).await, 204);
        assert_eq!(as_token(&app, &t, "GET", "/admin/auth/me", None).await, 401);
        assert_eq!(as_token(&app, &fresh, "GET", "/admin/auth/me", None).await, 401);
        assert_eq!(as_token(&app, &fresh, "POST", "/admin/auth/refresh", None).await, 401);

        // An admin changing the role revokes the user's tokens.
        let t = app.login("op", "op-password-2").await;
        let (s, _) = app.admin("PATCH", &me, Some(json!({"role": "viewer"}))).await;
        assert_eq!(s, 200);
        assert_eq!(as_token(&app, &t, "GET", "/admin/auth/me", None).await, 401);
        let t = app.login("op", "op-password-2").await;
        let (s, _) = app.admin("PATCH", &me, Some(json!({"disabled": true}))).await;
        assert_eq!(s, 200);
        assert_eq!(as_token(&app, &t, "GET", "/admin/auth/me", None).await, 401);
        // The admin's own token was never touched.
        assert_eq!(as_token(&app, &app.token, "GET", "/admin/auth/me", None).await, 200);
    }
);
