//! Request bodies: JSON only, of a bounded size, read as a stream so that a body larger than
//! its limit is refused as soon as it grows past it, within a time budget, and within one byte
//! budget shared by every body being read.

use super::error::answer;
use super::ApiError;
use crate::config::Config;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use warp::{Filter, Rejection};

/// What all bodies being read may hold together, and how fast each must arrive.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    /// One permit per byte of body read and not yet handed to its handler.
    bytes: Arc<Semaphore>,
    /// The time any body may take...
    timeout: Duration,
    /// ...plus one second for every this many bytes it has sent.
    min_rate: u64,
}

impl BodyBudget {
    pub fn from_config(config: &Config) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(config.http_body_budget_bytes)),
            timeout: Duration::from_millis(config.http_body_timeout_ms),
            min_rate: config.http_body_min_rate.max(1),
        }
    }

    /// When a body that started at `start` and has sent `received` bytes is out of time.
    fn deadline(&self, start: Instant, received: usize) -> Instant {
        start + self.timeout + Duration::from_secs_f64(received as f64 / self.min_rate as f64)
    }

    /// `more` bytes of the budget, added to `held`; none left is a 503.
    fn take(&self, held: &mut Option<OwnedSemaphorePermit>, more: usize) -> Result<(), ApiError> {
        let more = u32::try_from(more).unwrap_or(u32::MAX);
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| {
                metrics::counter!(crate::stats::BODY_BUDGET_SPENT).increment(1);
                ApiError::Overloaded("the service is reading too many request bodies, retry later")
            })?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

/// A JSON request body of at most `limit` bytes: 415 for another content type, 413 when larger
/// (whether or not a content-length says so up front), 408 when it does not arrive within its
/// time, 503 when the bodies being read hold the whole byte budget.
pub fn json_body(
    limit: u64,
    budget: &BodyBudget,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    let budget = budget.clone();
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .map(move |kind: Option<String>, length: Option<u64>| {
            let json = kind.as_deref().is_some_and(|k| {
                k.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
            if json {
                Ok(length)
            } else {
                Err(ApiError::UnsupportedMediaType)
            }
        })
        .and_then(answer)
        .and(warp::body::stream())
        .then(move |length: Option<u64>, stream| {
            let budget = budget.clone();
            async move { read_limited(stream, limit, length, &budget).await }
        })
        .and_then(answer)
}

/// Reads a body stream, refusing it as soon as it grows past `limit`, runs out of time or would
/// spend more than the budget has left. A declared length is taken from the budget up front.
async fn read_limited<B: Buf>(
    stream: impl Stream<Item = Result<B, warp::Error>>,
    limit: u64,
    length: Option<u64>,
    budget: &BodyBudget,
) -> Result<Bytes, ApiError> {
    let mut stream = std::pin::pin!(stream);
    if length.is_some_and(|n| n > limit) {
        drain(stream.as_mut()).await;
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let start = Instant::now();
    let mut held = None;
    let mut reserved = length.unwrap_or(0) as usize;
    if reserved > 0 {
        budget.take(&mut held, reserved)?;
    }
    let mut body = BytesMut::with_capacity(reserved);
    loop {
        // A body that is already here never arms the timer.
        let next = tokio::time::timeout_at(budget.deadline(start, body.len()), stream.next());
        let Some(chunk) = next.await.map_err(|_| ApiError::BodyTimeout)? else {
            break;
        };
        let mut chunk =
            chunk.map_err(|e| ApiError::MalformedJson(format!("could not read the body: {e}")))?;
        let size = body.len() + chunk.remaining();
        if size as u64 > limit {
            drain(stream.as_mut()).await;
            return Err(ApiError::PayloadTooLarge(limit));
        }
        if size > reserved {
            budget.take(&mut held, size - reserved)?;
            reserved = size;
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// Reads and drops what is left of a refused body, for a bounded time and size, so the client
/// finishes sending and reads the 413 instead of a reset connection.
async fn drain<B: Buf>(mut stream: Pin<&mut impl Stream<Item = Result<B, warp::Error>>>) {
    let mut drained: usize = 0;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.remaining();
            if drained > 16 * 1024 * 1024 {
                break;
            }
        }
    })
    .await;
}
