//! Any client format against any upstream format, through the real gateway: OpenAI chat
//! completions, the OpenAI Responses API, Anthropic Messages and Gemini, each against OpenAI,
//! Anthropic and Gemini upstreams (the polyglot mock answering from the golden fixtures), whole
//! and streamed, with tool calls, usage, errors, embeddings and model lists.
use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::harness::{Backend, TestApp};
use crate::polyglot::{self, PolyglotServer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Chat,
    Responses,
    Anthropic,
    Gemini,
}

const UPSTREAMS: [(&str, &str, &str); 3] = [
    ("oa", "openai", "/openai/v1"),
    ("an", "anthropic", "/anthropic/v1"),
    ("ge", "gemini", "/gemini/v1beta"),
];

async fn setup(b: Backend) -> (TestApp, PolyglotServer, String) {
    let poly = polyglot::start().await;
    let app = TestApp::spawn(b).await;
    for (slug, kind, prefix) in UPSTREAMS {
        app.create_service(slug, kind, &format!("{}{prefix}", poly.base))
            .await;
        app.add_keys(slug, &[&format!("sk-{slug}-upstream-key-01")])
            .await;
    }
    let ak = app.access_key().await;
    (app, poly, ak)
}

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

/// Sends a chat call in the client's own format to `slug`.
async fn call(
    app: &TestApp,
    ak: &str,
    client: Client,
    slug: &str,
    stream: bool,
) -> reqwest::Response {
    let ask = "What is the weather in Paris and Lyon?";
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let auth = |rb: reqwest::RequestBuilder| match client {
        Client::Chat | Client::Responses => rb.bearer_auth(ak),
        Client::Anthropic => rb
            .header("x-api-key", ak)
            .header("anthropic-version", "2023-06-01"),
        Client::Gemini => rb.header("x-goog-api-key", ak),
    };
    let (path, body) = match client {
        Client::Chat => (
            format!("/llm/{slug}/v1/chat/completions"),
            json!({"model": "some-model", "stream": stream, "tools": weather_tool_openai(),
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": ask}]}),
        ),
        Client::Responses => (
            format!("/llm/{slug}/v1/responses"),
            json!({"model": "some-model", "stream": stream, "instructions": "Be brief.", "input": ask,
                "tools": [{"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": schema}]}),
        ),
        Client::Anthropic => (
            format!("/llm/{slug}/v1/messages"),
            json!({"model": "some-model", "max_tokens": 512, "stream": stream, "system": "Be brief.",
                "messages": [{"role": "user", "content": ask}],
                "tools": [{"name": "get_weather", "description": "Weather in a city", "input_schema": schema}]}),
        ),
        Client::Gemini => (
            if stream {
                format!("/llm/{slug}/v1beta/models/some-model:streamGenerateContent?alt=sse")
            } else {
                format!("/llm/{slug}/v1beta/models/some-model:generateContent")
            },
            json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
                "contents": [{"role": "user", "parts": [{"text": ask}]}],
                "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather in a city", "parameters": schema}]}]}),
        ),
    };
    auth(app.http.post(app.url(&path)))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// SSE events of a body: (event name, data).
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    let text = text.replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.trim_start().to_string());
                }
            }
            (event, data.join("\n"))
        })
        .collect()
}

/// What a client got: the tool calls (name, arguments) and how the answer finished.
#[derive(Debug, Default)]
struct Got {
    text: String,
    calls: Vec<(String, Value)>,
    finish: String,
}

fn args(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    }
}

fn read_whole(client: Client, v: &Value) -> Got {
    let mut g = Got::default();
    match client {
        Client::Chat => {
            let m = &v["choices"][0];
            g.text = m["message"]["content"].as_str().unwrap_or("").into();
            for c in m["message"]["tool_calls"].as_array().into_iter().flatten() {
                g.calls.push((
                    c["function"]["name"].as_str().unwrap().into(),
                    args(&c["function"]["arguments"]),
                ));
            }
            g.finish = m["finish_reason"].as_str().unwrap_or("").into();
        }
        Client::Responses => {
            for item in v["output"].as_array().into_iter().flatten() {
                if item["type"] == "message" {
                    for c in item["content"].as_array().into_iter().flatten() {
                        g.text.push_str(c["text"].as_str().unwrap_or(""));
                    }
                }
                if item["type"] == "function_call" {
                    g.calls.push((
                        item["name"].as_str().unwrap().into(),
                        args(&item["arguments"]),
                    ));
                }
            }
            g.finish = v["status"].as_str().unwrap_or("").into();
        }
        Client::Anthropic => {
            for b in v["content"].as_array().into_iter().flatten() {
                if b["type"] == "text" {
                    g.text.push_str(b["text"].as_str().unwrap_or(""));
                }
                if b["type"] == "tool_use" {
                    g.calls
                        .push((b["name"].as_str().unwrap().into(), b["input"].clone()));
                }
            }
            g.finish = v["stop_reason"].as_str().unwrap_or("").into();
        }
        Client::Gemini => {
            let c = &v["candidates"][0];
            for p in c["content"]["parts"].as_array().into_iter().flatten() {
                if p["thought"] != true {
                    g.text.push_str(p["text"].as_str().unwrap_or(""));
                }
                if p.get("functionCall").is_some() {
                    g.calls.push((
                        p["functionCall"]["name"].as_str().unwrap().into(),
                        p["functionCall"]["args"].clone(),
                    ));
                }
            }
            g.finish = c["finishReason"].as_str().unwrap_or("").into();
        }
    }
    g
}

/// Reassembles a streamed answer the way each client's SDK does.
fn read_stream(client: Client, text: &str) -> Got {
    let events = sse_events(text);
    let mut g = Got::default();
    match client {
        Client::Chat => {
            let mut calls: Vec<(String, String)> = Vec::new();
            let mut done = false;
            for (_, data) in &events {
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: Value = serde_json::from_str(data).unwrap();
                let ch = &v["choices"][0];
                g.text
                    .push_str(ch["delta"]["content"].as_str().unwrap_or(""));
                for tc in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    let i = tc["index"].as_u64().unwrap() as usize;
                    if calls.len() <= i {
                        calls.resize(i + 1, Default::default());
                    }
                    if let Some(n) = tc["function"]["name"].as_str() {
                        calls[i].0 = n.into();
                    }
                    if let Some(a) = tc["function"]["arguments"].as_str() {
                        calls[i].1.push_str(a);
                    }
                }
                if let Some(f) = ch["finish_reason"].as_str() {
                    g.finish = f.into();
                }
            }
            assert!(done, "an OpenAI stream ends with [DONE]");
            g.calls = calls
                .into_iter()
                .map(|(n, a)| (n, serde_json::from_str(&a).unwrap()))
                .collect();
        }
        Client::Responses => {
            let last = events.last().expect("events");
            assert_eq!(last.0.as_deref(), Some("response.completed"), "{text}");
            let v: Value = serde_json::from_str(&last.1).unwrap();
            g = read_whole(Client::Responses, &v["response"]);
        }
        Client::Anthropic => {
            let names: Vec<_> = events.iter().filter_map(|(e, _)| e.clone()).collect();
            assert_eq!(names.first().map(String::as_str), Some("message_start"));
            assert_eq!(names.last().map(String::as_str), Some("message_stop"));
            let mut calls: Vec<(usize, String, String)> = Vec::new();
            for (_, data) in &events {
                let v: Value = serde_json::from_str(data).unwrap();
                match v["type"].as_str().unwrap_or("") {
                    "content_block_start" if v["content_block"]["type"] == "tool_use" => calls
                        .push((
                            v["index"].as_u64().unwrap() as usize,
                            v["content_block"]["name"].as_str().unwrap().into(),
                            String::new(),
                        )),
                    "content_block_delta" if v["delta"]["type"] == "input_json_delta" => {
                        let i = v["index"].as_u64().unwrap() as usize;
                        let c = calls
                            .iter_mut()
                            .find(|c| c.0 == i)
                            .expect("a started block");
                        c.2.push_str(v["delta"]["partial_json"].as_str().unwrap());
                    }
                    "content_block_delta" if v["delta"]["type"] == "text_delta" => {
                        g.text.push_str(v["delta"]["text"].as_str().unwrap_or(""))
                    }
                    "message_delta" => {
                        g.finish = v["delta"]["stop_reason"].as_str().unwrap_or("").into()
                    }
                    _ => {}
                }
            }
            g.calls = calls
                .into_iter()
                .map(|(_, n, a)| (n, serde_json::from_str(&a).unwrap()))
                .collect();
        }
        Client::Gemini => {
            for (_, data) in &events {
                let v: Value = serde_json::from_str(data).unwrap();
                let part = read_whole(Client::Gemini, &v);
                g.text.push_str(&part.text);
                g.calls.extend(part.calls);
                if !part.finish.is_empty() {
                    g.finish = part.finish;
                }
            }
        }
    }
    g
}

fn tool_finish(client: Client) -> &'static str {
    match client {
        Client::Chat => "tool_calls",
        Client::Responses => "completed",
        Client::Anthropic => "tool_use",
        Client::Gemini => "STOP",
    }
}

fn pairs() -> Vec<(Client, &'static str)> {
    vec![
        (Client::Chat, "an"),
        (Client::Chat, "ge"),
        (Client::Anthropic, "oa"),
        (Client::Anthropic, "ge"),
        (Client::Gemini, "oa"),
        (Client::Gemini, "an"),
        (Client::Responses, "an"),
        (Client::Responses, "ge"),
        (Client::Responses, "oa"),
    ]
}

both!(
    every_client_format_gets_tool_calls_from_every_other_upstream_whole_and_streamed,
    |b: Backend| async move {
        let (app, _poly, ak) = setup(b).await;
        for (client, slug) in pairs() {
            for stream in [false, true] {
                let r = call(&app, &ak, client, slug, stream).await;
                let status = r.status();
                let text = r.text().await.unwrap();
                assert_eq!(status, 200, "{client:?} -> {slug} stream={stream}: {text}");
                let got = if stream {
                    read_stream(client, &text)
                } else {
                    read_whole(client, &serde_json::from_str(&text).unwrap())
                };
                assert_eq!(
                    got.calls.len(),
                    2,
                    "{client:?} -> {slug} stream={stream}: two parallel calls: {text}"
                );
                for (name, args) in &got.calls {
                    assert_eq!(name, "get_weather");
                    assert!(args["city"].is_string(), "arguments are whole JSON: {args}");
                }
                assert_eq!(got.calls[0].1["city"], "Paris");
                assert!(
                    got.text.len() > 5,
                    "{client:?} -> {slug} stream={stream}: the text came through: {:?}",
                    got.text
                );
                assert_eq!(
                    got.finish,
                    tool_finish(client),
                    "{client:?} -> {slug} stream={stream}"
                );
            }
        }
    }
);

both!(
    translated_requests_reach_the_upstream_in_its_own_format_and_are_logged_with_usage,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        assert_eq!(
            call(&app, &ak, Client::Chat, "an", false).await.status(),
            200
        );
        let sent = poly.mock.last();
        assert_eq!(sent.path, "/anthropic/v1/messages");
        let v: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(v["system"], "Be brief.", "{v}");
        assert!(
            v["max_tokens"].as_u64().unwrap() > 0,
            "Anthropic needs max_tokens"
        );
        assert_eq!(v["tools"][0]["input_schema"]["required"][0], "city");

        assert_eq!(
            call(&app, &ak, Client::Anthropic, "ge", true)
                .await
                .status(),
            200
        );
        let sent = poly.mock.last();
        assert_eq!(
            sent.path,
            "/gemini/v1beta/models/some-model:streamGenerateContent"
        );
        assert_eq!(sent.query.as_deref(), Some("alt=sse"));

        // Usage from the upstream's own fields reaches the request log.
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let db = app.state.db.clone();
        let mut rows = Vec::new();
        for _ in 0..200 {
            rows = keygate::db::entity::request_log::Entity::find()
                .filter(keygate::db::entity::request_log::Column::Service.eq("an"))
                .all(&db)
                .await
                .unwrap();
            if !rows.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let row = rows.first().expect("the translated call is logged");
        assert!(row.prompt_tokens.unwrap_or(0) > 0, "{row:?}");
        assert!(row.completion_tokens.unwrap_or(0) > 0, "{row:?}");
    }
);

both!(
    upstream_errors_come_back_in_the_clients_format_with_their_status,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        *poly.mock.fail_with.lock() = Some(400);
        for (client, slug) in pairs() {
            let r = call(&app, &ak, client, slug, false).await;
            assert_eq!(r.status(), 400, "{client:?} -> {slug}");
            let v: Value = r.json().await.unwrap();
            match client {
                Client::Chat | Client::Responses => {
                    assert!(v["error"]["message"].is_string(), "{v}");
                    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
                }
                Client::Anthropic => {
                    assert_eq!(v["type"], "error", "{v}");
                    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
                }
                Client::Gemini => {
                    assert_eq!(v["error"]["code"], 400, "{v}");
                    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
                }
            }
        }
        // The upstream's own words survive the translation.
        let r = call(&app, &ak, Client::Chat, "an", false).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["message"], "max_tokens: Field required");
    }
);

both!(
    a_translated_stream_reaches_the_client_before_the_upstream_has_finished,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        let gate = std::sync::Arc::new(tokio::sync::Notify::new());
        *poly.mock.gate.lock() = Some(gate.clone());
        let mut r = call(&app, &ak, Client::Chat, "an", true).await;
        assert_eq!(r.status(), 200);
        // Only the upstream's first event has been sent: the client already has its first chunk.
        let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
            .await
            .expect("the first chunk arrives while the upstream is still holding")
            .unwrap()
            .unwrap();
        let first = String::from_utf8_lossy(&first).to_string();
        assert!(first.starts_with("data: {"), "{first}");
        assert!(first.contains("\"role\":\"assistant\""), "{first}");
        // A stored permit: the mock may not be waiting on the gate yet.
        gate.notify_one();
        let mut rest = String::new();
        while let Some(c) = r.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&c));
        }
        assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    }
);

both!(
    features_the_target_cannot_carry_are_refused_in_the_clients_format,
    |b: Backend| async move {
        let (app, _poly, ak) = setup(b).await;
        let r = app
            .http
            .post(app.url("/llm/ge/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(
                &json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("image URLs"), "{msg}");

        let r = app
            .http
            .post(app.url("/llm/an/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(&json!({"model": "m", "n": 3, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "several choices cannot go to Anthropic");

        // A model name must stay one path segment of the upstream URL.
        let r = app
            .http
            .post(app.url("/llm/ge/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(&json!({"model": "../../files", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("model name"),
            "{v}"
        );
    }
);

both!(
    embeddings_and_model_lists_translate_between_formats,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        let r = app
            .http
            .post(app.url("/llm/ge/v1/embeddings"))
            .bearer_auth(&ak)
            .json(&json!({"model": "gemini-embedding-001", "input": ["a", "b"], "encoding_format": "float"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"][1]["embedding"][0], 0.125, "{v}");
        assert_eq!(
            poly.mock.last().path,
            "/gemini/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );

        let r = app
            .http
            .post(app.url("/llm/oa/v1beta/models/text-embedding-3-small:embedContent"))
            .header("x-goog-api-key", &ak)
            .json(&json!({"content": {"parts": [{"text": "a"}]}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["embedding"]["values"][1], -0.5, "{v}");
        assert_eq!(poly.mock.last().path, "/openai/v1/embeddings");

        let r = app
            .http
            .get(app.url("/llm/an/v1/models"))
            .bearer_auth(&ak)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"][0]["id"], "claude-sonnet-4-5-20250929", "{v}");
        // The same path from Anthropic's SDK (it sends anthropic-version) is Anthropic's list.
        let r = app
            .http
            .get(app.url("/llm/oa/v1/models"))
            .header("x-api-key", &ak)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"][0]["type"], "model", "{v}");
        assert_eq!(v["data"][0]["id"], "gpt-4o", "{v}");
        let r = app
            .http
            .get(app.url("/llm/oa/v1beta/models"))
            .header("x-goog-api-key", &ak)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["models"][0]["name"], "models/gpt-4o", "{v}");
    }
);

both!(
    same_format_calls_pass_through_byte_for_byte,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        let body = br#"{"model":"m",  "messages":[{"role":"user","content":"hi"}], "x_vendor_field":{"keep":true}}"#;
        let r = app
            .http
            .post(app.url("/llm/oa/v1/chat/completions"))
            .bearer_auth(&ak)
            .header("content-type", "application/json")
            .body(&body[..])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&poly.mock.last().body[..], &body[..]);
        let got = r.text().await.unwrap();
        assert_eq!(
            got,
            include_str!("../fixtures/openai/chat_response.json"),
            "the answer is untouched too"
        );
    }
);

both!(
    token_counts_the_upstream_cannot_give_are_estimated_and_marked,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        let before = poly.mock.calls.lock().len();
        let r = app
            .http
            .post(app.url("/llm/oa/v1/messages/count_tokens"))
            .header("x-api-key", &ak)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "Hello there, how are you today?"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-keygate-estimated"], "true");
        let v: Value = r.json().await.unwrap();
        assert!(v["input_tokens"].as_u64().unwrap() > 4, "{v}");

        let r = app
            .http
            .post(app.url("/llm/an/v1beta/models/m:countTokens"))
            .header("x-goog-api-key", &ak)
            .json(&json!({"contents": [{"role": "user", "parts": [{"text": "Hello there"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v["totalTokens"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(
            poly.mock.calls.lock().len(),
            before,
            "estimates never reach the upstream"
        );

        // Same format: the upstream counts.
        let _ = app
            .http
            .post(app.url("/llm/an/v1/messages/count_tokens"))
            .header("x-api-key", &ak)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(poly.mock.last().path, "/anthropic/v1/messages/count_tokens");
    }
);

both!(
    the_responses_setting_chooses_passthrough_or_translation_per_service,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/oa",
                Some(json!({"responses": "sometimes"})),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["detail"].as_str().unwrap().contains("passthrough"), "{v}");

        let (s, v) = app
            .admin(
                "PATCH",
                "/admin/services/oa",
                Some(json!({"responses": "translate"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["responses"], "translate");
        crate::harness::eventually(Duration::from_secs(5), || async {
            app.state.snapshot.load().services["oa"].responses
                == keygate::domain::ResponsesMode::Translate
        })
        .await;
        let r = call(&app, &ak, Client::Responses, "oa", false).await;
        assert_eq!(r.status(), 200);
        assert!(
            poly.mock
                .calls
                .lock()
                .iter()
                .all(|c| c.path != "/openai/v1/responses"),
            "translate never tries /responses"
        );
        assert_eq!(poly.mock.last().path, "/openai/v1/chat/completions");

        app.admin(
            "PATCH",
            "/admin/services/oa",
            Some(json!({"responses": "passthrough"})),
        )
        .await;
        crate::harness::eventually(Duration::from_secs(5), || async {
            app.state.snapshot.load().services["oa"].responses
                == keygate::domain::ResponsesMode::Passthrough
        })
        .await;
        let r = call(&app, &ak, Client::Responses, "oa", false).await;
        assert_eq!(
            r.status(),
            404,
            "passthrough shows the upstream's own answer"
        );
        assert_eq!(poly.mock.last().path, "/openai/v1/responses");
    }
);

both!(
    a_wrong_model_on_the_responses_api_does_not_switch_the_service_to_translation,
    |b: Backend| async move {
        let (app, poly, ak) = setup(b).await;
        let r = app
            .http
            .post(app.url("/llm/oa/v1/responses"))
            .bearer_auth(&ak)
            .json(&json!({"model": "missing-model", "input": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["error"]["code"], "model_not_found",
            "the upstream's own answer"
        );
        assert_eq!(poly.mock.last().path, "/openai/v1/responses", "not retried");
        // The next call still tries the upstream's /responses first.
        let before = poly.mock.calls.lock().len();
        let r = call(&app, &ak, Client::Responses, "oa", false).await;
        assert_eq!(r.status(), 200);
        let calls = poly.mock.calls.lock();
        assert_eq!(calls[before].path, "/openai/v1/responses");
        assert_eq!(calls.last().unwrap().path, "/openai/v1/chat/completions");
    }
);

both!(
    a_whole_answer_that_cannot_be_translated_is_a_502_in_the_clients_format,
    |b: Backend| async move {
        let (app, _poly, ak) = setup(b).await;
        let r = app
            .http
            .post(app.url("/llm/an/v1/chat/completions"))
            .bearer_auth(&ak)
            .json(
                &json!({"model": "garbled-model", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "not a 200 carrying an error");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("could not be translated"),
            "{v}"
        );
    }
);
