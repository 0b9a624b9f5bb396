//! Reading an upstream's answer into memory, bounded in size and in time. Everything
//! Ferry buffers from an upstream (tokens, exchanges, manifests, tag lists, referrers)
//! comes through here: an endless or dripping body costs at most `limit` bytes and
//! `deadline` of waiting, then the request fails naming the upstream.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::Error;

/// What a buffered answer may be and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// What the body is, for the error: "token response", "tag list".
    pub what: &'static str,
    pub limit: usize,
    pub deadline: Duration,
}

/// Reads `resp`'s body whole, refusing it once it passes `bound.limit` bytes (a
/// `Content-Length` over the limit is refused before reading) or `bound.deadline`.
/// Calls `on_chunk` with each chunk's length (for the metrics).
pub async fn read(
    upstream: &str,
    resp: reqwest::Response,
    bound: Bound,
    mut on_chunk: impl FnMut(usize),
) -> Result<Bytes, Error> {
    let too_large = || Error::TooLarge {
        upstream: upstream.to_string(),
        what: bound.what,
        limit: bound.limit,
    };
    if resp
        .content_length()
        .is_some_and(|len| len > bound.limit as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    let reading = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::broke_off(upstream, &e))?;
            if body.len() + chunk.len() > bound.limit {
                return Err(too_large());
            }
            on_chunk(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(bound.deadline, reading).await {
        Ok(Ok(())) => Ok(body.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::TooSlow {
            upstream: upstream.to_string(),
            what: bound.what,
            deadline: bound.deadline,
        }),
    }
}
