//! The access log end to end: one line per request in the configured format, written by
//! the sink thread while the proxy keeps serving.

mod support;

use std::time::{Duration, Instant};
use support::{Origin, Proxy, TempDir};

fn wait_for_lines(path: &std::path::Path, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_lines_name_method_target_status_and_upstream() {
    let dir = TempDir::new("accesslog-json");
    let log = dir.join("access.jsonl");
    let origin = Origin::start();
    let proxy = Proxy::start(&format!("access_log = {:?}\naccess_log_format = \"json\"\n", log.display().to_string()));
    let mut c = proxy.client();
    let h = origin.host();
    for path in ["/bytes/10", "/bytes/20", "/status/404"] {
        let _ = c.get(&h, path);
    }
    // The harness's readiness probe (a Host-less GET, refused with 400) logs a line first.
    let lines: Vec<String> = wait_for_lines(&log, 4).into_iter().filter(|l| !l.contains("\"method\":\"-\"")).collect();
    assert_eq!(lines.len(), 3, "one line per request: {lines:?}");
    // One client connection, one worker: its lines keep the request order.
    assert!(lines[0].contains("\"method\":\"GET\"") && lines[0].contains("/bytes/10"), "{}", lines[0]);
    assert!(lines[0].contains("\"status\":200"), "{}", lines[0]);
    assert!(lines[2].contains("\"status\":404"), "{}", lines[2]);
    assert!(lines[1].contains(&format!("\"upstream\":\"{h}\"")), "the upstream is named: {}", lines[1]);
}

#[test]
fn common_lines_and_a_refused_head_is_logged_too() {
    let dir = TempDir::new("accesslog-common");
    let log = dir.join("access.log");
    let origin = Origin::start();
    let proxy = Proxy::start(&format!("access_log = {:?}\n", log.display().to_string()));
    let mut c = proxy.client();
    let _ = c.get(&origin.host(), "/bytes/5");
    let mut bad = proxy.client();
    bad.send_str("GET / HTTP/1.1\r\nX: y\r\n\r\n"); // no Host: 400 from the proxy itself
    let r = bad.response();
    assert_eq!(r.status, 400);
    // The harness's readiness probe (400), the GET, and our Host-less request; workers
    // flush their own buffers, so lines of different connections may interleave.
    let lines = wait_for_lines(&log, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let gets = lines.iter().filter(|l| l.contains("\"GET http://") && l.contains(" 200 ")).count();
    let refused = lines.iter().filter(|l| l.contains("\"- - HTTP/1.1\" 400 ")).count();
    assert_eq!((gets, refused), (1, 2), "{lines:?}");
}
