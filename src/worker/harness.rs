//! The connection state machine driven in memory: a whole [`Worker`] (connections,
//! upstream pool, ready queue, timers) on an in-memory ring, where every completion is
//! injected by the test and no byte goes through the kernel. Sockets are still real
//! descriptors (a connection owns one; the proxy creates one per origin connect), but
//! nothing is ever read from or written to them: the test plays client and origin by
//! completing the operations the proxy submits, as quiche tests whole connections over
//! an in-memory pipe.

use super::{Finished, Worker, WorkerSetup};
use crate::config::Config;
use crate::conn::Role;
use crate::control::Control;
use crate::stats::WorkerStats;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use uring::{sim::Pending, OpTag, Sim, SimOp, Uring};

mod multishot;

struct Harness {
    worker: Worker,
    /// The far ends of the client sockets (kept open; never used).
    peers: Vec<TcpStream>,
    listener: TcpListener,
    ca_dir: std::path::PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.ca_dir);
    }
}

impl Harness {
    fn new(tune: impl FnOnce(&mut Config)) -> Harness {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ca_dir = std::env::temp_dir().join(format!("sluice-harness-{}-{n}", std::process::id()));
        let (ca, _) = crate::tls::ca::load_or_create(&ca_dir).expect("test CA");
        let mut cfg = Config::default();
        tune(&mut cfg);
        let cfg = Arc::new(cfg);
        let control = Arc::new(Control::new(cfg.clone()));
        let setup = WorkerSetup {
            index: 0,
            cpu: None,
            cfg,
            stats: vec![WorkerStats::default()].into(),
            listeners: Vec::new(),
            via: "sluice-test".into(),
            control: control.clone(),
            ca: Arc::new(ca),
            upstream_tls: crate::tls::upstream::client_config(&[]).expect("upstream TLS config"),
            fd_clients: 1000,
        };
        let uring = Uring::in_memory(16).expect("in-memory ring");
        let worker = Worker::new(setup, uring, Finished { control, done: false }).expect("worker");
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        Harness { worker, peers: Vec::new(), listener, ca_dir }
    }

    /// A client connects: returns the descriptor the proxy's connection owns.
    fn client(&mut self) -> RawFd {
        let peer = TcpStream::connect(self.listener.local_addr().unwrap()).unwrap();
        let (stream, _) = self.listener.accept().unwrap();
        self.peers.push(peer);
        let fd = stream.as_raw_fd();
        let w = &mut self.worker;
        let now = std::time::Instant::now();
        assert!(super::accept(&mut w.conns, &mut w.env, now, Role::Proxy, stream).is_none());
        fd
    }

    fn sim(&mut self) -> &mut Sim {
        self.worker.env.uring.ring_mut().sim().expect("an in-memory ring")
    }

    /// Runs one turn of the worker: the injected completions, then the woken slots.
    fn turn(&mut self) {
        assert!(self.worker.turn().expect("turn"));
    }

    /// Takes the pending operation `pick` accepts; fails with what is pending instead.
    fn take(&mut self, what: &str, pick: impl Fn(OpTag, &SimOp) -> bool) -> Pending {
        let sim = self.sim();
        let pending = format!("{:?}", sim.pending().iter().map(|p| &p.op).collect::<Vec<_>>());
        sim.take(pick).unwrap_or_else(|| panic!("no {what} pending; pending: {pending}"))
    }

    fn has(&mut self, pick: impl Fn(&SimOp) -> bool) -> bool {
        self.sim().pending().iter().any(|p| pick(&p.op))
    }

    /// The client (or origin) behind `fd` sends `data`: completes the pending readiness
    /// poll first if that is what waits, then the receive (a receive into a provided
    /// buffer, or the multishot receive, takes all of `data` at once).
    fn send_from(&mut self, fd: RawFd, data: &[u8]) {
        if self.has(|op| *op == SimOp::PollIn { fd }) {
            let poll = self.take("poll", |_, op| *op == SimOp::PollIn { fd });
            self.sim().complete(poll, libc::POLLIN as i32);
            self.turn();
        }
        if self.has(|op| *op == SimOp::RecvMulti { fd }) {
            assert_eq!(self.sim().deliver(fd, data), data.len(), "provided buffers ran out");
            self.turn();
            return;
        }
        if self.has(|op| *op == SimOp::RecvSelect { fd }) {
            let recv = self.take("receive", |_, op| *op == SimOp::RecvSelect { fd });
            let n = self.sim().complete_provided(recv, data);
            assert_eq!(n, data.len() as i32, "one provided buffer holds it");
            self.turn();
            return;
        }
        let recv = self.take("receive", |_, op| matches!(op, SimOp::Recv { fd: f, .. } if *f == fd));
        self.sim().complete_recv(recv, data);
        self.turn();
    }

    /// What the proxy sends to `fd` (all of it accepted at once).
    fn received_by(&mut self, fd: RawFd) -> Vec<u8> {
        let send = self.take("send", |_, op| matches!(op, SimOp::Send { fd: f, .. } if *f == fd));
        let SimOp::Send { bytes, .. } = &send.op else { unreachable!() };
        let bytes = bytes.clone();
        self.sim().complete(send, bytes.len() as i32);
        self.turn();
        bytes
    }

    /// The proxy's pending connect: completes it with `result` and returns the origin
    /// socket's descriptor.
    fn connect(&mut self, result: i32) -> RawFd {
        let op = self.take("connect", |_, op| matches!(op, SimOp::Connect { .. }));
        let SimOp::Connect { fd, .. } = op.op else { unreachable!() };
        self.sim().complete(op, result);
        self.turn();
        fd
    }

    fn live_slots(&self) -> usize {
        self.worker.conns.len()
    }

    fn slabs_out(&self) -> usize {
        self.worker.env.uring.pool().outstanding()
    }
}

const REQUEST: &[u8] = b"GET http://192.0.2.10/a HTTP/1.1\r\nHost: 192.0.2.10\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";

/// One exchange on client `fd` through to its response, on the origin connection
/// `pooled` if given (else a new one); returns the origin's descriptor and what it got.
fn exchange(h: &mut Harness, client: RawFd, pooled: Option<RawFd>) -> (RawFd, Vec<u8>) {
    h.send_from(client, REQUEST);
    let origin = match pooled {
        Some(fd) => {
            assert!(!h.has(|op| matches!(op, SimOp::Connect { .. })), "the pooled connection is reused");
            fd
        }
        None => h.connect(0),
    };
    let request = h.received_by(origin);
    h.send_from(origin, RESPONSE);
    let response = h.received_by(client);
    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&response));
    assert!(response.ends_with(b"\r\n\r\nhi"), "{}", String::from_utf8_lossy(&response));
    (origin, request)
}

#[test]
fn a_keep_alive_client_gets_two_exchanges_on_one_connection() {
    let mut h = Harness::new(|_| {});
    let client = h.client();
    let mut pooled = None;
    for round in 0..2 {
        let (origin, request) = exchange(&mut h, client, pooled);
        // The origin connection went back to the pool; the next (retryable, just
        // parked) request takes it without a peek.
        pooled = Some(origin);
        let text = String::from_utf8_lossy(&request).into_owned();
        assert!(text.starts_with("GET /a HTTP/1.1\r\n"), "round {round}: origin-form upstream: {text}");
        assert!(text.contains("Via: 1.1 sluice-test\r\n"), "round {round}: {text}");
        // Between requests the client waits with a readiness poll and holds no slab.
        assert!(h.has(|op| *op == SimOp::PollIn { fd: client }), "round {round}: waiting for the next request");
        assert_eq!(h.slabs_out(), 0, "round {round}: an idle keep-alive client holds no slab");
    }
    assert_eq!(h.live_slots(), 1);
}

#[test]
fn a_refused_connect_is_rendered_as_an_http1_502() {
    let mut h = Harness::new(|_| {});
    let client = h.client();
    h.send_from(client, REQUEST);
    h.connect(-libc::ECONNREFUSED);
    let response = String::from_utf8_lossy(&h.received_by(client)).into_owned();
    assert!(response.starts_with("HTTP/1.1 502 "), "{response}");
    assert!(response.contains("Connection: close\r\n"), "{response}");
    // It lingers, reading what the client may still send, so that closing on unread
    // bytes does not reset the connection; the client's EOF ends it.
    assert!(h.has(|op| matches!(op, SimOp::Recv { fd, .. } if *fd == client)), "lingering");
    let shutdown = h.take("shutdown", |_, op| *op == SimOp::ShutdownWrite { fd: client });
    h.sim().complete(shutdown, 0);
    h.send_from(client, b"");
    assert_eq!(h.live_slots(), 0, "closed once the client is gone");
    assert_eq!(h.slabs_out(), 0);
}

#[test]
fn a_client_leaving_with_operations_in_flight_is_freed_only_after_they_complete() {
    let mut h = Harness::new(|_| {});
    let client = h.client();
    // A request whose body has not arrived: the head goes upstream, then the proxy reads
    // the client for the body while it listens to the origin.
    h.send_from(client, b"POST http://192.0.2.10/up HTTP/1.1\r\nHost: 192.0.2.10\r\nContent-Length: 5\r\n\r\n");
    let origin = h.connect(0);
    let head = h.received_by(origin);
    assert!(head.starts_with(b"POST /up HTTP/1.1\r\n"));
    assert!(h.has(|op| matches!(op, SimOp::Recv { fd, .. } if *fd == origin)), "listening to the origin");
    // The client leaves in the middle of its body. The origin's receive is still in the
    // kernel: the proxy cancels it and must not free the slot (or its slab) before the
    // cancelled receive completed.
    let recv = h.take("client body receive", |_, op| matches!(op, SimOp::Recv { fd, .. } if *fd == client));
    h.sim().complete_recv(recv, b"");
    h.turn();
    // The close submitted a cancel for each descriptor: the in-memory ring completes the
    // origin receive with -ECANCELED, as the kernel does, but the worker has not seen
    // that completion yet: the slot (and the slab lent to the receive) must still be there.
    assert_eq!(h.live_slots(), 1, "not freed while the origin receive is in flight");
    assert_eq!(h.slabs_out(), 1, "the receive's slab is still lent");
    h.turn();
    assert!(!h.has(|op| op.names(origin)), "nothing left on the origin socket");
    assert_eq!(h.live_slots(), 0, "freed once the cancelled receive came back");
    assert_eq!(h.slabs_out(), 0, "its slabs went back to the pool");
}

#[test]
fn a_queued_request_is_woken_when_another_slot_frees_its_origin_connection() {
    let mut h = Harness::new(|cfg| cfg.pool.max_connections_per_host = 1);
    let (first, second) = (h.client(), h.client());
    h.send_from(first, REQUEST);
    let origin = h.connect(0);
    h.send_from(second, REQUEST);
    assert!(
        !h.has(|op| matches!(op, SimOp::Connect { .. })),
        "the origin's one connection is busy: the second request waits in the queue"
    );
    // The first exchange ends; its connection goes back to the pool, which wakes the
    // second slot through the worker's ready queue in the same turn.
    h.received_by(origin);
    h.send_from(origin, RESPONSE);
    h.received_by(first);
    assert!(
        h.has(|op| matches!(op, SimOp::Connect { .. }) || matches!(op, SimOp::Send { fd, .. } if *fd == origin)),
        "the queued request went on once the connection was free"
    );
}
