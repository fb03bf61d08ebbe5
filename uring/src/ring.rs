//! One io_uring per worker: setup, typed operations, submission with a backlog, and the
//! opaque [`Completion`]s and [`ProvidedBuf`] tokens it hands back.
//!
//! [`Uring`] owns a ring and the slab pool registered with it, and drops the ring first.
//! A [`Ring`] exists only inside a `Uring`; it submits only slabs of its own pool and
//! operations of slots of the one arena bound to it (`Conns::bound_to`), and a completion
//! can only be decoded by that arena: safe code cannot make the ring name memory that is
//! not what it was submitted for.
//!
//! Operations that name memory keep it alive until their completion: slabs park in the
//! connection's lane, a connect address is boxed in the slot, the tick timespec lives in
//! the ring. A full submission queue flushes to the kernel; if it is still full the entry
//! waits in the backlog and goes first on the next flush: nothing is ever dropped.

use crate::bufring::BufRing;
use crate::conns::Io;
use crate::files::{FileTable, Returns};
use crate::sim::{Sim, SimOp};
use crate::slab::{Slab, SlabPool};
use crate::token::{encode_conn, encode_worker, OpTag, WorkerToken, ACCEPT_KIND, FILES_KIND};
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT_RING_ID: AtomicU32 = AtomicU32::new(1);

/// One completion, as only a ring can produce it: decode it with `Conns::complete` of
/// the arena bound to that ring.
///
/// ```compile_fail,E0451
/// // Safe code cannot forge a completion (its fields are private)...
/// let c = uring::Completion { ring: 1, user_data: 0x10, result: 5, flags: 0 };
/// ```
/// ```compile_fail,E0599
/// // ...nor copy one to decode it twice.
/// fn twice(c: uring::Completion) -> (uring::Completion, uring::Completion) { (c.clone(), c) }
/// ```
#[derive(Debug)]
pub struct Completion {
    ring: u32,
    user_data: u64,
    result: i32,
    flags: u32,
}

impl Completion {
    /// The operation's result (a count, or a negated errno).
    pub fn result(&self) -> i32 {
        self.result
    }

    pub(crate) fn ring(&self) -> u32 {
        self.ring
    }

    pub(crate) fn user_data(&self) -> u64 {
        self.user_data
    }

    pub(crate) fn flags(&self) -> u32 {
        self.flags
    }
}

/// A provided buffer the kernel filled for a `RecvSelect` or one completion of a
/// `RecvMulti`: a one-use token. Read it with
/// [`Ring::provided_bytes`]; [`Ring::recycle_provided`] consumes it and gives the buffer
/// back to the kernel. It cannot be made, copied or recycled twice by safe code.
///
/// ```compile_fail,E0451
/// let p = uring::ProvidedBuf { ring: 1, bid: 3, len: 10 };
/// ```
/// ```compile_fail,E0382
/// fn twice(ring: &mut uring::Ring, p: uring::ProvidedBuf) {
///     ring.recycle_provided(p);
///     ring.recycle_provided(p);
/// }
/// ```
#[derive(Debug)]
#[must_use = "a provided buffer goes back to the kernel only through Ring::recycle_provided"]
pub struct ProvidedBuf {
    ring: u32,
    bid: u16,
    len: u32,
}

impl ProvidedBuf {
    /// Bytes the receive put in it.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Counters a worker exports about its ring.
#[derive(Debug, Default, Clone, Copy)]
pub struct RingStats {
    pub submitted: u64,
    pub completed: u64,
    pub backlogged: u64,
    pub backlog_now: usize,
    pub enter_calls: u64,
    /// Sockets held in the registered file table now (legs whose operations name a
    /// table slot instead of an fd).
    pub fixed_files: usize,
    /// Table installs or removals the kernel refused (their operations fail with EBADF).
    pub file_update_errors: u64,
}

/// A socket address in the layout the kernel reads for `connect`.
#[derive(Debug)]
pub(crate) enum SockAddrRaw {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddrRaw {
    fn new(addr: SocketAddr) -> SockAddrRaw {
        match addr {
            SocketAddr::V4(a) => SockAddrRaw::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => SockAddrRaw::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    fn as_ptr(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            SockAddrRaw::V4(a) => (
                a as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            SockAddrRaw::V6(a) => (
                a as *const libc::sockaddr_in6 as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

/// A connection operation.
#[derive(Debug)]
pub enum Op {
    /// Read into `slab[offset..offset+len]` (fixed-buffer opcode for registered slabs).
    Recv { fd: RawFd, slab: Slab, offset: usize, len: usize },
    /// Write `slab[offset..offset+len]`.
    Send { fd: RawFd, slab: Slab, offset: usize, len: usize },
    /// Wait until the fd is readable (or hung up), without holding a buffer.
    PollIn { fd: RawFd },
    /// Connect a socket.
    Connect { fd: RawFd, addr: SocketAddr },
    /// Shut down the write side (half-close).
    ShutdownWrite { fd: RawFd },
    /// Cancel every operation in flight on the fd (completes with the count or -ENOENT).
    CancelFd { fd: RawFd },
    /// Receive into a buffer the kernel picks from the provided-buffer ring when data
    /// arrives (the completion names it; give it back with [`Ring::recycle_provided`]).
    RecvSelect { fd: RawFd },
    /// Wait until the fd is writable (or in error).
    PollOut { fd: RawFd },
    /// A multishot receive on the provided-buffer ring: it stays armed and completes once
    /// per buffer the kernel fills (flagged `more`), until it is cancelled ([`Op::Cancel`])
    /// or ends by itself (EOF, an error, `-ENOBUFS` when no buffer is free: a completion
    /// without `more`, the one that ends its in-flight count). Every completion with bytes
    /// carries a [`ProvidedBuf`] to give back.
    RecvMulti { fd: RawFd },
    /// Cancels this slot's operation with that tag (by its `user_data`; completes with 0,
    /// or `-ENOENT` when it already ended). Unlike [`Op::CancelFd`], the slot's other
    /// operations on the same descriptor go on.
    Cancel { tag: OpTag },
    /// Move up to `len` bytes from `fd_in` to `fd_out`, one of which is a pipe, without
    /// copying them through user space. Never blocks: completes with `-EAGAIN` when there
    /// is nothing to move (poll, then try again). io_uring runs splices on its worker
    /// threads, which the ring keeps on the CPUs of the thread that built it.
    Splice { fd_in: RawFd, fd_out: RawFd, len: u32 },
}

/// Where a ring's operations go: the kernel, or (tests) the in-memory [`Sim`].
// The kernel ring is the hot case and lives inline; the test backend is boxed.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    Kernel(IoUring),
    Memory(Box<Sim>),
}

/// A worker's ring.
pub struct Ring {
    pub(crate) backend: Backend,
    /// This ring's identity, stamped into its completions and provided buffers.
    id: u32,
    /// The pool whose slabs were offered for registration: the only one it takes.
    pool_id: u32,
    /// An arena was bound to this ring (once: its completions name that arena's slots).
    pub(crate) arena_bound: bool,
    backlog: VecDeque<squeue::Entry>,
    cqes: Vec<Completion>,
    tick: Box<types::Timespec>,
    pub(crate) stats: RingStats,
    fixed_buffers: bool,
    buf_ring: Option<BufRing>,
    /// The kernel takes a multishot receive's byte limit (`recv_limit`): `RecvMulti`
    /// carries [`recv_limit::MULTISHOT_LIMIT`].
    multishot_limit: bool,
    /// The registered file table, once `register_files` made one (`files`).
    pub(crate) files: Option<FileTable>,
    /// Table slots let go of outside the ring (dropped tokens, freed connection slots).
    pub(crate) returns: Returns,
}

const BUF_GROUP: u16 = 1;
/// `IORING_RECVSEND_POLL_FIRST` (linux/io_uring.h, 5.19+): arm the poll before trying.
pub(crate) const RECVSEND_POLL_FIRST: u16 = 1;
/// `IORING_RECV_MULTISHOT` (linux/io_uring.h, 6.0+): the receive stays armed.
pub(crate) const RECV_MULTISHOT: u16 = 1 << 1;
const PROVIDED_BUFFERS: u16 = 512;
const PROVIDED_SIZE: u32 = 4096;
/// io_uring worker threads per ring: bounded (regular files; unused) and unbounded
/// (socket splices and shutdowns, which never block, and the rare socket operation the
/// kernel could not poll for, which may).
const IOWQ_MAX_BOUNDED: u32 = 1;
const IOWQ_MAX_UNBOUNDED: u32 = 8;

impl Drop for Ring {
    fn drop(&mut self) {
        if let (Some(b), Backend::Kernel(ring)) = (&self.buf_ring, &self.backend) {
            let _ = ring.submitter().unregister_buf_ring(b.bgid());
        }
    }
}

/// A ring and the slab pool registered with it. The ring is dropped first (fields drop in
/// declaration order), so the kernel's registration goes before the memory does; the pool
/// also leaks its memory if a slab is still in the kernel then.
pub struct Uring {
    ring: Ring,
    pool: SlabPool,
}

impl Uring {
    /// A ring of `entries` submission entries and a pool of `slabs` 64 KiB slabs
    /// registered with it (when the kernel allows: see [`Ring::fixed_buffers`]).
    pub fn new(entries: u32, slabs: usize) -> io::Result<Uring> {
        let pool = SlabPool::new(slabs)?;
        let ring = Ring::new(entries, &pool)?;
        Ok(Uring { ring, pool })
    }

    /// A ring whose operations go nowhere: they wait in its [`Sim`] until a test
    /// completes them ([`Ring::sim`]). No kernel ring, no registered buffers, no
    /// provided-buffer ring; `slabs` heap slabs in the pool. For driving a state machine
    /// in memory with injected completions.
    pub fn in_memory(slabs: usize) -> io::Result<Uring> {
        let pool = SlabPool::new(slabs)?;
        let mut ring = Ring::with_backend(Backend::Memory(Box::default()), &pool, false, None, 64);
        let id = ring.id;
        if let Backend::Memory(sim) = &mut ring.backend {
            sim.ring = id;
        }
        Ok(Uring { ring, pool })
    }

    /// The ring and its pool, to use together.
    pub fn parts(&mut self) -> (&mut Ring, &mut SlabPool) {
        (&mut self.ring, &mut self.pool)
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    pub fn pool(&self) -> &SlabPool {
        &self.pool
    }

    pub fn pool_mut(&mut self) -> &mut SlabPool {
        &mut self.pool
    }
}

impl Ring {
    /// Builds a ring with the cheapest task-running flags the kernel accepts, and
    /// registers the pool's slabs as fixed buffers.
    fn new(entries: u32, pool: &SlabPool) -> io::Result<Ring> {
        // TASKRUN_FLAG: the kernel flags the queue when completions wait for the task to
        // run them (with DEFER_TASKRUN, only an enter carrying GETEVENTS does), so a submit
        // that does not block (slots were woken) collects them too: a worker kept busy by
        // wakes still sees its completions.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 4)
            .build(entries)
            .or_else(|_| {
                IoUring::builder().setup_coop_taskrun().setup_taskrun_flag().setup_cqsize(entries * 4).build(entries)
            })
            .or_else(|_| IoUring::builder().setup_coop_taskrun().setup_cqsize(entries * 4).build(entries))
            .or_else(|_| IoUring::new(entries))?;
        let iovecs = pool.iovecs();
        let mut fixed_buffers = false;
        if !iovecs.is_empty() {
            // A refusal (RLIMIT_MEMLOCK for an unprivileged user) is not fatal: I/O then
            // uses the plain opcodes on the same slabs, and `fixed_buffers()` says so.
            // SAFETY: every iovec names SLAB_SIZE bytes inside the pool's allocation, which
            // stays allocated and unmoved while any slab may be in the kernel.
            fixed_buffers = unsafe { ring.submitter().register_buffers(&iovecs) }.is_ok();
        }
        let buf_ring = BufRing::new(PROVIDED_BUFFERS, PROVIDED_SIZE, BUF_GROUP).ok().filter(|b| {
            // SAFETY: the entries stay at a fixed address as long as the Ring, whose Drop
            // unregisters them before they are freed.
            unsafe { ring.submitter().register_buf_ring_with_flags(b.addr(), b.count(), b.bgid(), 0) }.is_ok()
        });
        // Splices run on io_uring's worker threads. Keep them on this thread's CPUs (a
        // pinned worker must not spill onto other cores) and few: a splice never blocks,
        // so a handful of threads serve every tunnel. Both are best effort (older kernels).
        if let Ok(set) = crate::sys::affinity_set() {
            let _ = ring.submitter().register_iowq_aff(&set);
        }
        let _ = ring.submitter().register_iowq_max_workers(&mut [IOWQ_MAX_BOUNDED, IOWQ_MAX_UNBOUNDED]);
        let mut ring = Ring::with_backend(Backend::Kernel(ring), pool, fixed_buffers, buf_ring, entries);
        ring.multishot_limit = crate::recv_limit::kernel_takes_it();
        Ok(ring)
    }

    fn with_backend(
        backend: Backend,
        pool: &SlabPool,
        fixed_buffers: bool,
        buf_ring: Option<BufRing>,
        entries: u32,
    ) -> Ring {
        Ring {
            backend,
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            pool_id: pool.id(),
            arena_bound: false,
            buf_ring,
            multishot_limit: false,
            backlog: VecDeque::new(),
            cqes: Vec::with_capacity(entries as usize * 4),
            tick: Box::new(types::Timespec::new()),
            stats: RingStats::default(),
            fixed_buffers,
            files: None,
            returns: Returns::default(),
        }
    }

    /// The in-memory backend's queue of operations, for a test to complete; None on a
    /// kernel ring.
    pub fn sim(&mut self) -> Option<&mut Sim> {
        match &mut self.backend {
            Backend::Memory(sim) => Some(sim),
            Backend::Kernel(_) => None,
        }
    }

    /// True when receives can pick from the provided-buffer ring (in memory: once the test
    /// gave the [`Sim`] its buffers).
    pub fn has_buf_ring(&self) -> bool {
        match &self.backend {
            Backend::Memory(sim) => sim.has_provided(),
            Backend::Kernel(_) => self.buf_ring.is_some(),
        }
    }

    /// True when a multishot receive ends by itself after [`crate::MULTISHOT_LIMIT`]
    /// bytes (a kernel that takes the limit, and the in-memory ring, which models one).
    pub fn multishot_limited(&self) -> bool {
        match &self.backend {
            Backend::Memory(_) => true,
            Backend::Kernel(_) => self.multishot_limit,
        }
    }

    /// This ring's identity.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The token for the provided buffer a completion of this ring selected, if any.
    pub(crate) fn provided_of(&self, c: &Completion) -> Option<ProvidedBuf> {
        let bid = io_uring::cqueue::buffer_select(c.flags)?;
        let len = c.result.max(0) as u32;
        Some(ProvidedBuf { ring: self.id, bid, len })
    }

    /// The bytes a `RecvSelect` or `RecvMulti` completion put in its provided buffer.
    pub fn provided_bytes(&self, p: &ProvidedBuf) -> &[u8] {
        assert_eq!(p.ring, self.id, "a provided buffer of another ring");
        match (&self.backend, &self.buf_ring) {
            (Backend::Memory(sim), _) => sim.provided_bytes(p.bid, p.len as usize),
            (Backend::Kernel(_), Some(b)) => b.bytes(p.bid, p.len as usize),
            (Backend::Kernel(_), None) => &[],
        }
    }

    /// Gives a provided buffer back to the kernel (the token is used up).
    pub fn recycle_provided(&mut self, p: ProvidedBuf) {
        assert_eq!(p.ring, self.id, "a provided buffer of another ring");
        if let Backend::Memory(sim) = &mut self.backend {
            sim.recycle_provided(p.bid);
        } else if let Some(b) = self.buf_ring.as_mut() {
            b.recycle(p.bid);
        }
    }

    /// True when the slabs are registered and I/O on them uses the fixed-buffer opcodes.
    pub fn fixed_buffers(&self) -> bool {
        self.fixed_buffers
    }

    /// Counters so far.
    pub fn stats(&self) -> RingStats {
        let fixed_files = self.files.as_ref().map_or(0, |t| t.in_use);
        RingStats { backlog_now: self.backlog.len(), fixed_files, ..self.stats }
    }

    /// Submits a connection operation. A slab it carries parks in the slot until the
    /// operation's final completion hands it back.
    pub fn submit(&mut self, io: &mut Io, tag: OpTag, op: Op, pool: &mut SlabPool) {
        assert_eq!(io.ring(), self.id, "a slot of an arena not bound to this ring");
        assert_eq!(pool.id(), self.pool_id, "slabs of a pool not registered with this ring");
        debug_assert!(!io.is_closing(), "op submitted on a closing slot");
        let user_data = encode_conn(io.addr(), io.gen(), tag);
        // The registered-table slot each socket of the op uses, or its fd (`files`).
        let (file, file_out) = self.files_of(io, tag, &op);
        if let Backend::Memory(_) = self.backend {
            let cancel_target = match op {
                Op::Cancel { tag: target } => Some(encode_conn(io.addr(), io.gen(), target)),
                _ => None,
            };
            let recorded = self.record(io, tag, op, pool);
            io.started();
            self.stats.submitted += 1;
            if let Backend::Memory(sim) = &mut self.backend {
                sim.submitted(user_data, tag, recorded, cancel_target, file.index().or(file_out.index()));
            }
            return;
        }
        let entry = match op {
            Op::Recv { slab, offset, len, .. } => {
                let (buf, len, fixed) = self.lend(io, tag, slab, offset, len, pool);
                match fixed {
                    Some(index) => on_file!(file, |f| opcode::ReadFixed::new(f, buf, len, index).build()),
                    None => on_file!(file, |f| opcode::Recv::new(f, buf, len).build()),
                }
            }
            Op::Send { slab, offset, len, .. } => {
                let (buf, len, fixed) = self.lend(io, tag, slab, offset, len, pool);
                match fixed {
                    Some(index) => on_file!(file, |f| opcode::WriteFixed::new(f, buf, len, index).build()),
                    None => on_file!(file, |f| opcode::Send::new(f, buf, len).flags(libc::MSG_NOSIGNAL).build()),
                }
            }
            Op::PollIn { .. } => {
                on_file!(file, |f| opcode::PollAdd::new(f, (libc::POLLIN | libc::POLLRDHUP) as u32).build())
            }
            Op::PollOut { .. } => on_file!(file, |f| opcode::PollAdd::new(f, libc::POLLOUT as u32).build()),
            // A fixed `fd_in` sets SPLICE_F_FD_IN_FIXED, a fixed `fd_out` IOSQE_FIXED_FILE.
            Op::Splice { len, .. } => {
                on_file!(file, |fin| on_file!(file_out, |fout| opcode::Splice::new(fin, -1, fout, -1, len)
                    .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
                    .build()))
            }
            Op::Connect { addr, .. } => {
                assert!(io.connect_addr.is_none(), "one connect at a time per slot");
                let raw = Box::new(SockAddrRaw::new(addr));
                let (ptr, len) = raw.as_ptr();
                // The box moves into the slot; its heap address (ptr) does not change.
                io.connect_addr = Some((tag, raw));
                on_file!(file, |f| opcode::Connect::new(f, ptr, len).build())
            }
            Op::ShutdownWrite { .. } => on_file!(file, |f| opcode::Shutdown::new(f, libc::SHUT_WR).build()),
            // By fd, always: the kernel matches the file the fd names, so this also cancels
            // the fd's operations that went through its table slot.
            Op::CancelFd { fd } => opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build(),
            Op::RecvSelect { .. } => {
                let (bgid, size) = match &self.buf_ring {
                    Some(b) => (b.bgid(), b.size()),
                    None => panic!("RecvSelect without a provided-buffer ring (check has_buf_ring)"),
                };
                // Poll first: the connection is idle, so an immediate receive attempt
                // would almost always find nothing and only cost a socket lock.
                on_file!(file, |f| opcode::Recv::new(f, std::ptr::null_mut(), size)
                    .buf_group(bgid)
                    .ioprio(RECVSEND_POLL_FIRST)
                    .build())
                .flags(squeue::Flags::BUFFER_SELECT)
            }
            Op::RecvMulti { .. } => {
                let bgid = match &self.buf_ring {
                    Some(b) => b.bgid(),
                    None => panic!("RecvMulti without a provided-buffer ring (check has_buf_ring)"),
                };
                // `opcode::RecvMulti` with poll-first: it is armed on an idle connection.
                // Length 0: each completion takes up to one whole provided buffer. Its table
                // slot (if any) stays in use until the final completion (no `more` flag),
                // which comes by itself after MULTISHOT_LIMIT bytes where the kernel can.
                let entry = on_file!(file, |f| opcode::Recv::new(f, std::ptr::null_mut(), 0)
                    .buf_group(bgid)
                    .ioprio(RECV_MULTISHOT | RECVSEND_POLL_FIRST)
                    .build())
                .flags(squeue::Flags::BUFFER_SELECT);
                if self.multishot_limit {
                    crate::recv_limit::with_total_limit(entry, crate::recv_limit::MULTISHOT_LIMIT)
                } else {
                    entry
                }
            }
            // The user_data of the slot's operation with that tag is only a key the kernel
            // compares: it names nothing that could be freed.
            Op::Cancel { tag: target } => opcode::AsyncCancel::new(encode_conn(io.addr(), io.gen(), target)).build(),
        };
        io.started();
        self.push(entry.user_data(user_data));
    }

    /// The in-memory form of an operation: slabs park in the lane as for the kernel; a
    /// send's bytes are copied out, a receive keeps the address to fill on completion.
    fn record(&mut self, io: &mut Io, tag: OpTag, op: Op, pool: &mut SlabPool) -> (SimOp, Option<(*mut u8, u32)>) {
        match op {
            Op::Recv { fd, slab, offset, len } => {
                let (buf, len, _) = self.lend(io, tag, slab, offset, len, pool);
                (SimOp::Recv { fd, len: len as usize }, Some((buf, len)))
            }
            Op::Send { fd, slab, offset, len } => {
                let bytes = pool.bytes(&slab)[offset..offset + len].to_vec();
                self.lend(io, tag, slab, offset, len, pool);
                (SimOp::Send { fd, bytes }, None)
            }
            Op::PollIn { fd } => (SimOp::PollIn { fd }, None),
            Op::PollOut { fd } => (SimOp::PollOut { fd }, None),
            Op::Connect { fd, addr } => (SimOp::Connect { fd, addr }, None),
            Op::ShutdownWrite { fd } => (SimOp::ShutdownWrite { fd }, None),
            Op::CancelFd { fd } => (SimOp::CancelFd { fd }, None),
            Op::RecvSelect { fd } => (SimOp::RecvSelect { fd }, None),
            Op::RecvMulti { fd } => (SimOp::RecvMulti { fd }, None),
            Op::Cancel { tag } => (SimOp::Cancel { tag }, None),
            Op::Splice { fd_in, fd_out, len } => (SimOp::Splice { fd_in, fd_out, len }, None),
        }
    }

    /// Parks the slab in the slot's lane and returns the buffer address, length and the
    /// fixed-buffer index when the slab is registered.
    fn lend(
        &mut self,
        io: &mut Io,
        tag: OpTag,
        slab: Slab,
        offset: usize,
        len: usize,
        pool: &mut SlabPool,
    ) -> (*mut u8, u32, Option<u16>) {
        assert!(offset <= crate::SLAB_SIZE && len <= crate::SLAB_SIZE - offset, "range outside the slab");
        let base = pool.ptr(&slab);
        // SAFETY: offset + len <= SLAB_SIZE (asserted above), so the pointer stays inside the slab.
        let buf = unsafe { base.add(offset) };
        let fixed = (self.fixed_buffers && pool.is_registered(&slab)).then(|| slab.index() as u16);
        let lane = io.lanes.get_mut(tag.0 as usize).expect("slab-carrying ops use tags below OpTag::SLAB_LANES");
        assert!(lane.is_none(), "lane {} already has a slab in flight", tag.0);
        *lane = Some(slab);
        pool.in_kernel += 1;
        (buf, len as u32, fixed)
    }

    /// Arms multishot accept on a listener; completions come back as `Event::Accepted`
    /// with `listener = index`. Re-arm when a completion arrives without `more`.
    pub fn accept_multi(&mut self, listener_fd: RawFd, index: u32) {
        let ud = encode_worker(WorkerToken { kind: ACCEPT_KIND, index });
        let entry = opcode::AcceptMulti::new(types::Fd(listener_fd)).flags(libc::SOCK_CLOEXEC).build().user_data(ud);
        self.push(entry);
    }

    /// Waits for a worker-level fd (the wake pipe) to become readable.
    pub fn poll_worker_fd(&mut self, fd: RawFd, token: WorkerToken) {
        assert!(token.kind != ACCEPT_KIND && token.kind != FILES_KIND, "worker kinds 0 and 15 are the ring's own");
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build().user_data(encode_worker(token));
        self.push(entry);
    }

    /// Cancels every operation on a worker-level fd (a listener being closed); the
    /// cancelled operations complete with `-ECANCELED`, this one with a count.
    pub fn cancel_worker_fd(&mut self, fd: RawFd, token: WorkerToken) {
        assert!(token.kind != ACCEPT_KIND && token.kind != FILES_KIND, "worker kinds 0 and 15 are the ring's own");
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(encode_worker(token));
        self.push(entry);
    }

    /// Arms a multishot timer that completes every `every` (re-arm when `more` is clear).
    pub fn tick(&mut self, every: Duration, token: WorkerToken) {
        assert!(token.kind != ACCEPT_KIND && token.kind != FILES_KIND, "worker kinds 0 and 15 are the ring's own");
        *self.tick = types::Timespec::from(every);
        let ts: *const types::Timespec = &*self.tick;
        let entry =
            opcode::Timeout::new(ts).flags(types::TimeoutFlags::MULTISHOT).build().user_data(encode_worker(token));
        self.push(entry);
    }

    pub(crate) fn push(&mut self, entry: squeue::Entry) {
        if let Backend::Memory(sim) = &mut self.backend {
            // Worker-level operations (accept, tick, wake polls) never complete in memory.
            sim.worker_ops += 1;
            return;
        }
        self.stats.submitted += 1;
        if !self.backlog.is_empty() || !self.try_push(&entry) {
            self.stats.backlogged += 1;
            self.backlog.push_back(entry);
        }
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        let Backend::Kernel(ring) = &mut self.backend else { return true };
        // Every entry built here names memory that outlives the operation: slabs parked
        // in the slot's lane, the connect address boxed in the slot, the tick timespec
        // owned by this ring, and slots freed only after their final completion. A
        // file-table update names one word: the static -1 of a removal, or the ring's
        // `FileTable::values` entry of its index, which lives (unmoved) as long as the ring
        // and is rewritten only by a later install of that index, queued after the
        // index's removal and so after this update (the queue is FIFO). Table indices name
        // no memory.
        // SAFETY: the entry's memory outlives the operation (above).
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return true;
        }
        // Queue full: hand what is queued to the kernel and try once more.
        self.stats.enter_calls += 1;
        if ring.submit().is_err() {
            return false;
        }
        // SAFETY: as above.
        unsafe { ring.submission().push(entry) }.is_ok()
    }

    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            if !self.try_push(&entry) {
                self.backlog.push_front(entry);
                break;
            }
        }
    }

    /// Submits everything queued and waits for at least `want` completions, then moves
    /// every available completion into an internal buffer returned by [`Ring::completions`].
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        // Table slots let go of since the last batch are emptied in this one.
        self.take_returns();
        self.cqes.clear();
        let id = self.id;
        if let Backend::Memory(sim) = &mut self.backend {
            // Nothing blocks in memory: the completions a test injected are the batch.
            for (user_data, result, flags) in sim.take_completed() {
                self.cqes.push(Completion { ring: id, user_data, result, flags });
            }
            self.stats.completed += self.cqes.len() as u64;
            return Ok(());
        }
        self.flush_backlog();
        self.stats.enter_calls += 1;
        let want = if self.backlog.is_empty() { want } else { 0 };
        let Backend::Kernel(ring) = &mut self.backend else { unreachable!("memory rings returned above") };
        match ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            self.cqes.push(Completion {
                ring: id,
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        self.stats.completed += self.cqes.len() as u64;
        Ok(())
    }

    /// Takes the completions gathered by the last [`Ring::submit_and_wait`]; give the
    /// vector back with [`Ring::recycle`] to keep its allocation.
    pub fn completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.cqes)
    }

    /// Returns the completion buffer for reuse.
    pub fn recycle(&mut self, mut v: Vec<Completion>) {
        v.clear();
        self.cqes = v;
    }

    /// True when submissions are waiting for room in the queue.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }
}
