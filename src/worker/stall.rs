//! Stuck readers under memory pressure. While reads wait for the buffer budget
//! (`limits.buffer_mib_per_worker`), the connections that hold buffers and whose writes
//! have not moved for `timeouts.buffer_stall` are closed, oldest first, at most one per
//! waiting read each sweep. Without this, a crowd of clients that request large bodies
//! and read nothing holds the budget until `timeouts.io_idle` while everyone else waits.
//!
//! The watch costs nothing while no read waits: it is cleared, and the worker's sweep
//! (once a second) returns at once.

use super::{drive, Env};
use crate::conn::leg::Progress;
use crate::conn::view::Stamp;
use crate::conn::{CloseReason, Endpoint, NextStep};
use crate::stats;
use std::collections::HashMap;
use std::time::Instant;
use uring::{ConnId, Conns};

/// The progress marks each candidate showed, and since when they have not changed.
#[derive(Default)]
pub(super) struct StallWatch {
    seen: HashMap<ConnId, (Progress, Instant)>,
}

impl StallWatch {
    /// One sweep: notes every candidate's marks, closes the oldest ones stuck for
    /// `timeouts.buffer_stall`, as many as reads are waiting (each frees a slab at least).
    pub(super) fn sweep(&mut self, conns: &mut Conns<Endpoint>, env: &mut Env, now: Instant) {
        let (waiting, _) = env.uring.pool().waiters();
        if waiting == 0 {
            self.seen = HashMap::new();
            return;
        }
        let stall = env.cfg.timeouts.buffer_stall;
        let mut seen = HashMap::with_capacity(self.seen.len());
        let mut stuck = Vec::new();
        for id in conns.ids() {
            let Some(slot) = conns.get_mut(id) else { continue };
            let Some((accepted, progress)) = slot.value.stall_probe() else { continue };
            let since = match self.seen.get(&id) {
                Some((before, since)) if *before == progress => *since,
                _ => now,
            };
            if now.duration_since(since) >= stall {
                stuck.push((accepted, id));
            }
            seen.insert(id, (progress, since));
        }
        self.seen = seen;
        for id in oldest(stuck, waiting) {
            let Some(slot) = conns.get_mut(id) else { continue };
            tracing::debug!(conn = %id, stalled_for = ?stall, "closed: holds buffers others wait for and does not move");
            stats::bump(&env.stats[env.index].buffer_stall_closes, 1);
            self.seen.remove(&id);
            if let Some(c) = drive(slot, env, now, |c, _, _| {
                c.closing(CloseReason::BufferStall);
                NextStep::Close
            }) {
                env.close(conns, c);
            }
        }
    }
}

/// The `n` oldest of the stuck connections (by accept time).
fn oldest<T>(mut stuck: Vec<(Stamp, T)>, n: usize) -> impl Iterator<Item = T> {
    stuck.sort_unstable_by_key(|(accepted, _)| *accepted);
    stuck.into_iter().take(n).map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_oldest_stuck_connections_go_first_as_many_as_reads_wait() {
        let t = Instant::now();
        Stamp::at(t); // the stamps' epoch is at or before `t`
        let at = |s| Stamp::at(t + Duration::from_secs(s));
        let stuck = vec![(at(3), "c"), (at(1), "a"), (at(4), "d"), (at(2), "b")];
        assert_eq!(oldest(stuck.clone(), 2).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(oldest(stuck, 9).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    }
}
