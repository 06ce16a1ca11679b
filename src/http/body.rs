//! Request bodies: JSON only, of a bounded size, read as a stream so that a body larger than
//! its limit is refused as soon as it grows past it.

use super::error::answer;
use super::ApiError;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;
use warp::{Filter, Rejection};

/// A JSON request body of at most `limit` bytes: 415 for another content type, 413 when larger
/// (whether or not a content-length says so up front).
pub fn json_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
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
        .then(move |too_large: bool, stream| read_limited(stream, limit, too_large))
        .and_then(answer)
}

/// Reads a body stream, refusing it as soon as it grows past `limit`.
async fn read_limited<B: Buf>(
    stream: impl Stream<Item = Result<B, warp::Error>>,
    limit: u64,
    too_large: bool,
) -> Result<Bytes, ApiError> {
    let mut stream = std::pin::pin!(stream);
    if too_large {
        drain(stream.as_mut()).await;
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::MalformedJson(format!("could not read the body: {e}")))?;
        if (body.len() + chunk.remaining()) as u64 > limit {
            drain(stream.as_mut()).await;
            return Err(ApiError::PayloadTooLarge(limit));
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
