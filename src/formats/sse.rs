//! An incremental Server-Sent Events reader: bytes in as they arrive, whole events out (the
//! `event:` name and the `data:` lines joined by `\n`), per the WHATWG grammar keygate needs:
//! `\n`, `\r\n` or `\r` line ends, comments, multi-line data, and events split across chunks.
#[derive(Debug, Default)]
pub struct SseReader {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    /// The last byte seen was `\r`: a following `\n` belongs to the same line end.
    after_cr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

impl SseReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; complete events are appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if b == b'\n' && self.after_cr {
                self.after_cr = false;
                start = i + 1;
                continue;
            }
            self.after_cr = false;
            if b == b'\n' || b == b'\r' {
                self.buf.extend_from_slice(&chunk[start..i]);
                let line = std::mem::take(&mut self.buf);
                self.line(&line, out);
                self.after_cr = b == b'\r';
                start = i + 1;
            }
        }
        self.buf.extend_from_slice(&chunk[start..]);
    }

    /// The stream ended: an event without its final blank line still counts.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line, out);
        }
        self.dispatch(out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if let Some(data) = self.data.take() {
            out.push(SseEvent { event, data });
        }
    }
}

/// Feeds a recorded stream through the reader in chunks of `size` bytes (so events and UTF-8
/// split anywhere) and each event into `dec`: what a format's decoder tests all need.
#[cfg(test)]
pub(crate) fn decode_in_chunks(
    dec: &mut dyn super::canonical::StreamDecoder,
    bytes: &[u8],
    size: usize,
) -> Vec<super::canonical::StreamEvent> {
    let mut reader = SseReader::new();
    let (mut sse, mut out) = (Vec::new(), Vec::new());
    for chunk in bytes.chunks(size) {
        reader.feed(chunk, &mut sse);
        for e in sse.drain(..) {
            dec.event(e.event.as_deref(), &e.data, &mut out);
        }
    }
    reader.finish(&mut sse);
    for e in sse.drain(..) {
        dec.event(e.event.as_deref(), &e.data, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut r = SseReader::new();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, &mut out);
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let ev = read(&[
            b"event: message_start\nda",
            b"ta: {\"a\":1}\n",
            b"\ndata: [DONE]\n\n",
        ]);
        assert_eq!(
            ev,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                }
            ]
        );
    }

    #[test]
    fn crlf_comments_and_multiline_data_are_read() {
        let ev = read(&[b": ping\r\ndata: a\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, "a\nb");
    }
}
