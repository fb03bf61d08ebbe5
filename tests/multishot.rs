//! The client leg's multishot receive (src/conn/multishot.rs) end to end, on the kernel's
//! ring: a keep-alive client's later requests arrive through one receive that stays
//! armed across exchanges. Each test plays a hazard of keeping it armed: a burst of
//! pipelined requests, an upload to an origin slower than the client, a request sent
//! before the previous response is out, and many connections' receives ending mid-burst
//! (at their byte limit, or out of provided buffers). Every byte must arrive, in order.
//! A client that uploads waits with a one-shot receive instead. (Closing with the
//! receive armed is in tests/lifecycle.rs.)

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::thread;
use std::time::Duration;
use support::*;

/// `sluice_client_multishot_total{event}` now.
fn multishot(proxy: &Proxy, event: &str) -> f64 {
    let text = proxy.metrics().unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("sluice_client_multishot_total{{event=\"{event}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// Waits until `n` more multishot receives were armed than `before`.
fn wait_armed(proxy: &Proxy, before: f64, n: f64) {
    let ok = wait_until(Duration::from_secs(10), || multishot(proxy, "armed") >= before + n);
    assert!(ok, "{n} multishot receives armed: {} since the start", multishot(proxy, "armed") - before);
}

/// A keep-alive client that finished one exchange: its next requests come through the
/// multishot receive.
fn keep_alive_client(proxy: &Proxy, host: &str) -> Client {
    let mut c = proxy.client();
    let r = c.get(host, "/bytes/10");
    assert_eq!(r.status, 200, "{}", r.describe());
    c
}

/// POSTs `len` bytes of `pattern` to `path`, the head and body written as fast as the
/// socket takes them from a thread of their own while the response is read.
fn upload(c: &mut Client, host: &str, path: &str, len: usize) -> Response {
    let mut upload = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    upload.extend_from_slice(&pattern(len));
    let mut writer = c.stream().try_clone().unwrap();
    let body = thread::spawn(move || writer.write_all(&upload));
    let r = c.response();
    body.join().unwrap().expect("the whole body was sent");
    r
}

fn get_padded(host: &str, path: &str, pad: usize) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Pad: {}\r\n\r\n", "p".repeat(pad))
}

#[test]
fn pipelined_requests_in_one_burst_are_answered_in_order() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let host = origin.host();
    let armed = multishot(&proxy, "armed");
    let mut c = keep_alive_client(&proxy, &host);
    wait_armed(&proxy, armed, 1.0);
    // 48 requests of about 1 KiB in one write: many provided buffers' worth, arriving
    // while the first exchanges run.
    let burst: String = (0..48).map(|i| get_padded(&host, &format!("/bytes/{}", 100 + i), 1000)).collect();
    c.send_str(&burst);
    for i in 0..48 {
        let r = c.response();
        assert_eq!(r.status, 200, "response {i}: {}", r.describe());
        assert_bytes_eq(&r.body, &pattern(100 + i), &format!("response {i}"));
    }
    let r = c.get(&host, "/bytes/7");
    assert_eq!(r.body, pattern(7), "the connection goes on after the burst");
    assert_eq!(origin.requests(), 50, "every request reached the origin once");
}

/// An origin for three requests on one connection that reads request bodies slowly (16 KiB
/// a millisecond) and answers with what it got: the length and whether every byte matched
/// `pattern`.
fn slow_reading_origin() -> (std::net::SocketAddr, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut c = BufConn::new(stream);
        // The test's three requests: a GET, the upload, a GET.
        for _ in 0..3 {
            let raw = c.read_head(1 << 16).unwrap().expect("a request");
            let head = parse_head(&raw).unwrap();
            let len: u64 = head.get("content-length").map_or(0, |v| v.parse().unwrap());
            let (mut got, mut bad) = (0u64, None);
            while got < len {
                let chunk = c.read_exact_vec((16 << 10).min((len - got) as usize)).expect("the whole body");
                for (i, b) in chunk.iter().enumerate() {
                    if bad.is_none() && *b != pattern_byte(got + i as u64) {
                        bad = Some(got + i as u64);
                    }
                }
                got += chunk.len() as u64;
                thread::sleep(Duration::from_millis(1));
            }
            let text = match bad {
                None => format!("{got} ok"),
                Some(at) => format!("{got} mismatch at {at}"),
            };
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len());
            w.write_all(answer.as_bytes()).unwrap();
        }
    });
    (addr, handle)
}

#[test]
fn an_upload_to_a_slow_origin_arrives_whole_and_in_order() {
    let (origin, served) = slow_reading_origin();
    let proxy = Proxy::builder("").workers(1).start();
    let host = origin.to_string();
    let armed = multishot(&proxy, "armed");
    let mut c = keep_alive_client(&proxy, &host);
    wait_armed(&proxy, armed, 1.0);
    // The client sends the head and its 6 MiB as fast as it can (the head and the first
    // body bytes in one segment: several provided buffers' worth arrive while the head
    // is being written to the origin); the origin reads at its own pace.
    const LEN: usize = 6 << 20;
    let r = upload(&mut c, &host, "/up", LEN);
    assert_eq!(r.text(), format!("{LEN} ok"), "the origin got the body whole and in order");
    let r = c.get(&host, "/after");
    assert_eq!(r.status, 200, "the connection goes on after the upload");
    drop(c);
    served.join().unwrap();
}

/// A client that uploads waits for its next request with a one-shot receive: a multishot
/// one hands a body that follows its head over in 4 KiB provided buffers until its cancel
/// lands (a third more CPU per request for 1 MiB uploads). After a smaller request the
/// multishot receive is armed again.
#[test]
fn a_client_that_uploads_waits_for_its_next_request_with_a_one_shot_receive() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let host = origin.host();
    let (armed, cancelled) = (multishot(&proxy, "armed"), multishot(&proxy, "cancelled"));
    let mut c = keep_alive_client(&proxy, &host);
    wait_armed(&proxy, armed, 1.0);
    // Three uploads of 256 KiB: the first arrives through the receive armed after the
    // GET (cancelled for its body), the next two through one-shot receives.
    const LEN: usize = 256 << 10;
    for i in 0..3 {
        let r = upload(&mut c, &host, "/echo", LEN);
        assert_eq!(r.status, 200, "upload {i}: {}", r.describe());
        assert_bytes_eq(&r.body, &pattern(LEN), &format!("upload {i} echoed"));
    }
    // The GET after the uploads is awaited with a one-shot receive too; the wait after it
    // is the multishot receive again.
    let r = c.get(&host, "/bytes/10");
    assert_eq!(r.body, pattern(10));
    wait_armed(&proxy, armed, 2.0);
    let r = c.get(&host, "/bytes/11");
    assert_eq!(r.body, pattern(11), "served through the receive armed again");
    assert_eq!(
        multishot(&proxy, "armed") - armed,
        2.0,
        "armed after the first GET and after the GET that followed the uploads"
    );
    // The first upload's body stopped the receive armed after the GET: a cancel, unless
    // it had ended by itself at its byte limit first (uring::MULTISHOT_LIMIT).
    assert!(multishot(&proxy, "cancelled") - cancelled <= 1.0, "cancelled at most once, for the first upload's body");
}

#[test]
fn a_request_sent_while_the_response_is_written_is_answered_next() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let host = origin.host();
    let armed = multishot(&proxy, "armed");
    let mut c = keep_alive_client(&proxy, &host);
    wait_armed(&proxy, armed, 1.0);
    // A 16 MiB response the client does not read yet: the proxy's writes to it block.
    const BIG: usize = 16 << 20;
    c.send_str(&format!("GET /bytes/{BIG} HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    let head = c.conn.read_head(1 << 16).unwrap().expect("the response head");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"));
    thread::sleep(Duration::from_millis(100));
    // The next request arrives while that response is being written.
    c.send_str(&format!("GET /bytes/33 HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    thread::sleep(Duration::from_millis(100));
    let got = c.conn.read_exact_vec(BIG).unwrap();
    assert_bytes_eq(&got, &pattern(BIG), "the large response");
    let r = c.response();
    assert_bytes_eq(&r.body, &pattern(33), "the request sent early was answered next");
}

#[test]
fn many_connections_bursting_at_once_get_every_byte_though_their_receives_end_mid_burst() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(1).start();
    let host = origin.host();
    let armed = multishot(&proxy, "armed");
    // Each receive takes at most 4 buffers where the kernel limits it to 16 KiB
    // (uring::MULTISHOT_LIMIT), 16 where it does not: 200 connections ask for 800 or more.
    const CLIENTS: usize = 200;
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| keep_alive_client(&proxy, &host)).collect();
    wait_armed(&proxy, armed, CLIENTS as f64);
    let burst: String = (0..24).map(|i| get_padded(&host, &format!("/bytes/{}", 200 + i), 2700)).collect();
    assert!(burst.len() > 60 << 10);
    // With the proxy stopped, every connection's burst waits in its socket; when it runs
    // again its receives all find bytes at once: 200 bursts of 4 provided buffers or more
    // each against 512 buffers on the ring.
    let pid = proxy.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    for c in &mut clients {
        c.send_str(&burst);
    }
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    for (n, c) in clients.iter_mut().enumerate() {
        for i in 0..24 {
            let r = c.try_response(false).unwrap_or_else(|e| panic!("client {n}, response {i}: {e}"));
            assert_bytes_eq(&r.body, &pattern(200 + i), &format!("client {n}, response {i}"));
        }
    }
    // Each burst's receive ended before the burst did: at its byte limit where the kernel
    // takes one (each ends after about 16 KiB, and the worker recycles the buffers between
    // task-work rounds), else in a provided-buffer shortage (the shortage alone is played in
    // memory: src/worker/harness/multishot.rs).
    let (nobufs, ended) = (multishot(&proxy, "nobufs"), multishot(&proxy, "ended"));
    assert!(nobufs + ended > 0.0, "receives ended mid-burst: {nobufs} out of buffers, {ended} at their limit");
    if uring::kernel::at_least(6, 17) {
        assert!(ended > 0.0, "Linux 6.17 takes the byte limit: receives end at it");
    }
    // Each connection goes on, with a receive armed again once its burst was served
    // (each burst ended its receive: cancelled, at its limit, or out of buffers).
    for c in &mut clients {
        assert_eq!(c.get(&host, "/bytes/5").body, pattern(5));
    }
    wait_armed(&proxy, armed, 2.0 * CLIENTS as f64);
}

#[test]
fn a_connect_after_a_keep_alive_request_tunnels_every_byte_in_order() {
    let origin = Origin::start();
    let echo = EchoServer::start();
    let proxy = Proxy::builder(&format!("connect_ports = [{}]\n", echo.port())).workers(1).start();
    let armed = multishot(&proxy, "armed");
    let c = keep_alive_client(&proxy, &origin.host());
    wait_armed(&proxy, armed, 1.0);
    // The CONNECT arrives through the multishot receive with the first tunnel bytes
    // behind it; the tunnel takes over the client's reads (a bulk direction splices from
    // its socket) only once that receive has ended.
    const N: usize = 4 << 20;
    let target = format!("127.0.0.1:{}", echo.port());
    let mut stream = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes();
    stream.extend_from_slice(&pattern(N));
    let mut writer = c.stream().try_clone().unwrap();
    let w = thread::spawn(move || {
        writer.write_all(&stream).expect("write into the tunnel");
        writer.shutdown(std::net::Shutdown::Write).expect("shutdown(Write)");
    });
    let mut c = c;
    let head = c.conn.read_head(1 << 16).unwrap().expect("the CONNECT's answer");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let got = c.conn.read_to_end_vec().expect("the echoed bytes, then EOF");
    w.join().unwrap();
    assert_bytes_eq(&got, &pattern(N), "4 MiB echoed through the tunnel");
    let spliced = proxy.metric("sluice_tunnel_splices_total").unwrap_or(0.0);
    assert!(spliced >= 1.0, "the bulk tunnel spliced ({spliced} directions)");
}
