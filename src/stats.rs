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
}

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

/// Renders every worker's counters as Prometheus text.
pub fn render(workers: &[WorkerStats]) -> String {
    use std::fmt::Write;
    let sum =
        |f: fn(&WorkerStats) -> &AtomicU64| workers.iter().map(|w| f(w).load(Relaxed)).sum::<u64>();
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    family(
        "sluice_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        &one(sum(|w| &w.connections_accepted)),
    );
    family(
        "sluice_connections_active",
        "gauge",
        "Client connections open now.",
        &one(sum(|w| &w.connections_active)),
    );
    family(
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
    let by_class: Vec<(String, u64)> = classes
        .iter()
        .map(|(c, v)| (format!("{{protocol=\"http1\",status_class=\"{c}\"}}"), *v))
        .collect();
    family(
        "sluice_requests_total",
        "counter",
        "Requests answered, by protocol and status class.",
        &by_class,
    );
    family(
        "sluice_tunnels_total",
        "counter",
        "CONNECT tunnels established.",
        &one(sum(|w| &w.tunnels)),
    );
    family(
        "sluice_bytes_total",
        "counter",
        "Bytes relayed, by direction.",
        &[
            (
                "{direction=\"from_client\"}".into(),
                sum(|w| &w.bytes_from_clients),
            ),
            (
                "{direction=\"to_client\"}".into(),
                sum(|w| &w.bytes_to_clients),
            ),
        ],
    );
    family(
        "sluice_upstream_pool_hits_total",
        "counter",
        "Requests sent on a pooled upstream connection.",
        &one(sum(|w| &w.pool_hits)),
    );
    family(
        "sluice_upstream_pool_misses_total",
        "counter",
        "Requests that needed a new upstream connection.",
        &one(sum(|w| &w.pool_misses)),
    );
    family(
        "sluice_upstream_pool_evictions_total",
        "counter",
        "Idle upstream connections evicted by the pool caps.",
        &one(sum(|w| &w.pool_evictions)),
    );
    family(
        "sluice_upstream_retries_total",
        "counter",
        "Idempotent requests retried after a reused connection failed.",
        &one(sum(|w| &w.upstream_retries)),
    );
    family(
        "sluice_dns_cache_hits_total",
        "counter",
        "Name lookups answered from the worker's cache.",
        &one(sum(|w| &w.dns_cache_hits)),
    );
    family(
        "sluice_dns_failures_total",
        "counter",
        "Name lookups that failed.",
        &one(sum(|w| &w.dns_failures)),
    );
    family(
        "sluice_timeouts_total",
        "counter",
        "Deadlines that fired (head, idle, connect, response).",
        &one(sum(|w| &w.timeouts)),
    );
    let per_worker = |f: fn(&WorkerStats) -> &AtomicU64| -> Vec<(String, u64)> {
        workers
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("{{worker=\"{i}\"}}"), f(w).load(Relaxed)))
            .collect()
    };
    family(
        "sluice_ring_submissions_total",
        "counter",
        "io_uring submissions, per worker.",
        &per_worker(|w| &w.ring_submitted),
    );
    family(
        "sluice_ring_completions_total",
        "counter",
        "io_uring completions, per worker.",
        &per_worker(|w| &w.ring_completed),
    );
    family(
        "sluice_ring_backlog",
        "gauge",
        "Submissions waiting for room in the queue, per worker.",
        &per_worker(|w| &w.ring_backlog),
    );
    out
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
