//! The canonical chat model: what every wire format converts to and from when the client's format
//! and the upstream's differ. A request, a whole response and a stream event each have one shape
//! here; each format file reads its own wire shape into these and writes them back out. Nothing
//! here is used when the formats match: same-format traffic passes through byte for byte.
//!
//! Conventions every format file keeps:
//! - tool call arguments travel as JSON text, exactly as the model produced them (streamed
//!   fragments concatenate to the same text);
//! - tool results are parts of a user message, as Anthropic and Gemini have them; OpenAI's `tool`
//!   role messages become such parts and back;
//! - usage is `crate::events::Tokens` (prompt includes cached tokens);
//! - what a target format cannot carry is refused with `Unsupported` naming the feature, never
//!   dropped silently; what it can carry but keygate does not model rides in `extra`.
use serde_json::{Map, Value};

use crate::events::Tokens;

/// A feature the target format cannot express; the client gets a 400 in its own format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

impl Unsupported {
    pub fn new(what: impl Into<String>) -> Self {
        Self(what.into())
    }
}

/// A request body keygate could not read as the format it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    /// System instructions, in order.
    pub system: Vec<Part>,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// The client asked for usage in the stream (OpenAI `stream_options.include_usage`).
    pub include_usage: bool,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    /// An end-user id (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// Fields of the client's body that keygate does not model, for targets that share them.
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            system: Vec::new(),
            messages: Vec::new(),
            max_tokens: None,
            temperature: None,
            top_p: None,
            top_k: None,
            stop: Vec::new(),
            stream: false,
            include_usage: false,
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: None,
            response_format: None,
            user: None,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
    /// A call the assistant made; `arguments` is JSON text.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The result of a call, sent back by the client.
    ToolResult {
        id: String,
        /// The tool's name where the client gave it (Gemini needs it; OpenAI does not send it).
        name: Option<String>,
        content: Vec<Part>,
        is_error: bool,
    },
    /// Model reasoning the upstream returned (Anthropic thinking, Gemini thoughts).
    Thinking {
        text: String,
        signature: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Base64 { media_type: String, data: String },
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Tool(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    /// A stop sequence matched (OpenAI reports it as `stop`).
    StopSequence,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    /// Text, tool calls and thinking, in order.
    pub parts: Vec<Part>,
    pub finish: Option<FinishReason>,
    pub usage: Option<Tokens>,
}

/// One step of a streamed answer. Tool calls are numbered by `index`, in the order they start;
/// their argument fragments concatenate to the call's JSON text.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The answer's id and model; always first.
    Start {
        id: String,
        model: String,
    },
    TextDelta(String),
    ThinkingDelta(String),
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallDelta {
        index: usize,
        arguments: String,
    },
    Finish(FinishReason),
    /// Usage so far (cumulative; the last one counts).
    Usage(Tokens),
    /// The upstream reported an error inside the stream.
    Error {
        message: String,
    },
    /// The upstream's stream ended normally.
    End,
}

/// Reads an upstream's stream, one SSE event (or one JSON element) at a time.
pub trait StreamDecoder: Send {
    /// `event` is the SSE `event:` name when there was one; `data` the event's data.
    fn event(&mut self, event: Option<&str>, data: &str, out: &mut Vec<StreamEvent>);
}

/// Writes a client's stream. Stateful: formats number blocks, repeat ids, open and close blocks.
pub trait StreamEncoder: Send {
    fn encode(&mut self, ev: &StreamEvent, out: &mut Vec<u8>);
}
