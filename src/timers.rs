//! Per-worker deadlines. A connection has at most one deadline at a time (the phase it
//! is in decides which: head read, idle keep-alive, connect, response, I/O idle); the
//! worker's tick fires the ones that are due.

use std::collections::BTreeMap;
use std::time::Instant;
use uring::ConnId;

/// A handle to a set deadline, kept by the connection so it can move or clear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey {
    at: Instant,
    seq: u64,
}

impl TimerKey {
    pub fn at(&self) -> Instant {
        self.at
    }
}

/// Deadlines ordered by time.
#[derive(Default)]
pub struct Timers {
    map: BTreeMap<TimerKey, ConnId>,
    seq: u64,
}

impl Timers {
    /// Sets `who`'s deadline, replacing the old one.
    pub fn set(&mut self, old: Option<TimerKey>, at: Instant, who: ConnId) -> TimerKey {
        if let Some(k) = old {
            self.map.remove(&k);
        }
        self.seq += 1;
        let key = TimerKey { at, seq: self.seq };
        self.map.insert(key, who);
        key
    }

    /// Clears a deadline.
    pub fn clear(&mut self, old: Option<TimerKey>) {
        if let Some(k) = old {
            self.map.remove(&k);
        }
    }

    /// Removes and returns every deadline due at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<(TimerKey, ConnId)> {
        let mut out = Vec::new();
        while let Some(entry) = self.map.first_entry() {
            if entry.key().at > now {
                break;
            }
            let key = *entry.key();
            out.push((key, entry.remove()));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use uring::Conns;

    #[test]
    fn fires_in_order_and_respects_moves_and_clears() {
        let mut c: Conns<()> = Conns::new();
        let (a, b, d) = (c.insert(()), c.insert(()), c.insert(()));
        let t0 = Instant::now();
        let mut t = Timers::default();
        let ka = t.set(None, t0 + Duration::from_secs(3), a);
        let _kb = t.set(None, t0 + Duration::from_secs(1), b);
        let kd = t.set(None, t0 + Duration::from_secs(2), d);
        t.clear(Some(kd));
        let _ka = t.set(Some(ka), t0 + Duration::from_secs(10), a);
        assert!(t.due(t0).is_empty());
        let fired: Vec<_> = t.due(t0 + Duration::from_secs(5)).into_iter().map(|(_, id)| id).collect();
        assert_eq!(fired, vec![b]);
        assert_eq!(t.len(), 1);
    }
}
