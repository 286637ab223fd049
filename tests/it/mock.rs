//! The mock upstream LLM provider: an axum server on a loopback port that records which key each
//! request carried and answers per key as the test configured it.
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Clone)]
pub enum Behaviour {
    /// 200 with a chat completion.
    Ok,
    /// That status with an error body; `Retry-After` when given.
    Status(u16, Option<u64>),
    /// SSE: the first event at once, the rest only after `release` is notified.
    GatedStream(Arc<Notify>),
    /// 200 after holding the request this long (simulated upstream latency).
    Slow(std::time::Duration),
    /// SSE: the first event, then the connection breaks once `break_now` is notified.
    BreakingStream(Arc<Notify>),
    /// SSE: a first event that reports usage (11 prompt, 2 completion tokens), then nothing more
    /// until `gate` is notified.
    UsageThenHold(Arc<Notify>),
    /// SSE: `n` small events `gap` apart, then `[DONE]` (a token stream, for timing tests).
    Chunks { n: usize, gap: std::time::Duration },
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub key: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request arrived.
    pub at: std::time::Instant,
}

#[derive(Clone, Default)]
pub struct Mock {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    behaviours: Mutex<HashMap<String, Behaviour>>,
    seen: Mutex<Vec<Seen>>,
    /// Requests being answered per key right now, and the most seen at once.
    inflight: Mutex<HashMap<String, (usize, usize)>>,
}

pub struct MockServer {
    pub mock: Mock,
    pub base: String,
}

impl Mock {
    pub fn set(&self, key: &str, b: Behaviour) {
        self.inner.behaviours.lock().insert(key.to_string(), b);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().clone()
    }

    /// The most requests each key had in flight at once.
    pub fn peak_concurrency(&self) -> HashMap<String, usize> {
        self.inner
            .inflight
            .lock()
            .iter()
            .map(|(k, (_, p))| (k.clone(), *p))
            .collect()
    }

    /// How many requests each key carried.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for s in self.inner.seen.lock().iter() {
            *m.entry(s.key.clone()).or_default() += 1;
        }
        m
    }
}

fn key_of(h: &HeaderMap) -> String {
    if let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").unwrap_or(v).to_string();
    }
    for name in ["x-api-key", "x-goog-api-key"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            return v.to_string();
        }
    }
    String::new()
}

async fn handle(State(mock): State<Mock>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let key = key_of(&parts.headers);
    mock.inner.seen.lock().push(Seen {
        key: key.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body: body.clone(),
        at: std::time::Instant::now(),
    });
    let behaviour = mock
        .inner
        .behaviours
        .lock()
        .get(&key)
        .cloned()
        .unwrap_or(Behaviour::Ok);
    match behaviour {
        Behaviour::Ok => axum::Json(serde_json::json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "model": "mock-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        }))
        .into_response(),
        Behaviour::Status(code, retry_after) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = (
                status,
                axum::Json(
                    serde_json::json!({"error": {"message": "mock says no", "type": "mock"}}),
                ),
            )
                .into_response();
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", s.into());
            }
            r
        }
        Behaviour::Slow(d) => {
            {
                let mut m = mock.inner.inflight.lock();
                let e = m.entry(key.clone()).or_default();
                e.0 += 1;
                e.1 = e.1.max(e.0);
            }
            tokio::time::sleep(d).await;
            mock.inner.inflight.lock().entry(key).or_default().0 -= 1;
            axum::Json(
                serde_json::json!({"id": "slow", "object": "chat.completion", "choices": []}),
            )
            .into_response()
        }
        Behaviour::BreakingStream(break_now) => {
            let first = futures::stream::once(async {
                Ok::<Bytes, std::io::Error>(Bytes::from_static(
                    b"data: {\"choices\":[{\"delta\":{\"content\":\"partial\"}}]}\n\n",
                ))
            });
            let broken = futures::stream::once(async move {
                break_now.notified().await;
                Err::<Bytes, std::io::Error>(std::io::Error::other("upstream died"))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(futures::StreamExt::chain(first, broken)))
                .unwrap()
        }
        Behaviour::UsageThenHold(gate) => {
            let first = futures::stream::once(async {
                Ok::<Bytes, std::io::Error>(Bytes::from_static(
                    b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2}}\n\n",
                ))
            });
            let rest = futures::stream::once(async move {
                gate.notified().await;
                Ok::<Bytes, std::io::Error>(Bytes::from_static(b"data: [DONE]\n\n"))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(futures::StreamExt::chain(first, rest)))
                .unwrap()
        }
        Behaviour::Chunks { n, gap } => {
            let events = futures::stream::unfold(0usize, move |i| async move {
                if i > n {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                let ev = if i == n {
                    "data: [DONE]\n\n".to_string()
                } else {
                    format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}]}}\n\n")
                };
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(ev)), i + 1))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(events))
                .unwrap()
        }
        Behaviour::GatedStream(gate) => {
            let stream = async_stream(gate);
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

fn async_stream(
    gate: Arc<Notify>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let first = futures::stream::once(async {
        Ok(Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"first\"}}]}\n\n",
        ))
    });
    let rest = futures::stream::once(async move {
        gate.notified().await;
        Ok(Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"second\"}}]}\n\ndata: [DONE]\n\n",
        ))
    });
    futures::StreamExt::chain(first, rest)
}

pub async fn start() -> MockServer {
    let mock = Mock::default();
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    MockServer {
        mock,
        base: format!("http://127.0.0.1:{port}/v1"),
    }
}

/// Like `start`, with `TCP_NODELAY` on the mock's sockets, so timing tests measure keygate's
/// own delays and not the mock's.
pub async fn start_nodelay() -> MockServer {
    use axum::serve::ListenerExt;
    let mock = Mock::default();
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = listener.tap_io(|s| {
        let _ = s.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    MockServer {
        mock,
        base: format!("http://127.0.0.1:{port}/v1"),
    }
}
