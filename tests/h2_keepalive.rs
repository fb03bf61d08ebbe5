//! Keep-alive PINGs (issue 14): a silent HTTP/2 peer is pinged after
//! `h2.*_ping_interval`, and one that does not answer within `h2.ping_timeout` is given
//! up on: an origin session to a frozen origin (nghttpd stopped with SIGSTOP) closes and
//! the next request opens a new one; a client that never answers is closed. A peer that
//! answers keeps its connection for as long as its idle timeout allows.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::h2::Nghttpd;
use support::*;

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// `curl --http1.1` through interception to `https://origin.test/f`; the HTTP status.
fn fetch(proxy: &Proxy) -> u16 {
    let ca = proxy.dir.join("ca").join("ca.pem");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg("--connect-to")
        .arg(format!("origin.test:443:127.0.0.1:{}", proxy.port))
        .arg("https://origin.test/f")
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn an_origin_session_to_a_frozen_origin_is_pinged_closed_and_replaced() {
    if !have("nghttpd") || !have("curl") {
        skip("nghttpd or curl is not installed (run .ci/setup)");
        return;
    }
    let docroot = TempDir::new("h2ka");
    write_pattern_file(&docroot.join("f"), 1000);
    let ng = Nghttpd::start("origin.test", docroot.path());
    let config = "[h2]\norigin_ping_interval = 1\nping_timeout = 1\n[pool]\nidle_timeout = 300\n";
    let proxy = Proxy::builder(config)
        .workers(1)
        .resolve("origin.test", &ng.ip)
        .arg("--upstream-ca")
        .arg(ng.ca_pem.as_deref().and_then(|p| p.to_str()).expect("nghttpd over TLS has a CA"))
        .start();
    assert_eq!(fetch(&proxy), 200);
    assert_eq!(proxy.metric("sluice_h2_origin_sessions_active").unwrap(), 1.0);
    // An origin that answers its PINGs keeps the idle session (several intervals pass).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(proxy.metric("sluice_h2_origin_sessions_active").unwrap(), 1.0, "a live origin's session closed");
    // Frozen: the kernel still holds the TCP connection, only PINGs can tell.
    signal(ng.pid(), "-STOP");
    let started = Instant::now();
    let closed = proxy.wait_metric("sluice_h2_origin_sessions_active", Duration::from_secs(10), |v| v == 0.0);
    signal(ng.pid(), "-CONT");
    // Breaks when nothing pings: the session would wait for pool.idle_timeout (300 s).
    assert!(closed.is_ok(), "the session to a frozen origin stayed open: {closed:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "closed only after {:?}", started.elapsed());
    assert_eq!(fetch(&proxy), 200, "the next request gets a new session");
    assert_eq!(proxy.metric("sluice_h2_origin_sessions_total").unwrap(), 2.0);
}

/// A raw client: preface, empty SETTINGS and its ACK, then silence; prints `ping` when
/// the proxy sends a PING, and `closed` with the seconds it took when the proxy closes.
const SILENT_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
t0, buf, acked = time.time(), b"", False
s.settimeout(15)
while True:
    try:
        d = s.recv(65536)
    except OSError:
        d = b""
    if not d:
        print("closed %.1f" % (time.time() - t0), flush=True)
        break
    buf += d
    while len(buf) >= 9:
        n = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + n:
            break
        kind, flags = buf[3], buf[4]
        if kind == 4 and not flags & 1 and not acked:
            s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
            acked = True
        if kind == 6 and not flags & 1:
            print("ping %.1f" % (time.time() - t0), flush=True)
        buf = buf[9 + n:]
"#;

#[test]
fn a_client_that_never_answers_a_ping_is_closed() {
    if !have("python3") {
        skip("python3 is not installed (run .ci/setup)");
        return;
    }
    let config = "[h2]\nclient_ping_interval = 1\nping_timeout = 1\n[timeouts]\nclient_idle = 300\n";
    let proxy = Proxy::builder(config).workers(1).start();
    let out = Command::new("python3")
        .args(["-c", SILENT_CLIENT, &proxy.port.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Breaks when no PING goes out, or when a silent client waits for client_idle (300 s).
    assert!(text.contains("ping "), "no PING reached the silent client: {text}");
    let closed: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("closed ")?.parse().ok())
        .unwrap_or_else(|| panic!("not closed: {text}"));
    assert!((1.5..8.0).contains(&closed), "closed after {closed} s, expected about 2 s: {text}");
}
