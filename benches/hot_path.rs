//! Micro-benchmarks of the per-request work that does not touch the network: key choice in the
//! in-process store (acquire + release), reading usage from an answer, and translating between
//! wire formats (a request each way, and a recorded stream event by event). Compare within one
//! run: e.g. 100 keys against 3 keys, weighted against round robin, translation against the
//! usage scan that same-format passthrough does instead. Last, the log writer's own work on a
//! batch: summing 4,000 request events into statistics rows, as in one flush of the bench's load.
//!   cargo bench --bench hot_path
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate::coord::memory::MemoryStore;
use keygate::coord::{Acquire, AcquireReq, KeySet, KeySpec, Policy, Strategy, Usage};
use keygate::formats::canonical::ChatRequest;
use keygate::formats::registry::{ClientApi, Plan, StreamTransform, Transform};
use keygate::formats::{Endpoint, Format};
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
                cost_ppm: 1_000_000,
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
                session: None,
                reserve: 0,
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

const CHAT_REQUEST: &[u8] = include_bytes!("../tests/fixtures/openai/chat_request.json");
const ANTHROPIC_REQUEST: &[u8] = include_bytes!("../tests/fixtures/anthropic/request.json");
const GEMINI_REQUEST: &[u8] = include_bytes!("../tests/fixtures/gemini/client_request.json");
const RESPONSES_REQUEST: &[u8] = include_bytes!("../tests/fixtures/responses/request.json");
const OPENAI_STREAM: &[u8] = include_bytes!("../tests/fixtures/openai/chat_stream.txt");
const ANTHROPIC_STREAM: &[u8] = include_bytes!("../tests/fixtures/anthropic/stream.sse");
const GEMINI_STREAM: &[u8] = include_bytes!("../tests/fixtures/gemini/stream.sse");

fn name(f: Format) -> &'static str {
    f.name()
}

fn translation(c: &mut Criterion) {
    let clients: [(ClientApi, &str, Endpoint, &[u8]); 4] = [
        (
            ClientApi::OpenAiChat,
            "openai",
            Endpoint::ChatCompletions,
            CHAT_REQUEST,
        ),
        (
            ClientApi::OpenAiResponses,
            "responses",
            Endpoint::Responses,
            RESPONSES_REQUEST,
        ),
        (
            ClientApi::Anthropic,
            "anthropic",
            Endpoint::Messages,
            ANTHROPIC_REQUEST,
        ),
        (
            ClientApi::Gemini { sse: true },
            "gemini",
            Endpoint::Gemini {
                model: "gemini-2.5-flash".into(),
                method: "generateContent".into(),
            },
            GEMINI_REQUEST,
        ),
    ];
    let upstreams = [
        (Format::OpenAi, OPENAI_STREAM),
        (Format::Anthropic, ANTHROPIC_STREAM),
        (Format::Gemini, GEMINI_STREAM),
    ];
    let mut g = c.benchmark_group("translate request");
    for (client, cname, endpoint, body) in &clients {
        for (upstream, _) in &upstreams {
            let plan = Plan::Chat {
                client: *client,
                upstream: *upstream,
            };
            if plan.request(endpoint, body).is_err() {
                continue;
            }
            g.bench_function(format!("{cname} -> {}", name(*upstream)), |b| {
                b.iter(|| black_box(plan.request(endpoint, black_box(body)).unwrap()))
            });
        }
    }
    g.finish();
    let mut g = c.benchmark_group("translate stream (per transcript)");
    for (client, cname, _, _) in &clients {
        for (upstream, transcript) in &upstreams {
            let events = transcript
                .windows(6)
                .filter(|w| w == b"data: " || w == b"data:{")
                .count();
            g.throughput(criterion::Throughput::Elements(events as u64));
            let req = ChatRequest::new("m");
            g.bench_function(
                format!("{} -> {cname}, {events} events", name(*upstream)),
                |b| {
                    b.iter(|| {
                        let mut t = StreamTransform::new(*client, *upstream, &req);
                        let mut out = Vec::with_capacity(8192);
                        for chunk in transcript.chunks(512) {
                            t.chunk(black_box(chunk), &mut out);
                        }
                        t.finish(&mut out);
                        black_box(out.len())
                    })
                },
            );
        }
    }
    g.finish();
}

/// A flush's worth of the bench's traffic: one service, access key and model, 100 keys in turn,
/// spread over two minutes.
fn batch(n: usize) -> Vec<keygate::events::RequestEvent> {
    let start = chrono::Utc::now();
    (0..n)
        .map(|i| keygate::events::RequestEvent {
            id: uuid::Uuid::now_v7(),
            ts: start + chrono::Duration::milliseconds((i * 120_000 / n) as i64),
            service: "bench".into(),
            access_key_id: Some(1),
            upstream_key_id: Some(1 + (i % 100) as i64),
            tried: vec![1 + (i % 100) as i64],
            model: Some("bench".into()),
            upstream_model: None,
            path: "v1/chat/completions".into(),
            status: 200,
            attempts: 1,
            latency_ms: (i % 7) as u64,
            ttft_ms: None,
            tokens: keygate::events::Tokens {
                prompt: 9,
                completion: 12,
                cache_read: 0,
                cache_write: 0,
            },
            cost_micros: None,
            error_kind: None,
            streamed: false,
            cancelled: false,
            estimated: false,
            client_format: "openai",
            upstream_format: "openai",
            target: None,
            bodies: None,
        })
        .collect()
}

fn log_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("log batch");
    let events = batch(4000);
    g.bench_function("statistics rows of 4,000 events", |b| {
        b.iter(|| black_box(keygate::events::rollup::aggregate(black_box(&events))))
    });
    g.finish();
}

criterion_group!(benches, acquire_release, usage, translation, log_batch);
criterion_main!(benches);
