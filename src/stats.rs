//! Counters each worker keeps about itself, read by the admin endpoint.
//!
//! Every worker owns one cache-line-aligned block and is its only writer (relaxed
//! stores, no read-modify-write contention); the admin endpoint sums the blocks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One worker's counters.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub requests: AtomicU64,
    pub responses_1xx: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_3xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub tunnels: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    pub pool_hits: AtomicU64,
    pub pool_misses: AtomicU64,
    pub pool_evictions: AtomicU64,
    pub upstream_retries: AtomicU64,
    pub dns_cache_hits: AtomicU64,
    pub dns_failures: AtomicU64,
    pub ring_submitted: AtomicU64,
    pub ring_completed: AtomicU64,
    pub ring_backlog: AtomicU64,
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
}

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
    /// Counts a refused upstream certificate chain.
    pub fn verify_failure(&self, reason: &str) {
        let i = VERIFY_REASONS.iter().position(|r| *r == reason).unwrap_or(VERIFY_REASONS.len() - 2);
        bump(&self.verify_failures[i], 1);
    }

    /// Counts a response by its status class.
    pub fn response(&self, status: u16) {
        let c = match status {
            100..=199 => &self.responses_1xx,
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        bump(c, 1);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

/// Renders every worker's counters as Prometheus text.
pub fn render(workers: &[WorkerStats]) -> String {
    use std::fmt::Write;
    let sum = |f: fn(&WorkerStats) -> &AtomicU64| workers.iter().map(|w| f(w).load(Relaxed)).sum::<u64>();
    let one = |v: u64| vec![(String::new(), v)];
    let labelled = |label: &str, pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
        pairs.iter().map(|(l, v)| (format!("{{{label}=\"{l}\"}}"), *v)).collect()
    };
    let out = &mut String::with_capacity(8192);
    family(
        out,
        "sluice_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        &one(sum(|w| &w.connections_accepted)),
    );
    family(
        out,
        "sluice_connections_active",
        "gauge",
        "Client connections open now.",
        &one(sum(|w| &w.connections_active)),
    );
    family(
        out,
        "sluice_connections_rejected_total",
        "counter",
        "Client connections refused at the connection limit.",
        &one(sum(|w| &w.connections_rejected)),
    );
    let classes = [
        ("1xx", sum(|w| &w.responses_1xx)),
        ("2xx", sum(|w| &w.responses_2xx)),
        ("3xx", sum(|w| &w.responses_3xx)),
        ("4xx", sum(|w| &w.responses_4xx)),
        ("5xx", sum(|w| &w.responses_5xx)),
    ];
    let by_class: Vec<(String, u64)> =
        classes.iter().map(|(c, v)| (format!("{{protocol=\"http1\",status_class=\"{c}\"}}"), *v)).collect();
    family(out, "sluice_requests_total", "counter", "Requests answered, by protocol and status class.", &by_class);
    family(out, "sluice_tunnels_total", "counter", "CONNECT tunnels established.", &one(sum(|w| &w.tunnels)));
    let bytes = labelled(
        "direction",
        &[("from_client", sum(|w| &w.bytes_from_clients)), ("to_client", sum(|w| &w.bytes_to_clients))],
    );
    family(out, "sluice_bytes_total", "counter", "Bytes relayed, by direction.", &bytes);
    family(
        out,
        "sluice_upstream_pool_hits_total",
        "counter",
        "Requests sent on a pooled upstream connection.",
        &one(sum(|w| &w.pool_hits)),
    );
    family(
        out,
        "sluice_upstream_pool_misses_total",
        "counter",
        "Requests that needed a new upstream connection.",
        &one(sum(|w| &w.pool_misses)),
    );
    family(
        out,
        "sluice_upstream_pool_evictions_total",
        "counter",
        "Idle upstream connections evicted by the pool caps.",
        &one(sum(|w| &w.pool_evictions)),
    );
    family(
        out,
        "sluice_upstream_retries_total",
        "counter",
        "Idempotent requests retried after a reused connection failed.",
        &one(sum(|w| &w.upstream_retries)),
    );
    family(
        out,
        "sluice_dns_cache_hits_total",
        "counter",
        "Name lookups answered from the worker's cache.",
        &one(sum(|w| &w.dns_cache_hits)),
    );
    family(out, "sluice_dns_failures_total", "counter", "Name lookups that failed.", &one(sum(|w| &w.dns_failures)));
    family(
        out,
        "sluice_timeouts_total",
        "counter",
        "Deadlines that fired (head, idle, connect, response).",
        &one(sum(|w| &w.timeouts)),
    );
    let hs = labelled(
        "result",
        &[
            ("ok", sum(|w| &w.tls_handshakes)),
            ("failed", sum(|w| &w.tls_handshake_failures)),
            ("passthrough", sum(|w| &w.tls_passthrough)),
        ],
    );
    family(out, "sluice_tls_handshakes_total", "counter", "Client TLS handshakes, by result.", &hs);
    family(out, "sluice_certs_minted_total", "counter", "Forged certificates minted.", &one(sum(|w| &w.certs_minted)));
    family(
        out,
        "sluice_cert_cache_hits_total",
        "counter",
        "Handshakes served from the forged-certificate cache.",
        &one(sum(|w| &w.cert_cache_hits)),
    );
    let _ = writeln!(out, "# HELP sluice_cert_mint_seconds Time spent minting certificates.");
    let _ = writeln!(out, "# TYPE sluice_cert_mint_seconds summary");
    let _ = writeln!(out, "sluice_cert_mint_seconds_sum {}", sum(|w| &w.cert_mint_nanos) as f64 / 1e9);
    let _ = writeln!(out, "sluice_cert_mint_seconds_count {}", sum(|w| &w.certs_minted));
    let verify: Vec<(&str, u64)> = VERIFY_REASONS
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, workers.iter().map(|w| w.verify_failures[i].load(Relaxed)).sum()))
        .collect();
    family(
        out,
        "sluice_upstream_verify_failures_total",
        "counter",
        "Upstream certificate chains refused, by reason.",
        &labelled("reason", &verify),
    );
    let hs: Vec<&Histogram> = workers.iter().map(|w| &w.request_duration).collect();
    render_histogram(
        out,
        "sluice_request_duration_seconds",
        "Time from a request's first byte to its response's last.",
        &hs,
    );
    let hs: Vec<&Histogram> = workers.iter().map(|w| &w.upstream_connect).collect();
    render_histogram(
        out,
        "sluice_upstream_connect_seconds",
        "Time to reach a new upstream connection (DNS, TCP, TLS).",
        &hs,
    );
    family(
        out,
        "sluice_access_log_dropped_total",
        "counter",
        "Access log lines dropped (writer behind).",
        &one(sum(|w| &w.access_log_dropped)),
    );
    let per_worker = |f: fn(&WorkerStats) -> &AtomicU64| -> Vec<(String, u64)> {
        workers.iter().enumerate().map(|(i, w)| (format!("{{worker=\"{i}\"}}"), f(w).load(Relaxed))).collect()
    };
    family(
        out,
        "sluice_ring_submissions_total",
        "counter",
        "io_uring submissions, per worker.",
        &per_worker(|w| &w.ring_submitted),
    );
    family(
        out,
        "sluice_ring_completions_total",
        "counter",
        "io_uring completions, per worker.",
        &per_worker(|w| &w.ring_completed),
    );
    family(
        out,
        "sluice_ring_backlog",
        "gauge",
        "Submissions waiting for room in the queue, per worker.",
        &per_worker(|w| &w.ring_backlog),
    );
    std::mem::take(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_over_workers() {
        let w = vec![WorkerStats::default(), WorkerStats::default()];
        bump(&w[0].connections_active, 2);
        bump(&w[1].connections_active, 3);
        w[0].response(200);
        w[1].response(502);
        let text = render(&w);
        assert!(text.contains("sluice_connections_active 5\n"));
        assert!(text.contains("sluice_requests_total{protocol=\"http1\",status_class=\"2xx\"} 1\n"));
        assert!(text.contains("sluice_requests_total{protocol=\"http1\",status_class=\"5xx\"} 1\n"));
        assert!(text.contains("# TYPE sluice_requests_total counter"));
    }
}
