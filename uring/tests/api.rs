//! The ring API cannot be misused from safe code: each misuse either does not compile
//! (the `compile_fail` doctests on `Completion`, `ProvidedBuf` and `Conns`) or is refused
//! here at run time before the kernel or the arena could act on it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use uring::{Conns, Event, Op, OpTag, Uring};

/// Runs the ring until `want` completions came back, handing each to `f`.
fn complete_n<T>(uring: &mut Uring, conns: &mut Conns<T>, want: usize, mut f: impl FnMut(Event<'_, T>)) {
    let mut seen = 0;
    for _ in 0..100 {
        let (ring, pool) = uring.parts();
        ring.submit_and_wait(1).expect("submit_and_wait");
        let cqes = ring.completions();
        for c in &cqes {
            f(conns.complete(c, ring, pool));
            seen += 1;
        }
        ring.recycle(cqes);
        if seen >= want {
            return;
        }
    }
    panic!("only {seen} of {want} completions");
}

/// A slot of `conns` holding one end of a socket pair, with a poll for input submitted on
/// it; returns the other end, whose write completes the poll.
fn armed_poll(uring: &mut Uring, conns: &mut Conns<(UnixStream, UnixStream)>) -> UnixStream {
    let (a, peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let id = conns.insert((a, UnixStream::pair().unwrap().0));
    let (ring, pool) = uring.parts();
    let (_, io) = conns.get_mut(id).unwrap().split();
    ring.submit(io, OpTag(5), Op::PollIn { fd }, pool);
    peer
}

#[test]
fn a_closing_slot_is_unreachable_and_closed_once() {
    let mut uring = Uring::new(16, 0).unwrap();
    let mut conns: Conns<(UnixStream, UnixStream)> = Conns::bound_to(uring.ring_mut());
    let (a, peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let id = conns.insert((a, peer));
    let other = conns.insert(UnixStream::pair().unwrap());
    {
        let (ring, pool) = uring.parts();
        let (_, io) = conns.get_mut(id).unwrap().split();
        ring.submit(io, OpTag(5), Op::PollIn { fd }, pool);
        ring.submit(io, OpTag(6), Op::CancelFd { fd }, pool);
    }
    assert!(conns.close(id).is_none(), "operations in flight: not freed yet");
    assert!(conns.get_mut(id).is_none(), "a closing slot is not handed out");
    assert_eq!(conns.ids(), vec![other], "a sweep does not see the closing slot");
    assert!(conns.close(id).is_none(), "closing it again does nothing");
    let mut freed = 0;
    complete_n(&mut uring, &mut conns, 2, |ev| {
        if let Event::Freed { .. } = ev {
            freed += 1;
        }
    });
    assert_eq!(freed, 1);
    assert_eq!(conns.len(), 1);
}

#[test]
#[should_panic(expected = "slabs of a pool not registered with this ring")]
fn a_ring_refuses_slabs_of_another_pool() {
    let mut mine = Uring::new(8, 2).unwrap();
    let mut theirs = Uring::new(8, 2).unwrap();
    let mut conns: Conns<UnixStream> = Conns::bound_to(mine.ring_mut());
    let (a, _peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let id = conns.insert(a);
    let (_, io) = conns.get_mut(id).unwrap().split();
    let foreign = theirs.pool_mut();
    let slab = foreign.take();
    mine.ring_mut().submit(io, OpTag(0), Op::Recv { fd, slab, offset: 0, len: 10 }, foreign);
}

#[test]
#[should_panic(expected = "a slot of an arena not bound to this ring")]
fn a_ring_refuses_slots_of_an_arena_not_bound_to_it() {
    let mut uring = Uring::new(8, 0).unwrap();
    let mut unbound: Conns<UnixStream> = Conns::new();
    let (a, _peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let id = unbound.insert(a);
    let (_, io) = unbound.get_mut(id).unwrap().split();
    let (ring, pool) = uring.parts();
    ring.submit(io, OpTag(5), Op::PollIn { fd }, pool);
}

#[test]
#[should_panic(expected = "this ring already has its arena")]
fn a_ring_takes_one_arena() {
    let mut uring = Uring::new(8, 0).unwrap();
    let _first: Conns<u8> = Conns::bound_to(uring.ring_mut());
    let _second: Conns<String> = Conns::bound_to(uring.ring_mut());
}

#[test]
#[should_panic(expected = "a completion of a ring this arena is not bound to")]
fn an_arena_refuses_completions_of_another_ring() {
    let mut first = Uring::new(8, 0).unwrap();
    let mut second = Uring::new(8, 0).unwrap();
    let mut conns: Conns<UnixStream> = Conns::bound_to(first.ring_mut());
    let mut others: Conns<(UnixStream, UnixStream)> = Conns::bound_to(second.ring_mut());
    let mut peer = armed_poll(&mut second, &mut others);
    peer.write_all(b"x").unwrap();
    let (ring, _) = second.parts();
    ring.submit_and_wait(1).unwrap();
    let cqes = ring.completions();
    let (ring, pool) = first.parts();
    let _ = conns.complete(&cqes[0], ring, pool);
}

#[test]
fn a_provided_buffer_is_a_token_read_then_recycled() {
    let mut uring = Uring::new(16, 0).unwrap();
    if !uring.ring_mut().has_buf_ring() {
        eprintln!("SKIP: this kernel has no provided-buffer rings");
        return;
    }
    let mut conns: Conns<(UnixStream, UnixStream)> = Conns::bound_to(uring.ring_mut());
    let (a, mut peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let id = conns.insert((a, UnixStream::pair().unwrap().0));
    for round in 0..600u32 {
        {
            let (ring, pool) = uring.parts();
            let (_, io) = conns.get_mut(id).unwrap().split();
            ring.submit(io, OpTag(4), Op::RecvSelect { fd }, pool);
        }
        let msg = format!("message {round}");
        peer.write_all(msg.as_bytes()).unwrap();
        let mut got = None;
        complete_n(&mut uring, &mut conns, 1, |ev| match ev {
            Event::Conn { provided: Some(p), result, .. } => got = Some((p, result)),
            _ => panic!("expected the receive's completion with its provided buffer"),
        });
        let (p, result) = got.unwrap();
        assert_eq!(p.len(), result as usize);
        let ring = uring.ring_mut();
        assert_eq!(ring.provided_bytes(&p), msg.as_bytes());
        // More rounds than the ring has buffers: each one came back.
        ring.recycle_provided(p);
    }
}

/// A worker kept busy by wakes only ever submits without waiting (`submit_and_wait(0)`):
/// its completions must still arrive. With DEFER_TASKRUN the kernel runs the task work
/// that posts them only for an enter carrying GETEVENTS; the ring asks the kernel to flag
/// pending task work (TASKRUN_FLAG) so such a submit carries it. Without the flag this
/// poll never completes, and a slot that woke itself on every run stalled its worker.
#[test]
fn a_submit_that_does_not_wait_still_collects_completions() {
    let mut uring = Uring::new(16, 0).unwrap();
    let mut conns: Conns<(UnixStream, UnixStream)> = Conns::bound_to(uring.ring_mut());
    let mut peer = armed_poll(&mut uring, &mut conns);
    uring.parts().0.submit_and_wait(0).unwrap();
    peer.write_all(b"x").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = 0;
    while seen == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the poll's completion never came to a submit that does not wait"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (ring, pool) = uring.parts();
        ring.submit_and_wait(0).unwrap();
        let cqes = ring.completions();
        for c in &cqes {
            if let Event::Conn { .. } = conns.complete(c, ring, pool) {
                seen += 1;
            }
        }
        ring.recycle(cqes);
    }
}
