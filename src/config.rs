//! Runtime configuration: the one `Config` every worker reads, its embedded defaults,
//! the TOML file format, and the merge of command-line flags over the file.
//!
//! An empty TOML file is a valid config: every key has a default. Unknown keys are
//! refused with the key's name so typos never pass silently.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub pool: PoolConfig,
    /// Registered 64 KiB slabs per worker.
    pub slabs_per_worker: usize,
}

/// Size and count limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request or response head (request line + headers), bytes. Over it: 431/502.
    pub max_header_bytes: usize,
    /// Most header fields in one head.
    pub max_headers: usize,
    /// Most client connections a worker holds open at once; over it new ones are closed.
    pub max_connections_per_worker: usize,
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
}

/// The per-worker upstream connection pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Idle connections kept per (host, port); the oldest is evicted past it.
    pub max_idle_per_host: usize,
    /// Idle connections kept per worker in all.
    pub max_idle_total: usize,
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
            limits: Limits {
                max_header_bytes: 64 * 1024,
                max_headers: 100,
                max_connections_per_worker: 100_000,
            },
            timeouts: Timeouts {
                request_head: Duration::from_secs(10),
                client_idle: Duration::from_secs(60),
                upstream_connect: Duration::from_secs(10),
                upstream_response: Duration::from_secs(60),
                io_idle: Duration::from_secs(300),
            },
            pool: PoolConfig {
                max_idle_per_host: 8,
                max_idle_total: 1024,
                idle_timeout: Duration::from_secs(30),
            },
            slabs_per_worker: 1024,
        }
    }
}
