//! The translation registry: for a (client API, upstream format) pair, how to rewrite the request
//! and how to turn the upstream's answer back into the client's format. `plan` returns None for
//! same-format pairs: those pass through byte for byte and never reach this file.
//!
//! A request is read into the canonical model (`canonical.rs`) by the client's format file and
//! written out by the upstream's; answers go the other way, whole for JSON and event by event for
//! streams (`Transform`), so the first client byte follows the first upstream event.
use bytes::Bytes;
use serde_json::Value;

use super::canonical::{
    BadRequest, ChatRequest, ChatResponse, StreamDecoder, StreamEncoder, StreamEvent, Unsupported,
};
use super::sse::{SseEvent, SseReader};
use super::{Endpoint, Format, anthropic, gemini, openai, openai_responses};
use crate::events::Tokens;

/// The API the client speaks: a format plus, for OpenAI, which of its two chat APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientApi {
    OpenAiChat,
    OpenAiResponses,
    Anthropic,
    /// `sse`: the client asked with `?alt=sse`; otherwise Gemini streams a JSON array.
    Gemini {
        sse: bool,
    },
}

/// What one translated call does.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// A chat call (chat completions, Responses, messages, generateContent) in another format.
    Chat { client: ClientApi, upstream: Format },
    /// Embeddings between OpenAI and Gemini.
    Embeddings {
        client: Format,
        upstream: Format,
        /// Gemini's method (`embedContent` / `batchEmbedContents`) when the client is Gemini.
        method: Option<String>,
        model: Option<String>,
    },
    /// A model list in another format.
    Models { client: Format, upstream: Format },
}

/// Why a request cannot be translated: the client gets a 400 in its own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(String),
    Unsupported(String),
}

impl From<BadRequest> for Refusal {
    fn from(e: BadRequest) -> Self {
        Self::BadRequest(e.0)
    }
}

impl From<Unsupported> for Refusal {
    fn from(e: Unsupported) -> Self {
        Self::Unsupported(e.0)
    }
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Self::BadRequest(m) | Self::Unsupported(m) => m,
        }
    }
}

/// The translation for a call, or None when it passes through as it is.
/// `responses_native`: the upstream serves the Responses API itself.
pub fn plan(
    client: Format,
    endpoint: &Endpoint,
    upstream: Format,
    query: Option<&str>,
    responses_native: bool,
) -> Option<Plan> {
    if upstream == Format::Rest || client == Format::Rest {
        return None;
    }
    let same = client == upstream;
    match endpoint {
        Endpoint::ChatCompletions if !same => Some(Plan::Chat {
            client: ClientApi::OpenAiChat,
            upstream,
        }),
        Endpoint::Responses if !(upstream == Format::OpenAi && responses_native) => {
            Some(Plan::Chat {
                client: ClientApi::OpenAiResponses,
                upstream,
            })
        }
        Endpoint::Messages if !same => Some(Plan::Chat {
            client: ClientApi::Anthropic,
            upstream,
        }),
        Endpoint::Gemini { method, model } if !same => match method.as_str() {
            "generateContent" | "streamGenerateContent" => Some(Plan::Chat {
                client: ClientApi::Gemini {
                    sse: query.is_some_and(|q| q.split('&').any(|p| p == "alt=sse")),
                },
                upstream,
            }),
            "embedContent" | "batchEmbedContents" => Some(Plan::Embeddings {
                client,
                upstream,
                method: Some(method.clone()),
                model: Some(model.clone()),
            }),
            _ => None,
        },
        Endpoint::Embeddings if !same => Some(Plan::Embeddings {
            client,
            upstream,
            method: None,
            model: None,
        }),
        Endpoint::Models if !same => Some(Plan::Models { client, upstream }),
        _ => None,
    }
}

/// A model name that goes into an upstream path: it must stay one segment, or a client could
/// steer keygate's key to another path of the upstream.
pub(crate) fn path_segment(model: &str) -> Result<&str, Refusal> {
    let bad = model.is_empty()
        || model == "."
        || model == ".."
        || model.contains(['/', '\\', '?', '#', '%', ':'])
        || model.chars().any(char::is_control);
    if bad {
        return Err(Refusal::BadRequest(format!(
            "'{model}' is not a valid model name"
        )));
    }
    Ok(model)
}

/// A request ready for the upstream.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Path under the service's base_url, query included (`messages`, `models/x:streamGenerateContent?alt=sse`).
    pub path: String,
    pub method: http::Method,
    pub body: Bytes,
    /// The client asked for a stream.
    pub stream: bool,
    /// The model the client asked for.
    pub model: Option<String>,
    /// The canonical request (chat calls), for the answer's translation.
    pub chat: Option<ChatRequest>,
}

impl Plan {
    /// Rewrites the client's body for the upstream.
    pub fn request(&self, endpoint: &Endpoint, body: &[u8]) -> Result<Prepared, Refusal> {
        match self {
            Plan::Chat { client, upstream } => {
                let req = match client {
                    ClientApi::OpenAiChat => openai::decode_request(body)?,
                    ClientApi::OpenAiResponses => openai_responses::decode_request(body)?,
                    ClientApi::Anthropic => anthropic::decode_request(body)?,
                    ClientApi::Gemini { .. } => {
                        let Endpoint::Gemini { model, method } = endpoint else {
                            return Err(Refusal::BadRequest("not a Gemini model call".into()));
                        };
                        gemini::decode_request(body, model, method == "streamGenerateContent")?
                    }
                };
                let (path, out) = match upstream {
                    Format::OpenAi => (
                        "chat/completions".to_string(),
                        openai::encode_request(&req)?,
                    ),
                    Format::Anthropic => ("messages".to_string(), anthropic::encode_request(&req)?),
                    Format::Gemini => {
                        let method = if req.stream {
                            "streamGenerateContent?alt=sse"
                        } else {
                            "generateContent"
                        };
                        (
                            format!("models/{}:{method}", path_segment(&req.model)?),
                            gemini::encode_request(&req)?,
                        )
                    }
                    Format::Rest => unreachable!("plan never translates to REST"),
                };
                Ok(Prepared {
                    path,
                    method: http::Method::POST,
                    body: Bytes::from(out),
                    stream: req.stream,
                    model: Some(req.model.clone()),
                    chat: Some(req),
                })
            }
            Plan::Embeddings {
                client,
                upstream,
                method,
                model,
            } => match (client, upstream) {
                (Format::OpenAi, Format::Gemini) => {
                    let (model, out) = gemini::embeddings_request_from_openai(body)?;
                    Ok(Prepared {
                        path: format!("models/{}:batchEmbedContents", path_segment(&model)?),
                        method: http::Method::POST,
                        body: Bytes::from(out),
                        stream: false,
                        model: Some(model),
                        chat: None,
                    })
                }
                (Format::Gemini, Format::OpenAi) => {
                    let (method, model) = (
                        method.as_deref().unwrap_or("embedContent"),
                        model.as_deref().unwrap_or(""),
                    );
                    let out = gemini::embeddings_request_to_openai(method, model, body)?;
                    Ok(Prepared {
                        path: "embeddings".into(),
                        method: http::Method::POST,
                        body: Bytes::from(out),
                        stream: false,
                        model: Some(model.to_string()),
                        chat: None,
                    })
                }
                (_, u) => Err(Refusal::Unsupported(format!(
                    "embeddings are not supported by a {} upstream",
                    u.name()
                ))),
            },
            Plan::Models { .. } => Ok(Prepared {
                path: "models".into(),
                method: http::Method::GET,
                body: Bytes::new(),
                stream: false,
                model: None,
                chat: None,
            }),
        }
    }

    /// The transform for a successful streamed upstream answer.
    pub fn stream(&self, prepared: &Prepared) -> Option<StreamTransform> {
        match self {
            Plan::Chat { client, upstream } => {
                let req = prepared.chat.clone().unwrap_or_else(|| {
                    ChatRequest::new(prepared.model.clone().unwrap_or_default())
                });
                Some(StreamTransform::new(*client, *upstream, &req))
            }
            _ => None,
        }
    }

    /// A successful whole (non-stream) upstream answer in the client's format, with the usage it
    /// reported. `wants_base64`: an OpenAI embeddings client asked for base64 vectors.
    pub fn whole(
        &self,
        prepared: &Prepared,
        body: &[u8],
        wants_base64: bool,
    ) -> Result<(Vec<u8>, Option<Tokens>), BadRequest> {
        let mut t = match self {
            Plan::Chat { client, upstream } => WholeTransform::chat(*client, *upstream),
            Plan::Embeddings { client, method, .. } => WholeTransform::embeddings(
                *client,
                method.clone(),
                prepared.model.clone().unwrap_or_default(),
                wants_base64,
            ),
            Plan::Models { client, upstream } => WholeTransform::models(*client, *upstream),
        };
        t.buf.extend_from_slice(body);
        let out = t.convert()?;
        Ok((out, t.usage))
    }

    pub fn client_format(&self) -> Format {
        match self {
            Plan::Chat { client, .. } => match client {
                ClientApi::OpenAiChat | ClientApi::OpenAiResponses => Format::OpenAi,
                ClientApi::Anthropic => Format::Anthropic,
                ClientApi::Gemini { .. } => Format::Gemini,
            },
            Plan::Embeddings { client, .. } | Plan::Models { client, .. } => *client,
        }
    }

    /// The content type of the translated answer.
    pub fn content_type(&self, stream: bool) -> &'static str {
        match self {
            Plan::Chat {
                client: ClientApi::Gemini { sse: false },
                ..
            } if stream => "application/json",
            _ if stream => "text/event-stream",
            _ => "application/json",
        }
    }
}

/// Turns an upstream answer's bytes into the client's, as they arrive.
pub trait Transform: Send {
    fn chunk(&mut self, input: &[u8], out: &mut Vec<u8>);
    fn finish(&mut self, out: &mut Vec<u8>);
    /// Usage the upstream reported, read on the way.
    fn usage(&self) -> Option<Tokens>;
    /// The upstream broke off: write the client's own terminal error, if its format has one
    /// (false: it has none, and the body ends with an error instead).
    fn error(&mut self, message: &str, out: &mut Vec<u8>) -> bool;
}

/// Streams: upstream SSE events -> canonical events -> the client's events, one at a time.
pub struct StreamTransform {
    reader: SseReader,
    decoder: Box<dyn StreamDecoder>,
    encoder: Box<dyn StreamEncoder>,
    events: Vec<SseEvent>,
    canonical: Vec<StreamEvent>,
    usage: Option<Tokens>,
    ended: bool,
}

impl StreamTransform {
    pub fn new(client: ClientApi, upstream: Format, req: &ChatRequest) -> Self {
        let decoder: Box<dyn StreamDecoder> = match upstream {
            Format::Anthropic => Box::new(anthropic::Decoder::default()),
            Format::Gemini => Box::new(gemini::Decoder::default()),
            _ => Box::new(openai::Decoder::default()),
        };
        let encoder: Box<dyn StreamEncoder> = match client {
            ClientApi::OpenAiChat => Box::new(openai::Encoder::new(req)),
            ClientApi::OpenAiResponses => Box::new(openai_responses::Encoder::new(req)),
            ClientApi::Anthropic => Box::new(anthropic::Encoder::new(req)),
            ClientApi::Gemini { sse } => Box::new(gemini::Encoder::new(req, sse)),
        };
        Self {
            reader: SseReader::new(),
            decoder,
            encoder,
            events: Vec::new(),
            canonical: Vec::new(),
            usage: None,
            ended: false,
        }
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        for e in self.events.drain(..) {
            self.decoder
                .event(e.event.as_deref(), &e.data, &mut self.canonical);
        }
        for ev in self.canonical.drain(..) {
            if self.ended {
                break;
            }
            match &ev {
                StreamEvent::Usage(t) => self.usage = Some(*t),
                StreamEvent::End | StreamEvent::Error { .. } => self.ended = true,
                _ => {}
            }
            self.encoder.encode(&ev, out);
        }
    }
}

impl Transform for StreamTransform {
    fn chunk(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.reader.feed(input, &mut self.events);
        self.drain(out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.reader.finish(&mut self.events);
        self.drain(out);
        if !self.ended {
            // Not every format marks its end (Gemini's stream just stops).
            self.ended = true;
            self.encoder.encode(&StreamEvent::End, out);
        }
    }

    fn usage(&self) -> Option<Tokens> {
        self.usage
    }

    fn error(&mut self, message: &str, out: &mut Vec<u8>) -> bool {
        if !self.ended {
            self.ended = true;
            self.encoder.encode(
                &StreamEvent::Error {
                    message: message.to_string(),
                },
                out,
            );
        }
        true
    }
}

enum Whole {
    Chat {
        client: ClientApi,
        upstream: Format,
    },
    Embeddings {
        client: Format,
        method: Option<String>,
        model: String,
        base64: bool,
    },
    Models {
        client: Format,
        upstream: Format,
    },
}

/// Non-stream answers: read whole (they are not streams), then written in the client's format
/// before the client's head goes out, so an answer that cannot be translated becomes a 502.
struct WholeTransform {
    kind: Whole,
    buf: Vec<u8>,
    usage: Option<Tokens>,
}

impl WholeTransform {
    fn chat(client: ClientApi, upstream: Format) -> Self {
        Self::of(Whole::Chat { client, upstream })
    }
    fn embeddings(client: Format, method: Option<String>, model: String, base64: bool) -> Self {
        Self::of(Whole::Embeddings {
            client,
            method,
            model,
            base64,
        })
    }
    fn models(client: Format, upstream: Format) -> Self {
        Self::of(Whole::Models { client, upstream })
    }
    fn of(kind: Whole) -> Self {
        Self {
            kind,
            buf: Vec::new(),
            usage: None,
        }
    }

    fn convert(&mut self) -> Result<Vec<u8>, BadRequest> {
        match &self.kind {
            Whole::Chat { client, upstream } => {
                let resp: ChatResponse = match upstream {
                    Format::Anthropic => anthropic::decode_response(&self.buf)?,
                    Format::Gemini => gemini::decode_response(&self.buf)?,
                    _ => openai::decode_response(&self.buf)?,
                };
                self.usage = resp.usage;
                Ok(match client {
                    ClientApi::OpenAiChat => openai::encode_response(&resp),
                    ClientApi::OpenAiResponses => openai_responses::encode_response(&resp),
                    ClientApi::Anthropic => anthropic::encode_response(&resp),
                    ClientApi::Gemini { .. } => gemini::encode_response(&resp),
                })
            }
            Whole::Embeddings {
                client,
                method,
                model,
                base64,
            } => match client {
                Format::OpenAi => {
                    gemini::embeddings_response_to_openai_as(&self.buf, model, *base64)
                }
                _ => gemini::embeddings_response_from_openai(
                    method.as_deref().unwrap_or("embedContent"),
                    &self.buf,
                ),
            },
            Whole::Models { client, upstream } => {
                Ok(client.encode_models(&upstream.decode_models(&self.buf)))
            }
        }
    }
}

/// An error answer of the upstream, re-worded in the client's format with the same status.
pub fn translate_error(client: Format, upstream: Format, status: u16, body: &[u8]) -> Value {
    let message = match upstream {
        Format::Anthropic => anthropic::error_message(body),
        Format::Gemini => gemini::error_message(body),
        _ => openai::error_message(body),
    }
    .unwrap_or_else(|| format!("the upstream answered {status}"));
    client.upstream_error_body(status, &message)
}

/// A token count keygate answers itself: `count_tokens` (Anthropic) or `countTokens` (Gemini)
/// asked of an upstream that has no such endpoint in that format. The count is an estimate:
/// about four characters of text per token, and a flat 1,000 per image; the answer says so in
/// the `x-keygate-estimated` header.
pub fn estimate_tokens(
    client: Format,
    endpoint: &Endpoint,
    body: &[u8],
) -> Result<(Value, u64), Refusal> {
    use super::canonical::Part;
    let req = match (client, endpoint) {
        (Format::Anthropic, _) => anthropic::decode_request(body)?,
        (Format::Gemini, Endpoint::Gemini { model, .. }) => {
            // `countTokens` takes `contents` directly or a whole `generateContentRequest`.
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| Refusal::BadRequest(format!("the body is not JSON: {e}")))?;
            let inner = v.get("generateContentRequest").cloned().unwrap_or(v);
            gemini::decode_request(inner.to_string().as_bytes(), model, false)?
        }
        _ => return Err(Refusal::Unsupported("token counting".into())),
    };
    fn part_chars(p: &Part) -> (usize, u64) {
        match p {
            Part::Text(t) => (t.chars().count(), 0),
            Part::Image(_) => (0, 1000),
            Part::ToolCall {
                name, arguments, ..
            } => (name.len() + arguments.chars().count(), 0),
            Part::ToolResult { content, .. } => content
                .iter()
                .map(part_chars)
                .fold((0, 0), |(c, i), (c2, i2)| (c + c2, i + i2)),
            Part::Thinking { text, .. } => (text.chars().count(), 0),
        }
    }
    let mut chars = 0usize;
    let mut fixed = 0u64;
    let parts = req
        .system
        .iter()
        .chain(req.messages.iter().flat_map(|m| m.parts.iter()));
    for p in parts {
        let (c, f) = part_chars(p);
        chars += c;
        fixed += f;
    }
    for t in &req.tools {
        chars += t.name.len()
            + t.description.as_deref().map_or(0, str::len)
            + t.parameters.to_string().len();
    }
    let n = (chars as u64).div_ceil(4) + fixed + 4 * req.messages.len() as u64;
    let body = match client {
        Format::Gemini => serde_json::json!({"totalTokens": n}),
        _ => serde_json::json!({"input_tokens": n}),
    };
    Ok((body, n))
}

/// An OpenAI chat stream passed through to a client that did not ask for usage: keygate asked
/// for it (`stream_options.include_usage`) to meter the request, so the usage chunk
/// (`"choices": []`) is read here and kept from the client. Every other event goes on as sent.
#[derive(Default)]
pub struct HiddenUsage {
    reader: SseReader,
    events: Vec<SseEvent>,
    usage: Option<Tokens>,
}

impl HiddenUsage {
    fn drain(&mut self, out: &mut Vec<u8>) {
        for ev in self.events.drain(..) {
            // Only an event that names usage is parsed; the rest are copied.
            if ev.data.contains("\"usage\"")
                && let Ok(v) = serde_json::from_str::<Value>(&ev.data)
            {
                if let Some(t) = openai::usage(&v) {
                    self.usage = Some(t);
                }
                if v["choices"].as_array().is_some_and(|c| c.is_empty()) {
                    continue;
                }
            }
            if let Some(name) = &ev.event {
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
            }
            for line in ev.data.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
            out.push(b'\n');
        }
    }
}

impl Transform for HiddenUsage {
    fn chunk(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.reader.feed(input, &mut self.events);
        self.drain(out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.reader.finish(&mut self.events);
        self.drain(out);
    }

    fn usage(&self) -> Option<Tokens> {
        self.usage
    }

    fn error(&mut self, message: &str, out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(&openai::stream_error_event(message));
        true
    }
}

/// Asks an OpenAI chat stream for its usage when the client did not (`stream: true` without
/// `stream_options.include_usage`). Returns the rewritten body, or None when nothing changes.
pub fn ask_stream_usage(body: &[u8]) -> Option<Bytes> {
    // Cheap checks first: most requests are not streams.
    if !body.windows(8).any(|w| w == b"\"stream\"") {
        return None;
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object_mut()?;
    if o.get("stream").and_then(Value::as_bool) != Some(true)
        || o.get("stream_options")
            .and_then(|s| s.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true)
    {
        return None;
    }
    let opts = o
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Default::default()));
    opts.as_object_mut()?
        .insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod hidden_usage_tests {
    use super::*;

    #[test]
    fn the_usage_chunk_keygate_asked_for_is_read_and_kept_from_the_client() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        let mut t = HiddenUsage::default();
        let mut out = Vec::new();
        for c in stream.as_bytes().chunks(7) {
            t.chunk(c, &mut out);
        }
        t.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(t.usage().map(|u| (u.prompt, u.completion)), Some((9, 2)));
    }

    #[test]
    fn usage_is_asked_for_only_on_streams_that_did_not_ask() {
        let asked = ask_stream_usage(br#"{"model":"m","stream":true}"#).unwrap();
        let v: Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(ask_stream_usage(br#"{"model":"m"}"#).is_none());
        assert!(ask_stream_usage(br#"{"stream":false}"#).is_none());
        assert!(
            ask_stream_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#)
                .is_none()
        );
    }
}
