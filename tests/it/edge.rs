//! The edge: slow and silent clients are cut off, the connection cap holds, streams are not held
//! back by Nagle, a login flood neither hashes without bound nor slows the proxy, and shutdown
//! lets in-flight streams finish.
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use keygate::{App, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use crate::both;
use crate::harness::{ADMIN_PASSWORD, Backend, Shared, TestApp, eventually};
use crate::mock::{self, Behaviour};

/// An app without the harness's logged-in client (whose pooled connection would hold a slot),
/// with its shutdown in the test's hands.
struct Bare {
    addr: std::net::SocketAddr,
    state: keygate::state::AppState,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Bare {
    async fn spawn(config: &Config) -> Self {
        let app = App::build(config.clone()).await.expect("app builds");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], app.port()));
        let state = app.state();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            state,
            stop: Some(tx),
            done,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn shutdown(&mut self) {
        let _ = self.stop.take().map(|tx| tx.send(()));
    }
}

/// Reads until the peer closes (Ok(bytes read)) or `within` passes (Err).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, ()> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until a full HTTP/1.1 response head has arrived (or `within` passes).
async fn read_head(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if text.contains("\r\n\r\n") {
            return Some(text);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_and_a_silent_client_are_cut_off_while_normal_requests_work() {
    let shared = Shared::new(Backend::Sqlite).await;
    let mut c = shared.config.clone();
    c.server.header_read_timeout_ms = 300;
    c.server.idle_timeout_ms = 900;
    let app = Bare::spawn(&c).await;

    // One byte every 50 ms: the whole head would take ~4 s.
    let slow = TcpStream::connect(app.addr).await.unwrap();
    let (mut slow_r, mut slow_w) = slow.into_split();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(40)
    );
    let trickle = tokio::spawn(async move {
        for b in head.bytes() {
            if slow_w.write_all(&[b]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    });
    let silent = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();

    let r = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200, "a normal request is served meanwhile");

    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), slow_r.read(&mut buf))
        .await
        .expect("the trickling client is disconnected within 3 s")
        .unwrap_or(0);
    let slow_after = started.elapsed();
    assert_eq!(n, 0, "no response for a head that never completed");
    assert!(
        slow_after >= Duration::from_millis(250),
        "not before the header timeout: {slow_after:?}"
    );
    assert!(
        !trickle.await.unwrap(),
        "the head was still incomplete when the server hung up"
    );

    let mut silent = silent;
    let got = read_until_closed(&mut silent, Duration::from_secs(5))
        .await
        .expect("the silent client is disconnected after the idle timeout");
    let silent_after = started.elapsed();
    assert!(got.is_empty());
    assert!(
        silent_after >= Duration::from_millis(800),
        "idle timeout, not the header timeout, applies to a silent client: {silent_after:?}"
    );
    println!("trickler cut after {slow_after:?}, silent client after {silent_after:?}");

    let r = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_past_the_header_timeout_still_serves_the_next_request() {
    let shared = Shared::new(Backend::Sqlite).await;
    let mut c = shared.config.clone();
    c.server.header_read_timeout_ms = 200;
    c.server.idle_timeout_ms = 5_000;
    let app = Bare::spawn(&c).await;

    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(req).await.unwrap();
    let head = read_head(&mut s, Duration::from_secs(5)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Idle between requests for well over the header timeout: the scenario itself, not a wait
    // for something to happen.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(req).await.unwrap();
    let head = read_head(&mut s, Duration::from_secs(5))
        .await
        .expect("the idle keep-alive connection was kept");
    assert!(head.contains("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_connections_allowed_a_third_waits_until_one_closes() {
    let shared = Shared::new(Backend::Sqlite).await;
    let mut c = shared.config.clone();
    c.server.max_connections = 2;
    let app = Bare::spawn(&c).await;
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut first = TcpStream::connect(app.addr).await.unwrap();
    first.write_all(req).await.unwrap();
    assert!(
        read_head(&mut first, Duration::from_secs(5))
            .await
            .is_some()
    );
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    second.write_all(req).await.unwrap();
    assert!(
        read_head(&mut second, Duration::from_secs(5))
            .await
            .is_some()
    );

    // The kernel completes the handshake (backlog); keygate does not accept it yet.
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    third.write_all(req).await.unwrap();
    assert!(
        read_head(&mut third, Duration::from_millis(700))
            .await
            .is_none(),
        "the third connection is not served while two are open"
    );

    drop(first);
    let head = read_head(&mut third, Duration::from_secs(5))
        .await
        .expect("the third connection is served once one of the first two closed");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_through_a_pooled_client_are_not_held_back_by_nagle() {
    let upstream = mock::start_nodelay().await;
    upstream.mock.set(
        "sk-chunks",
        Behaviour::Chunks {
            n: 20,
            gap: Duration::from_millis(1),
        },
    );
    let app = TestApp::spawn(Backend::Sqlite).await;
    let key = app
        .with_service("chunks", &upstream.base, &["sk-chunks"])
        .await;

    // One keep-alive client for both paths, as SDKs use: delayed ACKs only show on reused
    // connections.
    let client = reqwest::Client::new();
    let body = json!({"model": "gpt-test", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let direct_url = format!("{}/chat/completions", upstream.base);
    let via_url = app.url("/llm/chunks/v1/chat/completions");
    let timed = |url: String, auth: String| {
        let client = client.clone();
        let body = body.clone();
        async move {
            let t = Instant::now();
            let r = client
                .post(url)
                .bearer_auth(auth)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            let took = t.elapsed();
            assert_eq!(text.matches("data: ").count(), 21, "{text}");
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            took
        }
    };
    // Back to back on each path, not interleaved: a client that sends its next request soon after
    // the last answer is in Linux's "ping-pong" mode, where ACKs are delayed; interleaving would
    // idle each connection long enough to fall back to quick ACKs and hide the stall.
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for i in 0..33 {
        let t = timed(direct_url.clone(), "sk-chunks".into()).await;
        if i >= 3 {
            direct.push(t);
        }
    }
    for i in 0..33 {
        let t = timed(via_url.clone(), key.clone()).await;
        if i >= 3 {
            via.push(t);
        }
    }
    let (d, v) = (median(direct), median(via));
    let overhead = v.saturating_sub(d);
    println!(
        "stream of 20 chunks: direct median {d:?}, through keygate {v:?}, overhead {overhead:?}"
    );
    assert!(
        overhead < Duration::from_millis(20),
        "keygate adds {overhead:?} to a streamed answer (a ~40 ms delayed-ACK stall means Nagle is on)"
    );
}

both!(
    a_login_flood_is_throttled_to_a_bounded_number_of_password_hashes_while_the_proxy_serves,
    |backend| async move {
        let upstream = mock::start().await;
        let app = TestApp::spawn(backend).await;
        let key = app.with_service("svc", &upstream.base, &["sk-1"]).await;

        let latency = |n: usize| {
            let http = app.http.clone();
            let url = app.url("/llm/svc/v1/chat/completions");
            let key = key.clone();
            async move {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({"model": "gpt-test", "messages": []}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    v.push(t.elapsed());
                }
                v
            }
        };
        latency(5).await;
        let baseline = median(latency(40).await);

        let hashes_before = app.state.login_guard.hashes_run();
        let stop_at = Instant::now() + Duration::from_secs(3);
        let url = app.url("/admin/auth/login");
        let flooders: Vec<_> = (0..8)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let (mut sent, mut throttled) = (0u32, 0u32);
                    // 25 guesses a second each (200 in all): this weighs what a guess costs,
                    // not raw request volume, which in a tight loop on the test's own two
                    // worker threads would only benchmark the test client.
                    let mut pace = tokio::time::interval(Duration::from_millis(40));
                    while Instant::now() < stop_at {
                        pace.tick().await;
                        let r = http
                            .post(&url)
                            .json(&json!({"username": "admin", "password": format!("guess-{i}-{sent}")}))
                            .send()
                            .await
                            .unwrap();
                        sent += 1;
                        match r.status().as_u16() {
                            429 => throttled += 1,
                            401 => {}
                            s => panic!("a wrong password got {s}"),
                        }
                    }
                    (sent, throttled)
                })
            })
            .collect();
        let mut during = Vec::new();
        while Instant::now() < stop_at {
            during.extend(latency(5).await);
        }
        let (mut sent, mut throttled) = (0, 0);
        for f in flooders {
            let (s, t) = f.await.unwrap();
            sent += s;
            throttled += t;
        }
        let hashes = app.state.login_guard.hashes_run() - hashes_before;
        let flood_p50 = median(during.clone());
        println!(
            "{backend:?}: login flood: {sent} attempts, {throttled} throttled (429), {hashes} \
             hashes; proxy p50 {baseline:?} before, {flood_p50:?} during ({} samples)",
            during.len()
        );
        assert!(
            throttled * 10 >= sent * 8,
            "most attempts are throttled: {throttled}/{sent}"
        );
        // Backoff 0.5 s, 1 s, 2 s...: at most four unlocks in 3 s, each letting through at most
        // `login_concurrency` (2) queued attempts. The hashes are what a flood could cost the
        // proxy (argon2 is the CPU); the latencies printed above are for reading, not asserted:
        // timing belongs in the benchmarks, where the machine is quiet.
        assert!(hashes <= 10, "{hashes} hashes for {sent} attempts");
        assert!(!during.is_empty(), "the proxy served during the flood");
    }
);

both!(
    a_throttled_login_gets_429_with_retry_after_and_the_right_password_works_after_the_backoff,
    |backend| async move {
        let shared = Shared::new(backend).await;
        let mut c = shared.config.clone();
        c.auth.login_backoff_base_ms = 400;
        c.auth.login_backoff_max_ms = 5_000;
        let app = TestApp::spawn_with(&c).await;
        let login = |password: &'static str| {
            let http = app.http.clone();
            let url = app.url("/admin/auth/login");
            async move {
                http.post(url)
                    .json(&json!({"username": "admin", "password": password}))
                    .send()
                    .await
                    .unwrap()
            }
        };

        assert_eq!(login("wrong").await.status(), 401);
        let hashes = app.state.login_guard.hashes_run();
        let r = login(ADMIN_PASSWORD).await;
        assert_eq!(
            r.status(),
            429,
            "locked right after a failure, even with the right password"
        );
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=5).contains(&retry), "Retry-After {retry}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["status"], 429, "{p}");
        assert_eq!(p["title"], "Too Many Requests", "{p}");
        assert!(
            p["type"].as_str().unwrap().ends_with("/too-many-requests"),
            "{p}"
        );
        assert!(p["detail"].as_str().is_some(), "{p}");
        assert_eq!(
            app.state.login_guard.hashes_run(),
            hashes,
            "a throttled attempt runs no hash"
        );

        assert!(
            eventually(Duration::from_secs(5), || async {
                login(ADMIN_PASSWORD).await.status() == 200
            })
            .await,
            "the right password works once the backoff has passed"
        );
        // The success cleared the username: a new failure starts again at the base lockout.
        assert_eq!(login("wrong").await.status(), 401);
    }
);

both!(
    shutdown_lets_a_stream_in_flight_finish_reports_draining_and_refuses_new_connections,
    |backend| async move {
        let upstream = mock::start().await;
        let gate = Arc::new(Notify::new());
        upstream
            .mock
            .set("sk-gated", Behaviour::GatedStream(gate.clone()));
        let shared = Shared::new(backend).await;
        let mut c = shared.config.clone();
        c.server.shutdown_grace_ms = 10_000;
        let key = {
            let setup = TestApp::spawn_with(&c).await;
            setup
                .with_service("gated", &upstream.base, &["sk-gated"])
                .await
        };
        let mut app = Bare::spawn(&c).await;

        let mut resp = reqwest::Client::new()
            .post(app.url("/llm/gated/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-test", "stream": true, "messages": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("first"));

        app.shutdown();
        assert!(eventually(Duration::from_secs(5), || async { app.state.is_draining() }).await);
        let (status, body) = keygate::ops::readyz(State(app.state.clone())).await;
        assert_eq!(status, 503);
        assert_eq!(body.0.status, "draining");
        assert!(
            eventually(Duration::from_secs(5), || async {
                TcpStream::connect(app.addr).await.is_err()
            })
            .await,
            "new connections are refused once draining"
        );
        assert!(
            !app.done.is_finished(),
            "the stream holds the shutdown open"
        );

        gate.notify_one();
        let mut rest = Vec::new();
        while let Some(c) = resp.chunk().await.unwrap() {
            rest.extend_from_slice(&c);
        }
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.contains("second") && rest.ends_with("data: [DONE]\n\n"),
            "{rest}"
        );

        tokio::time::timeout(Duration::from_secs(10), &mut app.done)
            .await
            .expect("shutdown completes once the stream ended")
            .unwrap()
            .unwrap();
        // The stream's request log was flushed before the process would exit.
        let rows = keygate::db::logs::count_for_service(&app.state.db, "gated")
            .await
            .unwrap();
        assert_eq!(rows, 1);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drops_a_stream_that_outlives_the_grace_period() {
    let upstream = mock::start().await;
    let gate = Arc::new(Notify::new());
    upstream
        .mock
        .set("sk-stuck", Behaviour::GatedStream(gate.clone()));
    let shared = Shared::new(Backend::Sqlite).await;
    let mut c = shared.config.clone();
    c.server.shutdown_grace_ms = 300;
    let key = {
        let setup = TestApp::spawn_with(&c).await;
        setup
            .with_service("stuck", &upstream.base, &["sk-stuck"])
            .await
    };
    let mut app = Bare::spawn(&c).await;
    let mut resp = reqwest::Client::new()
        .post(app.url("/llm/stuck/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-test", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    resp.chunk().await.unwrap().unwrap();

    let t = Instant::now();
    app.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut app.done)
        .await
        .expect("shutdown does not wait for a stream beyond the grace period")
        .unwrap()
        .unwrap();
    println!("shutdown with a stuck stream took {:?}", t.elapsed());
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match resp.chunk().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the client sees the stream end");
    assert!(cut.is_err(), "the stream was cut, not completed");
}
