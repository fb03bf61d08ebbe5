//! Proxy authentication end to end: `[auth]` with a credentials file that
//! `sluice passwd` wrote, curl with `--proxy-user` (and raw clients where the bytes
//! matter), real origins.
//!
//! Checked here: no credentials and wrong ones get 407 with the challenge and never reach
//! the origin; right ones get through, and the origin never sees `Proxy-Authorization`;
//! the same for CONNECT, and requests inside an intercepted CONNECT belong to its user;
//! `sluice passwd` creates and changes users (mode 0600, a broken file left alone); a
//! broken credentials file stops `check-config` and `run` with one line; SIGHUP picks up a
//! new user and a broken file keeps the old ones; the access log names the user and never
//! holds the credentials (nor does the debug log); repeated failures lock the address
//! (429) while a credential already verified still works; and a slow hash does not hold
//! up the worker's other clients.

mod support;

use base64ct::{Base64, Encoding};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// `sluice passwd FILE USER --password-stdin` with `password` on stdin.
fn passwd(file: &Path, user: &str, password: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(["passwd"])
        .arg(file)
        .args([user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice passwd");
    // A run that refuses before it reads the password (a broken file) may have exited
    // already: the pipe is then closed, and its exit status and message are the answer.
    match child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.expect("write the password"),
    }
    child.wait_with_output().expect("sluice passwd")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}; stdout {:?}; stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A credentials file with `users` (name, password), written by `sluice passwd`.
fn users_file(dir: &TempDir, users: &[(&str, &str)]) -> PathBuf {
    let file = dir.join("users");
    for (user, pw) in users {
        let out = passwd(&file, user, pw);
        assert!(out.status.success(), "sluice passwd {user}: {}", text(&out));
    }
    file
}

/// A config: `top` (top-level keys), then `[auth]` naming `users`, then `auth` keys.
fn config(top: &str, users: &Path, auth: &str) -> String {
    format!("{top}\n[auth]\nfile = {:?}\n{auth}\n", users.to_str().expect("utf-8 temp path"))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", Base64::encode_string(format!("{user}:{password}").as_bytes()))
}

/// `GET http://origin/path` through the proxy, with `Proxy-Authorization: value` if given.
fn get(proxy: &Proxy, origin: &Origin, path: &str, auth: Option<&str>) -> Response {
    let field = auth.map_or(String::new(), |v| format!("Proxy-Authorization: {v}\r\n"));
    let req =
        format!("GET {} HTTP/1.1\r\nHost: {}\r\n{field}Connection: close\r\n\r\n", origin.url(path), origin.host());
    exchange(proxy.addr(), req.as_bytes(), Duration::from_secs(20)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The value of `family{label}` in `/metrics` (0 when absent).
fn metric_with(proxy: &Proxy, family: &str, label: &str) -> f64 {
    let text = proxy.metrics().expect("metrics");
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(family) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn wait_metric_with(proxy: &Proxy, family: &str, label: &str, want: f64) {
    let ok = wait_until(Duration::from_secs(5), || metric_with(proxy, family, label) >= want);
    let got = metric_with(proxy, family, label);
    assert!(ok && got == want, "{family}{{{label}}} is {got}, expected {want}");
}

const CHALLENGE: &str = "Basic realm=\"Test proxy\", charset=\"UTF-8\"";

#[test]
fn missing_and_wrong_credentials_get_407_and_right_ones_reach_the_origin_without_them() {
    let dir = TempDir::new("auth-basic");
    let users = users_file(&dir, &[("alice", "right horse battery")]);
    let origin = Origin::start();
    let proxy = Proxy::start(&config("", &users, "realm = \"Test proxy\""));
    // No credentials: the challenge, and nothing reaches the origin.
    let r = curl(Some(&proxy), &[&origin.url("/bytes/10")]);
    assert_eq!(r.status, 407, "{}", r.describe());
    assert_eq!(r.header("Proxy-Authenticate"), Some(CHALLENGE), "{}", r.describe());
    // Wrong password, unknown user: the same.
    for creds in ["alice:wrong", "mallory:right horse battery"] {
        let r = curl(Some(&proxy), &["--proxy-user", creds, &origin.url("/bytes/10")]);
        assert_eq!(r.status, 407, "{creds}: {}", r.describe());
        assert_eq!(r.header("Proxy-Authenticate"), Some(CHALLENGE), "{}", r.describe());
    }
    assert_eq!(origin.requests(), 0, "a refused request reached the origin");
    // Right ones: through, twice (the second from the worker's cache), without the header.
    for path in ["/headers", "/bytes/10"] {
        let r = curl(Some(&proxy), &["--proxy-user", "alice:right horse battery", &origin.url(path)]);
        r.expect_status(200);
    }
    let heads = origin.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for h in &heads {
        assert!(!h.to_ascii_lowercase().contains("proxy-authorization"), "the origin saw the credentials: {h}");
    }
    wait_metric_with(&proxy, "sluice_auth_successes_total", "", 2.0);
    wait_metric_with(&proxy, "sluice_auth_failures_total", "reason=\"missing\"", 1.0);
    wait_metric_with(&proxy, "sluice_auth_failures_total", "reason=\"invalid\"", 2.0);
    assert!(metric_with(&proxy, "sluice_auth_verifications_total", "") <= 4.0, "hashed per request?");
}

#[test]
fn connect_needs_credentials_too() {
    let dir = TempDir::new("auth-connect");
    let users = users_file(&dir, &[("alice", "pw-connect")]);
    let origin = Origin::start();
    let proxy = Proxy::start(&config(&format!("connect_ports = [{}]", origin.port()), &users, ""));
    let target = format!("127.0.0.1:{}", origin.port());
    // Without: 407 with the challenge, and the origin is never dialled.
    let (head, mut c) = send_connect(&proxy, &target);
    assert!(head.first_line.contains(" 407 "), "{head:?}");
    assert_eq!(head.get("Proxy-Authenticate"), Some("Basic realm=\"sluice\", charset=\"UTF-8\""));
    c.wait_closed(Duration::from_secs(5)).expect("a refused CONNECT closes");
    // With wrong ones: the same.
    let mut c = proxy.client();
    c.send_str(&format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic("alice", "nope")
    ));
    assert_eq!(c.response().status, 407);
    assert_eq!(origin.accepts(), 0, "a refused CONNECT reached the origin");
    // With them: curl's tunnel, and a request through it.
    let r = curl(Some(&proxy), &["-p", "--proxy-user", "alice:pw-connect", &origin.url("/bytes/100")]);
    r.expect_status(200);
    assert_bytes_eq(&r.body, &pattern(100), "body through the tunnel");
    assert_eq!(origin.accepts(), 1);
}

#[test]
fn requests_inside_an_intercepted_connect_belong_to_its_user() {
    if !have("openssl") {
        return skip("needs openssl");
    }
    let dir = TempDir::new("auth-intercept");
    let users = users_file(&dir, &[("alice", "pw-tls")]);
    let log = dir.join("access.jsonl");
    let origin = TlsOrigin::start("origin.test");
    let top = format!(
        "connect_ports = [{}]\naccess_log = {:?}\naccess_log_format = \"json\"",
        origin.port,
        log.to_str().unwrap()
    );
    let proxy = Proxy::builder(&config(&top, &users, ""))
        .workers(1)
        .resolve("origin.test", "127.0.0.1")
        .resolve("pass.test", "127.0.0.1")
        .arg("--intercept-connect")
        .arg("--passthrough")
        .arg("pass.test")
        .arg("--upstream-ca")
        .arg(origin.ca_pem.to_str().unwrap())
        .start();
    let ca = proxy.dir.join("ca").join("ca.pem");
    let url = format!("https://origin.test:{}/inside", origin.port);
    let r = curl(Some(&proxy), &["-p", "--cacert", ca.to_str().unwrap(), "--proxy-user", "alice:pw-tls", &url]);
    r.expect_status(200);
    // The request inside the tunnel carried no credentials (the CONNECT did) and is alice's.
    let found = wait_until(Duration::from_secs(5), || {
        fs::read_to_string(&log).unwrap_or_default().lines().any(|l| l.contains("/inside"))
    });
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(found, "no log line for the request inside the tunnel:\n{text}");
    let line = text.lines().find(|l| l.contains("/inside")).unwrap();
    assert!(line.contains("\"status\":200") && line.contains("\"user\":\"alice\""), "{line}");
    // A name on the passthrough list: the tunnel is relayed untouched, and is alice's too.
    let pass = format!("pass.test:{}", origin.port);
    let r = curl(Some(&proxy), &["-p", "-k", "--proxy-user", "alice:pw-tls", &format!("https://{pass}/raw")]);
    r.expect_status(200);
    let found = wait_until(Duration::from_secs(5), || {
        fs::read_to_string(&log).unwrap_or_default().lines().any(|l| l.contains(&format!("\"target\":\"{pass}\"")))
    });
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(found, "no log line for the passthrough tunnel:\n{text}");
    let line = text.lines().find(|l| l.contains(&format!("\"target\":\"{pass}\""))).unwrap();
    assert!(line.contains("\"user\":\"alice\""), "{line}");
    // Without credentials the CONNECT itself is refused: nothing is intercepted.
    let r = curl(Some(&proxy), &["-p", "--cacert", ca.to_str().unwrap(), &url]);
    assert_ne!(r.exit, 0, "{}", r.describe());
    assert!(r.header_dump.contains(" 407 "), "{}", r.describe());
}

#[test]
fn passwd_creates_and_changes_users_and_leaves_a_broken_file_alone() {
    let dir = TempDir::new("auth-passwd");
    let file = dir.join("users");
    let out = passwd(&file, "alice", "one");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("added user alice to {}\n", file.display()));
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "mode 0600");
    let first = fs::read_to_string(&file).unwrap();
    assert!(first.starts_with("alice:$argon2id$v=19$"), "{first}");
    let out = passwd(&file, "bob", "two");
    assert!(out.status.success(), "{}", text(&out));
    let out = passwd(&file, "alice", "three");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("changed the password of alice in {}\n", file.display()));
    let now = fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = now.lines().collect();
    assert_eq!(lines.len(), 2, "{now}");
    assert!(lines[0].starts_with("alice:$argon2id$") && lines[1].starts_with("bob:$argon2id$"), "{now}");
    assert_ne!(lines[0], first.trim_end(), "alice's hash changed");
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "still 0600 after a change");
    // The new password works through the proxy, the old one does not.
    let origin = Origin::start();
    let proxy = Proxy::start(&config("", &file, ""));
    assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&basic("alice", "three"))).status, 200);
    assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&basic("alice", "one"))).status, 407);
    assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&basic("bob", "two"))).status, 200);
    // A broken file is refused in one line and left as it was; so is an empty password.
    fs::write(&file, "alice plaintext\n").unwrap();
    let out = passwd(&file, "carol", "x");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("line 1: expected user:hash"), "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "alice plaintext\n");
    let out = passwd(&dir.join("other"), "carol", "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!dir.join("other").exists());
    // No terminal and no --password-stdin: one line, nothing written.
    if have("setsid") {
        let out = Command::new("setsid")
            .args(["-w", BIN, "passwd"])
            .arg(dir.join("other"))
            .arg("carol")
            .stdin(Stdio::null())
            .output()
            .expect("setsid sluice passwd");
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("use --password-stdin"), "{}", text(&out));
        assert!(!dir.join("other").exists());
    }
}

#[test]
fn a_broken_credentials_file_stops_check_config_and_run_with_one_line() {
    let dir = TempDir::new("auth-bad-file");
    let users = users_file(&dir, &[("alice", "pw")]);
    let cfg = dir.write("sluice.toml", config("", &users, ""));
    let out = Command::new(BIN).arg("check-config").arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    fs::write(&users, "alice:$argon2id$v=19$m=19456,t=2,p=1$notahash\n").unwrap();
    for args in [vec!["check-config", cfg.to_str().unwrap()], vec!["run", "--config", cfg.to_str().unwrap()]] {
        let out = Command::new(BIN).args(&args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("auth.file") && err.contains("line 1"), "{args:?}: {err}");
    }
}

#[test]
fn sighup_picks_up_a_new_user_and_a_broken_file_keeps_the_old_ones() {
    let dir = TempDir::new("auth-reload");
    let users = users_file(&dir, &[("alice", "pw-a")]);
    let origin = Origin::start();
    // Polling with bob's credentials fails until the reload: no lock in the way.
    let proxy = Proxy::start(&config("", &users, "max_failures = 1000"));
    let bob = basic("bob", "pw-b");
    assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&bob)).status, 407);
    let out = passwd(&users, "bob", "pw-b");
    assert!(out.status.success(), "{}", text(&out));
    let hup = || {
        let ok = Command::new("kill").args(["-HUP", &proxy.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill -HUP");
    };
    hup();
    // Each worker applies the reload on its next tick.
    let ok = wait_until(Duration::from_secs(10), || {
        (0..4).all(|_| get(&proxy, &origin, "/bytes/1", Some(&bob)).status == 200)
    });
    assert!(ok, "bob is still refused after SIGHUP; stderr:\n{}", proxy.stderr_log());
    // A broken file: refused with one line, and both users still get in.
    fs::write(&users, "bob:$argon2id$garbage\n").unwrap();
    hup();
    // The whole line: the log is read while the proxy may still be writing it.
    let whole_refusal = |log: &str| log.find("reload refused").is_some_and(|at| log[at..].contains('\n'));
    let refused = wait_until(Duration::from_secs(10), || whole_refusal(&proxy.stderr_log()));
    let log = proxy.stderr_log();
    assert!(refused, "no refusal logged:\n{log}");
    let line = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(line.contains("auth.file") && line.contains("line 1"), "{line}");
    // A later tick that picked up a half-applied reload would show here: several rounds.
    for _ in 0..4 {
        assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&basic("alice", "pw-a"))).status, 200);
        assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&bob)).status, 200);
    }
}

#[test]
fn the_access_log_names_the_user_and_never_holds_the_credentials() {
    let dir = TempDir::new("auth-log");
    let password = "Sesame-7-open";
    let users = users_file(&dir, &[("alice", password)]);
    let log = dir.join("access.jsonl");
    let top = format!("access_log = {:?}\naccess_log_format = \"json\"", log.to_str().unwrap());
    let origin = Origin::start();
    let proxy = Proxy::builder(&config(&top, &users, "")).workers(1).arg("--log-level").arg("debug").start();
    let good = basic("alice", password);
    let bad = basic("alice", "Sesame-8-open");
    assert_eq!(get(&proxy, &origin, "/bytes/3?good", Some(&good)).status, 200);
    assert_eq!(get(&proxy, &origin, "/bytes/3?bad", Some(&bad)).status, 407);
    assert_eq!(get(&proxy, &origin, "/bytes/3?none", None).status, 407);
    let done = wait_until(Duration::from_secs(5), || fs::read_to_string(&log).unwrap_or_default().lines().count() >= 3);
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(done, "three lines expected:\n{text}");
    let line = |tag: &str| text.lines().find(|l| l.contains(tag)).unwrap_or_else(|| panic!("no {tag} line:\n{text}"));
    assert!(line("?good").contains("\"status\":200") && line("?good").contains("\"user\":\"alice\""), "{text}");
    assert!(line("?bad").contains("\"status\":407") && line("?bad").contains("\"user\":null"), "{text}");
    assert!(line("?none").contains("\"status\":407") && line("?none").contains("\"user\":null"), "{text}");
    let stderr = proxy.stderr_log();
    for (what, secret) in [("header value", &good[6..]), ("other header value", &bad[6..]), ("password", password)] {
        assert!(!text.contains(secret), "the access log holds the {what}:\n{text}");
        assert!(!stderr.contains(secret), "the debug log holds the {what}:\n{stderr}");
    }
    assert!(!text.to_ascii_lowercase().contains("proxy-authorization"));
    assert!(stderr.contains("phase"), "the debug log was not on: {stderr}");
}

#[test]
fn repeated_failures_lock_the_address_but_not_a_credential_already_verified() {
    let dir = TempDir::new("auth-lock");
    let users = users_file(&dir, &[("alice", "pw-a"), ("bob", "pw-b")]);
    let origin = Origin::start();
    let proxy = Proxy::start(&config("", &users, "max_failures = 3\nlockout = 3"));
    let alice = basic("alice", "pw-a");
    assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&alice)).status, 200);
    // Three failures within the window lock 127.0.0.1 ...
    for i in 0..3 {
        assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&basic("alice", &format!("guess{i}")))).status, 407);
    }
    // alice's password and the three guesses were hashed (the count is published on a tick).
    wait_metric_with(&proxy, "sluice_auth_verifications_total", "", 4.0);
    let checked = 4.0;
    // ... so further attempts get 429 with Retry-After and are not even checked, good
    // ones included (bob's were never verified) ...
    let started = Instant::now();
    for creds in [basic("alice", "guess3"), basic("bob", "pw-b")] {
        let r = get(&proxy, &origin, "/bytes/1", Some(&creds));
        assert_eq!(r.status, 429, "{}", r.describe());
        let retry: u64 = r.header("Retry-After").and_then(|v| v.parse().ok()).expect("Retry-After");
        assert!((1..=3).contains(&retry), "Retry-After {retry}");
    }
    wait_metric_with(&proxy, "sluice_auth_failures_total", "reason=\"locked\"", 2.0);
    assert_eq!(metric_with(&proxy, "sluice_auth_verifications_total", ""), checked, "a locked address was hashed for");
    // ... while a credential verified before the lock still gets in, on either worker.
    for _ in 0..6 {
        assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&alice)).status, 200);
    }
    // When the lock is over, bob gets in.
    let ok = wait_until(Duration::from_secs(10), || {
        get(&proxy, &origin, "/bytes/1", Some(&basic("bob", "pw-b"))).status == 200
    });
    assert!(ok, "bob still refused after the lockout");
    assert!(started.elapsed() >= Duration::from_secs(2), "the lock ended early: {:?}", started.elapsed());
}

#[test]
fn a_slow_hash_does_not_hold_up_the_workers_other_clients() {
    let dir = TempDir::new("auth-offring");
    let users = users_file(&dir, &[("alice", "pw-a")]);
    let origin = Origin::start();
    let proxy = Proxy::builder(&config("", &users, "max_failures = 1000")).workers(1).start();
    let alice = basic("alice", "pw-a");
    assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&alice)).status, 200, "alice is now cached");
    // 32 distinct wrong passwords at once: 32 slow hashes for the one worker.
    const GUESSES: usize = 32;
    let (sent_tx, sent) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    let guesses: Vec<_> = (0..GUESSES)
        .map(|i| {
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
                origin.url("/bytes/1"),
                origin.host(),
                basic("alice", &format!("guess-{i}"))
            );
            let (addr, sent_tx) = (proxy.addr(), sent_tx.clone());
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(req.as_bytes()).expect("send a guess");
                let _ = sent_tx.send(());
                read_response(&mut BufConn::new(s), false).map(|r| r.status)
            })
        })
        .collect();
    for _ in 0..GUESSES {
        sent.recv_timeout(Duration::from_secs(10)).expect("every guess sent");
    }
    // The guesses are all in the proxy's hands; a client whose credentials are cached is
    // served at once, not after the hashes (as it would be if they ran on the ring).
    let probe = Instant::now();
    assert_eq!(get(&proxy, &origin, "/bytes/1", Some(&alice)).status, 200);
    let probe = probe.elapsed();
    for g in guesses {
        assert_eq!(g.join().unwrap().expect("a guess's answer"), 407);
    }
    let all = t0.elapsed();
    eprintln!("cached client served in {probe:?}; {GUESSES} guesses answered in {all:?}");
    wait_metric_with(&proxy, "sluice_auth_verifications_total", "", 1.0 + GUESSES as f64);
    assert!(all >= Duration::from_millis(300), "{GUESSES} hashes took only {all:?}: too fast to tell");
    assert!(probe * 4 < all, "the cached client waited {probe:?} while the hashes took {all:?}");
}
