//! Operator diagnostics: leveled lines on stderr naming the worker and the connection of
//! each event, their level from `--log-level` / `log_level` / `RUST_LOG` (in that order;
//! `info` without any), and a reload that changes it.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
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

/// The lines about the connection the proxy accepted from `peer`: its accept line names
/// its `conn` id; then every line with that id.
fn lines_of(log: &str, peer: SocketAddr) -> Vec<String> {
    let peer = peer.to_string();
    let accept = log.lines().find(|l| l.contains(" accept ") && field(l, "peer") == Some(peer.as_str()));
    let Some(id) = accept.and_then(|l| field(l, "conn")) else {
        return Vec::new();
    };
    log.lines().filter(|l| field(l, "conn") == Some(id)).map(|l| l.to_string()).collect()
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
