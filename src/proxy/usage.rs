//! Token usage read from upstream answers as they stream past, in all three wire formats:
//! OpenAI (`usage.prompt_tokens`/`completion_tokens`), Anthropic (`usage.input_tokens`/
//! `output_tokens`, also inside `message_start`) and Gemini (`usageMetadata.promptTokenCount`/
//! `candidatesTokenCount`). SSE lines are inspected one by one; a JSON body is kept (up to a cap)
//! and read at the end. Bytes are never changed or held back.
use serde_json::Value;

const JSON_CAP: usize = 2 * 1024 * 1024;
/// Upstream-reported counts above this are not believed (they would lock a client out for years).
const MAX_TOKENS: u64 = 10_000_000;

#[derive(Debug, Default)]
pub struct UsageScanner {
    sse: bool,
    buf: Vec<u8>,
    overflow: bool,
    pub prompt: u64,
    pub completion: u64,
}

impl UsageScanner {
    pub fn new(sse: bool) -> Self {
        Self {
            sse,
            ..Default::default()
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflow {
            return;
        }
        self.buf.extend_from_slice(chunk);
        if self.sse {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                self.line(&line);
            }
            if self.buf.len() > JSON_CAP {
                self.buf.clear();
            }
        } else if self.buf.len() > JSON_CAP {
            self.overflow = true;
            self.buf = Vec::new();
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Only events that mention usage are parsed.
        if !contains(data, b"sage") {
            return;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
            self.take(&v);
        }
    }

    /// Call at the end of the body.
    pub fn finish(&mut self) {
        if self.sse {
            let rest = std::mem::take(&mut self.buf);
            self.line(&rest);
        } else if !self.overflow
            && let Ok(v) = serde_json::from_slice::<Value>(&self.buf)
        {
            self.take(&v);
        }
        self.buf = Vec::new();
    }

    fn take(&mut self, v: &Value) {
        let n = |v: &Value| v.as_u64().map(|n| n.min(MAX_TOKENS));
        let mut seen = |p: Option<u64>, c: Option<u64>| {
            if let Some(p) = p {
                self.prompt = self.prompt.max(p);
            }
            if let Some(c) = c {
                self.completion = self.completion.max(c);
            }
        };
        for u in [&v["usage"], &v["message"]["usage"]] {
            if u.is_object() {
                seen(
                    n(&u["prompt_tokens"]).or_else(|| n(&u["input_tokens"])),
                    n(&u["completion_tokens"]).or_else(|| n(&u["output_tokens"])),
                );
            }
        }
        let g = &v["usageMetadata"];
        if g.is_object() {
            seen(n(&g["promptTokenCount"]), n(&g["candidatesTokenCount"]));
        }
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.prompt + self.completion
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
        let mut s = UsageScanner::new(false);
        s.feed(br#"{"id":"x","usage":{"prompt_tokens":12,"#);
        s.feed(br#""completion_tokens":5,"total_tokens":17}}"#);
        s.finish();
        assert_eq!((s.prompt, s.completion, s.total()), (12, 5, 17));
    }

    #[test]
    fn reads_usage_from_sse_split_across_chunks() {
        let mut s = UsageScanner::new(true);
        s.feed(b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usa");
        s.feed(b"ge\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
        s.finish();
        assert_eq!(s.total(), 10);
    }

    #[test]
    fn reads_anthropic_and_gemini_streams() {
        let mut s = UsageScanner::new(true);
        s.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n");
        s.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n");
        s.finish();
        assert_eq!((s.prompt, s.completion), (20, 9));
        let mut g = UsageScanner::new(true);
        g.feed(b"data: {\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":6}}\r\n\r\n");
        g.finish();
        assert_eq!(g.total(), 10);
    }

    #[test]
    fn oversized_json_bodies_are_not_kept() {
        let mut s = UsageScanner::new(false);
        s.feed(&vec![b' '; JSON_CAP + 1]);
        s.feed(br#"{"usage":{"prompt_tokens":1}}"#);
        s.finish();
        assert_eq!(s.total(), 0);
    }
}
