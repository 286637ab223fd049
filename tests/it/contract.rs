//! The coordination store contract: one scenario, every backend. Each test runs on the memory store,
//! on Redis and on a 3-primary Redis Cluster, the last two as two replicas (two separate
//! connections sharing one key prefix), with calls alternating between the two, so anything kept
//! per process would show.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use keygate::coord::memory::MemoryStore;
use keygate::coord::redis::{RedisStore, Topology};
use keygate::coord::{
    Acquire, AcquireReq, ClientLimits, Coord, Fault, KeyRef, KeySet, KeySpec, Lease, Policy,
    Session, Strategy, Usage,
};

use crate::harness::eventually;
use crate::servers::{redis_cluster, servers};

pub fn policy() -> Policy {
    Policy {
        failure_threshold: 2,
        recovery_ms: 300,
        backoff_base_ms: 200,
        backoff_max_ms: 10_000,
        upstream_wide_window_ms: 1_000,
        upstream_wide_percent: 60,
        probe_lock_ms: 2_000,
        ..Policy::default()
    }
}

/// Two handles on one store: the same memory store twice, or two Redis "replicas".
pub struct Pair {
    pub a: Coord,
    pub b: Coord,
}

impl Pair {
    pub fn at(&self, i: usize) -> &Coord {
        if i % 2 == 0 { &self.a } else { &self.b }
    }
}

pub async fn memory() -> Pair {
    let m = Coord::Memory(MemoryStore::new(policy()));
    Pair { a: m.clone(), b: m }
}

pub async fn redis() -> Pair {
    redis_on(&servers().redis_url, Topology::Single).await
}

/// Two replicas on the 3-primary Redis Cluster.
pub async fn cluster() -> Pair {
    redis_on(redis_cluster(), Topology::Cluster).await
}

async fn redis_on(url: &str, topology: Topology) -> Pair {
    let prefix = format!("c{}:", uuid::Uuid::new_v4().simple());
    let connect = || {
        RedisStore::connect(
            url,
            topology,
            &prefix,
            policy(),
            keygate::coord::outage::OnOutage::Degrade,
        )
    };
    let a = connect().await.unwrap();
    let b = connect().await.unwrap();
    Pair {
        a: Coord::Redis(a),
        b: Coord::Redis(b),
    }
}

macro_rules! contract {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_memory() {
                ($body)(memory().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis_from_two_replicas() {
                ($body)(redis().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_a_redis_cluster_from_two_replicas() {
                ($body)(cluster().await).await
            }
        }
    };
}

/// Keys of the service `req` names (service 1).
fn refs(ids: &[i64]) -> Vec<KeyRef> {
    ids.iter().map(|id| KeyRef::new(1, *id)).collect()
}

fn keys(weights: &[u32]) -> KeySet {
    KeySet::new(specs(weights))
}

fn specs(weights: &[u32]) -> Vec<KeySpec> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| KeySpec {
            id: 100 + i as i64,
            weight: *w,
            rpm: None,
            tpm: None,
            balance: None,
            cost_ppm: 1_000_000,
        })
        .collect()
}

/// Whole currency units in micros.
fn units(n: i64) -> i64 {
    n * 1_000_000
}

fn req<'a>(strategy: Strategy, keys: &'a KeySet) -> AcquireReq<'a> {
    AcquireReq {
        service_id: 1,
        strategy,
        keys,
        excluded: &[],
        cap: None,
        lease_ttl_ms: 60_000,
        client: None,
        price: None,
        session: None,
        reserve: 0,
    }
}

fn granted(a: Acquire) -> (usize, Lease, bool) {
    match a {
        Acquire::Granted {
            index,
            lease,
            probe,
            ..
        } => (index, lease, probe),
        other => panic!("expected a key, got {other:?}"),
    }
}

async fn take(c: &Coord, r: &AcquireReq<'_>) -> (usize, Lease, bool) {
    granted(c.acquire(r).await.unwrap())
}

async fn ok(c: &Coord, lease: &Lease) {
    c.release(
        lease,
        &Usage {
            success: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

/// Requests per key index over `n` acquire+release cycles alternating between the replicas.
async fn spread(p: &Pair, r: &AcquireReq<'_>, n: usize) -> Vec<usize> {
    let mut counts = vec![0; r.keys.len()];
    for i in 0..n {
        let (idx, lease, _) = take(p.at(i), r).await;
        counts[idx] += 1;
        ok(p.at(i + 1), &lease).await;
    }
    counts
}

contract!(round_robin_is_exact_across_replicas, |p: Pair| async move {
    let ks = keys(&[1, 1, 1]);
    assert_eq!(
        spread(&p, &req(Strategy::RoundRobin, &ks), 300).await,
        vec![100, 100, 100]
    );
});

contract!(
    weighted_1_2_3_over_600_gives_exactly_100_200_300,
    |p: Pair| async move {
        let ks = keys(&[1, 2, 3]);
        let counts = spread(&p, &req(Strategy::Weighted, &ks), 600).await;
        println!("weighted 1/2/3 over 600: {counts:?}");
        assert_eq!(counts, vec![100, 200, 300]);
    }
);

contract!(weighted_is_smooth_not_bursty, |p: Pair| async move {
    let ks = keys(&[1, 2, 3]);
    let r = req(Strategy::Weighted, &ks);
    let mut seq = Vec::new();
    for i in 0..6 {
        let (idx, lease, _) = take(p.at(i), &r).await;
        seq.push(idx);
        ok(p.at(i), &lease).await;
    }
    // Smooth WRR interleaves: the heaviest key never takes three in a row.
    assert_eq!(seq, vec![2, 1, 0, 2, 1, 2], "{seq:?}");
});

contract!(
    least_used_prefers_fewest_in_flight_then_least_recent,
    |p: Pair| async move {
        let ks = keys(&[1, 1, 1]);
        let r = req(Strategy::LeastUsed, &ks);
        let (a, la, _) = take(&p.a, &r).await;
        let (b, lb, _) = take(&p.b, &r).await;
        let (c, lc, _) = take(&p.a, &r).await;
        let mut firsts = vec![a, b, c];
        firsts.sort();
        assert_eq!(firsts, vec![0, 1, 2], "one request on each key first");
        ok(&p.b, &lb).await;
        let (d, ld, _) = take(&p.b, &r).await;
        assert_eq!(d, b, "the only key with nothing in flight");
        for l in [la, lc, ld] {
            ok(&p.a, &l).await;
        }
        // All idle now: the least recently used one (`a`) comes first.
        let (e, _, _) = take(&p.a, &r).await;
        assert_eq!(e, a);
    }
);

contract!(random_uses_every_key, |p: Pair| async move {
    let ks = keys(&[1, 1, 1]);
    let counts = spread(&p, &req(Strategy::Random, &ks), 300).await;
    assert!(counts.iter().all(|c| *c > 40), "{counts:?}");
});

contract!(
    balance_picks_the_richest_key_and_skips_keys_below_the_price,
    |p: Pair| async move {
        let mut sp = specs(&[1, 1, 1]);
        sp[0].balance = Some(units(5));
        sp[1].balance = Some(units(50));
        sp[2].balance = Some(units(20));
        let ks = KeySet::new(sp);
        let mut r = req(Strategy::Balance, &ks);
        let (i, l, _) = take(&p.a, &r).await;
        assert_eq!(i, 1);
        // Spending 40 on the richest key makes the next one the richest.
        p.b.release(
            &l,
            &Usage {
                success: true,
                cost: units(40),
                key_balance: Some(units(50)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let (i, l, _) = take(&p.b, &r).await;
        assert_eq!(i, 2, "20 > 10 left on key 1");
        ok(&p.a, &l).await;
        r.price = Some(units(25));
        assert_eq!(
            p.a.acquire(&r).await.unwrap(),
            Acquire::NoKey,
            "no key can pay 25"
        );
    }
);

contract!(
    balance_debits_are_exact_in_micros_across_replicas,
    |p: Pair| async move {
        // 0.3 units, spent as 0.1, 0.15 and 0.05 from alternating replicas. Floats drift on such
        // sums (0.1 + 0.2 != 0.3); in micros the key ends at exactly 0 and price checks are exact.
        let mut sp = specs(&[1]);
        sp[0].balance = Some(300_000);
        let ks = KeySet::new(sp);
        let mut r = req(Strategy::Balance, &ks);
        for (i, cost) in [100_000, 150_000].into_iter().enumerate() {
            let (_, l, _) = take(p.at(i), &r).await;
            p.at(i + 1)
                .release(
                    &l,
                    &Usage {
                        success: true,
                        cost,
                        key_balance: Some(300_000),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        // Exactly 50_000 micros (0.05) left: a price one micro higher finds no key, an equal one
        // does.
        r.price = Some(50_001);
        assert_eq!(p.a.acquire(&r).await.unwrap(), Acquire::NoKey);
        r.price = Some(50_000);
        let (_, l, _) = take(&p.b, &r).await;
        p.a.release(
            &l,
            &Usage {
                success: true,
                cost: 50_000,
                key_balance: Some(300_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        r.price = Some(1);
        assert_eq!(
            p.b.acquire(&r).await.unwrap(),
            Acquire::NoKey,
            "0.1 + 0.15 + 0.05 spent 0.3 to the micro"
        );
        let live = &p.a.live_states(&refs(&[100])).await.unwrap()[0];
        assert_eq!(
            (live.until, live.reason.as_deref()),
            (-1, Some("exhausted")),
            "a key whose balance reaches zero is out as exhausted"
        );
        // An operator top-up (the key re-enabled, a new live balance) brings it back.
        p.a.report(1, 100, None, Fault::Clear, 1).await.unwrap();
        p.a.set_balance(KeyRef::new(1, 100), Some(1)).await.unwrap();
        assert!(matches!(
            p.b.acquire(&r).await.unwrap(),
            Acquire::Granted { .. }
        ));
    }
);

contract!(
    lease_cap_is_never_exceeded_under_200_concurrent_requests,
    |p: Pair| async move {
        let ks = Arc::new(keys(&[1, 1, 1]));
        let p = Arc::new(p);
        let inflight: Arc<Vec<AtomicU32>> = Arc::new((0..3).map(|_| AtomicU32::new(0)).collect());
        let peak: Arc<Vec<AtomicU32>> = Arc::new((0..3).map(|_| AtomicU32::new(0)).collect());
        let mut tasks = Vec::new();
        for t in 0..200usize {
            let (ks, p, inflight, peak) = (ks.clone(), p.clone(), inflight.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let mut r = req(Strategy::LeastUsed, &ks);
                r.cap = Some(2);
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match p.at(t).acquire(&r).await.unwrap() {
                        Acquire::Granted { index, lease, .. } => {
                            let now = inflight[index].fetch_add(1, Ordering::SeqCst) + 1;
                            peak[index].fetch_max(now, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            inflight[index].fetch_sub(1, Ordering::SeqCst);
                            ok(p.at(t + 1), &lease).await;
                            return;
                        }
                        Acquire::AtCapacity => {
                            assert!(Instant::now() < deadline, "starved");
                            tokio::task::yield_now().await;
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let peaks: Vec<u32> = peak.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        println!("peak in flight per key with cap 2 under 200 concurrent requests: {peaks:?}");
        assert!(peaks.iter().all(|p| *p <= 2), "{peaks:?}");
        assert!(
            peaks.iter().any(|p| *p == 2),
            "the cap was reached: {peaks:?}"
        );
        let live = p.a.live_states(&refs(&[100, 101, 102])).await.unwrap();
        assert!(
            live.iter().all(|l| l.inflight == 0),
            "every lease released: {live:?}"
        );
    }
);

contract!(
    an_abandoned_lease_expires_and_a_renewed_one_does_not,
    |p: Pair| async move {
        let ks = keys(&[1]);
        let mut r = req(Strategy::RoundRobin, &ks);
        r.cap = Some(1);
        r.lease_ttl_ms = 800;
        let (_, held, _) = take(&p.a, &r).await;
        // Renewed for longer than its TTL: still held.
        let until = Instant::now() + Duration::from_millis(1_600);
        while Instant::now() < until {
            p.b.renew(&held, 800).await.unwrap();
            assert_eq!(p.a.acquire(&r).await.unwrap(), Acquire::AtCapacity);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The holder "dies" (no renewal, no release): the slot comes back by itself, measured
        // from the last renewal.
        p.b.renew(&held, 800).await.unwrap();
        let t0 = Instant::now();
        let freed = eventually(Duration::from_secs(3), || async {
            matches!(p.b.acquire(&r).await.unwrap(), Acquire::Granted { .. })
        })
        .await;
        assert!(freed, "an abandoned lease must expire");
        assert!(
            t0.elapsed() >= Duration::from_millis(700),
            "not before its TTL: {:?}",
            t0.elapsed()
        );
    }
);

contract!(
    client_rate_limit_of_n_per_minute_admits_exactly_n,
    |p: Pair| async move {
        let ks = keys(&[1, 1]);
        let mut r = req(Strategy::RoundRobin, &ks);
        r.client = Some(ClientLimits {
            access_key_id: 7,
            rpm: Some(10),
            rpd: Some(1000),
            tpm: None,
            budget: None,
            spent: 0,
        });
        let (mut admitted, mut refused) = (0, 0);
        let mut remaining = Vec::new();
        for i in 0..25 {
            match p.at(i).acquire(&r).await.unwrap() {
                Acquire::Granted {
                    lease,
                    remaining: rem,
                    ..
                } => {
                    admitted += 1;
                    remaining.push(rem.rpm.unwrap());
                    assert!(rem.rpd.unwrap() >= 989);
                    ok(p.at(i), &lease).await;
                }
                Acquire::ClientLimited {
                    retry_after_ms,
                    remaining: rem,
                } => {
                    refused += 1;
                    assert!(
                        retry_after_ms > 0 && retry_after_ms <= 60_000,
                        "{retry_after_ms}"
                    );
                    assert_eq!(rem.rpm, Some(0));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((admitted, refused), (10, 15));
        assert_eq!(remaining, (0..10).rev().collect::<Vec<u64>>());
        // Another access key is not affected.
        r.client = Some(ClientLimits {
            access_key_id: 8,
            rpm: Some(10),
            rpd: None,
            tpm: None,
            budget: None,
            spent: 0,
        });
        assert!(matches!(
            p.b.acquire(&r).await.unwrap(),
            Acquire::Granted { .. }
        ));
    }
);

contract!(
    a_refusal_by_the_client_or_by_the_keys_costs_the_other_side_nothing,
    |p: Pair| async move {
        // On Redis the client's limits and the key choice are two calls on two slots; whichever
        // side refuses, the other's charge is given back.
        let ks = keys(&[1, 1, 1]);
        let all: Vec<i64> = ks.iter().map(|k| k.id).collect();
        let limits = |id, rpm, budget| ClientLimits {
            access_key_id: id,
            rpm,
            rpd: None,
            tpm: None,
            budget,
            spent: 0,
        };
        let mut r = req(Strategy::RoundRobin, &ks);
        r.client = Some(limits(9, Some(3), None));
        for (i, want) in [0, 1, 2].into_iter().enumerate() {
            let (idx, lease, _) = take(p.at(i), &r).await;
            assert_eq!(idx, want);
            ok(p.at(i), &lease).await;
        }
        assert!(matches!(
            p.a.acquire(&r).await.unwrap(),
            Acquire::ClientLimited { .. }
        ));
        // The refused request left no lease behind and did not move the rotation.
        let live = p.b.live_states(&refs(&all)).await.unwrap();
        assert!(live.iter().all(|l| l.inflight == 0), "{live:?}");
        let (idx, lease, _) = take(&p.b, &req(Strategy::RoundRobin, &ks)).await;
        assert_eq!(idx, 0, "the rotation goes on where it was");
        ok(&p.b, &lease).await;

        // No usable key: the client's rpm and budget reserve are given back.
        let mut none = req(Strategy::RoundRobin, &ks);
        none.excluded = &all;
        none.client = Some(limits(10, Some(2), Some(units(5))));
        none.reserve = units(1);
        for i in 0..6 {
            assert_eq!(p.at(i).acquire(&none).await.unwrap(), Acquire::NoKey);
        }
        let mut r = req(Strategy::RoundRobin, &ks);
        r.client = none.client;
        r.reserve = units(1);
        for i in 0..2 {
            let (_, lease, _) = take(p.at(i), &r).await;
            p.at(i)
                .release(
                    &lease,
                    &Usage {
                        success: true,
                        client: r.client,
                        cost: units(1),
                        reserved: units(1),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        assert!(matches!(
            p.a.acquire(&r).await.unwrap(),
            Acquire::ClientLimited { .. }
        ));
        assert_eq!(p.b.spent(&[10]).await.unwrap(), vec![Some(units(2))]);
    }
);

contract!(
    a_budget_admits_exactly_what_it_covers_under_concurrent_requests_on_two_replicas,
    |p: Pair| async move {
        let ks = keys(&[1, 1]);
        let mut r = req(Strategy::RoundRobin, &ks);
        r.client = Some(ClientLimits {
            access_key_id: 11,
            rpm: None,
            rpd: None,
            tpm: None,
            budget: Some(units(5)),
            spent: 0,
        });
        r.reserve = units(1);
        let results = futures::future::join_all((0..12).map(|i| p.at(i).acquire(&r))).await;
        let granted = results
            .iter()
            .filter(|a| matches!(a, Ok(Acquire::Granted { .. })))
            .count();
        let over = results
            .iter()
            .filter(|a| matches!(a, Ok(Acquire::OverBudget { .. })))
            .count();
        println!(
            "budget of 5 requests, 12 at once on two replicas: {granted} granted, {over} over budget"
        );
        assert_eq!((granted, over), (5, 7), "{results:?}");
        assert_eq!(p.a.spent(&[11]).await.unwrap(), vec![Some(units(5))]);
    }
);

contract!(
    tokens_reported_at_the_end_count_against_tpm,
    |p: Pair| async move {
        let ks = keys(&[1]);
        let mut r = req(Strategy::RoundRobin, &ks);
        let client = ClientLimits {
            access_key_id: 9,
            rpm: None,
            rpd: None,
            tpm: Some(1000),
            budget: None,
            spent: 0,
        };
        r.client = Some(client);
        let (_, l, _) = take(&p.a, &r).await;
        p.b.release(
            &l,
            &Usage {
                success: true,
                tokens: 1000,
                client: Some(client),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        match p.a.acquire(&r).await.unwrap() {
            Acquire::ClientLimited {
                retry_after_ms,
                remaining,
            } => {
                assert_eq!(remaining.tpm, Some(0));
                assert!(retry_after_ms > 0 && retry_after_ms <= 60_000);
            }
            other => panic!("over its tokens per minute: {other:?}"),
        }
    }
);

contract!(
    an_upstream_key_over_its_own_rpm_is_skipped,
    |p: Pair| async move {
        let mut sp = specs(&[1, 1]);
        sp[0].rpm = Some(3);
        let ks = KeySet::new(sp);
        let counts = spread(&p, &req(Strategy::RoundRobin, &ks), 20).await;
        assert_eq!(counts[0], 3, "{counts:?}");
        assert_eq!(counts[1], 17, "{counts:?}");
    }
);

contract!(
    cooldown_from_retry_after_is_honoured_within_100ms,
    |p: Pair| async move {
        let ks = keys(&[1]);
        let r = req(Strategy::RoundRobin, &ks);
        let (_, l, _) = take(&p.a, &r).await;
        let t0 = Instant::now();
        p.b.report(
            1,
            100,
            Some(&l),
            Fault::RateLimited {
                retry_after_ms: Some(500),
            },
            1,
        )
        .await
        .unwrap();
        assert_eq!(p.a.acquire(&r).await.unwrap(), Acquire::NoKey);
        let back = granted_within(&p.b, &r, Duration::from_secs(3)).await;
        let waited = t0.elapsed();
        println!("cooling for Retry-After 500 ms; back in rotation after {waited:?}");
        assert!(back.is_some());
        assert!(
            waited >= Duration::from_millis(480) && waited <= Duration::from_millis(600),
            "{waited:?}"
        );
    }
);

contract!(
    cooldown_without_retry_after_backs_off_exponentially,
    |p: Pair| async move {
        let ks = keys(&[1]);
        let before = keygate::coord::now_ms();
        let first =
            p.a.report(
                1,
                100,
                None,
                Fault::RateLimited {
                    retry_after_ms: None,
                },
                1,
            )
            .await
            .unwrap();
        let second =
            p.b.report(
                1,
                100,
                None,
                Fault::RateLimited {
                    retry_after_ms: None,
                },
                1,
            )
            .await
            .unwrap();
        let after = keygate::coord::now_ms();
        // base 200 ms, then 400 ms (measured from each report's own clock reading)
        assert!(
            (first.until - before) >= 200 && (first.until - after) <= 200,
            "{first:?}"
        );
        assert!(
            (second.until - before) >= 400 && (second.until - after) <= 400,
            "{second:?}"
        );
        let live = p.a.live_states(&refs(&[ks[0].id])).await.unwrap();
        assert_eq!(live[0].status(keygate::coord::now_ms()), Some("cooling"));
    }
);

/// Polls `acquire` until it grants a key or `within` passes.
async fn granted_within(
    c: &Coord,
    r: &AcquireReq<'_>,
    within: Duration,
) -> Option<(usize, Lease, bool)> {
    let deadline = Instant::now() + within;
    loop {
        if let Acquire::Granted {
            index,
            lease,
            probe,
            ..
        } = c.acquire(r).await.unwrap()
        {
            return Some((index, lease, probe));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

contract!(
    failures_trip_a_key_and_a_half_open_probe_brings_it_back,
    |p: Pair| async move {
        let ks = keys(&[1, 1]);
        let r = req(Strategy::RoundRobin, &ks);
        let single = KeySet::new(vec![ks[0].clone()]);
        let only_first = req(Strategy::RoundRobin, &single);
        // Threshold 2: a success in between resets the count.
        p.a.report(1, 100, None, Fault::Failure, 2).await.unwrap();
        let (_, l, _) = take(&p.b, &only_first).await;
        ok(&p.a, &l).await;
        let rep = p.b.report(1, 100, None, Fault::Failure, 2).await.unwrap();
        assert_eq!(
            (rep.fails, rep.until),
            (1, 0),
            "reset by the success: {rep:?}"
        );
        let rep = p.a.report(1, 100, None, Fault::Failure, 2).await.unwrap();
        assert!(rep.until > 0, "two in a row trip it: {rep:?}");
        assert_eq!(
            spread(&p, &r, 6).await,
            vec![0, 6],
            "tripped key out of rotation"
        );
        // After the recovery interval exactly one trial request gets it.
        let (_, trial, probe) = granted_within(&p.a, &only_first, Duration::from_secs(3))
            .await
            .expect("half-open trial after the recovery interval");
        assert!(probe);
        assert_eq!(
            p.b.acquire(&only_first).await.unwrap(),
            Acquire::NoKey,
            "one trial at a time"
        );
        // The trial succeeds: back in full rotation.
        ok(&p.b, &trial).await;
        assert_eq!(spread(&p, &r, 6).await, vec![3, 3]);
        let live = p.a.live_states(&refs(&[100])).await.unwrap();
        assert_eq!((live[0].fails, live[0].inflight), (0, 0));
    }
);

contract!(a_failed_probe_trips_the_key_again, |p: Pair| async move {
    let ks = keys(&[1]);
    let r = req(Strategy::RoundRobin, &ks);
    p.a.report(1, 100, None, Fault::Failure, 1).await.unwrap();
    p.b.report(1, 100, None, Fault::Failure, 1).await.unwrap();
    let (_, trial, probe) = granted_within(&p.a, &r, Duration::from_secs(3))
        .await
        .expect("a trial");
    assert!(probe);
    let rep =
        p.b.report(1, 100, Some(&trial), Fault::Failure, 1)
            .await
            .unwrap();
    assert!(rep.until > keygate::coord::now_ms(), "{rep:?}");
    assert_eq!(p.a.acquire(&r).await.unwrap(), Acquire::NoKey);
});

contract!(
    invalid_and_exhausted_keys_stay_out_until_cleared,
    |p: Pair| async move {
        let ks = keys(&[1, 1, 1]);
        let r = req(Strategy::RoundRobin, &ks);
        p.a.report(1, 100, None, Fault::Invalid, 3).await.unwrap();
        p.b.report(1, 101, None, Fault::Exhausted, 3).await.unwrap();
        assert_eq!(spread(&p, &r, 9).await, vec![0, 0, 9]);
        let live = p.a.live_states(&refs(&[100, 101])).await.unwrap();
        let now = keygate::coord::now_ms();
        assert_eq!(live[0].status(now), Some("invalid"));
        assert_eq!(live[1].status(now), Some("exhausted"));
        p.b.report(1, 100, None, Fault::Clear, 3).await.unwrap();
        assert_eq!(
            spread(&p, &r, 8).await,
            vec![4, 0, 4],
            "exact among the usable keys"
        );
    }
);

contract!(
    most_keys_429_at_once_backs_off_the_service_not_every_key,
    |p: Pair| async move {
        let ks = keys(&[1, 1, 1]);
        let r = req(Strategy::RoundRobin, &ks);
        let one =
            p.a.report(
                1,
                100,
                None,
                Fault::RateLimited {
                    retry_after_ms: Some(60_000),
                },
                3,
            )
            .await
            .unwrap();
        assert_eq!(one.service_backoff_until, None, "one key: a key limit");
        let two =
            p.b.report(
                1,
                101,
                None,
                Fault::RateLimited {
                    retry_after_ms: Some(400),
                },
                3,
            )
            .await
            .unwrap();
        assert!(
            two.service_backoff_until.is_some(),
            "two of three keys: upstream-wide"
        );
        match p.a.acquire(&r).await.unwrap() {
            Acquire::ServiceBackoff { retry_after_ms } => assert!(retry_after_ms <= 400),
            other => panic!("{other:?}"),
        }
        // The second key was not cooled: after the service backoff it is usable again.
        assert!(
            eventually(Duration::from_secs(3), || async {
                matches!(p.b.acquire(&r).await.unwrap(), Acquire::Granted { .. })
            })
            .await
        );
        let live = p.a.live_states(&refs(&[100, 101])).await.unwrap();
        let now = keygate::coord::now_ms();
        assert_eq!(live[0].status(now), Some("cooling"));
        assert_eq!(live[1].status(now), None);
    }
);

contract!(
    excluded_keys_are_not_picked_again_by_the_same_request,
    |p: Pair| async move {
        let ks = keys(&[1, 1, 1]);
        let mut seen: HashMap<usize, ()> = HashMap::new();
        let mut tried: Vec<i64> = Vec::new();
        for i in 0..3 {
            let mut r = req(Strategy::LeastUsed, &ks);
            r.excluded = &tried;
            let (idx, lease, _) = take(p.at(i), &r).await;
            assert!(seen.insert(idx, ()).is_none(), "picked {idx} twice");
            p.at(i)
                .report(1, lease.key_id, Some(&lease), Fault::Failure, 3)
                .await
                .unwrap();
            tried.push(lease.key_id);
        }
        let mut r = req(Strategy::LeastUsed, &ks);
        r.excluded = &tried;
        assert_eq!(p.a.acquire(&r).await.unwrap(), Acquire::NoKey);
    }
);

contract!(
    retry_after_zero_means_no_hint_on_every_store,
    |p: Pair| async move {
        let before = keygate::coord::now_ms();
        let r =
            p.a.report(
                1,
                100,
                None,
                Fault::RateLimited {
                    retry_after_ms: Some(0),
                },
                1,
            )
            .await
            .unwrap();
        assert!(
            r.until - before >= 200,
            "the 200 ms backoff applies, not 0: {r:?}"
        );
    }
);

contract!(
    the_service_backoff_step_resets_after_a_quiet_window,
    |p: Pair| async move {
        let ks = keys(&[1, 1]);
        let r = req(Strategy::RoundRobin, &ks);
        let limit = Fault::RateLimited {
            retry_after_ms: None,
        };
        // Two keys of two limited at once: upstream-wide, first step (200 ms), measured between clock
        // readings taken before and after the report.
        p.a.report(1, 100, None, limit, 2).await.unwrap();
        let t0 = keygate::coord::now_ms();
        let first = p.b.report(1, 101, None, limit, 2).await.unwrap();
        let t0_after = keygate::coord::now_ms();
        let until = first.service_backoff_until.expect("upstream-wide");
        assert!(
            until - t0 >= 200 && until - t0_after <= 200,
            "first step is 200 ms: {first:?}"
        );
        // After the backoff and a quiet window (1 s) the next upstream-wide limit starts over.
        assert!(
            granted_within(&p.a, &r, Duration::from_secs(3))
                .await
                .is_some()
        );
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        p.a.report(1, 100, None, limit, 2).await.unwrap();
        let t1 = keygate::coord::now_ms();
        let again = p.b.report(1, 101, None, limit, 2).await.unwrap();
        let t1_after = keygate::coord::now_ms();
        let until = again.service_backoff_until.expect("upstream-wide again");
        assert!(
            until - t1 >= 200 && until - t1_after <= 200,
            "back to the first step (200 ms), not 400 ms: {again:?}"
        );
    }
);

/// Releases a lease as an answer whose head took `ms`.
async fn answered_in(c: &Coord, lease: &Lease, ms: u64) {
    c.release(
        lease,
        &Usage {
            success: true,
            latency_ms: Some(ms),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

contract!(
    a_session_stays_on_its_key_across_replicas_and_moves_to_the_next_when_the_key_goes_out,
    |p: Pair| async move {
        let ks = keys(&[1, 1, 1, 1]);
        let s1 = Session::new(1, "conversation-1", 60_000);
        let s2 = Session::new(1, "conversation-2", 60_000);
        let with = |s| AcquireReq {
            session: Some(s),
            ..req(Strategy::RoundRobin, &ks)
        };
        let (first, lease, _) = take(p.at(0), &with(&s1)).await;
        ok(p.at(1), &lease).await;
        // Interleaved with another session and with session-less traffic that moves the cursor.
        for i in 0..12 {
            let (idx, lease, _) = take(p.at(i), &with(&s1)).await;
            assert_eq!(idx, first, "request {i} of the session left its key");
            ok(p.at(i + 1), &lease).await;
            let (_, lease, _) = take(p.at(i + 1), &with(&s2)).await;
            ok(p.at(i), &lease).await;
            let (_, lease, _) = take(p.at(i), &req(Strategy::RoundRobin, &ks)).await;
            ok(p.at(i), &lease).await;
        }
        // The key goes out: both replicas move the session to the same next key, and it stays
        // there when the first key comes back.
        p.a.report(1, ks[first].id, None, Fault::Invalid, ks.len())
            .await
            .unwrap();
        let next = (first + 1) % ks.len();
        for i in 0..4 {
            let (idx, lease, _) = take(p.at(i), &with(&s1)).await;
            assert_eq!(idx, next, "the session moves to the next key in list order");
            ok(p.at(i), &lease).await;
        }
        p.b.report(1, ks[first].id, None, Fault::Clear, ks.len())
            .await
            .unwrap();
        let (idx, lease, _) = take(p.at(0), &with(&s1)).await;
        assert_eq!(idx, next, "the session is not bounced back to a cold cache");
        ok(p.at(0), &lease).await;
    }
);

contract!(
    an_unbound_session_starts_at_the_same_key_on_every_replica,
    |p: Pair| async move {
        let ks = keys(&[1, 1, 1, 1, 1]);
        for n in 0..10 {
            let s = Session::new(7, &format!("user-{n}"), 60_000);
            let r = AcquireReq {
                service_id: 7,
                session: Some(&s),
                ..req(Strategy::Random, &ks)
            };
            let (idx, lease, _) = take(p.at(n), &r).await;
            assert_eq!(idx as u64, s.start % ks.len() as u64);
            ok(p.at(n), &lease).await;
        }
    }
);

contract!(
    the_latency_strategy_moves_traffic_away_from_a_slow_key,
    |p: Pair| async move {
        let ks = keys(&[1, 1]);
        let r = req(Strategy::Latency, &ks);
        let mut slow = 0;
        for i in 0..40 {
            let (idx, lease, _) = take(p.at(i), &r).await;
            // Key 0 answers in 400 ms, key 1 in 5 ms.
            let ms = if idx == 0 { 400 } else { 5 };
            if idx == 0 {
                slow += 1;
            }
            answered_in(p.at(i + 1), &lease, ms).await;
        }
        // Each key is tried once while unobserved; then the fast one wins every comparison.
        assert!(slow <= 2, "the slow key got {slow} of 40 requests");
    }
);

contract!(
    the_latency_strategy_counts_requests_in_flight,
    |p: Pair| async move {
        let ks = keys(&[1, 1]);
        let r = req(Strategy::Latency, &ks);
        // Both keys answer in 10 ms; then key 1 holds three requests in flight.
        for i in 0..2 {
            let (_, lease, _) = take(p.at(i), &r).await;
            answered_in(p.at(i), &lease, 10).await;
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            let (idx, lease, _) = take(&p.a, &r).await;
            held.push((idx, lease));
        }
        let on: Vec<usize> = held.iter().map(|(i, _)| *i).collect();
        assert!(
            on.contains(&0) && on.contains(&1),
            "in-flight requests spread over both keys: {on:?}"
        );
    }
);

contract!(
    the_success_rate_strategy_moves_traffic_away_from_a_failing_key,
    |p: Pair| async move {
        let ks = keys(&[1, 1]);
        let r = req(Strategy::SuccessRate, &ks);
        let (mut on_failing, mut fail_next) = (0, true);
        for i in 0..200 {
            let (idx, lease, _) = take(p.at(i), &r).await;
            if idx == 0 {
                // Key 0 fails every other attempt: half its answers are failures, never two in a
                // row, so the circuit breaker never trips and only the strategy moves traffic.
                on_failing += 1;
                if fail_next {
                    p.at(i + 1)
                        .report(1, ks[0].id, Some(&lease), Fault::Failure, 2)
                        .await
                        .unwrap();
                } else {
                    ok(p.at(i + 1), &lease).await;
                }
                fail_next = !fail_next;
            } else {
                ok(p.at(i + 1), &lease).await;
            }
        }
        // An even split is 100; a success rate of 1/2, squared, gives about 40.
        assert!(on_failing < 70, "the failing key got {on_failing} of 200");
        assert!(
            on_failing > 0,
            "a failing key keeps a trickle, so it can show it recovered"
        );
    }
);

contract!(
    the_cost_strategy_takes_the_cheapest_keys_in_turn,
    |p: Pair| async move {
        let mut sp = specs(&[1, 1, 1]);
        sp[0].cost_ppm = 2_000_000;
        sp[1].cost_ppm = 500_000;
        sp[2].cost_ppm = 500_000;
        let ks = KeySet::new(sp);
        assert_eq!(
            spread(&p, &req(Strategy::Cost, &ks), 100).await,
            vec![0, 50, 50]
        );
        // The cheap keys go out: the dearer one serves.
        for i in [1, 2] {
            p.a.report(1, ks[i].id, None, Fault::Invalid, 3)
                .await
                .unwrap();
        }
        let (idx, lease, _) = take(&p.b, &req(Strategy::Cost, &ks)).await;
        assert_eq!(idx, 0);
        ok(&p.a, &lease).await;
    }
);

contract!(
    a_job_lock_has_one_holder_until_released_or_expired,
    |p: Pair| async move {
        let first = p.a.try_lock("job", 60_000).await.unwrap();
        let first = first.expect("a free lock is taken");
        assert!(
            p.b.try_lock("job", 60_000).await.unwrap().is_none(),
            "held: the other replica cannot take it"
        );
        assert!(
            p.a.try_lock("job", 60_000).await.unwrap().is_none(),
            "held: not even its holder takes it twice"
        );
        assert!(
            p.b.try_lock("other-job", 60_000).await.unwrap().is_some(),
            "locks are per name"
        );
        assert!(p.a.unlock(&first).await.unwrap(), "the holder releases it");
        let second = p.b.try_lock("job", 300).await.unwrap();
        let second = second.expect("free again once released");
        assert!(
            !p.a.unlock(&first).await.unwrap(),
            "a released lock's token releases nothing"
        );
        assert!(
            p.a.try_lock("job", 60_000).await.unwrap().is_none(),
            "the stale unlock left the new holder's lock in place"
        );
        // Without an unlock the lock ends with its TTL (a replica that died holding it).
        assert!(
            eventually(Duration::from_secs(3), || async {
                p.a.try_lock("job", 60_000).await.unwrap().is_some()
            })
            .await,
            "taken again after the 300 ms TTL"
        );
        assert!(
            !p.b.unlock(&second).await.unwrap(),
            "an expired holder cannot release the lock someone took since"
        );
        assert!(p.b.try_lock("job", 60_000).await.unwrap().is_none());
    }
);

contract!(
    live_request_counts_add_up_across_replicas_over_a_sliding_minute_and_the_day,
    |p: Pair| async move {
        use keygate::coord::{LiveCounts, LiveDelta};
        let delta = |service: &str, sec: i64, requests: i64, tokens: i64| LiveDelta {
            service: service.into(),
            sec,
            requests,
            tokens,
        };
        // Noon UTC of some day, so the minute window never leaves the day.
        let now = 1_800_000_000 / 86_400 * 86_400 + 43_200;
        p.a.add_live(&[delta("s1", now, 3, 30), delta("s2", now, 1, 1)])
            .await
            .unwrap();
        p.b.add_live(&[delta("s1", now - 59, 2, 20)]).await.unwrap();
        // A minute ago: outside the sliding minute, inside the day.
        p.a.add_live(&[delta("s1", now - 60, 4, 40)]).await.unwrap();
        // Yesterday: in neither.
        p.b.add_live(&[delta("s1", now - 86_400, 8, 80)])
            .await
            .unwrap();
        let s1 = vec!["s1".to_string()];
        for c in [&p.a, &p.b] {
            assert_eq!(
                c.live(&s1, now).await.unwrap(),
                LiveCounts {
                    rpm: 5,
                    tpm: 50,
                    rpd: 9,
                    tpd: 90
                }
            );
        }
        let both = vec!["s1".to_string(), "s2".to_string(), "gone".to_string()];
        let all = p.b.live(&both, now).await.unwrap();
        assert_eq!((all.rpm, all.tpm, all.rpd, all.tpd), (6, 51, 10, 91));
        // A minute later only the day remains.
        let later = p.a.live(&s1, now + 60).await.unwrap();
        assert_eq!((later.rpm, later.rpd), (0, 9));
    }
);
