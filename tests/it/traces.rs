//! OpenTelemetry traces from the real binary on Postgres + Redis to an OTLP/HTTP sink the test
//! starts: the request span under the client's `traceparent`, its attempt and coordination
//! children, the `traceparent` the upstream receives, the trace id in log lines, and a dead
//! collector costing nothing but a counter.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

use crate::harness::eventually;
use crate::mock::{self, Behaviour};
use crate::servers::{free_port, servers};

const GOOD: &str = "sk-trace-good-key-0001";
const BAD: &str = "sk-trace-bad-key-00002";
const PASSWORD: &str = "trace-test-password";

/// An OTLP/HTTP collector: keeps every span it is sent.
async fn sink() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        kept.lock().unwrap().extend(ss.spans);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, spans)
}

struct Gateway {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    base: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary on a fresh Postgres database and Redis prefix, exporting to `collector`.
async fn gateway(collector: &str) -> Gateway {
    let s = servers();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(format!("{}/postgres", s.pg_base))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keygate"))
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", port.to_string())
        .env("DATABASE_URL", format!("{}/{name}", s.pg_base))
        .env("REDIS_URL", &s.redis_url)
        .env("KEYGATE__REDIS__PREFIX", format!("{name}:"))
        .env("JWT_SECRET", "jwt-secret-for-tests-0123456789")
        .env("KEYGATE_ENCRYPTION_KEY", "ab".repeat(32))
        .env("ADMIN_PASSWORD", PASSWORD)
        // The mock upstream is on loopback, which the SSRF guard refuses unless allowed.
        .env("KEYGATE__EGRESS__ALLOW", "127.0.0.0/8,::1/128")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
        .env("OTEL_SERVICE_NAME", "keygate-under-test")
        // Batches every 100 ms instead of 5 s, so the test sees spans quickly.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines = stderr.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(l);
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    assert!(
        eventually(Duration::from_secs(60), || async {
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await,
        "the binary never answered"
    );
    Gateway {
        child,
        _dir: dir,
        base,
        stderr,
    }
}

impl Gateway {
    async fn admin(&self, token: &str, method: &str, path: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// A slug on `upstream` with `keys`, and an access key for it.
    async fn slug(&self, slug: &str, upstream: &str, keys: &[&str]) -> String {
        let r: Value = reqwest::Client::new()
            .post(format!("{}/admin/auth/login", self.base))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["access_token"].as_str().unwrap().to_string();
        self.admin(
            &token,
            "POST",
            "/admin/services",
            json!({"slug": slug, "kind": "openai", "base_url": upstream}),
        )
        .await;
        let items: Vec<Value> = keys.iter().map(|k| json!({"key": k})).collect();
        self.admin(
            &token,
            "POST",
            &format!("/admin/services/{slug}/keys"),
            json!({"keys": items}),
        )
        .await;
        let ak = self
            .admin(&token, "POST", "/admin/access-keys", json!({"name": "t"}))
            .await;
        ak["key"].as_str().unwrap().to_string()
    }

    async fn chat(&self, slug: &str, ak: &str, traceparent: &str) -> u16 {
        let mut req = reqwest::Client::new()
            .post(format!("{}/llm/{slug}/v1/chat/completions", self.base))
            .bearer_auth(ak);
        if !traceparent.is_empty() {
            req = req.header("traceparent", traceparent);
        }
        req.json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            Any::StringValue(s) => s.clone(),
            Any::IntValue(i) => i.to_string(),
            Any::BoolValue(b) => b.to_string(),
            Any::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

/// The spans of one trace, once `done` holds for them (with a deadline).
async fn trace_of(
    spans: &Arc<Mutex<Vec<Span>>>,
    trace_id: &[u8],
    done: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<Span> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        if done(&got) {
            return got;
        }
        let names: Vec<_> = got.iter().map(|s| s.name.clone()).collect();
        assert!(
            Instant::now() < deadline,
            "the trace never completed: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_under_the_clients_span_with_its_attempts_and_store_calls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (collector, spans) = sink().await;
    let up = mock::start().await;
    let gw = gateway(&collector).await;
    let ak = gw.slug("traced", &up.base, &[GOOD]).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let status = gw
        .chat("traced", &ak, &format!("00-{trace}-{client_span}-01"))
        .await;
    assert_eq!(status, 200);
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let got = trace_of(&spans, &trace_bytes, |s| {
        s.iter().any(|s| s.name == "llm.request")
            && s.iter().any(|s| s.name == "upstream.attempt")
            && s.iter().any(|s| s.name == "coord.release")
    })
    .await;
    let request = got.iter().find(|s| s.name == "llm.request").unwrap();
    assert_eq!(
        hex(&request.parent_span_id),
        client_span,
        "under the client's span"
    );
    assert_eq!(attr(request, "slug").as_deref(), Some("traced"));
    assert_eq!(attr(request, "status").as_deref(), Some("200"));
    assert_eq!(attr(request, "model").as_deref(), Some("gpt-test"));
    assert_eq!(attr(request, "client_format").as_deref(), Some("openai"));
    assert_eq!(attr(request, "attempts").as_deref(), Some("1"));
    assert_eq!(attr(request, "prompt_tokens").as_deref(), Some("3"));
    let attempt = got.iter().find(|s| s.name == "upstream.attempt").unwrap();
    assert_eq!(
        attempt.parent_span_id, request.span_id,
        "the attempt is the request's child"
    );
    assert_eq!(attr(attempt, "status").as_deref(), Some("200"));
    assert!(attr(attempt, "key_id").is_some());
    let acquire = got.iter().find(|s| s.name == "coord.acquire").unwrap();
    assert_eq!(acquire.parent_span_id, request.span_id);
    let release = got.iter().find(|s| s.name == "coord.release").unwrap();
    assert_eq!(
        release.parent_span_id, request.span_id,
        "a release off the request's task"
    );
    // No attribute anywhere holds the upstream key or the access key.
    for s in &got {
        for a in &s.attributes {
            let v = format!("{:?}", a.value);
            assert!(
                !v.contains(GOOD) && !v.contains(&ak),
                "{} leaks a key",
                s.name
            );
        }
    }
    // The upstream was called under the attempt's span.
    let seen = up.mock.seen();
    let tp = seen.last().unwrap().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(tp, format!("00-{trace}-{}-01", hex(&attempt.span_id)));

    // A log line inside a request names its trace.
    let trace2 = "0af7651916cd43dd8448eb211c80319c";
    up.mock.set(BAD, Behaviour::Status(401, None));
    let ak2 = gw.slug("refused", &up.base, &[BAD]).await;
    gw.chat("refused", &ak2, &format!("00-{trace2}-b7ad6b7169203331-01"))
        .await;
    let found = eventually(Duration::from_secs(10), || async {
        gw.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("out of rotation") && l.contains(trace2))
    })
    .await;
    assert!(
        found,
        "no log line names the trace: {:?}",
        gw.stderr.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_requests_nothing_but_a_counter_and_one_warning() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A port nothing listens on.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let up = mock::start().await;
    let gw = gateway(&dead).await;
    let ak = gw.slug("dark", &up.base, &[GOOD]).await;
    let http = reqwest::Client::new();
    let failures = || async {
        let text = http
            .get(format!("{}/metrics", gw.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("keygate_otel_export_failures_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    // Requests keep answering while batch after batch fails.
    while failures().await < 3.0 {
        assert_eq!(gw.chat("dark", &ak, "").await, 200);
        n += 1;
        assert!(Instant::now() < deadline, "exports never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(n > 0);
    let warnings = gw
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("trace export failed"))
        .count();
    assert_eq!(
        warnings, 1,
        "one WARN for the state change, not one per batch"
    );
}
