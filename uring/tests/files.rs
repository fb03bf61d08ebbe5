//! The registered file table: who owns a slot, and when a slot may be used again.
//!
//! The slot bookkeeping is the same on the in-memory ring (a table the kernel does not
//! hold) and on a kernel ring, so the ownership rules are checked in memory, where a test
//! chooses when each operation completes; the kernel tests check what only the kernel can
//! show: data really flows through table slots, a cancel by fd reaches an operation
//! submitted on the slot, and a socket leaves the table (its peer sees the close) as soon
//! as the owner lets go of it, even while other slots have operations pending.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use uring::{ConnId, Conns, Event, Op, OpTag, SimOp, Uring};

const POLL: OpTag = OpTag(5);
const SHUTDOWN: OpTag = OpTag(7);
const CANCEL: OpTag = OpTag(6);

/// An in-memory ring with a table of `slots` and its arena.
fn sim(slots: u32) -> (Uring, Conns<&'static str>) {
    let mut uring = Uring::in_memory(0).unwrap();
    assert_eq!(uring.ring_mut().register_files(slots), slots);
    let conns = Conns::bound_to(uring.ring_mut());
    (uring, conns)
}

/// Submits a poll on `fd` for `id`; returns the table slot it named (None: by fd).
fn poll(uring: &mut Uring, conns: &mut Conns<&'static str>, id: ConnId, tag: OpTag, fd: RawFd) -> Option<u32> {
    let (ring, pool) = uring.parts();
    let io = conns.get_mut(id).unwrap().split().1;
    ring.submit(io, tag, Op::PollIn { fd }, pool);
    ring.sim().unwrap().pending().last().unwrap().fixed
}

/// Attaches `fd` to `id` and reports the slot a poll on it names.
fn attach(uring: &mut Uring, conns: &mut Conns<&'static str>, id: ConnId, fd: RawFd) -> Option<u32> {
    let attached = {
        let io = conns.get_mut(id).unwrap().split().1;
        uring.ring_mut().attach_file(io, fd, None)
    };
    let slot = poll(uring, conns, id, POLL, fd);
    assert_eq!(attached, slot.is_some(), "attach_file says whether operations on the fd use a slot");
    complete_pending(uring, conns, |tag, op| tag == POLL && op.names(fd));
    slot
}

/// Completes the pending operation `pick` chooses and decodes its completion.
fn complete_pending(uring: &mut Uring, conns: &mut Conns<&'static str>, pick: impl Fn(OpTag, &SimOp) -> bool) {
    let (ring, pool) = uring.parts();
    let sim = ring.sim().unwrap();
    let p = sim.take(pick).expect("a pending operation to complete");
    sim.complete(p, 1);
    ring.submit_and_wait(1).unwrap();
    for c in ring.completions() {
        let _ = conns.complete(&c, ring, pool);
    }
}

#[test]
fn a_released_slot_is_reused_only_after_the_kernel_is_done_with_it() {
    let (mut uring, mut conns) = sim(8);
    let (a, b, c) = (conns.insert("a"), conns.insert("b"), conns.insert("c"));
    let slot_a = attach(&mut uring, &mut conns, a, 10).expect("a free table slot");
    // An operation names A's slot; then A's socket leaves the leg (say, it is closed).
    assert_eq!(poll(&mut uring, &mut conns, a, SHUTDOWN, 10), Some(slot_a));
    {
        let io = conns.get_mut(a).unwrap().split().1;
        assert!(uring.ring_mut().detach_file(io, 10).is_none(), "an operation names the slot: no token to keep");
        assert!(!io.uses_fixed(10), "nothing new maps to a released slot");
    }
    assert_eq!(poll(&mut uring, &mut conns, a, POLL, 10), None, "after detaching, operations go by fd");
    // Until the operation completes, the index is handed to nobody else, even across
    // submissions (which give back everything that was returned).
    uring.ring_mut().submit_and_wait(0).unwrap();
    assert_eq!(uring.ring().stats().fixed_files, 1, "the released slot still counts");
    let slot_b = attach(&mut uring, &mut conns, b, 11).unwrap();
    assert_ne!(slot_b, slot_a, "a slot with an operation in flight was handed out again");
    // The operation completes: the slot is free, and the next attach takes it.
    complete_pending(&mut uring, &mut conns, |tag, op| tag == SHUTDOWN && op.names(10));
    assert_eq!(uring.ring().stats().fixed_files, 1, "only B's slot is in use");
    assert_eq!(attach(&mut uring, &mut conns, c, 12), Some(slot_a), "the freed slot is reused");
}

#[test]
fn a_freed_connection_gives_its_slots_back_only_after_its_last_operation() {
    let (mut uring, mut conns) = sim(2);
    let (a, b) = (conns.insert("a"), conns.insert("b"));
    let client = attach(&mut uring, &mut conns, a, 20).unwrap();
    let origin = attach(&mut uring, &mut conns, a, 21).unwrap();
    assert_ne!(client, origin);
    assert_eq!(poll(&mut uring, &mut conns, a, POLL, 20), Some(client));
    assert!(conns.close(a).is_none(), "an operation in flight: not freed");
    uring.ring_mut().submit_and_wait(0).unwrap();
    assert_eq!(attach(&mut uring, &mut conns, b, 22), None, "both slots are still A's: B goes by fd");
    let (ring, pool) = uring.parts();
    let sim = ring.sim().unwrap();
    let p = sim.take(|_, op| op.names(20)).unwrap();
    sim.complete(p, -libc::ECANCELED);
    ring.submit_and_wait(1).unwrap();
    let cqes = ring.completions();
    assert!(matches!(conns.complete(&cqes[0], ring, pool), Event::Freed { .. }));
    // The freed slot's table slots go back with the next submission.
    assert_eq!(uring.ring().stats().fixed_files, 2);
    uring.ring_mut().submit_and_wait(0).unwrap();
    assert_eq!(uring.ring().stats().fixed_files, 0);
    assert!(attach(&mut uring, &mut conns, b, 23).is_some());
}

#[test]
fn a_socket_parked_with_its_slot_is_attached_again_without_a_new_slot() {
    let (mut uring, mut conns) = sim(4);
    let (a, b) = (conns.insert("a"), conns.insert("b"));
    let slot = attach(&mut uring, &mut conns, a, 30).unwrap();
    let token = {
        let io = conns.get_mut(a).unwrap().split().1;
        uring.ring_mut().detach_file(io, 30).expect("nothing in flight: the slot goes with the socket")
    };
    uring.ring_mut().submit_and_wait(0).unwrap();
    assert_eq!(uring.ring().stats().fixed_files, 1, "a parked socket keeps its slot");
    {
        let io = conns.get_mut(b).unwrap().split().1;
        assert!(uring.ring_mut().attach_file(io, 30, Some(token)));
    }
    assert_eq!(poll(&mut uring, &mut conns, b, POLL, 30), Some(slot), "the same slot, no new install");
    assert_eq!(uring.ring().stats().fixed_files, 1);
    // A token attached with another socket's fd is not taken at its word: that socket
    // gets a slot of its own, and the token's goes back.
    complete_pending(&mut uring, &mut conns, |_, op| op.names(30));
    let token = {
        let io = conns.get_mut(b).unwrap().split().1;
        uring.ring_mut().detach_file(io, 30).unwrap()
    };
    {
        let io = conns.get_mut(a).unwrap().split().1;
        assert!(uring.ring_mut().attach_file(io, 31, Some(token)));
    }
    assert_ne!(poll(&mut uring, &mut conns, a, POLL, 31), Some(slot));
    uring.ring_mut().submit_and_wait(0).unwrap();
    assert_eq!(uring.ring().stats().fixed_files, 1, "the mismatched token's slot went back");
}

#[test]
fn a_dropped_token_gives_its_slot_back() {
    let (mut uring, mut conns) = sim(1);
    let (a, b) = (conns.insert("a"), conns.insert("b"));
    let slot = attach(&mut uring, &mut conns, a, 40).unwrap();
    let token = {
        let io = conns.get_mut(a).unwrap().split().1;
        uring.ring_mut().detach_file(io, 40).unwrap()
    };
    assert_eq!(attach(&mut uring, &mut conns, b, 41), None, "the parked socket holds the only slot");
    drop(token); // the pool closed the parked socket
    assert_eq!(attach(&mut uring, &mut conns, b, 42), Some(slot));
}

#[test]
fn a_reused_fd_number_never_reaches_the_closed_sockets_slot() {
    let (mut uring, mut conns) = sim(4);
    let a = conns.insert("a");
    let old = attach(&mut uring, &mut conns, a, 50).unwrap();
    assert_eq!(poll(&mut uring, &mut conns, a, SHUTDOWN, 50), Some(old));
    // The socket behind fd 50 was closed without being detached, and a new socket got the
    // same number: attaching it lets the old slot go first (once its operation is done),
    // and operations on the number name the new socket's slot from now on.
    let new = attach(&mut uring, &mut conns, a, 50).unwrap();
    assert_ne!(old, new, "the new socket got a slot the kernel may still resolve for the old one");
    assert_eq!(poll(&mut uring, &mut conns, a, POLL, 50), Some(new));
    complete_pending(&mut uring, &mut conns, |tag, _| tag == SHUTDOWN);
    uring.ring_mut().submit_and_wait(0).unwrap();
    assert_eq!(uring.ring().stats().fixed_files, 1, "the closed socket's slot went back after its operation");
}

#[test]
fn one_tag_in_flight_twice_on_a_slot_goes_by_fd_the_second_time() {
    let (mut uring, mut conns) = sim(4);
    let a = conns.insert("a");
    let slot = attach(&mut uring, &mut conns, a, 60).unwrap();
    assert_eq!(poll(&mut uring, &mut conns, a, POLL, 60), Some(slot));
    assert_eq!(poll(&mut uring, &mut conns, a, POLL, 60), None, "one bit per tag: the second goes by fd");
    // Cancels always go by fd (the kernel matches the file behind it).
    let (ring, pool) = uring.parts();
    let io = conns.get_mut(a).unwrap().split().1;
    ring.submit(io, CANCEL, Op::CancelFd { fd: 60 }, pool);
    assert!(ring.sim().unwrap().pending().iter().all(|p| p.tag != CANCEL), "the in-memory cancel completes at once");
}

#[test]
fn a_full_table_leaves_sockets_on_their_fds() {
    let (mut uring, mut conns) = sim(1);
    let (a, b) = (conns.insert("a"), conns.insert("b"));
    assert!(attach(&mut uring, &mut conns, a, 70).is_some());
    assert_eq!(attach(&mut uring, &mut conns, b, 71), None);
    // And a slot holds two sockets at most (its two legs).
    assert_eq!(attach(&mut uring, &mut conns, a, 72), None);
}

// --- kernel rings ---------------------------------------------------------------------

/// A kernel ring with a table, or None (with a note) when this kernel offers none.
fn kernel_ring(slots: u32) -> Option<Uring> {
    let mut uring = Uring::new(64, 2).unwrap();
    if uring.ring_mut().register_files(slots) == 0 {
        eprintln!("SKIP: no registered file table on this kernel (6.13+ needed)");
        return None;
    }
    Some(uring)
}

/// Runs the ring until `want` completions were decoded, handing each event to `f`.
fn run<T>(uring: &mut Uring, conns: &mut Conns<T>, want: usize, mut f: impl FnMut(Event<'_, T>)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while seen < want {
        assert!(Instant::now() < deadline, "only {seen} of {want} completions");
        let (ring, pool) = uring.parts();
        ring.submit_and_wait(1).unwrap();
        for c in ring.completions() {
            f(conns.complete(&c, ring, pool));
            seen += 1;
        }
    }
}

/// Whether `peer` reads end-of-file now (non-blocking; bytes before it are skipped).
fn reads_eof(peer: &UnixStream) -> bool {
    peer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match (&*peer).read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) => panic!("reading the peer: {e}"),
        }
    }
}

#[test]
fn reads_and_writes_go_through_table_slots() {
    let Some(mut uring) = kernel_ring(16) else { return };
    let mut conns: Conns<UnixStream> = Conns::bound_to(uring.ring_mut());
    let (a, mut peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let id = conns.insert(a);
    {
        let (ring, pool) = uring.parts();
        let io = conns.get_mut(id).unwrap().split().1;
        assert!(ring.attach_file(io, fd, None));
        ring.submit(io, OpTag(0), Op::Recv { fd, slab: pool.take(), offset: 0, len: 100 }, pool);
    }
    peer.write_all(b"through the table").unwrap();
    let mut echo = None;
    run(&mut uring, &mut conns, 1, |ev| match ev {
        Event::Conn { result, slab: Some(slab), slot, .. } => {
            assert_eq!(result, 17, "the receive on the table slot got the bytes");
            assert!(slot.io().uses_fixed(fd));
            echo = Some((slab, result as usize));
        }
        _ => panic!("expected the receive"),
    });
    let (slab, n) = echo.unwrap();
    {
        let (ring, pool) = uring.parts();
        let io = conns.get_mut(id).unwrap().split().1;
        ring.submit(io, OpTag(1), Op::Send { fd, slab, offset: 0, len: n }, pool);
    }
    let mut sent = None;
    run(&mut uring, &mut conns, 1, |ev| match ev {
        Event::Conn { result, slab: Some(slab), .. } => sent = Some((result, slab)),
        _ => panic!("expected the send"),
    });
    let (result, slab) = sent.unwrap();
    assert_eq!(result, 17);
    uring.pool_mut().release(slab);
    let mut back = [0u8; 17];
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"through the table");
    assert_eq!(uring.ring().stats().file_update_errors, 0);
    assert_eq!(uring.ring().stats().fixed_files, 1);
}

#[test]
fn a_cancel_by_fd_reaches_an_operation_on_the_table_slot() {
    let Some(mut uring) = kernel_ring(16) else { return };
    let mut conns: Conns<(UnixStream, UnixStream)> = Conns::bound_to(uring.ring_mut());
    let (a, peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let id = conns.insert((a, peer));
    {
        let (ring, pool) = uring.parts();
        let io = conns.get_mut(id).unwrap().split().1;
        assert!(ring.attach_file(io, fd, None));
        ring.submit(io, POLL, Op::PollIn { fd }, pool);
        ring.submit(io, CANCEL, Op::CancelFd { fd }, pool);
    }
    let mut results = Vec::new();
    run(&mut uring, &mut conns, 2, |ev| match ev {
        Event::Conn { tag, result, .. } => results.push((tag, result)),
        _ => panic!("expected the poll and the cancel"),
    });
    results.sort_by_key(|(t, _)| t.0);
    assert_eq!(results, vec![(POLL, -libc::ECANCELED), (CANCEL, 1)], "the cancel by fd found the poll on the slot");
}

#[test]
fn a_socket_leaves_the_table_when_let_go_even_while_other_slots_wait() {
    let Some(mut uring) = kernel_ring(16) else { return };
    let mut conns: Conns<UnixStream> = Conns::bound_to(uring.ring_mut());
    // A connection idle on its table slot: its poll stays in the kernel for the whole test.
    let (idle, _idle_peer) = UnixStream::pair().unwrap();
    let idle_fd = idle.as_raw_fd();
    let idle_id = conns.insert(idle);
    // A connection that polls once on its slot, then closes.
    let (a, a_peer) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let id = conns.insert(a);
    {
        let (ring, pool) = uring.parts();
        let io = conns.get_mut(idle_id).unwrap().split().1;
        assert!(ring.attach_file(io, idle_fd, None));
        ring.submit(io, POLL, Op::PollIn { fd: idle_fd }, pool);
        let io = conns.get_mut(id).unwrap().split().1;
        assert!(ring.attach_file(io, fd, None));
        ring.submit(io, POLL, Op::PollOut { fd }, pool);
    }
    run(&mut uring, &mut conns, 1, |ev| assert!(matches!(ev, Event::Conn { result, .. } if result > 0)));
    let value = conns.close(id).expect("nothing in flight: freed at once");
    drop(value); // its fd is closed; the table still holds the socket...
    assert!(!reads_eof(&a_peer), "the table slot keeps the socket open until the removal is submitted");
    // ...until the next submission empties the slot: then the peer sees the close, although
    // the idle connection's operation on an older slot is still pending.
    uring.ring_mut().submit_and_wait(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reads_eof(&a_peer) {
        assert!(Instant::now() < deadline, "the socket let go of stayed open (the kernel holds the file)");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(uring.ring().stats().fixed_files, 1);
    assert!(conns.get_mut(idle_id).unwrap().io().uses_fixed(idle_fd));
}
