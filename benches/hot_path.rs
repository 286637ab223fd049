//! Micro-benchmarks of the per-request work that does not touch the network: key choice in the
//! in-process store (acquire + release) and reading usage from an answer. Compare within one run:
//! e.g. 100 keys against 3 keys, weighted against round robin.
//!   cargo bench --bench hot_path
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate::coord::memory::MemoryStore;
use keygate::coord::{Acquire, AcquireReq, KeySet, KeySpec, Policy, Strategy, Usage};
use keygate::formats::Format;
use keygate::proxy::usage::UsageScanner;

fn keys(n: usize) -> KeySet {
    KeySet::new(
        (0..n)
            .map(|i| KeySpec {
                id: i as i64 + 1,
                weight: 1 + (i % 3) as u32,
                rpm: None,
                tpm: None,
                balance: None,
            })
            .collect(),
    )
}

fn acquire_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory acquire+release");
    for (strategy, name) in [
        (Strategy::RoundRobin, "round_robin"),
        (Strategy::Weighted, "weighted"),
        (Strategy::LeastUsed, "least_used"),
    ] {
        for n in [3usize, 100] {
            let store = MemoryStore::new(Policy::default());
            let ks = keys(n);
            let req = AcquireReq {
                service_id: 1,
                strategy,
                keys: &ks,
                excluded: &[],
                cap: None,
                lease_ttl_ms: 60_000,
                client: None,
                price: None,
            };
            let ok = Usage {
                success: true,
                ..Default::default()
            };
            g.bench_function(format!("{name}/{n} keys"), |b| {
                b.iter(|| match store.acquire(black_box(&req)) {
                    Acquire::Granted { lease, .. } => store.release(&lease, &ok),
                    other => panic!("{other:?}"),
                })
            });
        }
    }
    g.finish();
}

fn usage(c: &mut Criterion) {
    let json = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello there, how can I help you today?"}}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#;
    let mut sse = Vec::new();
    for i in 0..50 {
        sse.extend_from_slice(
            format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"token {i}\"}}}}]}}\n\n")
                .as_bytes(),
        );
    }
    sse.extend_from_slice(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":50}}\n\ndata: [DONE]\n\n");
    let mut g = c.benchmark_group("usage scanner");
    g.bench_function("json answer", |b| {
        b.iter(|| {
            let mut s = UsageScanner::new(Format::OpenAi, false);
            s.feed(black_box(json));
            s.finish();
            black_box(s.tokens.total())
        })
    });
    g.bench_function("sse stream, 52 events in 13 chunks", |b| {
        b.iter(|| {
            let mut s = UsageScanner::new(Format::OpenAi, true);
            for chunk in sse.chunks(sse.len() / 12) {
                s.feed(black_box(chunk));
            }
            s.finish();
            black_box(s.tokens.total())
        })
    });
    g.finish();
}

criterion_group!(benches, acquire_release, usage);
criterion_main!(benches);
