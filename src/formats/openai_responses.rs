//! The OpenAI Responses API (`POST /v1/responses`, what Codex and the newer OpenAI SDKs speak) to
//! and from the canonical model. Client side: `decode_request`, `encode_response`, `Encoder`;
//! upstream side, for an upstream that answers in Responses shape: `decode_response`, `Decoder`.
//! Errors, models lists and usage have the chat completions shapes (see `openai`).
//!
//! Mapping notes:
//! - `instructions` and `system`/`developer` input messages become system parts.
//! - Input items of one assistant turn (`reasoning`, `message`, `function_call`…) merge into one
//!   canonical assistant message; `function_call_output` items and a user message after them
//!   merge into one user message, as tool results then content.
//! - Reasoning goes out as a `reasoning` item whose summary holds the thinking text, and whose
//!   `encrypted_content` holds the thinking signature (Anthropic's), so that a client sending the
//!   item back (as Codex does) returns both to the upstream unchanged.
//! - `reasoning.effort` rides in `extra` as `reasoning_effort` and `text.verbosity` as
//!   `verbosity`, the chat completions names, which the chat encoder copies.
//! - Hosted tools (web_search, file_search, code interpreter, MCP…) and tool choices naming them
//!   ride in `extra["tools"]` / `extra["tool_choice"]`; input items keygate cannot model (files,
//!   audio, item references, hosted tool calls) are noted under `openai::UNSUPPORTED_KEY`. Every
//!   encoder refuses both (`openai::refuse_extra`); so does a `previous_response_id`, since
//!   another upstream has no stored conversation to continue.
//! - The client always gets usage in `response.completed`, as the Responses API always sends it.
use serde_json::{Map, Value, json};

use super::canonical::{
    BadRequest, ChatRequest, ChatResponse, FinishReason, Message, Part, ResponseFormat, Role,
    StreamDecoder, StreamEncoder, StreamEvent, Tool, ToolChoice,
};
use super::openai::{
    bad, decode_tool_choice, image_from_url, note_unsupported, now_secs, opt_bool, opt_f64,
    opt_str, opt_u64, parse_object, push_parts, usage,
};
use crate::events::Tokens;

/// The parts of an input message's `content` (a string, or typed parts).
fn content_parts(
    v: Option<&Value>,
    extra: &mut Map<String, Value>,
) -> Result<Vec<Part>, BadRequest> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(s.clone())]),
        Some(Value::Array(items)) => {
            let mut parts = Vec::new();
            for it in items {
                match it["type"].as_str() {
                    Some("input_text" | "output_text" | "text" | "summary_text") => {
                        parts.push(Part::Text(
                            it["text"]
                                .as_str()
                                .ok_or_else(|| bad("a text part has no `text`"))?
                                .to_owned(),
                        ))
                    }
                    Some("refusal") => {
                        parts.push(Part::Text(it["refusal"].as_str().unwrap_or("").to_owned()))
                    }
                    Some("input_image") => match it["image_url"].as_str() {
                        Some(url) => parts.push(Part::Image(image_from_url(url)?)),
                        None => note_unsupported(extra, "images by file_id"),
                    },
                    Some("input_file") => note_unsupported(extra, "file inputs"),
                    Some("input_audio") => note_unsupported(extra, "audio input"),
                    Some(other) => note_unsupported(extra, &format!("`{other}` content parts")),
                    None => return Err(bad("a content part has no `type`")),
                }
            }
            Ok(parts)
        }
        Some(_) => Err(bad("`content` must be a string or an array")),
    }
}

fn reasoning_text(item: &Value) -> String {
    let texts = |key: &str| -> Vec<&str> {
        item[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["text"].as_str())
            .collect()
    };
    let summary = texts("summary");
    if summary.is_empty() {
        texts("content").join("\n\n")
    } else {
        summary.join("\n\n")
    }
}

/// Reads a Responses API request.
pub fn decode_request(body: &[u8]) -> Result<ChatRequest, BadRequest> {
    let mut obj = parse_object(body)?;
    let model = opt_str(obj.get("model"), "model")?.ok_or_else(|| bad("`model` is required"))?;
    let mut req = ChatRequest::new(model);
    let mut extra = Map::new();

    if let Some(i) = opt_str(obj.get("instructions"), "instructions")? {
        req.system.push(Part::Text(i));
    }
    match obj.remove("input") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => req.messages.push(Message {
            role: Role::User,
            parts: vec![Part::Text(s)],
        }),
        Some(Value::Array(items)) => {
            for it in &items {
                let ty = it["type"].as_str().unwrap_or("message");
                match ty {
                    "message" => {
                        let parts = content_parts(it.get("content"), &mut extra)?;
                        match it["role"].as_str() {
                            Some("user") => push_parts(&mut req.messages, Role::User, parts),
                            Some("assistant") => {
                                push_parts(&mut req.messages, Role::Assistant, parts)
                            }
                            Some("system" | "developer") => req.system.extend(parts),
                            _ => return Err(bad("an input message has no known `role`")),
                        }
                    }
                    "function_call" => {
                        let call = Part::ToolCall {
                            id: it["call_id"]
                                .as_str()
                                .ok_or_else(|| bad("a function_call item has no `call_id`"))?
                                .to_owned(),
                            name: it["name"]
                                .as_str()
                                .ok_or_else(|| bad("a function_call item has no `name`"))?
                                .to_owned(),
                            arguments: it["arguments"].as_str().unwrap_or("{}").to_owned(),
                        };
                        push_parts(&mut req.messages, Role::Assistant, vec![call]);
                    }
                    "function_call_output" => {
                        let content = match &it["output"] {
                            Value::String(s) => vec![Part::Text(s.clone())],
                            o => content_parts(Some(o), &mut extra)?,
                        };
                        let result = Part::ToolResult {
                            id: it["call_id"]
                                .as_str()
                                .ok_or_else(|| bad("a function_call_output item has no `call_id`"))?
                                .to_owned(),
                            name: None,
                            content,
                            is_error: false,
                        };
                        push_parts(&mut req.messages, Role::User, vec![result]);
                    }
                    "reasoning" => {
                        let text = reasoning_text(it);
                        let signature = it["encrypted_content"].as_str().map(str::to_owned);
                        if !text.is_empty() || signature.is_some() {
                            push_parts(
                                &mut req.messages,
                                Role::Assistant,
                                vec![Part::Thinking { text, signature }],
                            );
                        }
                    }
                    "item_reference" => note_unsupported(&mut extra, "stored item references"),
                    other => note_unsupported(&mut extra, &format!("`{other}` input items")),
                }
            }
        }
        Some(_) => return Err(bad("`input` must be a string or an array")),
    }

    if let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) {
        let arr = tools
            .as_array()
            .ok_or_else(|| bad("`tools` must be an array"))?;
        let mut hosted = Vec::new();
        for t in arr {
            if t["type"] != "function" {
                hosted.push(t.clone());
                continue;
            }
            req.tools.push(Tool {
                name: t["name"]
                    .as_str()
                    .ok_or_else(|| bad("a function tool has no `name`"))?
                    .to_owned(),
                description: t["description"].as_str().map(str::to_owned),
                parameters: match &t["parameters"] {
                    Value::Null => json!({"type": "object", "properties": {}}),
                    p => p.clone(),
                },
            });
        }
        if !hosted.is_empty() {
            extra.insert("tools".into(), Value::Array(hosted));
        }
    }
    req.tool_choice = decode_tool_choice(obj.get("tool_choice"), &mut extra);
    req.parallel_tool_calls = opt_bool(obj.get("parallel_tool_calls"), "parallel_tool_calls")?;
    req.max_tokens = opt_u64(obj.get("max_output_tokens"), "max_output_tokens")?;
    req.temperature = opt_f64(obj.get("temperature"), "temperature")?;
    req.top_p = opt_f64(obj.get("top_p"), "top_p")?;
    req.stream = opt_bool(obj.get("stream"), "stream")?.unwrap_or(false);
    req.include_usage = req.stream;
    req.user = opt_str(obj.get("user"), "user")?;
    if let Some(text) = obj.get("text") {
        let f = &text["format"];
        req.response_format = match f["type"].as_str() {
            None => None,
            Some("text") => Some(ResponseFormat::Text),
            Some("json_object") => Some(ResponseFormat::JsonObject),
            Some("json_schema") => Some(ResponseFormat::JsonSchema {
                name: f["name"].as_str().unwrap_or("response").to_owned(),
                schema: f["schema"].clone(),
                strict: f["strict"].as_bool(),
            }),
            Some(_) => return Err(bad("unknown `text.format` type")),
        };
        if let Some(v) = text.get("verbosity").filter(|v| !v.is_null()) {
            extra.insert("verbosity".into(), v.clone());
        }
    }
    if let Some(e) = obj
        .get("reasoning")
        .map(|r| &r["effort"])
        .filter(|e| !e.is_null())
    {
        extra.insert("reasoning_effort".into(), e.clone());
    }

    const MODELLED: &[&str] = &[
        "model",
        "instructions",
        "input",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "user",
        "text",
        "reasoning",
    ];
    for (k, v) in obj {
        if !MODELLED.contains(&k.as_str()) && !v.is_null() {
            extra.entry(k).or_insert(v);
        }
    }
    req.extra = extra;
    Ok(req)
}

/// Request fields a `response` object repeats back.
fn echo(req: Option<&ChatRequest>) -> Map<String, Value> {
    let mut m = Map::new();
    let (tools, choice) = match req {
        Some(r) => (
            r.tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "name": t.name, "description": t.description,
                        "parameters": t.parameters, "strict": false})
                })
                .collect(),
            match &r.tool_choice {
                None | Some(ToolChoice::Auto) => json!("auto"),
                Some(ToolChoice::None) => json!("none"),
                Some(ToolChoice::Required) => json!("required"),
                Some(ToolChoice::Tool(n)) => json!({"type": "function", "name": n}),
            },
        ),
        None => (Vec::new(), json!("auto")),
    };
    m.insert("instructions".into(), Value::Null);
    m.insert(
        "max_output_tokens".into(),
        req.and_then(|r| r.max_tokens).into(),
    );
    m.insert("metadata".into(), json!({}));
    m.insert(
        "parallel_tool_calls".into(),
        req.and_then(|r| r.parallel_tool_calls)
            .unwrap_or(true)
            .into(),
    );
    m.insert("temperature".into(), req.and_then(|r| r.temperature).into());
    m.insert("tool_choice".into(), choice);
    m.insert("tools".into(), Value::Array(tools));
    m.insert("top_p".into(), req.and_then(|r| r.top_p).into());
    m
}

fn usage_json(t: &Tokens) -> Value {
    json!({
        "input_tokens": t.prompt,
        "input_tokens_details": {"cached_tokens": t.cache_read},
        "output_tokens": t.completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": t.total(),
    })
}

/// Status and `incomplete_details` of a finished response.
fn outcome(finish: Option<FinishReason>) -> (&'static str, Value) {
    match finish {
        Some(FinishReason::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some(FinishReason::ContentFilter) => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

struct Snapshot<'a> {
    id: &'a str,
    model: &'a str,
    created_at: i64,
    status: &'a str,
    incomplete: Value,
    error: Value,
    output: Vec<Value>,
    usage: Option<&'a Tokens>,
    echo: &'a Map<String, Value>,
}

fn response_object(s: Snapshot<'_>) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), s.id.into());
    m.insert("object".into(), "response".into());
    m.insert("created_at".into(), s.created_at.into());
    m.insert("status".into(), s.status.into());
    m.insert("error".into(), s.error);
    m.insert("incomplete_details".into(), s.incomplete);
    m.insert("model".into(), s.model.into());
    m.insert("output".into(), Value::Array(s.output));
    for (k, v) in s.echo {
        m.insert(k.clone(), v.clone());
    }
    m.insert(
        "usage".into(),
        s.usage.map(usage_json).unwrap_or(Value::Null),
    );
    Value::Object(m)
}

/// The tail of an id, to derive item ids from (`resp_abc` → `abc`).
fn id_base(id: &str) -> &str {
    id.split_once(['_', '-']).map(|(_, r)| r).unwrap_or(id)
}

fn message_item(id: String, texts: &[&str], status: &str) -> Value {
    let content: Vec<Value> = texts
        .iter()
        .map(|t| json!({"type": "output_text", "text": t, "annotations": [], "logprobs": []}))
        .collect();
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
        "content": content})
}

fn reasoning_item(id: String, text: &str, signature: Option<&str>) -> Value {
    let mut v = json!({"type": "reasoning", "id": id,
        "summary": [{"type": "summary_text", "text": text}]});
    if let Some(s) = signature {
        v["encrypted_content"] = s.into();
    }
    v
}

fn call_item(id: String, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "status": status, "call_id": call_id,
        "name": name, "arguments": arguments})
}

/// A whole answer as a Responses `response` object.
pub fn encode_response(resp: &ChatResponse) -> Vec<u8> {
    serde_json::to_vec(&response_json(resp, now_secs())).expect("a JSON value serialises")
}

fn response_json(resp: &ChatResponse, created_at: i64) -> Value {
    let base = id_base(&resp.id);
    let mut output: Vec<Value> = Vec::new();
    let mut texts: Vec<&str> = Vec::new();
    // Consecutive texts are one message item; a call or reasoning between them splits it.
    let flush = |texts: &mut Vec<&str>, output: &mut Vec<Value>| {
        if !texts.is_empty() {
            let id = format!("msg_{base}_{}", output.len());
            output.push(message_item(id, texts, "completed"));
            texts.clear();
        }
    };
    for p in &resp.parts {
        match p {
            Part::Text(t) => texts.push(t),
            Part::Thinking { text, signature } => {
                flush(&mut texts, &mut output);
                let id = format!("rs_{base}_{}", output.len());
                output.push(reasoning_item(id, text, signature.as_deref()));
            }
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                flush(&mut texts, &mut output);
                let item_id = format!("fc_{base}_{}", output.len());
                output.push(call_item(item_id, id, name, arguments, "completed"));
            }
            Part::Image(_) | Part::ToolResult { .. } => {}
        }
    }
    flush(&mut texts, &mut output);
    let (status, incomplete) = outcome(resp.finish);
    response_object(Snapshot {
        id: &resp.id,
        model: &resp.model,
        created_at,
        status,
        incomplete,
        error: Value::Null,
        output,
        usage: resp.usage.as_ref(),
        echo: &echo(None),
    })
}

/// Reads a Responses `response` object from an upstream.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, BadRequest> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the upstream's answer is not JSON: {e}")))?;
    if v["object"] != "response" && !v["output"].is_array() {
        return Err(bad("the upstream's answer is not a response object"));
    }
    let mut parts = Vec::new();
    let mut calls = false;
    for it in v["output"].as_array().into_iter().flatten() {
        match it["type"].as_str() {
            Some("message") => {
                for c in it["content"].as_array().into_iter().flatten() {
                    if let Some(t) = c["text"].as_str().or(c["refusal"].as_str()) {
                        parts.push(Part::Text(t.to_owned()));
                    }
                }
            }
            Some("function_call") => {
                calls = true;
                parts.push(Part::ToolCall {
                    id: it["call_id"].as_str().unwrap_or_default().to_owned(),
                    name: it["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: it["arguments"].as_str().unwrap_or("{}").to_owned(),
                });
            }
            Some("reasoning") => {
                let text = reasoning_text(it);
                let signature = it["encrypted_content"].as_str().map(str::to_owned);
                if !text.is_empty() || signature.is_some() {
                    parts.push(Part::Thinking { text, signature });
                }
            }
            // Hosted tool calls (web search…) ran upstream; their results are in the text.
            _ => {}
        }
    }
    Ok(ChatResponse {
        id: v["id"].as_str().unwrap_or_default().to_owned(),
        model: v["model"].as_str().unwrap_or_default().to_owned(),
        parts,
        finish: Some(finish_of(&v, calls)),
        usage: usage(&v),
    })
}

fn finish_of(response: &Value, calls: bool) -> FinishReason {
    match response["incomplete_details"]["reason"].as_str() {
        Some("max_output_tokens") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        _ if calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// The item being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Message(usize),
    Reasoning(usize),
    Call(usize),
}

/// Writes a Responses stream for the client: `response.created` and `response.in_progress`,
/// then each output item opened (`output_item.added`, with `content_part.added` or
/// `reasoning_summary_part.added`), its deltas, and its closing `….done` events, and last
/// `response.completed` (or `response.incomplete`) with the whole response and its usage. Every
/// event is `event: <type>` plus data carrying `type` and an increasing `sequence_number`. An
/// upstream error becomes `response.failed` and ends the stream.
pub struct Encoder {
    seq: u64,
    id: String,
    model: String,
    created_at: i64,
    echo: Map<String, Value>,
    started: bool,
    /// Output items so far, kept up to date as deltas arrive (the final response repeats them).
    output: Vec<Value>,
    open: Option<Open>,
    /// (canonical tool call index, output index) of each call.
    calls: Vec<(usize, usize)>,
    finish: Option<FinishReason>,
    usage: Option<Tokens>,
    done: bool,
}

impl Encoder {
    pub fn new(req: &ChatRequest) -> Self {
        Self {
            seq: 0,
            id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
            model: req.model.clone(),
            created_at: now_secs(),
            echo: echo(Some(req)),
            started: false,
            output: Vec::new(),
            open: None,
            calls: Vec::new(),
            finish: None,
            usage: None,
            done: false,
        }
    }

    fn emit(&mut self, ty: &str, mut data: Value, out: &mut Vec<u8>) {
        data["type"] = ty.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        out.extend_from_slice(format!("event: {ty}\ndata: {data}\n\n").as_bytes());
    }

    fn snapshot(&self, status: &str, incomplete: Value, error: Value, output: Vec<Value>) -> Value {
        response_object(Snapshot {
            id: &self.id,
            model: &self.model,
            created_at: self.created_at,
            status,
            incomplete,
            error,
            output,
            usage: self.usage.as_ref(),
            echo: &self.echo,
        })
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.snapshot("in_progress", Value::Null, Value::Null, Vec::new());
        self.emit("response.created", json!({"response": r}), out);
        self.emit("response.in_progress", json!({"response": r}), out);
    }

    fn item_id(&self, idx: usize) -> String {
        self.output[idx]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn open_item(
        &mut self,
        prefix: &str,
        item: impl FnOnce(String) -> Value,
        out: &mut Vec<u8>,
    ) -> usize {
        self.close(out);
        let idx = self.output.len();
        let id = format!("{prefix}_{}_{idx}", id_base(&self.id));
        self.output.push(item(id));
        let item = self.output[idx].clone();
        self.emit(
            "response.output_item.added",
            json!({"output_index": idx, "item": item}),
            out,
        );
        idx
    }

    fn text(&mut self, delta: &str, out: &mut Vec<u8>) {
        let idx = match self.open {
            Some(Open::Message(i)) => i,
            _ => {
                let idx = self.open_item("msg", |id| message_item(id, &[], "in_progress"), out);
                self.output[idx]["content"] = json!([{"type": "output_text", "text": "",
                    "annotations": [], "logprobs": []}]);
                let item_id = self.item_id(idx);
                self.emit(
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": idx, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}}),
                    out,
                );
                self.open = Some(Open::Message(idx));
                idx
            }
        };
        append(&mut self.output[idx]["content"][0]["text"], delta);
        let item_id = self.item_id(idx);
        self.emit(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": idx, "content_index": 0,
                "delta": delta, "logprobs": []}),
            out,
        );
    }

    fn thinking(&mut self, delta: &str, out: &mut Vec<u8>) {
        let idx = match self.open {
            Some(Open::Reasoning(i)) => i,
            _ => {
                let idx = self.open_item(
                    "rs",
                    |id| json!({"type": "reasoning", "id": id, "summary": []}),
                    out,
                );
                self.output[idx]["summary"] = json!([{"type": "summary_text", "text": ""}]);
                let item_id = self.item_id(idx);
                self.emit(
                    "response.reasoning_summary_part.added",
                    json!({"item_id": item_id, "output_index": idx, "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""}}),
                    out,
                );
                self.open = Some(Open::Reasoning(idx));
                idx
            }
        };
        append(&mut self.output[idx]["summary"][0]["text"], delta);
        let item_id = self.item_id(idx);
        self.emit(
            "response.reasoning_summary_text.delta",
            json!({"item_id": item_id, "output_index": idx, "summary_index": 0,
                "delta": delta}),
            out,
        );
    }

    fn call_start(&mut self, index: usize, call_id: &str, name: &str, out: &mut Vec<u8>) -> usize {
        let idx = self.open_item(
            "fc",
            |id| call_item(id, call_id, name, "", "in_progress"),
            out,
        );
        self.calls.push((index, idx));
        self.open = Some(Open::Call(idx));
        idx
    }

    fn call_delta(&mut self, index: usize, delta: &str, out: &mut Vec<u8>) {
        // A fragment of a call already closed (an upstream interleaving calls) still counts:
        // it is sent against that call's item and kept in the final response.
        let idx = match self.calls.iter().find(|(i, _)| *i == index) {
            Some((_, idx)) => *idx,
            None => self.call_start(index, &format!("call_{index}"), "", out),
        };
        append(&mut self.output[idx]["arguments"], delta);
        let item_id = self.item_id(idx);
        self.emit(
            "response.function_call_arguments.delta",
            json!({"item_id": item_id, "output_index": idx, "delta": delta}),
            out,
        );
    }

    /// Closes the open item with its `….done` events.
    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(open) = self.open.take() else { return };
        match open {
            Open::Message(idx) => {
                let item_id = self.item_id(idx);
                let text = self.output[idx]["content"][0]["text"].clone();
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": idx, "content_index": 0,
                        "text": text, "logprobs": []}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": idx, "content_index": 0,
                        "part": {"type": "output_text", "text": text, "annotations": []}}),
                    out,
                );
                self.output[idx]["status"] = "completed".into();
            }
            Open::Reasoning(idx) => {
                let item_id = self.item_id(idx);
                let text = self.output[idx]["summary"][0]["text"].clone();
                self.emit(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": item_id, "output_index": idx, "summary_index": 0,
                        "text": text}),
                    out,
                );
                self.emit(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": item_id, "output_index": idx, "summary_index": 0,
                        "part": {"type": "summary_text", "text": text}}),
                    out,
                );
            }
            Open::Call(idx) => {
                let item_id = self.item_id(idx);
                let item = &self.output[idx];
                let (name, arguments) = (item["name"].clone(), item["arguments"].clone());
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": idx, "name": name,
                        "arguments": arguments}),
                    out,
                );
                self.output[idx]["status"] = "completed".into();
            }
        }
        let idx = match open {
            Open::Message(i) | Open::Reasoning(i) | Open::Call(i) => i,
        };
        let item = self.output[idx].clone();
        self.emit(
            "response.output_item.done",
            json!({"output_index": idx, "item": item}),
            out,
        );
    }
}

fn append(v: &mut Value, s: &str) {
    if let Value::String(t) = v {
        t.push_str(s);
    } else {
        *v = Value::String(s.to_owned());
    }
}

impl StreamEncoder for Encoder {
    fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::Start { id, model } => {
                // The upstream's id, as in a whole answer (keygate's own `resp_…` only when the
                // upstream gave none).
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
                self.text(t, out);
            }
            StreamEvent::ThinkingDelta(t) => {
                self.start(out);
                self.thinking(t, out);
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                self.start(out);
                self.call_start(*index, id, name, out);
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                self.start(out);
                self.call_delta(*index, arguments, out);
            }
            StreamEvent::Finish(f) => self.finish = Some(*f),
            StreamEvent::Usage(t) => self.usage = Some(*t),
            StreamEvent::Error { message } => {
                self.start(out);
                let error = json!({"code": "server_error", "message": message});
                let r = self.snapshot("failed", Value::Null, error, self.output.clone());
                self.emit("response.failed", json!({"response": r}), out);
                self.done = true;
            }
            StreamEvent::End => {
                self.start(out);
                self.close(out);
                let (status, incomplete) = outcome(self.finish);
                let r = self.snapshot(status, incomplete, Value::Null, self.output.clone());
                let ty = if status == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                self.emit(ty, json!({"response": r}), out);
                self.done = true;
            }
        }
    }
}

/// Reads a Responses stream from an upstream.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    /// (item id, arguments sent so far) of each function call, in order: the position is the
    /// canonical index.
    calls: Vec<(String, String)>,
    ended: bool,
}

impl Decoder {
    fn start(&mut self, r: &Value, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: r["id"].as_str().unwrap_or_default().to_owned(),
                model: r["model"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }

    fn call(&self, item_id: &Value) -> Option<usize> {
        let id = item_id.as_str()?;
        self.calls.iter().position(|(i, _)| i == id)
    }

    /// Sends what of a call's final arguments the deltas did not (servers that send them whole).
    fn catch_up(&mut self, item_id: &Value, arguments: &Value, out: &mut Vec<StreamEvent>) {
        let (Some(index), Some(args)) = (self.call(item_id), arguments.as_str()) else {
            return;
        };
        let sent = &mut self.calls[index].1;
        if let Some(rest) = args.strip_prefix(sent.as_str())
            && !rest.is_empty()
        {
            out.push(StreamEvent::ToolCallDelta {
                index,
                arguments: rest.to_owned(),
            });
            sent.push_str(rest);
        }
    }
}

impl StreamDecoder for Decoder {
    fn event(&mut self, event: Option<&str>, data: &str, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        let ty = v["type"].as_str().or(event).unwrap_or_default();
        match ty {
            "response.created" | "response.in_progress" | "response.queued" => {
                self.start(&v["response"], out)
            }
            "response.output_item.added" if v["item"]["type"] == "function_call" => {
                self.start(&Value::Null, out);
                let item = &v["item"];
                let index = self.calls.len();
                self.calls.push((
                    item["id"].as_str().unwrap_or_default().to_owned(),
                    String::new(),
                ));
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: item["call_id"].as_str().unwrap_or_default().to_owned(),
                    name: item["name"].as_str().unwrap_or_default().to_owned(),
                });
                self.catch_up(&item["id"], &item["arguments"], out);
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                self.start(&Value::Null, out);
                if let Some(d) = v["delta"].as_str().filter(|d| !d.is_empty()) {
                    out.push(StreamEvent::TextDelta(d.to_owned()));
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                self.start(&Value::Null, out);
                if let Some(d) = v["delta"].as_str().filter(|d| !d.is_empty()) {
                    out.push(StreamEvent::ThinkingDelta(d.to_owned()));
                }
            }
            "response.function_call_arguments.delta" => {
                if let (Some(index), Some(d)) = (self.call(&v["item_id"]), v["delta"].as_str()) {
                    self.calls[index].1.push_str(d);
                    out.push(StreamEvent::ToolCallDelta {
                        index,
                        arguments: d.to_owned(),
                    });
                }
            }
            "response.function_call_arguments.done" => {
                self.catch_up(&v["item_id"], &v["arguments"], out)
            }
            "response.output_item.done" if v["item"]["type"] == "function_call" => {
                self.catch_up(&v["item"]["id"], &v["item"]["arguments"], out)
            }
            "response.completed" | "response.incomplete" => {
                let r = &v["response"];
                self.start(r, out);
                if let Some(t) = usage(r) {
                    out.push(StreamEvent::Usage(t));
                }
                out.push(StreamEvent::Finish(finish_of(r, !self.calls.is_empty())));
                out.push(StreamEvent::End);
                self.ended = true;
            }
            "response.failed" => {
                let message = v["response"]["error"]["message"]
                    .as_str()
                    .unwrap_or("the upstream's response failed")
                    .to_owned();
                out.push(StreamEvent::Error { message });
                self.ended = true;
            }
            "error" => {
                let message = v["message"]
                    .as_str()
                    .or(v["error"]["message"].as_str())
                    .unwrap_or("the upstream reported an error")
                    .to_owned();
                out.push(StreamEvent::Error { message });
                self.ended = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::canonical::Image;
    use crate::formats::openai::{self, UNSUPPORTED_KEY, refuse_extra};
    use crate::formats::sse::{SseEvent, SseReader};

    const REQUEST: &str = include_str!("../../tests/fixtures/responses/request.json");
    const RESPONSE: &str = include_str!("../../tests/fixtures/responses/response.json");
    const STREAM: &str = include_str!("../../tests/fixtures/responses/stream.txt");

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    fn sse(bytes: &[u8], step: usize) -> Vec<SseEvent> {
        let mut reader = SseReader::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            reader.feed(piece, &mut out);
        }
        reader.finish(&mut out);
        out
    }

    fn decode_stream(transcript: &[u8], step: usize) -> Vec<StreamEvent> {
        crate::formats::sse::decode_in_chunks(&mut Decoder::default(), transcript, step)
    }

    /// The client's stream as (event name, data) pairs, checking the framing on the way.
    fn encode_stream(req: &ChatRequest, events: &[StreamEvent]) -> Vec<(String, Value)> {
        let mut enc = Encoder::new(req);
        let mut bytes = Vec::new();
        for e in events {
            enc.encode(e, &mut bytes);
        }
        let out: Vec<(String, Value)> = sse(&bytes, bytes.len().max(1))
            .into_iter()
            .map(|e| (e.event.unwrap(), serde_json::from_str(&e.data).unwrap()))
            .collect();
        for (i, (name, data)) in out.iter().enumerate() {
            assert_eq!(
                &data["type"], name,
                "the event name repeats the data's type"
            );
            assert_eq!(data["sequence_number"], i, "sequence numbers count from 0");
        }
        out
    }

    fn canonical_answer() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: "msg_01".into(),
                model: "claude-sonnet-4-5".into(),
            },
            StreamEvent::ThinkingDelta("Two cities; ".into()),
            StreamEvent::ThinkingDelta("call twice.".into()),
            StreamEvent::TextDelta("Checking ".into()),
            StreamEvent::TextDelta("both cities.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_paris".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "{\"ci".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: "ty\":\"Paris\"}".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "toolu_rome".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{\"city\":\"Rome\"}".into(),
            },
            StreamEvent::Usage(Tokens {
                prompt: 328,
                completion: 52,
                cache_read: 256,
                cache_write: 0,
            }),
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::End,
        ]
    }

    #[test]
    fn a_responses_request_reads_into_the_canonical_model() {
        let req = decode_request(REQUEST.as_bytes()).unwrap();
        assert_eq!(req.model, "gpt-5-codex");
        assert_eq!(
            req.system,
            vec![
                Part::Text("You are a coding agent.".into()),
                Part::Text("Sandbox: read-only.".into())
            ]
        );
        assert_eq!(
            req.messages.len(),
            3,
            "user, assistant, tool results + user"
        );
        assert_eq!(
            req.messages[0].parts[1],
            Part::Image(Image::Base64 {
                media_type: "image/jpeg".into(),
                data: "/9j/4AAQ".into()
            })
        );
        // One assistant turn from its reasoning, message and function_call items.
        assert_eq!(
            req.messages[1],
            Message {
                role: Role::Assistant,
                parts: vec![
                    Part::Thinking {
                        text: "Need the file list.".into(),
                        signature: Some("gAAAAB-sig".into())
                    },
                    Part::Text("A terminal. Listing files.".into()),
                    Part::ToolCall {
                        id: "call_ls".into(),
                        name: "shell".into(),
                        arguments: "{\"command\":[\"ls\"]}".into()
                    }
                ]
            }
        );
        assert_eq!(
            req.messages[2].parts,
            vec![
                Part::ToolResult {
                    id: "call_ls".into(),
                    name: None,
                    content: vec![Part::Text("Cargo.toml\nsrc".into())],
                    is_error: false
                },
                Part::Text("Now as JSON.".into())
            ]
        );
        assert_eq!(req.tools.len(), 1);
        assert_eq!(req.tools[0].name, "shell");
        assert_eq!(req.tool_choice, Some(ToolChoice::Auto));
        assert_eq!(req.parallel_tool_calls, Some(false));
        assert_eq!(req.max_tokens, Some(2048));
        assert_eq!((req.temperature, req.top_p), (Some(0.5), Some(1.0)));
        assert!(matches!(&req.response_format,
            Some(ResponseFormat::JsonSchema { name, strict: Some(true), schema })
                if name == "files" && schema["type"] == "object"));
        assert!(req.stream && req.include_usage);
        assert_eq!(req.extra["reasoning_effort"], "medium");
        assert_eq!(req.extra["verbosity"], "low");
        assert_eq!(req.extra["tools"], json!([{"type": "web_search"}]));
        assert_eq!(req.extra["prompt_cache_key"], "session-1");
    }

    #[test]
    fn hosted_tools_and_file_inputs_are_kept_to_be_refused_not_dropped() {
        let req = decode_request(REQUEST.as_bytes()).unwrap();
        let e = refuse_extra(&req.extra, "Anthropic").unwrap_err();
        assert!(e.0.contains("hosted"), "{e}");
        assert!(openai::encode_request(&req).is_err());

        let body = json!({"model": "gpt-5", "input": [{"role": "user", "content": [
            {"type": "input_file", "file_id": "file-1"}]}], "previous_response_id": "resp_1"});
        let req = decode_request(body.to_string().as_bytes()).unwrap();
        assert_eq!(req.extra[UNSUPPORTED_KEY], json!(["file inputs"]));
        let mut without_files = req.extra.clone();
        without_files.remove(UNSUPPORTED_KEY);
        let e = refuse_extra(&without_files, "Gemini").unwrap_err();
        assert!(e.0.contains("previous_response_id"), "{e}");
    }

    #[test]
    fn a_string_input_is_one_user_message_and_goes_to_chat_completions() {
        let body = br#"{"model":"gpt-4.1","input":"Say hi","instructions":"Be brief",
            "max_output_tokens":20,"reasoning":{"effort":"low"},"text":{"format":{"type":"json_object"}}}"#;
        let req = decode_request(body).unwrap();
        assert_eq!(req.messages[0].parts, vec![Part::Text("Say hi".into())]);
        assert_eq!(req.response_format, Some(ResponseFormat::JsonObject));
        let chat = parse(&openai::encode_request(&req).unwrap());
        assert_eq!(
            chat,
            json!({"model": "gpt-4.1", "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "Say hi"}],
                "max_tokens": 20, "reasoning_effort": "low",
                "response_format": {"type": "json_object"}})
        );
    }

    fn golden_answer() -> ChatResponse {
        ChatResponse {
            id: "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b".into(),
            model: "claude-sonnet-4-5".into(),
            parts: vec![
                Part::Thinking {
                    text: "Two cities: call twice.".into(),
                    signature: Some("EqQBCkgIAR".into()),
                },
                Part::Text("Checking both cities.".into()),
                Part::ToolCall {
                    id: "toolu_paris".into(),
                    name: "get_weather".into(),
                    arguments: "{\"city\":\"Paris\"}".into(),
                },
                Part::ToolCall {
                    id: "toolu_rome".into(),
                    name: "get_weather".into(),
                    arguments: "{\"city\":\"Rome\"}".into(),
                },
            ],
            finish: Some(FinishReason::ToolCalls),
            usage: Some(Tokens {
                prompt: 328,
                completion: 52,
                cache_read: 256,
                cache_write: 0,
            }),
        }
    }

    #[test]
    fn a_canonical_answer_writes_the_golden_response_object() {
        assert_eq!(
            response_json(&golden_answer(), 1_741_476_542),
            parse(RESPONSE.as_bytes())
        );
    }

    #[test]
    fn the_golden_response_object_reads_back_to_the_same_answer() {
        assert_eq!(
            decode_response(RESPONSE.as_bytes()).unwrap(),
            golden_answer()
        );
        // And what encode_response writes reads back the same.
        let again = decode_response(&encode_response(&golden_answer())).unwrap();
        assert_eq!(again, golden_answer());
    }

    #[test]
    fn an_answer_cut_by_max_tokens_is_an_incomplete_response() {
        let mut a = golden_answer();
        a.finish = Some(FinishReason::Length);
        let v = response_json(&a, 0);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(
            decode_response(v.to_string().as_bytes()).unwrap().finish,
            Some(FinishReason::Length)
        );
    }

    #[test]
    fn the_encoder_writes_the_whole_responses_event_grammar() {
        let mut req = ChatRequest::new("claude-sonnet-4-5");
        req.stream = true;
        let events = encode_stream(&req, &canonical_answer());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let id = events[0].1["response"]["id"].as_str().unwrap();
        assert_eq!(id, "msg_01", "the upstream's id, as in a whole answer");
        assert_eq!(events[2].1["item"]["id"], "rs_01_0");
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        // Every item event names an item that was added at that output index.
        for (_, d) in &events {
            if let Some(item_id) = d["item_id"].as_str() {
                let i = d["output_index"].as_u64().unwrap() as usize;
                let added = events
                    .iter()
                    .filter(|(n, _)| n == "response.output_item.added")
                    .nth(i)
                    .unwrap();
                assert_eq!(added.1["item"]["id"], item_id);
            }
        }
        assert_eq!(events[13].1["text"], "Checking both cities.");
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["id"], id);
        assert_eq!(done["status"], "completed");
        assert_eq!(done["usage"]["input_tokens_details"]["cached_tokens"], 256);
        assert_eq!(done["usage"]["total_tokens"], 380);
        // The final output holds the same items a whole answer would.
        let output = done["output"].as_array().unwrap();
        assert_eq!(output.len(), 4);
        assert_eq!(output[2]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(output[3]["call_id"], "toolu_rome");
        assert!(
            output
                .iter()
                .all(|i| i["type"] == "reasoning" || i["status"] == "completed")
        );
    }

    #[test]
    fn the_recorded_upstream_stream_decodes_the_same_at_any_split() {
        let whole = decode_stream(STREAM.as_bytes(), STREAM.len());
        for step in [1, 3, 17, 250] {
            assert_eq!(
                decode_stream(STREAM.as_bytes(), step),
                whole,
                "split every {step}"
            );
        }
        assert_eq!(
            whole[0],
            StreamEvent::Start {
                id: "resp_68a1".into(),
                model: "gpt-5-2025-08-07".into()
            }
        );
        let text: String = whole
            .iter()
            .filter_map(|e| match e {
                StreamEvent::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Checking both cities — ☀️.");
        let args = |index: usize| -> String {
            whole
                .iter()
                .filter_map(|e| match e {
                    StreamEvent::ToolCallDelta {
                        index: i,
                        arguments,
                    } if *i == index => Some(arguments.as_str()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(args(0), "{\"city\":\"Paris\"}");
        assert_eq!(args(1), "{\"city\":\"Rome\"}");
        let n = whole.len();
        assert_eq!(
            whole[n - 3..],
            [
                StreamEvent::Usage(Tokens {
                    prompt: 328,
                    completion: 52,
                    cache_read: 256,
                    cache_write: 0
                }),
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::End
            ]
        );
    }

    #[test]
    fn what_the_encoder_writes_the_decoder_reads_back() {
        let events = canonical_answer();
        let mut enc = Encoder::new(&ChatRequest::new("m"));
        let mut bytes = Vec::new();
        for e in &events {
            enc.encode(e, &mut bytes);
        }
        let back = decode_stream(&bytes, 13);
        // Usage and Finish come back from the completed event, in that order.
        assert_eq!(
            back[0],
            StreamEvent::Start {
                id: "msg_01".into(),
                model: "claude-sonnet-4-5".into()
            }
        );
        let body = |evs: &[StreamEvent]| -> Vec<StreamEvent> {
            evs.iter()
                .filter(|e| !matches!(e, StreamEvent::Start { .. } | StreamEvent::ThinkingDelta(_)))
                .cloned()
                .collect()
        };
        assert_eq!(body(&back), body(&events));
        let thinking: String = back
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ThinkingDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(thinking, "Two cities; call twice.");
    }

    #[test]
    fn an_upstream_error_becomes_response_failed_and_ends_the_stream() {
        let events = encode_stream(
            &ChatRequest::new("m"),
            &[
                StreamEvent::TextDelta("par".into()),
                StreamEvent::Error {
                    message: "overloaded".into(),
                },
                StreamEvent::TextDelta("tial".into()),
                StreamEvent::End,
            ],
        );
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["message"], "overloaded");
        assert_eq!(
            events
                .iter()
                .filter(|(n, _)| n == "response.output_text.delta")
                .count(),
            1
        );
        let mut out = Vec::new();
        Decoder::default().event(Some("response.failed"), &last.to_string(), &mut out);
        assert_eq!(
            out,
            vec![StreamEvent::Error {
                message: "overloaded".into()
            }]
        );
        let mut out = Vec::new();
        Decoder::default().event(
            Some("error"),
            r#"{"type":"error","code":"rate_limit_exceeded","message":"slow down","sequence_number":3}"#,
            &mut out,
        );
        assert_eq!(
            out,
            vec![StreamEvent::Error {
                message: "slow down".into()
            }]
        );
    }

    #[test]
    fn a_sparse_upstream_still_gets_a_complete_stream() {
        // No Start, no Finish, no Usage: created, one item opened and closed, completed.
        let events = encode_stream(
            &ChatRequest::new("m"),
            &[StreamEvent::TextDelta("hi".into()), StreamEvent::End],
        );
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"response.created"));
        assert_eq!(names.last(), Some(&"response.completed"));
        assert!(names.contains(&"response.output_item.done"));
        assert_eq!(events.last().unwrap().1["response"]["usage"], Value::Null);
        let cut = encode_stream(
            &ChatRequest::new("m"),
            &[
                StreamEvent::TextDelta("hi".into()),
                StreamEvent::Finish(FinishReason::Length),
                StreamEvent::End,
            ],
        );
        assert_eq!(cut.last().unwrap().0, "response.incomplete");
    }

    #[test]
    fn call_arguments_sent_only_whole_in_the_done_event_still_stream() {
        let mut dec = Decoder::default();
        let mut out = Vec::new();
        dec.event(
            None,
            r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","id":"fc_1","call_id":"c1","name":"f","arguments":""}}"#,
            &mut out,
        );
        dec.event(
            None,
            r#"{"type":"response.function_call_arguments.done","item_id":"fc_1","output_index":0,"arguments":"{\"a\":1}"}"#,
            &mut out,
        );
        dec.event(
            None,
            r#"{"type":"response.output_item.done","output_index":0,"item":{"type":"function_call","id":"fc_1","call_id":"c1","name":"f","arguments":"{\"a\":1}"}}"#,
            &mut out,
        );
        assert_eq!(
            out[1..],
            [
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "c1".into(),
                    name: "f".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: "{\"a\":1}".into()
                }
            ]
        );
    }
}
