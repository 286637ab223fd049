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

/// Builds the client's response from an upstream answer. `error_kind` marks a failure answer
/// passed through as it is; `head` a HEAD request (no body will be polled).
pub fn deliver(
    resp: reqwest::Response,
    mut fin: Finish,
    error_kind: Option<&'static str>,
    head: bool,
) -> Response {
    let status = resp.status();
    let headers = headers::downstream(resp.headers());
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
    let idle = fin
        .svc
        .as_ref()
        .map(|s| s.request_timeout)
        .unwrap_or(Duration::from_secs(60));
    let metered = Metered {
        expected: resp.content_length(),
        sent: 0,
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
    /// Longest wait for the next chunk before the stream counts as broken.
    idle: Duration,
    stall: Pin<Box<Sleep>>,
    scanner: UsageScanner,
    /// None once the request has ended.
    fin: Option<Finish>,
    success: bool,
    error_kind: Option<&'static str>,
    sse: bool,
}

impl Metered {
    fn end(&mut self) {
        self.scanner.finish();
        if let Some(mut fin) = self.fin.take() {
            fin.tokens = self.scanner.tokens;
            fin.end(self.success, self.error_kind);
        }
    }

    /// The upstream broke or stalled after bytes went out: mark the key, end an SSE stream with
    /// an error event in the client's format (other bodies end with an error).
    fn broken(&mut self, why: String) -> Poll<Option<Result<Bytes, std::io::Error>>> {
        let Some(mut fin) = self.fin.take() else {
            return Poll::Ready(None);
        };
        tracing::warn!(key = %fin.masked_key(), error = %why, "upstream stream broke mid-way");
        self.scanner.finish();
        fin.tokens = self.scanner.tokens;
        let fmt = fin.client_fmt;
        fin.end_broken("stream broke mid-way");
        if self.sse {
            Poll::Ready(Some(Ok(fmt.stream_error_event(
                "the upstream stream failed before it completed",
            ))))
        } else {
            Poll::Ready(Some(Err(std::io::Error::other("upstream body broke"))))
        }
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(fin) = this.fin.as_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if fin.ttft.is_none() {
                    fin.ttft = Some(fin.started.elapsed());
                }
                this.stall.as_mut().reset(Instant::now() + this.idle);
                this.scanner.feed(&chunk);
                this.sent += chunk.len() as u64;
                if this.expected.is_some_and(|n| this.sent >= n) {
                    this.end();
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.broken(e.without_url().to_string()),
            Poll::Pending => {
                if this.stall.as_mut().poll(cx).is_ready() {
                    let why = format!("no data for {} ms", this.idle.as_millis());
                    return this.broken(why);
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The client went away mid-answer: charge what the upstream reported so far.
        if let Some(fin) = self.fin.as_mut() {
            self.scanner.finish();
            fin.tokens = self.scanner.tokens;
        }
    }
}
