//! What one slot of a worker's arena holds: an endpoint, one kind per variant.
//!
//! A client connection (proxy or admin, or the exchange of one HTTP/2 stream) embeds the
//! origin leg of its current exchange. A shared HTTP/2 origin session is a slot of its
//! own: one origin connection whose streams carry the exchanges of many client slots,
//! each side waking the other through the worker's ready queue. Both run the same
//! connection machinery (legs, TLS, phases); the variant says which kind the slot is, so
//! the worker counts, drains and lists them by kind. A QUIC endpoint for HTTP/3 will be
//! a variant of its own.

use super::Connection;
use crate::timers::TimerKey;

/// One slot's occupant.
pub enum Endpoint {
    /// A client connection (or an admin one, or an HTTP/2 stream's exchange) and its
    /// embedded origin leg.
    Client(Connection),
    /// An HTTP/2 session to one origin, shared by the streams of many client slots.
    OriginSession(Connection),
}

impl Endpoint {
    /// The endpoint for `conn`, by what it is.
    pub(crate) fn of(conn: Connection) -> Endpoint {
        if conn.is_origin_session() {
            Endpoint::OriginSession(conn)
        } else {
            Endpoint::Client(conn)
        }
    }

    /// The connection machinery both kinds run on.
    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        match self {
            Endpoint::Client(c) | Endpoint::OriginSession(c) => c,
        }
    }

    fn connection(&self) -> &Connection {
        match self {
            Endpoint::Client(c) | Endpoint::OriginSession(c) => c,
        }
    }

    /// The armed deadline entry, to match a firing timer against.
    pub(crate) fn timer(&self) -> Option<TimerKey> {
        self.connection().timer
    }

    /// True for a client between requests: a drain may close it.
    pub fn is_idle(&self) -> bool {
        matches!(self, Endpoint::Client(c) if c.is_idle())
    }

    /// Its turn in an origin's queue ([`Connection::take_queue_turn`]).
    pub fn take_queue_turn(&mut self) -> bool {
        match self {
            Endpoint::Client(c) => c.take_queue_turn(),
            _ => false,
        }
    }

    /// Its line in `/debug/connections`.
    pub(crate) fn describe(&self, id: uring::ConnId, now: std::time::Instant) -> String {
        self.connection().describe(id, now)
    }

    /// When it was accepted and its progress marks, if it holds buffers while a write
    /// is in flight (the buffer-stall sweep's candidates).
    pub(crate) fn stall_probe(&self) -> Option<(super::view::Stamp, super::leg::Progress)> {
        let c = self.connection();
        Some((c.accepted, c.write_progress()?))
    }

    /// True for an HTTP/2 session, client or origin (a drain wakes it to send its GOAWAY).
    pub fn speaks_h2(&self) -> bool {
        match self {
            Endpoint::Client(c) => c.h2.is_some(),
            Endpoint::OriginSession(_) => true,
        }
    }

    /// True for a proxy client (counted in the client slot gauge).
    pub fn is_client(&self) -> bool {
        matches!(self, Endpoint::Client(c) if c.is_client())
    }
}
