//! Runtime configuration: the one `Config` every worker reads, its embedded defaults,
//! the TOML file format, and the merge of command-line flags over the file.
//!
//! An empty TOML file is a valid config: every key has a default. Unknown keys are
//! refused with the key's name so typos never pass silently.

use crate::accesslog::LogFormat;
use crate::acl::Cidr;
use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod h2;
mod resolver;
pub use h2::{CleartextOrigin, H2Config};
pub use resolver::{parse_nameserver, ResolverConfig};

/// Everything a worker needs to run. Built once at start (and, later, on reload), then
/// shared read-only (`Arc<Config>`) by the workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// TCP listeners for client traffic (explicit proxy and transparent/Host-header style).
    pub listen: Vec<SocketAddr>,
    /// UDP listeners for QUIC (HTTP/3); unused until HTTP/3 lands.
    pub quic_listen: Vec<SocketAddr>,
    /// The admin endpoint (metrics, health).
    pub admin: Option<SocketAddr>,
    /// Worker threads; `None` = one per CPU in the process's affinity mask.
    pub workers: Option<usize>,
    /// Where the interception CA lives (`ca.pem`, `ca.key`).
    pub ca_dir: PathBuf,
    /// Extra trust anchors for upstream TLS verification (PEM files).
    pub upstream_ca: Vec<PathBuf>,
    /// Names pinned to addresses, like curl's `--resolve NAME:ADDR`.
    pub resolve: Vec<(String, std::net::IpAddr)>,
    /// Server names never intercepted (exact, or `*.suffix`).
    pub passthrough: Vec<String>,
    /// Detect and intercept TLS inside CONNECT tunnels.
    pub intercept_connect: bool,
    /// Ports a CONNECT may target (Squid's default: 443 only).
    pub connect_ports: Vec<u16>,
    /// Protocols an HTTP/1.1 `Upgrade` may switch to (lower-case names, e.g.
    /// `websocket`); the Upgrade of any other is stripped. Never `h2c`.
    pub upgrade_protocols: Vec<String>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub pool: PoolConfig,
    /// Registered 64 KiB slabs per worker.
    pub slabs_per_worker: usize,
    /// Forged server configs kept per worker (LRU), keyed by server name.
    pub cert_cache_size: usize,
    /// Where access log lines go: `None` = no access log (`"off"`), `Some("stdout")` =
    /// standard output, anything else a file path (opened for appending).
    pub access_log: Option<String>,
    /// The access log line format.
    pub access_log_format: LogFormat,
    /// Diagnostics on stderr: a level (`debug`) or filter directives
    /// (`info,sluice::conn=debug`). `None`: `RUST_LOG`, else `info` (see `crate::logging`).
    pub log_level: Option<String>,
    /// Client addresses allowed to use the proxy; others are refused. Empty = nobody.
    pub allow_clients: Vec<Cidr>,
    /// Proxy authentication (`[auth]`): off unless a credentials file is named.
    pub auth: crate::auth::AuthConfig,
    /// Destination addresses never connected to (checked on the resolved address: SSRF
    /// defence). Empty = any destination.
    pub deny_destinations: Vec<Cidr>,
    /// Who may reach this machine itself (loopback, its interfaces' addresses).
    pub local_targets: LocalTargets,
    /// What the origin is told about the client (`Forwarded`, `X-Forwarded-For`).
    pub forwarding: crate::forwarding::Forwarding,
    /// The name resolver (`[resolver]`).
    pub resolver: ResolverConfig,
    /// HTTP/2 on the client leg (`[h2]`).
    pub h2: H2Config,
}

/// Who may have the proxy connect to this machine itself: loopback and the addresses of
/// its own interfaces, where its admin endpoint and other local services listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalTargets {
    /// Only clients that are themselves on loopback (tools and tests on the box).
    #[default]
    LoopbackClients,
    /// Nobody.
    Deny,
    /// Every client (the behaviour of a plain forward proxy; only behind a firewall).
    Allow,
}

/// Size and count limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request or response head (request line + headers), bytes. Over it: 431/502.
    pub max_header_bytes: usize,
    /// Most header fields in one head.
    pub max_headers: usize,
    /// Most client connections a worker holds open at once; over it new ones are closed.
    /// None: as many as the descriptor limit allows (sized at start, two per client).
    pub max_connections_per_worker: Option<usize>,
    /// I/O buffer memory a worker may lend, in MiB (registered slabs included): past it
    /// reads that need a new buffer wait and new clients are refused.
    pub buffer_mib_per_worker: usize,
}

impl Limits {
    /// The client cap in force: `max_connections_per_worker` within the `fd_clients` a
    /// worker's share of the descriptor limit holds.
    pub fn client_cap(&self, fd_clients: u64) -> u64 {
        self.max_connections_per_worker.map_or(fd_clients, |c| fd_clients.min(c as u64))
    }
}

/// Every deadline the proxy enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// From the first byte of a request head (or from accept) to the end of the head: slowloris defence. 408.
    pub request_head: Duration,
    /// An idle keep-alive client connection between requests; closed quietly.
    pub client_idle: Duration,
    /// DNS + TCP connect to the origin. 504.
    pub upstream_connect: Duration,
    /// From the request being sent to the response head arriving. 504.
    pub upstream_response: Duration,
    /// No progress on an established body transfer or tunnel in either direction.
    pub io_idle: Duration,
    /// On SIGTERM/SIGINT: how long in-flight requests may take to finish before what is
    /// left is closed. Zero closes everything at once.
    pub drain: Duration,
    /// While reads wait for the buffer budget: a connection holding buffers whose writes
    /// have not moved for this long is closed (oldest first), so stuck readers cannot hold
    /// the budget until `io_idle`.
    pub buffer_stall: Duration,
}

/// The per-worker upstream connection pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// At most this many idle connections per (host, port) (the oldest evicted past it):
    /// a bound on descriptors, not a tuning knob (see `upstream::pool`).
    pub max_idle_per_host: usize,
    /// At most this many idle connections per worker in all.
    pub max_idle_total: usize,
    /// At most this many connections per (host, port) and worker, in use or idle; past
    /// it requests wait in a queue for one to free up (up to `timeouts.upstream_connect`).
    /// 0: no limit.
    pub max_connections_per_host: usize,
    /// An idle pooled connection older than this is closed.
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            quic_listen: Vec::new(),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            workers: None,
            ca_dir: PathBuf::from("CA"),
            upstream_ca: Vec::new(),
            resolve: Vec::new(),
            passthrough: Vec::new(),
            intercept_connect: false,
            connect_ports: vec![443],
            upgrade_protocols: vec!["websocket".to_string()],
            limits: Limits {
                max_header_bytes: MAX_HEAD_BYTES,
                max_headers: 100,
                max_connections_per_worker: None,
                buffer_mib_per_worker: 128,
            },
            timeouts: Timeouts {
                request_head: Duration::from_secs(10),
                client_idle: Duration::from_secs(60),
                upstream_connect: Duration::from_secs(10),
                upstream_response: Duration::from_secs(60),
                io_idle: Duration::from_secs(300),
                buffer_stall: Duration::from_secs(10),
                drain: Duration::from_secs(30),
            },
            pool: PoolConfig {
                max_idle_per_host: 1024,
                max_idle_total: 4096,
                max_connections_per_host: 1024,
                idle_timeout: Duration::from_secs(30),
            },
            slabs_per_worker: 1024,
            cert_cache_size: 1000,
            access_log: None,
            access_log_format: LogFormat::Common,
            log_level: None,
            allow_clients: crate::acl::default_allow_clients(),
            auth: crate::auth::AuthConfig::default(),
            deny_destinations: crate::acl::default_deny_destinations(),
            local_targets: LocalTargets::default(),
            forwarding: crate::forwarding::Forwarding::default(),
            resolver: ResolverConfig::default(),
            h2: H2Config::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a configuration was refused. Its `Display` is one line that says what and where,
/// ready to print after `sluice: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    origin: Origin,
    /// The dotted key the error is about (`timeouts.request_head`), when known.
    key: Option<String>,
    message: String,
    line: Option<usize>,
}

/// Where the offending setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// TOML text given to [`parse_str`], or a merged config with no file behind it.
    Text,
    /// A config file.
    File(PathBuf),
    /// A command-line flag and the value it was given.
    Flag { flag: String, value: String },
    /// A value set by a command-line flag that failed a check across settings.
    CommandLine,
}

impl ConfigError {
    fn new(origin: Origin, key: Option<String>, message: impl Into<String>) -> Self {
        // Keep the promise of one line whatever a parser below us says.
        let message = message.into().replace('\n', "; ");
        ConfigError { origin, key, message, line: None }
    }

    /// An invalid value for a command-line flag, e.g. `--resolve "foo": expected NAME:ADDR`.
    pub fn flag(flag: &str, value: &str, message: impl Into<String>) -> Self {
        ConfigError::new(Origin::Flag { flag: flag.to_string(), value: value.to_string() }, None, message)
    }

    /// A setting that fails [`Config::validate`].
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::new(Origin::Text, Some(key.to_string()), message)
    }

    fn in_file(mut self, path: &Path) -> Self {
        if matches!(self.origin, Origin::Text) {
            self.origin = Origin::File(path.to_path_buf());
        }
        self
    }

    /// What is wrong, without the where.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The dotted config key the error is about, when known (`limits.max_headers`).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// 1-based line in the TOML text, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Text => f.write_str("config: ")?,
            Origin::File(path) => write!(f, "config {}: ", path.display())?,
            Origin::Flag { flag, value } => write!(f, "{flag} {value:?}: ")?,
            Origin::CommandLine => f.write_str("command line: ")?,
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------------------
// Values shared by the file and the command line
// ---------------------------------------------------------------------------------------

/// Longest timeout accepted: 30 days. Longer values are typos, and would overflow
/// deadline arithmetic.
const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// Shortest timeout accepted: 1 ms, the timer granularity.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Most workers accepted; more is a typo.
const MAX_WORKERS: usize = 1024;
/// io_uring registers at most this many fixed buffers.
const MAX_SLABS: usize = 16384;
const MIN_SLABS: usize = 16;
/// The largest head a connection can hold: one 64 KiB buffer less the room kept in front
/// for rewriting it (62 KiB). `limits.max_header_bytes` cannot promise more.
pub const MAX_HEAD_BYTES: usize = uring::SLAB_SIZE - crate::conn::buf::HEADROOM;

/// Parses a listener address `IP:PORT` (`127.0.0.1:8080`, `[::1]:8080`).
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080".to_string())
}

/// Parses the admin address: `IP:PORT`, or `off` to disable the admin endpoint.
pub fn parse_admin(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| "expected IP:PORT (e.g. 127.0.0.1:9090) or \"off\"".to_string())
}

/// Parses `NAME:ADDR` like curl's `--resolve` (without the port): `origin.test:127.0.0.5`,
/// `v6.test:::1` or `v6.test:[::1]`. The name is lower-cased.
pub fn parse_resolve(s: &str) -> Result<(String, IpAddr), String> {
    const EXPECTED: &str = "expected NAME:ADDR";
    let Some((name, addr)) = s.split_once(':') else {
        return Err(EXPECTED.to_string());
    };
    if name.is_empty() || addr.is_empty() {
        return Err(EXPECTED.to_string());
    }
    let name = check_name(name).map_err(|e| format!("{EXPECTED}: {e}"))?;
    let bare = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(addr);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok((name, ip)),
        Err(_) => {
            // curl's HOST:PORT:ADDR form: say why it is refused.
            let port_form = addr
                .split_once(':')
                .is_some_and(|(port, rest)| port.parse::<u16>().is_ok() && rest.parse::<IpAddr>().is_ok());
            if port_form {
                Err(format!("{EXPECTED} (no port: the name is pinned for every port)"))
            } else {
                Err(format!("{EXPECTED}: {addr:?} is not an IP address"))
            }
        }
    }
}

/// Parses a passthrough pattern: a server name, or `*.suffix`. Lower-cased.
pub fn parse_passthrough(s: &str) -> Result<String, String> {
    let (wildcard, name) = match s.strip_prefix("*.") {
        Some(suffix) => ("*.", suffix),
        None => ("", s),
    };
    check_name(name)
        .map(|name| format!("{wildcard}{name}"))
        .map_err(|e| format!("expected a server name or *.suffix: {e}"))
}

/// Whether `name` (as a request named it: any case, maybe a trailing dot) matches a
/// pattern `parse_passthrough` accepted: the same name, or a subdomain of a `*.suffix`.
pub fn name_matches(name: &str, pattern: &str) -> bool {
    let name = name.trim_end_matches('.').as_bytes();
    match pattern.strip_prefix("*.").map(str::as_bytes) {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name[name.len() - suffix.len() - 1] == b'.'
        }
        None => name.eq_ignore_ascii_case(pattern.as_bytes()),
    }
}

/// Parses the access log target: `off` (no access log), `stdout` (or `-`, the same), or a
/// file path, absolute or relative to the working directory.
pub fn parse_access_log(s: &str) -> Result<Option<String>, String> {
    match s {
        "off" => Ok(None),
        "stdout" | "-" => Ok(Some("stdout".to_string())),
        path => check_log_path(path).map(|()| Some(path.to_string())),
    }
}

/// Parses a diagnostics level: `error`, `warn`, `info`, `debug`, `trace` or `off`, or
/// `tracing` filter directives (`info,sluice::conn=debug`). A bare word that is not a
/// level is refused: the directive syntax would take a typo (`debgu`) for a module name
/// and silently log nothing.
pub fn parse_log_level(s: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "expected error, warn, info, debug, trace, off, or directives such as \"info,sluice::conn=debug\"";
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let s = s.trim();
    let bare_word = |d: &str| !d.contains('=') && !LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l));
    if s.is_empty() || s.split(',').map(str::trim).any(|d| d.is_empty() || bare_word(d)) {
        return Err(EXPECTED.to_string());
    }
    match tracing_subscriber::EnvFilter::builder().parse(s) {
        Ok(_) => Ok(s.to_string()),
        Err(e) => Err(format!("{EXPECTED}: {e}")),
    }
}

/// Parses a protocol name an Upgrade may switch to (`websocket`): a token without a
/// version (every version of the name is allowed), lower-cased. `h2c` is refused: HTTP/2
/// over cleartext is never forwarded as an upgrade.
pub fn parse_upgrade_protocol(s: &str) -> Result<String, String> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if s.is_empty() || !s.chars().all(is_tchar) {
        return Err(format!("{s:?} is not a protocol name (a token such as \"websocket\", without a version)"));
    }
    let name = s.to_ascii_lowercase();
    if name == crate::h1::H2C {
        return Err("h2c (HTTP/2 over cleartext) is never forwarded as an upgrade".to_string());
    }
    Ok(name)
}

/// Checks an access log file path: non-empty text naming a file, not a directory.
fn check_log_path(path: &str) -> Result<(), String> {
    if path.trim().is_empty() {
        return Err("expected \"off\", \"stdout\" or a file path".to_string());
    }
    if path.chars().any(char::is_control) {
        return Err("a file path must not contain control characters".to_string());
    }
    if path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..") || path == "." || path == ".." {
        return Err("names a directory; expected a file path".to_string());
    }
    Ok(())
}

/// Checks a DNS name (letters, digits, `-`, `_`, dot-separated labels) and lower-cases it.
fn check_name(name: &str) -> Result<String, String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err("empty or over-long name".to_string());
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("bad label in {name:?}"));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(format!("{c:?} is not allowed in a name"));
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

impl Config {
    /// Checks every setting against its allowed range. The error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid("listen", "at least one listen address is required"));
        }
        if let Some(dup) = first_duplicate(&self.listen) {
            return Err(ConfigError::invalid("listen", format!("{dup} is listed twice")));
        }
        if let Some(dup) = first_duplicate(&self.quic_listen) {
            return Err(ConfigError::invalid("quic_listen", format!("{dup} is listed twice")));
        }
        if let Some(admin) = self.admin {
            if self.listen.contains(&admin) {
                return Err(ConfigError::invalid("admin", format!("{admin} is also a listen address")));
            }
        }
        match self.workers {
            Some(0) => return Err(ConfigError::invalid("workers", "must be at least 1")),
            Some(n) if n > MAX_WORKERS => {
                return Err(ConfigError::invalid("workers", format!("must be at most {MAX_WORKERS}, got {n}")))
            }
            _ => {}
        }
        if self.ca_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("ca_dir", "must not be empty"));
        }
        if self.upstream_ca.iter().any(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::invalid("upstream_ca", "a path must not be empty"));
        }
        for (name, _) in &self.resolve {
            check_name(name).map_err(|e| ConfigError::invalid("resolve", e))?;
        }
        for pattern in &self.passthrough {
            parse_passthrough(pattern).map_err(|e| ConfigError::invalid("passthrough", e))?;
        }
        if self.connect_ports.contains(&0) {
            return Err(ConfigError::invalid("connect_ports", "port 0 is not a port"));
        }
        for protocol in &self.upgrade_protocols {
            parse_upgrade_protocol(protocol).map_err(|e| ConfigError::invalid("upgrade_protocols", e))?;
        }
        in_range("slabs_per_worker", self.slabs_per_worker, MIN_SLABS, MAX_SLABS)?;
        in_range("cert_cache_size", self.cert_cache_size, 1, 1_000_000)?;
        let limits = &self.limits;
        in_range("limits.max_header_bytes", limits.max_header_bytes, 1024, MAX_HEAD_BYTES)?;
        in_range("limits.max_headers", limits.max_headers, 1, 1024)?;
        if let Some(cap) = limits.max_connections_per_worker {
            in_range("limits.max_connections_per_worker", cap, 1, usize::MAX)?;
        }
        in_range("limits.buffer_mib_per_worker", limits.buffer_mib_per_worker, 1, 1 << 20)?;
        let t = &self.timeouts;
        for (key, value) in [
            ("timeouts.request_head", t.request_head),
            ("timeouts.client_idle", t.client_idle),
            ("timeouts.upstream_connect", t.upstream_connect),
            ("timeouts.upstream_response", t.upstream_response),
            ("timeouts.io_idle", t.io_idle),
            ("timeouts.buffer_stall", t.buffer_stall),
            ("pool.idle_timeout", self.pool.idle_timeout),
        ] {
            if value < MIN_TIMEOUT || value > Duration::from_secs(MAX_TIMEOUT_SECS) {
                return Err(ConfigError::invalid(
                    key,
                    format!("must be between 0.001 and {MAX_TIMEOUT_SECS} seconds, got {}", value.as_secs_f64()),
                ));
            }
        }
        // Zero is allowed here: close whatever is in flight at once.
        if t.drain > Duration::from_secs(MAX_TIMEOUT_SECS) {
            return Err(ConfigError::invalid(
                "timeouts.drain",
                format!("must be between 0 and {MAX_TIMEOUT_SECS} seconds, got {}", t.drain.as_secs_f64()),
            ));
        }
        if let Some(target) = &self.access_log {
            check_log_path(target).map_err(|e| ConfigError::invalid("access_log", e))?;
        }
        if let Some(level) = &self.log_level {
            parse_log_level(level).map_err(|e| ConfigError::invalid("log_level", e))?;
        }
        self.auth.validate().map_err(|(key, e)| ConfigError::invalid(key, e))?;
        self.resolver.validate()?;
        self.h2.validate()?;
        // allow_clients and deny_destinations: any list is valid (`Cidr` cannot hold a bad
        // block). An empty allow_clients refuses every client, on purpose.
        Ok(())
    }

    /// The keys that differ between `self` (the config in force) and `new` and that only
    /// take effect on a restart: [`RESTART_KEYS`]. Empty when a SIGHUP reload can apply
    /// everything that changed. Lists compare in order.
    pub fn reloadable_diff(&self, new: &Config) -> Vec<&'static str> {
        let differs = [
            self.listen != new.listen,
            self.quic_listen != new.quic_listen,
            self.admin != new.admin,
            self.workers != new.workers,
            self.slabs_per_worker != new.slabs_per_worker,
            self.ca_dir != new.ca_dir,
            self.upstream_ca != new.upstream_ca,
            self.cert_cache_size != new.cert_cache_size,
        ];
        RESTART_KEYS.iter().zip(differs).filter(|(_, d)| *d).map(|(k, _)| *k).collect()
    }
}

/// Keys a SIGHUP reload cannot change (listeners, threads, registered buffers, the CA
/// and trust store, the per-worker certificate cache); every other key is reloadable.
pub const RESTART_KEYS: [&str; 8] =
    ["listen", "quic_listen", "admin", "workers", "slabs_per_worker", "ca_dir", "upstream_ca", "cert_cache_size"];

fn in_range(key: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(key, format!("must be at least {min}, got {value}")));
    }
    if value > max {
        return Err(ConfigError::invalid(key, format!("must be at most {max}, got {value}")));
    }
    Ok(())
}

fn first_duplicate<T: PartialEq>(items: &[T]) -> Option<&T> {
    items.iter().enumerate().find(|(i, a)| items[..*i].contains(a)).map(|(_, a)| a)
}

// ---------------------------------------------------------------------------------------
// Command-line overrides
// ---------------------------------------------------------------------------------------

/// Settings given on the command line, already parsed. `None` = not given, keep the
/// file's value. A list given at all replaces the file's list (it does not append).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub listen: Option<Vec<SocketAddr>>,
    pub quic_listen: Option<Vec<SocketAddr>>,
    /// `Some(None)` = `--admin off`.
    pub admin: Option<Option<SocketAddr>>,
    pub workers: Option<usize>,
    pub ca_dir: Option<PathBuf>,
    pub upstream_ca: Option<Vec<PathBuf>>,
    pub resolve: Option<Vec<(String, IpAddr)>>,
    pub passthrough: Option<Vec<String>>,
    /// `Some(true)` = `--intercept-connect`.
    pub intercept_connect: Option<bool>,
    pub connect_ports: Option<Vec<u16>>,
    /// `--log-level`, already checked by [`parse_log_level`].
    pub log_level: Option<String>,
}

impl Overrides {
    /// Writes every given setting over `config`.
    pub fn apply(&self, config: &mut Config) {
        fn put<T: Clone>(from: &Option<T>, to: &mut T) {
            if let Some(v) = from {
                *to = v.clone();
            }
        }
        put(&self.listen, &mut config.listen);
        put(&self.quic_listen, &mut config.quic_listen);
        put(&self.admin, &mut config.admin);
        if self.workers.is_some() {
            config.workers = self.workers;
        }
        put(&self.ca_dir, &mut config.ca_dir);
        put(&self.upstream_ca, &mut config.upstream_ca);
        put(&self.resolve, &mut config.resolve);
        put(&self.passthrough, &mut config.passthrough);
        put(&self.intercept_connect, &mut config.intercept_connect);
        put(&self.connect_ports, &mut config.connect_ports);
        if self.log_level.is_some() {
            config.log_level = self.log_level.clone();
        }
    }

    /// Whether the command line set this config key.
    fn sets(&self, key: &str) -> bool {
        match key {
            "listen" => self.listen.is_some(),
            "quic_listen" => self.quic_listen.is_some(),
            "admin" => self.admin.is_some(),
            "workers" => self.workers.is_some(),
            "ca_dir" => self.ca_dir.is_some(),
            "upstream_ca" => self.upstream_ca.is_some(),
            "resolve" => self.resolve.is_some(),
            "passthrough" => self.passthrough.is_some(),
            "intercept_connect" => self.intercept_connect.is_some(),
            "connect_ports" => self.connect_ports.is_some(),
            "log_level" => self.log_level.is_some(),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The TOML file
// ---------------------------------------------------------------------------------------

/// Reads and parses a config file over the defaults, then validates it.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let (mut config, lines) = read_file(path)?;
    config.validate().map_err(|e| lines.locate(e).in_file(path))?;
    read_credentials(&mut config).map_err(|e| e.in_file(path))?;
    Ok(config)
}

/// Parses TOML text over the defaults, then validates it.
pub fn parse_str(text: &str) -> Result<Config, ConfigError> {
    let (mut config, lines) = parse_unvalidated(text)?;
    config.validate().map_err(|e| lines.locate(e))?;
    read_credentials(&mut config)?;
    Ok(config)
}

/// Reads the credentials file `auth.file` names (at start, on `check-config` and on every
/// reload, so a changed file is picked up by SIGHUP and a broken one refused).
fn read_credentials(config: &mut Config) -> Result<(), ConfigError> {
    config.auth.load_credentials().map_err(|e| ConfigError::invalid("auth.file", e))
}

/// The whole start-up path: defaults, then the file (if any), then the command-line
/// overrides, then validation. Errors name the file and line, or the flag, at fault.
/// Call it again on reload with the same overrides.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (mut config, lines) = match path {
        Some(path) => read_file(path)?,
        None => (Config::default(), KeyLines::default()),
    };
    overrides.apply(&mut config);
    if let Err(err) = config.validate() {
        let by_flag = err.key().is_some_and(|k| overrides.sets(k));
        return Err(match path {
            _ if by_flag => ConfigError { origin: Origin::CommandLine, ..err },
            Some(path) => lines.locate(err).in_file(path),
            None => err,
        });
    }
    match path {
        Some(path) => read_credentials(&mut config).map_err(|e| e.in_file(path))?,
        None => read_credentials(&mut config)?,
    }
    Ok(config)
}

fn read_file(path: &Path) -> Result<(Config, KeyLines), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(Origin::File(path.to_path_buf()), None, format!("cannot read: {}", io_error_text(&e)))
    })?;
    parse_unvalidated(&text).map_err(|e| e.in_file(path))
}

/// `std::io::Error` text without the trailing ` (os error N)`.
fn io_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Lines of the keys a file set, so a validation error can say where.
#[derive(Debug, Default)]
struct KeyLines(Vec<(&'static str, usize)>);

impl KeyLines {
    fn locate(&self, mut err: ConfigError) -> ConfigError {
        if let Some(key) = err.key.as_deref() {
            err.line = self.0.iter().find(|(k, _)| *k == key).map(|(_, l)| *l);
        }
        err
    }
}

fn parse_unvalidated(text: &str) -> Result<(Config, KeyLines), ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    Ok(file.into_config(text))
}

/// Turns a toml/serde error into one line with the key and line number.
fn toml_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let msg = err.message();
    let Some(span) = err.span() else {
        return ConfigError::new(Origin::Text, None, msg);
    };
    let start = span.start.min(text.len());
    if !text.is_char_boundary(start) {
        return ConfigError::new(Origin::Text, None, msg);
    }
    let line_no = line_of(text, start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let table = enclosing_table(text, line_start, line, start - line_start);
    let qualify = |key: &str| match &table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    };

    let mut out = if let Some(rest) = msg.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        ConfigError::new(Origin::Text, None, format!("unknown key {:?}", qualify(name)))
    } else if msg == "duplicate key" {
        // The span is the repeated key itself.
        let name = text.get(start..span.end).unwrap_or_default().trim();
        ConfigError::new(Origin::Text, None, format!("duplicate key {:?}", qualify(name)))
    } else {
        // A value error points after the `=`; name the key on the left of it.
        let key = line.find('=').filter(|eq| line_start + eq < start).map(|eq| qualify(line[..eq].trim()));
        let message = msg
            .replace("expected usize", "expected a non-negative integer")
            .replace("expected u16", "expected a port number (1-65535)")
            .replace("expected a sequence", "expected an array");
        ConfigError::new(Origin::Text, key, message)
    };
    out.line = Some(line_no);
    out
}

/// The `[table]` a position is in: the header part before the position when it is on
/// a header line, else the nearest header above it.
fn enclosing_table(text: &str, line_start: usize, line: &str, col: usize) -> Option<String> {
    let header = |l: &str| {
        let l = l.trim();
        l.strip_prefix('[').and_then(|h| h.split(']').next()).map(|h| h.trim().to_string())
    };
    if line.trim_start().starts_with('[') {
        let before = line.get(..col)?.trim_start().strip_prefix('[')?;
        return Some(before.trim().trim_end_matches('.').trim().to_string());
    }
    text[..line_start].lines().rev().find_map(header)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// The file schema: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct FileConfig {
    listen: Option<Spanned<Vec<ListenValue>>>,
    quic_listen: Option<Spanned<Vec<ListenValue>>>,
    admin: Option<Spanned<AdminValue>>,
    workers: Option<Spanned<usize>>,
    ca_dir: Option<Spanned<PathBuf>>,
    upstream_ca: Option<Spanned<Vec<PathBuf>>>,
    resolve: Option<Spanned<Vec<ResolveValue>>>,
    passthrough: Option<Spanned<Vec<PassthroughValue>>>,
    intercept_connect: Option<Spanned<bool>>,
    connect_ports: Option<Spanned<Vec<u16>>>,
    upgrade_protocols: Option<Spanned<Vec<UpgradeProtocolValue>>>,
    slabs_per_worker: Option<Spanned<usize>>,
    cert_cache_size: Option<Spanned<usize>>,
    access_log: Option<Spanned<AccessLogValue>>,
    access_log_format: Option<Spanned<LogFormatValue>>,
    log_level: Option<Spanned<LogLevelValue>>,
    allow_clients: Option<Spanned<Vec<CidrValue>>>,
    deny_destinations: Option<Spanned<Vec<CidrValue>>>,
    local_targets: Option<Spanned<LocalTargets>>,
    auth: Option<AuthFile>,
    limits: Option<LimitsFile>,
    timeouts: Option<TimeoutsFile>,
    pool: Option<PoolFile>,
    forwarding: Option<ForwardingFile>,
    resolver: Option<resolver::ResolverFile>,
    h2: Option<h2::H2File>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct ForwardingFile {
    forwarded: Option<Spanned<crate::forwarding::ForwardMode>>,
    x_forwarded_for: Option<Spanned<crate::forwarding::ForwardMode>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct LimitsFile {
    max_header_bytes: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    max_connections_per_worker: Option<Spanned<usize>>,
    buffer_mib_per_worker: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct AuthFile {
    file: Option<Spanned<PathBuf>>,
    realm: Option<Spanned<String>>,
    max_failures: Option<Spanned<u32>>,
    lockout: Option<Spanned<Seconds>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct TimeoutsFile {
    request_head: Option<Spanned<Seconds>>,
    client_idle: Option<Spanned<Seconds>>,
    upstream_connect: Option<Spanned<Seconds>>,
    upstream_response: Option<Spanned<Seconds>>,
    io_idle: Option<Spanned<Seconds>>,
    drain: Option<Spanned<Seconds>>,
    buffer_stall: Option<Spanned<Seconds>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct PoolFile {
    max_idle_per_host: Option<Spanned<usize>>,
    max_idle_total: Option<Spanned<usize>>,
    max_connections_per_host: Option<Spanned<usize>>,
    idle_timeout: Option<Spanned<Seconds>>,
}

/// Records the line of each key it hands out.
struct Taker<'a> {
    text: &'a str,
    lines: KeyLines,
}

impl Taker<'_> {
    fn take<T>(&mut self, key: &'static str, value: Option<Spanned<T>>) -> Option<T> {
        value.map(|v| {
            self.lines.0.push((key, line_of(self.text, v.span().start)));
            v.into_inner()
        })
    }

    fn set<T>(&mut self, key: &'static str, value: Option<Spanned<T>>, slot: &mut T) {
        if let Some(v) = self.take(key, value) {
            *slot = v;
        }
    }

    fn set_list<T, U>(
        &mut self,
        key: &'static str,
        value: Option<Spanned<Vec<T>>>,
        slot: &mut Vec<U>,
        f: impl Fn(T) -> U,
    ) {
        if let Some(v) = self.take(key, value) {
            *slot = v.into_iter().map(f).collect();
        }
    }

    fn set_secs(&mut self, key: &'static str, value: Option<Spanned<Seconds>>, slot: &mut Duration) {
        if let Some(v) = self.take(key, value) {
            *slot = v.0;
        }
    }
}

impl FileConfig {
    fn into_config(self, text: &str) -> (Config, KeyLines) {
        let mut c = Config::default();
        let mut t = Taker { text, lines: KeyLines::default() };
        t.set_list("listen", self.listen, &mut c.listen, |a| a.0);
        t.set_list("quic_listen", self.quic_listen, &mut c.quic_listen, |a| a.0);
        if let Some(admin) = t.take("admin", self.admin) {
            c.admin = admin.0;
        }
        if let Some(workers) = t.take("workers", self.workers) {
            c.workers = Some(workers);
        }
        t.set("ca_dir", self.ca_dir, &mut c.ca_dir);
        t.set("upstream_ca", self.upstream_ca, &mut c.upstream_ca);
        t.set_list("resolve", self.resolve, &mut c.resolve, |r| r.0);
        t.set_list("passthrough", self.passthrough, &mut c.passthrough, |p| p.0);
        t.set("intercept_connect", self.intercept_connect, &mut c.intercept_connect);
        t.set("connect_ports", self.connect_ports, &mut c.connect_ports);
        t.set_list("upgrade_protocols", self.upgrade_protocols, &mut c.upgrade_protocols, |p| p.0);
        t.set("slabs_per_worker", self.slabs_per_worker, &mut c.slabs_per_worker);
        t.set("cert_cache_size", self.cert_cache_size, &mut c.cert_cache_size);
        if let Some(log) = t.take("access_log", self.access_log) {
            c.access_log = log.0;
        }
        if let Some(format) = t.take("access_log_format", self.access_log_format) {
            c.access_log_format = format.0;
        }
        if let Some(level) = t.take("log_level", self.log_level) {
            c.log_level = Some(level.0);
        }
        t.set_list("allow_clients", self.allow_clients, &mut c.allow_clients, |b| b.0);
        t.set_list("deny_destinations", self.deny_destinations, &mut c.deny_destinations, |b| b.0);
        t.set("local_targets", self.local_targets, &mut c.local_targets);

        let f = self.forwarding.unwrap_or_default();
        t.set("forwarding.forwarded", f.forwarded, &mut c.forwarding.forwarded);
        t.set("forwarding.x_forwarded_for", f.x_forwarded_for, &mut c.forwarding.x_forwarded_for);

        let a = self.auth.unwrap_or_default();
        if let Some(file) = t.take("auth.file", a.file) {
            c.auth.file = Some(file);
        }
        t.set("auth.realm", a.realm, &mut c.auth.realm);
        t.set("auth.max_failures", a.max_failures, &mut c.auth.max_failures);
        t.set_secs("auth.lockout", a.lockout, &mut c.auth.lockout);

        let l = self.limits.unwrap_or_default();
        t.set("limits.max_header_bytes", l.max_header_bytes, &mut c.limits.max_header_bytes);
        t.set("limits.max_headers", l.max_headers, &mut c.limits.max_headers);
        if let Some(cap) = t.take("limits.max_connections_per_worker", l.max_connections_per_worker) {
            c.limits.max_connections_per_worker = Some(cap);
        }
        t.set("limits.buffer_mib_per_worker", l.buffer_mib_per_worker, &mut c.limits.buffer_mib_per_worker);

        let to = self.timeouts.unwrap_or_default();
        let ct = &mut c.timeouts;
        t.set_secs("timeouts.request_head", to.request_head, &mut ct.request_head);
        t.set_secs("timeouts.client_idle", to.client_idle, &mut ct.client_idle);
        t.set_secs("timeouts.upstream_connect", to.upstream_connect, &mut ct.upstream_connect);
        t.set_secs("timeouts.upstream_response", to.upstream_response, &mut ct.upstream_response);
        t.set_secs("timeouts.io_idle", to.io_idle, &mut ct.io_idle);
        t.set_secs("timeouts.drain", to.drain, &mut ct.drain);
        t.set_secs("timeouts.buffer_stall", to.buffer_stall, &mut ct.buffer_stall);

        let p = self.pool.unwrap_or_default();
        t.set("pool.max_idle_per_host", p.max_idle_per_host, &mut c.pool.max_idle_per_host);
        t.set("pool.max_idle_total", p.max_idle_total, &mut c.pool.max_idle_total);
        t.set("pool.max_connections_per_host", p.max_connections_per_host, &mut c.pool.max_connections_per_host);
        t.set_secs("pool.idle_timeout", p.idle_timeout, &mut c.pool.idle_timeout);
        self.resolver.unwrap_or_default().apply(&mut t, &mut c.resolver);
        self.h2.unwrap_or_default().apply(&mut t, &mut c.h2);

        (c, t.lines)
    }
}

/// Deserializes a string through one of the `parse_*` functions above.
macro_rules! string_value {
    ($name:ident, $ty:ty, $parse:expr) => {
        #[derive(Debug)]
        struct $name($ty);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map($name).map_err(|e| de::Error::custom(format!("{s:?}: {e}")))
            }
        }
    };
}

string_value!(ListenValue, SocketAddr, parse_socket_addr);
string_value!(AdminValue, Option<SocketAddr>, parse_admin);
string_value!(ResolveValue, (String, IpAddr), parse_resolve);
string_value!(PassthroughValue, String, parse_passthrough);
string_value!(AccessLogValue, Option<String>, parse_access_log);
string_value!(LogLevelValue, String, parse_log_level);
string_value!(UpgradeProtocolValue, String, parse_upgrade_protocol);

/// Deserializes a string through the type's `FromStr`, whose error already quotes the value.
macro_rules! from_str_value {
    ($name:ident, $ty:ty) => {
        #[derive(Debug)]
        struct $name($ty);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse::<$ty>().map($name).map_err(de::Error::custom)
            }
        }
    };
}

from_str_value!(LogFormatValue, LogFormat);
from_str_value!(CidrValue, Cidr);

/// A duration in seconds: an integer or a fractional number (`0.5`).
#[derive(Debug)]
struct Seconds(Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of seconds (e.g. 10 or 0.5)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(|v| Seconds(Duration::from_secs(v)))
                    .map_err(|_| E::custom(format!("{v} seconds: must not be negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                Duration::try_from_secs_f64(v)
                    .map(Seconds)
                    .map_err(|_| E::custom(format!("{v} seconds: not a usable duration")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn err(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    const FULL: &str = r#"
listen = ["127.0.0.1:8081", "[::1]:8082"]
quic_listen = ["127.0.0.1:8443"]
admin = "127.0.0.1:9191"
workers = 2
ca_dir = "/var/lib/sluice/CA"
upstream_ca = ["/path/ca.pem", "/path/other.pem"]
resolve = ["origin.test:127.0.0.5", "v6.test:::1", "v6b.test:[fe80::2]"]
passthrough = ["bank.example", "*.apple.com"]
intercept_connect = true
connect_ports = [443, 8443]
upgrade_protocols = ["WebSocket", "foo"]
slabs_per_worker = 2048
cert_cache_size = 500
access_log = "/var/log/sluice/access.log"
access_log_format = "json"
log_level = "info,sluice::conn=debug"
allow_clients = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
deny_destinations = []
local_targets = "allow"
[limits]
max_header_bytes = 32768
max_headers = 50
max_connections_per_worker = 5000
buffer_mib_per_worker = 64
[timeouts]
request_head = 0.5
client_idle = 30
upstream_connect = 5
upstream_response = 45.25
io_idle = 600
drain = 2.5
buffer_stall = 3
[pool]
max_idle_per_host = 4
max_idle_total = 256
max_connections_per_host = 100
idle_timeout = 15
[forwarding]
forwarded = "replace"
x_forwarded_for = "off"
"#;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse_str("").unwrap(), Config::default());
        assert_eq!(parse_str("# only a comment\n\n").unwrap(), Config::default());
        assert_eq!(parse_str("[limits]\n[timeouts]\n[pool]\n").unwrap(), Config::default());
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn every_key_is_parsed() {
        let c = parse_str(FULL).unwrap();
        let expected = Config {
            listen: vec![addr("127.0.0.1:8081"), addr("[::1]:8082")],
            quic_listen: vec![addr("127.0.0.1:8443")],
            admin: Some(addr("127.0.0.1:9191")),
            workers: Some(2),
            ca_dir: PathBuf::from("/var/lib/sluice/CA"),
            upstream_ca: vec![PathBuf::from("/path/ca.pem"), PathBuf::from("/path/other.pem")],
            resolve: vec![
                ("origin.test".into(), "127.0.0.5".parse().unwrap()),
                ("v6.test".into(), "::1".parse().unwrap()),
                ("v6b.test".into(), "fe80::2".parse().unwrap()),
            ],
            passthrough: vec!["bank.example".into(), "*.apple.com".into()],
            intercept_connect: true,
            connect_ports: vec![443, 8443],
            upgrade_protocols: vec!["websocket".into(), "foo".into()],
            limits: Limits {
                max_header_bytes: 32768,
                max_headers: 50,
                max_connections_per_worker: Some(5000),
                buffer_mib_per_worker: 64,
            },
            timeouts: Timeouts {
                request_head: Duration::from_millis(500),
                client_idle: Duration::from_secs(30),
                upstream_connect: Duration::from_secs(5),
                upstream_response: Duration::from_millis(45250),
                io_idle: Duration::from_secs(600),
                drain: Duration::from_millis(2500),
                buffer_stall: Duration::from_secs(3),
            },
            pool: PoolConfig {
                max_idle_per_host: 4,
                max_idle_total: 256,
                max_connections_per_host: 100,
                idle_timeout: Duration::from_secs(15),
            },
            slabs_per_worker: 2048,
            cert_cache_size: 500,
            access_log: Some("/var/log/sluice/access.log".into()),
            access_log_format: LogFormat::Json,
            log_level: Some("info,sluice::conn=debug".into()),
            allow_clients: vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32"), cidr("192.0.2.7/32")],
            auth: crate::auth::AuthConfig::default(),
            deny_destinations: vec![],
            local_targets: LocalTargets::Allow,
            forwarding: crate::forwarding::Forwarding {
                forwarded: crate::forwarding::ForwardMode::Replace,
                x_forwarded_for: crate::forwarding::ForwardMode::Off,
            },
            resolver: ResolverConfig::default(),
            h2: H2Config::default(),
        };
        assert_eq!(c, expected);
    }

    #[test]
    fn a_partial_file_keeps_other_defaults() {
        let c = parse_str("workers = 3\n[timeouts]\nio_idle = 1\n").unwrap();
        let mut expected = Config { workers: Some(3), ..Config::default() };
        expected.timeouts.io_idle = Duration::from_secs(1);
        assert_eq!(c, expected);
    }

    #[test]
    fn the_auth_section_reads_its_credentials_file() {
        let dir = std::env::temp_dir().join(format!("sluice-config-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        let hash = crate::auth::users::hash_password(b"pw").unwrap();
        std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
        let text = format!("[auth]\nfile = {users:?}\nrealm = \"Office\"\nmax_failures = 3\nlockout = 2.5\n");
        let c = parse_str(&text).unwrap();
        assert_eq!(c.auth.file.as_deref(), Some(users.as_path()));
        assert_eq!((c.auth.realm.as_str(), c.auth.max_failures), ("Office", 3));
        assert_eq!(c.auth.lockout, Duration::from_millis(2500));
        assert!(c.auth.credentials.as_ref().is_some_and(|u| u.hash_of("alice").is_some()));
        // A broken or missing credentials file refuses the whole config, in one line.
        std::fs::write(&users, "alice\n").unwrap();
        let e = parse_str(&text).unwrap_err().to_string();
        assert_eq!(e, format!("config: auth.file: {}: line 1: expected user:hash", users.display()));
        let e = err("[auth]\nfile = \"/nonexistent/users\"\n");
        assert!(e.starts_with("config: auth.file: /nonexistent/users: cannot read: "), "{e}");
        assert_eq!(err("[auth]\nrealm = \"a\\\"b\"\n").lines().count(), 1);
        assert!(err("[auth]\nmax_failures = 0\n").starts_with("config: auth.max_failures: must be between 1 and 1000"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_off() {
        assert_eq!(parse_str("admin = \"off\"").unwrap().admin, None);
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        assert_eq!(err("workers = 1\n\nlistn = [\"127.0.0.1:1\"]\n"), "config: unknown key \"listn\" (line 3)");
        assert_eq!(
            err("[limits]\nmax_headers = 10\nmax_header = 5\n"),
            "config: unknown key \"limits.max_header\" (line 3)"
        );
        assert_eq!(
            err("[pool]\n[timeouts]\nrequest_hed = 1\n"),
            "config: unknown key \"timeouts.request_hed\" (line 3)"
        );
        assert_eq!(err("[limits.deeper]\nx = 1\n"), "config: unknown key \"limits.deeper\" (line 1)");
        assert_eq!(err("[nosuchtable]\n"), "config: unknown key \"nosuchtable\" (line 1)");
    }

    #[test]
    fn unknown_key_in_a_file_names_the_file() {
        let dir = std::env::temp_dir().join(format!("sluice-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, "# a\n\nlistn = []\n").unwrap();
        let e = load_file(&path).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(e.to_string(), format!("config {}: unknown key \"listn\" (line 3)", path.display()));
    }

    #[test]
    fn missing_file() {
        let e = load_file(Path::new("x-does-not-exist.toml")).unwrap_err();
        assert_eq!(e.to_string(), "config x-does-not-exist.toml: cannot read: No such file or directory");
    }

    #[test]
    fn bad_types_name_the_key_and_line() {
        assert_eq!(
            err("workers = \"two\""),
            "config: workers: invalid type: string \"two\", expected a non-negative integer (line 1)"
        );
        assert_eq!(
            err("workers = -1"),
            "config: workers: invalid value: integer `-1`, expected a non-negative integer (line 1)"
        );
        assert_eq!(
            err("listen = \"127.0.0.1:8080\""),
            "config: listen: invalid type: string \"127.0.0.1:8080\", expected an array (line 1)"
        );
        assert_eq!(
            err("intercept_connect = 1"),
            "config: intercept_connect: invalid type: integer `1`, expected a boolean (line 1)"
        );
        assert_eq!(
            err("connect_ports = [70000]"),
            "config: connect_ports: invalid value: integer `70000`, expected a port number (1-65535) (line 1)"
        );
        assert_eq!(
            err("\n[timeouts]\nclient_idle = \"60s\""),
            "config: timeouts.client_idle: invalid type: string \"60s\", expected a number of seconds (e.g. 10 or 0.5) (line 3)"
        );
        assert_eq!(
            err("[pool]\nidle_timeout = -2"),
            "config: pool.idle_timeout: -2 seconds: must not be negative (line 2)"
        );
        assert_eq!(err("limits = 3"), "config: limits: invalid type: integer `3`, expected a table (line 1)");
        assert_eq!(err("ca_dir = 5"), "config: ca_dir: invalid type: integer `5`, expected path string (line 1)");
    }

    #[test]
    fn bad_addresses() {
        assert_eq!(
            err("\nlisten = [\"127.0.0.1:1\",\n  \"localhost:80\"]"),
            "config: listen: \"localhost:80\": expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080 (line 2)"
        );
        assert_eq!(
            err("admin = \"\""),
            "config: admin: \"\": expected IP:PORT (e.g. 127.0.0.1:9090) or \"off\" (line 1)"
        );
        assert!(err("quic_listen = [\"::1:443\"]").starts_with("config: quic_listen: \"::1:443\""));
    }

    #[test]
    fn bad_resolve() {
        assert_eq!(err("resolve = [\"foo\"]"), "config: resolve: \"foo\": expected NAME:ADDR (line 1)");
        assert_eq!(
            err("resolve = [\"foo:bar\"]"),
            "config: resolve: \"foo:bar\": expected NAME:ADDR: \"bar\" is not an IP address (line 1)"
        );
        assert_eq!(
            err("resolve = [\"foo:443:127.0.0.1\"]"),
            "config: resolve: \"foo:443:127.0.0.1\": expected NAME:ADDR (no port: the name is pinned for every port) (line 1)"
        );
        assert!(err("resolve = [\":127.0.0.1\"]").contains("expected NAME:ADDR"));
        assert!(err("resolve = [\"foo:\"]").contains("expected NAME:ADDR"));
        assert!(err("resolve = [\"a..b:127.0.0.1\"]").contains("expected NAME:ADDR"));
        assert!(err("resolve = [\"a/b:127.0.0.1\"]").contains("expected NAME:ADDR"));
    }

    #[test]
    fn parse_resolve_forms() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(parse_resolve("Origin.Test:127.0.0.5"), Ok(("origin.test".into(), ip("127.0.0.5"))));
        assert_eq!(parse_resolve("h:::1"), Ok(("h".into(), ip("::1"))));
        assert_eq!(parse_resolve("h:[::1]"), Ok(("h".into(), ip("::1"))));
        assert_eq!(parse_resolve("h.test.:2001:db8::1"), Ok(("h.test".into(), ip("2001:db8::1"))));
        assert_eq!(parse_resolve("foo"), Err("expected NAME:ADDR".into()));
        assert!(parse_resolve("h:[::1").is_err());
    }

    #[test]
    fn passthrough_patterns() {
        assert_eq!(parse_passthrough("Bank.Example"), Ok("bank.example".into()));
        assert_eq!(parse_passthrough("*.apple.com"), Ok("*.apple.com".into()));
        assert_eq!(parse_passthrough("*.Apple.com."), Ok("*.apple.com".into()));
        assert!(parse_passthrough("*").is_err());
        assert!(parse_passthrough("a.*.com").is_err());
        assert!(parse_passthrough("").is_err());
        assert!(err("passthrough = [\"bad name\"]").starts_with("config: passthrough: \"bad name\""));
    }

    #[test]
    fn syntax_errors_are_one_line_with_a_line_number() {
        let e = parse_str("workers = 2\nthis is [not toml").unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(!e.to_string().contains('\n'), "{e}");
        assert_eq!(err("workers = 1\nworkers = 2\n"), "config: duplicate key \"workers\" (line 2)");
    }

    #[test]
    fn durations_accept_integers_and_fractions() {
        let c = parse_str("[timeouts]\nrequest_head = 0.25\nclient_idle = 2\n").unwrap();
        assert_eq!(c.timeouts.request_head, Duration::from_millis(250));
        assert_eq!(c.timeouts.client_idle, Duration::from_secs(2));
        assert!(err("[timeouts]\nio_idle = nan").contains("timeouts.io_idle"));
        assert!(err("[timeouts]\nio_idle = inf").contains("timeouts.io_idle"));
    }

    #[test]
    fn validation_names_key_and_line() {
        assert_eq!(err("listen = []"), "config: listen: at least one listen address is required (line 1)");
        assert_eq!(err("\nworkers = 0"), "config: workers: must be at least 1 (line 2)");
        assert_eq!(
            err("[timeouts]\n\nrequest_head = 0"),
            "config: timeouts.request_head: must be between 0.001 and 2592000 seconds, got 0 (line 3)"
        );
        assert_eq!(
            err("[limits]\nmax_header_bytes = 512"),
            "config: limits.max_header_bytes: must be at least 1024, got 512 (line 2)"
        );
        assert_eq!(
            err("[limits]\nmax_header_bytes = 65536"),
            "config: limits.max_header_bytes: must be at most 63488, got 65536 (line 2)"
        );
        assert_eq!(err("slabs_per_worker = 15"), "config: slabs_per_worker: must be at least 16, got 15 (line 1)");
        assert_eq!(
            err("slabs_per_worker = 16385"),
            "config: slabs_per_worker: must be at most 16384, got 16385 (line 1)"
        );
        assert_eq!(err("connect_ports = [443, 0]"), "config: connect_ports: port 0 is not a port (line 1)");
        assert_eq!(
            err("upgrade_protocols = [\"websocket\", \"h2c\"]"),
            "config: upgrade_protocols: \"h2c\": h2c (HTTP/2 over cleartext) is never forwarded as an upgrade (line 1)"
        );
        assert!(err("upgrade_protocols = [\"websocket/13\"]").contains("is not a protocol name"));
        assert!(err("upgrade_protocols = [\"\"]").contains("is not a protocol name"));
        assert!(err("upgrade_protocols = \"websocket\"").starts_with("config: upgrade_protocols: invalid type"));
        assert_eq!(
            err("listen = [\"127.0.0.1:1\", \"127.0.0.1:1\"]"),
            "config: listen: 127.0.0.1:1 is listed twice (line 1)"
        );
        assert_eq!(err("listen = [\"127.0.0.1:9090\"]"), "config: admin: 127.0.0.1:9090 is also a listen address");
        assert!(err("[limits]\nmax_headers = 0").contains("limits.max_headers: must be at least 1"));
        assert!(err("[limits]\nmax_headers = 1025").contains("limits.max_headers: must be at most 1024"));
        assert!(err("[limits]\nmax_connections_per_worker = 0").contains("must be at least 1"));
        assert!(err("[pool]\nidle_timeout = 0").contains("pool.idle_timeout"));
        assert!(err("[timeouts]\nio_idle = 0.0001").contains("timeouts.io_idle"));
        assert!(err("[timeouts]\nupstream_connect = 99999999").contains("timeouts.upstream_connect"));
        assert!(err("ca_dir = \"\"").contains("ca_dir: must not be empty"));
        assert!(err("upstream_ca = [\"\"]").contains("upstream_ca"));
        assert!(err("workers = 100000").contains("workers: must be at most"));
    }

    #[test]
    fn boundaries_are_accepted() {
        parse_str(
            "slabs_per_worker = 16\n[limits]\nmax_header_bytes = 1024\nmax_headers = 1\n\
             [timeouts]\nrequest_head = 0.001\n",
        )
        .unwrap();
        parse_str(
            "slabs_per_worker = 16384\nconnect_ports = []\n[limits]\nmax_header_bytes = 63488\n\
             max_headers = 1024\n[timeouts]\nio_idle = 2592000\n",
        )
        .unwrap();
    }

    #[test]
    fn validate_checks_programmatic_configs_too() {
        let mut c = Config::default();
        c.resolve.push(("bad name".into(), "127.0.0.1".parse().unwrap()));
        assert_eq!(c.validate().unwrap_err().key(), Some("resolve"));
        let mut c = Config::default();
        c.passthrough.push("*".into());
        assert_eq!(c.validate().unwrap_err().key(), Some("passthrough"));
        let c = Config { workers: Some(0), ..Config::default() };
        assert_eq!(c.validate().unwrap_err().to_string(), "config: workers: must be at least 1");
    }

    #[test]
    fn overrides_replace_and_load_validates() {
        let mut o = Overrides::default();
        let mut c = Config::default();
        o.apply(&mut c);
        assert_eq!(c, Config::default());
        o.listen = Some(vec![addr("127.0.0.1:1")]);
        o.admin = Some(None);
        o.workers = Some(2);
        o.connect_ports = Some(vec![443, 563]);
        let c = load(None, &o).unwrap();
        assert_eq!(c.listen, vec![addr("127.0.0.1:1")]);
        assert_eq!(c.admin, None);
        assert_eq!(c.workers, Some(2));
        assert_eq!(c.connect_ports, vec![443, 563]);
        o.listen = Some(vec![]);
        assert_eq!(
            load(None, &o).unwrap_err().to_string(),
            "command line: listen: at least one listen address is required"
        );
    }

    #[test]
    fn errors_are_always_one_line() {
        for text in [
            "a = [",
            "[[limits]]\n",
            "x = \"\n\"",
            "listen = [\"a\nb\"]",
            "= 1",
            "[limits]\nmax_headers = \"\"\"\nmultiline\n\"\"\"",
        ] {
            let e = parse_str(text).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{text:?} -> {e:?}");
            assert!(e.starts_with("config: "), "{e}");
        }
    }

    #[test]
    fn new_keys_default() {
        let c = Config::default();
        assert_eq!(c.timeouts.drain, Duration::from_secs(30));
        assert_eq!(c.access_log, None);
        assert_eq!(c.access_log_format, LogFormat::Common);
        assert_eq!(c.allow_clients, crate::acl::default_allow_clients());
        assert_eq!(c.deny_destinations, crate::acl::default_deny_destinations());
        assert!(!c.allow_clients.is_empty() && !c.deny_destinations.is_empty());
    }

    #[test]
    fn access_log_targets() {
        assert_eq!(parse_str("access_log = \"off\"").unwrap().access_log, None);
        assert_eq!(parse_str("access_log = \"stdout\"").unwrap().access_log.as_deref(), Some("stdout"));
        assert_eq!(parse_str("access_log = \"-\"").unwrap().access_log.as_deref(), Some("stdout"));
        assert_eq!(parse_str("access_log = \"/var/log/a.log\"").unwrap().access_log.as_deref(), Some("/var/log/a.log"));
        assert_eq!(parse_str("access_log = \"logs/a.log\"").unwrap().access_log.as_deref(), Some("logs/a.log"));
        assert_eq!(parse_access_log("off"), Ok(None));
        assert_eq!(
            err("\naccess_log = \"\""),
            "config: access_log: \"\": expected \"off\", \"stdout\" or a file path (line 2)"
        );
        assert_eq!(
            err("access_log = \"  \""),
            "config: access_log: \"  \": expected \"off\", \"stdout\" or a file path (line 1)"
        );
        assert_eq!(
            err("access_log = \"/var/log/\""),
            "config: access_log: \"/var/log/\": names a directory; expected a file path (line 1)"
        );
        assert!(err("access_log = \".\"").contains("names a directory"));
        assert_eq!(
            err("access_log = \"a\\nb\""),
            "config: access_log: \"a\\nb\": a file path must not contain control characters (line 1)"
        );
        assert_eq!(
            err("access_log = false"),
            "config: access_log: invalid type: boolean `false`, expected a string (line 1)"
        );
    }

    #[test]
    fn forwarding_modes() {
        let c = parse_str("[forwarding]\nx_forwarded_for = \"replace\"").unwrap();
        assert_eq!(c.forwarding.x_forwarded_for, crate::forwarding::ForwardMode::Replace);
        assert_eq!(c.forwarding.forwarded, crate::forwarding::ForwardMode::Append);
        let e = err("[forwarding]\nforwarded = \"trust\"");
        assert!(e.starts_with("config: forwarding.forwarded: unknown variant `trust`"), "{e}");
    }

    #[test]
    fn local_targets_values() {
        assert_eq!(Config::default().local_targets, LocalTargets::LoopbackClients);
        assert_eq!(parse_str("local_targets = \"deny\"").unwrap().local_targets, LocalTargets::Deny);
        assert_eq!(
            parse_str("local_targets = \"loopback-clients\"").unwrap().local_targets,
            LocalTargets::LoopbackClients
        );
        let e = err("local_targets = \"everyone\"");
        assert!(e.starts_with("config: local_targets: unknown variant `everyone`"), "{e}");
    }

    #[test]
    fn access_log_formats() {
        assert_eq!(parse_str("access_log_format = \"common\"").unwrap().access_log_format, LogFormat::Common);
        assert_eq!(parse_str("access_log_format = \"json\"").unwrap().access_log_format, LogFormat::Json);
        assert_eq!(
            err("\n\naccess_log_format = \"JSON\""),
            "config: access_log_format: expected \"common\" or \"json\", got \"JSON\" (line 3)"
        );
        assert!(err("access_log_format = 1").starts_with("config: access_log_format: invalid type"));
    }

    #[test]
    fn log_levels() {
        assert_eq!(Config::default().log_level, None);
        for ok in ["error", "warn", "info", "debug", "trace", "off", "DEBUG", "info,sluice::conn=debug", " debug "] {
            assert_eq!(
                parse_str(&format!("log_level = {ok:?}")).unwrap().log_level.as_deref(),
                Some(ok.trim()),
                "{ok}"
            );
        }
        let expected =
            "expected error, warn, info, debug, trace, off, or directives such as \"info,sluice::conn=debug\"";
        assert_eq!(err("\nlog_level = \"debgu\""), format!("config: log_level: \"debgu\": {expected} (line 2)"));
        for bad in ["", "  ", "info,", "info,sluice", "verbose"] {
            assert!(err(&format!("log_level = {bad:?}")).starts_with("config: log_level: "), "{bad:?} accepted");
        }
        assert!(err("log_level = \"sluice=loud\"")
            .starts_with(&format!("config: log_level: \"sluice=loud\": {expected}: ")));
        assert!(err("log_level = 3").starts_with("config: log_level: invalid type"));
        let c = Config { log_level: Some("nope".into()), ..Config::default() };
        assert_eq!(c.validate().unwrap_err().key(), Some("log_level"));
    }

    #[test]
    fn address_lists() {
        let c = parse_str("allow_clients = [\"0.0.0.0/0\", \"::/0\"]\ndeny_destinations = [\"127.0.0.0/8\"]").unwrap();
        assert_eq!(c.allow_clients, vec![cidr("0.0.0.0/0"), cidr("::/0")]);
        assert_eq!(c.deny_destinations, vec![cidr("127.0.0.0/8")]);
        // Empty lists are valid: nobody may use the proxy / every destination is allowed.
        let c = parse_str("allow_clients = []\ndeny_destinations = []").unwrap();
        assert!(c.allow_clients.is_empty() && c.deny_destinations.is_empty());
        assert_eq!(
            err("allow_clients = [\"10.0.0.0/33\"]"),
            "config: allow_clients: \"10.0.0.0/33\": prefix must be 0..=32 (line 1)"
        );
        assert_eq!(
            err("workers = 1\ndeny_destinations = [\"metadata\"]"),
            "config: deny_destinations: \"metadata\": not an IP address or CIDR block (line 2)"
        );
        assert_eq!(
            err("allow_clients = \"10.0.0.0/8\""),
            "config: allow_clients: invalid type: string \"10.0.0.0/8\", expected an array (line 1)"
        );
    }

    #[test]
    fn drain_timeout() {
        assert_eq!(parse_str("[timeouts]\ndrain = 0").unwrap().timeouts.drain, Duration::ZERO);
        assert_eq!(parse_str("[timeouts]\ndrain = 0.25").unwrap().timeouts.drain, Duration::from_millis(250));
        assert_eq!(parse_str("[timeouts]\ndrain = 2592000").unwrap().timeouts.drain, Duration::from_secs(2592000));
        assert_eq!(
            err("[timeouts]\n\ndrain = 2592001"),
            "config: timeouts.drain: must be between 0 and 2592000 seconds, got 2592001 (line 3)"
        );
        assert_eq!(err("[timeouts]\ndrain = -1"), "config: timeouts.drain: -1 seconds: must not be negative (line 2)");
        assert!(err("[timeouts]\ndrain = \"30s\"").starts_with("config: timeouts.drain: invalid type"));
    }

    #[test]
    fn validate_checks_new_keys_programmatically() {
        let c = Config { access_log: Some(String::new()), ..Config::default() };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "config: access_log: expected \"off\", \"stdout\" or a file path"
        );
        let mut c = Config::default();
        c.timeouts.drain = Duration::from_secs(MAX_TIMEOUT_SECS + 1);
        assert_eq!(c.validate().unwrap_err().key(), Some("timeouts.drain"));
        let c = Config { allow_clients: vec![], deny_destinations: vec![], ..Config::default() };
        c.validate().unwrap();
        let c = Config { upgrade_protocols: vec!["H2C".into()], ..Config::default() };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "config: upgrade_protocols: h2c (HTTP/2 over cleartext) is never forwarded as an upgrade"
        );
        let c = Config { upgrade_protocols: vec![], ..Config::default() };
        c.validate().unwrap();
    }

    #[test]
    fn reloadable_diff_lists_only_restart_keys() {
        let old = Config::default();
        assert!(old.reloadable_diff(&old.clone()).is_empty());

        // Everything reloadable changes: nothing needs a restart.
        let mut new = parse_str(
            "resolve = [\"a.test:127.0.0.2\"]\npassthrough = [\"b.test\"]\nintercept_connect = true\n\
             connect_ports = [443, 8443]\naccess_log = \"stdout\"\naccess_log_format = \"json\"\n\
             allow_clients = []\ndeny_destinations = [\"10.0.0.0/8\"]\n\
             [limits]\nmax_headers = 10\n[timeouts]\ndrain = 5\nio_idle = 1\n[pool]\nmax_idle_total = 1\n",
        )
        .unwrap();
        assert_ne!(new, old);
        assert_eq!(old.reloadable_diff(&new), Vec::<&str>::new());

        new.workers = Some(4);
        new.admin = None;
        assert_eq!(old.reloadable_diff(&new), vec!["admin", "workers"]);

        // Every restart key changed: all of them, in RESTART_KEYS order.
        let all = Config {
            listen: vec![addr("127.0.0.1:1")],
            quic_listen: vec![addr("127.0.0.1:2")],
            admin: Some(addr("127.0.0.1:3")),
            workers: Some(1),
            slabs_per_worker: 16,
            ca_dir: PathBuf::from("/other/CA"),
            upstream_ca: vec![PathBuf::from("/x.pem")],
            cert_cache_size: 1,
            ..Config::default()
        };
        assert_eq!(old.reloadable_diff(&all), RESTART_KEYS.to_vec());
        assert_eq!(all.reloadable_diff(&old), RESTART_KEYS.to_vec());
        // Order counts in lists.
        let a = Config { listen: vec![addr("127.0.0.1:1"), addr("127.0.0.1:2")], ..Config::default() };
        let b = Config { listen: vec![addr("127.0.0.1:2"), addr("127.0.0.1:1")], ..Config::default() };
        assert_eq!(a.reloadable_diff(&b), vec!["listen"]);
    }
}
