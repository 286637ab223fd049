//! A mock upstream that speaks all three formats, under three prefixes: `/openai/v1`,
//! `/anthropic/v1` and `/gemini/v1beta`. It answers from the golden fixtures in
//! `tests/fixtures/` (the same recorded answers the format files' unit tests read), streams them
//! a few bytes at a time, and records what it was sent.
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::Notify;

const OPENAI_CHAT: &str = include_str!("../fixtures/openai/chat_response.json");
const OPENAI_STREAM: &str = include_str!("../fixtures/openai/chat_stream.txt");
const ANTHROPIC_MSG: &str = include_str!("../fixtures/anthropic/response.json");
const ANTHROPIC_STREAM: &str = include_str!("../fixtures/anthropic/stream.sse");
const ANTHROPIC_ERROR: &str = include_str!("../fixtures/anthropic/error.json");
const ANTHROPIC_MODELS: &str = include_str!("../fixtures/anthropic/models.json");
const GEMINI_RESP: &str = include_str!("../fixtures/gemini/upstream_response.json");
const GEMINI_STREAM: &str = include_str!("../fixtures/gemini/stream.sse");
const GEMINI_EMBED: &str = include_str!("../fixtures/gemini/batch_embed_response.json");
const OPENAI_EMBED: &str = include_str!("../fixtures/gemini/openai_embeddings_response.json");

#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub query: Option<String>,
    pub body: Bytes,
}

#[derive(Clone, Default)]
pub struct Polyglot {
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// When set, streams stop after their first event until it is notified.
    pub gate: Arc<Mutex<Option<Arc<Notify>>>>,
    /// When set, every chat call answers this status with an error in the upstream's format.
    pub fail_with: Arc<Mutex<Option<u16>>>,
}

pub struct PolyglotServer {
    pub mock: Polyglot,
    pub base: String,
}

impl Polyglot {
    pub fn last(&self) -> Call {
        self.calls
            .lock()
            .last()
            .cloned()
            .expect("a call reached the mock")
    }
}

fn json(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Sends `text` in pieces of 23 bytes (so events straddle chunks), stopping after the first
/// event while `gate` is set.
fn stream(text: &'static str, gate: Option<Arc<Notify>>) -> Response {
    let first_end = text.find("\n\n").map(|i| i + 2).unwrap_or(text.len());
    let (first, rest) = text.split_at(first_end);
    let pieces = |s: &'static str| {
        s.as_bytes()
            .chunks(23)
            .map(|c| Ok::<Bytes, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>()
    };
    let head = futures::stream::iter(pieces(first));
    let tail = futures::stream::once(async move {
        if let Some(g) = gate {
            g.notified().await;
        }
        futures::stream::iter(pieces(rest))
    })
    .flatten();
    use futures::StreamExt;
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(head.chain(tail)))
        .unwrap()
}

async fn handle(State(p): State<Polyglot>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    p.calls.lock().push(Call {
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
    });
    let wants_stream = body.windows(13).any(|w| w == b"\"stream\":true");
    let gate = p.gate.lock().clone();
    let fail = *p.fail_with.lock();
    if let Some(status) = fail {
        let status = StatusCode::from_u16(status).unwrap();
        return match () {
            _ if path.starts_with("/anthropic") => json(status, ANTHROPIC_ERROR),
            _ if path.starts_with("/gemini") => json(
                status,
                r#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#,
            ),
            _ => json(
                status,
                r#"{"error":{"message":"Unrecognized request argument supplied: foo","type":"invalid_request_error","param":null,"code":null}}"#,
            ),
        };
    }
    match path.as_str() {
        "/openai/v1/chat/completions" if wants_stream => stream(OPENAI_STREAM, gate),
        "/openai/v1/chat/completions" => json(StatusCode::OK, OPENAI_CHAT),
        "/openai/v1/embeddings" => json(StatusCode::OK, OPENAI_EMBED),
        "/openai/v1/models" => json(
            StatusCode::OK,
            r#"{"object":"list","data":[{"id":"gpt-4o","object":"model","created":0,"owned_by":"openai"}]}"#,
        ),
        // OpenAI's answer for a model it does not have: the route exists.
        "/openai/v1/responses" if body.windows(13).any(|w| w == b"missing-model") => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"The model `missing-model` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
        ),
        // An OpenAI-compatible upstream without the Responses API.
        "/openai/v1/responses" => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"Not found","type":"invalid_request_error","param":null,"code":null}}"#,
        ),
        // A 200 that is not an answer at all.
        "/anthropic/v1/messages" if body.windows(13).any(|w| w == b"garbled-model") => {
            json(StatusCode::OK, "oops, not JSON")
        }
        "/anthropic/v1/messages" if wants_stream => stream(ANTHROPIC_STREAM, gate),
        "/anthropic/v1/messages" => json(StatusCode::OK, ANTHROPIC_MSG),
        "/anthropic/v1/models" => json(StatusCode::OK, ANTHROPIC_MODELS),
        "/gemini/v1beta/models" => json(
            StatusCode::OK,
            r#"{"models":[{"name":"models/gemini-2.5-flash","supportedGenerationMethods":["generateContent"]}]}"#,
        ),
        p if p.starts_with("/gemini/v1beta/models/") && p.ends_with(":streamGenerateContent") => {
            stream(GEMINI_STREAM, gate)
        }
        p if p.starts_with("/gemini/v1beta/models/") && p.ends_with(":generateContent") => {
            json(StatusCode::OK, GEMINI_RESP)
        }
        p if p.starts_with("/gemini/v1beta/models/") && p.ends_with(":batchEmbedContents") => {
            json(StatusCode::OK, GEMINI_EMBED)
        }
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"no such path in the mock"}}"#,
        ),
    }
}

pub async fn start() -> PolyglotServer {
    let mock = Polyglot::default();
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    PolyglotServer {
        mock,
        base: format!("http://127.0.0.1:{port}"),
    }
}
