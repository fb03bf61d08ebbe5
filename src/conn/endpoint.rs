//! What one slot of a worker's arena holds: an endpoint, one kind per variant.
//!
//! Today every slot is a client connection (proxy or admin), which embeds the origin
//! leg of its current exchange. The arena is typed by this enum so that endpoints that
//! serve many others get slots of their own as their protocols land: a shared HTTP/2
//! origin session (streams of many client slots multiplexed on one origin connection,
//! each side waking the other through the worker's ready queue), and a QUIC endpoint
//! for HTTP/3. The worker dispatches completions, deadlines and wakes by variant.

use super::Connection;
use crate::timers::TimerKey;

/// One slot's occupant.
pub enum Endpoint {
    /// A client connection (or an admin one) and its embedded origin leg.
    Client(Connection),
}

impl Endpoint {
    /// The armed deadline entry, to match a firing timer against.
    pub(crate) fn timer(&self) -> Option<TimerKey> {
        match self {
            Endpoint::Client(c) => c.timer,
        }
    }

    /// True between requests: a drain may close it.
    pub fn is_idle(&self) -> bool {
        match self {
            Endpoint::Client(c) => c.is_idle(),
        }
    }

    /// True while it waits in an origin's queue for a connection.
    pub fn is_queued_for_upstream(&self) -> bool {
        match self {
            Endpoint::Client(c) => c.is_queued_for_upstream(),
        }
    }

    /// Its line in `/debug/connections`.
    pub(crate) fn describe(&self, id: uring::ConnId, now: std::time::Instant) -> String {
        match self {
            Endpoint::Client(c) => c.describe(id, now),
        }
    }

    /// When it was accepted and its progress marks, if it holds buffers while a write
    /// is in flight (the buffer-stall sweep's candidates).
    pub(crate) fn stall_probe(&self) -> Option<(super::view::Stamp, super::leg::Progress)> {
        match self {
            Endpoint::Client(c) => Some((c.accepted, c.write_progress()?)),
        }
    }

    /// True for an HTTP/2 client connection (a drain wakes it to send its GOAWAY).
    pub fn speaks_h2(&self) -> bool {
        match self {
            Endpoint::Client(c) => c.h2.is_some(),
        }
    }

    /// True for a proxy client (counted in the client slot gauge).
    pub fn is_client(&self) -> bool {
        match self {
            Endpoint::Client(c) => c.is_client(),
        }
    }
}
