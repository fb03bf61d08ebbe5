//! The cancel → drain → free sequence against a real ring and real sockets: a connection
//! closed with reads, a write and a poll in flight is freed exactly once, its slabs all
//! come back, and its fds close only after the kernel is done with them (they stay open
//! while any operation of the slot is in flight, and close when the value `Event::Freed`
//! hands back is dropped).
//!
//! Every test runs under a deadline ([`within_deadline`]): a completion that never comes
//! (a lost free, a dropped submission) would block `submit_and_wait(1)` for good, and must
//! fail the test instead of hanging CI.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;
use uring::{ConnId, Conns, Event, Op, OpTag, Ring, SlabPool, Uring};

/// How long one test body may take; each takes milliseconds when the ring behaves.
const DEADLINE: Duration = Duration::from_secs(10);

/// Runs `body` on a thread of its own (which builds its own ring: a single-issuer ring
/// belongs to the thread that made it) and fails if it has not finished within
/// [`DEADLINE`]. A body stuck in `submit_and_wait` is left behind; the test binary exits
/// when its tests are done, which ends it.
fn within_deadline(body: impl FnOnce() + Send + 'static) {
    // The test harness names each test's thread after the test.
    let test = thread::current().name().unwrap_or("test").to_string();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = thread::Builder::new()
        .name(test.clone())
        .spawn(move || {
            body();
            let _ = done_tx.send(());
        })
        .expect("spawn the test body's thread");
    match done_rx.recv_timeout(DEADLINE) {
        // Disconnected: the body panicked (its sender was dropped while unwinding).
        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => panic!(
            "{test} did not finish within {DEADLINE:?}: it is blocked waiting for a completion that never \
             came (a slot that is never freed, or an operation that was never submitted)"
        ),
    }
}

/// The inode of the socket that descriptor `fd` of this process names (`socket:[N]` in
/// /proc/self/fd), or None when `fd` is not open. Compared with the inode recorded at the
/// start, it says "this very socket is still open", even if another test of this binary
/// (they run in parallel) reuses the descriptor number after it closed.
fn socket_inode(fd: RawFd) -> Option<u64> {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let target = target.to_str()?;
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether `peer` reads end-of-file, i.e. every descriptor of the other end of its pair
/// is closed. Non-blocking; any bytes queued before the EOF are read and discarded.
fn reads_eof(peer: &UnixStream) -> bool {
    peer.set_nonblocking(true).expect("set_nonblocking");
    let mut buf = [0u8; 64 * 1024];
    loop {
        match (&*peer).read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the peer socket: {e}"),
        }
    }
}

struct Probe {
    a: UnixStream,
    b: UnixStream,
    drops: Rc<Cell<u32>>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.drops.set(self.drops.get() + 1);
    }
}

/// Feeds completions to `conns` until the closing slot `id` is freed. Returns the value
/// `Event::Freed` handed back (still owning its descriptors) and how many completions of
/// the slot arrived, the freeing one included. `on_draining` runs after every completion
/// that left the slot closing but not yet freed. Every completion here must belong to `id`.
fn drain_until_freed<T>(
    ring: &mut Ring,
    conns: &mut Conns<T>,
    pool: &mut SlabPool,
    id: ConnId,
    mut on_draining: impl FnMut(),
) -> (T, usize) {
    let mut completions = 0;
    loop {
        ring.submit_and_wait(1).expect("submit_and_wait");
        let cqes = ring.completions();
        let mut freed = None;
        for c in &cqes {
            // Every completion here is the slot's: one after its free means it was freed
            // while the kernel still had an operation of it (and decoding it would touch
            // freed memory).
            assert!(freed.is_none(), "a completion arrived after the slot was freed, {completions} completions in");
            completions += 1;
            match conns.complete(c, ring, pool) {
                Event::Draining => on_draining(),
                Event::Freed { id: freed_id, value } => {
                    assert_eq!(freed_id, id, "freed a slot that was not closed");
                    assert!(freed.is_none(), "the slot was freed twice");
                    freed = Some(value);
                }
                Event::Conn { tag, .. } => panic!("op {tag:?} of a closing slot came back as a live connection's"),
                _ => panic!("a worker-level completion, and none was submitted"),
            }
        }
        ring.recycle(cqes);
        if let Some(value) = freed {
            return (value, completions);
        }
    }
}

#[test]
fn close_with_ops_in_flight_frees_exactly_once() {
    within_deadline(close_with_ops_in_flight_frees_exactly_once_body);
}

fn close_with_ops_in_flight_frees_exactly_once_body() {
    let mut uring = Uring::new(64, 4).unwrap();
    let (ring, pool) = uring.parts();
    let mut conns: Conns<Probe> = Conns::bound_to(ring);
    let drops = Rc::new(Cell::new(0));
    let (a, peer_a) = UnixStream::pair().unwrap();
    let (b, peer_b) = UnixStream::pair().unwrap();
    // Fill b's send buffer so a write on it stays in flight.
    b.set_nonblocking(true).unwrap();
    let junk = vec![0u8; 65536];
    while (&b).write(&junk).is_ok() {}
    b.set_nonblocking(false).unwrap();
    let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
    let (inode_a, inode_b) = (socket_inode(fa).expect("a is open"), socket_inode(fb).expect("b is open"));
    // The slot's sockets, checked from outside: still open, so the peer sees no EOF.
    let still_open = |when: &str| {
        assert_eq!(socket_inode(fa), Some(inode_a), "{when}: socket a was closed");
        assert_eq!(socket_inode(fb), Some(inode_b), "{when}: socket b was closed");
        assert!(!reads_eof(&peer_a), "{when}: the peer of a saw EOF");
    };

    let id = conns.insert(Probe { a, b, drops: drops.clone() });
    {
        let slot = conns.get_mut(id).unwrap();
        let (probe, io) = slot.split();
        let (fa, fb) = (probe.a.as_raw_fd(), probe.b.as_raw_fd()); // the sockets the slot owns now
        ring.submit(io, OpTag(0), Op::Recv { fd: fa, slab: pool.take(), offset: 0, len: 4096 }, pool);
        ring.submit(io, OpTag(2), Op::Recv { fd: fb, slab: pool.take(), offset: 0, len: 4096 }, pool);
        ring.submit(io, OpTag(3), Op::Send { fd: fb, slab: pool.take(), offset: 0, len: 65536 }, pool);
        ring.submit(io, OpTag(5), Op::PollIn { fd: fa }, pool);
        assert_eq!(io.inflight(), 4);
        assert!(io.lane_busy(OpTag(0)) && io.lane_busy(OpTag(3)));
    }
    ring.submit_and_wait(0).unwrap();
    assert!(ring.completions().is_empty(), "nothing can complete yet");
    {
        let (probe, io) = conns.get_mut(id).unwrap().split();
        let (fa, fb) = (probe.a.as_raw_fd(), probe.b.as_raw_fd());
        ring.submit(io, OpTag(7), Op::CancelFd { fd: fa }, pool);
        ring.submit(io, OpTag(8), Op::CancelFd { fd: fb }, pool);
        assert_eq!(io.inflight(), 6, "four operations and two cancels in flight");
    }
    assert!(conns.close(id).is_none(), "ops in flight: not freed yet");
    still_open("closed with 6 operations in flight");
    assert_eq!(drops.get(), 0);
    assert_eq!(pool.outstanding(), 3, "slabs are still with the kernel");
    let mut draining = 0;
    let (probe, completions) = drain_until_freed(ring, &mut conns, pool, id, || {
        draining += 1;
        still_open(&format!("after {draining} of 6 completions"));
        assert_eq!(drops.get(), 0, "dropped while draining");
    });
    assert_eq!(completions, 6, "freed before the kernel completed all 6 operations of the slot");
    assert_eq!(pool.outstanding(), 0, "every slab is back");
    still_open("freed, its value not dropped yet");
    assert_eq!(drops.get(), 0, "the freed value is handed back, not dropped");
    drop(probe);
    assert_eq!(drops.get(), 1, "dropped exactly once");
    assert_ne!(socket_inode(fa), Some(inode_a), "dropping the freed value closes socket a's descriptor");
    assert!(reads_eof(&peer_a), "dropping the freed value closes socket a");
    assert!(reads_eof(&peer_b), "dropping the freed value closes socket b");
    assert_eq!(conns.freed_total(), 1);
    assert!(conns.is_empty());
    assert!(conns.get_mut(id).is_none(), "a stale id finds nothing");
}

#[test]
fn a_read_completes_into_its_slab_and_hands_it_back() {
    within_deadline(a_read_completes_into_its_slab_and_hands_it_back_body);
}

fn a_read_completes_into_its_slab_and_hands_it_back_body() {
    let mut uring = Uring::new(16, 2).unwrap();
    let (ring, pool) = uring.parts();
    let mut conns: Conns<(UnixStream, UnixStream)> = Conns::bound_to(ring);
    let (a, mut peer) = UnixStream::pair().unwrap();
    let (b, _pb) = UnixStream::pair().unwrap();
    let id = conns.insert((a, b));
    {
        let (pair, io) = conns.get_mut(id).unwrap().split();
        ring.submit(io, OpTag(1), Op::Recv { fd: pair.0.as_raw_fd(), slab: pool.take(), offset: 100, len: 1000 }, pool);
    }
    peer.write_all(b"hello ring").unwrap();
    ring.submit_and_wait(1).unwrap();
    let cqes = ring.completions();
    assert_eq!(cqes.len(), 1);
    match conns.complete(&cqes[0], ring, pool) {
        Event::Conn { tag, result, slab: Some(slab), slot, .. } => {
            assert_eq!(tag, OpTag(1));
            assert_eq!(result, 10);
            assert_eq!(&pool.bytes(&slab)[100..110], b"hello ring");
            assert_eq!(slot.io().inflight(), 0);
            pool.release(slab);
        }
        _ => panic!("expected the read's completion"),
    }
    let pair = conns.close(id).expect("nothing in flight: close frees the slot and hands the value back");
    assert!(!reads_eof(&peer), "the handed-back value still owns its sockets");
    drop(pair);
    assert!(reads_eof(&peer), "dropping the handed-back value closes its sockets");
    assert_eq!(pool.outstanding(), 0);
}

#[test]
fn a_full_submission_queue_backlogs_instead_of_dropping() {
    within_deadline(a_full_submission_queue_backlogs_instead_of_dropping_body);
}

fn a_full_submission_queue_backlogs_instead_of_dropping_body() {
    let mut uring = Uring::new(4, 0).unwrap();
    let (ring, pool) = uring.parts();
    let mut conns: Conns<Vec<(UnixStream, UnixStream)>> = Conns::bound_to(ring);
    let pairs: Vec<_> = (0..32).map(|_| UnixStream::pair().unwrap()).collect();
    let fds: Vec<_> = pairs.iter().map(|p| p.0.as_raw_fd()).collect();
    let id = conns.insert(pairs);
    {
        let (_, io) = conns.get_mut(id).unwrap().split();
        for fd in &fds {
            ring.submit(io, OpTag(5), Op::PollIn { fd: *fd }, pool);
        }
        assert_eq!(io.inflight(), 32);
    }
    // Make every one of them readable; all 32 polls must complete.
    {
        let slot = conns.get_mut(id).unwrap();
        for p in slot.value.iter_mut() {
            (&p.1).write_all(b"x").unwrap();
        }
    }
    let mut seen = 0;
    for _ in 0..100 {
        ring.submit_and_wait(1).unwrap();
        let cqes = ring.completions();
        for c in &cqes {
            if let Event::Conn { .. } = conns.complete(c, ring, pool) {
                seen += 1;
            }
        }
        ring.recycle(cqes);
        if seen == 32 {
            break;
        }
    }
    assert_eq!(seen, 32, "every submission completed");
    assert!(ring.stats().enter_calls > 2, "a queue of 4 had to be flushed early to take 32 entries");
    assert!(conns.close(id).is_some());
}
