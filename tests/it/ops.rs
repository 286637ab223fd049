//! Operations endpoints and the committed OpenAPI spec.
use serde_json::Value;

use crate::both;
use crate::harness::{Backend, TestApp};
use crate::mock;

both!(
    health_readiness_and_metrics_answer,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let r = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = app.http.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["database"], "ok");
        assert_eq!(v["coordination"], "ok");
        let ak = app
            .with_service("met", &up.base, &["sk-metrics-key-1"])
            .await;
        assert_eq!(app.chat("met", &ak).await.status(), 200);
        let text = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with("keygate_requests_total{")
                    && l.contains("slug=\"met\"")
                    && l.contains("status=\"200\"")),
            "{text}"
        );
        assert!(
            text.contains("keygate_request_duration_seconds_bucket"),
            "{text}"
        );
    }
);

#[tokio::test]
async fn served_openapi_matches_the_committed_spec() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let served: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, serde_json::to_string_pretty(&served).unwrap() + "\n").unwrap();
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("openapi/openapi.json exists"))
            .expect("committed spec is JSON");
    assert!(
        served == committed,
        "the served OpenAPI spec differs from openapi/openapi.json; regenerate with \
         `cargo run -- openapi > openapi/openapi.json` (or UPDATE_OPENAPI=1 cargo test) and review the diff"
    );
    // Every admin path of the contract is documented.
    for p in [
        "/admin/auth/login",
        "/admin/users/{id}",
        "/admin/services/{slug}",
        "/admin/services/{slug}/keys/import",
        "/admin/access-keys/{id}",
    ] {
        assert!(
            served["paths"].get(p).is_some(),
            "{p} missing from the spec"
        );
    }
}

#[tokio::test]
async fn docs_ui_is_served_from_the_binary() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let r = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "no CDN assets");
    let r = app
        .http
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 100_000);
}
