//! Plain REST APIs behind `/proxy/{slug}`: paths pass verbatim, nothing is recognised, and the
//! errors keygate itself returns use the OpenAI-style envelope, which generic clients can read.
use serde_json::Value;

use crate::proxy::error::ErrorKind;

pub const DEFAULT_AUTH: (&str, &str) = ("authorization", "Bearer {key}");

pub fn error_body(kind: ErrorKind, message: &str) -> Value {
    super::openai::error_body(kind, message)
}
