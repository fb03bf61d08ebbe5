//! Where heads meet the buffer they live in: `limits.max_header_bytes` promises what one
//! buffer holds (and `check-config` refuses more); any number of interim (1xx) heads,
//! whatever their total size, lead to the final response; and an error response reaches a
//! client that is still sending (the proxy lingers instead of resetting the connection).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use support::*;

/// An origin that answers every request on a connection with `reply`, then closes.
fn scripted_origin(reply: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let reply = reply.clone();
            std::thread::spawn(move || {
                let mut c = BufConn::new(s.try_clone().unwrap());
                if c.read_head(1 << 20).ok().flatten().is_some() {
                    let _ = s.write_all(&reply);
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = c.read_to_end_vec();
            });
        }
    });
    addr
}

fn interim_then_ok(interim: &[u8], times: usize) -> Vec<u8> {
    let mut reply = interim.repeat(times);
    reply.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfinal");
    reply
}

fn get(proxy: &Proxy, origin: SocketAddr, minor: u8) -> Response {
    let req = format!("GET http://{origin}/ HTTP/1.{minor}\r\nHost: {origin}\r\n\r\n");
    let mut c = proxy.client();
    c.send(req.as_bytes()).unwrap();
    // An HTTP/1.1 client reads the relayed interim heads first.
    loop {
        let r = c.try_response(false).unwrap_or_else(|e| panic!("no final response: {e}"));
        if !(100..200).contains(&r.status) {
            return r;
        }
    }
}

#[test]
fn any_number_of_interim_heads_leads_to_the_final_response() {
    let proxy = Proxy::start("");
    let origin = scripted_origin(interim_then_ok(b"HTTP/1.1 100 Continue\r\n\r\n", 200));
    for minor in [0, 1] {
        let r = get(&proxy, origin, minor);
        assert_eq!((r.status, r.text()), (200, "final".to_string()), "HTTP/1.{minor}: {}", r.describe());
    }
}

#[test]
fn interim_heads_larger_than_a_buffer_lead_to_the_final_response() {
    let proxy = Proxy::start("");
    let hint = format!("HTTP/1.1 103 Early Hints\r\nLink: <{}>; rel=preload\r\n\r\n", "/a".repeat(500));
    // About 100 KiB of interim heads, more than one 64 KiB buffer.
    let origin = scripted_origin(interim_then_ok(hint.as_bytes(), 100));
    for minor in [0, 1] {
        let r = get(&proxy, origin, minor);
        assert_eq!((r.status, r.text()), (200, "final".to_string()), "HTTP/1.{minor}: {}", r.describe());
    }
}

#[test]
fn a_head_at_the_configured_limit_is_served_and_one_byte_more_is_431() {
    let origin = Origin::start();
    let proxy = Proxy::start("[limits]\nmax_header_bytes = 63488\n");
    let head_of = |len: usize| {
        let start = format!("GET /status/200 HTTP/1.1\r\nHost: {}\r\nX-Pad: ", origin.host());
        let pad = len - start.len() - 4;
        format!("{start}{}\r\n\r\n", "p".repeat(pad))
    };
    let r = exchange(proxy.addr(), head_of(63488).as_bytes(), Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 200, "a head of exactly max_header_bytes: {}", r.describe());
    let r = exchange(proxy.addr(), head_of(63489).as_bytes(), Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 431, "one byte over: {}", r.describe());
}

#[test]
fn check_config_refuses_a_head_limit_no_buffer_can_hold() {
    let dir = TempDir::new("heads-config");
    let file = dir.write("sluice.toml", "[limits]\nmax_header_bytes = 65536\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice")).arg("check-config").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_header_bytes: must be at most 63488"), "{err}");
}

/// Sends a bad head followed by `body` bytes the proxy will never read, then reads the
/// answer without closing: it must arrive whole, not be lost to a reset.
fn refused_while_sending(proxy: &Proxy, head: &str, body: usize) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut data = head.as_bytes().to_vec();
    data.extend(std::iter::repeat_n(b'x', body));
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&data);
    });
    // Let the proxy answer and close (or linger) while the client is still writing.
    std::thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    match r {
        Ok(_) => Ok(got),
        Err(e) => Err(format!("{e} after {} bytes", got.len())),
    }
}

#[test]
fn an_error_response_reaches_a_client_that_is_still_sending() {
    let proxy = Proxy::start("");
    for (head, status) in [
        ("POST http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 1x\r\n\r\n", "400"),
        ("POST http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 0\r\nBad Name: x\r\n\r\n", "400"),
    ] {
        let got = refused_while_sending(&proxy, head, 400_000)
            .unwrap_or_else(|e| panic!("{status}: the response was lost: {e}"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
    }
}
