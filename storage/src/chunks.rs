//! Reading blob files into response body chunks.
//!
//! A warm blob is in the page cache, where a read costs a copy and nothing else; the
//! thread hop of `spawn_blocking` would cost as much again, per chunk. So a chunk is
//! first read on the runtime worker with `preadv2(RWF_NOWAIT)`, which the kernel
//! answers from the page cache or refuses at once (`EAGAIN`) rather than waiting for
//! the disk; only then does the read go to the blocking pool.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

/// How much one body chunk carries. Small enough that 64 parallel downloads stay
/// within a few MiB of buffers (hyper queues up to ~400 KiB per connection on top).
pub const CHUNK: u64 = 128 * 1024;

/// Bytes `pos..pos + n` of `file` (fewer only at its end): one chunk.
pub async fn read_chunk(file: &Arc<File>, pos: u64, n: u64) -> io::Result<Bytes> {
    // Allocated here, on a runtime worker, never inside `spawn_blocking`: glibc gives
    // each thread that allocates its own malloc arena and keeps freed chunks there, so
    // buffers allocated on dozens of blocking threads (one per concurrent download)
    // would pin tens of MiB of freed memory. Allocated on the few workers, they are
    // reused.
    let mut buf = Vec::with_capacity(n as usize);
    let got = match read_cached(file, &mut buf, pos) {
        Some(got) => got,
        None => {
            buf.resize(n as usize, 0);
            let file = file.clone();
            let (b, got) = tokio::task::spawn_blocking(move || {
                let got = file.read_at(&mut buf, pos)?;
                Ok::<_, io::Error>((buf, got))
            })
            .await
            .map_err(io::Error::other)??;
            buf = b;
            got
        }
    };
    if got == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob file is shorter than its size",
        ));
    }
    buf.truncate(got);
    Ok(Bytes::from(buf))
}

/// Bytes `start..start + len` of `file`, a chunk at a time.
pub fn file_chunks(
    file: File,
    start: u64,
    len: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let file = Arc::new(file);
    futures_util::stream::try_unfold((file, start, len), |(file, pos, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let chunk = read_chunk(&file, pos, left.min(CHUNK)).await?;
        let got = chunk.len() as u64;
        Ok(Some((chunk, (file, pos + got, left - got))))
    })
}

/// Fills `buf`'s spare capacity with what the page cache holds at `pos`, read
/// without blocking, and returns how much that was; `None` when the read would wait
/// for the disk, or the kernel or filesystem cannot say (no `RWF_NOWAIT`), or at the
/// end of the file: the blocking read decides then.
fn read_cached(file: &File, buf: &mut Vec<u8>, pos: u64) -> Option<usize> {
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    // SAFETY: the kernel writes at most `iov_len` bytes into the spare capacity `iov`
    // points to, which `buf` owns and nothing else aliases; the length is set to no
    // more than what it reports written. Reading into uninitialised memory (rather
    // than zeroing a buffer first) is the point: zeroing costs a second pass over
    // every byte served.
    let got = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            i64::try_from(pos).ok()?,
            libc::RWF_NOWAIT,
        )
    };
    let got = usize::try_from(got).ok().filter(|&n| n > 0)?;
    // SAFETY: see above; `got <= iov_len <= capacity`.
    unsafe { buf.set_len(got) };
    Some(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    #[tokio::test]
    async fn chunks_cover_the_range_exactly() {
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut f, &data).unwrap();
        let (start, len) = (5, 2 * CHUNK + 100);
        let got: Vec<Bytes> = file_chunks(f.try_clone().unwrap(), start, len)
            .try_collect()
            .await
            .unwrap();
        assert!(got.iter().all(|c| c.len() as u64 <= CHUNK));
        assert_eq!(got.concat(), &data[start as usize..(start + len) as usize]);
    }

    #[tokio::test]
    async fn a_file_shorter_than_promised_is_an_error() {
        let mut f = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut f, b"short").unwrap();
        let r: io::Result<Vec<Bytes>> = file_chunks(f, 0, 10).try_collect().await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
