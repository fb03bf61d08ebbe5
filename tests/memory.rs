//! The buffer budget (`limits.buffer_mib_per_worker`): slow readers cannot make a worker
//! lend buffers without bound. Past the budget a read that needs a new buffer waits
//! (backpressure) and resumes when buffers come back, new clients are refused, and every
//! byte still arrives; when the readers are gone the buffers are back.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

/// Larger than what the kernel's socket buffers absorb, so readers that read nothing
/// really leave the proxy holding data.
const BODY: usize = 16_000_000;

/// `n` clients that each ask for a large body and read none of it, all connected before
/// any asks (a client that connects once the budget is spent is refused), with `others`
/// clients already connected.
fn stuck_readers(proxy: &Proxy, host: &str, n: usize, others: usize) -> Vec<TcpStream> {
    let mut stuck: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(proxy.addr()).unwrap()).collect();
    proxy.wait_metric("sluice_connections_active", Duration::from_secs(10), |v| v == (n + others) as f64).unwrap();
    for c in &mut stuck {
        c.write_all(format!("GET /bytes/{BODY} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
    }
    stuck
}

/// A client connected while the budget is free (it holds no buffer until it asks), then
/// `n` stuck readers.
fn patient_and_stuck(proxy: &Proxy, host: &str, n: usize) -> (TcpStream, Vec<TcpStream>) {
    let patient = TcpStream::connect(proxy.addr()).unwrap();
    (patient, stuck_readers(proxy, host, n, 1))
}

/// The patient asks for 1,000 bytes and gets them within `secs`.
fn patient_is_served(patient: &mut TcpStream, host: &str, secs: u64) {
    patient
        .write_all(format!("GET /bytes/1000 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    patient.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut got = Vec::new();
    patient.read_to_end(&mut got).expect("the patient client is served");
    assert!(got.starts_with(b"HTTP/1.1 200 "), "{:?}", String::from_utf8_lossy(&got[..got.len().min(80)]));
    assert!(got.ends_with(&pattern(1000)));
}

/// An origin, and a proxy with one worker and a budget of 1 MiB (16 slabs of 64 KiB);
/// `timeouts` is its `[timeouts]` section, if any.
fn one_mib_budget(timeouts: &str) -> (Origin, Proxy) {
    let proxy = Proxy::builder(&format!("[limits]\nbuffer_mib_per_worker = 1\n{timeouts}")).workers(1).start();
    (Origin::start(), proxy)
}

fn slabs_in_use(proxy: &Proxy) -> f64 {
    proxy.metric("sluice_slabs_in_use").unwrap()
}

#[test]
fn slow_readers_wait_for_the_budget_and_every_byte_arrives() {
    let (origin, proxy) = one_mib_budget("");
    assert_eq!(proxy.metric("sluice_buffer_budget_slabs").unwrap(), 16.0);
    // Connected while the budget is free (an idle client holds no buffer)... Each holds one
    // slab once its answer streams (its request's went back once the request was out),
    // so 40 of them are past twice the budget.
    let mut clients: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(proxy.addr()).unwrap()).collect();
    proxy.wait_metric("sluice_connections_active", Duration::from_secs(10), |v| v == 40.0).unwrap();
    // ...then each asks for a large body and reads none of it.
    let host = origin.host();
    for c in &mut clients {
        c.write_all(format!("GET /bytes/{BODY} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
    }
    proxy
        .wait_metric("sluice_buffer_waiting", Duration::from_secs(10), |v| v > 0.0)
        .expect("reads past the budget wait");
    // Reads stop at twice the budget (a connection holding a slab may take one more, and
    // a request's bytes take theirs up to there too); the proxy's own small writes (a
    // poll's bytes, an error page) are not held back.
    let held = proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(5), |v| v <= 34.0);
    assert!(held.is_ok(), "slabs lent with a budget of 16: {held:?}");
    // A new client is refused while the budget is spent.
    let mut late = TcpStream::connect(proxy.addr()).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    let closed = late.read(&mut b);
    assert!(
        matches!(&closed, Ok(0)) || closed.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "a client accepted past the budget: {closed:?}"
    );
    assert!(proxy.metric("sluice_connections_rejected_total").unwrap() >= 1.0);

    // The readers read: every one gets its whole body, the waiting ones too.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).map(|_| got)
            })
        })
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let got = r.join().unwrap().unwrap_or_else(|e| panic!("client {i}: {e}"));
        let split = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        assert!(got.starts_with(b"HTTP/1.1 200 "), "client {i}");
        assert_bytes_eq(&got[split..], &pattern(BODY), &format!("client {i}'s body"));
    }
    proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(10), |v| v == 0.0).expect("buffers come back");
    assert_eq!(proxy.metric("sluice_buffer_waiting").unwrap(), 0.0);
    assert!(proxy.metric("sluice_buffer_waits_total").unwrap() > 0.0);
}

/// Clients that each send part of a request head and stop (slowloris) hold at most twice
/// the budget: past it their bytes wait on the heap, with no buffer, and none is lost.
/// Their bytes come through the ring's shared receive buffers (a new client's first
/// receive, a keep-alive client's multishot one), which once took a slab each without
/// asking the budget: 40 clients held 40 slabs.
#[test]
fn partial_requests_past_twice_the_budget_wait_without_a_buffer() {
    let (origin, proxy) = one_mib_budget("");
    let host = origin.host();
    // Connected while the budget is free (an idle client holds no buffer), half of them
    // after a first exchange (their next bytes come through the multishot receive)...
    let mut clients: Vec<Client> = (0..40).map(|_| Client::connect(proxy.addr())).collect();
    for c in clients.iter_mut().step_by(2) {
        assert_eq!(c.get(&host, "/bytes/100").status, 200);
    }
    proxy.wait_metric("sluice_connections_active", Duration::from_secs(10), |v| v == 40.0).unwrap();
    // ...then each sends the start of a head, and the rest only later.
    for c in &mut clients {
        c.send_str(&format!("GET /bytes/100 HTTP/1.1\r\nHost: {host}\r\nX-Slow: "));
    }
    let waiting = proxy.wait_metric("sluice_buffer_waiting", Duration::from_secs(10), |v| v == 8.0);
    assert!(waiting.is_ok(), "8 of 40 partial heads past twice a budget of 16 should wait: {waiting:?}");
    let held = slabs_in_use(&proxy);
    assert!(held <= 33.0, "{held} slabs lent for 40 partial heads with a budget of 16");
    // The heads end: every client is served, those whose bytes waited too.
    for c in &mut clients {
        c.send_str("1\r\n\r\n");
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.stream().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = c.try_response(false).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(r.status, 200, "client {i}: {}", r.describe());
        assert_eq!(r.body, pattern(100), "client {i}'s body");
    }
    proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(10), |v| v == 0.0).expect("buffers come back");
    assert_eq!(proxy.metric("sluice_buffer_waiting").unwrap(), 0.0);
}

/// A request whose bytes wait for the budget has started: its deadline answers it 408,
/// as it does a request whose head came in part, instead of closing it like an idle
/// keep-alive connection.
#[test]
fn a_request_waiting_for_the_budget_gets_a_408_at_its_deadline() {
    let (origin, proxy) = one_mib_budget("[timeouts]\nrequest_head = 1\n");
    let host = origin.host();
    let mut waiting: Vec<Client> = (0..8).map(|_| Client::connect(proxy.addr())).collect();
    for c in &mut waiting {
        assert_eq!(c.get(&host, "/bytes/100").status, 200);
    }
    // 32 readers that read nothing of their answers hold twice the budget (one slab
    // each), past the deadline below (`timeouts.buffer_stall` is 10 s)...
    let stuck = stuck_readers(&proxy, &host, 32, waiting.len());
    proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(10), |v| v >= 32.0).expect("twice the budget spent");
    // ...so the next requests' bytes wait on the heap until their deadline.
    for c in &mut waiting {
        c.send_str(&format!("GET /bytes/100 HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    }
    let queued = proxy.wait_metric("sluice_buffer_waiting", Duration::from_secs(10), |v| v >= 8.0);
    assert!(queued.is_ok(), "the 8 requests should wait for the budget: {queued:?}");
    for (i, c) in waiting.iter_mut().enumerate() {
        c.stream().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = c.try_response(false).unwrap_or_else(|e| panic!("client {i}: no answer ({e})"));
        assert_eq!(r.status, 408, "client {i}: {}", r.describe());
    }
    drop(stuck);
}

/// Readers that read nothing cannot keep the budget from a client that would read: while
/// reads wait, the oldest connections whose writes have not moved for
/// `timeouts.buffer_stall` are closed, and the waiting client is served.
#[test]
fn stuck_readers_are_closed_oldest_first_when_others_wait_for_the_budget() {
    let (origin, proxy) = one_mib_budget("[timeouts]\nbuffer_stall = 1\n");
    let host = origin.host();
    // 40: each holds one slab, past twice the budget (as in the test above).
    let (mut patient, mut stuck) = patient_and_stuck(&proxy, &host, 40);
    proxy
        .wait_metric("sluice_buffer_waiting", Duration::from_secs(10), |v| v > 0.0)
        .expect("reads past the budget wait");
    // The stuck readers that hold a buffer are those whose answer started (the others
    // wait for the budget holding none): the oldest of them is the one to go first.
    std::thread::sleep(Duration::from_millis(300));
    let oldest_holder = stuck
        .iter()
        .position(|c| {
            c.set_nonblocking(true).unwrap();
            let started = c.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
            c.set_nonblocking(false).unwrap();
            started
        })
        .expect("some stuck reader's answer started");
    // Without the stall sweep it would wait for timeouts.io_idle (300 s).
    patient_is_served(&mut patient, &host, 20);
    // The close is counted in the same run that frees the buffer, but the metrics are
    // read over another connection: poll, do not sample once.
    let counted = proxy.wait_metric("sluice_buffer_stall_closes_total", Duration::from_secs(5), |v| v >= 1.0);
    assert!(counted.is_ok(), "stall close not counted: {counted:?}");
    // No more are closed than reads waited (about 10 here, the stuck readers whose answer
    // had not started): each close frees a slab under twice the budget, which the first
    // waiting exchange takes. Woken only under the budget itself, they waited for more
    // closes: 24 of the 40 went.
    proxy.wait_metric("sluice_buffer_waiting", Duration::from_secs(10), |v| v == 0.0).expect("the waiters are served");
    let closes = proxy.metric("sluice_buffer_stall_closes_total").unwrap();
    assert!(closes <= 14.0, "{closes} stuck readers closed for about 10 waiting reads");
    // The oldest stuck reader holding a buffer went first: it finds its connection closed
    // short of the body.
    let oldest = &mut stuck[oldest_holder];
    oldest.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut partial = Vec::new();
    let end = oldest.read_to_end(&mut partial);
    assert!(
        end.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset) || partial.len() < BODY,
        "the oldest stuck reader kept its connection ({} bytes)",
        partial.len()
    );
    drop(stuck);
    proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(10), |v| v == 0.0).expect("buffers come back");
}

/// An exchange waiting for its origin's answer holds one buffer, the one the answer is
/// read into: the client's went back once the request was out, a copy of its head kept in
/// case the reused origin connection fails and the request goes again. Holding both,
/// 1,024 busy origin connections spent a worker's whole default budget (2,048 slabs), and
/// new clients were refused.
#[test]
fn an_exchange_waiting_for_its_origin_holds_one_buffer() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let host = origin.host();
    // A first round opens 20 origin connections; the second takes them from the pool, so
    // every GET there may be retried and keeps its head.
    let exchanges: Vec<_> = (0..20)
        .map(|_| {
            let (addr, host) = (proxy.addr(), host.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                [c.get(&host, "/slow/300"), c.get(&host, "/slow/1500")]
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || origin.requests() == 40),
        "the 40 requests never reached the origin"
    );
    assert_eq!(origin.accepts(), 20, "the second round did not reuse the first round's connections");
    let held = slabs_in_use(&proxy);
    assert!(held <= 22.0, "{held} slabs lent for 20 exchanges waiting for their answers");
    for (i, e) in exchanges.into_iter().enumerate() {
        for r in e.join().unwrap() {
            assert_eq!(r.status, 200, "exchange {i}: {}", r.describe());
        }
    }
    proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(10), |v| v == 0.0).expect("buffers come back");
}

/// The answer to a request already out is read while slow readers spend the budget (up to
/// twice it, as for any connection finishing work in flight): reading it is what lets the
/// exchange finish and give its buffers back. No stall close is needed for it.
#[test]
fn an_answer_is_read_while_slow_readers_spend_the_budget() {
    let (origin, proxy) = one_mib_budget("[timeouts]\nbuffer_stall = 300\n");
    let host = origin.host();
    let (mut patient, stuck) = patient_and_stuck(&proxy, &host, 20);
    // 20 slabs, one per stuck reader: past the budget of 16, below twice it.
    proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(10), |v| v >= 20.0).expect("the budget is spent");
    patient_is_served(&mut patient, &host, 10);
    assert_eq!(proxy.metric("sluice_buffer_stall_closes_total").unwrap(), 0.0);
    drop(stuck);
    proxy.wait_metric("sluice_slabs_in_use", Duration::from_secs(10), |v| v == 0.0).expect("buffers come back");
}
