//! Out of descriptors, a worker waits instead of spinning: failed accepts are counted
//! and the listener pauses and retries, the admin endpoint still answers (a spare
//! descriptor is kept for it), and service resumes once descriptors come back. At start
//! the client cap is sized from RLIMIT_NOFILE (two descriptors per proxied client), with
//! a warning when a configured cap cannot be met.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

const NOFILE: &str = "200";

/// One admin request, no retries: it must be answered within 3 s.
fn admin_get(proxy: &Proxy, path: &str) -> Result<Response, String> {
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.admin_port));
    let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    exchange(admin, req.as_bytes(), Duration::from_secs(3)).map_err(|e| format!("{path}: {e}"))
}

fn accept_errors(proxy: &Proxy) -> Result<f64, String> {
    let text = admin_get(proxy, "/metrics")?.text();
    metric_sum(&text, "sluice_accept_errors_total").ok_or_else(|| "no sluice_accept_errors_total".to_string())
}

#[test]
fn out_of_descriptors_the_worker_backs_off_and_the_admin_endpoint_answers() {
    let origin = Origin::start_on("0.0.0.0:0".parse().unwrap());
    let port = origin.port();
    let nofile = format!("--nofile={NOFILE}:{NOFILE}");
    // Idle clients are not timed out during the test (request_head would free their
    // descriptors after 10 s).
    let proxy = Proxy::builder("[timeouts]\nrequest_head = 60\n[pool]\nidle_timeout = 600\n")
        .workers(1)
        .wrap(&["prlimit", &nofile, "--"])
        .start();
    // Each request to another loopback address leaves one origin connection in the pool.
    for i in 0..150 {
        let host = format!("127.0.{}.{}:{port}", 1 + i / 200, 2 + i % 200);
        let r = exchange(
            proxy.addr(),
            format!("GET http://{host}/status/200 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
    }
    // Idle clients take the descriptors that are left, and more wait in the backlog.
    let cpu_before = cpu_seconds(proxy.pid());
    let held: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(proxy.addr()).unwrap()).collect();
    let mut errors = 0.0;
    let counted = wait_until(Duration::from_secs(10), || {
        errors = accept_errors(&proxy).unwrap_or_else(|e| panic!("the admin endpoint must answer: {e}"));
        errors > 0.0
    });
    assert!(counted, "failed accepts are counted");
    std::thread::sleep(Duration::from_secs(2));
    // Paused and retried at most every 50 ms to 1 s: a few dozen errors, not millions.
    let errors = accept_errors(&proxy).unwrap() - errors;
    assert!(errors < 100.0, "accept retried {errors} times in 2 s: it spins");
    let used = cpu_seconds(proxy.pid()) - cpu_before;
    assert!(used < 1.0, "the worker spun while out of descriptors: {used:.2} CPU-s");
    let health = admin_get(&proxy, "/healthz");
    assert!(health.as_ref().is_ok_and(|r| r.status == 200), "/healthz while descriptors are out: {health:?}");

    drop(held);
    let start = Instant::now();
    let served = wait_until(Duration::from_secs(10), || {
        let host = format!("127.0.0.1:{port}");
        exchange(
            proxy.addr(),
            format!("GET http://{host}/status/200 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            Duration::from_secs(2),
        )
        .is_ok_and(|r| r.status == 200)
    });
    assert!(served, "no client served {:?} after descriptors came back", start.elapsed());
}

#[test]
fn the_client_cap_is_sized_from_the_descriptor_limit() {
    let nofile = format!("--nofile={NOFILE}:{NOFILE}");
    let proxy = Proxy::builder("[limits]\nmax_connections_per_worker = 100000\n")
        .workers(1)
        .wrap(&["prlimit", &nofile, "--"])
        .start();
    // 200 descriptors: 64 + 200/8 kept aside, two per client.
    let limit = proxy.metric("sluice_connections_limit").unwrap();
    assert_eq!(limit, 55.0);
    let log = proxy.stderr_log();
    assert!(
        log.contains("warning: limits.max_connections_per_worker = 100000 cannot be met: RLIMIT_NOFILE 200"),
        "{log}"
    );
    let unset = Proxy::builder("").workers(1).wrap(&["prlimit", &nofile, "--"]).start();
    assert_eq!(unset.metric("sluice_connections_limit").unwrap(), 55.0);
    assert!(!unset.stderr_log().contains("warning"), "{}", unset.stderr_log());
}
