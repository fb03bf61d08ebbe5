//! Kernel pipes for zero-copy relays: bytes spliced from one socket into a pipe and from
//! the pipe into another socket are moved as page references, never copied through user
//! space. A [`Pipe`] owns both ends; the ring's `Op::Splice` takes their raw fds.
//!
//! Fd-reuse hazard: a splice resolves its input fd when it runs (in io_uring's worker
//! pool), so a pipe must stay open until every splice naming it has completed. Owners
//! keep their pipes for the life of the connection, which outlives its operations.

use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, PipeFlags};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Both ends of a non-blocking pipe, and how many bytes it can hold.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// Opens a non-blocking, close-on-exec pipe and asks for `capacity` bytes of room.
    /// The kernel may refuse a larger pipe (`fs.pipe-max-size`, the per-user page
    /// budget); the pipe then keeps its default size, which [`Pipe::capacity`] reports.
    pub fn new(capacity: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let capacity = match fcntl_setpipe_size(&write, capacity) {
            Ok(got) => got,
            Err(_) => fcntl_getpipe_size(&write)?,
        };
        Ok(Pipe { read, write, capacity })
    }

    /// The end to splice out of.
    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The end to splice into.
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// Bytes the pipe holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_grows_to_the_asked_size_or_keeps_a_usable_one() {
        let p = Pipe::new(1 << 20).expect("pipe");
        assert!(p.capacity() >= 4096, "capacity {}", p.capacity());
        assert_ne!(p.read_fd(), p.write_fd());
        // The kernel rounds up to whole pages (4 KiB here, 64 KiB on some arm64 kernels).
        let small = Pipe::new(4096).expect("pipe");
        assert!((4096..=1 << 16).contains(&small.capacity()), "capacity {}", small.capacity());
    }
}
