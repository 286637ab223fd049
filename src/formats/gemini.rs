//! Gemini wire format: `/v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
//! `:countTokens`, `:embedContent`, `:batchEmbedContents`, `/v1beta/models`.
//!
//! Also the translation of `generateContent` / `streamGenerateContent` to and from the canonical
//! chat model (see the conventions further down), and of embeddings to and from OpenAI's.
use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::canonical::{
    BadRequest, ChatRequest, ChatResponse, FinishReason, Image, Message, Part, ResponseFormat,
    Role, StreamDecoder, StreamEncoder, StreamEvent, Tool, ToolChoice, Unsupported,
};
use super::{Endpoint, count};
use crate::events::Tokens;
use crate::proxy::error::ErrorKind;

pub const DEFAULT_AUTH: (&str, &str) = ("x-goog-api-key", "{key}");

pub fn recognise(path: &str) -> Option<Endpoint> {
    let (version, rest) = path.split_once('/').unwrap_or((path, ""));
    if !version.starts_with("v1") {
        return None;
    }
    let m = rest.strip_prefix("models")?;
    if m.is_empty() {
        // `v1/models` is OpenAI's list; Gemini's is `v1beta/models`.
        return (version != "v1").then_some(Endpoint::Models);
    }
    let (model, method) = m.strip_prefix('/')?.split_once(':')?;
    Some(Endpoint::Gemini {
        model: model.to_string(),
        method: method.to_string(),
    })
}

/// Google's canonical status name for a gateway error.
pub fn status_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadAccessKey => "UNAUTHENTICATED",
        ErrorKind::SlugNotAllowed => "PERMISSION_DENIED",
        ErrorKind::UnknownSlug | ErrorKind::ModelNotAllowed => "NOT_FOUND",
        ErrorKind::BodyTooLarge | ErrorKind::BadRequest => "INVALID_ARGUMENT",
        ErrorKind::ClientTimeout | ErrorKind::UpstreamTimeout => "DEADLINE_EXCEEDED",
        ErrorKind::NoUsableKey => "UNAVAILABLE",
        ErrorKind::UpstreamRateLimited | ErrorKind::RateLimited | ErrorKind::BudgetExhausted => {
            "RESOURCE_EXHAUSTED"
        }
        ErrorKind::LoopDetected => "ABORTED",
        ErrorKind::EgressRefused => "FAILED_PRECONDITION",
        ErrorKind::UpstreamFailed | ErrorKind::Internal => "INTERNAL",
    }
}

pub fn error_body(kind: ErrorKind, message: &str) -> Value {
    json!({"error": {"code": kind.status().as_u16(), "message": message, "status": status_name(kind)}})
}

pub fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"error": {"code": 502, "message": message, "status": "INTERNAL"}});
    Bytes::from(super::sse_data(&v))
}

/// Gemini reports both rate limits and spent quotas as 429 RESOURCE_EXHAUSTED; only a billing
/// message means the key itself is spent.
pub fn quota_exhausted(_status: u16, body: &str) -> bool {
    body.contains("check your plan and billing details") || body.contains("quota_exceeded")
}

/// `usageMetadata`: `promptTokenCount` (cached content included), `candidatesTokenCount` plus
/// `thoughtsTokenCount` (both billed as output), `cachedContentTokenCount`.
pub fn usage(v: &Value) -> Option<Tokens> {
    let g = &v["usageMetadata"];
    if !g.is_object() {
        return None;
    }
    Some(Tokens {
        prompt: count(&g["promptTokenCount"]),
        completion: count(&g["candidatesTokenCount"]) + count(&g["thoughtsTokenCount"]),
        cache_read: count(&g["cachedContentTokenCount"]),
        cache_write: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Translation: Gemini `generateContent` / `streamGenerateContent` <-> the canonical chat model.
//
// Conventions of this file, beyond `canonical`'s:
// - Field names are read in Google's camelCase and in the snake_case its REST examples also use
//   (`inline_data`, `function_call`, ...); written in camelCase.
// - Gemini function calls carry no id (newer models may send `id`, which is kept). Decoding makes
//   ids: `call_<n>` in a request (a `functionResponse` takes the id of the earliest unanswered call
//   of the same name), `call_<responseId>_<n>` in an answer, so ids of different turns differ.
//   Encoding a `ToolResult` for Gemini needs the function name: `ToolResult.name`, else the name
//   of the latest earlier `ToolCall` with that id, else `Unsupported`.
// - Thought signatures: a `thought: true` text part is `Thinking { text, signature }`. A signature
//   on any other part (Gemini 3 signs `functionCall` parts) becomes a `Thinking` with EMPTY text
//   just before that part; encoders of this file attach such a signature to the part that follows.
//   Thinking parts with text are not sent upstream to Gemini (it does not need them, and a
//   foreign signature would fail its validation).
// - Tool parameters are sent as `parametersJsonSchema` (full JSON Schema: OpenAI and Anthropic
//   schemas carry `additionalProperties`, `$schema`, ... which Gemini's OpenAPI-subset
//   `parameters` rejects); read from either. OpenAPI upper-case types (`OBJECT`) are lower-cased
//   when read, so other formats get plain JSON Schema.
// - `extra` from a Gemini client: unknown top-level fields (`safetySettings`, `cachedContent`,
//   ...), non-function tools under `extra["tools"]` (`googleSearch`, `codeExecution`, ...) and the
//   generationConfig fields keygate does not model under `extra["generationConfig"]`
//   (`candidateCount`, `seed`, `thinkingConfig`, `responseModalities`, `responseLogprobs`, ...).
//   Encoders of other formats must refuse `extra.generationConfig.candidateCount > 1`,
//   `responseLogprobs`, non-text `responseModalities` and `extra.tools`.
// - `encode_request` maps the other formats' extras it knows (`seed`, `presence_penalty`,
//   `frequency_penalty`, Anthropic `thinking`) and refuses `n > 1`, `logprobs`, `top_logprobs`,
//   `audio` and audio `modalities` (see `REFUSED`). `parallel_tool_calls` and `user` have no
//   Gemini field and are ignored: neither changes what a valid answer looks like.

/// Gemini 3 rejects replayed `functionCall` parts without a thought signature; Google documents
/// this sentinel for histories that come from elsewhere (another model or format).
const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

fn snake(camel: &str) -> String {
    let mut s = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            s.push('_');
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(c);
        }
    }
    s
}

fn camel(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    let mut up = false;
    for c in key.chars() {
        if c == '_' {
            up = true;
        } else if up {
            s.push(c.to_ascii_uppercase());
            up = false;
        } else {
            s.push(c);
        }
    }
    s
}

/// `v[camel]`, or `v[snake_case]` as Google's REST examples write it; Null when absent.
fn field<'a>(v: &'a Value, camel_name: &str) -> &'a Value {
    match v.get(camel_name) {
        Some(x) => x,
        None => v.get(snake(camel_name)).unwrap_or(&Value::Null),
    }
}

fn generated_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn strip_models(name: &str) -> &str {
    name.strip_prefix("models/").unwrap_or(name)
}

/// OpenAPI-style schemas (Gemini `parameters`, `responseSchema`) write types upper-case.
fn lower_types(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = match (k.as_str(), x) {
                        ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                        _ => lower_types(x),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(lower_types).collect()),
        x => x.clone(),
    }
}

/// Call ids for one request or answer (see the conventions above).
struct CallIds {
    prefix: String,
    next: usize,
    /// Calls without a result yet: (name, id).
    pending: Vec<(String, String)>,
}

impl CallIds {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            next: 0,
            pending: Vec::new(),
        }
    }

    fn fresh(&mut self) -> String {
        let id = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        id
    }

    fn call(&mut self, given: Option<&str>, name: &str) -> String {
        let id = match given {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => self.fresh(),
        };
        self.pending.push((name.to_string(), id.clone()));
        id
    }

    fn result(&mut self, given: Option<&str>, name: &str) -> String {
        if let Some(id) = given.filter(|id| !id.is_empty()) {
            self.pending.retain(|(_, i)| i != id);
            return id.to_string();
        }
        match self.pending.iter().position(|(n, _)| n == name) {
            Some(p) => self.pending.remove(p).1,
            None => self.fresh(),
        }
    }
}

// ----- decoding parts -------------------------------------------------------------------------

fn decode_parts(parts: &Value, ids: &mut CallIds, out: &mut Vec<Part>) -> Result<(), BadRequest> {
    let Some(parts) = parts.as_array() else {
        return if parts.is_null() {
            Ok(())
        } else {
            Err(bad("`parts` must be an array"))
        };
    };
    for p in parts {
        decode_part(p, ids, out)?;
    }
    Ok(())
}

fn decode_part(p: &Value, ids: &mut CallIds, out: &mut Vec<Part>) -> Result<(), BadRequest> {
    let signature = field(p, "thoughtSignature").as_str().map(str::to_string);
    let thought = field(p, "thought").as_bool().unwrap_or(false);
    if let Some(text) = p.get("text").and_then(Value::as_str) {
        if thought {
            out.push(Part::Thinking {
                text: text.to_string(),
                signature,
            });
            return Ok(());
        }
        push_signature(signature, out);
        if !text.is_empty() {
            out.push(Part::Text(text.to_string()));
        }
        return Ok(());
    }
    push_signature(signature, out);
    let inline = field(p, "inlineData");
    if inline.is_object() {
        // Any media type: the canonical model has only `Image`; encoders check `media_type`.
        out.push(Part::Image(Image::Base64 {
            media_type: field(inline, "mimeType")
                .as_str()
                .unwrap_or("application/octet-stream")
                .to_string(),
            data: inline["data"].as_str().unwrap_or_default().to_string(),
        }));
        return Ok(());
    }
    let file = field(p, "fileData");
    if file.is_object() {
        let uri = field(file, "fileUri")
            .as_str()
            .ok_or_else(|| bad("`fileData.fileUri` is required"))?;
        out.push(Part::Image(Image::Url(uri.to_string())));
        return Ok(());
    }
    let call = field(p, "functionCall");
    if call.is_object() {
        let name = call["name"]
            .as_str()
            .ok_or_else(|| bad("`functionCall.name` is required"))?;
        let args = match &call["args"] {
            Value::Null => "{}".to_string(),
            a => a.to_string(),
        };
        out.push(Part::ToolCall {
            id: ids.call(call["id"].as_str(), name),
            name: name.to_string(),
            arguments: args,
        });
        return Ok(());
    }
    let resp = field(p, "functionResponse");
    if resp.is_object() {
        let name = resp["name"]
            .as_str()
            .ok_or_else(|| bad("`functionResponse.name` is required"))?;
        let (text, is_error) = response_text(&resp["response"]);
        let mut content = vec![Part::Text(text)];
        // Gemini 3 multimodal function responses carry media in `parts`.
        if let Some(parts) = resp["parts"].as_array() {
            for p in parts {
                decode_part(p, ids, &mut content)?;
            }
        }
        out.push(Part::ToolResult {
            id: ids.result(resp["id"].as_str(), name),
            name: Some(name.to_string()),
            content,
            is_error,
        });
        return Ok(());
    }
    // Code execution output has no canonical part; it stays readable as text.
    let code = field(p, "executableCode");
    if code.is_object() {
        let lang = code["language"].as_str().unwrap_or("").to_ascii_lowercase();
        let code = code["code"].as_str().unwrap_or_default();
        out.push(Part::Text(format!("```{lang}\n{code}\n```")));
        return Ok(());
    }
    let result = field(p, "codeExecutionResult");
    if result.is_object() {
        out.push(Part::Text(
            result["output"].as_str().unwrap_or_default().to_string(),
        ));
    }
    // Anything else (`videoMetadata` alone, future part kinds) carries no content keygate models.
    Ok(())
}

fn push_signature(signature: Option<String>, out: &mut Vec<Part>) {
    if let Some(sig) = signature {
        out.push(Part::Thinking {
            text: String::new(),
            signature: Some(sig),
        });
    }
}

/// A `functionResponse.response` as result text: `{"content": x}` and `{"error": x}` unwrap (the
/// latter marks an error), strings stay as they are, other objects become their JSON text.
fn response_text(r: &Value) -> (String, bool) {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    if let Some(m) = r.as_object()
        && m.len() == 1
    {
        if let Some(v) = m.get("content").or_else(|| m.get("output")) {
            return (text(v), false);
        }
        if let Some(v) = m.get("error") {
            return (text(v), true);
        }
    }
    (text(r), false)
}

fn decode_finish(reason: &str, tool_calls: bool) -> Option<FinishReason> {
    Some(match reason {
        "" | "FINISH_REASON_UNSPECIFIED" => return None,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        // STOP, and the reasons with no canonical match (OTHER, LANGUAGE,
        // MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, ...): the answer simply ended.
        _ if tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    })
}

fn encode_finish(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::StopSequence | FinishReason::ToolCalls => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter => "SAFETY",
    }
}

fn usage_json(t: &Tokens) -> Value {
    let mut u = json!({
        "promptTokenCount": t.prompt,
        "candidatesTokenCount": t.completion,
        "totalTokenCount": t.prompt.saturating_add(t.completion),
    });
    if t.cache_read > 0 {
        u["cachedContentTokenCount"] = json!(t.cache_read);
    }
    u
}

// ----- as the client's format ---------------------------------------------------------------

/// A Gemini client's `generateContent` body; `model` and `stream` come from the path.
pub fn decode_request(body: &[u8], model: &str, stream: bool) -> Result<ChatRequest, BadRequest> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let Value::Object(obj) = &v else {
        return Err(bad("the request body must be a JSON object"));
    };
    let mut req = ChatRequest::new(strip_models(model));
    req.stream = stream;
    for (k, val) in obj {
        match camel(k).as_str() {
            "contents" | "model" => {}
            "systemInstruction" => req.system = decode_system(val)?,
            "generationConfig" => decode_generation_config(val, &mut req)?,
            "tools" => decode_tools(val, &mut req)?,
            "toolConfig" => req.tool_choice = decode_tool_config(val),
            _ => {
                req.extra.insert(k.clone(), val.clone());
            }
        }
    }
    let mut ids = CallIds::new("call_".into());
    let Some(contents) = field(&v, "contents").as_array() else {
        return Err(bad("`contents` must be an array"));
    };
    for c in contents {
        let role = match c["role"].as_str() {
            Some("model") => Role::Assistant,
            // `user`, absent, and the legacy `function` role of function responses.
            _ => Role::User,
        };
        let mut parts = Vec::new();
        decode_parts(&c["parts"], &mut ids, &mut parts)?;
        req.messages.push(Message { role, parts });
    }
    Ok(req)
}

fn decode_system(v: &Value) -> Result<Vec<Part>, BadRequest> {
    let mut parts = Vec::new();
    match v {
        Value::String(s) => parts.push(Part::Text(s.clone())),
        v => decode_parts(&v["parts"], &mut CallIds::new("call_".into()), &mut parts)?,
    }
    Ok(parts)
}

fn decode_generation_config(v: &Value, req: &mut ChatRequest) -> Result<(), BadRequest> {
    let Value::Object(g) = v else {
        return Err(bad("`generationConfig` must be an object"));
    };
    let mut rest = Map::new();
    let mut mime = None;
    let mut schema = None;
    for (k, val) in g {
        match camel(k).as_str() {
            "temperature" => req.temperature = val.as_f64(),
            "topP" => req.top_p = val.as_f64(),
            "topK" => req.top_k = val.as_f64().map(|k| k as u64),
            "maxOutputTokens" => req.max_tokens = val.as_u64(),
            "stopSequences" => {
                req.stop = val
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            }
            "responseMimeType" => mime = val.as_str().map(str::to_string),
            "responseSchema" => schema = Some(lower_types(val)),
            // `ResponseJsonSchema` is the legacy `_responseJsonSchema` after `camel`.
            "responseJsonSchema" | "ResponseJsonSchema" => schema = Some(val.clone()),
            _ => {
                rest.insert(k.clone(), val.clone());
            }
        }
    }
    match mime.as_deref() {
        Some("application/json") => {
            req.response_format = Some(match schema {
                Some(schema) => ResponseFormat::JsonSchema {
                    name: "response".into(),
                    schema,
                    strict: None,
                },
                None => ResponseFormat::JsonObject,
            })
        }
        Some("text/plain") => req.response_format = Some(ResponseFormat::Text),
        None => {}
        // `text/x.enum` and the like: Gemini-only.
        Some(m) => {
            rest.insert("responseMimeType".into(), json!(m));
            if let Some(s) = schema {
                rest.insert("responseJsonSchema".into(), s);
            }
        }
    }
    if !rest.is_empty() {
        req.extra
            .insert("generationConfig".into(), Value::Object(rest));
    }
    Ok(())
}

fn decode_tools(v: &Value, req: &mut ChatRequest) -> Result<(), BadRequest> {
    let Some(tools) = v.as_array() else {
        return Err(bad("`tools` must be an array"));
    };
    let mut other = Vec::new();
    for t in tools {
        let decls = field(t, "functionDeclarations");
        let Some(decls) = decls.as_array() else {
            other.push(t.clone());
            continue;
        };
        for d in decls {
            let name = d["name"]
                .as_str()
                .ok_or_else(|| bad("`functionDeclarations[].name` is required"))?;
            let params = match field(d, "parametersJsonSchema") {
                Value::Null => lower_types(field(d, "parameters")),
                p => p.clone(),
            };
            req.tools.push(Tool {
                name: name.to_string(),
                description: d["description"].as_str().map(str::to_string),
                parameters: params,
            });
        }
    }
    if !other.is_empty() {
        req.extra.insert("tools".into(), Value::Array(other));
    }
    Ok(())
}

fn decode_tool_config(v: &Value) -> Option<ToolChoice> {
    let c = field(v, "functionCallingConfig");
    let allowed: Vec<&str> = field(c, "allowedFunctionNames")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    Some(match c["mode"].as_str()? {
        "NONE" => ToolChoice::None,
        // More than one allowed name cannot be said canonically: any tool is required.
        "ANY" if allowed.len() == 1 => ToolChoice::Tool(allowed[0].to_string()),
        "ANY" => ToolChoice::Required,
        // AUTO, VALIDATED.
        _ => ToolChoice::Auto,
    })
}

/// Parts of a Gemini answer, from canonical ones (calls keep their ids so a Gemini client can
/// echo them in `functionResponse.id`).
fn answer_parts(parts: &[Part]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut sig: Option<&str> = None;
    for p in parts {
        let mut v = match p {
            Part::Thinking { text, signature } if text.is_empty() => {
                sig = signature.as_deref().or(sig);
                continue;
            }
            Part::Thinking { text, signature } => {
                let mut v = json!({"text": text, "thought": true});
                if let Some(s) = signature {
                    v["thoughtSignature"] = json!(s);
                }
                v
            }
            Part::Text(t) => json!({"text": t}),
            Part::ToolCall {
                id,
                name,
                arguments,
            } => json!({"functionCall": {"id": id, "name": name, "args": args_object(arguments)}}),
            Part::Image(Image::Base64 { media_type, data }) => {
                json!({"inlineData": {"mimeType": media_type, "data": data}})
            }
            Part::Image(Image::Url(u)) => json!({"fileData": {"fileUri": u}}),
            // Not part of an answer.
            Part::ToolResult { .. } => continue,
        };
        if let Some(s) = sig.take() {
            v["thoughtSignature"] = json!(s);
        }
        out.push(v);
    }
    if let Some(s) = sig {
        out.push(json!({"text": "", "thoughtSignature": s}));
    }
    out
}

/// `functionCall.args` must be an object. Arguments that are not one (a call cut short by the
/// token limit) keep their text under `_raw_arguments` rather than vanish.
fn args_object(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({"_raw_arguments": arguments}),
    }
}

fn response_json(resp: &ChatResponse) -> Value {
    let mut cand = json!({
        "content": {"role": "model", "parts": answer_parts(&resp.parts)},
        "index": 0,
    });
    if let Some(f) = resp.finish {
        cand["finishReason"] = json!(encode_finish(f));
    }
    let mut v = json!({
        "candidates": [cand],
        "modelVersion": resp.model,
        "responseId": resp.id,
    });
    if let Some(u) = &resp.usage {
        v["usageMetadata"] = usage_json(u);
    }
    v
}

/// A whole `generateContent` answer.
pub fn encode_response(resp: &ChatResponse) -> Vec<u8> {
    serde_json::to_vec(&response_json(resp)).unwrap_or_default()
}

/// Writes a Gemini client's stream: with `sse`, `data: <GenerateContentResponse>\r\n\r\n` events
/// (`?alt=sse`); without, one JSON array (`[`, elements separated by `,\r\n`, `]`). Text and
/// thinking deltas go out as they come; tool calls are held until their arguments are complete
/// (Gemini has no argument deltas) and go out together as `functionCall` parts; the last element
/// carries `finishReason` and `usageMetadata`.
pub struct Encoder {
    sse: bool,
    id: String,
    model: String,
    /// Elements written so far (array form: the next needs a separator).
    written: usize,
    /// Tool calls whose arguments are still arriving: index -> (id, name, arguments).
    calls: BTreeMap<usize, (String, String, String)>,
    usage: Option<Tokens>,
    finish: Option<FinishReason>,
    done: bool,
}

impl Encoder {
    pub fn new(req: &ChatRequest, sse: bool) -> Self {
        Self {
            sse,
            id: generated_id(),
            model: req.model.clone(),
            written: 0,
            calls: Default::default(),
            usage: None,
            finish: None,
            done: false,
        }
    }

    fn element(&mut self, v: &Value, out: &mut Vec<u8>) {
        if self.sse {
            out.extend_from_slice(format!("data: {v}\r\n\r\n").as_bytes());
        } else {
            out.extend_from_slice(if self.written == 0 { b"[" } else { b",\r\n" });
            out.extend_from_slice(v.to_string().as_bytes());
        }
        self.written += 1;
    }

    fn parts(&mut self, parts: Vec<Value>, out: &mut Vec<u8>) {
        let v = json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": self.model,
            "responseId": self.id,
        });
        self.element(&v, out);
    }

    fn flush_calls(&mut self, out: &mut Vec<u8>) {
        if self.calls.is_empty() {
            return;
        }
        let parts = std::mem::take(&mut self.calls)
            .into_values()
            .map(|(id, name, args)| {
                json!({"functionCall": {"id": id, "name": name, "args": args_object(&args)}})
            })
            .collect();
        self.parts(parts, out);
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if !self.sse {
            if self.written == 0 {
                out.push(b'[');
            }
            out.push(b']');
        }
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
                if !id.is_empty() {
                    self.id = id.clone();
                }
                if !model.is_empty() {
                    self.model = model.clone();
                }
            }
            StreamEvent::TextDelta(t) if !t.is_empty() => {
                self.flush_calls(out);
                self.parts(vec![json!({"text": t})], out);
            }
            StreamEvent::ThinkingDelta(t) if !t.is_empty() => {
                self.flush_calls(out);
                self.parts(vec![json!({"text": t, "thought": true})], out);
            }
            StreamEvent::TextDelta(_) | StreamEvent::ThinkingDelta(_) => {}
            StreamEvent::ToolCallStart { index, id, name } => {
                self.calls
                    .insert(*index, (id.clone(), name.clone(), String::new()));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some(c) = self.calls.get_mut(index) {
                    c.2.push_str(arguments);
                }
            }
            StreamEvent::Usage(u) => self.usage = Some(*u),
            StreamEvent::Finish(f) => {
                self.finish = Some(*f);
                self.flush_calls(out);
            }
            StreamEvent::End => {
                self.flush_calls(out);
                let mut v = json!({
                    "candidates": [{
                        "content": {"role": "model", "parts": [{"text": ""}]},
                        "finishReason": encode_finish(self.finish.unwrap_or(FinishReason::Stop)),
                        "index": 0,
                    }],
                    "modelVersion": self.model,
                    "responseId": self.id,
                });
                if let Some(u) = &self.usage {
                    v["usageMetadata"] = usage_json(u);
                }
                self.element(&v, out);
                self.close(out);
            }
            StreamEvent::Error { message } => {
                let v = json!({"error": {"code": 502, "message": message, "status": "INTERNAL"}});
                self.element(&v, out);
                self.close(out);
            }
        }
    }
}

/// The `models.list` body for these model ids.
pub fn encode_models(ids: &[String]) -> Vec<u8> {
    let models: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "name": format!("models/{id}"),
                "displayName": id,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "models": models })).unwrap_or_default()
}

// ----- as the upstream's format -------------------------------------------------------------

/// Extra keys of other formats that Gemini cannot honour through translation.
const REFUSED: &[&str] = &["n", "logprobs", "top_logprobs", "audio", "modalities"];

/// The `generateContent` body for a canonical request (the path carries model and streaming).
pub fn encode_request(req: &ChatRequest) -> Result<Vec<u8>, Unsupported> {
    let mut body = Map::new();
    let mut gen_config = Map::new();

    for (k, v) in &req.extra {
        match k.as_str() {
            "n" | "candidateCount" if v.as_u64().unwrap_or(1) > 1 => {
                return Err(Unsupported::new(
                    "more than one choice (`n` > 1) is not supported through translation",
                ));
            }
            "logprobs" | "top_logprobs"
                if !(v.is_null() || v == &json!(false) || v == &json!(0)) =>
            {
                return Err(Unsupported::new(
                    "logprobs are not supported through translation to Gemini",
                ));
            }
            "audio" if !v.is_null() => {
                return Err(Unsupported::new(
                    "audio output is not supported through translation",
                ));
            }
            "modalities"
                if v.as_array()
                    .is_some_and(|m| m.iter().any(|x| x.as_str() != Some("text"))) =>
            {
                return Err(Unsupported::new(
                    "output modalities other than text are not supported through translation",
                ));
            }
            k if REFUSED.contains(&k) => {}
            "seed" => {
                gen_config.insert("seed".into(), v.clone());
            }
            "presence_penalty" => {
                gen_config.insert("presencePenalty".into(), v.clone());
            }
            "frequency_penalty" => {
                gen_config.insert("frequencyPenalty".into(), v.clone());
            }
            // Anthropic extended thinking.
            "thinking" if v["type"] == "enabled" => {
                let mut t = json!({"includeThoughts": true});
                if let Some(b) = v["budget_tokens"].as_u64() {
                    t["thinkingBudget"] = json!(b);
                }
                gen_config.insert("thinkingConfig".into(), t);
            }
            // Gemini's own fields (a Gemini client's body, see the conventions above).
            "generationConfig" => {
                for (gk, gv) in v.as_object().into_iter().flatten() {
                    gen_config.insert(gk.clone(), gv.clone());
                }
            }
            "safetySettings" | "safety_settings" | "cachedContent" | "cached_content"
            | "labels" => {
                body.insert(camel(k), v.clone());
            }
            _ => {}
        }
    }

    if !req.system.is_empty() {
        let mut parts = Vec::new();
        for p in &req.system {
            match p {
                Part::Text(t) => parts.push(json!({"text": t})),
                _ => {
                    return Err(Unsupported::new(
                        "Gemini system instructions take text only",
                    ));
                }
            }
        }
        body.insert(
            "systemInstruction".into(),
            json!({"role": "user", "parts": parts}),
        );
    }

    let sign = needs_signatures(&req.model);
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut contents: Vec<Value> = Vec::new();
    for m in &req.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        let mut parts = request_parts(&m.parts, &mut names)?;
        if parts.is_empty() {
            continue;
        }
        // Gemini wants one content per turn: parallel calls' responses must sit together.
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(a) = last["parts"].as_array_mut() {
                    a.append(&mut parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    if sign {
        for c in contents.iter_mut().filter(|c| c["role"] == "model") {
            let Some(parts) = c["parts"].as_array_mut() else {
                continue;
            };
            let calls = || parts.iter().filter(|p| p.get("functionCall").is_some());
            if calls().all(|p| p.get("thoughtSignature").is_none())
                && let Some(first) = parts.iter_mut().find(|p| p.get("functionCall").is_some())
            {
                first["thoughtSignature"] = json!(SKIP_SIGNATURE);
            }
        }
    }
    body.insert("contents".into(), Value::Array(contents));

    if let Some(t) = req.temperature {
        gen_config.insert("temperature".into(), json!(t));
    }
    if let Some(t) = req.top_p {
        gen_config.insert("topP".into(), json!(t));
    }
    if let Some(t) = req.top_k {
        gen_config.insert("topK".into(), json!(t));
    }
    if let Some(t) = req.max_tokens {
        gen_config.insert("maxOutputTokens".into(), json!(t));
    }
    if !req.stop.is_empty() {
        gen_config.insert("stopSequences".into(), json!(req.stop));
    }
    match &req.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            gen_config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            gen_config.insert("responseMimeType".into(), json!("application/json"));
            gen_config.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if !gen_config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(gen_config));
    }

    let mut tools = Vec::new();
    if !req.tools.is_empty() {
        let decls: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name});
                if let Some(desc) = &t.description {
                    d["description"] = json!(desc);
                }
                if !t.parameters.is_null() {
                    d["parametersJsonSchema"] = t.parameters.clone();
                }
                d
            })
            .collect();
        tools.push(json!({ "functionDeclarations": decls }));
    }
    if let Some(Value::Array(other)) = req.extra.get("tools") {
        tools.extend(other.iter().cloned());
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &req.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert(
            "toolConfig".into(),
            json!({ "functionCallingConfig": config }),
        );
    }
    serde_json::to_vec(&Value::Object(body)).map_err(|e| Unsupported::new(e.to_string()))
}

/// Gemini 3 and later validate thought signatures on replayed function calls.
fn needs_signatures(model: &str) -> bool {
    let m = strip_models(model);
    let Some(rest) = m.strip_prefix("gemini-") else {
        return false;
    };
    let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
    major.parse::<u32>().is_ok_and(|n| n >= 3)
}

fn request_parts<'a>(
    parts: &'a [Part],
    names: &mut HashMap<&'a str, &'a str>,
) -> Result<Vec<Value>, Unsupported> {
    let mut out = Vec::new();
    let mut media = Vec::new();
    let mut sig: Option<&str> = None;
    for p in parts {
        let mut v = match p {
            Part::Text(t) => json!({"text": t}),
            Part::Image(img) => image_part(img)?,
            Part::Thinking { text, signature } => {
                if text.is_empty() {
                    sig = signature.as_deref().or(sig);
                }
                continue;
            }
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                names.insert(id, name);
                let args = if arguments.trim().is_empty() {
                    json!({})
                } else {
                    match serde_json::from_str::<Value>(arguments) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => {
                            return Err(Unsupported::new(format!(
                                "the arguments of tool call `{name}` are not a JSON object, which Gemini requires"
                            )));
                        }
                    }
                };
                json!({"functionCall": {"name": name, "args": args}})
            }
            Part::ToolResult {
                id,
                name,
                content,
                is_error,
            } => {
                let name = match name.as_deref().or_else(|| names.get(id.as_str()).copied()) {
                    Some(n) => n,
                    None => {
                        return Err(Unsupported::new(format!(
                            "Gemini needs the function name of tool result `{id}`, and no earlier tool call has that id"
                        )));
                    }
                };
                let mut text = String::new();
                for c in content {
                    match c {
                        Part::Text(t) => {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(t);
                        }
                        // Media of a result follows the responses in the same turn.
                        Part::Image(img) => media.push(image_part(img)?),
                        _ => {}
                    }
                }
                json!({"functionResponse": {"name": name, "response": result_object(&text, *is_error)}})
            }
        };
        if let Some(s) = sig.take() {
            v["thoughtSignature"] = json!(s);
        }
        out.push(v);
    }
    out.append(&mut media);
    Ok(out)
}

/// `functionResponse.response` must be an object: a JSON object result goes as it is, anything
/// else as `{"content": ...}` (`{"error": ...}` for a failed call).
fn result_object(text: &str, is_error: bool) -> Value {
    let parsed = serde_json::from_str::<Value>(text).ok();
    if is_error {
        return json!({"error": parsed.filter(Value::is_object).unwrap_or_else(|| json!(text))});
    }
    match parsed {
        Some(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    }
}

fn image_part(img: &Image) -> Result<Value, Unsupported> {
    match img {
        Image::Base64 { media_type, data } => {
            Ok(json!({"inlineData": {"mimeType": media_type, "data": data}}))
        }
        Image::Url(url) => {
            if let Some(rest) = url.strip_prefix("data:") {
                // `data:<mime>;base64,<data>`: inline after all.
                let (meta, data) = rest.split_once(',').unwrap_or((rest, ""));
                let Some(mime) = meta.strip_suffix(";base64") else {
                    return Err(Unsupported::new(
                        "data URLs must be base64-encoded for Gemini",
                    ));
                };
                return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
            }
            let gemini_file = url.starts_with("https://generativelanguage.googleapis.com/")
                && url.contains("/files/");
            if !(url.starts_with("gs://") || gemini_file) {
                return Err(Unsupported::new(
                    "image URLs are not supported by Gemini; send the image as base64",
                ));
            }
            let mut f = json!({ "fileUri": url });
            if let Some(m) = mime_of(url) {
                f["mimeType"] = json!(m);
            }
            Ok(json!({ "fileData": f }))
        }
    }
}

fn mime_of(url: &str) -> Option<&'static str> {
    let ext = url.rsplit('.').next()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// A whole `generateContent` answer of a Gemini upstream (first candidate).
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, BadRequest> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("unreadable Gemini answer: {e}")))?;
    if !v.is_object() {
        return Err(bad("a Gemini answer must be a JSON object"));
    }
    let id = match v["responseId"].as_str() {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => generated_id(),
    };
    let cand = &v["candidates"][0];
    let mut ids = CallIds::new(format!("call_{id}_"));
    let mut parts = Vec::new();
    decode_parts(&cand["content"]["parts"], &mut ids, &mut parts)?;
    let calls = parts.iter().any(|p| matches!(p, Part::ToolCall { .. }));
    let finish = match cand["finishReason"].as_str() {
        Some(r) => decode_finish(r, calls),
        // No candidate at all: the prompt itself was blocked.
        None if v["promptFeedback"]["blockReason"].is_string() => Some(FinishReason::ContentFilter),
        None => None,
    };
    Ok(ChatResponse {
        id,
        model: v["modelVersion"].as_str().unwrap_or_default().to_string(),
        parts,
        finish,
        usage: usage(&v),
    })
}

/// Reads a Gemini upstream's stream: one `GenerateContentResponse` per SSE event (`?alt=sse`), or
/// one element of the JSON-array stream (a leading `[` or `,` and a trailing `]` are tolerated).
/// Emits `Start` before the first content, text as `TextDelta`, thoughts as `ThinkingDelta`, each
/// `functionCall` as `ToolCallStart` plus ONE `ToolCallDelta` holding its whole `args` JSON,
/// `usageMetadata` as `Usage` (when it changed) and then `finishReason` as `Finish`; an `error`
/// object as `Error`. It never emits `End`: Gemini's stream has no end marker, the body just
/// ends, so the caller emits `End` when it does.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    id: String,
    next_call: usize,
    tool_calls: bool,
    finished: bool,
    usage: Option<Tokens>,
}

impl StreamDecoder for Decoder {
    fn event(&mut self, _event: Option<&str>, data: &str, out: &mut Vec<StreamEvent>) {
        let mut d = data.trim();
        d = d.strip_prefix('[').unwrap_or(d).trim_start();
        d = d.strip_prefix(',').unwrap_or(d).trim_start();
        d = d.strip_suffix(']').unwrap_or(d).trim_end();
        if d.is_empty() {
            return;
        }
        let v: Value = match serde_json::from_str(d) {
            Ok(v) => v,
            Err(e) => {
                out.push(StreamEvent::Error {
                    message: format!("unreadable Gemini stream event: {e}"),
                });
                return;
            }
        };
        if v["error"].is_object() {
            out.push(StreamEvent::Error {
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or("Gemini reported an error")
                    .to_string(),
            });
            return;
        }
        if !self.started {
            self.started = true;
            self.id = match v["responseId"].as_str() {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => generated_id(),
            };
            out.push(StreamEvent::Start {
                id: self.id.clone(),
                model: v["modelVersion"].as_str().unwrap_or_default().to_string(),
            });
        }
        let cand = &v["candidates"][0];
        for p in cand["content"]["parts"].as_array().into_iter().flatten() {
            if let Some(text) = p.get("text").and_then(Value::as_str) {
                // Empty text parts carry only a thought signature.
                if text.is_empty() {
                    continue;
                }
                if field(p, "thought").as_bool().unwrap_or(false) {
                    out.push(StreamEvent::ThinkingDelta(text.to_string()));
                } else {
                    out.push(StreamEvent::TextDelta(text.to_string()));
                }
                continue;
            }
            let call = field(p, "functionCall");
            if let Some(name) = call["name"].as_str() {
                let index = self.next_call;
                self.next_call += 1;
                self.tool_calls = true;
                let id = match call["id"].as_str() {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ => format!("call_{}_{index}", self.id),
                };
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id,
                    name: name.to_string(),
                });
                let args = match &call["args"] {
                    Value::Null => "{}".to_string(),
                    a => a.to_string(),
                };
                out.push(StreamEvent::ToolCallDelta {
                    index,
                    arguments: args,
                });
            }
            // Media and code-execution parts have no stream event; thought signatures neither.
        }
        if let Some(u) = usage(&v)
            && self.usage != Some(u)
        {
            self.usage = Some(u);
            out.push(StreamEvent::Usage(u));
        }
        if self.finished {
            return;
        }
        let finish = match cand["finishReason"].as_str() {
            Some(r) => decode_finish(r, self.tool_calls),
            None if v["promptFeedback"]["blockReason"].is_string() => {
                Some(FinishReason::ContentFilter)
            }
            None => None,
        };
        if let Some(f) = finish {
            self.finished = true;
            out.push(StreamEvent::Finish(f));
        }
    }
}

/// The message of a Gemini error answer (`{"error": {...}}`, or the same inside the array a
/// `streamGenerateContent` without `alt=sse` answers with).
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = if v.is_array() {
        &v[0]["error"]
    } else {
        &v["error"]
    };
    e["message"].as_str().map(str::to_string)
}

/// Model ids of a `models.list` answer, without the `models/` prefix.
pub fn decode_models(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    v["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .map(|n| strip_models(n).to_string())
        .collect()
}

// ----- embeddings: OpenAI `/v1/embeddings` <-> Gemini `embedContent` / `batchEmbedContents` -----
//
// Gemini's `taskType` and `title` have no OpenAI field and are not forwarded (they tune the
// vector, they do not change the answer's shape); token-array inputs have no Gemini form. Gemini
// reports no token counts for embeddings, so the OpenAI answer's usage is zero.

/// An OpenAI embeddings body as the model to call and a `batchEmbedContents` body.
pub fn embeddings_request_from_openai(body: &[u8]) -> Result<(String, Vec<u8>), BadRequest> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let model = v["model"]
        .as_str()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("`model` is required"))?;
    let model = strip_models(model).to_string();
    let token_arrays = || {
        bad("token-array `input` is not supported by Gemini embeddings; send the text as strings")
    };
    let texts: Vec<&str> = match &v["input"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().ok_or_else(token_arrays))
            .collect::<Result<_, _>>()?,
        Value::Array(_) => return Err(bad("`input` must not be empty")),
        _ => return Err(bad("`input` must be a string or an array of strings")),
    };
    let dims = v["dimensions"].as_u64();
    let requests: Vec<Value> = texts
        .iter()
        .map(|t| {
            let mut r = json!({
                "model": format!("models/{model}"),
                "content": {"parts": [{"text": t}]},
            });
            if let Some(d) = dims {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    let out =
        serde_json::to_vec(&json!({ "requests": requests })).map_err(|e| bad(e.to_string()))?;
    Ok((model, out))
}

/// How the OpenAI client wants its vectors (`encoding_format`; the OpenAI SDKs ask for base64).
pub fn embeddings_wants_base64(openai_request: &[u8]) -> bool {
    serde_json::from_slice::<Value>(openai_request).is_ok_and(|v| v["encoding_format"] == "base64")
}

/// A Gemini embeddings answer (`{"embeddings":[{"values"}]}` or `{"embedding":{"values"}}`) as
/// an OpenAI one with float vectors.
pub fn embeddings_response_to_openai(body: &[u8], model: &str) -> Result<Vec<u8>, BadRequest> {
    embeddings_response_to_openai_as(body, model, false)
}

/// As `embeddings_response_to_openai`, with base64 vectors (little-endian f32) when the client's
/// `encoding_format` was `base64` (see `embeddings_wants_base64`).
pub fn embeddings_response_to_openai_as(
    body: &[u8],
    model: &str,
    base64: bool,
) -> Result<Vec<u8>, BadRequest> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("unreadable Gemini embeddings answer: {e}")))?;
    let vectors: Vec<&Value> = match (&v["embeddings"], &v["embedding"]) {
        (Value::Array(a), _) => a.iter().map(|e| &e["values"]).collect(),
        (_, e) if e.is_object() => vec![&e["values"]],
        _ => return Err(bad("a Gemini embeddings answer has no `embeddings`")),
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, values)| {
            let embedding = if base64 {
                let mut bytes = Vec::new();
                for x in values.as_array().into_iter().flatten() {
                    bytes.extend_from_slice(&(x.as_f64().unwrap_or(0.0) as f32).to_le_bytes());
                }
                json!(B64.encode(bytes))
            } else {
                values.clone()
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let out = json!({
        "object": "list",
        "data": data,
        "model": strip_models(model),
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    });
    serde_json::to_vec(&out).map_err(|e| bad(e.to_string()))
}

/// A Gemini client's `embedContent` or `batchEmbedContents` body as an OpenAI embeddings body.
pub fn embeddings_request_to_openai(
    method: &str,
    model: &str,
    body: &[u8],
) -> Result<Vec<u8>, BadRequest> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    let requests: Vec<&Value> = match method {
        "embedContent" => vec![&v],
        "batchEmbedContents" => v["requests"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("`requests` must be a non-empty array"))?
            .iter()
            .collect(),
        m => return Err(bad(format!("`{m}` is not an embeddings method"))),
    };
    let mut inputs = Vec::new();
    let mut dims: Option<u64> = None;
    for (i, r) in requests.iter().enumerate() {
        let mut text = String::new();
        for p in r["content"]["parts"].as_array().into_iter().flatten() {
            let Some(t) = p["text"].as_str() else {
                return Err(bad(
                    "only text can be embedded when the upstream speaks OpenAI",
                ));
            };
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(t);
        }
        inputs.push(text);
        let d = field(r, "outputDimensionality").as_u64();
        if i > 0 && d != dims {
            return Err(bad(
                "all requests of a batch must ask for the same `outputDimensionality`",
            ));
        }
        dims = d;
    }
    let input = if method == "embedContent" {
        json!(inputs[0])
    } else {
        json!(inputs)
    };
    let mut out = json!({"model": strip_models(model), "input": input, "encoding_format": "float"});
    if let Some(d) = dims {
        out["dimensions"] = json!(d);
    }
    serde_json::to_vec(&out).map_err(|e| bad(e.to_string()))
}

/// An OpenAI embeddings answer as the Gemini answer of `method`.
pub fn embeddings_response_from_openai(method: &str, body: &[u8]) -> Result<Vec<u8>, BadRequest> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("unreadable OpenAI embeddings answer: {e}")))?;
    let mut data: Vec<&Value> = v["data"]
        .as_array()
        .ok_or_else(|| bad("an OpenAI embeddings answer has no `data`"))?
        .iter()
        .collect();
    data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
    let values = |d: &Value| -> Result<Value, BadRequest> {
        match &d["embedding"] {
            Value::Array(a) => Ok(Value::Array(a.clone())),
            // base64 little-endian f32, should an upstream answer so unasked.
            Value::String(s) => {
                let bytes = B64
                    .decode(s)
                    .map_err(|e| bad(format!("unreadable base64 embedding: {e}")))?;
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| json!(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect())
            }
            _ => Err(bad("an OpenAI embedding has no vector")),
        }
    };
    let out = match method {
        "embedContent" => {
            let first = data
                .first()
                .ok_or_else(|| bad("the OpenAI embeddings answer is empty"))?;
            json!({"embedding": {"values": values(first)?}})
        }
        _ => {
            let embeddings = data
                .iter()
                .map(|d| values(d).map(|v| json!({ "values": v })))
                .collect::<Result<Vec<_>, _>>()?;
            json!({ "embeddings": embeddings })
        }
    };
    serde_json::to_vec(&out).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_REQUEST: &str = include_str!("../../tests/fixtures/gemini/client_request.json");
    const UPSTREAM_REQUEST: &str =
        include_str!("../../tests/fixtures/gemini/upstream_request.json");
    const UPSTREAM_RESPONSE: &str =
        include_str!("../../tests/fixtures/gemini/upstream_response.json");
    const CLIENT_RESPONSE: &str = include_str!("../../tests/fixtures/gemini/client_response.json");
    const STREAM: &str = include_str!("../../tests/fixtures/gemini/stream.sse");

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    fn text(s: &str) -> Part {
        Part::Text(s.into())
    }

    fn call(id: &str, name: &str, args: &str) -> Part {
        Part::ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    #[test]
    fn thoughts_count_as_output() {
        let v = json!({"usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6,
            "thoughtsTokenCount": 10, "cachedContentTokenCount": 2}});
        assert_eq!(
            usage(&v).map(|t| (t.prompt, t.completion, t.cache_read)),
            Some((4, 16, 2))
        );
    }

    #[test]
    fn errors_have_the_gemini_shape() {
        let v = error_body(ErrorKind::UnknownSlug, "m");
        assert_eq!(v["error"]["code"], 404);
        assert_eq!(v["error"]["status"], "NOT_FOUND");
    }

    #[test]
    fn a_gemini_client_request_reads_into_the_canonical_model() {
        let r = decode_request(CLIENT_REQUEST.as_bytes(), "models/gemini-2.5-pro", true).unwrap();
        assert_eq!(r.model, "gemini-2.5-pro");
        assert!(r.stream);
        // snake_case fields as Google's curl examples write them are read too.
        assert_eq!(
            r.system,
            vec![text("You are terse."), text("Answer in French.")]
        );
        assert_eq!(r.messages.len(), 5);
        assert_eq!(
            r.messages[0].parts,
            vec![
                text("What is in this picture, and what is the weather in Paris and Lyon?"),
                Part::Image(Image::Base64 {
                    media_type: "image/png".into(),
                    data: "iVBORw0KGgo=".into()
                }),
                Part::Image(Image::Url("gs://bucket/cat.jpg".into())),
            ]
        );
        assert_eq!(r.messages[1].role, Role::Assistant);
        assert_eq!(
            r.messages[1].parts,
            vec![
                Part::Thinking {
                    text: "Let me think.".into(),
                    signature: Some("c2lnLTE=".into())
                },
                // The call's own signature rides just before it.
                Part::Thinking {
                    text: String::new(),
                    signature: Some("c2lnLTI=".into())
                },
                call("call_0", "get_weather", r#"{"city":"Paris"}"#),
                call("call_1", "get_weather", r#"{"city":"Lyon"}"#),
            ]
        );
        // Responses pair with the calls in order, by name.
        assert_eq!(
            r.messages[2].parts,
            vec![
                Part::ToolResult {
                    id: "call_0".into(),
                    name: Some("get_weather".into()),
                    content: vec![text("18C, sunny")],
                    is_error: false
                },
                Part::ToolResult {
                    id: "call_1".into(),
                    name: Some("get_weather".into()),
                    content: vec![text("station offline")],
                    is_error: true
                },
            ]
        );
        assert_eq!(r.temperature, Some(0.2));
        assert_eq!(r.top_p, Some(0.9));
        assert_eq!(r.top_k, Some(40));
        assert_eq!(r.max_tokens, Some(512));
        assert_eq!(r.stop, vec!["END".to_string()]);
        // OpenAPI upper-case types become JSON Schema for the other formats.
        let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}},
            "required": ["answer"]});
        assert_eq!(
            r.response_format,
            Some(ResponseFormat::JsonSchema {
                name: "response".into(),
                schema,
                strict: None
            })
        );
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.tools[0].name, "get_weather");
        assert_eq!(
            r.tools[0].parameters["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(r.tool_choice, Some(ToolChoice::Tool("get_weather".into())));
        // What keygate does not model stays in `extra` for targets to honour or refuse.
        assert_eq!(r.extra["generationConfig"]["candidateCount"], 2);
        assert_eq!(
            r.extra["generationConfig"]["thinkingConfig"]["thinkingBudget"],
            128
        );
        assert_eq!(r.extra["tools"], json!([{"googleSearch": {}}]));
        assert!(r.extra.contains_key("safetySettings"));
    }

    fn upstream_request() -> ChatRequest {
        let mut r = ChatRequest::new("gemini-3-pro-preview");
        r.system = vec![text("You are terse.")];
        r.messages = vec![
            Message {
                role: Role::User,
                parts: vec![
                    text("Weather in Paris and Lyon? Here is a map."),
                    Part::Image(Image::Base64 {
                        media_type: "image/png".into(),
                        data: "iVBORw0KGgo=".into(),
                    }),
                    Part::Image(Image::Url("data:image/jpeg;base64,/9j/4AAQ".into())),
                ],
            },
            Message {
                role: Role::Assistant,
                parts: vec![
                    // Foreign reasoning text is not replayed to Gemini.
                    Part::Thinking {
                        text: "hmm".into(),
                        signature: Some("anthropic-sig".into()),
                    },
                    text("Checking both."),
                    call("call_a", "get_weather", r#"{"city":"Paris"}"#),
                    call("call_b", "get_weather", r#"{"city":"Lyon"}"#),
                ],
            },
            // OpenAI's tool messages: one user message each, no names.
            Message {
                role: Role::User,
                parts: vec![Part::ToolResult {
                    id: "call_a".into(),
                    name: None,
                    content: vec![text(r#"{"temp": 18, "sky": "sunny"}"#)],
                    is_error: false,
                }],
            },
            Message {
                role: Role::User,
                parts: vec![Part::ToolResult {
                    id: "call_b".into(),
                    name: None,
                    content: vec![text("station offline")],
                    is_error: true,
                }],
            },
            Message {
                role: Role::User,
                parts: vec![text("And tomorrow?")],
            },
        ];
        r.temperature = Some(0.5);
        r.top_p = Some(0.8);
        r.max_tokens = Some(1000);
        r.stop = vec!["###".into()];
        r.parallel_tool_calls = Some(true);
        r.user = Some("u-1".into());
        r.response_format = Some(ResponseFormat::JsonSchema {
            name: "forecast".into(),
            schema: json!({"type": "object", "properties": {"forecast": {"type": "string"}},
                "additionalProperties": false}),
            strict: Some(true),
        });
        r.tools = vec![Tool {
            name: "get_weather".into(),
            description: Some("Weather of a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}),
        }];
        r.tool_choice = Some(ToolChoice::Tool("get_weather".into()));
        r.extra.insert("seed".into(), json!(7));
        r.extra.insert("service_tier".into(), json!("auto"));
        r
    }

    #[test]
    fn a_canonical_request_encodes_to_the_golden_gemini_body() {
        let body = encode_request(&upstream_request()).unwrap();
        assert_eq!(parse(&body), parse(UPSTREAM_REQUEST.as_bytes()));
    }

    #[test]
    fn gemini_2_models_get_no_placeholder_signature_but_real_ones_are_kept() {
        let mut r = upstream_request();
        r.model = "gemini-2.5-flash".into();
        let v = parse(&encode_request(&r).unwrap());
        assert!(v.to_string().find(SKIP_SIGNATURE).is_none());

        r.model = "gemini-3-flash".into();
        r.messages[1].parts.insert(
            2,
            Part::Thinking {
                text: String::new(),
                signature: Some("real".into()),
            },
        );
        let v = parse(&encode_request(&r).unwrap());
        assert_eq!(v["contents"][1]["parts"][1]["thoughtSignature"], "real");
        assert!(v.to_string().find(SKIP_SIGNATURE).is_none());
    }

    #[test]
    fn a_tool_result_with_no_name_and_no_earlier_call_is_refused() {
        let mut r = ChatRequest::new("gemini-2.5-flash");
        r.messages.push(Message {
            role: Role::User,
            parts: vec![Part::ToolResult {
                id: "call_x".into(),
                name: None,
                content: vec![text("42")],
                is_error: false,
            }],
        });
        let e = encode_request(&r).unwrap_err();
        assert!(e.0.contains("call_x"), "{e}");
        // With a name it goes, and a non-object result is wrapped.
        if let Part::ToolResult { name, .. } = &mut r.messages[0].parts[0] {
            *name = Some("answer".into());
        }
        let v = parse(&encode_request(&r).unwrap());
        assert_eq!(
            v["contents"][0]["parts"][0]["functionResponse"],
            json!({"name": "answer", "response": {"content": "42"}})
        );
    }

    #[test]
    fn plain_image_urls_are_refused_and_cloud_storage_urls_become_file_data() {
        let mut r = ChatRequest::new("gemini-2.5-flash");
        r.messages.push(Message {
            role: Role::User,
            parts: vec![Part::Image(Image::Url("https://example.com/a.png".into()))],
        });
        let e = encode_request(&r).unwrap_err();
        assert_eq!(
            e.0,
            "image URLs are not supported by Gemini; send the image as base64"
        );
        r.messages[0].parts = vec![Part::Image(Image::Url("gs://b/a.png".into()))];
        let v = parse(&encode_request(&r).unwrap());
        assert_eq!(
            v["contents"][0]["parts"][0],
            json!({"fileData": {"fileUri": "gs://b/a.png", "mimeType": "image/png"}})
        );
    }

    #[test]
    fn several_choices_logprobs_and_audio_are_refused_not_dropped() {
        for (k, v) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("audio", json!({"voice": "alloy"})),
        ] {
            let mut r = ChatRequest::new("gemini-2.5-flash");
            r.extra.insert(k.into(), v);
            assert!(encode_request(&r).is_err(), "{k} must be refused");
        }
        let mut r = ChatRequest::new("gemini-2.5-flash");
        r.extra.insert("n".into(), json!(1));
        r.extra.insert("logprobs".into(), json!(false));
        assert!(encode_request(&r).is_ok());
    }

    #[test]
    fn json_mode_and_tool_choices_map_both_ways() {
        let mut r = ChatRequest::new("gemini-2.5-flash");
        r.response_format = Some(ResponseFormat::JsonObject);
        r.tool_choice = Some(ToolChoice::Required);
        let v = parse(&encode_request(&r).unwrap());
        assert_eq!(
            v["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
        assert_eq!(
            v["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY"})
        );
        for (mode, choice) in [
            ("AUTO", ToolChoice::Auto),
            ("NONE", ToolChoice::None),
            ("ANY", ToolChoice::Required),
        ] {
            let body = json!({"contents": [], "toolConfig": {"functionCallingConfig": {"mode": mode}},
                "generationConfig": {"responseMimeType": "application/json"}});
            let r = decode_request(body.to_string().as_bytes(), "m", false).unwrap();
            assert_eq!(r.tool_choice, Some(choice));
            assert_eq!(r.response_format, Some(ResponseFormat::JsonObject));
        }
    }

    #[test]
    fn an_upstream_answer_decodes_with_call_ids_unique_to_the_answer() {
        let r = decode_response(UPSTREAM_RESPONSE.as_bytes()).unwrap();
        assert_eq!(r.id, "rsp9XyZ");
        assert_eq!(r.model, "gemini-2.5-flash");
        assert_eq!(
            r.parts,
            vec![
                Part::Thinking {
                    text: "The user wants weather.".into(),
                    signature: None
                },
                text("Checking both cities."),
                Part::Thinking {
                    text: String::new(),
                    signature: Some("Q2lnbmF0dXJl".into())
                },
                call("call_rsp9XyZ_0", "get_weather", r#"{"city":"Paris"}"#),
                call("call_rsp9XyZ_1", "get_weather", r#"{"city":"Lyon"}"#),
            ]
        );
        // STOP with calls is a tool-call finish.
        assert_eq!(r.finish, Some(FinishReason::ToolCalls));
        assert_eq!(
            r.usage,
            Some(Tokens {
                prompt: 120,
                completion: 42,
                cache_read: 100,
                cache_write: 0
            })
        );
    }

    #[test]
    fn finish_reasons_map_and_a_blocked_prompt_is_a_content_filter() {
        let f = |body: Value| decode_response(body.to_string().as_bytes()).unwrap().finish;
        let cand = |r: &str| json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": r}]});
        assert_eq!(f(cand("STOP")), Some(FinishReason::Stop));
        assert_eq!(f(cand("MAX_TOKENS")), Some(FinishReason::Length));
        assert_eq!(f(cand("SAFETY")), Some(FinishReason::ContentFilter));
        assert_eq!(f(cand("RECITATION")), Some(FinishReason::ContentFilter));
        assert_eq!(
            f(json!({"promptFeedback": {"blockReason": "SAFETY"}})),
            Some(FinishReason::ContentFilter)
        );
        // No responseId: one is made up.
        let r = decode_response(cand("STOP").to_string().as_bytes()).unwrap();
        assert!(!r.id.is_empty());
    }

    fn client_response() -> ChatResponse {
        ChatResponse {
            id: "msg_01".into(),
            model: "claude-sonnet-4-5".into(),
            parts: vec![
                Part::Thinking {
                    text: "Weighing it.".into(),
                    signature: Some("YW50aHJvcGljLXNpZw==".into()),
                },
                text("Let me check."),
                call("toolu_01", "get_weather", r#"{"city": "Paris"}"#),
            ],
            finish: Some(FinishReason::ToolCalls),
            usage: Some(Tokens {
                prompt: 50,
                completion: 20,
                cache_read: 10,
                cache_write: 0,
            }),
        }
    }

    #[test]
    fn a_canonical_answer_encodes_to_the_golden_gemini_answer() {
        assert_eq!(
            parse(&encode_response(&client_response())),
            parse(CLIENT_RESPONSE.as_bytes())
        );
    }

    #[test]
    fn a_gemini_answer_survives_decode_then_encode() {
        let r = decode_response(UPSTREAM_RESPONSE.as_bytes()).unwrap();
        let again = decode_response(&encode_response(&r)).unwrap();
        assert_eq!(again.parts, r.parts);
        assert_eq!(again.finish, r.finish);
        // Thoughts were folded into the completion count; the total is kept.
        assert_eq!(again.usage.map(|u| u.total()), r.usage.map(|u| u.total()));
        let v = parse(&encode_response(&r));
        assert_eq!(
            v["candidates"][0]["content"]["parts"][2]["thoughtSignature"],
            "Q2lnbmF0dXJl"
        );
    }

    fn decode_stream(bytes: &[u8], size: usize) -> Vec<StreamEvent> {
        crate::formats::sse::decode_in_chunks(&mut Decoder::default(), bytes, size)
    }

    #[test]
    fn a_recorded_stream_decodes_the_same_at_any_chunk_boundary() {
        let whole = decode_stream(STREAM.as_bytes(), usize::MAX);
        let usage40 = Tokens {
            prompt: 40,
            completion: 0,
            cache_read: 0,
            cache_write: 0,
        };
        assert_eq!(
            whole,
            vec![
                StreamEvent::Start {
                    id: "sTrEaM1".into(),
                    model: "gemini-2.5-flash".into()
                },
                StreamEvent::ThinkingDelta("Thinking about cities".into()),
                StreamEvent::Usage(usage40),
                StreamEvent::TextDelta("Paris is ".into()),
                StreamEvent::TextDelta("lovely. Checking.".into()),
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_sTrEaM1_0".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: r#"{"city":"Paris","units":"C"}"#.into()
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "call_sTrEaM1_1".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 1,
                    arguments: r#"{"city":"Lyon","units":"C"}"#.into()
                },
                StreamEvent::Usage(Tokens {
                    prompt: 40,
                    completion: 37,
                    cache_read: 0,
                    cache_write: 0
                }),
                StreamEvent::Finish(FinishReason::ToolCalls),
            ]
        );
        for size in [1, 2, 3, 7, 13, 64, 333] {
            assert_eq!(
                decode_stream(STREAM.as_bytes(), size),
                whole,
                "chunks of {size}"
            );
        }
        // The streamed arguments are the same JSON as the non-streamed call's.
        let body = json!({"candidates": [{"content": {"parts": [{"functionCall":
            {"name": "get_weather", "args": {"city": "Paris", "units": "C"}}}]}}]});
        let r = decode_response(body.to_string().as_bytes()).unwrap();
        let Part::ToolCall { arguments, .. } = &r.parts[0] else {
            panic!()
        };
        assert!(whole.contains(&StreamEvent::ToolCallDelta {
            index: 0,
            arguments: arguments.clone()
        }));
    }

    #[test]
    fn array_stream_elements_and_in_stream_errors_decode() {
        let mut dec = Decoder::default();
        let mut out = Vec::new();
        dec.event(
            None,
            r#"[{"candidates": [{"content": {"parts": [{"text": "a"}]}}], "responseId": "r"}"#,
            &mut out,
        );
        dec.event(None, r#",{"candidates": [{"content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS"}]}"#, &mut out);
        dec.event(None, "]", &mut out);
        dec.event(
            None,
            r#"{"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}"#,
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                StreamEvent::Start {
                    id: "r".into(),
                    model: String::new()
                },
                StreamEvent::TextDelta("a".into()),
                StreamEvent::TextDelta("b".into()),
                StreamEvent::Finish(FinishReason::Length),
                StreamEvent::Error {
                    message: "overloaded".into()
                },
            ]
        );
    }

    /// A sparse upstream stream as another format's decoder would give it: arguments in
    /// fragments, two calls, usage after the finish.
    fn canonical_stream() -> Vec<StreamEvent> {
        vec![
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4.1".into(),
            },
            StreamEvent::ThinkingDelta("hmm".into()),
            StreamEvent::TextDelta("Hel".into()),
            StreamEvent::TextDelta("lo".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "call_a".into(),
                name: "get_weather".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#"{"city""#.into(),
            },
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#": "Paris"}"#.into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "call_b".into(),
                name: "get_time".into(),
            },
            StreamEvent::ToolCallDelta {
                index: 1,
                arguments: "{}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Tokens {
                prompt: 9,
                completion: 4,
                cache_read: 0,
                cache_write: 0,
            }),
            StreamEvent::End,
        ]
    }

    fn encode_all(sse: bool, events: &[StreamEvent]) -> Vec<u8> {
        let mut enc = Encoder::new(&ChatRequest::new("gpt-4.1"), sse);
        let mut out = Vec::new();
        for e in events {
            enc.encode(e, &mut out);
        }
        out
    }

    #[test]
    fn the_sse_encoder_writes_a_complete_stream_that_reads_back() {
        let bytes = encode_all(true, &canonical_stream());
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.ends_with("\r\n\r\n"));
        let events = decode_stream(&bytes, 5);
        let mut texts = String::new();
        let mut calls = Vec::new();
        for e in &events {
            match e {
                StreamEvent::TextDelta(t) => texts.push_str(t),
                StreamEvent::ToolCallStart { id, name, .. } => {
                    calls.push((id.clone(), name.clone(), String::new()))
                }
                StreamEvent::ToolCallDelta { index, arguments } => {
                    calls[*index].2.push_str(arguments)
                }
                _ => {}
            }
        }
        assert_eq!(
            events[0],
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4.1".into()
            }
        );
        assert_eq!(events[1], StreamEvent::ThinkingDelta("hmm".into()));
        assert_eq!(texts, "Hello");
        // Buffered fragments went out as one call each, the same JSON as concatenated.
        assert_eq!(
            calls,
            vec![
                (
                    "call_a".into(),
                    "get_weather".into(),
                    r#"{"city":"Paris"}"#.into()
                ),
                ("call_b".into(), "get_time".into(), "{}".into()),
            ]
        );
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Finish(FinishReason::ToolCalls))
        );
        assert!(events.contains(&StreamEvent::Usage(Tokens {
            prompt: 9,
            completion: 4,
            cache_read: 0,
            cache_write: 0
        })));
        // Both calls went out in one element, as Gemini sends parallel calls.
        let datas: Vec<Value> = text
            .split("\r\n\r\n")
            .filter(|s| !s.is_empty())
            .map(|s| serde_json::from_str(s.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(datas.len(), 5);
        assert_eq!(
            datas[3]["candidates"][0]["content"]["parts"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(datas[4]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(datas[4]["usageMetadata"]["totalTokenCount"], 13);
    }

    #[test]
    fn the_array_encoder_writes_one_json_array() {
        let bytes = encode_all(false, &canonical_stream());
        let v = parse(&bytes);
        let elements = v.as_array().unwrap();
        assert_eq!(elements.len(), 5);
        assert!(elements.iter().all(|e| e["responseId"] == "chatcmpl-1"));
        assert!(String::from_utf8(bytes).unwrap().contains("},\r\n{"));
        // Even a stream with nothing in it is a valid array with a final element.
        let v = parse(&encode_all(false, &[StreamEvent::End]));
        assert_eq!(v[0]["candidates"][0]["finishReason"], "STOP");
    }

    #[test]
    fn an_error_ends_the_client_stream_with_a_gemini_error() {
        let events = [
            StreamEvent::TextDelta("par".into()),
            StreamEvent::Error {
                message: "upstream broke".into(),
            },
            StreamEvent::End,
        ];
        let v = parse(&encode_all(false, &events));
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[1]["error"]["message"], "upstream broke");
        let text = String::from_utf8(encode_all(true, &events)).unwrap();
        assert!(text.ends_with("\"status\":\"INTERNAL\"}}\r\n\r\n"));
        assert_eq!(text.matches("data: ").count(), 2);
    }

    #[test]
    fn model_lists_round_trip_without_the_models_prefix() {
        let ids = vec!["gemini-2.5-pro".to_string(), "gpt-4.1".to_string()];
        let body = encode_models(&ids);
        let v = parse(&body);
        assert_eq!(v["models"][0]["name"], "models/gemini-2.5-pro");
        assert_eq!(v["models"][1]["displayName"], "gpt-4.1");
        assert_eq!(decode_models(&body), ids);
    }

    #[test]
    fn error_messages_are_read_from_objects_and_from_stream_arrays() {
        let e = br#"{"error": {"code": 400, "message": "bad key", "status": "INVALID_ARGUMENT"}}"#;
        assert_eq!(error_message(e).as_deref(), Some("bad key"));
        let a = br#"[{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}]"#;
        assert_eq!(error_message(a).as_deref(), Some("slow down"));
        assert_eq!(error_message(b"nope"), None);
    }

    #[test]
    fn openai_embeddings_requests_become_batch_requests() {
        let body = include_str!("../../tests/fixtures/gemini/openai_embeddings_request.json");
        let (model, out) = embeddings_request_from_openai(body.as_bytes()).unwrap();
        assert_eq!(model, "gemini-embedding-001");
        assert_eq!(
            parse(&out),
            parse(include_bytes!(
                "../../tests/fixtures/gemini/batch_embed_request.json"
            ))
        );
        let e =
            embeddings_request_from_openai(br#"{"model": "m", "input": [[1, 2, 3]]}"#).unwrap_err();
        assert!(e.0.contains("token-array"), "{e}");
        let (_, one) = embeddings_request_from_openai(br#"{"model": "m", "input": "x"}"#).unwrap();
        assert_eq!(parse(&one)["requests"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn gemini_embeddings_answer_as_openai_in_floats_or_base64() {
        let body = include_bytes!("../../tests/fixtures/gemini/batch_embed_response.json");
        let out = embeddings_response_to_openai(body, "models/gemini-embedding-001").unwrap();
        assert_eq!(
            parse(&out),
            parse(include_bytes!(
                "../../tests/fixtures/gemini/openai_embeddings_response.json"
            ))
        );
        assert!(embeddings_wants_base64(br#"{"encoding_format": "base64"}"#));
        let b64 = embeddings_response_to_openai_as(body, "m", true).unwrap();
        // Back through the reverse direction: the same floats.
        let back = embeddings_response_from_openai("batchEmbedContents", &b64).unwrap();
        assert_eq!(parse(&back), parse(body));
    }

    #[test]
    fn gemini_embed_requests_and_answers_translate_to_and_from_openai() {
        let batch = include_bytes!("../../tests/fixtures/gemini/batch_embed_request.json");
        let out = embeddings_request_to_openai(
            "batchEmbedContents",
            "models/gemini-embedding-001",
            batch,
        )
        .unwrap();
        assert_eq!(
            parse(&out),
            json!({"model": "gemini-embedding-001", "input": ["first text", "second text"],
                "encoding_format": "float", "dimensions": 256})
        );
        let single = br#"{"content": {"parts": [{"text": "hi"}]}, "taskType": "RETRIEVAL_QUERY"}"#;
        let out =
            embeddings_request_to_openai("embedContent", "text-embedding-3-small", single).unwrap();
        assert_eq!(
            parse(&out),
            json!({"model": "text-embedding-3-small", "input": "hi", "encoding_format": "float"})
        );

        let openai = include_bytes!("../../tests/fixtures/gemini/openai_embeddings_response.json");
        let back = embeddings_response_from_openai("batchEmbedContents", openai).unwrap();
        assert_eq!(
            parse(&back),
            parse(include_bytes!(
                "../../tests/fixtures/gemini/batch_embed_response.json"
            ))
        );
        let one = embeddings_response_from_openai("embedContent", openai).unwrap();
        assert_eq!(
            parse(&one),
            json!({"embedding": {"values": [0.25, -0.5, 1.0]}})
        );
    }
}
