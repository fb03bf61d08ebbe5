//! The client leg's multishot receive (`conn::multishot`) driven in memory: the ring has
//! provided buffers ([`Sim::provide_buffers`]), a client's first request comes through a
//! one-shot `RecvSelect` and every later one through the multishot receive armed at the
//! first keep-alive wait. Each test plays one hazard of keeping a receive armed across
//! exchanges: bytes the connection cannot take yet, a shortage of provided buffers, and
//! closing with the receive in flight.

use super::*;

/// Provided buffers of the in-memory ring, and their size (as on a kernel ring).
const BUFFERS: u16 = 8;
const BUFFER_SIZE: usize = 4096;

fn harness() -> Harness {
    let mut h = Harness::new(|_| {});
    h.sim().provide_buffers(BUFFERS, BUFFER_SIZE);
    h
}

fn multishot_on(h: &mut Harness, fd: RawFd) -> bool {
    h.has(|op| *op == SimOp::RecvMulti { fd })
}

/// Any receive of the client's pending (one-shot or multishot).
fn client_receive_pending(h: &mut Harness, fd: RawFd) -> bool {
    h.has(|op| match op {
        SimOp::Recv { fd: f, .. } | SimOp::RecvSelect { fd: f } | SimOp::RecvMulti { fd: f } => *f == fd,
        _ => false,
    })
}

/// The origin connection the request just sent goes to: a new one (its connect
/// completed here), or the one taken from the pool.
fn origin_of_request(h: &mut Harness) -> RawFd {
    if h.has(|op| matches!(op, SimOp::Connect { .. })) {
        return h.connect(0);
    }
    let sends: Vec<RawFd> = h
        .sim()
        .pending()
        .iter()
        .filter_map(|p| match p.op {
            SimOp::Send { fd, .. } => Some(fd),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1, "one request on its way to an origin");
    sends[0]
}

/// A keep-alive client after its first exchange, with the multishot receive armed, and
/// the origin connection that served it (now pooled).
fn armed_client(h: &mut Harness) -> (RawFd, RawFd) {
    let client = h.client();
    assert!(h.has(|op| *op == SimOp::RecvSelect { fd: client }), "the first request takes a one-shot receive");
    h.send_from(client, REQUEST);
    let origin = origin_of_request(h);
    h.received_by(origin);
    assert!(answer(h, client, origin).ends_with(b"\r\n\r\nhi"));
    assert!(multishot_on(h, client), "the first keep-alive wait arms the multishot receive");
    (client, origin)
}

fn get(path: &str, pad: usize) -> Vec<u8> {
    format!("GET http://192.0.2.10{path} HTTP/1.1\r\nHost: 192.0.2.10\r\nX-Pad: {}\r\n\r\n", "p".repeat(pad))
        .into_bytes()
}

/// The origin answers the request it got on `origin`; the client receives the response.
fn answer(h: &mut Harness, client: RawFd, origin: RawFd) -> Vec<u8> {
    h.send_from(origin, RESPONSE);
    h.received_by(client)
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().next().unwrap_or("").to_string()
}

#[test]
fn a_keep_alive_request_needs_no_new_receive() {
    let mut h = harness();
    let (client, mut origin) = armed_client(&mut h);
    for round in 0..3 {
        let before = h.worker.env.uring.ring().stats().submitted;
        let (o, _) = exchange(&mut h, client, Some(origin));
        origin = o;
        // The request came through the receive armed before: this exchange submitted only
        // the request to the origin, the origin's receive and the response to the client.
        let submitted = h.worker.env.uring.ring().stats().submitted - before;
        assert_eq!(submitted, 3, "round {round}: operations submitted for one keep-alive exchange");
        assert!(multishot_on(&mut h, client), "round {round}: still armed between requests");
        assert_eq!(h.slabs_out(), 0, "round {round}: an idle keep-alive client holds no slab");
        assert_eq!(h.sim().free_buffers(), BUFFERS as usize, "round {round}: every provided buffer is back");
    }
}

#[test]
fn pipelined_requests_in_one_burst_are_served_in_order() {
    let mut h = harness();
    let (client, origin) = armed_client(&mut h);
    // Three requests in one burst, larger than a provided buffer: two completions in one
    // batch. The second arrives while the first request's head is being written to the
    // origin from `client.input` (lent): it is stashed, and the receive is cancelled.
    let requests: Vec<Vec<u8>> = ["/1", "/2", "/3"].iter().map(|p| get(p, 1500)).collect();
    let burst = requests.concat();
    assert!(burst.len() > BUFFER_SIZE);
    h.send_from(client, &burst);
    h.turn(); // the cancelled receive's last completion
    for (i, path) in ["/1", "/2", "/3"].iter().enumerate() {
        let request = h.received_by(origin);
        assert_eq!(first_line(&request), format!("GET {path} HTTP/1.1"), "request {i} reaches the origin whole");
        assert!(request.ends_with(b"\r\n\r\n") && request.len() > 1500, "request {i}: {}", excerpt(&request));
        let response = answer(&mut h, client, origin);
        assert!(response.ends_with(b"\r\n\r\nhi"), "response {i}");
    }
    assert!(multishot_on(&mut h, client), "the next keep-alive wait arms a new receive");
    assert_eq!(h.slabs_out(), 0);
    assert_eq!(h.sim().free_buffers(), BUFFERS as usize);
}

#[test]
fn an_upload_to_a_slow_origin_stops_the_receive_until_the_origin_takes_the_body() {
    let mut h = harness();
    let (client, _) = armed_client(&mut h);
    let body = pattern_bytes(20_000);
    h.send_from(client, &upload_start(&body, 1000));
    // A request with a body is not retried, so it takes a fresh origin connection.
    let origin = origin_of_request(&mut h);
    // The head and the first body bytes go to the origin, which does not take them yet.
    let send = h.take("request to the origin", |_, op| matches!(op, SimOp::Send { fd, .. } if *fd == origin));
    let SimOp::Send { bytes: sent_first, .. } = &send.op else { unreachable!() };
    let mut at_origin = sent_first.clone();
    // The client keeps sending: those bytes cannot be forwarded now, so the receive is
    // cancelled (the rest waits in the client's socket: TCP backpressure) and what came
    // is kept.
    assert_eq!(h.sim().deliver(client, &body[1000..9000]), 8000);
    h.turn();
    h.turn();
    assert!(!client_receive_pending(&mut h, client), "no receive of the client while the origin is slow");
    // The origin takes the first write: the kept bytes follow, then the client is read
    // at the origin's pace, one receive into the connection's own slab at a time.
    h.sim().complete(send, at_origin.len() as i32);
    h.turn();
    at_origin.extend(h.received_by(origin));
    let recv = h.take("the body's next receive", |_, op| matches!(op, SimOp::Recv { fd, .. } if *fd == client));
    h.sim().complete_recv(recv, &body[9000..]);
    h.turn();
    at_origin.extend(h.received_by(origin));
    assert_body(&at_origin, &body);
    let response = answer(&mut h, client, origin);
    assert!(response.ends_with(b"\r\n\r\nhi"));
    // The request was an upload: the next one is awaited with a one-shot receive, so a
    // next upload's body is not handed over in provided buffers until a cancel lands.
    assert!(!multishot_on(&mut h, client), "no multishot receive after an upload");
    assert!(h.has(|op| *op == SimOp::RecvSelect { fd: client }), "a one-shot receive waits for the next request");
    // A small request: the wait after it is the multishot receive again.
    exchange(&mut h, client, Some(origin));
    assert!(multishot_on(&mut h, client), "armed again after a request that was no upload");
    // An upload of UPLOAD_BYTES: it arrives through the multishot receive armed before
    // it, and the wait after it is one-shot again. Its body is read the ordinary way.
    let body = pattern_bytes(crate::conn::multishot::UPLOAD_BYTES as usize);
    h.send_from(client, &upload_start(&body, 1000));
    let origin = origin_of_request(&mut h);
    let mut at_origin = h.received_by(origin);
    h.turn(); // the multishot receive, cancelled for the body's read, ends
    let recv = h.take("the body's receive", |_, op| matches!(op, SimOp::Recv { fd, .. } if *fd == client));
    h.sim().complete_recv(recv, &body[1000..]);
    h.turn();
    at_origin.extend(h.received_by(origin));
    assert_body(&at_origin, &body);
    assert!(answer(&mut h, client, origin).ends_with(b"\r\n\r\nhi"));
    assert!(!multishot_on(&mut h, client), "no multishot receive after an upload of UPLOAD_BYTES");
}

/// The head of `POST /up` with `body`, and the body's first `sent` bytes.
fn upload_start(body: &[u8], sent: usize) -> Vec<u8> {
    let head =
        format!("POST http://192.0.2.10/up HTTP/1.1\r\nHost: 192.0.2.10\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body[..sent]);
    bytes
}

/// What the origin got is `POST /up` with exactly `body` after its head.
fn assert_body(at_origin: &[u8], body: &[u8]) {
    let head_end = at_origin.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    assert_eq!(first_line(at_origin), "POST /up HTTP/1.1");
    assert_eq!(at_origin.len() - head_end, body.len(), "the whole body reached the origin");
    assert!(at_origin[head_end..] == body[..], "the body reached the origin in order");
}

#[test]
fn the_body_is_read_only_once_the_cancelled_receive_has_ended() {
    let mut h = harness();
    // Cancels take effect when the test says, as in the kernel, where a cancel acts only
    // once the ring gets to it: meanwhile the receive can still deliver.
    h.sim().defer_cancels();
    let (client, _) = armed_client(&mut h);
    let body = pattern_bytes(12_000);
    h.send_from(client, &upload_start(&body, 1000));
    let origin = origin_of_request(&mut h);
    // The origin takes the head and the first bytes; the body's next bytes are read at the
    // origin's pace, by a receive of the connection's own: the multishot one is cancelled.
    let mut at_origin = h.received_by(origin);
    assert!(h.has(|op| matches!(op, SimOp::Cancel { .. })), "the multishot receive is being cancelled");
    let own_receive = |h: &mut Harness| h.has(|op| matches!(op, SimOp::Recv { fd, .. } if *fd == client));
    assert!(!own_receive(&mut h), "no receive of its own while the cancelled one may still deliver");
    assert_eq!(h.sim().deliver(client, &body[1000..5000]), 4000);
    h.turn();
    at_origin.extend(h.received_by(origin));
    assert!(!own_receive(&mut h), "still none: its bytes would overtake the cancelled receive's");
    // The cancel takes effect: the receive ends, and the rest is read the ordinary way.
    let cancel = h.take("the cancel", |_, op| matches!(op, SimOp::Cancel { .. }));
    h.sim().complete(cancel, 0);
    h.turn();
    assert!(!multishot_on(&mut h, client));
    let recv = h.take("the body's next receive", |_, op| matches!(op, SimOp::Recv { fd, .. } if *fd == client));
    h.sim().complete_recv(recv, &body[5000..]);
    h.turn();
    at_origin.extend(h.received_by(origin));
    assert_body(&at_origin, &body);
    assert!(answer(&mut h, client, origin).ends_with(b"\r\n\r\nhi"));
    assert!(multishot_on(&mut h, client), "armed again once the exchange is over");
}

#[test]
fn a_request_sent_before_the_response_is_written_is_kept_and_served() {
    let mut h = harness();
    let (client, origin) = armed_client(&mut h);
    h.send_from(client, &get("/1", 0));
    assert_eq!(first_line(&h.received_by(origin)), "GET /1 HTTP/1.1");
    h.send_from(origin, RESPONSE);
    // The response is being written to the client when its next request arrives.
    assert!(h.has(|op| matches!(op, SimOp::Send { fd, .. } if *fd == client)));
    assert_eq!(h.sim().deliver(client, &get("/2", 0)), get("/2", 0).len());
    h.turn();
    h.turn();
    assert!(!multishot_on(&mut h, client), "bytes the exchange cannot take stop the receive");
    // Cancelling the receive did not touch the write in flight on the same socket.
    let write = h.take("response to the client", |_, op| matches!(op, SimOp::Send { fd, .. } if *fd == client));
    let SimOp::Send { bytes, .. } = &write.op else { unreachable!() };
    let n = bytes.len() as i32;
    h.sim().complete(write, n);
    h.turn();
    assert_eq!(first_line(&h.received_by(origin)), "GET /2 HTTP/1.1", "the early request is served next");
    let response = answer(&mut h, client, origin);
    assert!(response.ends_with(b"\r\n\r\nhi"));
    assert!(multishot_on(&mut h, client), "armed again at the next keep-alive wait");
    assert_eq!(h.live_slots(), 1);
}

#[test]
fn a_provided_buffer_shortage_falls_back_to_ordinary_reads() {
    let mut h = harness();
    let clients: Vec<RawFd> = (0..BUFFERS as usize + 4).map(|_| armed_client(&mut h).0).collect();
    // Every client sends its next request in the same batch: the first BUFFERS get a
    // provided buffer each, the others find none and their receives end with -ENOBUFS.
    let mut short = Vec::new();
    for &client in &clients {
        if h.sim().deliver(client, &get("/next", 0)) == 0 {
            short.push(client);
        }
    }
    assert_eq!(short.len(), 4, "four receives found no provided buffer");
    h.turn();
    // The ones that got their bytes go on; the others read the ordinary way.
    // (Requests that found no pooled origin connection dial one.)
    while let Some(connect) = h.sim().take(|_, op| matches!(op, SimOp::Connect { .. })) {
        h.sim().complete(connect, 0);
        h.turn();
    }
    let mut origins = Vec::new();
    while let Some(send) = h.sim().take(|_, op| matches!(op, SimOp::Send { .. })) {
        let SimOp::Send { fd: origin, bytes } = &send.op else { unreachable!() };
        assert_eq!(first_line(bytes), "GET /next HTTP/1.1");
        origins.push(*origin);
        let n = bytes.len() as i32;
        h.sim().complete(send, n);
        h.turn();
    }
    let mut served = 0;
    for origin in origins {
        h.send_from(origin, RESPONSE);
        let response = h.take("a response", |_, op| matches!(op, SimOp::Send { .. }));
        let SimOp::Send { fd: client, bytes } = &response.op else { unreachable!() };
        assert!(clients.contains(client) && !short.contains(client));
        assert!(bytes.ends_with(b"\r\n\r\nhi"));
        let n = bytes.len() as i32;
        h.sim().complete(response, n);
        h.turn();
        served += 1;
    }
    assert_eq!(served, clients.len() - short.len());
    for &client in &short {
        assert!(!multishot_on(&mut h, client), "its receive ended with -ENOBUFS");
        let recv = h.take("a fallback receive", |_, op| matches!(op, SimOp::Recv { fd, .. } if *fd == client));
        h.sim().complete_recv(recv, &get("/next", 0));
        h.turn();
        let origin = origin_of_request(&mut h);
        assert_eq!(first_line(&h.received_by(origin)), "GET /next HTTP/1.1");
        assert!(answer(&mut h, client, origin).ends_with(b"\r\n\r\nhi"));
    }
    for &client in &clients {
        assert!(multishot_on(&mut h, client), "armed again after the shortage");
    }
    assert_eq!(h.sim().free_buffers(), BUFFERS as usize, "no provided buffer is held");
    assert_eq!(h.slabs_out(), 0);
    assert_eq!(h.live_slots(), clients.len());
}

#[test]
fn closing_with_the_receive_armed_frees_the_slot_after_its_last_completion() {
    let mut h = harness();
    let (client, origin) = armed_client(&mut h);
    // The proxy closes after this response (the client asked for it) while the
    // multishot receive is armed: it is cancelled, and the slot stays until it is back.
    h.send_from(client, b"GET http://192.0.2.10/a HTTP/1.1\r\nHost: 192.0.2.10\r\nConnection: close\r\n\r\n");
    h.received_by(origin);
    h.send_from(origin, RESPONSE);
    let write = h.take("response to the client", |_, op| matches!(op, SimOp::Send { fd, .. } if *fd == client));
    let SimOp::Send { bytes, .. } = &write.op else { unreachable!() };
    let n = bytes.len() as i32;
    h.sim().complete(write, n);
    h.turn();
    assert_eq!(h.live_slots(), 1, "not freed while the multishot receive is in flight");
    h.turn();
    assert!(!h.has(|op| op.names(client)), "nothing left on the client socket");
    assert_eq!(h.live_slots(), 0, "freed once the cancelled receive came back");
    assert_eq!(h.slabs_out(), 0);
    assert_eq!(h.sim().free_buffers(), BUFFERS as usize);
    // A client that leaves ends the receive itself (EOF): freed at once.
    let (client, _) = armed_client(&mut h);
    assert_eq!(h.sim().deliver(client, b""), 0);
    h.turn();
    assert_eq!(h.live_slots(), 0, "the client's EOF freed its slot");
    assert_eq!(h.sim().free_buffers(), BUFFERS as usize);
}

#[test]
fn a_request_that_waited_for_the_budget_is_served_though_the_client_ended_meanwhile() {
    let mut h = Harness::new(|cfg| cfg.limits.buffer_mib_per_worker = 1);
    h.sim().provide_buffers(BUFFERS, BUFFER_SIZE);
    let (client, origin) = armed_client(&mut h);
    // Other connections hold twice the budget of 16 slabs.
    let held: Vec<_> = (0..32).map(|_| h.worker.env.uring.pool_mut().take()).collect();
    // The client's next request and its end (a half-close) arrive in one batch.
    let request = get("/late", 0);
    assert_eq!(h.sim().deliver(client, &request), request.len());
    assert_eq!(h.sim().deliver(client, b""), 0);
    h.turn();
    assert_eq!(h.slabs_out(), 32, "the request's bytes took no slab past twice the budget");
    assert!(!h.has(|op| op.names(origin)), "nothing went to the origin yet");
    assert_eq!(h.worker.env.uring.pool().waiters().0, 1, "the connection waits for the budget");
    // The slabs come back: the request that waited on the heap goes out, and the answer
    // comes back although the client said it has nothing more to send.
    for slab in held {
        h.worker.env.uring.pool_mut().release(slab);
    }
    h.turn();
    assert_eq!(first_line(&h.received_by(origin)), "GET /late HTTP/1.1");
    assert!(answer(&mut h, client, origin).ends_with(b"\r\n\r\nhi"));
    assert_eq!(h.worker.env.uring.pool().waiters().0, 0);
}

fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i * 7 % 26) as u8).collect()
}

fn excerpt(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

#[test]
fn a_receive_that_ends_at_its_byte_limit_loses_no_byte_and_is_armed_again() {
    let mut h = harness();
    let (client, origin) = armed_client(&mut h);
    let limit = uring::MULTISHOT_LIMIT as usize;
    // Requests of 5,000 bytes, two provided buffers each, through the armed receive: the
    // completion that takes it to its limit (the fourth request's first buffer) ends it,
    // with no "more" flag, and the rest of that head is read the ordinary way.
    let mut delivered = 0;
    let mut ended = false;
    for i in 0..8 {
        let request = get(&format!("/{i}"), 5000 - get(&format!("/{i}"), 0).len());
        let n = h.sim().deliver(client, &request);
        h.turn();
        delivered += n;
        if n < request.len() {
            assert!((limit..limit + BUFFER_SIZE).contains(&delivered), "ended at its limit: {delivered} bytes");
            assert!(!multishot_on(&mut h, client), "it ended by itself");
            let recv = h.take("the rest of the head", |_, op| matches!(op, SimOp::Recv { fd, .. } if *fd == client));
            h.sim().complete_recv(recv, &request[n..]);
            h.turn();
            ended = true;
        }
        let at_origin = h.received_by(origin);
        assert_eq!(first_line(&at_origin), format!("GET /{i} HTTP/1.1"), "request {i}");
        assert!(at_origin.ends_with(b"\r\n\r\n") && at_origin.len() > 4900, "request {i} whole");
        assert!(answer(&mut h, client, origin).ends_with(b"\r\n\r\nhi"), "response {i}");
        if ended {
            break;
        }
    }
    assert!(ended, "the receive reached its limit within 8 requests of 5,000 bytes");
    assert!(multishot_on(&mut h, client), "the next keep-alive wait arms a new receive");
    assert_eq!(h.slabs_out(), 0);
    assert_eq!(h.sim().free_buffers(), BUFFERS as usize);
}
