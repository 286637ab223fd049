//! A fast stand-in for an OpenAI-compatible upstream, for `scripts/bench.sh`: answers every
//! request with the same small chat completion, as quickly as the machine allows.
//! - a body with `"stream":true` gets an SSE stream of 20 small chunks, then a usage chunk and
//!   `[DONE]`, written as separate writes (as a real provider does);
//! - a path ending in `/hold` gets an SSE stream whose first event comes at once and whose end
//!   comes only after `HOLD_SECS` (default 30) seconds: open streams, for memory figures.
//!
//! Usage: `keygate-mock-upstream [PORT]` (default 9100); prints `listening on PORT` when ready.
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};

const BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":9}}"#;
const CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok\"}}]}\n\n";
const USAGE: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":20,\"total_tokens\":28}}\n\ndata: [DONE]\n\n";

fn sse(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

async fn answer(req: Request) -> Response {
    let hold = req.uri().path().ends_with("/hold");
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    if hold {
        let secs = std::env::var("HOLD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30);
        let first = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from(CHUNK)) });
        let last = futures::stream::once(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok::<_, Infallible>(Bytes::from(USAGE))
        });
        return sse(Body::from_stream(futures::StreamExt::chain(first, last)));
    }
    if body.windows(13).any(|w| w == b"\"stream\":true") {
        let chunks = (0..20)
            .map(|_| Ok::<_, Infallible>(Bytes::from(CHUNK)))
            .chain(std::iter::once(Ok(Bytes::from(USAGE))));
        // One frame per chunk, yielding between them, so each goes out as its own write.
        let stream = futures::StreamExt::then(futures::stream::iter(chunks), |c| async move {
            tokio::task::yield_now().await;
            c
        });
        return sse(Body::from_stream(stream));
    }
    ([(header::CONTENT_TYPE, "application/json")], BODY).into_response()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse().expect("PORT must be a number"))
        .unwrap_or(9100);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?.port());
    // The mock must not add Nagle stalls of its own to the figures it is the baseline for.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, Router::new().fallback(answer)).await
}
