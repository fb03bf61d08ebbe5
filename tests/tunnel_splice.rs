//! Bulk CONNECT tunnels switch from copying to splicing (socket → pipe → socket): the
//! bytes must still arrive intact and in order, EOF must still pass through, a chatty
//! direction beside a spliced one must keep working, and a peer that vanishes mid-splice
//! must free the tunnel without touching any other.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::atomic::Ordering::SeqCst;
use std::thread;
use std::time::Duration;
use support::*;

/// Opens a tunnel to 127.0.0.1:`port` and returns the client with the 200 head consumed.
fn open_tunnel(proxy: &Proxy, port: u16) -> Client {
    let (head, c) = send_connect(proxy, &format!("127.0.0.1:{port}"));
    assert!(head.first_line.starts_with("HTTP/1.1 200"), "CONNECT answered {head:?}");
    c
}

fn splices(proxy: &Proxy) -> f64 {
    proxy.metric("sluice_tunnel_splices_total").expect("splice counter")
}

#[test]
fn a_bulk_echo_is_spliced_both_ways_and_arrives_intact() {
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n", echo.port()));
    assert_eq!(splices(&proxy), 0.0);
    let base = proxy.baseline();
    let c = open_tunnel(&proxy, echo.port());
    const N: usize = 24 << 20;
    let mut writer = c.stream().try_clone().unwrap();
    let w = thread::spawn(move || {
        let data = pattern(N);
        for part in data.chunks(1 << 20) {
            writer.write_all(part).expect("write into tunnel");
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut c = c;
    let got = c.conn.read_to_end_vec().expect("read the echo back to EOF");
    w.join().unwrap();
    assert_bytes_eq(&got, &pattern(N), "24 MiB echoed through a spliced tunnel, then EOF");
    assert_eq!(splices(&proxy), 2.0, "both directions carried bulk data and should have switched to splice");
    assert!(wait_until(Duration::from_secs(5), || echo.finished.load(SeqCst) == 1), "the echo server never saw EOF");
    drop(c);
    proxy.assert_released(&base, "a spliced echo tunnel that ended");
}

#[test]
fn a_chatty_direction_keeps_copying_beside_a_spliced_one() {
    // The origin streams 8 MiB (bulk: spliced) and half-closes; only then does the client
    // send small messages, which must still reach the origin one by one.
    const GREETING: u64 = 8 << 20;
    let greet = GreetServer::start(GREETING);
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n", greet.port()));
    let mut c = open_tunnel(&proxy, greet.port());
    let got = c.conn.read_to_end_vec().expect("greeting then EOF");
    assert_bytes_eq(&got, &pattern(GREETING as usize), "8 MiB greeting through a spliced direction");
    assert_eq!(splices(&proxy), 1.0, "only the origin → client direction carried bulk data");
    for i in 0..40u64 {
        c.send(format!("message {i:04}\n").as_bytes()).expect("send a small message");
        let want = (i + 1) * 13;
        assert!(
            wait_until(Duration::from_secs(5), || greet.received.load(SeqCst) == want),
            "message {i}: the origin has {} of {want} bytes",
            greet.received.load(SeqCst)
        );
    }
    c.stream().shutdown(Shutdown::Write).unwrap();
    assert!(wait_until(Duration::from_secs(5), || greet.finished.load(SeqCst) == 1), "the client's EOF never arrived");
    assert_eq!(splices(&proxy), 1.0, "small messages must not switch a direction to splice");
}

#[test]
fn a_client_vanishing_mid_splice_frees_its_tunnel_and_no_other() {
    let greet = GreetServer::start(1 << 30);
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{}, {}]\n", greet.port(), echo.port()));
    let mut bystander = open_tunnel(&proxy, echo.port());
    let mut c = open_tunnel(&proxy, greet.port());
    let first = c.conn.read_exact_vec(4 << 20).expect("the first 4 MiB of the stream");
    assert_bytes_eq(&first, &pattern(4 << 20), "stream start");
    proxy.wait_metric("sluice_tunnel_splices_total", Duration::from_secs(5), |v| v >= 1.0).expect("spliced");
    // Reset, not a clean close: unread bytes are still queued on the client socket.
    drop(c);
    assert!(wait_until(Duration::from_secs(10), || greet.closed.load(SeqCst) == 1), "the origin leg was never closed");
    proxy.wait_metric("sluice_connections_active", Duration::from_secs(10), |v| v == 1.0).expect("only the bystander");
    proxy
        .wait_metric("sluice_connection_slots", Duration::from_secs(10), |v| v == 1.0)
        .expect("the vanished tunnel's slot is freed, only the bystander's is left");
    bystander.send(b"still here").unwrap();
    assert_eq!(bystander.conn.read_exact_vec(10).expect("echo through the other tunnel"), b"still here");
}

#[test]
fn an_origin_reset_mid_splice_ends_that_tunnel_only() {
    // An origin that streams 16 MiB, then resets the connection: it closes with the
    // client's bytes unread, which makes the kernel send RST instead of FIN.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let origin = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = write_pattern_stream(&mut s, 16 << 20);
        let mut unread = [0u8; 1];
        s.peek(&mut unread).expect("the client's bytes arrive");
        drop(s);
    });
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{port}, {}]\n", echo.port()));
    let base = proxy.baseline();
    let mut c = open_tunnel(&proxy, port);
    c.send(b"left unread by the origin").unwrap();
    // The origin streams at once: bytes may have come in behind the 200 head.
    let mut got = c.conn.buffered().to_vec();
    let mut buf = vec![0u8; 1 << 20];
    let ending = loop {
        match c.conn.inner.read(&mut buf) {
            Ok(0) => break "EOF".to_string(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e.kind().to_string(),
        }
    };
    origin.join().unwrap();
    // The proxy passes the reset on (RST) or ends the stream (FIN); it must not hang.
    assert!(ending == "EOF" || ending == "connection reset", "the tunnel ended with {ending}");
    assert!(got.len() <= 16 << 20, "{} bytes, more than the origin sent", got.len());
    assert_bytes_eq(&got, &pattern(got.len()), "what arrived is the start of the origin's stream");
    assert!(splices(&proxy) >= 1.0, "the origin's stream should have been spliced");
    drop(c);
    proxy.assert_released(&base, "a spliced tunnel whose origin reset it");
    let mut again = open_tunnel(&proxy, echo.port());
    again.send(b"ok").unwrap();
    assert_eq!(again.conn.read_exact_vec(2).expect("a new tunnel works"), b"ok");
}

#[test]
fn quiet_spliced_tunnels_do_not_hold_up_a_busy_one() {
    // Splices run on a few io_uring worker threads. A splice that waited for a quiet
    // peer would park one of them; enough quiet tunnels would then stall every other.
    let echo = EchoServer::start();
    let proxy = Proxy::builder(&format!("connect_ports = [{}]\n", echo.port())).workers(1).start();
    let mut quiet = Vec::new();
    for i in 0..6 {
        let mut c = open_tunnel(&proxy, echo.port());
        let data = pattern(2 << 20);
        let mut writer = c.stream().try_clone().unwrap();
        let w = thread::spawn(move || writer.write_all(&data).expect("write 2 MiB"));
        let back = c.conn.read_exact_vec(2 << 20).unwrap_or_else(|e| panic!("quiet tunnel {i}: echo: {e}"));
        w.join().unwrap();
        assert_bytes_eq(&back, &pattern(2 << 20), "echo before going quiet");
        quiet.push(c); // stays open and silent, both directions spliced
    }
    // 12 directions waiting in splices: more than the ring's io_uring worker threads.
    assert_eq!(splices(&proxy), 12.0, "every quiet tunnel should have switched to splice both ways");
    let mut busy = open_tunnel(&proxy, echo.port());
    busy.stream().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data = pattern(8 << 20);
    let mut writer = busy.stream().try_clone().unwrap();
    let w = thread::spawn(move || {
        writer.write_all(&data).expect("write 8 MiB");
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let got = busy.conn.read_to_end_vec().expect("the busy tunnel must not stall behind quiet ones");
    w.join().unwrap();
    assert_bytes_eq(&got, &pattern(8 << 20), "busy tunnel");
}

#[test]
fn a_client_reset_on_a_quiet_spliced_tunnel_frees_both_legs() {
    // Both directions spliced and then quiet: each waits in a poll, one on each socket.
    // The client then resets; the poll on the origin's socket must be cancelled, or the
    // connection (and the origin leg) would never be freed.
    let echo = EchoServer::start();
    let proxy = Proxy::start(&format!("connect_ports = [{}]\n", echo.port()));
    let base = proxy.baseline();
    let mut c = open_tunnel(&proxy, echo.port());
    let data = pattern(2 << 20);
    let mut writer = c.stream().try_clone().unwrap();
    let w = thread::spawn(move || writer.write_all(&data).expect("write 2 MiB"));
    // Read half of the echo; the rest stays unread in the client's socket.
    c.conn.read_exact_vec(1 << 20).expect("the first MiB echoed");
    w.join().unwrap();
    proxy.wait_metric("sluice_tunnel_splices_total", Duration::from_secs(5), |v| v == 2.0).expect("spliced both ways");
    assert!(wait_until(Duration::from_secs(5), || echo.echoed.load(SeqCst) == 2 << 20), "echo incomplete");
    thread::sleep(Duration::from_millis(200)); // let the tunnel go quiet
    drop(c); // unread bytes: the kernel resets the connection
    assert!(wait_until(Duration::from_secs(10), || echo.closed.load(SeqCst) == 1), "the origin leg was never closed");
    proxy.assert_released(&base, "a quiet spliced tunnel whose client reset it");
}
