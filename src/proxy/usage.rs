//! Token usage read from upstream answers as they stream past, in the upstream's format (the
//! format files say where each reports usage). SSE lines are inspected one by one; a JSON body is
//! kept (up to a cap) and read at the end. Bytes are never changed or held back.
use serde::Deserialize;
use serde_json::Value;

use crate::events::Tokens;
use crate::formats::Format;

const JSON_CAP: usize = 2 * 1024 * 1024;

#[derive(Debug)]
pub struct UsageScanner {
    format: Format,
    sse: bool,
    buf: Vec<u8>,
    overflow: bool,
    /// The largest count seen per kind: streams repeat cumulative counts.
    pub tokens: Tokens,
    /// The upstream reported usage at all (otherwise counts may need estimating).
    pub reported: bool,
}

/// Only the members that can carry usage; everything else in the object is skipped unparsed.
#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Value,
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Value,
    #[serde(default)]
    message: Option<Inner>,
    #[serde(default)]
    response: Option<Inner>,
}

#[derive(Deserialize)]
struct Inner {
    #[serde(default)]
    usage: Value,
}

impl UsageScanner {
    pub fn new(format: Format, sse: bool) -> Self {
        Self {
            format,
            sse,
            buf: Vec::new(),
            overflow: false,
            tokens: Tokens::default(),
            reported: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        if !self.sse {
            self.buf.extend_from_slice(chunk);
            if self.buf.len() > JSON_CAP {
                self.overflow = true;
                self.buf = Vec::new();
            }
            return;
        }
        // Whole lines are read straight from the chunk; only a trailing partial line is kept.
        let mut rest = chunk;
        if !self.buf.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(pos) => {
                    self.buf.extend_from_slice(&rest[..=pos]);
                    let line = std::mem::take(&mut self.buf);
                    self.line(&line);
                    rest = &rest[pos + 1..];
                }
                None => {
                    self.buf.extend_from_slice(rest);
                    if self.buf.len() > JSON_CAP {
                        self.buf.clear();
                    }
                    return;
                }
            }
        }
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.line(&rest[..pos]);
            rest = &rest[pos + 1..];
        }
        self.buf.extend_from_slice(rest);
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Only events that mention usage are parsed.
        if !contains(data, b"sage") {
            return;
        }
        self.take(data.trim_ascii());
    }

    /// Call at the end of the body.
    pub fn finish(&mut self) {
        let rest = std::mem::take(&mut self.buf);
        if self.sse {
            self.line(&rest);
        } else if !self.overflow {
            self.take(&rest);
        }
    }

    fn take(&mut self, json: &[u8]) {
        let Ok(u) = serde_json::from_slice::<UsageOnly>(json) else {
            return;
        };
        let v = serde_json::json!({
            "usage": u.usage,
            "usageMetadata": u.usage_metadata,
            "message": {"usage": u.message.map(|m| m.usage).unwrap_or_default()},
            "response": {"usage": u.response.map(|m| m.usage).unwrap_or_default()},
        });
        if let Some(t) = self.format.usage(&v) {
            self.reported = true;
            let m = &mut self.tokens;
            m.prompt = m.prompt.max(t.prompt);
            m.completion = m.completion.max(t.completion);
            m.cache_read = m.cache_read.max(t.cache_read);
            m.cache_write = m.cache_write.max(t.cache_write);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_json_usage() {
        let mut s = UsageScanner::new(Format::OpenAi, false);
        s.feed(br#"{"id":"x","usage":{"prompt_tokens":12,"#);
        s.feed(br#""completion_tokens":5,"total_tokens":17}}"#);
        s.finish();
        assert_eq!((s.tokens.prompt, s.tokens.completion), (12, 5));
        assert!(s.reported);
    }

    #[test]
    fn reads_usage_from_sse_split_across_chunks() {
        let mut s = UsageScanner::new(Format::OpenAi, true);
        s.feed(b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usa");
        s.feed(b"ge\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
        s.finish();
        assert_eq!(s.tokens.total(), 10);
    }

    #[test]
    fn reads_anthropic_and_gemini_streams() {
        let mut s = UsageScanner::new(Format::Anthropic, true);
        s.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n");
        s.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
        s.finish();
        assert_eq!((s.tokens.prompt, s.tokens.completion), (20, 9));
        let mut g = UsageScanner::new(Format::Gemini, true);
        g.feed(b"data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":6}}\r\n\r\n");
        g.finish();
        assert_eq!(g.tokens.total(), 10);
    }

    #[test]
    fn a_line_split_over_three_chunks_is_read_once() {
        let mut s = UsageScanner::new(Format::OpenAi, true);
        s.feed(b"data: {\"usage\":{\"prompt");
        s.feed(b"_tokens\":2,");
        s.feed(b"\"completion_tokens\":1}}\n\n");
        s.finish();
        assert_eq!((s.tokens.prompt, s.tokens.completion), (2, 1));
    }

    #[test]
    fn oversized_json_bodies_are_not_kept() {
        let mut s = UsageScanner::new(Format::OpenAi, false);
        s.feed(&vec![b' '; JSON_CAP + 1]);
        s.feed(br#"{"usage":{"prompt_tokens":1}}"#);
        s.finish();
        assert_eq!(s.tokens.total(), 0);
        assert!(!s.reported);
    }
}
