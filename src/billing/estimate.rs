//! Token counts keygate estimates itself when an upstream reports no usage (a stream cut short
//! before its usage event, a provider that never sends one): OpenAI's `o200k_base` tokenizer
//! over the text of the request and of the answer, which is close for OpenAI models and a fair
//! guess for others. Rows with such counts are marked `estimated`.
use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// How much of an answer is kept to estimate from; a longer answer is scaled up by its size.
pub const SAMPLE_BYTES: usize = 16 * 1024;

fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Tokens in `text`; about four characters a token if the tokenizer cannot load.
pub fn count(text: &str) -> u64 {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as u64,
        None => text.len().div_ceil(4) as u64,
    }
}

/// Metadata fields whose strings are not text the model read or wrote.
const NOT_TEXT: &[&str] = &[
    "id",
    "object",
    "model",
    "role",
    "type",
    "finish_reason",
    "stop_reason",
    "system_fingerprint",
    "created",
    "index",
    "name",
    "tool_call_id",
    "service_tier",
    "mimeType",
    "finishReason",
    "modelVersion",
    "responseId",
];

fn collect(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if !NOT_TEXT.contains(&k.as_str()) {
                    collect(x, out);
                }
            }
        }
        _ => {}
    }
}

/// The text of a JSON document, or of every JSON `data:` line of an SSE stream.
pub fn text_of(bytes: &[u8]) -> String {
    let mut out = String::new();
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        collect(&v, &mut out);
        return out;
    }
    for line in String::from_utf8_lossy(bytes).lines() {
        if let Some(data) = line.strip_prefix("data:")
            && let Ok(v) = serde_json::from_str::<Value>(data.trim())
        {
            collect(&v, &mut out);
        }
    }
    out
}

/// Prompt tokens of a request body.
pub fn prompt(body: &[u8]) -> u64 {
    count(&text_of(body))
}

/// Completion tokens of an answer of `total` bytes whose first bytes are `sample`.
pub fn completion(sample: &[u8], total: u64) -> u64 {
    if sample.is_empty() {
        return 0;
    }
    let n = count(&text_of(sample));
    if (sample.len() as u64) < total {
        // Scaled by size: a long answer's sample stands for the rest of it.
        (n as u128 * total as u128 / sample.len() as u128) as u64
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_of_requests_and_streams_is_counted_without_their_metadata() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello there, how are you?"}]}"#;
        let n = prompt(body);
        assert!((5..=9).contains(&n), "{n}");
        let sse = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"I am fine\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\", thank you.\"}}]}\n\n",
            "data: [DONE]\n\n"
        );
        let n = completion(sse.as_bytes(), sse.len() as u64);
        assert!((4..=10).contains(&n), "{n}");
        assert_eq!(completion(sse.as_bytes(), 2 * sse.len() as u64), 2 * n);
        assert_eq!(completion(b"", 100), 0);
    }
}
