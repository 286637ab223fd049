//! Redis Sentinel (`REDIS_URL=redis+sentinel://.../mymaster`): two replicas find the primary
//! through three real Sentinels, rotate exactly across keys through it, and follow it across a
//! failover: a forced one (`SENTINEL FAILOVER`, the old primary stays up) and a crash of the
//! primary (the Sentinels elect a new one), with requests served throughout.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::harness::{Backend, Shared, TestApp, eventually};
use crate::mock::{self, MockServer};
use crate::servers::OwnRedisSentinel;

const KEYS: [&str; 2] = ["sk-sentinel-key-0001", "sk-sentinel-key-0002"];

/// `n` requests alternating between the replicas: how many went to each key.
async fn alternate(a: &TestApp, b: &TestApp, ak: &str, up: &MockServer, n: usize) -> Vec<usize> {
    let before = up.mock.counts();
    for i in 0..n {
        let app = if i % 2 == 0 { a } else { b };
        assert_eq!(app.chat("sentinel", ak).await.status(), 200);
    }
    let after = up.mock.counts();
    KEYS.iter()
        .map(|k| after.get(*k).copied().unwrap_or(0) - before.get(*k).copied().unwrap_or(0))
        .collect()
}

/// Runs `f` on the (blocking) Sentinel harness off the async workers.
async fn on<T: Send + 'static>(
    rs: &Arc<OwnRedisSentinel>,
    f: impl FnOnce(&OwnRedisSentinel) -> T + Send + 'static,
) -> T {
    let rs = rs.clone();
    tokio::task::spawn_blocking(move || f(&rs)).await.unwrap()
}

/// Load on both replicas until stopped: answered and failed requests, and how long either
/// replica was seen degraded (sampled about every 5 ms).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    degraded_ms: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(apps: [Arc<TestApp>; 2], ak: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed, degraded_ms) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut tasks = Vec::new();
        for app in &apps {
            let (app, stop, ok, failed, ak) = (
                app.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                ak.to_string(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = app.chat("sentinel", &ak).await.status();
                    if status == 200 { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let (s, d) = (stop.clone(), degraded_ms.clone());
        tasks.push(tokio::spawn(async move {
            // The time between two samples counts as degraded when either end saw it.
            let mut last = (Instant::now(), false);
            while !s.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let now = (
                    Instant::now(),
                    apps.iter().any(|a| a.state.coord.degraded()),
                );
                if now.1 || last.1 {
                    d.fetch_add(
                        now.0.duration_since(last.0).as_millis() as u64,
                        Ordering::Relaxed,
                    );
                }
                last = now;
            }
        }));
        Self {
            stop,
            ok,
            failed,
            degraded_ms,
            tasks,
        }
    }

    /// Waits until `n` more requests were answered.
    async fn served(&self, n: u64) -> bool {
        let target = self.ok.load(Ordering::Relaxed) + n;
        eventually(Duration::from_secs(10), || async {
            self.ok.load(Ordering::Relaxed) >= target
        })
        .await
    }

    /// Stops the load: (answered, failed, ms degraded).
    async fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.degraded_ms.load(Ordering::Relaxed),
        )
    }
}

/// Two replicas on the Sentinel deployment, a service with two keys, and the access key, once
/// both replicas serve it.
async fn two_replicas(
    rs: &OwnRedisSentinel,
    up: &MockServer,
) -> (Shared, Arc<TestApp>, Arc<TestApp>, String) {
    let mut shared = Shared::new(Backend::Postgres).await;
    shared.config.redis.url = Some(SecretString::from(rs.url()));
    let a = Arc::new(TestApp::spawn_with(&shared.config).await);
    let b = Arc::new(TestApp::spawn_with(&shared.config).await);
    let ak = a.with_service("sentinel", &up.base, &KEYS).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.chat("sentinel", &ak).await.status() == 200
        })
        .await,
        "the second replica serves the slug"
    );
    (shared, a, b, ak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_sentinel_failover_moves_both_replicas_to_the_new_primary_without_a_failed_request()
 {
    let up = mock::start().await;
    let rs = Arc::new(
        tokio::task::spawn_blocking(OwnRedisSentinel::start)
            .await
            .unwrap(),
    );
    let (old, new) = (rs.data[0], rs.data[1]);
    let (shared, a, b, ak) = two_replicas(&rs, &up).await;
    let prefix = shared.config.redis.prefix.clone();
    for app in [&a, &b] {
        assert_eq!(
            app.state.coord.sentinel_primary(),
            Some(format!("127.0.0.1:{old}")),
            "the primary the Sentinels name"
        );
    }
    assert_eq!(
        alternate(&a, &b, &ak, &up, 40).await,
        vec![20, 20],
        "round robin is exact across the replicas through the primary"
    );

    let load = Load::start([a.clone(), b.clone()], &ak);
    assert!(load.served(20).await);
    let t0 = Instant::now();
    on(&rs, |rs| rs.failover()).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            on(&rs, |rs| rs.primary()).await == Some(new)
        })
        .await,
        "every Sentinel names the promoted replica"
    );
    let sentinels_after = t0.elapsed();
    let want = Some(format!("127.0.0.1:{new}"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.state.coord.sentinel_primary() == want && b.state.coord.sentinel_primary() == want
        })
        .await,
        "both replicas move to the new primary"
    );
    let keygate_after = t0.elapsed();
    assert!(
        load.served(40).await,
        "requests are answered after the switch"
    );
    let (ok, failed, degraded_ms) = load.stop().await;
    println!(
        "forced failover: Sentinels named the new primary after {sentinels_after:?}, both \
         replicas used it after {keygate_after:?}; {ok} requests answered, {failed} failed, \
         degraded for ~{degraded_ms} ms"
    );
    assert_eq!(failed, 0, "no request failed across the failover");
    // The old primary is still up and writable here (the Sentinels demote it seconds later):
    // nothing may go there any more.
    assert_eq!(on(&rs, move |rs| rs.role(old)).await, "master");

    let (old_calls, new_calls) =
        on(&rs, move |rs| (rs.script_calls(old), rs.script_calls(new))).await;
    assert_eq!(
        alternate(&a, &b, &ak, &up, 40).await,
        vec![20, 20],
        "round robin is exact again on the new primary"
    );
    let (old_after, new_after) =
        on(&rs, move |rs| (rs.script_calls(old), rs.script_calls(new))).await;
    assert_eq!(old_after, old_calls, "no script ran on the old primary");
    assert!(
        new_after >= new_calls + 40,
        "each request coordinated on the new primary ({new_calls} -> {new_after})"
    );
    assert!(
        on(&rs, move |rs| rs.keys(new, &prefix)).await > 0,
        "the state is on the new primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_primary_dies_requests_are_served_degraded_until_the_sentinels_promote_the_replica()
 {
    let up = mock::start().await;
    let rs = Arc::new(
        tokio::task::spawn_blocking(OwnRedisSentinel::start)
            .await
            .unwrap(),
    );
    let (old, new) = (rs.data[0], rs.data[1]);
    let (shared, a, b, ak) = two_replicas(&rs, &up).await;
    let prefix = shared.config.redis.prefix.clone();

    let load = Load::start([a.clone(), b.clone()], &ak);
    assert!(load.served(20).await);
    let t0 = Instant::now();
    on(&rs, move |rs| rs.kill(old)).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.state.coord.degraded() && b.state.coord.degraded()
        })
        .await,
        "both replicas notice the primary is gone"
    );
    let want = Some(format!("127.0.0.1:{new}"));
    assert!(
        eventually(Duration::from_secs(20), || async {
            on(&rs, |rs| rs.primary()).await == Some(new)
        })
        .await,
        "the Sentinels promote the replica"
    );
    let sentinels_after = t0.elapsed();
    assert!(
        eventually(Duration::from_secs(10), || async {
            [&a, &b].iter().all(|app| {
                app.state.coord.sentinel_primary() == want && !app.state.coord.degraded()
            })
        })
        .await,
        "both replicas coordinate on the new primary again"
    );
    let keygate_after = t0.elapsed();
    assert!(load.served(40).await);
    let (ok, failed, degraded_ms) = load.stop().await;
    println!(
        "primary killed: Sentinels named the new primary after {sentinels_after:?}, both \
         replicas back on it after {keygate_after:?}; {ok} requests answered, {failed} failed, \
         degraded for ~{degraded_ms} ms"
    );
    assert_eq!(failed, 0, "degraded mode answered every request");
    assert_eq!(
        alternate(&a, &b, &ak, &up, 40).await,
        vec![20, 20],
        "round robin is exact across the replicas on the new primary"
    );
    assert!(on(&rs, move |rs| rs.keys(new, &prefix)).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_demoted_without_a_failover_announcement_is_left_on_its_first_readonly_answer() {
    let up = mock::start().await;
    let rs = Arc::new(
        tokio::task::spawn_blocking(OwnRedisSentinel::start)
            .await
            .unwrap(),
    );
    let (old, new) = (rs.data[0], rs.data[1]);
    let (shared, a, b, ak) = two_replicas(&rs, &up).await;
    let prefix = shared.config.redis.prefix.clone();

    let load = Load::start([a.clone(), b.clone()], &ak);
    assert!(load.served(20).await);
    let t0 = Instant::now();
    on(&rs, move |rs| rs.swap_by_hand(old, new)).await;
    let swapped = t0.elapsed();
    assert_eq!(on(&rs, move |rs| rs.role(old)).await, "slave");
    let want = Some(format!("127.0.0.1:{new}"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.state.coord.sentinel_primary() == want && b.state.coord.sentinel_primary() == want
        })
        .await,
        "both replicas move to the node the Sentinels name"
    );
    let keygate_after = t0.elapsed();
    assert!(load.served(40).await);
    let (ok, failed, degraded_ms) = load.stop().await;
    println!(
        "primary demoted without announcement: swap done after {swapped:?}, both replicas on \
         the new primary after {keygate_after:?}; {ok} requests answered, {failed} failed, \
         degraded for ~{degraded_ms} ms"
    );
    assert_eq!(failed, 0, "READONLY answers never reach the client");
    assert_eq!(
        degraded_ms, 0,
        "a refused write is sent again on the new primary instead of degrading"
    );
    assert!(!a.state.coord.degraded() && !b.state.coord.degraded());
    assert_eq!(alternate(&a, &b, &ak, &up, 40).await, vec![20, 20]);
    assert!(on(&rs, move |rs| rs.keys(new, &prefix)).await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_data_nodes_and_sentinels_are_reached_with_the_url_and_the_sentinel_password()
 {
    let up = mock::start().await;
    let rs = tokio::task::spawn_blocking(|| {
        OwnRedisSentinel::start_with_passwords("data-pw-0001", "sentinel-pw-0002")
    })
    .await
    .unwrap();
    let mut shared = Shared::new(Backend::Postgres).await;
    let url = rs
        .url()
        .replace("redis+sentinel://", "redis+sentinel://:data-pw-0001@");
    shared.config.redis.url = Some(SecretString::from(url));

    // Without the Sentinels' password keygate cannot ask them, and says so without a password.
    let t0 = Instant::now();
    let err = keygate::App::build(shared.config.clone())
        .await
        .err()
        .expect("no primary without the Sentinels' password")
        .to_string();
    assert!(err.contains("cannot connect to Redis"), "{err}");
    assert!(err.contains("REDIS_SENTINEL_PASSWORD"), "{err}");
    assert!(!err.contains("data-pw-0001"), "{err}");
    println!("refused after {:?}: {err}", t0.elapsed());

    shared.config.redis.sentinel_password = Some(SecretString::from("sentinel-pw-0002"));
    let a = TestApp::spawn_with(&shared.config).await;
    let b = TestApp::spawn_with(&shared.config).await;
    assert_eq!(
        a.state.coord.sentinel_primary(),
        Some(format!("127.0.0.1:{}", rs.data[0]))
    );
    let ak = a.with_service("sentinel", &up.base, &KEYS).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.chat("sentinel", &ak).await.status() == 200
        })
        .await
    );
    assert_eq!(alternate(&a, &b, &ak, &up, 20).await, vec![10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_the_sentinels_and_data_nodes_are_trusted_with_the_ca_file_and_a_failover_is_followed()
 {
    let up = mock::start().await;
    let rs = Arc::new(
        tokio::task::spawn_blocking(OwnRedisSentinel::start_with_tls)
            .await
            .unwrap(),
    );
    let (old, new) = (rs.data[0], rs.data[1]);
    let mut shared = Shared::new(Backend::Postgres).await;
    assert!(rs.url().starts_with("rediss+sentinel://"));
    shared.config.redis.url = Some(SecretString::from(rs.url()));
    // Without the CA the Sentinels' certificates are not trusted: the replica does not start.
    let err = keygate::App::build(shared.config.clone())
        .await
        .err()
        .expect("untrusted Sentinel certificates are refused")
        .to_string();
    assert!(err.contains("cannot connect to Redis"), "{err}");

    shared.config.redis.ca_file = rs.ca_file.clone();
    let a = Arc::new(TestApp::spawn_with(&shared.config).await);
    let b = Arc::new(TestApp::spawn_with(&shared.config).await);
    assert_eq!(
        a.state.coord.sentinel_primary(),
        Some(format!("127.0.0.1:{old}"))
    );
    let ak = a.with_service("sentinel", &up.base, &KEYS).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.chat("sentinel", &ak).await.status() == 200
        })
        .await
    );
    assert_eq!(alternate(&a, &b, &ak, &up, 20).await, vec![10, 10]);

    let load = Load::start([a.clone(), b.clone()], &ak);
    assert!(load.served(20).await);
    on(&rs, |rs| rs.failover()).await;
    let want = Some(format!("127.0.0.1:{new}"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.state.coord.sentinel_primary() == want && b.state.coord.sentinel_primary() == want
        })
        .await,
        "both replicas follow the failover announced over TLS"
    );
    assert!(load.served(20).await);
    let (ok, failed, degraded_ms) = load.stop().await;
    println!("TLS failover: {ok} answered, {failed} failed, degraded ~{degraded_ms} ms");
    assert_eq!(failed, 0);
    assert_eq!(alternate(&a, &b, &ak, &up, 20).await, vec![10, 10]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_the_primary_is_dead_and_serves_again_once_the_sentinels_replace_it()
 {
    let up = mock::start().await;
    let rs = Arc::new(
        tokio::task::spawn_blocking(OwnRedisSentinel::start)
            .await
            .unwrap(),
    );
    let (old, new) = (rs.data[0], rs.data[1]);
    let mut shared = Shared::new(Backend::Postgres).await;
    shared.config.redis.url = Some(SecretString::from(rs.url()));
    shared.config.redis.on_outage = keygate::coord::outage::OnOutage::Fail;
    let app = TestApp::spawn_with(&shared.config).await;
    let ak = app.with_service("sentinel", &up.base, &KEYS).await;
    assert_eq!(app.chat("sentinel", &ak).await.status(), 200);

    let t0 = Instant::now();
    on(&rs, move |rs| rs.kill(old)).await;
    let (refused, last_refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(None));
    let want = Some(format!("127.0.0.1:{new}"));
    let back = eventually(Duration::from_secs(20), || {
        let (refused, last_refused, app, ak, want) = (&refused, &last_refused, &app, &ak, &want);
        async move {
            match app.chat("sentinel", ak).await.status().as_u16() {
                200 => app.state.coord.sentinel_primary() == *want,
                503 => {
                    refused.set(refused.get() + 1);
                    last_refused.set(Some(t0.elapsed()));
                    false
                }
                other => panic!("unexpected status {other}"),
            }
        }
    })
    .await;
    assert!(back, "served again on the new primary");
    println!(
        "fail-closed, primary killed: {} requests refused with 503, the last {:?} after the kill; \
         served on the new primary after {:?}",
        refused.get(),
        last_refused.get(),
        t0.elapsed()
    );
    assert!(refused.get() > 0, "refused while no primary answered");
    assert!(!app.state.coord.degraded());
}
