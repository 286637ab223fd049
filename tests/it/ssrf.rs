//! The SSRF guard (`egress.allow`) and the header-name rules of a service, through the admin
//! API and the data plane of a real app.
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, Shared, TestApp};
use crate::mock;

/// An app whose allow-list is `allow` (the harness allows loopback; these tests set their own).
async fn app_allowing(b: Backend, allow: &[&str]) -> (TestApp, Shared) {
    let mut shared = Shared::new(b).await;
    shared.config.egress.allow = allow.iter().map(|s| s.to_string()).collect();
    (TestApp::spawn_with(&shared.config).await, shared)
}

async fn create(app: &TestApp, body: Value) -> (u16, Value) {
    app.admin("POST", "/admin/services", Some(body)).await
}

fn detail(v: &Value) -> &str {
    v["detail"].as_str().unwrap_or_default()
}

both!(
    literal_non_public_base_urls_are_refused_when_written_in_every_spelling,
    |b: Backend| async move {
        let (app, _shared) = app_allowing(b, &[]).await;
        for (host, class) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("[::1]", "loopback"),
            ("2130706433", "loopback"),
            ("0x7f000001", "loopback"),
            ("127.1", "loopback"),
            ("0177.0.0.1", "loopback"),
            ("[::ffff:127.0.0.1]", "loopback"),
            ("10.0.0.5", "private"),
            ("100.64.1.1", "CGNAT"),
            ("[fd12::1]", "unique-local"),
            ("0.0.0.0", "unspecified"),
        ] {
            let url = format!("http://{host}:8080/v1");
            let (s, v) = create(
                &app,
                json!({"slug": "s", "kind": "openai", "base_url": url}),
            )
            .await;
            assert_eq!(s, 400, "{host}: {v}");
            let d = detail(&v);
            assert!(d.starts_with("base_url: "), "{host}: {d}");
            assert!(
                d.contains(class) && d.contains("egress.allow"),
                "{host}: {d}"
            );
        }
        let (s, v) = create(
            &app,
            json!({"slug": "pub", "kind": "openai", "base_url": "https://api.example.com/v1"}),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        // A patch meets the same check, and so does a proxy: it is an upstream hop too.
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/pub",
                Some(json!({"base_url": "http://169.254.169.254/latest/meta-data"})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            detail(&v).contains("169.254.169.254 is a link-local address"),
            "{v}"
        );
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/pub",
                Some(json!({"egress_proxy": "http://127.0.0.1:3128"})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            detail(&v).starts_with("egress_proxy: 127.0.0.1 is a loopback"),
            "{v}"
        );
        let (s, v) = app
            .admin(
                "POST",
                "/admin/services/pub/keys",
                Some(json!({"keys": [{"key": "sk-proxied-key-0001", "egress_proxy": "socks5://[::1]:1080"}]})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(
            detail(&v).contains("keys[0].egress_proxy: ::1 is a loopback"),
            "{v}"
        );
        let (_, v) = app.admin("GET", "/admin/services/pub", None).await;
        assert_eq!(
            v["base_url"], "https://api.example.com/v1",
            "nothing was written"
        );
    }
);

both!(
    an_allow_listed_network_admits_its_addresses_in_any_spelling_and_they_are_called,
    |b: Backend| async move {
        let (app, _shared) = app_allowing(b, &["127.0.0.0/8"]).await;
        let up = mock::start().await;
        let port = up
            .base
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches("/v1");
        // 2130706433 is 127.0.0.1 to the url crate, and so to the HTTP client that connects.
        let ak = app
            .with_service(
                "lo",
                &format!("http://2130706433:{port}/v1"),
                &["sk-allowed-key-0001"],
            )
            .await;
        let r = app.chat("lo", &ak).await;
        assert_eq!(r.status(), 200);
        assert_eq!(up.mock.seen().len(), 1);
        // Still refused: what the list does not name.
        let (s, v) = create(
            &app,
            json!({"slug": "meta", "kind": "openai", "base_url": "http://169.254.169.254/"}),
        )
        .await;
        assert_eq!(s, 400, "{v}");
        let (s, v) = create(
            &app,
            json!({"slug": "v6", "kind": "openai", "base_url": "http://[::1]:9/v1"}),
        )
        .await;
        assert_eq!(s, 400, "{v}");
    }
);

both!(
    a_name_that_resolves_to_loopback_is_refused_when_keygate_connects,
    |b: Backend| async move {
        let (app, _shared) = app_allowing(b, &[]).await;
        let up = mock::start().await;
        // A name is not resolved when written (its answer then says nothing of its answer at
        // the next request), so `localhost` is taken, as a rebinding name would be.
        let base = up.base.replace("127.0.0.1", "localhost");
        let ak = app
            .with_service("rebind", &base, &["sk-rebind-key-00001"])
            .await;
        let r = app.chat("rebind", &ak).await;
        assert_eq!(r.status(), 502);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "egress_refused", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("a loopback address") && msg.contains("egress.allow"),
            "{msg}"
        );
        assert!(
            !msg.contains("127.0.0.1"),
            "the client is not told the address: {msg}"
        );
        assert!(
            up.mock.seen().is_empty(),
            "the upstream never saw the request"
        );
        // Not the key's fault: it stays in rotation.
        assert_eq!(app.key_statuses("rebind").await[0].1, "active");

        // Validation goes through the same guard, and says why without blaming the key.
        let (_, keys) = app.admin("GET", "/admin/services/rebind/keys", None).await;
        let id = keys["items"][0]["id"].as_i64().unwrap();
        let (s, v) = app
            .admin(
                "POST",
                &format!("/admin/services/rebind/keys/{id}/test"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["ok"], false, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("localhost resolves to") && e.contains("loopback"),
            "{e}"
        );
        assert_eq!(v["key_status_after"], "active", "{v}");
        assert!(up.mock.seen().is_empty());
    }
);

/// An upstream on 127.0.0.1 that redirects every request to `to`.
async fn redirecting(to: String) -> String {
    let app = axum::Router::new().fallback(move || {
        let to = to.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [("location", to)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://127.0.0.1:{port}/v1")
}

both!(
    a_redirect_from_an_allowed_upstream_to_a_refused_address_is_not_followed,
    |b: Backend| async move {
        // 127.0.0.1 is allowed; 127.0.0.2 (loopback too, on Linux) is not.
        let (app, _shared) = app_allowing(b, &["127.0.0.1/32"]).await;
        let target = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        target.set_nonblocking(true).unwrap();
        let to = format!(
            "http://127.0.0.2:{}/v1/chat/completions",
            target.local_addr().unwrap().port()
        );
        let base = redirecting(to.clone()).await;
        let ak = app
            .with_service("redir", &base, &["sk-redirect-key-001"])
            .await;
        // This test's own client must not follow either, or it would be the one connecting.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = client
            .post(app.url("/llm/redir/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307, "the upstream's answer, as it was");
        assert_eq!(r.headers()["location"], to.as_str());
        // Had keygate followed, its connection would wait in the backlog before it answered.
        let err = target.accept().unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::WouldBlock,
            "nothing connected"
        );
    }
);

both!(
    header_names_must_be_plain_tokens_outside_the_connections_own,
    |b: Backend| async move {
        let (app, _shared) = app_allowing(b, &[]).await;
        let base = json!({"slug": "h", "kind": "openai", "base_url": "https://api.example.com/v1"});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let mut cases = vec![
            (json!({"auth_header": "admin'--"}), "auth_header: "),
            (json!({"auth_header": "x api key"}), "auth_header: "),
            (json!({"auth_format": "Bearer"}), "auth_format: "),
            (
                json!({"affinity_header": "keep-alive"}),
                "affinity_header: ",
            ),
            (
                json!({"upstream_headers": {"x-ok": "1", "transfer-encoding": "chunked"}}),
                "upstream_headers: ",
            ),
            (
                json!({"upstream_headers": {"x'y": "1"}}),
                "upstream_headers: ",
            ),
        ];
        for h in [
            "connection",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "host",
            "content-length",
        ] {
            cases.push((json!({"auth_header": h}), "auth_header: "));
            cases.push((json!({"upstream_headers": {h: "v"}}), "upstream_headers: "));
        }
        for (extra, field) in cases {
            let (s, v) = create(&app, with(extra.clone())).await;
            assert_eq!(s, 400, "{extra}: {v}");
            assert!(detail(&v).starts_with(field), "{extra}: {v}");
        }
        let (s, v) = create(
            &app,
            with(
                json!({"auth_header": "X-Api-Key", "auth_format": "Token {key}",
                "affinity_header": "x-session-id", "upstream_headers": {"x-org": "acme"}}),
            ),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        // A patch meets the same rules.
        for (extra, field) in [
            (json!({"auth_header": "upgrade"}), "auth_header: "),
            (json!({"auth_format": "{secret}"}), "auth_format: "),
            (json!({"affinity_header": "host"}), "affinity_header: "),
            (
                json!({"upstream_headers": {"te": "trailers"}}),
                "upstream_headers: ",
            ),
        ] {
            let (s, v) = app
                .admin("PATCH", "/admin/services/h", Some(extra.clone()))
                .await;
            assert_eq!(s, 400, "{extra}: {v}");
            assert!(detail(&v).starts_with(field), "{extra}: {v}");
        }
        let (_, v) = app.admin("GET", "/admin/services/h", None).await;
        assert_eq!(v["auth_header"], "x-api-key");
    }
);
