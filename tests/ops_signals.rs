//! Operating the proxy with signals, seen from outside: `/metrics` after a known
//! workload (checked with a real Prometheus parser), SIGTERM/SIGINT drains (`/readyz`
//! flips to 503, in-flight requests finish, new connections are refused, exit 0, the
//! `[timeouts] drain` deadline; a CONNECT tunnel and a half-sent upload both finish, the
//! tunnel keeps the process up until it ends or the deadline cuts it), and SIGHUP reloads
//! (a changed client ACL applies to new connections only; a broken file is refused and the
//! old configuration stays).
//!
//! These tests need the child process itself (PID, exit status) and its config file, so
//! they use a small local guard instead of `support::Proxy`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const REQUESTS: &str = "sluice_requests_total";
const DURATION_COUNT: &str = "sluice_request_duration_seconds_count";
const DURATION_BUCKET: &str = "sluice_request_duration_seconds_bucket";
const REJECTED: &str = "sluice_connections_rejected_total";
const SLOTS: &str = "sluice_connection_slots";
const REFUSAL: &str = "sluice: reload refused, keeping the old configuration:";

// ---------------------------------------------------------------------------------------
// A local guard: the child, its config file, its ports
// ---------------------------------------------------------------------------------------

struct Sluice {
    child: Child,
    port: u16,
    admin_port: u16,
    config: PathBuf,
    dir: TempDir,
}

impl Sluice {
    /// `sluice run` with `config` as its TOML file, 2 workers, fresh ports; returns once
    /// the proxy answers HTTP.
    fn start(config: &str) -> Sluice {
        Sluice::start_with_workers(config, 2)
    }

    /// Like [`Sluice::start`], with `workers` workers.
    fn start_with_workers(config: &str, workers: usize) -> Sluice {
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let dir = TempDir::new("ops-signals");
            let cfg = dir.write("sluice.toml", config);
            let port = free_port();
            let admin_port = free_port();
            let stderr = fs::File::create(dir.join("stderr.log")).unwrap();
            let mut child = Command::new(BIN)
                .arg("run")
                .arg("--config")
                .arg(&cfg)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--admin")
                .arg(format!("127.0.0.1:{admin_port}"))
                .arg("--workers")
                .arg(workers.to_string())
                .arg("--ca-dir")
                .arg(dir.join("ca"))
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("spawn sluice");
            if let Err(port_race) = wait_serving(&mut child, &dir, port) {
                last_err = port_race;
                continue;
            }
            let s = Sluice { child, port, admin_port, config: cfg, dir };
            // The admin listener must be up too before a test relies on it.
            assert!(
                wait_until(Duration::from_secs(10), || s.admin_get("/healthz").is_ok_and(|r| r.status == 200)),
                "/healthz never answered 200"
            );
            return s;
        }
        panic!("could not start sluice: {last_err}");
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn admin_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.admin_port).into()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {}", self.child.id());
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `within` for the process to exit.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr_log(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn rewrite_config(&self, text: &str) {
        fs::write(&self.config, text).expect("rewrite the config file");
    }

    fn admin_get(&self, path: &str) -> io::Result<Response> {
        exchange(
            self.admin_addr(),
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
    }

    fn metrics(&self) -> String {
        match self.admin_get("/metrics") {
            Ok(r) if r.status == 200 => r.text(),
            Ok(r) => panic!("GET /metrics answered {}", r.describe()),
            Err(e) => panic!("GET /metrics: {e}"),
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        metric_sum(&text, name).unwrap_or_else(|| panic!("no `{name}` sample in /metrics:\n{text}"))
    }

    fn client(&self) -> Client {
        Client::connect(self.addr())
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.stderr_log();
            let tail: String = log.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("---- sluice stderr (tail) ----\n{tail}\n------------------------------");
        }
    }
}

fn assert_exit_zero(status: Option<ExitStatus>, what: &str, s: &Sluice) {
    match status {
        Some(st) => assert!(st.success(), "{what}: sluice exited with {st}; stderr: {}", s.stderr_log()),
        None => panic!("{what}: sluice still running; stderr: {}", s.stderr_log()),
    }
}

/// A plain GET through the proxy on a fresh connection.
fn get_once(s: &Sluice, origin: &Origin, path: &str) -> io::Result<Response> {
    exchange(
        s.addr(),
        format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", origin.host()).as_bytes(),
        Duration::from_secs(10),
    )
}

/// Connects to the proxy and tries one request. `Ok(None)`: the connection was refused,
/// reset or closed without a single response byte. `Ok(Some(bytes))`: what came back.
fn try_new_connection(addr: SocketAddr, host: &str) -> Option<Vec<u8>> {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(_) => return None,
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(format!("GET /bytes/10 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
                panic!("a connection to {addr} neither answered nor closed within 5 s; got {:?}", excerpt(&got))
            }
            Err(_) => break, // reset
        }
    }
    if got.is_empty() {
        None
    } else {
        Some(got)
    }
}

/// Polls (up to 3 s) until four new connections in a row are turned away: every worker
/// takes a drain or a reload on its own 100 ms tick, and the kernel spreads connections
/// over the workers' listeners, so one refusal alone does not show they all refuse.
fn assert_new_connections_refused(s: &Sluice, host: &str, when: &str) {
    let mut served = None;
    let refused = wait_until(Duration::from_secs(3), || {
        (0..4).all(|_| match try_new_connection(s.addr(), host) {
            None => true,
            Some(got) => {
                served = Some(got);
                false
            }
        })
    });
    assert!(
        refused,
        "new connections {when} are still served after 3 s; the last one got {:?}",
        served.as_deref().map(excerpt)
    );
}

// ---------------------------------------------------------------------------------------
// Prometheus text, parsed by a real parser
// ---------------------------------------------------------------------------------------

/// One sample: its name (with suffix), labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

const PY_PARSER: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = "\x1f".join("%s=%s" % (k, v) for k, v in sorted(s.labels.items()))
        print("%s\x1e%s\x1e%r" % (s.name, labels, float(s.value)))
"#;

fn run_with_stdin(cmd: &mut Command, input: &str) -> io::Result<std::process::Output> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    child.wait_with_output()
}

fn python_has_prometheus_client() -> bool {
    Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether python3 can import `prometheus_client` (`.ci/setup` installs it; a test never
/// installs anything itself).
fn have_python_parser() -> bool {
    have("python3") && python_has_prometheus_client()
}

/// Parses `text` with `prometheus_client`'s parser; a parse failure fails the test.
fn parse_with_python(text: &str) -> Vec<Sample> {
    let out = run_with_stdin(Command::new("python3").args(["-c", PY_PARSER]), text).expect("run python3");
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let mut parts = line.split('\x1e');
            let name = parts.next().unwrap().to_string();
            let labels = parts
                .next()
                .unwrap_or("")
                .split('\x1f')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            let value = parts.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or_else(|| panic!("bad line {line:?}"));
            Sample { name, labels, value }
        })
        .collect()
}

/// `promtool check metrics`: a parse error fails the test. Lint remarks (naming style)
/// are printed, not fatal: they are opinions, not format errors.
fn check_with_promtool(text: &str) {
    let out = run_with_stdin(Command::new("promtool").args(["check", "metrics"]), text).expect("run promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let lower = said.to_lowercase();
        assert!(
            !(lower.contains("error while linting") || lower.contains("parse") || lower.contains("invalid")),
            "promtool check metrics rejected /metrics: {said}\n---\n{text}"
        );
        eprintln!("promtool lint remarks (not fatal): {said}");
    }
}

fn sum_of(samples: &[Sample], name: &str) -> f64 {
    let matching: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
    assert!(!matching.is_empty(), "no `{name}` sample in the parsed /metrics");
    matching.iter().map(|s| s.value).sum()
}

/// Every bucket series of `bucket_name` is cumulative (non-decreasing in `le`), has a
/// `+Inf` bucket, and that bucket equals the matching `_count`.
fn assert_histogram_cumulative(samples: &[Sample], bucket_name: &str, count_name: &str) {
    // Series key: the labels other than `le`; value: (le, cumulative count) pairs.
    type Series = BTreeMap<Vec<(String, String)>, Vec<(f64, f64)>>;
    let mut series: Series = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == bucket_name) {
        let le = s.labels.get("le").unwrap_or_else(|| panic!("{bucket_name} sample without `le`: {s:?}"));
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or_else(|_| panic!("bad le {le:?}")) };
        let rest: Vec<(String, String)> =
            s.labels.iter().filter(|(k, _)| k.as_str() != "le").map(|(k, v)| (k.clone(), v.clone())).collect();
        series.entry(rest).or_default().push((le, s.value));
    }
    assert!(!series.is_empty(), "no `{bucket_name}` samples");
    for (labels, mut buckets) in series {
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(buckets.len() >= 2, "{bucket_name}{labels:?}: only {} bucket(s)", buckets.len());
        for w in buckets.windows(2) {
            assert!(
                w[1].1 >= w[0].1,
                "{bucket_name}{labels:?} not cumulative: le={} has {} < le={} has {}",
                w[1].0,
                w[1].1,
                w[0].0,
                w[0].1
            );
        }
        let (last_le, inf) = *buckets.last().unwrap();
        assert!(last_le.is_infinite(), "{bucket_name}{labels:?} has no +Inf bucket");
        let count: f64 = samples
            .iter()
            .filter(|s| s.name == count_name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| s.value)
            .sum();
        assert_eq!(inf, count, "{bucket_name}{labels:?}: +Inf bucket != {count_name}");
    }
}

/// Parses /metrics with whatever real parser is available. `None`: neither promtool nor
/// a python parser could be had.
fn parse_metrics(text: &str, python: bool) -> Option<Vec<Sample>> {
    let promtool = have("promtool");
    if promtool {
        check_with_promtool(text);
    }
    if python {
        return Some(parse_with_python(text));
    }
    if promtool {
        // promtool validated the format; read the values with the harness's reader.
        return Some(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| {
                    let name_end = l.find(['{', ' '])?;
                    let name = l[..name_end].to_string();
                    let mut labels = BTreeMap::new();
                    let mut rest = &l[name_end..];
                    if rest.starts_with('{') {
                        let close = rest.find('}')?;
                        for kv in rest[1..close].split(',').filter(|kv| !kv.is_empty()) {
                            let (k, v) = kv.split_once('=')?;
                            labels.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
                        }
                        rest = &rest[close + 1..];
                    }
                    let value = rest.split_whitespace().next()?.parse().ok()?;
                    Some(Sample { name, labels, value })
                })
                .collect(),
        );
    }
    None
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn metrics_count_a_known_workload_exactly() {
    let python = have_python_parser();
    if !python || !have("promtool") {
        return skip(&format!(
            "needs promtool (prometheus) and python3's prometheus_client, the two reference parsers; \
             promtool: {}, prometheus_client: {python}",
            have("promtool")
        ));
    }
    let origin = Origin::start();
    let s = Sluice::start("");
    let before_text = s.metrics();
    let before = parse_metrics(&before_text, python).unwrap();
    let req0 = before.iter().filter(|x| x.name == REQUESTS).map(|x| x.value).sum::<f64>();
    let dur0 = before.iter().filter(|x| x.name == DURATION_COUNT).map(|x| x.value).sum::<f64>();

    const N: usize = 37;
    let mut c = s.client();
    for i in 0..N {
        let r = c.get(&origin.host(), &format!("/bytes/{}", 10 + i));
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
        assert_bytes_eq(&r.body, &pattern(10 + i), "body");
    }
    drop(c);
    assert_eq!(origin.requests(), N, "the origin saw a different number of requests");

    // The proxy is done with the client once its connection slot is freed (every operation
    // of it completed): whatever it counts for those requests is counted by then. Then the
    // counters must have reached +N, and not more.
    assert!(
        wait_until(Duration::from_secs(10), || s.metric(SLOTS) == 0.0),
        "the client's connection slot was never freed ({SLOTS} = {})",
        s.metric(SLOTS)
    );
    let reached =
        wait_until(Duration::from_secs(5), || metric_sum(&s.metrics(), REQUESTS).unwrap_or(0.0) >= req0 + N as f64);
    let after_text = s.metrics();
    let after = parse_metrics(&after_text, python).unwrap();
    let req1 = sum_of(&after, REQUESTS);
    let dur1 = sum_of(&after, DURATION_COUNT);
    assert!(reached, "{REQUESTS} never reached {} (is {req1})", req0 + N as f64);
    assert_eq!(req1 - req0, N as f64, "{REQUESTS} grew by {} for {N} requests:\n{after_text}", req1 - req0);
    assert_eq!(dur1 - dur0, N as f64, "{DURATION_COUNT} grew by {} for {N} requests:\n{after_text}", dur1 - dur0);
    assert_histogram_cumulative(&after, DURATION_BUCKET, DURATION_COUNT);
    // The 2xx class got all of them.
    let ok = |v: &[Sample]| {
        v.iter()
            .filter(|x| x.name == REQUESTS && x.labels.get("status_class").is_some_and(|c| c == "2xx"))
            .map(|x| x.value)
            .sum::<f64>()
    };
    assert_eq!(ok(&after) - ok(&before), N as f64, "2xx requests did not grow by {N}:\n{after_text}");
}

#[test]
fn sigterm_drains_in_flight_request_and_refuses_new_connections() {
    let origin = Origin::start();
    let mut s = Sluice::start("");
    assert_eq!(s.admin_get("/readyz").expect("/readyz").status, 200, "/readyz before the drain");

    let mut slow = s.client();
    slow.send_str(&format!("GET /slow/3000 HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host()));
    assert!(wait_until(Duration::from_secs(5), || origin.requests() == 1), "the slow request never reached the origin");
    let sent_at = Instant::now();

    s.signal("TERM");
    wait_draining(&mut s);
    assert!(s.alive(), "sluice exited while a request was in flight");

    // New proxy connections are turned away while draining (each worker starts its drain
    // on its next 100 ms tick: poll until several in a row are).
    assert_new_connections_refused(&s, &origin.host(), "during the drain");
    assert!(sent_at.elapsed() < Duration::from_millis(2500), "the checks took too long to be meaningful");
    assert!(s.alive(), "sluice exited while a request was in flight");
    // Every worker keeps answering the admin port until the process exits: a worker with
    // nothing left to drain must not close its admin listener (that resets the scrapes
    // queued on it) while another still serves a request. (The pause paces the scrapes
    // over the rest of the slow request; it waits for nothing.)
    for i in 0..20 {
        match s.admin_get("/readyz") {
            Ok(r) => assert_eq!(r.status, 503, "/readyz #{i} during the drain: {}", r.describe()),
            Err(e) => panic!("/readyz #{i} during the drain failed: {e}"),
        }
        thread::sleep(Duration::from_millis(50));
    }

    let r = slow.try_response(false).unwrap_or_else(|e| panic!("the in-flight request was cut: {e}"));
    let done_at = Instant::now();
    assert_eq!(r.status, 200, "in-flight request: {}", r.describe());
    assert_eq!(r.text(), "slow", "in-flight body");
    assert!(
        r.head.has_token("connection", "close"),
        "a response finished during the drain must carry Connection: close: {}",
        r.describe()
    );

    let st = s.wait_exit(Duration::from_secs(4));
    assert_exit_zero(st, "after the last request finished", &s);
    assert!(
        done_at.elapsed() < Duration::from_secs(4),
        "exit took {:?} after the slow request ended",
        done_at.elapsed()
    );
}

#[test]
fn sigint_drains_like_sigterm_and_closes_idle_clients() {
    let origin = Origin::start();
    let mut s = Sluice::start("");
    let mut idle = s.client();
    assert_eq!(idle.get(&origin.host(), "/bytes/5").status, 200);
    let t0 = Instant::now();
    s.signal("INT");
    let st = s.wait_exit(Duration::from_secs(3));
    assert_exit_zero(st, "SIGINT with only an idle client", &s);
    assert!(t0.elapsed() < Duration::from_secs(3), "SIGINT drain of an idle proxy took {:?}", t0.elapsed());
    let rest = idle.wait_closed(Duration::from_secs(2)).expect("the idle keep-alive client must be closed");
    assert!(rest.is_empty(), "the idle client got bytes it did not ask for: {:?}", excerpt(&rest));
    assert!(TcpStream::connect_timeout(&s.addr(), Duration::from_millis(500)).is_err(), "still accepting after exit");
}

#[test]
fn drain_deadline_bounds_the_wait_for_a_stuck_request() {
    let origin = Origin::start();
    let mut s = Sluice::start("[timeouts]\ndrain = 1\n");
    let mut slow = s.client();
    slow.send_str(&format!("GET /slow/10000 HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host()));
    assert!(wait_until(Duration::from_secs(5), || origin.requests() == 1), "the slow request never reached the origin");
    let t0 = Instant::now();
    s.signal("TERM");
    let st = s.wait_exit(Duration::from_secs(3));
    let took = t0.elapsed();
    assert_exit_zero(st, "drain = 1 with a 10 s request in flight", &s);
    assert!(
        took >= Duration::from_millis(700),
        "exited after {took:?}: the drain did not wait for the in-flight request"
    );
    assert!(took < Duration::from_secs(3), "exited after {took:?}, the drain deadline is 1 s");
    // The stuck request was cut, not answered.
    if let Ok(r) = slow.try_response(false) {
        assert_ne!(r.status, 200, "a 10 s request cannot have finished after ~1 s: {}", r.describe());
    }
}

/// A CONNECT tunnel through `s` to the echo server on `port`, past its `200`.
fn open_tunnel(s: &Sluice, port: u16) -> Client {
    let mut c = s.client();
    let target = format!("127.0.0.1:{port}");
    c.send_str(&format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    let r = c.try_response(true).unwrap_or_else(|e| panic!("CONNECT {target}: {e}"));
    assert_eq!(r.status, 200, "CONNECT {target}: {}", r.describe());
    c
}

/// Sends payload bytes `offset..offset + len` through an echo tunnel and checks that
/// exactly they come back.
fn echo_through(tunnel: &mut Client, offset: u64, len: usize, what: &str) {
    let mut chunk = vec![0u8; len];
    fill_pattern(offset, &mut chunk);
    tunnel.send(&chunk).unwrap_or_else(|e| panic!("{what}: sending into the tunnel: {e}"));
    let back = tunnel.conn.read_exact_vec(len).unwrap_or_else(|e| panic!("{what}: reading the echo: {e}"));
    assert_bytes_eq(&back, &chunk, what);
}

/// Waits for the drain to have started in the proxy's (only) worker: `/readyz` answers 503
/// from the worker whose tick set it draining, and that tick also closed the idle clients.
fn wait_draining(s: &mut Sluice) {
    let mut last = String::new();
    let flipped = wait_until(Duration::from_secs(3), || match s.admin_get("/readyz") {
        Ok(r) => {
            last = r.describe();
            r.status == 503
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    });
    if let Ok(Some(st)) = s.child.try_wait() {
        panic!("sluice exited ({st}) right after SIGTERM, with work in flight; stderr: {}", s.stderr_log());
    }
    assert!(flipped, "/readyz did not turn 503 after SIGTERM; last: {last}");
}

#[test]
fn sigterm_drain_lets_a_tunnel_and_a_half_sent_upload_finish() {
    const UPLOAD: usize = 4 << 20;
    const ECHO: usize = 48 * 1024;
    let origin = Origin::start();
    let echo = EchoServer::start();
    // One worker: the /readyz that says "draining" comes from the worker that holds both
    // connections, so the checks below run while that worker is draining.
    let mut s = Sluice::start_with_workers(&format!("connect_ports = [{}]\n", echo.port()), 1);

    // A tunnel carrying bytes.
    let mut tunnel = open_tunnel(&s, echo.port());
    echo_through(&mut tunnel, 0, ECHO, "tunnel before SIGTERM");
    // An upload, half sent: its head and the first half of its body are at the origin's
    // door (the origin reads the body as it comes).
    let body = pattern(UPLOAD);
    let mut upload = s.client();
    upload.send_str(&format!("POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: {UPLOAD}\r\n\r\n", origin.host()));
    upload.send(&body[..UPLOAD / 2]).expect("first half of the upload");
    assert!(wait_until(Duration::from_secs(5), || origin.requests() == 1), "the upload never reached the origin");

    s.signal("TERM");
    wait_draining(&mut s);
    assert_new_connections_refused(&s, &origin.host(), "during the drain");

    // The tunnel still carries bytes both ways during the drain.
    echo_through(&mut tunnel, ECHO as u64, ECHO, "tunnel during the drain");
    assert!(s.alive(), "sluice exited with a tunnel and an upload in flight");

    // The rest of the upload goes through and its response comes back whole, closing.
    upload.send(&body[UPLOAD / 2..]).unwrap_or_else(|e| panic!("second half of the upload, during the drain: {e}"));
    let r = upload.try_response(false).unwrap_or_else(|e| panic!("the upload's response during the drain: {e}"));
    assert_eq!(r.status, 200, "upload during the drain: {}", r.describe());
    assert_bytes_eq(&r.body, &body, "the upload echoed back during the drain");
    assert!(
        r.head.has_token("connection", "close"),
        "a response finished during the drain must carry Connection: close: {}",
        r.describe()
    );
    upload.wait_closed(Duration::from_secs(5)).expect("the upload's connection is closed after its response");
    assert_eq!(origin.requests(), 1, "the origin saw another request");

    // No request is left, but the tunnel is: the process stays, and the tunnel works.
    echo_through(&mut tunnel, 2 * ECHO as u64, ECHO, "tunnel after the upload finished, during the drain");
    assert!(s.alive(), "sluice exited while a tunnel was still open");

    // The client ends the tunnel: the echo server sees the EOF, answers with its own, the
    // tunnel is done, and so is the drain, long before its 30 s deadline.
    tunnel.stream().shutdown(std::net::Shutdown::Write).expect("half-close the tunnel");
    let rest = tunnel.wait_closed(Duration::from_secs(5)).expect("the tunnel did not end after both sides closed");
    assert!(rest.is_empty(), "bytes after the echo: {:?}", excerpt(&rest));
    assert!(
        wait_until(Duration::from_secs(5), || echo.finished.load(std::sync::atomic::Ordering::SeqCst) == 1),
        "the echo server never saw the tunnel's EOF"
    );
    let ended = Instant::now();
    let st = s.wait_exit(Duration::from_secs(5));
    assert_exit_zero(st, "once the tunnel ended", &s);
    assert!(ended.elapsed() < Duration::from_secs(5), "exit took {:?} after the tunnel ended", ended.elapsed());
}

#[test]
fn drain_deadline_cuts_a_tunnel_that_does_not_end() {
    let echo = EchoServer::start();
    let mut s = Sluice::start_with_workers(&format!("connect_ports = [{}]\n[timeouts]\ndrain = 2\n", echo.port()), 1);
    let mut tunnel = open_tunnel(&s, echo.port());
    echo_through(&mut tunnel, 0, 1000, "tunnel before SIGTERM");
    let t0 = Instant::now();
    s.signal("TERM");
    wait_draining(&mut s);
    echo_through(&mut tunnel, 1000, 1000, "tunnel during the drain");
    assert!(t0.elapsed() < Duration::from_millis(1800), "the checks took too long to be meaningful");
    assert!(s.alive(), "sluice exited before the drain deadline with a tunnel open");
    let st = s.wait_exit(Duration::from_secs(5));
    let took = t0.elapsed();
    assert_exit_zero(st, "drain = 2 with a tunnel that never ends", &s);
    assert!(took >= Duration::from_millis(1800), "exited after {took:?}: the drain did not wait for the tunnel");
    assert!(took < Duration::from_secs(5), "exited after {took:?}, the drain deadline is 2 s");
    tunnel.wait_closed(Duration::from_secs(2)).expect("the tunnel's client must be closed at the deadline");
}

#[test]
fn sighup_acl_change_applies_to_new_connections_only() {
    let origin = Origin::start();
    let s = Sluice::start("allow_clients = [\"127.0.0.0/8\"]\n");
    let mut kept = s.client();
    assert_eq!(kept.get(&origin.host(), "/bytes/7").status, 200, "keep-alive request before the reload");
    assert!(try_new_connection(s.addr(), &origin.host()).is_some(), "127.0.0.1 must be allowed before the reload");

    let rejected0 = s.metric(REJECTED);
    s.rewrite_config("allow_clients = [\"10.0.0.0/8\"]\n");
    s.signal("HUP");
    // The reload is done when the proxy says so (reading and checking the file can take a
    // while on a loaded machine); the workers take it on their next 100 ms tick.
    assert!(
        wait_until(Duration::from_secs(10), || s.stderr_log().contains("sluice: reloaded the configuration")),
        "no reload line on stderr: {}",
        s.stderr_log()
    );
    assert_new_connections_refused(&s, &origin.host(), "from 127.0.0.1 after the ACL dropped it");
    assert!(
        wait_until(Duration::from_secs(2), || s.metric(REJECTED) > rejected0),
        "{REJECTED} did not grow (still {})",
        s.metric(REJECTED)
    );

    let r = kept.get(&origin.host(), "/bytes/9");
    assert_eq!(r.status, 200, "the already-open keep-alive connection: {}", r.describe());
    assert_bytes_eq(&r.body, &pattern(9), "body on the kept connection");
    assert!(!s.stderr_log().contains(REFUSAL), "a valid reload was refused: {}", s.stderr_log());
}

/// Opens a CONNECT tunnel to `port` and echoes a few bytes. Ok(()) on success, Err(what
/// the proxy answered) otherwise.
fn tunnel_works(s: &Sluice, port: u16) -> Result<(), String> {
    let mut c = s.client();
    let target = format!("127.0.0.1:{port}");
    c.send_str(&format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    let head = match c.conn.read_head(64 * 1024) {
        Ok(Some(h)) => String::from_utf8_lossy(&h).into_owned(),
        Ok(None) => return Err("closed without a response".into()),
        Err(e) => return Err(e.to_string()),
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head);
    }
    c.send(b"ping-through-tunnel").map_err(|e| e.to_string())?;
    let got = c.conn.read_exact_vec(19).map_err(|e| e.to_string())?;
    if got != b"ping-through-tunnel" {
        return Err(format!("echo came back as {:?}", excerpt(&got)));
    }
    Ok(())
}

#[test]
fn sighup_with_broken_file_keeps_old_config_then_valid_reload_applies() {
    let origin = Origin::start();
    let echo = EchoServer::start();
    let mut s = Sluice::start("connect_ports = [443]\n");
    let err = tunnel_works(&s, echo.port()).expect_err("CONNECT to a port not in connect_ports must be refused");
    assert!(err.starts_with("HTTP/1.1 4"), "CONNECT to a disallowed port answered {err:?}");

    s.rewrite_config("this is [not toml\n");
    s.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(3), || s.stderr_log().lines().any(|l| l.starts_with(REFUSAL))),
        "no refusal line on stderr after a broken reload: {}",
        s.stderr_log()
    );
    // The refusal line is printed once the reload was judged: nothing more comes of it.
    assert!(s.alive(), "sluice died on a broken reload");
    let r = get_once(&s, &origin, "/bytes/11").expect("a request after the refused reload");
    assert_eq!(r.status, 200, "after the refused reload: {}", r.describe());
    assert!(tunnel_works(&s, echo.port()).is_err(), "the refused reload changed connect_ports");
    assert_eq!(s.admin_get("/readyz").expect("/readyz").status, 200, "ready after a refused reload");

    s.rewrite_config(&format!("connect_ports = [443, {}]\n", echo.port()));
    s.signal("HUP");
    let mut last = String::new();
    let applied = wait_until(Duration::from_secs(3), || match tunnel_works(&s, echo.port()) {
        Ok(()) => true,
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(applied, "a valid reload after a broken one did not apply; CONNECT still answered {last:?}");
    assert_eq!(
        s.stderr_log().lines().filter(|l| l.starts_with(REFUSAL)).count(),
        1,
        "the valid reload was refused too"
    );
    assert!(s.alive());
}
