//! The plain syscalls the proxy makes outside the ring, through the field's safe wrappers:
//! `socket2` for socket options and flags, `rustix` for CPU affinity.

use socket2::SockRef;
use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// CPUs in this thread's affinity mask (the mask the process was started with, when
/// called before any pinning).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cpu index out of range"));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    Ok(sched_setaffinity(None, &set)?)
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
pub fn peek(sock: impl AsFd) -> Peek {
    let mut byte = [MaybeUninit::uninit()];
    match SockRef::from(&sock).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(1..) => Peek::Data,
        Ok(0) => Peek::Closed,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Peek::Quiet,
        Err(_) => Peek::Closed,
    }
}

/// The original destination of a connection redirected by nftables/iptables REDIRECT
/// (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for an IPv6 socket), for transparent
/// mode. IPv6 listeners are `IPV6_V6ONLY`, so the socket's family is the client's.
pub fn original_dst(client: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(client);
    let addr = if client.local_addr()?.is_ipv6() { sock.original_dst_v6()? } else { sock.original_dst_v4()? };
    addr.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "original destination is not IP"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener};

    fn pair(addr: &str) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind(addr).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn peek_tells_quiet_data_and_closed_apart_without_consuming() {
        let (mut c, s) = pair("127.0.0.1:0");
        assert_eq!(peek(&s), Peek::Quiet);
        c.write_all(b"x").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while peek(&s) == Peek::Quiet && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(peek(&s), Peek::Data);
        assert_eq!(peek(s.as_fd()), Peek::Data, "a peek consumes nothing");
        let (c2, s2) = pair("127.0.0.1:0");
        c2.shutdown(Shutdown::Write).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while peek(&s2) == Peek::Quiet && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(peek(&s2), Peek::Closed);
    }

    #[test]
    fn a_connection_nothing_redirected_has_no_other_original_destination() {
        // Without a NAT rule the kernel answers with the address the client reached (or
        // ENOENT when conntrack is not loaded); either way never some other address.
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = TcpListener::bind(addr) else { continue };
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            if let Ok(original) = original_dst(&s) {
                assert_eq!(original, s.local_addr().unwrap());
            }
            drop(c);
        }
    }

    #[test]
    fn the_affinity_mask_is_read_and_a_thread_can_be_pinned_inside_it() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        let first = cpus[0];
        std::thread::spawn(move || {
            pin_current_thread(first).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![first]);
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(CpuSet::MAX_CPU).is_err());
    }
}

/// Raises the soft descriptor limit to the hard one (each client costs descriptors, and a
/// soft limit of 1024 would cap a gateway at a few hundred) and returns the soft limit
/// now in force (`u64::MAX` when unlimited).
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum || (lim.current.is_some() && lim.maximum.is_none()) {
        let raised = rustix::process::Rlimit { current: lim.maximum, maximum: lim.maximum };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return lim.maximum.unwrap_or(u64::MAX);
        }
    }
    lim.current.unwrap_or(u64::MAX)
}

/// Descriptors kept aside from clients: listeners, rings, pipes, log files, the admin
/// endpoint, resolver sockets, plus an eighth of the limit for pooled origin connections
/// and the pipes of splicing tunnels.
fn reserved_descriptors(nofile: u64) -> u64 {
    64 + nofile / 8
}

/// How many clients each of `workers` workers can hold within `nofile` descriptors, at
/// two per proxied client (its own and its origin's).
pub fn clients_per_worker(nofile: u64, workers: usize) -> u64 {
    nofile.saturating_sub(reserved_descriptors(nofile)) / (workers.max(1) as u64) / 2
}

#[cfg(test)]
mod fd_tests {
    use super::*;

    #[test]
    fn clients_fit_in_the_descriptor_limit() {
        // A shipped unit (LimitNOFILE=1048576) on 16 cores: plenty.
        assert_eq!(clients_per_worker(1_048_576, 16), 28_670);
        // A soft limit of 1024 and 2 workers: each holds 208 clients, 832 descriptors.
        assert_eq!(clients_per_worker(1024, 2), 208);
        // Too few for anything: no clients rather than an underflow.
        assert_eq!(clients_per_worker(40, 1), 0);
        assert!(clients_per_worker(u64::MAX, 1) > 1 << 60);
    }
}
