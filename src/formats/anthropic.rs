//! Anthropic Messages wire format: `/v1/messages`, `/v1/messages/count_tokens`, `/v1/models`.
//!
//! Translation to and from the canonical model (`super::canonical`), as the client's format and as
//! the upstream's. Same-format traffic never comes here (it passes through byte for byte), so what
//! the canonical model has no room for is only lost between different formats:
//! - `cache_control` marks (system, messages, tools) are dropped: other formats have no such
//!   marks, and prompt caching there is automatic;
//! - citations on text blocks are dropped, the text is kept;
//! - content blocks other formats cannot carry (`document`, `search_result`, server tool blocks)
//!   and server tools (`web_search_*`, `bash_*`, ...) are refused as a bad request when an
//!   Anthropic client's request must be translated;
//! - JSON mode: `ResponseFormat::JsonSchema` becomes structured outputs
//!   (`output_config.format = {type: json_schema, schema}`), which newer Claude models accept;
//!   `ResponseFormat::JsonObject` (JSON without a schema) has no Anthropic equivalent and is
//!   refused with `Unsupported` rather than emulated with a forced tool, whose answer would come
//!   back as a tool call instead of text;
//! - a redacted thinking block is a `Part::Thinking` with empty text and the encrypted `data` as
//!   its signature (and back).
use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::canonical::{
    BadRequest, ChatRequest, ChatResponse, FinishReason, Image, Message, Part, ResponseFormat,
    Role, StreamDecoder, StreamEncoder, StreamEvent, Tool, ToolChoice, Unsupported,
};
use super::{Endpoint, count};
use crate::events::Tokens;
use crate::proxy::error::ErrorKind;

pub const DEFAULT_AUTH: (&str, &str) = ("x-api-key", "{key}");
/// Sent upstream when the client did not say which API version it speaks.
pub const DEFAULT_VERSION: &str = "2023-06-01";

pub fn recognise(path: &str) -> Option<Endpoint> {
    let p = path.strip_prefix("v1/").unwrap_or(path);
    Some(match p {
        "messages" => Endpoint::Messages,
        "messages/count_tokens" => Endpoint::CountTokens,
        _ => return None,
    })
}

/// Anthropic's `error.type` for a gateway error.
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadAccessKey => "authentication_error",
        ErrorKind::SlugNotAllowed => "permission_error",
        ErrorKind::UnknownSlug | ErrorKind::ModelNotAllowed => "not_found_error",
        ErrorKind::BodyTooLarge => "request_too_large",
        ErrorKind::BadRequest | ErrorKind::ClientTimeout => "invalid_request_error",
        ErrorKind::RateLimited | ErrorKind::UpstreamRateLimited => "rate_limit_error",
        ErrorKind::BudgetExhausted => "billing_error",
        ErrorKind::NoUsableKey => "overloaded_error",
        ErrorKind::UpstreamFailed
        | ErrorKind::UpstreamTimeout
        | ErrorKind::LoopDetected
        | ErrorKind::EgressRefused
        | ErrorKind::Internal => "api_error",
    }
}

pub fn error_body(kind: ErrorKind, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(kind), "message": message}})
}

pub fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    Bytes::from(format!("event: error\ndata: {v}\n\n"))
}

/// Anthropic answers a prepaid account without credit with a 400 that names the balance.
pub fn quota_exhausted(_status: u16, body: &str) -> bool {
    body.contains("credit balance is too low")
}

/// `usage` of a message (also inside `message_start`). `input_tokens` excludes cache reads and
/// writes here, while keygate's `prompt` includes them, as OpenAI's does.
pub fn usage(v: &Value) -> Option<Tokens> {
    let u = [&v["usage"], &v["message"]["usage"]]
        .into_iter()
        .find(|u| u.is_object())?;
    if !(u["input_tokens"].is_u64() || u["output_tokens"].is_u64()) {
        return None;
    }
    let (read, write) = (
        count(&u["cache_read_input_tokens"]),
        count(&u["cache_creation_input_tokens"]),
    );
    let input = count(&u["input_tokens"]);
    Some(Tokens {
        // A delta that only reports output leaves the prompt to `message_start`.
        prompt: if input + read + write == 0 {
            0
        } else {
            input + read + write
        },
        completion: count(&u["output_tokens"]),
        cache_read: read,
        cache_write: write,
    })
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Anthropic requires `max_tokens`; other formats do not. When the client gave none, ask for the
/// model's full output budget (what the client got by omitting it elsewhere), from this table of
/// Claude families, matched anywhere in the name so that Bedrock and Vertex spellings
/// (`anthropic.claude-sonnet-4-...`, `claude-sonnet-4@2025...`) match too. Unknown models get
/// 4096, which every Claude model accepts.
pub fn default_max_tokens(model: &str) -> u64 {
    // Most specific first: `claude-opus-4-5` before `claude-opus-4`.
    const TABLE: &[(&str, u64)] = &[
        ("claude-opus-4-5", 64_000),
        ("claude-opus-4", 32_000),
        ("claude-sonnet-4", 64_000),
        ("claude-haiku-4", 64_000),
        ("claude-3-7-sonnet", 64_000),
        ("claude-3-5-sonnet", 8_192),
        ("claude-3-5-haiku", 8_192),
    ];
    let model = model.to_ascii_lowercase();
    TABLE
        .iter()
        .find(|(family, _)| model.contains(family))
        .map_or(4_096, |(_, n)| *n)
}

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

fn opt_u64(v: Option<Value>, field: &str) -> Result<Option<u64>, BadRequest> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{field}` must be a non-negative integer"))),
    }
}

fn opt_f64(v: Option<Value>, field: &str) -> Result<Option<f64>, BadRequest> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{field}` must be a number"))),
    }
}

fn str_field(v: &Value, field: &str, what: &str) -> Result<String, BadRequest> {
    v[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("{what} needs a string `{field}`")))
}

/// An Anthropic client's request body. Fields keygate does not model go to `extra`.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, BadRequest> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(bad("the body must be a JSON object"));
    };
    let model = match obj.remove("model") {
        Some(Value::String(m)) => m,
        _ => return Err(bad("`model` must be a string")),
    };
    let mut req = ChatRequest::new(model);
    if let Some(system) = obj.remove("system") {
        req.system = decode_system(&system)?;
    }
    let Some(Value::Array(messages)) = obj.remove("messages") else {
        return Err(bad("`messages` must be an array"));
    };
    // Tool results name only the call's id; Gemini also needs the tool's name, which the
    // matching `tool_use` earlier in the conversation has.
    let mut names = HashMap::new();
    for m in &messages {
        req.messages.push(decode_message(m, &mut names)?);
    }
    req.max_tokens = opt_u64(obj.remove("max_tokens"), "max_tokens")?;
    req.temperature = opt_f64(obj.remove("temperature"), "temperature")?;
    req.top_p = opt_f64(obj.remove("top_p"), "top_p")?;
    req.top_k = opt_u64(obj.remove("top_k"), "top_k")?;
    match obj.remove("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(seqs)) => {
            for s in seqs {
                match s {
                    Value::String(s) => req.stop.push(s),
                    _ => return Err(bad("`stop_sequences` must hold strings")),
                }
            }
        }
        Some(_) => return Err(bad("`stop_sequences` must be an array")),
    }
    req.stream = match obj.remove("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(bad("`stream` must be a boolean")),
    };
    // An Anthropic stream always reports usage; ask other upstreams for it too.
    req.include_usage = req.stream;
    match obj.remove("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            for t in &tools {
                req.tools.push(decode_tool(t)?);
            }
        }
        Some(_) => return Err(bad("`tools` must be an array")),
    }
    if let Some(tc) = obj.remove("tool_choice").filter(|v| !v.is_null()) {
        let kind = tc["type"].as_str().unwrap_or_default();
        req.tool_choice = Some(match kind {
            "auto" => ToolChoice::Auto,
            "any" => ToolChoice::Required,
            "none" => ToolChoice::None,
            "tool" => ToolChoice::Tool(str_field(&tc, "name", "a `tool` tool_choice")?),
            _ => return Err(bad(format!("unknown tool_choice type `{kind}`"))),
        });
        if let Some(d) = tc["disable_parallel_tool_use"].as_bool() {
            req.parallel_tool_calls = Some(!d);
        }
    }
    if let Some(Value::Object(mut meta)) = obj.remove("metadata") {
        req.user = meta
            .remove("user_id")
            .and_then(|u| u.as_str().map(str::to_owned));
        if !meta.is_empty() {
            obj.insert("metadata".into(), Value::Object(meta));
        }
    }
    // Structured outputs: `output_config.format` (GA) or the beta's top-level `output_format`.
    // The rest of `output_config` (e.g. `effort`) stays in `extra`.
    let mut format = obj.remove("output_format");
    if let Some(Value::Object(cfg)) = obj.get_mut("output_config") {
        format = cfg.remove("format").or(format);
        if cfg.is_empty() {
            obj.remove("output_config");
        }
    }
    if let Some(f) = format.filter(|f| !f.is_null()) {
        if f["type"] != "json_schema" {
            return Err(bad(format!("unknown output format type {}", f["type"])));
        }
        req.response_format = Some(ResponseFormat::JsonSchema {
            // Anthropic's schemas have no name; OpenAI requires one.
            name: "response".into(),
            schema: f["schema"].clone(),
            strict: None,
        });
    }
    req.extra = obj;
    Ok(req)
}

fn decode_system(v: &Value) -> Result<Vec<Part>, BadRequest> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![Part::Text(s.clone())]),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b["type"].as_str() {
                Some("text") => Ok(Part::Text(str_field(b, "text", "a text block")?)),
                _ => Err(bad("`system` blocks must be text blocks")),
            })
            .collect(),
        _ => Err(bad("`system` must be a string or an array of text blocks")),
    }
}

fn decode_message(m: &Value, names: &mut HashMap<String, String>) -> Result<Message, BadRequest> {
    let role = match m["role"].as_str() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        other => return Err(bad(format!("unknown message role {other:?}"))),
    };
    let parts = match &m["content"] {
        Value::String(s) => vec![Part::Text(s.clone())],
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| decode_block(b, names))
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad(
                "message `content` must be a string or an array of blocks",
            ));
        }
    };
    Ok(Message { role, parts })
}

fn decode_block(b: &Value, names: &mut HashMap<String, String>) -> Result<Part, BadRequest> {
    let kind = b["type"].as_str().unwrap_or_default();
    Ok(match kind {
        "text" => Part::Text(str_field(b, "text", "a text block")?),
        "image" => Part::Image(decode_image(&b["source"])?),
        "tool_use" => {
            let (id, name) = (
                str_field(b, "id", "a tool_use block")?,
                str_field(b, "name", "a tool_use block")?,
            );
            names.insert(id.clone(), name.clone());
            let input = match &b["input"] {
                Value::Null => json!({}),
                v => v.clone(),
            };
            Part::ToolCall {
                id,
                name,
                arguments: input.to_string(),
            }
        }
        "tool_result" => {
            let id = str_field(b, "tool_use_id", "a tool_result block")?;
            let content = match &b["content"] {
                Value::Null => Vec::new(),
                Value::String(s) if s.is_empty() => Vec::new(),
                Value::String(s) => vec![Part::Text(s.clone())],
                Value::Array(blocks) => blocks
                    .iter()
                    .map(|c| match c["type"].as_str() {
                        Some("text") | Some("image") => decode_block(c, names),
                        other => Err(bad(format!(
                            "tool_result content of type {other:?} cannot be translated to \
                             another format"
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad("tool_result `content` must be a string or blocks")),
            };
            Part::ToolResult {
                name: names.get(&id).cloned(),
                id,
                content,
                is_error: b["is_error"].as_bool().unwrap_or(false),
            }
        }
        "thinking" => Part::Thinking {
            text: str_field(b, "thinking", "a thinking block")?,
            signature: b["signature"].as_str().map(str::to_owned),
        },
        "redacted_thinking" => Part::Thinking {
            text: String::new(),
            signature: Some(str_field(b, "data", "a redacted_thinking block")?),
        },
        other => {
            return Err(bad(format!(
                "content blocks of type `{other}` cannot be translated to another format"
            )));
        }
    })
}

fn decode_image(src: &Value) -> Result<Image, BadRequest> {
    match src["type"].as_str() {
        Some("base64") => Ok(Image::Base64 {
            media_type: str_field(src, "media_type", "a base64 image source")?,
            data: str_field(src, "data", "a base64 image source")?,
        }),
        Some("url") => Ok(Image::Url(str_field(src, "url", "a url image source")?)),
        other => Err(bad(format!(
            "image sources of type {other:?} cannot be translated to another format"
        ))),
    }
}

fn decode_tool(t: &Value) -> Result<Tool, BadRequest> {
    // Client tools have no type or `custom`; typed server tools (web search, bash, computer use,
    // ...) run at Anthropic and have no meaning elsewhere.
    match t["type"].as_str() {
        None | Some("custom") => {}
        Some(other) => {
            return Err(bad(format!(
                "the server tool `{other}` cannot be translated to another format"
            )));
        }
    }
    Ok(Tool {
        name: str_field(t, "name", "a tool")?,
        description: t["description"].as_str().map(str::to_owned),
        parameters: t["input_schema"].clone(),
    })
}

/// Keys another format's client may leave in `extra` that ask for something Anthropic cannot do;
/// refused rather than dropped. Sampling hints without an Anthropic equivalent
/// (`presence_penalty`, `frequency_penalty`, `seed`, Gemini's `seed`/penalties) are dropped: they
/// tune an answer, they do not change what kind of answer comes back.
fn refuse_extra(extra: &Map<String, Value>) -> Result<(), Unsupported> {
    let refuse = |what: &str| {
        Err(Unsupported::new(format!(
            "{what} is not supported by Anthropic"
        )))
    };
    // Gemini clients' generation settings may sit at the top or inside `generationConfig`.
    let gen_cfg = extra.get("generationConfig");
    let get = |k: &str| {
        extra
            .get(k)
            .or_else(|| gen_cfg.and_then(|g| g.get(k)))
            .filter(|v| !v.is_null())
    };
    if get("n").or(get("candidateCount")).and_then(Value::as_u64) > Some(1) {
        return refuse("more than one choice per request (`n` > 1)");
    }
    if get("logprobs") == Some(&Value::Bool(true))
        || get("top_logprobs").is_some()
        || get("responseLogprobs") == Some(&Value::Bool(true))
    {
        return refuse("logprobs");
    }
    if get("logit_bias").is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty())) {
        return refuse("logit_bias");
    }
    if get("audio").is_some() {
        return refuse("audio output");
    }
    let modalities = get("modalities").or(get("responseModalities"));
    if let Some(Value::Array(ms)) = modalities
        && ms
            .iter()
            .any(|m| !m.as_str().is_some_and(|m| m.eq_ignore_ascii_case("text")))
    {
        return refuse("output modalities other than text");
    }
    if get("prediction").is_some() {
        return refuse("predicted outputs");
    }
    Ok(())
}

/// Anthropic-only request fields another format's client may have passed through (e.g. OpenAI
/// SDKs' `extra_body`); copied as they are. Nothing else from `extra` is copied: its names belong
/// to the client's format.
const EXTRA_COPIED: &[&str] = &["thinking", "output_config"];

/// The body for an Anthropic upstream.
pub fn encode_request(req: &ChatRequest) -> Result<Vec<u8>, Unsupported> {
    refuse_extra(&req.extra)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(req.model));
    body.insert(
        "max_tokens".into(),
        json!(
            req.max_tokens
                .unwrap_or_else(|| default_max_tokens(&req.model))
        ),
    );
    if !req.system.is_empty() {
        let mut blocks = Vec::new();
        for p in &req.system {
            match p {
                Part::Text(t) if t.is_empty() => {}
                Part::Text(t) => blocks.push(json!({"type": "text", "text": t})),
                _ => {
                    return Err(Unsupported::new(
                        "only text is supported by Anthropic in the system prompt",
                    ));
                }
            }
        }
        match blocks.len() {
            0 => {}
            1 => {
                body.insert("system".into(), blocks[0]["text"].clone());
            }
            _ => {
                body.insert("system".into(), Value::Array(blocks));
            }
        }
    }
    body.insert(
        "messages".into(),
        Value::Array(encode_messages(&req.messages)?),
    );
    if !req.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(req.stop));
    }
    for (k, v) in [("temperature", req.temperature), ("top_p", req.top_p)] {
        if let Some(v) = v {
            body.insert(k.into(), json!(v));
        }
    }
    if let Some(k) = req.top_k {
        body.insert("top_k".into(), json!(k));
    }
    if req.stream {
        body.insert("stream".into(), json!(true));
    }
    if let Some(u) = &req.user {
        body.insert("metadata".into(), json!({"user_id": u}));
    }
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                // Anthropic requires a schema; OpenAI functions may omit theirs.
                let schema = match &t.parameters {
                    Value::Object(m) if !m.is_empty() => t.parameters.clone(),
                    _ => json!({"type": "object", "properties": {}}),
                };
                let mut tool = json!({"name": t.name, "input_schema": schema});
                if let Some(d) = &t.description {
                    tool["description"] = json!(d);
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        let mut choice = match &req.tool_choice {
            None => None,
            Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
            Some(ToolChoice::None) => Some(json!({"type": "none"})),
            Some(ToolChoice::Required) => Some(json!({"type": "any"})),
            Some(ToolChoice::Tool(name)) => Some(json!({"type": "tool", "name": name})),
        };
        // Parallel calls are on by default; turning them off lives on the tool choice (which
        // `none` does not take: no calls, nothing to parallelise).
        if req.parallel_tool_calls == Some(false) && req.tool_choice != Some(ToolChoice::None) {
            choice.get_or_insert_with(|| json!({"type": "auto"}))["disable_parallel_tool_use"] =
                json!(true);
        }
        if let Some(c) = choice {
            body.insert("tool_choice".into(), c);
        }
    }
    for k in EXTRA_COPIED {
        if let Some(v) = req.extra.get(*k) {
            body.insert((*k).into(), v.clone());
        }
    }
    match &req.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            return Err(Unsupported::new(
                "JSON mode without a schema (response_format json_object) is not supported by \
                 Anthropic; send a json_schema response format",
            ));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            let cfg = body.entry("output_config").or_insert_with(|| json!({}));
            if !cfg.is_object() {
                *cfg = json!({});
            }
            cfg["format"] = json!({"type": "json_schema", "schema": schema});
        }
    }
    Ok(Value::Object(body).to_string().into_bytes())
}

/// Anthropic wants user and assistant turns to alternate, tool results first in their user turn
/// and no empty text blocks; OpenAI histories break all three (an assistant turn with `""` and
/// tool calls, one `tool` message per result, then perhaps a user message). Consecutive turns of
/// one role are merged, tool results moved to the front of theirs (keeping their order), and
/// empty text left out.
fn encode_messages(messages: &[Message]) -> Result<Vec<Value>, Unsupported> {
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in messages {
        let mut blocks = Vec::new();
        for p in &m.parts {
            if let Some(b) = encode_part(p)? {
                blocks.push(b);
            }
        }
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((role, prev)) if *role == m.role => prev.extend(blocks),
            _ => turns.push((m.role, blocks)),
        }
    }
    Ok(turns
        .into_iter()
        .map(|(role, mut blocks)| {
            // A stable sort: results keep their order, and so does everything else.
            blocks.sort_by_key(|b| b["type"] != "tool_result");
            let role = match role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            json!({"role": role, "content": blocks})
        })
        .collect())
}

fn encode_image(img: &Image) -> Value {
    let source = match img {
        Image::Base64 { media_type, data } => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        // A data URL is base64 in disguise; Anthropic only fetches real URLs.
        Image::Url(url) => match parse_data_url(url) {
            Some((media_type, data)) => {
                json!({"type": "base64", "media_type": media_type, "data": data})
            }
            None => json!({"type": "url", "url": url}),
        },
    };
    json!({"type": "image", "source": source})
}

fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// Tool call arguments are JSON text in the canonical model and an object here.
fn arguments_object(name: &str, id: &str, arguments: &str) -> Result<Value, Unsupported> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(Unsupported::new(format!(
            "the arguments of tool call `{name}` ({id}) are not a JSON object, which Anthropic \
             requires for tool_use input"
        ))),
    }
}

fn encode_part(p: &Part) -> Result<Option<Value>, Unsupported> {
    Ok(Some(match p {
        Part::Text(t) if t.is_empty() => return Ok(None),
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image(img) => encode_image(img),
        Part::ToolCall {
            id,
            name,
            arguments,
        } => json!({"type": "tool_use", "id": id, "name": name,
            "input": arguments_object(name, id, arguments)?}),
        Part::ToolResult {
            id,
            content,
            is_error,
            ..
        } => {
            let mut b = json!({"type": "tool_result", "tool_use_id": id});
            let mut blocks = Vec::new();
            for c in content {
                match c {
                    Part::Text(t) if t.is_empty() => {}
                    Part::Text(t) => blocks.push(json!({"type": "text", "text": t})),
                    Part::Image(img) => blocks.push(encode_image(img)),
                    _ => {
                        return Err(Unsupported::new(
                            "tool results other than text and images are not supported by \
                             Anthropic",
                        ));
                    }
                }
            }
            match blocks.as_slice() {
                [] => {}
                [one] if one["type"] == "text" => b["content"] = one["text"].clone(),
                _ => b["content"] = Value::Array(blocks),
            }
            if *is_error {
                b["is_error"] = json!(true);
            }
            b
        }
        Part::Thinking { text, signature } => match signature {
            Some(sig) if text.is_empty() => json!({"type": "redacted_thinking", "data": sig}),
            Some(sig) => json!({"type": "thinking", "thinking": text, "signature": sig}),
            // Anthropic refuses thinking it did not sign; the model does not need to see it.
            None => return Ok(None),
        },
    }))
}

// ---------------------------------------------------------------------------------------------
// Whole responses
// ---------------------------------------------------------------------------------------------

fn finish_of(stop_reason: &str) -> Option<FinishReason> {
    Some(match stop_reason {
        "end_turn" | "pause_turn" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "stop_sequence" => FinishReason::StopSequence,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => return None,
    })
}

fn stop_reason_of(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Anthropic's usage fields for canonical usage: `input_tokens` excludes cache reads and writes.
fn usage_json(t: &Tokens) -> Value {
    json!({
        "input_tokens": t.prompt.saturating_sub(t.cache_read + t.cache_write),
        "cache_creation_input_tokens": t.cache_write,
        "cache_read_input_tokens": t.cache_read,
        "output_tokens": t.completion,
    })
}

/// An Anthropic upstream's whole answer.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, BadRequest> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the upstream's answer is not valid JSON: {e}")))?;
    let mut parts = Vec::new();
    for b in v["content"].as_array().into_iter().flatten() {
        // Server tool blocks only answer server tools, which keygate never asks for.
        if let Some("text" | "tool_use" | "thinking" | "redacted_thinking" | "image") =
            b["type"].as_str()
        {
            parts.push(decode_block(b, &mut HashMap::new())?);
        }
    }
    Ok(ChatResponse {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        model: v["model"].as_str().unwrap_or_default().to_owned(),
        parts,
        finish: v["stop_reason"].as_str().and_then(finish_of),
        usage: usage(&v),
    })
}

fn response_block(p: &Part) -> Option<Value> {
    Some(match p {
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image(img) => encode_image(img),
        Part::ToolCall {
            id,
            name,
            arguments,
        } => {
            // The client expects an object. Arguments an upstream model left unparseable (cut
            // short by max tokens, say) are kept as their text rather than lost.
            let input = arguments_object(name, id, arguments)
                .unwrap_or_else(|_| Value::String(arguments.clone()));
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
        Part::Thinking { text, signature } => match signature {
            Some(sig) if text.is_empty() => json!({"type": "redacted_thinking", "data": sig}),
            sig => json!({"type": "thinking", "thinking": text,
                "signature": sig.as_deref().unwrap_or_default()}),
        },
        // Results are the client's to send, never part of an answer.
        Part::ToolResult { .. } => return None,
    })
}

/// A whole answer for an Anthropic client.
pub fn encode_response(resp: &ChatResponse) -> Vec<u8> {
    let content: Vec<Value> = resp.parts.iter().filter_map(response_block).collect();
    json!({
        "id": resp.id,
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": resp.finish.map(stop_reason_of),
        // The canonical model does not say which sequence matched.
        "stop_sequence": null,
        "usage": usage_json(&resp.usage.unwrap_or_default()),
    })
    .to_string()
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Block {
    Text,
    Thinking,
    /// A `tool_use` block and its canonical tool call index.
    Tool(usize),
    Other,
}

/// Reads an Anthropic upstream's stream.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    /// Anthropic block index → what the block is.
    blocks: HashMap<u64, Block>,
    tools: usize,
    usage: Option<Tokens>,
}

impl Decoder {
    fn start(&mut self, id: &str, model: &str, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: id.to_owned(),
                model: model.to_owned(),
            });
        }
    }

    /// `message_delta` usage is cumulative; in older API versions it carried only
    /// `output_tokens`, so input counts missing there are kept from `message_start`.
    fn merge_usage(&mut self, u: &Value) -> Option<Tokens> {
        if !u.is_object() {
            return None;
        }
        let mut t = self.usage.unwrap_or_default();
        let has = |k: &str| u[k].is_u64();
        if has("input_tokens")
            || has("cache_read_input_tokens")
            || has("cache_creation_input_tokens")
        {
            let before = (
                t.prompt.saturating_sub(t.cache_read + t.cache_write),
                t.cache_read,
                t.cache_write,
            );
            let pick = |k: &str, old: u64| if has(k) { count(&u[k]) } else { old };
            let input = pick("input_tokens", before.0);
            t.cache_read = pick("cache_read_input_tokens", before.1);
            t.cache_write = pick("cache_creation_input_tokens", before.2);
            t.prompt = input + t.cache_read + t.cache_write;
        }
        if has("output_tokens") {
            t.completion = count(&u["output_tokens"]);
        }
        self.usage = Some(t);
        Some(t)
    }
}

impl StreamDecoder for Decoder {
    fn event(&mut self, event: Option<&str>, data: &str, out: &mut Vec<StreamEvent>) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            out.push(StreamEvent::Error {
                message: format!("unreadable stream event from the upstream: {data}"),
            });
            return;
        };
        let kind = v["type"].as_str().or(event).unwrap_or_default();
        match kind {
            "message_start" => {
                let m = &v["message"];
                self.start(
                    m["id"].as_str().unwrap_or_default(),
                    m["model"].as_str().unwrap_or_default(),
                    out,
                );
                if let Some(t) = self.merge_usage(&m["usage"]) {
                    out.push(StreamEvent::Usage(t));
                }
            }
            "content_block_start" => {
                self.start("", "", out);
                let index = v["index"].as_u64().unwrap_or_default();
                let b = &v["content_block"];
                let block = match b["type"].as_str().unwrap_or_default() {
                    "text" => {
                        if let Some(t) = b["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(StreamEvent::TextDelta(t.to_owned()));
                        }
                        Block::Text
                    }
                    "thinking" => {
                        if let Some(t) = b["thinking"].as_str().filter(|t| !t.is_empty()) {
                            out.push(StreamEvent::ThinkingDelta(t.to_owned()));
                        }
                        Block::Thinking
                    }
                    "tool_use" => {
                        let i = self.tools;
                        self.tools += 1;
                        out.push(StreamEvent::ToolCallStart {
                            index: i,
                            id: b["id"].as_str().unwrap_or_default().to_owned(),
                            name: b["name"].as_str().unwrap_or_default().to_owned(),
                        });
                        // The input normally streams as fragments after an empty `{}`.
                        if b["input"].as_object().is_some_and(|m| !m.is_empty()) {
                            out.push(StreamEvent::ToolCallDelta {
                                index: i,
                                arguments: b["input"].to_string(),
                            });
                        }
                        Block::Tool(i)
                    }
                    // Redacted thinking and server tool blocks have nothing to stream.
                    _ => Block::Other,
                };
                self.blocks.insert(index, block);
            }
            "content_block_delta" => {
                let index = v["index"].as_u64().unwrap_or_default();
                let d = &v["delta"];
                let text = |k: &str| d[k].as_str().filter(|t| !t.is_empty()).map(str::to_owned);
                match (
                    d["type"].as_str().unwrap_or_default(),
                    self.blocks.get(&index),
                ) {
                    ("text_delta", _) => out.extend(text("text").map(StreamEvent::TextDelta)),
                    ("thinking_delta", _) => {
                        out.extend(text("thinking").map(StreamEvent::ThinkingDelta))
                    }
                    ("input_json_delta", Some(Block::Tool(i))) => {
                        out.extend(text("partial_json").map(|arguments| {
                            StreamEvent::ToolCallDelta {
                                index: *i,
                                arguments,
                            }
                        }))
                    }
                    // Signatures and citations have no canonical stream event.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(f) = v["delta"]["stop_reason"].as_str().and_then(finish_of) {
                    out.push(StreamEvent::Finish(f));
                }
                if let Some(t) = self.merge_usage(&v["usage"]) {
                    out.push(StreamEvent::Usage(t));
                }
            }
            "message_stop" => out.push(StreamEvent::End),
            "error" => out.push(StreamEvent::Error {
                message: error_message(data.as_bytes()).unwrap_or_else(|| data.to_owned()),
            }),
            // `ping`, `content_block_stop` and event types added later carry nothing canonical.
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    Text,
    Thinking,
    /// The tool call with this canonical index.
    Tool(usize),
}

/// Writes an Anthropic client's stream: message_start, content blocks opened and closed one at a
/// time, message_delta (stop reason and usage) and message_stop, whatever the upstream left out.
#[derive(Debug)]
pub struct Encoder {
    id: String,
    model: String,
    started: bool,
    done: bool,
    /// The open block and its index.
    open: Option<(Open, usize)>,
    next_block: usize,
    /// Canonical tool call index → block index.
    tools: HashMap<usize, usize>,
    finish: Option<FinishReason>,
    usage: Option<Tokens>,
}

fn sse_event(out: &mut Vec<u8>, v: &Value) {
    let kind = v["type"].as_str().unwrap_or_default();
    out.extend_from_slice(format!("event: {kind}\ndata: {v}\n\n").as_bytes());
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

impl Encoder {
    pub fn new(req: &ChatRequest) -> Self {
        Self {
            id: String::new(),
            model: req.model.clone(),
            started: false,
            done: false,
            open: None,
            next_block: 0,
            tools: HashMap::new(),
            finish: None,
            usage: None,
        }
    }

    fn ensure_started(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        if self.id.is_empty() {
            self.id = new_id("msg_");
        }
        let mut usage = usage_json(&self.usage.unwrap_or_default());
        if self.usage.is_none() {
            usage = json!({"input_tokens": 0, "output_tokens": 0});
        }
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage,
        });
        sse_event(out, &json!({"type": "message_start", "message": message}));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            sse_event(out, &json!({"type": "content_block_stop", "index": index}));
        }
    }

    /// Opens a block unless one of this kind is already open; returns its index.
    fn open(&mut self, kind: Open, block: impl FnOnce() -> Value, out: &mut Vec<u8>) -> usize {
        self.ensure_started(out);
        if let Some((open, index)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        let start =
            json!({"type": "content_block_start", "index": index, "content_block": block()});
        sse_event(out, &start);
        self.open = Some((kind, index));
        index
    }

    fn delta(out: &mut Vec<u8>, index: usize, delta: Value) {
        sse_event(
            out,
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn start_tool(&mut self, index: usize, id: &str, name: &str, out: &mut Vec<u8>) -> usize {
        let id = if id.is_empty() {
            new_id("toolu_")
        } else {
            id.to_owned()
        };
        // A new call always gets a new block, even right after another call.
        self.close(out);
        let block = self.open(
            Open::Tool(index),
            || json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
            out,
        );
        self.tools.insert(index, block);
        block
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.ensure_started(out);
        self.close(out);
        let stop = self.finish.unwrap_or(if self.tools.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        });
        let usage = match &self.usage {
            Some(t) => usage_json(t),
            None => json!({"output_tokens": 0}),
        };
        sse_event(
            out,
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason_of(stop), "stop_sequence": null},
                "usage": usage}),
        );
        sse_event(out, &json!({"type": "message_stop"}));
        self.done = true;
    }
}

impl StreamEncoder for Encoder {
    fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::Start { id, model } => {
                if !self.started {
                    if !id.is_empty() {
                        self.id.clone_from(id);
                    }
                    if !model.is_empty() {
                        self.model.clone_from(model);
                    }
                    self.ensure_started(out);
                }
            }
            StreamEvent::TextDelta(t) if !t.is_empty() => {
                let i = self.open(Open::Text, || json!({"type": "text", "text": ""}), out);
                Self::delta(out, i, json!({"type": "text_delta", "text": t}));
            }
            StreamEvent::ThinkingDelta(t) if !t.is_empty() => {
                let i = self.open(
                    Open::Thinking,
                    || json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
                Self::delta(out, i, json!({"type": "thinking_delta", "thinking": t}));
            }
            StreamEvent::TextDelta(_) | StreamEvent::ThinkingDelta(_) => {}
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start_tool(*index, id, name, out);
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if arguments.is_empty() {
                    return;
                }
                self.ensure_started(out);
                let block = match self.tools.get(index) {
                    Some(b) => *b,
                    None => self.start_tool(*index, "", "", out),
                };
                // Fragments of a call whose block was closed by a later one (interleaved
                // upstream calls) still name their own block: the SDKs accumulate by index.
                Self::delta(
                    out,
                    block,
                    json!({"type": "input_json_delta", "partial_json": arguments}),
                );
            }
            StreamEvent::Finish(f) => self.finish = Some(*f),
            StreamEvent::Usage(t) => self.usage = Some(*t),
            StreamEvent::Error { message } => {
                out.extend_from_slice(&stream_error_event(message));
                self.done = true;
            }
            StreamEvent::End => self.end(out),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Models and errors
// ---------------------------------------------------------------------------------------------

/// A model list for an Anthropic client. keygate knows only the ids: the display name is the id
/// and the creation date the epoch.
pub fn encode_models(ids: &[String]) -> Vec<u8> {
    let data: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"type": "model", "id": id, "display_name": id,
                "created_at": "1970-01-01T00:00:00Z"})
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": ids.first(),
        "last_id": ids.last(),
    })
    .to_string()
    .into_bytes()
}

/// Model ids of an Anthropic upstream's model list.
pub fn decode_models(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// The message of an Anthropic error answer (`{"type":"error","error":{"type","message"}}`).
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["error"]["message"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::sse::SseReader;

    const REQUEST: &str = include_str!("../../tests/fixtures/anthropic/request.json");
    const ENCODED_REQUEST: &str =
        include_str!("../../tests/fixtures/anthropic/encoded_request.json");
    const RESPONSE: &str = include_str!("../../tests/fixtures/anthropic/response.json");
    const STREAM: &str = include_str!("../../tests/fixtures/anthropic/stream.sse");
    const STREAM_ERROR: &str = include_str!("../../tests/fixtures/anthropic/stream_error.sse");
    const ENCODED_STREAM: &str = include_str!("../../tests/fixtures/anthropic/encoded_stream.sse");
    const MODELS: &str = include_str!("../../tests/fixtures/anthropic/models.json");
    const ERROR: &str = include_str!("../../tests/fixtures/anthropic/error.json");

    fn text(t: &str) -> Part {
        Part::Text(t.into())
    }

    fn user(parts: Vec<Part>) -> Message {
        Message {
            role: Role::User,
            parts,
        }
    }

    fn assistant(parts: Vec<Part>) -> Message {
        Message {
            role: Role::Assistant,
            parts,
        }
    }

    fn call(id: &str, name: &str, arguments: &str) -> Part {
        Part::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    fn encoded(req: &ChatRequest) -> Value {
        serde_json::from_slice(&encode_request(req).unwrap()).unwrap()
    }

    fn json_of(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn decode_stream(transcript: &str, size: usize) -> Vec<StreamEvent> {
        crate::formats::sse::decode_in_chunks(&mut Decoder::default(), transcript.as_bytes(), size)
    }

    fn encode_stream(events: &[StreamEvent]) -> Vec<u8> {
        let mut enc = Encoder::new(&ChatRequest::new("claude-from-request"));
        let mut out = Vec::new();
        for e in events {
            enc.encode(e, &mut out);
        }
        out
    }

    /// Parses an encoded stream back and checks Anthropic's grammar: `event:` names match the
    /// data's type; message_start first; blocks numbered from 0, opened and closed one at a time,
    /// deltas only inside their open block; message_delta once all are closed, message_stop last.
    fn check_stream(bytes: &[u8]) -> Vec<Value> {
        let mut events = Vec::new();
        let mut reader = SseReader::new();
        reader.feed(bytes, &mut events);
        reader.finish(&mut events);
        let values: Vec<Value> = events
            .iter()
            .map(|e| {
                let v = json_of(&e.data);
                assert_eq!(e.event.as_deref(), v["type"].as_str(), "event name of {v}");
                v
            })
            .collect();
        assert_eq!(values.first().unwrap()["type"], "message_start");
        let m = &values[0]["message"];
        for k in ["id", "model"] {
            assert!(m[k].as_str().is_some_and(|s| !s.is_empty()), "{k} in {m}");
        }
        assert_eq!(
            (&m["type"], &m["role"]),
            (&json!("message"), &json!("assistant"))
        );
        assert_eq!(m["content"], json!([]));
        assert!(m["usage"]["input_tokens"].is_u64());
        let (mut open, mut next) = (None::<u64>, 0);
        let mut after_delta = false;
        for v in &values[1..values.len() - 1] {
            assert!(!after_delta, "{v} after message_delta");
            let index = v["index"].as_u64();
            match v["type"].as_str().unwrap() {
                "content_block_start" => {
                    assert_eq!(open, None, "{v} while a block is open");
                    assert_eq!(index, Some(next));
                    open = index;
                    next += 1;
                }
                "content_block_delta" => assert_eq!(index, open, "{v} outside its block"),
                "content_block_stop" => assert_eq!(index, open.take(), "{v}"),
                "message_delta" => {
                    assert_eq!(open, None, "message_delta with an open block");
                    assert!(v["delta"]["stop_reason"].is_string());
                    assert!(v["usage"]["output_tokens"].is_u64());
                    after_delta = true;
                }
                other => panic!("unexpected event {other}"),
            }
        }
        assert!(after_delta, "no message_delta");
        assert_eq!(values.last().unwrap()["type"], "message_stop");
        values
    }

    /// A conversation as an OpenAI client sends it, already in canonical terms: two user turns
    /// in a row, an assistant turn with empty text and tool calls, one message per tool result.
    fn openai_shaped_request() -> ChatRequest {
        let mut r = ChatRequest::new("claude-sonnet-4-20250514");
        r.system = vec![text("Be brief."), text("Use tools.")];
        r.messages = vec![
            user(vec![
                text("Weather in Paris?"),
                Part::Image(Image::Url("data:image/png;base64,iVBORw0KGgo=".into())),
                Part::Image(Image::Url("https://example.com/cloud.jpg".into())),
            ]),
            user(vec![text("In celsius.")]),
            assistant(vec![
                Part::Thinking {
                    text: "Two calls.".into(),
                    signature: Some("sig1".into()),
                },
                Part::Thinking {
                    text: String::new(),
                    signature: Some("redacted1".into()),
                },
                Part::Thinking {
                    text: "unsigned thoughts".into(),
                    signature: None,
                },
                text(""),
                call("call_1", "get_weather", r#"{"city":"Paris"}"#),
                call("call_2", "get_time", ""),
            ]),
            user(vec![text("Here you go:")]),
            user(vec![Part::ToolResult {
                id: "call_1".into(),
                name: None,
                content: vec![text("18°C")],
                is_error: false,
            }]),
            user(vec![Part::ToolResult {
                id: "call_2".into(),
                name: Some("get_time".into()),
                content: vec![
                    text("no clock"),
                    Part::Image(Image::Base64 {
                        media_type: "image/jpeg".into(),
                        data: "/9j/4AAQ".into(),
                    }),
                ],
                is_error: true,
            }]),
            assistant(vec![text("Paris: 18°C.")]),
            assistant(vec![text("")]),
            user(vec![text("Tomorrow?")]),
        ];
        r.stop = vec!["END".into()];
        r.temperature = Some(0.2);
        r.top_p = Some(0.8);
        r.stream = true;
        r.include_usage = true;
        r.user = Some("u-7".into());
        r.tools = vec![
            Tool {
                name: "get_weather".into(),
                description: Some("Current weather".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]}),
            },
            Tool {
                name: "get_time".into(),
                description: None,
                parameters: Value::Null,
            },
        ];
        r.tool_choice = Some(ToolChoice::Required);
        r.parallel_tool_calls = Some(false);
        r.response_format = Some(ResponseFormat::JsonSchema {
            name: "weather".into(),
            schema: json!({"type": "object", "properties": {"summary": {"type": "string"}},
                "required": ["summary"], "additionalProperties": false}),
            strict: Some(true),
        });
        // OpenAI sampling hints Anthropic has no use for: dropped, not refused.
        r.extra.insert("seed".into(), json!(7));
        r.extra.insert("presence_penalty".into(), json!(0.5));
        r
    }

    #[test]
    fn an_anthropic_request_decodes_to_the_canonical_request() {
        let r = decode_request(REQUEST.as_bytes()).unwrap();
        assert_eq!(r.model, "claude-sonnet-4-5-20250929");
        assert_eq!(
            r.system,
            vec![
                text("You are a weather assistant."),
                text("Answer in one sentence.")
            ]
        );
        assert_eq!(r.messages.len(), 5);
        assert_eq!(
            r.messages[0].parts[1..],
            [
                Part::Image(Image::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo=".into()
                }),
                Part::Image(Image::Url("https://example.com/cloud.jpg".into())),
            ]
        );
        let a = &r.messages[1];
        assert_eq!(a.role, Role::Assistant);
        assert_eq!(
            a.parts[..2],
            [
                Part::Thinking {
                    text: "Two cities: call the tool twice.".into(),
                    signature: Some("EqQBCkYIBxgCKkD".into())
                },
                Part::Thinking {
                    text: String::new(),
                    signature: Some("EmwKAhgBEgy3va3pzix".into())
                },
            ]
        );
        let Part::ToolCall {
            id,
            name,
            arguments,
        } = &a.parts[3]
        else {
            panic!("{:?}", a.parts[3]);
        };
        assert_eq!((id.as_str(), name.as_str()), ("toolu_01A", "get_weather"));
        assert_eq!(
            json_of(arguments),
            json!({"city": "Paris", "unit": "celsius"})
        );
        assert_eq!(
            r.messages[2].parts,
            vec![
                Part::ToolResult {
                    id: "toolu_01A".into(),
                    name: Some("get_weather".into()),
                    content: vec![text("18°C, sunny")],
                    is_error: false
                },
                Part::ToolResult {
                    id: "toolu_01B".into(),
                    name: Some("get_weather".into()),
                    content: vec![text("station offline")],
                    is_error: true
                },
                text("Thanks!"),
            ]
        );
        assert_eq!(r.messages[4], user(vec![text("And tomorrow?")]));
        assert_eq!(r.stop, vec!["\n\nHuman:".to_string()]);
        assert_eq!(
            (r.max_tokens, r.temperature, r.top_p, r.top_k),
            (Some(1024), Some(0.5), Some(0.9), Some(40))
        );
        assert_eq!(r.user.as_deref(), Some("user-42"));
        assert!(r.stream && r.include_usage);
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.tools[0].name, "get_weather");
        assert_eq!(r.tools[0].parameters["required"], json!(["city"]));
        assert_eq!(r.tool_choice, Some(ToolChoice::Auto));
        assert_eq!(r.parallel_tool_calls, Some(false));
        assert_eq!(r.response_format, None);
        // Only what keygate does not model is left over.
        assert_eq!(Value::Object(r.extra), json!({"service_tier": "auto"}));
    }

    #[test]
    fn decoding_what_encode_request_wrote_gives_back_the_same_canonical_request() {
        let mut r = decode_request(REQUEST.as_bytes()).unwrap();
        r.extra.clear();
        let again = decode_request(&encode_request(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn an_openai_shaped_conversation_encodes_to_alternating_anthropic_turns() {
        assert_eq!(encoded(&openai_shaped_request()), json_of(ENCODED_REQUEST));
    }

    #[test]
    fn max_tokens_defaults_to_the_model_family_output_budget() {
        for (model, n) in [
            ("claude-sonnet-4-20250514", 64_000),
            ("claude-sonnet-4-5", 64_000),
            ("anthropic.claude-3-7-sonnet-20250219-v1:0", 64_000),
            ("claude-opus-4-1-20250805", 32_000),
            ("claude-opus-4@20250514", 32_000),
            ("claude-opus-4-5-20251101", 64_000),
            ("claude-haiku-4-5", 64_000),
            ("claude-3-5-sonnet-latest", 8_192),
            ("claude-3-5-haiku-20241022", 8_192),
            ("claude-3-haiku-20240307", 4_096),
            ("some-other-model", 4_096),
        ] {
            assert_eq!(default_max_tokens(model), n, "{model}");
        }
        let mut r = ChatRequest::new("claude-3-5-haiku-latest");
        assert_eq!(encoded(&r)["max_tokens"], 8_192);
        r.max_tokens = Some(10);
        assert_eq!(encoded(&r)["max_tokens"], 10);
    }

    #[test]
    fn tool_call_arguments_that_are_not_a_json_object_are_refused_naming_the_call() {
        let mut r = ChatRequest::new("claude-sonnet-4");
        r.messages = vec![assistant(vec![call("call_9", "lookup", "{\"q\": ")])];
        let err = encode_request(&r).unwrap_err();
        assert!(err.0.contains("`lookup` (call_9)"), "{err}");
        r.messages = vec![assistant(vec![call("call_9", "lookup", "[1]")])];
        assert!(encode_request(&r).is_err());
    }

    #[test]
    fn features_anthropic_lacks_are_refused_by_name() {
        let mut r = ChatRequest::new("claude-sonnet-4");
        r.response_format = Some(ResponseFormat::JsonObject);
        assert!(encode_request(&r).unwrap_err().0.contains("json_object"));
        r.response_format = Some(ResponseFormat::Text);
        assert!(encode_request(&r).is_ok());
        for (k, v, what) in [
            ("n", json!(2), "`n` > 1"),
            ("logprobs", json!(true), "logprobs"),
            ("top_logprobs", json!(3), "logprobs"),
            ("logit_bias", json!({"50256": -100}), "logit_bias"),
            ("audio", json!({"voice": "alloy"}), "audio"),
            ("modalities", json!(["text", "audio"]), "modalities"),
            ("generationConfig", json!({"candidateCount": 2}), "`n` > 1"),
        ] {
            let mut r = r.clone();
            r.extra.insert(k.into(), v);
            let err = encode_request(&r).unwrap_err();
            assert!(
                err.0.contains(what) && err.0.contains("Anthropic"),
                "{k}: {err}"
            );
        }
        // What merely restates a default is not refused.
        r.extra.insert("n".into(), json!(1));
        r.extra.insert("logprobs".into(), json!(false));
        r.extra.insert("modalities".into(), json!(["text"]));
        assert!(encode_request(&r).is_ok());
        let mut r = ChatRequest::new("claude-sonnet-4");
        r.system = vec![Part::Image(Image::Url("https://x/y.png".into()))];
        assert!(encode_request(&r).unwrap_err().0.contains("system"));
    }

    #[test]
    fn anthropic_only_fields_a_client_passed_through_are_copied() {
        let mut r = ChatRequest::new("claude-sonnet-4");
        let thinking = json!({"type": "enabled", "budget_tokens": 2048});
        r.extra.insert("thinking".into(), thinking.clone());
        r.extra
            .insert("output_config".into(), json!({"effort": "low"}));
        r.extra
            .insert("stream_options".into(), json!({"include_usage": true}));
        r.response_format = Some(ResponseFormat::JsonSchema {
            name: "x".into(),
            schema: json!({"type": "object"}),
            strict: None,
        });
        let v = encoded(&r);
        assert_eq!(v["thinking"], thinking);
        assert_eq!(
            v["output_config"],
            json!({"effort": "low", "format": {"type": "json_schema", "schema": {"type": "object"}}})
        );
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn tool_choices_translate_both_ways() {
        let tool = Tool {
            name: "f".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
        };
        for (choice, parallel, wire) in [
            (Some(ToolChoice::Auto), None, json!({"type": "auto"})),
            (Some(ToolChoice::None), Some(false), json!({"type": "none"})),
            (Some(ToolChoice::Required), None, json!({"type": "any"})),
            (
                Some(ToolChoice::Tool("f".into())),
                Some(false),
                json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true}),
            ),
            (
                None,
                Some(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
        ] {
            let mut r = ChatRequest::new("claude-sonnet-4");
            r.tools = vec![tool.clone()];
            r.tool_choice = choice.clone();
            r.parallel_tool_calls = parallel;
            let v = encoded(&r);
            assert_eq!(v["tool_choice"], wire);
            let back = decode_request(v.to_string().as_bytes()).unwrap();
            assert_eq!(back.tool_choice, choice.or(Some(ToolChoice::Auto)));
            assert_eq!(back.tools, vec![tool.clone()]);
        }
        // Without tools there is nothing to choose from; Anthropic refuses a lone tool_choice.
        let mut r = ChatRequest::new("claude-sonnet-4");
        r.tool_choice = Some(ToolChoice::None);
        assert!(encoded(&r).get("tool_choice").is_none());
    }

    #[test]
    fn structured_output_requests_become_a_json_schema_response_format() {
        for body in [
            json!({"model": "m", "messages": [], "output_config": {"format": {"type": "json_schema",
                "schema": {"type": "object"}}}}),
            json!({"model": "m", "messages": [], "output_format": {"type": "json_schema",
                "schema": {"type": "object"}}}),
        ] {
            let r = decode_request(body.to_string().as_bytes()).unwrap();
            assert_eq!(
                r.response_format,
                Some(ResponseFormat::JsonSchema {
                    name: "response".into(),
                    schema: json!({"type": "object"}),
                    strict: None
                })
            );
            assert!(r.extra.is_empty(), "{:?}", r.extra);
        }
    }

    #[test]
    fn what_other_formats_cannot_carry_is_refused_when_decoding_a_client_request() {
        for (body, what) in [
            (
                json!({"model": "m", "messages": [], "tools": [{"type": "web_search_20250305",
                    "name": "web_search"}]}),
                "web_search_20250305",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}]}]}),
                "document",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image",
                    "source": {"type": "file", "file_id": "file_1"}}]}]}),
                "file",
            ),
            (json!({"model": "m", "messages": "hi"}), "messages"),
            (json!({"messages": []}), "model"),
        ] {
            let err = decode_request(body.to_string().as_bytes()).unwrap_err();
            assert!(err.0.contains(what), "{err}");
        }
    }

    #[test]
    fn an_anthropic_answer_decodes_to_the_canonical_response() {
        let r = decode_response(RESPONSE.as_bytes()).unwrap();
        assert_eq!(r.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
        assert_eq!(r.model, "claude-sonnet-4-5-20250929");
        assert_eq!(r.finish, Some(FinishReason::ToolCalls));
        assert_eq!(
            r.usage,
            Some(Tokens {
                prompt: 412 + 2048 + 100,
                completion: 96,
                cache_read: 2048,
                cache_write: 100
            })
        );
        assert_eq!(
            r.parts[..2],
            [
                Part::Thinking {
                    text: "Two cities, two calls.".into(),
                    signature: Some("EqQBCkYIBxgCKkD".into())
                },
                text("Let me check both cities (°C)."),
            ]
        );
        assert_eq!(r.parts.len(), 4);
    }

    #[test]
    fn a_canonical_response_encodes_back_to_the_same_anthropic_answer() {
        let r = decode_response(RESPONSE.as_bytes()).unwrap();
        let mut want = json_of(RESPONSE);
        // keygate does not model the service tier.
        want["usage"]
            .as_object_mut()
            .unwrap()
            .remove("service_tier");
        assert_eq!(
            serde_json::from_slice::<Value>(&encode_response(&r)).unwrap(),
            want
        );
    }

    #[test]
    fn answers_from_other_formats_encode_with_anthropic_stop_reasons_and_usage() {
        let resp = ChatResponse {
            id: "chatcmpl-1".into(),
            model: "gpt-4o".into(),
            parts: vec![
                text("cut"),
                call("call_1", "f", ""),
                call("call_2", "f", "{\"a\": 1, \"b\":"),
            ],
            finish: Some(FinishReason::Length),
            usage: Some(Tokens {
                prompt: 100,
                completion: 7,
                cache_read: 64,
                cache_write: 0,
            }),
        };
        let v: Value = serde_json::from_slice(&encode_response(&resp)).unwrap();
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 36, "cache_read_input_tokens": 64,
                "cache_creation_input_tokens": 0, "output_tokens": 7})
        );
        assert_eq!(v["content"][1]["input"], json!({}));
        // Arguments cut short stay readable instead of vanishing.
        assert_eq!(v["content"][2]["input"], "{\"a\": 1, \"b\":");
        for (f, s) in [
            (FinishReason::Stop, "end_turn"),
            (FinishReason::Length, "max_tokens"),
            (FinishReason::StopSequence, "stop_sequence"),
            (FinishReason::ToolCalls, "tool_use"),
            (FinishReason::ContentFilter, "refusal"),
        ] {
            assert_eq!(stop_reason_of(f), s);
            assert_eq!(finish_of(s), Some(f));
        }
    }

    fn recorded_stream_events() -> Vec<StreamEvent> {
        let usage = |completion| Tokens {
            prompt: 2560,
            completion,
            cache_read: 2048,
            cache_write: 100,
        };
        let delta = |index, a: &str| StreamEvent::ToolCallDelta {
            index,
            arguments: a.into(),
        };
        vec![
            StreamEvent::Start {
                id: "msg_01XFDUDYJgAACzvnptvVoYEL".into(),
                model: "claude-sonnet-4-5-20250929".into(),
            },
            StreamEvent::Usage(usage(1)),
            StreamEvent::ThinkingDelta("Two cities, ".into()),
            StreamEvent::ThinkingDelta("two calls.".into()),
            StreamEvent::TextDelta("Let me check ".into()),
            StreamEvent::TextDelta("both cities (°C).".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_01A".into(),
                name: "get_weather".into(),
            },
            delta(0, "{\"city\": \"Par"),
            delta(0, "is\", \"unit\": \"celsius\"}"),
            StreamEvent::ToolCallStart {
                index: 1,
                id: "toolu_01B".into(),
                name: "get_weather".into(),
            },
            delta(1, "{\"city\": \"Lyon\", "),
            delta(1, "\"unit\": \"celsius\"}"),
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(usage(96)),
            StreamEvent::End,
        ]
    }

    #[test]
    fn the_recorded_stream_decodes_to_canonical_events_however_it_is_chunked() {
        // 1 and 7 split lines, JSON and the two-byte `°` anywhere.
        for size in [1, 7, 64, STREAM.len()] {
            assert_eq!(
                decode_stream(STREAM, size),
                recorded_stream_events(),
                "{size}"
            );
        }
    }

    #[test]
    fn streamed_tool_arguments_concatenate_to_the_non_streamed_input() {
        let mut args = [String::new(), String::new()];
        for e in decode_stream(STREAM, 5) {
            if let StreamEvent::ToolCallDelta { index, arguments } = e {
                args[index].push_str(&arguments);
            }
        }
        let whole = decode_response(RESPONSE.as_bytes()).unwrap();
        let calls: Vec<&String> = whole
            .parts
            .iter()
            .filter_map(|p| match p {
                Part::ToolCall { arguments, .. } => Some(arguments),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 2);
        for (streamed, whole) in args.iter().zip(calls) {
            assert_eq!(json_of(streamed), json_of(whole));
        }
    }

    #[test]
    fn an_in_stream_error_decodes_to_an_error_event() {
        let ev = decode_stream(STREAM_ERROR, 3);
        assert_eq!(
            ev,
            vec![
                StreamEvent::Start {
                    id: "msg_02".into(),
                    model: "claude-haiku-4-5".into()
                },
                StreamEvent::Usage(Tokens {
                    prompt: 9,
                    completion: 1,
                    cache_read: 0,
                    cache_write: 0
                }),
                StreamEvent::TextDelta("Hel".into()),
                StreamEvent::Error {
                    message: "Overloaded".into()
                },
            ]
        );
    }

    #[test]
    fn a_message_delta_with_full_usage_replaces_the_start_counts() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.event(
            None,
            r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":5,"output_tokens":1}}}"#,
            &mut out,
        );
        d.event(
            None,
            r#"{"type":"message_delta","delta":{"stop_reason":"stop_sequence"},"usage":{"input_tokens":5,"cache_read_input_tokens":10,"output_tokens":3}}"#,
            &mut out,
        );
        assert_eq!(
            out[2..],
            [
                StreamEvent::Finish(FinishReason::StopSequence),
                StreamEvent::Usage(Tokens {
                    prompt: 15,
                    completion: 3,
                    cache_read: 10,
                    cache_write: 0
                })
            ]
        );
    }

    /// What an OpenAI upstream's decoder gives: no thinking, an empty text delta, usage only at
    /// the end, tool calls right after text.
    fn sparse_events() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: "chatcmpl-9".into(),
                model: "gpt-4o".into(),
            },
            StreamEvent::TextDelta(String::new()),
            StreamEvent::TextDelta("Checking".into()),
            StreamEvent::TextDelta("…".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"city\":".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "\"Paris\"}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_2".into(),
                name: "get_time".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Tokens {
                prompt: 50,
                completion: 20,
                cache_read: 10,
                cache_write: 0,
            }),
            StreamEvent::End,
        ]
    }

    #[test]
    fn sparse_canonical_events_encode_to_a_complete_anthropic_stream() {
        let out = encode_stream(&sparse_events());
        let got = check_stream(&out);
        let mut want = Vec::new();
        let mut reader = SseReader::new();
        reader.feed(ENCODED_STREAM.as_bytes(), &mut want);
        reader.finish(&mut want);
        let want: Vec<Value> = want.iter().map(|e| json_of(&e.data)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_recorded_stream_survives_decoding_and_encoding_again() {
        let out = encode_stream(&recorded_stream_events());
        check_stream(&out);
        let text = String::from_utf8(out).unwrap();
        let mut again = decode_stream(&text, 11);
        // keygate's message_start has no usage yet; the one after it reports it.
        assert_eq!(again.remove(1), StreamEvent::Usage(Tokens::default()));
        let mut want = recorded_stream_events();
        want.remove(1);
        assert_eq!(again, want);
    }

    #[test]
    fn a_stream_with_only_an_end_is_still_a_whole_message() {
        let mut enc = Encoder::new(&ChatRequest::new("claude-x"));
        let mut out = Vec::new();
        enc.encode(&StreamEvent::End, &mut out);
        let v = check_stream(&out);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0]["message"]["model"], "claude-x");
        assert!(v[0]["message"]["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(v[1]["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn a_fragment_of_a_call_that_never_started_gets_its_own_tool_block() {
        let out = encode_stream(&[
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{}".into(),
            },
            StreamEvent::End,
        ]);
        let v = check_stream(&out);
        let block = &v[1]["content_block"];
        assert_eq!(block["type"], "tool_use");
        assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(v[2]["delta"]["partial_json"], "{}");
        assert_eq!(v[4]["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn thinking_then_text_are_two_blocks() {
        let out = encode_stream(&[
            StreamEvent::Start {
                id: "g1".into(),
                model: "gemini-2.5-pro".into(),
            },
            StreamEvent::ThinkingDelta("hmm".into()),
            StreamEvent::TextDelta("yes".into()),
            StreamEvent::Finish(FinishReason::Stop),
            StreamEvent::End,
        ]);
        let v = check_stream(&out);
        let starts: Vec<&Value> = v
            .iter()
            .filter(|e| e["type"] == "content_block_start")
            .map(|e| &e["content_block"]["type"])
            .collect();
        assert_eq!(starts, [&json!("thinking"), &json!("text")]);
        assert_eq!(
            v[2]["delta"],
            json!({"type": "thinking_delta", "thinking": "hmm"})
        );
    }

    #[test]
    fn an_error_becomes_an_anthropic_error_event_and_ends_the_stream() {
        let out = encode_stream(&[
            StreamEvent::Start {
                id: "x".into(),
                model: "m".into(),
            },
            StreamEvent::TextDelta("partial".into()),
            StreamEvent::Error {
                message: "upstream broke".into(),
            },
            StreamEvent::TextDelta("ignored".into()),
            StreamEvent::End,
        ]);
        let text = String::from_utf8(out).unwrap();
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        let data = last.strip_prefix("event: error\ndata: ").unwrap();
        assert_eq!(
            json_of(data),
            json!({"type": "error", "error": {"type": "api_error", "message": "upstream broke"}})
        );
        assert!(!text.contains("ignored") && !text.contains("message_stop"));
    }

    #[test]
    fn model_lists_and_errors_read_and_write_the_anthropic_shapes() {
        let ids = decode_models(MODELS.as_bytes());
        assert_eq!(
            ids,
            ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"]
        );
        let v: Value = serde_json::from_slice(&encode_models(&ids)).unwrap();
        assert_eq!(v["data"][1]["type"], "model");
        assert_eq!(v["data"][1]["display_name"], "claude-haiku-4-5-20251001");
        assert_eq!(
            (&v["first_id"], &v["last_id"], &v["has_more"]),
            (&json!(ids[0]), &json!(ids[1]), &json!(false))
        );
        assert_eq!(decode_models(&encode_models(&ids)), ids);
        assert_eq!(
            error_message(ERROR.as_bytes()).as_deref(),
            Some("max_tokens: Field required")
        );
        assert_eq!(error_message(b"<html>"), None);
    }

    #[test]
    fn usage_adds_cache_tokens_to_the_prompt() {
        let v = json!({"type": "message_start", "message": {"usage": {"input_tokens": 10,
            "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 50, "output_tokens": 1}}});
        assert_eq!(
            usage(&v),
            Some(Tokens {
                prompt: 1060,
                completion: 1,
                cache_read: 1000,
                cache_write: 50
            })
        );
    }

    #[test]
    fn errors_have_the_anthropic_shape() {
        let v = error_body(ErrorKind::BadAccessKey, "m");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        let ev = stream_error_event("broke");
        assert!(ev.starts_with(b"event: error\ndata: "));
    }
}
