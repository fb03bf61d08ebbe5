//! TLS interception end to end: forged leaves signed by the Sluice CA (checked with curl
//! and `openssl s_client`), upstream verification (untrusted, wrong name, expired → 502),
//! passthrough names, TLS inside CONNECT (`--intercept-connect`), the forged-certificate
//! cache (and its bound), half-sent ClientHellos, and `sluice ca init`.
//!
//! Origins are small python3 `ssl` HTTP/1.1 servers on port 443 of a distinct
//! 127.77.x.y address per origin (so `--resolve NAME:IP` gives `NAME:443`); their
//! certificates come from per-run test CAs made with openssl.

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

    /// A leaf for `sans` that expired on 2020-01-01 (`openssl ca -startdate/-enddate`).
    fn expired_leaf(&self, stem: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
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
                "20190101000000Z",
                "-enddate",
                "20200101000000Z",
                "-extfile",
                &format!("{stem}.ext"),
            ],
            d,
        );
        (self.dir.join(&format!("{stem}.pem")), self.dir.join(&format!("{stem}.key")))
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

/// Sum of the samples of `family` whose label set contains `label` (e.g. `result="ok"`);
/// 0 when there is none yet.
fn labeled(proxy: &Proxy, family: &str, label: &str) -> f64 {
    let text = proxy.metrics().expect("metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Polls [`labeled`] (up to 3 s) until it reaches `min`; returns the last value.
fn wait_labeled(proxy: &Proxy, family: &str, label: &str, min: f64) -> f64 {
    let mut v = 0.0;
    wait_until(Duration::from_secs(3), || {
        v = labeled(proxy, family, label);
        v >= min
    });
    v
}

/// A counter that may not be exported before its first bump.
fn counter(proxy: &Proxy, family: &str) -> f64 {
    metric_sum(&proxy.metrics().expect("metrics"), family).unwrap_or(0.0)
}

/// Workers publish their counters every ~100 ms: waits (up to 3 s) for `pred` to hold,
/// then lets a few more publish ticks pass and returns the value then.
fn settled(proxy: &Proxy, family: &str, pred: impl Fn(f64) -> bool) -> f64 {
    wait_until(Duration::from_secs(3), || pred(counter(proxy, family)));
    std::thread::sleep(Duration::from_millis(350));
    counter(proxy, family)
}

/// A trusted origin CA with a leaf for origin.test, a python origin serving it, and a
/// proxy that resolves origin.test to it and trusts the origin CA.
struct Setup {
    pki: Pki,
    origin: PyOrigin,
    proxy: Proxy,
}

fn setup(config: &str, extra: &[&str]) -> Setup {
    let pki = Pki::new("Origin Test CA");
    let (cert, key) = pki.leaf("origin", &["origin.test"]);
    let origin = PyOrigin::start(&cert, &key, "origin.test");
    let mut b = Proxy::builder(config)
        .resolve("origin.test", &origin.ip)
        .arg("--upstream-ca")
        .arg(pki.ca_pem.to_str().unwrap());
    for a in extra {
        b = b.arg(a);
    }
    let proxy = b.start();
    Setup { pki, origin, proxy }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn get_and_post_1mib_through_interception() {
    let s = setup("", &[]);
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
    assert!(wait_labeled(&s.proxy, "sluice_tls_handshakes_total", "result=\"ok\"", 2.0) >= 2.0);
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
    let ca = sluice_ca(&s.proxy);
    let before = labeled(&s.proxy, "sluice_tls_handshakes_total", "result=\"ok\"");
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
    let after = wait_labeled(&s.proxy, "sluice_tls_handshakes_total", "result=\"ok\"", before + 4.0);
    assert!(after >= before + 4.0, "handshakes ok went {before} -> {after}");
    // A client that does not trust the Sluice CA refuses the forged leaf.
    let (text, _) = s_client(s.proxy.port, "origin.test", &s.pki.ca_pem, &["-verify_return_error"]);
    assert!(!text.contains("Verify return code: 0 (ok)"), "forged leaf verified against the origin CA:\n{text}");
}

#[test]
fn untrusted_origin_is_502_with_reason_and_counted() {
    let rogue = Pki::new("Rogue Test CA");
    let (cert, key) = rogue.leaf("rogue", &["rogue.test"]);
    let origin = PyOrigin::start(&cert, &key, "rogue.test");
    let trusted = Pki::new("Origin Test CA");
    let proxy = Proxy::builder("")
        .resolve("rogue.test", &origin.ip)
        .arg("--upstream-ca")
        .arg(trusted.ca_pem.to_str().unwrap())
        .start();
    let before = counter(&proxy, "sluice_upstream_verify_failures_total");
    let g = curl_tls(&proxy, "rogue.test", &[], &["/"]);
    assert_eq!((g.exit, g.status()), (0, 502), "{}", g.describe());
    let body = String::from_utf8_lossy(&g.out).to_lowercase();
    assert!(body.contains("trusted") || body.contains("issuer"), "502 body does not give the reason: {body:?}");
    assert!(!body.contains("hello from"), "origin content leaked: {body:?}");
    let after = settled(&proxy, "sluice_upstream_verify_failures_total", |v| v > before);
    assert!(after > before, "sluice_upstream_verify_failures_total {before} -> {after}");
    assert!(wait_labeled(&proxy, "sluice_upstream_verify_failures_total", "unknown_issuer", 1.0) >= 1.0);
}

#[test]
fn wrong_name_origin_is_502() {
    let s = setup("", &[]);
    // wrong.test resolves to the origin, whose certificate covers only origin.test.
    let proxy = Proxy::builder("")
        .resolve("wrong.test", &s.origin.ip)
        .arg("--upstream-ca")
        .arg(s.pki.ca_pem.to_str().unwrap())
        .start();
    let g = curl_tls(&proxy, "wrong.test", &[], &["/"]);
    assert_eq!((g.exit, g.status()), (0, 502), "{}", g.describe());
    let body = String::from_utf8_lossy(&g.out).to_lowercase();
    assert!(body.contains("name"), "502 body does not give the reason: {body:?}");
    assert!(wait_labeled(&proxy, "sluice_upstream_verify_failures_total", "wrong_name", 1.0) >= 1.0);
    // The right name on the same origin still works.
    let g = curl_tls(&s.proxy, "origin.test", &[], &["/"]);
    assert_eq!((g.exit, g.status()), (0, 200), "{}", g.describe());
}

#[test]
fn expired_origin_certificate_is_502() {
    let pki = Pki::new("Origin Test CA");
    let (cert, key) = pki.expired_leaf("expired", &["expired.test"]);
    let origin = PyOrigin::start(&cert, &key, "expired.test");
    let proxy = Proxy::builder("")
        .resolve("expired.test", &origin.ip)
        .arg("--upstream-ca")
        .arg(pki.ca_pem.to_str().unwrap())
        .start();
    let g = curl_tls(&proxy, "expired.test", &[], &["/"]);
    assert_eq!((g.exit, g.status()), (0, 502), "{}", g.describe());
    let body = String::from_utf8_lossy(&g.out).to_lowercase();
    assert!(body.contains("expired"), "502 body does not give the reason: {body:?}");
    assert!(wait_labeled(&proxy, "sluice_upstream_verify_failures_total", "expired", 1.0) >= 1.0);
}

#[test]
fn passthrough_name_shows_the_origin_certificate() {
    let pki = Pki::new("Origin Test CA");
    let (cert, key) = pki.leaf("pass", &["pass.test"]);
    let origin = PyOrigin::start(&cert, &key, "pass.test");
    let proxy = Proxy::builder("")
        .resolve("pass.test", &origin.ip)
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
    assert!(wait_labeled(&proxy, "sluice_tls_handshakes_total", "result=\"passthrough\"", 2.0) >= 2.0);
    assert_eq!(
        settled(&proxy, "sluice_certs_minted_total", |_| true),
        0.0,
        "a certificate was minted for a passthrough name"
    );
}

#[test]
fn intercept_connect_forges_the_certificate_for_curl_p() {
    let s = setup("", &["--intercept-connect"]);
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "20", "-p", "-x"])
        .arg(s.proxy.url())
        .arg("--cacert")
        .arg(sluice_ca(&s.proxy))
        .arg("https://origin.test/tunnelled")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl -p failed: {err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from origin.test /tunnelled\n", "{err}");
    let issuer = err.lines().find(|l| l.contains("issuer:")).unwrap_or("");
    assert!(issuer.contains("Sluice Interception CA"), "issuer {issuer:?}\n{err}");
    assert!(settled(&s.proxy, "sluice_certs_minted_total", |v| v >= 1.0) >= 1.0);
}

fn many_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("n{i}.many.test")).collect()
}

fn many_setup(config: &str, names: &[String]) -> (Pki, PyOrigin, Proxy) {
    let pki = Pki::new("Origin Test CA");
    let (cert, key) = pki.leaf("many", &["*.many.test"]);
    let origin = PyOrigin::start(&cert, &key, "many");
    // One worker: the certificate cache is per worker.
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
    let minted = settled(&proxy, "sluice_certs_minted_total", |v| v >= 50.0);
    assert!(minted >= 50.0, "minted {minted} certificates for 50 names");
    let hits = settled(&proxy, "sluice_cert_cache_hits_total", |_| true);
    get_name(&proxy, "n17.many.test");
    let hits2 = settled(&proxy, "sluice_cert_cache_hits_total", |v| v > hits);
    assert!(hits2 > hits, "cache hits {hits} -> {hits2}");
    let minted2 = counter(&proxy, "sluice_certs_minted_total");
    assert_eq!(minted2, minted, "a repeat name minted again");
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
    // Again, in the same order: with room for 10, the early names were evicted and are
    // minted afresh (and still correct).
    let minted = settled(&proxy, "sluice_certs_minted_total", |v| v >= 50.0);
    assert!(minted >= 50.0, "minted {minted}");
    for n in &names[..5] {
        get_name(&proxy, n);
    }
    let minted2 = settled(&proxy, "sluice_certs_minted_total", |v| v >= minted + 5.0);
    assert!(minted2 > minted, "first names never evicted from a 10-entry cache ({minted} -> {minted2})");
    assert!(proxy.alive(), "proxy died");
}

#[test]
fn partial_client_hellos_do_not_leak_connections() {
    let s = setup("", &[]);
    // A TLS record header announcing a 512-byte handshake message, then only a few bytes.
    let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    partial.extend_from_slice(&[0x42; 20]);
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut c = TcpStream::connect(s.proxy.addr()).expect("connect");
        c.write_all(&partial).expect("send partial ClientHello");
        held.push(c);
    }
    let open = s.proxy.wait_metric("sluice_connections_active", Duration::from_secs(3), |v| v >= 30.0);
    assert!(open.is_ok(), "30 held connections not counted: {open:?}");
    drop(held);
    let r = s.proxy.wait_metric("sluice_connections_active", Duration::from_secs(5), |v| v == 0.0);
    assert!(r.is_ok(), "connections leaked after the clients went away: {r:?}");
    let g = curl_tls(&s.proxy, "origin.test", &[], &["/after"]);
    assert_eq!((g.exit, g.status()), (0, 200), "{}", g.describe());
    assert_eq!(String::from_utf8_lossy(&g.out), "hello from origin.test /after\n");
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
