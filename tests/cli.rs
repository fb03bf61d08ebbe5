//! The command line: `check-config`, and `run` failing cleanly (one line, non-zero exit,
//! no panic or backtrace) on a missing file, an unknown key, a port in use, a bad flag;
//! listen addresses from flags and from the config file.

mod support;

use std::fs;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Run {
    /// None: still running after the deadline (then killed).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn lines(&self) -> Vec<String> {
        self.all().lines().filter(|l| !l.trim().is_empty()).map(|l| l.to_string()).collect()
    }
}

/// Runs the binary with `args`; kills it if it is still running after `within`.
fn sluice(args: &[&str], within: Duration) -> Run {
    sluice_with_env(args, &[], within)
}

/// [`sluice`] with environment variables set.
fn sluice_with_env(args: &[&str], env: &[(&str, &str)], within: Duration) -> Run {
    let dir = TempDir::new("cli");
    let out = fs::File::create(dir.join("out")).unwrap();
    let err = fs::File::create(dir.join("err")).unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir.path())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn sluice");
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code,
        stdout: fs::read_to_string(dir.join("out")).unwrap_or_default(),
        stderr: fs::read_to_string(dir.join("err")).unwrap_or_default(),
    }
}

/// Non-zero exit, exactly one line of output mentioning every one of `mentions`, and no
/// panic or backtrace.
fn assert_one_line_failure(r: &Run, mentions: &[&str], what: &str) {
    match r.code {
        None => panic!("{what}: still running after the deadline; output: {:?}", r.all()),
        Some(0) => panic!("{what}: exited 0; output: {:?}", r.all()),
        Some(_) => {}
    }
    let all = r.all();
    assert!(
        !all.contains("panicked") && !all.contains("backtrace") && !all.contains("RUST_BACKTRACE"),
        "{what}: panicked instead of a clean error: {all:?}"
    );
    let lines = r.lines();
    assert_eq!(lines.len(), 1, "{what}: expected one line, got {lines:#?}");
    for m in mentions {
        assert!(lines[0].contains(m), "{what}: the line should mention {m:?}: {:?}", lines[0]);
    }
}

fn listen_args(dir: &TempDir) -> Vec<String> {
    vec![
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--admin".into(),
        format!("127.0.0.1:{}", free_port()),
        "--workers".into(),
        "1".into(),
        "--ca-dir".into(),
        dir.join("ca").display().to_string(),
    ]
}

#[test]
fn check_config_accepts_an_empty_file() {
    let dir = TempDir::new("cfg");
    let f = dir.write("empty.toml", "");
    let r = sluice(&["check-config", f.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(r.code, Some(0), "empty config must be valid: {:?}", r.all());
}

#[test]
fn check_config_accepts_every_documented_key() {
    // The README's example config (every key with its default) and its key table agree
    // with what the binary accepts: a key documented but not parsed (or renamed) fails.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let example = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README's ```toml example");
    let documented: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '.'))
        .collect();
    // A key whose default cannot be written (`workers`: one per CPU) is shown commented out.
    let example_keys: String = example.lines().map(|l| format!("{}\n", l.trim_start_matches("# "))).collect();
    for key in &documented {
        let (table, name) = key.split_once('.').map_or(("", *key), |(t, n)| (t, n));
        let in_example = match table {
            "" => example_keys.lines().any(|l| l.starts_with(&format!("{name} ="))),
            t => example_keys.split(&format!("[{t}]\n")).nth(1).is_some_and(|sect| {
                sect.lines().take_while(|l| !l.starts_with('[')).any(|l| l.starts_with(&format!("{name} =")))
            }),
        };
        assert!(in_example, "README documents `{key}` but its example config does not set it");
    }
    assert!(documented.len() >= 25, "only {} keys found in the README's table", documented.len());
    let dir = TempDir::new("cfg");
    let f = dir.write("full.toml", example);
    let r = sluice(&["check-config", f.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(r.code, Some(0), "the README's example config is refused: {:?}", r.all());
}

#[test]
fn check_config_names_an_unknown_key() {
    let dir = TempDir::new("cfg");
    let f = dir.write("bad.toml", "connect_ports = [443]\nbogus_knob = 1\n");
    let r = sluice(&["check-config", f.to_str().unwrap()], Duration::from_secs(10));
    assert_one_line_failure(&r, &["bogus_knob"], "unknown top-level key");
}

#[test]
fn check_config_names_an_unknown_nested_key() {
    let dir = TempDir::new("cfg");
    let f = dir.write("bad.toml", "[timeouts]\nrequest_hed = 1\n");
    let r = sluice(&["check-config", f.to_str().unwrap()], Duration::from_secs(10));
    assert_one_line_failure(&r, &["request_hed"], "unknown key in [timeouts]");
}

#[test]
fn check_config_rejects_a_wrong_type() {
    let dir = TempDir::new("cfg");
    let f = dir.write("bad.toml", "connect_ports = \"443\"\n");
    let r = sluice(&["check-config", f.to_str().unwrap()], Duration::from_secs(10));
    assert_one_line_failure(&r, &["connect_ports"], "wrong type");
}

#[test]
fn check_config_rejects_broken_toml() {
    let dir = TempDir::new("cfg");
    let f = dir.write("bad.toml", "[timeouts\nrequest_head = \n");
    let r = sluice(&["check-config", f.to_str().unwrap()], Duration::from_secs(10));
    assert!(matches!(r.code, Some(c) if c != 0), "{:?}", r.all());
    assert!(!r.all().contains("panicked"), "{:?}", r.all());
}

#[test]
fn check_config_missing_file_is_one_line() {
    let r = sluice(&["check-config", "/nonexistent/sluice-test/missing.toml"], Duration::from_secs(10));
    assert_one_line_failure(&r, &["/nonexistent/sluice-test/missing.toml"], "missing file");
}

#[test]
fn run_with_missing_config_file_is_one_line() {
    let dir = TempDir::new("cli");
    let mut args = vec!["run", "--config", "/nonexistent/sluice-test/missing.toml"];
    let extra = listen_args(&dir);
    args.extend(extra.iter().map(|s| s.as_str()));
    let r = sluice(&args, Duration::from_secs(5));
    assert_one_line_failure(&r, &["/nonexistent/sluice-test/missing.toml"], "run, missing config");
}

#[test]
fn run_with_unknown_key_is_one_line() {
    let dir = TempDir::new("cli");
    let f = dir.write("bad.toml", "[pool]\nmax_idle_per_hots = 3\n");
    let mut args = vec!["run", "--config", f.to_str().unwrap()];
    let extra = listen_args(&dir);
    args.extend(extra.iter().map(|s| s.as_str()));
    let r = sluice(&args, Duration::from_secs(5));
    assert_one_line_failure(&r, &["max_idle_per_hots"], "run, unknown key");
}

#[test]
fn run_on_a_port_in_use_is_one_line() {
    let dir = TempDir::new("cli");
    let cfg = dir.write("empty.toml", "");
    // A plain listener (no SO_REUSEPORT), so the proxy's bind must fail.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let ca = dir.join("ca").display().to_string();
    let r = sluice(
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &addr,
            "--admin",
            &admin,
            "--workers",
            "2",
            "--ca-dir",
            &ca,
        ],
        Duration::from_secs(5),
    );
    assert_one_line_failure(&r, &[&addr], "listen port in use");
}

#[test]
fn run_on_an_admin_port_in_use_is_one_line() {
    let dir = TempDir::new("cli");
    let cfg = dir.write("empty.toml", "");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let ca = dir.join("ca").display().to_string();
    let r = sluice(
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--workers",
            "1",
            "--ca-dir",
            &ca,
        ],
        Duration::from_secs(5),
    );
    assert_one_line_failure(&r, &[&admin], "admin port in use");
}

#[test]
fn run_with_a_bad_flag_fails_cleanly() {
    let r = sluice(&["run", "--no-such-flag"], Duration::from_secs(5));
    assert!(matches!(r.code, Some(c) if c != 0), "bad flag accepted: {:?}", r.all());
    let all = r.all();
    assert!(!all.contains("panicked"), "{all:?}");
    let first = r.lines().into_iter().next().unwrap_or_default();
    assert!(first.contains("--no-such-flag"), "the first line should name the bad flag: {all:?}");
}

#[test]
fn run_with_a_bad_resolve_fails_cleanly() {
    let dir = TempDir::new("cli");
    let mut args = vec!["run", "--resolve", "no-address-here"];
    let extra = listen_args(&dir);
    args.extend(extra.iter().map(|s| s.as_str()));
    let r = sluice(&args, Duration::from_secs(5));
    assert!(matches!(r.code, Some(c) if c != 0), "bad --resolve accepted: {:?}", r.all());
    assert!(!r.all().contains("panicked"), "{:?}", r.all());
}

#[test]
fn a_bad_log_level_is_one_line() {
    let dir = TempDir::new("cli");
    let listen = listen_args(&dir);
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = args.to_vec();
        all.extend(listen.iter().map(String::as_str));
        sluice_with_env(&all, env, Duration::from_secs(5))
    };
    // The flag. Broken by not parsing --log-level in RunArgs::overrides.
    let r = run(&["run", "--log-level", "verbose"], &[]);
    assert_one_line_failure(
        &r,
        &["--log-level \"verbose\"", "expected error, warn, info, debug, trace"],
        "--log-level",
    );
    assert_eq!(r.code, Some(2));
    // The config key, with its line.
    let f = dir.write("bad.toml", "\nlog_level = \"debgu\"\n");
    let r = run(&["run", "--config", f.to_str().unwrap()], &[]);
    assert_one_line_failure(&r, &["log_level", "\"debgu\"", "(line 2)"], "log_level");
    assert_eq!(r.code, Some(2));
    // RUST_LOG, which is read when neither is given. Broken by ignoring a bad RUST_LOG.
    let r = run(&["run"], &[("RUST_LOG", "verbose")]);
    assert_one_line_failure(&r, &["RUST_LOG \"verbose\""], "RUST_LOG");
    assert_eq!(r.code, Some(2));
}

#[test]
fn run_listens_on_every_listen_flag() {
    let origin = Origin::start();
    let second = free_port();
    let proxy = Proxy::builder("").arg("--listen").arg(&format!("127.0.0.1:{second}")).start();
    for port in [proxy.port, second] {
        let url = format!("http://127.0.0.1:{port}/bytes/100");
        let host = format!("Host: {}", origin.host());
        let out = curl(None, &["-H", &host, &url]);
        out.expect_status(200);
        assert_bytes_eq(&out.body, &pattern(100), &format!("via listener {port}"));
    }
}

#[test]
fn run_with_no_flags_but_a_config_uses_its_listen_address() {
    let origin = Origin::start();
    let dir = TempDir::new("cli");
    let port = free_port();
    let admin = free_port();
    let cfg = dir.write(
        "sluice.toml",
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin}\"\nworkers = 1\nca_dir = \"{}\"\n",
            dir.join("ca").display()
        ),
    );
    let mut child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let up = wait_until(Duration::from_secs(10), || answers_http(addr));
    let out = if up {
        let host = format!("Host: {}", origin.host());
        Some(curl(None, &["-H", &host, &format!("http://{addr}/bytes/5")]))
    } else {
        None
    };
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        up,
        "sluice did not listen on the config file's address {addr}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = out.unwrap();
    out.expect_status(200);
    assert_bytes_eq(&out.body, &pattern(5), "config-file listener");
}
