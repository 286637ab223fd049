//! Optional capture of request and response bodies (#10), per service, off by default.
//!
//! A service with `capture` set keeps the first `max_bytes` of the client's request body and of
//! the answer the client received. Before a body leaves the request (to the log queue, the spool
//! or the database), the values of credential fields and of the service's `redact` fields are
//! replaced by `"[redacted]"`. Headers are never captured, so `Authorization` and `x-api-key`
//! never reach storage. Bodies live in `request_bodies`, pruned after `log.body_retention_days`.
//!
//! Redaction is textual rather than parse-and-reserialise: a capped body is usually cut mid-JSON
//! and a stream is many JSON documents, and both must still be redacted.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Default and largest `max_bytes`.
pub const DEFAULT_MAX_BYTES: u32 = 16 * 1024;
pub const MAX_MAX_BYTES: u32 = 1024 * 1024;
const MAX_FIELDS: usize = 64;
pub const REDACTED: &str = "[redacted]";

/// Field names whose values are always redacted, whatever the service adds (matched
/// case-insensitively, at any depth).
pub const CREDENTIAL_FIELDS: [&str; 10] = [
    "api_key",
    "apikey",
    "x-api-key",
    "authorization",
    "password",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
];

/// A service's capture settings (`capture` on the service; null = off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureSettings {
    /// Bytes kept of each body (default 16384, at most 1048576); the rest is cut.
    #[serde(default = "default_max_bytes")]
    #[schema(minimum = 1, maximum = 1048576)]
    pub max_bytes: u32,
    /// More JSON field names whose values are replaced by `"[redacted]"` (case-insensitive, at
    /// any depth), e.g. `["messages", "input"]` to keep prompts out. Credential fields
    /// (`api_key`, `authorization`, `password`, `token`, ...) are always redacted.
    #[serde(default)]
    pub redact: Vec<String>,
}

fn default_max_bytes() -> u32 {
    DEFAULT_MAX_BYTES
}

impl CaptureSettings {
    /// Checks the settings; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.max_bytes == 0 || self.max_bytes > MAX_MAX_BYTES {
            return Err(format!("max_bytes: must be between 1 and {MAX_MAX_BYTES}"));
        }
        if self.redact.len() > MAX_FIELDS {
            return Err(format!("redact: at most {MAX_FIELDS} field names"));
        }
        if let Some(f) = self
            .redact
            .iter()
            .find(|f| f.trim().is_empty() || f.len() > 128 || f.contains('"'))
        {
            return Err(format!(
                "redact: '{f}' is not a field name (1 to 128 characters, no quotes)"
            ));
        }
        Ok(())
    }

    pub fn from_db(v: &serde_json::Value) -> Result<Self, String> {
        let s: Self = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        s.check()?;
        Ok(s)
    }

    pub fn to_db(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Every field name to redact, lower-cased.
    fn fields(&self) -> Vec<String> {
        CREDENTIAL_FIELDS
            .iter()
            .map(|f| f.to_string())
            .chain(self.redact.iter().map(|f| f.to_ascii_lowercase()))
            .collect()
    }

    /// A body as it is stored: cut to `max_bytes` (on a character boundary, marked), as text,
    /// redacted.
    pub fn keep(&self, body: &[u8]) -> String {
        let max = self.max_bytes as usize;
        let cut = body.len() > max;
        let mut text = String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned();
        if cut {
            // A multi-byte character split at the cut shows as U+FFFD: drop it.
            while text.ends_with('\u{FFFD}') {
                text.pop();
            }
        }
        let mut out = redact(&text, &self.fields());
        if cut {
            out.push_str(&format!("…[cut at {max} bytes]"));
        }
        out
    }
}

/// What a request's capture kept, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bodies {
    pub request: Option<String>,
    pub response: Option<String>,
}

/// Replaces the value of every `"<field>": <value>` whose field name is in `fields`
/// (lower-case) by `"[redacted]"`. Works on JSON, on streams of JSON events and on JSON cut short
/// (a value that runs to the end of the text is redacted to the end).
pub fn redact(text: &str, fields: &[String]) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let Some(end) = string_end(b, i) else { break };
        // A string: is it a field name, followed by `:`?
        let name = &text[i + 1..end];
        let mut j = end + 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < b.len() && b[j] == b':' && fields.iter().any(|f| f.eq_ignore_ascii_case(name)) {
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let value_end = value_end(b, j);
            out.push_str(&text[copied..j]);
            out.push('"');
            out.push_str(REDACTED);
            out.push('"');
            copied = value_end;
            i = value_end;
            continue;
        }
        i = end + 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// The index of the quote closing the string that opens at `start` (None: it runs to the end).
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the JSON value starting at `start` (the text's end when it is cut).
fn value_end(b: &[u8], start: usize) -> usize {
    match b.get(start) {
        None => start,
        Some(b'"') => string_end(b, start).map_or(b.len(), |e| e + 1),
        Some(b'{') | Some(b'[') => {
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'"' => match string_end(b, i) {
                        Some(e) => i = e,
                        None => return b.len(),
                    },
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            b.len()
        }
        Some(_) => {
            // A number, true, false or null: up to the next delimiter.
            let mut i = start;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']' | b'\n' | b'\r') {
                i += 1;
            }
            // Keep the whitespace before the delimiter outside the redacted value.
            while i > start && b[i - 1].is_ascii_whitespace() {
                i -= 1;
            }
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(redact: &[&str], max: u32) -> CaptureSettings {
        CaptureSettings {
            max_bytes: max,
            redact: redact.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn credential_and_configured_fields_are_redacted_at_any_depth_whatever_their_value() {
        let s = settings(&["Messages"], 4096);
        let body = r#"{"model":"gpt","api_key":"sk-live-123","messages":[{"role":"user","content":"hi \"there\""}],"meta":{"Token": 42, "n": [1,2]},"password" : null}"#;
        let kept = s.keep(body.as_bytes());
        assert_eq!(
            kept,
            r#"{"model":"gpt","api_key":"[redacted]","messages":"[redacted]","meta":{"Token": "[redacted]", "n": [1,2]},"password" : "[redacted]"}"#
        );
        assert!(!kept.contains("sk-live-123"));
    }

    #[test]
    fn a_stream_of_events_is_redacted_event_by_event() {
        let s = settings(&["content"], 4096);
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"se\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"cret\"}}]}\n\ndata: [DONE]\n\n";
        let kept = s.keep(body.as_bytes());
        assert!(!kept.contains("\"se\"") && !kept.contains("cret"), "{kept}");
        assert_eq!(kept.matches(REDACTED).count(), 2);
        assert!(kept.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn a_body_cut_inside_a_redacted_value_is_redacted_to_its_end_and_marked() {
        let s = settings(&[], 30);
        let body = r#"{"model":"m","authorization":"Bearer abcdefghijklmnop"}"#;
        let kept = s.keep(body.as_bytes());
        assert!(!kept.contains("abcdef"), "{kept}");
        assert!(
            kept.starts_with(r#"{"model":"m","authorization":"[redacted]""#),
            "{kept}"
        );
        assert!(kept.ends_with("…[cut at 30 bytes]"), "{kept}");
    }

    #[test]
    fn settings_outside_their_bounds_name_the_field() {
        assert!(
            settings(&[], 0)
                .check()
                .unwrap_err()
                .starts_with("max_bytes")
        );
        assert!(settings(&[], MAX_MAX_BYTES + 1).check().is_err());
        assert!(
            settings(&[" "], 10)
                .check()
                .unwrap_err()
                .starts_with("redact")
        );
        assert!(settings(&["messages"], 10).check().is_ok());
        let parsed = CaptureSettings::from_db(&serde_json::json!({})).unwrap();
        assert_eq!(parsed.max_bytes, DEFAULT_MAX_BYTES);
    }
}
