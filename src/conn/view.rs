//! What `/debug/connections` shows of a connection (HAProxy's `show sess`, for Sluice),
//! and the text of the whole view.
//!
//! One line per live client connection of every worker, columns separated by one space
//! (no field holds a space), after a `#` header naming them:
//!
//! ```text
//! # worker id client target protocol state age_s bytes_in bytes_out
//! 0 3.1 127.0.0.1:50312 origin.test:8080 HTTP/1.1 ResponseBody 2.4 118 65536
//! 1 0.4 10.0.0.7:41022 - HTTP/1.1+TLS AwaitRequest 31.0 2200 18000
//! # 2 of 2 connections shown, from 2 of 2 workers
//! ```

use super::Connection;
use crate::control::Snapshot;
use std::fmt::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use uring::ConnId;

/// A moment as milliseconds since the first stamp this process took: a connection's
/// accept time in 8 bytes where an `Instant` takes 16 (see `an_idle_connection_stays_small`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Stamp(u64);

static EPOCH: OnceLock<Instant> = OnceLock::new();

impl Stamp {
    pub(crate) fn at(t: Instant) -> Stamp {
        Stamp(t.saturating_duration_since(*EPOCH.get_or_init(|| t)).as_millis() as u64)
    }

    /// Seconds from this stamp to `now` (0 if `now` is earlier).
    pub(crate) fn seconds_until(self, now: Instant) -> f64 {
        Stamp::at(now).0.saturating_sub(self.0) as f64 / 1000.0
    }
}

/// An address that may be unknown, as a log field or a column: `-` when unknown.
pub(crate) struct Addr(pub Option<SocketAddr>);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The view's first line: its columns.
pub(crate) const HEADER: &str = "# worker id client target protocol state age_s bytes_in bytes_out";

impl Connection {
    /// This connection's line of `/debug/connections`, without the worker column: its id,
    /// the client's address, the target (host:port of the current exchange or tunnel,
    /// else `-`), the protocol, the phase, seconds since accept, and the bytes received
    /// from and sent to the client.
    pub(crate) fn describe(&self, id: ConnId, now: Instant) -> String {
        let target = match (&self.ex, &self.tunnel_target) {
            (Some(ex), _) if !ex.host.is_empty() => Some((&*ex.host, ex.port)),
            (_, Some(t)) => Some((t.host.as_str(), t.port)),
            _ => None,
        };
        let target = match target {
            Some((host, port)) if host.contains(':') => format!("[{host}]:{port}"),
            Some((host, port)) => format!("{host}:{port}"),
            None => "-".to_string(),
        };
        format!(
            "{id} {} {target} {} {} {:.1} {} {}",
            Addr(self.peer),
            self.protocol.log_name(self.intercepted()),
            self.phase.name(),
            self.accepted.seconds_until(now),
            self.bytes_in,
            self.bytes_out
        )
    }
}

/// The view's text: the header, every worker's lines (worker column first), and a
/// summary line; at most `budget` bytes (what one admin response holds), lines past it
/// left out and counted. `answers[w]` is None when worker `w` did not answer in time.
pub(crate) fn render(answers: &[Option<Arc<Snapshot>>], budget: usize) -> String {
    // Room kept for the summary line.
    let budget = budget.saturating_sub(160);
    let mut out = String::with_capacity(budget.min(16 * 1024));
    out.push_str(HEADER);
    out.push('\n');
    let (mut shown, mut total) = (0usize, 0usize);
    let mut silent = Vec::new();
    for (w, answer) in answers.iter().enumerate() {
        let Some(a) = answer else {
            silent.push(w.to_string());
            continue;
        };
        total += a.total;
        for line in &a.lines {
            if out.len() + line.len() + 8 > budget {
                break;
            }
            let _ = writeln!(out, "{w} {line}");
            shown += 1;
        }
    }
    let answered = answers.len() - silent.len();
    let _ = write!(out, "# {shown} of {total} connections shown, from {answered} of {} workers", answers.len());
    if !silent.is_empty() {
        let _ = write!(out, "; no answer in time from worker {}", silent.join(", "));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(lines: &[&str], total: usize) -> Option<Arc<Snapshot>> {
        Some(Arc::new(Snapshot { ask: 1, lines: lines.iter().map(|l| l.to_string()).collect(), total }))
    }

    #[test]
    fn the_view_lists_every_worker_and_says_what_it_left_out() {
        let text = render(&[snap(&["0.1 a"], 1), None, snap(&["0.1 b", "1.1 c"], 5)], 64 * 1024);
        assert_eq!(
            text,
            format!(
                "{HEADER}\n0 0.1 a\n2 0.1 b\n2 1.1 c\n# 3 of 6 connections shown, from 2 of 3 workers; \
                 no answer in time from worker 1\n"
            )
        );
        // A view that would not fit in one response is cut at a line boundary.
        let many: Vec<String> =
            (0..5000).map(|i| format!("{i}.1 127.0.0.1:40000 - HTTP/1.1 AwaitRequest 1.0 0 0")).collect();
        let refs: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        let text = render(&[snap(&refs, 5000)], 64 * 1024);
        assert!(text.len() <= 64 * 1024, "{}", text.len());
        assert!(text.ends_with(" of 5000 connections shown, from 1 of 1 workers\n"), "{}", &text[text.len() - 100..]);
    }

    #[test]
    fn stamps_measure_ages() {
        let t = Instant::now();
        let s = Stamp::at(t);
        assert_eq!(s.seconds_until(t + std::time::Duration::from_millis(2500)), 2.5);
        assert_eq!(s.seconds_until(t), 0.0);
        assert_eq!(Stamp::at(t + std::time::Duration::from_secs(1)).seconds_until(t), 0.0);
    }

    #[test]
    fn an_unknown_address_is_a_dash() {
        assert_eq!(Addr(None).to_string(), "-");
        assert_eq!(Addr(Some("[::1]:80".parse().unwrap())).to_string(), "[::1]:80");
    }
}
