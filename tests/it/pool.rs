//! The key pool through the real gateway: strategies, caps, client rate limits, token usage,
//! retry policy, upstream-wide backoff and broken streams, on both backends.
use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp, eventually};
use crate::mock::{self, Behaviour};

/// Creates a service with extra settings and the given keys (key, weight).
pub async fn service(app: &TestApp, slug: &str, base: &str, extra: Value, keys: &[(&str, u32)]) {
    let mut body = json!({"slug": slug, "kind": "openai", "base_url": base});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (s, v) = app.admin("POST", "/admin/services", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let items: Vec<Value> = keys
        .iter()
        .map(|(k, w)| json!({"key": k, "weight": w}))
        .collect();
    let (s, v) = app
        .admin(
            "POST",
            &format!("/admin/services/{slug}/keys"),
            Some(json!({"keys": items})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

pub async fn access_key(app: &TestApp, limits: Value) -> String {
    let mut body = json!({"name": "limited"});
    body.as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    let (s, v) = app.admin("POST", "/admin/access-keys", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["key"].as_str().unwrap().to_string()
}

both!(
    weighted_strategy_sends_100_200_300_of_600,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        service(
            &app,
            "w",
            &up.base,
            json!({"strategy": "weighted"}),
            &[
                ("sk-w-one-1111", 1),
                ("sk-w-two-2222", 2),
                ("sk-w-three-333", 3),
            ],
        )
        .await;
        let ak = app.access_key().await;
        for _ in 0..600 {
            assert_eq!(app.chat("w", &ak).await.status(), 200);
        }
        let c = up.mock.counts();
        println!("[{b:?}] weighted 1/2/3 over 600 requests: {c:?}");
        assert_eq!(
            (c["sk-w-one-1111"], c["sk-w-two-2222"], c["sk-w-three-333"]),
            (100, 200, 300)
        );
    }
);

both!(
    access_key_rpm_admits_exactly_n_and_answers_429_with_headers,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        service(&app, "rl", &up.base, json!({}), &[("sk-rl-key-1111", 1)]).await;
        let ak = access_key(&app, json!({"rpm": 5})).await;
        let mut codes = Vec::new();
        for _ in 0..8 {
            let r = app.chat("rl", &ak).await;
            let s = r.status().as_u16();
            assert_eq!(r.headers()["x-ratelimit-limit-requests"], "5");
            if s == 429 {
                let ra: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&ra), "{ra}");
                assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "rate_limited");
            }
            codes.push(s);
        }
        assert_eq!(codes, vec![200, 200, 200, 200, 200, 429, 429, 429]);
        assert_eq!(
            up.mock.seen().len(),
            5,
            "refused requests never reach the upstream"
        );
    }
);

both!(
    tokens_from_the_response_usage_count_against_the_access_key_tpm,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        service(&app, "tpm", &up.base, json!({}), &[("sk-tpm-key-1111", 1)]).await;
        // The mock reports 4 tokens per answer; 8 tokens a minute allow two answers.
        let ak = access_key(&app, json!({"tpm": 8})).await;
        let admitted = std::sync::atomic::AtomicU32::new(0);
        let refused = eventually(Duration::from_secs(5), || async {
            let r = app.chat("tpm", &ak).await;
            if r.status() == 200 {
                admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = r.bytes().await;
                return false;
            }
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "0");
            true
        })
        .await;
        assert!(refused, "the token limit is reached");
        // Usage is recorded as each answer ends, off the client's path: at most one more slips in.
        let admitted = admitted.into_inner();
        assert!((2..=3).contains(&admitted), "admitted {admitted}");
    }
);

both!(
    key_concurrency_cap_holds_under_200_concurrent_requests,
    |b: Backend| async move {
        let up = mock::start().await;
        let keys = ["sk-cap-aaaa-111", "sk-cap-bbbb-222", "sk-cap-cccc-333"];
        for k in keys {
            up.mock.set(k, Behaviour::Slow(Duration::from_millis(20)));
        }
        let app = TestApp::spawn(b).await;
        service(
            &app,
            "cap",
            &up.base,
            json!({"strategy": "least_used", "key_concurrency": 2, "queue_timeout_ms": 30000}),
            &[(keys[0], 1), (keys[1], 1), (keys[2], 1)],
        )
        .await;
        let ak = app.access_key().await;
        let calls = (0..200).map(|_| app.chat("cap", &ak));
        let statuses: Vec<u16> = futures::future::join_all(calls)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        let peak = up.mock.peak_concurrency();
        println!("[{b:?}] peak concurrent requests per key (cap 2): {peak:?}");
        assert!(peak.values().all(|p| *p <= 2), "{peak:?}");
        assert_eq!(up.mock.seen().len(), 200);
    }
);

both!(
    all_keys_busy_past_the_queue_timeout_is_503,
    |b: Backend| async move {
        let up = mock::start().await;
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        up.mock
            .set("sk-busy-key-1111", Behaviour::GatedStream(gate.clone()));
        let app = TestApp::spawn(b).await;
        service(
            &app,
            "busy",
            &up.base,
            json!({"key_concurrency": 1, "queue_timeout_ms": 300}),
            &[("sk-busy-key-1111", 1)],
        )
        .await;
        let ak = app.access_key().await;
        let held = app.chat("busy", &ak).await;
        assert_eq!(held.status(), 200, "the stream holds the only slot");
        let r = app.chat("busy", &ak).await;
        assert_eq!(r.status(), 503);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("concurrency"),
            "{v}"
        );
        gate.notify_one();
        let _ = held.bytes().await;
        // The lease is released when the stream ends.
        assert!(
            eventually(Duration::from_secs(5), || async {
                let r = app.chat("busy", &ak).await;
                let ok = r.status() == 200;
                if ok {
                    gate.notify_one();
                    let _ = r.bytes().await;
                }
                ok
            })
            .await
        );
    }
);

both!(
    statuses_outside_retry_on_are_passed_through_not_retried,
    |b: Backend| async move {
        let up = mock::start().await;
        up.mock
            .set("sk-first-429-key", Behaviour::Status(429, Some(30)));
        let app = TestApp::spawn(b).await;
        service(
            &app,
            "nr",
            &up.base,
            json!({"retry_on": "5xx"}),
            &[("sk-first-429-key", 1), ("sk-second-ok-k2", 1)],
        )
        .await;
        let ak = app.access_key().await;
        let r = app.chat("nr", &ak).await;
        assert_eq!(
            r.status(),
            429,
            "429 is not in retry_on: the client gets it"
        );
        assert_eq!(r.headers()["retry-after"], "30");
        assert_eq!(up.mock.seen().len(), 1);
        let st: HashMap<String, String> = app.key_statuses("nr").await.into_iter().collect();
        assert_eq!(
            st[&keygate::crypto::mask("sk-first-429-key")],
            "cooling",
            "the key is still marked"
        );
        assert_eq!(app.chat("nr", &ak).await.status(), 200);
    }
);

both!(
    rate_limits_on_most_keys_back_off_the_service_without_burning_every_key,
    |b: Backend| async move {
        let up = mock::start().await;
        let keys = ["sk-ip-limit-aaa1", "sk-ip-limit-bbb2", "sk-ip-limit-ccc3"];
        for k in keys {
            up.mock.set(k, Behaviour::Status(429, Some(30)));
        }
        let app = TestApp::spawn(b).await;
        service(
            &app,
            "ip",
            &up.base,
            json!({}),
            &[(keys[0], 1), (keys[1], 1), (keys[2], 1)],
        )
        .await;
        let ak = app.access_key().await;
        let r = app.chat("ip", &ak).await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("every key"),
            "{v}"
        );
        assert_eq!(
            up.mock.seen().len(),
            2,
            "two of three keys refused: the third is not burned"
        );
        let r = app.chat("ip", &ak).await;
        assert_eq!(r.status(), 429);
        assert_eq!(
            up.mock.seen().len(),
            2,
            "while backing off, nothing is sent upstream"
        );
        let st: Vec<String> = app
            .key_statuses("ip")
            .await
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        assert_eq!(st.iter().filter(|s| *s == "active").count(), 2, "{st:?}");
    }
);

both!(
    a_stream_that_breaks_midway_ends_with_an_error_event_and_marks_the_key,
    |b: Backend| async move {
        let up = mock::start().await;
        let break_now = std::sync::Arc::new(tokio::sync::Notify::new());
        up.mock.set(
            "sk-breaks-key-111",
            Behaviour::BreakingStream(break_now.clone()),
        );
        let app = TestApp::spawn(b).await;
        service(
            &app,
            "brk",
            &up.base,
            json!({}),
            &[("sk-breaks-key-111", 1)],
        )
        .await;
        let ak = app.access_key().await;
        let r = app.chat("brk", &ak).await;
        assert_eq!(r.status(), 200);
        let mut body = r.bytes_stream();
        let first = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let mut text = String::from_utf8_lossy(&first).into_owned();
        // Bytes reached the client: the break can no longer be retried on another key.
        break_now.notify_one();
        while let Some(c) = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .unwrap()
        {
            text.push_str(&String::from_utf8_lossy(
                &c.expect("the client stream ends cleanly"),
            ));
        }
        assert!(text.contains("partial"), "{text}");
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(
            last.starts_with("data: ") && last.contains("\"error\""),
            "terminal error event: {text}"
        );
        let failures = eventually(Duration::from_secs(3), || async {
            let (_, v) = app.admin("GET", "/admin/services/brk/keys", None).await;
            v["items"][0]["consecutive_failures"] == 1
        })
        .await;
        assert!(failures, "the key's failure is recorded");
    }
);

both!(
    an_answer_without_body_counts_as_a_success_and_releases_the_key,
    |b: Backend| async move {
        let up = mock::start().await;
        up.mock
            .set("sk-nobody-key-01", Behaviour::Status(500, None));
        let app = TestApp::spawn(b).await;
        service(&app, "nb", &up.base, json!({}), &[("sk-nobody-key-01", 1)]).await;
        let ak = app.access_key().await;
        assert_eq!(app.chat("nb", &ak).await.status(), 502);
        up.mock
            .set("sk-nobody-key-01", Behaviour::Status(204, None));
        assert_eq!(app.chat("nb", &ak).await.status(), 204);
        // The 204 reset the failure count and gave the lease back.
        assert!(
            eventually(Duration::from_secs(3), || async {
                let (_, v) = app.admin("GET", "/admin/services/nb/keys", None).await;
                v["items"][0]["consecutive_failures"] == 0 && v["items"][0]["in_flight"] == 0
            })
            .await
        );
    }
);

both!(
    a_client_stalling_its_upload_gets_408_and_the_key_is_not_blamed,
    |b: Backend| async move {
        let up = mock::start().await;
        let app = TestApp::spawn(b).await;
        service(
            &app,
            "slowup",
            &up.base,
            json!({"request_timeout_ms": 300}),
            &[("sk-slow-upload-1", 1)],
        )
        .await;
        let ak = app.access_key().await;
        // One chunk, then the client goes quiet (no Content-Length: the body streams upstream).
        let body = futures::stream::iter([Ok::<_, std::io::Error>(vec![b'{'; 10])])
            .chain(futures::stream::pending());
        let r = app
            .http
            .post(app.url("/llm/slowup/v1/chat/completions"))
            .bearer_auth(&ak)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 408);
        assert!(
            eventually(Duration::from_secs(3), || async {
                let (_, v) = app.admin("GET", "/admin/services/slowup/keys", None).await;
                v["items"][0]["in_flight"] == 0
            })
            .await
        );
        let (_, v) = app.admin("GET", "/admin/services/slowup/keys", None).await;
        assert_eq!(v["items"][0]["consecutive_failures"], 0, "{v}");
    }
);
