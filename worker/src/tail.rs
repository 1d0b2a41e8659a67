//! Keeps the last `limit` bytes of an output stream and counts the bytes dropped before
//! them. Owned by the task reading one pipe of one attempt; no concurrency.

use std::collections::VecDeque;

use gatehouse_common::exec::OutputTail;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of one read from a pipe.
const CHUNK: usize = 32 * 1024;

/// A ring buffer of the most recent bytes of a stream.
#[derive(Debug)]
pub(crate) struct TailBuf {
    /// The kept bytes; grows lazily up to `limit`, so short outputs cost little.
    buf: VecDeque<u8>,
    /// Maximum number of bytes kept.
    limit: usize,
    /// Bytes seen but no longer kept.
    dropped: u64,
}

impl TailBuf {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buf: VecDeque::new(),
            limit,
            dropped: 0,
        }
    }

    /// Appends `data`, dropping the oldest bytes beyond the limit.
    pub(crate) fn push(&mut self, data: &[u8]) {
        let kept_new = data.len().min(self.limit);
        let skipped_new = data.len() - kept_new;
        // `kept_new <= limit`, so this never exceeds `buf.len()`.
        let overflow = (self.buf.len() + kept_new).saturating_sub(self.limit);
        self.buf.drain(..overflow);
        self.dropped += (skipped_new + overflow) as u64;
        self.buf.extend(&data[skipped_new..]);
    }

    pub(crate) fn into_tail(self) -> OutputTail {
        OutputTail {
            bytes: self.buf.into(),
            dropped: self.dropped,
        }
    }
}

/// Reads `pipe` to its end into `buf`. A read error ends the stream (logged at debug):
/// the output is informational and must never fail the attempt.
pub(crate) async fn pump<R: AsyncRead + Unpin>(pipe: Option<R>, buf: &mut TailBuf) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = vec![0u8; CHUNK];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => buf.push(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::debug!(%error, "failed to read gate output; keeping what was read");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(limit: usize, writes: &[&[u8]]) -> OutputTail {
        let mut buf = TailBuf::new(limit);
        for w in writes {
            buf.push(w);
        }
        buf.into_tail()
    }

    #[test]
    fn keeps_everything_under_the_limit() {
        let t = tail_of(10, &[b"abc", b"def"]);
        assert_eq!(t.bytes, b"abcdef");
        assert_eq!(t.dropped, 0);
    }

    #[test]
    fn drops_the_oldest_bytes() {
        let t = tail_of(4, &[b"abc", b"def", b"g"]);
        assert_eq!(t.bytes, b"defg");
        assert_eq!(t.dropped, 3);
    }

    #[test]
    fn a_write_larger_than_the_limit_keeps_its_end() {
        let t = tail_of(3, &[b"ab", b"cdefgh"]);
        assert_eq!(t.bytes, b"fgh");
        assert_eq!(t.dropped, 5);
    }

    #[test]
    fn zero_limit_keeps_nothing() {
        let t = tail_of(0, &[b"ab", b"c"]);
        assert!(t.bytes.is_empty());
        assert_eq!(t.dropped, 3);
    }

    #[tokio::test]
    async fn pump_reads_to_the_end() {
        let mut buf = TailBuf::new(5);
        pump(Some(&b"hello world"[..]), &mut buf).await;
        let t = buf.into_tail();
        assert_eq!(t.bytes, b"world");
        assert_eq!(t.dropped, 6);
    }
}
