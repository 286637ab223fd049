//! Stream metering: the upstream answer goes to the client chunk by chunk, unchanged, while usage
//! and time to first byte are read from it. The finaliser rides inside the body: it ends the
//! request when the body ends, breaks, stalls, or is dropped because the client went away.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use super::finish::Finish;
use super::headers;
use super::usage::UsageScanner;
use crate::formats::registry::Transform;

/// A translation of the answer on its way: the transform and the content type it produces.
pub struct Translating {
    pub transform: Box<dyn Transform>,
    pub content_type: &'static str,
}

/// Builds the client's response from an upstream answer. `error_kind` marks a failure answer
/// passed through as it is; `head` a HEAD request (no body will be polled).
pub fn deliver(
    resp: reqwest::Response,
    mut fin: Finish,
    error_kind: Option<&'static str>,
    head: bool,
    translating: Option<Translating>,
) -> Response {
    let status = resp.status();
    let mut headers = headers::downstream(resp.headers());
    fin.status = status.as_u16();
    fin.head_sent();
    let success = error_kind.is_none() && status.as_u16() < 400;
    let mut out = Response::new(Body::empty());
    *out.status_mut() = status;
    // An answer with no body (HEAD, 204, 304, Content-Length: 0) is never polled by the server,
    // so it ends here.
    let bodyless = head
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || resp.content_length() == Some(0);
    if bodyless {
        *out.headers_mut() = headers;
        fin.end(success, error_kind);
        return out;
    }
    let sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    fin.streamed = sse;
    if let Some(c) = fin.svc.as_ref().and_then(|s| s.capture.as_ref()) {
        // One byte past the cap, so the stored body can say it was cut.
        fin.response_capture = Some(Vec::with_capacity(
            (c.max_bytes as usize + 1).min(64 * 1024),
        ));
    }
    let transform = translating.map(|t| {
        // The body is rewritten: its length and type are the translation's.
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(t.content_type),
        );
        t.transform
    });
    let idle = fin
        .svc
        .as_ref()
        .map(|s| s.request_timeout)
        .unwrap_or(Duration::from_secs(60));
    let metered = Metered {
        expected: if transform.is_some() {
            None
        } else {
            resp.content_length()
        },
        transform,
        out: Vec::new(),
        sent: 0,
        sample: Vec::new(),
        idle,
        stall: Box::pin(tokio::time::sleep(idle)),
        scanner: UsageScanner::new(fin.upstream_fmt, sse),
        inner: resp.bytes_stream().boxed(),
        fin: Some(fin),
        success,
        error_kind,
        sse,
    };
    *out.body_mut() = Body::from_stream(metered);
    *out.headers_mut() = headers;
    out
}

struct Metered {
    inner: futures::stream::BoxStream<'static, Result<Bytes, reqwest::Error>>,
    /// Content-Length of the answer: the server stops polling once that much went out, so the
    /// end is recognised by the count rather than by the stream's end.
    expected: Option<u64>,
    sent: u64,
    /// The answer's first bytes, to estimate its tokens from when it reports no usage.
    sample: Vec<u8>,
    /// Longest wait for the next chunk before the stream counts as broken.
    idle: Duration,
    stall: Pin<Box<Sleep>>,
    scanner: UsageScanner,
    /// None once the request has ended.
    fin: Option<Finish>,
    /// Rewrites the answer into the client's format (None: bytes pass through as they are).
    transform: Option<Box<dyn Transform>>,
    out: Vec<u8>,
    success: bool,
    error_kind: Option<&'static str>,
    sse: bool,
}

impl Metered {
    fn end(&mut self) {
        self.scanner.finish();
        if let Some(mut fin) = self.fin.take() {
            self.charge(&mut fin);
            fin.end(self.success, self.error_kind);
        }
    }

    fn tokens(&self) -> crate::events::Tokens {
        match &self.transform {
            Some(t) => t.usage().unwrap_or_default(),
            None => self.scanner.tokens,
        }
    }

    /// The tokens the request is charged: what the upstream reported, else keygate's estimate
    /// from the request and the answer delivered so far (marked `estimated`).
    fn charge(&self, fin: &mut Finish) {
        let reported = self.tokens();
        if reported != crate::events::Tokens::default() || self.sent == 0 || !self.success {
            fin.tokens = reported;
            return;
        }
        use crate::billing::estimate;
        fin.tokens = crate::events::Tokens {
            prompt: fin.prompt.as_deref().map(estimate::prompt).unwrap_or(0),
            completion: estimate::completion(&self.sample, self.sent),
            ..Default::default()
        };
        fin.estimated = true;
    }

    /// The upstream broke or stalled after bytes went out: mark the key, end an SSE stream with
    /// an error event in the client's format (other bodies end with an error).
    fn broken(&mut self, why: String) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        let Some(mut fin) = self.fin.take() else {
            return Poll::Ready(None);
        };
        tracing::warn!(key = %fin.masked_key(), error = %why, "upstream stream broke mid-way");
        self.scanner.finish();
        self.charge(&mut fin);
        let fmt = fin.client_fmt;
        fin.end_broken("stream broke mid-way");
        let message = "the upstream stream failed before it completed";
        // A translated stream ends in the client's own grammar (a Responses `response.failed`,
        // a Gemini array element); a passthrough SSE stream with the format's error event.
        if let Some(t) = self.transform.as_mut() {
            let mut out = Vec::new();
            if t.error(message, &mut out) {
                return Poll::Ready(Some(Ok(Bytes::from(out))));
            }
        } else if self.sse {
            return Poll::Ready(Some(Ok(fmt.stream_error_event(message))));
        }
        Poll::Ready(Some(Err(std::io::Error::other("upstream body broke"))))
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let Some(fin) = this.fin.as_mut() else {
                return Poll::Ready(None);
            };
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.stall.as_mut().reset(Instant::now() + this.idle);
                    this.sent += chunk.len() as u64;
                    let room =
                        crate::billing::estimate::SAMPLE_BYTES.saturating_sub(this.sample.len());
                    if room > 0 {
                        this.sample
                            .extend_from_slice(&chunk[..room.min(chunk.len())]);
                    }
                    let chunk = match this.transform.as_mut() {
                        None => {
                            this.scanner.feed(&chunk);
                            chunk
                        }
                        Some(t) => {
                            t.chunk(&chunk, &mut this.out);
                            if this.out.is_empty() {
                                // Nothing to say yet (a partial event): read on.
                                continue;
                            }
                            Bytes::from(std::mem::take(&mut this.out))
                        }
                    };
                    if fin.ttft.is_none() {
                        fin.ttft = Some(fin.started.elapsed());
                    }
                    if let Some(buf) = fin.response_capture.as_mut() {
                        let cap = fin
                            .svc
                            .as_ref()
                            .and_then(|s| s.capture.as_ref())
                            .map_or(0, |c| c.max_bytes as usize + 1);
                        let room = cap.saturating_sub(buf.len());
                        buf.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    }
                    if this.expected.is_some_and(|n| this.sent >= n) {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Poll::Ready(None) => {
                    let tail = this.transform.as_mut().map(|t| {
                        t.finish(&mut this.out);
                        Bytes::from(std::mem::take(&mut this.out))
                    });
                    this.end();
                    return match tail {
                        Some(t) if !t.is_empty() => Poll::Ready(Some(Ok(t))),
                        _ => Poll::Ready(None),
                    };
                }
                Poll::Ready(Some(Err(e))) => return this.broken(e.without_url().to_string()),
                Poll::Pending => {
                    if this.stall.as_mut().poll(cx).is_ready() {
                        let why = format!("no data for {} ms", this.idle.as_millis());
                        return this.broken(why);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The client went away mid-answer: charge what the upstream reported so far.
        if let Some(mut fin) = self.fin.take() {
            self.scanner.finish();
            self.charge(&mut fin);
            // Dropping it ends the request as cancelled, with these tokens.
            drop(fin);
        }
    }
}
