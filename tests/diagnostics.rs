//! Operator diagnostics: leveled lines on stderr naming the worker and the connection of
//! each event, their level from `--log-level` / `log_level` / `RUST_LOG` (in that order;
//! `info` without any), a reload that changes it; and the admin endpoint's
//! `/debug/connections`, every worker's live client connections, to loopback admins only.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// One exchange on a keep-alive connection that the client then closes; returns the
/// client's address (the `peer` of the proxy's accept line). Waits until the proxy freed
/// the slot, so every line about that connection has been written.
fn one_exchange(proxy: &Proxy, origin: &Origin) -> SocketAddr {
    let mut c = proxy.client();
    let me = c.stream().local_addr().unwrap();
    let r = c.get(&origin.host(), "/bytes/10");
    assert_eq!(r.status, 200, "{}", r.describe());
    drop(c);
    proxy.wait_no_clients("after one exchange");
    me
}

/// The value of `key=` among a line's space-separated fields.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// The worker span of a line (`worker{id=N}:`).
fn worker_of(line: &str) -> Option<&str> {
    line.split_whitespace().find(|t| t.starts_with("worker{id="))
}

/// The lines about the connection the proxy accepted from `peer`: its accept line names
/// its worker and its `conn` id (ids are per worker: each has its own arena); then every
/// line of that worker with that id.
fn lines_of(log: &str, peer: SocketAddr) -> Vec<String> {
    let peer = peer.to_string();
    let accept = log.lines().find(|l| l.contains(" accept ") && field(l, "peer") == Some(peer.as_str()));
    let Some((worker, id)) = accept.and_then(|l| Some((worker_of(l)?, field(l, "conn")?))) else {
        return Vec::new();
    };
    log.lines()
        .filter(|l| worker_of(l) == Some(worker) && field(l, "conn") == Some(id))
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn debug_level_shows_a_connections_lifecycle_with_its_worker_and_id() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").arg("--log-level").arg("debug").start();
    let peer = one_exchange(&proxy, &origin);
    let log = proxy.stderr_log();
    let lines = lines_of(&log, peer);
    let show = || format!("lines of {peer}:\n{}\nstderr:\n{log}", lines.join("\n"));
    // Every line names the worker (the thread's span) and the connection. Broken by
    // dropping the `worker` span in worker::run.
    assert!(lines.len() >= 5, "too few lines: {}", show());
    let worker = lines[0].split_whitespace().find(|t| t.starts_with("worker{id=")).map(str::to_string);
    assert!(worker.is_some(), "no worker span: {}", show());
    assert!(lines.iter().all(|l| l.contains(worker.as_deref().unwrap()) && l.contains(" DEBUG ")), "{}", show());
    // Phase changes, old → new. Broken by removing the debug! in conn::advance.
    let phases: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l.contains(" phase "))
        .filter_map(|l| Some((field(l, "from")?, field(l, "to")?)))
        .collect();
    for step in [("Upstream", "SendRequest"), ("SendRequest", "ResponseHead"), ("ResponseHead", "ResponseBody")] {
        assert!(phases.contains(&step), "no phase change {step:?} in {phases:?}: {}", show());
    }
    // The upstream leg: a connect attempt to the origin and its result.
    let origin_addr = origin.host();
    assert!(
        lines.iter().any(|l| l.contains("upstream connect ") && field(l, "addr") == Some(origin_addr.as_str())),
        "no upstream connect to {origin_addr}: {}",
        show()
    );
    assert!(lines.iter().any(|l| l.contains("upstream connect done") && field(l, "errno") == Some("0")), "{}", show());
    // The close: where it closed, its bytes and requests. Broken by removing the debug!
    // in Connection::begin_close.
    let close = lines.iter().find(|l| l.contains(" close ")).unwrap_or_else(|| panic!("no close line: {}", show()));
    assert_eq!(field(close, "requests"), Some("1"), "{close}");
    assert!(field(close, "bytes_out").and_then(|b| b.parse::<u64>().ok()).is_some_and(|b| b > 10), "{close}");
    assert!(field(close, "phase").is_some(), "{close}");
}

#[test]
fn the_default_level_shows_no_lifecycle() {
    let origin = Origin::start();
    let proxy = Proxy::start("");
    let peer = one_exchange(&proxy, &origin);
    let log = proxy.stderr_log();
    // Broken by an `info` → `debug` default in logging::directives.
    assert!(lines_of(&log, peer).is_empty() && !log.contains(" DEBUG "), "debug lines at the default level:\n{log}");
    assert!(log.contains("sluice: listening on"), "the start-up message is still there:\n{log}");
}

#[test]
fn rust_log_sets_the_level_when_neither_flag_nor_file_does() {
    let origin = Origin::start();
    // RUST_LOG alone: debug. Broken by ignoring RUST_LOG in logging::directives.
    let proxy = Proxy::builder("").env("RUST_LOG", "debug").start();
    let peer = one_exchange(&proxy, &origin);
    assert!(!lines_of(&proxy.stderr_log(), peer).is_empty(), "RUST_LOG=debug ignored:\n{}", proxy.stderr_log());
    drop(proxy);
    // The config file's log_level wins over RUST_LOG; the flag wins over both. Broken by
    // reading RUST_LOG before the config (or the file before the flag).
    for (config, flag, expect_lines) in [
        ("log_level = \"info\"\n", None, false),
        ("log_level = \"info\"\n", Some("debug"), true),
        ("log_level = \"debug\"\n", Some("warn"), false),
    ] {
        let mut b = Proxy::builder(config).env("RUST_LOG", if expect_lines { "warn" } else { "debug" });
        if let Some(level) = flag {
            b = b.arg("--log-level").arg(level);
        }
        let proxy = b.start();
        let peer = one_exchange(&proxy, &origin);
        let seen = !lines_of(&proxy.stderr_log(), peer).is_empty();
        assert_eq!(seen, expect_lines, "config {config:?}, flag {flag:?}:\n{}", proxy.stderr_log());
    }
}

#[test]
fn a_reload_changes_the_level() {
    let origin = Origin::start();
    let proxy = Proxy::start("log_level = \"info\"\n");
    let quiet = one_exchange(&proxy, &origin);
    assert!(lines_of(&proxy.stderr_log(), quiet).is_empty());
    proxy.dir.write("sluice.toml", "log_level = \"debug\"\n");
    let ok = Command::new("kill").arg("-HUP").arg(proxy.pid().to_string()).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -HUP");
    assert!(
        wait_until(Duration::from_secs(10), || proxy.stderr_log().contains("sluice: reloaded the configuration")),
        "no reload: {}",
        proxy.stderr_log()
    );
    // Broken by not calling logging::reload on SIGHUP.
    let loud = one_exchange(&proxy, &origin);
    assert!(!lines_of(&proxy.stderr_log(), loud).is_empty(), "still quiet after the reload:\n{}", proxy.stderr_log());
}

/// `GET /debug/connections` from `from` (None: 127.0.0.1) to the admin port.
fn view(proxy: &Proxy, to: IpAddr, from: Option<IpAddr>) -> (Response, Duration) {
    let addr = SocketAddr::new(to, proxy.admin_port);
    let started = Instant::now();
    let s = match from {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap(),
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            sock.connect(&addr.into()).unwrap_or_else(|e| panic!("connect {addr} from {ip}: {e}"));
            sock.into()
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    use std::io::Write;
    (&s).write_all(b"GET /debug/connections HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let r = read_response(&mut BufConn::new(s), false).expect("a response to /debug/connections");
    (r, started.elapsed())
}

/// The view's line for the client at `client`, split into columns.
fn row(text: &str, client: SocketAddr) -> Option<Vec<String>> {
    let client = client.to_string();
    text.lines().map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>()).find(|c| c.get(2) == Some(&client))
}

#[test]
fn debug_connections_lists_the_clients_of_every_worker() {
    let origin = Origin::start();
    let proxy = Proxy::builder("").workers(2).start();
    proxy.wait_workers_started();
    // Client A: one exchange done, then a response that stalls half-way: its exchange is
    // open, so the view shows its target and phase.
    let mut a = proxy.client();
    assert_eq!(a.get(&origin.host(), "/bytes/10").status, 200);
    a.send_str(&format!("GET /stall/100000 HTTP/1.1\r\nHost: {}\r\n\r\n", origin.host()));
    let head = a.conn.read_head(64 * 1024).unwrap().expect("the stalled response's head");
    assert!(head.starts_with(b"HTTP/1.1 200"));
    // Client B: idle keep-alive between requests (no target).
    let mut b = proxy.client();
    assert_eq!(b.get(&origin.host(), "/bytes/10").status, 200);
    let (a_addr, b_addr) = (a.stream().local_addr().unwrap(), b.stream().local_addr().unwrap());
    let loopback: IpAddr = [127, 0, 0, 1].into();

    // Admin connections land on either worker (SO_REUSEPORT): ask until both have
    // answered, so the view is gathered from each side. Broken by a worker that does not
    // answer on its tick (answer_views), or an admin that answers before every worker did.
    let mut served_by = BTreeSet::new();
    for _ in 0..64 {
        let (r, took) = view(&proxy, loopback, None);
        assert_eq!(r.status, 200, "{}", r.describe());
        assert!(took < Duration::from_millis(1500), "the view took {took:?}");
        let text = r.text();
        assert!(text.starts_with("# worker id client target protocol state age_s bytes_in bytes_out\n"), "{text}");
        assert!(text.trim_end().ends_with("from 2 of 2 workers"), "{text}");
        let ra = row(&text, a_addr).unwrap_or_else(|| panic!("client A {a_addr} missing:\n{text}"));
        assert_eq!(ra[3], origin.host(), "A's target: {text}");
        assert_eq!((ra[4].as_str(), ra[5].as_str()), ("HTTP/1.1", "ResponseBody"), "{text}");
        assert!(ra[7].parse::<u64>().unwrap() > 0 && ra[8].parse::<u64>().unwrap() > 0, "A's bytes: {text}");
        let rb = row(&text, b_addr).unwrap_or_else(|| panic!("client B {b_addr} missing:\n{text}"));
        assert_eq!((rb[3].as_str(), rb[5].as_str()), ("-", "AwaitRequest"), "{text}");
        assert!(ra[6].parse::<f64>().is_ok() && rb[0].parse::<usize>().unwrap() < 2, "{text}");
        // Admin connections are not listed: two client lines, the header and the summary.
        assert_eq!(text.lines().count(), 4, "{text}");
        served_by.insert(r.header("sluice-worker").unwrap_or("?").to_string());
        if served_by.len() == 2 {
            break;
        }
    }
    assert_eq!(served_by.into_iter().collect::<Vec<_>>(), ["0", "1"], "not every worker served the view");

    // Overlapping asks (several admins at once, on both workers) all get their answer.
    // Broken by a view that only one waiter can take.
    let asks: Vec<_> = (0..6)
        .map(|_| {
            let proxy_admin = proxy.admin_port;
            thread::spawn(move || {
                let addr = SocketAddr::from(([127, 0, 0, 1], proxy_admin));
                (0..3)
                    .map(|_| {
                        let started = Instant::now();
                        let r = exchange(
                            addr,
                            b"GET /debug/connections HTTP/1.1\r\nHost: a\r\n\r\n",
                            Duration::from_secs(5),
                        );
                        (r.map(|r| (r.status, r.text())), started.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in asks {
        for (r, took) in t.join().unwrap() {
            let (status, text) = r.expect("an answer to an overlapping ask");
            assert_eq!(status, 200, "{text}");
            assert!(row(&text, b_addr).is_some() && took < Duration::from_millis(2500), "{took:?}: {text}");
        }
    }
    drop((a, b));
}

/// An address of this machine that is not loopback (the one its default route uses).
#[test]
fn debug_connections_is_refused_to_a_non_loopback_admin_client() {
    let Some(ip) = non_loopback_address() else {
        skip("this machine has no non-loopback address to connect from (unit test: conn::admin::tests)");
        return;
    };
    let any = if ip.is_ipv4() { "0.0.0.0" } else { "[::]" };
    let proxy = Proxy::builder("").admin_ip(any).start();
    // Broken by dropping the loopback check in conn::admin.
    let (r, _) = view(&proxy, ip, Some(ip));
    assert_eq!(r.status, 403, "from {ip}: {}", r.describe());
    assert!(r.text().contains("loopback"), "{}", r.text());
    // The same listener still answers a loopback admin, and serves /metrics to anyone.
    if ip.is_ipv4() {
        let (r, _) = view(&proxy, [127, 0, 0, 1].into(), None);
        assert_eq!(r.status, 200, "{}", r.describe());
    }
    let m = exchange(
        SocketAddr::new(ip, proxy.admin_port),
        b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(m.status, 200);
}
