//! Request bodies: JSON only, of a bounded size, read as a stream so that a body larger than
//! its limit is refused as soon as it grows past it, within a time budget, and within a byte
//! budget shared by every body being read or handled.

use super::error::answer;
use super::{ApiError, MAX_BODY};
use crate::config::Config;
use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use warp::{Filter, Rejection};

/// What the bodies being read and handled may hold together, and how fast each must arrive.
/// Small bodies (at most [`MAX_BODY`]: one order, a status change) have a quarter of the bytes
/// to themselves, so that batches, however many are held open, cannot keep one order out.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    /// One permit per byte allocated for a body of at most [`MAX_BODY`], until its response.
    small: Arc<Semaphore>,
    /// The same for larger bodies (batches).
    large: Arc<Semaphore>,
    /// The time any body may take...
    timeout: Duration,
    /// ...plus one second for every this many bytes it has sent.
    min_rate: u64,
}

/// A request body, and its share of the budget: held until the handler is done with it.
#[derive(Debug)]
pub struct Body {
    bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl BodyBudget {
    pub fn from_config(config: &Config) -> BodyBudget {
        let small = config.http_body_budget_bytes / 4;
        BodyBudget {
            small: Arc::new(Semaphore::new(small)),
            large: Arc::new(Semaphore::new(config.http_body_budget_bytes - small)),
            timeout: Duration::from_millis(config.http_body_timeout_ms),
            min_rate: config.http_body_min_rate.max(1),
        }
    }

    /// The bytes a body of at most `limit` bytes draws from.
    fn pool(&self, limit: u64) -> &Arc<Semaphore> {
        if limit <= MAX_BODY {
            &self.small
        } else {
            &self.large
        }
    }

    /// When a body that started at `start` and has sent `received` bytes is out of time.
    fn deadline(&self, start: Instant, received: usize) -> Instant {
        start + self.timeout + Duration::from_secs_f64(received as f64 / self.min_rate as f64)
    }

    /// `more` bytes of `pool`, added to `held`; none left is a 503.
    fn take(
        pool: &Arc<Semaphore>,
        held: &mut Option<OwnedSemaphorePermit>,
        more: usize,
    ) -> Result<(), ApiError> {
        let more = u32::try_from(more).unwrap_or(u32::MAX);
        let permit = pool.clone().try_acquire_many_owned(more).map_err(|_| {
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
/// time, 503 when the bodies being read and handled hold their whole byte budget.
pub fn json_body(
    limit: u64,
    budget: &BodyBudget,
) -> impl Filter<Extract = (Body,), Error = Rejection> + Clone {
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
                Ok(length.is_some_and(|n| n > limit))
            } else {
                Err(ApiError::UnsupportedMediaType)
            }
        })
        .and_then(answer)
        .and(warp::body::stream())
        .then(move |too_large: bool, stream| {
            let budget = budget.clone();
            async move { read_limited(stream, limit, too_large, &budget).await }
        })
        .and_then(answer)
}

/// Reads a body stream, refusing it as soon as it grows past `limit`, runs out of time or would
/// allocate more than the budget has left. The budget counts what is allocated, as it is: a
/// declared length reserves nothing before its bytes arrive.
async fn read_limited<B: Buf>(
    stream: impl Stream<Item = Result<B, warp::Error>>,
    limit: u64,
    too_large: bool,
    budget: &BodyBudget,
) -> Result<Body, ApiError> {
    let mut stream = std::pin::pin!(stream);
    if too_large {
        drain(stream.as_mut()).await;
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let pool = budget.pool(limit);
    let start = Instant::now();
    let mut held = None;
    let mut body: Vec<u8> = Vec::new();
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
            drop((body, held));
            drain(stream.as_mut()).await;
            return Err(ApiError::PayloadTooLarge(limit));
        }
        if size > body.capacity() {
            // Doubling, as a Vec grows, within the limit: a body in many chunks is copied a
            // few times, and a client must send half of what it makes the service allocate.
            let grown = (body.capacity() * 2).clamp(size, limit as usize);
            BodyBudget::take(pool, &mut held, grown - body.capacity())?;
            body.reserve_exact(grown - body.len());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Body {
        bytes: Bytes::from(body),
        _budget: held,
    })
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
