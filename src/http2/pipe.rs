//! The `h2` crate's transport: an in-memory `AsyncRead`/`AsyncWrite` over two byte
//! queues the session fills from and drains to the client leg.
//!
//! `h2` owns its transport, so the session keeps a second handle on the same queues
//! ([`Pipe`] is a shared cell; the worker is single-threaded). Reads hand out what the
//! leg put in and say `Pending` when it is empty: `h2` then stops, and the session polls
//! it again when the leg has more. Writes are accepted up to [`OUT_BYTES`] queued, then
//! `Pending` until the leg took them. Neither side registers a waker: the session polls
//! `h2` after every event of its slot, which is when these queues change.

use super::tally::FrameTally;
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes `h2` may queue for the client before its writes wait.
pub const OUT_BYTES: usize = 64 * 1024;

/// Most client bytes given to `h2` per poll: `h2` reads until its transport says
/// `Pending`, so the session feeds a bounded batch and runs again for the rest.
pub const IN_BYTES: usize = 64 * 1024;

/// The two queues.
#[derive(Debug, Default)]
pub struct Queues {
    /// Plaintext from the client, not read by `h2` yet.
    pub inbound: Vec<u8>,
    /// Bytes of `inbound` `h2` has read.
    read: usize,
    /// The client closed its side.
    pub inbound_end: bool,
    /// Frames `h2` wrote, for the client.
    pub outbound: Vec<u8>,
    /// RST_STREAM frames (and GOAWAYs) in what was put in `inbound` (by an origin
    /// session: a client's frame watch reads a client's itself), and taken from `outbound`.
    pub tally_in: FrameTally,
    pub tally_out: FrameTally,
}

impl Queues {
    /// Client bytes not read by `h2` yet.
    pub fn unread(&self) -> usize {
        self.inbound.len() - self.read
    }

    /// Room for more client bytes in this batch.
    pub fn inbound_room(&self) -> usize {
        IN_BYTES.saturating_sub(self.unread())
    }
}

/// The session's handle on the queues, and `h2`'s transport.
#[derive(Debug, Clone, Default)]
pub struct Pipe(Rc<RefCell<Queues>>);

impl Pipe {
    pub fn with<R>(&self, f: impl FnOnce(&mut Queues) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

impl AsyncRead for Pipe {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let mut q = self.0.borrow_mut();
        let unread = q.unread();
        if unread == 0 {
            q.inbound.clear();
            q.read = 0;
            // An empty read is the end of the stream: only once the client closed.
            return if q.inbound_end { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
        let n = unread.min(buf.remaining());
        let start = q.read;
        buf.put_slice(&q.inbound[start..start + n]);
        q.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut q = self.0.borrow_mut();
        let room = OUT_BYTES.saturating_sub(q.outbound.len());
        if room == 0 {
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        q.outbound.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Queued is as flushed as it gets here: the session sends the queue on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn reads_wait_until_bytes_arrive_and_end_only_after_the_client_closed() {
        let pipe = Pipe::default();
        let mut reader = pipe.clone();
        let mut cx = Context::from_waker(Waker::noop());
        let mut space = [0u8; 8];
        let mut buf = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut reader).poll_read(&mut cx, &mut buf).is_pending());
        pipe.with(|q| q.inbound.extend_from_slice(b"0123456789"));
        assert!(Pin::new(&mut reader).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"01234567");
        assert_eq!(pipe.with(|q| q.unread()), 2);
        pipe.with(|q| q.inbound_end = true);
        let mut space = [0u8; 8];
        let mut buf = ReadBuf::new(&mut space);
        let _ = Pin::new(&mut reader).poll_read(&mut cx, &mut buf);
        assert_eq!(buf.filled(), b"89");
        let mut buf = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut reader).poll_read(&mut cx, &mut buf).is_ready());
        assert!(buf.filled().is_empty(), "EOF after the client closed");
    }

    #[test]
    fn writes_wait_once_the_outbound_queue_is_full() {
        let pipe = Pipe::default();
        let mut writer = pipe.clone();
        let mut cx = Context::from_waker(Waker::noop());
        let big = vec![7u8; OUT_BYTES + 10];
        assert!(matches!(Pin::new(&mut writer).poll_write(&mut cx, &big), Poll::Ready(Ok(n)) if n == OUT_BYTES));
        assert!(Pin::new(&mut writer).poll_write(&mut cx, b"x").is_pending());
        pipe.with(|q| q.outbound.clear());
        assert!(Pin::new(&mut writer).poll_write(&mut cx, b"x").is_ready());
    }
}
