//! The cancel → drain → free sequence against a real ring and real sockets: a connection
//! closed with reads, a write and a poll in flight is freed exactly once, its slabs all
//! come back, and its fds close only after the kernel is done with them.

use std::cell::Cell;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use uring::{Conns, Event, Op, OpTag, Ring, SlabPool};

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

fn run_until<T>(
    ring: &mut Ring,
    conns: &mut Conns<T>,
    pool: &mut SlabPool,
    mut stop: impl FnMut(&Event<'_, T>) -> bool,
) {
    for _ in 0..100 {
        ring.submit_and_wait(1).unwrap();
        let cqes = ring.completions();
        let mut done = false;
        for &(ud, res, flags) in &cqes {
            let ev = conns.complete(ud, res, flags, pool);
            if stop(&ev) {
                done = true;
            }
            if let Event::Conn { slab: Some(s), .. } = ev {
                pool.release(s);
            }
        }
        ring.recycle(cqes);
        if done {
            return;
        }
    }
    panic!("condition never met");
}

#[test]
fn close_with_ops_in_flight_frees_exactly_once() {
    let mut pool = SlabPool::new(4).unwrap();
    let mut ring = Ring::new(64, &pool).unwrap();
    let mut conns: Conns<Probe> = Conns::new();
    let drops = Rc::new(Cell::new(0));
    let (a, peer_a) = UnixStream::pair().unwrap();
    let (b, peer_b) = UnixStream::pair().unwrap();
    // Fill b's send buffer so a write on it stays in flight.
    b.set_nonblocking(true).unwrap();
    let junk = vec![0u8; 65536];
    while (&b).write(&junk).is_ok() {}
    b.set_nonblocking(false).unwrap();

    let id = conns.insert(Probe { a, b, drops: drops.clone() });
    {
        let slot = conns.get_mut(id).unwrap();
        let (probe, io) = slot.split();
        let (fa, fb) = (probe.a.as_raw_fd(), probe.b.as_raw_fd());
        ring.submit(io, OpTag(0), Op::Recv { fd: fa, slab: pool.take(), offset: 0, len: 4096 }, &mut pool);
        ring.submit(io, OpTag(2), Op::Recv { fd: fb, slab: pool.take(), offset: 0, len: 4096 }, &mut pool);
        ring.submit(io, OpTag(3), Op::Send { fd: fb, slab: pool.take(), offset: 0, len: 65536 }, &mut pool);
        ring.submit(io, OpTag(5), Op::PollIn { fd: fa }, &mut pool);
        assert_eq!(io.inflight(), 4);
        assert!(io.lane_busy(OpTag(0)) && io.lane_busy(OpTag(3)));
    }
    ring.submit_and_wait(0).unwrap();
    assert!(ring.completions().is_empty(), "nothing can complete yet");
    {
        let slot = conns.get_mut(id).unwrap();
        let (probe, io) = slot.split();
        let (fa, fb) = (probe.a.as_raw_fd(), probe.b.as_raw_fd());
        ring.submit(io, OpTag(7), Op::CancelFd { fd: fa }, &mut pool);
        ring.submit(io, OpTag(8), Op::CancelFd { fd: fb }, &mut pool);
    }
    assert!(conns.close(id).is_none(), "ops in flight: not freed yet");
    assert_eq!(drops.get(), 0);
    assert_eq!(pool.outstanding(), 3, "slabs are still with the kernel");
    let mut freed = 0;
    run_until(&mut ring, &mut conns, &mut pool, |ev| {
        if matches!(ev, Event::Freed { .. }) {
            freed += 1;
        }
        freed == 1
    });
    assert_eq!(drops.get(), 1, "dropped exactly once");
    assert_eq!(conns.freed_total(), 1);
    assert!(conns.is_empty());
    assert_eq!(pool.outstanding(), 0, "every slab is back");
    assert!(conns.get_mut(id).is_none(), "a stale id finds nothing");
    drop((peer_a, peer_b));
}

#[test]
fn a_read_completes_into_its_slab_and_hands_it_back() {
    let mut pool = SlabPool::new(2).unwrap();
    let mut ring = Ring::new(16, &pool).unwrap();
    let mut conns: Conns<(UnixStream, UnixStream)> = Conns::new();
    let (a, mut peer) = UnixStream::pair().unwrap();
    let (b, _pb) = UnixStream::pair().unwrap();
    let id = conns.insert((a, b));
    {
        let (pair, io) = conns.get_mut(id).unwrap().split();
        ring.submit(
            io,
            OpTag(1),
            Op::Recv { fd: pair.0.as_raw_fd(), slab: pool.take(), offset: 100, len: 1000 },
            &mut pool,
        );
    }
    peer.write_all(b"hello ring").unwrap();
    ring.submit_and_wait(1).unwrap();
    let cqes = ring.completions();
    assert_eq!(cqes.len(), 1);
    let (ud, res, flags) = cqes[0];
    match conns.complete(ud, res, flags, &mut pool) {
        Event::Conn { tag, result, slab: Some(slab), slot, .. } => {
            assert_eq!(tag, OpTag(1));
            assert_eq!(result, 10);
            assert_eq!(&pool.bytes(&slab)[100..110], b"hello ring");
            assert_eq!(slot.io().inflight(), 0);
            pool.release(slab);
        }
        _ => panic!("expected the read's completion"),
    }
    assert!(conns.close(id).is_some());
    assert_eq!(pool.outstanding(), 0);
}

#[test]
fn a_full_submission_queue_backlogs_instead_of_dropping() {
    let pool = SlabPool::new(0).unwrap();
    let mut ring = Ring::new(4, &pool).unwrap();
    let mut pool = pool;
    let mut conns: Conns<Vec<(UnixStream, UnixStream)>> = Conns::new();
    let pairs: Vec<_> = (0..32).map(|_| UnixStream::pair().unwrap()).collect();
    let fds: Vec<_> = pairs.iter().map(|p| p.0.as_raw_fd()).collect();
    let id = conns.insert(pairs);
    {
        let (_, io) = conns.get_mut(id).unwrap().split();
        for fd in &fds {
            ring.submit(io, OpTag(5), Op::PollIn { fd: *fd }, &mut pool);
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
        for &(ud, res, flags) in &cqes {
            if let Event::Conn { .. } = conns.complete(ud, res, flags, &mut pool) {
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
