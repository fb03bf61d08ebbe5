//! The byte limit of a multishot receive (Linux 6.17: `sqe->optlen` of a multishot
//! `IORING_OP_RECV`, `IORING_RECV_MSHOT_LIM` in the kernel).
//!
//! A multishot receive hands over whatever reaches its socket until its cancel lands: a
//! request body that follows its head at once arrives in provided buffers, a completion
//! each, however soon the connection decides to read it another way. With a limit the
//! receive ends by itself (a final completion without `more`) once it has delivered
//! [`MULTISHOT_LIMIT`] bytes or more: each receive still takes up to a whole provided
//! buffer (the kernel caps only bundle receives at what is left), so at most the limit
//! plus one buffer arrives after the decision.
//!
//! Older kernels read the same field as a file index and refuse a receive that sets it
//! (`-EINVAL`), so [`kernel_takes_it`] probes once per process, on a ring of its own,
//! before any worker ring uses it. The `io-uring` crate has no setter for the field:
//! [`with_total_limit`] writes it into the entry.

use io_uring::{opcode, squeue, types, IoUring};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

/// Bytes a multishot receive delivers before it ends by itself (plus at most one provided
/// buffer): four provided buffers. Small requests keep one receive armed across many of
/// them (one new receive per 16 KiB or so of requests); a body that follows its head
/// reaches the connection's stash in at most five completions.
pub const MULTISHOT_LIMIT: u32 = 16 * 1024;

/// Offset of `optlen` in `struct io_uring_sqe` (linux/io_uring.h: the union of
/// `splice_fd_in`, `file_index`, `optlen` and `addr_len` after `personality`).
const SQE_OPTLEN_OFFSET: usize = 44;

/// `entry` with its `optlen` set to `limit`.
pub(crate) fn with_total_limit(entry: squeue::Entry, limit: u32) -> squeue::Entry {
    let mut bytes = sqe_bytes(entry);
    bytes[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4].copy_from_slice(&limit.to_ne_bytes());
    // SAFETY: any 64 bytes are a valid `io_uring_sqe` (plain integers and unions of them).
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(bytes) }
}

/// The 64 bytes of an entry. `squeue::Entry` is `#[repr(C)]` around the kernel's
/// `io_uring_sqe` (transmute checks the size), which has no padding, owns nothing (no
/// Drop), and which the io-uring crate builds from an all-zero value (`sqe_zeroed`).
fn sqe_bytes(entry: squeue::Entry) -> [u8; 64] {
    // SAFETY: all 64 bytes of the entry are initialized (no padding, built zeroed).
    unsafe { std::mem::transmute::<squeue::Entry, [u8; 64]>(entry) }
}

/// True when this kernel takes a multishot receive's byte limit (probed once).
pub(crate) fn kernel_takes_it() -> bool {
    static TAKES_IT: OnceLock<bool> = OnceLock::new();
    *TAKES_IT.get_or_init(|| probe().unwrap_or(false))
}

/// Submits a limited multishot receive on an idle socket on a ring of its own: a kernel
/// without the limit fails it at submission (`-EINVAL`); one with it arms the receive,
/// which nothing completes (no byte is ever sent) until the ring's drop cancels it.
fn probe() -> std::io::Result<bool> {
    let mut ring = IoUring::new(2)?;
    let (idle, _peer) = UnixStream::pair()?;
    let entry = opcode::Recv::new(types::Fd(idle.as_raw_fd()), std::ptr::null_mut(), 0)
        .buf_group(0)
        .ioprio(super::ring::RECV_MULTISHOT | super::ring::RECVSEND_POLL_FIRST)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
    let entry = with_total_limit(entry, MULTISHOT_LIMIT);
    // SAFETY: the entry names no memory: a receive that selects a provided buffer when
    // bytes arrive, and none ever do (the peer writes nothing, and the ring, which
    // cancels the receive, is dropped before either socket).
    unsafe { ring.submission().push(&entry) }.map_err(|_| std::io::Error::other("probe ring full"))?;
    ring.submit()?;
    // A kernel that takes the limit arms the receive: no completion. Any completion (the
    // old kernels' -EINVAL, or a failure of another kind) means the field is not safe
    // to set on the workers' receives.
    let armed = ring.completion().next().is_none();
    drop(ring);
    Ok(armed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optlen_is_where_the_crate_puts_a_setsockopt_length() {
        let entry = opcode::SetSockOpt::new(types::Fd(3), 1, 2, std::ptr::null(), 0xa1b2_c3d4).build();
        let bytes = sqe_bytes(entry);
        assert_eq!(bytes[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4], 0xa1b2_c3d4u32.to_ne_bytes());
    }

    #[test]
    fn the_limit_lands_in_optlen_and_nothing_else_moves() {
        let entry = opcode::Nop::new().build().user_data(0x1234_5678_9abc_def0);
        let before = sqe_bytes(entry.clone());
        let after = sqe_bytes(with_total_limit(entry, 0x0102_0304));
        for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
            if (SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4).contains(&i) {
                continue;
            }
            assert_eq!(b, a, "byte {i} moved");
        }
        assert_eq!(after[SQE_OPTLEN_OFFSET..SQE_OPTLEN_OFFSET + 4], 0x0102_0304u32.to_ne_bytes());
    }
}
