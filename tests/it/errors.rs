//! One error contract: every admin error is problem+json with its status (extractor rejections,
//! unknown paths and wrong methods included), every data-plane error is in the client's format,
//! and the bearer scheme is matched in any case on both planes.
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp};
use crate::mock;

/// Sends `req`, asserts a problem+json answer with `status`, and returns its document.
async fn problem(
    req: reqwest::RequestBuilder,
    status: u16,
    what: &str,
) -> (Value, reqwest::header::HeaderMap) {
    let r = req.send().await.unwrap();
    let headers = r.headers().clone();
    assert_eq!(r.status().as_u16(), status, "{what}: status");
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/problem+json"),
        "{what}: content-type {ct:?}"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], status, "{what}: {v}");
    assert!(
        v["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("https://")),
        "{what}: {v}"
    );
    assert!(
        v["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {v}"
    );
    assert!(
        v["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: {v}"
    );
    (v, headers)
}

both!(
    every_admin_rejection_is_problem_json_with_its_status,
    |b: Backend| async move {
        let app = TestApp::spawn(b).await;
        let get = |path: &str| app.http.get(app.url(path)).bearer_auth(&app.token);
        let post = || {
            app.http
                .post(app.url("/admin/services"))
                .bearer_auth(&app.token)
        };

        let (v, _) = problem(
            get("/admin/services?limit=abc"),
            400,
            "a query that does not parse",
        )
        .await;
        assert!(v["detail"].as_str().unwrap().contains("limit"), "{v}");
        problem(
            get("/admin/services?limit=0"),
            400,
            "a page size out of range",
        )
        .await;
        let (v, _) = problem(get("/admin/services/%ff"), 400, "a slug that is not UTF-8").await;
        assert!(v["detail"].as_str().unwrap().contains("slug"), "{v}");
        problem(
            get("/admin/access-keys/abc"),
            400,
            "an id that is not a number",
        )
        .await;
        problem(
            post().body(r#"{"slug": "x"}"#),
            415,
            "a JSON body without its Content-Type",
        )
        .await;
        problem(
            post().header("content-type", "text/plain").body("{}"),
            415,
            "a body of another type",
        )
        .await;
        problem(
            post()
                .header("content-type", "application/json")
                .body("{bad"),
            400,
            "a body that is not JSON",
        )
        .await;
        problem(
            post().json(&json!({"slug": "x", "kind": "cohere"})),
            400,
            "a body of the wrong shape",
        )
        .await;
        let big = format!(
            r#"{{"slug": "x", "name": "{}"}}"#,
            "a".repeat(17 * 1024 * 1024)
        );
        problem(
            post().header("content-type", "application/json").body(big),
            413,
            "a body over the admin limit",
        )
        .await;
        problem(get("/admin/nope"), 404, "an admin path with no route").await;
        problem(get("/admin"), 404, "the bare admin prefix").await;
        problem(
            get("/admin/services/nope"),
            404,
            "a resource that does not exist",
        )
        .await;
        let (_, h) = problem(app.http.get(app.url("/admin/services")), 401, "no token").await;
        assert_eq!(h["www-authenticate"], "Bearer");
        problem(
            app.http
                .get(app.url("/admin/services"))
                .bearer_auth("not-a-jwt"),
            401,
            "a bad token",
        )
        .await;
    }
);

#[tokio::test]
async fn a_wrong_method_is_405_problem_json_naming_the_allowed_ones() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (_, h) = problem(
        app.http
            .put(app.url("/admin/services"))
            .bearer_auth(&app.token),
        405,
        "PUT on a collection",
    )
    .await;
    let allow = h["allow"].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let (_, h) = problem(
        app.http
            .post(app.url("/admin/services/x"))
            .bearer_auth(&app.token),
        405,
        "POST on an item",
    )
    .await;
    let allow = h["allow"].to_str().unwrap();
    assert!(
        allow.contains("PATCH") && allow.contains("DELETE") && !allow.contains("POST"),
        "{allow}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case_on_both_planes() {
    let up = mock::start().await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = app
            .http
            .get(app.url("/admin/auth/me"))
            .header("authorization", format!("{scheme} {}", app.token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "admin plane, scheme {scheme}");
    }
    let ak = app
        .with_service("bcase", &up.base, &["sk-bearer-case-1"])
        .await;
    for scheme in ["bearer", "BEARER"] {
        let r = app
            .http
            .post(app.url("/llm/bcase/v1/chat/completions"))
            .header("authorization", format!("{scheme} {ak}"))
            .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "data plane, scheme {scheme}");
    }
    // Another scheme is not a bearer token on either plane.
    let r = app
        .http
        .get(app.url("/admin/auth/me"))
        .header("authorization", format!("Basic {}", app.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn data_plane_requests_without_a_route_answer_in_the_clients_format() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let json_of = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{ct}");
        (status, r.json::<Value>().await.unwrap())
    };
    // An LLM slug with no API path, a REST slug with none, the default slug with none.
    let (s, v) = json_of(app.http.get(app.url("/llm/nope")).send().await.unwrap()).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().is_some(), "{v}");
    let (s, v) = json_of(app.http.get(app.url("/proxy/nope")).send().await.unwrap()).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "unknown_slug", "{v}");
    let (s, v) = json_of(app.http.get(app.url("/v1")).send().await.unwrap()).await;
    assert_eq!(s, 404, "{v}");
    // No route at all: the OpenAI shape, or Anthropic's when the request says it is one.
    let (s, v) = json_of(app.http.get(app.url("/nothing/here")).send().await.unwrap()).await;
    assert_eq!(s, 404, "{v}");
    assert!(v["error"]["message"].as_str().is_some(), "{v}");
    let r = app
        .http
        .post(app.url("/nothing/here"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["type"], "error", "{v}");
    // A query or a slug that does not decode is still the client's kind of error.
    let r = app
        .http
        .post(app.url("/llm/%ff/v1/chat/completions?key=%ff&x=%zz"))
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "unknown_slug", "{v}");
}

#[tokio::test]
async fn an_integer_field_takes_an_integral_number_written_as_a_float() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (s, v) = app
        .admin(
            "POST",
            "/admin/access-keys",
            Some(json!({"name": "floats", "rpm": 60.0})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["rpm"], 60, "{v}");
    let (s, v) = app
        .admin(
            "POST",
            "/admin/access-keys",
            Some(json!({"name": "floats", "rpm": 60.5})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().starts_with("rpm"), "{v}");
}

#[tokio::test]
async fn stats_refuse_times_beyond_rfc_3339_rather_than_drop_the_connection() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for q in [
        "to=9223372036854775806",
        "from=-9223372036854775807&bucket=1d",
    ] {
        let (s, v) = app.admin("GET", &format!("/admin/stats?{q}"), None).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert_eq!(v["status"], 400, "{q}: {v}");
    }
}
