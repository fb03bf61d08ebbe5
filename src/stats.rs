//! Counters each worker keeps about itself, read by the admin endpoint.
//!
//! Every worker owns one cache-line-aligned block and is its only writer (relaxed
//! stores, no read-modify-write contention); the admin endpoint sums the blocks.

use crate::protocol::Protocol;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

/// One worker's counters.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_rejected: AtomicU64,
    /// The most client connections this worker takes (configured, or sized from the
    /// descriptor limit).
    pub connection_limit: AtomicU64,
    /// Accepts the kernel failed (out of descriptors or memory, mostly).
    pub accept_errors: AtomicU64,
    /// Client connection slots not yet freed: closing ones count until the kernel has
    /// completed their last operation and their descriptors are closed.
    pub connection_slots: AtomicU64,
    pub requests: AtomicU64,
    /// Responses by protocol, request method (see [`METHODS`]) and status class (1xx..5xx).
    pub responses: [[[AtomicU64; 5]; METHODS.len()]; Protocol::ALL.len()],
    /// Responses the proxy made itself, by [`ERROR_KINDS`].
    pub errors: [AtomicU64; ERROR_KINDS.len()],
    /// CONNECT tunnels established.
    pub tunnels: AtomicU64,
    /// HTTP/1.1 exchanges an origin's 101 turned into a tunnel (WebSocket, ...).
    pub upgrades: AtomicU64,
    /// Tunnel directions that went from copying to splicing (bulk transfers).
    pub tunnel_splices: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    pub pool_hits: AtomicU64,
    pub pool_misses: AtomicU64,
    pub pool_evictions: AtomicU64,
    /// Idle upstream connections closed because they stayed unused (purge, idle timeout).
    pub pool_purged: AtomicU64,
    /// Requests that had to wait for a connection to their origin
    /// (`pool.max_connections_per_host`), and how many wait now.
    pub upstream_queued: AtomicU64,
    pub upstream_waiting: AtomicU64,
    /// Queued requests that gave their buffer back while they waited (`conn::parked::park_queued`).
    pub requests_parked: AtomicU64,
    /// Idle upstream connections parked in the pool now.
    pub pool_idle: AtomicU64,
    /// Slabs lent out now: registered (fixed) ones, and heap ones lent past them.
    pub slabs_registered_in_use: AtomicU64,
    pub slabs_heap_in_use: AtomicU64,
    /// Heap slabs lent because every registered slab was in use.
    pub slab_heap_lends: AtomicU64,
    /// The buffer budget (`limits.buffer_mib_per_worker`) in slabs.
    pub buffer_budget_slabs: AtomicU64,
    /// Connections waiting for the budget now, and reads that waited since the start.
    pub buffer_waiting: AtomicU64,
    pub buffer_waits: AtomicU64,
    /// Connections closed because they held buffers others waited for and did not move
    /// (`timeouts.buffer_stall`).
    pub buffer_stall_closes: AtomicU64,
    pub upstream_retries: AtomicU64,
    pub dns_cache_hits: AtomicU64,
    pub dns_cache_misses: AtomicU64,
    /// Requests whose name did not resolve.
    pub dns_failures: AtomicU64,
    /// Names being resolved now, and lookups by how they ended ([`DNS_RESULTS`]).
    pub dns_in_flight: AtomicU64,
    pub dns_lookups: [AtomicU64; DNS_RESULTS.len()],
    pub ring_submitted: AtomicU64,
    pub ring_completed: AtomicU64,
    pub ring_backlog: AtomicU64,
    /// `io_uring_enter` calls (submit and wait, and flushes of a full queue).
    pub ring_enter_calls: AtomicU64,
    /// The client leg's multishot receive (`conn::multishot`): armed, cancelled to take
    /// back control of reads, ended by a provided-buffer shortage (`-ENOBUFS`), and ended
    /// by itself with bytes (its byte limit, `uring::MULTISHOT_LIMIT`, or a full
    /// completion queue).
    pub multishot_arms: AtomicU64,
    pub multishot_cancels: AtomicU64,
    pub multishot_nobufs: AtomicU64,
    pub multishot_ended: AtomicU64,
    /// Sockets in the ring's registered file table now (legs addressed by table slot).
    pub ring_fixed_files: AtomicU64,
    pub ring_file_update_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub tls_passthrough: AtomicU64,
    pub certs_minted: AtomicU64,
    pub cert_cache_hits: AtomicU64,
    pub cert_mint_nanos: AtomicU64,
    /// From the first byte of a request to the end of its response.
    pub request_duration: Histogram,
    /// DNS + TCP (+ TLS) to the origin, for new upstream connections.
    pub upstream_connect: Histogram,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// Refused upstream chains, by the reasons in [`VERIFY_REASONS`].
    pub verify_failures: [AtomicU64; VERIFY_REASONS.len()],
    /// Proxy authentication: requests admitted on their credentials, refused by
    /// [`AUTH_FAILURES`], and slow hashes run (copied from the gate on the tick).
    pub auth_successes: AtomicU64,
    pub auth_failures: [AtomicU64; AUTH_FAILURES.len()],
    pub auth_verifications: AtomicU64,
    /// HTTP/2 client connections (`conn::http2`), their streams since the start and now.
    pub h2_connections: AtomicU64,
    pub h2_streams: AtomicU64,
    pub h2_streams_active: AtomicU64,
    /// HTTP/2 sessions to origins open now, and made since the start.
    pub h2_origin_sessions_active: AtomicU64,
    pub h2_origin_sessions: AtomicU64,
    /// Fresh origin connections closed right after their handshake because a session to
    /// that origin had room by then (a burst of first requests to an origin).
    pub h2_origin_surplus: AtomicU64,
    /// HTTP/2 connections closed for a flood, by [`crate::http2::floods::Flood::ALL`].
    pub h2_floods: [AtomicU64; 5],
    /// GOAWAYs ending a connection with an error, sent (0) and received (1), by code.
    pub h2_goaways: [[AtomicU64; H2_CODES.len()]; 2],
    /// RST_STREAM frames by leg (client 0, origin 1), direction (sent 0, received 1), code.
    pub h2_resets: [[[AtomicU64; H2_CODES.len()]; 2]; 2],
}

/// HTTP/2 error codes (RFC 9113 §7), then any other: the `code` label of
/// `sluice_h2_goaways_total` and `sluice_h2_resets_total`.
pub const H2_CODES: [&str; crate::http2::tally::CODES] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
    "UNKNOWN",
];

/// Labels of `sluice_auth_failures_total{reason}`.
pub const AUTH_FAILURES: [&str; 4] = ["missing", "invalid", "locked", "busy"];

/// Method labels of `sluice_requests_total`.
pub const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "OTHER"];

/// Labels of `sluice_errors_total{kind}`.
pub const ERROR_KINDS: [&str; 7] =
    ["bad_request", "forbidden", "client_timeout", "loop", "upstream_failed", "upstream_timeout", "other"];

fn method_index(m: Option<crate::h1::Method>) -> usize {
    use crate::h1::Method::*;
    match m {
        Some(Get) => 0,
        Some(Head) => 1,
        Some(Post) => 2,
        Some(Put) => 3,
        Some(Delete) => 4,
        Some(Options) => 5,
        Some(Patch) => 6,
        Some(Connect) => 7,
        _ => 8,
    }
}

/// Labels of `sluice_dns_lookups_total{result}` (indexed by `upstream::dns::Ended`).
pub const DNS_RESULTS: [&str; 6] = ["ok", "not_found", "failed", "timeout", "busy", "abandoned"];

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A fixed-bucket histogram written by one worker only.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        bump(&self.buckets[i], 1);
        bump(&self.sum_nanos, d.as_nanos() as u64);
    }
}

fn render_histogram(out: &mut String, name: &str, help: &str, hs: &[&Histogram]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += hs.iter().map(|h| h.buckets[i].load(Relaxed)).sum::<u64>();
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += hs.iter().map(|h| h.buckets[LATENCY_BUCKETS.len()].load(Relaxed)).sum::<u64>();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum: u64 = hs.iter().map(|h| h.sum_nanos.load(Relaxed)).sum();
    let _ = writeln!(out, "{name}_sum {}", sum as f64 / 1e9);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

/// Labels of `sluice_upstream_verify_failures_total{reason}`.
pub const VERIFY_REASONS: [&str; 7] =
    ["unknown_issuer", "expired", "not_yet_valid", "wrong_name", "revoked", "invalid", "handshake"];

/// Adds to a counter only this worker writes (no atomic read-modify-write).
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Subtracts from a gauge only this worker writes.
#[inline]
pub fn drop_one(c: &AtomicU64) {
    c.store(c.load(Relaxed).saturating_sub(1), Relaxed);
}

impl WorkerStats {
    /// Copies the worker's authentication counters in.
    pub fn publish_auth(&self, s: &crate::auth::AuthStats) {
        self.auth_successes.store(s.admitted, Relaxed);
        for (slot, v) in self.auth_failures.iter().zip([s.missing, s.invalid, s.locked, s.busy]) {
            slot.store(v, Relaxed);
        }
        self.auth_verifications.store(s.verifications, Relaxed);
    }

    /// Counts a refused upstream certificate chain.
    pub fn verify_failure(&self, reason: &str) {
        let i = VERIFY_REASONS.iter().position(|r| *r == reason).unwrap_or(VERIFY_REASONS.len() - 2);
        bump(&self.verify_failures[i], 1);
    }

    /// Counts a response by its status class.
    pub fn response(&self, protocol: Protocol, method: Option<crate::h1::Method>, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        bump(&self.responses[protocol.index()][method_index(method)][class], 1);
    }

    /// Counts a response the proxy made itself (an error of some kind).
    /// An HTTP/2 connection closed for a flood of `kind`; its GOAWAY is counted too.
    pub fn h2_flood(&self, kind: crate::http2::floods::Flood) {
        if let Some(i) = crate::http2::floods::Flood::ALL.iter().position(|k| *k == kind) {
            bump(&self.h2_floods[i], 1);
        }
    }

    /// An HTTP/2 connection ended with GOAWAY `reason`, sent by us (`ours`) or the client.
    pub fn h2_goaway(&self, ours: bool, reason: h2::Reason) {
        let code = (u32::from(reason) as usize).min(H2_CODES.len() - 1);
        bump(&self.h2_goaways[usize::from(!ours)][code], 1);
    }

    /// Resets counted by a [`crate::http2::tally::FrameTally`]: `origin` leg or client,
    /// `sent` by us or received.
    pub fn h2_resets(&self, origin: bool, sent: bool, counts: &[u32; H2_CODES.len()]) {
        for (code, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            bump(&self.h2_resets[usize::from(origin)][usize::from(!sent)][code], u64::from(n));
        }
    }

    pub fn error(&self, status: u16) {
        let kind = match status {
            400 | 411 | 413 | 414 | 417 | 431 | 501 | 505 => 0,
            403 | 407 => 1,
            408 => 2,
            508 => 3,
            502 => 4,
            504 => 5,
            _ => 6,
        };
        bump(&self.errors[kind], 1);
    }
}

/// One metric family as the workers' blocks sum it up.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
}

fn one(v: u64) -> Vec<(Vec<(&'static str, String)>, u64)> {
    vec![(Vec::new(), v)]
}

fn by(label: &'static str, pairs: &[(&str, u64)]) -> Vec<(Vec<(&'static str, String)>, u64)> {
    pairs.iter().map(|(l, v)| (vec![(label, l.to_string())], *v)).collect()
}

/// The recorder behind `/metrics`: counters are summed from the worker blocks at scrape
/// time and handed to the `metrics` facade (absolute values), which the Prometheus
/// exporter renders. The hot path never touches the facade: workers only bump their own
/// cache-line blocks.
fn recorder() -> &'static PrometheusRecorder {
    static RECORDER: OnceLock<PrometheusRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| PrometheusBuilder::new().build_recorder())
}

fn families(workers: &[WorkerStats]) -> Vec<Family> {
    let sum = |f: fn(&WorkerStats) -> &AtomicU64| workers.iter().map(|w| f(w).load(Relaxed)).sum::<u64>();
    let per_worker = |f: fn(&WorkerStats) -> &AtomicU64| -> Vec<(Vec<(&'static str, String)>, u64)> {
        workers.iter().enumerate().map(|(i, w)| (vec![("worker", i.to_string())], f(w).load(Relaxed))).collect()
    };
    let fam = |name, kind, help, samples| Family { name, kind, help, samples };
    use Kind::{Counter as C, Gauge as G};
    let mut by_class = Vec::new();
    for p in Protocol::ALL {
        for (mi, m) in METHODS.iter().enumerate() {
            for (ci, c) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let v: u64 = workers.iter().map(|w| w.responses[p.index()][mi][ci].load(Relaxed)).sum();
                // Rows that never happened stay out of the exposition (3 x 9 x 5, mostly
                // zeros); HTTP/1.1 GET 2xx is always there so the family exists from the start.
                if v > 0 || (p == Protocol::Http1 && mi == 0 && ci == 1) {
                    let labels = vec![
                        ("protocol", p.label().to_string()),
                        ("method", m.to_string()),
                        ("status_class", c.to_string()),
                    ];
                    by_class.push((labels, v));
                }
            }
        }
    }
    // One sample per label: the label's counter summed over the workers.
    let per_label = |labels: &[&'static str], counter: fn(&WorkerStats) -> &[AtomicU64]| -> Vec<(&'static str, u64)> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (*l, workers.iter().map(|w| counter(w)[i].load(Relaxed)).sum()))
            .collect()
    };
    let errors = per_label(&ERROR_KINDS, |w| &w.errors);
    let auth_failures = per_label(&AUTH_FAILURES, |w| &w.auth_failures);
    let dns = per_label(&DNS_RESULTS, |w| &w.dns_lookups);
    let verify = per_label(&VERIFY_REASONS, |w| &w.verify_failures);
    let flood_kinds = crate::http2::floods::Flood::ALL.map(|f| f.label());
    let floods = per_label(&flood_kinds, |w| &w.h2_floods);
    let mut resets = Vec::new();
    for (l, leg) in ["client", "origin"].iter().enumerate() {
        for (d, direction) in ["sent", "received"].iter().enumerate() {
            for (c, code) in H2_CODES.iter().enumerate() {
                let v: u64 = workers.iter().map(|w| w.h2_resets[l][d][c].load(Relaxed)).sum();
                // As for GOAWAYs: rows that happened, and one so the family always exists.
                if v > 0 || (l == 0 && d == 0 && c == 8) {
                    let labels = vec![
                        ("leg", leg.to_string()),
                        ("direction", direction.to_string()),
                        ("code", code.to_string()),
                    ];
                    resets.push((labels, v));
                }
            }
        }
    }
    let mut goaways = Vec::new();
    for (d, direction) in ["sent", "received"].iter().enumerate() {
        for (c, code) in H2_CODES.iter().enumerate() {
            let v: u64 = workers.iter().map(|w| w.h2_goaways[d][c].load(Relaxed)).sum();
            // Codes that never happened stay out (2 x 14 rows, mostly zeros); one row is
            // always there so that the family exists from the start.
            if v > 0 || (d == 0 && c == 1) {
                goaways.push((vec![("direction", direction.to_string()), ("code", code.to_string())], v));
            }
        }
    }
    vec![
        fam(
            "sluice_connections_accepted_total",
            C,
            "Client connections accepted.",
            one(sum(|w| &w.connections_accepted)),
        ),
        fam("sluice_connections_active", G, "Client connections open now.", one(sum(|w| &w.connections_active))),
        fam(
            "sluice_connection_slots",
            G,
            "Client connection slots not yet freed (closing ones count until their last operation completes).",
            one(sum(|w| &w.connection_slots)),
        ),
        fam(
            "sluice_connections_rejected_total",
            C,
            "Client connections refused (ACL or connection limit).",
            one(sum(|w| &w.connections_rejected)),
        ),
        fam(
            "sluice_connections_limit",
            G,
            "Client connections the workers take at most (limits.max_connections_per_worker within RLIMIT_NOFILE).",
            one(sum(|w| &w.connection_limit)),
        ),
        fam(
            "sluice_accept_errors_total",
            C,
            "Accepts that failed (EMFILE/ENFILE: out of descriptors; the listener pauses and retries).",
            one(sum(|w| &w.accept_errors)),
        ),
        fam("sluice_requests_total", C, "Requests answered, by protocol, method and status class.", by_class),
        fam("sluice_errors_total", C, "Responses the proxy made itself, by kind.", by("kind", &errors)),
        fam(
            "sluice_tunnels_total",
            C,
            "Tunnels established, by kind (connect: CONNECT; upgrade: an HTTP Upgrade the origin accepted with 101).",
            by("kind", &[("connect", sum(|w| &w.tunnels)), ("upgrade", sum(|w| &w.upgrades))]),
        ),
        fam(
            "sluice_tunnel_splices_total",
            C,
            "Tunnel directions moved to zero-copy splicing after a bulk read.",
            one(sum(|w| &w.tunnel_splices)),
        ),
        fam(
            "sluice_bytes_total",
            C,
            "Bytes relayed, by direction.",
            by(
                "direction",
                &[("from_client", sum(|w| &w.bytes_from_clients)), ("to_client", sum(|w| &w.bytes_to_clients))],
            ),
        ),
        fam(
            "sluice_upstream_pool_hits_total",
            C,
            "Requests sent on a pooled upstream connection.",
            one(sum(|w| &w.pool_hits)),
        ),
        fam(
            "sluice_upstream_pool_misses_total",
            C,
            "Requests that needed a new upstream connection.",
            one(sum(|w| &w.pool_misses)),
        ),
        fam(
            "sluice_upstream_pool_evictions_total",
            C,
            "Idle upstream connections evicted by the pool caps.",
            one(sum(|w| &w.pool_evictions)),
        ),
        fam(
            "sluice_upstream_pool_purged_total",
            C,
            "Idle upstream connections closed because they stayed unused or idle past pool.idle_timeout.",
            one(sum(|w| &w.pool_purged)),
        ),
        fam(
            "sluice_upstream_queued_total",
            C,
            "Requests that waited for a connection to their origin (pool.max_connections_per_host reached).",
            one(sum(|w| &w.upstream_queued)),
        ),
        fam(
            "sluice_upstream_queued_parked_total",
            C,
            "Queued requests that waited with their bytes on the heap and their 64 KiB buffer given back.",
            one(sum(|w| &w.requests_parked)),
        ),
        fam(
            "sluice_upstream_queue",
            G,
            "Requests waiting now for a connection to their origin.",
            one(sum(|w| &w.upstream_waiting)),
        ),
        fam("sluice_upstream_pool_idle", G, "Idle upstream connections in the pools.", one(sum(|w| &w.pool_idle))),
        fam(
            "sluice_slabs_in_use",
            G,
            "64 KiB I/O slabs lent out, by kind (registered with the ring, or heap past them).",
            by("kind", &[("registered", sum(|w| &w.slabs_registered_in_use)), ("heap", sum(|w| &w.slabs_heap_in_use))]),
        ),
        fam(
            "sluice_slab_heap_lends_total",
            C,
            "Heap slabs lent because every registered slab was in use.",
            one(sum(|w| &w.slab_heap_lends)),
        ),
        fam(
            "sluice_buffer_budget_slabs",
            G,
            "64 KiB slabs the workers may lend in all (limits.buffer_mib_per_worker).",
            one(sum(|w| &w.buffer_budget_slabs)),
        ),
        fam(
            "sluice_buffer_waiting",
            G,
            "Connections waiting for a buffer because the budget is spent (backpressure).",
            one(sum(|w| &w.buffer_waiting)),
        ),
        fam(
            "sluice_buffer_waits_total",
            C,
            "Reads that waited for a buffer because the budget was spent.",
            one(sum(|w| &w.buffer_waits)),
        ),
        fam(
            "sluice_buffer_stall_closes_total",
            C,
            "Connections closed because their writes had not moved for timeouts.buffer_stall while reads waited for the buffer budget.",
            one(sum(|w| &w.buffer_stall_closes)),
        ),
        fam(
            "sluice_upstream_retries_total",
            C,
            "Idempotent requests retried after a reused connection failed.",
            one(sum(|w| &w.upstream_retries)),
        ),
        fam(
            "sluice_dns_cache_hits_total",
            C,
            "Name lookups answered from the worker's cache.",
            one(sum(|w| &w.dns_cache_hits)),
        ),
        fam(
            "sluice_dns_cache_misses_total",
            C,
            "Name lookups the worker's cache could not answer.",
            one(sum(|w| &w.dns_cache_misses)),
        ),
        fam("sluice_dns_failures_total", C, "Requests whose name did not resolve.", one(sum(|w| &w.dns_failures))),
        fam(
            "sluice_dns_lookups_in_flight",
            G,
            "Names being resolved now (DNS queries outstanding).",
            one(sum(|w| &w.dns_in_flight)),
        ),
        fam(
            "sluice_dns_lookups_total",
            C,
            "DNS lookups by how they ended (busy: refused at once, resolver.max_pending names were pending; \
             abandoned: every client waiting for the name had gone).",
            by("result", &dns),
        ),
        fam(
            "sluice_timeouts_total",
            C,
            "Deadlines that fired (head, idle, connect, response).",
            one(sum(|w| &w.timeouts)),
        ),
        fam(
            "sluice_tls_handshakes_total",
            C,
            "Client TLS handshakes, by result.",
            by(
                "result",
                &[
                    ("ok", sum(|w| &w.tls_handshakes)),
                    ("failed", sum(|w| &w.tls_handshake_failures)),
                    ("passthrough", sum(|w| &w.tls_passthrough)),
                ],
            ),
        ),
        fam("sluice_certs_minted_total", C, "Forged certificates minted.", one(sum(|w| &w.certs_minted))),
        fam(
            "sluice_cert_cache_hits_total",
            C,
            "Handshakes served from the forged-certificate cache.",
            one(sum(|w| &w.cert_cache_hits)),
        ),
        fam(
            "sluice_upstream_verify_failures_total",
            C,
            "Upstream certificate chains refused, by reason.",
            by("reason", &verify),
        ),
        fam(
            "sluice_auth_successes_total",
            C,
            "Requests admitted on their proxy credentials.",
            one(sum(|w| &w.auth_successes)),
        ),
        fam(
            "sluice_auth_failures_total",
            C,
            "Requests refused by proxy authentication, by reason (missing or invalid credentials: 407; locked address: 429; busy: 503).",
            by("reason", &auth_failures),
        ),
        fam(
            "sluice_auth_verifications_total",
            C,
            "Password hashes checked (credentials not in a worker's cache).",
            one(sum(|w| &w.auth_verifications)),
        ),
        fam(
            "sluice_access_log_dropped_total",
            C,
            "Access log lines dropped (writer behind).",
            one(sum(|w| &w.access_log_dropped)),
        ),
        fam("sluice_ring_submissions_total", C, "io_uring submissions, per worker.", per_worker(|w| &w.ring_submitted)),
        fam("sluice_ring_completions_total", C, "io_uring completions, per worker.", per_worker(|w| &w.ring_completed)),
        fam(
            "sluice_ring_enter_calls_total",
            C,
            "io_uring_enter calls, per worker.",
            per_worker(|w| &w.ring_enter_calls),
        ),
        fam(
            "sluice_client_multishot_total",
            C,
            "Multishot receives on keep-alive client connections, by event (armed; cancelled: \
             the connection took back control of its reads; nobufs: ended for want of a provided buffer; \
             ended: ended by itself with bytes, at its byte limit or on a full completion queue).",
            by(
                "event",
                &[
                    ("armed", sum(|w| &w.multishot_arms)),
                    ("cancelled", sum(|w| &w.multishot_cancels)),
                    ("nobufs", sum(|w| &w.multishot_nobufs)),
                    ("ended", sum(|w| &w.multishot_ended)),
                ],
            ),
        ),
        fam(
            "sluice_ring_backlog",
            G,
            "Submissions waiting for room in the queue, per worker.",
            per_worker(|w| &w.ring_backlog),
        ),
        fam(
            "sluice_ring_fixed_files",
            G,
            "Sockets in the ring's registered file table (their operations skip the descriptor lookup), per worker.",
            per_worker(|w| &w.ring_fixed_files),
        ),
        fam(
            "sluice_ring_file_update_errors_total",
            C,
            "Registered file table updates the kernel refused, per worker.",
            per_worker(|w| &w.ring_file_update_errors),
        ),
        fam("sluice_h2_connections_total", C, "HTTP/2 client connections.", one(sum(|w| &w.h2_connections))),
        fam("sluice_h2_streams_total", C, "HTTP/2 streams proxied (each its own exchange).", one(sum(|w| &w.h2_streams))),
        fam("sluice_h2_streams_active", G, "HTTP/2 streams open now.", one(sum(|w| &w.h2_streams_active))),
        fam(
            "sluice_h2_origin_sessions_active",
            G,
            "HTTP/2 sessions to origins open now (each carries the requests of many clients).",
            one(sum(|w| &w.h2_origin_sessions_active)),
        ),
        fam(
            "sluice_h2_origin_sessions_total",
            C,
            "HTTP/2 sessions to origins opened.",
            one(sum(|w| &w.h2_origin_sessions)),
        ),
        fam(
            "sluice_h2_origin_surplus_connections_total",
            C,
            "Fresh origin connections closed after their handshake because an HTTP/2 session to the origin had room by then.",
            one(sum(|w| &w.h2_origin_surplus)),
        ),
        fam("sluice_h2_flood_closes_total", C, "HTTP/2 connections closed for a flood, by kind.", by("kind", &floods)),
        fam("sluice_h2_goaways_total", C, "HTTP/2 connections ended by a GOAWAY with an error, by direction and code.", goaways),
        fam(
            "sluice_h2_resets_total",
            C,
            "HTTP/2 streams reset (RST_STREAM frames), by leg (client, origin), direction (sent, received) and code.",
            resets,
        ),
    ]
}

/// Renders every worker's counters as Prometheus text.
pub fn render(workers: &[WorkerStats]) -> String {
    use std::fmt::Write;
    // The recorder is one per process: two renders at once (scrapes on two workers'
    // admin connections, or two tests with blocks of their own) would set each other's
    // values between one's set and its render.
    static RENDERING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = RENDERING.lock().unwrap_or_else(|e| e.into_inner());
    let recorder = recorder();
    metrics::with_local_recorder(recorder, || {
        for f in families(workers) {
            match f.kind {
                Kind::Counter => metrics::describe_counter!(f.name, f.help),
                Kind::Gauge => metrics::describe_gauge!(f.name, f.help),
            }
            for (labels, v) in f.samples {
                let labels: Vec<metrics::Label> = labels.into_iter().map(|(k, v)| metrics::Label::new(k, v)).collect();
                match f.kind {
                    Kind::Counter => metrics::counter!(f.name, labels).absolute(v),
                    Kind::Gauge => metrics::gauge!(f.name, labels).set(v as f64),
                }
            }
        }
    });
    let mut out = recorder.handle().render();
    // Histograms keep fixed per-worker buckets (the facade only takes single
    // observations), so they are rendered here in the same text format.
    let hs: Vec<&Histogram> = workers.iter().map(|w| &w.request_duration).collect();
    render_histogram(
        &mut out,
        "sluice_request_duration_seconds",
        "Time from a request's first byte to its response's last.",
        &hs,
    );
    let hs: Vec<&Histogram> = workers.iter().map(|w| &w.upstream_connect).collect();
    render_histogram(
        &mut out,
        "sluice_upstream_connect_seconds",
        "Time to reach a new upstream connection (DNS, TCP, TLS).",
        &hs,
    );
    let (open_fds, max_fds) = process_fds();
    let _ = writeln!(out, "# HELP process_open_fds Open file descriptors of the process.");
    let _ = writeln!(out, "# TYPE process_open_fds gauge");
    let _ = writeln!(out, "process_open_fds {open_fds}");
    let _ = writeln!(out, "# HELP process_max_fds Maximum number of open file descriptors (RLIMIT_NOFILE).");
    let _ = writeln!(out, "# TYPE process_max_fds gauge");
    let _ = writeln!(out, "process_max_fds {max_fds}");
    let minted: u64 = workers.iter().map(|w| w.certs_minted.load(Relaxed)).sum();
    let nanos: u64 = workers.iter().map(|w| w.cert_mint_nanos.load(Relaxed)).sum();
    let _ = writeln!(out, "# HELP sluice_cert_mint_seconds Time spent minting certificates.");
    let _ = writeln!(out, "# TYPE sluice_cert_mint_seconds summary");
    let _ = writeln!(out, "sluice_cert_mint_seconds_sum {}", nanos as f64 / 1e9);
    let _ = writeln!(out, "sluice_cert_mint_seconds_count {minted}");
    out
}

/// The process's open descriptors and its soft descriptor limit, from /proc (the
/// Prometheus process collector's `process_open_fds` / `process_max_fds`).
fn process_fds() -> (usize, u64) {
    // The directory being read is itself an open descriptor while it is listed.
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count().saturating_sub(1)).unwrap_or(0);
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            let line = l.lines().find(|l| l.starts_with("Max open files"))?;
            line["Max open files".len()..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0);
    (open, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_over_workers() {
        let w = vec![WorkerStats::default(), WorkerStats::default()];
        bump(&w[0].connections_active, 2);
        bump(&w[1].connections_active, 3);
        w[0].response(Protocol::Http1, Some(crate::h1::Method::Get), 200);
        w[1].response(Protocol::Http1, Some(crate::h1::Method::Post), 502);
        w[1].response(Protocol::Http1, None, 400);
        w[1].error(502);
        let text = render(&w);
        assert!(text.contains("sluice_connections_active 5\n"), "{text}");
        assert!(
            text.contains("sluice_requests_total{protocol=\"http1\",method=\"GET\",status_class=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_requests_total{protocol=\"http1\",method=\"POST\",status_class=\"5xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sluice_requests_total{protocol=\"http1\",method=\"OTHER\",status_class=\"4xx\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("method=\"PUT\""), "rows that never happened stay out: {text}");
        assert!(text.contains("sluice_errors_total{kind=\"upstream_failed\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE sluice_requests_total counter"));
    }

    #[test]
    fn the_protocol_label_comes_from_the_connection() {
        let w = vec![WorkerStats::default()];
        w[0].response(Protocol::H2, Some(crate::h1::Method::Get), 204);
        let text = render(&w);
        assert!(
            text.contains("sluice_requests_total{protocol=\"h2\",method=\"GET\",status_class=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("protocol=\"h3\""), "{text}");
    }
}
