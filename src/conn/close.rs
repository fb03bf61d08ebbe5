//! Why a connection closed: one value, decided when closing begins, for the log line
//! and the diagnostics (never a string, never lost).
//!
//! A few causes are named where they happen (a deadline, a refusal, a failed TLS
//! handshake, the drain, the loop guard); every other close follows from the facts the
//! legs recorded (who hung up or failed) and the phase the connection was in.

use super::{Connection, Phase};

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client hung up (EOF).
    ClientClosed,
    /// The client's socket failed (or its TLS session did).
    ClientError,
    /// The origin hung up in the middle of an exchange or a tunnel.
    OriginClosed,
    /// The origin's socket failed.
    OriginError,
    /// The exchange ended and the connection was not to be kept (`Connection: close`,
    /// HTTP/1.0, draining), or a tunnel finished both ways.
    Done,
    /// The proxy answered with an error response of its own (its status is the
    /// exchange's, in the access log) and closed.
    Refused,
    /// A deadline of the current phase passed.
    Timeout,
    /// The TLS handshake with the client failed.
    TlsFailed,
    /// The proxy is draining: an idle connection, or whatever was left at the deadline.
    Drain,
    /// Its buffers were wanted by connections waiting for the budget, and its writes had
    /// not moved for `timeouts.buffer_stall` (a stuck reader).
    BufferStall,
    /// The state machine could not go on (the loop guard, an inconsistent state).
    Internal,
}

impl CloseReason {
    /// A short stable name (diagnostics).
    pub(crate) fn name(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ClientError => "client_error",
            CloseReason::OriginClosed => "origin_closed",
            CloseReason::OriginError => "origin_error",
            CloseReason::Done => "done",
            CloseReason::Refused => "refused",
            CloseReason::Timeout => "timeout",
            CloseReason::TlsFailed => "tls_failed",
            CloseReason::Drain => "drain",
            CloseReason::BufferStall => "buffer_stall",
            CloseReason::Internal => "internal",
        }
    }
}

impl Connection {
    /// Names the cause of the close about to happen (the first one named wins).
    pub(crate) fn closing(&mut self, reason: CloseReason) {
        self.close_reason.get_or_insert(reason);
    }

    /// The reason this connection closes: the one named, else what the legs recorded.
    pub(crate) fn close_reason(&self) -> CloseReason {
        if let Some(r) = self.close_reason {
            return r;
        }
        if self.client.error.is_some() {
            CloseReason::ClientError
        } else if self.origin.error.is_some() {
            CloseReason::OriginError
        } else if self.client.eof {
            CloseReason::ClientClosed
        } else if self.origin.eof && !matches!(self.phase, Phase::AwaitRequest { .. }) {
            CloseReason::OriginClosed
        } else {
            CloseReason::Done
        }
    }
}
