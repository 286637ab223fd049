//! OpenAI (and OpenAI-compatible) wire format: `/v1/chat/completions`, `/v1/responses`,
//! `/v1/embeddings`, `/v1/models`.
//!
//! This file also translates chat completions to and from the canonical model (client side:
//! `decode_request`, `encode_response`, `Encoder`, `encode_models`; upstream side:
//! `encode_request`, `decode_response`, `Decoder`, `error_message`, `decode_models`). The
//! Responses API lives in `openai_responses`.
//!
//! Mapping notes (what is not one-to-one):
//! - `system` and `developer` messages all become canonical system parts, in order; their position
//!   among the other messages is not kept. They go out as one `system` message.
//! - `max_tokens` and `max_completion_tokens` both read as `max_tokens`; they go out as
//!   `max_completion_tokens` for reasoning models (o1/o3/o4…, gpt-5…, which reject `max_tokens`)
//!   and as `max_tokens` otherwise (OpenAI-compatible servers often know only that one).
//! - `top_k` is not an OpenAI field but OpenAI-compatible servers (vLLM, OpenRouter…) take it: it
//!   is read and written as `top_k`; OpenAI itself answers 400, which reaches the client.
//! - `tool` messages become `ToolResult` parts of one user message (consecutive ones merge, and a
//!   user message right after them joins it); going out, each result is its own `tool` message
//!   ahead of the rest of that user message. Images inside a result (which a `tool` message
//!   cannot hold) follow in the user message; an error result is prefixed with `Error: `.
//! - Thinking is read from and written to `reasoning_content` (the DeepSeek/vLLM convention;
//!   OpenAI clients ignore it). Thinking in the history is not sent upstream: chat completions has
//!   no input for it, and providers strip earlier turns' reasoning themselves.
//! - Content keygate cannot model (`input_audio`, `file` parts, unknown part types) is recorded
//!   under `UNSUPPORTED_KEY` in `extra`, and every `encode_request` refuses it (see
//!   `refuse_extra`). Unmodelled shapes of modelled fields (non-function tools, `allowed_tools`
//!   tool choices) ride in `extra` under the field's own name and are refused likewise.
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::canonical::{
    BadRequest, ChatRequest, ChatResponse, FinishReason, Image, Message, Part, ResponseFormat,
    Role, StreamDecoder, StreamEncoder, StreamEvent, Tool, ToolChoice, Unsupported,
};
use super::{Endpoint, count};
use crate::events::Tokens;
use crate::proxy::error::ErrorKind;

pub const DEFAULT_AUTH: (&str, &str) = ("authorization", "Bearer {key}");

pub fn recognise(path: &str) -> Option<Endpoint> {
    let p = path.strip_prefix("v1/").unwrap_or(path);
    Some(match p {
        "chat/completions" => Endpoint::ChatCompletions,
        "embeddings" => Endpoint::Embeddings,
        "models" => Endpoint::Models,
        _ if p == "responses" || p.starts_with("responses/") => Endpoint::Responses,
        _ if p.starts_with("models/") && !p.contains(':') => Endpoint::Models,
        _ => return None,
    })
}

/// OpenAI's `error.type` for a gateway error.
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadAccessKey => "authentication_error",
        ErrorKind::SlugNotAllowed => "permission_error",
        ErrorKind::UnknownSlug => "not_found_error",
        ErrorKind::ModelNotAllowed => "invalid_request_error",
        ErrorKind::BodyTooLarge | ErrorKind::BadRequest | ErrorKind::ClientTimeout => {
            "invalid_request_error"
        }
        ErrorKind::NoUsableKey => "service_unavailable",
        ErrorKind::UpstreamRateLimited | ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::BudgetExhausted => "insufficient_quota",
        ErrorKind::UpstreamFailed
        | ErrorKind::UpstreamTimeout
        | ErrorKind::LoopDetected
        | ErrorKind::EgressRefused
        | ErrorKind::Internal => "api_error",
    }
}

pub fn error_body(kind: ErrorKind, message: &str) -> Value {
    json!({"error": {"message": message, "type": error_type(kind), "code": kind.label(), "param": null}})
}

pub fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"error": {"message": message, "type": "api_error", "code": "upstream_failed", "param": null}});
    Bytes::from(super::sse_data(&v))
}

pub fn quota_exhausted(_status: u16, body: &str) -> bool {
    body.contains("insufficient_quota")
}

/// `usage` of a chat completion (`prompt_tokens`, `completion_tokens`,
/// `prompt_tokens_details.cached_tokens`) or of a Responses API object (`input_tokens`,
/// `output_tokens`, `input_tokens_details.cached_tokens`; in a stream inside `response`).
pub fn usage(v: &Value) -> Option<Tokens> {
    let u = [&v["usage"], &v["response"]["usage"]]
        .into_iter()
        .find(|u| u.is_object())?;
    let prompt = &u["prompt_tokens"];
    if prompt.is_u64() || u["completion_tokens"].is_u64() {
        return Some(Tokens {
            prompt: count(prompt),
            completion: count(&u["completion_tokens"]),
            cache_read: count(&u["prompt_tokens_details"]["cached_tokens"]),
            cache_write: 0,
        });
    }
    if u["input_tokens"].is_u64() || u["output_tokens"].is_u64() {
        // The Responses API names them like Anthropic does, but input includes cached tokens.
        // An Anthropic-shaped usage has `cache_read_input_tokens` instead of the details.
        if u.get("cache_read_input_tokens").is_some()
            || u.get("cache_creation_input_tokens").is_some()
        {
            return None;
        }
        return Some(Tokens {
            prompt: count(&u["input_tokens"]),
            completion: count(&u["output_tokens"]),
            cache_read: count(&u["input_tokens_details"]["cached_tokens"]),
            cache_write: 0,
        });
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Chat completions ⇄ canonical
// ---------------------------------------------------------------------------------------------

/// Key in `ChatRequest::extra` listing client content keygate could not model (audio, files…),
/// so that any `encode_request` refuses the request instead of dropping that content.
pub const UNSUPPORTED_KEY: &str = "keygate_unsupported";

/// Extra fields of an OpenAI client body that no other format can carry, with what to call them
/// in the refusal. Fields that are only tuning (`seed`, `presence_penalty`, `store`, `metadata`…)
/// are left out on purpose: dropping them changes no answer's shape.
const OPENAI_ONLY: &[(&str, &str)] = &[
    ("n", "several choices (n)"),
    ("logprobs", "logprobs"),
    ("top_logprobs", "logprobs"),
    ("logit_bias", "logit_bias"),
    ("audio", "audio output"),
    ("prediction", "predicted outputs"),
    ("web_search_options", "web_search_options"),
    ("functions", "legacy functions (use tools)"),
    ("function_call", "legacy function_call (use tool_choice)"),
    ("tools", "OpenAI hosted or custom tools"),
    ("tool_choice", "this tool_choice"),
    (
        "previous_response_id",
        "previous_response_id (stored conversation state)",
    ),
    ("conversation", "stored conversations"),
    ("background", "background responses"),
    ("prompt", "stored prompt templates"),
];

/// `Unsupported` when `extra` (from an OpenAI chat or Responses client) holds something a
/// `target` format cannot carry; for the other formats' `encode_request` to call.
pub fn refuse_extra(extra: &Map<String, Value>, target: &str) -> Result<(), Unsupported> {
    if let Some(v) = extra.get(UNSUPPORTED_KEY) {
        let what = match v {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            v => v.to_string(),
        };
        return Err(Unsupported(format!(
            "{what} cannot be translated for {target}"
        )));
    }
    for (key, what) in OPENAI_ONLY {
        let Some(v) = extra.get(*key) else { continue };
        let harmless = match *key {
            "n" => v.as_u64().is_some_and(|n| n <= 1),
            "logprobs" | "background" => v == &Value::Bool(false),
            _ => v.is_null(),
        };
        if !harmless {
            return Err(Unsupported(format!("{what} is not supported by {target}")));
        }
    }
    if let Some(m) = extra.get("modalities").and_then(Value::as_array)
        && m.iter().any(|m| m != "text")
    {
        return Err(Unsupported(format!(
            "audio output is not supported by {target}"
        )));
    }
    Ok(())
}

pub(crate) fn note_unsupported(extra: &mut Map<String, Value>, what: &str) {
    let list = extra
        .entry(UNSUPPORTED_KEY)
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = list
        && !a.iter().any(|v| v == what)
    {
        a.push(Value::String(what.to_owned()));
    }
}

pub(crate) fn bad(what: impl Into<String>) -> BadRequest {
    BadRequest(what.into())
}

pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("the request body must be a JSON object")),
        Err(e) => Err(bad(format!("the request body is not valid JSON: {e}"))),
    }
}

pub(crate) fn opt_u64(v: Option<&Value>, name: &str) -> Result<Option<u64>, BadRequest> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{name}` must be a non-negative integer"))),
    }
}

pub(crate) fn opt_f64(v: Option<&Value>, name: &str) -> Result<Option<f64>, BadRequest> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{name}` must be a number"))),
    }
}

pub(crate) fn opt_bool(v: Option<&Value>, name: &str) -> Result<Option<bool>, BadRequest> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| bad(format!("`{name}` must be a boolean"))),
    }
}

pub(crate) fn opt_str(v: Option<&Value>, name: &str) -> Result<Option<String>, BadRequest> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("`{name}` must be a string"))),
    }
}

/// An image URL as a canonical image: `data:<type>;base64,<data>` inline, anything else a link.
pub(crate) fn image_from_url(url: &str) -> Result<Image, BadRequest> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(Image::Url(url.to_owned()));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| bad("a data: image URL has no comma"))?;
    let media_type = meta
        .strip_suffix(";base64")
        .ok_or_else(|| bad("a data: image URL must be base64"))?;
    Ok(Image::Base64 {
        media_type: if media_type.is_empty() {
            "image/png".into()
        } else {
            media_type.to_owned()
        },
        data: data.to_owned(),
    })
}

pub(crate) fn image_to_url(img: &Image) -> String {
    match img {
        Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        Image::Url(u) => u.clone(),
    }
}

/// The parts of a message's `content`: a string, or an array of typed parts.
fn content_parts(
    content: Option<&Value>,
    extra: &mut Map<String, Value>,
) -> Result<Vec<Part>, BadRequest> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s.clone())]),
        Some(Value::Array(items)) => {
            let mut parts = Vec::new();
            for it in items {
                match it["type"].as_str() {
                    Some("text") => parts.push(Part::Text(
                        it["text"]
                            .as_str()
                            .ok_or_else(|| bad("a text part has no `text`"))?
                            .to_owned(),
                    )),
                    // A refusal the model gave earlier is plain text to any other model.
                    Some("refusal") => {
                        parts.push(Part::Text(it["refusal"].as_str().unwrap_or("").to_owned()))
                    }
                    Some("image_url") => {
                        let url = it["image_url"]["url"]
                            .as_str()
                            .or_else(|| it["image_url"].as_str())
                            .ok_or_else(|| bad("an image_url part has no `url`"))?;
                        parts.push(Part::Image(image_from_url(url)?));
                    }
                    Some("input_audio") => note_unsupported(extra, "audio input"),
                    Some("file") => note_unsupported(extra, "file inputs"),
                    Some(other) => note_unsupported(extra, &format!("`{other}` content parts")),
                    None => return Err(bad("a content part has no `type`")),
                }
            }
            Ok(parts)
        }
        Some(_) => Err(bad("`content` must be a string or an array")),
    }
}

/// Chat `tools`: function tools are modelled, any other kind rides in `extra["tools"]`.
fn decode_tools(
    v: Option<&Value>,
    extra: &mut Map<String, Value>,
) -> Result<Vec<Tool>, BadRequest> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let arr = v
        .as_array()
        .ok_or_else(|| bad("`tools` must be an array"))?;
    let mut tools = Vec::new();
    let mut others = Vec::new();
    for t in arr {
        if t["type"] != "function" {
            others.push(t.clone());
            continue;
        }
        let f = &t["function"];
        tools.push(Tool {
            name: f["name"]
                .as_str()
                .ok_or_else(|| bad("a function tool has no `name`"))?
                .to_owned(),
            description: f["description"].as_str().map(str::to_owned),
            parameters: match &f["parameters"] {
                Value::Null => json!({"type": "object", "properties": {}}),
                p => p.clone(),
            },
        });
    }
    if !others.is_empty() {
        extra.insert("tools".into(), Value::Array(others));
    }
    Ok(tools)
}

/// `tool_choice` strings, and a function named either the chat way (`function.name`) or the
/// Responses way (`name`). Other shapes ride in `extra["tool_choice"]`.
pub(crate) fn decode_tool_choice(
    v: Option<&Value>,
    extra: &mut Map<String, Value>,
) -> Option<ToolChoice> {
    match v? {
        Value::Null => None,
        Value::String(s) => match s.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => {
                extra.insert("tool_choice".into(), Value::String(s.clone()));
                None
            }
        },
        v if v["type"] == "function" => {
            let name = v["function"]["name"].as_str().or(v["name"].as_str());
            match name {
                Some(n) => Some(ToolChoice::Tool(n.to_owned())),
                None => {
                    extra.insert("tool_choice".into(), v.clone());
                    None
                }
            }
        }
        v => {
            extra.insert("tool_choice".into(), v.clone());
            None
        }
    }
}

pub(crate) fn finish_from_wire(s: &str) -> FinishReason {
    match s {
        "length" | "max_output_tokens" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn finish_to_wire(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::StopSequence => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// Appends parts to the last message when it has the same role, else starts a message.
pub(crate) fn push_parts(messages: &mut Vec<Message>, role: Role, parts: Vec<Part>) {
    match messages.last_mut() {
        Some(m) if m.role == role => m.parts.extend(parts),
        _ => messages.push(Message { role, parts }),
    }
}

/// Reads a chat completions request.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, BadRequest> {
    let mut obj = parse_object(body)?;
    let model = opt_str(obj.get("model"), "model")?.ok_or_else(|| bad("`model` is required"))?;
    let mut req = ChatRequest::new(model);
    let mut extra = Map::new();

    let messages = match obj.remove("messages") {
        Some(Value::Array(m)) => m,
        _ => return Err(bad("`messages` must be an array")),
    };
    // True while the last canonical message holds tool results: a user turn right after joins it.
    let mut after_tool = false;
    for m in &messages {
        let role = m["role"]
            .as_str()
            .ok_or_else(|| bad("a message has no `role`"))?;
        match role {
            "system" | "developer" => {
                let parts = content_parts(m.get("content"), &mut extra)?;
                req.system.extend(parts);
                continue;
            }
            "user" => {
                let parts = content_parts(m.get("content"), &mut extra)?;
                if after_tool {
                    push_parts(&mut req.messages, Role::User, parts);
                } else {
                    req.messages.push(Message {
                        role: Role::User,
                        parts,
                    });
                }
                after_tool = false;
            }
            "assistant" => {
                let mut parts = Vec::new();
                if let Some(r) = m["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
                    parts.push(Part::Thinking {
                        text: r.to_owned(),
                        signature: None,
                    });
                }
                parts.extend(content_parts(m.get("content"), &mut extra)?);
                if let Some(r) = m["refusal"].as_str() {
                    parts.push(Part::Text(r.to_owned()));
                }
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    if c["type"] != "function" && !c["type"].is_null() {
                        note_unsupported(&mut extra, "custom tool calls");
                        continue;
                    }
                    parts.push(Part::ToolCall {
                        id: c["id"].as_str().unwrap_or_default().to_owned(),
                        name: c["function"]["name"]
                            .as_str()
                            .ok_or_else(|| bad("a tool call has no function name"))?
                            .to_owned(),
                        arguments: c["function"]["arguments"]
                            .as_str()
                            .unwrap_or("{}")
                            .to_owned(),
                    });
                }
                req.messages.push(Message {
                    role: Role::Assistant,
                    parts,
                });
                after_tool = false;
            }
            "tool" | "function" => {
                // The legacy `function` role names the function instead of a call id.
                let id = m["tool_call_id"]
                    .as_str()
                    .or(m["name"].as_str())
                    .ok_or_else(|| bad("a tool message has no `tool_call_id`"))?;
                let content = content_parts(m.get("content"), &mut extra)?;
                let result = Part::ToolResult {
                    id: id.to_owned(),
                    name: m["name"].as_str().map(str::to_owned),
                    content,
                    is_error: false,
                };
                if after_tool {
                    push_parts(&mut req.messages, Role::User, vec![result]);
                } else {
                    req.messages.push(Message {
                        role: Role::User,
                        parts: vec![result],
                    });
                }
                after_tool = true;
            }
            other => return Err(bad(format!("unknown message role `{other}`"))),
        }
    }

    req.max_tokens = match opt_u64(obj.get("max_completion_tokens"), "max_completion_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(obj.get("max_tokens"), "max_tokens")?,
    };
    req.temperature = opt_f64(obj.get("temperature"), "temperature")?;
    req.top_p = opt_f64(obj.get("top_p"), "top_p")?;
    req.top_k = opt_u64(obj.get("top_k"), "top_k")?;
    req.stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("`stop` must be a string or an array of strings"))?,
        Some(_) => return Err(bad("`stop` must be a string or an array of strings")),
    };
    req.stream = opt_bool(obj.get("stream"), "stream")?.unwrap_or(false);
    req.include_usage = obj
        .get("stream_options")
        .and_then(|o| o["include_usage"].as_bool())
        .unwrap_or(false);
    req.tools = decode_tools(obj.get("tools"), &mut extra)?;
    req.tool_choice = decode_tool_choice(obj.get("tool_choice"), &mut extra);
    req.parallel_tool_calls = opt_bool(obj.get("parallel_tool_calls"), "parallel_tool_calls")?;
    req.response_format = match obj.get("response_format") {
        None | Some(Value::Null) => None,
        Some(f) => Some(match f["type"].as_str() {
            Some("text") => ResponseFormat::Text,
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => {
                let s = &f["json_schema"];
                ResponseFormat::JsonSchema {
                    name: s["name"].as_str().unwrap_or("response").to_owned(),
                    schema: s["schema"].clone(),
                    strict: s["strict"].as_bool(),
                }
            }
            _ => return Err(bad("unknown `response_format` type")),
        }),
    };
    req.user = opt_str(obj.get("user"), "user")?;

    const MODELLED: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
    ];
    for (k, v) in obj {
        if !MODELLED.contains(&k.as_str()) {
            extra.insert(k, v);
        }
    }
    req.extra = extra;
    Ok(req)
}

/// Reasoning models take `max_completion_tokens` and reject `max_tokens`.
fn is_reasoning_model(model: &str) -> bool {
    let m = model.rsplit('/').next().unwrap_or(model);
    let o_series = m.len() > 1
        && m.starts_with('o')
        && m[1..].chars().next().is_some_and(|c| c.is_ascii_digit());
    o_series || m.starts_with("gpt-5")
}

/// Chat fields keygate does not model that are copied from `extra` when present. Only fields
/// whose name means the same in every format keygate reads (so an Anthropic `metadata` is never
/// sent as OpenAI's `metadata`, nor an Anthropic `service_tier` value OpenAI rejects).
const CHAT_PASSTHROUGH: &[&str] = &[
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "reasoning_effort",
    "verbosity",
    "store",
    "prompt_cache_key",
    "safety_identifier",
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
];

fn text_content(parts: &[&str]) -> Value {
    match parts {
        [one] => Value::String((*one).to_owned()),
        many => Value::Array(
            many.iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect(),
        ),
    }
}

/// The body of a chat completions request for an OpenAI(-compatible) upstream.
pub fn encode_request(req: &ChatRequest) -> Result<Vec<u8>, Unsupported> {
    if let Some(v) = req.extra.get(UNSUPPORTED_KEY) {
        return Err(Unsupported(format!(
            "{} cannot be translated for OpenAI chat completions",
            match v {
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                v => v.to_string(),
            }
        )));
    }
    // Chat completions has no hosted tools and no stored conversations.
    for (key, what) in [
        ("tools", "OpenAI hosted tools (web search, file search…)"),
        ("tool_choice", "this tool_choice"),
        ("previous_response_id", "previous_response_id"),
        ("conversation", "stored conversations"),
        ("prompt", "stored prompt templates"),
    ] {
        if req.extra.get(key).is_some_and(|v| !v.is_null()) {
            return Err(Unsupported(format!(
                "{what} is not supported by OpenAI chat completions"
            )));
        }
    }

    let mut messages = Vec::new();
    if !req.system.is_empty() {
        let mut texts = Vec::new();
        for p in &req.system {
            match p {
                Part::Text(t) => texts.push(t.as_str()),
                _ => {
                    return Err(Unsupported::new(
                        "only text is supported in system instructions by OpenAI",
                    ));
                }
            }
        }
        messages.push(json!({"role": "system", "content": texts.join("\n\n")}));
    }
    for m in &req.messages {
        match m.role {
            Role::Assistant => {
                let mut texts = Vec::new();
                let mut calls = Vec::new();
                for p in &m.parts {
                    match p {
                        Part::Text(t) => texts.push(t.as_str()),
                        Part::ToolCall {
                            id,
                            name,
                            arguments,
                        } => calls.push(json!({"id": id, "type": "function",
                            "function": {"name": name, "arguments": arguments}})),
                        Part::Thinking { .. } => {}
                        Part::Image(_) => {
                            return Err(Unsupported::new(
                                "images in assistant messages are not supported by OpenAI",
                            ));
                        }
                        Part::ToolResult { .. } => {
                            return Err(Unsupported::new(
                                "tool results in assistant messages are not supported by OpenAI",
                            ));
                        }
                    }
                }
                if texts.is_empty() && calls.is_empty() {
                    // A turn that only thought: nothing OpenAI can take.
                    continue;
                }
                let mut msg = Map::new();
                msg.insert("role".into(), "assistant".into());
                msg.insert(
                    "content".into(),
                    if texts.is_empty() {
                        Value::Null
                    } else {
                        text_content(&texts)
                    },
                );
                if !calls.is_empty() {
                    msg.insert("tool_calls".into(), Value::Array(calls));
                }
                messages.push(Value::Object(msg));
            }
            Role::User => {
                let mut rest = Vec::new();
                for p in &m.parts {
                    match p {
                        Part::ToolResult {
                            id,
                            content,
                            is_error,
                            ..
                        } => {
                            let mut texts = Vec::new();
                            for c in content {
                                match c {
                                    Part::Text(t) => texts.push(t.as_str()),
                                    // A tool message holds text only: images go with the user
                                    // content that follows.
                                    Part::Image(_) => rest.push(c),
                                    _ => {
                                        return Err(Unsupported::new(
                                            "only text and images are supported in tool results",
                                        ));
                                    }
                                }
                            }
                            let mut text = texts.concat();
                            if *is_error {
                                text = format!("Error: {text}");
                            }
                            messages.push(json!({"role": "tool", "tool_call_id": id,
                                "content": text}));
                        }
                        Part::Text(_) | Part::Image(_) => rest.push(p),
                        Part::ToolCall { .. } | Part::Thinking { .. } => {
                            return Err(Unsupported::new(
                                "tool calls or thinking in user messages are not supported by OpenAI",
                            ));
                        }
                    }
                }
                if rest.is_empty() {
                    if m.parts.is_empty() {
                        messages.push(json!({"role": "user", "content": ""}));
                    }
                    continue;
                }
                let content = match rest.as_slice() {
                    [Part::Text(t)] => Value::String(t.clone()),
                    parts => Value::Array(
                        parts
                            .iter()
                            .map(|p| match p {
                                Part::Image(img) => json!({"type": "image_url",
                                    "image_url": {"url": image_to_url(img)}}),
                                Part::Text(t) => json!({"type": "text", "text": t}),
                                _ => unreachable!("only text and images are collected"),
                            })
                            .collect(),
                    ),
                };
                messages.push(json!({"role": "user", "content": content}));
            }
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), req.model.clone().into());
    body.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.max_tokens {
        let key = if is_reasoning_model(&req.model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(key.into(), n.into());
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(t) = req.top_p {
        body.insert("top_p".into(), t.into());
    }
    if let Some(k) = req.top_k {
        body.insert("top_k".into(), k.into());
    }
    if !req.stop.is_empty() {
        body.insert("stop".into(), json!(req.stop));
    }
    if req.stream {
        body.insert("stream".into(), true.into());
        // keygate meters every stream: always ask for the usage chunk (the Encoder shows it to
        // the client only when the client asked).
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if !req.tools.is_empty() {
        let tools = req
            .tools
            .iter()
            .map(|t| {
                let mut f = Map::new();
                f.insert("name".into(), t.name.clone().into());
                if let Some(d) = &t.description {
                    f.insert("description".into(), d.clone().into());
                }
                f.insert("parameters".into(), t.parameters.clone());
                json!({"type": "function", "function": f})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(c) = &req.tool_choice {
        body.insert(
            "tool_choice".into(),
            match c {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(n) => json!({"type": "function", "function": {"name": n}}),
            },
        );
    }
    if let Some(p) = req.parallel_tool_calls {
        body.insert("parallel_tool_calls".into(), p.into());
    }
    if let Some(f) = &req.response_format {
        body.insert(
            "response_format".into(),
            match f {
                ResponseFormat::Text => json!({"type": "text"}),
                ResponseFormat::JsonObject => json!({"type": "json_object"}),
                ResponseFormat::JsonSchema {
                    name,
                    schema,
                    strict,
                } => {
                    let mut s = json!({"name": name, "schema": schema});
                    if let Some(st) = strict {
                        s["strict"] = (*st).into();
                    }
                    json!({"type": "json_schema", "json_schema": s})
                }
            },
        );
    }
    if let Some(u) = &req.user {
        body.insert("user".into(), u.clone().into());
    }
    for k in CHAT_PASSTHROUGH {
        if let Some(v) = req.extra.get(*k) {
            body.entry(*k).or_insert_with(|| v.clone());
        }
    }
    Ok(serde_json::to_vec(&Value::Object(body)).expect("a JSON value serialises"))
}

fn usage_json(t: &crate::events::Tokens) -> Value {
    json!({
        "prompt_tokens": t.prompt,
        "completion_tokens": t.completion,
        "total_tokens": t.total(),
        "prompt_tokens_details": {"cached_tokens": t.cache_read},
    })
}

pub(crate) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A whole chat completion for the client.
pub fn encode_response(resp: &ChatResponse) -> Vec<u8> {
    serde_json::to_vec(&completion_json(resp, now_secs())).expect("a JSON value serialises")
}

fn completion_json(resp: &ChatResponse, created: i64) -> Value {
    let mut texts = Vec::new();
    let mut thinking = Vec::new();
    let mut calls = Vec::new();
    for p in &resp.parts {
        match p {
            Part::Text(t) => texts.push(t.as_str()),
            Part::Thinking { text, .. } => thinking.push(text.as_str()),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => calls.push(json!({"id": id, "type": "function",
                "function": {"name": name, "arguments": arguments}})),
            // Not in answers; nothing sensible to show.
            Part::Image(_) | Part::ToolResult { .. } => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if texts.is_empty() {
            Value::Null
        } else {
            texts.concat().into()
        },
    );
    message.insert("refusal".into(), Value::Null);
    if !thinking.is_empty() {
        message.insert("reasoning_content".into(), thinking.concat().into());
    }
    let finish = resp.finish.or(if calls.is_empty() {
        None
    } else {
        Some(FinishReason::ToolCalls)
    });
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let mut v = json!({
        "id": resp.id,
        "object": "chat.completion",
        "created": created,
        "model": resp.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_to_wire(finish.unwrap_or(FinishReason::Stop)),
        }],
    });
    if let Some(u) = &resp.usage {
        v["usage"] = usage_json(u);
    }
    v
}

/// Reads a chat completion of an upstream (the first choice).
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, BadRequest> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the upstream's answer is not JSON: {e}")))?;
    let choice = &v["choices"][0];
    if !choice.is_object() {
        return Err(bad("the upstream's answer has no choices"));
    }
    let msg = &choice["message"];
    let mut parts = Vec::new();
    if let Some(r) = msg["reasoning_content"]
        .as_str()
        .or(msg["reasoning"].as_str())
        .filter(|r| !r.is_empty())
    {
        parts.push(Part::Thinking {
            text: r.to_owned(),
            signature: None,
        });
    }
    match &msg["content"] {
        Value::String(s) if !s.is_empty() => parts.push(Part::Text(s.clone())),
        Value::Array(a) => {
            for p in a {
                if let Some(t) = p["text"].as_str() {
                    parts.push(Part::Text(t.to_owned()));
                }
            }
        }
        _ => {}
    }
    if let Some(r) = msg["refusal"].as_str() {
        parts.push(Part::Text(r.to_owned()));
    }
    for c in msg["tool_calls"].as_array().into_iter().flatten() {
        parts.push(Part::ToolCall {
            id: c["id"].as_str().unwrap_or_default().to_owned(),
            name: c["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            arguments: c["function"]["arguments"]
                .as_str()
                .unwrap_or("{}")
                .to_owned(),
        });
    }
    Ok(ChatResponse {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        model: v["model"].as_str().unwrap_or_default().to_owned(),
        parts,
        finish: choice["finish_reason"].as_str().map(finish_from_wire),
        usage: usage(&v),
    })
}

/// The message of an OpenAI-shaped error answer (`{"error": {"message"}}`, or a bare string).
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = &v["error"];
    e["message"]
        .as_str()
        .or(e.as_str())
        .or(v["message"].as_str())
        .map(str::to_owned)
}

pub fn encode_models(ids: &[String]) -> Vec<u8> {
    let data: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "keygate"}))
        .collect();
    serde_json::to_vec(&json!({"object": "list", "data": data})).expect("a JSON value serialises")
}

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

/// Writes a chat completions stream for the client: every chunk carries the same id, model and
/// created; the first delta names the role; tool calls are numbered from 0 in the order they
/// start; a finish chunk always comes before `[DONE]`, and the usage chunk (`choices: []`) only
/// when the client asked for it.
pub struct Encoder {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    started: bool,
    /// Canonical tool call indices, in the order they started: the position is OpenAI's index.
    tools: Vec<usize>,
    finished: bool,
    usage: Option<crate::events::Tokens>,
    done: bool,
}

impl Encoder {
    pub fn new(req: &ChatRequest) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            model: req.model.clone(),
            created: now_secs(),
            include_usage: req.include_usage,
            started: false,
            tools: Vec::new(),
            finished: false,
            usage: None,
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        let v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        out.extend_from_slice(super::sse_data(&v).as_bytes());
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunk(json!({"role": "assistant", "content": ""}), None, out);
        }
    }

    fn tool_index(&mut self, index: usize) -> usize {
        match self.tools.iter().position(|i| *i == index) {
            Some(p) => p,
            None => {
                self.tools.push(index);
                self.tools.len() - 1
            }
        }
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
                        self.id = id.clone();
                    }
                    if !model.is_empty() {
                        self.model = model.clone();
                    }
                }
                self.start(out);
            }
            StreamEvent::TextDelta(t) => {
                self.start(out);
                self.chunk(json!({"content": t}), None, out);
            }
            StreamEvent::ThinkingDelta(t) => {
                self.start(out);
                self.chunk(json!({"reasoning_content": t}), None, out);
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(out);
                let i = self.tool_index(*index);
                self.chunk(
                    json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                    out,
                );
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                self.start(out);
                let i = self.tool_index(*index);
                self.chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": arguments}}]}),
                    None,
                    out,
                );
            }
            StreamEvent::Finish(f) => {
                self.start(out);
                if !self.finished {
                    self.finished = true;
                    self.chunk(json!({}), Some(finish_to_wire(*f)), out);
                }
            }
            StreamEvent::Usage(t) => self.usage = Some(*t),
            StreamEvent::Error { message } => {
                out.extend_from_slice(&stream_error_event(message));
                self.done = true;
            }
            StreamEvent::End => {
                self.start(out);
                if !self.finished {
                    self.finished = true;
                    let f = if self.tools.is_empty() {
                        FinishReason::Stop
                    } else {
                        FinishReason::ToolCalls
                    };
                    self.chunk(json!({}), Some(finish_to_wire(f)), out);
                }
                if self.include_usage {
                    let u = self.usage.unwrap_or_default();
                    let v = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_json(&u),
                    });
                    out.extend_from_slice(super::sse_data(&v).as_bytes());
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
        }
    }
}

/// Reads an OpenAI(-compatible) chat completions stream.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    /// (OpenAI index, call id) of each call, in order of start: the position is canonical.
    tools: Vec<(Option<u64>, String)>,
    ended: bool,
}

impl Decoder {
    fn start(&mut self, v: &Value, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: v["id"].as_str().unwrap_or_default().to_owned(),
                model: v["model"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }

    /// The canonical index of a tool call delta, and whether it starts a call. Some
    /// OpenAI-compatible servers leave out `index` or reuse it: a new id then means a new call.
    fn tool(&mut self, index: Option<u64>, id: Option<&str>) -> (usize, bool) {
        let known = self.tools.iter().rposition(|(i, cid)| match (index, id) {
            (_, Some(id)) if !id.is_empty() => cid == id,
            (Some(ix), _) => *i == Some(ix),
            (None, _) => true,
        });
        match known {
            Some(p) => (p, false),
            None => {
                self.tools.push((index, id.unwrap_or_default().to_owned()));
                (self.tools.len() - 1, true)
            }
        }
    }
}

impl StreamDecoder for Decoder {
    fn event(&mut self, _event: Option<&str>, data: &str, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        let data = data.trim();
        if data == "[DONE]" {
            self.start(&Value::Null, out);
            self.ended = true;
            out.push(StreamEvent::End);
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if !v["error"].is_null() {
            let e = &v["error"];
            let message = e["message"]
                .as_str()
                .or(e.as_str())
                .unwrap_or("the upstream reported an error")
                .to_owned();
            out.push(StreamEvent::Error { message });
            return;
        }
        self.start(&v, out);
        for choice in v["choices"].as_array().into_iter().flatten() {
            // keygate answers with one choice; `n > 1` is refused before it gets here.
            if choice["index"].as_u64().unwrap_or(0) != 0 {
                continue;
            }
            let d = &choice["delta"];
            for key in ["reasoning_content", "reasoning"] {
                if let Some(t) = d[key].as_str().filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::ThinkingDelta(t.to_owned()));
                    break;
                }
            }
            if let Some(t) = d["content"].as_str().filter(|t| !t.is_empty()) {
                out.push(StreamEvent::TextDelta(t.to_owned()));
            }
            if let Some(t) = d["refusal"].as_str().filter(|t| !t.is_empty()) {
                out.push(StreamEvent::TextDelta(t.to_owned()));
            }
            for c in d["tool_calls"].as_array().into_iter().flatten() {
                let (index, new) = self.tool(c["index"].as_u64(), c["id"].as_str());
                if new {
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: c["id"].as_str().unwrap_or_default().to_owned(),
                        name: c["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    });
                }
                if let Some(a) = c["function"]["arguments"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                {
                    out.push(StreamEvent::ToolCallDelta {
                        index,
                        arguments: a.to_owned(),
                    });
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                out.push(StreamEvent::Finish(finish_from_wire(f)));
            }
        }
        if v["usage"].is_object()
            && let Some(t) = usage(&v)
        {
            out.push(StreamEvent::Usage(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_usage_counts_cached_prompt_tokens() {
        let v = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 64}}});
        assert_eq!(
            usage(&v),
            Some(Tokens {
                prompt: 100,
                completion: 7,
                cache_read: 64,
                cache_write: 0
            })
        );
    }

    #[test]
    fn responses_usage_is_read_from_the_completed_event() {
        let v = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 9,
            "output_tokens": 3, "input_tokens_details": {"cached_tokens": 4}}}});
        assert_eq!(
            usage(&v).map(|t| (t.prompt, t.completion, t.cache_read)),
            Some((9, 3, 4))
        );
    }

    #[test]
    fn errors_have_the_openai_shape() {
        let v = error_body(ErrorKind::NoUsableKey, "m");
        assert_eq!(v["error"]["code"], "no_usable_key");
        assert_eq!(v["error"]["type"], "service_unavailable");
        assert!(v["error"].get("param").is_some());
        assert!(quota_exhausted(
            429,
            r#"{"error":{"code":"insufficient_quota"}}"#
        ));
        assert!(!quota_exhausted(
            429,
            r#"{"error":{"code":"rate_limit_exceeded"}}"#
        ));
    }

    // ---- chat completions ⇄ canonical -----------------------------------------------------

    use crate::formats::sse::SseReader;

    const CHAT_REQUEST: &str = include_str!("../../tests/fixtures/openai/chat_request.json");
    const CHAT_REQUEST_UPSTREAM: &str =
        include_str!("../../tests/fixtures/openai/chat_request_upstream.json");
    const CHAT_RESPONSE: &str = include_str!("../../tests/fixtures/openai/chat_response.json");
    const CHAT_RESPONSE_CLIENT: &str =
        include_str!("../../tests/fixtures/openai/chat_response_client.json");
    const CHAT_STREAM: &str = include_str!("../../tests/fixtures/openai/chat_stream.txt");

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    fn decode_stream(transcript: &str, step: usize) -> Vec<StreamEvent> {
        crate::formats::sse::decode_in_chunks(&mut Decoder::default(), transcript.as_bytes(), step)
    }

    /// Encodes canonical events and reads the client's stream back as its `data:` payloads.
    fn encode_stream(req: &ChatRequest, events: &[StreamEvent]) -> Vec<String> {
        let mut enc = Encoder::new(req);
        let mut bytes = Vec::new();
        for e in events {
            enc.encode(e, &mut bytes);
        }
        let mut reader = SseReader::new();
        let mut out = Vec::new();
        reader.feed(&bytes, &mut out);
        reader.finish(&mut out);
        out.into_iter().map(|e| e.data).collect()
    }

    #[test]
    fn a_chat_request_reads_into_the_canonical_model() {
        let req = decode_request(CHAT_REQUEST.as_bytes()).unwrap();
        assert_eq!(req.model, "gpt-4o-mini");
        assert_eq!(
            req.system,
            vec![
                Part::Text("You are terse.".into()),
                Part::Text("Answer in English.".into())
            ]
        );
        assert_eq!(req.messages.len(), 3);
        assert_eq!(
            req.messages[0].parts[1],
            Part::Image(Image::Base64 {
                media_type: "image/png".into(),
                data: "iVBORw0KGgo=".into()
            })
        );
        assert_eq!(
            req.messages[0].parts[2],
            Part::Image(Image::Url("https://example.com/cat.jpg".into()))
        );
        assert_eq!(req.messages[1].role, Role::Assistant);
        assert!(matches!(&req.messages[1].parts[1],
            Part::ToolCall { id, arguments, .. } if id == "call_rome" && arguments == "{\"city\":\"Rome\"}"));
        // Both tool messages and the user turn after them are one canonical user message.
        let user = &req.messages[2];
        assert_eq!(user.role, Role::User);
        assert_eq!(user.parts.len(), 3);
        assert!(matches!(&user.parts[1],
            Part::ToolResult { id, content, is_error: false, .. }
                if id == "call_rome" && content == &vec![Part::Text("24C, sunny".into())]));
        assert_eq!(
            user.parts[2],
            Part::Text("Thanks. Summarise as JSON.".into())
        );
        assert_eq!(req.max_tokens, Some(300));
        assert_eq!((req.temperature, req.top_p), (Some(0.2), Some(0.9)));
        assert_eq!(req.stop, vec!["END".to_owned()]);
        assert!(req.stream && req.include_usage);
        assert_eq!(req.tools[0].name, "get_weather");
        assert_eq!(
            req.tool_choice,
            Some(ToolChoice::Tool("get_weather".into()))
        );
        assert_eq!(req.parallel_tool_calls, Some(true));
        assert!(matches!(&req.response_format,
            Some(ResponseFormat::JsonSchema { name, strict: Some(true), .. }) if name == "summary"));
        assert_eq!(req.user.as_deref(), Some("user-42"));
        assert_eq!(req.extra["seed"], 7);
        assert_eq!(req.extra["metadata"], json!({"team": "a"}));
        assert!(refuse_extra(&req.extra, "Anthropic").is_ok());
    }

    #[test]
    fn a_decoded_request_writes_the_golden_upstream_body() {
        // Round trip through canonical: merged tool messages split again, stop becomes an
        // array, usage is always asked for, `metadata` (whose meaning differs between formats)
        // is not copied.
        let req = decode_request(CHAT_REQUEST.as_bytes()).unwrap();
        let body = encode_request(&req).unwrap();
        assert_eq!(parse(&body), parse(CHAT_REQUEST_UPSTREAM.as_bytes()));
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens_and_streams_always_ask_for_usage() {
        let mut req = ChatRequest::new("o3-mini");
        req.max_tokens = Some(10);
        req.stream = true;
        req.messages.push(Message {
            role: Role::User,
            parts: vec![Part::Text("hi".into())],
        });
        let v = parse(&encode_request(&req).unwrap());
        assert_eq!(v["max_completion_tokens"], 10);
        assert!(v.get("max_tokens").is_none());
        assert_eq!(v["stream_options"]["include_usage"], true);
        for (model, reasoning) in [
            ("gpt-5-mini", true),
            ("openai/o1", true),
            ("gpt-4.1", false),
            ("omni-moderation", false),
        ] {
            assert_eq!(is_reasoning_model(model), reasoning, "{model}");
        }
    }

    #[test]
    fn tool_results_go_out_as_tool_messages_before_the_rest_of_the_user_turn() {
        let mut req = ChatRequest::new("gpt-4o");
        req.messages.push(Message {
            role: Role::User,
            parts: vec![
                Part::Text("and now?".into()),
                Part::ToolResult {
                    id: "toolu_1".into(),
                    name: Some("screenshot".into()),
                    content: vec![
                        Part::Text("captured".into()),
                        Part::Image(Image::Base64 {
                            media_type: "image/jpeg".into(),
                            data: "AAAA".into(),
                        }),
                    ],
                    is_error: false,
                },
                Part::ToolResult {
                    id: "toolu_2".into(),
                    name: None,
                    content: vec![Part::Text("no such file".into())],
                    is_error: true,
                },
            ],
        });
        let v = parse(&encode_request(&req).unwrap());
        assert_eq!(
            v["messages"],
            json!([
                {"role": "tool", "tool_call_id": "toolu_1", "content": "captured"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such file"},
                {"role": "user", "content": [
                    {"type": "text", "text": "and now?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}
                ]}
            ])
        );
    }

    #[test]
    fn audio_input_and_several_choices_are_kept_to_be_refused_not_dropped() {
        let body = json!({"model": "gpt-4o-audio-preview", "n": 2, "messages": [{"role": "user",
            "content": [{"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]}]});
        let req = decode_request(body.to_string().as_bytes()).unwrap();
        let e = refuse_extra(&req.extra, "Gemini").unwrap_err();
        assert!(e.0.contains("audio input"), "{e}");
        let e = encode_request(&req).unwrap_err();
        assert!(e.0.contains("audio input"), "{e}");
        let mut only_n = req.extra.clone();
        only_n.remove(UNSUPPORTED_KEY);
        assert!(
            refuse_extra(&only_n, "Anthropic")
                .unwrap_err()
                .0
                .contains("(n)")
        );
        only_n.insert("n".into(), json!(1));
        assert!(refuse_extra(&only_n, "Anthropic").is_ok());
    }

    #[test]
    fn malformed_requests_are_bad_requests() {
        assert!(decode_request(b"[]").is_err());
        assert!(decode_request(br#"{"model":"m"}"#).is_err());
        assert!(decode_request(br#"{"model":"m","messages":[{"role":"robot"}]}"#).is_err());
        assert!(decode_request(br#"{"model":"m","messages":[],"stop":3}"#).is_err());
    }

    #[test]
    fn an_upstream_completion_reads_into_the_canonical_model() {
        let r = decode_response(CHAT_RESPONSE.as_bytes()).unwrap();
        assert_eq!(r.id, "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG");
        assert_eq!(r.model, "gpt-4o-2024-08-06");
        assert_eq!(r.parts[0], Part::Text("Checking both cities.".into()));
        assert_eq!(r.parts.len(), 3);
        assert_eq!(r.finish, Some(FinishReason::ToolCalls));
        assert_eq!(
            r.usage,
            Some(Tokens {
                prompt: 1117,
                completion: 46,
                cache_read: 1024,
                cache_write: 0
            })
        );
    }

    #[test]
    fn a_canonical_answer_writes_the_golden_completion() {
        let resp = ChatResponse {
            id: "msg_01XFDUDYJgAACzvnptvVoYEL".into(),
            model: "claude-sonnet-4-5".into(),
            parts: vec![
                Part::Thinking {
                    text: "The tool said 18C.".into(),
                    signature: Some("sig".into()),
                },
                Part::Text("Paris is 18C.".into()),
                Part::ToolCall {
                    id: "toolu_01".into(),
                    name: "get_weather".into(),
                    arguments: "{\"city\":\"Rome\"}".into(),
                },
            ],
            finish: Some(FinishReason::ToolCalls),
            usage: Some(Tokens {
                prompt: 120,
                completion: 30,
                cache_read: 100,
                cache_write: 20,
            }),
        };
        assert_eq!(
            completion_json(&resp, 1_700_000_000),
            parse(CHAT_RESPONSE_CLIENT.as_bytes())
        );
        // And it reads back to the same parts (the signature has no place in chat completions).
        let back = decode_response(&encode_response(&resp)).unwrap();
        assert_eq!(back.parts[1..], resp.parts[1..]);
    }

    #[test]
    fn the_recorded_stream_decodes_the_same_at_any_split() {
        let whole = decode_stream(CHAT_STREAM, CHAT_STREAM.len());
        for step in [1, 2, 7, 33, 101] {
            assert_eq!(
                decode_stream(CHAT_STREAM, step),
                whole,
                "split every {step} bytes"
            );
        }
        assert_eq!(
            whole[0],
            StreamEvent::Start {
                id: "chatcmpl-stream1".into(),
                model: "gpt-4o-2024-08-06".into()
            }
        );
        assert_eq!(whole[1], StreamEvent::TextDelta("Checking ".into()));
        assert!(whole.contains(&StreamEvent::ToolCallStart {
            index: 1,
            id: "call_rome".into(),
            name: "get_weather".into()
        }));
        let n = whole.len();
        assert_eq!(whole[n - 3], StreamEvent::Finish(FinishReason::ToolCalls));
        assert!(matches!(whole[n - 2], StreamEvent::Usage(t) if t.cache_read == 1024));
        assert_eq!(whole[n - 1], StreamEvent::End);
        // Streamed argument fragments make the same JSON text as the whole answer's calls.
        let whole_answer = decode_response(CHAT_RESPONSE.as_bytes()).unwrap();
        for (i, part) in whole_answer.parts[1..].iter().enumerate() {
            let Part::ToolCall { arguments, .. } = part else {
                panic!("a tool call")
            };
            let streamed: String = whole
                .iter()
                .filter_map(|e| match e {
                    StreamEvent::ToolCallDelta { index, arguments } if *index == i => {
                        Some(arguments.as_str())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(&streamed, arguments);
        }
    }

    #[test]
    fn tool_calls_without_an_index_are_told_apart_by_their_id() {
        // Some OpenAI-compatible servers send every call whole, without `index`.
        let mut dec = Decoder::default();
        let mut out = Vec::new();
        for (id, city) in [("a", "Paris"), ("b", "Rome")] {
            let v = json!({"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"id": id, "type": "function", "function": {"name": "w", "arguments": format!("{{\"city\":\"{city}\"}}")}}]}}]});
            dec.event(None, &v.to_string(), &mut out);
        }
        let starts: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallStart { index, id, .. } => Some((*index, id.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, vec![(0, "a"), (1, "b")]);
    }

    #[test]
    fn the_encoder_writes_a_complete_stream_with_usage_only_when_asked() {
        let events = decode_stream(CHAT_STREAM, 5);
        let mut req = ChatRequest::new("gpt-4o");
        for include_usage in [false, true] {
            req.include_usage = include_usage;
            let data = encode_stream(&req, &events);
            assert_eq!(data.last().unwrap(), "[DONE]");
            let chunks: Vec<Value> = data[..data.len() - 1]
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            for c in &chunks {
                assert_eq!(c["id"], "chatcmpl-stream1");
                assert_eq!(c["model"], "gpt-4o-2024-08-06");
                assert_eq!(c["object"], "chat.completion.chunk");
            }
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
            let usage_chunks: Vec<_> = chunks
                .iter()
                .filter(|c| c["choices"] == json!([]))
                .collect();
            if include_usage {
                assert_eq!(usage_chunks.len(), 1);
                assert_eq!(
                    usage_chunks[0]["usage"]["prompt_tokens_details"]["cached_tokens"],
                    1024
                );
                assert_eq!(chunks.last().unwrap()["choices"], json!([]));
            } else {
                assert!(usage_chunks.is_empty());
            }
            let finishes: Vec<_> = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
                .collect();
            assert_eq!(finishes, vec!["tool_calls"]);
            // The client's stream decodes back to what went in.
            let transcript: String = data.iter().map(|d| format!("data: {d}\n\n")).collect();
            let back = decode_stream(&transcript, 9);
            let expected: Vec<_> = events
                .iter()
                .filter(|e| include_usage || !matches!(e, StreamEvent::Usage(_)))
                .cloned()
                .collect();
            assert_eq!(back, expected);
        }
    }

    #[test]
    fn a_sparse_upstream_still_gets_a_role_a_finish_and_done() {
        let mut req = ChatRequest::new("gpt-4o");
        req.include_usage = true;
        let data = encode_stream(
            &req,
            &[
                StreamEvent::ToolCallStart {
                    index: 3,
                    id: "t".into(),
                    name: "f".into(),
                },
                StreamEvent::ToolCallDelta {
                    index: 3,
                    arguments: "{}".into(),
                },
                StreamEvent::End,
            ],
        );
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            chunks[1]["choices"][0]["delta"]["tool_calls"][0]["index"], 0,
            "OpenAI numbers calls from 0"
        );
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[4]["usage"]["total_tokens"], 0);
        assert_eq!(data.last().unwrap(), "[DONE]");
    }

    #[test]
    fn an_error_in_the_stream_is_the_last_thing_the_client_sees() {
        let data = encode_stream(
            &ChatRequest::new("gpt-4o"),
            &[
                StreamEvent::TextDelta("par".into()),
                StreamEvent::Error {
                    message: "overloaded".into(),
                },
                StreamEvent::TextDelta("tial".into()),
                StreamEvent::End,
            ],
        );
        assert_eq!(data.len(), 3);
        let last: Value = serde_json::from_str(&data[2]).unwrap();
        assert_eq!(last["error"]["message"], "overloaded");
        let mut out = Vec::new();
        Decoder::default().event(None, &data[2], &mut out);
        assert_eq!(
            out,
            vec![StreamEvent::Error {
                message: "overloaded".into()
            }]
        );
    }

    #[test]
    fn models_lists_and_error_messages_read_back() {
        let ids = vec!["gpt-4o".to_owned(), "o3".to_owned()];
        let body = encode_models(&ids);
        assert_eq!(parse(&body)["data"][0]["owned_by"], "keygate");
        assert_eq!(decode_models(&body), ids);
        let e = serde_json::to_vec(&error_body(ErrorKind::BadRequest, "bad model")).unwrap();
        assert_eq!(error_message(&e).as_deref(), Some("bad model"));
        assert_eq!(error_message(b"not json"), None);
    }
}
