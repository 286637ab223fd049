//! A fast stand-in for an OpenAI-compatible upstream, for `scripts/bench.sh`: answers every
//! request with the same small chat completion, as quickly as the machine allows.
//! Usage: `keygate-mock-upstream [PORT]` (default 9100); prints `listening on PORT` when ready.
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;

const BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":9}}"#;

async fn answer() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse().expect("PORT must be a number"))
        .unwrap_or(9100);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?.port());
    axum::serve(listener, Router::new().fallback(answer)).await
}
