//! Wire formats: one file per format (`openai`, `anthropic`, `gemini`, `rest`), each holding what
//! keygate must know about it: how requests are recognised from the path, its error shapes (JSON
//! and in-stream), where usage is reported (cache tokens included), its default upstream auth rule
//! and how it says a key's quota is gone. The proxy asks `Format` and never names a vendor itself.
//!
//! Today every request passes through byte for byte: the client's format only decides the shape
//! of the errors keygate itself returns. Translation between formats plugs in here (a registry
//! keyed by (client format, upstream format) with identity for same-format pairs).
pub mod anthropic;
pub mod canonical;
pub mod gemini;
pub mod openai;
pub mod openai_responses;
pub mod registry;
pub mod rest;
pub mod sse;

use bytes::Bytes;
use serde_json::Value;

use crate::events::Tokens;
use crate::proxy::error::ErrorKind;
use crate::snapshot::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    OpenAi,
    Anthropic,
    Gemini,
    /// Plain REST APIs behind `/proxy/{slug}`: no LLM semantics.
    Rest,
}

/// What a request path asks for, in the client's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Responses,
    Embeddings,
    Models,
    Messages,
    CountTokens,
    /// Gemini `models/{model}:{method}`; the model is part of the path.
    Gemini {
        model: String,
        method: String,
    },
    /// Anything else: passed through as it is.
    Other,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Rest => "rest",
        }
    }

    /// The format an upstream of this kind speaks.
    pub fn of_kind(kind: Kind) -> Self {
        match kind {
            // A router speaks its targets' formats; OpenAI is what its own errors default to.
            Kind::OpenAi | Kind::Router => Self::OpenAi,
            Kind::Anthropic => Self::Anthropic,
            Kind::Gemini => Self::Gemini,
            Kind::Rest => Self::Rest,
        }
    }

    /// The client's format and endpoint from the path after the slug (version segment included,
    /// e.g. `v1/messages`), or None when no LLM format claims it.
    pub fn recognise(path: &str) -> Option<(Self, Endpoint)> {
        let path = path.split('?').next().unwrap_or(path).trim_matches('/');
        anthropic::recognise(path)
            .map(|e| (Self::Anthropic, e))
            .or_else(|| gemini::recognise(path).map(|e| (Self::Gemini, e)))
            .or_else(|| openai::recognise(path).map(|e| (Self::OpenAi, e)))
    }

    /// The error body keygate returns to a client of this format.
    pub fn error_body(self, kind: ErrorKind, message: &str) -> Value {
        match self {
            Self::OpenAi => openai::error_body(kind, message),
            Self::Anthropic => anthropic::error_body(kind, message),
            Self::Gemini => gemini::error_body(kind, message),
            Self::Rest => rest::error_body(kind, message),
        }
    }

    /// The error body for an upstream's error answer re-worded in this format, keeping its
    /// status: the type names follow the status as each format names them.
    pub fn upstream_error_body(self, status: u16, message: &str) -> Value {
        let kind = match status {
            400 | 422 => ErrorKind::BadRequest,
            401 => ErrorKind::BadAccessKey,
            403 => ErrorKind::SlugNotAllowed,
            404 => ErrorKind::UnknownSlug,
            408 => ErrorKind::ClientTimeout,
            413 => ErrorKind::BodyTooLarge,
            429 => ErrorKind::UpstreamRateLimited,
            503 => ErrorKind::NoUsableKey,
            504 => ErrorKind::UpstreamTimeout,
            _ => ErrorKind::UpstreamFailed,
        };
        let mut v = self.error_body(kind, message);
        // The code names keygate's own errors; an upstream's error keeps only its status.
        match self {
            Self::OpenAi | Self::Rest => v["error"]["code"] = Value::Null,
            Self::Gemini => v["error"]["code"] = Value::from(status),
            Self::Anthropic => {}
        }
        v
    }

    /// The terminal event of a stream that broke after bytes reached the client.
    pub fn stream_error_event(self, message: &str) -> Bytes {
        match self {
            Self::OpenAi | Self::Rest => openai::stream_error_event(message),
            Self::Anthropic => anthropic::stream_error_event(message),
            Self::Gemini => gemini::stream_error_event(message),
        }
    }

    /// Upstream auth header and value template used when the service sets none.
    pub fn default_auth(self) -> (&'static str, &'static str) {
        match self {
            Self::OpenAi => openai::DEFAULT_AUTH,
            Self::Anthropic => anthropic::DEFAULT_AUTH,
            Self::Gemini => gemini::DEFAULT_AUTH,
            Self::Rest => rest::DEFAULT_AUTH,
        }
    }

    /// True when an error answer of this upstream says the key's quota or credit is gone (as
    /// opposed to a passing rate limit).
    pub fn quota_exhausted(self, status: u16, body: &str) -> bool {
        match self {
            Self::OpenAi => openai::quota_exhausted(status, body),
            Self::Anthropic => anthropic::quota_exhausted(status, body),
            Self::Gemini => gemini::quota_exhausted(status, body),
            Self::Rest => {
                openai::quota_exhausted(status, body)
                    || anthropic::quota_exhausted(status, body)
                    || gemini::quota_exhausted(status, body)
            }
        }
    }

    /// Usage reported in one JSON object of an answer (a whole body or one stream event), in
    /// keygate's terms (see `Tokens`).
    /// Model ids of a model list in this format.
    pub fn decode_models(self, body: &[u8]) -> Vec<String> {
        match self {
            Self::Anthropic => anthropic::decode_models(body),
            Self::Gemini => gemini::decode_models(body),
            _ => openai::decode_models(body),
        }
    }

    /// A model list in this format.
    pub fn encode_models(self, ids: &[String]) -> Vec<u8> {
        match self {
            Self::Anthropic => anthropic::encode_models(ids),
            Self::Gemini => gemini::encode_models(ids),
            _ => openai::encode_models(ids),
        }
    }

    pub fn usage(self, v: &Value) -> Option<Tokens> {
        match self {
            Self::OpenAi => openai::usage(v),
            Self::Anthropic => anthropic::usage(v),
            Self::Gemini => gemini::usage(v),
            // A REST upstream may still be an LLM API keygate has no kind for.
            Self::Rest => openai::usage(v)
                .or_else(|| anthropic::usage(v))
                .or_else(|| gemini::usage(v)),
        }
    }

    /// The model a request body asks for, where the format puts it in the body.
    pub fn model_in_body(self, body: &[u8]) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct ModelField {
            model: Option<String>,
        }
        match self {
            Self::Gemini => None,
            _ => serde_json::from_slice::<ModelField>(body).ok()?.model,
        }
    }
}

/// Upstream-reported counts above this are not believed (they would lock a client out for years).
pub(crate) const MAX_TOKENS: u64 = 10_000_000;

pub(crate) fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0).min(MAX_TOKENS)
}

/// SSE `data:` line for a JSON value.
pub(crate) fn sse_data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_names_the_client_format() {
        let f = |p: &str| Format::recognise(p).map(|(f, _)| f);
        assert_eq!(f("v1/chat/completions"), Some(Format::OpenAi));
        assert_eq!(f("chat/completions"), Some(Format::OpenAi));
        assert_eq!(f("v1/responses"), Some(Format::OpenAi));
        assert_eq!(f("v1/embeddings"), Some(Format::OpenAi));
        assert_eq!(f("v1/messages"), Some(Format::Anthropic));
        assert_eq!(f("v1/messages/count_tokens"), Some(Format::Anthropic));
        assert_eq!(
            f("v1beta/models/gemini-2.5-pro:streamGenerateContent"),
            Some(Format::Gemini)
        );
        assert_eq!(f("v1beta/models"), Some(Format::Gemini));
        assert_eq!(f("v1/models"), Some(Format::OpenAi));
        assert_eq!(f("v1/files/abc"), None);
    }

    #[test]
    fn gemini_paths_carry_the_model() {
        let (_, e) = Format::recognise("v1beta/models/gemini-2.5-flash:generateContent").unwrap();
        assert_eq!(
            e,
            Endpoint::Gemini {
                model: "gemini-2.5-flash".into(),
                method: "generateContent".into()
            }
        );
    }
}
