//! The plain syscalls the proxy needs outside the ring.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

/// This thread's affinity mask as libc's `cpu_set_t`, the type
/// `Submitter::register_iowq_aff` takes (rustix's `CpuSet`, which the proxy uses, does not
/// expose one).
pub(crate) fn affinity_set() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data, so all-zero is a valid (empty) set; the pointer and
    // size given to sched_getaffinity describe that local, which outlives the call.
    let (set, rc) = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (set, rc)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

/// What a non-blocking peek at an idle socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// Nothing to read: the peer is still there and quiet.
    Quiet,
    /// The peer closed (EOF) or the socket has an error.
    Closed,
    /// Unexpected bytes are waiting (a pooled upstream must never have any).
    Data,
}

/// Peeks at a socket without blocking or consuming: how a pooled connection the origin
/// closed is told apart from a live one before it is reused.
pub fn peek(fd: BorrowedFd<'_>) -> Peek {
    let mut byte = 0u8;
    // SAFETY: the buffer is one valid byte; the fd is borrowed, so it is open for the call.
    let n =
        unsafe { libc::recv(fd.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        1.. => Peek::Data,
        0 => Peek::Closed,
        _ => match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Peek::Quiet,
            _ => Peek::Closed,
        },
    }
}

/// The original destination of a connection redirected by iptables/nftables REDIRECT
/// (`SO_ORIGINAL_DST`), for transparent mode. IPv4 only.
pub fn original_dst(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_in is plain data; zero is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: pointer and length describe `addr`; the fd is open (borrowed).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
}
