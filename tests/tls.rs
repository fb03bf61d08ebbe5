//! TLS interception end to end: forged leaves signed by the Sluice CA (checked with curl
//! and `openssl s_client`), upstream verification (untrusted, wrong name, expired, not yet
//! valid → 502 with the reason, each counted once under its reason), passthrough names,
//! TLS inside CONNECT (`--intercept-connect`, including refused origins behind it), the
//! forged-certificate cache (and its bound), half-sent ClientHellos (every slot and
//! descriptor released), and `sluice ca init`.
//!
//! Origins are small python3 `ssl` HTTP/1.1 servers on port 443 of a distinct
//! 127.77.x.y address per origin (so `--resolve NAME:IP` gives `NAME:443`); their
//! certificates come from per-run test CAs made with openssl.
//!
//! Counts are checked exactly, never after a sleep: a test waits for the value it
//! expects, then for an anchor that proves the proxy is done counting (the client
//! connections' slots freed, for counters bumped as things happen; a later cache hit on
//! the single worker, for the certificate counters the worker publishes on its tick),
//! and only then asserts the value did not go past.

mod support;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::*;

// ---------------------------------------------------------------------------------------
// Test PKI
// ---------------------------------------------------------------------------------------

fn ossl(args: &[&str], cwd: &Path) {
    let out = Command::new("openssl").args(args).current_dir(cwd).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A test CA (`ca.pem`, `ca.key` in its own temp dir) that can sign leaves.
struct Pki {
    dir: TempDir,
    ca_pem: PathBuf,
}

impl Pki {
    fn new(cn: &str) -> Pki {
        let dir = TempDir::new("pki");
        ossl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            dir.path(),
        );
        let ca_pem = dir.join("ca.pem");
        Pki { dir, ca_pem }
    }

    fn csr(&self, stem: &str, sans: &[&str]) {
        let d = self.dir.path();
        ossl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{stem}.key"),
                "-out",
                &format!("{stem}.csr"),
                "-subj",
                &format!("/CN={}", sans[0]),
            ],
            d,
        );
        let san: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
        fs::write(
            d.join(format!("{stem}.ext")),
            format!("subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n", san.join(",")),
        )
        .unwrap();
    }

    /// A leaf for `sans` valid for two days. Returns (cert, key).
    fn leaf(&self, stem: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.csr(stem, sans);
        ossl(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{stem}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{stem}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{stem}.ext"),
            ],
            self.dir.path(),
        );
        (self.dir.join(&format!("{stem}.pem")), self.dir.join(&format!("{stem}.key")))
    }

    /// A leaf for `sans` valid from `not_before` to `not_after` (`YYYYMMDDHHMMSSZ`), signed
    /// with `openssl ca -startdate/-enddate` (`x509 -req` cannot set a start date on every
    /// openssl). Returns (cert, key).
    fn leaf_valid(&self, stem: &str, sans: &[&str], not_before: &str, not_after: &str) -> (PathBuf, PathBuf) {
        self.csr(stem, sans);
        let d = self.dir.path();
        fs::write(d.join("index.txt"), "").unwrap();
        fs::write(d.join("serial"), "1000\n").unwrap();
        fs::write(
            d.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
             default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n",
        )
        .unwrap();
        ossl(
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                "ca.cnf",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                &format!("{stem}.csr"),
                "-out",
                &format!("{stem}.pem"),
                "-startdate",
                not_before,
                "-enddate",
                not_after,
                "-extfile",
                &format!("{stem}.ext"),
            ],
            d,
        );
        (self.dir.join(&format!("{stem}.pem")), self.dir.join(&format!("{stem}.key")))
    }

    /// A leaf for `sans` that expired on 2020-01-01.
    fn expired_leaf(&self, stem: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.leaf_valid(stem, sans, "20190101000000Z", "20200101000000Z")
    }

    /// A leaf for `sans` that becomes valid only on 2099-01-01 (a GeneralizedTime).
    fn future_leaf(&self, stem: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.leaf_valid(stem, sans, "20990101000000Z", "20991231000000Z")
    }
}

// ---------------------------------------------------------------------------------------
// A python3 TLS HTTP/1.1 origin on IP:443
// ---------------------------------------------------------------------------------------

const ORIGIN_PY: &str = r#"
import socket, socketserver, ssl, sys
from http.server import BaseHTTPRequestHandler
host, cert, key, name = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Origin", name)
        self.send_header("X-Peer", str(self.client_address[1]))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(("hello from %s %s\n" % (name, self.path)).encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.reply(self.rfile.read(n))

class S(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    def finish_request(self, request, client_address):
        try:
            request.settimeout(30)
            tls = ctx.wrap_socket(request, server_side=True)
        except Exception:
            return
        try:
            H(tls, client_address, self)
        except Exception:
            pass
        finally:
            try:
                tls.close()
            except Exception:
                pass

S((host, 443), H).serve_forever()
"#;

static NEXT_IP: AtomicUsize = AtomicUsize::new(0);

/// A loopback address for one origin: 127.77.(pid-based).(counter), distinct per test
/// process and per origin within it.
fn fresh_ip() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() as usize;
    format!("127.77.{}.{}", (pid + n / 250) % 250 + 1, n % 250 + 2)
}

struct PyOrigin {
    child: Child,
    ip: String,
    _dir: TempDir,
}

impl PyOrigin {
    fn start(cert: &Path, key: &Path, name: &str) -> PyOrigin {
        let dir = TempDir::new("pyorigin");
        let script = dir.write("origin.py", ORIGIN_PY);
        for _ in 0..5 {
            let ip = fresh_ip();
            let mut child = Command::new("python3")
                .arg(&script)
                .arg(&ip)
                .arg(cert)
                .arg(key)
                .arg(name)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn python3 origin");
            let addr: SocketAddr = format!("{ip}:443").parse().unwrap();
            let up = wait_until(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if up && matches!(child.try_wait(), Ok(None)) {
                return PyOrigin { child, ip, _dir: dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("python3 TLS origin did not start");
    }
}

impl Drop for PyOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

fn sluice_ca(proxy: &Proxy) -> PathBuf {
    proxy.dir.path().join("ca").join("ca.pem")
}

struct Got {
    exit: i32,
    out: Vec<u8>,
    err: String,
}

impl Got {
    /// `(http_code, num_connects)` of every transfer, from the `-w` lines on stderr.
    fn transfers(&self) -> Vec<(u16, u32)> {
        self.err
            .lines()
            .filter_map(|l| l.strip_prefix("@@ "))
            .map(|l| {
                let mut it = l.split_whitespace();
                (
                    it.next().and_then(|x| x.parse().ok()).unwrap_or(0),
                    it.next().and_then(|x| x.parse().ok()).unwrap_or(0),
                )
            })
            .collect()
    }

    fn status(&self) -> u16 {
        self.transfers().last().map(|t| t.0).unwrap_or(0)
    }

    /// The CONNECT status of the last transfer (third field of a [`curl_connect`] line).
    fn connect_status(&self) -> u16 {
        self.err
            .lines()
            .filter_map(|l| l.strip_prefix("@@ "))
            .next_back()
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    }

    fn describe(&self) -> String {
        let err: String =
            self.err.lines().filter(|l| !l.starts_with("> ") && !l.starts_with("{ ")).collect::<Vec<_>>().join("\n");
        format!("curl exit {}; body {:?}\nstderr:\n{}", self.exit, excerpt(&self.out), err)
    }
}

/// `curl -sS -v` to `https://NAME/<path>` for every path, connected to the proxy's
/// listener with `--connect-to` and trusting only the Sluice CA.
fn curl_tls(proxy: &Proxy, name: &str, extra: &[&str], paths: &[&str]) -> Got {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-v", "--max-time", "20", "-w", "%{stderr}@@ %{http_code} %{num_connects}\n", "--cacert"])
        .arg(sluice_ca(proxy))
        .arg("--connect-to")
        .arg(format!("{name}:443:127.0.0.1:{}", proxy.port))
        .args(extra);
    for p in paths {
        cmd.arg(format!("https://{name}{p}"));
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run curl");
    Got {
        exit: out.status.code().unwrap_or(-1),
        out: out.stdout,
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `curl -sS -v -p -x PROXY` to `https://NAME<path>`: a CONNECT to NAME:443, then TLS
/// inside the tunnel trusting only the Sluice CA. The `-w` line adds the CONNECT's
/// status (`%{http_connect}`) after the two fields [`Got::transfers`] reads.
fn curl_connect(proxy: &Proxy, name: &str, path: &str) -> Got {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "20", "-w", "%{stderr}@@ %{http_code} %{num_connects} %{http_connect}\n"])
        .args(["-p", "-x"])
        .arg(proxy.url())
        .arg("--cacert")
        .arg(sluice_ca(proxy))
        .arg(format!("https://{name}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    Got {
        exit: out.status.code().unwrap_or(-1),
        out: out.stdout,
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The issuer curl -v printed for the server certificate it was shown.
fn shown_issuer(g: &Got) -> &str {
    g.err.lines().find(|l| l.contains("issuer:")).unwrap_or("")
}

/// `openssl s_client` to the proxy listener with SNI `name`; returns its whole output and
/// `openssl x509 -issuer -subject -ext subjectAltName` of the certificate it was shown.
fn s_client(port: u16, name: &str, cafile: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", name, "-CAfile"])
        .arg(cafile)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let Some(b) = text.find(begin) else {
        return (text, String::new());
    };
    let e = text[b..].find(end).map(|i| b + i + end.len()).unwrap_or(text.len());
    let pem = text[b..e].to_string() + "\n";
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-issuer", "-subject", "-ext", "subjectAltName"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    x.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
    let o = x.wait_with_output().unwrap();
    (text, format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// The value of counter `family`: the sum of its samples whose label set contains `label`
/// (e.g. `result="ok"`), or of all its samples when `label` is empty; 0 before its first
/// bump (a family may not be exported until then).
fn count(proxy: &Proxy, family: &str, label: &str) -> f64 {
    let text = proxy.metrics().unwrap_or_else(|e| panic!("{e}"));
    if label.is_empty() {
        return metric_sum(&text, family).unwrap_or(0.0);
    }
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// `family{label}` for messages.
fn series(family: &str, label: &str) -> String {
    if label.is_empty() {
        family.to_string()
    } else {
        format!("{family}{{{label}}}")
    }
}

/// Waits (up to 5 s) until [`count`] is exactly `want`. Panics when it does not get
/// there, and as soon as it goes past `want` (a counter never comes back down: the event
/// was counted more than once).
fn wait_count(proxy: &Proxy, family: &str, label: &str, want: f64) {
    let mut now = 0.0;
    let reached = wait_until(Duration::from_secs(5), || {
        now = count(proxy, family, label);
        assert!(now <= want, "{} went past {want}: it is {now}", series(family, label));
        now == want
    });
    assert!(reached, "{} is {now} after 5 s, expected {want}", series(family, label));
}

/// Waits (up to 5 s) until [`count`] is at least `min`: an anchor whose exact value the
/// caller checks next, with a message that says what a higher value means.
fn wait_at_least(proxy: &Proxy, family: &str, label: &str, min: f64) {
    let mut now = 0.0;
    let reached = wait_until(Duration::from_secs(5), || {
        now = count(proxy, family, label);
        now >= min
    });
    assert!(reached, "{} is {now} after 5 s, expected at least {min}", series(family, label));
}

/// Asserts that [`count`] is exactly `want` now. Call it after an anchor that proves the
/// proxy is done counting (`anchor` says which), so a late or second count shows.
fn assert_count(proxy: &Proxy, family: &str, label: &str, want: f64, anchor: &str) {
    let now = count(proxy, family, label);
    assert_eq!(now, want, "{} is {now} once {anchor}, expected exactly {want}", series(family, label));
}

/// A trusted origin CA with a leaf for origin.test, a python origin serving it, and a
/// proxy that resolves origin.test to it and trusts the origin CA.
struct Setup {
    pki: Pki,
    origin: PyOrigin,
    proxy: Proxy,
}

/// [`Setup`] with a 2-worker proxy.
fn setup(config: &str, extra: &[&str]) -> Setup {
    setup_workers(2, config, extra)
}

/// [`Setup`] with a proxy of `workers` workers. One worker makes the tick-published
/// certificate counters comparable: they all come from the same publish.
fn setup_workers(workers: usize, config: &str, extra: &[&str]) -> Setup {
    let pki = Pki::new("Origin Test CA");
    let (cert, key) = pki.leaf("origin", &["origin.test"]);
    let origin = PyOrigin::start(&cert, &key, "origin.test");
    let mut b = Proxy::builder(config)
        .workers(workers)
        .resolve("origin.test", &origin.ip)
        .arg("--upstream-ca")
        .arg(pki.ca_pem.to_str().unwrap());
    for a in extra {
        b = b.arg(a);
    }
    let proxy = b.start();
    Setup { pki, origin, proxy }
}

/// A proxy trusting only `ca` upstream, resolving each `(name, ip)`, with `extra` flags.
fn proxy_trusting(ca: &Path, names: &[(&str, &str)], extra: &[&str]) -> Proxy {
    let mut b = Proxy::builder("").arg("--upstream-ca").arg(ca.to_str().expect("utf-8 temp path"));
    for (name, ip) in names {
        b = b.resolve(name, ip);
    }
    for a in extra {
        b = b.arg(a);
    }
    b.start()
}

/// Requests `https://NAME/` through a proxy that trusts only `ca` upstream while the
/// origin at `ip` serves a certificate it must refuse: the client gets a 502 whose body
/// holds `reason_words` (each, case-insensitively), the refusal is counted exactly once
/// and only under `sluice_upstream_verify_failures_total{reason="<reason>"}`, and the
/// client connection is released.
fn assert_refused_upstream(name: &str, ip: &str, ca: &Path, reason: &str, reason_words: &[&str]) {
    let proxy = proxy_trusting(ca, &[(name, ip)], &[]);
    let base = proxy.baseline();
    let g = curl_tls(&proxy, name, &[], &["/"]);
    assert_eq!((g.exit, g.status()), (0, 502), "{}", g.describe());
    let body = String::from_utf8_lossy(&g.out).to_lowercase();
    for w in reason_words {
        assert!(body.contains(w), "502 body does not give the reason ({w:?}): {body:?}");
    }
    assert!(!body.contains("hello from"), "origin content leaked: {body:?}");
    let label = format!("reason=\"{reason}\"");
    let family = "sluice_upstream_verify_failures_total";
    wait_count(&proxy, family, &label, 1.0);
    proxy.assert_released(&base, "the refused client connection");
    assert_count(&proxy, family, &label, 1.0, "the client connection was released");
    assert_count(&proxy, family, "", 1.0, "the client connection was released");
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn get_and_post_1mib_through_interception() {
    let s = setup("", &[]);
    let base = s.proxy.baseline();
    let g = curl_tls(&s.proxy, "origin.test", &[], &["/hello"]);
    assert_eq!((g.exit, g.status()), (0, 200), "{}", g.describe());
    assert_eq!(String::from_utf8_lossy(&g.out), "hello from origin.test /hello\n", "{}", g.describe());
    assert!(g.err.contains("Sluice Interception CA"), "issuer is not the Sluice CA: {}", g.describe());

    let dir = TempDir::new("post");
    let payload = dir.join("payload");
    write_pattern_file(&payload, 1 << 20);
    let data = format!("@{}", payload.display());
    let g = curl_tls(
        &s.proxy,
        "origin.test",
        &["--data-binary", &data, "-H", "Content-Type: application/octet-stream"],
        &["/echo"],
    );
    assert_eq!((g.exit, g.status()), (0, 200), "{}", g.describe());
    assert_bytes_eq(&g.out, &pattern(1 << 20), "1 MiB POST echoed through interception");
    // Two client connections, one handshake each; both released (slots and descriptors).
    let handshakes = "sluice_tls_handshakes_total";
    wait_count(&s.proxy, handshakes, "result=\"ok\"", 2.0);
    s.proxy.assert_released(&base, "two intercepted client connections");
    assert_count(&s.proxy, handshakes, "result=\"ok\"", 2.0, "both client connections were released");
    assert_count(&s.proxy, handshakes, "result=\"failed\"", 0.0, "both client connections were released");
}

#[test]
fn twenty_requests_on_one_client_connection_use_one_origin_connection() {
    let s = setup("", &[]);
    let paths: Vec<String> = (0..20).map(|i| format!("/r{i}")).collect();
    let refs: Vec<&str> = paths.iter().map(|p| p.as_str()).collect();
    let g = curl_tls(&s.proxy, "origin.test", &["-i"], &refs);
    assert_eq!(g.exit, 0, "{}", g.describe());
    let t = g.transfers();
    assert_eq!(t.len(), 20, "{}", g.describe());
    assert!(t.iter().all(|x| x.0 == 200), "{t:?}");
    let connects: u32 = t.iter().map(|x| x.1).sum();
    assert_eq!(connects, 1, "curl opened {connects} client connections: {t:?}");
    let text = String::from_utf8_lossy(&g.out).into_owned();
    for i in 0..20 {
        assert!(text.contains(&format!("hello from origin.test /r{i}\n")), "response {i} missing: {}", excerpt(&g.out));
    }
    let mut peers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-peer"))
        .map(|(_, v)| v.trim())
        .collect();
    assert_eq!(peers.len(), 20, "{text}");
    peers.sort();
    peers.dedup();
    assert_eq!(peers.len(), 1, "20 requests on one client connection used {} origin connections", peers.len());
}

#[test]
fn s_client_verifies_forged_leaf_with_tls12_and_tls13() {
    let s = setup("", &[]);
    let base = s.proxy.baseline();
    let ca = sluice_ca(&s.proxy);
    for (flag, proto) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (text, cert) = s_client(s.proxy.port, "origin.test", &ca, &[flag, "-verify_return_error"]);
        assert!(text.contains("Verify return code: 0 (ok)"), "{flag}: not verified:\n{text}");
        assert!(text.contains(proto), "{flag}: protocol {proto} not negotiated:\n{text}");
        assert!(cert.contains("Sluice Interception CA"), "{flag}: issuer:\n{cert}");
        let issuer = cert.lines().find(|l| l.starts_with("issuer")).unwrap_or("");
        assert!(issuer.contains("Sluice Interception CA"), "{flag}: issuer line {issuer:?}");
        assert!(cert.contains("DNS:origin.test"), "{flag}: SAN:\n{cert}");
    }
    // The same with real requests over each version.
    for extra in [["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3", "--tls-max", "1.3"]] {
        let g = curl_tls(&s.proxy, "origin.test", &extra, &["/v"]);
        assert_eq!((g.exit, g.status()), (0, 200), "{extra:?}: {}", g.describe());
        assert_eq!(String::from_utf8_lossy(&g.out), "hello from origin.test /v\n");
        let want = if extra[0] == "--tlsv1.2" { "TLSv1.2" } else { "TLSv1.3" };
        assert!(g.err.contains(&format!("SSL connection using {want}")), "{extra:?}: {}", g.describe());
    }
    let handshakes = "sluice_tls_handshakes_total";
    wait_count(&s.proxy, handshakes, "result=\"ok\"", 4.0);
    // A client that does not trust the Sluice CA refuses the forged leaf: the proxy sees
    // that handshake fail.
    let (text, _) = s_client(s.proxy.port, "origin.test", &s.pki.ca_pem, &["-verify_return_error"]);
    assert!(!text.contains("Verify return code: 0 (ok)"), "forged leaf verified against the origin CA:\n{text}");
    wait_count(&s.proxy, handshakes, "result=\"failed\"", 1.0);
    s.proxy.assert_released(&base, "five TLS client connections");
    assert_count(&s.proxy, handshakes, "result=\"ok\"", 4.0, "every client connection was released");
    assert_count(&s.proxy, handshakes, "result=\"failed\"", 1.0, "every client connection was released");
}

#[test]
fn untrusted_origin_is_502_with_reason_and_counted() {
    let rogue = Pki::new("Rogue Test CA");
    let (cert, key) = rogue.leaf("rogue", &["rogue.test"]);
    let origin = PyOrigin::start(&cert, &key, "rogue.test");
    let trusted = Pki::new("Origin Test CA");
    assert_refused_upstream("rogue.test", &origin.ip, &trusted.ca_pem, "unknown_issuer", &["trusted"]);
}

#[test]
fn wrong_name_origin_is_502() {
    let s = setup("", &[]);
    // wrong.test resolves to the origin, whose certificate covers only origin.test.
    assert_refused_upstream("wrong.test", &s.origin.ip, &s.pki.ca_pem, "wrong_name", &["name"]);
    // The right name on the same origin still works.
    let g = curl_tls(&s.proxy, "origin.test", &[], &["/"]);
    assert_eq!((g.exit, g.status()), (0, 200), "{}", g.describe());
}

#[test]
fn expired_origin_certificate_is_502() {
    let pki = Pki::new("Origin Test CA");
    let (cert, key) = pki.expired_leaf("expired", &["expired.test"]);
    let origin = PyOrigin::start(&cert, &key, "expired.test");
    assert_refused_upstream("expired.test", &origin.ip, &pki.ca_pem, "expired", &["expired"]);
}

#[test]
fn not_yet_valid_origin_certificate_is_502() {
    let pki = Pki::new("Origin Test CA");
    let (cert, key) = pki.future_leaf("future", &["future.test"]);
    let origin = PyOrigin::start(&cert, &key, "future.test");
    assert_refused_upstream("future.test", &origin.ip, &pki.ca_pem, "not_yet_valid", &["not valid yet"]);
}

#[test]
fn passthrough_name_shows_the_origin_certificate() {
    let pki = Pki::new("Origin Test CA");
    // The same origin also answers for an intercepted name (the anchor below).
    let (cert, key) = pki.leaf("pass", &["pass.test", "inspected.test"]);
    let origin = PyOrigin::start(&cert, &key, "pass.test");
    // One worker: its certificate counters come from one publish (see the anchor).
    let proxy = Proxy::builder("")
        .workers(1)
        .resolve("pass.test", &origin.ip)
        .resolve("inspected.test", &origin.ip)
        .arg("--upstream-ca")
        .arg(pki.ca_pem.to_str().unwrap())
        .arg("--passthrough")
        .arg("pass.test")
        .start();
    let (text, cert) = s_client(proxy.port, "pass.test", &pki.ca_pem, &["-verify_return_error"]);
    assert!(text.contains("Verify return code: 0 (ok)"), "origin cert not verified:\n{text}");
    assert!(cert.contains("Origin Test CA") && !cert.contains("Sluice"), "not the origin's own cert:\n{cert}");
    // curl trusting only the origin CA gets the origin's content through the raw tunnel.
    let mut cmd = Command::new("curl");
    let out = cmd
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&pki.ca_pem)
        .arg("--connect-to")
        .arg(format!("pass.test:443:127.0.0.1:{}", proxy.port))
        .arg("https://pass.test/p")
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from pass.test /p\n");
    wait_count(&proxy, "sluice_tls_handshakes_total", "result=\"passthrough\"", 2.0);
    // Anchor: an intercepted name twice on the same worker mints once, then hits the
    // cache. The publish that shows that hit also shows every earlier mint, so the mint
    // count then is the anchor's one, plus any the passthrough connections made.
    for _ in 0..2 {
        let g = curl_tls(&proxy, "inspected.test", &[], &["/i"]);
        assert_eq!((g.exit, g.status()), (0, 200), "{}", g.describe());
    }
    wait_at_least(&proxy, "sluice_cert_cache_hits_total", "", 1.0);
    let anchor = "a later intercepted name was minted, then hit (more is certificate work for a passthrough name)";
    assert_count(&proxy, "sluice_certs_minted_total", "", 1.0, anchor);
    assert_count(&proxy, "sluice_cert_cache_hits_total", "", 1.0, anchor);
}

#[test]
fn intercept_connect_forges_the_certificate_for_curl_p() {
    // One worker: the minted and cache-hit counters come from the same publish.
    let s = setup_workers(1, "", &["--intercept-connect"]);
    let g = curl_connect(&s.proxy, "origin.test", "/tunnelled");
    assert_eq!((g.exit, g.connect_status(), g.status()), (0, 200, 200), "{}", g.describe());
    assert_eq!(String::from_utf8_lossy(&g.out), "hello from origin.test /tunnelled\n", "{}", g.describe());
    let issuer = shown_issuer(&g);
    assert!(issuer.contains("Sluice Interception CA"), "issuer {issuer:?}\n{}", g.describe());
    wait_count(&s.proxy, "sluice_certs_minted_total", "", 1.0);
    // Anchor: the same name through a second tunnel is served from the cache.
    let g = curl_connect(&s.proxy, "origin.test", "/again");
    assert_eq!((g.exit, g.connect_status(), g.status()), (0, 200, 200), "{}", g.describe());
    wait_count(&s.proxy, "sluice_cert_cache_hits_total", "", 1.0);
    assert_count(&s.proxy, "sluice_certs_minted_total", "", 1.0, "a second tunnel to the name hit the cache");
}

#[test]
fn intercept_connect_after_a_keep_alive_request_with_the_client_hello_in_the_same_write() {
    // The CONNECT follows a plain request on the same connection, so it arrives through
    // the client's multishot receive (src/conn/multishot.rs), the ClientHello right
    // behind it: the receive is cancelled when the tunnel's TLS begins, and the hello's
    // bytes, whichever completion brings them, reach the TLS session whole and in order.
    let plain = Origin::start();
    let s = setup_workers(1, "", &["--intercept-connect"]);
    let mut c = s.proxy.client();
    assert_eq!(c.get(&plain.host(), "/bytes/10").body, pattern(10));
    let pem = fs::read(sluice_ca(&s.proxy)).expect("read the Sluice CA");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("CA PEM")).expect("add the Sluice CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(sluice::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("origin.test").unwrap();
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut first = b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n".to_vec();
    tls.write_tls(&mut first).unwrap();
    c.send(&first).unwrap();
    let head = c.conn.read_head(1 << 16).unwrap().expect("the CONNECT's answer");
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    // Whatever of the handshake came with the 200 is already in the test client's buffer.
    let mut early = c.conn.buffered();
    while !early.is_empty() {
        tls.read_tls(&mut early).unwrap();
        tls.process_new_packets().expect("the proxy's handshake");
    }
    let mut tcp = c.conn.inner.try_clone().unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap_or_else(|e| panic!("handshake inside the tunnel: {e}"));
    }
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    stream.write_all(b"GET /kept HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello from origin.test /kept\n"), "{answer}");
}

#[test]
fn intercept_connect_refuses_untrusted_and_wrong_name_origins_with_502_inside_the_tunnel() {
    let trusted = Pki::new("Origin Test CA");
    let (cert, key) = trusted.leaf("origin", &["origin.test"]);
    let origin = PyOrigin::start(&cert, &key, "origin.test");
    let rogue_ca = Pki::new("Rogue Test CA");
    let (rogue_cert, rogue_key) = rogue_ca.leaf("rogue", &["rogue.test"]);
    let rogue = PyOrigin::start(&rogue_cert, &rogue_key, "rogue.test");
    // wrong.test resolves to the trusted origin, whose certificate covers only origin.test.
    let proxy = proxy_trusting(
        &trusted.ca_pem,
        &[("origin.test", &origin.ip), ("wrong.test", &origin.ip), ("rogue.test", &rogue.ip)],
        &["--intercept-connect"],
    );
    let base = proxy.baseline();
    let family = "sluice_upstream_verify_failures_total";
    for (name, reason, words) in [("rogue.test", "unknown_issuer", ["trusted"]), ("wrong.test", "wrong_name", ["name"])]
    {
        let g = curl_connect(&proxy, name, "/secret");
        // The CONNECT succeeded and the client's TLS session is the proxy's forgery: the
        // 502 is an answer inside the intercepted session, not a refused CONNECT.
        assert_eq!((g.exit, g.connect_status(), g.status()), (0, 200, 502), "{name}: {}", g.describe());
        let issuer = shown_issuer(&g);
        assert!(issuer.contains("Sluice Interception CA"), "{name}: issuer {issuer:?}\n{}", g.describe());
        let body = String::from_utf8_lossy(&g.out).to_lowercase();
        for w in words {
            assert!(body.contains(w), "{name}: 502 body does not give the reason ({w:?}): {body:?}");
        }
        assert!(!body.contains("hello from"), "{name}: origin content leaked: {body:?}");
        wait_count(&proxy, family, &format!("reason=\"{reason}\""), 1.0);
    }
    // The trusted origin under its own name still goes through.
    let g = curl_connect(&proxy, "origin.test", "/fine");
    assert_eq!((g.exit, g.connect_status(), g.status()), (0, 200, 200), "{}", g.describe());
    assert_eq!(String::from_utf8_lossy(&g.out), "hello from origin.test /fine\n", "{}", g.describe());
    proxy.assert_released(&base, "three intercepted tunnels");
    let anchor = "every tunnel was released";
    assert_count(&proxy, family, "reason=\"unknown_issuer\"", 1.0, anchor);
    assert_count(&proxy, family, "reason=\"wrong_name\"", 1.0, anchor);
    assert_count(&proxy, family, "", 2.0, anchor);
}

fn many_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("n{i}.many.test")).collect()
}

fn many_setup(config: &str, names: &[String]) -> (Pki, PyOrigin, Proxy) {
    let pki = Pki::new("Origin Test CA");
    let (cert, key) = pki.leaf("many", &["*.many.test"]);
    let origin = PyOrigin::start(&cert, &key, "many");
    // One worker: the certificate cache is per worker, and the minted and cache-hit
    // counters then come from the same publish.
    let mut b = Proxy::builder(config).workers(1).arg("--upstream-ca").arg(pki.ca_pem.to_str().unwrap());
    for n in names {
        b = b.resolve(n, &origin.ip);
    }
    (pki, origin, b.start())
}

/// GET https://NAME/ through the proxy; checks the body and that curl matched the
/// forged certificate's SAN against exactly NAME.
fn get_name(proxy: &Proxy, name: &str) {
    let g = curl_tls(proxy, name, &[], &["/"]);
    assert_eq!((g.exit, g.status()), (0, 200), "{name}: {}", g.describe());
    assert_eq!(String::from_utf8_lossy(&g.out), "hello from many /\n", "{name}");
    assert!(
        g.err.contains(&format!("matched cert's \"{name}\"")),
        "{name}: SAN not exactly the name: {}",
        g.describe()
    );
}

#[test]
fn fifty_names_each_get_their_own_certificate_then_a_repeat_hits_the_cache() {
    let names = many_names(50);
    let (_pki, _origin, proxy) = many_setup("", &names);
    for n in &names {
        get_name(&proxy, n);
    }
    wait_count(&proxy, "sluice_certs_minted_total", "", 50.0);
    assert_count(&proxy, "sluice_cert_cache_hits_total", "", 0.0, "fifty distinct names were minted");
    // A repeat name is a cache hit; the publish that shows it also shows every mint
    // before it, so a repeat that minted again shows as 51.
    get_name(&proxy, "n17.many.test");
    wait_count(&proxy, "sluice_cert_cache_hits_total", "", 1.0);
    assert_count(&proxy, "sluice_certs_minted_total", "", 50.0, "the repeat name hit the cache");
    // s_client sees the name in the SAN of a leaf issued by the Sluice CA.
    let (text, cert) = s_client(proxy.port, "n33.many.test", &sluice_ca(&proxy), &["-verify_return_error"]);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(cert.contains("DNS:n33.many.test") && cert.contains("Sluice Interception CA"), "{cert}");
}

#[test]
fn bounded_cert_cache_still_serves_fifty_names() {
    let names = many_names(50);
    let (_pki, _origin, mut proxy) = many_setup("cert_cache_size = 10\n", &names);
    for n in &names {
        get_name(&proxy, n);
    }
    wait_count(&proxy, "sluice_certs_minted_total", "", 50.0);
    // Again, in the same order: with room for 10, the early names were evicted and are
    // minted afresh (and still correct).
    for n in &names[..5] {
        get_name(&proxy, n);
    }
    wait_count(&proxy, "sluice_certs_minted_total", "", 55.0);
    // The cache now holds the last five of the fifty and the five re-minted ones; the
    // most recent of the fifty is a hit. Nothing hit before it, and nothing minted since.
    assert_count(&proxy, "sluice_cert_cache_hits_total", "", 0.0, "55 handshakes all minted");
    get_name(&proxy, &names[49]);
    wait_count(&proxy, "sluice_cert_cache_hits_total", "", 1.0);
    assert_count(&proxy, "sluice_certs_minted_total", "", 55.0, "a name still in the bounded cache hit it");
    assert!(proxy.alive(), "proxy died");
}

#[test]
fn a_client_hello_larger_than_4k_in_one_piece_is_answered() {
    // Found by fuzz/tls_detect: rustls reads at most 4 KiB per read_tls, and the proxy
    // gave it one read per wake-up: a ClientHello that needs more reads than the
    // connection had wake-ups (two: readiness, then the read) waited for bytes the client
    // never sends. A rustls client offering 60 ALPN names of 200 bytes (a 12 KB
    // ClientHello) sends it in one write; the handshake must complete.
    let s = setup("", &[]);
    let pem = fs::read(sluice_ca(&s.proxy)).expect("read the Sluice CA");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("CA PEM")).expect("add the Sluice CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(sluice::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = (0..60u8).map(|i| vec![b'a' + i % 26; 200]).chain([b"http/1.1".to_vec()]).collect();
    let name = rustls::pki_types::ServerName::try_from("origin.test").unwrap();
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 12_000, "ClientHello of {} bytes", hello.len());
    let mut tcp = TcpStream::connect(s.proxy.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(&hello).expect("send the ClientHello in one write");
    while tls.is_handshaking() {
        if let Err(e) = tls.complete_io(&mut tcp) {
            panic!("handshake after a {}-byte ClientHello: {e}", hello.len());
        }
    }
    assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn partial_client_hellos_do_not_leak_connections() {
    let s = setup("", &[]);
    let base = s.proxy.baseline();
    // A TLS record header announcing a 512-byte handshake message, then only a few bytes.
    let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    partial.extend_from_slice(&[0x42; 20]);
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut c = TcpStream::connect(s.proxy.addr()).expect("connect");
        c.write_all(&partial).expect("send partial ClientHello");
        held.push(c);
    }
    let open = s.proxy.wait_metric("sluice_connection_slots", Duration::from_secs(5), |v| v == 30.0);
    assert!(open.is_ok(), "30 held connections do not hold 30 client slots: {open:?}");
    // Nothing of them was answered or counted yet: each waits for the rest of its hello.
    assert_count(&s.proxy, "sluice_tls_handshakes_total", "", 0.0, "30 half-sent hellos were held");
    drop(held);
    s.proxy.assert_released(&base, "30 connections that went away mid-ClientHello");
    assert_count(
        &s.proxy,
        "sluice_tls_handshakes_total",
        "result=\"failed\"",
        30.0,
        "30 half-sent hellos were released",
    );
    let g = curl_tls(&s.proxy, "origin.test", &[], &["/after"]);
    assert_eq!((g.exit, g.status()), (0, 200), "{}", g.describe());
    assert_eq!(String::from_utf8_lossy(&g.out), "hello from origin.test /after\n");
    s.proxy.assert_released(&base, "a full intercepted request after the half-sent hellos");
}

#[test]
fn ca_init_refuses_to_overwrite_and_key_is_0600() {
    let tmp = TempDir::new("cainit");
    let dir = tmp.join("ca");
    let run = || Command::new(BIN).args(["ca", "init", "--dir"]).arg(&dir).output().expect("run sluice ca init");
    let first = run();
    assert!(first.status.success(), "first init failed: {}", String::from_utf8_lossy(&first.stderr));
    let key = dir.join("ca.key");
    let pem = dir.join("ca.pem");
    let mode = fs::metadata(&key).expect("ca.key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "ca.key mode {mode:o}");
    let cert_before = fs::read(&pem).expect("ca.pem");
    let key_before = fs::read(&key).unwrap();
    let subj = Command::new("openssl").args(["x509", "-noout", "-subject", "-in"]).arg(&pem).output().unwrap();
    assert!(String::from_utf8_lossy(&subj.stdout).contains("Sluice Interception CA"), "{subj:?}");

    let second = run();
    assert!(!second.status.success(), "second init on the same dir succeeded");
    assert!(!String::from_utf8_lossy(&second.stderr).trim().is_empty(), "second init failed without saying why");
    assert_eq!(fs::read(&pem).unwrap(), cert_before, "ca.pem was overwritten");
    assert_eq!(fs::read(&key).unwrap(), key_before, "ca.key was overwritten");
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
}
