//! Data plane: rotation, failover, streaming, client auth and error shapes, on both backends.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp};
use crate::mock::{self, Behaviour};

both!(
    round_robin_sends_exactly_100_of_300_requests_to_each_of_3_keys,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let ak = app
            .with_service(
                "rr",
                &up.base,
                &["sk-key-aaaa-1", "sk-key-bbbb-2", "sk-key-cccc-3"],
            )
            .await;
        for _ in 0..300 {
            let r = app.chat("rr", &ak).await;
            assert_eq!(r.status(), 200);
        }
        let counts = up.mock.counts();
        println!("[{b:?}] requests per key after 300 calls: {counts:?}");
        let expected: HashMap<String, usize> = [
            ("sk-key-aaaa-1", 100),
            ("sk-key-bbbb-2", 100),
            ("sk-key-cccc-3", 100),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
        assert_eq!(counts, expected);
    }
);

both!(
    forwards_path_query_and_body_and_swaps_the_credential,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let ak = app
            .with_service("fwd", &up.base, &["sk-upstream-1111"])
            .await;
        // With and without the version segment, the upstream sees {base_url}/chat/completions.
        for path in [
            "/llm/fwd/v1/chat/completions?x=1&key=drop",
            "/llm/fwd/chat/completions?x=1",
        ] {
            let r = app
                .http
                .post(app.url(path))
                .header("x-api-key", &ak)
                .header("x-custom", "kept")
                .json(&json!({"model": "m1", "messages": []}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["object"], "chat.completion");
        }
        let seen = up.mock.seen();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            assert_eq!(s.path, "/v1/chat/completions");
            assert_eq!(s.query.as_deref(), Some("x=1"));
            assert_eq!(s.key, "sk-upstream-1111");
            assert!(
                s.headers.get("x-api-key").is_none(),
                "client credential must not be forwarded"
            );
            assert_eq!(s.headers.get("x-custom").unwrap(), "kept");
            let body: Value = serde_json::from_slice(&s.body).unwrap();
            assert_eq!(body["model"], "m1");
        }
    }
);

both!(
    fails_over_past_401_and_429_keys_and_marks_them,
    |b: Backend| async move {
        let up = mock::start().await;
        up.mock.set("sk-bad-401-key", Behaviour::Status(401, None));
        up.mock
            .set("sk-limited-429", Behaviour::Status(429, Some(120)));
        let app = TestApp::spawn(b).await;
        let ak = app
            .with_service(
                "fo",
                &up.base,
                &["sk-good-key-1", "sk-bad-401-key", "sk-limited-429"],
            )
            .await;
        for i in 0..30 {
            let r = app.chat("fo", &ak).await;
            assert_eq!(r.status(), 200, "request {i} must succeed through failover");
        }
        let counts = up.mock.counts();
        assert_eq!(counts["sk-good-key-1"], 30);
        assert_eq!(
            counts["sk-bad-401-key"], 1,
            "an invalid key is not tried again"
        );
        assert_eq!(
            counts["sk-limited-429"], 1,
            "a cooling key is not tried again"
        );
        let st: HashMap<String, String> = app.key_statuses("fo").await.into_iter().collect();
        assert_eq!(
            st[&keygate::crypto::mask("sk-bad-401-key")],
            "invalid",
            "{st:?}"
        );
        assert_eq!(
            st[&keygate::crypto::mask("sk-limited-429")],
            "cooling",
            "{st:?}"
        );
        assert_eq!(
            st[&keygate::crypto::mask("sk-good-key-1")],
            "active",
            "{st:?}"
        );
        // Re-enabling clears the mark; the key is used again.
        let (_, v) = app.admin("GET", "/admin/services/fo/keys", None).await;
        let bad_id = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == keygate::crypto::mask("sk-bad-401-key").as_str())
            .unwrap()["id"]
            .clone();
        up.mock.set("sk-bad-401-key", Behaviour::Ok);
        let (s, v) = app
            .admin(
                "PATCH",
                &format!("/admin/services/fo/keys/{bad_id}"),
                Some(json!({"status": "active"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "active");
        for _ in 0..4 {
            assert_eq!(app.chat("fo", &ak).await.status(), 200);
        }
        assert!(
            up.mock.counts()["sk-bad-401-key"] >= 2,
            "re-enabled key back in rotation"
        );
    }
);

both!(
    no_usable_key_is_503_in_the_openai_shape,
    |b: Backend| async move {
        let up = mock::start().await;
        up.mock.set("sk-only-key-401", Behaviour::Status(401, None));
        let app = TestApp::spawn(b).await;
        let ak = app
            .with_service("dead", &up.base, &["sk-only-key-401"])
            .await;
        let r = app.chat("dead", &ak).await;
        assert_eq!(r.status(), 502, "the only key fails: upstream failed");
        let r = app.chat("dead", &ak).await;
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "no_usable_key");
        assert!(v["error"]["message"].as_str().unwrap().contains("dead"));
        assert_eq!(up.mock.counts()["sk-only-key-401"], 1);
    }
);

both!(
    server_errors_retry_on_the_next_key_without_marking_client_errors,
    |b: Backend| async move {
        let up = mock::start().await;
        up.mock.set("sk-flaky-500-x", Behaviour::Status(500, None));
        up.mock.set("sk-client-400-x", Behaviour::Status(400, None));
        let app = TestApp::spawn(b).await;
        let ak = app
            .with_service("e5", &up.base, &["sk-flaky-500-x", "sk-healthy-key"])
            .await;
        for _ in 0..6 {
            assert_eq!(app.chat("e5", &ak).await.status(), 200);
        }
        // A 400 is the client's problem: passed through, never retried, key stays active.
        app.add_keys("e5", &["sk-client-400-x"]).await;
        let mut saw_400 = false;
        for _ in 0..6 {
            let s = app.chat("e5", &ak).await.status();
            assert!(s == 200 || s == 400, "{s}");
            saw_400 |= s == 400;
        }
        assert!(saw_400, "the 400 answer reaches the client");
        let st: HashMap<String, String> = app.key_statuses("e5").await.into_iter().collect();
        assert_eq!(st[&keygate::crypto::mask("sk-client-400-x")], "active");
    }
);

both!(streams_sse_chunk_by_chunk, |b: Backend| async move {
    let up = mock::start().await;
    let gate = Arc::new(tokio::sync::Notify::new());
    up.mock
        .set("sk-stream-key-1", Behaviour::GatedStream(gate.clone()));
    let app = TestApp::spawn(b).await;
    let ak = app
        .with_service("sse", &up.base, &["sk-stream-key-1"])
        .await;
    let r = app
        .http
        .post(app.url("/llm/sse/v1/chat/completions"))
        .bearer_auth(&ak)
        .json(&json!({"model": "m", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    // The upstream holds the rest of the stream until `gate` opens: the first event must arrive now.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("first chunk arrives while the upstream is still streaming")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    assert!(!String::from_utf8_lossy(&first).contains("[DONE]"));
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .unwrap()
    {
        rest.extend_from_slice(&c.unwrap());
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.contains("second") && rest.contains("data: [DONE]"),
        "{rest}"
    );
});

both!(
    bad_or_missing_access_key_is_401_and_unknown_slug_404,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let ak = app.with_service("auth", &up.base, &["sk-auth-key-1"]).await;
        let r = app.chat("auth", "kg-not-a-real-key").await;
        assert_eq!(r.status(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
        let r = app
            .http
            .post(app.url("/llm/auth/v1/chat/completions"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = app.chat("nope", &ak).await;
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
        // Anthropic-format clients get the Anthropic error shape.
        let r = app
            .http
            .post(app.url("/llm/nope/v1/messages"))
            .header("x-api-key", &ak)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert!(up.mock.seen().is_empty(), "nothing reached the upstream");
    }
);

both!(
    access_key_limited_to_slugs_gets_403_elsewhere,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        app.with_service("one", &up.base, &["sk-one-key-11"]).await;
        app.with_service("two", &up.base, &["sk-two-key-22"]).await;
        let (s, v) = app
            .admin(
                "POST",
                "/admin/access-keys",
                Some(json!({"name": "only-one", "slugs": ["one"]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let k = v["key"].as_str().unwrap().to_string();
        assert_eq!(app.chat("one", &k).await.status(), 200);
        let r = app.chat("two", &k).await;
        assert_eq!(r.status(), 403);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "permission_error");
    }
);

both!(
    global_proxy_keys_and_other_credential_headers_work,
    |b: Backend| async move {
        let up = mock::start().await;
        let mut shared = crate::harness::Shared::new(b).await;
        shared.config.proxy.global_proxy_keys =
            Some("global-key-one, global-key-two".to_string().into());
        let app = TestApp::spawn_with(&shared.config).await;
        app.create_service("g", "openai", &up.base).await;
        app.add_keys("g", &["sk-global-up-1"]).await;
        let r = app
            .http
            .get(app.url("/llm/g/v1/models?key=global-key-two"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = app
            .http
            .get(app.url("/llm/g/v1/models"))
            .header("x-proxy-key", "global-key-one")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(up.mock.seen()[0].query, None, "?key= is stripped");
        assert!(up.mock.seen().iter().all(|s| s.key == "sk-global-up-1"));
    }
);

both!(
    request_body_over_the_limit_is_413,
    |b: Backend| async move {
        let up = mock::start().await;
        let mut shared = crate::harness::Shared::new(b).await;
        shared.config.proxy.max_body_bytes = 1024;
        let app = TestApp::spawn_with(&shared.config).await;
        app.create_service("big", "openai", &up.base).await;
        app.add_keys("big", &["sk-big-key-123"]).await;
        let ak = app.access_key().await;
        let r = app
            .http
            .post(app.url("/llm/big/v1/chat/completions"))
            .bearer_auth(&ak)
            .body(vec![b'x'; 4096])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert!(up.mock.seen().is_empty());
    }
);

both!(default_slug_serves_v1, |b: Backend| async move {
    let up = mock::start().await;
    let mut shared = crate::harness::Shared::new(b).await;
    shared.config.proxy.default_slug = Some("main".into());
    let app = TestApp::spawn_with(&shared.config).await;
    let ak = app.with_service("main", &up.base, &["sk-main-key-1"]).await;
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&ak)
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.mock.seen()[0].path, "/v1/chat/completions");
});

both!(
    paths_are_forwarded_raw_and_dot_segments_refused,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let ak = app
            .with_service("raw", &up.base, &["sk-raw-path-key1"])
            .await;
        // Sent as raw request lines: URL libraries (reqwest's too) would normalise the dots away.
        for bad in [
            "/llm/raw/..%2F..%2Fadmin",
            "/llm/raw/v1/%2e%2e/secret",
            "/llm/raw/v1/./x",
            "/llm/raw/v1/..%5Cx",
        ] {
            assert_eq!(raw_status(&app, bad, &ak).await, 400, "{bad}");
        }
        let r = app
            .http
            .get(app.url("/llm/raw/v1/files/a%2Fb%3Fc?limit=2"))
            .bearer_auth(&ak)
            .header("accept-encoding", "gzip, br")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = up.mock.seen();
        assert_eq!(seen.len(), 1, "refused paths never reach the upstream");
        assert_eq!(
            seen[0].path, "/v1/files/a%2Fb%3Fc",
            "encoded as the client sent it"
        );
        assert_eq!(seen[0].query.as_deref(), Some("limit=2"));
        assert!(
            seen[0].headers.get("accept-encoding").is_none(),
            "answers must come uncompressed"
        );
    }
);

both!(
    an_oversized_streamed_body_is_413_and_not_the_keys_fault,
    |b: Backend| async move {
        let up = mock::start().await;
        let mut shared = crate::harness::Shared::new(b).await;
        shared.config.proxy.max_body_bytes = 4096;
        let app = TestApp::spawn_with(&shared.config).await;
        let ak = app
            .with_service("chunky", &up.base, &["sk-chunky-key-01"])
            .await;
        // No Content-Length: the body streams, and the limit applies as it goes. 5 KiB, then the
        // client waits (as one that reads early answers would): keygate refuses as soon as the
        // limit is passed, without waiting for a body end that never comes.
        let chunks =
            futures::stream::iter((0..5).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024])))
                .chain(futures::stream::pending());
        let r = app
            .http
            .post(app.url("/llm/chunky/v1/files"))
            .bearer_auth(&ak)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert!(
            crate::harness::eventually(Duration::from_secs(3), || async {
                let (_, v) = app.admin("GET", "/admin/services/chunky/keys", None).await;
                v["items"][0]["in_flight"] == 0
            })
            .await,
            "lease released"
        );
        let (_, v) = app.admin("GET", "/admin/services/chunky/keys", None).await;
        assert_eq!(v["items"][0]["consecutive_failures"], 0, "{v}");
        assert_eq!(v["items"][0]["status"], "active");
    }
);

both!(
    a_stream_that_stalls_past_the_request_timeout_is_ended_and_marked,
    |b: Backend| async move {
        let up = mock::start().await;
        let gate = Arc::new(tokio::sync::Notify::new());
        up.mock
            .set("sk-stalls-key-01", Behaviour::GatedStream(gate.clone()));
        let app = TestApp::spawn(b).await;
        crate::pool::service(
            &app,
            "stall",
            &up.base,
            json!({"request_timeout_ms": 300}),
            &[("sk-stalls-key-01", 1)],
        )
        .await;
        let ak = app.access_key().await;
        let r = app.chat("stall", &ak).await;
        assert_eq!(r.status(), 200);
        let text = String::from_utf8_lossy(
            &tokio::time::timeout(Duration::from_secs(10), r.bytes())
                .await
                .unwrap()
                .unwrap(),
        )
        .into_owned();
        assert!(
            text.contains("first") && text.contains("\"error\""),
            "{text}"
        );
        // The stalled stream's lease is released and its failure recorded (off the client's path).
        assert!(
            crate::harness::eventually(Duration::from_secs(3), || async {
                let (_, v) = app.admin("GET", "/admin/services/stall/keys", None).await;
                v["items"][0]["consecutive_failures"] == 1 && v["items"][0]["in_flight"] == 0
            })
            .await
        );
    }
);

/// Status of a GET sent over a plain socket, path exactly as given.
async fn raw_status(app: &TestApp, path: &str, key: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

both!(
    request_logs_are_written_in_batches_with_the_usage,
    |b: Backend| async move {
        use sea_orm::EntityTrait;
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        let ak = app
            .with_service("logged", &up.base, &["sk-logged-key-01"])
            .await;
        for _ in 0..5 {
            let r = app.chat("logged", &ak).await;
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await;
        }
        assert_eq!(
            app.chat("nope", &ak).await.status(),
            404,
            "unknown slugs are not logged"
        );
        let db = app.state.db.clone();
        assert!(
            crate::harness::eventually(Duration::from_secs(5), || async {
                keygate::db::logs::count_for_service(&db, "logged")
                    .await
                    .unwrap()
                    == 5
            })
            .await,
            "five rows reach the database off the request path"
        );
        let rows = keygate::db::entity::request_log::Entity::find()
            .all(&db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 5);
        for r in rows {
            assert_eq!((r.status, r.attempts), (200, 1));
            assert_eq!(r.model.as_deref(), Some("gpt-test"));
            assert_eq!(
                (r.prompt_tokens, r.completion_tokens),
                (Some(3), Some(1)),
                "usage from the answer"
            );
            assert_eq!(r.path, "v1/chat/completions");
            assert!(r.upstream_key_id.is_some() && r.access_key_id.is_some());
        }
    }
);
