//! The web console at `/`: the page and its assets come from the binary with their content types,
//! cache headers and a CSP without inline script; and the admin API additions it relies on
//! (`/admin/auth/me`, the import dry run).
use keygate::App;
use serde_json::json;
use tokio::sync::oneshot;

use crate::harness::{Backend, Shared, TestApp};

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_console_page_and_its_assets_are_served_with_types_caching_and_a_strict_csp() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let http = reqwest::Client::builder().no_gzip().build().unwrap();

    let r = http.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("text/html"));
    let csp = header(&r, "content-security-policy").to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(header(&r, "cache-control"), "no-cache");
    let etag = header(&r, "etag").to_string();
    let html = r.text().await.unwrap();
    let start = html.find("/console/").expect("asset path in the page");
    let script = &html[start..];
    let script = &script[..script.find('"').unwrap()];
    assert!(html.contains("<div id=\"app\">"));

    // The page is revalidated, not re-sent.
    let r = http
        .get(app.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let version = script.split('/').nth(2).unwrap();
    let r = http
        .get(app.url(&format!("/console/{version}/main.js")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/javascript; charset=utf-8");
    assert!(header(&r, "cache-control").contains("immutable"));
    assert!(header(&r, "content-security-policy").contains("default-src 'none'"));
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    let plain = r.bytes().await.unwrap();
    assert!(!plain.is_empty());

    let r = http
        .get(app.url(&format!("/console/{version}/app.css")))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), "text/css; charset=utf-8");
    assert_eq!(header(&r, "content-encoding"), "gzip");

    // An old version's page still gets the file, but not cached under the wrong name.
    let r = http
        .get(app.url("/console/000000000000/main.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "cache-control"), "no-cache");
    let r = http
        .get(app.url(&format!("/console/{version}/nope.js")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The paths around it are untouched.
    let r = http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn with_an_admin_listener_the_console_is_served_there_and_not_on_the_data_port() {
    let shared = Shared::new(Backend::Sqlite).await;
    let mut config = shared.config.clone();
    config.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let app = App::build(config).await.unwrap();
    let (data, admin) = (app.port(), app.admin_port());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let r = reqwest::get(format!("http://127.0.0.1:{admin}/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("http://127.0.0.1:{data}/"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let _ = tx.send(());
}

#[tokio::test]
async fn me_names_the_user_and_role_behind_a_token() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (s, v) = app
        .admin(
            "POST",
            "/admin/users",
            Some(
                json!({"username": "watcher", "password": "watcher-password-1", "role": "viewer"}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = app.admin("GET", "/admin/auth/me", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["username"], "admin");
    assert_eq!(v["role"], "admin");
    let viewer = app.login("watcher", "watcher-password-1").await;
    let (s, v) = app.admin_as(&viewer, "GET", "/admin/auth/me", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["role"], "viewer");
    let (s, _) = app
        .admin_as("nonsense", "GET", "/admin/auth/me", None)
        .await;
    assert_eq!(s, 401);
}

async fn import(app: &TestApp, query: &str, body: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(app.url(&format!("/admin/services/dry/keys/import{query}")))
        .bearer_auth(&app.token)
        .header("content-type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn an_import_dry_run_reports_bad_lines_and_duplicates_and_writes_nothing() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.create_service("dry", "openai", "http://127.0.0.1:9/v1")
        .await;
    app.add_keys("dry", &["sk-existing-0001"]).await;

    let body = "sk-new-key-0001\nsk bad,abc,1\nsk-existing-0001\n";
    let (s, v) = import(&app, "?dry_run=true", body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["added"], 0);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert!(errors[0].as_str().unwrap().starts_with("line 2:"), "{v}");

    let body = "sk-new-key-0001\nsk-new-key-0002\nsk-existing-0001\nsk-new-key-0001\n";
    let (s, v) = import(&app, "?dry_run=true", body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["added"].as_u64(), v["duplicates"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_eq!(
        app.key_statuses("dry").await.len(),
        1,
        "a dry run writes nothing"
    );

    let (s, v) = import(&app, "", body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["dry_run"], false);
    assert_eq!(v["added"], 2);
    assert_eq!(app.key_statuses("dry").await.len(), 3);
}
