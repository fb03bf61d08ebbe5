//! The operations files: the systemd unit passes `systemd-analyze verify` and keeps its
//! hardening; the deploy scripts parse and their dry runs do what they say; the nftables
//! rules load (and, where the machine allows network namespaces, redirect for real); the
//! Prometheus config, alert rules (with their unit tests) and Grafana dashboard are valid
//! and use only the metric names the proxy exports.
//!
//! A tool that is missing makes its test print a `SKIP` line and pass outside CI; in CI
//! it fails (see `tests/support/skips.rs`): `.ci/setup` installs systemd, nftables,
//! iptables, shellcheck and prometheus (promtool) so CI runs them all.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "sluice-ops-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The program's path if it is installed (PATH, then the sbin directories a non-root
/// PATH may lack).
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

use support::skip;

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).stdout == b"0\n"
}

// ---------------------------------------------------------------------------------------
// systemd unit
// ---------------------------------------------------------------------------------------

/// The unit with `ExecStart=`'s program replaced by the freshly built binary (what the
/// acceptance kit does with sed), written to DIR/sluice.service.
fn unit_copy(dir: &TempDir, extra: &str) -> PathBuf {
    let unit: String = read("systemd/sluice.service")
        .lines()
        .map(|l| match l.strip_prefix("ExecStart=") {
            Some(rest) => {
                let args = rest.split_once(' ').map(|(_, a)| a).unwrap_or("");
                format!("ExecStart={BIN} {args}\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    let path = dir.join("sluice.service");
    std::fs::write(&path, unit + extra).unwrap();
    path
}

fn verify(unit: &Path) -> Option<String> {
    let sa = tool("systemd-analyze")?;
    let out = run(Command::new(sa).arg("verify").arg(unit));
    Some(text(&out))
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = TempDir::new("unit");
    let unit = unit_copy(&dir, "");
    let Some(out) = verify(&unit) else {
        return skip("systemd-analyze not installed (apt-get install systemd)");
    };
    let about: Vec<&str> = out.lines().filter(|l| l.contains("sluice.service")).collect();
    assert!(about.is_empty(), "systemd-analyze verify complains about the unit:\n{}", about.join("\n"));
}

#[test]
fn systemd_analyze_verify_would_catch_a_mistake() {
    // The check above can fail: a misspelt key and a missing binary are reported.
    let dir = TempDir::new("unit-bad");
    let unit = unit_copy(&dir, "\n[Service]\nProtectSystm=strict\n");
    let Some(out) = verify(&unit) else {
        return skip("systemd-analyze not installed");
    };
    assert!(out.lines().any(|l| l.contains("sluice.service") && l.contains("ProtectSystm")), "{out}");
    let missing = read("systemd/sluice.service");
    let path = dir.join("sluice.service");
    std::fs::write(&path, missing).unwrap(); // ExecStart=/usr/local/bin/sluice, absent here
    if !Path::new("/usr/local/bin/sluice").exists() {
        let out = verify(&path).unwrap();
        assert!(out.lines().any(|l| l.contains("sluice.service") && l.contains("/usr/local/bin/sluice")), "{out}");
    }
}

/// `Key=value` lines of the unit (comments and sections dropped), in order.
fn unit_settings() -> Vec<(String, String)> {
    read("systemd/sluice.service")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting(key: &str) -> Option<String> {
    unit_settings().into_iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[test]
fn unit_keeps_its_hardening_and_contract() {
    let want = [
        ("Type", "notify"),
        ("ExecStart", "/usr/local/bin/sluice run --config /etc/sluice/sluice.toml"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("User", "sluice"),
        ("Group", "sluice"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("LimitNOFILE", "1048576"),
        ("Restart", "on-failure"),
        ("ConfigurationDirectory", "sluice"),
    ];
    for (k, v) in want {
        assert_eq!(setting(k).as_deref(), Some(v), "{k}=");
    }
    // Registered slabs need locked memory: at least the default 1 worker × 1024 × 64 KiB.
    let memlock = setting("LimitMEMLOCK").expect("LimitMEMLOCK=");
    let ok = memlock == "infinity" || parse_size(&memlock).is_some_and(|b| b >= 64 << 20);
    assert!(ok, "LimitMEMLOCK={memlock} is below 64 MiB");
    // Stop timeout leaves room for the drain.
    let stop = setting("TimeoutStopSec").expect("TimeoutStopSec=");
    let secs: u64 = stop.trim_end_matches('s').parse().expect("TimeoutStopSec in seconds");
    assert!(secs >= 30, "TimeoutStopSec={stop}");
    // The CA directory stays writable.
    assert!(setting("StateDirectory").is_some_and(|v| v.split(' ').any(|d| d == "sluice")));
    assert!(setting("ReadWritePaths").is_some_and(|v| v.contains("/var/lib/sluice/CA")));
    // A syscall filter, if someone adds one, must leave io_uring in.
    for (k, v) in unit_settings() {
        if k == "SystemCallFilter" && !v.starts_with('~') {
            assert!(
                v.contains("@system-service") || v.contains("@aio") || v.contains("io_uring"),
                "SystemCallFilter={v} blocks io_uring"
            );
        }
        if k == "SystemCallFilter" && v.starts_with('~') {
            assert!(!v.contains("@aio") && !v.contains("io_uring"), "SystemCallFilter={v} blocks io_uring");
        }
        assert!(
            !(k == "CapabilityBoundingSet" || k == "AmbientCapabilities") || !v.contains("CAP_NET_ADMIN"),
            "{k}={v}: CAP_NET_ADMIN is not needed"
        );
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

// ---------------------------------------------------------------------------------------
// deploy scripts
// ---------------------------------------------------------------------------------------

const SCRIPTS: [&str; 2] = ["deploy/install.sh", "deploy/iptables-transparent.sh"];

#[test]
fn deploy_scripts_parse() {
    for s in SCRIPTS {
        let out = run(Command::new("bash").arg("-n").arg(root().join(s)));
        assert!(out.status.success(), "bash -n {s}:\n{}", text(&out));
    }
    match tool("shellcheck") {
        Some(sc) => {
            let out = run(Command::new(sc).args(SCRIPTS).current_dir(root()));
            assert!(out.status.success(), "shellcheck:\n{}", text(&out));
        }
        None => skip("shellcheck not installed: bash -n only"),
    }
}

#[test]
fn install_dry_run_changes_nothing_and_writes_a_valid_config() {
    let out = run(Command::new("bash")
        .arg(root().join("deploy/install.sh"))
        .args(["--dry-run", "--no-start", "--binary", BIN])
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    let t = text(&out);
    assert!(out.status.success(), "install.sh --dry-run:\n{t}");
    for want in [
        "/etc/systemd/system/sluice.service",
        "/usr/local/bin/sluice",
        "/var/lib/sluice/CA",
        "check-config /etc/sluice/sluice.toml",
    ] {
        assert!(t.contains(want), "dry run does not mention {want}:\n{t}");
    }
    assert!(t.contains("+ useradd --system") || t.contains("user sluice exists"), "{t}");
    // The config install.sh would write (indented after "would write") is valid.
    if let Some(start) = t.find("would write /etc/sluice/sluice.toml") {
        let config: String = t[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        assert!(config.contains("listen = ["), "{config}");
        let dir = TempDir::new("install-config");
        let file = dir.join("sluice.toml");
        std::fs::write(&file, &config).unwrap();
        let out = run(Command::new(BIN).arg("check-config").arg(&file));
        assert!(out.status.success(), "install.sh's default config is refused:\n{config}\n{}", text(&out));
    } else {
        skip("/etc/sluice/sluice.toml exists here: default config not checked");
    }
}

#[test]
fn iptables_dry_run_redirects_web_ports_and_exempts_the_sluice_user() {
    let out = run(Command::new("bash")
        .arg(root().join("deploy/iptables-transparent.sh"))
        .arg("--dry-run")
        .env("LAN_IF", "lan0")
        .env("SLUICE_PORT", "3129")
        .env("SLUICE_USER", "proxyuser"));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for want in [
        "-t nat -I PREROUTING 1 -i lan0 -p tcp -j SLUICE_PRE",
        "--dports 80\\,443 -j REDIRECT --to-ports 3129",
        "-m owner --uid-owner proxyuser -j RETURN",
        "-t filter -I INPUT 1 -p tcp --dport 3129 -j SLUICE_IN",
    ] {
        assert!(t.contains(want), "missing `{want}` in:\n{t}");
    }
    // The owner exemption comes before the OUTPUT redirect.
    let exempt = t.find("--uid-owner proxyuser").unwrap();
    let redirect = t.rfind("-A SLUICE_OUT -p tcp").unwrap();
    assert!(exempt < redirect, "{t}");
    let bad = run(Command::new("bash")
        .arg(root().join("deploy/iptables-transparent.sh"))
        .arg("--dry-run")
        .env("SLUICE_PORT", "31x"));
    assert!(!bad.status.success());
}

/// The nft file with the user define pointed at a user that exists here (the rule file
/// names a user, and nft resolves it at load time), and the LAN interface set.
fn nft_copy(dir: &TempDir, lan_if: &str) -> PathBuf {
    let user_exists = run(Command::new("getent").args(["passwd", "sluice"])).status.success();
    let mut rules = read("deploy/nftables-transparent.nft");
    assert!(rules.contains("define SLUICE_USER = \"sluice\""));
    assert!(rules.contains("define LAN_IF = \"eth1\""));
    if !user_exists {
        rules = rules.replace("define SLUICE_USER = \"sluice\"", "define SLUICE_USER = \"nobody\"");
    }
    rules = rules.replace("define LAN_IF = \"eth1\"", &format!("define LAN_IF = \"{lan_if}\""));
    let path = dir.join("sluice.nft");
    std::fs::write(&path, rules).unwrap();
    path
}

#[test]
fn nftables_rules_are_accepted() {
    let Some(nft) = tool("nft") else {
        return skip("nft not installed (apt-get install nftables)");
    };
    let dir = TempDir::new("nft");
    let rules = nft_copy(&dir, "eth1");
    let out = run(Command::new(&nft).arg("-c").arg("-f").arg(&rules));
    let t = text(&out);
    if !out.status.success() && (t.contains("Operation not permitted") || !is_root()) {
        return skip(&format!("nft -c needs CAP_NET_ADMIN here: {t}"));
    }
    assert!(out.status.success(), "nft -c -f:\n{t}");
    // And the check can fail: a broken rule is refused.
    let broken = dir.join("broken.nft");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&rules).unwrap().replace("redirect to :$SLUICE_PORT", "redirect to :$NO_SUCH_DEFINE"),
    )
    .unwrap();
    assert!(!run(Command::new(&nft).arg("-c").arg("-f").arg(&broken)).status.success());
}

/// A pair of network namespaces (a LAN client and the gateway), deleted on drop.
struct Netns {
    names: [String; 2],
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn nftables_rules_redirect_lan_traffic_with_the_original_destination() {
    // gateway ns: veth to the LAN ns, the rules, a listener on :3128 that answers with
    // SO_ORIGINAL_DST. client ns: connects to 203.0.113.5:80 and 198.51.100.7:443.
    if !is_root() || tool("nft").is_none() || tool("ip").is_none() || tool("python3").is_none() {
        return skip("needs root, nft, ip and python3");
    }
    let tag = format!("{}{}", std::process::id() % 100_000, SEQ.fetch_add(1, Ordering::SeqCst));
    let (gw, cl) = (format!("slgw{tag}"), format!("slcl{tag}"));
    if !run(Command::new("ip").args(["netns", "add", &gw])).status.success() {
        return skip("cannot create network namespaces here");
    }
    let _guard = Netns { names: [gw.clone(), cl.clone()] };
    let sh = |script: &str| {
        let out = run(Command::new("sh").arg("-ec").arg(script));
        assert!(out.status.success(), "{script}\n{}", text(&out));
    };
    let (vg, vc) = (format!("vg{tag}"), format!("vc{tag}"));
    sh(&format!(
        "ip netns add {cl}
         ip link add {vg} type veth peer name {vc}
         ip link set {vg} netns {gw}; ip link set {vc} netns {cl}
         ip -n {gw} addr add 10.77.0.1/24 dev {vg}; ip -n {cl} addr add 10.77.0.2/24 dev {vc}
         ip -n {gw} link set {vg} up; ip -n {cl} link set {vc} up
         ip -n {gw} link set lo up; ip -n {cl} link set lo up
         ip -n {cl} route add default via 10.77.0.1"
    ));
    let dir = TempDir::new("nft-netns");
    let rules = nft_copy(&dir, &vg);
    sh(&format!("ip netns exec {gw} nft -f {0}; ip netns exec {gw} nft -f {0}", rules.display()));

    let server = r#"
import socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 3128)); s.listen(); s.settimeout(15)
print("listening", flush=True)
for _ in range(2):
    c, _ = s.accept()
    d = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
    port, ip = struct.unpack("!2xH4s8x", d)
    c.sendall(("%s:%d\n" % (socket.inet_ntoa(ip), port)).encode()); c.close()
"#;
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &gw, "python3", "-c", server])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(srv.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "listening");
    }
    let client = r#"
import socket
for dst in [("203.0.113.5", 80), ("198.51.100.7", 443)]:
    c = socket.create_connection(dst, timeout=5)
    print(c.recv(100).decode().strip())
try:
    socket.create_connection(("203.0.113.5", 22), timeout=1); print("port 22 redirected")
except OSError:
    print("port 22 untouched")
"#;
    let out = run(Command::new("ip").args(["netns", "exec", &cl, "python3", "-c", client]));
    let _ = srv.kill();
    let _ = srv.wait();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "203.0.113.5:80\n198.51.100.7:443\nport 22 untouched\n");
}

// ---------------------------------------------------------------------------------------
// Prometheus and Grafana
// ---------------------------------------------------------------------------------------

/// The metric families the running binary exports: every `# TYPE` line of its `/metrics`
/// (so a family added to the code is checked against the dashboard without a list here).
fn exported_metric_families() -> BTreeSet<String> {
    let proxy = support::Proxy::start("");
    let text = proxy.metrics().unwrap_or_else(|e| panic!("{e}"));
    let families: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("sluice_"))
        .map(str::to_string)
        .collect();
    assert!(families.len() >= 25, "only {} sluice_ families in /metrics:\n{text}", families.len());
    families
}

/// Every `sluice_…` identifier in `text`, histogram suffixes folded into their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sluice_") {
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        if before_ok {
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
                .unwrap_or(name);
            out.insert(family.to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

#[test]
fn alerts_and_dashboard_use_only_exported_metric_names() {
    let known = exported_metric_families();
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/sluice-dashboard.json"] {
        let used = metric_names(&read(file));
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(unknown.is_empty(), "{file} uses unknown metrics {unknown:?}");
    }
    let dash = metric_names(&read("deploy/grafana/sluice-dashboard.json"));
    let missing: Vec<_> = known.difference(&dash).collect();
    assert!(missing.is_empty(), "the dashboard does not show {missing:?}");
    // Alerts the operators asked for exist.
    let alerts = read("deploy/prometheus/alerts.yml");
    for a in [
        "SluiceDown",
        "SluiceHigh5xxRatio",
        "SluiceUpstreamConnectFailures",
        "SluiceRingBacklog",
        "SluiceConnectionsNearLimit",
        "SluiceUpstreamVerifyFailures",
        "SluiceDnsFailures",
    ] {
        assert!(alerts.contains(&format!("alert: {a}\n")), "no alert {a}");
    }
}

#[test]
fn grafana_dashboard_is_valid_json() {
    let Some(py) = tool("python3") else {
        return skip("python3 not installed");
    };
    let check = r#"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["title"] and d["uid"], "title/uid"
panels = d["panels"]
ids = [p["id"] for p in panels]
assert len(ids) == len(set(ids)), "duplicate panel ids"
exprs = 0
for p in panels:
    for t in p.get("targets", []):
        assert t["expr"].strip() and t["refId"], p["title"]
        exprs += 1
assert exprs >= 20, exprs
names = [v["name"] for v in d["templating"]["list"]]
assert "datasource" in names and "instance" in names, names
print(len(panels), "panels", exprs, "queries")
"#;
    let out = run(Command::new(py).args(["-c", check]).arg(root().join("deploy/grafana/sluice-dashboard.json")));
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    let Some(promtool) = tool("promtool") else {
        return skip("promtool not installed (apt-get install prometheus)");
    };
    let dir = root().join("deploy/prometheus");
    for args in [
        &["check", "config", "scrape.yml"][..],
        &["check", "rules", "alerts.yml"],
        &["test", "rules", "alerts_test.yml"],
    ] {
        let out = run(Command::new(&promtool).args(args).current_dir(&dir));
        assert!(out.status.success(), "promtool {args:?}:\n{}", text(&out));
    }
}

#[test]
fn sysctl_keys_exist_in_this_kernel() {
    let conf = read("deploy/sysctl.d/90-sluice.conf");
    let mut n = 0;
    for line in conf.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key = value");
        let path = Path::new("/proc/sys").join(key.trim().replace('.', "/"));
        assert!(path.exists(), "{} does not exist ({line})", path.display());
        assert!(!value.trim().is_empty(), "{line}");
        n += 1;
    }
    assert!(n >= 10, "{n} settings");
    for key in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
        "fs.file-max",
        "fs.nr_open",
        "net.ipv4.tcp_fin_timeout",
        "net.core.rmem_max",
        "net.core.wmem_max",
    ] {
        assert!(conf.contains(&format!("\n{key} = ")), "{key} missing");
    }
    // fs.nr_open must allow the unit's LimitNOFILE.
    let nr_open: u64 =
        conf.lines().find_map(|l| l.strip_prefix("fs.nr_open = ")).and_then(|v| v.trim().parse().ok()).unwrap();
    let nofile: u64 = setting("LimitNOFILE").unwrap().parse().unwrap();
    assert!(nr_open >= nofile, "fs.nr_open {nr_open} < LimitNOFILE {nofile}");
}
