//! The multishot receive (`Op::RecvMulti`) and the cancel of one operation by its tag
//! (`Op::Cancel`) against a real ring and real sockets: one submission completes once per
//! arrival (flagged `more`, each with its own provided buffer) and stays in flight; a
//! cancel by tag ends it with `-ECANCELED` and leaves the slot's other operations on the
//! same socket alone; where the kernel takes a byte limit, it ends by itself after
//! `MULTISHOT_LIMIT` bytes and the rest waits in the socket; a closing slot with it
//! armed is freed only after its last completion, and every provided buffer is back.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;
use uring::{Conns, Event, Op, OpTag, Ring, SlabPool, Uring};

const RECV: OpTag = OpTag(11);
const CANCEL: OpTag = OpTag(6);
const WRITE: OpTag = OpTag(1);

/// Runs `body` on its own thread (a single-issuer ring belongs to the thread that built
/// it) and fails instead of hanging if a completion never comes.
fn within_deadline(body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("a completion never came"),
    }
}

/// One completion of the slot, as (tag, result, more, the provided buffer's bytes).
type Seen = (OpTag, i32, bool, Option<Vec<u8>>);

/// Waits for the next completions and decodes them; provided buffers are read and given
/// back at once, slabs released.
fn next(ring: &mut Ring, conns: &mut Conns<UnixStream>, pool: &mut SlabPool) -> Vec<Seen> {
    ring.submit_and_wait(1).expect("submit_and_wait");
    let cqes = ring.completions();
    let mut seen = Vec::new();
    for c in &cqes {
        if let Event::Conn { tag, result, more, slab, provided, .. } = conns.complete(c, ring, pool) {
            let bytes = provided.map(|p| {
                let b = ring.provided_bytes(&p).to_vec();
                ring.recycle_provided(p);
                b
            });
            if let Some(s) = slab {
                pool.release(s);
            }
            seen.push((tag, result, more, bytes));
        }
    }
    ring.recycle(cqes);
    seen
}

/// Cancels the slot's operations on `fd`, closes it, and runs the ring until it is freed.
fn cancel_and_close(ring: &mut Ring, conns: &mut Conns<UnixStream>, pool: &mut SlabPool, id: uring::ConnId, fd: i32) {
    let (_, io) = conns.get_mut(id).unwrap().split();
    ring.submit(io, CANCEL, Op::CancelFd { fd }, pool);
    assert!(conns.close(id).is_none(), "a receive is in flight: not freed yet");
    while !conns.is_empty() {
        ring.submit_and_wait(1).unwrap();
        let cqes = ring.completions();
        for c in &cqes {
            let _ = conns.complete(c, ring, pool);
        }
        ring.recycle(cqes);
    }
}

#[test]
fn a_multishot_receive_completes_once_per_arrival_until_cancelled_by_its_tag() {
    within_deadline(|| {
        let mut uring = Uring::new(64, 2).unwrap();
        let (ring, pool) = uring.parts();
        assert!(ring.has_buf_ring(), "this kernel registers a provided-buffer ring");
        let mut conns: Conns<UnixStream> = Conns::bound_to(ring);
        let (a, mut peer) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let id = conns.insert(a);
        {
            let (_, io) = conns.get_mut(id).unwrap().split();
            ring.submit(io, RECV, Op::RecvMulti { fd }, pool);
        }
        for word in [&b"one"[..], b"two", b"three"] {
            peer.write_all(word).unwrap();
            let seen = next(ring, &mut conns, pool);
            assert_eq!(seen, vec![(RECV, word.len() as i32, true, Some(word.to_vec()))]);
            assert_eq!(conns.get_mut(id).unwrap().io().inflight(), 1, "still one operation in flight");
        }
        // A write of the slot on the same socket is in flight when the receive is
        // cancelled by its tag: the write goes on.
        let (_, io) = conns.get_mut(id).unwrap().split();
        let slab = pool.take();
        ring.submit(io, WRITE, Op::Send { fd, slab, offset: 0, len: 5 }, pool);
        ring.submit(io, CANCEL, Op::Cancel { tag: RECV }, pool);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.extend(next(ring, &mut conns, pool));
        }
        seen.sort_by_key(|s| s.0 .0);
        assert_eq!(
            seen,
            vec![(WRITE, 5, false, None), (CANCEL, 0, false, None), (RECV, -libc::ECANCELED, false, None)],
            "the write completed, the cancel found the receive, the receive ended"
        );
        assert_eq!(conns.get_mut(id).unwrap().io().inflight(), 0);
        // Cancelling again finds nothing.
        let (_, io) = conns.get_mut(id).unwrap().split();
        ring.submit(io, CANCEL, Op::Cancel { tag: RECV }, pool);
        assert_eq!(next(ring, &mut conns, pool), vec![(CANCEL, -libc::ENOENT, false, None)]);
        assert!(conns.close(id).is_some());
        assert_eq!(pool.outstanding(), 0);
    });
}

#[test]
fn a_slot_closed_with_its_multishot_receive_armed_is_freed_after_its_last_completion() {
    within_deadline(|| {
        let mut uring = Uring::new(64, 0).unwrap();
        let (ring, pool) = uring.parts();
        let mut conns: Conns<UnixStream> = Conns::bound_to(ring);
        let (a, mut peer) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let id = conns.insert(a);
        let (_, io) = conns.get_mut(id).unwrap().split();
        ring.submit(io, RECV, Op::RecvMulti { fd }, pool);
        peer.write_all(b"first").unwrap();
        assert_eq!(next(ring, &mut conns, pool), vec![(RECV, 5, true, Some(b"first".to_vec()))]);
        // Bytes arrive and the slot closes before the worker sees them: the closing slot's
        // completions give their provided buffers back themselves.
        peer.write_all(b"late").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (_, io) = conns.get_mut(id).unwrap().split();
        ring.submit(io, CANCEL, Op::CancelFd { fd }, pool);
        assert!(conns.close(id).is_none(), "a receive is in flight: not freed yet");
        let mut freed = None;
        while freed.is_none() {
            ring.submit_and_wait(1).unwrap();
            let cqes = ring.completions();
            for c in &cqes {
                match conns.complete(c, ring, pool) {
                    Event::Draining => {}
                    Event::Freed { id: f, value } => {
                        assert_eq!(f, id);
                        freed = Some(value);
                    }
                    _ => panic!("a closing slot's completion came back as a live one"),
                }
            }
            ring.recycle(cqes);
        }
        assert!(conns.is_empty());
        // Every provided buffer is back: 512 receives of one byte each find one.
        let (b, mut peer) = UnixStream::pair().unwrap();
        let fd = b.as_raw_fd();
        let id = conns.insert(b);
        let (_, io) = conns.get_mut(id).unwrap().split();
        ring.submit(io, RECV, Op::RecvMulti { fd }, pool);
        let mut got = 0;
        let mut held = Vec::new();
        while got < 512 {
            peer.write_all(b"x").unwrap();
            ring.submit_and_wait(1).unwrap();
            let cqes = ring.completions();
            for c in &cqes {
                if let Event::Conn { result, provided, .. } = conns.complete(c, ring, pool) {
                    assert!(result > 0, "buffer {got}: {result}");
                    got += result as usize;
                    held.extend(provided);
                }
            }
            ring.recycle(cqes);
        }
        for p in held {
            ring.recycle_provided(p);
        }
        cancel_and_close(ring, &mut conns, pool, id, fd);
        drop(freed);
    });
}

#[test]
fn a_multishot_receive_ends_by_itself_after_its_byte_limit() {
    within_deadline(|| {
        let mut uring = Uring::new(64, 2).unwrap();
        let (ring, pool) = uring.parts();
        if !ring.multishot_limited() {
            assert!(
                !uring::kernel::at_least(6, 17),
                "Linux 6.17 takes a multishot receive's byte limit: the probe missed it"
            );
            eprintln!("skipped: this kernel does not take a multishot receive's byte limit (Linux 6.17)");
            return;
        }
        let mut conns: Conns<UnixStream> = Conns::bound_to(ring);
        let (a, mut peer) = UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        let id = conns.insert(a);
        let (_, io) = conns.get_mut(id).unwrap().split();
        ring.submit(io, RECV, Op::RecvMulti { fd }, pool);
        // Four times the limit at once, as an upload's body behind its head arrives.
        let sent: Vec<u8> = (0..4 * uring::MULTISHOT_LIMIT).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).unwrap();
        let mut got = Vec::new();
        let mut ended = false;
        while !ended {
            for (tag, result, more, bytes) in next(ring, &mut conns, pool) {
                assert_eq!(tag, RECV);
                assert!(result > 0, "a completion with bytes, not {result}");
                got.extend(bytes.expect("a provided buffer"));
                ended = !more;
            }
        }
        let limit = uring::MULTISHOT_LIMIT as usize;
        assert!((limit..limit + 4096).contains(&got.len()), "the receive ended at its limit: {} bytes", got.len());
        assert_eq!(got[..], sent[..got.len()]);
        assert_eq!(conns.get_mut(id).unwrap().io().inflight(), 0, "nothing in flight once it ended");
        // The rest waits in the socket for the next receive.
        let (_, io) = conns.get_mut(id).unwrap().split();
        ring.submit(io, RECV, Op::RecvMulti { fd }, pool);
        let seen = next(ring, &mut conns, pool);
        assert_eq!(seen[0].3.as_deref(), Some(&sent[got.len()..got.len() + seen[0].1 as usize]));
        cancel_and_close(ring, &mut conns, pool, id, fd);
        assert_eq!(pool.outstanding(), 0);
    });
}
