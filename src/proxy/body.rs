//! Body policy: a request body up to `retry_buffer_bytes` with a declared length is buffered, so a
//! failed attempt can be sent again on another key; anything else streams straight through with a
//! single attempt, with `max_body_bytes` enforced as it streams. What goes wrong with a streamed
//! body is noted, so the client's own failure is never blamed on a key.
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::error::ErrorKind;

pub enum ReqBody {
    /// Buffered: can be sent again on another key.
    Buffered(Bytes),
    /// Streamed straight through: one attempt only.
    Stream(Option<Body>, BodyFault),
}

impl ReqBody {
    /// The body when it is buffered (and so can be sent again).
    pub fn buffered(&self) -> Option<Bytes> {
        match self {
            Self::Buffered(b) => Some(b.clone()),
            Self::Stream(..) => None,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, Self::Stream(..))
    }

    /// The body for the next attempt; None once a streamed body has been used.
    pub fn next(&mut self) -> Option<reqwest::Body> {
        match self {
            Self::Buffered(b) => Some(reqwest::Body::from(b.clone())),
            Self::Stream(s, _) => s
                .take()
                .map(|b| reqwest::Body::wrap_stream(b.into_data_stream())),
        }
    }

    /// The whole body, read to its end (at most `max` bytes): translation needs all of it.
    pub async fn whole(&mut self, max: usize) -> Result<Bytes, (ErrorKind, String)> {
        match self {
            Self::Buffered(b) => Ok(b.clone()),
            Self::Stream(s, fault) => {
                let body = s.take().ok_or((
                    ErrorKind::BadRequest,
                    "the request body was already sent".to_string(),
                ))?;
                match axum::body::to_bytes(body, max).await {
                    Ok(b) => Ok(b),
                    Err(_) if fault.get() == BodyFault::TOO_LARGE => Err((
                        ErrorKind::BodyTooLarge,
                        format!("request body exceeds the limit of {max} bytes"),
                    )),
                    Err(_) => Err((
                        ErrorKind::BadRequest,
                        "could not read request body".to_string(),
                    )),
                }
            }
        }
    }

    pub fn fault(&self) -> u8 {
        match self {
            Self::Buffered(_) => BodyFault::DONE,
            Self::Stream(_, f) => f.get(),
        }
    }
}

/// Reads or wraps the body per the policy above; refuses a declared length over the limit.
pub async fn take(
    headers: &HeaderMap,
    body: Body,
    max_body: usize,
    retry_buffer: usize,
) -> Result<ReqBody, (ErrorKind, String)> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err((
            ErrorKind::BodyTooLarge,
            format!("request body exceeds the limit of {max_body} bytes"),
        ));
    }
    match declared {
        Some(n) if n <= retry_buffer as u64 => match axum::body::to_bytes(body, n as usize).await {
            Ok(b) => Ok(ReqBody::Buffered(b)),
            Err(_) => Err((
                ErrorKind::BadRequest,
                "could not read request body".to_string(),
            )),
        },
        _ => {
            let fault = BodyFault::default();
            Ok(ReqBody::Stream(
                Some(limit(body, max_body, fault.clone())),
                fault,
            ))
        }
    }
}

/// What went wrong with a streamed request body, if anything: the client's fault, not the key's.
#[derive(Clone, Default)]
pub struct BodyFault(Arc<AtomicU8>);

impl BodyFault {
    pub const TOO_LARGE: u8 = 1;
    pub const BROKEN: u8 = 2;
    /// The whole body went upstream.
    pub const DONE: u8 = 3;

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Applies `max` to a body of unknown length as it streams, and notes in `fault` when the
/// client's body failed (too large, or the client broke off).
fn limit(body: Body, max: usize, fault: BodyFault) -> Body {
    let mut seen = 0usize;
    let broken = fault.clone();
    let done = fault.clone();
    let stream = body
        .into_data_stream()
        .map_err(move |e| {
            broken.0.store(BodyFault::BROKEN, Ordering::Relaxed);
            axum::Error::new(e)
        })
        .and_then(move |chunk| {
            seen += chunk.len();
            let over = seen > max;
            if over {
                fault.0.store(BodyFault::TOO_LARGE, Ordering::Relaxed);
            }
            async move {
                if over {
                    Err(axum::Error::new(std::io::Error::other(
                        "request body too large",
                    )))
                } else {
                    Ok(chunk)
                }
            }
        });
    // Marks the end of the client's body, so a timeout while it is still uploading is not
    // blamed on the key.
    let end = futures::stream::once(async move {
        done.0.store(BodyFault::DONE, Ordering::Relaxed);
        None::<Result<Bytes, axum::Error>>
    })
    .filter_map(|x| async move { x });
    Body::from_stream(stream.chain(end))
}
