//! The in-memory ring: the same submission and decoding path as the kernel ring, with
//! completions a test chooses.

use uring::{Conns, Event, Op, OpTag, SimOp, Uring};

const READ: OpTag = OpTag(0);
const POLL: OpTag = OpTag(5);
const CANCEL: OpTag = OpTag(6);

#[test]
fn a_receive_gets_the_injected_bytes_in_its_slab() {
    let mut uring = Uring::in_memory(2).unwrap();
    let mut conns: Conns<()> = Conns::bound_to(uring.ring_mut());
    let id = conns.insert(());
    {
        let (ring, pool) = uring.parts();
        let slab = pool.take();
        let io = conns.get_mut(id).unwrap().split().1;
        ring.submit(io, READ, Op::Recv { fd: 7, slab, offset: 100, len: 4 }, pool);
        assert_eq!(io.inflight(), 1);
    }
    let (ring, pool) = uring.parts();
    let sim = ring.sim().expect("an in-memory ring");
    assert_eq!(sim.pending().len(), 1);
    let op = sim.take(|tag, op| tag == READ && *op == SimOp::Recv { fd: 7, len: 4 }).unwrap();
    assert_eq!(sim.complete_recv(op, b"hello"), 4, "no more than the receive asked for");
    ring.submit_and_wait(1).unwrap();
    let cqes = ring.completions();
    assert_eq!(cqes.len(), 1);
    match conns.complete(&cqes[0], ring, pool) {
        Event::Conn { tag, result, slab: Some(slab), .. } => {
            assert_eq!((tag, result), (READ, 4));
            assert_eq!(&pool.bytes(&slab)[100..104], b"hell");
            pool.release(slab);
        }
        _ => panic!("expected the receive's completion with its slab"),
    }
    assert_eq!(conns.get_mut(id).unwrap().io().inflight(), 0);
}

#[test]
fn a_cancel_completes_the_operations_on_its_fd_and_frees_a_closing_slot() {
    let mut uring = Uring::in_memory(0).unwrap();
    let mut conns: Conns<&'static str> = Conns::bound_to(uring.ring_mut());
    let id = conns.insert("conn");
    {
        let (ring, pool) = uring.parts();
        let io = conns.get_mut(id).unwrap().split().1;
        ring.submit(io, POLL, Op::PollIn { fd: 3 }, pool);
        ring.submit(io, POLL, Op::PollIn { fd: 4 }, pool);
        ring.submit(io, CANCEL, Op::CancelFd { fd: 3 }, pool);
    }
    assert!(conns.close(id).is_none(), "three operations in flight");
    let (ring, pool) = uring.parts();
    assert_eq!(ring.sim().unwrap().pending().len(), 1, "only the poll on fd 4 is left");
    ring.submit_and_wait(1).unwrap();
    let cqes = ring.completions();
    let results: Vec<_> = cqes.iter().map(|c| c.result()).collect();
    assert_eq!(results, vec![-libc::ECANCELED, 1]);
    for c in &cqes {
        assert!(matches!(conns.complete(c, ring, pool), Event::Draining));
    }
    let sim = ring.sim().unwrap();
    let last = sim.take(|_, op| op.names(4)).unwrap();
    sim.complete(last, 1);
    ring.submit_and_wait(1).unwrap();
    let cqes = ring.completions();
    match conns.complete(&cqes[0], ring, pool) {
        Event::Freed { id: freed, value } => assert_eq!((freed, value), (id, "conn")),
        _ => panic!("the last completion frees the closing slot"),
    }
    assert!(conns.is_empty());
}

#[test]
#[should_panic(expected = "an operation of another ring")]
fn an_operation_completes_only_on_its_own_ring() {
    let mut mine = Uring::in_memory(0).unwrap();
    let mut other = Uring::in_memory(0).unwrap();
    let mut conns: Conns<()> = Conns::bound_to(mine.ring_mut());
    let id = conns.insert(());
    {
        let (ring, pool) = mine.parts();
        ring.submit(conns.get_mut(id).unwrap().split().1, POLL, Op::PollIn { fd: 3 }, pool);
    }
    let op = mine.ring_mut().sim().unwrap().take(|_, _| true).unwrap();
    // Completed on another ring, it would be stamped with that ring's id and decoded by
    // that ring's arena as one of its slots.
    other.ring_mut().sim().unwrap().complete(op, 1);
}

#[test]
fn a_multishot_receive_takes_provided_buffers_until_none_is_free_or_it_is_cancelled() {
    const RECV: OpTag = OpTag(11);
    let mut uring = Uring::in_memory(0).unwrap();
    assert!(!uring.ring().has_buf_ring(), "no provided buffers until the test gives some");
    uring.ring_mut().sim().unwrap().provide_buffers(2, 4);
    assert!(uring.ring().has_buf_ring());
    let mut conns: Conns<()> = Conns::bound_to(uring.ring_mut());
    let id = conns.insert(());
    let submit = |uring: &mut Uring, conns: &mut Conns<()>, tag, op| {
        let (ring, pool) = uring.parts();
        ring.submit(conns.get_mut(id).unwrap().split().1, tag, op, pool);
    };
    // Collects (result, more, bytes) of the batch, giving each buffer back at once.
    let batch = |uring: &mut Uring, conns: &mut Conns<()>| {
        let (ring, pool) = uring.parts();
        ring.submit_and_wait(1).unwrap();
        let mut seen = Vec::new();
        for c in &ring.completions() {
            if let Event::Conn { result, more, provided, .. } = conns.complete(c, ring, pool) {
                let bytes = provided.map(|p| {
                    let b = ring.provided_bytes(&p).to_vec();
                    ring.recycle_provided(p);
                    b
                });
                seen.push((result, more, bytes));
            }
        }
        seen
    };
    submit(&mut uring, &mut conns, RECV, Op::RecvMulti { fd: 9 });
    // Six bytes fill two buffers of four: two completions, both with more to come.
    assert_eq!(uring.ring_mut().sim().unwrap().deliver(9, b"abcdef"), 6);
    assert_eq!(batch(&mut uring, &mut conns), vec![(4, true, Some(b"abcd".to_vec())), (2, true, Some(b"ef".to_vec()))]);
    assert_eq!(conns.get_mut(id).unwrap().io().inflight(), 1, "still armed");
    // Two arrivals before the worker gives any buffer back: the second runs out of them
    // and ends the receive.
    let sim = uring.ring_mut().sim().unwrap();
    assert_eq!(sim.deliver(9, b"gh"), 2);
    assert_eq!(sim.deliver(9, b"ijklmn"), 4, "one buffer left: four bytes, then -ENOBUFS");
    assert_eq!(sim.free_buffers(), 0);
    let seen = batch(&mut uring, &mut conns);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2], (-libc::ENOBUFS, false, None), "the receive ends for want of a buffer");
    assert_eq!(conns.get_mut(id).unwrap().io().inflight(), 0);
    assert_eq!(uring.ring_mut().sim().unwrap().free_buffers(), 2, "every buffer is back");
    // Armed again, then cancelled by its tag: it ends with -ECANCELED, the cancel with 0.
    submit(&mut uring, &mut conns, RECV, Op::RecvMulti { fd: 9 });
    submit(&mut uring, &mut conns, CANCEL, Op::Cancel { tag: RECV });
    assert_eq!(batch(&mut uring, &mut conns), vec![(-libc::ECANCELED, false, None), (0, false, None)]);
    submit(&mut uring, &mut conns, CANCEL, Op::Cancel { tag: RECV });
    assert_eq!(batch(&mut uring, &mut conns), vec![(-libc::ENOENT, false, None)], "nothing left to cancel");
    assert_eq!(conns.get_mut(id).unwrap().io().inflight(), 0);
}
